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
- ``POST /api/v1/acoustics/measure`` ``{"outputs": [1], "inputs": [1, 2], "sweeps": 3,
  "level_db": -20, "mute_inner": true, "zone": "stalls"}``: start a sweep measurement on the
  sound field's stream (1-based device channels; ``mute_inner`` measures the natural room, the
  enhancement off; ``zone`` makes the measured room that zone's room). Answers 202 with the
  measurement's state once the stream has started it; its progress is ``measurement`` in
  ``GET /api/v1/acoustics``. 409 while another runs or without a stream, 422 for parameters
  the plan or the stream refuses, 404 for an unknown zone. Journalled as ``acoustics.measure``.
- ``POST /api/v1/acoustics/zones/{zone}/adapt`` ``{"mode": "drama", "iterations": 3}``
  (optionally ``sweeps`` 1..8, ``level_db`` -80..-6): adapt the zone to the mode by measurement
  (``SoundFieldControl.adapt``; the zone names its ``pickup``, ``listener`` and ``source``).
  Answers 202 with the run's state once its first measurement has started; its progress is
  ``adaptation`` in ``GET /api/v1/acoustics`` (measuring / adapting k of n / recalling / done /
  failed, the worst error in JNDs per iteration, and at the end the result: converged, the
  unreachable targets with their reasons, the loop gain). 404 unknown zone or mode, 409 busy
  (an adaptation or a measurement running) or no stream, 422 a bad body or a zone that cannot
  be adapted. Journalled as ``acoustics.adapt``, its end as ``acoustics.adapted``, and the
  adapted field's recall as ``acoustics.recall``.
- Every recall checks the loop gain of a zone with measured paths first (scaled down to the
  stability margin, or refused with the reason); ``args.loop`` of the recall's journal event
  and each zone's ``loop`` say what was done.
- ``GET /api/v1/acoustics/measurements``: the stored measurements, newest first;
  ``GET /api/v1/acoustics/measurements/{id}``: one in full: per output x input pair the metrics
  per band, the decay curves with their fit ranges, the warnings; and the room they agree on.
- ``POST /api/v1/acoustics/stop``: stop the test signal now (any role that may stop): the
  running measurement aborted, a running adaptation cancelled; journalled ``acoustics.stop``.
  A panic does the same.
- ``GET /api/v1/acoustics/adaptations/{id}``: a finished adaptation's record (its iterations,
  result, what it played); ``.../{id}/plot``: its before/after plot (PNG).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.journal import journalled
from controller.playback.ports import PlaybackError, Unavailable
from edge.api_auth import origin_of
from edge.api_docs import errors

if TYPE_CHECKING:
    from edge.acoustics import SoundFieldControl
    from edge.service import Service

T = TypeVar("T")


class RecallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: str = Field(min_length=1, max_length=64)
    zones: list[str] | None = Field(default=None, min_length=1, max_length=32)
    fade_s: float | None = Field(default=None, ge=0, le=60, allow_inf_nan=False)


class AdaptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: str = Field(min_length=1, max_length=64)
    iterations: int = Field(default=3, ge=1, le=5, strict=True)
    sweeps: int = Field(default=2, ge=1, le=8, strict=True)
    level_db: float = Field(default=-30.0, ge=-80, le=-6, allow_inf_nan=False)


# 1-based channels, checked by MeasureIn._channels; declared for the OpenAPI document
_CHANNELS: dict[str, Any] = {"items": {"type": "integer", "minimum": 1, "maximum": 128}}


class MeasureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outputs: list[int] = Field(min_length=1, max_length=64, json_schema_extra=_CHANNELS)
    inputs: list[int] = Field(min_length=1, max_length=64, json_schema_extra=_CHANNELS)
    sweeps: int = Field(default=3, ge=1, le=16)
    level_db: float = Field(default=-20.0, ge=-80, le=0, allow_inf_nan=False)
    sweep_s: float = Field(default=2.0, ge=0.1, le=30, allow_inf_nan=False)
    ir_s: float = Field(default=2.0, ge=0.1, le=20, allow_inf_nan=False)
    noise_s: float = Field(default=1.0, ge=0, le=10, allow_inf_nan=False)
    mute_inner: bool = False
    zone: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _channels(self) -> MeasureIn:
        for what, chans in (("outputs", self.outputs), ("inputs", self.inputs)):
            if any(isinstance(c, bool) or not 1 <= c <= 128 for c in chans):
                raise ValueError(f"{what}: 1-based channels 1..128")
            if len(set(chans)) != len(chans):
                raise ValueError(f"{what}: a channel is named twice")
        return self


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["acoustics"])
    pb, sf_ = service.playback, service.soundfield
    if pb is not None and sf_ is not None:
        pb.on_panic.append(sf_.stop)  # panic silences a test signal too

    @api.get("/api/v1/acoustics")
    async def acoustics() -> dict[str, Any]:
        if service.soundfield is None:
            return {"configured": False}
        return {"configured": True, **service.soundfield.snapshot()}

    @api.post("/api/v1/acoustics/recall", responses=errors(404, 409, 422))
    async def recall(body: RecallIn, request: Request) -> dict[str, Any]:
        sf = service.soundfield
        if sf is None:
            raise HTTPException(409, "this node has no sound field ([acoustics] in the venue)")
        origin = origin_of(request)
        # ``recall`` adds what the loop-gain guard did (``loop``) before the event is written
        args: dict[str, Any] = {"mode": body.mode, "fade_s": body.fade_s}
        try:
            return await journalled(
                service.journal,
                origin,
                "acoustics.recall",
                lambda: sf.recall(body.mode, body.fade_s, origin, body.zones, args),
                targets=body.zones or list(sf.zones),
                args=args,
            )
        except Unavailable as exc:
            raise HTTPException(409, str(exc)) from None
        except PlaybackError as exc:
            raise HTTPException(exc.status or 409, str(exc)) from None

    @api.post("/api/v1/acoustics/measure", status_code=202, responses=errors(404, 409, 422))
    async def measure(body: MeasureIn, request: Request) -> dict[str, Any]:
        sf = service.soundfield
        if sf is None:
            raise HTTPException(409, "this node has no sound field ([acoustics] in the venue)")
        origin = origin_of(request)
        args = body.model_dump()
        try:
            return await journalled(
                service.journal,
                origin,
                "acoustics.measure",
                lambda: sf.measure(origin, **args),
                targets=[sf.config.device],
                args=args,
            )
        except Unavailable as exc:
            raise HTTPException(409, str(exc)) from None
        except PlaybackError as exc:
            raise HTTPException(exc.status or 409, str(exc)) from None

    @api.post(
        "/api/v1/acoustics/zones/{zone}/adapt", status_code=202, responses=errors(404, 409, 422)
    )
    async def adapt(zone: str, body: AdaptIn, request: Request) -> dict[str, Any]:
        sf = service.soundfield
        if sf is None:
            raise HTTPException(409, "this node has no sound field ([acoustics] in the venue)")
        if zone not in sf.zones:
            raise HTTPException(404, f"no sound-field zone '{zone[:64]}'")
        origin = origin_of(request)
        args = body.model_dump()
        try:
            return await journalled(
                service.journal,
                origin,
                "acoustics.adapt",
                lambda: sf.adapt(
                    zone,
                    body.mode,
                    origin,
                    body.iterations,
                    sweeps=body.sweeps,
                    level_db=body.level_db,
                ),
                targets=[zone],
                args=args,
            )
        except Unavailable as exc:
            raise HTTPException(409, str(exc)) from None
        except PlaybackError as exc:
            raise HTTPException(exc.status or 409, str(exc)) from None

    @api.post("/api/v1/acoustics/stop", responses=errors(404))
    async def stop(request: Request) -> dict[str, Any]:
        """Stop the test signal now: the running measurement is aborted and a running
        adaptation cancelled (journalled); nothing running is not an error."""
        sf = service.soundfield
        if sf is None:
            raise HTTPException(404, "this node has no sound field")
        origin = origin_of(request)
        report: dict[str, Any] = {}

        async def stop() -> dict[str, Any]:
            report.update(await sf.stop(origin))
            return report

        return await journalled(
            service.journal, origin, "acoustics.stop", stop, targets=[sf.config.device], args=report
        )

    @api.get("/api/v1/acoustics/measurements")
    async def measurements() -> dict[str, Any]:
        sf = service.soundfield
        if sf is None:
            return {"configured": False, "measurements": []}
        return {"configured": True, "measurements": await asyncio.to_thread(sf.measurements)}

    def _stored(read: Callable[[SoundFieldControl], T]) -> T:
        """``read`` of a stored result (in a worker thread): 404 where there is no sound field
        or no such result, 409 while it is still being made."""
        sf = service.soundfield
        if sf is None:
            raise HTTPException(404, "this node has no sound field")
        try:
            return read(sf)
        except Unavailable as exc:
            raise HTTPException(409, str(exc)) from None
        except PlaybackError as exc:
            raise HTTPException(exc.status or 404, str(exc)) from None

    @api.get("/api/v1/acoustics/measurements/{run_id}", responses=errors(404, 409, 422))
    async def measurement(run_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(_stored, lambda sf: sf.measurement_result(run_id))

    @api.get("/api/v1/acoustics/adaptations/{run_id}", responses=errors(404, 409, 422))
    async def adaptation(run_id: str) -> dict[str, Any]:
        """A finished adaptation's record: its iterations, result and what it played."""

        def record(sf: SoundFieldControl) -> dict[str, Any]:
            return dict(json.loads(sf.adaptation_file(run_id, "adaptation.json").read_text()))

        return await asyncio.to_thread(_stored, record)

    @api.get(
        "/api/v1/acoustics/adaptations/{run_id}/plot",
        response_class=FileResponse,
        responses=errors(404, 409, 422) | {200: {"content": {"image/png": {}}}},
    )
    async def adaptation_plot(run_id: str) -> FileResponse:
        """Its before/after plot (PNG): each metric per band against the target's JND band."""
        path = await asyncio.to_thread(
            _stored, lambda sf: sf.adaptation_file(run_id, "adaptation.png")
        )
        return FileResponse(path, media_type="image/png", filename=f"adaptation-{run_id}.png")

    return api
