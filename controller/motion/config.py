"""The machinery section of a venue: axes, their limits and use cases, zones, interlocks, groups.

Validated with pydantic, as the rest of the venue file (edge/config.py embeds ``MachineryConfig``
as ``[machinery]``); what needs the devices' profiles (soft limits inside the travel, limits
inside what the drive accepts) is checked by ``check_against`` once the venue's devices are
loaded. docs/machinery.md is the reference for every key.

EN 17206 distinguishes machinery by what it moves and who is in the hazard zone; Flytower maps
that onto three **use cases**, each with rules the supervisor enforces on top of an axis's own
limits (``USE_CASES``):

- ``scenery``: moving scenery, nobody under or on the load while it moves;
- ``scenery-over-people``: moving scenery with people in the hazard zone (under a flown piece):
  load monitoring is mandatory (``max_load`` and ``min_load`` must be set), speed capped at
  ``over_people_speed``;
- ``performer``: moving people (flying a performer, a lift carrying performers): as above, plus
  two-person confirmation of every move and ``performer_speed`` as the speed cap.

Every move of every axis needs the hold-to-run enable (``[machinery] enable_timeout_s``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.model import Profile

Finite = Field(allow_inf_nan=False)


class UseCase(StrEnum):
    SCENERY = "scenery"
    OVER_PEOPLE = "scenery-over-people"
    PERFORMER = "performer"


@dataclass(frozen=True, slots=True)
class UseCaseRules:
    needs_load_monitoring: bool
    two_person: bool
    speed_cap: str | None  # the MachineryConfig field that caps the speed, if any


USE_CASES: Mapping[UseCase, UseCaseRules] = {
    UseCase.SCENERY: UseCaseRules(False, False, None),
    UseCase.OVER_PEOPLE: UseCaseRules(True, False, "over_people_speed"),
    UseCase.PERFORMER: UseCaseRules(True, True, "performer_speed"),
}


@dataclass(frozen=True, slots=True)
class AxisLimits:
    """An axis's resolved limits (the venue's ``[machinery.axes]`` over its profile:
    ``resolve_limits``)."""

    soft_min: float
    soft_max: float
    speed: float
    acceleration: float
    jerk: float = math.inf
    max_load: float | None = None
    min_load: float | None = None
    following_error: float = 50.0
    use_case: UseCase = UseCase.SCENERY
    rotary: bool = False
    group: str | None = None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AxisConfig(_Strict):
    """One axis: a machinery device of the venue (its profile has ``move_to``)."""

    use_case: UseCase = UseCase.SCENERY
    soft_min: float | None = Field(default=None, allow_inf_nan=False)
    """Lowest position a move may plan to pass (default: the profile's position minimum)."""
    soft_max: float | None = Field(default=None, allow_inf_nan=False)
    max_speed: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Default: the profile's speed_limit maximum."""
    max_acceleration: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_jerk: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """None: trapezoidal profiles; a value: jerk-limited (S-curve) profiles."""
    max_load: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Overload abort above this load (the load point's unit, kg)."""
    min_load: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """Slack-rope abort below this load while moving."""
    following_error: float = Field(default=50.0, gt=0, allow_inf_nan=False)
    """Abort when the axis is further than this from where its plan says it should be."""
    rotary: bool = False
    """A turntable: no soft limits, positions unwrapped (degrees)."""
    group: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        lo, hi = self.soft_min, self.soft_max
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"soft_min {lo:g} must be below soft_max {hi:g}")
        lo, hi = self.min_load, self.max_load
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"min_load {lo:g} must be below max_load {hi:g}")
        if USE_CASES[self.use_case].needs_load_monitoring and (
            self.max_load is None or self.min_load is None
        ):
            raise ValueError(
                f"use case '{self.use_case}' needs load monitoring: set max_load and min_load"
            )
        return self


class ZoneConfig(_Strict):
    name: str = Field(min_length=1, max_length=64)
    axes: list[str] = Field(min_length=2, max_length=256)
    min_gap: float = Field(gt=0, allow_inf_nan=False)
    offsets: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _offsets(self) -> Self:
        if len(set(self.axes)) != len(self.axes):
            raise ValueError(f"zone '{self.name}': an axis is listed twice")
        stray = sorted(set(self.offsets) - set(self.axes))
        if stray:
            raise ValueError(f"zone '{self.name}': offsets for axes not in the zone: {stray}")
        if not all(math.isfinite(v) for v in self.offsets.values()):
            raise ValueError(f"zone '{self.name}': offsets must be finite numbers")
        return self


class Condition(_Strict):
    """A point of a device compared with a value. A missing, stale or bad value counts as
    the condition being met when it blocks (fail safe)."""

    device: str = Field(min_length=1)
    point: str = Field(min_length=1)
    equals: bool | float | str | None = None
    above: float | None = Field(default=None, allow_inf_nan=False)
    below: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_test(self) -> Self:
        given = [k for k in ("equals", "above", "below") if getattr(self, k) is not None]
        if not given:
            raise ValueError("a condition needs 'equals', 'above' or 'below'")
        if "equals" in given and len(given) > 1:
            raise ValueError("'equals' cannot be combined with 'above' or 'below'")
        return self

    def met(self, value: Any) -> bool:
        if self.equals is not None:
            if isinstance(self.equals, bool) or isinstance(value, bool):
                return isinstance(value, bool | int | float) and bool(value) == bool(self.equals)
            return bool(value == self.equals)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.above is not None and not value > self.above:
            return False
        return self.below is None or value < self.below

    def __str__(self) -> str:
        if self.equals is not None:
            return f"{self.device}.{self.point} = {self.equals}"
        parts = []
        if self.above is not None:
            parts.append(f"> {self.above:g}")
        if self.below is not None:
            parts.append(f"< {self.below:g}")
        return f"{self.device}.{self.point} {' and '.join(parts)}"


class InterlockConfig(_Strict):
    """``axes`` may not move while ``block_when`` holds; moving ones are stopped when it
    starts to hold."""

    name: str = Field(min_length=1, max_length=64)
    axes: list[str] = Field(min_length=1)
    block_when: Condition


class GroupConfig(_Strict):
    """A fault group, as Stage Technologies' groups: ``free`` (a fault stops only its axis),
    ``safe`` (a fault stops every axis of the group), ``locked`` (as safe, and the axes only
    move together, in one synchronised move)."""

    mode: Literal["free", "safe", "locked"] = "safe"


class MachineryConfig(_Strict):
    cycle_hz: float = Field(default=50.0, ge=5.0, le=200.0)
    """Setpoint/status cycle of every axis."""
    stale_cycles: int = Field(default=5, ge=2, le=100)
    """An axis whose last status is older than this many cycles is stopped as stale."""
    enable_timeout_s: float = Field(default=0.5, gt=0.0, le=10.0)
    """Hold-to-run: motion stops when the enable has not been renewed for this long."""
    confirm_timeout_s: float = Field(default=10.0, gt=0.0, le=120.0)
    """Two-person rule: the second operator must confirm within this time."""
    over_people_speed: float = Field(default=500.0, gt=0, allow_inf_nan=False)
    performer_speed: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    stop_category: Literal[1, 2] = 1
    """IEC 60204-1 category of a software E-stop: 1 = quick-stop ramp, then power off and
    brake (the default); 2 = quick-stop ramp, holding under power."""
    realtime_priority: int = Field(default=0, ge=0, le=98)
    """SCHED_FIFO priority of the service's event loop, where the axis cycle and the E-stop run
    (edge/realtime.py); 0 leaves the time-sharing scheduler."""
    axes: dict[str, AxisConfig] = Field(default_factory=dict)
    zones: list[ZoneConfig] = Field(default_factory=list)
    interlocks: list[InterlockConfig] = Field(default_factory=list)
    groups: dict[str, GroupConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> Self:
        for axis, cfg in self.axes.items():
            if cfg.group is not None and cfg.group not in self.groups:
                raise ValueError(f"axes.{axis}.group: no group '{cfg.group}' in [machinery.groups]")
        return self


# --- resolution against the venue's devices -------------------------------------------------

POSITION, SPEED, ACCELERATION, MOVE = "position", "speed_limit", "acceleration", "move_to"


def is_axis(profile: Profile) -> bool:
    """A device the supervisor owns: its ``move_to`` moves machinery."""
    cmd = profile.commands.get(MOVE)
    return cmd is not None and cmd.moves_machinery and POSITION in profile.points


def resolve_limits(
    config: MachineryConfig, profiles: Mapping[str, Profile]
) -> tuple[dict[str, AxisLimits], list[str]]:
    """Every axis of the venue (each device whose profile moves machinery) with its limits:
    ``[machinery.axes]`` over the profile's ranges. Returns the limits and the problems (an
    entry for a device that is not an axis, soft limits outside the travel, limits above what
    the drive accepts)."""
    problems: list[str] = []
    limits: dict[str, AxisLimits] = {}
    for name in config.axes:
        if name not in profiles:
            problems.append(f"machinery.axes.{name}: no device '{name}'")
        elif not is_axis(profiles[name]):
            problems.append(
                f"machinery.axes.{name}: '{profiles[name].id}' is not a machinery axis "
                f"(no '{MOVE}' that moves machinery)"
            )
    for name, profile in profiles.items():
        if not is_axis(profile):
            continue
        cfg = config.axes.get(name, AxisConfig())
        where = f"machinery.axes.{name}"
        pos = profile.points[POSITION]
        travel_lo = pos.min if pos.min is not None else -math.inf
        travel_hi = pos.max if pos.max is not None else math.inf
        rotary = cfg.rotary or profile.device_class == "turntable"
        lo = cfg.soft_min if cfg.soft_min is not None else travel_lo
        hi = cfg.soft_max if cfg.soft_max is not None else travel_hi
        if not rotary and (lo < travel_lo or hi > travel_hi):
            problems.append(
                f"{where}: soft limits {lo:g} … {hi:g} must lie inside the travel "
                f"{travel_lo:g} … {travel_hi:g} of '{profile.id}'"
            )
        top: dict[str, float | None] = {}
        for point, key in ((SPEED, "max_speed"), (ACCELERATION, "max_acceleration")):
            spec = profile.points.get(point)
            drive_max = spec.max if spec is not None else None
            mine = getattr(cfg, key)
            if mine is not None and drive_max is not None and mine > drive_max:
                problems.append(f"{where}.{key}: {mine:g} is above the drive's {drive_max:g}")
            top[key] = mine if mine is not None else drive_max
        if top["max_speed"] is None or top["max_acceleration"] is None:
            problems.append(
                f"{where}: set max_speed and max_acceleration ('{profile.id}' has none)"
            )
            continue
        limits[name] = AxisLimits(
            soft_min=lo,
            soft_max=hi,
            speed=float(top["max_speed"]),
            acceleration=float(top["max_acceleration"]),
            jerk=cfg.max_jerk if cfg.max_jerk is not None else math.inf,
            max_load=cfg.max_load,
            min_load=cfg.min_load,
            following_error=cfg.following_error,
            use_case=cfg.use_case,
            rotary=rotary,
            group=cfg.group,
        )
    axes = {n for n, p in profiles.items() if is_axis(p)}
    for z in config.zones:
        problems.extend(
            f"machinery.zones.{z.name}: no axis '{a}' on this venue"
            for a in z.axes
            if a not in axes
        )
    for lock in config.interlocks:
        problems.extend(
            f"machinery.interlocks.{lock.name}: no axis '{a}' on this venue"
            for a in lock.axes
            if a not in axes
        )
        if lock.block_when.device not in profiles:
            problems.append(
                f"machinery.interlocks.{lock.name}.block_when: no device '{lock.block_when.device}'"
            )
        elif lock.block_when.point not in profiles[lock.block_when.device].points:
            problems.append(
                f"machinery.interlocks.{lock.name}.block_when: '{lock.block_when.device}' has no "
                f"point '{lock.block_when.point}'"
            )
    return limits, problems
