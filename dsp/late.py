"""The late reverberator: a band-split feedback delay network that runs block-wise in numpy.

Why this shape (the reasoning in full is in ``docs/acoustics.md``, "Late reverberation"):

- **A feedback delay network** (Jot & Chaigne 1991): ``lines_per_band`` delay lines of mutually
  prime lengths (distinct primes), a lossless feedback matrix (a normalised Hadamard matrix: it
  mixes every line into every other one, which gives the fastest build-up of echo density), a
  decay gain per line ``g_i = 10 ** (-3 d_i / (fs T60))`` so that every path through the
  network loses 60 dB in ``T60`` whatever the lines it takes, and one output vector per output
  channel (orthonormal rows of a random orthogonal matrix: decorrelated outputs).
- **Block-wise, with no per-sample Python**: every delay line is longer than the processing
  block, so a whole block of line outputs depends only on samples written in earlier blocks. One
  ``np.take`` gathers the block of every line (and the input rows, see below), one batched
  ``np.matmul`` computes the next block of line inputs, one ``np.matmul`` mixes the outputs. All
  buffers, index arrays and views are made in ``__init__``.
- **Per-band decay without per-sample recursion**: a filter inside the loop (Jot's absorption
  filters) would need a per-sample IIR recursion, which numpy cannot vectorise across a block.
  Instead the input is split into the octave bands of ``BANDS_HZ`` *before* the network, and
  each band runs its own network with plain scalar gains: a band's network is a linear
  time-invariant system, so what enters band-limited leaves band-limited, and each band decays
  with exactly its own T60. The split is a set of linear-phase FIR filters (``design_crossover``)
  applied by uniformly partitioned overlap-save FFT convolution (``BandSplitter``); its latency,
  half the filter length, is absorbed in the late onset delay. The filters are *power*
  complementary (their squared magnitudes sum to one), not amplitude complementary: the band
  networks' outputs are mutually uncorrelated, so their powers add.
- **Tone correction and level** (Jot's tone corrector): each band's output gains make the late
  field *start* at the same energy density in every band, whatever the band's T60, as the
  reverberant field of a room with a flat source spectrum does (Sabine: reverberant energy
  grows with T). For ``late_db`` = 0 the late responses of all output channels together carry,
  in band ``b``, the energy ``frac_b * T60_b / LATE_REFERENCE_T60_S``: ``frac_b`` is the band
  filter's energy (what a unit impulse has in that band, about its bandwidth over the Nyquist
  frequency), so at T60 = 1 s the late field has, in every band, the energy of the input
  impulse, shared equally by the outputs. Changing a band's T60 therefore leaves the start of
  the decay where it was and changes only how long it lasts: the late-decay control does not
  move the early energy (the independence ``tests/unit/test_dsp_independence.py`` measures).
  ``late_energy`` is the figure design's energy arithmetic needs.
- **Denormals**: the loop gets a constant 1e-20 on every line (a bias row in the matrix
  product), so a network left without input never decays into subnormal floats, which would
  make the matrix products many times slower. It adds a constant far below -300 dB.

Threads: ``BandSplitter.process`` and ``LateReverb.process`` run in the audio thread and create
no arrays; everything else (construction, design) runs outside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from dsp.field import BANDS_HZ, FloatArray

F32 = NDArray[np.float32]
C64 = NDArray[np.complex64]
Index = NDArray[np.intp]

LN10_6 = 6.0 * math.log(10.0)
"""An energy decay of 60 dB in T60 is ``exp(-t / tau)`` with ``tau = T60 / (6 ln 10)``."""

CROSSOVER_TAPS_48K = 2047
"""Band-split filter length at 48 kHz (scaled with the sample rate): 42.6 ms, latency 1023."""

TRANSITION_OCT = 0.25
"""Half-width, in octaves, of each crossover's transition (sin^2 in log frequency)."""

DELAY_RANGE_S = (0.012, 0.045)
"""Delay-line lengths are primes spread log-uniformly over this range (scaled with fs)."""

LATE_REFERENCE_T60_S = 1.0
"""At this T60 (and ``late_db`` = 0) the late field's energy equals the input impulse's."""

MAX_T60_S = 30.0
MAX_BLOCK = 256
BIAS = 1e-20


def band_edges(bands: tuple[int, ...] = BANDS_HZ) -> list[float]:
    """The crossover frequencies between neighbouring bands: ``fc * sqrt(2)``."""
    return [fc * math.sqrt(2.0) for fc in bands[:-1]]


def _step(f: FloatArray, edge_hz: float, half_oct: float) -> FloatArray:
    """0 below ``edge_hz / 2**half_oct``, 1 above ``edge_hz * 2**half_oct``, sin^2 between."""
    with np.errstate(divide="ignore"):
        x = np.log2(np.maximum(f, 1e-9) / edge_hz)
    s = np.clip(x / (2 * half_oct) + 0.5, 0.0, 1.0)
    return np.asarray(np.sin(0.5 * np.pi * s) ** 2)


def design_crossover(
    samplerate: int, taps: int | None = None, transition_oct: float = TRANSITION_OCT
) -> FloatArray:
    """Linear-phase band filters ``[len(BANDS_HZ), taps]`` (odd ``taps``, latency ``taps // 2``).

    Frequency sampling: on a fine grid, the squared magnitudes of the bands are a partition of
    unity (a sin^2 step in log frequency at each edge, plus a high-pass at half the lowest
    band's lower edge so no DC enters the loop); each band's magnitude is the square root,
    made zero-phase, centred and Hann-windowed to ``taps``."""
    if taps is None:
        taps = round(CROSSOVER_TAPS_48K * samplerate / 48000) | 1
    if taps < 63 or taps % 2 == 0:
        raise ValueError(f"crossover taps must be odd and >= 63, got {taps}")
    if samplerate < 8000 or BANDS_HZ[-1] * math.sqrt(2) >= samplerate / 2:
        raise ValueError(f"samplerate {samplerate} Hz is too low for the bands {BANDS_HZ}")
    nfft = 1 << max(16, (8 * taps).bit_length())
    f: FloatArray = np.fft.rfftfreq(nfft, 1.0 / samplerate).astype(np.float64)
    edges = band_edges()
    low_cut = _step(f, BANDS_HZ[0] / math.sqrt(2) / 2, 0.5)
    steps = [_step(f, e, transition_oct) for e in edges]
    powers = []
    below = np.zeros_like(f)  # power of the bands below the current one's upper edge
    for j in range(len(BANDS_HZ)):
        upper = 1.0 - steps[j] if j < len(steps) else np.ones_like(f)
        powers.append(np.clip(upper - below, 0.0, 1.0))
        below = upper
    window = np.hanning(taps + 2)[1:-1]
    filters = np.empty((len(BANDS_HZ), taps))
    for j, p in enumerate(powers):
        h = np.fft.irfft(np.sqrt(p * low_cut), nfft)
        h = np.roll(h, taps // 2)[:taps]
        filters[j] = h * window
    return filters


class BandSplitter:
    """Mono blocks in, ``[n_bands, block]`` band blocks out: uniformly partitioned overlap-save.

    The filters are cut into partitions of ``block`` taps, each transformed with a DFT of
    ``2 * block``; a frequency-domain delay line keeps the spectra of the last ``P`` input
    blocks (written twice, at ``c`` and ``c + P``, so the ``P`` newest are always one
    contiguous view), and one batched matrix product per block sums ``H_p X_{n-p}`` for every
    band and bin at once.

    The two transforms are matrix products, not FFT calls: a real DFT of 256 points is a
    [256] x [256, 258] product (re/im interleaved, so the result *is* the complex64 spectrum
    through a view), and the inverse needs only the valid half of the output, [258] x [258,
    128] per band. At this size that costs what ``numpy.fft`` costs, and unlike pocketfft,
    which takes a work buffer per call, it allocates nothing."""

    def __init__(self, filters: FloatArray, block: int) -> None:
        n_bands, taps = filters.shape
        self.block = block
        self.latency: int = int(taps) // 2
        self.parts = p = -(-taps // block)
        n, k = 2 * block, block + 1
        padded = np.zeros((n_bands, p * block))
        padded[:, :taps] = filters
        spectra = np.fft.rfft(padded.reshape(n_bands, p, block), n=n, axis=2)
        # [K, band, P], partitions oldest-first to match the delay line's contiguous view
        self._h: C64 = np.ascontiguousarray(
            spectra[:, ::-1, :].transpose(2, 0, 1).astype(np.complex64)
        )
        dft = np.fft.rfft(np.eye(n), axis=1)  # x @ dft == rfft(x)
        fwd = np.zeros((n, 2 * k))
        fwd[:, 0::2], fwd[:, 1::2] = dft.real, dft.imag
        self._fwd: F32 = fwd.astype(np.float32)
        inv = np.zeros((2 * k, block))
        unit = np.zeros(k, dtype=np.complex128)
        for i in range(k):  # the last `block` samples of irfft of each unit (re, im) spectrum
            unit[i] = 1.0
            inv[2 * i] = np.fft.irfft(unit, n)[block:]
            unit[i] = 1j
            inv[2 * i + 1] = np.fft.irfft(unit, n)[block:]
            unit[i] = 0.0
        self._inv: F32 = inv.astype(np.float32)
        self._window: F32 = np.zeros(n, dtype=np.float32)
        self._older = self._window[:block]
        self._newer = self._window[block:]
        self._spec_re: F32 = np.zeros(2 * k, dtype=np.float32)
        self._spec = self._spec_re.view(np.complex64)
        self._fdl: C64 = np.zeros((k, 2 * p), dtype=np.complex64)
        self._columns = [self._fdl[:, c] for c in range(2 * p)]
        self._views = [self._fdl[:, c + 1 : c + 1 + p, None] for c in range(p)]
        self._sum: C64 = np.zeros((n_bands, k), dtype=np.complex64)
        self._sum_kb = self._sum.T[:, :, None]  # [K, band, 1] view for the matmul's out
        self._sum_re = self._sum.view(np.float32)  # [band, 2K]
        self._c = 0

    def process(self, x: F32, out: F32) -> None:
        """Filter one block ``x`` [block] into ``out`` [n_bands, block] (no arrays created)."""
        np.copyto(self._older, self._newer)
        np.copyto(self._newer, x)
        np.matmul(self._window, self._fwd, out=self._spec_re)
        c = self._c + 1
        if c == self.parts:
            c = 0
        self._c = c
        np.copyto(self._columns[c], self._spec)
        np.copyto(self._columns[c + self.parts], self._spec)
        # the view for position c holds columns c+1 .. c+P: oldest .. newest (= c + P)
        np.matmul(self._h, self._views[c], out=self._sum_kb)
        np.matmul(self._sum_re, self._inv, out=out)


class BandHistory:
    """The band-split input of a source, kept long enough for any late pre-delay.

    ``push`` splits the source's mono block and stores it twice, at ``pos`` and ``pos + cap``
    (a mirrored ring): any ``block`` samples that end within the last ``cap`` are then one
    contiguous slice, so a ``LateReverb`` reads its pre-delayed block through a view it made
    beforehand (``window``), whatever its pre-delay (several can read at once during a
    crossfade)."""

    def __init__(self, samplerate: int, block: int, max_delay: int, taps: int | None = None):
        filters = design_crossover(samplerate, taps)
        self.splitter = BandSplitter(filters, block)
        self.block = block
        self.n_bands = len(BANDS_HZ)
        self.cap = 1 << max(max_delay + 2 * block, 2 * block).bit_length()
        self.data: F32 = np.zeros((self.n_bands, 2 * self.cap), dtype=np.float32)
        self._views = [self.data[:, i : i + block] for i in range(0, self.cap, block)]
        self._mirrors = [self.data[:, i : i + block] for i in range(self.cap, 2 * self.cap, block)]
        self._newest: F32 = np.zeros((self.n_bands, block), dtype=np.float32)
        self.pos = 0  # where the newest block is (a multiple of block)
        self.energy: FloatArray = np.sum(filters**2, axis=1)
        """Each band filter's energy: the share of a white input's energy in that band."""

    @property
    def latency(self) -> int:
        return self.splitter.latency

    def push(self, mono: F32) -> None:
        self.pos = (self.pos + self.block) & (self.cap - 1)
        slot = self.pos // self.block
        # via a separate block: a copy within one array makes numpy check for overlap and
        # take a temporary copy (an allocation)
        self.splitter.process(mono, self._newest)
        np.copyto(self._views[slot], self._newest)
        np.copyto(self._mirrors[slot], self._newest)

    def windows(self, delay: int) -> list[F32]:
        """For each position of the newest block: the view of the block ``delay`` samples
        older (``0 <= delay <= cap - block``). Made outside the audio thread."""
        if not 0 <= delay <= self.cap - self.block:
            raise ValueError(f"a history window must be 0..{self.cap - self.block} samples back")
        b = self.block
        return [self.data[:, p - delay + self.cap : p - delay + self.cap + b]
                for p in range(0, self.cap, b)]  # fmt: skip


def _primes_near(targets: FloatArray, taken: set[int]) -> list[int]:
    out = []
    for t in targets:
        n = max(3, round(t))
        while n in taken or any(n % q == 0 for q in range(2, int(n**0.5) + 1)):
            n += 1
        taken.add(n)
        out.append(n)
    return out


def delay_lengths(samplerate: int, n_bands: int, lines: int, min_delay: int) -> NDArray[np.int64]:
    """``[n_bands, lines]`` distinct primes (so mutually prime), log-spread over DELAY_RANGE_S;
    the bands interleave so no two bands share a length."""
    lo = max(DELAY_RANGE_S[0] * samplerate, min_delay)
    hi = max(DELAY_RANGE_S[1] * samplerate, lo * 1.5)
    grid = np.geomspace(lo, hi, n_bands * lines)
    taken: set[int] = set()
    primes = np.array(_primes_near(grid, taken), dtype=np.int64)
    # band j takes every n_bands-th length, starting at j: each band spans the whole range
    return np.stack([primes[j::n_bands] for j in range(n_bands)])


def hadamard(n: int) -> FloatArray:
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Hadamard matrix needs a power of two, got {n}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return np.asarray(h / math.sqrt(n))


def lines_for(n_out: int) -> int:
    """Lines per band: 8, or the next power of two >= the outputs (at most 32), so that up to
    32 outputs get mutually orthogonal (uncorrelated) output vectors."""
    n = 8
    while n < min(n_out, 32):
        n *= 2
    return n


def late_energy(t60_s: FloatArray, band_energy: FloatArray, late_db: float = 0.0) -> FloatArray:
    """The late field's energy per band, all output channels together:
    ``10**(late_db/10) * frac_b * T60_b / LATE_REFERENCE_T60_S``, where ``band_energy`` is
    ``BandHistory.energy`` (the band filters' energies ``frac_b``). Relative to a unit impulse's
    energy in the same band: ``10**(late_db/10) * T60_b / 1 s``."""
    t60 = np.asarray(t60_s, dtype=np.float64)
    frac = np.asarray(band_energy, dtype=np.float64)
    return np.asarray(10 ** (late_db / 10) * frac * t60 / LATE_REFERENCE_T60_S)


@dataclass(frozen=True)
class LateLayout:
    """What one zone's late reverberators share: lines, delays, buffer size, output width."""

    samplerate: int
    block: int
    lines: int
    delays: NDArray[np.int64]  # [n_bands, lines]
    width: int  # processor outputs (the rendered block is [block, width])

    @property
    def cap(self) -> int:
        return 1 << (int(self.delays.max()) + 2 * self.block).bit_length()

    @property
    def min_latency(self) -> int:
        """Samples from the band-split input to the first sample of the network's output."""
        return int(self.delays.min())


def make_layout(samplerate: int, block: int, width: int, n_out: int) -> LateLayout:
    if not 16 <= block <= MAX_BLOCK:
        raise ValueError(f"the late reverberator runs in blocks of 16..{MAX_BLOCK}, got {block}")
    lines = lines_for(n_out)
    delays = delay_lengths(samplerate, len(BANDS_HZ), lines, min_delay=block + 1)
    return LateLayout(samplerate, block, lines, delays, width)


class LateReverb:
    """One parameter set's late field: a band-split FDN rendering ``[block, width]`` blocks.

    ``columns[j]`` is the processor output that the field's output ``j`` goes to; ``pre_delay``
    (samples) is read from the zone's ``BandHistory``; ``gain`` is the linear late level."""

    def __init__(
        self,
        layout: LateLayout,
        t60_s: FloatArray,
        columns: tuple[int, ...],
        band_energy: FloatArray,
        pre_delay: int,
        gain: float,
        seed: int = 0,
    ) -> None:
        t60 = np.asarray(t60_s, dtype=np.float64)
        nb, n = layout.delays.shape
        if t60.shape != (nb,):
            raise ValueError(f"late: t60_s needs {nb} bands")
        if not np.all((t60 > 0) & (t60 <= MAX_T60_S)):
            raise ValueError(f"late: every T60 must be in (0, {MAX_T60_S}] s, got {t60.tolist()}")
        if len(columns) > layout.width or min(columns, default=0) < 0:
            raise ValueError("late: output columns outside the processor's outputs")
        if max(columns, default=0) >= layout.width:
            raise ValueError("late: output columns outside the processor's outputs")
        self.layout = layout
        self.pre_delay = pre_delay
        self.t60_s = t60
        b, fs, cap = layout.block, layout.samplerate, layout.cap
        rows = n + 2  # lines, then the band's input, then a row of ones (the bias)
        d = layout.delays.astype(np.float64)
        g = 10.0 ** (-3.0 * d / (fs * t60[:, None]))  # [nb, n]
        rng = np.random.default_rng(seed)
        a = hadamard(n)
        m = np.zeros((nb, n, rows))
        for j in range(nb):
            m[j, :, :n] = a * g[j][None, :]
            m[j, :, n] = rng.choice((-1.0, 1.0), size=n) / math.sqrt(n)  # unit-norm input
            m[j, :, n + 1] = BIAS
        self._m: F32 = m.astype(np.float32)
        c = np.zeros((nb, rows, layout.width))
        for j in range(nb):
            q, _ = np.linalg.qr(rng.standard_normal((n, n)))
            vectors = q.T if len(columns) <= n else _unit_rows(rng, len(columns), n)
            for k, col in enumerate(columns):
                c[j, :n, col] = vectors[k]
        self._cap = cap
        self._buf: F32 = np.zeros((nb, rows, cap), dtype=np.float32)
        self._buf[:, n + 1, :] = 1.0
        self._flat = self._buf.reshape(-1)
        t = np.arange(b)
        dl = np.zeros((nb, rows), dtype=np.int64)
        dl[:, :n] = layout.delays
        tmd = (t[None, None, :] - dl[:, :, None]).astype(np.intp)
        rowoff = np.arange(nb * rows).reshape(nb, rows, 1) * cap
        # the gather indices for every write position (the ring has cap / block of them)
        table = np.empty((cap // b, nb, rows, b), dtype=np.intp)
        for k in range(cap // b):
            table[k] = ((tmd + k * b) & (cap - 1)) + rowoff
        self._idx_at = list(table)
        self._z: F32 = np.zeros((nb, rows, b), dtype=np.float32)
        self._zt = self._z.reshape(nb * rows, b).T  # [b, nb*rows]
        self._x: F32 = np.zeros((nb, n, b), dtype=np.float32)
        self._lines_at = [self._buf[:, :n, i : i + b] for i in range(0, cap, b)]
        self._input_at = [self._buf[:, n, i : i + b] for i in range(0, cap, b)]
        self._in_views: list[F32] = []
        self._pos = 0
        # Level: each band's output vectors are scaled so that every output gets, in band b,
        # gain^2 * T60_b / (1 s) / n_out of a unit impulse's energy in that band (see the
        # module docstring). The energy is measured by running this network (the block
        # code below, input straight into the band rows) over an impulse, so it is exact for
        # these delays, vectors and T60s, not a statistical estimate.
        cols = list(columns)
        if gain != 0 and cols:
            energy = impulse_energy(self._m, layout, t60, c[:, :n, cols], seed)  # [nb, n_cols]
            target = (gain**2 * t60 / LATE_REFERENCE_T60_S / len(cols))[:, None]
            scale = np.zeros_like(energy)
            np.divide(target, energy, out=scale, where=energy > 0)
            c[:, :, cols] *= np.sqrt(scale)[:, None, :]
        else:
            c[:] = 0.0
        self._ct: F32 = c.reshape(nb * rows, layout.width).astype(np.float32)
        self._buf[:, : n + 1, :] = 0.0
        self._pos = 0

    def attach(self, history: BandHistory) -> None:
        """Read the pre-delayed band input from ``history`` (outside the audio thread)."""
        if self.pre_delay > history.cap - history.block:
            raise ValueError(
                f"late: pre-delay {self.pre_delay} samples is beyond the history "
                f"({history.cap - history.block})"
            )
        self._in_views = history.windows(self.pre_delay)

    def process(self, history: BandHistory, out: F32) -> None:
        """Render the block that follows ``history``'s newest into ``out`` [block, width]."""
        pos = self._pos
        b = self.layout.block
        slot = pos // b
        np.copyto(self._input_at[slot], self._in_views[history.pos // b])
        np.take(self._flat, self._idx_at[slot], out=self._z, mode="clip")
        np.matmul(self._m, self._z, out=self._x)
        np.copyto(self._lines_at[slot], self._x)
        np.matmul(self._zt, self._ct, out=out)
        pos += b
        self._pos = pos if pos < self._cap else 0


_ENERGY_CACHE: dict[tuple[object, ...], FloatArray] = {}
_ENERGY_CACHE_SIZE = 64


def impulse_energy(
    m: F32, layout: LateLayout, t60: FloatArray, c: FloatArray, seed: int
) -> FloatArray:
    """``[n_bands, n_cols]``: energy per band and output of the networks (feedback and input
    matrix ``m`` [nb, N, N+2], output vectors ``c`` [nb, N, n_cols]) for a unit impulse into
    every band's input row, by running them: the same gather / product steps as
    ``LateReverb.process``, in chunks as long as the shortest delay line allows (a power of
    two <= it), until 0.8 T60 of the longest band; the rest of each band's exponential decay
    is added analytically.

    This runs in the audio host's control thread, beside the callback, so it takes as few
    Python steps as it can (each chunk is a handful of large numpy calls, which release the
    GIL), and the results are cached: switching back to a mode costs nothing."""
    key = (layout.samplerate, layout.delays.tobytes(), np.asarray(t60).tobytes(), seed,
           c.shape, m.tobytes(), c.tobytes())  # fmt: skip
    hit = _ENERGY_CACHE.get(key)
    if hit is not None:
        return hit
    nb, n, rows = m.shape
    fs = layout.samplerate
    d = layout.delays
    chunk = 1 << (int(d.min()).bit_length() - 1)
    cap = 1 << (int(d.max()) + 2 * chunk).bit_length()
    buf = np.zeros((nb, rows, cap), dtype=np.float32)
    buf[:, n + 1, :] = 1.0
    flat = buf.reshape(-1)
    dl = np.zeros((nb, rows), dtype=np.int64)
    dl[:, :n] = d
    tmd = np.arange(chunk)[None, None, :] - dl[:, :, None]
    rowoff = np.arange(nb * rows).reshape(nb, rows, 1) * cap
    c32 = np.ascontiguousarray(c, dtype=np.float32)
    acc = np.zeros((nb, c.shape[2]))
    seconds = 0.8 * float(np.max(t60)) + float(d.max()) / fs
    steps = math.ceil(seconds * fs / chunk)
    pos = 0
    for i in range(steps):
        idx = ((tmd + pos) & (cap - 1)) + rowoff
        z = flat[idx]  # [nb, rows, chunk]
        if i == 0:
            z[:, n, :] = 0.0
            z[:, n, 0] = 1.0
        else:
            z[:, n, :] = 0.0
        buf[:, :n, pos : pos + chunk] = np.matmul(m, z)
        o = np.matmul(c32.transpose(0, 2, 1), z[:, :n, :])  # [nb, n_cols, chunk]
        acc += np.einsum("bkt,bkt->bk", o, o, dtype=np.float64)
        pos = (pos + chunk) & (cap - 1)
    t_end = steps * chunk / fs
    left = np.exp(-LN10_6 * t_end / np.asarray(t60))  # energy share not yet emitted, per band
    energy = np.asarray(acc / (1.0 - left)[:, None])
    if len(_ENERGY_CACHE) >= _ENERGY_CACHE_SIZE:
        _ENERGY_CACHE.pop(next(iter(_ENERGY_CACHE)))
    _ENERGY_CACHE[key] = energy
    return energy


def _unit_rows(rng: np.random.Generator, count: int, n: int) -> FloatArray:
    v = rng.standard_normal((count, n))
    return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True))
