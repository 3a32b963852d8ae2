"""Design (dsp/design.py) and the loudspeaker layout (dsp/layout.py).

The energy arithmetic is checked against rendered signals measured by the acoustic simulator's
independent ground-truth code (``simulators.acoustics.truth``), not by itself.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsp.design import (
    Design,
    DesignError,
    Prediction,
    band_autocorrelation,
    c80_after_early_gain_change,
    c80_change_from_share,
    design,
    early_pattern,
    late_energy,
    predict,
    room_from,
)
from dsp.field import BANDS_HZ, EarlyPattern, FieldParams, LateParams
from dsp.layout import Layout, LayoutError, layout_from_dict
from dsp.presets import DECAY_DB_PER_T, MODES, mode_from_dict
from simulators.acoustics.truth import band_metrics, octave_band

FS = 48_000

EIGHT = {
    "speakers": [
        {"name": "L", "channel": 1, "azimuth_deg": 30, "distance_m": 9, "pa": True},
        {"name": "R", "channel": 2, "azimuth_deg": -30, "distance_m": 9, "pa": True},
        {"name": "SL", "channel": 3, "azimuth_deg": 90, "elevation_deg": 20, "distance_m": 6},
        {"name": "SR", "channel": 4, "azimuth_deg": -90, "elevation_deg": 20, "distance_m": 6},
        {"name": "BL", "channel": 5, "azimuth_deg": 140, "distance_m": 7},
        {"name": "BR", "channel": 6, "azimuth_deg": -140, "distance_m": 7},
        {"name": "TL", "channel": 7, "azimuth_deg": 45, "elevation_deg": 60, "distance_m": 8},
        {"name": "TR", "channel": 8, "azimuth_deg": -45, "elevation_deg": 60, "distance_m": 8},
    ]
}
DRY_ROOM = {"t30_s": [1.3, 1.2, 1.1, 1.1, 1.0, 0.9], "c80_db": [2.0, 2.5, 3.0, 3.0, 3.5, 4.0]}


@pytest.fixture(scope="module")
def eight() -> Layout:
    return layout_from_dict(EIGHT)


@pytest.fixture(scope="module")
def designs(eight: Layout) -> dict[str, Design]:
    return {name: design(MODES[name], eight, DRY_ROOM) for name in ("chamber", "concert")}


# --- layout -----------------------------------------------------------------------------------


def test_polar_and_room_coordinates_agree() -> None:
    polar = layout_from_dict(
        {"speakers": [{"name": "a", "channel": 1, "azimuth_deg": 90, "distance_m": 5}]}
    )
    # room frame: the audience faces -x (front_deg 180); a loudspeaker at -y of the reference
    # point is on the listener's left
    room = layout_from_dict(
        {
            "reference": [10.0, 8.0, 1.2],
            "front_deg": 180,
            "speakers": [{"name": "a", "channel": 1, "position": [10.0, 3.0, 1.2]}],
        }
    )
    for s in (polar.speakers[0], room.speakers[0]):
        assert s.azimuth_deg == pytest.approx(90.0)
        assert s.elevation_deg == pytest.approx(0.0, abs=1e-9)
        assert s.distance_m == pytest.approx(5.0)
        assert s.lateral == pytest.approx(1.0)
        assert s.index == 0


def test_layout_helpers(eight: Layout) -> None:
    assert eight.n_out == 8
    assert [s.name for s in eight.front()] == ["L", "R", "TL", "TR"]
    assert eight.nearest((0.0, 1.0, 0.2)).name == "SL"
    assert eight.nearest((-1.0, -0.7, 0.0)).name == "BR"
    again = layout_from_dict(
        {
            "speakers": [
                {k: v for k, v in s.items() if k != "pa"} for s in eight.to_dict()["speakers"]
            ]
        }
    )
    assert [round(s.azimuth_deg, 6) for s in again.speakers] == [
        round(s.azimuth_deg, 6) for s in eight.speakers
    ]


def one(**kw: Any) -> dict[str, Any]:
    spk: dict[str, Any] = {"name": "a", "channel": 1, "azimuth_deg": 0, "distance_m": 5}
    spk.update(kw)
    return {"speakers": [{k: v for k, v in spk.items() if v is not None}]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "speakers must be a non-empty list"),
        ({"speakers": []}, "speakers must be a non-empty list"),
        ({"speakers": "L R"}, "speakers must be a non-empty list"),
        ({**one(), "foo": 1}, "layout: unknown key foo"),
        (one(gain=3), r"speakers\[0\] \(a\): unknown key gain"),
        (one(channel=0), "channel must be an integer 1 .. 512"),
        (one(channel=1.0), "channel must be an integer"),
        (one(channel=True), "channel must be an integer"),
        (one(position=[1, 2, 3]), "give either position"),
        (one(azimuth_deg=None, distance_m=None), "give either position"),
        (one(distance_m=None), "missing distance_m"),
        (one(distance_m=-3), "distance_m must lie in 0 .. 10000"),
        (one(distance_m=0.01), "less than 0.1 m from the reference point"),
        (one(azimuth_deg=math.nan), "azimuth_deg must be a finite number"),
        (one(elevation_deg=95), "elevation_deg must lie in -90 .. 90"),
        (one(azimuth_deg=None, distance_m=None, position=[1, 2]), r"position must be \[x, y, z\]"),
        (one(azimuth_deg=None, distance_m=None, position="1,2,3"), r"position must be \[x, y, z\]"),
        (one(pa="yes"), "pa must be true or false"),
        (one(field=False), "no loudspeaker has field = true"),
        (one(name=""), "name must be a non-empty string"),
        ({**one(), "n_out": 0}, "n_out must be an integer in 1 .. 512"),
        ({**one(), "reference": [0, 0]}, r"reference must be \[x, y, z\]"),
        ({**one(), "front_deg": "north"}, "front_deg must be a finite number"),
        (
            {"speakers": [one()["speakers"][0], {**one()["speakers"][0], "name": "b"}]},
            "loudspeakers 'a' and 'b' share channel 1",
        ),
        (
            {"speakers": [one()["speakers"][0], {**one()["speakers"][0], "channel": 2}]},
            "two loudspeakers are named 'a'",
        ),
    ],
)
def test_bad_layouts_get_clear_errors(data: Any, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        layout_from_dict(data)


def test_n_out_may_exceed_the_channels_but_not_fall_below() -> None:
    assert layout_from_dict({**one(channel=3), "n_out": 8}).n_out == 8
    assert layout_from_dict(one(channel=3)).n_out == 3
    with pytest.raises(LayoutError, match=r"n_out must be an integer in 3 \.\. 512"):
        layout_from_dict({**one(channel=3), "n_out": 2})


_any = st.one_of(
    st.none(), st.booleans(), st.integers(-600, 600), st.floats(), st.text(max_size=4),
    st.lists(st.floats(-20, 20), max_size=4),
)  # fmt: skip
_speaker = st.dictionaries(
    st.sampled_from(
        ["name", "channel", "position", "azimuth_deg", "elevation_deg", "distance_m", "pa",
         "field", "x"]
    ),
    _any,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["speakers", "reference", "front_deg", "n_out", "extra"]),
        st.one_of(_any, st.lists(st.one_of(_speaker, _any), max_size=4)),
    )
)
def test_hostile_layouts_give_a_layout_error_or_a_valid_layout(data: dict[str, Any]) -> None:
    try:
        layout = layout_from_dict(data)
    except LayoutError:
        return
    assert layout.n_out >= max(s.channel for s in layout.speakers)
    assert all(math.isfinite(s.azimuth_deg) and s.distance_m >= 0.1 for s in layout.speakers)


@settings(max_examples=100, deadline=None)
@given(
    az=st.floats(-180, 180), el=st.floats(-89, 89), r=st.floats(0.5, 50), front=st.floats(-180, 180)
)
def test_positions_and_angles_round_trip(az: float, el: float, r: float, front: float) -> None:
    s = layout_from_dict(one(azimuth_deg=az, elevation_deg=el, distance_m=r)).speakers[0]
    # the same loudspeaker in room coordinates, with the audience facing ``front``
    a, e, f = math.radians(az), math.radians(el), math.radians(front)
    hx, hy = r * math.cos(e) * math.cos(a + f), r * math.cos(e) * math.sin(a + f)
    pos = [1.0 + hx, 2.0 + hy, 1.2 + r * math.sin(e)]
    room = layout_from_dict(
        {"reference": [1.0, 2.0, 1.2], "front_deg": front, "speakers": [
            {"name": "a", "channel": 1, "position": pos}]}
    ).speakers[0]  # fmt: skip
    assert (room.x, room.y, room.z) == pytest.approx((s.x, s.y, s.z), abs=1e-6)


# --- the room ---------------------------------------------------------------------------------


class _Band:
    def __init__(self, t30: float, c80: float) -> None:
        self.t30_s, self.c80_db, self.edt_s, self.d50, self.ts_s, self.g_db = (
            t30, c80, None, None, None, None,
        )  # fmt: skip


class _Metrics:
    def band(self, hz: float) -> _Band:
        i = BANDS_HZ.index(int(hz))
        return _Band(DRY_ROOM["t30_s"][i], DRY_ROOM["c80_db"][i])


def test_the_room_from_the_metrics_module() -> None:
    """``dsp.metrics.analyze``'s result, and its ``to_dict()``, are rooms."""
    from dsp.metrics import analyze

    n, at = int(2.0 * FS), 480
    ir = _tail(n, at, 0.9, 0.6, 3)
    ir[at] += math.sqrt(0.4)
    metrics = analyze(ir, FS)
    for r in (room_from(metrics), room_from(metrics.to_dict())):
        assert r.t30_s == pytest.approx([0.9] * 6, rel=0.1)
        assert np.all(np.isfinite(r.c80_db)) and np.all(np.isfinite(r.edt_s))
        assert r.level_db.tolist() == [0.0] * 6  # no coupling measured: the default
    third = analyze(ir, FS, bands="third")
    for r in (third, third.to_dict()):
        with pytest.raises(DesignError, match="third-octave metrics"):
            room_from(r)


def test_the_room_comes_in_several_shapes() -> None:
    plain = room_from(DRY_ROOM)
    table = room_from(
        {
            k: {str(b): v for b, v in zip(BANDS_HZ, vals, strict=True)}
            for k, vals in DRY_ROOM.items()
        }
    )
    rows = room_from(
        {
            "bands": [
                {"band_hz": b, "t30_s": t, "c80_db": c, "warnings": []}
                for b, t, c in zip(BANDS_HZ, DRY_ROOM["t30_s"], DRY_ROOM["c80_db"], strict=True)
            ]
            + [{"band_hz": 8000.0, "t30_s": 0.7, "c80_db": 5.0}],
            "j_lf": 0.15,
        }
    )
    duck = room_from(_Metrics())
    for r in (table, rows, duck):
        assert r.t30_s.tolist() == plain.t30_s.tolist()
        assert r.c80_db.tolist() == plain.c80_db.tolist()
    assert rows.j_lf == 0.15 and plain.j_lf is None
    assert np.all(np.isnan(plain.edt_s)) and plain.level_db.tolist() == [0.0] * 6


@pytest.mark.parametrize(
    ("room", "message"),
    [
        ({"c80_db": [0] * 6}, "t30_s missing in band 125, 250"),
        ({"t30_s": [1.0] * 5, "c80_db": [0] * 6}, "t30_s needs 6 bands, got 5"),
        ({"t30_s": [1.0, 1, 1, -1, 1, 1], "c80_db": [0] * 6}, "t30_s must lie in 0.01 .. 30"),
        ({"t30_s": [1.0] * 6, "c80_db": [0] * 6, "d50": [0.5, 1.5, 0.5, 0.5, 0.5, 0.5]}, "d50"),
        ({"t30_s": [1.0] * 6, "c80_db": [0] * 6, "edt_s": [math.inf] * 6}, "edt_s must lie"),
        ({"t30_s": [1.0] * 6, "c80_db": [0] * 6, "level_db": [99] * 6}, "level_db must lie"),
        ({"t30_s": [1.0] * 6, "c80_db": [0, 0, 0, None, 0, 0]}, "c80_db missing in band 1000"),
        ({"t30_s": [1.0] * 6, "c80_db": ["x"] * 6}, "room c80_db must be a number"),
        ({"t30_s": {"63": 1.0}, "c80_db": [0] * 6}, "unknown band '63'"),
        ({"t30_s": [1.0] * 6, "c80_db": [0] * 6, "j_lf": 2}, "j_lf must lie in 0..1"),
        ({"t30_s": [1.0] * 6, "c80_db": [0] * 6, "offset_s": -1}, "offset_s must lie"),
        ({"bands": [{"t30_s": 1.0}]}, "each band needs a band_hz"),
        ("hall", "need a mapping or metrics"),
    ],
)
def test_a_bad_room_gets_a_clear_error(room: Any, message: str) -> None:
    with pytest.raises(DesignError, match=message):
        room_from(room)


# --- prediction: energy arithmetic against rendered, independently measured signals ----------


def _tail(n: int, start: int, t60: float, energy: float, seed: int) -> np.ndarray:
    """Exponentially decaying white noise from ``start`` of total energy ``energy``."""
    t = np.arange(n - start) / FS
    x = np.random.default_rng(seed).standard_normal(n - start)
    x *= np.exp(-DECAY_DB_PER_T * t / (2 * t60))
    out = np.zeros(n)
    out[start:] = x * math.sqrt(energy / float(np.sum(x * x)))
    return out


def _render(p: FieldParams, n: int, at: int, seed: int) -> np.ndarray:
    """A stand-in for the engine: the field's response to an impulse at sample ``at``, its
    outputs summed (the late part white noise with the band-independent T60 of band 0)."""
    out = np.zeros(n)
    for d, a in zip(p.early.delays_s, p.early.gains, strict=True):
        out[at + round(d * FS)] += 10.0 ** (p.early_db / 20.0) * a
    energy = late_energy(float(p.late.t60_s[0]), p.late_db)
    start = at + round(p.late.delay_s * FS)
    return np.asarray(out + _tail(n, start, float(p.late.t60_s[0]), energy, seed))


def _levels(room_ir: np.ndarray, at: int) -> list[float]:
    """The room's energy per band (from its onset, as the metrics see it) in the unit of the
    field: a unit of white-noise energy in the same band (what a calibration measures)."""
    unit = np.random.default_rng(0).standard_normal(4 * FS)
    unit /= math.sqrt(float(np.sum(unit * unit)))
    out = []
    for b in BANDS_HZ:
        room = float(np.sum(octave_band(room_ir, FS, b)[at:] ** 2))
        ref = float(np.sum(octave_band(unit, FS, b)[FS:-FS] ** 2)) * 4 / 2  # edges trimmed
        out.append(10 * math.log10(room / ref))
    return out


def _field() -> FieldParams:
    delays = np.array([0.012, 0.019, 0.027, 0.033, 0.041, 0.050, 0.058, 0.066])
    return FieldParams(
        n_out=4,
        direct_gain=np.zeros(4),
        early=EarlyPattern(delays, np.sqrt(np.full(8, 1 / 8)), np.arange(8) % 4),
        late=LateParams(np.full(6, 2.0), delay_s=0.08),
        early_db=-3.0,
    )


def test_predicted_c80_and_t30_match_rendered_signals() -> None:
    """Room (direct 0.4 + a 1.1 s tail 0.6, total energy 1 = level 0 dB) plus a field, summed
    and measured per octave band by the simulator's truth code, over six noise realisations:
    the mean measured C80 within 0.5 dB of the prediction (and the C80 change when the early
    level rises by 4 dB within 0.5 dB, while T30 moves < 2 %), T30 within 3 %."""
    n, at = int(2.6 * FS), 480
    p = _field()
    louder = replace(p, early_db=p.early_db + 4.0)
    rows: dict[str, list[list[float]]] = {k: [] for k in ("c80", "c80_up", "t30", "t30_up")}
    predicted: list[Prediction] = []
    for seed in range(6):
        room_ir = _tail(n, at, 1.1, 0.6, seed)
        room_ir[at] += math.sqrt(0.4)
        room = band_metrics(room_ir, FS)
        measured = {
            "t30_s": room["t30_s"],
            "c80_db": room["c80_db"],
            "edt_s": room["edt_s"],
            "level_db": _levels(room_ir, at),
        }
        predicted.append(predict(measured, p, coherent=True))
        predicted.append(predict(measured, louder, coherent=True))
        both = band_metrics(room_ir + _render(p, n, at, 100 + seed), FS)
        up = band_metrics(room_ir + _render(louder, n, at, 100 + seed), FS)
        rows["c80"].append(both["c80_db"])  # type: ignore[arg-type]
        rows["c80_up"].append(up["c80_db"])  # type: ignore[arg-type]
        rows["t30"].append(both["t30_s"])  # type: ignore[arg-type]
        rows["t30_up"].append(up["t30_s"])  # type: ignore[arg-type]
    mean = {k: np.mean(np.asarray(v, dtype=float), axis=0) for k, v in rows.items()}
    pred_c80 = np.mean([q.c80_db for q in predicted[0::2]], axis=0)
    pred_c80_up = np.mean([q.c80_db for q in predicted[1::2]], axis=0)
    pred_t30 = np.mean([q.t30_s for q in predicted[0::2]], axis=0)
    assert np.all(np.abs(mean["c80"] - pred_c80) < 0.5), (mean["c80"], pred_c80)
    assert np.all(np.abs(mean["c80_up"] - pred_c80_up) < 0.5), (mean["c80_up"], pred_c80_up)
    change, pred_change = mean["c80_up"] - mean["c80"], pred_c80_up - pred_c80
    assert np.all(np.abs(change - pred_change) < 0.5), (change, pred_change)
    assert np.all(np.abs(mean["t30"] / pred_t30 - 1) < 0.03), (mean["t30"], pred_t30)
    assert np.all(np.abs(mean["t30_up"] / mean["t30"] - 1) < 0.02)


def test_predict_without_a_field_returns_the_room() -> None:
    room = {**DRY_ROOM, "edt_s": [1.2, 1.1, 1.0, 1.0, 0.9, 0.8], "d50": [0.5] * 6}
    off = FieldParams(
        n_out=2,
        direct_gain=np.zeros(2),
        early=EarlyPattern.empty(),
        late=LateParams(np.asarray(DRY_ROOM["t30_s"]), 0.08),
        late_db=-200.0,
    )
    p = predict(room, off)
    assert p.t30_s == pytest.approx(DRY_ROOM["t30_s"], rel=1e-6)
    assert p.c80_db == pytest.approx(DRY_ROOM["c80_db"], abs=1e-6)
    assert p.edt_s == pytest.approx(room["edt_s"], rel=1e-6)
    assert p.d50 == pytest.approx(room["d50"], abs=1e-6)
    assert np.all(np.isnan(p.g_db))
    assert p.to_dict()["g_db"] == [None] * 6


def test_c80_arithmetic() -> None:
    # taps carry half of the early energy; +3 dB on them: early 1 -> 1.5 (approximately)
    before = 10 * math.log10(1.0 / 0.5)
    after = c80_after_early_gain_change(1.0, 0.5, 0.5, 10 * math.log10(2.0))
    assert after == pytest.approx(before + 10 * math.log10(1.5))
    assert c80_change_from_share(before, 0.5, 10 * math.log10(2.0)) == pytest.approx(after)
    arr = c80_after_early_gain_change(np.ones(6), np.ones(6), np.full(6, 0.2), -6.0)
    assert isinstance(arr, np.ndarray) and arr.shape == (6,)
    with pytest.raises(ValueError, match="positive"):
        c80_after_early_gain_change(1.0, 1.0, 2.0, -20.0)
    with pytest.raises(ValueError, match="taps_share"):
        c80_change_from_share(0.0, 1.5, 3.0)


def test_band_autocorrelation() -> None:
    assert band_autocorrelation(1000.0, np.array([0.0]))[0] == 1.0
    lags = np.linspace(0.02, 0.08, 50)
    assert np.all(np.abs(band_autocorrelation(1000.0, lags)) < 0.05)  # 1 kHz: resolved
    assert band_autocorrelation(125.0, np.array([0.0005]))[0] > 0.9  # 125 Hz: not
    # a zero-phase band's response: its autocorrelation swings at the centre frequency
    assert band_autocorrelation(1000.0, np.array([0.0005]))[0] < -0.5


# --- design -----------------------------------------------------------------------------------


def test_design_is_deterministic(eight: Layout, designs: dict[str, Design]) -> None:
    again = design(MODES["chamber"], eight, DRY_ROOM)
    first = designs["chamber"].params
    assert again.params.early_db == first.early_db and again.params.late_db == first.late_db
    assert np.array_equal(again.params.late.t60_s, first.late.t60_s)
    assert np.array_equal(again.params.early.delays_s, first.early.delays_s)
    assert np.array_equal(again.params.early.gains, first.early.gains)
    assert np.array_equal(again.params.early.channels, first.early.channels)
    assert again.notes == designs["chamber"].notes


def test_a_design_as_json(designs: dict[str, Design]) -> None:
    d = json.loads(json.dumps(designs["chamber"].to_dict()))
    assert d["mode"] == "chamber"
    assert len(d["params"]["early"]["delays_s"]) == len(designs["chamber"].params.early.delays_s)
    assert d["reachable"]["t30_s"]["1000"] is True
    assert d["prediction"]["bands_hz"] == list(BANDS_HZ)


def test_a_design_pickles(designs: dict[str, Design]) -> None:
    d = pickle.loads(pickle.dumps(designs["chamber"]))
    assert np.array_equal(d.params.late.t60_s, designs["chamber"].params.late.t60_s)
    assert d.notes == designs["chamber"].notes


def test_a_reachable_mode_is_reached(designs: dict[str, Design]) -> None:
    d = designs["chamber"]  # 1.6 s in a 1.1 s room: inside the 2x cap
    assert all(d.reachable["t30_s"].values()), d.notes
    assert all(d.reachable["c80_db"].values()), d.notes
    assert d.reachable["j_lf"][0] and d.reachable["bass_ratio"][0]
    assert not any("not reachable" in n for n in d.notes)
    p = d.params
    assert p.n_out == 8 and p.meta["mode"] == "chamber"
    assert np.all(p.direct_gain == 0)  # enhancement: the stage provides the direct sound


def test_the_early_pattern(eight: Layout, designs: dict[str, Design]) -> None:
    for d in designs.values():
        e = d.params.early
        assert 12 <= len(e.delays_s) <= 40
        assert np.all((e.delays_s >= 0.005) & (e.delays_s < 0.080))
        assert np.sum(e.gains**2) == pytest.approx(1.0)
        assert set(e.channels.tolist()) <= {s.index for s in eight.field_speakers}
        for ch in set(e.channels.tolist()):  # distinct taps on each loudspeaker
            t = np.sort(e.delays_s[e.channels == ch])
            assert np.all(np.diff(t) >= 0.001)
    # the first reflection follows the mode's initial time-delay gap
    chamber, _ = early_pattern(MODES["chamber"], eight)
    assert float(np.min(chamber.delays_s)) == pytest.approx(MODES["chamber"].itdg_s, abs=0.006)


def test_the_cap_holds(eight: Layout, designs: dict[str, Design]) -> None:
    room_t = np.asarray(DRY_ROOM["t30_s"])
    concert = designs["concert"].params.late.t60_s
    assert np.all(concert <= 2.0 * room_t + 1e-9) and np.all(concert >= room_t - 1e-9)
    tight = design(MODES["concert"], eight, DRY_ROOM, cap=1.5)
    assert np.all(tight.params.late.t60_s <= 1.5 * room_t + 1e-9)
    assert not any(tight.reachable["t30_s"].values())
    assert any("above the enhancement cap" in n and "1.5 x" in n for n in tight.notes)
    with pytest.raises(DesignError, match=r"cap must lie in 1 \.\. 10"):
        design(MODES["concert"], eight, DRY_ROOM, cap=0.5)


def test_a_target_below_the_natural_rt_is_not_reachable(eight: Layout) -> None:
    live = {"t30_s": [2.4, 2.3, 2.2, 2.2, 2.0, 1.8], "c80_db": [-2.0] * 6}
    d = design(MODES["drama"], eight, live)
    assert not any(d.reachable["t30_s"].values())
    assert any("below the room's natural 2.20 s" in n for n in d.notes)
    assert any("cannot shorten a room" in n for n in d.notes)
    assert np.all(d.params.late.t60_s >= np.asarray(live["t30_s"]) - 1e-9)
    assert not d.all_reachable


def test_lateral_energy_needs_loudspeakers_at_the_sides() -> None:
    front_only = layout_from_dict(
        {"speakers": [
            {"name": "L", "channel": 1, "azimuth_deg": 20, "distance_m": 9},
            {"name": "R", "channel": 2, "azimuth_deg": -20, "distance_m": 9},
        ]}
    )  # fmt: skip
    wants_space = mode_from_dict({"name": "wide", "t30_s": 1.6, "c80_db": 0.0, "j_lf": 0.45})
    d = design(wants_space, front_only, {**DRY_ROOM, "j_lf": 0.1})
    assert not d.reachable["j_lf"][0]
    assert any("J_LF not reached" in n for n in d.notes)


def test_a_reinforcement_mode_drives_the_front_pa(eight: Layout) -> None:
    d = design(MODES["cinema"], eight, {"t30_s": [0.6] * 6, "c80_db": [6.0] * 6})
    gains = d.params.direct_gain
    assert np.flatnonzero(gains).tolist() == [0, 1]  # L and R, the PA pair
    assert float(np.sum(gains**2)) == pytest.approx(10 ** ((MODES["cinema"].direct_db or 0) / 10))


def test_the_room_g_enables_g_design(eight: Layout) -> None:
    d = design(MODES["chamber"], eight, {**DRY_ROOM, "g_db": [6.0] * 6})
    assert "g_db" in d.reachable
    assert np.all(np.isfinite(d.prediction.g_db))
    assert np.all(d.prediction.g_db >= 6.0)  # an enhancement only adds energy
    no_g = design(MODES["chamber"], eight, DRY_ROOM)
    assert "g_db" not in no_g.reachable
    assert any("G is not known" in n for n in no_g.notes)


@settings(max_examples=40, deadline=None)
@given(
    t30=st.lists(st.floats(0.1, 8.0), min_size=6, max_size=6),
    c80=st.lists(st.floats(-15.0, 25.0), min_size=6, max_size=6),
    level=st.floats(-40.0, 40.0),
    early_db=st.floats(-80.0, 30.0),
    late_db=st.floats(-80.0, 30.0),
    t60=st.floats(0.1, 10.0),
)
def test_predict_is_finite_for_any_plausible_room_and_field(
    t30: list[float], c80: list[float], level: float, early_db: float, late_db: float, t60: float
) -> None:
    p = replace(
        _field(), early_db=early_db, late_db=late_db, late=LateParams(np.full(6, t60), 0.08)
    )
    q = predict({"t30_s": t30, "c80_db": c80, "level_db": [level] * 6}, p)
    for k in ("t30_s", "edt_s", "c80_db", "d50", "ts_s"):
        assert np.all(np.isfinite(getattr(q, k))), (k, getattr(q, k))
    assert np.all((q.d50 >= 0) & (q.d50 <= 1))
    # a late field that decays no faster than the room never shortens the room's decay (strong
    # taps can: once they fall below -5 dB of the Schroeder curve, T30's fit sees their steps)
    slow = replace(p, early_db=-200.0, late=LateParams(np.maximum(np.asarray(t30), t60), 0.08))
    q = predict({"t30_s": t30, "c80_db": c80, "level_db": [level] * 6}, slow)
    assert np.all(q.t30_s >= np.asarray(t30) * (1 - 1e-6))
