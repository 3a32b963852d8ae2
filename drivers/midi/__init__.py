"""MIDI input: a MIDI 1.0 byte-stream parser, MIDI Time Code, and raw device input.

- ``wire``: pure and fuzzed: ``MidiParser`` (running status, real-time bytes anywhere, SysEx),
  ``MtcDecoder`` (quarter frames and full-frame SysEx) and encoders used by tests and tools;
- ``rawmidi``: ``MtcInput`` reads a character device (ALSA rawmidi ``/dev/snd/midiC*D*``, a
  serial MIDI interface, a pty) as an async context manager, reopening with backoff.

See docs/interfaces/timecode.md. The chase clock that consumes the times lives in controller/.
"""

from drivers.midi.rawmidi import MtcInput
from drivers.midi.wire import MidiMessage, MidiParser, MidiStats, MtcDecoder, MtcReader, MtcTime

__all__ = [
    "MidiMessage",
    "MidiParser",
    "MidiStats",
    "MtcDecoder",
    "MtcInput",
    "MtcReader",
    "MtcTime",
]
