"""Time for the cue engine: the event loop's monotonic clock, or a virtual one for tests.

Every delay, fade progress, auto-continue and timeout of the playback engine is measured on a
``Clock``. The service uses ``LoopClock`` (the running loop's ``time()`` and ``asyncio.sleep``);
unit tests use ``VirtualClock``, whose ``advance`` moves time forward and wakes every sleeper
whose deadline has come, in deadline order, so a test of a 30 s chain runs in milliseconds and
never sleeps for real.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def wall(self) -> float:
        """Epoch seconds of ``now`` (for the journal)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The running event loop's clock (monotonic) and ``asyncio.sleep``."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class VirtualClock:
    """Time that moves only when a test calls ``advance``; sleepers wake in deadline order."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._wall0 = wall_start - start
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall0 + self._now

    async def sleep(self, seconds: float) -> None:
        if not math.isfinite(seconds):
            raise ValueError("sleep needs a finite time")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self._now + max(0.0, seconds), next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._heap if not f.done())

    async def settle(self) -> None:
        """Let every task that can run, run (a few dozen loop turns)."""
        for _ in range(40):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking sleepers at their deadlines."""
        end = self._now + seconds
        await self.settle()
        while self._heap and self._heap[0][0] <= end:
            deadline, _, fut = heapq.heappop(self._heap)
            self._now = max(self._now, deadline)
            if not fut.done():
                fut.set_result(None)
            await self.settle()
        self._now = end
        await self.settle()
