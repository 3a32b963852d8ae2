"""The show model and its checks: every kind of bad input gets a precise 'key.path: what'."""

from __future__ import annotations

import copy
from decimal import Decimal
from functools import cache
from typing import Any

import pytest

from controller.show import (
    Catalogue,
    Show,
    ShowError,
    format_cue_number,
    loads_show,
    migrate,
    parse_cue_number,
    parse_show,
)
from controller.show.model import LightingLevels, ListMode
from drivers.model import Profile, find_profile, load_profile


@cache
def profile(name: str) -> Profile:
    return load_profile(find_profile(name))


def catalogue() -> Catalogue:
    devices = {
        "hoist-1": profile("hoist"),
        "hoist-2": profile("hoist"),
        "revolve": profile("turntable"),
        "par-1": profile("led_par_rgbw"),
        "par-2": profile("led_par_rgbw"),
        "spot-1": profile("moving_head"),
        "dsp-1": profile("dsp_matrix"),
        "media-1": profile("media_server"),
        "loadcell-1": profile("load_cell"),
    }
    return Catalogue(devices=devices, groups={"pars": ("par-1", "par-2")}, universes=frozenset({1}))


def base() -> dict[str, Any]:
    """A small valid show: one list, three cues."""
    return {
        "version": 1,
        "show": {"title": "Test"},
        "presets": {"warm": {"levels": [{"group": "pars", "level": 80}]}},
        "positions": {"hoist-1": {"trim": 3000}},
        "lists": [
            {
                "id": "main",
                "cues": [
                    {
                        "number": 1,
                        "actions": [
                            {
                                "kind": "lighting.levels",
                                "levels": [{"fixture": "par-1", "level": 50}],
                            }
                        ],
                    },
                    {"number": 2, "actions": [{"kind": "lighting.preset", "preset": "warm"}]},
                    {
                        "number": 3,
                        "actions": [
                            {"kind": "machinery.goto", "device": "hoist-1", "position": "trim"}
                        ],
                    },
                ],
            },
            {"id": "fx", "cues": [{"number": 1}]},
        ],
    }


def problems(data: dict[str, Any], cat: Catalogue | None = None) -> list[str]:
    with pytest.raises(ShowError) as info:
        parse_show(data, "show.toml", cat if cat is not None else catalogue())
    return info.value.problems


def with_action(action: dict[str, Any], cue: int = 0) -> dict[str, Any]:
    data = base()
    data["lists"][0]["cues"][cue]["actions"] = [action]
    return data


def test_the_base_show_is_valid_and_typed() -> None:
    show = parse_show(base(), "show.toml", catalogue())
    assert isinstance(show, Show)
    main = show.lists[0]
    assert main.mode is ListMode.TRACKING and main.priority == 100 and main.go_debounce_s == 0.3
    assert [c.number for c in main.cues] == [Decimal(1), Decimal(2), Decimal(3)]
    action = main.cues[0].actions[0]
    assert isinstance(action, LightingLevels)
    assert action.levels[0].fixture == "par-1" and action.duration_s == 0


@pytest.mark.parametrize(
    ("raw", "text"),
    [(12, "12"), (12.5, "12.5"), ("12.50", "12.5"), (0.001, "0.001"), ("7", "7"), (10.0, "10")],
)
def test_cue_numbers_are_decimals(raw: object, text: str) -> None:
    assert format_cue_number(parse_cue_number(raw)) == text


@pytest.mark.parametrize(
    "raw", [-1, 1e9, "abc", True, float("nan"), float("inf"), "1.2345", "1e3", None, [1]]
)
def test_bad_cue_numbers_are_refused(raw: object) -> None:
    with pytest.raises(ValueError, match="cue number"):
        parse_cue_number(raw)


def test_12_5_and_12_50_are_the_same_cue() -> None:
    data = base()
    data["lists"][1]["cues"] = [{"number": 12.5}, {"number": "12.50"}]
    assert problems(data) == ["lists[fx].cues[12.5].number: duplicate cue number 12.5"]


def test_cues_must_ascend() -> None:
    data = base()
    data["lists"][1]["cues"] = [{"number": 5}, {"number": 4}]
    assert problems(data) == [
        "lists[fx].cues[4].number: cue 4 comes after cue 5: cues are listed in ascending order"
    ]


def test_unknown_fields_are_named_with_their_path() -> None:
    data = base()
    data["lists"][0]["cues"][0]["actions"][0]["colour"] = "red"
    data["lists"][0]["cues"][1]["lable"] = "typo"
    data["extra"] = 1
    assert sorted(problems(data)) == [
        "extra: unknown key (not part of the show format)",
        "lists[main].cues[1].actions[0].colour: unknown key (not part of the show format)",
        "lists[main].cues[2].lable: unknown key (not part of the show format)",
    ]


def test_unknown_action_kind() -> None:
    (line,) = problems(with_action({"kind": "lighting.smoke"}))
    assert line.startswith("lists[main].cues[1].actions[0]: Input tag 'lighting.smoke'")


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (
            {"kind": "lighting.levels", "levels": [{"fixture": "par-9", "level": 5}]},
            "lists[main].cues[1].actions[0].levels[0].fixture: no device 'par-9' in the venue",
        ),
        (
            {"kind": "lighting.levels", "levels": [{"fixture": "hoist-1", "level": 5}]},
            "lists[main].cues[1].actions[0].levels[0].fixture: device 'hoist-1' (hoist) is "
            "not a DMX fixture",
        ),
        (
            {"kind": "lighting.levels", "levels": [{"group": "movers", "level": 5}]},
            "lists[main].cues[1].actions[0].levels[0].group: no group 'movers' (groups: pars)",
        ),
        (
            {
                "kind": "lighting.levels",
                "levels": [{"fixture": "par-1", "attribute": "zoom", "level": 5}],
            },
            "lists[main].cues[1].actions[0].levels[0].fixture: device 'par-1' (led_par_rgbw) "
            "has no point 'zoom'",
        ),
        (
            {
                "kind": "lighting.levels",
                "levels": [{"channel": {"universe": 7, "address": 1}, "level": 5}],
            },
            "lists[main].cues[1].actions[0].levels[0].channel: universe 7 is not patched "
            "(patched: 1)",
        ),
        (
            {"kind": "lighting.preset", "preset": "cold"},
            "lists[main].cues[1].actions[0].preset: no preset 'cold' in [presets]",
        ),
        (
            {"kind": "machinery.move", "axes": [{"device": "hoist-9", "position": 5}]},
            "lists[main].cues[1].actions[0].axes[0].device: no device 'hoist-9' in the venue",
        ),
        (
            {"kind": "machinery.move", "axes": [{"device": "par-1", "position": 5}]},
            "lists[main].cues[1].actions[0].axes[0]: device 'par-1' (led_par_rgbw) has no "
            "command 'move_to' (it has: set_colour, set_intensity)",
        ),
        (
            {"kind": "machinery.goto", "device": "hoist-1", "position": "out"},
            "lists[main].cues[1].actions[0].position: no position 'out' for 'hoist-1' in "
            "[positions]",
        ),
        (
            {"kind": "machinery.stop", "devices": ["dsp-1"]},
            "lists[main].cues[1].actions[0].devices[0]: device 'dsp-1' (dsp_matrix) has no "
            "command 'stop'",
        ),
        (
            {"kind": "device.command", "device": "media-1", "command": "rewind"},
            "lists[main].cues[1].actions[0]: device 'media-1' (media_server) has no command "
            "'rewind'",
        ),
        (
            {"kind": "device.command", "device": "media-1", "command": "load_clip"},
            "lists[main].cues[1].actions[0]: device 'media-1': load_clip: argument 'clip' is "
            "required",
        ),
        (
            {"kind": "list.start", "list": "encore"},
            "lists[main].cues[1].actions[0].list: no cue list 'encore'",
        ),
        (
            {"kind": "list.start", "list": "fx", "cue": 9},
            "lists[main].cues[1].actions[0].cue: no cue 9 in cue list 'fx'",
        ),
        (
            {"kind": "list.stop", "list": "encore"},
            "lists[main].cues[1].actions[0].list: no cue list 'encore'",
        ),
        (
            {"kind": "audio.soundfield", "mode": "disco"},
            "lists[main].cues[1].actions[0].mode: no sound-field mode 'disco' (modes: cinema, "
            "concert, conference, drama, multi-purpose, off, opera)",
        ),
        (
            {
                "kind": "audio.levels",
                "levels": [{"device": "dsp-1", "point": "in_9_gain", "value": 0}],
            },
            "lists[main].cues[1].actions[0].levels[0].point: device 'dsp-1' (dsp_matrix) has no "
            "point 'in_9_gain'",
        ),
        (
            {
                "kind": "audio.levels",
                "levels": [{"device": "loadcell-1", "point": "load", "value": 0}],
            },
            "lists[main].cues[1].actions[0].levels[0].point: point 'load' of device 'loadcell-1' "
            "is read-only",
        ),
        (
            {"kind": "wait.point", "device": "loadcell-1", "point": "tare", "above": 1},
            "lists[main].cues[1].actions[0].point: point 'tare' of device 'loadcell-1' cannot "
            "be read",
        ),
        (
            {"kind": "wait.position", "device": "dsp-1", "position": 1},
            "lists[main].cues[1].actions[0].device: device 'dsp-1' (dsp_matrix) has no point "
            "'position'",
        ),
        (
            {"kind": "audio.play", "file": "../secret.wav"},
            "lists[main].cues[1].actions[0].file: '../secret.wav' must be a path inside the "
            "show's folder (no '/…' or '..')",
        ),
        (
            {"kind": "audio.play", "file": "/etc/passwd"},
            "lists[main].cues[1].actions[0].file: '/etc/passwd' must be a path inside the "
            "show's folder (no '/…' or '..')",
        ),
    ],
)
def test_missing_references(action: dict[str, Any], expected: str) -> None:
    (line,) = problems(with_action(action))
    assert line.startswith(expected)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (
            {"kind": "lighting.levels", "levels": [{"fixture": "par-1", "level": 120}]},
            "lists[main].cues[1].actions[0].levels[0]: level 120 % is outside 0 … 100 %",
        ),
        (
            {
                "kind": "lighting.levels",
                "levels": [{"fixture": "spot-1", "attribute": "pan", "level": 600}],
            },
            "lists[main].cues[1].actions[0].levels[0].level: spot-1.pan: 600 is above the "
            "maximum 540 °",
        ),
        (
            {
                "kind": "audio.levels",
                "levels": [{"device": "dsp-1", "point": "out_1_gain", "value": 20}],
            },
            "lists[main].cues[1].actions[0].levels[0].value: dsp-1.out_1_gain: 20 is above the "
            "maximum 10 dB",
        ),
        (
            {"kind": "machinery.move", "axes": [{"device": "hoist-1", "position": 20000}]},
            "lists[main].cues[1].actions[0].axes[0]: device 'hoist-1': move_to: position 20000 "
            "is above the maximum 12000 mm (range of 'target_position')",
        ),
        (
            {
                "kind": "machinery.move",
                "axes": [{"device": "hoist-1", "position": 10, "speed": 5000}],
            },
            "lists[main].cues[1].actions[0].axes[0]: device 'hoist-1': move_to: speed 5000 is "
            "above the maximum 1500 mm/s",
        ),
        (
            {
                "kind": "device.command",
                "device": "media-1",
                "command": "load_clip",
                "args": {"clip": 0},
            },
            "lists[main].cues[1].actions[0]: device 'media-1': load_clip: clip 0 is below the "
            "minimum 1",
        ),
        (
            {"kind": "wait.point", "device": "loadcell-1", "point": "load", "above": 9000},
            "lists[main].cues[1].actions[0].above: loadcell-1.load can never be above 9000: its "
            "maximum is 4875 kg",
        ),
        (
            {"kind": "wait.position", "device": "revolve", "position": 400},
            "lists[main].cues[1].actions[0].position: revolve.position: 400 is above the "
            "maximum 359.99 °",
        ),
        (
            {"kind": "wait.timecode", "timecode": "25:00:00:00"},
            "lists[main].cues[1].actions[0]: timecode 25:00:00:00: hours must be 00 … 23",
        ),
        (
            {"kind": "wait.timecode", "timecode": "01:00:00:25", "fps": 25},
            "lists[main].cues[1].actions[0]: timecode 01:00:00:25: frame 25 ≥ 25 fps",
        ),
        (
            {"kind": "wait.point", "device": "loadcell-1", "point": "load"},
            "lists[main].cues[1].actions[0]: a point wait takes exactly one of 'above' or 'below'",
        ),
    ],
)
def test_out_of_range(action: dict[str, Any], expected: str) -> None:
    assert problems(with_action(action)) == [expected]


def test_positions_are_checked_against_the_axis() -> None:
    data = base()
    data["positions"] = {"hoist-1": {"trim": 3000, "low": -5}, "ghost": {"a": 1}}
    data["lists"][0]["cues"].pop()
    assert problems(data) == [
        "positions.hoist-1.low: device 'hoist-1': move_to: position -5 is below the minimum 0 mm "
        "(range of 'target_position')",
        "positions.ghost: no device 'ghost' in the venue",
    ]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_non_finite_and_negative_times(bad: float) -> None:
    data = with_action({"kind": "lighting.preset", "preset": "warm", "fade_s": bad, "delay_s": bad})
    data["lists"][0]["cues"][1]["auto_continue_s"] = bad
    lines = problems(data)
    assert [line.split(":")[0] for line in lines] == [
        "lists[main].cues[1].actions[0].delay_s",
        "lists[main].cues[1].actions[0].fade_s",
        "lists[main].cues[2].auto_continue_s",
    ]


def test_non_finite_levels_are_refused_in_toml() -> None:
    text = """
version = 1
show = { title = "x" }
[[lists]]
id = "main"
[[lists.cues]]
number = 1
actions = [{ kind = "lighting.levels", levels = [{ fixture = "par-1", level = nan }] }]
"""
    with pytest.raises(ShowError) as info:
        loads_show(text, "x.toml", catalogue())
    assert info.value.problems == [
        "lists[main].cues[1].actions[0].levels[0].level: Input should be a finite number"
    ]


def test_follow_cycles_are_refused() -> None:
    data = base()
    data["lists"][1] = {
        "id": "fx",
        "loop": True,
        "cues": [{"number": 1, "follow": True}, {"number": 2, "auto_continue_s": 1}],
    }
    assert problems(data) == [
        "lists[fx].cues[2]: cues 1 → 2 → 1 follow or auto-continue each other for ever: one of "
        "them must wait for a GO"
    ]
    # One manual cue in the ring: the operator is in the loop, so it is allowed.
    data["lists"][1]["cues"][1].pop("auto_continue_s")
    parse_show(data, "show.toml", catalogue())


def test_a_next_jump_can_make_a_cycle() -> None:
    data = base()
    data["lists"][1]["cues"] = [
        {"number": 1},
        {"number": 2, "follow": True},
        {"number": 3, "follow": True, "next": 2},
        {"number": 4, "next": 7},
    ]
    assert problems(data) == [
        "lists[fx].cues[4].next: no cue 7 in cue list 'fx'",
        "lists[fx].cues[3]: cues 2 → 3 → 2 follow or auto-continue each other for ever: one of "
        "them must wait for a GO",
    ]


def test_start_list_cycles_are_refused() -> None:
    data = base()
    data["lists"][0]["cues"][0]["actions"] = [{"kind": "list.start", "list": "fx"}]
    data["lists"][1]["cues"][0]["actions"] = [{"kind": "list.start", "list": "main"}]
    data["lists"].append(
        {"id": "solo", "cues": [{"number": 1, "actions": [{"kind": "list.start", "list": "solo"}]}]}
    )
    assert problems(data) == [
        "lists[main]: cue lists start each other in a ring (main → fx → main): a list.start "
        "cycle never settles",
        "lists[solo]: cue lists start each other in a ring (solo → solo): a list.start cycle "
        "never settles",
    ]


def test_a_long_start_ring_is_found_quickly() -> None:
    data = base()
    n = 200
    data["lists"] = [
        {
            "id": f"l{i}",
            "cues": [
                {
                    "number": 1,
                    "actions": [
                        *[{"kind": "list.start", "list": f"l{j}"} for j in range(50) if j != i],
                        {"kind": "list.start", "list": f"l{(i + 1) % n}"},
                    ],
                }
            ],
        }
        for i in range(n)
    ]
    (line,) = problems(data)
    assert line.startswith("lists[l0]: cue lists start each other in a ring (l0 → l1 → l0)")


def test_every_problem_at_once_in_the_file_key_what_shape() -> None:
    data = base()
    data["lists"][0]["cues"][0]["actions"] = [
        {"kind": "lighting.levels", "levels": [{"fixture": "nope", "level": 5}]},
        {"kind": "lighting.preset", "preset": "nope"},
    ]
    data["lists"][0]["cues"][1]["number"] = 1
    data["lists"].append({"id": "main"})
    with pytest.raises(ShowError) as info:
        parse_show(data, "shows/act1.toml", catalogue())
    assert str(info.value).splitlines() == [
        "shows/act1.toml: lists[main].cues[1].number: duplicate cue number 1",
        "shows/act1.toml: lists[2].id: cue list 'main' is defined twice (also lists[0])",
        "shows/act1.toml: lists[main].cues[1].actions[0].levels[0].fixture: no device 'nope' "
        "in the venue",
        "shows/act1.toml: lists[main].cues[1].actions[1].preset: no preset 'nope' in [presets]",
    ]


def test_show_groups_and_group_levels() -> None:
    data = base()
    data["groups"] = {"pars": ["par-1"], "mixed": ["par-1", "spot-1", "par-1", "hoist-1"]}
    data["lists"][0]["cues"][0]["actions"] = [
        {"kind": "lighting.levels", "levels": [{"group": "mixed", "attribute": "red", "level": 5}]}
    ]
    assert problems(data) == [
        "groups.pars: the venue already has a group 'pars'",
        "groups.mixed[2]: fixture 'par-1' is listed twice",
        "groups.mixed[3]: device 'hoist-1' (hoist) is not a DMX fixture",
        "lists[main].cues[1].actions[0].levels[0].group ('mixed': 'spot-1'): device 'spot-1' "
        "(moving_head) has no point 'red'",
        "lists[main].cues[1].actions[0].levels[0].group ('mixed': 'hoist-1'): device "
        "'hoist-1' (hoist) is not a DMX fixture",
    ]


def test_without_a_catalogue_only_the_show_itself_is_checked() -> None:
    data = with_action({"kind": "lighting.levels", "levels": [{"fixture": "any", "level": 5}]})
    parse_show(data, "show.toml", None)
    data["lists"][0]["cues"][1]["actions"] = [{"kind": "lighting.preset", "preset": "x"}]
    with pytest.raises(ShowError, match="no preset 'x'"):
        parse_show(data, "show.toml", None)


def test_part_cues() -> None:
    data = base()
    data["lists"][1]["cues"][0]["parts"] = [
        {"part": 1, "delay_s": 2, "actions": [{"kind": "lighting.preset", "preset": "warm"}]},
        {"part": 2, "delay_s": 4, "actions": [{"kind": "lighting.preset", "preset": "cold"}]},
    ]
    assert problems(data) == [
        "lists[fx].cues[1].parts[2].actions[0].preset: no preset 'cold' in [presets]"
    ]
    data["lists"][1]["cues"][0]["parts"][1] = {"part": 1}
    assert problems(data) == ["lists[fx].cues[1]: part 1 appears twice"]


def test_follow_and_auto_continue_exclude_each_other() -> None:
    data = base()
    data["lists"][1]["cues"][0].update(follow=True, auto_continue_s=2)
    assert problems(data) == [
        "lists[fx].cues[1]: a cue takes 'follow' or 'auto_continue_s', not both"
    ]


def test_level_needs_exactly_one_target() -> None:
    data = with_action(
        {"kind": "lighting.levels", "levels": [{"fixture": "par-1", "group": "pars", "level": 1}]}
    )
    assert problems(data) == [
        "lists[main].cues[1].actions[0].levels[0]: a level takes exactly one of 'fixture', "
        "'group' or 'channel' (got fixture, group)"
    ]


# --- versions ---------------------------------------------------------------------------------

V0: dict[str, Any] = {
    "version": 0,
    "title": "Old show",
    "cuelists": [
        {
            "id": "main",
            "tracking": False,
            "cues": [
                {
                    "number": "1",
                    "wait": 2.5,
                    "actions": [
                        {
                            "type": "levels",
                            "fade": 3,
                            "delay": 1,
                            "levels": [{"fixture": "par-1", "level": 40}],
                        },
                        {"type": "move", "axes": [{"device": "hoist-1", "position": 100}]},
                    ],
                },
                {"number": 2, "actions": [{"type": "start_list", "list": "main", "cue": 1}]},
            ],
        }
    ],
}

V1: dict[str, Any] = {
    "version": 1,
    "show": {"title": "Old show"},
    "lists": [
        {
            "id": "main",
            "mode": "cue-only",
            "cues": [
                {
                    "number": 1,
                    "auto_continue_s": 2.5,
                    "actions": [
                        {
                            "kind": "lighting.levels",
                            "fade_s": 3,
                            "delay_s": 1,
                            "levels": [{"fixture": "par-1", "level": 40}],
                        },
                        {
                            "kind": "machinery.move",
                            "axes": [{"device": "hoist-1", "position": 100}],
                        },
                    ],
                },
                {"number": 2, "actions": [{"kind": "list.stop", "list": "main"}]},
            ],
        }
    ],
}


def test_v0_migrates_to_the_same_show_as_its_v1_translation() -> None:
    old = copy.deepcopy(V0)
    old["cuelists"][0]["cues"][1]["actions"] = [{"type": "stop_list", "list": "main"}]
    before = copy.deepcopy(old)
    assert parse_show(old, "old.toml", catalogue()) == parse_show(V1, "new.toml", catalogue())
    assert old == before  # the input is not modified
    migrated, version = migrate(old)
    assert version == 0 and migrated["version"] == 1


def test_v0_problems_name_the_v0_keys() -> None:
    old = copy.deepcopy(V0)
    old["cuelists"][0]["tracking"] = "yes"
    old["cuelists"][0]["cues"][0]["actions"][0]["type"] = "smoke"
    assert problems(old) == [
        "cuelists[0].tracking: expected true or false (version 0)",
        "cuelists[0].cues[0].actions[0].type: 'smoke' is not a version 0 action type (command, "
        "levels, move, preset, soundfield, start_list, stop, stop_list)",
    ]


def test_v0_then_checked_as_v1() -> None:
    # The migrated show is checked like any other: a cycle made in v0 is still found.
    assert problems(copy.deepcopy(V0)) == [
        "lists[main]: cue lists start each other in a ring (main → main): a list.start cycle "
        "never settles"
    ]


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (None, "version: missing (write version = 1 first)"),
        ("1", "version: expected a whole number, got '1'"),
        (True, "version: expected a whole number, got True"),
        (2, "version: 2 is newer than this Flytower reads (0 … 1): upgrade Flytower"),
        (-1, "version: -1 is not a show file version (0 … 1)"),
    ],
)
def test_bad_versions(version: object, expected: str) -> None:
    data = base()
    if version is None:
        del data["version"]
    else:
        data["version"] = version
    assert problems(data) == [expected]
