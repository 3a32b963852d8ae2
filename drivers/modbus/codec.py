"""Modbus wire format: pure functions from registers to engineering values and back.

Nothing here does I/O, so all of it is fuzzed (tests/unit/test_modbus_codec.py). Read planning
groups a profile's points into as few block reads as the map allows: one request per table run,
bridging gaps of a few unused registers, never more than the 125 registers a single
read-holding-registers PDU may carry.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from drivers.model import ModbusWire, PointSpec, Value, ValueType

MAX_READ_REGISTERS = 125  # Modbus application protocol v1.1b3, 6.3
MAX_READ_BITS = 2000

_FORMAT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}

# Modbus application protocol v1.1b3, 7: the exception codes a device may answer with.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


def describe_exception(code: int) -> str:
    """``exception 2 (illegal data address)``: a Modbus exception code for people."""
    return f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown code')})"


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
    # One compiled reader per point: polling 200 devices at 10 Hz decodes ~35 000 values a
    # second, and the generic decode() costs several times more per value.
    _readers: tuple[tuple[str, Callable[[Sequence[int]], Value]], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        readers = tuple((p.name, _compile(p, self.start)) for p in self.points)
        object.__setattr__(self, "_readers", readers)

    @property
    def label(self) -> str:
        """``holding 0+11``: how health reasons and logs name this request."""
        return f"{self.table} {self.start}+{self.count}"

    def decode(self, registers: Sequence[int]) -> dict[str, Value]:
        """Every point's value; ValueError on a short response or the first bad value."""
        values, errors = self.decode_points(registers)
        if errors:
            raise ValueError("; ".join(errors.values()))
        return values

    def decode_points(self, registers: Sequence[int]) -> tuple[dict[str, Value], dict[str, str]]:
        """Values of the points that decode, and why each other point does not.

        One NaN in a float must not discard the rest of a status block, so a bad value is
        reported per point. A short response fails every point.
        """
        if len(registers) < self.count:
            reason = f"short response: {len(registers)} of {self.count} registers"
            return {}, {p.name: reason for p in self.points}
        values: dict[str, Value] = {}
        errors: dict[str, str] = {}
        for name, read in self._readers:
            try:
                values[name] = read(registers)
            except ValueError as exc:  # to_point_value names the point
                errors[name] = str(exc)
        return values, errors


_FLOAT32 = struct.Struct(">f")


def point_reader(point: PointSpec, start: int) -> Callable[[Sequence[int]], Value]:
    """The value of ``point`` from the registers of a block read from ``start``.

    Exactly ``to_point_value(point, decode(wire, ...))``, compiled once: for hot paths such as
    the 50 Hz axis cycle. ValueError (naming the point) for a non-finite float.
    """
    if point.modbus is None:
        raise ValueError(f"{point.name} has no Modbus address")
    return _compile(point, start)


def _compile(point: PointSpec, start: int) -> Callable[[Sequence[int]], Value]:
    """A function of the block's registers giving exactly ``to_point_value(decode(...))``."""
    wire = point.modbus
    assert wire is not None
    i = wire.address - start
    if wire.encoding == "bool" or wire.bit is not None:
        bit = wire.bit or 0
        return lambda r: to_point_value(point, bool((r[i] >> bit) & 1))
    j, k = (i, i + 1) if wire.word_order == "big" else (i + 1, i)
    raw: Callable[[Sequence[int]], float | int]
    if wire.encoding == "uint16":
        raw = lambda r: r[i]  # noqa: E731
    elif wire.encoding == "int16":
        raw = lambda r: r[i] - 0x10000 if r[i] & 0x8000 else r[i]  # noqa: E731
    elif wire.encoding == "uint32":
        raw = lambda r: r[j] << 16 | r[k]  # noqa: E731
    elif wire.encoding == "int32":
        raw = lambda r: (r[j] << 16 | r[k]) - (0x100000000 if r[j] & 0x8000 else 0)  # noqa: E731
    else:
        raw = lambda r: _FLOAT32.unpack(((r[j] << 16) | r[k]).to_bytes(4, "big"))[0]  # noqa: E731
    scale, offset = wire.scale, wire.offset
    if scale == 1.0 and offset == 0.0:
        return lambda r: to_point_value(point, raw(r))
    return lambda r: to_point_value(point, round(raw(r) * scale + offset, 9))


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
