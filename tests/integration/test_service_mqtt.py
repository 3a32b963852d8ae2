"""MQTT into and out of the running service, through a real Mosquitto.

- A script commands a Modbus hoist over MQTT (``…/cmd/move_to`` with an id) and gets the
  correlated reply; the simulated drive moves; a refused command replies with the reason.
- A sensor gateway publishes readings in our schema; the service's MQTT device driver turns
  them into readings (live view and store), and the gateway's death (LWT) makes it offline.
- The node publishes each device's retained ``$state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from edge.service import Service
from tests.conftest import (
    RealServer,
    free_port,
    operator_enable,
    run_service,
    simulators,
    wait_until,
    write_venue,
)

pytestmark = pytest.mark.integration

SENSOR = """
[[devices]]
id = "rig-load"
profile = "load_cell"
transport = { kind = "mqtt", node = "gw" }
"""


@pytest.fixture
async def service(tmp_path: Path, mosquitto: RealServer) -> AsyncIterator[Service]:
    venue = write_venue(
        tmp_path,
        # The drive shares this test's event loop: a 1 s watchdog rides out a loaded machine
        # starving it (CI once saw the 200 ms one latch before an enable).
        [{"id": "hoist-1", "port": free_port(), "start": 2000, "watchdog_ms": 1000}],
        mqtt_mode="external",
        mqtt_port=mosquitto.port,
    )
    venue.write_text(venue.read_text() + SENSOR)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(simulators(venue))
        svc = await stack.enter_async_context(run_service(venue))
        assert svc.mqtt is not None
        await asyncio.wait_for(svc.mqtt.connected.wait(), 10)

        async def positioned() -> bool:
            r = svc.live.get(("hoist-1", "position"))
            return r is not None and r.value is not None

        await wait_until(positioned, 10, "hoist-1 has a position")
        await stack.enter_async_context(operator_enable(svc))
        yield svc


async def _request(
    client: aiomqtt.Client, device: str, name: str, args: dict[str, object]
) -> dict[str, object]:
    request_id = str(uuid.uuid4())
    topic = f"flytower/test/stage/{device}/cmd/{name}"
    await client.subscribe(f"{topic}/reply", qos=1)
    payload = {"id": request_id, "args": args, "ts": int(time.time() * 1000)}
    await client.publish(topic, json.dumps(payload), qos=1)
    async with asyncio.timeout(5):
        async for msg in client.messages:
            doc = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
            if doc.get("id") == request_id:
                return doc  # type: ignore[no-any-return]
    raise AssertionError("no reply")


async def test_commands_over_mqtt_reach_the_drive(service: Service, mosquitto: RealServer) -> None:
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        reply = await _request(client, "hoist-1", "move_to", {"position": 2100, "speed": 300})
        assert reply["ok"] is True, reply
        assert ["target_position", 2100.0] in reply["result"]["writes"]  # type: ignore[index]

        async def moved() -> bool:
            r = service.live.get(("hoist-1", "position"))
            return r is not None and isinstance(r.value, float) and r.value > 2010

        await wait_until(moved, 10, "the hoist moves after the MQTT command")
        link = service.links()["mqtt"]
        assert link["state"] == "online"
        assert link["stats"]["connects"] == 1

        refused = await _request(client, "hoist-1", "move_to", {"position": 99999, "speed": 300})
        assert refused["ok"] is False
        assert refused["code"] == "refused"
        assert "above the maximum" in str(refused["error"])
        stopped = await _request(client, "hoist-1", "stop", {})
        assert stopped["ok"] is True, stopped


async def test_device_state_is_retained(service: Service, mosquitto: RealServer) -> None:
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        await client.subscribe("flytower/test/stage/hoist-1/$state", qos=1)
        async with asyncio.timeout(5):
            async for msg in client.messages:
                doc = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                if doc.get("state") == "online":
                    assert doc["profile"] == "hoist"
                    break


async def test_sensor_gateway_readings_and_death(service: Service, mosquitto: RealServer) -> None:
    # The gateway's connection is a mosquitto_sub holding a will; kill -9 makes the broker
    # publish it, as when a real gateway loses power.
    dead = json.dumps({"state": "offline", "ts": int(time.time() * 1000), "session": 1})
    holder = subprocess.Popen(  # noqa: ASYNC220 (a fire-and-forget peer)
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(mosquitto.port),
            "-i",
            "gw-test",
            "-t",
            "gw/none",
            "--will-topic",
            "flytower/test/gw/$state",
            "--will-payload",
            dead,
            "--will-qos",
            "1",
            "--will-retain",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as gateway:
            now = int(time.time() * 1000)
            birth = {"state": "online", "ts": now, "session": 1, "devices": ["rig-load"]}
            await gateway.publish("flytower/test/gw/$state", json.dumps(birth), qos=1, retain=True)
            await gateway.publish(
                "flytower/test/gw/rig-load/load",
                json.dumps({"v": 412.5, "ts": now, "q": "good"}),
                qos=1,
            )

        async def arrived() -> bool:
            r = service.live.get(("rig-load", "load"))
            return r is not None and r.value == 412.5

        await wait_until(arrived, 10, "the gateway's reading in the live view")
        assert service.health["rig-load"].state.value == "online"
        await asyncio.sleep(0.5)  # the holder is connected and its will registered
    finally:
        holder.kill()
        holder.wait()

    async def offline() -> bool:
        return service.health["rig-load"].state.value == "offline"

    await wait_until(offline, 20, "the gateway's death marks its device offline")
    assert "gw" in service.health["rig-load"].reason
