"""edge/ws_topics.py: the WebSocket's diffs are RFC 6902 patches a standard library applies, the
subscription parser refuses bad input with the reason, the rate limiter counts."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.auth import RateLimiter
from edge.ws_topics import (
    MAX_PENDING,
    Hub,
    Source,
    States,
    SubscribeError,
    Subscriber,
    diff,
    parse_subscription,
)

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
keys = st.text(max_size=6)  # "/" and "~" included: they must be escaped
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(json_values, json_values)
def test_a_patch_turns_the_old_state_into_the_new(old: Any, new: Any) -> None:
    ops = diff(old, new)
    assert jsonpatch.apply_patch(copy.deepcopy(old), ops) == new
    assert all(op["op"] in ("add", "remove", "replace") for op in ops)


def test_only_what_changed_is_sent() -> None:
    old = {"axes": {"h/1": {"position": 1.0, "move": None}, "h2": {"position": 2.0}}}
    new = {"axes": {"h/1": {"position": 1.5, "move": None}, "h3": {"position": 0}}}
    assert diff(old, new) == [
        {"op": "remove", "path": "/axes/h2"},
        {"op": "replace", "path": "/axes/h~11/position", "value": 1.5},
        {"op": "add", "path": "/axes/h3", "value": {"position": 0}},
    ]
    assert diff({"a": 1}, {"a": 1.0}) == [{"op": "replace", "path": "/a", "value": 1.0}]
    assert diff({"a": True}, {"a": 1}) == [{"op": "replace", "path": "/a", "value": 1}]
    levels = [0] * 512
    lit = [*levels[:7], 255, *levels[8:]]
    assert diff({"u": levels}, {"u": lit}) == [{"op": "replace", "path": "/u/7", "value": 255}]
    assert diff([1, 2, 3, 4], [1.0, 2, 3, 4]) == [{"op": "replace", "path": "/0", "value": 1.0}]
    assert diff([1, 2], [3, 4]) == [{"op": "replace", "path": "", "value": [3, 4]}]


async def test_one_publisher_serves_every_subscriber_and_resyncs_a_slow_one() -> None:
    feed: asyncio.Queue[Any] = asyncio.Queue()
    built: list[str] = []

    def source(topic: str, key: Any) -> tuple[Source, None]:
        built.append(topic)

        async def states() -> States:
            while True:
                yield await feed.get(), None

        return states, None

    hub = Hub(source)
    got: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}

    def sender(name: str) -> Any:
        async def send(text: str) -> None:
            got[name].append(json.loads(text))

        return send

    a, b = Subscriber(sender("a")), Subscriber(sender("b"))
    hub.subscribe(a, "axes")
    hub.subscribe(b, "axes")
    writers = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
    await feed.put({"x": 1, "y": [1, 2]})
    await feed.put({"x": 1, "y": [1, 2]})  # equal: nothing sent
    await feed.put({"x": 2, "y": [1, 2]})
    async with asyncio.timeout(5):
        while len(got["b"]) < 2:  # noqa: ASYNC110 (the writers' progress has no event)
            await asyncio.sleep(0.01)
    assert built == ["axes"]  # one source for both
    assert (
        got["a"]
        == got["b"]
        == [
            {"type": "axes", "seq": 0, "snapshot": {"x": 1, "y": [1, 2]}},
            {"type": "axes", "seq": 1, "patch": [{"op": "replace", "path": "/x", "value": 2}]},
        ]
    )
    # A connection that does not drain its mailbox gets the state again instead of a backlog.
    writers[1].cancel()
    for i in range(MAX_PENDING + 5):
        await feed.put({"x": 3 + i, "y": [1, 2]})
    async with asyncio.timeout(5):
        while got["a"][-1].get("patch", [{}])[0].get("value") != MAX_PENDING + 7:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert b.resyncs == 1 and len(b.pending) < MAX_PENDING
    assert b.pending[0][2] is True  # the snapshot first
    hub.unsubscribe(a)
    hub.unsubscribe(b)
    assert not hub.publishers  # the last one out stops the source
    writers[0].cancel()
    await asyncio.gather(*writers, return_exceptions=True)


def test_subscriptions_are_checked() -> None:
    devices = ["hoist-1", "hoist-2"]
    assert parse_subscription({"topics": ["axes", "telemetry", "axes"]}, devices) == (
        ["axes", "telemetry"],
        None,
        None,
    )
    _, devs, points = parse_subscription(
        {"topics": ["telemetry"], "devices": ["hoist-1"], "points": ["hoist-2/position"]}, devices
    )
    assert devs == {"hoist-1"} and points == {("hoist-2", "position")}
    assert parse_subscription({"devices": ["anything"]}, devices)[0] is None  # the console's
    for bad, why in (
        ({"topics": "axes"}, "'topics' must be a list"),
        ({"topics": ["axes", 3]}, "'topics' must be a list"),
        ({"topics": ["<script>"]}, "unknown topic"),
        ({"topics": ["telemetry"], "devices": "hoist-1"}, "'devices' must be a list"),
        ({"topics": ["telemetry"], "points": ["hoist-1"]}, "'device/point'"),
        ({"topics": ["telemetry"], "points": ["a/b/c"]}, "'device/point'"),
        ({"topics": ["telemetry"], "devices": ["nope"]}, "no device"),
        ({"topics": ["telemetry"], "points": ["nope/x"]}, "no device"),
    ):
        with pytest.raises(SubscribeError, match=why):
            parse_subscription(bad, devices)


def test_the_rate_limiter_allows_a_burst_then_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    lim = RateLimiter(rate=10, burst=5)
    assert sum(lim.allow() for _ in range(20)) == 5 and lim.refused == 15
    now[0] += 0.5
    assert sum(lim.allow() for _ in range(20)) == 5
