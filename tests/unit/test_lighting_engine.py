"""The lighting engine's merge, fades, tracking, release, masters and frames (no timing asserts:
every render is given its time; the loop runs against a fake clock)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from controller.lighting import LightingEngine, LightingError, Patch
from drivers.dmx.fixture import render
from drivers.model import PROFILE_DIR, DmxTransport, Profile, load_profile


def profile(name: str) -> Profile:
    return load_profile(PROFILE_DIR / f"{name}.toml")


PAR, HEAD, RACK = profile("led_par_rgbw"), profile("moving_head"), profile("dimmer_rack")


def make_patch() -> Patch:
    def at(u: int, a: int) -> DmxTransport:
        return DmxTransport(kind="dmx", universe=u, address=a)

    return Patch.build(
        [
            ("par-1", PAR, at(1, 1)),
            ("par-2", PAR, at(1, 9)),
            ("head-1", HEAD, at(1, 17)),
            ("rack-1", RACK, at(2, 1)),
        ],
        extra_universes=[3],
    )


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(clock: Clock) -> LightingEngine:
    return LightingEngine(make_patch(), clock=clock)


def slot(engine: LightingEngine, universe: int, channel: int) -> int:
    return int(engine.universe(universe)[channel - 1])


# --- patch --------------------------------------------------------------------------------------


def test_defaults_render_like_the_fixture_helper(engine: LightingEngine) -> None:
    engine.render()
    u1 = engine.universe(1)
    assert bytes(u1[0:8]) == render(PAR, {})
    assert bytes(u1[16:32]) == render(HEAD, {})
    assert engine.patch.universes == (1, 2, 3)
    assert not engine.universe(3).any()


def test_values_render_like_the_fixture_helper(engine: LightingEngine) -> None:
    look: dict[str, Any] = {"pan": 123.4, "tilt": 200.0, "dimmer": 61.5, "gobo_wheel": 40}
    engine.source("a").set({"head-1": look})
    engine.render()
    assert bytes(engine.universe(1)[16:32]) == render(HEAD, look)
    out = engine.fixture_output("head-1")
    assert out["gobo_wheel"] == 40 and abs(float(out["pan"]) - 123.4) < 0.01


def test_groups_by_class_and_by_list(engine: LightingEngine) -> None:
    patch = engine.patch
    assert patch.groups["led_par"] == ("par-1", "par-2")
    assert patch.add_group("front", ["par-2", "head-1"]) == ("par-2", "head-1")
    assert patch.add_group("washes", device_class="led_par") == ("par-1", "par-2")
    with pytest.raises(LightingError, match="no fixture 'nope'"):
        patch.add_group("x", ["nope"])
    with pytest.raises(LightingError, match="device class 'laser'"):
        patch.add_group("x", device_class="laser")
    with pytest.raises(LightingError, match="cannot name a group"):
        patch.add_group("par-1", ["par-2"])


def test_patch_refuses_overlaps_and_overruns() -> None:
    with pytest.raises(LightingError, match="overlaps par-1 at universe 1 channel 8"):
        Patch.build(
            [
                ("par-1", PAR, DmxTransport(kind="dmx", universe=1, address=1)),
                ("par-2", PAR, DmxTransport(kind="dmx", universe=1, address=8)),
            ]
        )
    with pytest.raises(LightingError, match="runs past channel 512"):
        Patch.build([("h", HEAD, DmxTransport(kind="dmx", universe=1, address=500))])
    t = DmxTransport(kind="dmx", universe=1, address=1)
    with pytest.raises(LightingError, match="patched twice"):
        Patch.build([("p", PAR, t), ("p", PAR, t)])


def test_htp_ltp_come_from_the_profiles(engine: LightingEngine) -> None:
    p = engine.patch
    par = p.fixtures["par-1"]
    assert p.htp[par.index("intensity")] and not p.htp[par.index("red")]
    head = p.fixtures["head-1"]
    assert p.htp[head.index("dimmer")] and not p.htp[head.index("pan")]
    rack = p.fixtures["rack-1"]
    assert all(p.htp[rack.index(f"dimmer_{i}")] for i in range(1, 13))


# --- merge --------------------------------------------------------------------------------------


def test_htp_within_a_priority_takes_the_highest(engine: LightingEngine) -> None:
    engine.source("a", 100).set({"par-1": {"intensity": 40}})
    engine.source("b", 100).set({"par-1": {"intensity": 80}})
    engine.render()
    assert slot(engine, 1, 1) == round(0.8 * 255)
    engine.source("b", 100).set({"par-1": {"intensity": 10}})
    engine.render()
    assert slot(engine, 1, 1) == round(0.4 * 255)


def test_ltp_within_a_priority_takes_the_latest(engine: LightingEngine, clock: Clock) -> None:
    engine.source("a", 100).set({"par-1": {"red": 10}})
    clock.t += 1
    engine.source("b", 100).set({"par-1": {"red": 90}})
    engine.render()
    assert slot(engine, 1, 2) == round(0.9 * 255)
    clock.t += 1
    engine.source("a", 100).set({"par-1": {"red": 20}})
    engine.render()
    assert slot(engine, 1, 2) == round(0.2 * 255)


def test_higher_priority_wins_for_htp_too(engine: LightingEngine, clock: Clock) -> None:
    engine.source("high", 150).set({"par-1": {"intensity": 20}})
    clock.t += 1
    engine.source("low", 100).set({"par-1": {"intensity": 90, "red": 50}})
    engine.render()
    assert slot(engine, 1, 1) == round(0.2 * 255)  # not the higher level: the higher priority
    assert slot(engine, 1, 2) == round(0.5 * 255)  # the high source does not drive red


def test_priority_and_source_validation(engine: LightingEngine) -> None:
    engine.source("a", 100)
    with pytest.raises(LightingError, match="exists at priority 100"):
        engine.source("a", 120)
    for bad in (-1, 201, 1.5, True, "100"):
        with pytest.raises(LightingError, match="priority"):
            engine.source("x", bad)  # type: ignore[arg-type]
    with pytest.raises(LightingError, match="non-empty name"):
        engine.source("")


# --- fades, tracking, release -------------------------------------------------------------------


def test_linear_fade_from_current_output(engine: LightingEngine, clock: Clock) -> None:
    src = engine.source("list-1")
    src.fade({"par-1": {"intensity": 100}}, 2.0)
    t0 = clock.t
    for dt, level in ((0.0, 0), (0.5, 64), (1.0, 128), (1.5, 191), (2.0, 255), (9.0, 255)):
        engine.render(t0 + dt)
        assert slot(engine, 1, 1) == level, dt


def test_fade_with_delay_and_curves(engine: LightingEngine, clock: Clock) -> None:
    t0 = clock.t
    engine.source("a").fade({"par-1": {"intensity": 100}}, 1.0, delay_s=1.0, curve="s")
    engine.source("a").fade({"par-2": {"intensity": 100}}, 1.0, curve="log")
    engine.render(t0 + 0.99)
    assert slot(engine, 1, 1) == 0  # still in its delay
    engine.render(t0 + 1.25)
    assert slot(engine, 1, 1) == round(255 * (3 * 0.25**2 - 2 * 0.25**3))
    engine.render(t0 + 0.5)
    assert slot(engine, 1, 9) == round(255 * math.log10(1 + 4.5))


def test_sixteen_bit_fade_moves_coarse_and_fine(engine: LightingEngine, clock: Clock) -> None:
    t0 = clock.t
    engine.source("a").fade({"head-1": {"dimmer": 100}}, 2.0)
    engine.render(t0 + 1.0)
    u = engine.universe(1)
    raw = int(u[22]) * 256 + int(u[23])  # dimmer at offset 7 of the head at 17
    assert abs(raw - 65535 / 2) <= 1


def test_a_new_fade_starts_where_the_source_is(engine: LightingEngine, clock: Clock) -> None:
    t0 = clock.t
    src = engine.source("a")
    src.fade({"par-1": {"intensity": 100}}, 2.0)
    clock.t = t0 + 1.0  # half-way: 127.5
    src.fade({"par-1": {"intensity": 0}}, 1.0)
    engine.render(t0 + 1.0)
    assert slot(engine, 1, 1) == 128
    engine.render(t0 + 1.5)
    assert slot(engine, 1, 1) == 64


def test_a_paused_source_holds_its_fades_and_resumes_with_the_rest_of_the_time(
    engine: LightingEngine, clock: Clock
) -> None:
    t0 = clock.t
    src = engine.source("a")
    other = engine.source("b")
    src.fade({"par-1": {"intensity": 100}}, 2.0)
    src.fade({"par-2": {"intensity": 100}}, 1.0, delay_s=1.0)
    other.fade({"rack-1": {"dimmer_1": 100}}, 2.0)
    assert src.pause(t0 + 0.5) and not src.pause(t0 + 0.6)
    for t in (t0 + 0.5, t0 + 1.5, t0 + 30.0):
        engine.render(t)
        assert slot(engine, 1, 1) == 64 and slot(engine, 1, 9) == 0, t  # held where it stood
    assert slot(engine, 2, 1) == 255  # another source's fade went on
    assert src.fading(t0 + 30.0) and engine.status()["sources"][0]["paused"]
    assert src.resume(t0 + 30.0) and not src.resume(t0 + 31.0)
    engine.render(t0 + 30.5)  # 1.0 s of the 2.0 s fade now, and the delay has run out
    assert slot(engine, 1, 1) == 128 and slot(engine, 1, 9) == 0
    engine.render(t0 + 31.0)
    assert slot(engine, 1, 1) == 191 and slot(engine, 1, 9) == 128
    engine.render(t0 + 31.5)
    assert slot(engine, 1, 1) == 255 and slot(engine, 1, 9) == 255
    assert not src.fading(t0 + 31.5)


def test_changes_while_paused_snap_but_fades_wait(engine: LightingEngine, clock: Clock) -> None:
    t0 = clock.t
    src = engine.source("a")
    src.pause(t0)
    src.fade({"par-1": {"intensity": 100}}, 0.0, now=t0 + 1.0)  # a snap shows at once
    src.fade({"par-2": {"intensity": 100}}, 2.0, now=t0 + 1.0)  # a fade holds at its start
    src.release(["par-1"], fade_s=0.0, now=t0 + 2.0)  # a 0 s release lets go at once
    engine.render(t0 + 5.0)
    assert slot(engine, 1, 1) == 0 and slot(engine, 1, 9) == 0
    src.resume(t0 + 10.0)
    engine.render(t0 + 11.0)
    assert slot(engine, 1, 9) == 128


def test_a_paused_release_holds_too(engine: LightingEngine, clock: Clock) -> None:
    t0 = clock.t
    src = engine.source("a")
    src.set(
        {"par-1": {"intensity": 100}},
    )
    src.release(fade_s=2.0, now=t0)
    src.pause(t0 + 1.0)
    engine.render(t0 + 9.0)
    assert slot(engine, 1, 1) == 128 and src.driven() == ["par-1"]
    src.resume(t0 + 9.0)
    engine.render(t0 + 10.0)
    assert slot(engine, 1, 1) == 0 and src.driven() == []


def test_tracking_values_persist_until_changed(engine: LightingEngine, clock: Clock) -> None:
    src = engine.source("a")
    src.set({"par-1": {"intensity": 50}})
    clock.t += 1
    src.set({"par-2": {"intensity": 70}})  # a later cue changes something else
    engine.render(clock.t + 100)
    assert slot(engine, 1, 1) == 128 and slot(engine, 1, 9) == round(0.7 * 255)


def test_release_fades_back_to_lower_sources_and_defaults(
    engine: LightingEngine, clock: Clock
) -> None:
    engine.source("base", 50).set({"par-1": {"intensity": 20, "red": 0}})
    top = engine.source("top", 100)
    top.set({"par-1": {"intensity": 100, "red": 100}, "par-2": {"red": 0}})
    t0 = clock.t
    assert top.release(["par-1", "par-2"], fade_s=2.0) == 3
    engine.render(t0 + 1.0)  # half-way between top and base
    assert slot(engine, 1, 1) == round(255 * 0.6)
    assert slot(engine, 1, 2) == 128
    assert slot(engine, 1, 10) == 128  # par-2 red falls back to its default (255)
    engine.render(t0 + 2.0)
    assert slot(engine, 1, 1) == 51 and slot(engine, 1, 2) == 0 and slot(engine, 1, 10) == 255
    assert top.driven() == []
    assert top.release() == 0


def test_release_by_attribute_and_unknowns(engine: LightingEngine) -> None:
    src = engine.source("a")
    src.set({"led_par": {"intensity": 100, "red": 10}})
    assert src.release(["led_par"], ["red"]) == 2
    engine.render()
    assert slot(engine, 1, 1) == 255 and slot(engine, 1, 2) == 255
    with pytest.raises(LightingError, match="no attribute"):
        src.release(["par-1"], ["pan"])
    with pytest.raises(LightingError, match="no fixture or group 'ghost'"):
        src.release(["ghost"])


def test_a_fade_during_a_release_starts_from_the_output(
    engine: LightingEngine, clock: Clock
) -> None:
    src = engine.source("a")
    src.set({"par-1": {"intensity": 100}})
    t0 = clock.t
    src.release(fade_s=2.0)
    clock.t = t0 + 1.0  # output at 50 %
    src.fade({"par-1": {"intensity": 100}}, 1.0)
    engine.render(t0 + 1.0)
    assert slot(engine, 1, 1) == 128
    engine.render(t0 + 3.0)
    assert slot(engine, 1, 1) == 255


def test_group_targets_apply_to_members_with_the_attribute(engine: LightingEngine) -> None:
    engine.patch.add_group("mixed", ["par-1", "head-1"])
    engine.source("a").set({"mixed": {"intensity": 100}})
    engine.render()
    assert slot(engine, 1, 1) == 255
    with pytest.raises(LightingError, match="no fixture of group 'mixed' has attribute 'zzz'"):
        engine.source("a").set({"mixed": {"zzz": 1}})


# --- masters ------------------------------------------------------------------------------------


def test_masters_scale_intensities_only(engine: LightingEngine) -> None:
    engine.source("a").set({"par-1": {"intensity": 100, "red": 100}, "par-2": {"intensity": 100}})
    engine.set_fader("grand", 0.5)
    engine.set_fader("par-2", 0.5)
    engine.render()
    assert slot(engine, 1, 1) == 128 and slot(engine, 1, 2) == 255
    assert slot(engine, 1, 9) == 64
    engine.set_fader("led_par", 0.0)
    engine.render()
    assert slot(engine, 1, 1) == 0 and slot(engine, 1, 9) == 0
    assert engine.fixture_output("par-1")["intensity"] == 0.0


@pytest.mark.parametrize("level", [-0.1, 1.01, math.nan, math.inf, "1", None, True])
def test_fader_refuses_bad_levels(engine: LightingEngine, level: Any) -> None:
    with pytest.raises(LightingError, match="fader level"):
        engine.set_fader("grand", level)


def test_fader_refuses_unknown_names(engine: LightingEngine) -> None:
    with pytest.raises(LightingError, match="no fixture or group 'nope'"):
        engine.set_fader("nope", 0.5)


# --- DMX input ----------------------------------------------------------------------------------


class FakeInput:
    """Stands for SacnInput/ArtNetInput's ``merged``; the real ones are tested on sockets."""

    def __init__(self) -> None:
        self.frames: dict[int, np.ndarray[Any, Any]] = {}

    def merged(self, universe: int, now: float | None = None) -> np.ndarray[Any, Any] | None:
        return self.frames.get(universe)


def test_console_input_merges_as_a_source(engine: LightingEngine, clock: Clock) -> None:
    console = FakeInput()
    engine.add_input("console", [console], priority=100)
    engine.source("list", 100).set({"par-1": {"intensity": 50, "red": 10}})
    frame = np.zeros(512, np.uint8)
    frame[0] = 200  # par-1 intensity: HTP with the playback
    frame[1] = 20  # par-1 red, changed after the playback set it: LTP takes it
    frame[22], frame[23] = 0x12, 0x34  # head-1 dimmer, 16-bit
    frame[300] = 77  # an unpatched channel passes through
    console.frames[1] = frame
    clock.t += 1
    engine.render()
    assert slot(engine, 1, 1) == 200 and slot(engine, 1, 2) == 20
    assert slot(engine, 1, 23) == 0x12 and slot(engine, 1, 24) == 0x34
    assert slot(engine, 1, 301) == 77
    clock.t += 1
    engine.source("list", 100).set({"par-1": {"red": 100}})  # later than the console's change
    engine.render()
    assert slot(engine, 1, 2) == 255
    del console.frames[1]  # the console goes away: its channels fall back
    engine.render()
    assert slot(engine, 1, 1) == 128 and slot(engine, 1, 301) == 0


# --- hostile input ------------------------------------------------------------------------------

BAD_VALUES: list[tuple[Mapping[str, Any], str]] = [
    ({"ghost": {"intensity": 1}}, "no fixture or group 'ghost'"),
    ({"par-1": {"pan": 1}}, "has no attribute 'pan'"),
    ({"par-1": {"intensity": 101}}, "par-1.intensity"),
    ({"par-1": {"intensity": math.nan}}, "not a finite number"),
    ({"par-1": {"intensity": math.inf}}, "par-1.intensity"),
    ({"par-1": {"intensity": "full"}}, "not 'full'"),
    ({"par-1": {"strobe": 256}}, "whole number 0..255"),
    ({"par-1": {"strobe": 1.5}}, "whole number"),
    ({"par-1": 5}, "must be a mapping"),
]


@pytest.mark.parametrize(("targets", "message"), BAD_VALUES)
def test_bad_targets_are_refused_and_change_nothing(
    engine: LightingEngine, targets: Mapping[str, Any], message: str
) -> None:
    src = engine.source("a")
    src.set({"par-1": {"intensity": 30}})
    with pytest.raises(LightingError, match=message):
        src.fade(targets, 1.0)
    engine.render()
    assert slot(engine, 1, 1) == round(0.3 * 255)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, 1e9, "1", None, True])
def test_bad_times_and_curves_are_refused(engine: LightingEngine, bad: Any) -> None:
    src = engine.source("a")
    with pytest.raises(LightingError, match="fade_s"):
        src.fade({"par-1": {"intensity": 1}}, bad)
    with pytest.raises(LightingError, match="delay_s"):
        src.fade({"par-1": {"intensity": 1}}, 1.0, delay_s=bad)
    with pytest.raises(LightingError, match="fade_s"):
        src.release(fade_s=bad)
    with pytest.raises(LightingError, match="unknown curve 'cubic'"):
        src.fade({"par-1": {"intensity": 1}}, 1.0, curve="cubic")


def test_rate_is_validated() -> None:
    for bad in (0, -44, math.nan, 1e6):
        with pytest.raises(LightingError, match="rate_hz"):
            LightingEngine(make_patch(), rate_hz=bad)


# --- the loop -----------------------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.frames: list[dict[int, bytes]] = []
        self.five = asyncio.Event()

    async def send_frame(self, frame: Mapping[int, Any]) -> None:
        self.frames.append({u: bytes(d) for u, d in frame.items()})
        if len(self.frames) >= 5:
            self.five.set()


async def test_the_loop_sends_whole_frames_and_counts_them() -> None:
    sink = Sink()
    engine = LightingEngine(make_patch(), sink, rate_hz=200)
    engine.source("a").set({"rack-1": {"dimmer_3": 100}})
    task = asyncio.create_task(engine.run())
    await asyncio.wait_for(sink.five.wait(), 10)
    engine.stop()
    await task
    assert set(sink.frames[-1]) == {1, 2, 3}
    assert sink.frames[-1][2][2] == 255 and len(sink.frames[-1][2]) == 512
    status = engine.status()
    assert status["stats"]["frames"] == len(sink.frames)
    assert status["fixtures"]["rack-1"]["output"]["dimmer_3"] == 100.0


async def test_deadlines_advance_by_the_period_and_skip_when_far_behind() -> None:
    """Against a fake clock: each frame's deadline is the previous plus one period, whatever
    the time the frame took; a stall longer than a period skips the missed frames."""
    t = [0.0]

    def clock() -> float:
        return t[0]

    starts: list[float] = []

    class SlowSink:
        async def send_frame(self, frame: Mapping[int, Any]) -> None:
            starts.append(t[0])
            t[0] += 0.004 if len(starts) != 3 else 0.05  # frame 3 stalls for 2+ periods

    engine: LightingEngine

    async def fake_sleep(delay: float) -> None:
        t[0] += delay
        if len(starts) >= 6:
            engine.stop()
        await asyncio.sleep(0)

    engine = LightingEngine(make_patch(), SlowSink(), rate_hz=50, clock=clock, sleep=fake_sleep)
    await engine.run()
    assert starts[:3] == pytest.approx([0.0, 0.02, 0.04])
    # frame 3 ended at 0.094: the deadlines 0.06 and 0.08 are skipped, the next is 0.10
    assert starts[3:6] == pytest.approx([0.10, 0.12, 0.14])
    assert engine.stats.skipped == 2
    assert engine.stats.frames == len(starts)


async def test_a_change_goes_out_at_once_in_an_early_frame() -> None:
    """At 1 Hz the next deadline is a second away: a snap, a release and a fader move each go
    out in an extra frame long before it (a GO is on the wire after its command path, not up
    to a period later); a fade with a delay waits, as there is nothing new to show yet."""
    sink = Sink()
    engine = LightingEngine(make_patch(), sink, rate_hz=1)
    task = asyncio.create_task(engine.run())
    try:
        await asyncio.wait_for(_frames(sink, 1), 5)  # the regular frame at t=0
        src = engine.source("a")
        src.set({"rack-1": {"dimmer_3": 100}})
        await asyncio.wait_for(_frames(sink, 2), 0.5)
        assert sink.frames[-1][2][2] == 255
        src.fade({"rack-1": {"dimmer_3": 0}}, 0.0, delay_s=0.2)
        await asyncio.sleep(0.05)
        assert len(sink.frames) == 2  # a delayed change sends nothing early
        await asyncio.sleep(0.1)  # early frames are spaced: let the next change go out alone
        engine.set_fader("grand", 0.5)
        await asyncio.wait_for(_frames(sink, 3), 0.5)
        assert engine.stats.early == 2 and engine.stats.frames == 1  # early ones not in jitter
    finally:
        engine.stop()
        await task


async def _frames(sink: Sink, n: int) -> None:
    while len(sink.frames) < n:  # noqa: ASYNC110 (the sink has no event per frame count)
        await asyncio.sleep(0.001)
