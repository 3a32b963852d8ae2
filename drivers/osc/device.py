"""Devices that speak OSC (a DSP matrix, a console): points read and written at OSC addresses.

The convention of docs/interfaces/devices/*.md for OSC devices: a message to a point's address
with one argument sets it; a message with no argument asks for it, and the device answers to
the sender with the same address and the current value. So a poll sends every readable point's
query at once (pipelined, not one round trip after another) and gathers the answers; an answer
that does not come within the timeout makes that point's reading BAD. Writes are
fire-and-forget, as OSC is: the next poll shows whether the device took them.

Supervision as everywhere (drivers/base.py): a lost TCP connection, or ``offline_after_failures``
polls in a row with no answer at all, ends the connection; it is reopened with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from drivers.base import (
    Backoff,
    DeviceUnavailable,
    HealthSink,
    HealthTracker,
    ReadingSink,
    StopFlag,
)
from drivers.model import (
    CommandError,
    Device,
    DriverStats,
    Health,
    HealthState,
    OscTransport,
    OscWire,
    PointSpec,
    Quality,
    Reading,
    Value,
    ValueType,
)
from drivers.osc.client import OscClient
from drivers.osc.wire import OscEncodeError

log = logging.getLogger(__name__)


def osc_argument(wire: OscWire, value: Value) -> Value:
    """The argument a point's value travels as, by the wire's type tag."""
    if wire.type == "T":
        return bool(value)
    if wire.type == "i":
        return int(value)
    if wire.type == "f":
        return float(value)
    return str(value)


def point_value(point: PointSpec, args: list[Any]) -> Value:
    """The value of an answer's arguments; ValueError with the reason when it is not one."""
    if len(args) != 1:
        raise ValueError(f"{point.name}: expected one argument, got {len(args)}")
    (arg,) = args
    if point.dtype is ValueType.BOOL:
        if isinstance(arg, bool):
            return arg
        if isinstance(arg, int) and arg in (0, 1):
            return bool(arg)
        raise ValueError(f"{point.name}: expected a boolean, got {arg!r}")
    if isinstance(arg, bool) or not isinstance(arg, int | float):
        raise ValueError(f"{point.name}: expected a number, got {type(arg).__name__}")
    if not math.isfinite(arg):
        raise ValueError(f"{point.name}: {arg} is not a finite number")
    if reason := point.check_range(float(arg)):
        raise ValueError(f"{point.name}: {reason}")
    return int(arg) if point.dtype is ValueType.INT else float(arg)


class OscDeviceDriver:
    """Polls and writes one OSC device; see the module docstring."""

    def __init__(
        self,
        device: Device,
        sink: ReadingSink,
        on_health: HealthSink | None = None,
        *,
        timeout_s: float = 0.5,
    ) -> None:
        if not isinstance(device.transport, OscTransport):
            raise TypeError(f"{device.id}: an OSC driver needs an osc transport")
        self._device = device
        self.transport = device.transport
        self._sink = sink
        self.timeout_s = timeout_s
        self._tracker = HealthTracker(
            device.id, log, on_health, device.profile.health.offline_after_failures
        )
        self._stop = StopFlag()
        self._client: OscClient | None = None
        self._readable = [
            p for p in device.profile.points.values() if p.osc is not None and p.access.readable
        ]

    @property
    def device(self) -> Device:
        return self._device

    @property
    def stats(self) -> DriverStats:
        return self._tracker.stats

    @property
    def health(self) -> Health:
        return self._tracker.health

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                async with OscClient(self.transport) as client:
                    self._client = client
                    await self._poll_loop(client, backoff)
            except (OSError, DeviceUnavailable) as exc:
                if not self._stop.is_set():
                    self._tracker.failed(f"{self.transport.endpoint}: {exc}", offline=True)
                    await self._publish_bad()
            finally:
                self._client = None
            await self._stop.sleep(backoff.next_delay())
        self._tracker.set(HealthState.OFFLINE, "stopped")

    async def _poll_loop(self, client: OscClient, backoff: Backoff) -> None:
        period = 1.0 / self.device.poll_hz
        silent = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            answered = await self.poll_once(client)
            if answered:
                backoff.reset()
                silent = 0
            elif self._readable:
                silent += 1
                if silent >= self.device.profile.health.offline_after_failures:
                    raise DeviceUnavailable(f"no answer to {silent} polls")
            self.stats.cycles += 1
            next_at += period
            now = time.monotonic()
            if next_at < now:
                self.stats.missed += 1
                next_at = now
            await self._stop.sleep(next_at - now)

    async def poll_once(self, client: OscClient) -> bool:
        """Ask every readable point at once; publish the readings; True if any answered."""
        t0 = time.monotonic()

        async def ask(point: PointSpec) -> Any:
            assert point.osc is not None
            return await client.request(
                point.osc.address, timeout_s=self.timeout_s, reply_to=point.osc.address
            )

        answers = await asyncio.gather(*(ask(p) for p in self._readable), return_exceptions=True)
        mono, wall = time.monotonic(), time.time()
        readings: list[Reading] = []
        problems: list[str] = []
        answered = False
        for point, answer in zip(self._readable, answers, strict=True):
            if isinstance(answer, DeviceUnavailable):
                raise answer
            if isinstance(answer, BaseException):
                problems.append(f"{point.name}: no answer within {self.timeout_s:g} s")
                readings.append(Reading(self.device.id, point.name, None, mono, wall, Quality.BAD))
                continue
            answered = True
            try:
                value = point_value(point, answer.data)
            except ValueError as exc:
                problems.append(str(exc))
                readings.append(Reading(self.device.id, point.name, None, mono, wall, Quality.BAD))
                continue
            readings.append(Reading(self.device.id, point.name, value, mono, wall))
        if problems:
            self._tracker.failed("; ".join(problems[:3]) + (" …" if len(problems) > 3 else ""))
        elif answered:
            self._tracker.succeeded(mono - t0)
        await self._sink(readings)
        return answered

    async def _publish_bad(self) -> None:
        mono, wall = time.monotonic(), time.time()
        await self._sink(
            [Reading(self.device.id, p.name, None, mono, wall, Quality.BAD) for p in self._readable]
        )

    async def command(self, name: str, args: Mapping[str, Any]) -> list[tuple[str, Value]]:
        writes = self.device.profile.resolve_command(name, args)
        messages: list[tuple[str, Value, str, Value]] = []
        for point, value in writes:
            if point.osc is None:
                raise CommandError(f"{name}: point '{point.name}' has no OSC address")
            messages.append((point.name, value, point.osc.address, osc_argument(point.osc, value)))
        client = self._client
        if client is None:
            raise DeviceUnavailable(f"{self.device.id} is not connected ({self.health.reason})")
        for _, _, address, argument in messages:
            try:
                client.send(address, argument)
            except OscEncodeError as exc:
                raise CommandError(f"{name}: {exc}") from exc
        return [(point_name, value) for point_name, value, _, _ in messages]
