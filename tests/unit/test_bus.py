"""In-process bus: the three overflow policies, batching, and closing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.bus import Bus, Closed, Overflow, Subscription

T = TypeVar("T")
Item = tuple[str, int]
DONE_S = 2.0  # generous: only ever waited on for things that must complete


def by_key(item: Item) -> str:
    return item[0]


async def settle(rounds: int = 5) -> None:
    """Let every ready task run until it blocks again (no wall-clock time involved)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def done(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, DONE_S)


@pytest.fixture
async def tasks() -> AsyncIterator[list[asyncio.Task[object]]]:
    """Tasks a test starts; whatever is still running at the end is cancelled and awaited."""
    started: list[asyncio.Task[object]] = []
    yield started
    for t in started:
        t.cancel()
    await asyncio.gather(*started, return_exceptions=True)


def spawn(
    tasks: list[asyncio.Task[object]], coro: Coroutine[Any, Any, object]
) -> asyncio.Task[object]:
    task = asyncio.create_task(coro)
    tasks.append(task)
    return task


# --- BLOCK -----------------------------------------------------------------------------------


async def test_block_publish_waits_when_full_and_resumes_when_consumer_takes(
    tasks: list[asyncio.Task[object]],
) -> None:
    bus: Bus[int] = Bus("readings")
    sub = bus.subscribe("store", Overflow.BLOCK, maxsize=2)
    await done(bus.publish(1))
    await done(bus.publish(2))

    blocked = spawn(tasks, bus.publish(3))
    await settle()
    assert not blocked.done()
    assert len(sub) == 2

    assert await done(sub.get_batch()) == [1, 2]
    await done(blocked)
    assert await done(sub.get_batch()) == [3]
    assert sub.dropped == 0


async def test_block_publish_times_out_when_nobody_consumes() -> None:
    bus: Bus[int] = Bus("readings")
    sub = bus.subscribe("store", Overflow.BLOCK, maxsize=1)
    await done(bus.publish(1))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(bus.publish(2), 0.05)
    assert sub.get_nowait() == [1]


async def test_block_partial_take_frees_room(tasks: list[asyncio.Task[object]]) -> None:
    bus: Bus[int] = Bus("readings")
    sub = bus.subscribe("store", Overflow.BLOCK, maxsize=3)
    await done(bus.publish_many([1, 2, 3]))
    second = spawn(tasks, bus.publish_many([4, 5]))
    await settle()
    assert not second.done()

    assert await done(sub.get_batch(max_items=1)) == [1]
    await settle()
    assert not second.done()  # room for 4 only
    assert len(sub) == 3
    assert await done(sub.get_batch(max_items=1)) == [2]
    await done(second)
    assert sub.get_nowait() == [3, 4, 5]


async def test_block_delivers_everything_in_order(tasks: list[asyncio.Task[object]]) -> None:
    bus: Bus[int] = Bus("readings")
    sub = bus.subscribe("store", Overflow.BLOCK, maxsize=8)
    n = 500

    async def consume() -> list[int]:
        got: list[int] = []
        while len(got) < n:
            batch = await sub.get_batch(max_items=5)
            assert 1 <= len(batch) <= 5
            got.extend(batch)
            await asyncio.sleep(0)
        return got

    consumer = spawn(tasks, consume())
    await done(bus.publish_many(list(range(n))))
    assert await done(consumer) == list(range(n))
    assert sub.dropped == 0
    assert sub.delivered == n
    assert len(sub) == 0


async def test_block_publisher_is_released_when_the_subscription_closes(
    tasks: list[asyncio.Task[object]],
) -> None:
    bus: Bus[int] = Bus("readings")
    sub = bus.subscribe("store", Overflow.BLOCK, maxsize=1)
    await done(bus.publish(1))
    blocked = spawn(tasks, bus.publish(2))
    await settle()
    assert not blocked.done()

    sub.close()
    await done(blocked)
    await done(bus.publish(3))  # nobody left to wait for

    # The released publisher's item is not queued after the close.
    assert len(sub) <= sub.maxsize
    assert await done(sub.get_batch()) == [1]
    with pytest.raises(Closed):
        await done(sub.get_batch())


async def test_full_block_subscriber_holds_up_the_others(
    tasks: list[asyncio.Task[object]],
) -> None:
    bus: Bus[int] = Bus("readings")
    slow = bus.subscribe("slow", Overflow.BLOCK, maxsize=1)
    ring = bus.subscribe("ring", Overflow.DROP_OLDEST, maxsize=10)
    await done(bus.publish(1))
    blocked = spawn(tasks, bus.publish(2))
    await settle()
    assert not blocked.done()
    slow.get_nowait()
    await done(blocked)
    assert ring.get_nowait() == [1, 2]
    assert slow.get_nowait() == [2]


# --- LATEST ----------------------------------------------------------------------------------


async def test_latest_conflates_per_key() -> None:
    bus: Bus[Item] = Bus("live")
    sub = bus.subscribe("ws", Overflow.LATEST, maxsize=10, key=by_key)
    for i in range(100):
        await done(bus.publish(("hoist.position", i)))
    assert len(sub) == 1
    assert await done(sub.get_batch()) == [("hoist.position", 99)]
    assert sub.dropped == 99
    assert sub.delivered == 1


async def test_latest_never_blocks_the_publisher() -> None:
    bus: Bus[Item] = Bus("live")
    sub = bus.subscribe("ws", Overflow.LATEST, maxsize=2, key=by_key)
    await done(bus.publish_many([(f"k{i % 5}", i) for i in range(1000)]))
    assert len(sub) == 2


async def test_latest_keeps_order_across_keys() -> None:
    bus: Bus[Item] = Bus("live")
    sub = bus.subscribe("ws", Overflow.LATEST, maxsize=10, key=by_key)
    await done(bus.publish_many([("a", 1), ("b", 1), ("c", 1)]))
    assert sub.get_nowait() == [("a", 1), ("b", 1), ("c", 1)]
    assert sub.dropped == 0


async def test_latest_moves_an_updated_key_to_the_end() -> None:
    bus: Bus[Item] = Bus("live")
    sub = bus.subscribe("ws", Overflow.LATEST, maxsize=10, key=by_key)
    await done(bus.publish_many([("a", 1), ("b", 1), ("a", 2), ("c", 1)]))
    assert sub.get_nowait() == [("b", 1), ("a", 2), ("c", 1)]
    assert sub.dropped == 1


async def test_latest_evicts_the_oldest_key_when_full() -> None:
    bus: Bus[Item] = Bus("live")
    sub = bus.subscribe("ws", Overflow.LATEST, maxsize=3, key=by_key)
    await done(bus.publish_many([("a", 1), ("b", 1), ("c", 1), ("d", 1)]))
    assert len(sub) == 3
    assert sub.dropped == 1
    assert sub.get_nowait() == [("b", 1), ("c", 1), ("d", 1)]


async def test_latest_eviction_follows_update_order() -> None:
    bus: Bus[Item] = Bus("live")
    sub = bus.subscribe("ws", Overflow.LATEST, maxsize=3, key=by_key)
    await done(bus.publish_many([("a", 1), ("b", 1), ("c", 1), ("a", 2), ("d", 1)]))
    assert sub.get_nowait() == [("c", 1), ("a", 2), ("d", 1)]  # b was the stalest
    assert sub.dropped == 2


async def test_latest_get_batch_takes_oldest_keys_first() -> None:
    bus: Bus[Item] = Bus("live")
    sub = bus.subscribe("ws", Overflow.LATEST, maxsize=10, key=by_key)
    await done(bus.publish_many([("a", 1), ("b", 1), ("c", 1), ("d", 1)]))
    assert await done(sub.get_batch(max_items=3)) == [("a", 1), ("b", 1), ("c", 1)]
    assert len(sub) == 1
    await done(bus.publish(("a", 2)))
    assert await done(sub.get_batch(max_items=3)) == [("d", 1), ("a", 2)]
    assert sub.delivered == 5


def test_latest_without_key_is_refused() -> None:
    bus: Bus[Item] = Bus("live")
    with pytest.raises(ValueError, match="key"):
        bus.subscribe("ws", Overflow.LATEST)
    assert bus.subscriptions == []


# --- DROP_OLDEST -----------------------------------------------------------------------------


async def test_drop_oldest_is_a_ring() -> None:
    bus: Bus[int] = Bus("events")
    sub = bus.subscribe("log", Overflow.DROP_OLDEST, maxsize=3)
    await done(bus.publish_many(list(range(10))))
    assert len(sub) == 3
    assert sub.dropped == 7
    assert await done(sub.get_batch()) == [7, 8, 9]
    assert sub.delivered == 3


async def test_drop_oldest_drops_nothing_while_there_is_room() -> None:
    bus: Bus[int] = Bus("events")
    sub = bus.subscribe("log", Overflow.DROP_OLDEST, maxsize=3)
    await done(bus.publish_many([1, 2, 3]))
    assert sub.dropped == 0
    assert sub.get_nowait() == [1, 2, 3]
    await done(bus.publish_many([4, 5, 6, 7]))
    assert sub.get_nowait() == [5, 6, 7]
    assert sub.dropped == 1


# --- batching --------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [Overflow.BLOCK, Overflow.DROP_OLDEST])
@pytest.mark.parametrize("max_items", [1, 3, 4, 10, 11, None])
async def test_get_batch_returns_at_most_max_items(policy: Overflow, max_items: int | None) -> None:
    bus: Bus[int] = Bus("events")
    sub = bus.subscribe("log", policy, maxsize=10)
    await done(bus.publish_many(list(range(10))))
    got: list[int] = []
    while len(sub):
        batch = await done(sub.get_batch(max_items))
        assert 1 <= len(batch) <= (max_items or 10)
        got.extend(batch)
    assert got == list(range(10))
    assert sub.delivered == 10


async def test_get_batch_waits_for_an_item(tasks: list[asyncio.Task[object]]) -> None:
    bus: Bus[int] = Bus("events")
    sub = bus.subscribe("log", Overflow.DROP_OLDEST, maxsize=10)
    waiting = spawn(tasks, sub.get_batch())
    await settle()
    assert not waiting.done()
    await done(bus.publish(42))
    assert await done(waiting) == [42]


async def test_get_nowait_on_empty_returns_nothing() -> None:
    bus: Bus[int] = Bus("events")
    sub = bus.subscribe("log", Overflow.BLOCK, maxsize=10)
    assert sub.get_nowait() == []
    assert sub.delivered == 0


# --- closing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", list(Overflow))
async def test_close_drains_queued_items_then_raises_closed(policy: Overflow) -> None:
    bus: Bus[Item] = Bus("events")
    sub = bus.subscribe("log", policy, maxsize=10, key=by_key)
    await done(bus.publish_many([("a", 1), ("b", 2)]))
    sub.close()
    assert await done(sub.get_batch()) == [("a", 1), ("b", 2)]
    with pytest.raises(Closed):
        await done(sub.get_batch())
    with pytest.raises(Closed):
        await done(sub.get_batch(max_items=1))


async def test_close_wakes_a_waiting_get_batch(tasks: list[asyncio.Task[object]]) -> None:
    bus: Bus[int] = Bus("events")
    sub = bus.subscribe("log", Overflow.BLOCK, maxsize=10)
    waiting = spawn(tasks, sub.get_batch())
    await settle()
    assert not waiting.done()
    sub.close()
    with pytest.raises(Closed):
        await done(waiting)


async def test_async_for_ends_when_closed_after_draining(
    tasks: list[asyncio.Task[object]],
) -> None:
    bus: Bus[int] = Bus("events")
    sub = bus.subscribe("log", Overflow.BLOCK, maxsize=10)

    async def consume() -> list[int]:
        return [item async for item in sub]

    consumer = spawn(tasks, consume())
    await done(bus.publish_many([1, 2]))
    await settle()
    await done(bus.publish(3))
    sub.close()
    assert await done(consumer) == [1, 2, 3]


async def test_async_for_over_a_closed_subscription_yields_what_was_queued() -> None:
    bus: Bus[int] = Bus("events")
    sub = bus.subscribe("log", Overflow.DROP_OLDEST, maxsize=10)
    await done(bus.publish_many([1, 2, 3]))
    sub.close()

    async def consume() -> list[int]:
        return [item async for item in sub]

    assert await done(consume()) == [1, 2, 3]


async def test_closed_subscription_is_removed_from_the_bus() -> None:
    bus: Bus[int] = Bus("events")
    a = bus.subscribe("a", Overflow.BLOCK, maxsize=1)
    b = bus.subscribe("b", Overflow.DROP_OLDEST, maxsize=5)
    c = bus.subscribe("c", Overflow.DROP_OLDEST, maxsize=5)
    assert bus.subscriptions == [a, b, c]
    b.close()
    assert bus.subscriptions == [a, c]
    b.close()  # idempotent
    assert bus.subscriptions == [a, c]

    await done(bus.publish(1))
    assert len(b) == 0
    assert len(c) == 1


async def test_context_manager_closes() -> None:
    bus: Bus[int] = Bus("events")
    with bus.subscribe("tmp", Overflow.DROP_OLDEST, maxsize=5) as sub:
        assert isinstance(sub, Subscription)
        assert bus.subscriptions == [sub]
        await done(bus.publish(1))
    assert bus.subscriptions == []
    assert await done(sub.get_batch()) == [1]
    with pytest.raises(Closed):
        await done(sub.get_batch())


async def test_publish_to_a_closed_subscription_is_ignored() -> None:
    bus: Bus[int] = Bus("events")
    sub = bus.subscribe("log", Overflow.BLOCK, maxsize=1)
    sub.close()
    await done(sub._put(1))  # a publisher that snapshotted the subscriber list earlier
    assert len(sub) == 0


# --- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", list(Overflow))
@pytest.mark.parametrize("maxsize", [0, -1])
def test_maxsize_below_one_is_refused(policy: Overflow, maxsize: int) -> None:
    bus: Bus[Item] = Bus("events")
    with pytest.raises(ValueError, match="maxsize"):
        bus.subscribe("x", policy, maxsize=maxsize, key=by_key)
    assert bus.subscriptions == []


@pytest.mark.parametrize("policy", list(Overflow))
async def test_maxsize_one_works(policy: Overflow) -> None:
    bus: Bus[Item] = Bus("events")
    sub = bus.subscribe("x", policy, maxsize=1, key=by_key)
    await done(bus.publish(("a", 1)))
    assert sub.get_nowait() == [("a", 1)]


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 99)), max_size=60),
    maxsize=st.integers(1, 12),
    chunks=st.integers(1, 5),
    drain_every=st.integers(0, 3),
)
async def test_publish_many_leaves_what_publishing_one_by_one_leaves(
    items: list[Item], maxsize: int, chunks: int, drain_every: int
) -> None:
    """For the non-blocking policies, one ``publish_many`` per chunk gives each subscription
    exactly the queue, order and drop count that one ``publish`` per item gives, also when
    the reader takes everything between chunks (``drain_every``: after every n-th chunk)."""
    for policy in (Overflow.LATEST, Overflow.DROP_OLDEST):
        key = by_key if policy is Overflow.LATEST else None
        one, many = Bus[Item]("one"), Bus[Item]("many")
        a = one.subscribe("s", policy, maxsize, key)
        b = many.subscribe("s", policy, maxsize, key)
        step = max(1, len(items) // chunks)
        for n, i in enumerate(range(0, len(items), step)):
            for item in items[i : i + step]:
                await one.publish(item)
            await many.publish_many(items[i : i + step])
            if drain_every and n % drain_every == 0:
                assert b.get_nowait() == a.get_nowait()
        assert (b.dropped, len(b)) == (a.dropped, len(a))
        assert b.get_nowait() == a.get_nowait()


async def test_publish_many_into_a_full_block_subscription_waits_and_loses_nothing(
    tasks: list[asyncio.Task[object]],
) -> None:
    bus = Bus[Item]("b")
    sub = bus.subscribe("s", Overflow.BLOCK, 3)
    items = [("k", i) for i in range(10)]
    pub = spawn(tasks, bus.publish_many(items))
    got: list[Item] = []
    while len(got) < len(items):
        await settle()
        got += await done(sub.get_batch())
    await done(pub)
    assert got == items


async def test_latest_subscriptions_sharing_a_key_function_compute_each_key_once() -> None:
    calls: list[Item] = []

    def counted(item: Item) -> str:
        calls.append(item)
        return item[0]

    bus = Bus[Item]("readings")
    subs = [bus.subscribe(f"s{i}", Overflow.LATEST, 10, counted) for i in range(4)]
    other = bus.subscribe("other", Overflow.LATEST, 10, by_key)
    items = [("a", 1), ("b", 1), ("a", 2)]
    await done(bus.publish_many(items))
    assert calls == items  # once per item, not once per item and subscription
    for sub in (*subs, other):
        assert sub.get_nowait() == [("b", 1), ("a", 2)] and sub.dropped == 1
