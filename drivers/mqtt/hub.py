"""One supervised broker connection shared by everything MQTT in a service.

A service has one client id and so one MQTT connection: the node link (telemetry, births,
commands it serves) and every MQTT device driver (subscriptions, commands it sends) multiplex
their traffic over this hub. One connection means one session, one will, one keep-alive, and
no per-device sockets on the broker; the hub routes each incoming message to the handlers whose
filters match it through a topic trie, so routing cost does not grow with the number of devices.

Three parts, as in every driver (STYLE.md): the wire format is ``schema.py``; the connection is
aiomqtt's ``Client`` (an async context manager owning its socket, one per connect); this module
is the supervisor: connect, restore every subscription, run the on-connect hooks (births), set
``connected``, dispatch, and on failure back off (capped, jittered) and do it all again.

The session is persistent (MQTT 5, clean start off, a session expiry), so QoS 1 messages sent
to this client while it is away — commands above all — are queued by the broker and delivered
on reconnect. Subscriptions are restored on every connect anyway: a broker restarted without
persistence has forgotten the session.

Handlers are plain functions called on the event loop; they must be quick and must not raise
(a raising handler is counted and logged, never allowed to end the connection). They are called
as each packet is read (``_DispatchQueue``), not from a consumer task: aiomqtt's message
iterator costs a task and three loop turns per message, which measured ~50 messages/s on a loop
busy with telemetry; reading in the socket callback keeps pace with the socket, and messages
flow while the births go out (the broker drops what a client does not read).

The supervisor never dies of a broker problem: a refused connect, a drop, a PUBACK later than
``timeout_s`` (``BrokerUnavailable`` from an on-connect hook) all end this connection, mark the
link offline and reconnect after a back-off; anything else a hook raises is logged with its
traceback and handled the same way, so the service is never left silently without a link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from aiomqtt.client import ProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from drivers.base import Backoff, HealthTracker, StopFlag
from drivers.model import HealthState

log = logging.getLogger(__name__)

IN_FLIGHT = 64  # QoS 1 publishes awaiting their PUBACK at once
Handler = Callable[[aiomqtt.Message], None]
Hook = Callable[[], Awaitable[None]]


class BrokerUnavailable(ConnectionError):
    """Not connected to the broker, or the broker did not acknowledge in time."""


class _DispatchQueue(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming queue (its public ``queue_type``) that hands each message to the hub
    as it is read instead of storing it. aiomqtt's ``put_nowait`` runs in the socket's read
    callback, so routing costs no task and no loop turn per message. Should a future aiomqtt
    use another method to enqueue, messages are stored and ``_receive`` routes them instead."""

    dispatch: Callable[[aiomqtt.Message], None]

    def put_nowait(self, item: aiomqtt.Message) -> None:
        self.dispatch(item)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark the reason of a disconnect as retrieved (aiomqtt's exit does not read it)."""
    if not future.cancelled():
        future.exception()


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where the broker is and how to log in. ``tls`` turns TLS on (``TLSParameters()`` with
    no fields trusts the system CAs); ``tls_insecure`` skips the host name check only."""

    host: str
    port: int = 1883
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    tls: aiomqtt.TLSParameters | None = None
    tls_insecure: bool = False
    # MQTT 3.1.1 by default: paho builds a Properties object for every MQTT 5 packet, which
    # measured ~0.1 ms each and halved the command rate. 5 adds the Response Topic /
    # Correlation Data form of requests and a session expiry; both versions get the rest.
    mqtt5: bool = False
    keepalive_s: int = 10
    session_expiry_s: int = 3600
    timeout_s: float = 5.0
    backoff_start_s: float = 0.2
    backoff_max_s: float = 10.0


@dataclass(slots=True)
class HubStats:
    connects: int = 0
    received: int = 0
    published: int = 0
    handler_errors: int = 0
    subscribes: int = 0  # SUBSCRIBE packets sent while connected (each may carry many filters)
    subscribe_failures: int = 0  # of those, not acknowledged in time

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)


@dataclass(slots=True)
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    handlers: list[Handler] = field(default_factory=list)  # filter ends here
    hash_handlers: list[Handler] = field(default_factory=list)  # filter ends here with '#'


def _release(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


class TopicRouter:
    """Subscription filters (with ``+`` and ``#``) in a trie: matching walks the topic's levels
    instead of trying every filter, so 500 devices cost what 5 do."""

    def __init__(self) -> None:
        self._root = _Node()
        self.filters: dict[str, int] = {}  # filter -> QoS, in subscription order

    def add(self, topic_filter: str, handler: Handler, qos: int) -> bool:
        """Register; True if the filter is new (it must be subscribed at the broker)."""
        node = self._root
        levels = topic_filter.split("/")
        for i, level in enumerate(levels):
            if level == "#":
                if i != len(levels) - 1:
                    raise ValueError(f"'#' must be the last level of {topic_filter!r}")
                node.hash_handlers.append(handler)
                break
            node = node.children.setdefault(level, _Node())
        else:
            node.handlers.append(handler)
        new = topic_filter not in self.filters
        self.filters[topic_filter] = max(qos, self.filters.get(topic_filter, 0))
        return new

    def match(self, topic: str) -> list[Handler]:
        levels = topic.split("/")
        found: list[Handler] = []
        # MQTT: wildcards at the first level never match a topic that starts with '$'.
        system = topic.startswith("$")
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if not (system and i == 0):
                found.extend(node.hash_handlers)  # '#' also matches the parent level
            if i == len(levels):
                found.extend(node.handlers)
                continue
            if (child := node.children.get(levels[i])) is not None:
                stack.append((child, i + 1))
            if not (system and i == 0) and (plus := node.children.get("+")) is not None:
                stack.append((plus, i + 1))
        return found


class MqttHub:
    """The service's connection to the broker, supervised; see the module docstring."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        will: Callable[[], aiomqtt.Will] | None = None,
        farewell: Callable[[], Awaitable[bool]] | None = None,
        name: str = "mqtt",
    ) -> None:
        """``will`` builds the will of each connection (it may differ per session);
        ``farewell`` runs before a clean disconnect and says whether it was delivered: if not,
        the hub disconnects with reason *Disconnect with Will Message*, so the broker publishes
        the will and nobody is left believing a dead node is online."""
        self.settings = settings
        self.name = name
        self.connected = asyncio.Event()
        self.stats = HubStats()
        self.tracker = HealthTracker(name, log, offline_after_failures=1)
        self._will = will
        self._farewell = farewell
        self._router = TopicRouter()
        # Filters added while connected, not yet acknowledged by the broker, in order; one
        # task sends whatever has gathered as one SUBSCRIBE (see ``subscribe``).
        self._unsent: dict[str, int] = {}
        self._unsent_waiters: list[asyncio.Future[None]] = []
        self._unsent_added = asyncio.Event()
        self._hooks: list[Hook] = []
        self._client: aiomqtt.Client | None = None
        self._stop = StopFlag()

    # --- registration ---------------------------------------------------------------------

    def on_connect(self, hook: Hook) -> None:
        """Run ``hook`` after every (re)connect, once subscriptions are restored and before
        ``connected`` is set: births go here, so they precede everything else published."""
        self._hooks.append(hook)

    async def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Route messages matching ``topic_filter`` to ``handler``, now and after reconnects.

        While connected, the filters that callers add at once (every device of a venue as
        the service starts) go to the broker together, as one SUBSCRIBE, and this returns
        when it is acknowledged. A broker that handles SUBSCRIBE packets one after the other,
        delivering the retained messages of each before it reads the next (amqtt does), took
        ~0.5 s a packet with a large venue's retained points: with one packet per device, the
        last devices heard nothing for two minutes. A SUBACK later than ``timeout_s`` is
        logged and the caller returns; the broker still has the packet (TCP), and a reconnect
        restores every filter anyway.
        """
        if not self._router.add(topic_filter, handler, qos) or self._client is None:
            return  # known already, or the next connect restores it with the rest
        self._unsent[topic_filter] = max(qos, self._unsent.get(topic_filter, 0))
        waiter = asyncio.get_running_loop().create_future()
        self._unsent_waiters.append(waiter)
        self._unsent_added.set()
        await asyncio.shield(waiter)

    async def _subscriber(self, client: aiomqtt.Client) -> None:
        """Send the filters added while connected, gathered into one SUBSCRIBE at a time."""
        while True:
            await self._unsent_added.wait()
            self._unsent_added.clear()
            batch, waiters = self._unsent, self._unsent_waiters
            self._unsent, self._unsent_waiters = {}, []
            self.stats.subscribes += 1
            try:
                await client.subscribe(list(batch.items()))
            except aiomqtt.MqttError as exc:
                self.stats.subscribe_failures += 1
                log.warning(
                    "%s: the broker did not acknowledge the subscription of %d filter(s) in "
                    "time: %s",
                    self.name,
                    len(batch),
                    exc,
                )
            except Exception:  # a filter paho refuses: loud, and the link goes on
                log.exception("%s: subscribing %s failed", self.name, list(batch))
            finally:
                _release(waiters)

    # --- I/O ------------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """Publish and, for QoS 1, wait for the broker's PUBACK; BrokerUnavailable if not."""
        client = self._client
        if client is None:
            raise BrokerUnavailable(f"{self.name}: not connected to the broker")
        try:
            await client.publish(
                topic, payload, qos=qos, retain=retain, properties=properties, timeout=timeout_s
            )
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailable(f"{self.name}: publish to {topic}: {exc}") from exc
        self.stats.published += 1

    # --- supervisor -----------------------------------------------------------------------

    def stop(self) -> None:
        """Say farewell, disconnect and return from ``run``."""
        self._stop.set()

    async def run(self) -> None:
        """Connect, serve and reconnect until ``stop()``; never ends on a broker failure."""
        backoff = Backoff(self.settings.backoff_start_s, self.settings.backoff_max_s)
        while not self._stop.is_set():
            client = self._new_client()
            # aiomqtt sets an unexpected drop's reason on this future and, when it exits after
            # such a drop, never reads it ("Future exception was never retrieved"). Read it
            # here, whoever else does; again after connecting, which may replace the future.
            client._disconnected.add_done_callback(_retrieve)
            try:
                async with client:
                    client._disconnected.add_done_callback(_retrieve)
                    self._client = client
                    self._unsent.clear()  # _restore subscribes every filter
                    await self._restore(client)
                    backoff.reset()
                    await self._serve(client)
            except (aiomqtt.MqttError, BrokerUnavailable) as exc:
                # BrokerUnavailable: a hook's publish was not acknowledged within timeout_s.
                if not self._stop.is_set():
                    self.tracker.failed(f"broker {self._address}: {exc}", offline=True)
            except Exception as exc:  # a bug in a hook or handler: loud, but keep the link
                log.exception("%s: connection failed unexpectedly; reconnecting", self.name)
                self.tracker.failed(f"{type(exc).__name__}: {exc}", offline=True)
            finally:
                self._client = None
                self.connected.clear()
                _release(self._unsent_waiters)  # the next connect restores their filters
                self._unsent_waiters = []
                self._abandon(client)
            await self._stop.sleep(backoff.next_delay())
        self.tracker.set(HealthState.OFFLINE, "stopped")

    @property
    def _address(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def _new_client(self) -> aiomqtt.Client:
        s = self.settings
        if s.mqtt5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = s.session_expiry_s
            session: dict[str, Any] = {
                "protocol": ProtocolVersion.V5,
                "clean_start": False,
                "properties": props,
            }
        else:  # 3.1.1 has no expiry: the broker keeps the session until it is cleaned
            session = {"protocol": ProtocolVersion.V311, "clean_session": False}
        queue = type("DispatchQueue", (_DispatchQueue,), {"dispatch": self._dispatch})
        client = aiomqtt.Client(
            s.host,
            s.port,
            identifier=s.client_id or None,
            username=s.username,
            password=s.password,
            **session,
            will=self._will() if self._will is not None else None,
            keepalive=s.keepalive_s,
            timeout=s.timeout_s,
            tls_params=s.tls,
            tls_insecure=s.tls_insecure if s.tls is not None else None,
            # aiomqtt and paho scan their pending calls on every publish and acknowledgement:
            # thousands in flight cost quadratic time and stall everything. A bounded window
            # keeps each step cheap; waiting callers queue on aiomqtt's semaphore, in order.
            max_inflight_messages=IN_FLIGHT,
            # Without it Nagle holds small packets back for the peer's delayed ACK: a command
            # round trip measured 88 ms instead of 1 ms on loopback.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            max_concurrent_outgoing_calls=IN_FLIGHT,
            queue_type=queue,
        )
        client.pending_calls_threshold = IN_FLIGHT + 1  # the window is by design, not a warning
        return client

    async def _restore(self, client: aiomqtt.Client) -> None:
        filters = list(self._router.filters.items())
        if filters:
            await client.subscribe(filters)
        self.stats.connects += 1
        for hook in self._hooks:
            await hook()
        self.connected.set()
        self.tracker.succeeded()

    async def _serve(self, client: aiomqtt.Client) -> None:
        receiver = asyncio.create_task(self._receive(client), name=f"{self.name}:receive")
        stop = asyncio.create_task(self._stop.wait(), name=f"{self.name}:stop-wait")
        subscriber = asyncio.create_task(self._subscriber(client), name=f"{self.name}:subscribe")
        try:
            await asyncio.wait([receiver, stop], return_when=asyncio.FIRST_COMPLETED)
            if stop.done():
                await self._say_farewell(client)
        except asyncio.CancelledError:
            # Cancelled before a farewell: aiomqtt's exit would discard the will, so the
            # broker must be told to publish it.
            self._disconnect_with_will(client)
            raise
        finally:
            for task in (receiver, stop, subscriber):
                task.cancel()
            await asyncio.gather(receiver, stop, subscriber, return_exceptions=True)
        if not stop.done() and receiver.done() and receiver.exception() is not None:
            raise receiver.exception()  # type: ignore[misc]

    async def _say_farewell(self, client: aiomqtt.Client) -> None:
        delivered = False
        if self._farewell is not None:
            try:
                delivered = await self._farewell()
            except Exception:  # a broken farewell must not keep the will from firing
                log.exception("%s: farewell failed", self.name)
        if not delivered and self._will is not None:
            self._disconnect_with_will(client)
            # Wait for the socket to close, so aiomqtt's exit does not send a DISCONNECT of its own.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(client._disconnected), self.settings.timeout_s
                )

    @staticmethod
    def _abandon(client: aiomqtt.Client) -> None:
        """Close what aiomqtt left open of a connection that is over.

        A CONNECT that timed out (a frozen broker) or a DISCONNECT that was not acknowledged
        leaves paho's socket open: the broker would later accept that connection and, with our
        client id, take the session from its successor. A DISCONNECT goes first, so the broker
        does not publish the will of an attempt that is over; after ``_disconnect_with_will``
        the socket is shut for writing already and nothing more can leave.
        """
        sock = client._client.socket()
        if not isinstance(sock, socket.socket) or sock.fileno() == -1:
            return
        with contextlib.suppress(Exception):
            client._client.disconnect()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _disconnect_with_will(self, client: aiomqtt.Client) -> None:
        """End the session so that the broker publishes the will (MQTT 5 reason 0x04).

        aiomqtt's own exit sends a plain DISCONNECT, which tells the broker to discard the
        will; it has no way to pass a reason code, hence its paho client here, on the way out.
        """
        if self._will is None:
            return
        if self.settings.mqtt5:
            reason = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
            client._client.disconnect(reasoncode=reason)
            return
        # MQTT 3.1.1 has no such reason: end the connection without a DISCONNECT at all.
        sock = client._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Wait for the connection to end (raising its reason); messages are routed as they
        are read (``_DispatchQueue``), so this loop normally never sees one."""
        async for message in client.messages:
            self._dispatch(message)

    def _dispatch(self, message: aiomqtt.Message) -> None:
        self.stats.received += 1
        topic = message.topic.value
        for handler in self._router.match(topic):
            try:
                handler(message)
            except Exception:
                self.stats.handler_errors += 1
                log.exception("%s: handler for %s failed", self.name, topic)
