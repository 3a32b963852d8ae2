"""The cue engine (docs/playback.md): runs a ``controller.show.Show``.

- ``engine``: ``Playback`` — GO, GO to cue, back, stop, pause/resume, panic, standby,
  release; follow, auto-continue, parts, delays, waits; snapshot and change notifications;
  every command and scheduled start journalled;
- ``ports``: the protocols it drives (``Lighting``, ``Devices``, ``Audio``,
  ``TimecodeSource``) and ``Machinery``, the choke point of every machinery command;
- ``lighting``: ``EngineLighting``, the ``Lighting`` of ``controller.lighting``;
- ``clock``: ``LoopClock`` (the service) and ``VirtualClock`` (tests).
"""

from .clock import Clock, LoopClock, VirtualClock
from .engine import Playback, PlaybackConfig
from .lighting import EngineLighting
from .ports import (
    Audio,
    Devices,
    Incomplete,
    Lighting,
    Machinery,
    NotFound,
    PlaybackError,
    PointValue,
    Refused,
    TimecodeSource,
    Unavailable,
)

__all__ = [
    "Audio",
    "Clock",
    "Devices",
    "EngineLighting",
    "Incomplete",
    "Lighting",
    "LoopClock",
    "Machinery",
    "NotFound",
    "Playback",
    "PlaybackConfig",
    "PlaybackError",
    "PointValue",
    "Refused",
    "TimecodeSource",
    "Unavailable",
    "VirtualClock",
]
