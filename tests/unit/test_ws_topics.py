"""edge/ws_topics.py: the WebSocket's diffs are RFC 6902 patches a standard library applies, the
subscription parser refuses bad input with the reason, the rate limiter counts."""

from __future__ import annotations

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
    SharedDiffs,
    SubscribeError,
    TopicStream,
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


async def test_a_stream_sends_the_snapshot_then_patches_and_nothing_when_unchanged() -> None:
    sent: list[dict[str, Any]] = []

    async def send(text: str) -> None:
        sent.append(json.loads(text))

    shared = SharedDiffs()
    one, two = TopicStream("axes", send, shared), TopicStream("axes", send, shared)
    s1, s2 = {"a": 1, "b": [1, 2]}, {"a": 2, "b": [1, 2]}
    await one.publish(s1)
    await one.publish({"a": 1, "b": [1, 2]})  # equal: nothing sent
    await one.publish(s2)
    await two.publish(s1)
    await two.publish(s2)
    patch = [{"op": "replace", "path": "/a", "value": 2}]
    assert sent == [
        {"type": "axes", "snapshot": s1, "seq": 0},
        {"type": "axes", "patch": patch, "seq": 1},
        {"type": "axes", "snapshot": s1, "seq": 0},
        {"type": "axes", "patch": patch, "seq": 1},
    ]


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
