"""A wall clock that jumps, for the chaos suite (tests/chaos/test_clock_jump.py).

On ``PYTHONPATH``, this runs before anything else in a Python process. ``time.time`` and
``time.time_ns`` then add the offset (seconds, a float) written in the file named by
``FLYTOWER_CLOCK_OFFSET_FILE``, read again at most every 0.1 s of the monotonic clock: writing
the file steps the process's wall clock as an NTP step or an operator's ``date -s`` steps a
machine's, while ``time.monotonic`` and ``time.perf_counter`` go on untouched, as they do then.
(libfaketime would do it in libc, but its ``clock_nanosleep`` fails with EINVAL under Python's
``time.sleep`` when the monotonic clock is left alone.) Code that reads the clock through C
(``datetime.now``) does not see the jump.
"""

from __future__ import annotations

import os
import time

_FILE = os.environ.get("FLYTOWER_CLOCK_OFFSET_FILE")

if _FILE:
    _real_time, _real_time_ns, _mono = time.time, time.time_ns, time.monotonic
    _state = {"offset": 0.0, "read": -1.0}

    def _offset() -> float:
        now = _mono()
        if now - _state["read"] >= 0.1:
            _state["read"] = now
            try:
                with open(_FILE) as f:
                    _state["offset"] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return _state["offset"]

    def _time() -> float:
        return _real_time() + _offset()

    def _time_ns() -> int:
        return _real_time_ns() + int(_offset() * 1e9)

    time.time = _time
    time.time_ns = _time_ns
