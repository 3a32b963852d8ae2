"""Closed-loop adaptation: bring the room plus the enhancement to a mode's targets, by measurement.

**The physics** (an in-line / regenerative active system, Poletti; Kleiner and Svensson;
``docs/acoustics.md`` "Adaptation"): a pickup microphone near the stage feeds the processor
(``dsp/engine.py``), whose outputs play through the enhancement loudspeakers into the room. The
listener hears the room's own response to the source plus every loudspeaker's; the loudspeakers
also reach the pickup, closing a feedback loop. With the measured impulse responses (``S_l``
source→listener, ``S_p`` source→pickup, ``H_lk`` / ``H_pk`` loudspeaker k→listener / →pickup)
and the engine's own response ``E_k`` (``dsp.engine.render_ir``: the code that plays), per
frequency::

    P = S_p + L P,     L = sum_k H_pk E_k      (the loop gain)
    Y = S_l + (sum_k H_lk E_k) S_p / (1 - L)   (what the listener hears)

``combined_response`` evaluates that in the frequency domain. The loop is stable while
``|L| < 1`` at every frequency; we keep ``max |L|`` a ``loop_margin_db`` below that (default
6 dB: at -6 dB the loop colours the response by at most +6 / -3.5 dB), and lower every level
of the field by what it exceeds, saying so.

**The loop** (``adapt``): the natural room is analysed from ``S_l`` (ISO 3382-1,
``dsp.metrics``) and calibrated (``room_from_paths``): per band, the field's energy at the
listener per unit of processor output is what the pickup takes of the source times what the
loudspeakers give the listener, which fixes the design's ``level_db``; the field's delay behind
the direct sound fixes ``offset_s``. ``dsp.design.design`` gives the first ``FieldParams``.
They are then *refined on the model* of the measured paths, before any measurement:
Gauss-Newton over every metric and band (residuals in JNDs) in the early level, the late level
and the late T60 per band (the early pattern stays); the Jacobian by finite differences once,
then Broyden's rank-one updates; bounded, damped steps, each accepted only if it lowers the
cost; the loop gain's own Jacobian keeps a step inside the stability limit. Then, at most
``iterations`` times: measure (``measure``, the real closed loop; without it, the model),
analyse, stop when every held metric is within one JND; otherwise *output mapping*: the model
plus the offset the measurement showed (measured - modelled residuals) is solved again by a few
accepted model steps. The best iteration is the result.

**Held and unreachable.** A metric in a band is *held* when the refined model reaches it within
``HOLD_JND`` (0.75) JND. Every other one is reported with the reason: a T30/EDT below the
natural room's (an active system cannot shorten a room), above the enhancement cap (``cap`` x
the natural RT), the decay out of reach in that band, the feedback loop at its limit, a
conflict with the other targets (one early and one late level for all bands, one decay per
band), or marginal (within one JND but not ``HOLD_JND``).

**Re-adaptation** (``check_drift`` / ``readapt``): when the room changes (occupancy), a new
measurement of the combined response with the current parameters is compared with what the
adaptation last measured; a drift of more than half a JND in any held metric re-runs the loop
on the new paths.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.fft import irfft, next_fast_len, rfft  # type: ignore[import-untyped]
from scipy.optimize import lsq_linear  # type: ignore[import-untyped]

from dsp.design import LEVEL_DB, DesignError, Room, design, room_from
from dsp.engine import render_ir
from dsp.field import BANDS_HZ, FieldParams
from dsp.layout import Layout
from dsp.metrics import IRError, RoomMetrics, analyze
from dsp.presets import JND, Mode

FloatArray = NDArray[np.float64]
ComplexArray = NDArray[np.complex128]

HELD: tuple[str, ...] = ("t30_s", "edt_s", "c80_db", "d50", "ts_s")
"""The metrics the loop brings to target, per band (ISO 3382-1 JNDs: T30/EDT 5 %, C80 1 dB,
D50 0.05, Ts 10 ms). G needs a calibrated reference, J_LF a figure-of-eight, IACC a head:
adaptation leaves them to the design model."""
RELATIVE = frozenset({"t30_s", "edt_s"})
LOOP_MARGIN_DB = 6.0
MAX_ITERATIONS = 10
OFFSET_LIMIT_S = 0.1  # design's offset_s range
ONSET_DB = -20.0  # an IR's arrival: its first sample within 20 dB of its peak (ISO 3382-1 A.3.4)

Measure = Callable[[FieldParams], Any]
"""Given parameters, the measured combined listener IR (1-D, at the paths' sample rate)."""


class AdaptError(ValueError):
    """The measured paths, the mode or a measured IR cannot be adapted to; says why."""


# --- the measured paths ----------------------------------------------------------------------


def _ir(x: Any, what: str, ndim: int) -> FloatArray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise AdaptError(f"{what}: not numeric") from None
    if a.ndim != ndim:
        shape = "one IR (1-D)" if ndim == 1 else "one IR per loudspeaker ([n_out, samples])"
        raise AdaptError(f"{what}: expected {shape}, got shape {a.shape}")
    if a.shape[-1] < 64:
        raise AdaptError(f"{what}: too short ({a.shape[-1]} samples, need >= 64)")
    if not np.all(np.isfinite(a)):
        raise AdaptError(f"{what}: contains NaN or infinity")
    energy = np.sum(a * a, axis=-1)
    if np.any(energy <= 0.0):
        raise AdaptError(f"{what}: silent (an IR with no energy: was the path measured?)")
    return a


@dataclass(frozen=True)
class MeasuredPaths:
    """The measured impulse responses of an active system at one listening position.

    ``source_listener``/``source_pickup``: 1-D; ``speaker_listener``/``speaker_pickup``:
    ``[n_out, samples]``, row k the processor output k's loudspeaker (``FieldParams`` channel
    k). Lengths may differ. ``latency_s``: the processing chain's own I/O latency (converters,
    audio buffers) that the real system adds to the engine's response."""

    samplerate: int
    source_listener: FloatArray
    source_pickup: FloatArray
    speaker_listener: FloatArray
    speaker_pickup: FloatArray
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        fs = self.samplerate
        if isinstance(fs, bool) or not isinstance(fs, int | np.integer) or not 8000 <= fs <= 384000:
            raise AdaptError(f"samplerate must be an integer in 8000 .. 384000 Hz, got {fs!r}")
        object.__setattr__(self, "source_listener", _ir(self.source_listener, "source→listener", 1))
        object.__setattr__(self, "source_pickup", _ir(self.source_pickup, "source→pickup", 1))
        sl = _ir(self.speaker_listener, "loudspeakers→listener", 2)
        sp = _ir(self.speaker_pickup, "loudspeakers→pickup", 2)
        if sl.shape[0] != sp.shape[0]:
            raise AdaptError(
                f"{sl.shape[0]} loudspeaker→listener IRs but {sp.shape[0]} loudspeaker→pickup"
            )
        object.__setattr__(self, "speaker_listener", sl)
        object.__setattr__(self, "speaker_pickup", sp)
        if not (math.isfinite(self.latency_s) and 0.0 <= self.latency_s <= 0.5):
            raise AdaptError(f"latency_s must lie in 0 .. 0.5 s, got {self.latency_s}")

    @property
    def n_out(self) -> int:
        return int(self.speaker_listener.shape[0])

    @staticmethod
    def from_matrix(
        irs: Any,
        samplerate: int,
        *,
        source: int,
        speakers: Sequence[int],
        pickup: int,
        listener: int,
        latency_s: float = 0.0,
    ) -> MeasuredPaths:
        """From one array ``[input (microphone), output (loudspeaker), samples]`` (the acoustic
        room simulator's layout): ``source`` the stage loudspeaker's output, ``speakers`` the
        enhancement loudspeakers' outputs in processor-channel order."""
        a = np.asarray(irs, dtype=np.float64)
        if a.ndim != 3:
            raise AdaptError(f"IR matrix: expected [inputs, outputs, samples], got {a.shape}")
        n_in, n_out = a.shape[:2]
        for name, i, n in (("pickup", pickup, n_in), ("listener", listener, n_in),
                           ("source", source, n_out)):  # fmt: skip
            if not 0 <= i < n:
                raise AdaptError(f"{name} index {i} outside 0 .. {n - 1}")
        if not speakers or any(not 0 <= s < n_out for s in speakers):
            raise AdaptError(f"speakers {list(speakers)}: need outputs within 0 .. {n_out - 1}")
        sp = list(speakers)
        return MeasuredPaths(
            int(samplerate), a[listener, source], a[pickup, source], a[listener, sp],
            a[pickup, sp], latency_s,
        )  # fmt: skip

    @staticmethod
    def from_measurement(
        measurement: Any,
        *,
        source: int,
        speakers: Sequence[int],
        pickup: int,
        listener: int,
        latency_s: float = 0.0,
    ) -> MeasuredPaths:
        """From a ``dsp.measure.Measurement`` (anything with ``fs`` and ``ir(output, input)``):
        outputs are the processor's loudspeaker channels, inputs its microphones."""
        try:
            ir = measurement.ir
            return MeasuredPaths(
                int(measurement.fs),
                ir(source, listener),
                ir(source, pickup),
                np.array([ir(s, listener) for s in speakers]),
                np.array([ir(s, pickup) for s in speakers]),
                latency_s,
            )
        except KeyError as e:
            raise AdaptError(f"the measurement lacks a path: {e}") from None


# --- the combined response -------------------------------------------------------------------


@dataclass(frozen=True)
class Combined:
    """The modelled response at the listener of room plus field, and the loop's gain."""

    ir: FloatArray
    loop_gain_db: float  # max over frequency of 20 log10 |L|
    loop_gain_db_per_band: FloatArray  # the same within each octave band of BANDS_HZ


def _engine_seconds(params: FieldParams) -> float:
    return float(min(12.0, 1.3 * float(np.max(params.late.t60_s)) + params.late.delay_s + 0.2))


def engine_response(params: FieldParams, paths: MeasuredPaths) -> FloatArray:
    """``render_ir`` of ``params`` at the paths' sample rate, delayed by their ``latency_s``."""
    if params.n_out != paths.n_out:
        raise AdaptError(
            f"the field has {params.n_out} outputs, the paths {paths.n_out} loudspeakers"
        )
    e = render_ir(params, paths.samplerate, _engine_seconds(params))
    lag = round(paths.latency_s * paths.samplerate)
    if lag:
        e = np.concatenate([np.zeros((e.shape[0], lag)), e], axis=1)
    return e


def _band_masks(freqs: NDArray[np.floating[Any]]) -> list[NDArray[np.bool_]]:
    return [(freqs >= b / math.sqrt(2.0)) & (freqs < b * math.sqrt(2.0)) for b in BANDS_HZ]


def combined_response(paths: MeasuredPaths, params: FieldParams) -> Combined:
    """The listener's IR of room plus field, with the feedback loop (module docstring)."""
    e = engine_response(params, paths)
    n_room = max(
        paths.source_listener.size, paths.source_pickup.size,
        paths.speaker_listener.shape[1], paths.speaker_pickup.shape[1],
    )  # fmt: skip
    n_out = n_room + e.shape[1]
    # the loop's repeated trips make the response longer than one pass: room for two
    n = next_fast_len(2 * n_out)
    sl, sp = rfft(paths.source_listener, n), rfft(paths.source_pickup, n)
    ek = rfft(e, n, axis=1)
    a = np.einsum("kf,kf->f", rfft(paths.speaker_listener, n, axis=1), ek)
    loop = np.einsum("kf,kf->f", rfft(paths.speaker_pickup, n, axis=1), ek)
    y = sl + a * sp / (1.0 - loop)
    mag = np.abs(loop)
    freqs = np.fft.rfftfreq(n, 1.0 / paths.samplerate)
    per_band = np.array([_db20(float(np.max(mag[m]))) for m in _band_masks(freqs)])
    ir = np.asarray(irfft(y, n)[:n_out], dtype=np.float64)
    return Combined(ir, _db20(float(np.max(mag))), per_band)


def _db20(x: float) -> float:
    return 20.0 * math.log10(x) if x > 0 else -math.inf


def loop_gain_db(paths: MeasuredPaths, params: FieldParams) -> float:
    """``max |L|`` in dB: the feedback loop's peak gain (stable below 0 dB)."""
    e = engine_response(params, paths)
    n = next_fast_len(paths.speaker_pickup.shape[1] + e.shape[1])
    loop = np.einsum("kf,kf->f", rfft(paths.speaker_pickup, n, axis=1), rfft(e, n, axis=1))
    return _db20(float(np.max(np.abs(loop))))


def scaled(params: FieldParams, db: float) -> FieldParams:
    """``params`` with direct, early and late levels all changed by ``db``."""
    return dataclasses.replace(
        params,
        direct_gain=np.asarray(params.direct_gain) * 10.0 ** (db / 20.0),
        early_db=params.early_db + db,
        late_db=params.late_db + db,
    )


# --- the natural room from the paths ---------------------------------------------------------


def _band_density(spectra: FloatArray, n: int, fs: int) -> FloatArray:
    """Mean power ``|X|^2`` per band of ``BANDS_HZ`` (last axis: ``rfft`` bins of length ``n``):
    the band's energy relative to a unit impulse's in the same band (which is 1)."""
    freqs = np.fft.rfftfreq(n, 1.0 / fs)
    return np.stack([np.mean(spectra[..., m], axis=-1) for m in _band_masks(freqs)], axis=-1)


def _arrival(x: FloatArray) -> int:
    """The first sample within ``ONSET_DB`` of the peak (of |x|)."""
    a = np.abs(x)
    return int(np.argmax(a >= np.max(a) * 10.0 ** (ONSET_DB / 20.0)))


def room_from_paths(paths: MeasuredPaths) -> tuple[Room, RoomMetrics, list[str]]:
    """The natural room for ``dsp.design``: ISO 3382-1 metrics of source→listener, ``level_db``
    per band (the room's energy at the listener over what a unit of processor output energy,
    fed from the pickup, gives there: per band, the mean of ``|S_l|^2`` over the mean of
    ``|S_p H_lk|^2``, k averaged; both relative to a unit impulse) and ``offset_s``
    (the field's arrival behind the direct sound). Also notes on what was assumed."""
    fs = paths.samplerate
    try:
        metrics = analyze(paths.source_listener, fs)
    except IRError as e:
        raise AdaptError(f"source→listener: {e}") from None
    notes: list[str] = []
    missing = [int(b.band_hz) for b in metrics.bands if b.t30_s is None]
    if missing:
        raise AdaptError(
            "source→listener: no T30 in band(s) "
            f"{', '.join(map(str, missing))} Hz (noise margin too small, or the IR too short)"
        )
    n = next_fast_len(paths.source_pickup.size + paths.speaker_listener.shape[1])
    s_l = np.abs(rfft(paths.source_listener, n)) ** 2
    field_ = (
        np.abs(rfft(paths.source_pickup, n)) ** 2
        * np.abs(rfft(paths.speaker_listener, n, axis=1)) ** 2
    )
    # the field through one loudspeaker at a time (decorrelated outputs: energies add), per
    # unit of processor output energy: the mean over the loudspeakers
    level = 10.0 * np.log10(
        _band_density(s_l, n, fs) / np.mean(_band_density(field_, n, fs), axis=0)
    )
    arr_field = _arrival(paths.source_pickup) + min(_arrival(h) for h in paths.speaker_listener)
    offset = (arr_field - _arrival(paths.source_listener)) / fs + paths.latency_s
    if offset < 0.0:
        notes.append(
            f"the field arrives {-offset * 1000:.1f} ms before the direct sound at the listener "
            "(pickup close to the source, loudspeakers close to the listener): taken as 0"
        )
    if offset > OFFSET_LIMIT_S:
        notes.append(f"the field arrives {offset * 1000:.0f} ms after the direct sound: taken "
                     f"as {OFFSET_LIMIT_S * 1000:.0f} ms (echo risk)")  # fmt: skip
    offset = min(max(offset, 0.0), OFFSET_LIMIT_S)
    base: dict[str, Any] = {
        "bands": [b.to_dict() for b in metrics.bands],
        "level_db": [float(np.clip(v, -79.0, 79.0)) for v in level],
        "offset_s": offset,
    }
    try:
        room = room_from(base)
    except DesignError as e:
        raise AdaptError(f"source→listener: {e}") from None
    return room, metrics, notes


# --- results ---------------------------------------------------------------------------------


def _values(metrics: RoomMetrics, metric: str) -> FloatArray:
    out = []
    for b in BANDS_HZ:
        v = getattr(metrics.band(b), metric)
        out.append(math.nan if v is None else float(v))
    return np.asarray(out)


def _targets(mode: Mode) -> dict[str, FloatArray]:
    return {k: np.asarray(getattr(mode, k), dtype=np.float64) for k in HELD}


def _tolerance(mode: Mode, metric: str, target: FloatArray) -> FloatArray:
    tol = mode.tolerances.get(metric, JND[metric])
    return tol * np.abs(target) if metric in RELATIVE else np.full(target.shape, tol)


def errors_jnd(mode: Mode, measured: Mapping[str, FloatArray]) -> dict[str, FloatArray]:
    """Per held metric and band, (measured - target) / tolerance (NaN where not measured)."""
    out = {}
    for k, target in _targets(mode).items():
        out[k] = (np.asarray(measured[k]) - target) / _tolerance(mode, k, target)
    return out


@dataclass(frozen=True)
class Unreachable:
    """A target the room cannot reach with this system, and why."""

    metric: str
    band_hz: int
    target: float
    best: float  # what the design predicts as the nearest it gets
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "band_hz": self.band_hz, "target": _num(self.target),
            "best": _num(self.best), "reason": self.reason,
        }  # fmt: skip


@dataclass(frozen=True)
class Iteration:
    """One pass of the loop: the parameters played, what the model predicted, what was
    measured, and the error in JNDs (per held metric and band)."""

    index: int
    params: FieldParams
    aims: dict[str, FloatArray]
    predicted: dict[str, FloatArray]  # the model of the measured paths, per held metric
    measured: dict[str, FloatArray]
    error_jnd: dict[str, FloatArray]
    loop_gain_db: float
    seconds: float  # time of this iteration (design + measure/model + analysis)

    def worst_jnd(self, held: Mapping[str, Sequence[int]]) -> float:
        vals = [abs(float(self.error_jnd[k][BANDS_HZ.index(b)])) for k, bs in held.items()
                for b in bs]  # fmt: skip
        return max((v if math.isfinite(v) else math.inf for v in vals), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        p = self.params
        return {
            "index": self.index,
            "params": {
                "direct_gain": p.direct_gain.tolist(), "early_db": p.early_db,
                "late_db": p.late_db, "late_t60_s": p.late.t60_s.tolist(),
                "late_delay_s": p.late.delay_s, "taps": int(p.early.delays_s.size),
            },
            "aims": {k: _list(v) for k, v in self.aims.items()},
            "predicted": {k: _list(v) for k, v in self.predicted.items()},
            "measured": {k: _list(v) for k, v in self.measured.items()},
            "error_jnd": {k: _list(v) for k, v in self.error_jnd.items()},
            "loop_gain_db": _num(self.loop_gain_db),
            "seconds": self.seconds,
        }  # fmt: skip


@dataclass(frozen=True)
class Adaptation:
    """What ``adapt`` did: the natural room (before), every iteration (the last is after),
    what is held and what is unreachable (with reasons), and whether it converged and why."""

    mode: str
    natural: dict[str, FloatArray]  # the room alone, per held metric and band
    room: Room
    iterations: tuple[Iteration, ...]
    held: dict[str, tuple[int, ...]]  # metric -> bands brought to target
    unreachable: tuple[Unreachable, ...]
    converged: bool
    reason: str
    notes: tuple[str, ...] = ()
    targets: dict[str, FloatArray] = field(default_factory=dict)

    @property
    def best(self) -> Iteration:
        """The iteration nearest to target (smallest worst error over the held metrics)."""
        return min(self.iterations, key=lambda it: (it.worst_jnd(self.held), -it.index))

    @property
    def params(self) -> FieldParams:
        """The parameters to play: the best iteration's."""
        return self.best.params

    @property
    def final(self) -> Iteration:
        return self.best

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types for the API and the before/after plots: ``before`` the natural
        room, ``after`` the best iteration's measurement, ``targets`` and per-iteration
        detail."""
        return {
            "mode": self.mode,
            "bands_hz": list(BANDS_HZ),
            "converged": self.converged,
            "reason": self.reason,
            "targets": {k: _list(v) for k, v in self.targets.items()},
            "before": {k: _list(v) for k, v in self.natural.items()},
            "after": {k: _list(v) for k, v in self.final.measured.items()},
            "best_iteration": self.best.index,
            "held": {k: list(v) for k, v in self.held.items()},
            "unreachable": [u.to_dict() for u in self.unreachable],
            "iterations": [it.to_dict() for it in self.iterations],
            "notes": list(self.notes),
        }


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _list(v: FloatArray) -> list[float | None]:
    return [_num(float(x)) for x in v]


# --- the loop --------------------------------------------------------------------------------


def _measure_ir(
    paths: MeasuredPaths, params: FieldParams, measure: Measure | None
) -> tuple[FloatArray, float]:
    if measure is None:
        c = combined_response(paths, params)
        return c.ir, c.loop_gain_db
    got = measure(params)
    try:
        ir = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        raise AdaptError(f"measure returned {type(got).__name__}, not an IR") from None
    if ir.ndim != 1 or ir.size < 64 or not np.all(np.isfinite(ir)) or not np.any(ir):
        raise AdaptError(
            f"measure must return one finite, non-silent IR (1-D, >= 64 samples), got shape "
            f"{ir.shape}"
        )
    return ir, loop_gain_db(paths, params)


def measured_metrics(ir: Any, samplerate: int) -> dict[str, FloatArray]:
    """Per held metric, the values per band of ``BANDS_HZ`` of a combined IR (NaN where the
    decay does not allow them)."""
    try:
        m = analyze(ir, samplerate)
    except IRError as e:
        raise AdaptError(f"the combined response: {e}") from None
    return {k: _values(m, k) for k in HELD}


def _stable(
    paths: MeasuredPaths, params: FieldParams, margin_db: float
) -> tuple[FieldParams, float, float]:
    """Lower every level until the loop's peak gain is ``margin_db`` below 0 dB."""
    cut = 0.0
    gain = loop_gain_db(paths, params)
    for _ in range(4):  # the engine is linear: one step suffices, the rest is rounding
        excess = gain + margin_db
        if excess <= 1e-3:
            break
        cut += excess
        params = scaled(params, -excess)
        gain = loop_gain_db(paths, params)
    return params, gain, cut


def _x(params: FieldParams) -> FloatArray:
    return np.concatenate([[params.early_db, params.late_db], params.late.t60_s])


def _with_x(params: FieldParams, x: FloatArray) -> FieldParams:
    return dataclasses.replace(
        params,
        early_db=float(x[0]),
        late_db=float(x[1]),
        late=dataclasses.replace(params.late, t60_s=np.asarray(x[2:], dtype=np.float64)),
    )


@dataclass(frozen=True)
class _Problem:
    """What the steps solve: residuals (measured - aim) / tolerance over ``rows``."""

    paths: MeasuredPaths
    aims: dict[str, FloatArray]
    tol: dict[str, FloatArray]
    rows: tuple[tuple[str, int], ...]
    lo: FloatArray  # bounds of x = (early_db, late_db, t60 per band)
    hi: FloatArray
    limit_db: float  # the loop gain's limit

    def residuals(self, metrics: Mapping[str, FloatArray]) -> FloatArray:
        return np.array(
            [(float(metrics[k][j]) - float(self.aims[k][j])) / float(self.tol[k][j])
             for k, j in self.rows]
        )  # fmt: skip

    def evaluate(self, params: FieldParams) -> tuple[FloatArray, float, dict[str, FloatArray]]:
        """The model: residuals, loop gain (dB) and metrics of the combined response."""
        c = combined_response(self.paths, params)
        m = measured_metrics(c.ir, self.paths.samplerate)
        return self.residuals(m), c.loop_gain_db, m


def _cost(r: FloatArray) -> float:
    return float(np.sum(np.where(np.isfinite(r), r, 30.0) ** 2))


CORRECTION_STEPS = 3  # model steps per measured iteration (no measurement in between)
HOLD_JND = 0.75
"""A metric is held when the model of the measured paths reaches it within this many JNDs:
the margin is for what the model does not know (latency, noise, the room's own variance)."""
STEPS = (1.0, 1.0)  # finite-difference steps of early_db and late_db (dB); T60: 3 %


def _jacobian(prob: _Problem, params: FieldParams, r0: FloatArray, g0: float) -> tuple[
    FloatArray, FloatArray
]:  # fmt: skip
    """Finite differences of the model's residuals and loop gain against x."""
    x0 = _x(params)
    steps = np.concatenate([STEPS, 0.03 * x0[2:]])
    jac = np.zeros((r0.size, x0.size))
    jg = np.zeros(x0.size)
    for c in range(x0.size):
        x = x0.copy()
        x[c] += steps[c]
        r, g, _ = prob.evaluate(_with_x(params, x))
        d = (r - r0) / steps[c]
        jac[:, c] = np.where(np.isfinite(d), d, 0.0)
        jg[c] = (g - g0) / steps[c]
    return jac, jg


def _solve(
    prob: _Problem, x0: FloatArray, r: FloatArray, jac: FloatArray, jg: FloatArray, g0: float,
    weights: FloatArray,
) -> FloatArray:  # fmt: skip
    """The bounded, damped Gauss-Newton step ``dx`` for residuals ``r`` (weighted), with the
    loop gain's linearisation kept at or below its limit."""
    keep = np.isfinite(r)
    a = jac[keep] * weights[keep, None]
    b = -r[keep] * weights[keep]
    # Levenberg damping: a step the model cannot resolve stays small (3 dB, 10 % of T60)
    scale = np.concatenate([[1.0 / 3.0, 1.0 / 3.0], 1.0 / (0.1 * x0[2:])])
    a = np.vstack([a, 0.05 * np.diag(scale)])
    b = np.concatenate([b, np.zeros(x0.size)])
    lo, hi = np.minimum(prob.lo - x0, 0.0), np.maximum(prob.hi - x0, 0.0)
    lo[:2], hi[:2] = np.maximum(lo[:2], -12.0), np.minimum(hi[:2], 12.0)
    dx = np.asarray(lsq_linear(a, b, bounds=(lo, hi)).x, dtype=np.float64)
    if g0 + float(jg @ dx) > prob.limit_db:
        w = 10.0 * math.sqrt(float(np.sum(a * a)) / max(1, a.shape[0]))
        a2 = np.vstack([a, w * jg])
        b2 = np.concatenate([b, [w * (prob.limit_db - g0)]])
        dx = np.asarray(lsq_linear(a2, b2, bounds=(lo, hi)).x, dtype=np.float64)
    return dx


@dataclass
class _Model:
    """The model's state at ``params``: residuals, loop gain, metrics, and its Jacobians
    (finite differences once, then Broyden's rank-one updates after every step)."""

    params: FieldParams
    r: FloatArray
    g: float
    m: dict[str, FloatArray]
    jac: FloatArray
    jg: FloatArray

    def learn(self, params: FieldParams, r: FloatArray, g: float) -> None:
        """Broyden's update from the model's values at ``params``."""
        dx = _x(params) - _x(self.params)
        dd = float(dx @ dx)
        if dd > 0:
            dr = np.where(np.isfinite(r) & np.isfinite(self.r), r - self.r, self.jac @ dx)
            self.jac += np.outer(dr - self.jac @ dx, dx) / dd
            self.jg += (g - self.g - float(self.jg @ dx)) * dx / dd


def _refine(
    prob: _Problem,
    model: _Model,
    steps: int,
    weights: FloatArray,
    offset: FloatArray | None = None,
) -> None:
    """Gauss-Newton steps on the model of the measured paths, each one accepted only if it
    lowers the (weighted) cost; ``offset`` is added to the model's residuals (what the last
    measurement showed the model gets wrong: output mapping). Moves ``model``."""
    off = np.zeros(model.r.size) if offset is None else np.nan_to_num(offset)

    def cost(r: FloatArray) -> float:
        return _cost((r + off) * weights)

    for _ in range(steps):
        x0 = _x(model.params)
        dx = _solve(prob, x0, model.r + off, model.jac, model.jg, model.g, weights)
        if float(np.max(np.abs(dx) / np.concatenate([[1.0, 1.0], 0.01 * x0[2:]]))) < 0.1:
            break  # converged: less than 0.1 dB and 0.1 % of T60
        for frac in (1.0, 0.5, 0.25):
            cand, _, _ = _stable(prob.paths, _with_x(model.params, x0 + frac * dx), -prob.limit_db)
            r2, g2, m2 = prob.evaluate(cand)
            model.learn(cand, r2, g2)
            if cost(r2) < cost(model.r) - 1e-6:
                model.params, model.r, model.g, model.m = cand, r2, g2, m2
                break
        else:
            break


def adapt(
    mode: Mode,
    layout: Layout,
    measured_paths: MeasuredPaths,
    *,
    iterations: int = 3,
    measure: Measure | None = None,
    cap: float = 2.0,
    loop_margin_db: float = LOOP_MARGIN_DB,
    refine_steps: int = 4,
    progress: Callable[[Iteration, float], None] | None = None,
) -> Adaptation:
    """Adapt the field of ``mode`` to the room of ``measured_paths`` (module docstring).

    ``measure``: given parameters, the *measured* combined listener IR through the real room
    (the closed loop); without it the loop measures the model (``combined_response``).
    ``refine_steps``: Gauss-Newton steps on the model before the first measurement.
    ``progress``: called after every measured iteration with it and its worst error over the
    held metrics, in JNDs (the service shows it while the loop runs).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise AdaptError(f"iterations must be an integer, got {iterations!r}")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise AdaptError(f"iterations must lie in 1 .. {MAX_ITERATIONS}, got {iterations}")
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, int):
        raise AdaptError(f"refine_steps must be an integer, got {refine_steps!r}")
    if not 0 <= refine_steps <= MAX_ITERATIONS:
        raise AdaptError(f"refine_steps must lie in 0 .. {MAX_ITERATIONS}, got {refine_steps}")
    if not (math.isfinite(loop_margin_db) and 0.0 <= loop_margin_db <= 40.0):
        raise AdaptError(f"loop_margin_db must lie in 0 .. 40 dB, got {loop_margin_db}")
    if layout.n_out != measured_paths.n_out:
        raise AdaptError(
            f"the layout has {layout.n_out} outputs, the paths {measured_paths.n_out} "
            "loudspeakers (one path per processor output)"
        )
    fs = measured_paths.samplerate
    room, room_metrics, notes = room_from_paths(measured_paths)
    natural = {k: _values(room_metrics, k) for k in HELD}
    targets = _targets(mode)
    try:
        first = design(mode, layout, room, cap=cap)
    except DesignError as e:
        raise AdaptError(f"design: {e}") from None
    notes.extend(n for n in first.notes if not n.startswith(("T30 at", "C80 not", "EDT not",
                                                            "D50 not", "Ts not")))  # fmt: skip
    tol = {k: _tolerance(mode, k, v) for k, v in targets.items()}
    # the decay is aimed at the nearest reachable value (as the design does): below the room's
    # or above the cap it is reported, not chased
    t_room = room.t30_s
    t_lo, t_hi = t_room, np.maximum(cap * t_room, t_room * (1 + 1e-6))
    t_aim = np.clip(targets["t30_s"], t_lo, t_hi)
    aims = dict(targets)
    aims["t30_s"] = t_aim
    aims["edt_s"] = targets["edt_s"] * t_aim / targets["t30_s"]
    rows = tuple((k, j) for k in HELD for j in range(len(BANDS_HZ)))
    prob = _Problem(
        measured_paths, aims, tol, rows,
        np.concatenate([[LEVEL_DB[0]] * 2, t_lo]), np.concatenate([[LEVEL_DB[1]] * 2, t_hi]),
        -loop_margin_db,
    )  # fmt: skip

    params, _, _ = _stable(measured_paths, first.params, loop_margin_db)
    r, g, m = prob.evaluate(params)
    if refine_steps or iterations > 1:
        jac, jg = _jacobian(prob, params, r, g)
    else:  # no step will be taken
        jac, jg = np.zeros((r.size, len(BANDS_HZ) + 2)), np.zeros(len(BANDS_HZ) + 2)
    model = _Model(params, r, g, m, jac, jg)
    _refine(prob, model, refine_steps, np.ones(len(rows)))
    held, unreachable = _held(mode, room, targets, model.m, model.g, -loop_margin_db, cap)
    # the measured steps bring the held metrics to target first; the others pull gently
    weights = np.array([1.0 if BANDS_HZ[j] in held[k] else 0.3 for k, j in rows])

    done: list[Iteration] = []
    params = model.params
    for i in range(iterations):
        t0 = time.perf_counter()
        if i > 0:
            # output mapping: the model plus what the last measurement showed it gets wrong
            offset = prob.residuals(done[-1].measured) - model.r
            _refine(prob, model, CORRECTION_STEPS, weights, offset)
            params = model.params
        ir, gain = _measure_ir(measured_paths, params, measure)
        got = measured_metrics(ir, fs)
        err = errors_jnd(mode, got)
        it = Iteration(
            i, params, {k: v.copy() for k, v in aims.items()}, model.m, got, err, gain,
            time.perf_counter() - t0,
        )  # fmt: skip
        done.append(it)
        if progress is not None:
            progress(it, it.worst_jnd(held))
        if it.worst_jnd(held) <= 1.0:
            break
    best = min(done, key=lambda it: (it.worst_jnd(held), -it.index))
    worst = best.worst_jnd(held)
    converged = worst <= 1.0
    if converged:
        reason = (f"every held metric within one JND after {len(done)} iteration(s) "
                  f"(worst {worst:.2f} JND)")  # fmt: skip
    else:
        off = [
            f"{k} {b} Hz {float(best.error_jnd[k][BANDS_HZ.index(b)]):+.2f} JND"
            for k, bs in held.items() for b in bs
            if not abs(float(best.error_jnd[k][BANDS_HZ.index(b)])) <= 1.0
        ]  # fmt: skip
        reason = (f"not within one JND after {len(done)} iteration(s); best (iteration "
                  f"{best.index}): {', '.join(off)}")  # fmt: skip
    return Adaptation(
        mode.name, natural, room, tuple(done), held, tuple(unreachable), converged, reason,
        tuple(notes), targets,
    )  # fmt: skip


def _held(
    mode: Mode,
    room: Room,
    targets: Mapping[str, FloatArray],
    model: Mapping[str, FloatArray],
    loop_db: float,
    limit_db: float,
    cap: float,
) -> tuple[dict[str, tuple[int, ...]], list[Unreachable]]:
    """Held: what the refined model reaches within one JND; the rest, with the reason."""
    held: dict[str, tuple[int, ...]] = {}
    out: list[Unreachable] = []
    t_tol = mode.tolerances.get("t30_s", JND["t30_s"])
    t_out = {
        b for i, b in enumerate(BANDS_HZ)
        if not room.t30_s[i] * (1 - t_tol) <= targets["t30_s"][i] <= cap * room.t30_s[i]
        * (1 + t_tol)
    }  # fmt: skip
    feedback = loop_db >= limit_db - 0.5
    for k in HELD:
        tol = _tolerance(mode, k, np.asarray(targets[k]))
        bands = []
        for i, b in enumerate(BANDS_HZ):
            target, best = float(targets[k][i]), float(model[k][i])
            if math.isfinite(best) and abs(best - target) <= HOLD_JND * float(tol[i]):
                bands.append(b)
                continue
            if math.isfinite(best) and abs(best - target) <= float(tol[i]):
                why = (f"marginal: the best the room and system reach is {best:.3g}, within one "
                       f"JND of {target:.3g} but not within {HOLD_JND:g} (no margin to hold it "
                       "against the model's error)")  # fmt: skip
            else:
                why = _why(k, i, target, best, room, cap, b in t_out, feedback, limit_db)
            out.append(Unreachable(k, b, target, best, why))
        held[k] = tuple(bands)
    return held, out


def _why(
    k: str, i: int, target: float, best: float, room: Room, cap: float, t_out: bool,
    feedback: bool, limit_db: float,
) -> str:  # fmt: skip
    t_room = float(room.t30_s[i])
    if k in RELATIVE:
        name = "T30" if k == "t30_s" else "EDT"
        nat = float(room.edt_s[i]) if k == "edt_s" else t_room
        nat = nat if math.isfinite(nat) else t_room
        if target < nat * 0.95:
            return (f"{name} {target:.2f} s is shorter than the natural room's {nat:.2f} s: an "
                    "active system cannot shorten a room (add absorption)")  # fmt: skip
        if target > cap * t_room * 1.05:
            return (f"{name} {target:.2f} s is above the enhancement cap {cap:g} x "
                    f"{t_room:.2f} s = {cap * t_room:.2f} s (feedback-based enhancement is "
                    "stable only up to about twice the natural RT)")  # fmt: skip
    label = {"t30_s": "T30", "edt_s": "EDT", "c80_db": "C80", "d50": "D50", "ts_s": "Ts"}[k]
    unit = {"c80_db": " dB", "d50": "", "ts_s": " s", "t30_s": " s", "edt_s": " s"}[k]
    got = f"the best the room and system reach is {best:.3g}{unit}"
    if t_out and k not in RELATIVE:
        return (f"{label} {target:.3g}{unit} depends on the decay, which is out of reach in "
                f"this band: {got}")  # fmt: skip
    if feedback:
        return (f"{label} {target:.3g}{unit}: the feedback loop is at its limit ({-limit_db:g} "
                f"dB below instability), the field cannot be louder: {got}")  # fmt: skip
    return (f"{label} {target:.3g}{unit} conflicts with the other targets (one early and one "
            f"late level for all bands, one decay per band): {got}")  # fmt: skip


# --- re-adaptation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    """How far a new measurement of the combined response has moved from the adapted one."""

    drift_jnd: dict[str, FloatArray]  # per held metric and band, (new - adapted) / tolerance
    worst_jnd: float
    where: tuple[str, ...]  # "metric band Hz" beyond the threshold

    @property
    def readapt(self) -> bool:
        return bool(self.where)


def check_drift(
    adaptation: Adaptation, mode: Mode, ir: Any, samplerate: int, threshold_jnd: float = 0.5
) -> Drift:
    """Compare a new combined IR (measured with ``adaptation.params`` playing) with what the
    adaptation last measured: a drift above ``threshold_jnd`` (default half a JND) in any held
    metric and band asks for re-adaptation."""
    if not (math.isfinite(threshold_jnd) and threshold_jnd > 0):
        raise AdaptError(f"threshold_jnd must be > 0, got {threshold_jnd}")
    if mode.name != adaptation.mode:
        raise AdaptError(f"the adaptation is for mode {adaptation.mode!r}, not {mode.name!r}")
    new = measured_metrics(ir, samplerate)
    old = adaptation.final.measured
    out: dict[str, FloatArray] = {}
    where = []
    worst = 0.0
    for k in HELD:
        tol = _tolerance(mode, k, _targets(mode)[k])
        out[k] = (new[k] - old[k]) / tol
        for b in adaptation.held.get(k, ()):
            v = float(out[k][BANDS_HZ.index(b)])
            v = v if math.isfinite(v) else math.inf
            worst = max(worst, abs(v))
            if abs(v) > threshold_jnd:
                where.append(f"{k} {b} Hz")
    return Drift(out, worst, tuple(where))


def readapt(
    adaptation: Adaptation,
    mode: Mode,
    layout: Layout,
    measured_paths: MeasuredPaths,
    *,
    measure: Measure | None = None,
    iterations: int = 3,
    threshold_jnd: float = 0.5,
    cap: float = 2.0,
    loop_margin_db: float = LOOP_MARGIN_DB,
) -> tuple[Drift, Adaptation]:
    """After the room changed: measure the combined response with the current parameters
    (``measure`` or the model over the new ``measured_paths``), and re-run ``adapt`` on the new
    paths if it drifted by more than ``threshold_jnd`` in a held metric. Returns the drift and
    the adaptation in force (the given one when nothing drifted)."""
    ir, _ = _measure_ir(measured_paths, adaptation.params, measure)
    drift = check_drift(adaptation, mode, ir, measured_paths.samplerate, threshold_jnd)
    if not drift.readapt:
        return drift, adaptation
    again = adapt(
        mode, layout, measured_paths, iterations=iterations, measure=measure, cap=cap,
        loop_margin_db=loop_margin_db,
    )  # fmt: skip
    return drift, again


__all__ = [
    "HELD",
    "AdaptError",
    "Adaptation",
    "Combined",
    "Drift",
    "Iteration",
    "MeasuredPaths",
    "Unreachable",
    "adapt",
    "check_drift",
    "combined_response",
    "engine_response",
    "errors_jnd",
    "loop_gain_db",
    "measured_metrics",
    "readapt",
    "room_from_paths",
    "scaled",
]
