"""SMPTE timecode arithmetic, the chase clock and timecode triggers (pure, simulated time)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.timecode import (
    ChaseClock,
    ChaseConfig,
    ChaseEvent,
    ChaseState,
    Firing,
    FrameRate,
    Timecode,
    TimecodeError,
    TimecodeInput,
    TriggerScheduler,
)
from drivers.dmx.artnet import ArtTimeCode
from drivers.midi.wire import MtcTime

DF = FrameRate.FPS_29_97_DF
F25 = FrameRate.FPS_25


# -- Timecode ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("label", "frames"),
    [
        ("00:00:59;29", 1799),
        ("00:01:00;02", 1800),  # ;00 and ;01 are skipped
        ("00:09:59;29", 17981),
        ("00:10:00;00", 17982),  # every tenth minute keeps them
        ("00:10:00;01", 17983),
        ("00:11:00;02", 17982 + 1800),
        ("01:00:00;00", 107892),
        ("23:59:59;29", 24 * 107892 - 1),
    ],
)
def test_drop_frame_labels(label: str, frames: int) -> None:
    tc = Timecode.parse(label)
    assert tc.rate is DF
    assert tc.to_frames() == frames
    assert Timecode.from_frames(frames, DF) == tc
    assert str(tc) == label


def test_drop_frame_skipped_labels_refused() -> None:
    with pytest.raises(TimecodeError, match="skips frames 00 and 01"):
        Timecode.parse("00:01:00;00")
    with pytest.raises(TimecodeError, match="skips"):
        Timecode(0, 59, 0, 1, DF)
    Timecode(0, 50, 0, 0, DF)  # a tenth minute is fine


def test_drop_frame_real_time() -> None:
    # One hour of drop-frame labels is 3.6 s short of an hour of 29.97 frames.
    hour = Timecode.parse("01:00:00;00")
    assert hour.to_seconds() == pytest.approx(3600 - 0.0036, abs=1e-3)
    assert Timecode.from_seconds(hour.to_seconds(), DF) == hour
    assert Timecode.from_seconds(0.5, F25) == Timecode(0, 0, 0, 12, F25)
    assert Timecode.from_seconds(3600.0, FrameRate.FPS_24) == Timecode(1, 0, 0, 0, FrameRate.FPS_24)


@pytest.mark.parametrize("rate", list(FrameRate))
def test_frames_round_trip_every_rate(rate: FrameRate) -> None:
    for n in (0, 1, rate.frames_per_day // 3, rate.frames_per_day - 1):
        assert Timecode.from_frames(n, rate).to_frames() == n
    assert Timecode.from_frames(rate.frames_per_day, rate).to_frames() == 0  # wraps at 24 h
    assert Timecode.from_frames(-1, rate).to_frames() == rate.frames_per_day - 1


@given(st.sampled_from(list(FrameRate)), st.integers(0, 24 * 3600 * 30))
def test_frames_round_trip_property(rate: FrameRate, n: int) -> None:
    n %= rate.frames_per_day
    tc = Timecode.from_frames(n, rate)
    assert tc.to_frames() == n
    assert Timecode.parse(str(tc), rate) == tc
    assert (tc + 1).to_frames() == (n + 1) % rate.frames_per_day


@pytest.mark.parametrize(
    "text", ["", "1:2:3", "00:00:00:25", "24:00:00:00", "00:60:00:00", "aa:bb:cc:dd"]
)
def test_bad_labels(text: str) -> None:
    with pytest.raises(TimecodeError):
        Timecode.parse(text, F25)


def test_rates_and_convert() -> None:
    assert FrameRate.parse("29.97df") is DF and FrameRate.from_code(1) is F25
    with pytest.raises(TimecodeError):
        FrameRate.from_code(4)
    with pytest.raises(TimecodeError):
        FrameRate.parse("60")
    assert Timecode(1, 2, 3, 24, F25).convert(FrameRate.FPS_30) == Timecode(
        1, 2, 3, 28, FrameRate.FPS_30
    )
    assert Timecode(0, 1, 0, 0, F25).convert(DF) == Timecode(0, 1, 0, 2, DF)


# -- chase clock -----------------------------------------------------------------------------
START = Timecode(1, 0, 0, 0, F25)
FPS = 25.0


def run_source(
    clock: ChaseClock,
    *,
    start_frame: int,
    t0: float,
    frames: int,
    jitter_s: float = 0.0,
    seed: int = 1,
) -> float:
    """Feed one sample per frame (±jitter arrival) and return the last true time."""
    rng = random.Random(seed)
    t = t0
    for i in range(frames):
        t = t0 + i / FPS
        clock.feed(Timecode.from_frames(start_frame + i, F25), t + rng.uniform(-jitter_s, jitter_s))
    return t


def true_position(start_frame: int, t0: float, now: float) -> float:
    return start_frame + (now - t0) * FPS


def test_chase_with_jitter_tracks_within_a_few_ms() -> None:
    clock = ChaseClock()
    t0 = 1000.0
    start = START.to_frames()
    last = run_source(clock, start_frame=start, t0=t0, frames=200, jitter_s=0.005)
    errors = []
    for k in range(1, 20):
        now = last + k * 0.001
        reading = clock.read(now)
        assert reading.state is ChaseState.RUNNING
        assert reading.position is not None
        errors.append(abs(reading.position - true_position(start, t0, now)) / FPS)
    assert max(errors) < 0.005  # seconds; raw ±5 ms arrival jitter is smoothed
    assert clock.read(last + 0.0011).timecode == Timecode.from_frames(start + 199, F25)
    assert clock.events == {ChaseEvent.LOCKED: 1}


def test_chase_never_steps_back_while_running() -> None:
    clock = ChaseClock()
    rng = random.Random(7)
    start = START.to_frames()
    previous = -1.0
    for i in range(300):
        t = 50.0 + i / FPS
        clock.feed(Timecode.from_frames(start + i, F25), t + rng.uniform(-0.005, 0.005))
        pos = clock.position(t + 0.01)
        assert pos is not None and pos >= previous
        previous = pos


def test_dropout_freewheels_then_stops() -> None:
    events: list[ChaseEvent] = []
    clock = ChaseClock(ChaseConfig(freewheel_s=1.0), on_event=lambda e, _r: events.append(e))
    start = START.to_frames()
    last = run_source(clock, start_frame=start, t0=0.0, frames=100, jitter_s=0.005)
    # 4 frame periods without a sample: freewheel, still extrapolating.
    now = last + 0.5
    reading = clock.read(now)
    assert reading.state is ChaseState.FREEWHEEL
    assert reading.position == pytest.approx(true_position(start, 0.0, now), abs=0.2)
    assert clock.poll(now) == [ChaseEvent.FREEWHEEL]
    # Freewheel ends 1.0 s after the dropout was detected: stopped, position held there.
    end = last + 4 / FPS + 1.0
    reading = clock.read(end + 5.0)
    assert reading.state is ChaseState.STOPPED
    assert reading.position == pytest.approx(true_position(start, 0.0, end), abs=0.2)
    assert clock.poll(end + 5.0) == [ChaseEvent.LOST]
    assert events == [ChaseEvent.LOCKED, ChaseEvent.FREEWHEEL, ChaseEvent.LOST]


def test_short_dropout_reacquires_without_relocate() -> None:
    clock = ChaseClock()
    start = START.to_frames()
    run_source(clock, start_frame=start, t0=0.0, frames=50)
    generation = clock.generation
    # 10 frames missing, then the source carries on where it would be.
    assert clock.feed(Timecode.from_frames(start + 60, F25), 60 / FPS) is ChaseEvent.REACQUIRED
    assert clock.generation == generation
    assert clock.state(60 / FPS + 0.01) is ChaseState.RUNNING


def test_relocate_forward_and_backward() -> None:
    clock = ChaseClock()
    start = START.to_frames()
    last = run_source(clock, start_frame=start, t0=0.0, frames=50)
    g = clock.generation
    target = Timecode(2, 0, 0, 0, F25)
    assert clock.feed(target, last + 1 / FPS) is ChaseEvent.RELOCATED
    assert clock.generation == g + 1
    assert clock.read(last + 1 / FPS).timecode == target
    back = Timecode(0, 59, 0, 0, F25)
    assert clock.feed(back, last + 2 / FPS) is ChaseEvent.RELOCATED
    assert clock.read(last + 2 / FPS + 0.001).timecode == back


def test_repeated_frame_is_a_stop_and_advance_a_start() -> None:
    clock = ChaseClock()
    start = START.to_frames()
    last = run_source(clock, start_frame=start, t0=0.0, frames=25)
    held = Timecode.from_frames(start + 24, F25)
    events = [clock.feed(held, last + k / FPS) for k in range(1, 5)]
    assert ChaseEvent.STOPPED in events
    assert clock.state(last + 10) is ChaseState.STOPPED  # stopped does not freewheel or lose
    assert clock.read(last + 10).timecode == held
    assert clock.feed(held + 1, last + 11) is ChaseEvent.STARTED
    assert clock.state(last + 11.01) is ChaseState.RUNNING


def test_locate_is_stopped_at_the_position() -> None:
    clock = ChaseClock()
    assert clock.locate(START, 5.0) is ChaseEvent.LOCKED
    assert clock.state(9.0) is ChaseState.STOPPED
    assert clock.read(9.0).timecode == START
    g = clock.generation
    assert clock.locate(Timecode(1, 30, 0, 0, F25), 10.0) is ChaseEvent.RELOCATED
    assert clock.generation == g + 1


def test_midnight_is_not_a_relocate() -> None:
    clock = ChaseClock()
    day = F25.frames_per_day
    run_source(clock, start_frame=day - 25, t0=0.0, frames=50)
    assert clock.events == {ChaseEvent.LOCKED: 1}
    assert clock.read(50 / FPS).timecode == Timecode(0, 0, 1, 0, F25)


def test_rate_change_relocates() -> None:
    clock = ChaseClock()
    clock.feed(START, 0.0)
    assert clock.feed(Timecode(1, 0, 0, 0, FrameRate.FPS_30), 0.04) is ChaseEvent.RELOCATED
    assert clock.rate is FrameRate.FPS_30


def test_chase_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="window"):
        ChaseConfig(window=1)
    with pytest.raises(ValueError, match="dropout_frames"):
        ChaseConfig(dropout_frames=0)


# -- triggers -------------------------------------------------------------------------------
def make_scheduler(**kwargs: bool) -> tuple[ChaseClock, TriggerScheduler, list[Firing]]:
    clock = ChaseClock()
    fired: list[Firing] = []
    return clock, TriggerScheduler(clock, on_fire=fired.append, **kwargs), fired


def play(clock: ChaseClock, sched: TriggerScheduler, start: int, t0: float, n: int) -> float:
    t = t0
    for i in range(n):
        t = t0 + i / FPS
        clock.feed(Timecode.from_frames(start + i, F25), t)
        sched.poll(t + 0.002)
    return t


def test_triggers_fire_once_in_order() -> None:
    clock, sched, fired = make_scheduler()
    own: list[Firing] = []
    sched.add(Timecode(1, 0, 1, 0, F25), "main", "2")
    sched.add(Timecode(1, 0, 0, 10, F25), "main", "1", callback=own.append)
    sched.add(Timecode(1, 0, 0, 0, F25), "main", "0")  # exactly the lock position
    sched.add(Timecode(0, 59, 0, 0, F25), "main", "before")
    play(clock, sched, START.to_frames(), 0.0, 50)
    assert [f.trigger.cue for f in fired] == ["0", "1", "2"]
    assert [f.trigger.cue for f in own] == ["1"]
    assert all(0 <= f.late_frames < 1.5 for f in fired)
    assert [t.cue for t in sched.armed()] == ["before"]


def test_backward_relocate_does_not_refire_until_rearmed() -> None:
    clock, sched, fired = make_scheduler()
    sched.add(Timecode(1, 0, 0, 10, F25), "main", "1")
    last = play(clock, sched, START.to_frames(), 0.0, 30)
    assert len(fired) == 1
    play(clock, sched, START.to_frames(), last + 0.04, 30)  # relocate back and play again
    assert len(fired) == 1
    sched.rearm()
    play(clock, sched, START.to_frames(), last + 5.0, 30)
    assert len(fired) == 2


def test_rearm_on_backward_option() -> None:
    clock, sched, fired = make_scheduler(rearm_on_backward=True)
    sched.add(Timecode(1, 0, 0, 10, F25), "main", "1")
    last = play(clock, sched, START.to_frames(), 0.0, 30)
    play(clock, sched, START.to_frames(), last + 0.04, 30)
    assert len(fired) == 2


def test_forward_relocate_skips_and_keeps_armed() -> None:
    clock, sched, fired = make_scheduler()
    sched.add(Timecode(1, 0, 5, 0, F25), "main", "skipped")
    last = play(clock, sched, START.to_frames(), 0.0, 10)
    play(clock, sched, Timecode(1, 0, 10, 0, F25).to_frames(), last + 0.04, 10)
    assert fired == []
    assert [t.cue for t in sched.armed()] == ["skipped"]


def test_triggers_fire_during_freewheel_not_when_stopped() -> None:
    clock, sched, fired = make_scheduler()
    sched.add(Timecode(1, 0, 2, 0, F25), "main", "fw")
    sched.add(Timecode(1, 0, 10, 0, F25), "main", "late")
    last = play(clock, sched, START.to_frames(), 0.0, 25)  # to 01:00:00:24
    for k in range(1, 200):
        sched.poll(last + k * 0.02)  # freewheel 2 s by default, then stopped
    assert [f.trigger.cue for f in fired] == ["fw"]
    assert clock.state(last + 4.0) is ChaseState.STOPPED


def test_trigger_with_another_rate_and_callback_errors_counted() -> None:
    clock, sched, _fired = make_scheduler()

    def broken(_f: Firing) -> None:
        raise RuntimeError("boom")

    sched.add(Timecode(1, 0, 0, 15, FrameRate.FPS_30), "main", "x", callback=broken)
    play(clock, sched, START.to_frames(), 0.0, 20)
    assert sched.callback_errors == 1
    assert sched.fired() == ["main/x@01:00:00:15"]
    assert sched.seconds_until_next(1.0) is None


def test_seconds_until_next() -> None:
    clock, sched, _ = make_scheduler()
    sched.add(Timecode(1, 0, 2, 0, F25), "main", "1")
    last = play(clock, sched, START.to_frames(), 0.0, 25)
    wait = sched.seconds_until_next(last)
    assert wait == pytest.approx(2.0 - 24 / FPS, abs=0.01)


# -- driver bridge -------------------------------------------------------------------------
def test_timecode_input_counts_refusals() -> None:
    clock = ChaseClock()
    source = TimecodeInput(clock)
    source.on_artnet(ArtTimeCode(1, 0, 0, 0, 1, stream_id=3), 0.0, "10.0.0.1:6454")
    assert source.ignored == 1 and clock.rate is None
    source.on_artnet(ArtTimeCode(0, 1, 0, 0, 2), 0.0, "10.0.0.1:6454")  # a skipped DF label
    assert source.errors == 1 and "10.0.0.1" in source.last_error
    source.on_artnet(ArtTimeCode(1, 0, 0, 0, 1), 0.0)
    assert clock.read(0.0).timecode == START
    source.on_mtc(MtcTime(1, 0, 0, 0, 1, False, 1.75), 1.0)
    assert clock.read(1.0).position == pytest.approx(START.to_frames() + 1.75)
    source.on_mtc(MtcTime(2, 0, 0, 0, 1, True, 0.0), 2.0)
    assert clock.state(2.0) is ChaseState.STOPPED
    assert source.accepted == 3


def test_mtc_start_after_full_frame_locate_is_a_start() -> None:
    clock = ChaseClock()
    source = TimecodeInput(clock)
    source.on_mtc(MtcTime(1, 0, 0, 0, 1, True, 0.0), 0.0)
    g = clock.generation
    source.on_mtc(MtcTime(1, 0, 0, 0, 1, False, 1.75), 1.07)  # play from the located time
    assert clock.state(1.08) is ChaseState.RUNNING
    assert clock.generation == g
    assert clock.events[ChaseEvent.STARTED] == 1
