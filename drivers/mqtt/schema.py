"""MQTT topic and payload schema (docs/interfaces/mqtt.md): pure functions, fuzzed.

flytower/{venue}/{node}/{device}/{point}      {"v": value, "ts": epoch ms, "q": "good"}
flytower/{venue}/{node}/$state                 retained birth / LWT death of the node
flytower/{venue}/{node}/{device}/$state        retained device availability
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from drivers.model import Quality, Value

ROOT = "flytower"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_PAYLOAD = 64 * 1024


class SchemaError(ValueError):
    """A topic or payload that does not follow docs/interfaces/mqtt.md."""


def _segment(kind: str, value: str) -> str:
    if not _SEGMENT.fullmatch(value):
        raise SchemaError(f"{kind} {value!r} is not a valid topic segment")
    return value


def point_topic(venue: str, node: str, device: str, point: str) -> str:
    parts = [("venue", venue), ("node", node), ("device", device), ("point", point)]
    return "/".join([ROOT, *(_segment(k, v) for k, v in parts)])


def _node_prefix(venue: str, node: str) -> str:
    return f"{ROOT}/{_segment('venue', venue)}/{_segment('node', node)}"


def node_state_topic(venue: str, node: str) -> str:
    return f"{_node_prefix(venue, node)}/$state"


def device_state_topic(venue: str, node: str, device: str) -> str:
    return f"{_node_prefix(venue, node)}/{_segment('device', device)}/$state"


@dataclass(frozen=True, slots=True)
class PointMessage:
    venue: str
    node: str
    device: str
    point: str
    value: Value | None
    ts_ms: int
    quality: Quality


def encode_value(value: Value | None, ts_wall: float, quality: Quality) -> bytes:
    if isinstance(value, float) and not math.isfinite(value):
        value, quality = None, Quality.BAD  # JSON has no NaN/inf; say so rather than lie
    if value is None and quality is Quality.GOOD:
        quality = Quality.BAD  # 'good' with no value would be a lie receivers reject
    return json.dumps(
        {"v": value, "ts": round(ts_wall * 1000), "q": quality.value}, separators=(",", ":")
    ).encode()


def encode_state(state: str, ts_wall: float, **extra: Any) -> bytes:
    return json.dumps(
        {"state": state, "ts": round(ts_wall * 1000), **extra}, separators=(",", ":")
    ).encode()


def decode_point(topic: str, payload: bytes) -> PointMessage:
    """Parse a point message; SchemaError says exactly what is wrong."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != ROOT:
        raise SchemaError(f"topic {topic!r} is not {ROOT}/venue/node/device/point")
    for kind, value in zip(("venue", "node", "device", "point"), parts[1:], strict=True):
        _segment(kind, value)
    if len(payload) > MAX_PAYLOAD:
        raise SchemaError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, a 5000-digit integer
        raise SchemaError(f"payload is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise SchemaError("payload must be a JSON object")
    if extra := sorted(set(doc) - {"v", "ts", "q"}):
        raise SchemaError(f"unknown key(s) {extra}")
    v = doc.get("v")
    if v is not None and not isinstance(v, bool | int | float | str):
        raise SchemaError("'v' must be a number, boolean, string or null")
    if isinstance(v, float) and not math.isfinite(v):
        raise SchemaError("'v' must be finite")
    ts = doc.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 2**53:
        raise SchemaError("'ts' must be epoch milliseconds as a non-negative integer")
    try:
        quality = Quality(doc.get("q", "good"))
    except ValueError as exc:
        raise SchemaError(f"'q' must be one of {[q.value for q in Quality]}") from exc
    if v is None and quality is Quality.GOOD:
        raise SchemaError("a null value cannot have quality 'good'")
    return PointMessage(parts[1], parts[2], parts[3], parts[4], v, ts, quality)
