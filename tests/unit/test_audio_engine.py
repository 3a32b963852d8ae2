"""The audio driver's pure parts: channel map and counters of the callback, configuration and
device matching. No PortAudio here (importing sounddevice would initialise it in the test
process); the real stream is tested in tests/integration/test_audio_jack.py."""

from __future__ import annotations

import tracemalloc
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.audio import AudioConfig, AudioDevice, CallbackEngine, DeviceNotFound, match_device
from drivers.audio.engine import N_SLOTS, Block, Slot
from drivers.model import AudioTransport


@dataclass
class Flags:
    """Stands in for sounddevice.CallbackFlags."""

    input_underflow: bool = False
    input_overflow: bool = False
    output_underflow: bool = False
    output_overflow: bool = False
    priming_output: bool = False

    def __bool__(self) -> bool:
        return any(vars(self).values())


NO_FLAGS = Flags()


class Quiet(Flags):
    """No flags, and a __bool__ that allocates nothing (for the allocation test)."""

    def __bool__(self) -> bool:
        return False


def engine_for(config: AudioConfig, process: object) -> tuple[CallbackEngine, np.ndarray]:
    stats = np.zeros(N_SLOTS)
    return CallbackEngine(config, process, stats), stats  # type: ignore[arg-type]


def blocks(config: AudioConfig, seed: int = 0) -> tuple[Block, Block]:
    rng = np.random.default_rng(seed)
    indata = rng.standard_normal((config.blocksize, config.device_inputs)).astype(np.float32)
    outdata = np.full((config.blocksize, config.device_outputs), 9.0, dtype=np.float32)
    return indata, outdata


channel_maps = st.lists(st.integers(1, 12), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(
    input_map=channel_maps,
    output_map=channel_maps.map(lambda m: list(dict.fromkeys(m))),
    frames=st.integers(16, 80),
    seed=st.integers(0, 2**16),
)
def test_channel_map_gathers_and_scatters(
    input_map: list[int], output_map: list[int], frames: int, seed: int
) -> None:
    config = AudioConfig(blocksize=frames, input_map=tuple(input_map), output_map=tuple(output_map))
    seen: list[Block] = []

    def process(inp: Block, out: Block) -> None:
        seen.append(inp.copy())
        out[:] = np.arange(1, config.n_out + 1, dtype=np.float32)[None, :] + inp[:, :1]

    engine, stats = engine_for(config, process)
    indata, outdata = blocks(config, seed)
    engine(indata, outdata, frames, None, NO_FLAGS)

    expected_in = indata[:, [c - 1 for c in input_map]]
    np.testing.assert_array_equal(seen[0], expected_in)
    for j, ch in enumerate(output_map):
        np.testing.assert_array_equal(outdata[:, ch - 1], (j + 1) + expected_in[:, 0])
    unmapped = sorted(set(range(1, config.device_outputs + 1)) - set(output_map))
    for ch in unmapped:
        assert not outdata[:, ch - 1].any(), f"device output {ch} is not mapped: must be silent"
    assert stats[Slot.CALLBACKS] == 1 and stats[Slot.FRAMES] == frames
    assert stats[Slot.PROCESSOR_ERRORS] == 0


def test_processor_failures_are_silent_counted_then_bypassed() -> None:
    config = AudioConfig(blocksize=32, max_consecutive_failures=3)
    calls = {"n": 0}

    def process(inp: Block, out: Block) -> None:
        calls["n"] += 1
        out.fill(0.5)
        if calls["n"] in (2, 4, 5, 6):  # one failure, a success, then three in a row
            raise RuntimeError("bad block")

    engine, stats = engine_for(config, process)
    for block in range(1, 9):
        indata, outdata = blocks(config, block)
        engine(indata, outdata, 32, None, NO_FLAGS)
        failed_or_bypassed = block in (2, 4, 5, 6) or block > 6
        assert (not outdata.any()) if failed_or_bypassed else (outdata == 0.5).all(), block
    assert stats[Slot.PROCESSOR_ERRORS] == 4
    assert stats[Slot.BYPASSED] == 1
    assert calls["n"] == 6, "a bypassed processor is not called again"
    assert engine.last_error == "RuntimeError: bad block"


def test_consecutive_count_resets_on_success() -> None:
    config = AudioConfig(blocksize=16, max_consecutive_failures=2)
    calls = {"n": 0}

    def process(inp: Block, out: Block) -> None:
        calls["n"] += 1
        if calls["n"] % 2:
            raise ValueError("every other block")

    engine, stats = engine_for(config, process)
    for _ in range(10):
        engine(*blocks(config), 16, None, NO_FLAGS)
    assert stats[Slot.PROCESSOR_ERRORS] == 5 and stats[Slot.BYPASSED] == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_output_is_a_failure(bad: float) -> None:
    config = AudioConfig(blocksize=16)

    def process(inp: Block, out: Block) -> None:
        out.fill(0.25)
        out[3, 1] = bad

    engine, stats = engine_for(config, process)
    indata, outdata = blocks(config)
    engine(indata, outdata, 16, None, NO_FLAGS)
    assert not outdata.any()
    assert stats[Slot.PROCESSOR_ERRORS] == 1
    assert "NaN" in engine.last_error


def test_xrun_flags_are_counted_separately() -> None:
    config = AudioConfig(blocksize=16)
    engine, stats = engine_for(config, lambda inp, out: None)
    for flags in [
        Flags(input_underflow=True),
        Flags(input_overflow=True),
        Flags(input_overflow=True),
        Flags(output_underflow=True, output_overflow=True),
        Flags(priming_output=True),
        NO_FLAGS,
    ]:
        engine(*blocks(config), 16, None, flags)
    assert stats[Slot.INPUT_UNDERFLOWS] == 1
    assert stats[Slot.INPUT_OVERFLOWS] == 2
    assert stats[Slot.OUTPUT_UNDERFLOWS] == 1
    assert stats[Slot.OUTPUT_OVERFLOWS] == 1
    assert stats[Slot.PRIMING_BLOCKS] == 1


def test_a_block_of_the_wrong_size_is_silent_and_counted() -> None:
    config = AudioConfig(blocksize=32)
    called = []
    engine, stats = engine_for(config, lambda inp, out: called.append(1))
    indata = np.ones((20, 2), dtype=np.float32)
    outdata = np.ones((20, 2), dtype=np.float32)
    engine(indata, outdata, 20, None, NO_FLAGS)
    assert not outdata.any() and not called
    assert stats[Slot.ODD_BLOCKS] == 1


def test_stats_array_is_checked() -> None:
    with pytest.raises(ValueError, match="float64"):
        CallbackEngine(AudioConfig(), lambda i, o: None, np.zeros(3))


def test_steady_state_allocates_no_arrays() -> None:
    """After warm-up, a block through the engine creates no buffers (tracemalloc sees numpy's
    allocations): what remains are CPython's small objects from its free lists."""
    config = AudioConfig(blocksize=128, input_map=(8, 1, 3, 5), output_map=(8, 7, 6, 5))

    def gain(inp: Block, out: Block) -> None:
        np.multiply(inp, 0.5, out=out)

    engine, _ = engine_for(config, gain)
    indata, outdata = blocks(config)
    quiet = Quiet()
    for _ in range(50):
        engine(indata, outdata, 128, None, quiet)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(500):
            engine(indata, outdata, 128, None, quiet)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The smallest buffer the engine could make is one [128, 4] float32 block: 2 KiB plus header.
    # Under that, what is left is a few small objects (floats, argument tuples) at a time.
    block_bytes = 128 * 4 * 4
    assert peak - base < block_bytes, f"{peak - base} bytes allocated at peak"


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input_map": ()}, "at least one input and one output"),
        ({"output_map": ()}, "at least one input and one output"),
        ({"input_map": (0, 1)}, "numbered 1..128"),
        ({"output_map": (129,)}, "numbered 1..128"),
        ({"output_map": (1, 2, 1)}, r"output\(s\) \[1\] named twice"),
        ({"samplerate": 1000}, "greater than or equal to 8000"),
        ({"blocksize": 8}, "greater than or equal to 16"),
        ({"jack_server": "a b"}, "pattern"),
        ({"max_consecutive_failures": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_config_is_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AudioConfig.model_validate(fields)


def test_duplicate_inputs_are_allowed_and_device_width_follows_the_map() -> None:
    config = AudioConfig(input_map=(3, 3), output_map=(2,))
    assert (config.n_in, config.n_out) == (2, 1)
    assert (config.device_inputs, config.device_outputs) == (3, 2)


def test_config_from_transport() -> None:
    transport = AudioTransport(kind="audio", device="JACK", blocksize=256, inputs=3, outputs=1)
    config = AudioConfig.from_transport(transport, jack_server="x")
    assert config.input_map == (1, 2, 3) and config.output_map == (1,)
    assert (config.device, config.blocksize, config.jack_server) == ("JACK", 256, "x")


# --- device matching ------------------------------------------------------------------------

DEVICES = [
    AudioDevice(0, "system", "JACK Audio Connection Kit", 2, 2, 48000.0),
    AudioDevice(1, "USB Audio: Stage Box (hw:1,0)", "ALSA", 16, 16, 48000.0),
    AudioDevice(2, "USB Audio: Monitor (hw:2,0)", "ALSA", 0, 2, 44100.0),
]


@pytest.mark.parametrize(
    ("wanted", "inputs", "outputs", "index"),
    [
        ("system", 2, 2, 0),
        ("JACK", 1, 1, 0),
        ("stage box", 8, 8, 1),
        ("USB Audio", 8, 8, 1),  # ambiguous by name, but only one has the channels
        ("system, JACK Audio Connection Kit", 1, 2, 0),
        (None, 1, 1, 1),
    ],
)
def test_match_device(wanted: str | None, inputs: int, outputs: int, index: int) -> None:
    assert match_device(DEVICES, wanted, inputs, outputs, default=1).index == index


def test_unknown_device_lists_the_available_ones() -> None:
    with pytest.raises(DeviceNotFound) as err:
        match_device(DEVICES, "Dante", 2, 2)
    text = str(err.value)
    assert "no audio device matches 'Dante'" in text
    assert "[0] system, JACK Audio Connection Kit (2 in, 2 out)" in text
    assert "[1] USB Audio: Stage Box (hw:1,0), ALSA (16 in, 16 out)" in text


@pytest.mark.parametrize(
    ("wanted", "inputs", "outputs", "message"),
    [
        ("system", 4, 2, "too few channels: the channel map needs 4 in, 2 out"),
        ("USB Audio", 0, 1, "matches several devices"),
        (None, 1, 1, "no default audio device"),
    ],
)
def test_device_errors(wanted: str | None, inputs: int, outputs: int, message: str) -> None:
    with pytest.raises(DeviceNotFound, match=message):
        match_device(DEVICES, wanted, inputs, outputs)


def test_no_devices_at_all_says_so() -> None:
    with pytest.raises(DeviceNotFound, match="no devices at all"):
        match_device([], "system", 1, 1)


@settings(max_examples=200, deadline=None)
@given(wanted=st.one_of(st.none(), st.text(max_size=40)), n=st.integers(0, 200))
def test_matching_raises_only_device_not_found(wanted: str | None, n: int) -> None:
    try:
        device = match_device(DEVICES, wanted, n, n, default=0)
    except DeviceNotFound:
        return
    assert device.max_inputs >= n and device.max_outputs >= n
