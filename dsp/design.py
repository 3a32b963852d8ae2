"""Design: from a mode's targets, the loudspeaker layout and the natural room to ``FieldParams``.

The natural room is what was measured without the enhancement: per band its T30 and C80 (and,
when known, EDT, D50, Ts, G and J_LF). It is taken as a plain mapping (see ``room_from``), so
this module does not depend on who measured it.

**The energy model.** Per octave band, the response at the listening reference point is a sum
of energy components on one time axis whose 0 is the arrival of the natural direct sound:

- the room alone: ``presets.Envelope.fit(T30, C80)``, an impulse at 0 plus an exponential tail
  (Barron's revised theory), of total energy ``10 ** (level_db / 10)``;
- the field (what the processor adds, arriving ``offset_s`` after the direct sound):
  the direct path, an impulse of energy ``sum(direct_gain ** 2)`` at ``direct_delay_s``; every
  early tap ``i``, an impulse of energy ``gains[i] ** 2 * 10 ** (early_db / 10)`` at
  ``delays_s[i]``; the late reverberator, an exponential tail from ``late.delay_s`` with the
  band's ``t60_s`` and total energy ``late_energy(t60_s, late_db)``.

Energies of different components add (loudspeakers at different distances and a decorrelated
reverberator), except that impulses closer together than a band resolves interfere: taps on
one output channel always, taps on different channels too in ``predict(..., coherent=True)``
(an offline render with its outputs summed), see ``band_autocorrelation``. The unit of energy
is what the listener receives when the
processor puts out a unit of energy, summed over its output channels, and ``level_db`` (per
band, default 0 dB) is the natural room's energy in that unit: the coupling a measurement of
the field through the room calibrates (adaptation's job). The late reverberator's energy
follows ``dsp/late.py``'s convention (Jot's tone correction): at ``late_db = 0`` its impulse
response, all outputs together, carries ``T60_b / LATE_REFERENCE_T60_S`` (1 s) of a unit
impulse's energy in band ``b``, so that a longer T60 lengthens the decay without raising its
start.

From the model every metric follows in closed form (C80, D50, Ts) or from the analytic Schroeder
curve sampled every ``GRID_S`` (T30 by a least-squares line from -5 to -35 dB, EDT from 0 to
-10 dB), as ISO 3382-1 defines them. ``predict`` returns the room's own measured values where
the enhancement adds nothing: it applies the model's change to the measured numbers.

**Design** (``design``): the early pattern comes from image sources of a virtual shoebox sized
from the mode's volume and initial time-delay gap, each image sent to the loudspeaker nearest
its direction, taps 5-80 ms after the direct sound, merged where they would fall within 1 ms on
one channel, normalised to unit energy. The late T60 per band, the early and the late level are
fitted together (scipy least squares, residuals in tolerances: T30, EDT, C80, D50, Ts and, if
the room's G is known, G), each T60 bounded to ``[T_room, cap * T_room]``: an active system
cannot shorten a room, and feedback-based enhancement is stable only up to about twice the
natural RT. Finally the taps are tilted towards the lateral loudspeakers (or away) until the
predicted J_LF meets the target. What the fit cannot reach is reported: ``Design.reachable``
and ``Design.notes``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import brentq, least_squares  # type: ignore[import-untyped]
from scipy.signal import butter, freqs  # type: ignore[import-untyped]

from dsp.field import BANDS_HZ, EarlyPattern, FieldParams, LateParams
from dsp.late import LATE_REFERENCE_T60_S
from dsp.layout import Layout, Speaker
from dsp.presets import DECAY_DB_PER_T, JND, Envelope, Mode

FloatArray = NDArray[np.float64]

SPEED_OF_SOUND = 343.0


def late_energy(t60_s: float, late_db: float) -> float:
    """The late reverberator's energy in a band with this T60 (all outputs, unit impulse in):
    ``10 ** (late_db / 10) * t60_s / LATE_REFERENCE_T60_S`` (``dsp/late.py``)."""
    return float(10.0 ** (late_db / 10.0) * t60_s / LATE_REFERENCE_T60_S)


GRID_S = 0.001
"""Time step of the sampled Schroeder curve the decay times are fitted to."""
EARLY_WINDOW_S = (0.005, 0.080)
"""Taps are placed in this window after the direct sound (ISO 3382-1's J_LF window)."""
MERGE_S = 0.001
MIN_TAPS, MAX_TAPS = 12, 40
JLF_BANDS = (125, 250, 500, 1000)

LEVEL_DB = (-60.0, 20.0)
"""Bounds of ``early_db`` and ``late_db`` in the design (relative to the room's level)."""
STARTS_DB = ((-10.0, -6.0), (5.0, 5.0), (-20.0, 10.0), (10.0, -20.0))

PREDICTED = ("t30_s", "edt_s", "c80_db", "d50", "ts_s", "g_db", "bass_ratio", "j_lf")


class DesignError(ValueError):
    """The room description or the design's inputs are invalid."""


# --- the natural room -------------------------------------------------------------------------


@dataclass(frozen=True)
class Room:
    """The natural room per band of ``BANDS_HZ`` (measured values; NaN where not measured)."""

    t30_s: FloatArray
    c80_db: FloatArray
    edt_s: FloatArray
    d50: FloatArray
    ts_s: FloatArray
    g_db: FloatArray
    level_db: FloatArray
    j_lf: float | None = None
    offset_s: float = 0.0

    def envelope(self, i: int) -> Envelope:
        return Envelope.fit(
            float(self.t30_s[i]), float(self.c80_db[i]), 10.0 ** (self.level_db[i] / 10.0)
        )


_ROOM_KEYS = ("t30_s", "c80_db", "edt_s", "d50", "ts_s", "g_db", "level_db")
_ROOM_LIMITS = {  # what a measured value may be (NaN: not measured)
    "t30_s": (0.01, 30.0),
    "c80_db": (-40.0, 40.0),
    "edt_s": (0.001, 30.0),
    "d50": (0.0, 1.0),
    "ts_s": (0.0, 5.0),
    "g_db": (-40.0, 60.0),
    "level_db": (-80.0, 80.0),
}


def room_from(room: Any) -> Room:
    """The natural room from any of:

    - a ``Room``;
    - a mapping of per-band values: ``{"t30_s": [6 values] or {band: value}, "c80_db": ...,
      "edt_s", "d50", "ts_s", "g_db", "level_db", "j_lf": number, "offset_s": number}``
      (T30 and C80 required);
    - a mapping ``{"bands": [{"band_hz": 125, "t30_s": ..., ...}, ...], ...}`` (the shape of
      a metrics result's ``to_dict()``), extra keys of the bands ignored;
    - an object with ``band(hz)`` returning an object with those attributes (``RoomMetrics``).
    """
    if isinstance(room, Room):
        return room
    top: Mapping[str, Any]
    per_band: dict[str, list[float]] = {k: [math.nan] * len(BANDS_HZ) for k in _ROOM_KEYS}
    if hasattr(room, "band") and callable(room.band):
        _octaves_only(getattr(b, "band_hz", 0.0) for b in getattr(room, "bands", ()))
        top = {}
        for i, b in enumerate(BANDS_HZ):
            try:
                r = room.band(b)
            except KeyError as e:
                raise DesignError(f"room: the metrics have no {b} Hz octave band ({e})") from None
            for k in _ROOM_KEYS:
                per_band[k][i] = _opt_float(getattr(r, k, None), f"room {k} at {b} Hz")
    elif isinstance(room, Mapping):
        top = room
        if "bands" in room:
            rows = room["bands"]
            if isinstance(rows, str | bytes) or not isinstance(rows, Sequence):
                raise DesignError("room: bands must be a list of {band_hz: ..., ...}")
            for row in rows:
                if not isinstance(row, Mapping) or "band_hz" not in row:
                    raise DesignError(f"room: each band needs a band_hz, got {row!r}")
            _octaves_only(row["band_hz"] for row in rows)
            for row in rows:
                band = _band_of(row["band_hz"])
                if band is None:
                    continue  # third-octave or other bands: not ours
                for k in _ROOM_KEYS:
                    per_band[k][BANDS_HZ.index(band)] = _opt_float(row.get(k), f"room {k}")
        for k in _ROOM_KEYS:
            if k in room:
                per_band[k] = _per_band(room[k], k)
    else:
        raise DesignError(f"room: need a mapping or metrics, got {type(room).__name__}")
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in per_band.items()}
    for k in ("t30_s", "c80_db"):
        bad = [b for b, v in zip(BANDS_HZ, arrays[k], strict=True) if not math.isfinite(v)]
        if bad:
            raise DesignError(f"room: {k} missing in band {', '.join(map(str, bad))} Hz")
    for k, (lo, hi) in _ROOM_LIMITS.items():
        v = arrays[k]
        if np.any(~np.isnan(v) & ~((v >= lo) & (v <= hi))):
            where = ", ".join(f"{b} Hz: {x}" for b, x in zip(BANDS_HZ, v, strict=True) if x == x)
            raise DesignError(f"room: {k} must lie in {lo:g} .. {hi:g} (got {where})")
    level = arrays["level_db"]
    arrays["level_db"] = np.where(np.isnan(level), 0.0, level)
    j_lf = top.get("j_lf")
    if j_lf is not None:
        j_lf = _opt_float(j_lf, "room j_lf")
        if not 0.0 <= j_lf <= 1.0:
            raise DesignError(f"room: j_lf must lie in 0..1, got {j_lf}")
    offset = _opt_float(top.get("offset_s", 0.0), "room offset_s")
    if not 0.0 <= offset <= 0.1:
        raise DesignError(f"room: offset_s must lie in 0 .. 0.1 s, got {offset}")
    return Room(**arrays, j_lf=j_lf, offset_s=offset)


def _octaves_only(bands: Any) -> None:
    """Refuse third-octave results: their 125 Hz .. 4 kHz bands are a third as wide."""
    for raw in bands:
        band = _band_of(raw)
        hz = float(raw) if isinstance(raw, int | float) else 0.0
        if band is None and 90.0 < hz < 5700.0:
            raise DesignError(
                f"room: a {hz:g} Hz band: these are third-octave metrics; design needs octave "
                "bands (analyze with bands='octave')"
            )


def _band_of(raw: Any) -> int | None:
    try:
        text = str(raw).strip().lower()
        hz = float(text[:-1]) * 1000.0 if text.endswith("k") else float(text)
    except (TypeError, ValueError):
        raise DesignError(f"room: band {raw!r} is not a frequency") from None
    for b in BANDS_HZ:
        if abs(hz - b) < 0.5:
            return b
    return None


def _opt_float(value: Any, what: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise DesignError(f"{what} must be a number, got {value!r}")
    return float(value)


def _per_band(value: Any, key: str) -> list[float]:
    if isinstance(value, Mapping):
        out = [math.nan] * len(BANDS_HZ)
        for raw, v in value.items():
            band = _band_of(raw)
            if band is None:
                raise DesignError(f"room: {key}: unknown band {raw!r}")
            out[BANDS_HZ.index(band)] = _opt_float(v, f"room {key} at {band} Hz")
        return out
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise DesignError(f"room: {key} must be a list of {len(BANDS_HZ)} values or a table")
    if len(value) != len(BANDS_HZ):
        raise DesignError(f"room: {key} needs {len(BANDS_HZ)} bands, got {len(value)}")
    return [_opt_float(v, f"room {key}") for v in value]


# --- the response model -----------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    """One band's energy response: impulses (times, energies) and exponential tails
    (onsets, T60s, total energies), time 0 = the natural direct sound."""

    imp_t: FloatArray
    imp_e: FloatArray
    tail_t0: FloatArray
    tail_t60: FloatArray
    tail_e: FloatArray

    def energy(self, a: float, b: float = math.inf) -> float:
        e = float(np.sum(self.imp_e[(self.imp_t >= a) & (self.imp_t < b)]))
        lo = np.maximum(a, self.tail_t0)
        hi = np.maximum(b, self.tail_t0)
        k = DECAY_DB_PER_T / self.tail_t60
        frac = np.exp(-k * (lo - self.tail_t0)) - (
            0.0 if math.isinf(b) else np.exp(-k * (hi - self.tail_t0))
        )
        return e + float(np.sum(self.tail_e * frac))

    @property
    def total(self) -> float:
        return float(np.sum(self.imp_e) + np.sum(self.tail_e))

    def c80_db(self) -> float:
        late = self.energy(0.08)
        return 10.0 * math.log10(self.energy(-1.0, 0.08) / late) if late > 0 else math.inf

    def d50(self) -> float:
        return self.energy(-1.0, 0.05) / self.total

    def ts_s(self) -> float:
        m = float(np.sum(self.imp_e * self.imp_t))
        m += float(np.sum(self.tail_e * (self.tail_t0 + self.tail_t60 / DECAY_DB_PER_T)))
        return m / self.total

    def schroeder_db(self, span: float = 1.0) -> tuple[FloatArray, FloatArray]:
        """The backward-integrated energy in dB (0 dB at t = 0) on a grid of ``GRID_S``, up to
        ``span`` times the longest tail's T60 after its onset."""
        end = float(np.max(self.tail_t0 + span * self.tail_t60, initial=0.0))
        end = max(end, float(np.max(self.imp_t, initial=0.0))) + 0.05
        t = np.arange(0.0, end, GRID_S)
        order = np.argsort(self.imp_t)
        ti, ei = self.imp_t[order], self.imp_e[order]
        after = np.concatenate([np.cumsum(ei[::-1])[::-1], [0.0]])  # energy of impulses >= ti
        edc = after[np.searchsorted(ti, t, side="left")]
        k = DECAY_DB_PER_T / self.tail_t60
        rel = np.maximum(t[:, None] - self.tail_t0[None, :], 0.0)
        edc = edc + np.sum(self.tail_e[None, :] * np.exp(-k[None, :] * rel), axis=1)
        with np.errstate(divide="ignore"):
            return t, 10.0 * np.log10(edc / edc[0])

    def decay_times(self) -> tuple[float, float]:
        """(T30, EDT) of the model's Schroeder curve."""
        t, db = self.schroeder_db()
        if not np.any(db <= -35.0):  # a weak slow tail: the curve needs longer to fall
            t, db = self.schroeder_db(4.0)
        return _fit_t(t, db, -5.0, -35.0), _fit_t(t, db, 0.0, -10.0)


def _fit_t(t: FloatArray, db: FloatArray, top: float, bottom: float) -> float:
    i = int(np.argmax(db <= top)) if top < 0 else 0
    below = db <= bottom
    if not below.any():
        return math.nan
    j = int(np.argmax(below))
    if j - i < 2:
        # a step (an impulse) spans the whole range: the decay is as quick as the grid shows
        return 60.0 * GRID_S * max(j - i, 1) / (top - bottom)
    x, y = t[i : j + 1], db[i : j + 1]
    xm, ym = x.mean(), y.mean()
    slope = float(np.sum((x - xm) * (y - ym)) / np.sum((x - xm) ** 2))
    return -60.0 / slope if slope < 0 else math.inf


@functools.lru_cache(maxsize=32)
def _autocorrelation_table(band_hz: float) -> tuple[float, FloatArray]:
    """(lag step, R at k * step) of one band (see below): 32 steps per period of the band's
    upper edge, out to 20 / bandwidth, where the envelope has long died away."""
    f1, f2 = band_hz / math.sqrt(2.0), band_hz * math.sqrt(2.0)
    b, a = butter(3, [2 * np.pi * f1, 2 * np.pi * f2], btype="bandpass", analog=True)
    f = np.linspace(0.0, 4.0 * f2, 3000)
    _, h = freqs(b, a, worN=2 * np.pi * f)
    power = np.abs(h) ** 4  # forward-backward filtering: |H|^2 twice
    step = 1.0 / (32.0 * f2)
    lags = np.arange(0.0, 20.0 / (f2 - f1), step)
    r = np.cos(2 * np.pi * np.outer(lags, f)) @ power
    return step, np.asarray(r / r[0], dtype=np.float64)


def band_autocorrelation(band_hz: float, lag_s: FloatArray) -> FloatArray:
    """Normalised autocorrelation of an octave band around ``band_hz`` at ``lag_s``: how much
    two unit impulses ``lag_s`` apart interfere once band-filtered (1 at lag 0). The band is a
    3rd-order Butterworth band-pass run forward and backward (zero phase), the filter ISO 3382
    analysis commonly uses (and the acoustic simulator's truth)."""
    step, table = _autocorrelation_table(float(band_hz))
    lag = np.abs(np.asarray(lag_s, dtype=np.float64)) / step
    return np.asarray(np.interp(lag, np.arange(table.size), table, right=0.0), dtype=np.float64)


def _field_impulses(
    params: FieldParams, band_hz: float, coherent: bool, room_direct: float = 0.0
) -> tuple[FloatArray, FloatArray]:
    """(times, energies) of the direct path and the taps in one band.

    Impulses closer than a band's resolution interfere: within one output channel always, and
    across channels too when ``coherent`` (the outputs summed into one signal, as an offline
    render can be; in a hall each loudspeaker's own path decorrelates them). The interference
    changes the impulses' total energy to ``a^T R a`` (``R`` the band's autocorrelation at the
    impulses' spacings); each impulse keeps its share of it. When ``coherent``, the room's
    direct sound (energy ``room_direct`` at time 0) interferes with them too, and the energy it
    gains or loses that way is spread over the field's impulses."""
    direct = np.asarray(params.direct_gain, dtype=np.float64)
    on = np.flatnonzero(direct != 0.0)
    g = 10.0 ** (params.early_db / 20.0)
    t = np.concatenate([np.full(on.size, params.direct_delay_s), params.early.delays_s])
    a = np.concatenate([direct[on], g * np.asarray(params.early.gains, dtype=np.float64)])
    ch = np.concatenate([on, np.asarray(params.early.channels)])
    e = a * a
    plain = float(np.sum(e))
    if plain <= 0.0:
        return t, e
    if coherent:
        ta, aa = np.concatenate([[0.0], t]), np.concatenate([[math.sqrt(room_direct)], a])
        r = band_autocorrelation(band_hz, ta[:, None] - ta[None, :])
        total = float(aa @ r @ aa) - room_direct
    else:
        r = band_autocorrelation(band_hz, t[:, None] - t[None, :]) * (ch[:, None] == ch[None, :])
        total = float(a @ r @ a)
    return t, e * max(total, 0.0) / plain


def _response(room: Room, i: int, params: FieldParams | None, coherent: bool = False) -> Response:
    env = room.envelope(i)
    imp_t, imp_e = [0.0], [env.direct]
    tail_t0, tail_t60, tail_e = [env.t0_s], [env.t60_s], [env.tail]
    if params is not None:
        off = room.offset_s
        t, e = _field_impulses(params, BANDS_HZ[i], coherent, env.direct)
        imp_t.extend((off + t).tolist())
        imp_e.extend(e.tolist())
        tail_t0.append(off + params.late.delay_s)
        tail_t60.append(float(params.late.t60_s[i]))
        tail_e.append(late_energy(float(params.late.t60_s[i]), params.late_db))
    return Response(
        np.asarray(imp_t), np.asarray(imp_e), np.asarray(tail_t0), np.asarray(tail_t60),
        np.asarray(tail_e),
    )  # fmt: skip


# --- prediction -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """Predicted metrics of room plus field, per band of ``BANDS_HZ`` (``g_db`` NaN where the
    room's G is unknown), and the single numbers."""

    t30_s: FloatArray
    edt_s: FloatArray
    c80_db: FloatArray
    d50: FloatArray
    ts_s: FloatArray
    g_db: FloatArray
    bass_ratio: float
    j_lf: float

    def band(self, metric: str, band_hz: int) -> float:
        return float(getattr(self, metric)[BANDS_HZ.index(band_hz)])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bands_hz": list(BANDS_HZ)}
        for k in ("t30_s", "edt_s", "c80_db", "d50", "ts_s", "g_db"):
            out[k] = [None if not math.isfinite(v) else float(v) for v in getattr(self, k)]
        out["bass_ratio"], out["j_lf"] = self.bass_ratio, self.j_lf
        return out


def _model_metrics(r: Response) -> tuple[float, float, float, float, float, float]:
    t30, edt = r.decay_times()
    return t30, edt, r.c80_db(), r.d50(), r.ts_s(), 10.0 * math.log10(r.total)


def predict(
    room: Any, params: FieldParams, layout: Layout | None = None, *, coherent: bool = False
) -> Prediction:
    """The metrics of the natural ``room`` plus the field ``params`` (see the module docstring).

    Each metric is the room's measured value plus the model's change (the model of the room
    alone against the model with the field); where the room did not measure a metric (EDT, D50,
    Ts) the model's own value stands. ``layout`` gives the taps' directions for J_LF (without
    it every tap counts as diffuse, lateral weight 1/3). ``coherent``: the field's outputs are
    heard summed into one signal (an offline render mixed down), so taps on different channels
    interfere too; by default only taps on one channel do.
    """
    rm = room_from(room)
    return _predict(rm, params, layout, _alone(rm), coherent=coherent)


def _alone(rm: Room) -> list[tuple[float, float, float, float, float, float]]:
    """The model's metrics of the room alone, per band."""
    return [_model_metrics(_response(rm, i, None)) for i in range(len(BANDS_HZ))]


def _predict(
    rm: Room,
    params: FieldParams,
    layout: Layout | None,
    alones: list[tuple[float, float, float, float, float, float]],
    with_jlf: bool = True,
    coherent: bool = False,
) -> Prediction:
    cols: list[list[float]] = [[] for _ in range(6)]
    measured = (rm.t30_s, rm.edt_s, rm.c80_db, rm.d50, rm.ts_s, rm.g_db)
    for i in range(len(BANDS_HZ)):
        alone = alones[i]
        both = _model_metrics(_response(rm, i, params, coherent))
        for k in range(6):
            m = float(measured[k][i])
            if k == 5:  # G: the room's measured G plus the energy gain
                cols[k].append(m + both[5] - alone[5] if math.isfinite(m) else math.nan)
            elif not math.isfinite(m):
                cols[k].append(both[k])
            elif k in (0, 1, 4):  # times: scale
                cols[k].append(m * both[k] / alone[k])
            else:
                cols[k].append(m + both[k] - alone[k])
    arr = [np.asarray(c) for c in cols]
    arr[3] = np.clip(arr[3], 0.0, 1.0)
    t = arr[0]
    br = float((t[0] + t[1]) / (t[2] + t[3]))
    j_lf = _j_lf(rm, params, layout) if with_jlf else math.nan
    return Prediction(
        t30_s=arr[0], edt_s=arr[1], c80_db=arr[2], d50=arr[3], ts_s=arr[4], g_db=arr[5],
        bass_ratio=br, j_lf=j_lf,
    )  # fmt: skip


def _lateral_weights(params: FieldParams, layout: Layout | None) -> FloatArray:
    """J_LF weight (cos^2 to the lateral axis) of each output channel."""
    w = np.full(params.n_out, 1.0 / 3.0)
    if layout is not None:
        for s in layout.speakers:
            if s.index < params.n_out:
                w[s.index] = s.lateral
    return w


def _j_lf(room: Room, params: FieldParams | None, layout: Layout | None) -> float:
    """J_LF (mean of 125 .. 1k Hz): lateral energy 5..80 ms over all energy 0..80 ms."""
    a, b = EARLY_WINDOW_S
    vals = []
    for band in JLF_BANDS:
        i = BANDS_HZ.index(band)
        env = room.envelope(i)
        room_all = env.energy(0.0, b)
        if room.j_lf is not None:
            lateral = room.j_lf * room_all
        else:  # the room's reflections arrive diffusely: a figure-of-eight takes a third
            lateral = (env.energy(a, b) - (env.direct if a <= 0 else 0.0)) / 3.0
        total = room_all
        if params is not None:
            w = _lateral_weights(params, layout)
            off = room.offset_s
            g = 10.0 ** (params.early_db / 10.0)
            t = off + np.asarray(params.early.delays_s)
            e = g * np.asarray(params.early.gains) ** 2
            ch = np.asarray(params.early.channels)
            inside = (t >= 0) & (t < b)
            total += float(np.sum(e[inside]))
            lateral += float(np.sum((e * w[ch])[inside & (t >= a)]))
            d = np.asarray(params.direct_gain) ** 2
            td = off + params.direct_delay_s
            if td < b:
                total += float(np.sum(d))
                if td >= a:
                    lateral += float(np.sum(d * w))
            late = Envelope(0.0, late_energy(float(params.late.t60_s[i]), params.late_db),
                            float(params.late.t60_s[i]), off + params.late.delay_s)  # fmt: skip
            total += late.energy(0.0, b)
            fw = [s.index for s in layout.field_speakers] if layout else list(range(params.n_out))
            lateral += late.energy(a, b) * float(np.mean(w[fw]))
        vals.append(lateral / total if total > 0 else 0.0)
    return float(np.mean(vals))


def c80_after_early_gain_change(
    early_energy: float | FloatArray,
    late_energy: float | FloatArray,
    taps_early_energy: float | FloatArray,
    delta_db: float,
    taps_late_energy: float | FloatArray = 0.0,
) -> float | FloatArray:
    """C80 (dB) after the early taps' level changes by ``delta_db``.

    ``early_energy`` / ``late_energy``: the whole response's energy before / after 80 ms (from
    its onset), before the change; ``taps_early_energy`` / ``taps_late_energy``: the part of
    each that the early taps contribute. Energies add (the taps are sparse and arrive apart
    from the rest), so the new C80 is
    ``10 log10((E_e + (a - 1) Et_e) / (E_l + (a - 1) Et_l))`` with ``a = 10 ** (delta_db / 10)``.
    Scalars or per-band arrays.
    """
    a = 10.0 ** (delta_db / 10.0) - 1.0
    ee = np.asarray(early_energy, dtype=np.float64) + a * np.asarray(taps_early_energy)
    el = np.asarray(late_energy, dtype=np.float64) + a * np.asarray(taps_late_energy)
    if np.any(ee <= 0) or np.any(el <= 0):
        raise ValueError("energies must stay positive (a tap energy larger than the total?)")
    out = 10.0 * np.log10(ee / el)
    return float(out) if out.ndim == 0 else out


def c80_change_from_share(c80_db: float, taps_share: float, delta_db: float) -> float:
    """C80 after an early-level change of ``delta_db``, from the C80 before and the share of
    the early (0..80 ms) energy that the taps carry (all taps inside 80 ms)."""
    if not 0.0 <= taps_share <= 1.0:
        raise ValueError(f"taps_share must lie in 0..1, got {taps_share}")
    return c80_db + 10.0 * math.log10(1.0 + taps_share * (10.0 ** (delta_db / 10.0) - 1.0))


# --- the early pattern ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Image:
    delay_s: float
    energy: float
    direction: tuple[float, float, float]  # listener frame: ahead, left, up


def virtual_room(
    mode: Mode,
) -> tuple[tuple[float, float, float], tuple[float, ...], tuple[float, ...]]:
    """(dimensions L, W, H; source; listener) of the shoebox the mode's reflections come from.

    The listener sits ``d = 0.8 V^(1/3)`` from the source; the width makes the first side-wall
    reflection arrive ``itdg`` after the direct sound; length and height fill the volume."""
    v = mode.volume_m3
    d = 0.8 * v ** (1.0 / 3.0)
    extra = SPEED_OF_SOUND * mode.itdg_s
    w = math.sqrt((d + extra) ** 2 - d * d)
    h = max(4.0, min(0.6 * w, v / (w * 1.4 * d)))
    length = max(v / (w * h), 1.4 * d)
    h = max(4.0, v / (length * w))
    src = (0.12 * length, 0.5 * w, 1.5)
    lis = (src[0] + d, 0.58 * w, 1.2)  # off the axis: the two side walls give distinct taps
    return (length, w, h), src, lis


def _images(mode: Mode, max_order: int) -> list[_Image]:
    (lx, ly, lz), src, lis = virtual_room(mode)
    dims = (lx, ly, lz)
    # energy reflection factors: walls and ceiling fairly hard, the floor under the audience soft
    refl = ((0.8, 0.8), (0.8, 0.8), (0.25, 0.8))  # per axis: (low wall, high wall)
    d0 = math.dist(src, lis)
    out: list[_Image] = []
    rng = range(-max_order, max_order + 1)
    for nx in rng:
        for ny in rng:
            for nz in rng:
                if abs(nx) + abs(ny) + abs(nz) > max_order or (nx, ny, nz) == (0, 0, 0):
                    continue
                pos, energy = [], 1.0
                for axis, n in enumerate((nx, ny, nz)):
                    size, s = dims[axis], src[axis]
                    pos.append(n * size + (s if n % 2 == 0 else size - s))
                    lo_hits, hi_hits = _wall_hits(n)
                    energy *= refl[axis][0] ** lo_hits * refl[axis][1] ** hi_hits
                r = math.dist(pos, lis)
                delay = (r - d0) / SPEED_OF_SOUND
                if not EARLY_WINDOW_S[0] <= delay < EARLY_WINDOW_S[1]:
                    continue
                dx, dy, dz = (pos[k] - lis[k] for k in range(3))
                # the listener faces the source (-x): ahead = -dx, left = -dy, up = dz
                out.append(_Image(delay, energy * (d0 / r) ** 2, (-dx, -dy, dz)))
    return out


def _wall_hits(n: int) -> tuple[int, int]:
    """Reflections off the low (0) and high (L) wall of an image with index ``n``."""
    k = abs(n)
    if n > 0:
        return k // 2, (k + 1) // 2
    return (k + 1) // 2, k // 2


def early_pattern(mode: Mode, layout: Layout, tilt: float = 0.0) -> tuple[EarlyPattern, FloatArray]:
    """The mode's taps on the layout's loudspeakers (unit total energy), and each tap's lateral
    weight. ``tilt`` > 0 moves energy towards lateral loudspeakers (gain^2 * exp(tilt * w))."""
    order = 2
    while True:
        merged: list[tuple[float, float, Speaker]] = []
        for im in sorted(_images(mode, order), key=lambda m: (m.delay_s, -m.energy)):
            spk = layout.nearest(im.direction)
            for k, (t, e, s) in enumerate(merged):
                if s.channel == spk.channel and abs(t - im.delay_s) < MERGE_S:
                    merged[k] = (t, e + im.energy, s)
                    break
            else:
                merged.append((im.delay_s, im.energy, spk))
        if len(merged) >= MIN_TAPS or order >= 6:
            break
        order += 1
    merged.sort(key=lambda x: -x[1])
    merged = sorted(merged[:MAX_TAPS], key=lambda x: (x[0], x[2].channel))
    delays = np.array([m[0] for m in merged])
    lateral = np.array([m[2].lateral for m in merged])
    energy = np.array([m[1] for m in merged]) * np.exp(tilt * lateral)
    energy /= float(np.sum(energy)) if energy.size else 1.0
    channels = np.array([m[2].index for m in merged], dtype=np.int64)
    return EarlyPattern(delays, np.sqrt(energy), channels), lateral


# --- design -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Design:
    """What ``design`` made: the parameters, what they are predicted to reach, and why not."""

    params: FieldParams
    prediction: Prediction
    reachable: dict[str, dict[int, bool]]  # metric -> band (0 for a single number) -> met
    notes: list[str] = field(default_factory=list)

    @property
    def all_reachable(self) -> bool:
        return all(all(v.values()) for v in self.reachable.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, for the console and reports: the parameters, the prediction, what
        is reachable (band keys as strings) and the notes."""
        p = self.params
        return {
            "mode": p.meta.get("mode"),
            "params": params_record(p),
            "prediction": self.prediction.to_dict(),
            "reachable": {
                k: {str(b): ok for b, ok in v.items()} for k, v in self.reachable.items()
            },
            "notes": list(self.notes),
        }


def design(
    mode: Mode,
    layout: Layout,
    room: Any,
    *,
    cap: float = 2.0,
    late_onset_s: float = 0.08,
) -> Design:
    """Design the field that brings ``room`` plus enhancement to ``mode``'s targets.

    ``cap``: the late T60 of a band is at most ``cap`` times the room's T30 there (default 2,
    the enhancement limit of feedback-based systems). ``late_onset_s``: when the late
    reverberator starts after the direct sound (80 ms keeps the late control out of C80's
    early window, so early and late levels act independently). Deterministic.
    """
    rm = room_from(room)
    if not (math.isfinite(cap) and 1.0 <= cap <= 10.0):
        raise DesignError(f"cap must lie in 1 .. 10 (times the natural RT), got {cap}")
    if not 0.0 <= late_onset_s <= 0.2:
        raise DesignError(f"late_onset_s must lie in 0 .. 0.2 s, got {late_onset_s}")
    n = len(BANDS_HZ)
    t_room = rm.t30_s
    t_target = np.asarray(mode.t30_s)
    t_lo, t_hi = t_room.copy(), cap * t_room
    pattern, _ = early_pattern(mode, layout, 0.0)

    direct = np.zeros(layout.n_out)
    notes: list[str] = []
    if mode.direct_db is not None:
        front = layout.front()
        if front:
            chosen = [s for s in front if s.pa] or list(front)
            direct[[s.index for s in chosen]] = math.sqrt(
                10.0 ** (mode.direct_db / 10.0) / len(chosen)
            )
        else:
            notes.append("no loudspeaker within 45 deg of ahead: the direct path stays off")

    def params_of(x: FloatArray, early: EarlyPattern = pattern) -> FieldParams:
        return FieldParams(
            n_out=layout.n_out,
            direct_gain=direct,
            early=early,
            late=LateParams(np.asarray(x[2:], dtype=np.float64), delay_s=late_onset_s),
            early_db=float(x[0]),
            late_db=float(x[1]),
            meta={"mode": mode.name},
        )

    # aim at the nearest reachable decay: a T below the room's or above the cap is reported,
    # not chased (chasing it would trade every other metric for a fraction of a JND)
    t_aim = np.clip(t_target, t_lo, t_hi)
    edt_aim = np.asarray(mode.edt_s) * t_aim / t_target
    targets = {
        "t30_s": (t_aim, _tol(mode, "t30_s") * t_aim),
        "edt_s": (edt_aim, _tol(mode, "edt_s") * edt_aim),
        "c80_db": (np.asarray(mode.c80_db), np.full(n, _tol(mode, "c80_db"))),
        "d50": (np.asarray(mode.d50), np.full(n, _tol(mode, "d50"))),
        "ts_s": (np.asarray(mode.ts_s), np.full(n, _tol(mode, "ts_s"))),
    }
    if mode.g_db is not None and np.all(np.isfinite(rm.g_db)):
        targets["g_db"] = (np.asarray(mode.g_db), np.full(n, _tol(mode, "g_db")))
    elif mode.g_db is not None:
        notes.append("the room's G is not known: G is not designed for (measure it with a "
                     "reference to include it)")  # fmt: skip
    weights = {"t30_s": 2.0, "c80_db": 1.5}

    alones = _alone(rm)

    def residuals(x: FloatArray) -> FloatArray:
        p = _predict(rm, params_of(x), None, alones, with_jlf=False)
        res = []
        for k, (target, tol) in targets.items():
            res.append(weights.get(k, 1.0) * (getattr(p, k) - target) / tol)
        out = np.nan_to_num(np.concatenate(res), nan=1e3, posinf=1e3, neginf=-1e3)
        return np.asarray(out, dtype=np.float64)

    # the levels act on every band, each band's T60 on its own band only: telling the solver
    # so lets it estimate the Jacobian with 3 evaluations instead of 8
    sparsity = np.ones((len(targets) * n, 2 + n), dtype=np.int8)
    for r in range(len(targets) * n):
        sparsity[r, 2:] = 0
        sparsity[r, 2 + r % n] = 1
    lo = np.concatenate([[LEVEL_DB[0]] * 2, t_lo])
    hi = np.concatenate([[LEVEL_DB[1]] * 2, np.maximum(t_hi, t_lo * (1 + 1e-9))])
    best: Any = None
    # the cost has several minima (early and late energy trade against each other): start
    # from a few level pairs and keep the best, in a fixed order (deterministic)
    for start in STARTS_DB:
        x0 = np.concatenate([start, t_aim])
        fit = least_squares(
            residuals, x0, bounds=(lo, hi), jac_sparsity=sparsity,
            x_scale=np.concatenate([[3.0, 3.0], t_aim * 0.1]),
            # residuals are in tolerances: a hundredth of one is precise enough
            ftol=1e-4, xtol=1e-4, gtol=1e-4, max_nfev=60,
        )  # fmt: skip
        if best is None or fit.cost < best.cost - 1e-9:
            best = fit
    x = np.asarray(best.x, dtype=np.float64)

    # J_LF: tilt the taps towards (or away from) the lateral loudspeakers
    params = params_of(x)
    if mode.j_lf is not None:

        def jlf_error(tilt: float) -> float:
            early, _ = early_pattern(mode, layout, tilt)
            return _j_lf(rm, params_of(x, early), layout) - float(mode.j_lf or 0.0)

        e_lo, e_hi = jlf_error(-12.0), jlf_error(12.0)
        if e_lo >= 0:
            tilt = -12.0
        elif e_hi <= 0:
            tilt = 12.0
        else:
            tilt = float(brentq(jlf_error, -12.0, 12.0, xtol=1e-4))
        params = params_of(x, early_pattern(mode, layout, tilt)[0])
    pred = predict(rm, params, layout)
    reach = _reachable(mode, pred, {**targets, **_t_targets(mode)})
    notes += _explain(mode, rm, pred, reach, x[2:], t_lo, t_hi, cap)
    notes.append("1 - IACC_E3 is not predicted by the energy model: measure it binaurally")
    meta = dict(params.meta)
    meta.update({"cap": cap, "notes": list(notes)})
    params = replace(params, meta=meta)
    return Design(params=params, prediction=pred, reachable=reach, notes=notes)


def _tol(mode: Mode, metric: str) -> float:
    return mode.tolerances.get(metric, JND[metric])


def _t_targets(mode: Mode) -> dict[str, tuple[FloatArray, FloatArray]]:
    t, edt = np.asarray(mode.t30_s), np.asarray(mode.edt_s)
    return {
        "t30_s": (t, _tol(mode, "t30_s") * t),
        "edt_s": (edt, _tol(mode, "edt_s") * edt),
    }


def _reachable(
    mode: Mode, pred: Prediction, targets: Mapping[str, tuple[FloatArray, FloatArray]]
) -> dict[str, dict[int, bool]]:
    out: dict[str, dict[int, bool]] = {}
    for k, (target, tol) in targets.items():
        got = getattr(pred, k)
        out[k] = {
            b: bool(math.isfinite(got[i]) and abs(got[i] - target[i]) <= tol[i] * (1 + 1e-6))
            for i, b in enumerate(BANDS_HZ)
        }
    out["bass_ratio"] = {0: abs(pred.bass_ratio - mode.bass_ratio) <= _tol(mode, "bass_ratio")}
    if mode.j_lf is not None:
        out["j_lf"] = {0: abs(pred.j_lf - mode.j_lf) <= _tol(mode, "j_lf") * (1 + 1e-6)}
    return out


def _explain(
    mode: Mode,
    room: Room,
    pred: Prediction,
    reach: Mapping[str, Mapping[int, bool]],
    t60: FloatArray,
    t_lo: FloatArray,
    t_hi: FloatArray,
    cap: float,
) -> list[str]:
    notes = []
    for i, b in enumerate(BANDS_HZ):
        target = mode.t30_s[i]
        if target < room.t30_s[i] * (1 - _tol(mode, "t30_s")):
            notes.append(
                f"T30 at {b} Hz not reachable: the target {target:.2f} s is below the room's "
                f"natural {room.t30_s[i]:.2f} s (an active system cannot shorten a room: add "
                "absorption)"
            )
        elif target > t_hi[i] * (1 + _tol(mode, "t30_s")):
            notes.append(
                f"T30 at {b} Hz not reachable: the target {target:.2f} s is above the "
                f"enhancement cap {t_hi[i]:.2f} s ({cap:g} x the room's {room.t30_s[i]:.2f} s)"
            )
        elif not reach["t30_s"][b]:
            notes.append(
                f"T30 at {b} Hz: predicted {pred.t30_s[i]:.2f} s against {target:.2f} s (late "
                f"T60 {t60[i]:.2f} s within {t_lo[i]:.2f} .. {t_hi[i]:.2f} s)"
            )
    for k, label, unit, scale in (
        ("c80_db", "C80", "dB", 1.0),
        ("edt_s", "EDT", "s", 1.0),
        ("d50", "D50", "", 1.0),
        ("ts_s", "Ts", "ms", 1000.0),
        ("g_db", "G", "dB", 1.0),
    ):
        if k not in reach:
            continue
        missed = [b for b, ok in reach[k].items() if not ok]
        if missed:
            got = ", ".join(
                f"{b} Hz {scale * pred.band(k, b):.2f}/{scale * mode.band(k, b).value:.2f}"
                for b in missed
            )
            notes.append(f"{label} not reached (predicted/target {unit}): {got}")
    if "j_lf" in reach and not reach["j_lf"][0]:
        notes.append(
            f"J_LF not reached: predicted {pred.j_lf:.2f} against {mode.j_lf:.2f} (the layout "
            "lacks loudspeakers at the sides, or the room's own early energy dominates)"
        )
    if not reach["bass_ratio"][0]:
        notes.append(f"bass ratio predicted {pred.bass_ratio:.2f} against {mode.bass_ratio:.2f}")
    return notes


def params_record(p: FieldParams) -> dict[str, Any]:
    """Every value of ``p`` the engine renders (``edge.acoustics.params_from_record``
    reads it back)."""
    return {
        "n_out": p.n_out,
        "direct_gain": p.direct_gain.tolist(),
        "direct_delay_s": p.direct_delay_s,
        "early": {
            "delays_s": p.early.delays_s.tolist(),
            "gains": p.early.gains.tolist(),
            "channels": p.early.channels.tolist(),
        },
        "late": {"t60_s": p.late.t60_s.tolist(), "delay_s": p.late.delay_s},
        "early_db": p.early_db,
        "late_db": p.late_db,
    }
