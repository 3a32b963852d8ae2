"""Lighting routes under ``/api/v1/lighting`` (docs/lighting.md).

- ``GET /api/v1/lighting``: output statistics, universes, faders, sources, and every fixture's
  present output (point values after masters);
- ``GET /api/v1/lighting/universes/{u}``: the 512 levels last sent for universe ``u``;
- ``PUT /api/v1/lighting/faders/{name}`` ``{"level": 0..100}``: a master in percent
  (``grand``, a group or a fixture);
- ``PUT /api/v1/lighting/fixtures/{id}`` ``{"attributes": {...}, "fade_s": 0, "delay_s": 0,
  "curve": "linear"}``: set or fade a fixture's attributes through the operator source
  (priority ``OPERATOR_PRIORITY``, above cue lists);
- ``DELETE /api/v1/lighting/fixtures/{id}?fade_s=…``: the operator lets go of the fixture.

404 when this node renders no lighting, or for an unknown universe, fader or fixture; 422 with
the reason for unknown attributes, values out of range or not finite, and bad times or curves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from controller.lighting import LightingEngine, LightingError
from edge.api_docs import errors

if TYPE_CHECKING:
    from edge.service import Service

OPERATOR_SOURCE = "operator"
OPERATOR_PRIORITY = 150

Seconds = Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False, strict=True)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]


class FaderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False, strict=True)]


class FixtureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attributes: dict[str, StrictBool | StrictInt | FiniteFloat] = Field(min_length=1)
    fade_s: Seconds = 0.0
    delay_s: Seconds = 0.0
    curve: Literal["linear", "s", "log"] = "linear"


def router(service: Service) -> APIRouter:
    api = APIRouter(prefix="/api/v1/lighting", tags=["lighting"], responses=errors(404))

    def engine() -> LightingEngine:
        if service.lighting is None:
            raise HTTPException(404, "this node renders no lighting (the venue has no DMX outputs)")
        return service.lighting

    def unprocessable(loc: list[str], exc: LightingError) -> HTTPException:
        return HTTPException(422, [{"loc": loc, "msg": str(exc)}])

    @api.get("")
    async def lighting() -> dict[str, Any]:
        return engine().status()

    @api.get("/universes/{universe}")
    async def universe(universe: int) -> dict[str, Any]:
        e = engine()
        if universe not in e.patch.universes:
            raise HTTPException(
                404,
                f"universe {universe} is not rendered here "
                f"(rendered: {', '.join(map(str, e.patch.universes))})",
            )
        return {"universe": universe, "levels": e.universe(universe).tolist()}

    @api.put("/faders/{name}")
    async def fader(name: str, body: FaderIn) -> dict[str, Any]:
        e = engine()
        if name != "grand" and name not in e.patch.fixtures and name not in e.patch.groups:
            raise HTTPException(
                404,
                f"no fader '{name}' (faders: grand, groups "
                f"{', '.join(sorted(e.patch.groups)) or 'none'}, or a fixture id)",
            )
        try:
            e.set_fader(name, body.level / 100.0)
        except LightingError as exc:
            raise unprocessable(["body", "level"], exc) from None
        return {"name": name, "level": body.level}

    @api.put("/fixtures/{fixture_id}")
    async def set_fixture(fixture_id: str, body: FixtureIn) -> dict[str, Any]:
        e = engine()
        if fixture_id not in e.patch.fixtures:
            raise HTTPException(404, f"no fixture '{fixture_id}'")
        pf = e.patch.fixtures[fixture_id]
        unknown = sorted(set(body.attributes) - set(pf.attributes))
        if unknown:
            raise HTTPException(
                422,
                [
                    {
                        "loc": ["body", "attributes", name],
                        "msg": f"fixture '{fixture_id}' ({pf.profile.id}) has no attribute "
                        f"'{name}' (known: {', '.join(pf.attributes)})",
                    }
                    for name in unknown
                ],
            )
        src = e.source(OPERATOR_SOURCE, OPERATOR_PRIORITY, kind="manual")
        try:
            src.fade(
                {fixture_id: dict(body.attributes)},
                body.fade_s,
                delay_s=body.delay_s,
                curve=body.curve,
            )
        except LightingError as exc:
            raise unprocessable(["body", "attributes"], exc) from None
        return {
            "fixture": fixture_id,
            "targets": body.attributes,
            "fade_s": body.fade_s,
            "delay_s": body.delay_s,
            "curve": body.curve,
        }

    @api.delete("/fixtures/{fixture_id}")
    async def release_fixture(
        fixture_id: str, fade_s: Annotated[float, Query(ge=0, le=86_400, allow_inf_nan=False)] = 0.0
    ) -> dict[str, Any]:
        e = engine()
        if fixture_id not in e.patch.fixtures:
            raise HTTPException(404, f"no fixture '{fixture_id}'")
        src = e.sources.get(OPERATOR_SOURCE)
        released = src.release([fixture_id], fade_s=fade_s) if src is not None else 0
        return {"fixture": fixture_id, "released": released, "fade_s": fade_s}

    return api
