"""The fixed-rate lighting output engine: sources, merge, fades, masters, frames on the wire.

The model (docs/lighting.md has it in full):

- A **source** (``engine.source(name, priority)``) holds, per attribute of the patch, whether
  it drives it and a fade: start, target, start time, duration and curve, as numpy arrays over
  every attribute of every universe, so a frame is a handful of array operations whatever the
  number of channels fading. Values persist until changed (tracking). ``release`` fades the
  source's hold on attributes (a weight from 1 to 0) so they fall back to what lies below.
- Sources of equal priority form a **layer**. In a layer, HTP attributes take the highest
  value of the sources driving them and LTP attributes the value of the source that set them
  last. A layer that drives an attribute replaces what lies below it (higher priority wins,
  for HTP too, as sACN merges). Below the lowest layer are the profiles' defaults.
- **DMX input** (a console through ``SacnInput``/``ArtNetInput``) is a source like the others,
  at its own priority; its LTP attributes count as set when their value changes. Channels no
  fixture occupies pass the input through (HTP between inputs).
- **Masters** (the grand master ``grand`` and a fader per group or fixture) scale the HTP
  attributes of the merged result: a fixture's intensity is multiplied by the grand master
  and by every master of a group it belongs to and of itself.

Rendering runs at ``rate_hz`` (44 by default) on deadlines of a monotonic clock: deadline k
is start + k periods (``deadline += period``), so a slow frame never shifts the ones after it;
a frame more than a whole period late skips the frames it missed instead of bursting them.

**Early frames.** A change that shows now (a GO's snap, a release, a fader) calls ``changed()``,
which schedules one callback on the loop (``call_soon``: every change of the same loop turn
shares it); the callback renders and puts the universes whose slots changed on the wire
synchronously (``DmxOutputs.send_frame_now``), before the rest of the command's work (its
journal commit, the WebSocket snapshots) gets the loop or the GIL. So GO -> wire is the command
path itself: no wake-up of the loop task, no wait for the next deadline. Early frames do not move
the deadline grid and stay out of the interval/jitter figures; they are rate limited by a token
bucket (``EARLY_BURST`` back to back, one more per ``EARLY_GAP_S``), so a flood of changes adds
at most ~333 frames a second to the fixed rate, as the former "one per 3 ms" did, while a GO
never waits behind a frame that just went out; a change that finds the bucket empty goes out
when a token is back or with the next deadline frame, whichever is first.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from controller.lighting import curves
from controller.lighting.errors import LightingError
from controller.lighting.patch import F64, B, Patch
from drivers.model import Value

log = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
DEFAULT_RATE_HZ = 44.0
MAX_PRIORITY = 200
LATE_AFTER_S = 0.002  # a frame starting this long after its deadline counts as late
EARLY_GAP_S = 0.003  # early frames: one more allowed per this (at most ~333 a second) ...
EARLY_BURST = 4  # ... and this many back to back (a token bucket)
RING = 1024  # frame start times kept for the statistics (~23 s at 44 Hz)


class FrameSink(Protocol):
    """What the engine sends frames to (``drivers.dmx.DmxOutputs`` or one output). A sink that
    also has ``send_frame_now(frame)`` (sending before it returns, as ``DmxOutputs`` does) gets
    early frames that way; any other gets them from a task (``send_frame`` on a copy)."""

    async def send_frame(self, frame: Mapping[int, Any]) -> None: ...


class DmxInputLike(Protocol):
    """A console input: ``SacnInput`` / ``ArtNetInput`` (``merged(universe)``)."""

    def merged(self, universe: int, now: float | None = None) -> Any: ...


def _finite_time(what: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LightingError(f"{what} must be a number of seconds, not {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or v > 86_400:
        raise LightingError(f"{what} must be a finite number of seconds 0..86400, not {value!r}")
    return v


class Source:
    """One contributor to the output: a playback, a manual source, or a DMX input."""

    def __init__(self, engine: LightingEngine, name: str, priority: int, kind: str) -> None:
        n = engine.patch.size
        self.engine = engine
        self.name = name
        self.priority = priority
        self.kind = kind
        self.active: B = np.zeros(n, np.bool_)
        self.start: F64 = np.zeros(n)
        self.target: F64 = np.zeros(n)
        self.t0: F64 = np.zeros(n)
        self.dur: F64 = np.zeros(n)
        self.curve: npt.NDArray[np.int8] = np.zeros(n, np.int8)
        self.stamp: F64 = np.full(n, -math.inf)
        # the source's hold on each attribute: 1 while it drives, fading to 0 on release
        self.w_start: F64 = np.ones(n)
        self.w_target: F64 = np.ones(n)
        self.w_t0: F64 = np.zeros(n)
        self.w_dur: F64 = np.zeros(n)
        self.releasing: B = np.zeros(n, np.bool_)
        # caches for the per-frame path
        self._t0e: F64 = np.zeros(n)
        self._inv: F64 = np.ones(n)
        self._delta: F64 = np.zeros(n)
        self.fade_end = -math.inf  # when the last fade set so far lands
        self._plan: tuple[int, npt.NDArray[np.intp] | None, npt.NDArray[np.intp] | None] | None
        self._plan = None
        # The source's own clock, which stands still while it is paused: fades, delays and
        # releases are stored and evaluated in it (``_local``); LTP stamps stay engine time.
        self.held_s = 0.0  # engine time spent paused so far
        self.paused_at: float | None = None

    def __repr__(self) -> str:
        return f"Source({self.name!r}, priority={self.priority}, kind={self.kind!r})"

    # --- the source's clock ----------------------------------------------------------------------

    def _local(self, now: float) -> float:
        """Engine time ``now`` on the source's clock (frozen at the pause while paused)."""
        return (now if self.paused_at is None else min(now, self.paused_at)) - self.held_s

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def pause(self, now: float | None = None) -> bool:
        """Hold every fade, delay and release of this source where it is now (the output keeps
        the present look). Returns False if it was already paused."""
        if self.paused_at is not None:
            return False
        self.paused_at = self.engine.clock() if now is None else now
        return True

    def resume(self, now: float | None = None) -> bool:
        """Carry on every held fade from where it stood, taking the rest of its time."""
        if self.paused_at is None:
            return False
        t = self.engine.clock() if now is None else now
        self.held_s += max(0.0, t - self.paused_at)
        self.paused_at = None
        self.engine.changed()
        return True

    # --- evaluation (vectorised over every attribute) ------------------------------------------

    def values(self, now: float, idx: npt.NDArray[np.int64] | None = None) -> F64:
        """Every attribute's value at ``now`` (or those of ``idx``). The result for all
        attributes may be the source's own array: read it, do not change it."""
        now = self._local(now)
        if idx is not None:
            p = curves.progress(now, self.t0[idx], self.dur[idx])
            y = curves.apply(p, self.curve[idx])
            start = self.start[idx]
            part: F64 = start + (self.target[idx] - start) * y
            return part
        if now >= self.fade_end:
            return self.target  # every fade has landed: no arithmetic per frame
        # progress with precomputed 1/duration: a handful of in-place array operations
        p = np.subtract(now, self._t0e)
        p *= self._inv
        np.clip(p, 0.0, 1.0, out=p)
        self._shape(p)
        p *= self._delta
        p += self.start
        return p

    def _shape(self, p: F64) -> None:
        """Apply each attribute's curve to its progress, in place."""
        if self._plan is None:
            codes = set(np.unique(self.curve[self.active]).tolist())
            if len(codes) <= 1:
                self._plan = (codes.pop() if codes else 0, None, None)
            else:
                self._plan = (
                    -1,
                    np.flatnonzero(self.curve == curves.CURVES["s"]),
                    np.flatnonzero(self.curve == curves.CURVES["log"]),
                )
        code, s_idx, log_idx = self._plan
        if code == curves.CURVES["s"]:
            p[:] = p * p * (3.0 - 2.0 * p)
        elif code == curves.CURVES["log"]:
            p *= 9.0
            p += 1.0
            np.log10(p, out=p)
        elif code == -1:
            assert s_idx is not None
            assert log_idx is not None
            ps = p[s_idx]
            p[s_idx] = ps * ps * (3.0 - 2.0 * ps)
            p[log_idx] = np.log10(1.0 + 9.0 * p[log_idx])

    def weights(self, now: float, idx: npt.NDArray[np.int64] | None = None) -> F64 | None:
        """The source's hold on each attribute (1 while driving, to 0 on release); None for
        all-ones when nothing is being released."""
        if idx is None and not self.releasing.any():
            return None
        sl: Any = slice(None) if idx is None else idx
        p = curves.progress(self._local(now), self.w_t0[sl], self.w_dur[sl])
        ws = self.w_start[sl]
        result: F64 = ws + (self.w_target[sl] - ws) * p
        return result

    def _retire(self, now: float) -> None:
        """Attributes whose release has finished stop being driven."""
        if not self.releasing.any():
            return
        done = self.releasing & (self._local(now) >= self.w_t0 + self.w_dur)
        if done.any():
            self.active[done] = False
            self.releasing[done] = False
            self.w_start[done] = 1.0
            self.w_target[done] = 1.0

    # --- control -----------------------------------------------------------------------------

    def set(self, targets: Mapping[str, Mapping[str, Value]]) -> None:
        """Snap attributes to values now (a fade of 0 s)."""
        self.fade(targets, 0.0)

    def fade(
        self,
        targets: Mapping[str, Mapping[str, Value]],
        fade_s: float,
        *,
        delay_s: float = 0.0,
        curve: str = "linear",
        now: float | None = None,
    ) -> None:
        """Fade ``{fixture or group: {attribute: value}}`` from the present output to the
        targets over ``fade_s`` after ``delay_s``. Attributes this source already drives start
        from its own present value; others from the engine's present (pre-master) output."""
        fade = _finite_time("fade_s", fade_s)
        delay = _finite_time("delay_s", delay_s)
        code = curves.curve_code(curve)
        idx, vals = self.engine.patch.resolve(targets)
        if idx.size == 0:
            return
        t = self.engine.clock() if now is None else now
        own = self.active[idx] & ~self.releasing[idx]
        start = self.engine.merged_at(t)[idx]
        if own.any():
            start[own] = self.values(t, idx[own])
        lt = self._local(t)
        self.start[idx] = start
        self.target[idx] = vals
        self.t0[idx] = lt + delay
        self.dur[idx] = fade
        self.curve[idx] = code
        # The per-frame path: a 0 s fade is a 1 ns one ending at its start time.
        self._t0e[idx] = lt + delay - (0.0 if fade > 0 else 1e-9)
        self._inv[idx] = 1.0 / max(fade, 1e-9)
        self._delta[idx] = vals - start
        self.fade_end = max(self.fade_end, lt + delay + fade)
        self._plan = None
        self.stamp[idx] = t
        self.active[idx] = True
        self.releasing[idx] = False
        self.w_start[idx] = 1.0
        self.w_target[idx] = 1.0
        if delay == 0:
            self.engine.changed()

    def release(
        self,
        targets: Sequence[str] | None = None,
        attributes: Sequence[str] | None = None,
        *,
        fade_s: float = 0.0,
        now: float | None = None,
    ) -> int:
        """Let go of attributes (all, or of some fixtures/groups, or only some attributes),
        fading the hold over ``fade_s`` so they fall back to lower sources or defaults.
        Returns how many attributes were released."""
        fade = _finite_time("fade_s", fade_s)
        idx = self.engine.patch.attribute_indices(targets, attributes)
        idx = idx[self.active[idx]]
        if idx.size == 0:
            return 0
        t = self.engine.clock() if now is None else now
        w = self.weights(t, idx)
        assert w is not None
        self.w_start[idx] = w
        self.w_target[idx] = 0.0
        self.w_t0[idx] = self._local(t)
        self.w_dur[idx] = fade
        self.releasing[idx] = True
        if fade == 0:
            self._retire(t)
        self.engine.changed()
        return int(idx.size)

    def driven(self) -> list[str]:
        """Fixture ids this source drives any attribute of."""
        owners = self.engine.patch.owner
        return sorted({owners[i] for i in np.flatnonzero(self.active)})

    def fading(self, now: float | None = None) -> bool:
        t = self._local(self.engine.clock() if now is None else now)
        a = self.active
        return bool(np.any(a & (t < self.t0 + self.dur)) or np.any(self.releasing))


class InputSource(Source):
    """A console's DMX input as a source; refreshed from the inputs every frame."""

    def __init__(
        self, engine: LightingEngine, name: str, priority: int, inputs: Sequence[DmxInputLike]
    ) -> None:
        super().__init__(engine, name, priority, "input")
        self.inputs = list(inputs)
        self.current: F64 = np.zeros(engine.patch.size)
        self.passthrough: U8 = np.zeros((len(engine.patch.universes), 512), np.uint8)
        self.live: B = np.zeros(len(engine.patch.universes), np.bool_)

    def poll(self, now: float) -> None:
        patch = self.engine.patch
        self.passthrough[:] = 0
        self.live[:] = False
        for u_i, universe in enumerate(patch.universes):
            for inp in self.inputs:
                frame = inp.merged(universe)
                if frame is None:
                    continue
                if self.live[u_i]:
                    np.maximum(self.passthrough[u_i], frame, out=self.passthrough[u_i])
                else:
                    self.passthrough[u_i] = frame
                    self.live[u_i] = True
        flat = self.passthrough.reshape(-1).astype(np.float64)
        e = self.engine
        vals = flat[patch.coarse]
        if e.wide.any():
            vals[e.wide] = vals[e.wide] * 256.0 + flat[patch.fine[e.wide]]
        changed = vals != self.current
        self.current = vals
        self.stamp[changed] = now
        self.active = self.live[e.attr_universe]
        self.start = vals
        self.target = vals

    def values(self, now: float, idx: npt.NDArray[np.int64] | None = None) -> F64:
        return self.current if idx is None else self.current[idx]

    def weights(self, now: float, idx: npt.NDArray[np.int64] | None = None) -> F64 | None:
        return None if idx is None else np.ones(idx.size)


@dataclass
class FrameStats:
    """Frame starts (a ring) and counters; ``summary()`` gives the figures the API shows."""

    period_s: float
    starts: F64
    frames: int = 0
    late: int = 0
    skipped: int = 0
    early: int = 0  # frames sent between deadlines because the look changed (not in jitter)
    send_errors: int = 0
    cpu_s: float = 0.0
    started: float | None = None
    last_render_ms: float = 0.0

    @classmethod
    def new(cls, period_s: float) -> FrameStats:
        return cls(period_s, np.zeros(RING))

    def record_early(self, cpu_s: float) -> None:
        """An early frame: counted and its CPU time kept, but not a frame start of the grid
        (so not in the rate, interval or jitter figures)."""
        self.early += 1
        self.cpu_s += cpu_s

    def record(self, start: float, deadline: float, cpu_s: float) -> None:
        if self.started is None:
            self.started = start
        self.starts[self.frames % RING] = start
        self.frames += 1
        if start - deadline > LATE_AFTER_S:
            self.late += 1
        self.cpu_s += cpu_s
        self.last_render_ms = cpu_s * 1000.0

    def summary(self, now: float) -> dict[str, Any]:
        n = min(self.frames, RING)
        t = np.sort(self.starts[:n]) if n else self.starts[:0]
        base: dict[str, Any] = {
            "rate_hz_nominal": round(1.0 / self.period_s, 3),
            "frames": self.frames,
            "late_frames": self.late,
            "skipped_frames": self.skipped,
            "early_frames": self.early,
            "send_errors": self.send_errors,
            "last_render_ms": round(self.last_render_ms, 3),
        }
        wall = now - self.started if self.started is not None else 0.0
        base["render_cpu_pct"] = round(100.0 * self.cpu_s / wall, 2) if wall > 0 else None
        if n < 3:
            return base | {"rate_hz": None, "interval_ms": None, "jitter_ms": None}
        iv = np.diff(t)
        jit = np.abs(iv - self.period_s) * 1000.0
        p = np.percentile
        return base | {
            "rate_hz": round(float((n - 1) / (t[-1] - t[0])), 3),
            "interval_ms": {
                "p50": round(float(p(iv, 50)) * 1000, 3),
                "p99": round(float(p(iv, 99)) * 1000, 3),
                "max": round(float(iv.max()) * 1000, 3),
            },
            "jitter_ms": {
                "p50": round(float(p(jit, 50)), 3),
                "p99": round(float(p(jit, 99)), 3),
                "max": round(float(jit.max()), 3),
            },
        }


class LightingEngine:
    """Sources merged per attribute, scaled by masters, rendered into universes at a fixed rate."""

    def __init__(
        self,
        patch: Patch,
        output: FrameSink | None = None,
        *,
        rate_hz: float = DEFAULT_RATE_HZ,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        early_frames: bool | None = None,
    ) -> None:
        if not (
            isinstance(rate_hz, int | float) and math.isfinite(rate_hz) and 1 <= rate_hz <= 1000
        ):
            raise LightingError(f"rate_hz must be 1..1000, not {rate_hz!r}")
        self.patch = patch
        self.output = output
        self.rate_hz = float(rate_hz)
        self.period_s = 1.0 / self.rate_hz
        self.clock = clock
        self._sleep = sleep
        self.sources: dict[str, Source] = {}
        self.faders: dict[str, float] = {"grand": 1.0}
        self.wide: B = patch.fine >= 0
        self._all_narrow = not self.wide.any()
        self._coarse8 = patch.coarse[~self.wide]
        self._coarse16 = patch.coarse[self.wide]
        self._fine16 = patch.fine[self.wide]
        self._scaled = False
        self.attr_universe: npt.NDArray[np.int64] = patch.coarse // 512
        self._scale: F64 = np.ones(patch.size)
        self.merged: F64 = patch.default.copy()  # pre-master result of the last render
        self.levels: F64 = patch.default.copy()  # post-master result of the last render
        self.frame: U8 = np.zeros((len(patch.universes), 512), np.uint8)
        self.stats = FrameStats.new(self.period_s)
        self._stop = asyncio.Event()
        # A change (a GO's snap, a release, a fader) is sent at once in an extra frame rather
        # than at the next deadline, so GO -> wire is the command path, not up to one period.
        # It needs the real clock (its rate limit is in real time): off with an injected sleep.
        self.early_frames = sleep is asyncio.sleep if early_frames is None else early_frames
        self._running = False  # early frames only while the fixed-rate loop runs
        self._dirty = False  # a change not yet in any frame sent
        self._early_handle: asyncio.Handle | None = None  # the scheduled early frame
        self._tokens = float(EARLY_BURST)  # the early frames' token bucket
        self._tokens_at = -math.inf
        self._sent: U8 = self.frame.copy()  # the slots last put on the wire, per universe
        self._pending_sends: set[asyncio.Task[None]] = set()  # early frames of async sinks

    # --- sources and faders --------------------------------------------------------------------

    def source(self, name: str, priority: int = 100, *, kind: str = "playback") -> Source:
        """The source called ``name`` (created at ``priority`` on first use)."""
        if not isinstance(name, str) or not name:
            raise LightingError("a source needs a non-empty name")
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not 0 <= priority <= MAX_PRIORITY
        ):
            raise LightingError(f"priority must be an integer 0..{MAX_PRIORITY}, not {priority!r}")
        existing = self.sources.get(name)
        if existing is not None:
            if existing.priority != priority:
                raise LightingError(
                    f"source '{name}' exists at priority {existing.priority}, not {priority}"
                )
            return existing
        src = Source(self, name, priority, kind)
        self.sources[name] = src
        return src

    def add_input(
        self, name: str, inputs: Sequence[DmxInputLike], priority: int = 100
    ) -> InputSource:
        if name in self.sources:
            raise LightingError(f"source '{name}' exists")
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not 0 <= priority <= MAX_PRIORITY
        ):
            raise LightingError(f"priority must be an integer 0..{MAX_PRIORITY}, not {priority!r}")
        src = InputSource(self, name, priority, inputs)
        self.sources[name] = src
        return src

    def remove_source(self, name: str) -> None:
        self.sources.pop(name, None)

    def set_fader(self, name: str, level: float) -> None:
        """A master's level 0..1: ``grand``, a group name or a fixture id."""
        if isinstance(level, bool) or not isinstance(level, int | float):
            raise LightingError(f"fader level must be a number 0..1, not {level!r}")
        lv = float(level)
        if not math.isfinite(lv) or not 0.0 <= lv <= 1.0:
            raise LightingError(f"fader level must be a finite number 0..1, not {level!r}")
        if name != "grand":
            self.patch.members(name)  # raises for an unknown fixture or group
        self.faders[name] = lv
        self._rescale()
        self.changed()

    def changed(self) -> None:
        """Something the next frame shows changed now: send it without waiting for the next
        deadline, in an early frame at the next turn of the loop (every change of this turn
        shares it)."""
        self._dirty = True
        if not (self.early_frames and self._running) or self._early_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the loop: the next deadline frame carries the change
            return
        self._early_handle = loop.call_soon(self._early)

    def _rescale(self) -> None:
        scale = np.full(self.patch.size, self.faders.get("grand", 1.0))
        for name, level in self.faders.items():
            if name == "grand" or level == 1.0:
                continue
            idx = self.patch.intensities(name)
            scale[idx] *= level
        scale[~self.patch.htp] = 1.0
        self._scale = scale
        self._scaled = bool((scale != 1.0).any())

    # --- rendering ---------------------------------------------------------------------------

    def merged_at(self, now: float) -> F64:
        """The merged (pre-master) raw value of every attribute at ``now``."""
        patch = self.patch
        out = patch.default
        layers: dict[int, list[Source]] = {}
        for src in self.sources.values():
            if src.active.any():
                layers.setdefault(src.priority, []).append(src)
        htp = patch.htp
        for priority in sorted(layers):
            below = out
            layer: F64 | None = None
            for src in layers[priority]:
                a = src.active
                v = src.values(now)
                w = src.weights(now)
                e = v if w is None else below + (v - below) * w
                if layer is None:  # the layer's first source takes what it drives
                    layer = np.where(a, e, below)
                    covered = a.copy()
                    stamp = np.where(a, src.stamp, -math.inf)
                    continue
                # then HTP attributes take the higher value, LTP ones the later setting
                wins = np.where(htp, e > layer, src.stamp >= stamp)
                take = a & (wins | ~covered)
                np.copyto(layer, e, where=take)
                np.copyto(stamp, src.stamp, where=take)
                covered |= a
            assert layer is not None
            out = layer
        return out.copy() if out is patch.default else out

    def render(self, now: float | None = None) -> U8:
        """Compute the frame at ``now``: ``(universes, 512)`` uint8 (also kept as ``frame``)."""
        t = self.clock() if now is None else now
        frame = self.frame
        frame[:] = 0
        for src in self.sources.values():
            if isinstance(src, InputSource):
                src.poll(t)
                np.maximum(frame, src.passthrough, out=frame)
            else:
                src._retire(t)
        merged = self.merged_at(t)
        levels = merged * self._scale if self._scaled else merged.copy()
        np.clip(levels, 0.0, self.patch.full, out=levels)
        self.merged, self.levels = merged, levels
        raw = np.rint(levels)
        flat = frame.reshape(-1)
        if self._all_narrow:
            flat[self._coarse8] = raw
        else:
            flat[self._coarse8] = raw[~self.wide]
            wide = raw[self.wide].astype(np.int64)
            flat[self._coarse16] = wide >> 8
            flat[self._fine16] = wide & 0xFF
        return frame

    def frames(self) -> dict[int, U8]:
        """The last rendered frame, keyed by universe number."""
        return {u: self.frame[i] for i, u in enumerate(self.patch.universes)}

    def universe(self, universe: int) -> U8:
        row: U8 = self.frame[self.patch.universe_index(universe)]
        return row

    def fixture_output(self, fid: str) -> dict[str, Value]:
        """A fixture's present output as point values (after masters)."""
        return self.patch.values_of(fid, self.levels)

    async def send(self, now: float | None = None) -> None:
        """Render the frame at ``now`` and send every universe (a deadline frame)."""
        self._dirty = False
        self.render(now)
        self._sent[:] = self.frame
        if self.output is not None:
            try:
                await self.output.send_frame(self.frames())
            except (OSError, ValueError) as exc:  # outputs count their own errors; be safe
                self._send_failed(exc)

    def _send_failed(self, exc: Exception) -> None:
        self.stats.send_errors += 1
        log.warning("lighting: sending a frame failed: %s", exc)

    # --- early frames ------------------------------------------------------------------------

    def _take_token(self, now: float) -> float:
        """Take a token of the early frames' bucket: 0.0 if one was there, else how long until
        one is (nothing taken)."""
        refill = (now - self._tokens_at) / EARLY_GAP_S
        self._tokens = min(float(EARLY_BURST), self._tokens + refill)
        self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) * EARLY_GAP_S

    def _early(self) -> None:
        """The scheduled early frame: render now and send the universes that changed since the
        last frame on the wire, synchronously where the sink can."""
        self._early_handle = None
        if not (self._dirty and self._running) or self._stop.is_set():
            return  # a deadline frame carried the change meanwhile, or the loop stopped
        now = self.clock()
        wait = self._take_token(now)
        if wait > 0:
            # A flood of changes: try again when a token is back; if the deadline frame comes
            # first it carries the change (and clears _dirty), and the retry sends nothing.
            self._early_handle = asyncio.get_running_loop().call_later(wait, self._early)
            return
        cpu0 = time.thread_time()
        self._dirty = False
        frame = self.render(now)
        rows = np.flatnonzero((frame != self._sent).any(axis=1))
        if rows.size == 0:  # the change does not show yet (a fade's first instant): no frame
            self._tokens += 1.0
            return
        self._sent[rows] = frame[rows]
        universes = self.patch.universes
        sub = {universes[i]: frame[i] for i in rows.tolist()}
        if self.output is not None:
            now_fn = getattr(self.output, "send_frame_now", None)
            try:
                if now_fn is not None:
                    now_fn(sub)
                else:  # an async-only sink: from a task, on a copy (the frame is re-rendered)
                    task = asyncio.get_running_loop().create_task(
                        self._send_later({u: d.copy() for u, d in sub.items()}),
                        name="lighting-early-frame",
                    )
                    self._pending_sends.add(task)  # a strong reference until it is done
                    task.add_done_callback(self._pending_sends.discard)
            except (OSError, ValueError) as exc:
                self._send_failed(exc)
        self.stats.record_early(time.thread_time() - cpu0)

    async def _send_later(self, sub: Mapping[int, U8]) -> None:
        assert self.output is not None
        try:
            await self.output.send_frame(sub)
        except Exception as exc:  # nobody awaits this task: count and say it here
            self._send_failed(exc)

    # --- the fixed-rate loop -----------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Render and send a frame at every deadline until ``stop()``; changes in between go
        out in early frames (``changed()``)."""
        period = self.period_s
        self._stop.clear()
        deadline = self.clock()
        self._running = True
        try:
            while not self._stop.is_set():
                start = self.clock()
                cpu0 = time.thread_time()
                await self.send(start)
                self.stats.record(start, deadline, time.thread_time() - cpu0)
                deadline += period
                now = self.clock()
                if now - deadline >= period:
                    # A whole frame or more behind: skip to the next deadline still ahead
                    # rather than burst the missed frames out back to back.
                    missed = int((now - deadline) // period) + 1
                    self.stats.skipped += missed
                    deadline += missed * period
                if (delay := deadline - self.clock()) > 0:
                    await self._sleep(delay)  # stop() is seen within one period
        finally:
            self._running = False
            if self._early_handle is not None:
                self._early_handle.cancel()
                self._early_handle = None
            if self._pending_sends:  # early frames of an async sink still on their way
                await asyncio.gather(*self._pending_sends, return_exceptions=True)

    def status(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "stats": self.stats.summary(now),
            "universes": list(self.patch.universes),
            "faders": dict(self.faders),
            "groups": {k: list(v) for k, v in self.patch.groups.items()},
            "sources": [
                {
                    "name": s.name,
                    "priority": s.priority,
                    "kind": s.kind,
                    "fixtures": s.driven(),
                    "fading": s.fading(now),
                    "paused": s.paused,
                }
                for s in self.sources.values()
            ],
            "fixtures": {
                fid: {
                    "profile": pf.profile.id,
                    "universe": pf.universe,
                    "address": pf.address,
                    "output": self.fixture_output(fid),
                }
                for fid, pf in self.patch.fixtures.items()
            },
        }
