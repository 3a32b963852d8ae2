"""MQTT connections of the simulated gear: one per native node, one per vendor device.

``MqttLink`` is one connection kept up by a supervisor task, the way a gateway's firmware does
it: connect with its will registered, subscribe, announce itself (births), then serve; on any
loss reconnect after a random 50–100 % of a back-off that starts at 0.2 s and doubles to 10 s
(mqtt.md §1), so a broker that is not up yet, or restarts, is simply waited for. A clean stop
says goodbye (acknowledged within 1 s) before a normal DISCONNECT; if the goodbye cannot be
delivered, or the ``dropout`` fault asks for it, the TCP connection is closed without
DISCONNECT so that the broker publishes the will.

Telemetry is the hot path: ~150 devices publish thousands of QoS 1 messages a second. aiomqtt's
``publish`` awaits each PUBACK in a future of its own (about twice the CPU of paho's publish);
telemetry is fire-and-forget for a gateway, so batches go straight to the paho client that
aiomqtt drives on our loop, and a bounded number of unacknowledged batches is the flow control:
when the broker falls behind, newer batches are dropped and counted (points are live values,
conflated, mqtt.md §3). Births, goodbyes and replies use aiomqtt's awaited publish.

``NativeNode`` speaks the Flytower schema for the devices behind one node: retained node and
device births, the node's will, commands with exactly-once replies (mqtt.md §4, §5).
``VendorLink`` serves one third-party device on its own topics (the Shelly pair).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import aiomqtt
from paho.mqtt.client import MQTTMessageInfo

from simulators.gear import wire

log = logging.getLogger("simulators.gear")

KEEPALIVE_S = 10
BACKOFF_START_S, BACKOFF_CAP_S = 0.2, 10.0
GOODBYE_BUDGET_S = 1.0
MAX_UNACKED_BATCHES = 8
PUBLISH_WINDOW = 8  # awaited publishes in flight: below aiomqtt's warning threshold (10)
# QoS 1 messages sent and not yet acknowledged (the rest wait in paho's queue). paho walks its
# outgoing messages on every PUBACK, so a window of 64 costs less CPU than 256 (measured: the
# walk fell from ~15 % to ~4 % of the family's CPU at 2 000 messages/s), but aiomqtt reads one
# packet per wake-up, a small window then refills slowly, and on a loaded machine whole batches
# were dropped by the flow control below (18 000 in 15 s at 592 devices; none with 256).
MAX_INFLIGHT = 256
REPLY_CACHE = 1024
COMMAND_MAX_AGE_S = 30.0

Message = tuple[str, bytes]


def now_ms() -> int:
    return round(time.time() * 1000)


class Backoff:
    def __init__(self) -> None:
        self.step = BACKOFF_START_S

    def reset(self) -> None:
        self.step = BACKOFF_START_S

    def next(self) -> float:
        delay = random.uniform(0.5, 1.0) * self.step
        self.step = min(self.step * 2, BACKOFF_CAP_S)
        return delay


class MqttLink:
    """One connection, kept up until the context exits; see the module docstring."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        client_id: str,
        *,
        will: Callable[[int], Message] | None,
        subscriptions: Sequence[str],
        on_connect: Callable[[aiomqtt.Client, int], Awaitable[None]],
        on_message: Callable[[str, bytes], None],
        farewell: Callable[[aiomqtt.Client], Awaitable[None]] | None,
    ) -> None:
        self.name, self.host, self.port, self.client_id = name, host, port, client_id
        self._will, self._subscriptions = will, list(subscriptions)
        self._on_connect, self._on_message, self._farewell = on_connect, on_message, farewell
        self.ready = False  # births done: telemetry may flow
        self.connects = self.published = self.dropped = self.received = 0
        self.last_error = ""
        self.session = 0  # epoch ms of the current connection's connect (mqtt.md §4.1)
        self._client: aiomqtt.Client | None = None
        self._unacked: deque[MQTTMessageInfo] = deque()
        self._stop = asyncio.Event()
        self._sever = asyncio.Event()
        self._hold_until: float | None = None  # monotonic; inf: until resume()
        self._resume = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MqttLink:
        self._task = asyncio.create_task(self._run(), name=f"sim-mqtt:{self.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        self._resume.set()
        assert self._task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 10)
        except TimeoutError:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # --- what devices and the clock call ---------------------------------------------------

    def publish(self, messages: Sequence[Message]) -> int:
        """Send a batch of telemetry at QoS 1 without waiting; how many went out."""
        if not messages:
            return 0
        while self._unacked and self._unacked[0].is_published():
            self._unacked.popleft()
        client = self._client
        if not self.ready or client is None or len(self._unacked) >= MAX_UNACKED_BATCHES:
            self.dropped += len(messages)
            return 0
        paho = client._client
        info = None
        for topic, payload in messages:
            info = paho.publish(topic, payload, qos=1)
        assert info is not None
        self._unacked.append(info)
        self.published += len(messages)
        return len(messages)

    def reply(self, topic: str, payload: bytes) -> None:
        """A command reply, QoS 1, not retained, not subject to telemetry flow control."""
        if self._client is not None and self.ready:
            self._client._client.publish(topic, payload, qos=1)
            self.published += 1

    def sever(self, hold_s: float | None) -> None:
        """Drop the connection without DISCONNECT (the broker publishes the will) and stay
        away ``hold_s`` seconds, or until ``resume()`` when None."""
        self._hold_until = time.monotonic() + hold_s if hold_s else float("inf")
        self._resume.clear()
        self._sever.set()

    def resume(self) -> None:
        self._hold_until = None
        self._resume.set()

    # --- the supervisor ----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff, failing = Backoff(), False
        while not self._stop.is_set():
            await self._held()
            if self._stop.is_set():
                break
            session = self.session = now_ms()
            try:
                async with self._new_client(session) as client:
                    self._client = client
                    if self._subscriptions:
                        await client.subscribe([(t, 1) for t in self._subscriptions])
                    await self._on_connect(client, session)
                    self.connects += 1
                    self.ready = True
                    backoff.reset()
                    if failing:
                        log.info("%s: connected again to %s:%d", self.name, self.host, self.port)
                        failing = False
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc)
                if not failing:
                    log.warning("%s: broker %s:%d: %s (retrying)", self.name, self.host,
                                self.port, exc)  # fmt: skip
                    failing = True
            finally:
                self.ready = False
                self._client = None
                self._unacked.clear()
            if not self._stop.is_set() and self._hold_until is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff.next())

    async def _held(self) -> None:
        while self._hold_until is not None and not self._stop.is_set():
            left = self._hold_until - time.monotonic()
            if left <= 0:
                self._hold_until = None
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resume.wait(), min(left, 3600.0))

    def _new_client(self, session: int) -> aiomqtt.Client:
        will = None
        if self._will is not None:
            topic, payload = self._will(session)
            will = aiomqtt.Will(topic, payload, qos=1, retain=True)
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            clean_session=False,  # commands queued while away are answered (``expired``)
            will=will,
            keepalive=KEEPALIVE_S,
            timeout=5,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            max_inflight_messages=MAX_INFLIGHT,
            max_concurrent_outgoing_calls=256,
        )

    async def _serve(self, client: aiomqtt.Client) -> None:
        receiver = asyncio.create_task(self._receive(client), name=f"sim-mqtt:{self.name}:rx")
        stop = asyncio.create_task(self._stop.wait(), name=f"sim-mqtt:{self.name}:stop")
        sever = asyncio.create_task(self._sever.wait(), name=f"sim-mqtt:{self.name}:sever")
        try:
            await asyncio.wait([receiver, stop, sever], return_when=asyncio.FIRST_COMPLETED)
            if sever.done():  # the dropout fault: not a failure to report
                self._sever.clear()
                await self._drop(client)
                log.info("%s: connection dropped on purpose (dropout fault)", self.name)
                return
            elif stop.done() and not await self._goodbye(client):
                await self._drop(client)
        except asyncio.CancelledError:
            await asyncio.shield(self._drop(client))  # no goodbye: let the will fire
            raise
        finally:
            for task in (receiver, stop, sever):
                task.cancel()
            await asyncio.gather(receiver, stop, sever, return_exceptions=True)
        if receiver.done() and not receiver.cancelled() and receiver.exception() is not None:
            raise receiver.exception()  # type: ignore[misc]

    async def _goodbye(self, client: aiomqtt.Client) -> bool:
        if self._farewell is None:
            return True
        self.ready = False
        try:
            await asyncio.wait_for(self._farewell(client), GOODBYE_BUDGET_S)
        except (TimeoutError, aiomqtt.MqttError):
            return False
        return True

    async def _drop(self, client: aiomqtt.Client) -> None:
        """Close the TCP connection without DISCONNECT: the broker publishes the will.

        aiomqtt's own exit would send DISCONNECT, which discards the will; it is skipped when
        the client already knows it is disconnected, hence the wait."""
        self.ready = False
        sock = client._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(TimeoutError, aiomqtt.MqttError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(client._disconnected), 5)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.received += 1
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                self._on_message(message.topic.value, payload)
            except Exception:  # one bad handler call must not end the connection
                log.exception("%s: handling %s failed", self.name, message.topic.value)


async def publish_retained(client: aiomqtt.Client, messages: Sequence[Message]) -> None:
    """Publish retained QoS 1 messages in order, each acknowledged, at most ``PUBLISH_WINDOW``
    awaiting their PUBACK at once.

    A node's device births are many (48 receivers behind one gateway): published all at once,
    each would be a pending call in aiomqtt, which scans them all on every call and logs a
    warning for each beyond ten. The semaphore is FIFO, so the order on the wire is the list's.
    """
    window = asyncio.Semaphore(PUBLISH_WINDOW)

    async def one(topic: str, payload: bytes) -> None:
        async with window:
            await client.publish(topic, payload, qos=1, retain=True)

    tasks = [asyncio.ensure_future(one(topic, payload)) for topic, payload in messages]
    try:
        await asyncio.gather(*tasks)
    finally:  # one failed (the connection is gone): none of the others outlives the call
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Commandable(Protocol):
    """What a node needs of a device it serves."""

    id: str
    profile: str

    def handle_command(self, name: str, args: Mapping[str, Any]) -> tuple[str, Any]: ...


class NativeNode:
    """The devices behind one node, on the Flytower schema (mqtt.md §4–§5)."""

    def __init__(
        self, host: str, port: int, venue: str, node: str, devices: Sequence[Commandable]
    ) -> None:
        self.venue, self.node = venue, node
        self.devices = {d.id: d for d in devices}
        self.commands = self.malformed = self.duplicates = 0
        self._replies: OrderedDict[tuple[str, str], tuple[str, bytes]] = OrderedDict()
        state = wire.node_topic(venue, node)
        self.link = MqttLink(
            f"node {node}",
            host,
            port,
            f"sim-{venue}-{node}",
            will=lambda session: (state, wire.encode_death(session, session, "lost")),
            subscriptions=[wire.command_filter(venue, node)],
            on_connect=self._births,
            on_message=self._on_command,
            farewell=self._goodbye,
        )

    async def _births(self, client: aiomqtt.Client, session: int) -> None:
        ts = now_ms()
        birth = wire.encode_birth(ts, session, list(self.devices))
        await client.publish(wire.node_topic(self.venue, self.node), birth, qos=1, retain=True)
        await publish_retained(client, [
            (wire.device_topic(self.venue, self.node, d.id, wire.STATE),
             wire.encode_device_state("online", ts, d.profile))
            for d in self.devices.values()
        ])  # fmt: skip

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        ts = now_ms()
        await publish_retained(client, [
            (wire.device_topic(self.venue, self.node, d.id, wire.STATE),
             wire.encode_device_state("offline", ts, d.profile, "node shut down"))
            for d in self.devices.values()
        ])  # fmt: skip
        # The session this goodbye ends: the birth and the will of this connection carry it.
        bye = wire.encode_death(ts, self.link.session, "shutdown")
        await client.publish(wire.node_topic(self.venue, self.node), bye, qos=1, retain=True)

    def _on_command(self, topic: str, payload: bytes) -> None:
        try:
            req = wire.decode_request(topic, payload, self.venue, self.node)
        except wire.BadRequest as exc:
            if exc.request_id is None or exc.reply_to is None:
                self.malformed += 1  # nobody to tell (mqtt.md §5)
                return
            self.link.reply(exc.reply_to, wire.encode_reply(exc.request_id, "bad_request",
                                                            now_ms(), error=str(exc)))  # fmt: skip
            return
        key = (req.device, req.id)
        cached = self._replies.get(key)
        if cached is not None:  # exactly once: the same answer, never executed again
            self.duplicates += 1
            self.link.reply(req.reply_to, cached[1])
            return
        self.commands += 1
        device = self.devices.get(req.device)
        if abs(now_ms() - req.ts_ms) > COMMAND_MAX_AGE_S * 1000:
            code, body = "expired", f"request is {abs(now_ms() - req.ts_ms) / 1000:.0f} s old"
        elif device is None:
            code, body = "refused", f"node {self.node} serves no device {req.device!r}"
        else:
            code, body = device.handle_command(req.name, req.args)
        if code == "ok":
            reply = wire.encode_reply(req.id, code, now_ms(), result=body)
        else:
            reply = wire.encode_reply(req.id, code, now_ms(), error=str(body))
        self._replies[key] = (req.reply_to, reply)
        while len(self._replies) > REPLY_CACHE:
            self._replies.popitem(last=False)
        self.link.reply(req.reply_to, reply)


class VendorLink:
    """One third-party device on its own topics: its retained availability topic and will
    (``online`` ``true``/``false``) when it has one, and the topics it obeys."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        base: str,
        availability: str | None,
        command_topics: Sequence[str],
        on_command: Callable[[str, bytes], bool],
    ) -> None:
        self.base = base
        self.malformed = self.commands = 0
        self._on_command = on_command
        self._availability = f"{base}/{availability}" if availability else None
        topic = self._availability
        self.link = MqttLink(
            f"device {base}",
            host,
            port,
            client_id,
            will=(lambda _session: (topic, b"false")) if topic else None,
            subscriptions=[f"{base}/{t}" for t in command_topics],
            on_connect=self._online,
            on_message=self._on_message,
            farewell=self._offline if topic else None,
        )

    async def _online(self, client: aiomqtt.Client, session: int) -> None:
        if self._availability:
            await client.publish(self._availability, b"true", qos=1, retain=True)

    async def _offline(self, client: aiomqtt.Client) -> None:
        assert self._availability is not None
        await client.publish(self._availability, b"false", qos=1, retain=True)

    def _on_message(self, topic: str, payload: bytes) -> None:
        relative = topic[len(self.base) + 1 :]
        if self._on_command(relative, payload):
            self.commands += 1
        else:
            self.malformed += 1
