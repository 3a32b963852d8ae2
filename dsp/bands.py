"""Octave and third-octave band filters (IEC 61260-1:2014, class 1) and band energy envelopes.

Bands are base-10 (``G = 10 ** 0.3``): exact mid-band frequencies ``1000 * G ** (x / b)``, edges
``G ** (+-1 / 2b)`` around them, nominal names 125 Hz .. 4 kHz (octave, ``b = 1``) and
100 Hz .. 5 kHz (third-octave, ``b = 3``). Each band is a digital Butterworth band-pass (scipy,
second-order sections) with its -3 dB points on the band edges: order 3 for octaves, order 4 for
third-octaves, one more for a band within an octave of Nyquist (the bilinear transform's warping
widens its lower skirt). Those are the lowest orders that stay inside the class 1 mask (order 3
misses the third-octave's 42 dB at ``G ** (2/3)``); ``tests/unit/test_dsp_metrics.py`` checks
the digital responses against the mask.

The metrics need band *energy*, not band waveforms, and they need it fast (six octaves of a
4 s IR in well under 50 ms), so ``band_energies`` works in the frequency domain:

- one real FFT of the (padded) IR;
- per band, the bins where the filter is above -70 dB times the filter's response there, as a
  complex *baseband* signal (inverse FFT of just those bins): its squared magnitude is the
  band's energy envelope (twice the mean of the squared band signal), on a grid as coarse as the
  band is narrow. A 125 Hz octave costs a few hundred bins, not the IR's length;
- two phase variants of the same magnitude response: ``conj(H)`` is the filter run *backwards
  in time* (Kirkeby's time-reversed filtering, ISO 3382-1 note): the filter's own ringing then
  precedes each event instead of trailing it, so an exponential decay keeps its slope exactly
  however short it is. ``|H|`` is the zero-phase filter: no group delay, so energy stays on the
  right side of the 50/80 ms limits and the centre time is not shifted.

The IR is padded on both sides by the filters' ringing time (their slowest pole decaying
120 dB), so the circular FFT does not wrap a filter's ringing onto the other end.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.fft  # type: ignore[import-untyped]  # no stubs installed
from numpy.typing import NDArray
from scipy.signal import butter, sosfilt, sosfreqz  # type: ignore[import-untyped]

FloatArray = NDArray[np.float64]
BandKind = Literal["octave", "third"]

G = 10.0**0.3  # IEC 61260-1 base-10 octave ratio
OCTAVE_HZ: tuple[int, ...] = (125, 250, 500, 1000, 2000, 4000)
THIRD_HZ: tuple[int, ...] = (
    100, 125, 160, 200, 250, 315, 400, 500, 630, 800,
    1000, 1250, 1600, 2000, 2500, 3150, 4000, 5000,
)  # fmt: skip
ORDER = {"octave": 3, "third": 4}
MIN_SAMPLERATE = 16000
# Single precision for the FFTs: twice as fast, and its rounding floor (~-130 dB
# re the IR's energy) is far below any room's noise floor. Energies are summed in float64.
COMPLEX, REAL = np.complex64, np.float32
SETTLE_DB = 30.0  # the envelope's last samples, until the filter's ringing fell this much, are cut
SUPPORT_DB = -70.0  # bins below this (relative to the pass band) are left out of a band


class BandError(ValueError):
    """A band request that cannot be met (unknown kind, band above Nyquist, bad sample rate)."""


@dataclass(frozen=True)
class Band:
    """One band: nominal name, exact mid-band frequency, -3 dB edges (Hz), filter order."""

    nominal_hz: float
    centre_hz: float
    low_hz: float
    high_hz: float
    order: int

    @property
    def bandwidth_hz(self) -> float:
        return self.high_hz - self.low_hz

    @property
    def fraction(self) -> int:
        """``b``: 1 for an octave, 3 for a third-octave."""
        return round(math.log(G) / math.log(self.high_hz / self.low_hz))


def band_set(kind: BandKind = "octave") -> tuple[Band, ...]:
    """The bands of ``kind``: octaves 125 Hz .. 4 kHz or third-octaves 100 Hz .. 5 kHz."""
    if kind == "octave":
        b, nominal = 1, OCTAVE_HZ
    elif kind == "third":
        b, nominal = 3, THIRD_HZ
    else:
        raise BandError(f"band kind must be 'octave' or 'third', not {kind!r}")
    out = []
    for f in nominal:
        x = round(b * math.log(f / 1000.0) / math.log(G))  # band number relative to 1 kHz
        fm = 1000.0 * G ** (x / b)
        edge = G ** (1.0 / (2 * b))
        out.append(Band(float(f), fm, fm / edge, fm * edge, ORDER[kind]))
    return tuple(out)


def check_samplerate(fs: int, bands: tuple[Band, ...]) -> None:
    """Raise ``BandError`` unless every band fits well below Nyquist at ``fs``."""
    for band in bands:
        if band.high_hz >= 0.45 * fs:
            raise BandError(
                f"the {band.nominal_hz:g} Hz band reaches {band.high_hz:.0f} Hz, "
                f"too close to Nyquist ({fs / 2:.0f} Hz) at {fs} Hz"
            )
    if fs < MIN_SAMPLERATE:
        raise BandError(f"sample rate {fs} Hz is below the supported {MIN_SAMPLERATE} Hz")


def filter_order(band: Band, fs: int) -> int:
    """The band's Butterworth order at ``fs``: one more within an octave of Nyquist, where the
    bilinear transform's warping widens the lower skirt past the class 1 mask."""
    return band.order + (1 if band.high_hz > 0.25 * fs else 0)


@functools.lru_cache(maxsize=64)
def band_sos(band: Band, fs: int) -> FloatArray:
    """The band's Butterworth band-pass as second-order sections."""
    order = filter_order(band, fs)
    return np.asarray(
        butter(order, [band.low_hz, band.high_hz], btype="bandpass", fs=fs, output="sos"),
        dtype=np.float64,
    )


@functools.lru_cache(maxsize=256)
def ring_samples(band: Band, fs: int, decay_db: float = 120.0) -> int:
    """Samples for the filter's slowest pole to decay ``decay_db``."""
    sos = band_sos(band, fs)
    radius = max(float(np.max(np.abs(np.roots(s[3:])))) for s in sos)
    nepers = decay_db / (20 * math.log10(math.e))
    return math.ceil(nepers / -math.log(radius))


def filter_time(x: FloatArray, fs: int, bands: tuple[Band, ...]) -> FloatArray:
    """Plain causal filtering, ``[band, sample]``: the textbook path (for comparison and tests)."""
    return np.stack([sosfilt(band_sos(b, fs), x) for b in bands])


def _analog_gain_db(band: Band, fs: int, f: FloatArray) -> FloatArray:
    """The Butterworth magnitude (dB) at ``f`` from the prewarped analog prototype."""

    def warp(v: FloatArray) -> FloatArray:
        return np.asarray(fs / math.pi * np.tan(np.pi * np.minimum(v, 0.4999 * fs) / fs))

    lo, hi = warp(np.asarray(band.low_hz)), warp(np.asarray(band.high_hz))
    fw = np.maximum(warp(f), 1e-9)
    centre = np.sqrt(lo * hi)
    omega = np.abs(fw / centre - centre / fw) / ((hi - lo) / centre)
    return np.asarray(-10 * np.log10(1 + omega ** (2 * filter_order(band, fs))))


def _smooth_len(n: int) -> int:
    """The smallest 2**i * 3**j * 5**k >= n (pocketfft is slower on factors 7 and 11)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            v = p35 << max(0, (-(-n // p35) - 1).bit_length())
            best = min(best, v)
            p35 *= 3
        p5 *= 5
    return best


@dataclass(frozen=True)
class _Plan:
    """Everything about a (bands, fs, length) that does not depend on the signal."""

    n_fft: int
    lead: int  # zeros before the signal in the FFT buffer
    starts: tuple[int, ...]  # first bin of each band's support
    responses: tuple[NDArray[np.complex128], ...]  # the filter at those bins
    m_lengths: tuple[int, ...]  # each band's inverse-FFT length (its coarse grid)
    phases: tuple[tuple[NDArray[np.complexfloating[Any, Any]], ...], ...]
    # per band (conj(H), |H|) times sqrt(2 m / n_fft): |ifft|^2 is then energy per coarse sample


@functools.lru_cache(maxsize=16)
def _plan(bands: tuple[Band, ...], fs: int, n: int) -> _Plan:
    ring = max(ring_samples(b, fs) for b in bands)
    n_fft = _smooth_len(n + 2 * ring)
    freqs = np.arange(n_fft // 2 + 1) * fs / n_fft
    starts: list[int] = []
    responses: list[NDArray[np.complex128]] = []
    lengths: list[int] = []
    for band in bands:
        inside = np.flatnonzero(_analog_gain_db(band, fs, freqs) > SUPPORT_DB)
        a, z = int(inside[0]), int(inside[-1]) + 1
        _, h = sosfreqz(band_sos(band, fs), worN=freqs[a:z], fs=fs)
        starts.append(a)
        responses.append(np.asarray(h, dtype=np.complex128))
        lengths.append(_smooth_len(z - a))
    phases = tuple(
        (
            (np.conj(h) * math.sqrt(2.0 * m / n_fft)).astype(COMPLEX),
            (np.abs(h) * math.sqrt(2.0 * m / n_fft)).astype(COMPLEX),
        )
        for h, m in zip(responses, lengths, strict=True)
    )
    return _Plan(n_fft, ring, tuple(starts), tuple(responses), tuple(lengths), phases)


@dataclass(frozen=True)
class Envelope:
    """A band's energy on its own coarse grid.

    ``energy[m]`` is the band signal's energy (sum of squared samples) around original sample
    ``m * step - lead`` of the IR; sums of ``energy`` are sums of the squared band signal.
    """

    energy: FloatArray
    step: float  # original samples per coarse sample
    lead: int  # original samples of padding before the IR's first sample
    length: int  # the IR's length in original samples
    settle: int = 0  # original samples at the IR's end where the filter has not settled

    @property
    def stop(self) -> int:
        """The first coarse index past the usable envelope: the IR's end less ``settle`` (a
        filter run backwards starts at the IR's end, so its output fades in over its ringing
        time there; the rest of the grid is padding)."""
        end = max(self.length - self.settle, 1)
        return min(self.energy.size, math.ceil(self.index_of(end) - 1e-9))

    def index_of(self, sample: float) -> float:
        """The (fractional) coarse index of original sample position ``sample``."""
        return (sample + self.lead) / self.step


def band_energies(
    x: FloatArray, fs: int, bands: tuple[Band, ...]
) -> tuple[list[Envelope], list[Envelope]]:
    """Each band's energy envelope, time-reversed filtered and zero-phase filtered.

    Returns ``(reversed, zero_phase)``: one ``Envelope`` per band in each. Both have the same
    magnitude response, so the same energy; they differ only in where the filter's ringing goes.
    """
    n = x.size
    plan = _plan(bands, fs, n)
    buf = np.zeros(plan.n_fft, dtype=REAL)
    buf[plan.lead : plan.lead + n] = x
    spectrum = scipy.fft.rfft(buf, overwrite_x=True)
    rev: list[Envelope] = []
    zero: list[Envelope] = []
    for band, a, (h_rev, h_zero), m in zip(
        bands, plan.starts, plan.phases, plan.m_lengths, strict=True
    ):
        seg = spectrum[a : a + h_rev.size]
        step = plan.n_fft / m
        settle = min(ring_samples(band, fs, SETTLE_DB), n // 4)
        for h, out in ((h_rev, rev), (h_zero, zero)):
            v = np.zeros(m, dtype=COMPLEX)
            np.multiply(seg, h, out=v[: h.size])
            z = scipy.fft.ifft(v, overwrite_x=True)
            energy = np.square(z.real)
            energy += np.square(z.imag)
            out.append(Envelope(energy.astype(np.float64), step, plan.lead, n, settle))
    return rev, zero


def band_signals(x: FloatArray, fs: int, bands: tuple[Band, ...]) -> FloatArray:
    """Zero-phase band waveforms ``[band, sample]`` (same magnitude as the envelopes)."""
    n = x.size
    plan = _plan(bands, fs, n)
    buf = np.zeros(plan.n_fft)
    buf[plan.lead : plan.lead + n] = x
    spectrum = scipy.fft.rfft(buf)
    out = np.empty((len(bands), n))
    for i, (a, h) in enumerate(zip(plan.starts, plan.responses, strict=True)):
        spec = np.zeros_like(spectrum)
        spec[a : a + h.size] = spectrum[a : a + h.size] * np.abs(h)
        out[i] = scipy.fft.irfft(spec, plan.n_fft)[plan.lead : plan.lead + n]
    return out
