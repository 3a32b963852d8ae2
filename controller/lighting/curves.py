"""Fade curves, evaluated for whole arrays of channels at once.

A curve maps fade progress ``p`` in [0, 1] to the fraction of the way from start to target,
with ``curve(0) = 0``, ``curve(1) = 1`` and monotonic in between:

- ``linear``: ``p``;
- ``s``: smoothstep ``3p^2 - 2p^3`` (slow start and end, as a console's S-curve);
- ``log``: ``log10(1 + 9p)`` (fast start, slow arrival: the eye's response to a rising lamp).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from controller.lighting.errors import LightingError

CURVES: dict[str, int] = {"linear": 0, "s": 1, "log": 2}
F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]


def curve_code(name: str) -> int:
    code = CURVES.get(name)
    if code is None:
        raise LightingError(f"unknown curve {name!r} (known: {', '.join(CURVES)})")
    return code


def progress(now: float, t0: F64, duration: F64) -> F64:
    """Fade progress in [0, 1] at ``now`` (1 once done; a 0 s fade is done at its start)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p = (now - t0) / duration
    # Compare against the end time itself, so a duration too small to move t0 is done too.
    p = np.where(now >= t0 + duration, 1.0, np.where(now <= t0, 0.0, p))
    return np.clip(p, 0.0, 1.0)


def apply(p: F64, codes: I8) -> F64:
    """The curve of each channel applied to its progress."""
    y = p.copy()
    s = codes == 1
    if s.any():
        ps = p[s]
        y[s] = ps * ps * (3.0 - 2.0 * ps)
    lg = codes == 2
    if lg.any():
        y[lg] = np.log10(1.0 + 9.0 * p[lg])
    return y
