"""Flytower's MQTT driver with the shipped ``people_counter`` profile, reading the simulated
counter over a real Mosquitto.

The simulator is written from the device page and the driver knows only the profile, so a
wrong range, type or point name in either shows up here as a malformed message or a missing
reading. The headcount the sound field follows is ``occupancy``: set through the simulator's
override, it must arrive as a good reading of exactly that number.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from drivers.model import (
    PROFILE_DIR,
    CommandError,
    Device,
    HealthState,
    MqttTransport,
    Quality,
    load_profile,
)
from drivers.mqtt.driver import MqttDeviceDriver
from drivers.mqtt.hub import BrokerSettings, MqttHub
from tests.conftest import RealServer, wait_until
from tests.integration.test_mqtt_commands import running_hub
from tests.integration.test_mqtt_devices import Collected
from tests.integration.test_mqtt_devices import running as running_driver
from tests.integration.test_sim_gear import QUICK_SHOW, device_entry, new_venue
from tests.integration.test_sim_gear import running as running_sim

pytestmark = pytest.mark.integration

PROFILE = load_profile(PROFILE_DIR / "people_counter.toml")


def latest(got: Collected) -> dict[str, Any]:
    return {r.point: r.value for r in got.readings}


async def test_the_driver_reads_the_simulated_counter(mosquitto: RealServer) -> None:
    venue, port = new_venue(), mosquitto.port
    got = Collected()
    hub = MqttHub(BrokerSettings("127.0.0.1", port, client_id=f"ctl-{venue}"))
    device = Device("people-counter-1", PROFILE, MqttTransport(kind="mqtt", node="gw"), 1)
    driver = MqttDeviceDriver(device, hub, venue, got.sink)
    entry = device_entry("people_counter", venue, **QUICK_SHOW)
    async with running_hub(hub), running_driver(driver), running_sim(port, venue, [entry]) as fam:
        (sim,) = fam.devices

        async def online() -> bool:
            return driver.health.state is HealthState.ONLINE

        await wait_until(online, 10, "the counter's birth")

        async def emptied() -> bool:
            now = latest(got)
            return now.get("exits", 0) > 0 and now.get("occupancy") == 0

        await wait_until(emptied, 20, "a whole show: the hall filled and emptied")
        peak = max(int(r.value) for r in got.of("occupancy"))  # type: ignore[arg-type]
        assert peak == sim.truth()["audience"] > 0

        sim.inject("occupancy", {"people": 1200})

        async def full() -> bool:
            return latest(got).get("occupancy") == 1200

        await wait_until(full, 10, "1200 people in")
        reading = got.of("occupancy")[-1]
        assert reading.quality is Quality.GOOD and isinstance(reading.value, int)

        assert await driver.command("set_capacity", {"seats": 950}) == [("capacity", 950)]

        async def capacity() -> bool:
            return latest(got).get("capacity") == 950

        await wait_until(capacity, 10, "the new capacity")
        with pytest.raises(CommandError):
            await driver.command("set_capacity", {"seats": 100_001})  # the profile refuses
        sim.inject("blocked", {})

        async def flagged() -> bool:
            return latest(got).get("fault") is True

        await wait_until(flagged, 10, "the fault flag")
        sim.clear()
        assert await driver.command("reset_counts", {}) == [("counts_reset", True)]

        async def reset() -> bool:
            now = latest(got)
            return (now.get("occupancy"), now.get("entries"), now.get("exits")) == (0, 0, 0)

        await wait_until(reset, 10, "the counts reset")
        await asyncio.sleep(0.3)
    assert driver.malformed == 0, driver.last_malformed
    assert {r.point for r in got.readings} == {"occupancy", "entries", "exits", "capacity", "fault"}
    assert all(r.quality is Quality.GOOD for r in got.readings)
