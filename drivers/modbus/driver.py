"""Modbus TCP device driver: connection, polling supervisor, heartbeat and commands.

Three parts, kept apart (STYLE.md):

- the wire format is ``codec.py`` (pure);
- ``ModbusConnection`` is an async context manager and the single owner of its socket;
- ``ModbusDeviceDriver`` supervises it: reconnects with capped exponential backoff and jitter,
  polls on monotonic deadlines, writes the heartbeat the drive's watchdog watches, turns every
  failure into readings of quality BAD plus a health state with a reason, and logs a failure
  once at WARNING, then quietly, then "recovered" once.

Each device has its own connection, so a dead or slow device only ever delays itself. pymodbus
serialises requests on one connection with a FIFO lock; because the poller issues one request at
a time, a command waits behind at most the one request already in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.modbus.codec import ReadBlock, encode, plan_reads
from drivers.model import (
    CommandError,
    Device,
    DriverStats,
    Health,
    HealthState,
    ModbusTcpTransport,
    ModbusWire,
    PointSpec,
    Quality,
    Reading,
    Value,
)

log = logging.getLogger(__name__)

ReadingSink = Callable[[list[Reading]], Awaitable[None]]
HealthSink = Callable[[Health], None]

BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0


class DeviceUnavailable(RuntimeError):
    """The device cannot take a command now (not connected, or it refused the request)."""


class ModbusRequestError(RuntimeError):
    """The device answered with a Modbus exception, or not at all."""


class ModbusConnection:
    """One TCP connection to one Modbus device (unit id). Owns its socket."""

    def __init__(self, transport: ModbusTcpTransport) -> None:
        self.transport = transport
        # reconnect_delay=0: pymodbus must not reconnect behind our back; the supervisor does.
        # retries=0: a missed poll is reported as such; the next cycle is the retry.
        self._client = AsyncModbusTcpClient(
            transport.host,
            port=transport.port,
            timeout=transport.timeout_s,
            retries=0,
            reconnect_delay=0,
        )

    async def __aenter__(self) -> Self:
        if not await self._client.connect():
            self._client.close()
            raise ConnectionError(f"cannot connect to {self.transport.host}:{self.transport.port}")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._client.close()

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    async def read(self, block: ReadBlock) -> list[int]:
        unit = self.transport.unit
        try:
            if block.table == "holding":
                rr = await self._client.read_holding_registers(
                    block.start, count=block.count, device_id=unit
                )
            elif block.table == "input":
                rr = await self._client.read_input_registers(
                    block.start, count=block.count, device_id=unit
                )
            elif block.table == "coil":
                rr = await self._client.read_coils(block.start, count=block.count, device_id=unit)
            else:
                rr = await self._client.read_discrete_inputs(
                    block.start, count=block.count, device_id=unit
                )
        except ModbusException as exc:
            raise ModbusRequestError(
                f"read {block.table} {block.start}+{block.count}: {exc}"
            ) from exc
        if rr.isError():
            raise ModbusRequestError(
                f"read {block.table} {block.start}+{block.count}: exception code "
                f"{getattr(rr, 'exception_code', '?')}"
            )
        values = rr.bits if block.table in ("coil", "discrete") else rr.registers
        return [int(v) for v in values[: block.count]]

    async def write(self, wire: ModbusWire, registers: list[int]) -> None:
        unit = self.transport.unit
        try:
            if wire.table == "coil":
                rr = await self._client.write_coil(wire.address, bool(registers[0]), device_id=unit)
            elif len(registers) == 1:
                rr = await self._client.write_register(wire.address, registers[0], device_id=unit)
            else:
                rr = await self._client.write_registers(wire.address, registers, device_id=unit)
        except ModbusException as exc:
            raise ModbusRequestError(f"write {wire.table} {wire.address}: {exc}") from exc
        if rr.isError():
            raise ModbusRequestError(
                f"write {wire.table} {wire.address}: exception code "
                f"{getattr(rr, 'exception_code', '?')}"
            )


class ModbusDeviceDriver:
    """Polls one device, keeps its heartbeat alive and executes its profile's commands."""

    def __init__(
        self,
        device: Device,
        sink: ReadingSink,
        on_health: HealthSink | None = None,
    ) -> None:
        self.device = device
        self._sink = sink
        self._on_health = on_health
        self._blocks = plan_reads(device.profile.points.values())
        self._conn: ModbusConnection | None = None
        self.stats = DriverStats()
        self.health = Health(device.id, HealthState.UNKNOWN, "not started")
        self._failures = 0
        self._warned = False
        self._heartbeat = 0
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the current request, then stop polling and heartbeating; ``run`` returns.

        An explicit stop rather than task cancellation: a cancel that lands while a TaskGroup
        is already handling a connection failure can be absorbed (Python 3.11), and a
        supervisor that misses its stop would reconnect for ever.
        """
        self._stopping.set()

    # --- health -------------------------------------------------------------------------

    def _set_health(self, state: HealthState, reason: str = "") -> None:
        if state is self.health.state and reason == self.health.reason:
            return
        self.health = Health(self.device.id, state, reason)
        if self._on_health is not None:
            self._on_health(self.health)

    def _failed(self, reason: str) -> None:
        self.stats.errors += 1
        self._failures += 1
        if not self._warned:
            log.warning("%s: %s", self.device.id, reason)
            self._warned = True
        else:
            log.debug("%s: %s", self.device.id, reason)
        limit = self.device.profile.health.offline_after_failures
        self._set_health(
            HealthState.OFFLINE if self._failures >= limit else HealthState.DEGRADED, reason
        )

    def _succeeded(self) -> None:
        if self._warned:
            log.info("%s: recovered", self.device.id)
            self._warned = False
        self._failures = 0
        self._set_health(HealthState.ONLINE)

    # --- supervisor ---------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, poll and heartbeat until cancelled; reconnect with backoff on failure."""
        backoff = BACKOFF_START_S
        first = True
        while not self._stopping.is_set():
            try:
                assert isinstance(self.device.transport, ModbusTcpTransport)
                async with ModbusConnection(self.device.transport) as conn:
                    self._conn = conn
                    if not first:
                        self.stats.reconnects += 1
                    first = False
                    backoff = BACKOFF_START_S
                    await self._serve(conn)
            except* (ConnectionError, OSError, ModbusRequestError) as group:
                if not self._stopping.is_set():  # failures while stopping are expected
                    self._failed("; ".join(str(e) for e in group.exceptions))
                    await self._publish_bad()
            finally:
                self._conn = None
            # Full jitter keeps many devices that failed together from reconnecting together.
            await self._sleep(random.uniform(0.5, 1.0) * backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        self._set_health(HealthState.OFFLINE, "stopped")

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on stop()."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _serve(self, conn: ModbusConnection) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.device.profile.heartbeat is not None:
                tg.create_task(self._heartbeat_loop(conn), name=f"{self.device.id}:heartbeat")
            tg.create_task(self._poll_loop(conn), name=f"{self.device.id}:poll")

    async def _poll_loop(self, conn: ModbusConnection) -> None:
        period = 1.0 / self.device.poll_hz
        # Stagger devices across the period so 200 pollers do not fire on the same tick.
        next_at = time.monotonic() + random.uniform(0, period)
        while True:
            await self._sleep(next_at - time.monotonic())
            if self._stopping.is_set():
                return
            await self.poll_once(conn)
            next_at += period
            now = time.monotonic()
            if next_at < now:  # overran: skip missed cycles rather than burst to catch up
                next_at = now + period - ((now - next_at) % period)

    async def poll_once(self, conn: ModbusConnection) -> None:
        readings: list[Reading] = []
        for block in self._blocks:
            t0 = time.monotonic()
            try:
                registers = await conn.read(block)
                values = block.decode(registers)
            except (ModbusRequestError, ValueError) as exc:
                if not conn.connected:
                    raise ConnectionError(f"connection lost: {exc}") from exc
                self._failed(str(exc))
                readings.extend(self._bad(block.points))
                continue
            t1 = time.monotonic()
            self.stats.record(t1 - t0)
            wall = time.time()
            readings.extend(
                Reading(self.device.id, name, value, t1, wall, Quality.GOOD)
                for name, value in values.items()
            )
            self._succeeded()
        # Awaiting the sink is the backpressure: a full telemetry queue slows the poller.
        await self._sink(readings)

    def _bad(self, points: tuple[PointSpec, ...]) -> list[Reading]:
        mono, wall = time.monotonic(), time.time()
        return [Reading(self.device.id, p.name, None, mono, wall, Quality.BAD) for p in points]

    async def _publish_bad(self) -> None:
        await self._sink([r for b in self._blocks for r in self._bad(b.points)])

    async def _heartbeat_loop(self, conn: ModbusConnection) -> None:
        spec = self.device.profile.heartbeat
        assert spec is not None
        wire = self.device.profile.points[spec.point].modbus
        assert wire is not None
        period = spec.period_ms / 1000
        next_at = time.monotonic()
        while not self._stopping.is_set():
            self._heartbeat = (self._heartbeat + 1) & 0xFFFF
            await conn.write(wire, [self._heartbeat])
            next_at += period
            await self._sleep(next_at - time.monotonic())

    # --- commands -----------------------------------------------------------------------

    async def command(self, name: str, args: Mapping[str, Any]) -> list[tuple[str, Value]]:
        """Validate and execute a profile command; return the writes it made.

        CommandError: the profile refuses the call (the message says why);
        DeviceUnavailable: the device is not connected or refused a write.
        """
        writes = self.device.profile.resolve_command(name, args)
        encoded: list[tuple[PointSpec, ModbusWire, list[int], Value]] = []
        for point, value in writes:
            wire = point.modbus
            if wire is None or isinstance(value, str):
                raise CommandError(f"{name}: point '{point.name}' cannot be written over Modbus")
            try:
                encoded.append((point, wire, encode(wire, value), value))
            except ValueError as exc:
                raise CommandError(f"{name}: {point.name}: {exc}") from exc
        conn = self._conn
        if conn is None or not conn.connected:
            raise DeviceUnavailable(f"{self.device.id} is not connected ({self.health.reason})")
        done: list[tuple[str, Value]] = []
        for point, wire, registers, value in encoded:
            try:
                await conn.write(wire, registers)
            except (ModbusRequestError, OSError) as exc:
                raise DeviceUnavailable(f"{self.device.id}: {exc}") from exc
            done.append((point.name, value))
        return done
