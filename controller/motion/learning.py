"""What each axis has shown it can do, learnt from its statuses (live, and from telemetry history
at start): acceleration, speed, following error and load. A planned move that asks for more than
the axis has shown is not refused — the configured limits decide that — but warned about, with
the figures, so an operator knows the move is new ground for this machine.

Estimates are robust on purpose: acceleration is the change of the reported velocity between
statuses at least ``MIN_DT_S`` apart, and the figure kept is a high percentile (``PERCENTILE``)
of a bounded window of samples, so one glitched status does not teach the axis to fly. Nothing
is claimed before ``MIN_SAMPLES`` samples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

WINDOW = 20_000  # samples kept per figure and axis
MIN_SAMPLES = 50
PERCENTILE = 99.0
MIN_DT_S = 0.1  # a derivative over 5 cycles at 50 Hz: reading noise divided by 5
MARGIN = 1.10  # a plan within 10 % of what was shown is not new ground
MOVING = 1.0  # |velocity| above which the axis counts as moving (its unit/s)
CACHE_S = 5.0


class Window:
    """The last ``size`` samples of one figure, as float32 in one array allocated at the first
    sample: 4 bytes a sample where a deque of floats costs 32 (the large venue's 64 axes kept
    up to 200 MB that way, filling for hours: bench_soak). The order of the samples is not
    kept; a percentile does not need it."""

    __slots__ = ("_buf", "_i", "_n", "_size")

    def __init__(self, size: int = WINDOW) -> None:
        self._size = size
        self._buf: np.ndarray | None = None
        self._i = self._n = 0

    def append(self, value: float) -> None:
        if self._buf is None:
            self._buf = np.empty(self._size, np.float32)
        self._buf[self._i] = value
        self._i = (self._i + 1) % self._size
        self._n = min(self._n + 1, self._size)

    def __len__(self) -> int:
        return self._n

    def values(self) -> np.ndarray:
        return np.empty(0) if self._buf is None else self._buf[: self._n].astype(np.float64)


@dataclass
class AxisRecord:
    acceleration: Window = field(default_factory=Window)
    speed: Window = field(default_factory=Window)
    following_error: Window = field(default_factory=Window)
    load_moving: Window = field(default_factory=Window)
    load_static: Window = field(default_factory=Window)
    last: tuple[float, float] | None = None  # (t, velocity) of the last status used


def _figure(samples: Window) -> float | None:
    if len(samples) < MIN_SAMPLES:
        return None
    return float(np.percentile(samples.values(), PERCENTILE))


class Learning:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.axes: dict[str, AxisRecord] = {}
        self.clock = clock
        # the figures of each axis, recomputed at most every CACHE_S (a percentile over 20 000
        # samples is ~0.1 ms; a snapshot of 64 axes at 10 Hz would spend a core on them)
        self._cache: dict[str, tuple[float, dict[str, float | None]]] = {}

    def observe(
        self,
        axis: str,
        t: float,
        velocity: float | None,
        load: float | None = None,
        following_error: float | None = None,
    ) -> None:
        """One status of ``axis`` at monotonic (or epoch) time ``t``."""
        rec = self.axes.setdefault(axis, AxisRecord())
        if velocity is None or not math.isfinite(velocity):
            rec.last = None
            return
        moving = abs(velocity) > MOVING
        if moving:
            rec.speed.append(abs(velocity))
        if load is not None and math.isfinite(load):
            (rec.load_moving if moving else rec.load_static).append(load)
        if following_error is not None and math.isfinite(following_error):
            rec.following_error.append(abs(following_error))
        if rec.last is None:
            rec.last = (t, velocity)
            return
        t0, v0 = rec.last
        dt = t - t0
        if dt < MIN_DT_S:
            return  # too close to the last one: wait for a longer baseline
        if dt < 1.0 and (moving or abs(v0) > MOVING):
            rec.acceleration.append(abs(velocity - v0) / dt)
        rec.last = (t, velocity)

    def learn(self, axis: str, history: Iterable[tuple[float, float | None, float | None]]) -> None:
        """Feed ``(t, velocity, load)`` rows in time order (the telemetry store's history)."""
        for t, v, load in history:
            self.observe(axis, t, v, load)
        rec = self.axes.get(axis)
        if rec is not None:
            rec.last = None  # history and live statuses do not make one derivative
        self._cache.pop(axis, None)

    def learn_moves(self, axis: str, following_errors: Iterable[float]) -> None:
        """Feed the worst following error of each past move (the journal's ``move.done``
        events): one sample per move, so the figure errs high until live statuses outnumber
        them, which is the safe side for a figure an operator compares limits with."""
        rec = self.axes.setdefault(axis, AxisRecord())
        for e in following_errors:
            if isinstance(e, int | float) and not isinstance(e, bool) and math.isfinite(e):
                rec.following_error.append(abs(float(e)))
        self._cache.pop(axis, None)

    def shown(self, axis: str) -> dict[str, float | None]:
        now = self.clock()
        hit = self._cache.get(axis)
        if hit is not None and now - hit[0] < CACHE_S:
            return dict(hit[1])
        figures = self._figures(axis)
        self._cache[axis] = (now, figures)
        return dict(figures)

    def _figures(self, axis: str) -> dict[str, float | None]:
        rec = self.axes.get(axis)
        if rec is None:
            return dict.fromkeys(
                ("acceleration", "speed", "following_error", "load_moving", "load_static")
            )
        return {
            "acceleration": _figure(rec.acceleration),
            "speed": _figure(rec.speed),
            "following_error": _figure(rec.following_error),
            "load_moving": _figure(rec.load_moving),
            "load_static": _figure(rec.load_static),
        }

    def warnings(
        self, speeds: Mapping[str, float], accelerations: Mapping[str, float]
    ) -> list[str]:
        """What a planned move asks beyond what each axis has shown (empty: nothing new)."""
        out = []
        for axis, v in speeds.items():
            shown = self.shown(axis)
            top_v, top_a = shown["speed"], shown["acceleration"]
            if top_v is not None and v > top_v * MARGIN:
                out.append(f"{axis}: speed {v:g} is beyond the {top_v:.0f} it has shown")
            a = accelerations.get(axis)
            if top_a is not None and a is not None and a > top_a * MARGIN:
                out.append(f"{axis}: acceleration {a:g} is beyond the {top_a:.0f} it has shown")
        return out
