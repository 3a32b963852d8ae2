"""Closed-loop adaptation (dsp/adapt.py) in a room from the acoustic simulator's model.

The hall is ``simulators.acoustics.room`` (pyroomacoustics, an independent model): a 20 x 14 x
8 m shoebox (T30 about 1.2 s), a stage source with a pickup microphone 0.5 m in front of it,
a listener 10 m away and four enhancement loudspeakers on the side walls. Its IRs are the
"measured paths"; the loop runs on the model of the combined response (room + engine +
feedback), which ``test_combined_response_matches_the_time_domain_loop`` checks against a
time-domain simulation of the same loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from functools import cache
from typing import Any

import numpy as np
import pytest
from scipy.signal import fftconvolve, lfilter  # type: ignore[import-untyped]

from dsp.adapt import (
    HELD,
    Adaptation,
    AdaptError,
    Measure,
    MeasuredPaths,
    adapt,
    check_drift,
    combined_response,
    engine_response,
    loop_gain_db,
    readapt,
    scaled,
)
from dsp.design import design
from dsp.field import FieldParams, LateParams
from dsp.layout import Layout, layout_from_dict
from dsp.presets import MODES
from simulators.acoustics.room import RoomModel, RoomState, compute_irs

FS = 24000
BANDS = (125, 250, 500, 1000, 2000, 4000)
SPEAKERS = ((8.0, 1.0, 5.0), (8.0, 13.0, 5.0), (15.0, 1.0, 5.0), (15.0, 13.0, 5.0))
LISTENER = (13.0, 7.6, 1.2)
HALL = RoomModel(
    samplerate=FS,
    ir_seconds=2.0,
    speakers=((3.0, 7.0, 1.5), *SPEAKERS),  # output 0: the stage source
    mics=((3.5, 7.0, 1.5), LISTENER),  # input 0: the pickup, 1: the listener
    dimensions=(20.0, 14.0, 8.0),
    surfaces={
        n: (0.22, 0.24, 0.25, 0.25, 0.26, 0.28)
        for n in ("west", "east", "south", "north", "ceiling", "floor")
    },
    audience_area_m2=150.0,
    max_order=3,
    rays=3000,
)


_PENDING_IRS: dict[float, Future[np.ndarray]] = {}
_PENDING_ADAPTATIONS: dict[str, Future[Adaptation]] = {}
IN_THE_BACKGROUND = ("chamber", "drama", "cinema")
"""Modes adapted in the worker process: the last ones the tests below reach in ``MODES``."""


@pytest.fixture(scope="module", autouse=True)
def second_core() -> Iterator[None]:
    """Work for the otherwise idle second core while the first tests run: a worker process
    computes the occupied hall's IRs (about 5 s of pyroomacoustics, which holds the GIL), then
    (with its own copy of the empty hall) the adaptations of ``IN_THE_BACKGROUND``, about 6 s
    each. ``hall_paths`` and ``adapted`` collect them. The results are the ones this process
    would compute: the room model and the measurement noise are seeded."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        _PENDING_IRS[1.0] = pool.submit(compute_irs, HALL, RoomState(occupancy=1.0))
        for name in IN_THE_BACKGROUND:
            _PENDING_ADAPTATIONS[name] = pool.submit(adapt_in_the_hall, name)
        try:
            yield
        finally:
            _PENDING_IRS.clear()
            _PENDING_ADAPTATIONS.clear()
            pool.shutdown(cancel_futures=True)


@cache
def hall_paths(occupancy: float) -> MeasuredPaths:
    pending = _PENDING_IRS.get(occupancy)
    if pending is not None:
        irs = pending.result()
    else:
        irs = compute_irs(HALL, RoomState(occupancy=occupancy))
    return MeasuredPaths.from_matrix(irs, FS, source=0, speakers=[1, 2, 3, 4], pickup=0, listener=1)


def hall_layout() -> Layout:
    return layout_from_dict(
        {
            "reference": list(LISTENER),
            "front_deg": 180,
            "speakers": [
                {"name": f"S{i}", "channel": i, "position": list(p)}
                for i, p in enumerate(SPEAKERS, 1)
            ],
        }
    )


def noisy(paths: MeasuredPaths, snr_db: float = 60.0, seed: int = 5) -> Measure:
    """A measurement of the closed loop: the combined response through ``paths`` with
    background noise ``snr_db`` below its peak (what a sweep measurement leaves)."""
    rng = np.random.default_rng(seed)

    def measure(params: FieldParams) -> np.ndarray:
        y = combined_response(paths, params).ir
        noise = rng.normal(size=y.size) * 10.0 ** (-snr_db / 20.0) * float(np.max(np.abs(y)))
        return np.asarray(y + noise, dtype=np.float64)

    return measure


def adapt_in_the_hall(name: str) -> Adaptation:
    return adapt(MODES[name], hall_layout(), hall_paths(0.0), measure=noisy(hall_paths(0.0)))


@cache
def adapted(name: str) -> Adaptation:
    pending = _PENDING_ADAPTATIONS.get(name)
    return pending.result() if pending is not None else adapt_in_the_hall(name)


# --- bad input -------------------------------------------------------------------------------


def tiny_paths(**change: object) -> MeasuredPaths:
    rng = np.random.default_rng(1)
    args: dict[str, object] = {
        "samplerate": FS,
        "source_listener": rng.normal(size=256),
        "source_pickup": rng.normal(size=256),
        "speaker_listener": rng.normal(size=(2, 256)),
        "speaker_pickup": rng.normal(size=(2, 256)),
    }
    args.update(change)
    return MeasuredPaths(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"samplerate": 100}, "samplerate"),
        ({"samplerate": 48000.5}, "samplerate"),
        ({"samplerate": True}, "samplerate"),
        ({"source_listener": np.zeros(256)}, "silent"),
        ({"source_pickup": np.full(256, np.nan)}, "NaN"),
        ({"source_listener": np.ones((2, 256))}, "1-D"),
        ({"speaker_listener": np.ones(256)}, "n_out"),
        ({"speaker_pickup": np.ones((3, 256))}, "3 loudspeaker"),
        ({"speaker_pickup": np.ones((2, 10))}, "too short"),
        ({"source_listener": "abc"}, "numeric"),
        ({"latency_s": -1.0}, "latency_s"),
        ({"latency_s": math.inf}, "latency_s"),
    ],
)
def test_bad_paths_get_a_clear_error(change: dict[str, object], message: str) -> None:
    with pytest.raises(AdaptError, match=message):
        tiny_paths(**change)


def test_from_matrix_checks_its_indices() -> None:
    irs = np.random.default_rng(0).normal(size=(2, 3, 128))
    with pytest.raises(AdaptError, match="pickup index 5"):
        MeasuredPaths.from_matrix(irs, FS, source=0, speakers=[1, 2], pickup=5, listener=1)
    with pytest.raises(AdaptError, match="speakers"):
        MeasuredPaths.from_matrix(irs, FS, source=0, speakers=[3], pickup=0, listener=1)
    with pytest.raises(AdaptError, match="inputs, outputs"):
        MeasuredPaths.from_matrix(irs[0], FS, source=0, speakers=[1], pickup=0, listener=1)


def test_adapt_refuses_bad_arguments() -> None:
    paths = tiny_paths()
    layout = hall_layout()  # four outputs, the paths have two
    with pytest.raises(AdaptError, match="4 outputs"):
        adapt(MODES["opera"], layout, paths)
    with pytest.raises(AdaptError, match="iterations"):
        adapt(MODES["opera"], layout, paths, iterations=0)
    with pytest.raises(AdaptError, match="loop_margin_db"):
        adapt(MODES["opera"], layout, paths, loop_margin_db=math.nan)


def decaying_paths() -> MeasuredPaths:
    """Exponentially decaying noise (T 0.8 s) for every path: a room without a simulator."""
    rng = np.random.default_rng(3)
    t = np.arange(FS) / FS
    env = 10.0 ** (-3.0 * t / 0.8)

    def ir(rows: int, delay: int, gain: float) -> np.ndarray:
        h = rng.normal(size=(rows, FS)) * env * gain
        h[:, :delay] = 0.0
        h[:, delay] = 10.0 * gain
        return h

    return MeasuredPaths(
        FS, ir(1, 700, 0.1)[0], ir(1, 40, 1.0)[0], ir(4, 300, 0.2), ir(4, 600, 0.05)
    )


def test_a_measure_that_returns_garbage_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    paths, layout = decaying_paths(), hall_layout()
    # The design before the first measurement is the same for every bad measure (same mode,
    # layout and paths; about 1 s each): computed once. What is checked is what adapt makes of
    # the measure's answer, after it.
    designs: list[Any] = []

    def design_once(*args: Any, **kwargs: Any) -> Any:
        if not designs:
            designs.append(design(*args, **kwargs))
        return designs[0]

    monkeypatch.setattr("dsp.adapt.design", design_once)
    for bad in (np.full(FS, np.nan), np.zeros(FS), np.ones((2, FS)), "x"):

        def measure(_: FieldParams, bad: object = bad) -> object:
            return bad

        with pytest.raises(AdaptError, match="measure"):
            adapt(MODES["opera"], layout, paths, iterations=1, measure=measure, refine_steps=0)


@cache
def opera_params() -> FieldParams:  # read-only: tests derive from it with dataclasses.replace
    return design(MODES["opera"], hall_layout(), {"t30_s": [1.2] * 6, "c80_db": [3.0] * 6}).params


# --- the combined response -------------------------------------------------------------------


def test_combined_response_matches_the_time_domain_loop() -> None:
    """The frequency-domain closed form against the loop run sample by sample (an IIR filter:
    every acoustic path has a delay, so the loop's IR starts after sample 0). The hall's paths
    are cut to 0.25 s and the late T60 to 0.3 s to keep the IIR filter small."""
    hall, n = hall_paths(0.0), 6000
    paths = MeasuredPaths(
        FS, hall.source_listener[:n], hall.source_pickup[:n], hall.speaker_listener[:, :n],
        hall.speaker_pickup[:, :n],
    )  # fmt: skip
    params = dataclasses.replace(opera_params(), late=LateParams(np.full(6, 0.3), delay_s=0.08))
    params = scaled(params, -10.0 - loop_gain_db(paths, params))  # stable: 10 dB margin
    got = combined_response(paths, params)
    assert abs(got.loop_gain_db + 10.0) < 0.1
    e = engine_response(params, paths)
    loop = sum(fftconvolve(paths.speaker_pickup[k], e[k]) for k in range(4))
    to_listener = sum(fftconvolve(paths.speaker_listener[k], e[k]) for k in range(4))
    assert abs(loop[0]) < 1e-12
    size = got.ir.size
    a = np.concatenate([[1.0], -loop[1:]])
    pickup = lfilter([1.0], a, np.concatenate([paths.source_pickup, np.zeros(size)]))[:size]
    y = np.zeros(size)
    y[:n] += paths.source_listener
    y += fftconvolve(to_listener, pickup)[:size]
    err = np.sqrt(np.sum((got.ir - y) ** 2) / np.sum(y**2))
    assert err < 1e-3


def test_without_the_field_the_listener_hears_the_room() -> None:
    paths = hall_paths(0.0)
    params = scaled(opera_params(), -200.0)
    got = combined_response(paths, params)
    n = paths.source_listener.size
    assert np.allclose(got.ir[:n], paths.source_listener, atol=1e-9)
    assert loop_gain_db(paths, params) < -150.0


# --- adaptation in the simulated hall ---------------------------------------------------------


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_converges_or_says_why_not(name: str) -> None:
    """Every mode: at most three measured iterations, every held metric within one JND of its
    target in the measured (noisy) response, and every other target reported with a reason."""
    a = adapted(name)
    assert 1 <= len(a.iterations) <= 3
    assert a.converged, a.reason
    assert a.best.worst_jnd(a.held) <= 1.0
    for k, bands in a.held.items():
        for b in bands:
            assert abs(a.best.error_jnd[k][BANDS.index(b)]) <= 1.0
    for u in a.unreachable:
        assert u.metric in HELD and u.band_hz not in a.held[u.metric]
        assert u.reason and math.isfinite(u.target)
    for it in a.iterations:  # the loop stays stable, with its margin
        assert it.loop_gain_db <= -6.0 + 0.2
    data = a.to_dict()
    assert data["mode"] == name and len(data["iterations"]) == len(a.iterations)
    assert set(data["before"]) == set(HELD) and set(data["after"]) == set(HELD)
    assert json.loads(json.dumps(data, allow_nan=False)) == data


def test_unreachable_targets_say_why() -> None:
    """The hall's natural T30 is about 1.2 s: cinema's 0.5 s is shorter (no active system can
    shorten a room), sacred's 2.8 s above twice it (the enhancement cap)."""
    cinema = adapted("cinema")
    short = [u for u in cinema.unreachable if u.metric == "t30_s"]
    assert {u.band_hz for u in short} == set(BANDS)
    assert all("shorter than the natural room" in u.reason for u in short)
    sacred = adapted("sacred")
    assert any(
        "above the enhancement cap" in u.reason for u in sacred.unreachable if u.metric == "t30_s"
    )
    # a reachable mode holds T30 in most bands
    assert len(adapted("opera").held["t30_s"]) >= 4


def test_without_measure_the_model_is_the_measurement() -> None:
    a = adapt(MODES["chamber"], hall_layout(), hall_paths(0.0))
    assert a.converged and len(a.iterations) == 1
    assert a.best.worst_jnd(a.held) <= 0.75 + 1e-6


@pytest.mark.skipif(
    not os.environ.get("FLYTOWER_KNOWN_LIMITS"),
    reason="a known limitation (non-strict xfail, about 10 s): run with FLYTOWER_KNOWN_LIMITS=1",
)
@pytest.mark.xfail(
    reason="an unmodelled 5 ms of I/O latency moves the regenerative loop's response by up to "
    "2 JNDs near the stability margin; output mapping does not bring it back in 3 iterations "
    "(give MeasuredPaths.latency_s the driver's reported latency)",
    strict=False,
)
def test_converges_despite_unmodelled_latency() -> None:
    truth = dataclasses.replace(hall_paths(0.0), latency_s=128 / FS)
    a = adapt(MODES["opera"], hall_layout(), hall_paths(0.0), measure=noisy(truth))
    assert a.converged, a.reason


def test_occupancy_drift_triggers_readaptation_which_brings_it_back() -> None:
    mode, layout = MODES["opera"], hall_layout()
    before = adapted("opera")
    full = hall_paths(1.0)
    # (the noise alone can ask for a readaptation: the audience must have changed the paths)
    assert not np.allclose(full.speaker_listener, hall_paths(0.0).speaker_listener, atol=1e-4)
    # the audience came in: the same parameters now sound different
    drift, after = readapt(before, mode, layout, full, measure=noisy(full, seed=6))
    assert drift.readapt and drift.worst_jnd > 0.5
    assert after is not before
    assert after.converged, after.reason
    # a repeat measurement of the unchanged room moves less than the audience did (at 60 dB
    # peak-to-noise the 125 Hz T30 alone wobbles by about a JND), and within a threshold
    # that ignores the noise it asks for nothing
    again = noisy(hall_paths(0.0), seed=7)(before.params)
    quiet = check_drift(before, mode, again, FS)
    assert quiet.worst_jnd < drift.worst_jnd
    assert not check_drift(before, mode, again, FS, threshold_jnd=quiet.worst_jnd + 0.01).readapt
