"""The OpenAPI document's account of errors: what every refusal looks like and which ones
each operation can give.

Every error answer is ``{"detail": ...}``: a sentence, or a list of problems (``loc`` and
``msg``: where and what, never the input echoed back; a show file's problems are sentences).
The answers the access gate gives (401, 403, 429) and the body parser's 400 are added to
every operation they apply to, from the same rules the gate runs (``api_auth.needed``); a
route lists its own (``errors(404, 409)``) beside its decorator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.routing import compile_path


class Problem(BaseModel):
    loc: list[str]
    msg: str


class ErrorOut(BaseModel):
    detail: str | list[Problem | str]


WHY = {
    400: "The body is not JSON that can be read",
    401: "No credential, or one that is unknown, expired or revoked",
    403: "The credential's role lacks the permission this operation needs",
    404: "What the path or the request names does not exist on this node",
    409: "Refused in the present state (the message says what stands in the way)",
    422: "The request is invalid: where and why",
    429: "Too many requests from this credential (see Retry-After)",
    503: "The part of the service this needs is not running or cannot answer now",
}
METHODS = ("get", "put", "post", "delete", "patch")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that can refuse with ``codes``."""
    return {c: {"model": ErrorOut, "description": WHY[c]} for c in codes}


def csv_or_parquet() -> dict[int | str, dict[str, Any]]:
    """``responses=`` for an export that streams CSV or Parquet, not JSON."""
    content = {
        "text/csv": {"schema": {"type": "string"}},
        "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
    }
    return {200: {"description": "The rows, streamed as a file", "content": content}}


def complete(app: FastAPI) -> None:
    """Have ``app`` publish a document whose error answers are the ones it gives."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _add_errors(build())
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def allowed_methods(app: FastAPI, path: str) -> set[str]:
    """The methods the document has for ``path`` (a 405's ``Allow``)."""
    return {
        method.upper()
        for template, item in app.openapi()["paths"].items()
        if compile_path(template)[0].match(path)
        for method in item
        if method in METHODS
    }


def _add_errors(doc: dict[str, Any]) -> None:
    from edge.api_auth import STOP_ONLY, needed  # which imports this module's ``errors``

    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    ref = "#/components/schemas/{model}"
    error = ErrorOut.model_json_schema(ref_template=ref)
    schemas.update(error.pop("$defs", {}))
    schemas["ErrorOut"] = error
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    body = {"application/json": {"schema": {"$ref": ref.format(model="ErrorOut")}}}
    for path, item in doc.get("paths", {}).items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            answers = op.setdefault("responses", {})
            codes = [400] if "requestBody" in op else []
            perms = needed(method.upper(), path)
            if perms is not None:
                codes += [401, 403] + ([] if perms == STOP_ONLY else [429])
            for code in codes:
                answers.setdefault(str(code), {"description": WHY[code]})
            for code, answer in answers.items():
                if code.isdigit() and int(code) >= 400:
                    answer["content"] = body
                    answer.setdefault("description", WHY.get(int(code), "Refused"))
