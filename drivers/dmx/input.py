"""DMX inputs: Art-Net and sACN receivers that merge every source of a universe.

Each receiver is an async context manager owning one UDP socket. Every datagram is decoded;
a malformed one is counted (``stats.malformed``, with the last reason) and dropped, a valid
packet of a kind we do not use is counted as ignored, and nothing a sender does can raise out
of the receive callback. Accepted frames update a ``Merger`` per universe (drivers/dmx/merge.py:
priority, then HTP; 2.5 s source timeout; sACN stream-terminated ends a source at once).

- ``SacnInput`` joins the multicast group of each universe it is asked for (239.255.hi.lo on
  ``interface``), drops preview data and packets whose sequence number is 1..20 behind the
  last one from that source (E1.31 section 6.7.2), and ignores non-zero START codes.
- ``ArtNetInput`` accepts ArtDmx for its Port-Addresses (all when none are given), treats each
  sender IP as a source of ``ARTNET_PRIORITY``, and answers ArtPoll with ArtPollReply(s) that
  list its Port-Addresses as output ports (one reply per four ports in one Net/Sub-Net,
  numbered by BindIndex). Replies go to the poll's source address and port: a standard
  controller polls from 6454, so that is the spec's unicast reply, and a controller on an
  ephemeral port still gets its answer. ArtTimeCode packets go to ``on_timecode`` (with their
  monotonic arrival time and sender) when one is given, and are ignored otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from drivers.base import DatagramEndpoint, HealthSink, HealthTracker, local_address
from drivers.dmx import artnet, sacn
from drivers.dmx.errors import DmxProtocolError, UnsupportedPacket
from drivers.dmx.merge import ARTNET_PRIORITY, Frame, Merger, Source
from drivers.model import Health, HealthState

log = logging.getLogger(__name__)

OUT_OF_ORDER_WINDOW = 20  # E1.31 6.7.2: a sequence 1..20 behind the last one is stale
FrameSink = Callable[[int, Frame], None]
# (timecode, monotonic arrival time, sender "host:port")
TimecodeSink = Callable[[artnet.ArtTimeCode, float, str], None]


@dataclass(slots=True)
class InputStats:
    received: int = 0
    accepted: int = 0
    malformed: int = 0
    ignored: int = 0
    out_of_order: int = 0
    last_error: str = ""
    timecodes: int = 0  # ArtTimeCode packets handed to on_timecode


class _DatagramInput:
    def __init__(
        self,
        name: str,
        bind: tuple[str, int],
        timeout_s: float,
        on_frame: FrameSink | None,
        on_health: HealthSink | None,
    ) -> None:
        self.name = name
        self.bind = bind
        self.timeout_s = timeout_s
        self.stats = InputStats()
        self.tracker = HealthTracker(name, log, on_health)
        self._on_frame = on_frame
        self._mergers: dict[int, Merger] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None

    @property
    def health(self) -> Health:
        return self.tracker.health

    @property
    def local_address(self) -> tuple[str, int]:
        return local_address(self._transport, self.name)

    def universes(self) -> list[int]:
        return sorted(self._mergers)

    def merged(self, universe: int, now: float | None = None) -> Frame | None:
        """The merged frame of ``universe``, or None when no source is live."""
        merger = self._mergers.get(universe)
        return None if merger is None else merger.merged(now)

    def sources(self, universe: int, now: float | None = None) -> list[Source]:
        merger = self._mergers.get(universe)
        return [] if merger is None else merger.sources(now)

    async def __aenter__(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # Several receivers (and other programs) may share the protocol's port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(self.bind)
            sock.setblocking(False)
            self._sock = sock
            self._opened(sock)
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: DatagramEndpoint(self._datagram, self._socket_error), sock=sock
            )
        except BaseException:
            sock.close()
            self._sock = None
            raise
        self._transport = transport
        self.tracker.set(HealthState.ONLINE)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._sock = None
        self.tracker.set(HealthState.OFFLINE, "closed")

    def _opened(self, sock: socket.socket) -> None:
        pass

    def _socket_error(self, exc: Exception) -> None:
        self.tracker.failed(f"socket error: {exc}")

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self.stats.received += 1
        try:
            self._handle(data, addr)
        except UnsupportedPacket:
            self.stats.ignored += 1
        except DmxProtocolError as exc:
            self.stats.malformed += 1
            self.stats.last_error = f"{addr[0]}:{addr[1]}: {exc}"
            log.debug("%s: dropped %s", self.name, self.stats.last_error)

    def _handle(self, data: bytes, addr: tuple[str, int]) -> None:
        raise NotImplementedError

    def _update(
        self, universe: int, source: str, data: bytes, priority: int, name: str = ""
    ) -> None:
        merger = self._mergers.get(universe)
        if merger is None:
            merger = self._mergers[universe] = Merger(universe, self.timeout_s)
        merger.update(source, data, priority, name=name)
        self.stats.accepted += 1
        if self._on_frame is not None:
            merged = merger.merged()
            if merged is not None:
                self._on_frame(universe, merged)


class SacnInput(_DatagramInput):
    """An E1.31 receiver for the universes it joins (unicast to it is accepted too)."""

    def __init__(
        self,
        *,
        universes: Iterable[int] = (),
        name: str = "sacn-in",
        bind: tuple[str, int] = ("0.0.0.0", sacn.SACN_PORT),
        interface: str = "0.0.0.0",
        timeout_s: float = sacn.NETWORK_DATA_LOSS_TIMEOUT_S,
        on_frame: FrameSink | None = None,
        on_health: HealthSink | None = None,
    ) -> None:
        super().__init__(name, bind, timeout_s, on_frame, on_health)
        self.interface = interface
        self._wanted = set(universes)
        for u in self._wanted:
            sacn.multicast_group(u)  # validates the universe number
        self._last_sequence: dict[tuple[str, int], int] = {}

    def _opened(self, sock: socket.socket) -> None:
        for universe in self._wanted:
            self._join(sock, universe)

    def _join(self, sock: socket.socket, universe: int) -> None:
        membership = socket.inet_aton(sacn.multicast_group(universe)) + socket.inet_aton(
            self.interface
        )
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)

    def join(self, universe: int) -> None:
        """Also receive ``universe`` (joins its multicast group now if open)."""
        if universe in self._wanted:
            return
        if self._sock is not None:
            self._join(self._sock, universe)
        self._wanted.add(universe)

    def _handle(self, data: bytes, addr: tuple[str, int]) -> None:
        packet = sacn.decode(data)
        if not isinstance(packet, sacn.SacnData):
            raise UnsupportedPacket("sync and discovery packets are not used by the merger")
        if packet.universe not in self._wanted or packet.preview or packet.start_code != 0:
            raise UnsupportedPacket("universe not joined, preview data or non-zero START code")
        source = str(packet.cid)
        key = (source, packet.universe)
        last = self._last_sequence.get(key)
        if last is not None and not packet.stream_terminated:
            behind = (last - packet.sequence) & 0xFF
            if behind < OUT_OF_ORDER_WINDOW:  # 0 (a repeat) up to 19 behind: stale
                self.stats.out_of_order += 1
                return
        self._last_sequence[key] = packet.sequence
        if packet.stream_terminated:
            self._last_sequence.pop(key, None)
            merger = self._mergers.get(packet.universe)
            if merger is not None:
                merger.terminate(source)
            self.stats.accepted += 1
            return
        self._update(packet.universe, source, packet.data, packet.priority, packet.source_name)


class ArtNetInput(_DatagramInput):
    """An Art-Net 4 node that receives ArtDmx and answers ArtPoll."""

    def __init__(
        self,
        *,
        port_addresses: Iterable[int] = (),
        name: str = "artnet-in",
        short_name: str = "Flytower",
        long_name: str = "Flytower DMX input",
        bind: tuple[str, int] = ("0.0.0.0", artnet.ARTNET_PORT),
        timeout_s: float = sacn.NETWORK_DATA_LOSS_TIMEOUT_S,
        on_frame: FrameSink | None = None,
        on_health: HealthSink | None = None,
        on_timecode: TimecodeSink | None = None,
    ) -> None:
        super().__init__(name, bind, timeout_s, on_frame, on_health)
        self.on_timecode = on_timecode
        self.port_addresses = frozenset(port_addresses)
        for pa in self.port_addresses:
            artnet.split_port_address(pa)
        self.short_name = short_name
        self.long_name = long_name
        self.polls_answered = 0

    def replies(self) -> list[artnet.ArtPollReply]:
        """The ArtPollReply packets describing this node (one per four ports of a Sub-Net)."""
        host, port = self.local_address
        ip = host
        groups: dict[int, list[int]] = {}
        for pa in sorted(self.port_addresses):
            groups.setdefault(pa >> 4, []).append(pa & 0xF)
        chunks = [
            (base, unis[i : i + 4]) for base, unis in groups.items() for i in range(0, len(unis), 4)
        ] or [(0, [])]
        out = []
        for index, (base, unis) in enumerate(chunks, start=1):
            n = len(unis)
            out.append(
                artnet.ArtPollReply(
                    ip=ip,
                    port=port,
                    short_name=self.short_name,
                    long_name=self.long_name,
                    net_switch=base >> 4,
                    sub_switch=base & 0xF,
                    num_ports=n,
                    port_types=_four([artnet.PORT_OUTPUT] * n),
                    good_output_a=_four([0x80] * n),
                    sw_out=_four(unis),
                    bind_ip=ip,
                    bind_index=index,
                    node_report=f"#0001 [{self.polls_answered:04d}] Flytower ok",
                )
            )
        return out

    def _handle(self, data: bytes, addr: tuple[str, int]) -> None:
        if artnet.opcode(data) == artnet.OP_TIMECODE:
            self._timecode(artnet.decode_timecode(data), addr)
            return
        packet = artnet.decode(data)
        if isinstance(packet, artnet.ArtPoll):
            self.polls_answered += 1
            assert self._transport is not None
            for reply in self.replies():
                self._transport.sendto(reply.encode(), addr)
            self.stats.accepted += 1
        elif isinstance(packet, artnet.ArtDmx):
            if self.port_addresses and packet.port_address not in self.port_addresses:
                raise UnsupportedPacket(f"Port-Address {packet.port_address} is not ours")
            # Art-Net 4 merges by source IP address.
            self._update(packet.port_address, f"artnet:{addr[0]}", packet.data, ARTNET_PRIORITY)
        else:
            raise UnsupportedPacket(f"{type(packet).__name__} is not used by an input")

    def _timecode(self, packet: artnet.ArtTimeCode, addr: tuple[str, int]) -> None:
        if self.on_timecode is None:
            raise UnsupportedPacket("ArtTimeCode: no timecode consumer")
        self.stats.accepted += 1
        self.stats.timecodes += 1
        self.on_timecode(packet, time.monotonic(), f"{addr[0]}:{addr[1]}")


def _four(values: list[int]) -> tuple[int, int, int, int]:
    a, b, c, d = [*values, 0, 0, 0, 0][:4]
    return a, b, c, d


__all__ = ["ArtNetInput", "InputStats", "SacnInput", "TimecodeSink"]
