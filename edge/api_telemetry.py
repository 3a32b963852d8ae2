"""The telemetry store's REST routes: ``GET /api/v1/telemetry`` and ``…/telemetry/export``.

``GET /api/v1/telemetry?device=hoist-1&point=position&point=load&from=…&to=…&resolution=auto
&agg=mean&max_points=1000&limit=10000`` answers ``{"device", "resolution", "step_s", "agg",
"series": [{"point", "ts", "values", "quality" (raw) | "count" (rollups), "truncated"}]}``.
``from`` / ``to`` are epoch seconds or ISO 8601 times with a zone (``2026-12-02T10:00:00Z``);
the default window is the last hour. ``point`` may be repeated; none means every point of the
device's profile. The export takes the same parameters (``limit`` and ``max_points`` aside:
an export has every row) plus ``format=csv|parquet``, and streams.

Every parameter that cannot be used gets a 422 whose ``detail`` says which and why: unknown
devices and points (a device or point is named back only if it looks like an id; hostile text
is never echoed), from after to, spans over ten years, times that are not times.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response, StreamingResponse

from edge.api_docs import csv_or_parquet, errors
from edge.store import (
    LIMIT_MAX,
    POINTS_MAX,
    QueryError,
    TelemetryQuery,
    export_stream,
    parse_time,
)

if TYPE_CHECKING:
    from drivers.model import Device
    from edge.service import Service

log = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 3600.0
_ECHO = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

_DEVICE = Query(..., max_length=200, description="a device id of this node")
_POINT = Query(
    None, max_length=200, description="a point of the device; repeat for several; none: all"
)
_FROM = Query(None, alias="from", max_length=64, description="epoch seconds or ISO 8601")
_TO = Query(None, alias="to", max_length=64, description="epoch seconds or ISO 8601; now")
_RESOLUTION = Query("auto", description="raw, 1s, 1m, or auto (at most ~max_points a point)")
_AGG = Query("mean", description="the rollup value: mean, min, max or last")


class NotOnThisNode(QueryError):
    """The query names a device or point this node does not have (HTTP 404)."""


def _name(v: str) -> str:
    return f"'{v}'" if _ECHO.fullmatch(v) else "(not an id)"


def build_query(
    devices: Mapping[str, Device],
    device: str,
    point: Sequence[str] | None,
    start: str | None,
    end: str | None,
    resolution: str,
    agg: str,
    max_points: int = 1000,
    limit: int = 10_000,
) -> TelemetryQuery:
    """The query of the API's parameters against ``devices`` (the node's, by id); a
    :class:`QueryError` saying which parameter and why. The CLI's export validates with it too."""
    dev = devices.get(device)
    if dev is None:
        raise NotOnThisNode(f"device: no device {_name(device)} on this node")
    points = tuple(point) if point else tuple(dev.profile.points)
    unknown = [p for p in points if p not in dev.profile.points]
    if unknown:
        names = ", ".join(_name(p) for p in unknown[:5])
        raise NotOnThisNode(f"point: device {_name(device)} has no point {names}")
    if len(points) > POINTS_MAX:
        raise QueryError(f"point: at most {POINTS_MAX} points a query")
    to = parse_time("to", end, time.time())
    frm = parse_time("from", start, to - DEFAULT_WINDOW_S)
    return TelemetryQuery(
        device,
        frm,
        to,
        points,
        resolution,  # type: ignore[arg-type]
        agg,  # type: ignore[arg-type]
        max_points,
        limit,
    )


def _query(
    service: Service,
    device: str,
    point: list[str] | None,
    start: str | None,
    end: str | None,
    resolution: str,
    agg: str,
    max_points: int = 1000,
    limit: int = 10_000,
) -> TelemetryQuery:
    try:
        return build_query(
            service.devices, device, point, start, end, resolution, agg, max_points, limit
        )
    except QueryError as exc:
        raise HTTPException(404 if isinstance(exc, NotOnThisNode) else 422, str(exc)) from exc


def router(service: Service) -> APIRouter:
    r = APIRouter(prefix="/api/v1/telemetry", tags=["telemetry"])

    @r.get("", responses=errors(404))
    async def telemetry(
        device: str = _DEVICE,
        point: list[str] | None = _POINT,
        start: str | None = _FROM,
        end: str | None = _TO,
        resolution: Literal["raw", "1s", "1m", "auto"] = _RESOLUTION,
        agg: Literal["mean", "min", "max", "last"] = _AGG,
        max_points: int = Query(1000, ge=1, le=LIMIT_MAX, description="auto: per point"),
        limit: int = Query(10_000, ge=1, le=LIMIT_MAX, description="per point, the latest"),
    ) -> Response:
        """A device's points over a time range, raw or rolled up, oldest first."""
        q = _query(service, device, point, start, end, resolution, agg, max_points, limit)
        result = await service.store.query(q)
        # json.dumps on plain lists: far faster than a response model for 100 000s of values.
        body = json.dumps(result.as_dict(), separators=(",", ":"), allow_nan=False)
        return Response(body, media_type="application/json")

    @r.get(
        "/export", response_class=StreamingResponse, responses=csv_or_parquet() | errors(404, 503)
    )
    async def export(
        format: Literal["csv", "parquet"] = Query(..., description="csv or parquet"),
        device: str = _DEVICE,
        point: list[str] | None = _POINT,
        start: str | None = _FROM,
        end: str | None = _TO,
        resolution: Literal["raw", "1s", "1m", "auto"] = Query("raw", description="raw, 1s, 1m"),
        agg: Literal["mean", "min", "max", "last"] = _AGG,
        max_points: int = Query(1000, ge=1, le=LIMIT_MAX, description="auto only"),
    ) -> StreamingResponse:
        """Every row of the query, oldest first, point by point, one snapshot, streamed."""
        q = _query(service, device, point, start, end, resolution, agg, max_points)
        try:
            _, body = await export_stream(service.store.path, q, format)
        except (RuntimeError, FileNotFoundError, OSError) as exc:  # no file, not readable
            log.warning("telemetry export refused: %s", exc)
            raise HTTPException(503, "the telemetry store cannot be exported now") from exc
        media = "text/csv; charset=utf-8" if format == "csv" else "application/vnd.apache.parquet"
        return StreamingResponse(
            body,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="telemetry.{format}"'},
        )

    return r
