"""Checks of a parsed show against itself and against the venue's catalogue.

``controller.show.model`` checks what one field or one object can tell alone; this module
checks what needs the whole show (cue lists, presets, positions, groups it defines; duplicate
cue numbers; cycles of follows and of ``list.start``) and what needs the venue: device ids,
their profiles' points, commands and ranges, fixture groups, DMX universes, sound-field modes
and media files. The venue arrives as a ``Catalogue`` built by the caller, so ``controller/``
never reads ``edge/``'s configuration.

``check_show`` returns every problem at once as ``'key.path: what'`` lines; key paths name
cue lists by id and cues by number (``lists[main].cues[12.5].actions[0].device``) so that a
person finds the place in the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from controller.timecode import Timecode, TimecodeError
from drivers.model import CommandError, Device, DmxTransport, PointSpec, Profile

from .model import (
    Action,
    AudioLevels,
    AudioPlay,
    AudioSoundfield,
    Cue,
    CueList,
    DeviceCommand,
    Level,
    LightingLevels,
    LightingPreset,
    ListStart,
    ListStop,
    MachineryGoto,
    MachineryMove,
    MachineryStop,
    MotionProfile,
    Show,
    WaitPoint,
    WaitPosition,
    WaitTimecode,
    format_cue_number,
)

DEFAULT_SOUNDFIELD_MODES = frozenset(
    {"concert", "opera", "drama", "cinema", "conference", "multi-purpose", "off"}
)
"""The sound-field modes a venue has unless its catalogue names others."""

INTENSITY_POINTS = ("intensity", "dimmer")
"""The point a fixture level without an attribute drives, the first the profile has."""

MOVE_COMMAND = "move_to"
STOP_COMMAND = "stop"
POSITION_POINT = "position"


@dataclass(frozen=True)
class Catalogue:
    """What a show may refer to in its venue.

    ``devices``: device id -> profile (fixtures are the devices whose profile speaks DMX).
    ``groups``: fixture group name -> member device ids (a venue's ``[[groups]]`` labels).
    ``universes``: the DMX universes a channel level may address (None: not checked).
    ``soundfield_modes``: the modes ``audio.soundfield`` may recall.
    ``media_dir``: where ``audio.play`` files must exist (None: existence is not checked).
    """

    devices: Mapping[str, Profile] = field(default_factory=dict)
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    universes: frozenset[int] | None = None
    soundfield_modes: frozenset[str] = DEFAULT_SOUNDFIELD_MODES
    media_dir: Path | None = None

    @classmethod
    def from_devices(
        cls,
        devices: Iterable[Device],
        groups: Mapping[str, Iterable[str]] | None = None,
        *,
        universes: Iterable[int] | None = None,
        soundfield_modes: Iterable[str] | None = None,
        media_dir: Path | None = None,
    ) -> Catalogue:
        """A catalogue of ``drivers.model.Device`` objects (what a loaded venue holds).

        Without ``universes``, the universes the fixtures are patched in are allowed."""
        devs = list(devices)
        if universes is None:
            universes = {
                d.transport.universe for d in devs if isinstance(d.transport, DmxTransport)
            }
        return cls(
            devices={d.id: d.profile for d in devs},
            groups={name: tuple(ids) for name, ids in (groups or {}).items()},
            universes=frozenset(universes),
            soundfield_modes=(
                frozenset(soundfield_modes)
                if soundfield_modes is not None
                else DEFAULT_SOUNDFIELD_MODES
            ),
            media_dir=media_dir,
        )


def list_key(index: int, cue_list: CueList | Mapping[str, Any] | Any) -> str:
    """``lists[main]`` (by id) or ``lists[3]`` when the list has no usable id."""
    ident = cue_list.id if isinstance(cue_list, CueList) else None
    if isinstance(cue_list, Mapping):
        raw = cue_list.get("id")
        ident = raw if isinstance(raw, str) and 0 < len(raw) <= 64 else None
    return f"lists[{ident}]" if ident else f"lists[{index}]"


def cue_key(cue: Cue) -> str:
    return f"cues[{format_cue_number(cue.number)}]"


def check_show(show: Show, catalogue: Catalogue | None = None) -> list[str]:
    """Every problem of ``show`` as 'key.path: what' lines (empty: the show is good).

    Without a catalogue only the show's own consistency is checked."""
    return _Checker(show, catalogue).run()


class _Checker:
    def __init__(self, show: Show, catalogue: Catalogue | None) -> None:
        self.show = show
        self.cat = catalogue
        self.problems: list[str] = []
        self.lists = {cl.id: cl for cl in show.lists}

    def run(self) -> list[str]:
        self._check_lists()
        self._check_groups()
        for name, preset in self.show.presets.items():
            for i, level in enumerate(preset.levels):
                self._level(f"presets.{name}.levels[{i}]", level)
        self._check_positions()
        for li, cl in enumerate(self.show.lists):
            lk = list_key(li, cl)
            for cue in cl.cues:
                ck = f"{lk}.{cue_key(cue)}"
                for ai, action in enumerate(cue.actions):
                    self._action(f"{ck}.actions[{ai}]", action)
                for p in cue.parts:
                    for ai, action in enumerate(p.actions):
                        self._action(f"{ck}.parts[{p.part}].actions[{ai}]", action)
        self._check_follow_cycles()
        self._check_start_cycles()
        self._check_timecodes()
        return self.problems

    def add(self, key: str, what: str) -> None:
        self.problems.append(f"{key}: {what}")

    # --- structure ------------------------------------------------------------------------

    def _check_lists(self) -> None:
        first: dict[str, int] = {}
        for li, cl in enumerate(self.show.lists):
            if cl.id in first:
                self.add(
                    f"lists[{li}].id",
                    f"cue list '{cl.id}' is defined twice (also lists[{first[cl.id]}])",
                )
            else:
                first[cl.id] = li
            lk = list_key(li, cl)
            numbers: set[str] = set()
            all_numbers = {c.number for c in cl.cues}
            previous: Cue | None = None
            for cue in cl.cues:
                text = format_cue_number(cue.number)
                if text in numbers:
                    self.add(f"{lk}.{cue_key(cue)}.number", f"duplicate cue number {text}")
                elif previous is not None and cue.number < previous.number:
                    self.add(
                        f"{lk}.{cue_key(cue)}.number",
                        f"cue {text} comes after cue {format_cue_number(previous.number)}: "
                        "cues are listed in ascending order",
                    )
                numbers.add(text)
                previous = cue
                if cue.next is not None and cue.next not in all_numbers:
                    self.add(
                        f"{lk}.{cue_key(cue)}.next",
                        f"no cue {format_cue_number(cue.next)} in cue list '{cl.id}'",
                    )

    def _check_groups(self) -> None:
        for name, members in self.show.groups.items():
            key = f"groups.{name}"
            if self.cat is not None and name in self.cat.groups:
                self.add(key, f"the venue already has a group '{name}'")
            if not members:
                self.add(key, "a group needs at least one fixture")
            seen: set[str] = set()
            for i, dev in enumerate(members):
                if dev in seen:
                    self.add(f"{key}[{i}]", f"fixture '{dev}' is listed twice")
                seen.add(dev)
                self._fixture(f"{key}[{i}]", dev)

    def _check_positions(self) -> None:
        for dev, named in self.show.positions.items():
            profile = self._device(f"positions.{dev}", dev)
            if profile is None:
                continue
            if MOVE_COMMAND not in profile.commands:
                self.add(f"positions.{dev}", self._no_command(dev, profile, MOVE_COMMAND))
                continue
            for name, value in named.items():
                self._command(
                    f"positions.{dev}.{name}", dev, profile, MOVE_COMMAND, {"position": value}
                )

    # --- references -----------------------------------------------------------------------

    def _device(self, key: str, dev: str) -> Profile | None:
        if self.cat is None:
            return None
        profile = self.cat.devices.get(dev)
        if profile is None:
            self.add(key, f"no device '{dev}' in the venue")
        return profile

    def _fixture(self, key: str, dev: str) -> Profile | None:
        profile = self._device(key, dev)
        if profile is not None and profile.protocol != "dmx":
            self.add(key, f"device '{dev}' ({profile.id}) is not a DMX fixture")
            return None
        return profile

    def _point(
        self, key: str, dev: str, profile: Profile, point: str, *, write: bool
    ) -> PointSpec | None:
        spec = profile.points.get(point)
        if spec is None:
            self.add(key, f"device '{dev}' ({profile.id}) has no point '{point}'")
            return None
        if write and not spec.access.writable:
            self.add(key, f"point '{point}' of device '{dev}' is read-only")
            return None
        if not write and not spec.access.readable:
            self.add(key, f"point '{point}' of device '{dev}' cannot be read")
            return None
        return spec

    @staticmethod
    def _no_command(dev: str, profile: Profile, command: str) -> str:
        names = sorted(profile.commands)
        known = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        return (
            f"device '{dev}' ({profile.id}) has no command '{command}' (it has: {known or 'none'})"
        )

    def _command(
        self, key: str, dev: str, profile: Profile, command: str, args: Mapping[str, Any]
    ) -> None:
        if command not in profile.commands:
            self.add(key, self._no_command(dev, profile, command))
            return
        try:
            profile.resolve_command(command, args)
        except CommandError as exc:
            self.add(key, f"device '{dev}': {exc}")

    # --- lighting -------------------------------------------------------------------------

    def _level(self, key: str, level: Level) -> None:
        if level.channel is not None:
            u = level.channel.universe
            universes = self.cat.universes if self.cat is not None else None
            if universes is not None and u not in universes:
                known = ", ".join(str(x) for x in sorted(universes)) or "none"
                self.add(f"{key}.channel", f"universe {u} is not patched (patched: {known})")
            return
        if level.fixture is not None:
            members: list[tuple[str, str]] = [(f"{key}.fixture", level.fixture)]
        else:
            assert level.group is not None
            group = self._group(f"{key}.group", level.group)
            members = [(f"{key}.group ('{level.group}': '{m}')", m) for m in group]
        for mkey, dev in members:
            profile = self._fixture(mkey, dev)
            if profile is None:
                continue
            self._fixture_level(mkey, dev, profile, level)

    def _group(self, key: str, name: str) -> tuple[str, ...]:
        if name in self.show.groups:
            return tuple(self.show.groups[name])
        if self.cat is not None:
            if name in self.cat.groups:
                return self.cat.groups[name]
            known = sorted({*self.show.groups, *self.cat.groups})
            self.add(key, f"no group '{name}' (groups: {', '.join(known) or 'none'})")
        return ()

    def _fixture_level(self, key: str, dev: str, profile: Profile, level: Level) -> None:
        if level.attribute is None:
            if not any(p in profile.points for p in INTENSITY_POINTS):
                self.add(
                    key,
                    f"fixture '{dev}' ({profile.id}) has no intensity point "
                    f"({' or '.join(INTENSITY_POINTS)}): name one with 'attribute'",
                )
            return
        spec = self._point(key, dev, profile, level.attribute, write=True)
        if spec is not None and (reason := spec.check_range(level.level)):
            self.add(key.replace(".fixture", ".level"), f"{dev}.{level.attribute}: {reason}")

    # --- actions --------------------------------------------------------------------------

    def _action(self, key: str, action: Action) -> None:
        if isinstance(action, LightingLevels):
            for i, level in enumerate(action.levels):
                self._level(f"{key}.levels[{i}]", level)
        elif isinstance(action, LightingPreset):
            if action.preset not in self.show.presets:
                self.add(f"{key}.preset", f"no preset '{action.preset}' in [presets]")
        elif isinstance(action, MachineryMove):
            for i, axis in enumerate(action.axes):
                akey = f"{key}.axes[{i}]"
                profile = self._device(f"{akey}.device", axis.device)
                if profile is not None:
                    args = _move_args(axis.position, axis, action.profile)
                    self._command(akey, axis.device, profile, MOVE_COMMAND, args)
        elif isinstance(action, MachineryGoto):
            named = self.show.positions.get(action.device)
            if named is None or action.position not in named:
                self.add(
                    f"{key}.position",
                    f"no position '{action.position}' for '{action.device}' in [positions]",
                )
            else:
                profile = self._device(f"{key}.device", action.device)
                if profile is not None:
                    args = _move_args(named[action.position], action.profile, MotionProfile())
                    self._command(key, action.device, profile, MOVE_COMMAND, args)
        elif isinstance(action, MachineryStop):
            for i, dev in enumerate(action.devices):
                profile = self._device(f"{key}.devices[{i}]", dev)
                if profile is not None and STOP_COMMAND not in profile.commands:
                    self.add(f"{key}.devices[{i}]", self._no_command(dev, profile, STOP_COMMAND))
        elif isinstance(action, AudioSoundfield):
            modes = self.cat.soundfield_modes if self.cat is not None else DEFAULT_SOUNDFIELD_MODES
            if action.mode not in modes:
                self.add(
                    f"{key}.mode",
                    f"no sound-field mode '{action.mode}' (modes: {', '.join(sorted(modes))})",
                )
        elif isinstance(action, AudioLevels):
            for i, lv in enumerate(action.levels):
                lkey = f"{key}.levels[{i}]"
                profile = self._device(f"{lkey}.device", lv.device)
                if profile is None:
                    continue
                spec = self._point(f"{lkey}.point", lv.device, profile, lv.point, write=True)
                if spec is not None and (reason := spec.check_range(lv.value)):
                    self.add(f"{lkey}.value", f"{lv.device}.{lv.point}: {reason}")
        elif isinstance(action, AudioPlay):
            self._media(f"{key}.file", action.file)
        elif isinstance(action, DeviceCommand):
            profile = self._device(f"{key}.device", action.device)
            if profile is not None:
                self._command(key, action.device, profile, action.command, action.args)
        elif isinstance(action, WaitPosition):
            profile = self._device(f"{key}.device", action.device)
            if profile is not None:
                spec = self._point(
                    f"{key}.device", action.device, profile, POSITION_POINT, write=False
                )
                if spec is not None and (reason := spec.check_range(action.position)):
                    self.add(f"{key}.position", f"{action.device}.position: {reason}")
        elif isinstance(action, WaitPoint):
            profile = self._device(f"{key}.device", action.device)
            if profile is not None:
                spec = self._point(
                    f"{key}.point", action.device, profile, action.point, write=False
                )
                if spec is not None:
                    self._threshold(key, action, spec)
        elif isinstance(action, ListStart | ListStop):
            target = self.lists.get(action.list)
            if target is None:
                self.add(f"{key}.list", f"no cue list '{action.list}'")
            elif (
                isinstance(action, ListStart)
                and action.cue is not None
                and target.cue(action.cue) is None
            ):
                self.add(
                    f"{key}.cue",
                    f"no cue {format_cue_number(action.cue)} in cue list '{action.list}'",
                )
        else:
            assert isinstance(action, WaitTimecode)  # fully checked by the model

    def _threshold(self, key: str, action: WaitPoint, spec: PointSpec) -> None:
        if action.above is not None and spec.max is not None and action.above >= spec.max:
            self.add(
                f"{key}.above",
                f"{action.device}.{action.point} can never be above {action.above:g}: "
                f"its maximum is {spec.max:g} {spec.unit}".rstrip(),
            )
        if action.below is not None and spec.min is not None and action.below <= spec.min:
            self.add(
                f"{key}.below",
                f"{action.device}.{action.point} can never be below {action.below:g}: "
                f"its minimum is {spec.min:g} {spec.unit}".rstrip(),
            )

    def _media(self, key: str, name: str) -> None:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if PureWindowsPath(name).drive or name.startswith(("/", "\\")) or ".." in parts:
            self.add(key, f"'{name}' must be a path inside the show's folder (no '/…' or '..')")
            return
        media = self.cat.media_dir if self.cat is not None else None
        if media is not None and not (media / name).is_file():
            self.add(key, f"no file '{name}' in {media}")

    # --- cycles ---------------------------------------------------------------------------

    def _check_follow_cycles(self) -> None:
        """A chain of automatic cues (follow / auto-continue) that comes back to itself runs
        for ever without an operator: refuse it."""
        for li, cl in enumerate(self.show.lists):
            at = {c.number: i for i, c in reversed(list(enumerate(cl.cues)))}
            n = len(cl.cues)

            def succ(i: int, cl: CueList = cl, at: dict[Any, int] = at, n: int = n) -> int | None:
                cue = cl.cues[i]
                if cue.next is not None:
                    return at.get(cue.next)
                return i + 1 if i + 1 < n else (0 if cl.loop else None)

            state = [0] * n  # 0 unseen, 1 on the current path, 2 done
            for start in range(n):
                path: list[int] = []
                i: int | None = start
                while i is not None and state[i] == 0 and cl.cues[i].automatic:
                    state[i] = 1
                    path.append(i)
                    i = succ(i)
                if i is not None and state[i] == 1:
                    loop = path[path.index(i) :]
                    names = " → ".join(format_cue_number(cl.cues[k].number) for k in loop)
                    first = format_cue_number(cl.cues[i].number)
                    self.add(
                        f"{list_key(li, cl)}.{cue_key(cl.cues[loop[-1]])}",
                        f"cues {names} → {first} follow or auto-continue each other for ever: "
                        "one of them must wait for a GO",
                    )
                for k in path:
                    state[k] = 2

    def _check_start_cycles(self) -> None:
        """Cue lists that start each other in a ring (A starts B starts A) never settle.

        Rings are the strongly connected components of the list.start graph (Tarjan's
        algorithm, iterative: linear time however hostile the file); each is reported once
        with one ring through its first list."""
        edges: dict[str, list[str]] = {}
        for cl in self.show.lists:
            targets = edges.setdefault(cl.id, [])
            for cue in cl.cues:
                for _, _, action in cue.all_actions():
                    if (
                        isinstance(action, ListStart)
                        and action.list in self.lists
                        and action.list not in targets
                    ):
                        targets.append(action.list)
        for component in _components(edges):
            first = component[0]
            if len(component) == 1 and first not in edges[first]:
                continue
            chain = " → ".join(_ring(first, set(component), edges))
            self.add(
                f"lists[{first}]",
                f"cue lists start each other in a ring ({chain}): a list.start cycle never settles",
            )

    # --- timecode triggers ----------------------------------------------------------------

    def _check_timecodes(self) -> None:
        """Cue ``timecode`` labels: they exist at the list's rate (frames below the rate, not
        a label drop-frame skips; ``;`` only at 29.97 drop-frame), no two cues of a list share
        one, and no cue with a timecode is also started by the follow / auto-continue of the
        cue before it (two clocks would start it: which runs, or whether it runs twice,
        would depend on where the master is)."""
        for li, cl in enumerate(self.show.lists):
            lk = list_key(li, cl)
            rate = self.show.timecode_rate(cl)
            seen: dict[Timecode, str] = {}
            for cue in cl.cues:
                if cue.timecode is None:
                    continue
                key = f"{lk}.{cue_key(cue)}.timecode"
                if ";" in cue.timecode and not rate.drop_frame:
                    self.add(
                        key,
                        f"timecode {cue.timecode}: ';' marks a drop-frame label but the "
                        f"list's rate is {rate.label} fps",
                    )
                    continue
                try:
                    at = Timecode.parse(cue.timecode, rate)
                except TimecodeError as exc:
                    self.add(key, f"timecode {exc} (the list's rate is {rate.label} fps)")
                    continue
                text = format_cue_number(cue.number)
                if at in seen:
                    self.add(key, f"timecode {at} is also the trigger of cue {seen[at]}")
                else:
                    seen[at] = text
            n = len(cl.cues)
            at_index = {c.number: i for i, c in reversed(list(enumerate(cl.cues)))}
            for i, cue in enumerate(cl.cues):
                if not cue.automatic:
                    continue
                if cue.next is not None:
                    j = at_index.get(cue.next)
                else:
                    j = i + 1 if i + 1 < n else (0 if cl.loop and n else None)
                if j is None or cl.cues[j].timecode is None:
                    continue
                target = cl.cues[j]
                how = "follows" if cue.follow else "auto-continues"
                self.add(
                    f"{lk}.{cue_key(target)}.timecode",
                    f"cue {format_cue_number(target.number)} has a timecode trigger and cue "
                    f"{format_cue_number(cue.number)} {how} into it: start it by one or the "
                    "other",
                )


def _components(edges: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components of ``edges`` (iterative Tarjan), members in file order."""
    order = {n: i for i, n in enumerate(edges)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            succ = edges[node]
            if child < len(succ):
                work.append((node, child + 1))
                nxt = succ[child]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                members: list[str] = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    members.append(m)
                    if m == node:
                        break
                out.append(sorted(members, key=order.__getitem__))
    return out


def _ring(first: str, members: set[str], edges: dict[str, list[str]]) -> list[str]:
    """The shortest ring first → … → first inside one component (breadth first)."""
    came: dict[str, str] = {}
    queue = [first]
    for node in queue:
        for nxt in edges[node]:
            if nxt == first:
                ring = [first]
                while node != first:
                    ring.insert(1, node)
                    node = came[node]
                return [*ring, first]
            if nxt in members and nxt not in came:
                came[nxt] = node
                queue.append(nxt)
    return [first, first]  # pragma: no cover - a component always has a ring


def _move_args(position: float, own: MotionProfile, defaults: MotionProfile) -> dict[str, float]:
    args: dict[str, float] = {"position": position}
    speed = own.speed if own.speed is not None else defaults.speed
    accel = own.acceleration if own.acceleration is not None else defaults.acceleration
    if speed is not None:
        args["speed"] = speed
    if accel is not None:
        args["acceleration"] = accel
    return args
