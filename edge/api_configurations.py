"""Venue configurations in the service: the switcher's wiring, REST routes and WebSocket feed.

Wiring (``start`` / ``stop``, from ``edge/service.py`` next to the cue engine's): a
``controller.configurations.Switcher`` over the very ports the cue engine uses — its
``Machinery`` (every move and stop; the safety supervisor will wrap it), its device port (reads
from the live view) and its lighting (the ``configuration`` layer). No ``Audio`` port is on
the node yet (issue 7), so acoustic modes are reported *skipped*. The name of the current
configuration is kept in a small JSON file next to the telemetry store, written atomically, so
a restart remembers it (docs/configurations.md says when it is trusted).

REST (docs/configurations.md): ``GET /api/v1/configurations`` (list, current),
``GET /api/v1/configurations/switch`` (progress of the running or last switch),
``POST /api/v1/configurations/switch/abort``, ``GET /api/v1/configurations/{name}`` (its plan),
``POST /api/v1/configurations/{name}/switch``. 404 for an unknown name, 409 when the state
refuses (a switch runs, an axis is offline or faulted), 503 without a cue engine.

WebSocket: ``{"type": "configuration", "progress": {...}}`` on connect when a switch has run,
on every change and every 0.1 s while one runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict

from controller.configurations import Switcher, axis_info
from controller.journal import Origin
from controller.playback import LoopClock, PlaybackError
from edge.api_auth import origin_of
from edge.api_docs import errors

if TYPE_CHECKING:
    from edge.service import Service

log = logging.getLogger(__name__)

WS_INTERVAL_S = 0.1
NamePath = Annotated[str, PathParam(min_length=1, max_length=64)]

# The switcher of each running service (a service has at most one; tests run several).
_SWITCHERS: dict[int, Switcher] = {}


def switcher(service: Service) -> Switcher | None:
    return _SWITCHERS.get(id(service))


def state_path(service: Service) -> Path:
    store = service.venue.store_path
    return store.with_name(store.stem + ".configuration.json")


def _read_current(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = data.get("current") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def _writer(path: Path) -> Callable[[str | None], None]:
    def write(name: str | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"current": name}), encoding="utf-8")
        os.replace(tmp, path)  # atomic: a crash leaves the old name or the new one

    return write


def start(service: Service) -> Switcher | None:
    """Build the switcher over the cue engine's ports (call after ``api_playback.start``)."""
    pb = service.playback
    if pb is None:
        return None
    cfg = service.venue.config
    axes = {d.id: info for d in service.venue.devices if (info := axis_info(d)) is not None}
    path = state_path(service)
    sw = Switcher(
        cfg.configurations,
        axes,
        devices=pb.devices,
        machinery=pb.machinery,
        journal=service.journal,
        clock=LoopClock(),
        lighting=pb.lighting,
        audio=pb.audio,  # None until the sound-field engine (issue 7) is on the node
        settings=cfg.configuration_settings,
        on_current=_writer(path),
        current=_read_current(path),
    )
    _SWITCHERS[id(service)] = sw

    async def on_panic(origin: Origin) -> None:
        if sw.running:
            await sw.abort(origin, "panic")

    pb.on_panic.append(on_panic)
    return sw


async def stop(service: Service) -> None:
    """Abort a running switch (every axis it moves gets a stop) before the drivers stop."""
    sw = _SWITCHERS.pop(id(service), None)
    if sw is not None:
        await sw.close()


class SwitchIn(BaseModel):
    """The body of a switch or an abort: nothing yet, but unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["configurations"], responses=errors(503))

    def engine() -> Switcher:
        sw = switcher(service)
        if sw is None:
            raise HTTPException(503, "venue configurations are not running (no cue engine)")
        return sw

    def call(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except PlaybackError as exc:
            raise HTTPException(exc.status, exc.reason) from exc

    @api.get("/api/v1/configurations")
    async def listing() -> dict[str, Any]:
        return engine().listing()

    @api.get("/api/v1/configurations/switch")
    async def progress() -> dict[str, Any]:
        return engine().progress()

    @api.post("/api/v1/configurations/switch/abort", responses=errors(404, 409))
    async def abort(
        request: Request, body: Annotated[SwitchIn | None, Body()] = None
    ) -> dict[str, Any]:
        try:
            out = await engine().abort(origin_of(request))
        except PlaybackError as exc:
            raise HTTPException(exc.status, exc.reason) from exc
        return {"ok": True, "progress": out}

    @api.get("/api/v1/configurations/{name}", responses=errors(404, 409))
    async def plan(name: NamePath) -> dict[str, Any]:
        sw = engine()
        return dict(call(lambda: sw.plan(name)))

    @api.post("/api/v1/configurations/{name}/switch", status_code=202, responses=errors(404, 409))
    async def switch(
        request: Request, name: NamePath, body: Annotated[SwitchIn | None, Body()] = None
    ) -> dict[str, Any]:
        try:
            plan = await engine().switch(name, origin_of(request))
        except PlaybackError as exc:
            raise HTTPException(exc.status, exc.reason) from exc
        return {"ok": True, "switching": name, "plan": plan}

    return api


async def ws_feed(service: Service, send: Callable[[dict[str, Any]], Any]) -> None:
    """The switch's progress on the WebSocket: on connect (if a switch has run), on every
    change, and every 0.1 s while a switch runs, so the bars move."""
    sw = switcher(service)
    if sw is None:
        return
    sent = -1
    while True:
        if sw.running or (sw.version != sent and sw.progress()["state"] != "idle"):
            sent = sw.version
            await send({"type": "configuration", "progress": sw.progress()})
        if not sw.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sw.wait_changed(sent if sent >= 0 else sw.version), 5.0)
            continue
        await asyncio.sleep(WS_INTERVAL_S)
