"""Learning what an axis has shown it can do, and warning about plans beyond it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.journal import Origin, SourceKind
from controller.motion.learning import MIN_SAMPLES, WINDOW, Learning, Window
from controller.motion.planner import Kinematics, State, plan_move
from tests.unit.test_motion_supervisor import rig


def statuses(accel: float, speed: float, distance: float, hz: float = 50.0):  # type: ignore[no-untyped-def]
    plan = plan_move({"h": State(0)}, {"h": distance}, {"h": Kinematics(speed, accel)})
    rng = np.random.default_rng(1)
    for t in np.arange(0, plan.duration + 1, 1 / hz):
        _, v, _ = plan.at(float(t))
        yield float(t), float(v[0]) + rng.normal(0, 2), 300.0 + rng.normal(0, 1)


def test_acceleration_speed_and_load_are_learnt_from_statuses() -> None:
    learn = Learning()
    for _ in range(3):
        learn.learn("h", statuses(accel=500, speed=1000, distance=5000))
    shown = learn.shown("h")
    assert shown["acceleration"] == pytest.approx(500, rel=0.2)
    assert shown["speed"] == pytest.approx(1000, rel=0.02)
    assert shown["load_moving"] == pytest.approx(302, abs=2)
    assert learn.warnings({"h": 1000}, {"h": 520}) == []
    warned = learn.warnings({"h": 1500}, {"h": 900})
    assert "h: speed 1500 is beyond the 100" in warned[0] and "acceleration 900" in warned[1]


def test_nothing_is_claimed_before_enough_samples() -> None:
    learn = Learning()
    for i in range(MIN_SAMPLES - 1):
        learn.observe("h", i * 0.02, 500.0 + i)
    assert learn.shown("h")["speed"] is None
    assert learn.shown("ghost") == dict.fromkeys(
        ("acceleration", "speed", "following_error", "load_moving", "load_static")
    )
    assert learn.warnings({"h": 9999}, {"h": 9999}) == []


def test_glitches_and_gaps_do_not_teach_it_to_fly() -> None:
    learn = Learning()
    t = 0.0
    for i in range(2000):
        t += 0.02
        v = 500.0 if i != 1000 else 50_000.0  # one glitched status
        learn.observe("h", t, v)
        if i == 1500:
            t += 30.0  # a gap: no derivative across it
            learn.observe("h", t, math.nan)
    shown = learn.shown("h")
    assert shown["acceleration"] is not None and shown["acceleration"] < 100


async def test_a_planned_move_beyond_what_was_shown_is_warned_not_refused() -> None:
    r = rig()
    r.sup.learning.learn("hoist-1", statuses(accel=300, speed=400, distance=3000))
    r.sup.keep_enabled("desk", r.now)
    move = await r.sup.move({"hoist-1": 4000}, Origin(SourceKind.USER, "op"))
    assert move.state == "running"
    assert any("hoist-1: speed 1000 is beyond" in w for w in move.warnings)
    assert r.journal.of("move")[0].args["warnings"] == move.warnings
    assert r.sup.snapshot()["moves"][0]["warnings"] == move.warnings
    await r.sup.close()


def test_move_maxima_from_the_journal_are_learnt_and_hostile_ones_ignored() -> None:
    learn = Learning()
    maxima: list[object] = [12.0 + (i % 5) for i in range(MIN_SAMPLES)]
    maxima += [math.nan, math.inf, True, "12", None, -3.0]
    learn.learn_moves("h", maxima)  # type: ignore[arg-type]
    figure = learn.shown("h")["following_error"]
    assert figure is not None and 12.0 <= figure <= 16.0
    assert learn.shown("h")["speed"] is None  # moves' maxima teach nothing else


def test_a_window_keeps_its_last_samples_in_a_fixed_array() -> None:
    w = Window(size=100)
    assert len(w) == 0 and w.values().size == 0
    for i in range(1000):
        w.append(float(i))
    assert len(w) == 100
    assert sorted(w.values()) == [float(i) for i in range(900, 1000)]
    assert w._buf is not None and w._buf.nbytes == 400  # however long the show runs


def test_a_resting_axis_costs_the_same_after_an_hour_of_statuses_as_after_its_window() -> None:
    learn = Learning()
    for i in range(2 * WINDOW):  # 50 Hz for 13 minutes, at rest under a constant load
        learn.observe("h", i / 50, 0.0, 1200.0 + (i % 7), following_error=0.5)
    rec = learn.axes["h"]
    assert len(rec.load_static) == len(rec.following_error) == WINDOW
    assert len(rec.speed) == len(rec.acceleration) == 0  # never moved: nothing allocated
    assert learn.shown("h")["load_static"] == pytest.approx(1206, abs=0.01)
