"""The lighting patch: fixtures from DMX profiles, flattened into attribute arrays, and groups.

Every point of a patched fixture is an **attribute**: one entry of the engine's arrays, held
as a raw DMX value (0..255, or 0..65535 for a 16-bit point) in float64 so fades are smooth
across coarse and fine bytes. The patch keeps, per attribute, where it lands in the engine's
``(universes, 512)`` frame (flat indices of the coarse and, for 16 bits, the fine slot), its
default raw value and whether it merges HTP or LTP.

HTP/LTP comes from the profile (``merge`` in the point's ``dmx`` table, docs/interfaces/dmx.md;
the default is LTP). Profiles mark intensities HTP; a profile that marks none gets no HTP
attribute: nothing is guessed.

Values enter as point values (percent, degrees, raw ints) and are converted with
``drivers.dmx.fixture.to_raw``, which refuses NaN, infinities and out-of-range values rather
than clamping them: a wrong cue value is seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from controller.lighting.errors import LightingError
from drivers.dmx.fixture import FixtureError, from_raw, to_raw
from drivers.model import Device, DmxTransport, PointSpec, Profile, Value

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class PatchedFixture:
    id: str
    profile: Profile
    universe: int
    address: int
    first: int  # index of its first attribute in the engine's arrays
    attributes: tuple[str, ...]  # point names, in attribute order

    def index(self, attribute: str) -> int:
        try:
            return self.first + self.attributes.index(attribute)
        except ValueError:
            raise LightingError(
                f"fixture '{self.id}' ({self.profile.id}) has no attribute '{attribute}' "
                f"(known: {', '.join(self.attributes)})"
            ) from None

    def point(self, attribute: str) -> PointSpec:
        self.index(attribute)
        return self.profile.points[attribute]


@dataclass
class Patch:
    """Fixtures, groups and the per-attribute arrays the engine renders from."""

    universes: tuple[int, ...] = ()
    fixtures: dict[str, PatchedFixture] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # per attribute
    coarse: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    fine: I64 = field(default_factory=lambda: np.zeros(0, np.int64))  # -1 for 8-bit
    default: F64 = field(default_factory=lambda: np.zeros(0))
    full: F64 = field(default_factory=lambda: np.zeros(0))
    htp: B = field(default_factory=lambda: np.zeros(0, np.bool_))
    owner: list[str] = field(default_factory=list)  # fixture id per attribute

    @property
    def size(self) -> int:
        return int(self.default.size)

    def universe_index(self, universe: int) -> int:
        try:
            return self.universes.index(universe)
        except ValueError:
            raise LightingError(
                f"universe {universe} is not rendered (rendered: "
                f"{', '.join(map(str, self.universes)) or 'none'})"
            ) from None

    # --- building ----------------------------------------------------------------------------

    @classmethod
    def from_devices(cls, devices: Iterable[Device], extra_universes: Iterable[int] = ()) -> Patch:
        """Patch every DMX device (profile with a footprint, ``dmx`` transport).

        Universes rendered: those of the fixtures plus ``extra_universes`` (the ones the venue
        routes to outputs, sent even when empty so receivers see the source)."""
        fixtures = [
            (d.id, d.profile, d.transport)
            for d in devices
            if isinstance(d.transport, DmxTransport) and d.profile.footprint is not None
        ]
        return cls.build(fixtures, extra_universes)

    @classmethod
    def build(
        cls,
        fixtures: Sequence[tuple[str, Profile, DmxTransport]],
        extra_universes: Iterable[int] = (),
    ) -> Patch:
        universes = tuple(sorted({t.universe for _, _, t in fixtures} | set(extra_universes)))
        patch = cls(universes=universes)
        coarse: list[int] = []
        fine: list[int] = []
        default: list[float] = []
        full: list[float] = []
        htp: list[bool] = []
        used: dict[tuple[int, int], str] = {}
        for fid, profile, transport in fixtures:
            if fid in patch.fixtures:
                raise LightingError(f"fixture '{fid}' is patched twice")
            if profile.footprint is None:
                raise LightingError(f"{fid}: profile '{profile.id}' has no DMX footprint")
            start = transport.address - 1
            if start + profile.footprint > 512:
                raise LightingError(
                    f"{fid} ({profile.id}) at {transport.universe}/{transport.address} needs "
                    f"{profile.footprint} channels: it runs past channel 512"
                )
            for slot in range(start, start + profile.footprint):
                other = used.get((transport.universe, slot))
                if other is not None:
                    raise LightingError(
                        f"{fid} overlaps {other} at universe {transport.universe} "
                        f"channel {slot + 1}"
                    )
                used[(transport.universe, slot)] = fid
            base = universes.index(transport.universe) * 512 + start
            names: list[str] = []
            for point in profile.points.values():
                wire = point.dmx
                if wire is None:
                    continue
                names.append(point.name)
                coarse.append(base + wire.offset - 1)
                fine.append(base + wire.offset if wire.bits == 16 else -1)
                default.append(float(wire.default))
                full.append(float((1 << wire.bits) - 1))
                htp.append(wire.merge == "htp")
                patch.owner.append(fid)
            patch.fixtures[fid] = PatchedFixture(
                fid,
                profile,
                transport.universe,
                transport.address,
                len(default) - len(names),
                tuple(names),
            )
        patch.coarse = np.array(coarse, np.int64)
        patch.fine = np.array(fine, np.int64)
        patch.default = np.array(default, np.float64)
        patch.full = np.array(full, np.float64)
        patch.htp = np.array(htp, np.bool_)
        by_class: dict[str, list[str]] = {}
        for fid, pf in patch.fixtures.items():
            by_class.setdefault(pf.profile.device_class, []).append(fid)
        for cls_name, members in by_class.items():
            if cls_name not in patch.fixtures:  # a fixture id wins over a class name
                patch.groups[cls_name] = tuple(members)
        return patch

    def add_group(
        self,
        name: str,
        fixtures: Sequence[str] = (),
        *,
        device_class: str | None = None,
    ) -> tuple[str, ...]:
        """A named group from a list of fixture ids and/or every fixture of a device class."""
        if not name or name == "grand" or name in self.fixtures:
            raise LightingError(f"'{name}' cannot name a group (empty, 'grand' or a fixture id)")
        members = list(dict.fromkeys(fixtures))
        for fid in members:
            self.fixture(fid)
        if device_class is not None:
            of_class = [
                f for f, pf in self.fixtures.items() if pf.profile.device_class == device_class
            ]
            if not of_class:
                raise LightingError(f"no fixture of device class '{device_class}'")
            members += [f for f in of_class if f not in members]
        if not members:
            raise LightingError(f"group '{name}' has no fixtures")
        self.groups[name] = tuple(members)
        return self.groups[name]

    # --- lookups -----------------------------------------------------------------------------

    def fixture(self, fid: str) -> PatchedFixture:
        pf = self.fixtures.get(fid)
        if pf is None:
            raise LightingError(f"no fixture '{fid}'")
        return pf

    def members(self, target: str) -> tuple[str, ...]:
        """Fixture ids of a fixture id or a group name."""
        if target in self.fixtures:
            return (target,)
        group = self.groups.get(target)
        if group is None:
            raise LightingError(f"no fixture or group '{target}'")
        return group

    def intensities(self, target: str) -> I64:
        """Attribute indices of the HTP (intensity) attributes of a fixture or group."""
        idx = [
            i
            for fid in self.members(target)
            for i in range(
                self.fixtures[fid].first,
                self.fixtures[fid].first + len(self.fixtures[fid].attributes),
            )
            if self.htp[i]
        ]
        return np.array(idx, np.int64)

    def resolve(self, targets: Mapping[str, Mapping[str, Value]]) -> tuple[I64, F64]:
        """Attribute indices and raw target values of ``{fixture or group: {attribute: value}}``.

        A group applies each attribute to every member; a member whose profile lacks the
        attribute is an error only when no member has it (a group of PARs and heads can be
        given an ``intensity`` that only the PARs have... but a misspelt name is refused)."""
        if not isinstance(targets, Mapping):
            raise LightingError("targets must be a mapping {fixture or group: {attribute: value}}")
        out: dict[int, float] = {}
        for target, values in targets.items():
            if not isinstance(values, Mapping):
                raise LightingError(f"{target}: attributes must be a mapping {{name: value}}")
            members = self.members(target)
            for name, value in values.items():
                hit = False
                for fid in members:
                    pf = self.fixtures[fid]
                    if name not in pf.attributes:
                        continue
                    hit = True
                    if not isinstance(value, bool | int | float):
                        # (to_raw raises TypeError, not FixtureError, for None or a list)
                        shown = repr(value)[:60]
                        raise LightingError(f"{fid}.{name}: a DMX value is a number, not {shown}")
                    try:
                        raw = to_raw(pf.profile.points[name], value)
                    except FixtureError as exc:
                        raise LightingError(f"{fid}.{exc}") from None
                    out[pf.index(name)] = float(raw)
                if not hit:
                    if len(members) == 1:
                        self.fixtures[members[0]].index(name)  # raises with the known names
                    raise LightingError(f"no fixture of group '{target}' has attribute '{name}'")
        idx = np.fromiter(out.keys(), np.int64, len(out))
        vals = np.fromiter(out.values(), np.float64, len(out))
        return idx, vals

    def attribute_indices(
        self, targets: Sequence[str] | None, attributes: Sequence[str] | None
    ) -> I64:
        """Attribute indices of fixtures/groups (None: all), optionally only some attributes."""
        if targets is None:
            fids: Sequence[str] = list(self.fixtures)
        else:
            fids = list(dict.fromkeys(f for t in targets for f in self.members(t)))
        idx: list[int] = []
        for fid in fids:
            pf = self.fixtures[fid]
            names = (
                pf.attributes
                if attributes is None
                else [a for a in attributes if a in pf.attributes]
            )
            idx += [pf.index(a) for a in names]
        if attributes is not None:
            known = {a for fid in fids for a in self.fixtures[fid].attributes}
            unknown = sorted(set(attributes) - known)
            if unknown:
                raise LightingError(f"no attribute(s) {', '.join(unknown)} on the given fixtures")
        return np.array(idx, np.int64)

    def values_of(self, fid: str, raw: F64) -> dict[str, Value]:
        """Point values of one fixture from the engine's raw attribute array."""
        pf = self.fixture(fid)
        out: dict[str, Value] = {}
        for k, name in enumerate(pf.attributes):
            point = pf.profile.points[name]
            out[name] = from_raw(point, round(float(raw[pf.first + k])))
        return out
