"""The simulated DMX fixtures over real sockets, driven by independent senders.

Senders: raw UDP sockets sending packets built by hand from the specifications
(tests/unit/test_sim_lighting_wire.py), and OLA's olad sending sACN multicast. Every check
reads the fixtures' truth, or an ArtPollReply parsed by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from simulators.core import DeviceSpec, SimulationError
from simulators.lighting import DmxFamily
from simulators.lighting.fixtures import Fixture
from tests.conftest import free_port, wait_until
from tests.peers import ola
from tests.unit.test_sim_lighting_wire import artdmx, artpoll, parse_poll_reply, sacn_data

pytestmark = pytest.mark.integration


def fixture_spec(
    device_id: str, model: str, universe: int, address: int, **params: Any
) -> DeviceSpec:
    return DeviceSpec(
        device_id,
        model,
        {"kind": "dmx", "universe": universe, "address": address},
        {"model": model, **params},
        f"test venue: devices ({device_id}).simulate",
    )


@contextlib.asynccontextmanager
async def serving(
    outputs: list[dict[str, Any]], *specs: DeviceSpec
) -> AsyncIterator[tuple[DmxFamily, list[Fixture]]]:
    family = DmxFamily({"dmx": {"outputs": outputs}})
    fixtures = [family.add(s) for s in specs]
    async with contextlib.AsyncExitStack() as stack:
        for host in family.hosts():
            await stack.enter_async_context(host)
        yield family, fixtures  # type: ignore[misc]


@pytest.fixture
def sender() -> Iterator[Callable[[str], socket.socket]]:
    """UDP sockets bound to a given loopback address (Art-Net keys sources by sender IP)."""
    socks: list[socket.socket] = []

    def make(host: str = "127.0.0.1") -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, 0))
        s.settimeout(5)
        socks.append(s)
        return s

    yield make
    for s in socks:
        s.close()


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    async def check() -> bool:
        return predicate()

    await wait_until(check, timeout_s, what)


async def test_sacn_unicast_frames_reach_the_fixtures(sender: Callable[..., socket.socket]) -> None:
    port = free_port()
    outputs = [{"protocol": "sacn", "universes": [7], "targets": ["127.0.0.1"], "udp_port": port}]
    specs = [
        fixture_spec("par", "led_par_rgbw", 7, 1),
        fixture_spec("head", "moving_head", 7, 9),
        fixture_spec("rack", "dimmer_rack", 7, 25),
    ]
    async with serving(outputs, *specs) as (family, (par, head, rack)):
        tx = sender()
        frame = bytes([255, 255, 0, 0, 128, 0, 0, 0]) + bytes([0x80, 0, 0x40, 0, 0, 32, 0xFF, 0xFF])
        frame += bytes(8) + bytes([51] * 12)
        for seq in range(10):
            tx.sendto(sacn_data(7, frame, sequence=seq), ("127.0.0.1", port))
            await asyncio.sleep(0.02)
        await until(lambda: par.truth()["intensity"] == 100, "the par at full")
        t = par.truth()
        assert (t["red"], t["green"], t["blue"], t["white"]) == (100, 0, 0, pytest.approx(50.196))
        h = head.truth()
        assert h["pan"] == pytest.approx(270.004, abs=1e-3) and h["dimmer"] == 100
        assert h["tilt"] == pytest.approx(67.5, abs=0.01) and h["output"] == 100
        assert rack.truth()["dimmer_12"] == 20
        signal = t["signal"]
        assert signal["packets"] == 10 and signal["sequence_errors"] == 0
        assert signal["sources"][0]["name"] == "test desk" and signal["rate_hz"] > 0
        assert family.stats()["frames"] == 10

        # Hostile datagrams are counted and dropped; the receiver carries on.
        for junk in (b"", b"Art-Net\x00", sacn_data(7, frame)[:-3], bytes(range(200))):
            tx.sendto(junk, ("127.0.0.1", port))
        tx.sendto(sacn_data(7, frame, sequence=5), ("127.0.0.1", port))  # stale
        tx.sendto(sacn_data(7, frame, sequence=10, options=0x80), ("127.0.0.1", port))  # preview
        tx.sendto(sacn_data(8, frame, sequence=11), ("127.0.0.1", port))  # not our universe
        await until(lambda: family.stats()["malformed"] == 4, "four malformed datagrams counted")
        await until(lambda: par.truth()["signal"]["sequence_errors"] == 1, "the stale packet")
        await until(lambda: family.stats()["ignored"] == 2, "preview and foreign universe")

        tx.sendto(sacn_data(7, bytes(8), sequence=12, options=0x40), ("127.0.0.1", port))
        await until(lambda: not par.truth()["receiving"], "the stream terminated at once")
        assert par.truth()["state"] == "hold" and par.truth()["intensity"] == 100


async def test_sacn_priority_wins_over_a_default_source(
    sender: Callable[..., socket.socket],
) -> None:
    port = free_port()
    outputs = [{"protocol": "sacn", "universes": [1], "targets": ["127.0.0.1"], "udp_port": port}]
    async with serving(outputs, fixture_spec("rack", "dimmer_rack", 1, 1)) as (_, (rack,)):
        tx = sender()
        low = sacn_data(1, bytes([255, 0]), priority=100, name="desk")
        tx.sendto(low, ("127.0.0.1", port))
        await until(lambda: rack.truth()["dimmer_1"] == 100, "the default-priority desk")
        high = sacn_data(1, bytes([0, 255]), priority=150, name="backup", cid=uuid.UUID(int=2))
        tx.sendto(high, ("127.0.0.1", port))
        await until(lambda: rack.truth()["dimmer_2"] == 100, "the priority-150 source")
        assert rack.truth()["dimmer_1"] == 0
        assert len(rack.truth()["signal"]["sources"]) == 2


async def test_artnet_htp_of_two_desks_and_artpoll(sender: Callable[..., socket.socket]) -> None:
    port = free_port()
    outputs = [
        {"protocol": "artnet", "universes": [1, 2], "targets": ["127.0.0.1"], "udp_port": port}
    ]
    specs = [fixture_spec("a", "dimmer_rack", 1, 1), fixture_spec("b", "dimmer_rack", 2, 1)]
    async with serving(outputs, *specs) as (_, (a, b)):
        desk1, desk2 = sender("127.0.0.1"), sender("127.0.0.2")
        desk1.sendto(artdmx(0, bytes([255, 0, 10, 0]), 1), ("127.0.0.1", port))
        desk2.sendto(artdmx(0, bytes([0, 255, 5, 0]), 1), ("127.0.0.1", port))
        await until(lambda: a.truth()["dimmer_2"] == 100, "the second desk")
        assert a.truth()["dimmer_1"] == 100 and a.truth()["channels"][2] == 10  # HTP
        assert len(a.truth()["signal"]["sources"]) == 2

        poller = sender()
        poller.sendto(artpoll(), ("127.0.0.1", port))
        (reply,) = [parse_poll_reply(await asyncio.to_thread(poller.recv, 1024))]
        assert reply["ports"] == [0, 1] and reply["good_output"] == [True, False]
        assert (reply["ip"], reply["port"]) == ("127.0.0.1", port)

        poller.sendto(artpoll((1, 1)), ("127.0.0.1", port))
        assert parse_poll_reply(await asyncio.to_thread(poller.recv, 1024))["ports"] == [1]

        b.inject("receiver_offline", {})
        poller.sendto(artpoll(), ("127.0.0.1", port))
        assert parse_poll_reply(await asyncio.to_thread(poller.recv, 1024))["ports"] == [0]
        a.inject("receiver_offline", {})
        poller.settimeout(0.5)
        poller.sendto(artpoll(), ("127.0.0.1", port))
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(poller.recv, 1024)  # no receiving fixture: no reply at all
        desk1.sendto(artdmx(0, bytes([1, 1, 1, 1]), 2), ("127.0.0.1", port))
        await asyncio.sleep(0.1)
        assert a.truth()["channels"][:2] == [255, 255]  # the offline receiver ignored it


async def test_multicast_sacn_is_joined_per_universe(sender: Callable[..., socket.socket]) -> None:
    port = free_port()
    outputs = [{"protocol": "sacn", "universes": [300], "udp_port": port}]
    async with serving(outputs, fixture_spec("par", "led_par_rgbw", 300, 1)) as (_, (par,)):
        tx = sender("0.0.0.0")
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        group = "239.255.1.44"  # universe 300 = 0x012c
        tx.sendto(sacn_data(300, bytes([77])), (group, port))
        tx.sendto(sacn_data(301, bytes([1]), sequence=1), ("239.255.1.45", port))
        await until(lambda: par.truth()["channels"][0] == 77, "multicast universe 300")


async def test_a_taken_unicast_address_is_a_simulation_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        port = squatter.getsockname()[1]
        outputs = [
            {"protocol": "sacn", "universes": [1], "targets": ["127.0.0.1"], "udp_port": port}
        ]
        with pytest.raises(SimulationError, match=f"cannot listen on 127.0.0.1:{port}"):
            async with serving(outputs, fixture_spec("p", "led_par_rgbw", 1, 1)):
                pass


# --- OLA as the sender ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def olad() -> Iterator[ola.Olad]:
    # OLA universe 3 goes out as sACN universe 3, multicast from olad's E1.31 interface.
    with ola.running({"11-1-O-1": 3}) as server:
        yield server


async def test_olad_drives_the_fixtures(olad: ola.Olad) -> None:
    outputs = [{"protocol": "sacn", "universes": [3]}]  # multicast on 5568 (OLA's fixed port)
    specs = [fixture_spec("par", "led_par_rgbw", 3, 1), fixture_spec("rack", "dimmer_rack", 3, 9)]
    async with serving(outputs, *specs) as (_, (par, rack)):
        await asyncio.to_thread(ola.set_dmx, 3, [255, 0, 128, 255, 0, 0, 0, 0, 51, 102])
        await until(lambda: par.truth()["intensity"] == 100, "olad's frame", timeout_s=10)
        t = par.truth()
        assert (t["red"], t["green"], t["blue"]) == (0, pytest.approx(50.196), 100)
        assert (rack.truth()["dimmer_1"], rack.truth()["dimmer_2"]) == (20, 40)
        (source,) = t["signal"]["sources"]
        assert source["priority"] == 100 and source["sequence_errors"] == 0


def test_family_stats_shape() -> None:
    family = DmxFamily({"dmx": {"outputs": [{"protocol": "sacn", "universes": [1]}]}})
    family.add(fixture_spec("p", "led_par_rgbw", 1, 1))
    stats = family.stats()
    assert stats["fixtures"] == 1 and stats["universes"]["1"]["live"] is False
