"""An OSC client for one peer (``OscTransport``: UDP or TCP with OSC 1.1 SLIP framing).

``OscClient`` is an async context manager that owns its socket. ``send`` is fire-and-forget;
``request`` sends and awaits the matching reply with a timeout, the way QLab answers: a message
to ``/x`` is answered on ``/reply/x`` with one JSON string (``wire.Reply``). For a device that
answers on another address (a DSP echoing a value on the address that was queried), pass
``reply_to``; such an answer comes back as ``Reply(address, "ok", [its arguments])``.

Several requests may be in flight; replies to the same address are matched in the order the
requests were sent (both transports deliver a peer's answers in order in practice, and OSC
replies carry no request id to do better). A message that matches no request goes to
``on_message`` if given, else is counted in ``unsolicited``.

Over UDP the socket is connected to the peer, so the kernel drops datagrams from anyone else.
There is no reconnection here: a closed TCP connection fails the requests in flight and every
later call with ``DeviceUnavailable``; the device driver that owns the client reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from drivers.base import DatagramEndpoint, DeviceUnavailable, HealthSink, HealthTracker
from drivers.model import DriverStats, Health, HealthState, OscTransport
from drivers.osc.wire import (
    MAX_FRAME_BYTES,
    Message,
    OscDecodeError,
    Reply,
    SlipDecoder,
    decode_packet,
    decode_reply,
    encode_message,
    is_reply,
    reply_address,
    slip_encode,
)

log = logging.getLogger(__name__)


class OscClient:
    def __init__(
        self,
        transport: OscTransport,
        *,
        on_message: Callable[[Message], None] | None = None,
        on_health: HealthSink | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.transport = transport
        self._on_message = on_message
        self._tracker = HealthTracker(transport.endpoint, log, on_health)
        self._decoder = SlipDecoder(max_frame_bytes)
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[str, deque[asyncio.Future[Reply]]] = {}
        self._closed = True
        self._bad_packets = 0
        self.unsolicited = 0

    @property
    def malformed(self) -> int:
        """Packets dropped as undecodable (bad SLIP frames included)."""
        return self._bad_packets + self._decoder.dropped

    @property
    def stats(self) -> DriverStats:
        return self._tracker.stats

    @property
    def health(self) -> Health:
        return self._tracker.health

    async def __aenter__(self) -> Self:
        t = self.transport
        try:
            if t.protocol == "udp":
                self._udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                    lambda: DatagramEndpoint(
                        lambda data, _addr: self._received(data), self._udp_error
                    ),
                    remote_addr=(t.host, t.port),
                )
            else:
                reader, self._writer = await asyncio.open_connection(t.host, t.port)
                self._reader_task = asyncio.create_task(
                    self._read_tcp(reader), name=f"osc-client {t.endpoint}"
                )
        except OSError as exc:
            self._tracker.failed(f"cannot connect: {exc}", offline=True)
            raise
        self._closed = False
        self._tracker.set(HealthState.ONLINE)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._closed:
            self._closed = True
            self._fail_pending("closed")
            self._tracker.set(HealthState.OFFLINE, "closed")
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        if self._udp is not None:
            self._udp.close()

    # --- sending ------------------------------------------------------------------------------

    def send(self, address: str, *args: Any) -> None:
        """Send one message; ``OscEncodeError`` for arguments OSC cannot carry."""
        self.send_packet(encode_message(address, *args))

    def send_packet(self, packet: bytes) -> None:
        """Send an encoded message or bundle (``wire.encode_message`` / ``encode_bundle``)."""
        if self._closed:
            raise DeviceUnavailable(f"{self.transport.endpoint}: not connected")
        if self._udp is not None:
            self._udp.sendto(packet)
        elif self._writer is not None:
            self._writer.write(slip_encode(packet))

    async def request(
        self, address: str, *args: Any, timeout_s: float = 1.0, reply_to: str | None = None
    ) -> Reply:
        """Send and await the reply. ``TimeoutError`` if none comes within ``timeout_s``;
        ``DeviceUnavailable`` if the connection closes first; ``OscDecodeError`` if the reply
        on ``/reply/...`` is not a valid reply."""
        key = reply_to or reply_address(address)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        waiters = self._pending.setdefault(key, deque())
        waiters.append(future)
        t0 = time.perf_counter()
        try:
            self.send(address, *args)
            reply = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            self._tracker.failed(f"no reply to {address} within {timeout_s:g} s")
            raise
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(future)
            if not waiters and self._pending.get(key) is waiters:
                del self._pending[key]
        self._tracker.succeeded(time.perf_counter() - t0)
        return reply

    # --- receiving ----------------------------------------------------------------------------

    def _received(self, packet: bytes) -> None:
        try:
            messages = decode_packet(packet)
        except OscDecodeError as exc:
            self._bad_packets += 1
            log.debug("%s: dropped a malformed packet: %s", self.transport.endpoint, exc)
            return
        for msg in messages:
            waiters = self._pending.get(msg.address)
            future = next((f for f in waiters or () if not f.done()), None)
            if future is None:
                if self._on_message is not None:
                    self._on_message(msg)
                else:
                    self.unsolicited += 1
                continue
            if not is_reply(msg.address):
                future.set_result(Reply(msg.address, "ok", list(msg.args)))
                continue
            try:
                future.set_result(decode_reply(msg.address, msg.args))
            except OscDecodeError as exc:
                future.set_exception(exc)

    async def _read_tcp(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(65536):
                for frame in self._decoder.feed(data):
                    self._received(frame)
        except ConnectionError as exc:
            self._connection_lost(str(exc))
            return
        self._connection_lost("closed by the peer")

    def _udp_error(self, exc: Exception) -> None:
        # Port unreachable: the peer is not listening. The request's timeout reports it.
        log.debug("%s: %s", self.transport.endpoint, exc)

    def _connection_lost(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._tracker.failed(f"connection {reason}", offline=True)
        self._fail_pending(reason)

    def _fail_pending(self, reason: str) -> None:
        for waiters in self._pending.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(
                        DeviceUnavailable(f"{self.transport.endpoint}: connection {reason}")
                    )
