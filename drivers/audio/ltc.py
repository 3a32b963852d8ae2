"""LTC (SMPTE linear timecode) decoded from audio sample buffers (pure numpy, no I/O).

An LTC frame is 80 bits sent across one timecode frame, least significant bit first, in
biphase-mark code: every bit cell starts with a level transition, and a 1 has a second
transition in the middle of the cell. So the intervals between transitions are either one bit
period (a 0) or half of one (two of them are a 1), whatever the polarity or level of the
signal. Bits 64..79 are the sync word ``0011 1111 1111 1101``; it ends the frame and marks
where the 64 data bits before it begin:

| bits | field |
| --- | --- |
| 0-3, 8-9 | frame units, tens |
| 10 | drop-frame flag |
| 16-19, 24-26 | seconds units, tens |
| 32-35, 40-42 | minutes units, tens |
| 48-51, 56-57 | hours units, tens |
| the rest | user bits and flags (ignored) |

``LtcDecoder.feed(samples)`` takes consecutive mono buffers of any length and returns the frames
completed in them, each with the sample index (counted from the first sample ever fed) at which
its sync word ended: the start of the next frame, so the source is then at the label + 1 frame
(``OFFSET_FRAMES``). The rate comes from the measured bit period (80 bits per frame): 24, 25 or
30 labels per second, 30 with the drop-frame flag being 29.97 drop-frame (rate codes as in
MTC and Art-Net: 0 24, 1 25, 2 29.97 DF, 3 30). Transitions are found on the signal's sign with
hysteresis (``threshold`` of full scale), so noise around zero does not add edges; intervals
that are neither a half nor a whole bit period, and frames whose fields are out of range,
are counted in ``errors`` and decoding resynchronises on the next sync word. Reverse play
(the sync word backwards) is not decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SYNC_WORD = (0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1)  # bits 64..79, in time order
OFFSET_FRAMES = 1.0
_RATES = ((24, 0), (25, 1), (30, 3))
_LEARN_INTERVALS = 170


@dataclass(frozen=True, slots=True)
class LtcFrame:
    hours: int
    minutes: int
    seconds: int
    frames: int
    rate_code: int  # 0 24, 1 25, 2 29.97 drop-frame, 3 30
    end_sample: int  # index (since the first sample fed) where the sync word ended
    offset_frames: float = OFFSET_FRAMES


def _field(bits: list[int], start: int, count: int) -> int:
    return sum(bits[start + i] << i for i in range(count))


class LtcDecoder:
    """Streaming LTC decoder for one mono channel at ``sample_rate``."""

    def __init__(self, sample_rate: float, *, threshold: float = 0.05) -> None:
        if sample_rate <= 0:
            raise ValueError("sample_rate must be > 0")
        self.sample_rate = float(sample_rate)
        self.threshold = threshold
        self.errors = 0
        self.last_error = ""
        self.frames_decoded = 0
        self._sign = 0.0
        self._consumed = 0  # samples fed so far
        self._last_edge: float | None = None  # absolute sample position of the last edge
        self._period: float | None = None  # samples per bit, tracked
        self._half_pending = False
        self._bits: list[int] = []
        self._learn: list[float] = []
        self._synced = False

    def feed(self, samples: npt.ArrayLike) -> list[LtcFrame]:
        x = np.asarray(samples, dtype=np.float64).ravel()
        base = self._consumed
        self._consumed += x.size
        if x.size == 0:
            return []
        signs = np.where(x > self.threshold, 1.0, np.where(x < -self.threshold, -1.0, 0.0))
        # Hysteresis: a sample inside the dead band keeps the sign before it.
        idx = np.where(signs != 0, np.arange(x.size), -1)
        np.maximum.accumulate(idx, out=idx)
        held = np.where(idx >= 0, signs[np.maximum(idx, 0)], self._sign)
        previous = np.concatenate(([self._sign], held[:-1]))
        edges = np.flatnonzero((held != previous) & (previous != 0))
        if held[-1] != 0:
            self._sign = float(held[-1])
        out: list[LtcFrame] = []
        for i in edges:
            frame = self._edge(base + float(i))
            if frame is not None:
                out.append(frame)
        return out

    def _edge(self, position: float) -> LtcFrame | None:
        last, self._last_edge = self._last_edge, position
        if last is None:
            return None
        interval = position - last
        if self._period is None:
            # Until the period is known, take the longest interval of a run longer than one
            # frame (at most 160 intervals) as one bit: every frame's sync word holds 0s.
            self._learn.append(interval)
            if len(self._learn) >= _LEARN_INTERVALS:
                # The longest interval not a gap: up to 3x the median (half or whole bit).
                limit = 3 * float(np.median(self._learn))
                self._period = max(i for i in self._learn if i <= limit)
                self._bits.clear()
                self._learn.clear()
            return None
        ratio = interval / self._period
        if 0.75 <= ratio <= 1.35:
            if self._half_pending:
                self._error("a lone half-bit interval")
                return None
            self._period += 0.05 * (interval - self._period)
            return self._bit(0, position)
        if 0.3 <= ratio < 0.75:
            if self._half_pending:
                self._half_pending = False
                return self._bit(1, position)
            self._half_pending = True
            return None
        self._half_pending = False
        if ratio > 3:  # silence or a dropout: keep the bit period, resynchronise
            self._error(f"gap of {interval:.0f} samples")
            return None
        self._error(f"interval of {interval:.1f} samples, bit period {self._period:.1f}")
        return None

    def _error(self, reason: str) -> None:
        # Before the first frame after (re)learning the period, a misread is just the bit
        # phase being found (learning may end in the middle of a 1): not counted.
        if self._synced:
            self.errors += 1
            self.last_error = reason
        self._bits.clear()
        self._half_pending = False
        if reason.startswith("interval"):
            self._period = None  # relearn: the signal changed speed or was lost
            self._learn.clear()
            self._synced = False

    def _bit(self, bit: int, position: float) -> LtcFrame | None:
        bits = self._bits
        bits.append(bit)
        if len(bits) > 80:
            del bits[: len(bits) - 80]
        if len(bits) < 80 or tuple(bits[64:]) != SYNC_WORD:
            return None
        frame = self._decode(bits, position)
        bits.clear()
        return frame

    def _decode(self, bits: list[int], position: float) -> LtcFrame | None:
        frames = _field(bits, 0, 4) + 10 * _field(bits, 8, 2)
        drop = bits[10]
        seconds = _field(bits, 16, 4) + 10 * _field(bits, 24, 3)
        minutes = _field(bits, 32, 4) + 10 * _field(bits, 40, 3)
        hours = _field(bits, 48, 4) + 10 * _field(bits, 56, 2)
        assert self._period is not None
        fps = self.sample_rate / (80 * self._period)
        nominal, code = min(_RATES, key=lambda r: abs(r[0] - fps))
        if nominal == 30 and drop:
            code = 2
        if hours > 23 or minutes > 59 or seconds > 59 or frames >= nominal:
            self._error(f"LTC {hours}:{minutes}:{seconds}:{frames} out of range at {nominal}")
            return None
        self.frames_decoded += 1
        self._synced = True
        return LtcFrame(hours, minutes, seconds, frames, code, round(position))
