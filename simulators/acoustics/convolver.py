"""Realtime multichannel convolution (uniformly partitioned, overlap-save) and room noise.

``PartitionedConvolver`` convolves ``n_in`` loudspeaker feeds with an ``n_out x n_in`` matrix of
IRs, one block at a time, with no latency beyond the block itself:

- The IRs are cut into partitions of one block ``B``; each partition is zero-padded to ``2B``
  and transformed once, when the IR is loaded (outside the audio thread).
- Each input block is appended to the previous one, transformed (FFT size ``2B``) and written
  into a **frequency-domain delay line** (FDL): a ring of the last ``P`` input spectra.
- The output spectrum is one batched matrix product per frequency bin over every (partition,
  input) pair: ``Y[k, o] = sum_m X[k, m] H[k, m, o]``. The ring is never shifted: the filter
  bank is stored twice over in reversed partition order, so the partitions that line up with
  the ring's current head are one contiguous slice of it (a view, no copy).
- The last ``B`` samples of the inverse transform are the valid linear-convolution output
  (overlap-save).

Changing the IR never clicks: the new filters go into a second bank; for ``crossfade`` samples
the output is computed with both banks from the same FDL (both are exact convolutions of the
same input) and mixed with a raised-cosine ramp, then the new bank takes over. ``load`` runs in
an ordinary thread, ``process`` in the audio callback; they meet through two flags that only
one side writes each (``_pending`` set by the loader, cleared by the callback), so no lock.

Per block the callback allocates only what the FFT calls return (a few KiB); everything else is
preallocated. ``NoiseSource`` adds background noise from a precomputed periodic pink-ish buffer.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import scipy.fft  # type: ignore[import-untyped]  # no stubs installed
from numpy.typing import NDArray

Block = NDArray[np.float32]


class PartitionedConvolver:
    """``n_in`` inputs x ``n_out`` outputs, IRs up to ``ir_length`` samples, block ``block``."""

    def __init__(
        self, n_in: int, n_out: int, block: int, ir_length: int, crossfade: int = 0
    ) -> None:
        if min(n_in, n_out, block, ir_length) < 1 or crossfade < 0:
            raise ValueError("channels, block and IR length must be positive")
        self.n_in, self.n_out, self.block = n_in, n_out, block
        self.partitions = math.ceil(ir_length / block)
        self.ir_length = ir_length
        bins = block + 1
        m = self.partitions * n_in
        self._fdl = np.zeros((bins, 1, m), dtype=np.complex64)
        self._banks = np.zeros((2, bins, 2 * m, n_out), dtype=np.complex64)
        self._active = 0
        self._head = 0
        self._frame = np.zeros((2 * block, n_in), dtype=np.float32)
        self._spec = np.empty((bins, 1, n_out), dtype=np.complex64)
        self._out = np.zeros((block, n_out), dtype=np.float32)
        self._other = np.zeros((block, n_out), dtype=np.float32)
        self._fade_len = crossfade
        # Raised-cosine ramp, one extra block of ones so a block slice never runs short.
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(crossfade) + 1) / max(crossfade, 1))
        self._ramp = np.concatenate([ramp, np.ones(block)]).astype(np.float32)[:, None]
        self._fade_pos = -1  # -1: no crossfade running
        self._pending = False
        self.generation = 0  # IRs that have fully taken over

    @property
    def busy(self) -> bool:
        """A loaded IR has not fully taken over yet."""
        return self._pending or self._fade_pos >= 0

    def load(self, irs: NDArray[np.floating[Any]], timeout_s: float = 10.0) -> None:
        """Queue ``irs`` [n_out, n_in, samples] to crossfade in (outside the audio thread).

        Waits until a previous IR has taken over: the spare bank is in use until then."""
        irs = np.asarray(irs)
        if irs.ndim != 3 or irs.shape[:2] != (self.n_out, self.n_in):
            raise ValueError(f"IR shape {irs.shape}, expected ({self.n_out}, {self.n_in}, N)")
        if irs.shape[2] > self.ir_length:
            raise ValueError(f"IR of {irs.shape[2]} samples, at most {self.ir_length}")
        if not np.isfinite(irs).all():
            raise ValueError("IR holds NaN or infinity")
        deadline = time.monotonic() + timeout_s
        while self.busy:
            if time.monotonic() > deadline:
                raise TimeoutError("the previous IR never took over (is the stream running?)")
            time.sleep(0.005)
        spare = self._banks[1 - self._active]
        spare[...] = self._bank(irs)
        self._pending = True

    def _bank(self, irs: NDArray[np.floating[Any]]) -> NDArray[np.complex64]:
        b, p = self.block, self.partitions
        padded = np.zeros((self.n_out, self.n_in, p, 2 * b), dtype=np.float64)
        flat = np.zeros((self.n_out, self.n_in, p * b))
        flat[:, :, : irs.shape[2]] = irs
        padded[..., :b] = flat.reshape(self.n_out, self.n_in, p, b)
        spectra: NDArray[np.complex128] = scipy.fft.rfft(padded, axis=-1)  # [o, i, p, k]
        h = spectra.transpose(3, 2, 1, 0)  # [k, p, i, o]
        # Reversed partition order, twice over: rev[j] = H[(P - j) % P] for j in 0..2P-1.
        order = (p - np.arange(2 * p)) % p
        return h[:, order].reshape(b + 1, 2 * p * self.n_in, self.n_out).astype(np.complex64)

    def process(self, x: Block) -> Block:
        """Convolve one block ``x`` [block, n_in]; returns a view of an internal buffer
        [block, n_out] that the next call overwrites."""
        b, n_in = self.block, self.n_in
        self._frame[:b] = self._frame[b:]
        self._frame[b:] = x
        head = self._head
        self._fdl[:, 0, head * n_in : (head + 1) * n_in] = scipy.fft.rfft(self._frame, axis=0)
        if self._pending and self._fade_pos < 0:
            self._pending = False
            if self._fade_len == 0:
                self._active = 1 - self._active
                self.generation += 1
            else:
                self._fade_pos = 0
        self._convolve(self._active, self._out)
        if self._fade_pos >= 0:
            self._convolve(1 - self._active, self._other)
            ramp = self._ramp[self._fade_pos : self._fade_pos + b]
            # out = old + ramp * (new - old), in place
            self._other -= self._out
            self._other *= ramp
            self._out += self._other
            self._fade_pos += b
            if self._fade_pos >= self._fade_len:
                self._fade_pos = -1
                self._active = 1 - self._active
                self.generation += 1
        self._head = (head + 1) % self.partitions
        return self._out

    def _convolve(self, bank: int, out: Block) -> None:
        m = self.partitions * self.n_in
        start = (self.partitions - self._head) * self.n_in
        np.matmul(self._fdl, self._banks[bank, :, start : start + m], out=self._spec)
        out[...] = scipy.fft.irfft(self._spec[:, 0, :], n=2 * self.block, axis=0)[self.block :]


def pink_noise(length: int, seed: int) -> NDArray[np.float32]:
    """Periodic noise of unit RMS whose power falls 3 dB per octave above 20 Hz (pink), flat
    below. Made in the frequency domain, so it loops without a seam."""
    rng = np.random.default_rng(seed)
    bins = length // 2 + 1
    spectrum = rng.standard_normal(bins) + 1j * rng.standard_normal(bins)
    freqs = np.arange(bins) / length  # cycles per sample; only the shape matters
    spectrum /= np.sqrt(np.maximum(freqs, 20 / 48000))
    spectrum[0] = 0
    x = np.fft.irfft(spectrum, n=length)
    return np.asarray(x / np.sqrt(np.mean(x**2)), dtype=np.float32)


class NoiseSource:
    """Adds uncorrelated noise of RMS ``gain`` to every channel of a block; a gain change ramps
    linearly over one block."""

    def __init__(self, channels: int, block: int, gain: float, length: int = 1 << 17) -> None:
        base = np.stack([pink_noise(length, seed=17 + c) for c in range(channels)], axis=1)
        self._table = np.concatenate([base, base[:block]])  # a block never wraps
        self._length, self._block = length, block
        self._pos = 0
        self._gain = gain
        self.target = gain
        self._ramp = (np.arange(1, block + 1, dtype=np.float32) / block)[:, None]
        self._tmp = np.zeros((block, channels), dtype=np.float32)

    def add_to(self, out: Block) -> None:
        chunk = self._table[self._pos : self._pos + self._block]
        self._pos = (self._pos + self._block) % self._length
        target = self.target
        if target == self._gain:
            np.multiply(chunk, np.float32(target), out=self._tmp)
        else:
            gains = self._gain + (target - self._gain) * self._ramp
            np.multiply(chunk, gains, out=self._tmp)
            self._gain = target
        out += self._tmp
