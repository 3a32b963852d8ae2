"""ISO 3382-1 metrics (``dsp/metrics.py``, ``dsp/bands.py``): accuracy on synthetic IRs with
known parameters, the band filters against the IEC 61260-1 class 1 mask, and bad input.

Ground truth never comes from ``dsp/``:

- **decay times**: each band's IR is decaying Gaussian noise confined (FFT brick wall) to the
  middle 2/3 octave of the band, where the class 1 filter is flat, plus a noise floor filling the
  band and an octave either side at ``margin`` dB below the decay's start power in the band.
  The truth is the textbook T30 of the *noise-free* component (``simulators/acoustics/truth.py``:
  Schroeder, least squares). A realisation of decaying noise does not decay at exactly its
  nominal T (at 125 Hz it scatters by several %), so comparing with the nominal T would test the
  random generator, not the estimator.
- **energy ratios**: a direct impulse and sparse +-1 reflections (>= 60 ms apart, none within
  20 ms of the 50/80 ms limits) with exponentially decaying amplitudes, plus white noise. With
  the arrivals that far apart a band filter's responses to them do not overlap, so every band's
  C50, C80, D50, Ts and G follow from the amplitudes alone, whatever the filter.

What the noise allows: the noisy band energy contains the cross term 2 s(t) n(t), zero-mean but
random; at the -35 dB end of the T30 range its relative spread is about 2 / sqrt(P B tau) (P the
signal-to-noise power ratio there, B the bandwidth, tau = T / 13.8). At 40 dB margin that is
~0.5 dB at 125 Hz: no estimator gets within 2.5 % of every realisation's T30 there
(``test_dsp_metrics_reference.py`` shows pyrato's doing the same). So the tests check the bias
(the mean over seeded realisations) in every band, and the spread (RMS) where B tau allows it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.signal import sosfilt, sosfreqz  # type: ignore[import-untyped]

from dsp.bands import (
    G,
    band_energies,
    band_set,
    band_sos,
    filter_time,
)
from dsp.metrics import IRError, analyze, decay_curve, iacc, jlf
from simulators.acoustics import truth

FS = 48000
OCTAVES = (125, 250, 500, 1000, 2000, 4000)
HALL_T = {125: 2.2, 250: 2.0, 500: 1.8, 1000: 1.6, 2000: 1.4, 4000: 1.0}


# --- synthetic IRs (shared with the reference test and the benchmark) ------------------------


def band_decay(
    rng: np.random.Generator,
    band_hz: float,
    t60: float,
    margin_db: float,
    *,
    width_oct: float = 2 / 3,
    delay_s: float = 0.02,
    seconds: float | None = None,
    fs: int = FS,
) -> tuple[np.ndarray, np.ndarray]:
    """(noisy IR, noise-free IR): decaying noise in the middle ``width_oct`` of the band, unit
    power at its start; noise in band +-1 octave, ``margin_db`` below that within the octave.
    Long enough for the decay to meet the noise and stay there a third of the time."""
    seconds = seconds or t60 * margin_db / 60 * 1.5 + 0.3
    n, d = round(seconds * fs), round(delay_s * fs)
    f = np.fft.rfftfreq(n, 1 / fs)
    spec = np.fft.rfft(rng.standard_normal(n))
    spec[(f < band_hz * 2 ** (-width_oct / 2)) | (f > band_hz * 2 ** (width_oct / 2))] = 0
    w = np.fft.irfft(spec, n)
    w /= np.sqrt(np.mean(w**2))
    t = (np.arange(n) - d) / fs
    clean = np.where(t >= 0, w * 10 ** (-3 * np.maximum(t, 0) / t60), 0.0)
    nspec = np.fft.rfft(rng.standard_normal(n))
    nspec[(f < band_hz / 2) | (f > band_hz * 2)] = 0
    inside = (f >= band_hz / math.sqrt(2)) & (f <= band_hz * math.sqrt(2))
    # irfft's Parseval: mean power = 2 * sum |X_k|^2 / n^2 over the one-sided bins.
    power_in_octave = 2 * float(np.sum(np.abs(nspec[inside]) ** 2)) / n**2
    noise = np.fft.irfft(nspec, n) * math.sqrt(10 ** (-margin_db / 10) / power_in_octave)
    return clean + noise, clean


def truth_decay(clean: np.ndarray, top: float = -5, bottom: float = -35, fs: int = FS) -> float:
    """Textbook decay time of a noise-free IR (the simulator's independent code)."""
    value = truth.decay_time(truth.schroeder_db(clean[truth.onset(clean) :]), fs, top, bottom)
    assert value is not None
    return value


@dataclass(frozen=True)
class Train:
    ir: np.ndarray
    clean: np.ndarray
    c50_db: float
    c80_db: float
    d50: float
    ts_s: float
    energy: float  # sum of squared samples of the noise-free IR (for G)


def reflection_train(
    rng: np.random.Generator,
    t60: float,
    margin_db: float,
    *,
    direct: float = 2.0,
    fs: int = FS,
) -> Train:
    """A direct impulse at 20 ms, then +-1 arrivals 60..90 ms apart (the first at 28..30 ms)
    with amplitude 10 ** (-3 t / t60), none within 20 ms of 50 and 80 ms; white noise
    ``margin_db`` below the reflections' mean power at the start."""
    delay = 0.02
    seconds = t60 * margin_db / 60 * 1.5 + 0.5
    times = [float(rng.uniform(0.028, 0.03))]
    while times[-1] < seconds - delay - 0.1:
        times.append(times[-1] + float(rng.uniform(0.06, 0.09)))
    arr = np.array([t for t in times if min(abs(t - 0.05), abs(t - 0.08)) >= 0.02])
    n, d = round(seconds * fs), round(delay * fs)
    idx = d + np.round(arr * fs).astype(int)
    amps = rng.choice([-1.0, 1.0], arr.size) * 10 ** (-3 * arr / t60)
    clean = np.zeros(n)
    clean[d] = direct
    clean[idx] += amps
    tt = np.concatenate(([0.0], (idx - d) / fs))
    ee = np.concatenate(([direct**2], amps**2))
    e50, e80 = float(ee[tt < 0.05].sum()), float(ee[tt < 0.08].sum())
    total = float(ee.sum())
    mean_power = 1.0 / (0.075 * fs)  # one unit arrival per 75 ms on average
    noise = rng.standard_normal(n) * math.sqrt(mean_power * 10 ** (-margin_db / 10))
    return Train(
        clean + noise,
        clean,
        10 * math.log10(e50 / (total - e50)),
        10 * math.log10(e80 / (total - e80)),
        e50 / total,
        float((tt * ee).sum() / total),
        total,
    )


# --- bands ------------------------------------------------------------------------------------

# IEC 61260-1:2014 table 1, class 1: relative attenuation limits (dB, min, max) at G ** (x / b).
CLASS1_MASK = (
    (0.0, -0.3, 0.3),
    (1 / 8, -0.4, 0.3),
    (1 / 4, -0.6, 0.3),
    (3 / 8, -1.3, 0.3),
    (1 / 2, -5.0, -2.0),
    (1.0, -math.inf, -17.5),
    (2.0, -math.inf, -42.0),
    (3.0, -math.inf, -61.0),
    (4.0, -math.inf, -70.0),
)


@pytest.mark.parametrize(("kind", "fs"), [("octave", 48000), ("octave", 16000), ("third", 48000)])
def test_band_filters_meet_the_iec_61260_class_1_mask(kind: Any, fs: int) -> None:
    for band in band_set(kind):
        b = band.fraction
        for x, lo, hi in CLASS1_MASK:
            for sign in (1, -1):
                f = band.centre_hz * G ** (sign * x / b)
                if f >= 0.49 * fs:
                    continue
                _, h = sosfreqz(band_sos(band, fs), worN=[f], fs=fs)
                gain = 20 * math.log10(max(abs(h[0]), 1e-12))
                assert lo <= gain <= hi, (kind, fs, band.nominal_hz, sign * x, gain)


def test_band_sets_are_the_iso_3382_ones() -> None:
    assert [b.nominal_hz for b in band_set("octave")] == list(OCTAVES)
    third = [b.nominal_hz for b in band_set("third")]
    assert third[0] == 100 and third[-1] == 5000 and len(third) == 18
    for band in band_set("octave"):
        assert band.centre_hz == pytest.approx(band.nominal_hz, rel=0.03)
        assert band.high_hz / band.low_hz == pytest.approx(G)


def test_band_energy_is_the_time_domain_filters_energy() -> None:
    """The frequency-domain envelopes carry exactly the energy of plain causal filtering."""
    rng = np.random.default_rng(0)
    n = 30000
    x = rng.standard_normal(n) * np.exp(-np.arange(n) / 6000)
    bands = band_set("octave")
    rev, zero = band_energies(x, FS, bands)
    plain = filter_time(np.concatenate((x, np.zeros(20000))), FS, bands)
    for i in range(len(bands)):
        want = float(np.sum(plain[i] ** 2))
        assert float(rev[i].energy.sum()) == pytest.approx(want, rel=1e-5)
        assert float(zero[i].energy.sum()) == pytest.approx(want, rel=1e-5)


def test_time_reversed_filtering_keeps_a_decay_shorter_than_the_filters() -> None:
    """125 Hz octave, T = 0.02 s: bandwidth x T = 1.8 < 16. Forward filtering lengthens the decay
    (the filter rings longer than the room); time-reversed filtering measures it, with a flag."""
    t60 = 0.02
    t = np.arange(round(0.6 * FS)) / FS
    x = np.sin(2 * np.pi * 125 * t) * 10 ** (-3 * t / t60)
    x = np.concatenate((np.zeros(480), x))
    band = analyze(x, FS).band(125)
    assert band.t20_s == pytest.approx(t60, rel=0.03)
    assert any("bandwidth x T" in w for w in band.warnings)
    forward = sosfilt(band_sos(band_set("octave")[0], FS), x)
    curve = truth.schroeder_db(forward[480:])
    textbook = truth.decay_time(curve, FS, -5, -25)
    assert textbook is not None and textbook > 2 * t60


# --- accuracy: decay times --------------------------------------------------------------------


def decay_errors(
    margin_db: float, realisations: int, seed: int, which: str = "t30"
) -> dict[tuple[int, float], np.ndarray]:
    """Relative errors (%) of ours vs the noise-free truth, per (band, T), NaN where None."""
    rng = np.random.default_rng(seed)
    top, bottom = {"t30": (-5, -35), "t20": (-5, -25), "edt": (0, -10)}[which]
    cases = [*HALL_T.items(), (1000, 0.5)]
    out = {}
    for hz, t60 in cases:
        errs = []
        for _ in range(realisations):
            ir, clean = band_decay(rng, hz, t60, margin_db)
            want = truth_decay(clean, top, bottom)
            got = decay_curve(ir, FS, hz).fit(which).value_s
            errs.append(math.nan if got is None else 100 * (got - want) / want)
        out[(hz, t60)] = np.array(errs)
    return out


def _table(title: str, errors: dict[tuple[int, float], np.ndarray]) -> None:
    print(f"\n{title}\n  band    T   mean%   rms%    max%  none")
    for (hz, t60), e in errors.items():
        ok = e[np.isfinite(e)]
        print(
            f"  {hz:5d} {t60:4.1f} {ok.mean():+6.2f} {np.sqrt(np.mean(ok**2)):6.2f}"
            f" {np.abs(ok).max():7.2f} {np.count_nonzero(~np.isfinite(e)):4d}"
        )


def _spread_allowed(hz: int, t60: float) -> bool:
    """Whether bandwidth x tau (tau = T / 13.8, the energy's time constant) is large enough
    (>= 50) for the noise cross term to stay well inside the target in every realisation."""
    return hz * (math.sqrt(2) - 1 / math.sqrt(2)) * t60 / 13.8 >= 50


def test_t30_within_1_percent_at_50_db_margin() -> None:
    errors = decay_errors(50, 16, seed=50)
    _table("T30 error vs noise-free truth, 50 dB margin", errors)
    for (hz, t60), e in errors.items():
        assert np.all(np.isfinite(e)), (hz, t60, "T30 missing at 50 dB")
        assert abs(e.mean()) <= 1.0, (hz, t60, e.mean())  # bias
        rms = np.sqrt(np.mean(e**2))
        assert rms <= (1.0 if _spread_allowed(hz, t60) else 1.5), (hz, t60, e)


def test_t30_within_2_5_percent_at_40_db_margin() -> None:
    errors = decay_errors(40, 16, seed=40)
    _table("T30 error vs noise-free truth, 40 dB margin", errors)
    for (hz, t60), e in errors.items():
        ok = e[np.isfinite(e)]
        assert ok.size >= 0.75 * e.size, (hz, t60, "T30 missing too often at 40 dB")
        if _spread_allowed(hz, t60):
            assert abs(ok.mean()) <= 2.5, (hz, t60, ok.mean())  # bias
            assert np.sqrt(np.mean(ok**2)) <= 2.5, (hz, t60, ok)
        else:  # 16 realisations of a +-4 % spread: the mean is known to +-1 % only
            assert abs(ok.mean()) <= 4.0, (hz, t60, ok.mean())


@pytest.mark.parametrize("which", ["t20", "edt"])
def test_t20_and_edt_match_the_noise_free_truth(which: str) -> None:
    errors = decay_errors(50, 6, seed=20, which=which)
    _table(f"{which.upper()} error vs noise-free truth, 50 dB margin", errors)
    for (hz, t60), e in errors.items():
        assert np.all(np.isfinite(e)), (hz, t60)
        assert np.sqrt(np.mean(e**2)) <= 2.0, (hz, t60, e)


def test_bass_ratio_follows_the_band_decay_times() -> None:
    rng = np.random.default_rng(5)
    ir = sum(band_decay(rng, hz, t, 60, seconds=3.0)[0] for hz, t in HALL_T.items())
    m = analyze(ir, FS)
    t = {hz: m.band(hz).t30_s for hz in (125, 250, 500, 1000)}
    assert None not in t.values()
    want = (t[125] + t[250]) / (t[500] + t[1000])  # type: ignore[operator]
    assert m.bass_ratio == pytest.approx(want)
    assert m.bass_ratio == pytest.approx((2.2 + 2.0) / (1.8 + 1.6), rel=0.05)


# --- accuracy: energy ratios ------------------------------------------------------------------


@pytest.mark.parametrize("margin_db", [60, 50, 40])
def test_c80_d50_ts_and_g_match_the_known_energy_split(margin_db: float) -> None:
    """Every band of 12 reflection trains. Where the late energy is too close to the noise for
    C50/C80 to be known within ~0.1 dB the band says so (a warning with the spread): those
    values are exempt from the 0.2 dB bound, and must not be the rule."""
    rng = np.random.default_rng(int(margin_db))
    ref = np.zeros(4800)
    ref[100] = 0.5  # the free-field IR at 10 m: energy 0.25
    worst = {"c50_db": 0.0, "c80_db": 0.0, "d50": 0.0, "ts_s": 0.0, "g_db": 0.0}
    flagged = checked = 0
    for _ in range(12):
        t60 = float(rng.uniform(0.4, 2.5))
        train = reflection_train(rng, t60, margin_db, direct=float(rng.uniform(1.2, 4.0)))
        m = analyze(train.ir, FS, reference=ref)
        for b in m.bands:
            checked += 1
            for key in ("d50", "ts_s"):
                worst[key] = max(worst[key], abs(getattr(b, key) - getattr(train, key)))
            assert b.g_db is not None
            worst["g_db"] = max(worst["g_db"], abs(b.g_db - 10 * math.log10(train.energy / 0.25)))
            for key, label in (("c50_db", "C50:"), ("c80_db", "C80:")):
                if any(w.startswith(label) for w in b.warnings):
                    flagged += 1
                    continue
                worst[key] = max(worst[key], abs(getattr(b, key) - getattr(train, key)))
    print(f"\nworst errors at {margin_db} dB margin: {worst}; C50/C80 flagged {flagged}")
    assert worst["c80_db"] <= 0.2
    assert worst["c50_db"] <= 0.2
    assert worst["d50"] <= 0.0125
    assert worst["ts_s"] <= 0.0025
    assert worst["g_db"] <= 0.2
    assert flagged <= 0.15 * 2 * checked


# --- spatial ----------------------------------------------------------------------------------


def test_jlf_from_an_omni_and_a_figure_of_eight() -> None:
    """Sparse arrivals with known lateral angles: J_LF = sum cos^2 * e (5..80 ms) / omni 0..80."""
    rng = np.random.default_rng(8)
    train = reflection_train(rng, 1.5, 70)
    omni = train.clean
    d = int(np.argmax(np.abs(omni)))
    arrivals = np.flatnonzero(omni)
    cosines = np.where(arrivals == d, 0.0, rng.uniform(-1, 1, arrivals.size))
    fig8 = np.zeros_like(omni)
    fig8[arrivals] = omni[arrivals] * cosines
    t = (arrivals - d) / FS
    e = omni[arrivals] ** 2
    want = float(np.sum((e * cosines**2)[(t >= 0.005) & (t < 0.08)]) / np.sum(e[t < 0.08]))
    result = jlf(omni, fig8, FS)
    assert len(result.jlf) == 6
    for value in result.jlf:
        assert value == pytest.approx(want, abs=0.01)
    assert result.jlf_mean == pytest.approx(want, abs=0.01)


def test_iacc_of_identical_delayed_and_independent_ears() -> None:
    rng = np.random.default_rng(9)
    n = FS
    t = np.arange(n) / FS
    left = rng.standard_normal(n) * 10 ** (-3 * t / 1.0)
    left[:480] = 0
    same = iacc(left, left, FS)
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in same.early + same.late)
    assert same.one_minus_iacc_e3 == pytest.approx(0.0, abs=1e-6)
    shifted = iacc(left, np.roll(left, 24), FS)  # 0.5 ms: inside the +-1 ms lag range
    assert shifted.iacc_e3 is not None and shifted.iacc_e3 > 0.95
    other = rng.standard_normal(n) * 10 ** (-3 * t / 1.0)
    other[:480] = 0
    apart = iacc(left, other, FS)
    assert apart.one_minus_iacc_e3 is not None and apart.one_minus_iacc_e3 > 0.6


def test_spatial_measures_refuse_the_wrong_layout() -> None:
    x = np.random.default_rng(1).standard_normal(FS)
    with pytest.raises(IRError, match="two 1-D arrays"):
        iacc(np.stack([x, x]), None, FS)
    with pytest.raises(IRError, match="1-D"):
        jlf(np.stack([x, x]), x, FS)
    with pytest.raises(IRError, match="differ in length"):
        iacc(x, x[:-10], FS)


# --- results, curves, third octaves -----------------------------------------------------------


def test_results_serialise_and_look_up_bands() -> None:
    rng = np.random.default_rng(2)
    ir = sum(band_decay(rng, hz, 1.2, 60, seconds=2.0)[0] for hz in OCTAVES)
    m = analyze(ir, FS)
    data = m.to_dict()
    json.dumps(data, allow_nan=False)
    assert [b["band_hz"] for b in data["bands"]] == list(OCTAVES)
    assert m.band(1000).band_hz == 1000
    with pytest.raises(KeyError, match="no 63 Hz band"):
        m.band(63)
    assert m.broadband.band_hz == 0.0 and m.broadband.t30_s is not None


def test_decay_curve_has_the_fit_ranges_and_truncation() -> None:
    rng = np.random.default_rng(3)
    ir, _ = band_decay(rng, 1000, 1.2, 50)
    curve = decay_curve(ir, FS, 1000)
    m = analyze(ir, FS)
    # (float32 FFTs of another length: equal to rounding)
    assert curve.fit("t30").value_s == pytest.approx(m.band(1000).t30_s, rel=1e-4)
    assert curve.noise_floor_reached
    assert 0.8 < curve.truncation_s < 1.2  # 50 dB of a 1.2 s decay: 1.0 s
    fit = curve.fit("t30")
    assert fit.start_s is not None and fit.end_s is not None
    i = int(np.searchsorted(curve.time_s, fit.start_s))
    assert curve.level_db[i] == pytest.approx(-5, abs=0.1)
    assert curve.time_s.shape == curve.level_db.shape
    json.dumps(curve.to_dict(), allow_nan=False)
    broadband = decay_curve(ir, FS)
    assert broadband.band_hz == 0.0
    with pytest.raises(IRError, match="no 63"):
        decay_curve(ir, FS, 63)
    third = decay_curve(ir, FS, 1000, bands="third")
    assert third.fit("t30").value_s == pytest.approx(1.2, rel=0.05)
    assert decay_curve(ir, FS, 800).band_hz == 800  # a third-octave only


def test_third_octaves_flag_short_bandwidth_x_t() -> None:
    rng = np.random.default_rng(4)
    ir = sum(band_decay(rng, hz, 0.5, 60, seconds=1.5)[0] for hz in OCTAVES)
    m = analyze(ir, FS, bands="third")
    assert len(m.bands) == 18
    low = m.band(100)  # bandwidth 23 Hz x 0.5 s = 12 < 16
    assert any("bandwidth x T" in w for w in low.warnings)
    assert not any("bandwidth x T" in w for w in m.band(2000).warnings)
    assert m.bass_ratio is None and any("bass ratio" in w for w in m.warnings)


# --- bad input --------------------------------------------------------------------------------


def _decay(seconds: float = 1.0, t60: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(6)
    n = round(seconds * FS)
    x = rng.standard_normal(n) * 10 ** (-3 * np.arange(n) / FS / t60)
    x[:100] = 0
    return x


@pytest.mark.parametrize(
    ("ir", "message"),
    [
        (np.zeros(FS), "silent"),
        (np.full(FS, np.nan), "NaN"),
        (np.concatenate((_decay(), [np.inf])), "NaN or infinite"),
        (np.stack([_decay(), _decay()]), "1-D"),
        (np.zeros((0,)), "empty"),
        (_decay().astype(np.complex128), "real"),
        (np.array(["a", "b"]), "real"),
        ("not an IR", "real"),
        (_decay(0.05), "too short"),
        (np.full(FS, 1e-300), "silent"),
    ],
)
def test_bad_irs_are_refused_with_a_reason(ir: Any, message: str) -> None:
    with pytest.raises(IRError, match=message):
        analyze(ir, FS)


@pytest.mark.parametrize(
    ("fs", "bands", "message"),
    [
        (8000, "octave", "4000 Hz band reaches 56.. Hz, too close to Nyquist"),
        (11025, "third", "5000 Hz band"),
        (14000, "octave", "below the supported 16000"),
        (0, "octave", "positive"),
        (48000.5, "octave", "whole number"),
        (True, "octave", "number"),
        ("48000", "octave", "number"),
        (float("nan"), "octave", "whole number"),
        (48000, "sixth", "band kind"),
    ],
)
def test_bad_sample_rates_and_band_kinds_are_refused(fs: Any, bands: Any, message: str) -> None:
    with pytest.raises(IRError, match=message):
        analyze(_decay(), fs, bands=bands)


def test_t30_is_none_with_a_reason_when_the_ir_is_cut_short() -> None:
    x = _decay(0.3, 0.5)  # a 0.5 s decay cut after 0.3 s: 36 dB, its last quarter still falls
    band = analyze(x, FS).band(1000)
    assert band.t30_s is None
    assert any(w.startswith("T30:") for w in band.warnings)
    assert any(w.startswith("no noise floor") for w in band.warnings)
    assert band.edt_s is not None and band.edt_s == pytest.approx(0.5, rel=0.1)


def test_t30_is_none_with_a_reason_when_the_noise_is_too_high() -> None:
    rng = np.random.default_rng(7)
    ir, _ = band_decay(rng, 1000, 1.0, 22)
    band = analyze(ir, FS).band(1000)
    assert band.t30_s is None and band.t20_s is None  # the -25 dB end would be in the noise
    assert any("T30" in w and "noise margin" in w for w in band.warnings)
    assert band.noise_margin_db == pytest.approx(22, abs=3)
    assert band.edt_s is not None


def test_a_clipped_ir_is_flagged() -> None:
    x = _decay()
    x[200:205] = x[200:205] + 100.0  # a loud arrival...
    x = np.clip(x, -50.0, 50.0)  # ...flat-topped at the converter's full scale
    m = analyze(x, FS)
    assert any(w.startswith("clipped") for w in m.warnings)
    assert not any(w.startswith("clipped") for w in analyze(_decay(), FS).warnings)


def test_integer_irs_are_accepted() -> None:
    x = np.round(_decay() / np.abs(_decay()).max() * 30000).astype(np.int16)
    assert analyze(x, FS).band(1000).t30_s == pytest.approx(1.0, rel=0.05)


def test_a_bad_reference_is_refused() -> None:
    with pytest.raises(IRError, match="reference"):
        analyze(_decay(), FS, reference=-1.0)
    with pytest.raises(IRError, match="reference IR"):
        analyze(_decay(), FS, reference=np.zeros(100))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hnp.arrays(
        np.float64,
        st.integers(1, 12000),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=64),
    )
)
def test_hostile_arrays_give_an_irerror_or_a_clean_result(x: np.ndarray) -> None:
    try:
        m = analyze(x, 16000)
    except IRError:
        return
    json.dumps(m.to_dict(), allow_nan=False)
    for b in (*m.bands, m.broadband):
        for v in (b.t20_s, b.t30_s, b.edt_s):
            assert v is None or (math.isfinite(v) and v > 0)
        assert math.isnan(b.d50) or 0 <= b.d50 <= 1
        for v in (b.c50_db, b.c80_db):  # a number, or NaN with a warning saying why
            assert math.isfinite(v) or any(
                w.startswith(("C50", "C80", "no energy")) for w in b.warnings
            )
