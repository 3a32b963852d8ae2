"""The machinery map's register layout and encodings (docs/interfaces/modbus-machinery.md §3-§7).

Pure: addresses, bit masks, and the int16 / int32 / uint16 / uint32 conversions between
engineering values and 16-bit registers (high word first, saturating at each encoding's
limits, rounding to the nearest raw value, as the reference drive does).
"""

from __future__ import annotations

import math

# Status block (read-only) and command block (read/write), 0-based PDU addresses.
STATUS_START, STATUS_COUNT = 0, 11
EXTRAS_START = 20  # a type's extra status registers
COMMAND_START, COMMAND_COUNT = 100, 7
SETTINGS_START = 120  # a type's extra settings (read/write)
MAX_EXTRAS = COMMAND_START - EXTRAS_START
MAX_SETTINGS = 125

REG_TARGET, REG_SPEED, REG_ACCEL = 100, 102, 103
REG_CONTROL, REG_HEARTBEAT, REG_WATCHDOG = 104, 105, 106

# Control word (register 104).
CW_ENABLE, CW_RUN, CW_STOP, CW_RESET, CW_QUICK_STOP = 1, 2, 4, 8, 16

# Status word (register 6).
SW_READY = 1 << 0
SW_ENABLED = 1 << 1
SW_MOVING = 1 << 2
SW_IN_POSITION = 1 << 3
SW_FAULT = 1 << 4
SW_ESTOP = 1 << 5
SW_BRAKE_RELEASED = 1 << 6
SW_LIMIT_LOW = 1 << 7
SW_LIMIT_HIGH = 1 << 8
SW_WATCHDOG_OK = 1 << 9

# Fault codes (register 7).
FAULT_NONE = 0
FAULT_WATCHDOG = 1
FAULT_OVERLOAD = 2
FAULT_HARD_LIMIT = 3
FAULT_DRIVE_TRIP = 4
FAULT_ENCODER = 5
FAULT_BRAKE = 6
FAULT_SLACK_ROPE = 7
FAULT_ESTOP = 8


def _raw(value: float, lo: int, hi: int) -> int:
    if math.isnan(value):
        return 0
    if math.isinf(value):
        return hi if value > 0 else lo
    return max(lo, min(hi, round(value)))


def u16(value: float) -> int:
    return _raw(value, 0, 0xFFFF)


def i16(value: float) -> int:
    return _raw(value, -0x8000, 0x7FFF) & 0xFFFF


def i32(value: float) -> tuple[int, int]:
    raw = _raw(value, -(2**31), 2**31 - 1) & 0xFFFFFFFF
    return raw >> 16, raw & 0xFFFF


def u32(value: float) -> tuple[int, int]:
    raw = _raw(value, 0, 2**32 - 1)
    return raw >> 16, raw & 0xFFFF


def to_i32(hi: int, lo: int) -> int:
    raw = (hi & 0xFFFF) << 16 | (lo & 0xFFFF)
    return raw - (1 << 32) if raw & 0x80000000 else raw


def to_i16(raw: int) -> int:
    raw &= 0xFFFF
    return raw - 0x10000 if raw & 0x8000 else raw


def bits(*flags: bool) -> int:
    """A bit field: ``flags[0]`` is bit 0."""
    return sum(1 << i for i, f in enumerate(flags) if f)
