"""The file player's mixer on arrays: fades, loop, channel map, voice limit, resampling, and
the requests it refuses. The player runs here without a stream: the test calls ``control`` (as
the host's control loop would) and the processor itself (as the callback would)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.audio import StreamFormat
from drivers.audio.player import (
    Ended,
    Failed,
    FailReason,
    FilePlayer,
    Play,
    PlayerFactory,
    Position,
    SetLevel,
    Started,
    Stop,
    StopAll,
)

RATE = 48000
BLOCK = 128


def fmt(n_out: int = 2, block: int = BLOCK) -> StreamFormat:
    return StreamFormat(RATE, block, 1, n_out)


def write(path: Path, data: np.ndarray, rate: int = RATE) -> str:
    sf.write(path, data, rate, subtype="FLOAT")
    return str(path)


def dc(tmp_path: Path, frames: int, channels: int = 1, value: float = 1.0) -> str:
    return write(tmp_path / f"dc-{frames}-{channels}.wav", np.full((frames, channels), value))


def run(player: FilePlayer, blocks: int) -> np.ndarray:
    """Call the processor ``blocks`` times; the output, concatenated: [frames, n_out]."""
    inp = np.zeros((player.fmt.blocksize, player.fmt.n_in), dtype=np.float32)
    out = np.zeros((player.fmt.blocksize, player.fmt.n_out), dtype=np.float32)
    chunks = []
    for _ in range(blocks):
        player(inp, out)
        chunks.append(out.copy())
    return np.concatenate(chunks)


def events(player: FilePlayer) -> list[object]:
    return player.poll_events()


def failed(player: FilePlayer) -> Failed:
    evs = [e for e in events(player) if isinstance(e, Failed)]
    assert len(evs) == 1, evs
    return evs[0]


def test_silent_when_nothing_plays() -> None:
    player = FilePlayer(fmt())
    assert not run(player, 3).any()


def test_level_in_db_on_the_named_channel(tmp_path: Path) -> None:
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(RATE // 10) / RATE)
    player = FilePlayer(fmt(3))
    player.control(Play("a", write(tmp_path / "t.wav", tone), level_db=-6.0, channels=(2,)))
    (started,) = events(player)
    assert started == Started("a", 0.1, 1, RATE)
    out = run(player, 40)
    expected = (tone * 10 ** (-6 / 20)).astype(np.float32)
    np.testing.assert_allclose(out[: len(tone), 1], expected, atol=1e-6)
    assert not out[:, 0].any() and not out[:, 2].any()
    assert not out[len(tone) :].any(), "silence after the end"
    assert events(player)[-1] == Ended("a", False, 0.1)
    assert player.playing == []


@settings(max_examples=60, deadline=None)
@given(
    fade=st.integers(min_value=1, max_value=1000),
    block=st.sampled_from([16, 64, 100, 128, 256]),
    level_db=st.floats(min_value=-40, max_value=6),
)
def test_fade_in_is_linear_and_sample_accurate(fade: int, block: int, level_db: float) -> None:
    """On a constant file the output is the envelope: sample k (1-based) of a fade of N samples
    is exactly g*k/N, whatever the block size; then g."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = dc(Path(d), 3000)
        player = FilePlayer(fmt(1, block))
        player.control(Play("v", path, level_db=level_db, fade_in_s=fade / RATE))
        out = run(player, math.ceil(2000 / block))[:2000, 0]
    g = 10 ** (level_db / 20)
    k = np.arange(1, 2001)
    expected = g * np.minimum(k, fade) / fade
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)


def test_stop_fades_out_from_where_it_is_then_ends(tmp_path: Path) -> None:
    player = FilePlayer(fmt(1))
    player.control(Play("v", dc(tmp_path, RATE), level_db=0.0, fade_in_s=0.01))  # 480 samples
    run(player, 2)  # 256 samples into the fade-in: gain 256/480
    player.control(Stop("v", fade_s=0.005))  # 240 samples down
    out = run(player, 3)[:, 0]
    start = 256 / 480
    expected = np.maximum(start - start * np.arange(1, 385) / 240, 0.0)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.max(np.abs(np.diff(out))) <= start / 240 + 1e-6, "no step bigger than the ramp's"
    evs = events(player)
    assert [e for e in evs if isinstance(e, Ended)] == [
        Ended("v", True, 512 / RATE)
    ]  # the block it ended in
    assert not run(player, 1).any()


def test_set_level_ramps_to_the_new_gain(tmp_path: Path) -> None:
    player = FilePlayer(fmt(1))
    player.control(Play("v", dc(tmp_path, RATE), level_db=0.0))
    run(player, 1)
    player.control(SetLevel("v", level_db=-20.0, fade_s=100 / RATE))
    out = run(player, 2)[:, 0]
    np.testing.assert_allclose(out[99:], 0.1, rtol=1e-6)
    np.testing.assert_allclose(out[0], 1 - 0.9 / 100, rtol=1e-6)


def test_loop_repeats_seamlessly_and_reports_its_position(tmp_path: Path) -> None:
    pattern = np.linspace(-0.5, 0.5, 100)
    player = FilePlayer(fmt(1), report_interval_s=0.0)
    player.control(Play("v", write(tmp_path / "p.wav", pattern), loop=True))
    out = run(player, 10)[:, 0]
    np.testing.assert_allclose(out, np.resize(pattern, out.size), atol=1e-7)
    positions = [e for e in events(player) if isinstance(e, Position)]
    assert positions[-1] == Position("v", (1280 % 100) / RATE, 12)
    player.control(StopAll(fade_s=0.0))
    run(player, 1)
    assert any(isinstance(e, Ended) and e.stopped for e in events(player))


def test_a_loop_shorter_than_a_block(tmp_path: Path) -> None:
    player = FilePlayer(fmt(1))
    player.control(Play("v", write(tmp_path / "s.wav", np.array([0.1, 0.2, 0.3])), loop=True))
    out = run(player, 2)[:, 0]
    np.testing.assert_allclose(out, np.resize([0.1, 0.2, 0.3], 256), atol=1e-7)


def test_channel_maps(tmp_path: Path) -> None:
    stereo = np.stack([np.full(500, 0.25), np.full(500, -0.5)], axis=1)
    path = write(tmp_path / "st.wav", stereo)
    player = FilePlayer(fmt(4))
    player.control(Play("st", path, channels=(4, 2)))
    player.control(Play("mono", dc(tmp_path, 500, value=0.125), channels=(1, 3)))
    out = run(player, 1)
    np.testing.assert_allclose(out[0], [0.125, -0.5, 0.125, 0.25], atol=1e-7)
    player.control(Play("default", path))  # stereo -> outputs 1, 2
    out = run(player, 1)
    np.testing.assert_allclose(out[0], [0.375, -1.0, 0.125, 0.25], atol=1e-7)


@pytest.mark.parametrize(
    ("channels", "n_out", "message"),
    [
        ((1, 2, 3), 4, "the file has 2 channels but the map names 3"),
        ((1,), 4, "the file has 2 channels but the map names 1"),
        (None, 1, "the stream 1 output"),
        ((5,), 4, r"output channel\(s\) \[5\] do not exist"),
        ((2, 2), 4, "repeat"),
        ((), 4, "no output channel"),
    ],
)
def test_channel_mismatch_is_refused(
    tmp_path: Path, channels: tuple[int, ...] | None, n_out: int, message: str
) -> None:
    path = write(tmp_path / "st.wav", np.zeros((100, 2)))
    player = FilePlayer(fmt(n_out))
    player.control(Play("v", path, channels=channels))
    fail = failed(player)
    assert fail.reason is FailReason.CHANNELS
    assert fail.voice == "v"
    import re

    assert re.search(message, fail.text), fail.text
    assert player.playing == []


def test_voice_limit(tmp_path: Path) -> None:
    path = dc(tmp_path, 200, value=0.1)
    player = FilePlayer(fmt(1), max_voices=2)
    player.control(Play("a", path))
    player.control(Play("b", path))
    player.control(Play("c", path))
    fail = failed(player)
    assert (fail.voice, fail.reason) == ("c", FailReason.VOICES)
    np.testing.assert_allclose(run(player, 1)[0, 0], 0.2, atol=1e-7)
    run(player, 1)  # both end (200 samples)
    player.control(Play("c", path))  # the slots are free again
    assert any(isinstance(e, Started) and e.voice == "c" for e in events(player))


def test_resampled_to_the_stream_rate(tmp_path: Path) -> None:
    rate = 44100
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(rate) / rate)
    player = FilePlayer(fmt(1))
    player.control(Play("v", write(tmp_path / "t44.wav", tone, rate)))
    (started,) = events(player)
    assert started == Started("v", 1.0, 1, rate)
    out = run(player, RATE // BLOCK + 2)[:, 0]
    assert not out[RATE:].any()
    mid = out[RATE // 4 : 3 * RATE // 4]
    spectrum = np.abs(np.fft.rfft(mid * np.hanning(mid.size)))
    assert abs(np.argmax(spectrum) * RATE / mid.size - 1000) < 2.5
    rms_db = 20 * math.log10(math.sqrt(np.mean(mid.astype(np.float64) ** 2)) * math.sqrt(2))
    assert abs(rms_db - 20 * math.log10(0.5)) < 0.05


def test_inner_processor_runs_under_the_voices(tmp_path: Path) -> None:
    def inner(inp: np.ndarray, out: np.ndarray) -> None:
        out.fill(0.25)

    player = FilePlayer(fmt(1), inner)
    player.control(Play("v", dc(tmp_path, 1000, value=0.5)))
    np.testing.assert_allclose(run(player, 1)[:, 0], 0.75)


def test_factory_is_picklable_and_builds_a_player() -> None:
    import pickle

    factory = pickle.loads(pickle.dumps(PlayerFactory(max_voices=3)))
    player = factory(fmt())
    assert isinstance(player, FilePlayer)


# --- hostile input --------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    player = FilePlayer(fmt())
    player.control(Play("v", str(tmp_path / "nope.wav")))
    fail = failed(player)
    assert fail.reason is FailReason.NOT_FOUND and "nope.wav" in fail.text


@pytest.mark.parametrize(
    "content", [b"", b"RIFF\x10\x00\x00\x00WAVEjunk", bytes(range(256)) * 40, b"fLaC" + b"\0" * 64]
)
def test_corrupt_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    player = FilePlayer(fmt())
    player.control(Play("v", str(path)))
    assert failed(player).reason is FailReason.UNREADABLE
    assert not run(player, 1).any()


def test_nan_samples_are_refused(tmp_path: Path) -> None:
    player = FilePlayer(fmt())
    player.control(Play("v", write(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2]))))
    fail = failed(player)
    assert fail.reason is FailReason.UNREADABLE and "NaN" in fail.text


def test_too_long_for_the_memory_cap(tmp_path: Path) -> None:
    player = FilePlayer(fmt(), max_bytes=4 * 1000)
    player.control(Play("v", dc(tmp_path, 1001)))
    fail = failed(player)
    assert fail.reason is FailReason.TOO_LONG and "limit" in fail.text


@pytest.mark.parametrize("level", [1000.0, -1e9, float("nan"), float("inf"), 12.5])
def test_absurd_levels_are_refused(tmp_path: Path, level: float) -> None:
    player = FilePlayer(fmt())
    player.control(Play("v", dc(tmp_path, 10), level_db=level))
    assert failed(player).reason is FailReason.LEVEL
    player.control(Play("w", dc(tmp_path, 10000)))
    player.control(SetLevel("w", level))
    assert [e.reason for e in events(player) if isinstance(e, Failed)] == [FailReason.LEVEL]


def test_paths_outside_the_root_or_relative_are_refused(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    outside = dc(tmp_path, 10)
    (media / "link.wav").symlink_to(outside)
    player = FilePlayer(fmt(), root=str(media))
    for path in (outside, str(media / ".." / Path(outside).name), str(media / "link.wav")):
        player.control(Play("v", path))
        assert failed(player).reason is FailReason.BAD_REQUEST
    player.control(Play("v", "dc-10-1.wav"))
    assert "absolute" in failed(player).text


def test_bad_commands_do_not_raise(tmp_path: Path) -> None:
    player = FilePlayer(fmt())
    player.control(("play", "x"))
    assert "unknown player command" in failed(player).text
    player.control(Play("v", dc(tmp_path, 10000)))
    player.control(Play("v", dc(tmp_path, 10000)))
    assert "already playing" in failed(player).text
    player.control(Stop("v", fade_s=-1))
    assert failed(player).reason is FailReason.BAD_REQUEST
    player.control(Stop("unknown"))  # nothing to stop: nothing to say
    assert [e for e in events(player) if isinstance(e, Failed)] == []


class _Inner:
    """An inner processor that takes control messages (the sound-field engine's shape)."""

    def __init__(self) -> None:
        self.got: list[object] = []

    def __call__(self, inp: np.ndarray, out: np.ndarray) -> None:
        out.fill(0.25)

    def control(self, payload: object) -> None:
        if payload == "bad":
            raise ValueError("the inner processor refuses 'bad'")
        self.got.append(payload)

    def poll_events(self) -> list[object]:
        return [("inner", len(self.got))]


def test_other_payloads_go_to_the_inner_processor_and_its_events_come_back() -> None:
    inner = _Inner()
    player = FilePlayer(fmt(), inner=inner)
    player.control(("set_field", 1))
    assert inner.got == [("set_field", 1)]
    assert ("inner", 1) in player.poll_events()
    with pytest.raises(ValueError, match="refuses 'bad'"):  # the host reports a control_error
        player.control("bad")
    player.control(Stop("nobody", 0.0))  # a player command stays the player's
    assert inner.got == [("set_field", 1)]
