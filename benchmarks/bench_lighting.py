"""Lighting engine: 64 universes x 512 channels, every channel fading, at 44 Hz over sACN.

Figure: the engine (controller/lighting) patched with 4 096 RGBW PARs (64 per universe, 8
channels each: every slot of 64 universes), two cue-list sources crossfading every attribute
(HTP intensities, LTP colours) under a grand master at 90 %, for ~10 s: achieved frame rate,
frame-interval jitter p50/p99/max (|interval - period|), late and skipped frames, and CPU share
of one core (time.process_time over wall time). Frames go through ``DmxOutputs`` to a
``SacnOutput`` unicast to a UDP sink on loopback (a child process that only drains). Also the
render alone (merge + fades + packing, no sending) in ms per frame.

Reference, same run: a bare loop on the same deadlines sending the same kind of frames (64
pre-built universes, changed in place) through the same ``SacnOutput``, without the engine.
Targets (DESIGN.md): 44 Hz, p99 jitter <= 2 ms, <= 30 % of one core.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import numpy as np

from controller.lighting import LightingEngine, Patch
from drivers.dmx import DmxOutputs, SacnOutput
from drivers.model import PROFILE_DIR, DmxTransport, load_profile

UNIVERSES = 64
RATE_HZ = 44.0
SECONDS = 10.0

_DRAIN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    s.recv(2048)
"""


def full_patch() -> Patch:
    par = load_profile(PROFILE_DIR / "led_par_rgbw.toml")
    return Patch.build(
        [
            (f"par-{u}-{k}", par, DmxTransport(kind="dmx", universe=u, address=1 + 8 * k))
            for u in range(1, UNIVERSES + 1)
            for k in range(64)
        ]
    )


def start_fades(engine: LightingEngine, now: float) -> None:
    """Every attribute of every fixture fading, in two sources, for longer than the run."""
    everything = {
        fid: {"intensity": 100, "red": 0, "green": 50, "blue": 100, "white": 25, "strobe": 200,
              "colour_macro": 150, "dimmer_curve": 100}
        for fid in engine.patch.fixtures
    }  # fmt: skip
    intensities = {fid: {"intensity": 80} for fid in engine.patch.fixtures}
    engine.source("list-1", 100).fade(everything, 3 * SECONDS, curve="s", now=now)
    engine.source("list-2", 100).fade(intensities, 2 * SECONDS, curve="log", now=now)
    engine.set_fader("grand", 0.9)


def jitter(starts: list[float]) -> dict[str, float]:
    iv = np.diff(np.array(starts))
    jit = np.abs(iv - 1.0 / RATE_HZ) * 1000.0
    return {
        "rate": (len(starts) - 1) / (starts[-1] - starts[0]),
        "p50_ms": float(np.percentile(jit, 50)),
        "p99_ms": float(np.percentile(jit, 99)),
        "max_ms": float(jit.max()),
    }


async def run() -> None:
    drain = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DRAIN, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert drain.stdout is not None
        port = int(await drain.stdout.readline())
        patch = full_patch()
        assert patch.size == UNIVERSES * 512

        # The render alone.
        probe = LightingEngine(patch)
        start_fades(probe, 0.0)
        t = time.perf_counter()
        n = 100
        for k in range(n):
            probe.render(k / RATE_HZ)
        render_ms = (time.perf_counter() - t) / n * 1000

        async with SacnOutput(hosts=["127.0.0.1"], port=port) as out:
            router = DmxOutputs()
            for u in range(1, UNIVERSES + 1):
                router.route(u, out)

            # The engine at 44 Hz.
            engine = LightingEngine(patch, router, rate_hz=RATE_HZ)
            start_fades(engine, time.monotonic())
            task = asyncio.create_task(engine.run(), name="lighting")
            cpu0, wall0 = time.process_time(), time.monotonic()
            await asyncio.sleep(SECONDS)
            engine.stop()
            await task
            cpu_engine = (time.process_time() - cpu0) / (time.monotonic() - wall0)
            stats = engine.stats.summary(time.monotonic())
            n_frames = min(engine.stats.frames, len(engine.stats.starts))
            mine = jitter(sorted(engine.stats.starts[:n_frames].tolist()))
            changed = bool(engine.frame.any())

            # The reference: the same sends on the same deadlines, no engine.
            frames = np.random.default_rng(0).integers(0, 256, (UNIVERSES, 512), np.uint8)
            period = 1.0 / RATE_HZ
            starts: list[float] = []
            cpu0, wall0 = time.process_time(), time.monotonic()
            deadline = wall0
            while time.monotonic() - wall0 < SECONDS:
                starts.append(time.monotonic())
                frames += 1
                await router.send_frame({u + 1: frames[u] for u in range(UNIVERSES)})
                deadline += period
                delay = deadline - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            cpu_ref = (time.process_time() - cpu0) / (time.monotonic() - wall0)
            ref = jitter(starts)
            errors = out.stats.errors
    finally:
        drain.kill()
        await drain.wait()
    assert changed
    print(
        f"   engine      {mine['rate']:6.2f} Hz   jitter p50 {mine['p50_ms']:5.2f} "
        f"p99 {mine['p99_ms']:5.2f} max {mine['max_ms']:5.2f} ms   CPU {100 * cpu_engine:5.1f} % "
        f"of a core   late {stats['late_frames']} skipped {stats['skipped_frames']} "
        f"send errors {errors}"
    )
    print(
        f"   bare loop   {ref['rate']:6.2f} Hz   jitter p50 {ref['p50_ms']:5.2f} "
        f"p99 {ref['p99_ms']:5.2f} max {ref['max_ms']:5.2f} ms   CPU {100 * cpu_ref:5.1f} % "
        "of a core (same SacnOutput, same deadlines, frames pre-built)"
    )
    print(
        f"   render alone {render_ms:.2f} ms/frame ({UNIVERSES * 512} channels, 2 sources); "
        f"engine's own render CPU {stats['render_cpu_pct']} %"
    )
    print(
        f"   ratio engine/bare: CPU {cpu_engine / cpu_ref:.2f}, p99 jitter "
        f"{mine['p99_ms'] / max(ref['p99_ms'], 1e-6):.2f}   (targets: 44 Hz, p99 <= 2 ms, "
        "<= 30 % of a core)"
    )
