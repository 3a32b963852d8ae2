"""A hoist drive as a vendor would build it to docs/interfaces/modbus-machinery.md.

The simulator is written from that document alone (it imports nothing from Flytower), so a
wrong register in a driver profile shows up as a failing test instead of being mirrored.

``HoistAxis`` is the physics and the drive's state machine, advanced by ``step(dt)``; it knows
nothing about Modbus. ``HoistRegisters`` maps it onto the documented register map and is what
the Modbus server's action hook calls on every request.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

# Register map, docs/interfaces/modbus-machinery.md (holding registers, 0-based addresses).
REG_POSITION = 0  # int32, 0.1 mm
REG_VELOCITY = 2  # int32, 0.1 mm/s
REG_LOAD = 4  # int32, 0.1 kg
REG_STATUS = 6  # uint16 bits
REG_FAULT = 7  # uint16
REG_HEARTBEAT_ECHO = 8  # uint16
REG_CURRENT = 9  # uint16, 0.1 A
REG_TEMPERATURE = 10  # int16, 0.1 degC
STATUS_COUNT = 11
REG_TARGET = 100  # int32, 0.1 mm
REG_SPEED = 102  # uint16, mm/s
REG_ACCEL = 103  # uint16, mm/s^2
REG_CONTROL = 104  # uint16 bits
REG_HEARTBEAT = 105  # uint16
REG_WATCHDOG = 106  # uint16, ms
COMMAND_COUNT = 7

CW_ENABLE, CW_RUN, CW_STOP, CW_RESET, CW_QUICK_STOP = 1, 2, 4, 8, 16
(
    SW_READY,
    SW_ENABLED,
    SW_MOVING,
    SW_IN_POSITION,
    SW_FAULT,
    SW_ESTOP,
    SW_BRAKE_RELEASED,
    SW_LIMIT_LOW,
    SW_LIMIT_HIGH,
    SW_WATCHDOG_OK,
) = (1 << i for i in range(10))

FAULT_NONE, FAULT_WATCHDOG, FAULT_OVERLOAD, FAULT_HARD_LIMIT = 0, 1, 2, 3
G = 9.81


@dataclass
class HoistParams:
    travel_mm: float = 12000.0  # hard limits at 0 and travel_mm
    max_speed_mm_s: float = 1500.0
    max_accel_mm_s2: float = 2000.0
    quick_stop_decel_mm_s2: float = 3000.0
    payload_kg: float = 250.0
    rated_load_kg: float = 500.0
    hard_limit_margin_mm: float = 50.0  # limit switches sit this far beyond the travel
    in_position_window_mm: float = 1.0
    watchdog_ms_default: int = 200
    start_position_mm: float = 0.0


@dataclass
class HoistAxis:
    """Drive behaviour: moves only while enabled, fault-free and fed a live heartbeat."""

    params: HoistParams = field(default_factory=HoistParams)
    position: float = 0.0
    velocity: float = 0.0
    accel: float = 0.0
    target: float = 0.0
    speed_limit: float = 500.0
    accel_limit: float = 500.0
    control: int = 0
    fault: int = FAULT_NONE
    estop: bool = False
    watchdog_ms: int = 0
    heartbeat: int = 0
    heartbeat_at: float = float("-inf")  # no heartbeat seen yet
    temperature: float = 25.0
    stopping: bool = False

    def __post_init__(self) -> None:
        self.position = self.target = self.params.start_position_mm

    # --- inputs --------------------------------------------------------------------------

    def write_heartbeat(self, value: int, now: float) -> None:
        if value != self.heartbeat:
            self.heartbeat, self.heartbeat_at = value, now

    def write_control(self, word: int) -> None:
        # Every write with the reset bit is a reset request (not only a rising edge), so a
        # master that repeats reset_fault after a persistent fault is not silently ignored.
        if word & CW_RESET and self.fault and not self.estop:
            self.fault = FAULT_NONE
        self.control = word
        if word & (CW_STOP | CW_QUICK_STOP) or not word & CW_RUN:
            self.stopping = abs(self.velocity) > 0

    def watchdog_s(self) -> float:
        return (self.watchdog_ms or self.params.watchdog_ms_default) / 1000

    def heartbeat_alive(self, now: float) -> bool:
        return now - self.heartbeat_at <= self.watchdog_s()

    @property
    def enabled(self) -> bool:
        return bool(self.control & CW_ENABLE) and not self.fault and not self.estop

    # --- physics -------------------------------------------------------------------------

    def step(self, dt: float, now: float) -> None:
        p = self.params
        if self.enabled and not self.heartbeat_alive(now):
            self.fault = FAULT_WATCHDOG  # a fault stops at the quick-stop deceleration
        stop_bits = CW_STOP | CW_QUICK_STOP
        run = self.enabled and bool(self.control & CW_RUN) and not self.control & stop_bits
        quick = bool(self.control & CW_QUICK_STOP) or self.fault != FAULT_NONE or self.estop
        decel = p.quick_stop_decel_mm_s2 if quick else max(self.accel_limit, 10.0)
        v0 = self.velocity
        if run:
            a_max = min(self.accel_limit, p.max_accel_mm_s2)
            v_max = min(self.speed_limit, p.max_speed_mm_s)
            error = self.target - self.position
            direction = 1.0 if error >= 0 else -1.0
            e, v = abs(error), self.velocity * direction  # along the direction of travel
            # Fastest v' for this step that still lets us stop at the target afterwards:
            # v'^2 <= 2 a (e - (v + v') dt / 2), solved for v'.
            room = max(0.0, e - v * dt / 2)
            v_stop = (-a_max * dt + math.sqrt((a_max * dt) ** 2 + 8 * a_max * room)) / 2
            v_new = min(v_max, v_stop, v + a_max * dt)
            v_new = max(v_new, v - a_max * dt)
            self.velocity = direction * v_new
            if e < p.in_position_window_mm / 10 and abs(v_new) <= a_max * dt:
                self.position, self.velocity = self.target, 0.0
                v0 = 0.0
        else:
            dv = min(abs(self.velocity), decel * dt)
            self.velocity -= math.copysign(dv, self.velocity)
        self.position += 0.5 * (v0 + self.velocity) * dt
        self.accel = (self.velocity - v0) / dt if dt > 0 else 0.0
        low, high = -p.hard_limit_margin_mm, p.travel_mm + p.hard_limit_margin_mm
        if self.position <= low or self.position >= high:
            self.position = min(max(self.position, low), high)
            if abs(self.velocity) > 0 and not self._moving_away_from_limit():
                self.velocity = 0.0
                self.fault = self.fault or FAULT_HARD_LIMIT
        if self.load_kg > p.rated_load_kg * 1.25:
            self.fault = self.fault or FAULT_OVERLOAD
        # Motor heats with current squared and cools towards 25 degC (time constant 10 min).
        self.temperature += dt * (0.002 * self.current_a**2 - (self.temperature - 25.0) / 600)
        if abs(self.velocity) == 0.0:
            self.stopping = False

    def _moving_away_from_limit(self) -> bool:
        return (self.velocity > 0 and self.position < self.params.travel_mm) or (
            self.velocity < 0 and self.position > 0
        )

    @property
    def load_kg(self) -> float:
        # Load cell: static payload plus the inertial force of accelerating it.
        return self.params.payload_kg * (1 + self.accel / 1000 / G)

    @property
    def current_a(self) -> float:
        # Magnetising current while the brake is open, plus mechanical power m*g*v over a
        # 400 V three-phase supply at 85 % efficiency.
        holding = 2.0 if self.brake_released else 0.0
        power_w = self.load_kg * G * abs(self.velocity) / 1000
        return holding + power_w / (400 * math.sqrt(3) * 0.85) * math.sqrt(3)

    @property
    def moving(self) -> bool:
        return abs(self.velocity) > 0.05

    @property
    def brake_released(self) -> bool:
        return self.enabled or self.moving

    def status_word(self, now: float) -> int:
        p = self.params
        sw = 0
        if not self.fault and not self.estop:
            sw |= SW_READY
        if self.enabled:
            sw |= SW_ENABLED
        if self.moving:
            sw |= SW_MOVING
        if abs(self.position - self.target) <= p.in_position_window_mm and not self.moving:
            sw |= SW_IN_POSITION
        if self.fault:
            sw |= SW_FAULT
        if self.estop:
            sw |= SW_ESTOP
        if self.brake_released:
            sw |= SW_BRAKE_RELEASED
        if self.position <= -p.hard_limit_margin_mm:
            sw |= SW_LIMIT_LOW
        if self.position >= p.travel_mm + p.hard_limit_margin_mm:
            sw |= SW_LIMIT_HIGH
        if self.heartbeat_alive(now):
            sw |= SW_WATCHDOG_OK
        return sw


def _i32(value: float) -> list[int]:
    raw = max(-(2**31), min(2**31 - 1, round(value)))
    hi, lo = struct.unpack(">HH", struct.pack(">i", raw))
    return [hi, lo]


def _i16(value: float) -> int:
    return struct.unpack(">H", struct.pack(">h", max(-32768, min(32767, round(value)))))[0]  # type: ignore[no-any-return]


def _u16(value: float) -> int:
    return max(0, min(65535, round(value)))


class HoistRegisters:
    """The drive's register image: status refreshed on read, commands applied on write."""

    def __init__(self, axis: HoistAxis) -> None:
        self.axis = axis

    def status(self, now: float) -> list[int]:
        a = self.axis
        return [
            *_i32(a.position * 10),
            *_i32(a.velocity * 10),
            *_i32(a.load_kg * 10),
            a.status_word(now),
            a.fault,
            a.heartbeat,
            _u16(a.current_a * 10),
            _i16(a.temperature * 10),
        ]

    def commands(self) -> list[int]:
        a = self.axis
        return [
            *_i32(a.target * 10),
            _u16(a.speed_limit),
            _u16(a.accel_limit),
            a.control,
            a.heartbeat,
            a.watchdog_ms,
        ]

    def write(self, address: int, values: list[int], now: float) -> None:
        """Apply a write of ``values`` starting at ``address`` to the drive."""
        image = dict(enumerate(self.commands(), start=REG_TARGET))
        for i, v in enumerate(values):
            image[address + i] = int(v) & 0xFFFF
        a = self.axis
        touched = set(range(address, address + len(values)))
        if touched & {REG_TARGET, REG_TARGET + 1}:
            a.target = (
                struct.unpack(">i", struct.pack(">HH", image[REG_TARGET], image[REG_TARGET + 1]))[0]
                / 10
            )
        if REG_SPEED in touched:
            a.speed_limit = float(image[REG_SPEED])
        if REG_ACCEL in touched:
            a.accel_limit = float(image[REG_ACCEL])
        if REG_WATCHDOG in touched:
            a.watchdog_ms = image[REG_WATCHDOG]
        if REG_HEARTBEAT in touched:
            a.write_heartbeat(image[REG_HEARTBEAT], now)
        if REG_CONTROL in touched:
            a.write_control(image[REG_CONTROL])
