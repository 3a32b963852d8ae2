"""`flytower journal prune`: the administrator's one deleting path, as a real process."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from controller.journal import JournalEvent, Result, SourceKind
from edge.config import load_venue
from edge.journal import JournalQuery, JournalStore, journal_path
from tests.conftest import free_port, write_venue

pytestmark = pytest.mark.integration


def flytower(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=60
    )


def event(requested: float, command: str) -> JournalEvent:
    return JournalEvent(SourceKind.USER, "test", command, Result.OK, requested, targets=("h",))


async def test_prune_deletes_what_is_older_and_journals_itself(tmp_path: Path) -> None:
    venue = write_venue(tmp_path, [{"id": "h", "port": free_port()}])
    path = journal_path(load_venue(venue).store_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = dt.datetime(2025, 1, 10, tzinfo=dt.UTC).timestamp()
    new = dt.datetime(2025, 3, 10, tzinfo=dt.UTC).timestamp()
    async with JournalStore(path) as journal:
        await journal.append_many([event(old, "device.move_to"), event(new, "device.stop")])

    done = flytower("journal", "prune", str(venue), "--before", "2025-02-01T00:00:00+00:00")
    assert done.returncode == 0, done.stderr
    assert "1 event(s) requested before 2025-02-01T00:00:00+00:00 deleted" in done.stdout

    async with JournalStore(path) as journal:
        kept, _ = await journal.query(JournalQuery(limit=None))
    commands = [s.event.command for s in kept]
    assert commands == ["device.stop", "journal.prune"]
    assert kept[-1].event.source.startswith("cli ")


@pytest.mark.parametrize(
    ("before", "message"),
    [("last tuesday", "--before: "), ("2025-13-01", "--before: ")],
)
async def test_a_bad_date_is_refused_and_nothing_is_deleted(
    tmp_path: Path, before: str, message: str
) -> None:
    venue = write_venue(tmp_path, [{"id": "h", "port": free_port()}])
    path = journal_path(load_venue(venue).store_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    async with JournalStore(path) as journal:
        await journal.append(event(1.0, "device.stop"))
    done = flytower("journal", "prune", str(venue), "--before", before)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr
    async with JournalStore(path) as journal:
        kept, _ = await journal.query(JournalQuery(limit=None))
    assert len(kept) == 1


def test_no_journal_is_an_error(tmp_path: Path) -> None:
    venue = write_venue(tmp_path, [{"id": "h", "port": free_port()}])
    done = flytower("journal", "prune", str(venue), "--before", "2025-01-01")
    assert done.returncode == 1 and "no journal" in done.stderr
