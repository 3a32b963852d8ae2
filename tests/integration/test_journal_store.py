"""The journal on a real SQLite file: round trips, group commit, append-only triggers, the
retention path, CSV and Parquet export, the schema guard, and ``kill -9`` of an appender."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from controller.journal import JournalEvent, Origin, Result, SourceKind, journalled
from drivers.model import CommandError
from edge.journal import (
    _SELECT_JSON,
    COLUMNS,
    SCHEMA_VERSION,
    JournalQuery,
    JournalStore,
    export_csv,
    export_parquet,
    journal_path,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


def ev(
    t: float,
    targets: tuple[str, ...] = ("hoist-1",),
    kind: SourceKind = SourceKind.USER,
    command: str = "device.move_to",
    result: Result = Result.OK,
    **kw: object,
) -> JournalEvent:
    return JournalEvent(kind, "rest 127.0.0.1:1", command, result, t, targets=targets, **kw)  # type: ignore[arg-type]


def raw(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(sql, args).fetchall()


async def test_append_query_round_trip_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "var" / "j.sqlite3"
    full = JournalEvent(
        SourceKind.FOLLOW,
        "follow of cue main/12",
        "go",
        Result.REFUSED,
        T0,
        executed=None,
        duration_s=0.0012,
        reason="GO within the 250 ms debounce",
        cue_list="main",
        cue="12.5",
        targets=("hoist-1", "par-3"),
        args={"fade": 2.5, "name": "ünïcode ✓", "nested": {"a": [1, None]}},
    )
    async with JournalStore(path) as j:
        assert await j.append(full) == 1
        assert await j.append(ev(T0 + 1)) == 2
        events, more = await j.query(JournalQuery())
    assert not more
    assert [e.seq for e in events] == [1, 2]
    assert events[0].event == full
    assert raw(path, "PRAGMA journal_mode") == [("wal",)]
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert raw(path, "SELECT target, seq FROM journal_target ORDER BY seq, target") == [
        ("hoist-1", 1),
        ("par-3", 1),
        ("hoist-1", 2),
    ]


async def test_window_device_source_and_limit(tmp_path: Path) -> None:
    events = [ev(T0 + i, targets=(f"hoist-{i % 3}",)) for i in range(30)]
    events += [ev(T0 + 100 + i, targets=(), kind=SourceKind.OSC) for i in range(5)]
    async with JournalStore(tmp_path / "j.sqlite3") as j:
        assert await j.append_many(events) == list(range(1, 36))
        got, more = await j.query(JournalQuery(since=T0 + 10, until=T0 + 19))
        assert [e.event.requested for e in got] == [T0 + i for i in range(10, 20)]  # inclusive
        assert not more
        got, more = await j.query(JournalQuery(device="hoist-1"))
        assert [e.seq for e in got] == [i + 1 for i in range(30) if i % 3 == 1]
        got, more = await j.query(JournalQuery(device="hoist-1", limit=3))
        assert [e.seq for e in got] == [23, 26, 29] and more  # the latest, oldest first
        got, _ = await j.query(JournalQuery(device="hoist-1", since=T0 + 20, until=T0 + 25))
        assert [e.seq for e in got] == [23, 26]
        got, _ = await j.query(JournalQuery(source=SourceKind.OSC))
        assert [e.seq for e in got] == [31, 32, 33, 34, 35]
        got, _ = await j.query(JournalQuery(source=SourceKind.OSC, device="hoist-1"))
        assert got == []
        got, _ = await j.query(JournalQuery(device="nobody"))
        assert got == []
        got, more = await j.query(JournalQuery(limit=None))
        assert len(got) == 35 and not more


async def test_concurrent_appends_share_a_commit_and_keep_sequence(tmp_path: Path) -> None:
    async with JournalStore(tmp_path / "j.sqlite3") as j:
        seqs = await asyncio.gather(*(j.append(ev(T0 + i)) for i in range(200)))
        assert sorted(seqs) == list(range(1, 201))
        assert j.appended == 200
        assert j.commits < 200  # group commit: fewer transactions than events
        got, _ = await j.query(JournalQuery(limit=None))
        assert {e.seq: e.event.requested for e in got} == {s: T0 + i for i, s in enumerate(seqs)}


async def test_sequence_continues_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    async with JournalStore(path) as j:
        await j.append_many([ev(T0 + i) for i in range(5)])
    async with JournalStore(path) as j:
        assert await j.append(ev(T0 + 5)) == 6
        assert await j.count() == 6


async def test_update_and_delete_are_refused_by_triggers(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    async with JournalStore(path) as j:
        await j.append_many([ev(T0), ev(T0 + 1)])
    with contextlib.closing(sqlite3.connect(path)) as db:
        for sql in (
            "UPDATE journal SET result = 'ok' WHERE seq = 1",
            "UPDATE journal SET ts = 0",
            "DELETE FROM journal WHERE seq = 1",
            "DELETE FROM journal",
            "UPDATE journal_target SET target = 'x'",
            "DELETE FROM journal_target",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(sql)
        db.rollback()
    assert raw(path, "SELECT count(*) FROM journal") == [(2,)]
    assert raw(path, "SELECT count(*) FROM journal_target") == [(2,)]


async def test_prune_is_the_only_delete_and_it_is_journalled(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    async with JournalStore(path) as j:
        await j.append_many([ev(T0 + i) for i in range(10)])
        assert await j.prune(T0 + 4, who="admin cli") == 4
        got, _ = await j.query(JournalQuery(limit=None))
        assert [e.seq for e in got[:-1]] == list(range(5, 11))
        last = got[-1]
        assert last.seq == 11  # numbering goes on: nothing is ever renumbered or reused
        assert (last.event.command, last.event.kind) == ("journal.prune", SourceKind.SYSTEM)
        assert last.event.args == {"before": T0 + 4, "deleted": 4}
        assert last.event.source == "admin cli"
        with pytest.raises(ValueError, match="finite"):
            await j.prune(float("nan"), who="x")
    # The triggers are back once the prune committed.
    with contextlib.closing(sqlite3.connect(path)) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("DELETE FROM journal")
    assert raw(path, "SELECT count(*) FROM journal_target") == [(6,)]


async def test_journalled_records_ok_refused_failed_and_passes_the_outcome_on(
    tmp_path: Path,
) -> None:
    origin = Origin(SourceKind.SCRIPT, "show.py")

    async def ok() -> int:
        return 42

    async def refuse() -> int:
        raise CommandError("position 99999 is above the maximum 12000")

    async def fail() -> int:
        raise OSError("broken pipe")

    async with JournalStore(tmp_path / "j.sqlite3") as j:
        assert await journalled(j, origin, "device.move_to", ok, targets=["h"]) == 42
        with pytest.raises(CommandError):
            await journalled(j, origin, "device.move_to", refuse, targets=["h"], args={"p": 1})
        with pytest.raises(OSError, match="broken pipe"):
            await journalled(j, origin, "go", fail, cue_list="main", cue="3")
        got, _ = await j.query(JournalQuery())
    a, b, c = (e.event for e in got)
    assert (a.result, a.reason, a.targets) == (Result.OK, "", ("h",))
    assert a.executed is not None and a.duration_s is not None and a.executed >= a.requested
    assert (b.result, b.executed, b.args) == (Result.REFUSED, None, {"p": 1})
    assert b.reason == "position 99999 is above the maximum 12000"
    assert (c.result, c.cue_list, c.cue) == (Result.FAILED, "main", "3")
    assert c.reason == "OSError: broken pipe"
    assert all(e.kind is SourceKind.SCRIPT and e.source == "show.py" for e in (a, b, c))


async def test_a_cancelled_caller_still_gets_its_event_journalled(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(30)

    async with JournalStore(tmp_path / "j.sqlite3") as j:
        task = asyncio.create_task(journalled(j, Origin(SourceKind.USER), "device.stop", slow))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        got, _ = await j.query(JournalQuery())
    assert [(e.event.result, e.event.reason[:9]) for e in got] == [(Result.FAILED, "cancelled")]


async def test_args_that_are_not_json_are_kept_as_text(tmp_path: Path) -> None:
    async with JournalStore(tmp_path / "j.sqlite3") as j:
        await j.append(ev(T0, args={"nan": float("nan"), "blob": b"\x00\xff"}))
        got, _ = await j.query(JournalQuery())
    assert got[0].event.args == {"nan": "nan", "blob": "b'\\x00\\xff'"}


async def test_csv_and_parquet_export_round_trip(tmp_path: Path) -> None:
    events = [
        ev(T0 + i, targets=(f"h{i % 2}", "x"), args={"i": i, "s": 'a,"b"\nc'}) for i in range(12)
    ]
    events.append(ev(T0 + 50, targets=(), result=Result.FAILED, reason="é,\r\n", cue="1.5"))
    async with JournalStore(tmp_path / "j.sqlite3") as j:
        await j.append_many(events)
        q = JournalQuery(limit=None)
        text = b"".join([c async for c in export_csv(j, q)]).decode()
        parquet = b"".join([c async for c in export_parquet(j, q)])
        dev = b"".join([c async for c in export_csv(j, JournalQuery(device="h1", limit=None))])
        first = b"".join([c async for c in export_csv(j, JournalQuery(limit=2))])
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert list(rows[0]) == list(COLUMNS)
    assert [int(r["seq"]) for r in rows] == list(range(1, 14))
    assert [float(r["ts"]) for r in rows] == [e.requested for e in events]
    assert [json.loads(r["args"]) for r in rows[:12]] == [dict(e.args) for e in events[:12]]
    assert json.loads(rows[0]["targets"]) == ["h0", "x"]
    assert (rows[12]["reason"], rows[12]["cue"], rows[12]["executed"]) == ("é,\r\n", "1.5", "")
    assert len(list(csv.DictReader(io.StringIO(dev.decode(), newline="")))) == 6
    assert len(list(csv.DictReader(io.StringIO(first.decode(), newline="")))) == 2  # first N

    table = pq.read_table(io.BytesIO(parquet))
    assert table.column_names == list(COLUMNS)
    back = table.to_pylist()
    assert [r["seq"] for r in back] == list(range(1, 14))
    assert [r["ts"].timestamp() for r in back] == pytest.approx([e.requested for e in events])
    assert back[0]["targets"] == ["h0", "x"] and back[12]["targets"] == []
    assert back[12]["reason"] == "é,\r\n" and back[12]["executed"] is None
    assert json.loads(back[3]["args"]) == {"i": 3, "s": 'a,"b"\nc'}


async def test_an_empty_export_is_a_header_or_an_empty_table(tmp_path: Path) -> None:
    async with JournalStore(tmp_path / "j.sqlite3") as j:
        text = b"".join([c async for c in export_csv(j, JournalQuery(limit=None))])
        parquet = b"".join([c async for c in export_parquet(j, JournalQuery(limit=None))])
    assert text.decode() == ",".join(COLUMNS) + "\r\n"
    assert pq.read_table(io.BytesIO(parquet)).num_rows == 0


async def test_a_journal_from_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version=99")
        db.commit()
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match=r"journal schema 99 is newer"):
        async with JournalStore(path):
            pass
    assert path.read_bytes() == before


def test_the_journal_has_its_own_file_next_to_the_store() -> None:
    assert journal_path(Path("var/telemetry.sqlite3")) == Path("var/telemetry.journal.sqlite3")
    assert journal_path(Path("var/fly")) == Path("var/fly.journal.sqlite3")


APPENDER = """
import asyncio, sys, time
from pathlib import Path
from controller.journal import JournalEvent, Result, SourceKind
from edge.journal import JournalStore

async def main() -> None:
    async with JournalStore(Path(sys.argv[1])) as journal:
        n = 0
        while True:
            # Like a show: a few concurrent appends, each acknowledged on its own.
            batch = [
                JournalEvent(SourceKind.WAIT, f"wait of cue main/{n + i}", "go", Result.OK,
                             time.time(), cue_list="main", cue=str(n + i), targets=("hoist-1",))
                for i in range(4)
            ]
            seqs = await asyncio.gather(*(journal.append(e) for e in batch))
            n += len(batch)
            print(max(seqs), flush=True)

asyncio.run(main())
"""


async def test_every_acknowledged_event_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        APPENDER,
        str(path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    acked = 0
    try:
        assert proc.stdout is not None
        while acked < 400:
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            assert line, (await proc.stderr.read()) if proc.stderr else b""
            acked = int(line)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: it never stops appending
        await asyncio.wait_for(proc.wait(), 5)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    async with JournalStore(path) as j:
        n = await j.count()
        got, _ = await j.query(JournalQuery(limit=None))
        assert await j.append(ev(T0)) == n + 1  # numbering goes on after the crash
    assert n >= acked, f"{acked} events were acknowledged, {n} survived"
    assert [e.seq for e in got] == list(range(1, n + 1))  # gap-free
    assert [e.event.cue for e in got] == [str(i) for i in range(n)]  # in order, none twice
    assert raw(path, "PRAGMA integrity_check") == [("ok",)]
    assert raw(path, "SELECT count(*) FROM journal_target") == [(n + 1,)]


async def test_query_json_is_the_same_events_as_query(tmp_path: Path) -> None:
    events = [
        ev(T0 + 0.123456, args={"s": 'q"\\\n\x01', "f": 1.5}, reason='é \t " \\ ✓'),
        ev(T0 + 1, targets=(), result=Result.FAILED, cue_list="main", cue="1.5"),
        ev(T0 + 2, targets=("a", "b"), executed=T0 + 2.5, duration_s=0.000123),
    ]
    async with JournalStore(tmp_path / "j.sqlite3") as j:
        await j.append_many(events)
        for q in (JournalQuery(), JournalQuery(device="a"), JournalQuery(limit=2)):
            objects, more = await j.query(q)
            texts, more_json = await j.query_json(q)
            assert more == more_json
            parsed = [json.loads(t) for t in texts]
            expected = [e.as_dict() for e in objects]
            for got, want in zip(parsed, expected, strict=True):
                for key in ("ts", "executed"):
                    if want[key] is None:
                        assert got[key] is None
                    else:
                        assert got[key] == pytest.approx(want[key], abs=1e-6)
                        got[key] = want[key]
                assert got == want


async def test_a_device_query_is_covered_by_the_side_table_and_matches_query(
    tmp_path: Path,
) -> None:
    events = [
        ev(T0 + i, targets=("a", "b", "a") if i % 3 == 0 else ("a",), kind=kind)
        for i, kind in enumerate([SourceKind.USER, SourceKind.OSC, SourceKind.FOLLOW] * 4)
    ]
    path = tmp_path / "j.sqlite3"
    async with JournalStore(path) as j:
        await j.append_many(events)
        await j.append(ev(T0 + 99, targets=("b",), args={"x": [1, 2]}))
        queries = [
            JournalQuery(device="a"),
            JournalQuery(device="b", limit=None),
            JournalQuery(device="a", since=T0 + 2, until=T0 + 7),
            JournalQuery(device="a", source=SourceKind.OSC, limit=2),
            JournalQuery(device="nobody"),
        ]
        for q in queries:
            objects, more = await j.query(q)
            texts, more_json = await j.query_json(q)
            assert more == more_json
            assert [json.loads(t)["seq"] for t in texts] == [e.seq for e in objects]
            sql, params = q.sql(newest_first=True, select=_SELECT_JSON)
            # One range of the side table's key, in order: no journal row, no sort.
            plan = [str(r[3]) for r in raw(path, "EXPLAIN QUERY PLAN " + sql, *params)]
            assert "FROM journal_target t WHERE" in sql and "j." not in sql
            assert [p.split(" (")[0] for p in plan] == ["SEARCH t USING PRIMARY KEY"], plan
    # A target named twice in one event is one row of the side table.
    assert raw(path, "SELECT count(*) FROM journal_target WHERE seq = 1") == [(2,)]


V1_SCHEMA = """
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, executed REAL, duration_s REAL,
    source_kind TEXT NOT NULL, source TEXT NOT NULL, command TEXT NOT NULL, cue_list TEXT,
    cue TEXT, targets TEXT NOT NULL,
    result TEXT NOT NULL CHECK (result IN ('ok', 'refused', 'failed')),
    reason TEXT NOT NULL, args TEXT NOT NULL
);
CREATE INDEX journal_ts ON journal (ts);
CREATE INDEX journal_source_ts ON journal (source_kind, ts);
CREATE TABLE journal_target (
    target TEXT NOT NULL, ts REAL NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (target, ts, seq)
) WITHOUT ROWID;
CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal
BEGIN SELECT RAISE(ABORT, 'the journal is append-only: events cannot be deleted'); END;
CREATE TRIGGER journal_target_no_delete BEFORE DELETE ON journal_target
BEGIN SELECT RAISE(ABORT, 'the journal is append-only: events cannot be deleted'); END;
INSERT INTO journal VALUES
    (1, 1700000000.5, NULL, NULL, 'user', 'rest', 'device.stop', NULL, NULL, '["a","b"]',
     'refused', 'no', '{}'),
    (2, 1700000001.0, 1700000001.25, 0.25, 'osc', 'osc x', 'go', 'main', '1.5', '["a"]',
     'ok', '', '{"p":1}'),
    (3, 1700000002.0, NULL, NULL, 'system', 'node', 'service.start', NULL, NULL, '[]',
     'ok', '', '{}');
INSERT INTO journal_target VALUES ('a', 1700000000.5, 1), ('b', 1700000000.5, 1),
    ('a', 1700000001.0, 2);
PRAGMA user_version=1;
"""


async def test_a_schema_1_journal_is_migrated_on_open_without_touching_events(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(V1_SCHEMA)
    events_before = raw(path, "SELECT * FROM journal ORDER BY seq")
    async with JournalStore(path) as j:
        assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert raw(path, "SELECT * FROM journal ORDER BY seq") == events_before
        for q in (JournalQuery(device="a"), JournalQuery(device="b")):
            objects, _ = await j.query(q)
            texts, _ = await j.query_json(q)
            assert [json.loads(t) for t in texts] == [e.as_dict() for e in objects]
        assert [e.seq for e in (await j.query(JournalQuery(device="a")))[0]] == [1, 2]
        assert await j.append(ev(T0 + 5, targets=("b",))) == 4  # numbering goes on
        assert [
            json.loads(t)["seq"] for t in (await j.query_json(JournalQuery(device="b")))[0]
        ] == [
            1,
            4,
        ]
    with contextlib.closing(sqlite3.connect(path)) as db:  # append-only holds after migrating
        for sql in ("DELETE FROM journal_target", "UPDATE journal_target SET doc = ''"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(sql)
    assert raw(path, "PRAGMA integrity_check") == [("ok",)]
    async with JournalStore(path) as j:  # reopening a migrated file changes nothing
        assert await j.count() == 4


async def test_a_schema_1_journal_that_cannot_be_migrated_is_refused_untouched(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(V1_SCHEMA.replace("""'["a"]'""", """'["a"'"""))  # targets not JSON
    before = raw(path, "SELECT * FROM sqlite_master"), raw(path, "SELECT * FROM journal")
    with pytest.raises(RuntimeError, match=r"cannot migrate journal schema 1 to 2 \(.*JSON"):
        async with JournalStore(path):
            pass
    assert (raw(path, "SELECT * FROM sqlite_master"), raw(path, "SELECT * FROM journal")) == before
    assert raw(path, "PRAGMA user_version") == [(1,)]
