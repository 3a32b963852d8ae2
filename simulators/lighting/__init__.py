"""DMX receivers: simulated lighting fixtures that listen to Art-Net 4 and sACN (E1.31).

Written from docs/interfaces/dmx.md and the fixture pages in docs/interfaces/devices/
(led_par_rgbw, moving_head, dimmer_rack); nothing here imports Flytower's drivers.

- ``wire``: the packets a node decodes (ArtDmx, ArtPoll, E1.31 data) and the ArtPollReply it
  sends, as pure functions with one documented error (``MalformedPacket``);
- ``receiver``: per-universe sources, sequence checks, the priority/HTP merge, frame-rate and
  jitter statistics, and the datagram endpoint of one listening address;
- ``fixtures``: what each fixture does with its channels, decoded for every fixture of a model at
  once, with the DMX-loss behaviour and the faults of a fixture;
- ``family``: ``DmxFamily``, which listens where the venue's ``[[dmx.outputs]]`` send.
"""

from simulators.lighting.family import DmxFamily

__all__ = ["DmxFamily"]
