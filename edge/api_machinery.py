"""Machinery routes under ``/api/v1/machinery`` and the ``machinery`` WebSocket messages
(docs/machinery.md). Every motion command goes to the safety supervisor
(``controller.motion.Supervisor``), which refuses with the reason (409) and journals it.

- ``GET /api/v1/machinery``: E-stop, hold-to-run enable, every axis (state, position against
  its soft limits, speed, load, use case, group, last abort, what it has shown), the moves
  (progress, remaining time, warnings) and the cycle's figures;
- ``POST /api/v1/machinery/enable`` ``{"holder": "desk"}``: hold-to-run, renewed at least every
  ``enable_timeout_s`` (0.5 s) by the console or a handheld; ``DELETE …/enable?holder=desk``
  releases it (motion stops);
- ``POST /api/v1/machinery/move`` ``{"targets": {"hoist-1": 3000}, "speed": …, "acceleration":
  …, "relative": false, "synchronized": true}``;
- ``POST /api/v1/machinery/stop`` ``{"axes": [...], "kind": "controlled"|"quick"}`` (every
  axis when ``axes`` is omitted);
- ``POST /api/v1/machinery/moves/{id}/confirm``: the second person of a performer move;
- ``POST /api/v1/machinery/estop`` ``{"reason": …}``, ``POST /api/v1/machinery/estop/reset``.

Who asked: the ``x-flytower-operator`` header names the operator (the two-person rule compares
them) until sign-in exists; otherwise the peer address.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from controller.journal import Origin, Result, SourceKind
from controller.motion.supervisor import MotionRefused, StopKind, Supervisor
from edge.api_auth import origin_of
from edge.api_docs import errors
from edge.ws_topics import json_safe

if TYPE_CHECKING:
    from edge.service import Service

WS_INTERVAL_S = 0.1
AxisId = Annotated[StrictStr, Field(min_length=1, max_length=100)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=False)]
Number = Annotated[float, Field(allow_inf_nan=False)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnableIn(_In):
    holder: Annotated[StrictStr, Field(min_length=1, max_length=100)]


class MoveIn(_In):
    targets: dict[AxisId, Number] = Field(min_length=1, max_length=1024)
    speed: Positive | None = None
    acceleration: Positive | None = None
    relative: StrictBool = False
    synchronized: StrictBool = True


class StopIn(_In):
    axes: list[AxisId] | None = Field(default=None, min_length=1, max_length=1024)
    kind: Literal["controlled", "quick"] = "controlled"


class EstopIn(_In):
    reason: Annotated[StrictStr, Field(max_length=200)] = "software E-stop"


def _supervisor(service: Service) -> Supervisor:
    if service.supervisor is None:
        raise HTTPException(404, "this node runs no machinery")
    return service.supervisor


async def enable(sup: Supervisor, holder: str, origin: Origin) -> dict[str, Any]:
    fresh = sup.enables.get(holder, -math.inf) <= sup.clock()  # not held (or lapsed) until now
    expiry = sup.keep_enabled(holder)
    if fresh:  # journal taking the enable, not every renewal
        await sup.journal_event(origin, "enable", Result.OK, args={"holder": holder})
    return {"holder": holder, "expires_in_s": max(0.0, expiry - sup.clock())}


async def release(sup: Supervisor, holder: str, origin: Origin) -> dict[str, Any]:
    held = holder in sup.enables
    sup.release_enable(holder)
    if held:
        await sup.journal_event(origin, "enable.release", Result.OK, args={"holder": holder})
    return {"holder": holder, "released": held}


def router(service: Service) -> APIRouter:
    api = APIRouter(prefix="/api/v1/machinery", tags=["machinery"], responses=errors(404))

    @api.get("")
    async def machinery() -> dict[str, Any]:
        return _supervisor(service).snapshot()

    @api.post("/enable")
    async def post_enable(body: EnableIn, request: Request) -> dict[str, Any]:
        return await enable(_supervisor(service), body.holder, origin_of(request))

    @api.delete("/enable")
    async def delete_enable(holder: str, request: Request) -> dict[str, Any]:
        return await release(_supervisor(service), holder, origin_of(request))

    @api.post("/move", responses=errors(409))
    async def move(body: MoveIn, request: Request) -> dict[str, Any]:
        sup = _supervisor(service)
        try:
            m = await sup.move(
                body.targets,
                origin_of(request),
                speed=body.speed,
                acceleration=body.acceleration,
                relative=body.relative,
                synchronized=body.synchronized,
            )
        except MotionRefused as exc:
            raise HTTPException(409, str(exc)) from None
        return sup.move_view(m, sup.clock())

    @api.post("/moves/{move_id}/confirm", responses=errors(409))
    async def confirm(move_id: int, request: Request) -> dict[str, Any]:
        sup = _supervisor(service)
        try:
            m = await sup.confirm(move_id, origin_of(request))
        except MotionRefused as exc:
            raise HTTPException(409, str(exc)) from None
        return sup.move_view(m, sup.clock())

    @api.post("/stop")
    async def stop(body: StopIn, request: Request) -> dict[str, Any]:
        sup = _supervisor(service)
        axes = body.axes if body.axes is not None else list(sup.axes)
        try:
            failures = await sup.stop(axes, origin_of(request), StopKind(body.kind))
        except MotionRefused as exc:
            raise HTTPException(422, str(exc)) from None
        return {"stopped": axes, "failed": failures}

    @api.post("/estop", responses=errors(503))
    async def estop(request: Request, body: EstopIn | None = None) -> dict[str, Any]:
        """E-stop this node's machinery; on a controller, every node's (a venue E-stop over
        the broker: each node latches its own, and is reset there)."""
        reason = body.reason if body is not None else "software E-stop"
        origin = origin_of(request)
        out: dict[str, Any] = {"latched": False, "failed": {}}
        if service.role == "controller" and service.mqtt is not None:
            try:
                await service.safety.send_estop(f"{reason} (by {origin.source})")
            except Exception as exc:  # said, and this node's own machinery still stops
                out["venue_error"] = str(exc)
            else:
                out["venue"] = True
        if service.supervisor is not None:
            out["failed"] = await service.supervisor.estop(origin, reason)
            out["latched"] = True
        elif "venue" not in out:
            if "venue_error" in out:
                raise HTTPException(
                    503, f"the E-stop did not reach the nodes: {out['venue_error']}"
                )
            _supervisor(service)  # 404: no machinery here, and no other node to reach
        return out

    @api.post("/estop/reset", responses=errors(409))
    async def estop_reset(request: Request) -> dict[str, Any]:
        sup = _supervisor(service)
        try:
            await sup.reset_estop(origin_of(request))
        except MotionRefused as exc:
            raise HTTPException(409, str(exc)) from None
        return {"latched": False}

    return api


# --- WebSocket --------------------------------------------------------------------------------


class WsMachinery(_In):
    type: Literal["machinery"]
    id: StrictStr | int | None = None
    command: Literal["enable", "release", "move", "stop", "confirm", "estop", "estop.reset"]
    holder: Annotated[StrictStr, Field(min_length=1, max_length=100)] | None = None
    operator: Annotated[StrictStr, Field(min_length=1, max_length=100)] | None = None
    targets: dict[AxisId, Number] | None = None
    speed: Positive | None = None
    acceleration: Positive | None = None
    relative: StrictBool = False
    axes: list[AxisId] | None = None
    kind: Literal["controlled", "quick"] = "controlled"
    move: int | None = None
    reason: Annotated[StrictStr, Field(max_length=200)] = "software E-stop"


async def ws_command(
    service: Service, msg: dict[str, Any], origin: Origin, peer: str
) -> dict[str, Any]:
    """One ``{"type": "machinery", "command": …}`` message from ``origin`` (its ``operator``
    field names the person only where access control is off); the reply says ok or why not."""
    reply: dict[str, Any] = {"type": "machinery.result", "id": msg.get("id")}
    try:
        m = WsMachinery.model_validate(msg)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        return reply | {"ok": False, "status": 422, "detail": f"{where}: {first['msg']}"}
    sup = service.supervisor
    if sup is None:
        return reply | {"ok": False, "status": 404, "detail": "this node runs no machinery"}
    if m.operator and origin.kind is SourceKind.USER and origin.source.startswith("ws "):
        origin = Origin(SourceKind.USER, m.operator)  # access control off: the name given
    holder = m.holder or f"ws {peer}"
    try:
        out: dict[str, Any]
        if m.command == "enable":
            out = await enable(sup, holder, origin)
        elif m.command == "release":
            out = await release(sup, holder, origin)
        elif m.command == "move":
            if not m.targets:
                raise MotionRefused("a move needs 'targets'")
            mv = await sup.move(
                m.targets, origin, speed=m.speed, acceleration=m.acceleration, relative=m.relative
            )
            out = sup.move_view(mv, sup.clock())
        elif m.command == "confirm":
            if m.move is None:
                raise MotionRefused("confirm needs 'move'")
            out = sup.move_view(await sup.confirm(m.move, origin), sup.clock())
        elif m.command == "stop":
            axes = m.axes if m.axes is not None else list(sup.axes)
            out = {"failed": await sup.stop(axes, origin, StopKind(m.kind))}
        elif m.command == "estop":
            out = {"failed": await sup.estop(origin, m.reason)}
        else:
            await sup.reset_estop(origin)
            out = {"latched": False}
    except MotionRefused as exc:
        return reply | {"ok": False, "status": 409, "detail": str(exc)}
    return reply | {"ok": True} | out


async def ws_feed(service: Service, send: Callable[[dict[str, Any]], Any]) -> None:
    """The machinery snapshot: every 0.1 s while anything moves or an enable is held, else
    every second."""
    sup = service.supervisor
    if sup is None:
        return
    while True:
        snap = sup.snapshot()
        await send({"type": "machinery", "snapshot": json_safe(snap)})
        busy = snap["moves"] or snap["enable"]["live"]
        await asyncio.sleep(WS_INTERVAL_S if busy else 1.0)
