"""Merging sources of a universe, and fixture rendering (pure)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.dmx.fixture import FixtureError, from_raw, patch, read, render, to_raw
from drivers.dmx.merge import Merger, as_frame
from drivers.model import DmxTransport, PointSpec, parse_profile

FAST = settings(max_examples=100, deadline=None, derandomize=True)

SPOT = parse_profile(
    {
        "id": "spot",
        "device_class": "fixture",
        "protocol": "dmx",
        "footprint": 6,
        "points": {
            "intensity": {
                "min": 0,
                "max": 100,
                "unit": "%",
                "access": "w",
                "dmx": {"offset": 1, "merge": "htp"},
            },
            "pan": {
                "min": -270,
                "max": 270,
                "unit": "deg",
                "access": "w",
                "dmx": {"offset": 2, "bits": 16, "default": 32768},
            },
            "gobo": {"dtype": "int", "access": "w", "dmx": {"offset": 4}},
            "shutter": {"dtype": "bool", "access": "w", "dmx": {"offset": 6, "default": 255}},
        },
    }
)


def test_highest_priority_wins() -> None:
    m = Merger(1)
    m.update("a", bytes([200, 0, 50]), 100, now=0)
    m.update("b", bytes([10, 10]), 150, now=0)
    out = m.merged(now=1)
    assert out is not None and list(out[:3]) == [10, 10, 0]
    assert [s.id for s in m.sources(now=1)] == ["b", "a"]


def test_equal_priority_merges_htp() -> None:
    m = Merger(1)
    m.update("a", bytes([200, 0, 50]), 100, now=0)
    m.update("b", np.array([10, 10], dtype=np.uint8), 100, now=0)
    out = m.merged(now=0)
    assert out is not None and list(out[:4]) == [200, 10, 50, 0] and out.size == 512


def test_sources_time_out_after_2_5_s_and_terminate() -> None:
    m = Merger(1)
    m.update("a", b"\x01", 100, now=0)
    m.update("b", b"\x02", 120, now=2)
    assert m.winning_priority(now=2.4) == 120
    assert m.expire(now=2.6) == ["a"]
    m.terminate("b")
    assert m.merged(now=2.7) is None


def test_bad_frames_and_priorities_refused() -> None:
    with pytest.raises(ValueError, match="512"):
        as_frame(bytes(513))
    with pytest.raises(ValueError, match="uint8"):
        as_frame(np.zeros(4, dtype=np.int16))
    with pytest.raises(ValueError, match="priority"):
        Merger(1).update("a", b"", 201)


def test_render_known_bytes_and_defaults() -> None:
    assert render(SPOT, {}) == bytes([0, 0x80, 0x00, 0, 0, 255])
    out = render(SPOT, {"intensity": 100, "pan": 270, "gobo": 7, "shutter": False})
    assert out == bytes([255, 0xFF, 0xFF, 7, 0, 0])
    assert render(SPOT, {"pan": -270})[1:3] == b"\x00\x00"


def test_read_back() -> None:
    values = read(SPOT, bytes([255, 0xFF, 0xFF, 7, 0, 200]))
    assert values == {"intensity": 100.0, "pan": 270.0, "gobo": 7, "shutter": True}


@FAST
@given(st.integers(0, 255), st.integers(0, 65535))
def test_raw_round_trip(raw8: int, raw16: int) -> None:
    intensity, pan = SPOT.points["intensity"], SPOT.points["pan"]
    assert to_raw(intensity, from_raw(intensity, raw8)) == raw8
    assert to_raw(pan, from_raw(pan, raw16)) == raw16


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"intensity": math.nan}, "not a finite"),
        ({"intensity": math.inf}, "not a finite"),
        ({"intensity": 100.5}, "above the maximum"),
        ({"pan": -271}, "below the minimum"),
        ({"gobo": 256}, "0..255"),
        ({"gobo": 1.5}, "whole number"),
        ({"gobo": "open"}, "not 'open'"),
        ({"gobo": None}, "not None"),
        ({"intensity": [50]}, r"not \[50\]"),
        ({"zoom": 1}, "unknown point"),
    ],
)
def test_render_refuses(values: dict[str, object], match: str) -> None:
    with pytest.raises(FixtureError, match=match):
        render(SPOT, values)  # type: ignore[arg-type]


def test_read_refuses_wrong_size_and_point_without_wire() -> None:
    with pytest.raises(FixtureError, match="expected 6"):
        read(SPOT, bytes(5))
    with pytest.raises(FixtureError, match="no dmx wire"):
        to_raw(PointSpec(name="x"), 1)


def test_patch_into_universe() -> None:
    universe = np.zeros(512, dtype=np.uint8)
    patch(universe, SPOT, DmxTransport(kind="dmx", universe=1, address=10), {"intensity": 50})
    assert list(universe[9:15]) == [128, 0x80, 0, 0, 0, 255]
    with pytest.raises(FixtureError, match="past channel 512"):
        patch(universe, SPOT, DmxTransport(kind="dmx", universe=1, address=510), {})
