"""The cue engine in virtual time: GO/back/stop/pause/resume/panic, follow/wait chains,
auto-continue, parts, tracking vs cue-only, release, concurrent lists, debounce, standby,
refusals with reasons and the journal. Lighting is the real engine (patch of real profiles)
rendered at the virtual time; devices are an in-memory port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from controller.journal import JournalEvent, Origin, Result, SourceKind
from controller.lighting import LightingEngine, LightingError, Patch
from controller.playback import (
    EngineLighting,
    Incomplete,
    Machinery,
    NotFound,
    Playback,
    PointValue,
    Refused,
    VirtualClock,
)
from controller.show import loads_show
from controller.show.model import Level
from drivers.model import PROFILE_DIR, DmxTransport, load_profile

USER = Origin(SourceKind.USER, "test")
PAR = load_profile(PROFILE_DIR / "led_par_rgbw.toml")


class Journal:
    def __init__(self) -> None:
        self.events: list[JournalEvent] = []

    async def append(self, event: JournalEvent) -> int:
        self.events.append(event)
        return len(self.events)

    def commands(self) -> list[tuple[str, str, str, str | None]]:
        return [(e.command, e.result.value, e.source, e.cue) for e in self.events]


class Devices:
    """An in-memory device port: commands are recorded; move_to moves 'position' on demand."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, str], Any] = {}
        self.calls: list[tuple[str, str, dict[str, Any], str]] = []
        self.fail: set[tuple[str, str]] = set()
        self._changed = asyncio.Event()

    def set(self, device: str, point: str, value: Any) -> None:
        self.points[(device, point)] = value
        self._changed.set()
        self._changed = asyncio.Event()

    async def execute(
        self, device: str, command: str, args: Mapping[str, Any], origin: Origin
    ) -> Any:
        self.calls.append((device, command, dict(args), origin.source))
        if (device, command) in self.fail:
            raise RuntimeError(f"{device} refused {command}")
        return []

    async def write(self, device: str, point: str, value: float, origin: Origin) -> Any:
        self.calls.append((device, f"write:{point}", {"value": value}, origin.source))
        self.set(device, point, value)

    def read(self, device: str, point: str) -> PointValue | None:
        v = self.points.get((device, point))
        return None if v is None else PointValue(v, "good")

    async def wait_for(
        self, device: str, point: str, condition: Callable[[Any], bool]
    ) -> PointValue:
        while True:
            v = self.points.get((device, point))
            if v is not None and condition(v):
                return PointValue(v, "good")
            await self._changed.wait()


SHOW = """
version = 1
[show]
title = "t"
[groups]
all = ["par-1", "par-2"]
[presets.half]
levels = [{ group = "all", level = 100 }]
[positions.hoist-1]
out = 9000

[[lists]]
id = "main"
go_debounce_s = 0.5
[[lists.cues]]
number = 1
label = "one"
actions = [{ kind = "lighting.levels", fade_s = 2, levels = [{ fixture = "par-1", level = 100 }] }]
[[lists.cues]]
number = 2
follow = true
actions = [
  { kind = "machinery.move", axes = [{ device = "hoist-1", position = 3000, speed = 400 }] },
]
[[lists.cues]]
number = 3
auto_continue_s = 5
actions = [{ kind = "lighting.levels", levels = [{ fixture = "par-2", level = 50 }] }]
[[lists.cues]]
number = 4
actions = [
  { kind = "wait.point", device = "load-1", point = "load", above = 150, timeout_s = 10 },
  { kind = "device.command", device = "video", command = "play", delay_s = 1 },
]
[[lists.cues.parts]]
part = 1
delay_s = 3
actions = [{ kind = "lighting.preset", preset = "half", level = 40 }]
[[lists.cues]]
number = 5
actions = [{ kind = "list.start", list = "fx" }]

[[lists]]
id = "fx"
mode = "cue-only"
priority = 120
go_debounce_s = 0
[[lists.cues]]
number = 1
follow = true
actions = [{ kind = "lighting.levels", levels = [
  { fixture = "par-1", level = 10 }, { fixture = "par-2", level = 10 },
] }]
[[lists.cues]]
number = 2
actions = [{ kind = "lighting.levels", levels = [{ fixture = "par-2", level = 90 }] }]
"""


class Rig:
    def __init__(self, show_text: str = SHOW) -> None:
        self.clock = VirtualClock()
        at = DmxTransport(kind="dmx", universe=1, address=1)
        at2 = DmxTransport(kind="dmx", universe=1, address=11)
        self.engine = LightingEngine(
            Patch.build([("par-1", PAR, at), ("par-2", PAR, at2)]), clock=self.clock.now
        )
        self.devices = Devices()
        self.journal = Journal()
        self.pb = Playback(
            loads_show(show_text),
            lighting=EngineLighting(self.engine, {"all": ["par-1", "par-2"]}),
            devices=self.devices,
            machinery=Machinery(self.devices, ["hoist-1"]),
            journal=self.journal,
            clock=self.clock,
        )

    def level(self, fid: str, attr: str = "intensity") -> Any:
        self.engine.render(self.clock.now())
        return self.engine.fixture_output(fid)[attr]

    def lst(self, list_id: str = "main") -> dict[str, Any]:
        return next(x for x in self.pb.snapshot()["lists"] if x["id"] == list_id)

    async def advance(self, s: float) -> None:
        await self.clock.advance(s)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    yield r
    await r.pb.close()


async def test_go_fades_and_advances_standby(rig: Rig) -> None:
    assert rig.lst()["standby"]["number"] == "1"
    out = await rig.pb.go(origin=USER)
    assert out == {"list": "main", "cue": "1"}
    await rig.advance(1)
    assert rig.level("par-1") == pytest.approx(50, abs=1)
    running = rig.lst()["running"][0]
    assert running["progress"] == pytest.approx(0.5, abs=0.01)
    assert running["remaining_s"] == pytest.approx(1.0)
    await rig.advance(1.5)
    assert rig.level("par-1") == pytest.approx(100, abs=0.5)
    snap = rig.lst()
    assert snap["current"]["number"] == "1" and snap["standby"]["number"] == "2"
    assert snap["running"] == []
    assert ("go", "ok", "test", "1") in rig.journal.commands()


async def test_debounce_refuses_and_journals(rig: Rig) -> None:
    await rig.pb.go(origin=USER)
    await rig.advance(0.2)
    with pytest.raises(Refused, match=r"minimum 0.5 s between GOs"):
        await rig.pb.go(origin=USER)
    assert rig.lst()["standby"]["number"] == "2"  # nothing queued
    refused = [e for e in rig.journal.events if e.result is Result.REFUSED]
    assert len(refused) == 1 and "after the last GO" in refused[0].reason
    await rig.advance(0.4)
    assert (await rig.pb.go(origin=USER))["cue"] == "2"


async def test_follow_waits_for_the_move_then_auto_continue(rig: Rig) -> None:
    rig.devices.set("hoist-1", "position", 9000.0)
    await rig.pb.go(cue=2, origin=USER)
    await rig.advance(1)
    assert ("hoist-1", "move_to", {"position": 3000.0, "speed": 400.0}, "cue main/2") in (
        rig.devices.calls
    )
    assert rig.lst()["current"]["number"] == "2"  # still moving: no follow yet
    rig.devices.set("hoist-1", "position", 6000.0)
    await rig.advance(0.1)
    action = rig.lst()["running"][0]["actions"][0]
    assert action["progress"] == pytest.approx(0.5) and action["remaining_s"] is None
    rig.devices.set("hoist-1", "position", 3001.0)
    await rig.advance(0.1)
    assert rig.lst()["current"]["number"] == "3"  # followed
    assert ("start", "ok", "follow of main/2", "3") in rig.journal.commands()
    await rig.advance(5)
    assert rig.lst()["current"]["number"] == "4"  # auto-continued 5 s after 3's GO
    assert ("start", "ok", "auto-continue of main/3", "4") in rig.journal.commands()


async def test_wait_timeout_fails_the_cue_and_parts_run(rig: Rig) -> None:
    await rig.pb.go(cue=4, origin=USER)
    await rig.advance(1.01)
    assert ("video", "play", {}, "cue main/4") in rig.devices.calls
    await rig.advance(2)  # part 1 at 3 s: the preset at 40 % of 100
    assert rig.level("par-2") == pytest.approx(40, abs=0.5)
    await rig.advance(7)
    failed = [e for e in rig.journal.events if e.command == "action.wait.point"]
    assert failed and failed[0].result is Result.FAILED and "timeout after 10 s" in failed[0].reason
    assert rig.lst()["running"] == []
    assert rig.lst()["standby"]["number"] == "5"


async def test_wait_point_met(rig: Rig) -> None:
    await rig.pb.go(cue=4, origin=USER)
    await rig.advance(4)
    rig.devices.set("load-1", "load", 151)
    await rig.advance(0.1)
    assert rig.lst()["running"] == []
    assert not [e for e in rig.journal.events if e.result is Result.FAILED]


async def test_pause_holds_delays_and_resume_continues(rig: Rig) -> None:
    await rig.pb.go(cue=4, origin=USER)
    await rig.pb.pause("main", origin=USER)
    assert rig.lst()["paused"] is True
    await rig.advance(5)
    assert not any(c[1] == "play" for c in rig.devices.calls)  # its 1 s delay stands still
    await rig.pb.resume("main", origin=USER)
    await rig.advance(1.01)
    assert any(c[1] == "play" for c in rig.devices.calls)
    assert [c[0] for c in rig.journal.commands()][:3] == ["go", "pause", "resume"]


async def test_pause_holds_the_lists_fades_and_resume_takes_the_rest(rig: Rig) -> None:
    await rig.advance(1)
    await rig.pb.go(cue=1, origin=USER)  # par-1 to 100 % over 2 s
    await rig.advance(0.5)
    assert rig.level("par-1") == pytest.approx(25, abs=0.5)
    await rig.pb.pause("main", origin=USER)
    await rig.advance(10)
    assert rig.level("par-1") == pytest.approx(25, abs=0.5)  # held
    action = rig.lst()["running"][0]["actions"][0]
    assert action["progress"] == pytest.approx(0.25, abs=0.01)
    await rig.pb.resume("main", origin=USER)
    await rig.advance(0.5)
    assert rig.level("par-1") == pytest.approx(50, abs=0.5)
    await rig.advance(1.0)
    assert rig.level("par-1") == pytest.approx(100, abs=0.5)
    assert rig.engine.sources["main"].paused is False


async def test_pause_stops_a_move_in_flight_and_resume_sends_it_again(rig: Rig) -> None:
    rig.devices.set("hoist-1", "position", 9000.0)
    await rig.pb.go(cue=2, origin=USER)
    await rig.advance(0.1)
    rig.devices.set("hoist-1", "position", 6000.0)
    out = await rig.pb.pause(origin=USER)
    assert out["axes"] == ["hoist-1"]
    assert ("hoist-1", "stop", {}, "test") in rig.devices.calls
    assert (await rig.pb.pause(origin=USER))["axes"] == []  # already paused: nothing again
    moves = [c for c in rig.devices.calls if c[1] == "move_to"]
    await rig.pb.resume(origin=USER)
    again = [c for c in rig.devices.calls if c[1] == "move_to"]
    assert len(again) == len(moves) + 1 and again[-1][2]["position"] == 3000.0
    assert again[-1][3] == "test"  # the resume is who sent it
    rig.devices.set("hoist-1", "position", 3000.0)
    await rig.advance(0.1)
    assert rig.lst()["current"]["number"] == "3"  # arrived, followed


async def test_a_move_that_cannot_restart_fails_its_action(rig: Rig) -> None:
    rig.devices.set("hoist-1", "position", 9000.0)
    await rig.pb.go(cue=2, origin=USER)
    await rig.advance(0.1)
    await rig.pb.pause(origin=USER)
    rig.devices.fail.add(("hoist-1", "move_to"))
    with pytest.raises(Incomplete, match="resume: hoist-1: hoist-1: hoist-1 refused move_to"):
        await rig.pb.resume(origin=USER)
    await rig.advance(0.1)
    failed = [e for e in rig.journal.events if e.command == "action.machinery.move"]
    assert failed and "did not restart after resume" in failed[0].reason
    assert rig.lst()["running"] == [] and rig.lst()["current"]["number"] == "2"  # no follow
    assert ("resume", "failed") in [(c[0], c[1]) for c in rig.journal.commands()]


async def test_stop_cue_stops_its_axes(rig: Rig) -> None:
    rig.devices.set("hoist-1", "position", 9000.0)
    await rig.pb.go(cue=2, origin=USER)
    await rig.advance(0.1)
    await rig.pb.stop("main", 2, origin=USER)
    assert ("hoist-1", "stop", {}, "test") in rig.devices.calls
    assert rig.lst()["running"] == []
    with pytest.raises(Refused, match="is not running"):
        await rig.pb.stop("main", 2, origin=USER)


async def test_panic_blacks_out_stops_all_and_next_go_restores(rig: Rig) -> None:
    await rig.pb.go(origin=USER)
    await rig.advance(3)
    rig.devices.set("hoist-1", "position", 9000.0)
    await rig.pb.go(origin=USER)  # cue 2: a move
    await rig.advance(0.2)
    await rig.pb.panic(origin=USER)
    assert rig.pb.snapshot()["panic"] is True
    assert all(x["running"] == [] for x in rig.pb.snapshot()["lists"])
    assert ("hoist-1", "stop", {}, "test") in rig.devices.calls
    await rig.advance(1.0)  # panic fade 1 s
    assert rig.level("par-1") == pytest.approx(0, abs=0.5)
    await rig.advance(1)
    await rig.pb.go(cue=1, origin=USER)
    await rig.advance(2.1)
    assert rig.level("par-1") == pytest.approx(100, abs=0.5)
    assert rig.pb.snapshot()["panic"] is False


async def test_panic_fades_to_the_safe_look_not_a_blackout() -> None:
    rig = Rig()
    rig.pb.lighting = EngineLighting(
        rig.engine, {"all": ["par-1", "par-2"]}, [Level(fixture="par-2", level=60)]
    )
    try:
        await rig.pb.go(cue=1, origin=USER)
        await rig.advance(3)
        await rig.pb.panic(origin=USER)
        await rig.advance(1.0)
        assert rig.level("par-1") == pytest.approx(0, abs=0.5)
        assert rig.level("par-2") == pytest.approx(60, abs=0.5)  # the work light stays on
    finally:
        await rig.pb.close()


def test_a_safe_look_naming_nothing_patched_is_refused_up_front() -> None:
    rig = Rig()
    with pytest.raises(LightingError, match=r"safe look \[1\]: .*'ghost'"):
        EngineLighting(
            rig.engine, {}, [Level(fixture="par-1", level=5), Level(group="ghost", level=5)]
        )


async def test_concurrent_lists_priority_and_cue_only(rig: Rig) -> None:
    await rig.pb.go(origin=USER)
    await rig.advance(2.5)
    await rig.pb.go(cue=5, origin=USER)  # starts fx: cue 1 follows into cue 2
    await rig.advance(0.1)
    fx = rig.lst("fx")
    assert fx["current"]["number"] == "2"
    assert ("start", "ok", "list.start of main/5", "1") in rig.journal.commands()
    # fx is cue-only at priority 120: cue 2 released par-1, which falls back to main's 100 %
    assert rig.level("par-1") == pytest.approx(100, abs=0.5)
    assert rig.level("par-2") == pytest.approx(90, abs=0.5)
    await rig.pb.release("fx", 0, origin=USER)
    await rig.advance(0.1)
    assert rig.level("par-2") == pytest.approx(0, abs=0.5)  # main never set it


async def test_tracking_values_persist(rig: Rig) -> None:
    await rig.pb.go(origin=USER)
    await rig.advance(2.1)
    await rig.pb.go(cue=3, origin=USER)
    await rig.advance(0.1)
    assert rig.level("par-1") == pytest.approx(100, abs=0.5)  # cue 1's value tracks
    assert rig.level("par-2") == pytest.approx(50, abs=0.5)
    await rig.pb.release("main", 2, origin=USER)
    await rig.advance(1)
    assert rig.level("par-1") == pytest.approx(50, abs=1)


async def test_standby_back_and_end_of_list(rig: Rig) -> None:
    await rig.pb.standby("main", "5", origin=USER)
    assert rig.lst()["standby"]["number"] == "5"
    await rig.pb.back("main", origin=USER)
    assert rig.lst()["standby"]["number"] == "4"
    await rig.pb.standby("main", 5, origin=USER)
    await rig.pb.go(origin=USER)
    await rig.advance(1)
    assert rig.lst()["standby"] is None
    with pytest.raises(Refused, match="end of the list"):
        await rig.pb.go("main", origin=USER)
    await rig.pb.standby("main", 1, origin=USER)
    with pytest.raises(Refused, match="first cue"):
        await rig.pb.back("main", origin=USER)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda pb: pb.go("nope", origin=USER), "no cue list 'nope'"),
        (lambda pb: pb.go("main", "7", origin=USER), "no cue 7 in cue list 'main'"),
        (lambda pb: pb.go("main", "1e9", origin=USER), "cue number"),
        (lambda pb: pb.standby("main", None, origin=USER), "cue number"),
        (lambda pb: pb.standby("main", [1], origin=USER), "cue number"),
        (lambda pb: pb.release("main", float("nan"), origin=USER), "fade_s"),
        (lambda pb: pb.stop("x" * 5000, origin=USER), "no cue list"),
    ],
)
async def test_bad_requests_are_refused_and_change_nothing(
    rig: Rig, call: Callable[[Playback], Any], match: str
) -> None:
    before = rig.pb.snapshot()
    with pytest.raises(NotFound, match=match):
        await call(rig.pb)
    after = rig.pb.snapshot()
    assert {**before, "version": 0} == {**after, "version": 0}
    assert rig.journal.events[-1].result is Result.REFUSED


async def test_failed_device_command_is_a_failed_action(rig: Rig) -> None:
    rig.devices.fail.add(("video", "play"))
    rig.devices.set("load-1", "load", 200)
    await rig.pb.go(cue=4, origin=USER)
    await rig.advance(4)
    ev = [e for e in rig.journal.events if e.command == "action.device.command"]
    assert ev and "video refused play" in ev[0].reason


async def test_notifications_and_load_refused_while_running(rig: Rig) -> None:
    seen: list[int] = []
    unsubscribe = rig.pb.subscribe(lambda: seen.append(rig.pb.version))
    v = rig.pb.version
    waiter = asyncio.create_task(rig.pb.wait_changed(v))
    await rig.pb.go(origin=USER)
    assert await waiter > v and seen
    unsubscribe()
    with pytest.raises(Refused, match="stop them first"):
        await rig.pb.load(loads_show(SHOW), USER)
    await rig.pb.stop(origin=USER)
    await rig.pb.load(loads_show(SHOW), USER)
    assert rig.lst()["standby"]["number"] == "1"


async def test_panic_calls_its_hooks_and_reports_their_failures(rig: Rig) -> None:
    seen: list[str] = []

    async def idle(origin: Origin) -> None:
        seen.append(origin.source)
        raise Refused("nothing running")

    async def broken(origin: Origin) -> None:
        raise OSError("switch would not stop")

    rig.pb.on_panic.append(idle)
    await rig.pb.panic(origin=USER)
    assert seen == ["test"]
    rig.pb.on_panic.append(broken)
    with pytest.raises(Incomplete, match="switch would not stop"):
        await rig.pb.panic(origin=USER)
