"""ArtTimeCode codec and the MIDI / MTC parser: exact layouts and hostile input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.dmx import artnet
from drivers.dmx.errors import DmxProtocolError, UnsupportedPacket
from drivers.midi.wire import (
    MidiMessage,
    MidiParser,
    MtcReader,
    MtcTime,
    full_frame,
    quarter_frames,
)

# Built by hand from the Art-Net 4 spec: ID, OpCode 0x9700 (lo, hi), ProtVer 0/14, Filler1,
# StreamId, Frames, Seconds, Minutes, Hours, Type.
SPEC_PACKET = b"Art-Net\x00" + bytes([0x00, 0x97, 0, 14, 0, 2, 24, 59, 30, 23, 1])


def test_arttimecode_layout() -> None:
    tc = artnet.decode_timecode(SPEC_PACKET)
    assert tc == artnet.ArtTimeCode(23, 30, 59, 24, type=1, stream_id=2)
    assert tc.encode() == SPEC_PACKET
    assert artnet.opcode(SPEC_PACKET) == artnet.OP_TIMECODE


@given(
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 3),
    st.integers(0, 29),
    st.integers(0, 255),
)
def test_arttimecode_round_trip(h: int, m: int, s: int, kind: int, f: int, stream: int) -> None:
    f %= artnet.TIMECODE_FPS[kind]
    packet = artnet.ArtTimeCode(h, m, s, f, kind, stream)
    assert artnet.decode_timecode(packet.encode()) == packet


def _with(offset: int, value: int) -> bytes:
    raw = bytearray(SPEC_PACKET)
    raw[offset] = value
    return bytes(raw)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (SPEC_PACKET[:18], "19 bytes"),
        (SPEC_PACKET + b"\x00", "19 bytes"),
        (_with(11, 13), "version 13"),
        (_with(18, 4), "Type 4"),
        (_with(17, 24), "out of range"),
        (_with(16, 60), "out of range"),
        (_with(15, 60), "out of range"),
        (_with(14, 25), "Frames 25"),
        (b"Art-Nex\x00" + SPEC_PACKET[8:], "not Art-Net"),
        (SPEC_PACKET[:5], "truncated"),
    ],
)
def test_arttimecode_refuses(raw: bytes, match: str) -> None:
    with pytest.raises(DmxProtocolError, match=match):
        artnet.decode_timecode(raw)


def test_arttimecode_other_opcode_and_generic_decode() -> None:
    with pytest.raises(UnsupportedPacket):
        artnet.decode_timecode(artnet.ArtSync().encode())
    with pytest.raises(UnsupportedPacket):  # the DMX decoder still ignores it quietly
        artnet.decode(SPEC_PACKET)


@given(st.binary(max_size=40))
def test_arttimecode_fuzz_never_crashes(raw: bytes) -> None:
    with contextlib.suppress(DmxProtocolError):
        artnet.decode_timecode(b"Art-Net\x00\x00\x97" + raw)


# -- MIDI ------------------------------------------------------------------------------------
def test_running_status_and_realtime_anywhere() -> None:
    p = MidiParser()
    stream = bytes([0x90, 60, 0xF8, 100, 62, 0xFA, 101, 0xF1, 0x25, 0xC3, 5, 6])
    msgs = p.feed(stream)
    assert msgs == [
        MidiMessage(0xF8),
        MidiMessage(0x90, bytes([60, 100])),
        MidiMessage(0xFA),
        MidiMessage(0x90, bytes([62, 101])),  # running status
        MidiMessage(0xF1, bytes([0x25])),
        MidiMessage(0xC3, bytes([5])),
        MidiMessage(0xC3, bytes([6])),
    ]
    assert p.stats.errors == 0


def test_system_common_cancels_running_status_and_garbage_counted() -> None:
    p = MidiParser()
    msgs = p.feed(bytes([0x90, 60, 100, 0xF1, 0x10, 61, 0xF4, 0xF7, 0x80, 1]))
    assert msgs[-1] == MidiMessage(0xF1, b"\x10")
    assert p.stats.errors == 3  # 61 without status, undefined F4, F7 without SysEx
    assert "F7" in p.stats.last_error or "status" in p.stats.last_error


def test_sysex_with_realtime_inside_and_cut_short() -> None:
    p = MidiParser()
    msgs = p.feed(bytes([0xF0, 0x7F, 0xF8, 0x7F, 0xF7]))
    assert msgs == [MidiMessage(0xF8), MidiMessage(0xF0, b"\x7f\x7f")]
    p.feed(bytes([0xF0, 1, 2, 0x90, 60, 1]))
    assert p.stats.errors == 1 and "before F7" in p.stats.last_error
    p.feed(bytes([0xF0]) + bytes(300) + bytes([0xF7]))
    assert "longer" in p.stats.last_error


def test_mtc_quarter_frames_assemble_every_two_frames() -> None:
    reader = MtcReader()
    got: list[MtcTime] = []
    # Start mid-stream (pieces 5..7 of an earlier time are ignored), realtime bytes between.
    for chunk in quarter_frames(1, 2, 3, 4, 1)[5:]:
        got += reader.feed(chunk)
    assert got == []
    for chunk in quarter_frames(1, 2, 3, 4, 1):
        got += reader.feed(chunk + b"\xf8")
    assert got == [MtcTime(1, 2, 3, 4, 1, False, 1.75)]
    assert reader.stats.errors == 0


def test_mtc_byte_at_a_time_and_full_frame() -> None:
    reader = MtcReader()
    stream = b"".join(quarter_frames(23, 59, 59, 29, 3)) + full_frame(10, 0, 0, 0, 2, device=3)
    got = [t for byte in stream for t in reader.feed(bytes([byte]))]
    assert got == [
        MtcTime(23, 59, 59, 29, 3, False, 1.75),
        MtcTime(10, 0, 0, 0, 2, True, 0.0),
    ]
    assert str(got[1]) == "10:00:00;00"


def test_mtc_out_of_order_and_out_of_range() -> None:
    reader = MtcReader()
    pieces = quarter_frames(1, 0, 0, 0, 1)
    assert reader.feed(b"".join(pieces[:4] + pieces[5:])) == []  # piece 4 missing
    assert reader.decoder.resyncs == 1
    assert reader.feed(b"".join(quarter_frames(1, 0, 0, 27, 1))) == []  # frame 27 at 25 fps
    assert reader.feed(full_frame(25, 0, 0, 0, 0)) == []
    assert reader.feed(bytes([0xF0, 0x7F, 0x7F, 0x01, 0x01, 1, 2, 0xF7])) == []  # short
    assert reader.stats.errors == 3
    assert reader.feed(bytes([0xF0, 0x7E, 0x7F, 0x06, 0x01, 0xF7])) == []  # another SysEx
    assert reader.decoder.ignored == 1


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_midi_garbage_never_crashes(chunks: list[bytes]) -> None:
    reader = MtcReader()
    for chunk in chunks:
        for t in reader.feed(chunk):
            assert 0 <= t.hours <= 23 and 0 <= t.frames < 30
    # And the stream recovers: a clean time after any garbage is read (after an F7 to end
    # a pending SysEx; the quarter frames restart at piece 0).
    assert reader.feed(b"\xf7" + b"".join(quarter_frames(1, 2, 3, 4, 1)))[-1].hours == 1
