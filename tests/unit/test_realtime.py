"""edge/realtime.py: the event loop's thread under SCHED_FIFO, and nothing else.

Each case runs in a child interpreter, so that pytest's own thread keeps its scheduling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from edge import realtime

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setscheduler"), reason="no POSIX scheduling on this system"
)

CHILD = textwrap.dedent(
    """
    import asyncio, json, subprocess, sys
    from edge import realtime

    async def main():
        done = realtime.raise_priority(int(sys.argv[1]), asyncio.get_running_loop())
        worker = await asyncio.to_thread(realtime.describe)
        child = subprocess.run(
            [sys.executable, "-c", "from edge import realtime; print(realtime.describe())"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        print(json.dumps({"done": done, "loop": realtime.describe(), "worker": worker,
                          "child": child}))

    asyncio.run(main())
    """
)


def _child(priority: int) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(priority)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    result: dict[str, str] = json.loads(out.splitlines()[-1])
    return result


def _permitted() -> bool:
    try:
        subprocess.run(["chrt", "-f", "1", "true"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


def test_off_leaves_time_sharing() -> None:
    r = _child(0)
    assert r["loop"] == r["worker"] == r["child"] == "SCHED_OTHER 0"
    assert "realtime_priority = 0" in r["done"]


def test_only_the_loop_thread_runs_fifo() -> None:
    r = _child(20)
    if not _permitted():  # no CAP_SYS_NICE: the service says why and runs on
        assert "refused" in r["done"] and "CAP_SYS_NICE" in r["done"]
        assert r["loop"] == "SCHED_OTHER 0"
        return
    assert r["done"] == "SCHED_FIFO priority 20 for the event loop"
    assert r["loop"] == "SCHED_FIFO 20"
    # a worker thread started later, and a child process, are back under time-sharing
    assert r["worker"] == "SCHED_OTHER 0"
    assert r["child"] == "SCHED_OTHER 0"


@pytest.mark.parametrize("bad", [-1, 99, 1000])
def test_out_of_range_priority_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="0 \\(off\\) or 1-98"):
        realtime.raise_priority(bad)


def test_venue_rejects_out_of_range_priority() -> None:
    from pydantic import ValidationError

    from controller.motion.config import MachineryConfig

    assert MachineryConfig(realtime_priority=20).realtime_priority == 20
    for bad in (-1, 99, "high", 1.5):
        with pytest.raises(ValidationError, match="realtime_priority"):
            MachineryConfig.model_validate({"realtime_priority": bad})
