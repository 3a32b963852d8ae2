"""Learning at start from the journal and the telemetry store (edge.machinery.learn), on real
SQLite files: what a service restarted on the same venue knows of its axes."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from controller.journal import JournalEvent, Result, SourceKind
from controller.motion.learning import MIN_SAMPLES
from drivers.model import Reading
from edge import machinery
from edge.journal import JournalStore
from edge.store import TelemetryStore
from tests.unit.test_motion_supervisor import rig


def _done(t: float, errors: object) -> JournalEvent:
    return JournalEvent(
        SourceKind.USER,
        "rest 127.0.0.1:1",
        "move.done",
        Result.OK,
        t,
        targets=("hoist-1", "hoist-2"),
        args={"move": 1, "following_error": errors},
    )


async def test_following_errors_come_back_from_the_journal_and_motion_from_telemetry(
    tmp_path: Path,
) -> None:
    r = rig()
    now = time.time()
    async with (
        JournalStore(tmp_path / "journal.db") as journal,
        TelemetryStore(tmp_path / "telemetry.db", maintain=False) as store,
    ):
        events = [_done(now - 3600 + i, {"hoist-1": 20.0 + i % 3}) for i in range(MIN_SAMPLES)]
        # hostile or foreign args are skipped, never a reason not to start
        events += [_done(now - 10, "nonsense"), _done(now - 9, {"hoist-1": "x"})]
        await journal.append_many(events)
        # 10 Hz telemetry of a 1 m/s run with a 500 mm/s^2 ramp
        rows = []
        for i in range(400):
            t = now - 600 + i / 10
            v = min(1000.0, 500.0 * i / 10)
            rows += [
                Reading("hoist-1", "velocity", v, t, t),
                Reading("hoist-1", "load", 250.0, t, t),
            ]
        await store.write(rows)
        service = SimpleNamespace(supervisor=r.sup, journal=journal, store=store)
        await machinery.learn(service)  # type: ignore[arg-type]
    shown = r.sup.learning.shown("hoist-1")
    assert shown["following_error"] is not None and 20.0 <= shown["following_error"] <= 22.0
    assert shown["speed"] is not None and 990 <= shown["speed"] <= 1000
    assert shown["load_moving"] == 250.0
    assert r.sup.learning.shown("hoist-2")["following_error"] is None
    await r.sup.close()
