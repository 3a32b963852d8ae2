"""Modbus poll round trip: the driver's poll of a hoist against a raw pymodbus block read.

Figure: p50/p99 latency of ModbusDeviceDriver.poll_once (two block reads through the link's
priority scheduler, decode, publish) to a
simulated hoist over loopback TCP. Reference: the same two raw read_holding_registers calls with
the bare pymodbus client, same server, same run.
"""

from __future__ import annotations

import contextlib
import socket
import time

from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus.driver import ModbusDeviceDriver
from drivers.modbus.link import ModbusLink
from drivers.model import PROFILE_DIR, Device, ModbusTcpTransport, Reading, load_profile
from simulators.core import DeviceSpec
from simulators.machinery import MachineryFamily

ROUNDS = 2000


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return 1000 * s[min(len(s) - 1, int(q * len(s)))]


async def run() -> None:
    port = _port()
    family = MachineryFamily({})
    tr = {"kind": "modbus-tcp", "host": "127.0.0.1", "port": port, "unit": 1}
    family.add(DeviceSpec("h", "hoist", tr, {"model": "hoist"}, "bench"))
    async with contextlib.AsyncExitStack() as stack:
        for host in family.hosts():
            await stack.enter_async_context(host)
        transport = ModbusTcpTransport(kind="modbus-tcp", host="127.0.0.1", port=port)
        device = Device("h", load_profile(PROFILE_DIR / "hoist.toml"), transport, 10.0)

        async def sink(readings: list[Reading]) -> None:
            pass

        driver = ModbusDeviceDriver(device, sink)
        ours: list[float] = []
        async with ModbusLink.tcp(transport) as link:
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                await driver.poll_once(link)
                ours.append(time.perf_counter() - t0)
        raw: list[float] = []
        client = AsyncModbusTcpClient("127.0.0.1", port=port)
        await client.connect()
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            await client.read_holding_registers(0, count=11, device_id=1)
            await client.read_holding_registers(100, count=7, device_id=1)
            raw.append(time.perf_counter() - t0)
        client.close()
    print(f"   driver poll       p50 {pct(ours, 0.5):6.3f} ms   p99 {pct(ours, 0.99):6.3f} ms")
    print(f"   raw pymodbus      p50 {pct(raw, 0.5):6.3f} ms   p99 {pct(raw, 0.99):6.3f} ms  (ref)")
    print(f"   ratio p50 ours/raw {pct(ours, 0.5) / pct(raw, 0.5):.2f}")
