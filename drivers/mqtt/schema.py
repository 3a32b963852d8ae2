"""MQTT topic and payload schema (docs/interfaces/mqtt.md): pure functions, fuzzed.

::

    flytower/{venue}/{node}/$state                    retained node birth / goodbye / LWT death
    flytower/{venue}/{node}/{device}/$state           retained device birth (profile, health)
    flytower/{venue}/{node}/{device}/{point}          {"v": value, "ts": epoch ms, "q": "good"}
    flytower/{venue}/{node}/{device}/cmd/{name}       {"id", "args", "reply_to", "ts"}
    {reply_to}  (default …/cmd/{name}/reply)          {"id", "ok", "result" | "error", "code", "ts"}
    flytower/{venue}/{requester}/$reply               inbox of a Flytower requester
    flytower/{venue}/$control/{active|events|positions|show}  the hot standby's (control.py)

Every decoder checks everything a receiver relies on and raises ``SchemaError`` with a reason a
person can act on; nothing else escapes, whatever the bytes (the unit tests fuzz this). Encoders
write compact ASCII JSON and never the non-standard ``NaN``/``Infinity`` tokens.

The JSON fields are the contract, so the schema works over MQTT 3.1.1 and with any client.
Over MQTT 5 a requester may instead give the reply topic as the *Response Topic* property; the
link echoes *Correlation Data* back, but the command ``id`` in the JSON stays the one key for
correlation and de-duplication (``decode_command(..., response_topic=...)``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from drivers.model import HealthState, Quality, Value

ROOT = "flytower"
STATE = "$state"
CMD = "cmd"
REPLY = "$reply"
TIME = "$time"  # a node's clock, probed NTP-style over the broker
CLOCK = "$clock"  # a requester's inbox for the answers of clock probes
CONTROL = "$control"  # which controller holds the show, and what it sends its standby
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_COMMAND = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_REQUEST_ID = re.compile(r"^[!-~]{1,128}$")  # printable ASCII, no spaces
MAX_PAYLOAD = 64 * 1024
MAX_TOPIC = 512

NodeStateName = Literal["online", "offline"]
OfflineReason = Literal["shutdown", "lost"]
ReplyCode = Literal[
    "ok", "refused", "unavailable", "bad_request", "expired", "busy", "timeout", "internal"
]
REPLY_CODES: tuple[str, ...] = (
    "ok",
    "refused",
    "unavailable",
    "bad_request",
    "expired",
    "busy",
    "timeout",
    "internal",
)


class SchemaError(ValueError):
    """A topic or payload that does not follow docs/interfaces/mqtt.md.

    For a command request that is malformed but still names its ``id`` and where to reply,
    ``request_id`` and ``reply_to`` are set, so the node can answer ``bad_request``.
    """

    def __init__(
        self, reason: str, *, request_id: str | None = None, reply_to: str | None = None
    ) -> None:
        super().__init__(reason)
        self.request_id = request_id
        self.reply_to = reply_to


# --- topics --------------------------------------------------------------------------------


def _segment(kind: str, value: str) -> str:
    if not _SEGMENT.fullmatch(value):
        raise SchemaError(f"{kind} {value!r} is not a valid topic segment")
    return value


def _node_prefix(venue: str, node: str) -> str:
    return f"{ROOT}/{_segment('venue', venue)}/{_segment('node', node)}"


def _device_prefix(venue: str, node: str, device: str) -> str:
    return f"{_node_prefix(venue, node)}/{_segment('device', device)}"


def point_topic(venue: str, node: str, device: str, point: str) -> str:
    return f"{_device_prefix(venue, node, device)}/{_segment('point', point)}"


def node_state_topic(venue: str, node: str) -> str:
    return f"{_node_prefix(venue, node)}/{STATE}"


def device_state_topic(venue: str, node: str, device: str) -> str:
    return f"{_device_prefix(venue, node, device)}/{STATE}"


def device_filter(venue: str, node: str, device: str) -> str:
    """Subscription for a device's points and its ``$state`` (not its commands)."""
    return f"{_device_prefix(venue, node, device)}/+"


def command_topic(venue: str, node: str, device: str, name: str) -> str:
    if not _COMMAND.fullmatch(name):
        raise SchemaError(f"command {name!r} is not a valid command name")
    return f"{_device_prefix(venue, node, device)}/{CMD}/{name}"


def command_filter(venue: str, node: str, device: str) -> str:
    return f"{_device_prefix(venue, node, device)}/{CMD}/+"


def default_reply_topic(command_topic: str) -> str:
    """Where a reply goes when the request names no ``reply_to`` (and no Response Topic)."""
    return f"{command_topic}/reply"


def time_topic(venue: str, node: str) -> str:
    """Where a node answers clock probes (``{"id", "t0", "reply_to"}``, §5.4)."""
    return f"{_node_prefix(venue, node)}/{TIME}"


def clock_inbox(venue: str, requester: str) -> str:
    """The topic a requester's clock probes are answered on."""
    return f"{ROOT}/{_segment('venue', venue)}/{_segment('requester', requester)}/{CLOCK}"


def safety_topic(venue: str, node: str) -> str:
    """A node's machinery safety state, retained (E-stop latched and why, an enable held)."""
    return f"{_node_prefix(venue, node)}/$safety"


def control_topic(
    venue: str, what: Literal["active", "events", "positions", "show", "estop"]
) -> str:
    """The venue's control seat (docs/distributed.md, "Hot standby"): ``active`` (retained)
    names the controller that holds the show, ``events`` carries the commands it accepted to
    its standby, ``positions`` (retained) each cue list's current and standby cue, ``show``
    (retained) the show it last loaded; ``estop`` a controller's E-stop for every node."""
    return f"{ROOT}/{_segment('venue', venue)}/{CONTROL}/{what}"


def reply_inbox(venue: str, requester: str) -> str:
    """The reply topic a Flytower requester (a node or controller) subscribes to."""
    return f"{ROOT}/{_segment('venue', venue)}/{_segment('requester', requester)}/{REPLY}"


def check_reply_to(topic: str) -> str:
    """A reply topic must be a valid topic to publish on, and not a system (``$``) topic."""
    if not 1 <= len(topic) <= MAX_TOPIC:
        raise SchemaError(f"'reply_to' must be 1 to {MAX_TOPIC} characters")
    if topic.startswith("$") or any(c in topic for c in "+#\x00"):
        raise SchemaError("'reply_to' must not contain wildcards or NUL, nor start with '$'")
    if topic.startswith(f"{ROOT}/") and topic.rsplit("/", 1)[-1] == STATE:
        raise SchemaError("'reply_to' must not be a $state topic")
    return topic


# --- JSON helpers --------------------------------------------------------------------------


def _finite(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):  # 1e400 overflows to inf; JSON has no infinities
        raise ValueError(f"{token} is not a finite number")
    return value


def _non_standard(token: str) -> Any:
    raise ValueError(f"{token} is not a finite number (and not standard JSON)")


def _load_object(payload: bytes, what: str) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise SchemaError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        doc = json.loads(payload, parse_float=_finite, parse_constant=_non_standard)
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, a 5000-digit integer
        raise SchemaError(f"payload is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise SchemaError(f"{what} payload must be a JSON object")
    return doc


def _check_keys(doc: Mapping[str, Any], allowed: set[str], required: set[str]) -> None:
    if extra := sorted(set(doc) - allowed):
        raise SchemaError(f"unknown key(s) {extra}")
    if missing := sorted(required - set(doc)):
        raise SchemaError(f"missing key(s) {missing}")


def _ts(doc: Mapping[str, Any], key: str = "ts") -> int:
    ts = doc.get(key)
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 2**53:
        raise SchemaError(f"'{key}' must be epoch milliseconds as a non-negative integer")
    return ts


def _us(doc: Mapping[str, Any], key: str) -> int:
    t = doc.get(key)
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < 2**53:
        raise SchemaError(f"'{key}' must be epoch microseconds as a non-negative integer")
    return t


def _scalar(where: str, v: Any) -> Value | None:
    if v is not None and not isinstance(v, bool | int | float | str):
        raise SchemaError(f"{where} must be a number, boolean, string or null")
    return v


def _text(doc: Mapping[str, Any], key: str, limit: int = 1000) -> str:
    v = doc.get(key, "")
    if not isinstance(v, str) or len(v) > limit:
        raise SchemaError(f"'{key}' must be a string of at most {limit} characters")
    return v


def _dumps(doc: Mapping[str, Any]) -> bytes:
    # allow_nan=False: a NaN must fail here, loudly, not leave as a token receivers reject.
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def ms(ts_wall: float) -> int:
    return round(ts_wall * 1000)


def us(ts_wall: float) -> int:
    return round(ts_wall * 1_000_000)


# --- point messages ------------------------------------------------------------------------


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
    return _dumps({"v": value, "ts": ms(ts_wall), "q": quality.value})


def decode_point(topic: str, payload: bytes) -> PointMessage:
    """Parse a point message; SchemaError says exactly what is wrong."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != ROOT:
        raise SchemaError(f"topic {topic!r} is not {ROOT}/venue/node/device/point")
    for kind, value in zip(("venue", "node", "device", "point"), parts[1:], strict=True):
        _segment(kind, value)
    doc = _load_object(payload, "point")
    _check_keys(doc, {"v", "ts", "q"}, set())
    v = _scalar("'v'", doc.get("v"))
    ts = _ts(doc)
    try:
        quality = Quality(doc.get("q", "good"))
    except ValueError as exc:
        raise SchemaError(f"'q' must be one of {[q.value for q in Quality]}") from exc
    if v is None and quality is Quality.GOOD:
        raise SchemaError("a null value cannot have quality 'good'")
    return PointMessage(parts[1], parts[2], parts[3], parts[4], v, ts, quality)


# --- node and device state -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeState:
    """Birth (``online``, with the node's devices), goodbye or will (``offline``).

    ``session`` names one connection of the node (epoch ms of its connect): a death whose
    session is not the one of the latest birth is stale and must be ignored (Sparkplug's bdSeq).
    """

    state: NodeStateName
    ts_ms: int
    session: int
    devices: tuple[str, ...] = ()
    reason: OfflineReason | None = None


def encode_node_state(s: NodeState) -> bytes:
    doc: dict[str, Any] = {"state": s.state, "ts": s.ts_ms, "session": s.session}
    if s.state == "online":
        doc["devices"] = list(s.devices)
    else:
        doc["reason"] = s.reason or "shutdown"
    return _dumps(doc)


def decode_node_state(payload: bytes) -> NodeState:
    doc = _load_object(payload, "node state")
    state = doc.get("state")
    if state == "online":
        _check_keys(doc, {"state", "ts", "session", "devices"}, {"state", "ts", "session"})
        devices = doc.get("devices", [])
        if not isinstance(devices, list) or not all(
            isinstance(d, str) and _SEGMENT.fullmatch(d) for d in devices
        ):
            raise SchemaError("'devices' must be a list of device ids")
        return NodeState("online", _ts(doc), _ts(doc, "session"), tuple(devices))
    if state == "offline":
        _check_keys(doc, {"state", "ts", "session", "reason"}, {"state", "ts", "session"})
        reason = doc.get("reason", "shutdown")
        if reason not in ("shutdown", "lost"):
            raise SchemaError("'reason' of an offline node must be 'shutdown' or 'lost'")
        return NodeState("offline", _ts(doc), _ts(doc, "session"), reason=reason)
    raise SchemaError("'state' of a node must be 'online' or 'offline'")


@dataclass(frozen=True, slots=True)
class DeviceState:
    """A device's retained birth: its profile and its health as the node judges it."""

    state: HealthState
    ts_ms: int
    profile: str = ""
    reason: str = ""


def encode_device_state(s: DeviceState) -> bytes:
    return _dumps({"state": s.state.value, "ts": s.ts_ms, "profile": s.profile, "reason": s.reason})


def decode_device_state(payload: bytes) -> DeviceState:
    doc = _load_object(payload, "device state")
    _check_keys(doc, {"state", "ts", "profile", "reason"}, {"state", "ts"})
    try:
        state = HealthState(doc["state"])
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"'state' must be one of {[h.value for h in HealthState]}") from exc
    return DeviceState(state, _ts(doc), _text(doc, "profile", 64), _text(doc, "reason"))


# --- commands and replies ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandRequest:
    venue: str
    node: str
    device: str
    name: str
    id: str
    args: dict[str, Value | None]
    reply_to: str
    ts_ms: int
    at_us: int | None = None  # run at this time of the node's clock (epoch µs), not at once


def encode_command(
    request_id: str,
    args: Mapping[str, Any],
    ts_wall: float,
    reply_to: str | None = None,
    at_wall: float | None = None,
) -> bytes:
    """A command request; ``at_wall`` (epoch seconds, the node's clock) asks the node to run
    it at that time rather than at once."""
    if not _REQUEST_ID.fullmatch(request_id):
        raise SchemaError("'id' must be 1 to 128 printable ASCII characters without spaces")
    doc: dict[str, Any] = {"id": request_id, "args": dict(args), "ts": ms(ts_wall)}
    if reply_to is not None:
        doc["reply_to"] = check_reply_to(reply_to)
    if at_wall is not None:
        doc["at"] = us(at_wall)
    try:
        return _dumps(doc)
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"'args' cannot be sent as JSON: {exc}") from exc


def parse_command_topic(topic: str) -> tuple[str, str, str, str]:
    """(venue, node, device, name) of ``flytower/{venue}/{node}/{device}/cmd/{name}``."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[0] != ROOT or parts[4] != CMD:
        raise SchemaError(f"topic {topic!r} is not {ROOT}/venue/node/device/{CMD}/name")
    for kind, value in zip(("venue", "node", "device"), parts[1:4], strict=True):
        _segment(kind, value)
    if not _COMMAND.fullmatch(parts[5]):
        raise SchemaError(f"command {parts[5]!r} is not a valid command name")
    return parts[1], parts[2], parts[3], parts[5]


def decode_command(topic: str, payload: bytes, response_topic: str | None = None) -> CommandRequest:
    """Parse a command request. ``response_topic`` is the MQTT 5 property, if any: it is used
    when the JSON names no ``reply_to``; without either the reply goes to the default topic."""
    venue, node, device, name = parse_command_topic(topic)
    doc = _load_object(payload, "command")
    request_id = doc.get("id")
    id_ok = isinstance(request_id, str) and _REQUEST_ID.fullmatch(request_id) is not None
    # Without a usable reply topic nobody can be told: those errors carry no correlation.
    reply_to = doc.get("reply_to", response_topic)
    if reply_to is None:
        reply_to = default_reply_topic(topic)
    elif not isinstance(reply_to, str):
        raise SchemaError("'reply_to' must be a string")
    check_reply_to(reply_to)
    try:
        if not id_ok:
            raise SchemaError("'id' must be 1 to 128 printable ASCII characters without spaces")
        _check_keys(doc, {"id", "args", "reply_to", "ts", "at"}, {"id", "ts"})
        ts = _ts(doc)
        at = _us(doc, "at") if "at" in doc else None
        args = doc.get("args", {})
        if not isinstance(args, dict):
            raise SchemaError("'args' must be a JSON object")
        checked = {str(k): _scalar(f"argument '{k}'", v) for k, v in args.items()}
    except SchemaError as exc:
        raise SchemaError(
            str(exc), request_id=request_id if id_ok else None, reply_to=reply_to
        ) from None
    assert isinstance(request_id, str)
    return CommandRequest(venue, node, device, name, request_id, checked, reply_to, ts, at)


@dataclass(frozen=True, slots=True)
class CommandReply:
    id: str
    ok: bool
    ts_ms: int
    result: Any = None
    error: str = ""
    code: str = "ok"
    extra: dict[str, Any] = field(default_factory=dict)
    started_us: int | None = None  # when the node began to run it (epoch µs, its clock)


def reply_ok(request_id: str, result: Any, ts_wall: float) -> CommandReply:
    return CommandReply(request_id, True, ms(ts_wall), result=result)


def reply_error(request_id: str, code: ReplyCode, error: str, ts_wall: float) -> CommandReply:
    return CommandReply(request_id, False, ms(ts_wall), error=error, code=code)


def encode_reply(r: CommandReply) -> bytes:
    """Raises SchemaError if ``result`` cannot be sent as JSON (NaN, an object, ...)."""
    doc: dict[str, Any] = {"id": r.id, "ok": r.ok}
    if r.ok:
        doc["result"] = r.result
    else:
        doc["error"] = r.error
    doc["code"] = r.code
    doc["ts"] = r.ts_ms
    if r.started_us is not None:
        doc["started"] = r.started_us
    try:
        return _dumps(doc)
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"'result' cannot be sent as JSON: {exc}") from exc


def decode_reply(payload: bytes) -> CommandReply:
    doc = _load_object(payload, "reply")
    request_id = doc.get("id")
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise SchemaError("'id' must be 1 to 128 printable ASCII characters without spaces")
    ok = doc.get("ok")
    if not isinstance(ok, bool):
        raise SchemaError("'ok' must be true or false")
    code = doc.get("code", "ok" if ok else "refused")
    if code not in REPLY_CODES or (code == "ok") != ok:
        raise SchemaError(f"'code' must be one of {list(REPLY_CODES)} and 'ok' only with ok")
    if ok:
        _check_keys(doc, {"id", "ok", "result", "code", "ts", "started"}, {"id", "ok", "ts"})
        started = _us(doc, "started") if "started" in doc else None
        return CommandReply(
            request_id, True, _ts(doc), result=doc.get("result"), started_us=started
        )
    _check_keys(doc, {"id", "ok", "error", "code", "ts", "started"}, {"id", "ok", "error", "ts"})
    error = doc["error"]
    if not isinstance(error, str):
        raise SchemaError("'error' must be a string")
    started = _us(doc, "started") if "started" in doc else None
    return CommandReply(request_id, False, _ts(doc), error=error, code=code, started_us=started)


# --- clock probes: flytower/{venue}/{node}/$time ---------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeRequest:
    id: str
    t0_us: int  # the requester's clock when it sent the probe
    reply_to: str


@dataclass(frozen=True, slots=True)
class TimeReply:
    id: str
    t0_us: int  # echoed
    t1_us: int  # the node's clock when the probe arrived
    t2_us: int  # the node's clock when it answered


def encode_time_request(request_id: str, t0_wall: float, reply_to: str) -> bytes:
    if not _REQUEST_ID.fullmatch(request_id):
        raise SchemaError("'id' must be 1 to 128 printable ASCII characters without spaces")
    return _dumps({"id": request_id, "t0": us(t0_wall), "reply_to": check_reply_to(reply_to)})


def decode_time_request(payload: bytes) -> TimeRequest:
    doc = _load_object(payload, "clock probe")
    _check_keys(doc, {"id", "t0", "reply_to"}, {"id", "t0", "reply_to"})
    request_id, reply_to = doc["id"], doc["reply_to"]
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise SchemaError("'id' must be 1 to 128 printable ASCII characters without spaces")
    if not isinstance(reply_to, str):
        raise SchemaError("'reply_to' must be a string")
    return TimeRequest(request_id, _us(doc, "t0"), check_reply_to(reply_to))


def encode_time_reply(r: TimeReply) -> bytes:
    return _dumps({"id": r.id, "t0": r.t0_us, "t1": r.t1_us, "t2": r.t2_us})


def decode_time_reply(payload: bytes) -> TimeReply:
    doc = _load_object(payload, "clock reply")
    _check_keys(doc, {"id", "t0", "t1", "t2"}, {"id", "t0", "t1", "t2"})
    request_id = doc["id"]
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise SchemaError("'id' must be 1 to 128 printable ASCII characters without spaces")
    t1, t2 = _us(doc, "t1"), _us(doc, "t2")
    if t2 < t1:
        raise SchemaError("'t2' (answered) must not be before 't1' (arrived)")
    return TimeReply(request_id, _us(doc, "t0"), t1, t2)
