"""Venue configurations (docs/configurations.md): named whole-venue setups — machinery
positions, a lighting state, an acoustic mode — and the safe, journalled switch between them.

- ``model``: the ``[configurations.NAME]`` tables and ``[configuration_settings]`` of a venue
  file, ``AxisInfo`` from a device profile, and the checks against the venue;
- ``sequencer``: ``Switcher``, which runs a switch in phases over the cue engine's ports.
"""

from .model import (
    AxisInfo,
    AxisMove,
    Configuration,
    ConfigurationSettings,
    axis_info,
    check_configurations,
)
from .sequencer import LAYER, NO_SOUNDFIELD, Switcher, estimate_s

__all__ = [
    "LAYER",
    "NO_SOUNDFIELD",
    "AxisInfo",
    "AxisMove",
    "Configuration",
    "ConfigurationSettings",
    "Switcher",
    "axis_info",
    "check_configurations",
    "estimate_s",
]
