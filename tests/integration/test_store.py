"""The telemetry store on a real SQLite file: WAL, round trips, reopen, schema guard, kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.model import Quality, Reading
from edge.store import SCHEMA_VERSION, TelemetryStore

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


def at(
    ts: float,
    value: float | int | bool | str | None,
    point: str = "position",
    device: str = "hoist-1",
    quality: Quality = Quality.GOOD,
) -> Reading:
    return Reading(device, point, value, ts - T0, ts, quality)


@contextlib.asynccontextmanager
async def opened(path: Path) -> AsyncIterator[TelemetryStore]:
    async with TelemetryStore(path) as store:
        yield store


def raw(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Read the file with plain sqlite3, as an independent reader."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(sql, args).fetchall()


async def test_the_store_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "var" / "telemetry.sqlite3"  # the folder is made on open
    async with opened(path) as store:
        await store.write([at(T0, 1.0)])
        assert raw(path, "PRAGMA journal_mode") == [("wal",)]
        assert (tmp_path / "var" / "telemetry.sqlite3-wal").exists()
    assert raw(path, "PRAGMA journal_mode") == [("wal",)]
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_history_round_trip_bounds_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    async with opened(path) as store:
        # Written out of order and in two batches, with another point interleaved.
        await store.write([at(T0 + i, float(i)) for i in (5, 1, 3, 9, 7)])
        await store.write(
            [at(T0 + i, float(i)) for i in (0, 2, 4, 6, 8)]
            + [at(T0 + i, -1.0, point="load") for i in range(10)]
        )
        assert store.written == 20
        assert await store.count() == 20

        rows = await store.history("hoist-1", "position")
        assert [r.ts for r in rows] == [T0 + i for i in range(10)]  # oldest first
        assert [r.value for r in rows] == [float(i) for i in range(10)]
        assert all(r.quality is Quality.GOOD and r.device == "hoist-1" for r in rows)

        rows = await store.history("hoist-1", "position", start=T0 + 3, end=T0 + 6)
        assert [r.value for r in rows] == [3.0, 4.0, 5.0, 6.0]  # both bounds inclusive
        rows = await store.history("hoist-1", "position", start=T0 + 8)
        assert [r.value for r in rows] == [8.0, 9.0]
        rows = await store.history("hoist-1", "position", end=T0 + 1)
        assert [r.value for r in rows] == [0.0, 1.0]
        rows = await store.history("hoist-1", "position", limit=3)
        assert [r.value for r in rows] == [7.0, 8.0, 9.0]  # the latest, still oldest first
        rows = await store.history("hoist-1", "position", start=T0 + 2, end=T0 + 8, limit=2)
        assert [r.value for r in rows] == [7.0, 8.0]
        assert await store.history("hoist-1", "position", start=T0 + 100) == []
        assert await store.history("hoist-1", "nothing") == []
        assert await store.history("nobody", "position") == []
        assert len(await store.history("hoist-1", "load")) == 10


async def test_bool_is_stored_as_0_1_and_none_as_null_with_bad_quality(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    async with opened(path) as store:
        await store.write(
            [
                at(T0, True, point="moving"),
                at(T0 + 1, False, point="moving"),
                at(T0, None, point="position", quality=Quality.BAD),
                at(T0, 7, point="fault_code"),
                at(T0 + 1, 1.5, point="velocity", quality=Quality.STALE),
            ]
        )
        moving = await store.history("hoist-1", "moving")
        assert [r.value for r in moving] == [1, 0]
        position = await store.history("hoist-1", "position")
        assert [(r.value, r.quality) for r in position] == [(None, Quality.BAD)]
        fault = await store.history("hoist-1", "fault_code")
        assert [(r.value, type(r.value)) for r in fault] == [(7, int)]
        velocity = await store.history("hoist-1", "velocity")
        assert [(r.value, r.quality) for r in velocity] == [(1.5, Quality.STALE)]
    rows = raw(
        path,
        "SELECT s.point, r.value, typeof(r.value), r.quality FROM readings r "
        "JOIN series s ON s.id = r.series ORDER BY s.point, r.ts",
    )
    assert rows == [
        ("fault_code", 7, "integer", 0),
        ("moving", 1, "integer", 0),
        ("moving", 0, "integer", 0),
        ("position", None, "null", 2),
        ("velocity", 1.5, "real", 1),
    ]


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    async with opened(path) as store:
        await store.write([at(T0 + i, float(i)) for i in range(100)])
        await store.write([at(T0, True, point="moving")])
    async with opened(path) as store:
        assert await store.count() == 101
        assert store.written == 0  # counts this run only
        rows = await store.history("hoist-1", "position", limit=100_000)
        assert [r.value for r in rows] == [float(i) for i in range(100)]
        # Known series keep their ids after a reopen: no duplicate series rows appear.
        await store.write([at(T0 + 100, 100.0), at(T0 + 1, False, point="moving")])
        assert len(await store.history("hoist-1", "position", limit=1000)) == 101
        assert [r.value for r in await store.history("hoist-1", "moving")] == [1, 0]
    assert raw(path, "SELECT device, point FROM series ORDER BY id") == [
        ("hoist-1", "position"),
        ("hoist-1", "moving"),
    ]


async def test_a_store_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    async with opened(path) as store:
        await store.write([at(T0, 1.0)])
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version=99")
        db.commit()
    with pytest.raises(RuntimeError, match=r"schema 99 is newer than this Flytower \(2\)"):
        async with TelemetryStore(path):
            pass
    assert raw(path, "PRAGMA user_version") == [(99,)]  # not downgraded
    assert raw(path, "SELECT count(*) FROM readings") == [(1,)]


async def test_a_refused_store_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE future (x)")
        db.execute("PRAGMA user_version=99")
        db.commit()
    before = path.read_bytes()
    store = TelemetryStore(path)
    with pytest.raises(RuntimeError, match="refusing to touch it"):
        await store.__aenter__()
    # A refused store leaves no worker threads behind.
    assert store._writer._shutdown and store._reader._shutdown
    assert raw(path, "PRAGMA journal_mode") == [("delete",)]
    assert path.read_bytes() == before


WRITER_PROCESS = """
import asyncio, sys
from pathlib import Path
from drivers.model import Reading
from edge.store import TelemetryStore

async def main() -> None:
    total = 0
    async with TelemetryStore(Path(sys.argv[1])) as store:
        while True:
            batch = [Reading("hoist-1", "position", float(total + i), 0.0, 1e9 + total + i)
                     for i in range(1000)]
            await store.write(batch)
            total += len(batch)
            print(total, flush=True)

asyncio.run(main())
"""


async def test_committed_batches_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITER_PROCESS,
        str(path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    last = 0
    try:
        assert proc.stdout is not None
        for _ in range(8):
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            assert line, (await proc.stderr.read()) if proc.stderr else b""
            last = int(line)
        os.kill(proc.pid, signal.SIGKILL)  # mid-write, most likely: it never stops writing
        await asyncio.wait_for(proc.wait(), 5)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert last >= 8000
    async with opened(path) as store:
        n = await store.count()
        assert n >= last, f"{last} readings were reported committed, {n} survived"
        assert n % 1000 == 0  # a batch is committed whole or not at all
        rows = await store.history("hoist-1", "position", limit=100_000)
        assert [r.value for r in rows] == [float(i) for i in range(n)]
    assert raw(path, "PRAGMA integrity_check") == [("ok",)]


async def test_prune_removes_only_readings_older_than_the_retention(tmp_path: Path) -> None:
    now = time.time()
    async with opened(tmp_path / "t.sqlite3") as store:
        await store.write([at(now - 3 * 86400, 1.0), at(now - 3600, 2.0), at(now, 3.0)])
        assert await store.prune(2 * 86400) == 1
        rows = await store.history("hoist-1", "position")
    assert [r.value for r in rows] == [2.0, 3.0]
