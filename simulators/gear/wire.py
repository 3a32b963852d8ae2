"""The Flytower MQTT schema as a gateway vendor implements it from docs/interfaces/mqtt.md.

Pure functions only: topics, point and state payloads, command requests and replies, and the
malformed payloads the ``malformed`` fault sends. Written from the document, not from
``drivers/mqtt/schema.py``, so a disagreement between the two shows up in a test.

``decode_request`` raises ``BadRequest`` and nothing else, whatever the bytes; when the request
still names a usable ``id`` and reply topic, the exception carries them so the node can answer
``bad_request`` (mqtt.md §5), otherwise the request is unanswerable and only counted.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ROOT = "flytower"
STATE = "$state"
MAX_PAYLOAD = 64 * 1024
MAX_TOPIC = 512
SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
COMMAND = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
REQUEST_ID = re.compile(r"^[!-~]{1,128}$")
MALFORMED_KINDS = ("not_json", "wrong_type", "oversized", "nan", "wrong_topic")

Scalar = bool | int | float | str


class BadRequest(ValueError):
    """A command request that does not follow mqtt.md §5. ``request_id`` and ``reply_to`` are
    set when it can still be answered (``bad_request``); otherwise it is dropped and counted."""

    def __init__(
        self, reason: str, request_id: str | None = None, reply_to: str | None = None
    ) -> None:
        super().__init__(reason)
        self.request_id = request_id
        self.reply_to = reply_to


def check_segment(kind: str, value: str) -> str:
    if not SEGMENT.fullmatch(value):
        raise ValueError(f"{kind} {value!r} is not a valid topic level (mqtt.md §2)")
    return value


def node_topic(venue: str, node: str) -> str:
    return f"{ROOT}/{venue}/{node}/{STATE}"


def device_topic(venue: str, node: str, device: str, leaf: str) -> str:
    return f"{ROOT}/{venue}/{node}/{device}/{leaf}"


def command_filter(venue: str, node: str) -> str:
    return f"{ROOT}/{venue}/{node}/+/cmd/+"


def dumps(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def encode_point(value: Scalar | None, ts_ms: int, quality: str = "good") -> bytes:
    """``{"v","ts","q"}``; a non-finite number goes out as ``null`` with quality ``bad``."""
    if isinstance(value, float) and not math.isfinite(value):
        value = None
    if value is None:
        quality = "bad"
    return dumps({"v": value, "ts": ts_ms, "q": quality})


def encode_birth(ts_ms: int, session: int, devices: list[str]) -> bytes:
    return dumps({"state": "online", "ts": ts_ms, "session": session, "devices": sorted(devices)})


def encode_death(ts_ms: int, session: int, reason: str) -> bytes:
    """The goodbye (``shutdown``) or the will (``lost``, with ``ts`` = the session)."""
    return dumps({"state": "offline", "ts": ts_ms, "session": session, "reason": reason})


def encode_device_state(state: str, ts_ms: int, profile: str, reason: str = "") -> bytes:
    return dumps({"state": state, "ts": ts_ms, "profile": profile, "reason": reason})


@dataclass(frozen=True)
class CommandRequest:
    device: str
    name: str
    id: str
    args: dict[str, Scalar | None]
    reply_to: str
    ts_ms: int


def _reply_topic_ok(topic: str) -> bool:
    return (
        1 <= len(topic) <= MAX_TOPIC
        and not topic.startswith("$")
        and not any(c in topic for c in "+#\x00")
        and not (topic.startswith(f"{ROOT}/") and topic.rsplit("/", 1)[-1] == STATE)
    )


def _finite(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"{token} is not a finite number")
    return value


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not standard JSON")


def decode_request(topic: str, payload: bytes, venue: str, node: str) -> CommandRequest:
    """A request on ``flytower/{venue}/{node}/{device}/cmd/{name}``, checked as §5 says."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[:3] != [ROOT, venue, node] or parts[4] != "cmd":
        raise BadRequest(f"topic {topic!r} is not a command topic of node {node}")
    if not SEGMENT.fullmatch(parts[3]) or not COMMAND.fullmatch(parts[5]):
        raise BadRequest(f"topic {topic!r} has an invalid device or command name")
    if len(payload) > MAX_PAYLOAD:
        raise BadRequest(f"request of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        doc = json.loads(payload, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"request is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request must be a JSON object")
    reply_to = doc.get("reply_to", f"{topic}/reply")
    if not isinstance(reply_to, str) or not _reply_topic_ok(reply_to):
        raise BadRequest("'reply_to' is not a topic a reply can be published on")
    rid = doc.get("id")
    if not isinstance(rid, str) or not REQUEST_ID.fullmatch(rid):
        raise BadRequest("'id' must be 1 to 128 printable ASCII characters without spaces")

    def bad(reason: str) -> BadRequest:
        return BadRequest(reason, rid, reply_to)

    if extra := sorted(set(doc) - {"id", "args", "reply_to", "ts"}):
        raise bad(f"unknown key(s) {extra}")
    ts = doc.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 2**53:
        raise bad("'ts' must be epoch milliseconds as a non-negative integer")
    args = doc.get("args", {})
    if not isinstance(args, dict):
        raise bad("'args' must be a JSON object")
    for k, v in args.items():
        if v is not None and not isinstance(v, bool | int | float | str):
            raise bad(f"argument {k!r} must be a scalar")
    return CommandRequest(parts[3], parts[5], rid, dict(args), reply_to, ts)


def encode_reply(
    request_id: str, code: str, ts_ms: int, result: Any = None, error: str = ""
) -> bytes:
    if code == "ok":
        return dumps({"id": request_id, "ok": True, "result": result, "code": code, "ts": ts_ms})
    return dumps({"id": request_id, "ok": False, "error": error, "code": code, "ts": ts_ms})


def malformed(kind: str, topic: str, ts_ms: int) -> tuple[str, bytes]:
    """One bad message for a native point ``topic``: what a receiver must count and survive."""
    if kind == "not_json":
        return topic, b"\xff{not json"
    if kind == "wrong_type":
        return topic, dumps({"v": {"nested": [1, 2]}, "ts": "yesterday", "q": 7})
    if kind == "oversized":
        return topic, dumps({"v": "x" * (MAX_PAYLOAD + 16), "ts": ts_ms, "q": "good"})
    if kind == "nan":
        return topic, b'{"v":NaN,"ts":%d,"q":"good"}' % ts_ms
    if kind == "wrong_topic":
        head, _, point = topic.rpartition("/")
        return f"{head}/-{point}", encode_point(0.0, ts_ms)  # '-' cannot start a level
    raise ValueError(f"unknown malformed kind {kind!r} (known: {', '.join(MALFORMED_KINDS)})")


def malformed_vendor(kind: str, topic: str) -> tuple[str, bytes]:
    """The same for a third-party device whose topics carry bare values."""
    if kind == "not_json":
        return topic, b"\xff\xfe"
    if kind == "wrong_type":
        return topic, b'{"value":"high"}'
    if kind == "oversized":
        return topic, b"9" * (MAX_PAYLOAD + 16)
    if kind == "nan":
        return topic, b"NaN"
    if kind == "wrong_topic":
        return f"{topic}/extra", b"0"
    raise ValueError(f"unknown malformed kind {kind!r} (known: {', '.join(MALFORMED_KINDS)})")


def vendor_value(value: Scalar) -> bytes:
    """A Shelly Gen1 payload: a bare number, or the value's own text (``on``, ``true``)."""
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, float):
        return repr(round(value, 3)).encode()
    return str(value).encode()
