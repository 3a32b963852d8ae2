"""Ground truth measured from the room's IRs: T20, T30, EDT, C80 and D50 per octave band.

Deliberately small and independent of Flytower's ISO 3382 code (``dsp/``), which is checked
against it: plain textbook steps, no noise compensation (a modelled IR has no noise floor).

- Onset: the first sample within 20 dB of the IR's peak energy (ISO 3382-1, A.3.4), taken on
  the broadband IR and used for every band.
- Bands: 3rd-order Butterworth band-passes one octave wide around 125 Hz .. 4 kHz, run forward
  and backward (zero phase), so that a band's energy is not delayed past the 50/80 ms limits.
- Decay curve: Schroeder backward integration of the band's squared IR from the onset,
  normalised to 0 dB.
- T20 / T30: least-squares line through the curve from -5 dB to -25 / -35 dB, extrapolated to
  60 dB; EDT the same from 0 to -10 dB. ``None`` when the IR itself (its energy in the last
  50 ms against its loudest 50 ms) has not decayed 10 dB below the fit's lower limit: the
  backward integral of a cut-off IR always plunges at its end, which would fake a decay.
- C80 (dB) and D50 (fraction 0..1): early-to-late and early-to-total energy with limits 80 and
  50 ms after the onset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray
from scipy.signal import butter, sosfiltfilt  # type: ignore[import-untyped]

BANDS_HZ = (125, 250, 500, 1000, 2000, 4000)
METRICS = ("t20_s", "t30_s", "edt_s", "c80_db", "d50")

Signal = NDArray[np.floating[Any]]


def onset(h: Signal) -> int:
    energy = np.asarray(h, dtype=np.float64) ** 2
    peak = float(energy.max(initial=0.0))
    if peak == 0:
        return 0
    return int(np.argmax(energy >= peak * 0.01))


def octave_band(h: Signal, samplerate: int, centre_hz: float) -> NDArray[np.float64]:
    lo, hi = centre_hz / math.sqrt(2), min(centre_hz * math.sqrt(2), 0.45 * samplerate)
    sos = butter(3, [lo, hi], btype="bandpass", fs=samplerate, output="sos")
    return np.asarray(sosfiltfilt(sos, np.asarray(h, dtype=np.float64)))


def schroeder_db(h: Signal) -> NDArray[np.float64]:
    """Backward-integrated energy in dB, 0 dB at the first sample."""
    energy = np.cumsum(np.asarray(h, dtype=np.float64)[::-1] ** 2)[::-1]
    if energy[0] <= 0:
        return np.full(energy.shape, -np.inf)
    with np.errstate(divide="ignore"):
        return np.asarray(10 * np.log10(energy / energy[0]))


def decay_time(
    curve_db: NDArray[np.float64], samplerate: int, top: float, bottom: float
) -> float | None:
    """Seconds for a 60 dB decay from the line fitted between ``top`` and ``bottom`` dB."""
    below_top = np.flatnonzero(curve_db <= top)
    below_bottom = np.flatnonzero(curve_db <= bottom)
    if below_top.size == 0 or below_bottom.size == 0:
        return None
    i, j = int(below_top[0]), int(below_bottom[0])
    if j - i < 2:
        return None
    t = np.arange(i, j + 1) / samplerate
    slope = float(np.polyfit(t, curve_db[i : j + 1], 1)[0])
    return -60.0 / slope if slope < 0 else None


def end_level_db(h: Signal, samplerate: int) -> float:
    """Energy of the last 50 ms relative to the loudest 50 ms, in dB (-inf for silence).
    50 ms: several periods of the lowest band, so a band's level does not flicker."""
    w = max(1, samplerate // 20)
    energy = np.asarray(h, dtype=np.float64) ** 2
    windows = energy[: energy.size // w * w].reshape(-1, w).mean(axis=1)
    if windows.size == 0 or windows.max() <= 0:
        return -math.inf
    with np.errstate(divide="ignore"):
        return float(10 * np.log10(windows[-1] / windows.max()))


def energy_ratio(h: Signal, samplerate: int, limit_ms: float) -> tuple[float, float]:
    """(early, late) energy split ``limit_ms`` after the start of ``h``."""
    energy = np.asarray(h, dtype=np.float64) ** 2
    k = round(limit_ms * samplerate / 1000)
    return float(energy[:k].sum()), float(energy[k:].sum())


def band_metrics(h: Signal, samplerate: int) -> dict[str, list[float | None]]:
    """Every metric per band of one IR (rounded for JSON; ``None`` where undefined)."""
    start = onset(h)
    out: dict[str, list[float | None]] = {name: [] for name in METRICS}
    for fc in BANDS_HZ:
        band = octave_band(h, samplerate, fc)[start:]
        curve = schroeder_db(band)
        reach = end_level_db(band, samplerate)
        for name, top, bottom in (("t20_s", -5, -25), ("t30_s", -5, -35), ("edt_s", 0, -10)):
            fit = decay_time(curve, samplerate, top, bottom) if reach <= bottom - 10 else None
            out[name].append(_round(fit, 4))
        early, late = energy_ratio(band, samplerate, 80)
        out["c80_db"].append(_round(10 * math.log10(early / late), 3) if early > 0 < late else None)
        early, late = energy_ratio(band, samplerate, 50)
        total = early + late
        out["d50"].append(_round(early / total, 4) if total > 0 else None)
    return out


def broadband_t30(h: Signal, samplerate: int) -> float | None:
    tail = np.asarray(h)[onset(h) :]
    if end_level_db(tail, samplerate) > -45:
        return None
    return decay_time(schroeder_db(tail), samplerate, -5, -35)


def measure(irs: NDArray[np.float32], samplerate: int) -> dict[str, Any]:
    """Metrics of every speaker x mic pair of ``irs`` [mic, speaker, sample] and their mean."""
    pairs = []
    for m in range(irs.shape[0]):
        for s in range(irs.shape[1]):
            h = irs[m, s]
            pairs.append(
                {
                    "speaker": s + 1,
                    "mic": m + 1,
                    "delay_ms": round(1000 * onset(h) / samplerate, 3),
                    "peak": round(float(np.abs(h).max(initial=0.0)), 6),
                    **band_metrics(h, samplerate),
                }
            )
    mean = {name: _mean([cast(list[float | None], p[name]) for p in pairs]) for name in METRICS}
    return {"bands_hz": list(BANDS_HZ), "mean": mean, "pairs": pairs}


def _mean(rows: Sequence[list[float | None]]) -> list[float | None]:
    out: list[float | None] = []
    for column in zip(*rows, strict=True):
        values = [v for v in column if v is not None]
        out.append(_round(sum(values) / len(values), 4) if values else None)
    return out


def _round(value: float | None, digits: int) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)
