"""In-process publish/subscribe bus with bounded queues and a stated overflow policy per consumer.

Every consumer chooses what happens when it falls behind:

- ``BLOCK``: the publisher waits for room. Telemetry uses it: a reading is never dropped; a slow
  store slows the pollers instead (backpressure), which shows up as missed poll cycles that the
  drivers count.
- ``LATEST``: one slot per key (device, point); a newer value replaces the unread older one. The
  live view and WebSocket clients use it: they want the present, not the history, and a slow
  browser must never hold up the show.
- ``DROP_OLDEST``: a ring; the oldest unread item is discarded and counted. For event feeds
  where recent history matters but the publisher must not wait.

The bus is typed (``Bus[T]``) and is used from one event loop.
"""

from __future__ import annotations

import asyncio
import collections
import enum
from collections.abc import AsyncIterator, Callable, Collection, Hashable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Overflow(enum.Enum):
    BLOCK = "block"
    LATEST = "latest"
    DROP_OLDEST = "drop_oldest"


class Closed(Exception):
    """The subscription was closed; no more items will come."""


class Subscription(Generic[T]):
    def __init__(
        self,
        bus: Bus[T],
        name: str,
        policy: Overflow,
        maxsize: int,
        key: Callable[[T], Hashable] | None,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        if policy is Overflow.LATEST and key is None:
            raise ValueError("a LATEST subscription needs a key function")
        self.name, self.policy, self.maxsize = name, policy, maxsize
        self._bus = bus
        self._key = key
        self._items: collections.deque[T] = collections.deque()
        self._latest: dict[Hashable, T] = {}
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False
        self.delivered = 0
        self.dropped = 0  # DROP_OLDEST: discarded; LATEST: replaced before being read

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._latest) if self.policy is Overflow.LATEST else len(self._items)

    async def _put(self, item: T) -> None:
        if self._closed:
            return
        if self.policy is Overflow.BLOCK:
            while len(self._items) >= self.maxsize and not self._closed:
                self._writable.clear()
                await self._writable.wait()
            if self._closed:  # closed while we waited: the item has nowhere to go
                return
            self._items.append(item)
        elif self.policy is Overflow.LATEST:
            assert self._key is not None
            k = self._key(item)
            if k in self._latest:
                self.dropped += 1
                del self._latest[k]  # re-insert at the end: fair order across keys
            elif len(self._latest) >= self.maxsize:
                self._latest.pop(next(iter(self._latest)))
                self.dropped += 1
            self._latest[k] = item
        else:
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
        self._readable.set()

    async def _put_many(self, items: Sequence[T], keys: Sequence[Hashable] | None = None) -> None:
        """``_put`` of each item in order, without a coroutine step per item: the readings
        bus carries 80 000 a second to several subscribers. Waits only while a BLOCK
        subscription is full. ``keys``: the items' keys, when the caller has them already
        (every LATEST subscription of the readings bus has the same key function)."""
        if self._closed or not items:
            return
        if self.policy is Overflow.BLOCK:
            i, n = 0, len(items)
            while i < n:
                while len(self._items) >= self.maxsize and not self._closed:
                    self._writable.clear()
                    await self._writable.wait()
                if self._closed:
                    return
                room = self.maxsize - len(self._items)
                self._items.extend(items[i : i + room])
                i += room
                self._readable.set()
            return
        if self.policy is Overflow.LATEST:
            assert self._key is not None
            latest, maxsize = self._latest, self.maxsize
            for k, item in zip(keys or list(map(self._key, items)), items, strict=True):
                if k in latest:
                    self.dropped += 1
                    del latest[k]
                elif len(latest) >= maxsize:
                    latest.pop(next(iter(latest)))
                    self.dropped += 1
                latest[k] = item
        else:
            queue = self._items
            queue.extend(items)
            over = len(queue) - self.maxsize
            if over > 0:
                self.dropped += over
                for _ in range(over):
                    queue.popleft()
        self._readable.set()

    def get_nowait(self) -> list[T]:
        """Everything queued now (possibly nothing), oldest first."""
        if self.policy is Overflow.LATEST:
            items = list(self._latest.values())
            self._latest.clear()
        else:
            items = list(self._items)
            self._items.clear()
        self._readable.clear()
        self._writable.set()
        self.delivered += len(items)
        return items

    async def get_batch(self, max_items: int | None = None) -> list[T]:
        """Wait for at least one item, then return up to ``max_items`` of what is queued."""
        while len(self) == 0:
            if self._closed:
                raise Closed(self.name)
            self._readable.clear()
            await self._readable.wait()
        if max_items is None or len(self) <= max_items:
            return self.get_nowait()
        if self.policy is Overflow.LATEST:
            keys = list(self._latest)[:max_items]
            items = [self._latest.pop(k) for k in keys]
        else:
            items = [self._items.popleft() for _ in range(max_items)]
        self._writable.set()
        self.delivered += len(items)
        return items

    async def __aiter__(self) -> AsyncIterator[T]:
        while True:
            try:
                batch = await self.get_batch()
            except Closed:
                return
            for item in batch:
                yield item

    def close(self) -> None:
        self._closed = True
        self._bus._subs.discard(self)
        self._readable.set()
        self._writable.set()

    def __enter__(self) -> Subscription[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bus(Generic[T]):
    """One topic of typed items."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._subs: set[Subscription[T]] = set()

    def subscribe(
        self,
        name: str,
        policy: Overflow,
        maxsize: int = 1000,
        key: Callable[[T], Hashable] | None = None,
    ) -> Subscription[T]:
        sub = Subscription(self, name, policy, maxsize, key)
        self._subs.add(sub)
        return sub

    async def publish(self, item: T) -> None:
        """Deliver to every subscriber; waits only for BLOCK subscribers that are full."""
        for sub in list(self._subs):
            await sub._put(item)

    async def publish_many(
        self, items: Sequence[T], skip: Collection[Subscription[T]] = ()
    ) -> None:
        """Deliver ``items`` in order to every subscriber but those in ``skip``, a subscriber
        at a time (each sees them in order; a full BLOCK subscriber holds up the ones after
        it)."""
        keys: dict[Callable[[T], Hashable], list[Hashable]] = {}
        for sub in list(self._subs):
            if sub in skip:
                continue
            key = sub._key
            if sub.policy is Overflow.LATEST and key is not None:
                if key not in keys:
                    keys[key] = list(map(key, items))
                await sub._put_many(items, keys[key])
            else:
                await sub._put_many(items)

    @property
    def subscriptions(self) -> list[Subscription[T]]:
        return sorted(self._subs, key=lambda s: s.name)
