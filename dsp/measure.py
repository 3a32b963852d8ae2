"""Sweep measurement through the audio driver: the plan, the realtime processor, the analysis.

Three steps, each usable on its own::

    plan = plan_measurement(48000, outputs=(1, 2), inputs=(1, 2), sweeps=3, ir_s=1.5)
    factory = MeasurementFactory(plan)          # picklable: AudioDriver(..., factory, on_event=...)
    driver.control(StartMeasurement("m1"))       # plays and records; events come back:
    # MeasurementStarted, MeasurementProgress..., then MeasurementDone(recording) or ...Failed
    result = analyze_recording(plan, done.recording)   # or load_recording(done.path)

**The plan** (``MeasurementPlan``, frozen, small, picklable: parameters only, the sweep's samples
are computed where they are needed) lays out one timeline: ``noise_s`` of silence (the
background-noise check), then for each output in turn ``sweeps`` sweeps, each followed by
``gap_s`` of silence in which the response rings out. Outputs play one after another, never
together, so each output x input pair gets its own IR. Channels are 1-based processor channels
(the driver's ``output_map`` / ``input_map`` put them on device channels).

**The processor** (``MeasurementProcessor``, made in the audio host by ``MeasurementFactory``)
runs in PortAudio's callback. It is idle (silent outputs) until a ``StartMeasurement`` control
message, or from its first block with ``MeasurementFactory(plan, start=True)``. The control
thread (the host's control loop, never the audio thread) does the slow work of a start:
computes the excitation timeline (float32, one channel), allocates the recording buffer
``[frames, inputs]``, and publishes the run by one reference store. The callback then, per block,
zeroes the outputs, copies the timeline's slice onto the output whose turn it is, copies the
chosen inputs into the recording (``np.take(..., out=)``), and advances a position: no buffer
is allocated, no lock taken (what remains are views and ints from CPython's free lists, as in
the engine). At the end it sets ``finished``; the control thread's ``poll_events`` then hands
the recording over in ``MeasurementDone``. An ``AbortMeasurement`` fades the running block out
and ends the run with ``MeasurementFailed(reason="aborted")``. Each field of a run has one
writer: ``abort`` the control thread; ``pos``, ``finished`` the audio thread.

**Around another processor** (``MeasurementFactory(inner=...)``: in the service, the
sound-field engine): idle, the inner processor's output passes through; while measuring it
still runs every block (its state keeps time), the measurement's outputs carry only the
excitation, and with the plan's ``mute_inner`` every output is silent (the inner processor
faded out over the run's first block and back in over the first block after it): the natural
room is measured with the enhancement off, the combined response with it on. Control messages
that are not the measurement's go to the inner processor, and its events come up with ours.

**Fetching the recording**: by default the ``MeasurementDone`` event carries it, pickled down
the host's pipe; with ``save_to`` the control thread writes it to that ``.npz`` file instead and
the event carries the path (``load_recording``). The parent receives pipe messages on its event
loop, which the receipt blocks. Measured on the 2-core development machine under load (another
process per side, spawn, median of 3): 10 s x 2 channels (3.8 MB) blocks the parent's loop for
7 ms over the pipe; 20 s x 8 channels (31 MB) for 160-230 ms, against 0.1 ms for the file's
event plus 35-85 ms to load it, which the parent can do in a thread (the host spends 80-220 ms
writing it, in its control thread, not the audio thread). So: the pipe up to a few MB
(``MeasurementPlan.recording_bytes``), a file beyond, on a node whose event loop also drives
lighting.

**The analysis** (``analyze_recording``, pure numerics, run it in an executor) checks the
recording (sample rate, shape, channels, NaN, digital silence: clear ``MeasurementError``s;
clipping: flagged), measures the noise per input and band from the silent lead-in, deconvolves
every sweep (``dsp.sweep``), averages the sweeps that agree, separates the harmonic IRs, and
reports per output x input pair the IR, the THD, the peak-to-noise ratio per band and its
warnings (``MeasurementWarning``: ``low_noise_margin`` below ``min_pnr_db``, ``not_heard``,
``clipped``, ``rejected_sweeps``, ``truncated``, ``harmonic_overlap``, ``no_noise_check``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dsp.field import BANDS_HZ
from dsp.sweep import (
    NOISE_MARGIN_DB,
    Sweep,
    SweepError,
    average,
    check_fs,
    deconvolve,
    ir_levels_db,
    ir_noise_floor,
    noise_levels,
    separate,
)

FloatArray = NDArray[np.float64]
Block = NDArray[np.float32]

MAX_CHANNELS = 128
MAX_SWEEPS = 64
MAX_SECONDS = 3600.0
MAX_RECORDING_BYTES = 2 * 2**30
CLIP_LEVEL = 0.999
"""A recorded sample at or above this magnitude (1.0 = full scale) counts as clipped."""
HEARD_DB = 10.0
"""A pair whose IR stands less than this above the noise in every band was not heard."""
PROGRESS_S = 1.0
TRUNCATED_DB = 10.0
"""An IR whose end is this far above the noise was cut off while still decaying."""
OVERLAP_DB = -40.0
"""A 2nd harmonic above this (re the linear IR) is loud enough for its overlap to matter."""


class MeasurementError(SweepError):
    """A plan or a recording that cannot be measured; the message says why."""


def _channels(name: str, chans: object) -> tuple[int, ...]:
    if not isinstance(chans, tuple | list) or not chans:
        raise MeasurementError(f"{name}: give at least one 1-based channel number, got {chans!r}")
    out = []
    for c in chans:
        if isinstance(c, bool) or not isinstance(c, int | np.integer) or not 1 <= c <= MAX_CHANNELS:
            raise MeasurementError(f"{name}: channels are numbered 1..{MAX_CHANNELS}, got {c!r}")
        out.append(int(c))
    if len(set(out)) != len(out):
        raise MeasurementError(f"{name}: channel named twice in {out}")
    return tuple(out)


@dataclass(frozen=True)
class MeasurementPlan:
    """What to play and record, and how to analyze it. Make one with ``plan_measurement``."""

    fs: int
    outputs: tuple[int, ...]  # 1-based processor outputs, measured one after another
    inputs: tuple[int, ...]  # 1-based processor inputs, all recorded throughout
    sweep: Sweep
    sweeps: int  # per output
    noise_frames: int  # the silent lead-in (background-noise check)
    gap_frames: int  # silence after each sweep
    ir_frames: int  # the IR kept, from the sweep's first sample on
    harmonics: int = 5  # harmonic IRs separated: 2..harmonics
    min_pnr_db: float = NOISE_MARGIN_DB
    save_to: str | None = None  # deliver the recording as this .npz file instead of the event
    mute_inner: bool = False  # silence the inner processor (the natural room) while measuring

    def __post_init__(self) -> None:
        check_fs(self.fs)
        if not isinstance(self.sweep, Sweep) or self.sweep.fs != self.fs:
            raise MeasurementError(f"the plan needs a Sweep at {self.fs} Hz")
        object.__setattr__(self, "outputs", _channels("outputs", self.outputs))
        object.__setattr__(self, "inputs", _channels("inputs", self.inputs))
        for name, low in (("sweeps", 1), ("noise_frames", 0), ("gap_frames", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise MeasurementError(f"{name} must be a whole number >= {low}, got {value!r}")
        if self.sweeps > MAX_SWEEPS:
            raise MeasurementError(f"sweeps: at most {MAX_SWEEPS} per output, got {self.sweeps}")
        if not isinstance(self.ir_frames, int) or not 1 <= self.ir_frames <= self.gap_frames:
            raise MeasurementError(
                f"the IR ({self.ir_frames} samples) must fit in the gap after each sweep "
                f"({self.gap_frames}): the response of one sweep must ring out before the next"
            )
        if not isinstance(self.harmonics, int) or not 1 <= self.harmonics <= 16:
            raise MeasurementError(f"harmonics must be 1..16, got {self.harmonics!r}")
        if not math.isfinite(self.min_pnr_db):
            raise MeasurementError("min_pnr_db must be finite")
        if self.total_frames > MAX_SECONDS * self.fs:
            raise MeasurementError(
                f"the measurement would last {self.seconds:.0f} s, more than {MAX_SECONDS:g} s"
            )
        if self.total_frames * len(self.inputs) * 4 > MAX_RECORDING_BYTES:
            raise MeasurementError("the recording would exceed 2 GiB: fewer inputs or sweeps")
        if self.save_to is not None and not (
            isinstance(self.save_to, str) and os.path.isabs(self.save_to)
        ):
            raise MeasurementError(f"save_to must be an absolute path, got {self.save_to!r}")
        if not isinstance(self.mute_inner, bool):
            raise MeasurementError(f"mute_inner must be true or false, got {self.mute_inner!r}")

    @property
    def period_frames(self) -> int:
        """One sweep and its gap."""
        return self.sweep.frames + self.gap_frames

    @property
    def section_frames(self) -> int:
        """All sweeps of one output."""
        return self.sweeps * self.period_frames

    @property
    def total_frames(self) -> int:
        return self.noise_frames + len(self.outputs) * self.section_frames

    @property
    def seconds(self) -> float:
        return self.total_frames / self.fs

    @property
    def recording_bytes(self) -> int:
        """The size of the recording (float32): over a few MB, deliver it as a file."""
        return self.total_frames * len(self.inputs) * 4

    def sweep_start(self, output_index: int, sweep_index: int) -> int:
        """The frame (from the start of the recording) at which a sweep begins."""
        return (
            self.noise_frames
            + output_index * self.section_frames
            + sweep_index * self.period_frames
        )

    def excitation(self) -> NDArray[np.float32]:
        """The whole timeline as one channel (which output plays it: ``output_at``)."""
        x = np.zeros(self.total_frames, dtype=np.float32)
        s = self.sweep.signal.astype(np.float32)
        for o in range(len(self.outputs)):
            for j in range(self.sweeps):
                start = self.sweep_start(o, j)
                x[start : start + s.size] = s
        return x


def plan_measurement(
    fs: int,
    outputs: tuple[int, ...] | list[int],
    inputs: tuple[int, ...] | list[int],
    *,
    sweeps: int = 3,
    sweep_s: float = 2.0,
    f1_hz: float = 20.0,
    f2_hz: float | None = None,
    level_db: float = -12.0,
    noise_s: float = 1.0,
    ir_s: float = 2.0,
    gap_s: float | None = None,
    harmonics: int = 5,
    min_pnr_db: float = NOISE_MARGIN_DB,
    save_to: str | None = None,
    mute_inner: bool = False,
) -> MeasurementPlan:
    """A measurement plan in friendly units.

    ``level_db``: the sweep's peak, dB re full scale. ``ir_s``: how much of each response to
    keep, counted from the moment the sweep leaves the processor (so include the loop latency:
    the room's decay to the noise plus a few blocks). ``gap_s`` (default ``ir_s``): silence after
    each sweep, at least ``ir_s``. ``f2_hz`` defaults to 20 kHz or 0.45 fs, whichever is lower.
    ``mute_inner``: with an inner processor (the sound-field engine), silence all of its outputs
    while measuring (the natural room); otherwise only the measurement's outputs are taken from
    it (the room plus the enhancement).
    """
    if isinstance(level_db, bool) or not isinstance(level_db, int | float):
        raise MeasurementError(f"level_db must be a number, got {level_db!r}")
    if not (math.isfinite(level_db) and -120.0 <= level_db <= 0.0):
        raise MeasurementError(f"level_db must lie in -120..0 dB re full scale, got {level_db}")
    for name, value in (("noise_s", noise_s), ("ir_s", ir_s), ("gap_s", gap_s)):
        if value is not None and not (
            isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= MAX_SECONDS
        ):
            raise MeasurementError(f"{name} must lie in 0..{MAX_SECONDS:g} s, got {value!r}")
    fs = check_fs(fs)
    f2 = min(20000.0, 0.45 * fs) if f2_hz is None else f2_hz
    sweep = Sweep(fs, f1_hz, f2, sweep_s, 10 ** (level_db / 20))
    ir_frames = round(ir_s * fs)
    gap = ir_frames if gap_s is None else round(gap_s * fs)
    return MeasurementPlan(
        fs=fs,
        outputs=tuple(outputs),
        inputs=tuple(inputs),
        sweep=sweep,
        sweeps=sweeps,
        noise_frames=round(noise_s * fs),
        gap_frames=gap,
        ir_frames=ir_frames,
        harmonics=harmonics,
        min_pnr_db=min_pnr_db,
        save_to=save_to,
        mute_inner=mute_inner,
    )


# --- commands and events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartMeasurement:
    """Start a run named ``id``: of ``plan``, or of the factory's plan when ``None``."""

    id: str
    plan: MeasurementPlan | None = None


@dataclass(frozen=True, slots=True)
class AbortMeasurement:
    id: str


@dataclass(frozen=True, slots=True)
class MeasurementStarted:
    id: str
    seconds: float


@dataclass(frozen=True, slots=True)
class MeasurementProgress:
    id: str
    seconds: float  # recorded so far
    total_s: float


@dataclass(frozen=True)
class Recording:
    """What was recorded: ``data[frame, i]`` is processor input ``inputs[i]`` at ``fs``."""

    fs: int
    inputs: tuple[int, ...]
    data: NDArray[np.float32]
    id: str = ""


@dataclass(frozen=True, slots=True)
class MeasurementDone:
    """A run ended; the recording is here, or in the file ``path`` (``plan.save_to``)."""

    id: str
    recording: Recording | None
    path: str | None = None


@dataclass(frozen=True, slots=True)
class MeasurementFailed:
    id: str
    reason: str  # "aborted", "busy", "bad_plan", "save_failed", "stream_format"
    text: str


MeasurementEvent = MeasurementStarted | MeasurementProgress | MeasurementDone | MeasurementFailed


def save_recording(path: str, recording: Recording) -> None:
    """Write ``recording`` as an uncompressed ``.npz`` (``data``, ``fs``, ``inputs``, ``id``)."""
    with open(path, "wb") as f:
        np.savez(
            f,
            data=recording.data,
            fs=np.int64(recording.fs),
            inputs=np.asarray(recording.inputs, dtype=np.int64),
            id=np.str_(recording.id),
        )


def load_recording(path: str) -> Recording:
    """Read a recording written by ``save_recording`` (no pickles are loaded)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return Recording(
                fs=int(z["fs"]),
                inputs=tuple(int(c) for c in z["inputs"]),
                data=np.asarray(z["data"]),
                id=str(z["id"]),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise MeasurementError(f"{path} is not a measurement recording: {exc}") from exc


# --- the processor --------------------------------------------------------------------------------


class _Run:
    """One measurement in progress: built by the control thread, played by the audio thread."""

    __slots__ = (
        "abort",
        "excitation",
        "finished",
        "id",
        "in_idx",
        "mute",
        "noise",
        "out_ch",
        "plan",
        "pos",
        "rec",
        "section",
        "total",
    )

    def __init__(self, run_id: str, plan: MeasurementPlan) -> None:
        self.id = run_id
        self.plan = plan
        self.excitation = plan.excitation()
        self.rec = np.zeros((plan.total_frames, len(plan.inputs)), dtype=np.float32)
        self.in_idx = np.asarray([c - 1 for c in plan.inputs], dtype=np.intp)
        self.out_ch = [c - 1 for c in plan.outputs]
        self.mute = plan.mute_inner
        self.noise = plan.noise_frames
        self.section = plan.section_frames
        self.total = plan.total_frames
        self.pos = 0  # audio thread
        self.finished = False  # audio thread
        self.abort = False  # control thread


class MeasurementProcessor:
    """The measurement, as a processor of the audio driver (``process(inp, out)`` per block)
    with ``control`` / ``poll_events`` (``drivers.audio.host.Controllable``).

    ``fmt`` is the stream's format (``drivers.audio.StreamFormat``: ``samplerate``,
    ``blocksize``, ``n_in``, ``n_out``); plans are checked against it. Without one, the first
    plan's rate and channels are taken on trust (a test harness).

    ``inner``: a processor this one wraps (the sound-field engine). Idle, its output passes
    through; while measuring it still runs every block (its state keeps time), but the
    measurement's outputs carry only the excitation, and with the plan's ``mute_inner`` every
    output does (faded out over the first block, and back in over the first block after). Control
    messages that are not the measurement's go to the inner processor's ``control``, and its
    ``poll_events`` come up with the measurement's."""

    def __init__(
        self,
        plan: MeasurementPlan | None = None,
        fmt: Any = None,
        *,
        start: bool = False,
        inner: Callable[[Block, Block], None] | None = None,
    ) -> None:
        self.plan = plan
        self._fmt = fmt
        self._inner = inner
        self._resume = False  # audio thread: fade the inner processor back in (after a mute)
        self._run: _Run | None = None
        self._reported: _Run | None = None  # the run the control thread reports on
        self._events: list[Any] = []
        self._next_progress = 0
        blocksize = int(fmt.blocksize) if fmt is not None else 8192
        self._ramp = np.linspace(1.0, 0.0, blocksize, dtype=np.float32)
        self._fall = self._ramp
        self._rise = self._ramp[::-1].copy()
        if plan is not None:
            self._check(plan)
            if start:
                self._begin("measurement", plan)

    # --- audio thread ---------------------------------------------------------------------

    def __call__(self, inp: Block, out: Block) -> None:
        self.process(inp, out)

    def process(self, inp: Block, out: Block) -> None:
        run = self._run
        inner = self._inner
        if run is None or run.finished:
            if inner is None:
                out.fill(0.0)
                return
            inner(inp, out)
            if self._resume:
                self._resume = False
                self._fade(out, self._rise)
            return
        pos = run.pos
        n = out.shape[0]
        if inner is None:
            out.fill(0.0)
        else:
            inner(inp, out)
            if run.mute and pos > 0:
                out.fill(0.0)
            else:
                if run.mute:  # the first block: fade the inner processor out
                    self._fade(out, self._fall)
                for c in run.out_ch:  # the measurement's outputs carry only the excitation
                    out[:, c].fill(0.0)
        m = min(n, run.total - pos)
        # The output whose section the block ends in: a block that straddles two sections has
        # only gap (silence) in the earlier one, since a gap is at least one block long.
        sec = (pos + m - 1 - run.noise) // run.section
        if sec >= 0:
            ch = run.out_ch[sec]
            if run.abort:
                ramp = self._ramp  # its last m values fall to zero, whatever the block
                np.multiply(run.excitation[pos : pos + m], ramp[ramp.size - m :], out=out[:m, ch])
            else:
                out[:m, ch] = run.excitation[pos : pos + m]
        # (Whole blocks, all but the last, skip the inp[:m] view: one object fewer per block.)
        src = inp if m == n else inp[:m]
        np.take(src, run.in_idx, axis=1, out=run.rec[pos : pos + m], mode="clip")
        run.pos = pos + m
        if run.abort or run.pos >= run.total:
            self._resume = run.mute and inner is not None
            run.finished = True

    @staticmethod
    def _fade(out: Block, ramp: NDArray[np.float32]) -> None:
        """Multiply every channel by ``ramp`` (channel by channel: a broadcast over the block
        would have the ufunc machinery allocate)."""
        n = out.shape[0]
        r = ramp if n == ramp.shape[0] else ramp[:n]
        for c in range(out.shape[1]):
            col = out[:, c]
            np.multiply(col, r, out=col)

    # --- control thread -------------------------------------------------------------------

    def control(self, payload: Any) -> None:
        if isinstance(payload, StartMeasurement):
            plan = payload.plan if payload.plan is not None else self.plan
            if not isinstance(plan, MeasurementPlan):
                text = "no plan: give one with the start" if plan is None else "not a plan"
                self._fail(payload.id, "bad_plan", f"{text} ({type(plan).__name__})")
                return
            if self._reported is not None:
                busy = self._reported.id
                self._fail(payload.id, "busy", f"measurement {busy!r} is still running")
                return
            try:
                self._check(plan)
            except MeasurementError as exc:
                self._fail(payload.id, "stream_format", str(exc))
                return
            self._begin(payload.id, plan)
        elif isinstance(payload, AbortMeasurement):
            run = self._reported
            if run is not None and run.id == payload.id:
                run.abort = True
        elif self._inner is not None and callable(getattr(self._inner, "control", None)):
            self._inner.control(payload)  # type: ignore[attr-defined]
        else:
            kind = type(payload).__name__
            raise TypeError(f"a measurement takes StartMeasurement or AbortMeasurement, not {kind}")

    def poll_events(self) -> list[Any]:
        run = self._reported
        if run is not None:
            fs = run.plan.fs
            if run.finished:
                self._finish(run)
            elif run.pos >= self._next_progress:
                self._events.append(MeasurementProgress(run.id, run.pos / fs, run.total / fs))
                self._next_progress = run.pos + round(PROGRESS_S * fs)
        events, self._events = self._events, []
        poll = getattr(self._inner, "poll_events", None)
        if callable(poll):
            events += poll()
        return events

    @property
    def running(self) -> bool:
        return self._reported is not None

    def _check(self, plan: MeasurementPlan) -> None:
        fmt = self._fmt
        if fmt is None:
            return
        if plan.fs != int(fmt.samplerate):
            raise MeasurementError(f"the plan is at {plan.fs} Hz, the stream at {fmt.samplerate}")
        if max(plan.outputs) > int(fmt.n_out) or max(plan.inputs) > int(fmt.n_in):
            raise MeasurementError(
                f"the plan uses outputs {plan.outputs} and inputs {plan.inputs}; the stream has "
                f"{fmt.n_out} output(s) and {fmt.n_in} input(s)"
            )
        if plan.gap_frames < int(fmt.blocksize):
            raise MeasurementError(
                f"the gap ({plan.gap_frames} samples) is shorter than a block ({fmt.blocksize})"
            )

    def _begin(self, run_id: str, plan: MeasurementPlan) -> None:
        run = _Run(run_id, plan)  # the slow part (allocation), here in the control thread
        self._reported = run
        self._next_progress = 0
        self._events.append(MeasurementStarted(run_id, plan.seconds))
        self._run = run  # the callback picks it up on its next block

    def _finish(self, run: _Run) -> None:
        self._reported = None
        self._run = None
        if run.abort:
            self._events.append(MeasurementFailed(run.id, "aborted", "aborted on request"))
            return
        recording = Recording(run.plan.fs, run.plan.inputs, run.rec, run.id)
        path = run.plan.save_to
        if path is None:
            self._events.append(MeasurementDone(run.id, recording))
            return
        try:
            save_recording(path, recording)
        except OSError as exc:
            self._events.append(MeasurementFailed(run.id, "save_failed", f"{path}: {exc}"))
            return
        self._events.append(MeasurementDone(run.id, None, path))

    def _fail(self, run_id: str, reason: str, text: str) -> None:
        self._events.append(MeasurementFailed(run_id, reason, text))


@dataclass(frozen=True)
class MeasurementFactory:
    """Picklable processor factory for ``drivers.audio.AudioDriver``: a ``MeasurementProcessor``
    for the stream's format; with ``start`` the plan runs from the stream's first block; with
    ``inner`` (another picklable factory: the sound-field engine's) it wraps that processor."""

    plan: MeasurementPlan | None = None
    start: bool = False
    inner: Callable[[Any], Callable[[Block, Block], None]] | None = None

    def __call__(self, fmt: Any) -> MeasurementProcessor:
        inner = self.inner(fmt) if self.inner is not None else None
        return MeasurementProcessor(self.plan, fmt, start=self.start, inner=inner)


# --- analysis -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasurementWarning:
    """Something a person should know about a result. ``code`` is one of ``low_noise_margin``,
    ``not_heard``, ``clipped``, ``rejected_sweeps``, ``truncated``, ``harmonic_overlap``,
    ``no_noise_check``."""

    code: str
    text: str
    output: int | None = None
    input: int | None = None
    band_hz: float | None = None


@dataclass(frozen=True)
class NoiseReport:
    """The background noise at one input, from the silent lead-in."""

    input: int
    level_dbfs: tuple[float, ...]  # per band of the measurement's ``bands_hz``, dB re RMS 1.0
    broadband_dbfs: float


@dataclass(frozen=True)
class PairResult:
    """One output x input pair: its IR (from the sweep's first sample: includes the loop's
    latency) and what came with it."""

    output: int
    input: int
    ir: FloatArray
    harmonic_db: tuple[float, ...]  # harmonic k = 2.. energy over the linear IR's, dB
    thd: float  # sqrt(sum of harmonic energies / linear energy)
    peak_to_noise_db: tuple[float, ...] | None  # per band; None without a noise check
    onset_s: float  # first sample within 20 dB of the IR's peak
    sweeps_used: int
    residual_db: tuple[float, ...]  # each sweep's distance from the median IR


@dataclass(frozen=True)
class Measurement:
    """The result of ``analyze_recording``."""

    fs: int
    bands_hz: tuple[int, ...]
    pairs: tuple[PairResult, ...]
    noise: tuple[NoiseReport, ...]
    warnings: tuple[MeasurementWarning, ...] = field(default=())

    def pair(self, output: int, input: int) -> PairResult:
        for p in self.pairs:
            if p.output == output and p.input == input:
                return p
        raise KeyError(f"no pair output {output} x input {input}")

    def ir(self, output: int, input: int) -> FloatArray:
        return self.pair(output, input).ir

    @property
    def noise_margin_ok(self) -> bool:
        """No pair was flagged for too little peak-to-noise ratio (or not heard at all)."""
        return not any(w.code in ("low_noise_margin", "not_heard") for w in self.warnings)

    def flagged(self, code: str) -> list[MeasurementWarning]:
        return [w for w in self.warnings if w.code == code]

    def to_dict(self, irs: bool = False) -> dict[str, Any]:
        """JSON-able summary (the IR samples only with ``irs``)."""

        def num(x: float) -> float | None:
            return round(float(x), 4) if math.isfinite(x) else None

        return {
            "fs": self.fs,
            "bands_hz": list(self.bands_hz),
            "noise": [
                {
                    "input": n.input,
                    "level_dbfs": [num(v) for v in n.level_dbfs],
                    "broadband_dbfs": num(n.broadband_dbfs),
                }
                for n in self.noise
            ],
            "pairs": [
                {
                    "output": p.output,
                    "input": p.input,
                    "harmonic_db": [num(v) for v in p.harmonic_db],
                    "thd": num(p.thd),
                    "peak_to_noise_db": None
                    if p.peak_to_noise_db is None
                    else [num(v) for v in p.peak_to_noise_db],
                    "onset_s": num(p.onset_s),
                    "sweeps_used": p.sweeps_used,
                    **({"ir": [float(v) for v in p.ir]} if irs else {}),
                }
                for p in self.pairs
            ],
            "warnings": [
                {k: v for k, v in vars(w).items() if v is not None} for w in self.warnings
            ],
        }


def _onset(h: FloatArray) -> int:
    e = h**2
    peak = float(e.max(initial=0.0))
    return int(np.argmax(e >= 0.01 * peak)) if peak > 0 else 0


def check_recording(plan: MeasurementPlan, recording: Recording) -> NDArray[np.float32]:
    """The recording's samples, if it fits the plan; a ``MeasurementError`` saying why not."""
    if not isinstance(recording, Recording):
        raise MeasurementError(f"expected a Recording, got {type(recording).__name__}")
    if recording.fs != plan.fs:
        raise MeasurementError(
            f"the recording is at {recording.fs} Hz, the plan at {plan.fs} Hz: "
            "a recording is analyzed at the rate it was made"
        )
    if tuple(recording.inputs) != plan.inputs:
        raise MeasurementError(
            f"the recording holds inputs {recording.inputs}, the plan records {plan.inputs}"
        )
    data = np.asarray(recording.data)
    if data.dtype.kind != "f":
        raise MeasurementError(f"recorded samples must be floating point, got {data.dtype}")
    want = (plan.total_frames, len(plan.inputs))
    if data.shape != want:
        raise MeasurementError(
            f"the recording is {data.shape} (frames, inputs); the plan needs {want} "
            f"({plan.seconds:.2f} s): was it cut short, or made with another plan?"
        )
    finite = np.isfinite(data)
    if not finite.all():
        bad = [plan.inputs[i] for i in np.flatnonzero(~finite.all(axis=0))]
        raise MeasurementError(f"the recording holds NaN or infinite samples on input(s) {bad}")
    silent = [plan.inputs[i] for i in np.flatnonzero(~data.any(axis=0))]
    if silent:
        raise MeasurementError(
            f"input(s) {silent} recorded digital silence (all zeros): nothing is connected, or "
            "the stream's input map points at an unused channel"
        )
    return data


def analyze_recording(
    plan: MeasurementPlan, recording: Recording, bands: tuple[int, ...] = BANDS_HZ
) -> Measurement:
    """Turn a recording made by a ``MeasurementProcessor`` running ``plan`` into IRs."""
    data = check_recording(plan, recording)
    fs, sweep = plan.fs, plan.sweep
    warnings: list[MeasurementWarning] = []

    for i, c in enumerate(plan.inputs):
        clipped = int(np.count_nonzero(np.abs(data[:, i]) >= CLIP_LEVEL))
        if clipped:
            warnings.append(
                MeasurementWarning(
                    "clipped",
                    f"input {c}: {clipped} sample(s) at full scale: lower the sweep level "
                    "or the input gain (clipping shows as distortion, and spoils the IR)",
                    input=c,
                )
            )
    noise: list[NoiseReport] = []
    floors: list[FloatArray | None] = []
    if plan.noise_frames >= round(0.1 * fs):
        for i, c in enumerate(plan.inputs):
            quiet = data[: plan.noise_frames, i].astype(np.float64)
            levels = noise_levels(quiet, fs, bands)
            broadband = float(np.mean((quiet - quiet.mean()) ** 2))
            noise.append(NoiseReport(c, tuple(map(float, levels)), _db(broadband)))
            floors.append(ir_noise_floor(quiet, sweep, bands))
    else:
        warnings.append(
            MeasurementWarning(
                "no_noise_check",
                "no silent lead-in of at least 0.1 s was recorded: noise margin unknown",
            )
        )
        floors = [None] * len(plan.inputs)

    pairs: list[PairResult] = []
    clearance = sweep.harmonic_clearance_s
    for o, out_ch in enumerate(plan.outputs):
        starts = [plan.sweep_start(o, j) for j in range(plan.sweeps)]
        segments = np.stack(
            [data[s : s + plan.period_frames].T.astype(np.float64) for s in starts]
        )  # [sweeps, inputs, period]
        response = deconvolve(segments, sweep, fs)
        sep = separate(response, sweep, plan.ir_frames, plan.harmonics)
        for i, in_ch in enumerate(plan.inputs):
            avg = average(sep.linear[:, i])
            used = np.asarray(avg.used)
            ir = avg.ir
            energy = float(np.sum(ir**2))
            harmonic_db = []
            for h in sep.harmonics:
                e = float(np.sum(h[used, i].mean(axis=0) ** 2))
                harmonic_db.append(_db(e / energy) if energy > 0 else math.nan)
            thd = math.sqrt(sum(10 ** (d / 10) for d in harmonic_db if math.isfinite(d)))
            if harmonic_db and harmonic_db[0] > OVERLAP_DB and plan.ir_frames / fs > clearance:
                warnings.append(
                    MeasurementWarning(
                        "harmonic_overlap",
                        f"output {out_ch} -> input {in_ch}: 2nd harmonic at "
                        f"{harmonic_db[0]:.0f} dB, and IRs of {plan.ir_frames / fs:.2f} s are "
                        f"longer than the sweep's harmonic clearance ({clearance:.2f} s): the "
                        "harmonic's response reaches into the IR; use a longer sweep",
                        output=out_ch,
                        input=in_ch,
                    )
                )
            if avg.count < plan.sweeps:
                dropped = [j + 1 for j, u in enumerate(avg.used) if not u]
                warnings.append(
                    MeasurementWarning(
                        "rejected_sweeps",
                        f"output {out_ch} -> input {in_ch}: sweep(s) {dropped} disagreed with "
                        f"the others (an xrun or a transient noise) and were left out",
                        output=out_ch,
                        input=in_ch,
                    )
                )
            pnr: tuple[float, ...] | None = None
            floor = floors[i]
            if floor is not None:
                peaks, ends = ir_levels_db(ir, fs, floor / avg.count, bands)
                pnr = tuple(map(float, peaks))
                warnings += _margin_warnings(plan, out_ch, in_ch, pnr, bands)
                worst = int(np.argmax(ends))
                if max(pnr) >= HEARD_DB and ends[worst] > TRUNCATED_DB:
                    warnings.append(
                        MeasurementWarning(
                            "truncated",
                            f"output {out_ch} -> input {in_ch}: the IR is still "
                            f"{ends[worst]:.0f} dB above the noise at its end "
                            f"({bands[worst]} Hz): the room rings longer than ir_s "
                            f"({plan.ir_frames / fs:g} s) with the loop's latency; lengthen "
                            "ir_s and gap_s, or the decay is cut off",
                            output=out_ch,
                            input=in_ch,
                            band_hz=float(bands[worst]),
                        )
                    )
            pairs.append(
                PairResult(
                    output=out_ch,
                    input=in_ch,
                    ir=ir,
                    harmonic_db=tuple(harmonic_db),
                    thd=thd,
                    peak_to_noise_db=pnr,
                    onset_s=_onset(ir) / fs,
                    sweeps_used=avg.count,
                    residual_db=avg.residual_db,
                )
            )
    return Measurement(fs, tuple(bands), tuple(pairs), tuple(noise), tuple(warnings))


def _margin_warnings(
    plan: MeasurementPlan, out_ch: int, in_ch: int, pnr: tuple[float, ...], bands: tuple[int, ...]
) -> list[MeasurementWarning]:
    if max(pnr) < HEARD_DB:
        return [
            MeasurementWarning(
                "not_heard",
                f"input {in_ch} did not hear output {out_ch} (at most {max(pnr):.1f} dB above "
                "the noise in every band): is it connected?",
                output=out_ch,
                input=in_ch,
            )
        ]
    return [
        MeasurementWarning(
            "low_noise_margin",
            f"output {out_ch} -> input {in_ch}, {fc} Hz: peak-to-noise {p:.1f} dB < "
            f"{plan.min_pnr_db:g} dB, too little for a T30: raise the level, add sweeps or "
            "make the room quieter",
            output=out_ch,
            input=in_ch,
            band_hz=float(fc),
        )
        for fc, p in zip(bands, pnr, strict=True)
        if p < plan.min_pnr_db
    ]


def _db(power: float) -> float:
    return 10 * math.log10(power) if power > 0 else -math.inf
