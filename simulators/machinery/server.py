"""Serve machinery drives over real Modbus: TCP (one or many units per host:port) and RTU.

Each unit is a pymodbus ``SimDevice`` whose ``SimData`` blocks are exactly the documented
ranges of its type (status 0...10, the type's extras from 20, command 100...106, settings from
120), so pymodbus itself answers exception 02 for any request that runs into an unmapped
address or writes a read-only one (§8), before the action hook sees it. The action hook is
where the drive lives on the wire:

- communication faults first: silence (the request is dropped), a dropped connection, a
  delayed answer, an exception response;
- a write goes to the drive (``Drive.write``), as one update;
- the register image the answer is built from is refreshed from the drive, only for the
  blocks a read touches (pymodbus reads back after every write, and overwrites the written
  registers with the request's values after the hook: refreshing on the write is wasted).

A unit that is not hosted is answered with exception 04 (§8), by a catch-all unit 0.

Cost (one simulator process serves 16 axes at 800 requests/s in the machinery benchmark):
pymodbus's request handler hands every request from the event loop to the same event loop
through ``asyncio.run_coroutine_threadsafe`` (it supports a server in another thread), which
costs a self-pipe write and an extra loop wake-up per request; our servers run in the loop's
own thread, so ``_RequestHandler`` starts the same coroutine as a task instead. Nothing else
of pymodbus's handling (framing, decoding, the ``SimDevice`` checks, the answers) changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.machinery.drive import Drive
from simulators.machinery.registers import (
    COMMAND_COUNT,
    COMMAND_START,
    EXTRAS_START,
    SETTINGS_START,
    STATUS_COUNT,
    STATUS_START,
)

log = logging.getLogger(__name__)

WRITE_CODES = frozenset({5, 6, 15, 16, 22, 23})
READ_CODES = frozenset({1, 2, 3, 4})


@dataclass
class Comms:
    """The communication faults of one unit, set by fault injection, read by every request."""

    silent: bool = False
    drop: bool = False
    delay_s: float = 0.0
    exception: ExcCodes | None = None
    exception_function: int | None = None
    exception_range: tuple[int, int] | None = None  # [start, end) of addresses

    def active(self) -> bool:
        return self.silent or self.drop or self.delay_s > 0 or self.exception is not None

    def exception_for(self, function: int, address: int, count: int) -> ExcCodes | None:
        if self.exception is None:
            return None
        if self.exception_function is not None and function != self.exception_function:
            return None
        if self.exception_range is not None:
            lo, hi = self.exception_range
            if address >= hi or address + count <= lo:
                return None
        return self.exception


@dataclass
class Unit:
    """One drive behind a unit id, and its communication faults."""

    unit: int
    drive: Drive
    comms: Comms = field(default_factory=Comms)
    requests: int = 0


class _Closeable(Protocol):
    last_pdu: Any

    def close(self) -> None: ...


_REQUESTS: set[asyncio.Task[None]] = set()  # requests being handled, held until done


class _RequestHandler(ServerRequestHandler):
    """pymodbus's per-connection handler, without the thread hop for every request.

    ``ServerRequestHandler.handle_later`` runs ``handle_request`` through
    ``asyncio.run_coroutine_threadsafe`` on its own loop: a concurrent future, a write to the
    loop's self-pipe and one more wake-up for each request. Called in the loop's thread (it
    is scheduled with ``call_soon``), a task does the same in the same order, for less. The
    tasks are kept referenced until done (the loop keeps only weak references).
    """

    def handle_later(self) -> None:
        task: asyncio.Task[None] = self.loop.create_task(
            self.handle_request()  # type: ignore[no-untyped-call]
        )
        _REQUESTS.add(task)
        task.add_done_callback(_REQUESTS.discard)


class _TcpServer(ModbusTcpServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _RequestHandler(  # type: ignore[no-untyped-call]
            self, self.trace_packet, self.trace_pdu, self.trace_connect
        )


class _SerialServer(ModbusSerialServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _RequestHandler(  # type: ignore[no-untyped-call]
            self, self.trace_packet, self.trace_pdu, self.trace_connect
        )


class ModbusHost:
    """One listening socket or serial line with its units: an async context manager."""

    def __init__(
        self,
        units: Sequence[Unit],
        *,
        tcp: tuple[str, int] | None = None,
        serial: dict[str, Any] | None = None,
    ) -> None:
        if (tcp is None) == (serial is None):
            raise ValueError("a host is either TCP or serial")
        self.units = {u.unit: u for u in units}
        self.tcp, self.serial = tcp, serial
        self.requests = 0
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._closing = asyncio.Event()
        self._inflight = 0

    @property
    def name(self) -> str:
        if self.tcp is not None:
            return f"tcp:{self.tcp[0]}:{self.tcp[1]}"
        assert self.serial is not None
        return f"rtu:{self.serial['port']}"

    def _sim_device(self, unit: Unit) -> SimDevice:
        kind = unit.drive.kind
        blocks = [
            SimData(
                STATUS_START,
                count=STATUS_COUNT,
                values=0,
                datatype=DataType.REGISTERS,
                readonly=True,
            )
        ]
        if kind.extras_count:
            blocks.append(
                SimData(
                    EXTRAS_START,
                    count=kind.extras_count,
                    values=0,
                    datatype=DataType.REGISTERS,
                    readonly=True,
                )
            )
        if kind.has_commands:
            blocks.append(
                SimData(COMMAND_START, count=COMMAND_COUNT, values=0, datatype=DataType.REGISTERS)
            )
        if kind.settings_count:
            blocks.append(
                SimData(
                    SETTINGS_START, count=kind.settings_count, values=0, datatype=DataType.REGISTERS
                )
            )

        async def action(
            func_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            first_call = set_values is not None or func_code in READ_CODES
            if first_call:
                # pymodbus calls the hook twice for a write (set, then read back): count once.
                unit.requests += 1
                self.requests += 1
                if unit.comms.active():
                    failed = await self._comms_fault(unit, func_code, address, count)
                    if failed is not None:
                        return failed
            if set_values is None:
                _refresh(unit.drive, start_address, address, count, registers)
            elif func_code in WRITE_CODES:
                unit.drive.write(address, [int(v) for v in set_values], time.monotonic())
            return None

        return SimDevice(unit.unit, simdata=blocks, action=action)

    async def _comms_fault(
        self, unit: Unit, function: int, address: int, count: int
    ) -> ExcCodes | None:
        comms = unit.comms
        if comms.drop and self._server is not None and self.tcp is not None:
            # The unit's network is gone: close the connection(s) its master uses.
            for handler in list(self._server.active_connections.values()):
                closeable: _Closeable = handler  # type: ignore[assignment]
                pdu = closeable.last_pdu
                if pdu is not None and pdu.dev_id == unit.unit:
                    closeable.close()
        if comms.silent or comms.drop:
            raise NoSuchIdException(f"unit {unit.unit} is silent (injected comms_loss)")
        if comms.delay_s > 0:
            self._inflight += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), comms.delay_s)
            finally:
                self._inflight -= 1
            if self._closing.is_set():
                raise NoSuchIdException("the simulator is stopping")
        return comms.exception_for(function, address, count)

    async def __aenter__(self) -> Self:
        devices = [self._sim_device(u) for u in self.units.values()]
        devices.append(_absent_units())
        # ignore_missing_devices: a NoSuchIdException from the hook then means "no answer".
        if self.tcp is not None:
            self._server = _TcpServer(devices, address=self.tcp, ignore_missing_devices=True)
        else:
            assert self.serial is not None
            self._server = _SerialServer(devices, ignore_missing_devices=True, **self.serial)
        await self._server.serve_forever(background=True)
        log.info("machinery simulators on %s, units %s", self.name, sorted(self.units))
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing.set()
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
        # Let delayed answers that were woken up above finish their request tasks.
        for _ in range(100):
            if not self._inflight:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)


ABSENT_SPAN = 256  # every address of any type's map: 0...244


def _absent_units() -> SimDevice:
    """Unit id 0 is pymodbus's "every other unit": answer them all with exception 04.

    Its block spans the addresses of the map only (a request for an absent unit beyond them is
    answered 02): pymodbus builds a block register by register, and a 64 k block cost 0.3 s of
    CPU per host at start-up, several seconds for a large venue's gateways.
    """

    async def absent(
        func_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        return ExcCodes.DEVICE_FAILURE

    everything = SimData(0, count=ABSENT_SPAN, values=0, datatype=DataType.REGISTERS)
    return SimDevice(0, simdata=[everything], action=absent)


def _refresh(
    drive: Drive, start_address: int, address: int, count: int, registers: list[int]
) -> None:
    """Rewrite the blocks of the image that the request [address, address + count) touches."""
    end = address + count
    kind = drive.kind
    if address < STATUS_COUNT:
        registers[STATUS_START - start_address : STATUS_COUNT - start_address] = (
            drive.status_block()
        )
    if kind.extras_count and address < EXTRAS_START + kind.extras_count and end > EXTRAS_START:
        lo = EXTRAS_START - start_address
        registers[lo : lo + kind.extras_count] = kind.extras(drive)
    if kind.has_commands and address < COMMAND_START + COMMAND_COUNT and end > COMMAND_START:
        lo = COMMAND_START - start_address
        registers[lo : lo + COMMAND_COUNT] = drive.command_block()
    if kind.settings_count and end > SETTINGS_START:
        lo = SETTINGS_START - start_address
        registers[lo : lo + kind.settings_count] = kind.settings(drive)
