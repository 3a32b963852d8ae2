"""Maintenance counters from readings, their persistence across restarts, service intervals,
records and work orders (on a real SQLite file; the REST routes are in
tests/integration/test_maintenance_api.py)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.model import (
    Device,
    ModbusTcpTransport,
    MqttTransport,
    Quality,
    Reading,
    find_profile,
    load_profile,
)
from edge.bus import Bus, Overflow
from edge.config import MaintenanceConfig
from edge.maintenance import Counting, Maintenance, MaintenanceError, counters_for


def hoist(dev: str = "hoist-1") -> Device:
    transport = ModbusTcpTransport(kind="modbus-tcp", host="127.0.0.1")
    return Device(dev, load_profile(find_profile("hoist")), transport, 20.0)


def projector(dev: str = "proj-1") -> Device:
    transport = MqttTransport(kind="mqtt", node="stage")
    return Device(dev, load_profile(find_profile("projector")), transport, 1.0)


def r(
    point: str, value: Any, ts: float, dev: str = "hoist-1", q: Quality = Quality.GOOD
) -> Reading:
    return Reading(dev, point, value, 0.0, ts, q)


def moves(n: int, t0: float = 1000.0, dev: str = "hoist-1") -> list[Reading]:
    """``n`` moves of 1 000 mm in 10 s each (0.5 s poll), 5 s apart, alternating up and down."""
    out: list[Reading] = [r("brake_released", False, t0 - 1, dev)]  # a first reading: no edge
    t, pos = t0, 1000.0
    for i in range(n):
        sign = 1 if i % 2 == 0 else -1
        out += [r("brake_released", True, t, dev), r("moving", False, t, dev)]
        out.append(r("position", pos, t, dev))
        for _ in range(20):
            t += 0.5
            pos += sign * 50
            out += [r("moving", True, t, dev), r("position", pos, t, dev)]
        t += 0.5
        out += [r("moving", False, t, dev), r("brake_released", False, t, dev)]
        t += 5
    return out


def test_counters_follow_the_profile() -> None:
    assert counters_for(hoist()) == ["run_hours", "cycles", "distance", "brake_operations"]
    assert counters_for(projector()) == ["lamp_hours"]


def test_counting_moves() -> None:
    c = Counting([hoist()])
    for x in moves(4):
        c.observe(x)
    got = c.trackers["hoist-1"].counters
    assert got["cycles"] == 4 and got["brake_operations"] == 4
    assert got["distance"] == pytest.approx(4000)
    assert got["run_hours"] * 3600 == pytest.approx(4 * 10.0)


def test_gaps_are_capped_and_replays_are_not_counted_twice() -> None:
    c = Counting([hoist()], max_gap_s=5)
    c.observe(r("moving", True, 0.0))
    c.observe(r("moving", True, 3600.0))  # an hour of silence: counts at most 5 s
    c.observe(r("position", 0.0, 0.0))
    c.observe(r("position", 9000.0, 3600.0))  # moved while unseen: not travelled distance
    assert c.trackers["hoist-1"].counters["run_hours"] * 3600 == pytest.approx(5)
    assert c.trackers["hoist-1"].counters["distance"] == 0
    c.observe(r("moving", True, 3600.0))  # the same reading again
    c.observe(r("moving", True, 10.0))  # an older one
    assert c.skipped == 2


def test_bad_and_hostile_readings_are_ignored() -> None:
    c = Counting([hoist()])
    for v in (None, math.nan, math.inf, "up", [1], b"x"):
        c.observe(r("position", v, 5.0))
    c.observe(r("position", 100.0, 6.0, q=Quality.BAD))
    c.observe(r("position", 100.0, math.nan))
    c.observe(r("moving", True, 1.0, dev="ghost"))
    assert c.trackers["hoist-1"].counters["distance"] == 0 and not c.trackers["hoist-1"].last


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["moving", "position", "brake_released", "load", "power_state"]),
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(-(2**80), 2**80),
                st.floats(allow_nan=True, allow_infinity=True),
                st.text(max_size=5),
            ),
            st.floats(allow_nan=True, allow_infinity=True),
        ),
        max_size=60,
    )
)
def test_counters_stay_finite_and_never_decrease(rows: list[tuple[str, Any, float]]) -> None:
    c = Counting([hoist(), projector()])
    before = dict(c.trackers["hoist-1"].counters)
    for point, v, ts in rows:
        c.observe(r(point, v, ts))
        c.observe(r(point, v, ts, dev="proj-1"))
        now = c.trackers["hoist-1"].counters
        assert all(math.isfinite(x) and x >= before[k] for k, x in now.items())
        before = dict(now)


def test_lamp_hours_come_from_the_projectors_meter() -> None:
    c = Counting([projector()])
    c.observe(r("light_source_hours", 1234.5, 1.0, dev="proj-1"))
    c.observe(r("light_source_hours", 1234.6, 400.0, dev="proj-1"))
    assert c.trackers["proj-1"].counters["lamp_hours"] == pytest.approx(1234.6)


def config(**classes: dict[str, Any]) -> MaintenanceConfig:
    return MaintenanceConfig.model_validate({"classes": classes})


async def test_counters_survive_a_restart_without_double_counting(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    readings = moves(6)
    half = len(readings) // 2
    async with Maintenance(path, [hoist()]) as m:
        for x in readings[:half]:
            m.observe(x)
        await m.flush()
    async with Maintenance(path, [hoist()]) as m:
        # a replay of what was counted (e.g. the store's history) and then the rest
        for x in readings:
            m.observe(x)
        await m.flush()
        got = (await m.device("hoist-1"))["counters"]
    assert got["cycles"] == 6 and got["distance"] == pytest.approx(6000)
    assert got["brake_operations"] == 6


async def test_run_consumes_a_bus_without_blocking_and_flushes_on_close(tmp_path: Path) -> None:
    bus: Bus[Reading] = Bus("readings")
    sub = bus.subscribe("maintenance", Overflow.DROP_OLDEST, maxsize=100_000)
    async with Maintenance(tmp_path / "m.sqlite3", [hoist()], flush_interval_s=0.05) as m:
        task = asyncio.create_task(m.run(sub))
        await bus.publish_many(moves(3))
        await asyncio.sleep(0.2)
        sub.close()
        await task
        assert m.flushes >= 1
    async with Maintenance(tmp_path / "m.sqlite3", [hoist()]) as m:
        assert (await m.device("hoist-1"))["counters"]["cycles"] == 3


async def test_intervals_due_overdue_and_a_service_restarts_them(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    cfg = MaintenanceConfig.model_validate(
        {
            "classes": {"hoist": {"cycles": 10, "days": 365}},
            "devices": {"hoist-1": {"cycles": 5, "due_at": 0.8}},
        }
    )
    async with Maintenance(
        tmp_path / "m.sqlite3", [hoist(), hoist("hoist-2")], cfg, clock=lambda: now[0]
    ) as m:
        for x in moves(4, t0=now[0] - 1000):
            m.observe(x)
        doc = await m.device("hoist-1")
        cycles = next(i for i in doc["intervals"] if i["kind"] == "cycles")
        assert cycles["every"] == 5 and cycles["since_service"] == 4
        assert cycles["state"] == "due" and doc["state"] == "due"
        m.observe(moves(1, t0=now[0] - 100)[0])  # nothing new: same timestamps are later
        for x in moves(2, t0=now[0] - 500)[1:]:
            m.observe(x)
        assert (await m.device("hoist-1"))["state"] == "overdue"
        assert [d["device"] for d in await m.overview("overdue")] == ["hoist-1"]
        rec = await m.add_record("hoist-1", "service", "bob", "bearings greased")
        assert rec["counters"]["cycles"] >= 5
        doc = await m.device("hoist-1")
        assert doc["state"] == "ok" and doc["last_service"] == now[0]
        # a year later the calendar interval is overdue whatever the counters say
        now[0] += 366 * 86400
        doc = await m.device("hoist-1")
        assert {i["kind"]: i["state"] for i in doc["intervals"]} == {
            "cycles": "ok",
            "days": "overdue",
        }
        assert (await m.device("hoist-2"))["intervals"][0]["every"] == 10


async def test_work_orders_move_through_their_states_and_done_is_a_record(
    tmp_path: Path,
) -> None:
    async with Maintenance(tmp_path / "m.sqlite3", [hoist()]) as m:
        wo = await m.create_work_order("hoist-1", "grease bearings", "alice", "early warning")
        assert wo["status"] == "open" and wo["created_by"] == "alice"
        wo = await m.update_work_order(wo["id"], "alice", assignee="bob")
        assert wo["status"] == "assigned" and wo["assignee"] == "bob"
        wo = await m.update_work_order(wo["id"], "bob", note="ordered parts\nline two")
        wo = await m.update_work_order(wo["id"], "bob", status="done", note="done, 2 h")
        assert wo["status"] == "done" and wo["done_by"] == "bob" and wo["done_at"]
        assert [n["text"] for n in wo["notes"]] == ["ordered parts\nline two", "done, 2 h"]
        with pytest.raises(MaintenanceError) as err:
            await m.update_work_order(wo["id"], "eve", status="open")
        assert err.value.status == 409
        records = await m.records("hoist-1")
        assert records[0]["kind"] == "service" and records[0]["work_order"] == wo["id"]
        assert (await m.device("hoist-1"))["last_service"] is not None
        with pytest.raises(MaintenanceError) as err:
            await m.update_work_order(999, "eve", note="x")
        assert err.value.status == 404
        with pytest.raises(MaintenanceError) as err:
            await m.create_work_order("ghost", "x", "eve")
        assert err.value.status == 404
        with pytest.raises(MaintenanceError) as err:
            await m.update_work_order(wo["id"], "eve")
        assert err.value.status == 422
        assert [w["id"] for w in await m.work_orders(status="done")] == [wo["id"]]
        assert await m.work_orders(status="open") == []
