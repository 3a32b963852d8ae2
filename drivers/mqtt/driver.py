"""MQTT device driver: devices on the broker, as ``DeviceDriver``s sharing one ``MqttHub``.

Two kinds of device, chosen by the transport:

- ``MqttTransport(node=…)``: a device that speaks our schema (docs/interfaces/mqtt.md), served
  by another Flytower node or a gateway. The driver subscribes to the node's ``$state`` first,
  then to ``…/{device}/+`` (points and the device's ``$state``). Point messages become readings
  with the sender's quality and timestamp. Health follows the Sparkplug-style rules: a node
  whose last state is ``offline`` (its goodbye or its will) makes its devices offline and its
  data is ignored; a will from an older session than the latest birth is stale and ignored;
  the device's own ``$state`` gives its state and reason. Commands are sent on
  ``…/cmd/{name}`` and answered on this service's reply inbox, matched by request id.
- ``MqttTransport(base=…)``: a third-party device mapped by its profile's ``PointSpec.mqtt``
  (``mapping.py``). Health follows message flow; commands are point writes on ``set_topic``.

A payload that does not decode is counted (``malformed``, ``last_malformed``) and publishes
nothing; it never ends the driver. If the profile judges health by ``timeout`` or ``heartbeat``,
a device silent for ``offline_after_failures`` periods of ``poll_hz`` goes offline.

Incoming messages arrive in the hub's dispatch callback, which must not block; readings go
through a bounded queue to the sink (overflow policy: the newest reading is dropped and
counted, so a stalled sink cannot grow memory without bound).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import aiomqtt

from drivers.base import DeviceUnavailable, HealthSink, HealthTracker, ReadingSink, StopFlag
from drivers.model import (
    CommandError,
    Device,
    DriverStats,
    Health,
    HealthState,
    MqttTransport,
    PointSpec,
    Profile,
    Quality,
    Reading,
    Value,
)
from drivers.mqtt import mapping
from drivers.mqtt.hub import BrokerUnavailable, MqttHub
from drivers.mqtt.schema import (
    STATE,
    CommandReply,
    SchemaError,
    command_topic,
    decode_device_state,
    decode_node_state,
    decode_point,
    decode_reply,
    device_filter,
    encode_command,
    node_state_topic,
    reply_inbox,
)

log = logging.getLogger(__name__)
QUEUE_SIZE = 10_000


class Requester:
    """The requesting side of commands for every driver on one hub: one reply inbox, one
    subscription, replies matched to waiting requests by id."""

    def __init__(self, hub: MqttHub, venue: str, name: str | None = None) -> None:
        self.hub = hub
        self.inbox = reply_inbox(venue, name or f"req-{uuid.uuid4().hex[:12]}")
        self.malformed = 0
        self._waiting: dict[str, asyncio.Future[CommandReply]] = {}
        self._subscribed = False

    async def _ensure_subscribed(self) -> None:
        if not self._subscribed:
            self._subscribed = True
            await self.hub.subscribe(self.inbox, self._on_reply, qos=1)

    def _on_reply(self, msg: aiomqtt.Message) -> None:
        try:
            reply = decode_reply(msg.payload if isinstance(msg.payload, bytes) else b"")
        except SchemaError as exc:
            self.malformed += 1
            log.debug("malformed reply on %s: %s", self.inbox, exc)
            return
        future = self._waiting.get(reply.id)
        if future is not None and not future.done():  # late and duplicate replies: ignored
            future.set_result(reply)

    async def request(
        self,
        topic: str,
        args: Mapping[str, Any],
        timeout_s: float,
        at_wall: float | None = None,
        request_id: str | None = None,
    ) -> CommandReply:
        """Send a command and wait for its reply; ``at_wall`` (epoch s, the node's clock) has
        the node run it then, and the reply says when it started (``started_us``). The wait
        for the reply is ``timeout_s`` past that time. ``request_id`` (default: a new one):
        a node runs a request id once, and answers a repeat from its cache."""
        await self._ensure_subscribed()
        request_id = request_id or uuid.uuid4().hex
        if request_id in self._waiting:
            raise ValueError(f"request {request_id} is already waiting for its reply")
        future: asyncio.Future[CommandReply] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            payload = encode_command(request_id, args, time.time(), self.inbox, at_wall)
            await self.hub.publish(topic, payload, qos=1, timeout_s=timeout_s)
            ahead = max(0.0, at_wall - time.time()) if at_wall is not None else 0.0
            return await asyncio.wait_for(future, timeout_s + ahead)
        finally:
            del self._waiting[request_id]


def silence_period_s(profile: Profile, poll_hz: float) -> float:
    """How often a device that pushes its readings is expected to speak: the shortest
    ``stale_after_s`` of its points (a battery sensor that wakes every few hours says so there),
    else one period of the device's ``poll_hz``."""
    windows = [p.stale_after_s for p in profile.points.values() if p.stale_after_s is not None]
    return min(windows) if windows else 1.0 / poll_hz


class MqttDeviceDriver:
    """One device on the broker; see the module docstring."""

    def __init__(
        self,
        device: Device,
        hub: MqttHub,
        venue: str,
        sink: ReadingSink,
        on_health: HealthSink | None = None,
        *,
        requester: Requester | None = None,
        command_timeout_s: float = 5.0,
    ) -> None:
        if not isinstance(device.transport, MqttTransport):
            raise TypeError(f"{device.id}: an MQTT driver needs an mqtt transport")
        self.device = device
        self.transport = device.transport
        self.hub = hub
        self.venue = venue
        self.command_timeout_s = command_timeout_s
        self._requester = requester
        self._sink = sink
        profile = device.profile
        self._tracker = HealthTracker(
            device.id, log, on_health, profile.health.offline_after_failures
        )
        self.stats: DriverStats = self._tracker.stats
        self.malformed = 0
        self.last_malformed = ""
        self.ignored = 0  # data from a node whose last state is offline
        self.dropped = 0  # queue overflow
        # a message's readings wait here as one list until ``run`` hands them to the sink
        # (a queue step per reading cost more than mapping it, at 80 000 readings/s)
        self._pending: collections.deque[list[Reading]] = collections.deque()
        self._queued = 0  # readings in _pending, at most QUEUE_SIZE
        self._arrived = asyncio.Event()
        self._stop = StopFlag()
        self._last_message = time.monotonic()
        self._node_online: bool | None = None
        self._node_reason = ""
        self._node_session: int | None = None
        self._device_state: tuple[HealthState, str] | None = None
        self._silence_s: float | None = None
        if profile.health.kind in ("timeout", "heartbeat"):
            self._silence_s = profile.health.offline_after_failures * silence_period_s(
                profile, device.poll_hz
            )
        self._topics: dict[str, list[mapping.Mapped]] = {}
        if self.transport.base is not None:
            for spec in profile.points.values():
                if spec.mqtt is not None and spec.access.readable:
                    topic = mapping.resolve(self.transport.base, spec.mqtt.topic)
                    self._topics.setdefault(topic, []).append(mapping.Mapped(spec))

    @property
    def health(self) -> Health:
        return self._tracker.health

    @property
    def remote(self) -> bool:
        """A device of another Flytower node (``node=``): its commands run there, and may be
        scheduled (``at_wall``)."""
        return self.transport.node is not None

    def report(self) -> dict[str, Any]:
        """Statistics with what this driver adds: malformed, ignored and dropped counts."""
        return {
            **self.stats.as_dict(),
            "reconnects": self.hub.stats.reconnects,
            "malformed": self.malformed,
            "last_malformed": self.last_malformed,
            "ignored": self.ignored,
            "dropped": self.dropped,
        }

    def stop(self) -> None:
        self._stop.set()

    # --- run --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Subscribe, then deliver readings and judge health until ``stop()``."""
        t = self.transport
        if t.node is not None:
            # $state first: its retained birth is known before the first point arrives.
            await self.hub.subscribe(node_state_topic(self.venue, t.node), self._on_node_state)
            await self.hub.subscribe(
                device_filter(self.venue, t.node, self.device.id), self._on_native
            )
        else:
            for topic in self._topics:
                await self.hub.subscribe(topic, self._on_mapped)
        pending = self._pending
        while not self._stop.is_set():
            if not pending:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), 0.5)
                except TimeoutError:
                    self._judge()
                    continue
            batch: list[Reading] = []
            while pending and len(batch) < 1000:
                batch.extend(pending.popleft())
            self._queued -= len(batch)
            await self._sink(batch)
            self._judge()
        self._tracker.set(HealthState.OFFLINE, "stopped")

    def _judge(self) -> None:
        """Health from what is known: broker, node state, device state, message flow."""
        if not self.hub.connected.is_set():
            self._tracker.set(HealthState.OFFLINE, "broker not connected")
        elif self._node_online is False:
            self._tracker.set(
                HealthState.OFFLINE, f"node {self.transport.node} offline ({self._node_reason})"
            )
        elif self._device_state is not None and self._device_state[0] is not HealthState.ONLINE:
            self._tracker.set(*self._device_state)
        elif (
            self._silence_s is not None and time.monotonic() - self._last_message > self._silence_s
        ):
            self._tracker.set(HealthState.OFFLINE, f"no message for {self._silence_s:g} s")
        elif self._device_state is not None or self.stats.requests:
            self._tracker.succeeded()

    # --- incoming -------------------------------------------------------------------------

    def _bad(self, topic: str, reason: str) -> None:
        self.malformed += 1
        self.stats.errors += 1
        self.last_malformed = f"{topic}: {reason}"
        log.debug("%s: malformed %s: %s", self.device.id, topic, reason)

    def _emit(self, readings: list[Reading]) -> None:
        """One message's readings to ``run``; all of them are dropped (and counted) when
        ``QUEUE_SIZE`` readings are waiting already."""
        n = len(readings)
        if not n:
            return
        self._last_message = time.monotonic()
        self.stats.requests += n
        if self._queued + n > QUEUE_SIZE:
            self.dropped += n
            return
        self._pending.append(readings)
        self._queued += n
        self._arrived.set()

    def _on_node_state(self, msg: aiomqtt.Message) -> None:
        try:
            state = decode_node_state(_payload(msg))
        except SchemaError as exc:
            self._bad(msg.topic.value, str(exc))
            return
        if state.state == "online":
            self._node_online, self._node_session = True, state.session
        elif self._node_session is None or state.session == self._node_session:
            self._node_online, self._node_reason = False, state.reason or "shutdown"
        # else: the will of an older session, delivered late: the node is back already.
        self._judge()

    def _on_native(self, msg: aiomqtt.Message) -> None:
        topic = msg.topic.value
        if topic.endswith(f"/{STATE}"):
            try:
                ds = decode_device_state(_payload(msg))
            except SchemaError as exc:
                self._bad(topic, str(exc))
                return
            self._device_state = (ds.state, ds.reason)
            self._judge()
            return
        try:
            pm = decode_point(topic, _payload(msg))
        except SchemaError as exc:
            self._bad(topic, str(exc))
            return
        spec = self.device.profile.points.get(pm.point)
        if spec is None:
            self._bad(topic, f"profile '{self.device.profile.id}' has no point '{pm.point}'")
            return
        if self._node_online is False:
            self.ignored += 1  # Sparkplug: data from a dead node is not current
            return
        value = pm.value
        if value is not None:
            try:
                value = mapping.to_value(spec, value)
            except SchemaError as exc:
                self._bad(topic, str(exc))
                return
        now = time.monotonic()
        self._emit([Reading(self.device.id, pm.point, value, now, pm.ts_ms / 1000, pm.quality)])

    def _on_mapped(self, msg: aiomqtt.Message) -> None:
        topic = msg.topic.value
        try:
            doc = mapping.parse_payload(_payload(msg))
        except SchemaError as exc:
            self._bad(topic, str(exc))
            return
        mono, wall = time.monotonic(), time.time()
        device = self.device.id
        readings: list[Reading] = []
        good = Quality.GOOD
        for point in self._topics.get(topic, ()):
            try:
                value = point.read(doc)
            except SchemaError as exc:
                self._bad(topic, str(exc))
                continue
            if value is not None:  # None: this message does not carry the point
                readings.append(Reading(device, point.name, value, mono, wall, good))
        self._emit(readings)

    # --- commands ---------------------------------------------------------------------------

    async def command(
        self,
        name: str,
        args: Mapping[str, Any],
        *,
        at_wall: float | None = None,
        request_id: str | None = None,
    ) -> list[tuple[str, Value]]:
        """Validate against the profile, then execute on the device; ``at_wall`` (epoch s):
        a device of another node runs it at that time of that node's clock; ``request_id``:
        sent with it (a node runs an id once).

        CommandError: refused (by the profile here, or by the remote node, with its reason);
        DeviceUnavailable: no broker, no reply in time, or the device cannot act now.
        """
        writes = self.device.profile.resolve_command(name, args)
        t0 = time.monotonic()
        try:
            if self.transport.node is not None:
                done = await self._remote(name, args, writes, at_wall, request_id)
            else:
                done = await self._write_points(name, writes)
        except DeviceUnavailable as exc:
            self._tracker.failed(str(exc))
            raise
        self.stats.record(time.monotonic() - t0)
        return done

    async def _remote(
        self,
        name: str,
        args: Mapping[str, Any],
        writes: list[tuple[PointSpec, Value]],
        at_wall: float | None = None,
        request_id: str | None = None,
    ) -> list[tuple[str, Value]]:
        assert self.transport.node is not None
        if self._node_online is False:  # its will or goodbye: nobody would run it
            raise DeviceUnavailable(
                f"{self.device.id}: node {self.transport.node} is offline ({self._node_reason})"
            )
        if self._requester is None:
            self._requester = Requester(self.hub, self.venue)
        topic = command_topic(self.venue, self.transport.node, self.device.id, name)
        try:
            reply = await self._requester.request(
                topic, args, self.command_timeout_s, at_wall, request_id
            )
        except BrokerUnavailable as exc:
            raise DeviceUnavailable(f"{self.device.id}: {exc}") from exc
        except TimeoutError:
            raise DeviceUnavailable(
                f"{self.device.id}: no reply to '{name}' within {self.command_timeout_s:g} s"
            ) from None
        if not reply.ok:
            if reply.code in ("refused", "bad_request"):
                raise CommandError(reply.error)
            raise DeviceUnavailable(f"{self.device.id}: {reply.code}: {reply.error}")
        return _writes_of(reply.result) or [(p.name, v) for p, v in writes]

    async def _write_points(
        self, name: str, writes: list[tuple[PointSpec, Value]]
    ) -> list[tuple[str, Value]]:
        assert self.transport.base is not None
        encoded = []
        for spec, value in writes:
            try:
                rel, payload = mapping.encode_set(spec, value)
            except SchemaError as exc:
                raise CommandError(f"{name}: {exc}") from exc
            encoded.append((mapping.resolve(self.transport.base, rel), payload, spec.name, value))
        done: list[tuple[str, Value]] = []
        for topic, payload, point, value in encoded:
            try:
                await self.hub.publish(topic, payload, qos=1, timeout_s=self.command_timeout_s)
            except BrokerUnavailable as exc:
                raise DeviceUnavailable(f"{self.device.id}: {exc}") from exc
            done.append((point, value))
        return done


def _payload(msg: aiomqtt.Message) -> bytes:
    return msg.payload if isinstance(msg.payload, bytes) else b""


def _writes_of(result: Any) -> list[tuple[str, Value]] | None:
    """The remote node's writes, if its result is the usual ``[[point, value], ...]``."""
    if not isinstance(result, list):
        return None
    out: list[tuple[str, Value]] = []
    for item in result:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], bool | int | float | str)
        ):
            return None
        out.append((item[0], item[1]))
    return out
