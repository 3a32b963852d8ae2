"""Independence of the field's three controls, measured on rendered impulse responses.

The listener hears the natural room plus the field. The room is a synthetic IR (a unit direct
sound, then Gaussian noise decaying with T = 1.2 s in every band, seeded); the field is the
engine's own render (``render_ir``: the realtime code over an impulse) of output 0, arriving
through a loudspeaker 10 ms later (a pure delay: the room's coloration of the field is left
out on purpose, so what moves is the field's doing). Metrics come from ``dsp.metrics.analyze``
(ISO 3382-1); the late-only T30 check also from ``simulators.acoustics.truth``.

- Raising the early level by 6 dB moves C80 as predicted (+-0.5 dB) while T30 moves < 2 %.
  The prediction is energy arithmetic on the rendered paths (computed here: ``dsp/design.py``
  was being written at the same time): each path (room, direct, early, late) is rendered
  alone; the prediction is the 80 ms energy split of their band-filtered sum with the early
  path 6 dB up (coherent: interference included), and, from 250 Hz up, also of their energies
  added (incoherent, as for uncorrelated paths; at 125 Hz the taps interfere).
- Lengthening the late decay by 40 % moves T30 while the energy of the first 80 ms changes by
  less than 0.5 dB in every band (the late field keeps its starting level: ``dsp/late.py``).
- Each band's T30 of the late field alone matches its configured T60 within 5 %.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dsp.engine import render_ir
from dsp.field import BANDS_HZ, EarlyPattern, FieldParams, LateParams
from dsp.metrics import analyze
from simulators.acoustics.truth import band_metrics, octave_band

FS = 48000
SECONDS = 3.2
SPEAKER_S = 0.010
ROOM_T = 1.2
FIELD_T60 = np.array([2.0, 1.9, 1.8, 1.7, 1.5, 1.3])
LEAD = 2400  # 50 ms of silence before the direct sound: the band filters' edges stay clear


def room_ir() -> np.ndarray:
    rng = np.random.default_rng(42)
    t = np.arange(int(SECONDS * FS)) / FS
    h = 0.012 * rng.standard_normal(t.size) * np.exp(-3 * math.log(10) * t / ROOM_T)
    h[: int(0.004 * FS)] = 0.0  # the first reflection comes 4 ms after the direct sound
    h[0] = 1.0
    return np.concatenate([np.zeros(LEAD), h])


def field(early_db: float = 0.0, t60: np.ndarray = FIELD_T60) -> FieldParams:
    rng = np.random.default_rng(5)
    n = 12
    pattern = EarlyPattern(
        np.sort(rng.uniform(0.008, 0.065, n)), rng.uniform(0.15, 0.35, n), np.arange(n) % 2
    )
    return FieldParams(
        2, np.array([0.3, 0.3]), pattern, LateParams(t60, delay_s=0.05),
        early_db=early_db, late_db=0.0,
    )  # fmt: skip


def heard(field_ir: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Room plus the field's output 0, ``SPEAKER_S`` later."""
    d = LEAD + round(SPEAKER_S * FS)
    h = room.copy()
    h[d:] += field_ir[0, : h.size - d]
    return h


def band_split_energy(h: np.ndarray, band_hz: int) -> tuple[float, float]:
    """(energy before 80 ms, after) of ``h``'s octave band, from the direct sound (t = 0)."""
    e = octave_band(h, FS, band_hz) ** 2
    k = LEAD + round(0.08 * FS)
    return float(e[:k].sum()), float(e[k:].sum())


@pytest.fixture(scope="module")
def renders() -> dict[str, np.ndarray]:
    room = room_ir()
    base = field()
    out = {"room": room}
    for path in ("direct", "early", "late"):
        out[path] = heard(render_ir(base, FS, SECONDS, paths=(path,)), np.zeros_like(room))
    out["A"] = heard(render_ir(base, FS, SECONDS), room)
    out["B"] = heard(render_ir(field(early_db=6.0), FS, SECONDS), room)
    out["C"] = heard(render_ir(field(t60=FIELD_T60 * 1.4), FS, SECONDS), room)
    return out


def test_early_level_moves_c80_as_predicted_and_leaves_t30(
    renders: dict[str, np.ndarray],
) -> None:
    a, b = analyze(renders["A"], FS), analyze(renders["B"], FS)
    amp = 10 ** (6 / 20)
    for hz in BANDS_HZ:
        # energy arithmetic on the rendered paths, with the early path 6 dB up:
        # coherent (the band-filtered sum of the paths: interference included) ...
        mix = renders["room"] + renders["direct"] + amp * renders["early"] + renders["late"]
        e80, late = band_split_energy(mix, hz)
        coherent = 10 * math.log10(e80 / late)
        # ... and incoherent (energies add, as for uncorrelated paths)
        parts = {p: band_split_energy(renders[p], hz) for p in ("room", "direct", "early", "late")}
        e80 = sum(e for e, _ in parts.values()) + (amp**2 - 1) * parts["early"][0]
        late = sum(e for _, e in parts.values()) + (amp**2 - 1) * parts["early"][1]
        incoherent = 10 * math.log10(e80 / late)
        ba, bb = a.band(hz), b.band(hz)
        moved = bb.c80_db - ba.c80_db
        assert moved > 1.0, f"{hz} Hz: the early level must move C80 ({moved:.2f} dB)"
        assert abs(bb.c80_db - coherent) < 0.5, (hz, bb.c80_db, coherent)
        if hz >= 250:
            # at 125 Hz the band's impulse response (~11 ms) is longer than the gaps between
            # the direct sound and the taps: they interfere, energies no longer simply add
            assert abs(bb.c80_db - incoherent) < 0.5, (hz, bb.c80_db, incoherent)
        assert ba.t30_s is not None and bb.t30_s is not None
        assert abs(bb.t30_s / ba.t30_s - 1) < 0.02, (hz, ba.t30_s, bb.t30_s)


def test_late_decay_moves_t30_and_leaves_the_first_80_ms(
    renders: dict[str, np.ndarray],
) -> None:
    a, c = analyze(renders["A"], FS), analyze(renders["C"], FS)
    for hz in BANDS_HZ:
        ta, tc = a.band(hz).t30_s, c.band(hz).t30_s
        assert ta is not None and tc is not None
        assert tc / ta > 1.05, f"{hz} Hz: the late decay must move T30 ({ta:.3f} -> {tc:.3f} s)"
        ea, _ = band_split_energy(renders["A"], hz)
        ec, _ = band_split_energy(renders["C"], hz)
        change = 10 * math.log10(ec / ea)
        assert abs(change) < 0.5, f"{hz} Hz: the first 80 ms moved {change:.2f} dB"


def test_late_field_alone_decays_with_the_configured_t60_in_every_band() -> None:
    h = render_ir(field(), FS, 3.5, paths=("late",))
    for ch in range(2):
        t30 = np.array(band_metrics(h[ch], FS)["t30_s"], dtype=float)
        np.testing.assert_allclose(t30, FIELD_T60, rtol=0.05)
        result = analyze(h[ch], FS)
        ours = np.array([result.band(hz).t30_s for hz in BANDS_HZ], dtype=float)
        np.testing.assert_allclose(ours, FIELD_T60, rtol=0.05)
