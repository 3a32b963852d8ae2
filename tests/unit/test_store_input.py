"""The store's bad-input policy: every reading is stored, stored flagged, or dropped and counted
per reason; nothing in a reading makes ``write`` raise (docs/telemetry.md, "Embedded store")."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.model import Quality, Reading, ValueType
from edge.store import StoreSettings, TelemetryStore

DTYPES = {
    ("hoist-1", "position"): ValueType.FLOAT,
    ("hoist-1", "fault_code"): ValueType.INT,
    ("hoist-1", "moving"): ValueType.BOOL,
}


def at(value: Any, point: str = "position", ts: float | None = None, **kw: Any) -> Reading:
    now = time.time() if ts is None else ts
    return Reading(kw.pop("device", "hoist-1"), point, value, 0.0, now, kw.pop("q", Quality.GOOD))


@contextlib.asynccontextmanager
async def opened(path: Path, **kw: Any) -> AsyncIterator[TelemetryStore]:
    settings_ = StoreSettings(raw_retention_s=86400.0)
    async with TelemetryStore(path, settings_, dtypes=DTYPES, maintain=False, **kw) as store:
        yield store


def rows(path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(
            "SELECT s.point, r.value, typeof(r.value), r.quality FROM readings r "
            "JOIN series s ON s.id = r.series ORDER BY r.series, r.ts"
        ).fetchall()


async def test_values_are_checked_against_the_points_dtype(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    now = time.time()
    async with opened(path) as store:
        stored = await store.write(
            [
                at(1.5, ts=now),
                at(2, ts=now + 0.1),  # an int for a float point: stored as a float
                at(True, ts=now + 0.2),  # a bool is no position
                at("up", ts=now + 0.3),
                at(7, "fault_code", ts=now),
                at(8.0, "fault_code", ts=now + 0.1),  # a whole float: stored as an int
                at(8.5, "fault_code", ts=now + 0.2),
                at(True, "moving", ts=now),
                at(0, "moving", ts=now + 0.1),  # 0/1 from an MQTT payload: a bool
                at(2, "moving", ts=now + 0.2),
                at(1.0, "moving", ts=now + 0.3),
                at("any text", "label", ts=now),  # a point the store has no dtype for
                at(3, "label", ts=now + 0.1),
                at(None, q=Quality.BAD, ts=now + 0.4),
            ]
        )
        assert stored == 9
        assert store.rejected == {"wrong_type": 5}
        assert store.flagged == {}
    assert rows(path) == [
        ("position", 1.5, "real", 0),
        ("position", 2.0, "real", 0),
        ("position", None, "null", 2),
        ("fault_code", 7, "integer", 0),
        ("fault_code", 8, "integer", 0),
        ("moving", 1, "integer", 0),
        ("moving", 0, "integer", 0),
        ("label", "any text", "text", 0),
        ("label", 3, "integer", 0),
    ]


async def test_non_finite_values_are_stored_bad_and_flagged(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    now = time.time()
    async with opened(path) as store:
        await store.write([at(math.nan, ts=now), at(math.inf, ts=now + 1), at(-math.inf, "x")])
        assert store.flagged == {"non_finite": 3}
        assert store.rejected == {}
    assert rows(path) == [(p, None, "null", 2) for p in ("position", "position", "x")]


async def test_timestamps_out_of_bounds_are_refused(tmp_path: Path) -> None:
    now = time.time()
    async with opened(tmp_path / "t.sqlite3") as store:
        stored = await store.write(
            [
                at(1.0, ts=now + 299),  # within the 5 min tolerance
                at(1.0, ts=now + 400),
                at(1.0, ts=now - 86400 + 60),  # inside the raw retention
                at(1.0, ts=now - 86400 - 60),
                at(1.0, ts=math.nan),
                at(1.0, ts=math.inf),
                at(1.0, ts=-5.0),
                at(1.0, ts="yesterday"),  # type: ignore[arg-type]
                at(1.0, ts=True),
            ]
        )
        assert stored == 2
        assert store.rejected == {"future": 1, "too_old": 1, "bad_timestamp": 5}


async def test_duplicates_keep_the_first_and_are_counted(tmp_path: Path) -> None:
    """A duplicate is found when the inbox is compacted; until then queries show the first."""
    path = tmp_path / "t.sqlite3"
    now = time.time()
    async with opened(path) as store:
        await store.write([at(1.0, ts=now), at(2.0, ts=now), at(3.0, ts=now + 1)])
        assert [r.value for r in await store.history("hoist-1", "position")] == [1.0, 3.0]
        await store.rollup()
        assert store.rejected == {"duplicate": 1}
        await store.write([at(4.0, ts=now + 1), at(5.0, ts=now + 2), at(6.0, ts=now - 1)])
        assert [r.value for r in await store.history("hoist-1", "position")] == [
            6.0,
            1.0,
            3.0,
            5.0,
        ]
        await store.rollup()  # the late 4.0 meets the compacted 3.0
        assert store.rejected == {"duplicate": 2}
        assert store.rolled_up == 4
        assert await store.count() == 4
        assert [r.value for r in await store.history("hoist-1", "position")] == [
            6.0,
            1.0,
            3.0,
            5.0,
        ]


async def test_names_quality_and_non_readings_are_refused(tmp_path: Path) -> None:
    async with opened(tmp_path / "t.sqlite3") as store:
        stored = await store.write(
            [
                at(1.0, device=""),
                at(1.0, device="x" * 201),
                at(1.0, "bad\npoint"),
                at(1.0, device=["a"]),  # unhashable
                at(1.0, device=7),
                at(1.0, q="excellent"),  # not a Quality ("good" is: a StrEnum)
                at(1.0, q=None),
                object(),  # type: ignore[list-item]
                None,  # type: ignore[list-item]
                at("x" * 1025, "label"),
                at([1.0]),
                at(b"1"),
                at(2**70, "counter"),
            ]
        )
        assert stored == 0
        assert store.rejected == {
            "bad_name": 4,
            "bad_quality": 2,
            "malformed": 3,
            "too_long": 1,
            "wrong_type": 3,
        }
        assert await store.count() == 0


async def test_a_failed_batch_forgets_the_series_it_created(tmp_path: Path) -> None:
    """A batch rolled back (here: the disk refuses it) leaves no half-known series behind."""
    path = tmp_path / "t.sqlite3"
    async with opened(path) as store:
        await store.write([at(1.0)])
        conn = store._wconn
        assert conn is not None
        # Another connection holds the write lock: the batch cannot commit.
        with contextlib.closing(sqlite3.connect(path, timeout=0.1)) as other:
            other.execute("BEGIN IMMEDIATE")
            conn.execute("PRAGMA busy_timeout=100")
            try:
                await store.write([at(1.0, "new-point")])
            except sqlite3.OperationalError:
                pass
            else:
                raise AssertionError("the batch should not have committed")
            other.execute("ROLLBACK")
        assert ("hoist-1", "new-point") not in store._series
        assert await store.write([at(2.0, "new-point")]) == 1
        assert [r.value for r in await store.history("hoist-1", "new-point")] == [2.0]


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=1100),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
)
timestamps = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-7200, max_value=7200).map(lambda d: time.time() + d),
    st.integers(),
    st.text(max_size=3),
    st.none(),
)
names = st.one_of(st.sampled_from(["hoist-1", "position", "moving", "fault_code"]), st.text())
hostile = st.builds(
    Reading,
    names,
    names,
    scalars,
    st.just(0.0),
    timestamps,
    st.one_of(st.sampled_from(list(Quality)), st.text(max_size=3), st.none()),
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(hostile, max_size=40))
def test_hostile_readings_never_crash_the_writer(tmp_path: Path, batch: list[Reading]) -> None:
    """Whatever comes in, ``write`` returns; stored + rejected = received (duplicates too)."""

    async def main() -> None:
        path = tmp_path / "fuzz.sqlite3"
        async with opened(path) as store:
            before = store.written + sum(store.rejected.values())
            await store.write(batch)
            after = store.written + sum(store.rejected.values())
            assert after - before == len(batch)
            # Whatever was stored reads back, and the store keeps working.
            await store.write([at(1.0, "canary")])
            assert (await store.history("hoist-1", "canary"))[-1].value == 1.0
            for _device, _point, value, typ, _q in _all(path):
                assert typ in ("null", "integer", "real", "text")
                if typ == "real":
                    assert math.isfinite(value)

    asyncio.run(main())


def _all(path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(
            "SELECT s.device, s.point, r.value, typeof(r.value), r.quality FROM "
            "(SELECT * FROM readings UNION ALL SELECT * FROM inbox) r "
            "JOIN series s ON s.id = r.series"
        ).fetchall()
