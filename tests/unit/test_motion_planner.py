"""Motion plans (Ruckig) and collision zones over planned trajectories."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.motion.planner import Kinematics, PlanError, State, plan_move, plan_stop
from controller.motion.zones import Track, Zone, check_zones

TRAP = Kinematics(speed=1000, acceleration=500)
SCURVE = Kinematics(speed=1000, acceleration=500, jerk=2000)


def test_a_trapezoidal_move_has_the_textbook_duration() -> None:
    plan = plan_move({"h": State(0)}, {"h": 3000}, {"h": TRAP})
    # 2 s up, 1 000 mm; 1 s at 1 000 mm/s for the middle 1 000 mm; 2 s down
    assert plan.duration == pytest.approx(5.0)
    p, v, _ = plan.at(2.5)
    assert p[0] == pytest.approx(1500) and v[0] == pytest.approx(1000)
    assert plan.at(99)[0][0] == pytest.approx(3000)
    assert plan.time_at("h", 1000) == pytest.approx(2.0)
    assert plan.time_at("h", 4000) is None
    assert plan.extrema("h") == pytest.approx((0, 3000))


def test_an_s_curve_is_slower_and_limits_jerk() -> None:
    trap = plan_move({"h": State(0)}, {"h": 3000}, {"h": TRAP})
    s = plan_move({"h": State(0)}, {"h": 3000}, {"h": SCURVE})
    assert s.duration > trap.duration
    dt = 0.001
    times = np.arange(0, s.duration, dt)
    acc = np.array([s.at(float(t))[2][0] for t in times])
    assert np.max(np.abs(np.diff(acc))) / dt <= 2000 * 1.01


def test_a_synchronized_move_arrives_together() -> None:
    states = {"a": State(0), "b": State(5000), "c": State(100)}
    targets = {"a": 6000, "b": 4000, "c": 100}
    limits = {k: TRAP for k in states}
    plan = plan_move(states, targets, limits)
    assert plan.duration == pytest.approx(max(plan.alone))
    assert plan.alone[1] < plan.duration  # b alone would be done sooner
    for axis, target in targets.items():
        assert plan.position(axis, plan.duration) == pytest.approx(target)
        assert plan.position(axis, plan.duration * 0.9) != pytest.approx(target) or axis == "c"
    free = plan_move(states, targets, limits, synchronized=False)
    assert free.position("b", free.alone[1]) == pytest.approx(4000)


def test_a_stop_from_speed_takes_the_braking_distance() -> None:
    plan = plan_stop({"h": State(1000, velocity=1000)}, {"h": TRAP})
    assert plan.duration == pytest.approx(2.0)
    assert plan.targets[0] == pytest.approx(2000)  # v²/2a = 1 000 mm further on


def test_retargeting_a_moving_axis_starts_from_its_state() -> None:
    plan = plan_move({"h": State(1000, velocity=-800)}, {"h": 2000}, {"h": TRAP})
    lo, hi = plan.extrema("h")
    assert lo == pytest.approx(1000 - 800**2 / 1000, abs=0.01) and hi == pytest.approx(2000)


@pytest.mark.parametrize(
    ("states", "targets", "limits", "match"),
    [
        ({"h": State(0)}, {"h": math.nan}, {"h": TRAP}, "target must be a finite number"),
        ({"h": State(0)}, {"h": math.inf}, {"h": TRAP}, "target must be a finite number"),
        ({"h": State(math.nan)}, {"h": 1}, {"h": TRAP}, "position must be a finite"),
        ({"h": State(0)}, {"h": 1}, {"h": Kinematics(0, 1)}, "speed must be"),
        ({"h": State(0)}, {"h": 1}, {"h": Kinematics(1, -1)}, "acceleration must be"),
        ({"h": State(0)}, {"h": 1}, {"h": Kinematics(1, 1, math.nan)}, "jerk must be"),
        ({}, {"h": 1}, {"h": TRAP}, "h: no present state"),
        ({"h": State(0)}, {"h": 1}, {}, "h: no limits"),
        ({"h": State(0)}, {}, {}, "at least one axis"),
        ({"h": State(0)}, {"h": True}, {"h": TRAP}, "target must be a finite number"),
    ],
)
def test_bad_moves_are_refused_with_the_reason(
    states: Any, targets: Any, limits: Any, match: str
) -> None:
    with pytest.raises(PlanError, match=match):
        plan_move(states, targets, limits)


@settings(max_examples=60, deadline=None)
@given(
    start=st.floats(-1e4, 1e4),
    target=st.floats(-1e4, 1e4),
    v0=st.floats(-900, 900),
    speed=st.floats(10, 2000),
    acc=st.floats(10, 3000),
    jerk=st.one_of(st.just(math.inf), st.floats(50, 1e5)),
)
def test_every_plan_lands_on_target_within_its_limits(
    start: float, target: float, v0: float, speed: float, acc: float, jerk: float
) -> None:
    lim = Kinematics(speed, acc, jerk)
    v0 = max(-speed, min(speed, v0))
    plan = plan_move({"h": State(start, velocity=v0)}, {"h": target}, {"h": lim})
    assert plan.position("h", plan.duration) == pytest.approx(target, abs=1e-6 * (1 + abs(target)))
    times = np.linspace(0, plan.duration, 200)
    v = np.array([plan.at(float(t))[1][0] for t in times])
    assert np.max(np.abs(v)) <= max(speed, abs(v0)) * (1 + 1e-6) + 1e-6


# --- zones ------------------------------------------------------------------------------------

ZONE = Zone("flys", ("bar-1", "bar-2"), min_gap=500)


def test_two_flybars_moving_toward_each_other_conflict_before_the_end() -> None:
    # bar-1 above bar-2: bar-1 comes down to 4 000, bar-2 goes up to 4 200: they would pass
    plan = plan_move(
        {"bar-1": State(8000), "bar-2": State(1000)},
        {"bar-1": 4000, "bar-2": 4200},
        {"bar-1": TRAP, "bar-2": TRAP},
    )
    tracks = {"bar-1": Track(8000, plan, 0.0), "bar-2": Track(1000, plan, 0.0)}
    c = check_zones([ZONE], tracks, now=0.0, moving=["bar-1", "bar-2"])
    assert c is not None and c.a == "bar-1" and c.b == "bar-2"
    assert 0 < c.at_s < plan.duration
    assert "collision zone 'flys'" in str(c) and "minimum 500" in str(c)
    # the same moves that stop 600 apart are fine
    ok = plan_move(
        {"bar-1": State(8000), "bar-2": State(1000)},
        {"bar-1": 4800, "bar-2": 4200},
        {"bar-1": TRAP, "bar-2": TRAP},
    )
    tracks = {"bar-1": Track(8000, ok, 0.0), "bar-2": Track(1000, ok, 0.0)}
    assert check_zones([ZONE], tracks, now=0.0) is None


def test_the_path_counts_not_only_the_end_points() -> None:
    # bar-2 overtakes bar-1 and the end points are 1 000 apart, on the other side
    plan = plan_move({"bar-2": State(1000)}, {"bar-2": 6000}, {"bar-2": TRAP})
    tracks = {"bar-1": Track(5000), "bar-2": Track(1000, plan, 10.0)}
    c = check_zones([ZONE], tracks, now=10.0, moving=["bar-2"])
    assert c is not None and c.at_s < plan.duration


def test_a_moving_target_is_checked_where_it_will_be() -> None:
    # bar-1 is already coming down on an earlier plan; bar-2's move would be fine against
    # bar-1's present position, but not against where bar-1 will be
    down = plan_move({"bar-1": State(9000)}, {"bar-1": 3000}, {"bar-1": TRAP})
    up = plan_move({"bar-2": State(500)}, {"bar-2": 2800}, {"bar-2": TRAP})
    tracks = {"bar-1": Track(9000, down, 0.0), "bar-2": Track(500, up, 1.0)}
    c = check_zones([ZONE], tracks, now=1.0, moving=["bar-2"])
    assert c is not None
    static = {"bar-1": Track(down.position("bar-1", 1.0)), "bar-2": Track(500, up, 1.0)}
    assert check_zones([ZONE], static, now=1.0, moving=["bar-2"]) is None


def test_offsets_and_groups() -> None:
    zone = Zone("border", ("a", "b", "c"), min_gap=100, offsets={"a": -1200})
    # a's border hangs 1 200 below it: a at 3 000 reaches down to 1 800; b at 1 750 is too close
    up = plan_move({"b": State(1600)}, {"b": 1750}, {"b": TRAP})
    tracks = {"a": Track(3000), "b": Track(1600, up, 0.0), "c": Track(9000)}
    c = check_zones([zone], tracks, now=0.0, moving=["b"])
    assert c is not None and (c.a, c.b) == ("a", "b") and c.separation == pytest.approx(100, abs=2)
    up = plan_move({"b": State(1600)}, {"b": 1690}, {"b": TRAP})
    tracks["b"] = Track(1600, up, 0.0)  # 110 apart at the end: fine; c is far from both
    assert check_zones([zone], tracks, now=0.0, moving=["b"]) is None


def test_a_pair_inside_its_gap_may_only_move_apart() -> None:
    apart = plan_move({"bar-1": State(4300)}, {"bar-1": 6000}, {"bar-1": TRAP})
    tracks = {"bar-1": Track(4300, apart, 0.0), "bar-2": Track(4000)}
    assert check_zones([ZONE], tracks, now=0.0) is None
    closer = plan_move({"bar-1": State(4300)}, {"bar-1": 4100}, {"bar-1": TRAP})
    tracks = {"bar-1": Track(4300, closer, 0.0), "bar-2": Track(4000)}
    assert check_zones([ZONE], tracks, now=0.0) is not None
