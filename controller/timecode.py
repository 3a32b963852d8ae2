"""SMPTE timecode, a chase clock, and timecode triggers for the cue engine.

Three parts, each pure (no I/O, no clock reads: every call takes the monotonic time ``now``):

- ``Timecode`` is an SMPTE label ``hh:mm:ss:ff`` at one of the four rates Art-Net, MTC and LTC
  carry (24, 25, 29.97 drop-frame, 30). It converts to and from a frame count since midnight
  and to and from seconds of real time. Drop-frame skips the labels ``;00`` and ``;01`` at the
  start of every minute except minutes 0, 10, 20, 30, 40, 50, so 17 982 frames make ten
  minutes and a label keeps within 2 frames of the real clock.
- ``ChaseClock`` is fed ``(position, arrival time)`` samples from a receiver and answers "what
  is the timecode now" at any monotonic time. Arrival jitter is smoothed by a least-squares line
  through the recent samples (slope and offset), and the reported position never steps back
  while the source keeps running. A sample further than ``relocate_frames`` from the prediction
  is a relocate (the line restarts at the sample, ``generation`` counts it). A source repeating
  one frame for ``stop_frames`` frame periods, or a located-and-stopped message (MTC full
  frame), stops the clock at that frame. When samples stop arriving for ``dropout_frames``
  frame periods the clock freewheels (keeps extrapolating) for ``freewheel_s``, then stops at
  where freewheel ended. A source that comes back within the relocate threshold of the
  prediction resumes without a relocate.
- ``TriggerScheduler`` fires registered triggers ("cue 12.5 of list main at 01:00:10:00")
  exactly once, when the chased position passes them while running or freewheeling. Passing
  means: a trigger at frame ``t`` fires in the poll where ``prev < t <= now`` (modulo 24 h, so
  midnight is crossed). After a lock or relocate the interval starts inclusive, so a trigger at
  exactly the located frame fires once the clock runs. A relocate does not fire the triggers it
  jumps over (forward) and does not re-arm those behind it (backward): a fired trigger stays
  fired until ``rearm`` is called, unless the scheduler was made with
  ``rearm_on_backward=True``, which re-arms every trigger at or after the new position on a
  backward relocate (rehearsal: "from the top of the scene again").
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from fractions import Fraction

from drivers.audio.ltc import LtcFrame
from drivers.dmx.artnet import ArtTimeCode
from drivers.midi.wire import MtcTime

log = logging.getLogger(__name__)


class TimecodeError(ValueError):
    """A timecode label or value that does not exist at its rate."""


class FrameRate(Enum):
    """The SMPTE rates carried by Art-Net (Type), MTC (rate bits) and LTC.

    ``code`` is the number both Art-Net's ArtTimeCode Type field and MTC's rate bits use.
    """

    FPS_24 = (0, 24, False, Fraction(24))
    FPS_25 = (1, 25, False, Fraction(25))
    FPS_29_97_DF = (2, 30, True, Fraction(30000, 1001))
    FPS_30 = (3, 30, False, Fraction(30))

    def __init__(self, code: int, nominal: int, drop_frame: bool, fps: Fraction) -> None:
        self.code = code
        self.nominal = nominal  # frame labels per second: ff runs 0..nominal-1
        self.drop_frame = drop_frame
        self.fps = fps  # real frames per second

    @classmethod
    def from_code(cls, code: int) -> FrameRate:
        for rate in cls:
            if rate.code == code:
                return rate
        raise TimecodeError(f"rate code {code} is not 0 (24), 1 (25), 2 (29.97 DF) or 3 (30)")

    @classmethod
    def parse(cls, text: str) -> FrameRate:
        names = {"24": cls.FPS_24, "25": cls.FPS_25, "29.97df": cls.FPS_29_97_DF}
        names |= {"29.97": cls.FPS_29_97_DF, "30df": cls.FPS_29_97_DF, "30": cls.FPS_30}
        try:
            return names[text.strip().lower()]
        except KeyError:
            raise TimecodeError(f"unknown frame rate {text!r}; use 24, 25, 29.97df or 30") from None

    @property
    def frames_per_day(self) -> int:
        if self.drop_frame:
            return 24 * 6 * _DF_FRAMES_PER_10_MIN
        return 24 * 3600 * self.nominal

    @property
    def label(self) -> str:
        return "29.97df" if self.drop_frame else str(self.nominal)


_DF_FRAMES_PER_10_MIN = 17982  # 10 min x 60 s x 30 - 9 minutes x 2 dropped labels
_DF_FRAMES_PER_MIN = 1798  # a minute that drops two labels
_LABEL = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})([:;.,])(\d{2})$")


@dataclass(frozen=True, slots=True, order=False)
class Timecode:
    """One SMPTE label at a rate; validated on construction."""

    hours: int
    minutes: int
    seconds: int
    frames: int
    rate: FrameRate = FrameRate.FPS_25

    def __post_init__(self) -> None:
        h, m, s, f = self.hours, self.minutes, self.seconds, self.frames
        if not (0 <= h <= 23 and 0 <= m <= 59 and 0 <= s <= 59):
            raise TimecodeError(f"{self._text()}: hours 0..23, minutes and seconds 0..59")
        if not 0 <= f < self.rate.nominal:
            raise TimecodeError(
                f"{self._text()}: frames must be 0..{self.rate.nominal - 1} at {self.rate.label}"
            )
        if self.rate.drop_frame and s == 0 and f < 2 and m % 10:
            raise TimecodeError(
                f"{self._text()}: drop-frame skips frames 00 and 01 at minute {m:02d}"
            )

    def _text(self) -> str:
        sep = ";" if self.rate.drop_frame else ":"
        return f"{self.hours:02d}:{self.minutes:02d}:{self.seconds:02d}{sep}{self.frames:02d}"

    def __str__(self) -> str:
        return self._text()

    @classmethod
    def parse(cls, text: str, rate: FrameRate | None = None) -> Timecode:
        """``hh:mm:ss:ff`` (or ``hh:mm:ss;ff``, which means drop-frame when no rate is given)."""
        match = _LABEL.match(text.strip())
        if match is None:
            raise TimecodeError(f"{text!r} is not a timecode hh:mm:ss:ff")
        h, m, s, sep, f = match.groups()
        if rate is None:
            rate = FrameRate.FPS_29_97_DF if sep in ";," else FrameRate.FPS_25
        return cls(int(h), int(m), int(s), int(f), rate)

    def to_frames(self) -> int:
        """Frames since 00:00:00:00 (drop-frame: real frames, the skipped labels not counted)."""
        n = self.rate.nominal
        count = ((self.hours * 60 + self.minutes) * 60 + self.seconds) * n + self.frames
        if self.rate.drop_frame:
            total_minutes = self.hours * 60 + self.minutes
            count -= 2 * (total_minutes - total_minutes // 10)
        return count

    @classmethod
    def from_frames(cls, count: int, rate: FrameRate) -> Timecode:
        """The label of frame ``count`` since midnight (wrapping at 24 h, negatives too)."""
        count %= rate.frames_per_day
        if rate.drop_frame:
            tens, rest = divmod(count, _DF_FRAMES_PER_10_MIN)
            # The first minute of each ten keeps all 1800 labels; the other nine skip two each.
            skipped = 18 * tens + (2 * ((rest - 2) // _DF_FRAMES_PER_MIN) if rest >= 2 else 0)
            count += skipped
        n = rate.nominal
        seconds_total, frames = divmod(count, n)
        minutes_total, seconds = divmod(seconds_total, 60)
        hours, minutes = divmod(minutes_total, 60)
        return cls(hours, minutes, seconds, frames, rate)

    def to_seconds(self) -> float:
        """Real seconds since midnight (29.97 DF frames last 1001/30000 s)."""
        return float(self.to_frames() / self.rate.fps)

    @classmethod
    def from_seconds(cls, seconds: float, rate: FrameRate) -> Timecode:
        """The label showing at ``seconds`` of real time since midnight (floor to a frame)."""
        if not math.isfinite(seconds):
            raise TimecodeError(f"seconds {seconds} is not finite")
        return cls.from_frames(math.floor(seconds * rate.fps + 1e-9), rate)

    def convert(self, rate: FrameRate) -> Timecode:
        """The same label at another rate: hh:mm:ss kept, ff scaled (floor), and a label that
        drop-frame skips moved to the first one that exists (``;02``)."""
        if rate is self.rate:
            return self
        frames = self.frames * rate.nominal // self.rate.nominal
        if rate.drop_frame and self.seconds == 0 and frames < 2 and self.minutes % 10:
            frames = 2
        return Timecode(self.hours, self.minutes, self.seconds, frames, rate)

    def __add__(self, frames: int) -> Timecode:
        return Timecode.from_frames(self.to_frames() + frames, self.rate)

    def __sub__(self, frames: int) -> Timecode:
        return Timecode.from_frames(self.to_frames() - frames, self.rate)


def _wrap(diff: float, day: int) -> float:
    """``diff`` brought into [-day/2, day/2): the short way round midnight."""
    half = day / 2
    return (diff + half) % day - half


class ChaseState(StrEnum):
    IDLE = "idle"  # no timecode received yet
    RUNNING = "running"  # samples arriving, time advancing
    FREEWHEEL = "freewheel"  # samples stopped: extrapolating for freewheel_s
    STOPPED = "stopped"  # the source stopped, located, or freewheel ran out


class ChaseEvent(StrEnum):
    LOCKED = "locked"  # first timecode (or first after a rate change)
    RELOCATED = "relocated"  # the position jumped
    STARTED = "started"  # running again from where it stopped
    STOPPED = "stopped"  # the source stopped (repeated frame or full-frame locate)
    REACQUIRED = "reacquired"  # samples back during freewheel, consistent with it
    FREEWHEEL = "freewheel"  # dropout detected (reported by poll)
    LOST = "lost"  # freewheel ran out: stopped (reported by poll)


@dataclass(frozen=True, slots=True)
class ChaseReading:
    state: ChaseState
    rate: FrameRate | None
    position: float | None  # frames since midnight, fractional, not wrapped at 24 h
    generation: int  # incremented at every lock and relocate

    @property
    def timecode(self) -> Timecode | None:
        if self.rate is None or self.position is None:
            return None
        return Timecode.from_frames(math.floor(self.position + 1e-6), self.rate)


@dataclass(frozen=True, slots=True)
class ChaseConfig:
    """Tuning of a ``ChaseClock``; times in frame periods scale with the rate."""

    freewheel_s: float = 2.0
    dropout_frames: float = 4.0
    relocate_frames: float = 2.0
    stop_frames: float = 2.0
    window: int = 32  # samples in the smoothing line
    window_s: float = 2.0  # and no older than this
    min_fit_span_s: float = 0.25  # below this, assume nominal speed (fit only the offset)
    max_speed_error: float = 0.05  # a fitted slope further from 1.0 is ignored (nominal used)

    def __post_init__(self) -> None:
        for name in ("freewheel_s", "window_s", "min_fit_span_s", "max_speed_error"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("dropout_frames", "relocate_frames", "stop_frames"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.window < 2:
            raise ValueError("window must be at least 2 samples")


class ChaseClock:
    """Chases one timecode source. Feed it samples; read it at any monotonic time.

    ``feed(tc, at, offset_frames=...)`` adds a running sample whose position is
    ``tc`` plus ``offset_frames`` at monotonic time ``at`` (MTC quarter frames: 1.75 frames,
    see drivers/midi). ``locate(tc, at)`` is a stopped position (MTC full frame). Events go to
    ``on_event`` as they are detected; the dropout ones (FREEWHEEL, LOST) when ``poll`` runs.
    """

    def __init__(
        self,
        config: ChaseConfig | None = None,
        *,
        on_event: Callable[[ChaseEvent, ChaseReading], None] | None = None,
    ) -> None:
        self.config = config or ChaseConfig()
        self.on_event = on_event
        self.rate: FrameRate | None = None
        self.generation = 0
        self.origin = 0.0  # the position of the last lock or relocate
        self.events: dict[ChaseEvent, int] = {}
        self._running = False
        self._held = 0.0  # position while stopped
        self._samples: deque[tuple[float, float]] = deque(maxlen=self.config.window)
        self._fit = (0.0, 0.0, 1.0)  # (t_ref, position at t_ref, frames per second)
        self._last_at = 0.0
        self._last_frame = math.nan
        self._same_since = 0.0
        self._floor = -math.inf  # no stepping back while running
        self._floor_at = -math.inf
        self._polled = ChaseState.IDLE

    # -- reading -------------------------------------------------------------------------
    def _fps(self) -> float:
        assert self.rate is not None
        return float(self.rate.fps)

    def _timeouts(self) -> tuple[float, float]:
        dropout = self.config.dropout_frames / self._fps()
        return dropout, dropout + self.config.freewheel_s

    def _model(self, now: float) -> float:
        t_ref, p_ref, speed = self._fit
        return p_ref + speed * (now - t_ref)

    def state(self, now: float) -> ChaseState:
        if self.rate is None:
            return ChaseState.IDLE
        if not self._running:
            return ChaseState.STOPPED
        dropout, lost = self._timeouts()
        gap = now - self._last_at
        if gap <= dropout:
            return ChaseState.RUNNING
        return ChaseState.FREEWHEEL if gap <= lost else ChaseState.STOPPED

    def position(self, now: float) -> float | None:
        return self.read(now).position

    def read(self, now: float) -> ChaseReading:
        state = self.state(now)
        if state is ChaseState.IDLE:
            return ChaseReading(state, None, None, self.generation)
        if not self._running:
            pos = self._held
        elif state is ChaseState.STOPPED:  # freewheel ran out
            pos = self._model(self._last_at + self._timeouts()[1])
        else:
            pos = self._model(now)
            # A refit may move the line back by a fraction of a frame; show time never runs
            # backwards while the source runs (a relocate resets the floor).
            if now >= self._floor_at:
                pos = max(pos, self._floor)
                self._floor, self._floor_at = pos, now
        return ChaseReading(state, self.rate, pos, self.generation)

    def poll(self, now: float) -> list[ChaseEvent]:
        """Report dropout transitions (FREEWHEEL, LOST) that happened by ``now``."""
        state = self.state(now)
        out: list[ChaseEvent] = []
        if self._running and state is not self._polled:
            if state is ChaseState.FREEWHEEL:
                out.append(ChaseEvent.FREEWHEEL)
            elif state is ChaseState.STOPPED:
                out.append(ChaseEvent.LOST)
        self._polled = state
        for event in out:
            self._emit(event, now)
        return out

    # -- feeding -------------------------------------------------------------------------
    def feed(self, tc: Timecode, at: float, *, offset_frames: float = 0.0) -> ChaseEvent | None:
        """A running sample: ``tc`` (+ ``offset_frames``) was current at monotonic ``at``."""
        pos = tc.to_frames() + offset_frames
        if tc.rate is not self.rate:
            first = self.rate is None
            self._restart(tc.rate, pos, at)
            return self._emit(ChaseEvent.LOCKED if first else ChaseEvent.RELOCATED, at)
        day = tc.rate.frames_per_day
        state = self.state(at)
        if state is ChaseState.STOPPED and self._running:  # freewheel ran out: materialise
            self._hold(self._model(self._last_at + self._timeouts()[1]))
        if not self._running:
            diff = _wrap(pos - self._held, day)
            if abs(diff) < 0.5:  # still showing the held frame
                self._last_at = at
                return None
            if abs(diff) > self.config.relocate_frames + offset_frames:
                self._restart(tc.rate, self._held + diff, at)
                return self._emit(ChaseEvent.RELOCATED, at)
            self._start(self._held + diff, at)
            return self._emit(ChaseEvent.STARTED, at)
        predicted = self._model(at)
        diff = _wrap(pos - predicted, day)
        if abs(diff) > self.config.relocate_frames:
            self._restart(tc.rate, predicted + diff, at)
            return self._emit(ChaseEvent.RELOCATED, at)
        unwrapped = predicted + diff
        frame = math.floor(unwrapped + 1e-6)
        self._last_at = at
        if frame == self._last_frame:
            # A repeated frame: not a new sample for the line; a long repeat is a stop.
            if at - self._same_since >= self.config.stop_frames / self._fps():
                self._hold(float(frame) + (unwrapped - frame))
                return self._emit(ChaseEvent.STOPPED, at)
            return None
        self._last_frame, self._same_since = frame, at
        self._samples.append((at, unwrapped))
        self._refit()
        return self._emit(ChaseEvent.REACQUIRED, at) if state is ChaseState.FREEWHEEL else None

    def locate(self, tc: Timecode, at: float) -> ChaseEvent | None:
        """The source located to ``tc`` and is stopped there (MTC full-frame message)."""
        pos = float(tc.to_frames())
        if tc.rate is not self.rate:
            first = self.rate is None
            self._restart(tc.rate, pos, at)
            self._hold(pos)
            return self._emit(ChaseEvent.LOCKED if first else ChaseEvent.RELOCATED, at)
        current = self.read(at).position
        assert current is not None
        diff = _wrap(pos - current, tc.rate.frames_per_day)
        was_running = self._running
        self._last_at = at
        if abs(diff) >= 1.0:
            self.generation += 1
            self.origin = current + diff
            self._floor = -math.inf
            self._hold(current + diff)
            return self._emit(ChaseEvent.RELOCATED, at)
        self._hold(current + diff)
        return self._emit(ChaseEvent.STOPPED, at) if was_running else None

    def _restart(self, rate: FrameRate, pos: float, at: float) -> None:
        self.rate = rate
        self.generation += 1
        self.origin = pos
        self._floor, self._floor_at = -math.inf, -math.inf
        self._start(pos, at)

    def _start(self, pos: float, at: float) -> None:
        self._running = True
        self._samples.clear()
        self._samples.append((at, pos))
        self._last_at = at
        self._last_frame = math.floor(pos + 1e-6)
        self._same_since = at
        self._polled = ChaseState.RUNNING
        self._refit()

    def _hold(self, pos: float) -> None:
        self._running = False
        self._held = pos
        self._samples.clear()
        self._polled = ChaseState.STOPPED

    def _refit(self) -> None:
        """Least-squares line through the recent samples (times relative to the newest)."""
        fps = self._fps()
        t_new = self._samples[-1][0]
        while self._samples and t_new - self._samples[0][0] > self.config.window_s:
            self._samples.popleft()
        n = len(self._samples)
        ts = [t - t_new for t, _ in self._samples]
        ps = [p for _, p in self._samples]
        t_mean = sum(ts) / n
        speed = fps
        span = ts[-1] - ts[0]
        if n >= 3 and span >= self.config.min_fit_span_s:
            sxx = sum((t - t_mean) ** 2 for t in ts)
            p_mean0 = sum(ps) / n
            sxy = sum((t - t_mean) * (p - p_mean0) for t, p in zip(ts, ps, strict=True))
            fitted = sxy / sxx
            if abs(fitted / fps - 1.0) <= self.config.max_speed_error:
                speed = fitted
        # Offset through the mean point with that slope: jitter averages out.
        p_mean = sum(p - speed * t for t, p in zip(ts, ps, strict=True)) / n
        self._fit = (t_new, p_mean, speed)

    def _emit(self, event: ChaseEvent, now: float) -> ChaseEvent:
        self.events[event] = self.events.get(event, 0) + 1
        if self.on_event is not None:
            try:
                self.on_event(event, self.read(now))
            except Exception:
                log.exception("timecode event callback failed")
        return event


@dataclass(frozen=True, slots=True)
class Trigger:
    """Start cue ``cue`` of cue list ``cue_list`` when timecode ``at`` is passed."""

    key: str
    at: Timecode
    cue_list: str
    cue: str
    callback: Callable[[Firing], None] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Firing:
    trigger: Trigger
    now: float  # monotonic time of the poll that fired it
    position: float  # chased position (frames) at that poll
    late_frames: float  # how far past the trigger the position was


class TriggerScheduler:
    """Fires each armed ``Trigger`` once when the chased time passes it (module docstring).

    ``poll(now)`` is cheap; call it from the playback engine's tick, or run ``run()`` which
    sleeps until the next trigger is due (or ``period_s`` at most) and polls.
    """

    def __init__(
        self,
        clock: ChaseClock,
        *,
        on_fire: Callable[[Firing], None] | None = None,
        rearm_on_backward: bool = False,
    ) -> None:
        self.clock = clock
        self.on_fire = on_fire
        self.rearm_on_backward = rearm_on_backward
        self.callback_errors = 0
        self._triggers: dict[str, Trigger] = {}
        self._fired: set[str] = set()
        self._prev: float | None = None
        self._inclusive = True
        self._generation = -1

    def add(
        self,
        at: Timecode,
        cue_list: str,
        cue: str,
        *,
        key: str | None = None,
        callback: Callable[[Firing], None] | None = None,
    ) -> Trigger:
        """Register (armed); the same ``key`` replaces an earlier trigger and re-arms it."""
        key = key if key is not None else f"{cue_list}/{cue}@{at}"
        trigger = Trigger(key, at, cue_list, cue, callback)
        self._triggers[key] = trigger
        self._fired.discard(key)
        return trigger

    def extend(self, triggers: Iterable[Trigger]) -> None:
        for t in triggers:
            self.add(t.at, t.cue_list, t.cue, key=t.key, callback=t.callback)

    def remove(self, key: str) -> None:
        self._triggers.pop(key, None)
        self._fired.discard(key)

    def clear(self) -> None:
        self._triggers.clear()
        self._fired.clear()

    def rearm(self, from_tc: Timecode | None = None) -> None:
        """Arm again every fired trigger (at or after ``from_tc`` when given)."""
        if from_tc is None:
            self._fired.clear()
            return
        start = from_tc.to_seconds()
        self._fired = {k for k in self._fired if self._triggers[k].at.to_seconds() < start}

    def armed(self) -> list[Trigger]:
        return sorted(
            (t for k, t in self._triggers.items() if k not in self._fired),
            key=lambda t: t.at.to_seconds(),
        )

    def fired(self) -> list[str]:
        return sorted(self._fired)

    def _frame_of(self, trigger: Trigger, rate: FrameRate) -> int:
        return trigger.at.convert(rate).to_frames()

    def poll(self, now: float) -> list[Firing]:
        reading = self.clock.read(now)
        if reading.position is None or reading.rate is None:
            self._prev = None
            return []
        pos, rate = reading.position, reading.rate
        day = rate.frames_per_day
        if reading.generation != self._generation or self._prev is None:
            backward = self._prev is not None and _wrap(pos - self._prev, day) < 0
            if backward and self.rearm_on_backward:
                self.rearm(Timecode.from_frames(math.floor(pos), rate))
            self._generation = reading.generation
            # Start from where the clock locked or relocated, not where the first poll after
            # it found it, so a trigger at exactly the located frame fires.
            start = self.clock.origin if self.clock.generation == reading.generation else pos
            self._prev, self._inclusive = min(start, pos), True
        if reading.state not in (ChaseState.RUNNING, ChaseState.FREEWHEEL):
            return []
        advance = pos - self._prev
        if advance < 0 or (advance == 0 and not self._inclusive):
            return []
        due: list[tuple[float, Trigger]] = []
        for key, trigger in self._triggers.items():
            if key in self._fired:
                continue
            d = (self._frame_of(trigger, rate) - self._prev) % day
            if (d == 0 and self._inclusive) or 0 < d <= advance:
                due.append((d, trigger))
        self._prev = pos
        if advance > 0:
            self._inclusive = False
        due.sort(key=lambda item: item[0])
        out = []
        for d, trigger in due:
            self._fired.add(trigger.key)
            firing = Firing(trigger, now, pos, advance - d)
            out.append(firing)
            for callback in (trigger.callback, self.on_fire):
                if callback is None:
                    continue
                try:
                    callback(firing)
                except Exception:
                    self.callback_errors += 1
                    log.exception("timecode trigger %s: callback failed", trigger.key)
        return out

    def seconds_until_next(self, now: float) -> float | None:
        """Real seconds until the next armed trigger at the chased speed (None: not running)."""
        reading = self.clock.read(now)
        if reading.state is not ChaseState.RUNNING or reading.position is None:
            return None
        assert reading.rate is not None
        day = reading.rate.frames_per_day
        gaps = [(self._frame_of(t, reading.rate) - reading.position) % day for t in self.armed()]
        if not gaps:
            return None
        return min(gaps) / float(reading.rate.fps)

    async def run(self, period_s: float = 0.01, clock: Callable[[], float] | None = None) -> None:
        """Poll until cancelled: at most ``period_s`` apart, and just after a trigger is due."""
        loop = asyncio.get_running_loop()
        now_fn = clock or loop.time
        while True:
            now = now_fn()
            self.clock.poll(now)
            self.poll(now)
            wait = self.seconds_until_next(now_fn())
            await asyncio.sleep(period_s if wait is None else min(period_s, wait + 0.0005))


class TimecodeInput:
    """Feeds a ``ChaseClock`` from the drivers' callbacks; counts what it refuses.

    ``on_artnet`` fits ``ArtNetInput(on_timecode=...)`` and takes one Art-Net stream
    (``stream_id``, 0 = the master); ``on_mtc`` fits ``MtcInput(on_time=...)``; ``on_ltc`` takes
    frames from ``drivers.audio.ltc.LtcDecoder``. A label that does
    not exist at its rate (a drop-frame label that is skipped) is counted in ``errors``.
    """

    def __init__(self, clock: ChaseClock, *, stream_id: int = 0) -> None:
        self.clock = clock
        self.stream_id = stream_id
        self.accepted = 0
        self.ignored = 0
        self.errors = 0
        self.last_error = ""

    def on_artnet(self, packet: ArtTimeCode, at: float, sender: str = "") -> None:
        if packet.stream_id != self.stream_id:
            self.ignored += 1
            return
        tc = self._label(
            packet.hours, packet.minutes, packet.seconds, packet.frames, packet.type, sender
        )
        if tc is not None:
            self.clock.feed(tc, at)

    def on_mtc(self, time: MtcTime, at: float) -> None:
        tc = self._label(time.hours, time.minutes, time.seconds, time.frames, time.rate_code, "")
        if tc is None:
            return
        if time.full_frame:
            self.clock.locate(tc, at)
        else:
            self.clock.feed(tc, at, offset_frames=time.offset_frames)

    def on_ltc(self, frame: LtcFrame, at: float) -> None:
        """An LTC frame whose sync word ended at monotonic ``at`` (the audio input's clock:
        the buffer's capture time + ``frame.end_sample`` / sample rate)."""
        tc = self._label(
            frame.hours, frame.minutes, frame.seconds, frame.frames, frame.rate_code, ""
        )
        if tc is not None:
            self.clock.feed(tc, at, offset_frames=frame.offset_frames)

    def _label(self, h: int, m: int, s: int, f: int, code: int, sender: str) -> Timecode | None:
        try:
            tc = Timecode(h, m, s, f, FrameRate.from_code(code))
        except TimecodeError as exc:
            self.errors += 1
            self.last_error = f"{sender}: {exc}" if sender else str(exc)
            return None
        self.accepted += 1
        return tc
