"""Telemetry queries (raw, 1 s, 1 min, auto; mean/min/max/last) and exports (CSV, Parquet)."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from drivers.model import Quality, Reading
from edge.store import (
    QueryError,
    StoreSettings,
    TelemetryQuery,
    TelemetryStore,
    export_stream,
    export_to_file,
)

NOW = time.time()
BASE = float(math.floor(NOW / 3600) * 3600 - 3600)  # the start of the hour before last


@contextlib.asynccontextmanager
async def filled(path: Path) -> AsyncIterator[TelemetryStore]:
    """Point ``a``: value i at BASE + i/2 for an hour (2 Hz, 7200 readings); ``b``: one
    reading a minute, value = minute; ``s``: strings."""
    async with TelemetryStore(path, StoreSettings(), maintain=False) as store:
        await store.write(
            [Reading("dev", "a", float(i), 0.0, BASE + i / 2) for i in range(7200)]
            + [Reading("dev", "b", m, 0.0, BASE + m * 60 + 30) for m in range(60)]
            + [Reading("dev", "s", f"t{i}", 0.0, BASE + i) for i in range(3)]
            + [Reading("dev", "a", None, 0.0, BASE + 3600, Quality.BAD)]
        )
        await store.rollup()
        yield store


def q(**kw: Any) -> TelemetryQuery:
    args: dict[str, Any] = {"device": "dev", "start": BASE, "end": BASE + 3600}
    return TelemetryQuery(**(args | kw))


async def test_raw_tier_and_agg_queries(tmp_path: Path) -> None:
    async with filled(tmp_path / "t.sqlite3") as store:
        raw = await store.query(q(points=("a",), resolution="raw", end=BASE + 2))
        assert (raw.resolution, raw.step_s, raw.agg) == ("raw", None, None)
        (a,) = raw.series
        assert a.ts == [BASE, BASE + 0.5, BASE + 1, BASE + 1.5, BASE + 2]
        assert a.values == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert a.quality == ["good"] * 5 and not a.truncated

        for agg, want in (("mean", 0.5), ("min", 0.0), ("max", 1.0), ("last", 1.0)):
            r = await store.query(q(points=("a",), resolution="1s", agg=agg, end=BASE + 59))
            assert (r.resolution, r.step_s, r.agg) == ("1s", 1, agg)
            assert r.series[0].ts[:2] == [BASE, BASE + 1]
            assert r.series[0].values[0] == want
            assert r.series[0].count == [2] * 60

        m = await store.query(q(points=("a", "b"), resolution="1m", agg="mean"))
        a, b = m.series
        assert len(a.ts) == 60 and a.ts[0] == BASE and a.values[0] == 59.5  # 0..119
        assert a.count is not None and a.count[0] == 120
        assert b.values == [float(i) for i in range(60)]
        # The bad reading at BASE + 3600 has no value: no bucket for it.
        assert a.ts[-1] == BASE + 3540


async def test_a_point_of_no_readings_and_all_points(tmp_path: Path) -> None:
    async with filled(tmp_path / "t.sqlite3") as store:
        r = await store.query(q(points=("nothing", "b"), resolution="1m"))
        assert [s.point for s in r.series] == ["nothing", "b"]
        assert r.series[0].ts == [] and len(r.series[1].ts) == 60
        every = await store.query(q(resolution="raw", limit=5))
        assert [s.point for s in every.series] == ["a", "b", "s"]
        assert every.series[2].values == ["t0", "t1", "t2"]
        assert (await store.query(q(device="nobody"))).series == []


async def test_limit_keeps_the_latest_and_says_so(tmp_path: Path) -> None:
    async with filled(tmp_path / "t.sqlite3") as store:
        r = await store.query(q(points=("a",), resolution="raw", limit=3))
        assert r.series[0].values == [7198.0, 7199.0, None]
        assert r.series[0].truncated
        r = await store.query(q(points=("a",), resolution="1m", limit=2))
        assert r.series[0].ts == [BASE + 3480, BASE + 3540] and r.series[0].truncated


async def test_auto_picks_raw_then_coarser_steps(tmp_path: Path) -> None:
    async with filled(tmp_path / "t.sqlite3") as store:
        # 20 s of point a: 41 readings, fewer than max_points: raw.
        r = await store.query(q(points=("a",), end=BASE + 20, max_points=100))
        assert r.resolution == "raw" and len(r.series[0].ts) == 41
        # One hour, at most ~100 points: 3600 / 100 = 36 s → 60 s steps of the 1 min tier.
        r = await store.query(q(points=("a",), max_points=100))
        assert (r.resolution, r.step_s) == ("1m", 60)
        # One hour, ~1000 points: 3.6 s → 5 s steps, re-aggregated from the 1 s tier.
        r = await store.query(q(points=("a",), max_points=1000, agg="last"))
        assert (r.resolution, r.step_s) == ("1s", 5)
        s = r.series[0]
        assert len(s.ts) == 720 and s.ts[1] - s.ts[0] == 5
        assert s.values[0] == 9.0 and s.count is not None and s.count[0] == 10
        r = await store.query(q(points=("a",), max_points=1000, agg="min"))
        assert r.series[0].values[:2] == [0.0, 10.0]
        r = await store.query(q(points=("a",), max_points=1000, agg="mean"))
        assert r.series[0].values[0] == 4.5
        # Twenty minutes in 10 points: 120 s steps of the 1 min tier.
        r = await store.query(q(points=("b",), end=BASE + 1199, max_points=10, agg="max"))
        assert (r.resolution, r.step_s) == ("1m", 120)
        assert r.series[0].values == [float(m) for m in range(1, 20, 2)]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"start": BASE + 10, "end": BASE}, "from is after to"),
        ({"start": math.nan}, "from must be a finite"),
        ({"end": math.inf}, "to must be a finite"),
        ({"start": -1.0}, "between 1970 and 2100"),
        ({"end": 5e9}, "between 1970 and 2100"),
        ({"start": 0.0, "end": 4e9}, "span is longer"),
        ({"start": True}, "from must be a finite"),
        ({"device": ""}, "device must be"),
        ({"device": "a\x00b"}, "device must be"),
        ({"points": ("a", "a")}, "named twice"),
        ({"points": tuple(f"p{i}" for i in range(101))}, "at most 100 points"),
        ({"points": ("x" * 201,)}, "every point"),
        ({"resolution": "1h"}, "resolution must be"),
        ({"agg": "median"}, "agg must be"),
        ({"max_points": 0}, "max_points must be"),
        ({"limit": 10**9}, "limit must be"),
    ],
)
def test_bad_queries_say_why(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        q(**kw)


async def test_csv_and_parquet_exports(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    async with filled(path):
        pass
    columns, body = await export_stream(path, q(points=("a", "s"), resolution="raw"), "csv")
    text = b"".join([c async for c in body]).decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(columns) == ["device", "point", "ts", "value", "quality"]
    assert len(rows) == 1 + 7201 + 3
    assert rows[1] == ["dev", "a", repr(BASE), "0.0", "good"]
    assert rows[7201] == ["dev", "a", repr(BASE + 3600), "", "bad"]
    assert rows[-1][:2] == ["dev", "s"] and rows[-1][3] == "t2"

    out = tmp_path / "a.parquet"
    size = await export_to_file(path, q(points=("a", "b"), resolution="1m"), out, "parquet")
    assert size == out.stat().st_size > 0
    table = pq.read_table(out)
    assert table.column_names == ["device", "point", "ts", "min", "max", "mean", "last", "count"]
    assert table.num_rows == 120
    first = table.slice(0, 1).to_pylist()[0]
    assert first["ts"].timestamp() == BASE
    assert (first["min"], first["max"], first["mean"], first["last"], first["count"]) == (
        0.0,
        119.0,
        59.5,
        119.0,
        120,
    )
    raw = tmp_path / "raw.parquet"
    await export_to_file(path, q(points=("s",), resolution="raw"), raw, "parquet")
    assert pq.read_table(raw).column("value").to_pylist() == ["t0", "t1", "t2"]


async def test_an_export_of_a_missing_or_foreign_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no telemetry store"):
        await export_stream(tmp_path / "none.sqlite3", q(), "csv")
    (tmp_path / "other.sqlite3").write_bytes(b"")
    with pytest.raises(RuntimeError, match="store schema 0"):
        await export_stream(tmp_path / "other.sqlite3", q(), "csv")
    with pytest.raises(QueryError, match="format"):
        await export_stream(tmp_path / "none.sqlite3", q(), "xlsx")  # type: ignore[arg-type]
