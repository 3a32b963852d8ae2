"""DMX outputs: Art-Net 4, sACN (E1.31) and the ENTTEC DMX USB Pro, behind one interface.

Every output is an async context manager that owns its socket (or serial fd) and takes whole
frames: ``await out.send_frame({universe: data})``, data being bytes or a uint8 array of up to
512 slots. The fixed-rate lighting engine (controller/) decides *when* frames go out; an output
only puts them on the wire, plus what its protocol needs between frames. Art-Net and sACN
outputs, and the ``DmxOutputs`` router, also take a frame synchronously (``send_frame_now``:
every packet is with the kernel when it returns), which the engine's early frames use so that a
GO's change is on the wire without waiting for a turn of the loop.

- keep-alive: a universe that has not been sent for ``keepalive_s`` (1 s) is re-sent, so a
  receiver never reaches E1.31's 2.5 s data-loss timeout while a look holds still;
- sACN: per-universe sequence numbers, priority, universe discovery every 10 s (E1.31 section
  8), and three stream-terminated packets per universe on close (section 6.2.6);
- Art-Net: unicast to configured nodes and to nodes found by ArtPoll (each gets only the
  universes its ArtPollReply says it outputs), broadcast only when configured, an optional
  ArtSync after each frame;
- ENTTEC: the widget repeats the last frame by itself, so it needs no keep-alive; a lost
  device is reopened with capped backoff on the next frame.

Senders bind an ephemeral port by default for sACN (a sender bound to 5568 would take unicast
sACN away from a receiver on the same host). Art-Net fixes 6454 as source and destination
port, so ``ArtNetOutput`` binds it with SO_REUSEADDR unless told otherwise.

Send errors never raise out of ``send_frame``: they are counted and turned into health through
``HealthTracker``, so a missing network never stops the lighting engine.

``DmxOutputs`` routes Flytower universe numbers to outputs (and to the universe number each
output uses on its wire), so ``edge/`` can wire a venue's [dmx] section to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import tty
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

import numpy as np
import numpy.typing as npt

from drivers.base import (
    Backoff,
    DatagramEndpoint,
    HealthSink,
    HealthTracker,
    StopFlag,
    local_address,
)
from drivers.dmx import artnet, enttec, sacn
from drivers.dmx.errors import DmxProtocolError, UnsupportedPacket
from drivers.model import DriverStats, Health, HealthState

log = logging.getLogger(__name__)

FrameData = bytes | npt.NDArray[np.uint8]
KEEPALIVE_S = 1.0
TICK_S = 0.1  # how often keep-alive, discovery and polling deadlines are checked
TERMINATE_REPEATS = 3  # E1.31 section 6.2.6: three packets with Stream_Terminated set


def slots(data: FrameData) -> bytes:
    """The slots of one universe as bytes (at most 512)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise ValueError(f"a DMX frame is a 1-D uint8 array, got {data.dtype} {data.shape}")
        data = data.tobytes()
    if len(data) > 512:
        raise ValueError(f"a DMX universe has at most 512 slots, got {len(data)}")
    return bytes(data)


class DmxOutput(Protocol):
    """What the router and the lighting engine need from any output."""

    name: str

    @property
    def stats(self) -> DriverStats: ...

    @property
    def health(self) -> Health: ...

    async def send_frame(self, frame: Mapping[int, FrameData]) -> None: ...


class _DatagramOutput:
    """Socket ownership, keep-alive and the periodic tick shared by Art-Net and sACN."""

    def __init__(
        self,
        name: str,
        bind: tuple[str, int],
        keepalive_s: float,
        on_health: HealthSink | None,
    ) -> None:
        self.name = name
        self.bind = bind
        self.keepalive_s = keepalive_s
        self.tracker = HealthTracker(name, log, on_health)
        self._transport: asyncio.DatagramTransport | None = None
        self._last: dict[int, tuple[bytes, float]] = {}
        self._stop = StopFlag()
        self._task: asyncio.Task[None] | None = None
        # A standby controller's Art-Net output sends nothing until it takes over (Art-Net has
        # no priority to let a receiver choose between two consoles).
        self.muted = False

    def _socket_error(self, exc: Exception) -> None:
        self.tracker.failed(f"send failed: {exc}")

    @property
    def stats(self) -> DriverStats:
        return self.tracker.stats

    @property
    def health(self) -> Health:
        return self.tracker.health

    @property
    def local_address(self) -> tuple[str, int]:
        return local_address(self._transport, self.name)

    def _configure(self, sock: socket.socket) -> None:
        """Socket options before bind (subclasses)."""

    async def __aenter__(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._configure(sock)
            sock.bind(self.bind)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: DatagramEndpoint(self._received, self._socket_error), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        self._transport = transport
        self.tracker.set(HealthState.ONLINE)
        self._opened()
        self._task = asyncio.create_task(self._tick_loop(), name=f"{self.name}:tick")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        try:
            self._closing()
        finally:
            if self._transport is not None:
                self._transport.close()
                self._transport = None
            self.tracker.set(HealthState.OFFLINE, "closed")

    async def send_frame(self, frame: Mapping[int, FrameData]) -> None:
        """Send each universe of ``frame`` now (ValueError for a bad universe or frame)."""
        self.send_frame_now(frame)

    def send_frame_now(self, frame: Mapping[int, FrameData]) -> None:
        """``send_frame`` without a coroutine: every packet is handed to the kernel before
        this returns (a datagram transport with nothing queued sends at once), so a caller on
        the loop puts a frame on the wire without waiting for a turn of the loop."""
        if self._transport is None:
            raise RuntimeError(f"{self.name} is not open")
        now = time.monotonic()
        prepared = [(universe, slots(data)) for universe, data in frame.items()]
        errors = self.stats.errors
        for universe, data in prepared:
            self._send_universe(universe, data)
            self._last[universe] = (data, now)
        self._after_frame([u for u, _ in prepared])
        if self.stats.errors == errors:
            self.tracker.succeeded()

    def _sendto(self, packet: bytes, addr: tuple[str, int]) -> None:
        assert self._transport is not None
        if self.muted:
            return
        try:
            self._transport.sendto(packet, addr)
        except OSError as exc:  # a bad address; kernel errors arrive in error_received
            self.tracker.failed(f"send to {addr[0]}:{addr[1]} failed: {exc}")
            return
        self.stats.requests += 1

    async def _tick_loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for universe, (data, sent) in list(self._last.items()):
                if now - sent >= self.keepalive_s:
                    self._send_universe(universe, data)
                    self._last[universe] = (data, now)
            self._tick(now)
            await self._stop.sleep(TICK_S)

    # hooks
    def _opened(self) -> None:
        pass

    def _send_universe(self, universe: int, data: bytes) -> None:
        raise NotImplementedError

    def _after_frame(self, universes: list[int]) -> None:
        pass

    def _tick(self, now: float) -> None:
        pass

    def _closing(self) -> None:
        pass

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        pass


class SacnOutput(_DatagramOutput):
    """An E1.31 source: multicast by default, unicast to ``hosts`` when given."""

    def __init__(
        self,
        *,
        name: str = "sacn",
        source_name: str = "Flytower",
        cid: uuid.UUID | None = None,
        priority: int = sacn.DEFAULT_PRIORITY,
        hosts: Sequence[str] = (),
        multicast: bool | None = None,
        port: int = sacn.SACN_PORT,
        bind: tuple[str, int] = ("0.0.0.0", 0),
        multicast_interface: str | None = None,
        multicast_ttl: int = 1,
        sync_address: int = 0,
        discovery_interval_s: float = sacn.DISCOVERY_INTERVAL_S,
        keepalive_s: float = KEEPALIVE_S,
        on_health: HealthSink | None = None,
    ) -> None:
        super().__init__(name, bind, keepalive_s, on_health)
        # A stable CID across restarts is the venue's job (configure it); a fresh one per
        # run is still correct E1.31, receivers just see a new source.
        self.cid = cid or uuid.uuid4()
        self.source_name = source_name
        # Validate once here so a misconfiguration fails at start, not per packet.
        sacn.SacnData(self.cid, source_name, 1, b"", priority=priority, sync_address=sync_address)
        self.priority = priority
        self.hosts = tuple(hosts)
        self.multicast = not self.hosts if multicast is None else multicast
        self.port = port
        self.multicast_interface = multicast_interface
        self.multicast_ttl = multicast_ttl
        self.sync_address = sync_address
        self.discovery_interval_s = discovery_interval_s
        self._sequence: dict[int, int] = {}
        self._sync_sequence = 0
        self._next_discovery = 0.0

    def _configure(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.multicast_ttl)
        if self.multicast_interface is not None:
            sock.setsockopt(
                socket.IPPROTO_IP,
                socket.IP_MULTICAST_IF,
                socket.inet_aton(self.multicast_interface),
            )

    def _destinations(self, universe: int) -> list[tuple[str, int]]:
        dests = [(host, self.port) for host in self.hosts]
        if self.multicast:
            dests.append((sacn.multicast_group(universe), self.port))
        return dests

    def _send_universe(self, universe: int, data: bytes, *, terminated: bool = False) -> None:
        seq = self._sequence.get(universe, -1) + 1 & 0xFF
        self._sequence[universe] = seq
        packet = sacn.SacnData(
            self.cid,
            self.source_name,
            universe,
            data,
            seq,
            self.priority,
            self.sync_address,
            stream_terminated=terminated,
        ).encode()
        for dest in self._destinations(universe):
            self._sendto(packet, dest)

    def _after_frame(self, universes: list[int]) -> None:
        if self.sync_address and universes:
            self._sync_sequence = self._sync_sequence + 1 & 0xFF
            packet = sacn.SacnSync(self.cid, self.sync_address, self._sync_sequence).encode()
            for dest in self._destinations(self.sync_address):
                self._sendto(packet, dest)

    def _tick(self, now: float) -> None:
        if now < self._next_discovery or not self._last:
            return
        self._next_discovery = now + self.discovery_interval_s
        for page in sacn.discovery_pages(self.cid, self.source_name, set(self._last)):
            packet = page.encode()
            for dest in self._destinations(sacn.DISCOVERY_UNIVERSE):
                self._sendto(packet, dest)

    def _closing(self) -> None:
        for universe, (data, _) in self._last.items():
            for _ in range(TERMINATE_REPEATS):
                self._send_universe(universe, data, terminated=True)


@dataclass(frozen=True, slots=True)
class ArtNetNode:
    """A configured Art-Net node: where to send, and which Port-Addresses (None: all)."""

    host: str
    port: int = artnet.ARTNET_PORT
    port_addresses: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class DiscoveredNode:
    host: str
    port: int
    reply: artnet.ArtPollReply
    last_seen: float


class ArtNetOutput(_DatagramOutput):
    """An Art-Net 4 controller output. Keys of ``send_frame`` are 15-bit Port-Addresses."""

    def __init__(
        self,
        *,
        name: str = "artnet",
        nodes: Sequence[ArtNetNode] = (),
        broadcast: str | None = None,
        poll_targets: Sequence[str] = (),
        poll_interval_s: float = 2.5,
        sync: bool = False,
        port: int = artnet.ARTNET_PORT,
        bind: tuple[str, int] = ("0.0.0.0", artnet.ARTNET_PORT),
        keepalive_s: float = KEEPALIVE_S,
        on_health: HealthSink | None = None,
    ) -> None:
        super().__init__(name, bind, keepalive_s, on_health)
        self.nodes = tuple(nodes)
        self.broadcast = broadcast
        self.port = port  # where polls and broadcasts go; not 6454 only in tests
        self.poll_targets = tuple(poll_targets)
        self.poll_interval_s = poll_interval_s
        # Art-Net 4: a node is gone after missing three polls' worth of replies.
        self.node_timeout_s = 3 * poll_interval_s + 1
        self.sync = sync
        self._sequence: dict[int, int] = {}
        self._discovered: dict[tuple[str, int, int], DiscoveredNode] = {}
        self._next_poll = 0.0
        self.malformed = 0

    @property
    def discovered(self) -> dict[str, frozenset[int]]:
        """Live discovered nodes (``host:port``) and the Port-Addresses each outputs."""
        now = time.monotonic()
        live: dict[str, set[int]] = {}
        for node in self._discovered.values():
            if now - node.last_seen <= self.node_timeout_s:
                live.setdefault(f"{node.host}:{node.port}", set()).update(
                    node.reply.output_port_addresses()
                )
        return {k: frozenset(v) for k, v in live.items()}

    def _configure(self, sock: socket.socket) -> None:
        # Several Art-Net programs on one host all use port 6454.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.broadcast is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)

    def _destinations(self, port_address: int) -> list[tuple[str, int]]:
        now = time.monotonic()
        dests = [
            (n.host, n.port)
            for n in self.nodes
            if n.port_addresses is None or port_address in n.port_addresses
        ]
        dests += [
            (node.host, node.port)
            for node in self._discovered.values()
            if now - node.last_seen <= self.node_timeout_s
            and port_address in node.reply.output_port_addresses()
        ]
        if self.broadcast is not None:
            dests.append((self.broadcast, self.port))
        return list(dict.fromkeys(dests))

    def _send_universe(self, universe: int, data: bytes) -> None:
        if len(data) % 2 or len(data) < 2:  # ArtDmx carries an even 2..512 slots
            data = data + bytes(max(1, 2 - len(data)))
        seq = self._sequence.get(universe, 0) % 255 + 1  # 1..255; 0 would disable ordering
        self._sequence[universe] = seq
        packet = artnet.ArtDmx(universe, data, seq).encode()
        for dest in self._destinations(universe):
            self._sendto(packet, dest)

    def _after_frame(self, universes: list[int]) -> None:
        if not self.sync or not universes:
            return
        dests = {d for u in universes for d in self._destinations(u)}
        packet = artnet.ArtSync().encode()
        for dest in sorted(dests):
            self._sendto(packet, dest)

    def _tick(self, now: float) -> None:
        if now < self._next_poll or not (self.poll_targets or self.broadcast):
            return
        self._next_poll = now + self.poll_interval_s
        packet = artnet.ArtPoll().encode()
        targets = [*self.poll_targets, *([self.broadcast] if self.broadcast else [])]
        for host in targets:
            self._sendto(packet, (host, self.port))

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            packet = artnet.decode(data)
        except UnsupportedPacket:
            return
        except DmxProtocolError as exc:
            self.malformed += 1
            log.debug("%s: dropped a packet from %s: %s", self.name, addr[0], exc)
            return
        if isinstance(packet, artnet.ArtPollReply):
            host = addr[0] if packet.ip == "0.0.0.0" else packet.ip
            port = packet.port or artnet.ARTNET_PORT
            # One node may send several replies (one per BindIndex); keep each.
            self._discovered[(host, port, packet.bind_index)] = DiscoveredNode(
                host, port, packet, time.monotonic()
            )


class EnttecProOutput:
    """An ENTTEC DMX USB Pro (or compatible) on a serial device path: one universe."""

    def __init__(
        self, path: str, *, name: str = "enttec", on_health: HealthSink | None = None
    ) -> None:
        self.path = path
        self.name = name
        self.tracker = HealthTracker(name, log, on_health)
        self._fd: int | None = None
        self._backoff = Backoff()
        self._retry_at = 0.0
        # Frames may come from the fixed-rate loop and from an early frame's task at once: a
        # write that has to wait for the device must finish before the next message starts.
        self._writing = asyncio.Lock()
        self.muted = False  # a standby controller's: silent until it takes over

    @property
    def stats(self) -> DriverStats:
        return self.tracker.stats

    @property
    def health(self) -> Health:
        return self.tracker.health

    def _open(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            # Raw mode: no echo, no CR/LF translation of 0x0A/0x0D inside DMX data. A USB
            # widget ignores the baud rate (and a pseudo-terminal has none).
            tty.setraw(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def __aenter__(self) -> Self:
        try:
            self._open()
        except OSError as exc:
            self._lost(f"cannot open {self.path}: {exc.strerror or exc}")
        else:
            self.tracker.set(HealthState.ONLINE)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()
        self.tracker.set(HealthState.OFFLINE, "closed")

    def _lost(self, reason: str) -> None:
        self._close()
        self.tracker.failed(reason, offline=True)
        self._retry_at = time.monotonic() + self._backoff.next_delay()

    async def send_frame(self, frame: Mapping[int, FrameData]) -> None:
        if len(frame) != 1:
            raise ValueError(f"{self.name} drives one universe; got {len(frame)}")
        if self.muted:
            return
        (data,) = frame.values()
        raw = slots(data)
        message = enttec.SendDmx(raw.ljust(enttec.MIN_SEND_SLOTS, b"\x00")).message().encode()
        if self._fd is None:
            if time.monotonic() < self._retry_at:
                return
            try:
                self._open()
                self.tracker.reconnected()
            except OSError as exc:
                self._lost(f"cannot open {self.path}: {exc.strerror or exc}")
                return
        try:
            async with self._writing:
                await self._write(message)
        except OSError as exc:
            self._lost(f"write to {self.path} failed: {exc.strerror or exc}")
            return
        self._backoff.reset()
        self.stats.requests += 1
        self.tracker.succeeded()

    async def _write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            assert self._fd is not None
            fd = self._fd
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_writer(fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(fd)
                continue
            view = view[n:]


class DmxOutputs:
    """Routes Flytower universes to outputs, each under the number its wire uses."""

    def __init__(self) -> None:
        self._routes: dict[int, list[tuple[DmxOutput, int]]] = {}
        self.unrouted = 0
        self._later: set[asyncio.Task[None]] = set()

    def route(self, universe: int, output: DmxOutput, as_universe: int | None = None) -> None:
        """Send ``universe`` to ``output`` as ``as_universe`` (default: the same number)."""
        target = universe if as_universe is None else as_universe
        self._routes.setdefault(universe, []).append((output, target))

    @property
    def outputs(self) -> list[DmxOutput]:
        seen: dict[int, DmxOutput] = {}
        for routes in self._routes.values():
            for output, _ in routes:
                seen.setdefault(id(output), output)
        return list(seen.values())

    def _split(
        self, frame: Mapping[int, FrameData]
    ) -> list[tuple[DmxOutput, dict[int, FrameData]]]:
        per_output: dict[int, tuple[DmxOutput, dict[int, FrameData]]] = {}
        for universe, data in frame.items():
            routes = self._routes.get(universe)
            if not routes:
                self.unrouted += 1
                continue
            for output, target in routes:
                per_output.setdefault(id(output), (output, {}))[1][target] = data
        return list(per_output.values())

    async def send_frame(self, frame: Mapping[int, FrameData]) -> None:
        for output, sub in self._split(frame):
            await output.send_frame(sub)

    def send_frame_now(self, frame: Mapping[int, FrameData]) -> None:
        """Send ``frame`` before returning through every output that can (Art-Net, sACN:
        ``send_frame_now``); an output that may have to wait (ENTTEC) gets it from a task
        started now, on a copy of the slots. The lighting engine's early frames use this."""
        for output, sub in self._split(frame):
            now_fn = getattr(output, "send_frame_now", None)
            if now_fn is not None:
                now_fn(sub)
                continue
            copy: dict[int, FrameData] = {u: slots(d) for u, d in sub.items()}
            task = asyncio.get_running_loop().create_task(
                self._send_later(output, copy), name=f"{output.name}:early-frame"
            )
            self._later.add(task)  # a strong reference until it is done
            task.add_done_callback(self._later.discard)

    @staticmethod
    async def _send_later(output: DmxOutput, sub: dict[int, FrameData]) -> None:
        try:
            await output.send_frame(sub)
        except Exception as exc:  # nobody awaits this task: say it here, once per frame
            log.warning("%s: sending a frame failed: %r", output.name, exc)


__all__ = [
    "ArtNetNode",
    "ArtNetOutput",
    "DmxOutput",
    "DmxOutputs",
    "EnttecProOutput",
    "SacnOutput",
    "slots",
]
