"""OSC router: template matching and argument checking."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.osc import address_space as space
from drivers.osc.router import (
    ArgSpec,
    ArgType,
    OscRequest,
    OscRequestError,
    OscRouter,
    RouteSpec,
    check_args,
)


async def _nothing(request: OscRequest) -> Any:
    return None


def test_templates_match_one_segment_per_parameter() -> None:
    router = OscRouter()
    for spec in space.SERVED_BY_SERVICE:
        router.add(spec, _nothing)
    found = router.resolve("/cue/1.5/start")
    assert found is not None and found[0] is space.CUE_START and found[2] == {"number": "1.5"}
    found = router.resolve("/flytower/device/hoist-1/command/move_to")
    assert found is not None and found[2] == {"id": "hoist-1", "name": "move_to"}
    assert router.resolve("/cue/1/2/start") is None
    assert router.resolve("/cue//start") is None
    assert router.resolve("/go/") is None
    assert router.resolve("/GO") is None


def test_wildcards_are_passed_literally() -> None:
    router = OscRouter()
    router.add(space.CUE_STOP, _nothing)
    found = router.resolve("/cue/*/stop")
    assert found is not None and found[2] == {"number": "*"}


def test_duplicate_and_malformed_routes_are_refused() -> None:
    router = OscRouter()
    router.add(space.GO, _nothing)
    with pytest.raises(ValueError, match="already"):
        router.add(space.GO, _nothing)
    with pytest.raises(ValueError, match="start with"):
        RouteSpec("go")
    with pytest.raises(ValueError, match="optional arguments must come last"):
        RouteSpec("/x", (ArgSpec("a", ArgType.INT, optional=True), ArgSpec("b", ArgType.INT)))


SPEC = RouteSpec(
    "/t",
    (
        ArgSpec("s", ArgType.STRING),
        ArgSpec("n", ArgType.NUMBER),
        ArgSpec("i", ArgType.INT),
        ArgSpec("b", ArgType.BOOL),
        ArgSpec("j", ArgType.JSON_OBJECT, optional=True),
    ),
)


def test_good_arguments_are_converted() -> None:
    assert check_args(SPEC, "/t", ("x", 1, 2.0, 1, '{"a": [1]}')) == {
        "s": "x",
        "n": 1.0,
        "i": 2,
        "b": True,
        "j": {"a": [1]},
    }
    assert check_args(SPEC, "/t", ("x", 1.5, 2, False)) == {"s": "x", "n": 1.5, "i": 2, "b": False}


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("x", 1, 2, True, "{}", "extra"),
        (1, 1, 2, True),
        ("x", "1", 2, True),
        ("x", math.nan, 2, True),
        ("x", math.inf, 2, True),
        ("x", True, 2, True),
        ("x", 1, 2.5, True),
        ("x", 1, math.inf, True),
        ("x", 1, 2, 2),
        ("x", 1, 2, "true"),
        ("x", 1, 2, True, 5),
        ("x", 1, 2, None),
        ("x", 1, 2, b"blob"),
    ],
)
def test_wrong_arguments_say_what_was_expected(args: tuple[Any, ...]) -> None:
    with pytest.raises(OscRequestError) as err:
        check_args(SPEC, "/t", args)
    assert err.value.reason.startswith(
        "/t expects (s: string, n: number, i: int, b: bool, j: json-object?), got ("
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[1, 2]", "must be a JSON object, got list"),
        ("{", "is not valid JSON"),
        ('{"a": NaN}', "is not valid JSON"),
        ('{"a": Infinity}', "is not valid JSON"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_bad_json_object_says_why(text: str, why: str) -> None:
    with pytest.raises(OscRequestError, match=why):
        check_args(space.DEVICE_COMMAND, "/flytower/device/a/command/b", (text,))


@given(st.lists(st.one_of(st.integers(), st.floats(), st.text(), st.booleans(), st.none())))
def test_check_args_raises_only_request_error(args: list[Any]) -> None:
    with contextlib.suppress(OscRequestError):
        check_args(SPEC, "/t", tuple(args))
