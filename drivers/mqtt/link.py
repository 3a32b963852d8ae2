"""A node's link to the MQTT broker: birth, LWT death and the live telemetry feed.

The node announces itself with a retained ``online`` birth on ``…/{node}/$state`` and leaves a
retained ``offline`` LWT with the broker, so every subscriber (another node, a dashboard) knows
within one and a half keep-alive periods when this node dies. Readings go out at QoS 1. On a
broker outage the supervisor reconnects with capped, jittered backoff, republishes the birth,
and sends the readings it had taken but not yet delivered; the durable record is the telemetry
store, the MQTT feed is the live view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

import aiomqtt

from drivers.model import Reading
from drivers.mqtt.schema import encode_state, encode_value, node_state_topic, point_topic

log = logging.getLogger(__name__)
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 10.0


class EndOfFeed(Exception):
    """Raised by a feed's ``next_batch`` when it is closed: the link says goodbye and ends."""


class MqttNodeLink:
    def __init__(
        self,
        host: str,
        port: int,
        venue: str,
        node: str,
        devices: list[str],
        keepalive_s: int = 10,
    ) -> None:
        self.host, self.port, self.venue, self.node = host, port, venue, node
        self.devices = devices
        self.keepalive_s = keepalive_s
        self.connected = asyncio.Event()
        self.published = 0
        self.reconnects = 0
        self._state_topic = node_state_topic(venue, node)

    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(
            self._state_topic, encode_state("offline", time.time()), qos=1, retain=True
        )
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=f"flytower-{self.venue}-{self.node}",
            will=will,
            keepalive=self.keepalive_s,
            timeout=5,
        )

    async def run(self, next_batch: Callable[[], Awaitable[list[Reading]]]) -> None:
        """Publish what ``next_batch`` yields; survive broker restarts.

        Returns when ``next_batch`` raises ``EndOfFeed`` (its feed was closed): everything
        taken so far has been published and the node has said ``offline``, as a clean
        shutdown should. Stopping by closing the feed, not by cancelling, means a cancel
        can never be mistaken for a broker failure and swallowed by the reconnect loop.
        """
        backoff = BACKOFF_START_S
        pending: list[Reading] = []
        warned = False
        first = True
        while True:
            try:
                async with self._client() as client:
                    await client.publish(
                        self._state_topic,
                        encode_state("online", time.time(), devices=self.devices),
                        qos=1,
                        retain=True,
                    )
                    if warned:
                        log.info("mqtt %s:%d: recovered", self.host, self.port)
                        warned = False
                    if not first:
                        self.reconnects += 1
                    first = False
                    backoff = BACKOFF_START_S
                    self.connected.set()
                    while True:
                        if not pending:
                            try:
                                pending = await next_batch()
                            except EndOfFeed:
                                await self._goodbye(client)
                                return
                        while pending:
                            await self._publish(client, pending[0])
                            pending.pop(0)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                if not warned:
                    log.warning("mqtt %s:%d: %s", self.host, self.port, exc)
                    warned = True
            await asyncio.sleep(random.uniform(0.5, 1.0) * backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _publish(self, client: aiomqtt.Client, r: Reading) -> None:
        topic = point_topic(self.venue, self.node, r.device, r.point)
        await client.publish(topic, encode_value(r.value, r.ts_wall, r.quality), qos=1)
        self.published += 1

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            await asyncio.wait_for(
                client.publish(
                    self._state_topic, encode_state("offline", time.time()), qos=1, retain=True
                ),
                timeout=1.0,
            )
