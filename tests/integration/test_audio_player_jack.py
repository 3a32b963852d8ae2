"""Sound files through the audio driver's stream on a real JACK server (dummy backend).

The stream's processor is the file player (drivers/audio/player.py) in the audio host process;
commands go down the host's control channel. A separate JACK client (tests/peers/jack_capture.py,
its own process, no Flytower code) records the stream's output ports, and the tests look at
what it heard: the level (±0.5 dB), the channels, the loop, the fade when the play is
cancelled. Timing is never asserted: tests wait for outcomes with generous timeouts.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from controller.journal import JournalEvent, Origin, Result, SourceKind
from controller.playback import LoopClock, Playback, PlaybackError
from controller.show import loads_show
from drivers.audio import AudioConfig, AudioDriver
from drivers.audio.player import PlayerFactory
from edge.audio import PlayerLink, ServiceAudio
from tests.conftest import wait_until
from tests.peers.jack import JackServer, SignalFactory
from tests.peers.jack_capture import JackCapture

pytestmark = pytest.mark.integration

RATE = 48000
OPEN_S = 30.0
PERIOD = 48  # one cycle of 1 kHz at 48 kHz


@pytest.fixture(scope="module")
def jack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JackServer]:
    with JackServer(tmp_path_factory.mktemp("jack")) as server:
        yield server


def tone(path: Path, seconds: float, amplitude: float = 0.5, rate: int = RATE) -> Path:
    n = round(seconds * rate)
    sf.write(path, amplitude * np.sin(2 * np.pi * 1000 * np.arange(n) / rate), rate)
    return path


def envelope(x: np.ndarray) -> np.ndarray:
    """Peak of each 1 ms (one cycle of the tone)."""
    n = len(x) // PERIOD
    peaks: np.ndarray = np.abs(x[: n * PERIOD]).reshape(n, PERIOD).max(axis=1)
    return peaks


def rms_db(x: np.ndarray) -> float:
    return 20 * math.log10(math.sqrt(float(np.mean(x.astype(np.float64) ** 2))))


class Rig:
    def __init__(self, driver: AudioDriver, link: PlayerLink, capture: JackCapture) -> None:
        self.driver, self.link, self.capture = driver, link, capture

    async def record_until(self, frames: int) -> None:
        async def enough() -> bool:
            return self.capture.frames() >= frames

        await wait_until(enough, 30, f"{frames} captured frames")


@pytest.fixture
async def rig(jack: JackServer) -> AsyncIterator[Rig]:
    link = PlayerLink("fx")
    cfg = AudioConfig.model_validate(
        {"device": "JACK", "jack_server": jack.name, "output_map": (1, 2)}
    )
    driver = AudioDriver("fx", cfg, PlayerFactory(), on_event=link.on_event)
    link.driver = driver
    async with driver:

        async def running() -> bool:
            return driver.snapshot().callbacks > 0

        await wait_until(running, OPEN_S, "the stream to run")
        with JackCapture(jack.name, channels=2) as capture:
            for k in range(2):
                port = await asyncio.to_thread(jack.portaudio_port, f":out_{k}")
                await asyncio.to_thread(capture.connect, port, k)
            await asyncio.sleep(0.2)  # the connections take effect at the next JACK cycle
            yield Rig(driver, link, capture)


async def test_a_tone_arrives_at_its_level_on_its_channel(rig: Rig, tmp_path: Path) -> None:
    """A 1 kHz tone at 0.5 (-6.02 dBFS peak) played at -6 dB on output 2 only: the capture
    hears it on channel 2 at -15.05 dB RMS (±0.5 dB), for its length, and nothing on 1."""
    path = tone(tmp_path / "tone.wav", 1.0)
    # The length is judged on a play during which JACK lost no cycle: an xrun (the machine not
    # running the graph in time) drops a period from the capture whatever the player does.
    # Up to three plays; each one with xruns is said.
    for attempt in range(3):
        xruns = rig.driver.snapshot().xruns
        before = rig.capture.frames()
        ended = await rig.link.play(path, -6.0, False, 0.0, channels=(2,))
        assert not ended.stopped and ended.seconds == pytest.approx(1.0, abs=128 / RATE)
        await rig.record_until(rig.capture.frames() + RATE // 4)
        x = rig.capture.array()[before:]
        env = envelope(x[:, 1])
        on = np.flatnonzero(env > 0.05)
        assert on.size, "the tone never arrived"
        lost = rig.driver.snapshot().xruns - xruns
        if not lost:
            break
        print(f"play {attempt + 1}: {lost} xrun(s) during it, {on[-1] - on[0] + 1} ms heard")
    assert not lost, "JACK lost cycles during every one of three plays"
    assert on[-1] - on[0] + 1 == pytest.approx(1000, abs=2), "1 s of tone, in 1 ms periods"
    steady = x[(on[0] + 50) * PERIOD : (on[-1] - 50) * PERIOD, 1]
    expected = 20 * math.log10(0.5 / math.sqrt(2)) - 6.0
    print(f"\nplayed at {expected:.2f} dB RMS, captured at {rms_db(steady):.2f} dB RMS")
    assert abs(rms_db(steady) - expected) <= 0.5
    spectrum = np.abs(np.fft.rfft(steady * np.hanning(steady.size)))
    assert abs(np.argmax(spectrum) * RATE / steady.size - 1000) < 3
    assert np.max(np.abs(x[:, 0])) < 1e-6, "output 1 is not in the map: silent"


async def test_a_loop_plays_on_until_cancelled_then_fades_out(rig: Rig, tmp_path: Path) -> None:
    """A 0.25 s tone (whole cycles) looped on both outputs sounds without a gap for well over
    its length; cancelling the awaiting task fades it out over 50 ms, then silence."""
    path = tone(tmp_path / "loop.wav", 0.25)
    before = rig.capture.frames()
    task = asyncio.create_task(rig.link.play(path, 0.0, True, 0.02, channels=(1, 2)))

    async def loops() -> bool:
        heard = np.flatnonzero(np.abs(rig.capture.array()[before:, 0]) > 0.01)
        return heard.size > 0 and rig.capture.frames() - before > heard[0] + int(1.5 * RATE)

    await wait_until(loops, 30, "1.5 s of the loop")
    assert not task.done(), "a loop never ends by itself"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.link.playing == []
    await rig.record_until(rig.capture.frames() + RATE // 4)
    x = rig.capture.array()[before:]
    for ch in (0, 1):
        env = envelope(x[:, ch])
        on = np.flatnonzero(env > 0.01)
        assert on.size, f"nothing on channel {ch + 1}"
        first, last = on[0], on[-1]
        full = np.flatnonzero(env > 0.5 * 0.95)
        sustained = env[full[0] : full[-1] + 1]
        assert sustained.size > 1000, "more than four times the file's length"
        assert sustained.min() > 0.5 * 10 ** (-0.5 / 20), "no gap at the loop points"
        fade_out = env[full[-1] + 1 : last + 1]
        fade_in = env[first : full[0]]
        print(f"\nchannel {ch + 1}: fade in {fade_in.size} ms, fade out {fade_out.size} ms")
        assert 45 <= fade_out.size <= 51, "a 50 ms linear fade-out"
        assert np.all(np.diff(fade_out) <= 1e-3), "falling all the way"
        assert 17 <= fade_in.size <= 21, "a 20 ms fade-in"
        assert np.max(np.abs(x[(last + 2) * PERIOD :, ch])) < 1e-6, "silence after the fade"


async def test_missing_and_corrupt_files_fail_with_the_reason(rig: Rig, tmp_path: Path) -> None:
    with pytest.raises(PlaybackError, match="file not found"):
        await rig.link.play(tmp_path / "absent.wav", 0.0, False, 0.0)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(PlaybackError, match="unreadable file"):
        await rig.link.play(bad, 0.0, False, 0.0)
    stereo = tmp_path / "st.wav"
    sf.write(stereo, np.zeros((100, 2)), RATE)
    with pytest.raises(PlaybackError, match="channels do not match"):
        await rig.link.play(stereo, 0.0, False, 0.0, channels=(1, 2, 1))
    assert rig.driver.snapshot().processor_errors == 0, "the stream did not notice"


async def test_a_stream_without_a_player_answers_control_errors(jack: JackServer) -> None:
    events: list[tuple[object, ...]] = []
    cfg = AudioConfig.model_validate({"device": "JACK", "jack_server": jack.name})
    async with AudioDriver("plain", cfg, SignalFactory(("silence",)), on_event=events.append) as d:

        async def running() -> bool:
            return d.streaming

        await wait_until(running, OPEN_S, "the stream to run")
        d.control({"anything": 1})

        async def answered() -> bool:
            return bool(events)

        await wait_until(answered, 10, "the control error")
    assert events[0] == ("control_error", "this stream's processor takes no control messages")
    assert events[-1] == ("stream_lost", "stopped")


SHOW = """
version = 1
[show]
title = "sound"

[[lists]]
id = "sfx"
go_debounce_s = 0

[[lists.cues]]
number = 1
actions = [{ kind = "audio.play", file = "sounds/tone.wav", level_db = -6, output = "fx" }]

[[lists.cues]]
number = 2
actions = [{ kind = "audio.play", file = "sounds/loop.wav", loop = true, fade_s = 0.02 }]

[[lists.cues]]
number = 3
actions = [{ kind = "audio.play", file = "sounds/absent.wav" }]

[[lists.cues]]
number = 4
actions = [{ kind = "audio.play", file = "sounds/tone.wav", output = "monitors" }]

[[lists.cues]]
number = 5
actions = [{ kind = "audio.soundfield", mode = "concert" }]
"""


class _Journal:
    def __init__(self) -> None:
        self.events: list[JournalEvent] = []

    async def append(self, event: JournalEvent) -> int:
        self.events.append(event)
        return len(self.events)


class _NoDevices:
    async def execute(self, device: str, command: str, args: object, origin: Origin) -> None:
        raise AssertionError("no device commands in this show")

    async def write(self, device: str, point: str, value: float, origin: Origin) -> None:
        raise AssertionError("no device writes in this show")

    def read(self, device: str, point: str) -> None:
        return None

    async def wait_for(self, device: str, point: str, condition: object) -> None:
        raise AssertionError("no waits in this show")


async def test_cues_play_sounds_through_the_playback_engine(rig: Rig, tmp_path: Path) -> None:
    """A show's ``audio.play`` cues through the cue engine and ``ServiceAudio``: a one-shot cue
    completes when its sound has ended; a looped cue runs until stopped, and the stop fades it
    out; a missing file, an unknown output and the sound field fail with their reasons."""
    (tmp_path / "sounds").mkdir()
    tone(tmp_path / "sounds" / "tone.wav", 0.5)
    tone(tmp_path / "sounds" / "loop.wav", 0.25)
    journal = _Journal()
    devices = _NoDevices()
    pb = Playback(
        loads_show(SHOW),
        lighting=None,
        devices=devices,  # type: ignore[arg-type]
        journal=journal,
        clock=LoopClock(),
        audio=ServiceAudio({"fx": rig.link, "not-audio": object()}, media_dir=tmp_path),
    )
    user = Origin(SourceKind.USER, "test")

    def running() -> list[dict[str, object]]:
        return list(pb.snapshot()["lists"][0]["running"])

    try:
        before = rig.capture.frames()
        await pb.go("sfx", origin=user)
        assert running(), "the cue runs while its sound plays"

        async def complete() -> bool:
            return not running()

        await wait_until(complete, 30, "cue 1 to complete at the end of its sound")
        await rig.record_until(rig.capture.frames() + RATE // 10)
        x = rig.capture.array()[before:]
        assert np.max(np.abs(x[:, 1])) < 1e-6, "the mono file plays on output 1 only"
        on = np.flatnonzero(envelope(x[:, 0]) > 0.05)
        assert on[-1] - on[0] + 1 == pytest.approx(500, abs=2)
        assert not [e for e in journal.events if e.result is Result.FAILED]

        before = rig.capture.frames()
        await pb.go("sfx", origin=user)  # cue 2: the loop
        await rig.record_until(before + RATE)
        assert running(), "a loop keeps its cue running"
        await pb.stop("sfx", origin=user)
        assert rig.link.playing == [], "the stop waited for the voice to fade out"
        await rig.record_until(rig.capture.frames() + RATE // 10)
        env = envelope(rig.capture.array()[before:, 0])
        full = np.flatnonzero(env > 0.5 * 0.95)
        last = np.flatnonzero(env > 0.01)[-1]
        assert 45 <= last - full[-1] <= 51, "stopped with the 50 ms fade"

        for _ in range(3):  # cues 3, 4, 5 fail with their reasons
            await pb.go("sfx", origin=user)
            await wait_until(complete, 30, "the cue to fail")
        reasons = [e.reason for e in journal.events if e.result is Result.FAILED]
        assert len(reasons) == 3, reasons
        assert "file not found" in str(reasons[0]) and "absent.wav" in str(reasons[0])
        assert "no audio output 'monitors' (audio outputs: fx)" in str(reasons[1])
        assert "no sound-field engine" in str(reasons[2])
    finally:
        await pb.close()
