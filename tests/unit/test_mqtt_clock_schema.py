"""The MQTT schema's scheduled commands (``at``, ``started``) and clock probes (``$time``):
round trips, and hostile input refused with the reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.mqtt.schema import (
    CommandReply,
    SchemaError,
    TimeReply,
    clock_inbox,
    decode_command,
    decode_reply,
    decode_time_reply,
    decode_time_request,
    encode_command,
    encode_reply,
    encode_time_reply,
    encode_time_request,
    time_topic,
)

FAST = settings(max_examples=200, deadline=None, derandomize=True)
TOPIC = "flytower/v/n/lamp/cmd/turn_on"
INBOX = "flytower/v/ctrl/$reply"
walls = st.floats(min_value=0, max_value=4e9, allow_nan=False)


def test_topics() -> None:
    assert time_topic("v", "n") == "flytower/v/n/$time"
    assert clock_inbox("v", "ctrl") == "flytower/v/ctrl/$clock"
    with pytest.raises(SchemaError):
        time_topic("v", "$n")


@FAST
@given(ts=walls, at=walls)
def test_a_scheduled_command_round_trips_in_microseconds(ts: float, at: float) -> None:
    req = decode_command(TOPIC, encode_command("r1", {"x": 1}, ts, INBOX, at))
    assert req.at_us == round(at * 1_000_000)
    assert decode_command(TOPIC, encode_command("r1", {}, ts, INBOX)).at_us is None


@pytest.mark.parametrize("at", [-1, 1.5, "1", True, None, 2**53, [1], {"at": 1}])
def test_a_bad_at_is_refused_with_the_id_to_answer(at: Any) -> None:
    doc = {"id": "r1", "ts": 1, "at": at, "reply_to": INBOX}
    with pytest.raises(SchemaError, match="'at'") as err:
        decode_command(TOPIC, json.dumps(doc).encode())
    assert err.value.request_id == "r1" and err.value.reply_to == INBOX


@FAST
@given(started=st.integers(min_value=0, max_value=2**53 - 1), ok=st.booleans())
def test_a_reply_says_when_it_started(started: int, ok: bool) -> None:
    r = CommandReply("r1", ok, 5, result=[] if ok else None, error="" if ok else "no",
                     code="ok" if ok else "refused", started_us=started)  # fmt: skip
    back = decode_reply(encode_reply(r))
    assert back.started_us == started and back.ok is ok
    assert decode_reply(encode_reply(CommandReply("r1", True, 5, result=1))).started_us is None


@pytest.mark.parametrize("started", [-5, 0.5, "now", False, 2**53])
def test_a_bad_started_is_refused(started: Any) -> None:
    raw = json.dumps({"id": "r1", "ok": True, "ts": 1, "started": started}).encode()
    with pytest.raises(SchemaError, match="'started'"):
        decode_reply(raw)


@FAST
@given(t0=walls)
def test_a_clock_probe_round_trips(t0: float) -> None:
    req = decode_time_request(encode_time_request("p1", t0, "flytower/v/ctrl/$clock"))
    assert (req.id, req.t0_us, req.reply_to) == ("p1", round(t0 * 1e6), "flytower/v/ctrl/$clock")
    r = TimeReply("p1", req.t0_us, req.t0_us + 10, req.t0_us + 25)
    assert decode_time_reply(encode_time_reply(r)) == r


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"id": "p1", "t0": 1},  # no reply_to
        {"id": "p1", "t0": 1, "reply_to": "$SYS/x"},  # a system topic
        {"id": "p1", "t0": 1, "reply_to": "a/+/b"},  # a wildcard
        {"id": "p1", "t0": -1, "reply_to": "x"},
        {"id": "p 1", "t0": 1, "reply_to": "x"},
        {"id": 7, "t0": 1, "reply_to": "x"},
        {"id": "p1", "t0": 1, "reply_to": 5},
        {"id": "p1", "t0": 1, "reply_to": "x", "extra": 1},
    ],
)
def test_a_hostile_clock_probe_is_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        decode_time_request(json.dumps(doc).encode())


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b"\xff",
        b'{"id":"p1","t0":1,"t1":5,"t2":4}',  # answered before it arrived
        b'{"id":"p1","t0":1,"t1":5}',
        b'{"id":"p1","t0":1,"t1":5,"t2":1e400}',
        b'{"id":"p1","t0":1,"t1":5,"t2":6,"t3":7}',
    ],
)
def test_a_hostile_clock_reply_is_refused(raw: bytes) -> None:
    with pytest.raises(SchemaError):
        decode_time_reply(raw)
