"""Embedded telemetry store: SQLite in WAL mode, written in batches from a dedicated thread.

SQLite calls block, so the store owns two threads: one writer (a single connection, so writes
never contend) and one reader (WAL lets it read while the writer commits). The event loop only
awaits them. ``synchronous=NORMAL`` in WAL mode keeps every committed batch across a crash of
the process (kill -9); only a power loss can take the last transactions, which is the usual
trade for an edge box (docs/decisions.md).

Schema: ``series`` names each (device, point) once; ``readings`` holds (series, ts, value,
quality) with an index on (series, ts) for range queries.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from drivers.model import Quality, Reading

R = TypeVar("R")
SCHEMA_VERSION = 1
_QUALITY_CODE = {Quality.GOOD: 0, Quality.STALE: 1, Quality.BAD: 2}
_QUALITY_OF = {v: k for k, v in _QUALITY_CODE.items()}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    point TEXT NOT NULL,
    UNIQUE (device, point)
);
CREATE TABLE IF NOT EXISTS readings (
    series INTEGER NOT NULL REFERENCES series(id),
    ts REAL NOT NULL,
    value,
    quality INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_series_ts ON readings (series, ts);
"""


@dataclass(frozen=True, slots=True)
class StoredReading:
    device: str
    point: str
    ts: float
    value: float | int | str | None
    quality: Quality


class TelemetryStore:
    """Durable readings. Use as ``async with TelemetryStore(path) as store``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="store-reader")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._series: dict[tuple[str, str], int] = {}
        self.written = 0

    async def __aenter__(self) -> TelemetryStore:
        try:
            await self._on(self._writer, self._open_writer)
            await self._on(self._reader, self._open_reader)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._on(self._writer, self._close_conn, "_wconn")
        await self._on(self._reader, self._close_conn, "_rconn")
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    async def _on(self, pool: ThreadPoolExecutor, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    # --- writer thread ---------------------------------------------------------------------

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
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
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.commit()
        self._series = {
            (d, p): i for i, d, p in conn.execute("SELECT id, device, point FROM series")
        }
        self._wconn = conn

    def _open_reader(self) -> None:
        conn = sqlite3.connect(self.path, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        self._rconn = conn

    def _close_conn(self, attr: str) -> None:
        conn = getattr(self, attr)
        if conn is not None:
            conn.close()
            setattr(self, attr, None)

    def _series_id(self, conn: sqlite3.Connection, device: str, point: str) -> int:
        key = (device, point)
        sid = self._series.get(key)
        if sid is None:
            cur = conn.execute("INSERT INTO series (device, point) VALUES (?, ?)", key)
            assert cur.lastrowid is not None
            sid = self._series[key] = cur.lastrowid
        return sid

    def _write(self, readings: Sequence[Reading]) -> None:
        conn = self._wconn
        assert conn is not None, "store is not open"
        rows = [
            (
                self._series_id(conn, r.device, r.point),
                r.ts_wall,
                r.value if not isinstance(r.value, bool) else int(r.value),
                _QUALITY_CODE[r.quality],
            )
            for r in readings
        ]
        with conn:  # one transaction per batch: committed, or not at all
            conn.executemany(
                "INSERT INTO readings (series, ts, value, quality) VALUES (?, ?, ?, ?)", rows
            )
        self.written += len(rows)

    def _prune(self, before_wall: float) -> int:
        conn = self._wconn
        assert conn is not None
        with conn:
            return conn.execute("DELETE FROM readings WHERE ts < ?", (before_wall,)).rowcount

    # --- public, awaited from the loop -----------------------------------------------------

    async def write(self, readings: Sequence[Reading]) -> None:
        """Commit a batch; when this returns, the readings survive a crash of the process."""
        if readings:
            await self._on(self._writer, self._write, readings)

    async def prune(self, retention_s: float) -> int:
        return await self._on(self._writer, self._prune, time.time() - retention_s)

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
            rows = conn.execute(
                "SELECT r.ts, r.value, r.quality FROM readings r JOIN series s ON s.id = r.series "
                "WHERE s.device = ? AND s.point = ? AND r.ts >= ? AND r.ts <= ? "
                "ORDER BY r.ts DESC LIMIT ?",
                (
                    device,
                    point,
                    start if start is not None else float("-inf"),
                    end if end is not None else float("inf"),
                    limit,
                ),
            ).fetchall()
            return [
                StoredReading(device, point, ts, v, _QUALITY_OF[q]) for ts, v, q in reversed(rows)
            ]

        return await self._on(self._reader, query)

    async def count(self) -> int:
        def query() -> int:
            assert self._rconn is not None
            return int(self._rconn.execute("SELECT count(*) FROM readings").fetchone()[0])

        return await self._on(self._reader, query)
