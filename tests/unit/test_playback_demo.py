"""The demo show (examples/show-demo.toml) on the demo venue's real lighting patch, in virtual
time: every action kind runs or fails with a reason; channel levels and split up/down times
reach the engine; hostile WebSocket messages are answered with 422 and change nothing."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.journal import Origin, Result, SourceKind
from controller.lighting import LightingEngine, Patch
from controller.playback import EngineLighting, Machinery, Playback, VirtualClock
from controller.show import Show, load_show
from edge.api_playback import venue_groups, ws_command
from edge.config import Venue, load_venue
from tests.unit.test_playback import Devices, Journal
from tests.unit.test_show_demo import DEMO, VENUE, venue_catalogue

USER = Origin(SourceKind.USER, "test")


@functools.cache
def _venue_and_show() -> tuple[Venue, Show]:
    return load_venue(VENUE), load_show(DEMO, venue_catalogue())


class Demo:
    def __init__(self) -> None:
        venue, show = _venue_and_show()
        self.clock = VirtualClock()
        routed = {u for out in venue.config.dmx.outputs for u in out.universes}
        self.engine = LightingEngine(
            Patch.from_devices(venue.devices, routed), clock=self.clock.now
        )
        groups = {**venue_groups(Path(VENUE)), **{k: list(v) for k, v in show.groups.items()}}
        self.devices = Devices()
        self.journal = Journal()
        self.pb = Playback(
            show,
            lighting=EngineLighting(self.engine, groups),
            devices=self.devices,
            machinery=Machinery(self.devices, ["hoist-1", "tabs", "revolve"]),
            journal=self.journal,
            clock=self.clock,
        )

    def out(self, fid: str) -> dict[str, Any]:
        self.engine.render(self.clock.now())
        return self.engine.fixture_output(fid)


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    d = Demo()
    yield d
    await d.pb.close()


async def test_the_demo_show_runs(demo: Demo) -> None:
    pb, clock = demo.pb, demo.clock
    await pb.go(origin=USER)  # 0.5: preset warm at 50 %, soundfield (no audio port), projector
    await clock.advance(3)
    assert demo.out("par-1")["intensity"] == pytest.approx(40, abs=0.5)  # 80 % x 50 %
    assert demo.out("par-1")["red"] == pytest.approx(100, abs=0.5)
    failed = {e.command: e.reason for e in demo.journal.events if e.result is Result.FAILED}
    assert failed == {"action.audio.soundfield": "no sound-field engine on this node"}
    assert ("projector-1", "power_on", {}, "cue main/0.5") in demo.devices.calls

    await pb.go(origin=USER)  # 1: a channel level up in 3 s, log curve
    await clock.advance(3.1)
    assert demo.out("dimmers-1")["dimmer_1"] == pytest.approx(50, abs=0.5)  # channel 2/101
    assert demo.out("dimmers-1")["dimmer_2"] == pytest.approx(50, abs=0.5)

    demo.devices.set("hoist-1", "position", 9000.0)
    demo.devices.set("tabs", "position", 0.0)
    await pb.go(origin=USER)  # 2: border in (follow into 2.5 after the wait)
    await clock.advance(1)
    moves = [c for c in demo.devices.calls if c[1] == "move_to"]
    assert ("hoist-1", "move_to", {"position": 3000, "speed": 400, "acceleration": 300}) in [
        c[:3] for c in moves
    ]
    demo.devices.set("hoist-1", "position", 3000.0)
    demo.devices.set("tabs", "position", 9000.0)
    await clock.advance(0.1)
    lst = pb.snapshot()["lists"][0]
    assert lst["current"]["number"] == "2.5"  # followed
    # cue 1 still runs (its down time is 5 s) next to 2.5, which turns the revolve
    assert [c["number"] for c in lst["running"]] == ["1", "2.5"]
    revolve = [c for c in demo.devices.calls if c[0] == "revolve"]
    assert revolve[0][1:3] == ("move_to", {"position": 180, "speed": 6})


async def test_storm_list_flashes_and_main_stops_it(demo: Demo) -> None:
    await demo.pb.go("main", "5", origin=USER)
    await demo.clock.advance(0.05)
    storm = demo.pb.snapshot()["lists"][1]
    assert storm["current"]["number"] == "1"
    assert demo.out("par-1")["intensity"] == pytest.approx(100, abs=0.5)
    await demo.clock.advance(0.2)  # auto-continue 0.2 s: cue 2 then follows into 3
    await demo.clock.advance(0.6)
    assert demo.pb.snapshot()["lists"][1]["current"]["number"] == "3"
    await demo.clock.advance(1)
    await demo.pb.go("main", "6", origin=USER)
    await demo.clock.advance(0.1)
    sources = {e.source for e in demo.journal.events if e.command == "start"}
    assert {"list.start of main/5", "auto-continue of storm/1", "follow of storm/2"} <= sources
    assert ("hoist-1", "stop", {}, "cue main/6") in demo.devices.calls


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(
        st.sampled_from(["type", "id", "command", "list", "cue", "fade_s", "x"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=True, allow_infinity=True),
            st.text(max_size=30),
            st.lists(st.integers(), max_size=2),
            st.sampled_from(["playback", "go", "standby", "stop", "main", "storm", "12.5"]),
        ),
    )
)
async def test_hostile_ws_messages_change_nothing_unless_valid(msg: dict[str, Any]) -> None:
    d = Demo()

    class Svc:
        playback = d.pb

    before = d.pb.snapshot()
    origin = Origin(SourceKind.USER, "fuzz")
    reply = await ws_command(Svc(), {**msg, "type": "playback"}, origin)  # type: ignore[arg-type]
    assert reply["type"] == "playback.result"
    if not reply["ok"]:
        assert reply["status"] in (409, 422) and reply["detail"]
        after = d.pb.snapshot()
        assert {**before, "version": 0} == {**after, "version": 0}
    await d.pb.close()
