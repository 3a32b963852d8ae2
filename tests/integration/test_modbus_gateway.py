"""Several units behind one gateway port: a dead unit does not disturb the live ones.

Real Modbus TCP sockets: the machinery simulator serves the units (one connection per unit, as
the machinery map says).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from drivers.modbus.driver import ModbusDeviceDriver
from drivers.model import (
    PROFILE_DIR,
    Device,
    HealthState,
    ModbusTcpTransport,
    Reading,
    load_profile,
)
from simulators.core import DeviceSpec
from simulators.machinery import MachineDevice, MachineryFamily
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.integration

UNITS = (1, 2, 3)


@contextlib.asynccontextmanager
async def gateway(port: int) -> AsyncIterator[dict[int, MachineDevice]]:
    """Three hoists behind one port, units 1-3."""
    family = MachineryFamily({})
    devices: dict[int, MachineDevice] = {}
    for unit in UNITS:
        tr = {"kind": "modbus-tcp", "host": "127.0.0.1", "port": port, "unit": unit}
        dev = family.add(DeviceSpec(f"h{unit}", "hoist", tr, {"model": "hoist"}, "test"))
        assert isinstance(dev, MachineDevice)
        devices[unit] = dev
    async with contextlib.AsyncExitStack() as stack:
        for host in family.hosts():
            await stack.enter_async_context(host)
        yield devices


@contextlib.asynccontextmanager
async def drivers(port: int) -> AsyncIterator[dict[int, ModbusDeviceDriver]]:
    hoist = load_profile(PROFILE_DIR / "hoist.toml")

    async def sink(readings: list[Reading]) -> None:
        pass

    out = {
        unit: ModbusDeviceDriver(
            Device(
                f"h{unit}",
                hoist,
                ModbusTcpTransport(kind="modbus-tcp", host="127.0.0.1", port=port, unit=unit),
                10.0,
            ),
            sink,
        )
        for unit in UNITS
    }
    tasks = [asyncio.create_task(d.run(), name=f"test:{d.device.id}") for d in out.values()]
    try:
        yield out
    finally:
        for d in out.values():
            d.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)


def online(d: ModbusDeviceDriver) -> bool:
    return d.health.state is HealthState.ONLINE


async def test_a_dead_unit_behind_a_gateway_does_not_disturb_the_live_ones() -> None:
    port = free_port()
    async with gateway(port) as units, drivers(port) as drv:
        await wait_until(lambda: asyncio.sleep(0, all(map(online, drv.values()))), 5, "online")
        units[2].inject("comms_loss", {"mode": "silent"})
        await wait_until(
            lambda: asyncio.sleep(0, drv[2].health.state is HealthState.OFFLINE), 5, "unit 2 out"
        )
        before = {u: (d.stats.cycles, d.stats.errors, d.stats.reconnects) for u, d in drv.items()}
        await wait_until(
            lambda: asyncio.sleep(0, drv[1].stats.cycles >= before[1][0] + 10), 5, "10 more polls"
        )
        for u in (1, 3):
            _, errors, reconnects = before[u]
            assert online(drv[u]), drv[u].health
            assert drv[u].stats.errors == errors  # nothing failed on the live units
            assert drv[u].stats.reconnects == reconnects
            assert (
                units[u].drive.truth()["status_word"] & 0x200
            )  # their heartbeat kept the watchdog
        assert "no answer" in drv[2].health.reason or "no valid answer" in drv[2].health.reason
        units[2].clear()
        await wait_until(lambda: asyncio.sleep(0, online(drv[2])), 10, "unit 2 back")
