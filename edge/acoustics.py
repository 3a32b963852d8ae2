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
- ``snapshot()``: modes and their targets, the measurement's state, zones with their mode,
  state and latencies, the room each design assumed, and each zone's design (predicted
  values, what is not reachable and why), for the API and the console.

Without a configured or measured room a zone's design assumes ``DEFAULT_ROOM`` (a dry
multi-purpose room) and says so in its notes.
"""

from __future__ import annotations

import asyncio
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

from controller.journal import JournalEvent, JournalSink, Origin, Result, SourceKind
from controller.playback.ports import PlaybackError, Unavailable
from dsp.design import Design, DesignError, Room, design, room_from
from dsp.engine import FadeDone, FieldReady, SetField, SoundFieldFactory
from dsp.field import BANDS_HZ
from dsp.layout import Layout
from dsp.measure import (
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
from dsp.presets import Mode, ModeError
from edge.acoustics_config import AcousticsConfig

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 15.0  # a SetField is built (and its crossfade started) within this
DESIGN_TIMEOUT_S = 120.0  # the first design also starts the design process
DEFAULT_ROOM: Mapping[str, Any] = {
    # A dry multi-purpose room (mid T ~1 s, C80 ~ +3 dB), assumed until one is configured or
    # measured; the design's notes say so.
    "t30_s": [1.2, 1.1, 1.0, 1.0, 0.95, 0.85],
    "c80_db": [1.5, 2.0, 3.0, 3.0, 3.5, 4.0],
}


def _design(mode: Mode, layout: Layout, room: Room, cap: float) -> Design:
    """Run in the design process (module level: pickled by name)."""
    return design(mode, layout, room, cap=cap)


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
        entry: dict[str, Any] = {"output": p.output, "input": p.input, "file": name}
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
        self._designs: dict[tuple[str, str, int], Design] = {}
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

    def factory(self) -> MeasurementFactory:
        """The stream's processor under the player: the measurement wrapping the engine."""
        return MeasurementFactory(inner=SoundFieldFactory(self.config.engine_config()))

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
    ) -> dict[str, Any]:
        """Crossfade ``zones`` (None: every zone) to ``mode`` over ``fade_s`` (None: the
        configured fades). Returns when every zone's crossfade has started."""
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
        async with self._lock:
            designs = await asyncio.gather(*(self._design_for(z, mode) for z in names))
            loop = asyncio.get_running_loop()
            waits = []
            for name, d in zip(names, designs, strict=True):
                zone = self.zones[name]
                zone.mode, zone.design, zone.error = mode, d, ""
                zone.state, zone.since = "designing", time.time()
                fut: asyncio.Future[FieldReady] = loop.create_future()
                old = self._ready.pop(name, None)
                if old is not None and not old.done():
                    old.cancel()
                self._ready[name] = fut
                early = self.config.early_fade_s if fade_s is None else min(fade_s, 0.1)
                try:
                    self.send(SetField(name, d.params, early_fade_s=early, late_fade_s=fade_s))
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

    async def _design_for(self, name: str, mode: str) -> Design:
        zone = self.zones[name]
        key = (name, mode, id(zone.room))
        cached = self._designs.get(key)
        if cached is not None:
            return cached
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(DESIGN_TIMEOUT_S):
                d = await loop.run_in_executor(
                    self._pool, _design, self.modes[mode], zone.layout, zone.room, self.config.cap
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
        self._designs[key] = d
        return d

    async def run(self, streaming: Callable[[], bool], period_s: float = 0.5) -> None:
        """Keep every zone playing the mode it should: at start the configured initial modes,
        and after the stream is restarted (a new engine starts silent) the last recalled
        ones. Failures are logged and retried every ``period_s`` until the service stops."""
        origin = Origin(SourceKind.SYSTEM, "sound field")
        for settings in self.config.zones:
            self.zones[settings.name].mode = settings.mode
        warned: set[str] = set()
        while True:
            await asyncio.sleep(period_s)
            if not streaming() or self._lock.locked():
                continue
            by_mode: dict[str, list[str]] = {}
            for z in self.zones.values():
                if z.mode is not None and z.state == "silent":
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
        self._measure_task = asyncio.create_task(
            self._complete(plan, state, folder, xruns, origin),
            name=f"acoustics-measure:{run_id}",
        )
        log.info("%s: measurement %s started (%.1f s)", origin.source, run_id, plan.seconds)
        return dict(state)

    async def _complete(
        self, plan: MeasurementPlan, state: dict[str, Any], folder: Path, xruns: int, origin: Origin
    ) -> None:
        t0 = time.perf_counter()
        try:
            await self._measured(plan, state, folder, xruns)
        finally:
            if self.journal is not None:
                ok = state["state"] == "done"
                keep = ("id", "zone", "xruns", "warnings", "room")
                event = JournalEvent(
                    kind=origin.kind,
                    source=origin.source,
                    command="acoustics.measured",
                    result=Result.OK if ok else Result.FAILED,
                    requested=state["started"],
                    executed=time.time(),
                    duration_s=time.perf_counter() - t0,
                    reason="" if ok else str(state["error"] or "cancelled"),
                    targets=(self.config.device,),
                    args={k: state[k] for k in keep if state.get(k) is not None},
                )
                try:
                    await asyncio.shield(self.journal.append(event))
                except Exception:  # the journal's own failure is logged there
                    log.warning("measurement %s: not journalled", state["id"])

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
        zone.room = measured
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state["started"]))
        zone.room_source = f"measured {when}"
        state["room"] = "updated"

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

    def close(self) -> None:
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
            "room": {"source": z.room_source, **_room_dict(z.room)},
            "layout": z.layout.to_dict(),
            "design": None if z.design is None else z.design.to_dict(),
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "device": self.config.device,
            "running": self.send is not None,
            "measurement": None if self.measurement is None else dict(self.measurement),
            "bands_hz": list(BANDS_HZ),
            "modes": {name: _mode_dict(m) for name, m in sorted(self.modes.items())},
            "zones": {n: self._zone_snapshot(z) for n, z in self.zones.items()},
        }


def _resolve(fut: asyncio.Future[Any] | None, value: Any) -> None:
    if fut is not None and not fut.done():
        fut.set_result(value)


def _room_dict(room: Room) -> dict[str, Any]:
    def clean(values: Any) -> list[float | None]:
        return [None if v != v else round(float(v), 4) for v in values]  # NaN -> None

    return {"t30_s": clean(room.t30_s), "c80_db": clean(room.c80_db)}


def _mode_dict(m: Mode) -> dict[str, Any]:
    return m.to_dict()
