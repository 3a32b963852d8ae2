"""The lighting engine's one exception."""

from __future__ import annotations


class LightingError(ValueError):
    """A request the lighting engine refuses: unknown fixture/attribute, bad value or time."""
