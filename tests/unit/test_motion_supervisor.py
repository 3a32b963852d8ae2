"""The safety supervisor's rules, in virtual time over an in-memory axis model (the logic only:
the same rules against the Modbus simulators are in tests/hil)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from controller.journal import JournalEvent, Origin, Result, SourceKind
from controller.motion.config import AxisLimits, MachineryConfig, UseCase
from controller.motion.supervisor import (
    AxisState,
    AxisStatus,
    MotionRefused,
    StopKind,
    Supervisor,
)

ALICE = Origin(SourceKind.USER, "alice")
BOB = Origin(SourceKind.USER, "bob")
HOIST = AxisLimits(soft_min=0, soft_max=10_000, speed=1000, acceleration=1000)


class Journal:
    def __init__(self) -> None:
        self.events: list[JournalEvent] = []

    async def append(self, event: JournalEvent) -> int:
        self.events.append(event)
        return len(self.events)

    def of(self, command: str) -> list[JournalEvent]:
        return [e for e in self.events if e.command == command]


class Axes:
    """Drives that run to their target at the streamed speed limit (``slow`` scales what they
    manage); stops halt them at once."""

    def __init__(self, positions: dict[str, float]) -> None:
        self.pos = dict(positions)
        self.target: dict[str, float] = {}
        self.load = dict.fromkeys(positions, 100.0)
        self.enabled = dict.fromkeys(positions, False)
        self.fault = dict.fromkeys(positions, 0)
        self.estop = dict.fromkeys(positions, False)
        self.stops: list[tuple[str, StopKind]] = []
        self.speed: dict[str, float] = {}
        self.slow = 1.0  # < 1: the drive falls behind (following error)

    def stream(self, axis: str, target: float, speed: float, acceleration: float) -> None:
        self.target[axis] = target
        self.speed[axis] = speed

    async def stop(self, axis: str, kind: StopKind) -> None:
        self.stops.append((axis, kind))
        self.target.pop(axis, None)
        if kind is StopKind.QUICK:
            self.enabled[axis] = False

    async def enable(self, axis: str) -> None:
        if self.fault[axis]:
            raise RuntimeError(f"{axis} is faulted")
        self.enabled[axis] = True

    def step(self, dt: float = 0.02) -> None:
        for a, t in self.target.items():
            if self.enabled[a] and not self.fault[a]:
                reach = self.speed[a] * self.slow * dt
                self.pos[a] += max(-reach, min(reach, t - self.pos[a]))

    def status(self, axis: str, now: float) -> AxisStatus:
        return AxisStatus(
            t=now,
            position=self.pos[axis],
            velocity=0.0,
            load=self.load[axis],
            enabled=self.enabled[axis],
            fault=self.fault[axis] != 0,
            estop=self.estop[axis],
            fault_code=self.fault[axis],
        )


class Rig:
    def __init__(
        self, config: MachineryConfig, limits: dict[str, AxisLimits], pos: dict[str, float]
    ):
        self.now = 1000.0
        self.axes = Axes(pos)
        self.journal = Journal()
        self.points: dict[tuple[str, str], Any] = {}
        self.sup = Supervisor(
            config,
            limits,
            self.axes,
            self.journal,
            points=lambda d, p: self.points.get((d, p)),
            clock=lambda: self.now,
            wall=lambda: 1.7e9 + self.now,
        )
        self.feed()

    def feed(self) -> None:
        for a in self.axes.pos:
            self.sup.status(a, self.axes.status(a, self.now))

    async def run(self, seconds: float, *, hold: bool = True, feed: bool = True) -> None:
        """Cycle for ``seconds`` of virtual time, keeping the enable held if ``hold``."""
        for _ in range(round(seconds * self.sup.config.cycle_hz)):
            if hold:
                self.sup.keep_enabled("desk", self.now)
            self.now += self.sup.period
            self.axes.step()
            if feed:
                self.feed()
            self.sup.tick(self.now)
            await asyncio.sleep(0)
        await asyncio.sleep(0)


def rig(**extra: Any) -> Rig:
    limits = {"hoist-1": HOIST, "hoist-2": HOIST}
    limits.update(extra.pop("limits", {}))
    pos = {"hoist-1": 1000.0, "hoist-2": 5000.0}
    pos.update(extra.pop("pos", {}))
    cfg = MachineryConfig.model_validate({"axes": {a: {} for a in limits}, **extra})
    return Rig(cfg, limits, pos)


@pytest.fixture
async def r() -> AsyncIterator[Rig]:
    x = rig()
    yield x
    await x.sup.close()


async def test_a_move_streams_its_plan_and_arrives(r: Rig) -> None:
    r.sup.keep_enabled("desk", r.now)
    move = await r.sup.move({"hoist-1": 3000, "hoist-2": 4000}, ALICE)
    assert r.sup.state("hoist-1") is AxisState.MOVING
    await r.run(move.plan.duration / 2)
    assert 1000 < r.axes.pos["hoist-1"] < 3000 and 4000 < r.axes.pos["hoist-2"] < 5000
    await r.run(move.plan.duration / 2 + 0.1)
    assert r.axes.pos == pytest.approx({"hoist-1": 3000, "hoist-2": 4000})
    assert move.state == "done" and move.done.is_set()
    assert r.sup.state("hoist-1") is AxisState.IDLE
    assert [e.result for e in r.journal.of("move")] == [Result.OK]
    done = r.journal.of("move.done")[0]
    assert done.targets == ("hoist-1", "hoist-2")
    # Each axis's worst following error, for the learning at the next start.
    errors = done.args["following_error"]
    assert set(errors) == {"hoist-1", "hoist-2"}
    assert all(0.0 <= e < HOIST.following_error for e in errors.values())


async def test_relative_moves_and_the_snapshot(r: Rig) -> None:
    r.sup.keep_enabled("desk", r.now)
    move = await r.sup.move({"hoist-1": -500}, ALICE, relative=True, speed=500)
    assert move.targets == {"hoist-1": 500.0}
    snap = r.sup.snapshot()
    assert snap["axes"]["hoist-1"]["state"] == "moving" and snap["moves"][0]["id"] == move.id
    await r.run(move.plan.duration + 0.1)
    assert r.axes.pos["hoist-1"] == pytest.approx(500)


@pytest.mark.parametrize(
    ("targets", "kwargs", "reason"),
    [
        ({"hoist-1": 10_500}, {}, "outside its soft limits 0 … 10000"),
        ({"hoist-1": -1}, {}, "outside its soft limits"),
        ({"hoist-1": math.nan}, {}, "must be a finite number"),
        ({"hoist-1": math.inf}, {}, "must be a finite number"),
        ({"hoist-1": "up"}, {}, "target must be a number"),
        ({"hoist-1": 2000}, {"speed": 1500}, "speed 1500 is above its limit 1000"),
        ({"hoist-1": 2000}, {"speed": math.nan}, "speed must be a finite number"),
        ({"hoist-1": 2000}, {"acceleration": 5000}, "acceleration 5000 is above its limit"),
        ({"ghost": 2000}, {}, "no axis 'ghost'"),
        ({}, {}, "at least one axis"),
    ],
)
async def test_bad_moves_are_refused_journalled_and_nothing_moves(
    r: Rig, targets: Any, kwargs: Any, reason: str
) -> None:
    r.sup.keep_enabled("desk", r.now)
    with pytest.raises(MotionRefused, match=reason):
        await r.sup.move(targets, ALICE, **kwargs)
    assert r.axes.target == {} and r.sup.moves == {}
    refused = r.journal.of("move")
    assert refused[-1].result is Result.REFUSED and reason.split(" ")[0] in refused[-1].reason


async def test_no_move_without_the_hold_to_run_enable(r: Rig) -> None:
    with pytest.raises(MotionRefused, match="no hold-to-run enable"):
        await r.sup.move({"hoist-1": 2000}, ALICE)


async def test_releasing_the_enable_stops_the_move(r: Rig) -> None:
    r.sup.keep_enabled("desk", r.now)
    move = await r.sup.move({"hoist-1": 5000}, ALICE)
    await r.run(1.0)
    at = r.axes.pos["hoist-1"]
    await r.run(0.6, hold=False)  # 0.5 s timeout
    assert move.state == "aborted" and "enable released" in move.reason
    assert ("hoist-1", StopKind.CONTROLLED) in r.axes.stops
    assert r.axes.pos["hoist-1"] < 5000 and r.axes.pos["hoist-1"] >= at
    assert any("enable released" in e.reason for e in r.journal.of("abort"))


async def test_estop_latches_stops_everything_and_needs_a_clear_reset(r: Rig) -> None:
    r.sup.keep_enabled("desk", r.now)
    await r.sup.move({"hoist-1": 5000, "hoist-2": 8000}, ALICE)
    await r.run(0.5)
    await r.sup.estop(BOB)
    assert {(a, k) for a, k in r.axes.stops} == {
        ("hoist-1", StopKind.QUICK),
        ("hoist-2", StopKind.QUICK),
    }
    assert r.sup.moves == {}
    with pytest.raises(MotionRefused, match="E-stop is latched"):
        await r.sup.move({"hoist-1": 2000}, ALICE)
    r.axes.estop["hoist-2"] = True  # a hard-wired e-stop input opens meanwhile
    r.feed()
    with pytest.raises(MotionRefused, match="E-stop inputs still active on hoist-2"):
        await r.sup.reset_estop(BOB)
    r.axes.estop["hoist-2"] = False
    r.feed()
    await r.sup.reset_estop(BOB)
    assert not r.sup.estop_latched
    assert [e.result for e in r.journal.of("estop.reset")] == [Result.REFUSED, Result.OK]


async def test_every_stop_frame_is_written_with_the_collector_paused(r: Rig) -> None:
    """The E-stop's one synchronous step (every axis's stop frame) is never held up by a
    cyclic collection; the collector is back as it was afterwards."""
    import gc

    seen: list[bool] = []

    def stop(axis: str, kind: StopKind) -> asyncio.Future[None]:  # writes in the call
        seen.append(gc.isenabled())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    r.axes.stop = stop  # type: ignore[method-assign,assignment]
    assert gc.isenabled()
    await r.sup.estop(BOB)
    assert seen == [False, False] and gc.isenabled()
    gc.disable()  # a caller that runs without the collector keeps it off
    try:
        await r.sup.estop(BOB)
        assert not gc.isenabled()
    finally:
        gc.enable()


async def test_an_estop_reset_needs_a_person_and_every_input_known_clear(r: Rig) -> None:
    await r.sup.estop(BOB)
    for kind in (SourceKind.FOLLOW, SourceKind.TIMECODE, SourceKind.SCRIPT, SourceKind.SYSTEM):
        with pytest.raises(MotionRefused, match="reset by an operator"):
            await r.sup.reset_estop(Origin(kind, "cue 12"))
    await r.run(1.0, feed=False)  # no statuses: every input is unknown now
    assert r.sup.state("hoist-1") is AxisState.OFFLINE
    with pytest.raises(MotionRefused, match=r"inputs unknown on hoist-1, hoist-2 \(offline\)"):
        await r.sup.reset_estop(BOB)
    assert r.sup.estop_latched
    r.feed()
    await r.sup.reset_estop(BOB)
    assert not r.sup.estop_latched
    results = [e.result for e in r.journal.of("estop.reset")]
    assert results == [Result.REFUSED] * 5 + [Result.OK]


async def test_a_drive_estop_input_latches_the_software_estop(r: Rig) -> None:
    r.sup.keep_enabled("desk", r.now)
    await r.sup.move({"hoist-1": 5000}, ALICE)
    await r.run(0.2)
    r.axes.estop["hoist-2"] = True
    await r.run(0.1)
    assert r.sup.estop_latched and "e-stop input of hoist-2" in r.sup.estop_reason
    assert ("hoist-1", StopKind.QUICK) in r.axes.stops


async def test_collision_between_two_flybars_is_refused_along_the_path() -> None:
    r = rig(zones=[{"name": "flys", "axes": ["hoist-1", "hoist-2"], "min_gap": 500}])
    r.sup.keep_enabled("desk", r.now)
    # hoist-1 (1 000) goes up to 6 000 past hoist-2 (5 000): the ends are 1 000 apart, the
    # path is not
    with pytest.raises(MotionRefused, match="collision zone 'flys'"):
        await r.sup.move({"hoist-1": 6000}, ALICE)
    await r.sup.move({"hoist-1": 4400}, ALICE)  # stops 600 below: fine
    r.sup.keep_enabled("desk", r.now)
    # hoist-2 coming down while hoist-1 goes up: checked against where hoist-1 will be
    with pytest.raises(MotionRefused, match="collision zone 'flys'"):
        await r.sup.move({"hoist-2": 4700}, BOB)
    await r.sup.close()


async def test_overload_slack_rope_and_following_error_abort() -> None:
    lim = AxisLimits(0, 10_000, 1000, 1000, max_load=400, min_load=20, following_error=50)
    r = rig(limits={"hoist-1": lim})
    r.sup.keep_enabled("desk", r.now)
    await r.sup.move({"hoist-1": 5000}, ALICE)
    await r.run(0.5)
    r.axes.load["hoist-1"] = 450
    await r.run(0.1)
    assert ("hoist-1", StopKind.QUICK) in r.axes.stops
    assert "overload 450 > 400" in r.sup.axes["hoist-1"].aborted
    r.axes.load["hoist-1"] = 100
    r.sup.axes["hoist-1"].stopping = False
    r.sup.keep_enabled("desk", r.now)
    await r.sup.move({"hoist-1": 2000}, ALICE)
    await r.run(0.3)
    r.axes.load["hoist-1"] = 5
    await r.run(0.1)
    assert "slack rope" in r.sup.axes["hoist-1"].aborted
    r.axes.load["hoist-1"] = 100
    r.sup.axes["hoist-1"].stopping = False
    r.sup.keep_enabled("desk", r.now)
    await r.sup.move({"hoist-1": 8000}, ALICE)
    r.axes.slow = 0.5  # the drive falls behind
    await r.run(1.0)
    assert "following error" in r.sup.axes["hoist-1"].aborted
    await r.sup.close()


async def test_stale_telemetry_stops_the_axis(r: Rig) -> None:
    r.sup.keep_enabled("desk", r.now)
    move = await r.sup.move({"hoist-1": 5000}, ALICE)
    await r.run(0.3)
    await r.run(0.2, feed=False)  # 10 cycles without a status: 5 is the limit
    assert move.state == "aborted" and "stale telemetry from hoist-1" in move.reason
    assert r.sup.state("hoist-1") is AxisState.OFFLINE
    with pytest.raises(MotionRefused, match="hoist-1 is offline"):
        await r.sup.move({"hoist-1": 2000}, ALICE)


def bad(r: Rig, axis: str, **flags: Any) -> None:
    """A status with no usable position (the read failed), with the flags given."""
    st = r.axes.status(axis, r.now)
    r.sup.status(axis, dataclasses.replace(st, position=None, velocity=None, good=False, **flags))


async def test_a_lost_read_is_no_status_and_stale_cycles_decide(r: Rig) -> None:
    """A bad status is as no status: the move goes on while the last good one is fresh, and
    stops as stale telemetry after ``stale_cycles``; flags it carries act at once."""
    r.sup.keep_enabled("desk", r.now)
    move = await r.sup.move({"hoist-1": 5000}, ALICE)
    await r.run(0.3)
    bad(r, "hoist-1")  # one read lost
    await r.run(0.3)
    assert move.state == "running" and r.sup.snapshot()["axes"]["hoist-1"]["bad_statuses"] == 1
    for _ in range(10):  # 10 cycles of failed reads: 5 is the limit
        r.now += r.sup.period
        bad(r, "hoist-1")
        r.sup.tick(r.now)
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert move.state == "aborted" and "stale telemetry from hoist-1" in move.reason
    assert r.sup.state("hoist-1") is AxisState.OFFLINE


async def test_a_bad_status_with_a_fault_or_estop_flag_acts_at_once(r: Rig) -> None:
    r.sup.keep_enabled("desk", r.now)
    move = await r.sup.move({"hoist-1": 5000}, ALICE)
    await r.run(0.3)
    bad(r, "hoist-1", fault=True, fault_code=4)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert move.state == "aborted" and "drive fault 4" in move.reason
    bad(r, "hoist-2", estop=True)
    await r.run(0.1)
    assert r.sup.estop_latched and "e-stop input of hoist-2" in r.sup.estop_reason


async def test_interlocks_block_and_stop() -> None:
    r = rig(
        interlocks=[
            {
                "name": "wagon parked",
                "axes": ["hoist-1"],
                "block_when": {"device": "wagon-1", "point": "docked", "equals": False},
            }
        ]
    )
    r.sup.keep_enabled("desk", r.now)
    with pytest.raises(MotionRefused, match=r"wagon-1\.docked is unknown"):
        await r.sup.move({"hoist-1": 2000}, ALICE)
    r.points[("wagon-1", "docked")] = False
    with pytest.raises(MotionRefused, match=r"interlock 'wagon parked': wagon-1\.docked = False"):
        await r.sup.move({"hoist-1": 2000}, ALICE)
    await r.sup.move({"hoist-2": 6000}, ALICE)  # not interlocked
    r.points[("wagon-1", "docked")] = True
    move = await r.sup.move({"hoist-1": 2000}, ALICE)
    await r.run(0.2)
    r.points[("wagon-1", "docked")] = False  # the wagon leaves its dock mid-move
    await r.run(0.1)
    assert move.state == "aborted" and "interlock" in move.reason
    await r.sup.close()


async def test_fault_groups_safe_and_locked() -> None:
    r = rig(
        limits={"hoist-3": HOIST},
        pos={"hoist-3": 8000.0},
        groups={"truss": {"mode": "locked"}, "flys": {"mode": "safe"}},
    )
    r.sup.axes["hoist-1"].limits = AxisLimits(0, 10_000, 1000, 1000, group="truss")
    r.sup.axes["hoist-2"].limits = AxisLimits(0, 10_000, 1000, 1000, group="truss")
    r.sup.axes["hoist-3"].limits = AxisLimits(0, 10_000, 1000, 1000, group="flys")
    r.sup.keep_enabled("desk", r.now)
    with pytest.raises(MotionRefused, match="group 'truss' is locked: move it whole"):
        await r.sup.move({"hoist-1": 2000}, ALICE)
    await r.sup.move({"hoist-1": 2000, "hoist-2": 6000}, ALICE)
    await r.sup.move({"hoist-3": 9000}, ALICE)
    await r.run(0.3)
    r.axes.fault["hoist-2"] = 2
    await r.run(0.1)
    stopped = {a for a, _ in r.axes.stops}
    assert stopped == {"hoist-1", "hoist-2"}  # the truss stops whole; hoist-3 runs on
    assert r.sup.state("hoist-2") is AxisState.FAULTED
    with pytest.raises(MotionRefused, match=r"hoist-2 is faulted \(fault code 2\)"):
        await r.sup.move({"hoist-1": 3000, "hoist-2": 3000}, ALICE)
    await r.sup.close()


async def test_performer_moves_need_a_second_person_and_a_lower_speed() -> None:
    perf = AxisLimits(0, 10_000, 1000, 1000, max_load=200, min_load=20, use_case=UseCase.PERFORMER)
    r = rig(limits={"hoist-1": perf}, confirm_timeout_s=5)
    r.sup.keep_enabled("desk", r.now)
    with pytest.raises(MotionRefused, match=r"speed 500 is above its limit 300 \(performer\)"):
        await r.sup.move({"hoist-1": 2000}, ALICE, speed=500)
    move = await r.sup.move({"hoist-1": 2000}, ALICE)
    assert move.state == "pending" and r.axes.target == {}
    with pytest.raises(MotionRefused, match="another operator than 'alice'"):
        await r.sup.confirm(move.id, ALICE)
    with pytest.raises(MotionRefused, match="a person confirms, not a cue or script"):
        await r.sup.confirm(move.id, Origin(SourceKind.SCRIPT, "token:cue-script"))
    await r.sup.confirm(move.id, BOB)
    assert move.state == "running" and move.confirmed_by == "bob"
    assert move.speeds["hoist-1"] == 300
    with pytest.raises(MotionRefused, match="no move 99 awaits confirmation"):
        await r.sup.confirm(99, BOB)
    await r.sup.close()


async def test_an_axis_in_a_move_refuses_a_second_one(r: Rig) -> None:
    r.sup.keep_enabled("desk", r.now)
    first = await r.sup.move({"hoist-1": 4000}, ALICE)
    with pytest.raises(MotionRefused, match=f"hoist-1 is already in move {first.id}"):
        await r.sup.move({"hoist-1": 2000}, BOB)
    await r.sup.stop(["hoist-1"], BOB)
    assert first.state == "aborted" and ("hoist-1", StopKind.CONTROLLED) in r.axes.stops


async def test_busy_until_the_move_settles_on_its_target(r: Rig) -> None:
    """``busy`` is what a new move would be refused for: a running move, until its plan is
    over and the axis is within the settling tolerance (then a new move supersedes it)."""
    r.sup.keep_enabled("desk", r.now)
    assert not r.sup.busy("hoist-1") and not r.sup.busy("no-such-axis")
    move = await r.sup.move({"hoist-1": 2000}, ALICE)
    assert r.sup.busy("hoist-1") and not r.sup.busy("hoist-2")
    await r.run(move.plan.duration * 0.9)
    assert r.sup.busy("hoist-1")
    await r.run(move.plan.duration * 0.1 + 0.2)
    assert not r.sup.busy("hoist-1")


async def test_position_triggers_fire_as_the_axis_passes(r: Rig) -> None:
    r.sup.keep_enabled("desk", r.now)
    move = await r.sup.move({"hoist-1": 5000}, ALICE)
    half = r.sup.trigger(move, "hoist-1", 3000)
    await r.run(move.plan.duration * 0.3)
    assert not half.is_set()
    await r.run(move.plan.duration * 0.5)
    assert half.is_set()
    with pytest.raises(MotionRefused, match="hoist-2 is not in move"):
        r.sup.trigger(move, "hoist-2", 1)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"axes": {"h": {"soft_min": 10, "soft_max": 5}}}, "soft_min 10 must be below soft_max 5"),
        ({"axes": {"h": {"use_case": "performer"}}}, "needs load monitoring"),
        ({"axes": {"h": {"use_case": "flying"}}}, "use_case"),
        ({"axes": {"h": {"max_speed": -1}}}, "max_speed"),
        ({"axes": {"h": {"max_speed": math.nan}}}, "max_speed"),
        ({"axes": {"h": {"spped": 1}}}, "spped"),
        ({"axes": {"h": {}}, "zones": [{"name": "z", "axes": ["h", "h"], "min_gap": 1}]}, "twice"),
        ({"axes": {"h": {"group": "g"}}}, "no group 'g'"),
        (
            {
                "axes": {"h": {}},
                "interlocks": [
                    {"name": "i", "axes": ["h"], "block_when": {"device": "d", "point": "p"}}
                ],
            },
            "needs 'equals', 'above' or 'below'",
        ),
        ({"cycle_hz": 0}, "cycle_hz"),
        ({"stop_category": 0}, "stop_category"),
    ],
)
def test_machinery_config_errors_are_precise(data: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        MachineryConfig.model_validate(data)


def test_limits_come_from_the_profiles_under_the_venue_settings() -> None:
    from controller.motion.config import resolve_limits
    from drivers.model import PROFILE_DIR, load_profile

    def prof(name: str) -> Any:
        return load_profile(PROFILE_DIR / f"{name}.toml")

    profiles = {"h1": prof("hoist"), "tt": prof("turntable"), "par": prof("led_par_rgbw")}
    cfg = MachineryConfig.model_validate(
        {"axes": {"h1": {"soft_min": 200, "soft_max": 11_000, "max_speed": 800, "max_jerk": 4000}}}
    )
    limits, problems = resolve_limits(cfg, profiles)
    assert problems == [] and set(limits) == {"h1", "tt"}
    h1 = limits["h1"]
    assert (h1.soft_min, h1.soft_max, h1.speed, h1.acceleration, h1.jerk) == (
        200,
        11_000,
        800,
        2000,
        4000,
    )
    assert limits["tt"].rotary and limits["tt"].jerk == math.inf
    bad = MachineryConfig.model_validate(
        {
            "axes": {
                "h1": {"soft_max": 12_500, "max_speed": 2000},
                "par": {},
                "ghost": {},
            }
        }
    )
    _, problems = resolve_limits(bad, profiles)
    assert "machinery.axes.par: 'led_par_rgbw' is not a machinery axis" in problems[0]
    assert "machinery.axes.ghost: no device 'ghost'" in problems[1]
    assert any("soft limits 0 … 12500 must lie inside the travel 0 … 12000" in p for p in problems)
    assert any("max_speed: 2000 is above the drive's 1500" in p for p in problems)
    refs = MachineryConfig.model_validate(
        {
            "zones": [{"name": "z", "axes": ["h1", "x"], "min_gap": 1}],
            "interlocks": [
                {
                    "name": "i",
                    "axes": ["par"],
                    "block_when": {"device": "tt", "point": "nope", "equals": 1},
                }
            ],
        }
    )
    _, problems = resolve_limits(refs, profiles)
    assert problems == [
        "machinery.zones.z: no axis 'x' on this venue",
        "machinery.interlocks.i: no axis 'par' on this venue",
        "machinery.interlocks.i.block_when: 'tt' has no point 'nope'",
    ]
