"""Timecode-triggered cues in the show model: the fields, their checks, and the triggers they
make, fired by a ``TriggerScheduler`` over a ``ChaseClock`` fed in virtual time."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.show import ShowError, dumps_show, loads_show, parse_show
from controller.show.model import TimecodeRearm
from controller.timecode import ChaseClock, FrameRate, Timecode, TriggerScheduler


def show(lists: list[dict[str, Any]], **info: Any) -> dict[str, Any]:
    return {"version": 1, "show": {"title": "tc", **info}, "lists": lists}


def cues(*specs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"number": i + 1, **spec} for i, spec in enumerate(specs)]


def problems(data: dict[str, Any]) -> str:
    with pytest.raises(ShowError) as err:
        parse_show(data, "t.toml")
    return str(err.value)


def test_fields_and_rates() -> None:
    s = parse_show(
        show(
            [
                {"id": "main", "cues": cues({"timecode": "01:00:05:00"}, {})},
                {
                    "id": "df",
                    "timecode_fps": 29.97,
                    "timecode_rearm": "on_backward",
                    "cues": cues({"timecode": "00:01:00;02"}),
                },
            ],
            timecode_fps=24,
        )
    )
    assert s.lists[1].timecode_rearm is TimecodeRearm.ON_BACKWARD
    tcs = s.timecode_cues()
    assert [(t.list_id, t.cue, str(t.at), t.rearm_on_backward) for t in tcs] == [
        ("main", "1", "01:00:05:00", False),
        ("df", "1", "00:01:00;02", True),
    ]
    assert tcs[0].at.rate is FrameRate.FPS_24  # the show's rate
    assert tcs[1].at.rate is FrameRate.FPS_29_97_DF  # the list's own


def test_round_trip_keeps_the_fields() -> None:
    data = show(
        [
            {
                "id": "main",
                "timecode_fps": 30,
                "timecode_rearm": "on_backward",
                "cues": cues({"timecode": "10:00:00:29"}),
            }
        ],
        timecode_fps=25,
    )
    s = parse_show(data)
    assert loads_show(dumps_show(s)) == s


@pytest.mark.parametrize(
    ("lst", "info", "expect"),
    [
        ({"cues": cues({"timecode": "1:00:05:00"})}, {}, "is not HH:MM:SS:FF"),
        ({"cues": cues({"timecode": "24:00:00:00"})}, {}, "hours must be 00"),
        ({"cues": cues({"timecode": "00:60:00:00"})}, {}, "is not HH:MM:SS:FF"),
        ({"cues": cues({"timecode": "01:00:00:25"})}, {}, "frames must be 0..24"),
        ({"cues": cues({"timecode": "01:00:00:24"})}, {"timecode_fps": 24}, "0..23"),
        (
            {"timecode_fps": 29.97, "cues": cues({"timecode": "00:01:00;01"})},
            {},
            "drop-frame skips frames 00 and 01",
        ),
        (
            {"timecode_fps": 29.97, "cues": cues({"timecode": "00:01:00:00"})},
            {},
            "drop-frame skips",
        ),
        ({"cues": cues({"timecode": "00:00:01;00"})}, {}, "';' marks a drop-frame label"),
        ({"cues": cues({"timecode": 5})}, {}, "cues[1].timecode"),
        ({"timecode_fps": 29.976, "cues": []}, {}, "timecode_fps must be 24, 25, 29.97"),
        ({"timecode_fps": True, "cues": []}, {}, "timecode_fps is a number"),
        ({"timecode_rearm": "always", "cues": []}, {}, "timecode_rearm"),
        ({"timecode_rearms": "never", "cues": []}, {}, "unknown key"),
        ({"cues": []}, {"timecode_fps": 23.976}, "timecode_fps must be"),
    ],
)
def test_bad_fields_are_refused(lst: dict[str, Any], info: dict[str, Any], expect: str) -> None:
    assert expect in problems(show([{"id": "main", **lst}], **info))


def test_two_cues_at_one_label() -> None:
    text = problems(
        show(
            [
                {
                    "id": "main",
                    "cues": cues({"timecode": "01:00:05:00"}, {"timecode": "01:00:05;00"}, {}),
                }
            ],
            timecode_fps=29.97,
        )
    )
    assert "lists[main].cues[2].timecode: timecode 01:00:05;00 is also the trigger of cue 1" in text
    # The same label in two lists is fine: each list has its own trigger.
    parse_show(
        show(
            [
                {"id": "a", "cues": cues({"timecode": "01:00:05:00"})},
                {"id": "b", "cues": cues({"timecode": "01:00:05:00"})},
            ]
        )
    )


@pytest.mark.parametrize(
    ("first", "extra", "how"),
    [
        ({"follow": True}, {}, "follows"),
        ({"auto_continue_s": 2}, {}, "auto-continues"),
        ({"follow": True, "next": 3}, {}, "follows"),
    ],
)
def test_timecode_cue_fed_by_a_chain_is_refused(
    first: dict[str, Any], extra: dict[str, Any], how: str
) -> None:
    target = 3 if "next" in first else 2
    specs = [first, {}, {}]
    specs[target - 1] = {"timecode": "01:00:00:00"}
    text = problems(show([{"id": "main", **extra, "cues": cues(*specs)}]))
    assert f"lists[main].cues[{target}].timecode: cue {target} has a timecode trigger" in text
    assert f"cue 1 {how} into it" in text


def test_chain_out_of_a_timecode_cue_and_looping_lists() -> None:
    # A timecode cue may follow on into cues without a timecode: that is the usual use.
    parse_show(show([{"id": "m", "cues": cues({"timecode": "01:00:00:00", "follow": True}, {})}]))
    # The last cue of a looping list auto-continues into the first: refused if it has one.
    text = problems(
        show(
            [
                {
                    "id": "m",
                    "loop": True,
                    "cues": cues({"timecode": "01:00:00:00"}, {"auto_continue_s": 1}),
                }
            ]
        )
    )
    assert "cue 2 auto-continues into it" in text


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_hostile_labels_never_crash(label: str) -> None:
    try:
        s = parse_show(show([{"id": "m", "cues": cues({"timecode": label})}]))
    except ShowError:
        return
    assert len(s.timecode_cues()) == 1


# --- the triggers, fired in virtual time ------------------------------------------------------


def run_master(
    clock: ChaseClock,
    schedulers: list[TriggerScheduler],
    start: Timecode,
    frames: int,
    t0: float,
) -> float:
    """A master sending one frame every 40 ms (25 fps) from ``start``; polls after each."""
    t = t0
    for i in range(frames):
        clock.feed(start + i, t)
        for s in schedulers:
            s.poll(t + 0.001)
        t += 0.04
    return t


def build(text_show: dict[str, Any]) -> tuple[ChaseClock, dict[bool, TriggerScheduler], list[str]]:
    clock = ChaseClock()
    started: list[str] = []
    schedulers = {
        rearm: TriggerScheduler(
            clock,
            rearm_on_backward=rearm,
            on_fire=lambda f: started.append(f"{f.trigger.cue_list}/{f.trigger.cue}"),
        )
        for rearm in (False, True)
    }
    for tc in parse_show(text_show).timecode_cues():
        schedulers[tc.rearm_on_backward].add(tc.at, tc.list_id, tc.cue)
    return clock, schedulers, started


def test_show_triggers_fire_once_and_rearm_only_where_asked() -> None:
    clock, schedulers, started = build(
        show(
            [
                {"id": "main", "cues": cues({"timecode": "01:00:01:00"}, {})},
                {
                    "id": "fx",
                    "timecode_rearm": "on_backward",
                    "cues": cues({"timecode": "01:00:01:10"}),
                },
            ]
        )
    )
    both = list(schedulers.values())
    t = run_master(clock, both, Timecode.parse("01:00:00:00"), 60, 100.0)  # to 01:00:02:09
    assert started == ["main/1", "fx/1"]
    # A backward relocate to 01:00:00:00 and through the triggers again.
    run_master(clock, both, Timecode.parse("01:00:00:00"), 60, t + 1.0)
    assert started == ["main/1", "fx/1", "fx/1"]


def test_a_rate_other_than_the_masters_keeps_the_label() -> None:
    clock, schedulers, started = build(
        show([{"id": "m", "timecode_fps": 30, "cues": cues({"timecode": "01:00:01:15"})}])
    )
    # 01:00:01:15 at 30 fps is 01:00:01:12 at the master's 25 fps (frames scaled, floor).
    run_master(clock, list(schedulers.values()), Timecode.parse("01:00:01:00"), 12, 0.0)
    assert started == []
    run_master(clock, list(schedulers.values()), Timecode.parse("01:00:01:12"), 1, 0.48)
    assert started == ["m/1"]
