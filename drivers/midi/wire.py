"""MIDI byte-stream parsing and MIDI Time Code (MTC) assembly (pure, no I/O).

``MidiParser`` turns any chunking of a raw MIDI byte stream into messages, the way a receiver
must (MIDI 1.0 specification): real-time bytes (0xF8..0xFF) may appear anywhere, even inside
another message or a SysEx, and are reported on their own; channel messages may use running
status (data bytes after a channel status repeat it); system common messages cancel running
status; a SysEx runs from 0xF0 to 0xF7, and any other status byte ends it early (counted as
malformed). Data bytes with no status to belong to, undefined status bytes (0xF4, 0xF5, 0xF9,
0xFD) and over-long SysEx are counted and skipped: nothing a sender does raises.

``MtcDecoder`` reads MTC from those messages:

- quarter frames ``F1 0nnn dddd``: piece n (0..7) carries a nibble of frames, seconds, minutes
  and hours + rate, low nibble first. Eight pieces, sent a quarter frame apart, carry one
  timecode, so a complete time arrives every 2 frames. The label assembled is the time at which
  piece 0 was sent; piece 7 arrives 7 quarter frames later, so at its arrival the source is at
  the label + ``QUARTER_FRAME_OFFSET`` (1.75) frames, which ``MtcTime.offset_frames`` says.
  Pieces must arrive in order 0..7; a gap or reverse play restarts assembly at the next
  piece 0 (counted in ``resyncs``).
- full frame ``F0 7F <device> 01 01 hh mm ss ff F7`` (hh = 0rrhhhhh): the source located to
  that time and is not running (``MtcTime.full_frame``).

Values out of range (hours > 23, minutes or seconds > 59, frames beyond the rate) are counted
in ``errors`` with the reason in ``last_error``.
"""

from __future__ import annotations

from dataclasses import dataclass

QUARTER_FRAME = 0xF1
SYSEX_START = 0xF0
SYSEX_END = 0xF7
MAX_SYSEX = 256  # bytes between F0 and F7; longer ones are dropped
QUARTER_FRAME_OFFSET = 1.75  # frames between piece 0's label and piece 7's arrival
RATE_FPS = (24, 25, 30, 30)  # by rate code: 24, 25, 29.97 drop-frame, 30 (labels per second)
_SYSTEM_COMMON_DATA = {0xF1: 1, 0xF2: 2, 0xF3: 1, 0xF6: 0}
_UNDEFINED = frozenset((0xF4, 0xF5, 0xF9, 0xFD))


@dataclass(frozen=True, slots=True)
class MidiMessage:
    """One complete message: ``status`` and its data bytes (SysEx: the bytes between F0/F7)."""

    status: int
    data: bytes = b""


@dataclass(slots=True)
class MidiStats:
    bytes: int = 0
    messages: int = 0
    errors: int = 0
    last_error: str = ""

    def error(self, reason: str) -> None:
        self.errors += 1
        self.last_error = reason


def _channel_data_length(status: int) -> int:
    return 1 if status & 0xF0 in (0xC0, 0xD0) else 2


class MidiParser:
    """Incremental MIDI 1.0 stream parser; keep one per input stream."""

    def __init__(self, stats: MidiStats | None = None) -> None:
        self.stats = stats or MidiStats()
        self._status = 0  # status of the message being collected (0: none)
        self._running = 0  # running status (channel messages only)
        self._need = 0
        self._data = bytearray()
        self._sysex: bytearray | None = None
        self._sysex_overflow = False

    def feed(self, chunk: bytes) -> list[MidiMessage]:
        out: list[MidiMessage] = []
        self.stats.bytes += len(chunk)
        for byte in chunk:
            if byte >= 0xF8:  # real-time: anywhere, changes nothing else
                if byte in _UNDEFINED:
                    self.stats.error(f"undefined real-time byte 0x{byte:02X}")
                else:
                    out.append(MidiMessage(byte))
            elif byte & 0x80:
                self._status_byte(byte, out)
            elif self._sysex is not None:
                if len(self._sysex) >= MAX_SYSEX:
                    self._sysex_overflow = True
                else:
                    self._sysex.append(byte)
            else:
                self._data_byte(byte, out)
        self.stats.messages += len(out)
        return out

    def _status_byte(self, byte: int, out: list[MidiMessage]) -> None:
        if self._sysex is not None:
            if byte == SYSEX_END:
                if self._sysex_overflow:
                    self.stats.error(f"SysEx longer than {MAX_SYSEX} bytes dropped")
                else:
                    out.append(MidiMessage(SYSEX_START, bytes(self._sysex)))
                self._sysex = None
                return
            self.stats.error(f"SysEx ended by status 0x{byte:02X} before F7")
            self._sysex = None
        if self._status and self._data:
            self.stats.error(f"message 0x{self._status:02X} cut short by 0x{byte:02X}")
        self._data.clear()
        self._status = 0
        if byte < 0xF0:  # channel voice/mode message: becomes the running status
            self._status = self._running = byte
            self._need = _channel_data_length(byte)
            return
        self._running = 0  # system common and SysEx cancel running status
        if byte == SYSEX_START:
            self._sysex = bytearray()
            self._sysex_overflow = False
        elif byte == SYSEX_END:
            self.stats.error("F7 without a SysEx")
        elif byte in _UNDEFINED:
            self.stats.error(f"undefined status byte 0x{byte:02X}")
        else:
            need = _SYSTEM_COMMON_DATA[byte]
            if need == 0:
                out.append(MidiMessage(byte))
            else:
                self._status, self._need = byte, need

    def _data_byte(self, byte: int, out: list[MidiMessage]) -> None:
        if not self._status:
            if not self._running:
                self.stats.error(f"data byte 0x{byte:02X} without a status")
                return
            self._status, self._need = self._running, _channel_data_length(self._running)
        self._data.append(byte)
        if len(self._data) == self._need:
            out.append(MidiMessage(self._status, bytes(self._data)))
            self._data.clear()
            self._status = 0  # the next data byte uses running status, if any


@dataclass(frozen=True, slots=True)
class MtcTime:
    """A timecode read from MTC: raw fields and the rate code (0 24, 1 25, 2 29.97 DF, 3 30)."""

    hours: int
    minutes: int
    seconds: int
    frames: int
    rate_code: int
    full_frame: bool  # a located, stopped position; otherwise running quarter frames
    offset_frames: float  # add to the label for the position at arrival

    def __str__(self) -> str:
        sep = ";" if self.rate_code == 2 else ":"
        return f"{self.hours:02d}:{self.minutes:02d}:{self.seconds:02d}{sep}{self.frames:02d}"


def check_time(hours: int, minutes: int, seconds: int, frames: int, rate_code: int) -> str:
    """Why these MTC fields are out of range, or "" when they are valid."""
    if hours > 23 or minutes > 59 or seconds > 59:
        return f"time {hours}:{minutes}:{seconds} out of range"
    if frames >= RATE_FPS[rate_code]:
        return f"frame {frames} out of range at rate code {rate_code}"
    return ""


class MtcDecoder:
    """Assembles MTC times from parsed MIDI messages."""

    def __init__(self, stats: MidiStats | None = None) -> None:
        self.stats = stats or MidiStats()
        self.resyncs = 0
        self.ignored = 0
        self._pieces: list[int] = []

    def feed(self, message: MidiMessage) -> MtcTime | None:
        if message.status == QUARTER_FRAME:
            return self._quarter(message.data[0])
        if message.status == SYSEX_START:
            return self._sysex(message.data)
        return None

    def _quarter(self, value: int) -> MtcTime | None:
        piece, nibble = value >> 4, value & 0x0F
        if piece != len(self._pieces):
            if self._pieces:
                self.resyncs += 1
            self._pieces = []
            if piece != 0:
                return None
        self._pieces.append(nibble)
        if len(self._pieces) < 8:
            return None
        p = self._pieces
        self._pieces = []
        frames = p[0] | (p[1] & 0x1) << 4
        seconds = p[2] | (p[3] & 0x3) << 4
        minutes = p[4] | (p[5] & 0x3) << 4
        hours = p[6] | (p[7] & 0x1) << 4
        rate = (p[7] >> 1) & 0x3
        return self._checked(hours, minutes, seconds, frames, rate, False)

    def _sysex(self, payload: bytes) -> MtcTime | None:
        if len(payload) < 4 or payload[0] != 0x7F or payload[2:4] != b"\x01\x01":
            self.ignored += 1  # another SysEx: not ours
            return None
        if len(payload) != 8:
            self.stats.error(f"MTC full frame of {len(payload)} bytes, expected 8")
            return None
        hr, minutes, seconds, frames = payload[4:8]
        self._pieces = []
        return self._checked(hr & 0x1F, minutes, seconds, frames, (hr >> 5) & 0x3, True)

    def _checked(self, h: int, m: int, s: int, f: int, rate: int, full: bool) -> MtcTime | None:
        reason = check_time(h, m, s, f, rate)
        if reason:
            self.stats.error(f"MTC {'full frame' if full else 'quarter frames'}: {reason}")
            return None
        return MtcTime(h, m, s, f, rate, full, 0.0 if full else QUARTER_FRAME_OFFSET)


class MtcReader:
    """Bytes in, MTC times out: a ``MidiParser`` and an ``MtcDecoder`` sharing one stats."""

    def __init__(self) -> None:
        self.stats = MidiStats()
        self.parser = MidiParser(self.stats)
        self.decoder = MtcDecoder(self.stats)

    def feed(self, chunk: bytes) -> list[MtcTime]:
        out = []
        for message in self.parser.feed(chunk):
            time = self.decoder.feed(message)
            if time is not None:
                out.append(time)
        return out


def quarter_frames(
    hours: int, minutes: int, seconds: int, frames: int, rate_code: int
) -> list[bytes]:
    """The eight quarter-frame messages (``F1 nd``) carrying one time, piece 0 first."""
    values = (
        frames & 0xF,
        frames >> 4,
        seconds & 0xF,
        seconds >> 4,
        minutes & 0xF,
        minutes >> 4,
        hours & 0xF,
        (hours >> 4) | rate_code << 1,
    )
    return [bytes((QUARTER_FRAME, piece << 4 | v)) for piece, v in enumerate(values)]


def full_frame(
    hours: int, minutes: int, seconds: int, frames: int, rate_code: int, device: int = 0x7F
) -> bytes:
    """The full-frame SysEx message (a locate) for one time."""
    return bytes(
        (0xF0, 0x7F, device, 0x01, 0x01, rate_code << 5 | hours, minutes, seconds, frames, 0xF7)
    )
