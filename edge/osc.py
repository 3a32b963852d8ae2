"""The service's side of OSC: which handler answers each address of docs/interfaces/osc.md.

The OSC driver (drivers/osc/) knows the wire and the address space but not the service; this
module binds the addresses the service answers — device commands and point reads to the
drivers and the live view, and the QLab transport addresses (/go, /stop, /panic,
/cue/{n}/start, /cue/{n}/stop, /playhead/{n}) to the cue engine (docs/playback.md). A refused
playback command answers with status "error" and the engine's reason.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from controller.journal import Origin, SourceKind
from controller.playback import Playback, PlaybackError
from drivers.base import DeviceUnavailable
from drivers.model import CommandError
from drivers.osc import OscRequest, OscRequestError, OscRouter, OscServerConfig
from drivers.osc import address_space as space
from edge.config import OscConfig

if TYPE_CHECKING:
    from edge.service import Service


def server_config(cfg: OscConfig, udp_port: int | None, tcp_port: int | None) -> OscServerConfig:
    """The driver's settings from the venue's [osc] section; ports may be overridden (tests)."""
    passcode = None
    if cfg.passcode_env is not None:
        passcode = os.environ.get(cfg.passcode_env)
        if not passcode:
            raise ValueError(f"osc.passcode_env: environment variable {cfg.passcode_env} is empty")
    return OscServerConfig(
        host=cfg.host,
        udp_port=cfg.udp_port if udp_port is None else udp_port,
        tcp_port=cfg.tcp_port if tcp_port is None else tcp_port,
        passcode=passcode,
        allowed_sources=tuple(cfg.allow),
    )


def build_router(service: Service) -> OscRouter:
    router = OscRouter()

    async def command(req: OscRequest) -> Any:
        device, name = req.params["id"], req.params["name"]
        driver = service.drivers.get(device)
        if driver is None:
            raise OscRequestError(f"no device '{device}' on this node")
        args = req.args.get("args") or {}
        try:
            origin = Origin(SourceKind.OSC, f"{req.address} from {req.source}")
            writes = await service.command(driver, name, args, origin)
        except (CommandError, DeviceUnavailable) as exc:
            raise OscRequestError(str(exc)) from exc
        return {"writes": [[point, value] for point, value in writes]}

    async def point(req: OscRequest) -> Any:
        device, name = req.params["id"], req.params["name"]
        if device not in service.devices:
            raise OscRequestError(f"no device '{device}' on this node")
        reading = service.live.get((device, name))
        if reading is None:
            raise OscRequestError(f"no reading of {device}/{name} yet")
        value = reading.value
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        return {"value": value, "quality": reading.quality.value, "ts": reading.ts_wall}

    router.add(space.DEVICE_COMMAND, command)
    router.add(space.DEVICE_POINT, point)
    _add_playback(router, service)
    return router


def _add_playback(router: OscRouter, service: Service) -> None:
    """QLab's transport addresses on the cue engine's first (default) list: ``/go``,
    ``/stop`` (every list), ``/panic``, ``/cue/{n}/start`` (the standby cue stays),
    ``/cue/{n}/stop`` (``*``: every cue), ``/playhead/{n}`` (standby)."""

    def engine(req: OscRequest) -> Playback:
        if service.playback is None:
            raise OscRequestError(f"{req.address}: no cue engine is running on this node")
        return service.playback

    def origin(req: OscRequest) -> Origin:
        return Origin(SourceKind.OSC, f"osc {req.source.host}:{req.source.port} {req.address}")

    async def run(req: OscRequest, call: Callable[[Playback, Origin], Awaitable[Any]]) -> Any:
        try:
            return await call(engine(req), origin(req))
        except PlaybackError as exc:
            raise OscRequestError(exc.reason) from exc

    async def go(req: OscRequest) -> Any:
        return await run(req, lambda pb, o: pb.go(None, None, o))

    async def stop(req: OscRequest) -> Any:
        return await run(req, lambda pb, o: pb.stop(None, None, o))

    async def panic(req: OscRequest) -> Any:
        return await run(req, lambda pb, o: pb.panic(o))

    async def cue_start(req: OscRequest) -> Any:
        n = req.params["number"]
        return await run(req, lambda pb, o: pb.start(None, n, o, keep_standby=True))

    async def cue_stop(req: OscRequest) -> Any:
        n = req.params["number"]
        if n == "*":
            return await run(req, lambda pb, o: pb.stop(None, None, o))
        return await run(req, lambda pb, o: pb.stop(pb.default_list, n, o))

    async def playhead(req: OscRequest) -> Any:
        n = req.params["number"]
        return await run(req, lambda pb, o: pb.standby(None, n, o))

    router.add(space.GO, go)
    router.add(space.STOP, stop)
    router.add(space.PANIC, panic)
    router.add(space.CUE_START, cue_start)
    router.add(space.CUE_STOP, cue_stop)
    router.add(space.PLAYHEAD, playhead)
