"""Third-party MQTT devices mapped by a profile (``PointSpec.mqtt``): pure functions, fuzzed.

A device that does not speak our schema (a zigbee2mqtt bridge, a Tasmota plug, a PLC's MQTT
gateway) keeps its points under its own ``base`` topic, often several in one JSON object
(``zigbee2mqtt/foyer-sensor`` -> ``{"temperature": 21.5, "humidity": 40}``). A point's
``MqttWire`` says which topic, which (dotted) field, how strings map to values (``"ON"`` ->
true) and where a write goes. Everything here raises ``SchemaError`` for what cannot be a value
of the point; the driver counts those and publishes nothing for them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from drivers.model import MqttWire, PointSpec, Value, ValueType
from drivers.mqtt.schema import MAX_PAYLOAD, SchemaError

_ABSENT = object()


def resolve(base: str, topic: str) -> str:
    """A wire topic is relative to the device's base unless it starts with ``/``."""
    return topic[1:] if topic.startswith("/") else f"{base.rstrip('/')}/{topic}"


class _NonFinite(ValueError):
    pass


def _finite(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _NonFinite(f"{token} is not a finite number")
    return value


def _non_standard(token: str) -> Any:
    raise _NonFinite(f"{token} is not a finite number (and not standard JSON)")


def parse_payload(payload: bytes) -> Any:
    """JSON if the payload is JSON, else its text (``ON``, ``21.5`` without quotes is JSON)."""
    if len(payload) > MAX_PAYLOAD:
        raise SchemaError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"payload is not UTF-8 text: {exc}") from exc
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_non_standard)
    except RecursionError as exc:
        raise SchemaError("payload is nested too deeply") from exc
    except _NonFinite as exc:
        raise SchemaError(f"payload has a non-finite number: {exc}") from exc
    except ValueError:  # not JSON: a bare word such as ON
        return text.strip()


def extract(doc: Any, wire: MqttWire) -> Any:
    """The raw value of ``wire.field`` in a parsed payload; None if it is absent or null."""
    if wire.field is None:
        return doc
    value: Any = doc
    for key in wire.field.split("."):
        if not isinstance(value, dict):
            raise SchemaError(f"field '{wire.field}': payload is not a JSON object at '{key}'")
        value = value.get(key, _ABSENT)
        if value is _ABSENT:
            return None
    return value


class Mapped:
    """One readable mapped point of a topic, compiled once per driver: its field's key path
    and, for a float point with no value map, its range, so that the common case (a JSON
    number in range) takes a dictionary lookup and two comparisons. Whatever else
    (``read``'s slow path) goes through ``extract`` and ``to_value``, which say why a value
    is refused."""

    __slots__ = ("hi", "key", "lo", "name", "plain_float", "spec")

    def __init__(self, spec: PointSpec) -> None:
        wire = spec.mqtt
        assert wire is not None
        self.spec, self.name = spec, spec.name
        path = None if wire.field is None else wire.field.split(".")
        self.key = path[0] if path is not None and len(path) == 1 else None
        self.plain_float = spec.dtype is ValueType.FLOAT and not wire.values
        self.lo = -math.inf if spec.min is None else float(spec.min)
        self.hi = math.inf if spec.max is None else float(spec.max)

    def read(self, doc: Any) -> Value | None:
        """The point's value in a parsed payload; None if the payload does not carry it.
        Raises ``SchemaError`` as ``extract`` / ``to_value`` do."""
        key = self.key
        if key is not None and type(doc) is dict:
            raw = doc.get(key)
            if raw is None:
                return None
            # A JSON number is finite here (``parse_payload`` refuses the others).
            if self.plain_float and type(raw) is float and self.lo <= raw <= self.hi:
                return raw
        else:
            raw = extract(doc, self.spec.mqtt)  # type: ignore[arg-type]  # set: __init__
            if raw is None:
                return None
        return to_value(self.spec, raw)


def to_value(spec: PointSpec, raw: Any) -> Value:
    """Map and type-check a raw value for ``spec``; SchemaError says why it is not one."""
    wire = spec.mqtt
    if wire is not None and isinstance(raw, str) and raw in wire.values:
        raw = wire.values[raw]
    where = f"point '{spec.name}'"
    if spec.dtype is ValueType.BOOL:
        if not isinstance(raw, bool):
            raise SchemaError(f"{where}: expected true/false, got {raw!r:.40}")
        return raw
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise SchemaError(f"{where}: expected a number, got {raw!r:.40}")
    if isinstance(raw, float) and not math.isfinite(raw):
        raise SchemaError(f"{where}: {raw} is not a finite number")
    value: Value
    if spec.dtype is ValueType.INT:
        if float(raw) != int(raw):
            raise SchemaError(f"{where}: expected a whole number, got {raw}")
        value = int(raw)
    else:
        value = float(raw)
    if reason := spec.check_range(float(value)):
        raise SchemaError(f"{where}: {reason}")
    return value


def encode_set(spec: PointSpec, value: Value) -> tuple[str, bytes]:
    """(relative topic, payload) that writes ``value`` to a writable mapped point."""
    wire = spec.mqtt
    if wire is None or wire.set_topic is None:
        raise SchemaError(f"point '{spec.name}' has no set_topic: it cannot be written")
    # Reverse the value map (true -> "ON"); compare types too, because True == 1 in Python.
    out: Any = next(
        (k for k, v in wire.values.items() if type(v) is type(value) and v == value), value
    )
    if isinstance(out, float) and not math.isfinite(out):
        raise SchemaError(f"point '{spec.name}': {out} is not a finite number")
    if wire.set_field is not None:
        return wire.set_topic, json.dumps({wire.set_field: out}, separators=(",", ":")).encode()
    if isinstance(out, str):
        return wire.set_topic, out.encode()
    return wire.set_topic, json.dumps(out).encode()
