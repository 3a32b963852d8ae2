"""Embedded telemetry store: SQLite in WAL mode, written in batches from a dedicated thread.

SQLite calls block, so the store owns threads: one writer (a single connection, so writes
never contend), one reader (WAL lets it read while the writer commits) and, with maintenance on,
one that runs WAL checkpoints (PASSIVE, never inside a writer's commit). The event loop only
awaits them. ``synchronous=NORMAL`` in WAL mode keeps every committed batch across a crash of
the process (kill -9); only a power loss can take the last transactions, which is the usual
trade for an edge box (docs/decisions.md). :meth:`TelemetryStore.write` returns only once its
batch is committed: an acknowledged reading is a durable reading.

**Schema 2** (docs/telemetry.md, "Embedded store"). ``series`` names each (device, point) once.
A batch goes to ``inbox``, an unindexed table appended in arrival order: cheap and sequential.
Every ``rollup_interval_s`` the **compaction** moves the inbox's rows into ``readings`` (WITHOUT
ROWID, key (series, ts)) sorted by series, and folds them into the rollup tiers ``rollup_1s``
and ``rollup_1m`` (keyed by (series, bucket start); min / max / sum / count / last per bucket,
mean is sum / count), a chunk of whole series (``flush_chunk`` rows) a transaction, then drops
them from the inbox in chunks, so a write waits behind one chunk at most.

Why: 8 000 interleaved points put each row of a batch on a different page of a series-keyed
B-tree, and every dirty page goes whole to the WAL at each commit; a unique (series, ts) index
written in 2 000-row batches fell to 19 000-48 000 rows/s once the store held 200 rows a series
(measured). Compacting every few seconds writes one page per series per compaction instead of
one per reading; the rollups come from the same sorted rows in Python (SQLite's ``GROUP BY``
sorter cost ~3 µs a row here, more than the insert), and a reading that comes late is merged
into its old bucket like any other (a "closed buckets by time" pass would miss it).

- Raw queries read ``readings`` and the inbox rows of their series (one scan of a few seconds
  of readings): a reading is queryable as soon as ``write`` returns. Rollup tiers lag by at
  most one compaction.
- Duplicates (same series and ts) are refused at compaction, the first stored winning; the
  inbox readers show the first only.
- **Crash-safe**: each compaction transaction records in ``meta`` the inbox rowid its flush
  covers and the last series it did. The next open compacts what is left in the inbox except
  those rows, before any write: after ``kill -9`` rollups are complete and nothing is counted
  twice.

Rollups count readings with a number (int, float, bool as 0/1) whose quality is not ``bad``;
strings and missing values are kept raw only.

**Retention** per tier (raw, 1 s, 1 min) is pruned by the maintenance task every
``prune_interval_s`` per series by key range, at most ``prune_chunk`` rows a transaction, so
writers queue behind a prune for a few milliseconds at most. Raw rows are compacted (rolled
up) before they can be pruned.

**Bad input** (docs/telemetry.md, "Embedded store"): every reading is checked on the writer
thread before it is written; what cannot be stored is dropped and counted per reason in
``rejected``; what is stored altered is counted in ``flagged``. Nothing in a reading can make
the writer raise.

Queries (:class:`TelemetryQuery`) read raw or a tier, ``auto`` picking the finest that answers
in at most ~``max_points`` per point (re-aggregating a tier into wider steps when needed).
Exports (CSV, Parquet) read one snapshot on a connection of their own, streamed in chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import heapq
import io
import itertools
import logging
import math
import operator
import re
import sqlite3
import threading
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from drivers.model import Device, Quality, Reading, ValueType
from edge.journal import ChunkDrain  # the Parquet streaming sink both exports use

if TYPE_CHECKING:
    from edge.config import TelemetryConfig

log = logging.getLogger(__name__)

R = TypeVar("R")
SCHEMA_VERSION = 2
_QUALITY_CODE = {Quality.GOOD: 0, Quality.STALE: 1, Quality.BAD: 2}
_QUALITY_OF = {v: k for k, v in _QUALITY_CODE.items()}
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
STRING_MAX = 1024  # characters of a string value
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # SQLite's INTEGER

# Bad-input reasons (docs/telemetry.md). Rejected: not stored.
MALFORMED = "malformed"  # not a reading: a field is missing or of an unusable kind
BAD_NAME = "bad_name"  # device or point not 1-200 characters without control characters
BAD_TIMESTAMP = "bad_timestamp"  # ts_wall not a finite number of epoch seconds > 0
FUTURE = "future"  # more than future_tolerance_s ahead of this machine's clock
TOO_OLD = "too_old"  # older than the raw retention: it would be pruned at once
WRONG_TYPE = "wrong_type"  # the value does not fit the point's dtype (or is no scalar)
TOO_LONG = "too_long"  # a string value of more than STRING_MAX characters
BAD_QUALITY = "bad_quality"  # quality is not a Quality
DUPLICATE = "duplicate"  # a reading of this (device, point) at this ts is already stored
# Flagged: stored altered.
NON_FINITE = "non_finite"  # NaN or ±inf: stored with no value and quality bad

_ANY, _FLOAT, _INT, _BOOL = 0, 1, 2, 3
_KIND = {ValueType.FLOAT: _FLOAT, ValueType.INT: _INT, ValueType.BOOL: _BOOL}

TIERS = ("1s", "1m")
TIER_WIDTH = {"1s": 1, "1m": 60}
# ``auto`` steps: the smallest that keeps a query at most ~max_points a point.
STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
DAY = 86400
TS_MAX = 4_102_444_800.0  # 2100-01-01: later query bounds are absurd
SPAN_MAX_S = 3660 * DAY  # ten years and some
LIMIT_MAX = 100_000
POINTS_MAX = 100
EXPORT_CHUNK = 20_000

Resolution = Literal["raw", "1s", "1m", "auto"]
Agg = Literal["mean", "min", "max", "last"]
ExportFormat = Literal["csv", "parquet"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    point TEXT NOT NULL,
    UNIQUE (device, point)
);
CREATE TABLE IF NOT EXISTS readings (
    series INTEGER NOT NULL,
    ts REAL NOT NULL,
    value,
    quality INTEGER NOT NULL,
    PRIMARY KEY (series, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox (
    series INTEGER NOT NULL,
    ts REAL NOT NULL,
    value,
    quality INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""
_TIER_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollup_{tier} (
    series INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    vmin REAL NOT NULL,
    vmax REAL NOT NULL,
    vsum REAL NOT NULL,
    n INTEGER NOT NULL,
    last_ts REAL NOT NULL,
    vlast REAL NOT NULL,
    PRIMARY KEY (series, bucket)
) WITHOUT ROWID;
"""
_MERGE = """
ON CONFLICT (series, bucket) DO UPDATE SET
    vmin = min(vmin, excluded.vmin),
    vmax = max(vmax, excluded.vmax),
    vsum = vsum + excluded.vsum,
    n = n + excluded.n,
    vlast = CASE WHEN excluded.last_ts >= last_ts THEN excluded.vlast ELSE vlast END,
    last_ts = max(last_ts, excluded.last_ts)
"""
_UPSERT = "INSERT INTO rollup_{tier} VALUES (?, ?, ?, ?, ?, ?, ?, ?) " + _MERGE
_Row = tuple[int, float, Any, int]  # series, ts, value, quality
# A reading as the writer checks it: (device, point, value, ts_wall, quality).
Wire = tuple[Any, Any, Any, Any, Any]
_WIRE = operator.attrgetter("device", "point", "value", "ts_wall", "quality")
_FIELDS = tuple(map(operator.attrgetter, ("device", "point", "value", "ts_wall", "quality")))
# A batch as ``to_wire`` makes it: five columns (lists of the readings' fields, made in C,
# with no object a reading: the service's heap, and its collector, see five lists, not a
# tuple a reading), or, when an item is not a reading, one ``Wire`` (or None) an item.
Columns = tuple[list[Any], list[Any], list[Any], list[Any], list[Any]]
WireBatch = Columns | list[Wire | None]
_TS = operator.itemgetter(1)
_TS0 = operator.itemgetter(0)
# A partial aggregate: [min, max, sum, count, last_ts, last].
_Part = list[Any]
_Parts = dict[tuple[int, int], _Part]


def to_wire(readings: Sequence[Reading]) -> WireBatch:
    """``readings`` as a ``WireBatch``: what the writer checks, and what a store in another
    process is sent (it pickles cheaply). An item that is not a reading becomes None, which
    the writer counts ``malformed``."""
    try:
        d, p, v, t, q = _FIELDS
        return (
            list(map(d, readings)),
            list(map(p, readings)),
            list(map(v, readings)),
            list(map(t, readings)),
            list(map(q, readings)),
        )
    except Exception:  # something in the batch is not a reading: item by item
        out: list[Wire | None] = []
        for r in readings:
            try:
                out.append(_WIRE(r))
            except Exception:
                out.append(None)
        return out


def wire_rows(batch: WireBatch) -> Iterable[Wire | None]:
    """The ``Wire`` rows of ``batch``, one an item."""
    return zip(*batch, strict=False) if isinstance(batch, tuple) else batch  # equal, checked


def _merge(into: _Parts, key: tuple[int, int], p: Sequence[Any]) -> None:
    """Fold partial ``p`` into ``into[key]``, as the SQL upsert ``_MERGE`` does."""
    a = into.get(key)
    if a is None:
        into[key] = list(p)
        return
    if p[0] < a[0]:
        a[0] = p[0]
    if p[1] > a[1]:
        a[1] = p[1]
    a[2] += p[2]
    a[3] += p[3]
    if p[4] >= a[4]:
        a[4] = p[4]
        a[5] = p[5]


class QueryError(ValueError):
    """A telemetry query that cannot be run; the message says which parameter and why."""


@dataclass(frozen=True, slots=True)
class StoredReading:
    device: str
    point: str
    ts: float
    value: float | int | str | None
    quality: Quality


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """How the store keeps and checks readings. ``None`` retention keeps a tier for ever."""

    raw_retention_s: float | None = None
    retention_1s_s: float | None = None
    retention_1m_s: float | None = None
    rollup_interval_s: float = 5.0  # compaction into readings and the tiers
    prune_interval_s: float = 60.0
    prune_chunk: int = 20_000  # rows a prune transaction deletes at most
    rollup_pass_max: int = 400_000  # inbox rows a recovery pass holds in memory at most
    flush_chunk: int = 5_000  # rows a compaction transaction moves (whole series)
    future_tolerance_s: float = 300.0  # a reading this far ahead of the clock is refused
    checkpoint_interval_s: float = 1.0  # WAL checkpoints, off the writer's thread

    def __post_init__(self) -> None:
        for name in ("raw_retention_s", "retention_1s_s", "retention_1m_s"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds or None")
        for name in (
            "rollup_interval_s",
            "prune_interval_s",
            "future_tolerance_s",
            "checkpoint_interval_s",
        ):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds")
        for name in ("prune_chunk", "rollup_pass_max", "flush_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    @classmethod
    def from_config(cls, cfg: TelemetryConfig) -> StoreSettings:
        def days(v: float | None) -> float | None:
            return None if v is None else v * DAY

        return cls(
            raw_retention_s=days(cfg.retention_days),
            retention_1s_s=days(cfg.retention_1s_days),
            retention_1m_s=days(cfg.retention_1m_days),
            rollup_interval_s=cfg.rollup_interval_s,
            prune_interval_s=cfg.prune_interval_s,
            prune_chunk=cfg.prune_chunk,
            future_tolerance_s=cfg.future_tolerance_s,
        )

    def retention(self, tier: str) -> float | None:
        return {
            "raw": self.raw_retention_s,
            "1s": self.retention_1s_s,
            "1m": self.retention_1m_s,
        }[tier]


def point_types(devices: Iterable[Device]) -> dict[tuple[str, str], ValueType]:
    """Every (device, point) of ``devices`` with its dtype: what the store checks values by."""
    return {(d.id, p.name): p.dtype for d in devices for p in d.profile.points.values()}


# --- queries ---------------------------------------------------------------------------------


def _finite_time(name: str, v: object) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return f"{name} must be a finite number of epoch seconds"
    if not 0 <= v <= TS_MAX:
        return f"{name} must be between 1970 and 2100"
    return None


def parse_time(name: str, text: str | None, default: float) -> float:
    """Epoch seconds from a number or an ISO 8601 time with a zone (``None``: ``default``);
    a :class:`QueryError` naming ``name`` otherwise. The API's and the CLI's ``from`` / ``to``."""
    if text is None:
        return default
    try:
        v = float(text)
    except ValueError:
        v = _iso(name, text)
    if not math.isfinite(v):
        raise QueryError(f"{name} must be a finite number of epoch seconds")
    return v


def _iso(name: str, text: str) -> float:
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(f"{name}: not epoch seconds nor an ISO 8601 time") from None
    if t.tzinfo is None:
        raise QueryError(f"{name}: an ISO 8601 time needs a zone (Z or +hh:mm)")
    return t.timestamp()


@dataclass(frozen=True, slots=True)
class TelemetryQuery:
    """Readings of one device's points (all it has in the store if ``points`` is empty) with
    ``start <= ts <= end`` (epoch s). ``resolution`` raw, a tier, or ``auto`` (the finest that
    keeps each point at most ~``max_points``); ``agg`` picks the rollup value; ``limit`` caps
    each point's rows (the latest are kept)."""

    device: str
    start: float
    end: float
    points: tuple[str, ...] = ()
    resolution: Resolution = "auto"
    agg: Agg = "mean"
    max_points: int = 1000
    limit: int = 10_000

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.device, str) or not _NAME.fullmatch(self.device):
            problems.append("device must be 1 to 200 characters without control characters")
        if not isinstance(self.points, tuple) or not all(
            isinstance(p, str) and _NAME.fullmatch(p) for p in self.points
        ):
            problems.append("every point must be 1 to 200 characters without control characters")
        elif len(self.points) > POINTS_MAX:
            problems.append(f"at most {POINTS_MAX} points a query")
        elif len(set(self.points)) != len(self.points):
            problems.append("a point is named twice")
        times = [p for p in (_finite_time("from", self.start), _finite_time("to", self.end)) if p]
        problems += times
        if not times:
            if self.start > self.end:
                problems.append("from is after to")
            elif self.end - self.start > SPAN_MAX_S:
                problems.append(f"the span is longer than {SPAN_MAX_S // DAY} days")
        if self.resolution not in ("raw", "1s", "1m", "auto"):
            problems.append("resolution must be raw, 1s, 1m or auto")
        if self.agg not in ("mean", "min", "max", "last"):
            problems.append("agg must be mean, min, max or last")
        for name in ("max_points", "limit"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= LIMIT_MAX:
                problems.append(f"{name} must be a whole number from 1 to {LIMIT_MAX}")
        if problems:
            raise QueryError("; ".join(problems))


@dataclass(slots=True)
class SeriesResult:
    point: str
    ts: list[float] = field(default_factory=list)
    values: list[float | int | str | None] = field(default_factory=list)
    quality: list[str] | None = None  # raw only
    count: list[int] | None = None  # rollups only: readings in each step
    truncated: bool = False  # more rows matched than ``limit``: the latest are kept


@dataclass(slots=True)
class QueryResult:
    device: str
    resolution: str  # what was read: raw, 1s or 1m
    step_s: int | None  # the width of a returned bucket (None: raw)
    agg: str | None  # None: raw
    series: list[SeriesResult]

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "resolution": self.resolution,
            "step_s": self.step_s,
            "agg": self.agg,
            "series": [
                {
                    "point": s.point,
                    "ts": s.ts,
                    "values": s.values,
                    **({"quality": s.quality} if s.quality is not None else {}),
                    **({"count": s.count} if s.count is not None else {}),
                    "truncated": s.truncated,
                }
                for s in self.series
            ],
        }


@dataclass(frozen=True, slots=True)
class _Plan:
    tier: str  # raw, 1s, 1m
    step: int | None


def _series_of(conn: sqlite3.Connection, q: TelemetryQuery) -> list[tuple[int | None, str]]:
    rows = dict(
        conn.execute("SELECT point, id FROM series WHERE device = ? ORDER BY point", (q.device,))
    )
    if not q.points:
        return [(sid, p) for p, sid in rows.items()]
    return [(rows.get(p), p) for p in q.points]


def _plan(conn: sqlite3.Connection, q: TelemetryQuery, sids: Sequence[int | None]) -> _Plan:
    if q.resolution == "raw":
        return _Plan("raw", None)
    if q.resolution != "auto":
        return _Plan(q.resolution, TIER_WIDTH[q.resolution])
    # Raw if every point has at most max_points readings in the range (counted up to that).
    fits = all(
        conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM readings WHERE series = ? AND ts >= ? "
            "AND ts <= ? LIMIT ?)",
            (sid, q.start, q.end, q.max_points + 1),
        ).fetchone()[0]
        <= q.max_points
        for sid in sids
        if sid is not None
    )
    if fits:
        return _Plan("raw", None)
    want = (q.end - q.start) / q.max_points
    step = next((s for s in STEPS if s >= want), None)
    if step is None:  # wider than the ladder: whole days
        step = math.ceil(want / DAY) * DAY
    return _Plan("1m" if step >= 60 else "1s", step)


def _rollup_sql(tier: str, step: int, newest_first: bool) -> str:
    """Rows (bucket, min, max, mean, last, count) of one series' ``tier`` in [?, ?], in
    ``step``-wide buckets. Parameters: series, from, to."""
    order = "DESC" if newest_first else "ASC"
    if step == TIER_WIDTH[tier]:
        return (
            f"SELECT bucket, vmin, vmax, vsum / n, vlast, n FROM rollup_{tier} "
            f"WHERE series = ?1 AND bucket >= ?2 AND bucket <= ?3 ORDER BY bucket {order}"
        )
    # Wider steps: the last value is the one with the latest last_ts of the step.
    return (
        f"SELECT g.b, g.vmin, g.vmax, g.mean, (SELECT x.vlast FROM rollup_{tier} x "
        f"WHERE x.series = ?1 AND x.bucket >= g.b AND x.bucket < g.b + {step} "
        f"ORDER BY x.last_ts DESC LIMIT 1), g.n FROM ("
        f"SELECT (bucket / {step}) * {step} AS b, min(vmin) AS vmin, max(vmax) AS vmax, "
        f"total(vsum) / sum(n) AS mean, sum(n) AS n FROM rollup_{tier} "
        f"WHERE series = ?1 AND bucket >= ?2 AND bucket <= ?3 GROUP BY b) g ORDER BY g.b {order}"
    )


_RAW_SQL = (
    "SELECT ts, value, quality FROM readings WHERE series = ?1 AND ts >= ?2 AND ts <= ?3 "
    "ORDER BY ts {order}"
)
_AGG_COLUMN = {"min": 1, "max": 2, "mean": 3, "last": 4}


def _bucket_floor(t: float, step: int) -> int:
    return int(t // step) * step


_RawRow = tuple[float, Any, int]  # ts, value, quality


def _inbox(
    conn: sqlite3.Connection, sids: Sequence[int], start: float, end: float
) -> dict[int, list[_RawRow]]:
    """The inbox rows (not yet compacted, or compacted but not yet dropped) of ``sids`` in
    [start, end], by series, in time order, the first of equal timestamps only. One scan of
    the inbox: it holds at most a few flush intervals of readings."""
    out: dict[int, list[_RawRow]] = {}
    if not sids:
        return out
    marks = ",".join("?" * len(sids))
    for sid, ts, v, q in conn.execute(
        f"SELECT series, ts, value, quality FROM inbox WHERE series IN ({marks}) "
        "AND ts >= ? AND ts <= ? ORDER BY rowid",
        (*sids, start, end),
    ):
        out.setdefault(sid, []).append((ts, v, q))
    for sid, rows in out.items():
        rows.sort(key=_TS0)  # stable: the first to arrive of equal timestamps stays first
        out[sid] = [r for i, r in enumerate(rows) if i == 0 or r[0] != rows[i - 1][0]]
    return out


def _merge_rows(stored: Iterable[_RawRow], inbox: list[_RawRow]) -> Iterator[_RawRow]:
    """Compacted rows and inbox rows of one series, both in time order, merged; of equal
    timestamps the compacted row (stored first) wins."""
    prev = math.nan
    for r in heapq.merge(stored, inbox, key=_TS0):
        if r[0] != prev:
            prev = r[0]
            yield r


def _raw_rows(
    conn: sqlite3.Connection,
    sid: int,
    start: float,
    end: float,
    limit: int,
    inbox: list[_RawRow],
) -> tuple[list[_RawRow], bool]:
    """The latest ``limit`` raw rows of a series in [start, end], oldest first, and whether
    more matched."""
    rows = conn.execute(
        _RAW_SQL.format(order="DESC") + " LIMIT ?4", (sid, start, end, limit + 1)
    ).fetchall()
    rows.reverse()
    merged = list(_merge_rows(rows, inbox)) if inbox else rows
    return merged[-limit:], len(merged) > limit


InboxOf = Callable[[sqlite3.Connection, list[int], float, float], dict[int, list[_RawRow]]]


def run_query(
    conn: sqlite3.Connection, q: TelemetryQuery, inbox_of: InboxOf | None = None
) -> QueryResult:
    """``q`` on ``conn`` (any thread that owns it). ``inbox_of``: where the inbox rows of the
    raw tier come from (default: a scan of the inbox table, ``_inbox``)."""
    series = _series_of(conn, q)
    plan = _plan(conn, q, [sid for sid, _ in series])
    known = [sid for sid, _ in series if sid is not None]
    inbox = (inbox_of or _inbox)(conn, known, q.start, q.end) if plan.tier == "raw" else {}
    out: list[SeriesResult] = []
    for sid, point in series:
        res = SeriesResult(point)
        out.append(res)
        if plan.tier == "raw":
            res.quality = []
            if sid is None:
                continue
            rows, res.truncated = _raw_rows(conn, sid, q.start, q.end, q.limit, inbox.get(sid, []))
            res.ts = [r[0] for r in rows]
            res.values = [r[1] for r in rows]
            res.quality = [_QUALITY_OF[r[2]].value for r in rows]
            continue
        res.count = []
        if sid is None:
            continue
        assert plan.step is not None
        sql = _rollup_sql(plan.tier, plan.step, newest_first=True) + " LIMIT ?4"
        lo = _bucket_floor(q.start, plan.step)
        buckets = conn.execute(sql, (sid, lo, q.end, q.limit + 1)).fetchall()
        res.truncated = len(buckets) > q.limit
        buckets = buckets[: q.limit]
        buckets.reverse()
        col = _AGG_COLUMN[q.agg]
        res.ts = [float(r[0]) for r in buckets]
        res.values = [r[col] for r in buckets]
        res.count = [r[5] for r in buckets]
    raw = plan.tier == "raw"
    return QueryResult(q.device, plan.tier, plan.step, None if raw else q.agg, out)


RAW_COLUMNS = ("device", "point", "ts", "value", "quality")
ROLLUP_COLUMNS = ("device", "point", "ts", "min", "max", "mean", "last", "count")


def export_rows(
    conn: sqlite3.Connection, q: TelemetryQuery, chunk: int = EXPORT_CHUNK
) -> tuple[tuple[str, ...], Iterator[list[tuple[Any, ...]]]]:
    """The columns of ``q``'s export and its rows, oldest first, point by point, in chunks
    (``limit`` does not apply: an export has every row). Reads one snapshot of ``conn``."""
    series = _series_of(conn, q)
    plan = _plan(conn, q, [sid for sid, _ in series])
    columns = RAW_COLUMNS if plan.tier == "raw" else ROLLUP_COLUMNS

    def rows() -> Iterator[list[tuple[Any, ...]]]:
        conn.execute("BEGIN")  # one snapshot for the whole export
        try:
            known = [sid for sid, _ in series if sid is not None]
            inbox = _inbox(conn, known, q.start, q.end) if plan.tier == "raw" else {}
            for sid, point in series:
                if sid is None:
                    continue
                if plan.tier == "raw":
                    cur = conn.execute(_RAW_SQL.format(order="ASC"), (sid, q.start, q.end))
                    merged = _merge_rows(cur, inbox.get(sid, []))
                    while batch := list(itertools.islice(merged, chunk)):
                        yield [(q.device, point, t, v, _QUALITY_OF[qc].value) for t, v, qc in batch]
                else:
                    assert plan.step is not None
                    lo = _bucket_floor(q.start, plan.step)
                    sql = _rollup_sql(plan.tier, plan.step, newest_first=False)
                    cur = conn.execute(sql, (sid, lo, q.end))
                    while batch := cur.fetchmany(chunk):
                        yield [(q.device, point, float(r[0]), *r[1:]) for r in batch]
        finally:
            conn.execute("COMMIT")

    return columns, rows()


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit). ``readonly``: the file
    must exist and be of this schema (the CLI's export of a store a service may be writing)."""
    if readonly:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no telemetry store")
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
        conn.isolation_level = None
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA cache_size=-32768")  # 32 MB: the key index takes scattered inserts
    if readonly:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            conn.close()
            raise RuntimeError(
                f"{path}: store schema {version}, this Flytower reads {SCHEMA_VERSION} "
                "(start the service on it once to migrate it)"
            )
    return conn


class TelemetryStore:
    """Durable readings. Use as ``async with TelemetryStore(path) as store``.

    ``dtypes`` (see :func:`point_types`) lets the store refuse a value that does not fit its
    point; points it does not name take any scalar. ``maintain`` runs rollups and pruning in a
    background task while the store is open (tests drive them by hand with it off)."""

    def __init__(
        self,
        path: Path,
        settings: StoreSettings | None = None,
        *,
        dtypes: Mapping[tuple[str, str], ValueType] | None = None,
        maintain: bool = True,
    ) -> None:
        self.path = path
        self.settings = settings or StoreSettings()
        self._dtypes = dict(dtypes or {})
        self._maintain = maintain
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="store-reader")
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="store-checkpoint")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._cconn: sqlite3.Connection | None = None
        self._series: dict[tuple[str, str], tuple[int, int]] = {}
        # Rows in the inbox not yet compacted, by series, and the newest inbox rowid they
        # cover (writer thread only).
        self._pending: dict[int, list[_Row]] = {}
        self._top = 0
        # The inbox's uncompacted rows, in memory (``_view``): ``_pending`` and the rows a
        # running flush has taken but not yet committed to ``readings`` (writer thread writes,
        # the reader reads under ``_view_lock``). A raw query reads them here instead of
        # scanning the inbox table, which holds a few seconds of every series (400 000 rows
        # at 80 000 readings/s; bench_ingest: the probes' scans took a quarter of the CPU).
        self._in_flight: dict[int, list[_Row]] = {}
        self._view_lock = threading.Lock()
        self._last_ts: dict[int, float] = {}  # the newest compacted ts of a series
        self._flush_lock = asyncio.Lock()
        self._flushes: set[asyncio.Task[int]] = set()
        self._task: asyncio.Task[None] | None = None
        self.written = 0  # readings stored this run
        self.rejected: dict[str, int] = {}  # readings dropped this run, per reason
        self.flagged: dict[str, int] = {}  # readings stored altered this run, per reason
        self.rolled_up = 0  # raw rows rolled up this run
        self.pruned: dict[str, int] = {"raw": 0, "1s": 0, "1m": 0}  # rows pruned this run

    async def __aenter__(self) -> TelemetryStore:
        try:
            await self._on(self._writer, self._open_writer)
            await self._on(self._reader, self._open_reader)
            if self._maintain:
                await self._on(self._checkpointer, self._open_checkpointer)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        if self._maintain:
            self._task = asyncio.create_task(self._maintenance(), name="store-maintenance")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # A flush the cancelled task was waiting for goes on: let it finish, then the last.
        await asyncio.gather(*self._flushes, return_exceptions=True)
        if self._wconn is not None:
            with contextlib.suppress(Exception):  # rollups complete at close, when possible
                await self.rollup()
        await self._on(self._checkpointer, self._close_conn, "_cconn")
        await self._on(self._writer, self._close_conn, "_wconn")
        await self._on(self._reader, self._close_conn, "_rconn")
        for pool in (self._writer, self._reader, self._checkpointer):
            pool.shutdown(wait=True)

    async def _on(self, pool: ThreadPoolExecutor, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    # --- writer thread ---------------------------------------------------------------------

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path)
        # Check the version before changing anything: a newer store is left exactly as it is.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            conn.close()
            raise RuntimeError(
                f"{self.path}: store schema {version} is newer than this "
                f"Flytower ({SCHEMA_VERSION}); refusing to touch it"
            )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version == 1:
                _migrate_from_1(conn)
                log.warning("%s: telemetry store migrated to schema %d", self.path, SCHEMA_VERSION)
            for statement in _statements():
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a refused COMMIT (a full disk) rolled back already
                conn.execute("ROLLBACK")
            conn.close()
            raise
        for sid, d, p in conn.execute("SELECT id, device, point FROM series"):
            self._series[(d, p)] = (sid, self._kind((d, p)))
        self._wconn = conn
        try:
            self._recover()
        except BaseException:
            self._wconn = None
            conn.close()
            raise

    def _meta(self, key: str, default: int) -> int:
        assert self._wconn is not None
        row = self._wconn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def _recover(self) -> None:
        """Compact what a crashed run left in the inbox (everything but the rows its last
        flush had already compacted), ``rollup_pass_max`` rows at a time, before any write."""
        conn = self._wconn
        assert conn is not None
        done_top, done_series = self._meta("flush_top", 0), self._meta("flush_series", -1)
        top = int(conn.execute("SELECT max(rowid) FROM inbox").fetchone()[0] or 0)
        lo = 0
        if top:
            log.info("%s: compacting the inbox (%d rows at most)", self.path, top)
        while lo < top:
            hi = min(top, lo + self.settings.rollup_pass_max)
            self._pending = {}
            for rowid, *row in conn.execute(
                "SELECT rowid, series, ts, value, quality FROM inbox "
                "WHERE rowid > ? AND rowid <= ? ORDER BY rowid",
                (lo, hi),
            ):
                if rowid <= done_top and row[0] <= done_series:
                    continue  # compacted before the crash
                self._pending.setdefault(row[0], []).append(tuple(row))
            for chunk in self._take(hi)[0]:
                self._compact_chunk(chunk, hi)
            self._finish_flush(hi)
            lo = hi
        self._pending, self._top, self._in_flight = {}, 0, {}

    def _open_reader(self) -> None:
        self._rconn = connect(self.path)

    def _open_checkpointer(self) -> None:
        # With maintenance on, WAL checkpoints run here, not in the writer's commits: copying
        # pages back into the database (and its fsync) no longer stalls a batch. PASSIVE
        # checkpoints never wait for, nor block, the writer or the readers.
        assert self._wconn is not None
        self._wconn.execute("PRAGMA wal_autocheckpoint=0")
        self._cconn = connect(self.path)

    def _checkpoint(self) -> None:
        if self._cconn is not None:
            self._cconn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _close_conn(self, attr: str) -> None:
        conn = getattr(self, attr)
        if conn is not None:
            conn.close()
            setattr(self, attr, None)

    def _new_series(self, conn: sqlite3.Connection, key: tuple[str, str]) -> tuple[int, int]:
        cur = conn.execute("INSERT INTO series (device, point) VALUES (?, ?)", key)
        assert cur.lastrowid is not None
        entry = self._series[key] = (cur.lastrowid, self._kind(key))
        return entry

    def _kind(self, key: tuple[str, str]) -> int:
        dtype = self._dtypes.get(key)
        return _ANY if dtype is None else _KIND[dtype]

    def _count(self, reason: str, into: dict[str, int] | None = None) -> None:
        counts = self.rejected if into is None else into
        counts[reason] = counts.get(reason, 0) + 1

    def _check(
        self, conn: sqlite3.Connection, readings: Iterable[Wire | None], lo: float, hi: float
    ) -> list[_Row]:
        """The rows to insert for ``readings``; what cannot be stored is counted, not raised.
        Runs inside the write transaction (a new series is inserted with its first row)."""
        rows: list[_Row] = []
        series = self._series
        for r in readings:
            try:
                device, point, v, ts, quality = r  # type: ignore[misc]  # None: malformed
                if type(ts) is not float:
                    if isinstance(ts, bool) or not isinstance(ts, int | float):
                        self._count(BAD_TIMESTAMP)
                        continue
                    ts = float(ts)
                if not lo < ts <= hi:
                    if ts != ts or ts <= 0 or ts == math.inf:
                        self._count(BAD_TIMESTAMP)
                    else:
                        self._count(FUTURE if ts > hi else TOO_OLD)
                    continue
                key = (device, point)
                entry = series.get(key)
                if entry is None:
                    if not all(type(k) is str and _NAME.fullmatch(k) for k in key):
                        self._count(BAD_NAME)
                        continue
                    entry = self._new_series(conn, key)
                sid, kind = entry
                q = _QUALITY_CODE.get(quality)
                if q is None:
                    self._count(BAD_QUALITY)
                    continue
                if v is None:
                    pass
                elif isinstance(v, bool):
                    if kind in (_FLOAT, _INT):
                        self._count(WRONG_TYPE)
                        continue
                    v = int(v)
                elif isinstance(v, int):
                    if kind == _FLOAT:
                        v = float(v)
                    elif (kind == _BOOL and v not in (0, 1)) or not INT_MIN <= v <= INT_MAX:
                        self._count(WRONG_TYPE)
                        continue
                    else:
                        v = int(v)
                elif isinstance(v, float):
                    v = float(v)
                    if v - v != 0.0:  # NaN or ±inf: kept as a bad reading with no value
                        v, q = None, 2
                        self._count(NON_FINITE, self.flagged)
                    elif kind == _INT and v.is_integer() and INT_MIN <= v <= INT_MAX:
                        v = int(v)
                    elif kind in (_INT, _BOOL):
                        self._count(WRONG_TYPE)
                        continue
                elif isinstance(v, str):
                    if kind != _ANY:
                        self._count(WRONG_TYPE)
                        continue
                    if len(v) > STRING_MAX:
                        self._count(TOO_LONG)
                        continue
                    v = str(v)
                else:
                    self._count(WRONG_TYPE)
                    continue
                rows.append((sid, ts, v, q))
            except Exception:  # a field missing, unhashable, or raising: not a reading
                self._count(MALFORMED)
        return rows

    def _write(self, readings: Sequence[Reading] | WireBatch, wire: bool = False) -> int:
        """Check and commit one batch of readings (``wire``: already a ``WireBatch``)."""
        checked = wire_rows(readings if wire else to_wire(readings))  # type: ignore[arg-type]
        conn = self._wconn
        assert conn is not None, "store is not open"
        s = self.settings
        now = time.time()
        lo = 0.0 if s.raw_retention_s is None else max(0.0, now - s.raw_retention_s)
        hi = now + s.future_tolerance_s
        known = len(self._series)
        conn.execute("BEGIN IMMEDIATE")  # one transaction per batch: committed, or not at all
        try:
            rows = self._check(conn, checked, lo, hi)
            conn.executemany("INSERT INTO inbox VALUES (?, ?, ?, ?)", rows)
            top = int(conn.execute("SELECT max(rowid) FROM inbox").fetchone()[0] or 0)
            conn.execute("COMMIT")  # durable from here on: only now may the caller hear back
        except BaseException:
            if conn.in_transaction:  # a refused COMMIT (a full disk) rolled back already
                conn.execute("ROLLBACK")
            # Series created in the rolled-back transaction do not exist: forget them.
            for key in list(self._series)[known:]:
                del self._series[key]
            raise
        pending = self._pending
        for row in rows:
            got = pending.get(row[0])
            if got is None:
                pending[row[0]] = [row]
            else:
                got.append(row)
        self._top = top
        self.written += len(rows)
        return len(rows)

    def _take(self, top: int | None = None) -> tuple[list[list[tuple[int, list[_Row]]]], int]:
        """The pending rows in chunks of whole series (ascending ids) of about
        ``flush_chunk`` rows, and the inbox rowid they reach; pending starts afresh."""
        with self._view_lock:
            pending, self._pending = self._pending, {}
            self._in_flight = pending
        chunks: list[list[tuple[int, list[_Row]]]] = []
        size = self.settings.flush_chunk
        current: list[tuple[int, list[_Row]]] = []
        n = 0
        for sid in sorted(pending):
            current.append((sid, pending[sid]))
            n += len(pending[sid])
            if n >= size:
                chunks.append(current)
                current, n = [], 0
        if current:
            chunks.append(current)
        return chunks, self._top if top is None else top

    def _compact_chunk(self, chunk: list[tuple[int, list[_Row]]], top: int) -> int:
        """Move one chunk of inbox rows into ``readings`` (sorted, duplicates refused: the
        first stored wins) and merge them into both rollup tiers, in one transaction that
        also records how far the flush got. Returns the rows compacted."""
        conn = self._wconn
        assert conn is not None, "store is not open"
        out: list[_Row] = []
        seconds: _Parts = {}
        lasts: dict[int, float] = {}
        dups = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sid, arrived in chunk:
                # stable: of equal timestamps the first to arrive wins (a sorted copy: the
                # reader may be reading the list, ``_view``)
                rows = sorted(arrived, key=_TS)
                last = self._last_ts.get(sid)
                if last is None:
                    got = conn.execute(
                        "SELECT max(ts) FROM readings WHERE series = ?", (sid,)
                    ).fetchone()[0]
                    last = -math.inf if got is None else got
                prev = math.nan
                for row in rows:
                    _, ts, v, q = row
                    if ts == prev or (
                        ts <= last
                        and conn.execute(
                            "SELECT 1 FROM readings WHERE series = ? AND ts = ?", (sid, ts)
                        ).fetchone()
                    ):
                        dups += 1
                        continue
                    prev = ts
                    out.append(row)
                    if q < 2 and v is not None and type(v) is not str:  # rollable
                        k = (sid, int(ts))
                        p = seconds.get(k)
                        if p is None:
                            seconds[k] = [v, v, float(v), 1, ts, v]
                        else:  # rows come in time order: this one is the last so far
                            if v < p[0]:
                                p[0] = v
                            if v > p[1]:
                                p[1] = v
                            p[2] += v
                            p[3] += 1
                            p[4] = ts
                            p[5] = v
                lasts[sid] = max(last, rows[-1][1]) if rows else last
            conn.executemany("INSERT OR IGNORE INTO readings VALUES (?, ?, ?, ?)", out)
            minutes: _Parts = {}
            for (sid, bucket), p in seconds.items():
                _merge(minutes, (sid, bucket // 60 * 60), p)
            for tier, parts in (("1s", seconds), ("1m", minutes)):
                conn.executemany(_UPSERT.format(tier=tier), [(*k, *p) for k, p in parts.items()])
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [("flush_top", top), ("flush_series", chunk[-1][0])],
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a refused COMMIT (a full disk) rolled back already
                conn.execute("ROLLBACK")
            raise
        with self._view_lock:  # in ``readings`` now
            for sid, _ in chunk:
                self._in_flight.pop(sid, None)
        self._last_ts.update(lasts)
        if dups:
            self.rejected[DUPLICATE] = self.rejected.get(DUPLICATE, 0) + dups
        self.rolled_up += len(out)
        return len(out)

    def _drop_inbox(self, top: int) -> int:
        """Drop up to ``flush_chunk`` compacted rows (rowid <= ``top``) from the inbox, the
        oldest first, in one short transaction. Returns the rows dropped."""
        conn = self._wconn
        assert conn is not None, "store is not open"
        conn.execute("BEGIN IMMEDIATE")
        try:
            n = conn.execute(
                "DELETE FROM inbox WHERE rowid <= min(?, (SELECT min(rowid) FROM inbox) + ?)",
                (top, self.settings.flush_chunk - 1),
            ).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a refused COMMIT (a full disk) rolled back already
                conn.execute("ROLLBACK")
            raise
        return int(n)

    def _finish_flush(self, top: int) -> None:
        """Every pending row is compacted: drop what is left of them from the inbox."""
        conn = self._wconn
        assert conn is not None, "store is not open"
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM inbox WHERE rowid <= ?", (top,))
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('flush_series', -1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a refused COMMIT (a full disk) rolled back already
                conn.execute("ROLLBACK")
            raise

    def _prune_step(self, tier: str, cutoff: float, after_sid: int) -> tuple[int, int | None]:
        """Delete ``tier`` rows older than ``cutoff`` for series after ``after_sid``, at most
        ``prune_chunk`` rows, in one transaction. Returns (deleted, the series to resume after,
        or None when every series is done)."""
        conn = self._wconn
        assert conn is not None, "store is not open"
        budget = self.settings.prune_chunk
        deleted = 0
        if tier == "raw":
            table, col, cut, extra = "readings", "ts", cutoff, ""
        else:
            table, col, cut, extra = f"rollup_{tier}", "bucket", math.floor(cutoff), ""
        sids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM series WHERE id > ? ORDER BY id LIMIT 500", (after_sid,)
            )
        ]
        if not sids:
            return 0, None
        conn.execute("BEGIN IMMEDIATE")
        try:
            last = after_sid
            for sid in sids:
                # The row after the budget's last: delete below it (or below the cutoff).
                nth = conn.execute(
                    f"SELECT {col} FROM {table} WHERE series = ? AND {col} < ? "
                    f"ORDER BY {col} LIMIT 1 OFFSET ?",
                    (sid, cut, budget - deleted),
                ).fetchone()
                bound = cut if nth is None else nth[0]
                deleted += conn.execute(
                    f"DELETE FROM {table} WHERE series = ? AND {col} < ?{extra}", (sid, bound)
                ).rowcount
                if nth is not None:  # this series has more: resume with it
                    break
                last = sid
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a refused COMMIT (a full disk) rolled back already
                conn.execute("ROLLBACK")
            raise
        self.pruned[tier] += deleted
        return deleted, last

    # --- public, awaited from the loop -----------------------------------------------------

    async def write(self, readings: Sequence[Reading]) -> int:
        """Commit a batch; when this returns, the readings survive a crash of the process.
        Returns how many were stored (the others are counted in ``rejected``)."""
        if not readings:
            return 0
        return await self._on(self._writer, self._write, readings)

    async def write_wire(self, batch: WireBatch) -> int:
        """``write`` of readings already made a ``WireBatch`` (``to_wire``): what a store in
        a process of its own is sent."""
        if isinstance(batch, tuple) and (len(batch) != 5 or len(set(map(len, batch))) > 1):
            raise ValueError("a batch's columns must be five of one length")
        return await self._on(self._writer, self._write, batch, True)

    async def rollup(self) -> int:
        """Compact every reading written so far from the inbox into ``readings`` and the
        rollup tiers, a chunk of series a transaction; returns the rows compacted.

        The flush runs as a task of its own, shielded: a caller cancelled half-way (the
        maintenance task at close) leaves it to finish, and ``__aexit__`` waits for it. A
        flush abandoned between chunks would leave rows that are in the inbox but no longer
        pending, which the next flush's cleanup would drop uncompacted."""
        task = asyncio.create_task(self._flush(), name="store-compaction")
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved
        return await asyncio.shield(task)

    async def _flush(self) -> int:
        async with self._flush_lock:  # one flush at a time: chunks record their progress
            chunks, top = await self._on(self._writer, self._take)
            if not chunks:
                return 0
            n = 0
            for i, chunk in enumerate(chunks):  # a transaction each: writes run between them
                try:
                    n += await self._on(self._writer, self._compact_chunk, chunk, top)
                except BaseException:
                    # Not compacted (rolled back): pending again, so the next flush takes
                    # them before its cleanup drops the inbox rows they came from.
                    await self._on(self._writer, self._restore, chunks[i:])
                    raise
            # Deleting 400 000 rows at once would stall the writer for a second: in chunks.
            while await self._on(self._writer, self._drop_inbox, top):
                pass
            await self._on(self._writer, self._finish_flush, top)
            return n

    def _restore(self, chunks: list[list[tuple[int, list[_Row]]]]) -> None:
        with self._view_lock:
            for chunk in chunks:
                for sid, rows in chunk:
                    self._pending.setdefault(sid, []).extend(rows)
                    self._in_flight.pop(sid, None)

    async def prune_tier(self, tier: str, retention_s: float) -> int:
        """Delete ``tier`` (raw, 1s, 1m) rows older than ``retention_s``, a chunk a
        transaction: writes run between the chunks. Raw rows are rolled up first."""
        if tier not in ("raw", *TIERS):
            raise ValueError(f"no tier '{tier}'")
        if not (math.isfinite(retention_s) and retention_s > 0):
            raise ValueError("retention_s must be a positive number of seconds")
        if tier == "raw":
            await self.rollup()
        cutoff = time.time() - retention_s
        total, after = 0, 0
        while True:
            n, nxt = await self._on(self._writer, self._prune_step, tier, cutoff, after)
            total += n
            if nxt is None:
                return total
            after = nxt

    async def prune(self, retention_s: float) -> int:
        """Delete raw readings older than ``retention_s`` (after rolling them up)."""
        return await self.prune_tier("raw", retention_s)

    async def _maintenance(self) -> None:
        """WAL checkpoints every ``checkpoint_interval_s``; rollups every
        ``rollup_interval_s``; pruning of every tier with a retention every
        ``prune_interval_s``. Each runs in its own task, so a long prune never delays a
        checkpoint. A failure is logged once, retried at the next interval."""
        s = self.settings
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                self._every(s.checkpoint_interval_s, "checkpoint", self._checkpoint_once),
                name="store-checkpoint",
            )
            tg.create_task(
                self._every(s.rollup_interval_s, "rollup", self.rollup), name="store-rollup"
            )
            tg.create_task(
                self._every(s.prune_interval_s, "prune", self._prune_all), name="store-prune"
            )

    async def _checkpoint_once(self) -> None:
        await self._on(self._checkpointer, self._checkpoint)

    async def _prune_all(self) -> None:
        for tier in ("raw", *TIERS):
            keep = self.settings.retention(tier)
            if keep is not None:
                await self.prune_tier(tier, keep)

    async def _every(self, interval: float, what: str, job: Callable[[], Awaitable[Any]]) -> None:
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except Exception as exc:
                if not failing:
                    log.warning("telemetry store %s failed: %s", what, exc)
                failing = True
            else:
                if failing:
                    log.info("telemetry store %s recovered", what)
                failing = False

    def _view(self, sids: Iterable[int], start: float, end: float) -> dict[int, list[_RawRow]]:
        """The uncompacted rows of ``sids`` in [start, end] from memory, as ``_inbox`` reads
        them from the table (by series, in time order, the first of equal timestamps only).

        Take it **before** the read transaction whose ``readings`` it completes: a row is
        here until its compaction has committed, so a snapshot begun later has it in
        ``readings`` if it is no longer here (and a row in both is shown once)."""
        out: dict[int, list[_RawRow]] = {}
        with self._view_lock:
            for sid in sids:
                rows = [*self._in_flight.get(sid, ()), *self._pending.get(sid, ())]
                if rows:
                    out[sid] = [(r[1], r[2], r[3]) for r in rows if start <= r[1] <= end]
        for sid, got in out.items():
            got.sort(key=_TS0)  # stable: the first to arrive of equal timestamps stays first
            out[sid] = [r for i, r in enumerate(got) if i == 0 or r[0] != got[i - 1][0]]
        return out

    async def query(self, q: TelemetryQuery) -> QueryResult:
        """Run ``q`` on the reader thread."""

        def run() -> QueryResult:
            conn = self._rconn
            assert conn is not None, "store is not open"
            # The series (never renamed nor removed) and their inbox rows from memory first,
            # then the snapshot (``_view``); a series new in between is read from the table.
            before = [sid for sid, _ in _series_of(conn, q) if sid is not None]
            view = self._view(before, q.start, q.end) if q.resolution in ("raw", "auto") else {}

            def inbox_of(
                conn: sqlite3.Connection, known: list[int], start: float, end: float
            ) -> dict[int, list[_RawRow]]:
                out = {sid: view[sid] for sid in known if sid in view}
                new = [sid for sid in known if sid not in before]
                if new:
                    out.update(_inbox(conn, new, start, end))
                return out

            conn.execute("BEGIN")  # raw and tier reads from one snapshot
            try:
                return run_query(conn, q, inbox_of)
            finally:
                conn.execute("COMMIT")

        return await self._on(self._reader, run)

    async def history(
        self,
        device: str,
        point: str,
        start: float | None = None,
        end: float | None = None,
        limit: int = 1000,
    ) -> list[StoredReading]:
        """Readings of one point in [start, end], newest last, at most ``limit`` (the latest)."""

        def query() -> list[StoredReading]:
            conn = self._rconn
            assert conn is not None, "store is not open"
            row = conn.execute(
                "SELECT id FROM series WHERE device = ? AND point = ?", (device, point)
            ).fetchone()
            if row is None:
                return []
            lo = start if start is not None else -math.inf
            hi = end if end is not None else math.inf
            inbox = self._view([row[0]], lo, hi).get(row[0], [])  # before the snapshot
            conn.execute("BEGIN")
            try:
                rows, _ = _raw_rows(conn, row[0], lo, hi, limit, inbox)
            finally:
                conn.execute("COMMIT")
            return [StoredReading(device, point, ts, v, _QUALITY_OF[q]) for ts, v, q in rows]

        return await self._on(self._reader, query)

    async def count(self) -> int:
        """Readings stored: compacted, and in the inbox not yet compacted."""

        def query() -> int:
            conn = self._rconn
            assert conn is not None
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            return int(
                conn.execute(
                    "SELECT (SELECT count(*) FROM readings) + (SELECT count(*) FROM inbox "
                    "WHERE NOT (rowid <= ? AND series <= ?))",
                    (meta.get("flush_top", 0), meta.get("flush_series", -1)),
                ).fetchone()[0]
            )

        return await self._on(self._reader, query)

    async def export(
        self, q: TelemetryQuery, fmt: ExportFormat
    ) -> tuple[tuple[str, ...], AsyncIterator[bytes]]:
        """``q`` as CSV or Parquet bytes, streamed from a snapshot on a connection of its own
        (a long export neither blocks queries nor sees rows written while it runs)."""
        return await export_stream(self.path, q, fmt)


def _statements() -> Iterator[str]:
    script = _SCHEMA + "".join(_TIER_SCHEMA.format(tier=t) for t in TIERS)
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf.strip()
            buf = ""


def _migrate_from_1(conn: sqlite3.Connection) -> None:
    """Schema 1 → 2, inside the opener's write transaction: schema 1's ``readings`` (rowid
    order, duplicates allowed) becomes the inbox, which the open then compacts like the inbox
    of a crashed run (duplicates refused and counted, rollups built)."""
    conn.execute("DROP INDEX IF EXISTS readings_series_ts")
    conn.execute("ALTER TABLE readings RENAME TO inbox")


# --- export ----------------------------------------------------------------------------------


async def export_stream(
    path: Path, q: TelemetryQuery, fmt: ExportFormat
) -> tuple[tuple[str, ...], AsyncIterator[bytes]]:
    """Open ``path`` read-only and plan ``q``; return the export's columns and its bytes.

    Opening and planning happen here, so a missing store or a bad query raises before any
    byte is sent; the bytes come from a thread of their own, one chunk at a time."""
    if fmt not in ("csv", "parquet"):
        raise QueryError("format must be csv or parquet")
    pool = ThreadPoolExecutor(1, thread_name_prefix="store-export")
    loop = asyncio.get_running_loop()
    try:
        conn = await loop.run_in_executor(pool, lambda: connect(path, readonly=True))
        columns, rows = await loop.run_in_executor(pool, export_rows, conn, q)
    except BaseException:
        pool.shutdown(wait=False)
        raise

    async def stream() -> AsyncIterator[bytes]:
        encode = _csv_encoder(columns) if fmt == "csv" else _ParquetEncoder(columns)
        try:
            while True:
                data = await loop.run_in_executor(pool, _next_chunk, rows, encode)
                if data is None:
                    break
                if data:
                    yield data
        finally:
            await loop.run_in_executor(pool, _finish, rows, conn)
            pool.shutdown(wait=False)

    return columns, stream()


_Encoder = Callable[[list[tuple[Any, ...]] | None], bytes]


def _next_chunk(rows: Iterator[list[tuple[Any, ...]]], encode: _Encoder) -> bytes | None:
    batch = next(rows, None)
    if batch is None:
        tail = encode(None)
        return tail if tail else None
    return encode(batch)


def _finish(rows: Iterator[list[tuple[Any, ...]]], conn: sqlite3.Connection) -> None:
    with contextlib.suppress(Exception):
        rows.close()  # type: ignore[attr-defined]
    conn.close()


def _csv_encoder(columns: Sequence[str]) -> _Encoder:
    """CSV (RFC 4180, UTF-8, a header row); times are epoch seconds, empty fields nulls."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(columns)
    done = False

    def encode(batch: list[tuple[Any, ...]] | None) -> bytes:
        nonlocal done
        if batch is None:
            if done:
                return b""
            done = True
        else:
            writer.writerows(batch)
        out = buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
        return out

    return encode


def parquet_schema(columns: Sequence[str]) -> Any:
    import pyarrow as pa  # lazily: ~0.3 s to import

    types = {
        "device": pa.string(),
        "point": pa.string(),
        "ts": pa.timestamp("us", tz="UTC"),
        # Raw values may be numbers or text: text keeps both exactly (repr of a float).
        "value": pa.string(),
        "quality": pa.string(),
        "min": pa.float64(),
        "max": pa.float64(),
        "mean": pa.float64(),
        "last": pa.float64(),
        "count": pa.int64(),
    }
    return pa.schema([(c, types[c]) for c in columns])


class _ParquetEncoder:
    """Parquet (zstd), one row group per chunk; ``ts`` a UTC timestamp (µs). A raw export's
    ``value`` is text (a point may hold numbers or strings); a rollup's columns are numbers."""

    def __init__(self, columns: Sequence[str]) -> None:
        import pyarrow.parquet as pq

        self.columns = tuple(columns)
        self.schema = parquet_schema(columns)
        self.sink = ChunkDrain()
        self.writer = pq.ParquetWriter(self.sink, self.schema, compression="zstd")
        self.closed = False

    def __call__(self, batch: list[tuple[Any, ...]] | None) -> bytes:
        import pyarrow as pa

        if batch is None:
            if not self.closed:
                self.closed = True
                self.writer.close()
            return self.sink.drain()
        cols = list(zip(*batch, strict=True))
        arrays = []
        for name, values in zip(self.columns, cols, strict=True):
            typ = self.schema.field(name).type
            if name == "ts":
                us = pa.array([round(t * 1_000_000) for t in values], pa.int64())
                arrays.append(us.cast(typ))
            elif name == "value":
                arrays.append(pa.array([None if v is None else _text(v) for v in values], typ))
            else:
                arrays.append(pa.array(values, typ))
        self.writer.write_table(pa.table(arrays, schema=self.schema))
        return self.sink.drain()


def _text(v: object) -> str:
    return repr(v) if isinstance(v, float) else str(v)


async def export_to_file(path: Path, q: TelemetryQuery, out: Path, fmt: ExportFormat) -> int:
    """The CLI's export: ``q`` from the store at ``path`` (read-only; a service may be writing
    it) into ``out`` as CSV or Parquet. Returns the bytes written."""
    _, body = await export_stream(path, q, fmt)
    size = 0
    with out.open("wb") as f:
        async for chunk in body:
            f.write(chunk)
            size += len(chunk)
    return size
