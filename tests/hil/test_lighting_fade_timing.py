"""Hardware-in-loop: fade timing measured on the DMX the simulated fixtures receive.

The lighting engine (controller/lighting) renders a patch of the real profiles at 44 Hz and
sends it through the real outputs (sACN, Art-Net) to the simulated fixtures
(simulators.lighting), which are written from the device pages. A 2 s linear fade from 0 to
full must cross 50 % within one frame of 1 s and arrive within one frame of 2 s, as seen in
the fixture's received channels; the receiver's own frame statistics must show ~44 Hz.

The fixtures' truth is sampled as each packet arrives at the simulated node (same process,
same monotonic clock as the engine). The 50 % time is interpolated between the packets either
side of it, so it measures the fade, not where the frames happen to fall; the end is the
arrival of the first frame at full
(which a frame-quantised output delivers up to one frame after 2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from controller.lighting import LightingEngine, Patch
from drivers.dmx import ArtNetNode, ArtNetOutput, DmxOutputs, SacnOutput
from drivers.model import PROFILE_DIR, DmxTransport, load_profile
from simulators.core import DeviceSpec
from simulators.lighting import DmxFamily
from simulators.lighting.fixtures import Fixture
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.hil

LO = "127.0.0.1"
RATE_HZ = 44.0
FRAME_S = 1.0 / RATE_HZ
FADE_S = 2.0
LATENCY_S = 0.005  # engine frame -> simulated node, on a loaded 2-core machine
PATCHES = [("head-1", "moving_head", 1, 1), ("rack-1", "dimmer_rack", 1, 101)]


@contextlib.asynccontextmanager
async def simulated(
    outputs: list[dict[str, Any]],
) -> AsyncIterator[tuple[DmxFamily, dict[str, Fixture]]]:
    family = DmxFamily({"dmx": {"outputs": outputs}})
    devices: dict[str, Fixture] = {}
    for device_id, model, universe, address in PATCHES:
        transport = {"kind": "dmx", "universe": universe, "address": address}
        spec = DeviceSpec(device_id, model, transport, {"model": model}, f"hil: {device_id}")
        device = family.add(spec)
        assert isinstance(device, Fixture)
        devices[device_id] = device
    async with contextlib.AsyncExitStack() as stack:
        for host in family.hosts():
            await stack.enter_async_context(host)
        yield family, devices


def patch() -> Patch:
    def at(u: int, a: int) -> DmxTransport:
        return DmxTransport(kind="dmx", universe=u, address=a)

    return Patch.build(
        [(f, load_profile(PROFILE_DIR / f"{m}.toml"), at(u, a)) for f, m, u, a in PATCHES]
    )


def head_dimmer(truth: dict[str, Any]) -> int:
    ch = truth["channels"]  # dimmer: 16-bit at offsets 7 (coarse) and 8 (fine)
    return int(ch[6]) * 256 + int(ch[7])


def crossing(samples: list[tuple[float, float]], level: float) -> float:
    """When the received level crosses ``level``: interpolated between the packets on either
    side (arrival times), so the figure is the fade's timing, not the frame's phase."""
    for (t1, v1), (t2, v2) in itertools.pairwise(samples):
        if v1 < level <= v2:
            return t1 + (level - v1) / (v2 - v1) * (t2 - t1)
    raise AssertionError(f"the level never crossed {level}: {samples[-5:]}")


async def fade_and_measure(
    family: DmxFamily, outputs: DmxOutputs, devices: dict[str, Fixture]
) -> None:
    engine = LightingEngine(patch(), outputs, rate_hz=RATE_HZ)
    head, rack = devices["head-1"], devices["rack-1"]
    samples: dict[str, list[tuple[float, float]]] = {"head": [], "rack": []}
    recording = False

    # Sample the fixtures as each packet arrives: the arrival time is exact, no polling.
    for node in family.nodes:
        received = node.datagram_received

        def sample(data: bytes, addr: tuple[Any, int], received: Any = received) -> None:
            received(data, addr)
            if recording:
                now = time.monotonic()
                samples["head"].append((now, head_dimmer(head.truth()) / 65535))
                samples["rack"].append((now, int(rack.truth()["channels"][0]) / 255))

        node.datagram_received = sample  # type: ignore[method-assign]

    task = asyncio.create_task(engine.run(), name="lighting")
    try:

        async def receiving() -> bool:
            return bool(head.truth()["receiving"]) and head_dimmer(head.truth()) == 0

        await wait_until(receiving, 10, "the fixtures to receive the engine's frames")
        src = engine.source("list-1")
        recording = True
        src.fade({"head-1": {"dimmer": 100}, "rack-1": {"dimmer_1": 100}}, FADE_S)
        t0 = time.monotonic()  # the fade's start on the engine's clock (same process)
        await asyncio.sleep(FADE_S + 0.5)
        signal = head.truth()["signal"]
    finally:
        engine.stop()
        await task
    for name, series in samples.items():
        half = crossing(series, 0.5) - t0
        # The fade's line through every packet on the ramp: where it leaves 0 and reaches full.
        ramp = np.array([(t - t0, v) for t, v in series if 0.02 < v < 0.98])
        slope, start = np.polyfit(ramp[:, 1], ramp[:, 0], 1)
        end = start + slope
        first_full = next(t for t, v in series if v >= 1.0) - t0
        print(
            f"{name}: 50 % at {half:.4f} s; ramp from {start:.4f} s to {end:.4f} s; "
            f"first frame at full arrived at {first_full:.4f} s"
        )
        assert abs(half - FADE_S / 2) <= FRAME_S, (name, half)
        assert abs(start) <= FRAME_S and abs(end - FADE_S) <= FRAME_S, (name, start, end)
        # Frames are 22.7 ms apart: the first at full is the first rendered at or after 2 s
        # (8 bits round up to full 4 ms early), so it arrives within one frame of 2 s, plus
        # the few ms a loaded machine may add.
        assert FADE_S - FRAME_S <= first_full <= FADE_S + FRAME_S + LATENCY_S, (name, first_full)
        assert all(v == 1.0 for t, v in series if t - t0 >= first_full), "the fade landed"
    print(f"received: {signal['rate_hz']} Hz, jitter p99 {signal['jitter_p99_ms']} ms")
    assert signal["sequence_errors"] == 0 and signal["lost"] == 0
    assert signal["rate_hz"] == pytest.approx(RATE_HZ, abs=2), signal
    assert engine.status()["stats"]["frames"] >= RATE_HZ * FADE_S


async def test_fade_timing_over_sacn() -> None:
    port = free_port()
    outputs = [{"protocol": "sacn", "universes": [1], "targets": [LO], "udp_port": port}]
    async with (
        simulated(outputs) as (family, devices),
        SacnOutput(hosts=[LO], port=port, source_name="flytower hil") as out,
    ):
        router = DmxOutputs()
        router.route(1, out)
        await fade_and_measure(family, router, devices)


async def test_fade_timing_over_artnet() -> None:
    port = free_port()
    outputs = [{"protocol": "artnet", "universes": [1], "targets": [LO], "udp_port": port}]
    async with (
        simulated(outputs) as (family, devices),
        ArtNetOutput(nodes=[ArtNetNode(LO, port=port)], port=port, bind=(LO, 0)) as out,
    ):
        router = DmxOutputs()
        router.route(1, out, as_universe=0)  # Flytower universe 1 is Art-Net 0:0:0
        await fade_and_measure(family, router, devices)
