"""The node's MQTT link against a real Mosquitto, checked with Mosquitto's own client.

What the link publishes is read back with ``mosquitto_sub``, an independent implementation, so a
bug shared by our publisher and our decoder cannot hide itself. Each test uses its own venue id,
so the retained messages of one test never reach another's subscriber on the shared broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from drivers.model import Quality, Reading
from drivers.mqtt.link import EndOfFeed, MqttNodeLink
from drivers.mqtt.schema import PointMessage, decode_point, node_state_topic
from edge.broker import EmbeddedBroker
from edge.bus import Bus, Closed, Overflow, Subscription
from tests.conftest import RealServer, free_port, start_mosquitto, stop_process, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NODE = "stage"


def new_venue() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def reading(
    device: str, point: str, value: float | int | bool | None, quality: Quality = Quality.GOOD
) -> Reading:
    return Reading(device, point, value, time.monotonic(), time.time(), quality)


Feed = tuple[Subscription[Reading], Callable[[], Awaitable[list[Reading]]]]


def feed(bus: Bus[Reading]) -> Feed:
    """The link's feed as the service builds it: LATEST per point; closing it ends the link."""
    sub = bus.subscribe("mqtt", Overflow.LATEST, maxsize=100_000, key=lambda r: (r.device, r.point))

    async def next_batch() -> list[Reading]:
        try:
            return await sub.get_batch()
        except Closed:
            raise EndOfFeed from None

    return sub, next_batch


@contextlib.asynccontextmanager
async def running_link(
    link: MqttNodeLink, bus: Bus[Reading]
) -> AsyncIterator[tuple[asyncio.Task[None], Subscription[Reading]]]:
    """Run ``link`` on a feed from ``bus``; on exit close the feed and wait for it to return."""
    sub, next_batch = feed(bus)
    task = asyncio.create_task(link.run(next_batch), name="mqtt-link")
    try:
        yield task, sub
    finally:
        sub.close()
        done, _ = await asyncio.wait([task], timeout=10)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            pytest.fail("the link did not return within 10 s of its feed closing")
        await asyncio.gather(task, return_exceptions=True)


class MosquittoSub:
    """``mosquitto_sub`` as a child process; each message is one line: retained topic payload."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    @contextlib.asynccontextmanager
    async def run(
        cls, port: int, topic: str, count: int, *extra: str, wait_s: int = 10
    ) -> AsyncIterator[MosquittoSub]:
        proc = await asyncio.create_subprocess_exec(
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-t",
            topic,
            "-F",
            "%r %t %p",
            "-C",
            str(count),
            "-W",
            str(wait_s),
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            yield cls(proc)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.communicate()

    async def message(self, timeout_s: float = 10) -> tuple[bool, str, bytes]:
        """The next message as (retained, topic, payload)."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        if not line:
            err = b""
            if self.proc.stderr is not None:
                err = await asyncio.wait_for(self.proc.stderr.read(), 5)
            raise AssertionError(f"mosquitto_sub ended (rc {self.proc.returncode}): {err!r}")
        retained, topic, payload = line.rstrip(b"\n").split(b" ", 2)
        return retained == b"1", topic.decode(), payload


async def retained_state(port: int, venue: str, node: str = NODE) -> dict[str, Any]:
    """The retained node state, as a fresh subscriber sees it."""
    async with MosquittoSub.run(port, node_state_topic(venue, node), 1, wait_s=5) as s:
        retained, _, payload = await s.message()
    assert retained, "the node state must be retained"
    state = json.loads(payload)
    assert isinstance(state, dict)
    return state


def points_of(messages: list[tuple[bool, str, bytes]]) -> dict[tuple[str, str], PointMessage]:
    out = {}
    for _, topic, payload in messages:
        if not topic.endswith("/$state"):
            msg = decode_point(topic, payload)
            out[(msg.device, msg.point)] = msg
    return out


# --- (a) birth, points, goodbye -------------------------------------------------------------


async def test_link_publishes_birth_points_and_a_retained_goodbye(mosquitto: RealServer) -> None:
    venue = new_venue()
    bus: Bus[Reading] = Bus("readings")
    link = MqttNodeLink("127.0.0.1", mosquitto.port, venue, NODE, ["hoist-1", "hoist-2"])
    sent = [
        reading("hoist-1", "position", 2000.5),
        reading("hoist-1", "moving", True),
        reading("hoist-1", "fault_code", 0),
        reading("hoist-2", "position", None, Quality.BAD),
        reading("hoist-2", "velocity", float("nan")),  # JSON has no NaN: sent as null, bad
    ]
    async with running_link(link, bus) as (task, sub):
        await asyncio.wait_for(link.connected.wait(), 10)
        async with MosquittoSub.run(mosquitto.port, f"flytower/{venue}/#", 3 + len(sent)) as s:
            # The node's birth and one per device, retained: the subscription is live after.
            states = {}
            for _ in range(3):
                retained, topic, payload = await s.message()
                assert retained
                states[topic] = json.loads(payload)
            birth = states[f"flytower/{venue}/{NODE}/$state"]
            assert birth["state"] == "online"
            assert birth["devices"] == ["hoist-1", "hoist-2"]
            assert abs(birth["ts"] / 1000 - time.time()) < 60
            for device in ("hoist-1", "hoist-2"):
                assert states[f"flytower/{venue}/{NODE}/{device}/$state"]["state"] == "unknown"

            for r in sent:
                await bus.publish(r)
            got = points_of([await s.message() for _ in sent])

        assert set(got) == {(r.device, r.point) for r in sent}
        for r in sent:
            msg = got[(r.device, r.point)]
            assert (msg.venue, msg.node) == (venue, NODE)
            assert msg.ts_ms == round(r.ts_wall * 1000)
        assert got[("hoist-1", "position")].value == 2000.5
        assert got[("hoist-1", "position")].quality is Quality.GOOD
        assert got[("hoist-1", "moving")].value is True
        assert got[("hoist-1", "fault_code")].value == 0
        assert got[("hoist-2", "position")].value is None
        assert got[("hoist-2", "position")].quality is Quality.BAD
        assert got[("hoist-2", "velocity")].value is None
        assert got[("hoist-2", "velocity")].quality is Quality.BAD

        sub.close()  # a clean shutdown: the link drains, says offline and returns
        await asyncio.wait_for(task, 5)
        assert task.result() is None
    assert link.published == len(sent)
    state = await retained_state(mosquitto.port, venue)
    assert state["state"] == "offline"


# --- (b) last will ----------------------------------------------------------------------------

LINK_PROCESS = """
import asyncio, sys
from drivers.mqtt.link import MqttNodeLink

async def main() -> None:
    port, venue, node = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    link = MqttNodeLink("127.0.0.1", port, venue, node, ["hoist-1"], keepalive_s=1)
    forever = asyncio.Event()

    async def next_batch():
        await forever.wait()
        return []

    task = asyncio.create_task(link.run(next_batch))
    await link.connected.wait()
    print("up", flush=True)
    await task

asyncio.run(main())
"""


async def test_a_killed_node_is_announced_offline_by_its_will(mosquitto: RealServer) -> None:
    venue = new_venue()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LINK_PROCESS,
        str(mosquitto.port),
        venue,
        NODE,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line == b"up\n", (line, await proc.stderr.read() if proc.stderr else b"")
        async with MosquittoSub.run(mosquitto.port, node_state_topic(venue, NODE), 2) as s:
            retained, _, payload = await s.message()
            birth = json.loads(payload)
            assert retained and birth["state"] == "online"
            os.kill(proc.pid, signal.SIGKILL)  # no goodbye: only the broker can tell
            await asyncio.wait_for(proc.wait(), 5)
            _, _, payload = await s.message(timeout_s=5)
            death = json.loads(payload)
            assert death["state"] == "offline" and death["reason"] == "lost"
            assert death["session"] == birth["session"]  # it names the session it ends
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()
    assert (await retained_state(mosquitto.port, venue))["state"] == "offline"


# --- (c) broker restart -----------------------------------------------------------------------


async def test_link_survives_a_broker_restart(tmp_path: Path) -> None:
    """Birth again after the restart, and readings taken while the broker was down still arrive.

    The broker keeps its state on disk, and a persistent-session probe subscribed before the
    outage, so everything the link publishes after the restart is queued for the probe:
    nothing depends on which of the probe and the link reconnects first.
    """
    folder, port, venue = tmp_path / "broker", free_port(), new_venue()
    probe = ("-c", "-q", "1", "-i", f"probe-{venue}")
    broker = await asyncio.to_thread(start_mosquitto, folder, port, True)
    bus: Bus[Reading] = Bus("readings")
    link = MqttNodeLink("127.0.0.1", port, venue, NODE, ["hoist-1"], keepalive_s=2)
    try:
        async with running_link(link, bus) as (task, _):
            await asyncio.wait_for(link.connected.wait(), 10)
            async with MosquittoSub.run(port, f"flytower/{venue}/#", 3, *probe) as s:
                states = {(await s.message())[1] for _ in range(2)}  # node and device births
                assert states == {
                    node_state_topic(venue, NODE),
                    f"flytower/{venue}/{NODE}/hoist-1/$state",
                }
                await bus.publish(reading("hoist-1", "position", 1.0))
                assert decode_point(*(await s.message())[1:]).value == 1.0

            await stop_process(broker)
            restarted_at = time.time()
            await asyncio.sleep(0.3)  # let the link's socket see the broker go
            down = [reading("hoist-1", "position", 2.0), reading("hoist-1", "load", 180.5)]
            for r in down:
                await bus.publish(r)

            async def noticed() -> bool:
                return not link.connected.is_set()

            await wait_until(noticed, 10, "the link to notice that the broker is gone")
            await asyncio.sleep(0.5)
            broker = await asyncio.to_thread(start_mosquitto, folder, port, True)

            async def reconnected() -> bool:
                return link.reconnects >= 1 and link.connected.is_set()

            await wait_until(reconnected, 15, "the link to reconnect to the restarted broker")
            after = [reading("hoist-1", "velocity", 3.5), reading("hoist-1", "moving", False)]
            for r in after:
                await bus.publish(r)

            async def all_published() -> bool:
                return link.published >= 1 + len(down) + len(after)

            await wait_until(all_published, 10, "the link to publish the readings")
            assert not task.done()

            # The probe's session: birth, the outage's readings and the later ones, queued.
            messages = []
            async with MosquittoSub.run(port, f"flytower/{venue}/#", 50, *probe, wait_s=3) as s:
                with contextlib.suppress(TimeoutError, AssertionError):
                    while True:
                        messages.append(await s.message(timeout_s=2))
                        got = points_of(messages)
                        if all((r.device, r.point) in got for r in down + after) and any(
                            t.endswith("$state") for _, t, _ in messages
                        ):
                            break
        births = [json.loads(p) for _, t, p in messages if t.endswith("/$state")]
        assert any(b["state"] == "online" and b["ts"] >= restarted_at * 1000 for b in births), (
            f"no birth published after the restart in {births}"
        )
        got = points_of(messages)
        for r in down + after:
            assert (r.device, r.point) in got, f"{r.point} was not delivered: {messages}"
            assert got[(r.device, r.point)].value == r.value
        assert link.reconnects >= 1
        assert (await retained_state(port, venue))["state"] == "offline"  # clean goodbye
    finally:
        await stop_process(broker)


# --- (d) the embedded broker ------------------------------------------------------------------


def tcp_listeners(port: int) -> list[str]:
    """Local addresses (kernel hex) of every socket in LISTEN state on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if fields[3] == "0A" and int(hex_port, 16) == port:
                    found.append(address)
    return found


async def test_embedded_broker_carries_messages_and_listens_on_loopback_only() -> None:
    port = free_port()
    async with EmbeddedBroker("127.0.0.1", port):
        listeners = tcp_listeners(port)
        assert listeners, f"nothing listens on port {port}"
        assert all(a == "0100007F" for a in listeners), f"listening on {listeners}"
        assert "00000000" not in listeners

        async with (
            aiomqtt.Client("127.0.0.1", port, identifier="probe-sub") as sub,
            aiomqtt.Client("127.0.0.1", port, identifier="probe-pub") as pub,
        ):
            await sub.subscribe("flytower/embedded/#", qos=1)
            await pub.publish(
                "flytower/embedded/stage/hoist-1/position", b'{"v":1.5,"ts":1,"q":"good"}', qos=1
            )

            async def first() -> aiomqtt.Message:
                async for msg in sub.messages:
                    return msg
                raise AssertionError("the message feed ended")

            msg = await asyncio.wait_for(first(), 5)
            assert msg.topic.value == "flytower/embedded/stage/hoist-1/position"
            assert isinstance(msg.payload, bytes)
            assert decode_point(msg.topic.value, msg.payload).value == 1.5
    assert tcp_listeners(port) == []


async def test_link_through_the_embedded_broker() -> None:
    port, venue = free_port(), new_venue()
    bus: Bus[Reading] = Bus("readings")
    async with EmbeddedBroker("127.0.0.1", port):
        link = MqttNodeLink("127.0.0.1", port, venue, NODE, ["hoist-1"])  # amqtt: 3.1.1 only
        async with aiomqtt.Client("127.0.0.1", port, identifier="probe") as probe:
            async with running_link(link, bus) as (task, sub):
                await asyncio.wait_for(link.connected.wait(), 10)
                await probe.subscribe(f"flytower/{venue}/#", qos=1)
                await bus.publish(reading("hoist-1", "position", 42.0))
                seen: list[tuple[str, bytes]] = []

                async def collect() -> None:
                    async for msg in probe.messages:
                        assert isinstance(msg.payload, bytes)
                        seen.append((msg.topic.value, msg.payload))
                        if msg.topic.value.endswith("/position"):
                            return

                await asyncio.wait_for(collect(), 5)
                point = decode_point(*seen[-1])
                assert (point.device, point.point, point.value) == ("hoist-1", "position", 42.0)
                sub.close()
                await asyncio.wait_for(task, 5)
            await probe.subscribe(node_state_topic(venue, NODE), qos=1)

            async def state() -> dict[str, Any]:
                async for msg in probe.messages:
                    if msg.topic.value == node_state_topic(venue, NODE):
                        assert isinstance(msg.payload, bytes)
                        doc = json.loads(msg.payload)
                        assert isinstance(doc, dict)
                        if doc["state"] == "offline":
                            return doc
                raise AssertionError("the message feed ended")

            assert (await asyncio.wait_for(state(), 5))["state"] == "offline"


async def test_a_telemetry_rate_caps_the_live_feed_and_every_point_ends_newest(
    mosquitto: RealServer,
) -> None:
    """At 4 000 readings/s offered and a cap of 400 messages/s, the link publishes no faster
    than the cap (plus its one-second burst), and every point still ends on its newest value."""
    venue, rate, points = new_venue(), 400.0, [f"p{i:03d}" for i in range(200)]
    bus: Bus[Reading] = Bus("readings")
    link = MqttNodeLink("127.0.0.1", mosquitto.port, venue, NODE, ["s"], telemetry_rate=rate)
    newest: dict[str, float] = {}
    async with (
        running_link(link, bus),
        aiomqtt.Client("127.0.0.1", mosquitto.port) as client,
    ):
        await asyncio.wait_for(link.connected.wait(), 10)
        await client.subscribe(f"flytower/{venue}/{NODE}/s/+")

        async def collect() -> None:
            async for m in client.messages:
                if isinstance(m.payload, bytes) and not m.topic.value.endswith("$state"):
                    msg = decode_point(m.topic.value, m.payload)
                    newest[msg.point] = float(msg.value)  # type: ignore[arg-type]

        collector = asyncio.create_task(collect())
        try:
            start, before = time.monotonic(), link.published
            for value in range(10):
                for p in points:
                    await bus.publish(reading("s", p, float(value)))
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - start
            sent = link.published - before
            assert sent <= rate * (elapsed + 1.0) + rate / 10, (sent, elapsed)
            assert sent < 10 * len(points)  # conflated: not every reading went out

            async def all_newest() -> bool:
                return len(newest) == len(points) and set(newest.values()) == {9.0}

            await wait_until(all_newest, 10, "every point's newest value")
        finally:
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)


def test_a_telemetry_rate_must_be_positive() -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="telemetry_rate"):
            MqttNodeLink("127.0.0.1", 1883, "v", NODE, [], telemetry_rate=bad)
