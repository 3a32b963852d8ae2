"""The telemetry store in a process of its own (``edge.store_process``): the same answers as in
the service's process, durable acknowledgements, errors as themselves, a dead store process
said plainly, a store process that outlives a killed service closing its store, and a service
run with ``[telemetry] writer = "process"``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from drivers.model import Quality, Reading, ValueType
from edge.store import StoreSettings, TelemetryQuery, TelemetryStore
from edge.store_process import StoreProcess, StoreProcessError
from tests.conftest import free_port, run_service, simulators, wait_until, write_venue

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DTYPES = {("hoist-1", "position"): ValueType.FLOAT, ("hoist-1", "moving"): ValueType.BOOL}
SETTINGS = StoreSettings(raw_retention_s=86400.0)


def batch(now: float) -> list[Reading]:
    """Good readings and one of each kind of bad input."""
    good = [Reading("hoist-1", "position", 1000.0 + i, 0.0, now - 10 + i / 10) for i in range(50)]
    return [
        *good,
        Reading("hoist-1", "moving", True, 0.0, now),
        Reading("hoist-1", "moving", 3, 0.0, now + 0.1),  # no bool
        Reading("hoist-1", "position", float("nan"), 0.0, now + 0.2),  # flagged, stored bad
        Reading("hoist-1", "position", "up", 0.0, now + 0.3),  # wrong type
        Reading("", "position", 1.0, 0.0, now),  # bad name
        Reading("hoist-1", "position", 1.0, 0.0, now + 3600),  # future
        Reading("hoist-1", "position", 1.0, 0.0, now, "excellent"),  # type: ignore[arg-type]
        object(),  # type: ignore[list-item]
        None,  # type: ignore[list-item]
        good[0],  # a duplicate: refused at compaction
    ]


async def answers(store: TelemetryStore | StoreProcess, now: float) -> dict[str, Any]:
    stored = await store.write(batch(now))
    await store.rollup()
    q = TelemetryQuery("hoist-1", now - 60, now + 60, ("position", "moving"), "raw")
    history = await store.history("hoist-1", "position", now - 60, None, 5)
    return {
        "stored": stored,
        "count": await store.count(),
        "query": (await store.query(q)).as_dict(),
        "history": [(r.ts, r.value, r.quality) for r in history],
        "written": store.written,
        "rejected": dict(store.rejected),
        "flagged": dict(store.flagged),
    }


async def test_the_same_answers_as_in_process(tmp_path: Path) -> None:
    now = time.time()
    async with TelemetryStore(tmp_path / "a.sqlite3", SETTINGS, dtypes=DTYPES) as here:
        expected = await answers(here, now)
    async with StoreProcess(tmp_path / "b.sqlite3", SETTINGS, dtypes=DTYPES) as there:
        assert there.pid is not None and there.pid != os.getpid()
        got = await answers(there, now)
        assert await there.write([]) == 0
        assert await there.prune(86400.0) == 0
        assert await there.prune_tier("1s", 86400.0) == 0
    assert got == expected
    assert got["rejected"] == {
        "bad_name": 1,
        "bad_quality": 1,
        "duplicate": 1,
        "future": 1,
        "malformed": 2,
        "wrong_type": 2,
    }
    assert got["flagged"] == {"non_finite": 1}
    assert got["history"][-1][2] is Quality.BAD  # the NaN, kept as a bad reading
    # Closed: the process is gone and its store compacted; the socket folder is removed.
    with contextlib.closing(sqlite3.connect(tmp_path / "b.sqlite3")) as db:
        assert db.execute("SELECT count(*) FROM inbox").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == got["count"]


async def test_errors_come_back_as_themselves(tmp_path: Path) -> None:
    async with StoreProcess(tmp_path / "t.sqlite3", SETTINGS) as store:
        with pytest.raises(ValueError, match="no tier 'hourly'"):
            await store.prune_tier("hourly", 60.0)
        with pytest.raises(ValueError, match="five of one length"):
            await store._call("write_wire", (["d"], ["p"], [], [], []))
        with pytest.raises(ValueError, match="no method"):
            await store._call("_write", [])  # only the store's public calls are served
        with pytest.raises(Exception, match="pickle"):  # pickle's own error
            await store._call("history", lambda: None)  # never sent: nothing half-written
        assert store._link is not None and not store._link._waiting  # nothing left waiting
        assert await store.write([Reading("d", "p", 1.0, 0.0, time.time())]) == 1  # still fine


async def test_a_newer_store_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="schema 99 is newer"):
        async with StoreProcess(path, SETTINGS):
            pass


async def test_a_killed_store_process_is_said_and_nothing_hangs(tmp_path: Path) -> None:
    async with StoreProcess(tmp_path / "t.sqlite3", SETTINGS) as store:
        assert await store.write([Reading("d", "p", 1.0, 0.0, time.time())]) == 1
        assert store.pid is not None
        os.kill(store.pid, signal.SIGKILL)

        async def write_again() -> None:
            for _ in range(100):  # the reply reader hears the end at once, or the next write
                await store.write([Reading("d", "p", 2.0, 0.0, time.time())])
                await asyncio.sleep(0.05)

        with pytest.raises(StoreProcessError, match="exit code -9"):
            await write_again()
        with pytest.raises(StoreProcessError):
            await store.count()
    # What was acknowledged before the kill is in the file.
    async with TelemetryStore(tmp_path / "t.sqlite3", SETTINGS) as reopened:
        assert next(r.value for r in await reopened.history("d", "p")) == 1.0


SERVICE_DIES = """
import asyncio, os, sys, time
from pathlib import Path
from drivers.model import Reading
from edge.store import StoreSettings
from edge.store_process import StoreProcess

async def main():
    async with StoreProcess(Path(sys.argv[1]), StoreSettings()) as store:
        now = time.time()
        for k in range(10):
            rows = [Reading("d", f"p{i}", float(k), 0.0, now + k / 10) for i in range(100)]
            await store.write(rows)
        print(store.pid, flush=True)
        os.kill(os.getpid(), 9)  # the service dies: no close, no goodbye

asyncio.run(main())
"""


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


async def test_the_store_process_closes_its_store_when_the_service_is_killed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.sqlite3"
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", SERVICE_DIES, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -9, done.stderr
    pid = int(done.stdout.split()[0])
    await wait_until(lambda: asyncio.to_thread(gone, pid), 30, "the orphaned store process to exit")
    with contextlib.closing(sqlite3.connect(path)) as db:
        # Every acknowledged reading, compacted by the store process's own close.
        assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 1000
        assert db.execute("SELECT count(*) FROM inbox").fetchone()[0] == 0
        assert db.execute("SELECT sum(n) FROM rollup_1s").fetchone()[0] == 1000


async def test_a_service_with_its_store_in_a_process(tmp_path: Path) -> None:
    venue = write_venue(tmp_path, [{"id": "hoist-1", "port": free_port(), "start": 2000}])
    venue.write_text(
        venue.read_text().replace("[telemetry]\n", '[telemetry]\nwriter = "process"\n')
    )
    async with (
        simulators(venue),
        run_service(venue) as svc,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.bound_api_port}", timeout=10) as c,
    ):
        assert isinstance(svc.store, StoreProcess) and svc.store.pid != os.getpid()
        t0 = time.time()

        async def queryable() -> bool:
            r = await c.get(
                "/api/v1/telemetry",
                params={"device": "hoist-1", "point": "position", "resolution": "raw"},
            )
            assert r.status_code == 200, r.text
            ts = r.json()["series"][0]["ts"]
            return bool(ts) and ts[-1] >= t0

        await wait_until(queryable, 15, "a position polled after t0, queried through the API")
        h = await c.get("/api/v1/devices/hoist-1/points/position/history")
        assert h.status_code == 200 and h.json(), h.text
        m = await c.get("/metrics")
        assert m.status_code == 200
        written = next(
            float(line.split()[-1])
            for line in m.text.splitlines()
            if line.startswith("flytower_store_written")
        )
        assert written > 0  # the store process's counters, mirrored
        pid = svc.store.pid
    assert pid is not None and gone(pid)
