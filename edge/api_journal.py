"""The journal's REST routes: ``GET /api/v1/journal`` and ``GET /api/v1/journal/export``.

Read-only by design: there is no route that changes or removes an event (docs/journal.md).
Parameters that cannot be used get a 422 whose ``detail`` names the parameter and the reason.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from controller.journal import SourceKind
from edge.api_docs import csv_or_parquet
from edge.journal import (
    QUERY_LIMIT_MAX,
    JournalQuery,
    QueryError,
    export_csv,
    export_parquet,
)

if TYPE_CHECKING:
    from edge.service import Service

EXPORT_LIMIT_MAX = 100_000_000


class JournalOut(BaseModel):
    events: list[dict[str, Any]]
    truncated: bool  # more events matched than ``limit``: narrow the window, or export


def _query(
    since: float | None,
    until: float | None,
    device: str | None,
    source: str | None,
    limit: int | None,
) -> JournalQuery:
    try:
        return JournalQuery(since, until, device, source, limit)  # type: ignore[arg-type]
    except QueryError as exc:
        raise HTTPException(422, str(exc)) from exc


_SINCE = Query(None, description="requested at or after, epoch seconds")
_UNTIL = Query(None, description="requested at or before, epoch seconds")
# Checked by JournalQuery, with its own messages; declared here for the OpenAPI document.
_DEVICE = Query(
    None,
    description="only events that target this device/fixture/axis id",
    json_schema_extra={"minLength": 1, "maxLength": 1000, "pattern": r"^[^\x00-\x1f\x7f]*$"},
)
_SOURCE = Query(
    None,
    description="only this source kind: user, script, osc, mqtt, …",
    json_schema_extra={"enum": [k.value for k in SourceKind]},
)


def router(service: Service) -> APIRouter:
    r = APIRouter(prefix="/api/v1/journal", tags=["journal"])

    @r.get("", response_model=JournalOut)
    async def journal(
        since: float | None = _SINCE,
        until: float | None = _UNTIL,
        device: str | None = _DEVICE,
        source: str | None = _SOURCE,
        limit: int = Query(1000, ge=1, le=QUERY_LIMIT_MAX, description="the latest N"),
    ) -> Response:
        """Events oldest first; at most ``limit``, the latest of those that match."""
        q = _query(since, until, device, source, limit)
        events, more = await service.journal.query_json(q)
        # The event objects come as JSON text from SQLite: joined, not re-encoded.
        body = '{"events":[' + ",".join(events) + '],"truncated":' + json.dumps(more) + "}"
        return Response(body, media_type="application/json")

    @r.get("/export", response_class=StreamingResponse, responses=csv_or_parquet())
    async def export(
        format: Literal["csv", "parquet"] = Query(..., description="csv or parquet"),
        since: float | None = _SINCE,
        until: float | None = _UNTIL,
        device: str | None = _DEVICE,
        source: str | None = _SOURCE,
        limit: int | None = Query(None, ge=1, le=EXPORT_LIMIT_MAX, description="the first N"),
    ) -> StreamingResponse:
        """Every matching event, oldest first, as one consistent snapshot, streamed."""
        q = _query(since, until, device, source, limit)
        if format == "csv":
            body, media, ext = export_csv(service.journal, q), "text/csv; charset=utf-8", "csv"
        else:
            body, media, ext = (
                export_parquet(service.journal, q),
                "application/vnd.apache.parquet",
                "parquet",
            )
        return StreamingResponse(
            body,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="journal.{ext}"'},
        )

    return r
