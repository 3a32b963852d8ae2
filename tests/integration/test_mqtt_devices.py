"""MQTT device drivers against a real Mosquitto, fed by ``mosquitto_pub`` as a device would be.

A native device's gateway and a zigbee2mqtt-like bridge are played by Mosquitto's own client,
so the drivers are checked against the documented schema and a third-party JSON layout, not
against our own encoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import drivers.mqtt.driver
from drivers.model import (
    Device,
    HealthState,
    MqttTransport,
    Quality,
    Reading,
    parse_profile,
)
from drivers.mqtt.driver import MqttDeviceDriver
from drivers.mqtt.hub import BrokerSettings, MqttHub
from tests.conftest import RealServer, wait_until
from tests.integration.test_mqtt import MosquittoSub, new_venue
from tests.integration.test_mqtt_commands import mosquitto_pub, running_hub

pytestmark = pytest.mark.integration

SENSOR = parse_profile(
    {
        "id": "door_sensor",
        "device_class": "sensor",
        "protocol": "mqtt",
        "health": {"kind": "lwt"},
        "points": {
            "temperature": {"unit": "°C", "min": -40.0, "max": 120.0},
            "open": {"dtype": "bool"},
            "count": {"dtype": "int"},
        },
    }
)

# zigbee2mqtt publishes a device's state as one JSON object on {base}/{friendly name} and takes
# writes on {base}/{friendly name}/set; the transport's base is the bridge's base topic.
LAMP = parse_profile(
    {
        "id": "z2m_lamp",
        "device_class": "light",
        "protocol": "mqtt",
        "points": {
            "temperature": {"mqtt": {"topic": "foyer-lamp", "field": "sensors.temperature"}},
            "on": {
                "dtype": "bool",
                "access": "rw",
                "mqtt": {
                    "topic": "foyer-lamp",
                    "field": "state",
                    "values": {"ON": True, "OFF": False},
                    "set_topic": "foyer-lamp/set",
                    "set_field": "state",
                },
            },
            "level": {
                "dtype": "int",
                "min": 0,
                "max": 254,
                "access": "rw",
                "mqtt": {"topic": "foyer-lamp", "field": "brightness",
                         "set_topic": "foyer-lamp/set", "set_field": "brightness"},
            },
            "power": {"mqtt": {"topic": "foyer-lamp/power"}},
        },
        "commands": {
            "turn_on": {"writes": [{"point": "on", "value": True}]},
            "dim": {"args": {"level": {"dtype": "int", "min": 0, "max": 254}},
                    "writes": [{"point": "level", "arg": "level"}]},
        },
    }
)  # fmt: skip


class Collected:
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    async def sink(self, batch: list[Reading]) -> None:
        self.readings.extend(batch)

    def of(self, point: str) -> list[Reading]:
        return [r for r in self.readings if r.point == point]


@contextlib.asynccontextmanager
async def running(driver: MqttDeviceDriver) -> AsyncIterator[MqttDeviceDriver]:
    task = asyncio.create_task(driver.run(), name=f"driver:{driver.device.id}")
    try:
        yield driver
    finally:
        driver.stop()
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def running_lamp(
    port: int, venue: str, bridge: str, sink: Any
) -> AsyncIterator[MqttDeviceDriver]:
    """The zigbee2mqtt lamp (``LAMP``) under ``bridge``, its driver running and subscribed."""
    hub = MqttHub(BrokerSettings("127.0.0.1", port, client_id=f"ctl-{venue}"))
    device = Device("lamp-1", LAMP, MqttTransport(kind="mqtt", base=bridge), 1)
    driver = MqttDeviceDriver(device, hub, venue, sink)
    async with running_hub(hub), running(driver):
        await asyncio.wait_for(hub.connected.wait(), 10)

        async def subscribed() -> bool:
            return len(hub._router.filters) == 2

        await wait_until(subscribed, 10, "the driver to subscribe")
        await asyncio.sleep(0.1)  # the SUBACKs
        yield driver


def now_ms() -> int:
    return round(time.time() * 1000)


async def test_native_device_readings_health_and_ordering_rules(mosquitto: RealServer) -> None:
    venue, port = new_venue(), mosquitto.port
    base = f"flytower/{venue}/gw/door-1"
    node_state = f"flytower/{venue}/gw/$state"

    def birth(session: int) -> bytes:
        doc = {"state": "online", "ts": now_ms(), "session": session, "devices": ["door-1"]}
        return json.dumps(doc).encode()

    def death(session: int) -> bytes:
        doc = {"state": "offline", "ts": session, "session": session, "reason": "lost"}
        return json.dumps(doc).encode()

    await mosquitto_pub(port, node_state, birth(1), "-r")
    dev_state = {"state": "online", "ts": now_ms(), "profile": "door_sensor", "reason": ""}
    await mosquitto_pub(port, f"{base}/$state", json.dumps(dev_state).encode(), "-r")
    got = Collected()
    hub = MqttHub(BrokerSettings("127.0.0.1", port, client_id=f"ctl-{venue}"))
    device = Device("door-1", SENSOR, MqttTransport(kind="mqtt", node="gw"), 10)
    driver = MqttDeviceDriver(device, hub, venue, got.sink)
    async with running_hub(hub), running(driver):

        async def health_is(state: HealthState) -> bool:
            return driver.health.state is state

        await wait_until(lambda: health_is(HealthState.ONLINE), 10, "the birth to be seen")
        good = [
            ("temperature", b'{"v":21.5,"ts":1700000000000,"q":"good"}'),
            ("open", b'{"v":true,"ts":1700000000001}'),
            ("count", b'{"v":null,"ts":1700000000002,"q":"bad"}'),
        ]
        bad = [
            ("temperature", b"warm"),  # not JSON
            ("temperature", b'{"v":NaN,"ts":1}'),  # NaN
            ("temperature", b'{"v":"warm","ts":1}'),  # wrong type for the point
            ("temperature", b'{"v":500.0,"ts":1}'),  # outside the profile's range
            ("count", b'{"v":1.5,"ts":1}'),  # not a whole number
            ("count", b'{"v":1,"ts":1,"x":2}'),  # unknown key
            ("humidity", b'{"v":1,"ts":1}'),  # not a point of the profile
            ("temperature", b'{"v":"' + b"x" * 70_000 + b'","ts":1}'),  # oversized
        ]
        for point, payload in good + bad:
            await mosquitto_pub(port, f"{base}/{point}", payload)

        async def all_in() -> bool:
            return len(got.readings) == len(good) and driver.malformed == len(bad)

        await wait_until(all_in, 10, "the readings and the malformed count")
        (temp,) = got.of("temperature")
        assert (temp.value, temp.ts_wall, temp.quality) == (21.5, 1700000000.0, Quality.GOOD)
        assert got.of("open")[0].value is True
        assert got.of("count")[0].quality is Quality.BAD
        assert driver.report()["malformed"] == len(bad)

        await mosquitto_pub(port, node_state, death(0))  # a will from an older session
        await mosquitto_pub(port, node_state, death(1))
        await wait_until(lambda: health_is(HealthState.OFFLINE), 10, "the will to be seen")
        assert "offline (lost)" in driver.health.reason
        await mosquitto_pub(port, f"{base}/temperature", b'{"v":22.0,"ts":1}')

        async def ignored() -> bool:
            return driver.ignored == 1

        await wait_until(ignored, 10, "data of a dead node to be ignored")
        await mosquitto_pub(port, node_state, birth(2), "-r")
        await wait_until(lambda: health_is(HealthState.ONLINE), 10, "the new birth")
        stale = {"state": "degraded", "ts": now_ms(), "profile": "door_sensor", "reason": "weak"}
        await mosquitto_pub(port, f"{base}/$state", json.dumps(stale).encode(), "-r")
        await wait_until(lambda: health_is(HealthState.DEGRADED), 10, "the device state")
        assert driver.health.reason == "weak"
    assert len(got.readings) == len(good)


async def test_a_stalled_sink_drops_whole_messages_counted_and_keeps_order(
    mosquitto: RealServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the sink does not take readings, at most ``QUEUE_SIZE`` wait; a message that does
    not fit is dropped whole and counted. Nothing is reordered or half-delivered, and every
    reading is either delivered or counted as dropped."""
    monkeypatch.setattr(drivers.mqtt.driver, "QUEUE_SIZE", 10)
    venue, port = new_venue(), mosquitto.port
    bridge = f"z2m-{venue}"
    release = asyncio.Event()
    got: list[Reading] = []

    async def stalled(batch: list[Reading]) -> None:
        await release.wait()
        got.extend(batch)

    async with running_lamp(port, venue, bridge, stalled) as driver:
        for level in range(1, 11):  # three readings a message: on, level, temperature
            doc = {"state": "ON", "brightness": level, "sensors": {"temperature": 20.0}}
            await mosquitto_pub(port, f"{bridge}/foyer-lamp", json.dumps(doc).encode())

        async def all_seen() -> bool:
            return driver.stats.requests == 30

        await wait_until(all_seen, 10, "every message mapped")
        # the first message (or the first few, had they come in one read) went to the stalled
        # sink, three more fit in the ten places, the rest did not
        assert driver.dropped > 0 and driver.dropped % 3 == 0
        release.set()

        async def delivered() -> bool:
            return len(got) + driver.dropped == 30

        await wait_until(delivered, 10, "what waited delivered once the sink takes it")
    levels = [r.value for r in got if r.point == "level"]
    assert levels == list(range(1, len(levels) + 1)) and len(levels) >= 4  # in order
    points = [r.point for r in got]
    assert points.count("on") == points.count("temperature") == len(levels)  # whole messages


async def test_third_party_device_mapped_by_its_profile(mosquitto: RealServer) -> None:
    venue, port = new_venue(), mosquitto.port
    bridge = f"z2m-{venue}"
    base = f"{bridge}/foyer-lamp"
    got = Collected()
    async with running_lamp(port, venue, bridge, got.sink) as driver:
        state = {"state": "ON", "brightness": 200, "sensors": {"temperature": 31.5}, "lqi": 9}
        await mosquitto_pub(port, base, json.dumps(state).encode())
        await mosquitto_pub(port, f"{base}/power", b"12.5")  # a bare number
        await mosquitto_pub(port, base, b'{"state":"MAYBE","brightness":999}')  # both refused
        await mosquitto_pub(port, base, b'{"brightness":NaN}')
        await mosquitto_pub(port, f"{base}/power", b"lots")

        async def all_in() -> bool:
            return len(got.readings) == 4 and driver.malformed == 4

        await wait_until(all_in, 10, "the mapped readings and the malformed count")
        values = {r.point: r.value for r in got.readings}
        assert values == {"on": True, "level": 200, "temperature": 31.5, "power": 12.5}
        assert driver.health.state is HealthState.ONLINE

        async with MosquittoSub.run(port, f"{base}/set", 2) as s:
            await asyncio.sleep(0.2)
            assert await driver.command("turn_on", {}) == [("on", True)]
            assert await driver.command("dim", {"level": 120}) == [("level", 120)]
            sets = [json.loads((await s.message())[2]) for _ in range(2)]
        assert sets == [{"state": "ON"}, {"brightness": 120}]
        assert driver.stats.requests >= 2
        report: dict[str, Any] = driver.report()
        assert report["latency_p99_ms"] is not None
