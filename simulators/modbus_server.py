"""Serve simulated drives over real Modbus TCP (pymodbus ``SimDevice``), with a physics clock.

Several drives may share one host:port as unit ids behind a gateway, or each have their own
port, as real installations do. The pymodbus action hook is called on every request before
pymodbus touches its register image: on a read we refresh the status block from the physics,
on a write we hand the values to the drive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.hoist import (
    COMMAND_COUNT,
    REG_TARGET,
    STATUS_COUNT,
    HoistAxis,
    HoistRegisters,
)

log = logging.getLogger(__name__)
TICK_S = 0.01  # 100 Hz physics
WRITE_CODES = {5, 6, 15, 16, 22, 23}


@dataclass
class SimulatedUnit:
    unit: int
    axis: HoistAxis

    def sim_device(self) -> SimDevice:
        regs = HoistRegisters(self.axis)

        async def action(
            func_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            now = time.monotonic()
            if func_code in WRITE_CODES and set_values is not None:
                regs.write(address, [int(v) for v in set_values], now)
            # Refresh the image the response is built from (status and command read-back).
            registers[0 - start_address : STATUS_COUNT - start_address] = regs.status(now)
            lo = REG_TARGET - start_address
            registers[lo : lo + COMMAND_COUNT] = regs.commands()
            return None

        return SimDevice(
            self.unit,
            simdata=[
                SimData(
                    0, count=STATUS_COUNT, values=0, datatype=DataType.REGISTERS, readonly=True
                ),
                SimData(REG_TARGET, count=COMMAND_COUNT, values=0, datatype=DataType.REGISTERS),
            ],
            action=action,
        )


class ModbusSimServer:
    """One listening socket with one or more simulated units, and their physics clock."""

    def __init__(self, host: str, port: int, units: Sequence[SimulatedUnit]) -> None:
        self.host, self.port, self.units = host, port, list(units)
        self._server: ModbusTcpServer | None = None
        self._clock: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        devices = [u.sim_device() for u in self.units]
        self._server = ModbusTcpServer(devices, address=(self.host, self.port))
        await self._server.serve_forever(background=True)
        self._clock = asyncio.create_task(self._physics(), name=f"sim-physics:{self.port}")
        log.info("modbus sim on %s:%d units %s", self.host, self.port, [u.unit for u in self.units])
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]

    async def _physics(self) -> None:
        last = time.monotonic()
        next_at = last
        while True:
            next_at += TICK_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            now = time.monotonic()
            for u in self.units:
                u.axis.step(now - last, now)
            last = now
