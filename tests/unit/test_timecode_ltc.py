"""LTC decoding from audio generated here from SMPTE 12M (biphase mark, sync word 0x3FFD)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.timecode import ChaseClock, ChaseState, FrameRate, Timecode, TimecodeInput
from drivers.audio.ltc import LtcDecoder

SR = 48000


def ltc_bits(tc: Timecode) -> list[int]:
    """80 bits of one LTC frame, in time order (bit 0 first)."""
    bits = [0] * 80

    def put(start: int, count: int, value: int) -> None:
        for i in range(count):
            bits[start + i] = (value >> i) & 1

    put(0, 4, tc.frames % 10)
    put(8, 2, tc.frames // 10)
    bits[10] = int(tc.rate.drop_frame)
    put(16, 4, tc.seconds % 10)
    put(24, 3, tc.seconds // 10)
    put(32, 4, tc.minutes % 10)
    put(40, 3, tc.minutes // 10)
    put(48, 4, tc.hours % 10)
    put(56, 2, tc.hours // 10)
    put(4, 4, 0xA)  # some user bits, to make sure they are ignored
    bits[64:80] = [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1]
    return bits


def ltc_audio(
    start: Timecode, frames: int, *, level: float = 0.5, noise: float = 0.0
) -> np.ndarray:
    """Biphase-mark audio: a transition at every bit start, another mid-cell for a 1."""
    fps = float(start.rate.fps)
    bit_s = 1 / (80 * fps)
    edges: list[float] = []
    for k in range(frames):
        tc = start + k
        for j, bit in enumerate(ltc_bits(tc)):
            t = (k * 80 + j) * bit_s
            edges.append(t)
            if bit:
                edges.append(t + bit_s / 2)
    edges.append(frames * 80 * bit_s)  # the next frame's first edge ends the last bit
    n = int(frames * SR / fps) + 10
    times = np.arange(n) / SR
    flips = np.searchsorted(np.asarray(edges), times, side="right")
    signal = level * np.where(flips % 2 == 0, 1.0, -1.0)
    # A gentle low-pass (rounded edges, as from a real line) and optional noise.
    kernel = np.ones(3) / 3
    signal = np.convolve(signal, kernel, mode="same")
    rng = np.random.default_rng(5)
    return signal + noise * rng.standard_normal(n)


@pytest.mark.parametrize(
    ("rate", "start"),
    [
        (FrameRate.FPS_24, "01:00:00:00"),
        (FrameRate.FPS_25, "10:59:59:20"),
        (FrameRate.FPS_29_97_DF, "00:00:59;25"),
        (FrameRate.FPS_30, "23:59:59:25"),
    ],
)
def test_decodes_every_rate(rate: FrameRate, start: str) -> None:
    tc = Timecode.parse(start, rate)
    audio = ltc_audio(tc, 20, noise=0.02)
    decoder = LtcDecoder(SR)
    got = []
    for chunk in np.array_split(audio, 37):  # odd buffer sizes
        got += decoder.feed(chunk)
    labels = [
        Timecode(f.hours, f.minutes, f.seconds, f.frames, FrameRate.from_code(f.rate_code))
        for f in got
    ]
    assert len(labels) >= 17  # the first frame or two teach the bit period
    assert labels == [labels[0] + i for i in range(len(labels))]
    assert all(t.rate is rate for t in labels)
    assert labels[-1] == tc + 19
    # The sync word of frame k ends at the start of frame k + 1.
    ends = [f.end_sample for f in got]
    assert ends[-1] == pytest.approx(20 * SR / float(rate.fps), abs=3)


def test_inverted_polarity_and_dropout_recovers() -> None:
    tc = Timecode(2, 0, 0, 0, FrameRate.FPS_25)
    audio = -ltc_audio(tc, 30)
    audio[int(10 * SR / 25) : int(14 * SR / 25)] = 0.0  # 4 frames of silence
    decoder = LtcDecoder(SR)
    assert decoder.feed(audio[: int(10 * SR / 25)])  # frames before the dropout
    assert decoder.errors == 0
    got = decoder.feed(audio[int(10 * SR / 25) :])
    labels = [str(Timecode(f.hours, f.minutes, f.seconds, f.frames, FrameRate.FPS_25)) for f in got]
    assert labels[-1] == "02:00:01:04"
    assert "02:00:00:12" not in labels  # lost in the silence
    assert "02:00:00:20" in labels  # resynchronised on the next sync words
    assert decoder.errors == 1 and "gap" in decoder.last_error


def test_feeds_the_chase_clock() -> None:
    tc = Timecode(1, 0, 0, 0, FrameRate.FPS_25)
    clock = ChaseClock()
    decoder = LtcDecoder(SR)
    source = TimecodeInput(clock)
    for frame in decoder.feed(ltc_audio(tc, 50)):
        source.on_ltc(frame, frame.end_sample / SR)
    reading = clock.read(2.0)
    assert reading.state is ChaseState.RUNNING
    assert reading.position == pytest.approx(tc.to_frames() + 50, abs=0.1)


@settings(max_examples=30)
@given(st.binary(min_size=0, max_size=4000))
def test_garbage_audio_never_crashes(raw: bytes) -> None:
    decoder = LtcDecoder(SR)
    samples = np.frombuffer(raw[: len(raw) // 2 * 2], dtype=np.int16) / 32768.0
    for f in decoder.feed(samples):
        assert 0 <= f.hours <= 23


def test_bad_sample_rate() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        LtcDecoder(0)
