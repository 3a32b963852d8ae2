"""The loudspeaker layout of a sound-field zone, as configuration.

Each loudspeaker is an output channel of the zone's processor and a position relative to the
listening reference point (the seat the design aims at). Positions are given either as room
coordinates ``position = [x, y, z]`` (metres; then the layout names the ``reference`` point and
the ``front_deg`` direction the audience faces, the stage) or as ``azimuth_deg``,
``elevation_deg`` and ``distance_m`` from the reference point.

Angles follow ITU-R BS.2051 / AmbiX: azimuth 0 is straight ahead (towards the stage),
positive to the left, +-180 behind; elevation 0 at ear height, +90 straight up. In the
listener's frame x points ahead, y to the left, z up.

``channel`` is 1-based (as on a patch bay), the processor output that feeds the loudspeaker;
``FieldParams`` uses the 0-based ``Speaker.index``. The PA loudspeakers can be reused: mark
them ``pa = true``; the design puts the direct path (reinforcement) only on front loudspeakers,
and early and late energy on every loudspeaker whose ``field`` is true (the default).

```toml
[layout]
reference = [12.0, 10.0, 1.2]
front_deg = 180            # the stage is towards -x in room coordinates
speakers = [
  { name = "L",  channel = 1, position = [2.0, 13.0, 6.0], pa = true },
  { name = "SR", channel = 3, azimuth_deg = -90, elevation_deg = 20, distance_m = 8 },
]
```
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_CHANNELS = 512


class LayoutError(ValueError):
    """The layout is invalid; the message names the loudspeaker and the key."""


@dataclass(frozen=True)
class Speaker:
    """One loudspeaker: where it is (listener frame, metres) and which output feeds it."""

    name: str
    channel: int  # 1-based processor output
    x: float  # ahead
    y: float  # left
    z: float  # up
    pa: bool = False
    field: bool = True

    @property
    def index(self) -> int:
        """The 0-based output index (``FieldParams`` channels)."""
        return self.channel - 1

    @property
    def distance_m(self) -> float:
        return math.sqrt(self.x * self.x + self.y * self.y + self.z * self.z)

    @property
    def azimuth_deg(self) -> float:
        return math.degrees(math.atan2(self.y, self.x))

    @property
    def elevation_deg(self) -> float:
        return math.degrees(math.atan2(self.z, math.hypot(self.x, self.y)))

    @property
    def unit(self) -> tuple[float, float, float]:
        d = self.distance_m
        return (self.x / d, self.y / d, self.z / d)

    @property
    def lateral(self) -> float:
        """cos^2 of the angle to the listener's left-right axis: what a figure-of-eight
        microphone facing sideways picks up of a unit energy from here (J_LF's weighting)."""
        return self.unit[1] ** 2


@dataclass(frozen=True)
class Layout:
    """The loudspeakers of one zone. ``n_out`` is the processor's output count (at least the
    highest channel; outputs without a loudspeaker stay silent)."""

    speakers: tuple[Speaker, ...]
    n_out: int

    def __post_init__(self) -> None:
        if not self.speakers:
            raise LayoutError("a layout needs at least one loudspeaker")
        top = max(s.channel for s in self.speakers)
        if self.n_out < top:
            raise LayoutError(f"n_out {self.n_out} is below the highest channel {top}")

    @property
    def field_speakers(self) -> tuple[Speaker, ...]:
        return tuple(s for s in self.speakers if s.field)

    def front(self, max_azimuth_deg: float = 45.0) -> tuple[Speaker, ...]:
        """Loudspeakers within ``max_azimuth_deg`` of straight ahead, PA ones first."""
        near = [s for s in self.speakers if abs(s.azimuth_deg) <= max_azimuth_deg]
        return tuple(sorted(near, key=lambda s: (not s.pa, abs(s.azimuth_deg), s.channel)))

    def nearest(self, direction: tuple[float, float, float]) -> Speaker:
        """The field loudspeaker closest in angle to ``direction`` (listener frame)."""
        n = math.sqrt(sum(c * c for c in direction)) or 1.0
        d = tuple(c / n for c in direction)
        return max(
            self.field_speakers,
            key=lambda s: (sum(a * b for a, b in zip(s.unit, d, strict=True)), -s.channel),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_out": self.n_out,
            "speakers": [
                {
                    "name": s.name,
                    "channel": s.channel,
                    "azimuth_deg": round(s.azimuth_deg, 6),
                    "elevation_deg": round(s.elevation_deg, 6),
                    "distance_m": round(s.distance_m, 6),
                    "pa": s.pa,
                    "field": s.field,
                }
                for s in self.speakers
            ],
        }


_LAYOUT_KEYS = frozenset({"speakers", "reference", "front_deg", "n_out"})
_SPEAKER_KEYS = frozenset(
    {"name", "channel", "position", "azimuth_deg", "elevation_deg", "distance_m", "pa", "field"}
)


def _num(where: str, key: str, value: Any, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LayoutError(f"{where}: {key} must be a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise LayoutError(f"{where}: {key} must lie in {lo:g} .. {hi:g}, got {value!r}")
    return float(value)


def _point(where: str, key: str, value: Any) -> tuple[float, float, float]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 3:
        raise LayoutError(f"{where}: {key} must be [x, y, z] in metres, got {value!r}")
    x, y, z = (_num(where, f"{key}[{i}]", v, -1e4, 1e4) for i, v in enumerate(value))
    return (x, y, z)


def layout_from_dict(data: Mapping[str, Any]) -> Layout:
    """Validate a layout table (see the module docstring) and build a ``Layout``."""
    if not isinstance(data, Mapping):
        raise LayoutError(f"a layout must be a table (mapping), got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in _LAYOUT_KEYS)
    if unknown:
        raise LayoutError(
            f"layout: unknown key {', '.join(unknown)} (keys: {', '.join(sorted(_LAYOUT_KEYS))})"
        )
    ref = _point("layout", "reference", data.get("reference", (0.0, 0.0, 0.0)))
    front = math.radians(_num("layout", "front_deg", data.get("front_deg", 0.0), -360.0, 360.0))
    raw = data.get("speakers")
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence) or not raw:
        raise LayoutError("layout: speakers must be a non-empty list of tables")
    speakers: list[Speaker] = []
    for i, item in enumerate(raw):
        speakers.append(_speaker(i, item, ref, front))
    names: dict[str, int] = {}
    channels: dict[int, str] = {}
    for s in speakers:
        if s.name in names:
            raise LayoutError(f"layout: two loudspeakers are named {s.name!r}")
        names[s.name] = s.channel
        if s.channel in channels:
            raise LayoutError(
                f"layout: loudspeakers {channels[s.channel]!r} and {s.name!r} share channel "
                f"{s.channel} (one output feeds one loudspeaker here)"
            )
        channels[s.channel] = s.name
    if not any(s.field for s in speakers):
        raise LayoutError("layout: no loudspeaker has field = true (nothing can render a field)")
    top = max(channels)
    n_out = data.get("n_out", top)
    if isinstance(n_out, bool) or not isinstance(n_out, int) or not top <= n_out <= MAX_CHANNELS:
        raise LayoutError(
            f"layout: n_out must be an integer in {top} .. {MAX_CHANNELS}, got {n_out!r}"
        )
    return Layout(tuple(speakers), n_out)


def _speaker(i: int, item: Any, ref: tuple[float, float, float], front_rad: float) -> Speaker:
    where = f"layout: speakers[{i}]"
    if not isinstance(item, Mapping):
        raise LayoutError(f"{where} must be a table, got {item!r}")
    name = item.get("name", f"speaker-{i + 1}")
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise LayoutError(f"{where}: name must be a non-empty string of <= 64 chars")
    where = f"layout: speakers[{i}] ({name})"
    unknown = sorted(str(k) for k in item if k not in _SPEAKER_KEYS)
    if unknown:
        raise LayoutError(
            f"{where}: unknown key {', '.join(unknown)} (keys: {', '.join(sorted(_SPEAKER_KEYS))})"
        )
    channel = item.get("channel")
    if (
        isinstance(channel, bool)
        or not isinstance(channel, int)
        or not 1 <= channel <= MAX_CHANNELS
    ):
        raise LayoutError(
            f"{where}: channel must be an integer 1 .. {MAX_CHANNELS}, got {channel!r}"
        )
    polar = [k for k in ("azimuth_deg", "elevation_deg", "distance_m") if k in item]
    if ("position" in item) == bool(polar):
        raise LayoutError(
            f"{where}: give either position = [x, y, z] or azimuth_deg / elevation_deg / distance_m"
        )
    if "position" in item:
        px, py, pz = _point(where, "position", item["position"])
        dx, dy, dz = px - ref[0], py - ref[1], pz - ref[2]
        # rotate room coordinates so that front_deg becomes the listener's +x (ahead)
        c, s = math.cos(front_rad), math.sin(front_rad)
        x, y, z = c * dx + s * dy, -s * dx + c * dy, dz
    else:
        for k in ("azimuth_deg", "distance_m"):
            if k not in item:
                raise LayoutError(f"{where}: missing {k} (azimuth_deg and distance_m are needed)")
        az = math.radians(_num(where, "azimuth_deg", item["azimuth_deg"], -360.0, 360.0))
        el = math.radians(_num(where, "elevation_deg", item.get("elevation_deg", 0.0), -90, 90))
        r = _num(where, "distance_m", item["distance_m"], 0.0, 1e4)
        x, y, z = r * math.cos(el) * math.cos(az), r * math.cos(el) * math.sin(az), r * math.sin(el)
    if math.sqrt(x * x + y * y + z * z) < 0.1:
        raise LayoutError(f"{where}: less than 0.1 m from the reference point")
    flags = {}
    for k, default in (("pa", False), ("field", True)):
        v = item.get(k, default)
        if not isinstance(v, bool):
            raise LayoutError(f"{where}: {k} must be true or false, got {v!r}")
        flags[k] = v
    return Speaker(name, channel, x, y, z, pa=flags["pa"], field=flags["field"])
