"""``/api/v1/acoustics``: the venue's sound field (docs/acoustics.md, "In the service").

- ``GET /api/v1/acoustics``: ``SoundFieldControl.snapshot()``: the modes with their targets per
  band, and each zone's mode, state (silent, designing, fading, playing, failed), path
  latencies, the room its design assumed, and its design (parameters, predicted values, what is
  not reachable and why). A node without ``[acoustics]`` answers ``{"configured": false}``.
- ``POST /api/v1/acoustics/recall`` ``{"mode": "opera", "zones": ["stalls"], "fade_s": 2}``:
  crossfade the zones (all when omitted) to the mode; answers when every crossfade has started.
  404 for an unknown mode or zone, 409 when the node has no sound field or its stream is down,
  422 for a bad fade. Journalled as ``acoustics.recall`` with the operator
  (``x-flytower-operator``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from controller.journal import journalled
from controller.playback.ports import PlaybackError, Unavailable
from edge.api_machinery import origin_of

if TYPE_CHECKING:
    from edge.service import Service


class RecallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: str = Field(min_length=1, max_length=64)
    zones: list[str] | None = Field(default=None, min_length=1, max_length=32)
    fade_s: float | None = Field(default=None, ge=0, le=60, allow_inf_nan=False)


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["acoustics"])

    @api.get("/api/v1/acoustics")
    async def acoustics() -> dict[str, Any]:
        if service.soundfield is None:
            return {"configured": False}
        return {"configured": True, **service.soundfield.snapshot()}

    @api.post("/api/v1/acoustics/recall")
    async def recall(body: RecallIn, request: Request) -> dict[str, Any]:
        sf = service.soundfield
        if sf is None:
            raise HTTPException(409, "this node has no sound field ([acoustics] in the venue)")
        origin = origin_of(request)
        try:
            return await journalled(
                service.journal,
                origin,
                "acoustics.recall",
                lambda: sf.recall(body.mode, body.fade_s, origin, body.zones),
                targets=body.zones or list(sf.zones),
                args={"mode": body.mode, "fade_s": body.fade_s},
            )
        except Unavailable as exc:
            raise HTTPException(409, str(exc)) from None
        except PlaybackError as exc:
            raise HTTPException(exc.status or 409, str(exc)) from None

    return api
