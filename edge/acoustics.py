"""The sound field in the service (docs/acoustics.md, "In the service").

A venue's ``[acoustics]`` names the audio device whose stream runs the sound-field engine
(``dsp.engine``) under the file player, and its zones: which device inputs (microphones) feed a
zone, which outputs (loudspeakers) it plays on, the loudspeaker layout, and the natural room the
design starts from. ``SoundFieldControl`` is the service's side of it:

- ``factory()``: the engine's picklable processor factory, given to the device's file player as
  its ``inner`` processor (the player mixes sounds over the field);
- ``recall(mode, fade_s, origin)``: the cue engine's ``audio.soundfield`` (``edge.audio``'s
  ``SoundField``) and the API's: designs the mode for every zone (``dsp.design``, in a process
  of its own: a design is about a second of Python, which must not hold this event loop's
  GIL while the axis cycles and the lighting run on it), sends each zone's ``SetField`` through
  the stream's control channel, and returns when the engine has built every new parameter set
  and started the crossfade (``FieldReady``); ``FadeDone`` marks the end of the crossfade.
  Designs are cached per zone, mode and room, so a recall of a mode used before is immediate;
- ``snapshot()``: modes and their targets, zones with their mode, state and latencies, the
  room each design assumed, and each zone's design (predicted values, what is not reachable
  and why), for the API and the console.

Without a configured or measured room a zone's design assumes ``DEFAULT_ROOM`` (a dry
multi-purpose room) and says so in its notes.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.journal import Origin, SourceKind
from controller.playback.ports import PlaybackError, Unavailable
from dsp.design import Design, DesignError, Room, design, room_from
from dsp.engine import EngineConfig, FadeDone, FieldReady, SetField, SoundFieldFactory, ZoneConfig
from dsp.field import BANDS_HZ
from dsp.layout import Layout, LayoutError, layout_from_dict
from dsp.presets import MODES, Mode, ModeError, mode_from_dict

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 15.0  # a SetField is built (and its crossfade started) within this
DESIGN_TIMEOUT_S = 120.0  # the first design also starts the design process
DEFAULT_ROOM: Mapping[str, Any] = {
    # A dry multi-purpose room (mid T ~1 s, C80 ~ +3 dB), assumed until one is configured or
    # measured; the design's notes say so.
    "t30_s": [1.2, 1.1, 1.0, 1.0, 0.95, 0.85],
    "c80_db": [1.5, 2.0, 3.0, 3.0, 3.5, 4.0],
}
ZoneName = str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ZoneSettings(_Strict):
    """One zone of ``[acoustics]``: 1-based device channels, its layout (channels 1..outputs)."""

    name: ZoneName = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    inputs: list[int] = Field(min_length=1, max_length=64)
    outputs: list[int] = Field(min_length=1, max_length=64)
    layout: dict[str, Any]
    room: dict[str, Any] | None = None  # the natural room where this zone's listeners are
    mode: str | None = None  # recalled at start

    @model_validator(mode="after")
    def _check(self) -> Self:
        for what, chans in (("inputs", self.inputs), ("outputs", self.outputs)):
            if any(not 1 <= c <= 512 for c in chans):
                raise ValueError(f"zone {self.name}: {what} are 1-based channels 1..512")
            if len(set(chans)) != len(chans):
                raise ValueError(f"zone {self.name}: a channel is named twice in {what}")
        try:
            self.layout_obj()
        except LayoutError as exc:
            raise ValueError(f"zone {self.name}: layout: {exc}") from None
        if self.room is not None:
            try:
                room_from(self.room)
            except DesignError as exc:
                raise ValueError(f"zone {self.name}: {exc}") from None
        return self

    def layout_obj(self) -> Layout:
        return layout_from_dict({"n_out": len(self.outputs), **self.layout})


class AcousticsConfig(_Strict):
    """``[acoustics]`` of the venue file (docs/interfaces/venue-file.md)."""

    device: str = Field(min_length=1)
    zones: list[ZoneSettings] = Field(min_length=1, max_length=32)
    modes: list[dict[str, Any]] = Field(default_factory=list, max_length=64)  # custom modes
    room: dict[str, Any] | None = None  # the natural room of zones without their own
    cap: float = Field(default=2.0, ge=1.0, le=10.0, allow_inf_nan=False)
    early_fade_s: float = Field(default=0.1, ge=0, le=60, allow_inf_nan=False)
    late_fade_s: float = Field(default=1.5, ge=0, le=60, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> Self:
        names = [z.name for z in self.zones]
        if len(set(names)) != len(names):
            raise ValueError(f"acoustics: zone names must be unique, got {names}")
        try:
            modes = self.all_modes()
        except ModeError as exc:
            raise ValueError(f"acoustics.modes: {exc}") from None
        if self.room is not None:
            try:
                room_from(self.room)
            except DesignError as exc:
                raise ValueError(f"acoustics: {exc}") from None
        for z in self.zones:
            if z.mode is not None and z.mode not in modes:
                raise ValueError(
                    f"zone {z.name}: no mode '{z.mode}' (modes: {', '.join(sorted(modes))})"
                )
        return self

    def all_modes(self) -> dict[str, Mode]:
        out = dict(MODES)
        for data in self.modes:
            m = mode_from_dict(data)
            out[m.name] = m
        return out

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            zones=tuple(
                ZoneConfig(z.name, tuple(c - 1 for c in z.inputs), tuple(c - 1 for c in z.outputs))
                for z in self.zones
            ),
            early_fade_s=self.early_fade_s,
            late_fade_s=self.late_fade_s,
        )


def _design(mode: Mode, layout: Layout, room: Room, cap: float) -> Design:
    """Run in the design process (module level: pickled by name)."""
    return design(mode, layout, room, cap=cap)


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

    def factory(self) -> SoundFieldFactory:
        return SoundFieldFactory(self.config.engine_config())

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

    def on_control_error(self, text: str) -> None:
        """The engine refused a SetField: fail every recall waiting for one."""
        for name, fut in list(self._ready.items()):
            if not fut.done():
                fut.set_exception(PlaybackError(f"zone {name}: the engine refused: {text}"))
        self._ready.clear()

    def on_stream_lost(self, why: str) -> None:
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

    def close(self) -> None:
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
            "bands_hz": list(BANDS_HZ),
            "modes": {name: _mode_dict(m) for name, m in sorted(self.modes.items())},
            "zones": {n: self._zone_snapshot(z) for n, z in self.zones.items()},
        }


def _room_dict(room: Room) -> dict[str, Any]:
    def clean(values: Any) -> list[float | None]:
        return [None if v != v else round(float(v), 4) for v in values]  # NaN -> None

    return {"t30_s": clean(room.t30_s), "c80_db": clean(room.c80_db)}


def _mode_dict(m: Mode) -> dict[str, Any]:
    return m.to_dict()
