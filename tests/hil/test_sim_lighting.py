"""Hardware-in-loop: Flytower's own DMX output drives the simulated fixtures.

Flytower renders looks from the real profiles (drivers/dmx/fixture.py) and sends them with its
real outputs (drivers/dmx/output.py, sACN and Art-Net); the simulated fixtures, written from the
device pages, must show exactly those looks. A profile whose channel map disagrees with its
page fails here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from drivers.dmx.fixture import patch
from drivers.dmx.output import ArtNetNode, ArtNetOutput, SacnOutput
from drivers.model import PROFILE_DIR, DmxTransport, Profile, ValueType, load_profile
from simulators.core import DeviceSpec
from simulators.lighting import DmxFamily
from simulators.lighting.fixtures import Fixture
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.hil

MODELS = ("led_par_rgbw", "moving_head", "dimmer_rack")


def look(profile: Profile, shift: float) -> dict[str, Any]:
    """A value for every point, away from its default, different per ``shift`` (0..1)."""
    values: dict[str, Any] = {}
    for point in profile.points.values():
        if point.dtype is ValueType.BOOL:
            values[point.name] = shift > 0.5
        elif point.min is not None and point.max is not None:
            values[point.name] = point.min + (point.max - point.min) * (0.137 + 0.7 * shift)
        else:
            values[point.name] = int(17 + 200 * shift)
    return values


def close_enough(profile: Profile, name: str, truth: Any, value: Any) -> bool:
    point = profile.points[name]
    if isinstance(value, bool):
        return bool(truth) is value
    if point.min is None or point.max is None:
        return bool(truth == value)
    assert point.dmx is not None
    step = (point.max - point.min) / ((1 << point.dmx.bits) - 1)
    return abs(float(truth) - float(value)) <= step / 2 + 1e-3


@contextlib.asynccontextmanager
async def fixtures(
    outputs: list[dict[str, Any]], patches: list[tuple[str, str, int, int]]
) -> AsyncIterator[list[Fixture]]:
    family = DmxFamily({"dmx": {"outputs": outputs}})
    devices = []
    for device_id, model, universe, address in patches:
        transport = {"kind": "dmx", "universe": universe, "address": address}
        spec = DeviceSpec(device_id, model, transport, {"model": model}, f"hil: {device_id}")
        device = family.add(spec)
        assert isinstance(device, Fixture)
        devices.append(device)
    async with contextlib.AsyncExitStack() as stack:
        for host in family.hosts():
            await stack.enter_async_context(host)
        yield devices


def render_universe(
    profiles: dict[str, Profile], patches: list[tuple[str, str, int, int]], shift: float
) -> tuple[dict[int, np.ndarray[Any, Any]], dict[str, dict[str, Any]]]:
    frames: dict[int, np.ndarray[Any, Any]] = {}
    looks = {}
    for i, (device_id, model, universe, address) in enumerate(patches):
        frame = frames.setdefault(universe, np.zeros(512, np.uint8))
        values = look(profiles[model], (shift + 0.29 * i) % 1.0)
        patch(
            frame,
            profiles[model],
            DmxTransport(kind="dmx", universe=universe, address=address),
            values,
        )
        looks[device_id] = values
    return frames, looks


PATCHES = [
    ("par-1", "led_par_rgbw", 1, 1),
    ("head-1", "moving_head", 1, 9),
    ("rack-1", "dimmer_rack", 1, 25),
    ("par-2", "led_par_rgbw", 2, 505),
    ("head-2", "moving_head", 2, 1),
]


async def shows(
    devices: list[Fixture], profiles: dict[str, Profile], looks: dict[str, Any]
) -> None:
    async def matches() -> bool:
        return all(
            all(
                close_enough(profiles[d.model], name, d.truth()[name], value)
                for name, value in looks[d.id].items()
            )
            for d in devices
        )

    await wait_until(matches, 10, "every fixture to show the rendered look")


@pytest.fixture(scope="module")
def profiles() -> dict[str, Profile]:
    return {m: load_profile(PROFILE_DIR / f"{m}.toml") for m in MODELS}


async def test_sacn_output_looks_are_what_the_fixtures_show(profiles: dict[str, Profile]) -> None:
    port = free_port()
    outputs = [
        {"protocol": "sacn", "universes": [1, 2], "targets": ["127.0.0.1"], "udp_port": port}
    ]
    async with fixtures(outputs, PATCHES) as devices:
        for d in devices:  # the page's points are the profile's points, by name
            assert set(profiles[d.model].points) <= set(d.truth()), d.model
        async with SacnOutput(hosts=["127.0.0.1"], port=port, source_name="flytower hil") as out:
            for shift in (0.0, 0.5):
                frames, looks = render_universe(profiles, PATCHES, shift)
                await out.send_frame(frames)
                await shows(devices, profiles, looks)
            signal = devices[0].truth()["signal"]
            assert signal["sequence_errors"] == 0 and signal["lost"] == 0
            assert signal["sources"][0]["name"] == "flytower hil"

        async def terminated() -> bool:
            return not any(d.truth()["receiving"] for d in devices)

        await wait_until(terminated, 10, "the sources to end with the output")
        assert {d.truth()["state"] for d in devices} == {"hold"}


async def test_artnet_output_finds_the_node_by_artpoll(profiles: dict[str, Profile]) -> None:
    port = free_port()
    outputs = [
        {"protocol": "artnet", "universes": [1, 2], "targets": ["127.0.0.1"], "udp_port": port}
    ]
    async with fixtures(outputs, PATCHES) as devices:
        out = ArtNetOutput(
            poll_targets=["127.0.0.1"], poll_interval_s=0.2, port=port, bind=("127.0.0.1", 0)
        )
        async with out:
            frames, looks = render_universe(profiles, PATCHES, 0.25)

            async def discovered() -> bool:
                return out.discovered.get(f"127.0.0.1:{port}") == frozenset({0, 1})

            await wait_until(discovered, 10, "the simulated node in ArtPoll discovery")
            await out.send_frame({u - 1: f for u, f in frames.items()})
            await shows(devices, profiles, looks)

            for d in devices:
                if d.universe == 2:
                    d.inject("receiver_offline", {})

            async def only_universe_1() -> bool:
                return out.discovered.get(f"127.0.0.1:{port}") == frozenset({0})

            await wait_until(only_universe_1, 10, "universe 2 to leave the poll replies")


async def test_artnet_configured_node_keeps_frames_flowing(profiles: dict[str, Profile]) -> None:
    port = free_port()
    outputs = [{"protocol": "artnet", "universes": [1], "targets": ["127.0.0.1"], "udp_port": port}]
    patches = [p for p in PATCHES if p[2] == 1]
    async with fixtures(outputs, patches) as devices:
        node = ArtNetNode("127.0.0.1", port=port)
        async with ArtNetOutput(nodes=[node], port=port, bind=("127.0.0.1", 0)) as out:
            for shift in (0.1, 0.6, 0.9):
                frames, looks = render_universe(profiles, patches, shift)
                await out.send_frame({0: frames[1]})
                await shows(devices, profiles, looks)
            signal = devices[0].truth()["signal"]
            assert signal["packets"] >= 3 and signal["sequence_errors"] == 0
