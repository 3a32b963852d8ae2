"""Migrations of show files from older format versions to the current one.

A migration is a pure function from the raw data (parsed TOML) of version *n* to the raw data
of version *n + 1*; ``migrate`` chains them, so a file of any supported version reaches
``SHOW_VERSION`` one step at a time and each step is written and tested once. A migration
never validates: it renames and reshapes what it recognises and leaves everything else as it
is, so the current model reports anything wrong with the usual precise message. It reports
only what it cannot carry over, as 'key.path: what' lines.

Adding version 2 means: bump ``SHOW_VERSION`` and the model, write ``_v1_to_v2``, register it
in ``MIGRATIONS``, and add a v1 file to the tests that must load as the v2 model.

Version 0 is the draft format used before shows were versioned (``docs/interfaces/
show-file.md``, "Versions"): ``title`` at the top, ``[[cuelists]]`` with ``tracking = true``,
actions told apart by ``type`` with times ``delay`` / ``fade`` in seconds, and ``wait`` for the
auto-continue time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from .model import SHOW_VERSION

Raw = dict[str, Any]


class MigrationError(ValueError):
    """What a migration could not carry over, as 'key.path: what' lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


_V0_KINDS = {
    "levels": "lighting.levels",
    "preset": "lighting.preset",
    "move": "machinery.move",
    "stop": "machinery.stop",
    "command": "device.command",
    "soundfield": "audio.soundfield",
    "start_list": "list.start",
    "stop_list": "list.stop",
}
_V0_TIMES = {"delay": "delay_s", "fade": "fade_s", "up": "up_s", "down": "down_s"}


def _v0_to_v1(data: Raw) -> Raw:
    problems: list[str] = []
    out: Raw = {k: v for k, v in data.items() if k not in ("title", "cuelists", "notes")}
    info: Raw = {}
    if "title" in data:
        info["title"] = data["title"]
    if "notes" in data:
        info["notes"] = data["notes"]
    if info:
        out["show"] = info
    if "cuelists" in data:
        lists = data["cuelists"]
        if isinstance(lists, list):
            out["lists"] = [
                _v0_list(f"cuelists[{i}]", cl, problems) if isinstance(cl, dict) else cl
                for i, cl in enumerate(lists)
            ]
        else:
            out["lists"] = lists
    if problems:
        raise MigrationError(problems)
    out["version"] = 1
    return out


def _v0_list(key: str, cl: Raw, problems: list[str]) -> Raw:
    out = {k: v for k, v in cl.items() if k != "tracking"}
    if "tracking" in cl:
        tracking = cl["tracking"]
        if isinstance(tracking, bool):
            out["mode"] = "tracking" if tracking else "cue-only"
        else:
            problems.append(f"{key}.tracking: expected true or false (version 0)")
    cues = cl.get("cues")
    if isinstance(cues, list):
        out["cues"] = [
            _v0_cue(f"{key}.cues[{j}]", c, problems) if isinstance(c, dict) else c
            for j, c in enumerate(cues)
        ]
    return out


def _v0_cue(key: str, cue: Raw, problems: list[str]) -> Raw:
    out = {k: v for k, v in cue.items() if k != "wait"}
    if "wait" in cue:
        out["auto_continue_s"] = cue["wait"]
    actions = cue.get("actions")
    if isinstance(actions, list):
        out["actions"] = [
            _v0_action(f"{key}.actions[{a}]", act, problems) if isinstance(act, dict) else act
            for a, act in enumerate(actions)
        ]
    return out


def _v0_action(key: str, action: Raw, problems: list[str]) -> Raw:
    out: Raw = {}
    for k, v in action.items():
        if k == "type":
            kind = _V0_KINDS.get(v) if isinstance(v, str) else None
            if kind is None:
                known = ", ".join(sorted(_V0_KINDS))
                problems.append(f"{key}.type: {v!r} is not a version 0 action type ({known})")
                continue
            out["kind"] = kind
        else:
            out[_V0_TIMES.get(k, k)] = v
    return out


MIGRATIONS: dict[int, Callable[[Raw], Raw]] = {0: _v0_to_v1}
"""version n -> the function that turns a version n file into version n + 1."""

OLDEST_VERSION = min(MIGRATIONS)


def migrate(data: Raw) -> tuple[Raw, int]:
    """``data`` brought to ``SHOW_VERSION``, and the version it had.

    The input is not modified. Raises MigrationError for a missing, unknown or newer version
    and for what a step cannot carry over."""
    version = data.get("version")
    if version is None:
        raise MigrationError([f"version: missing (write version = {SHOW_VERSION} first)"])
    if isinstance(version, bool) or not isinstance(version, int):
        raise MigrationError([f"version: expected a whole number, got {version!r:.40}"])
    if version > SHOW_VERSION:
        raise MigrationError(
            [
                f"version: {version} is newer than this Flytower reads "
                f"({OLDEST_VERSION} … {SHOW_VERSION}): upgrade Flytower"
            ]
        )
    if version < OLDEST_VERSION:
        raise MigrationError(
            [f"version: {version} is not a show file version ({OLDEST_VERSION} … {SHOW_VERSION})"]
        )
    current = copy.deepcopy(data) if version < SHOW_VERSION else data
    for step in range(version, SHOW_VERSION):
        current = MIGRATIONS[step](current)
    return current, version
