"""DMX outputs and inputs against each other over real loopback sockets and a pty pair."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable

import numpy as np
import pytest

from drivers.dmx import artnet, enttec, sacn
from drivers.dmx.input import ArtNetInput, SacnInput
from drivers.dmx.output import ArtNetNode, ArtNetOutput, DmxOutputs, EnttecProOutput, SacnOutput
from drivers.model import HealthState
from tests.conftest import free_port, wait_until

LO = "127.0.0.1"


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    async def check() -> bool:
        return predicate()

    await wait_until(check, timeout_s, what)


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, 512, dtype=np.uint8)


def same(got: np.ndarray | None, want: np.ndarray | bytes) -> bool:
    want_arr = np.frombuffer(want, np.uint8) if isinstance(want, bytes) else want
    return got is not None and np.array_equal(got[: want_arr.size], want_arr)


class Sniffer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.packets.append(data)


async def test_sacn_unicast_frames_sequence_and_termination() -> None:
    port = free_port()
    async with SacnInput(universes=[1, 2], bind=(LO, port)) as rx:
        async with SacnOutput(hosts=[LO], port=port, source_name="desk", priority=120) as tx:
            a, b = frame(1), bytes(range(100))
            await tx.send_frame({1: a, 2: b})
            await until(lambda: same(rx.merged(1), a) and same(rx.merged(2), b), "frames")
            assert [(s.name, s.priority) for s in rx.sources(1)] == [("desk", 120)]
            assert tx.health.state is HealthState.ONLINE and tx.stats.requests >= 2
        # Closing sends stream-terminated packets: the source ends at once, no 2.5 s wait.
        await until(lambda: rx.merged(1) is None and rx.merged(2) is None, "termination")


async def test_sacn_multicast_on_loopback() -> None:
    port = free_port()
    async with (
        SacnInput(universes=[7], bind=("0.0.0.0", port), interface=LO) as rx,
        SacnOutput(port=port, multicast_interface=LO) as tx,
    ):
        data = frame(7)
        await tx.send_frame({7: data})
        await until(lambda: same(rx.merged(7), data), "multicast frame")


async def test_sacn_keepalive_and_discovery() -> None:
    loop = asyncio.get_running_loop()
    transport, sniffer = await loop.create_datagram_endpoint(Sniffer, local_addr=(LO, 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        async with SacnOutput(hosts=[LO], port=port, keepalive_s=0.05) as tx:
            await tx.send_frame({3: b"\x01\x02", 4: b"\x03"})

            def decoded() -> list[sacn.SacnPacket]:
                return [sacn.decode(p) for p in sniffer.packets]

            def data_for(u: int) -> list[sacn.SacnData]:
                return [p for p in decoded() if isinstance(p, sacn.SacnData) and p.universe == u]

            await until(lambda: len(data_for(3)) >= 4, "keep-alive repeats")
            await until(
                lambda: any(isinstance(p, sacn.SacnDiscovery) for p in decoded()), "discovery"
            )
        await until(lambda: sum(p.stream_terminated for p in data_for(4)) == 3, "termination")
        seqs = [p.sequence for p in data_for(3)]
        assert seqs == list(range(len(seqs)))  # every packet, keep-alives too, counts up
        assert all(p.data == b"\x01\x02" for p in data_for(3))
        pages = [p for p in decoded() if isinstance(p, sacn.SacnDiscovery)]
        assert pages[0].universes == (3, 4) and pages[0].source_name == "Flytower"
    finally:
        transport.close()


async def test_sacn_input_merges_priority_then_htp_and_drops_stale() -> None:
    port = free_port()
    async with SacnInput(universes=[1], bind=(LO, port)) as rx:
        async with (
            SacnOutput(hosts=[LO], port=port, source_name="a") as a,
            SacnOutput(hosts=[LO], port=port, source_name="b") as b,
        ):
            await a.send_frame({1: bytes([100, 0, 30])})
            await b.send_frame({1: bytes([10, 50])})
            await until(lambda: len(rx.sources(1)) == 2, "two sources")
            await until(lambda: same(rx.merged(1), bytes([100, 50, 30])), "HTP merge")
            async with SacnOutput(hosts=[LO], port=port, priority=150, source_name="c") as c:
                await c.send_frame({1: bytes([1, 2, 3])})
                await until(lambda: same(rx.merged(1), bytes([1, 2, 3])), "priority wins")
            await until(lambda: same(rx.merged(1), bytes([100, 50, 30])), "back to HTP")
        # A replayed (older) packet from a known source is dropped, not merged.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            cid = uuid.UUID(int=9)
            for seq, value in ((10, 5), (9, 99), (10, 98)):
                pkt = sacn.SacnData(cid, "r", 1, bytes([value]), sequence=seq).encode()
                raw.sendto(pkt, (LO, port))
            await until(lambda: rx.stats.out_of_order == 2, "stale packets counted")
            assert same(rx.merged(1), bytes([5]))


async def test_inputs_count_malformed_and_keep_running() -> None:
    port = free_port()
    async with SacnInput(universes=[1], bind=(LO, port)) as rx:
        good = sacn.SacnData(uuid.UUID(int=3), "x", 1, b"\x07").encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            for bad in (b"", b"garbage", good[:-3], good[:108] + b"\xff" + good[109:]):
                raw.sendto(bad, (LO, port))
            raw.sendto(artnet.ArtPoll().encode(), (LO, port))
            raw.sendto(good, (LO, port))
            await until(lambda: same(rx.merged(1), b"\x07"), "good packet after bad ones")
        assert rx.stats.malformed == 5 and "truncated: 22 bytes" in rx.stats.last_error
    aport = free_port()
    async with ArtNetInput(bind=(LO, aport)) as arx:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.sendto(b"Art-Net\x00\x00\x50\x00\x0e", (LO, aport))
            raw.sendto(artnet.ArtSync().encode(), (LO, aport))
            raw.sendto(artnet.ArtDmx(3, b"\x01\x02").encode(), (LO, aport))
            await until(lambda: same(arx.merged(3), b"\x01\x02"), "ArtDmx after bad")
        assert arx.stats.malformed == 1 and arx.stats.ignored == 1


async def test_artnet_discovery_unicasts_only_subscribed_universes() -> None:
    async with ArtNetInput(port_addresses=[5, 0x123], bind=(LO, 0)) as rx:
        rx_port = rx.local_address[1]
        async with ArtNetOutput(bind=(LO, 0), poll_targets=[LO], port=rx_port, sync=True) as tx:
            await until(lambda: bool(tx.discovered), "ArtPollReply")
            assert tx.discovered == {f"{LO}:{rx_port}": frozenset({5, 0x123})}
            data = frame(5)
            await tx.send_frame({5: data, 6: b"\x09\x09", 0x123: b"\x01\x02\x03"})
            await until(lambda: same(rx.merged(5), data), "subscribed universe")
            await until(lambda: same(rx.merged(0x123), b"\x01\x02\x03\x00"), "odd frame padded")
            assert rx.merged(6) is None  # not subscribed: never sent
            assert [s.id for s in rx.sources(5)] == [f"artnet:{LO}"]
        assert rx.polls_answered >= 1


async def test_artnet_configured_node_gets_every_universe() -> None:
    async with ArtNetInput(bind=(LO, 0)) as rx:
        node = ArtNetNode(LO, rx.local_address[1])
        async with ArtNetOutput(bind=(LO, 0), nodes=[node]) as tx:
            await tx.send_frame({0: b"\x05\x06", 300: b"\x07\x08"})
            await until(lambda: rx.universes() == [0, 300], "both universes")


async def test_router_sends_each_universe_to_its_output() -> None:
    sport = free_port()
    async with (
        SacnInput(universes=[11], bind=(LO, sport)) as srx,
        ArtNetInput(bind=(LO, 0)) as arx,
        SacnOutput(hosts=[LO], port=sport) as s_out,
        ArtNetOutput(bind=(LO, 0), nodes=[ArtNetNode(LO, arx.local_address[1])]) as a_out,
    ):
        router = DmxOutputs()
        router.route(1, s_out, as_universe=11)
        router.route(2, a_out, as_universe=0)
        await router.send_frame({1: b"\x01\x01", 2: b"\x02\x02", 3: b"\x03"})
        await until(lambda: same(srx.merged(11), b"\x01\x01"), "sACN route")
        await until(lambda: same(arx.merged(0), b"\x02\x02"), "Art-Net route")
        assert router.unrouted == 1 and len(router.outputs) == 2


async def test_send_frame_refuses_bad_frames() -> None:
    async with SacnOutput(hosts=[LO], port=free_port()) as tx:
        with pytest.raises(ValueError, match="512"):
            await tx.send_frame({1: bytes(513)})
        with pytest.raises(ValueError, match="uint8"):
            await tx.send_frame({1: np.zeros(3, dtype=np.float32)})
        with pytest.raises(ValueError, match="universe"):
            await tx.send_frame({0: b"\x01"})


async def test_enttec_pro_over_a_pty() -> None:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        async with EnttecProOutput(path) as out:
            await out.send_frame({1: b"\x01\x02\x03"})
            data = frame(3)
            await out.send_frame({1: data})
            decoder = enttec.StreamDecoder()
            got: list[enttec.EnttecMessage] = []
            loop = asyncio.get_running_loop()
            while len(got) < 2:
                chunk = await loop.run_in_executor(None, os.read, master, 4096)
                got += decoder.feed(chunk)
            first, second = (enttec.SendDmx.from_message(m) for m in got)
            assert first.data == b"\x01\x02\x03" + bytes(21)  # padded to the widget's 24
            assert second.data == data.tobytes() and decoder.dropped == 0
            assert out.health.state is HealthState.ONLINE
            with pytest.raises(ValueError, match="one universe"):
                await out.send_frame({1: b"", 2: b""})
    finally:
        os.close(master)
        os.close(slave)


async def test_enttec_missing_device_is_offline_not_an_exception() -> None:
    async with EnttecProOutput("/dev/flytower-no-such-widget") as out:
        assert out.health.state is HealthState.OFFLINE
        await out.send_frame({1: b"\x01"})
        assert out.stats.errors >= 1
