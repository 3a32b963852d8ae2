"""Collision zones: a minimum separation between pairs or groups of axes, checked over time.

A zone names two or more axes of one direction of travel (flybars in one fly tower, lifts under
one stage) and the gap they must keep: for every pair ``(a, b)`` of the zone the separation is
``(position_a + offset_a) - (position_b + offset_b)``, where an axis's offset says where its
load sits relative to its position (a border hanging 1 200 mm below its bar: ``-1200``). The
two may not come closer than ``min_gap``, nor pass through each other.

The check runs over the **planned trajectories** of every axis, not the end points: each axis is
either at rest (a position) or following a plan that started at some time (``Track``), moving
targets included: an axis already moving on an earlier plan is checked where it will be at each
instant of the new one. Positions are sampled on a grid; between two samples the separation can
dip by at most half its change over the step, which is added to the gap as a margin, so a
sampled check never passes a trajectory that a continuous one would refuse.

A pair that is already inside its gap (after a power cut, a manual move) may only move apart:
any trajectory that brings it closer at any time is refused.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from controller.motion.planner import F64, Plan

CHECK_STEP_S = 0.01


@dataclass(frozen=True, slots=True)
class Zone:
    name: str
    axes: tuple[str, ...]
    min_gap: float
    offsets: Mapping[str, float] = field(default_factory=dict)

    def pairs(self) -> Iterable[tuple[str, str]]:
        return itertools.combinations(self.axes, 2)


@dataclass(frozen=True, slots=True)
class Track:
    """Where an axis is over time: at rest at ``position``, or on ``plan`` since ``start``
    (the same clock as the check's ``now``)."""

    position: float
    plan: Plan | None = None
    start: float = 0.0

    def end(self) -> float:
        return self.start + self.plan.duration if self.plan is not None else -math.inf


@dataclass(frozen=True, slots=True)
class Conflict:
    zone: str
    a: str
    b: str
    at_s: float  # seconds from now
    separation: float  # at that time (signed, a minus b, offsets included)
    min_gap: float

    def __str__(self) -> str:
        return (
            f"collision zone '{self.zone}': {self.a} and {self.b} would come within "
            f"{abs(self.separation):.0f} of each other (minimum {self.min_gap:g}) "
            f"{self.at_s:.2f} s from now"
        )


def check_zones(
    zones: Sequence[Zone],
    tracks: Mapping[str, Track],
    now: float,
    moving: Iterable[str] = (),
    step_s: float = CHECK_STEP_S,
) -> Conflict | None:
    """The first conflict of any zone pair that involves an axis of ``moving`` (all pairs if
    empty), from ``now`` until every track has ended; None when every gap is kept."""
    movers = set(moving)
    relevant = [
        (z, a, b)
        for z in zones
        for a, b in z.pairs()
        if a in tracks and b in tracks and (not movers or a in movers or b in movers)
    ]
    if not relevant:
        return None
    horizon = max((tracks[x].end() for _, a, b in relevant for x in (a, b)), default=now)
    span = max(0.0, horizon - now)
    n = max(1, math.ceil(span / step_s))
    times = now + np.linspace(0.0, span, n + 1)
    sampled: dict[tuple[int, float], F64] = {}  # one pass per plan, shared by its axes

    def pos(axis: str) -> F64:
        tr = tracks[axis]
        if tr.plan is None:
            return np.full(times.shape, tr.position)
        key = (id(tr.plan), tr.start)
        if key not in sampled:
            sampled[key] = tr.plan.positions_at(times - tr.start)
        return sampled[key][:, tr.plan.index[axis]]

    first: Conflict | None = None
    for z, a, b in relevant:
        d = (pos(a) + z.offsets.get(a, 0.0)) - (pos(b) + z.offsets.get(b, 0.0))
        side = math.copysign(1.0, d[0]) if d[0] != 0 else 0.0
        dist = d * side if side else np.abs(d)
        margin = np.zeros_like(dist)
        if dist.size > 1:
            half = np.abs(np.diff(dist)) / 2
            margin[1:] = half
            margin[:-1] = np.maximum(margin[:-1], half)
        bad = dist < z.min_gap + margin
        if dist[0] < z.min_gap:
            # inside already: only moving apart is allowed
            bad = np.concatenate(([False], np.diff(dist) < -1e-9))
            bad = bad | (dist < -1e-9)  # passing through
        hit = np.flatnonzero(bad)
        if hit.size:
            k = int(hit[0])
            c = Conflict(z.name, a, b, float(times[k] - now), float(d[k]), z.min_gap)
            if first is None or c.at_s < first.at_s:
                first = c
    return first
