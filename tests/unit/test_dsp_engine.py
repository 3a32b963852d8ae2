"""The realtime sound-field engine (dsp/engine.py) and its late reverberator (dsp/late.py).

What is checked: the paths land where the parameters say (sample-exact direct and early taps,
the late onset and its latency report), the late field's level and per-band decay, block-size
independence of the render, zones and their outputs, glitch-free crossfades on a sine (with a
hard switch as the counter-example the bound must catch), no allocation in steady-state
``process`` calls (tracemalloc), the batched engine's slots (a network moved to its zone's slot
plays as a fresh one; ten zones switching at once; zones of different network sizes in separate
banks), and clear errors for bad configuration and control payloads.
No timing is asserted here (benchmarks/bench_acoustics_engine.py measures CPU share).
"""

from __future__ import annotations

import math
import pickle
import tracemalloc
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsp.engine import (
    BuiltSet,
    EngineConfig,
    FadeDone,
    FieldReady,
    SetField,
    SoundFieldEngine,
    SoundFieldFactory,
    ZoneConfig,
    build_set,
    predicted_late_energy,
    processing_block,
    render_ir,
)
from dsp.field import BANDS_HZ, EarlyPattern, FieldParams, LateParams
from dsp.late import BandSplitter, LateReverb, design_crossover, make_layout
from simulators.acoustics.truth import band_metrics

FS = 48000
T60 = np.array([2.0, 1.8, 1.6, 1.5, 1.3, 1.1])


@dataclass(frozen=True)
class Shape:
    samplerate: int = FS
    blocksize: int = 128
    n_in: int = 2
    n_out: int = 4


def field(
    n_out: int = 2,
    t60: Any = T60,
    early_db: float = 0.0,
    late_db: float = 0.0,
    late_delay_s: float = 0.05,
    direct: float = 0.5,
    taps: int = 6,
    seed: int = 1,
) -> FieldParams:
    rng = np.random.default_rng(seed)
    pattern = EarlyPattern(
        rng.uniform(0.004, 0.06, taps), rng.uniform(0.1, 0.4, taps), np.arange(taps) % n_out
    )
    return FieldParams(
        n_out, np.full(n_out, direct), pattern, LateParams(np.asarray(t60, float), late_delay_s),
        early_db=early_db, late_db=late_db,
    )  # fmt: skip


def engine(*zones: ZoneConfig, shape: Shape | None = None, **cfg: Any) -> SoundFieldEngine:
    return SoundFieldEngine(EngineConfig(zones, **cfg), shape or Shape())


def run(eng: SoundFieldEngine, x: np.ndarray) -> np.ndarray:
    """Feed ``x`` [frames, n_in] block by block; return the output [frames, n_out]."""
    b = eng.blocksize
    inp = np.zeros((b, eng.n_in), dtype=np.float32)
    out = np.zeros((b, eng.n_out), dtype=np.float32)
    y = np.zeros((len(x) // b * b, eng.n_out))
    for i in range(0, len(y), b):
        inp[:] = x[i : i + b]
        eng(inp, out)
        y[i : i + b] = out
    return y


# --- paths ------------------------------------------------------------------------------------


def test_direct_and_early_taps_are_sample_exact_with_no_added_latency() -> None:
    pattern = EarlyPattern(
        np.array([0.0, 0.01, 0.02]), np.array([0.3, -0.2, 0.25]), np.array([1, 0, 1])
    )
    p = FieldParams(2, np.array([0.5, 0.7]), pattern, LateParams(T60), direct_delay_s=0.001,
                    early_db=6.0)  # fmt: skip
    h = render_ir(p, FS, 0.1, paths=("direct", "early"))
    g = 10 ** (6 / 20)
    expected = np.zeros_like(h)
    expected[0, 48], expected[1, 48] = 0.5, 0.7
    expected[1, 0] += 0.3 * g
    expected[0, 480] += -0.2 * g
    expected[1, 960] += 0.25 * g
    np.testing.assert_allclose(h, expected, atol=1e-6)


def test_latency_report_and_late_onset() -> None:
    eng = engine(ZoneConfig("a", (0,), (0, 1)))
    eng.control(SetField("a", field(late_delay_s=0.0)))
    lat = eng.latency("a")
    assert lat is not None and lat.late_clamped
    assert lat.late_onset_samples == lat.late_min_samples
    assert lat.late_min_samples == lat.crossover_samples + make_layout(FS, 128, 2, 2).min_latency
    assert lat.late_min_samples / FS < 0.04, "the late path's minimum stays below 40 ms at 48 kHz"
    eng.control(SetField("a", field(late_delay_s=0.08)))
    lat = eng.latency("a")
    assert lat is not None and not lat.late_clamped and lat.late_onset_samples == 3840
    events = eng.poll_events()
    assert [type(e) for e in events] == [FieldReady, FieldReady]

    # the rendered late field starts where the report says: before the onset only the
    # crossover's pre-ringing (linear phase), far below the field's level
    h = render_ir(field(late_delay_s=0.08), FS, 1.0, paths=("late",))
    e = np.sum(h**2, axis=0)
    onset = 3840
    assert e[: onset - 1200].sum() < 1e-4 * e.sum()
    assert e[: onset + 2000].sum() > 0.01 * e.sum()


def test_late_level_matches_the_energy_convention() -> None:
    for n_out, t60 in ((2, T60), (8, [0.5, 0.8, 1.0, 1.2, 0.9, 0.4])):
        p = field(n_out=n_out, t60=t60, late_db=-3.0)
        h = render_ir(p, FS, 1.2 * max(t60) + 0.2, paths=("late",))
        total = float(np.sum(h**2))
        predicted = float(predicted_late_energy(p, FS).sum())
        assert abs(10 * math.log10(total / predicted)) < 0.1
        per_channel = np.sum(h**2, axis=1)
        assert np.all(np.abs(10 * np.log10(per_channel / (total / n_out))) < 0.5)


def test_each_band_decays_with_its_own_t60() -> None:
    h = render_ir(field(n_out=2), FS, 3.5, paths=("late",))
    for ch in range(2):
        t30 = np.array(band_metrics(h[ch], FS)["t30_s"], dtype=float)
        np.testing.assert_allclose(t30, T60, rtol=0.05)


def test_outputs_are_decorrelated() -> None:
    h = render_ir(field(n_out=4), FS, 2.0, paths=("late",))
    c = np.corrcoef(h)
    assert np.max(np.abs(c - np.eye(4))) < 0.1


def test_render_does_not_depend_on_the_block_size() -> None:
    p = field(n_out=2)
    ref = render_ir(p, FS, 0.6)
    for block in (64, 256, 1024):  # 1024: the engine works in 4 sub-blocks of 256
        np.testing.assert_allclose(render_ir(p, FS, 0.6, blocksize=block), ref, atol=2e-6)


def test_band_splitter_sums_to_a_delayed_impulse_in_power() -> None:
    filters = design_crossover(FS)
    power = np.abs(np.fft.rfft(filters, 1 << 15, axis=1)) ** 2
    f = np.fft.rfftfreq(1 << 15, 1 / FS)
    total_db = 10 * np.log10(power.sum(axis=0))
    # a dip below 1 dB around the lowest crossovers (the window is short for 177 Hz), none
    # to speak of above 600 Hz, and never a peak
    assert total_db[(f > 120) & (f < 600)].min() > -1.0
    assert total_db[(f > 600) & (f < 16000)].min() > -0.1
    assert total_db[f > 60].max() < 0.05
    # the block-wise splitter is the FIR filter
    split = BandSplitter(filters, 128)
    x = np.random.default_rng(3).standard_normal(128 * 40).astype(np.float32)
    out = np.zeros((6, 128), dtype=np.float32)
    y = np.zeros((6, len(x)))
    for i in range(0, len(x), 128):
        split.process(x[i : i + 128], out)
        y[:, i : i + 128] = out
    ref = np.stack([np.convolve(x, h)[: len(x)] for h in filters])
    np.testing.assert_allclose(y, ref, atol=2e-4)


# --- zones ------------------------------------------------------------------------------------


def test_zones_are_independent_and_shared_outputs_add() -> None:
    a = ZoneConfig("a", (0,), (0, 1), field(n_out=2, seed=1))
    b = ZoneConfig("b", (1,), (1, 2, 3), field(n_out=3, seed=2))
    x = np.zeros((128 * 60, 2), dtype=np.float32)
    x[0, 0], x[200, 1] = 1.0, 1.0
    both = run(engine(a, b), x)
    xa, xb = x.copy(), x.copy()
    xa[:, 1], xb[:, 0] = 0, 0
    only_a, only_b = run(engine(a, b), xa), run(engine(a, b), xb)
    np.testing.assert_allclose(both, only_a + only_b, atol=1e-6)
    # zone b's network idles at its anti-denormal bias (a DC far below -300 dB)
    assert np.abs(only_a[:, 2:]).max() < 1e-15, "zone a has no business on outputs 2 and 3"
    assert np.abs(only_b[:, 0]).max() < 1e-15


def test_inputs_are_averaged_into_the_zone_source() -> None:
    z = ZoneConfig("a", (0, 1), (0,), field(n_out=1, direct=1.0, taps=0))
    x = np.zeros((128, 2), dtype=np.float32)
    x[0] = (1.0, 0.5)
    y = run(engine(z, shape=Shape(n_out=1)), x)
    assert y[0, 0] == pytest.approx(0.75)


def test_ten_zones_on_one_engine() -> None:
    zones = tuple(
        ZoneConfig(f"z{i}", (i % 2,), (i % 8,), field(n_out=1, seed=i)) for i in range(10)
    )
    eng = engine(*zones, shape=Shape(n_out=8))
    x = np.random.default_rng(0).standard_normal((128 * 20, 2)).astype(np.float32) * 0.1
    y = run(eng, x)
    assert np.all(np.isfinite(y)) and np.all(np.abs(y).max(axis=0) > 0)


def test_factory_is_picklable_and_builds_an_engine() -> None:
    from drivers.audio.config import StreamFormat

    factory = SoundFieldFactory(EngineConfig((ZoneConfig("a", (0,), (0, 1), field()),)))
    again = pickle.loads(pickle.dumps(factory))
    eng = again(StreamFormat(FS, 128, 2, 2))
    assert isinstance(eng, SoundFieldEngine) and eng.block == 128


# --- crossfades -------------------------------------------------------------------------------


def sine(seconds: float, hz: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * FS)) / FS
    x = (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.stack([x, x], axis=1)


OLD = field(direct=0.5, t60=T60, late_db=0.0, seed=1)
NEW = field(direct=1.0, t60=T60 * 1.5, early_db=4.0, late_db=-2.0, seed=7)
SWITCH_BLOCK = 375  # 1 s in


def largest_step(y: np.ndarray) -> float:
    return float(np.abs(np.diff(y, axis=0)).max())


def steady_step(params: FieldParams) -> float:
    """The largest sample-to-sample step a field makes on the sine once it is settled."""
    eng = engine(ZoneConfig("a", (0,), (0, 1), params), shape=Shape(n_out=2))
    return largest_step(run(eng, sine(4.0))[FS // 2 :])


def switched(early_fade_s: float, late_fade_s: float) -> np.ndarray:
    """The output on the sine, switched from OLD to NEW after one second."""
    eng = engine(ZoneConfig("a", (0,), (0, 1), OLD), shape=Shape(n_out=2))
    x = sine(4.0)
    before = run(eng, x[: 128 * SWITCH_BLOCK])
    eng.control(SetField("a", NEW, early_fade_s=early_fade_s, late_fade_s=late_fade_s))
    return np.concatenate([before, run(eng, x[128 * SWITCH_BLOCK :])])


def test_crossfade_has_no_click_and_a_hard_switch_would() -> None:
    """A click is a sample-to-sample step beyond what either field makes by itself on the same
    sine: the bound is 10 % above the larger of the two settled fields' largest steps."""
    bound = 1.1 * max(steady_step(OLD), steady_step(NEW))
    y = switched(0.1, 1.5)
    assert np.all(np.isfinite(y))
    during = largest_step(y[128 * SWITCH_BLOCK - 200 :])
    assert during <= bound, (during, bound)
    hard = largest_step(switched(0.0, 0.0)[128 * SWITCH_BLOCK - 200 :])
    assert hard > 1.5 * bound, ("the test must be able to see a click", hard, bound)


def test_crossfade_completes_and_reports() -> None:
    eng = engine(ZoneConfig("a", (0,), (0, 1), field()), shape=Shape(n_out=2))
    eng.control(SetField("a", field(t60=T60 * 1.2), early_fade_s=0.05, late_fade_s=0.2))
    assert eng.fading("a")
    run(eng, sine(0.3))
    assert not eng.fading("a")
    events = eng.poll_events()
    assert [type(e) for e in events] == [FieldReady, FadeDone]
    assert events[1] == FadeDone("a")


def test_switch_requests_during_a_fade_take_the_newest() -> None:
    eng = engine(ZoneConfig("a", (0,), (0, 1), field()), shape=Shape(n_out=2))
    eng.control(SetField("a", field(direct=0.2), late_fade_s=0.1))
    run(eng, sine(0.02))
    eng.control(SetField("a", field(direct=0.3), late_fade_s=0.1))
    last = field(direct=0.9)
    eng.control(SetField("a", last, early_fade_s=0.01, late_fade_s=0.05))
    run(eng, sine(0.5))
    zone = eng.zones[0]
    assert zone.active is not None and zone.active.params is last and zone.incoming is None
    assert eng.poll_events().count(FadeDone("a")) == 1  # reported once per poll at most
    run(eng, sine(0.02))
    eng.poll_events()
    assert len(eng._alive) <= 1, "retired parameter sets are released by the control thread"


def test_a_zone_without_params_is_silent_then_fades_in() -> None:
    eng = engine(ZoneConfig("a", (0,), (0,)), shape=Shape(n_out=1))
    assert not run(eng, sine(0.1)).any()
    eng.control(SetField("a", field(n_out=1)))
    y = run(eng, sine(0.5))
    assert np.abs(y).max() > 0.1 and np.all(np.isfinite(y))


# --- realtime hygiene -------------------------------------------------------------------------


def allocations(eng: SoundFieldEngine, blocks: int) -> tuple[int, int]:
    """(bytes the second half of ``2 * blocks`` steady-state calls left allocated on top of
    the first half, peak transient bytes above the level before the calls), by tracemalloc."""
    inp = (np.random.default_rng(0).standard_normal((eng.blocksize, eng.n_in)) * 0.1).astype(
        np.float32
    )
    out = np.zeros((eng.blocksize, eng.n_out), dtype=np.float32)
    for _ in range(8):
        eng(inp, out)
    tracemalloc.start()
    try:
        # warm up under tracing: the engine's counters (Python ints) are replaced every block,
        # so they are counted the same before and after
        for _ in range(20):
            eng(inp, out)
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(blocks):
            eng(inp, out)
        middle, _ = tracemalloc.get_traced_memory()
        for _ in range(blocks):
            eng(inp, out)
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return end - middle, peak - start


def test_steady_state_process_allocates_nothing_that_stays() -> None:
    """What is verified: 300 more steady-state blocks (also during a crossfade) leave no more
    memory allocated than there was after the first 300 (nothing stays; at most 64 bytes, an
    int counter that grew a digit, whatever the number of blocks), and
    the transient peak is below 1 KiB: no array buffer is ever taken (one block of one float32
    channel alone is 512 bytes, and a block touches dozens of arrays); what remains are
    CPython's small call objects (argument tuples, ints) from its own pools."""
    zones = (
        ZoneConfig("a", (0,), (0, 1, 2, 3), field(n_out=4)),
        ZoneConfig("b", (1,), (2, 3), field(n_out=2, seed=3)),
    )
    eng = engine(*zones, shape=Shape(n_out=4))
    kept, peak = allocations(eng, 300)
    assert kept <= 64 and peak < 1024, (kept, peak)
    eng.control(SetField("a", field(n_out=4, t60=T60 * 1.3), late_fade_s=3.0))
    kept, peak = allocations(eng, 250)  # the fade (3 s = 1125 blocks) runs through these
    assert eng.fading("a")
    assert kept <= 64 and peak < 1024, (kept, peak)


def test_sub_blocks_allocate_nothing_after_the_first_call() -> None:
    eng = engine(ZoneConfig("a", (0,), (0, 1), field()), shape=Shape(blocksize=512, n_out=2))
    assert eng.block == 256
    kept, peak = allocations(eng, 50)
    assert kept <= 64 and peak < 1024, (kept, peak)


def test_a_silent_network_never_decays_into_subnormal_floats() -> None:
    p = field(n_out=2, t60=[0.1] * 6)
    eng = engine(ZoneConfig("a", (0,), (0, 1), p), shape=Shape(n_out=2))
    x = np.zeros((FS * 3, 2), dtype=np.float32)
    x[0, 0] = 1.0
    run(eng, x)
    buf = eng.groups[0].bank.buf[0]  # the zone's slot: its lines, input and bias rows
    tiny = (buf != 0) & (np.abs(buf) < np.finfo(np.float32).tiny)
    assert not tiny.any()


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "error", "message"),
    [
        ("go", TypeError, "takes SetField"),
        (SetField("nowhere", field()), KeyError, "no zone 'nowhere'"),
        (SetField("a", field(n_out=3)), ValueError, "params have 3 outputs"),
        (SetField("a", field(t60=[40.0] * 6)), ValueError, "T60 must be in"),
        (SetField("a", field(late_delay_s=2.0)), ValueError, "late.delay_s must be within"),
        (SetField("a", field(direct=100.0)), ValueError, "gains must be finite and within"),
        (SetField("a", field(late_db=40.0)), ValueError, "late_db must be <="),
        (SetField("a", field(), late_fade_s=-1.0), ValueError, "fade times"),
        (SetField("a", field(), early_fade_s=math.nan), ValueError, "fade times"),
        (SetField("a", "loud"), TypeError, "FieldParams"),  # type: ignore[arg-type]
    ],
)
def test_bad_control_payloads_are_refused_and_the_engine_plays_on(
    payload: Any, error: type[Exception], message: str
) -> None:
    eng = engine(ZoneConfig("a", (0,), (0, 1), field()), shape=Shape(n_out=2))
    with pytest.raises(error, match=message):
        eng.control(payload)
    y = run(eng, sine(0.05))
    assert np.all(np.isfinite(y)) and np.abs(y).max() > 0


# --- sets built elsewhere (the service's design process) -----------------------------------


def two_zones() -> EngineConfig:
    return EngineConfig(
        (ZoneConfig("a", (0,), (0, 1), field()), ZoneConfig("b", (1,), (2, 3), field(seed=2)))
    )


def test_a_set_built_in_another_process_plays_exactly_as_one_built_in_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``build_set`` (pickled, as it crosses from the design process) and the engine's own
    build give the same output sample for sample; the host builds no late network for it."""
    cfg, new = two_zones(), field(t60=T60 * 1.3, seed=5, late_db=-3.0)
    x = np.random.default_rng(0).standard_normal((FS // 2, 2)).astype(np.float32) * 0.1
    host = SoundFieldEngine(cfg, Shape())
    elsewhere = SoundFieldEngine(cfg, Shape())
    built = pickle.loads(pickle.dumps(SetField.of(build_set(cfg, Shape(), "b", new), 0.05, 0.2)))
    assert built.built is not None and built.params is built.built.params
    run(host, x[:1280])
    run(elsewhere, x[:1280])
    host.control(SetField("b", new, 0.05, 0.2))

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the audio host built a late network")

    monkeypatch.setattr(LateReverb, "__init__", no_network)
    elsewhere.control(built)
    assert [type(e) for e in elsewhere.poll_events()] == [FieldReady]
    a, b = run(host, x[1280:]), run(elsewhere, x[1280:])
    np.testing.assert_array_equal(a, b)
    assert not elsewhere.fading("b") and elsewhere.zones[1].active is not None
    assert elsewhere.zones[1].active.params is built.params


def corrupt(built: BuiltSet, **change: Any) -> SetField:
    late = pickle.loads(pickle.dumps(built.late))
    for name in ("m", "c"):
        if name in change:
            setattr(late, name, change.pop(name))
    b = BuiltSet(**{**built.__dict__, "late": late, **change})
    return SetField("a", b.params, built=b)


def bad_built() -> list[Any]:
    cfg = two_zones()
    good = build_set(cfg, Shape(), "a", field(seed=4))
    other = build_set(cfg, Shape(), "b", field(seed=4))
    g, d = good.gains, good.delays
    return [
        (SetField("a", field(), built=good), "other params"),  # params not the built ones
        (SetField("a", other.params, built=other), "built for zone 'b'"),
        (SetField.of(build_set(cfg, Shape(blocksize=64), "a", field(seed=4))), "geometry"),
        (corrupt(good, gains=g.astype(np.float64)), "wrong shape"),
        (corrupt(good, gains=g[:, :2].copy()), "wrong shape"),
        (corrupt(good, gains=np.where(g != 0, np.nan, g).astype(np.float32)), "non-finite"),
        (corrupt(good, m=good.late.m * np.float32(np.inf)), "non-finite"),
        (corrupt(good, c=good.late.c[:-1]), "wrong shape"),
        (corrupt(good, delays=d[::-1].copy()), "ascending"),
        (corrupt(good, delays=d + 10 * FS), "ascending within"),
        (corrupt(good, delays=d - 10 * FS), "ascending within"),
        (corrupt(good, late="late"), "LateReverb"),
        (SetField("a", good.params, built="built"), "must be a BuiltSet"),  # type: ignore[arg-type]
    ]


@pytest.mark.parametrize(("payload", "message"), bad_built())
def test_bad_built_sets_are_refused_and_the_zone_plays_on(payload: Any, message: str) -> None:
    eng = SoundFieldEngine(two_zones(), Shape())
    playing = eng.zones[0].active
    with pytest.raises((ValueError, TypeError), match=message):
        eng.control(payload)
    assert eng.zones[0].request is playing and not eng.fading("a")
    y = run(eng, np.random.default_rng(1).standard_normal((FS // 20, 2)).astype(np.float32))
    assert np.all(np.isfinite(y)) and np.abs(y).max() > 0


def test_build_set_refuses_what_the_engine_refuses() -> None:
    cfg = two_zones()
    with pytest.raises(KeyError, match="no zone 'c'"):
        build_set(cfg, Shape(), "c", field())
    with pytest.raises(ValueError, match="params have 3 outputs"):
        build_set(cfg, Shape(), "a", field(n_out=3))
    with pytest.raises(ValueError, match="T60 must be in"):
        build_set(cfg, Shape(), "a", field(t60=[40.0] * 6))
    with pytest.raises(ValueError, match=r"output 3 >= 2"):
        build_set(cfg, Shape(n_out=2), "b", field())


def test_far_early_taps_are_refused() -> None:
    far = EarlyPattern(np.array([0.9]), np.array([0.1]), np.array([0]))
    p = FieldParams(2, np.ones(2), far, LateParams(T60))
    with pytest.raises(ValueError, match="max_early_delay_s"):
        engine(ZoneConfig("a", (0,), (0, 1), p))


@pytest.mark.parametrize(
    ("zones", "shape", "message"),
    [
        ((ZoneConfig("a", (5,), (0,)),), Shape(), "input 5 >= 2"),
        ((ZoneConfig("a", (0,), (9,)),), Shape(), "output 9 >= 4"),
        ((ZoneConfig("a", (0,), (0,)), ZoneConfig("a", (1,), (1,))), Shape(), "unique"),
        ((ZoneConfig("a", (0,), (0,)),), Shape(blocksize=8), "at least 16"),
        ((ZoneConfig("a", (0,), (0,)),), Shape(blocksize=4099), "no divisor"),
    ],
)
def test_bad_configurations_are_refused(
    zones: tuple[ZoneConfig, ...], shape: Shape, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SoundFieldEngine(EngineConfig(zones), shape)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ZoneConfig("", (0,), (0,)), "needs a name"),
        (lambda: ZoneConfig("a", (), (0,)), "at least one input"),
        (lambda: ZoneConfig("a", (0,), (1, 1)), "named twice"),
        (lambda: ZoneConfig("a", (-1,), (0,)), ">= 0"),
        (lambda: ZoneConfig("a", (0,), (0,), field(n_out=2)), "params have 2 outputs"),
        (lambda: EngineConfig(()), "at least one zone"),
        (lambda: EngineConfig((ZoneConfig("a", (0,), (0,)),), late_fade_s=-1), "late_fade_s"),
        (lambda: EngineConfig((ZoneConfig("a", (0,), (0,)),), max_late_delay_s=0), "max_late"),
    ],
)
def test_bad_zone_and_engine_configs(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_render_ir_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown paths"):
        render_ir(field(), FS, 0.1, paths=("reverb",))
    with pytest.raises(ValueError, match="seconds"):
        render_ir(field(), FS, math.inf)
    with pytest.raises(ValueError, match="too low"):
        render_ir(field(), 8000, 0.1)
    with pytest.raises(ValueError, match="blocks of"):
        LateReverb(make_layout(FS, 512, 2, 2), T60, (0, 1), np.ones(6), 0, 1.0)


def test_processing_block() -> None:
    assert [processing_block(b) for b in (16, 128, 256, 512, 1000, 8192)] == [
        16, 128, 256, 256, 250, 256,
    ]  # fmt: skip


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    t60=st.lists(st.floats(0.05, 3.0), min_size=len(BANDS_HZ), max_size=len(BANDS_HZ)),
    taps=st.lists(
        st.tuples(st.floats(0.0, 0.5), st.floats(-16, 16), st.integers(0, 2)), max_size=12
    ),
    direct=st.lists(st.floats(-16, 16), min_size=3, max_size=3),
    levels=st.tuples(st.floats(-60, 24), st.floats(-60, 24)),
    late_delay=st.floats(0.0, 0.5),
)
def test_any_valid_field_renders_finite(
    t60: list[float],
    taps: list[tuple[float, float, int]],
    direct: list[float],
    levels: tuple[float, float],
    late_delay: float,
) -> None:
    pattern = EarlyPattern(
        np.array([t[0] for t in taps]),
        np.array([t[1] for t in taps]),
        np.array([t[2] for t in taps], dtype=np.int64),
    )
    p = FieldParams(3, np.array(direct), pattern, LateParams(np.array(t60), late_delay),
                    early_db=levels[0], late_db=levels[1])  # fmt: skip
    eng = engine(ZoneConfig("a", (0,), (0, 1, 2)), shape=Shape(n_out=3))
    eng.control(SetField("a", p, late_fade_s=0.01))
    x = np.zeros((128 * 8, 2), dtype=np.float32)
    x[::97, 0] = 1.0
    y = run(eng, x)
    assert np.all(np.isfinite(y))


# --- batching: slots, groups, simultaneous switches -------------------------------------------


def test_a_network_moved_to_its_zones_slot_plays_as_a_fresh_one() -> None:
    """A set that faded in (in a secondary slot of the late bank) and moved to its zone's slot
    responds to an impulse as ``render_ir`` of the same parameters does."""
    p = field(n_out=2, seed=4)
    eng = engine(ZoneConfig("a", (0,), (0, 1)), shape=Shape(n_out=2))
    eng.control(SetField("a", p, early_fade_s=0.0, late_fade_s=0.0))
    silence = np.zeros((128 * 4, 2), dtype=np.float32)
    run(eng, silence)
    assert not eng.fading("a") and eng.groups[0].bank.live == 1, "moved, secondary freed"
    x = np.zeros((FS, 2), dtype=np.float32)
    x[0, 0] = 1.0
    y = run(eng, x)
    ref = render_ir(p, FS, len(y) / FS).T
    np.testing.assert_allclose(y, ref, atol=2e-6)


def test_ten_zones_switching_at_once_all_fade_and_report() -> None:
    """Every zone switches in the same block: the sets start one per block (each clears a
    late slot), all fade, all end, each reported once; the output stays finite."""
    zones = tuple(ZoneConfig(f"z{i}", (i % 2,), (0, 1), field(n_out=2, seed=i)) for i in range(10))
    eng = engine(*zones, shape=Shape(n_out=2))
    run(eng, sine(0.05))
    for i in range(10):
        eng.control(SetField(f"z{i}", field(n_out=2, seed=20 + i), late_fade_s=0.1))
    y = run(eng, sine(0.5))
    assert np.all(np.isfinite(y)) and np.abs(y).max() > 0.1
    assert not any(eng.fading(f"z{i}") for i in range(10))
    done = [e for e in eng.poll_events() if isinstance(e, FadeDone)]
    assert sorted(e.zone for e in done) == sorted(f"z{i}" for i in range(10))
    assert eng.groups[0].bank.live == 10, "every secondary slot is free again"


def test_zones_of_different_network_sizes_run_in_separate_banks() -> None:
    """A zone of 10 outputs (16 lines per band) and one of 2 (8 lines): two banks; each zone
    still plays alone what it plays together."""
    a = ZoneConfig("wide", (0,), tuple(range(10)), field(n_out=10, seed=1))
    b = ZoneConfig("narrow", (1,), (10, 11), field(n_out=2, seed=2))
    shape = Shape(n_out=12)
    both = engine(a, b, shape=shape)
    assert sorted(g.layout.lines for g in both.groups) == [8, 16]
    x = np.zeros((128 * 40, 2), dtype=np.float32)
    x[0, 0], x[300, 1] = 1.0, 1.0
    xa, xb = x.copy(), x.copy()
    xa[:, 1], xb[:, 0] = 0, 0
    np.testing.assert_allclose(
        run(both, x),
        run(engine(a, b, shape=shape), xa) + run(engine(a, b, shape=shape), xb),
        atol=1e-6,
    )
