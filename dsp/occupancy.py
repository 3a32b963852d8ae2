"""The natural room at another occupancy: what an audience does to a measured hall.

A hall is measured empty (or at some known occupancy) between shows; during a show there is no
test signal to measure with, yet every seated person adds absorption and shortens the
reverberation. This module predicts the room at ``people`` from the room measured at
``measured_people``, so that the sound field can be re-designed for it (docs/acoustics.md,
"Occupancy").

The model, per octave band:

- Sabine: the equivalent absorption area ``A = 0.161 V / T`` (m², ``V`` in m³). Each person
  adds ``absorption_m2[band]`` over the empty seat: ``A' = A + (people - measured_people) dA``,
  so ``T' = 0.161 V / A'``. Sabine, not Eyring, because only the change of ``A`` is modelled,
  and for that the two agree within a few percent at the mean absorption of a hall.
- Barron's revised theory for the energies: the measured band is fitted with an impulse (the
  direct sound and the earliest reflections, which an audience does not change) plus an
  exponential tail (``dsp.presets.Envelope.fit`` on T30, C80 and the level). The tail's energy
  follows the diffuse field's, which is inversely proportional to ``A``, so it scales with
  ``T'/T``, and it decays with ``T'``. C80, D50, Ts, G and the level follow from that envelope;
  EDT scales with ``T'/T``.

Bands not measured (NaN) stay NaN. A prediction is an estimate: the room measured at the
occupancy of the show is always better, and ``absorption_m2`` is best taken from two
measurements of the hall, empty and full (``added_absorption``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from dsp.design import Room
from dsp.field import BANDS_HZ
from dsp.presets import Envelope

SABINE = 0.161  # s/m: T = 0.161 V / A (V in m3, A in m2), at 20 degrees C

# The added absorption of one seated person over the empty seat, per octave band 125 Hz .. 4
# kHz (m2 Sabine). An order of magnitude, between a person in a well-upholstered seat (which
# absorbs almost as much empty) and one on a wooden chair: every hall differs, so measure it
# (``added_absorption``) and configure the hall's own.
DEFAULT_ABSORPTION_M2 = (0.10, 0.20, 0.30, 0.35, 0.35, 0.35)


class OccupancyError(ValueError):
    """The occupancy model was given something it cannot use."""


def _check(name: str, value: float, low: float = 0.0, strict: bool = False) -> float:
    v = float(value)
    if not math.isfinite(v) or v < low or (strict and v <= low):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise OccupancyError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def _per_band(name: str, values: Sequence[float]) -> np.ndarray:
    if len(values) != len(BANDS_HZ):
        raise OccupancyError(f"{name}: one value per band {list(BANDS_HZ)} Hz, got {len(values)}")
    return np.array([_check(f"{name}[{hz} Hz]", v) for hz, v in zip(BANDS_HZ, values, strict=True)])


def occupied_room(
    room: Room,
    volume_m3: float,
    people: float,
    absorption_m2: Sequence[float] = DEFAULT_ABSORPTION_M2,
    measured_people: float = 0.0,
) -> Room:
    """``room`` (measured with ``measured_people`` present) as it is with ``people`` present.

    Raises ``OccupancyError`` for a volume that is not positive, a negative or non-finite
    headcount or absorption, or fewer people than measured where that would leave a band with
    no absorption at all (the room was not measured with the audience it is said to have had).
    """
    volume = _check("volume_m3", volume_m3, strict=True)
    added = _check("people", people) - _check("measured_people", measured_people)
    da = _per_band("absorption_m2", absorption_m2)
    if added == 0.0:
        return room
    t30, c80, edt = room.t30_s.copy(), room.c80_db.copy(), room.edt_s.copy()
    d50, ts, g, level = room.d50.copy(), room.ts_s.copy(), room.g_db.copy(), room.level_db.copy()
    for i, hz in enumerate(BANDS_HZ):
        t = float(room.t30_s[i])
        if not math.isfinite(t):
            continue
        area = SABINE * volume / t + added * da[i]
        if area <= 0.0:
            raise OccupancyError(
                f"{hz} Hz: {people:g} people leave no absorption in a room of T30 {t:.2f} s "
                f"measured with {measured_people:g} (check measured_people and the volume)"
            )
        t_new = SABINE * volume / area
        ratio = t_new / t
        t30[i], edt[i] = t_new, room.edt_s[i] * ratio
        c = float(room.c80_db[i])
        if not math.isfinite(c):
            continue
        lvl = float(room.level_db[i]) if math.isfinite(room.level_db[i]) else 0.0
        before = Envelope.fit(t, c, 10.0 ** (lvl / 10.0))
        after = Envelope(before.direct, before.tail * ratio, t_new, before.t0_s)
        gain_db = 10.0 * math.log10(after.total / before.total)
        c80[i], d50[i], ts[i] = after.c80_db(), after.d50(), after.ts_s()
        g[i] = room.g_db[i] + gain_db
        level[i] = room.level_db[i] + gain_db
    return dataclasses.replace(
        room, t30_s=t30, c80_db=c80, edt_s=edt, d50=d50, ts_s=ts, g_db=g, level_db=level
    )


def added_absorption(empty: Room, full: Room, volume_m3: float, people: float) -> tuple[float, ...]:
    """The absorption each person adds, per band, from the same hall measured ``empty`` and
    with ``people`` present: ``0.161 V (1/T_full - 1/T_empty) / people``. NaN where a band's
    T30 is missing from either; negative values (measurement scatter) are kept, so that a
    caller sees them."""
    volume = _check("volume_m3", volume_m3, strict=True)
    n = _check("people", people, strict=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = SABINE * volume * (1.0 / full.t30_s - 1.0 / empty.t30_s) / n
    return tuple(float(v) for v in out)


def t30_drift(a: Room, b: Room) -> float:
    """The largest relative difference of T30 between two rooms over the bands both have
    (0.0 when they share none): what decides whether a field must be re-designed."""
    both = np.isfinite(a.t30_s) & np.isfinite(b.t30_s)
    if not both.any():
        return 0.0
    return float(np.max(np.abs(b.t30_s[both] / a.t30_s[both] - 1.0)))
