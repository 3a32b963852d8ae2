"""ISO 3382-1 room-acoustic metrics from an impulse response.

Pipeline (per band, and once for the unfiltered "broadband" IR):

1. **Checks.** The IR must be a finite, non-silent 1-D real array at >= 16 kHz with every band
   below Nyquist (``IRError`` otherwise). A flat-topped run at the peak is flagged as clipped.
2. **Onset** (ISO 3382-1 A.3.4): the first sample of the broadband IR whose energy is within
   20 dB of the peak's. Every band's times count from it.
3. **Band energy** (``dsp/bands.py``): class 1 Butterworth bands, applied in the frequency
   domain; the decay uses the *time-reversed* filter (the filter's ringing then lies before the
   events, so even a decay shorter than the filter's is measured at its own slope), the energy
   ratios use the *zero-phase* filter (no group delay across the 50/80 ms limits). Zero-phase
   pre-ringing of the direct sound is counted as early energy: the early window opens
   ``2 / bandwidth`` before the onset.
4. **Noise** (Lundeby et al., Acta Acustica 81, 1995): iterative estimate of the noise level and
   of the point where the decay meets it, from block averages (``800 / f + 10`` ms, then 5
   blocks per 10 dB of decay); late slope from the range 5..25 dB above the noise, fitted to
   the levels with the noise taken out. Whether there is a floor at all is judged on the last
   quarter of the IR (flat within what chance allows the band's noise, or above the decay
   line); without one (a modelled or cut-short IR) nothing is subtracted. The last samples of
   a band, where its filter run backwards has not settled, are left out.
5. **Decay curve**: Schroeder backward integration of the band energy minus the noise estimate
   (Chu's subtraction), truncated at that point, plus the energy the late slope predicts beyond
   it (Lundeby's compensation) — the combination Guski & Vorländer (2014) found the most
   accurate. Without a floor the integral runs to the IR's end, compensated the same way.
6. **Decay times**: least-squares lines on the curve from -5 to -25 dB (T20), -5 to -35 dB
   (T30), 0 to -10 dB (EDT), extrapolated to 60 dB. A time is ``None`` (with a warning saying
   why) unless its whole range lies before the truncation point and the noise margin is at least
   2 dB below the range's end; below ISO 3382-1's margin (range end + 10 dB) it is kept with a
   warning. Wherever bandwidth x T < 16 a warning says the filter may bias it.
7. **Energy ratios** (C50, C80, D50, Ts, G) from the zero-phase band energy minus the noise,
   summed to the IR's end (not truncated: a sparse decay can have arrivals past the point where
   its smoothed level meets the noise; the subtracted noise adds spread, not bias), plus the
   late slope's tail past the end. Where that spread (noise and signal-noise cross term) makes
   C50/C80 uncertain by more than 0.1 dB a warning gives its size; where nothing is left above
   the noise the value is NaN with a warning. G is 10 lg of the band energy over the
   reference's (the same source's free-field IR at 10 m, or its energy, a sum of squared
   samples at the same sample rate).

Spatial measures: ``jlf`` (J_LF = figure-of-eight energy 5..80 ms over omni energy 0..80 ms,
per band, mean over 125 Hz .. 1 kHz) and ``iacc`` (max |normalised cross-correlation| over
+-1 ms of a binaural pair, early 0..80 ms, late 80 ms..end, full; IACC_E3 the mean of the early
values at 500 Hz, 1 kHz, 2 kHz).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dsp.bands import (
    Band,
    BandError,
    BandKind,
    Envelope,
    band_energies,
    band_set,
    band_signals,
    check_samplerate,
)

FloatArray = NDArray[np.float64]

FIT_RANGES: dict[str, tuple[float, float]] = {
    "edt": (0.0, -10.0),
    "t20": (-5.0, -25.0),
    "t30": (-5.0, -35.0),
}
ONSET_DB = -20.0  # ISO 3382-1 A.3.4
MIN_LENGTH_S = 0.1  # after the onset: C80 needs 80 ms and a little tail
CLIP_RUN = 3  # this many equal samples at the peak: a flat top
BT_MIN = 16.0  # bandwidth x T below which the filter's own decay may show (Jacobsen)
MARGIN_SLACK_DB = 2.0  # a fit needs the noise this far below its range's end
ISO_MARGIN_DB = 10.0  # ISO 3382-1 5.3.3: T20 needs 35 dB, T30 45 dB
BROADBAND_WINDOW_S = 0.03
LN10 = math.log(10.0)
TINY = 1e-300


class IRError(ValueError):
    """An impulse response that cannot be analysed; the message says what is wrong."""


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BandResult:
    """One band's metrics (``band_hz`` 0 for the unfiltered IR). Seconds, dB, fractions.

    ``t20_s``, ``t30_s``, ``edt_s`` are ``None`` where the decay does not allow them;
    ``c50_db``, ``c80_db``, ``d50``, ``ts_s`` are NaN only for a band without energy (with a
    warning); ``g_db`` is ``None`` without a reference.
    """

    band_hz: float
    t20_s: float | None
    t30_s: float | None
    edt_s: float | None
    c50_db: float
    c80_db: float
    d50: float
    ts_s: float
    g_db: float | None
    noise_margin_db: float  # peak-to-noise of the band's decay (a lower bound without a floor)
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _json(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class RoomMetrics:
    """Every band's metrics, the unfiltered IR's, the bass ratio and IR-level warnings."""

    fs: int
    bands: tuple[BandResult, ...]
    broadband: BandResult
    bass_ratio: float | None
    warnings: tuple[str, ...] = ()

    def band(self, hz: float) -> BandResult:
        """The band with nominal frequency ``hz`` (``KeyError`` if not analysed)."""
        for b in self.bands:
            if abs(b.band_hz - hz) < 1e-6 * max(1.0, hz):
                return b
        raise KeyError(
            f"no {hz:g} Hz band (have {', '.join(f'{b.band_hz:g}' for b in self.bands)})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; NaN and infinities become ``None``."""
        return {
            "fs": self.fs,
            "bands": [b.to_dict() for b in self.bands],
            "broadband": self.broadband.to_dict(),
            "bass_ratio": _json(self.bass_ratio),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class DecayFit:
    """A regression line on the decay curve: range, where it was found, and the decay time."""

    name: str  # "edt", "t20", "t30"
    top_db: float
    bottom_db: float
    start_s: float | None  # where the curve crosses top_db / bottom_db (None: not reached)
    end_s: float | None
    slope_db_per_s: float | None
    intercept_db: float | None  # the line is intercept + slope * time_s
    value_s: float | None  # -60 / slope, or None (see the band's warnings)


@dataclass(frozen=True)
class DecayCurve:
    """The data of an energy-decay plot: the curve, the truncation point, the fits.

    ``time_s`` counts from the onset; ``level_db`` is the noise-compensated Schroeder curve,
    0 dB at the onset; past ``truncation_s`` it is the compensation (the late slope's model).
    """

    band_hz: float
    time_s: FloatArray
    level_db: FloatArray
    truncation_s: float
    noise_floor_reached: bool
    noise_margin_db: float
    fits: tuple[DecayFit, ...]
    warnings: tuple[str, ...] = ()

    def fit(self, name: str) -> DecayFit:
        for f in self.fits:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "band_hz": self.band_hz,
            "time_s": [float(v) for v in self.time_s],
            "level_db": [_json(float(v)) for v in self.level_db],
            "truncation_s": self.truncation_s,
            "noise_floor_reached": self.noise_floor_reached,
            "noise_margin_db": _json(self.noise_margin_db),
            "fits": [
                {f.name: _json(getattr(fit, f.name)) for f in fields(fit)} for fit in self.fits
            ],
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class JlfResult:
    """Early lateral energy fraction per band and its 125 Hz .. 1 kHz mean (ISO 3382-1 A.2.4)."""

    bands_hz: tuple[float, ...]
    jlf: tuple[float, ...]
    jlf_mean: float | None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class IaccResult:
    """Interaural cross-correlation per band: early (0..80 ms), late (80 ms..), full."""

    bands_hz: tuple[float, ...]
    early: tuple[float, ...]
    late: tuple[float, ...]
    full: tuple[float, ...]
    iacc_e3: float | None  # mean of the early values at 500 Hz, 1 kHz, 2 kHz
    one_minus_iacc_e3: float | None
    warnings: tuple[str, ...] = ()


def _json(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_json(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# --- input checks -----------------------------------------------------------------------------


def _samplerate(fs: Any) -> int:
    if isinstance(fs, bool) or not isinstance(fs, (int, float, np.integer, np.floating)):
        raise IRError(f"sample rate must be a number, not {type(fs).__name__}")
    if not math.isfinite(float(fs)) or float(fs) != int(fs) or int(fs) <= 0:
        raise IRError(f"sample rate must be a positive whole number of Hz, not {fs!r}")
    return int(fs)


def _signal(ir: Any, name: str = "IR") -> FloatArray:
    try:
        a = np.asarray(ir)
    except (TypeError, ValueError) as exc:
        raise IRError(f"{name}: not an array ({exc})") from exc
    if a.dtype == object or not (
        np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
    ):
        raise IRError(f"{name}: must be real numbers, not {a.dtype}")
    if a.ndim != 1:
        raise IRError(f"{name}: must be 1-D (one channel), got shape {a.shape}")
    x = a.astype(np.float64)
    if x.size == 0:
        raise IRError(f"{name}: empty")
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise IRError(f"{name}: {bad} sample(s) are NaN or infinite")
    peak = float(np.max(np.abs(x)))
    if peak == 0.0 or not math.isfinite(peak * peak) or peak * peak == 0.0:
        raise IRError(f"{name}: silent (peak {peak:g})")
    return x


def _bands_of(kind: Any) -> tuple[Band, ...]:
    try:
        return band_set(kind)
    except BandError as exc:
        raise IRError(str(exc)) from exc


def _check_rate(fs: int, bands: tuple[Band, ...]) -> None:
    try:
        check_samplerate(fs, bands)
    except BandError as exc:
        raise IRError(str(exc)) from exc


def clipping(x: FloatArray) -> str | None:
    """A warning if ``x`` has a flat top: ``CLIP_RUN`` or more consecutive samples at its peak."""
    a = np.abs(x)
    top = a >= float(a.max()) * (1 - 1e-9)
    if np.count_nonzero(top) < CLIP_RUN:
        return None
    edges = np.diff(np.concatenate(([0], top.astype(np.int8), [0])))
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    longest = int(runs.max())
    if longest < CLIP_RUN:
        return None
    return (
        f"clipped: {longest} consecutive samples at the peak |x| = {float(a.max()):.6g} "
        "(flat top); the direct sound, C50/C80/D50 and G are underestimated"
    )


def onset(x: FloatArray) -> int:
    """ISO 3382-1 A.3.4: the first sample within 20 dB of the peak energy."""
    e = x * x
    return int(np.argmax(e >= float(e.max()) * 10 ** (ONSET_DB / 10)))


# --- the decay: Lundeby, Schroeder, fits ------------------------------------------------------


def _db(v: Any) -> Any:
    return 10 * np.log10(np.maximum(v, TINY))


def _line(x: FloatArray, y: FloatArray) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    xm, ym = float(x.mean()), float(y.mean())
    dx = x - xm
    den = float(dx @ dx)
    slope = float(dx @ (y - ym)) / den if den > 0 else 0.0
    return slope, ym - slope * xm


def _grid_line(y: FloatArray, i: int, j: int) -> tuple[float, float]:
    """Least-squares line through ``y[i..j]`` against the sample index (closed form)."""
    n = j - i + 1
    seg = y[i : j + 1]
    mean_k = 0.5 * (i + j)
    sy = float(seg.sum())
    # einsum, not @: a long dot product goes to OpenBLAS, whose threads spin on a busy machine.
    sky = float(np.einsum("i,i->", _ramp(j + 1)[i:], seg)) - mean_k * sy
    skk = n * (n * n - 1) / 12.0
    slope = sky / skk
    return slope, sy / n - slope * mean_k


_RAMP = np.arange(1 << 16, dtype=np.float64)


def _ramp(n: int) -> FloatArray:
    """``arange(n)`` as float64, from a cache grown on demand."""
    global _RAMP
    if _RAMP.size < n:
        _RAMP = np.arange(1 << max(0, (n - 1).bit_length()), dtype=np.float64)
    return _RAMP[:n]


def _first_at_or_below(y: FloatArray, level: float) -> int:
    """Index of the first ``y <= level``, or -1."""
    hit = y <= level
    k = int(np.argmax(hit))
    return k if hit[k] else -1


def _blocks(e: FloatArray, b: int) -> tuple[FloatArray, FloatArray]:
    """Means of consecutive blocks of ``b`` samples and their centres (sample index)."""
    nb = e.size // b
    means = np.asarray(e[: nb * b].reshape(nb, b).mean(axis=1), dtype=np.float64)
    return means, (np.arange(nb, dtype=np.float64) + 0.5) * b - 0.5


@dataclass(frozen=True)
class _Noise:
    noise: float  # mean noise energy per sample (0 when no floor was found)
    cross: int  # samples from the start to the truncation point
    slope: float  # late decay, dB per sample (< 0)
    at_cross: float  # the late line's energy per sample at the truncation point
    floor: bool  # a noise floor was reached before the end
    margin_db: float
    ok: bool  # a decay was found at all


def lundeby(e: FloatArray, window: int, cells: float = 1.0) -> _Noise:
    """Lundeby et al. (1995) on the energy ``e`` from the onset on; ``window`` in samples;
    ``cells``: samples per independent value of the band's noise (1 / bandwidth)."""
    n = e.size
    b = max(1, min(window, n // 8))
    means, centres = _blocks(e, b)
    fail = _Noise(0.0, n, 0.0, 0.0, False, 0.0, False)
    if means.size < 4:
        return fail
    pk = int(np.argmax(means))
    peak_db = float(_db(means[pk]))
    noise = float(e[int(0.9 * n) :].mean())
    nlev = float(_db(noise))
    lev = _db(means)
    # Up to the last block 10 dB above the noise (not the first one below: a sparse decay's
    # gaps between arrivals dip below it long before the decay ends).
    above = np.flatnonzero(lev[pk:] > nlev + 10)
    end = pk + int(above[-1]) + 1 if above.size else pk
    if end - pk < 2:
        return _Noise(0.0, n, 0.0, 0.0, False, peak_db - nlev, False)
    slope, icpt = _line(centres[pk:end], lev[pk:end])
    if slope >= 0:
        return _Noise(0.0, n, 0.0, 0.0, False, peak_db - nlev, False)
    cross = (nlev - icpt) / slope
    for _ in range(5):
        b2 = max(1, min(round(10 / -slope / 5), n // 8))
        start = int(np.clip(min(cross + 10 / -slope, 0.9 * n), 0, n - b2))
        noise = float(e[start:].mean())
        nlev = float(_db(noise))
        means2, centres2 = _blocks(e, b2)
        # Levels with the noise taken out: near the floor, raw levels flatten the late slope.
        lev2 = _db(means2 - noise)
        pk2 = int(np.argmax(means2))
        hi = np.flatnonzero(lev2[pk2:] < nlev + 25)
        if not hi.size:
            break
        i0 = pk2 + int(hi[0])
        lo = np.flatnonzero(lev2[i0:] < nlev + 5)
        i1 = i0 + int(lo[0]) if lo.size else means2.size
        if i1 - i0 < 2:
            break
        s2, c2 = _line(centres2[i0:i1], lev2[i0:i1])
        if s2 >= 0:
            break
        slope, icpt = s2, c2
        new = (nlev - icpt) / slope
        done = abs(new - cross) < b2
        cross = new
        if done:
            break
    # A floor is noise: flat, and above where the decay line has gone by then. A modelled or
    # cut-short IR still falls at its end (or stops dead). Judged on the last quarter: its two
    # halves' mean levels (flat within what chance allows the band's noise, with tail / cells
    # independent values), or its level against the late line. Either says floor: taking a
    # noisy tail for a decay would integrate the noise (T30 far too long); taking a short IR's
    # falling end for noise only shortens a decay that is then too short to fit anyway.
    tail = e[max(0, n - max(n // 4, 8)) :]
    half = tail.size // 2
    drop = float(_db(tail[:half].mean()) - _db(tail[half:].mean()))
    chance = 10 / LN10 * math.sqrt(4 / max(tail.size / cells, 2.0))
    flat = abs(drop) < max(3.0, 3 * chance)
    above_line = float(_db(tail.mean())) > icpt + slope * (n - half) + 3
    floor = flat or above_line
    if floor:
        # Truncate where the line meets the noise, or later after the last block 10 dB above
        # it: a decay that stops dead (a modelled IR's cliff into rounding noise) keeps its
        # energy down to the cliff's foot.
        b3 = max(1, min(round(10 / -slope / 5), n // 8))
        means3, _ = _blocks(e, b3)
        loud = np.flatnonzero(_db(means3) > nlev + 10)
        if loud.size:
            cross = max(cross, float((int(loud[-1]) + 1) * b3))
        c = int(np.clip(round(cross), 1, n))
        return _Noise(noise, c, slope, noise, True, peak_db - nlev, True)
    # No floor: the "noise" was the decay's own tail. Past the end, assume the late slope from
    # the level of the last samples as measured (not the line's: an IR whose content stops
    # before its end, a modelled one, has nothing left to compensate).
    line_end = float(10 ** ((icpt + slope * (n - 0.5)) / 10))
    at_end = min(float(tail[-max(1, tail.size // 8) :].mean()), line_end)
    return _Noise(0.0, n, slope, at_end, False, peak_db - float(_db(at_end)), True)


@dataclass(frozen=True)
class _Decay:
    lin: FloatArray  # the curve up to the truncation point, linear, 1 at the start
    floor: FloatArray  # its running minimum (monotone: crossings by binary search)
    tail: float  # compensation: energy past the truncation point
    ratio: float  # the late decay per sample (energy), for the curve past the truncation
    start: float  # the curve's normalisation
    length: int  # samples from the onset to the end of the IR

    def crossing(self, level_db: float) -> int:
        """The first index at or below ``level_db`` before the truncation point, or -1."""
        k = int(np.searchsorted(-self.floor, -(10 ** (level_db / 10)), side="left"))
        return k if k < self.floor.size else -1

    def db(self, stop: int | None = None) -> FloatArray:
        """The curve in dB up to ``stop``; without, to the IR's end (the tail model after the
        truncation point)."""
        if stop is not None:
            return np.asarray(_db(self.lin[:stop]), dtype=np.float64)
        extra = self.length - self.lin.size
        model: FloatArray = np.zeros(extra)
        if extra and self.ratio > 0 and self.start > 0:
            model = np.asarray(self.tail / self.start * self.ratio ** np.arange(1, extra + 1))
        return np.asarray(_db(np.concatenate((self.lin, model))), dtype=np.float64)


def _schroeder(e: FloatArray, nz: _Noise, pre: float = 0.0) -> _Decay:
    """Noise-subtracted, truncated, compensated backward integral, 1 at its start.

    ``pre``: energy the band filter moved before the onset (the time-reversed filter's
    pre-ringing of the first arrivals); it belongs to the decay's start level.
    """
    c = nz.cross
    r = 10 ** (nz.slope / 10) if nz.slope < 0 else 0.0
    tail = nz.at_cross * r / (1 - r) if 0 < r < 1 else 0.0
    curve = np.subtract(e[:c], nz.noise)
    np.cumsum(curve[::-1], out=curve[::-1])
    curve += tail
    start = (float(curve[0]) if c else tail) + max(pre, 0.0)
    if start <= 0:
        zero = np.zeros(c)
        return _Decay(zero, zero, tail, r, 0.0, e.size)
    # Subtracting the noise estimate can leave a small negative sum near the truncation point.
    curve *= 1.0 / start
    np.maximum(curve, 1e-30, out=curve)
    return _Decay(curve, np.minimum.accumulate(curve), tail, r, start, e.size)


def _fit(
    decay: _Decay, db: FloatArray, dt: float, nz: _Noise, name: str
) -> tuple[DecayFit, str | None]:
    """The named regression on the decay curve (``db``: its dB values at least up to the
    deepest crossing; step ``dt`` s) and why it failed."""
    top, bottom = FIT_RANGES[name]
    label = name.upper()
    empty = DecayFit(name, top, bottom, None, None, None, None, None)
    if not nz.ok:
        return empty, f"{label}: no decay found above the noise"
    need = -bottom + MARGIN_SLACK_DB
    if nz.margin_db < need:
        return empty, (
            f"{label}: noise margin {nz.margin_db:.1f} dB is below the {need:.0f} dB needed to "
            f"fit down to {bottom:.0f} dB"
        )
    i, j = decay.crossing(top), decay.crossing(bottom)
    if i < 0 or j < 0:
        why = "before the IR ends" if not nz.floor else "above the noise"
        return empty, f"{label}: the decay does not reach {bottom:.0f} dB {why}"
    if j - i < 3:
        return empty, (
            f"{label}: too few points between {top:.0f} and {bottom:.0f} dB (a decay too short "
            "for the band's time resolution)"
        )
    slope, icpt = _grid_line(db, i, j)
    slope, icpt = slope / dt, icpt  # per second; the line is icpt + slope * time_s
    if slope >= 0:
        return empty, f"{label}: the curve does not fall between {top:.0f} and {bottom:.0f} dB"
    fit = DecayFit(name, top, bottom, i * dt, j * dt, slope, icpt, -60.0 / slope)
    if nz.margin_db < -bottom + ISO_MARGIN_DB and name != "edt":
        return fit, (
            f"{label}: noise margin {nz.margin_db:.1f} dB is below ISO 3382-1's "
            f"{-bottom + ISO_MARGIN_DB:.0f} dB; the value rests on the noise compensation"
        )
    return fit, None


def _clarity(total: float, late: float, ms: int, warnings: list[str]) -> float:
    """10 lg(early / late), NaN with a warning where either side is not above the noise."""
    if late > 0 and total - late > 0:
        return 10 * math.log10((total - late) / late)
    side = "after" if late <= 0 else "before"
    warnings.append(f"C{ms}: no energy {side} {ms} ms above the noise; C{ms} is undefined")
    return math.nan


def _ratio_spread(
    noise: float, bandwidth_hz: float, dt: float, end: int, *limits: tuple[float, float, int]
) -> list[str]:
    """Warnings where the noise makes C50/C80 uncertain by more than 0.1 dB (one sigma).

    The late energy is a sum of the noise-subtracted envelope; its spread comes from the noise
    itself (one independent value per 1 / B seconds, exponentially distributed) and from the
    signal-noise cross term: sigma^2 = (N^2 L + 4 E_late N) / (B dt) in coarse samples.
    """
    if noise <= 0:
        return []
    cells = 1.0 / (bandwidth_hz * dt)  # coarse samples per independent noise value
    out = []
    for p, late, ms in limits:
        length = max(end - p, 0.0)
        sigma = math.sqrt(noise * noise * length * cells + 4 * max(late, 0.0) * noise * cells)
        if late <= 0:
            continue  # C is undefined, said so already
        spread_db = 10 / LN10 * sigma / late
        if spread_db > 0.1:
            out.append(
                f"C{ms}: the energy after {ms} ms is close to the noise; uncertain by about "
                f"+-{spread_db:.2f} dB"
            )
    return out


# --- one band ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BandOut:
    result: BandResult
    curve: DecayCurve | None  # only when asked for (its dB curve costs a full pass)
    total: float  # compensated band energy (sum of squared samples)


def _analyse(
    rev: Envelope,
    zero: Envelope,
    onset_sample: int,
    fs: int,
    band_hz: float,
    bandwidth_hz: float | None,
    reference_energy: float | None,
    scale2: float,
    want_curve: bool = False,
) -> _BandOut:
    """Every metric of one band from its two envelopes (same grid)."""
    dt = rev.step / fs
    io = rev.index_of(onset_sample)
    s0 = math.ceil(io - 1e-9)
    window_s = 0.010 + 0.8 / band_hz if band_hz > 0 else BROADBAND_WINDOW_S
    e = rev.energy[s0 : rev.stop]
    cells = 1.0 / ((bandwidth_hz or fs / 2) * dt)  # samples per independent noise value
    nz = lundeby(e, max(1, round(window_s / dt)), max(cells, 1.0))
    guard = 2.0 / bandwidth_hz / dt if bandwidth_hz else 0.0  # filter ringing before the onset
    first = max(0.0, io - guard)
    pre = float(np.sum(rev.energy[math.ceil(first) : s0] - nz.noise))
    decay = _schroeder(e, nz, pre)
    warnings: list[str] = []
    fits: dict[str, DecayFit] = {}
    deepest = max(decay.crossing(bottom) for _, bottom in FIT_RANGES.values())
    db = decay.db(deepest + 1) if deepest >= 0 else np.zeros(0)  # one log10 pass for all fits
    for name in FIT_RANGES:
        fit, why = _fit(decay, db, dt, nz, name)
        fits[name] = fit
        if why:
            warnings.append(why)
        if fit.value_s is not None and bandwidth_hz is not None:
            bt = bandwidth_hz * fit.value_s
            if bt < BT_MIN:
                warnings.append(
                    f"{name.upper()}: bandwidth x T = {bt:.1f} < {BT_MIN:.0f}: the band "
                    "filter's own decay may bias it (time-reversed filtering keeps it small)"
                )
    if nz.ok and not nz.floor:
        warnings.append(
            "no noise floor before the IR ends: the noise margin is a lower bound and the "
            "decay past the end is extrapolated"
        )
    # Energy ratios on the zero-phase envelope, minus the noise, to the end of the IR (no
    # truncation: a sparse decay can have arrivals past the point where its smoothed level
    # meets the noise; the subtracted noise adds spread, not bias), plus the late slope's tail
    # past the end.
    ez = zero.energy
    end = zero.stop
    r = 10 ** (nz.slope / 10) if nz.slope < 0 else 0.0
    tail = decay.tail * (r ** (end - s0 - nz.cross) if r > 0 else 0.0)
    k0 = min(math.ceil(first), end)
    cum = np.empty(end - k0 + 1)  # cum[k - k0]: noise-subtracted energy from k0 up to k
    cum[0] = 0.0
    np.cumsum(np.subtract(ez[k0:end], nz.noise, out=cum[1:]), out=cum[1:])

    def after(p: float) -> float:
        """Energy from coarse position ``p`` on: measured to the end, then the tail."""
        if p >= end:
            return tail * (r ** (p - end) if r > 0 else 0.0)
        q = min(max(p + 0.5 - k0, 0.0), cum.size - 1.0)  # sample k covers [k - 0.5, k + 0.5)
        lo = min(int(q), cum.size - 2) if cum.size > 1 else 0
        frac = q - lo
        at = cum[lo] + frac * (cum[min(lo + 1, cum.size - 1)] - cum[lo])
        return float(cum[-1] - at) + tail

    total = after(first)
    i50, i80 = io + 0.05 / dt, io + 0.08 / dt
    ts_s = c50 = c80 = d50 = math.nan
    if total > 0 and math.isfinite(total):
        late50, late80 = after(i50), after(i80)
        c50, c80 = _clarity(total, late50, 50, warnings), _clarity(total, late80, 80, warnings)
        d50 = min(max((total - late50) / total, 0.0), 1.0)
        warnings += _ratio_spread(
            nz.noise, bandwidth_hz or fs / 2, dt, end, (i50, late50, 50), (i80, late80, 80)
        )
        # Centre time: sum (k - io) d_k over k0..end-1 = sum k d_k - io S, with
        # sum k d_k = end S - sum of the inclusive prefix sums (no index array needed).
        measured = float(cum[-1])
        moment = end * measured - float(cum[1:].sum()) - io * measured
        if r > 0:
            moment += tail * ((end - io) + r / (1 - r))
        ts_s = moment / (measured + tail) * dt
    else:
        warnings.append("no energy in this band: C50, C80, D50 and Ts are undefined")
    g_db = None
    if reference_energy is not None and total > 0:
        g_db = 10 * math.log10(total * scale2 / reference_energy)
    margin = nz.margin_db if nz.ok else float(nz.margin_db)
    result = BandResult(
        band_hz=band_hz,
        t20_s=fits["t20"].value_s,
        t30_s=fits["t30"].value_s,
        edt_s=fits["edt"].value_s,
        c50_db=c50,
        c80_db=c80,
        d50=d50,
        ts_s=ts_s,
        g_db=g_db,
        noise_margin_db=margin,
        warnings=tuple(warnings),
    )
    if not want_curve:
        return _BandOut(result, None, total)
    curve = DecayCurve(
        band_hz=band_hz,
        time_s=np.arange(decay.length, dtype=np.float64) * dt,
        level_db=decay.db(),
        truncation_s=nz.cross * dt,
        noise_floor_reached=nz.floor,
        noise_margin_db=margin,
        fits=tuple(fits.values()),
        warnings=tuple(warnings),
    )
    return _BandOut(result, curve, total)


def _prepare(ir: Any, fs: Any, bands: tuple[Band, ...]) -> tuple[FloatArray, int, int, float]:
    """(IR scaled to peak 1, fs, onset, peak^2) after every check."""
    rate = _samplerate(fs)
    _check_rate(rate, bands)
    x = _signal(ir)
    peak = float(np.max(np.abs(x)))
    x = x / peak
    start = onset(x)
    if (x.size - start) / rate < MIN_LENGTH_S:
        raise IRError(
            f"IR too short: {1000 * (x.size - start) / rate:.1f} ms after the onset; "
            f"at least {1000 * MIN_LENGTH_S:.0f} ms are needed (C80 looks 80 ms past it)"
        )
    return x, rate, start, peak * peak


BROADBAND_STEP = 4  # samples summed per point of the unfiltered envelope (83 us at 48 kHz)


def _broadband_envelope(x: FloatArray) -> Envelope:
    """The unfiltered energy, summed over ``BROADBAND_STEP`` samples (the grid's point ``m``
    covers samples ``4m .. 4m + 3``; centring it would move times by 1.5 samples only)."""
    e = x * x
    k = BROADBAND_STEP
    pad = (-e.size) % k
    if pad:
        e = np.concatenate((e, np.zeros(pad)))
    return Envelope(e.reshape(-1, k).sum(axis=1), float(k), 0, x.size)


def _reference_energies(
    reference: Any, fs: int, bands: tuple[Band, ...]
) -> tuple[list[float] | None, float | None]:
    if reference is None:
        return None, None
    if isinstance(reference, (int, float, np.integer, np.floating)) and not isinstance(
        reference, bool
    ):
        value = float(reference)
        if not (math.isfinite(value) and value > 0):
            raise IRError(f"reference energy must be finite and > 0, not {reference!r}")
        return [value] * len(bands), value
    ref = _signal(reference, "reference IR")
    if ref.size < 64:
        raise IRError("reference IR: too short (< 64 samples)")
    _, zero = band_energies(ref, fs, bands)
    per_band = [float(z.energy.sum()) for z in zero]
    if min(per_band) <= 0:
        raise IRError("reference IR: no energy in some band")
    return per_band, float(np.einsum("i,i->", ref, ref))


def analyze(
    ir: Any,
    fs: Any,
    *,
    bands: BandKind = "octave",
    reference: Any = None,
) -> RoomMetrics:
    """ISO 3382-1 metrics of a single-channel IR, per band and unfiltered.

    ``reference``: for G, the free-field IR of the same source at 10 m (same sample rate), or
    its energy (sum of squared samples, taken as the same in every band).
    """
    band_list = _bands_of(bands)
    x, rate, start, scale2 = _prepare(ir, fs, band_list)
    ref_bands, ref_broad = _reference_energies(reference, rate, band_list)
    warnings: list[str] = []
    clip = clipping(x)
    if clip:
        warnings.append(clip)
    rev, zero = band_energies(x, rate, band_list)
    results = []
    for i, band in enumerate(band_list):
        out = _analyse(
            rev[i],
            zero[i],
            start,
            rate,
            band.nominal_hz,
            band.bandwidth_hz,
            None if ref_bands is None else ref_bands[i],
            scale2,
        )
        results.append(out.result)
    env = _broadband_envelope(x)
    broad = _analyse(env, env, start, rate, 0.0, None, ref_broad, scale2).result
    if broad.noise_margin_db < -ONSET_DB:
        warnings.append(
            f"broadband noise margin {broad.noise_margin_db:.1f} dB < 20 dB: the onset "
            "(20 dB below the peak, ISO 3382-1 A.3.4) may be noise"
        )
    return RoomMetrics(
        rate, tuple(results), broad, _bass_ratio(results, bands, warnings), tuple(warnings)
    )


def _bass_ratio(results: list[BandResult], kind: str, warnings: list[str]) -> float | None:
    """Beranek's BR = (T125 + T250) / (T500 + T1000), from T30 (T20 where T30 is missing)."""
    if kind != "octave":
        warnings.append("bass ratio: defined on octave bands; analyse with bands='octave'")
        return None
    by = {r.band_hz: r for r in results}
    values = []
    for hz in (125.0, 250.0, 500.0, 1000.0):
        r = by[hz]
        t = r.t30_s if r.t30_s is not None else r.t20_s
        if t is None:
            warnings.append(f"bass ratio: no T30 or T20 at {hz:g} Hz")
            return None
        if r.t30_s is None:
            warnings.append(f"bass ratio: T20 used at {hz:g} Hz (no T30)")
        values.append(t)
    return (values[0] + values[1]) / (values[2] + values[3])


def decay_curve(
    ir: Any, fs: Any, band_hz: float | None = None, *, bands: BandKind | None = None
) -> DecayCurve:
    """The energy-decay curve of one band (nominal Hz; the octave band if there is one, else
    the third-octave, or from ``bands``) or, without ``band_hz``, of the unfiltered IR."""
    if band_hz is None:
        band_list: tuple[Band, ...] = ()
    else:
        pool = _bands_of(bands) if bands is not None else band_set("octave") + band_set("third")
        found = [b for b in pool if b.nominal_hz == band_hz]
        if not found:
            raise IRError(f"no {band_hz!r} Hz {bands or 'octave or third-octave'} band")
        band_list = (found[0],)
    x, rate, start, _ = _prepare(ir, fs, band_list)
    if not band_list:
        env = _broadband_envelope(x)
        out = _analyse(env, env, start, rate, 0.0, None, None, 1.0, want_curve=True)
    else:
        rev, zero = band_energies(x, rate, band_list)
        b = band_list[0]
        out = _analyse(
            rev[0], zero[0], start, rate, b.nominal_hz, b.bandwidth_hz, None, 1.0, want_curve=True
        )
    assert out.curve is not None
    return out.curve


# --- spatial ----------------------------------------------------------------------------------


def _pair(
    a: Any, b: Any, fs: Any, names: tuple[str, str], kind: Any
) -> tuple[FloatArray, FloatArray, int, tuple[Band, ...]]:
    if isinstance(a, np.ndarray) and a.ndim == 2 and b is None:
        raise IRError(f"pass {names[0]} and {names[1]} as two 1-D arrays, not one 2-D array")
    band_list = _bands_of(kind)
    rate = _samplerate(fs)
    _check_rate(rate, band_list)
    x, y = _signal(a, names[0]), _signal(b, names[1])
    if x.size != y.size:
        raise IRError(f"{names[0]} and {names[1]} differ in length ({x.size} vs {y.size})")
    return x, y, rate, band_list


def jlf(omni: Any, fig8: Any, fs: Any, bands: BandKind = "octave") -> JlfResult:
    """J_LF per band: figure-of-eight energy 5..80 ms over omni energy 0..80 ms after onset."""
    p, q, rate, band_list = _pair(omni, fig8, fs, ("omni", "figure-of-eight"), bands)
    scale = float(np.max(np.abs(p)))
    p, q = p / scale, q / scale
    start = onset(p)
    if (p.size - start) / rate < 0.08:
        raise IRError("J_LF needs 80 ms after the onset")
    _, zp = band_energies(p, rate, band_list)
    _, zq = band_energies(q, rate, band_list)
    values = []
    for band, ep, eq in zip(band_list, zp, zq, strict=True):
        io = ep.index_of(start)
        dt = ep.step / rate
        guard = 2.0 / band.bandwidth_hz / dt  # zero-phase pre-ringing of the direct sound
        omni_e = _span(ep.energy, max(0.0, io - guard), io + 0.08 / dt)
        lat = _span(eq.energy, io + 0.005 / dt, io + 0.08 / dt)
        values.append(lat / omni_e if omni_e > 0 else math.nan)
    low = [v for b, v in zip(band_list, values, strict=True) if 125 <= b.nominal_hz <= 1000]
    warnings = []
    if any(not math.isfinite(v) for v in values):
        warnings.append("J_LF: a band has no omni energy in 0..80 ms")
    if any(v > 1 for v in values if math.isfinite(v)):
        warnings.append("J_LF above 1: check the figure-of-eight's gain against the omni's")
    mean = float(np.mean(low)) if low and all(math.isfinite(v) for v in low) else None
    return JlfResult(tuple(b.nominal_hz for b in band_list), tuple(values), mean, tuple(warnings))


def _span(e: FloatArray, a: float, b: float) -> float:
    """Energy between fractional coarse positions ``a`` and ``b``."""
    cum = np.concatenate(([0.0], np.cumsum(e)))
    grid = np.arange(cum.size, dtype=np.float64)
    lo, hi = np.interp([a + 0.5, b + 0.5], grid, cum)
    return float(hi - lo)


def iacc(left: Any, right: Any, fs: Any, bands: BandKind = "octave") -> IaccResult:
    """IACC per band (early, late, full) from a binaural IR pair; 1 - IACC_E3."""
    x, y, rate, band_list = _pair(left, right, fs, ("left", "right"), bands)
    scale = max(float(np.max(np.abs(x))), float(np.max(np.abs(y))))
    x, y = x / scale, y / scale
    both = x * x + y * y
    start = int(np.argmax(both >= float(both.max()) * 10 ** (ONSET_DB / 10)))
    k80 = start + round(0.08 * rate)
    if k80 >= x.size:
        raise IRError("IACC needs 80 ms after the onset")
    bl, br = band_signals(x, rate, band_list), band_signals(y, rate, band_list)
    lag = round(0.001 * rate)
    early, late, full = [], [], []
    for i in range(len(band_list)):
        early.append(_iacc(bl[i, start:k80], br[i, start:k80], lag))
        late.append(_iacc(bl[i, k80:], br[i, k80:], lag))
        full.append(_iacc(bl[i, start:], br[i, start:], lag))
    warnings = []
    e3 = None
    by = dict(zip((b.nominal_hz for b in band_list), early, strict=True))
    if all(hz in by for hz in (500.0, 1000.0, 2000.0)):
        vals = [by[500.0], by[1000.0], by[2000.0]]
        if all(math.isfinite(v) for v in vals):
            e3 = float(np.mean(vals))
    if e3 is None:
        warnings.append("IACC_E3: needs finite early IACC at 500 Hz, 1 kHz and 2 kHz")
    return IaccResult(
        tuple(b.nominal_hz for b in band_list),
        tuple(early),
        tuple(late),
        tuple(full),
        e3,
        None if e3 is None else 1.0 - e3,
        tuple(warnings),
    )


def _iacc(a: FloatArray, b: FloatArray, lag: int) -> float:
    """max over |tau| <= lag of |sum a(t) b(t + tau)| / sqrt(sum a^2 sum b^2)."""
    den = math.sqrt(float(np.einsum("i,i->", a, a)) * float(np.einsum("i,i->", b, b)))
    if den <= 0:
        return math.nan
    n = a.size + lag
    size = 1 << (n + lag).bit_length()
    fa, fb = np.fft.rfft(a, size), np.fft.rfft(b, size)
    cc = np.fft.irfft(np.conj(fa) * fb, size)  # cc[k] = sum a(t) b(t + k)
    window = np.concatenate((cc[: lag + 1], cc[-lag:])) if lag else cc[:1]
    return float(np.max(np.abs(window)) / den)


__all__ = [
    "BandResult",
    "DecayCurve",
    "DecayFit",
    "IRError",
    "IaccResult",
    "JlfResult",
    "RoomMetrics",
    "analyze",
    "decay_curve",
    "iacc",
    "jlf",
    "onset",
]
