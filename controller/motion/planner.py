"""Motion planning: trapezoidal and jerk-limited (S-curve) profiles for one or many axes.

The trajectories come from Ruckig (time-optimal, jerk-limited online trajectory generation from
any state: Berscheid & Kröger, RSS 2021), which is what we want from a library rather than by
hand: arbitrary start states (re-targeting a moving axis), time synchronisation of several axes
(they all arrive together), and where an axis is at any instant.

- ``Kinematics``: an axis's limits for a move: speed, acceleration and jerk (``jerk = inf`` is
  a trapezoidal profile).
- ``plan_move``: one plan for a set of axes from their present states to their targets;
  ``synchronized`` makes every axis take as long as the slowest, so they arrive together.
- ``plan_stop``: the fastest stop of each axis from its present state within its limits (where
  an axis would come to rest if it were stopped now).
- ``Plan``: position, velocity and acceleration of every axis at any time; a grid of samples;
  position extrema; the first time an axis passes a position (position-triggered events).

Units are the axes' own (mm, mm/s, ...; degrees for rotary axes, unwrapped). Times are seconds
from the plan's start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from ruckig import (
    ControlInterface,
    InputParameter,
    Result,
    Ruckig,
    RuckigError,
    Synchronization,
    Trajectory,
)

F64 = npt.NDArray[np.float64]
EXTREMA_STEP_S = 0.005


class PlanError(ValueError):
    """A move that cannot be planned (bad numbers, limits, or no trajectory): the reason."""


@dataclass(frozen=True, slots=True)
class Kinematics:
    """Limits of one axis for one move. ``jerk = inf``: trapezoidal (acceleration steps)."""

    speed: float
    acceleration: float
    jerk: float = math.inf

    def check(self, axis: str) -> None:
        for name in ("speed", "acceleration"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise PlanError(f"{axis}: {name} must be a finite number > 0, not {v!r}")
        j = self.jerk
        if not (isinstance(j, int | float) and not math.isnan(j) and j > 0):
            raise PlanError(f"{axis}: jerk must be a number > 0 (inf: none), not {j!r}")

    @property
    def trapezoidal(self) -> bool:
        return math.isinf(self.jerk)


@dataclass(frozen=True, slots=True)
class State:
    """An axis's present state: position, velocity, acceleration (its units)."""

    position: float
    velocity: float = 0.0
    acceleration: float = 0.0

    def check(self, axis: str) -> None:
        for name in ("position", "velocity", "acceleration"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v)):
                raise PlanError(f"{axis}: {name} must be a finite number, not {v!r}")


class Plan:
    """The trajectories of ``axes`` from one start time (0) to ``duration``."""

    def __init__(
        self, axes: Sequence[str], trajectory: Trajectory, targets: Sequence[float]
    ) -> None:
        self.axes = tuple(axes)
        self.index = {a: i for i, a in enumerate(self.axes)}
        self._tr = trajectory
        self.duration = float(trajectory.duration)
        self.targets = tuple(float(t) for t in targets)
        # each axis on its own: how long it would take unsynchronised
        self.alone = tuple(float(d) for d in trajectory.independent_min_durations)
        self._extrema: tuple[F64, F64] | None = None

    def at(self, t: float) -> tuple[F64, F64, F64]:
        """Positions, velocities and accelerations at ``t`` (clamped to the plan)."""
        p, v, a = self._tr.at_time(min(max(t, 0.0), self.duration))
        return np.asarray(p, float), np.asarray(v, float), np.asarray(a, float)

    def positions_at(self, times: F64) -> F64:
        """Positions of every axis at each of ``times`` (clamped to the plan): ``(times, axes)``."""
        out = np.empty((len(times), len(self.axes)))
        at, end = self._tr.at_time, self.duration
        for i, t in enumerate(times.tolist()):
            out[i] = at(min(max(t, 0.0), end))[0]
        return out

    def position(self, axis: str, t: float) -> float:
        return float(self.at(t)[0][self.index[axis]])

    def sample(self, dt: float) -> tuple[F64, F64]:
        """Times on a ``dt`` grid (the end included) and positions ``(len(times), axes)``."""
        if not (math.isfinite(dt) and dt > 0):
            raise PlanError(f"dt must be a finite number > 0, not {dt!r}")
        n = max(1, math.ceil(self.duration / dt))
        times = np.minimum(np.arange(n + 1) * dt, self.duration)
        return times, self.positions_at(times)

    def extrema(self, axis: str) -> tuple[float, float]:
        """The lowest and highest position ``axis`` passes on the whole plan.

        Sampled every ``EXTREMA_STEP_S`` (at a turning point the velocity is 0, so the sample
        misses the true extreme by at most a·dt²/8: 0.006 mm at 2 m/s²). Ruckig's own
        ``position_extrema`` is not used: ruckig 0.19.4 reports the end points for
        trapezoidal (infinite-jerk) profiles that turn back (measured)."""
        if self._extrema is None:
            _, pos = self.sample(EXTREMA_STEP_S)
            self._extrema = (pos.min(axis=0), pos.max(axis=0))
        i = self.index[axis]
        return float(self._extrema[0][i]), float(self._extrema[1][i])

    def time_at(self, axis: str, position: float) -> float | None:
        """The first time ``axis`` is at ``position``, or None if it never is."""
        t = self._tr.get_first_time_at_position(self.index[axis], float(position))
        return None if t is None else float(t)

    def peaks(self, dt: float = 0.01) -> dict[str, tuple[float, float]]:
        """Each axis's highest speed and acceleration (magnitudes) on the plan."""
        n = max(1, math.ceil(self.duration / dt))
        v_top = np.zeros(len(self.axes))
        a_top = np.zeros(len(self.axes))
        for t in np.linspace(0.0, self.duration, n + 1).tolist():
            _, v, a = self._tr.at_time(t)
            np.maximum(v_top, np.abs(v), out=v_top)
            np.maximum(a_top, np.abs(a), out=a_top)
        return {ax: (float(v_top[i]), float(a_top[i])) for i, ax in enumerate(self.axes)}


def _input(
    axes: Sequence[str],
    states: Mapping[str, State],
    limits: Mapping[str, Kinematics],
) -> InputParameter:
    for a in axes:
        if a not in states:
            raise PlanError(f"{a}: no present state")
        if a not in limits:
            raise PlanError(f"{a}: no limits")
        states[a].check(a)
        limits[a].check(a)
    inp = InputParameter(len(axes))
    inp.current_position = [float(states[a].position) for a in axes]
    inp.current_velocity = [float(states[a].velocity) for a in axes]
    inp.current_acceleration = [float(states[a].acceleration) for a in axes]
    inp.max_velocity = [float(limits[a].speed) for a in axes]
    inp.max_acceleration = [float(limits[a].acceleration) for a in axes]
    inp.max_jerk = [float(limits[a].jerk) for a in axes]
    return inp


def _calculate(inp: InputParameter, n: int, what: str) -> Trajectory:
    tr = Trajectory(n)
    try:
        result = Ruckig(n).calculate(inp, tr)
    except RuckigError as exc:
        raise PlanError(f"{what}: {str(exc).strip()}") from None
    if result not in (Result.Working, Result.Finished):
        raise PlanError(f"{what}: no trajectory ({result.name})")
    return tr


def plan_move(
    states: Mapping[str, State],
    targets: Mapping[str, float],
    limits: Mapping[str, Kinematics],
    *,
    synchronized: bool = True,
) -> Plan:
    """Move every axis of ``targets`` from its state to rest at its target."""
    if not targets:
        raise PlanError("a move needs at least one axis")
    axes = list(targets)
    for a in axes:
        t = targets[a]
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise PlanError(f"{a}: target must be a finite number, not {t!r}")
    inp = _input(axes, states, limits)
    inp.target_position = [float(targets[a]) for a in axes]
    inp.target_velocity = [0.0] * len(axes)
    inp.target_acceleration = [0.0] * len(axes)
    inp.synchronization = Synchronization.Time if synchronized else Synchronization.No
    tr = _calculate(inp, len(axes), "move")
    return Plan(axes, tr, [float(targets[a]) for a in axes])


def plan_stop(states: Mapping[str, State], limits: Mapping[str, Kinematics]) -> Plan:
    """Bring every axis of ``states`` to rest as fast as its limits allow, each on its own."""
    axes = list(states)
    if not axes:
        raise PlanError("a stop needs at least one axis")
    inp = _input(axes, states, limits)
    inp.control_interface = ControlInterface.Velocity
    inp.synchronization = Synchronization.No
    inp.target_velocity = [0.0] * len(axes)
    inp.target_acceleration = [0.0] * len(axes)
    tr = _calculate(inp, len(axes), "stop")
    ends = tr.at_time(tr.duration)[0]
    return Plan(axes, tr, list(ends))
