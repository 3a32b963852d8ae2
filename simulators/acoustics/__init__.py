"""The acoustic room (issue 4, part 4): a hall that is a JACK client.

Whatever Flytower plays into the room's inputs (loudspeaker feeds) comes back on its outputs
(microphones) convolved with the room's impulse responses, plus background noise. The parts:

- ``room``: the room model (pyroomacoustics, or a measured WAV) -> one IR per speaker x mic,
  with occupancy and open doors, and the on-disk IR cache;
- ``truth``: ground truth measured from the IRs (T20, T30, EDT, C80, D50 per octave band);
- ``convolver``: realtime uniformly partitioned convolution with click-free IR changes, and noise;
- ``jack``: the JACK client (a child process owning PortAudio) and its port patching;
- ``family``: ``RoomFamily``, the venue declaration, faults and the IR-following task.

docs/interfaces/acoustic-room.md is the user's page.
"""

from simulators.acoustics.family import RoomDevice, RoomFamily

__all__ = ["RoomDevice", "RoomFamily"]
