"""The simulated DMX node's wire format: packets built here by hand from the specifications.

The builders below follow Art-Net 4 (ArtDmx, ArtPoll) and E1.31-2018 (data packet) field by
field; they share nothing with the simulator's decoder nor with Flytower's codecs, and the
integration tests use them as an independent sender. ArtPollReply is parsed here by hand too,
and by Flytower's own codec (an independent implementation of the same spec).
"""

from __future__ import annotations

import contextlib
import struct
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.dmx import artnet as flytower_artnet
from simulators.lighting import wire

DESK_CID = uuid.UUID(int=1)


def artdmx(
    port_address: int, data: bytes, sequence: int = 0, version: int = 14, length: int | None = None
) -> bytes:
    n = len(data) if length is None else length
    return (
        b"Art-Net\x00"
        + struct.pack("<H", 0x5000)
        + struct.pack(">H", version)
        + bytes([sequence, 0, port_address & 0xFF, port_address >> 8])
        + struct.pack(">H", n)
        + data
    )


def artpoll(target: tuple[int, int] | None = None) -> bytes:
    flags = 0x20 if target else 0
    packet = b"Art-Net\x00" + struct.pack("<H", 0x2000) + struct.pack(">H", 14)
    packet += bytes([flags, 0])
    if target:
        packet += struct.pack(">HH", target[1], target[0])  # Top, then Bottom
    return packet


def sacn_data(
    universe: int,
    data: bytes,
    *,
    cid: uuid.UUID = DESK_CID,
    name: str = "test desk",
    priority: int = 100,
    sequence: int = 0,
    options: int = 0,
    start_code: int = 0,
) -> bytes:
    """An E1.31 data packet, sections 5-7, field by field."""
    n = len(data)
    dmp = bytes([0x02, 0xA1]) + struct.pack(">HHH", 0, 1, n + 1) + bytes([start_code]) + data
    dmp = struct.pack(">H", 0x7000 | (len(dmp) + 2)) + dmp
    framing = (
        struct.pack(">I", 0x2)
        + name.encode().ljust(64, b"\x00")
        + struct.pack(">BHBBH", priority, 0, sequence, options, universe)
        + dmp
    )
    framing = struct.pack(">H", 0x7000 | (len(framing) + 2)) + framing
    root = struct.pack(">I", 0x4) + cid.bytes + framing
    root = struct.pack(">H", 0x7000 | (len(root) + 2)) + root
    return struct.pack(">HH", 0x10, 0) + b"ASC-E1.17\x00\x00\x00" + root


def parse_poll_reply(packet: bytes) -> dict[str, object]:
    """The fields a controller reads from an ArtPollReply (Art-Net 4, table of ArtPollReply)."""
    assert len(packet) == 239 and packet[:8] == b"Art-Net\x00"
    (opcode,) = struct.unpack_from("<H", packet, 8)
    nports = packet[173]
    ports = [
        packet[18] << 8 | (packet[19] & 0xF) << 4 | (packet[190 + i] & 0xF)
        for i in range(nports)
        if packet[174 + i] & 0x80
    ]
    return {
        "opcode": opcode,
        "ip": ".".join(map(str, packet[10:14])),
        "port": struct.unpack_from("<H", packet, 14)[0],
        "short_name": packet[26:44].split(b"\x00")[0].decode(),
        "ports": ports,
        "good_output": [bool(packet[182 + i] & 0x80) for i in range(nports)],
        "bind_index": packet[211],
    }


# --- decoding -------------------------------------------------------------------------------


@given(st.integers(0, 0x7FFF), st.binary(min_size=1, max_size=512), st.integers(0, 255))
def test_artdmx_round_trip(port_address: int, data: bytes, sequence: int) -> None:
    packet = wire.decode(artdmx(port_address, data, sequence))
    assert packet == wire.ArtDmx(port_address, sequence, 0, data)
    assert packet.universe == port_address + 1


@given(
    st.integers(1, 63999),
    st.binary(max_size=512),
    st.integers(0, 200),
    st.integers(0, 255),
    st.sampled_from([0, 0x40, 0x80]),
    st.uuids(),
    st.text(max_size=20).filter(lambda s: "\x00" not in s),
)
def test_sacn_round_trip(
    universe: int,
    data: bytes,
    priority: int,
    sequence: int,
    options: int,
    cid: uuid.UUID,
    name: str,
) -> None:
    raw = sacn_data(
        universe, data, cid=cid, name=name, priority=priority, sequence=sequence, options=options
    )
    if len(name.encode()) > 63:
        return
    packet = wire.decode(raw)
    assert isinstance(packet, wire.SacnData)
    assert (packet.universe, packet.data, packet.priority, packet.sequence) == (
        universe,
        data,
        priority,
        sequence,
    )
    assert (packet.cid, packet.source_name, packet.start_code) == (cid, name, 0)
    assert packet.terminated == bool(options & 0x40)
    assert packet.preview == bool(options & 0x80)


@given(st.binary(max_size=700))
def test_random_bytes_only_raise_malformed(data: bytes) -> None:
    with contextlib.suppress(wire.MalformedPacket):
        wire.decode(data)


@given(
    st.binary(max_size=600),
    st.sampled_from([b"Art-Net\x00", b"\x00\x10\x00\x00ASC-E1.17\x00\x00\x00"]),
)
def test_random_bodies_behind_valid_identifiers_only_raise_malformed(
    body: bytes, head: bytes
) -> None:
    with contextlib.suppress(wire.MalformedPacket):
        wire.decode(head + body)


@given(st.integers(0, 700))
def test_truncations_of_valid_packets_are_malformed_not_crashes(cut: int) -> None:
    for packet in (artdmx(3, bytes(512), 7), sacn_data(4, bytes(512)), artpoll((0, 9))):
        with contextlib.suppress(wire.MalformedPacket):
            wire.decode(packet[:cut])


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (artdmx(0, b"\x01\x02", version=13), "protocol version 13"),
        (artdmx(0, b"", length=0), "length 0"),
        (artdmx(0, bytes(514)), "length 514"),
        (artdmx(0, b"\x01\x02", length=10), "says 10 slots but carries 2"),
        (artdmx(0x8000, b"\x01\x02"), "Net 128"),
        (b"Art-Net\x00\x00\x50", "shorter than its header"),
        (artpoll()[:13], "shorter than 14"),
        (artpoll()[:12] + b"\x20\x00", "without its Target"),
        (sacn_data(1, b"\x01", priority=201), "priority 201"),
        (sacn_data(0, b"\x01"), "universe 0"),
        (sacn_data(64000, b"\x01"), "universe 64000"),
        (sacn_data(1, b"\x01") + b"\x00", "length"),
        (b"\x00\x11" + sacn_data(1, b"\x01")[2:], "preamble"),
        (b"hello world, not DMX", "unknown packet identifier"),
        (b"", "unknown packet identifier"),
    ],
)
def test_bad_packets_say_why(packet: bytes, reason: str) -> None:
    with pytest.raises(wire.MalformedPacket, match=reason):
        wire.decode(packet)


def test_valid_packets_of_no_use_are_unsupported() -> None:
    art_sync = b"Art-Net\x00" + struct.pack("<H", 0x5200) + b"\x00\x0e\x00\x00"
    assert isinstance(wire.decode(art_sync), wire.Unsupported)
    extended = bytearray(sacn_data(1, b"\x00"))
    extended[18:22] = struct.pack(">I", 0x8)
    assert isinstance(wire.decode(bytes(extended)), wire.Unsupported)


def test_odd_artdmx_lengths_are_accepted() -> None:
    packet = wire.decode(artdmx(1, b"\x01\x02\x03"))
    assert isinstance(packet, wire.ArtDmx) and packet.data == b"\x01\x02\x03"


def test_targeted_artpoll() -> None:
    assert wire.decode(artpoll((5, 9))) == wire.ArtPoll(0x20, (5, 9))
    assert wire.decode(artpoll()) == wire.ArtPoll(0, None)


def test_multicast_groups() -> None:
    assert wire.multicast_group(1) == "239.255.0.1"
    assert wire.multicast_group(63999) == "239.255.249.255"
    with pytest.raises(ValueError, match="outside"):
        wire.multicast_group(0)


# --- ArtPollReply -----------------------------------------------------------------------------


NODE = wire.NodeIdentity("127.0.0.1", 16454, short_name="sim")


@given(st.sets(st.integers(0, 0x7FFF), max_size=40), st.data())
def test_poll_replies_list_every_port_once(ports: set[int], data: st.DataObject) -> None:
    live = data.draw(st.sets(st.sampled_from(sorted(ports)))) if ports else set()
    replies = [parse_poll_reply(r) for r in wire.poll_replies(NODE, ports, live)]
    seen = [pa for r in replies for pa in r["ports"]]  # type: ignore[attr-defined]
    assert sorted(seen) == sorted(ports)
    assert [r["bind_index"] for r in replies] == list(range(1, len(replies) + 1))
    for r in replies:
        assert r["opcode"] == 0x2100 and r["ip"] == "127.0.0.1" and r["port"] == 16454
        for pa, good in zip(r["ports"], r["good_output"], strict=True):  # type: ignore[call-overload]
            assert good == (pa in live)


def test_poll_replies_group_by_subnet_and_parse_with_flytowers_codec() -> None:
    replies = wire.poll_replies(NODE, [0, 1, 2, 3, 4, 17, 300], receiving=[0])
    parsed = [parse_poll_reply(r)["ports"] for r in replies]
    assert parsed == [[0, 1, 2, 3], [4], [17], [300]]
    theirs = [flytower_artnet.decode(r) for r in replies]
    assert all(isinstance(p, flytower_artnet.ArtPollReply) for p in theirs)
    union = set().union(*(p.output_port_addresses() for p in theirs))  # type: ignore[union-attr]
    assert union == {0, 1, 2, 3, 4, 17, 300}


def test_targeted_poll_replies_only_in_range_and_none_when_empty() -> None:
    replies = wire.poll_replies(NODE, [0, 5, 9, 40], target=(5, 9))
    assert [parse_poll_reply(r)["ports"] for r in replies] == [[5, 9]]
    assert wire.poll_replies(NODE, []) == []
    with pytest.raises(ValueError, match="Port-Address"):
        wire.poll_replies(NODE, [0x8000])
