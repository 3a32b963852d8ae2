"""The show model: cue lists, cues, parts and actions, as typed, frozen pydantic models.

This module is the *shape* of a show (docs/interfaces/show-file.md): every field, its unit,
its default and its local range. What needs the rest of the show or the venue (references to
devices, fixtures, groups, presets and cue lists; ranges that come from a device profile;
cycles of follows) is checked by ``controller.show.check``, and files are read and written by
``controller.show.file``. The playback engine reads these objects and never the raw file.

Design notes:

- Times are seconds (``*_s``), floats, finite and never negative; levels are percent unless a
  field says otherwise; every model forbids unknown keys, so a typo is an error, not a silently
  ignored setting.
- A cue number is a ``Decimal`` (``CueNumber``), so 12.5 and 12.50 are the same cue and no
  float comparison is ever made. It is written back as the shortest decimal form.
- An action is one of a closed set of kinds, told apart by ``kind`` (a pydantic discriminated
  union): ``lighting.levels``, ``lighting.preset``, ``machinery.move``, ``machinery.goto``,
  ``machinery.stop``, ``audio.soundfield``, ``audio.levels``, ``audio.play``,
  ``device.command``, ``wait.position``, ``wait.point``, ``wait.timecode``, ``list.start``,
  ``list.stop``. Only actions that change a value over time take fade timing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from controller.timecode import FrameRate, Timecode, TimecodeError

SHOW_VERSION = 1
"""The version of the show file format this code reads and writes."""

Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
"""A name the show defines (cue list, preset, position, group): a letter, then letters,
digits, ``_`` or ``-``, at most 64 characters."""

DeviceRef = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
"""A device id of the venue (the same pattern as ``drivers.model.DeviceId``)."""

GroupRef = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]
"""A fixture group: a venue group's label (may contain spaces) or a show-defined group."""

PointRef = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]

Seconds = Annotated[float, Field(ge=0, le=86_400)]
"""A time in seconds: finite, 0 … 24 h."""

Percent = Annotated[float, Field(ge=0, le=100)]

MAX_CUE_NUMBER = Decimal("99999.999")
_CUE_TEXT = re.compile(r"^[0-9]{1,5}(\.[0-9]{1,3})?$")


def parse_cue_number(value: Any) -> Decimal:
    """Accept 12, 12.5 or "12.5"; refuse anything that is not a plain decimal 0 … 99999.999
    with at most three decimals (a float's shortest repr is its decimal, so 12.5 -> 12.5)."""
    if isinstance(value, Decimal):
        text = format(value, "f")
    elif isinstance(value, bool):
        raise ValueError("a cue number is a number such as 12 or 12.5, not true/false")
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a cue number must be finite, not {value}")
        text = repr(value)
        if "e" in text or "E" in text:
            raise ValueError(f"cue number {value!r} is out of range 0 … {MAX_CUE_NUMBER}")
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise ValueError(f"a cue number is a number such as 12.5, not {type(value).__name__}")
    if text.endswith(".0") and _CUE_TEXT.match(text[:-2]):
        text = text[:-2]
    if not _CUE_TEXT.match(text):
        raise ValueError(
            f"cue number {text[:40]!r} must be 0 … {MAX_CUE_NUMBER} with at most 3 decimals"
        )
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the pattern guarantees a decimal
        raise ValueError(f"cue number {text[:40]!r} is not a decimal") from exc


def format_cue_number(number: Decimal) -> str:
    """The shortest decimal text of a cue number: 12, 12.5 (never 1.25E+1 or 12.50)."""
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _cue_number_out(number: Decimal) -> int | float:
    # TOML has no decimal type. Every cue number has ≤ 8 significant digits, so the float's
    # shortest repr is exactly the decimal and reading it back gives the same number.
    text = format_cue_number(number)
    return float(text) if "." in text else int(text)


CueNumber = Annotated[
    Decimal,
    BeforeValidator(parse_cue_number),
    PlainSerializer(_cue_number_out, return_type=int | float),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Curve(StrEnum):
    """How a fade moves from its start to its end value over its time."""

    LINEAR = "linear"
    S = "s"  # smoothstep: slow start and end (a console's "S" or "ease in-out")
    LOG = "log"  # fast start, slow end: perceived as even for intensities


class TimecodeRearm(StrEnum):
    """When a fired timecode trigger of a list may fire again (docs/interfaces/timecode.md)."""

    NEVER = "never"  # once per show run (until the show is loaded again)
    ON_BACKWARD = "on_backward"  # re-armed when the master jumps back before it (rehearsal)


class ListMode(StrEnum):
    TRACKING = "tracking"  # a value set by a cue persists until a later cue changes it
    CUE_ONLY = "cue-only"  # a cue's values apply to that cue only; the next cue restores


# --- timing -----------------------------------------------------------------------------------


class _Timed(_Strict):
    """Every action can wait before it starts."""

    delay_s: Seconds = 0.0


class _Faded(_Timed):
    """Timing of an action that changes a value over time.

    ``fade_s`` is the time for every value; ``up_s`` / ``down_s``, when given, replace it for
    values that rise / fall (a lighting console's split up/down times). ``curve`` shapes it."""

    fade_s: Seconds = 0.0
    up_s: Seconds | None = None
    down_s: Seconds | None = None
    curve: Curve = Curve.LINEAR

    def time_for(self, rising: bool) -> float:
        """The fade time of a value that rises (``rising``) or falls."""
        split = self.up_s if rising else self.down_s
        return self.fade_s if split is None else split

    @property
    def duration_s(self) -> float:
        """Delay plus the longest fade: when the action is complete."""
        return self.delay_s + max(self.fade_s, self.up_s or 0.0, self.down_s or 0.0)


# --- lighting ---------------------------------------------------------------------------------


class Channel(_Strict):
    """A DMX channel by universe and address (a console's channel level, 8-bit, in percent)."""

    universe: int = Field(ge=1, le=63999)
    address: int = Field(ge=1, le=512)


class Level(_Strict):
    """One level: exactly one of ``fixture``, ``group`` or ``channel``.

    ``attribute`` names the fixture's point (``red``, ``pan``…); without it the level is the
    fixture's intensity (its ``intensity`` or ``dimmer`` point) in percent. With it, ``level``
    is in that point's unit and range (percent for most, degrees for pan/tilt). A channel takes
    no attribute: its level is percent of full (255)."""

    fixture: DeviceRef | None = None
    group: GroupRef | None = None
    channel: Channel | None = None
    attribute: PointRef | None = None
    level: float

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        given = [k for k in ("fixture", "group", "channel") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a level takes exactly one of 'fixture', 'group' or 'channel'"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.channel is not None and self.attribute is not None:
            raise ValueError("a channel level takes no 'attribute'")
        if self.attribute is None and not 0 <= self.level <= 100:
            raise ValueError(f"level {self.level:g} % is outside 0 … 100 %")
        return self

    @property
    def target(self) -> str:
        """A short human name of what the level drives."""
        if self.channel is not None:
            return f"channel {self.channel.universe}/{self.channel.address}"
        name = f"fixture '{self.fixture}'" if self.fixture else f"group '{self.group}'"
        return f"{name}.{self.attribute}" if self.attribute else name


class LightingLevels(_Faded):
    kind: Literal["lighting.levels"]
    levels: list[Level] = Field(min_length=1, max_length=10_000)


class LightingPreset(_Faded):
    """Recall a named look of the show's ``[presets]``, scaled by ``level`` percent
    (intensities only; attributes are recalled as stored)."""

    kind: Literal["lighting.preset"]
    preset: Name
    level: Percent = 100.0


# --- machinery --------------------------------------------------------------------------------


class MotionProfile(_Strict):
    """Limits of a move. None: the device's command default. ``jerk`` (unit/s³) shapes the
    motion layer's S-curve; a drive whose command has no jerk argument never receives it."""

    speed: float | None = Field(default=None, gt=0)
    acceleration: float | None = Field(default=None, gt=0)
    jerk: float | None = Field(default=None, gt=0)


class AxisTarget(MotionProfile):
    """One axis to move: ``device`` to ``position`` (the device's unit: mm, degrees)."""

    device: DeviceRef
    position: float


class MachineryMove(_Timed):
    """Move one or more axes, started together; the action is complete when all arrive."""

    kind: Literal["machinery.move"]
    axes: list[AxisTarget] = Field(min_length=1, max_length=256)
    profile: MotionProfile = Field(default_factory=MotionProfile)
    """Defaults for every axis that gives no speed/acceleration/jerk of its own."""


class MachineryGoto(_Timed):
    """Move an axis to a named position of the show's ``[positions]``."""

    kind: Literal["machinery.goto"]
    device: DeviceRef
    position: Name
    profile: MotionProfile = Field(default_factory=MotionProfile)


class MachineryStop(_Timed):
    """Controlled stop of the listed axes (IEC 60204-1 category 2 through the device's
    ``stop`` command); the safety supervisor still sees it."""

    kind: Literal["machinery.stop"]
    devices: list[DeviceRef] = Field(min_length=1, max_length=256)


# --- audio ------------------------------------------------------------------------------------


class AudioSoundfield(_Faded):
    """Recall a sound-field (electronic acoustics) mode, crossfading over ``fade_s``."""

    kind: Literal["audio.soundfield"]
    mode: str = Field(min_length=1, max_length=64)


class PointLevel(_Strict):
    """A writable point of a device set to ``value`` (its unit: dB for a gain)."""

    device: DeviceRef
    point: PointRef
    value: float


class AudioLevels(_Faded):
    kind: Literal["audio.levels"]
    levels: list[PointLevel] = Field(min_length=1, max_length=1024)


class AudioPlay(_Faded):
    """Play a sound file (relative to the show file's folder) at ``level_db``, fading in over
    ``fade_s``; ``output`` names the playback output (None: the default)."""

    kind: Literal["audio.play"]
    file: str = Field(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f]+$")
    level_db: float = Field(default=0.0, ge=-120, le=12)
    loop: bool = False
    output: str | None = Field(default=None, min_length=1, max_length=64)


# --- devices ----------------------------------------------------------------------------------


def _arg_value(value: Any) -> float | int | bool:
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number")
        return value
    raise ValueError(f"a command argument is a number or true/false, not {type(value).__name__}")


ArgValue = Annotated[float | int | bool, BeforeValidator(_arg_value)]
"""A command argument: a number or a boolean (the profile's ``ArgSpec`` types it)."""


class DeviceCommand(_Timed):
    """Send a command of the device's profile (``drivers.model.Profile.commands``) with
    arguments; used for video (projector, media server, LED wall) and any MQTT/OSC device."""

    kind: Literal["device.command"]
    device: DeviceRef
    command: PointRef
    args: dict[PointRef, ArgValue] = Field(default_factory=dict, max_length=64)


# --- waits ------------------------------------------------------------------------------------


class _Wait(_Timed):
    """A wait completes when its condition holds; ``timeout_s`` (None: wait for ever) ends it
    as failed, which stops the cue's follow/auto-continue."""

    timeout_s: Seconds | None = None


class WaitPosition(_Wait):
    kind: Literal["wait.position"]
    device: DeviceRef
    position: float
    tolerance: float = Field(default=10.0, ge=0)


class WaitPoint(_Wait):
    """Wait until a readable point is over ``above`` or under ``below`` (exactly one)."""

    kind: Literal["wait.point"]
    device: DeviceRef
    point: PointRef
    above: float | None = None
    below: float | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.above is None) == (self.below is None):
            raise ValueError("a point wait takes exactly one of 'above' or 'below'")
        return self


_TIMECODE = re.compile(r"^([0-9]{2}):([0-5][0-9]):([0-5][0-9])[:;]([0-9]{2})$")
TIMECODE_FPS = (24, 25, 29.97, 30)
_FPS_RATES = {
    24.0: FrameRate.FPS_24,
    25.0: FrameRate.FPS_25,
    29.97: FrameRate.FPS_29_97_DF,
    30.0: FrameRate.FPS_30,
}


def _fps(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("timecode_fps is a number: 24, 25, 29.97 or 30")
    if float(value) not in _FPS_RATES:
        raise ValueError(f"timecode_fps must be 24, 25, 29.97 or 30, not {value:g}")
    return float(value)


TimecodeFps = Annotated[float, BeforeValidator(_fps)]
"""A timecode rate: 24, 25, 29.97 (drop-frame, as Art-Net and MTC carry it) or 30."""


def rate_of(fps: float) -> FrameRate:
    """The ``controller.timecode.FrameRate`` of a show's ``fps`` (29.97 is drop-frame)."""
    return _FPS_RATES[float(fps)]


class WaitTimecode(_Wait):
    """Wait until the chased timecode reaches ``timecode`` (HH:MM:SS:FF) at ``fps``."""

    kind: Literal["wait.timecode"]
    timecode: str
    fps: float = 25

    @model_validator(mode="after")
    def _valid(self) -> Self:
        if self.fps not in (24, 25, 29.97, 30):
            raise ValueError(f"fps must be 24, 25, 29.97 or 30, not {self.fps:g}")
        m = _TIMECODE.match(self.timecode)
        if m is None:
            raise ValueError(f"timecode {self.timecode[:40]!r} is not HH:MM:SS:FF")
        hours, frames = int(m.group(1)), int(m.group(4))
        if hours > 23:
            raise ValueError(f"timecode {self.timecode}: hours must be 00 … 23")
        if frames >= math.ceil(self.fps):
            raise ValueError(f"timecode {self.timecode}: frame {frames} ≥ {self.fps:g} fps")
        return self


# --- cue lists --------------------------------------------------------------------------------


class ListStart(_Timed):
    """Start another cue list, at ``cue`` (None: its first cue)."""

    kind: Literal["list.start"]
    list: Name
    cue: CueNumber | None = None


class ListStop(_Timed):
    kind: Literal["list.stop"]
    list: Name


Action = Annotated[
    LightingLevels
    | LightingPreset
    | MachineryMove
    | MachineryGoto
    | MachineryStop
    | AudioSoundfield
    | AudioLevels
    | AudioPlay
    | DeviceCommand
    | WaitPosition
    | WaitPoint
    | WaitTimecode
    | ListStart
    | ListStop,
    Field(discriminator="kind"),
]
ACTION_KINDS: tuple[str, ...] = (
    "lighting.levels",
    "lighting.preset",
    "machinery.move",
    "machinery.goto",
    "machinery.stop",
    "audio.soundfield",
    "audio.levels",
    "audio.play",
    "device.command",
    "wait.position",
    "wait.point",
    "wait.timecode",
    "list.start",
    "list.stop",
)


class Part(_Strict):
    """A part of a cue (a lighting console's part cue): its actions start ``delay_s`` after
    the cue's GO, each after its own delay on top."""

    part: int = Field(ge=1, le=99)
    label: str = Field(default="", max_length=200)
    delay_s: Seconds = 0.0
    actions: list[Action] = Field(default_factory=list, max_length=1000)


class Cue(_Strict):
    """One cue. Its ``actions`` run at GO (part 0); its ``parts`` after their delays.

    After the cue, the next cue (``next``, or the next by number) starts by itself when
    ``follow`` is true (as soon as every action of the cue is complete) or ``auto_continue_s``
    after this cue's GO; otherwise it waits for the operator's GO."""

    number: CueNumber
    label: str = Field(default="", max_length=200)
    notes: str = Field(default="", max_length=10_000)
    actions: list[Action] = Field(default_factory=list, max_length=1000)
    parts: list[Part] = Field(default_factory=list, max_length=99)
    follow: bool = False
    auto_continue_s: Seconds | None = None
    next: CueNumber | None = None
    timecode: str | None = None
    """A timecode trigger: the cue starts when the chased timecode passes this label
    (``HH:MM:SS:FF``) at the list's ``timecode_fps`` (else the show's). The rate-dependent
    checks (frames, drop-frame labels, duplicates) are ``controller.show.check``'s."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.follow and self.auto_continue_s is not None:
            raise ValueError("a cue takes 'follow' or 'auto_continue_s', not both")
        if self.timecode is not None:
            m = _TIMECODE.match(self.timecode)
            if m is None:
                raise ValueError(f"timecode {self.timecode[:40]!r} is not HH:MM:SS:FF")
            if int(m.group(1)) > 23:
                raise ValueError(f"timecode {self.timecode}: hours must be 00 … 23")
        seen: set[int] = set()
        for p in self.parts:
            if p.part in seen:
                raise ValueError(f"part {p.part} appears twice")
            seen.add(p.part)
        return self

    @property
    def automatic(self) -> bool:
        """Whether the next cue starts without the operator."""
        return self.follow or self.auto_continue_s is not None

    def all_actions(self) -> list[tuple[int, float, Action]]:
        """(part, the part's delay, action) of every action; part 0 is the cue's own."""
        out: list[tuple[int, float, Action]] = [(0, 0.0, a) for a in self.actions]
        for p in self.parts:
            out.extend((p.part, p.delay_s, a) for a in p.actions)
        return out


class CueList(_Strict):
    """A sequence of cues, played in number order (the file lists them ascending)."""

    id: Name
    name: str = Field(default="", max_length=200)
    mode: ListMode = ListMode.TRACKING
    priority: int = Field(default=100, ge=1, le=199)
    """Merge priority against other lists, manual faders and DMX input (higher wins)."""
    go_debounce_s: Seconds = 0.3
    """Minimum time between two GOs; a GO sooner than this after the last one is ignored."""
    loop: bool = False
    """After the last cue, the first cue is next (a list that runs round)."""
    timecode_fps: TimecodeFps | None = None
    """The rate of the cues' ``timecode`` labels (None: the show's ``timecode_fps``)."""
    timecode_rearm: TimecodeRearm = TimecodeRearm.NEVER
    """Whether a backward relocate of the master re-arms fired triggers at or after it."""
    cues: list[Cue] = Field(default_factory=list, max_length=10_000)

    def cue(self, number: Decimal) -> Cue | None:
        for c in self.cues:
            if c.number == number:
                return c
        return None

    def next_of(self, index: int) -> int | None:
        """The index of the cue after ``cues[index]`` (``next``, the following or, in a
        looping list, the first), or None at the end."""
        cue = self.cues[index]
        if cue.next is not None:
            for i, c in enumerate(self.cues):
                if c.number == cue.next:
                    return i
            return None
        if index + 1 < len(self.cues):
            return index + 1
        return 0 if self.loop and self.cues else None


# --- show-level definitions -------------------------------------------------------------------


class Preset(_Strict):
    """A named look: levels recalled together by a ``lighting.preset`` action."""

    label: str = Field(default="", max_length=200)
    levels: list[Level] = Field(min_length=1, max_length=10_000)


class ShowInfo(_Strict):
    title: str = Field(min_length=1, max_length=200)
    venue: str | None = Field(default=None, max_length=64)
    """The venue id the show was written for (informative; the catalogue is what is checked)."""
    notes: str = Field(default="", max_length=10_000)
    timecode_fps: TimecodeFps = 25.0
    """The rate of cue ``timecode`` labels in lists that name none."""


@dataclass(frozen=True, slots=True)
class TimecodeCue:
    """A cue with a timecode trigger, its label parsed at its list's rate."""

    list_id: str
    cue: str  # the cue number as text (``format_cue_number``)
    at: Timecode
    rearm_on_backward: bool


class Show(_Strict):
    """A whole show file (version ``SHOW_VERSION``)."""

    version: Literal[1]
    show: ShowInfo
    groups: dict[Name, list[DeviceRef]] = Field(default_factory=dict, max_length=1000)
    """Fixture groups the show defines, in addition to the venue's."""
    presets: dict[Name, Preset] = Field(default_factory=dict, max_length=10_000)
    positions: dict[DeviceRef, dict[Name, float]] = Field(default_factory=dict, max_length=1000)
    """Named positions per axis: positions."hoist-1".trim = 3000 (the axis's unit)."""
    lists: list[CueList] = Field(min_length=1, max_length=256)

    def cue_list(self, list_id: str) -> CueList | None:
        for cl in self.lists:
            if cl.id == list_id:
                return cl
        return None

    def timecode_rate(self, cue_list: CueList) -> FrameRate:
        """The rate of ``cue_list``'s timecode labels: its own, else the show's."""
        fps = cue_list.timecode_fps
        return rate_of(self.show.timecode_fps if fps is None else fps)

    def timecode_cues(self) -> list[TimecodeCue]:
        """Every cue with a ``timecode``, in file order. Labels that do not exist at their
        rate are left out (``check_show`` refuses them, so a loaded show has none)."""
        out: list[TimecodeCue] = []
        for cl in self.lists:
            rate = self.timecode_rate(cl)
            rearm = cl.timecode_rearm is TimecodeRearm.ON_BACKWARD
            for cue in cl.cues:
                if cue.timecode is None:
                    continue
                try:
                    at = Timecode.parse(cue.timecode, rate)
                except TimecodeError:
                    continue
                out.append(TimecodeCue(cl.id, format_cue_number(cue.number), at, rearm))
        return out
