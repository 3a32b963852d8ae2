"""Maintenance: service-life counters from telemetry, service intervals, records, work orders.

Counters per device, derived from its readings (docs/telemetry.md, "Maintenance"):

| counter | from | how |
| --- | --- | --- |
| ``run_hours`` | ``moving`` | time while true |
| ``cycles`` | ``moving`` | rising edges (one per move) |
| ``distance`` | ``position`` | sum of the changes between good readings (the profile's unit) |
| ``brake_operations`` | ``brake_released`` | rising edges (one release per operation) |
| ``lamp_hours`` | ``lamp_hours`` / ``light_source_hours`` | the device's own hour meter |
| ``lamp_hours`` | else ``power_state`` = 2 (on) or ``lamp_on`` | time while on |

A device gets the counters whose points its profile has. Times are integrated between
consecutive readings of the point, each step capped at ``max_gap_s`` (a silent device, or a
service that was down, does not count as running).

``MaintenanceCounters`` consumes a readings-bus subscription (``DROP_OLDEST``: a slow disk
never blocks the pollers; a dropped reading loses one step of a counter, counted in
``dropped``) and updates its counters in memory; every ``flush_interval_s`` one SQLite
transaction (WAL, on a thread of its own) writes the counters *and the trackers' state* (last
position, last edge, last timestamp per point). After a restart the trackers continue from
that state: a reading not newer than the last one counted for its point is skipped, so a
reading is never counted twice, and a crash loses at most one flush interval of counting.

Service intervals come from ``[maintenance]`` (per device class, overridden per device):
``run_hours``, ``cycles``, ``distance``, ``brake_operations``, ``lamp_hours``, ``days``. A
maintenance record of kind ``service`` (or a done work order of kind ``service``) starts every
interval of the device again. State per interval: ``ok``, ``due`` (at ``due_at`` of it, 90 %
by default), ``overdue`` (past it).

Work orders: ``open`` → ``assigned`` → ``done`` (or ``cancelled``), each change with who and
when, notes appended (never edited). The store is a SQLite file of its own
(``[maintenance] store``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from drivers.model import Device, Quality, Reading
from edge.bus import Closed, Overflow

log = logging.getLogger(__name__)

COUNTERS = ("run_hours", "cycles", "distance", "brake_operations", "lamp_hours")
INTERVAL_KEYS = (*COUNTERS, "days")
LAMP_METERS = ("lamp_hours", "light_source_hours")
POINTS_OF: dict[str, tuple[str | None, ...]] = {
    "run_hours": ("moving",),
    "cycles": ("moving",),
    "distance": ("position",),
    "brake_operations": ("brake_released",),
    "lamp_hours": ("power_state", "lamp_on"),
}
STATUSES = ("open", "assigned", "done", "cancelled")
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "open": ("assigned", "done", "cancelled"),
    "assigned": ("open", "assigned", "done", "cancelled"),
    "done": (),
    "cancelled": (),
}
RECORD_KINDS = ("service", "inspection", "repair", "replacement", "note")
State = Literal["ok", "due", "overdue"]
HOUR = 3600.0
DAY = 86400.0


class MaintenanceError(Exception):
    """A request that cannot be done; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


# --- counting ------------------------------------------------------------------------------


@dataclass
class Tracker:
    """One device's counters and what counting them needs to remember (persisted as JSON)."""

    counters: dict[str, float] = field(default_factory=dict)
    last: dict[str, list[Any]] = field(default_factory=dict)  # point -> [ts, value]
    first_seen: float | None = None

    def to_json(self) -> str:
        return json.dumps({"last": self.last, "first_seen": self.first_seen})


def counters_for(device: Device) -> list[str]:
    points = set(device.profile.points)
    out = []
    if "moving" in points:
        out += ["run_hours", "cycles"]
    if "position" in points:
        out.append("distance")
    if "brake_released" in points:
        out.append("brake_operations")
    if points & {*LAMP_METERS, "power_state", "lamp_on"}:
        out.append("lamp_hours")
    return out


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return None


class Counting:
    """The pure part: readings in, counters out (no I/O; ``MaintenanceCounters`` persists)."""

    def __init__(self, devices: Iterable[Device], max_gap_s: float = 5.0) -> None:
        self.max_gap_s = max_gap_s
        self.kinds: dict[str, list[str]] = {}
        self.units: dict[str, str] = {}
        self.meter: dict[str, str | None] = {}
        for d in devices:
            kinds = counters_for(d)
            if kinds:
                self.kinds[d.id] = kinds
                pos = d.profile.points.get("position")
                self.units[d.id] = (pos.unit or "") if pos is not None else ""
                self.meter[d.id] = next((m for m in LAMP_METERS if m in d.profile.points), None)
        # the points each device's counters read
        self.points: dict[str, frozenset[str]] = {
            dev: frozenset(
                p
                for k in kinds
                for p in POINTS_OF[k] + ((self.meter[dev],) if k == "lamp_hours" else ())
                if p is not None
            )
            for dev, kinds in self.kinds.items()
        }
        self.trackers: dict[str, Tracker] = {
            dev: Tracker({k: 0.0 for k in kinds}) for dev, kinds in self.kinds.items()
        }
        self.skipped = 0  # readings not newer than the last counted (a replay, a restart)
        self.dirty: set[str] = set()

    def observe(self, r: Reading) -> None:
        t = self.trackers.get(r.device)
        if t is None or r.quality is Quality.BAD:
            return
        point = r.point
        if point not in self.points[r.device]:
            return
        v = _number(r.value)
        ts = r.ts_wall
        if v is None or not math.isfinite(ts):
            return
        prev = t.last.get(point)
        if prev is not None and ts <= prev[0]:
            self.skipped += 1
            return
        t.last[point] = [ts, v]
        if t.first_seen is None:
            t.first_seen = ts
        self.dirty.add(r.device)
        c = t.counters
        if prev is None:
            if point == self.meter.get(r.device):
                c["lamp_hours"] = max(c.get("lamp_hours", 0.0), v)
            return
        dt = min(ts - prev[0], self.max_gap_s)
        pv = prev[1]
        if point == "moving":
            if pv:
                c["run_hours"] += dt / HOUR
            if v and not pv:
                c["cycles"] += 1
        elif point == "position":
            if ts - prev[0] <= self.max_gap_s:
                c["distance"] += abs(v - pv)
        elif point == "brake_released":
            if v and not pv:
                c["brake_operations"] += 1
        elif point == self.meter.get(r.device):
            c["lamp_hours"] = max(c.get("lamp_hours", 0.0), v)  # the device's own meter
        elif self.meter.get(r.device) is None:
            on = pv == 2 if point == "power_state" else bool(pv)
            if on:
                c["lamp_hours"] += dt / HOUR


# --- intervals -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interval:
    kind: str  # a counter, or "days"
    every: float
    due_at: float  # fraction of ``every`` from which it is due


def intervals_for(device: Device, cfg: Any) -> list[Interval]:
    """The intervals of ``device`` from a ``MaintenanceConfig``: its class's, then its own."""
    if cfg is None:
        return []
    merged: dict[str, float] = {}
    due_at = 0.9
    for source in (cfg.classes.get(device.profile.device_class), cfg.devices.get(device.id)):
        if source is None:
            continue
        due_at = source.due_at
        for key in INTERVAL_KEYS:
            v = getattr(source, key)
            if v is not None:
                merged[key] = float(v)
    return [Interval(k, v, due_at) for k, v in merged.items()]


def interval_state(since: float, iv: Interval) -> State:
    if since >= iv.every:
        return "overdue"
    if since >= iv.due_at * iv.every:
        return "due"
    return "ok"


# --- the store -------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    device TEXT PRIMARY KEY, counters TEXT NOT NULL, state TEXT NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, kind TEXT NOT NULL,
    at REAL NOT NULL, by TEXT NOT NULL, notes TEXT NOT NULL, counters TEXT NOT NULL,
    work_order INTEGER
);
CREATE INDEX IF NOT EXISTS records_device ON records (device, at);
CREATE TABLE IF NOT EXISTS work_orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, title TEXT NOT NULL,
    description TEXT NOT NULL, kind TEXT NOT NULL, priority TEXT NOT NULL,
    status TEXT NOT NULL, assignee TEXT, created_by TEXT NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, done_by TEXT, done_at REAL, due REAL
);
CREATE INDEX IF NOT EXISTS work_orders_status ON work_orders (status, device);
CREATE TABLE IF NOT EXISTS work_order_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, work_order INTEGER NOT NULL, at REAL NOT NULL,
    by TEXT NOT NULL, event TEXT NOT NULL, text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS work_order_events_order ON work_order_events (work_order, id);
"""


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


def _order(row: sqlite3.Row | tuple[Any, ...], events: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (
        "id",
        "device",
        "title",
        "description",
        "kind",
        "priority",
        "status",
        "assignee",
        "created_by",
        "created_at",
        "updated_at",
        "done_by",
        "done_at",
        "due",
    )
    doc = dict(zip(keys, row, strict=True))
    doc["events"] = events
    doc["notes"] = [e for e in events if e["event"] == "note"]
    return doc


_RECORD_KEYS = ("id", "device", "kind", "at", "by", "notes", "counters", "work_order")


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    doc = dict(zip(_RECORD_KEYS, row, strict=True))
    doc["counters"] = json.loads(doc["counters"])
    return doc


class Maintenance:
    """Counters, intervals, records and work orders of one node's devices.

    ``async with Maintenance(...) as m`` opens the store and restores the counters; ``run(feed)``
    consumes readings until the feed closes, flushing every ``flush_interval_s``; leaving the
    context flushes once more and closes the store.
    """

    def __init__(
        self,
        path: Path,
        devices: Iterable[Device],
        config: Any = None,
        flush_interval_s: float = 5.0,
        max_gap_s: float = 5.0,
        clock: Any = time.time,
    ) -> None:
        self.devices: dict[str, Device] = {d.id: d for d in devices}
        self.path = path
        self.counting = Counting(self.devices.values(), max_gap_s)
        self.intervals = {d.id: intervals_for(d, config) for d in self.devices.values()}
        self.flush_interval_s = flush_interval_s
        self.clock = clock
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="maintenance")
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()  # one flush / change at a time
        self.flushes = 0
        self.dropped = 0

    # --- lifecycle ------------------------------------------------------------------------

    async def _on(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def __aenter__(self) -> Maintenance:
        self._conn = await self._on(_connect, self.path)
        await self._on(self._restore)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.flush()
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._on(conn.close)
        self._pool.shutdown(wait=True)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise MaintenanceError(503, "the maintenance store is not open")
        return self._conn

    def _restore(self) -> None:
        for device, counters, state in self._db().execute(
            "SELECT device, counters, state FROM counters"
        ):
            t = self.counting.trackers.get(device)
            if t is None:
                continue  # a device no longer on this node: its row stays
            saved = json.loads(counters)
            st = json.loads(state)
            for k in t.counters:
                if isinstance(saved.get(k), int | float):
                    t.counters[k] = float(saved[k])
            t.last = {k: v for k, v in st.get("last", {}).items() if isinstance(v, list)}
            t.first_seen = st.get("first_seen")

    async def flush(self) -> int:
        """Persist the counters changed since the last flush; returns how many devices."""
        async with self._lock:
            dirty = self.counting.dirty
            self.counting.dirty = set()
            trackers = self.counting.trackers
            now = self.clock()
            rows = [
                (dev, json.dumps(trackers[dev].counters), trackers[dev].to_json(), now)
                for dev in sorted(dirty)
            ]
            if rows:
                await self._on(self._write_counters, rows)
                self.flushes += 1
            return len(rows)

    def _write_counters(self, rows: list[tuple[str, str, str, float]]) -> None:
        db = self._db()
        with db:
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO counters (device, counters, state, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (device) DO UPDATE SET counters = excluded.counters, "
                "state = excluded.state, updated = excluded.updated",
                rows,
            )

    def observe(self, r: Reading) -> None:
        self.counting.observe(r)

    async def run(self, feed: Any) -> None:
        """Count the readings of ``feed`` (a bus ``Subscription[Reading]``) until it closes."""

        async def flusher() -> None:
            while True:
                await asyncio.sleep(self.flush_interval_s)
                try:
                    await self.flush()
                except Exception:  # a full disk: try again next time, the counters wait
                    log.exception("maintenance: flush failed")

        task = asyncio.create_task(flusher(), name="maintenance-flush")
        try:
            with contextlib.suppress(Closed):
                while True:  # a batch at a time: no coroutine step per reading
                    observe = self.counting.observe
                    for r in await feed.get_batch():
                        observe(r)
                    self.dropped = getattr(feed, "dropped", 0)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.flush()

    # --- reading ----------------------------------------------------------------------------

    def _device(self, device: str) -> Device:
        d = self.devices.get(device)
        if d is None:
            raise MaintenanceError(404, "no such device on this node")
        return d

    def _last_service(self, device: str) -> tuple[float | None, dict[str, float]]:
        row = (
            self._db()
            .execute(
                "SELECT at, counters FROM records WHERE device = ? AND kind = 'service' "
                "ORDER BY at DESC, id DESC LIMIT 1",
                (device,),
            )
            .fetchone()
        )
        if row is None:
            return None, {}
        return float(row[0]), json.loads(row[1])

    def _device_doc(self, device: str, now: float) -> dict[str, Any]:
        d = self._device(device)
        t = self.counting.trackers.get(device)
        counters = dict(t.counters) if t is not None else {}
        served_at, at_service = self._last_service(device)
        intervals: list[dict[str, Any]] = []
        states: list[str] = []
        for iv in self.intervals.get(device, []):
            if iv.kind == "days":
                start = served_at or (t.first_seen if t is not None else None) or now
                since = (now - start) / DAY
            elif iv.kind in counters:
                since = counters[iv.kind] - float(at_service.get(iv.kind, 0.0))
            else:
                continue  # an interval for a counter this device does not have
            intervals.append(
                {
                    "kind": iv.kind,
                    "every": iv.every,
                    "since_service": since,
                    "remaining": iv.every - since,
                    "fraction": since / iv.every,
                    "state": interval_state(since, iv),
                }
            )
            states.append(intervals[-1]["state"])
        rank = {"ok": 0, "due": 1, "overdue": 2}
        state = max(states, key=lambda s: rank[s], default="ok")
        return {
            "device": device,
            "class": d.profile.device_class,
            "profile": d.profile.id,
            "counters": counters,
            "distance_unit": self.counting.units.get(device, ""),
            "last_service": served_at,
            "intervals": intervals,
            "state": state,
        }

    async def device(self, device: str) -> dict[str, Any]:
        self._device(device)
        return dict(await self._on(self._device_doc, device, self.clock()))

    async def overview(self, state: str | None = None) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            now = self.clock()
            docs = [self._device_doc(dev, now) for dev in sorted(self.devices)]
            if state is None:
                return docs
            return [d for d in docs if d["state"] == state]

        return list(await self._on(run))

    # --- records ----------------------------------------------------------------------------

    async def add_record(
        self,
        device: str,
        kind: str,
        by: str,
        notes: str = "",
        at: float | None = None,
        work_order: int | None = None,
    ) -> dict[str, Any]:
        self._device(device)
        if kind not in RECORD_KINDS:
            raise MaintenanceError(422, f"kind must be one of {', '.join(RECORD_KINDS)}")
        now = self.clock()
        when = now if at is None else at
        if not math.isfinite(when) or when <= 0 or when > now + 300:
            raise MaintenanceError(422, "at must be a past time in epoch seconds")
        t = self.counting.trackers.get(device)
        counters = dict(t.counters) if t is not None else {}

        def run() -> dict[str, Any]:
            db = self._db()
            cur = db.execute(
                "INSERT INTO records (device, kind, at, by, notes, counters, work_order) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (device, kind, when, by, notes, json.dumps(counters), work_order),
            )
            row = db.execute(
                f"SELECT {', '.join(_RECORD_KEYS)} FROM records WHERE id = ?", (cur.lastrowid,)
            ).fetchone()
            return _record(row)

        async with self._lock:
            doc: dict[str, Any] = await self._on(run)
        return doc

    async def records(self, device: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            sql = f"SELECT {', '.join(_RECORD_KEYS)} FROM records"
            args: tuple[Any, ...] = ()
            if device is not None:
                sql, args = sql + " WHERE device = ?", (device,)
            rows = self._db().execute(sql + " ORDER BY at DESC, id DESC LIMIT ?", (*args, limit))
            return [_record(r) for r in rows]

        return list(await self._on(run))

    # --- work orders ------------------------------------------------------------------------

    def _events(self, order: int) -> list[dict[str, Any]]:
        rows = self._db().execute(
            "SELECT at, by, event, text FROM work_order_events WHERE work_order = ? ORDER BY id",
            (order,),
        )
        return [{"at": a, "by": b, "event": e, "text": t} for a, b, e, t in rows]

    def _get_order(self, order: int) -> dict[str, Any]:
        row = self._db().execute("SELECT * FROM work_orders WHERE id = ?", (order,)).fetchone()
        if row is None:
            raise MaintenanceError(404, "no such work order")
        return _order(row, self._events(order))

    async def work_order(self, order: int) -> dict[str, Any]:
        return dict(await self._on(self._get_order, order))

    async def work_orders(
        self, status: str | None = None, device: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        if status is not None and status not in STATUSES:
            raise MaintenanceError(422, f"status must be one of {', '.join(STATUSES)}")

        def run() -> list[dict[str, Any]]:
            where, args = [], []
            if status is not None:
                where.append("status = ?")
                args.append(status)
            if device is not None:
                where.append("device = ?")
                args.append(device)
            sql = "SELECT * FROM work_orders"
            if where:
                sql += " WHERE " + " AND ".join(where)
            rows = self._db().execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
            return [_order(r, self._events(r[0])) for r in rows]

        return list(await self._on(run))

    async def create_work_order(
        self,
        device: str,
        title: str,
        by: str,
        description: str = "",
        kind: str = "service",
        priority: str = "normal",
        assignee: str | None = None,
        due: float | None = None,
    ) -> dict[str, Any]:
        self._device(device)
        if kind not in RECORD_KINDS:
            raise MaintenanceError(422, f"kind must be one of {', '.join(RECORD_KINDS)}")
        now = self.clock()
        status = "assigned" if assignee else "open"

        def run() -> dict[str, Any]:
            db = self._db()
            with db:
                db.execute("BEGIN")
                cur = db.execute(
                    "INSERT INTO work_orders (device, title, description, kind, priority, status, "
                    "assignee, created_by, created_at, updated_at, due) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        device,
                        title,
                        description,
                        kind,
                        priority,
                        status,
                        assignee,
                        by,
                        now,
                        now,
                        due,
                    ),
                )
                order = int(cur.lastrowid or 0)
                db.execute(
                    "INSERT INTO work_order_events (work_order, at, by, event, text) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (order, now, by, "created", status if not assignee else f"assigned {assignee}"),
                )
            return self._get_order(order)

        async with self._lock:
            doc: dict[str, Any] = await self._on(run)
        return doc

    async def update_work_order(
        self,
        order: int,
        by: str,
        status: str | None = None,
        assignee: str | None = None,
        note: str | None = None,
    ) -> dict[str, Any]:
        """Change status and/or assignee and/or append a note, in one transaction."""
        if status is not None and status not in STATUSES:
            raise MaintenanceError(422, f"status must be one of {', '.join(STATUSES)}")
        if status is None and assignee is None and note is None:
            raise MaintenanceError(422, "nothing to change: give status, assignee or note")
        now = self.clock()

        def run() -> tuple[dict[str, Any], bool]:
            db = self._db()
            with db:
                db.execute("BEGIN IMMEDIATE")
                cur = self._get_order(order)
                old = cur["status"]
                new = status or ("assigned" if assignee and old == "open" else old)
                if new != old and new not in TRANSITIONS[old]:
                    raise MaintenanceError(409, f"a work order that is {old} cannot become {new}")
                if old in ("done", "cancelled") and (assignee is not None or status is not None):
                    raise MaintenanceError(409, f"the work order is {old}")
                if new == "assigned" and not (assignee or cur["assignee"]):
                    raise MaintenanceError(422, "an assigned work order needs an assignee")
                events: list[tuple[str, str]] = []
                sets: dict[str, Any] = {"updated_at": now}
                if assignee is not None and assignee != cur["assignee"]:
                    sets["assignee"] = assignee
                    events.append(("assigned", assignee))
                if new != old:
                    sets["status"] = new
                    events.append(("status", f"{old} -> {new}"))
                    if new == "done":
                        sets["done_by"], sets["done_at"] = by, now
                if note is not None:
                    events.append(("note", note))
                db.execute(
                    f"UPDATE work_orders SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?",
                    (*sets.values(), order),
                )
                db.executemany(
                    "INSERT INTO work_order_events (work_order, at, by, event, text) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(order, now, by, e, t) for e, t in events],
                )
            return self._get_order(order), new == "done" and old != "done"

        async with self._lock:
            doc, finished = await self._on(run)
        if finished:  # the work done is a maintenance record (a service resets the intervals)
            text = "; ".join(n["text"] for n in doc["notes"])
            await self.add_record(
                doc["device"],
                doc["kind"],
                by,
                f"{doc['title']}: {text}".strip(": "),
                work_order=order,
            )
        return dict(doc)

    def stats(self) -> dict[str, Any]:
        return {
            "devices": len(self.counting.trackers),
            "flushes": self.flushes,
            "skipped": self.counting.skipped,
            "dropped": self.dropped,
        }


# --- the service's entry point -----------------------------------------------------------------

LEARN_HISTORY_S = 3600.0  # early warning learns from this much of the store's history at start
FEED_SIZE = 100_000  # readings each consumer's DROP_OLDEST queue holds


def warning_to_alarm(service: Any) -> Any:
    """An ``on_warning`` that raises drift warnings as alarms (``edge.alarms.AlarmEngine``'s
    ``raise_alarm`` / ``clear``, source ``early_warning.<model>``, severity ``warning``) when the
    service runs an alarm engine (``service.alarms``); looked up at each warning."""
    from edge.early_warning import DriftWarning

    point_of = {
        "motor_current": "motor_current",
        "temperature_rise": "motor_temperature",
        "brake_release": "brake_released",
    }

    def on_warning(w: DriftWarning) -> None:
        engine = getattr(service, "alarms", None)
        if engine is None:
            return
        source, point = f"early_warning.{w.model}", point_of[w.model]
        if w.active:
            engine.raise_alarm(source, w.device, point, "warning", w.message, w.residual)
        else:
            engine.clear(source, w.device, point)

    return on_warning


@contextlib.asynccontextmanager
async def for_service(service: Any) -> Any:
    """Maintenance counting and fault early-warning as the service runs them: each on its own
    ``DROP_OLDEST`` subscription of ``service.readings`` (never blocking the pollers), set as
    ``service.maintenance`` and ``service.early_warning`` for the API. Enter it after the
    telemetry store is open and before the drivers start; leaving it (after the drivers have
    stopped) ends both consumers and flushes the counters."""
    from edge.early_warning import EarlyWarning

    cfg = service.venue.config.maintenance
    devices = list(service.own.values())  # each node counts its own devices
    feed = service.readings.subscribe("maintenance", Overflow.DROP_OLDEST, maxsize=FEED_SIZE)
    ew_feed = service.readings.subscribe("early-warning", Overflow.DROP_OLDEST, maxsize=FEED_SIZE)
    early = EarlyWarning(devices, on_warning=warning_to_alarm(service))
    async with Maintenance(
        service.venue.resolve(cfg.store),
        devices,
        cfg,
        flush_interval_s=cfg.flush_interval_s,
        max_gap_s=cfg.max_gap_s,
    ) as m:
        service.maintenance, service.early_warning = m, early
        tasks = [
            asyncio.create_task(m.run(feed), name="maintenance"),
            asyncio.create_task(early.run(ew_feed), name="early-warning"),
        ]
        if early.watches:
            tasks.append(asyncio.create_task(_learn(early, service.store), name="ew-learn"))
        try:
            yield m
        finally:
            feed.close()
            ew_feed.close()
            tasks[-1].cancel()  # a learning still running is abandoned
            await asyncio.gather(*tasks, return_exceptions=True)


async def _learn(early: Any, store: Any) -> None:
    now = time.time()
    try:
        learned = await early.learn_from_store(store, now - LEARN_HISTORY_S, now)
    except Exception:  # the store is busy or broken: the models learn from live readings
        log.exception("early warning: learning from the store failed")
        return
    log.info("early warning: learned from the last %g s: %s", LEARN_HISTORY_S, learned)
