"""The hot standby's logic in virtual time (the processes, the broker and a kill -9 are
tests/integration/test_hot_standby.py): a primary's accepted commands mirrored into a
standby's engine, which tracks the cues (lighting rendered, device commands not sent) with the
same request ids; the standby refuses operators; at its takeover it sends what it tracked
recently, with those ids. And the control seat's messages against hostile input."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from pydantic import ValidationError

from controller.journal import Origin, Result, SourceKind
from controller.lighting import LightingEngine, Patch
from controller.playback import EngineLighting, Playback, PointValue, VirtualClock
from controller.show import loads_show
from drivers.model import PROFILE_DIR, DmxTransport, load_profile
from edge.control import Claim, Event, Positions, VenueEstop
from tests.unit.test_playback import Journal

USER = Origin(SourceKind.USER, "test")
MIRROR = Origin(SourceKind.SYSTEM, "mirror of primary")
PAR = load_profile(PROFILE_DIR / "led_par_rgbw.toml")

SHOW = """
version = 1
[show]
title = "t"
[[lists]]
id = "main"
[[lists.cues]]
number = 1
follow = true
actions = [
  { kind = "lighting.levels", fade_s = 2, levels = [{ fixture = "par-1", level = 100 }] },
  { kind = "device.command", device = "lamp", command = "turn_on" },
]
[[lists.cues]]
number = 2
actions = [{ kind = "device.command", device = "lamp", command = "turn_off", delay_s = 3 }]
[[lists.cues]]
number = 3
actions = [{ kind = "device.command", device = "lamp", command = "turn_on" }]
"""


class RemoteDevices:
    """A device port whose 'lamp' is on another node: commands go with a start time and a
    request id, which are recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str | None]] = []

    def lead(self, device: str) -> float:
        return 0.02

    async def execute(
        self,
        device: str,
        command: str,
        args: Mapping[str, Any],
        origin: Origin,
        *,
        at: float | None = None,
        request_id: str | None = None,
    ) -> Any:
        self.sent.append((device, command, request_id))
        return []

    async def write(self, device: str, point: str, value: float, origin: Origin) -> Any:
        return None

    def read(self, device: str, point: str) -> PointValue | None:
        return None

    async def wait_for(
        self, device: str, point: str, condition: Callable[[Any], bool]
    ) -> PointValue:
        raise AssertionError("no waits in this show")


class Controller:
    def __init__(self, clock: VirtualClock, prefix: str) -> None:
        at = DmxTransport(kind="dmx", universe=1, address=1)
        self.engine = LightingEngine(Patch.build([("par-1", PAR, at)]), clock=clock.now)
        self.devices = RemoteDevices()
        self.journal = Journal()
        self.clock = clock
        self.pb = Playback(
            loads_show(SHOW),
            lighting=EngineLighting(self.engine, {}),
            devices=self.devices,
            journal=self.journal,
            clock=clock,
        )
        self.pb.chain_prefix = prefix

    def level(self) -> Any:
        self.engine.render(self.clock.now())
        return self.engine.fixture_output("par-1")["intensity"]


async def test_a_standby_tracks_the_primary_and_sends_nothing_until_it_takes_over() -> None:
    clock = VirtualClock()
    primary, standby = Controller(clock, "primary-1"), Controller(clock, "standby-1")
    standby.pb.live = False
    standby.pb.refusal = "this controller is the standby: the show is run by primary"
    events: list[dict[str, Any]] = []
    primary.pb.accepted.append(events.append)
    try:
        # The standby's operators are refused, with the reason, and journalled.
        with pytest.raises(Exception, match="the show is run by primary"):
            await standby.pb.go(origin=USER)
        assert standby.journal.events[-1].result is Result.REFUSED

        await primary.pb.go(origin=USER)
        assert [e["op"] for e in events] == ["go"] and events[0]["cue"] == "1"
        for e in events:
            await standby.pb.mirror(e, MIRROR)
        await clock.advance(1.0)
        # Lighting renders on both (the standby's DMX goes out at the lower sACN priority).
        assert standby.level() == pytest.approx(primary.level(), abs=0.5)
        assert primary.level() == pytest.approx(50, abs=1)
        await clock.advance(1.5)
        # Cue 1 followed into cue 2 on both; only the primary sent the lamp's command.
        assert [(d, c) for d, c, _ in primary.devices.sent] == [("lamp", "turn_on")]
        assert standby.devices.sent == []
        assert [t.request_id for t in standby.pb.tracked] == [primary.devices.sent[0][2]]
        assert standby.pb.snapshot()["lists"][0]["current"]["number"] == "2"

        # The primary dies; the standby takes over: it sends cue 1's command again
        # with the primary's id (the node answers it from its cache), and cue 2's, which
        # nobody sent yet, when it is due.
        resent = await standby.pb.go_live(5.0, Origin(SourceKind.SYSTEM, "takeover"))
        await clock.settle()
        assert resent == 1 and standby.devices.sent == [primary.devices.sent[0]]
        await clock.advance(3.0)
        assert [c for _, c, _ in standby.devices.sent] == ["turn_on", "turn_off"]
        assert standby.pb.refusal is None
        assert (await standby.pb.go(origin=USER))["cue"] == "3"
    finally:
        await primary.pb.close()
        await standby.pb.close()


async def test_the_same_cue_gets_the_same_request_ids_on_both_and_new_ones_next_time() -> None:
    clock = VirtualClock()
    primary, standby = Controller(clock, "p"), Controller(clock, "s")
    standby.pb.live = False
    events: list[dict[str, Any]] = []
    primary.pb.accepted.append(events.append)
    try:
        for _ in range(2):
            await primary.pb.standby("main", "1", USER)
            await primary.pb.go(origin=USER)
            await clock.advance(4.0)
        for e in events:
            await standby.pb.mirror(e, MIRROR)
        await clock.advance(8.0)
        ids = [rid for _, _, rid in primary.devices.sent]
        assert ids == [t.request_id for t in standby.pb.tracked]
        assert len(set(ids)) == len(ids) == 4, ids  # two runs of cues 1 and 2
    finally:
        await primary.pb.close()
        await standby.pb.close()


async def test_a_mirrored_command_that_does_not_apply_is_refused_and_journalled() -> None:
    clock = VirtualClock()
    standby = Controller(clock, "s")
    try:
        with pytest.raises(Exception, match="no cue list 'nope'"):
            await standby.pb.mirror({"op": "go", "list": "nope", "cue": "1"}, MIRROR)
        with pytest.raises(Exception, match="cannot mirror"):
            await standby.pb.mirror({"op": "rm -rf"}, MIRROR)
        assert standby.journal.events[-1].result is Result.REFUSED
    finally:
        await standby.pb.close()


GOOD_EVENT = {
    "node": "ctl-1",
    "term": 2,
    "seq": 7,
    "command": {"op": "go", "wall": 1.0, "list": "main", "cue": "1", "chain": "ctl-1-1.3"},
}


@pytest.mark.parametrize(
    "bad",
    [
        {**GOOD_EVENT, "term": 0},
        {**GOOD_EVENT, "term": "2"},
        {**GOOD_EVENT, "seq": 2**60},
        {**GOOD_EVENT, "node": "$control"},
        {**GOOD_EVENT, "node": "a" * 65},
        {**GOOD_EVENT, "extra": 1},
        {**GOOD_EVENT, "command": {**GOOD_EVENT["command"], "op": "exec"}},
        {**GOOD_EVENT, "command": {**GOOD_EVENT["command"], "wall": float("nan")}},
        {**GOOD_EVENT, "command": {**GOOD_EVENT["command"], "chain": "has space"}},
        {**GOOD_EVENT, "command": {**GOOD_EVENT["command"], "cue": "9" * 101}},
        {**GOOD_EVENT, "command": {**GOOD_EVENT["command"], "fade_s": -1}},
        {**GOOD_EVENT, "command": {**GOOD_EVENT["command"], "keep_standby": "yes"}},
    ],
)
def test_hostile_mirrored_commands_are_rejected(bad: dict[str, Any]) -> None:
    Event.model_validate_json(json.dumps(Event.model_validate(GOOD_EVENT).model_dump()))
    with pytest.raises(ValidationError):
        Event.model_validate_json(json.dumps(bad, allow_nan=True))


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xff\xfe", b"[]", b"null", b'{"node":"c","term":1}', b'{"node":"c","term":1,'
     b'"since":1e400}', b'{"node":"c","term":true,"since":1}', b'{"node":"c","term":1,'
     b'"since":1,"reason":"' + b"x" * 400 + b'"}'],
)  # fmt: skip
def test_hostile_claims_and_positions_are_rejected(payload: bytes) -> None:
    assert Claim.model_validate_json(b'{"node":"c","term":1,"since":1}').term == 1
    with pytest.raises(ValidationError):
        Claim.model_validate_json(payload)
    with pytest.raises(ValidationError):
        Positions.model_validate_json(payload)
    with pytest.raises(ValidationError):
        VenueEstop.model_validate_json(payload)
    assert VenueEstop.model_validate_json(b'{"node":"c","ts":1}').reason == "software E-stop"


async def test_an_edge_node_cut_off_from_the_broker_stops_its_moving_axes() -> None:
    """The partition guard's logic (edge.control.guard_partition) with an in-memory hub and
    supervisor: a lost connection stops the busy axes once, with the reason; idle axes and a
    node that is not an edge are left alone."""
    import asyncio
    from types import SimpleNamespace

    from edge.control import PARTITION_POLL_S, guard_partition

    class Supervisor:
        def __init__(self) -> None:
            self.axes = {"hoist-1": None, "hoist-2": None}
            self.moving = {"hoist-1"}
            self.stops: list[str] = []

        def busy(self, axis: str) -> bool:
            return axis in self.moving

        async def stop_all(self, origin: Origin) -> dict[str, str]:
            self.stops.append(origin.source)
            self.moving.clear()
            return {}

    for role, expected in (("edge", 1), ("controller", 0)):
        hub = SimpleNamespace(connected=asyncio.Event())
        sup = Supervisor()
        service = SimpleNamespace(
            mqtt=SimpleNamespace(hub=hub), supervisor=sup, role=role, node="n1"
        )
        task = asyncio.create_task(guard_partition(service))  # type: ignore[arg-type]
        hub.connected.set()
        await asyncio.sleep(3 * PARTITION_POLL_S)
        assert sup.stops == []  # connected: nothing happens
        hub.connected.clear()  # cut off
        await asyncio.sleep(3 * PARTITION_POLL_S)
        assert len(sup.stops) == expected, (role, sup.stops)
        if expected:
            assert "cut off from the broker" in sup.stops[0]
        hub.connected.set()
        await asyncio.sleep(3 * PARTITION_POLL_S)
        hub.connected.clear()  # cut off again, nothing moving: no stop
        await asyncio.sleep(3 * PARTITION_POLL_S)
        assert len(sup.stops) == expected
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
