"""Alarms: rules over readings and device health, alarm states, notifications (docs/telemetry.md).

    readings bus ──► LATEST feed ─┐                       ┌─► alarm store (SQLite, own file)
    (never blocks a poller)       ├─► AlarmEngine ──► flush ├─► journal (controller.journal)
    device health (scan + push) ──┤   (rules, states)      ├─► MQTT …/{node}/$alarms/…
    raise_alarm() / clear() ──────┘                        └─► webhooks (POST JSON, retries)

- **Rules** (``[[alarms.rules]]``, ``edge.config.AlarmRuleConfig``) apply per device, device
  class or profile, to a point or (offline) to the device: ``high``/``low`` thresholds with a
  deadband and on-delay, ``rate`` of change over a window, ``stale`` (no good reading for N s),
  ``offline`` (health), ``fault`` codes with a text per code. Built-in defaults
  (:data:`DEFAULT_RULES`) come first; a venue rule with the same id replaces one, and
  ``enabled = false`` disables it.
- **Instances**: one per rule × device × point, with ISA-18.2 style states: ``inactive``,
  ``active_unack``, ``active_ack``, ``cleared_unack`` (latched: the condition went away before
  anyone acknowledged), ``shelved`` (until a time, by whom, why). Every transition is one event:
  kept in the alarm store (so a restart keeps every state), journalled, and notified.
- **The feed is LATEST** (one slot per point): the engine can never block the pollers; when it
  falls behind it sees each point's newest value, which is what a condition is about.
- Timers (on-delays, stale data, shelve expiry) and the health scan run every ``tick_s``
  (0.1 s), so a condition reaches the API well within a second.
- Conditions computed elsewhere (fault early-warning, the InfluxDB queue) are raised through
  :meth:`AlarmEngine.raise_alarm` / :meth:`AlarmEngine.clear`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import random
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError

from controller.journal import JournalEvent, JournalHeld, JournalSink, Origin, Result, SourceKind
from drivers.model import (
    Device,
    Health,
    HealthState,
    Quality,
    Reading,
    format_validation_error,
    reading_key,
)
from edge.bus import Bus, Closed, Overflow, Subscription
from edge.config import AlarmRuleConfig, AlarmsConfig, AlarmWebhookConfig
from edge.influx import QueueAlarm

if TYPE_CHECKING:
    from edge.service import Service

log = logging.getLogger(__name__)

SEVERITIES = ("critical", "major", "minor", "warning", "info")  # most severe first
RANK = {s: i for i, s in enumerate(SEVERITIES)}
FEED_POINTS = 100_000
_GOOD = Quality.GOOD  # looked up once: this is the per-reading path
_NUMBERS = (int, float)  # bools are ints: a fault point may be a bool
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MACHINERY_CLASSES = [
    "hoist",
    "chain_hoist",
    "curtain_track",
    "fire_curtain",
    "flybar",
    "pit_lift",
    "stage_lift",
    "turntable",
    "wagon",
]
# docs/interfaces/modbus-machinery.md §6
MACHINERY_FAULT_CODES = {
    "1": "watchdog",
    "2": "overload",
    "3": "hard limit",
    "4": "drive trip",
    "5": "encoder",
    "6": "brake",
    "7": "slack rope",
    "8": "e-stop",
}
DEFAULT_RULES: tuple[AlarmRuleConfig, ...] = (
    AlarmRuleConfig(id="device-offline", kind="offline", severity="major"),
    AlarmRuleConfig(
        id="machinery-fault",
        kind="fault",
        severity="critical",
        device_class=MACHINERY_CLASSES,
        point="fault_code",
        codes=MACHINERY_FAULT_CODES,
    ),
    AlarmRuleConfig(
        id="machinery-estop",
        kind="fault",
        severity="critical",
        device_class=MACHINERY_CLASSES,
        point="estop",
        message="e-stop chain open",
    ),
)


class AlarmConfigError(ValueError):
    """The ``[alarms]`` rules do not fit the venue; every problem is listed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("alarms: " + "; ".join(problems))
        self.problems = problems


class State(StrEnum):
    INACTIVE = "inactive"
    ACTIVE_UNACK = "active_unack"
    ACTIVE_ACK = "active_ack"
    CLEARED_UNACK = "cleared_unack"
    SHELVED = "shelved"


class AlarmError(Exception):
    """An operator action that does not apply (unknown alarm, wrong state); ``status`` for HTTP."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


# --- rules --------------------------------------------------------------------------------


def parse_rules(data: Any) -> list[AlarmRuleConfig]:
    """``[[alarms.rules]]`` as raw TOML data, validated; AlarmConfigError lists every problem."""
    if not isinstance(data, list):
        raise AlarmConfigError(["'rules' must be a list of tables"])
    try:
        return AlarmsConfig(rules=data).rules
    except ValidationError as exc:
        raise AlarmConfigError(format_validation_error(exc, "alarms.")) from None


def effective_rules(cfg: AlarmsConfig) -> list[AlarmRuleConfig]:
    """The defaults (if on), each replaced by a venue rule of its id; disabled ones left out."""
    venue = {r.id: r for r in cfg.rules}
    out = [venue.pop(r.id, r) for r in (DEFAULT_RULES if cfg.defaults else ())]
    out.extend(venue.values())
    return [r for r in out if r.enabled]


@dataclass(frozen=True, slots=True)
class Binding:
    """A rule bound to one device (and point): what an instance evaluates."""

    rule: AlarmRuleConfig
    device: str
    point: str | None

    @property
    def id(self) -> str:
        return alarm_id(self.rule.id, self.device, self.point)


def alarm_id(rule: str, device: str, point: str | None) -> str:
    return f"{rule}:{device}:{point or '-'}"


def bind_rules(rules: Iterable[AlarmRuleConfig], devices: Iterable[Device]) -> list[Binding]:
    """Every (rule, device, point) the rules apply to; AlarmConfigError for a rule that names a
    device that does not exist or a point its devices do not have."""
    devs = {d.id: d for d in devices}
    problems: list[str] = []
    out: list[Binding] = []
    for r in rules:
        unknown = [d for d in r.devices if d not in devs]
        if unknown:
            problems.append(f"rule '{r.id}': no device {', '.join(map(repr, unknown[:5]))}")
            continue
        matched = [
            d
            for d in devs.values()
            if (not r.devices or d.id in r.devices)
            and (not r.device_class or d.profile.device_class in r.device_class)
            and (not r.profile or d.profile.id in r.profile)
        ]
        for d in matched:
            if r.point is not None and r.point not in d.profile.points:
                if r.devices:  # named explicitly: a mistake; by class: not every type has it
                    problems.append(f"rule '{r.id}': device '{d.id}' has no point '{r.point}'")
                continue
            out.append(Binding(r, d.id, r.point))
    if problems:
        raise AlarmConfigError(problems)
    return out


def check(cfg: AlarmsConfig, devices: Iterable[Device]) -> None:
    """Refuse (AlarmConfigError, every problem listed) rules that do not fit these devices:
    for the service to call before it starts anything."""
    bind_rules(effective_rules(cfg), devices)


# --- instances ----------------------------------------------------------------------------


@dataclass(slots=True)
class Alarm:
    """One alarm instance and its state; the API's view of it is :meth:`as_dict`."""

    id: str
    rule: str
    device: str
    point: str | None
    kind: str
    severity: str
    state: State = State.INACTIVE
    condition: bool = False  # the rule's condition as last evaluated
    value: Any = None
    message: str = ""
    raised_at: float | None = None
    cleared_at: float | None = None
    acked_by: str | None = None
    acked_at: float | None = None
    shelved_by: str | None = None
    shelved_at: float | None = None
    shelved_until: float | None = None
    shelve_reason: str | None = None
    updated_at: float = 0.0
    # evaluation state, not stored
    pending_since: float | None = field(default=None, repr=False)  # on-delay running
    window: collections.deque[tuple[float, float]] = field(
        default_factory=collections.deque, repr=False
    )
    last_good: float | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.rule,
            "device": self.device,
            "point": self.point,
            "kind": self.kind,
            "severity": self.severity,
            "state": self.state.value,
            "active": self.condition,
            "value": _json_value(self.value),
            "message": self.message,
            "raised_at": self.raised_at,
            "cleared_at": self.cleared_at,
            "acked_by": self.acked_by,
            "acked_at": self.acked_at,
            "shelved_by": self.shelved_by,
            "shelved_at": self.shelved_at,
            "shelved_until": self.shelved_until,
            "shelve_reason": self.shelve_reason,
            "updated_at": self.updated_at,
        }


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v if v is None or isinstance(v, bool | int | float | str) else str(v)[:200]


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One transition (or operator action) of an instance."""

    ts: float
    alarm: dict[str, Any]  # the instance after the event
    event: str  # raise, clear, ack, shelve, unshelve, change, reset
    from_state: str
    to_state: str
    who: str
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "event": self.event,
            "from": self.from_state,
            "to": self.to_state,
            "who": self.who,
            "reason": self.reason,
            "alarm": self.alarm,
        }


# --- store --------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, id TEXT NOT NULL,
    device TEXT NOT NULL, rule TEXT NOT NULL, severity TEXT NOT NULL, event TEXT NOT NULL,
    doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_id ON events (id, ts);
"""


class AlarmStore:
    """The alarm file: each instance's last state (``instances``) and every event (``events``).

    Its own SQLite file (``[alarms] store``), WAL, one writer thread; each flush of events is
    one transaction, so a restart finds the states of the last flush."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="alarm-store")
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> list[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn
        return [json.loads(doc) for (doc,) in conn.execute("SELECT doc FROM instances")]

    async def open(self) -> list[dict[str, Any]]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._open)

    def _write(self, events: list[AlarmEvent]) -> None:
        assert self._conn is not None
        c = self._conn
        c.execute("BEGIN")
        try:
            for e in events:
                a = e.alarm
                doc = json.dumps(a)
                c.execute("INSERT OR REPLACE INTO instances VALUES (?, ?)", (a["id"], doc))
                c.execute(
                    "INSERT INTO events (ts, id, device, rule, severity, event, doc) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        e.ts,
                        a["id"],
                        a["device"],
                        a["rule"],
                        a["severity"],
                        e.event,
                        json.dumps(e.as_dict()),
                    ),
                )
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:  # a refused COMMIT (a full disk) rolled back already
                c.execute("ROLLBACK")
            raise

    async def write(self, events: list[AlarmEvent]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._write, events)

    def _history(
        self,
        start: float,
        end: float,
        device: str | None,
        rule: str | None,
        alarm: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        assert self._conn is not None
        sql = "SELECT doc FROM events WHERE ts >= ? AND ts <= ?"
        args: list[Any] = [start, end]
        for col, v in (("device", device), ("rule", rule), ("id", alarm)):
            if v is not None:
                sql += f" AND {col} = ?"
                args.append(v)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return [json.loads(doc) for (doc,) in self._conn.execute(sql, args)]

    async def history(
        self,
        start: float,
        end: float,
        *,
        device: str | None = None,
        rule: str | None = None,
        alarm: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Events newest first."""
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._history, start, end, device, rule, alarm, limit
        )

    def _prune(self, before: float) -> int:
        assert self._conn is not None
        return self._conn.execute("DELETE FROM events WHERE ts < ?", (before,)).rowcount

    async def prune(self, before: float) -> int:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._prune, before)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._close)
        self._pool.shutdown(wait=True)


# --- notifications ------------------------------------------------------------------------

Publish = Callable[[str, bytes, bool], Awaitable[None]]


class MqttNotifier:
    """Retained state per instance on ``flytower/{venue}/{node}/$alarms/{device}/{rule}/{point}``
    (point ``-`` for a device alarm) and every event on ``…/$alarms/$events`` (not retained).

    States are conflated per instance (the newest wins); events wait in a ring of ``maxsize``
    (the oldest dropped and counted). A publish that fails is retried after ``retry_s``."""

    def __init__(
        self,
        venue: str,
        node: str,
        publish: Publish,
        connected: asyncio.Event | None = None,
        maxsize: int = 10_000,
        retry_s: float = 1.0,
    ) -> None:
        self.prefix = f"flytower/{venue}/{node}/$alarms"
        self._publish = publish
        self._connected = connected
        self._states: dict[str, dict[str, Any]] = {}
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=maxsize)
        self._wake = asyncio.Event()
        self.retry_s = retry_s
        self.published = 0
        self.dropped = 0
        self.failures = 0

    def state_topic(self, a: Mapping[str, Any]) -> str:
        return f"{self.prefix}/{a['device']}/{a['rule']}/{a['point'] or '-'}"

    def restate(self, doc: dict[str, Any]) -> None:
        """Publish an instance's retained state again (after a restart), with no event."""
        self._states[doc["id"]] = doc
        self._wake.set()

    def notify(self, e: AlarmEvent) -> None:
        self._states[e.alarm["id"]] = e.alarm
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
        self._events.append(e.as_dict())
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._connected is not None:
                await self._connected.wait()
            try:
                while self._states:
                    aid, doc = next(iter(self._states.items()))
                    await self._publish(self.state_topic(doc), json.dumps(doc).encode(), True)
                    if self._states.get(aid) is doc:
                        del self._states[aid]
                    self.published += 1
                while self._events:
                    ev = self._events[0]
                    await self._publish(f"{self.prefix}/$events", json.dumps(ev).encode(), False)
                    if self._events and self._events[0] is ev:
                        self._events.popleft()
                    self.published += 1
            except Exception as exc:  # the broker is away: the link reconnects; try again
                self.failures += 1
                if self.failures == 1 or log.isEnabledFor(logging.DEBUG):
                    log.warning("alarms: MQTT publish failed (%s); retrying", exc)
                await asyncio.sleep(self.retry_s)
                self._wake.set()


class WebhookNotifier:
    """POSTs each event (JSON, ``AlarmEvent.as_dict``) to one URL, in order.

    A bounded queue (``queue_size``; full: the oldest dropped and counted); each POST has
    ``timeout_s``; a 2xx delivers; a connection error, a timeout, 408, 429 or a 5xx is retried
    after ``backoff_min_s`` doubling (with jitter) to ``backoff_max_s``, at most
    ``max_attempts`` times; any other answer (4xx) gives the event up (counted)."""

    def __init__(self, cfg: AlarmWebhookConfig, client: httpx.AsyncClient) -> None:
        self.cfg = cfg
        self._client = client
        self._queue: collections.deque[dict[str, Any]] = collections.deque(maxlen=cfg.queue_size)
        self._wake = asyncio.Event()
        self._headers = {"content-type": "application/json"}
        if cfg.token_env is not None:
            token = os.environ.get(cfg.token_env)
            if token is None:
                raise AlarmConfigError([f"webhook token variable {cfg.token_env} is not set"])
            self._headers["authorization"] = f"Bearer {token}"
        self.delivered = 0
        self.dropped = 0
        self.given_up = 0
        self.attempts = 0

    def notify(self, e: AlarmEvent) -> None:
        if RANK[e.alarm["severity"]] > RANK[self.cfg.min_severity]:
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(e.as_dict())
        self._wake.set()

    def __len__(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                doc = self._queue[0]
                await self._deliver(doc)
                if self._queue and self._queue[0] is doc:
                    self._queue.popleft()

    async def _deliver(self, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        for attempt in range(1, self.cfg.max_attempts + 1):
            self.attempts += 1
            status: int | str
            try:
                res = await self._client.post(
                    self.cfg.url, content=body, headers=self._headers, timeout=self.cfg.timeout_s
                )
                status = res.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            if isinstance(status, int) and 200 <= status < 300:
                self.delivered += 1
                return
            if isinstance(status, int) and status < 500 and status not in (408, 429):
                break
            pause = min(self.cfg.backoff_max_s, self.cfg.backoff_min_s * 2 ** (attempt - 1))
            if attempt == 1:
                log.warning("alarms: webhook %s answered %s; retrying", self._safe_url, status)
            if attempt < self.cfg.max_attempts:
                await asyncio.sleep(pause / 2 + random.uniform(0, pause / 2))
        self.given_up += 1
        log.warning("alarms: webhook %s: event given up", self._safe_url)

    @property
    def _safe_url(self) -> str:
        u = httpx.URL(self.cfg.url)
        return f"{u.scheme}://{u.host}:{u.port or ''}{u.path}"


# --- the engine ---------------------------------------------------------------------------

Notify = Callable[[AlarmEvent], None]


class AlarmEngine:
    """Evaluates the rules, keeps the instances, and hands every event to the store, the journal
    and the notifiers. Runs on the service's loop; ``clock`` (wall) is injectable for tests;
    the engine measures staleness and delays with ``monotonic``."""

    def __init__(
        self,
        cfg: AlarmsConfig,
        devices: Iterable[Device],
        store: AlarmStore,
        journal: JournalSink | None = None,
        *,
        health: Callable[[], Mapping[str, Health]] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.stopping = False  # the service is shutting down: health changes are not faults
        self.devices = {d.id: d for d in devices}
        self.store = store
        self.journal = journal
        self._health = health
        self.clock, self.monotonic = clock, monotonic
        self.bindings = bind_rules(effective_rules(cfg), self.devices.values())
        self.alarms: dict[str, Alarm] = {}
        self._by_point: dict[tuple[str, str], list[tuple[Binding, Alarm]]] = {}
        self._offline: dict[str, list[tuple[Binding, Alarm]]] = {}
        self._stale: list[tuple[Binding, Alarm]] = []
        self._delayed: list[tuple[Binding, Alarm]] = []
        self._pending: list[AlarmEvent] = []
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self.notifiers: list[Notify] = []
        self.mqtt: MqttNotifier | None = None
        self.webhooks: list[WebhookNotifier] = []
        self.evaluated = 0
        self.store_errors = 0
        self.events = 0
        self.raised: dict[str, int] = dict.fromkeys(SEVERITIES, 0)  # since start (/metrics)
        started = monotonic()
        for b in self.bindings:
            a = self.alarms[b.id] = Alarm(
                b.id, b.rule.id, b.device, b.point, b.rule.kind, b.rule.severity
            )
            a.last_good = started  # stale counts from the engine's start
            if b.rule.kind == "offline":
                self._offline.setdefault(b.device, []).append((b, a))
            else:
                assert b.point is not None
                self._by_point.setdefault((b.device, b.point), []).append((b, a))
            if b.rule.kind == "stale":
                self._stale.append((b, a))
            if b.rule.on_delay_s > 0:
                self._delayed.append((b, a))

    # --- state from the store ------------------------------------------------------------

    def restore(self, docs: Iterable[Mapping[str, Any]]) -> None:
        """Instances as the store had them. An instance of a rule that no longer exists is
        cleared (latched if unacknowledged, until someone acknowledges it); an inactive one is
        forgotten. Alarms raised elsewhere (``raise_alarm``) keep their state: their module
        raises or clears them again."""
        for doc in docs:
            try:
                state = State(doc["state"])
                a = self.alarms.get(doc["id"])
                orphan = a is None and doc["kind"] != "external"
                if a is None:
                    if state is State.INACTIVE or (orphan and state is State.ACTIVE_ACK):
                        continue
                    a = self.alarms[doc["id"]] = Alarm(
                        doc["id"],
                        doc["rule"],
                        doc["device"],
                        doc["point"],
                        doc["kind"],
                        doc["severity"],
                    )
                a.state, a.condition = state, bool(doc["active"])
                for k in (
                    "value",
                    "message",
                    "raised_at",
                    "cleared_at",
                    "acked_by",
                    "acked_at",
                    "shelved_by",
                    "shelved_at",
                    "shelved_until",
                    "shelve_reason",
                    "updated_at",
                ):
                    setattr(a, k, doc.get(k))
                a.updated_at = a.updated_at or 0.0
                if orphan and a.condition:  # nothing evaluates it any more
                    a.condition = False
                    if a.state is State.ACTIVE_UNACK:
                        a.state = State.CLEARED_UNACK
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("alarms: a stored instance could not be read (%s); ignored", exc)

    # --- evaluation ----------------------------------------------------------------------

    def on_readings(self, batch: Iterable[Reading]) -> None:
        now = self.monotonic()
        by_point = self._by_point
        for r in batch:
            targets = by_point.get((r.device, r.point))
            if targets is None:
                continue
            for b, a in targets:
                self.evaluated += 1
                self._on_reading(b, a, r, now)
        if self._pending:
            self._dirty.set()

    def _on_reading(self, b: Binding, a: Alarm, r: Reading, now: float) -> None:
        rule = b.rule
        good = r.quality is _GOOD
        v = r.value
        number: float | None = None
        if isinstance(v, _NUMBERS):
            try:
                number = float(v)
            except OverflowError:  # an int beyond a float: not a usable number
                number = None
            else:
                number = number if math.isfinite(number) else None
        if good:
            a.last_good = now
        kind = rule.kind
        if kind == "stale":
            if good:
                self._set(b, a, False, v, "")
            return
        if not good or number is None:
            return  # a bad or non-numeric reading says nothing about the condition
        a.value = v
        if kind == "high":
            assert rule.limit is not None
            cond = number > rule.limit if not a.condition else number > rule.limit - rule.deadband
            if cond != a.condition or a.pending_since is not None:  # else: no change
                self._set(b, a, cond, v, f"{b.point} {_fmt(number)} above {_fmt(rule.limit)}")
        elif kind == "low":
            assert rule.limit is not None
            cond = number < rule.limit if not a.condition else number < rule.limit + rule.deadband
            if cond != a.condition or a.pending_since is not None:  # else: no change
                self._set(b, a, cond, v, f"{b.point} {_fmt(number)} below {_fmt(rule.limit)}")
        elif kind == "rate":
            assert rule.rate_per_s is not None
            w = a.window
            w.append((r.ts_mono, number))
            while len(w) > 2 and w[0][0] < r.ts_mono - rule.window_s:
                w.popleft()
            dt = w[-1][0] - w[0][0]
            if dt <= 0 or len(w) < 2:
                return
            rate = (w[-1][1] - w[0][1]) / dt
            d = rule.direction
            signed = rate if d == "rise" else -rate if d == "fall" else abs(rate)
            lim = rule.rate_per_s - (rule.deadband if a.condition else 0.0)
            cond = signed > lim
            if cond != a.condition or a.pending_since is not None:  # else: no change
                self._set(b, a, cond, v, f"{b.point} changing {_fmt(rate)}/s")
        elif kind == "fault":
            code = int(number)
            codes = rule.codes
            cond = (code != 0) if rule.nonzero else (str(code) in codes)
            text = codes.get(str(code), f"code {code}") if cond else ""
            if rule.message and cond:
                text = f"{rule.message}: {text}" if codes else rule.message
            self._set(b, a, cond, v, text)

    def on_health(self, h: Health) -> None:
        targets = self._offline.get(h.device)
        if not targets or h.state is HealthState.UNKNOWN or self.stopping:
            return  # stopping: the service is switching its devices off, not a fault
        for b, a in targets:
            off = h.state is HealthState.OFFLINE
            self._set(b, a, off, h.state.value, f"offline: {h.reason}" if off else "")
        if self._pending:
            self._dirty.set()

    def tick(self) -> None:
        """Timers: stale data, on-delays, shelve expiry; and the health scan."""
        now = self.monotonic()
        if self._health is not None:
            for h in list(self._health().values()):
                self.on_health(h)
        for b, a in self._stale:
            assert b.rule.stale_s is not None
            assert a.last_good is not None
            if now - a.last_good > b.rule.stale_s:
                self._set(b, a, True, a.value, f"no good reading for {_fmt(b.rule.stale_s)} s")
        for b, a in self._delayed:
            if a.pending_since is not None and now - a.pending_since >= b.rule.on_delay_s:
                self._raise(a, a.message)
        wall = self.clock()
        for a in self.alarms.values():
            if a.state is State.SHELVED and a.shelved_until is not None and wall >= a.shelved_until:
                self._unshelve(a, "system", "shelve expired")
        if self._pending:
            self._dirty.set()

    def _set(self, b: Binding, a: Alarm, cond: bool, value: Any, message: str) -> None:
        if cond:
            if a.condition:
                if b.rule.kind == "fault" and message != a.message:  # another code
                    a.message = message
                    self._event(a, "change", a.state, "system", message)
                return
            if b.rule.on_delay_s > 0:
                if a.pending_since is None:
                    a.pending_since = self.monotonic()
                    a.message = message
                if self.monotonic() - a.pending_since < b.rule.on_delay_s:
                    return
            self._raise(a, message)
        else:
            a.pending_since = None
            if a.condition:
                self._clear(a)

    def _raise(self, a: Alarm, message: str) -> None:
        a.pending_since = None
        self.raised[a.severity] = self.raised.get(a.severity, 0) + 1
        a.condition = True
        a.message = message or a.message
        now = self.clock()
        a.raised_at = now
        a.cleared_at = None
        if a.state is State.SHELVED:
            self._event(a, "raise", a.state, "system", "while shelved")
            return
        old = a.state
        a.state = State.ACTIVE_UNACK
        a.acked_by = a.acked_at = None
        self._event(a, "raise", old, "system")

    def _clear(self, a: Alarm) -> None:
        a.condition = False
        a.cleared_at = self.clock()
        old = a.state
        if old is State.ACTIVE_UNACK:
            a.state = State.CLEARED_UNACK
        elif old is State.ACTIVE_ACK:
            a.state = State.INACTIVE
        self._event(a, "clear", old, "system")

    def _event(self, a: Alarm, event: str, old: State, who: str, reason: str = "") -> AlarmEvent:
        now = self.clock()
        a.updated_at = now
        e = AlarmEvent(now, a.as_dict(), event, old.value, a.state.value, who, reason)
        self._pending.append(e)
        self.events += 1
        return e

    # --- operator actions ----------------------------------------------------------------

    def _get(self, alarm: str) -> Alarm:
        a = self.alarms.get(alarm)
        if a is None:
            raise AlarmError(404, "no such alarm")
        return a

    async def ack(self, alarm: str, who: str, comment: str = "") -> dict[str, Any]:
        async with self._lock:
            a = self._get(alarm)
            old = a.state
            if old is State.ACTIVE_UNACK:
                a.state = State.ACTIVE_ACK
            elif old is State.CLEARED_UNACK:
                a.state = State.INACTIVE
            else:
                raise AlarmError(409, f"alarm is {old.value}: nothing to acknowledge")
            a.acked_by, a.acked_at = who, self.clock()
            self._event(a, "ack", old, who, comment)
            await self._flush_locked()
            return a.as_dict()

    async def shelve(self, alarm: str, who: str, until: float, reason: str) -> dict[str, Any]:
        async with self._lock:
            a = self._get(alarm)
            now = self.clock()
            if not until > now:
                raise AlarmError(422, "the shelve must end in the future")
            if until - now > self.cfg.max_shelve_s:
                raise AlarmError(
                    422, f"a shelve may last at most {self.cfg.max_shelve_s:g} s ([alarms])"
                )
            old = a.state
            a.state = State.SHELVED
            a.shelved_by, a.shelved_at, a.shelved_until = who, now, until
            a.shelve_reason = reason
            self._event(a, "shelve", old, who, reason)
            await self._flush_locked()
            return a.as_dict()

    async def unshelve(self, alarm: str, who: str) -> dict[str, Any]:
        async with self._lock:
            a = self._get(alarm)
            if a.state is not State.SHELVED:
                raise AlarmError(409, f"alarm is {a.state.value}, not shelved")
            self._unshelve(a, who, "")
            await self._flush_locked()
            return a.as_dict()

    def _unshelve(self, a: Alarm, who: str, reason: str) -> None:
        a.state = State.ACTIVE_UNACK if a.condition else State.INACTIVE
        a.shelved_until = None
        self._event(a, "unshelve", State.SHELVED, who, reason)

    # --- conditions computed elsewhere -------------------------------------------------

    def raise_alarm(
        self,
        source: str,
        device: str,
        point: str | None,
        severity: str,
        message: str,
        value: Any = None,
    ) -> str:
        """Raise (or update) an alarm whose condition another module computed (fault
        early-warning, the InfluxDB queue). ``source`` is its rule id (e.g.
        ``maintenance.drift``); returns the alarm id. Cleared by :meth:`clear`."""
        if severity not in RANK:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
        for what, name in (("source", source), ("device", device), ("point", point or "x")):
            if not _NAME.match(name):
                raise ValueError(f"{what} must match {_NAME.pattern} (it becomes an MQTT topic)")
        aid = alarm_id(source, device, point)
        a = self.alarms.get(aid)
        if a is None:
            a = self.alarms[aid] = Alarm(aid, source, device, point, "external", severity)
        a.severity, a.value = severity, value
        if not a.condition:
            self._raise(a, message)
        elif message != a.message:
            a.message = message
            self._event(a, "change", a.state, "system", message)
        self._dirty.set()
        return aid

    def clear(self, source: str, device: str, point: str | None = None) -> None:
        """The condition raised by :meth:`raise_alarm` is gone."""
        a = self.alarms.get(alarm_id(source, device, point))
        if a is not None and a.condition:
            self._clear(a)
            self._dirty.set()

    # --- output --------------------------------------------------------------------------

    def active(
        self,
        *,
        states: set[str] | None = None,
        severities: set[str] | None = None,
        device: str | None = None,
        rule: str | None = None,
        include_inactive: bool = False,
    ) -> list[dict[str, Any]]:
        """Instances not inactive (or every one), most severe and newest first."""
        out = [
            a
            for a in self.alarms.values()
            if (include_inactive or a.state is not State.INACTIVE)
            and (states is None or a.state.value in states)
            and (severities is None or a.severity in severities)
            and (device is None or a.device == device)
            and (rule is None or a.rule == rule)
        ]
        out.sort(key=lambda a: (RANK.get(a.severity, 9), -(a.raised_at or 0.0), a.id))
        return [a.as_dict() for a in out]

    async def flush(self) -> None:
        async with self._lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        events, self._pending = self._pending, []
        if not events:
            return
        try:
            await self.store.write(events)
        except Exception:  # a full disk must not stop the alarms: they still notify
            self.store_errors += 1
            log.exception("alarms: %d event(s) could not be stored", len(events))
        for n in self.notifiers:
            for e in events:
                try:
                    n(e)
                except Exception:  # a notifier's bug never stops the alarms
                    log.exception("alarms: a notifier failed")
        if self.journal is not None:
            for e in events:  # each on its own: a held event does not keep the next out
                try:
                    await self.journal.append(_journal_event(e))
                except JournalHeld:  # written when the journal can: late, not lost
                    pass
                except Exception:
                    self.store_errors += 1
                    log.exception("alarms: an event could not be journalled")

    async def run(self, feed: Subscription[Reading] | None) -> None:
        """Consume the feed, tick the timers, flush events; until cancelled or the feed closes."""

        async def readings() -> None:
            assert feed is not None
            with contextlib.suppress(Closed):
                while True:
                    self.on_readings(await feed.get_batch())
                    await self.flush()

        async def ticks() -> None:
            while True:
                self.tick()
                await asyncio.sleep(self.cfg.tick_s)

        async def flusher() -> None:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                await self.flush()

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(ticks(), name="alarms-tick")]
            tasks.append(tg.create_task(flusher(), name="alarms-flush"))
            if feed is not None:
                await tg.create_task(readings(), name="alarms-readings")
                for t in tasks:
                    t.cancel()


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _journal_event(e: AlarmEvent) -> JournalEvent:
    a = e.alarm
    operator = e.event in ("ack", "shelve", "unshelve") and e.who != "system"
    return JournalEvent(
        SourceKind.USER if operator else SourceKind.SYSTEM,
        e.who if operator else "alarms",
        f"alarm.{e.event}",
        Result.OK,
        e.ts,
        e.ts,
        reason=e.reason,
        targets=(a["device"],),
        args={
            "alarm": a["id"],
            "rule": a["rule"],
            "point": a["point"],
            "severity": a["severity"],
            "from": e.from_state,
            "to": e.to_state,
            "message": a["message"],
            "value": a["value"],
        },
    )


def operator_name(origin: Origin) -> str:
    return origin.source or origin.kind.value


# --- wiring -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(
    cfg: AlarmsConfig,
    devices: Iterable[Device],
    store_path: Path,
    *,
    readings: Bus[Reading] | None = None,
    journal: JournalSink | None = None,
    health: Callable[[], Mapping[str, Health]] | None = None,
    mqtt: tuple[str, str, Publish, asyncio.Event | None] | None = None,
) -> AsyncIterator[AlarmEngine]:
    """An engine with its store, feed (LATEST on ``readings``), notifiers and tasks; stopped and
    flushed on exit. ``mqtt``: (venue, node, publish(topic, payload, retain), connected)."""
    store = AlarmStore(store_path)
    engine = AlarmEngine(cfg, devices, store, journal, health=health)
    engine.restore(await store.open())
    await store.prune(time.time() - cfg.history_days * 86400)
    feed = (
        readings.subscribe("alarms", Overflow.LATEST, FEED_POINTS, reading_key)
        if readings is not None
        else None
    )
    tasks: list[asyncio.Task[None]] = []
    client = httpx.AsyncClient()
    try:
        if mqtt is not None and cfg.mqtt:
            venue, node, publish, connected = mqtt
            mn = MqttNotifier(venue, node, publish, connected)
            engine.notifiers.append(mn.notify)
            engine.mqtt = mn
            tasks.append(asyncio.create_task(mn.run(), name="alarms-mqtt"))
            for a in engine.alarms.values():  # restored states: retained again after a restart
                if a.state is not State.INACTIVE:
                    mn.restate(a.as_dict())
        for wcfg in cfg.webhooks:
            wh = WebhookNotifier(wcfg, client)
            engine.notifiers.append(wh.notify)
            engine.webhooks.append(wh)
            tasks.append(asyncio.create_task(wh.run(), name="alarms-webhook"))
        tasks.append(asyncio.create_task(engine.run(feed), name="alarms"))
        yield engine
    finally:
        if feed is not None:
            feed.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await engine.flush()
        await client.aclose()
        await store.close()


def on_influx_queue(service: Service) -> Callable[[QueueAlarm], None]:
    """The InfluxDB sink's ``on_alarm``: its queue level as the alarm ``influx-queue:{node}:-``
    (``high``: warning, ``full`` (dropping): major, ``normal``: cleared)."""

    def hear(q: QueueAlarm) -> None:
        engine: AlarmEngine | None = getattr(service, "alarms", None)
        if engine is None:
            return
        if q.level == "normal":
            engine.clear("influx-queue", service.node)
            return
        severity = "major" if q.level == "full" else "warning"
        text = f"InfluxDB queue {q.level}: {q.readings} readings, {q.dropped} dropped"
        engine.raise_alarm("influx-queue", service.node, None, severity, text, q.readings)

    return hear


def for_service(service: Service) -> contextlib.AbstractAsyncContextManager[AlarmEngine]:
    """The engine as the service runs it: its venue's ``[alarms]``, node devices, readings bus,
    health, journal and MQTT link (if any)."""
    cfg = service.venue.config
    link = service.mqtt
    mqtt = (
        (
            cfg.venue.id,
            service.node,
            lambda t, p, r: link.hub.publish(t, p, retain=r),
            link.connected,
        )
        if link is not None
        else None
    )
    return running(
        cfg.alarms,
        service.own.values(),  # each node alarms its own devices
        service.venue.resolve(cfg.alarms.store),
        readings=service.readings,
        journal=service.journal,
        health=lambda: service.health,
        mqtt=mqtt,
    )
