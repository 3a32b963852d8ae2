"""Property tests: fade curves and fade math, and hostile requests to the lighting engine."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.lighting import CURVES, LightingEngine, LightingError, Patch
from controller.lighting import curves as cv
from drivers.model import PROFILE_DIR, DmxTransport, load_profile

PAR = load_profile(PROFILE_DIR / "led_par_rgbw.toml")
HEAD = load_profile(PROFILE_DIR / "moving_head.toml")


def engine() -> LightingEngine:
    patch = Patch.build(
        [
            ("par", PAR, DmxTransport(kind="dmx", universe=1, address=1)),
            ("head", HEAD, DmxTransport(kind="dmx", universe=1, address=9)),
        ]
    )
    return LightingEngine(patch, clock=lambda: 0.0)


finite = st.floats(-1e3, 1e3, allow_nan=False)


@given(st.lists(st.floats(0, 1), min_size=2, max_size=50), st.sampled_from(sorted(CURVES)))
def test_curves_are_monotonic_and_pinned(ps: list[float], name: str) -> None:
    p = np.sort(np.array(ps))
    codes = np.full(p.size, CURVES[name], np.int8)
    y = cv.apply(p, codes)
    assert np.all(np.diff(y) >= -1e-12)
    assert np.all((y >= 0) & (y <= 1 + 1e-12))
    ends = cv.apply(np.array([0.0, 1.0]), codes[:2])
    assert ends[0] == 0 and abs(ends[1] - 1) < 1e-12


@given(finite, st.floats(0, 100), st.floats(-1e3, 1e3))
def test_progress_is_clipped_and_zero_duration_is_a_step(t0: float, dur: float, now: float) -> None:
    p = cv.progress(now, np.array([t0]), np.array([dur]))[0]
    assert 0.0 <= p <= 1.0
    if now >= t0 + dur:
        assert p == 1.0
    elif now <= t0:  # (a fade whose end is its start is done at its start)
        assert p == 0.0


@settings(max_examples=60, deadline=None)
@given(
    start=st.floats(0, 100),
    target=st.floats(0, 100),
    fade=st.floats(0, 30),
    delay=st.floats(0, 5),
    curve=st.sampled_from(sorted(CURVES)),
    at=st.lists(st.floats(-1, 40), min_size=1, max_size=8),
)
def test_a_fade_stays_between_start_and_target_and_lands(
    start: float, target: float, fade: float, delay: float, curve: str, at: list[float]
) -> None:
    e = engine()
    src = e.source("a")
    src.set(
        {"head": {"dimmer": start}},
    )
    src.fade({"head": {"dimmer": target}}, fade, delay_s=delay, curve=curve, now=0.0)
    i = e.patch.fixtures["head"].index("dimmer")
    lo, hi = sorted((start, target))
    previous = None
    for t in sorted(at):
        v = float(src.values(t)[i]) / 65535 * 100
        assert lo - 0.01 <= v <= hi + 0.01
        if previous is not None:  # monotonic towards the target
            assert (v - previous) * (target - start) >= -1e-6
        previous = v
    end = float(e.merged_at(delay + fade)[i]) / 65535 * 100
    assert abs(end - target) <= 0.01


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
names = st.sampled_from(["par", "head", "led_par", "moving_head", "ghost", ""]) | st.text(
    max_size=6
)
attrs = st.sampled_from(["intensity", "red", "pan", "dimmer", "strobe", "zzz"]) | st.text(
    max_size=6
)


@settings(max_examples=200, deadline=None)
@given(
    targets=st.dictionaries(names, st.dictionaries(attrs, json_like, max_size=3) | json_like),
    fade=json_like | st.floats(-10, 10),
)
def test_hostile_targets_raise_lighting_error_or_apply(targets: Any, fade: Any) -> None:
    e = engine()
    src = e.source("a")
    before = e.render(0.0).copy()
    try:
        src.fade(targets, fade, now=0.0)
    except LightingError:
        assert np.array_equal(e.render(0.0), before)  # a refused request changes nothing
        return
    e.render(100.0)
    assert math.isfinite(float(e.levels.sum()))


# Times on a 1 µs grid: the per-frame path lands a 0 s fade 1 ns before its start time (one
# subtraction per frame instead of a branch), so instants closer than that to a snap are not
# distinguished, far below any clock the engine runs on.
MICROSECONDS = st.integers(0, 12_000_000).map(lambda us: us / 1e6)


@settings(max_examples=60, deadline=None)
@given(
    fades=st.lists(
        st.tuples(
            st.sampled_from(["intensity", "red", "green", "strobe"]),
            st.floats(0, 100),
            st.integers(0, 5_000_000).map(lambda us: us / 1e6),  # fade
            st.integers(0, 2_000_000).map(lambda us: us / 1e6),  # delay
            st.sampled_from(sorted(CURVES)),
            st.integers(0, 3_000_000).map(lambda us: us / 1e6),  # when
        ),
        min_size=1,
        max_size=6,
    ),
    at=MICROSECONDS,
)
def test_the_per_frame_path_matches_the_reference_math(
    fades: list[tuple[str, float, float, float, str, float]], at: float
) -> None:
    """``values(now)`` (cached 1/duration, one curve plan) equals the plain formula."""
    e = engine()
    src = e.source("a")
    for attr, level, fade, delay, curve, when in fades:
        value: float | int = round(level * 2.55) if attr == "strobe" else level
        src.fade({"par": {attr: value}}, fade, delay_s=delay, curve=curve, now=when)
    idx = np.arange(e.patch.size)
    active = src.active
    fast = src.values(at)[active]
    reference = src.values(at, idx)[active]
    assert np.allclose(fast, reference, atol=1e-6 * 65535)
