"""The nine machinery types: their figures, extra registers and behaviour hooks, as data.

Every type keeps the axis layout of docs/interfaces/modbus-machinery.md and adds, per its page
in docs/interfaces/devices/, extra status registers from 20 and extra settings from 120. An
``AxisType`` is one device's type-specific part: reference figures (``DEFAULTS``, overriding
``AxisParams``), its own parameters (``PARAMS``), its extra registers, interlocks, load model
and injectable conditions. The generic drive (``simulators.machinery.drive``) calls its hooks;
the base class is the plain hoist, so a type overrides only what its page adds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from simulators.core import FaultError, FaultInfo
from simulators.machinery import physics
from simulators.machinery.drive import Drive, G
from simulators.machinery.registers import (
    FAULT_DRIVE_TRIP,
    FAULT_ENCODER,
    FAULT_OVERLOAD,
    FAULT_SLACK_ROPE,
    SETTINGS_START,
    bits,
    i16,
    i32,
    u16,
    u32,
)


class AxisType:
    """A variable-speed hoist (``hoist``): the reference axis, and the base of every type."""

    model: ClassVar[str] = "hoist"
    unit: ClassVar[str] = "mm"
    rotary: ClassVar[bool] = False
    has_commands: ClassVar[bool] = True
    position_scale: ClassVar[float] = 0.1  # engineering units per raw count (registers 0, 100)
    rate_scale: ClassVar[float] = 1.0  # per raw count of registers 102, 103
    has_rope: ClassVar[bool] = True  # a slack-rope detector (fault 7)
    vertical: ClassVar[bool] = True  # the load cell feels the axis's acceleration
    DEFAULTS: ClassVar[Mapping[str, float]] = {}
    PARAMS: ClassVar[Mapping[str, tuple[type, Any]]] = {}
    CONDITIONS: ClassVar[tuple[FaultInfo, ...]] = ()
    extras_count: ClassVar[int] = 0
    settings_count: ClassVar[int] = 0

    def __init__(self, params: Mapping[str, Any]) -> None:
        # Every type parameter is a number (kg, mm, m, a ratio).
        self.p: dict[str, float] = {
            name: float(params.get(name, default)) for name, (_, default) in self.PARAMS.items()
        }
        self.conditions: dict[str, dict[str, Any]] = {}

    def attach(self, drive: Drive) -> None:
        """Called once the drive exists (initial type state may depend on its position)."""

    # interlocks and motion --------------------------------------------------------------

    def may_enable(self, drive: Drive) -> bool:
        return True

    def powered(self, drive: Drive) -> bool:
        """Power on without the control word (only the fire curtain's own controller)."""
        return False

    def wants_run(self, drive: Drive) -> bool:
        return drive.wants_run()

    def run_allowed(self, drive: Drive, enabled: bool) -> bool:
        """Whether the axis may run at all this cycle: only while the drive is enabled."""
        return enabled

    def may_run(self, drive: Drive, towards: float) -> bool:
        """Whether a run may go on in the direction of ``towards`` (signed distance)."""
        return True

    def quick_stop(self, drive: Drive) -> bool:
        return False

    def speed_limit(self, drive: Drive, speed: float) -> float:
        return speed

    def direction(self, drive: Drive) -> int:
        return physics.SHORTEST

    def in_position(self, drive: Drive) -> bool:
        return drive.in_position()

    def on_reset(self, drive: Drive) -> None:
        """A fault reset was accepted."""

    def busy(self, drive: Drive) -> bool:
        """Something of the type's own changes with time (the drive is then never quiet)."""
        return bool(self.conditions)

    # loads ------------------------------------------------------------------------------

    def payload(self, drive: Drive) -> float:
        return drive.params.payload_kg + drive.injected.extra_load_kg

    def load_kg(self, drive: Drive) -> float:
        """Load cell: the suspended mass, plus its inertial force for a vertical axis."""
        if drive.injected.slack and self.has_rope:
            return 0.02 * self.payload(drive)  # a slack rope carries almost nothing
        return self.payload(drive) * (1 + drive.accel / 1000 / G if self.vertical else 1)

    def overload_kg(self, drive: Drive) -> float:
        return 1.25 * drive.params.rated_load_kg

    def force_n(self, drive: Drive) -> float:
        """Force at the motor, for the motor current."""
        return self.load_kg(drive) * G

    def linear_speed_m_s(self, drive: Drive) -> float:
        return drive.velocity / 1000

    # the control cycle ------------------------------------------------------------------

    def check(self, drive: Drive, dt: float) -> None:
        """Latch the type's faults (before motion)."""
        if drive.injected.slack and self.has_rope:
            drive.latch(FAULT_SLACK_ROPE)
        if self.load_kg(drive) > self.overload_kg(drive):
            drive.latch(FAULT_OVERLOAD)

    def step(self, drive: Drive, dt: float) -> None:
        """After motion: the type's own state (bolts, peaks, counters)."""

    # registers --------------------------------------------------------------------------

    def extras(self, drive: Drive) -> list[int]:
        return []

    def settings(self, drive: Drive) -> list[int]:
        return []

    def write_setting(self, drive: Drive, address: int, value: int) -> None:
        """A write of one register at or above 120."""

    # injectable conditions of this type -------------------------------------------------

    def set_condition(self, drive: Drive, name: str, params: Mapping[str, Any]) -> None:
        self.conditions[name] = dict(params)

    def clear_condition(self, drive: Drive, name: str) -> None:
        self.conditions.pop(name, None)

    def truth(self, drive: Drive) -> dict[str, Any]:
        return {}


class Hoist(AxisType):
    DEFAULTS: ClassVar[Mapping[str, float]] = {}


class LineshaftFlybar(AxisType):
    """Counterweighted line-shaft flybar: five lift lines, an arbor, registers 20...31."""

    model = "lineshaft_flybar"
    extras_count = 12
    DEFAULTS: ClassVar[Mapping[str, float]] = {
        "travel": 17500.0,
        "max_speed": 1200.0,
        "max_accel": 1500.0,
        "quick_stop_decel": 2500.0,
        "rated_load_kg": 750.0,
        "payload_kg": 200.0,
        "rated_current_a": 20.0,
    }
    PARAMS: ClassVar[Mapping[str, tuple[type, Any]]] = {
        "batten_weight_kg": (float, 120.0),
        "arbor_weight_kg": (float, 300.0),
    }
    CONDITIONS = (
        FaultInfo("arbor_locked", "the arbor's rope lock is engaged: the drive refuses to enable"),
        FaultInfo(
            "arbor_reload",
            "the flyman changes the arbor's counterweight on the winch panel",
            {"arbor_weight_kg": "float, kg, required"},
        ),
    )

    def _lines(self, drive: Drive) -> list[float]:
        total = (self.p["batten_weight_kg"] + self.payload(drive)) * (1 + drive.accel / 1000 / G)
        if not drive.injected.slack:
            return [total / 5] * 5
        slack = int(self.conditions.get("slack_rope", {}).get("line", 1)) - 1
        lines = [total / 4] * 5
        lines[slack] = 0.5  # a slack line hangs, the other four take the load
        return lines

    def load_kg(self, drive: Drive) -> float:
        return sum(self._lines(drive))

    def arbor(self) -> float:
        reload = self.conditions.get("arbor_reload")
        return float(reload["arbor_weight_kg"]) if reload else self.p["arbor_weight_kg"]

    def imbalance(self, drive: Drive) -> float:
        return self.load_kg(drive) - self.arbor()

    def overload_kg(self, drive: Drive) -> float:
        return math.inf  # checked on the imbalance below, not the load

    def check(self, drive: Drive, dt: float) -> None:
        if self.imbalance(drive) > 1.25 * drive.params.rated_load_kg:
            drive.latch(FAULT_OVERLOAD)
        if self._slack_line(drive) and drive.velocity < -drive.params.moving_threshold:
            drive.latch(FAULT_SLACK_ROPE)

    def _slack_line(self, drive: Drive) -> bool:
        return min(self._lines(drive)) < 5.0

    def may_enable(self, drive: Drive) -> bool:
        return "arbor_locked" not in self.conditions

    def force_n(self, drive: Drive) -> float:
        return abs(self.imbalance(drive)) * G

    def extras(self, drive: Drive) -> list[int]:
        lines = self._lines(drive)
        imbalance = self.imbalance(drive)
        return [
            *i32(self.p["batten_weight_kg"] * 10),
            *i32(self.arbor() * 10),
            *i32(imbalance * 10),
            *(i16(x * 10) for x in lines),
            bits(
                self._slack_line(drive),
                abs(imbalance) > 150.0,
                "arbor_locked" in self.conditions,
            ),
        ]

    def truth(self, drive: Drive) -> dict[str, Any]:
        return {"imbalance_kg": self.imbalance(drive), "line_loads_kg": self._lines(drive)}


class ChainHoist(AxisType):
    """D8+ chain hoist with load cell, overload/underload limits and a peak (20...24, 120...122)."""

    model = "chain_hoist"
    has_rope = False  # no slack-chain switch: a slack chain shows as underload
    extras_count = 5
    settings_count = 3
    DEFAULTS: ClassVar[Mapping[str, float]] = {
        "travel": 18000.0,
        "max_speed": 400.0,
        "max_accel": 800.0,
        "quick_stop_decel": 1500.0,
        "rated_load_kg": 1000.0,
        "payload_kg": 300.0,
        "rated_current_a": 8.0,
        "holding_current_a": 1.0,
    }
    PARAMS: ClassVar[Mapping[str, tuple[type, Any]]] = {"operating_hours": (float, 120.0)}
    CONDITIONS = (
        FaultInfo("load_cell_fault", "no or implausible load cell signal: refuses to enable"),
    )

    def attach(self, drive: Drive) -> None:
        self.overload_limit = 1250
        self.underload_limit = 0
        self.hours = self.p["operating_hours"]
        self.peak = self.load_kg(drive)

    def load_kg(self, drive: Drive) -> float:
        if "load_cell_fault" in self.conditions:
            return 0.0
        if drive.injected.slack:
            return 0.02 * self.payload(drive)
        return super().load_kg(drive)

    def overload_kg(self, drive: Drive) -> float:
        return float(self.overload_limit)

    def underload(self, drive: Drive) -> bool:
        return self.load_kg(drive) < self.underload_limit

    def may_enable(self, drive: Drive) -> bool:
        return "load_cell_fault" not in self.conditions

    def may_run(self, drive: Drive, towards: float) -> bool:
        return not (self.underload(drive) and towards < 0)  # it may then only be raised

    def quick_stop(self, drive: Drive) -> bool:
        return self.underload(drive) and drive.velocity < 0

    def step(self, drive: Drive, dt: float) -> None:
        self.peak = max(self.peak, self.load_kg(drive))
        if drive.moving:
            self.hours += dt / 3600

    def extras(self, drive: Drive) -> list[int]:
        load = self.load_kg(drive)
        return [
            *i32(self.peak * 10),
            bits(
                load > self.overload_limit,
                self.underload(drive),
                "load_cell_fault" in self.conditions,
            ),
            *u32(self.hours * 10),
        ]

    def settings(self, drive: Drive) -> list[int]:
        return [self.overload_limit, self.underload_limit, 0]

    def write_setting(self, drive: Drive, address: int, value: int) -> None:
        if address == SETTINGS_START:
            self.overload_limit = value
        elif address == SETTINGS_START + 1:
            self.underload_limit = value
        elif address == SETTINGS_START + 2 and value == 1:
            self.peak = self.load_kg(drive)  # the drive writes 122 back to 0 at once

    def truth(self, drive: Drive) -> dict[str, Any]:
        return {"load_peak_kg": self.peak, "operating_hours": self.hours}


BOLT_TRAVEL_S = 2.0
BOLT_TIMEOUT_S = 5.0


class StageLift(AxisType):
    """Stage lift with locking bolts at three levels, safety edge and guard (20, 21, 120)."""

    model = "stage_lift"
    has_rope = False
    extras_count = 2
    settings_count = 1
    LEVELS: ClassVar[tuple[float, ...]] = (0.0, 4000.0, 6500.0)
    DEFAULTS: ClassVar[Mapping[str, float]] = {
        "travel": 6500.0,
        "max_speed": 200.0,
        "max_accel": 200.0,
        "quick_stop_decel": 500.0,
        "rated_load_kg": 10000.0,
        "payload_kg": 2000.0,
        "rated_current_a": 60.0,
        "holding_current_a": 8.0,
        "start_position": 4000.0,
    }
    CONDITIONS = (
        FaultInfo("safety_edge", "a safety edge or light curtain is tripped: quick stop"),
        FaultInfo("guard_open", "guard rails or gates open: the lift refuses to enable"),
        FaultInfo("bolt_jam", "the locking bolts stick: bolt_fault 5 s after a bolt command"),
    )

    def attach(self, drive: Drive) -> None:
        level = self._level(drive)
        self.bolts = "engaged" if level else "released"  # engaged | released | moving
        self.bolt_goal = ""
        self.bolt_timer = 0.0
        self.bolt_fault = False
        self.command = 0
        self.lock_level = level

    def _level(self, drive: Drive) -> int:
        for i, level in enumerate(self.LEVELS, start=1):
            if abs(drive.measured - level) <= 2.0:
                return i
        return 0

    def may_enable(self, drive: Drive) -> bool:
        return "guard_open" not in self.conditions

    def may_run(self, drive: Drive, towards: float) -> bool:
        return self.bolts == "released" and "safety_edge" not in self.conditions

    def quick_stop(self, drive: Drive) -> bool:
        return "safety_edge" in self.conditions

    def on_reset(self, drive: Drive) -> None:
        self.bolt_fault = False

    def busy(self, drive: Drive) -> bool:
        return bool(self.command or self.conditions)

    def write_setting(self, drive: Drive, address: int, value: int) -> None:
        if address != SETTINGS_START:
            return
        level = self._level(drive)
        if value == 1 and (drive.moving or not level):
            value = 0  # bolts engage only at standstill at a locking level: ignored
        if value in (1, 2):
            self.command, self.bolt_timer, self.bolt_fault = value, 0.0, False
            self.bolt_goal = "engaged" if value == 1 else "released"
            if self.bolts != self.bolt_goal:
                self.bolts = "moving"
            self.lock_level = 0
        else:
            self.command = 0

    def step(self, drive: Drive, dt: float) -> None:
        if not self.command:
            return
        self.bolt_timer += dt
        if "bolt_jam" in self.conditions:
            if self.bolt_timer >= BOLT_TIMEOUT_S:
                self.bolt_fault, self.command = True, 0
        elif self.bolts == self.bolt_goal or self.bolt_timer >= BOLT_TRAVEL_S:
            self.bolts, self.command = self.bolt_goal, 0
            self.lock_level = self._level(drive) if self.bolts == "engaged" else 0

    def extras(self, drive: Drive) -> list[int]:
        return [
            bits(
                self.bolts == "engaged",
                self.bolts == "released",
                self.bolt_fault,
                "safety_edge" in self.conditions,
                "guard_open" not in self.conditions,
            ),
            self.lock_level,
        ]

    def settings(self, drive: Drive) -> list[int]:
        return [self.command]

    def truth(self, drive: Drive) -> dict[str, Any]:
        return {"bolts": self.bolts, "lock_level": self.lock_level, "bolt_fault": self.bolt_fault}


class PitLift(StageLift):
    model = "pit_lift"
    LEVELS = (0.0, 2300.0, 3200.0)
    DEFAULTS: ClassVar[Mapping[str, float]] = {
        "travel": 3200.0,
        "max_speed": 100.0,
        "max_accel": 100.0,
        "quick_stop_decel": 300.0,
        "rated_load_kg": 7500.0,
        "payload_kg": 1200.0,
        "rated_current_a": 30.0,
        "holding_current_a": 5.0,
        "start_position": 2300.0,
    }


class Turntable(AxisType):
    """Revolve: wrapping angle in 0.01°, direction register 120, revolutions and total angle."""

    model = "turntable"
    unit = "deg"
    rotary = True
    has_rope = False
    vertical = False
    position_scale = 0.01
    rate_scale = 0.01
    extras_count = 4
    settings_count = 1
    DEFAULTS: ClassVar[Mapping[str, float]] = {
        "travel": 360.0,
        "max_speed": 36.0,
        "max_accel": 20.0,
        "quick_stop_decel": 30.0,
        "brake_stop_decel": 60.0,
        "in_position_window": 0.05,
        "settle": 0.005,
        "moving_threshold": 0.005,
        "encoder_resolution": 0.01,
        "encoder_plausibility": 5.0,
        "brake_slip_speed": 0.5,
        "rated_load_kg": 20000.0,
        "payload_kg": 5000.0,
        "rated_current_a": 25.0,
        "holding_current_a": 4.0,
    }
    PARAMS: ClassVar[Mapping[str, tuple[type, Any]]] = {
        "radius_m": (float, 6.0),
        "rolling_resistance": (float, 0.01),
    }

    def attach(self, drive: Drive) -> None:
        self.direction_reg = 0

    def direction(self, drive: Drive) -> int:
        return self.direction_reg if self.direction_reg in (0, 1, 2) else physics.SHORTEST

    def write_setting(self, drive: Drive, address: int, value: int) -> None:
        if address == SETTINGS_START:
            self.direction_reg = value
            drive.retarget()

    def force_n(self, drive: Drive) -> float:
        m = self.payload(drive)
        rim_accel = math.radians(drive.accel) * self.p["radius_m"]
        return m * (G * self.p["rolling_resistance"] + abs(rim_accel))

    def linear_speed_m_s(self, drive: Drive) -> float:
        return math.radians(drive.velocity) * self.p["radius_m"]

    def revolutions(self, drive: Drive) -> int:
        return math.floor(drive.measured / 360.0)

    def extras(self, drive: Drive) -> list[int]:
        revs = self.revolutions(drive)
        total = revs * 360.0 + physics.wrap(drive.measured)
        return [*i32(revs), *i32(total / self.position_scale)]

    def settings(self, drive: Drive) -> list[int]:
        return [self.direction_reg]

    def truth(self, drive: Drive) -> dict[str, Any]:
        return {
            "revolutions": math.floor(drive.position / 360.0),
            "angle_total_deg": drive.position,
        }


class Wagon(AxisType):
    """Stage wagon on a floor track: dock, guide pin, bumpers, cable reel (register 20)."""

    model = "wagon"
    has_rope = False
    vertical = False
    extras_count = 1
    DEFAULTS: ClassVar[Mapping[str, float]] = {
        "travel": 15000.0,
        "max_speed": 1000.0,
        "max_accel": 1000.0,
        "quick_stop_decel": 2000.0,
        "rated_load_kg": 3000.0,
        "payload_kg": 800.0,
        "rated_current_a": 15.0,
    }
    PARAMS: ClassVar[Mapping[str, tuple[type, Any]]] = {"rolling_resistance": (float, 0.03)}
    CONDITIONS = (
        FaultInfo("guide_out", "the guide pin is out of the track slot: refuses to enable"),
        FaultInfo(
            "bumper_contact",
            "a bumper touched an obstacle: quick stop, no run towards it",
            {"towards": "str, 'far' or 'dock', default: the way it was moving (else 'far')"},
        ),
        FaultInfo("cable_fault", "the cable reel's tension is out of range: quick stop"),
    )

    def set_condition(self, drive: Drive, name: str, params: Mapping[str, Any]) -> None:
        if name == "bumper_contact":
            default = "dock" if drive.velocity < 0 else "far"
            towards = params.get("towards", default)
            if towards not in ("far", "dock"):
                raise FaultError(
                    f"bumper_contact: towards must be 'far' or 'dock', not {towards!r}"
                )
            params = {"towards": towards}
        super().set_condition(drive, name, params)

    def may_enable(self, drive: Drive) -> bool:
        return "guide_out" not in self.conditions

    def _obstacle(self) -> float:
        bumper = self.conditions.get("bumper_contact")
        if bumper is None:
            return 0.0
        return 1.0 if bumper["towards"] == "far" else -1.0

    def may_run(self, drive: Drive, towards: float) -> bool:
        if "cable_fault" in self.conditions:
            return False
        obstacle = self._obstacle()
        return obstacle == 0.0 or towards * obstacle < 0  # it may back away

    def quick_stop(self, drive: Drive) -> bool:
        return "cable_fault" in self.conditions or drive.velocity * self._obstacle() > 0

    def force_n(self, drive: Drive) -> float:
        m = self.payload(drive)
        return m * (G * self.p["rolling_resistance"] + abs(drive.accel) / 1000)

    def extras(self, drive: Drive) -> list[int]:
        return [
            bits(
                abs(drive.measured) <= 5.0 and not drive.moving,
                "guide_out" not in self.conditions,
                "bumper_contact" in self.conditions,
                "cable_fault" not in self.conditions,
            )
        ]


class CurtainTrack(AxisType):
    """Motorised curtain track: end switches and the rope's slack detector (register 20)."""

    model = "curtain_track"
    vertical = False
    extras_count = 1
    DEFAULTS: ClassVar[Mapping[str, float]] = {
        "travel": 9000.0,
        "max_speed": 2000.0,
        "max_accel": 2000.0,
        "quick_stop_decel": 4000.0,
        "rated_load_kg": 200.0,
        "payload_kg": 150.0,  # the curtain's mass
        "rated_current_a": 6.0,
        "holding_current_a": 0.5,
    }
    PARAMS: ClassVar[Mapping[str, tuple[type, Any]]] = {
        "friction": (float, 0.3),
        "pretension_kg": (float, 20.0),
    }

    def load_kg(self, drive: Drive) -> float:
        """Rope pull in kg: pretension, plus friction while moving and the curtain's inertia."""
        if drive.injected.slack:
            return 0.5
        m = self.payload(drive)
        friction = m * self.p["friction"] if drive.moving else 0.0
        return self.p["pretension_kg"] + friction + m * abs(drive.accel) / 1000 / G

    def force_n(self, drive: Drive) -> float:
        return (self.load_kg(drive) - self.p["pretension_kg"]) * G

    def extras(self, drive: Drive) -> list[int]:
        pos = drive.measured
        return [bits(pos <= 1.0, pos >= drive.params.travel - 1.0, drive.injected.slack)]


STATE_UNKNOWN, STATE_RAISED, STATE_LOWERING, STATE_LOWERED, STATE_RAISING = 0, 1, 2, 3, 4
STATE_STOPPED, STATE_FAULT = 5, 6


class FireCurtain(AxisType):
    """Fire curtain, monitored only: its own controller lowers it on a release and raises it
    again once the release is reset (registers 20...22); no command block, no heartbeat."""

    model = "fire_curtain"
    has_commands = False
    has_rope = False
    extras_count = 3
    DEFAULTS: ClassVar[Mapping[str, float]] = {
        "travel": 9000.0,
        "max_speed": 600.0,
        "max_accel": 300.0,
        "quick_stop_decel": 1000.0,
        "rated_load_kg": 4000.0,
        "payload_kg": 2500.0,
        "rated_current_a": 15.0,
        "holding_current_a": 0.0,
        "start_position": 9000.0,
        "hard_limit_margin": 0.0,
        "in_position_window": 2.0,
    }
    PARAMS: ClassVar[Mapping[str, tuple[type, Any]]] = {
        "slow_zone_mm": (float, 2500.0),
        "slow_speed_mm_s": (float, 150.0),
        "raise_speed_mm_s": (float, 150.0),
    }
    CONDITIONS = (
        FaultInfo("alarm_release", "the fire alarm panel releases the curtain (drencher on)"),
        FaultInfo("manual_release", "a manual release button releases the curtain"),
        FaultInfo("mains_loss", "mains supply of the controller lost"),
        FaultInfo("ups_fault", "the controller's battery backup is not charged"),
        FaultInfo("test_mode", "the controller is in test (inspection) mode"),
        FaultInfo("jam", "the curtain sticks where it is: stopped part-way"),
    )

    def attach(self, drive: Drive) -> None:
        self.descent_started: float | None = None
        self.last_descent_s = 0.0
        self.elapsed = 0.0

    def released(self) -> bool:
        return "alarm_release" in self.conditions or "manual_release" in self.conditions

    def busy(self, drive: Drive) -> bool:
        return True  # its own controller: stepped every cycle

    def _fault_cause(self, drive: Drive) -> int:
        inj = drive.injected
        if inj.trip:
            return FAULT_DRIVE_TRIP
        if inj.encoder_lost or abs(inj.encoder_offset) > drive.params.encoder_plausibility:
            return FAULT_ENCODER
        return 8 if inj.estop else 0

    def check(self, drive: Drive, dt: float) -> None:
        # Life-safety controller: its fault code follows its causes (reset on its own panel).
        drive.fault = self._fault_cause(drive)
        # Lowering is by gravity, raising by the drive: the controller lifts the brake for both.
        drive.brake_open = (self.released() or self.powered(drive)) and "jam" not in self.conditions

    def run_allowed(self, drive: Drive, enabled: bool) -> bool:
        return True

    def quick_stop(self, drive: Drive) -> bool:
        return "jam" in self.conditions

    def wants_run(self, drive: Drive) -> bool:
        if "jam" in self.conditions or drive.fault:
            return False
        drive.goal = 0.0 if self.released() else drive.params.travel
        drive.target = drive.goal
        return abs(drive.measured - drive.goal) > drive.params.settle or drive.moving

    def powered(self, drive: Drive) -> bool:
        """The raising drive is on while it raises (lowering is by gravity)."""
        return (
            not self.released()
            and drive.fault == 0
            and "jam" not in self.conditions
            and drive.measured < drive.params.travel - drive.params.settle
        )

    def step(self, drive: Drive, dt: float) -> None:
        self.elapsed += dt
        if (
            self.released()
            and self.descent_started is None
            and drive.measured >= drive.params.travel - 2
        ):
            self.descent_started = self.elapsed
        if self.descent_started is not None and drive.measured <= 1.0 and not drive.moving:
            self.last_descent_s = self.elapsed - self.descent_started
            self.descent_started = None
        if not self.released():
            self.descent_started = None

    def speed_limit(self, drive: Drive, speed: float) -> float:
        if not self.released():
            return self.p["raise_speed_mm_s"]
        slow = drive.measured <= self.p["slow_zone_mm"]
        return self.p["slow_speed_mm_s"] if slow else drive.params.max_speed

    def in_position(self, drive: Drive) -> bool:
        pos = drive.measured
        return not drive.moving and (pos <= 1.0 or pos >= drive.params.travel - 1.0)

    def state(self, drive: Drive) -> int:
        pos, top = drive.measured, drive.params.travel
        if drive.fault:
            return STATE_FAULT
        if drive.velocity < -drive.params.moving_threshold:
            return STATE_LOWERING
        if drive.velocity > drive.params.moving_threshold:
            return STATE_RAISING
        if pos <= 1.0:
            return STATE_LOWERED
        if pos >= top - 1.0:
            return STATE_RAISED
        return STATE_STOPPED

    def extras(self, drive: Drive) -> list[int]:
        return [
            self.state(drive),
            bits(
                "alarm_release" in self.conditions,
                "manual_release" in self.conditions,
                "alarm_release" in self.conditions,  # the alarm opens the drencher valve
                "mains_loss" not in self.conditions,
                "ups_fault" not in self.conditions,
                "test_mode" in self.conditions,
            ),
            u16(self.last_descent_s * 10),
        ]

    def truth(self, drive: Drive) -> dict[str, Any]:
        return {"curtain_state": self.state(drive), "last_descent_s": self.last_descent_s}


TYPES: dict[str, type[AxisType]] = {
    t.model: t
    for t in (
        Hoist,
        LineshaftFlybar,
        ChainHoist,
        StageLift,
        PitLift,
        Turntable,
        Wagon,
        CurtainTrack,
        FireCurtain,
    )
}
