"""Commands, replies, node/device state, third-party mapping and the topic router: round
trips, refusals with reasons, and fuzzing (random input raises SchemaError or nothing)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.model import HealthState, MqttWire, PointSpec, ValueType
from drivers.mqtt import mapping
from drivers.mqtt.hub import TopicRouter
from drivers.mqtt.schema import (
    CommandReply,
    DeviceState,
    NodeState,
    SchemaError,
    command_topic,
    decode_command,
    decode_device_state,
    decode_node_state,
    decode_reply,
    default_reply_topic,
    encode_command,
    encode_device_state,
    encode_node_state,
    encode_reply,
    reply_error,
    reply_inbox,
    reply_ok,
)

FAST = settings(max_examples=200, deadline=None, derandomize=True)
TOPIC = "flytower/main/stage/hoist-1/cmd/move_to"
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
ids = st.from_regex(r"[!-~]{1,40}", fullmatch=True)
json_values = st.recursive(
    st.one_of(scalars, st.floats()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def raises_schema_error_only(fn: Any, *args: Any) -> None:
    with contextlib.suppress(SchemaError):
        fn(*args)


# --- commands ------------------------------------------------------------------------------


def test_command_topics() -> None:
    assert command_topic("main", "stage", "hoist-1", "move_to") == TOPIC
    assert default_reply_topic(TOPIC) == TOPIC + "/reply"
    assert reply_inbox("main", "ctl") == "flytower/main/ctl/$reply"
    for bad in ("", "1go", "move-to", "a/b", "+", "x" * 65):
        with pytest.raises(SchemaError, match="command"):
            command_topic("main", "stage", "hoist-1", bad)


@FAST
@given(
    rid=ids, args=st.dictionaries(st.text(max_size=8), scalars, max_size=4), ts=st.floats(0, 4e9)
)
def test_command_round_trip(rid: str, args: dict[str, Any], ts: float) -> None:
    raw = encode_command(rid, args, ts, "replies/here")
    req = decode_command(TOPIC, raw)
    assert (req.venue, req.node, req.device, req.name) == ("main", "stage", "hoist-1", "move_to")
    assert (req.id, req.args, req.reply_to, req.ts_ms) == (
        rid,
        args,
        "replies/here",
        round(ts * 1000),
    )


def test_reply_topic_precedence() -> None:
    bare = b'{"id":"a","ts":1}'
    assert decode_command(TOPIC, bare).reply_to == TOPIC + "/reply"
    assert decode_command(TOPIC, bare, "v5/response").reply_to == "v5/response"
    both = b'{"id":"a","ts":1,"reply_to":"json/wins"}'
    assert decode_command(TOPIC, both, "v5/response").reply_to == "json/wins"


@pytest.mark.parametrize(
    ("raw", "why", "correlated"),
    [
        (b"nope", "not JSON", False),
        (b'{"id":"a","ts":1,"args":{"x":NaN}}', "finite", False),
        (b'{"id":"a","ts":1,"args":{"x":1e400}}', "finite", False),
        (b"[1]", "JSON object", False),
        (b'{"ts":1}', "'id'", False),
        (b'{"id":"a b","ts":1}', "'id'", False),
        (b'{"id":"a","ts":1,"reply_to":"x/#"}', "wildcards", False),
        (b'{"id":"a","ts":1,"reply_to":"$SYS/x"}', "wildcards", False),
        (b'{"id":"a","ts":1,"reply_to":"flytower/v/n/$state"}', r"\$state", False),
        (b'{"id":"a","ts":1,"reply_to":5}', "string", False),
        (b'{"id":"a"}', "missing", True),
        (b'{"id":"a","ts":-1}', "'ts'", True),
        (b'{"id":"a","ts":1,"args":[1]}', "'args'", True),
        (b'{"id":"a","ts":1,"args":{"x":[1]}}', "argument 'x'", True),
        (b'{"id":"a","ts":1,"extra":1}', "unknown key", True),
    ],
)
def test_bad_requests_are_refused_with_a_reason(raw: bytes, why: str, correlated: bool) -> None:
    with pytest.raises(SchemaError, match=why) as info:
        decode_command(TOPIC, raw)
    assert (info.value.request_id == "a") is correlated
    if correlated:
        assert info.value.reply_to == TOPIC + "/reply"


def test_an_oversized_request_is_refused() -> None:
    with pytest.raises(SchemaError, match="exceeds"):
        decode_command(TOPIC, b'{"id":"a","ts":1,"args":{"s":"' + b"x" * 70_000 + b'"}}')


@pytest.mark.parametrize(
    "topic",
    ["flytower/main/stage/hoist-1/move_to", "flytower/main/stage/hoist-1/cmd/1x", "x/a/b/c/cmd/y"],
)
def test_bad_command_topics(topic: str) -> None:
    with pytest.raises(SchemaError):
        decode_command(topic, b'{"id":"a","ts":1}')


def test_encode_command_refuses_what_it_cannot_send() -> None:
    with pytest.raises(SchemaError, match="'id'"):
        encode_command("has space", {}, 0.0)
    with pytest.raises(SchemaError, match="JSON"):
        encode_command("a", {"x": float("nan")}, 0.0)
    with pytest.raises(SchemaError, match="reply_to"):
        encode_command("a", {}, 0.0, "a/+")


@FAST
@given(topic=st.text(max_size=60), raw=st.binary(max_size=200))
def test_fuzz_command_bytes(topic: str, raw: bytes) -> None:
    raises_schema_error_only(decode_command, TOPIC, raw)
    raises_schema_error_only(decode_command, topic, raw)


@FAST
@given(doc=st.dictionaries(st.sampled_from(["id", "ts", "args", "reply_to", "x"]), json_values))
def test_fuzz_command_documents(doc: dict[str, Any]) -> None:
    raises_schema_error_only(decode_command, TOPIC, json.dumps(doc).encode())


# --- replies -------------------------------------------------------------------------------


@FAST
@given(rid=ids, result=st.one_of(scalars, st.lists(scalars, max_size=3)), ts=st.floats(0, 4e9))
def test_reply_round_trip(rid: str, result: Any, ts: float) -> None:
    ok = reply_ok(rid, result, ts)
    assert decode_reply(encode_reply(ok)) == ok
    err = reply_error(rid, "refused", "no", ts)
    assert decode_reply(encode_reply(err)) == err


def test_reply_shape() -> None:
    assert encode_reply(CommandReply("a", True, 5, result=[["p", 1]])) == (
        b'{"id":"a","ok":true,"result":[["p",1]],"code":"ok","ts":5}'
    )
    with pytest.raises(SchemaError, match="result"):
        encode_reply(reply_ok("a", float("inf"), 0))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id":"a","ok":"yes","ts":1}',
        b'{"id":"a","ok":true,"code":"refused","ts":1}',
        b'{"id":"a","ok":false,"code":"ok","error":"x","ts":1}',
        b'{"id":"a","ok":false,"ts":1}',
        b'{"id":"a","ok":false,"error":5,"ts":1}',
        b'{"id":"a","ok":true,"code":"weird","ts":1}',
        b'{"ok":true,"ts":1}',
    ],
)
def test_bad_replies(raw: bytes) -> None:
    with pytest.raises(SchemaError):
        decode_reply(raw)


@FAST
@given(
    doc=st.dictionaries(st.sampled_from(["id", "ok", "result", "error", "code", "ts"]), json_values)
)
def test_fuzz_replies(doc: dict[str, Any]) -> None:
    raises_schema_error_only(decode_reply, json.dumps(doc).encode())


# --- state ---------------------------------------------------------------------------------


def test_node_state_round_trips() -> None:
    birth = NodeState("online", 10, 9, ("a", "b"))
    assert decode_node_state(encode_node_state(birth)) == birth
    will = NodeState("offline", 9, 9, (), "lost")
    assert encode_node_state(will) == b'{"state":"offline","ts":9,"session":9,"reason":"lost"}'
    assert decode_node_state(encode_node_state(will)) == will


@pytest.mark.parametrize(
    "raw",
    [
        b'{"state":"up","ts":1,"session":1}',
        b'{"state":"online","ts":1}',
        b'{"state":"online","ts":1,"session":1,"devices":["a/b"]}',
        b'{"state":"offline","ts":1,"session":1,"reason":"bored"}',
        b'{"state":"offline","ts":1,"session":1,"devices":[]}',
    ],
)
def test_bad_node_states(raw: bytes) -> None:
    with pytest.raises(SchemaError):
        decode_node_state(raw)


def test_device_state_round_trip_and_refusals() -> None:
    s = DeviceState(HealthState.DEGRADED, 5, "hoist", "2 errors")
    assert decode_device_state(encode_device_state(s)) == s
    for raw in (
        b'{"state":"fine","ts":1}',
        b'{"state":"online"}',
        b'{"state":"online","ts":1,"profile":3}',
    ):
        with pytest.raises(SchemaError):
            decode_device_state(raw)


@FAST
@given(
    raw=st.binary(max_size=100), doc=st.dictionaries(st.text(max_size=8), json_values, max_size=5)
)
def test_fuzz_states(raw: bytes, doc: dict[str, Any]) -> None:
    for fn in (decode_node_state, decode_device_state):
        raises_schema_error_only(fn, raw)
        raises_schema_error_only(fn, json.dumps(doc).encode())


# --- third-party mapping -------------------------------------------------------------------

LEVEL = PointSpec(
    name="level", dtype=ValueType.INT, min=0, max=254, access="rw",
    mqtt=MqttWire(topic="lamp", field="light.level", set_topic="lamp/set", set_field="brightness"),
)  # fmt: skip
ON = PointSpec(
    name="on", dtype=ValueType.BOOL, access="rw",
    mqtt=MqttWire(topic="lamp/state", values={"ON": True, "OFF": False}, set_topic="lamp/cmd"),
)  # fmt: skip


def test_mapping_reads_fields_and_maps_values() -> None:
    doc = mapping.parse_payload(b'{"light": {"level": 12}}')
    assert mapping.to_value(LEVEL, mapping.extract(doc, LEVEL.mqtt)) == 12  # type: ignore[arg-type]
    assert mapping.extract(mapping.parse_payload(b'{"other": 1}'), LEVEL.mqtt) is None  # type: ignore[arg-type]
    assert mapping.to_value(ON, mapping.parse_payload(b"ON")) is True
    assert mapping.resolve("z2m", "lamp") == "z2m/lamp"
    assert mapping.resolve("z2m", "/abs/topic") == "abs/topic"


@pytest.mark.parametrize(
    ("spec", "raw", "why"),
    [
        (LEVEL, 300, "above the maximum"),
        (LEVEL, 1.5, "whole number"),
        (LEVEL, "12", "number"),
        (LEVEL, True, "number"),
        (ON, "MAYBE", "true/false"),
        (ON, 1, "true/false"),
    ],
)
def test_mapping_refuses_values(spec: PointSpec, raw: Any, why: str) -> None:
    with pytest.raises(SchemaError, match=why):
        mapping.to_value(spec, raw)


def test_mapping_refuses_bad_payloads() -> None:
    for raw in (b"\xff", b"NaN", b'{"a": Infinity}', b"1e999", b"x" * 70_000):
        with pytest.raises(SchemaError):
            mapping.parse_payload(raw)
    with pytest.raises(SchemaError, match="not a JSON object"):
        mapping.extract([1], LEVEL.mqtt)  # type: ignore[arg-type]


def test_mapping_writes() -> None:
    assert mapping.encode_set(LEVEL, 100) == ("lamp/set", b'{"brightness":100}')
    assert mapping.encode_set(ON, True) == ("lamp/cmd", b"ON")
    assert mapping.encode_set(ON, False) == ("lamp/cmd", b"OFF")
    read_only = PointSpec(name="t", mqtt=MqttWire(topic="t"))
    with pytest.raises(SchemaError, match="set_topic"):
        mapping.encode_set(read_only, 1.0)


@FAST
@given(raw=st.binary(max_size=200))
def test_fuzz_mapping(raw: bytes) -> None:
    try:
        doc = mapping.parse_payload(raw)
    except SchemaError:
        return
    for spec in (LEVEL, ON):
        assert spec.mqtt is not None
        with contextlib.suppress(SchemaError):
            mapping.to_value(spec, mapping.extract(doc, spec.mqtt))


TEMP = PointSpec(name="temperature", min=-40, max=85, mqtt=MqttWire(field="temperature"))
HUMID = PointSpec(name="humidity", dtype=ValueType.INT, mqtt=MqttWire(field="humidity"))
STATE = PointSpec(
    name="state", dtype=ValueType.BOOL, mqtt=MqttWire(field="state", values={"ON": True})
)
WHOLE = PointSpec(name="whole", mqtt=MqttWire())  # the whole payload is the value


def slow_read(spec: PointSpec, doc: Any) -> Any:
    """What the driver did before ``Mapped``: extract, then to_value."""
    assert spec.mqtt is not None
    raw = mapping.extract(doc, spec.mqtt)
    return None if raw is None else mapping.to_value(spec, raw)


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        v = fn(*args)
    except SchemaError as exc:
        return "refused", str(exc)
    return "value", (type(v), v)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["ON", "OFF", "21.5", ""]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
documents = json_values | st.fixed_dictionaries(
    {},
    optional={
        "temperature": json_values,
        "humidity": json_values,
        "state": json_values,
        "light": st.fixed_dictionaries({}, optional={"level": json_values}),
    },
)


@FAST
@given(doc=documents)
def test_compiled_points_read_as_extract_and_to_value(doc: Any) -> None:
    """``Mapped.read`` (the driver's fast path) gives what extract + to_value give: the same
    value of the same type, the same None, or the same refusal."""
    doc = json.loads(json.dumps(doc))  # what parse_payload hands over: plain JSON types
    for spec in (TEMP, HUMID, STATE, WHOLE, LEVEL, ON):
        assert outcome(mapping.Mapped(spec).read, doc) == outcome(slow_read, spec, doc), spec.name


# --- router --------------------------------------------------------------------------------


def test_router_matches_like_a_broker() -> None:
    router = TopicRouter()
    seen: list[str] = []

    def handler(name: str) -> Any:
        return lambda msg: seen.append(name)

    for f in ("a/b", "a/+", "a/#", "#", "+/b", "a/+/c"):
        router.add(f, handler(f), 1)

    def names(topic: str) -> list[str]:
        seen.clear()
        for h in router.match(topic):
            h(None)  # type: ignore[arg-type]
        return sorted(seen)

    assert names("a/b") == sorted(["a/b", "a/+", "a/#", "#", "+/b"])
    assert names("a") == sorted(["a/#", "#"])
    assert names("a/x/c") == sorted(["a/#", "#", "a/+/c"])
    assert names("$SYS/b") == []  # wildcards at the first level skip '$' topics
    with pytest.raises(ValueError, match="last level"):
        router.add("a/#/b", handler("x"), 1)


def test_a_pushing_device_is_silent_after_its_shortest_stale_window() -> None:
    """A Shelly H&T wakes every 6 hours: its points go stale after 7, and so does the device;
    a profile without stale windows falls back to the device's poll period."""
    from drivers.model import PROFILE_DIR, load_profile
    from drivers.mqtt.driver import silence_period_s

    assert silence_period_s(load_profile(PROFILE_DIR / "shelly_ht.toml"), 10.0) == 25200.0
    no_windows = load_profile(PROFILE_DIR / "led_par_rgbw.toml")
    assert all(p.stale_after_s is None for p in no_windows.points.values())
    assert silence_period_s(no_windows, 4.0) == 0.25
