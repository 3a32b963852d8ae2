"""The measurement processor wrapping an inner processor (the sound-field engine in the service).

Idle it passes the inner processor through; measuring, the excitation replaces the inner
output on the measurement's outputs (the room plus the enhancement), or every output is muted
(``mute_inner``: the natural room), faded out and back in over one block. Control messages that
are not the measurement's reach the inner processor, and its events come up. No allocation in
the callback, inner processor included.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from dsp.measure import (
    MeasurementDone,
    MeasurementFactory,
    MeasurementPlan,
    MeasurementProcessor,
    MeasurementStarted,
    StartMeasurement,
    plan_measurement,
)
from tests.unit.test_dsp_sweep import worst_block_allocation

FS = 48000
BLOCK = 128


@dataclass
class Fmt:
    samplerate: int = FS
    blocksize: int = BLOCK
    n_in: int = 2
    n_out: int = 3


class Constant:
    """An inner processor: every output at 0.5; it counts blocks and takes ``"ping"``."""

    def __init__(self) -> None:
        self.blocks = 0
        self.events: list[Any] = []

    def __call__(self, inp: np.ndarray, out: np.ndarray) -> None:
        out.fill(0.5)
        self.blocks += 1

    def control(self, payload: Any) -> None:
        if payload != "ping":
            raise TypeError(f"the inner processor takes 'ping', not {payload!r}")
        self.events.append("pong")

    def poll_events(self) -> list[Any]:
        events, self.events = self.events, []
        return events


@dataclass(frozen=True)
class ConstantFactory:
    made: list[int] = field(default_factory=list)

    def __call__(self, fmt: Any) -> Constant:
        return Constant()


def plan(mute: bool) -> MeasurementPlan:
    return plan_measurement(
        FS, (2,), (1,), sweeps=1, sweep_s=0.2, ir_s=0.05, noise_s=0.05, mute_inner=mute
    )


def run_blocks(proc: MeasurementProcessor, blocks: int) -> np.ndarray:
    inp = np.full((BLOCK, 2), 0.01, np.float32)
    out = np.zeros((BLOCK, 3), np.float32)
    played = []
    for _ in range(blocks):
        proc.process(inp, out)
        played.append(out.copy())
    return np.concatenate(played)


def test_idle_passes_the_inner_processor_through() -> None:
    inner = Constant()
    proc = MeasurementProcessor(None, Fmt(), inner=inner)
    out = run_blocks(proc, 3)
    assert np.all(out == 0.5) and inner.blocks == 3


@pytest.mark.parametrize("mute", [False, True])
def test_measuring_replaces_or_mutes_the_inner_output(mute: bool) -> None:
    p = plan(mute)
    inner = Constant()
    proc = MeasurementProcessor(None, Fmt(), inner=inner)
    proc.control(StartMeasurement("m", p))
    blocks = -(-p.total_frames // BLOCK)
    out = run_blocks(proc, blocks + 2)
    assert inner.blocks == blocks + 2  # the inner processor keeps time throughout
    run = out[: p.total_frames]
    excitation = p.excitation()
    np.testing.assert_array_equal(run[:, 1], excitation)  # output 2 carries only the sweep
    if mute:
        ramp = np.linspace(1.0, 0.0, BLOCK, dtype=np.float32)
        np.testing.assert_allclose(run[:BLOCK, 0], 0.5 * ramp, rtol=1e-6)  # faded out
        assert np.all(run[BLOCK:, [0, 2]] == 0.0)
        after = out[blocks * BLOCK :]
        np.testing.assert_allclose(after[:BLOCK, 0], 0.5 * ramp[::-1], rtol=1e-6)  # back in
        assert np.all(after[BLOCK:] == 0.5)
    else:
        assert np.all(run[:, [0, 2]] == 0.5)  # the enhancement plays on
        assert np.all(out[blocks * BLOCK :] == 0.5)  # and the measured output comes back
    events = proc.poll_events()
    assert isinstance(events[0], MeasurementStarted) and isinstance(events[-1], MeasurementDone)


def test_other_control_messages_reach_the_inner_processor() -> None:
    proc = MeasurementFactory(inner=ConstantFactory())(Fmt())
    proc.control("ping")
    assert proc.poll_events() == ["pong"]
    with pytest.raises(TypeError, match="takes 'ping'"):
        proc.control("go")
    bare = MeasurementProcessor(None, Fmt())
    with pytest.raises(TypeError, match="StartMeasurement"):
        bare.control("ping")


def test_mute_inner_must_be_a_bool() -> None:
    from dsp.measure import MeasurementError

    with pytest.raises(MeasurementError, match="mute_inner"):
        plan_measurement(FS, (1,), (1,), sweep_s=0.2, ir_s=0.05, mute_inner=1)  # type: ignore[arg-type]


def test_the_factory_with_an_inner_factory_is_picklable() -> None:
    factory = MeasurementFactory(plan(True), inner=ConstantFactory())
    proc = pickle.loads(pickle.dumps(factory))(Fmt())
    assert isinstance(proc, MeasurementProcessor)
    assert np.all(run_blocks(proc, 1) == 0.5)


@pytest.mark.parametrize("mute", [False, True])
def test_a_wrapped_measurement_allocates_no_arrays(mute: bool) -> None:
    p = plan_measurement(
        FS, (1, 2), (1, 2), sweeps=2, sweep_s=0.5, ir_s=0.2, noise_s=0.2, mute_inner=mute
    )
    proc = MeasurementProcessor(None, Fmt(), inner=Constant())
    inp = np.ones((BLOCK, 2), np.float32)
    out = np.zeros((BLOCK, 3), np.float32)
    for _ in range(20):
        proc.process(inp, out)  # idle, through the inner processor
    proc.control(StartMeasurement("m", p))
    blocks = -(-p.total_frames // BLOCK) + 20  # through the run, its end and the fade back in
    worst = worst_block_allocation(proc, inp, out, blocks)
    assert worst < BLOCK * 4, f"{worst} bytes allocated at peak in a block"
