"""Rollups (1 s, 1 min), retention per tier, the schema-1 migration, and durability across
``kill -9``: acknowledged readings survive, rollups are complete and never counted twice."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import signal
import sqlite3
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.model import Quality, Reading
from edge.store import SCHEMA_VERSION, StoreSettings, TelemetryStore

REPO = Path(__file__).resolve().parents[2]

Rollup = dict[tuple[str, int], tuple[float, float, float, int, float, float]]


@contextlib.asynccontextmanager
async def opened(path: Path, **kw: Any) -> AsyncIterator[TelemetryStore]:
    async with TelemetryStore(path, StoreSettings(**kw), maintain=False) as store:
        yield store


def expected(path: Path, width: int) -> Rollup:
    """The rollup of every raw row, computed here from scratch (not by the store's SQL)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        raw = db.execute(
            "SELECT s.point, r.ts, r.value, r.quality FROM readings r "
            "JOIN series s ON s.id = r.series"
        ).fetchall()
    groups: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for point, ts, value, quality in raw:
        if quality < 2 and isinstance(value, int | float):
            groups[(point, int(ts // width) * width)].append((ts, value))
    out: Rollup = {}
    for key, items in groups.items():
        values = [v for _, v in items]
        last_ts, last = max(items)
        out[key] = (min(values), max(values), sum(values), len(values), last_ts, last)
    return out


def stored(path: Path, tier: str) -> Rollup:
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            f"SELECT s.point, t.bucket, t.vmin, t.vmax, t.vsum, t.n, t.last_ts, t.vlast "
            f"FROM rollup_{tier} t JOIN series s ON s.id = t.series"
        ).fetchall()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def reading(point: str, ts: float, value: Any, q: Quality = Quality.GOOD) -> Reading:
    return Reading("dev", point, value, 0.0, ts, q)


async def test_rollups_match_a_recomputation_with_late_and_mixed_readings(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.sqlite3"
    rng = random.Random(7)
    now = time.time()
    base = math.floor(now / 60) * 60 - 600  # ten minutes ago, on a minute boundary
    async with opened(path, flush_chunk=37) as store:  # many small transactions
        for batch in range(30):
            items = []
            for _ in range(100):
                # Mostly in order, some late by up to five minutes, whole-number values so
                # sums compare exactly.
                t = base + batch * 20 + rng.random() * 20
                if rng.random() < 0.1:
                    t -= rng.random() * 300
                point = rng.choice(["a", "b", "c"])
                kind = rng.random()
                if kind < 0.05:
                    items.append(reading(point, t, None, Quality.BAD))
                elif kind < 0.1:
                    items.append(reading(point, t, float(rng.randint(0, 9)), Quality.BAD))
                elif kind < 0.15:
                    items.append(reading(point, t, "text"))
                elif kind < 0.2:
                    items.append(reading(point, t, rng.random() < 0.5))
                else:
                    q = Quality.STALE if rng.random() < 0.1 else Quality.GOOD
                    items.append(reading(point, t, float(rng.randint(-50, 50)), q))
            await store.write(items)
            if batch % 7 == 0:
                await store.rollup()  # passes interleave with writes
        await store.rollup()
        assert store.rolled_up == await store.count()
    assert stored(path, "1s") == expected(path, 1)
    assert stored(path, "1m") == expected(path, 60)
    assert len(stored(path, "1m")) > 10


async def test_a_second_rollup_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    now = time.time()
    async with opened(path) as store:
        await store.write([reading("a", now - i * 0.25, float(i)) for i in range(400)])
        assert await store.rollup() == 400
        before = stored(path, "1s"), stored(path, "1m")
        assert await store.rollup() == 0
    async with opened(path) as store:  # nor does a reopen
        assert await store.rollup() == 0
    assert (stored(path, "1s"), stored(path, "1m")) == before


async def test_retention_per_tier_is_pruned_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    now = time.time()
    async with opened(path, prune_chunk=50) as store:
        # Three points, one reading every 10 s over the last 3 hours, oldest first.
        await store.write(
            [
                reading(p, now - i * 10, float(i))
                for i in reversed(range(1080))
                for p in ("a", "b", "c")
            ]
        )
        await store.rollup()
        n_1m = len(stored(path, "1m"))
        deleted = await store.prune_tier("raw", 3600)
        assert deleted == 3 * (1080 - 360)
        assert await store.count() == 3 * 360
        assert store.pruned["raw"] == deleted
        # Buckets that start before the cutoff go (one every 10 s: i >= 721).
        assert await store.prune_tier("1s", 7205) == 3 * 359
        assert len(stored(path, "1s")) == 3 * 721
        assert len(stored(path, "1m")) == n_1m  # 1 min kept for ever here
        # More than prune_chunk rows per series took several transactions: nothing is left.
        assert await store.prune_tier("raw", 3600) == 0
        with pytest.raises(ValueError, match="no tier"):
            await store.prune_tier("1h", 10)
        with pytest.raises(ValueError, match="positive"):
            await store.prune_tier("raw", math.nan)


async def test_prune_compacts_the_inbox_first(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    now = time.time()
    async with opened(path) as store:
        await store.write([reading("a", now - 7200 + i, float(i)) for i in range(10)])
        assert await store.prune(60) == 10  # compacted (and rolled up), then pruned
        assert await store.count() == 0
        assert stored(path, "1s") == {
            ("a", int(now - 7200 + i)): (i, i, i, 1, now - 7200 + i, i) for i in range(10)
        }
        await store.write([reading("a", now, 99.0)])
        await store.rollup()
        assert await store.count() == 1
    assert stored(path, "1s")[("a", int(now))][3] == 1


async def test_a_schema_1_store_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    now = time.time()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(
            """
            CREATE TABLE series (id INTEGER PRIMARY KEY, device TEXT NOT NULL,
                                 point TEXT NOT NULL, UNIQUE (device, point));
            CREATE TABLE readings (series INTEGER NOT NULL REFERENCES series(id),
                                   ts REAL NOT NULL, value, quality INTEGER NOT NULL);
            CREATE INDEX readings_series_ts ON readings (series, ts);
            INSERT INTO series VALUES (1, 'dev', 'a');
            PRAGMA user_version = 1;
            """
        )
        db.executemany(
            "INSERT INTO readings VALUES (1, ?, ?, 0)",
            [(now - 10, 1.0), (now - 10, 2.0), (now - 5, 3.0), (now - 5, 4.0), (now, 5.0)],
        )
        db.commit()
    async with opened(path) as store:
        assert store.rejected == {"duplicate": 2}  # found as the old rows were compacted
        rows = await store.history("dev", "a")
        assert [r.value for r in rows] == [1.0, 3.0, 5.0]  # the first of each duplicate
        await store.write([reading("a", now, 6.0)])
        await store.rollup()
        assert store.rejected == {"duplicate": 3}
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert db.execute("SELECT count(*) FROM inbox").fetchone() == (0,)
    assert "readings_series_ts" not in indexes
    assert stored(path, "1s") == expected(path, 1)


WRITER = """
import asyncio, sys, time
from pathlib import Path
from drivers.model import Quality, Reading
from edge.store import StoreSettings, TelemetryStore

async def main() -> None:
    settings = StoreSettings(rollup_interval_s=0.01, flush_chunk=300)
    n = 0
    base = time.time() - 200
    async with TelemetryStore(Path(sys.argv[1]), settings) as store:  # maintenance on
        while True:
            batch = [Reading("dev", f"p{i % 7}", float(n + i), 0.0, base + (n + i) * 1e-3)
                     for i in range(500)]
            await store.write(batch)
            n += len(batch)
            print(n, flush=True)  # acknowledged: written after write() returned

asyncio.run(main())
"""


@pytest.mark.parametrize("acks", [3, 11, 29])
async def test_kill_9_right_after_an_ack_loses_nothing_and_rollups_stay_exact(
    tmp_path: Path, acks: int
) -> None:
    """The writer (compacting every 10 ms, a chunk of 300 rows a transaction) is killed as
    soon as the parent reads the ``acks``-th acknowledgement; every acknowledged reading is
    there after reopening, and the rollups, completed by the next open, equal a from-scratch
    recomputation."""
    path = tmp_path / "t.sqlite3"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITER,
        str(path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    acknowledged = 0
    try:
        assert proc.stdout is not None
        for _ in range(acks):
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, (await proc.stderr.read()) if proc.stderr else b""
            acknowledged = int(line)
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    async with opened(path) as store:  # the open compacts what the killed run left
        n = await store.count()
        assert n >= acknowledged == 500 * acks
        assert n % 500 == 0  # a batch is committed whole or not at all
        assert store.rejected == {}  # rows compacted before the kill are not compacted twice
        values = [
            float(r.value or 0)
            for p in range(7)
            for r in await store.history("dev", f"p{p}", limit=10**6)
        ]
        assert sorted(values) == [float(i) for i in range(n)]
        await store.rollup()
    assert stored(path, "1s") == expected(path, 1)
    assert stored(path, "1m") == expected(path, 60)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_a_flush_cut_between_chunks_resumes_exactly(tmp_path: Path) -> None:
    """The process dies after the first of three compaction transactions: the next open
    compacts the other two series only, and nothing is counted twice."""
    path = tmp_path / "t.sqlite3"
    now = time.time()
    store = TelemetryStore(path, StoreSettings(flush_chunk=10), maintain=False)
    await store.__aenter__()
    await store.write([reading(p, now - i, float(i)) for i in range(50) for p in "abc"])
    chunks, top = await store._on(store._writer, store._take)
    assert [[sid for sid, _ in c] for c in chunks] == [[1], [2], [3]]
    assert await store._on(store._writer, store._compact_chunk, chunks[0], top) == 50
    # Dead here: the connections go without a flush, as with kill -9.
    await store._on(store._writer, store._close_conn, "_wconn")
    await store._on(store._reader, store._close_conn, "_rconn")
    for pool in (store._writer, store._reader, store._checkpointer):
        pool.shutdown(wait=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM readings").fetchone() == (50,)
        assert db.execute("SELECT count(*) FROM inbox").fetchone() == (150,)
    async with opened(path) as store:
        assert store.rejected == {}
        assert store.rolled_up == 100
        assert await store.count() == 150
    assert stored(path, "1s") == expected(path, 1)
    assert stored(path, "1m") == expected(path, 60)


async def test_the_maintenance_task_compacts_prunes_and_checkpoints(tmp_path: Path) -> None:
    """What the service relies on: with maintenance on, readings reach the tiers and expire
    without anyone calling rollup() or prune()."""
    path = tmp_path / "t.sqlite3"
    settings = StoreSettings(
        raw_retention_s=3600.0,
        retention_1s_s=3600.0,
        rollup_interval_s=0.05,
        prune_interval_s=0.05,
        checkpoint_interval_s=0.05,
    )
    now = time.time()
    async with TelemetryStore(path, settings) as store:
        # Ten readings that expire within a second of being written, and one that stays.
        await store.write([reading("a", now - 3599.3 + i * 0.01, float(i)) for i in range(10)])
        await store.write([reading("a", now, 42.0)])
        for _ in range(300):
            if store.rolled_up == 11 and await store.count() == 1:
                break
            await asyncio.sleep(0.02)
        assert store.rolled_up == 11
        assert await store.count() == 1
        assert store.pruned["raw"] == 10
        assert [r.value for r in await store.history("dev", "a")] == [42.0]
        assert ("a", int(now)) in stored(path, "1s")


def test_settings_from_the_venue_config() -> None:
    from edge.config import TelemetryConfig

    s = StoreSettings.from_config(TelemetryConfig(retention_days=2, retention_1m_days=10))
    assert s.raw_retention_s == 2 * 86400 and s.retention_1m_s == 10 * 86400
    assert s.retention_1s_s == 90 * 86400 and s.rollup_interval_s == 5.0
    with pytest.raises(ValueError, match="raw_retention_s must be a positive"):
        StoreSettings(raw_retention_s=0.0)
    with pytest.raises(ValueError, match="rollup_interval_s must be a positive"):
        StoreSettings(rollup_interval_s=math.inf)
    with pytest.raises(ValueError, match="flush_chunk must be at least 1"):
        StoreSettings(flush_chunk=0)


async def test_a_cancelled_or_failed_flush_loses_nothing(tmp_path: Path) -> None:
    """A flush whose caller is cancelled goes on to the end; a flush that fails between its
    chunks hands the rows it did not compact back, and the next flush takes them."""
    path = tmp_path / "t.sqlite3"
    now = time.time()
    async with opened(path, flush_chunk=10) as store:
        await store.write([reading(p, now - i, float(i)) for i in range(50) for p in "abc"])
        task = asyncio.create_task(store.rollup())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.write([reading("d", now, 1.0)])
        assert await store.rollup() == 1  # after the cancelled caller's flush finished
        assert store.rolled_up == 151

        await store.write([reading(p, now + 1 + i, float(i)) for i in range(20) for p in "abc"])
        compact, calls = store._compact_chunk, []

        def failing(chunk: Any, top: int) -> int:
            calls.append(1)
            if len(calls) == 2:
                raise sqlite3.OperationalError("disk I/O error")
            return compact(chunk, top)

        store._compact_chunk = failing  # type: ignore[method-assign]
        with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
            await store.rollup()
        store._compact_chunk = compact  # type: ignore[method-assign]
        assert store.rolled_up == 171  # the first chunk (series a) went through
        assert await store.rollup() == 40
        assert await store.count() == 211
        assert store.rejected == {}
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM inbox").fetchone() == (0,)
    assert stored(path, "1s") == expected(path, 1)
    assert stored(path, "1m") == expected(path, 60)
