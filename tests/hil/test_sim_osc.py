"""Hardware-in-loop: Flytower's OscDeviceDriver, with the real dsp_matrix profile, against the
simulated matrix written from the device page. A wrong address or type in the profile fails
here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from drivers.model import PROFILE_DIR, Device, OscTransport, Quality, Reading, load_profile
from drivers.osc.device import OscDeviceDriver
from simulators.core import DeviceSpec
from simulators.osc_matrix import MatrixServer, OscFamily
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.hil


@contextlib.asynccontextmanager
async def matrix_and_driver(
    readings: list[Reading],
) -> AsyncIterator[tuple[MatrixServer, OscDeviceDriver]]:
    port = free_port()
    transport = {"kind": "osc", "host": "127.0.0.1", "port": port}
    family = OscFamily({})
    sim = family.add(DeviceSpec("mx", "dsp_matrix", transport, {"model": "dsp_matrix"}, "hil"))
    assert isinstance(sim, MatrixServer)
    profile = load_profile(PROFILE_DIR / "dsp_matrix.toml")
    device = Device(
        "mx", profile, OscTransport(kind="osc", host="127.0.0.1", port=port), poll_hz=10
    )

    async def sink(batch: list[Reading]) -> None:
        readings.extend(batch)

    driver = OscDeviceDriver(device, sink, timeout_s=0.3)
    async with contextlib.AsyncExitStack() as stack:
        for host in family.hosts():
            await stack.enter_async_context(host)
        task = asyncio.create_task(driver.run(), name="osc-driver")
        try:
            yield sim, driver
        finally:
            driver.stop()
            await asyncio.wait_for(task, 5)


def latest(readings: list[Reading], point: str) -> Reading | None:
    return next((r for r in reversed(readings) if r.point == point), None)


async def test_every_point_reads_back_the_truth_and_commands_apply() -> None:
    readings: list[Reading] = []
    async with matrix_and_driver(readings) as (sim, driver):
        sim.state.write("/in/4/gain", -20.0)
        sim.state.write("/out/6/mute", True)

        async def all_read() -> bool:
            truth = sim.truth()
            return all(
                (r := latest(readings, name)) is not None
                and r.quality is Quality.GOOD
                and r.value == pytest.approx(truth[name])
                for name in driver.device.profile.points
            )

        await wait_until(all_read, 10, "every point of the profile read as the matrix has it")
        assert driver.health.state.value == "online"

        await driver.command("set_out_3_gain", {"gain": -7.5})
        await driver.command("set_in_8_mute", {"muted": True})
        await driver.command("recall_preset", {"preset": 4})

        async def preset_applied() -> bool:
            return bool(sim.truth()["preset"] == 4)

        await wait_until(preset_applied, 5, "the preset recall")
        await driver.command("mute_all_outputs", {})

        async def muted() -> bool:
            return all(sim.truth()[f"out_{i}_mute"] for i in range(1, 9))

        await wait_until(muted, 5, "the panic mute")
        assert sim.truth()["in_1_gain"] == -3.0  # preset 4
        assert sim.counters.rejected == 0 and sim.counters.malformed == 0


async def test_faults_reach_the_driver() -> None:
    readings: list[Reading] = []
    async with matrix_and_driver(readings) as (sim, driver):

        async def online() -> bool:
            return driver.health.state.value == "online"

        await wait_until(online, 5, "online")
        sim.inject("nonsense_replies", {})

        async def bad() -> bool:
            r = latest(readings, "in_1_gain")
            return r is not None and r.quality is Quality.BAD

        await wait_until(bad, 5, "BAD readings for nonsense")
        sim.clear()
        sim.inject("silence", {})

        async def offline() -> bool:
            return driver.health.state.value == "offline"

        await wait_until(offline, 10, "offline when the matrix is silent")
        sim.clear("silence")
        await wait_until(online, 10, "back online")
