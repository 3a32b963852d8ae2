"""A node's clock, seen from a controller: its offset, measured over the broker.

NTP's on-wire method (RFC 5905, §8) over MQTT: the requester publishes a probe stamped with its
clock (t0) on the node's ``$time`` topic; the node answers with when the probe arrived (t1)
and when its answer left (t2), both on its clock; the requester stamps the answer's arrival
(t3). Then

    offset = ((t1 - t0) + (t2 - t3)) / 2      (the node's clock minus ours)
    delay  = (t3 - t0) - (t2 - t1)            (the round trip, the node's own time taken out)

and, as NTP's clock filter does, the sample with the shortest delay is kept: a sample delayed
on one way only (a broker busy with telemetry) errs by up to half its delay, and the shortest
round trip bounds that error best. The estimate's error bound is half that delay.

Probes go at QoS 0: a lost or late one is worthless and is simply not counted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import aiomqtt

from drivers.mqtt.hub import MqttHub
from drivers.mqtt.schema import (
    SchemaError,
    TimeReply,
    clock_inbox,
    decode_time_reply,
    encode_time_request,
    time_topic,
)


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """A node's clock against ours: ``offset_s`` is its clock minus ours, within
    ``error_s`` (half the round trip of the best sample)."""

    node: str
    offset_s: float
    rtt_s: float
    samples: int  # answered, of those sent
    sent: int
    measured_at: float  # our clock (epoch s)

    @property
    def error_s(self) -> float:
        return self.rtt_s / 2

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "node": self.node,
            "offset_ms": round(self.offset_s * 1000, 3),
            "error_ms": round(self.error_s * 1000, 3),
            "rtt_ms": round(self.rtt_s * 1000, 3),
            "samples": self.samples,
            "sent": self.sent,
            "measured_at": self.measured_at,
        }


class ClockProbe:
    """Measures nodes' clocks over ``hub`` (one inbox, answers matched by id)."""

    def __init__(self, hub: MqttHub, venue: str, name: str | None = None) -> None:
        self.hub = hub
        self.venue = venue
        self.inbox = clock_inbox(venue, name or f"clock-{uuid.uuid4().hex[:12]}")
        self.malformed = 0
        self._waiting: dict[str, asyncio.Future[tuple[TimeReply, float]]] = {}
        self._subscribed = False

    def _on_reply(self, msg: aiomqtt.Message) -> None:
        arrived = time.time()  # t3, as the answer is read
        try:
            reply = decode_time_reply(msg.payload if isinstance(msg.payload, bytes) else b"")
        except SchemaError:
            self.malformed += 1
            return
        fut = self._waiting.get(reply.id)
        if fut is not None and not fut.done():
            fut.set_result((reply, arrived))

    async def measure(
        self, node: str, samples: int = 8, timeout_s: float = 0.5, gap_s: float = 0.01
    ) -> ClockEstimate:
        """Probe ``node`` ``samples`` times, one after the other; TimeoutError if none of them
        was answered within ``timeout_s``."""
        if not self._subscribed:
            await self.hub.subscribe(self.inbox, self._on_reply, qos=0)
            self._subscribed = True
        topic = time_topic(self.venue, node)
        best: tuple[float, float] | None = None  # (delay, offset)
        answered = 0
        loop = asyncio.get_running_loop()
        for i in range(samples):
            request_id = uuid.uuid4().hex
            fut: asyncio.Future[tuple[TimeReply, float]] = loop.create_future()
            self._waiting[request_id] = fut
            try:
                t0 = time.time()
                await self.hub.publish(
                    topic, encode_time_request(request_id, t0, self.inbox), qos=0
                )
                reply, t3 = await asyncio.wait_for(fut, timeout_s)
            except TimeoutError:
                continue
            finally:
                del self._waiting[request_id]
            answered += 1
            t0_, t1, t2 = reply.t0_us / 1e6, reply.t1_us / 1e6, reply.t2_us / 1e6
            delay = max(0.0, (t3 - t0_) - (t2 - t1))
            offset = ((t1 - t0_) + (t2 - t3)) / 2
            if best is None or delay < best[0]:
                best = (delay, offset)
            if i + 1 < samples:
                await asyncio.sleep(gap_s)
        if best is None:
            raise TimeoutError(f"node {node} answered none of {samples} clock probes")
        return ClockEstimate(node, best[1], best[0], answered, samples, time.time())
