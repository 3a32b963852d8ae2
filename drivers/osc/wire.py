"""OSC wire format: packets, SLIP framing and the QLab-style JSON reply. Pure functions only.

What python-osc already does well is used as is: ``OscMessageBuilder`` / ``OscBundleBuilder``
build packets, ``OscMessage`` parses a message's arguments, ``slip.encode`` frames a packet the
OSC 1.1 way (RFC 1055 with an END byte on both sides) and ``slip.decode`` un-escapes one frame.

Written here, because python-osc lacks it or is unsafe on hostile input:

- ``SlipDecoder``: an incremental decoder for a TCP byte stream, with a maximum frame size.
  Frames with an illegal escape are dropped and counted (``malformed``); frames larger than
  ``max_frame`` are dropped and counted (``oversized``) without ever buffering more than twice
  that many bytes.
- ``decode_packet``: walks bundles itself. python-osc's ``OscBundle`` loops for ever on an
  element whose size is negative (it steps backwards onto the same size field) and recurses
  without a limit, so a single datagram could hang or crash the receiver. Here every element
  size is checked (positive, a multiple of 4, inside its bundle), nesting is capped at
  ``MAX_BUNDLE_DEPTH``, and a message whose type tags python-osc does not know is refused
  (python-osc would log and skip the tag, silently shifting every later argument).

Every decoding failure raises ``OscDecodeError`` (a ``ValueError``) and nothing else.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pythonosc import slip
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message import OscMessage, ParseError
from pythonosc.osc_message_builder import BuildError, OscMessageBuilder
from pythonosc.parsing import osc_types

MAX_FRAME_BYTES = 65536
MAX_BUNDLE_DEPTH = 8
REPLY_PREFIX = "/reply"
BUNDLE_PREFIX = b"#bundle\x00"
# Type tags python-osc parses; anything else has an unknown width and makes the message unusable.
KNOWN_TYPE_TAGS = frozenset("ihfdsbrmtTFN[]")
_NTP_IMMEDIATELY = 1
_NTP_UNIX_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)

Status = Literal["ok", "error", "denied"]
STATUSES: tuple[Status, ...] = ("ok", "error", "denied")


class OscDecodeError(ValueError):
    """Bytes that are not a well-formed OSC packet (or SLIP frame); the message says why."""


class OscEncodeError(ValueError):
    """Arguments that cannot be put in an OSC message (unsupported type, out of range)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded OSC message. ``timetag`` is when it is due, in Unix seconds (wall clock)
    from its enclosing bundle; None means immediately (a bare message or an immediate bundle)."""

    address: str
    args: tuple[Any, ...]
    timetag: float | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A QLab-style reply: ``/reply{address}`` with one JSON string argument."""

    address: str
    status: Status
    data: Any = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --- SLIP (OSC 1.1 stream framing) ------------------------------------------------------------


def slip_encode(packet: bytes) -> bytes:
    """Frame one packet for a stream: END, the escaped packet, END (OSC 1.1 double-END)."""
    return bytes(slip.encode(packet))


class SlipDecoder:
    """Splits a byte stream into SLIP frames, incrementally; state survives between ``feed``s.

    Empty frames (back-to-back END bytes, as the double-END framing produces) are skipped.
    A frame whose escaped form passes ``2 * max_frame`` bytes is oversized whatever it would
    decode to, so the buffer is dropped at once and the rest of the frame skipped up to its END.
    """

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self.malformed = 0
        self.oversized = 0
        self._buf = bytearray()
        self._skipping = False

    @property
    def dropped(self) -> int:
        return self.malformed + self.oversized

    def feed(self, data: bytes) -> list[bytes]:
        frames: list[bytes] = []
        start = 0
        while True:
            end = data.find(slip.END, start)
            if end < 0:
                self._append(data[start:])
                return frames
            self._append(data[start:end])
            self._finish(frames)
            start = end + 1

    def _append(self, piece: bytes) -> None:
        if self._skipping or not piece:
            return
        self._buf += piece
        if len(self._buf) > 2 * self.max_frame:
            self.oversized += 1
            self._buf.clear()
            self._skipping = True

    def _finish(self, frames: list[bytes]) -> None:
        if self._skipping:
            self._skipping = False
            return
        if not self._buf:
            return
        escaped = bytes(self._buf)
        self._buf.clear()
        try:
            frame = bytes(slip.decode(escaped))
        except slip.ProtocolError:
            self.malformed += 1
            return
        if len(frame) > self.max_frame:
            self.oversized += 1
            return
        frames.append(frame)


# --- packets ----------------------------------------------------------------------------------


def decode_packet(data: bytes) -> list[Message]:
    """All messages of a packet (a message or a bundle, nested or not), in packet order.

    A contained bundle's time is the later of its own timetag and its parent's (the spec
    requires it to be no earlier; a sender that breaks the rule gets the parent's time).
    """
    out: list[Message] = []
    _decode_into(data, None, 0, out)
    return out


def _decode_into(data: bytes, parent_time: float | None, depth: int, out: list[Message]) -> None:
    if data.startswith(BUNDLE_PREFIX):
        if depth >= MAX_BUNDLE_DEPTH:
            raise OscDecodeError(f"bundles nested deeper than {MAX_BUNDLE_DEPTH}")
        _decode_bundle(data, parent_time, depth, out)
    elif data.startswith(b"/"):
        address, args = decode_message(data)
        out.append(Message(address, args, parent_time))
    else:
        raise OscDecodeError("neither an OSC message ('/') nor a bundle ('#bundle')")


def _decode_bundle(data: bytes, parent_time: float | None, depth: int, out: list[Message]) -> None:
    if len(data) < 16 or len(data) % 4:
        raise OscDecodeError("bundle shorter than its header or not a multiple of 4 bytes")
    (tag,) = struct.unpack_from(">Q", data, 8)
    own = None if tag == _NTP_IMMEDIATELY else tag / 2**32 - _NTP_UNIX_OFFSET
    when = own if parent_time is None else parent_time if own is None else max(own, parent_time)
    index = 16
    while index < len(data):
        if index + 4 > len(data):
            raise OscDecodeError("bundle element size truncated")
        (size,) = struct.unpack_from(">i", data, index)
        index += 4
        if size <= 0 or size % 4 or index + size > len(data):
            raise OscDecodeError(f"bundle element size {size} is not valid here")
        _decode_into(data[index : index + size], when, depth + 1, out)
        index += size


def decode_message(data: bytes) -> tuple[str, tuple[Any, ...]]:
    """The address and arguments of one OSC message (no bundle)."""
    if len(data) % 4:
        raise OscDecodeError("an OSC message is a multiple of 4 bytes")
    try:
        address, index = osc_types.get_string(data, 0)
        if index < len(data):
            tags, _ = osc_types.get_string(data, index)
            if not tags.startswith(","):
                raise OscDecodeError("type tag string does not start with ','")
            unknown = set(tags[1:]) - KNOWN_TYPE_TAGS
            if unknown:
                raise OscDecodeError(f"unsupported type tag(s) {''.join(sorted(unknown))!r}")
        args = tuple(OscMessage(data).params)
    except (osc_types.ParseError, ParseError, UnicodeDecodeError) as exc:
        raise OscDecodeError(f"malformed message: {exc}") from exc
    if not address.startswith("/") or not address.isprintable() or " " in address:
        raise OscDecodeError(f"illegal address {address!r}")
    return address, args


def encode_message(address: str, *args: Any) -> bytes:
    """One OSC message; argument types follow python-osc (int -> i, float -> f, str -> s,
    bool -> T/F, bytes -> b, None -> N)."""
    builder = OscMessageBuilder(address=address)
    try:
        for arg in args:
            builder.add_arg(arg)
        return bytes(builder.build().dgram)
    except (BuildError, ValueError, TypeError, OverflowError) as exc:
        raise OscEncodeError(f"{address}: {exc}") from exc


def encode_bundle(messages: Sequence[bytes], timetag: float | None = None) -> bytes:
    """A bundle of already-encoded messages or bundles, due at ``timetag`` (Unix seconds;
    None: immediately)."""
    builder = OscBundleBuilder(osc_types.IMMEDIATELY if timetag is None else timetag)  # type: ignore[arg-type]
    try:
        for packet in messages:
            builder.add_content(_parsed(packet))
        return bytes(builder.build().dgram)
    except Exception as exc:  # python-osc raises several unrelated types here
        raise OscEncodeError(f"bundle: {exc}") from exc


def _parsed(packet: bytes) -> OscBundle | OscMessage:
    # The bundle builder wants python-osc objects; it only reads ``size`` and ``dgram``.
    return OscBundle(packet) if packet.startswith(BUNDLE_PREFIX) else OscMessage(packet)


# --- replies ----------------------------------------------------------------------------------


def reply_address(address: str) -> str:
    return REPLY_PREFIX + address


def is_reply(address: str) -> bool:
    return address == REPLY_PREFIX or address.startswith(REPLY_PREFIX + "/")


def encode_reply(address: str, status: Status, data: Any = None) -> bytes:
    """``/reply{address}`` with one string: ``{"address", "status", "data"}`` as JSON.

    Raises ``OscEncodeError`` if ``data`` is not JSON (NaN and infinities included: JSON has
    no such numbers).
    """
    try:
        body = json.dumps(
            {"address": address, "status": status, "data": data},
            allow_nan=False,
            separators=(",", ":"),
        )
    except (TypeError, ValueError) as exc:
        raise OscEncodeError(f"reply data for {address} is not JSON: {exc}") from exc
    return encode_message(reply_address(address), body)


def decode_reply(address: str, args: tuple[Any, ...]) -> Reply:
    """The reply carried by a ``/reply/...`` message; ``OscDecodeError`` if it is not one."""
    if not is_reply(address) or len(args) != 1 or not isinstance(args[0], str):
        raise OscDecodeError(f"{address}: not a reply (one JSON string argument)")
    try:
        body = json.loads(args[0], parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise OscDecodeError(f"{address}: reply is not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("status") not in STATUSES:
        raise OscDecodeError(f"{address}: reply lacks a valid status")
    original = body.get("address")
    if not isinstance(original, str):
        original = address[len(REPLY_PREFIX) :]
    return Reply(original, body["status"], body.get("data"))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
