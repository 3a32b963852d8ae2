"""ISO 3382-1 metrics: analysis time of the full octave set, and accuracy against ground truth.

Speed figure: wall time of ``dsp.metrics.analyze`` (six octave bands 125 Hz .. 4 kHz plus the
unfiltered IR: onset, band energies, Lundeby noise, compensated Schroeder curves, T20/T30/EDT,
C50/C80/D50/Ts) on a 4 s and a 3 s IR at 48 kHz (decaying noise, T = 1.8 s, noise floor 60 dB
down); minimum and median of repeated runs, and the CPU time. Targets: 4 s <= 50 ms (issue 7),
3 s <= 20 ms (DESIGN.md). Reference, same run, same IR: just filtering it through the same six
class 1 band filters with ``scipy.signal.sosfilt`` (what any analysis has to do first), and
pyroomacoustics' ``measure_rt60`` on those six band signals; ratios analyze / reference.

Accuracy table: T30 error against the noise-free truth for ours, pyrato's Lundeby, Chu and
Chu-Lundeby and pyroomacoustics' ``measure_rt60`` on the same band decays (the signals and
truth of ``tests/unit/test_dsp_metrics.py``), at 50 and 40 dB noise margin; and our C50, C80,
D50, Ts and G errors on reflection trains whose energy split is known exactly.

``python -m benchmarks.bench_acoustics_metrics`` runs it alone; ``python -m benchmarks`` runs all.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import numpy as np
from scipy.signal import sosfilt  # type: ignore[import-untyped]

from dsp.bands import band_set, band_sos
from dsp.metrics import analyze

FS = 48000
RUNS = 30


def _ir(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = round(seconds * FS)
    t = np.arange(n) / FS
    ir = rng.standard_normal(n) * 10 ** (-3 * t / 1.8) + 1e-3 * rng.standard_normal(n)
    ir[:960] = 1e-3 * rng.standard_normal(960)  # 20 ms of noise before the direct sound
    ir[960] = 8.0
    return ir


def _time(f: Callable[[], object], runs: int = RUNS) -> tuple[float, float, float]:
    """(min, median) wall ms and median CPU ms of ``f``."""
    f()
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        f()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1e3 * min(wall), 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def speed() -> None:
    from pyroomacoustics.experimental import measure_rt60

    sos = [band_sos(b, FS) for b in band_set("octave")]
    for seconds, target in ((4.0, 50.0), (3.0, 20.0)):
        ir = _ir(seconds)
        ours = _time(lambda ir=ir: analyze(ir, FS))
        filt = _time(lambda ir=ir: [sosfilt(s, ir) for s in sos])
        bands = [sosfilt(s, ir) for s in sos]
        rt60 = _time(lambda bands=bands: [measure_rt60(b, FS, decay_db=30) for b in bands])
        verdict = "ok" if ours[0] <= target else "OVER"
        print(
            f"   {seconds:.0f} s IR, 6 octaves: analyze min {ours[0]:.1f} ms, median "
            f"{ours[1]:.1f} ms, cpu {ours[2]:.1f} ms (target <= {target:.0f} ms: {verdict})"
        )
        print(
            f"      reference sosfilt x6: min {filt[0]:.1f} ms -> ratio {ours[0] / filt[0]:.2f};"
            f" sosfilt + measure_rt60 x6: min {filt[0] + rt60[0]:.1f} ms -> ratio "
            f"{ours[0] / (filt[0] + rt60[0]):.2f}"
        )


def accuracy() -> None:
    from tests.unit.test_dsp_metrics import reflection_train
    from tests.unit.test_dsp_metrics_reference import compare

    for margin in (50.0, 40.0):
        compare(margin, 4, seed=int(margin) + 100)
    rng = np.random.default_rng(11)
    ref = np.zeros(4800)
    ref[100] = 0.5  # free field at 10 m, energy 0.25
    print("\n   energy parameters on reflection trains (8 per margin, all octaves): max |error|")
    print("   margin   C50 dB   C80 dB    D50     Ts ms    G dB   flagged")
    for margin in (60.0, 50.0, 40.0):
        worst = np.zeros(5)
        flagged = 0
        for _ in range(8):
            train = reflection_train(rng, float(rng.uniform(0.4, 2.5)), margin)
            m = analyze(train.ir, FS, reference=ref)
            for b in m.bands:
                assert b.g_db is not None
                err = np.abs(
                    [
                        b.c50_db - train.c50_db,
                        b.c80_db - train.c80_db,
                        b.d50 - train.d50,
                        1e3 * (b.ts_s - train.ts_s),
                        b.g_db - 10 * math.log10(train.energy / 0.25),
                    ]
                )
                for i, label in ((0, "C50:"), (1, "C80:")):
                    if any(w.startswith(label) for w in b.warnings):
                        err[i], flagged = 0.0, flagged + 1  # flagged as noise-limited
                worst = np.maximum(worst, err)
        print(f"   {margin:4.0f} dB " + " ".join(f"{v:8.3f}" for v in worst) + f"   {flagged}")
    print("   targets: C80 0.2 dB, D50 0.0125, Ts 2.5 ms; last column: C50/C80 values flagged")
    print("   as noise-limited (their warning states the spread), left out of the maxima")


async def run() -> None:
    speed()
    accuracy()


if __name__ == "__main__":
    import asyncio

    asyncio.run(run())
