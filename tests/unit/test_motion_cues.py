"""Cues through the safety supervisor: the playback engine's machinery actions as supervised
moves (refusals and aborts fail the action with the reason; panic quick-stops every axis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controller.journal import Origin, Result, SourceKind
from controller.motion.config import AxisLimits, MachineryConfig
from controller.motion.cues import SupervisedMachinery
from controller.motion.supervisor import StopKind, Supervisor
from controller.playback import Playback, PointValue, VirtualClock
from controller.show import loads_show
from tests.unit.test_motion_supervisor import Axes, Journal

USER = Origin(SourceKind.USER, "op")
SHOW = """
version = 1
[show]
title = "t"
[[lists]]
id = "main"
go_debounce_s = 0
[[lists.cues]]
number = 1
actions = [{ kind = "machinery.move", axes = [
  { device = "hoist-1", position = 3000, speed = 800 },
  { device = "hoist-2", position = 2000 },
] }]
[[lists.cues]]
number = 2
actions = [{ kind = "machinery.move", axes = [{ device = "hoist-1", position = 1000 }] }]
"""


class Devices:
    """Positions come from the simulated axes; wait_for polls them."""

    def __init__(self, axes: Axes) -> None:
        self.axes = axes
        self.changed = asyncio.Event()

    def moved(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def execute(self, *a: Any) -> Any:
        raise AssertionError("a supervised move never reaches the device directly")

    async def write(self, *a: Any) -> Any:
        raise AssertionError

    def read(self, device: str, point: str) -> PointValue | None:
        return PointValue(self.axes.pos[device], "good") if point == "position" else None

    async def wait_for(self, device: str, point: str, condition: Any) -> PointValue:
        while not condition(self.axes.pos[device]):
            await self.changed.wait()
        return PointValue(self.axes.pos[device], "good")


class Rig:
    def __init__(self) -> None:
        self.clock = VirtualClock()
        self.axes = Axes({"hoist-1": 1000.0, "hoist-2": 5000.0})
        self.journal = Journal()
        lim = AxisLimits(0, 10_000, 1000, 1000, max_load=400)
        self.sup = Supervisor(
            MachineryConfig.model_validate({"axes": {"hoist-1": {}, "hoist-2": {}}}),
            {"hoist-1": lim, "hoist-2": lim},
            self.axes,
            self.journal,
            clock=self.clock.now,
        )
        self.devices = Devices(self.axes)
        self.pb = Playback(
            loads_show(SHOW),
            lighting=None,
            devices=self.devices,
            machinery=SupervisedMachinery(self.sup, self.devices),
            journal=self.journal,
            clock=self.clock,
        )
        self.feed()

    def feed(self) -> None:
        for a in self.axes.pos:
            self.sup.status(a, self.axes.status(a, self.clock.now()))

    async def run(self, seconds: float, hold: bool = True) -> None:
        for _ in range(round(seconds * 50)):
            if hold:
                self.sup.keep_enabled("desk")
            await self.clock.advance(0.02)
            self.axes.step()
            self.devices.moved()
            self.feed()
            self.sup.tick(self.clock.now())
            for _ in range(5):
                await asyncio.sleep(0)

    def running(self) -> list[Any]:
        return list(self.pb.snapshot()["lists"][0]["running"])

    async def close(self) -> None:
        await self.pb.close()
        await self.sup.close()


@pytest.fixture
async def rig() -> Any:
    r = Rig()
    yield r
    await r.close()


async def test_a_cue_moves_its_axes_as_one_synchronised_move(rig: Rig) -> None:
    rig.sup.keep_enabled("desk")
    await rig.pb.go(origin=USER)
    await rig.run(0.1)
    (move,) = rig.sup.moves.values()
    assert set(move.axes) == {"hoist-1", "hoist-2"} and move.speeds["hoist-1"] == 800
    await rig.run(move.plan.duration + 0.5)
    assert rig.axes.pos == pytest.approx({"hoist-1": 3000, "hoist-2": 2000})
    assert rig.running() == []
    assert not [e for e in rig.journal.events if e.result is not Result.OK]


async def test_without_the_enable_the_cue_fails_with_the_reason(rig: Rig) -> None:
    await rig.pb.go(origin=USER)
    await rig.run(0.1, hold=False)
    failed = [e for e in rig.journal.events if e.command == "action.machinery.move"]
    assert failed and "no hold-to-run enable" in failed[0].reason
    assert rig.axes.target == {}


async def test_an_abort_mid_move_fails_the_action(rig: Rig) -> None:
    rig.sup.keep_enabled("desk")
    await rig.pb.go(origin=USER)
    await rig.run(0.5)
    rig.axes.load["hoist-2"] = 500
    await rig.run(0.2)
    failed = [e for e in rig.journal.events if e.command == "action.machinery.move"]
    assert failed and "overload 500 > 400" in failed[0].reason
    assert rig.running() == []


async def test_pause_and_resume_restart_the_supervised_move(rig: Rig) -> None:
    rig.sup.keep_enabled("desk")
    await rig.pb.go(origin=USER)
    await rig.run(0.5)
    await rig.pb.pause(origin=USER)
    await rig.run(0.2)
    assert rig.sup.moves == {} and rig.running()  # stopped, the action still waits
    at = dict(rig.axes.pos)
    await rig.run(1.0)
    assert rig.axes.pos == at
    await rig.pb.resume(origin=USER)
    await rig.run(8)
    assert rig.axes.pos == pytest.approx({"hoist-1": 3000, "hoist-2": 2000})
    assert rig.running() == []
    assert not [e for e in rig.journal.events if e.command == "action.machinery.move"]


async def test_panic_quick_stops_every_axis(rig: Rig) -> None:
    rig.sup.keep_enabled("desk")
    await rig.pb.go(origin=USER)
    await rig.run(0.3)
    await rig.pb.panic(origin=USER)
    assert {("hoist-1", StopKind.QUICK), ("hoist-2", StopKind.QUICK)} <= set(rig.axes.stops)
    assert rig.sup.moves == {}


WAIT_SHOW = """
version = 1
[show]
title = "t"
[[lists]]
id = "main"
go_debounce_s = 0
[[lists.cues]]
number = 1
actions = [
  { kind = "machinery.move", axes = [{ device = "hoist-1", position = 3000 }] },
  { kind = "wait.position", device = "hoist-1", position = 2000, tolerance = 20, timeout_s = 30 },
]
"""


def states(rig: Rig) -> dict[str, str]:
    return {a["kind"]: a["state"] for cue in rig.running() for a in cue["actions"]}


async def test_a_position_wait_on_a_supervised_axis_follows_its_cycle_status() -> None:
    """``wait.position`` on a supervised axis completes on the 50 Hz status, as the axis passes
    the position, without the device's telemetry (which this rig's devices refuse to serve)."""
    rig = Rig()
    rig.pb = Playback(
        loads_show(WAIT_SHOW),
        lighting=None,
        devices=rig.devices,
        machinery=SupervisedMachinery(rig.sup, rig.devices),
        journal=rig.journal,
        clock=rig.clock,
    )

    async def no_telemetry(*a: Any) -> Any:
        raise AssertionError("a supervised axis is waited for on its cycle status")

    rig.devices.wait_for = no_telemetry  # type: ignore[method-assign]
    try:
        rig.sup.keep_enabled("desk")
        await rig.pb.go(origin=USER)
        await rig.run(0.1)
        assert states(rig) == {"machinery.move": "running", "wait.position": "running"}
        passed = False
        for _ in range(400):
            await rig.run(0.02)
            if states(rig) == {"machinery.move": "running", "wait.position": "done"}:
                passed = True
                break
        assert passed, "the wait did not complete while the axis moved"
        assert abs(rig.axes.pos["hoist-1"] - 2000) <= 20 + 1000 * 0.02  # one cycle at speed
        assert not [e for e in rig.journal.events if e.result is not Result.OK]
        await rig.run(5)
        assert rig.running() == []
    finally:
        await rig.close()


async def test_a_position_wait_is_refused_for_hostile_numbers(rig: Rig) -> None:
    from controller.motion.supervisor import MotionRefused

    with pytest.raises(MotionRefused, match="finite position"):
        rig.sup.at_position("hoist-1", float("nan"), 1)
    with pytest.raises(MotionRefused, match="finite position"):
        rig.sup.at_position("hoist-1", 1, -1)
    with pytest.raises(MotionRefused, match="no axis"):
        rig.sup.at_position("hoist-9", 1, 1)
    done = rig.sup.at_position("hoist-1", 1000, 0.5)  # already there
    assert done.done()
