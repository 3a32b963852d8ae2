"""The parameters of one sound-field processor (a zone): what design produces and the engine runs.

Design (``dsp/presets.py``, ``dsp/early.py``, ``dsp/adapt.py``) turns a mode's targets, the
loudspeaker layout and the measured room into ``FieldParams``; the realtime engine
(``dsp/engine.py``) renders them, and the offline render of the same engine over an impulse is
what the metrics measure. The three paths have independent levels:

- **direct**: the input to every output channel, delayed by ``direct_delay_s``, times
  ``direct_gain`` (per output channel);
- **early**: discrete taps, each a delay, a gain and one output channel (the early-reflection
  pattern), times ``10 ** (early_db / 20)``;
- **late**: a reverberator with a decay time per octave band (``BANDS_HZ``) starting after
  ``late_delay_s``, times ``10 ** (late_db / 20)``.

All times are seconds, gains linear unless the name ends in ``_db``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

BANDS_HZ: tuple[int, ...] = (125, 250, 500, 1000, 2000, 4000)
"""The octave bands every per-band quantity is given in (ISO 3382-1's 125 Hz .. 4 kHz)."""

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class EarlyPattern:
    """Early-reflection taps: ``delays_s[i]`` later, ``gains[i]`` times, on ``channels[i]``."""

    delays_s: FloatArray
    gains: FloatArray
    channels: IntArray

    def __post_init__(self) -> None:
        n = len(self.delays_s)
        if len(self.gains) != n or len(self.channels) != n:
            raise ValueError("early pattern: delays_s, gains and channels differ in length")
        if n and (not np.all(np.isfinite(self.delays_s)) or float(np.min(self.delays_s)) < 0):
            raise ValueError("early pattern: delays must be finite and >= 0")
        if n and not np.all(np.isfinite(self.gains)):
            raise ValueError("early pattern: gains must be finite")
        if n and int(np.min(self.channels)) < 0:
            raise ValueError("early pattern: channels must be >= 0")

    @staticmethod
    def empty() -> EarlyPattern:
        return EarlyPattern(np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class LateParams:
    """The late reverberator: decay time (T60) per band of ``BANDS_HZ``, onset, level."""

    t60_s: FloatArray  # len(BANDS_HZ)
    delay_s: float = 0.0  # when the late energy starts, after the input

    def __post_init__(self) -> None:
        if len(self.t60_s) != len(BANDS_HZ):
            raise ValueError(f"late: t60_s needs {len(BANDS_HZ)} bands, got {len(self.t60_s)}")
        if not np.all(np.isfinite(self.t60_s)) or float(np.min(self.t60_s)) <= 0:
            raise ValueError("late: every t60_s must be finite and > 0")
        if not (np.isfinite(self.delay_s) and self.delay_s >= 0):
            raise ValueError("late: delay_s must be finite and >= 0")


@dataclass(frozen=True)
class FieldParams:
    """One zone's sound field, for ``n_out`` output channels (loudspeakers)."""

    n_out: int
    direct_gain: FloatArray  # [n_out]
    early: EarlyPattern
    late: LateParams
    direct_delay_s: float = 0.0
    early_db: float = 0.0
    late_db: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)  # mode name, design notes (not rendered)

    def __post_init__(self) -> None:
        if self.n_out < 1:
            raise ValueError("a sound field needs at least one output channel")
        if len(self.direct_gain) != self.n_out:
            raise ValueError(f"direct_gain needs {self.n_out} channels")
        if len(self.early.channels) and int(np.max(self.early.channels)) >= self.n_out:
            raise ValueError(f"early pattern names a channel >= n_out ({self.n_out})")
        for name in ("direct_delay_s", "early_db", "late_db"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
