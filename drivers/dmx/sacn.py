"""sACN (ANSI E1.31-2018) wire format: data, synchronization and universe discovery packets.

Every E1.31 packet is a root layer (ACN preamble, packet identifier, CID), a framing layer and
a payload layer (DMP for data, a universe list for discovery). Each layer starts with a 16-bit
"flags and length" field: the high nibble is 0x7 and the low 12 bits are the length of that
layer to the end of the packet (E1.31 section 5.4 / 6.2 / 7.2). Sizes and vectors below are the
constants of E1.31 table A-1 (Appendix A).

Decoders check every fixed field and every length against the datagram and raise
``DmxProtocolError``; a valid E1.31 packet of a kind we do not handle raises
``UnsupportedPacket``.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from drivers.dmx.errors import DmxProtocolError, UnsupportedPacket

SACN_PORT = 5568
ACN_PACKET_IDENTIFIER = b"ASC-E1.17\x00\x00\x00"
VECTOR_ROOT_E131_DATA = 0x00000004
VECTOR_ROOT_E131_EXTENDED = 0x00000008
VECTOR_E131_DATA_PACKET = 0x00000002
VECTOR_E131_EXTENDED_SYNCHRONIZATION = 0x00000001
VECTOR_E131_EXTENDED_DISCOVERY = 0x00000002
VECTOR_UNIVERSE_DISCOVERY_UNIVERSE_LIST = 0x00000001
VECTOR_DMP_SET_PROPERTY = 0x02
DMP_ADDRESS_DATA_TYPE = 0xA1
DISCOVERY_UNIVERSE = 64214
DISCOVERY_INTERVAL_S = 10.0  # E131_UNIVERSE_DISCOVERY_INTERVAL
NETWORK_DATA_LOSS_TIMEOUT_S = 2.5  # E131_NETWORK_DATA_LOSS_TIMEOUT
MAX_UNIVERSE = 63999
MAX_PRIORITY = 200
DEFAULT_PRIORITY = 100
UNIVERSES_PER_PAGE = 512

OPTION_PREVIEW = 0x80
OPTION_STREAM_TERMINATED = 0x40
OPTION_FORCE_SYNC = 0x20

DATA_HEADER_SIZE = 126  # up to and including the START code
SYNC_SIZE = 49
DISCOVERY_HEADER_SIZE = 120
_ROOT = struct.Struct(">HH12sHI16s")  # preamble, postamble, ACN id, flags+len, vector, CID
_FRAMING_DATA = struct.Struct(">HI64sBHBBH")  # flags+len, vector, name, prio, sync, seq, opt, u
_DMP = struct.Struct(">HBBHHH")  # flags+len, vector, address type, first, increment, count
_SYNC = struct.Struct(">HIBHH")  # flags+len, vector, sequence, sync address, reserved
_FRAMING_DISCOVERY = struct.Struct(">HI64sI")  # flags+len, vector, name, reserved
_DISCOVERY = struct.Struct(">HIBB")  # flags+len, vector, page, last page


def multicast_group(universe: int) -> str:
    """The IPv4 multicast address of ``universe``: 239.255.hi.lo (E1.31 section 9.3.1)."""
    if not 1 <= universe <= DISCOVERY_UNIVERSE:
        raise DmxProtocolError(f"universe {universe} out of range 1..63999")
    return f"239.255.{universe >> 8}.{universe & 0xFF}"


def _flags_length(length: int) -> int:
    return 0x7000 | length


def _check_flags_length(value: int, expected: int, layer: str) -> None:
    if value >> 12 != 0x7:
        raise DmxProtocolError(f"{layer} layer flags 0x{value >> 12:x}, expected 0x7")
    if value & 0x0FFF != expected:
        raise DmxProtocolError(
            f"{layer} layer length {value & 0x0FFF} disagrees with the packet ({expected})"
        )


def _check_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) > 63 or b"\x00" in raw:
        raise DmxProtocolError("source name must be at most 63 UTF-8 bytes without NUL")
    return raw.ljust(64, b"\x00")


def _name(raw: bytes) -> str:
    try:
        return raw.split(b"\x00", 1)[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DmxProtocolError(f"source name is not UTF-8: {exc}") from exc


def _check_universe(universe: int, what: str = "universe") -> None:
    if not 1 <= universe <= MAX_UNIVERSE:
        raise DmxProtocolError(f"{what} {universe} out of range 1..{MAX_UNIVERSE}")


def _check_sync_address(address: int) -> None:
    if address != 0:
        _check_universe(address, "synchronization address")


@dataclass(frozen=True, slots=True)
class SacnData:
    """An E1.31 data packet: one universe's START code and 0..512 slots from one source."""

    cid: uuid.UUID
    source_name: str
    universe: int
    data: bytes
    sequence: int = 0
    priority: int = DEFAULT_PRIORITY
    sync_address: int = 0
    preview: bool = False
    stream_terminated: bool = False
    force_sync: bool = False
    start_code: int = 0

    def __post_init__(self) -> None:
        _check_name(self.source_name)
        _check_universe(self.universe)
        _check_sync_address(self.sync_address)
        if not 0 <= self.priority <= MAX_PRIORITY:
            raise DmxProtocolError(f"priority {self.priority} out of range 0..{MAX_PRIORITY}")
        if not 0 <= self.sequence <= 0xFF or not 0 <= self.start_code <= 0xFF:
            raise DmxProtocolError("sequence and START code are bytes (0..255)")
        if len(self.data) > 512:
            raise DmxProtocolError(f"{len(self.data)} slots: a universe has at most 512")

    @property
    def options(self) -> int:
        return (
            (OPTION_PREVIEW if self.preview else 0)
            | (OPTION_STREAM_TERMINATED if self.stream_terminated else 0)
            | (OPTION_FORCE_SYNC if self.force_sync else 0)
        )

    def encode(self) -> bytes:
        n = len(self.data)
        total = DATA_HEADER_SIZE + n
        return (
            _ROOT.pack(
                0x0010,
                0x0000,
                ACN_PACKET_IDENTIFIER,
                _flags_length(total - 16),
                VECTOR_ROOT_E131_DATA,
                self.cid.bytes,
            )
            + _FRAMING_DATA.pack(
                _flags_length(total - 38),
                VECTOR_E131_DATA_PACKET,
                _check_name(self.source_name),
                self.priority,
                self.sync_address,
                self.sequence,
                self.options,
                self.universe,
            )
            + _DMP.pack(_flags_length(total - 115), VECTOR_DMP_SET_PROPERTY, 0xA1, 0, 1, n + 1)
            + bytes((self.start_code,))
            + self.data
        )


@dataclass(frozen=True, slots=True)
class SacnSync:
    """An E1.31 synchronization packet: receivers holding data for ``sync_address`` act now."""

    cid: uuid.UUID
    sync_address: int
    sequence: int = 0

    def __post_init__(self) -> None:
        _check_universe(self.sync_address, "synchronization address")
        if not 0 <= self.sequence <= 0xFF:
            raise DmxProtocolError("sequence is a byte (0..255)")

    def encode(self) -> bytes:
        return _ROOT.pack(
            0x0010,
            0x0000,
            ACN_PACKET_IDENTIFIER,
            _flags_length(SYNC_SIZE - 16),
            VECTOR_ROOT_E131_EXTENDED,
            self.cid.bytes,
        ) + _SYNC.pack(
            _flags_length(SYNC_SIZE - 38),
            VECTOR_E131_EXTENDED_SYNCHRONIZATION,
            self.sequence,
            self.sync_address,
            0,
        )


@dataclass(frozen=True, slots=True)
class SacnDiscovery:
    """One page of a source's universe discovery list (sorted, at most 512 universes)."""

    cid: uuid.UUID
    source_name: str
    universes: tuple[int, ...]
    page: int = 0
    last_page: int = 0

    def __post_init__(self) -> None:
        _check_name(self.source_name)
        if not 0 <= self.page <= self.last_page <= 0xFF:
            raise DmxProtocolError(f"page {self.page} / last page {self.last_page} invalid")
        if len(self.universes) > UNIVERSES_PER_PAGE:
            raise DmxProtocolError(f"{len(self.universes)} universes on one page (max 512)")
        for u in self.universes:
            _check_universe(u)
        if any(a >= b for a, b in zip(self.universes, self.universes[1:], strict=False)):
            raise DmxProtocolError("discovery universes must be sorted ascending, no repeats")

    def encode(self) -> bytes:
        total = DISCOVERY_HEADER_SIZE + 2 * len(self.universes)
        return (
            _ROOT.pack(
                0x0010,
                0x0000,
                ACN_PACKET_IDENTIFIER,
                _flags_length(total - 16),
                VECTOR_ROOT_E131_EXTENDED,
                self.cid.bytes,
            )
            + _FRAMING_DISCOVERY.pack(
                _flags_length(total - 38),
                VECTOR_E131_EXTENDED_DISCOVERY,
                _check_name(self.source_name),
                0,
            )
            + _DISCOVERY.pack(
                _flags_length(total - 112),
                VECTOR_UNIVERSE_DISCOVERY_UNIVERSE_LIST,
                self.page,
                self.last_page,
            )
            + struct.pack(f">{len(self.universes)}H", *self.universes)
        )


def discovery_pages(cid: uuid.UUID, source_name: str, universes: set[int]) -> list[SacnDiscovery]:
    """The discovery pages announcing ``universes`` (sorted, 512 a page; one empty page if
    there are none, so receivers still see the source)."""
    ordered = sorted(universes)
    chunks = [
        tuple(ordered[i : i + UNIVERSES_PER_PAGE])
        for i in range(0, len(ordered), UNIVERSES_PER_PAGE)
    ] or [()]
    last = len(chunks) - 1
    return [SacnDiscovery(cid, source_name, c, i, last) for i, c in enumerate(chunks)]


SacnPacket = SacnData | SacnSync | SacnDiscovery


def decode(packet: bytes) -> SacnPacket:
    """Decode one E1.31 datagram; DmxProtocolError says what is wrong with a bad one."""
    n = len(packet)
    if n < SYNC_SIZE:
        raise DmxProtocolError(f"E1.31 packet truncated: {n} bytes")
    preamble, postamble, ident, root_fl, vector, cid = _ROOT.unpack_from(packet)
    if preamble != 0x0010 or postamble != 0x0000 or ident != ACN_PACKET_IDENTIFIER:
        raise DmxProtocolError("not an ACN root layer packet (preamble or identifier)")
    _check_flags_length(root_fl, n - 16, "root")
    if vector == VECTOR_ROOT_E131_DATA:
        return _decode_data(packet, uuid.UUID(bytes=cid))
    if vector == VECTOR_ROOT_E131_EXTENDED:
        return _decode_extended(packet, uuid.UUID(bytes=cid))
    raise DmxProtocolError(f"root layer vector 0x{vector:08x} is not E1.31")


def _decode_data(packet: bytes, cid: uuid.UUID) -> SacnData:
    n = len(packet)
    if n < DATA_HEADER_SIZE:
        raise DmxProtocolError(f"E1.31 data packet truncated: {n} bytes, need 126")
    if n > DATA_HEADER_SIZE + 512:
        raise DmxProtocolError(f"E1.31 data packet oversized: {n} bytes, max 638")
    fl, vector, name, priority, sync, seq, options, universe = _FRAMING_DATA.unpack_from(packet, 38)
    _check_flags_length(fl, n - 38, "framing")
    if vector != VECTOR_E131_DATA_PACKET:
        raise DmxProtocolError(f"framing layer vector 0x{vector:08x} is not a data packet")
    fl, dmp_vector, address_type, first, increment, count = _DMP.unpack_from(packet, 115)
    _check_flags_length(fl, n - 115, "DMP")
    if dmp_vector != VECTOR_DMP_SET_PROPERTY or address_type != DMP_ADDRESS_DATA_TYPE:
        raise DmxProtocolError(
            f"DMP vector 0x{dmp_vector:02x} / address type 0x{address_type:02x} invalid"
        )
    if first != 0 or increment != 1 or count != n - 125:
        raise DmxProtocolError(
            f"DMP first address {first}, increment {increment}, count {count}: "
            f"expected 0, 1, {n - 125}"
        )
    if universe == 0 or universe > MAX_UNIVERSE or priority > MAX_PRIORITY:
        raise DmxProtocolError(f"universe {universe} or priority {priority} out of range")
    if sync > MAX_UNIVERSE:
        raise DmxProtocolError(f"synchronization address {sync} out of range")
    return SacnData(
        cid,
        _name(name),
        universe,
        bytes(packet[DATA_HEADER_SIZE:]),
        seq,
        priority,
        sync,
        bool(options & OPTION_PREVIEW),
        bool(options & OPTION_STREAM_TERMINATED),
        bool(options & OPTION_FORCE_SYNC),
        packet[125],
    )


def _decode_extended(packet: bytes, cid: uuid.UUID) -> SacnSync | SacnDiscovery:
    n = len(packet)
    fl, vector = struct.unpack_from(">HI", packet, 38)
    _check_flags_length(fl, n - 38, "framing")
    if vector == VECTOR_E131_EXTENDED_SYNCHRONIZATION:
        if n != SYNC_SIZE:
            raise DmxProtocolError(f"E1.31 sync packet must be {SYNC_SIZE} bytes, got {n}")
        _, _, seq, address, _ = _SYNC.unpack_from(packet, 38)
        if not 1 <= address <= MAX_UNIVERSE:
            raise DmxProtocolError(f"synchronization address {address} out of range")
        return SacnSync(cid, address, seq)
    if vector != VECTOR_E131_EXTENDED_DISCOVERY:
        raise UnsupportedPacket(f"E1.31 extended vector 0x{vector:08x} is not handled")
    if n < DISCOVERY_HEADER_SIZE or (n - DISCOVERY_HEADER_SIZE) % 2:
        raise DmxProtocolError(f"E1.31 discovery packet length {n} invalid")
    count = (n - DISCOVERY_HEADER_SIZE) // 2
    if count > UNIVERSES_PER_PAGE:
        raise DmxProtocolError(f"E1.31 discovery page oversized: {count} universes")
    _, _, name, _ = _FRAMING_DISCOVERY.unpack_from(packet, 38)
    fl, list_vector, page, last_page = _DISCOVERY.unpack_from(packet, 112)
    _check_flags_length(fl, n - 112, "universe discovery")
    if list_vector != VECTOR_UNIVERSE_DISCOVERY_UNIVERSE_LIST:
        raise DmxProtocolError(f"universe discovery vector 0x{list_vector:08x} invalid")
    universes = struct.unpack_from(f">{count}H", packet, DISCOVERY_HEADER_SIZE)
    return SacnDiscovery(cid, _name(name), universes, page, last_page)
