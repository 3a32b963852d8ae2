"""dsp/occupancy.py: the room predicted at another occupancy (Sabine + Barron)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsp.design import room_from
from dsp.occupancy import (
    DEFAULT_ABSORPTION_M2,
    SABINE,
    OccupancyError,
    added_absorption,
    occupied_room,
    t30_drift,
)
from dsp.presets import Envelope

EMPTY = room_from(
    {
        "t30_s": [2.4, 2.2, 2.0, 2.0, 1.8, 1.5],
        "c80_db": [-2.0, -1.5, -1.0, -1.0, -0.5, 0.0],
        "edt_s": [2.3, 2.1, 1.9, 1.9, 1.7, 1.4],
        "g_db": [5.0, 5.0, 4.5, 4.5, 4.0, 3.5],
        "level_db": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    }
)
VOLUME = 12_000.0


def test_the_same_occupancy_changes_nothing() -> None:
    assert occupied_room(EMPTY, VOLUME, 800, measured_people=800) is EMPTY
    same = occupied_room(EMPTY, VOLUME, 800.0001, measured_people=800)
    np.testing.assert_allclose(same.t30_s, EMPTY.t30_s, rtol=1e-6)
    np.testing.assert_allclose(same.edt_s, EMPTY.edt_s, rtol=1e-6)
    np.testing.assert_allclose(same.g_db, EMPTY.g_db, atol=1e-5)
    # C80 through the envelope fit and back
    np.testing.assert_allclose(same.c80_db, EMPTY.c80_db, atol=1e-5)


def test_sabine_by_hand_at_1_khz() -> None:
    full = occupied_room(EMPTY, VOLUME, 1500, DEFAULT_ABSORPTION_M2)
    i = 3  # 1 kHz: T 2.0 s, 0.35 m2 a person
    area = SABINE * VOLUME / 2.0 + 1500 * 0.35
    assert full.t30_s[i] == pytest.approx(SABINE * VOLUME / area)
    assert full.edt_s[i] == pytest.approx(1.9 * full.t30_s[i] / 2.0)


def test_an_audience_shortens_clarifies_and_quietens() -> None:
    full = occupied_room(EMPTY, VOLUME, 1500)
    assert np.all(full.t30_s < EMPTY.t30_s)
    assert np.all(full.c80_db > EMPTY.c80_db)  # less late energy
    assert np.all(full.g_db < EMPTY.g_db)
    assert np.all(full.d50 > 0) and np.all(full.d50 < 1)
    # the envelope's direct part is kept: C80 follows Barron's tail scaled by T'/T
    i = 2
    before = Envelope.fit(2.0, -1.0)
    r = full.t30_s[i] / 2.0
    after = Envelope(before.direct, before.tail * r, full.t30_s[i], before.t0_s)
    assert full.c80_db[i] == pytest.approx(after.c80_db())
    assert full.g_db[i] == pytest.approx(4.5 + 10 * math.log10(after.total / before.total))


def test_there_and_back() -> None:
    full = occupied_room(EMPTY, VOLUME, 1200)
    back = occupied_room(full, VOLUME, 0, measured_people=1200)
    np.testing.assert_allclose(back.t30_s, EMPTY.t30_s, rtol=1e-12)
    np.testing.assert_allclose(back.c80_db, EMPTY.c80_db, atol=1e-9)


def test_the_absorption_from_two_measurements_predicts_the_second() -> None:
    truth = (0.05, 0.15, 0.25, 0.4, 0.45, 0.5)
    full = occupied_room(EMPTY, VOLUME, 900, truth)
    assert added_absorption(EMPTY, full, VOLUME, 900) == pytest.approx(truth)


def test_bands_not_measured_stay_unmeasured() -> None:
    t30 = EMPTY.t30_s.copy()
    t30[0] = math.nan  # a band whose decay the measurement could not give
    room = dataclasses.replace(EMPTY, t30_s=t30)
    full = occupied_room(room, VOLUME, 500)
    assert math.isnan(full.t30_s[0])
    assert full.t30_s[1] < 2.2


def test_drift() -> None:
    assert t30_drift(EMPTY, EMPTY) == 0.0
    full = occupied_room(EMPTY, VOLUME, 1500)
    assert t30_drift(EMPTY, full) == pytest.approx(np.max(1 - full.t30_s / EMPTY.t30_s))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"volume_m3": 0}, "volume_m3 must be a finite number > 0"),
        ({"volume_m3": -5}, "volume_m3"),
        ({"volume_m3": math.nan}, "volume_m3"),
        ({"volume_m3": math.inf}, "volume_m3"),
        ({"people": -1}, "people must be"),
        ({"people": math.inf}, "people must be"),
        ({"people": math.nan}, "people must be"),
        ({"measured_people": -3}, "measured_people"),
        ({"absorption_m2": (0.1,) * 5}, "one value per band"),
        ({"absorption_m2": (0.1, 0.2, -0.3, 0.1, 0.1, 0.1)}, r"absorption_m2\[500 Hz\]"),
        ({"absorption_m2": (0.1, 0.2, math.nan, 0.1, 0.1, 0.1)}, "absorption_m2"),
        # the room was "measured with 100 000 people": removing them leaves nothing
        ({"people": 0, "measured_people": 100_000}, "leave no absorption"),
    ],
)
def test_bad_input_is_refused_with_the_reason(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"volume_m3": VOLUME, "people": 1000, **kwargs}
    with pytest.raises(OccupancyError, match=match):
        occupied_room(EMPTY, **args)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    t=st.floats(0.3, 8.0),
    volume=st.floats(200, 100_000),
    people=st.floats(0, 5000),
    c80=st.floats(-8, 8),
)
def test_more_people_never_lengthen_the_decay(
    t: float, volume: float, people: float, c80: float
) -> None:
    room = room_from({"t30_s": [t] * 6, "c80_db": [c80] * 6})
    full = occupied_room(room, volume, people)
    assert np.all(np.isfinite(full.t30_s)) and np.all(full.t30_s <= room.t30_s * (1 + 1e-12))
    assert np.all(full.c80_db >= room.c80_db - 1e-9)
