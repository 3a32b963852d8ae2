"""``Lighting`` over the lighting output engine (``controller.lighting.LightingEngine``).

Each cue list is one source of the engine, named by the list id, at the list's priority. Show
levels (fixture, group or DMX channel; an attribute or, without one, the fixture's intensity)
are resolved here into the engine's ``{fixture: {attribute: value}}`` targets. Split up/down
times are honoured by fading the values that rise and those that fall separately (rising is
judged against the engine's present output). Panic is a source above every list
(``PANIC_SOURCE`` at the engine's top priority) that fades to the safe look: every HTP
attribute to zero, except what the venue's safe look sets (work lights, house lights, exit
routes: ``safe_look``), so people on stage are not left in the dark while machinery stops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.lighting import LightingEngine, LightingError
from controller.lighting.engine import MAX_PRIORITY
from controller.show.model import Level
from drivers.dmx.fixture import FixtureError, from_raw, to_raw
from drivers.model import Value

PANIC_SOURCE = "panic"
INTENSITY_POINTS = ("intensity", "dimmer")

Targets = dict[str, dict[str, Value]]


class EngineLighting:
    def __init__(
        self,
        engine: LightingEngine,
        groups: Mapping[str, Sequence[str]] | None = None,
        safe_look: Sequence[Level] = (),
    ) -> None:
        """``safe_look``: the levels panic fades to above the blackout of every other
        intensity. They are resolved now, so a safe look naming nothing patched is refused
        (``LightingError``) when the service starts, not found out during a panic."""
        self.engine = engine
        self.groups = {k: tuple(v) for k, v in (groups or {}).items()}
        self.safe_look = tuple(safe_look)
        for i, lv in enumerate(self.safe_look):
            try:
                self.targets([lv])
            except LightingError as exc:
                raise LightingError(f"safe look [{i}]: {exc}") from None

    # --- resolution -----------------------------------------------------------------------

    def _members(self, group: str) -> tuple[str, ...]:
        if group in self.groups:
            return tuple(f for f in self.groups[group] if f in self.engine.patch.fixtures)
        return self.engine.patch.members(group)

    def _channel(self, universe: int, address: int) -> tuple[str, str, Value]:
        for fid, pf in self.engine.patch.fixtures.items():
            if pf.universe != universe:
                continue
            for name in pf.attributes:
                wire = pf.profile.points[name].dmx
                if wire is not None and pf.address + wire.offset - 1 == address:
                    return fid, name, 0
        raise LightingError(f"no patched fixture attribute at channel {universe}/{address}")

    def targets(self, levels: Sequence[Level], scale: float = 1.0) -> Targets:
        """``{fixture: {attribute: value}}`` of show levels (later levels win)."""
        out: Targets = {}
        patch = self.engine.patch
        for lv in levels:
            if lv.channel is not None:
                fid, name, _ = self._channel(lv.channel.universe, lv.channel.address)
                spec = patch.fixtures[fid].profile.points[name]
                assert spec.dmx is not None
                full = (1 << spec.dmx.bits) - 1
                raw = round(lv.level * scale / 100.0 * full)
                try:
                    out.setdefault(fid, {})[name] = from_raw(spec, raw)
                except FixtureError as exc:
                    raise LightingError(str(exc)) from None
                continue
            fids = (lv.fixture,) if lv.fixture is not None else self._members(lv.group or "")
            hit = False
            for fid in fids:
                pf = patch.fixture(fid)
                if lv.attribute is None:
                    name = next((n for n in INTENSITY_POINTS if n in pf.attributes), "")
                    if not name:
                        continue
                    value: Value = lv.level * scale
                else:
                    if lv.attribute not in pf.attributes:
                        continue
                    name, value = lv.attribute, lv.level
                out.setdefault(fid, {})[name] = value
                hit = True
            if not hit:
                raise LightingError(f"{lv.target}: no patched fixture has that attribute")
        return out

    # --- Lighting -------------------------------------------------------------------------

    def levels(
        self,
        layer: str,
        priority: int,
        levels: Sequence[Level],
        *,
        fade_s: float,
        up_s: float | None = None,
        down_s: float | None = None,
        curve: str = "linear",
        scale: float = 1.0,
    ) -> None:
        targets = self.targets(levels, scale)
        src = self.engine.source(layer, priority)
        if up_s is None and down_s is None:
            src.fade(targets, fade_s, curve=curve)
            return
        patch = self.engine.patch
        now = self.engine.clock()
        present = self.engine.merged_at(now)
        rising: Targets = {}
        falling: Targets = {}
        for fid, attrs in targets.items():
            pf = patch.fixtures[fid]
            for name, value in attrs.items():
                try:
                    raw = to_raw(pf.profile.points[name], value)
                except FixtureError as exc:
                    raise LightingError(f"{fid}.{exc}") from None
                side = rising if raw >= present[pf.index(name)] else falling
                side.setdefault(fid, {})[name] = value
        if rising:
            src.fade(rising, fade_s if up_s is None else up_s, curve=curve, now=now)
        if falling:
            src.fade(falling, fade_s if down_s is None else down_s, curve=curve, now=now)

    def release(
        self, layer: str, priority: int, *, fade_s: float, keep: Sequence[Level] = ()
    ) -> int:
        src = self.engine.sources.get(layer)
        if src is None:
            return 0
        if not keep:
            return src.release(fade_s=fade_s)
        kept = self.targets(keep)
        n = 0
        for fid in src.driven():
            pf = self.engine.patch.fixtures[fid]
            names = [
                name
                for i, name in enumerate(pf.attributes)
                if src.active[pf.first + i] and name not in kept.get(fid, {})
            ]
            if names:
                n += src.release([fid], names, fade_s=fade_s)
        return n

    def panic(self, fade_s: float) -> None:
        patch = self.engine.patch
        targets: Targets = {}
        for fid, pf in patch.fixtures.items():
            for i, name in enumerate(pf.attributes):
                if patch.htp[pf.first + i]:
                    targets.setdefault(fid, {})[name] = from_raw(pf.profile.points[name], 0)
        for fid, attrs in self.targets(self.safe_look).items():
            targets.setdefault(fid, {}).update(attrs)
        src = self.engine.source(PANIC_SOURCE, MAX_PRIORITY, kind="panic")
        if targets:
            src.fade(targets, fade_s)

    def clear_panic(self, fade_s: float) -> None:
        src = self.engine.sources.get(PANIC_SOURCE)
        if src is not None:
            src.release(fade_s=fade_s)

    def pause(self, layer: str, priority: int) -> None:
        self.engine.source(layer, priority).pause()

    def resume(self, layer: str, priority: int) -> None:
        self.engine.source(layer, priority).resume()
