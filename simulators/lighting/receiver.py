"""DMX-over-IP reception as a node does it: sources, sequence checks, merge, timing statistics.

``Universe`` is the state of one universe (no I/O, a clock passed in, so it is unit-testable):
its sources, each with its last slots, priority, sequence number and arrival times, and the
merge of docs/interfaces/dmx.md section 3 — a source is a CID (sACN) or a sender IP (Art-Net);
it ends on Stream_Terminated or 2.5 s after its last packet; the highest priority wins and
equal priorities merge HTP per channel; Art-Net sources have the fixed priority 100. As Art-Net
4 nodes do, at most two Art-Net sources merge (a third is refused and counted); sACN sources
are bounded too, so a flood of made-up CIDs costs a counter, not memory.

Sequence numbers (E1.31 section 6.7.2, used for Art-Net too): a packet 0..19 behind the last one
of its source is stale and dropped (``sequence_errors``); a jump forward counts the packets
``lost`` in between. Art-Net numbers 1..255 and skips 0 (0 means "not sequenced").

``NodeSocket`` is the asyncio datagram endpoint of one listening address: it decodes both
protocols (a port is a port), hands data to the universes it serves, answers ArtPoll, and counts
what it drops. Nothing a sender does raises out of it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from simulators.lighting import wire

log = logging.getLogger(__name__)

SOURCE_TIMEOUT_S = 2.5  # E1.31 network data loss; used for Art-Net too (dmx.md section 3)
ARTNET_PRIORITY = 100
MAX_ARTNET_SOURCES = 2
MAX_SACN_SOURCES = 16
STALE_WINDOW = 20
RING = 256  # arrivals kept per source for the timing statistics
WINDOW_S = 10.0  # and never older than this
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024

U8 = npt.NDArray[np.uint8]


@dataclass
class Timing:
    """Arrival times of the last ``RING`` packets of a source, for rate and jitter."""

    times: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(RING))
    count: int = 0

    def record(self, now: float) -> None:
        self.times[self.count % RING] = now
        self.count += 1

    def summary(self, now: float) -> dict[str, float | None]:
        """Rate and frame-interval percentiles over the window (ms); None without data.

        Jitter is the p99 of each interval's distance from the median interval: it needs no
        nominal rate, so it is the same figure for a 44 Hz desk and a 30 Hz one.
        """
        n = min(self.count, RING)
        start = self.count % RING if self.count > RING else 0
        t = np.roll(self.times[:n], -start) if n == RING else self.times[:n]
        t = t[t >= now - WINDOW_S]
        if len(t) < 3:
            return {"rate_hz": None, "interval_p50_ms": None, "interval_p99_ms": None,
                    "jitter_p99_ms": None}  # fmt: skip
        intervals = np.diff(t) * 1000.0
        p50, p99 = np.percentile(intervals, [50, 99])
        span = t[-1] - t[0]
        return {
            "rate_hz": round(float((len(t) - 1) / span), 2) if span > 0 else None,
            "interval_p50_ms": round(float(p50), 3),
            "interval_p99_ms": round(float(p99), 3),
            "jitter_p99_ms": round(float(np.percentile(np.abs(intervals - p50), 99)), 3),
        }


@dataclass
class Source:
    key: str  # "sacn:<cid>" or "artnet:<ip>"
    protocol: str
    name: str
    priority: int
    last_seen: float
    data: U8 = field(default_factory=lambda: np.zeros(wire.SLOTS, np.uint8))
    sequence: int | None = None
    packets: int = 0
    sequence_errors: int = 0
    lost: int = 0
    timing: Timing = field(default_factory=Timing)

    def in_sequence(self, seq: int) -> bool:
        """E1.31 6.7.2 ordering; Art-Net's cycle is 1..255. Counts what it finds."""
        last, self.sequence = self.sequence, seq
        if last is None or (self.protocol == "artnet" and (seq == 0 or last == 0)):
            return True
        modulus = 255 if self.protocol == "artnet" else 256
        ahead = (seq - last) % modulus
        if ahead == 0 or ahead > modulus - STALE_WINDOW:
            self.sequence = last  # a stale packet does not move the reference
            self.sequence_errors += 1
            return False
        self.lost += ahead - 1
        return True

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "source": self.key,
            "name": self.name,
            "priority": self.priority,
            "packets": self.packets,
            "sequence_errors": self.sequence_errors,
            "lost": self.lost,
            "age_s": round(now - self.last_seen, 3),
            **self.timing.summary(now),
        }


@dataclass
class Universe:
    """One universe's sources and merged slots."""

    number: int
    sources: dict[str, Source] = field(default_factory=dict)
    merged: U8 = field(default_factory=lambda: np.zeros(wire.SLOTS, np.uint8))
    live: bool = False
    lost_at: float | None = None  # when the last source went; None while live or never seen
    dirty: bool = False
    packets: int = 0
    sequence_errors: int = 0
    lost: int = 0
    refused_sources: int = 0
    ended_sources: int = 0
    ignored: int = 0  # preview data, non-zero START codes

    def accept(
        self,
        key: str,
        protocol: str,
        name: str,
        priority: int,
        sequence: int,
        slots: bytes,
        now: float,
        terminated: bool = False,
    ) -> bool:
        """Take one data packet; False if it was dropped (counted)."""
        source = self.sources.get(key)
        if source is None:
            if terminated:
                return False
            same = sum(1 for s in self.sources.values() if s.protocol == protocol)
            limit = MAX_ARTNET_SOURCES if protocol == "artnet" else MAX_SACN_SOURCES
            if same >= limit:
                self.refused_sources += 1
                return False
            source = self.sources[key] = Source(key, protocol, name, priority, now)
        lost_before = source.lost
        if not source.in_sequence(sequence):
            self.sequence_errors += 1
            return False
        self.lost += source.lost - lost_before
        if terminated:
            # Section 6.2.6: drop the source at once rather than after the 2.5 s timeout.
            self._end(key, now)
            return True
        n = len(slots)
        source.data[:n] = np.frombuffer(slots, np.uint8)
        source.data[n:] = 0
        source.priority, source.name, source.last_seen = priority, name, now
        source.packets += 1
        source.timing.record(now)
        self.packets += 1
        self.dirty = True
        return True

    def _end(self, key: str, when: float) -> None:
        del self.sources[key]
        self.ended_sources += 1
        self.dirty = True
        if not self.sources:
            self.lost_at = when

    def refresh(self, now: float) -> None:
        """Expire silent sources and recompute the merge if anything changed."""
        for key, source in list(self.sources.items()):
            if now - source.last_seen > SOURCE_TIMEOUT_S:
                self._end(key, source.last_seen + SOURCE_TIMEOUT_S)
        if not self.dirty:
            return
        self.dirty = False
        self.live = bool(self.sources)
        if not self.live:
            self.merged[:] = 0
            return
        self.lost_at = None
        top = max(s.priority for s in self.sources.values())
        winners = [s.data for s in self.sources.values() if s.priority == top]
        if len(winners) == 1:
            self.merged[:] = winners[0]
        else:
            np.maximum.reduce(winners, out=self.merged)

    def summary(self, now: float) -> dict[str, Any]:
        sources = [s.as_dict(now) for s in self.sources.values()]
        busiest = max(self.sources.values(), key=lambda s: s.packets, default=None)
        timing = busiest.timing.summary(now) if busiest is not None else Timing().summary(now)
        return {
            "universe": self.number,
            "live": self.live,
            "packets": self.packets,
            "sequence_errors": self.sequence_errors,
            "lost": self.lost,
            "refused_sources": self.refused_sources,
            **timing,
            "sources": sources,
        }


@dataclass
class NodeStats:
    datagrams: int = 0
    malformed: int = 0
    ignored: int = 0
    polls: int = 0
    poll_replies: int = 0
    last_error: str = ""


class NodeSocket(asyncio.DatagramProtocol):
    """One listening address of the simulated node: decodes, routes, answers ArtPoll.

    ``universes`` maps the venue universes received here to their state. ``art_ports`` gives,
    at poll time, the Port-Addresses to announce and those with data (the family decides: a
    port whose fixtures are all offline is not announced).
    """

    def __init__(
        self,
        bind: tuple[str, int],
        universes: dict[int, Universe],
        art_ports: Callable[[], tuple[Iterable[int], Iterable[int]]],
        group: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bind = bind
        self.group = group  # a multicast group joined on the default interface
        self.universes = universes
        self.art_ports = art_ports
        self.clock = clock
        self.stats = NodeStats()
        self.transport: asyncio.DatagramTransport | None = None

    def open_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # Art-Net fixes 6454 for everyone on a host; a DMX node shares its port as OLA does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Room for ~1 s of 64 universes at 44 Hz: the default ~200 KB drops frames after a
            # scheduling gap of ~65 ms. The kernel caps the request at net.core.rmem_max.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            sock.bind(self.bind)
            if self.group is not None:
                mreq = socket.inet_aton(self.group) + socket.inet_aton("0.0.0.0")
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        self.stats.last_error = f"socket: {exc}"

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.stats.datagrams += 1
        try:
            packet = wire.decode(data)
        except wire.MalformedPacket as exc:
            self.stats.malformed += 1
            self.stats.last_error = f"{addr[0]}:{addr[1]}: {exc}"
            return
        now = self.clock()
        if isinstance(packet, wire.SacnData):
            universe = self.universes.get(packet.universe)
            if universe is None or packet.preview or packet.start_code != 0:
                self._ignore(universe)
                return
            universe.accept(
                f"sacn:{packet.cid}",
                "sacn",
                packet.source_name,
                packet.priority,
                packet.sequence,
                packet.data,
                now,
                packet.terminated,
            )
        elif isinstance(packet, wire.ArtDmx):
            universe = self.universes.get(packet.universe)
            if universe is None:
                self._ignore(None)
                return
            universe.accept(
                f"artnet:{addr[0]}",
                "artnet",
                f"Art-Net {addr[0]}",
                ARTNET_PRIORITY,
                packet.sequence,
                packet.data,
                now,
            )
        elif isinstance(packet, wire.ArtPoll):
            self.stats.polls += 1
            self._answer_poll(packet, addr)
        else:
            self.stats.ignored += 1

    def _ignore(self, universe: Universe | None) -> None:
        self.stats.ignored += 1
        if universe is not None:
            universe.ignored += 1

    def _answer_poll(self, poll: wire.ArtPoll, addr: tuple[str | Any, int]) -> None:
        if self.transport is None:
            return
        announced, receiving = self.art_ports()
        host, port = self.transport.get_extra_info("sockname")[:2]
        node = wire.NodeIdentity(
            _reply_ip(host, addr[0]), port, long_name=f"Flytower simulated DMX node :{port}"
        )
        for reply in wire.poll_replies(node, announced, receiving, poll.target):
            # Replies go to the poll's source address and port (docs/interfaces/dmx.md 3).
            self.transport.sendto(reply, (addr[0], addr[1]))
            self.stats.poll_replies += 1


def _reply_ip(bound: str, peer: str) -> str:
    """The address the poller can reach us at: the bound one, or the route's source address."""
    if bound not in ("0.0.0.0", ""):
        return bound
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((peer, wire.ARTNET_PORT))
            return str(probe.getsockname()[0])
        except OSError:
            return "0.0.0.0"
