"""WebSocket subscriptions: topics, a snapshot then diffs, and per-client limits.

A client sends ``{"type": "subscribe", "topics": [...]}`` (any of ``TOPICS``), optionally
with ``"devices"`` and ``"points"`` (``"device/point"``) to narrow ``telemetry``. For each topic
it then gets ``{"type": topic, "snapshot": {...}}`` at once, and afterwards
``{"type": topic, "patch": [...], "seq": n}`` holding only what changed, as RFC 6902 JSON
Patch operations (``add``/``remove``/``replace``; a list is replaced whole) against the state
it has: apply them in order and the client holds the server's state. ``seq`` counts one
topic's messages, so a gap shows a lost message (there are none on one connection).

A client that sends no ``topics`` gets the console's feeds as before (every feed, whole
snapshots; ``edge/api.py``).

Limits per client: ``edge.auth.RateLimiter`` (a token bucket) on the messages it sends, stops
excepted; and a send that takes longer than ``SEND_TIMEOUT_S`` (a client that stopped reading,
its TCP window full) closes that client's connection, so it never holds memory or the show.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

TOPICS = (
    "devices",  # the device list and every device's health
    "telemetry",  # the latest value of every point (narrowed by devices / points)
    "playback",  # the cue lists: current and standby cues, running actions
    "axes",  # the machinery supervisor: axes, moves, enable, E-stop
    "alarms",  # the active alarms
    "configurations",  # a venue configuration switch's progress
    "lighting",  # the output engine: stats, faders, sources, fixtures, universe levels
    "acoustics",  # the sound field: mode, zones, measurement and adaptation progress
)
MESSAGES_PER_S = 20.0
BURST = 40.0
SEND_TIMEOUT_S = 5.0


def escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def diff(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """RFC 6902 operations that turn ``old`` into ``new`` (JSON values: dicts are diffed key by
    key, anything else is replaced whole when it differs)."""
    if old is new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict[str, Any]] = []
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": f"{path}/{escape(str(key))}"})
        for key, value in new.items():
            where = f"{path}/{escape(str(key))}"
            if key not in old:
                ops.append({"op": "add", "path": where, "value": value})
            else:
                ops.extend(diff(old[key], value, where))
        return ops
    if old == new and type(old) is type(new):
        return []
    return [{"op": "replace", "path": path, "value": new}]


def encode(value: Any) -> str:
    """JSON text as Starlette's ``send_json`` writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class SharedDiffs:
    """One topic's encoded snapshots and patches, shared by its connections. The feeds hand
    every connection the same state objects (one snapshot per change, not one per client), so
    the patch between two of them is computed and encoded once, not once per client: what
    lets 500 consoles follow the show (``benchmarks/bench_ws_fanout.py``)."""

    def __init__(self, size: int = 8) -> None:
        self._entries: deque[tuple[Any, Any, str | None]] = deque(maxlen=size)

    def text(self, old: Any, new: Any) -> str | None:
        """The encoded patch from ``old`` to ``new`` (the encoded state if ``old`` is None);
        None if nothing changed."""
        for o, n, done in self._entries:
            if o is old and n is new:
                return done
        text: str | None
        if old is None:
            text = encode(new)
        else:
            ops = diff(old, new)
            text = encode(ops) if ops else None
        self._entries.append((old, new, text))
        return text


class Shared:
    """Topic states built at most once per ``max_age_s`` for every connection (the same
    object to all, so ``SharedDiffs`` diffs it once). Treat them as read-only."""

    def __init__(self, build: Callable[[str], Any]) -> None:
        self._build = build
        self._states: dict[str, tuple[float, Any]] = {}

    def get(self, topic: str, max_age_s: float) -> Any:
        now = time.monotonic()
        hit = self._states.get(topic)
        if hit is None or now - hit[0] >= max_age_s:
            hit = self._states[topic] = (now, self._build(topic))
        return hit[1]


class TopicStream:
    """One topic on one connection: the first state whole, then patches of what changed."""

    def __init__(
        self,
        topic: str,
        send: Callable[[str], Awaitable[None]],
        shared: SharedDiffs | None = None,
    ) -> None:
        self.topic = topic
        self._send = send
        self._shared = shared if shared is not None else SharedDiffs(size=1)
        self._state: Any = None
        self.seq = 0

    async def publish(self, state: Any) -> None:
        """Send ``state``: whole the first time, else the patch from the last one (if any)."""
        if self.seq == 0:
            body = self._shared.text(None, state)
            text = f'{{"type":"{self.topic}","seq":0,"snapshot":{body}}}'
        else:
            if state is self._state:
                return
            ops = self._shared.text(self._state, state)
            if ops is None:
                self._state = state
                return
            text = f'{{"type":"{self.topic}","seq":{self.seq},"patch":{ops}}}'
        self._state = state
        self.seq += 1
        await self._send(text)

    async def publish_ops(self, ops: list[dict[str, Any]], state: Any) -> None:
        """Send ``ops``, which the caller computed, that bring the last state to ``state``."""
        if self.seq == 0:
            await self.publish(state)
        elif ops:
            self._state = state
            text = f'{{"type":"{self.topic}","seq":{self.seq},"patch":{encode(ops)}}}'
            self.seq += 1
            await self._send(text)


class SubscribeError(ValueError):
    pass


def parse_subscription(
    msg: dict[str, Any], known_devices: Iterable[str]
) -> tuple[list[str] | None, set[str] | None, set[tuple[str, str]] | None]:
    """(topics or None for the console's feeds, devices, points) of a subscribe message."""
    topics = msg.get("topics")
    if topics is not None:
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise SubscribeError("'topics' must be a list of topic names")
        unknown = sorted(set(topics) - set(TOPICS))
        if unknown:
            raise SubscribeError(
                f"unknown topic(s) {', '.join(u[:40] for u in unknown[:5])} "
                f"(topics: {', '.join(TOPICS)})"
            )
        topics = list(dict.fromkeys(topics))
    devices = msg.get("devices")
    if devices is not None and (
        not isinstance(devices, list) or not all(isinstance(d, str) for d in devices)
    ):
        raise SubscribeError("'devices' must be a list of device ids")
    points = msg.get("points")
    wanted_points: set[tuple[str, str]] | None = None
    if points is not None:
        if not isinstance(points, list) or not all(
            isinstance(p, str) and p.count("/") == 1 for p in points
        ):
            raise SubscribeError("'points' must be a list of 'device/point' names")
        wanted_points = {(p.split("/")[0], p.split("/")[1]) for p in points}
    if topics is not None:  # (the console's feeds never checked the names)
        named = set(devices or ()) | {d for d, _ in wanted_points or ()}
        missing = sorted(named - set(known_devices))
        if missing:
            raise SubscribeError(f"no device(s) {', '.join(m[:64] for m in missing[:5])}")
    return topics, (set(devices) if devices is not None else None), wanted_points
