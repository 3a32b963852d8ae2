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
  ``np.matmul`` computes the next block of line inputs, one ``np.matmul`` mixes the outputs.
  ``LateBank`` does this for the networks of every zone at once (one slot per network), so the
  number of numpy calls per block does not grow with the zones. All buffers, index arrays and
  views are made in ``__init__``; a ``LateReverb`` is one network's matrices, built outside
  the audio thread and copied into a slot.
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

Threads: ``BandSplitter.process``, ``BandHistory.push`` and ``LateBank.process`` / ``load`` /
``move`` / ``clear`` run in the audio thread and create no arrays; everything else
(construction, design, ``LateReverb``) runs outside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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
ROW_SKEW = 16
"""Floats (one 64-byte cache line) between a ``LateBank`` row's ring and the next row."""


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
    """Blocks of ``sources`` signals in, their octave bands out: uniformly partitioned
    overlap-save, all sources at once.

    The filters are cut into partitions of ``block`` taps, each transformed with a DFT of
    ``2 * block``; a frequency-domain delay line keeps the spectra of the last ``P`` input
    blocks of every source (written twice, at ``c`` and ``c + P``, so the ``P`` newest are
    always one contiguous view), and one batched matrix product per block sums ``H_p X_{n-p}``
    for every band, bin and source at once.

    The two transforms are matrix products, not FFT calls: a real DFT of 256 points is a
    [sources, 256] x [256, 258] product (re/im interleaved, so the result *is* the complex64
    spectrum through a view), and the inverse needs only the valid half of the output, [258] x
    [258, 128] per band and source. At this size that costs what ``numpy.fft`` costs, and
    unlike pocketfft, which takes a work buffer per call, it allocates nothing. The two halves
    of the transform window live in two alternating arrays (a copy within one array would
    make numpy take a temporary)."""

    def __init__(self, filters: FloatArray, block: int, sources: int = 1) -> None:
        n_bands, taps = filters.shape
        if sources < 1:
            raise ValueError("a band splitter needs at least one source")
        self.block = block
        self.sources = sources
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
        # window w holds [older, newer]; the next block's window is the other one
        self._windows: list[F32] = [np.zeros((sources, n), dtype=np.float32) for _ in range(2)]
        self._w = 0
        self._spec_re: F32 = np.zeros((sources, 2 * k), dtype=np.float32)
        self._spec_t = self._spec_re.view(np.complex64).T  # [K, sources]
        self._fdl: C64 = np.zeros((k, 2 * p, sources), dtype=np.complex64)
        self._columns = [self._fdl[:, c, :] for c in range(2 * p)]
        self._views = [self._fdl[:, c + 1 : c + 1 + p, :] for c in range(p)]
        self._sum: C64 = np.zeros((sources, n_bands, k), dtype=np.complex64)
        self._sum_kbs = self._sum.transpose(2, 1, 0)  # [K, band, sources] for the matmul's out
        self._sum_re = self._sum.view(np.float32).reshape(sources * n_bands, 2 * k)
        self._c = 0

    def process(self, x: F32, out: F32) -> None:
        """Filter one block ``x`` [sources, block] into ``out`` [sources * n_bands, block]
        (source-major; no arrays created)."""
        b = self.block
        w = self._w
        now, following = self._windows[w], self._windows[1 - w]
        self._w = 1 - w
        np.copyto(now[:, b:], x)
        np.copyto(following[:, :b], x)
        np.matmul(now, self._fwd, out=self._spec_re)
        c = self._c + 1
        if c == self.parts:
            c = 0
        self._c = c
        np.copyto(self._columns[c], self._spec_t)
        np.copyto(self._columns[c + self.parts], self._spec_t)
        # the view for position c holds columns c+1 .. c+P: oldest .. newest (= c + P)
        np.matmul(self._h, self._views[c], out=self._sum_kbs)
        np.matmul(self._sum_re, self._inv, out=out)


class BandHistory:
    """The band-split input of every source, kept long enough for any late pre-delay.

    ``push`` splits the sources' block and stores it twice, at ``pos`` and ``pos + cap`` (a
    mirrored ring) in ``data`` [sources, n_bands, 2 cap]: the block ``delay`` samples older
    than the newest one of source ``s`` starts, in ``data`` flattened, at ``base(s, delay) +
    pos`` (``0 <= delay <= cap - block``), one index table for any pre-delay."""

    def __init__(
        self, samplerate: int, block: int, max_delay: int, taps: int | None = None,
        sources: int = 1,
    ) -> None:  # fmt: skip
        filters = design_crossover(samplerate, taps)
        self.splitter = BandSplitter(filters, block, sources)
        self.block = block
        self.sources = sources
        self.n_bands = len(BANDS_HZ)
        self.cap = 1 << max(max_delay + 2 * block, 2 * block).bit_length()
        self.data: F32 = np.zeros((sources, self.n_bands, 2 * self.cap), dtype=np.float32)
        self.flat = self.data.reshape(-1)
        self._views = [self.data[:, :, i : i + block] for i in range(0, self.cap, block)]
        self._mirrors = [self.data[:, :, i : i + block]
                         for i in range(self.cap, 2 * self.cap, block)]  # fmt: skip
        self._newest: F32 = np.zeros((sources, self.n_bands, block), dtype=np.float32)
        self._newest_2d = self._newest.reshape(sources * self.n_bands, block)
        self.pos = 0  # where the newest block is (a multiple of block)
        self.energy: FloatArray = np.sum(filters**2, axis=1)
        """Each band filter's energy: the share of a white input's energy in that band."""

    @property
    def latency(self) -> int:
        return self.splitter.latency

    def push(self, x: F32) -> None:
        """Split and store one block ``x`` [sources, block] (audio thread)."""
        self.pos = (self.pos + self.block) & (self.cap - 1)
        slot = self.pos // self.block
        # via a separate block: a copy within one array makes numpy check for overlap and
        # take a temporary copy (an allocation)
        self.splitter.process(x, self._newest_2d)
        np.copyto(self._views[slot], self._newest)
        np.copyto(self._mirrors[slot], self._newest)

    def base(self, source: int, delay: int) -> Index:
        """``[n_bands, block]`` flat indices into ``data`` of the block ``delay`` samples older
        than the newest of ``source``, less ``pos`` (made outside the audio thread)."""
        if not 0 <= delay <= self.cap - self.block:
            raise ValueError(f"a history window must be 0..{self.cap - self.block} samples back")
        if not 0 <= source < self.sources:
            raise ValueError(f"no source {source}")
        rows = (source * self.n_bands + np.arange(self.n_bands)) * 2 * self.cap
        return np.asarray(
            rows[:, None] + self.cap - delay + np.arange(self.block)[None, :], dtype=np.intp
        )


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
    """One parameter set's late field: the matrices of a band-split FDN (built outside the
    audio thread; a ``LateBank`` slot runs it).

    ``columns[j]`` is the processor output that the field's output ``j`` goes to; ``pre_delay``
    (samples) is how far back in the source's ``BandHistory`` the network reads its input;
    ``gain`` is the linear late level. ``m`` [n_bands, N, N + 2] maps a block's rows (the N
    lines, the band's input, a row of ones: the bias) to the lines' next inputs; ``c``
    [n_bands * (N + 2), width] maps the same rows to the outputs."""

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
        if pre_delay < 0:
            raise ValueError("late: the pre-delay must be >= 0")
        self.layout = layout
        self.pre_delay = pre_delay
        self.t60_s = t60
        fs = layout.samplerate
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
        self.m: F32 = m.astype(np.float32)
        c = np.zeros((nb, rows, layout.width))
        for j in range(nb):
            q, _ = np.linalg.qr(rng.standard_normal((n, n)))
            vectors = q.T if len(columns) <= n else _unit_rows(rng, len(columns), n)
            for k, col in enumerate(columns):
                c[j, :n, col] = vectors[k]
        # Level: each band's output vectors are scaled so that every output gets, in band b,
        # gain^2 * T60_b / (1 s) / n_out of a unit impulse's energy in that band (see the
        # module docstring). The energy is measured by running this network (the block
        # steps of ``LateBank.process``, input straight into the band rows) over an impulse,
        # so it is exact for these delays, vectors and T60s, not a statistical estimate.
        cols = list(columns)
        if gain != 0 and cols:
            energy = impulse_energy(self.m, layout, t60, c[:, :n, cols], seed)  # [nb, n_cols]
            target = (gain**2 * t60 / LATE_REFERENCE_T60_S / len(cols))[:, None]
            scale = np.zeros_like(energy)
            np.divide(target, energy, out=scale, where=energy > 0)
            c[:, :, cols] *= np.sqrt(scale)[:, None, :]
        else:
            c[:] = 0.0
        self.c: F32 = c.reshape(nb * rows, layout.width).astype(np.float32)
        self.in_base: Index = np.zeros((nb, layout.block), dtype=np.intp)

    def attach(self, history: BandHistory, source: int) -> None:
        """Read the pre-delayed band input of ``source`` from ``history`` (outside the audio
        thread)."""
        if self.pre_delay > history.cap - history.block:
            raise ValueError(
                f"late: pre-delay {self.pre_delay} samples is beyond the history "
                f"({history.cap - history.block})"
            )
        self.in_base = history.base(source, self.pre_delay)


class LateBank:
    """The late networks of many zones in one set of arrays: a block is a handful of large
    numpy calls whatever the number of zones.

    ``slots`` networks of one ``layout`` (same lines and delays; each slot its own matrices,
    pre-delay and source) share one ring position. Slots ``0 .. live - 1`` are computed (the
    caller keeps the live ones at the front); for each block:

    1. every slot's pre-delayed band input is gathered from the ``BandHistory`` (one ``add``
       of the history position to a per-slot index table, one ``take``) and written into the
       slot's input row;
    2. one ``take`` gathers the block of every line, input and bias row of every live slot
       (the flat indices for each ring position are tables made in ``__init__``: computing
       them per block would write as many bytes as the gather reads);
    3. one batched ``matmul`` computes the lines' next inputs for every slot and band, one
       ``copyto`` writes them into the ring;
    4. one ``matmul`` of the rows with the stacked output matrices mixes every slot onto the
       processor's outputs; during a crossfade, each slot's envelope over the block is a line
       (its value and slope), and two ``matmul`` with the output matrices scaled by value and
       slope, the second times the sample index, make the faded mix (an equal-power fade of
       1.5 s differs from its line over a block by less than 1e-6).

    ``load`` / ``move`` / ``clear`` change slots (audio thread, rarely: a mode switch starting
    or ending; they copy, fill and make a few view objects, but take no array buffers)."""

    def __init__(self, layout: LateLayout, slots: int, history: BandHistory) -> None:
        nb, n = layout.delays.shape
        b = layout.block
        # the ring holds the longest delay and a block (the index tables do the wrap-around)
        cap = -(-(int(layout.delays.max()) + b) // b) * b
        self.layout = layout
        self.slots = slots
        self.n_lines = n
        self.rows = rows = n + 2
        self.history = history
        width = layout.width
        if history.block != b:
            raise ValueError("late bank: the history's block differs from the layout's")
        self._cap = cap
        # A row holds the ring plus a skew of one cache line: with rows a power of two
        # apart, the block every row writes at the same ring position would fall into the
        # same cache sets.
        row_len = cap + ROW_SKEW
        per_slot = nb * rows * row_len
        self.buf: F32 = np.zeros((slots, nb, rows, row_len), dtype=np.float32)
        self.buf[:, :, n + 1, :] = 1.0
        self._flat = self.buf.reshape(-1)
        self.m: F32 = np.zeros((slots * nb, n, rows), dtype=np.float32)
        self.c: F32 = np.zeros((slots * nb * rows, width), dtype=np.float32)
        self.env: F32 = np.zeros((slots, b), dtype=np.float32)  # per-sample gain per slot
        self.live = 0
        self.fading = False  # audio thread: scale rows by ``env`` (a crossfade is running)
        # input gather
        self.in_base: Index = np.zeros((slots, nb, b), dtype=np.intp)
        self._in_idx: Index = np.zeros((slots, nb, b), dtype=np.intp)
        self._in: F32 = np.zeros((slots, nb, b), dtype=np.float32)
        # row gather: row r of slot s reads ring sample (pos + t - d_r) mod cap; the flat
        # indices for every ring position, all slots, are made here: the audio thread only
        # reads them (a per-block index computation would write as many bytes again)
        dl = np.zeros((nb, rows), dtype=np.int64)
        dl[:, :n] = layout.delays
        t = np.arange(b)
        rowoff = np.arange(nb * rows).reshape(nb, rows, 1) * row_len
        slotoff = np.arange(slots).reshape(slots, 1, 1, 1) * per_slot
        self._tables: Index = np.empty((cap // b, slots, nb, rows, b), dtype=np.intp)
        for k in range(cap // b):
            ring = (k * b + t[None, None, :] - dl[:, :, None]) % cap
            self._tables[k] = slotoff + (rowoff + ring)[None]
        self._z: F32 = np.zeros((slots, nb, rows, b), dtype=np.float32)
        self._x: F32 = np.zeros((slots, nb, n, b), dtype=np.float32)
        # crossfades: per block, each slot's envelope is taken as a line from its first to its
        # last sample (a = env[:, 0], d = slope), and out = rows @ (c * a) + t * (rows @ (c *
        # d)): two small scaled copies of the output matrix instead of scaling every row
        self._env_first = self.env[:, 0]
        self._env_last = self.env[:, b - 1]
        self._a: F32 = np.zeros(slots, dtype=np.float32)
        self._d: F32 = np.zeros(slots, dtype=np.float32)
        self._slot_of: Index = np.ascontiguousarray(
            np.repeat(np.arange(slots, dtype=np.intp), nb * rows * width).reshape(-1, width)
        )
        self._coef: F32 = np.zeros_like(self.c)
        self._ca: F32 = np.zeros_like(self.c)
        self._cd: F32 = np.zeros_like(self.c)
        self._slope_out: F32 = np.zeros((b, width), dtype=np.float32)
        self._ramp: F32 = np.ascontiguousarray(
            np.repeat(np.arange(b, dtype=np.float32)[:, None], width, axis=1)
        )
        # views per live count (index L) and ring position (index k)
        self._by_live = [self._views(live) for live in range(slots + 1)]
        self._pos = 0
        self.last = np.zeros((b, width), dtype=np.float32)

    def _views(self, live: int) -> tuple[Any, ...]:
        nb, n, rows, b, cap = (self.layout.delays.shape[0], self.n_lines, self.rows,
                               self.layout.block, self._cap)  # fmt: skip
        z = self._z[:live]
        return (
            self.in_base[:live],
            self._in_idx[:live],
            self._in[:live],
            [self.buf[:live, :, n, i : i + b] for i in range(0, cap, b)],
            [table[:live] for table in self._tables],
            z,
            z.reshape(live * nb, rows, b),
            self.m[: live * nb],
            self._x[:live].reshape(live * nb, n, b),
            [self.buf[:live, :, :n, i : i + b] for i in range(0, cap, b)],
            self._x[:live],
            z.reshape(live * nb * rows, b).T,
            self.c[: live * nb * rows],
            self._slot_of[: live * nb * rows],
            self._coef[: live * nb * rows],
            self._ca[: live * nb * rows],
            self._cd[: live * nb * rows],
        )

    # --- slots (audio thread, at a mode switch) -----------------------------------------

    def load(self, slot: int, net: LateReverb) -> None:
        """Start ``net`` in ``slot``, empty (``net`` is attached to the bank's history)."""
        nb, rows = self.layout.delays.shape[0], self.rows
        self.buf[slot, :, : self.n_lines + 1, :].fill(0.0)
        np.copyto(self.m[slot * nb : (slot + 1) * nb], net.m)
        np.copyto(self.c[slot * nb * rows : (slot + 1) * nb * rows], net.c)
        np.copyto(self.in_base[slot], net.in_base)

    def move(self, src: int, dst: int) -> None:
        """Continue the network of slot ``src`` in slot ``dst``, then clear ``src``."""
        nb, rows = self.layout.delays.shape[0], self.rows
        np.copyto(self.buf[dst], self.buf[src])
        np.copyto(self.m[dst * nb : (dst + 1) * nb], self.m[src * nb : (src + 1) * nb])
        np.copyto(self.c[dst * nb * rows : (dst + 1) * nb * rows],
                  self.c[src * nb * rows : (src + 1) * nb * rows])  # fmt: skip
        np.copyto(self.in_base[dst], self.in_base[src])
        self.clear(src)

    def clear(self, slot: int) -> None:
        """Silence ``slot``: no feedback, no output (its ring is cleared by the next load)."""
        nb, rows = self.layout.delays.shape[0], self.rows
        self.m[slot * nb : (slot + 1) * nb].fill(0.0)
        self.c[slot * nb * rows : (slot + 1) * nb * rows].fill(0.0)
        self.env[slot].fill(0.0)

    # --- the block ------------------------------------------------------------------------

    def process(self, out: F32) -> None:
        """Render the block that follows the history's newest into ``out`` [block, width]
        (no arrays created)."""
        (in_base, in_idx, inp, in_at, tables, z, z3, m, x3, lines, x, zt, c, slot_of, coef, ca,
         cd) = self._by_live[self.live]  # fmt: skip
        b = self.layout.block
        k = self._pos // b
        np.add(in_base, self.history.pos, out=in_idx)
        np.take(self.history.flat, in_idx, out=inp, mode="clip")
        np.copyto(in_at[k], inp)
        np.take(self._flat, tables[k], out=z, mode="clip")
        np.matmul(m, z3, out=x3)
        np.copyto(lines[k], x)
        if self.fading:
            a, d = self._a, self._d
            np.copyto(a, self._env_first)
            np.copyto(d, self._env_last)
            np.subtract(d, a, out=d)
            np.multiply(d, 1.0 / (b - 1), out=d)
            np.take(a, slot_of, out=coef, mode="clip")
            np.multiply(c, coef, out=ca)
            np.take(d, slot_of, out=coef, mode="clip")
            np.multiply(c, coef, out=cd)
            np.matmul(zt, ca, out=out)
            np.matmul(zt, cd, out=self._slope_out)
            np.multiply(self._slope_out, self._ramp, out=self._slope_out)
            np.add(out, self._slope_out, out=out)
        else:
            np.matmul(zt, c, out=out)
        pos = self._pos + b
        self._pos = pos if pos < self._cap else 0


_ENERGY_CACHE: dict[tuple[object, ...], FloatArray] = {}
_ENERGY_CACHE_SIZE = 64


def impulse_energy(
    m: F32, layout: LateLayout, t60: FloatArray, c: FloatArray, seed: int
) -> FloatArray:
    """``[n_bands, n_cols]``: energy per band and output of the networks (feedback and input
    matrix ``m`` [nb, N, N+2], output vectors ``c`` [nb, N, n_cols]) for a unit impulse into
    every band's input row, by running them: the same gather / product steps as
    ``LateBank.process``, in chunks as long as the shortest delay line allows (a power of
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
