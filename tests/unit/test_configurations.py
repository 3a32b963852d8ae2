"""Venue configurations: validation on load (precise messages) and the switch sequencer in
virtual time over in-memory ports — phases in order, arrival, bolts, refusals, faults, stalls,
timeouts, abort (every commanded axis stopped), lighting layer, acoustics skipped, journal."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.configurations import (
    LAYER,
    NO_SOUNDFIELD,
    AxisInfo,
    Configuration,
    ConfigurationSettings,
    Switcher,
    axis_info,
    estimate_s,
)
from controller.configurations.sequencer import BUSY_WAIT_S
from controller.journal import JournalEvent, Origin, Result, SourceKind
from controller.playback import Machinery, PointValue, Refused, VirtualClock
from controller.playback.ports import PlaybackError
from drivers.model import PROFILE_DIR, ConfigError, Device, ModbusTcpTransport, load_profile
from edge.config import load_venue, parse_venue

USER = Origin(SourceKind.USER, "rest 10.0.0.5:5000")
REPO = Path(__file__).resolve().parents[2]


# --- in-memory ports ----------------------------------------------------------------------


class Journal:
    def __init__(self) -> None:
        self.events: list[JournalEvent] = []

    async def append(self, event: JournalEvent) -> int:
        self.events.append(event)
        return len(self.events)

    def commands(self) -> list[tuple[str, str]]:
        return [(e.command, e.result.value) for e in self.events]


class World:
    """Axes that move at their commanded speed on the virtual clock; bolts take 1 s."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.pos: dict[str, float] = {}
        self.motion: dict[str, tuple[float, float, float, float]] = {}  # from, to, speed, t0
        self.points: dict[tuple[str, str], Any] = {}
        self.calls: list[tuple[str, str, dict[str, Any], str]] = []
        self.refuse: set[tuple[str, str]] = set()
        self.stuck: set[str] = set()  # accept a move and never move
        self.bolts: dict[str, tuple[str, float]] = {}  # axis -> (goal, t)

    def position(self, axis: str) -> float:
        if axis in self.motion:
            a, b, v, t0 = self.motion[axis]
            d = v * (self.clock.now() - t0)
            if d >= abs(b - a):
                self.pos[axis] = b
                del self.motion[axis]
            else:
                return a + d * (1 if b > a else -1)
        return self.pos[axis]

    async def execute(
        self, device: str, command: str, args: Mapping[str, Any], origin: Origin
    ) -> Any:
        self.calls.append((device, command, dict(args), origin.source))
        if (device, command) in self.refuse:
            raise RuntimeError(f"{device} refused {command}")
        if command == "move_to":
            if device in self.points.get((device, "_locked"), ()) or self._bolted(device):
                return []  # a bolted lift does not run
            if device not in self.stuck:
                here = self.position(device)
                self.motion[device] = (
                    here,
                    args["position"],
                    args.get("speed", 100.0),
                    self.clock.now(),
                )
        elif command == "stop":
            self.pos[device] = self.position(device)
            self.motion.pop(device, None)
        elif command in ("release_bolts", "engage_bolts"):
            goal = "released" if command == "release_bolts" else "engaged"
            self.bolts[device] = (goal, self.clock.now())
        return []

    def _bolted(self, axis: str) -> bool:
        goal, t = self.bolts.get(axis, ("released", 0.0))
        return goal == "engaged" or self.clock.now() - t < 1.0

    async def write(self, device: str, point: str, value: float, origin: Origin) -> Any:
        raise NotImplementedError

    def read(self, device: str, point: str) -> PointValue | None:
        wall = self.clock.wall()
        if point == "position" and device in self.pos:
            return PointValue(self.position(device), "good", wall)
        if point in ("bolts_released", "bolts_engaged") and device in self.bolts:
            goal, t = self.bolts[device]
            done = self.clock.now() - t >= 1.0
            want = "released" if point == "bolts_released" else "engaged"
            return PointValue(done and goal == want, "good", wall)
        v = self.points.get((device, point))
        if isinstance(v, PointValue):
            return v
        return None if v is None else PointValue(v, "good", wall)

    async def wait_for(
        self, device: str, point: str, condition: Callable[[Any], bool]
    ) -> PointValue:
        raise NotImplementedError


class Lights:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def levels(self, layer: str, priority: int, levels: Any, **kw: Any) -> None:
        self.calls.append(("levels", layer, priority, tuple(levels), kw["fade_s"]))

    def release(self, layer: str, priority: int, *, fade_s: float, keep: Any = ()) -> int:
        self.calls.append(("release", layer, priority, tuple(keep), fade_s))
        return 0

    def panic(self, fade_s: float) -> None: ...
    def clear_panic(self, fade_s: float) -> None: ...
    def pause(self, layer: str, priority: int) -> None: ...
    def resume(self, layer: str, priority: int) -> None: ...


def _device(id: str, profile: str) -> Device:
    transport = ModbusTcpTransport(kind="modbus-tcp", host="127.0.0.1", port=1502, unit=1)
    return Device(id, load_profile(PROFILE_DIR / f"{profile}.toml"), transport, 10.0, id)


AXES: dict[str, AxisInfo] = {}
for _id, _profile in [
    ("fly-1", "hoist"),
    ("fly-2", "hoist"),
    ("lift", "stage_lift"),
    ("wagon", "wagon"),
    ("revolve", "turntable"),
]:
    _info = axis_info(_device(_id, _profile))
    assert _info is not None
    AXES[_id] = _info


def configs() -> dict[str, Configuration]:
    raw = {
        "concert": {
            "label": "Concert",
            "machinery": {
                "fly-1": {"position": 3000, "speed": 1000},
                "fly-2": {"position": 2000, "speed": 1000},
                "lift": {"position": 4200, "speed": 200, "lock": False},
                "wagon": {"position": 1000, "speed": 1000},
            },
            "sequence": [["fly-*"], ["lift"]],
            "lighting": [{"fixture": "par-1", "level": 50}],
            "acoustics": "concert",
        },
        "home": {"machinery": {"fly-1": 1000, "fly-2": 1000}},
        "turn": {"machinery": {"revolve": {"position": 350, "speed": 10}}},
    }
    return {k: Configuration.model_validate(v) for k, v in raw.items()}


class Rig:
    def __init__(self, **kw: Any) -> None:
        self.clock = VirtualClock()
        self.world = World(self.clock)
        self.journal = Journal()
        self.lights = Lights()
        for axis, p in {
            "fly-1": 1000,
            "fly-2": 1000,
            "lift": 4000,
            "wagon": 0,
            "revolve": 10,
        }.items():
            self.world.pos[axis] = p
        self.sw = Switcher(
            configs(),
            AXES,
            devices=self.world,
            machinery=Machinery(self.world, list(AXES)),
            journal=self.journal,
            clock=self.clock,
            lighting=self.lights,
            settings=ConfigurationSettings(**kw),
        )

    async def run_until_done(self, limit_s: float = 120) -> dict[str, Any]:
        for _ in range(int(limit_s / 0.5)):
            await self.clock.advance(0.5)
            if not self.sw.running:
                break
        return await self.sw.wait()


@pytest.fixture
def rig() -> Rig:
    return Rig()


# --- the switch ---------------------------------------------------------------------------


async def test_switch_runs_phases_in_order_and_journals(rig: Rig) -> None:
    plan = await rig.sw.switch("concert", USER)
    assert [[m["axis"] for m in p["moves"]] for p in plan["phases"]] == [
        ["fly-1", "fly-2"],
        ["lift"],
        ["wagon"],
    ]
    assert plan["estimated_s"] is not None and plan["estimated_s"] > 0
    assert plan["acoustics_note"] == NO_SOUNDFIELD
    await rig.clock.advance(0.3)
    moved = [(d, c) for d, c, _, _ in rig.world.calls if c == "move_to"]
    assert moved == [("fly-1", "move_to"), ("fly-2", "move_to")]  # the lift waits its turn
    p = rig.sw.progress()
    assert p["state"] == "running" and p["phase"] == 0 and 0 < p["fraction"] < 1
    assert p["remaining_s"] is not None and p["remaining_s"] > 0
    assert p["acoustics"] == {"state": "skipped", "reason": NO_SOUNDFIELD}
    out = await rig.run_until_done()
    assert out["state"] == "done", out
    assert rig.sw.current == "concert" and out["fraction"] == 1.0
    assert rig.world.pos == {
        "fly-1": 3000,
        "fly-2": 2000,
        "lift": 4200,
        "wagon": 1000,
        "revolve": 10,
    }
    order = [(d, c) for d, c, _, _ in rig.world.calls]
    assert order == [
        ("fly-1", "move_to"),
        ("fly-2", "move_to"),
        ("lift", "release_bolts"),  # a lift's bolts come out before it runs
        ("lift", "move_to"),
        ("wagon", "move_to"),  # the axes no phase names move last
    ]
    # every move carries the configuration as its source
    assert {s for _, c, _, s in rig.world.calls if c == "move_to"} == {"configuration concert"}
    cmds = rig.journal.commands()
    assert cmds[0] == ("configuration.switch", "ok")
    assert ("configuration.acoustics", "refused") in cmds
    assert cmds.count(("configuration.phase.start", "ok")) == 3
    assert cmds.count(("configuration.phase.end", "ok")) == 3
    assert cmds.count(("configuration.axis", "ok")) == 4
    assert cmds[-1] == ("configuration.end", "ok")
    assert rig.journal.events[0].source == USER.source
    assert rig.journal.events[-1].args["outcome"] == "done"
    # phase times are monotonic: phase 2 starts after phase 1 ended
    phases = out["phases"]
    assert phases[0]["ended_s"] <= phases[1]["started_s"] <= phases[1]["ended_s"]
    # lighting: the previous look released (keeping the new levels), then the new look
    kinds = [c[0] for c in rig.lights.calls]
    assert kinds == ["release", "levels"] and rig.lights.calls[1][1] == LAYER
    assert rig.lights.calls[1][2] == 50  # below the cue lists


async def test_axes_in_position_are_not_moved(rig: Rig) -> None:
    await rig.sw.switch("home", USER)
    out = await rig.run_until_done()
    assert out["state"] == "done"
    assert [c for c in rig.world.calls if c[1] == "move_to"] == []
    assert [a["state"] for a in out["axes"]] == ["in position", "in position"]
    assert rig.sw.listing()["current"] == "home"
    assert rig.sw.in_position("home") is True and rig.sw.in_position("concert") is False


async def test_bolted_lift_is_released_then_locked() -> None:
    rig = Rig()
    rig.world.bolts["lift"] = ("engaged", 0.0)
    cfg = Configuration.model_validate(
        {"machinery": {"lift": {"position": 4200, "speed": 200, "lock": True}}}
    )
    rig.sw.configurations["up"] = cfg
    await rig.sw.switch("up", USER)
    out = await rig.run_until_done()
    assert out["state"] == "done", out
    cmds = [c for _, c, _, _ in rig.world.calls]
    assert cmds == ["release_bolts", "move_to", "engage_bolts"]
    assert rig.world.pos["lift"] == 4200


async def test_turntable_goes_the_short_way_round(rig: Rig) -> None:
    plan = rig.sw.plan("turn")
    move = plan["phases"][0]["moves"][0]
    assert move["estimated_s"] == pytest.approx(estimate_s(20, 10, AXES["revolve"].acceleration))


async def test_refused_while_a_switch_runs_and_for_unknown_names(rig: Rig) -> None:
    await rig.sw.switch("concert", USER)
    with pytest.raises(Refused, match="a switch to 'concert' is running"):
        await rig.sw.switch("home", USER)
    with pytest.raises(PlaybackError) as info:
        await rig.sw.switch("nope", USER)
    assert info.value.status == 404 and "configurations: concert, home, turn" in info.value.reason
    await rig.sw.abort(USER)
    assert ("configuration.switch", "refused") in rig.journal.commands()


async def test_refused_when_an_axis_is_offline_stale_or_faulted(rig: Rig) -> None:
    del rig.world.pos["wagon"]
    rig.world.points[("fly-1", "fault")] = True
    rig.world.points[("fly-1", "fault_code")] = 2
    rig.world.pos.pop("fly-2")
    rig.world.points[("fly-2", "position")] = PointValue(1000.0, "good", rig.clock.wall() - 30)
    with pytest.raises(Refused) as info:
        await rig.sw.switch("concert", USER)
    reason = info.value.reason
    assert "wagon has no position yet" in reason
    assert "fly-1 is faulted (fault_code 2)" in reason
    assert "fly-2: its last position is 30.0 s old" in reason
    assert rig.world.calls == []  # nothing moved
    assert rig.journal.events[-1].result is Result.REFUSED
    assert rig.sw.progress()["state"] == "idle"


async def test_abort_stops_every_commanded_axis(rig: Rig) -> None:
    await rig.sw.switch("concert", USER)
    await rig.clock.advance(0.5)
    task = asyncio.ensure_future(rig.sw.abort(USER))
    await rig.clock.advance(0.2)
    out = await task
    assert out["state"] == "aborted" and "aborted by rest" in out["reason"]
    stops = sorted(d for d, c, _, _ in rig.world.calls if c == "stop")
    assert stops == ["fly-1", "fly-2"]  # what it had moved; the lift never started
    assert "lift" not in {d for d, c, _, _ in rig.world.calls if c == "move_to"}
    assert rig.sw.current is None and rig.sw.listing()["current"] == "unknown"
    assert {a["axis"]: a["state"] for a in out["axes"]}["fly-1"] == "stopped"
    end = rig.journal.events[-1]
    assert end.command == "configuration.end" and end.result is Result.FAILED
    assert end.args["outcome"] == "aborted"
    assert ("configuration.abort", "ok") in rig.journal.commands()
    with pytest.raises(Refused, match="no switch is running"):
        await rig.sw.abort(USER)


async def test_refused_move_fails_the_switch_and_stops_the_rest(rig: Rig) -> None:
    rig.world.refuse.add(("fly-2", "move_to"))
    await rig.sw.switch("concert", USER)
    out = await rig.run_until_done()
    assert out["state"] == "failed" and "fly-2: move refused" in out["reason"]
    assert sorted(d for d, c, _, _ in rig.world.calls if c == "stop") == ["fly-1", "fly-2"]
    assert rig.journal.events[-1].reason.startswith("fly-2: move refused")


async def test_fault_mid_move_fails_the_switch(rig: Rig) -> None:
    await rig.sw.switch("concert", USER)
    await rig.clock.advance(0.5)
    rig.world.points[("fly-2", "fault")] = True
    out = await rig.run_until_done()
    assert out["state"] == "failed" and "fly-2 reported a fault" in out["reason"]
    assert rig.sw.current is None


async def test_an_axis_that_stops_short_is_a_stall(rig: Rig) -> None:
    rig.world.stuck.add("fly-1")
    await rig.sw.switch("concert", USER)
    out = await rig.run_until_done()
    assert out["state"] == "failed"
    assert "fly-1 stopped short of its target" in out["reason"]
    assert "no movement for 5 s" in out["reason"]


async def test_phase_timeout() -> None:
    rig = Rig(stall_s=600)
    rig.world.stuck.add("fly-1")
    rig.sw.configurations["slow"] = Configuration.model_validate(
        {"machinery": {"fly-1": 5000}, "phase_timeout_s": 3}
    )
    await rig.sw.switch("slow", USER)
    out = await rig.run_until_done()
    assert out["state"] == "failed" and "phase 1 timed out after 3" in out["reason"], out
    assert "fly-1 at 1000" in out["reason"]


class BusyMachinery(Machinery):
    """The supervisor's signal: each axis named is still in its last move until ``until``."""

    def __init__(self, world: World, until: dict[str, float]) -> None:
        super().__init__(world, list(AXES))
        self.world, self.until = world, until

    def busy(self, device: str) -> bool:
        return self.world.clock.now() < self.until.get(device, -math.inf)


async def test_an_axis_finishing_its_last_move_is_waited_for() -> None:
    """A switch started as the last one arrives (within tolerance, the supervisor's move not
    yet at rest) waits for that move to end instead of having its move refused."""
    rig = Rig()
    rig.sw.machinery = BusyMachinery(rig.world, {"fly-1": rig.clock.now() + 1.2})
    await rig.sw.switch("concert", USER)
    await rig.clock.advance(1.0)
    assert not [c for c in rig.world.calls if c[1] == "move_to"]  # the phase waits
    out = await rig.run_until_done()
    assert out["state"] == "done", out
    moved = [d for d, c, _, _ in rig.world.calls if c == "move_to"]
    assert moved == ["fly-1", "fly-2", "lift", "wagon"]


async def test_an_axis_busy_for_longer_has_its_move_refused() -> None:
    rig = Rig()
    rig.sw.machinery = BusyMachinery(rig.world, {"fly-1": math.inf})
    rig.world.refuse.add(("fly-1", "move_to"))  # as the supervisor refuses a busy axis
    await rig.sw.switch("concert", USER)
    await rig.clock.advance(BUSY_WAIT_S - 0.5)
    assert not [c for c in rig.world.calls if c[1] == "move_to"]
    out = await rig.run_until_done()
    assert out["state"] == "failed" and "fly-1: move refused" in out["reason"], out


async def test_close_aborts_a_running_switch(rig: Rig) -> None:
    await rig.sw.switch("concert", USER)
    await rig.clock.advance(0.3)
    task = asyncio.ensure_future(rig.sw.close())
    await rig.clock.advance(0.3)
    await task
    assert rig.sw.progress()["state"] == "aborted"
    assert rig.journal.events[-1].args["outcome"] == "aborted"


# --- validation ---------------------------------------------------------------------------


def test_model_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"Extra inputs|extra_forbidden"):
        Configuration.model_validate({"machinery": {}, "colour": "red"})
    with pytest.raises(ValueError, match=r"sequence\[0\]: 'wag\*' matches no axis"):
        Configuration.model_validate({"machinery": {"fly-1": 1}, "sequence": [["wag*"]]})
    with pytest.raises(ValueError, match=r"axis 'fly-1' \('fly-\*'\) is already in sequence\[0\]"):
        Configuration.model_validate(
            {"machinery": {"fly-1": 1, "fly-2": 2}, "sequence": [["fly-1"], ["fly-*"]]}
        )
    with pytest.raises(ValueError, match="finite"):
        Configuration.model_validate({"machinery": {"fly-1": float("nan")}})
    with pytest.raises(ValueError, match="a level takes exactly one"):
        Configuration.model_validate({"lighting": [{"level": 50}]})


DEMO = REPO / "examples" / "venue-demo.toml"


def _demo_with(tmp_path: Path, extra: str) -> Path:
    text = DEMO.read_text(encoding="utf-8").replace('show = "show-demo.toml"\n', "")
    text = text.replace(
        "# --- machinery: the fly tower", extra + "\n# --- machinery: the fly tower"
    )
    path = tmp_path / "venue.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_demo_venue_configurations_load() -> None:
    venue = load_venue(DEMO)
    assert set(venue.config.configurations) >= {"drama", "opera", "concert", "conference"}


def test_venue_problems_are_precise(tmp_path: Path) -> None:
    path = _demo_with(
        tmp_path,
        """
[configurations.bad]
machinery = { hoist-9 = 100, hoist-1 = 99999, loadcell-1 = 0, \
revolve = { position = 10, speed = 99 }, wagon-1 = { position = 5, lock = true } }
lighting = [{ fixture = "hoist-1", level = 10 }, { group = "nobody", level = 5 }, \
{ channel = { universe = 9, address = 1 }, level = 5 }]

[configurations.switch]
machinery = {}
""",
    )
    with pytest.raises(ConfigError) as info:
        load_venue(path)
    text = "\n".join(info.value.problems)
    assert "configurations.bad.machinery.hoist-9: no such device in the venue" in text
    assert (
        "configurations.bad.machinery.hoist-1: move_to: position 99999 is above the maximum "
        "12000 mm" in text
    )
    assert "configurations.bad.machinery.loadcell-1: is not a machinery axis" in text
    assert "configurations.bad.machinery.revolve: move_to: speed 99 is above the maximum 36" in text
    assert "configurations.bad.machinery.wagon-1.lock: 'wagon-1' has no locking bolts" in text
    assert "configurations.bad.lighting[0].fixture: no DMX fixture 'hoist-1'" in text
    assert "configurations.bad.lighting[1].group: no fixture group 'nobody'" in text
    assert (
        "configurations.bad.lighting[2].channel: universe 9 is sent by no [[dmx.outputs]]" in text
    )
    assert "configurations.switch: 'switch' is reserved" in text


def test_unknown_keys_and_bad_names(tmp_path: Path) -> None:
    path = _demo_with(tmp_path, '[configurations."no good"]\nlabel = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_venue(path)
    assert any("configurations" in p for p in info.value.problems)
    path = _demo_with(tmp_path, "[configurations.ok]\nlable = 'typo'\n")
    with pytest.raises(ConfigError) as info:
        load_venue(path)
    assert any("configurations.ok.lable" in p for p in info.value.problems), info.value.problems
    path = _demo_with(tmp_path, "")
    path.write_text(path.read_text().replace("lighting_priority = 50 ", "lighting_priority = 500 "))
    with pytest.raises(ConfigError, match="lighting_priority"):
        load_venue(path)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=0, max_size=8),
        st.one_of(
            st.floats(), st.integers(), st.text(max_size=4), st.none(), st.lists(st.integers())
        ),
        max_size=4,
    )
)
def test_hostile_configuration_tables_never_crash(table: dict[str, Any]) -> None:
    data = {
        "venue": {"id": "v"},
        "nodes": [{"id": "n"}],
        "configurations": {
            "x": {"machinery": table, "sequence": [list(table)[:1]] if table else []}
        },
    }
    try:
        parse_venue(data, Path("hostile.toml"))
    except ConfigError as exc:
        assert exc.problems


def test_expanded_venue_keeps_group_labels_for_configurations() -> None:
    """The HIL rig and the preview validate the expanded venue: group labels still resolve."""
    from drivers.model import read_toml
    from edge.config import expand_venue

    venue = parse_venue(expand_venue(read_toml(DEMO), DEMO), DEMO)
    assert "concert" in venue.config.configurations
