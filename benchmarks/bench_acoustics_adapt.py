"""Closed-loop adaptation (dsp/adapt.py): time per iteration and iterations per mode.

The hall of tests/unit/test_dsp_adapt.py (pyroomacoustics, 20 x 14 x 8 m, T30 about 1.2 s, a
pickup 0.5 m from the source, four loudspeakers, 24 kHz, 2 s IRs), each measurement the
modelled closed loop plus noise 60 dB below its peak. For every built-in mode: the measured
iterations run (at most 3), whether every held metric ended within one JND, the best
iteration's worst error in JNDs, the time before the first measurement (calibration, design,
the Jacobian and the refinement on the model) and per measured iteration (output-mapping
steps, the measurement, its ISO 3382 analysis), each against an in-run reference: one
``dsp.engine.render_ir`` of 2 s of the mode's design (the engine's own offline render, which
every model evaluation runs once).
"""

from __future__ import annotations

import asyncio
import time

from dsp.adapt import adapt
from dsp.design import design
from dsp.engine import render_ir
from dsp.presets import MODES
from tests.unit.test_dsp_adapt import FS, hall_layout, hall_paths, noisy


def _table() -> None:
    paths, layout = hall_paths(0.0), hall_layout()
    print(
        f"   {'mode':<13} iters conv  worst JND  model s  s/iter  render_ir s  "
        "model/ref  iter/ref  unreachable"
    )
    for name, mode in MODES.items():
        params = design(mode, layout, {"t30_s": [1.2] * 6, "c80_db": [3.0] * 6}).params
        r0 = time.perf_counter()
        render_ir(params, FS, 2.0)
        ref = time.perf_counter() - r0
        t0 = time.perf_counter()
        a = adapt(mode, layout, paths, measure=noisy(paths))
        total = time.perf_counter() - t0
        per = sum(it.seconds for it in a.iterations) / len(a.iterations)
        model = total - per * len(a.iterations)  # calibration, design, refinement on the model
        print(
            f"   {name:<13} {len(a.iterations):>5} {'yes' if a.converged else 'no':>4} "
            f"{a.best.worst_jnd(a.held):>10.2f} {model:>8.1f} {per:>7.2f} {ref:>12.3f} "
            f"{model / ref:>10.0f} {per / ref:>9.1f}  {len(a.unreachable)}"
        )


async def run() -> None:
    await asyncio.to_thread(_table)


if __name__ == "__main__":
    asyncio.run(run())
