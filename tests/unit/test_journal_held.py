"""The journal while its file takes no writes (a full disk): events held in memory, in order,
the caller told at once, everything written once the file takes writes again; what is left at
close is said. The file's refusal is SQLite's own (``database or disk is full``), raised by the
writer for as long as the test says; the end-to-end proof on a real full disk is
tests/chaos/test_disk_full.py."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from controller.journal import JournalEvent, JournalHeld, Origin, Result, SourceKind, journalled
from edge import journal as edge_journal
from edge.journal import JournalQuery, JournalStore


def event(n: int) -> JournalEvent:
    now = time.time()
    return JournalEvent(SourceKind.SYSTEM, "test", f"cmd.{n}", Result.OK, now, now)


class Full:
    """Makes ``store._write`` refuse as a full disk does while ``full`` is set."""

    def __init__(self, store: JournalStore) -> None:
        self.full = False
        real = store._write

        def write(events: list[JournalEvent]) -> list[int]:
            if self.full:
                raise sqlite3.OperationalError("database or disk is full")
            return real(events)

        store._write = write  # type: ignore[method-assign]


async def test_held_in_order_and_written_when_the_file_takes_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge_journal, "RETRY_S", 0.05)
    states: list[str | None] = []
    async with JournalStore(tmp_path / "j.sqlite3") as store:
        store.on_state = lambda why, held: states.append(why)
        disk = Full(store)
        await store.append(event(0))
        disk.full = True
        with pytest.raises(JournalHeld, match="database or disk is full"):
            await store.append(event(1))
        assert store.failing == "database or disk is full"
        # Once the journal is known to fail, a caller is told at once.
        t0 = time.monotonic()
        for n in range(2, 6):
            with pytest.raises(JournalHeld):
                await store.append(event(n))
        assert time.monotonic() - t0 < 0.5
        # A command carried out meanwhile still returns its result.
        origin = Origin(SourceKind.USER, "desk")
        assert await journalled(store, origin, "cmd.6", lambda: asyncio.sleep(0, "done")) == "done"
        disk.full = False
        with contextlib.suppress(JournalHeld):  # told at once until the next try succeeds
            await store.append(event(7))
        for _ in range(100):
            if store.failing is None:
                break
            await asyncio.sleep(0.02)
        assert store.failing is None
        await store.append(event(8))  # written, as ever
        got, _ = await store.query(JournalQuery(limit=100))
    assert [e.event.command for e in got] == [f"cmd.{n}" for n in range(9)]
    assert states == ["database or disk is full", None]
    assert store.dropped == 0


async def test_beyond_the_limit_the_oldest_held_go_and_at_close_the_rest_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(edge_journal, "RETRY_S", 0.05)
    async with JournalStore(tmp_path / "j.sqlite3") as store:
        store.held_max = 3
        disk = Full(store)
        disk.full = True
        for n in range(5):
            with pytest.raises(JournalHeld):
                await store.append(event(n))
        assert store.dropped == 2
    assert store.dropped == 5  # the 3 still held at close
    assert "closing with 3 event(s) that could not be written" in caplog.text
