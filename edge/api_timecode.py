"""``GET /api/v1/timecode``: the chased timecode (docs/interfaces/timecode.md, "Service wiring").

The answer is ``edge.timecode.ServiceTimecode.status()``: ``source``, ``state`` (idle, running,
freewheel, stopped), ``timecode`` (the label now), ``rate``, ``fps``, ``position_frames``,
``seconds`` (since midnight), ``generation`` (locks and relocates), event counts, the input's
counters (accepted, ignored stream, timecode errors), the receiving link's health and
statistics, and the journal queue. A venue without ``[timecode]`` answers ``source: "none"``,
``state: "off"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

if TYPE_CHECKING:
    from edge.service import Service


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["timecode"])

    @api.get("/api/v1/timecode")
    async def timecode() -> dict[str, Any]:
        if service.timecode is None:
            return {"source": "none", "state": "off", "timecode": None, "rate": None}
        return service.timecode.status()

    return api
