"""One machinery drive: the axis physics, the drive's state machine and its register image.

Written from docs/interfaces/modbus-machinery.md (§5-§7 and the extensions of §12) and the
device pages; it knows nothing about sockets. A ``Drive`` is advanced by ``step(now, dt)``
from the family's clock, and read and written by the Modbus server's action hook through
``read_block`` and ``write``. Everything a type adds (extra registers, interlocks, its load
model) is an ``AxisType`` hook (``simulators.machinery.models``); the generic core here is the
same for all nine types.

Evaluation order every control cycle (10 ms):

1. latch faults: e-stop (8), watchdog (1), drive trip (4), encoder (5), brake (6), the type's
   own (slack rope 7, overload 2 ...); the first latched code is kept;
2. the brake: opens ``brake_release_ms`` after the power stage is switched on, closes
   ``brake_engage_ms`` after standstill once it is switched off; a drive trip drops it at once;
3. motion: run to the goal (``physics.run_step``) while enabled, commanded, the brake is open
   and the type's interlocks allow it; otherwise ramp down at the cause's deceleration;
4. hard limits (fault 3), then load, motor current and temperature.

The drive controls the position its **encoder** reports, like a real one: an injected
encoder jump moves the axis off its true target, which ``truth()`` shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from simulators.machinery import physics
from simulators.machinery.registers import (
    COMMAND_COUNT,
    CW_ENABLE,
    CW_QUICK_STOP,
    CW_RESET,
    CW_RUN,
    CW_STOP,
    FAULT_BRAKE,
    FAULT_DRIVE_TRIP,
    FAULT_ENCODER,
    FAULT_ESTOP,
    FAULT_HARD_LIMIT,
    FAULT_NONE,
    FAULT_WATCHDOG,
    REG_ACCEL,
    REG_CONTROL,
    REG_HEARTBEAT,
    REG_SPEED,
    REG_TARGET,
    REG_WATCHDOG,
    SW_BRAKE_RELEASED,
    SW_ENABLED,
    SW_ESTOP,
    SW_FAULT,
    SW_IN_POSITION,
    SW_LIMIT_HIGH,
    SW_LIMIT_LOW,
    SW_MOVING,
    SW_READY,
    SW_WATCHDOG_OK,
    i16,
    i32,
    to_i32,
    u16,
)

if TYPE_CHECKING:
    from simulators.machinery.models import AxisType

G = 9.81
SQRT3 = math.sqrt(3)  # three-phase supply: P = sqrt(3) U I efficiency
BRAKE_FEEDBACK_TIMEOUT_S = 0.5  # brake commanded open but no feedback: fault 6
BRAKE_SLIP_LIMIT = 5.0  # movement with the brake applied beyond this: fault 6
OVERCURRENT_FACTOR = 2.0  # motor current above this times the rated current: fault 4
OVERTEMP_FACTOR = 1.5  # winding rise above this times the rated rise: fault 4
IDLE_STEP_S = 0.1  # a quiet drive is stepped this often


@dataclass
class AxisParams:
    """A drive's commissioning figures (engineering units: mm, or degrees for a turntable).

    Every field can be overridden from the venue's ``simulate`` table under the name
    ``param_name`` gives it (``max_speed`` -> ``max_speed_mm_s`` or ``max_speed_deg_s``).
    """

    travel: float = 12000.0  # low dead at 0, top at travel (one turn for a rotary axis)
    max_speed: float = 1500.0
    max_accel: float = 2000.0
    quick_stop_decel: float = 3000.0
    max_jerk: float = 0.0  # 0: no jerk limit, trapezoidal runs
    brake_stop_decel: float = 6000.0  # a drive trip: the brake stops the axis
    start_position: float = 0.0
    hard_limit_margin: float = 50.0
    in_position_window: float = 1.0
    settle: float = 0.1
    moving_threshold: float = 0.05
    encoder_resolution: float = 0.1  # one count
    encoder_plausibility: float = 100.0  # a jump larger than this latches fault 5
    payload_kg: float = 250.0
    rated_load_kg: float = 500.0
    watchdog_ms_default: int = 200
    brake_release_ms: float = 100.0
    brake_engage_ms: float = 100.0
    brake_slip_speed: float = 20.0  # how fast a slipping brake lets the axis creep down
    holding_current_a: float = 2.0
    rated_current_a: float = 10.0
    ambient_c: float = 25.0
    thermal_tau_s: float = 600.0
    rated_rise_c: float = 60.0  # winding temperature rise at rated current, steady state
    supply_v: float = 400.0
    efficiency: float = 0.85


UNIT_SUFFIX = {
    "travel": "",
    "max_speed": "_s",
    "max_accel": "_s2",
    "quick_stop_decel": "_s2",
    "max_jerk": "_s3",
    "brake_stop_decel": "_s2",
    "start_position": "",
    "hard_limit_margin": "",
    "in_position_window": "",
    "settle": "",
    "moving_threshold": "_s",
    "encoder_resolution": "",
    "encoder_plausibility": "",
    "brake_slip_speed": "_s",
}


def param_name(field_name: str, unit: str) -> str:
    """The venue name of an ``AxisParams`` field: unit-bearing ones get ``_mm``/``_deg``..."""
    if field_name in UNIT_SUFFIX:
        return f"{field_name}_{unit}{UNIT_SUFFIX[field_name]}"
    return field_name


def param_kinds(unit: str) -> dict[str, tuple[str, type]]:
    """venue name -> (field name, type) for every ``AxisParams`` field."""
    out: dict[str, tuple[str, type]] = {}
    for f in fields(AxisParams):
        out[param_name(f.name, unit)] = (f.name, int if f.type in (int, "int") else float)
    return out


@dataclass
class Injected:
    """Causes injected from outside (the control endpoint); the drive reacts to them."""

    estop: bool = False
    extra_load_kg: float = 0.0
    encoder_lost: bool = False
    encoder_offset: float = 0.0
    brake: str | None = None  # "no_release" | "slip"
    trip: bool = False
    slack: bool = False
    # Slow degradations (``bearing_wear``, ``motor_cooling``, ``brake_wear``): a growth rate
    # set at injection, and how far each has grown; they grow with wall time, every cycle.
    friction_rate_n_s: float = 0.0
    friction_n: float = 0.0  # extra friction force at the motor while moving
    cooling_rate_s: float = 0.0
    cooling_loss: float = 0.0  # extra winding heating: I^2 heats (1 + loss) times as much
    brake_rate_ms_s: float = 0.0
    brake_delay_ms: float = 0.0  # extra brake release time

    def degrading(self) -> bool:
        return bool(self.friction_rate_n_s or self.cooling_rate_s or self.brake_rate_ms_s)

    def degrade(self, dt: float) -> None:
        """Grow the slow degradations by one cycle of ``dt`` seconds (capped: a worn part
        is worn, not infinite)."""
        self.friction_n = min(1e6, self.friction_n + self.friction_rate_n_s * dt)
        self.cooling_loss = min(100.0, self.cooling_loss + self.cooling_rate_s * dt)
        self.brake_delay_ms = min(60_000.0, self.brake_delay_ms + self.brake_rate_ms_s * dt)


_NOTHING_INJECTED = Injected()


@dataclass
class Drive:
    """The drive of one axis; see the module docstring for its cycle."""

    params: AxisParams
    kind: AxisType
    # command block (engineering units for the target; raw register values otherwise)
    target: float = 0.0
    speed_raw: int = 500
    accel_raw: int = 500
    control: int = 0
    heartbeat: int = 0
    heartbeat_at: float = -math.inf
    watchdog_ms: int = 0
    # true state of the mechanics
    position: float = 0.0  # unwrapped for a rotary axis
    velocity: float = 0.0
    accel: float = 0.0
    jerk: float = 0.0
    fault: int = FAULT_NONE
    brake_open: bool = False
    temperature: float = 25.0
    current: float = 0.0
    injected: Injected = field(default_factory=Injected)
    now: float = 0.0
    goal: float = 0.0  # what a run heads for, in the encoder's frame (unwrapped)
    _brake_timer: float = 0.0
    _frozen_counts: int | None = None
    _slip_from: float | None = None
    _was_running: bool = False
    _idle_dt: float = 0.0  # time of quiet cycles not stepped yet

    def __post_init__(self) -> None:
        p = self.params
        self.position = p.start_position
        self.temperature = p.ambient_c
        self.target = self.wrapped(p.start_position)
        self.goal = self.measured
        self.kind.attach(self)

    # --- derived state -------------------------------------------------------------------

    @property
    def rotary(self) -> bool:
        return self.kind.rotary

    def wrapped(self, value: float) -> float:
        return physics.wrap(value, self.params.travel) if self.rotary else value

    @property
    def counts(self) -> int:
        """The encoder's count: the true position plus any injected offset; frozen when lost."""
        if self._frozen_counts is not None:
            return self._frozen_counts
        return round(
            (self.position + self.injected.encoder_offset) / self.params.encoder_resolution
        )

    @property
    def sensed(self) -> float:
        """What the encoder senses before it is counted: the drive's own feedback."""
        if self._frozen_counts is not None:
            return self._frozen_counts * self.params.encoder_resolution
        return self.position + self.injected.encoder_offset

    @property
    def measured(self) -> float:
        """The position the drive believes (from its encoder), unwrapped."""
        return self.counts * self.params.encoder_resolution

    @property
    def latching(self) -> bool:
        return self.kind.has_commands

    @property
    def enable_requested(self) -> bool:
        return bool(self.control & CW_ENABLE) and self.kind.has_commands

    @property
    def enabled(self) -> bool:
        """Power stage on: enable bit, no fault, no e-stop, and the type's interlocks."""
        return (
            self.enable_requested
            and self.fault == FAULT_NONE
            and not self.injected.estop
            and self.kind.may_enable(self)
        ) or self.kind.powered(self)

    @property
    def moving(self) -> bool:
        return abs(self.velocity) > self.params.moving_threshold

    def watchdog_s(self) -> float:
        return (self.watchdog_ms or self.params.watchdog_ms_default) / 1000

    def heartbeat_alive(self, now: float) -> bool:
        return self.kind.has_commands and now - self.heartbeat_at <= self.watchdog_s()

    def limits(self) -> physics.Limits:
        p, scale = self.params, self.kind.rate_scale
        speed = min(self.speed_raw * scale, p.max_speed)
        return physics.Limits(
            self.kind.speed_limit(self, speed), min(self.accel_raw * scale, p.max_accel), p.max_jerk
        )

    def in_position(self) -> bool:
        if self.moving:
            return False
        window = self.params.in_position_window
        measured = self.wrapped(self.measured)
        if self.rotary:
            return physics.angular_distance(measured, self.target, self.params.travel) <= window
        return abs(measured - self.target) <= window

    def limit_low(self) -> bool:
        return not self.rotary and self.position <= -self.params.hard_limit_margin

    def limit_high(self) -> bool:
        return (
            not self.rotary and self.position >= self.params.travel + self.params.hard_limit_margin
        )

    def load_kg(self) -> float:
        return self.kind.load_kg(self)

    def status_word(self) -> int:
        # Read on every status request: the helpers (moving, limit_low/high, heartbeat_alive)
        # are inlined here.
        kind, p, estop = self.kind, self.params, self.injected.estop
        sw = SW_READY if self.fault == FAULT_NONE and not estop else 0
        if self.enabled:
            sw |= SW_ENABLED
        if abs(self.velocity) > p.moving_threshold:
            sw |= SW_MOVING | SW_BRAKE_RELEASED
        elif self.brake_open:
            sw |= SW_BRAKE_RELEASED
        if kind.in_position(self):
            sw |= SW_IN_POSITION
        if self.fault:
            sw |= SW_FAULT
        if estop:
            sw |= SW_ESTOP
        if not kind.rotary:
            if self.position <= -p.hard_limit_margin:
                sw |= SW_LIMIT_LOW
            if self.position >= p.travel + p.hard_limit_margin:
                sw |= SW_LIMIT_HIGH
        if kind.has_commands and self.now - self.heartbeat_at <= self.watchdog_s():
            sw |= SW_WATCHDOG_OK
        return sw

    # --- faults --------------------------------------------------------------------------

    def latch(self, code: int) -> None:
        """Latch ``code`` unless a fault is already latched (the first code is kept)."""
        if self.fault == FAULT_NONE:
            self.fault = code

    def reset(self) -> None:
        """A fault reset request (control word bit 3): refused while the e-stop is open."""
        if not self.injected.estop:
            self.fault = FAULT_NONE
            self.kind.on_reset(self)

    def freeze_encoder(self, lost: bool) -> None:
        self._frozen_counts = self.counts if lost else None
        self.injected.encoder_lost = lost

    # --- register access (the server's action hook) --------------------------------------

    def status_block(self) -> list[int]:
        kind = self.kind
        scale = kind.position_scale
        measured = self.measured
        if kind.rotary:
            measured = physics.wrap(measured, self.params.travel)
        return [
            *i32(measured / scale),
            *i32(self.velocity / scale),
            *i32(kind.load_kg(self) * 10),
            self.status_word(),
            self.fault,
            self.heartbeat if kind.has_commands else 0,
            u16(self.current * 10),
            i16(self.temperature * 10),
        ]

    def command_block(self) -> list[int]:
        return [
            *i32(self.target / self.kind.position_scale),
            self.speed_raw,
            self.accel_raw,
            self.control,
            self.heartbeat,
            self.watchdog_ms,
        ]

    def write(self, address: int, values: list[int], now: float) -> None:
        """Apply one write request: settings first, the control word and heartbeat last.

        ``values`` start at ``address`` (at or above 100: the status block is read-only). A
        write of one word of the target keeps the other word of the present target.
        """
        end = address + len(values)
        if address <= REG_TARGET + 1 and end > REG_TARGET:
            if address <= REG_TARGET and end > REG_TARGET + 1:
                hi = values[REG_TARGET - address] & 0xFFFF
                lo = values[REG_TARGET + 1 - address] & 0xFFFF
            else:  # one word of the two: the other one is the present target's
                hi, lo = i32(self.target / self.kind.position_scale)
                if address <= REG_TARGET:
                    hi = values[REG_TARGET - address] & 0xFFFF
                else:
                    lo = values[0] & 0xFFFF
            self.target = to_i32(hi, lo) * self.kind.position_scale
            self.retarget()
        if address <= REG_SPEED < end:
            self.speed_raw = values[REG_SPEED - address] & 0xFFFF
        if address <= REG_ACCEL < end:
            self.accel_raw = values[REG_ACCEL - address] & 0xFFFF
        if address <= REG_WATCHDOG < end:
            self.watchdog_ms = values[REG_WATCHDOG - address] & 0xFFFF
        for a in range(max(address, REG_TARGET + COMMAND_COUNT), end):
            self.kind.write_setting(self, a, values[a - address] & 0xFFFF)
        if address <= REG_HEARTBEAT < end:
            heartbeat = values[REG_HEARTBEAT - address] & 0xFFFF
            if heartbeat != self.heartbeat:
                self.heartbeat, self.heartbeat_at = heartbeat, now
        if address <= REG_CONTROL < end:
            control = values[REG_CONTROL - address] & 0xFFFF
            # Every write carrying bit 3 is a reset request, also the same word again (§7.7).
            if control & CW_RESET:
                self.reset()
            self.control = control

    def retarget(self) -> None:
        """Work out the goal of a run from the target (and a rotary axis's direction rule)."""
        if self.rotary:
            self.goal = physics.rotary_goal(
                self.sensed, self.target, self.kind.direction(self), self.params.travel
            )
        else:
            self.goal = self.target

    # --- the control cycle ---------------------------------------------------------------

    def quiet(self) -> bool:
        """Nothing but the motor's cooling can change in this cycle: at rest, brake applied,
        not asked to enable, nothing injected, and the type has nothing going on. A write or an
        injection ends it; the family then steps the drive every cycle again."""
        return (
            not self.control & CW_ENABLE
            and self.velocity == 0.0
            and self.accel == 0.0
            and not self.brake_open
            and self._brake_timer == 0.0
            and self._frozen_counts is None
            and self.injected == _NOTHING_INJECTED
            and not self.kind.busy(self)
        )

    def idle(self, now: float, dt: float) -> None:
        """A cycle of a quiet drive: the clock moves on (status bit 9 follows it), and every
        ``IDLE_STEP_S`` one whole cycle covers the quiet time (a stop from rest is no motion,
        so the long step is exact; the cooling's tau is minutes), so static causes such as an
        overloaded payload still latch."""
        self.now = now
        self._idle_dt += dt
        if self._idle_dt >= IDLE_STEP_S:
            quiet_dt, self._idle_dt = self._idle_dt, 0.0
            self.step(now, quiet_dt)

    def step(self, now: float, dt: float) -> None:
        if self._idle_dt:  # no longer quiet: first the cooling of the quiet cycles not stepped
            self._thermal(self._idle_dt, False)
            self._idle_dt = 0.0
        # Every drive runs this 100 times a second: the small helpers (latching,
        # enable_requested, heartbeat_alive, moving, limit_low/high) are inlined.
        p, inj, kind = self.params, self.injected, self.kind
        self.now = now
        if inj.degrading():  # else nothing grows: skip it (most drives, every cycle)
            inj.degrade(dt)
        # 1. faults
        if kind.has_commands:
            if inj.estop:
                self.latch(FAULT_ESTOP)
            if (
                self.control & CW_ENABLE
                and self.fault == FAULT_NONE
                and not now - self.heartbeat_at <= self.watchdog_s()
            ):
                self.latch(FAULT_WATCHDOG)
            if inj.trip:
                self.latch(FAULT_DRIVE_TRIP)
            if inj.encoder_lost or abs(inj.encoder_offset) > p.encoder_plausibility:
                self.latch(FAULT_ENCODER)
        kind.check(self, dt)
        enabled = self.enabled
        # 2. brake
        if not kind.has_commands:
            pass  # the type's own controller works its brake (``check``)
        elif inj.trip or self.fault == FAULT_DRIVE_TRIP:
            self.brake_open, self._brake_timer = False, 0.0  # power gone: the brake drops
        elif enabled and self.brake_open:
            self._brake_timer = 0.0
        elif enabled:
            self._brake_timer += dt
            release_s = (p.brake_release_ms + inj.brake_delay_ms) / 1000  # a worn brake: later
            if inj.brake != "no_release" and self._brake_timer >= release_s:
                self.brake_open, self._brake_timer = True, 0.0
            elif self._brake_timer >= p.brake_release_ms / 1000 + BRAKE_FEEDBACK_TIMEOUT_S:
                self.latch(FAULT_BRAKE)
        elif self.brake_open and not self.moving:
            self._brake_timer += dt  # standstill, power going off: apply the brake
            if self._brake_timer >= p.brake_engage_ms / 1000:
                self.brake_open, self._brake_timer = False, 0.0
        else:
            self._brake_timer = 0.0
        # 3. motion
        v0, a0 = self.velocity, self.accel
        run = kind.run_allowed(self, enabled) and self.brake_open and kind.wants_run(self)
        if run and not self._was_running:
            self.retarget()  # a run (re)starts from where the axis is
        self._was_running = run
        # The drive controls the position its encoder senses (its interpolated count).
        sensed = self.sensed
        offset = sensed - self.position
        measured = sensed
        if run and kind.may_run(self, self.goal - measured):
            m = physics.run_step(measured, v0, a0, self.goal, self.limits(), dt, p.settle)
        elif not self.brake_open and abs(v0) > p.moving_threshold:
            m = physics.stop_step(measured, v0, a0, p.brake_stop_decel, 0.0, dt)
        else:
            decel, jerk = self.stop_rate()
            m = physics.stop_step(measured, v0, a0, decel, jerk, dt)
        self.position = m.position - offset
        self.velocity, self.accel = m.velocity, m.accel
        if (
            not self.brake_open
            and inj.brake == "slip"
            and not abs(self.velocity) > p.moving_threshold
        ):
            self._slip(dt)
        else:
            self._slip_from = None
        self.jerk = (self.accel - a0) / dt if dt > 0 else 0.0
        # 4. hard limits, then load, current and temperature
        if not kind.rotary:
            low, high = -p.hard_limit_margin, p.travel + p.hard_limit_margin
            if (self.velocity < 0 and self.position <= low) or (
                self.velocity > 0 and self.position >= high
            ):
                self.position = min(max(self.position, low), high)
                self.velocity = self.accel = 0.0
                if kind.has_commands:
                    self.latch(FAULT_HARD_LIMIT)
        kind.step(self, dt)
        self._thermal(dt, enabled or self.brake_open)
        # The power stage protects itself: overcurrent, or a winding too hot (fault 4). Armed
        # only while a slow degradation is injected: the nine types' current figures are not
        # calibrated against their rated currents (a turntable at full acceleration would trip).
        if (
            kind.has_commands
            and inj.degrading()
            and (
                self.current > OVERCURRENT_FACTOR * p.rated_current_a
                or self.temperature - p.ambient_c > OVERTEMP_FACTOR * p.rated_rise_c
            )
        ):
            self.latch(FAULT_DRIVE_TRIP)

    def stop_rate(self) -> tuple[float, float]:
        """Deceleration and jerk of a stop: quick for bit 4, a fault, the e-stop or the type's
        own causes; otherwise the controlled stop at register 103 (at least 10 raw units)."""
        p = self.params
        quick = (
            self.control & CW_QUICK_STOP
            or self.fault != FAULT_NONE
            or self.injected.estop
            or self.kind.quick_stop(self)
        )
        if quick:
            return p.quick_stop_decel, 0.0
        return max(self.accel_raw, 10) * self.kind.rate_scale, p.max_jerk

    def _slip(self, dt: float) -> None:
        """A brake that does not hold lets the load creep down; the drive notices (fault 6)."""
        p = self.params
        if self._slip_from is None:
            self._slip_from = self.measured
        self.position -= p.brake_slip_speed * dt
        self.velocity = 0.0
        if abs(self.measured - self._slip_from) > BRAKE_SLIP_LIMIT and self.latching:
            self.latch(FAULT_BRAKE)

    def _thermal(self, dt: float, powered: bool) -> None:
        """Current from mechanical power at the supply; the winding heats with I^2."""
        p = self.params
        speed = self.kind.linear_speed_m_s(self)
        power_w = abs(self.kind.force_n(self) * speed) + self.injected.friction_n * abs(speed)
        current = (p.holding_current_a if powered else 0.0) + power_w / (
            SQRT3 * p.supply_v * p.efficiency
        )
        self.current = current
        heat = p.rated_rise_c / (p.rated_current_a**2 * p.thermal_tau_s)
        heat *= 1 + self.injected.cooling_loss  # a failing fan: the winding heats faster
        self.temperature += dt * (
            heat * current**2 - (self.temperature - p.ambient_c) / p.thermal_tau_s
        )

    def wants_run(self) -> bool:
        """The run condition of the control word: bit 1 AND NOT bit 2 AND NOT bit 4."""
        return bool(self.control & CW_RUN) and not self.control & (CW_STOP | CW_QUICK_STOP)

    # --- ground truth --------------------------------------------------------------------

    def truth(self) -> dict[str, Any]:
        p = self.params
        unit = self.kind.unit
        truth: dict[str, Any] = {
            f"position_{unit}": self.wrapped(self.position),
            f"reported_position_{unit}": self.wrapped(self.measured),
            f"target_{unit}": self.target,
            f"velocity_{unit}_s": self.velocity,
            f"acceleration_{unit}_s2": self.accel,
            f"jerk_{unit}_s3": self.jerk,
            "load_kg": self.load_kg(),
            "payload_kg": p.payload_kg + self.injected.extra_load_kg,
            "brake_released": self.brake_open,
            "fault": self.fault,
            "estop": self.injected.estop,
            "current_a": self.current,
            "temperature_c": self.temperature,
            "heartbeat_age_s": (self.now - self.heartbeat_at)
            if self.heartbeat_at > -math.inf
            else None,
            "enabled": self.enabled,
            "moving": self.moving,
            "status_word": self.status_word(),
            "wear": {
                "friction_n": self.injected.friction_n,
                "cooling_loss": self.injected.cooling_loss,
                "brake_delay_ms": self.injected.brake_delay_ms,
            },
        }
        truth.update(self.kind.truth(self))
        return truth
