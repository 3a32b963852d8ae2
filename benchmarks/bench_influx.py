"""InfluxDB sink drain rate to VictoriaMetrics (readings/s), against influxdb-client alone.

Figures, on a real VictoriaMetrics on loopback (Debian's ``victoria-metrics``):
- drain: N readings already in the sink's disk queue, sent in batches of ``BATCH`` lines until
  the queue is empty (peek, write, acknowledge, delete; each batch committed);
- end to end: N readings enqueued (encoded, committed to the queue) while the drainer sends
  them, until the last is acknowledged;
- reference: the same line protocol (pre-encoded) written by influxdb-client's synchronous
  write API in batches of the same size: no queue, no encoding, nothing durable.
The ratios ours/reference are the figures to compare across machines.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from drivers.model import Reading
from edge.influx import DeviceType, InfluxSink, InfluxWriter, LineEncoder, SinkOptions
from tests.peers import victoria

N = 200_000
BATCH = 5000
SERIES = 2000
TYPES = {f"dev-{i}": DeviceType("bench", "bench") for i in range(SERIES // 10)}


def readings(n: int, t0: float) -> list[Reading]:
    return [
        Reading(f"dev-{(i // 10) % (SERIES // 10)}", f"p{i % 10}", float(i), 0.0, t0 + i * 0.001)
        for i in range(n)
    ]


def encoder(venue: str) -> LineEncoder:
    return LineEncoder(venue, "node", TYPES, max_future_s=10 * 86400, max_past_s=86400)


def reference(url: str, items: list[Reading]) -> float:
    lines = [line for _, line in encoder("ref").encode(items)]
    writer = InfluxWriter(url, "org", "bucket", None, timeout_s=60)
    t0 = time.perf_counter()
    for i in range(0, len(lines), BATCH):
        writer.write(b"\n".join(lines[i : i + BATCH]))
    elapsed = time.perf_counter() - t0
    writer.close()
    return len(lines) / elapsed


def sink(folder: Path, url: str, venue: str) -> InfluxSink:
    opts = SinkOptions(batch_size=BATCH, flush_interval_s=0.05, feed_batch=BATCH)
    writer = InfluxWriter(url, "org", "bucket", None, timeout_s=60)
    return InfluxSink(folder / f"{venue}.sqlite3", writer, encoder(venue), opts)


async def drain(folder: Path, url: str, items: list[Reading]) -> float:
    s = sink(folder, url, "drain")
    async with s:
        for i in range(0, len(items), BATCH):
            await s.enqueue(items[i : i + BATCH])
        t0 = time.perf_counter()
        task = asyncio.create_task(s.run())
        assert await s.flush(600), "drain did not finish"
        elapsed = time.perf_counter() - t0
        s.close()
        await task
        assert s.stats()["delivered"] == len(items)
    return len(items) / elapsed


async def end_to_end(folder: Path, url: str, items: list[Reading]) -> float:
    s = sink(folder, url, "e2e")
    async with s:
        t0 = time.perf_counter()
        task = asyncio.create_task(s.run())
        for i in range(0, len(items), BATCH):
            await s.enqueue(items[i : i + BATCH])
        assert await s.flush(600), "end-to-end did not finish"
        elapsed = time.perf_counter() - t0
        s.close()
        await task
        assert s.stats()["delivered"] == len(items)
    return len(items) / elapsed


async def run() -> None:
    why = victoria.available()
    if why is not None:
        print(f"   skipped: {why}")
        return
    items = readings(N, time.time() - 3600)
    with tempfile.TemporaryDirectory() as d, victoria.VictoriaMetrics(Path(d) / "vm") as vm:
        ref = await asyncio.to_thread(reference, vm.url, items)
        got_drain = await drain(Path(d), vm.url, items)
        got_e2e = await end_to_end(Path(d), vm.url, items)
    print(f"   sink drain        {got_drain:12,.0f} readings/s   (queue → VictoriaMetrics)")
    print(f"   sink end to end   {got_e2e:12,.0f} readings/s   (encode + enqueue + drain)")
    print(f"   client alone      {ref:12,.0f} readings/s   (reference: influxdb-client, no queue)")
    print(f"   ratio drain/ref   {got_drain / ref:12.2f}")
    print(f"   ratio e2e/ref     {got_e2e / ref:12.2f}")
