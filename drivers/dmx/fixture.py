"""Rendering fixture points to DMX channel bytes and back (pure; docs/interfaces/dmx.md).

A point's ``dmx`` wire gives its 1-based offset in the fixture footprint and its width (8 or
16 bits, coarse byte first). With both ``min`` and ``max`` the value maps linearly onto the
full DMX range (0..255 or 0..65535), rounded to the nearest step; without them the value is
the raw DMX value and must be a whole number in range. A bool is 0 or full. NaN, infinities
and values outside the range raise ``FixtureError`` instead of being clamped: a wrong cue
value should be seen, not silently limited.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from drivers.dmx.merge import Frame
from drivers.model import DmxTransport, DmxWire, PointSpec, Profile, Value, ValueType


class FixtureError(ValueError):
    """A point value that cannot become DMX (or a patch that does not fit the universe)."""


def _full(wire: DmxWire) -> int:
    return (1 << wire.bits) - 1


def _wire(point: PointSpec) -> DmxWire:
    if point.dmx is None:
        raise FixtureError(f"point '{point.name}' has no dmx wire")
    return point.dmx


def to_raw(point: PointSpec, value: Value) -> int:
    """The raw DMX value (0..255 or 0..65535) of one point value."""
    wire = _wire(point)
    full = _full(wire)
    if isinstance(value, bool):
        return full if value else 0
    if not isinstance(value, int | float):  # a str, None, or anything a JSON body can hold
        raise FixtureError(f"{point.name}: a DMX value is a number, not {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise FixtureError(f"{point.name}: {value} is not a finite number")
    if point.min is not None and point.max is not None:
        if reason := point.check_range(v):
            raise FixtureError(f"{point.name}: {reason}")
        span = point.max - point.min
        return 0 if span == 0 else round((v - point.min) / span * full)
    if v != int(v) or not 0 <= v <= full:
        raise FixtureError(f"{point.name}: raw DMX value must be a whole number 0..{full}, got {v}")
    return int(v)


def from_raw(point: PointSpec, raw: int) -> Value:
    """The point value of a raw DMX value (the inverse of ``to_raw``, up to rounding)."""
    wire = _wire(point)
    full = _full(wire)
    if not 0 <= raw <= full:
        raise FixtureError(f"{point.name}: raw value {raw} out of range 0..{full}")
    if point.dtype is ValueType.BOOL:
        return raw > full // 2
    if point.min is not None and point.max is not None:
        value = point.min + raw / full * (point.max - point.min)
        return round(value) if point.dtype is ValueType.INT else value
    return raw if point.dtype is ValueType.INT else float(raw)


def render(profile: Profile, values: Mapping[str, Value]) -> bytes:
    """The fixture's footprint as channel bytes: given values, defaults for the rest."""
    if profile.footprint is None:
        raise FixtureError(f"profile '{profile.id}' has no DMX footprint")
    unknown = sorted(set(values) - set(profile.points))
    if unknown:
        raise FixtureError(f"{profile.id}: unknown point(s) {', '.join(unknown)}")
    out = bytearray(profile.footprint)
    for point in profile.points.values():
        wire = _wire(point)
        raw = to_raw(point, values[point.name]) if point.name in values else wire.default
        start = wire.offset - 1
        out[start : start + wire.channels] = raw.to_bytes(wire.channels, "big")
    return bytes(out)


def read(profile: Profile, footprint: bytes) -> dict[str, Value]:
    """Point values from the fixture's channel bytes (what a DMX input shows for it)."""
    if len(footprint) != profile.footprint:
        raise FixtureError(
            f"{profile.id}: expected {profile.footprint} channels, got {len(footprint)}"
        )
    values: dict[str, Value] = {}
    for point in profile.points.values():
        wire = _wire(point)
        start = wire.offset - 1
        raw = int.from_bytes(footprint[start : start + wire.channels], "big")
        values[point.name] = from_raw(point, raw)
    return values


def patch(
    universe: Frame, profile: Profile, transport: DmxTransport, values: Mapping[str, Value]
) -> None:
    """Write a fixture's rendered footprint into a 512-slot universe at its address."""
    data = render(profile, values)
    start = transport.address - 1
    if start + len(data) > 512:
        raise FixtureError(
            f"{profile.id} at address {transport.address} needs {len(data)} channels: "
            "it runs past channel 512"
        )
    universe[start : start + len(data)] = np.frombuffer(data, dtype=np.uint8)
