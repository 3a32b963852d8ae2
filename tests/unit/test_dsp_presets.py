"""Sound-field modes (dsp/presets.py): the built-in modes against the ranges their sources give,
band shapes, custom modes and their errors."""

from __future__ import annotations

import math
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsp.field import BANDS_HZ
from dsp.presets import (
    JND,
    MODES,
    Envelope,
    Mode,
    ModeError,
    Target,
    get_mode,
    mode_from_dict,
    modes_from_toml,
)

# The ranges the cited sources give (docs/acoustics.md, "Sound-field modes"), mid-frequency
# values (500/1k mean) for the occupied hall; independent of the numbers in dsp/presets.py.
ISO_TYPICAL = {  # ISO 3382-1:2009 Table A.1, concert and multi-purpose halls up to 25 000 m3
    "edt_s": (1.0, 3.0),
    "c80_db": (-5.0, 5.0),
    "d50": (0.3, 0.7),
    "ts_s": (0.060, 0.260),
    "g_db": (-2.0, 10.0),
    "j_lf": (0.05, 0.35),
}
CITED: dict[str, dict[str, tuple[float, float]]] = {
    "concert": {  # Beranek 2004/2003/2008, Barron 2010
        "t30_s": (1.8, 2.2),
        "edt_s": (1.8, 2.6),
        "c80_db": (-4.0, 1.0),
        "g_db": (3.0, 6.0),
        "bass_ratio": (1.1, 1.25),
        "j_lf": (0.15, 0.35),
        "one_minus_iacc_e3": (0.6, 0.75),
        "itdg_ms": (10.0, 25.0),
    },
    "opera": {  # Hidaka & Beranek 2000, Beranek 2004, Barron 2010
        "t30_s": (1.2, 1.8),
        "edt_s": (1.2, 1.9),
        "c80_db": (-1.0, 4.0),
        "g_db": (0.0, 6.0),
        "bass_ratio": (1.05, 1.3),
        "one_minus_iacc_e3": (0.5, 0.75),
        "itdg_ms": (10.0, 25.0),
    },
    "drama": {  # DIN 18041 (A2, 2000..3000 m3: 1.08..1.15 s +-20 %), Barron 0.7..1.0 s
        "t30_s": (0.7, 1.3),
        "d50": (0.5, 1.0),
        "c80_db": (2.0, 8.0),
        "bass_ratio": (0.9, 1.1),
    },
    "cinema": {  # Dolby 1994 guidelines, ITU-R BS.1116 / EBU 3276 mask (LF rise allowed)
        "t30_s": (0.3, 0.8),
        "bass_ratio": (1.0, 1.5),
        "d50": (0.6, 1.0),
    },
    "multipurpose": {  # Barron 2010, Beranek 2004
        "t30_s": (1.4, 1.9),
        "c80_db": (-2.0, 3.0),
        "j_lf": (0.15, 0.35),
        "one_minus_iacc_e3": (0.6, 0.8),
    },
    "chamber": {  # Beranek 2008 (chamber halls), Barron 2010 (1.4..1.7 s)
        "t30_s": (1.4, 1.8),
        "g_db": (7.0, 13.0),
        "c80_db": (-2.0, 3.0),
        "itdg_ms": (5.0, 20.0),
    },
    "sacred": {  # Barron 2010 (churches for music: 2..4 s)
        "t30_s": (2.0, 4.0),
        "c80_db": (-6.0, 0.0),
        "bass_ratio": (1.1, 1.4),
    },
}
MUSIC_HALLS = ("concert", "opera", "multipurpose", "chamber")


def mid_value(mode: Mode, metric: str) -> float:
    if metric == "itdg_ms":
        return 1000.0 * mode.itdg_s
    if metric in ("bass_ratio", "j_lf", "one_minus_iacc_e3"):
        return mode.single(metric).value
    return mode.mid(metric)


@pytest.mark.parametrize(
    ("name", "metric", "lo", "hi"),
    [(n, m, lo, hi) for n, ranges in CITED.items() for m, (lo, hi) in ranges.items()],
)
def test_mode_numbers_lie_in_the_cited_ranges(name: str, metric: str, lo: float, hi: float) -> None:
    assert lo <= mid_value(MODES[name], metric) <= hi


@pytest.mark.parametrize("name", MUSIC_HALLS)
@pytest.mark.parametrize("metric", sorted(ISO_TYPICAL))
def test_music_halls_lie_in_iso_3382_typical_ranges(name: str, metric: str) -> None:
    lo, hi = ISO_TYPICAL[metric]
    assert lo <= mid_value(MODES[name], metric) <= hi


def test_the_issue_modes_and_more_exist() -> None:
    assert {"concert", "opera", "drama", "cinema", "multipurpose"} <= set(MODES)
    assert {"chamber", "sacred"} <= set(MODES)
    for mode in MODES.values():
        assert mode.sources, f"{mode.name} cites no source"


@pytest.mark.parametrize("name", sorted(MODES))
def test_every_mode_has_every_target_per_band(name: str) -> None:
    mode = MODES[name]
    for metric in ("t30_s", "edt_s", "c80_db", "d50", "ts_s", "g_db"):
        targets = mode.bands(metric)
        assert len(targets) == len(BANDS_HZ)
        assert all(math.isfinite(t.value) and t.tolerance > 0 for t in targets)
    assert all(t > 0 for t in mode.t30_s)
    assert all(0 <= d <= 1 for d in mode.d50)
    for metric in ("bass_ratio", "j_lf", "one_minus_iacc_e3"):
        assert mode.single(metric).tolerance == JND[metric]
    # tolerances are the ISO 3382-1 JNDs
    assert mode.band("t30_s", 1000).tolerance == pytest.approx(0.05 * mode.t30_s[3])
    assert mode.band("c80_db", 500).tolerance == 1.0
    assert mode.band("ts_s", 500).tolerance == pytest.approx(0.010)


@pytest.mark.parametrize("name", sorted(MODES))
def test_band_shapes_follow_the_ratios(name: str) -> None:
    mode = MODES[name]
    t = mode.t30_s
    assert (t[0] + t[1]) / (t[2] + t[3]) == pytest.approx(mode.bass_ratio)
    assert t[2] == t[3] == pytest.approx(mode.mid("t30_s"))
    if mode.bass_ratio > 1:  # warmth: T rises towards the bass, more at 125 than at 250 Hz
        assert t[0] > t[1] > t[2]
    # clearer where the decay is shorter
    order = sorted(range(len(t)), key=lambda i: t[i])
    c80 = [mode.c80_db[i] for i in order]
    assert c80 == sorted(c80, reverse=True)


@pytest.mark.parametrize("name", sorted(MODES))
def test_a_mode_survives_a_round_trip_through_a_dict(name: str) -> None:
    mode = MODES[name]
    again = mode_from_dict(mode.to_dict())
    for metric in ("t30_s", "edt_s", "c80_db", "d50", "ts_s", "g_db"):
        assert getattr(again, metric) == pytest.approx(getattr(mode, metric))
    assert again.bass_ratio == pytest.approx(mode.bass_ratio)
    assert again.itdg_s == pytest.approx(mode.itdg_s)
    assert dict(again.tolerances) == pytest.approx(dict(mode.tolerances))


def test_modes_pickle_for_an_executor() -> None:
    for mode in MODES.values():
        assert pickle.loads(pickle.dumps(mode)) == mode


def test_a_venue_adds_its_modes_in_toml() -> None:
    modes = modes_from_toml(
        """
        [[modes]]
        name = "baroque"
        t30_s = 1.3
        bass_ratio = 1.05
        c80_db = 2.5
        tolerances = { c80_db = 0.5 }

        [[modes]]
        name = "lecture"
        t30_s = { 125 = 0.9, 250 = 0.85, 500 = 0.8, 1k = 0.8, 2k = 0.75, 4k = 0.7 }
        c80_db = 6
        """
    )
    assert set(MODES) < set(modes)
    assert modes["baroque"].band("c80_db", 1000).tolerance == 0.5
    assert modes["lecture"].t30_s[3] == 0.8


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[modes]]\nname = 'opera'\nt30_s = 1\nc80_db = 0", "taken by a built-in mode"),
        (
            "[[modes]]\nname = 'a'\nt30_s = 1\nc80_db = 0\n[[modes]]\nname = 'a'\nt30_s = 1\n"
            "c80_db = 0",
            "taken by an earlier mode",
        ),
        ("[modes]\nname = 'a'", "must be an array of tables"),
        ("[mode]\nname = 'a'", "unknown top-level key mode"),
        ("[[modes]]\nname = 'a'\nt30_s = ", "not valid TOML"),
        ("[[modes]]\nname = 'a'\nt30_s = -1\nc80_db = 0", "t30_s must be >= 0.1"),
    ],
)
def test_bad_mode_files_get_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ModeError, match=message):
        modes_from_toml(text)


def test_get_mode_names_the_modes_when_it_does_not_know_one() -> None:
    assert get_mode("opera") is MODES["opera"]
    with pytest.raises(ModeError, match=r"unknown mode 'jazz'.*concert"):
        get_mode("jazz")


def test_targets_judge_values() -> None:
    t = Target(2.0, 0.05, relative=True)
    assert t.tolerance == pytest.approx(0.1)
    assert t.met_by(2.09) and t.met_by(1.9) and not t.met_by(2.11)
    assert not t.met_by(None) and not t.met_by(math.nan)
    assert t.jnds(2.2) == pytest.approx(2.0)
    c = Target(-1.0, 1.0)
    assert c.lo == -2.0 and c.hi == 0.0


def test_the_envelope_fits_t_and_c80() -> None:
    for t60, c80 in ((2.0, -1.0), (1.0, 4.0), (0.5, 8.0), (2.0, -4.0)):
        env = Envelope.fit(t60, c80, total=3.0)
        assert env.total == pytest.approx(3.0)
        assert env.c80_db() == pytest.approx(c80)
    # a bare exponential decay from t = 0: C80 = 10 log10(exp(13.8 * 0.08 / T) - 1)
    bare = Envelope(0.0, 1.0, 2.0)
    assert bare.c80_db() == pytest.approx(
        10 * math.log10(math.exp(6 * math.log(10) * 0.08 / 2) - 1)
    )
    assert bare.ts_s() == pytest.approx(2.0 / 13.8155, rel=1e-4)


# --- custom modes -----------------------------------------------------------------------------

FULL_T = {"125": 2.2, "250": 2.1, "500": 2.0, "1k": 2.0, "2000": 1.8, 4000: 1.6}


def custom(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "mine", "t30_s": 1.8, "c80_db": 0.0}
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


def test_a_custom_mode_with_tables() -> None:
    mode = mode_from_dict(
        custom(
            t30_s=FULL_T,
            c80_db={str(b): 0.0 for b in BANDS_HZ},
            ts_ms=120,
            tolerances={"c80_db": 0.5, "ts_ms": 5},
        )
    )
    assert mode.t30_s == (2.2, 2.1, 2.0, 2.0, 1.8, 1.6)
    assert mode.bass_ratio == pytest.approx(4.3 / 4.0)
    assert mode.c80_db == (0.0,) * 6
    assert mode.band("c80_db", 1000).tolerance == 0.5
    assert mode.band("ts_s", 1000).tolerance == pytest.approx(0.005)
    assert mode.mid("ts_s") == pytest.approx(0.120)
    assert mode.g_db is None and not mode.targeted("g_db")
    with pytest.raises(KeyError, match="no g_db target"):
        mode.band("g_db", 500)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"t30_s": {k: v for k, v in FULL_T.items() if k != "1k"}}, "t30_s: missing band 1000"),
        ({"t30_s": {**FULL_T, "63": 3.0}}, "unknown band '63'"),
        ({"t30_s": {**FULL_T, "8k": 3.0}}, "unknown band '8k'"),
        ({"t30_s": {**FULL_T, "1000": 2.0}}, "band 1000 Hz given twice"),
        ({"t30_s": -1.0}, "t30_s must be >= 0.1"),
        ({"t30_s": {**FULL_T, "500": -2.0}}, "t30_s at 500 Hz: t30_s must be >= 0.1"),
        ({"t30_s": 0}, "t30_s must be >= 0.1"),
        ({"t30_s": 1800}, "t30_s must be >= 0.1 and <= 20"),
        ({"t30_s": "2 s"}, "t30_s must be a number"),
        ({"t30_s": True}, "t30_s must be a number"),
        ({"t30_s": math.nan}, "t30_s must be"),
        ({"c80_db": None}, "missing key 'c80_db'"),
        ({"reverb": 2}, "unknown key reverb"),
        ({"d50": 60}, "d50 must be >= 0 and <= 1"),
        ({"ts_ms": 0.12}, "ts_ms must be >= 5"),  # seconds where ms are asked
        ({"ts_ms": 40}, None),  # valid, only checked to build
        ({"bass_ratio": 5}, "bass_ratio must be"),
        ({"t30_s": FULL_T, "bass_ratio": 1.5}, "bass_ratio 1.5 disagrees"),
        ({"t30_s": FULL_T, "treble_ratio": 0.8}, "treble_ratio only shapes"),
        ({"tolerances": {"c80": 1}}, "tolerances: unknown metric 'c80'"),
        ({"tolerances": {"c80_db": 0}}, "c80_db must be a number > 0"),
        ({"tolerances": {"ts_s": 0.01}}, "unknown metric 'ts_s'"),
        ({"tolerances": [1]}, "tolerances must be a table"),
        ({"sources": "Beranek"}, "sources must be a list of strings"),
        ({"title": 3}, "title must be a string"),
        ({"j_lf": 1.5}, "j_lf must be"),
        ({"itdg_ms": 0}, "itdg_ms must be > 0"),
    ],
)
def test_bad_custom_modes_get_clear_errors(over: dict[str, Any], message: str | None) -> None:
    if message is None:
        mode_from_dict(custom(**over))
        return
    with pytest.raises(ModeError, match=message) as info:
        mode_from_dict(custom(**over))
    assert "mode 'mine'" in str(info.value)


@pytest.mark.parametrize("data", [None, [], "concert", {"t30_s": 2.0}, {"name": ""}, {"name": 3}])
def test_a_mode_needs_a_table_and_a_name(data: Any) -> None:
    with pytest.raises(ModeError):
        mode_from_dict(data)


def test_d50_shaped_out_of_range_is_an_error() -> None:
    with pytest.raises(ModeError, match=r"d50 shaped over the bands leaves 0\.\.1"):
        mode_from_dict(custom(t30_s=1.0, treble_ratio=0.5, c80_db=3.0, d50=0.99))


_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), 10**6),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
)
_bands = st.sampled_from(["125", "250", "500", "1000", "2000", "4000", "1k", "63", "x", 250])
_tables = st.dictionaries(_bands, _values, max_size=8)
_keys = st.sampled_from(
    ["t30_s", "edt_s", "c80_db", "d50", "ts_ms", "g_db", "bass_ratio", "treble_ratio", "j_lf",
     "one_minus_iacc_e3", "volume_m3", "itdg_ms", "direct_db", "tolerances", "sources", "bogus"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, st.one_of(_values, _tables), max_size=8), st.booleans())
def test_hostile_mode_data_gives_a_mode_error_or_a_valid_mode(
    data: dict[str, Any], with_required: bool
) -> None:
    data = dict(data, name="fuzz")
    if with_required:
        data.setdefault("t30_s", 1.5)
        data.setdefault("c80_db", 0.0)
    try:
        mode = mode_from_dict(data)
    except ModeError as e:
        assert "fuzz" in str(e)
        return
    assert all(t > 0 and math.isfinite(t) for t in mode.t30_s + mode.edt_s)
    assert all(0 <= d <= 1 for d in mode.d50)
    assert all(math.isfinite(c) for c in mode.c80_db + mode.ts_s)


@settings(max_examples=200, deadline=None)
@given(
    t=st.floats(0.2, 5.0),
    c80=st.floats(-8.0, 10.0),
    br=st.floats(0.8, 1.4),
    tr=st.floats(0.6, 1.1),
    g=st.floats(-2.0, 12.0),
)
def test_valid_mid_values_always_build_consistent_modes(
    t: float, c80: float, br: float, tr: float, g: float
) -> None:
    mode = mode_from_dict(
        {"name": "gen", "t30_s": t, "c80_db": c80, "bass_ratio": br, "treble_ratio": tr, "g_db": g}
    )
    assert mode.mid("t30_s") == pytest.approx(t)
    assert mode.mid("c80_db") == pytest.approx(c80)
    assert mode.mid("g_db") == pytest.approx(g)
    assert mode.bass_ratio == pytest.approx(br)
    assert all(x > 0 for x in mode.t30_s)
