"""Modbus links: one pymodbus client, and a priority scheduler in front of it.

A *link* is one path on which requests take turns: a TCP connection to one unit, or an RS-485
line (a serial port) that every unit on it shares. ``ModbusLink`` owns its pymodbus client as an
async context manager; ``shared_serial_link`` hands every device on one serial port the same
link, opened by the first device and closed by the last.

Why a scheduler of our own: pymodbus serialises the requests of one client with a FIFO
``asyncio.Lock``, so a command to a drive would queue behind every poll already waiting (Home
Assistant's Modbus hub saw writes wait 20–50 s that way). ``RequestScheduler`` lets at most
``max_in_flight`` requests reach pymodbus at a time (1 by default, as pymodbus serialises
anyway), and hands a free slot to the most urgent waiter: command writes, then the heartbeat,
then polls, first come first served within a priority. A waiting poll is overtaken by a write.

Worst case for a write: it waits for the one request already on the wire, which is bounded by
that request's timeout (``request_timeout_s`` in ``driver.py`` keeps it below the drive's
watchdog margin), plus the writes of a command that holds the link (``session``).

Each request has its own timeout (``asyncio.timeout`` around the pymodbus call), because the
units on one serial line have their own ``timeout_s``; the client's own timeout is set longer so
that ours always fires first and pymodbus never closes the link behind our back. Cancelling a
pymodbus request is safe: on TCP a late answer carries a stale transaction id and is dropped by
the framer; on RTU every answer is checked against the request's function code and size.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from types import TracebackType
from typing import Any, Self

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType

from drivers.modbus.codec import ReadBlock, describe_exception
from drivers.modbus.lean import LeanTcpClient
from drivers.model import ModbusRtuTransport, ModbusTcpTransport, ModbusWire

READ_FUNCTION = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


class Priority(IntEnum):
    """Who goes first when the link frees up: lower is more urgent."""

    COMMAND = 0
    HEARTBEAT = 1
    POLL = 2


class ModbusRequestError(RuntimeError):
    """The device answered with a Modbus exception or a wrong answer, or not at all."""


class ModbusTimeout(ModbusRequestError):
    """No (valid) answer within the request's timeout."""


class ModbusExceptionAnswer(ModbusRequestError):
    """The device answered with a Modbus exception response; ``code`` is its exception code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class RequestScheduler:
    """At most ``max_in_flight`` holders at a time; a freed slot goes to the most urgent waiter.

    Granting is synchronous on release, so a newcomer can never take a slot from a waiter, and
    "a waiter exists" implies "every slot is taken": the fast path only checks the count.
    """

    def __init__(self, max_in_flight: int = 1) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f in self._waiters if not f.done())

    def try_acquire(self) -> bool:
        """Take a free slot now, without waiting; False if none is free."""
        if self.in_flight < self.max_in_flight:
            self.in_flight += 1
            return True
        return False

    async def acquire(self, priority: Priority) -> None:
        if self.in_flight < self.max_in_flight:
            self.in_flight += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted, then cancelled before use: pass the slot on
            raise  # a cancelled future stays in the heap; release() skips it

    def release(self) -> None:
        self.in_flight -= 1
        while self._waiters and self.in_flight < self.max_in_flight:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)

    @contextlib.asynccontextmanager
    async def slot(self, priority: Priority) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()


class LinkSession:
    """Requests made while holding one scheduler slot (see ``ModbusLink.session``)."""

    def __init__(self, link: ModbusLink) -> None:
        self._link = link
        # The answer of an FC 23 request already on the wire (``LeanTcpClient.send_nowait``):
        # the next ``read_write`` awaits it instead of sending (an E-stop's frames go out in
        # the caller's step, before anything is awaited).
        self.sent: asyncio.Future[Any] | None = None

    async def read(self, unit: int, block: ReadBlock, timeout_s: float) -> list[int]:
        """The registers (or bits) of ``block``; ModbusRequestError / ModbusTimeout if not."""
        client = self._link.client
        call: Callable[..., Awaitable[Any]] = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }[block.table]
        what = f"read {block.label}"
        rr = await self._link.execute(
            what,
            READ_FUNCTION[block.table],
            timeout_s,
            lambda: call(block.start, count=block.count, device_id=unit),
        )
        values = rr.bits if block.table in ("coil", "discrete") else rr.registers
        if len(values) < block.count:
            raise ModbusRequestError(f"{what}: short answer, {len(values)} of {block.count}")
        return [int(v) for v in values[: block.count]]

    async def read_write(
        self,
        unit: int,
        read_start: int,
        read_count: int,
        write_start: int,
        registers: list[int],
        timeout_s: float,
    ) -> list[int]:
        """FC 23: write ``registers`` from ``write_start``, then read ``read_count`` registers.

        The device performs the write before the read (Modbus application protocol v1.1b3,
        6.17), so the answer already reflects the write. ModbusExceptionAnswer (code 1 from a
        device without FC 23), ModbusRequestError or ModbusTimeout if it fails.
        """
        client = self._link.client
        sent = self.sent
        self.sent = None
        what = f"read/write holding {read_start}+{read_count} <- {write_start}+{len(registers)}"
        rr = await self._link.execute(
            what,
            23,
            timeout_s,
            (lambda: sent)
            if sent is not None
            else lambda: client.readwrite_registers(
                read_address=read_start,
                read_count=read_count,
                write_address=write_start,
                values=registers,
                device_id=unit,
            ),
        )
        values: list[int] = rr.registers
        if len(values) < read_count:
            raise ModbusRequestError(f"{what}: short answer, {len(values)} of {read_count}")
        return values[:read_count] if len(values) > read_count else values

    async def write_block(
        self, unit: int, start: int, registers: list[int], timeout_s: float
    ) -> None:
        """FC 16 of ``registers`` from ``start`` (also for one register)."""
        client = self._link.client
        await self._link.execute(
            f"write holding {start}+{len(registers)}",
            16,
            timeout_s,
            lambda: client.write_registers(start, registers, device_id=unit),
        )

    async def write(
        self, unit: int, wire: ModbusWire, registers: list[int], timeout_s: float
    ) -> None:
        client = self._link.client
        what = f"write {wire.table} {wire.address}"
        if wire.table == "coil":
            await self._link.execute(
                what,
                5,
                timeout_s,
                lambda: client.write_coil(wire.address, bool(registers[0]), device_id=unit),
            )
        elif len(registers) == 1:
            await self._link.execute(
                what,
                6,
                timeout_s,
                lambda: client.write_register(wire.address, registers[0], device_id=unit),
            )
        else:
            await self._link.execute(
                what,
                16,
                timeout_s,
                lambda: client.write_registers(wire.address, registers, device_id=unit),
            )


class ModbusLink:
    """One pymodbus client (a TCP connection or a serial line) behind a RequestScheduler."""

    def __init__(
        self,
        client: AsyncModbusTcpClient | AsyncModbusSerialClient | LeanTcpClient,
        name: str,
        max_in_flight: int = 1,
    ) -> None:
        self.client = client
        self.name = name
        self.scheduler = RequestScheduler(max_in_flight)

    @classmethod
    def tcp(cls, transport: ModbusTcpTransport, max_in_flight: int = 1, lean: bool = False) -> Self:
        name = f"{transport.host}:{transport.port}"
        if lean:
            # The axis cycle's transport (lean.py: pymodbus PDUs without its client); it takes
            # one request at a time, which the scheduler guarantees with max_in_flight 1.
            return cls(LeanTcpClient(transport.host, transport.port, 2 * transport.timeout_s), name)
        # reconnect_delay=0: pymodbus must not reconnect behind our back; the supervisor does.
        # retries=0: a missed poll is reported as such; the next cycle is the retry.
        # timeout (also the connect timeout) twice ours, so that ours fires first.
        client = AsyncModbusTcpClient(
            transport.host,
            port=transport.port,
            timeout=2 * transport.timeout_s,
            retries=0,
            reconnect_delay=0,
        )
        return cls(client, f"{transport.host}:{transport.port}", max_in_flight)

    @classmethod
    def serial(cls, transport: ModbusRtuTransport) -> Self:
        client = AsyncModbusSerialClient(
            transport.port,
            framer=FramerType.RTU,
            baudrate=transport.baudrate,
            bytesize=transport.bytesize,
            parity=transport.parity,
            stopbits=transport.stopbits,
            timeout=30.0,  # longer than any unit's timeout_s: ours fire first
            retries=0,
            reconnect_delay=0,
        )
        return cls(client, transport.port)

    async def open(self) -> None:
        if not await self.client.connect():
            self.client.close()
            raise ConnectionError(f"cannot connect to {self.name}")

    def close(self) -> None:
        self.client.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    @contextlib.asynccontextmanager
    async def session(self, priority: Priority) -> AsyncIterator[LinkSession]:
        """Hold the link for several requests (a command's writes go out back to back)."""
        async with self.scheduler.slot(priority):
            yield LinkSession(self)

    async def read(
        self, unit: int, block: ReadBlock, timeout_s: float, priority: Priority = Priority.POLL
    ) -> list[int]:
        async with self.session(priority) as s:
            return await s.read(unit, block, timeout_s)

    async def write(
        self,
        unit: int,
        wire: ModbusWire,
        registers: list[int],
        timeout_s: float,
        priority: Priority = Priority.COMMAND,
    ) -> None:
        async with self.session(priority) as s:
            await s.write(unit, wire, registers, timeout_s)

    async def execute(
        self,
        what: str,
        function_code: int,
        timeout_s: float,
        request: Callable[[], Awaitable[Any]],
    ) -> Any:
        """Make one pymodbus request; turn every failure into a ModbusRequestError.

        ``request`` is called here because pymodbus raises at the call, not at the await,
        when the link is down.
        """
        try:
            async with asyncio.timeout(timeout_s):
                rr = await request()
        except TimeoutError:
            ms = f"{timeout_s * 1000:.0f} ms"
            raise ModbusTimeout(f"{what}: no valid answer within {ms}") from None
        except ConnectionException as exc:
            raise ConnectionError(f"{what}: {self.name}: {exc}") from exc
        except ModbusException as exc:
            raise ModbusRequestError(f"{what}: {exc}") from exc
        if rr.isError():
            code = int(rr.exception_code)
            raise ModbusExceptionAnswer(f"{what}: {describe_exception(code)}", code)
        if rr.function_code != function_code:
            raise ModbusRequestError(
                f"{what}: answer has function code {rr.function_code}, expected {function_code}"
            )
        return rr


# --- serial lines shared by their units --------------------------------------------------------


def _line_settings(t: ModbusRtuTransport) -> str:
    return f"{t.baudrate} {t.bytesize}{t.parity}{t.stopbits}"


@dataclass
class _Line:
    link: ModbusLink
    settings: str
    users: int = 0


class _Lines:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.by_port: dict[str, _Line] = {}


# Per event loop: a lock or a client belongs to the loop it was made in (tests run many loops).
_LINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Lines] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def shared_serial_link(transport: ModbusRtuTransport) -> AsyncIterator[ModbusLink]:
    """The link of ``transport.port``: opened by its first user, closed by its last.

    ConnectionError if the port cannot be opened, or is open with other line settings (one
    RS-485 line has one baud rate and framing).
    """
    lines = _LINES.setdefault(asyncio.get_running_loop(), _Lines())
    settings = _line_settings(transport)
    async with lines.lock:
        line = lines.by_port.get(transport.port)
        if line is None:
            line = _Line(ModbusLink.serial(transport), settings)
            await line.link.open()
            lines.by_port[transport.port] = line
        elif line.settings != settings:
            raise ConnectionError(
                f"{transport.port} is open at {line.settings}; this unit asks for {settings}"
            )
        elif not line.link.connected:
            await line.link.open()  # the line failed under another unit: reopen it once
        line.users += 1
    try:
        yield line.link
    finally:
        line.users -= 1
        if line.users == 0:
            line.link.close()
            del lines.by_port[transport.port]
