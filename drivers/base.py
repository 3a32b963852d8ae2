"""What every protocol driver shares: the driver interface, health tracking and backoff.

A driver is three parts (STYLE.md): a pure wire format, a connection that owns its socket as
an async context manager, and a supervisor. The supervisor part is the same for every protocol
and lives here:

- ``HealthTracker`` turns request outcomes into a health state with a reason, counts them into
  ``DriverStats``, and logs a failure once at WARNING, then quietly, then "recovered" once;
- ``Backoff`` is capped exponential backoff with full jitter, so many devices that failed
  together do not all reconnect on the same tick;
- ``StopFlag`` is an explicit stop that also wakes sleeps, because a cancellation that lands
  while a TaskGroup is already handling a connection failure can be absorbed (Python 3.11),
  and a supervisor that misses its stop would reconnect for ever.

``DeviceDriver`` is the interface ``edge/`` wires, whatever the protocol.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from drivers.model import Device, DriverStats, Health, HealthState, Reading, Value

ReadingSink = Callable[[list[Reading]], Awaitable[None]]
HealthSink = Callable[[Health], None]


class DeviceUnavailable(RuntimeError):
    """The device cannot take a command now (not connected, or it refused the request)."""


class DeviceDriver(Protocol):
    """One device (or one link serving several) as ``edge/`` sees it."""

    @property
    def device(self) -> Device: ...

    @property
    def stats(self) -> DriverStats: ...

    @property
    def health(self) -> Health: ...

    async def run(self) -> None:
        """Connect and serve until ``stop()``; reconnect on failure; never raise for I/O."""

    def stop(self) -> None:
        """Ask ``run`` to finish the request in flight and return."""

    async def command(self, name: str, args: Mapping[str, Any]) -> list[tuple[str, Value]]:
        """Validate and execute a profile command; return the writes made.

        Raises ``CommandError`` (the profile refuses it, with the reason) or
        ``DeviceUnavailable``.
        """


class DatagramEndpoint(asyncio.DatagramProtocol):
    """A UDP endpoint that hands each datagram (with its ``(host, port)`` source) and each
    socket error to its owner; the owner keeps all the state."""

    def __init__(
        self,
        on_datagram: Callable[[bytes, tuple[str, int]], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        self._on_datagram = on_datagram
        self._on_error = on_error

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        self._on_error(exc)


def local_address(transport: asyncio.BaseTransport | None, name: str) -> tuple[str, int]:
    """The ``(host, port)`` a socket is bound to (a port 0 bind gets an ephemeral one)."""
    if transport is None:
        raise RuntimeError(f"{name} is not open")
    host, port = transport.get_extra_info("sockname")[:2]
    return str(host), int(port)


class StopFlag:
    """An explicit stop request whose ``sleep`` wakes at once when the stop is set.

    ``sleep`` is on every poller's hot path (200 devices at 10 Hz), so it parks on a bare
    future with a timer instead of ``wait_for(event.wait())``, which creates a task per call.
    """

    def __init__(self) -> None:
        self._set = False
        self._sleepers: set[asyncio.Future[None]] = set()

    def set(self) -> None:
        self._set = True
        for fut in self._sleepers:
            if not fut.done():
                fut.set_result(None)

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        while not self._set:
            await self.sleep(3600)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0 or self._set:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _wake, fut)
        self._sleepers.add(fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._sleepers.discard(fut)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Backoff:
    """Capped exponential backoff with full jitter (0.5–1.0 of the current step)."""

    def __init__(self, start_s: float = 0.1, cap_s: float = 5.0) -> None:
        self.start_s, self.cap_s = start_s, cap_s
        self._step = start_s

    def reset(self) -> None:
        self._step = self.start_s

    def next_delay(self) -> float:
        delay = random.uniform(0.5, 1.0) * self._step
        self._step = min(self._step * 2, self.cap_s)
        return delay


class HealthTracker:
    """Health state, counters and log-once/recovered for one device (or link)."""

    def __init__(
        self,
        name: str,
        logger: logging.Logger,
        on_health: HealthSink | None = None,
        offline_after_failures: int = 3,
    ) -> None:
        self.name = name
        self.stats = DriverStats()
        self.health = Health(name, HealthState.UNKNOWN, "not started")
        self._log = logger
        self._on_health = on_health
        self._limit = offline_after_failures
        self._failures = 0
        self._warned = False

    def set(self, state: HealthState, reason: str = "") -> None:
        if state is self.health.state and reason == self.health.reason:
            return
        self.health = Health(self.name, state, reason)
        if self._on_health is not None:
            self._on_health(self.health)

    def failed(self, reason: str, *, offline: bool = False) -> None:
        """A request failed; ``offline`` says the link itself is down (no need to count)."""
        self.stats.errors += 1
        self._failures += 1
        if not self._warned:
            self._log.warning("%s: %s", self.name, reason)
            self._warned = True
        else:
            self._log.debug("%s: %s", self.name, reason)
        down = offline or self._failures >= self._limit
        self.set(HealthState.OFFLINE if down else HealthState.DEGRADED, reason)

    def succeeded(self, latency_s: float | None = None) -> None:
        if latency_s is not None:
            self.stats.record(latency_s)
        if self._warned:
            self._log.info("%s: recovered", self.name)
            self._warned = False
        self._failures = 0
        self.set(HealthState.ONLINE)

    def reconnected(self) -> None:
        self.stats.reconnects += 1
