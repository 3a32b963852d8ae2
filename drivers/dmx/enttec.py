"""ENTTEC DMX USB Pro wire format: the widget's serial message framing (pure, no I/O).

Every message is ``0x7E, label, length LSB, length MSB, payload, 0xE7`` ("DMX USB Pro API
Specification" 1.44). Flytower uses two labels: 6, "Output Only Send DMX Packet Request"
(payload: START code + 24..512 slots), and 5, "Received DMX Packet" (payload: a status byte,
then the START code and slots). The widget keeps re-sending the last frame on the DMX line by
itself, so the host only writes when something changes.

``decode_message`` checks one complete message; ``StreamDecoder`` cuts a serial byte stream
into messages, skipping and counting garbage, because a serial line can start mid-message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.dmx.errors import DmxProtocolError

START_OF_MESSAGE = 0x7E
END_OF_MESSAGE = 0xE7
LABEL_RECEIVED_DMX = 5
LABEL_SEND_DMX = 6
MAX_PAYLOAD = 600  # the API's largest message
MIN_SEND_SLOTS = 24  # the widget refuses shorter output frames
STATUS_QUEUE_OVERFLOW = 0x01
STATUS_OVERRUN = 0x02


@dataclass(frozen=True, slots=True)
class EnttecMessage:
    label: int
    payload: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.label <= 0xFF:
            raise DmxProtocolError(f"label {self.label} does not fit in a byte")
        if len(self.payload) > MAX_PAYLOAD:
            raise DmxProtocolError(f"payload {len(self.payload)} bytes, max {MAX_PAYLOAD}")

    def encode(self) -> bytes:
        n = len(self.payload)
        return bytes((START_OF_MESSAGE, self.label, n & 0xFF, n >> 8)) + self.payload + b"\xe7"


def decode_message(frame: bytes) -> EnttecMessage:
    """Decode exactly one message; DmxProtocolError says what is wrong."""
    if len(frame) < 5:
        raise DmxProtocolError(f"ENTTEC message truncated: {len(frame)} bytes")
    if frame[0] != START_OF_MESSAGE:
        raise DmxProtocolError(f"ENTTEC message starts with 0x{frame[0]:02x}, not 0x7e")
    n = frame[2] | frame[3] << 8
    if n > MAX_PAYLOAD:
        raise DmxProtocolError(f"ENTTEC payload length {n} exceeds {MAX_PAYLOAD}")
    if len(frame) != n + 5:
        raise DmxProtocolError(f"ENTTEC length field {n} but {len(frame) - 5} payload bytes")
    if frame[-1] != END_OF_MESSAGE:
        raise DmxProtocolError(f"ENTTEC message ends with 0x{frame[-1]:02x}, not 0xe7")
    return EnttecMessage(frame[1], bytes(frame[4:-1]))


@dataclass(frozen=True, slots=True)
class SendDmx:
    """Label 6: a DMX frame for the widget to output."""

    data: bytes
    start_code: int = 0

    def __post_init__(self) -> None:
        if not MIN_SEND_SLOTS <= len(self.data) <= 512:
            raise DmxProtocolError(
                f"send DMX carries {MIN_SEND_SLOTS}..512 slots, got {len(self.data)}"
            )
        if not 0 <= self.start_code <= 0xFF:
            raise DmxProtocolError("START code is a byte")

    def message(self) -> EnttecMessage:
        return EnttecMessage(LABEL_SEND_DMX, bytes((self.start_code,)) + self.data)

    @classmethod
    def from_message(cls, msg: EnttecMessage) -> SendDmx:
        if msg.label != LABEL_SEND_DMX:
            raise DmxProtocolError(f"label {msg.label} is not send DMX ({LABEL_SEND_DMX})")
        if not msg.payload:
            raise DmxProtocolError("send DMX without a START code")
        return cls(msg.payload[1:], msg.payload[0])


@dataclass(frozen=True, slots=True)
class ReceivedDmx:
    """Label 5: a DMX frame the widget received on its input. ``status`` bit 0: the widget's
    queue overflowed; bit 1: the receiver overran (frames were lost)."""

    status: int
    data: bytes
    start_code: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.status <= 0xFF or not 0 <= self.start_code <= 0xFF:
            raise DmxProtocolError("status and START code are bytes")
        if len(self.data) > 512:
            raise DmxProtocolError(f"received DMX has {len(self.data)} slots, max 512")

    def message(self) -> EnttecMessage:
        return EnttecMessage(LABEL_RECEIVED_DMX, bytes((self.status, self.start_code)) + self.data)

    @classmethod
    def from_message(cls, msg: EnttecMessage) -> ReceivedDmx:
        if msg.label != LABEL_RECEIVED_DMX:
            raise DmxProtocolError(f"label {msg.label} is not received DMX ({LABEL_RECEIVED_DMX})")
        if len(msg.payload) < 2:
            raise DmxProtocolError("received DMX without status and START code")
        return cls(msg.payload[0], msg.payload[2:], msg.payload[1])


@dataclass
class StreamDecoder:
    """Cuts a serial byte stream into messages. Bytes that cannot start or finish a valid
    message are dropped and counted in ``dropped``; decoding resumes at the next 0x7E."""

    dropped: int = 0
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> list[EnttecMessage]:
        self._buffer += chunk
        out: list[EnttecMessage] = []
        buf = self._buffer
        while buf:
            start = buf.find(START_OF_MESSAGE)
            if start < 0:
                self.dropped += len(buf)
                buf.clear()
                break
            if start:
                self.dropped += start
                del buf[:start]
            if len(buf) < 4:
                break
            n = buf[2] | buf[3] << 8
            if n > MAX_PAYLOAD:
                self.dropped += 1  # not a real start byte: resynchronise past it
                del buf[:1]
                continue
            if len(buf) < n + 5:
                break
            if buf[n + 4] != END_OF_MESSAGE:
                self.dropped += 1
                del buf[:1]
                continue
            out.append(EnttecMessage(buf[1], bytes(buf[4 : n + 4])))
            del buf[: n + 5]
        return out
