"""``[acoustics]``'s zone paths (pickup, listener, source), the adapt request's validation, and
the loop-gain guard every recall passes (edge/acoustics.py), without a stream."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controller.playback.ports import PlaybackError
from dsp.adapt import MeasuredPaths, loop_gain_db, scaled
from dsp.design import design
from dsp.presets import MODES
from edge.acoustics import MAX_CUT_DB, SoundFieldControl, _loop_guard, loop_paths
from edge.acoustics_config import AcousticsConfig, ZoneSettings
from edge.api_acoustics import AdaptIn

LAYOUT = {
    "speakers": [
        {"name": "L", "channel": 1, "azimuth_deg": 40, "elevation_deg": 5, "distance_m": 6},
        {"name": "R", "channel": 2, "azimuth_deg": -40, "elevation_deg": 5, "distance_m": 6},
    ]
}
FS = 24000


def zone(**change: Any) -> ZoneSettings:
    data: dict[str, Any] = {
        "name": "stalls",
        "inputs": [1, 2],
        "outputs": [3, 4],
        "layout": LAYOUT,
        "pickup": 1,
        "listener": 5,
        "source": 1,
    }
    data.update(change)
    return ZoneSettings(**data)


def test_a_zone_names_its_pickup_listener_and_source() -> None:
    z = zone()
    assert z.adaptable
    assert z.device_inputs() == [1, 2, 5] and z.device_outputs() == [3, 4, 1]
    bare = zone(pickup=None, listener=None, source=None)
    assert not bare.adaptable and bare.device_inputs() == [1, 2]
    assert not zone(source=None).adaptable


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pickup": 3}, "pickup 3 is not one of the zone's inputs"),
        ({"listener": 1}, "listener and pickup are the same channel 1"),
        ({"listener": 2}, "listener 2 is one of the zone's inputs"),
        ({"source": 4}, "source 4 is one of the zone's outputs"),
        ({"source": 0}, "source is a 1-based channel"),
        ({"listener": 513}, "listener is a 1-based channel"),
        ({"pickup": True}, "valid integer"),
        ({"source": 1.5}, "valid integer"),
        ({"listener": "5"}, "valid integer"),
        ({"microphone": 2}, "Extra inputs"),
    ],
)
def test_bad_zone_paths_are_refused_with_the_reason(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        zone(**change)


def test_the_venue_section_carries_the_paths() -> None:
    ac = AcousticsConfig(device="hall", zones=[zone()])
    assert ac.zones[0].pickup == 1 and ac.zones[0].source == 1


# --- the adapt request -------------------------------------------------------------------


def test_adapt_request_defaults() -> None:
    body = AdaptIn(mode="drama")
    assert (body.iterations, body.sweeps, body.level_db) == (3, 2, -30.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "drama", "iterations": 0},
        {"mode": "drama", "iterations": 6},
        {"mode": "drama", "iterations": True},
        {"mode": "drama", "iterations": "3"},
        {"mode": "drama", "iterations": 2.0},
        {"mode": "drama", "sweeps": 9},
        {"mode": "drama", "level_db": math.nan},
        {"mode": "drama", "level_db": math.inf},
        {"mode": "drama", "level_db": 0},
        {"mode": ""},
        {"mode": "m" * 65},
        {"iterations": 2},
        {"mode": "drama", "zone": "stalls"},
    ],
)
def test_bad_adapt_requests_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AdaptIn.model_validate_json(_json(bad))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["mode", "iterations", "sweeps", "level_db", "x"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                                 st.text(max_size=80))))  # fmt: skip
def test_any_adapt_request_is_valid_or_refused(data: dict[str, Any]) -> None:
    try:
        body = AdaptIn.model_validate_json(_json(data))
    except ValidationError:
        return
    assert 1 <= body.iterations <= 5 and 1 <= body.sweeps <= 8
    assert math.isfinite(body.level_db) and -80 <= body.level_db <= -6
    assert 1 <= len(body.mode) <= 64


def _json(value: Any) -> str:
    import json

    return json.dumps(value, allow_nan=True)


# --- the loop-gain guard -----------------------------------------------------------------


def _paths(coupling: float) -> MeasuredPaths:
    """Decaying noise (T 0.6 s) for every path of two loudspeakers; ``coupling`` scales the
    loudspeakers' paths into the pickup."""
    rng = np.random.default_rng(4)
    env = 10.0 ** (-3.0 * np.arange(FS) / FS / 0.6)

    def ir(rows: int, delay: int, gain: float) -> Any:
        h = rng.normal(size=(rows, FS)) * env * gain
        h[:, :delay] = 0.0
        h[:, delay] = 10.0 * gain
        return h

    return MeasuredPaths(
        FS, ir(1, 700, 0.1)[0], ir(1, 40, 1.0)[0], ir(2, 300, 0.2), ir(2, 600, 0.05 * coupling)
    )


def _params() -> Any:
    ac = AcousticsConfig(device="hall", zones=[zone()])
    return design(
        MODES["drama"], ac.zones[0].layout_obj(), {"t30_s": [0.6] * 6, "c80_db": [4.0] * 6}
    ).params


def test_the_guard_lowers_a_loop_above_its_margin_to_it() -> None:
    paths, params = _paths(1.0), _params()
    hot = scaled(params, 4.0 - loop_gain_db(paths, params))  # +4 dB: it would run away
    out, before, after, cut = _loop_guard(hot, paths, 6.0)
    assert before == pytest.approx(4.0, abs=0.01)
    assert after == pytest.approx(-6.0, abs=0.05) and cut == pytest.approx(10.0, abs=0.05)
    assert out.late_db == pytest.approx(hot.late_db - cut)
    # a quiet one is left alone
    quiet = scaled(params, -20.0 - loop_gain_db(paths, params))
    out, before, after, cut = _loop_guard(quiet, paths, 6.0)
    assert cut == 0.0 and out is quiet and before == after


def test_loop_paths_from_the_pickup_alone() -> None:
    full = _paths(1.0)
    only = loop_paths(FS, full.speaker_pickup)
    params = _params()
    assert loop_gain_db(only, params) == pytest.approx(loop_gain_db(full, params))


async def test_a_recall_is_guarded_unchecked_or_refused() -> None:
    sf = SoundFieldControl(AcousticsConfig(device="hall", zones=[zone()]))
    try:
        params = _params()
        # without measured paths: played as designed, the notes say it is unchecked
        out, info = await sf._guard("stalls", params)
        assert out is params and not info["checked"] and "unchecked" in info["note"]
        # with them: lowered to the margin, and said
        paths = _paths(1.0)
        sf.zones["stalls"].paths, sf.zones["stalls"].paths_source = paths, "test"
        hot = scaled(params, 2.0 - loop_gain_db(paths, params))
        out, info = await sf._guard("stalls", hot)
        assert info["checked"] and info["cut_db"] == pytest.approx(8.0, abs=0.05)
        assert "lowered by 8.0 dB" in info["note"] and info["applied_gain_db"] <= -5.9
        # a loop that needs more than MAX_CUT_DB: refused with the reason
        way = scaled(params, MAX_CUT_DB - loop_gain_db(paths, params))
        with pytest.raises(PlaybackError, match="feedback loop's peak gain") as exc:
            await sf._guard("stalls", way)
        assert exc.value.status == 409
        assert "refused" in sf.zones["stalls"].loop["note"]
    finally:
        sf.close()


async def test_a_muted_measurement_of_the_pickup_gives_the_zone_its_loop(tmp_path: Any) -> None:
    """A measurement with ``zone`` that covered the zone's outputs (3, 4) into its pickup (1)
    keeps those IRs as the zone's loop paths; one that did not leaves the zone unchecked."""
    from edge.acoustics import write_ir

    sf = SoundFieldControl(AcousticsConfig(device="hall", zones=[zone()]))
    full = _paths(1.0)
    pairs = []
    for k, out in enumerate((3, 4)):
        name = f"ir-out{out}-in1.wav"
        write_ir(tmp_path / name, full.speaker_pickup[k], FS)
        pairs.append({"output": out, "input": 1, "file": name})
    state: dict[str, Any] = {"id": "run-1"}
    await sf._use_paths("stalls", {"fs": FS, "pairs": pairs[:1]}, tmp_path, state)
    assert sf.zones["stalls"].paths is None and "paths" not in state
    await sf._use_paths("stalls", {"fs": FS, "pairs": pairs}, tmp_path, state)
    z = sf.zones["stalls"]
    assert state["paths"] == "updated" and z.paths_source == "measurement run-1"
    assert z.paths is not None
    params = _params()
    assert loop_gain_db(z.paths, params) == pytest.approx(loop_gain_db(full, params), abs=0.01)
    (tmp_path / "ir-out4-in1.wav").write_bytes(b"not a wav")
    await sf._use_paths("stalls", {"fs": FS, "pairs": pairs}, tmp_path, state)
    assert "not kept" in state["paths_error"] and z.paths is not None  # the old ones stay


async def test_adapt_refuses_what_it_cannot_do_before_anything_plays() -> None:
    from controller.journal import Origin, SourceKind
    from controller.playback.ports import Unavailable

    bare = zone(name="gallery", pickup=None, listener=None, source=None)
    sf = SoundFieldControl(AcousticsConfig(device="hall", zones=[zone(), bare]))
    origin = Origin(SourceKind.USER, "test")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"zone": "balcony", "mode": "drama"}, 404, "no sound-field zone 'balcony'"),
        ({"zone": "stalls", "mode": "disco"}, 404, "no sound-field mode 'disco'"),
        ({"zone": "stalls", "mode": "drama", "iterations": 0}, 422, "1 .. 5"),
        ({"zone": "stalls", "mode": "drama", "iterations": 6}, 422, "1 .. 5"),
        ({"zone": "stalls", "mode": "drama", "iterations": True}, 422, "integer"),
        ({"zone": "gallery", "mode": "drama"}, 422, "pickup, listener and source"),
    ]
    for args, status, message in cases:
        with pytest.raises(PlaybackError, match=message) as exc:
            await sf.adapt(origin=origin, **args)
        assert exc.value.status == status, args
    with pytest.raises(Unavailable, match="not running"):
        await sf.adapt("stalls", "drama", origin)
    assert sf.adaptation is None and not sf.adapting


def test_the_adaptation_worker_reports_what_it_cannot_read(tmp_path: Any) -> None:
    """Run in this process: the paths' IRs missing or of mixed sample rates come back as an
    error with the reason, never as a hang or a traceback."""
    import multiprocessing

    from edge.acoustics import AdaptJob, adapt_worker, write_ir

    job = AdaptJob(
        mode=MODES["drama"],
        layout=zone().layout_obj(),
        folder=str(tmp_path),
        source=1,
        outputs=(3, 4),
        pickup=1,
        listener=5,
        latency_s=0.0,
        iterations=1,
        cap=2.0,
    )
    ours, theirs = multiprocessing.Pipe()
    adapt_worker(job, theirs)
    kind, text = ours.recv()
    assert kind == "error" and "ir-out1-in5.wav" in text
    full = _paths(1.0)
    for out, k in ((3, 0), (4, 1)):
        write_ir(tmp_path / f"ir-out{out}-in5.wav", full.speaker_listener[k], FS)
        write_ir(tmp_path / f"ir-out{out}-in1.wav", full.speaker_pickup[k], FS)
    write_ir(tmp_path / "ir-out1-in5.wav", full.source_listener, FS)
    write_ir(tmp_path / "ir-out1-in1.wav", full.source_pickup, 2 * FS)
    ours, theirs = multiprocessing.Pipe()
    adapt_worker(job, theirs)
    kind, text = ours.recv()
    assert kind == "error" and "different sample rates" in text
