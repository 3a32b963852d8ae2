"""A typed router: OSC address templates with argument signatures, mapped to async handlers.

The OSC driver does not know the cue engine or the devices; the service registers a handler
for each address it serves (``drivers/osc/address_space.py`` lists the documented ones). A
route is a template such as ``/cue/{number}/start``: each ``{name}`` matches one non-empty path
segment, taken literally (so ``/cue/*/stop`` gives ``number="*"``, which the cue engine may read
as QLab does: every cue). Arguments are checked against the route's signature before the
handler runs, so a handler only ever sees the types it declared; a mismatch becomes an error
reply that says what was expected.

A handler returns the reply's ``data`` (anything JSON can carry, or None) or raises
``OscRequestError(reason)`` for an error reply.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class OscRequestError(Exception):
    """Raised by a handler (or the router) to answer with status "error" and this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ArgType(StrEnum):
    STRING = "string"  # s
    NUMBER = "number"  # i, h, f or d; finite; given to the handler as float
    INT = "int"  # i or h, or a float with a whole value (many controllers only send floats)
    BOOL = "bool"  # T or F, or the numbers 0 and 1 (for controllers without T/F)
    JSON_OBJECT = "json-object"  # s holding a JSON object; given to the handler as a dict


@dataclass(frozen=True, slots=True)
class ArgSpec:
    name: str
    type: ArgType
    optional: bool = False  # only trailing arguments may be optional

    def __str__(self) -> str:
        return f"{self.name}: {self.type}{'?' if self.optional else ''}"


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One documented address: its template, its arguments and what it does."""

    template: str
    args: tuple[ArgSpec, ...] = ()
    description: str = ""
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.template.startswith("/"):
            raise ValueError(f"template {self.template!r} must start with '/'")
        seen_optional = False
        for arg in self.args:
            if seen_optional and not arg.optional:
                raise ValueError(f"{self.template}: optional arguments must come last")
            seen_optional |= arg.optional
        parts = re.split(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", self.template)
        pattern = "".join(f"(?P<{p}>[^/]+)" if i % 2 else re.escape(p) for i, p in enumerate(parts))
        object.__setattr__(self, "regex", re.compile(f"^{pattern}$"))

    @property
    def signature(self) -> str:
        return f"({', '.join(str(a) for a in self.args)})"


Transport = Literal["udp", "tcp"]


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a request came from; replies go back there."""

    transport: Transport
    host: str
    port: int

    def __str__(self) -> str:
        return f"osc.{self.transport}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class OscRequest:
    address: str
    params: Mapping[str, str]  # the {name} segments of the template
    args: Mapping[str, Any]  # checked arguments by name; omitted optional ones are absent
    source: Peer


Handler = Callable[[OscRequest], Awaitable[Any]]


class OscRouter:
    """Routes are tried in the order they were added; the first whose template matches wins."""

    def __init__(self) -> None:
        self._routes: list[tuple[RouteSpec, Handler]] = []

    def add(self, spec: RouteSpec, handler: Handler) -> None:
        if any(s.template == spec.template for s, _ in self._routes):
            raise ValueError(f"{spec.template} already has a handler")
        self._routes.append((spec, handler))

    @property
    def templates(self) -> list[str]:
        return [s.template for s, _ in self._routes]

    def resolve(self, address: str) -> tuple[RouteSpec, Handler, dict[str, str]] | None:
        for spec, handler in self._routes:
            m = spec.regex.match(address)
            if m is not None:
                return spec, handler, m.groupdict()
        return None


def check_args(spec: RouteSpec, address: str, args: tuple[Any, ...]) -> dict[str, Any]:
    """The arguments by name, converted; ``OscRequestError`` saying what was expected."""
    required = sum(1 for a in spec.args if not a.optional)
    expected = f"{address} expects {spec.signature}, got ({', '.join(_osc_type(a) for a in args)})"
    if not required <= len(args) <= len(spec.args):
        raise OscRequestError(expected)
    out: dict[str, Any] = {}
    for arg_spec, value in zip(spec.args, args, strict=False):
        converted = _convert(arg_spec.type, value)
        if converted is _BAD:
            raise OscRequestError(expected)
        if arg_spec.type is ArgType.JSON_OBJECT and not isinstance(converted, dict):
            raise OscRequestError(f"{address}: argument '{arg_spec.name}' {converted}")
        out[arg_spec.name] = converted
    return out


_BAD = object()


def _convert(kind: ArgType, value: Any) -> Any:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is ArgType.STRING:
        return value if isinstance(value, str) else _BAD
    if kind is ArgType.NUMBER:
        return float(value) if number and math.isfinite(value) else _BAD
    if kind is ArgType.INT:
        if number and math.isfinite(value) and float(value).is_integer():
            return int(value)
        return _BAD
    if kind is ArgType.BOOL:
        if isinstance(value, bool):
            return value
        return bool(value) if number and value in (0, 1) else _BAD
    if not isinstance(value, str):
        return _BAD
    return _json_object(value)


def _json_object(text: str) -> dict[str, Any] | str:
    """The parsed object, or why it is not one (a str, so the caller can report it)."""
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        return "is nested too deeply"
    except ValueError as exc:
        return f"is not valid JSON ({exc})"
    if not isinstance(obj, dict):
        return f"must be a JSON object, got {type(obj).__name__}"
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _osc_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes):
        return "blob"
    if value is None:
        return "nil"
    if isinstance(value, list):
        return "array"
    return type(value).__name__
