"""DMX wire formats: round trips, known layouts, and refusals of every kind of bad packet."""

from __future__ import annotations

import contextlib
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.dmx import artnet, enttec, sacn
from drivers.dmx.errors import DmxProtocolError, UnsupportedPacket

FAST = settings(max_examples=200, deadline=None, derandomize=True)
byte = st.integers(0, 255)
word = st.integers(0, 0xFFFF)
four = st.tuples(byte, byte, byte, byte)
latin = st.characters(min_codepoint=1, max_codepoint=255)
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: ".".join(str(b) for b in n.to_bytes(4, "big")))
even_data = st.integers(1, 256).flatmap(lambda n: st.binary(min_size=2 * n, max_size=2 * n))

art_dmx = st.builds(artnet.ArtDmx, st.integers(0, 0x7FFF), even_data, byte, byte)
art_poll = st.builds(artnet.ArtPoll, byte, byte, word, word, word, word)
art_reply = st.builds(
    artnet.ArtPollReply,
    ip=ipv4,
    short_name=st.text(latin, max_size=17),
    long_name=st.text(latin, max_size=63),
    port=word,
    version_info=word,
    net_switch=st.integers(0, 127),
    sub_switch=st.integers(0, 15),
    oem=word,
    status1=byte,
    esta_man=word,
    node_report=st.text(latin, max_size=63),
    num_ports=st.integers(0, 4),
    port_types=four,
    good_input=four,
    good_output_a=four,
    sw_in=four,
    sw_out=four,
    acn_priority=byte,
    style=byte,
    mac=st.binary(min_size=6, max_size=6),
    bind_ip=ipv4,
    bind_index=byte,
    status2=byte,
    good_output_b=four,
    status3=byte,
    default_responder=st.binary(min_size=6, max_size=6),
    user=word,
    refresh_rate=word,
    background_queue_policy=byte,
)
names = st.text(st.characters(min_codepoint=1, max_codepoint=0x10FFFF, exclude_categories=["Cs"]))
source_name = names.filter(lambda s: len(s.encode()) <= 63)
universe = st.integers(1, 63999)
sacn_data = st.builds(
    sacn.SacnData,
    cid=st.uuids(),
    source_name=source_name,
    universe=universe,
    data=st.binary(max_size=512),
    sequence=byte,
    priority=st.integers(0, 200),
    sync_address=st.one_of(st.just(0), universe),
    preview=st.booleans(),
    stream_terminated=st.booleans(),
    force_sync=st.booleans(),
    start_code=byte,
)
sacn_sync = st.builds(sacn.SacnSync, st.uuids(), universe, byte)
sacn_discovery = st.builds(
    lambda cid, name, us, page, extra: sacn.SacnDiscovery(
        cid, name, tuple(sorted(us)), page, page + extra
    ),
    st.uuids(),
    source_name,
    st.sets(universe, max_size=512),
    st.integers(0, 100),
    st.integers(0, 100),
)


@FAST
@given(st.one_of(art_dmx, art_poll, art_reply, st.just(artnet.ArtSync())))
def test_artnet_round_trip(packet: artnet.ArtNetPacket) -> None:
    assert artnet.decode(packet.encode()) == packet


@FAST
@given(st.one_of(sacn_data, sacn_sync, sacn_discovery))
def test_sacn_round_trip(packet: sacn.SacnPacket) -> None:
    assert sacn.decode(packet.encode()) == packet


@FAST
@given(st.integers(0, 255), st.binary(max_size=600))
def test_enttec_round_trip(label: int, payload: bytes) -> None:
    msg = enttec.EnttecMessage(label, payload)
    assert enttec.decode_message(msg.encode()) == msg
    assert enttec.StreamDecoder().feed(msg.encode()) == [msg]


@FAST
@given(st.binary(min_size=24, max_size=512), byte, byte)
def test_enttec_dmx_messages_round_trip(data: bytes, start: int, status: int) -> None:
    send = enttec.SendDmx(data, start)
    assert enttec.SendDmx.from_message(send.message()) == send
    got = enttec.ReceivedDmx(status, data, start)
    assert enttec.ReceivedDmx.from_message(got.message()) == got


def _mutations(packet: bytes) -> st.SearchStrategy[bytes]:
    """Valid packets with bytes flipped, cut or appended: the interesting garbage."""
    return st.one_of(
        st.binary(max_size=700),
        st.integers(0, len(packet)).map(lambda n: packet[:n]),
        st.binary(min_size=1, max_size=40).map(lambda tail: packet + tail),
        st.tuples(st.integers(0, len(packet) - 1), byte).map(
            lambda iv: packet[: iv[0]] + bytes([iv[1]]) + packet[iv[0] + 1 :]
        ),
    )


REPLY = artnet.ArtPollReply(ip="10.0.0.1", short_name="n", long_name="node").encode()
DMX = artnet.ArtDmx(1, bytes(20), 1).encode()
SACN = sacn.SacnData(uuid.UUID(int=1), "src", 1, bytes(range(64))).encode()
DISCOVERY = sacn.discovery_pages(uuid.UUID(int=1), "src", {1, 2, 3})[0].encode()


@FAST
@given(st.one_of(_mutations(REPLY), _mutations(DMX), _mutations(artnet.ArtPoll().encode())))
def test_artnet_garbage_raises_only_protocol_error(data: bytes) -> None:
    with contextlib.suppress(DmxProtocolError):
        artnet.decode(data)


@FAST
@given(
    st.one_of(
        _mutations(SACN),
        _mutations(DISCOVERY),
        _mutations(sacn.SacnSync(uuid.UUID(int=1), 5).encode()),
    )
)
def test_sacn_garbage_raises_only_protocol_error(data: bytes) -> None:
    with contextlib.suppress(DmxProtocolError):
        sacn.decode(data)


@FAST
@given(st.lists(st.binary(max_size=80), max_size=10))
def test_enttec_stream_never_raises_and_recovers(chunks: list[bytes]) -> None:
    decoder = enttec.StreamDecoder()
    for chunk in chunks:
        decoder.feed(chunk)
    good = enttec.SendDmx(bytes(range(24))).message()
    # After any garbage, a clean frame preceded by a break in the stream still decodes.
    out = decoder.feed(b"\xe7" * 700 + good.encode())
    assert out[-1] == good


@FAST
@given(st.binary(max_size=700))
def test_enttec_decode_raises_only_protocol_error(data: bytes) -> None:
    with contextlib.suppress(DmxProtocolError):
        enttec.decode_message(data)


# --- known layouts ------------------------------------------------------------------------


def test_artdmx_layout() -> None:
    raw = artnet.ArtDmx(artnet.port_address(1, 2, 3), b"\x01\x02", sequence=7, physical=1).encode()
    assert raw == b"Art-Net\x00" + bytes([0x00, 0x50, 0, 14, 7, 1, 0x23, 1, 0, 2, 1, 2])


def test_port_address_split() -> None:
    assert artnet.split_port_address(artnet.port_address(127, 15, 15)) == (127, 15, 15)
    with pytest.raises(DmxProtocolError, match="out of range"):
        artnet.port_address(128, 0, 0)
    with pytest.raises(DmxProtocolError, match="out of range"):
        artnet.split_port_address(0x8000)


def test_poll_reply_is_239_bytes_with_ports() -> None:
    reply = artnet.ArtPollReply(
        ip="192.168.1.5",
        short_name="Dimmer",
        long_name="Rack 1",
        net_switch=1,
        sub_switch=2,
        num_ports=2,
        port_types=(0x80, 0xC0, 0, 0),
        sw_out=(3, 4, 0, 0),
        sw_in=(0, 9, 0, 0),
    )
    raw = reply.encode()
    assert len(raw) == 239
    assert raw[8:10] == b"\x00\x21" and raw[10:14] == bytes([192, 168, 1, 5])
    assert raw[14:16] == b"\x36\x19"  # port 6454, little-endian
    assert reply.output_port_addresses() == {0x123, 0x124}
    assert reply.input_port_addresses() == {0x129}


def test_art_net_3_reply_without_bind_fields_decodes() -> None:
    short = REPLY[:207]
    got = artnet.decode(short)
    assert isinstance(got, artnet.ArtPollReply) and got.long_name == "node"


def test_sacn_data_layout() -> None:
    cid = uuid.UUID("31f7b082-3eda-4e39-ab1a-dd2460d0650a")
    raw = sacn.SacnData(cid, "Fly", 258, b"\x10\x20", sequence=9, priority=150).encode()
    assert len(raw) == 128
    assert raw[:16] == b"\x00\x10\x00\x00ASC-E1.17\x00\x00\x00"
    assert struct.unpack_from(">H", raw, 16)[0] == 0x7000 | 112
    assert raw[22:38] == cid.bytes
    assert raw[108] == 150 and raw[111] == 9 and raw[113:115] == b"\x01\x02"
    assert (
        raw[117:119] == b"\x02\xa1" and raw[123:125] == b"\x00\x03" and raw[125:] == b"\0\x10\x20"
    )


def test_multicast_group() -> None:
    assert sacn.multicast_group(1) == "239.255.0.1"
    assert sacn.multicast_group(63999) == "239.255.249.255"
    with pytest.raises(DmxProtocolError):
        sacn.multicast_group(0)


def test_discovery_pages_split_and_sort() -> None:
    pages = sacn.discovery_pages(uuid.UUID(int=2), "x", set(range(1000, 0, -1)))
    assert [len(p.universes) for p in pages] == [512, 488]
    assert [p.page for p in pages] == [0, 1] and {p.last_page for p in pages} == {1}
    assert pages[0].universes[:3] == (1, 2, 3)
    assert sacn.discovery_pages(uuid.UUID(int=2), "x", set())[0].universes == ()


# --- refusals: one test per kind of bad input ---------------------------------------------


def _replace(raw: bytes, offset: int, new: bytes) -> bytes:
    return raw[:offset] + new + raw[offset + len(new) :]


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (DMX[:9], "truncated"),
        (DMX[:17], "truncated"),
        (b"Art-Nex\x00" + DMX[8:], "not Art-Net"),
        (_replace(DMX, 10, b"\x00\x0d"), "version 13"),
        (DMX + b"\x00\x00", "Length field"),
        (_replace(DMX, 16, b"\x00\x03") + b"", "Length field"),
        (_replace(DMX, 15, b"\x80"), "bit 7"),
        (artnet.ArtPoll().encode()[:16], "ArtPoll length"),
        (REPLY[:206], "ArtPollReply length"),
        (REPLY + b"\x00", "ArtPollReply length"),
        (_replace(REPLY, 172, b"\x00\x05"), "NumPorts"),
        (artnet.ArtSync().encode() + b"\x00", "ArtSync"),
    ],
)
def test_artnet_refuses(raw: bytes, match: str) -> None:
    with pytest.raises(DmxProtocolError, match=match):
        artnet.decode(raw)


def test_artnet_odd_length_data_refused() -> None:
    odd = _replace(DMX[:-1], 16, b"\x00\x13")
    with pytest.raises(DmxProtocolError, match="even"):
        artnet.decode(odd)


def test_artnet_unknown_opcode_is_unsupported() -> None:
    with pytest.raises(UnsupportedPacket, match="0x9700"):
        artnet.decode(_replace(DMX, 8, b"\x00\x97"))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (SACN[:40], "truncated"),
        (SACN[:125], "root layer length"),
        (_replace(SACN, 0, b"\x00\x11"), "preamble"),
        (_replace(SACN, 4, b"ASC-E1.18"), "identifier"),
        (_replace(SACN, 16, b"\x60"), "root layer flags"),
        (_replace(SACN, 18, b"\x00\x00\x00\x05"), "root layer vector"),
        (_replace(SACN, 38, b"\x70\x00"), "framing layer length"),
        (_replace(SACN, 40, b"\x00\x00\x00\x03"), "not a data packet"),
        (_replace(SACN, 108, b"\xc9"), "priority 201"),
        (_replace(SACN, 113, b"\x00\x00"), "universe 0"),
        (_replace(SACN, 117, b"\x03"), "DMP vector"),
        (_replace(SACN, 118, b"\xa2"), "address type"),
        (_replace(SACN, 119, b"\x00\x01"), "first address"),
        (_replace(SACN, 123, b"\x00\x02"), "count"),
        (_replace(SACN, 44, b"\xff\xfe"), "UTF-8"),
        (_replace(SACN, 109, b"\xff\xff"), "synchronization address"),
        (
            sacn.SacnData(uuid.UUID(int=1), "s", 1, bytes(512)).encode() + b"\0",
            "root layer length",
        ),
        (_replace(DISCOVERY, 112, b"\x70\x01"), "universe discovery layer length"),
        (_replace(DISCOVERY, 114, b"\x00\x00\x00\x02"), "discovery vector"),
        (_replace(DISCOVERY, 120, b"\x00\x09"), "sorted"),
        (_replace(DISCOVERY, 118, b"\x02\x01"), "page 2 / last page 1"),
    ],
)
def test_sacn_refuses(raw: bytes, match: str) -> None:
    with pytest.raises(DmxProtocolError, match=match):
        sacn.decode(raw)


def test_sacn_oversized_data_refused_even_with_consistent_lengths() -> None:
    big = bytearray(sacn.SacnData(uuid.UUID(int=1), "s", 1, bytes(512)).encode() + b"\0")
    n = len(big)
    struct.pack_into(">H", big, 16, 0x7000 | (n - 16))
    struct.pack_into(">H", big, 38, 0x7000 | (n - 38))
    struct.pack_into(">H", big, 115, 0x7000 | (n - 115))
    struct.pack_into(">H", big, 123, n - 125)
    with pytest.raises(DmxProtocolError, match="oversized"):
        sacn.decode(bytes(big))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: sacn.SacnData(uuid.UUID(int=1), "s", 1, b"", priority=201), "priority"),
        (lambda: sacn.SacnData(uuid.UUID(int=1), "s" * 64, 1, b""), "63"),
        (lambda: sacn.SacnData(uuid.UUID(int=1), "s", 64000, b""), "universe"),
        (lambda: sacn.SacnData(uuid.UUID(int=1), "s", 1, bytes(513)), "512"),
        (lambda: artnet.ArtDmx(1, b"\x00"), "even"),
        (lambda: artnet.ArtDmx(1, bytes(514)), "even"),
        (lambda: artnet.ArtDmx(0x8000, b"\0\0"), "Port-Address"),
        (lambda: artnet.ArtPollReply(ip="1.2.3", short_name="", long_name=""), "ip"),
        (lambda: artnet.ArtPollReply(ip="1.2.3.4", short_name="x" * 18, long_name=""), "17"),
        (lambda: enttec.SendDmx(bytes(23)), "24..512"),
        (lambda: enttec.EnttecMessage(6, bytes(601)), "max 600"),
    ],
)
def test_encoders_refuse_illegal_values(make: object, match: str) -> None:
    with pytest.raises(DmxProtocolError, match=match):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\x7e\x06\x00", "truncated"),
        (b"\x7f\x06\x00\x00\xe7", "starts with"),
        (b"\x7e\x06\x01\x00\x00\x00", "ends with"),
        (b"\x7e\x06\x02\x00\x00\xe7", "length field"),
        (b"\x7e\x06\x59\x02" + bytes(601) + b"\xe7", "exceeds"),
    ],
)
def test_enttec_refuses(raw: bytes, match: str) -> None:
    with pytest.raises(DmxProtocolError, match=match):
        enttec.decode_message(raw)


def test_enttec_label_mismatch_refused() -> None:
    with pytest.raises(DmxProtocolError, match="not send DMX"):
        enttec.SendDmx.from_message(enttec.EnttecMessage(5, bytes(30)))
    with pytest.raises(DmxProtocolError, match="without status"):
        enttec.ReceivedDmx.from_message(enttec.EnttecMessage(5, b"\x00"))


def test_enttec_stream_skips_garbage_and_split_frames() -> None:
    a = enttec.SendDmx(bytes(range(30))).message()
    b = enttec.ReceivedDmx(enttec.STATUS_OVERRUN, b"\x01\x02").message()
    stream = b"\x00\x11" + a.encode() + b"\x7e\x06\xff\xff" + b.encode()
    decoder = enttec.StreamDecoder()
    got = [m for i in range(0, len(stream), 7) for m in decoder.feed(stream[i : i + 7])]
    assert got == [a, b]
    assert decoder.dropped == 2 + 4
