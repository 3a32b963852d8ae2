"""Sweep measurement (dsp/sweep.py, dsp/measure.py): analysis time, the processor's cost per
block, and delivering the recording over the audio host's pipe or as a file.

Figures, each with an in-run reference:

1. **Analysis** of a 15 s recording (2 outputs x 2 inputs, 3 sweeps of 1.4 s, 0.9 s IRs, the
   HIL test's plan) of a synthetic room: ``analyze_recording`` wall time, against one real FFT
   pair (``scipy.fft.rfft`` + ``irfft``) of one input's whole recording.
2. **Processor**, 48 kHz / 128-frame blocks, 2 in / 2 out, a run in progress: time per block,
   as a share of the block period, against a bare ``np.copyto`` of the same block.
3. **Delivery** of 20 s x 8 inputs (31 MB) from a spawned child: how long the parent is blocked
   receiving ``MeasurementDone`` over a pipe (on the service's event loop, in real use), against
   the file route (event + ``load_recording``, which the parent can run in a thread); reference:
   ``np.copyto`` of the same array in the parent.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from multiprocessing.connection import Connection

import numpy as np
import scipy.fft as sfft  # type: ignore[import-untyped]
from scipy.signal import fftconvolve  # type: ignore[import-untyped]

from dsp.measure import (
    MeasurementDone,
    MeasurementProcessor,
    Recording,
    analyze_recording,
    load_recording,
    plan_measurement,
    save_recording,
)

RATE = 48000
BLOCK = 128


class _Fmt:
    samplerate, blocksize, n_in, n_out = RATE, BLOCK, 2, 2


def _room(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(0.8 * RATE)) / RATE
    h = 0.03 * rng.standard_normal(t.size) * 10 ** (-3 * t / 0.7)
    return np.concatenate([np.zeros(800), h])


def _median(f: object, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def analysis() -> None:
    plan = plan_measurement(RATE, (1, 2), (1, 2), sweeps=3, sweep_s=1.5, ir_s=0.9, level_db=-30)
    played = np.zeros((plan.total_frames, 2))
    s = plan.sweep.signal
    for o in range(2):
        for j in range(plan.sweeps):
            start = plan.sweep_start(o, j)
            played[start : start + s.size, o] = s
    y = 1e-4 * np.random.default_rng(0).standard_normal((plan.total_frames, 2))
    for o in range(2):
        for i in range(2):
            y[:, i] += fftconvolve(played[:, o], _room(o * 2 + i))[: plan.total_frames]
    rec = Recording(RATE, (1, 2), y.astype(np.float32))
    analyze_recording(plan, rec)  # warm caches (filter designs, FFT plans)
    took = _median(lambda: analyze_recording(plan, rec), 5)
    x = y[:, 0]
    n = sfft.next_fast_len(x.size, real=True)
    ref = _median(lambda: sfft.irfft(sfft.rfft(x, n), n), 20)
    print(
        f"   analysis, {plan.seconds:.1f} s, 2 x 2, 3 sweeps: {1000 * took:.0f} ms "
        f"({took / ref:.0f} x one FFT pair of one input's recording, {1000 * ref:.1f} ms)"
    )


def processor() -> None:
    plan = plan_measurement(RATE, (1, 2), (1, 2), sweeps=3, sweep_s=2.0, ir_s=1.0)
    proc = MeasurementProcessor(plan, _Fmt(), start=True)
    inp = np.ones((BLOCK, 2), np.float32)
    out = np.zeros((BLOCK, 2), np.float32)
    blocks = plan.total_frames // BLOCK - 10

    def run() -> None:
        for _ in range(blocks):
            proc.process(inp, out)

    def ref() -> None:
        for _ in range(blocks):
            np.copyto(out, inp)

    proc.process(inp, out)
    took = _median(run, 1) / blocks
    base = _median(ref, 3) / blocks
    period = BLOCK / RATE
    print(
        f"   processor, 2 in / 2 out, 128 frames: {1e6 * took:.1f} us a block, "
        f"{100 * took / period:.2f} % of one core ({took / base:.1f} x np.copyto of the block)"
    )


def _child(conn: Connection, mode: str, path: str, frames: int, channels: int) -> None:
    data = np.random.default_rng(0).standard_normal((frames, channels)).astype(np.float32)
    rec = Recording(RATE, tuple(range(1, channels + 1)), data, "bench")
    conn.recv()
    if mode == "pipe":
        conn.send(("event", MeasurementDone("bench", rec)))
    else:
        save_recording(path, rec)
        conn.send(("event", MeasurementDone("bench", None, path)))


def delivery(path: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    frames, channels = 20 * RATE, 8
    size = frames * channels * 4 / 1e6
    ref_array = np.zeros((frames, channels), np.float32)
    dst = np.empty_like(ref_array)
    ref = _median(lambda: np.copyto(dst, ref_array), 5)
    for mode in ("pipe", "file"):
        blocked, loads = [], []
        for _ in range(3):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_child, args=(child, mode, path, frames, channels))
            proc.start()
            child.close()
            parent.send("go")
            parent.poll(60)
            t0 = time.perf_counter()
            event = parent.recv()
            blocked.append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            if mode == "file":
                load_recording(event[1].path)
            loads.append(time.perf_counter() - t1)
            proc.join()
        b, ld = statistics.median(blocked), statistics.median(loads)
        extra = f", then load {1000 * ld:.0f} ms in a thread" if mode == "file" else ""
        print(
            f"   delivery of {size:.0f} MB by {mode}: parent blocked {1000 * b:.1f} ms"
            f"{extra} ({b / ref:.1f} x a {1000 * ref:.1f} ms in-memory copy of it)"
        )


async def run() -> None:
    import tempfile

    analysis()
    processor()
    with tempfile.TemporaryDirectory() as tmp:
        delivery(f"{tmp}/rec.npz")


if __name__ == "__main__":
    import asyncio

    asyncio.run(run())
