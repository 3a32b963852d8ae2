"""The acoustic-room family: venue declaration -> room devices -> JACK clients with live IRs.

A room is declared on an ``audio_interface`` device (the stream Flytower opens) as
``simulate = { model = "room", ... }``; docs/interfaces/acoustic-room.md lists the parameters.
Per room, ``hosts()`` yields one ``RoomHost`` that runs the JACK client (``jack.RoomStream``)
and one task that keeps the IR in step with the room's state: whenever the state changes
(occupancy, doors), it computes the IRs and their metrics in a worker process (slow:
pyroomacoustics, cached on disk by ``room.IrCache``), sends them to the client, and records
them as "playing" when the client reports the crossfade done. A change that arrives while an
IR is being computed is picked up right after it: only the latest state is ever computed.

Faults (the control endpoint's ``inject``/``clear``): ``occupancy {fraction}``, ``doors_open``,
``noise_level {db_spl}``. Clearing returns to the venue's declared value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simulators.acoustics.jack import HostConfig, RoomStream, RoomStreamError, port_names
from simulators.acoustics.room import (
    BANDS_HZ,
    SHOEBOX_WALLS,
    IrCache,
    RoomError,
    RoomModel,
    RoomState,
    compute_irs,
    material_coeffs,
)
from simulators.acoustics.truth import measure
from simulators.core import DeviceSpec, FaultError, FaultInfo, SimulationError, check_params

log = logging.getLogger(__name__)

ANY = object  # check_params passes values of any other type through; validated below
PARAMS: dict[str, type] = {
    "dimensions": ANY,
    "corners": ANY,
    "height": float,
    "materials": ANY,
    "scattering": float,
    "audience_area_m2": float,
    "seats_empty": ANY,
    "seats_occupied": ANY,
    "occupancy": float,
    "doors_open": bool,
    "door_area_m2": float,
    "door_wall": str,
    "speakers": ANY,
    "mics": ANY,
    "ir_seconds": float,
    "max_order": int,
    "rays": int,
    "seed": int,
    "air_absorption": bool,
    "ir_wav": str,
    "occupied_rt_ratio": float,
    "doors_rt_ratio": float,
    "noise_db_spl": float,
    "full_scale_db_spl": float,
    "crossfade_s": float,
    "blocksize": int,
    "device": str,
    "client_name": str,
    "flytower_client": str,
    "speaker_channels": ANY,
    "mic_channels": ANY,
    "cache_dir": str,
}
DEFAULT_CLIENT = r"PortAudio(-[0-9]+)?"
CACHE_ENV = "FLYTOWER_SIM_CACHE"

FAULTS = (
    FaultInfo(
        "occupancy",
        "Audience in the seats: the seating area absorbs as occupied (crossfades in a new IR)",
        {"fraction": "float, 0..1, default 1.0"},
    ),
    FaultInfo("doors_open", "The doors stand open: their area absorbs everything", {}),
    FaultInfo(
        "noise_level",
        "Background noise at another level (ventilation on, audience murmur)",
        {"db_spl": "float, dB SPL, default 45.0"},
    ),
)


@dataclass(frozen=True)
class RoomConfig:
    """A room's declaration beyond what shapes the IR."""

    model: RoomModel
    initial: RoomState
    noise_db_spl: float
    full_scale_db_spl: float
    crossfade_s: float
    host: HostConfig
    cache_dir: Path

    def noise_rms(self, db_spl: float) -> float:
        return 10 ** ((db_spl - self.full_scale_db_spl) / 20)


class RoomDevice:
    """One simulated room: its state, its faults and what it plays now."""

    def __init__(self, spec: DeviceSpec, config: RoomConfig) -> None:
        self._id = spec.id
        self.config = config
        self.state = config.initial
        self.noise_db_spl = config.noise_db_spl
        self._active: dict[str, dict[str, Any]] = {}
        # What the JACK client plays: the state of its IR, that IR's metrics, its version.
        self.playing: RoomState | None = None
        self.metrics: dict[str, Any] | None = None
        self.version = 0
        self.computing = False
        self.changed = asyncio.Event()  # the IR task waits on it
        self.stream: RoomStream | None = None

    @property
    def id(self) -> str:
        return self._id

    @property
    def model(self) -> str:
        return "room"

    def truth(self) -> dict[str, Any]:
        counters = self.stream.counters() if self.stream is not None else {}
        return {
            "occupancy": self.state.occupancy,
            "doors_open": self.state.doors_open,
            "noise_db_spl": self.noise_db_spl,
            "settled": self.playing == self.state,
            "computing": self.computing,
            "playing": None
            if self.playing is None
            else {
                "occupancy": self.playing.occupancy,
                "doors_open": self.playing.doors_open,
                "version": self.version,
            },
            "speakers": self.config.model.n_speakers,
            "mics": self.config.model.n_mics,
            "samplerate": self.config.model.samplerate,
            "volume_m3": None if self.config.model.ir_wav else round(self.config.model.volume(), 2),
            "metrics": self.metrics,
            "stream": {
                "running": self.stream is not None and self.stream.running,
                "client": self.config.host.client_name,
                "callbacks": int(counters.get("callbacks", 0)),
                "xruns": int(counters.get("xruns", 0)),
            },
        }

    def fault_catalogue(self) -> Sequence[FaultInfo]:
        return FAULTS

    def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        if fault == "occupancy":
            fraction = _number(params, "fraction", 1.0, fault)
            if not 0 <= fraction <= 1:
                raise FaultError(f"occupancy: fraction must lie in 0..1, got {fraction}")
            self._set_state(replace(self.state, occupancy=round(fraction, 3)))
            self._active[fault] = {"fraction": fraction}
        elif fault == "doors_open":
            if params:
                raise FaultError(f"doors_open takes no parameters, got {sorted(params)}")
            self._set_state(replace(self.state, doors_open=True))
            self._active[fault] = {}
        elif fault == "noise_level":
            level = _number(params, "db_spl", 45.0, fault)
            if not -20 <= level <= self.config.full_scale_db_spl:
                raise FaultError(
                    f"noise_level: db_spl must lie in -20..{self.config.full_scale_db_spl:g}"
                )
            self._set_noise(level)
            self._active[fault] = {"db_spl": level}
        else:
            known = ", ".join(f.name for f in FAULTS)
            raise FaultError(f"{self._id}: unknown fault {fault!r} (known: {known})")

    def clear(self, fault: str | None = None) -> None:
        names = [f.name for f in FAULTS] if fault is None else [fault]
        for name in names:
            if name not in {f.name for f in FAULTS}:
                raise FaultError(f"{self._id}: unknown fault {name!r}")
            self._active.pop(name, None)
            if name == "occupancy":
                self._set_state(replace(self.state, occupancy=self.config.initial.occupancy))
            elif name == "doors_open":
                self._set_state(replace(self.state, doors_open=self.config.initial.doors_open))
            else:
                self._set_noise(self.config.noise_db_spl)

    def active_faults(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._active.items()}

    def _set_state(self, state: RoomState) -> None:
        if state != self.state:
            self.state = state
            self.changed.set()

    def _set_noise(self, level: float) -> None:
        self.noise_db_spl = level
        if self.stream is not None and self.stream.running:
            self.stream.send("noise", self.config.noise_rms(level))


def _number(params: Mapping[str, Any], name: str, default: float, fault: str) -> float:
    unknown = sorted(set(params) - {name})
    if unknown:
        raise FaultError(f"{fault}: unknown parameter(s) {', '.join(unknown)} (known: {name})")
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultError(f"{fault}: {name} must be a finite number, got {value!r}")
    return float(value)


# --- the IR job (runs in a worker process) ----------------------------------------------------


def ir_job(
    model: RoomModel, state: RoomState, cache_dir: str
) -> tuple[NDArray[np.float32], dict[str, Any], bool]:
    """The IRs and metrics of ``model`` in ``state``, from the disk cache or computed now."""
    cache = IrCache(Path(cache_dir))
    key = model.cache_key(state)
    hit = cache.load(key)
    if hit is not None:
        return hit[0], hit[1], True
    irs = compute_irs(model, state)
    metrics = measure(irs, model.samplerate)
    cache.store(key, irs, metrics)
    return irs, metrics, False


# --- the family -------------------------------------------------------------------------------


class RoomFamily:
    """Every ``room`` in one simulator process."""

    models = frozenset({"room"})

    def __init__(self, venue: Mapping[str, Any]) -> None:
        self._venue = venue
        self.rooms: list[RoomDevice] = []
        self._pool: ProcessPoolExecutor | None = None
        self._accepting = False
        self._computed = 0
        self._cache_hits = 0
        self._started = time.monotonic()

    def add(self, spec: DeviceSpec) -> RoomDevice:
        try:
            config = room_config(spec)
        except RoomError as exc:
            raise SimulationError(f"{spec.where}: {exc}") from exc
        if any(r.config.host.client_name == config.host.client_name for r in self.rooms):
            raise SimulationError(
                f"{spec.where}.client_name: JACK client {config.host.client_name!r} is taken"
            )
        device = RoomDevice(spec, config)
        self.rooms.append(device)
        return device

    def hosts(self) -> Sequence[AbstractAsyncContextManager[Any]]:
        return [self._workers(), *(RoomHost(self, room) for room in self.rooms)]

    @contextlib.asynccontextmanager
    async def _workers(self) -> AsyncIterator[None]:
        self._accepting = True
        try:
            yield
        finally:
            self._accepting = False
            pool, self._pool = self._pool, None
            if pool is not None:
                await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)

    def _workers_pool(self) -> ProcessPoolExecutor:
        assert self._accepting, "enter the family's hosts first"
        if self._pool is None:
            # A process, not a thread: pyroomacoustics holds the GIL for seconds at a time.
            # Started on the first cache miss: a venue whose IRs are cached never imports it.
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def irs_for(
        self, room: RoomDevice, state: RoomState
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        cfg = room.config
        started = time.monotonic()
        key = cfg.model.cache_key(state)
        hit = await asyncio.to_thread(IrCache(cfg.cache_dir).load, key)
        if hit is not None:
            irs, metrics, cached = hit[0], hit[1], True
        else:
            log.info("room %s: computing IRs for %s", room.id, state.describe())
            job = asyncio.get_running_loop().run_in_executor(
                self._workers_pool(), ir_job, cfg.model, state, str(cfg.cache_dir)
            )
            while True:
                done, _ = await asyncio.wait([job], timeout=5.0)
                if done:
                    break
                log.info(
                    "room %s: still computing IRs (%.0f s)", room.id, time.monotonic() - started
                )
            irs, metrics, cached = job.result()
        if cached:
            self._cache_hits += 1
        else:
            self._computed += 1
        log.info(
            "room %s: IRs for %s %s in %.1f s (cache %s); mean T30 %s s",
            room.id,
            state.describe(),
            "from the cache" if cached else "computed",
            time.monotonic() - started,
            cfg.cache_dir,
            metrics["mean"]["t30_s"],
        )
        return irs, metrics

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rooms": len(self.rooms),
            "ir_computations": self._computed,
            "ir_cache_hits": self._cache_hits,
        }
        for room in self.rooms:
            if room.stream is None:
                continue
            c = room.stream.counters()
            audio_s = c["callbacks"] * room.config.host.blocksize / room.config.model.samplerate
            out[room.id] = {
                "callbacks": int(c["callbacks"]),
                "xruns": int(c["xruns"]),
                "callback_load": round(c["busy_s"] / audio_s, 4) if audio_s else 0.0,
                "callback_max_ms": round(1000 * c["busy_max_s"], 3),
            }
        return out


class RoomHost:
    """One room's JACK client plus the task that keeps its IR in step with its state."""

    def __init__(self, family: RoomFamily, room: RoomDevice) -> None:
        self._family = family
        self._room = room
        self._task: asyncio.Task[None] | None = None
        self._stream: RoomStream | None = None
        self._versions: dict[int, tuple[RoomState, dict[str, Any]]] = {}

    async def __aenter__(self) -> RoomHost:
        room = self._room
        self._stream = RoomStream(room.config.host, self._on_event)
        await self._stream.__aenter__()
        room.stream = self._stream
        log.info(
            "room %s: JACK client %s up (%d speakers, %d mics); patching clients matching %r",
            room.id,
            room.config.host.client_name,
            room.config.model.n_speakers,
            room.config.model.n_mics,
            room.config.host.flytower_client,
        )
        room.changed.set()  # the first IR
        self._task = asyncio.create_task(self._follow(), name=f"room-{room.id}-ir")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._room.stream = None
        if self._stream is not None:
            await self._stream.__aexit__(None, None, None)

    async def _follow(self) -> None:
        room = self._room
        sent: RoomState | None = None
        while True:
            await room.changed.wait()
            room.changed.clear()
            state = room.state
            if state == sent:
                continue
            room.computing = True
            try:
                irs, metrics = await self._family.irs_for(room, state)
            except (RoomError, OSError, ValueError) as exc:
                log.error("room %s: no IR for %s: %s", room.id, state.describe(), exc)
                continue
            finally:
                room.computing = False
            assert self._stream is not None
            version = room.version + len(self._versions) + 1
            self._versions[version] = (state, metrics)
            try:
                self._stream.send("ir", version, irs)
            except RoomStreamError as exc:
                log.error("room %s: %s", room.id, exc)
                return
            sent = state

    def _on_event(self, message: tuple[Any, ...]) -> None:
        room = self._room
        if message[0] == "applied":
            version = int(message[1])
            state, metrics = self._versions.pop(version)
            for older in [v for v in self._versions if v < version]:
                del self._versions[older]
            room.playing, room.metrics, room.version = state, metrics, version
            log.info("room %s: now playing %s (IR version %d)", room.id, state.describe(), version)
        elif message[0] == "aborted":
            log.error("room %s: JACK client stopped: %s", room.id, message[1])


# --- declaration ------------------------------------------------------------------------------


def room_config(spec: DeviceSpec) -> RoomConfig:
    """Validate a room's ``simulate`` table and its ``audio`` transport."""
    transport = spec.transport
    if transport.get("kind") != "audio":
        raise RoomError(f"a room needs an audio transport, not {transport.get('kind')!r}")
    p = check_params(spec, PARAMS)
    samplerate = int(transport.get("samplerate", 48000))
    ir_wav = p.get("ir_wav")
    speakers = _positions(p.get("speakers"), "speakers", ir_wav is not None)
    mics = _positions(p.get("mics"), "mics", ir_wav is not None)
    ir_seconds = p.get("ir_seconds", 2.0)
    if not 0.05 <= ir_seconds <= 20:
        raise RoomError(f"ir_seconds must lie in 0.05..20, got {ir_seconds}")
    fields: dict[str, Any] = {
        "samplerate": samplerate,
        "ir_seconds": ir_seconds,
        "speakers": speakers,
        "mics": mics,
        "max_order": _bounded(p, "max_order", 3, 0, 50),
        "rays": _bounded(p, "rays", 5000, 0, 1_000_000),
        "seed": _bounded(p, "seed", 0, 0, 2**63 - 1),
        "air_absorption": p.get("air_absorption", True),
        "scattering": _bounded(p, "scattering", 0.1, 0.0, 1.0),
        "occupied_rt_ratio": _bounded(p, "occupied_rt_ratio", 0.75, 0.1, 1.0),
        "doors_rt_ratio": _bounded(p, "doors_rt_ratio", 0.9, 0.1, 1.0),
    }
    if ir_wav is not None:
        path = Path(ir_wav).expanduser()
        if not path.is_file():
            raise RoomError(f"ir_wav: no file {path}")
        fields["ir_wav"] = str(path.resolve())
    else:
        fields.update(_geometry(p, speakers + mics))
    model = RoomModel(**fields)
    if ir_wav is None:
        _check_areas(model)
    initial = RoomState(
        occupancy=_bounded(p, "occupancy", 0.0, 0.0, 1.0), doors_open=p.get("doors_open", False)
    )
    full_scale = _bounded(p, "full_scale_db_spl", 120.0, 60.0, 200.0)
    noise = _bounded(p, "noise_db_spl", 30.0, -20.0, full_scale)
    crossfade_s = _bounded(p, "crossfade_s", 0.25, 0.0, 5.0)
    blocksize = _bounded(p, "blocksize", 256, 16, 8192)
    speaker_channels = _channels(p.get("speaker_channels"), model.n_speakers, "speaker_channels")
    mic_channels = _channels(p.get("mic_channels"), model.n_mics, "mic_channels")
    client = p.get("client_name", "room-" + re.sub(r"[^A-Za-z0-9_.-]", "-", spec.id))
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,48}", client):
        raise RoomError(f"client_name: {client!r} is not a plain JACK client name")
    pattern = p.get("flytower_client", DEFAULT_CLIENT)
    try:
        if re.compile(pattern).fullmatch(client):
            raise RoomError(f"flytower_client {pattern!r} matches the room's own client {client!r}")
    except re.error as exc:
        raise RoomError(f"flytower_client: {exc}") from exc
    cache_dir = Path(
        p.get("cache_dir") or os.environ.get(CACHE_ENV) or "~/.cache/flytower/rooms"
    ).expanduser()
    host = HostConfig(
        client_name=client,
        jack_server=transport.get("jack_server"),
        device=p.get("device", "system"),
        samplerate=samplerate,
        blocksize=blocksize,
        n_speakers=model.n_speakers,
        n_mics=model.n_mics,
        ir_length=model.length,
        crossfade=round(crossfade_s * samplerate),
        noise_rms=10 ** ((noise - full_scale) / 20),
        flytower_client=pattern,
        speaker_ports=port_names("out", speaker_channels),
        mic_ports=port_names("in", mic_channels),
    )
    return RoomConfig(model, initial, noise, full_scale, crossfade_s, host, cache_dir)


def _bounded(p: Mapping[str, Any], name: str, default: Any, lo: float, hi: float) -> Any:
    value = p.get(name, default)
    if not lo <= value <= hi:
        raise RoomError(f"{name} must lie in {lo:g}..{hi:g}, got {value}")
    return value


def _floats(value: Any, n: int, what: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != n:
        raise RoomError(f"{what}: expected {n} numbers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise RoomError(f"{what}: expected numbers, got {v!r}")
        out.append(float(v))
    return tuple(out)


def _positions(
    value: Any, what: str, count_allowed: bool
) -> tuple[tuple[float, float, float], ...]:
    if count_allowed and isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return ((0.0, 0.0, 0.0),) * value  # a measured IR: only the count matters
    if not isinstance(value, list) or not value:
        raise RoomError(f"{what}: expected a list of [x, y, z] positions in metres")
    positions = []
    for i, pos in enumerate(value):
        x, y, z = _floats(pos, 3, f"{what}[{i}]")
        positions.append((x, y, z))
    return tuple(positions)


def _channels(value: Any, n: int, what: str) -> tuple[int, ...]:
    if value is None:
        return tuple(range(1, n + 1))
    if not isinstance(value, list) or len(value) != n:
        raise RoomError(f"{what}: expected {n} channel numbers, got {value!r}")
    if not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 1024 for c in value):
        raise RoomError(f"{what}: channels are whole numbers 1..1024, got {value!r}")
    return tuple(value)


def _geometry(p: Mapping[str, Any], points: Sequence[tuple[float, float, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if ("dimensions" in p) == ("corners" in p):
        raise RoomError("give either dimensions = [x, y, z] or corners = [[x, y], ...] + height")
    if "dimensions" in p:
        dims = _floats(p["dimensions"], 3, "dimensions")
        if min(dims) <= 0:
            raise RoomError(f"dimensions must be positive, got {list(dims)}")
        out["dimensions"] = dims
        walls: tuple[str, ...] = SHOEBOX_WALLS
        for pos in points:
            if not all(0 < c < d for c, d in zip(pos, dims, strict=True)):
                raise RoomError(f"position {list(pos)} lies outside the room {list(dims)}")
    else:
        corners = p["corners"]
        if not isinstance(corners, list) or len(corners) < 3:
            raise RoomError("corners: expected at least 3 [x, y] floor-plan corners")
        out["corners"] = tuple(_floats(c, 2, f"corners[{i}]") for i, c in enumerate(corners))
        height = p.get("height", 0.0)
        if height <= 0:
            raise RoomError("height: a polygon room needs a positive height in metres")
        out["height"] = height
        walls = tuple(str(i) for i in range(len(corners)))
        for pos in points:
            if not 0 < pos[2] < height or not _inside(pos[:2], out["corners"]):
                raise RoomError(f"position {list(pos)} lies outside the room")
    out["surfaces"] = _surfaces(p.get("materials"), walls)
    out["door_wall"] = p.get("door_wall", walls[2] if len(walls) > 2 else walls[0])
    if out["door_wall"] not in walls:
        raise RoomError(f"door_wall {out['door_wall']!r} is not one of {', '.join(walls)}")
    out["door_area_m2"] = _bounded(p, "door_area_m2", 4.0, 0.0, 1e6)
    out["audience_area_m2"] = _bounded(p, "audience_area_m2", 0.0, 0.0, 1e6)
    out["seats_empty"] = material_coeffs(
        p.get("seats_empty", "chairs_upholstered_leather"), "seats_empty"
    )
    out["seats_occupied"] = material_coeffs(
        p.get("seats_occupied", "audience_upholstered_chairs_2"), "seats_occupied"
    )
    return out


def _surfaces(value: Any, walls: Sequence[str]) -> dict[str, tuple[float, ...]]:
    defaults: dict[str, Any] = {"walls": "hard_surface", "floor": "audience_floor"}
    defaults["ceiling"] = "hard_surface"
    if value is None:
        table = defaults
    elif isinstance(value, dict):
        known = {"walls", "floor", "ceiling", *walls}
        unknown = sorted(set(value) - known)
        if unknown:
            raise RoomError(
                f"materials: unknown surface(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        table = {**defaults, **value}
    else:
        table = {"walls": value, "floor": value, "ceiling": value}
    out = {w: material_coeffs(table.get(w, table["walls"]), f"materials.{w}") for w in walls}
    out["floor"] = material_coeffs(table["floor"], "materials.floor")
    out["ceiling"] = material_coeffs(table["ceiling"], "materials.ceiling")
    return out


def _check_areas(model: RoomModel) -> None:
    if model.audience_area_m2 > model.floor_area():
        raise RoomError(
            f"audience_area_m2 {model.audience_area_m2:g} exceeds the floor "
            f"({model.floor_area():.1f} m²)"
        )
    if model.door_area_m2 > model.wall_area(model.door_wall):
        raise RoomError(
            f"door_area_m2 {model.door_area_m2:g} exceeds wall {model.door_wall} "
            f"({model.wall_area(model.door_wall):.1f} m²)"
        )


def _inside(point: tuple[float, ...], corners: Sequence[tuple[float, ...]]) -> bool:
    """Even-odd rule."""
    x, y = point
    inside = False
    for (x0, y0), (x1, y1) in zip(corners, [*corners[1:], corners[0]], strict=True):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


__all__ = ["BANDS_HZ", "RoomDevice", "RoomFamily", "room_config"]
