"""The OSC server: UDP and TCP (OSC 1.1 SLIP) listeners, access control, bundles and replies.

``OscServer`` is an async context manager that owns its UDP endpoint and its TCP server; both
are bound on ``__aenter__`` (port 0 picks a free port; ``udp_port`` / ``tcp_port`` tell which)
and everything it started -- connections, request tasks, scheduled bundles -- is cancelled and
awaited on ``__aexit__``.

Request flow (docs/interfaces/osc.md has the contract):

1. Allow-list: a source outside ``allowed_sources`` is dropped without a reply (a UDP reply
   to a spoofable source would make us an amplifier and tell a stranger we exist) and counted;
   a TCP connection from one is closed at once.
2. Framing: UDP is one packet per datagram; TCP is a stream of SLIP frames. Undecodable
   datagrams and frames are dropped and counted. A TCP peer whose last ``tcp_garbage_limit``
   frames were all undecodable is disconnected with a logged reason: it most likely speaks
   OSC 1.0's length-prefixed framing or not OSC at all, and dropping frames for ever would
   hide that.
3. Bundles: contained messages are dispatched in packet order. A bundle due now or in the
   past runs at once; one due later runs at its time (wall clock) if that is at most
   ``max_schedule_ahead_s`` ahead, else each of its messages gets an error reply.
4. Access: with a ``passcode`` set, every address but ``/connect`` answers "denied" until the
   source has sent ``/connect {passcode}``; a session belongs to the TCP connection, or to the
   UDP source address:port and expires after ``udp_session_idle_s`` without traffic (QLab's
   61 s).
5. Dispatch: ``/connect``, ``/disconnect`` and ``/flytower/ping`` are answered here; anything
   else goes to the router. Unknown address, wrong arguments and handler errors answer
   "error" with a reason. Messages addressed ``/reply/...`` are never answered, so two nodes
   cannot start a reply loop.

Ordering: messages on one TCP connection are handled one after the other. UDP datagrams are
handled concurrently (UDP has no order to keep); a sequence that must stay in order goes in
one bundle or over TCP. At most ``max_pending`` UDP requests and scheduled bundles are
pending at once; datagrams beyond that are dropped and counted as ``overload``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self

from drivers.base import DatagramEndpoint, HealthSink, HealthTracker
from drivers.model import DriverStats, Health, HealthState
from drivers.osc.address_space import CONNECT, DISCONNECT, PING
from drivers.osc.router import (
    Handler,
    OscRequest,
    OscRequestError,
    OscRouter,
    Peer,
    check_args,
)
from drivers.osc.wire import (
    MAX_FRAME_BYTES,
    Message,
    OscDecodeError,
    OscEncodeError,
    SlipDecoder,
    Status,
    decode_packet,
    encode_reply,
    is_reply,
    slip_encode,
)

log = logging.getLogger(__name__)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class OscServerConfig:
    host: str = "127.0.0.1"
    udp_port: int | None = 53000  # QLab's port, so consoles set up for QLab find us; None: off
    tcp_port: int | None = 53000
    passcode: str | None = None
    allowed_sources: tuple[str, ...] = ()  # addresses or CIDR networks; empty: anyone
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_schedule_ahead_s: float = 60.0
    max_pending: int = 256
    udp_session_idle_s: float = 61.0
    max_udp_sessions: int = 1024
    tcp_garbage_limit: int = 8
    tcp_write_buffer_limit: int = 1 << 20

    def __post_init__(self) -> None:
        for port in (self.udp_port, self.tcp_port):
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"port {port} is outside 0..65535")
        if self.udp_port is None and self.tcp_port is None:
            raise ValueError("enable at least one of udp_port and tcp_port")
        if self.passcode == "":
            raise ValueError("an empty passcode would protect nothing; use None for none")
        if self.max_frame_bytes < 64 or self.max_pending < 1 or self.tcp_garbage_limit < 1:
            raise ValueError("max_frame_bytes >= 64, max_pending >= 1, tcp_garbage_limit >= 1")
        self.networks()  # raises ValueError naming a bad entry

    def networks(self) -> list[IpNetwork]:
        return [ipaddress.ip_network(s, strict=False) for s in self.allowed_sources]


@dataclass(slots=True)
class OscCounters:
    """What the server dropped or refused, beyond the request counters of ``DriverStats``."""

    malformed: int = 0  # undecodable datagrams and frames (SLIP or OSC)
    oversized: int = 0  # datagrams and frames over max_frame_bytes
    blocked: int = 0  # datagrams and connections from outside the allow-list
    denied: int = 0  # "denied" replies (no session, wrong passcode)
    overload: int = 0  # datagrams dropped because max_pending requests were pending
    scheduled: int = 0  # bundle groups scheduled for a later time
    replies: int = 0
    replies_dropped: int = 0  # replies too large to send, or to a connection gone
    ignored_replies: int = 0  # incoming /reply/... messages (never answered)
    connections: int = 0  # TCP connections accepted
    garbage_disconnects: int = 0  # TCP connections closed for sending only garbage


class _Source(Protocol):
    peer: Peer

    @property
    def authorised(self) -> bool: ...

    def set_authorised(self, value: bool) -> None: ...

    def send(self, packet: bytes) -> None: ...


@dataclass(slots=True)
class _UdpSession:
    last_seen: float = field(default_factory=time.monotonic)


class OscServer:
    """Serves the router's addresses over UDP and TCP; see the module docstring."""

    def __init__(
        self,
        config: OscServerConfig,
        router: OscRouter,
        *,
        name: str = "osc-server",
        on_health: HealthSink | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.counters = OscCounters()
        self._tracker = HealthTracker(name, log, on_health)
        self._networks = config.networks()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self.udp_port: int | None = None
        self.tcp_port: int | None = None
        # Strong references: the loop keeps only weak ones, and a collected task is a lost request.
        self._tasks: set[asyncio.Task[object]] = set()
        self._connections: set[asyncio.Task[Any]] = set()
        self._udp_sessions: OrderedDict[tuple[str, int], _UdpSession] = OrderedDict()

    @property
    def stats(self) -> DriverStats:
        return self._tracker.stats

    @property
    def health(self) -> Health:
        return self._tracker.health

    def stats_dict(self) -> dict[str, Any]:
        return {**self.stats.as_dict(), **asdict(self.counters)}

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        cfg = self.config
        try:
            if cfg.udp_port is not None:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: DatagramEndpoint(self._udp_received, _udp_error),
                    local_addr=(cfg.host, cfg.udp_port),
                )
                self._udp = transport
                self.udp_port = int(transport.get_extra_info("sockname")[1])
            if cfg.tcp_port is not None:
                self._tcp = await asyncio.start_server(self._on_tcp, cfg.host, cfg.tcp_port)
                self.tcp_port = int(self._tcp.sockets[0].getsockname()[1])
        except OSError:
            await self._close()
            raise
        log.info("OSC listening on %s udp %s tcp %s", cfg.host, self.udp_port, self.tcp_port)
        self._tracker.set(HealthState.ONLINE)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()
        self._tracker.set(HealthState.OFFLINE, "stopped")

    async def _close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
        pending = [*self._tasks, *self._connections]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()
            self._tcp = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    def _spawn(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("OSC task %s failed", task.get_name(), exc_info=exc)

    # --- access -------------------------------------------------------------------------------

    def _allowed(self, host: str) -> bool:
        if not self._networks:
            return True
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._networks)

    def _udp_session(self, key: tuple[str, int]) -> _UdpSession | None:
        session = self._udp_sessions.get(key)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_seen > self.config.udp_session_idle_s:
            del self._udp_sessions[key]
            return None
        session.last_seen = now
        self._udp_sessions.move_to_end(key)
        return session

    def _set_udp_session(self, key: tuple[str, int], value: bool) -> None:
        # Sessions are made only by a right passcode, so a flood of strangers cannot evict them.
        self._udp_sessions.pop(key, None)
        if value:
            self._udp_sessions[key] = _UdpSession()
            while len(self._udp_sessions) > self.config.max_udp_sessions:
                self._udp_sessions.popitem(last=False)

    # --- UDP ----------------------------------------------------------------------------------

    def _udp_received(self, data: bytes, addr: tuple[str, int]) -> None:
        host, port = addr
        if not self._allowed(host):
            self.counters.blocked += 1
            return
        if len(data) > self.config.max_frame_bytes:
            self.counters.oversized += 1
            return
        if len(self._tasks) >= self.config.max_pending:
            self.counters.overload += 1
            return
        source = _UdpSource(self, Peer("udp", host, port))
        self._spawn(self._handle_packet(data, source), f"osc-udp {host}:{port}")

    def _udp_send(self, packet: bytes, peer: Peer) -> bool:
        if self._udp is None or self._udp.is_closing():
            return False
        self._udp.sendto(packet, (peer.host, peer.port))
        return True

    # --- TCP ----------------------------------------------------------------------------------

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peername = writer.get_extra_info("peername")
        peer = Peer("tcp", str(peername[0]), int(peername[1]))
        try:
            if not self._allowed(peer.host):
                self.counters.blocked += 1
                return
            self.counters.connections += 1
            await self._serve_connection(reader, _TcpSource(self, peer, writer))
        except ConnectionError as exc:
            log.debug("%s: %s", peer, exc)
        except asyncio.CancelledError:
            # Only _close cancels this task, which asyncio made for the connection and nobody
            # awaits but _close; Python 3.11's stream callback logs a cancelled task's
            # CancelledError as an unhandled error, so the cancel ends the task quietly.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve_connection(self, reader: asyncio.StreamReader, source: _TcpSource) -> None:
        decoder = SlipDecoder(self.config.max_frame_bytes)
        bad_streak = 0
        while not source.writer.is_closing():
            data = await reader.read(65536)
            if not data:
                return
            malformed, oversized = decoder.malformed, decoder.oversized
            frames = decoder.feed(data)
            self.counters.malformed += decoder.malformed - malformed
            self.counters.oversized += decoder.oversized - oversized
            bad_streak += decoder.dropped - malformed - oversized
            for frame in frames:
                bad_streak = 0 if await self._handle_packet(frame, source) else bad_streak + 1
            if bad_streak >= self.config.tcp_garbage_limit:
                log.warning(
                    "%s: closing the connection: %d undecodable frames in a row "
                    "(not OSC 1.1 SLIP framing?)",
                    source.peer,
                    bad_streak,
                )
                self.counters.garbage_disconnects += 1
                return

    # --- packets and messages -----------------------------------------------------------------

    async def _handle_packet(self, data: bytes, source: _Source) -> bool:
        """Dispatch one packet; False if it could not be decoded (counted, not answered)."""
        try:
            messages = decode_packet(data)
        except OscDecodeError as exc:
            self.counters.malformed += 1
            log.debug("%s: dropped a malformed packet: %s", source.peer, exc)
            return False
        now = time.time()
        later: dict[float, list[Message]] = {}
        due: list[Message] = []
        for msg in messages:
            if msg.timetag is None or msg.timetag <= now:
                due.append(msg)
            else:
                later.setdefault(msg.timetag, []).append(msg)
        for when, group in sorted(later.items()):
            self._schedule(when - now, group, source)
        for msg in due:
            await self._answer(msg, source)
        return True

    def _schedule(self, delay_s: float, group: list[Message], source: _Source) -> None:
        cap = self.config.max_schedule_ahead_s
        if delay_s > cap:
            reason = f"bundle timetag is {delay_s:.1f} s ahead; the limit is {cap:g} s"
        elif len(self._tasks) >= self.config.max_pending:
            reason = "too many pending requests; bundle refused"
        else:
            self.counters.scheduled += 1
            self._spawn(self._run_later(delay_s, group, source), f"osc-bundle {source.peer}")
            return
        for msg in group:
            self.stats.requests += 1
            self.stats.errors += 1
            self._send_reply(msg.address, "error", reason, source)

    async def _run_later(self, delay_s: float, group: list[Message], source: _Source) -> None:
        await asyncio.sleep(delay_s)
        for msg in group:
            await self._answer(msg, source)

    async def _answer(self, msg: Message, source: _Source) -> None:
        if is_reply(msg.address):
            self.counters.ignored_replies += 1
            return
        status, data = await self._outcome(msg, source)
        self._send_reply(msg.address, status, data, source)

    def _send_reply(self, address: str, status: Status, data: Any, source: _Source) -> None:
        try:
            packet = encode_reply(address, status, data)
        except OscEncodeError as exc:
            self._tracker.failed(str(exc))
            packet = encode_reply(address, "error", "internal error: reply data is not JSON")
        if len(packet) > self.config.max_frame_bytes:
            packet = encode_reply(address, "error", "reply too large")
        if len(packet) > self.config.max_frame_bytes:
            self.counters.replies_dropped += 1
            return
        source.send(packet)

    async def _outcome(self, msg: Message, source: _Source) -> tuple[Status, Any]:
        stats = self.stats
        try:
            prepared = self._prepare(msg, source)
        except OscRequestError as exc:
            stats.requests += 1
            stats.errors += 1
            return "error", exc.reason
        if not isinstance(prepared, _Call):
            stats.requests += 1
            return prepared
        # Handler calls are timed; ``record`` counts them as requests.
        t0 = time.perf_counter()
        try:
            data = await prepared.handler(prepared.request)
        except OscRequestError as exc:
            stats.record(time.perf_counter() - t0)
            stats.errors += 1
            return "error", exc.reason
        except Exception as exc:  # a handler bug must cost one request, not the server
            stats.record(time.perf_counter() - t0)
            log.exception("OSC handler for %s failed", msg.address)
            self._tracker.failed(f"handler for {prepared.template} raised {exc!r}")
            return "error", f"internal error: {type(exc).__name__}"
        self._tracker.succeeded(time.perf_counter() - t0)
        return "ok", data

    def _prepare(self, msg: Message, source: _Source) -> tuple[Status, Any] | _Call:
        """The answer of a built-in address, or the handler call for a routed one; raises
        ``OscRequestError`` for an unknown address or wrong arguments."""
        address = msg.address
        if address == CONNECT.template:
            return self._connect(check_args(CONNECT, address, msg.args), source)
        if self.config.passcode is not None and not source.authorised:
            self.counters.denied += 1
            return "denied", "send /connect {passcode} first"
        if address == DISCONNECT.template:
            check_args(DISCONNECT, address, msg.args)
            source.set_authorised(False)
            return "ok", None
        if address == PING.template:
            check_args(PING, address, msg.args)
            return "ok", {"ts": time.time()}
        route = self.router.resolve(address)
        if route is None:
            raise OscRequestError(f"unknown address {address}")
        spec, handler, params = route
        args = check_args(spec, address, msg.args)
        return _Call(handler, OscRequest(address, params, args, source.peer), spec.template)

    def _connect(self, args: dict[str, Any], source: _Source) -> tuple[Status, Any]:
        expected = self.config.passcode
        if expected is None:
            return "ok", "no passcode needed"
        given = args.get("passcode")
        if isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode()):
            source.set_authorised(True)
            return "ok", None
        source.set_authorised(False)
        self.counters.denied += 1
        return "denied", "wrong passcode"


class _Call(NamedTuple):
    handler: Handler
    request: OscRequest
    template: str


class _UdpSource:
    def __init__(self, server: OscServer, peer: Peer) -> None:
        self._server = server
        self.peer = peer

    @property
    def authorised(self) -> bool:
        return self._server._udp_session((self.peer.host, self.peer.port)) is not None

    def set_authorised(self, value: bool) -> None:
        self._server._set_udp_session((self.peer.host, self.peer.port), value)

    def send(self, packet: bytes) -> None:
        if self._server._udp_send(packet, self.peer):
            self._server.counters.replies += 1
        else:
            self._server.counters.replies_dropped += 1


class _TcpSource:
    def __init__(self, server: OscServer, peer: Peer, writer: asyncio.StreamWriter) -> None:
        self._server = server
        self.peer = peer
        self.writer = writer
        self._authorised = False

    @property
    def authorised(self) -> bool:
        return self._authorised

    def set_authorised(self, value: bool) -> None:
        self._authorised = value

    def send(self, packet: bytes) -> None:
        counters = self._server.counters
        if self.writer.is_closing():
            counters.replies_dropped += 1
            return
        self.writer.write(slip_encode(packet))
        counters.replies += 1
        # A peer that never reads its replies would grow our buffer without bound.
        limit = self._server.config.tcp_write_buffer_limit
        if self.writer.transport.get_write_buffer_size() > limit:
            log.warning("%s: closing the connection: it does not read its replies", self.peer)
            self.writer.close()


def _udp_error(exc: Exception) -> None:
    # ICMP "port unreachable" from a client that left before its reply: not our failure.
    log.debug("OSC UDP: %s", exc)
