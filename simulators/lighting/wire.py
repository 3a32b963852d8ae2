"""What a DMX-over-IP node reads and writes: Art-Net 4 and E1.31 (sACN), as pure functions.

Written from the public specifications that docs/interfaces/dmx.md names (Art-Net 4 Protocol
Release V1.4; ANSI E1.31-2018), not from Flytower's own codecs, so that a mistake in those is
caught by a receiver that disagrees rather than mirrored by one that shares it.

A receiver needs to *decode* ArtDmx, ArtPoll and E1.31 data packets and to *encode*
ArtPollReply. ``decode`` takes any datagram and returns one of ``ArtDmx``, ``ArtPoll``,
``SacnData`` or ``Unsupported`` (a valid packet a receiver has no use for: ArtSync, another
node's ArtPollReply, sACN sync or discovery), or raises ``MalformedPacket`` with the reason.
Nothing else escapes, whatever the bytes (tests/unit/test_sim_lighting_wire.py fuzzes it).

Numbering: the 15-bit Art-Net Port-Address is ``Net:Sub-Net:Universe`` (7:4:4 bits); the venue's
universe ``u`` is Port-Address ``u - 1`` (docs/interfaces/dmx.md and edge/config.py), sACN
universes are 1..63999 as they are.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ARTNET_ID = b"Art-Net\x00"
ARTNET_PORT = 6454
OP_POLL = 0x2000
OP_POLL_REPLY = 0x2100
OP_DMX = 0x5000
PROTOCOL_VERSION = 14
ARTNET_DMX_HEADER = 18
POLL_MIN_LENGTH = 14  # ID, OpCode, ProtVer, Flags, DiagPriority (Art-Net 3 and later)
POLL_TARGETED = 0x20  # Flags bit 5: reply only for Port-Addresses in Target Bottom..Top
POLL_REPLY_LENGTH = 239

SACN_PORT = 5568
ACN_ID = b"ASC-E1.17\x00\x00\x00"
ROOT_DATA = 0x00000004
ROOT_EXTENDED = 0x00000008  # sync and universe discovery: valid, of no use to a receiver
FRAMING_DATA = 0x00000002
DMP_SET_PROPERTY = 0x02
SACN_HEADER = 126  # up to and including the START code
OPT_PREVIEW = 0x80
OPT_TERMINATED = 0x40
MAX_PRIORITY = 200
MAX_UNIVERSE = 63999
SLOTS = 512


class MalformedPacket(ValueError):
    """A datagram that is not a valid Art-Net or E1.31 packet; the message says why."""


@dataclass(frozen=True, slots=True)
class ArtDmx:
    port_address: int
    sequence: int  # 0: the sender does not sequence
    physical: int
    data: bytes  # 1..512 slots

    @property
    def universe(self) -> int:
        return self.port_address + 1


@dataclass(frozen=True, slots=True)
class ArtPoll:
    flags: int
    target: tuple[int, int] | None  # (bottom, top) Port-Addresses when targeted


@dataclass(frozen=True, slots=True)
class SacnData:
    cid: uuid.UUID
    source_name: str
    priority: int
    sync_address: int
    sequence: int
    options: int
    universe: int
    start_code: int
    data: bytes  # 0..512 slots

    @property
    def preview(self) -> bool:
        return bool(self.options & OPT_PREVIEW)

    @property
    def terminated(self) -> bool:
        return bool(self.options & OPT_TERMINATED)


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A well-formed packet a receiver has no use for (counted as ignored, not malformed)."""

    what: str


Packet = ArtDmx | ArtPoll | SacnData | Unsupported


def decode(data: bytes) -> Packet:
    """Decode one datagram; MalformedPacket if it is neither valid Art-Net nor valid E1.31."""
    if data[:8] == ARTNET_ID:
        return _decode_artnet(data)
    if data[4:16] == ACN_ID:
        return _decode_sacn(data)
    raise MalformedPacket("neither Art-Net nor E1.31 (unknown packet identifier)")


def _decode_artnet(data: bytes) -> Packet:
    if len(data) < 12:
        raise MalformedPacket(f"Art-Net packet of {len(data)} bytes is shorter than its header")
    (opcode,) = struct.unpack_from("<H", data, 8)
    if opcode == OP_DMX:
        return _decode_artdmx(data)
    if opcode == OP_POLL:
        return _decode_artpoll(data)
    return Unsupported(f"Art-Net OpCode 0x{opcode:04x}")


def _protocol_version(data: bytes) -> None:
    version = data[10] << 8 | data[11]
    if version < PROTOCOL_VERSION:
        raise MalformedPacket(f"Art-Net protocol version {version} (a node needs 14)")


def _decode_artdmx(data: bytes) -> ArtDmx:
    if len(data) < ARTNET_DMX_HEADER:
        raise MalformedPacket(f"ArtDmx of {len(data)} bytes is shorter than its 18-byte header")
    _protocol_version(data)
    sequence, physical, sub_uni, net, length = struct.unpack_from(">BBBBH", data, 12)
    if net & 0x80:
        raise MalformedPacket(f"ArtDmx Net {net} is above 127")
    if not 1 <= length <= SLOTS:
        raise MalformedPacket(f"ArtDmx length {length} is outside 1..512")
    if len(data) < ARTNET_DMX_HEADER + length:
        raise MalformedPacket(
            f"ArtDmx says {length} slots but carries {len(data) - ARTNET_DMX_HEADER}"
        )
    # An odd length breaks the spec's "even" rule but harms nobody: taken, as OLA does.
    payload = bytes(data[ARTNET_DMX_HEADER : ARTNET_DMX_HEADER + length])
    return ArtDmx(net << 8 | sub_uni, sequence, physical, payload)


def _decode_artpoll(data: bytes) -> ArtPoll:
    if len(data) < POLL_MIN_LENGTH:
        raise MalformedPacket(f"ArtPoll of {len(data)} bytes is shorter than 14")
    _protocol_version(data)
    flags = data[12]
    target = None
    if flags & POLL_TARGETED:
        if len(data) < 18:
            raise MalformedPacket("targeted ArtPoll without its Target Port-Address fields")
        top, bottom = struct.unpack_from(">HH", data, 14)
        if top > 0x7FFF or bottom > top:
            raise MalformedPacket(f"targeted ArtPoll range {bottom}..{top} is not valid")
        target = (bottom, top)
    return ArtPoll(flags, target)


def _flags_length(data: bytes, offset: int, layer: str) -> None:
    (field,) = struct.unpack_from(">H", data, offset)
    if field >> 12 != 0x7:
        raise MalformedPacket(f"E1.31 {layer} layer flags are 0x{field >> 12:x}, not 0x7")
    if field & 0x0FFF != len(data) - offset:
        raise MalformedPacket(
            f"E1.31 {layer} layer length {field & 0x0FFF} does not match the packet "
            f"({len(data) - offset} bytes from its start)"
        )


def _decode_sacn(data: bytes) -> Packet:
    if len(data) < 22:
        raise MalformedPacket(f"E1.31 packet of {len(data)} bytes is shorter than its root layer")
    preamble, postamble = struct.unpack_from(">HH", data, 0)
    if preamble != 0x0010 or postamble != 0:
        raise MalformedPacket(f"E1.31 preamble/postamble {preamble:#x}/{postamble:#x}")
    _flags_length(data, 16, "root")
    (vector,) = struct.unpack_from(">I", data, 18)
    if vector == ROOT_EXTENDED:
        return Unsupported("E1.31 extended packet (sync or discovery)")
    if vector != ROOT_DATA:
        raise MalformedPacket(f"E1.31 root vector 0x{vector:x} is not data (0x4)")
    if len(data) < SACN_HEADER:
        raise MalformedPacket(f"E1.31 data packet of {len(data)} bytes is shorter than 126")
    _flags_length(data, 38, "framing")
    (vector,) = struct.unpack_from(">I", data, 40)
    if vector != FRAMING_DATA:
        raise MalformedPacket(f"E1.31 framing vector 0x{vector:x} is not data (0x2)")
    name = bytes(data[44:108]).split(b"\x00", 1)[0].decode("utf-8", errors="replace")
    priority, sync, sequence, options, universe = struct.unpack_from(">BHBBH", data, 108)
    if priority > MAX_PRIORITY:
        raise MalformedPacket(f"E1.31 priority {priority} is above 200")
    if not 1 <= universe <= MAX_UNIVERSE:
        raise MalformedPacket(f"E1.31 universe {universe} is outside 1..63999")
    _flags_length(data, 115, "DMP")
    vector, kinds, first, increment, count = struct.unpack_from(">BBHHH", data, 117)
    if vector != DMP_SET_PROPERTY or kinds != 0xA1 or first != 0 or increment != 1:
        raise MalformedPacket("E1.31 DMP layer is not 'set property', 0xa1, from 0 by 1")
    if not 1 <= count <= SLOTS + 1 or count != len(data) - SACN_HEADER + 1:
        raise MalformedPacket(f"E1.31 property count {count} does not match the packet")
    return SacnData(
        uuid.UUID(bytes=bytes(data[22:38])),
        name,
        priority,
        sync,
        sequence,
        options,
        universe,
        data[125],
        bytes(data[SACN_HEADER:]),
    )


def multicast_group(universe: int) -> str:
    """E1.31 section 9.3.1: 239.255.{hi}.{lo} of the universe number."""
    if not 1 <= universe <= MAX_UNIVERSE:
        raise ValueError(f"sACN universe {universe} is outside 1..63999")
    return f"239.255.{universe >> 8}.{universe & 0xFF}"


@dataclass(frozen=True)
class NodeIdentity:
    """What an ArtPollReply says about the node besides its ports."""

    ip: str
    port: int
    short_name: str = "Flytower sim"
    long_name: str = "Flytower simulated DMX node"


def poll_replies(
    node: NodeIdentity,
    port_addresses: Iterable[int],
    receiving: Iterable[int] = (),
    target: tuple[int, int] | None = None,
) -> list[bytes]:
    """The ArtPollReply packets for a node that outputs ``port_addresses``.

    One reply per four ports of one Net:Sub-Net (an ArtPollReply holds four ports that share
    Net and Sub-Net), BindIndex 1, 2, … in Port-Address order. A port in ``receiving`` has its
    GoodOutputA 'data is being output' bit set. ``target`` limits the ports to those of a
    targeted ArtPoll. No ports, no replies: a node with nothing to say stays silent.
    """
    live = set(receiving)
    wanted = sorted({pa for pa in port_addresses if target is None or target[0] <= pa <= target[1]})
    groups: dict[int, list[int]] = {}
    for pa in wanted:
        if not 0 <= pa <= 0x7FFF:
            raise ValueError(f"Port-Address {pa} is outside 0..32767")
        groups.setdefault(pa >> 4, []).append(pa)
    chunks = [ports[i : i + 4] for ports in groups.values() for i in range(0, len(ports), 4)]
    return [
        _poll_reply(node, chunk, live, bind_index)
        for bind_index, chunk in enumerate(chunks[:255], start=1)
    ]


def _text(value: str, size: int) -> bytes:
    raw = value.encode("ascii", errors="replace")[: size - 1]
    return raw + bytes(size - len(raw))


def _four(values: Sequence[int]) -> bytes:
    return bytes([*values, 0, 0, 0, 0][:4])


def _poll_reply(node: NodeIdentity, ports: Sequence[int], live: set[int], bind_index: int) -> bytes:
    net, sub = ports[0] >> 8, ports[0] >> 4 & 0xF
    ip = bytes(int(part) for part in node.ip.split("."))
    report = f"#0001 [{bind_index:04d}] {len(ports)} output port(s) OK"
    out = bytearray()
    out += ARTNET_ID
    out += struct.pack("<H", OP_POLL_REPLY)
    out += ip
    # The spec fixes 0x1936; a node moved to another port (a lab, a test) says where it is.
    out += struct.pack("<H", node.port)
    out += bytes([1, 0, net, sub, 0x00, 0xFF, 0, 0xE0])  # VersInfo, Net, Sub, Oem, Ubea, Status1
    out += struct.pack("<H", 0x7FF0)  # ESTA manufacturer: the prototyping range (little-endian)
    out += _text(node.short_name, 18) + _text(node.long_name, 64) + _text(report, 64)
    out += struct.pack(">H", len(ports))
    out += _four([0x80] * len(ports))  # PortTypes: can output DMX512 from the network
    out += _four([0x08] * len(ports))  # GoodInput: input disabled (we have no inputs)
    out += _four([0x80 if pa in live else 0 for pa in ports])  # GoodOutputA
    out += _four([0] * len(ports))  # SwIn
    out += _four([pa & 0xF for pa in ports])  # SwOut
    out += bytes([100, 0, 0, 0, 0, 0])  # AcnPriority, SwMacro, SwRemote, Spare x3
    out += bytes([0x00])  # Style: StNode
    out += bytes(6)  # MAC: unknown
    out += ip  # BindIp
    out += bytes([bind_index, 0x08])  # BindIndex, Status2: 15-bit Port-Addresses
    out += bytes(4)  # GoodOutputB
    out += bytes([0]) + bytes(6) + bytes(2)  # Status3, DefaultRespUID, User
    out += struct.pack(">H", 44)  # RefreshRate
    out += bytes(POLL_REPLY_LENGTH - len(out))
    return bytes(out)
