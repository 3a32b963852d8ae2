"""The journal on SQLite: durable appends, indexed queries, CSV and Parquet export.

Follows ``edge/store.py``: one writer thread with one connection (so writes never contend), one
reader thread (WAL lets it read while the writer commits), ``synchronous=NORMAL`` in WAL mode
(a committed transaction survives ``kill -9`` of the process; only a power loss can take the
last ones — ``synchronous="FULL"`` closes that too at an fsync per commit).

**Its own file** (``telemetry.journal.sqlite3`` next to the telemetry store), not the
telemetry file: SQLite has one write lock per file, and an operator's GO must not wait behind
an 80 000 readings/s batch commit or a telemetry prune; the journal is an audit record with
its own retention (none by default) that is archived and copied on its own; and its schema
version is its own.

**Group commit.** ``append`` queues the event and awaits a future; a single flush task writes
every event queued so far in one transaction, then resolves their futures with their sequence
numbers. So an event is durable before its caller hears back, and many concurrent appends cost
one commit. Sequence numbers are assigned inside the write transaction from
``sqlite_sequence`` (AUTOINCREMENT: never reused, even after a prune), so they are gap-free in
append order.

**Append-only.** There is no update or delete API, and triggers ``RAISE(ABORT)`` on any UPDATE or
DELETE of ``journal`` and ``journal_target``. The one exception is :meth:`JournalStore.prune`,
the documented retention/admin path: in one transaction it drops the delete triggers, deletes
events older than a time, recreates the triggers and journals the prune itself.

Schema (docs/journal.md): ``journal`` holds one row per event with an index on ``ts`` (the
requested time) and on ``(source_kind, ts)``; ``journal_target`` — a WITHOUT ROWID side table
keyed by ``(target, ts, seq)`` — holds one row per (event, target) *covering* what a device
query returns: the source kind (its filter) and the event's JSON text, the one the API sends.
So one device's history is one contiguous range of that table's B-tree, and never a random read
of ``journal`` per event (schema 1 had only the key there: ~10 000 random reads for a device's
whole history, p99 258 ms over 2 000 000 events). The JSON is made by SQLite from the
``journal`` row just written (``INSERT … SELECT``), by the same expression as the time-window
queries use, so both paths print an event identically.

Schema versions (``PRAGMA user_version``): a newer file is refused untouched; a schema-1 file is
migrated on open, in one transaction (the side table is rebuilt from ``journal``; ``journal``
itself, its sequence numbers and its triggers are not touched).

**A file that takes no writes** (a full disk, an I/O error): appended events are held in memory,
in order, retried every ``RETRY_S``, and written once the file takes writes again; their
callers hear :class:`JournalHeld` rather than wait on (the command was
carried out; its record is late, not lost). Beyond ``HELD_MAX`` held events the oldest are
dropped and counted; held events left at close are lost and said (docs/journal.md, "A full disk").
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from controller.journal import (
    JournalEvent,
    JournalHeld,
    JournalSink,
    Origin,
    Result,
    SourceKind,
    journalled,
)
from drivers.base import DeviceDriver
from drivers.model import Value

log = logging.getLogger(__name__)
R = TypeVar("R")
RETRY_S = 1.0  # a file that takes no writes is tried again this often
HELD_WAIT_S = 2.0  # how long an append waits on a file that takes no writes
HELD_MAX = 100_000  # events held in memory at most
SCHEMA_VERSION = 2
QUERY_LIMIT_MAX = 10_000
EXPORT_CHUNK = 5_000


_ID = re.compile(r"[^\x00-\x1f\x7f]{1,1000}")

_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS journal_no_update BEFORE UPDATE ON journal
BEGIN SELECT RAISE(ABORT, 'the journal is append-only: events cannot be changed'); END;
CREATE TRIGGER IF NOT EXISTS journal_no_delete BEFORE DELETE ON journal
BEGIN SELECT RAISE(ABORT, 'the journal is append-only: events cannot be deleted'); END;
CREATE TRIGGER IF NOT EXISTS journal_target_no_update BEFORE UPDATE ON journal_target
BEGIN SELECT RAISE(ABORT, 'the journal is append-only: events cannot be changed'); END;
CREATE TRIGGER IF NOT EXISTS journal_target_no_delete BEFORE DELETE ON journal_target
BEGIN SELECT RAISE(ABORT, 'the journal is append-only: events cannot be deleted'); END;
"""

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    executed REAL,
    duration_s REAL,
    source_kind TEXT NOT NULL,
    source TEXT NOT NULL,
    command TEXT NOT NULL,
    cue_list TEXT,
    cue TEXT,
    targets TEXT NOT NULL,
    result TEXT NOT NULL CHECK (result IN ('ok', 'refused', 'failed')),
    reason TEXT NOT NULL,
    args TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_ts ON journal (ts);
CREATE INDEX IF NOT EXISTS journal_source_ts ON journal (source_kind, ts);
CREATE TABLE IF NOT EXISTS journal_target (
    target TEXT NOT NULL,
    ts REAL NOT NULL,
    seq INTEGER NOT NULL,
    source_kind TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (target, ts, seq)
) WITHOUT ROWID;
"""
    + _TRIGGERS
)

COLUMNS = (
    "seq",
    "ts",
    "executed",
    "duration_s",
    "source_kind",
    "source",
    "command",
    "cue_list",
    "cue",
    "targets",
    "result",
    "reason",
    "args",
)
_SELECT = "SELECT " + ", ".join(f"j.{c}" for c in COLUMNS) + " FROM journal j"
# The same rows as JSON objects made by SQLite itself, for the API: no Python object per row.
# Times are printed with 6 decimals (µs; SQLite's own float text keeps only 15 digits);
# targets and args are JSON this module wrote, inlined as they are.
_JSON_ROW = (
    """'{"seq":' || j.seq || ',"ts":' || printf('%.6f', j.ts)"""
    """ || ',"executed":' || CASE WHEN j.executed IS NULL THEN 'null'"""
    """ ELSE printf('%.6f', j.executed) END"""
    """ || ',"duration_s":' || json_quote(j.duration_s)"""
    + "".join(
        f""" || ',"{c}":' || json_quote(j.{c})"""
        for c in ("source_kind", "source", "command", "cue_list", "cue")
    )
    + """ || ',"targets":' || j.targets"""
    + "".join(f""" || ',"{c}":' || json_quote(j.{c})""" for c in ("result", "reason"))
    + """ || ',"args":' || j.args || '}'"""
)
_SELECT_JSON = f"SELECT {_JSON_ROW} FROM journal j"
# The side table's rows for the events with seq in [?, ?] (or all events: no WHERE), one per
# distinct target; json_each yields a target named twice twice, OR IGNORE keeps one.
_FILL_TARGETS = (
    "INSERT OR IGNORE INTO journal_target (target, ts, seq, source_kind, doc)"
    f" SELECT t.value, j.ts, j.seq, j.source_kind, {_JSON_ROW}"
    " FROM journal j, json_each(j.targets) t"
)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the journal keeps it: the event and its sequence number."""

    seq: int
    event: JournalEvent

    def as_dict(self) -> dict[str, Any]:
        e = self.event
        return {
            "seq": self.seq,
            "ts": e.requested,
            "executed": e.executed,
            "duration_s": e.duration_s,
            "source_kind": e.kind.value,
            "source": e.source,
            "command": e.command,
            "cue_list": e.cue_list,
            "cue": e.cue,
            "targets": list(e.targets),
            "result": e.result.value,
            "reason": e.reason,
            "args": dict(e.args),
        }


class QueryError(ValueError):
    """A journal query that cannot be run; the message says which parameter and why."""


@dataclass(frozen=True, slots=True)
class JournalQuery:
    """Events with ``since <= ts <= until`` (requested time, epoch s), of one target device and
    one source kind if given; at most ``limit``, the latest ones, oldest first."""

    since: float | None = None
    until: float | None = None
    device: str | None = None
    source: SourceKind | None = None
    limit: int | None = 1000

    def __post_init__(self) -> None:
        problems = []
        for name, v in (("since", self.since), ("until", self.until)):
            if v is not None and (isinstance(v, bool) or not math.isfinite(v)):
                problems.append(f"{name} must be a finite number of epoch seconds")
        if (
            not problems
            and self.since is not None
            and self.until is not None
            and self.since > self.until
        ):
            problems.append("since is after until")
        if self.device is not None and not _ID.fullmatch(self.device):
            problems.append("device must be 1 to 1000 characters without control characters")
        if self.source is not None:
            try:
                object.__setattr__(self, "source", SourceKind(self.source))
            except ValueError:
                kinds = ", ".join(k.value for k in SourceKind)
                problems.append(f"source must be one of: {kinds}")
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1
        ):
            problems.append("limit must be a whole number >= 1")
        if problems:
            raise QueryError("; ".join(problems))

    def sql(self, newest_first: bool, select: str = _SELECT) -> tuple[str, list[Any]]:
        """The statement and its parameters. A device query walks ``journal_target``'s
        (target, ts, seq) key — for JSON (``select=_SELECT_JSON``) that table alone, which
        covers it; any other walks the ``ts`` index (or ``(source_kind, ts)``)."""
        where: list[str] = []
        params: list[Any] = []
        order = "DESC" if newest_first else "ASC"
        if self.device is not None and select == _SELECT_JSON:
            sql = "SELECT t.doc FROM journal_target t"
            where.append("t.target = ?")
            params.append(self.device)
            tcol = "t.ts"
            order_by = f"t.ts {order}, t.seq {order}"
        elif self.device is not None:
            sql = select + " JOIN journal_target t ON t.seq = j.seq"
            where.append("t.target = ?")
            params.append(self.device)
            tcol = "t.ts"
            order_by = f"t.ts {order}, t.seq {order}"
        else:
            sql = select
            tcol = "j.ts"
            order_by = f"j.ts {order}, j.seq {order}"
        if self.since is not None:
            where.append(f"{tcol} >= ?")
            params.append(self.since)
        if self.until is not None:
            where.append(f"{tcol} <= ?")
            params.append(self.until)
        if self.source is not None:
            where.append(f"{tcol[0]}.source_kind = ?")  # t or j: the table walked
            params.append(self.source.value)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order_by}"
        return sql, params


def _row(r: Sequence[Any]) -> StoredEvent:
    (seq, ts, executed, duration, kind, source, command, cue_list, cue, targets, result) = r[:11]
    reason, args = r[11], r[12]
    return StoredEvent(
        seq,
        JournalEvent(
            kind=SourceKind(kind),
            source=source,
            command=command,
            result=Result(result),
            requested=ts,
            executed=executed,
            duration_s=duration,
            reason=reason,
            cue_list=cue_list,
            cue=cue,
            targets=tuple(json.loads(targets)),
            args=json.loads(args),
        ),
    )


def _json(value: Any) -> str:
    # Arguments came from JSON, OSC or MQTT; anything else is written as its text.
    return json.dumps(value, separators=(",", ":"), default=str, allow_nan=False)


def _args_json(args: Any) -> str:
    try:
        return _json(args)
    except ValueError:  # NaN or infinity in an argument: kept, as text
        return _json({k: str(v) for k, v in dict(args).items()})


class JournalStore:
    """The journal. Use as ``async with JournalStore(path) as journal``."""

    def __init__(self, path: Path, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = path
        self.synchronous = synchronous
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="journal-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="journal-reader")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._pending: list[tuple[JournalEvent, asyncio.Future[int]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self.appended = 0  # this run
        self.commits = 0  # this run: appended / commits is the group-commit factor
        # Why the file takes no writes now (None: it does), and who hears of it (the alarm).
        self.failing: str | None = None
        self.on_state: Callable[[str | None, int], None] | None = None
        self.held_max = HELD_MAX
        self.dropped = 0  # held events dropped this run
        self._closing = False

    async def __aenter__(self) -> JournalStore:
        try:
            await self._on(self._writer, self._open_writer)
            await self._on(self._reader, self._open_reader)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True  # a flush that cannot write gives up instead of retrying
        if self._flushing is not None:  # whatever was appended is committed before closing
            await asyncio.gather(self._flushing, return_exceptions=True)
        await self._on(self._writer, self._close_conn, "_wconn")
        await self._on(self._reader, self._close_conn, "_rconn")
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    async def _on(self, pool: ThreadPoolExecutor, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    # --- writer thread ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE … COMMIT).
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=5000")
        # 32 MB of page cache a connection: the target index takes inserts at random devices,
        # and a device's history reads pages spread over the file.
        conn.execute("PRAGMA cache_size=-32768")
        return conn

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            conn.close()
            raise RuntimeError(
                f"{self.path}: journal schema {version} is newer than this "
                f"Flytower ({SCHEMA_VERSION}); refusing to touch it"
            )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version == 1:  # read again under the write lock: another opener may have won
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 1:
                try:
                    _migrate_from_1(conn)
                except sqlite3.Error as exc:
                    raise RuntimeError(
                        f"{self.path}: cannot migrate journal schema 1 to {SCHEMA_VERSION} "
                        f"({exc}); the file is left as it was"
                    ) from exc
            for statement in _split(_SCHEMA):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        self._wconn = conn

    def _open_reader(self) -> None:
        self._rconn = self._connect()

    def _close_conn(self, attr: str) -> None:
        conn = getattr(self, attr)
        if conn is not None:
            conn.close()
            setattr(self, attr, None)

    def _insert(self, conn: sqlite3.Connection, events: Sequence[JournalEvent]) -> list[int]:
        """Inside an open write transaction: the events, numbered after the last one ever."""
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'journal'").fetchone()
        base = int(row[0]) if row else 0
        seqs = list(range(base + 1, base + 1 + len(events)))
        conn.executemany(
            "INSERT INTO journal VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    seq,
                    e.requested,
                    e.executed,
                    e.duration_s,
                    e.kind.value,
                    e.source,
                    e.command,
                    e.cue_list,
                    e.cue,
                    _json(list(e.targets)),
                    e.result.value,
                    e.reason,
                    _args_json(e.args),
                )
                for seq, e in zip(seqs, events, strict=True)
            ],
        )
        if seqs:
            conn.execute(_FILL_TARGETS + " WHERE j.seq BETWEEN ? AND ?", (seqs[0], seqs[-1]))
        return seqs

    def _write(self, events: Sequence[JournalEvent]) -> list[int]:
        conn = self._wconn
        assert conn is not None, "journal is not open"
        conn.execute("BEGIN IMMEDIATE")
        try:
            seqs = self._insert(conn, events)
            conn.execute("COMMIT")  # durable from here on: only now may a caller hear back
        except BaseException:
            if conn.in_transaction:  # a COMMIT refused for a full disk has rolled back itself
                conn.execute("ROLLBACK")
            raise
        self.appended += len(events)
        self.commits += 1
        return seqs

    def _prune(self, before: float, event: JournalEvent) -> int:
        conn = self._wconn
        assert conn is not None, "journal is not open"
        conn.execute("BEGIN IMMEDIATE")
        try:
            for name in ("journal_no_delete", "journal_target_no_delete"):
                conn.execute(f"DROP TRIGGER {name}")
            conn.execute("DELETE FROM journal_target WHERE ts < ?", (before,))
            n = int(conn.execute("DELETE FROM journal WHERE ts < ?", (before,)).rowcount)
            for statement in _split(_TRIGGERS):
                conn.execute(statement)
            self._insert(conn, [event_with(event, args={"before": before, "deleted": n})])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return n

    # --- appends, awaited from the loop ----------------------------------------------------

    async def append(self, event: JournalEvent) -> int:
        """Journal ``event``; return its sequence number once it survives a crash.

        While the file cannot be written (a full disk, an I/O error) the event is held in
        memory, in order, and written when the file takes writes again; the caller gets
        :class:`JournalHeld` at once (or within ``HELD_WAIT_S``, as the failure is found)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        # If the caller is cancelled, nobody reads the outcome: mark it retrieved.
        future.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        self._pending.append((event, future))
        if len(self._pending) > self.held_max:  # the oldest held go: counted and said
            over = len(self._pending) - self.held_max
            for _, f in self._pending[:over]:
                if not f.done():
                    f.set_exception(JournalHeld(f"dropped: more than {self.held_max} held"))
            del self._pending[:over]
            self.dropped += over
            log.error("journal: %d held event(s) dropped (more than %d held)", over, self.held_max)
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name="journal-flush")
        # asyncio.wait never cancels the future: a cancelled caller does not cancel the
        # commit of the others' events.
        while self.failing is None:
            done, _ = await asyncio.wait({future}, timeout=HELD_WAIT_S)
            if done:
                return future.result()
        raise JournalHeld(
            f"the journal cannot write ({self.failing}); the event is held in memory "
            "and written when it can be"
        )

    async def append_many(self, events: Sequence[JournalEvent]) -> list[int]:
        """Journal a batch in one transaction (imports, benchmarks); sequence numbers back."""
        if not events:
            return []
        return await self._on(self._writer, self._write, list(events))

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    seqs = await self._on(self._writer, self._write, [e for e, _ in batch])
                except sqlite3.OperationalError as exc:  # the file, not the events: hold them
                    self._pending[:0] = batch
                    if self._closing:
                        self._give_up(exc)
                        return
                    if self.failing is None:  # once: /metrics has the state as it lasts
                        log.error("journal: cannot write (%s): events held in memory", exc)
                        self.failing = str(exc)
                        self._said()
                    await asyncio.sleep(RETRY_S)
                except Exception as exc:
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                else:
                    for (_, f), seq in zip(batch, seqs, strict=True):
                        if not f.done():
                            f.set_result(seq)
                    if self.failing is not None and not self._pending:
                        log.warning("journal: writing again; the held events are written")
                        self.failing = None
                        self._said()
        finally:
            self._flushing = None

    def _said(self) -> None:
        if self.on_state is not None:
            self.on_state(self.failing, len(self._pending))

    def _give_up(self, exc: Exception) -> None:
        """Closing while the file takes no writes: what is held is lost, and said."""
        log.error(
            "journal: closing with %d event(s) that could not be written (%s)",
            len(self._pending),
            exc,
        )
        for _, f in self._pending:
            if not f.done():
                f.set_exception(exc)
        self.dropped += len(self._pending)
        self._pending = []

    async def prune(self, before: float, *, who: str) -> int:
        """The retention/admin path (docs/journal.md), never called by a normal role: delete
        events requested before ``before`` and journal that this was done, by ``who``."""
        if not math.isfinite(before):
            raise ValueError("before must be a finite time")
        event = JournalEvent(
            kind=SourceKind.SYSTEM,
            source=who,
            command="journal.prune",
            result=Result.OK,
            requested=time.time(),
            executed=time.time(),
        )
        return await self._on(self._writer, self._prune, before, event)

    # --- queries, on the reader thread -----------------------------------------------------

    async def query(self, q: JournalQuery) -> tuple[list[StoredEvent], bool]:
        """The events ``q`` selects (oldest first) and whether more matched than ``q.limit``."""

        def run() -> tuple[list[StoredEvent], bool]:
            conn = self._rconn
            assert conn is not None, "journal is not open"
            sql, params = q.sql(newest_first=True)
            if q.limit is not None:
                sql += " LIMIT ?"
                params.append(q.limit + 1)
            rows = conn.execute(sql, params).fetchall()
            more = q.limit is not None and len(rows) > q.limit
            return [_row(r) for r in reversed(rows[: q.limit])], more

        return await self._on(self._reader, run)

    async def query_json(self, q: JournalQuery) -> tuple[list[str], bool]:
        """Like :meth:`query`, but each event as the JSON object text the API sends (made by
        SQLite: a 1-hour window of thousands of events costs no Python object per event)."""

        def run() -> tuple[list[str], bool]:
            conn = self._rconn
            assert conn is not None, "journal is not open"
            sql, params = q.sql(newest_first=True, select=_SELECT_JSON)
            if q.limit is not None:
                sql += " LIMIT ?"
                params.append(q.limit + 1)
            rows = conn.execute(sql, params).fetchall()
            more = q.limit is not None and len(rows) > q.limit
            return [r[0] for r in reversed(rows[: q.limit])], more

        return await self._on(self._reader, run)

    async def count(self) -> int:
        def run() -> int:
            assert self._rconn is not None, "journal is not open"
            return int(self._rconn.execute("SELECT count(*) FROM journal").fetchone()[0])

        return await self._on(self._reader, run)

    async def rows(self, q: JournalQuery, chunk: int = EXPORT_CHUNK) -> AsyncIterator[list[Any]]:
        """Raw rows (``COLUMNS``) that ``q`` selects, oldest first, a chunk at a time.

        An export reads one snapshot on its own connection, so a long export neither blocks
        queries nor sees events appended while it runs."""
        loop = asyncio.get_running_loop()
        sql, params = q.sql(newest_first=False)
        if q.limit is not None:
            sql += " LIMIT ?"
            params.append(q.limit)
        # One thread for this export: a sqlite3 connection is used by one thread at a time.
        with ThreadPoolExecutor(1, thread_name_prefix="journal-export") as pool:
            conn = await loop.run_in_executor(pool, self._connect)
            try:
                cursor = await loop.run_in_executor(pool, conn.execute, sql, params)
                while rows := await loop.run_in_executor(pool, cursor.fetchmany, chunk):
                    yield rows
            finally:
                await loop.run_in_executor(pool, conn.close)


async def device_command(
    journal: JournalSink,
    origin: Origin,
    driver: DeviceDriver,
    name: str,
    args: Mapping[str, Any],
    *,
    at: float | None = None,
    request_id: str | None = None,
) -> list[tuple[str, Value]]:
    """A device command from REST, OSC or MQTT: executed by its driver and journalled as
    ``device.{name}`` on the device, with ``origin`` — durable before the caller hears back.
    ``at`` and ``request_id``: the start time and the request id to send with it (a device
    of another node's driver takes them)."""
    return await journalled(
        journal,
        origin,
        f"device.{name}",
        (lambda: driver.command(name, args, at_wall=at, request_id=request_id))  # type: ignore[call-arg]
        if at is not None or request_id is not None
        else (lambda: driver.command(name, args)),
        targets=(driver.device.id,),
        args=args,
    )


def journal_path(store_path: Path) -> Path:
    """The journal's own file next to the telemetry store: ``var/telemetry.sqlite3`` →
    ``var/telemetry.journal.sqlite3`` (so two stores in one folder never share a journal)."""
    return store_path.with_name(f"{store_path.stem}.journal{store_path.suffix or '.sqlite3'}")


def event_with(event: JournalEvent, **changes: Any) -> JournalEvent:
    return replace(event, **changes)


def _migrate_from_1(conn: sqlite3.Connection) -> None:
    """Schema 1 → 2, inside the opener's write transaction: rebuild ``journal_target`` with the
    covering columns from ``journal`` (its triggers go with the old table; the schema script
    that runs next recreates both). ``journal`` is not touched."""
    conn.execute("DROP TABLE journal_target")
    for statement in _split(_SCHEMA):
        conn.execute(statement)
    # In key order: the B-tree is built by appending, not by inserts spread over the file.
    conn.execute(_FILL_TARGETS + " ORDER BY t.value, j.ts, j.seq")


def _split(script: str) -> Iterator[str]:
    """Statements of a schema script (triggers hold ';' inside BEGIN … END)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf.strip()
            buf = ""


# --- export ----------------------------------------------------------------------------------

ExportFormat = Literal["csv", "parquet"]


async def export_csv(journal: JournalStore, q: JournalQuery) -> AsyncIterator[bytes]:
    """CSV (RFC 4180, UTF-8, a header row): ``targets`` and ``args`` are JSON text, times are
    epoch seconds, empty fields are nulls."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    async for rows in journal.rows(q):
        writer.writerows(rows)
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode()


class ChunkDrain(io.RawIOBase):
    """A write-only file that hands what was written to whoever drains it (Parquet streaming)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._chunks.append(data)
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def drain(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def parquet_schema() -> Any:
    import pyarrow as pa  # lazily: ~0.3 s to import

    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            ("seq", pa.int64()),
            ("ts", ts),
            ("executed", ts),
            ("duration_s", pa.float64()),
            ("source_kind", pa.string()),
            ("source", pa.string()),
            ("command", pa.string()),
            ("cue_list", pa.string()),
            ("cue", pa.string()),
            ("targets", pa.list_(pa.string())),
            ("result", pa.string()),
            ("reason", pa.string()),
            ("args", pa.string()),
        ]
    )


async def export_parquet(journal: JournalStore, q: JournalQuery) -> AsyncIterator[bytes]:
    """Parquet (zstd), one row group per chunk: times are UTC timestamps (µs), ``targets`` a
    list of strings, ``args`` JSON text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    sink = ChunkDrain()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    loop = asyncio.get_running_loop()

    def write(rows: list[Any]) -> bytes:  # in a worker thread: the loop keeps running
        cols = list(zip(*rows, strict=True))
        to_us = [[None if v is None else round(v * 1_000_000) for v in cols[i]] for i in (1, 2)]
        table = pa.table(
            [
                pa.array(cols[0], pa.int64()),
                pa.array(to_us[0], pa.int64()).cast(schema.field("ts").type),
                pa.array(to_us[1], pa.int64()).cast(schema.field("executed").type),
                pa.array(cols[3], pa.float64()),
                *(pa.array(cols[i], pa.string()) for i in (4, 5, 6, 7, 8)),
                pa.array([json.loads(t) for t in cols[9]], pa.list_(pa.string())),
                *(pa.array(cols[i], pa.string()) for i in (10, 11, 12)),
            ],
            schema=schema,
        )
        writer.write_table(table)
        return sink.drain()

    try:
        async for rows in journal.rows(q, chunk=50_000):
            if data := await loop.run_in_executor(None, write, rows):
                yield data
    finally:
        with contextlib.suppress(Exception):
            writer.close()
    if data := sink.drain():
        yield data
