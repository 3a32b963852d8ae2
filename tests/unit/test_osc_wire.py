"""OSC wire format: SLIP framing, packet decoding and replies (pure functions, fuzzed)."""

from __future__ import annotations

import contextlib
import json
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pythonosc import slip
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message_builder import build_msg

from drivers.osc.wire import (
    MAX_BUNDLE_DEPTH,
    OscDecodeError,
    OscEncodeError,
    SlipDecoder,
    decode_message,
    decode_packet,
    decode_reply,
    encode_bundle,
    encode_message,
    encode_reply,
    slip_encode,
)

# --- SLIP ---------------------------------------------------------------------------------------


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.integers(1, 50))
def test_slip_round_trip_in_any_chunking(packets: list[bytes], chunk: int) -> None:
    stream = b"".join(slip_encode(p) for p in packets)
    decoder = SlipDecoder(max_frame=1024)
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        out += decoder.feed(stream[i : i + chunk])
    assert out == packets
    assert decoder.dropped == 0


def test_slip_encode_is_double_end_and_escapes() -> None:
    assert slip_encode(b"\xc0\xdb") == b"\xc0\xdb\xdc\xdb\xdd\xc0"


def test_slip_single_end_framing_also_decodes() -> None:
    # RFC 1055 senders put END only after a frame; OSC 1.1 puts it on both sides.
    assert SlipDecoder().feed(b"abcd\xc0efgh\xc0") == [b"abcd", b"efgh"]


def test_slip_bad_escape_drops_only_that_frame() -> None:
    decoder = SlipDecoder()
    assert decoder.feed(b"\xc0ab\xdbXcd\xc0" + slip_encode(b"good")) == [b"good"]
    assert decoder.malformed == 1


def test_slip_oversized_frame_is_dropped_and_stream_resyncs() -> None:
    decoder = SlipDecoder(max_frame=16)
    frames = decoder.feed(slip_encode(b"x" * 17) + slip_encode(b"ok"))
    assert frames == [b"ok"]
    assert decoder.oversized == 1


def test_slip_oversized_unterminated_garbage_is_not_buffered() -> None:
    decoder = SlipDecoder(max_frame=16)
    for _ in range(100):
        assert decoder.feed(b"y" * 1000) == []
    assert decoder.oversized == 1
    assert decoder.feed(b"\xc0" + slip_encode(b"ok")) == [b"ok"]


def test_slip_escaped_size_over_limit_is_oversized() -> None:
    # 16 END bytes escape to 32 bytes: within 2*max, decoded 16 <= max: accepted.
    decoder = SlipDecoder(max_frame=16)
    assert decoder.feed(slip_encode(b"\xc0" * 16)) == [b"\xc0" * 16]


def test_slip_decoder_rejects_nonsense_limit() -> None:
    with pytest.raises(ValueError, match="positive"):
        SlipDecoder(max_frame=0)


@given(st.binary(max_size=2000))
def test_slip_decoder_never_raises_on_random_bytes(data: bytes) -> None:
    decoder = SlipDecoder(max_frame=64)
    frames = decoder.feed(data)
    assert all(0 < len(f) <= 64 for f in frames)


# --- messages -----------------------------------------------------------------------------------

osc_args = st.lists(
    st.one_of(
        st.integers(-(2**31), 2**31 - 1),
        st.floats(width=32, allow_nan=False),
        # OSC strings are UTF-8: no NUL (the terminator) and no lone surrogates.
        st.text(
            alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
            max_size=40,
        ),
        st.booleans(),
        st.binary(min_size=1, max_size=40),  # python-osc cannot encode an empty blob
        st.none(),
    ),
    max_size=6,
)
addresses = st.from_regex(r"\A/[a-z0-9_]{1,10}(/[a-z0-9_{}.*]{1,10}){0,4}\Z")


@given(addresses, osc_args)
def test_message_round_trip(address: str, args: list[object]) -> None:
    assert decode_message(encode_message(address, *args)) == (address, tuple(args))


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_decode_packet_random_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(OscDecodeError):
        decode_packet(data)


@given(addresses, osc_args, st.data())
@settings(max_examples=300)
def test_decode_packet_mutated_messages_raise_only_decode_error(
    address: str, args: list[object], data: st.DataObject
) -> None:
    packet = bytearray(encode_message(address, *args))
    for _ in range(data.draw(st.integers(1, 4))):
        packet[data.draw(st.integers(0, len(packet) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(packet)))
    with contextlib.suppress(OscDecodeError):
        decode_packet(bytes(packet[:cut]))


@pytest.mark.parametrize(
    ("packet", "why"),
    [
        (b"", "neither"),
        (b"go\x00\x00", "neither"),
        (b"/go", "multiple of 4"),
        (b"/go\x00,i\x00\x00", "malformed"),  # the int is missing
        (b"/go\x00,X\x00\x00", "unsupported type tag"),
        (b"/go\x00i\x00\x00\x00\x00\x00\x00\x01", "','"),
        (b"/g o\x00\x00\x00\x00", "illegal address"),
        (b"/\xff\xfe\x00", "malformed"),  # not UTF-8
    ],
)
def test_bad_messages_say_why(packet: bytes, why: str) -> None:
    with pytest.raises(OscDecodeError, match=why):
        decode_packet(packet)


def test_nan_and_infinity_arguments_decode_as_floats() -> None:
    # OSC can carry them; the router refuses them where a number is expected.
    (msg,) = decode_packet(encode_message("/x", math.nan, math.inf))
    assert math.isnan(msg.args[0]) and msg.args[1] == math.inf


def test_encode_refuses_what_osc_cannot_carry() -> None:
    with pytest.raises(OscEncodeError):
        encode_message("/x", object())
    with pytest.raises(OscEncodeError):
        encode_message("/x", 2**70)


# --- bundles ------------------------------------------------------------------------------------


def _bundle(timetag: float, *contents: bytes) -> bytes:
    return encode_bundle(list(contents), None if timetag == 0 else timetag)


def test_nested_bundles_flatten_in_order_with_effective_times() -> None:
    inner = _bundle(2_000_000_000.5, encode_message("/b"), encode_message("/c", 1))
    early = _bundle(1_000_000_000.0, encode_message("/d"))  # earlier than its parent
    outer = _bundle(1_500_000_000.0, encode_message("/a"), inner, early)
    msgs = decode_packet(outer)
    assert [m.address for m in msgs] == ["/a", "/b", "/c", "/d"]
    assert msgs[0].timetag == pytest.approx(1_500_000_000.0)
    assert msgs[1].timetag == pytest.approx(2_000_000_000.5)
    assert msgs[3].timetag == pytest.approx(1_500_000_000.0)  # raised to the parent's


def test_immediate_bundle_has_no_timetag() -> None:
    (msg,) = decode_packet(_bundle(0, encode_message("/go")))
    assert msg.timetag is None


def test_bundle_built_by_python_osc_decodes() -> None:
    builder = OscBundleBuilder(0)
    builder.add_content(build_msg("/go"))
    builder.add_content(build_msg("/cue/3/start"))
    assert [m.address for m in decode_packet(builder.build().dgram)] == ["/go", "/cue/3/start"]


def test_negative_element_size_is_an_error_not_a_hang() -> None:
    # python-osc's own OscBundle loops for ever on this packet.
    packet = b"#bundle\x00" + struct.pack(">Q", 1) + struct.pack(">i", -4)
    with pytest.raises(OscDecodeError, match="size -4"):
        decode_packet(packet)


@pytest.mark.parametrize(
    "tail",
    [struct.pack(">i", 8) + b"/go\x00", struct.pack(">i", 6) + b"/go\x00,\x00\x00", b"\x00\x00"],
)
def test_bad_element_sizes_are_errors(tail: bytes) -> None:
    with pytest.raises(OscDecodeError):
        decode_packet(b"#bundle\x00" + struct.pack(">Q", 1) + tail)


def test_nesting_is_capped() -> None:
    packet = encode_message("/deep")
    for _ in range(MAX_BUNDLE_DEPTH):
        packet = _bundle(0, packet)
    assert decode_packet(packet)[0].address == "/deep"
    with pytest.raises(OscDecodeError, match="nested deeper"):
        decode_packet(_bundle(0, packet))


@given(st.binary(max_size=200))
def test_random_bundle_bodies_raise_only_decode_error(body: bytes) -> None:
    with contextlib.suppress(OscDecodeError):
        decode_packet(b"#bundle\x00" + struct.pack(">Q", 1) + body)


# --- replies ------------------------------------------------------------------------------------

json_data = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**9), 10**9) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@given(addresses, st.sampled_from(["ok", "error", "denied"]), json_data)
def test_reply_round_trip(address: str, status: str, data: object) -> None:
    reply_addr, args = decode_message(encode_reply(address, status, data))  # type: ignore[arg-type]
    assert reply_addr == "/reply" + address
    reply = decode_reply(reply_addr, args)
    assert (reply.address, reply.status, reply.data) == (address, status, data)


def test_reply_body_is_qlab_shaped_json() -> None:
    _, (body,) = decode_message(encode_reply("/go", "ok", {"cue": "1"}))
    assert json.loads(body) == {"address": "/go", "status": "ok", "data": {"cue": "1"}}


def test_reply_with_nan_data_is_refused() -> None:
    with pytest.raises(OscEncodeError, match="not JSON"):
        encode_reply("/x", "ok", math.nan)


@pytest.mark.parametrize(
    ("address", "args"),
    [
        ("/go", ('{"status":"ok"}',)),
        ("/reply/go", ()),
        ("/reply/go", (1,)),
        ("/reply/go", ("not json",)),
        ("/reply/go", ('{"status":"maybe"}',)),
        ("/reply/go", ('{"status":"ok","data":NaN}',)),
        ("/reply/go", ("[" * 100_000,)),
    ],
)
def test_bad_replies_are_decode_errors(address: str, args: tuple[object, ...]) -> None:
    with pytest.raises(OscDecodeError):
        decode_reply(address, args)


def test_slip_frames_match_python_osc() -> None:
    packet = encode_message("/go", "\xc0")
    assert slip.decode(slip_encode(packet)) == packet


def test_a_lone_surrogate_is_an_encode_error_not_a_crash() -> None:
    # Found by hypothesis: a str with a lone surrogate has no UTF-8 form.
    with pytest.raises(OscEncodeError):
        encode_message("/flytower/ping", "\ud800")
