"""The link's request scheduler (priorities, capacity, cancellation) and per-point decoding."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.codec import (
    EXCEPTION_NAMES,
    ReadBlock,
    decode,
    describe_exception,
    plan_reads,
    to_point_value,
)
from drivers.modbus.link import Priority, RequestScheduler
from drivers.model import PointSpec

FAST = settings(max_examples=200, deadline=None, derandomize=True)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiters_are_served_by_priority_then_arrival() -> None:
    sched = RequestScheduler()
    order: list[str] = []

    async def job(name: str, priority: Priority) -> None:
        async with sched.slot(priority):
            order.append(name)
            await asyncio.sleep(0)

    await sched.acquire(Priority.POLL)  # the request on the wire
    jobs = [
        ("poll-1", Priority.POLL),
        ("heartbeat-1", Priority.HEARTBEAT),
        ("poll-2", Priority.POLL),
        ("command-1", Priority.COMMAND),
        ("heartbeat-2", Priority.HEARTBEAT),
        ("command-2", Priority.COMMAND),
    ]
    tasks = [asyncio.create_task(job(n, p), name=n) for n, p in jobs]
    await settle()
    assert sched.waiting == 6 and order == []
    sched.release()
    await asyncio.gather(*tasks)
    assert order == ["command-1", "command-2", "heartbeat-1", "heartbeat-2", "poll-1", "poll-2"]
    assert sched.in_flight == 0 and sched.waiting == 0


async def test_capacity_is_never_exceeded() -> None:
    sched = RequestScheduler(max_in_flight=3)
    peak = 0

    async def job(i: int) -> None:
        nonlocal peak
        async with sched.slot(Priority(i % 3)):
            peak = max(peak, sched.in_flight)
            await asyncio.sleep(0)

    await asyncio.gather(*(job(i) for i in range(50)))
    assert peak == 3 and sched.in_flight == 0


async def test_a_cancelled_waiter_does_not_hold_the_slot() -> None:
    sched = RequestScheduler()
    await sched.acquire(Priority.POLL)
    doomed = asyncio.create_task(sched.acquire(Priority.COMMAND), name="doomed")
    later = asyncio.create_task(sched.acquire(Priority.POLL), name="later")
    await settle()
    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)
    assert sched.waiting == 1
    sched.release()
    await asyncio.wait_for(later, 1)  # the slot skipped the cancelled waiter
    assert sched.in_flight == 1
    sched.release()


async def test_a_waiter_cancelled_after_its_grant_passes_the_slot_on() -> None:
    sched = RequestScheduler()
    await sched.acquire(Priority.POLL)
    granted = asyncio.create_task(sched.acquire(Priority.COMMAND), name="granted")
    nxt = asyncio.create_task(sched.acquire(Priority.POLL), name="next")
    await settle()
    sched.release()  # grants `granted` synchronously...
    granted.cancel()  # ...which is cancelled before it runs
    await asyncio.gather(granted, return_exceptions=True)
    await asyncio.wait_for(nxt, 1)
    assert sched.in_flight == 1
    sched.release()
    assert sched.in_flight == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RequestScheduler(0)


# --- exception names and per-point decoding --------------------------------------------------


def test_exception_descriptions() -> None:
    assert describe_exception(2) == "exception 2 (illegal data address)"
    assert describe_exception(11) == "exception 11 (gateway target device failed to respond)"
    assert describe_exception(9) == "exception 9 (unknown code)"
    assert set(EXCEPTION_NAMES) == {1, 2, 3, 4, 5, 6, 7, 8, 10, 11}


@FAST
@given(code=st.integers())
def test_describe_exception_never_raises(code: int) -> None:
    assert describe_exception(code).startswith(f"exception {code} (")


def floats_block() -> list[PointSpec]:
    return [
        PointSpec.model_validate(
            {"name": f"f{i}", "modbus": {"address": 2 * i, "encoding": "float32"}}
        )
        for i in range(3)
    ] + [PointSpec.model_validate({"name": "n", "dtype": "int", "modbus": {"address": 6}})]


def test_a_nan_fails_only_its_own_point() -> None:
    block = plan_reads(floats_block())[0]
    nan = list(struct.unpack(">HH", struct.pack(">f", float("nan"))))
    values, errors = block.decode_points([0x4060, 0, *nan, 0xFF80, 0, 42])
    assert values == {"f0": 3.5, "n": 42}
    assert set(errors) == {"f1", "f2"}
    assert errors["f1"] == "f1: the device sent a non-finite value (nan)"
    assert errors["f2"] == "f2: the device sent a non-finite value (-inf)"
    with pytest.raises(ValueError, match="non-finite"):
        block.decode([0x4060, 0, *nan, 0xFF80, 0, 42])


def test_a_short_answer_fails_every_point() -> None:
    block = plan_reads(floats_block())[0]
    values, errors = block.decode_points([1, 2, 3])
    assert values == {}
    assert set(errors) == {"f0", "f1", "f2", "n"}
    assert errors["n"] == "short response: 3 of 7 registers"


@FAST
@given(registers=st.lists(st.integers(0, 0xFFFF), max_size=10))
def test_decode_points_never_raises_and_accounts_for_every_point(registers: list[int]) -> None:
    block = plan_reads(floats_block())[0]
    values, errors = block.decode_points(registers)
    assert set(values) | set(errors) == {"f0", "f1", "f2", "n"}
    assert not set(values) & set(errors)


wires = st.one_of(
    st.fixed_dictionaries(
        {
            "encoding": st.sampled_from(["int16", "uint16", "int32", "uint32", "float32"]),
            "word_order": st.sampled_from(["big", "little"]),
            "scale": st.one_of(st.just(1.0), st.sampled_from([0.1, -2.0, 1e-3, 1e30])),
            "offset": st.sampled_from([0.0, -40.0, 1e6]),
        }
    ),
    st.fixed_dictionaries(
        {"encoding": st.sampled_from(["int16", "uint16"]), "bit": st.integers(0, 15)}
    ),
)


@FAST
@given(
    wire=wires,
    dtype=st.sampled_from(["float", "int", "bool"]),
    at=st.integers(0, 3),
    registers=st.lists(st.integers(0, 0xFFFF), min_size=6, max_size=6),
)
def test_compiled_block_decoding_equals_the_generic_decode(
    wire: dict[str, object], dtype: str, at: int, registers: list[int]
) -> None:
    if "bit" in wire:
        dtype = "bool"
    elif dtype == "bool":
        dtype = "float"
    point = PointSpec.model_validate(
        {"name": "p", "dtype": dtype, "modbus": {"address": 10 + at, **wire}}
    )
    assert point.modbus is not None
    block = ReadBlock("holding", 10, 6, (point,))
    values, errors = block.decode_points(registers)
    try:
        expected = to_point_value(
            point, decode(point.modbus, registers[at : at + point.modbus.width])
        )
    except ValueError as exc:
        assert errors == {"p": str(exc)}
    else:
        assert values == {"p": expected} and type(values["p"]) is type(expected)
