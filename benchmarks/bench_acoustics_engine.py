"""Sound-field engine (dsp/engine.py): CPU share per (zones, outputs), warm and in a stream.

Figures, for (zones, outputs) = (1, 2), (1, 8), (10, 2), (10, 8) (every zone on every output:
the worst case; 10 zones fed by 2 input mixes), 48 kHz / 128-frame blocks:

1. **Tight loop** (warm caches), no stream: the share of one core the engine takes, with a
   crossfade running in every zone as well (every zone switching at once: a cue recalling a
   mode everywhere). Reference, same run: a bare numpy copy of the same blocks (``np.copyto``
   of a block into the output), what any Python processor pays for being called at all; the
   ratio is engine / copy. BLAS runs on one thread, as in the audio host
   (``single_threaded_blas``, which ``SoundFieldFactory`` calls).
2. **Stream**: the engine as the audio driver's processor on a real jackd (dummy backend) for
   ``--seconds`` per row (default 20 s as part of ``make bench``; DESIGN.md's figure is 10
   minutes of 8 outputs: ``--minutes 10 --rows 1x8``), with a mode switch in zone z0 every 5
   s, each built in a process of its own as the service builds it (``dsp.engine.build_set`` in
   its design process; ``--build-in-host`` builds in the audio host's control thread, as the
   engine does for a ``SetField`` without ``built``); xruns, the callback's share of one
   core, and percentiles of the processor's own time per block (recorded by ``TimedFactory``
   into shared memory). Reference, same run, right after
   each row: the same stream with a processor that copies its input (xruns and share).

DESIGN.md's target: 8 channels at <= 30 % of one core with no underruns in 10 minutes; issue
7 asks for at least 10 zones on one node.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dsp.engine import (
    EngineConfig,
    SetField,
    SoundFieldEngine,
    SoundFieldFactory,
    ZoneConfig,
    build_set,
    single_threaded_blas,
)
from dsp.field import EarlyPattern, FieldParams, LateParams

RATE = 48000
BLOCK = 128
STREAM_OUTPUTS = 8
STREAM_SECONDS = 20.0
ROWS = ((1, 2), (1, 8), (10, 2), (10, 8))


def field(n_out: int, seed: int = 0, t60_scale: float = 1.0) -> FieldParams:
    """A concert-hall-like field: 4 taps per output within 80 ms, a 2 s late field."""
    rng = np.random.default_rng(seed)
    n = 4 * n_out
    pattern = EarlyPattern(
        rng.uniform(0.005, 0.08, n), rng.uniform(0.05, 0.3, n), np.arange(n) % n_out
    )
    t60 = np.array([2.4, 2.2, 2.0, 1.9, 1.7, 1.4]) * t60_scale
    return FieldParams(n_out, np.full(n_out, 0.3), pattern, LateParams(t60, 0.06), late_db=-6.0)


def engine_config(n_out: int, zones: int) -> EngineConfig:
    outputs = tuple(range(n_out))
    return EngineConfig(
        tuple(ZoneConfig(f"z{i}", (i % 2,), outputs, field(n_out, i)) for i in range(zones))
    )


@dataclass(frozen=True)
class _Shape:
    samplerate: int
    blocksize: int
    n_in: int
    n_out: int


def tight_loop(
    n_out: int, zones: int, blocks: int, fade: bool, repeats: int = 5
) -> tuple[float, float]:
    """(engine share of one core, bare-copy share) for ``blocks`` blocks of audio: the best of
    ``repeats`` runs of each (the machine is shared: the minimum is the engine's own cost).
    ``fade``: every zone crossfades to another field over the whole measurement."""
    single_threaded_blas()
    eng = SoundFieldEngine(engine_config(n_out, zones), _Shape(RATE, BLOCK, 2, n_out))
    rng = np.random.default_rng(1)
    inp = (rng.standard_normal((BLOCK, 2)) * 0.1).astype(np.float32)
    out = np.zeros((BLOCK, n_out), dtype=np.float32)
    wide = np.zeros((BLOCK, n_out), dtype=np.float32)
    for _ in range(50):
        eng(inp, out)
    if fade:  # a crossfade over the whole measurement: two parameter sets run at once
        fade_s = 2 * repeats * blocks * BLOCK / RATE
        for z in range(zones):
            params = field(n_out, 99 + z, 1.3)
            eng.control(SetField(f"z{z}", params, early_fade_s=fade_s, late_fade_s=fade_s))
        for _ in range(2 * zones):  # every set taken up (one slot start per block)
            eng(inp, out)
    engine_s = copy_s = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(blocks):
            eng(inp, out)
        engine_s = min(engine_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(blocks):
            np.copyto(out, wide)
        copy_s = min(copy_s, time.perf_counter() - t0)
    if fade:
        assert all(eng.fading(f"z{z}") for z in range(zones)), "fades must last the whole run"
    audio_s = blocks * BLOCK / RATE
    return engine_s / audio_s, copy_s / audio_s


# --- the stream ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TimedFactory:
    """The sound-field engine, timed per block into shared memory (``times``: a ring of
    ``capacity`` float64 seconds, ``starts``: when each block began, ``time.monotonic``,
    ``count[0]``: blocks so far). Picklable for the spawned audio host; control messages pass
    through to the engine."""

    inner: SoundFieldFactory
    times: Any
    count: Any
    capacity: int
    starts: Any

    def __call__(self, fmt: Any) -> _Timed:
        return _Timed(self.inner(fmt), self)


class _Timed:
    def __init__(self, engine: SoundFieldEngine, spec: TimedFactory) -> None:
        self.engine = engine
        self._times = np.frombuffer(memoryview(spec.times), dtype=np.float64)
        self._starts = np.frombuffer(memoryview(spec.starts), dtype=np.float64)
        self._count = np.frombuffer(memoryview(spec.count), dtype=np.float64)
        self._capacity = spec.capacity
        self._clock = time.monotonic

    def __call__(self, inp: NDArray[np.float32], out: NDArray[np.float32]) -> None:
        t0 = self._clock()
        self.engine(inp, out)
        n = int(self._count[0])
        k = n % self._capacity
        self._times[k] = self._clock() - t0
        self._starts[k] = t0
        self._count[0] = n + 1

    def control(self, payload: Any) -> None:
        self.engine.control(payload)

    def poll_events(self) -> list[Any]:
        return self.engine.poll_events()


@dataclass(frozen=True)
class TimedCopyFactory:
    """The reference processor: copies input 1 to every output, timed like ``TimedFactory``."""

    times: Any
    count: Any
    capacity: int

    def __call__(self, fmt: Any) -> _TimedCopy:
        return _TimedCopy(self)


class _TimedCopy:
    def __init__(self, spec: TimedCopyFactory) -> None:
        self._times = np.frombuffer(memoryview(spec.times), dtype=np.float64)
        self._count = np.frombuffer(memoryview(spec.count), dtype=np.float64)
        self._capacity = spec.capacity
        self._clock = time.perf_counter

    def __call__(self, inp: NDArray[np.float32], out: NDArray[np.float32]) -> None:
        t0 = self._clock()
        np.copyto(out, inp[:, :1])
        n = int(self._count[0])
        self._times[n % self._capacity] = self._clock() - t0
        self._count[0] = n + 1


def timed_copy_factory(capacity: int = 1 << 20) -> TimedCopyFactory:
    ctx = multiprocessing.get_context("spawn")
    return TimedCopyFactory(
        ctx.RawArray(ctypes.c_double, capacity), ctx.RawArray(ctypes.c_double, 1), capacity
    )


def timed_factory(config: EngineConfig, capacity: int = 1 << 20) -> TimedFactory:
    ctx = multiprocessing.get_context("spawn")
    return TimedFactory(
        SoundFieldFactory(config),
        ctx.RawArray(ctypes.c_double, capacity),
        ctx.RawArray(ctypes.c_double, 1),
        capacity,
        ctx.RawArray(ctypes.c_double, capacity),
    )


def block_times(factory: TimedFactory | TimedCopyFactory) -> NDArray[np.float64]:
    """The recorded per-block processor times (the newest ``capacity`` of them)."""
    n = int(np.frombuffer(memoryview(factory.count), dtype=np.float64)[0])
    times = np.frombuffer(memoryview(factory.times), dtype=np.float64)
    return np.array(times[: min(n, factory.capacity)])


@dataclass
class StreamResult:
    audio_s: float
    blocks: int
    xruns: int
    callback_share: float
    busy_max_s: float
    cpu_load: float
    processor_ms: dict[str, float]
    switches: int
    # blocks that began within SWITCH_WINDOW_S after a switch was sent, against all others:
    # (blocks, slower than SLOW_BLOCK_S per 1000, p99 ms, max ms) each
    after_switch: tuple[int, float, float, float] | None = None
    elsewhere: tuple[int, float, float, float] | None = None


SWITCH_WINDOW_S = 0.06  # a switch's work in the audio host (receive, check, swap) is in here
SLOW_BLOCK_S = 0.0015


def switch_windows(
    starts: NDArray[np.float64], times: NDArray[np.float64], sent: list[float]
) -> tuple[tuple[int, float, float, float], tuple[int, float, float, float]] | None:
    """Per-block times in the ``SWITCH_WINDOW_S`` after each switch was sent, and elsewhere
    in the same run: the machine's own noise is in both, a switch's cost only in the first."""
    if not sent or not times.size:
        return None
    at = np.asarray(sent)
    k = np.searchsorted(at, starts, side="right") - 1
    near = (k >= 0) & (starts - at[np.maximum(k, 0)] < SWITCH_WINDOW_S)

    def stats(t: NDArray[np.float64]) -> tuple[int, float, float, float]:
        if not t.size:
            return (0, float("nan"), float("nan"), float("nan"))
        return (int(t.size), 1000 * float(np.mean(t > SLOW_BLOCK_S)),
                1000 * float(np.percentile(t, 99)), 1000 * float(t.max()))  # fmt: skip

    return stats(times[near]), stats(times[~near])


async def stream_run(
    seconds: float,
    jack_dir: Path,
    zones: int = 1,
    switch_every_s: float = 0.0,
    reference: bool = False,
    n_out: int = STREAM_OUTPUTS,
    build_in_host: bool = False,
) -> StreamResult:
    """The engine on jackd's dummy backend for ``seconds``; optionally a mode switch in zone
    z0 every ``switch_every_s`` (so crossfades are part of the run). ``reference``: the same
    stream with a processor that only copies its input block to the outputs (what the
    machine's load alone does to the stream)."""
    from drivers.audio import AudioConfig, AudioDriver
    from tests.peers.jack import JackServer

    outs = tuple(range(1, n_out + 1))
    config = engine_config(n_out, zones)
    factory: TimedFactory | TimedCopyFactory = (
        timed_copy_factory() if reference else timed_factory(config)
    )
    if reference:
        switch_every_s = 0.0
    switches = 0
    sent: list[float] = []
    loop = asyncio.get_running_loop()
    builder = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    with builder, JackServer(jack_dir, inputs=2, outputs=n_out, period=BLOCK) as jack:
        cfg = AudioConfig(
            device="JACK", jack_server=jack.name, blocksize=BLOCK, input_map=(1, 2),
            output_map=outs, stall_timeout_s=5.0,
        )  # fmt: skip
        async with AudioDriver("field", cfg, factory) as drv:
            for _ in range(600):  # one second of audio to settle, within 30 s
                if drv.snapshot().callbacks >= RATE // BLOCK:
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"the stream did not run: {drv.health.reason}")
            before = drv.snapshot()
            n_before = int(np.frombuffer(memoryview(factory.count), dtype=np.float64)[0])
            end = time.monotonic() + seconds
            next_switch = time.monotonic() + switch_every_s
            while (now := time.monotonic()) < end:
                if switch_every_s and now >= next_switch:
                    params = field(n_out, switches + 100, 1.0 + 0.2 * (switches % 2))
                    if build_in_host:
                        payload = SetField("z0", params)
                    else:
                        built = await loop.run_in_executor(
                            builder, build_set, config, cfg.stream_format, "z0", params
                        )
                        payload = SetField.of(built)
                    sent.append(time.monotonic())
                    drv.control(payload)
                    switches += 1
                    next_switch += switch_every_s
                await asyncio.sleep(min(0.2, max(0.0, end - now)))
            after = drv.snapshot()
    times = block_times(factory)
    n_after = int(np.frombuffer(memoryview(factory.count), dtype=np.float64)[0])
    windows = None
    if n_after <= factory.capacity:  # else the ring holds the newest `capacity` blocks
        times = times[n_before:n_after]
        if isinstance(factory, TimedFactory):
            starts = np.frombuffer(memoryview(factory.starts), dtype=np.float64)
            windows = switch_windows(np.array(starts[n_before:n_after]), times, sent)
    audio_s = (after.frames - before.frames) / RATE
    pct = {
        f"p{q}": 1000 * float(np.percentile(times, q)) if times.size else float("nan")
        for q in (50, 90, 99, 99.9)
    }
    pct["max"] = 1000 * float(times.max(initial=0.0))
    return StreamResult(
        audio_s=audio_s,
        blocks=after.callbacks - before.callbacks,
        xruns=after.xruns - before.xruns,
        callback_share=(after.busy_s - before.busy_s) / audio_s if audio_s else float("nan"),
        busy_max_s=after.busy_max_s,
        cpu_load=after.cpu_load,
        processor_ms=pct,
        switches=switches,
        after_switch=windows[0] if windows else None,
        elsewhere=windows[1] if windows else None,
    )


def describe(r: StreamResult) -> str:
    p = r.processor_ms
    return (
        f"{r.audio_s:.1f} s ({r.blocks} blocks), xruns {r.xruns}, callback "
        f"{100 * r.callback_share:.1f} % of one core, max callback {1000 * r.busy_max_s:.2f} ms "
        f"of {1000 * BLOCK / RATE:.2f} ms, PortAudio cpu_load {100 * r.cpu_load:.1f} %, "
        f"mode switches {r.switches}; processor per block p50 {p['p50']:.3f} / p90 "
        f"{p['p90']:.3f} / p99 {p['p99']:.3f} / p99.9 {p['p99.9']:.3f} / max {p['max']:.3f} ms"
        + switch_text(r)
    )


def switch_text(r: StreamResult) -> str:
    if r.after_switch is None or r.elsewhere is None:
        return ""
    (n, slow, p99, top), (n_ref, slow_ref, p99_ref, top_ref) = r.after_switch, r.elsewhere
    return (
        f"\n     blocks within {1000 * SWITCH_WINDOW_S:.0f} ms after a switch ({n}): over "
        f"{1000 * SLOW_BLOCK_S:.1f} ms {slow:.2f} per 1000, p99 {p99:.3f} ms, max {top:.2f} ms; "
        f"the run's other blocks (ref, {n_ref}): {slow_ref:.2f} per 1000, p99 {p99_ref:.3f} "
        f"ms, max {top_ref:.2f} ms; ratio of slow-block rates "
        f"{slow / slow_ref if slow_ref else (float('inf') if slow else 1.0):.1f}"
    )


def parse_rows(text: str) -> tuple[tuple[int, int], ...]:
    """``"1x2,10x8"`` -> ((1, 2), (10, 8)): zones x outputs."""
    rows = []
    for item in text.split(","):
        zones, _, outputs = item.strip().partition("x")
        rows.append((int(zones), int(outputs)))
    return tuple(rows)


async def run(
    seconds: float = STREAM_SECONDS,
    rows: tuple[tuple[int, int], ...] = ROWS,
    stream: bool = True,
    ref_seconds: float | None = None,
    switch_every_s: float = 5.0,
    build_in_host: bool = False,
) -> None:
    blocks = 375  # 1 s of audio, best of 5, per row
    print("   tight loop, 48 kHz / 128 frames, warm (share of one core; ref: a bare numpy copy)")
    for zones, n_out in rows:
        share, ref = tight_loop(n_out, zones, blocks, fade=False)
        fading, _ = tight_loop(n_out, zones, blocks, fade=True)
        print(
            f"   {zones:2d} zone(s) x {n_out:2d} outputs  {100 * share:5.1f} %  (every zone "
            f"crossfading {100 * fading:5.1f} %)   copy {100 * ref:5.2f} % (ref)   ratio "
            f"{share / ref:5.0f}",
            flush=True,
        )
    if not stream:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for zones, n_out in rows:
            result = await stream_run(
                seconds, Path(tmp), zones, switch_every_s, n_out=n_out, build_in_host=build_in_host
            )
            print(f"   jackd, {zones} zone(s) x {n_out} outputs: {describe(result)}", flush=True)
            ref_s = min(seconds, STREAM_SECONDS) if ref_seconds is None else ref_seconds
            copy = await stream_run(ref_s, Path(tmp), reference=True, n_out=n_out)
            print(f"   jackd, the same stream copying its input (ref): {describe(copy)}",
                  flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=None, help="stream run length per row")
    parser.add_argument("--seconds", type=float, default=STREAM_SECONDS, help="(or) in seconds")
    parser.add_argument("--rows", type=parse_rows, default=ROWS, help="e.g. 1x8,10x8")
    parser.add_argument("--no-stream", action="store_true", help="the tight loop only")
    parser.add_argument(
        "--full-reference",
        action="store_true",
        help="run the copying reference as long as the engine (default: at most 20 s): the "
        "xruns the machine gives any Python processor in the same length of time",
    )
    parser.add_argument(
        "--switch-every",
        type=float,
        default=5.0,
        metavar="S",
        help="a mode switch in zone z0 every S seconds of the stream (default 5: the stress "
        "case; 0: none, a show between its cues)",
    )
    parser.add_argument(
        "--build-in-host",
        action="store_true",
        help="build each switch's parameter set in the audio host's control thread (beside the "
        "callback) instead of in a process of its own, as the service does: the comparison",
    )
    args = parser.parse_args()
    seconds = args.seconds if args.minutes is None else 60.0 * args.minutes
    ref = seconds if args.full_reference else None
    asyncio.run(
        run(seconds, args.rows, not args.no_stream, ref, args.switch_every, args.build_in_host)
    )


if __name__ == "__main__":
    main()
