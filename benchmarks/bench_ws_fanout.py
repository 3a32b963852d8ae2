"""WebSocket fan-out: 500 consoles following the show at 10 Hz, and GO -> DMX under that load.

Figure: the real service (``flytower run``, a child process, access control on) on the GO
latency benchmark's venue (``bench_go_latency``: PARs over sACN and Art-Net to loopback ports a
receiver thread timestamps, a looping two-cue list with snap cues). A crowd process
(``benchmarks/ws_crowd.py``) connects ``CLIENTS`` WebSocket clients, each subscribed to the
``playback`` topic (snapshot, then JSON patches), and timestamps every message. The benchmark
sends ``ROUNDS`` GOs over OSC at ~10 Hz (a random phase of the frame clock each time); every
GO changes the playback state, so every client gets ~10 updates a second.

- **Delivery**: from just before a GO is sent to the first playback message each client
  receives after it (both clocks are the box's ``CLOCK_MONOTONIC``), p50 / p99 / max over
  every client and GO. It includes the crowd's own loop turning 500 sockets on the same 2
  cores: an upper bound of what a console on its own machine would see.
- **GO -> DMX**: from the same instant to the first changed sACN and Art-Net packet.

The service runs on CPU 0, the crowd and this benchmark on the other CPUs: the consoles stand in
for machines of their own.

Reference, same run: the same passes with ``1`` client. Targets (issue 9): delivery p99 <=
100 ms with 500 clients; GO -> DMX p99 <= 5 ms under that load.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_go_latency import (
    RATE_HZ,
    OscClient,
    Wire,
    _auth,
    _start_service,
    _stop_service,
    pct,
    write_venue,
)

CLIENTS = 500
ROUNDS = 150  # GOs per pass, ~10 a second
GO_PERIOD_S = 0.1
_CPUS = frozenset(os.sched_getaffinity(0))  # before any pinning


async def measure(clients: int, rounds: int) -> dict[str, Any]:
    wire = Wire.open()
    with tempfile.TemporaryDirectory(prefix="bench-wsfan-") as tmp:
        venue, api_port, osc_port = write_venue(Path(tmp), wire, RATE_HZ)
        wire.start()
        proc = await _start_service(venue, api_port)
        token = _auth(venue)["Authorization"].removeprefix("Bearer ")
        out = Path(tmp) / "crowd.json"
        crowd = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.ws_crowd",
            "--url", f"ws://127.0.0.1:{api_port}/ws", "--token", token,
            "--clients", str(clients), "--out", str(out), "--topics", "playback",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        pinned = _pin(proc.pid, crowd.pid)
        loop = asyncio.get_running_loop()
        transport, osc = await loop.create_datagram_endpoint(
            OscClient, remote_addr=("127.0.0.1", osc_port)
        )
        gos: list[float] = []
        dmx: dict[str, list[float]] = {"sacn": [], "artnet": []}
        try:
            assert crowd.stdout is not None
            assert crowd.stdin is not None
            line = await asyncio.wait_for(crowd.stdout.readline(), 90)
            if line.strip() != b"ready":
                raise RuntimeError(f"the crowd did not connect: {line!r}")
            await osc.request("/flytower/ping")
            rng = random.Random(7)
            next_at = time.monotonic()
            for i in range(rounds):
                next_at += GO_PERIOD_S
                await asyncio.sleep(max(0.0, next_at - time.monotonic() + rng.random() / RATE_HZ))
                mark = wire.mark()
                t0 = time.monotonic()
                await osc.request("/go")
                gos.append(t0)
                for proto, ch in (await wire.wait_change(mark)).items():
                    dmx[proto].append((ch.at - t0) * 1000)
                if i % 25 == 24:
                    print(f"   ... {i + 1}/{rounds} GOs", end="\r", flush=True)
            await asyncio.sleep(0.5)  # the last updates reach the crowd
            crowd.stdin.close()
            await asyncio.wait_for(crowd.wait(), 60)
            seen = json.loads(out.read_text())
        finally:
            transport.close()
            if crowd.returncode is None:
                crowd.kill()
                await crowd.wait()
            await _stop_service(proc)
            wire.close()
    delivery = []
    missed = 0
    bounds = [*gos[1:], float("inf")]
    for times in seen["times"]:
        arr = np.array(times)
        for g, nxt in zip(gos, bounds, strict=True):
            k = int(np.searchsorted(arr, g))
            if k < len(arr) and arr[k] < nxt:
                delivery.append((arr[k] - g) * 1000)
            else:
                missed += 1  # conflated into the next GO's update, or lost
    return {
        "clients": len(seen["times"]),
        "delivery": delivery,
        "missed": missed,
        "dmx": dmx,
        "messages": seen["messages"],
        "bytes": seen["bytes"],
        "closed": seen["closed"],
        "seconds": gos[-1] - gos[0] if gos else 0.0,
        "pinned": pinned,
    }


def _pin(service: int, crowd: int) -> bool:
    """The service on CPU 0, the crowd and this benchmark on the others: the consoles stand
    in for machines of their own, so their CPU should not be the service's. (One CPU: no.)"""
    cpus = sorted(_CPUS)
    if len(cpus) < 2:
        return False
    os.sched_setaffinity(service, {cpus[0]})
    os.sched_setaffinity(crowd, set(cpus[1:]))
    os.sched_setaffinity(0, set(cpus[1:]))
    return True


def _line(label: str, r: dict[str, Any], ref: dict[str, Any] | None) -> None:
    d50, d99, dmax = pct(r["delivery"])
    ratio = ""
    if ref is not None:
        r50, r99, _ = pct(ref["delivery"])
        ratio = f"   (x{d50 / r50:4.1f} / x{d99 / r99:4.1f} the 1-client reference)"
    total = r["missed"] + len(r["delivery"])
    rate = r["messages"] / max(1e-9, r["seconds"])
    mbps = r["bytes"] / max(1e-9, r["seconds"]) / 1e6
    missed = 100 * r["missed"] / max(1, total)
    where = "service on CPU 0, crowd on the others" if r["pinned"] else "one CPU for all"
    print(
        f"   {label}: {r['clients']} clients ({where}), delivery p50 {d50:6.1f}  p99 {d99:6.1f}  "
        f"max {dmax:6.1f} ms{ratio}"
    )
    print(
        f"      {rate:8.0f} messages/s to the crowd ({mbps:.2f} MB/s), GO updates conflated "
        f"or missed {missed:.1f} %, "
        f"connections closed by the server {r['closed']}"
    )
    for proto, values in r["dmx"].items():
        p50, p99, mx = pct(values)
        extra = ""
        if ref is not None:
            q50, q99, _ = pct(ref["dmx"][proto])
            extra = f"   (x{p50 / q50:4.1f} / x{p99 / q99:4.1f} the reference)"
        print(f"      GO osc -> {proto:6} p50 {p50:5.2f}  p99 {p99:5.2f}  max {mx:5.2f} ms{extra}")


async def run() -> None:
    ref = await measure(1, ROUNDS // 3)
    _line("reference", ref, None)
    crowd = await measure(CLIENTS, ROUNDS)
    _line("crowd    ", crowd, ref)
    d99 = pct(crowd["delivery"])[1]
    g99 = max(pct(v)[1] for v in crowd["dmx"].values())
    print(
        f"   {CLIENTS} consoles at ~10 Hz: delivery p99 {d99:.1f} ms (target <= 100), "
        f"GO -> DMX p99 {g99:.2f} ms under that load (target <= 5)"
    )


if __name__ == "__main__":
    asyncio.run(run())
