"""The sound field in the service (docs/acoustics.md, "In the service").

A venue's ``[acoustics]`` names the audio device whose stream runs the sound-field engine
(``dsp.engine``) under the file player, and its zones: which device inputs (microphones) feed a
zone, which outputs (loudspeakers) it plays on, the loudspeaker layout, and the natural room the
design starts from. ``SoundFieldControl`` is the service's side of it:

- ``factory()``: the stream's picklable processor factory under the device's file player (the
  player mixes sounds over it): the sweep measurement (``dsp.measure``) wrapping the engine;
- ``recall(mode, fade_s, origin)``: the cue engine's ``audio.soundfield`` (``edge.audio``'s
  ``SoundField``) and the API's: designs the mode for every zone (``dsp.design``, in a process
  of its own: a design is about a second of Python, which must not hold this event loop's
  GIL while the axis cycles and the lighting run on it), sends each zone's ``SetField`` through
  the stream's control channel, and returns when the engine has built every new parameter set
  and started the crossfade (``FieldReady``); ``FadeDone`` marks the end of the crossfade.
  Designs are cached per zone, mode and room, so a recall of a mode used before is immediate;
- ``measure(...)``: a sweep measurement through the same stream (``StartMeasurement`` on the
  control channel; the engine muted or not), analysed in the worker process
  (``analyse_measurement``: IRs, ISO 3382 metrics, decay curves), stored under the venue's
  ``var/acoustics/<id>/`` (IR WAVs, ``summary.json``), journalled at its end, and optionally
  made a zone's room (``room_source`` "measured <time>"); ``measurement`` is its live state;
- ``adapt(zone, mode, origin, iterations)``: closed-loop adaptation (``dsp.adapt``): the
  zone's paths measured with the field muted (``measure``'s own run: the stage loudspeaker and
  the zone's loudspeakers into its pickup and listener microphones), then ``adapt`` in a
  worker process of its own whose every iteration asks this loop, over a pipe, to play the
  candidate and measure the source into the listener through the running field; the result
  stored (``adaptation.json``, ``adaptation.png``), the paths and calibrated room kept for the
  zone, and the adapted field recalled (journalled as a recall). ``adaptation`` is its state;
- the **loop-gain guard** of every recall: a zone with measured paths has each new field's
  loop gain (``dsp.adapt.loop_gain_db``) checked in the design process before it is sent;
  above the stability margin the whole field is lowered to it (``scaled``), or the recall
  refused when that would take more than ``MAX_CUT_DB``; the zone's ``loop`` says which, and
  without paths that the gain is unchecked;
- ``restore()``: at start (``run()`` calls it before its first recall), each zone's newest
  usable measured room, loop paths and adapted parameters read back from ``var/acoustics``
  (``restore_results``, in a thread), only where they fit the zone as configured now;
  journalled as ``acoustics.restored`` (docs/acoustics.md, "After a restart");
- ``snapshot()``: modes and their targets, the measurement's and adaptation's state, zones
  with their mode, state and latencies, the room each design assumed, each zone's design
  (predicted values, what is not reachable and why), its loop check and its adaptation, for
  the API and the console.

Without a configured or measured room a zone's design assumes ``DEFAULT_ROOM`` (a dry
multi-purpose room) and says so in its notes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller.journal import JournalEvent, JournalSink, Origin, Result, SourceKind, journalled
from controller.playback.ports import PlaybackError, Unavailable
from drivers.model import Quality, Reading
from dsp.adapt import LOOP_MARGIN_DB, AdaptError, MeasuredPaths, adapt, loop_gain_db, scaled
from dsp.design import Design, DesignError, Room, design, params_record, room_from
from dsp.engine import FadeDone, FieldReady, SetField, SoundFieldFactory, build_set
from dsp.field import BANDS_HZ, EarlyPattern, FieldParams, LateParams
from dsp.layout import Layout
from dsp.measure import (
    AbortMeasurement,
    MeasurementDone,
    MeasurementError,
    MeasurementFactory,
    MeasurementFailed,
    MeasurementPlan,
    MeasurementProgress,
    MeasurementStarted,
    Recording,
    StartMeasurement,
    analyze_recording,
    load_recording,
    plan_measurement,
)
from dsp.metrics import IRError, analyze, decay_curve
from dsp.occupancy import OccupancyError, occupied_room, t30_drift
from dsp.presets import Mode, ModeError
from edge.acoustics_config import AcousticsConfig, ZoneSettings

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 15.0  # a SetField is built (and its crossfade started) within this
DESIGN_TIMEOUT_S = 120.0  # the first design also starts the design process
MAX_DESIGNS = 256  # designs kept (per zone, mode and room)
DEFAULT_ROOM: Mapping[str, Any] = {
    # A dry multi-purpose room (mid T ~1 s, C80 ~ +3 dB), assumed until one is configured or
    # measured; the design's notes say so.
    "t30_s": [1.2, 1.1, 1.0, 1.0, 0.95, 0.85],
    "c80_db": [1.5, 2.0, 3.0, 3.0, 3.5, 4.0],
}


def _design(mode: Mode, layout: Layout, room: Room, cap: float) -> Design:
    """Run in the design process (module level: pickled by name)."""
    return design(mode, layout, room, cap=cap)


MAX_CUT_DB = 40.0  # a guard that would lower the field by more refuses it: it would be inaudible


def _loop_guard(
    params: FieldParams, paths: MeasuredPaths, margin_db: float
) -> tuple[FieldParams, float, float, float]:
    """In the design process: ``params`` lowered until the loop's peak gain is ``margin_db``
    below 0 dB. Returns the parameters, the gain before and after, and the cut (dB)."""
    before = gain = loop_gain_db(paths, params)
    cut = 0.0
    for _ in range(4):  # the engine is linear: one step suffices, the rest is rounding
        excess = gain + margin_db
        if not math.isfinite(excess) or excess <= 1e-3 or cut > MAX_CUT_DB:
            break
        cut += excess
        params = scaled(params, -excess)
        gain = loop_gain_db(paths, params)
    return params, before, gain, cut


def loop_paths(samplerate: int, speaker_pickup: Any) -> MeasuredPaths:
    """Paths for the loop-gain guard from a measurement that covered only the zone's outputs
    into its pickup: ``loop_gain_db`` uses nothing else (the source and listener paths are
    placeholders, never used to model the listener)."""
    sp = np.asarray(speaker_pickup, dtype=np.float64)
    return MeasuredPaths(int(samplerate), sp[0], sp[0], sp, sp)


def _loop_brief(loop: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("checked", "gain_db", "cut_db", "note")
    return {k: loop[k] for k in keep if k in loop}


# --- measurement: the analysis shared by the service and the CLI ------------------------------

CURVE_POINTS = 600  # points per decay curve served as JSON (the plot needs no more)
PIPE_BYTES = 4 * 2**20  # a recording larger than this comes back as a file, not over the pipe
ROOM_METRICS = ("t30_s", "c80_db", "edt_s", "d50", "ts_s")


def _num(v: Any) -> float | None:
    return round(float(v), 6) if v is not None and math.isfinite(float(v)) else None


def ir_report(
    ir: Any, fs: int, bands: str = "octave", points: int = CURVE_POINTS
) -> dict[str, Any]:
    """ISO 3382 metrics of one IR with its energy-decay curves (fit ranges included), as JSON
    for the console and for ``edge.acoustics_plots``. ``IRError`` when it cannot be analysed."""
    metrics = analyze(ir, fs, bands=bands)  # type: ignore[arg-type]
    curves = []
    for b in metrics.bands:
        try:
            curve = decay_curve(ir, fs, b.band_hz, bands=bands)  # type: ignore[arg-type]
        except IRError as exc:
            curves.append({"band_hz": b.band_hz, "error": str(exc)})
            continue
        d = curve.to_dict()
        step = max(1, math.ceil(len(d["time_s"]) / points))
        d["time_s"] = [round(t, 5) for t in d["time_s"][::step]]
        d["level_db"] = [None if v is None else round(v, 3) for v in d["level_db"][::step]]
        curves.append(d)
    return {**metrics.to_dict(), "band_kind": bands, "curves": curves}


def room_of(reports: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    """The room the measured pairs agree on: per octave band, the median over the pairs of each
    of ``ROOM_METRICS`` (``None`` where no pair has it)."""
    out: dict[str, list[float | None]] = {}
    for key in ROOM_METRICS:
        values: list[float | None] = []
        for hz in BANDS_HZ:
            got = [
                b[key]
                for r in reports
                for b in r["bands"]
                if abs(b["band_hz"] - hz) < 0.5 and b.get(key) is not None
            ]
            values.append(_num(float(np.median(got))) if got else None)
        out[key] = values
    return out


def write_ir(path: Path, ir: Any, fs: int) -> None:
    """An IR as a mono 32-bit float WAV."""
    from scipy.io import wavfile  # type: ignore[import-untyped]

    wavfile.write(path, fs, np.asarray(ir, dtype=np.float32))


def read_ir(path: Path) -> tuple[int, np.ndarray[Any, np.dtype[np.float64]]]:
    """An IR written by ``write_ir``: its sample rate and samples."""
    from scipy.io import wavfile

    fs, data = wavfile.read(path)
    a = np.asarray(data, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{path.name}: not a mono IR")
    return int(fs), a


def _stack(irs: list[Any]) -> np.ndarray[Any, np.dtype[np.float64]]:
    """IRs as rows of one array, the shorter ones zero-padded."""
    n = max(len(x) for x in irs)
    out = np.zeros((len(irs), n))
    for k, x in enumerate(irs):
        out[k, : len(x)] = x
    return out


# --- adaptation: the worker process ------------------------------------------------------------

MAX_ADAPT_ITERATIONS = 5  # measured iterations an adaptation may take (the API's limit)
ADAPT_TIMEOUT_S = 900.0  # an adaptation that has not ended by then fails
LOOP_FADE_S = 0.5  # the crossfade to each candidate of the closed loop


@dataclass(frozen=True)
class AdaptJob:
    """What the adaptation worker needs: the mode, the zone's layout, the folder holding the
    muted measurement's IRs, and the 1-based device channels of each path."""

    mode: Mode
    layout: Layout
    folder: str
    source: int
    outputs: tuple[int, ...]
    pickup: int
    listener: int
    latency_s: float
    iterations: int
    cap: float


def adapt_worker(job: AdaptJob, conn: Any) -> None:
    """The adaptation's process (module level: spawned by name). Builds ``MeasuredPaths`` from
    the stored IRs and runs ``dsp.adapt.adapt`` with ``measure`` the closed loop: each call
    asks the service over ``conn`` to play the parameters and record a sweep, and deconvolves
    the recording here. Sends ``("iteration", (index, worst_jnd))`` as it goes, and
    ``("result", {...})`` or ``("error", text)`` at the end."""
    try:
        conn.send(("result", _adapt_job(job, conn)))
    except (AdaptError, MeasurementError, IRError, DesignError, OSError, ValueError) as exc:
        with contextlib.suppress(OSError):  # else the service has gone
            conn.send(("error", str(exc) or type(exc).__name__))
    except EOFError:
        pass  # the service has gone
    finally:
        conn.close()


def _adapt_job(job: AdaptJob, conn: Any) -> dict[str, Any]:
    folder = Path(job.folder)
    rates: set[int] = set()

    def ir(output: int, input_: int) -> Any:
        fs, data = read_ir(folder / f"ir-out{output}-in{input_}.wav")
        rates.add(fs)
        return data

    sl, sp = ir(job.source, job.listener), ir(job.source, job.pickup)
    hl = _stack([ir(o, job.listener) for o in job.outputs])
    hp = _stack([ir(o, job.pickup) for o in job.outputs])
    if len(rates) != 1:
        raise AdaptError(f"the measured IRs have different sample rates {sorted(rates)}")
    paths = MeasuredPaths(rates.pop(), sl, sp, hl, hp, job.latency_s)

    def measure(params: FieldParams) -> Any:
        conn.send(("measure", params))
        kind, payload = conn.recv()
        if kind != "measured":
            raise AdaptError(f"the closed-loop measurement failed: {payload}")
        plan, recording, path = payload
        rec = recording if recording is not None else load_recording(str(path))
        if path is not None:
            os.unlink(path)
        return analyze_recording(plan, rec).ir(job.source, job.listener)

    def progress(it: Any, worst: float) -> None:
        conn.send(("iteration", (it.index, worst)))

    a = adapt(
        job.mode, job.layout, paths, iterations=job.iterations, measure=measure, cap=job.cap,
        progress=progress,
    )  # fmt: skip
    return {
        "adaptation": a.to_dict(),
        "params": a.params,
        "room": a.room,
        "paths": paths,
        "worst_jnd": a.best.worst_jnd(a.held),
    }


def _plot_adaptation(summary: dict[str, Any], path: str, mode: Mode) -> str:
    """In the design process: the before/after plot of an adaptation."""
    from edge.acoustics_plots import plot_adaptation

    return str(plot_adaptation(summary, path, mode))


def adaptation_record(
    state: dict[str, Any],
    summary: dict[str, Any],
    settings: ZoneSettings,
    params: FieldParams,
    paths: MeasuredPaths,
    room: Room,
    final: dict[str, Any],
) -> dict[str, Any]:
    """What ``adaptation.json`` holds: the run's state, ``Adaptation.to_dict()`` and, under
    ``restore``, what a restart needs to take the result up again (``restore_results``): the
    zone's channels and layout, the sample rate, every parameter played, the calibrated room
    and the result. The paths are the IRs of the folder's own measurement."""
    record = {**{k: v for k, v in state.items() if k not in ("state", "phase")}, **summary}
    record["notes"] = summary.get("notes", [])
    record["restore"] = {
        "version": RESTORE_VERSION,
        "fs": paths.samplerate,
        "zone_config": zone_record(settings),
        "params": params_record(params),
        "room": room_record(room),
        "final": dict(final),
    }
    return record


def write_adaptation(folder: Path, record: dict[str, Any]) -> None:
    """``record`` as ``folder/adaptation.json`` (blocking)."""
    (folder / "adaptation.json").write_text(json.dumps(record, indent=1, allow_nan=False))


def analyse_measurement(
    plan: MeasurementPlan,
    recording: Recording | None,
    path: str | None,
    folder: str,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The slow part of a measurement, in a worker process (module level: pickled by name):
    the recording to IRs (``analyze_recording``), each IR to metrics and decay curves, the IRs
    as WAV files and everything as ``summary.json`` in ``folder``. Returns the summary."""
    rec = recording if recording is not None else load_recording(str(path))
    measured = analyze_recording(plan, rec)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    reports = []
    for p in measured.pairs:
        name = f"ir-out{p.output}-in{p.input}.wav"
        write_ir(out / name, p.ir, plan.fs)
        entry: dict[str, Any] = {
            "output": p.output, "input": p.input, "file": name, "samples": len(p.ir),
        }  # fmt: skip
        try:
            report = ir_report(p.ir, plan.fs)
            entry["metrics"] = report
            reports.append(report)
        except IRError as exc:
            entry["error"] = str(exc)
        pairs.append(entry)
    if path is not None:
        os.unlink(path)  # the raw recording: the IRs are kept
    summary = {
        **meta,
        "fs": plan.fs,
        "bands_hz": list(BANDS_HZ),
        "measurement": measured.to_dict(),
        "pairs": pairs,
        "room": room_of(reports),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    return summary


# --- after a restart: what a zone learnt, taken up again ---------------------------------------

RESTORE_VERSION = 1  # of adaptation.json's "restore" block
RESTORE_MAX_JSON_BYTES = 64 * 2**20  # a summary.json larger than this is not read
RESTORE_MAX_IR_S = 60.0  # nor an IR longer than this
RESTORE_MAX_TAPS = 100_000  # nor an early pattern with more taps
ZONE_KEYS = ("inputs", "outputs", "pickup", "listener", "source", "layout")


def zone_record(settings: ZoneSettings) -> dict[str, Any]:
    """The zone's channels and layout as stored with a result (JSON types): a restart uses the
    result only if the zone is configured the same way then."""
    out: dict[str, Any] = json.loads(
        json.dumps({k: getattr(settings, k) for k in ZONE_KEYS}, allow_nan=False)
    )
    return out


def _finite(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, got {str(v)[:40]}")
    return float(v)


def _floats(v: Any, what: str, n: int | None = None) -> np.ndarray[Any, np.dtype[np.float64]]:
    if not isinstance(v, list) or (n is not None and len(v) != n):
        want = "a list" if n is None else f"a list of {n}"
        raise ValueError(f"{what} must be {want} numbers")
    if len(v) > RESTORE_MAX_TAPS:
        raise ValueError(f"{what}: more than {RESTORE_MAX_TAPS} values")
    return np.array([_finite(x, what) for x in v], dtype=np.float64)


def params_from_record(d: Any, n_out: int, meta: dict[str, Any]) -> FieldParams:
    """``params_record``'s output back to ``FieldParams`` for a zone of ``n_out`` outputs;
    ``ValueError`` naming what is wrong (a wrong shape, a non-finite or negative value)."""
    if not isinstance(d, dict):
        raise ValueError("params: not an object")
    if d.get("n_out") != n_out:
        raise ValueError(f"params are for {d.get('n_out')!r} outputs; the zone has {n_out}")
    early, late = d.get("early"), d.get("late")
    if not isinstance(early, dict) or not isinstance(late, dict):
        raise ValueError("params: early and late must be objects")
    delays = _floats(early.get("delays_s"), "early delays_s")
    chans = _floats(early.get("channels"), "early channels", len(delays))
    if np.any(chans != np.round(chans)):
        raise ValueError("early channels must be integers")
    return FieldParams(
        n_out=n_out,
        direct_gain=_floats(d.get("direct_gain"), "direct_gain", n_out),
        early=EarlyPattern(
            delays, _floats(early.get("gains"), "early gains", len(delays)), chans.astype(np.int64)
        ),
        late=LateParams(
            _floats(late.get("t60_s"), "late t60_s", len(BANDS_HZ)),
            _finite(late.get("delay_s"), "late delay_s"),
        ),
        direct_delay_s=_finite(d.get("direct_delay_s"), "direct_delay_s"),
        early_db=_finite(d.get("early_db"), "early_db"),
        late_db=_finite(d.get("late_db"), "late_db"),
        meta=meta,
    )


def room_record(room: Room) -> dict[str, Any]:
    """A ``Room`` as JSON (NaN, a band not measured, as null); ``room_from`` reads it back."""
    out: dict[str, Any] = {
        k: [None if not math.isfinite(float(v)) else float(v) for v in getattr(room, k)]
        for k in ("t30_s", "c80_db", "edt_s", "d50", "ts_s", "g_db", "level_db")
    }
    out["j_lf"], out["offset_s"] = room.j_lf, room.offset_s
    return out


def measured_room(room: Any) -> Room:
    """The room of a measurement's ``summary.json`` (``room_of``'s output); ``DesignError``
    when a band lacks T30 or C80."""
    if not isinstance(room, dict):
        raise DesignError("the measurement has no room")
    rows = [{"band_hz": hz, **{k: room[k][i] for k in room}} for i, hz in enumerate(BANDS_HZ)]
    return room_from({"bands": rows})


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _inside(path: Path, root: Path) -> Path:
    """``path`` resolved (symlinks followed); ``ValueError`` if that leaves ``root``."""
    real = path.resolve()
    if not real.is_relative_to(root):
        raise ValueError(f"{path.name} leads out of the results folder")
    return real


def _read_json(path: Path, root: Path) -> dict[str, Any]:
    real = _inside(path, root)
    if not real.is_file():
        raise ValueError(f"{path.name} is not a file")
    if real.stat().st_size > RESTORE_MAX_JSON_BYTES:
        raise ValueError(f"{path.name} is larger than {RESTORE_MAX_JSON_BYTES // 2**20} MB")
    try:
        data = json.loads(real.read_bytes(), parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # truncated, not UTF-8, NaN, too deep
        raise ValueError(f"{path.name} is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return data


@dataclass
class _Candidate:
    """One stored result that names a zone: a measurement made with ``zone``, or an
    adaptation."""

    kind: str  # "measurement" / "adaptation"
    id: str
    started: float
    folder: Path
    data: dict[str, Any]
    summary: dict[str, Any] | None  # the folder's summary.json (an adaptation's paths)

    @property
    def what(self) -> str:
        return f"{self.kind} {self.id}"


@dataclass
class Restored:
    """What ``restore_results`` found for one zone: the newest usable room, paths and adapted
    parameters, the ids they came from, and why other results were not used."""

    room: Room | None = None
    room_from: str = ""  # "measurement <id>" / "adaptation <id>"
    room_started: float = 0.0
    room_people: float | None = None  # the headcount when it was measured, where known
    paths: MeasuredPaths | None = None
    paths_from: str = ""
    adapted: tuple[str, FieldParams, dict[str, Any]] | None = None  # mode, params, result
    notes: list[str] = field(default_factory=list)

    def brief(self) -> dict[str, Any]:
        return {
            "room": self.room_from or None,
            "paths": self.paths_from or None,
            "params": None if self.adapted is None else {self.adapted[0]: self.paths_from},
            "skipped": list(self.notes),
        }


def _misfit(c: _Candidate, rec: Any, fs: Any, settings: ZoneSettings, samplerate: int) -> str:
    """Why ``c`` does not fit the zone as configured now ("" when it does)."""
    if not isinstance(rec, dict):
        return (
            f"{c.what} does not record the zone's channels and layout (written before "
            "restoring was supported)"
        )
    now = zone_record(settings)
    for key in ZONE_KEYS:
        if rec.get(key) != now[key]:
            return f"{c.what} was made with {key} {rec.get(key)}; the zone now has {now[key]}"
    if fs != samplerate:
        return f"{c.what} was made at {fs} Hz; the stream runs at {samplerate} Hz"
    return ""


def _irs(
    c: _Candidate, pairs: list[tuple[int, int]], samplerate: int, root: Path
) -> list[np.ndarray[Any, np.dtype[np.float64]]]:
    """The IRs of ``pairs`` (output, input) of ``c``'s measurement, checked against its
    summary: the file inside the folder, the sample rate, the length, finite samples."""
    summary = c.summary
    if summary is None or not isinstance(summary.get("pairs"), list):
        raise ValueError(f"{c.what}: its measurement's summary.json lists no IRs")
    files: dict[tuple[Any, Any], dict[str, Any]] = {}
    for p in summary["pairs"]:
        if isinstance(p, dict):
            files[(p.get("output"), p.get("input"))] = p
    out = []
    for o, i in pairs:
        entry = files.get((o, i))
        if entry is None:
            raise ValueError(f"{c.what} has no IR from output {o} into input {i}")
        name = entry.get("file")
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".wav"):
            raise ValueError(f"{c.what}: IR file name {str(name)[:60]!r} is not a plain .wav name")
        path = _inside(c.folder / name, root)
        if path.stat().st_size > RESTORE_MAX_IR_S * samplerate * 8 + 4096:
            raise ValueError(f"{c.what}: {name} is longer than {RESTORE_MAX_IR_S:g} s")
        fs, ir = read_ir(path)
        if fs != samplerate:
            raise ValueError(f"{c.what}: {name} is at {fs} Hz, not {samplerate} Hz")
        if ir.size != entry.get("samples"):
            raise ValueError(
                f"{c.what}: {name} has {ir.size} samples; the measurement made "
                f"{entry.get('samples')}"
            )
        if not np.all(np.isfinite(ir)):
            raise ValueError(f"{c.what}: {name} contains NaN or infinity")
        out.append(ir)
    return out


def _candidates(root: Path, notes: list[str]) -> list[_Candidate]:
    """Every result under ``root`` that names a zone, newest first; unreadable ones noted."""
    found: list[_Candidate] = []
    for folder in sorted(root.iterdir(), reverse=True):
        run_id = folder.name
        if not (0 < len(run_id) <= 64 and all(ch.isalnum() or ch in "-_" for ch in run_id)):
            continue  # not a result folder (a stray file, .tmp, ...)
        try:
            real = _inside(folder, root)
            if not real.is_dir():
                continue
            summary = adaptation = None
            if (folder / "summary.json").exists():
                summary = _read_json(folder / "summary.json", root)
            if (folder / "adaptation.json").exists():
                adaptation = _read_json(folder / "adaptation.json", root)
        except (OSError, ValueError) as exc:
            notes.append(f"{run_id}: {exc}")
            continue
        for kind, data in (("adaptation", adaptation), ("measurement", summary)):
            if data is None or data.get("zone") is None:
                continue  # a measurement for no zone (an adaptation's paths: its own entry)
            started = data.get("started")
            if isinstance(started, bool) or not isinstance(started, int | float):
                notes.append(f"{kind} {run_id}: no start time")
                continue
            if not isinstance(data["zone"], str):
                notes.append(f"{kind} {run_id}: its zone is not a name")
                continue
            found.append(_Candidate(kind, run_id, float(started), real, data, summary))
    found.sort(key=lambda c: (c.started, c.id, c.kind == "adaptation"), reverse=True)
    return found


def _take_adaptation(
    c: _Candidate, settings: ZoneSettings, samplerate: int, modes: set[str], r: Restored,
    root: Path,
) -> None:  # fmt: skip
    rec = c.data.get("restore")
    if not isinstance(rec, dict) or rec.get("version") != RESTORE_VERSION:
        raise ValueError(
            f"{c.what} has no parameters to restore (written before restoring was supported)"
        )
    why = _misfit(c, rec.get("zone_config"), rec.get("fs"), settings, samplerate)
    if why:
        raise ValueError(why)
    mode = c.data.get("mode")
    if mode not in modes:
        raise ValueError(f"{c.what} adapted mode {str(mode)[:64]!r}, which is not configured now")
    try:
        room = room_from(rec.get("room"))
    except DesignError as exc:
        raise ValueError(f"{c.what}: its room: {exc}") from None
    if r.paths is None:
        params = params_from_record(
            rec.get("params"), len(settings.outputs), {"mode": mode, "restored": c.id}
        )
        src, pick, lis = settings.source, settings.pickup, settings.listener
        if src is None or pick is None or lis is None:
            raise ValueError(f"{c.what}: the zone no longer names its source, pickup and listener")
        outs = list(settings.outputs)
        pairs = [(src, lis), (src, pick), *((o, lis) for o in outs), *((o, pick) for o in outs)]
        irs = _irs(c, pairs, samplerate, root)
        n = len(outs)
        paths = MeasuredPaths(
            samplerate, irs[0], irs[1], _stack(irs[2 : 2 + n]), _stack(irs[2 + n :]), 0.0
        )
        final: dict[str, Any] = rec["final"] if isinstance(rec.get("final"), dict) else {}
        r.paths, r.paths_from = paths, c.what
        r.adapted = (str(mode), params, {**final, "restored_from": c.id})
    if r.room is None:
        r.room, r.room_from, r.room_started = room, c.what, c.started
        r.room_people = _headcount_of(c.data)


def _headcount_of(data: dict[str, Any]) -> float | None:
    """The headcount a stored result was made with (None: not recorded, or not a count)."""
    v = data.get("people")
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
        return None
    return float(v)


def _take_measurement(
    c: _Candidate, settings: ZoneSettings, samplerate: int, r: Restored, root: Path
) -> None:
    why = _misfit(c, c.data.get("zone_config"), c.data.get("fs"), settings, samplerate)
    if why:
        raise ValueError(why)
    problems = []
    if r.room is None:
        try:
            r.room = measured_room(c.data.get("room"))
            r.room_from, r.room_started = c.what, c.started
            r.room_people = _headcount_of(c.data)
        except (DesignError, KeyError, IndexError, TypeError) as exc:
            problems.append(f"no room ({exc})")
    if r.paths is None and c.data.get("mute_inner") is True and settings.pickup is not None:
        pairs = [(o, settings.pickup) for o in settings.outputs]
        outputs, inputs = c.data.get("outputs"), c.data.get("inputs")
        if (
            isinstance(outputs, list)
            and isinstance(inputs, list)
            and settings.pickup in inputs
            and all(o in outputs for o in settings.outputs)
        ):
            try:
                r.paths = loop_paths(samplerate, _stack(_irs(c, pairs, samplerate, root)))
                r.paths_from = c.what
            except ValueError as exc:  # AdaptError is one
                problems.append(f"no paths ({exc})")
    if problems:
        raise ValueError(f"{c.what}: {'; '.join(problems)}")


def restore_results(
    var_dir: Path, zones: list[ZoneSettings], samplerate: int, modes: set[str]
) -> tuple[dict[str, Restored], list[str]]:
    """What each zone learnt before a restart (docs/acoustics.md, "After a restart"), read
    from ``var_dir`` (blocking: run it in a thread). Per zone, newest first, the room and the
    paths each from the newest result that fits the zone as configured now and gives it; an
    adaptation that gives the paths gives its adapted parameters too. Returns per zone what
    was found, and notes on results that belong to no zone or could not be read."""
    notes: list[str] = []
    out = {z.name: Restored() for z in zones}
    if not var_dir.is_dir():
        return out, notes
    root = var_dir.resolve()
    try:
        found = _candidates(root, notes)
    except OSError as exc:
        notes.append(f"{var_dir.name}: cannot be listed ({exc})")
        return out, notes
    by_name = {z.name: z for z in zones}
    for c in found:
        settings = by_name.get(c.data["zone"])
        if settings is None:
            notes.append(f"{c.what} was made for zone {c.data['zone'][:64]!r}, not configured now")
            continue
        r = out[settings.name]
        if r.room is not None and r.paths is not None:
            continue  # superseded by newer results
        try:
            if c.kind == "adaptation":
                _take_adaptation(c, settings, samplerate, modes, r, root)
            else:
                _take_measurement(c, settings, samplerate, r, root)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            why = str(exc) or type(exc).__name__
            r.notes.append(why if c.id in why else f"{c.what}: {why}")
    for name, r in out.items():
        for note in r.notes:
            log.warning("sound field: zone %s: not restored: %s", name, note)
    for note in notes:
        log.warning("sound field: result not restored: %s", note)
    return out, notes


@dataclass
class ZoneState:
    name: str
    layout: Layout
    room: Room
    room_source: str  # "configured" / "assumed" / "measured <when>"
    mode: str | None = None
    state: str = "silent"  # silent / designing / fading / playing / failed
    since: float = field(default_factory=time.time)
    design: Design | None = None
    latency: dict[str, int] | None = None
    error: str = ""
    # the measured paths of the zone's loop (an adaptation's, or a muted measurement's that
    # covered its pickup and outputs): the loop-gain guard of every recall works on them
    paths: MeasuredPaths | None = None
    paths_source: str = ""
    loop: dict[str, Any] = field(default_factory=lambda: {"checked": False, "note": ""})
    # occupancy (``follow_occupancy``): ``room`` was measured with ``base_people`` present;
    # ``occupied`` is the room predicted for ``people``, which the field is designed for
    # (None: ``room`` itself, the headcount is close enough to the measured one)
    base_people: float = 0.0
    occupied: Room | None = None
    people: float | None = None
    readapted_at: float = -math.inf  # monotonic
    occupancy_note: str = ""

    @property
    def field_room(self) -> Room:
        """The room the zone's field is designed for: at the headcount now, where known."""
        return self.room if self.occupied is None else self.occupied


class SoundFieldControl:
    """The service's sound field on one audio device (see the module docstring)."""

    def __init__(self, config: AcousticsConfig, send: Callable[[Any], None] | None = None) -> None:
        self.config = config
        self.modes = config.all_modes()
        self.send = send  # the stream's control channel (set once the device exists)
        self.zones: dict[str, ZoneState] = {}
        for z in config.zones:
            room_cfg = z.room if z.room is not None else config.room
            source = "configured" if room_cfg is not None else "assumed"
            self.zones[z.name] = ZoneState(
                z.name, z.layout_obj(), room_from(room_cfg or DEFAULT_ROOM), source
            )
            if config.occupancy is not None:
                self.zones[z.name].base_people = config.occupancy.measured_people
        self._designs: dict[tuple[str, str, int], Design] = {}
        self._engine_config = config.engine_config()
        self._ready: dict[str, asyncio.Future[FieldReady]] = {}
        self._pool: ProcessPoolExecutor | None = None
        self._lock = asyncio.Lock()  # one recall at a time: the last one wins, in order
        # measurement (see ``measure``): the stream's driver (its rate, its xruns) and where
        # results are kept; the service sets both (the API fills them in if it has not)
        self.driver: Any = None
        self.var_dir: Path | None = None
        self.journal: JournalSink | None = None  # a measurement's end is journalled here
        self.measurement: dict[str, Any] | None = None  # the last one started: its state
        self._started: asyncio.Future[MeasurementStarted] | None = None
        self._done: asyncio.Future[MeasurementDone] | None = None
        self._measure_task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        # adaptation (see ``adapt``): the last one started, its task and worker process, and
        # the adapted parameters per (zone, mode) with the paths they were adapted on
        self.adaptation: dict[str, Any] | None = None
        self._adapt_task: asyncio.Task[None] | None = None
        self._adapt_proc: Any = None
        self._adapted: dict[tuple[str, str], tuple[FieldParams, MeasuredPaths, dict[str, Any]]] = {}
        # what ``restore`` took up from var_dir at start, per zone (None: not run yet)
        self.restored: dict[str, Restored] | None = None
        # occupancy: the newest reading of a point (the service reads its live view)
        self.headcount: Callable[[], Reading | None] = lambda: None
        self.counter_fault: Callable[[], Reading | None] = lambda: None
        self.occupancy: dict[str, Any] = {"people": None, "state": "off", "note": ""}
        if config.occupancy is not None:
            self.occupancy.update(point=config.occupancy.point, state="waiting")

    def factory(self) -> MeasurementFactory:
        """The stream's processor under the player: the measurement wrapping the engine."""
        return MeasurementFactory(inner=SoundFieldFactory(self._engine_config))

    # --- events from the stream (on the event loop) ---------------------------------------

    def on_event(self, payload: Any) -> None:
        if isinstance(payload, FieldReady):
            zone = self.zones.get(payload.zone)
            if zone is not None:
                zone.state, zone.since = "fading", time.time()
                lat = payload.latency
                zone.latency = {
                    "direct_samples": lat.direct_samples,
                    "early_min_samples": lat.early_min_samples,
                    "late_onset_samples": lat.late_onset_samples,
                    "late_min_samples": lat.late_min_samples,
                }
            fut = self._ready.pop(payload.zone, None)
            if fut is not None and not fut.done():
                fut.set_result(payload)
        elif isinstance(payload, FadeDone):
            zone = self.zones.get(payload.zone)
            if zone is not None and zone.state == "fading":
                zone.state, zone.since = "playing", time.time()
        elif isinstance(payload, MeasurementStarted | MeasurementProgress):
            m = self.measurement
            if m is not None and m["id"] == payload.id:
                if isinstance(payload, MeasurementProgress) and payload.total_s > 0:
                    m["percent"] = round(100.0 * payload.seconds / payload.total_s, 1)
                else:
                    m["state"] = "measuring"
            if isinstance(payload, MeasurementStarted):
                _resolve(self._started, payload)
        elif isinstance(payload, MeasurementDone):
            _resolve(self._done, payload)
        elif isinstance(payload, MeasurementFailed):
            error = PlaybackError(
                f"measurement {payload.id}: {payload.reason}: {payload.text}",
                422 if payload.reason in ("stream_format", "bad_plan") else 409,
            )
            # before the start, the start fails; after it, the run
            started = self._started is not None and self._started.done()
            waiting = self._done if started else self._started
            if waiting is not None and not waiting.done():
                waiting.set_exception(error)

    def on_control_error(self, text: str) -> None:
        """The engine refused a SetField (or the stream a measurement): fail every recall
        waiting for one, and a measurement waiting to start."""
        if self._started is not None and not self._started.done():
            self._started.set_exception(PlaybackError(f"the stream refused: {text}"))
        for name, fut in list(self._ready.items()):
            if not fut.done():
                fut.set_exception(PlaybackError(f"zone {name}: the engine refused: {text}"))
        self._ready.clear()

    def on_stream_lost(self, why: str) -> None:
        started = self._started is not None and self._started.done()
        waiting = self._done if started else self._started
        if waiting is not None and not waiting.done():
            waiting.set_exception(Unavailable(f"the audio stream ended ({why})"))
        for name, fut in list(self._ready.items()):
            if not fut.done():
                fut.set_exception(Unavailable(f"zone {name}: the audio stream ended ({why})"))
        self._ready.clear()
        for zone in self.zones.values():
            if zone.state != "silent":
                zone.state, zone.since = "silent", time.time()

    # --- recall ---------------------------------------------------------------------------

    async def recall(
        self,
        mode: str,
        fade_s: float | None,
        origin: Origin,
        zones: list[str] | None = None,
        report: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Crossfade ``zones`` (None: every zone) to ``mode`` over ``fade_s`` (None: the
        configured fades). Returns when every zone's crossfade has started.

        A zone adapted to ``mode`` plays its adapted parameters, any other its design. Every
        zone with measured paths has its loop gain checked first (``_guard``): lowered to the
        stability margin, saying so in the zone's ``loop`` and in ``report`` (the journal
        event's args), or the whole recall refused (409) when it cannot be made stable."""
        if mode not in self.modes:
            known = ", ".join(sorted(self.modes))
            raise PlaybackError(f"no sound-field mode '{mode}' (modes: {known})", 404)
        names = list(self.zones) if zones is None else zones
        unknown = [z for z in names if z not in self.zones]
        if unknown:
            raise PlaybackError(f"no sound-field zone '{unknown[0]}'", 404)
        if fade_s is not None and not (0 <= fade_s <= 60):
            raise PlaybackError(f"fade_s must be within 0..60 s, got {fade_s}", 422)
        if self.send is None:
            raise Unavailable("the sound-field engine's audio stream is not running")
        busy = self._adapting_zone()
        if busy is not None and busy in names:
            assert self.adaptation is not None
            raise PlaybackError(
                f"zone {busy} is being adapted (adaptation {self.adaptation['id']}): recall it "
                "when the adaptation has ended",
                409,
            )
        async with self._lock:
            designs = await asyncio.gather(*(self._params_for(z, mode) for z in names))
            guarded = await asyncio.gather(
                *(self._guard(z, p) for z, (_, p) in zip(names, designs, strict=True)),
                return_exceptions=True,
            )
            refused = [g for g in guarded if isinstance(g, BaseException)]
            loops = {n: g[1] for n, g in zip(names, guarded, strict=True) if isinstance(g, tuple)}
            if report is not None:
                report["loop"] = {n: _loop_brief(v) for n, v in loops.items()}
            if refused:  # nothing is sent when a zone cannot be made stable
                raise refused[0]
            early = self.config.early_fade_s if fade_s is None else min(fade_s, 0.1)
            sets = [
                await self._set_field(name, g[0], early, fade_s)
                for name, g in zip(names, guarded, strict=True)
                if isinstance(g, tuple)
            ]
            loop = asyncio.get_running_loop()
            waits = []
            for name, (d, _), g, payload in zip(names, designs, guarded, sets, strict=True):
                assert isinstance(g, tuple)
                zone = self.zones[name]
                zone.loop = loops[name]
                zone.mode, zone.design, zone.error = mode, d, ""
                zone.state, zone.since = "designing", time.time()
                fut: asyncio.Future[FieldReady] = loop.create_future()
                old = self._ready.pop(name, None)
                if old is not None and not old.done():
                    old.cancel()
                self._ready[name] = fut
                try:
                    self.send(payload)
                except Exception as exc:
                    self._ready.pop(name, None)
                    zone.state, zone.error = "failed", str(exc)
                    raise Unavailable(f"zone {name}: {exc}") from None
                waits.append(fut)
            try:
                async with asyncio.timeout(READY_TIMEOUT_S):
                    await asyncio.gather(*waits)
            except TimeoutError:
                raise PlaybackError(
                    f"the engine did not take mode '{mode}' within {READY_TIMEOUT_S:g} s"
                ) from None
            except PlaybackError as exc:
                for name in names:
                    self.zones[name].state, self.zones[name].error = "failed", str(exc)
                raise
        log.info("%s: sound field '%s' on %s", origin.source, mode, ", ".join(names))
        return {"mode": mode, "zones": {n: self._zone_snapshot(self.zones[n]) for n in names}}

    async def _params_for(self, name: str, mode: str) -> tuple[Design | None, FieldParams]:
        """What ``mode`` plays in zone ``name``: its adapted parameters when the zone was
        adapted to it on the paths it has now, else its design."""
        adapted = self._adapted.get((name, mode))
        zone = self.zones[name]
        if adapted is not None and adapted[1] is zone.paths and zone.occupied is None:
            return self.zones[name].design if self.zones[name].mode == mode else None, adapted[0]
        d = await self._design_for(name, mode)
        return d, d.params

    async def _guard(self, name: str, params: FieldParams) -> tuple[FieldParams, dict[str, Any]]:
        """The loop-gain guard: with the zone's measured paths, ``params`` lowered (every level
        alike) until the loop's peak gain is ``LOOP_MARGIN_DB`` below instability; refused
        (``PlaybackError`` 409) when that is not finite or would take more than
        ``MAX_CUT_DB``. Without paths the gain is unchecked, and the note says so."""
        zone = self.zones[name]
        if zone.paths is None:
            return params, {
                "checked": False,
                "margin_db": LOOP_MARGIN_DB,
                "note": "loop gain unchecked: no measured paths for this zone (adapt it, or "
                "measure its pickup from its outputs with the field muted)",
            }
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(DESIGN_TIMEOUT_S):
                out, before, after, cut = await loop.run_in_executor(
                    self._design_pool(), _loop_guard, params, zone.paths, LOOP_MARGIN_DB
                )
        except (AdaptError, ValueError) as exc:
            raise PlaybackError(
                f"zone {name}: the loop gain cannot be checked: {exc}", 409
            ) from None
        except TimeoutError:
            raise PlaybackError(f"zone {name}: the loop-gain check took too long", 409) from None
        info: dict[str, Any] = {
            "checked": True,
            "paths": zone.paths_source,
            "margin_db": LOOP_MARGIN_DB,
            "gain_db": _num(before),
            "applied_gain_db": _num(after),
            "cut_db": round(cut, 2),
        }
        if not (math.isfinite(before) and math.isfinite(after)) or cut > MAX_CUT_DB:
            why = (
                f"zone {name}: refused: the feedback loop's peak gain is {before:+.1f} dB; "
                f"stable with a {LOOP_MARGIN_DB:g} dB margin only {cut:.0f} dB down (more than "
                f"{MAX_CUT_DB:g} dB: the field would be inaudible). Move the pickup closer to "
                "the source or the loudspeakers away from it, or re-adapt"
            )
            zone.loop = {**info, "note": why}
            raise PlaybackError(why, 409)
        if cut > 0:
            info["note"] = (
                f"loop gain {before:+.1f} dB is above the stability margin "
                f"({-LOOP_MARGIN_DB:+g} dB): the whole field lowered by {cut:.1f} dB "
                f"(loop gain now {after:+.1f} dB)"
            )
        else:
            info["note"] = f"loop gain {before:+.1f} dB, within the {LOOP_MARGIN_DB:g} dB margin"
        return out, info

    async def _set_field(
        self, name: str, params: FieldParams, early_fade_s: float | None, late_fade_s: float | None
    ) -> SetField:
        """The ``SetField`` of ``params`` for zone ``name``, built for the running stream in
        the design process (``dsp.engine.build_set``): the audio host then only swaps it in.
        Building it there would hold the GIL beside the callback, which drops blocks
        (docs/acoustics.md, "Mode switches"). Without the stream's format (no driver) the
        engine builds it itself."""
        fmt = getattr(getattr(self.driver, "config", None), "stream_format", None)
        if fmt is None:
            return SetField(name, params, early_fade_s, late_fade_s)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(DESIGN_TIMEOUT_S):
                built = await loop.run_in_executor(
                    self._design_pool(), build_set, self._engine_config, fmt, name, params
                )
        except (KeyError, ValueError) as exc:
            raise PlaybackError(f"zone {name}: the engine cannot play it: {exc}", 409) from None
        except TimeoutError:
            raise PlaybackError(f"zone {name}: building the field took too long") from None
        return SetField.of(built, early_fade_s, late_fade_s)

    def _design_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def _design_for(self, name: str, mode: str) -> Design:
        zone = self.zones[name]
        room = zone.field_room
        key = (name, mode, id(room))
        cached = self._designs.get(key)
        if cached is not None:
            return cached
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(DESIGN_TIMEOUT_S):
                d = await loop.run_in_executor(
                    self._pool, _design, self.modes[mode], zone.layout, room, self.config.cap
                )
        except (DesignError, ModeError, ValueError) as exc:
            raise PlaybackError(f"zone {name}: mode '{mode}' cannot be designed: {exc}") from None
        except TimeoutError:
            raise PlaybackError(f"zone {name}: the design of '{mode}' took too long") from None
        if zone.room_source == "assumed":
            d.notes.append(
                "designed for an assumed dry room (mid T ~1 s): configure [acoustics] room or "
                "measure the hall for a design that fits it"
            )
        if zone.occupied is not None:
            d.notes.append(zone.occupancy_note)
        if len(self._designs) >= MAX_DESIGNS:  # a headcount moving all evening: keep the newest
            self._designs.pop(next(iter(self._designs)))
        self._designs[key] = d
        return d

    async def run(self, streaming: Callable[[], bool], period_s: float = 0.5) -> None:
        """Keep every zone playing the mode it should: at start the configured initial modes,
        and after the stream is restarted (a new engine starts silent) the last recalled
        ones. Failures are logged and retried every ``period_s`` until the service stops."""
        origin = Origin(SourceKind.SYSTEM, "sound field")
        for settings in self.config.zones:
            self.zones[settings.name].mode = settings.mode
        if self.restored is None and self.var_dir is not None:
            try:
                await self.restore()
            except Exception:  # restoring is a help: never stop the sound field for it
                log.exception("sound field: restoring the zones' results failed")
        warned: set[str] = set()
        while True:
            await asyncio.sleep(period_s)
            if not streaming() or self._lock.locked():
                continue
            if self.config.occupancy is not None:
                await self.follow_occupancy()
            by_mode: dict[str, list[str]] = {}
            adapting = self._adapting_zone()
            for z in self.zones.values():
                if z.mode is not None and z.state == "silent" and z.name != adapting:
                    by_mode.setdefault(z.mode, []).append(z.name)
            for mode, names in by_mode.items():
                try:
                    await self.recall(mode, None, origin, names)
                    warned.discard(mode)
                except PlaybackError as exc:
                    for n in names:  # retried on the next turn
                        self.zones[n].state = "silent"
                    if mode not in warned:
                        warned.add(mode)
                        log.warning("sound field: mode '%s' not (re)started: %s", mode, exc)

    # --- occupancy ----------------------------------------------------------------------

    def _set_room(self, zone: ZoneState, room: Room, source: str, people: Any) -> None:
        """``zone``'s natural room is now ``room``, measured with ``people`` present (None:
        not known; then the configured ``measured_people``): the occupancy follows from it."""
        occ = self.config.occupancy
        zone.room, zone.room_source = room, source
        zone.occupied, zone.people, zone.occupancy_note = None, None, ""
        if occ is not None:
            known = isinstance(people, int | float) and not isinstance(people, bool)
            zone.base_people = float(people) if known else occ.measured_people

    def people_now(self) -> float | None:
        """The headcount to design for, or None (no occupancy configured, no reading yet, a
        stale, bad or unbelievable one: then ``self.occupancy`` says why)."""
        occ = self.config.occupancy
        if occ is None:
            return None
        r = self.headcount()
        st = self.occupancy
        value = None if r is None else r.value
        fault = self.counter_fault() if occ.fault_point is not None else None
        if fault is not None and fault.value is True:
            st.update(state="bad", note=f"{occ.fault_point} is set: the count is not reliable")
        elif r is None:
            st.update(state="waiting", note=f"no reading of {occ.point} yet")
        elif r.quality is not Quality.GOOD:
            st.update(state="bad", note=f"{occ.point} is {r.quality.value}")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            st.update(state="bad", note=f"{occ.point} is not a number: {value!r:.40}")
        elif not 0 <= value <= occ.max_people:
            st.update(state="bad", note=f"{occ.point} = {value:g}: not 0 .. {occ.max_people:g}")
        elif time.time() - r.ts_wall > occ.stale_s:
            st.update(state="stale", note=f"{occ.point}: no reading for {occ.stale_s:g} s")
        else:
            st.update(state="ok", people=float(value), note="", at=r.ts_wall)
            return float(value)
        return None

    async def follow_occupancy(self, origin: Origin | None = None) -> list[str]:
        """Re-design each occupancy zone whose room, at the headcount now, has drifted from the
        one its field was designed for by ``threshold`` or more (T30 in any band), at most once
        in ``min_interval_s``; a playing zone crossfades (the configured late fade) to the new
        field, journalled as ``acoustics.readapted``. A zone adapted by measurement leaves its
        adapted parameters for the design at the new headcount, and takes them up again when
        the headcount comes back to its measurement's. Returns the zones re-designed."""
        occ = self.config.occupancy
        people = self.people_now()
        if occ is None or people is None:
            return []
        origin = origin or Origin(SourceKind.SYSTEM, "sound field: occupancy")
        adapting, now, changed = self._adapting_zone(), time.monotonic(), []
        for name in occ.zones or list(self.zones):
            zone = self.zones[name]
            if name == adapting or now - zone.readapted_at < occ.min_interval_s:
                continue
            try:
                predicted = occupied_room(
                    zone.room, occ.volume_m3, people, occ.absorption_m2, zone.base_people
                )
            except OccupancyError as exc:
                if zone.occupancy_note != str(exc):
                    log.warning("sound field: zone %s keeps its field: %s", name, exc)
                zone.occupancy_note = str(exc)
                continue
            if t30_drift(zone.field_room, predicted) < occ.threshold:
                continue
            before, was, kept = zone.field_room, zone.people, zone.occupied
            zone.readapted_at = now
            if t30_drift(zone.room, predicted) < occ.threshold:
                zone.occupied, zone.occupancy_note = None, ""  # back to the measured room
            else:
                zone.occupied = predicted
                zone.occupancy_note = (
                    f"designed for {people:g} people, predicted from the room measured with "
                    f"{zone.base_people:g} (Sabine + Barron: docs/acoustics.md, Occupancy)"
                )
            zone.people = people
            changed.append(name)
            if zone.mode is None or zone.state == "silent":
                continue  # the next recall designs for the new room
            args: dict[str, Any] = {
                "zone": name,
                "mode": zone.mode,
                "people": people,
                "people_before": zone.base_people if was is None else was,
                "t30_s_before": _rounded(before.t30_s),
                "t30_s": _rounded(zone.field_room.t30_s),
                "adapted": zone.occupied is None and (name, zone.mode) in self._adapted,
            }
            try:
                await self._readapt(name, zone.mode, origin, args)
            except (PlaybackError, Unavailable) as exc:
                # it plays what it played: say so, and try again after min_interval_s
                zone.occupied, zone.people = kept, was
                zone.occupancy_note = f"not re-designed for {people:g} people: {exc}"
                log.warning("sound field: zone %s: %s", name, zone.occupancy_note)
                changed.remove(name)
        return changed

    async def _readapt(self, name: str, mode: str, origin: Origin, args: dict[str, Any]) -> None:
        async def recall() -> dict[str, Any]:
            return await self.recall(mode, None, origin, [name], args)

        if self.journal is None:
            await recall()
        else:
            await journalled(
                self.journal, origin, "acoustics.readapted", recall, targets=[name], args=args
            )
        log.info(
            "sound field: zone %s re-designed for %g people (T30 at 1 kHz %.2f -> %.2f s)",
            name, args["people"], args["t30_s_before"][3], args["t30_s"][3],
        )  # fmt: skip

    async def restore(self, samplerate: int | None = None) -> dict[str, Any]:
        """Take up what each zone learnt before a restart (docs/acoustics.md, "After a
        restart"): from ``var_dir``, the newest room, paths and adapted parameters that fit
        the zone as configured now and the stream's ``samplerate`` (default: the stream's
        configured rate). Read in a thread; holds the recall lock, so a recall waits for it.
        Journalled as one ``acoustics.restored`` event. Returns the event's args."""
        if samplerate is None:
            samplerate = int(getattr(getattr(self.driver, "config", None), "samplerate", 0))
        if self.var_dir is None or samplerate <= 0:
            raise Unavailable("restore needs the results folder and the stream's sample rate")
        t_wall, t0 = time.time(), time.perf_counter()
        async with self._lock:
            found, notes = await asyncio.to_thread(
                restore_results, self.var_dir, list(self.config.zones), samplerate,
                set(self.modes),
            )  # fmt: skip
            for name, r in found.items():
                zone = self.zones[name]
                if r.room is not None:
                    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.room_started))
                    self._set_room(
                        zone, r.room, f"restored from {r.room_from} (made {when})", r.room_people
                    )
                if r.paths is not None:
                    zone.paths, zone.paths_source = r.paths, f"restored from {r.paths_from}"
                if r.adapted is not None and r.paths is not None:
                    mode, params, final = r.adapted
                    self._adapted[(name, mode)] = (params, r.paths, final)
            self.restored = found
        args: dict[str, Any] = {
            "samplerate": samplerate,
            "zones": {n: r.brief() for n, r in found.items()},
            "other": notes[:50],
        }
        done = sorted(n for n, r in found.items() if r.room_from or r.paths_from)
        log.info("sound field: restored %s", ", ".join(done) or "nothing")
        if self.journal is not None:
            event = JournalEvent(
                kind=SourceKind.SYSTEM,
                source="sound field",
                command="acoustics.restored",
                result=Result.OK,
                requested=t_wall,
                executed=time.time(),
                duration_s=time.perf_counter() - t0,
                targets=tuple(done),
                args=args,
            )
            try:
                await self.journal.append(event)
            except Exception:  # the journal's own failure is logged there
                log.warning("sound field: the restore was not journalled")
        return args

    # --- measurement --------------------------------------------------------------------

    @property
    def measuring(self) -> bool:
        return self.measurement is not None and self.measurement["state"] in (
            "starting",
            "measuring",
            "analysing",
        )

    async def measure(
        self,
        origin: Origin,
        *,
        outputs: list[int],
        inputs: list[int],
        sweeps: int = 3,
        level_db: float = -20.0,
        mute_inner: bool = False,
        zone: str | None = None,
        sweep_s: float = 2.0,
        ir_s: float = 2.0,
        noise_s: float = 1.0,
    ) -> dict[str, Any]:
        """Start a sweep measurement on the stream (1-based processor = device channels);
        returns its state once the stream has started it. The rest (recording, analysis in the
        worker process, files, the zone's room) goes on in a task: ``self.measurement`` tells
        how far, ``measurements()`` / ``measurement_result(id)`` give the results. ``zone``: make
        the measured room that zone's room. 404 unknown zone, 409 busy or no stream, 422 a plan
        the stream cannot run."""
        if zone is not None and zone not in self.zones:
            raise PlaybackError(f"no sound-field zone '{zone}'", 404)
        if self.adapting:
            assert self.adaptation is not None
            raise PlaybackError(
                f"adaptation {self.adaptation['id']} is running: it measures on this stream",
                409,
            )
        plan, state, folder, xruns = await self._start_run(
            origin,
            outputs=outputs,
            inputs=inputs,
            sweeps=sweeps,
            level_db=level_db,
            mute_inner=mute_inner,
            zone=zone,
            sweep_s=sweep_s,
            ir_s=ir_s,
            noise_s=noise_s,
        )
        self._measure_task = asyncio.create_task(
            self._complete(plan, state, folder, xruns, origin),
            name=f"acoustics-measure:{state['id']}",
        )
        log.info("%s: measurement %s started (%.1f s)", origin.source, state["id"], plan.seconds)
        return dict(state)

    async def _start_run(
        self,
        origin: Origin,
        *,
        outputs: list[int],
        inputs: list[int],
        sweeps: int,
        level_db: float,
        mute_inner: bool,
        zone: str | None,
        sweep_s: float,
        ir_s: float,
        noise_s: float,
    ) -> tuple[MeasurementPlan, dict[str, Any], Path, int]:
        """Plan a measurement and have the stream start it (``measure``'s first half, shared
        with the adaptation's closed loop). Returns the plan, the live state (also
        ``self.measurement``), the run's folder and the stream's xrun count before it."""
        if self.send is None or self.driver is None or self.var_dir is None:
            raise Unavailable("the sound-field engine's audio stream is not running")
        if self.measuring:
            assert self.measurement is not None
            raise PlaybackError(f"measurement {self.measurement['id']} is still running", 409)
        stats = self.driver.snapshot()
        if stats.bypassed:
            why = getattr(self.driver, "last_processor_error", "") or "an error"
            raise PlaybackError(f"the stream's processor is bypassed ({why}): nothing plays", 409)
        fs = int(stats.samplerate)
        if fs <= 0:
            raise Unavailable("the audio stream has not reported its sample rate yet")
        run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{next(self._ids)}"
        folder = self.var_dir / run_id
        try:
            settings: dict[str, Any] = {
                "sweeps": sweeps,
                "level_db": level_db,
                "sweep_s": sweep_s,
                "ir_s": ir_s,
                "noise_s": noise_s,
                "mute_inner": mute_inner,
            }
            plan = plan_measurement(fs, outputs, inputs, **settings)
            if plan.recording_bytes > PIPE_BYTES:  # too big for the pipe: through a file
                folder.mkdir(parents=True, exist_ok=True)
                save_to = str(folder.resolve() / "recording.npz")
                plan = plan_measurement(fs, outputs, inputs, **settings, save_to=save_to)
        except MeasurementError as exc:
            raise PlaybackError(str(exc), 422) from None
        loop = asyncio.get_running_loop()
        xruns = int(self.driver.snapshot().xruns)
        self.measurement = state = {
            "id": run_id,
            "state": "starting",
            "percent": 0.0,
            "seconds": round(plan.seconds, 3),
            "started": time.time(),
            "by": origin.source,
            "outputs": list(plan.outputs),
            "inputs": list(plan.inputs),
            "sweeps": plan.sweeps,
            "level_db": level_db,
            "mute_inner": mute_inner,
            "zone": zone,
            "people": self.people_now(),  # the headcount: what the measured room had
            "error": "",
        }
        self._started = loop.create_future()
        self._done = loop.create_future()
        started = self._started
        try:
            self.send(StartMeasurement(run_id, plan))
            async with asyncio.timeout(READY_TIMEOUT_S):
                await started
        except PlaybackError as exc:
            state["state"], state["error"] = "failed", str(exc)
            raise
        except TimeoutError:
            state["state"] = "failed"
            state["error"] = f"the stream did not start it within {READY_TIMEOUT_S:g} s"
            raise PlaybackError(f"measurement {run_id}: {state['error']}") from None
        except Exception as exc:
            state["state"], state["error"] = "failed", str(exc)
            raise Unavailable(f"measurement {run_id}: {exc}") from None
        state["state"] = "measuring"
        return plan, state, folder, xruns

    async def _complete(
        self, plan: MeasurementPlan, state: dict[str, Any], folder: Path, xruns: int, origin: Origin
    ) -> None:
        t0 = time.perf_counter()
        try:
            await self._measured(plan, state, folder, xruns)
        finally:
            keep = ("id", "zone", "xruns", "warnings", "room")
            await self._journal_run(
                origin, "acoustics.measured", state, t0, keep, self.config.device
            )

    async def _journal_run(
        self,
        origin: Origin,
        command: str,
        state: dict[str, Any],
        t0: float,
        keep: tuple[str, ...],
        target: str,
    ) -> None:
        """The end of a measurement or adaptation run (``state``), journalled with the keys
        ``keep`` of its state; shielded, so a run cancelled by shutdown is still recorded."""
        if self.journal is None:
            return
        ok = state["state"] == "done"
        event = JournalEvent(
            kind=origin.kind,
            source=origin.source,
            command=command,
            result=Result.OK if ok else Result.FAILED,
            requested=state["started"],
            executed=time.time(),
            duration_s=time.perf_counter() - t0,
            reason="" if ok else str(state["error"] or "cancelled"),
            targets=(target,),
            args={k: state[k] for k in keep if state.get(k) is not None},
        )
        try:
            await asyncio.shield(self.journal.append(event))
        except Exception:  # the journal's own failure is logged there
            log.warning("%s %s: not journalled", command, state["id"])

    async def _measured(
        self, plan: MeasurementPlan, state: dict[str, Any], folder: Path, xruns: int
    ) -> None:
        done = self._done
        assert done is not None
        try:
            event = await self._recording(done, plan)
            state["percent"] = 100.0
            state["xruns"] = int(self.driver.snapshot().xruns) - xruns
            state["state"] = "analysing"
            if self._pool is None:
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            meta = {k: v for k, v in state.items() if k not in ("state", "percent", "error")}
            if state["zone"] is not None:  # what a restart checks the result against
                meta["zone_config"] = zone_record(self._settings(state["zone"]))
            summary = await asyncio.get_running_loop().run_in_executor(
                self._pool,
                analyse_measurement,
                plan,
                event.recording,
                event.path,
                str(folder),
                meta,
            )
            if state["zone"] is not None:
                self._use_room(state["zone"], summary, state)
                if plan.mute_inner:
                    await self._use_paths(state["zone"], summary, folder, state)
            state["warnings"] = len(summary["measurement"]["warnings"])
            state["state"] = "done"
            log.info("measurement %s done (%d xrun(s))", state["id"], state["xruns"])
        except (PlaybackError, MeasurementError, IRError, DesignError, OSError) as exc:
            state["state"], state["error"] = "failed", str(exc) or type(exc).__name__
            log.warning("measurement %s failed: %r", state["id"], exc)
        except TimeoutError:
            state["state"], state["error"] = "failed", "no recording came back in time"
            log.warning("measurement %s: no recording came back in time", state["id"])
        except Exception as exc:  # the worker died, ...: never leave the state "analysing"
            state["state"], state["error"] = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("measurement %s failed", state["id"])

    async def _recording(
        self, done: asyncio.Future[MeasurementDone], plan: MeasurementPlan
    ) -> MeasurementDone:
        """Wait for the run's end; fail at once if the stream bypasses its processor (it wrote
        NaN, or raised: the run would never end), or in time if nothing comes back."""
        errors = int(self.driver.snapshot().processor_errors)
        deadline = time.monotonic() + plan.seconds + 30.0
        while True:
            try:
                async with asyncio.timeout(0.5):
                    return await asyncio.shield(done)
            except TimeoutError:
                pass
            stats = self.driver.snapshot()
            if stats.bypassed or int(stats.processor_errors) > errors:
                why = getattr(self.driver, "last_processor_error", "") or "an error"
                raise PlaybackError(
                    f"the stream's processor failed ({why}) and was bypassed: the measurement "
                    "cannot finish (with the enhancement on, a feedback loop that is not stable "
                    "shows this way: measure with mute_inner, or lower the field's levels)"
                )
            if time.monotonic() > deadline:
                raise PlaybackError("no recording came back in time")

    def _use_room(self, name: str, summary: dict[str, Any], state: dict[str, Any]) -> None:
        room = summary["room"]
        rows = [{"band_hz": hz, **{k: room[k][i] for k in room}} for i, hz in enumerate(BANDS_HZ)]
        try:
            measured = room_from({"bands": rows})
        except DesignError as exc:
            state["room_error"] = f"zone {name} keeps its room: {exc}"
            return
        zone = self.zones[name]
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state["started"]))
        self._set_room(zone, measured, f"measured {when}", state.get("people"))
        state["room"] = "updated"

    async def _use_paths(
        self, name: str, summary: dict[str, Any], folder: Path, state: dict[str, Any]
    ) -> None:
        """A muted measurement that covered the zone's outputs into its pickup gives the zone
        the paths of its loop (for the loop-gain guard)."""
        settings = self._settings(name)
        files = {(p["output"], p["input"]): p["file"] for p in summary["pairs"]}
        if settings.pickup is None or any(
            (o, settings.pickup) not in files for o in settings.outputs
        ):
            return
        names = [files[(o, settings.pickup)] for o in settings.outputs]
        try:
            irs = await asyncio.to_thread(lambda: [read_ir(folder / n)[1] for n in names])
            paths = loop_paths(int(summary["fs"]), _stack(irs))
        except (OSError, ValueError) as exc:
            state["paths_error"] = f"zone {name}: the loop's paths not kept: {exc}"
            return
        zone = self.zones[name]
        zone.paths, zone.paths_source = paths, f"measurement {state['id']}"
        state["paths"] = "updated"

    def _settings(self, name: str) -> ZoneSettings:
        return next(z for z in self.config.zones if z.name == name)

    # --- adaptation ---------------------------------------------------------------------

    @property
    def adapting(self) -> bool:
        return self.adaptation is not None and self.adaptation["state"] not in ("done", "failed")

    def _adapting_zone(self) -> str | None:
        """The zone whose field the running adaptation drives (until it recalls the result)."""
        a = self.adaptation
        return None if a is None or a["state"] not in ("measuring", "adapting") else a["zone"]

    async def adapt(
        self,
        zone: str,
        mode: str,
        origin: Origin,
        iterations: int = 3,
        *,
        sweeps: int = 2,
        level_db: float = -30.0,
        sweep_s: float = 1.5,
        ir_s: float = 1.5,
        noise_s: float = 1.0,
    ) -> dict[str, Any]:
        """Adapt ``zone`` to ``mode`` by measurement (docs/acoustics.md, "Adaptation in the
        service"); returns the run's state once its first measurement has started, the rest
        goes on in a task (``self.adaptation``: measuring / adapting k of n / recalling /
        done / failed). 404 unknown zone or mode, 422 bad iterations or a zone that names no
        pickup, listener and source, or a plan the stream refuses, 409 no stream or busy."""
        if zone not in self.zones:
            raise PlaybackError(f"no sound-field zone '{zone}'", 404)
        if mode not in self.modes:
            known = ", ".join(sorted(self.modes))
            raise PlaybackError(f"no sound-field mode '{mode}' (modes: {known})", 404)
        if isinstance(iterations, bool) or not isinstance(iterations, int):
            raise PlaybackError(f"iterations must be an integer, got {iterations!r}", 422)
        if not 1 <= iterations <= MAX_ADAPT_ITERATIONS:
            raise PlaybackError(
                f"iterations must lie in 1 .. {MAX_ADAPT_ITERATIONS}, got {iterations}", 422
            )
        settings = self._settings(zone)
        if not settings.adaptable:
            raise PlaybackError(
                f"zone {zone}: adaptation needs its pickup, listener and source channels "
                "([[acoustics.zones]] pickup, listener, source)",
                422,
            )
        if self.adapting:
            assert self.adaptation is not None
            raise PlaybackError(f"adaptation {self.adaptation['id']} is still running", 409)
        assert settings.source is not None
        assert settings.pickup is not None
        assert settings.listener is not None
        outputs = [settings.source, *settings.outputs]
        inputs = [settings.pickup, settings.listener]
        measure: dict[str, Any] = {
            "sweeps": sweeps,
            "level_db": level_db,
            "sweep_s": sweep_s,
            "ir_s": ir_s,
        }
        # the paths, with the field muted: the stage loudspeaker and every enhancement
        # loudspeaker into the pickup and the listener microphone (``measure``'s own run:
        # stored and journalled as any measurement)
        started = await self.measure(
            origin, outputs=outputs, inputs=inputs, mute_inner=True, noise_s=noise_s, **measure
        )
        fs = int(self.driver.snapshot().samplerate)
        stats = self.driver.snapshot()
        self.adaptation = state = {
            "id": started["id"],
            "zone": zone,
            "mode": mode,
            "state": "measuring",
            "phase": "measuring the paths (the field muted)",
            "iteration": 0,
            "iterations": iterations,
            "worst_jnd": [],
            "started": time.time(),
            "by": origin.source,
            "measurement": started["id"],
            "source": settings.source,
            "outputs": list(settings.outputs),
            "pickup": settings.pickup,
            "listener": settings.listener,
            # the paths are measured through the stream the engine runs in, so the stream's
            # own delay (converters, buffers) is in every one of them already: nothing to add
            "latency_s": 0.0,
            "stream_latency_ms": round(1000 * (stats.input_latency_s + stats.output_latency_s), 2),
            "closed_loop": True,
            "people": self.people_now(),
            "error": "",
        }
        self._adapt_task = asyncio.create_task(
            self._adapt_run(state, settings, fs, measure, origin), name=f"acoustics-adapt:{zone}"
        )
        log.info("%s: adaptation of %s to '%s' started", origin.source, zone, mode)
        return dict(state)

    async def _adapt_run(
        self,
        state: dict[str, Any],
        settings: ZoneSettings,
        fs: int,
        measure: dict[str, Any],
        origin: Origin,
    ) -> None:
        t0 = time.perf_counter()
        try:
            await self._adapting(state, settings, fs, measure, origin)
        except asyncio.CancelledError:
            state["state"] = "failed"
            state["error"] = state.get("cancelled_by") or "cancelled"
            raise
        except (PlaybackError, AdaptError, OSError, ValueError, EOFError) as exc:
            state["state"], state["error"] = "failed", str(exc) or type(exc).__name__
            log.warning("adaptation %s failed: %s", state["id"], exc)
        except Exception as exc:  # the worker died, ...: never leave it "adapting"
            state["state"], state["error"] = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("adaptation %s failed", state["id"])
        finally:
            if state["state"] != "done":
                state["phase"] = "failed"
                state["state"] = "failed"
            self._stop_worker()
            keep = ("id", "zone", "mode", "iterations", "worst_jnd", "converged", "loop")
            await self._journal_run(origin, "acoustics.adapted", state, t0, keep, state["zone"])

    async def _adapting(
        self,
        state: dict[str, Any],
        settings: ZoneSettings,
        fs: int,
        measure: dict[str, Any],
        origin: Origin,
    ) -> None:
        name, mode = settings.name, state["mode"]
        task = self._measure_task
        assert task is not None
        assert self.var_dir is not None
        await asyncio.shield(task)
        m = self.measurement
        if m is None or m["id"] != state["measurement"] or m["state"] != "done":
            why = "" if m is None else m.get("error", "")
            raise PlaybackError(f"the measurement of the paths failed: {why}")
        folder = self.var_dir / state["id"]
        state["state"], state["phase"] = "adapting", "adapting: refining on the model"
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        job = AdaptJob(
            mode=self.modes[mode],
            layout=self.zones[name].layout,
            folder=str(folder),
            source=int(state["source"]),
            outputs=tuple(settings.outputs),
            pickup=int(state["pickup"]),
            listener=int(state["listener"]),
            latency_s=float(state["latency_s"]),
            iterations=int(state["iterations"]),
            cap=self.config.cap,
        )
        # A process of its own, not the design pool: the closed loop needs a two-way channel
        # to the worker (each iteration asks this loop to play and measure), and the design
        # pool's one worker must stay free for other zones' recalls meanwhile.
        proc = self._adapt_proc = ctx.Process(
            target=adapt_worker, args=(job, theirs), name=f"flytower-adapt-{name}", daemon=True
        )
        proc.start()
        theirs.close()
        try:
            result = await self._serve_worker(ours, state, settings, fs, measure, origin)
        finally:
            ours.close()
        paths: MeasuredPaths = result["paths"]
        params: FieldParams = result["params"]
        summary: dict[str, Any] = result["adaptation"]
        zone = self.zones[name]
        zone.paths, zone.paths_source = paths, f"adaptation {state['id']}"
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._set_room(zone, result["room"], f"adapted {when}", state.get("people"))
        final = {
            "converged": summary["converged"],
            "reason": summary["reason"],
            "best_iteration": summary["best_iteration"],
            "worst_jnd": _num(result["worst_jnd"]),
            "unreachable": summary["unreachable"],
            "held": summary["held"],
            "loop_gain_db": summary["iterations"][summary["best_iteration"]]["loop_gain_db"],
        }
        record = adaptation_record(state, summary, settings, params, paths, result["room"], final)
        await asyncio.to_thread(write_adaptation, folder, record)
        try:
            plot = await asyncio.get_running_loop().run_in_executor(
                self._design_pool(),
                _plot_adaptation,
                summary,
                str(folder / "adaptation.png"),
                self.modes[mode],
            )
            final["plot"] = Path(plot).name
        except Exception as exc:  # a plot is a nicety: the adaptation stands without it
            final["plot_error"] = str(exc)
        state["result"], state["converged"] = final, summary["converged"]
        self._adapted[(name, mode)] = (params, paths, final)
        # the adapted parameters in, crossfaded with the configured fades and journalled as
        # any recall (the guard checks them on the paths they were adapted on)
        state["state"], state["phase"] = "recalling", "recalling the adapted field"
        report: dict[str, Any] = {"mode": mode, "fade_s": None, "adaptation": state["id"]}
        sink = self.journal
        if sink is not None:
            await journalled(
                sink,
                origin,
                "acoustics.recall",
                lambda: self.recall(mode, None, origin, [name], report),
                targets=[name],
                args=report,
            )
        else:
            await self.recall(mode, None, origin, [name], report)
        state["loop"] = report.get("loop", {}).get(name)
        state["state"], state["phase"] = "done", "done"
        log.info("adaptation %s done: %s", state["id"], summary["reason"])

    async def _serve_worker(
        self,
        conn: Any,
        state: dict[str, Any],
        settings: ZoneSettings,
        fs: int,
        measure: dict[str, Any],
        origin: Origin,
    ) -> dict[str, Any]:
        """Answer the worker until it returns: each ``measure`` request plays the candidate
        parameters in the zone and measures the source into the listener microphone with
        the field running (the closed loop); progress after every iteration."""
        deadline = time.monotonic() + ADAPT_TIMEOUT_S
        while True:
            if time.monotonic() > deadline:
                raise PlaybackError(f"the adaptation took more than {ADAPT_TIMEOUT_S:g} s")
            ready = await asyncio.to_thread(conn.poll, 0.25)
            if not ready:
                proc = self._adapt_proc
                if proc is not None and not proc.is_alive() and not conn.poll():
                    raise PlaybackError(f"the adaptation worker died (exit {proc.exitcode})")
                continue
            kind, payload = await asyncio.to_thread(conn.recv)
            if kind == "result":
                return dict(payload)
            if kind == "error":
                raise AdaptError(str(payload))
            if kind == "iteration":
                index, worst = payload
                state["worst_jnd"].append(_num(worst))
                state["phase"] = f"adapting {index + 1} of {state['iterations']}: measured"
            elif kind == "measure":
                state["iteration"] += 1
                state["phase"] = (
                    f"adapting {state['iteration']} of {state['iterations']}: measuring"
                )
                try:
                    reply = await self._loop_measure(payload, settings, fs, measure, origin)
                except (PlaybackError, MeasurementError) as exc:
                    await asyncio.to_thread(conn.send, ("error", str(exc)))
                    continue
                # a recording is a few MB: sent from a thread, not from the event loop
                await asyncio.to_thread(conn.send, ("measured", reply))

    async def _loop_measure(
        self,
        params: FieldParams,
        settings: ZoneSettings,
        fs: int,
        measure: dict[str, Any],
        origin: Origin,
    ) -> tuple[MeasurementPlan, Recording | None, str | None]:
        """One closed-loop iteration: ``params`` in the zone (crossfaded, waited for), then a
        sweep from the stage loudspeaker into the listener microphone through the running
        field. The recording goes back to the worker, which deconvolves it."""
        name = settings.name
        assert self.send is not None
        fut: asyncio.Future[FieldReady] = asyncio.get_running_loop().create_future()
        old = self._ready.pop(name, None)
        if old is not None and not old.done():
            old.cancel()
        self._ready[name] = fut
        self.send(await self._set_field(name, params, 0.05, LOOP_FADE_S))
        async with asyncio.timeout(READY_TIMEOUT_S):
            await fut
        # the crossfade over, and the old field's tail gone (it rang with the room)
        tail = float(np.max(params.late.t60_s))
        await asyncio.sleep(LOOP_FADE_S + min(3.0, 0.5 * tail))
        ir_s = min(10.0, max(float(measure["ir_s"]), 1.2 * tail + 0.3))
        plan, run, _, _ = await self._start_run(
            origin,
            outputs=[int(settings.source or 0)],
            inputs=[int(settings.listener or 0)],
            mute_inner=False,
            zone=None,
            noise_s=0.0,
            **{**measure, "ir_s": ir_s},
        )
        done = self._done
        assert done is not None
        try:
            event = await self._recording(done, plan)
        except BaseException as exc:
            run["state"], run["error"] = "failed", str(exc)
            raise
        run["state"], run["percent"] = "done", 100.0
        return plan, event.recording, event.path

    def _stop_worker(self) -> None:
        proc, self._adapt_proc = self._adapt_proc, None
        if proc is not None and proc.is_alive():
            proc.terminate()
        if proc is not None:
            proc.join(timeout=0)

    def _check_id(self, run_id: str) -> Path:
        if self.var_dir is None:
            raise Unavailable("no measurement folder")
        if not run_id or len(run_id) > 64 or not all(c.isalnum() or c in "-_" for c in run_id):
            raise PlaybackError(f"no measurement '{run_id[:64]}'", 404)
        return self.var_dir / run_id / "summary.json"

    def measurements(self) -> list[dict[str, Any]]:
        """Every stored measurement, newest first: its parameters, room and warning count."""
        if self.var_dir is None or not self.var_dir.is_dir():
            return []
        out = []
        for summary in sorted(self.var_dir.glob("*/summary.json"), reverse=True):
            try:
                data = json.loads(summary.read_text())
            except (OSError, ValueError):
                continue
            keep = ("id", "started", "by", "outputs", "inputs", "sweeps", "level_db", "zone")
            out.append(
                {
                    **{k: data.get(k) for k in keep},
                    "mute_inner": data.get("mute_inner"),
                    "xruns": data.get("xruns"),
                    "room": data.get("room"),
                    "warnings": len(data.get("measurement", {}).get("warnings", [])),
                }
            )
        return out

    def measurement_result(self, run_id: str) -> dict[str, Any]:
        """One measurement's summary: metrics per pair and band, decay curves, warnings."""
        path = self._check_id(run_id)
        try:
            return dict(json.loads(path.read_text()))
        except FileNotFoundError:
            m = self.measurement
            if m is not None and m["id"] == run_id:
                raise PlaybackError(f"measurement {run_id} is {m['state']}", 409) from None
            raise PlaybackError(f"no measurement '{run_id}'", 404) from None

    async def stop(self, origin: Origin) -> dict[str, Any]:
        """Stop the test signal now: abort the running measurement (its block fades out) and
        cancel a running adaptation (failed, "cancelled by ..."; journalled as such), then
        give the adapted zone its mode again. Idempotent: with nothing running it says so.
        Returns what was stopped."""
        stopped: dict[str, Any] = {"measurement": None, "adaptation": None}
        a, task, adapted = self.adaptation, self._adapt_task, None
        if a is not None and self.adapting and task is not None and not task.done():
            a["cancelled_by"] = f"cancelled by {origin.source}"
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            stopped["adaptation"], adapted = a["id"], self.zones[a["zone"]]
        m = self.measurement
        if m is not None and m["state"] in ("starting", "measuring") and self.send is not None:
            with contextlib.suppress(Exception):  # a stream already gone plays nothing
                self.send(AbortMeasurement(m["id"]))
            stopped["measurement"] = m["id"]
            done = self._measure_task
            if done is not None and not done.done():
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    async with asyncio.timeout(READY_TIMEOUT_S):
                        await asyncio.shield(done)
        if adapted is not None and adapted.mode is not None:  # it played candidates
            try:
                await self.recall(adapted.mode, None, origin, [adapted.name])
            except (PlaybackError, Unavailable) as exc:
                stopped["recall_error"] = str(exc)
        if stopped["measurement"] is None and stopped["adaptation"] is None:
            stopped["note"] = "no measurement or adaptation was running"
        return stopped

    def adaptation_file(self, run_id: str, name: str) -> Path:
        """A finished adaptation's ``adaptation.json`` or ``adaptation.png`` (404: no such
        adaptation, or it has no such file; 409: it is still running)."""
        assert name in ("adaptation.json", "adaptation.png")
        path = self._check_id(run_id).with_name(name)
        if path.is_file():
            return path
        a = self.adaptation
        if a is not None and a["id"] == run_id and a["state"] not in ("done", "failed"):
            raise PlaybackError(f"adaptation {run_id} is {a['state']}", 409)
        raise PlaybackError(f"adaptation {run_id} has no {name}", 404)

    async def drain(self) -> None:
        """After ``close()``: let a cancelled adaptation journal its end (before the journal
        closes)."""
        if self._adapt_task is not None:
            await asyncio.gather(self._adapt_task, return_exceptions=True)

    def close(self) -> None:
        if self._adapt_task is not None:
            self._adapt_task.cancel()
        self._stop_worker()
        if self._measure_task is not None:
            self._measure_task.cancel()
        for fut in self._ready.values():
            if not fut.done():
                fut.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # --- observation ----------------------------------------------------------------------

    def _zone_snapshot(self, z: ZoneState) -> dict[str, Any]:
        return {
            "mode": z.mode,
            "state": z.state,
            "since": z.since,
            "latency": z.latency,
            "error": z.error,
            "room": {"source": z.room_source, "people": z.base_people, **_room_dict(z.room)},
            "occupancy": None
            if self.config.occupancy is None
            else {
                "people": z.people,
                "room": None if z.occupied is None else _room_dict(z.occupied),
                "note": z.occupancy_note,
            },
            "layout": z.layout.to_dict(),
            "design": None if z.design is None else z.design.to_dict(),
            "loop": dict(z.loop),
            "paths": z.paths_source or None,
            "adaptation": self._zone_adaptation(z),
            "restored": None if self.restored is None else self.restored[z.name].brief(),
        }

    def _zone_adaptation(self, z: ZoneState) -> dict[str, Any] | None:
        """The adaptation in force in the zone: its mode's, on the zone's current paths."""
        adapted = None if z.mode is None else self._adapted.get((z.name, z.mode))
        if adapted is None or adapted[1] is not z.paths or z.occupied is not None:
            return None
        return {"mode": z.mode, **adapted[2]}

    def snapshot(self) -> dict[str, Any]:
        return {
            "device": self.config.device,
            "running": self.send is not None,
            "measurement": None if self.measurement is None else dict(self.measurement),
            "adaptation": None if self.adaptation is None else _copy(self.adaptation),
            "bands_hz": list(BANDS_HZ),
            "modes": {name: _mode_dict(m) for name, m in sorted(self.modes.items())},
            "zones": {n: self._zone_snapshot(z) for n, z in self.zones.items()},
            "occupancy": dict(self.occupancy),
        }


def _rounded(values: Any) -> list[float | None]:
    return [round(float(v), 3) if math.isfinite(v) else None for v in values]


def _copy(state: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, list) else v for k, v in state.items()}


def _resolve(fut: asyncio.Future[Any] | None, value: Any) -> None:
    if fut is not None and not fut.done():
        fut.set_result(value)


def _room_dict(room: Room) -> dict[str, Any]:
    def clean(values: Any) -> list[float | None]:
        return [None if v != v else round(float(v), 4) for v in values]  # NaN -> None

    return {"t30_s": clean(room.t30_s), "c80_db": clean(room.c80_db)}


def _mode_dict(m: Mode) -> dict[str, Any]:
    return m.to_dict()
