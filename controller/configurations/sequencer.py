"""The switch from one venue configuration to another: a safe, journalled sequence with progress.

A switch runs against the cue engine's ports (``controller.playback.ports``): every move and
every stop passes ``Machinery`` (in the service, the safety supervisor), arrival and
progress are read through ``Devices.read``, the lighting state goes to its own layer of
``Lighting`` (``configuration``, below the cue lists by default), the acoustic mode to
``Audio.soundfield`` when the node has a sound-field engine. Time is a ``Clock``, so unit tests
run a minute-long switch in milliseconds.

The sequence, and why:

1. **Refuse before anything moves** (journalled ``refused`` with every reason): another switch
   running; an axis with no position, a stale or bad one (offline), a fault or an e-stop.
2. The lighting look fades in (``lighting_at = "start"``), the acoustic mode is recalled (or
   *skipped*, with the reason, on a node without a sound-field engine: acoustics never hold up
   the machinery).
3. **Phases**, in order. An axis already within tolerance is not moved. Locking bolts are
   released first where the axis has them. An axis still closing the last millimetres of its
   previous move (a switch within tolerance is done; the supervisor's move ends at rest) is
   given ``BUSY_WAIT_S`` to end it. Every other axis of the phase gets ``move_to`` at
   once, then the phase is watched on a fixed tick until each axis is within tolerance. The
   phase fails, and the switch with it, when a move is refused, an axis reports a fault, its
   position goes stale, it stops short (no movement for ``stall_s``: a panic or an e-stop
   elsewhere stopped it) or the phase outlasts its timeout.
4. A failure or an **abort** stops every axis the switch has commanded, through
   ``Machinery.stop``, and says which stop failed. The switch then ends ``failed`` or
   ``aborted``, and the venue's current configuration becomes unknown: it is known again only
   after a switch completes.

Journal (``controller.journal``): ``configuration.switch`` (accepted or refused, by whoever
asked), ``configuration.phase.start`` / ``.end``, ``configuration.axis`` (one per axis, with
its result), ``configuration.lighting``, ``configuration.acoustics``, ``configuration.abort``
(who asked) and ``configuration.end`` (done / aborted / failed with the reason). The moves
themselves are journalled by the device layer (``device.move_to``) with the source
``configuration NAME``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.journal import JournalEvent, JournalHeld, JournalSink, Origin, Result, SourceKind
from controller.playback.clock import Clock
from controller.playback.ports import (
    POSITION_POINT,
    Audio,
    Devices,
    Lighting,
    Machinery,
    PlaybackError,
    Refused,
    Unavailable,
)

from .model import (
    BOLTS_ENGAGED,
    BOLTS_RELEASED,
    ENGAGE_BOLTS,
    RELEASE_BOLTS,
    AxisInfo,
    AxisMove,
    Configuration,
    ConfigurationSettings,
    move_args,
)

log = logging.getLogger(__name__)

LAYER = "configuration"  # the lighting engine source of the configurations' looks
NO_SOUNDFIELD = "skipped: no sound-field engine on this node"
POLL_S = 0.1  # the watch tick: arrival, faults, stalls, abort
BUSY_WAIT_S = 3.0  # an axis still finishing its last move is given this long before its next
DEFAULT_PHASE_TIMEOUT_S = 120.0


class SwitchFailed(Exception):
    """Ends a switch: ``reason`` is what the journal and the progress say."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Aborted(SwitchFailed):
    pass


def estimate_s(distance: float, speed: float | None, accel: float | None) -> float | None:
    """Time of a trapezoidal move of ``distance`` (None without a speed)."""
    if speed is None or speed <= 0:
        return None
    distance = abs(distance)
    if not accel or accel <= 0:
        return distance / speed
    if distance >= speed * speed / accel:
        return distance / speed + speed / accel
    return 2.0 * math.sqrt(distance / accel)


@dataclass
class _Axis:
    id: str
    phase: int
    move: AxisMove
    info: AxisInfo
    tolerance: float
    start: float | None = None
    present: float | None = None
    state: str = (
        "pending"  # pending, releasing, moving, arrived, in position, locking, failed, stopped
    )
    started_at: float | None = None
    arrived_at: float | None = None
    reason: str = ""
    mark: float | None = None  # the position when it last progressed (stall watch)
    mark_at: float = 0.0

    @property
    def speed(self) -> float | None:
        return self.move.speed if self.move.speed is not None else self.info.speed

    @property
    def accel(self) -> float | None:
        return (
            self.move.acceleration if self.move.acceleration is not None else self.info.acceleration
        )

    def left(self) -> float | None:
        if self.present is None:
            return None
        return self.info.distance(self.present, self.move.position)

    def fraction(self) -> float:
        if self.state in ("arrived", "in position", "locking"):
            return 1.0
        if self.start is None or self.present is None:
            return 0.0
        total = self.info.distance(self.start, self.move.position)
        left = self.info.distance(self.present, self.move.position)
        return 1.0 if total <= 0 else max(0.0, min(1.0, 1.0 - left / total))

    def estimate(self) -> float | None:
        """Seconds of the whole move from where it starts (or stands, if not started)."""
        origin = self.start if self.start is not None else self.present
        if origin is None:
            return None
        return estimate_s(self.info.distance(origin, self.move.position), self.speed, self.accel)

    def remaining(self) -> float | None:
        if self.state in ("arrived", "in position", "locking", "failed", "stopped"):
            return 0.0
        left = self.left()
        if left is None:
            return None
        if self.state == "moving":
            return left / self.speed if self.speed else None
        return estimate_s(left, self.speed, self.accel)


@dataclass
class _Phase:
    index: int
    axes: list[_Axis]
    state: str = "pending"  # pending, running, done, failed, stopped
    started_at: float | None = None
    ended_at: float | None = None
    timeout_s: float = DEFAULT_PHASE_TIMEOUT_S

    def estimate(self) -> float | None:
        times = [a.estimate() for a in self.axes]
        known = [t for t in times if t is not None]
        return max(known, default=0.0) if len(known) == len(times) else None

    def remaining(self) -> float | None:
        times = [a.remaining() for a in self.axes]
        if any(t is None for t in times):
            return None
        return max((t for t in times if t is not None), default=0.0)


@dataclass
class _Run:
    name: str
    config: Configuration
    previous: str | None
    origin: Origin
    phases: list[_Phase]
    started: float  # clock
    started_wall: float
    state: str = "running"  # running, done, aborted, failed
    reason: str = ""
    ended: float | None = None
    lighting: dict[str, str] = field(default_factory=lambda: {"state": "none", "reason": ""})
    acoustics: dict[str, str] = field(default_factory=lambda: {"state": "none", "reason": ""})
    abort: str | None = None  # who asked, once an abort is asked for
    commanded: set[str] = field(default_factory=set)  # axes that were sent a move
    problems: list[str] = field(default_factory=list)  # failures that did not stop the machinery

    @property
    def axes(self) -> list[_Axis]:
        return [a for p in self.phases for a in p.axes]


class Switcher:
    """Runs one switch at a time between the venue's configurations (module docstring)."""

    def __init__(
        self,
        configurations: Mapping[str, Configuration],
        axes: Mapping[str, AxisInfo],
        *,
        devices: Devices,
        machinery: Machinery,
        journal: JournalSink,
        clock: Clock,
        lighting: Lighting | None = None,
        audio: Audio | None = None,
        settings: ConfigurationSettings | None = None,
        poll_s: float = POLL_S,
        on_current: Callable[[str | None], None] | None = None,
        current: str | None = None,
    ) -> None:
        self.configurations = dict(configurations)
        self.axes = dict(axes)
        self.devices, self.machinery, self.journal, self.clock = devices, machinery, journal, clock
        self.lighting, self.audio = lighting, audio
        self.settings = settings or ConfigurationSettings()
        self.poll_s = poll_s
        self.on_current = on_current  # persists the current name (the service keeps a file)
        self.current = current if current in self.configurations else None
        self.version = 0
        self._changed = asyncio.Event()
        self._run: _Run | None = None
        self._task: asyncio.Task[None] | None = None

    # --- observation ----------------------------------------------------------------------

    def _notify(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, version: int) -> int:
        while self.version == version:
            await self._changed.wait()
        return self.version

    @property
    def running(self) -> bool:
        return self._run is not None and self._run.state == "running"

    def _config(self, name: str) -> Configuration:
        cfg = self.configurations.get(name)
        if cfg is None:
            known = ", ".join(sorted(self.configurations)) or "none"
            raise PlaybackError(f"no configuration '{name}' (configurations: {known})", 404)
        return cfg

    def _position(self, axis: str) -> float | None:
        pv = self.devices.read(axis, POSITION_POINT)
        if pv is None or pv.quality != "good" or not _number(pv.value):
            return None
        return float(pv.value)

    def in_position(self, name: str) -> bool | None:
        """Whether every axis of ``name`` stands within tolerance now (None: not known)."""
        cfg = self._config(name)
        for axis in cfg.machinery:
            present = self._position(axis)
            if present is None:
                return None
            move = cfg.target(axis)
            tol = move.tolerance or self.settings.tolerance
            if self.axes[axis].distance(present, move.position) > tol:
                return False
        return True

    def listing(self) -> dict[str, Any]:
        return {
            "current": self.current or "unknown",
            "switching": self._run.name if self.running and self._run else None,
            "configurations": [
                {
                    "name": name,
                    "label": cfg.label,
                    "notes": cfg.notes,
                    "axes": len(cfg.machinery),
                    "lighting": len(cfg.lighting),
                    "acoustics": cfg.acoustics,
                    "current": name == self.current,
                    "in_position": self.in_position(name),
                }
                for name, cfg in self.configurations.items()
            ],
        }

    def _build(self, name: str, cfg: Configuration) -> list[_Phase]:
        phases = []
        for i, axes in enumerate(cfg.phases()):
            items = []
            for axis in axes:
                move = cfg.target(axis)
                a = _Axis(axis, i, move, self.axes[axis], move.tolerance or self.settings.tolerance)
                a.present = self._position(axis)
                items.append(a)
            phase = _Phase(i, items)
            est = phase.estimate()
            phase.timeout_s = cfg.phase_timeout_s or (
                1.5 * est + 10.0 if est is not None else DEFAULT_PHASE_TIMEOUT_S
            )
            phases.append(phase)
        return phases

    def plan(self, name: str) -> dict[str, Any]:
        """The phases and moves a switch to ``name`` would make from where the axes stand."""
        cfg = self._config(name)
        phases = self._build(name, cfg)
        ests = [p.estimate() for p in phases]
        return {
            "name": name,
            "label": cfg.label,
            "notes": cfg.notes,
            "lighting": [lv.model_dump(exclude_none=True) for lv in cfg.lighting],
            "lighting_fade_s": cfg.lighting_fade_s,
            "lighting_at": cfg.lighting_at,
            "acoustics": cfg.acoustics,
            "acoustics_note": NO_SOUNDFIELD if cfg.acoustics and self.audio is None else "",
            "estimated_s": _round(sum(e for e in ests if e is not None))
            if all(e is not None for e in ests)
            else None,
            "phases": [
                {
                    "index": p.index,
                    "timeout_s": _round(p.timeout_s),
                    "estimated_s": _round(p.estimate()),
                    "moves": [
                        {
                            "axis": a.id,
                            "unit": a.info.unit,
                            "present": _round(a.present),
                            "target": a.move.position,
                            "speed": a.speed,
                            "tolerance": a.tolerance,
                            "lock": a.move.lock,
                            "moves": a.left() is None or a.left() > a.tolerance,  # type: ignore[operator]
                            "estimated_s": _round(a.estimate()),
                        }
                        for a in p.axes
                    ],
                }
                for p in phases
            ],
        }

    def progress(self) -> dict[str, Any]:
        """The running (or last) switch: overall fraction, phases, every axis, times."""
        run = self._run
        if run is None:
            return {"state": "idle", "current": self.current or "unknown", "version": self.version}
        now = self.clock.now() if run.ended is None else run.ended
        for a in run.axes:
            if a.state in ("moving", "pending", "releasing") and run.state == "running":
                present = self._position(a.id)
                a.present = present if present is not None else a.present
        weights = [(a.estimate() or 1.0, a.fraction()) for a in run.axes]
        total = sum(w for w, _ in weights)
        fraction = (
            sum(w * f for w, f in weights) / total
            if total
            else (1.0 if run.state == "done" else 0.0)
        )
        current = next((p for p in run.phases if p.state == "running"), None)
        remaining: float | None = 0.0
        if run.state == "running":
            parts = [p.remaining() for p in run.phases if p.state in ("pending", "running")]
            remaining = None if any(r is None for r in parts) else sum(r or 0.0 for r in parts)
        return {
            "state": run.state,
            "configuration": run.name,
            "label": run.config.label,
            "from": run.previous or "unknown",
            "current": self.current or "unknown",
            "source": run.origin.source,
            "reason": run.reason,
            "started": run.started_wall,
            "elapsed_s": _round(now - run.started),
            "remaining_s": _round(remaining),
            "fraction": round(fraction, 4),
            "phase": None if current is None else current.index,
            "phase_count": len(run.phases),
            "phases": [
                {
                    "index": p.index,
                    "state": p.state,
                    "axes": [a.id for a in p.axes],
                    "started_s": _round(_rel(p.started_at, run.started)),
                    "ended_s": _round(_rel(p.ended_at, run.started)),
                    "timeout_s": _round(p.timeout_s),
                }
                for p in run.phases
            ],
            "axes": [
                {
                    "axis": a.id,
                    "phase": a.phase,
                    "state": a.state,
                    "unit": a.info.unit,
                    "start": _round(a.start),
                    "target": a.move.position,
                    "present": _round(a.present),
                    "fraction": round(a.fraction(), 4),
                    "started_s": _round(_rel(a.started_at, run.started)),
                    "arrived_s": _round(_rel(a.arrived_at, run.started)),
                    "remaining_s": _round(a.remaining()),
                    "reason": a.reason,
                }
                for a in run.axes
            ],
            "lighting": dict(run.lighting),
            "acoustics": dict(run.acoustics),
            "problems": list(run.problems),
            "version": self.version,
        }

    # --- commands -------------------------------------------------------------------------

    async def switch(self, name: str, origin: Origin) -> dict[str, Any]:
        """Start the switch to ``name`` (it runs on in the background); return its plan.

        Raises ``PlaybackError`` 404 for an unknown name, ``Refused`` (409) when a switch
        runs or an axis is not fit to move; a refusal is journalled with its reasons."""
        cfg = self._config(name)
        requested = self.clock.wall()
        problems: list[str] = []
        if self.running and self._run is not None:
            run = self._run
            phase = next((p.index + 1 for p in run.phases if p.state == "running"), 0)
            problems.append(
                f"a switch to '{run.name}' is running (phase {phase} of {len(run.phases)}): "
                "abort it or wait for it to end"
            )
        else:
            problems.extend(self._unfit(cfg))
        if problems:
            reason = "; ".join(problems)
            await self._event(
                origin,
                "configuration.switch",
                Result.REFUSED,
                name,
                reason=reason,
                targets=tuple(cfg.machinery),
                requested=requested,
            )
            raise Refused(reason)
        plan = self.plan(name)
        phases = self._build(name, cfg)
        for p in phases:
            for a in p.axes:
                a.start = a.present
        run = _Run(name, cfg, self.current, origin, phases, self.clock.now(), requested)
        self._run = run
        self.current = None  # unknown from the first move until the switch completes
        self._persist()
        await self._event(
            origin,
            "configuration.switch",
            Result.OK,
            name,
            targets=tuple(cfg.machinery),
            requested=requested,
            args={
                "from": run.previous or "unknown",
                "phases": [[a.id for a in p.axes] for p in phases],
                "estimated_s": plan["estimated_s"],
            },
        )
        self._notify()
        self._task = asyncio.create_task(self._execute(run), name=f"configuration:{name}")
        return plan

    def _unfit(self, cfg: Configuration) -> list[str]:
        """Why an axis of ``cfg`` must not be moved now (empty: every axis may)."""
        problems: list[str] = []
        now = self.clock.wall()
        for axis in cfg.machinery:
            pv = self.devices.read(axis, POSITION_POINT)
            if pv is None:
                problems.append(f"{axis} has no position yet (offline, or not polled yet)")
                continue
            if pv.quality != "good" or not _number(pv.value):
                problems.append(f"{axis}: its position is {pv.quality} (is the drive offline?)")
                continue
            if pv.ts is not None and now - pv.ts > self.settings.stale_s:
                problems.append(
                    f"{axis}: its last position is {now - pv.ts:.1f} s old "
                    f"(more than {self.settings.stale_s:g} s: offline?)"
                )
            if _true(self.devices.read(axis, "fault")):
                code = self.devices.read(axis, "fault_code")
                detail = f" (fault_code {code.value})" if code is not None else ""
                problems.append(f"{axis} is faulted{detail}: clear the cause and reset it first")
            if _true(self.devices.read(axis, "estop")):
                problems.append(f"{axis} has its e-stop active")
        return problems

    async def abort(self, origin: Origin, reason: str = "") -> dict[str, Any]:
        """Stop the running switch: every axis it commanded gets a controlled stop."""
        run = self._run
        if run is None or run.state != "running" or self._task is None:
            await self._event(
                origin, "configuration.abort", Result.REFUSED, None, reason="no switch is running"
            )
            raise Refused("no switch is running")
        why = reason or f"aborted by {origin.source or origin.kind.value}"
        run.abort = why
        await self._event(
            origin,
            "configuration.abort",
            Result.OK,
            run.name,
            targets=tuple(run.config.machinery),
            reason=why,
        )
        await asyncio.shield(self._task)
        return self.progress()

    async def wait(self) -> dict[str, Any]:
        """Until the running switch (if any) has ended; its final progress."""
        if self._task is not None:
            await asyncio.shield(self._task)
        return self.progress()

    async def close(self) -> None:
        """On shutdown: abort a running switch (axes stop) and wait for it."""
        if self.running:
            with contextlib.suppress(PlaybackError):
                await self.abort(
                    Origin(SourceKind.SYSTEM, "service stopping"),
                    "aborted: the service is stopping",
                )
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # --- the sequence ---------------------------------------------------------------------

    async def _execute(self, run: _Run) -> None:
        who = Origin(SourceKind.WAIT, f"configuration {run.name}")
        try:
            if run.config.lighting_at == "start":
                await self._lighting(run, who)
            await self._acoustics(run, who)
            for phase in run.phases:
                await self._phase(run, phase, who)
            if run.config.lighting_at == "end":
                await self._lighting(run, who)
            if run.problems:
                run.state, run.reason = "failed", "; ".join(run.problems)
            else:
                run.state = "done"
        except _Aborted as exc:
            run.state, run.reason = "aborted", exc.reason
            await self._stop_all(run, who)
        except SwitchFailed as exc:
            run.state, run.reason = "failed", exc.reason
            await self._stop_all(run, who)
        except Exception as exc:  # a bug must still stop the machinery and say so
            log.exception("configuration switch to %s", run.name)
            run.state, run.reason = "failed", f"{type(exc).__name__}: {exc}"
            await self._stop_all(run, who)
        finally:
            run.ended = self.clock.now()
            if run.state == "done":
                self.current = run.name
            self._persist()
            result = Result.OK if run.state == "done" else Result.FAILED
            await self._event(
                who,
                "configuration.end",
                result,
                run.name,
                reason=run.reason
                if run.state == "failed"
                else (
                    f"aborted: {run.reason}"
                    if run.state == "aborted" and not run.reason.startswith("aborted")
                    else run.reason
                ),
                targets=tuple(run.config.machinery),
                args={"outcome": run.state, "elapsed_s": round(run.ended - run.started, 3)},
                requested=run.started_wall,
            )
            self._notify()

    def _persist(self) -> None:
        if self.on_current is not None:
            try:
                self.on_current(self.current)
            except Exception:  # persisting is a convenience; the switch is not undone by it
                log.exception("could not record the current configuration")

    async def _lighting(self, run: _Run, who: Origin) -> None:
        cfg = run.config
        if self.lighting is None:
            if cfg.lighting:
                run.lighting = {"state": "skipped", "reason": "no lighting engine on this node"}
                await self._event(
                    who,
                    "configuration.lighting",
                    Result.REFUSED,
                    run.name,
                    reason=run.lighting["reason"],
                )
            return
        prio = self.settings.lighting_priority
        try:
            # The previous configuration's look lets go of what the new one does not set.
            self.lighting.release(LAYER, prio, fade_s=cfg.lighting_fade_s, keep=cfg.lighting)
            if cfg.lighting:
                self.lighting.levels(LAYER, prio, cfg.lighting, fade_s=cfg.lighting_fade_s)
        except Exception as exc:
            reason = f"lighting: {type(exc).__name__}: {exc}"
            run.lighting = {"state": "failed", "reason": reason}
            run.problems.append(reason)
            await self._event(who, "configuration.lighting", Result.FAILED, run.name, reason=reason)
        else:
            run.lighting = {"state": "done", "reason": ""}
            await self._event(
                who,
                "configuration.lighting",
                Result.OK,
                run.name,
                args={"levels": len(cfg.lighting), "fade_s": cfg.lighting_fade_s},
            )
        self._notify()

    async def _acoustics(self, run: _Run, who: Origin) -> None:
        mode = run.config.acoustics
        if mode is None:
            return
        if self.audio is None:
            run.acoustics = {"state": "skipped", "reason": NO_SOUNDFIELD}
            await self._event(
                who,
                "configuration.acoustics",
                Result.REFUSED,
                run.name,
                reason=NO_SOUNDFIELD,
                args={"mode": mode},
            )
            self._notify()
            return
        try:
            await self.audio.soundfield(mode, run.config.acoustics_fade_s, who)
        except Exception as exc:
            if isinstance(exc, Unavailable):  # an Audio port without the engine yet
                run.acoustics = {"state": "skipped", "reason": f"skipped: {exc}"}
                await self._event(
                    who,
                    "configuration.acoustics",
                    Result.REFUSED,
                    run.name,
                    reason=run.acoustics["reason"],
                    args={"mode": mode},
                )
                self._notify()
                return
            reason = f"acoustics: {type(exc).__name__}: {exc}"
            run.acoustics = {"state": "failed", "reason": reason}
            run.problems.append(reason)
            await self._event(
                who,
                "configuration.acoustics",
                Result.FAILED,
                run.name,
                reason=reason,
                args={"mode": mode},
            )
        else:
            run.acoustics = {"state": "done", "reason": ""}
            await self._event(
                who, "configuration.acoustics", Result.OK, run.name, args={"mode": mode}
            )
        self._notify()

    async def _phase(self, run: _Run, phase: _Phase, who: Origin) -> None:
        self._check_abort(run)
        phase.state, phase.started_at = "running", self.clock.now()
        ids = tuple(a.id for a in phase.axes)
        await self._event(
            who,
            "configuration.phase.start",
            Result.OK,
            run.name,
            targets=ids,
            args={"phase": phase.index, "timeout_s": round(phase.timeout_s, 3)},
        )
        self._notify()
        try:
            await self._run_phase(run, phase, who)
        except SwitchFailed as exc:
            phase.state = "stopped" if isinstance(exc, _Aborted) else "failed"
            phase.ended_at = self.clock.now()
            await self._event(
                who,
                "configuration.phase.end",
                Result.FAILED,
                run.name,
                targets=ids,
                reason=exc.reason,
                args={"phase": phase.index},
            )
            raise
        phase.state, phase.ended_at = "done", self.clock.now()
        await self._event(
            who,
            "configuration.phase.end",
            Result.OK,
            run.name,
            targets=ids,
            args={"phase": phase.index, "duration_s": round(phase.ended_at - phase.started_at, 3)},
        )
        self._notify()

    async def _run_phase(self, run: _Run, phase: _Phase, who: Origin) -> None:
        deadline = phase.started_at + phase.timeout_s if phase.started_at else math.inf
        moving: list[_Axis] = []
        for a in phase.axes:
            a.present = self._position(a.id)
            a.start = a.present
            if a.present is None:
                await self._fail_axis(run, a, who, f"{a.id} has no fresh position")
            left = a.left()
            locked = not a.move.lock or self._bolts(a.id, BOLTS_ENGAGED)
            if left is not None and left <= a.tolerance and locked:
                a.state, a.arrived_at = "in position", self.clock.now()
                await self._axis_event(run, a, who, Result.OK, "already in position")
            else:
                moving.append(a)
        # Locking bolts out first: a lift on its bolts does not run.
        releasing = [
            a
            for a in moving
            if a.info.bolts
            and not self._bolts(a.id, BOLTS_RELEASED)
            and (a.left() or 0.0) > a.tolerance
        ]
        if releasing:
            for a in releasing:
                a.state = "releasing"
                run.commanded.add(a.id)
            await self._commands(run, releasing, RELEASE_BOLTS, who)
            await self._watch(
                run,
                releasing,
                who,
                deadline,
                lambda a: self._bolts(a.id, BOLTS_RELEASED),
                f"bolts released within {self.settings.bolts_timeout_s:g} s",
                self.clock.now() + self.settings.bolts_timeout_s,
            )
        to_move = [a for a in moving if (a.left() or 0.0) > a.tolerance]
        await self._until_free(run, to_move, deadline)
        results = await asyncio.gather(
            *(self.machinery.move(a.id, move_args(a.info, a.move), who) for a in to_move),
            return_exceptions=True,
        )
        now = self.clock.now()
        for a in to_move:
            run.commanded.add(a.id)
            a.state, a.started_at, a.mark, a.mark_at = "moving", now, a.present, now
        errors = []
        for a, r in zip(to_move, results, strict=True):
            if isinstance(r, BaseException):
                errors.append(f"{a.id}: move refused: {r}")
                a.state, a.reason = "failed", f"move refused: {r}"
                await self._axis_event(run, a, who, Result.FAILED, a.reason)
        self._notify()
        if errors:
            raise SwitchFailed("; ".join(errors))
        await self._watch(run, to_move, who, deadline, self._arrived, "arrival", deadline)
        locking = [a for a in moving if a.move.lock]
        if locking:
            for a in locking:
                a.state = "locking"
            # Bolts engage only at standstill: within tolerance is not yet stopped.
            await self._watch(
                run,
                locking,
                who,
                deadline,
                self._standstill,
                f"standstill within {self.settings.bolts_timeout_s:g} s",
                self.clock.now() + self.settings.bolts_timeout_s,
            )
            await self._commands(run, locking, ENGAGE_BOLTS, who)
            await self._watch(
                run,
                locking,
                who,
                deadline,
                lambda a: self._bolts(a.id, BOLTS_ENGAGED),
                f"bolts engaged within {self.settings.bolts_timeout_s:g} s",
                self.clock.now() + self.settings.bolts_timeout_s,
            )
            for a in locking:
                a.state = "arrived"
                await self._axis_event(run, a, who, Result.OK, "arrived and locked")

    async def _until_free(self, run: _Run, axes: list[_Axis], deadline: float) -> None:
        """Wait, up to ``BUSY_WAIT_S``, while any of ``axes`` is still in its last move (the
        previous switch arrived within tolerance, the move ends at rest). One still busy after
        that has its move refused, with the supervisor's reason."""
        limit = min(deadline, self.clock.now() + BUSY_WAIT_S)
        while any(self.machinery.busy(a.id) for a in axes) and self.clock.now() < limit:
            self._check_abort(run)
            await self.clock.sleep(self.poll_s)

    def _standstill(self, a: _Axis) -> bool:
        pv = self.devices.read(a.id, "moving")
        return pv is None or (pv.quality == "good" and pv.value is False)

    def _bolts(self, axis: str, point: str) -> bool:
        return _true(self.devices.read(axis, point))

    async def _commands(self, run: _Run, axes: list[_Axis], command: str, who: Origin) -> None:
        """Bolt commands: machinery commands that are not moves, through ``Machinery`` as
        every machinery command (journalled as ``device.release_bolts``)."""
        results = await asyncio.gather(
            *(self.machinery.command(a.id, command, {}, who) for a in axes),
            return_exceptions=True,
        )
        errors = []
        for a, r in zip(axes, results, strict=True):
            if isinstance(r, BaseException):
                a.state, a.reason = "failed", f"{command} refused: {r}"
                errors.append(f"{a.id}: {a.reason}")
                await self._axis_event(run, a, who, Result.FAILED, a.reason)
        if errors:
            raise SwitchFailed("; ".join(errors))

    def _arrived(self, a: _Axis) -> bool:
        left = a.left()
        return left is not None and left <= a.tolerance

    async def _watch(
        self,
        run: _Run,
        axes: list[_Axis],
        who: Origin,
        phase_deadline: float,
        done: Callable[[_Axis], bool],
        what: str,
        deadline: float,
    ) -> None:
        """Tick until ``done`` holds for every axis; fail on abort, fault, stale, stall or
        timeout (the earlier of the step's and the phase's deadline)."""
        waiting = list(axes)
        limit = min(deadline, phase_deadline)
        moving_watch = what == "arrival"
        while waiting:
            self._check_abort(run)
            now = self.clock.now()
            for a in list(waiting):
                pv = self.devices.read(a.id, POSITION_POINT)
                if pv is not None and pv.quality == "good" and _number(pv.value):
                    a.present = float(pv.value)
                    if pv.ts is not None and self.clock.wall() - pv.ts > self.settings.stale_s:
                        await self._fail_axis(
                            run,
                            a,
                            who,
                            f"{a.id}: no fresh position for "
                            f"{self.clock.wall() - pv.ts:.1f} s (offline?)",
                        )
                else:
                    await self._fail_axis(
                        run,
                        a,
                        who,
                        f"{a.id}: its position is {pv.quality if pv else 'missing'} (offline?)",
                    )
                if _true(self.devices.read(a.id, "fault")):
                    code = self.devices.read(a.id, "fault_code")
                    detail = f" (fault_code {code.value})" if code is not None else ""
                    await self._fail_axis(run, a, who, f"{a.id} reported a fault{detail}")
                if _true(self.devices.read(a.id, "estop")):
                    await self._fail_axis(run, a, who, f"{a.id}: e-stop active")
                if done(a):
                    waiting.remove(a)
                    if moving_watch:
                        a.state, a.arrived_at = "arrived", now
                        if not a.move.lock:
                            await self._axis_event(run, a, who, Result.OK, "arrived")
                    continue
                if moving_watch and a.present is not None:
                    if a.mark is None or abs(a.present - a.mark) > a.tolerance / 5:
                        a.mark, a.mark_at = a.present, now
                    elif now - a.mark_at > self.settings.stall_s:
                        await self._fail_axis(
                            run,
                            a,
                            who,
                            f"{a.id} stopped short of its target: at {a.present:g} of "
                            f"{a.move.position:g} {a.info.unit}, no movement for "
                            f"{self.settings.stall_s:g} s (stopped elsewhere?)".replace("  ", " "),
                        )
            self._notify()
            if not waiting:
                return
            if now >= limit:
                late = ", ".join(
                    f"{a.id} at {a.present:g}" if a.present is not None else a.id for a in waiting
                )
                reason = (
                    f"phase {axes[0].phase + 1} timed out after "
                    f"{now - (run.phases[axes[0].phase].started_at or now):.1f} s waiting for "
                    f"{what}: {late}"
                )
                for a in waiting:
                    a.state, a.reason = "failed", reason
                    await self._axis_event(run, a, who, Result.FAILED, reason)
                raise SwitchFailed(reason)
            await self.clock.sleep(self.poll_s)

    async def _fail_axis(self, run: _Run, a: _Axis, who: Origin, reason: str) -> None:
        a.state, a.reason = "failed", reason
        await self._axis_event(run, a, who, Result.FAILED, reason)
        raise SwitchFailed(reason)

    def _check_abort(self, run: _Run) -> None:
        if run.abort is not None:
            raise _Aborted(run.abort)

    async def _stop_all(self, run: _Run, who: Origin) -> None:
        """A controlled stop of every axis the switch commanded, at once; failures named."""
        axes = sorted(run.commanded)
        if not axes:
            return
        results = await asyncio.gather(
            *(self.machinery.stop(axis, who) for axis in axes), return_exceptions=True
        )
        failed = [
            f"{axis}: {type(r).__name__}: {r}"
            for axis, r in zip(axes, results, strict=True)
            if isinstance(r, BaseException)
        ]
        by_id = {a.id: a for a in run.axes}
        for axis in axes:
            a = by_id[axis]
            if a.state in ("moving", "releasing", "locking", "pending"):
                a.state = "stopped"
                a.present = self._position(axis) if self._position(axis) is not None else a.present
                await self._axis_event(run, a, who, Result.FAILED, f"stopped: {run.reason}")
        for p in run.phases:
            if p.state == "running":
                p.state = "stopped" if run.state == "aborted" else "failed"
        if failed:
            run.reason += "; the stop failed for " + "; ".join(failed)

    # --- journal --------------------------------------------------------------------------

    async def _axis_event(
        self, run: _Run, a: _Axis, who: Origin, result: Result, reason: str
    ) -> None:
        started = a.started_at if a.started_at is not None else self.clock.now()
        await self._event(
            who,
            "configuration.axis",
            result,
            run.name,
            targets=(a.id,),
            reason=reason,
            args={
                "phase": a.phase,
                "start": a.start,
                "target": a.move.position,
                "present": a.present,
                "unit": a.info.unit,
                "duration_s": round(self.clock.now() - started, 3),
            },
        )

    async def _event(
        self,
        origin: Origin,
        command: str,
        result: Result,
        configuration: str | None,
        *,
        reason: str = "",
        targets: tuple[str, ...] = (),
        args: Mapping[str, Any] | None = None,
        requested: float | None = None,
    ) -> None:
        now = self.clock.wall()
        event = JournalEvent(
            kind=origin.kind,
            source=origin.source,
            command=command,
            result=result,
            requested=requested if requested is not None else now,
            executed=None if result is Result.REFUSED else now,
            reason=reason,
            targets=targets,
            args={"configuration": configuration, **(args or {})},
        )
        try:
            await asyncio.shield(self.journal.append(event))
        except asyncio.CancelledError:
            raise
        except JournalHeld as held:  # written when the journal can: late, not lost
            log.warning("%s: %s", command, held)
        except Exception:  # the journal failing must not leave machinery moving unwatched
            log.exception("journal append failed for %s", command)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _true(pv: Any) -> bool:
    return pv is not None and getattr(pv, "quality", "good") == "good" and pv.value is True


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else t - t0


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None or not math.isfinite(v) else round(v, digits)


__all__ = ["LAYER", "NO_SOUNDFIELD", "SwitchFailed", "Switcher", "estimate_s"]
