"""MQTT schema: topic building, payload round trips and a decoder that refuses hostile input."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.model import Quality
from drivers.mqtt.schema import (
    MAX_PAYLOAD,
    PointMessage,
    SchemaError,
    decode_point,
    device_state_topic,
    encode_value,
    node_state_topic,
    point_topic,
)

FAST = settings(max_examples=200, deadline=None, derandomize=True)
LIGHT = settings(max_examples=120, deadline=None, derandomize=True)  # slower strategies
TOPIC = "flytower/main/edge-1/hoist.01/position"


def payload(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _reject_constant(token: str) -> Any:
    raise AssertionError(f"payload contains the non-standard JSON token {token}")


def strict_json(raw: bytes) -> Any:
    return json.loads(raw, parse_constant=_reject_constant)


# --- topics --------------------------------------------------------------------------------


def test_topics_are_built_from_segments() -> None:
    assert point_topic("main", "edge-1", "hoist.01", "position") == TOPIC
    assert node_state_topic("main", "edge-1") == "flytower/main/edge-1/$state"
    assert device_state_topic("main", "edge-1", "hoist.01") == (
        "flytower/main/edge-1/hoist.01/$state"
    )


@pytest.mark.parametrize("segment", ["a", "Z", "0", "A_b.c-d", "9lives", "x" * 64, "a__..--"])
def test_valid_segments(segment: str) -> None:
    assert point_topic(segment, segment, segment, segment) == "/".join(["flytower", *[segment] * 4])
    assert node_state_topic(segment, segment).endswith("/$state")
    assert device_state_topic(segment, segment, segment).endswith("/$state")


INVALID_SEGMENTS = [
    "",
    "a/b",
    "/",
    "+",
    "#",
    "a+",
    "a#b",
    "a b",
    " a",
    "a ",
    "\ta",
    "x" * 65,
    "é",
    "aé",
    "ü1",
    "日本",
    "a\u200b",  # zero-width space
    "_a",
    ".a",
    "-a",
    "$state",
    "a$",
    "a\x00",
    "\na",
]
segment_ids = [repr(s) if len(s) < 10 else f"len{len(s)}" for s in INVALID_SEGMENTS]


def builders(bad: str) -> list[Callable[[], str]]:
    ok = "ok"
    return [
        lambda: point_topic(bad, ok, ok, ok),
        lambda: point_topic(ok, bad, ok, ok),
        lambda: point_topic(ok, ok, bad, ok),
        lambda: point_topic(ok, ok, ok, bad),
        lambda: node_state_topic(bad, ok),
        lambda: node_state_topic(ok, bad),
        lambda: device_state_topic(bad, ok, ok),
        lambda: device_state_topic(ok, bad, ok),
        lambda: device_state_topic(ok, ok, bad),
    ]


@pytest.mark.parametrize("segment", INVALID_SEGMENTS, ids=segment_ids)
def test_invalid_segments_are_refused_in_every_position(segment: str) -> None:
    for build in builders(segment):
        with pytest.raises(SchemaError, match="not a valid topic segment"):
            build()


@pytest.mark.parametrize("segment", INVALID_SEGMENTS, ids=segment_ids)
def test_decode_refuses_invalid_segments_in_the_topic(segment: str) -> None:
    good = payload({"v": 1, "ts": 0, "q": "good"})
    for i in range(1, 5):
        parts = ["flytower", "v", "n", "d", "p"]
        parts[i] = segment
        with pytest.raises(SchemaError):
            decode_point("/".join(parts), good)


@pytest.mark.parametrize("segment", ["a\n", "position\n"])
def test_segment_with_trailing_newline_is_refused(segment: str) -> None:
    with pytest.raises(SchemaError):
        point_topic("main", "edge-1", "hoist", segment)
    with pytest.raises(SchemaError):
        decode_point(f"flytower/main/edge-1/hoist/{segment}", payload({"v": 1, "ts": 0}))


def test_schema_error_is_a_value_error() -> None:
    assert issubclass(SchemaError, ValueError)


# --- encode / decode round trip ------------------------------------------------------------

segments = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,15}", fullmatch=True)
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**53), 2**53),
    st.booleans(),
    st.text(max_size=20),
)
timestamps = st.floats(min_value=0, max_value=4e9)  # up to the year 2096


@LIGHT
@given(
    venue=segments,
    node=segments,
    device=segments,
    name=segments,
    value=values,
    ts=timestamps,
    quality=st.sampled_from(list(Quality)),
)
def test_round_trip(
    venue: str, node: str, device: str, name: str, value: Any, ts: float, quality: Quality
) -> None:
    raw = encode_value(value, ts, quality)
    strict_json(raw)
    msg = decode_point(point_topic(venue, node, device, name), raw)
    assert msg == PointMessage(venue, node, device, name, value, round(ts * 1000), quality)
    assert type(msg.value) is type(value)  # a bool stays a bool, an int an int


@FAST
@given(ts=timestamps, quality=st.sampled_from([Quality.BAD, Quality.STALE]))
def test_round_trip_of_null(ts: float, quality: Quality) -> None:
    msg = decode_point(TOPIC, encode_value(None, ts, quality))
    assert msg.value is None
    assert msg.quality is quality
    assert msg.ts_ms == round(ts * 1000)


def test_encoded_payload_shape() -> None:
    assert encode_value(1.5, 1700000000.1234, Quality.GOOD) == (
        b'{"v":1.5,"ts":1700000000123,"q":"good"}'
    )
    assert encode_value(True, 0.0, Quality.STALE) == b'{"v":true,"ts":0,"q":"stale"}'


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("quality", list(Quality))
def test_non_finite_is_sent_as_null_with_quality_bad(value: float, quality: Quality) -> None:
    raw = encode_value(value, 1.0, quality)
    assert strict_json(raw) == {"v": None, "ts": 1000, "q": "bad"}
    msg = decode_point(TOPIC, raw)
    assert msg.value is None
    assert msg.quality is Quality.BAD


def test_quality_defaults_to_good() -> None:
    assert decode_point(TOPIC, b'{"v":3,"ts":5}').quality is Quality.GOOD


def test_decoded_message_names_its_topic_segments() -> None:
    msg = decode_point(TOPIC, b'{"v":"up","ts":12,"q":"stale"}')
    assert (msg.venue, msg.node, msg.device) == ("main", "edge-1", "hoist.01")
    assert msg.point == "position"
    assert (msg.value, msg.ts_ms, msg.quality) == ("up", 12, Quality.STALE)


# --- decode refusals -----------------------------------------------------------------------

GOOD_PAYLOAD = b'{"v":1,"ts":0,"q":"good"}'


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "flytower",
        "flytower/main/edge-1/hoist",
        "flytower/main/edge-1/hoist/position/extra",
        "other/main/edge-1/hoist/position",
        "Flytower/main/edge-1/hoist/position",
        "/flytower/main/edge-1/hoist/position",
        "flytower/main/edge-1/hoist/position/",
        "flytower//edge-1/hoist/position",
        "flytower/main/edge-1/hoist/$state",
        "flytower/main/edge-1/$state",
        "flytower/+/edge-1/hoist/position",
        "flytower/main/#",
    ],
)
def test_decode_refuses_wrong_topic_shape(topic: str) -> None:
    with pytest.raises(SchemaError):
        decode_point(topic, GOOD_PAYLOAD)


@pytest.mark.parametrize(
    "raw",
    [b"", b" ", b"{", b'{"v":1,', b"nope", b"\x80", b"\xff\xfe\x00x", b"{'v': 1}", b"[" * 10_000],
    ids=["empty", "space", "brace", "truncated", "word", "bad-utf8", "bad-utf16", "quotes", "deep"],
)
def test_decode_refuses_non_json(raw: bytes) -> None:
    with pytest.raises(SchemaError, match="not JSON"):
        decode_point(TOPIC, raw)


@pytest.mark.parametrize("raw", [b"[]", b"[1]", b"1", b'"s"', b"null", b"true", b"1.5"])
def test_decode_refuses_json_that_is_not_an_object(raw: bytes) -> None:
    with pytest.raises(SchemaError, match="JSON object"):
        decode_point(TOPIC, raw)


@pytest.mark.parametrize(
    "doc",
    [
        {"v": 1, "ts": 0, "x": 1},
        {"v": 1, "ts": 0, "q": "good", "unit": "mm"},
        {"v": 1, "ts": 0, "V": 1},
        {"value": 1, "ts": 0},
    ],
)
def test_decode_refuses_unknown_keys(doc: dict[str, Any]) -> None:
    with pytest.raises(SchemaError, match="unknown key"):
        decode_point(TOPIC, payload(doc))


@pytest.mark.parametrize("v", [[1], {"a": 1}, []])
def test_decode_refuses_structured_values(v: Any) -> None:
    with pytest.raises(SchemaError, match="'v' must be"):
        decode_point(TOPIC, payload({"v": v, "ts": 0}))


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"])
def test_decode_refuses_non_finite_values(token: bytes) -> None:
    with pytest.raises(SchemaError, match="finite"):
        decode_point(TOPIC, b'{"v":' + token + b',"ts":0}')


@pytest.mark.parametrize(
    "ts",
    [-1, 1.5, 1.0, 0.0, True, False, None, "0", [0], 2**53, 10**20],
    ids=lambda x: repr(x),
)
def test_decode_refuses_bad_timestamps(ts: Any) -> None:
    with pytest.raises(SchemaError, match="'ts'"):
        decode_point(TOPIC, payload({"v": 1, "ts": ts}))


def test_decode_refuses_missing_timestamp() -> None:
    with pytest.raises(SchemaError, match="'ts'"):
        decode_point(TOPIC, b'{"v":1,"q":"good"}')


def test_decode_accepts_the_largest_timestamp() -> None:
    assert decode_point(TOPIC, payload({"v": 1, "ts": 2**53 - 1})).ts_ms == 2**53 - 1


@pytest.mark.parametrize("q", ["GOOD", "Good", "ok", "", 1, None, True, ["good"], {"q": "good"}])
def test_decode_refuses_bad_quality(q: Any) -> None:
    with pytest.raises(SchemaError, match="'q'"):
        decode_point(TOPIC, payload({"v": 1, "ts": 0, "q": q}))


@pytest.mark.parametrize(
    "doc",
    [{"v": None, "ts": 0}, {"v": None, "ts": 0, "q": "good"}, {"ts": 0}, {"ts": 0, "q": "good"}],
)
def test_decode_refuses_null_value_with_good_quality(doc: dict[str, Any]) -> None:
    with pytest.raises(SchemaError, match="null value"):
        decode_point(TOPIC, payload(doc))


def _padded(size: int) -> bytes:
    """A valid point payload of exactly ``size`` bytes."""
    head, tail = b'{"v":"', b'","ts":0}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


def test_decode_accepts_a_payload_of_exactly_the_limit() -> None:
    raw = _padded(MAX_PAYLOAD)
    assert len(raw) == MAX_PAYLOAD
    assert decode_point(TOPIC, raw).value == "a" * (MAX_PAYLOAD - 15)


def test_decode_refuses_an_oversized_payload() -> None:
    raw = _padded(MAX_PAYLOAD + 1)
    with pytest.raises(SchemaError, match="exceeds"):
        decode_point(TOPIC, raw)
    with pytest.raises(SchemaError, match="exceeds"):
        decode_point(TOPIC, b" " * (10 * MAX_PAYLOAD) + GOOD_PAYLOAD)


@pytest.mark.parametrize("field", [b"v", b"ts"])
def test_decode_refuses_a_huge_integer_with_schema_error(field: bytes) -> None:
    raw = b'{"' + field + b'":' + b"1" * 4301 + b',"q":"bad"}'
    assert len(raw) < MAX_PAYLOAD
    with pytest.raises(SchemaError):
        decode_point(TOPIC, raw)


# --- fuzz ----------------------------------------------------------------------------------


def decode_or_schema_error(topic: str, raw: bytes) -> PointMessage | None:
    """Call decode_point; anything but SchemaError propagates and fails the test."""
    try:
        return decode_point(topic, raw)
    except SchemaError:
        return None


@FAST
@given(topic=st.text(max_size=80), raw=st.binary(max_size=200))
def test_fuzz_arbitrary_topic_and_bytes(topic: str, raw: bytes) -> None:
    decode_or_schema_error(topic, raw)


@LIGHT
@given(
    topic=st.lists(st.one_of(segments, st.text(max_size=8)), min_size=5, max_size=5).map(
        lambda parts: "/".join(["flytower", *parts[1:]])
    ),
    raw=st.binary(max_size=200),
)
def test_fuzz_nearly_valid_topic_and_bytes(topic: str, raw: bytes) -> None:
    decode_or_schema_error(topic, raw)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=10),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
point_docs = st.one_of(
    st.dictionaries(st.sampled_from(["v", "ts", "q", "x"]), json_values, max_size=4),
    st.fixed_dictionaries(
        {"v": json_values, "ts": st.one_of(st.integers(-5, 2**54), json_values)},
        optional={"q": st.one_of(st.sampled_from([q.value for q in Quality]), json_values)},
    ),
    json_values,
)


@FAST
@given(doc=point_docs)
def test_fuzz_json_documents(doc: Any) -> None:
    raw = json.dumps(doc).encode()  # NaN/Infinity tokens included on purpose
    msg = decode_or_schema_error(TOPIC, raw)
    if msg is not None:
        assert isinstance(doc, dict)
        assert set(doc) <= {"v", "ts", "q"}
        assert msg.value is None or isinstance(msg.value, bool | int | float | str)
        if isinstance(msg.value, float):
            assert math.isfinite(msg.value)
        assert type(msg.ts_ms) is int
        assert 0 <= msg.ts_ms < 2**53
        assert msg.value is not None or msg.quality is not Quality.GOOD
