"""The sound field follows the audience (``SoundFieldControl.follow_occupancy``): the room at
the headcount now, the field re-designed when it drifts, refusals of bad headcounts. Without a
stream: the engine's side is a stand-in that answers each ``SetField`` with ``FieldReady``
(the real stream: tests/integration/test_service_acoustics.py)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from drivers.model import Quality, Reading
from dsp.engine import FieldReady, PathLatency, SetField
from dsp.occupancy import occupied_room
from edge.acoustics import SoundFieldControl
from edge.acoustics_config import AcousticsConfig, ZoneSettings

LAYOUT = {
    "speakers": [
        {"name": "L", "channel": 1, "azimuth_deg": 40, "elevation_deg": 5, "distance_m": 6},
        {"name": "R", "channel": 2, "azimuth_deg": -40, "elevation_deg": 5, "distance_m": 6},
        {"name": "SL", "channel": 3, "azimuth_deg": 110, "elevation_deg": 20, "distance_m": 8},
        {"name": "SR", "channel": 4, "azimuth_deg": -110, "elevation_deg": 20, "distance_m": 8},
    ]
}
ROOM = {"t30_s": [1.6, 1.5, 1.4, 1.4, 1.3, 1.1], "c80_db": [0.0, 0.5, 1.0, 1.0, 1.5, 2.0]}
OCCUPANCY = {"point": "doors/occupancy", "volume_m3": 9000.0, "min_interval_s": 0.0}


def config(**occupancy: Any) -> AcousticsConfig:
    zones = [
        ZoneSettings(name=n, inputs=[1], outputs=[1, 2, 3, 4], layout=LAYOUT, mode="concert")
        for n in ("stalls", "foyer")
    ]
    return AcousticsConfig(
        device="hall", zones=zones, room=ROOM, occupancy={**OCCUPANCY, **occupancy}
    )


class Counter:
    """The headcount point's newest reading, as the service's live view holds it."""

    def __init__(self) -> None:
        self.reading: Reading | None = None

    def set(self, value: Any, quality: Quality = Quality.GOOD, age_s: float = 0.0) -> None:
        now = time.time() - age_s
        self.reading = Reading("doors", "occupancy", value, time.monotonic(), now, quality)


@pytest.fixture
async def quiet() -> AsyncIterator[tuple[SoundFieldControl, Counter, list[SetField]]]:
    """Nothing playing, nothing designed yet (cheap: no design process started)."""
    sf = SoundFieldControl(config())
    sent: list[SetField] = []
    sf.send = sent.append
    counter = Counter()
    sf.headcount = lambda: counter.reading
    try:
        yield sf, counter, sent
    finally:
        sf.close()


@pytest.fixture
async def field() -> AsyncIterator[tuple[SoundFieldControl, Counter, list[SetField]]]:
    sf = SoundFieldControl(config())
    sent: list[SetField] = []
    loop = asyncio.get_running_loop()

    def send(msg: Any) -> None:  # the engine builds the set and starts its crossfade
        sent.append(msg)
        loop.call_soon(sf.on_event, FieldReady(msg.zone, PathLatency(0, 0, 0, 0, 0, 0)))

    sf.send = send
    counter = Counter()
    sf.headcount = lambda: counter.reading
    try:
        await sf.recall("concert", None, _origin(), ["stalls"])  # stalls plays; foyer silent
        sent.clear()
        yield sf, counter, sent
    finally:
        sf.close()


def _origin() -> Any:
    from controller.journal import Origin, SourceKind

    return Origin(SourceKind.USER, "test")


async def test_a_full_house_redesigns_the_playing_zone(field: Any) -> None:
    sf, counter, sent = field
    stalls = sf.zones["stalls"]
    designed = stalls.design.params
    counter.set(1500)
    assert await sf.follow_occupancy() == ["stalls", "foyer"]
    # the playing zone crossfades to a field designed for the predicted room ...
    assert [m.zone for m in sent] == ["stalls"]
    assert stalls.people == 1500 and stalls.occupied is not None
    expected = occupied_room(stalls.room, 9000.0, 1500, [0.10, 0.20, 0.30, 0.35, 0.35, 0.35])
    np.testing.assert_allclose(stalls.occupied.t30_s, expected.t30_s)
    assert stalls.design.params is not designed
    assert "designed for 1500 people" in stalls.occupancy_note
    assert any("1500 people" in n for n in stalls.design.notes)
    # ... a drier hall needs more late energy from the field for the same target
    assert np.all(stalls.field_room.t30_s < stalls.room.t30_s)
    # the silent zone only takes the new room (its next recall designs for it)
    assert sf.zones["foyer"].occupied is not None and sf.zones["foyer"].state == "silent"
    snap = sf.snapshot()
    assert snap["occupancy"]["state"] == "ok" and snap["occupancy"]["people"] == 1500
    z = snap["zones"]["stalls"]
    assert z["occupancy"]["people"] == 1500 and z["room"]["people"] == 0.0
    assert z["occupancy"]["room"]["t30_s"][3] == pytest.approx(expected.t30_s[3], abs=1e-3)


async def test_small_changes_and_quick_ones_leave_the_field_alone(field: Any) -> None:
    sf, counter, sent = field
    counter.set(20)  # 20 people in 9 000 m3: far less than half a JND of T30
    assert await sf.follow_occupancy() == [] and sent == []
    sf.config = config(min_interval_s=3600.0)
    counter.set(1500)
    assert await sf.follow_occupancy() == ["stalls", "foyer"]
    counter.set(300)  # within the interval: not again
    assert await sf.follow_occupancy() == []
    assert sf.zones["stalls"].people == 1500


async def test_a_redesign_the_engine_refuses_keeps_what_plays(field: Any) -> None:
    sf, counter, _ = field
    stalls = sf.zones["stalls"]

    def refuse(msg: Any) -> None:
        raise RuntimeError("the stream is gone")

    sf.send = refuse
    counter.set(1500)
    assert await sf.follow_occupancy() == ["foyer"]  # the silent zone only takes the room
    assert stalls.occupied is None and stalls.people is None and stalls.field_room is stalls.room
    assert "not re-designed for 1500 people" in stalls.occupancy_note
    assert "the stream is gone" in stalls.occupancy_note


async def test_back_to_the_measured_headcount_is_the_measured_room(field: Any) -> None:
    sf, counter, sent = field
    counter.set(1500)
    await sf.follow_occupancy()
    counter.set(0)
    assert "stalls" in await sf.follow_occupancy()
    stalls = sf.zones["stalls"]
    assert stalls.occupied is None and stalls.field_room is stalls.room
    assert stalls.occupancy_note == "" and len(sent) == 2


@pytest.mark.parametrize(
    ("value", "quality", "age_s", "state", "note"),
    [
        (None, Quality.BAD, 0, "bad", "is bad"),
        (800, Quality.STALE, 0, "bad", "is stale"),
        ("800", Quality.GOOD, 0, "bad", "not a number"),
        (True, Quality.GOOD, 0, "bad", "not a number"),
        (-5, Quality.GOOD, 0, "bad", "not 0 .. 100000"),
        (math.nan, Quality.GOOD, 0, "bad", "not 0 .. 100000"),
        (math.inf, Quality.GOOD, 0, "bad", "not 0 .. 100000"),
        (2e6, Quality.GOOD, 0, "bad", "not 0 .. 100000"),
        (800, Quality.GOOD, 3600, "stale", "no reading for 600 s"),
    ],
)
async def test_a_headcount_not_to_be_trusted_changes_nothing(
    quiet: Any, value: Any, quality: Quality, age_s: float, state: str, note: str
) -> None:
    sf, counter, sent = quiet
    counter.set(value, quality, age_s)
    assert await sf.follow_occupancy() == [] and sent == []
    assert sf.occupancy["state"] == state and note in sf.occupancy["note"]
    assert sf.zones["stalls"].occupied is None


async def test_a_counter_in_fault_is_not_believed(quiet: Any) -> None:
    sf, counter, sent = quiet
    sf.config = config(fault_point="doors/fault")
    fault = Counter()
    sf.counter_fault = lambda: fault.reading
    counter.set(1500)
    fault.set(True)
    assert await sf.follow_occupancy() == [] and sent == []
    assert sf.occupancy["state"] == "bad" and "doors/fault is set" in sf.occupancy["note"]
    fault.set(False)
    assert await sf.follow_occupancy() == ["stalls", "foyer"]


async def test_no_reading_yet_is_waiting(quiet: Any) -> None:
    sf, _, sent = quiet
    assert await sf.follow_occupancy() == [] and sent == []
    assert sf.occupancy["state"] == "waiting"


async def test_a_room_measured_fuller_than_possible_is_said_and_kept(quiet: Any) -> None:
    sf, counter, sent = quiet
    stalls = sf.zones["stalls"]
    stalls.base_people = 90_000.0  # "measured with 90 000 people" in 9 000 m3
    counter.set(0)
    await sf.follow_occupancy()
    assert "leave no absorption" in stalls.occupancy_note and stalls.occupied is None
    assert sent == []  # both zones silent: nothing is designed or sent


async def test_a_new_measured_room_resets_the_prediction(quiet: Any) -> None:
    sf, counter, _ = quiet
    counter.set(1500)
    await sf.follow_occupancy()
    stalls = sf.zones["stalls"]
    sf._set_room(stalls, stalls.room, "measured now", 1500)  # measured full
    assert stalls.occupied is None and stalls.base_people == 1500 and stalls.people is None
    sf._set_room(stalls, stalls.room, "measured then", None)  # not known: the configured one
    assert stalls.base_people == 0.0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"point": "no-slash"}, "point"),
        ({"point": "a/b/c"}, "point"),
        ({"volume_m3": 0}, "volume_m3"),
        ({"volume_m3": math.inf}, "volume_m3"),
        ({"absorption_m2": [0.1] * 5}, "absorption_m2"),
        ({"absorption_m2": [0.1, 0.2, -1, 0.3, 0.3, 0.3]}, "absorption_m2 at 500 Hz"),
        ({"threshold": 0}, "threshold"),
        ({"measured_people": -1}, "measured_people"),
        ({"zones": ["gallery"]}, "no zone 'gallery'"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_bad_occupancy_sections_are_refused_with_the_reason(
    change: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValidationError, match=match):
        config(**change)


async def test_stop_cancels_a_running_adaptation_and_gives_the_zone_its_mode(field: Any) -> None:
    """``SoundFieldControl.stop``: the adaptation's task is cancelled, its state says who
    cancelled it, and the zone that played candidates is recalled to its mode."""
    from controller.journal import Origin, SourceKind

    sf, _, sent = field
    running = asyncio.Event()

    async def forever(*_: Any) -> None:  # the closed loop, measuring
        running.set()
        await asyncio.Event().wait()

    sf._adapting = forever
    state: dict[str, Any] = {"id": "r1", "zone": "stalls", "mode": "concert", "state": "adapting"}
    sf.adaptation = state
    settings = sf.config.zones[0]
    sf._adapt_task = asyncio.create_task(sf._adapt_run(state, settings, 48000, {}, _origin()))
    await running.wait()
    done = await sf.stop(Origin(SourceKind.USER, "stage mgr"))
    assert done == {"measurement": None, "adaptation": "r1"}
    assert state["state"] == "failed" and state["error"] == "cancelled by stage mgr"
    assert [m.zone for m in sent] == ["stalls"]  # its mode again
    again = await sf.stop(Origin(SourceKind.USER, "stage mgr"))
    assert again["note"] == "no measurement or adaptation was running"
