"""Modbus device driver (TCP and RTU): polling supervisor, heartbeat and commands.

Three parts, kept apart (STYLE.md):

- the wire format is ``codec.py`` (pure);
- the connection is ``link.py``: a ``ModbusLink`` owns one pymodbus client and puts a priority
  scheduler in front of it (command writes > heartbeat > polls);
- ``ModbusDeviceDriver`` supervises one device: reconnects with capped exponential backoff and
  jitter, polls on monotonic deadlines, writes the heartbeat the drive's watchdog watches, turns
  every failure into readings of quality BAD plus a health state with a reason (via
  ``HealthTracker``: a failure is logged once at WARNING, then quietly, then "recovered" once).

Isolation. A Modbus TCP device has its own connection, scheduler and timeout, so a dead or slow
one only delays itself. Units on one RS-485 line share the line (``shared_serial_link``): a
unit that stops answering costs its own timeout in its own poll slot, and once it has been
silent for ``offline_after_failures`` requests it is no longer polled every cycle but probed
with capped exponential backoff (0.1 s doubling to 5 s) and its heartbeat pauses, so a dead
unit takes at most one timeout every 5 s from the live ones. A silent TCP device is
disconnected instead and reconnected with the same backoff (a half-open connection is the
common cause).

Timeouts. Each request has the device's timeout, ``request_timeout_s``: the transport's
``timeout_s``, capped at two heartbeat periods when the profile has a heartbeat. A heartbeat
write waits at most for the one request already on the wire, so two heartbeat writes are at
most one period plus one timeout apart: 50 + 100 = 150 ms for the hoist, inside the drive's
200 ms watchdog. (pymodbus's default 0.5 s would let one slow poll trip the watchdog.)

Cycle mode. With ``cycle_hz`` (a machinery axis streamed by the motion layer), one
``AxisCycle`` (``cycle.py``) replaces the poll and heartbeat loops: per cycle one FC 23
transaction writes the setpoint and heartbeat and reads the status block; ``driver.cycle`` is
the motion layer's API (setpoints, stop writes, statuses, statistics). TCP only: an RS-485 line
at 19 200 Bd carries about 30 such transactions a second in all.

Missed cycles. A poll cycle (one deadline) counts as missed when its poll fails or ends after
the next deadline, and every deadline skipped after an overrun or while a silent unit is only
probed is missed too; both are counted in ``DriverStats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from drivers.base import (
    Backoff,
    DeviceUnavailable,
    HealthSink,
    HealthTracker,
    ReadingSink,
    StopFlag,
)
from drivers.modbus.codec import encode, plan_reads
from drivers.modbus.cycle import AxisCycle, AxisStatus
from drivers.modbus.link import (
    ModbusLink,
    ModbusRequestError,
    ModbusTimeout,
    Priority,
    shared_serial_link,
)
from drivers.model import (
    CommandError,
    Device,
    DriverStats,
    Health,
    HealthState,
    ModbusRtuTransport,
    ModbusTcpTransport,
    ModbusWire,
    PointSpec,
    Quality,
    Reading,
    Value,
)

__all__ = ["DeviceUnavailable", "ModbusDeviceDriver", "ModbusRequestError", "request_timeout_s"]

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0
STOP_LINK_CHECK_S = 1.0  # how often the stop connection is checked (and reopened)
STOP_LINK_RETRY_MAX_S = 30.0


def request_timeout_s(device: Device) -> float:
    """The timeout of every request to ``device`` (see the module docstring for why)."""
    transport = device.transport
    assert isinstance(transport, ModbusTcpTransport | ModbusRtuTransport)
    timeout = transport.timeout_s
    if device.profile.heartbeat is not None:
        timeout = min(timeout, 2 * device.profile.heartbeat.period_ms / 1000)
    return timeout


class ModbusDeviceDriver:
    """Polls one device, keeps its heartbeat alive and executes its profile's commands."""

    def __init__(
        self,
        device: Device,
        sink: ReadingSink,
        on_health: HealthSink | None = None,
        *,
        max_in_flight: int = 1,
        cycle_hz: float | None = None,
        on_status: Callable[[AxisStatus], None] | None = None,
    ) -> None:
        if not isinstance(device.transport, ModbusTcpTransport | ModbusRtuTransport):
            raise TypeError(f"{device.id}: not a Modbus transport ({device.transport.kind})")
        if cycle_hz is not None and not isinstance(device.transport, ModbusTcpTransport):
            raise ValueError(f"{device.id}: the axis cycle runs over Modbus TCP only")
        self.device = device
        self.transport: ModbusTcpTransport | ModbusRtuTransport = device.transport
        self.unit = device.transport.unit
        self.timeout_s = request_timeout_s(device)
        self.max_in_flight = max_in_flight
        self._sink = sink
        self._tracker = HealthTracker(
            device.id, log, on_health, device.profile.health.offline_after_failures
        )
        self.stats: DriverStats = self._tracker.stats
        self._blocks = plan_reads(device.profile.points.values())
        self._silent_limit = device.profile.health.offline_after_failures
        self._silent = 0  # consecutive requests without an answer
        self._link: ModbusLink | None = None
        self._heartbeat = 0
        self._stop = StopFlag()
        # Cycle mode (module docstring): the motion layer's API is ``driver.cycle``.
        self.cycle: AxisCycle | None = None
        if cycle_hz is not None:
            self.cycle = AxisCycle(device, cycle_hz, self._tracker, sink, on_status)

    @property
    def health(self) -> Health:
        return self._tracker.health

    @property
    def silent(self) -> bool:
        """The device has not answered its last ``offline_after_failures`` requests."""
        return self._silent >= self._silent_limit

    def stop(self) -> None:
        """Finish the current request, then stop polling and heartbeating; ``run`` returns."""
        self._stop.set()

    # --- supervisor ---------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, poll and heartbeat until ``stop()``; reconnect with backoff on failure."""
        backoff = Backoff(BACKOFF_START_S, BACKOFF_MAX_S)
        connected_before = False
        while not self._stop.is_set():
            try:
                async with self._open_link() as link:
                    if connected_before:
                        self._tracker.reconnected()
                    connected_before = True
                    self._link = link
                    await self._serve(link, backoff)
            except* (ConnectionError, OSError, ModbusRequestError) as group:
                if not self._stop.is_set():  # failures while stopping are expected
                    # Counted like any failed request: offline after offline_after_failures,
                    # so one refused connect (a drive rebooting) is "degraded", not "offline".
                    self._tracker.failed("; ".join(str(e) for e in group.exceptions))
                    await self._publish_bad()
            finally:
                self._link = None
            await self._stop.sleep(backoff.next_delay())
        self._tracker.set(HealthState.OFFLINE, "stopped")

    def _open_link(self) -> contextlib.AbstractAsyncContextManager[ModbusLink]:
        if isinstance(self.transport, ModbusRtuTransport):
            return shared_serial_link(self.transport)
        # The lean transport (lean.py; why: docs/decisions.md) for every TCP device with one
        # request in flight, polled or cycled: a third less CPU per transaction than pymodbus's
        # client, which the event loop shares with 200 pollers and the axis cycles. pymodbus's
        # client only where several requests may be in flight (the lean one takes one).
        return ModbusLink.tcp(self.transport, self.max_in_flight, lean=self.max_in_flight == 1)

    async def _keep_stop_connection(self, cycle: AxisCycle) -> None:
        """The axis's stop connection (cycle.py): opened beside the cycle's, and opened again
        whenever it is found closed (a drive may close an idle connection), with back-off so
        a drive that refuses a second connection is asked at most every STOP_LINK_RETRY_MAX_S.
        Until it is open, stops take turns on the cycle's connection."""
        assert isinstance(self.transport, ModbusTcpTransport)
        backoff = Backoff(STOP_LINK_CHECK_S, STOP_LINK_RETRY_MAX_S)
        link: ModbusLink | None = None
        warned = False
        try:
            while not self._stop.is_set():
                if link is None or not link.connected:
                    if link is not None:
                        link.close()
                        cycle.use_stop_link(None)
                    link = ModbusLink.tcp(self.transport, 1, lean=True)
                    try:
                        await link.open()
                    except (ConnectionError, OSError) as exc:
                        link = None
                        if not warned:
                            log.warning(
                                "%s: no stop connection (%s); stops share the cycle's",
                                self.device.id,
                                exc,
                            )
                            warned = True
                        await self._stop.sleep(backoff.next_delay())
                        continue
                    cycle.use_stop_link(link)
                await self._stop.sleep(STOP_LINK_CHECK_S)
                if link is not None and link.connected:
                    backoff.reset()
        finally:
            cycle.use_stop_link(None)
            if link is not None:
                link.close()

    async def _serve(self, link: ModbusLink, backoff: Backoff) -> None:
        if self.cycle is not None:
            cycle = self.cycle
            keeper = asyncio.create_task(
                self._keep_stop_connection(cycle), name=f"{self.device.id}:stop-connection"
            )
            try:
                await cycle.run(
                    link, self.unit, self.timeout_s, self._stop, self._silent_limit, backoff
                )
            finally:
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)
            return
        async with asyncio.TaskGroup() as tg:
            if self.device.profile.heartbeat is not None:
                tg.create_task(self._heartbeat_loop(link), name=f"{self.device.id}:heartbeat")
            tg.create_task(self._poll_loop(link, backoff), name=f"{self.device.id}:poll")

    def _answered(self) -> None:
        self._silent = 0

    def _no_answer(self) -> None:
        self._silent += 1

    async def _poll_loop(self, link: ModbusLink, backoff: Backoff) -> None:
        period = 1.0 / self.device.poll_hz
        shared = isinstance(self.transport, ModbusRtuTransport)
        # Stagger devices across the period so 200 pollers do not fire on the same tick.
        next_at = time.monotonic() + random.uniform(0, period)
        while True:
            await self._stop.sleep(next_at - time.monotonic())
            if self._stop.is_set():
                return
            ok = await self.poll_once(link)
            if ok:
                backoff.reset()  # after an answer, not after a connect: a silent peer backs off
            elif self.silent:
                if not shared:
                    raise ConnectionError(f"no answer to {self._silent} requests")
                # A silent unit on a shared line is probed, not polled (module docstring).
                await self._stop.sleep(backoff.next_delay())
            next_at = self._account(next_at, period, ok)

    def _account(self, deadline: float, period: float, ok: bool) -> float:
        """Count the cycle of ``deadline`` and any skipped after it; return the next deadline."""
        now = time.monotonic()
        self.stats.cycles += 1
        next_at = deadline + period
        if not ok or now > next_at:
            self.stats.missed += 1
        if now > next_at:  # overran: skip the missed deadlines rather than burst to catch up
            skipped = int((now - next_at) // period) + 1
            self.stats.cycles += skipped
            self.stats.missed += skipped
            next_at += skipped * period
        return next_at

    async def poll_once(self, link: ModbusLink) -> bool:
        """Read every block once and publish the readings; True if all of it was good."""
        readings: list[Reading] = []
        clean = True
        for block in self._blocks:
            t0 = time.monotonic()
            try:
                registers = await link.read(self.unit, block, self.timeout_s)
            except ModbusRequestError as exc:
                if not link.connected:
                    raise ConnectionError(f"connection lost: {exc}") from exc
                self.stats.requests += 1  # DriverStats.record counts only answered ones
                if isinstance(exc, ModbusTimeout):
                    self._no_answer()
                else:
                    self._answered()
                self._tracker.failed(str(exc))
                readings.extend(self._bad(block.points))
                clean = False
                continue
            t1 = time.monotonic()
            self.stats.record(t1 - t0)
            self._answered()
            values, errors = block.decode_points(registers)
            wall = time.time()
            readings.extend(
                Reading(self.device.id, name, value, t1, wall, Quality.GOOD)
                for name, value in values.items()
            )
            if errors:
                clean = False
                self._tracker.failed(f"read {block.label}: {'; '.join(errors.values())}")
                readings.extend(
                    Reading(self.device.id, name, None, t1, wall, Quality.BAD) for name in errors
                )
        if clean:
            self._tracker.succeeded()
        # Awaiting the sink is the backpressure: a full telemetry queue slows the poller.
        await self._sink(readings)
        return clean

    def _bad(self, points: tuple[PointSpec, ...]) -> list[Reading]:
        mono, wall = time.monotonic(), time.time()
        return [Reading(self.device.id, p.name, None, mono, wall, Quality.BAD) for p in points]

    async def _publish_bad(self) -> None:
        await self._sink([r for b in self._blocks for r in self._bad(b.points)])

    async def _heartbeat_loop(self, link: ModbusLink) -> None:
        spec = self.device.profile.heartbeat
        assert spec is not None
        wire = self.device.profile.points[spec.point].modbus
        assert wire is not None
        period = spec.period_ms / 1000
        shared = isinstance(self.transport, ModbusRtuTransport)
        next_at = time.monotonic()
        while not self._stop.is_set():
            if shared and self.silent:
                # Writing to a silent unit would cost the line a timeout every period; the
                # poll loop's probe finds out when it answers again.
                await self._stop.sleep(period)
                next_at = time.monotonic()
                continue
            self._heartbeat = (self._heartbeat + 1) & 0xFFFF
            t0 = time.monotonic()
            try:
                await link.write(
                    self.unit, wire, [self._heartbeat], self.timeout_s, Priority.HEARTBEAT
                )
            except ModbusRequestError as exc:
                if not link.connected:
                    raise ConnectionError(f"heartbeat: connection lost: {exc}") from exc
                self.stats.requests += 1
                if isinstance(exc, ModbusTimeout):
                    self._no_answer()
                else:
                    self._answered()
                self._tracker.failed(f"heartbeat: {exc}")
                if self.silent and not shared:
                    # As for polls: a TCP peer silent for offline_after_failures requests is
                    # reconnected; one late or refused heartbeat is not a dead connection.
                    raise ConnectionError(f"no answer to {self._silent} requests") from exc
            else:
                self.stats.record(time.monotonic() - t0)
                self._answered()
            next_at += period
            now = time.monotonic()
            if next_at < now:
                next_at = now  # late: write now, do not burst
            await self._stop.sleep(next_at - now)

    # --- commands -----------------------------------------------------------------------

    async def command(self, name: str, args: Mapping[str, Any]) -> list[tuple[str, Value]]:
        """Validate and execute a profile command; return the writes it made.

        The writes go out back to back at command priority: no poll or heartbeat waiting for
        the link gets between them.

        CommandError: the profile refuses the call (the message says why);
        DeviceUnavailable: the device is not connected, not answering, or refused a write.
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
        link = self._link
        if link is None or not link.connected:
            raise DeviceUnavailable(f"{self.device.id} is not connected ({self.health.reason})")
        if self.silent:
            raise DeviceUnavailable(f"{self.device.id} is not answering ({self.health.reason})")
        done: list[tuple[str, Value]] = []
        async with link.session(Priority.COMMAND) as session:
            for point, wire, registers, value in encoded:
                try:
                    await session.write(self.unit, wire, registers, self.timeout_s)
                except (ModbusRequestError, ConnectionError) as exc:
                    raise DeviceUnavailable(f"{self.device.id}: {exc}") from exc
                done.append((point.name, value))
        return done
