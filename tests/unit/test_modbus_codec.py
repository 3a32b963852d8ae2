"""Modbus codec: register encoding round trips, known vectors, refusals and read planning."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.codec import (
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    EncodeError,
    ReadBlock,
    decode,
    encode,
    plan_reads,
)
from drivers.model import PROFILE_DIR, ModbusWire, PointSpec, load_profile

FAST = settings(max_examples=200, deadline=None, derandomize=True)

INT_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
WORD_ORDERS = ["big", "little"]
NUMERIC_ENCODINGS = [*INT_RANGES, "float32"]


def wire(encoding: str = "uint16", **kw: Any) -> ModbusWire:
    return ModbusWire(address=kw.pop("address", 0), encoding=encoding, **kw)  # type: ignore[arg-type]


def point(
    name: str,
    address: int,
    encoding: str = "uint16",
    *,
    table: str = "holding",
    access: str = "r",
    bit: int | None = None,
    dtype: str | None = None,
) -> PointSpec:
    if dtype is None:
        dtype = "bool" if bit is not None or encoding == "bool" else "float"
    return PointSpec.model_validate(
        {
            "name": name,
            "dtype": dtype,
            "access": access,
            "modbus": {"table": table, "address": address, "encoding": encoding, "bit": bit},
        }
    )


def expected_int_registers(raw: int, width: int, word_order: str) -> list[int]:
    """An independent oracle: two's complement, most significant word first, then ordered."""
    unsigned = raw % (1 << (16 * width))
    words = [(unsigned >> (16 * (width - 1 - i))) & 0xFFFF for i in range(width)]
    return words if word_order == "big" else words[::-1]


# --- round trips ----------------------------------------------------------------------------

scales = st.one_of(
    st.sampled_from([1.0, 0.1, 0.01, 0.5, 2.0, 10.0, -1.0, -0.1]),
    st.floats(min_value=1e-3, max_value=1e3).flatmap(lambda s: st.sampled_from([s, -s])),
)
offsets = st.one_of(st.just(0.0), st.floats(min_value=-1e6, max_value=1e6))


@FAST
@given(
    data=st.data(),
    encoding=st.sampled_from(list(INT_RANGES)),
    word_order=st.sampled_from(WORD_ORDERS),
    scale=scales,
    offset=offsets,
)
def test_integer_round_trip_on_the_grid(
    data: st.DataObject, encoding: str, word_order: str, scale: float, offset: float
) -> None:
    lo, hi = INT_RANGES[encoding]
    raw = data.draw(st.integers(lo, hi), label="raw")
    w = wire(encoding, word_order=word_order, scale=scale, offset=offset)
    value = raw * scale + offset

    registers = encode(w, value)

    assert registers == expected_int_registers(raw, w.width, word_order)
    decoded = decode(w, registers)
    if scale == 1.0 and offset == 0.0:
        assert decoded == raw
        assert isinstance(decoded, int)
    else:
        assert math.isclose(decoded, value, rel_tol=1e-12, abs_tol=1e-9)


@FAST
@given(
    data=st.data(),
    encoding=st.sampled_from(list(INT_RANGES)),
    word_order=st.sampled_from(WORD_ORDERS),
    scale=scales,
    offset=offsets,
)
def test_integer_round_trip_between_grid_points_is_within_half_a_step(
    data: st.DataObject, encoding: str, word_order: str, scale: float, offset: float
) -> None:
    lo, hi = INT_RANGES[encoding]
    raw = data.draw(st.floats(min_value=lo, max_value=hi), label="raw")
    w = wire(encoding, word_order=word_order, scale=scale, offset=offset)
    value = raw * scale + offset

    decoded = decode(w, encode(w, value))

    assert abs(decoded - value) <= abs(scale) / 2 + 1e-9 + 1e-12 * abs(value)


@FAST
@given(
    value=st.floats(width=32, allow_nan=False, allow_infinity=False),
    word_order=st.sampled_from(WORD_ORDERS),
)
def test_float32_round_trip_is_exact_without_scaling(value: float, word_order: str) -> None:
    w = wire("float32", word_order=word_order)
    registers = encode(w, value)
    assert len(registers) == 2
    assert all(0 <= r <= 0xFFFF for r in registers)
    decoded = decode(w, registers)
    assert decoded == value
    assert math.copysign(1.0, decoded) == math.copysign(1.0, value)  # -0.0 stays -0.0


@FAST
@given(
    f=st.floats(min_value=-(2.0**100), max_value=2.0**100, width=32),
    word_order=st.sampled_from(WORD_ORDERS),
    scale=scales,
    offset=offsets,
)
def test_float32_round_trip_with_scale_and_offset(
    f: float, word_order: str, scale: float, offset: float
) -> None:
    w = wire("float32", word_order=word_order, scale=scale, offset=offset)
    value = f * scale + offset
    decoded = decode(w, encode(w, value))
    # float32 keeps 24 bits of mantissa; decode rounds to 9 decimals
    assert math.isclose(decoded, value, rel_tol=0, abs_tol=1e-6 * (abs(value) + abs(offset)) + 1e-9)


# --- known vectors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "word_order", "value", "registers"),
    [
        ("int32", "big", 0x12345678, [0x1234, 0x5678]),
        ("int32", "little", 0x12345678, [0x5678, 0x1234]),
        ("uint32", "big", 0xDEADBEEF, [0xDEAD, 0xBEEF]),
        ("uint32", "little", 0xDEADBEEF, [0xBEEF, 0xDEAD]),
        ("int32", "big", -2, [0xFFFF, 0xFFFE]),
        ("int32", "little", -2, [0xFFFE, 0xFFFF]),
        ("int32", "big", -(2**31), [0x8000, 0x0000]),
        ("int16", "big", -1, [0xFFFF]),
        ("int16", "big", -(2**15), [0x8000]),
        ("int16", "little", 0x1234, [0x1234]),  # word order is moot for one register
        ("uint16", "big", 65535, [0xFFFF]),
        ("float32", "big", 1.0, [0x3F80, 0x0000]),
        ("float32", "little", 1.0, [0x0000, 0x3F80]),
        ("float32", "big", -2.5, [0xC020, 0x0000]),
        ("float32", "big", 0.1, [0x3DCC, 0xCCCD]),
        ("float32", "big", 0.0, [0x0000, 0x0000]),
    ],
)
def test_known_vectors(encoding: str, word_order: str, value: float, registers: list[int]) -> None:
    w = wire(encoding, word_order=word_order)
    assert encode(w, value) == registers
    decoded = decode(w, registers)
    if encoding == "float32":
        assert decoded == pytest.approx(value, rel=1e-7)
    else:
        assert decoded == value


def test_scaled_vectors() -> None:
    tenths = wire("int32", scale=0.1)
    assert encode(tenths, 1234.5) == [0x0000, 0x3039]  # raw 12345
    assert decode(tenths, [0x0000, 0x3039]) == 1234.5
    assert decode(tenths, [0, 23]) == 2.3  # no binary noise (23 * 0.1 = 2.3000000000000003)
    assert encode(tenths, 2.3) == [0, 23]
    assert decode(tenths, [0xFFFF, 0xFFFF]) == -0.1

    temperature = wire("uint16", scale=0.5, offset=-40.0)
    assert encode(temperature, 10.0) == [100]
    assert decode(temperature, [100]) == 10.0
    assert decode(temperature, [0]) == -40.0


def test_encode_rounds_to_the_nearest_raw_value() -> None:
    w = wire("uint16", scale=0.1)
    assert encode(w, 1.04) == [10]
    assert encode(w, 1.06) == [11]
    assert encode(wire("uint16"), 65535.4) == [65535]


# --- bits ----------------------------------------------------------------------------------


@FAST
@given(
    register=st.integers(0, 0xFFFF),
    bit=st.integers(0, 15),
    encoding=st.sampled_from(["uint16", "int16"]),
)
def test_bit_field_decodes_one_bit(register: int, bit: int, encoding: str) -> None:
    w = wire(encoding, bit=bit)
    result = decode(w, [register])
    assert isinstance(result, bool)
    assert result is bool(register & (1 << bit))


def test_bit_field_vectors() -> None:
    status = 0b10_0000_0101  # bits 0, 2, 9
    assert [decode(wire(bit=b), [status]) for b in range(11)] == [
        True,
        False,
        True,
        False,
        False,
        False,
        False,
        False,
        False,
        True,
        False,
    ]
    assert decode(wire("int16", bit=15), [0x8000]) is True
    assert decode(wire("int16", bit=15), [0x7FFF]) is False


@pytest.mark.parametrize("table", ["coil", "discrete"])
def test_single_bit_tables(table: str) -> None:
    w = wire("bool", table=table)
    assert decode(w, [1]) is True
    assert decode(w, [0]) is False
    assert encode(w, True) == [1]
    assert encode(w, False) == [0]


def test_encode_refuses_bit_fields() -> None:
    with pytest.raises(EncodeError, match="read-only"):
        encode(wire(bit=3), True)
    with pytest.raises(EncodeError):
        encode(wire("int16", bit=0), 1)


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("w", "value"),
    [
        (wire("uint16"), -1),
        (wire("uint16"), 65536),
        (wire("uint16"), 65535.6),
        (wire("int16"), 32768),
        (wire("int16"), -32769),
        (wire("uint32"), -1),
        (wire("uint32"), 2**32),
        (wire("int32"), 2**31),
        (wire("int32"), -(2**31) - 1),
        (wire("float32"), 1e39),
        (wire("float32"), -1e39),
        (wire("uint16", scale=0.1), 6553.6),  # raw 65536
        (wire("uint16", scale=0.1), -0.1),
        (wire("int16", offset=1000.0), -31769.0),  # raw -32769
        (wire("uint16", scale=-1.0), 1.0),  # raw -1
        (wire("int32", scale=1e-300), 1.0),  # raw 1e300
    ],
    ids=lambda x: repr(x) if not isinstance(x, ModbusWire) else f"{x.encoding}/{x.scale}",
)
def test_encode_refuses_out_of_range(w: ModbusWire, value: float) -> None:
    with pytest.raises(EncodeError):
        encode(w, value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("encoding", NUMERIC_ENCODINGS)
def test_encode_refuses_non_finite(encoding: str, value: float) -> None:
    with pytest.raises(EncodeError, match="finite"):
        encode(wire(encoding), value)


def test_encode_refuses_a_value_that_overflows_through_scaling() -> None:
    with pytest.raises(EncodeError):
        encode(wire("float32", scale=1e-308), 1e300)  # (value - offset) / scale is inf


def test_encode_error_is_a_value_error() -> None:
    assert issubclass(EncodeError, ValueError)


def test_encode_refuses_huge_int_with_encode_error() -> None:
    with pytest.raises(EncodeError):
        encode(wire("int32"), 10**400)


@pytest.mark.parametrize(
    ("encoding", "registers"),
    [
        ("uint16", []),
        ("uint16", [1, 2]),
        ("int16", [1, 2, 3]),
        ("int32", [1]),
        ("uint32", []),
        ("float32", [1, 2, 3]),
        ("bool", []),
    ],
)
def test_decode_with_wrong_register_count(encoding: str, registers: list[int]) -> None:
    table = "coil" if encoding == "bool" else "holding"
    with pytest.raises(ValueError, match="expected"):
        decode(wire(encoding, table=table), registers)


# --- decode fuzz -----------------------------------------------------------------------------

finite_nonzero = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != 0)
any_wire = st.one_of(
    st.builds(
        ModbusWire,
        address=st.just(0),
        encoding=st.sampled_from(NUMERIC_ENCODINGS),
        word_order=st.sampled_from(WORD_ORDERS),
        scale=st.one_of(st.just(1.0), finite_nonzero),
        offset=st.one_of(st.just(0.0), st.floats(allow_nan=False, allow_infinity=False)),
    ),
    st.builds(
        ModbusWire,
        address=st.just(0),
        encoding=st.sampled_from(["uint16", "int16"]),
        bit=st.integers(0, 15),
    ),
    st.builds(
        ModbusWire,
        address=st.just(0),
        encoding=st.just("bool"),
        table=st.sampled_from(["coil", "discrete"]),
    ),
)


@FAST
@given(w=any_wire, registers=st.lists(st.integers(0, 0xFFFF), max_size=6))
def test_decode_raises_only_value_error_on_arbitrary_registers(
    w: ModbusWire, registers: list[int]
) -> None:
    try:
        decode(w, registers)
    except ValueError:
        assert len(registers) != w.width
    else:
        assert len(registers) == w.width


@FAST
@given(data=st.data(), w=any_wire)
def test_decode_never_raises_for_the_right_register_count(
    data: st.DataObject, w: ModbusWire
) -> None:
    registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=w.width, max_size=w.width))
    result = decode(w, registers)
    assert isinstance(result, bool | int | float)


# --- read planning ---------------------------------------------------------------------------


def spans(blocks: list[ReadBlock]) -> list[tuple[str, int, int]]:
    return [(b.table, b.start, b.count) for b in blocks]


def test_contiguous_points_make_one_block_in_address_order() -> None:
    points = [
        point("d", 5),
        point("b", 1, "int32"),
        point("a", 0),
        point("c", 3, "float32"),
    ]
    blocks = plan_reads(points)
    assert spans(blocks) == [("holding", 0, 6)]
    assert [p.name for p in blocks[0].points] == ["a", "b", "c", "d"]


def test_bit_fields_of_one_register_share_a_block() -> None:
    points = [point(f"b{i}", 6, bit=i) for i in range(16)] + [point("word", 7)]
    blocks = plan_reads(points)
    assert spans(blocks) == [("holding", 6, 2)]
    assert len(blocks[0].points) == 17


@pytest.mark.parametrize(
    ("second", "max_gap", "expected"),
    [
        (9, 8, [("holding", 0, 10)]),  # 8 unused registers: bridged
        (10, 8, [("holding", 0, 1), ("holding", 10, 1)]),  # 9 unused: split
        (1, 0, [("holding", 0, 2)]),
        (2, 0, [("holding", 0, 1), ("holding", 2, 1)]),
        (50, 49, [("holding", 0, 51)]),
        (51, 49, [("holding", 0, 1), ("holding", 51, 1)]),
    ],
)
def test_gaps_are_bridged_up_to_max_gap(
    second: int, max_gap: int, expected: list[tuple[str, int, int]]
) -> None:
    assert spans(plan_reads([point("a", 0), point("b", second)], max_gap=max_gap)) == expected


def test_block_never_exceeds_the_pdu_limit() -> None:
    assert MAX_READ_REGISTERS == 125
    points = [point(f"p{i}", i) for i in range(126)]
    assert spans(plan_reads(points)) == [("holding", 0, 125), ("holding", 125, 1)]


def test_exactly_125_registers_fit_in_one_block() -> None:
    points = [point(f"p{i}", i) for i in range(123)] + [point("wide", 123, "int32")]
    assert spans(plan_reads(points)) == [("holding", 0, 125)]


def test_a_two_register_value_straddling_the_limit_starts_a_new_block() -> None:
    points = [point(f"p{i}", i) for i in range(124)] + [point("wide", 124, "int32")]
    blocks = plan_reads(points)
    assert spans(blocks) == [("holding", 0, 124), ("holding", 124, 2)]
    assert [p.name for p in blocks[1].points] == ["wide"]


def test_a_large_max_gap_does_not_override_the_pdu_limit() -> None:
    assert spans(plan_reads([point("a", 0), point("b", 124)], max_gap=500)) == [("holding", 0, 125)]
    assert spans(plan_reads([point("a", 0), point("b", 125)], max_gap=500)) == [
        ("holding", 0, 1),
        ("holding", 125, 1),
    ]


def test_bit_tables_use_the_bit_limit() -> None:
    coils = [
        point("a", 0, "bool", table="coil"),
        point("b", MAX_READ_BITS - 1, "bool", table="coil"),
    ]
    assert spans(plan_reads(coils, max_gap=MAX_READ_BITS)) == [("coil", 0, MAX_READ_BITS)]
    coils.append(point("c", MAX_READ_BITS, "bool", table="coil"))
    assert spans(plan_reads(coils, max_gap=MAX_READ_BITS)) == [
        ("coil", 0, MAX_READ_BITS),
        ("coil", MAX_READ_BITS, 1),
    ]


def test_tables_are_planned_separately() -> None:
    points = [
        point("h0", 0),
        point("i0", 0, table="input"),
        point("i1", 1, table="input"),
        point("h1", 1),
        point("c0", 0, "bool", table="coil"),
        point("d0", 0, "bool", table="discrete"),
    ]
    assert spans(plan_reads(points)) == [
        ("coil", 0, 1),
        ("discrete", 0, 1),
        ("holding", 0, 2),
        ("input", 0, 2),
    ]


def test_write_only_points_and_points_without_an_address_are_skipped() -> None:
    points = [
        point("r", 0),
        point("rw", 1, access="rw"),
        point("w", 2, access="w"),
        point("w_far", 50, access="w"),
        PointSpec(name="virtual"),
    ]
    blocks = plan_reads(points)
    assert spans(blocks) == [("holding", 0, 2)]
    assert [p.name for p in blocks[0].points] == ["r", "rw"]
    assert plan_reads([point("w", 0, access="w")]) == []
    assert plan_reads([]) == []


def test_hoist_profile_is_read_in_two_blocks() -> None:
    profile = load_profile(PROFILE_DIR / "hoist.toml")
    blocks = plan_reads(profile.points.values())
    assert spans(blocks) == [("holding", 0, 11), ("holding", 100, 7)]
    status, command = blocks
    assert {p.name for p in status.points} == {
        name for name, p in profile.points.items() if p.modbus and p.modbus.address < 100
    }
    assert [p.name for p in command.points] == [
        "target_position",
        "speed_limit",
        "acceleration",
        "control_word",
        "heartbeat",
        "watchdog_ms",
    ]


@st.composite
def point_layouts(draw: st.DrawFn) -> list[PointSpec]:
    """Non-overlapping points in random tables, with random gaps, some write-only."""
    points: list[PointSpec] = []
    next_free = {"holding": 0, "input": 0, "coil": 0}
    for i in range(draw(st.integers(0, 40))):
        table = draw(st.sampled_from(list(next_free)))
        gap = draw(st.integers(0, 20))
        address = next_free[table] + gap
        encoding = "bool" if table == "coil" else draw(st.sampled_from(NUMERIC_ENCODINGS))
        access = "r" if table == "input" else draw(st.sampled_from(["r", "rw", "w"]))
        points.append(point(f"p{i}", address, encoding, table=table, access=access))
        next_free[table] = address + points[-1].modbus.width  # type: ignore[union-attr]
    return points


@settings(max_examples=100, deadline=None, derandomize=True)
@given(points=point_layouts(), max_gap=st.integers(0, 30), seed=st.integers(0, 2**16))
def test_plan_reads_invariants(points: list[PointSpec], max_gap: int, seed: int) -> None:
    shuffled = list(points)
    random.Random(seed).shuffle(shuffled)
    blocks = plan_reads(shuffled, max_gap=max_gap)

    planned = [p.name for b in blocks for p in b.points]
    readable = [p.name for p in points if p.access.readable]
    assert sorted(planned) == sorted(readable)  # every readable point exactly once
    for b in blocks:
        limit = MAX_READ_BITS if b.table in ("coil", "discrete") else MAX_READ_REGISTERS
        assert 1 <= b.count <= limit
        for p in b.points:
            assert p.modbus is not None
            assert p.modbus.table == b.table
            assert b.start <= p.modbus.address
            assert p.modbus.address + p.modbus.width <= b.start + b.count
        # the block is tight: it starts at its first point and ends at its last
        assert b.start == min(p.modbus.address for p in b.points if p.modbus)
    for a, b in itertools.pairwise(blocks):
        if a.table == b.table:
            assert a.start + a.count <= b.start


# --- ReadBlock.decode ------------------------------------------------------------------------


def test_read_block_decode_short_response() -> None:
    block = plan_reads([point("a", 0), point("b", 1, "int32")])[0]
    with pytest.raises(ValueError, match="short response"):
        block.decode([0, 0])
    with pytest.raises(ValueError, match="short response"):
        block.decode([])


def test_read_block_decode_applies_offsets_and_dtypes() -> None:
    profile = load_profile(PROFILE_DIR / "hoist.toml")
    status = plan_reads(profile.points.values())[0]
    registers = [0] * 11
    registers[0:2] = [0x0000, 0x3039]  # position 1234.5 mm
    registers[2:4] = [0xFFFF, 0xFF9C]  # velocity -10.0 mm/s
    registers[4:6] = [0x0000, 0x07D0]  # load 200.0 kg
    registers[6] = 0b10_0000_0011  # ready, enabled, watchdog_ok
    registers[7] = 2  # fault code
    registers[8] = 77  # heartbeat echo
    registers[9] = 123  # 12.3 A
    registers[10] = 0xFF9C  # -10.0 °C
    values = status.decode(registers)

    assert values["position"] == 1234.5
    assert values["velocity"] == -10.0
    assert values["load"] == 200.0
    assert values["ready"] is True
    assert values["enabled"] is True
    assert values["moving"] is False
    assert values["watchdog_ok"] is True
    assert values["fault_code"] == 2
    assert type(values["fault_code"]) is int
    assert values["heartbeat_echo"] == 77
    assert values["motor_current"] == pytest.approx(12.3)
    assert type(values["motor_current"]) is float
    assert values["motor_temperature"] == pytest.approx(-10.0)
    assert set(values) == {p.name for p in status.points}


def test_read_block_decode_accepts_a_longer_response() -> None:
    block = plan_reads([point("a", 4, dtype="int")])[0]
    assert block.decode([7, 99, 99]) == {"a": 7}


@pytest.mark.parametrize("registers", [[0x7F80, 0x0000], [0xFF80, 0x0000]])  # +inf, -inf
def test_read_block_decode_of_non_finite_float_into_int_point_raises_value_error(
    registers: list[int],
) -> None:
    block = plan_reads([point("count", 0, "float32", dtype="int")])[0]
    with pytest.raises(ValueError):  # noqa: PT011 -- OverflowError is not a ValueError
        block.decode(registers)
