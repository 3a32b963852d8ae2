"""Venue configurations as data: the ``[configurations.NAME]`` tables of a venue file, and the
checks that need the venue (docs/configurations.md, docs/interfaces/venue-file.md).

A configuration is a named whole-venue setup — concert, opera, drama, conference, flat floor —
made of machinery positions (axis id to a position in the axis' unit), a lighting state (show
levels: fixtures, groups, DMX channels) and an acoustic (sound-field) mode. ``sequence`` orders
the machinery in phases (axis ids or glob patterns); the axes no phase names move in a final
phase of their own.

The shape is checked by the pydantic models here (unknown keys, ranges, a sequence entry that
names no axis, an axis in two phases); what needs the venue (is it an axis, is the position
inside its travel, is the speed one its drive takes, is the fixture patched) by
:func:`check_configurations` against :class:`AxisInfo` built from the device profiles.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.show.model import Level
from drivers.model import CommandError, Device, Profile

MOVE = "move_to"
STOP = "stop"
RELEASE_BOLTS, ENGAGE_BOLTS = "release_bolts", "engage_bolts"
BOLTS_RELEASED, BOLTS_ENGAGED = "bolts_released", "bolts_engaged"

ConfigName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
"""A configuration's name: as a device id (letters, digits, '.', '_', '-'; up to 64)."""
RESERVED_NAMES = frozenset({"switch"})  # /api/v1/configurations/switch is the progress
AxisPattern = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.*?\[\]!-]+$")
]
Finite = Annotated[float, Field(allow_inf_nan=False)]
FadeSeconds = Annotated[float, Field(ge=0, le=600, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AxisMove(_Strict):
    """An axis' place in a configuration, when more than its position is given."""

    position: Finite
    speed: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    """The drive's speed limit for this move (axis unit/s); None: the command's default."""
    acceleration: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    tolerance: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] | None = None
    """Arrival tolerance (axis unit); None: the venue's ``[configuration_settings] tolerance``."""
    lock: bool = False
    """Engage the axis' locking bolts once it has arrived (stage and pit lifts)."""


class Configuration(_Strict):
    label: str = Field(default="", max_length=200)
    notes: str = Field(default="", max_length=4000)
    machinery: dict[Annotated[str, Field(max_length=64)], Finite | AxisMove] = Field(
        default_factory=dict, max_length=1000
    )
    sequence: list[list[AxisPattern]] = Field(default_factory=list, max_length=32)
    lighting: list[Level] = Field(default_factory=list, max_length=1000)
    lighting_fade_s: FadeSeconds = 3.0
    lighting_at: Literal["start", "end"] = "start"
    """When the lighting state fades in: with the first phase (a changeover under the new
    look) or once every axis has arrived."""
    acoustics: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
    )
    acoustics_fade_s: FadeSeconds = 5.0
    phase_timeout_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] | None = None
    """How long a phase may take; None: 1.5 × its estimate + 10 s (120 s without one)."""

    @model_validator(mode="after")
    def _phases(self) -> Self:
        axes = list(self.machinery)
        owner: dict[str, int] = {}
        for p, phase in enumerate(self.sequence):
            if not phase:
                raise ValueError(f"sequence[{p}]: a phase names at least one axis or pattern")
            for pattern in phase:
                matched = fnmatch.filter(axes, pattern)
                if not matched:
                    raise ValueError(
                        f"sequence[{p}]: '{pattern}' matches no axis of this configuration's "
                        f"machinery ({', '.join(axes) or 'none'})"
                    )
                for axis in matched:
                    if owner.setdefault(axis, p) != p:
                        raise ValueError(
                            f"sequence[{p}]: axis '{axis}' ('{pattern}') is already in "
                            f"sequence[{owner[axis]}]: an axis moves in one phase"
                        )
        return self

    def target(self, axis: str) -> AxisMove:
        value = self.machinery[axis]
        return value if isinstance(value, AxisMove) else AxisMove(position=value)

    def phases(self) -> list[tuple[str, ...]]:
        """The axes of each phase, in order; the axes no phase names make a last phase."""
        out: list[tuple[str, ...]] = []
        seen: set[str] = set()
        for phase in self.sequence:
            axes = [a for a in self.machinery if any(fnmatch.fnmatchcase(a, p) for p in phase)]
            out.append(tuple(axes))
            seen.update(axes)
        rest = tuple(a for a in self.machinery if a not in seen)
        if rest:
            out.append(rest)
        return out


class ConfigurationSettings(_Strict):
    """``[configuration_settings]``: how every switch runs on this venue."""

    lighting_priority: int = Field(default=50, ge=0, le=199)
    """The priority of the ``configuration`` layer of the lighting engine: below cue lists
    (100) by default, so a running show always wins over the venue's house look."""
    tolerance: float = Field(default=5.0, gt=0, le=1000, allow_inf_nan=False)
    stale_s: float = Field(default=2.0, gt=0, le=60, allow_inf_nan=False)
    """A position older than this is no position: the switch refuses, or fails, on it."""
    stall_s: float = Field(default=5.0, gt=0, le=600, allow_inf_nan=False)
    """A moving axis whose position has not changed for this long has stopped short."""
    bolts_timeout_s: float = Field(default=10.0, gt=0, le=120, allow_inf_nan=False)


@dataclass(frozen=True, slots=True)
class AxisInfo:
    """What the sequencer needs to know of an axis, from its device profile."""

    id: str
    profile: Profile
    unit: str
    min: float | None
    max: float | None
    speed: float | None  # move_to's default speed (what the drive gets when none is given)
    max_speed: float | None
    acceleration: float | None
    rotary: bool  # an angle that wraps (a turntable): distances are the short way round
    bolts: bool  # locking bolts to release before a move (and engage with ``lock``)

    def distance(self, a: float, b: float) -> float:
        if self.rotary:
            span = 360.0
            d = abs(a - b) % span
            return min(d, span - d)
        return abs(a - b)


def axis_info(device: Device) -> AxisInfo | None:
    """The axis a device is, or None if it is not one (no motion ``move_to`` and ``stop``)."""
    profile = device.profile
    move = profile.commands.get(MOVE)
    if move is None or not move.moves_machinery or STOP not in profile.commands:
        return None
    pos = profile.points.get("position")
    speed = move.args.get("speed")
    accel = move.args.get("acceleration")
    velocity = profile.points.get("velocity")
    max_speed = speed.max if speed is not None and speed.max is not None else None
    if max_speed is None and velocity is not None and velocity.max is not None:
        max_speed = abs(velocity.max)
    unit = pos.unit if pos is not None else ""
    lo = pos.min if pos is not None else None
    hi = pos.max if pos is not None else None
    rotary = unit == "°" and lo == 0 and hi is not None and hi < 360 and "direction" in move.args
    return AxisInfo(
        id=device.id,
        profile=profile,
        unit=unit,
        min=lo,
        max=hi,
        speed=_number(speed.default) if speed is not None else None,
        max_speed=max_speed,
        acceleration=_number(accel.default) if accel is not None else None,
        rotary=rotary,
        bolts=RELEASE_BOLTS in profile.commands and BOLTS_RELEASED in profile.points,
    )


def _number(v: object) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def move_args(info: AxisInfo, move: AxisMove) -> dict[str, float]:
    args = {"position": move.position}
    if move.speed is not None:
        args["speed"] = move.speed
    if move.acceleration is not None:
        args["acceleration"] = move.acceleration
    return args


def check_configurations(
    configurations: Mapping[str, Configuration],
    axes: Mapping[str, AxisInfo],
    devices: Iterable[str],
    fixtures: Iterable[str],
    groups: Iterable[str],
    universes: Iterable[int],
) -> list[str]:
    """Every problem of the configurations against the venue, one line each, as
    ``configurations.NAME.machinery.AXIS: what is wrong``."""
    problems: list[str] = []
    known = set(devices)
    fixture_ids, group_names, routed = set(fixtures), set(groups), set(universes)
    for name, cfg in configurations.items():
        at = f"configurations.{name}"
        if name in RESERVED_NAMES:
            problems.append(f"{at}: '{name}' is reserved (the API's switch progress); rename it")
        for axis in cfg.machinery:
            where = f"{at}.machinery.{axis}"
            info = axes.get(axis)
            if info is None:
                why = (
                    "is not a machinery axis (its profile has no motion 'move_to' and 'stop')"
                    if axis in known
                    else "no such device in the venue"
                )
                problems.append(f"{where}: {why}")
                continue
            move = cfg.target(axis)
            if move.lock and not info.bolts:
                problems.append(f"{where}.lock: '{axis}' has no locking bolts")
            try:
                info.profile.resolve_command(MOVE, move_args(info, move))
            except CommandError as exc:
                problems.append(f"{where}: {exc}")
        for i, lv in enumerate(cfg.lighting):
            where = f"{at}.lighting[{i}]"
            if lv.fixture is not None and lv.fixture not in fixture_ids:
                problems.append(f"{where}.fixture: no DMX fixture '{lv.fixture}'")
            if lv.group is not None and lv.group not in group_names:
                problems.append(
                    f"{where}.group: no fixture group '{lv.group}' (groups: "
                    f"{', '.join(sorted(group_names)) or 'none'})"
                )
            if lv.channel is not None and lv.channel.universe not in routed:
                problems.append(
                    f"{where}.channel: universe {lv.channel.universe} is sent by no [[dmx.outputs]]"
                )
    return problems
