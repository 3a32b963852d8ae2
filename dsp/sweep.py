"""Exponential sine sweep measurement (Farina 2000, 2007): excitation, inverse filter,
deconvolution, harmonic separation, averaging and the background-noise check.

The sweep is the *synchronized* exponential sweep of Novák et al. (2015):
``x(t) = level * sin(2 pi f1 L exp(t / L))`` for ``0 <= t < T``, with the sweep rate
``L = round(f1 * T_requested / ln(f2 / f1)) / f1`` and ``T = L ln(f2 / f1)``. Rounding ``f1 L`` to a
whole number makes the k-th harmonic of the sweep an exact copy of the sweep itself advanced by
``L ln k`` (``sin(k phi(t)) = x(t + L ln k)``), so a memoryless distortion of order k deconvolves
into an impulse at exactly ``-L ln k`` and in phase, instead of Farina's original, where the
harmonic responses come out at the right place but phase-rotated. The price: the duration is
rounded to the nearest whole ``1 / f1`` of ``L`` (a few ms to a few tens of ms; ``Sweep.frames``
says what it became).

The **inverse filter** is the time-reversed sweep with an amplitude envelope ``exp(-t / L)``:
the sweep's spectrum falls 3 dB per octave (it spends time ``L / f`` per unit of frequency); the
envelope tilts the reversed copy by 6 dB per octave the other way, so the product of the two
spectra is flat (a zero-phase band-limited impulse delayed by ``frames - 1``). Its gain is set
numerically: the median magnitude of that product over ``2 f1 .. f2 / 2`` is exactly 1, so a
deconvolved IR has the system's true gain in band.

**Deconvolution** is a linear (not circular) convolution of the recording with the inverse filter
(``scipy.fft``, real FFTs of a fast length). In the result, the linear IR starts at index
``frames - 1`` ("time zero"); the k-th harmonic IR starts ``L ln k`` seconds earlier.
``separate`` cuts these apart with windows that never overlap: the linear IR from time zero on,
each harmonic from its place up to a guard before the next one's. The harmonic IRs give the
distortion (``harmonic_db``: energy of harmonic k over the linear IR's, and the THD from their
sum). A harmonic's own response must fit in the space before the next one, so the room's decay
should be shorter than ``L ln 2``: longer sweeps separate longer rooms
(``Sweep.harmonic_clearance_s``).

**Averaging**: every sweep of a measurement is deconvolved on its own and the IRs are averaged
(``average``), rather than averaging the recording first. The two are the same for a linear,
time-invariant system and a sample-exact clock (deconvolution is linear), and the cost of N
deconvolutions in one batched FFT is small (a few ms per second of audio); but seeing each
sweep's IR lets the average leave out a sweep that disagrees with the others (an xrun that
shifted the stream by a block, a door slam), which a pre-average would have smeared into the
result. Uncorrelated noise falls by ``10 log10(N)`` dB.

**Background noise**: a recording of silence gives the noise level per octave band (dB re full
scale, RMS 1.0) and, through the inverse filter, the noise floor it leaves in the deconvolved IR
(``ir_noise_floor``: the periodogram of the silence times the inverse filter's power response,
per band); the IR's peak over that floor is the achieved peak-to-noise ratio per band
(``peak_to_noise_db``; the peak of the band's energy envelope averaged over 10 ms, as Lundeby
et al. do). Below 35 dB there is too little decay above the noise for a T30 (ISO 3382-1 wants
the -35 dB end of the fit 10 dB above the noise); ``NOISE_MARGIN_DB``.

Octave bands are those of ``dsp.field.BANDS_HZ``, 3rd-order Butterworth band-passes run forward
and backward (zero phase), the same filters the acoustic room simulator's truth uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import scipy.fft as sfft  # type: ignore[import-untyped]
from numpy.typing import ArrayLike, NDArray
from scipy.signal import butter, sosfiltfilt, sosfreqz  # type: ignore[import-untyped]

from dsp.field import BANDS_HZ

FloatArray = NDArray[np.float64]

NOISE_MARGIN_DB = 35.0
"""The least peak-to-noise ratio (dB) per band for a T30: less is flagged."""

ENVELOPE_S = 0.010
"""The energy envelope's averaging window for the peak-to-noise ratio (Lundeby: 10-50 ms)."""

MAX_SECONDS = 600.0


class SweepError(ValueError):
    """Bad sweep parameters or a recording that cannot be deconvolved; the message says why."""


def _finite_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SweepError(f"{name} must be a finite number, got {value!r}")
    if value <= 0:
        raise SweepError(f"{name} must be > 0, got {value!r}")
    return float(value)


def check_fs(fs: object) -> int:
    """A sample rate: a whole number of Hz in 8 kHz .. 384 kHz."""
    if isinstance(fs, bool) or not isinstance(fs, int | np.integer) or not 8000 <= fs <= 384000:
        raise SweepError(f"sample rate must be a whole number of Hz in 8000..384000, got {fs!r}")
    return int(fs)


@dataclass(frozen=True)
class Sweep:
    """A synchronized exponential sine sweep from ``f1_hz`` to ``f2_hz`` at ``fs``.

    ``duration_s`` is what was asked for; ``frames`` is what it became (see the module doc).
    ``level`` is the peak amplitude (1.0 = digital full scale). ``fade_in_s`` / ``fade_out_s``
    are half-Hann fades (default: the time of the first half octave, the last twelfth of an
    octave), so that the start and end do not click into the IR as broadband ringing.
    ``signal`` and ``inverse`` are computed on first use (read-only arrays, not pickled).
    """

    fs: int
    f1_hz: float = 20.0
    f2_hz: float = 20000.0
    duration_s: float = 2.0
    level: float = 0.5
    fade_in_s: float | None = None
    fade_out_s: float | None = None

    def __post_init__(self) -> None:
        check_fs(self.fs)
        f1 = _finite_positive("f1_hz", self.f1_hz)
        f2 = _finite_positive("f2_hz", self.f2_hz)
        if f2 > 0.5 * self.fs:
            raise SweepError(f"f2_hz {f2:g} is above the Nyquist frequency {self.fs / 2:g} Hz")
        if f2 <= 1.5 * f1:
            raise SweepError(f"f2_hz ({f2:g}) must be at least 1.5 x f1_hz ({f1:g})")
        duration = _finite_positive("duration_s", self.duration_s)
        if duration > MAX_SECONDS:
            raise SweepError(f"duration_s {duration:g} is longer than {MAX_SECONDS:g} s")
        level = _finite_positive("level", self.level)
        if level > 1.0:
            raise SweepError(f"level {level:g} is above full scale (1.0)")
        if round(f1 * duration / math.log(f2 / f1)) < 1:
            raise SweepError(
                f"a {duration:g} s sweep from {f1:g} Hz is too short to synchronize: "
                f"it needs at least {math.log(f2 / f1) / f1:.3g} s"
            )
        for name in ("fade_in_s", "fade_out_s"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int | float) or not math.isfinite(value) or value < 0
            ):
                raise SweepError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.fade_in_frames + self.fade_out_frames > self.frames:
            raise SweepError("the fades are longer than the sweep")

    def __getstate__(self) -> dict[str, Any]:
        # The parameters only: the arrays are cheap to compute again and may be large.
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def rate_s(self) -> float:
        """``L``: the time the sweep takes to rise by a factor e in frequency."""
        f1, f2 = float(self.f1_hz), float(self.f2_hz)
        return round(f1 * self.duration_s / math.log(f2 / f1)) / f1

    @property
    def frames(self) -> int:
        """The sweep's length in samples."""
        return round(self.rate_s * math.log(self.f2_hz / self.f1_hz) * self.fs)

    @property
    def seconds(self) -> float:
        return self.frames / self.fs

    @property
    def fade_in_frames(self) -> int:
        s = self.rate_s * math.log(2) / 2 if self.fade_in_s is None else self.fade_in_s
        return round(s * self.fs)

    @property
    def fade_out_frames(self) -> int:
        s = self.rate_s * math.log(2) / 12 if self.fade_out_s is None else self.fade_out_s
        return round(s * self.fs)

    def harmonic_advance_s(self, k: int) -> float:
        """How much earlier than the linear IR the k-th harmonic's IR appears: ``L ln k``."""
        if k < 1:
            raise SweepError(f"harmonic order must be >= 1, got {k}")
        return self.rate_s * math.log(k)

    def harmonic_advance_frames(self, k: int) -> int:
        return round(self.harmonic_advance_s(k) * self.fs)

    @property
    def harmonic_clearance_s(self) -> float:
        """The longest response whose 2nd harmonic stays clear of the linear IR: ``L ln 2``."""
        return self.harmonic_advance_s(2)

    @cached_property
    def signal(self) -> FloatArray:
        """The excitation, ``frames`` samples, peak ``level``."""
        n = self.frames
        t = np.arange(n) / self.fs
        L = self.rate_s
        # The phase modulo 2 pi, computed from the whole turns f1 L e^(t/L) in float64.
        turns = self.f1_hz * L * np.exp(t / L)
        x = self.level * np.sin(2 * np.pi * (turns - np.floor(turns)))
        fi, fo = self.fade_in_frames, self.fade_out_frames
        if fi:
            x[:fi] *= 0.5 - 0.5 * np.cos(np.pi * np.arange(fi) / fi)
        if fo:
            x[n - fo :] *= 0.5 + 0.5 * np.cos(np.pi * (np.arange(fo) + 1) / fo)
        x.flags.writeable = False
        return x

    @cached_property
    def inverse(self) -> FloatArray:
        """The inverse filter: time-reversed, ``exp(-t / L)`` envelope, unit gain in band."""
        x = self.signal
        n = x.size
        inv = x[::-1] * np.exp(-np.arange(n) / self.fs / self.rate_s)
        nfft = sfft.next_fast_len(2 * n, real=True)
        product = np.abs(sfft.rfft(x, nfft) * sfft.rfft(inv, nfft))
        f = np.arange(product.size) * self.fs / nfft
        band = (f >= 2 * self.f1_hz) & (f <= self.f2_hz / 2)
        inv /= float(np.median(product[band]))
        inv.flags.writeable = False
        return inv


def _as_signal(name: str, y: ArrayLike) -> FloatArray:
    a = np.asarray(y)
    if a.dtype.kind not in "fiu":
        raise SweepError(f"{name} must hold real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if a.ndim == 0 or a.size == 0:
        raise SweepError(f"{name} is empty")
    if not np.isfinite(a).all():
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise SweepError(f"{name} holds {bad} NaN or infinite sample(s)")
    return a


@dataclass(frozen=True)
class Response:
    """A recording convolved with a sweep's inverse filter (last axis is time).

    ``data[..., zero + n]`` is the linear IR at ``n`` samples after the sweep started;
    the k-th harmonic's IR starts ``sweep.harmonic_advance_frames(k)`` before ``zero``.
    """

    data: FloatArray
    zero: int
    fs: int


def deconvolve(y: ArrayLike, sweep: Sweep, fs: int) -> Response:
    """Deconvolve ``y`` (``[..., frames]``, recorded from the sweep's first sample on)."""
    check_fs(fs)
    if fs != sweep.fs:
        raise SweepError(f"the recording is at {fs} Hz, the sweep at {sweep.fs} Hz")
    a = _as_signal("the recording", y)
    if a.shape[-1] < sweep.frames:
        raise SweepError(
            f"the recording ({a.shape[-1]} samples) is shorter than the sweep ({sweep.frames})"
        )
    inv = sweep.inverse
    n = a.shape[-1] + inv.size - 1
    nfft = sfft.next_fast_len(n, real=True)
    spectrum = sfft.rfft(a, nfft, axis=-1) * sfft.rfft(inv, nfft)
    data = sfft.irfft(spectrum, nfft, axis=-1)[..., :n]
    return Response(np.ascontiguousarray(data), sweep.frames - 1, fs)


@dataclass(frozen=True)
class Separation:
    """The linear IR and the harmonic IRs cut out of a ``Response``.

    ``linear[..., pre + n]`` is the IR ``n`` samples after time zero; ``harmonics[k - 2]`` is the
    k-th harmonic's IR on the same footing (``pre`` samples ahead of its place).
    ``harmonic_db[..., k - 2]``: the k-th harmonic's energy over the linear IR's, dB.
    """

    linear: FloatArray
    harmonics: tuple[FloatArray, ...]
    pre: int
    harmonic_db: FloatArray

    @property
    def thd(self) -> FloatArray:
        """Total harmonic distortion (amplitude ratio, 0.01 = 1 %) from the harmonics found."""
        power = np.sum(10 ** (self.harmonic_db / 10), axis=-1)
        return np.asarray(np.sqrt(power))


def _half_hann_in(n: int) -> FloatArray:
    return np.asarray(0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n))


def separate(
    response: Response,
    sweep: Sweep,
    ir_frames: int,
    harmonics: int = 5,
    pre: int = 0,
    fade: int | None = None,
    guard: int | None = None,
) -> Separation:
    """Cut the linear IR (``ir_frames`` long from time zero, plus ``pre`` ahead of it) and the
    harmonic IRs 2..``harmonics`` out of ``response``; ``pre`` ramps in with a half-Hann, the
    last ``fade`` samples of the linear IR ramp out (default 5 ms).

    A harmonic's window ends ``guard`` samples (default one period of ``f1``, at most half the
    space) before the next one begins: the band-limited impulse rings ahead of its peak (its
    band edges, the 20 Hz one most), -43 dB of its energy still 20 ms before it and -52 dB
    50 ms before, and that ringing would otherwise count as distortion."""
    if response.fs != sweep.fs:
        raise SweepError(f"the response is at {response.fs} Hz, the sweep at {sweep.fs} Hz")
    if ir_frames < 1 or pre < 0:
        raise SweepError(f"ir_frames must be >= 1 and pre >= 0, got {ir_frames}, {pre}")
    if harmonics < 1:
        raise SweepError(f"harmonics must be >= 1 (1: the linear IR only), got {harmonics}")
    data, zero = response.data, response.zero
    if zero + ir_frames > data.shape[-1]:
        raise SweepError(
            f"the response holds {data.shape[-1] - zero} samples after time zero, "
            f"{ir_frames} asked for: record longer after the sweep"
        )
    pre = min(pre, zero)
    fade = round(0.005 * response.fs) if fade is None else fade
    fade = max(0, min(fade, ir_frames // 4))
    linear = data[..., zero - pre : zero + ir_frames].copy()
    if pre:
        linear[..., :pre] *= _half_hann_in(pre)
    if fade:
        linear[..., linear.shape[-1] - fade :] *= _half_hann_in(fade)[::-1]
    linear_energy = np.sum(linear**2, axis=-1)
    cut: list[FloatArray] = []
    ratios: list[FloatArray] = []
    previous = 0
    guard = round(sweep.fs / sweep.f1_hz) if guard is None else guard
    for k in range(2, harmonics + 1):
        advance = sweep.harmonic_advance_frames(k)
        start = zero - advance - pre
        space = advance - previous - pre
        length = min(ir_frames, space - min(guard, space // 2))
        previous = advance
        if start < 0 or length < 1:
            break  # the recording (sweep) is too short to hold this harmonic apart
        h = data[..., start : start + pre + length].copy()
        if pre:
            h[..., :pre] *= _half_hann_in(pre)
        cut.append(h)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios.append(10 * np.log10(np.sum(h**2, axis=-1) / linear_energy))
    shape = linear.shape[:-1]
    harmonic_db = np.stack(ratios, axis=-1) if ratios else np.zeros((*shape, 0))
    return Separation(linear, tuple(cut), pre, np.asarray(harmonic_db, dtype=np.float64))


@dataclass(frozen=True)
class Average:
    """The mean IR of the sweeps that agree; ``used[j]`` whether sweep ``j`` went in, and
    ``residual_db[j]`` how far sweep ``j``'s IR is from the median IR (energy ratio, dB)."""

    ir: FloatArray
    used: tuple[bool, ...]
    residual_db: tuple[float, ...]

    @property
    def count(self) -> int:
        return sum(self.used)


REJECT_FACTOR_DB = 10.0
REJECT_FLOOR_DB = -30.0


def average(irs: ArrayLike) -> Average:
    """Average the IRs of ``irs`` (``[sweeps, ..., n]``), leaving out any that disagree.

    With three or more sweeps, each is compared with the sample-wise median IR: a sweep whose
    residual energy (relative to the median's energy) is ``REJECT_FACTOR_DB`` above the median
    residual and above ``REJECT_FLOOR_DB`` is left out. Good sweeps differ from the median by
    noise only (all about the same); one hit by an xrun or a transient differs by its whole
    energy. With fewer than three there is no majority: all are used.
    """
    a = _as_signal("the IRs", irs)
    if a.ndim < 2:
        raise SweepError("average takes a stack of IRs: [sweeps, ..., samples]")
    n = a.shape[0]
    if n < 3:
        residual = (
            _residual_db(a, a.mean(axis=0)) if n == 2 else np.full(1, -np.inf, dtype=np.float64)
        )
        return Average(a.mean(axis=0), (True,) * n, tuple(float(r) for r in residual))
    median = np.median(a, axis=0)
    residual = _residual_db(a, median)
    typical = float(np.median(residual))
    used = (residual <= typical + REJECT_FACTOR_DB) | (residual <= REJECT_FLOOR_DB)
    if not used.any():
        used[:] = True
    return Average(a[used].mean(axis=0), tuple(bool(u) for u in used), tuple(map(float, residual)))


def _residual_db(a: FloatArray, reference: FloatArray) -> FloatArray:
    axes = tuple(range(1, a.ndim))
    ref = max(float(np.sum(reference**2)), np.finfo(float).tiny)
    with np.errstate(divide="ignore"):
        return np.asarray(10 * np.log10(np.sum((a - reference) ** 2, axis=axes) / ref))


# --- bands and noise ------------------------------------------------------------------------------


def band_sos(fs: int, centre_hz: float) -> FloatArray:
    """The octave band-pass around ``centre_hz`` (3rd-order Butterworth, second-order sections;
    designed once per rate and band, as the design costs more than filtering a short IR)."""
    return _band_sos(int(fs), float(centre_hz)).copy()  # a copy: scipy wants it writable


@lru_cache(maxsize=64)
def _band_sos(fs: int, centre_hz: float) -> FloatArray:
    lo, hi = centre_hz / math.sqrt(2), min(centre_hz * math.sqrt(2), 0.45 * fs)
    if lo >= hi:
        raise SweepError(f"the {centre_hz:g} Hz band is above the Nyquist frequency of {fs} Hz")
    return np.asarray(butter(3, [lo, hi], btype="bandpass", fs=fs, output="sos"))


def band_filter(x: ArrayLike, fs: int, centre_hz: float) -> FloatArray:
    """``x`` through the octave band-pass forward and backward (zero phase), along the last axis.

    ``x`` is taken to be silent before and after (zeros padded, eight periods of the band's
    lower edge): scipy's default odd extension would turn a signal that starts mid-noise into a
    step, whose low-frequency transient reads as a peak of energy that is not there."""
    a = np.asarray(x, np.float64)
    pad = math.ceil(8 * fs * math.sqrt(2) / centre_hz)
    widths = [(0, 0)] * (a.ndim - 1) + [(pad, pad)]
    y = sosfiltfilt(band_sos(fs, centre_hz), np.pad(a, widths), axis=-1, padtype=None)
    return np.asarray(y[..., pad : pad + a.shape[-1]])


def _db(power: float) -> float:
    return 10 * math.log10(power) if power > 0 else -math.inf


def noise_levels(noise: ArrayLike, fs: int, bands: tuple[float, ...] = BANDS_HZ) -> FloatArray:
    """RMS level per band of a recording of silence, dB re full scale (RMS 1.0)."""
    x = _as_signal("the noise recording", noise)
    if x.ndim != 1:
        raise SweepError("noise_levels takes one channel")
    x = x - x.mean()
    return np.array([_db(float(np.mean(band_filter(x, fs, fc) ** 2))) for fc in bands])


def ir_noise_floor(
    noise: ArrayLike, sweep: Sweep, bands: tuple[float, ...] = BANDS_HZ
) -> FloatArray:
    """The noise power per band that the background noise of ``noise`` (a recording of silence)
    leaves in one deconvolved IR: ``sum |X(f)|^2 / M |INV(f)|^2 |B(f)|^4 / nfft`` over the band
    (the periodogram of the silence through the inverse filter and the zero-phase band-pass)."""
    x = _as_signal("the noise recording", noise)
    if x.ndim != 1:
        raise SweepError("ir_noise_floor takes one channel")
    x = x - x.mean()
    inv = sweep.inverse
    nfft = sfft.next_fast_len(max(x.size, inv.size), real=True)
    periodogram = np.abs(sfft.rfft(x, nfft)) ** 2 / x.size
    through = periodogram * np.abs(sfft.rfft(inv, nfft)) ** 2
    weight = np.full(through.size, 2.0)
    weight[0] = 1.0
    if nfft % 2 == 0:
        weight[-1] = 1.0
    f = np.arange(through.size) * sweep.fs / nfft
    out = []
    for fc in bands:
        _, b = sosfreqz(band_sos(sweep.fs, fc), worN=f, fs=sweep.fs)
        out.append(float(np.sum(weight * through * np.abs(b) ** 4)) / nfft)
    return np.array(out)


def peak_to_noise_db(
    ir: ArrayLike, fs: int, floor: ArrayLike, bands: tuple[float, ...] = BANDS_HZ
) -> FloatArray:
    """Per band: the peak of the IR's energy envelope (10 ms average) over the noise power
    ``floor`` (from ``ir_noise_floor``, divided by the number of sweeps averaged), dB."""
    return ir_levels_db(ir, fs, floor, bands)[0]


def ir_levels_db(
    ir: ArrayLike, fs: int, floor: ArrayLike, bands: tuple[float, ...] = BANDS_HZ
) -> tuple[FloatArray, FloatArray]:
    """Per band, over the noise power ``floor``: the peak of the IR's energy envelope (the
    peak-to-noise ratio, as ``peak_to_noise_db``) and the mean energy of its end (the 50 ms
    before its last 5 ms), dB. An end well above the noise means the IR was cut off while
    still decaying."""
    h = _as_signal("the IR", ir)
    noise = np.asarray(floor, dtype=np.float64)
    if h.ndim != 1 or noise.shape != (len(bands),):
        raise SweepError("ir_levels_db takes one IR and one floor value per band")
    w = max(1, round(ENVELOPE_S * fs))
    last, skip = round(0.05 * fs), round(0.005 * fs)
    peaks, ends = [], []
    for fc, p in zip(bands, noise, strict=True):
        e = band_filter(h, fs, fc) ** 2
        c = np.concatenate([[0.0], np.cumsum(e)])
        peak = float(np.max(c[w:] - c[:-w]) / w) if e.size >= w else float(np.mean(e))
        tail = e[max(0, e.size - skip - last) : max(1, e.size - skip)]
        end = float(np.mean(tail))
        peaks.append(_db(peak / p) if p > 0 else math.inf)
        ends.append(_db(end / p) if p > 0 else math.inf)
    return np.array(peaks), np.array(ends)
