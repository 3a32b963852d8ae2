"""Telemetry ingest: readings/s from the bus into SQLite (WAL), against raw executemany.

Figure: sustained readings/s through Bus(BLOCK) → store writer → TelemetryStore.write, for
N readings. Reference: the same rows inserted by plain sqlite3 executemany in batches of the
same size on the same disk. DESIGN.md asks 80 000/s sustained, ceiling ≥ 200 000/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import time
from pathlib import Path

from drivers.model import Reading
from edge.bus import Bus, Closed, Overflow
from edge.store import TelemetryStore

N = 200_000
BATCH = 2000


def readings(n: int) -> list[Reading]:
    now = time.time()
    return [
        Reading(f"dev-{i % 800}", f"p{i % 10}", float(i), 0.0, now + i * 1e-6) for i in range(n)
    ]


def reference(path: Path, items: list[Reading]) -> float:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE r (series INTEGER, ts REAL, value, quality INTEGER)")
    conn.execute("CREATE INDEX r_i ON r (series, ts)")
    t0 = time.perf_counter()
    for i in range(0, len(items), BATCH):
        rows = [
            (hash((r.device, r.point)) & 0xFFFF, r.ts_wall, r.value, 0)
            for r in items[i : i + BATCH]
        ]
        with conn:
            conn.executemany("INSERT INTO r VALUES (?, ?, ?, ?)", rows)
    elapsed = time.perf_counter() - t0
    conn.close()
    return len(items) / elapsed


async def ours(path: Path, items: list[Reading]) -> float:
    bus: Bus[Reading] = Bus("readings")
    sub = bus.subscribe("store", Overflow.BLOCK, maxsize=10_000)
    async with TelemetryStore(path) as store:
        t0 = time.perf_counter()

        async def writer() -> None:
            with contextlib.suppress(Closed):
                while True:
                    await store.write(await sub.get_batch(BATCH))

        task = asyncio.create_task(writer())
        for r in items:
            await bus.publish(r)
        sub.close()
        await task
        elapsed = time.perf_counter() - t0
        assert await store.count() == len(items)
    return len(items) / elapsed


async def run() -> None:
    items = readings(N)
    with tempfile.TemporaryDirectory() as d:
        ref = reference(Path(d) / "ref.sqlite3", items)
        got = await ours(Path(d) / "ours.sqlite3", items)
    print(f"   store ingest      {got:12,.0f} readings/s   (target ≥ 80,000 sustained)")
    print(f"   raw executemany   {ref:12,.0f} readings/s   (reference)")
    print(f"   ratio ours/raw    {got / ref:12.2f}")
