"""Art-Net 4 wire format: ArtDmx, ArtPoll, ArtPollReply, ArtSync, ArtTimeCode (pure, no I/O).

Layouts follow "Art-Net 4 Protocol Release V1.4" (Artistic Licence), whose tables give every
field's offset; the numbers in comments below are those offsets. Art-Net is little-endian for
the OpCode and the UDP port field and big-endian for everything else (ProtVer, ArtDmx Length).

A 15-bit Port-Address is Net (bits 14-8) : Sub-Net (bits 7-4) : Universe (bits 3-0). Decoders
validate every field they read and raise ``DmxProtocolError``; a packet with a valid header but
an opcode we do not handle raises ``UnsupportedPacket``, which receivers ignore quietly.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from drivers.dmx.errors import DmxProtocolError, UnsupportedPacket

ARTNET_PORT = 0x1936  # 6454: source and destination of all Art-Net traffic
ARTNET_ID = b"Art-Net\x00"
PROTOCOL_VERSION = 14
OP_POLL = 0x2000
OP_POLL_REPLY = 0x2100
OP_DMX = 0x5000
OP_SYNC = 0x5200
MAX_PORT_ADDRESS = 0x7FFF

_HEADER = struct.Struct("<8sH")  # ID, OpCode (little-endian)
DMX_HEADER_SIZE = 18
POLL_SIZES = (14, 18, 22)  # Art-Net 3 base; + target Port-Address range; + ESTA / OEM
SYNC_SIZE = 14
POLL_REPLY_SIZE = 239
# Art-Net 3 nodes (OLA among them) stop after the MAC address at offset 207; later fields
# take their defaults when absent.
POLL_REPLY_MIN_SIZE = 207

# ArtPoll Flags bits (Art-Net 4, table 3).
POLL_REPLY_ON_CHANGE = 0x02
POLL_DIAGNOSTICS = 0x04
POLL_TARGETED = 0x20

# ArtPollReply PortTypes bits: the port can output DMX from the network / input DMX onto it.
PORT_OUTPUT = 0x80
PORT_INPUT = 0x40
STYLE_NODE = 0x00
STYLE_CONTROLLER = 0x01
STATUS2_15BIT = 0x08  # supports 15-bit Port-Address (Art-Net 3 and later)
_GOOD_OUTPUT_B = (0xC0, 0xC0, 0xC0, 0xC0)  # RDM disabled, continuous output
_REFRESH_RATE = 44  # DMX512's maximum refresh rate, in Hz


def port_address(net: int, subnet: int, universe: int) -> int:
    """The 15-bit Port-Address of ``net:subnet:universe``."""
    if not (0 <= net <= 0x7F and 0 <= subnet <= 0xF and 0 <= universe <= 0xF):
        raise DmxProtocolError(
            f"Port-Address {net}:{subnet}:{universe} out of range (net 0..127, sub-net and "
            "universe 0..15)"
        )
    return net << 8 | subnet << 4 | universe


def split_port_address(address: int) -> tuple[int, int, int]:
    """``(net, subnet, universe)`` of a 15-bit Port-Address."""
    _check_port_address(address)
    return address >> 8, (address >> 4) & 0xF, address & 0xF


def _check_port_address(address: int) -> None:
    if not 0 <= address <= MAX_PORT_ADDRESS:
        raise DmxProtocolError(f"Port-Address {address} out of range 0..{MAX_PORT_ADDRESS}")


def _check_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise DmxProtocolError(f"{name} {value} does not fit in a byte")


def _check_text(name: str, text: str, size: int) -> None:
    # Fixed-size, NUL-terminated fields: at most size - 1 characters, Latin-1, no NUL inside.
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise DmxProtocolError(f"{name} must be Latin-1 text") from exc
    if b"\x00" in raw or len(raw) > size - 1:
        raise DmxProtocolError(f"{name} must be at most {size - 1} characters without NUL")


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("latin-1")


def _pad(text: str, size: int) -> bytes:
    return text.encode("latin-1").ljust(size, b"\x00")


def _header(packet: bytes, what: str, minimum: int) -> int:
    """Validate ID and length; return the OpCode."""
    if len(packet) < 10:
        raise DmxProtocolError(f"Art-Net packet truncated: {len(packet)} bytes")
    ident, opcode = _HEADER.unpack_from(packet)
    if ident != ARTNET_ID:
        raise DmxProtocolError(f"not Art-Net: ID {ident!r}")
    if what and len(packet) < minimum:
        raise DmxProtocolError(f"{what} truncated: {len(packet)} bytes, need {minimum}")
    return int(opcode)


def _version(packet: bytes, what: str) -> None:
    version = packet[10] << 8 | packet[11]
    if version < PROTOCOL_VERSION:
        raise DmxProtocolError(f"{what}: protocol version {version} < {PROTOCOL_VERSION}")


@dataclass(frozen=True, slots=True)
class ArtDmx:
    """One universe of DMX data (OpDmx / OpOutput, 0x5000).

    ``sequence`` 1..255 wraps (0 disables re-ordering at the receiver); ``physical`` is the
    physical input port the data came from (information only); ``data`` is 2..512 slots, an
    even number (the spec's rule; senders pad an odd frame with one zero slot).
    """

    port_address: int
    data: bytes
    sequence: int = 0
    physical: int = 0

    def __post_init__(self) -> None:
        _check_port_address(self.port_address)
        _check_byte("sequence", self.sequence)
        _check_byte("physical", self.physical)
        n = len(self.data)
        if not 2 <= n <= 512 or n % 2:
            raise DmxProtocolError(f"ArtDmx data length {n} must be even and within 2..512")

    def encode(self) -> bytes:
        return (
            ARTNET_ID
            + struct.pack(
                "<HBBBBBBBB",
                OP_DMX,
                0,
                PROTOCOL_VERSION,
                self.sequence,
                self.physical,
                self.port_address & 0xFF,  # SubUni
                self.port_address >> 8,  # Net
                len(self.data) >> 8,  # LengthHi
                len(self.data) & 0xFF,
            )
            + self.data
        )


@dataclass(frozen=True, slots=True)
class ArtPoll:
    """A controller's discovery request (OpPoll, 0x2000).

    ``flags`` bit 1 asks nodes to reply whenever their state changes; bit 5 limits replies to
    nodes with a port inside ``target_bottom..target_top``.
    """

    flags: int = POLL_REPLY_ON_CHANGE
    diag_priority: int = 0
    target_top: int = MAX_PORT_ADDRESS
    target_bottom: int = 0
    esta_man: int = 0
    oem: int = 0

    def __post_init__(self) -> None:
        _check_byte("flags", self.flags)
        _check_byte("diag_priority", self.diag_priority)
        for name in ("target_top", "target_bottom", "esta_man", "oem"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFFFF:
                raise DmxProtocolError(f"{name} {value} does not fit in 16 bits")

    def encode(self) -> bytes:
        return (
            ARTNET_ID
            + struct.pack(
                "<HBBBB",
                OP_POLL,
                0,
                PROTOCOL_VERSION,
                self.flags,
                self.diag_priority,
            )
            + struct.pack(">HHHH", self.target_top, self.target_bottom, self.esta_man, self.oem)
        )


@dataclass(frozen=True, slots=True)
class ArtSync:
    """Tells nodes to output the ArtDmx frames they hold, all at once (OpSync, 0x5200)."""

    def encode(self) -> bytes:
        return ARTNET_ID + struct.pack("<HBBBB", OP_SYNC, 0, PROTOCOL_VERSION, 0, 0)


def _four(name: str, values: tuple[int, ...]) -> None:
    if len(values) != 4:
        raise DmxProtocolError(f"{name} must have 4 entries, got {len(values)}")
    for v in values:
        _check_byte(name, v)


@dataclass(frozen=True, slots=True)
class ArtPollReply:
    """A node's description of itself (OpPollReply, 0x2100): name, ports and their universes.

    A node with more than four ports, or ports in several Net/Sub-Net groups, sends one reply
    per group of up to four ports, numbered by ``bind_index`` (1 = the root device).
    """

    ip: str
    short_name: str
    long_name: str
    port: int = ARTNET_PORT
    version_info: int = 0
    net_switch: int = 0
    sub_switch: int = 0
    oem: int = 0xFFFF  # "OEM unknown"
    ubea_version: int = 0
    status1: int = 0xD0  # indicators normal, Port-Addresses set by network or front panel
    esta_man: int = 0
    node_report: str = ""
    num_ports: int = 0
    port_types: tuple[int, int, int, int] = (0, 0, 0, 0)
    good_input: tuple[int, int, int, int] = (0, 0, 0, 0)
    good_output_a: tuple[int, int, int, int] = (0, 0, 0, 0)
    sw_in: tuple[int, int, int, int] = (0, 0, 0, 0)
    sw_out: tuple[int, int, int, int] = (0, 0, 0, 0)
    acn_priority: int = 100
    sw_macro: int = 0
    sw_remote: int = 0
    style: int = STYLE_NODE
    mac: bytes = bytes(6)
    bind_ip: str = "0.0.0.0"
    bind_index: int = 1
    status2: int = STATUS2_15BIT
    good_output_b: tuple[int, int, int, int] = _GOOD_OUTPUT_B
    status3: int = 0
    default_responder: bytes = bytes(6)
    user: int = 0
    refresh_rate: int = _REFRESH_RATE
    background_queue_policy: int = 0

    def __post_init__(self) -> None:
        for name in ("ip", "bind_ip"):
            try:
                ipaddress.IPv4Address(getattr(self, name))
            except ValueError as exc:
                raise DmxProtocolError(f"{name}: {exc}") from exc
        for name in ("port", "version_info", "oem", "esta_man", "user", "refresh_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFFFF:
                raise DmxProtocolError(f"{name} {value} does not fit in 16 bits")
        if not 0 <= self.net_switch <= 0x7F or not 0 <= self.sub_switch <= 0xF:
            raise DmxProtocolError("net_switch must be 0..127 and sub_switch 0..15")
        if not 0 <= self.num_ports <= 4:
            raise DmxProtocolError(f"num_ports {self.num_ports} must be 0..4")
        for name in (
            "ubea_version",
            "status1",
            "acn_priority",
            "sw_macro",
            "sw_remote",
            "style",
            "bind_index",
            "status2",
            "status3",
            "background_queue_policy",
        ):
            _check_byte(name, getattr(self, name))
        for name in ("port_types", "good_input", "good_output_a", "sw_in", "sw_out"):
            _four(name, getattr(self, name))
        _four("good_output_b", self.good_output_b)
        if len(self.mac) != 6 or len(self.default_responder) != 6:
            raise DmxProtocolError("mac and default_responder are 6 bytes")
        _check_text("short_name", self.short_name, 18)
        _check_text("long_name", self.long_name, 64)
        _check_text("node_report", self.node_report, 64)

    def output_port_addresses(self) -> frozenset[int]:
        """Port-Addresses this node outputs to DMX, i.e. the universes it wants from us."""
        return self._ports(PORT_OUTPUT, self.sw_out)

    def input_port_addresses(self) -> frozenset[int]:
        return self._ports(PORT_INPUT, self.sw_in)

    def _ports(self, kind: int, switches: tuple[int, ...]) -> frozenset[int]:
        base = self.net_switch << 8 | self.sub_switch << 4
        return frozenset(
            base | (switches[i] & 0xF) for i in range(self.num_ports) if self.port_types[i] & kind
        )

    def encode(self) -> bytes:
        out = bytearray(POLL_REPLY_SIZE)
        _HEADER.pack_into(out, 0, ARTNET_ID, OP_POLL_REPLY)
        out[10:14] = ipaddress.IPv4Address(self.ip).packed
        struct.pack_into("<H", out, 14, self.port)
        struct.pack_into(
            ">HBBHBB",
            out,
            16,
            self.version_info,
            self.net_switch,
            self.sub_switch,
            self.oem,
            self.ubea_version,
            self.status1,
        )
        struct.pack_into("<H", out, 24, self.esta_man)
        out[26:44] = _pad(self.short_name, 18)
        out[44:108] = _pad(self.long_name, 64)
        out[108:172] = _pad(self.node_report, 64)
        struct.pack_into(">H", out, 172, self.num_ports)
        for offset, values in (
            (174, self.port_types),
            (178, self.good_input),
            (182, self.good_output_a),
            (186, self.sw_in),
            (190, self.sw_out),
            (213, self.good_output_b),
        ):
            out[offset : offset + 4] = bytes(values)
        out[194:197] = bytes((self.acn_priority, self.sw_macro, self.sw_remote))
        out[200] = self.style
        out[201:207] = self.mac
        out[207:211] = ipaddress.IPv4Address(self.bind_ip).packed
        out[211] = self.bind_index
        out[212] = self.status2
        out[217] = self.status3
        out[218:224] = self.default_responder
        struct.pack_into(
            ">HHB", out, 224, self.user, self.refresh_rate, self.background_queue_policy
        )
        return bytes(out)


# ArtTimeCode (OpTimeCode, 0x9700): ID, OpCode, ProtVer, Filler1, StreamId, Frames, Seconds,
# Minutes, Hours, Type; 19 bytes. Type: 0 Film (24), 1 EBU (25), 2 DF (29.97), 3 SMPTE (30).
# It is decoded by ``decode_timecode`` (``decode`` leaves it unsupported, so DMX receivers
# ignore it quietly); ``ArtNetInput`` hands it to an ``on_timecode`` callback.
OP_TIMECODE = 0x9700
TIMECODE_SIZE = 19
TIMECODE_FPS = (24, 25, 30, 30)  # frame labels per second, by Type


@dataclass(frozen=True, slots=True)
class ArtTimeCode:
    """One timecode label from a master (OpTimeCode, 0x9700); ``stream_id`` 0 is the master."""

    hours: int
    minutes: int
    seconds: int
    frames: int
    type: int = 1
    stream_id: int = 0

    def __post_init__(self) -> None:
        _check_byte("stream_id", self.stream_id)
        if not 0 <= self.type <= 3:
            raise DmxProtocolError(f"ArtTimeCode: Type {self.type} is not 0..3")
        if not (0 <= self.hours <= 23 and 0 <= self.minutes <= 59 and 0 <= self.seconds <= 59):
            raise DmxProtocolError(
                f"ArtTimeCode: {self.hours}:{self.minutes}:{self.seconds} out of range "
                "(hours 0..23, minutes and seconds 0..59)"
            )
        if not 0 <= self.frames < TIMECODE_FPS[self.type]:
            raise DmxProtocolError(
                f"ArtTimeCode: Frames {self.frames} out of range for Type {self.type} "
                f"(0..{TIMECODE_FPS[self.type] - 1})"
            )

    def encode(self) -> bytes:
        return ARTNET_ID + struct.pack(
            "<HBBBBBBBBB",
            OP_TIMECODE,
            0,
            PROTOCOL_VERSION,
            0,
            self.stream_id,
            self.frames,
            self.seconds,
            self.minutes,
            self.hours,
            self.type,
        )


def opcode(packet: bytes) -> int:
    """The OpCode of an Art-Net datagram (ID and minimum length checked)."""
    return _header(packet, "", 0)


def decode_timecode(packet: bytes) -> ArtTimeCode:
    """Decode an ArtTimeCode datagram; DmxProtocolError says what is wrong with a bad one."""
    if _header(packet, "", 0) != OP_TIMECODE:
        raise UnsupportedPacket("not an ArtTimeCode")
    if len(packet) != TIMECODE_SIZE:
        raise DmxProtocolError(f"ArtTimeCode must be {TIMECODE_SIZE} bytes, got {len(packet)}")
    _version(packet, "ArtTimeCode")
    stream_id, frames, seconds, minutes, hours, kind = packet[13:19]
    return ArtTimeCode(hours, minutes, seconds, frames, kind, stream_id)


ArtNetPacket = ArtDmx | ArtPoll | ArtPollReply | ArtSync


def decode(packet: bytes) -> ArtNetPacket:
    """Decode one Art-Net datagram; DmxProtocolError says what is wrong with a bad one."""
    opcode = _header(packet, "", 0)
    if opcode == OP_DMX:
        return _decode_dmx(packet)
    if opcode == OP_POLL:
        return _decode_poll(packet)
    if opcode == OP_POLL_REPLY:
        return _decode_poll_reply(packet)
    if opcode == OP_SYNC:
        if len(packet) != SYNC_SIZE:
            raise DmxProtocolError(f"ArtSync must be {SYNC_SIZE} bytes, got {len(packet)}")
        _version(packet, "ArtSync")
        return ArtSync()
    raise UnsupportedPacket(f"Art-Net opcode 0x{opcode:04x} is not handled")


def _decode_dmx(packet: bytes) -> ArtDmx:
    _header(packet, "ArtDmx", DMX_HEADER_SIZE)
    _version(packet, "ArtDmx")
    sequence, physical, sub_uni, net, length = struct.unpack_from(">BBBBH", packet, 12)
    if net > 0x7F:
        raise DmxProtocolError(f"ArtDmx: Net {net} has bit 7 set (Port-Address is 15 bits)")
    carried = len(packet) - DMX_HEADER_SIZE
    if length != carried:
        raise DmxProtocolError(f"ArtDmx: Length field {length} but {carried} data bytes")
    return ArtDmx(net << 8 | sub_uni, bytes(packet[DMX_HEADER_SIZE:]), sequence, physical)


def _decode_poll(packet: bytes) -> ArtPoll:
    if len(packet) not in POLL_SIZES:
        raise DmxProtocolError(f"ArtPoll length {len(packet)} is not one of {POLL_SIZES}")
    _version(packet, "ArtPoll")
    flags, diag = packet[12], packet[13]
    top, bottom, esta, oem = MAX_PORT_ADDRESS, 0, 0, 0
    if len(packet) >= 18:
        top, bottom = struct.unpack_from(">HH", packet, 14)
    if len(packet) >= 22:
        esta, oem = struct.unpack_from(">HH", packet, 18)
    return ArtPoll(flags, diag, top, bottom, esta, oem)


def _decode_poll_reply(packet: bytes) -> ArtPollReply:
    n = len(packet)
    if not POLL_REPLY_MIN_SIZE <= n <= POLL_REPLY_SIZE:
        raise DmxProtocolError(
            f"ArtPollReply length {n} outside {POLL_REPLY_MIN_SIZE}..{POLL_REPLY_SIZE}"
        )
    full = bytes(packet).ljust(POLL_REPLY_SIZE, b"\x00")
    (port,) = struct.unpack_from("<H", full, 14)
    version, net, sub, oem, ubea, status1 = struct.unpack_from(">HBBHBB", full, 16)
    (esta,) = struct.unpack_from("<H", full, 24)
    (num_ports,) = struct.unpack_from(">H", full, 172)
    user, refresh, queue = struct.unpack_from(">HHB", full, 224)
    if net > 0x7F or sub > 0xF or num_ports > 4:
        raise DmxProtocolError(
            f"ArtPollReply: NetSwitch {net} (max 127), SubSwitch {sub} (max 15) or "
            f"NumPorts {num_ports} (max 4) out of range"
        )
    short = n < POLL_REPLY_SIZE  # an Art-Net 3 reply: later fields take their defaults

    def four(offset: int) -> tuple[int, int, int, int]:
        a, b, c, d = full[offset : offset + 4]
        return a, b, c, d

    return ArtPollReply(
        ip=str(ipaddress.IPv4Address(full[10:14])),
        port=port,
        version_info=version,
        net_switch=net,
        sub_switch=sub,
        oem=oem,
        ubea_version=ubea,
        status1=status1,
        esta_man=esta,
        short_name=_text(full[26:44]),
        long_name=_text(full[44:108]),
        node_report=_text(full[108:172]),
        num_ports=num_ports,
        port_types=four(174),
        good_input=four(178),
        good_output_a=four(182),
        sw_in=four(186),
        sw_out=four(190),
        acn_priority=full[194],
        sw_macro=full[195],
        sw_remote=full[196],
        style=full[200],
        mac=full[201:207],
        bind_ip=str(ipaddress.IPv4Address(full[207:211])),
        bind_index=full[211],
        status2=full[212],
        good_output_b=_GOOD_OUTPUT_B if short else four(213),
        status3=full[217],
        default_responder=full[218:224],
        user=user,
        refresh_rate=_REFRESH_RATE if short else refresh,
        background_queue_policy=queue,
    )
