"""The service's side of OSC: which handler answers each address of docs/interfaces/osc.md.

The OSC driver (drivers/osc/) knows the wire and the address space but not the service; this
module binds the addresses the service answers today — device commands and point reads — to
the drivers and the live view. Playback addresses (/go, /stop, /panic, /cue/{n}/...) answer
with an error that says no cue engine is loaded, so a console that sends them learns why
nothing happened instead of hearing silence.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

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
            writes = await driver.command(name, args)
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

    async def no_show(req: OscRequest) -> Any:
        raise OscRequestError(f"{req.address}: no cue engine is running on this node")

    router.add(space.DEVICE_COMMAND, command)
    router.add(space.DEVICE_POINT, point)
    for spec in (
        space.GO,
        space.STOP,
        space.PANIC,
        space.CUE_START,
        space.CUE_STOP,
        space.PLAYHEAD,
    ):
        router.add(spec, no_show)
    return router
