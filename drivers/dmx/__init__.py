"""DMX: Art-Net 4, sACN (E1.31) and ENTTEC DMX USB Pro — outputs, inputs with merging, and
fixture rendering. See docs/interfaces/dmx.md.

Three parts, as every Flytower driver (STYLE.md):

- wire formats, pure and fuzzed: ``artnet``, ``sacn``, ``enttec`` (one ``DmxProtocolError``);
- connections that own their socket or serial fd as async context managers: ``output``
  (``ArtNetOutput``, ``SacnOutput``, ``EnttecProOutput``, the ``DmxOutputs`` router) and
  ``input`` (``ArtNetInput``, ``SacnInput``);
- supervision folded into them: health and counters through ``drivers.base.HealthTracker``,
  keep-alive and discovery on a tick task, ENTTEC reopening with ``Backoff``.

``merge`` (per-universe priority + HTP merge) and ``fixture`` (point values <-> channel bytes)
are pure. The fixed-rate output engine with fades belongs to controller/, not here.
"""

from drivers.dmx.errors import DmxProtocolError, UnsupportedPacket
from drivers.dmx.fixture import FixtureError, read, render
from drivers.dmx.input import ArtNetInput, SacnInput
from drivers.dmx.merge import ARTNET_PRIORITY, Merger
from drivers.dmx.output import (
    ArtNetNode,
    ArtNetOutput,
    DmxOutput,
    DmxOutputs,
    EnttecProOutput,
    SacnOutput,
)

__all__ = [
    "ARTNET_PRIORITY",
    "ArtNetInput",
    "ArtNetNode",
    "ArtNetOutput",
    "DmxOutput",
    "DmxOutputs",
    "DmxProtocolError",
    "EnttecProOutput",
    "FixtureError",
    "Merger",
    "SacnInput",
    "SacnOutput",
    "UnsupportedPacket",
    "read",
    "render",
]
