"""Modbus wire format: pure functions from registers to engineering values and back.

Nothing here does I/O, so all of it is fuzzed (tests/unit/test_modbus_codec.py). Read planning
groups a profile's points into as few block reads as the map allows: one request per table run,
bridging gaps of a few unused registers, never more than the 125 registers a single
read-holding-registers PDU may carry.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from drivers.model import ModbusWire, PointSpec, Value, ValueType

MAX_READ_REGISTERS = 125  # Modbus application protocol v1.1b3, 6.3
MAX_READ_BITS = 2000

_FORMAT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}


class EncodeError(ValueError):
    """A value that the point's wire encoding cannot carry."""


def decode(wire: ModbusWire, registers: Sequence[int]) -> float | int | bool:
    """The engineering value of ``wire`` from its raw registers (or bits, for coil tables)."""
    if len(registers) != wire.width:
        raise ValueError(f"expected {wire.width} register(s), got {len(registers)}")
    if wire.encoding == "bool":
        return bool(registers[0])
    if wire.bit is not None:
        return bool((registers[0] >> wire.bit) & 1)
    regs = list(registers) if wire.word_order == "big" else list(reversed(registers))
    raw = struct.unpack(_FORMAT[wire.encoding], b"".join(r.to_bytes(2, "big") for r in regs))[0]
    if wire.scale == 1.0 and wire.offset == 0.0:
        return raw  # type: ignore[no-any-return]
    # round() drops binary noise such as 23 * 0.1 = 2.3000000000000003
    return round(raw * wire.scale + wire.offset, 9)  # type: ignore[no-any-return]


def encode(wire: ModbusWire, value: float | int | bool) -> list[int]:
    """The registers (or bits) that carry ``value``; EncodeError if the encoding cannot."""
    if wire.encoding == "bool":
        return [1 if value else 0]
    if wire.bit is not None:
        raise EncodeError("bit fields are read-only: map control words as whole registers")
    try:
        number = (float(value) - wire.offset) / wire.scale
    except OverflowError as exc:
        raise EncodeError(f"{value!r} is too large") from exc
    if not math.isfinite(number):
        raise EncodeError(f"{value!r} is not a finite number")
    fmt = _FORMAT[wire.encoding]
    raw: float | int = number if wire.encoding == "float32" else round(number)
    try:
        packed = struct.pack(fmt, raw)
    except (struct.error, OverflowError) as exc:
        raise EncodeError(f"{value!r} does not fit {wire.encoding} (raw {raw!r})") from exc
    regs = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    return regs if wire.word_order == "big" else regs[::-1]


def to_point_value(point: PointSpec, raw: float | int | bool) -> Value:
    """Apply the point's dtype to a decoded value; ValueError for NaN or infinity."""
    if isinstance(raw, float) and not math.isfinite(raw):
        raise ValueError(f"{point.name}: the device sent a non-finite value ({raw})")
    if point.dtype is ValueType.BOOL:
        return bool(raw)
    if point.dtype is ValueType.INT:
        return round(raw) if isinstance(raw, float) else int(raw)
    return float(raw)


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers (or bits) of ``table`` from ``start``."""

    table: str
    start: int
    count: int
    points: tuple[PointSpec, ...]

    def decode(self, registers: Sequence[int]) -> dict[str, Value]:
        if len(registers) < self.count:
            raise ValueError(f"short response: {len(registers)} of {self.count} registers")
        values: dict[str, Value] = {}
        for point in self.points:
            wire = point.modbus
            assert wire is not None
            offset = wire.address - self.start
            values[point.name] = to_point_value(
                point, decode(wire, registers[offset : offset + wire.width])
            )
        return values


def plan_reads(points: Iterable[PointSpec], max_gap: int = 8) -> list[ReadBlock]:
    """Group readable points into as few block reads as the map allows.

    Points are sorted by table and address; a new block starts when the next point would
    leave a gap larger than ``max_gap`` registers or push the block past the PDU limit.
    """
    by_table: dict[str, list[PointSpec]] = {}
    for p in points:
        if p.modbus is not None and p.access.readable:
            by_table.setdefault(p.modbus.table, []).append(p)
    blocks: list[ReadBlock] = []
    for table, members in sorted(by_table.items()):
        limit = MAX_READ_BITS if table in ("coil", "discrete") else MAX_READ_REGISTERS
        members.sort(key=lambda p: p.modbus.address if p.modbus else 0)
        current: list[PointSpec] = []
        start = end = 0
        for p in members:
            wire = p.modbus
            assert wire is not None
            p_end = wire.address + wire.width
            if current and (wire.address - end > max_gap or max(end, p_end) - start > limit):
                blocks.append(ReadBlock(table, start, end - start, tuple(current)))
                current = []
            if not current:
                start, end = wire.address, p_end
            current.append(p)
            end = max(end, p_end)
        if current:
            blocks.append(ReadBlock(table, start, end - start, tuple(current)))
    return blocks
