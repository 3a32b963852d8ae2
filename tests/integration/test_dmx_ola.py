"""Our DMX outputs and inputs against OLA's olad, an independent Art-Net / sACN implementation.

olad's patch (pre-seeded in ola-port.conf):
- E1.31 input port 0  -> OLA universe 1 (receives sACN universe 1)
- Art-Net input port 0 -> OLA universe 2 (receives Art-Net Port-Address 0:0:2)

Fixed ports: Art-Net 6454 and sACN 5568 are olad's, so these tests bind senders to ephemeral
ports and bind 6454 only where Art-Net forces it (discovery, see below). olad as a sender is
in test_dmx_ola_sender.py: it needs an olad without E1.31 input ports (see there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from drivers.dmx.output import ArtNetNode, ArtNetOutput, SacnOutput
from tests.conftest import wait_until
from tests.peers import ola

pytestmark = pytest.mark.integration

LO = "127.0.0.1"


@pytest.fixture(scope="module")
def olad() -> Iterator[ola.Olad]:
    with ola.running({"11-1-I-0": 1, "2-1-I-0": 2}) as server:
        yield server


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    async def check() -> bool:
        return predicate()

    await wait_until(check, timeout_s, what)


async def olad_shows(universe: int, want: bytes, timeout_s: float = 10.0) -> None:
    async def check() -> bool:
        got = await asyncio.to_thread(ola.fetch_dmx, universe)
        return got[: len(want)] == want

    await wait_until(check, timeout_s, f"olad universe {universe} to show what we sent")


def pattern(seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, 512, dtype=np.uint8).tobytes()


async def test_sacn_unicast_to_olad(olad: ola.Olad) -> None:
    data = pattern(1)
    async with SacnOutput(hosts=[LO], source_name="flytower-test") as out:
        await out.send_frame({1: data})
        await olad_shows(1, data)
        changed = bytes(reversed(data))
        await out.send_frame({1: np.frombuffer(changed, np.uint8)})
        await olad_shows(1, changed)


async def test_artnet_to_olad(olad: ola.Olad) -> None:
    data = pattern(2)
    # Port 0: olad holds 6454, and a second socket on 127.0.0.1:6454 would take its traffic.
    async with ArtNetOutput(bind=(LO, 0), nodes=[ArtNetNode(LO)]) as out:
        await out.send_frame({2: data})
        await olad_shows(2, data)


async def test_artpoll_discovers_olad(olad: ola.Olad) -> None:
    # olad answers ArtPoll by "broadcast" to 0.0.0.0:6454, which Linux delivers to the most
    # specific socket on 6454 of this host. So we bind 127.0.0.1:6454 (SO_REUSEADDR) and poll
    # olad at 127.0.0.2, which only olad's wildcard socket receives.
    async with ArtNetOutput(bind=(LO, 6454), poll_targets=["127.0.0.2"]) as out:
        await until(lambda: bool(out.discovered), "olad's ArtPollReply")
        (node, universes) = next(iter(out.discovered.items()))
        assert node == f"{LO}:6454"
        assert 2 in universes  # its Art-Net input port patched to 0:0:2
