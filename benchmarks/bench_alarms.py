"""Alarms: rule evaluation rate, and condition → alarm visible / stored under load.

Evaluation: readings of 500 hoists (every point of the profile, 21 a hoist) through
``AlarmEngine.on_readings`` with the default rules plus a high threshold on ``load`` and a rate
rule on ``position``. Reference: a bare loop over the same readings doing one dict lookup and
one comparison each (the least any rule engine does).

Response: the engine runs on its LATEST feed of a readings bus that carries a background
stream (``BENCH_ALARMS_RATE`` readings/s, default 20 000, spread over every point); every
0.1 s a hoist's ``fault_code`` goes to 4 and back. Measured from the publish of the fault
reading: *visible* (the instance is active in the engine, what ``GET /api/v1/alarms`` reads)
and *stored* (its event committed to the alarm store). Reference: a bare LATEST subscriber on
the same bus receiving the same reading. Target: ≤ 1 s.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from drivers.model import Device, ModbusTcpTransport, Reading, load_profile
from edge.alarms import AlarmEngine, AlarmStore, alarm_id, parse_rules, running
from edge.bus import Bus, Overflow
from edge.config import AlarmsConfig

ROOT = Path(__file__).resolve().parents[1]
HOISTS = 500
RATE = int(os.environ.get("BENCH_ALARMS_RATE", "20000"))
TRIALS = int(os.environ.get("BENCH_ALARMS_TRIALS", "50"))
RULES = [
    {"id": "heavy", "kind": "high", "point": "load", "limit": 600, "deadband": 10},
    {"id": "fast", "kind": "rate", "point": "position", "rate_per_s": 2000, "window_s": 1},
]


def devices() -> list[Device]:
    profile = load_profile(ROOT / "drivers" / "profiles" / "hoist.toml")
    return [
        Device(
            f"hoist-{i:03}",
            profile,
            ModbusTcpTransport(kind="modbus-tcp", host="127.0.0.1", port=10000 + i),
            10.0,
        )
        for i in range(HOISTS)
    ]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def evaluation(devs: list[Device], folder: Path) -> None:
    points = list(devs[0].profile.points)
    batch = [
        Reading(d.id, p, 0 if p in ("fault_code", "estop") else 100.0 + i, float(i), float(i))
        for i in range(10)
        for d in devs
        for p in points
    ]
    store = AlarmStore(folder / "eval.sqlite3")
    engine = AlarmEngine(AlarmsConfig(rules=parse_rules(RULES)), devs, store)
    t0 = time.perf_counter()
    engine.on_readings(batch)
    t_engine = time.perf_counter() - t0
    limits = {(d.id, "load"): 600.0 for d in devs}
    t0 = time.perf_counter()
    hits = 0
    for r in batch:
        lim = limits.get((r.device, r.point))
        if lim is not None and isinstance(r.value, float) and r.value > lim:
            hits += 1
    t_ref = time.perf_counter() - t0
    store._pool.shutdown()
    n = len(batch)
    print(
        f"   evaluation: {n / t_engine:,.0f} readings/s ({engine.evaluated:,} rule checks, "
        f"{len(engine.alarms):,} instances); reference bare lookup+compare "
        f"{n / t_ref:,.0f}/s; ratio {t_ref / t_engine:.2f}"
    )


async def response(devs: list[Device], folder: Path) -> None:
    bus: Bus[Reading] = Bus("readings")
    ref = bus.subscribe("ref", Overflow.LATEST, 100_000, lambda r: (r.device, r.point))
    points = [p for p in devs[0].profile.points if p not in ("fault_code", "estop")]
    cfg = AlarmsConfig(rules=parse_rules(RULES), store="x", tick_s=0.1)
    target = devs[0].id
    aid = alarm_id("machinery-fault", target, "fault_code")
    visible: list[float] = []
    stored: list[float] = []
    reference: list[float] = []
    async with running(cfg, devs, folder / "alarms.sqlite3", readings=bus) as engine:

        async def background() -> None:
            i = 0
            per_tick = max(1, RATE // 100)
            while True:
                now = time.monotonic()
                batch = []
                for _ in range(per_tick):
                    d = devs[i % len(devs)]
                    p = points[(i // len(devs)) % len(points)]
                    batch.append(Reading(d.id, p, 1.0, now, time.time()))
                    i += 1
                await bus.publish_many(batch)
                await asyncio.sleep(0.01)

        async def drain_ref(seen: dict[float, float]) -> None:
            while True:
                for r in await ref.get_batch():
                    if r.point == "fault_code" and r.value == 4:
                        seen[r.ts_mono] = time.perf_counter()

        seen: dict[float, float] = {}
        bg = asyncio.create_task(background())
        rd = asyncio.create_task(drain_ref(seen))
        a = engine.alarms[aid]
        for _ in range(TRIALS):
            before = engine.store_errors
            stamp = time.monotonic()
            t0 = time.perf_counter()
            await bus.publish(Reading(target, "fault_code", 4, stamp, time.time()))
            while not a.condition:  # noqa: ASYNC110 (polling is what a client does)
                await asyncio.sleep(0.001)
            visible.append(time.perf_counter() - t0)
            hist = []
            while not hist:
                hist = await engine.store.history(0, 1e10, alarm=aid, limit=1)
                if hist and hist[0]["event"] != "raise":
                    hist = []
                    await asyncio.sleep(0.001)
            stored.append(time.perf_counter() - t0)
            while stamp not in seen:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            reference.append(seen[stamp] - t0)
            assert engine.store_errors == before
            await engine.ack(aid, "bench")
            await bus.publish(Reading(target, "fault_code", 0, time.monotonic(), time.time()))
            while a.condition:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.1)
        bg.cancel()
        rd.cancel()
        await asyncio.gather(bg, rd, return_exceptions=True)
        ref.close()
    for name, xs in (("visible", visible), ("stored", stored), ("reference", reference)):
        print(
            f"   response {name:9}: p50 {statistics.median(xs) * 1000:6.1f} ms, "
            f"p99 {pct(xs, 0.99) * 1000:6.1f} ms, max {max(xs) * 1000:6.1f} ms"
        )
    print(
        f"   (background {RATE:,} readings/s over {HOISTS * len(points):,} points; "
        "visible/reference p50 ratio "
        f"{statistics.median(visible) / statistics.median(reference):.2f};"
        " target ≤ 1 s)"
    )


async def run() -> None:
    devs = devices()
    with tempfile.TemporaryDirectory() as d:
        await evaluation(devs, Path(d))
        await response(devs, Path(d))


if __name__ == "__main__":
    asyncio.run(run())
