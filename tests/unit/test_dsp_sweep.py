"""Sweep measurement: the sweep and its inverse (dsp/sweep.py), the measurement processor and
the analysis (dsp/measure.py), without audio hardware.

The processor is driven block by block as the audio driver would. The "room" it plays into is
computed offline from the excitation the plan describes (a causal system's input does not depend
on what the processor does with its recording), then fed back block by block; the processor's
outputs are checked against that excitation sample by sample.
"""

from __future__ import annotations

import math
import pickle
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import butter, fftconvolve, hilbert, sosfilt  # type: ignore[import-untyped]

from dsp.measure import (
    AbortMeasurement,
    MeasurementDone,
    MeasurementError,
    MeasurementFactory,
    MeasurementFailed,
    MeasurementPlan,
    MeasurementProcessor,
    MeasurementProgress,
    MeasurementStarted,
    Recording,
    StartMeasurement,
    analyze_recording,
    load_recording,
    plan_measurement,
)
from dsp.sweep import (
    Sweep,
    SweepError,
    average,
    band_filter,
    deconvolve,
    ir_noise_floor,
    noise_levels,
    peak_to_noise_db,
    separate,
)

FS = 48000
BLOCK = 128


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def decaying_ir(seconds: float, t60: float, delay: int, seed: int = 1) -> np.ndarray:
    """A room-like IR: a direct impulse then exponentially decaying noise, band-passed to
    100 Hz .. 8 kHz (inside every sweep's band here, so the band limit does not matter), with
    the gain of a loudspeaker and microphone a few metres apart (energy sum 0.1)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * FS)
    t = np.arange(n) / FS
    h = 0.3 * rng.standard_normal(n) * 10 ** (-3 * t / t60)
    h[0] = 1.0
    h = sosfilt(butter(4, [100, 8000], btype="bandpass", fs=FS, output="sos"), h)
    return np.concatenate([np.zeros(delay), 0.1 * h / np.linalg.norm(h)])


# --- the sweep and its inverse -------------------------------------------------------------------


def test_sweep_is_synchronized_and_faded() -> None:
    s = Sweep(FS, 20.0, 20000.0, 2.0, level=0.5)
    assert round(s.f1_hz * s.rate_s) == pytest.approx(s.f1_hz * s.rate_s)  # f1 L is whole
    assert s.frames == round(s.rate_s * math.log(1000) * FS)
    assert abs(s.seconds - 2.0) < 0.5 / s.f1_hz * math.log(1000)  # rounded to whole 1/f1 of L
    x = s.signal
    assert np.max(np.abs(x)) == pytest.approx(0.5, abs=1e-3)
    assert x[0] == 0 and abs(x[-1]) < 1e-6, "faded in and out"
    assert not x.flags.writeable
    # The synchronized sweep's k-th harmonic is the sweep advanced by L ln k (phase exact).
    t = np.arange(s.frames) / FS
    phase = 2 * np.pi * s.f1_hz * s.rate_s * np.exp(t / s.rate_s)
    for k in (2, 3):
        adv = s.harmonic_advance_s(k)
        mid = (t > 0.5) & (t < s.seconds - adv - 0.1)
        later = 2 * np.pi * s.f1_hz * s.rate_s * np.exp((t[mid] + adv) / s.rate_s)
        np.testing.assert_allclose(np.sin(k * phase[mid]), np.sin(later), atol=1e-6)


def test_sweep_pickles_its_parameters_only() -> None:
    s = Sweep(FS, 40.0, 16000.0, 1.0)
    _ = s.inverse
    blob = pickle.dumps(s)
    assert len(blob) < 1000, "the arrays are recomputed, not pickled"
    again = pickle.loads(blob)
    assert again == s
    np.testing.assert_array_equal(again.inverse, s.inverse)


def test_deconvolving_the_sweep_gives_a_band_limited_impulse() -> None:
    s = Sweep(FS, 20.0, 20000.0, 2.0)
    r = deconvolve(np.concatenate([s.signal, np.zeros(FS)]), s, FS)
    d = r.data
    assert int(np.argmax(np.abs(d))) == r.zero
    # Flat in band (the inverse's gain is set there): 0.15 dB from 40 Hz (ripple of the fade-in
    # and of the 1 s window), 0.01 dB from 100 Hz to 10 kHz.
    window = d[r.zero - FS // 2 : r.zero + FS // 2]
    spectrum = np.abs(np.fft.rfft(np.roll(window, -FS // 2)))
    f = np.fft.rfftfreq(window.size, 1 / FS)
    band = (f >= 2 * s.f1_hz) & (f <= s.f2_hz / 2)
    level = 20 * np.log10(spectrum[band])
    assert np.max(np.abs(level)) < 0.15, (level.min(), level.max())
    assert np.max(np.abs(level[f[band] >= 100])) < 0.01
    # The impulse is compact: all but -30 dB of the energy within +-2 ms of time zero.
    e = d**2
    near = e[r.zero - 96 : r.zero + 97].sum()
    assert 10 * np.log10((e.sum() - near) / near) < -30


def test_a_filter_and_delay_are_recovered() -> None:
    s = Sweep(FS, 20.0, 20000.0, 1.5)
    h = decaying_ir(0.4, 0.3, delay=517)
    y = fftconvolve(s.signal, h)[: s.frames + FS]
    sep = separate(deconvolve(y, s, FS), s, h.size, harmonics=3)
    got = sep.linear
    assert int(np.argmax(np.abs(got))) == int(np.argmax(np.abs(h)))
    assert correlation(got[: h.size - 400], h[: h.size - 400]) > 0.9999
    assert np.all(sep.harmonic_db < -80), "a linear system has no harmonics"


def test_harmonics_of_a_memoryless_distortion_appear_where_predicted() -> None:
    """y = x + a2 x^2 + a3 x^3 behind a delay: harmonic k's IR is an impulse L ln k ahead of
    the linear one, with the harmonic's amplitude; the linear IR is the clean delay."""
    s = Sweep(FS, 50.0, 4000.0, 2.0, level=0.5)  # harmonics up to 5 x 4 kHz: no aliasing
    delay, a2, a3 = 300, 0.1, 0.05
    x = np.concatenate([np.zeros(delay), s.signal, np.zeros(FS // 2)])
    y = x + a2 * x**2 + a3 * x**3
    sep = separate(deconvolve(y, s, FS), s, FS // 4, harmonics=4, pre=200)
    # x = A sin: 2nd harmonic A^2 a2 / 2, 3rd A^3 a3 / 4; fundamental A (1 + 3 a3 A^2 / 4).
    amp = s.level
    fundamental = amp * (1 + 0.75 * a3 * amp**2)
    expected_db = [
        20 * math.log10(amp**2 * a2 / 2 / fundamental),
        20 * math.log10(amp**3 * a3 / 4 / fundamental),
    ]
    for k, h in ((2, sep.harmonics[0]), (3, sep.harmonics[1])):
        # Even harmonics come out in quadrature (x^2 holds -cos 2 phi): the envelope peaks.
        envelope = np.abs(hilbert(h))
        assert abs(int(np.argmax(envelope)) - (200 + delay)) <= 1, f"harmonic {k} at its place"
    np.testing.assert_allclose(sep.harmonic_db[:2], expected_db, atol=1.0)
    assert sep.harmonic_db[2] < expected_db[1] - 20, "no 4th harmonic"
    assert sep.thd == pytest.approx(
        math.sqrt(sum(10 ** (d / 10) for d in sep.harmonic_db)), rel=1e-9
    )
    # The linear IR: the clean delayed impulse (times the fundamental's gain, which the cubic
    # term raises), no harmonic left in it: what differs is 60 dB down.
    clean = separate(deconvolve(x, s, FS), s, FS // 4, harmonics=1, pre=200).linear
    gain = float(np.dot(sep.linear, clean) / np.dot(clean, clean))
    assert gain == pytest.approx(fundamental / amp, rel=0.01)
    residual = np.sum((sep.linear - gain * clean) ** 2) / np.sum(sep.linear**2)
    assert 10 * np.log10(residual) < -60


def test_averaging_lowers_the_noise_by_10_log_n() -> None:
    s = Sweep(FS, 20.0, 20000.0, 1.0)
    h = decaying_ir(0.2, 0.15, delay=100)
    clean = fftconvolve(s.signal, h)[: s.frames + FS // 2]
    rng = np.random.default_rng(5)
    n = 16
    noisy = clean + 0.01 * rng.standard_normal((n, clean.size))
    irs = separate(deconvolve(noisy, s, FS), s, FS // 2, harmonics=1).linear
    tail = slice(FS // 2 - FS // 8, FS // 2 - FS // 100)  # after the IR, before the fade
    one = np.mean(irs[:, tail] ** 2)
    avg = average(irs)
    assert avg.count == n
    gain = 10 * np.log10(one / np.mean(avg.ir[tail] ** 2))
    print(f"\naveraging {n} sweeps: noise down {gain:.2f} dB (10 log10 N = {10 * np.log10(n):.2f})")
    assert abs(gain - 10 * np.log10(n)) < 1.0


def test_a_sweep_that_disagrees_is_left_out_of_the_average() -> None:
    rng = np.random.default_rng(2)
    ir = np.zeros(2000)
    ir[100], ir[400] = 1.0, -0.5
    irs = np.stack([ir + 1e-3 * rng.standard_normal(ir.size) for _ in range(4)])
    irs[2] = np.roll(irs[2], 128)  # an xrun shifted this sweep by one block
    avg = average(irs)
    assert avg.used == (True, True, False, True)
    assert correlation(avg.ir, ir) > 0.999
    two = average(irs[:2])
    assert two.used == (True, True), "no majority with two: both are used"


def test_ir_noise_floor_predicts_the_deconvolved_noise() -> None:
    s = Sweep(FS, 20.0, 20000.0, 1.0)
    rng = np.random.default_rng(9)
    pink = np.cumsum(rng.standard_normal(4 * FS)) * 1e-4  # red-ish: not white, to be fair
    pink = pink - np.convolve(pink, np.ones(480) / 480, mode="same")
    silence = pink[:FS]  # what the noise check records
    predicted = ir_noise_floor(silence, s)
    during = pink[FS:]  # noise while sweeping (no sweep: the IR is noise only)
    r = deconvolve(during, s, FS).data[s.frames : s.frames + FS]
    for fc, p in zip((125, 250, 500, 1000, 2000, 4000), predicted, strict=True):
        measured = np.mean(band_filter(r, FS, fc)[FS // 10 : -FS // 10] ** 2)
        assert abs(10 * np.log10(measured / p)) < 1.0, fc
    levels = noise_levels(silence, FS)
    assert levels.shape == (6,) and np.all(np.isfinite(levels))


def test_peak_to_noise_of_a_known_ir() -> None:
    ir = np.zeros(FS // 2)
    ir[1000] = 1.0
    floor = np.full(6, 1e-8)
    pnr = peak_to_noise_db(ir, FS, floor)
    # An impulse's band energy spread over a 10 ms window: about (bandwidth / fs) / 480 ... per
    # band it grows by 3 dB per octave; it is finite and ordered.
    assert np.all(np.diff(pnr) > 2.0) and np.all(pnr > 20)


# --- bad input to the sweep -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fs": 1000}, "sample rate"),
        ({"fs": 48000.0}, "sample rate"),
        ({"f1_hz": -1.0}, "f1_hz must be > 0"),
        ({"f2_hz": 30000.0}, "Nyquist"),
        ({"f1_hz": 1000.0, "f2_hz": 1200.0}, "1.5 x"),
        ({"duration_s": math.nan}, "finite"),
        ({"duration_s": 0.01}, "too short"),
        ({"level": 1.5}, "full scale"),
        ({"fade_in_s": -1.0}, "fade_in_s"),
        ({"fade_in_s": 3.0}, "longer than the sweep"),
    ],
)
def test_bad_sweep_parameters(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"fs": FS, **kwargs}
    with pytest.raises(SweepError, match=message):
        Sweep(**args)  # type: ignore[arg-type]


@given(
    f1=st.floats(allow_nan=True, allow_infinity=True),
    f2=st.floats(allow_nan=True, allow_infinity=True),
    duration=st.floats(allow_nan=True, allow_infinity=True),
    level=st.floats(allow_nan=True, allow_infinity=True),
)
def test_hostile_sweep_parameters_raise_only_sweep_errors(
    f1: float, f2: float, duration: float, level: float
) -> None:
    try:
        s = Sweep(8000, f1, f2, duration, level)
    except SweepError:
        return
    assert s.frames >= 1 and s.rate_s > 0


def test_bad_recordings_to_deconvolve() -> None:
    s = Sweep(FS, 20.0, 20000.0, 0.5)
    y = np.zeros(s.frames + 100)
    with pytest.raises(SweepError, match="44100 Hz"):
        deconvolve(y, s, 44100)
    y[5] = np.nan
    with pytest.raises(SweepError, match="NaN"):
        deconvolve(y, s, FS)
    with pytest.raises(SweepError, match="shorter than the sweep"):
        deconvolve(np.zeros(100), s, FS)
    with pytest.raises(SweepError, match="real numbers"):
        deconvolve(np.array(["a"] * s.frames), s, FS)
    with pytest.raises(SweepError, match="record longer"):
        separate(deconvolve(np.zeros(s.frames), s, FS), s, 10 * FS)


# --- the measurement processor, driven block by block ---------------------------------------------


@dataclass(frozen=True)
class Fmt:
    """What the audio driver tells a factory (drivers.audio.StreamFormat's fields)."""

    samplerate: int = FS
    blocksize: int = BLOCK
    n_in: int = 2
    n_out: int = 2


def expected_outputs(plan: MeasurementPlan, n_out: int) -> np.ndarray:
    """What the processor must play: each output's sweeps in its section, silence elsewhere."""
    x = np.zeros((plan.total_frames, n_out))
    s = plan.sweep.signal.astype(np.float32)
    for o, ch in enumerate(plan.outputs):
        for j in range(plan.sweeps):
            start = plan.sweep_start(o, j)
            x[start : start + s.size, ch - 1] = s
    return x


def room_inputs(
    plan: MeasurementPlan,
    irs: dict[tuple[int, int], np.ndarray],
    n_in: int,
    noise: float,
    seed: int = 0,
) -> np.ndarray:
    """What the inputs hear: every output through its IR to every input (1-based pairs), plus
    white noise of RMS ``noise``."""
    played = expected_outputs(plan, max(plan.outputs))
    rng = np.random.default_rng(seed)
    y = noise * rng.standard_normal((plan.total_frames, n_in))
    for (o, i), h in irs.items():
        y[:, i - 1] += fftconvolve(played[:, o - 1], h)[: plan.total_frames]
    return y


def run(
    proc: MeasurementProcessor, inputs: np.ndarray, fmt: Fmt = Fmt(), limit: int = 10**6
) -> tuple[np.ndarray, list[object]]:
    """Drive ``proc`` as the audio host does until its run reports an end; returns what it
    played and every event."""
    events: list[object] = list(proc.poll_events())
    inp = np.zeros((fmt.blocksize, fmt.n_in), np.float32)
    out = np.zeros((fmt.blocksize, fmt.n_out), np.float32)
    played = []
    pos = 0
    for block in range(limit):
        k = min(fmt.blocksize, max(0, inputs.shape[0] - pos))
        inp.fill(0)
        inp[:k] = inputs[pos : pos + k]
        proc.process(inp, out)
        played.append(out.copy())
        pos += fmt.blocksize
        if block % 20 == 0:
            events += proc.poll_events()
            if not proc.running:
                break
    events += proc.poll_events()
    return np.concatenate(played), events


def done(events: list[object]) -> MeasurementDone:
    found = [e for e in events if isinstance(e, MeasurementDone)]
    assert len(found) == 1, events
    return found[0]


def small_plan(**kw: object) -> MeasurementPlan:
    args: dict[str, object] = {
        "sweeps": 3,
        "sweep_s": 1.0,
        "ir_s": 0.5,
        "noise_s": 0.5,
        "level_db": -6.0,
        **kw,
    }
    return plan_measurement(FS, (1, 2), (1, 2), **args)  # type: ignore[arg-type]


def test_a_measurement_recovers_every_pair() -> None:
    plan = small_plan()
    latency = 3 * BLOCK  # as JACK's loop would add
    irs = {
        (o, i): decaying_ir(0.3, 0.2 + 0.05 * o, delay=latency + 40 * o + 90 * i, seed=o * 3 + i)
        for o in (1, 2)
        for i in (1, 2)
    }
    y = room_inputs(plan, irs, 2, noise=1e-5)
    proc = MeasurementProcessor(plan, Fmt())
    proc.control(StartMeasurement("m1"))
    played, events = run(proc, y)
    # What it played: the plan's timeline, output by output, then silence.
    np.testing.assert_array_equal(played[: plan.total_frames], expected_outputs(plan, 2))
    assert not played[plan.total_frames :].any()
    assert isinstance(events[0], MeasurementStarted) and events[0].seconds == plan.seconds
    assert any(isinstance(e, MeasurementProgress) for e in events)
    rec = done(events).recording
    assert rec is not None and rec.data.shape == (plan.total_frames, 2) and rec.id == "m1"
    np.testing.assert_allclose(rec.data, y, atol=1e-6)  # float32 of the same samples

    m = analyze_recording(plan, rec)
    assert [(p.output, p.input) for p in m.pairs] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for (o, i), h in irs.items():
        got = m.ir(o, i)
        n = h.size - 200
        assert correlation(got[:n], h[:n]) > 0.9999, (o, i)
        p = m.pair(o, i)
        assert p.sweeps_used == 3 and p.thd < 1e-3
        assert p.onset_s == pytest.approx((latency + 40 * o + 90 * i) / FS, abs=2 / FS)
        assert p.peak_to_noise_db is not None and min(p.peak_to_noise_db) > 60
    assert m.noise_margin_ok and not m.flagged("clipped") and not m.flagged("truncated")
    for report in m.noise:  # white noise of RMS 1e-5: -100 dBFS broadband
        assert report.broadband_dbfs == pytest.approx(-100, abs=0.3)
    assert m.to_dict()["pairs"][0]["sweeps_used"] == 3


def test_low_noise_margin_is_flagged() -> None:
    plan = small_plan(sweeps=2, level_db=-40.0)
    irs = {(o, i): decaying_ir(0.3, 0.3, delay=200, seed=o + i) for o in (1, 2) for i in (1, 2)}
    y = room_inputs(plan, irs, 2, noise=3e-3)
    proc = MeasurementProcessor(plan, Fmt(), start=True)
    _, events = run(proc, y)
    rec = done(events).recording
    assert rec is not None
    m = analyze_recording(plan, rec)
    low = m.flagged("low_noise_margin")
    assert low and not m.noise_margin_ok
    assert all(w.band_hz in (125, 250, 500, 1000, 2000, 4000) for w in low)
    assert "too little for a T30" in low[0].text
    # Every flagged band is one whose peak-to-noise ratio is below 35 dB, and only those.
    for p in m.pairs:
        assert p.peak_to_noise_db is not None
        flagged = {w.band_hz for w in low if (w.output, w.input) == (p.output, p.input)}
        assert flagged == {
            float(fc) for fc, v in zip(m.bands_hz, p.peak_to_noise_db, strict=True) if v < 35
        }


def test_a_pair_that_is_not_connected_is_flagged() -> None:
    plan = small_plan(sweeps=1)
    irs = {(1, 1): decaying_ir(0.2, 0.2, 100), (2, 2): decaying_ir(0.2, 0.2, 100)}
    y = room_inputs(plan, irs, 2, noise=1e-4)
    _, events = run(MeasurementProcessor(plan, Fmt(), start=True), y)
    rec = done(events).recording
    assert rec is not None
    m = analyze_recording(plan, rec)
    assert {(w.output, w.input) for w in m.flagged("not_heard")} == {(1, 2), (2, 1)}


def test_an_ir_longer_than_the_window_is_flagged() -> None:
    plan = small_plan(sweeps=1)  # 0.5 s IRs and gaps
    irs = {(o, i): decaying_ir(1.2, 1.5, 100, seed=o + i) for o in (1, 2) for i in (1, 2)}
    y = room_inputs(plan, irs, 2, noise=1e-5)
    _, events = run(MeasurementProcessor(plan, Fmt(), start=True), y)
    rec = done(events).recording
    assert rec is not None
    cut = analyze_recording(plan, rec).flagged("truncated")
    assert len(cut) == 4 and "lengthen ir_s and gap_s" in cut[0].text


@settings(max_examples=40, deadline=None)
@given(
    fill=st.sampled_from(["noise", "zeros", "sweep"]),
    scale=st.floats(min_value=1e-30, max_value=1e30),
    specials=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=10**6),
            st.integers(min_value=0, max_value=1),
            st.floats(width=32, allow_nan=True, allow_infinity=True),
        ),
        max_size=4,
    ),
)
def test_hostile_recordings_get_a_result_or_a_measurement_error(
    fill: str, scale: float, specials: list[tuple[int, int, float]]
) -> None:
    """Whatever the samples (tiny, huge, NaN, inf, silent, one channel dead), the analysis
    returns a result or raises MeasurementError, never anything else."""
    plan = HOSTILE_PLAN
    rng = np.random.default_rng(0)
    if fill == "noise":
        data = scale * rng.standard_normal((plan.total_frames, 2))
    elif fill == "zeros":
        data = np.zeros((plan.total_frames, 2))
    else:
        data = scale * expected_outputs(plan, 2)
    samples = data.astype(np.float32)
    for index, channel, value in specials:
        samples[index % plan.total_frames, channel] = value
    try:
        m = analyze_recording(plan, Recording(8000, plan.inputs, samples))
    except MeasurementError:
        return
    for p in m.pairs:
        assert p.ir.shape == (plan.ir_frames,) and np.isfinite(p.ir).all()


HOSTILE_PLAN = plan_measurement(
    8000, (1, 2), (1, 2), sweeps=2, sweep_s=0.5, ir_s=0.1, noise_s=0.2, f1_hz=40.0
)


def test_clipping_is_flagged() -> None:
    plan = small_plan(sweeps=1)
    irs = {(o, i): 4 * decaying_ir(0.2, 0.2, 100) for o in (1, 2) for i in (1, 2)}
    y = np.clip(room_inputs(plan, irs, 2, noise=1e-5), -1, 1)
    _, events = run(MeasurementProcessor(plan, Fmt(), start=True), y)
    rec = done(events).recording
    assert rec is not None
    clipped = analyze_recording(plan, rec).flagged("clipped")
    assert {w.input for w in clipped} == {1, 2} and "full scale" in clipped[0].text


def test_a_sweep_hit_by_an_xrun_is_left_out() -> None:
    """A dropout in the middle of output 1's sweep 2 (an xrun: on JACK the loop loses a few
    periods, and is aligned again afterwards): that sweep's IR is spoilt; the average leaves it
    out and says so."""
    plan = small_plan()
    irs = {(o, i): decaying_ir(0.3, 0.2, 300, seed=o + 2 * i) for o in (1, 2) for i in (1, 2)}
    y = room_inputs(plan, irs, 2, noise=1e-5)
    cut = plan.sweep_start(0, 1) + plan.sweep.frames // 2
    y[cut : cut + 4 * 256] = 0
    _, events = run(MeasurementProcessor(plan, Fmt(), start=True), y)
    rec = done(events).recording
    assert rec is not None
    m = analyze_recording(plan, rec)
    rejected = m.flagged("rejected_sweeps")
    assert {(w.output, w.input) for w in rejected} == {(1, 1), (1, 2)}
    assert "sweep(s) [2]" in rejected[0].text
    assert m.pair(1, 1).sweeps_used == 2 and m.pair(2, 1).sweeps_used == 3
    assert correlation(m.ir(1, 1)[:14000], irs[1, 1][:14000]) > 0.9999


def test_the_recording_can_go_to_a_file(tmp_path: Path) -> None:
    path = str(tmp_path / "rec.npz")
    plan = small_plan(sweeps=1, save_to=path)
    irs = {(1, 1): decaying_ir(0.2, 0.2, 100)}
    y = room_inputs(plan, irs, 2, noise=1e-5)
    _, events = run(MeasurementProcessor(plan, Fmt(), start=True), y)
    d = done(events)
    assert d.recording is None and d.path == path
    rec = load_recording(path)
    assert rec.fs == FS and rec.inputs == (1, 2) and rec.id == "measurement"
    np.testing.assert_allclose(rec.data, y, atol=1e-6)
    assert correlation(analyze_recording(plan, rec).ir(1, 1)[:9000], irs[1, 1][:9000]) > 0.9999
    with open(path, "wb") as f:
        f.write(b"not numpy")
    with pytest.raises(MeasurementError, match="not a measurement recording"):
        load_recording(path)


def test_abort_busy_and_restart() -> None:
    plan = small_plan(sweeps=1)
    proc = MeasurementProcessor(plan, Fmt())
    proc.control(StartMeasurement("a"))
    proc.control(StartMeasurement("b"))
    inp = np.zeros((BLOCK, 2), np.float32)
    out = np.zeros((BLOCK, 2), np.float32)
    for _ in range(plan.noise_frames // BLOCK + 10):  # into the first sweep
        proc.process(inp, out)
    assert np.abs(out[:, 0]).max() > 0
    proc.control(AbortMeasurement("a"))
    proc.process(inp, out)
    assert abs(out[-1, 0]) < 0.01 * plan.sweep.level, "faded out within the block"
    proc.process(inp, out)
    assert not out.any()
    events = proc.poll_events()
    failed = [e for e in events if isinstance(e, MeasurementFailed)]
    assert [(e.id, e.reason) for e in failed] == [("b", "busy"), ("a", "aborted")]
    assert not proc.running
    # A new run on the same stream, with its own plan.
    other = plan_measurement(FS, (2,), (1,), sweeps=1, sweep_s=0.5, ir_s=0.2, noise_s=0.1)
    proc.control(StartMeasurement("c", other))
    _, events = run(proc, np.zeros((other.total_frames, 2)))
    assert done(events).id == "c"


def test_plans_that_do_not_fit_the_stream_are_refused() -> None:
    proc = MeasurementProcessor(None, Fmt(n_in=1, n_out=2))
    proc.control(StartMeasurement("none"))
    proc.control(StartMeasurement("chans", small_plan()))
    rate = plan_measurement(44100, (1,), (1,), sweep_s=0.5, ir_s=0.2)
    proc.control(StartMeasurement("rate", rate))
    short = plan_measurement(FS, (1,), (1,), sweep_s=0.5, ir_s=0.001)
    proc.control(StartMeasurement("gap", short))
    failed = {
        e.id: (e.reason, e.text) for e in proc.poll_events() if isinstance(e, MeasurementFailed)
    }
    assert failed["none"][0] == "bad_plan"
    assert failed["chans"][0] == "stream_format" and "1 input(s)" in failed["chans"][1]
    assert "44100 Hz" in failed["rate"][1]
    assert "shorter than a block" in failed["gap"][1]
    proc.control(StartMeasurement("junk", "plan"))  # type: ignore[arg-type]
    junk = [e for e in proc.poll_events() if isinstance(e, MeasurementFailed)]
    assert [(e.id, e.reason) for e in junk] == [("junk", "bad_plan")] and "str" in junk[0].text
    with pytest.raises(TypeError, match="StartMeasurement"):
        proc.control("go")
    with pytest.raises(MeasurementError, match="2 output"):
        MeasurementFactory(plan_measurement(FS, (3,), (1,), sweep_s=0.5, ir_s=0.2))(Fmt())


def test_factory_is_picklable_and_small() -> None:
    factory = MeasurementFactory(small_plan(), start=True)
    blob = pickle.dumps(factory)
    assert len(blob) < 4000, len(blob)
    proc = pickle.loads(blob)(Fmt())
    assert isinstance(proc, MeasurementProcessor) and proc.running


def worst_block_allocation(
    proc: MeasurementProcessor, inp: np.ndarray, out: np.ndarray, blocks: int
) -> int:
    """The most bytes tracemalloc saw allocated at peak while ``proc`` processed one block."""
    worst = 0
    tracemalloc.start()
    try:
        for _ in range(blocks):
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            proc.process(inp, out)
            _, peak = tracemalloc.get_traced_memory()
            worst = max(worst, peak - base)
    finally:
        tracemalloc.stop()
    return worst


def test_steady_state_allocates_no_arrays() -> None:
    # tracemalloc sees every thread of the process (pytest-xdist's own allocates now and then):
    # what the processor allocates comes back in every run, another thread's does not, so a
    # clean run out of three is the answer.
    worsts = []
    for _ in range(3):
        plan = small_plan(sweeps=2)
        proc = MeasurementProcessor(plan, Fmt(), start=True)
        inp = np.ones((BLOCK, 2), np.float32)
        out = np.zeros((BLOCK, 2), np.float32)
        for _ in range(50):
            proc.process(inp, out)
        # across the noise lead-in, sweeps and section changes
        worst = worst_block_allocation(proc, inp, out, 2000)
        assert proc.running
        worsts.append(worst)
        if worst < BLOCK * 4:
            break
    # The smallest buffer it could make is one channel of one block (512 bytes of float32 plus
    # its header); below that, what a block creates is a few views and ints at a time.
    assert min(worsts) < BLOCK * 4, f"{worsts} bytes allocated at peak in a block, in each run"


# --- bad recordings -------------------------------------------------------------------------------


def recording_for(plan: MeasurementPlan, data: np.ndarray, fs: int = FS) -> Recording:
    return Recording(fs, plan.inputs, data.astype(np.float32))


def test_bad_recordings_get_clear_errors() -> None:
    plan = small_plan(sweeps=1)
    good = room_inputs(plan, {(1, 1): decaying_ir(0.2, 0.2, 100)}, 2, noise=1e-5)
    with pytest.raises(MeasurementError, match="at 44100 Hz, the plan at 48000"):
        analyze_recording(plan, recording_for(plan, good, fs=44100))
    with pytest.raises(MeasurementError, match="cut short"):
        analyze_recording(plan, recording_for(plan, good[:-100]))
    with pytest.raises(MeasurementError, match="inputs"):
        analyze_recording(plan, Recording(FS, (1,), good[:, :1].astype(np.float32)))
    nan = good.copy()
    nan[1000, 1] = np.nan
    with pytest.raises(MeasurementError, match=r"NaN or infinite samples on input\(s\) \[2\]"):
        analyze_recording(plan, recording_for(plan, nan))
    silent = good.copy()
    silent[:, 0] = 0
    with pytest.raises(MeasurementError, match=r"input\(s\) \[1\] recorded digital silence"):
        analyze_recording(plan, recording_for(plan, silent))
    with pytest.raises(MeasurementError, match="floating point"):
        analyze_recording(plan, Recording(FS, plan.inputs, good.astype(np.int16)))
    with pytest.raises(MeasurementError, match="expected a Recording"):
        analyze_recording(plan, good)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outputs": ()}, "at least one"),
        ({"outputs": (0,)}, "1..128"),
        ({"inputs": (1, 1)}, "twice"),
        ({"sweeps": 0}, "sweeps"),
        ({"sweeps": 1000}, "at most"),
        ({"level_db": 3.0}, "level_db"),
        ({"level_db": math.nan}, "level_db"),
        ({"ir_s": 2.0, "gap_s": 1.0}, "must fit in the gap"),
        ({"noise_s": -1.0}, "noise_s"),
        ({"sweep_s": 500.0, "sweeps": 64}, "more than"),
        ({"save_to": "relative.npz"}, "absolute"),
        ({"f2_hz": 30000.0}, "Nyquist"),
    ],
)
def test_bad_plans(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"outputs": (1,), "inputs": (1,), **kwargs}
    with pytest.raises(SweepError, match=message):
        plan_measurement(FS, **args)  # type: ignore[arg-type]


def test_a_plan_pickles_small_and_times_add_up() -> None:
    plan = plan_measurement(FS, (1, 2, 3), (1, 2), sweeps=4, sweep_s=2.0, ir_s=1.5, noise_s=1.0)
    assert len(pickle.dumps(plan)) < 2000
    period = plan.sweep.frames + round(1.5 * FS)
    assert plan.total_frames == FS + 3 * 4 * period
    assert plan.sweep_start(2, 3) == FS + (2 * 4 + 3) * period
    x = plan.excitation()
    assert x.dtype == np.float32 and x.size == plan.total_frames
    assert not x[:FS].any()
