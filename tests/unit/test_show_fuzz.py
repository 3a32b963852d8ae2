"""Hostile show input: whatever the bytes or the data, the parser answers a Show or a
ShowError, never another exception."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.show import (
    ACTION_KINDS,
    Catalogue,
    Show,
    ShowError,
    load_show,
    loads_show,
    parse_show,
)
from controller.show.file import show_data

from .test_show import base, catalogue

DEMO = Path(__file__).resolve().parents[2] / "examples" / "show-demo.toml"
KEYS = [
    "version", "show", "title", "lists", "id", "cues", "number", "actions", "kind", "levels",
    "fixture", "group", "channel", "level", "attribute", "preset", "presets", "positions",
    "axes", "device", "position", "follow", "auto_continue_s", "next", "parts", "part",
    "delay_s", "fade_s", "list", "cue", "loop", "mode", "groups", "args", "command",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from([*ACTION_KINDS, "main", "fx", "par-1", "hoist-1", "warm", "12.5", "1"]),
)
trees = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=40,
)


def answer(run: Any) -> None:
    try:
        result = run()
    except ShowError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert isinstance(result, Show)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_bytes(raw: bytes) -> None:
    answer(lambda: loads_show(raw, "fuzz.toml", catalogue()))


# 100 trees, not 300 (5 to 8 s of make test): 100 still found a planted crash (a list where
# fade_s belongs) in random runs and in CI's derandomized ones; developers' random runs keep
# exploring. (The mutations below stay at 400: at 200, CI's examples missed that crash.)
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), trees, max_size=6), st.sampled_from([0, 1, None]))
def test_random_trees(data: dict[str, Any], version: int | None) -> None:
    if version is not None:
        data["version"] = version
    answer(lambda: parse_show(data, "fuzz.toml", catalogue()))


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


DEMO_DATA = show_data(load_show(DEMO))
BASE = base()


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([BASE, DEMO_DATA]), st.sampled_from([catalogue(), None]), st.data())
def test_mutations_of_valid_shows(
    original: dict[str, Any], cat: Catalogue | None, data: st.DataObject
) -> None:
    """Replace one value anywhere in a valid show by anything."""
    show = copy.deepcopy(original)
    where = data.draw(st.sampled_from(paths(show)[1:]))
    target = show
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = data.draw(trees)
    answer(lambda: parse_show(show, "fuzz.toml", cat))
