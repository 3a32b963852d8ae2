"""Real-time scheduling of the service's event loop (``[machinery] realtime_priority``).

The axis cycle, the supervisor's E-stop and the lighting engine all run on the service's one
event loop. Under the default time-sharing scheduler, any busy process on the machine can
preempt that loop in the middle of a synchronous step, such as writing the stop frame of every
axis; on a 2-core edge box that also runs drives' simulators, one E-stop in a hundred then
took 40-75 ms to write instead of 2-7 ms (docs/machinery.md, "Figures").

With a priority of 1-98, the event loop's thread runs under ``SCHED_FIFO``, as JACK and
PREEMPT_RT control loops do. Only that thread does:

- worker threads started afterwards (``asyncio.to_thread``: password hashing, exports) are put
  back to the time-sharing scheduler when they start, so a long hash never holds a core at
  real-time priority;
- child processes (the simulators of ``make run``) start under the time-sharing scheduler
  (``SCHED_RESET_ON_FORK``).

Threads that already exist when the priority is raised (the store's writer, the broker) keep
theirs. The kernel's real-time throttling (``kernel.sched_rt_runtime_us``, 95 % by default)
still leaves the other processes some of every core, so a runaway loop cannot lock up the box.

Raising the priority needs ``CAP_SYS_NICE`` (root, or ``LimitRTPRIO=`` in a systemd unit, or
an ``rtprio`` line in ``/etc/security/limits.conf``). Without it the service logs why and
runs on under the time-sharing scheduler: a figure gets worse, the show does not stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

MAX_PRIORITY = 98  # 99 is left to the kernel's own threads (watchdog, migration)


def time_sharing() -> None:
    """Put the calling thread back under the default time-sharing scheduler."""
    if hasattr(os, "sched_setscheduler"):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def raise_priority(priority: int, loop: asyncio.AbstractEventLoop | None = None) -> str:
    """Run the calling thread (the event loop's) under SCHED_FIFO at ``priority``.

    0 leaves the scheduling alone. Returns what was done, for the log; never raises for a
    refusal by the system (the reason is in the returned text).
    """
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"realtime priority {priority}: 0 (off) or 1-{MAX_PRIORITY}")
    if priority == 0:
        return "time-sharing scheduling (realtime_priority = 0)"
    if not hasattr(os, "sched_setscheduler"):
        return "time-sharing scheduling: this system has no SCHED_FIFO"
    if loop is not None:
        # Threads inherit their creator's policy: the default executor's workers must start
        # under time-sharing, so this executor replaces the loop's before the priority rises.
        loop.set_default_executor(
            ThreadPoolExecutor(thread_name_prefix="flytower-worker", initializer=time_sharing)
        )
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except OSError as exc:
        return (
            f"time-sharing scheduling: SCHED_FIFO {priority} refused ({exc.strerror}); "
            "the service needs CAP_SYS_NICE or an rtprio limit (docs/machinery.md)"
        )
    return f"SCHED_FIFO priority {priority} for the event loop"


def describe() -> str:
    """The calling thread's scheduling policy and priority, e.g. ``SCHED_FIFO 20``."""
    if not hasattr(os, "sched_getscheduler"):
        return "unknown"
    policy = os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)
    names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}
    return f"{names.get(policy, str(policy))} {os.sched_getparam(0).sched_priority}"
