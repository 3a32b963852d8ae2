"""GO -> wire: what the GO's critical path guarantees (issue 5's latency figure, measured by
``python -m benchmarks go_latency``; here only order and content, never time).

- A GO sets the lighting of its cue's undelayed lighting actions itself, before its journal
  append and before any task of the cue runs; a failure there fails the action, as before.
- The lighting engine sends a change in an early frame at the next turn of the loop (one frame
  for every change of a turn), with only the universes that changed, synchronously through a
  sink's ``send_frame_now``; early frames are rate limited by a token bucket.
- ``DmxOutputs.send_frame_now`` hands an sACN frame to the kernel before it returns.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from controller.journal import JournalEvent, Origin, Result, SourceKind
from controller.lighting import LightingEngine, Patch
from controller.lighting.engine import EARLY_BURST, EARLY_GAP_S
from controller.playback import EngineLighting, Machinery, Playback, VirtualClock
from controller.show import loads_show
from drivers.dmx import DmxOutputs, SacnOutput, sacn
from drivers.model import PROFILE_DIR, DmxTransport, load_profile
from edge.api_playback import ws_feed

USER = Origin(SourceKind.USER, "test")
PAR = load_profile(PROFILE_DIR / "led_par_rgbw.toml")
RACK = load_profile(PROFILE_DIR / "dimmer_rack.toml")

SHOW = """
version = 1
[show]
title = "t"
[[lists]]
id = "main"
go_debounce_s = 0
[[lists.cues]]
number = 1
actions = [
  { kind = "lighting.levels", levels = [{ fixture = "par-1", level = 100 }] },
  { kind = "lighting.levels", delay_s = 1, levels = [{ fixture = "par-1", level = 30 }] },
]
[[lists.cues]]
number = 2
actions = [{ kind = "lighting.levels", levels = [
  { channel = { universe = 1, address = 500 }, level = 50 },
] }]
"""


def at(universe: int, address: int) -> DmxTransport:
    return DmxTransport(kind="dmx", universe=universe, address=address)


class Journal:
    """Records each event with par-1's intensity as rendered when it was appended."""

    def __init__(self, engine: LightingEngine, clock: VirtualClock) -> None:
        self.engine, self.clock = engine, clock
        self.events: list[tuple[JournalEvent, Any]] = []

    async def append(self, event: JournalEvent) -> int:
        self.engine.render(self.clock.now())
        self.events.append((event, self.engine.fixture_output("par-1")["intensity"]))
        return len(self.events)


class Devices:
    async def execute(self, *a: Any) -> Any:
        return []

    async def write(self, *a: Any) -> Any:
        return None

    def read(self, *a: Any) -> None:
        return None

    async def wait_for(self, *a: Any) -> Any:
        await asyncio.Event().wait()


class Rig:
    def __init__(self) -> None:
        self.clock = VirtualClock()
        self.engine = LightingEngine(Patch.build([("par-1", PAR, at(1, 1))]), clock=self.clock.now)
        self.journal = Journal(self.engine, self.clock)
        devices = Devices()
        self.pb = Playback(
            loads_show(SHOW),
            lighting=EngineLighting(self.engine),
            devices=devices,
            machinery=Machinery(devices, []),
            journal=self.journal,
            clock=self.clock,
        )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    yield r
    await r.pb.close()


async def test_a_go_sets_its_lighting_before_its_journal_append(rig: Rig) -> None:
    await rig.pb.go(origin=USER)
    go = next((e, lv) for e, lv in rig.journal.events if e.command == "go")
    assert go[1] == pytest.approx(100, abs=0.5)  # set by the GO, before its event was written
    await rig.clock.advance(1.01)  # the delayed action still waits for its time
    rig.engine.render(rig.clock.now())
    assert rig.engine.fixture_output("par-1")["intensity"] == pytest.approx(30, abs=0.5)
    assert all(lst["running"] == [] for lst in rig.pb.snapshot()["lists"])


async def test_a_paused_list_sets_nothing_until_resume(rig: Rig) -> None:
    await rig.pb.pause("main", USER)
    await rig.pb.go(origin=USER)
    await rig.clock.advance(0.5)
    rig.engine.render(rig.clock.now())
    assert rig.engine.fixture_output("par-1")["intensity"] == 0
    await rig.pb.resume("main", USER)
    await rig.clock.advance(0.01)
    rig.engine.render(rig.clock.now())
    assert rig.engine.fixture_output("par-1")["intensity"] == pytest.approx(100, abs=0.5)


async def test_a_lighting_error_met_by_the_go_fails_its_action(rig: Rig) -> None:
    out = await rig.pb.go(cue=2, origin=USER)
    assert out["cue"] == "2"  # the GO itself happened
    await rig.clock.advance(0.1)
    failed = [e for e, _ in rig.journal.events if e.command == "action.lighting.levels"]
    assert len(failed) == 1 and failed[0].result is Result.FAILED
    assert "no patched fixture attribute at channel 1/500" in failed[0].reason
    assert [e.command for e, _ in rig.journal.events] == ["go", "action.lighting.levels"]


# --- the engine's early frames ------------------------------------------------------------------


class Sink:
    """Deadline frames through ``send_frame``, early ones through ``send_frame_now``."""

    def __init__(self) -> None:
        self.frames: list[dict[int, bytes]] = []
        self.early: list[dict[int, bytes]] = []

    async def send_frame(self, frame: Mapping[int, Any]) -> None:
        self.frames.append({u: bytes(d) for u, d in frame.items()})

    def send_frame_now(self, frame: Mapping[int, Any]) -> None:
        self.early.append({u: bytes(d) for u, d in frame.items()})


class FrozenClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.fixture
async def running() -> AsyncIterator[tuple[LightingEngine, Sink, FrozenClock]]:
    """An engine at 1 Hz on a clock that stands still: one deadline frame, then only early
    ones for as long as a test runs."""
    sink, clock = Sink(), FrozenClock()
    patch = Patch.build([("par-1", PAR, at(1, 1)), ("rack-1", RACK, at(2, 1))], extra_universes=[3])
    engine = LightingEngine(patch, sink, rate_hz=1, clock=clock, early_frames=True)
    task = asyncio.create_task(engine.run())
    await _turns()
    assert len(sink.frames) == 1
    try:
        yield engine, sink, clock
    finally:
        engine.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_changes_of_one_turn_share_one_early_frame_of_the_changed_universes(
    running: tuple[LightingEngine, Sink, FrozenClock],
) -> None:
    engine, sink, _ = running
    src = engine.source("a")
    src.set({"par-1": {"intensity": 100}})
    src.set({"rack-1": {"dimmer_3": 100}})
    assert sink.early == []  # not inside the command: at the next turn of the loop
    await asyncio.sleep(0)
    assert len(sink.early) == 1 and set(sink.early[0]) == {1, 2}  # universe 3 did not change
    assert sink.early[0][2][2] == 255
    src.set({"rack-1": {"dimmer_3": 0}})
    await asyncio.sleep(0)
    assert len(sink.early) == 2 and set(sink.early[1]) == {2}
    assert engine.stats.early == 2 and engine.stats.frames == 1  # early ones not in jitter


async def test_a_change_that_does_not_show_yet_sends_nothing(
    running: tuple[LightingEngine, Sink, FrozenClock],
) -> None:
    engine, sink, _ = running
    engine.source("a").fade({"par-1": {"intensity": 100}}, 10.0)  # at its first instant: 0
    await _turns()
    assert sink.early == [] and engine.stats.early == 0


async def test_early_frames_are_rate_limited_by_a_token_bucket(
    running: tuple[LightingEngine, Sink, FrozenClock],
) -> None:
    engine, sink, clock = running
    src = engine.source("a")
    for level in range(1, EARLY_BURST + 3):
        src.set({"par-1": {"intensity": level}})
        await _turns()
    assert len(sink.early) == EARLY_BURST  # the burst; the next change waits for a token
    clock.t += EARLY_GAP_S  # a token is back (the retry is a real timer of ~EARLY_GAP_S)
    for _ in range(200):
        if len(sink.early) > EARLY_BURST:
            break
        await asyncio.sleep(0.005)
    assert len(sink.early) == EARLY_BURST + 1
    assert sink.early[-1][1][0] == round((EARLY_BURST + 2) * 255 / 100)  # the latest look


async def test_an_async_only_sink_gets_early_frames_from_a_task() -> None:
    class AsyncSink:
        def __init__(self) -> None:
            self.frames: list[dict[int, bytes]] = []

        async def send_frame(self, frame: Mapping[int, Any]) -> None:
            self.frames.append({u: bytes(d) for u, d in frame.items()})

    sink, clock = AsyncSink(), FrozenClock()
    engine = LightingEngine(
        Patch.build([("par-1", PAR, at(1, 1))]), sink, rate_hz=1, clock=clock, early_frames=True
    )
    task = asyncio.create_task(engine.run())
    try:
        await _turns()
        engine.source("a").set({"par-1": {"intensity": 100}})
        await _turns()
        assert len(sink.frames) == 2 and sink.frames[1][1][0] == 255
    finally:
        engine.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_no_early_frame_while_the_loop_does_not_run() -> None:
    sink = Sink()
    engine = LightingEngine(Patch.build([("par-1", PAR, at(1, 1))]), sink, early_frames=True)
    engine.source("a").set({"par-1": {"intensity": 100}})
    await _turns()
    assert sink.early == [] and sink.frames == []


async def test_dmx_outputs_send_frame_now_is_on_the_wire_when_it_returns() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    # A blocking receive holds the loop's thread: the packet cannot come from a later turn.
    rx.settimeout(2.0)
    try:
        async with SacnOutput(hosts=["127.0.0.1"], port=rx.getsockname()[1]) as out:
            outputs = DmxOutputs()
            outputs.route(1, out, as_universe=7)
            outputs.send_frame_now({1: bytes([1, 2, 3]), 9: bytes(2)})  # 9: not routed
            packet = sacn.decode(rx.recv(2048))
            assert isinstance(packet, sacn.SacnData)
            assert packet.universe == 7 and packet.data[:3] == bytes([1, 2, 3])
            assert outputs.unrouted == 1
    finally:
        rx.close()


# --- the WebSocket snapshots: shared, and one client per turn of the loop -----------------------


async def test_websocket_snapshots_are_built_once_and_sent_one_client_per_turn(rig: Rig) -> None:
    builds = 0
    snapshot = rig.pb.snapshot

    def counted() -> dict[str, Any]:
        nonlocal builds
        builds += 1
        return snapshot()

    rig.pb.snapshot = counted  # type: ignore[method-assign]
    turn = 0

    async def ticker() -> None:
        nonlocal turn
        while True:
            turn += 1
            await asyncio.sleep(0)

    sent: list[tuple[int, int, int]] = []  # (client, turn of the loop, version)

    def client(i: int) -> Any:
        async def send(msg: dict[str, Any]) -> None:
            sent.append((i, turn, msg["snapshot"]["version"]))

        return send

    class Service:
        playback = rig.pb

    tick = asyncio.create_task(ticker())
    feeds = [asyncio.create_task(ws_feed(Service(), client(i))) for i in range(10)]  # type: ignore[arg-type]
    try:
        for _ in range(200):
            if len(sent) == 10:
                break
            await asyncio.sleep(0)
        assert sorted(i for i, _, _ in sent) == list(range(10))
        turns = [t for _, t, _ in sent]
        assert len(set(turns)) == 10  # never two clients in the same turn of the loop
        assert builds == 1  # one snapshot for the ten of them
    finally:
        for t in [tick, *feeds]:
            t.cancel()
        await asyncio.gather(tick, *feeds, return_exceptions=True)
