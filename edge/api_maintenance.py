"""The maintenance routes: counters and service intervals, records, work orders, and the fault
early-warning's state (docs/telemetry.md, "Maintenance" and "Fault early-warning").

    GET   /api/v1/maintenance                       every device: counters, intervals, state
    GET   /api/v1/maintenance/devices/{device}      one device
    GET   /api/v1/maintenance/records               records (?device, ?limit), newest first
    POST  /api/v1/maintenance/records               add one (a ``service`` restarts intervals)
    GET   /api/v1/maintenance/work-orders           (?status, ?device, ?limit), newest first
    POST  /api/v1/maintenance/work-orders           open one
    GET   /api/v1/maintenance/work-orders/{id}
    PATCH /api/v1/maintenance/work-orders/{id}      status, assignee, a note
    GET   /api/v1/maintenance/early-warning         models, CUSUMs, active and recent warnings
    POST  /api/v1/maintenance/early-warning/{device}/relearn

Who: the signed-in user (with ``by`` in the body: "by (entered by user)"); with access control
off, ``by``, else the ``x-flytower-operator`` header, else the peer address. Bodies
are strict (unknown fields, wrong types, control characters in names are 422); the answer never
echoes what was refused. 503 while the service runs no maintenance (or early warning).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictStr

from drivers.model import DeviceId
from edge.api_auth import principal_of
from edge.api_docs import errors
from edge.early_warning import EarlyWarning
from edge.maintenance import Maintenance, MaintenanceError

if TYPE_CHECKING:
    from edge.service import Service

# One line of a name: printable, no control characters.
Name = Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]
# Free text: up to 4 000 characters; line breaks and tabs allowed, other control characters not.
Text = Annotated[StrictStr, Field(max_length=4000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")]
Kind = Literal["service", "inspection", "repair", "replacement", "note"]
Status = Literal["open", "assigned", "done", "cancelled"]
Epoch = Annotated[StrictFloat, Field(gt=0, lt=4102444800)]  # before 2100; an int is taken too


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecordIn(_In):
    device: DeviceId
    kind: Kind
    notes: Text = ""
    by: Name | None = None
    at: Epoch | None = None  # when the work was done; default now


class WorkOrderIn(_In):
    device: DeviceId
    title: Name
    description: Text = ""
    kind: Kind = "service"
    priority: Literal["low", "normal", "high", "urgent"] = "normal"
    assignee: Name | None = None
    due: Epoch | None = None
    by: Name | None = None


class WorkOrderPatch(_In):
    # something to change (``by`` alone is not): checked by the route, declared here
    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": [k]} for k in ("status", "assignee", "note")]}
    )
    status: Status | None = None
    assignee: Name | None = None
    note: Annotated[Text, Field(min_length=1)] | None = None
    by: Name | None = None


class RelearnIn(_In):
    model: Literal["motor_current", "temperature_rise", "brake_release"] | None = None


def who(request: Request, by: str | None) -> str:
    signed_in = principal_of(request)
    if signed_in.via != "open":  # the signed-in user; ``by`` names whom they record it for
        name = signed_in.name
        return f"{by} (entered by {name})" if by and by != name else name
    if by:
        return by
    operator = request.headers.get("x-flytower-operator", "").strip()[:100]
    if operator and operator.isprintable():
        return operator
    peer = f"{request.client.host}:{request.client.port}" if request.client else "?"
    return f"rest {peer}"


def _maintenance(service: Service) -> Maintenance:
    m = getattr(service, "maintenance", None)
    if m is None:
        raise HTTPException(503, "this node runs no maintenance counting")
    assert isinstance(m, Maintenance)
    return m


def _early(service: Service) -> EarlyWarning:
    e = getattr(service, "early_warning", None)
    if e is None:
        raise HTTPException(503, "this node runs no fault early-warning")
    assert isinstance(e, EarlyWarning)
    return e


async def _call(coro: Any) -> Any:
    try:
        return await coro
    except MaintenanceError as exc:
        raise HTTPException(exc.status, exc.detail) from None


_LIMIT = Query(100, ge=1, le=10_000, description="at most this many, newest first")
_DEVICE = Query(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def router(service: Service) -> APIRouter:
    r = APIRouter(prefix="/api/v1/maintenance", tags=["maintenance"], responses=errors(404, 503))

    @r.get("")
    async def overview(
        state: Literal["ok", "due", "overdue"] | None = None,
    ) -> dict[str, Any]:
        """Every device with counters: counters, service intervals and their state."""
        m = _maintenance(service)
        return {"devices": await _call(m.overview(state)), "stats": m.stats()}

    @r.get("/devices/{device}")
    async def device(device: str) -> dict[str, Any]:
        return dict(await _call(_maintenance(service).device(device)))

    @r.get("/records")
    async def records(device: str | None = _DEVICE, limit: int = _LIMIT) -> dict[str, Any]:
        return {"records": await _call(_maintenance(service).records(device, limit))}

    @r.post("/records", status_code=201)
    async def add_record(body: RecordIn, request: Request) -> dict[str, Any]:
        m = _maintenance(service)
        return dict(
            await _call(
                m.add_record(
                    body.device,
                    body.kind,
                    who(request, body.by),
                    body.notes,
                    None if body.at is None else float(body.at),
                )
            )
        )

    @r.get("/work-orders")
    async def work_orders(
        status: Status | None = None,
        device: str | None = _DEVICE,
        limit: int = _LIMIT,
    ) -> dict[str, Any]:
        m = _maintenance(service)
        return {"work_orders": await _call(m.work_orders(status, device, limit))}

    @r.post("/work-orders", status_code=201)
    async def create_work_order(body: WorkOrderIn, request: Request) -> dict[str, Any]:
        m = _maintenance(service)
        return dict(
            await _call(
                m.create_work_order(
                    body.device,
                    body.title,
                    who(request, body.by),
                    body.description,
                    body.kind,
                    body.priority,
                    body.assignee,
                    None if body.due is None else float(body.due),
                )
            )
        )

    @r.get("/work-orders/{order}")
    async def work_order(order: int) -> dict[str, Any]:
        if not 1 <= order < 2**63:
            raise HTTPException(404, "no such work order")
        return dict(await _call(_maintenance(service).work_order(order)))

    @r.patch("/work-orders/{order}")
    async def update_work_order(
        order: int, body: WorkOrderPatch, request: Request
    ) -> dict[str, Any]:
        if not 1 <= order < 2**63:
            raise HTTPException(404, "no such work order")
        m = _maintenance(service)
        return dict(
            await _call(
                m.update_work_order(
                    order, who(request, body.by), body.status, body.assignee, body.note
                )
            )
        )

    @r.get("/early-warning")
    async def early_warning() -> dict[str, Any]:
        """Per device and model: learning / watching / warning, fit, σ, CUSUM; warnings."""
        return _early(service).status()

    @r.post("/early-warning/{device}/relearn")
    async def relearn(device: str, body: RelearnIn) -> dict[str, Any]:
        e = _early(service)
        if device not in e.watches:
            raise HTTPException(404, "no such watched device on this node")
        e.relearn(device, body.model)
        return {"device": device, "models": e.status()["devices"][device]}

    return r
