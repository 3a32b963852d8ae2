"""A node's link to the MQTT broker: births, telemetry, commands it serves, goodbye.

What ``edge/`` runs for its node. It owns the service's ``MqttHub`` (one connection, one
persistent session; device drivers share it through ``link.hub``) and adds the node's side of
docs/interfaces/mqtt.md:

- **State.** The will is a retained ``offline`` (reason ``lost``) on ``…/{node}/$state``. After
  every connect — subscriptions restored first — the node publishes its retained birth, then a
  retained ``$state`` per device (profile and health), and only then telemetry: birth before
  data. ``device_health()`` republishes a device's ``$state`` when its health changes. The
  device states go out concurrently within the hub's in-flight window (746 devices one round
  trip each took seconds, during which the broker's queue for us overflowed).
- **Telemetry.** Readings from ``next_batch`` go out at QoS 1, pipelined, each acknowledged; a
  reading whose publish failed is sent again after the reconnect (at least once). The feed is
  read while a window is in flight, and what is waiting is conflated per point (the newest value
  wins), so a closed feed is noticed at once and shutdown never waits behind a backlog.
  ``telemetry_rate`` (messages/s, None: unlimited) caps the live feed: a QoS 1 publish costs the
  event loop tens of µs, which at 80 000 readings/s is more than the loop has, and the pollers
  and axis cycles share it. Over the cap every point still gets its newest value, only less
  often (about points / rate seconds apart); the durable record is the store, not this feed.
- **Supervision.** If the hub's task ever ends on its own (it should not: it reconnects on
  every broker failure), ``run`` raises its error instead of waiting for a connection forever.
- **Commands.** The node subscribes to ``…/{device}/cmd/+`` of its devices and hands each valid
  request to the caller's ``command_handler(device, name, args)``. Every request gets exactly
  one reply on its ``reply_to``: the result, or an error with a code and reason
  (``CommandError`` -> ``refused``, ``DeviceUnavailable`` -> ``unavailable``). A request id
  seen before — QoS 1 redelivers after a lost PUBACK, and a persistent session redelivers after
  a reconnect — is answered from a cache and **never executed twice**: for machinery a second
  "move" is not harmless. A request older than ``command_max_age_s`` (queued for an offline node)
  is refused as ``expired`` rather than executed late, and so is a scheduled one (``at``) that
  arrives more than ``command_max_late_s`` after its start time.
- **Goodbye.** When the feed ends (``EndOfFeed``) the link publishes what it holds, says each
  device and then the node ``offline`` (reason ``shutdown``) and disconnects. If the goodbye is
  not acknowledged, the hub disconnects with *Disconnect with Will Message*, so the broker
  publishes the will: the retained state always ends ``offline``.

Malformed requests are counted in ``stats`` and logged (the first per topic at WARNING); they
never end the link. The durable record is the telemetry store; the MQTT feed is the live view.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.base import DeviceUnavailable
from drivers.model import CommandError, Health, HealthState, Reading
from drivers.mqtt.hub import IN_FLIGHT, BrokerSettings, BrokerUnavailable, MqttHub
from drivers.mqtt.schema import (
    CommandReply,
    CommandRequest,
    DeviceState,
    NodeState,
    ReplyCode,
    SchemaError,
    TimeReply,
    command_filter,
    decode_command,
    decode_time_request,
    device_state_topic,
    encode_device_state,
    encode_node_state,
    encode_reply,
    encode_time_reply,
    encode_value,
    ms,
    node_state_topic,
    point_topic,
    reply_error,
    reply_ok,
    time_topic,
    us,
)

log = logging.getLogger(__name__)

CommandHandler = Callable[[str, str, Mapping[str, Any]], Awaitable[Any]]
PUBLISH_WINDOW = 256  # readings in flight at once: pipelining, not one round trip each


SPIN_S = 0.002  # the last stretch before a scheduled command, in loop turns (see _until)


async def until_wall(at_wall: float) -> None:
    """Return at ``at_wall`` (epoch s), not before. The loop's timers wake up to a
    millisecond late (epoll's timeout is in ms) and a loaded loop later still, so the last
    ``SPIN_S`` is spent yielding a loop turn at a time: other tasks run meanwhile, and the
    command starts within a turn of its time, not within a timer's tick."""
    if (ahead := at_wall - time.time()) > SPIN_S:
        await asyncio.sleep(ahead - SPIN_S)
    while time.time() < at_wall:  # noqa: ASYNC110 (a deadline to the µs, not an event)
        await asyncio.sleep(0)


class EndOfFeed(Exception):
    """Raised by a feed's ``next_batch`` when it is closed: the link says goodbye and ends."""


@dataclass(slots=True)
class LinkStats:
    """What the link did; ``malformed`` and ``last_malformed`` report bad requests."""

    published: int = 0
    commands: int = 0
    command_errors: int = 0
    duplicates: int = 0
    malformed: int = 0
    last_malformed: str = ""
    dropped_readings: int = 0
    clock_probes: int = 0
    latencies_s: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=256)
    )

    def as_dict(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_s)

        def pct(q: float) -> float | None:
            return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None

        return {
            "published": self.published,
            "commands": self.commands,
            "command_errors": self.command_errors,
            "duplicates": self.duplicates,
            "malformed": self.malformed,
            "last_malformed": self.last_malformed,
            "dropped_readings": self.dropped_readings,
            "clock_probes": self.clock_probes,
            "command_p50_ms": pct(0.5),
            "command_p99_ms": pct(0.99),
        }


class MqttNodeLink:
    def __init__(
        self,
        host: str,
        port: int,
        venue: str,
        node: str,
        devices: list[str],
        keepalive_s: int = 10,
        *,
        command_handler: CommandHandler | None = None,
        profiles: Mapping[str, str] | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: aiomqtt.TLSParameters | None = None,
        tls_insecure: bool = False,
        mqtt5: bool = False,
        session_expiry_s: int = 3600,
        command_max_age_s: float = 30.0,
        command_max_ahead_s: float = 60.0,
        command_max_late_s: float = 1.0,
        command_timeout_s: float = 30.0,
        max_commands_in_flight: int = 256,
        dedup_size: int = 1024,
        goodbye_timeout_s: float = 1.0,
        drain_timeout_s: float = 1.0,
        telemetry_rate: float | None = None,
    ) -> None:
        rate = telemetry_rate
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"telemetry_rate must be a positive number, not {telemetry_rate!r}")
        self.telemetry_rate = telemetry_rate
        self.venue, self.node = venue, node
        self.devices = list(devices)
        self.profiles = dict(profiles or {})
        self.command_handler = command_handler
        self.command_max_age_s = command_max_age_s
        self.command_max_ahead_s = command_max_ahead_s
        # A scheduled command that arrives this long after its start time is stale (held in
        # the node's session while it was cut off): refused, never replayed late.
        self.command_max_late_s = command_max_late_s
        self.command_timeout_s = command_timeout_s
        self.goodbye_timeout_s = goodbye_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.stats = LinkStats()
        self.hub = MqttHub(
            BrokerSettings(
                host,
                port,
                client_id=f"flytower-{venue}-{node}",
                username=username,
                password=password,
                tls=tls,
                tls_insecure=tls_insecure,
                mqtt5=mqtt5,
                keepalive_s=keepalive_s,
                session_expiry_s=session_expiry_s,
            ),
            will=self._will,
            farewell=self._goodbye,
            name=f"mqtt {node}",
        )
        self.hub.on_connect(self._births)
        self._state_topic = node_state_topic(venue, node)
        self._session = 0
        self._health: dict[str, Health] = {}
        self._replies: collections.OrderedDict[tuple[str, str], asyncio.Future[CommandReply]] = (
            collections.OrderedDict()
        )
        self._dedup_size = dedup_size
        self._in_flight = 0
        self._max_in_flight = max_commands_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned_topics: set[str] = set()
        self._closing = False
        self._state_pending: set[str] = set()
        self._state_dirty: set[str] = set()  # changed while its publisher was busy

    # --- compatibility surface used by edge/ and the tests -------------------------------

    @property
    def connected(self) -> asyncio.Event:
        return self.hub.connected

    @property
    def published(self) -> int:
        return self.stats.published

    @property
    def reconnects(self) -> int:
        return self.hub.stats.reconnects

    # --- state ----------------------------------------------------------------------------

    def _will(self) -> aiomqtt.Will:
        # A will is fixed at CONNECT: its ts is the session's start, not the time of death.
        self._session = ms(time.time())
        payload = encode_node_state(NodeState("offline", self._session, self._session, (), "lost"))
        return aiomqtt.Will(self._state_topic, payload, qos=1, retain=True)

    async def _births(self) -> None:
        birth = NodeState("online", ms(time.time()), self._session, tuple(sorted(self.devices)))
        # The node's birth is acknowledged before any device state is sent: birth first.
        await self.hub.publish(self._state_topic, encode_node_state(birth), retain=True)
        # Then the device states, IN_FLIGHT at a time: one round trip each took seconds for
        # hundreds of devices. A bounded set of tasks, not one per device: each costs memory
        # and a loop turn, and aiomqtt would queue all but IN_FLIGHT of them anyway.
        devices = iter(self.devices)

        async def sender() -> None:
            for device in devices:  # the shared iterator hands each device to one sender
                await self._publish_device_state(device)

        senders = [
            asyncio.ensure_future(sender()) for _ in range(min(IN_FLIGHT, len(self.devices)))
        ]
        try:
            results = await asyncio.gather(*senders, return_exceptions=True)
        finally:
            for task in senders:  # cancelled with us: leave nothing behind
                task.cancel()
        for res in results:
            if isinstance(res, BaseException):
                raise res  # the hub reconnects; the next connect sends every birth again

    def device_health(self, health: Health) -> None:
        """Record a device's health; publish its retained ``$state`` if it changed."""
        if health.device not in self.devices:
            return
        old = self._health.get(health.device)
        self._health[health.device] = health
        if old is not None and (old.state, old.reason) == (health.state, health.reason):
            return
        # One publisher per device at a time, and it waits for the connection: a change that
        # lands while the births are being sent (before ``connected`` is set) must not be lost.
        # A change while it publishes marks the device: the publisher sends the newest state
        # again when done. Health that changes faster than the broker acknowledges (a loaded
        # house: its reasons carry timings) costs one publish in flight per device, not a task
        # per change (the soak benchmark found thousands waiting, and memory growing).
        if self._closing:
            return
        if health.device in self._state_pending:
            self._state_dirty.add(health.device)
            return
        self._state_pending.add(health.device)
        self._spawn(self._publish_device_state_when_connected(health.device))

    async def _publish_device_state(self, device: str, offline_reason: str | None = None) -> None:
        h = self._health.get(device)
        state, reason = (h.state, h.reason) if h is not None else (HealthState.UNKNOWN, "")
        if offline_reason is not None:
            state, reason = HealthState.OFFLINE, offline_reason
        doc = DeviceState(state, ms(time.time()), self.profiles.get(device, ""), reason)
        topic = device_state_topic(self.venue, self.node, device)
        await self.hub.publish(topic, encode_device_state(doc), retain=True)

    async def _publish_device_state_when_connected(self, device: str) -> None:
        try:
            while True:
                await self.hub.connected.wait()
                self._state_dirty.discard(device)  # what is published now is the newest
                await self._publish_device_state_quietly(device)
                if device not in self._state_dirty or self._closing:
                    return
        finally:
            self._state_pending.discard(device)
            self._state_dirty.discard(device)

    async def _publish_device_state_quietly(self, device: str) -> None:
        # The birth after the next reconnect carries the latest health anyway.
        with contextlib.suppress(BrokerUnavailable):
            await self._publish_device_state(device)

    async def _goodbye(self) -> bool:
        """Devices, then the node, ``offline``; True if the node's goodbye was acknowledged."""

        async def say() -> None:
            for device in self.devices:
                await self._publish_device_state(device, "node shut down")
            bye = NodeState("offline", ms(time.time()), self._session, (), "shutdown")
            await self.hub.publish(self._state_topic, encode_node_state(bye), retain=True)

        try:
            await asyncio.wait_for(say(), self.goodbye_timeout_s)
        except (BrokerUnavailable, TimeoutError) as exc:
            log.warning(
                "mqtt %s: goodbye not acknowledged (%s); the will says offline", self.node, exc
            )
            return False
        return True

    # --- run --------------------------------------------------------------------------------

    async def run(self, next_batch: Callable[[], Awaitable[list[Reading]]]) -> None:
        """Publish what ``next_batch`` yields and serve commands; survive broker restarts.

        Returns when ``next_batch`` raises ``EndOfFeed`` (its feed was closed): what was taken
        is published (for up to ``drain_timeout_s`` if the broker is away), commands in flight
        are answered, and the node has said ``offline``. Stopping by closing the feed, not by
        cancelling, means a cancel can never be mistaken for a broker failure.
        """
        # The node's clock answers probes (a controller's offset to it), QoS 0: a late answer
        # is a useless one, and the probe is simply sent again.
        await self.hub.subscribe(time_topic(self.venue, self.node), self._on_time, qos=0)
        if self.command_handler is not None:
            for device in self.devices:
                await self.hub.subscribe(
                    command_filter(self.venue, self.node, device), self._on_command, qos=1
                )
        hub_task = asyncio.create_task(self.hub.run(), name=f"mqtt-hub:{self.node}")
        feed_task = asyncio.create_task(self._feed(next_batch), name=f"mqtt-feed:{self.node}")
        try:
            await asyncio.wait([feed_task, hub_task], return_when=asyncio.FIRST_COMPLETED)
            if not feed_task.done():
                # The hub's supervisor ended while the feed runs: never wait for a connection
                # that cannot come. Its error is the link's.
                exc = hub_task.exception() if not hub_task.cancelled() else None
                log.error("mqtt %s: the broker connection's supervisor ended: %r", self.node, exc)
                raise exc or RuntimeError(f"mqtt {self.node}: the hub stopped unexpectedly")
            feed_task.result()
            self._closing = True
            if self._tasks:  # let commands in flight answer, briefly
                await asyncio.wait(set(self._tasks), timeout=self.goodbye_timeout_s / 2)
            self.hub.stop()
            await hub_task
        finally:
            for task in [feed_task, hub_task, *self._tasks]:
                task.cancel()
            await asyncio.gather(feed_task, hub_task, *self._tasks, return_exceptions=True)

    async def _feed(self, next_batch: Callable[[], Awaitable[list[Reading]]]) -> None:
        """Publish what the feed yields, a window at a time, reading the feed meanwhile."""
        pending: dict[tuple[str, str], Reading] = {}
        fetch: asyncio.Future[list[Reading]] | None = None
        next_window = time.monotonic()  # telemetry_rate: the next window's earliest start
        try:
            while True:
                if fetch is None:
                    fetch = asyncio.ensure_future(next_batch())
                wait = next_window - time.monotonic()
                if pending and not fetch.done() and wait > 0:
                    # Over the rate: keep reading (and conflating) the feed until it is time.
                    await asyncio.wait([fetch], timeout=wait)
                    continue
                if not pending or fetch.done():
                    try:
                        batch = await fetch
                    except EndOfFeed:
                        break
                    finally:
                        fetch = None
                    for r in batch:  # the newest value of a point replaces a waiting one
                        pending.pop((r.device, r.point), None)
                        pending[(r.device, r.point)] = r
                    continue
                await self._wait_connected(fetch)
                if self.hub.connected.is_set():
                    sent = await self._publish_window(pending)
                    if self.telemetry_rate is not None:
                        next_window = max(next_window, time.monotonic() - 1.0)
                        next_window += sent / self.telemetry_rate
        finally:
            if fetch is not None:
                fetch.cancel()
        if pending:
            try:
                await asyncio.wait_for(self._drain(pending), self.drain_timeout_s)
            except TimeoutError:
                self.stats.dropped_readings += len(pending)
                log.warning(
                    "mqtt %s: %d reading(s) not published at shutdown", self.node, len(pending)
                )

    async def _wait_connected(self, fetch: asyncio.Future[list[Reading]]) -> None:
        """Until the hub is connected or the feed has news (more readings, or its end)."""
        if self.hub.connected.is_set():
            return
        waiter = asyncio.ensure_future(self.hub.connected.wait())
        either: list[asyncio.Future[Any]] = [waiter, fetch]
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    async def _drain(self, pending: dict[tuple[str, str], Reading]) -> None:
        while pending:
            await self.hub.connected.wait()
            await self._publish_window(pending)

    async def _publish_window(self, pending: dict[tuple[str, str], Reading]) -> int:
        """Publish up to PUBLISH_WINDOW readings of ``pending``; those acknowledged (or not
        publishable at all) leave it, the others stay for the next window or reconnect.
        Returns how many were tried."""
        size = PUBLISH_WINDOW
        if self.telemetry_rate is not None:  # a window is at most a tenth of a second's worth
            size = max(1, min(size, int(self.telemetry_rate / 10)))
        window = [pending[k] for k in itertools.islice(pending, size)]
        results = await asyncio.gather(
            *(self._publish_reading(r) for r in window), return_exceptions=True
        )
        for r, res in zip(window, results, strict=True):
            if res is None:
                key = (r.device, r.point)
                if pending.get(key) is r:  # not replaced by a newer value meanwhile
                    del pending[key]
            elif not isinstance(res, BrokerUnavailable):
                raise res
        return len(window)

    async def _publish_reading(self, r: Reading) -> None:
        try:
            topic = point_topic(self.venue, self.node, r.device, r.point)
        except SchemaError as exc:  # a name that cannot be a topic: drop it, loudly once
            self.stats.dropped_readings += 1
            self._malformed(f"{r.device}/{r.point}", f"reading not publishable: {exc}")
            return
        await self.hub.publish(topic, encode_value(r.value, r.ts_wall, r.quality))
        self.stats.published += 1

    # --- commands ---------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        # The set holds a strong reference: the loop keeps only weak ones to tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _malformed(self, topic: str, reason: str) -> None:
        self.stats.malformed += 1
        self.stats.last_malformed = f"{topic}: {reason}"
        if topic not in self._warned_topics and len(self._warned_topics) < 1000:
            self._warned_topics.add(topic)
            log.warning("mqtt %s: malformed: %s: %s", self.node, topic, reason)
        else:
            log.debug("mqtt %s: malformed: %s: %s", self.node, topic, reason)

    def _on_command(self, msg: aiomqtt.Message) -> None:
        topic = msg.topic.value
        props = msg.properties
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        payload = msg.payload if isinstance(msg.payload, bytes) else b""
        try:
            req = decode_command(topic, payload, response_topic)
        except SchemaError as exc:
            self._malformed(topic, str(exc))
            if exc.request_id is not None and exc.reply_to is not None:
                r = reply_error(exc.request_id, "bad_request", str(exc), time.time())
                self._spawn(self._send_reply(exc.reply_to, r, correlation))
            return
        if (req.venue, req.node) != (self.venue, self.node) or req.device not in self.devices:
            self._malformed(topic, "not a device of this node")
            return
        self.stats.commands += 1
        key = (req.device, req.id)
        if (earlier := self._replies.get(key)) is not None:
            self.stats.duplicates += 1
            self._spawn(self._answer_again(req, earlier, correlation))
            return
        refusal = self._refusal(req)
        if refusal is not None:
            r = reply_error(req.id, *refusal, time.time())
            self._spawn(self._send_reply(req.reply_to, r, correlation))
            return
        future: asyncio.Future[CommandReply] = asyncio.get_running_loop().create_future()
        self._replies[key] = future
        while len(self._replies) > self._dedup_size:
            self._replies.popitem(last=False)
        self._in_flight += 1
        self._spawn(self._execute(req, future, correlation))

    def _refusal(self, req: CommandRequest) -> tuple[ReplyCode, str] | None:
        """Why a new request is not run (its reply's code and reason), or None."""
        if self._closing or self._in_flight >= self._max_in_flight:
            return (
                "busy",
                "node is shutting down" if self._closing else "too many commands in flight",
            )
        now = time.time()
        age_s = now - req.ts_ms / 1000
        if abs(age_s) > self.command_max_age_s:
            what = "old" if age_s > 0 else "in the future (clock skew)"
            return (
                "expired",
                f"request is {abs(age_s):.1f} s {what}; limit {self.command_max_age_s:g} s",
            )
        if req.at_us is None:
            return None
        ahead_s = req.at_us / 1e6 - now
        if -ahead_s > self.command_max_late_s:
            return "expired", (
                f"its start time passed {-ahead_s:.1f} s ago; "
                f"limit {self.command_max_late_s:g} s (not replayed late)"
            )
        if ahead_s > self.command_max_ahead_s:
            return (
                "bad_request",
                f"'at' is {ahead_s:.1f} s ahead; limit {self.command_max_ahead_s:g} s",
            )
        return None

    async def _execute(
        self, req: CommandRequest, future: asyncio.Future[CommandReply], correlation: Any
    ) -> None:
        assert self.command_handler is not None
        started: float | None = None
        t0 = time.monotonic()
        try:
            if req.at_us is not None:  # a scheduled command: wait for its time on this clock
                await until_wall(req.at_us / 1e6)
                started = time.time()  # late if the request came after its time: said below
            t0 = time.monotonic()
            # asyncio.timeout, not wait_for: no extra task per command (3.11).
            async with asyncio.timeout(self.command_timeout_s):
                result = await self.command_handler(req.device, req.name, req.args)
            reply = reply_ok(req.id, result, time.time())
            encode_reply(reply)  # a result that cannot be sent is the handler's error
        except CommandError as exc:
            reply = reply_error(req.id, "refused", str(exc), time.time())
        except DeviceUnavailable as exc:
            reply = reply_error(req.id, "unavailable", str(exc), time.time())
        except TimeoutError:
            why = f"no result within {self.command_timeout_s:g} s"
            reply = reply_error(req.id, "timeout", why, time.time())
        except Exception as exc:  # a handler bug must answer, not kill the link
            log.exception("mqtt %s: command %s/%s failed", self.node, req.device, req.name)
            reply = reply_error(req.id, "internal", f"{type(exc).__name__}: {exc}", time.time())
        finally:
            self._in_flight -= 1
        self.stats.latencies_s.append(time.monotonic() - t0)
        if not reply.ok:
            self.stats.command_errors += 1
        if started is not None:
            reply = dataclasses.replace(reply, started_us=us(started))
        future.set_result(reply)
        await self._send_reply(req.reply_to, reply, correlation)

    def _on_time(self, msg: aiomqtt.Message) -> None:
        """A clock probe: answer with when it arrived and when the answer leaves."""
        arrived = time.time()
        payload = msg.payload if isinstance(msg.payload, bytes) else b""
        try:
            req = decode_time_request(payload)
        except SchemaError as exc:
            self._malformed(msg.topic.value, str(exc))
            return
        self.stats.clock_probes += 1

        async def answer() -> None:
            reply = TimeReply(req.id, req.t0_us, us(arrived), us(time.time()))
            with contextlib.suppress(BrokerUnavailable):
                await self.hub.publish(req.reply_to, encode_time_reply(reply), qos=0)

        self._spawn(answer())

    async def _answer_again(
        self, req: CommandRequest, earlier: asyncio.Future[CommandReply], correlation: Any
    ) -> None:
        reply = await asyncio.shield(earlier)  # a duplicate of a running command waits for it
        await self._send_reply(req.reply_to, reply, correlation)

    async def _send_reply(self, topic: str, reply: CommandReply, correlation: Any) -> None:
        props = None
        if isinstance(correlation, bytes):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation
        try:
            await self.hub.publish(topic, encode_reply(reply), qos=1, properties=props)
        except BrokerUnavailable as exc:
            # The requester's QoS 1 redelivery, answered from the cache, gets it there.
            log.debug("mqtt %s: reply %s not sent: %s", self.node, reply.id, exc)
