"""Pure signal models for the MQTT gear simulators: noise, drift, thermal lag, sound levels.

Everything here is a plain function or a small value class without I/O or clocks: a model
calls them with the time step and standard-normal draws it owns, so each one can be checked
on its own (tests/unit/test_sim_gear_dynamics.py fuzzes them with hypothesis). Randomness is
passed in (``z``), never drawn here, so a seeded device is reproducible.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

FPS_RATES = (23.976, 24.0, 25.0, 29.97, 30.0, 50.0, 59.94, 60.0)


def clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def ou_step(x: float, mean: float, tau_s: float, sigma: float, dt: float, z: float) -> float:
    """One exact step of an Ornstein-Uhlenbeck process: mean-reverting noise with time constant
    ``tau_s`` and stationary standard deviation ``sigma``, whatever the step ``dt``."""
    if dt <= 0:
        return x
    a = math.exp(-dt / tau_s)
    return mean + (x - mean) * a + sigma * math.sqrt(1.0 - a * a) * z


def first_order(x: float, target: float, tau_s: float, dt: float) -> float:
    """A first-order lag (a heatsink, a room) approaching ``target`` with time constant tau."""
    if dt <= 0:
        return x
    return target + (x - target) * math.exp(-dt / tau_s)


def daily_cycle(t_s: float, amplitude: float, period_s: float = 86_400.0) -> float:
    """A sinusoidal cycle, lowest at 04:00 and highest at 16:00 (UTC) for a day's period."""
    return -amplitude * math.cos(2.0 * math.pi * ((t_s / period_s) - 4.0 / 24.0))


def dew_point_c(t_c: float, rh_pct: float) -> float:
    """Dew point by the Magnus formula (Sonntag 1990 constants over water)."""
    rh = clamp(rh_pct, 0.1, 100.0)
    b, c = 17.62, 243.12
    gamma = math.log(rh / 100.0) + b * t_c / (c + t_c)
    return float(c * gamma / (b - gamma))


def show_level_db(t_s: float, music_db: float, quiet_db: float, cycle_s: float) -> float:
    """The level a show follows: music for three quarters of each cycle, talk or applause
    between, with 5 s ramps, so 1-minute and 15-minute averages move like a real evening."""
    phase = (t_s % cycle_s) / cycle_s
    ramp = min(5.0 / cycle_s, 0.1)
    music = 0.75
    if phase < ramp:
        w = phase / ramp
    elif phase < music:
        w = 1.0
    elif phase < music + ramp:
        w = 1.0 - (phase - music) / ramp
    else:
        w = 0.0
    return quiet_db + w * (music_db - quiet_db)


def energy(level_db: float) -> float:
    return float(10.0 ** (level_db / 10.0))


def level(energy_value: float) -> float:
    return 10.0 * math.log10(max(energy_value, 1e-12))


@dataclass
class _Second:
    energy_s: float = 0.0  # integral of 10^(L/10) dt over the second
    duration_s: float = 0.0
    max_laf: float = -math.inf
    max_peak: float = -math.inf
    overload: bool = False


@dataclass
class SoundWindows:
    """What a sound level meter keeps: one-second bins of the last 15 minutes, from which the
    sliding LAeq (1 and 15 min), LAFmax and LCpeak of the last minute and the overload flag
    are read. Before a window has filled, it averages over what there is."""

    bins: deque[_Second] = field(default_factory=lambda: deque(maxlen=900))
    _clock: float = 0.0

    def add(self, dt: float, laf: float, peak: float, overload: bool) -> None:
        if not self.bins or self._clock >= 1.0:
            self.bins.append(_Second())
            self._clock = 0.0
        b = self.bins[-1]
        b.energy_s += energy(laf) * dt
        b.duration_s += dt
        b.max_laf = max(b.max_laf, laf)
        b.max_peak = max(b.max_peak, peak)
        b.overload = b.overload or overload
        self._clock += dt

    def _last(self, seconds: int) -> list[_Second]:
        n = len(self.bins)
        return [self.bins[i] for i in range(max(0, n - seconds), n)]

    def leq(self, seconds: int) -> float:
        last = self._last(seconds)
        duration = sum(b.duration_s for b in last)
        return level(sum(b.energy_s for b in last) / duration) if duration > 0 else -math.inf

    def max_laf(self, seconds: int = 60) -> float:
        return max((b.max_laf for b in self._last(seconds)), default=-math.inf)

    def max_peak(self, seconds: int = 60) -> float:
        return max((b.max_peak for b in self._last(seconds)), default=-math.inf)

    def overloaded(self, seconds: int = 60) -> bool:
        return any(b.overload for b in self._last(seconds))


def timecode_frame(position_s: float, fps: float) -> int:
    """The frame count of a playhead (non-drop: every frame counted at the clip's rate)."""
    return max(0, math.floor(position_s * fps + 1e-6))


def drifted(value: float, rate_per_h: float, elapsed_s: float) -> float:
    """A reading that drifts linearly away from the truth (a sensor's offset creeping)."""
    return value + rate_per_h * elapsed_s / 3600.0


def phase_current_a(power_w: float, voltage_v: float, pf: float) -> float:
    """RMS current of a phase from P = V * I * PF (zero without a supply: below 1 V)."""
    if voltage_v < 1.0 or pf == 0.0:
        return 0.0
    return abs(power_w) / (voltage_v * abs(pf))
