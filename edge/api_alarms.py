"""Alarm routes under ``/api/v1/alarms`` (docs/telemetry.md, "Alarms"; engine in edge/alarms.py).

- ``GET /api/v1/alarms``: instances that are not inactive (active, latched, shelved), most
  severe first; filters ``state``, ``severity`` (repeatable), ``device``, ``rule``, ``all=true``
  for inactive ones too;
- ``GET /api/v1/alarms/history``: events newest first; ``from``, ``to`` (epoch seconds),
  ``device``, ``rule``, ``alarm``, ``limit``;
- ``POST /api/v1/alarms/{id}/ack`` ``{"comment": …}`` (body optional);
- ``POST /api/v1/alarms/{id}/shelve`` ``{"duration_s": 600, "reason": …}`` or
  ``{"until": epoch seconds, "reason": …}``;
- ``POST /api/v1/alarms/{id}/unshelve``;
- WebSocket ``/ws``: ``{"type": "alarms", "alarms": [...]}`` (as ``GET /api/v1/alarms``) on
  connect and within 0.1 s of every change.

Who: the ``x-flytower-operator`` header, else the peer address (as the machinery routes). 404
for an unknown alarm, 409 for an action its state does not allow, 422 for a body or parameter
that cannot be used, with the reason; 404 on every route when the node runs no alarm engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from edge.alarms import SEVERITIES, AlarmEngine, AlarmError, State, operator_name
from edge.api_auth import origin_of
from edge.api_docs import errors

if TYPE_CHECKING:
    from edge.service import Service

Severity = Literal["critical", "major", "minor", "warning", "info"]
StateName = Literal["inactive", "active_unack", "active_ack", "cleared_unack", "shelved"]
Epoch = Annotated[float, Field(gt=0, lt=4102444800, allow_inf_nan=False)]  # before 2100


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: Annotated[StrictStr, Field(max_length=500)] = ""


class ShelveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[StrictStr, Field(min_length=1, max_length=500)]
    until: Epoch | None = None
    duration_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _one(self) -> ShelveIn:
        if (self.until is None) == (self.duration_s is None):
            raise ValueError("give exactly one of 'until' (epoch seconds) and 'duration_s'")
        if not self.reason.strip():
            raise ValueError("'reason' must say why")
        return self


def engine_of(service: Service) -> AlarmEngine:
    engine: AlarmEngine | None = getattr(service, "alarms", None)
    if engine is None:
        raise HTTPException(404, "this node runs no alarm engine")
    return engine


def _fail(exc: AlarmError) -> HTTPException:
    return HTTPException(exc.status, exc.detail)


def router(service: Service) -> APIRouter:
    api = APIRouter(prefix="/api/v1/alarms", tags=["alarms"], responses=errors(404))

    @api.get("")
    async def alarms(
        state: Annotated[list[StateName] | None, Query()] = None,
        severity: Annotated[list[Severity] | None, Query()] = None,
        device: Annotated[str | None, Query(max_length=200)] = None,
        rule: Annotated[str | None, Query(max_length=200)] = None,
        include_all: Annotated[bool, Query(alias="all")] = False,
    ) -> dict[str, Any]:
        engine = engine_of(service)
        items = engine.active(
            states=set(state) if state else None,
            severities=set(severity) if severity else None,
            device=device,
            rule=rule,
            include_inactive=include_all or bool(state and State.INACTIVE.value in state),
        )
        return {"alarms": items, "count": len(items), "severities": list(SEVERITIES)}

    @api.get("/history")
    async def history(
        start: Annotated[Epoch | None, Query(alias="from")] = None,
        end: Annotated[Epoch | None, Query(alias="to")] = None,
        device: Annotated[str | None, Query(max_length=200)] = None,
        rule: Annotated[str | None, Query(max_length=200)] = None,
        alarm: Annotated[str | None, Query(max_length=500)] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    ) -> dict[str, Any]:
        engine = engine_of(service)
        end_ = end if end is not None else time.time() + 1
        start_ = start if start is not None else end_ - 86400
        if start_ > end_:
            raise HTTPException(422, "'from' is after 'to'")
        await engine.flush()  # what happened is in the history before it is asked for
        events = await engine.store.history(
            start_, end_, device=device, rule=rule, alarm=alarm, limit=limit
        )
        return {"events": events, "count": len(events), "truncated": len(events) == limit}

    @api.post("/{alarm_id}/ack", responses=errors(409))
    async def ack(
        alarm_id: str, request: Request, body: Annotated[AckIn | None, Body()] = None
    ) -> dict[str, Any]:
        who = operator_name(origin_of(request))
        try:
            return await engine_of(service).ack(alarm_id, who, body.comment if body else "")
        except AlarmError as exc:
            raise _fail(exc) from None

    @api.post("/{alarm_id}/shelve", responses=errors(409))
    async def shelve(alarm_id: str, body: ShelveIn, request: Request) -> dict[str, Any]:
        engine = engine_of(service)
        until = body.until if body.until is not None else engine.clock() + (body.duration_s or 0)
        who = operator_name(origin_of(request))
        try:
            return await engine.shelve(alarm_id, who, until, body.reason.strip())
        except AlarmError as exc:
            raise _fail(exc) from None

    @api.post("/{alarm_id}/unshelve", responses=errors(409))
    async def unshelve(alarm_id: str, request: Request) -> dict[str, Any]:
        who = operator_name(origin_of(request))
        try:
            return await engine_of(service).unshelve(alarm_id, who)
        except AlarmError as exc:
            raise _fail(exc) from None

    return api


WS_INTERVAL_S = 0.1


async def ws_feed(service: Service, send: Callable[[dict[str, Any]], Any]) -> None:
    """The alarm list on a WebSocket: at once, then within ``WS_INTERVAL_S`` of each change."""
    seen = -1
    while True:
        engine: AlarmEngine | None = getattr(service, "alarms", None)
        if engine is not None and engine.events != seen:
            seen = engine.events
            await send({"type": "alarms", "alarms": engine.active()})
        await asyncio.sleep(WS_INTERVAL_S)
