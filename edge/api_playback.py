"""Playback: the service's cue engine, its REST routes and its WebSocket messages.

Wiring (``start`` / ``stop``, called by ``edge/service.py``): the venue's ``show`` file is
loaded against the venue's catalogue (devices, ``[[groups]]`` labels, routed universes) and run
by ``controller.playback.Playback`` over the lighting engine (``EngineLighting``), the device
drivers (``ServiceDevices``: commands journalled with the cue as their source, reads from the
live view, waits on the readings feed) and ``Machinery`` (every axis with ``move_to`` and
``stop``; the safety supervisor will wrap it).

REST (docs/playback.md): ``GET /api/v1/playback`` (snapshot); ``POST /api/v1/playback/go``,
``/back``, ``/stop``, ``/pause``, ``/resume``, ``/panic``, ``/standby``, ``/release`` with a
JSON body ``{"list": …, "cue": …}``; ``GET /api/v1/show`` (the show's data) and ``PUT
/api/v1/show`` (validate, save atomically, load; ``?validate_only=true`` only checks). 409 when
the state refuses a command (debounce, end of list, cues running), 422 for unknown lists or
cues and malformed bodies; every refusal says why and changes nothing.

WebSocket messages (``/ws``): the client sends ``{"type": "playback", "id": …, "command":
"go", "list": …, "cue": …}``; the reply is ``{"type": "playback.result", "id": …, "ok": …}``.
While a show is loaded the server sends ``{"type": "playback", "snapshot": {…}}`` on connect and
on every change (at most 10 a second; every 0.1 s while cues run, so progress moves).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import tomllib
import weakref
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from controller.journal import Origin
from controller.lighting import LightingError
from controller.motion.cues import SupervisedMachinery
from controller.playback import (
    EngineLighting,
    LoopClock,
    Machinery,
    Playback,
    PlaybackConfig,
    PlaybackError,
    PointValue,
)
from controller.show import Catalogue, Show, ShowError, load_show, parse_show, save_show
from controller.show.file import show_data
from drivers.base import DeviceUnavailable
from drivers.model import CommandError, ConfigError, DmxTransport
from drivers.mqtt.driver import MqttDeviceDriver
from edge.api_auth import origin_of
from edge.api_docs import errors
from edge.audio import ServiceAudio

if TYPE_CHECKING:
    from edge.service import Service

log = logging.getLogger(__name__)

WS_PLAYBACK_INTERVAL_S = 0.1
DEFAULT_SHOW_FILE = "show.toml"  # where PUT /api/v1/show saves when the venue names none


# --- the device port ----------------------------------------------------------------------


class ServiceDevices:
    """``controller.playback.Devices`` over the service's drivers and live readings."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._changed = asyncio.Event()
        self._venue_nodes = frozenset(n.id for n in service.venue.config.nodes)

    def signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def feed(self) -> None:
        """Wake waiters whenever readings arrive (the service's live view is updated by its
        own task; this feed only says 'look again')."""
        sub = self.service.live_feed("playback")
        try:
            with contextlib.suppress(Exception):
                while True:
                    await sub.get_batch()
                    await asyncio.sleep(0)  # let the live view store the batch first
                    self.signal()
        finally:
            sub.close()

    def _driver(self, device: str) -> Any:
        driver = self.service.drivers.get(device)
        if driver is None:
            raise DeviceUnavailable(f"{device} has no driver on this node")
        return driver

    async def execute(
        self,
        device: str,
        command: str,
        args: Mapping[str, Any],
        origin: Origin,
        *,
        at: float | None = None,
        request_id: str | None = None,
    ) -> Any:
        driver = self._driver(device)
        return await self.service.command(
            driver, command, args, origin, at=at, request_id=request_id
        )

    def lead(self, device: str) -> float:
        """A device of another Flytower node of the venue (on a controller): its commands are
        sent this far ahead with their start time (the controller node's ``lead_ms``). A
        gateway that is not a node of the venue (a vendor's, speaking mqtt.md §5) gets them at
        once, without ``at``: §5.1 is Flytower's, and such a gateway refuses a key it does not
        know (found by the soak benchmark: every cue's projector command refused)."""
        driver = self.service.drivers.get(device)
        if (
            isinstance(driver, MqttDeviceDriver)
            and driver.remote
            and driver.transport.node in self._venue_nodes
        ):
            return self.service.lead_s
        return 0.0

    async def write(self, device: str, point: str, value: float, origin: Origin) -> Any:
        driver = self._driver(device)
        for name, spec in driver.device.profile.commands.items():
            if len(spec.writes) == 1 and spec.writes[0].point == point and spec.writes[0].arg:
                return await self.execute(device, name, {spec.writes[0].arg: value}, origin)
        raise CommandError(f"{device}: no command of its profile writes '{point}'")

    def read(self, device: str, point: str) -> PointValue | None:
        r = self.service.live.get((device, point))
        return None if r is None else PointValue(r.value, r.quality.value, r.ts_wall)

    async def wait_for(
        self, device: str, point: str, condition: Callable[[Any], bool]
    ) -> PointValue:
        while True:
            changed = self._changed
            pv = self.read(device, point)
            if pv is not None and pv.quality == "good" and condition(pv.value):
                return pv
            await changed.wait()


# --- wiring -------------------------------------------------------------------------------


def venue_groups(path: Path) -> dict[str, list[str]]:
    """The venue's ``[[groups]]`` labels with their device ids (the file keeps them; the
    expanded venue does not)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    groups: dict[str, list[str]] = {}
    for g in raw.get("groups", []):
        if not isinstance(g, dict) or not isinstance(g.get("label"), str):
            continue
        first, count, pattern = g.get("first", 1), g.get("count", 0), g.get("id", "")
        with contextlib.suppress(Exception):
            groups[g["label"]] = [pattern.format(n=first + i, i=i) for i in range(count)]
    return groups


def catalogue(service: Service) -> Catalogue:
    venue = service.venue
    routed = {u for out in venue.config.dmx.outputs for u in out.universes}
    fixtures_u = {
        d.transport.universe for d in venue.devices if isinstance(d.transport, DmxTransport)
    }
    return Catalogue.from_devices(
        venue.devices,
        venue_groups(venue.path),
        universes=routed | fixtures_u,
        media_dir=show_path(service).parent,
    )


def use_groups(pb: Playback, show: Show) -> None:
    """A newly loaded show's ``[groups]`` become the lighting engine's."""
    if isinstance(pb.lighting, EngineLighting):
        pb.lighting.groups.update({k: tuple(v) for k, v in show.groups.items()})


def show_path(service: Service) -> Path:
    return service.venue.resolve(service.venue.config.show or DEFAULT_SHOW_FILE)


def _lighting_groups(service: Service, playback_show: Any) -> dict[str, list[str]]:
    groups = venue_groups(service.venue.path)
    if playback_show is not None:
        groups.update({k: list(v) for k, v in playback_show.groups.items()})
    return groups


def start(service: Service, tg: asyncio.TaskGroup) -> asyncio.Task[None]:
    """Build the cue engine, load the venue's show (a bad show is logged and not loaded: the
    service runs, and a fixed show can be PUT), and start the device feed."""
    show = None
    # An edge node runs what it is sent; the venue's show runs on its controller(s).
    if service.venue.config.show is not None and service.role != "edge":
        try:
            show = load_show(show_path(service), catalogue(service))
        except ShowError as exc:
            log.error("show not loaded:\n%s", exc)
    devices = ServiceDevices(service)
    axes = [
        d.id
        for d in service.devices.values()
        if "move_to" in d.profile.commands
        and d.profile.commands["move_to"].moves_machinery
        and "stop" in d.profile.commands
    ]
    panic = service.venue.config.panic
    lighting = None
    if service.lighting is not None:
        try:
            lighting = EngineLighting(
                service.lighting, _lighting_groups(service, show), panic.lighting
            )
        except LightingError as exc:  # a group the patch does not have
            raise ConfigError(service.venue.path, [f"panic.lighting: {exc}"]) from None
    machinery = (
        SupervisedMachinery(service.supervisor, devices)
        if service.supervisor is not None
        else Machinery(devices, axes)
    )
    service.playback = Playback(
        show,
        lighting=lighting,
        devices=devices,
        machinery=machinery,
        journal=service.journal,
        clock=LoopClock(),
        config=PlaybackConfig(panic_fade_s=panic.fade_s),
        audio=ServiceAudio(
            service.drivers,
            media_dir=lambda: show_path(service).parent,
            soundfield=lambda: service.soundfield,
        ),
    )
    if service.timecode is not None:  # timecode-triggered cues, rebuilt on every show load
        service.timecode.attach(service.playback)
    return tg.create_task(devices.feed(), name="playback-feed")


async def stop(service: Service, feed: asyncio.Task[None] | None) -> None:
    if service.playback is not None:
        await service.playback.close()
    if feed is not None:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)


# --- requests -----------------------------------------------------------------------------

ListId = Annotated[StrictStr, Field(min_length=1, max_length=64)]
CueRef = Annotated[StrictStr | StrictInt | StrictFloat, Field(union_mode="left_to_right")]
Command = Literal["go", "back", "stop", "pause", "resume", "panic", "standby", "release"]


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    list: ListId | None = None
    cue: CueRef | None = None
    fade_s: Annotated[StrictFloat, Field(ge=0, le=86_400, allow_inf_nan=False)] = 0.0


class WsCommand(CommandIn):
    type: Literal["playback"]
    id: Annotated[StrictStr | StrictInt, Field(union_mode="left_to_right")] | None = None
    command: Command


def _cue(cue: Any) -> Any:
    if isinstance(cue, float):
        if not math.isfinite(cue):
            raise PlaybackError("cue must be a finite number", 422)
        return Decimal(repr(cue))
    return cue


async def run_command(
    playback: Playback, command: str, body: CommandIn, origin: Origin
) -> dict[str, Any]:
    """One command, as every front end issues it."""
    lst, cue = body.list, _cue(body.cue)
    if command == "go":
        return await playback.go(lst, cue, origin)
    if command == "back":
        return await playback.back(lst, origin)
    if command == "stop":
        return await playback.stop(lst, cue, origin)
    if command == "pause":
        return await playback.pause(lst, origin)
    if command == "resume":
        return await playback.resume(lst, origin)
    if command == "panic":
        return await playback.panic(origin)
    if command == "standby":
        if cue is None:
            raise PlaybackError("standby needs a cue", 422)
        return await playback.standby(lst, cue, origin)
    if command == "release":
        return await playback.release(lst, body.fade_s, origin)
    raise PlaybackError(f"unknown command '{command}'", 422)


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["playback"], responses=errors(503))

    def engine() -> Playback:
        if service.playback is None:
            raise HTTPException(503, "the cue engine is not running")
        return service.playback

    @api.get("/api/v1/playback")
    async def snapshot() -> dict[str, Any]:
        return engine().snapshot()

    def route(command: str) -> None:
        async def handler(
            request: Request, body: Annotated[CommandIn | None, Body()] = None
        ) -> dict[str, Any]:
            try:
                out = await run_command(engine(), command, body or CommandIn(), origin_of(request))
            except PlaybackError as exc:
                raise HTTPException(exc.status, exc.reason) from exc
            return {"ok": True, **out}

        handler.__name__ = f"playback_{command}"
        api.post(
            f"/api/v1/playback/{command}", name=f"playback_{command}", responses=errors(409, 422)
        )(handler)

    for command in ("go", "back", "stop", "pause", "resume", "panic", "standby", "release"):
        route(command)

    @api.get("/api/v1/show", responses=errors(404))
    async def get_show() -> dict[str, Any]:
        pb = engine()
        if pb.show is None:
            raise HTTPException(404, "no show is loaded")
        return show_data(pb.show)

    @api.put("/api/v1/show", responses=errors(409, 422))
    async def put_show(
        request: Request,
        data: Annotated[dict[str, Any], Body()],
        validate_only: Annotated[bool, Query()] = False,
    ) -> dict[str, Any]:
        pb = engine()
        cat = catalogue(service)
        path = show_path(service)
        try:
            show = parse_show(data, path.name, cat)
        except ShowError as exc:
            raise HTTPException(422, exc.problems) from exc
        except (RecursionError, ValueError) as exc:
            raise HTTPException(422, f"show: {exc}") from exc
        if validate_only:
            return {"ok": True, "valid": True, "title": show.show.title}
        if pb.refusal is not None:  # a standby: its show comes from the holder's
            raise HTTPException(409, pb.refusal)
        if any(r["running"] for r in pb.snapshot()["lists"]):
            raise HTTPException(409, "cues are running: stop them before loading a show")
        try:
            show = await asyncio.to_thread(save_show, path, show, cat)
            await pb.load(show, origin_of(request))
        except ShowError as exc:
            raise HTTPException(422, exc.problems) from exc
        except PlaybackError as exc:
            raise HTTPException(exc.status, exc.reason) from exc
        use_groups(pb, show)
        service.control.share_show(show_data(show))  # to the standby, if there is one
        return {"ok": True, "title": show.show.title, "file": path.name}

    return api


# --- WebSocket ----------------------------------------------------------------------------


async def ws_command(service: Service, msg: dict[str, Any], origin: Origin) -> dict[str, Any]:
    """A ``{"type": "playback", ...}`` message: run it, return the reply message."""
    ident = msg.get("id") if isinstance(msg.get("id"), str | int) else None
    try:
        cmd = WsCommand.model_validate(msg)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
        )
        return {
            "type": "playback.result",
            "id": ident,
            "ok": False,
            "status": 422,
            "detail": detail[:500],
        }
    if service.playback is None:
        return {
            "type": "playback.result",
            "id": ident,
            "ok": False,
            "status": 503,
            "detail": "the cue engine is not running",
        }
    try:
        out = await run_command(service.playback, cmd.command, cmd, origin)
    except PlaybackError as exc:
        return {
            "type": "playback.result",
            "id": cmd.id,
            "ok": False,
            "status": exc.status,
            "detail": exc.reason,
        }
    return {"type": "playback.result", "id": cmd.id, "ok": True, **out}


class _Fanout:
    """What every WebSocket client of one cue engine shares: the snapshot (built once per
    version, and at most twice per interval while cues run, not once per client) and a turn.

    The turn spreads a fan-out over turns of the event loop, one client per turn (the lock is
    held across one ``sleep(0)``, then handed to the next client, whose wake-up comes after
    the loop has polled its sockets again). Without it every client woken by a change sent in
    the same turn: with 50 consoles a GO arriving meanwhile waited ~10 ms for all of them
    (``python -m benchmarks go_latency``, p99), and so did the lighting engine's next frame. A
    client's own send is outside the turn, so a slow client never holds up the others."""

    def __init__(self) -> None:
        self.turn = asyncio.Lock()
        self.snap: dict[str, Any] | None = None
        self.at = -math.inf
        self.running = False

    def snapshot(self, pb: Playback) -> tuple[dict[str, Any], bool]:
        now = asyncio.get_running_loop().time()
        snap = self.snap
        stale = self.running and now - self.at >= WS_PLAYBACK_INTERVAL_S / 2
        if snap is None or snap["version"] != pb.version or stale:
            snap = self.snap = pb.snapshot()
            self.at = now
            self.running = any(r["running"] for r in snap["lists"])
        return snap, self.running


_FANOUTS: weakref.WeakKeyDictionary[Playback, _Fanout] = weakref.WeakKeyDictionary()


async def ws_feed(service: Service, send: Callable[[dict[str, Any]], Any]) -> None:
    """Send the playback snapshot now and after every change, at most 10 times a second;
    while cues run, also every 0.1 s so progress moves (a snapshot shared by the clients may
    be up to half that interval old)."""
    pb = service.playback
    if pb is None:
        return
    fan = _FANOUTS.get(pb)
    if fan is None:
        fan = _FANOUTS[pb] = _Fanout()
    version = -1
    sent_at = -math.inf
    while True:
        async with fan.turn:
            await asyncio.sleep(0)  # hold the turn across one turn of the loop
        snap, running = fan.snapshot(pb)
        if snap["show"] is None:  # nothing to show: clients of readings only see no change
            version = await pb.wait_changed(snap["version"])
            continue
        if snap["version"] != version or running:
            version = snap["version"]
            await send({"type": "playback", "snapshot": snap})
            sent_at = time.monotonic()
        if not running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pb.wait_changed(version), 5.0)
        # At most one snapshot per interval, but a change after a quiet spell goes at once
        # (on the leading edge): a GO reaches the consoles without waiting out an interval.
        await asyncio.sleep(max(0.0, sent_at + WS_PLAYBACK_INTERVAL_S - time.monotonic()))
