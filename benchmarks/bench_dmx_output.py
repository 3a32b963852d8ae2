"""DMX output: 64 universes x 512 channels, all changing, at 44 Hz over sACN unicast.

Figure: achieved frame rate, p99 frame-interval jitter and process CPU share of one core
(time.process_time over wall time) of SacnOutput.send_frame driven on monotonic, drift-free
deadlines (frame k is due at start + k / 44 s; a late frame never shifts the ones after it),
for ~10 s, to a receiver socket in a child process that only drains. Reference, same run: the
same number of packets, pre-encoded, sent with raw socket.sendto on the same schedule. Targets
(DESIGN.md): 44 Hz, p99 jitter <= 2 ms, <= 30 % of one core.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import numpy as np

from drivers.dmx import sacn
from drivers.dmx.output import SacnOutput

UNIVERSES = 64
RATE_HZ = 44.0
SECONDS = 10.0
REFERENCE_SECONDS = 5.0

_DRAIN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    s.recv(2048)
"""


async def paced(send: Callable[[int], Awaitable[None]], seconds: float) -> dict[str, float]:
    """Call ``send(k)`` at start + k / RATE_HZ; return rate, p99 jitter (ms), CPU share."""
    period = 1.0 / RATE_HZ
    frames = int(seconds * RATE_HZ)
    starts: list[float] = []
    cpu0, wall0 = time.process_time(), time.monotonic()
    t0 = wall0 + 0.05
    for k in range(frames):
        delay = t0 + k * period - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        starts.append(time.monotonic())
        await send(k)
    wall = time.monotonic() - wall0
    cpu = time.process_time() - cpu0
    intervals = np.diff(np.array(starts))
    jitter_ms = 1000 * np.abs(intervals - period)
    return {
        "rate": (len(starts) - 1) / (starts[-1] - starts[0]),
        "p99_ms": float(np.percentile(jitter_ms, 99)),
        "cpu": cpu / wall,
    }


async def run() -> None:
    drain = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DRAIN, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert drain.stdout is not None
        port = int(await drain.stdout.readline())
        universes = np.random.default_rng(0).integers(0, 256, (UNIVERSES, 512), dtype=np.uint8)

        async with SacnOutput(hosts=["127.0.0.1"], port=port) as out:

            async def ours(k: int) -> None:
                universes[:] += 1  # every channel of every universe changes every frame
                await out.send_frame({u + 1: universes[u] for u in range(UNIVERSES)})

            mine = await paced(ours, SECONDS)
            errors = out.stats.errors

        cid = uuid.uuid4()
        packets = [
            sacn.SacnData(cid, "Flytower", u + 1, universes[u].tobytes(), 0).encode()
            for u in range(UNIVERSES)
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.setblocking(False)
            dest = ("127.0.0.1", port)

            async def reference(k: int) -> None:
                for packet in packets:
                    raw.sendto(packet, dest)

            ref = await paced(reference, REFERENCE_SECONDS)
    finally:
        drain.kill()
        await drain.wait()
    print(
        f"   SacnOutput        {mine['rate']:6.2f} Hz   p99 jitter {mine['p99_ms']:5.2f} ms   "
        f"CPU {100 * mine['cpu']:5.1f} % of a core   send errors {errors}"
    )
    print(
        f"   raw sendto (ref)  {ref['rate']:6.2f} Hz   p99 jitter {ref['p99_ms']:5.2f} ms   "
        f"CPU {100 * ref['cpu']:5.1f} % of a core"
    )
    print(
        f"   ratio ours/raw: CPU {mine['cpu'] / ref['cpu']:.2f}, "
        f"p99 jitter {mine['p99_ms'] / ref['p99_ms']:.2f}   (targets: 44 Hz, <= 2 ms, <= 30 %)"
    )
