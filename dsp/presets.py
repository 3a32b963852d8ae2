"""Sound-field modes: the room-acoustic targets of each use of a hall, taken from the literature.

A mode is data: per octave band of ``BANDS_HZ`` (125 Hz .. 4 kHz) a target and a tolerance for
T30, EDT, C80, D50, Ts and G, and single-number targets for the bass ratio, J_LF and
1 - IACC_E3. Every mode, the built-in ones included, is built by ``mode_from_dict`` from a plain
mapping (what a TOML table or a JSON body gives), so a user's custom mode is validated exactly
like ours. ``docs/acoustics.md`` ("Sound-field modes") has the table of numbers and the sources.

How a single mid-frequency number becomes a band shape (the sources give mid-frequency values,
"mid" being the mean of the 500 Hz and 1 kHz bands):

- T30: from the mid T, the bass ratio BR = (T125 + T250) / (T500 + T1k) (Beranek) and a treble
  ratio TR = (T2k + T4k) / (T500 + T1k); the 125 Hz band departs from mid twice as far as the
  250 Hz band, 4 kHz twice as far as 2 kHz (a straight line on the octave scale each side).
- EDT: the T30 shape scaled by EDT_mid / T30_mid.
- C80, D50, Ts, G: a two-part energy envelope (Barron's revised theory: a direct/early impulse
  whose energy does not depend on the band, and an exponential reverberant tail whose energy is
  proportional to the band's T) is fitted at mid to T_mid and C80_mid; each band's value is the
  given mid value plus (for Ts: times) the envelope's change from mid to that band.

Single numbers, as the sources define them: J_LF is the mean of 125 Hz .. 1 kHz (ISO 3382-1),
1 - IACC_E3 the mean of 500 Hz, 1 kHz and 2 kHz (Beranek's BQI), the bass ratio as above.

Tolerances default to the just-noticeable differences of ISO 3382-1 Table A.1 (T and EDT 5 %
relative, C80 1 dB, D50 0.05, Ts 10 ms, G 1 dB, J_LF 0.05) and 0.075 for 1 - IACC (Cox et al.,
Okano); the bass ratio has no JND in the standard: 0.1 here (two 5 % JNDs of T).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dsp.field import BANDS_HZ

BAND_METRICS: tuple[str, ...] = ("t30_s", "edt_s", "c80_db", "d50", "ts_s", "g_db")
"""The metrics with a target per band of ``BANDS_HZ``."""

SINGLE_METRICS: tuple[str, ...] = ("bass_ratio", "j_lf", "one_minus_iacc_e3")
"""The metrics with one number per mode."""

METRICS: tuple[str, ...] = BAND_METRICS + SINGLE_METRICS

RELATIVE: frozenset[str] = frozenset({"t30_s", "edt_s"})
"""Metrics whose tolerance is a fraction of the target, not an absolute difference."""

JND: Mapping[str, float] = MappingProxyType(
    {
        "t30_s": 0.05,
        "edt_s": 0.05,
        "c80_db": 1.0,
        "d50": 0.05,
        "ts_s": 0.010,
        "g_db": 1.0,
        "bass_ratio": 0.1,
        "j_lf": 0.05,
        "one_minus_iacc_e3": 0.075,
    }
)
"""Default tolerance of each metric (ISO 3382-1 Table A.1; see the module docstring)."""

MID_BANDS: tuple[int, ...] = (500, 1000)
"""The bands a "mid-frequency" value is the mean of."""

DECAY_DB_PER_T = 60.0 * math.log(10.0) / 10.0  # 13.8
"""An energy decay of 60 dB is a factor exp(-13.816) in energy: exp(-DECAY_DB_PER_T * t / T)."""


class ModeError(ValueError):
    """A mode's data is invalid; the message names the mode, the key and the band."""


@dataclass(frozen=True)
class Target:
    """One target value with its tolerance (absolute, or a fraction of ``value`` if relative)."""

    value: float
    tol: float
    relative: bool = False

    @property
    def tolerance(self) -> float:
        """The absolute tolerance."""
        return self.tol * abs(self.value) if self.relative else self.tol

    @property
    def lo(self) -> float:
        return self.value - self.tolerance

    @property
    def hi(self) -> float:
        return self.value + self.tolerance

    def met_by(self, x: float | None) -> bool:
        """Whether ``x`` lies within the tolerance (``None``, not measured, never does)."""
        return (
            x is not None
            and math.isfinite(x)
            and abs(x - self.value) <= self.tolerance * (1 + 1e-9)
        )

    def jnds(self, x: float) -> float:
        """How many tolerances ``x`` is away from the target (signed)."""
        return (x - self.value) / self.tolerance if self.tolerance > 0 else math.inf


@dataclass(frozen=True)
class Mode:
    """A sound-field mode: targets per band and single-number targets, plus design hints.

    Per-band tuples follow ``BANDS_HZ``. ``g_db``, ``j_lf`` and ``one_minus_iacc_e3`` may be
    ``None`` in a custom mode (not targeted). ``volume_m3`` and ``itdg_s`` describe the virtual
    room the early reflections are drawn from (``dsp/design.py``); ``direct_db``, when set, is a
    reinforcement level for the direct path on the front loudspeakers (speech, cinema).
    """

    name: str
    title: str
    t30_s: tuple[float, ...]
    edt_s: tuple[float, ...]
    c80_db: tuple[float, ...]
    d50: tuple[float, ...]
    ts_s: tuple[float, ...]
    g_db: tuple[float, ...] | None
    bass_ratio: float
    j_lf: float | None
    one_minus_iacc_e3: float | None
    volume_m3: float
    itdg_s: float
    direct_db: float | None = None
    description: str = ""
    sources: tuple[str, ...] = ()
    tolerances: Mapping[str, float] = field(default_factory=lambda: dict(JND))  # read-only

    def tol(self, metric: str) -> float:
        return self.tolerances[metric]

    def targeted(self, metric: str) -> bool:
        return getattr(self, _check_metric(metric)) is not None

    def band(self, metric: str, band_hz: int) -> Target:
        """The target of a per-band ``metric`` in ``band_hz``."""
        if _check_metric(metric) not in BAND_METRICS:
            raise KeyError(f"{metric} is a single-number metric: use Mode.single()")
        values = getattr(self, metric)
        if values is None:
            raise KeyError(f"mode {self.name!r} has no {metric} target")
        return Target(values[_band_index(band_hz)], self.tol(metric), metric in RELATIVE)

    def bands(self, metric: str) -> tuple[Target, ...]:
        return tuple(self.band(metric, b) for b in BANDS_HZ)

    def single(self, metric: str) -> Target:
        if _check_metric(metric) not in SINGLE_METRICS:
            raise KeyError(f"{metric} is a per-band metric: use Mode.band()")
        value = getattr(self, metric)
        if value is None:
            raise KeyError(f"mode {self.name!r} has no {metric} target")
        return Target(float(value), self.tol(metric), False)

    def mid(self, metric: str) -> float:
        """The mean over ``MID_BANDS`` of a per-band metric."""
        return sum(self.band(metric, b).value for b in MID_BANDS) / len(MID_BANDS)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that ``mode_from_dict`` turns back into the same mode."""

        def table(values: tuple[float, ...] | None) -> dict[str, float] | None:
            return (
                None
                if values is None
                else {str(b): v for b, v in zip(BANDS_HZ, values, strict=True)}
            )

        out: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "t30_s": table(self.t30_s),
            "edt_s": table(self.edt_s),
            "c80_db": table(self.c80_db),
            "d50": table(self.d50),
            "ts_ms": table(tuple(1000.0 * t for t in self.ts_s)),
            "g_db": table(self.g_db),
            "bass_ratio": self.bass_ratio,
            "j_lf": self.j_lf,
            "one_minus_iacc_e3": self.one_minus_iacc_e3,
            "volume_m3": self.volume_m3,
            "itdg_ms": 1000.0 * self.itdg_s,
            "direct_db": self.direct_db,
            "sources": list(self.sources),
            "tolerances": {
                ("ts_ms" if k == "ts_s" else k): (1000.0 * v if k == "ts_s" else v)
                for k, v in self.tolerances.items()
            },
        }
        return {k: v for k, v in out.items() if v is not None}


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise KeyError(f"unknown metric {metric!r} (metrics: {', '.join(METRICS)})")
    return metric


def _band_index(band_hz: float) -> int:
    for i, b in enumerate(BANDS_HZ):
        if float(band_hz) == b:
            return i
    raise KeyError(f"no band {band_hz} Hz (bands: {', '.join(map(str, BANDS_HZ))} Hz)")


# --- the envelope model used for band shapes --------------------------------------------------


def exp_fraction_after(t_s: float, t60_s: float) -> float:
    """The fraction of an exponential decay's energy (60 dB in ``t60_s``) left after ``t_s``."""
    return math.exp(-DECAY_DB_PER_T * max(t_s, 0.0) / t60_s)


@dataclass(frozen=True)
class Envelope:
    """An impulse of energy ``direct`` at t = 0 plus an exponential tail of total energy
    ``tail`` (60 dB decay in ``t60_s``) that starts at ``t0_s`` (Barron's revised theory, with
    the early reflections folded into the impulse or the tail's start)."""

    direct: float
    tail: float
    t60_s: float
    t0_s: float = 0.0

    def energy(self, a_s: float, b_s: float = math.inf) -> float:
        """Energy arriving in [a, b)."""
        e = self.direct if a_s <= 0.0 < b_s else 0.0
        lo, hi = max(a_s, self.t0_s), max(b_s, self.t0_s)
        if hi > lo:
            after_lo = exp_fraction_after(lo - self.t0_s, self.t60_s)
            after_hi = 0.0 if math.isinf(hi) else exp_fraction_after(hi - self.t0_s, self.t60_s)
            e += self.tail * (after_lo - after_hi)
        return e

    @property
    def total(self) -> float:
        return self.direct + self.tail

    def c80_db(self) -> float:
        return 10.0 * math.log10(self.energy(0.0, 0.08) / self.energy(0.08))

    def d50(self) -> float:
        return self.energy(0.0, 0.05) / self.total

    def ts_s(self) -> float:
        """Centre time: the first moment of the energy over the total."""
        mean_tail = self.t0_s + self.t60_s / DECAY_DB_PER_T
        return self.tail * mean_tail / self.total

    @staticmethod
    def fit(t60_s: float, c80_db: float, total: float = 1.0) -> Envelope:
        """The envelope of total energy ``total`` with this decay and this C80: an impulse plus
        a tail from t = 0, or, where even a bare tail is too clear, a tail that starts later."""
        late = total / (1.0 + 10.0 ** (c80_db / 10.0))
        x = exp_fraction_after(0.08, t60_s)  # a tail's late share when it starts at 0
        if late / x <= total:
            tail = late / x
            return Envelope(total - tail, tail, t60_s, 0.0)
        # late / total = exp(-k (0.08 - t0) / T)  =>  t0 = 0.08 + T ln(late / total) / k
        t0 = 0.08 + t60_s * math.log(late / total) / DECAY_DB_PER_T
        return Envelope(0.0, total, t60_s, t0)


# --- building modes from data -----------------------------------------------------------------

_KEYS = frozenset(
    {
        "name",
        "title",
        "description",
        "sources",
        "t30_s",
        "edt_s",
        "c80_db",
        "d50",
        "ts_ms",
        "g_db",
        "bass_ratio",
        "treble_ratio",
        "j_lf",
        "one_minus_iacc_e3",
        "volume_m3",
        "itdg_ms",
        "direct_db",
        "tolerances",
    }
)
_REQUIRED = ("name", "t30_s", "c80_db")

# (lower, upper, inclusive lower) of every value a mode may hold: wider than any real hall,
# narrow enough to catch unit mistakes (ms for s, fractions in percent).
_LIMITS: Mapping[str, tuple[float, float, bool]] = MappingProxyType(
    {
        "t30_s": (0.1, 20.0, True),  # below 0.1 s: no room (and the envelope arithmetic underflows)
        "edt_s": (0.1, 20.0, True),
        "c80_db": (-30.0, 30.0, True),
        "d50": (0.0, 1.0, True),
        "ts_ms": (5.0, 2000.0, True),  # below 5 ms: seconds given where ms are asked
        "g_db": (-30.0, 40.0, True),
        "bass_ratio": (0.3, 3.0, True),
        "treble_ratio": (0.2, 2.0, True),
        "j_lf": (0.0, 1.0, True),
        "one_minus_iacc_e3": (0.0, 1.0, True),
        "volume_m3": (10.0, 1.0e6, True),
        "itdg_ms": (0.0, 100.0, False),
        "direct_db": (-60.0, 20.0, True),
    }
)
_BAND_NAMES: Mapping[str, int] = MappingProxyType({"1k": 1000, "2k": 2000, "4k": 4000})


def _number(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModeError(f"{where}: {key} must be a number, got {value!r}")
    x = float(value)
    lo, hi, closed = _LIMITS[key]
    if not math.isfinite(x) or x > hi or x < lo or (x == lo and not closed):
        rel = ">=" if closed else ">"
        raise ModeError(f"{where}: {key} must be {rel} {lo:g} and <= {hi:g}, got {value!r}")
    return x


def _band_key(where: str, key: str, raw: Any) -> int:
    text = str(raw).strip().lower().removesuffix("hz").strip()
    band = _BAND_NAMES.get(text)
    if band is None:
        try:
            band = int(float(text))
        except ValueError:
            band = -1
    if band not in BANDS_HZ:
        bands = ", ".join(map(str, BANDS_HZ))
        raise ModeError(f"{where}: {key}: unknown band {raw!r} (bands: {bands} Hz)")
    return band


def _table(where: str, key: str, value: Any) -> tuple[float, ...] | float:
    """A number (a mid value, to be shaped) or a full table {band: value}."""
    if not isinstance(value, Mapping):
        return _number(where, key, value)
    got: dict[int, float] = {}
    for raw, v in value.items():
        band = _band_key(where, key, raw)
        if band in got:
            raise ModeError(f"{where}: {key}: band {band} Hz given twice")
        got[band] = _number(f"{where}: {key} at {band} Hz", key, v)
    missing = [b for b in BANDS_HZ if b not in got]
    if missing:
        raise ModeError(f"{where}: {key}: missing band {', '.join(map(str, missing))} Hz")
    return tuple(got[b] for b in BANDS_HZ)


def _mid(values: tuple[float, ...]) -> float:
    return sum(values[_band_index(b)] for b in MID_BANDS) / len(MID_BANDS)


def _ratio(values: tuple[float, ...], lo: tuple[int, ...], hi: tuple[int, ...]) -> float:
    num = sum(values[_band_index(b)] for b in lo)
    return num / sum(values[_band_index(b)] for b in hi)


def shape_t(t_mid: float, bass_ratio: float, treble_ratio: float) -> tuple[float, ...]:
    """Per-band T from the mid T, BR and TR (see the module docstring)."""
    lo, hi = bass_ratio - 1.0, treble_ratio - 1.0
    factors = (1 + 4 * lo / 3, 1 + 2 * lo / 3, 1.0, 1.0, 1 + 2 * hi / 3, 1 + 4 * hi / 3)
    return tuple(t_mid * f for f in factors)


def mode_from_dict(data: Mapping[str, Any]) -> Mode:
    """Validate ``data`` and build a ``Mode``.

    Keys: ``name`` (required), ``title``, ``description``, ``sources`` (list of strings),
    ``t30_s`` and ``c80_db`` (required), ``edt_s``, ``d50``, ``ts_ms``, ``g_db``: each either a
    number (the mid-frequency value, shaped over the bands as the module docstring says) or a
    table with every band of ``BANDS_HZ`` (keys 125 .. 4000, "1k", "2k", "4k");
    ``bass_ratio`` / ``treble_ratio`` (shape a numeric ``t30_s``; with a table, a given
    ``bass_ratio`` must agree with it), ``j_lf``, ``one_minus_iacc_e3``, ``volume_m3`` (the
    virtual room of the early reflections, default 10 000), ``itdg_ms`` (default 20),
    ``direct_db`` and ``tolerances`` ({metric: tolerance}; ``ts_ms`` in ms, T and EDT as a
    fraction). Anything else is an error, and every error names the mode and the key.
    """
    if not isinstance(data, Mapping):
        raise ModeError(f"a mode must be a table (mapping), got {type(data).__name__}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise ModeError(f"a mode needs a 'name' (a non-empty string of <= 64 chars), got {name!r}")
    where = f"mode {name!r}"
    unknown = sorted(str(k) for k in data if k not in _KEYS)
    if unknown:
        raise ModeError(
            f"{where}: unknown key {', '.join(unknown)} (keys: {', '.join(sorted(_KEYS))})"
        )
    for key in _REQUIRED:
        if key not in data:
            raise ModeError(f"{where}: missing key {key!r}")
    for key in ("title", "description"):
        if key in data and not isinstance(data[key], str):
            raise ModeError(f"{where}: {key} must be a string")
    sources = data.get("sources") or ()
    if not isinstance(sources, list | tuple) or not all(isinstance(s, str) for s in sources):
        raise ModeError(f"{where}: sources must be a list of strings")

    tolerances = dict(JND)
    raw_tol = data.get("tolerances", {})
    if not isinstance(raw_tol, Mapping):
        raise ModeError(f"{where}: tolerances must be a table {{metric: tolerance}}")
    for key, value in raw_tol.items():
        metric = "ts_s" if key == "ts_ms" else key
        if metric not in METRICS or key == "ts_s":
            known = ", ".join(m if m != "ts_s" else "ts_ms" for m in METRICS)
            raise ModeError(f"{where}: tolerances: unknown metric {key!r} (metrics: {known})")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and value > 0)
        ):
            raise ModeError(f"{where}: tolerances: {key} must be a number > 0, got {value!r}")
        tolerances[metric] = float(value) / (1000.0 if key == "ts_ms" else 1.0)

    def opt(key: str) -> float | None:
        return None if data.get(key) is None else _number(where, key, data[key])

    t30 = _table(where, "t30_s", data["t30_s"])
    br_given, tr = opt("bass_ratio"), opt("treble_ratio")
    if isinstance(t30, tuple):
        if tr is not None:
            raise ModeError(f"{where}: treble_ratio only shapes a single-number t30_s")
        br = _ratio(t30, (125, 250), MID_BANDS)
        if br_given is not None and abs(br_given - br) > 0.01:
            raise ModeError(
                f"{where}: bass_ratio {br_given:g} disagrees with the t30_s table ({br:.3f})"
            )
        t30_bands = t30
    else:
        br = 1.0 if br_given is None else br_given
        t30_bands = shape_t(t30, br, 1.0 if tr is None else tr)
        if min(t30_bands) <= 0.0:
            raise ModeError(f"{where}: bass_ratio / treble_ratio make a band's T30 <= 0")
    t_mid = _mid(t30_bands)

    edt = _table(where, "edt_s", data.get("edt_s", t_mid))
    edt_bands = edt if isinstance(edt, tuple) else tuple(t * edt / t_mid for t in t30_bands)

    c80 = _table(where, "c80_db", data["c80_db"])
    c80_mid = _mid(c80) if isinstance(c80, tuple) else c80
    envelopes = _band_envelopes(t30_bands, t_mid, c80_mid)
    mid_env = Envelope.fit(t_mid, c80_mid)

    def shaped(key: str, model: Any, *, ratio: bool = False) -> tuple[float, ...] | None:
        if data.get(key) is None:
            return None
        v = _table(where, key, data[key])
        if isinstance(v, tuple):
            return v
        base = model(mid_env)
        return tuple((v * model(e) / base) if ratio else (v + model(e) - base) for e in envelopes)

    c80_bands = c80 if isinstance(c80, tuple) else shaped("c80_db", Envelope.c80_db)
    assert c80_bands is not None
    d50_bands = shaped("d50", Envelope.d50) or tuple(e.d50() for e in envelopes)
    if any(not 0.0 <= d <= 1.0 for d in d50_bands):
        raise ModeError(f"{where}: d50 shaped over the bands leaves 0..1; give a d50 table")
    ts_ms = shaped("ts_ms", Envelope.ts_s, ratio=True)
    ts_bands = tuple(t / 1000.0 for t in ts_ms) if ts_ms else tuple(e.ts_s() for e in envelopes)
    g_bands = shaped("g_db", lambda e: 10.0 * math.log10(e.total))

    return Mode(
        name=name,
        title=str(data.get("title", name)),
        description=str(data.get("description", "")),
        sources=tuple(sources),
        t30_s=tuple(t30_bands),
        edt_s=tuple(edt_bands),
        c80_db=tuple(c80_bands),
        d50=tuple(d50_bands),
        ts_s=ts_bands,
        g_db=g_bands,
        bass_ratio=br,
        j_lf=opt("j_lf"),
        one_minus_iacc_e3=opt("one_minus_iacc_e3"),
        volume_m3=_number(where, "volume_m3", data.get("volume_m3", 10_000.0)),
        itdg_s=_number(where, "itdg_ms", data.get("itdg_ms", 20.0)) / 1000.0,
        direct_db=opt("direct_db"),
        tolerances=tolerances,
    )


def _band_envelopes(t30: tuple[float, ...], t_mid: float, c80_mid: float) -> list[Envelope]:
    """Each band's envelope: the mid envelope's impulse (and tail onset), a tail whose energy
    scales with the band's T (Barron's revised theory)."""
    mid = Envelope.fit(t_mid, c80_mid)
    return [Envelope(mid.direct, mid.tail * t / t_mid, t, mid.t0_s) for t in t30]


# --- the built-in modes -----------------------------------------------------------------------
# Mid-frequency values for the occupied hall. The sources and the ranges they give are in
# docs/acoustics.md; tests/unit/test_dsp_presets.py checks every number against those ranges.

BERANEK_2004 = (
    "L. L. Beranek, Concert Halls and Opera Houses: Music, Acoustics, and Architecture, "
    "2nd ed., Springer, 2004"
)
BERANEK_2003 = (
    "L. L. Beranek, Subjective rank-orderings and acoustical measurements for fifty-eight "
    "concert halls, Acta Acustica united with Acustica 89 (2003) 494-508"
)
BERANEK_2008 = "L. L. Beranek, Concert hall acoustics - 2008, J. Audio Eng. Soc. 56 (2008) 532-544"
BARRON = (
    "M. Barron, Auditorium Acoustics and Architectural Design, 2nd ed., Spon, 2010; "
    "M. Barron, L.-J. Lee, Energy relations in concert auditoriums I, JASA 84 (1988) 618-628"
)
HIDAKA_BERANEK = (
    "T. Hidaka, L. L. Beranek, Objective and subjective evaluations of twenty-three opera "
    "houses in Europe, Japan, and the Americas, JASA 107 (2000) 368-383"
)
ISO_3382 = "ISO 3382-1:2009, Annex A (Table A.1: typical ranges and JNDs)"
DIN_18041 = "DIN 18041:2016-03, Hoersamkeit in Raeumen (group A2, speech: T = 0.37 lg V - 0.14 s)"
CINEMA = (
    "Dolby Laboratories, Technical Guidelines for Dolby Stereo Theatres, rev. 1.33, 1994, "
    "sec. 4.1.2; ITU-R BS.1116-3 / EBU Tech 3276 (T_m = 0.25 (V/100 m3)^(1/3) s, LF mask)"
)

BUILTIN: tuple[Mapping[str, Any], ...] = (
    {
        "name": "concert",
        "title": "Concert hall (symphonic)",
        "description": "Late-romantic symphonic repertoire: long, warm reverberation, "
        "strong lateral early reflections.",
        "t30_s": 2.0,
        "bass_ratio": 1.15,
        "treble_ratio": 0.85,
        "edt_s": 2.1,
        "c80_db": -1.0,
        "g_db": 4.5,
        "j_lf": 0.22,
        "one_minus_iacc_e3": 0.68,
        "volume_m3": 18_000.0,
        "itdg_ms": 20.0,
        "sources": [BERANEK_2004, BERANEK_2003, BERANEK_2008, BARRON, ISO_3382],
    },
    {
        "name": "opera",
        "title": "Opera house",
        "description": "Sung text over an orchestra: shorter reverberation and higher clarity "
        "than a concert hall.",
        "t30_s": 1.45,
        "bass_ratio": 1.15,
        "treble_ratio": 0.85,
        "edt_s": 1.5,
        "c80_db": 2.0,
        "g_db": 3.0,
        "j_lf": 0.18,
        "one_minus_iacc_e3": 0.62,
        "volume_m3": 10_000.0,
        "itdg_ms": 20.0,
        "sources": [HIDAKA_BERANEK, BERANEK_2004, BARRON, ISO_3382],
    },
    {
        "name": "drama",
        "title": "Drama / speech",
        "description": "Unamplified speech: intelligibility first (D50 > 0.5), a flat T.",
        "t30_s": 1.0,
        "bass_ratio": 1.0,
        "treble_ratio": 0.9,
        "c80_db": 4.0,
        "d50": 0.6,
        "g_db": 8.0,
        "j_lf": 0.12,
        "one_minus_iacc_e3": 0.5,
        "volume_m3": 2_500.0,
        "itdg_ms": 12.0,
        "sources": [DIN_18041, BARRON, ISO_3382],
    },
    {
        "name": "cinema",
        "title": "Cinema",
        "description": "Reproduced multichannel sound: a short, smooth decay with a tolerated "
        "rise at low frequencies; the mix, not the room, carries the space.",
        "t30_s": 0.5,
        "bass_ratio": 1.25,
        "treble_ratio": 0.9,
        "c80_db": 8.0,
        "d50": 0.8,
        "g_db": 8.0,
        "j_lf": 0.1,
        "one_minus_iacc_e3": 0.5,
        "volume_m3": 3_000.0,
        "itdg_ms": 10.0,
        "direct_db": 0.0,
        "sources": [CINEMA, ISO_3382],
    },
    {
        "name": "multipurpose",
        "title": "Multi-purpose / immersive",
        "description": "Amplified and acoustic events, immersive sound: medium reverberation, "
        "clarity near 0 dB, envelopment emphasised (lateral and late energy).",
        "t30_s": 1.6,
        "bass_ratio": 1.1,
        "treble_ratio": 0.9,
        "c80_db": 1.0,
        "g_db": 5.0,
        "j_lf": 0.25,
        "one_minus_iacc_e3": 0.7,
        "volume_m3": 12_000.0,
        "itdg_ms": 20.0,
        "sources": [BARRON, BERANEK_2004, ISO_3382],
    },
    {
        "name": "chamber",
        "title": "Chamber music",
        "description": "Small ensembles in a smaller hall: intimate (short ITDG), loud, clear.",
        "t30_s": 1.6,
        "bass_ratio": 1.1,
        "treble_ratio": 0.9,
        "c80_db": 0.5,
        "g_db": 10.0,
        "j_lf": 0.2,
        "one_minus_iacc_e3": 0.62,
        "volume_m3": 5_000.0,
        "itdg_ms": 15.0,
        "sources": [BERANEK_2008, BERANEK_2004, BARRON, ISO_3382],
    },
    {
        "name": "sacred",
        "title": "Sacred music (church, organ and choir)",
        "description": "Organ and choral music of the romantic church: very long, bass-rich "
        "reverberation, low clarity.",
        "t30_s": 2.8,
        "bass_ratio": 1.2,
        "treble_ratio": 0.85,
        "c80_db": -3.0,
        "g_db": 4.0,
        "j_lf": 0.2,
        "one_minus_iacc_e3": 0.7,
        "volume_m3": 20_000.0,
        "itdg_ms": 25.0,
        "sources": [BARRON, ISO_3382],
    },
)

MODES: Mapping[str, Mode] = MappingProxyType({d["name"]: mode_from_dict(d) for d in BUILTIN})
"""The built-in modes by name."""


def modes_from_toml(text: str) -> dict[str, Mode]:
    """The built-in modes plus the ``[[modes]]`` tables of a TOML document (a venue's own
    modes). A custom mode may not reuse a built-in name, nor another custom mode's."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ModeError(f"modes: not valid TOML: {e}") from None
    unknown = sorted(k for k in doc if k != "modes")
    if unknown:
        raise ModeError(f"modes: unknown top-level key {', '.join(unknown)} (use [[modes]])")
    tables = doc.get("modes", [])
    if not isinstance(tables, list):
        raise ModeError("modes: 'modes' must be an array of tables ([[modes]])")
    out = dict(MODES)
    for i, table in enumerate(tables):
        mode = mode_from_dict(table)
        if mode.name in out:
            what = "a built-in mode" if mode.name in MODES else "an earlier mode"
            raise ModeError(f"modes[{i}]: the name {mode.name!r} is taken by {what}")
        out[mode.name] = mode
    return out


def get_mode(name: str) -> Mode:
    """A built-in mode by name (a clear error listing them for an unknown one)."""
    try:
        return MODES[name]
    except KeyError:
        raise ModeError(f"unknown mode {name!r} (modes: {', '.join(MODES)})") from None
