"""The lighting output engine (docs/lighting.md).

- ``patch``: fixtures from DMX profiles flattened into per-attribute arrays, and groups;
- ``curves``: fade curves (linear, S, log) for whole arrays;
- ``engine``: sources with priorities, HTP/LTP merge, fades, tracking and release, masters,
  DMX input from a console, and the fixed-rate loop that sends frames through
  ``drivers.dmx.DmxOutputs``.
"""

from controller.lighting.curves import CURVES
from controller.lighting.engine import (
    DEFAULT_RATE_HZ,
    FrameStats,
    InputSource,
    LightingEngine,
    Source,
)
from controller.lighting.errors import LightingError
from controller.lighting.patch import Patch, PatchedFixture

__all__ = [
    "CURVES",
    "DEFAULT_RATE_HZ",
    "FrameStats",
    "InputSource",
    "LightingEngine",
    "LightingError",
    "Patch",
    "PatchedFixture",
    "Source",
]
