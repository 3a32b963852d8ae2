"""Chaos: the disk under the store fills up mid-show, and is freed again.

The demo venue runs as ``flytower run`` with its state folder (``var/``: the telemetry store,
the journal, alarms, maintenance, users) on a tmpfs of its own, which the test fills to the last
byte with a file while the show runs. What must hold:

- the service stays up, and its API keeps answering (sign-in included);
- the show goes on: a GO is carried out while nothing can be written;
- the alarms ``telemetry-store`` and ``journal`` say so within a second or two;
- readings and journal events are held in memory, not lost: once the file is deleted both are
  written, the alarms clear, and the hoist's position series, polled at 10 Hz, has no gap
  across the whole run; the GO is in the journal.

The tmpfs needs root (``make test`` runs as root, as its apt-get does).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.conftest import full_length
from tests.conftest import stop_all
from tests.peers.demo import admin_token, demo_venue

pytestmark = pytest.mark.chaos


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Write a file in ``folder`` until its file system is full."""
    filler = folder / "filler"
    block = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        with contextlib.suppress(OSError):  # the last pages of the last block
            while True:
                f.write(b"\0" * 4096)
    return filler


def alarms(c: httpx.Client) -> dict[str, dict[str, Any]]:
    return {a["rule"]: a for a in c.get("/api/v1/alarms").json()["alarms"]}


def metric(c: httpx.Client, name: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def wait(what: str, predicate: Any, timeout_s: float = 30) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def series_ts(store: Path, device: str, point: str) -> list[float]:
    with contextlib.closing(sqlite3.connect(store)) as db:
        sid = db.execute(
            "SELECT id FROM series WHERE device = ? AND point = ?", (device, point)
        ).fetchone()[0]
        rows = db.execute(
            "SELECT ts FROM readings WHERE series = ? UNION SELECT ts FROM inbox WHERE series = ?",
            (sid, sid),
        ).fetchall()
    return sorted(ts for (ts,) in rows)


@pytest.mark.timeout(600)
def test_a_full_disk_loses_no_reading_and_no_event(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    full_s = 30.0 if full_length(request.config) else 8.0
    if os.geteuid() != 0:
        pytest.fail("a tmpfs needs root: run as root, as make test does")
    demo = demo_venue(tmp_path / "demo")
    with tmpfs(demo.folder / "var", 64) as var:
        token = admin_token(demo.venue)
        demo.start()
        try:
            with demo.client(token) as c:
                wait("readings stored", lambda: metric(c, "flytower_store_written_total") > 1000)
                filler = fill(var)
                full_at = time.monotonic()
                t_store = wait(
                    "the telemetry-store alarm",
                    lambda: alarms(c).get("telemetry-store", {}).get("active", False),
                )
                r = c.post("/api/v1/playback/go", json={})
                assert r.status_code == 200, r.text
                t_journal = wait(
                    "the journal alarm", lambda: alarms(c).get("journal", {}).get("active", False)
                )
                time.sleep(max(0.0, full_s - (time.monotonic() - full_at)))
                held = metric(c, "flytower_store_held")
                assert metric(c, "flytower_store_failing") == 1
                print(
                    f"\nfull disk: telemetry-store alarm after {t_store:.2f} s, journal alarm "
                    f"after {t_journal:.2f} s; {held:.0f} readings held after {full_s:g} s"
                )
                filler.unlink()
                t_back = wait(
                    "the store and the journal writing again",
                    lambda: (
                        metric(c, "flytower_store_failing") == 0
                        and metric(c, "flytower_journal_failing") == 0
                    ),
                )
                print(f"writing again {t_back:.2f} s after the file was deleted")
                wait(
                    "both alarms cleared",
                    lambda: (
                        not any(
                            alarms(c).get(rule, {}).get("active", False)
                            for rule in ("telemetry-store", "journal")
                        )
                    ),
                )
                assert metric(c, "flytower_store_dropped_total") == 0
                assert metric(c, "flytower_journal_dropped_total") == 0
                events = c.get("/api/v1/journal", params={"limit": 10000}).json()["events"]
                go = [e for e in events if e["command"] == "go"]
                assert [e["result"] for e in go] == ["ok"], go
        finally:
            assert demo.proc is not None
            stop_all([demo.proc])
        ts = series_ts(var / "demo-telemetry.sqlite3", "hoist-1", "position")
    gaps = [b - a for a, b in itertools.pairwise(ts)]
    print(
        f"hoist-1 position: {len(ts)} readings over {ts[-1] - ts[0]:.1f} s, "
        f"largest gap {max(gaps):.3f} s"
    )
    assert max(gaps) < 0.5, "readings lost while the disk was full"
