"""Realtime audio callback: 8 in / 8 out, 48 kHz, 128-frame blocks on JACK's dummy backend.

Figure: the share of one core spent in the stream callback (channel map + a stand-in processor:
gain and a 64-tap FIR per channel via scipy.signal.lfilter with state) over ~10 s of audio,
xruns in that time, and PortAudio's own CPU-load estimate. Reference, same run: the same
processing on the same block shapes in a tight loop without a stream (its share of one core for
the same audio time); also shown, that loop through the callback engine. The ratio says what
the stream path (PortAudio, sounddevice's wrapping, the channel map and counters, preemption by
other processes) costs on top of the processing itself. DESIGN.md's target for the real reverb
engine is <= 30 % of one core with no underruns.

Starts and stops its own jackd (``-C 8 -P 8 -p 128``).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import signal

from drivers.audio import (
    AudioConfig,
    AudioDriver,
    AudioStats,
    CallbackEngine,
    Processor,
    StreamFormat,
)
from drivers.audio.engine import N_SLOTS
from tests.peers.jack import JackServer

CHANNELS = 8
BLOCK = 128
RATE = 48000
SECONDS = 10.0
TAPS = 64


class GainFir:
    """The stand-in for dsp/'s reverb: gain, then a 64-tap FIR per channel with carried state."""

    def __init__(self, channels: int) -> None:
        self.b = signal.firwin(TAPS, 0.25).astype(np.float32)
        self.zi = np.zeros((TAPS - 1, channels), dtype=np.float32)
        self.gain = np.float32(0.8)

    def __call__(self, inp: NDArray[np.float32], out: NDArray[np.float32]) -> None:
        np.multiply(inp, self.gain, out=out)
        y, self.zi = signal.lfilter(self.b, 1.0, out, axis=0, zi=self.zi)
        out[:] = y


@dataclass(frozen=True)
class GainFirFactory:
    def __call__(self, fmt: StreamFormat) -> Processor:
        return GainFir(fmt.n_out)


class _NoFlags:
    """What sounddevice passes when nothing went wrong."""

    input_underflow = input_overflow = output_underflow = output_overflow = False
    priming_output = False

    def __bool__(self) -> bool:
        return False


def tight_loop_share(blocks: int, cfg: AudioConfig, through_engine: bool) -> float:
    """Share of one core the processing takes for ``blocks`` blocks of audio, no stream;
    ``through_engine`` adds the callback engine (channel map, checks, counters)."""
    proc = GainFir(CHANNELS)
    rng = np.random.default_rng(1)
    inp = rng.standard_normal((BLOCK, CHANNELS)).astype(np.float32) * 0.1
    out = np.zeros((BLOCK, CHANNELS), dtype=np.float32)
    engine = CallbackEngine(cfg, proc, np.zeros(N_SLOTS))
    flags = _NoFlags()

    def step() -> None:
        if through_engine:
            engine(inp, out, BLOCK, None, flags)
        else:
            proc(inp, out)

    for _ in range(50):
        step()
    t0 = time.perf_counter()
    for _ in range(blocks):
        step()
    return (time.perf_counter() - t0) / (blocks * BLOCK / RATE)


async def run() -> None:
    chans = tuple(range(1, CHANNELS + 1))
    with (
        tempfile.TemporaryDirectory() as tmp,
        JackServer(Path(tmp), inputs=CHANNELS, outputs=CHANNELS, period=BLOCK) as jack,
    ):
        cfg = AudioConfig(
            device="JACK", jack_server=jack.name, blocksize=BLOCK, input_map=chans, output_map=chans
        )
        async with AudioDriver("bench", cfg, GainFirFactory()) as drv:
            for _ in range(600):  # one second of audio to settle, within 30 s
                if drv.snapshot().callbacks >= RATE // BLOCK:
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"the stream did not run: {drv.health.reason}")
            before: AudioStats = drv.snapshot()
            await asyncio.sleep(SECONDS)
            after: AudioStats = drv.snapshot()
            cpu_load = after.cpu_load
    audio_s = (after.frames - before.frames) / RATE
    stream_share = (after.busy_s - before.busy_s) / audio_s
    xruns = after.xruns - before.xruns
    blocks = int(audio_s * RATE / BLOCK)
    ref_share = tight_loop_share(blocks, cfg, through_engine=False)
    engine_share = tight_loop_share(blocks, cfg, through_engine=True)
    print(
        f"   stream callback   {100 * stream_share:5.1f} % of one core over {audio_s:.1f} s "
        f"({after.callbacks - before.callbacks} blocks), xruns {xruns}, "
        f"max callback {1000 * after.busy_max_s:.2f} ms of {1000 * BLOCK / RATE:.2f} ms, "
        f"PortAudio cpu_load {100 * cpu_load:.1f} %"
    )
    print(f"   engine, no stream {100 * engine_share:5.1f} % of one core")
    print(f"   tight loop        {100 * ref_share:5.1f} % of one core  (ref)")
    print(f"   ratio stream/loop {stream_share / ref_share:.2f}")
