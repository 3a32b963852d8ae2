"""Journal: append rate (single, group-committed, batched) and queries over 2 000 000 events.

Figures: events/s appended one at a time (each awaited: one commit per event), 100 appends in
flight (group commit), and in batches of 10 000 (``append_many``, how the 2 000 000 are
loaded). Then, with 2 000 000 events over 14 days (~6 000 an hour) on 400 devices (1–3 targets
an event, ~10 000 events per device): a random 1-hour window (every event in it) and one random
device's history (the API's default page of the latest 1 000, and all of it), p50/p99 over 40
queries each, through ``JournalStore.query_json`` (each event as the JSON the API sends).
DESIGN.md asks ≤ 200 ms for both. Reference, in the same run: a full scan of the table
(``count(*)`` with a predicate on an unindexed column), which is what a query without an index
would cost; and plain ``count(*)``.

``FLYTOWER_BENCH_JOURNAL_EVENTS=200000 python -m benchmarks journal`` runs a reduced journal
(same devices and span, so fewer events per device and per hour) for a quick look.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from controller.journal import JournalEvent, Result, SourceKind
from edge.journal import JournalQuery, JournalStore

N = int(os.environ.get("FLYTOWER_BENCH_JOURNAL_EVENTS", "2000000"))
BATCH = 10_000
DEVICES = 400
SPAN_S = 14 * 86400.0
T0 = 1_700_000_000.0
QUERIES = 40
KINDS = list(SourceKind)


def events(rng: random.Random, start: int, n: int) -> list[JournalEvent]:
    out = []
    step = SPAN_S / N
    for i in range(start, start + n):
        t = T0 + i * step
        targets = tuple(f"dev-{rng.randrange(DEVICES)}" for _ in range(rng.randint(1, 3)))
        refused = rng.random() < 0.02
        out.append(
            JournalEvent(
                kind=KINDS[i % len(KINDS)],
                source=f"rest 10.0.0.{i % 50}:5{i % 1000:03d}",
                command="device.move_to" if i % 4 else "go",
                result=Result.REFUSED if refused else Result.OK,
                requested=t,
                executed=None if refused else t + 0.001,
                duration_s=0.001,
                reason="above the maximum" if refused else "",
                cue_list="main" if i % 4 == 0 else None,
                cue=str(i % 300) if i % 4 == 0 else None,
                targets=targets,
                args={"position": i % 12000, "speed": 500},
            )
        )
    return out


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def timed(journal: JournalStore, q: JournalQuery) -> tuple[float, int]:
    t0 = time.perf_counter()
    got, _ = await journal.query_json(q)  # what GET /api/v1/journal sends
    return (time.perf_counter() - t0) * 1000, len(got)


def line(name: str, ms: list[float], rows: list[int], ref_ms: float) -> None:
    p50, p99 = statistics.median(ms), pct(ms, 0.99)
    print(
        f"   {name:26s} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  ({statistics.mean(rows):7.0f} rows)"
        f"  p99/full-scan {p99 / ref_ms:5.3f}   (target ≤ 200 ms)"
    )


async def run() -> None:
    rng = random.Random(5)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "journal.sqlite3"
        async with JournalStore(path) as journal:
            # Single appends, each awaited: one commit per event.
            probe = events(rng, 0, 2000)
            t0 = time.perf_counter()
            for e in probe:
                await journal.append(e)
            single = len(probe) / (time.perf_counter() - t0)
            # 100 in flight: the flush task commits whatever has queued up.
            probe = events(rng, 0, 20_000)
            commits0 = journal.commits
            t0 = time.perf_counter()
            sem = asyncio.Semaphore(100)

            async def one(e: JournalEvent) -> None:
                async with sem:
                    await journal.append(e)

            await asyncio.gather(*(one(e) for e in probe))
            grouped = len(probe) / (time.perf_counter() - t0)
            per_commit = len(probe) / max(1, journal.commits - commits0)

        path = Path(d) / "journal-2m.sqlite3"
        async with JournalStore(path) as journal:
            t0 = time.perf_counter()
            made = 0.0
            for start in range(0, N, BATCH):
                m0 = time.perf_counter()
                batch = events(rng, start, BATCH)
                made += time.perf_counter() - m0
                await journal.append_many(batch)
            elapsed = time.perf_counter() - t0
            batched = N / (elapsed - made)
            print(f"   append, one at a time   {single:12,.0f} events/s  (a commit each)")
            print(
                f"   append, 100 in flight   {grouped:12,.0f} events/s  "
                f"(group commit: {per_commit:.1f} events a commit)"
            )
            print(
                f"   append_many, {BATCH:,}  {batched:12,.0f} events/s  "
                f"({N:,} loaded in {elapsed:.0f} s, {made:.0f} s of it making events)"
            )
            assert await journal.count() == N

            # References: a full scan of the table, and count(*).
            conn = sqlite3.connect(path)
            scans = []
            for _ in range(3):
                t0 = time.perf_counter()
                conn.execute("SELECT count(*) FROM journal WHERE reason = 'x'").fetchone()
                scans.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            conn.execute("SELECT count(*) FROM journal").fetchone()
            count_ms = (time.perf_counter() - t0) * 1000
            conn.close()
            full = min(scans)
            print(f"   reference: full scan    {full:9.1f} ms   count(*) {count_ms:7.1f} ms")

            hour: list[float] = []
            hour_rows: list[int] = []
            for _ in range(QUERIES):
                since = T0 + rng.uniform(0, SPAN_S - 3600)
                q = JournalQuery(since=since, until=since + 3600, limit=None)
                ms, n = await timed(journal, q)
                hour.append(ms)
                hour_rows.append(n)
            line("1-hour window (all)", hour, hour_rows, full)

            page: list[float] = []
            page_rows: list[int] = []
            whole: list[float] = []
            whole_rows: list[int] = []
            for _ in range(QUERIES):
                dev = f"dev-{rng.randrange(DEVICES)}"
                ms, n = await timed(journal, JournalQuery(device=dev))
                page.append(ms)
                page_rows.append(n)
                ms, n = await timed(journal, JournalQuery(device=dev, limit=None))
                whole.append(ms)
                whole_rows.append(n)
            line("device, latest 1 000", page, page_rows, full)
            line("device, whole history", whole, whole_rows, full)

            window: list[float] = []
            window_rows: list[int] = []
            for _ in range(QUERIES):
                dev = f"dev-{rng.randrange(DEVICES)}"
                since = T0 + rng.uniform(0, SPAN_S - 86400)
                q = JournalQuery(since=since, until=since + 86400, device=dev, limit=None)
                ms, n = await timed(journal, q)
                window.append(ms)
                window_rows.append(n)
            line("device, 1 day", window, window_rows, full)
        size = path.stat().st_size / 1e6
        print(f"   file                    {size:9.0f} MB for {N:,} events")


if __name__ == "__main__":
    asyncio.run(run())
