"""InfluxDB sink: every reading mirrored into InfluxDB through a disk-backed queue.

    readings ──► LineEncoder ──► DiskQueue (SQLite, WAL) ──► InfluxWriter (influxdb-client,
                 (schema, bad-input      durable before        synchronous write API,
                  policy, counted)       enqueue returns)      line protocol, ms precision)

influxdb-client batches only in memory, so Flytower does its own batching on disk: a reading is
encoded to line protocol once, appended to an SQLite queue (its own file, WAL,
``synchronous=NORMAL``: a committed append survives ``kill -9``), and the drainer sends the
queue in order, in batches of ``batch_size`` lines (deleting one acknowledged batch overlaps
reading and sending the next: a read-only second connection, which WAL allows). A batch leaves
the queue only after the server acknowledged it (2xx), so delivery is *at least once*; a point
is idempotent (same measurement, tag set and timestamp: the same bytes every time it is sent,
because the queue holds the encoded line), so a re-sent point overwrites itself in InfluxDB,
and VictoriaMetrics run with ``-dedup.minScrapeInterval=1ms`` collapses it the same way:
*effectively exactly once*.

Schema (docs/telemetry.md, "InfluxDB sink"; the dashboards use exactly these names):
- measurement: the device's profile id (``hoist``, ``spl_meter``, …);
- tags: ``class`` (the profile's device class), ``device``, ``node``, ``point``, ``venue``;
- fields: ``value`` (float, always: ints and bools too, so a field never changes type),
  ``text`` (string, for string values), ``quality`` (integer: 0 good, 1 stale, 2 bad);
- timestamp: milliseconds (what VictoriaMetrics keeps; at most one point per series per ms).

Bad input (each kind counted in ``stats()['rejected']`` or ``['flagged']``, never a crash):
NaN/±inf values are written without ``value`` and with quality 2 (flagged ``nonfinite``);
wrong value types, integers beyond a float, over-long or multi-line texts, tag values that are
empty, too long or hold a control character or a backslash (InfluxDB and VictoriaMetrics read
``\\\\`` differently), non-finite timestamps and timestamps beyond ``max_future_s`` ahead or
``max_past_s`` behind the sink's clock are rejected; a second reading of a series at the same
millisecond as the previous one is dropped as a ``duplicate``. The embedded store keeps every
reading whatever the sink does with it.

Server answers: 2xx acknowledges; 400/422 (a malformed point) splits the batch in halves down
to the offending line, which is moved to the ``quarantine`` table and counted, so it never
wedges the queue; 413 splits the same way; 401/403/404 (credentials, org, bucket), 429, 5xx and
connection errors back off (exponential from ``backoff_min_s`` to ``backoff_max_s``, with
jitter; ``Retry-After`` is honoured) and retry the same batch. The queue is bounded by
``max_readings`` and ``max_bytes``: beyond either, the oldest chunks are dropped and counted;
``on_alarm`` hears when the queue crosses ``high_water``, when it fills (drops), and when it is
back below ``low_water``.

Entry points: ``InfluxSink`` (``async with``; ``run(feed)`` consumes a bus subscription until
it closes, then flushes for at most ``flush_timeout_s``), ``from_config`` (the venue's
``[telemetry.influxdb]``), and ``python -m edge.influx --selftest-stream`` (a paced stream of
numbered readings through a sink, for the chaos test and by hand).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import json
import logging
import math
import numbers
import os
import random
import sqlite3
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from drivers.model import Device, Profile, Quality, Reading
from edge.bus import Closed, Subscription
from edge.config import InfluxConfig

log = logging.getLogger(__name__)
R = TypeVar("R")

# --- schema ---------------------------------------------------------------------------------

TAG_KEYS = ("class", "device", "node", "point", "venue")  # sorted, as InfluxDB prefers
FIELD_VALUE = "value"
FIELD_TEXT = "text"
FIELD_QUALITY = "quality"
FIELD_TYPES = {FIELD_VALUE: "float", FIELD_TEXT: "string", FIELD_QUALITY: "integer"}
QUALITY_CODE = {Quality.GOOD: 0, Quality.STALE: 1, Quality.BAD: 2}
PRECISION = "ms"
UNKNOWN_TYPE = "unknown"  # measurement and class of a device the sink was not told about
MAX_TAG_CHARS = 256
MAX_TEXT_CHARS = 1024

SCHEMA_VERSION = 1
CHUNK_LINES = 1000  # lines per queue row: the granularity of drop-oldest


class Rejected(enum.StrEnum):
    """Why a reading was not queued (counted per reason)."""

    BAD_TYPE = "bad_type"  # not a float/int/bool/str/None
    OUT_OF_RANGE = "out_of_range"  # an integer beyond a float
    BAD_TEXT = "bad_text"  # a string value too long, or with a line break
    BAD_TAG = "bad_tag"  # a device/point empty, too long, with a control char or backslash
    BAD_TIME = "bad_time"  # a non-finite timestamp
    FUTURE = "future"  # more than max_future_s ahead of the sink's clock
    PAST = "past"  # more than max_past_s behind it
    DUPLICATE = "duplicate"  # same series, same millisecond as the previous reading


class Flagged(enum.StrEnum):
    """Readings written, but not as they came (counted per reason)."""

    NONFINITE = "nonfinite"  # NaN/inf: written without a value, quality 2 (bad)
    BAD_QUALITY = "bad_quality"  # not a Quality: written with quality 2 (bad)


def _escape_measurement(s: str) -> str:
    return s.replace(",", "\\,").replace(" ", "\\ ")


def _escape_tag(s: str) -> str:
    return s.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _escape_text(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def tag_problem(value: str) -> str | None:
    """Why ``value`` cannot be a tag value (None: it can)."""
    if not value:
        return "empty"
    if len(value) > MAX_TAG_CHARS:
        return f"longer than {MAX_TAG_CHARS} characters"
    if "\\" in value:
        return "holds a backslash"
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
        return "holds a control character"
    return None


@dataclass(frozen=True, slots=True)
class DeviceType:
    measurement: str  # the profile id
    device_class: str


class LineEncoder:
    """Readings to line protocol, applying the bad-input policy (see the module docstring).

    Not thread-safe; the sink calls it from the event loop. ``clock`` is wall-clock seconds."""

    def __init__(
        self,
        venue: str,
        node: str,
        types: Mapping[str, DeviceType],
        *,
        max_future_s: float = 300.0,
        max_past_s: float = 7 * 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for what, v in (("venue", venue), ("node", node)):
            why = tag_problem(v)
            if why is not None:
                raise ValueError(f"{what} {v!r} cannot be a tag value: {why}")
        for dev, t in types.items():
            for what, v in (("measurement", t.measurement), ("class", t.device_class)):
                why = tag_problem(v)
                if why is not None or v.startswith("_"):
                    raise ValueError(f"device {dev!r}: {what} {v!r} is not usable: {why}")
        self.venue, self.node = venue, node
        self.types = dict(types)
        self.max_future_s, self.max_past_s = max_future_s, max_past_s
        self.clock = clock
        self.rejected: Counter[str] = Counter()
        self.flagged: Counter[str] = Counter()
        self._last_ms: dict[tuple[str, str], int] = {}
        self._prefix: dict[tuple[str, str], str] = {}

    def _series_prefix(self, device: str, point: str) -> str | None:
        key = (device, point)
        prefix = self._prefix.get(key)
        if prefix is None:
            if tag_problem(device) is not None or tag_problem(point) is not None:
                return None
            t = self.types.get(device, DeviceType(UNKNOWN_TYPE, UNKNOWN_TYPE))
            tags = {
                "class": t.device_class,
                "device": device,
                "node": self.node,
                "point": point,
                "venue": self.venue,
            }
            prefix = _escape_measurement(t.measurement) + "".join(
                f",{k}={_escape_tag(tags[k])}" for k in TAG_KEYS
            )
            if len(self._prefix) > 1_000_000:  # a runaway of ids must not grow without bound
                self._prefix.clear()
            self._prefix[key] = prefix
        return prefix

    def _fields(self, r: Reading) -> str | None:
        try:
            q = QUALITY_CODE[r.quality]
        except (KeyError, TypeError):
            self.flagged[Flagged.BAD_QUALITY] += 1
            q = QUALITY_CODE[Quality.BAD]
        v = r.value
        if v is None:
            return f"{FIELD_QUALITY}={q}i"
        if isinstance(v, bool):
            return f"{FIELD_VALUE}={1.0 if v else 0.0!r},{FIELD_QUALITY}={q}i"
        if isinstance(v, numbers.Real):
            try:
                f = float(v)
            except OverflowError:
                self.rejected[Rejected.OUT_OF_RANGE] += 1
                return None
            if not math.isfinite(f):
                self.flagged[Flagged.NONFINITE] += 1
                return f"{FIELD_QUALITY}={QUALITY_CODE[Quality.BAD]}i"
            return f"{FIELD_VALUE}={f!r},{FIELD_QUALITY}={q}i"
        if isinstance(v, str):
            if len(v) > MAX_TEXT_CHARS or "\n" in v or "\r" in v:
                self.rejected[Rejected.BAD_TEXT] += 1
                return None
            return f'{FIELD_TEXT}="{_escape_text(v)}",{FIELD_QUALITY}={q}i'
        self.rejected[Rejected.BAD_TYPE] += 1
        return None

    def encode(self, readings: Sequence[Reading]) -> list[tuple[int, bytes]]:
        """(timestamp ms, line) per accepted reading, in order; the rest counted.

        The loop is the sink's hot path (it runs on the event loop for every reading): a good
        float reading of a known series takes the short way; everything else ``_fields``."""
        now = self.clock()
        lo, hi = now - self.max_past_s, now + self.max_future_s
        out: list[tuple[int, bytes]] = []
        append = out.append
        rejected = self.rejected
        last_ms, prefixes = self._last_ms, self._prefix
        good = Quality.GOOD
        for r in readings:
            ts = r.ts_wall
            if type(ts) is not float:
                try:
                    if isinstance(ts, bool) or not isinstance(ts, numbers.Real):
                        raise TypeError
                    ts = float(ts)
                except (TypeError, OverflowError):
                    rejected[Rejected.BAD_TIME] += 1
                    continue
            if not lo <= ts <= hi:  # NaN fails both
                if ts > hi:
                    rejected[Rejected.FUTURE] += 1
                elif ts < lo:
                    rejected[Rejected.PAST] += 1
                else:
                    rejected[Rejected.BAD_TIME] += 1
                continue
            key = (r.device, r.point)
            try:
                prefix = prefixes.get(key)
            except TypeError:  # an unhashable id
                prefix = None
            else:
                if prefix is None and type(r.device) is str and type(r.point) is str:
                    prefix = self._series_prefix(r.device, r.point)
            if prefix is None:
                rejected[Rejected.BAD_TAG] += 1
                continue
            ms = round(ts * 1000)
            if last_ms.get(key) == ms:
                rejected[Rejected.DUPLICATE] += 1
                continue
            v = r.value
            if type(v) is float and r.quality is good and v - v == 0.0:  # finite
                line = f"{prefix} value={v!r},quality=0i {ms}"  # FIELD_VALUE, FIELD_QUALITY
            else:
                fields = self._fields(r)
                if fields is None:
                    continue
                line = f"{prefix} {fields} {ms}"
            if len(last_ms) > 1_000_000:  # bounded, whatever the number of series
                last_ms.clear()
            last_ms[key] = ms
            append((ms, line.encode()))
        return out


# --- the disk-backed queue ------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunk (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lines INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    enqueued REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    line BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Chunk:
    id: int
    lines: int
    body: bytes


@dataclass(slots=True)
class QueueState:
    chunks: int = 0
    readings: int = 0
    bytes: int = 0
    oldest_enqueued: float | None = None


class DiskQueue:
    """An ordered queue of line-protocol chunks in SQLite. Synchronous: one thread uses it."""

    def __init__(self, path: Path, max_readings: int, max_bytes: int) -> None:
        if max_readings < 1 or max_bytes < 1:
            raise ValueError("queue limits must be positive")
        self.path, self.max_readings, self.max_bytes = path, max_readings, max_bytes
        self.state = QueueState()
        self._conn: sqlite3.Connection | None = None  # appends and acks (one thread)
        self._rconn: sqlite3.Connection | None = None  # peeks (another thread; WAL: no wait)

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: queue schema {version} is newer than this Flytower "
                    f"({SCHEMA_VERSION}); refusing to touch it"
                )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._rconn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._rconn.execute("PRAGMA busy_timeout=5000")
        self._refresh()

    def close(self) -> None:
        for attr in ("_conn", "_rconn"):
            conn = getattr(self, attr)
            if conn is not None:
                conn.close()
                setattr(self, attr, None)

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "queue is not open"
        return self._conn

    def _refresh(self) -> None:
        n, lines, nbytes = self.conn.execute(
            "SELECT count(*), coalesce(sum(lines), 0), coalesce(sum(nbytes), 0) FROM chunk"
        ).fetchone()
        oldest = self.conn.execute("SELECT enqueued FROM chunk ORDER BY id LIMIT 1").fetchone()
        self.state = QueueState(n, lines, nbytes, oldest[0] if oldest else None)

    def append(self, lines: Sequence[bytes], now: float) -> int:
        """Commit ``lines`` at the tail; drop the oldest chunks beyond the limits. Returns how
        many readings were dropped."""
        rows = []
        for i in range(0, len(lines), CHUNK_LINES):
            part = lines[i : i + CHUNK_LINES]
            body = b"\n".join(part)
            rows.append((len(part), len(body), now, body))
        if not rows:
            return 0
        conn = self.conn
        dropped = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO chunk (lines, nbytes, enqueued, body) VALUES (?, ?, ?, ?)", rows
            )
            st = self.state
            st.chunks += len(rows)
            st.readings += sum(r[0] for r in rows)
            st.bytes += sum(r[1] for r in rows)
            if st.oldest_enqueued is None:
                st.oldest_enqueued = now
            while (st.readings > self.max_readings or st.bytes > self.max_bytes) and st.chunks:
                cid, n, nb = conn.execute(
                    "SELECT id, lines, nbytes FROM chunk ORDER BY id LIMIT 1"
                ).fetchone()
                conn.execute("DELETE FROM chunk WHERE id = ?", (cid,))
                st.chunks -= 1
                st.readings -= n
                st.bytes -= nb
                dropped += n
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a refused COMMIT (a full disk) rolled back already
                conn.execute("ROLLBACK")
            self._refresh()
            raise
        if dropped:
            self._refresh()
        return dropped

    def peek(self, max_lines: int, after: int = 0) -> list[Chunk]:
        """The oldest chunks with an id above ``after``, up to ``max_lines`` lines in all (at
        least one chunk). Reads on its own connection: it never waits for an append or ack."""
        assert self._rconn is not None, "queue is not open"
        out: list[Chunk] = []
        total = 0
        for cid, n, body in self._rconn.execute(
            "SELECT id, lines, body FROM chunk WHERE id > ? ORDER BY id LIMIT ?",
            (after, max(1, max_lines)),
        ):
            if out and total + n > max_lines:
                break
            out.append(Chunk(cid, n, bytes(body)))
            total += n
        return out

    def ack(
        self, ids: Sequence[int], quarantined: Sequence[tuple[int, str, bytes]], now: float
    ) -> int:
        """Delete delivered chunks and keep the rejected lines, in one transaction. Returns
        how many readings left the queue (chunks dropped meanwhile are not counted)."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            removed = 0
            for cid in ids:
                row = conn.execute(
                    "DELETE FROM chunk WHERE id = ? RETURNING lines, nbytes", (cid,)
                ).fetchone()
                if row is not None:
                    removed += row[0]
                    self.state.chunks -= 1
                    self.state.readings -= row[0]
                    self.state.bytes -= row[1]
            conn.executemany(
                "INSERT INTO quarantine (at, status, reason, line) VALUES (?, ?, ?, ?)",
                [(now, status, reason[:500], line) for status, reason, line in quarantined],
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a refused COMMIT (a full disk) rolled back already
                conn.execute("ROLLBACK")
            self._refresh()
            raise
        oldest = conn.execute("SELECT enqueued FROM chunk ORDER BY id LIMIT 1").fetchone()
        self.state.oldest_enqueued = oldest[0] if oldest else None
        return removed

    def quarantine(self) -> list[tuple[int, str, bytes]]:
        """Every quarantined line: (HTTP status, the server's reason, line)."""
        assert self._rconn is not None, "queue is not open"
        return [
            (s, r, bytes(line))
            for s, r, line in self._rconn.execute(
                "SELECT status, reason, line FROM quarantine ORDER BY id"
            )
        ]


# --- the HTTP side --------------------------------------------------------------------------


class WriteError(Exception):
    """A write the server did not acknowledge."""

    def __init__(self, status: int | None, reason: str, retry_after_s: float | None = None):
        super().__init__(f"{status or 'no answer'}: {reason}")
        self.status, self.reason, self.retry_after_s = status, reason, retry_after_s

    @property
    def point_fault(self) -> bool:
        """The data is at fault (a malformed point, a type conflict, too large): split."""
        return self.status in (400, 413, 422)


class InfluxWriter:
    """influxdb-client's synchronous write API; blocking, so the sink calls it from a thread.

    The client's own retries are off (``retries=False``): the sink owns retrying, and a
    batch is not acknowledged until a write returns."""

    def __init__(
        self,
        url: str,
        org: str,
        bucket: str,
        token: str | None,
        timeout_s: float = 10.0,
        gzip: bool = False,
    ) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.url, self.org, self.bucket = url, org, bucket
        self._client = InfluxDBClient(
            url=url,
            token=token or "",  # empty: no Authorization header
            org=org,
            timeout=int(timeout_s * 1000),
            enable_gzip=gzip,
            retries=False,
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def __repr__(self) -> str:  # never the token
        return f"InfluxWriter({self.url!r}, org={self.org!r}, bucket={self.bucket!r})"

    def write(self, body: bytes) -> None:
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self._api.write(
                bucket=self.bucket,
                org=self.org,
                record=body,
                write_precision=WritePrecision.MS,  # type: ignore[arg-type]
            )
        except ApiException as exc:
            retry_after: float | None = None
            headers: Any = exc.headers or {}
            with contextlib.suppress(TypeError, ValueError):
                retry_after = float(headers.get("Retry-After"))
            raw = exc.body
            body_text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
            raise WriteError(
                exc.status, (body_text or str(exc.reason))[:300], retry_after
            ) from None
        except (HTTPError, OSError) as exc:
            raise WriteError(None, f"{type(exc).__name__}: {exc}"[:300]) from None

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]


# --- the sink -------------------------------------------------------------------------------


class QueueLevel(enum.StrEnum):
    NORMAL = "normal"
    HIGH = "high"  # at or above high_water
    FULL = "full"  # readings were dropped


@dataclass(frozen=True, slots=True)
class QueueAlarm:
    level: QueueLevel
    readings: int
    bytes: int
    dropped: int  # in all, since the sink started


class LinkState(enum.StrEnum):
    IDLE = "idle"  # nothing to send (or not yet tried)
    OK = "ok"  # the last write was acknowledged
    BACKING_OFF = "backing_off"  # the last write failed; retrying after a pause


@dataclass(frozen=True, slots=True)
class SinkOptions:
    """The sink's parameters (``from_config`` builds them from ``[telemetry.influxdb]``)."""

    max_readings: int = 10_000_000
    max_bytes: int = 2 << 30
    high_water: float = 0.8
    low_water: float = 0.6
    batch_size: int = 5000
    flush_interval_s: float = 1.0
    flush_timeout_s: float = 5.0
    backoff_min_s: float = 0.1
    backoff_max_s: float = 30.0
    max_future_s: float = 300.0
    max_past_s: float = 7 * 86400.0
    feed_batch: int = 5000


@dataclass(slots=True)
class SinkStats:
    enqueued: int = 0
    delivered: int = 0
    write_requests: int = 0
    write_failures: int = 0
    quarantined: int = 0
    dropped: int = 0
    last_ack_wall: float | None = None
    last_error: str | None = None
    errors_by_status: Counter[str] = field(default_factory=Counter)


class InfluxSink:
    """Readings → disk queue → InfluxDB. ``async with InfluxSink(...) as sink``, then
    ``await sink.run(feed)``; ``await sink.enqueue(readings)`` is durable when it returns."""

    def __init__(
        self,
        queue_path: Path,
        writer: InfluxWriter,
        encoder: LineEncoder,
        options: SinkOptions | None = None,
        on_alarm: Callable[[QueueAlarm], None] | None = None,
    ) -> None:
        self.options = opts = options or SinkOptions()
        if not 0 < opts.low_water < opts.high_water < 1:
            raise ValueError("need 0 < low_water < high_water < 1")
        self.queue = DiskQueue(queue_path, opts.max_readings, opts.max_bytes)
        self.writer = writer
        self.encoder = encoder
        self.on_alarm = on_alarm
        self.stats_ = SinkStats()
        self.level = QueueLevel.NORMAL
        self.link = LinkState.IDLE
        self._db = ThreadPoolExecutor(1, thread_name_prefix="influx-queue")
        self._db_read = ThreadPoolExecutor(1, thread_name_prefix="influx-queue-read")
        self._http = ThreadPoolExecutor(1, thread_name_prefix="influx-http")
        self._more = asyncio.Event()
        self._acked = asyncio.Event()  # set after every acknowledged batch
        self._closing = asyncio.Event()
        self._deadline: float | None = None  # monotonic; set when closing
        self._failing_since: float | None = None
        self._open = False

    # --- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> InfluxSink:
        await self._on_db(self.queue.open)
        self._open = True
        if self.queue.state.readings:
            log.info(
                "influx: %d readings waiting in %s from before", self.queue.state.readings,
                self.queue.path,
            )  # fmt: skip
        self._update_level(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open = False
        with contextlib.suppress(Exception):
            await self._on_db(self.queue.close)
        self._db.shutdown(wait=True)
        self._db_read.shutdown(wait=True)
        # An HTTP write still in flight (abandoned at the flush deadline) ends by its timeout.
        self._http.shutdown(wait=False)
        await asyncio.to_thread(self.writer.close)

    async def _on_db(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def _on_read(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._db_read, fn, *args)

    def close(self) -> None:
        """Stop taking readings; ``run`` flushes for at most ``flush_timeout_s`` and returns."""
        if not self._closing.is_set():
            self._deadline = time.monotonic() + self.options.flush_timeout_s
            self._closing.set()
            self._more.set()

    # --- input ---------------------------------------------------------------------------

    async def enqueue(self, readings: Sequence[Reading]) -> None:
        """Encode and commit; when this returns the readings survive a crash of the process."""
        encoded = self.encoder.encode(readings)
        if not encoded:
            return
        dropped = await self._on_db(self.queue.append, [line for _, line in encoded], time.time())
        self.stats_.enqueued += len(encoded)
        self._update_level(dropped)
        self._more.set()

    async def _feed(self, feed: Subscription[Reading]) -> None:
        with contextlib.suppress(Closed):
            while True:
                await self.enqueue(await feed.get_batch(self.options.feed_batch))

    async def run(self, feed: Subscription[Reading] | None = None) -> None:
        """Drain the queue until ``close()`` (or the end of ``feed``), then flush."""
        assert self._open, "use 'async with InfluxSink(...)' first"
        drainer = asyncio.create_task(self._drain(), name="influx-drain")
        try:
            if feed is not None:
                await self._feed(feed)
                self.close()
            await drainer
        finally:
            if not drainer.done():
                drainer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drainer

    async def flush(self, timeout_s: float) -> bool:
        """Wait until the queue is empty (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while self.queue.state.readings and (left := deadline - time.monotonic()) > 0:
            self._acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), min(left, 0.5))
        return self.queue.state.readings == 0

    # --- draining ------------------------------------------------------------------------

    def _time_left(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    async def _wait(self, timeout_s: float) -> None:
        """Sleep until more data, closing, or ``timeout_s``; never past the flush deadline."""
        left = self._time_left()
        if left is not None:
            timeout_s = min(timeout_s, max(0.0, left))
        self._more.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._more.wait(), timeout_s)

    async def _drain(self) -> None:
        """Send the queue in order. One batch's acknowledgement (deleting its chunks, in the
        queue's write thread) overlaps the next batch's read and write: ``cursor`` is the
        last chunk id the server accepted; ``pending`` deletes up to it."""
        opts = self.options
        failures = 0
        pending: asyncio.Task[None] | None = None
        inflight = 0  # readings sent and accepted, whose chunks ``pending`` is deleting
        cursor = 0
        try:
            while True:
                if pending is not None and pending.done():
                    await pending
                    pending, inflight = None, 0
                closing = self._closing.is_set()
                left = self._time_left()
                unsent = self.queue.state.readings - inflight
                settle = pending is not None
                if closing and (unsent <= 0 or (left is not None and left <= 0)):
                    if settle:
                        assert pending is not None
                        await pending
                        pending, inflight = None, 0
                        continue
                    if self.queue.state.readings:
                        log.warning(
                            "influx: %d readings still queued at shutdown (kept in %s)",
                            self.queue.state.readings,
                            self.queue.path,
                        )
                    return
                small = unsent < opts.batch_size
                if unsent <= 0 or (not closing and small):
                    if settle:  # first the true state, then decide whether to wait
                        assert pending is not None
                        await pending
                        pending, inflight = None, 0
                        continue
                    st = self.queue.state
                    if st.readings == 0:
                        await self._wait(opts.flush_interval_s)
                        continue
                    age = time.time() - (st.oldest_enqueued or time.time())
                    if age < opts.flush_interval_s:  # a small batch waits to fill up, a while
                        await self._wait(opts.flush_interval_s - age)
                        continue
                chunks = await self._on_read(self.queue.peek, opts.batch_size, cursor)
                if not chunks:
                    if pending is not None:
                        await pending
                        pending, inflight = None, 0
                    else:
                        await self._wait(opts.flush_interval_s)
                    continue
                try:
                    quarantined = await self._send(chunks)
                except WriteError as exc:
                    if pending is not None:  # the previous batch was accepted: forget it
                        await pending
                        pending, inflight = None, 0
                    failures += 1
                    self._failed(exc, failures)
                    delay = self._backoff(failures, exc.retry_after_s)
                    await self._sleep_interruptible(delay)
                    continue
                if pending is not None:
                    await pending
                if failures:
                    log.warning("influx: writes to %s recovered", self.writer.url)
                    failures = 0
                self._failing_since = None
                self.link = LinkState.OK
                cursor = chunks[-1].id
                inflight = sum(c.lines for c in chunks)
                pending = asyncio.create_task(self._ack(chunks, quarantined), name="influx-ack")
        finally:
            if pending is not None:
                # Cancelled mid-ack: the delete finishes in its thread; nothing is lost.
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pending)

    async def _ack(
        self, chunks: Sequence[Chunk], quarantined: list[tuple[int, str, bytes]]
    ) -> None:
        now = time.time()
        removed = await self._on_db(self.queue.ack, [c.id for c in chunks], quarantined, now)
        self.stats_.delivered += removed - len(quarantined)
        self.stats_.quarantined += len(quarantined)
        self.stats_.last_ack_wall = now
        self._update_level(0)
        self._acked.set()

    async def _sleep_interruptible(self, delay: float) -> None:
        """A backoff pause. ``close()`` cuts it short once, for a prompt last attempt; while
        closing, pauses still happen but never past the flush deadline."""
        if self._closing.is_set():
            left = self._time_left()
            await asyncio.sleep(min(delay, max(0.0, left if left is not None else delay)))
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay)

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        opts = self.options
        base = min(opts.backoff_max_s, opts.backoff_min_s * 2 ** min(failures - 1, 30))
        delay = base / 2 + random.uniform(0, base / 2)  # "equal jitter": never a thundering herd
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, opts.backoff_max_s))
        return float(delay)

    def _failed(self, exc: WriteError, failures: int) -> None:
        self.stats_.write_failures += 1
        self.stats_.last_error = str(exc)
        self.stats_.errors_by_status[str(exc.status or "connection")] += 1
        self.link = LinkState.BACKING_OFF
        if failures == 1:
            self._failing_since = time.time()
            log.warning("influx: write to %s failed (%s); retrying", self.writer.url, exc)
        else:
            log.debug("influx: write to %s failed again (%s)", self.writer.url, exc)

    async def _write(self, body: bytes) -> None:
        """One HTTP write in the HTTP thread; at shutdown, abandoned at the flush deadline."""
        self.stats_.write_requests += 1
        fut = asyncio.get_running_loop().run_in_executor(self._http, self.writer.write, body)
        left = self._time_left()
        if left is None:
            await fut
            return
        try:
            await asyncio.wait_for(asyncio.shield(fut), max(0.0, left))
        except TimeoutError:
            fut.add_done_callback(lambda f: f.exception())  # retrieved: no "never retrieved"
            raise WriteError(None, "flush deadline passed during a write") from None

    async def _send(self, chunks: Sequence[Chunk]) -> list[tuple[int, str, bytes]]:
        """Send every line of ``chunks`` in order, in writes of at most ``batch_size`` lines.
        Returns the lines the server refused one by one (to quarantine); raises WriteError
        on anything that is not the points' fault (the whole step is then retried)."""
        quarantined: list[tuple[int, str, bytes]] = []
        size = self.options.batch_size
        if sum(c.lines for c in chunks) <= size:  # the usual case: one write, no splitting
            try:
                await self._write(b"\n".join(c.body for c in chunks))
                return quarantined
            except WriteError as exc:
                if not exc.point_fault:
                    raise
                lines = [line for c in chunks for line in c.body.split(b"\n")]
                await self._send_lines(lines, quarantined, refused=exc)  # straight to halves
            return quarantined
        lines = [line for c in chunks for line in c.body.split(b"\n")]
        for i in range(0, len(lines), size):
            await self._send_lines(lines[i : i + size], quarantined)
        return quarantined

    async def _send_lines(
        self,
        lines: list[bytes],
        quarantined: list[tuple[int, str, bytes]],
        refused: WriteError | None = None,
    ) -> None:
        """Write ``lines``; on a refusal for the points' sake, split in halves down to the
        offending lines. ``refused``: these exact lines were just refused with this error."""
        try:
            if refused is not None:
                raise refused
            await self._write(b"\n".join(lines))
        except WriteError as exc:
            if not exc.point_fault:
                raise
            if len(lines) == 1:
                log.warning("influx: point refused (%s), quarantined: %r", exc, lines[0][:200])
                quarantined.append((exc.status or 0, exc.reason, lines[0]))
                return
            half = len(lines) // 2
            await self._send_lines(lines[:half], quarantined)
            await self._send_lines(lines[half:], quarantined)

    # --- alarm and stats -----------------------------------------------------------------

    def fill(self) -> float:
        st, opts = self.queue.state, self.options
        return max(st.readings / opts.max_readings, st.bytes / opts.max_bytes)

    def _update_level(self, dropped: int) -> None:
        self.stats_.dropped += dropped
        fill, opts = self.fill(), self.options
        level = self.level
        if dropped:
            level = QueueLevel.FULL
        elif fill < opts.low_water:
            level = QueueLevel.NORMAL
        elif fill >= opts.high_water and level is QueueLevel.NORMAL:
            level = QueueLevel.HIGH
        if dropped and self.level is QueueLevel.FULL:
            log.debug("influx: queue full, %d more readings dropped", dropped)
        if level is self.level:
            return
        self.level = level
        st = self.queue.state
        alarm = QueueAlarm(level, st.readings, st.bytes, self.stats_.dropped)
        if level is QueueLevel.NORMAL:
            log.warning("influx: queue back to normal (%d readings)", st.readings)
        else:
            log.warning(
                "influx: queue %s: %d readings, %d bytes, %d dropped so far",
                level.value, st.readings, st.bytes, self.stats_.dropped,
            )  # fmt: skip
        if self.on_alarm is not None:
            try:
                self.on_alarm(alarm)
            except Exception:
                log.exception("influx: queue alarm hook failed")

    def stats(self) -> dict[str, Any]:
        """Counters and gauges for ``/metrics`` and the API (no secrets)."""
        st, s = self.queue.state, self.stats_
        now = time.time()
        return {
            "url": self.writer.url,
            "link": self.link.value,
            "level": self.level.value,
            "queue_readings": st.readings,
            "queue_bytes": st.bytes,
            "queue_fill": round(self.fill(), 6),
            "lag_s": 0.0 if st.oldest_enqueued is None else max(0.0, now - st.oldest_enqueued),
            "failing_for_s": None if self._failing_since is None else now - self._failing_since,
            "enqueued": s.enqueued,
            "delivered": s.delivered,
            "write_requests": s.write_requests,
            "write_failures": s.write_failures,
            "errors_by_status": dict(s.errors_by_status),
            "quarantined": s.quarantined,
            "dropped": s.dropped,
            "rejected": dict(self.encoder.rejected),
            "flagged": dict(self.encoder.flagged),
            "last_ack_wall": s.last_ack_wall,
            "last_error": s.last_error,
        }


# --- wiring ---------------------------------------------------------------------------------


def options_of(cfg: InfluxConfig) -> SinkOptions:
    return SinkOptions(
        max_readings=cfg.queue_max_readings,
        max_bytes=cfg.queue_max_bytes,
        high_water=cfg.high_water,
        low_water=cfg.low_water,
        batch_size=cfg.batch_size,
        flush_interval_s=cfg.flush_interval_s,
        flush_timeout_s=cfg.flush_timeout_s,
        backoff_min_s=cfg.backoff_min_s,
        backoff_max_s=cfg.backoff_max_s,
        max_future_s=cfg.max_future_s,
        max_past_s=cfg.max_past_s,
    )


def token_from_env(cfg: InfluxConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """The token named by ``token_env``; a clear error (without any value) when it is unset."""
    if cfg.token_env is None:
        return None
    token = environ.get(cfg.token_env)
    if not token:
        raise RuntimeError(
            f"[telemetry.influxdb] token_env: environment variable {cfg.token_env} is not set"
        )
    return token


def from_config(
    cfg: InfluxConfig,
    queue_path: Path,
    venue: str,
    node: str,
    types: Mapping[str, DeviceType],
    on_alarm: Callable[[QueueAlarm], None] | None = None,
) -> InfluxSink:
    """The sink a venue's ``[telemetry.influxdb]`` describes (``queue_path`` already resolved
    against the venue file, ``types`` from the node's devices: see ``device_types``)."""
    opts = options_of(cfg)
    writer = InfluxWriter(
        cfg.url, cfg.org, cfg.bucket, token_from_env(cfg), cfg.timeout_s, cfg.gzip
    )
    encoder = LineEncoder(
        venue, node, types, max_future_s=opts.max_future_s, max_past_s=opts.max_past_s
    )
    return InfluxSink(queue_path, writer, encoder, opts, on_alarm)


def profile_type(profile: Profile) -> DeviceType:
    """The measurement and class of a profile's devices (the schema the dashboards query)."""
    return DeviceType(profile.id, profile.device_class)


def device_types(devices: Mapping[str, Device]) -> dict[str, DeviceType]:
    """``{device id: DeviceType}`` for the node's devices (``Service.devices``)."""
    return {dev_id: profile_type(dev.profile) for dev_id, dev in devices.items()}


# --- selftest stream (the chaos test's sink process) ----------------------------------------

SELFTEST_TYPE = DeviceType("selftest", "selftest")


def selftest_reading(seq: int, t0_ms: int, devices: int) -> Reading:
    """Reading number ``seq`` of the selftest stream: device ``st-{seq % devices}``, point
    ``seq``, value ``seq``, at ``t0_ms + seq`` ms (so a regenerated reading is identical)."""
    ts = (t0_ms + seq) / 1000
    return Reading(f"st-{seq % devices}", "seq", float(seq), time.monotonic(), ts)


async def _selftest_stream(args: argparse.Namespace) -> int:
    types = {f"st-{i}": SELFTEST_TYPE for i in range(args.devices)}
    opts = SinkOptions(
        batch_size=args.batch_size,
        flush_interval_s=0.2,
        flush_timeout_s=args.flush_timeout,
        backoff_min_s=0.05,
        backoff_max_s=args.backoff_max,
        max_past_s=30 * 86400.0,
        max_future_s=3600.0,
    )
    writer = InfluxWriter(args.url, args.org, args.bucket, os.environ.get("INFLUX_TOKEN"), 5.0)
    encoder = LineEncoder("selftest", "node", types, max_future_s=3600, max_past_s=30 * 86400)
    sink = InfluxSink(Path(args.queue), writer, encoder, opts)
    async with sink:
        drain = asyncio.create_task(sink.run(), name="influx-run")
        step = 0.02
        per_step = max(1, round(args.rate * step))
        start = time.monotonic()
        seq = args.start_seq
        while seq < args.count:
            n = min(per_step, args.count - seq)
            await sink.enqueue(
                [selftest_reading(s, args.t0_ms, args.devices) for s in range(seq, seq + n)]
            )
            seq += n
            print(f"enqueued {seq - 1}", flush=True)  # durable up to here
            due = start + (seq - args.start_seq) / args.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        sink.close()
        await drain
        print("done " + json.dumps(sink.stats()), flush=True)
        return 0 if sink.queue.state.readings == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge.influx", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--selftest-stream",
        action="store_true",
        required=True,
        help="stream numbered readings through a sink (token: $INFLUX_TOKEN)",
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--org", default="flytower")
    parser.add_argument("--bucket", default="flytower")
    parser.add_argument("--queue", required=True, help="the sink's SQLite queue file")
    parser.add_argument("--count", type=int, required=True, help="readings in the stream")
    parser.add_argument("--start-seq", type=int, default=0, help="resume after a crash here")
    parser.add_argument("--t0-ms", type=int, required=True, help="timestamp of reading 0")
    parser.add_argument("--rate", type=float, default=1000.0, help="readings per second")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--backoff-max", type=float, default=1.0)
    parser.add_argument("--flush-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)  # fmt: skip
    if args.rate <= 0 or args.count < 0 or args.devices < 1:
        parser.error("--rate and --devices must be positive, --count not negative")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(_selftest_stream(args))


if __name__ == "__main__":
    sys.exit(main())
