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

import asyncio
import json
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
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
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and old:
        # A few elements changed (a universe's levels): those, by index; else the whole list.
        pairs = enumerate(zip(old, new, strict=True))
        changed = [i for i, (a, b) in pairs if a is not b and (type(a) is not type(b) or a != b)]
        if not changed:
            return []
        if len(changed) * 4 <= len(old):
            out: list[dict[str, Any]] = []
            for i in changed:
                out.extend(diff(old[i], new[i], f"{path}/{i}"))
            return out
        return [{"op": "replace", "path": path, "value": new}]
    if old == new and type(old) is type(new):
        return []
    return [{"op": "replace", "path": path, "value": new}]


def json_safe(value: Any) -> Any:
    """JSON has no infinity or NaN: they go out as null (an unbounded soft limit, say)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def encode(value: Any) -> str:
    """JSON text as Starlette's ``send_json`` writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# A topic's source: an async iterator of (state, ops). ``ops`` are the RFC 6902 operations
# from the state before, when the source knows them (telemetry), else None (diffed here).
States = AsyncIterator[tuple[Any, list[dict[str, Any]] | None]]
Source = Callable[[], States]
CHUNK = 25  # subscribers handed a message per turn of the event loop
MAX_PENDING = 64  # messages waiting for one slow connection before it is resynchronised


class Subscriber:
    """One connection's outgoing topic messages: publishers put them in its mailbox, its own
    writer task sends them (``run``), so a slow connection holds up only itself. A mailbox
    that overflows is replaced by each topic's current snapshot (the client resynchronises:
    a ``snapshot`` message replaces the state, whatever came before)."""

    def __init__(self, send_text: Callable[[str], Awaitable[None]]) -> None:
        self.send_text = send_text
        self.pending: deque[tuple[str, str, bool]] = deque()  # (topic, body, is a snapshot)
        self.wake = asyncio.Event()
        self.seq: dict[str, int] = {}
        self.publishers: dict[str, Publisher] = {}
        self.resyncs = 0

    def deliver(self, topic: str, body: str, snapshot: bool) -> None:
        if len(self.pending) >= MAX_PENDING:
            self.pending.clear()
            self.resyncs += 1
            for t, pub in self.publishers.items():
                if pub.state is not None:
                    self.pending.append((t, pub.snapshot_text(), True))
            if topic in self.publishers:
                return  # its snapshot (just queued) already holds this message
        self.pending.append((topic, body, snapshot))
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                topic, body, snapshot = self.pending.popleft()
                n = self.seq.get(topic, 0)
                self.seq[topic] = n + 1
                kind = "snapshot" if snapshot else "patch"
                await self.send_text(f'{{"type":"{topic}","seq":{n},"{kind}":{body}}}')


class Publisher:
    """One topic (with one filter) for every connection that subscribes to it: the state is
    built, diffed and encoded once per change, and the same text goes to every subscriber,
    ``CHUNK`` of them per turn of the event loop so that a GO is never queued behind the
    whole crowd (``benchmarks/bench_ws_fanout.py``)."""

    def __init__(self, topic: str, source: Source, fresh: Callable[[], Any] | None = None) -> None:
        self.topic = topic
        self.source = source
        self.fresh = fresh  # builds the state now: a newcomer never starts from a stale one
        self.subscribers: dict[int, Subscriber] = {}
        self.state: Any = None
        self._snapshot: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.messages = 0

    def snapshot_text(self) -> str:
        if self._snapshot is None:
            self._snapshot = encode(self.state)
        return self._snapshot

    def add(self, sub: Subscriber) -> None:
        if self.state is not None and self.fresh is not None:
            out = self._publish(self.fresh(), None)
            if out is not None:  # the others get what changed since, before the newcomer
                for other in self.subscribers.values():
                    other.deliver(self.topic, *out)
        self.subscribers[id(sub)] = sub
        sub.publishers[self.topic] = self
        if self.state is not None:
            sub.deliver(self.topic, self.snapshot_text(), True)
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name=f"ws-topic-{self.topic}")

    def remove(self, sub: Subscriber) -> bool:
        """Drop ``sub``; True when nobody is left (the caller forgets this publisher)."""
        self.subscribers.pop(id(sub), None)
        sub.publishers.pop(self.topic, None)
        if self.subscribers:
            return False
        if self.task is not None:
            self.task.cancel()
        return True

    def _publish(self, state: Any, known: list[dict[str, Any]] | None) -> tuple[str, bool] | None:
        """Take ``state``: the message it makes, (body, is a snapshot), or None if unchanged."""
        first = self.state is None
        ops = None if first else (known if known is not None else diff(self.state, state))
        if not first and not ops:
            self.state = state
            return None
        self.state, self._snapshot = state, None
        self.messages += 1
        return (self.snapshot_text() if first else encode(ops)), first

    async def _run(self) -> None:
        async for state, known in self.source():
            subs = list(self.subscribers.values())
            out = self._publish(state, known)
            if out is None:
                continue
            body, first = out
            for i, sub in enumerate(subs):
                sub.deliver(self.topic, body, first)
                if i % CHUNK == CHUNK - 1:
                    await asyncio.sleep(0)


class Hub:
    """Every connection's subscriptions: one ``Publisher`` per topic and filter."""

    def __init__(
        self, source: Callable[[str, Any], tuple[Source, Callable[[], Any] | None]]
    ) -> None:
        self._source = source
        self.publishers: dict[tuple[str, Any], Publisher] = {}

    def subscribe(self, sub: Subscriber, topic: str, key: Any = None) -> None:
        pub = self.publishers.get((topic, key))
        if pub is None:
            pub = self.publishers[(topic, key)] = Publisher(topic, *self._source(topic, key))
        pub.add(sub)

    def unsubscribe(self, sub: Subscriber) -> None:
        for (topic, key), pub in list(self.publishers.items()):
            if id(sub) in pub.subscribers and pub.remove(sub):
                del self.publishers[(topic, key)]

    async def close(self) -> None:
        tasks = [p.task for p in self.publishers.values() if p.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.publishers.clear()


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
