"""The safety supervisor: every motion command passes here, and so does every axis's status.

What it holds (docs/machinery.md is the operator's reference):

- **Axes**: each machinery device with its limits (``AxisLimits``: soft limits inside the
  drive's travel, speed, acceleration, jerk, load, following error) and its EN 17206 use case.
  Its state (``AxisState``) follows from its latest status and from what the supervisor asked:
  offline, disabled, idle, moving, stopping, faulted, e-stopped.
- **Moves**: one plan (``controller.motion.planner``) for one or several axes; setpoints along
  it are streamed every cycle through ``AxisIO.stream`` (the drivers write them with the
  heartbeat). A move is refused, with the reason and nothing moving, when any rule would be
  broken: software E-stop latched, no live hold-to-run enable, an axis unknown / offline /
  faulted / e-stopped / stale / already moving, a target outside the soft limits or not a
  number, a speed above the axis's or its use case's limit, a locked group moved in part, an
  interlock blocking, a collision zone entered anywhere along the planned trajectories of every
  axis (moving ones included). A performer move waits for a second operator's confirmation.
- **Aborts**, checked on every status and every cycle: overload and slack rope (load cell),
  following error, stale telemetry, the enable released, an interlock starting to block, a
  soft limit passed, a drive fault or e-stop input. An abort stops the axis — and its whole
  group when the group is ``safe`` or ``locked`` — and says why.
- **Software E-stop**: latched; stops every axis at once (``MachineryConfig.stop_category``);
  a drive's e-stop input latches it too. Its reset is explicit and refused while any axis
  still reports its e-stop input.

Stops (IEC 60204-1), what ``AxisIO.stop`` is asked for:

- ``CONTROLLED`` (category 2): ramp down at the move's deceleration and hold under power: the
  operator's or a cue's stop, the enable released.
- ``QUICK`` (category 1: the drive's quick-stop ramp, then power off and the brake applied):
  aborts of an axis or a group, panic, and the software E-stop (``stop_category = 1``, the
  default).
- ``QUICK_HOLD`` (category 2 at the quick-stop deceleration): the software E-stop with
  ``stop_category = 2``.
- ``PARK``: an axis that arrived goes off power onto its brake.

The supervisor is plain logic over ``AxisIO`` (the drivers, wired by edge/) and a clock, so the
cycle can be driven by ``tick(now)`` in tests; ``run()`` ticks it at ``cycle_hz`` on drift-free
deadlines. Everything it decides is journalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from controller.journal import JournalEvent, JournalHeld, JournalSink, Origin, Result, SourceKind
from controller.motion.config import USE_CASES, AxisLimits, MachineryConfig
from controller.motion.learning import Learning
from controller.motion.planner import Kinematics, Plan, PlanError, State, plan_move
from controller.motion.zones import Track, Zone, check_zones
from drivers.model import CommandError

log = logging.getLogger(__name__)

SUPERVISOR = Origin(SourceKind.SYSTEM, "safety supervisor")
ARRIVAL_TOLERANCE = 1.0  # arrived: at rest within this of its target (the map's in_position)
SETTLE_TOLERANCE = 10.0  # past its plan and this close, a move gives way to the next one
LAG_CYCLES = 2.0  # a status may lag the plan by up to this many cycles (following error band)
CATCH_UP = 2.0  # 1/s: extra speed per unit the axis lags behind its plan
MIN_SPEED = 1.0  # the lowest speed limit a drive takes (the map's register 102 minimum)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: for one synchronous step that must not stall."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class MotionRefused(CommandError):
    """A motion command the supervisor will not carry out; the message says why."""


class StopKind(StrEnum):
    CONTROLLED = "controlled"  # category 2: the move's deceleration, holding under power
    QUICK = "quick"  # category 1: the quick-stop ramp, then power off and brake
    QUICK_HOLD = "quick-hold"  # category 2 at the quick-stop deceleration, holding under power
    PARK = "park"  # at rest after a move: power off, brake applied


class AxisState(StrEnum):
    OFFLINE = "offline"
    DISABLED = "disabled"
    IDLE = "idle"
    MOVING = "moving"
    STOPPING = "stopping"
    FAULTED = "faulted"
    ESTOPPED = "e-stopped"


@dataclass(frozen=True, slots=True)
class AxisStatus:
    """One decoded status of an axis, with its monotonic receive time."""

    t: float
    position: float | None
    velocity: float | None = 0.0
    load: float | None = None
    enabled: bool = False
    fault: bool = False
    estop: bool = False
    fault_code: int = 0
    good: bool = True


class AxisIO(Protocol):
    """The drivers, as the supervisor drives them."""

    def stream(self, axis: str, target: float, speed: float, acceleration: float) -> None:
        """The setpoint the next cycle writes (run to ``target``), with the heartbeat."""
        ...

    def stop(self, axis: str, kind: StopKind) -> Awaitable[object]:
        """Write a stop now, outside the cycle: an implementation that can put the frame on
        the wire in this call should (the E-stop fan-out calls it for every axis before it
        awaits anything); the awaitable completes when the drive has answered."""
        ...

    async def enable(self, axis: str) -> None:
        """Switch the drive on (holding where it is), ready for setpoints."""
        ...


PointReader = Callable[[str, str], Any]
"""Latest good value of a device point, or None (interlock conditions)."""


@dataclass
class Move:
    id: int
    plan: Plan
    targets: dict[str, float]
    speeds: dict[str, float]
    accelerations: dict[str, float]
    origin: Origin
    created: float
    start: float | None = None  # monotonic, once streaming
    state: str = "pending"  # pending (confirmation), running, done, aborted, refused
    reason: str = ""
    confirmed_by: str | None = None
    warnings: list[str] = field(default_factory=list)  # beyond what the axes have shown
    max_error: dict[str, float] = field(default_factory=dict)  # each axis's worst following error
    triggers: list[tuple[str, float, asyncio.Event]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def axes(self) -> tuple[str, ...]:
        return self.plan.axes

    def elapsed(self, now: float) -> float:
        return 0.0 if self.start is None else max(0.0, now - self.start)


@dataclass
class _Axis:
    name: str
    limits: AxisLimits
    status: AxisStatus | None = None
    move: Move | None = None
    stopping: bool = False
    aborted: str = ""  # why the last move of this axis stopped short
    following_error: float | None = None  # of the last status, while moving
    bad_statuses: int = 0  # statuses with no usable position (a read that failed), counted
    # position waits: (position, tolerance, future given the status time), checked per status
    waits: list[tuple[float, float, asyncio.Future[float]]] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        config: MachineryConfig,
        limits: Mapping[str, AxisLimits],
        io: AxisIO,
        journal: JournalSink,
        *,
        points: PointReader | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.io = io
        self.journal = journal
        self.points = points or (lambda device, point: None)
        self.clock = clock
        self.wall = wall
        self.axes = {name: _Axis(name, lim) for name, lim in limits.items()}
        self.zones = [Zone(z.name, tuple(z.axes), z.min_gap, dict(z.offsets)) for z in config.zones]
        self.period = 1.0 / config.cycle_hz
        self.estop_latched = False
        self.estop_reason = ""
        self.enables: dict[str, float] = {}  # holder -> monotonic expiry
        self.moves: dict[int, Move] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop_flag = asyncio.Event()
        self.late_ticks = 0
        self.ticks = 0
        self.learning = Learning()

    # --- observation -----------------------------------------------------------------------

    def stale(self, ax: _Axis, now: float) -> bool:
        st = ax.status
        return (
            st is None
            or not st.good
            or st.position is None
            or now - st.t > self.config.stale_cycles * self.period
        )

    def state(self, axis: str, now: float | None = None) -> AxisState:
        ax = self.axes[axis]
        t = self.clock() if now is None else now
        st = ax.status
        if self.stale(ax, t) or st is None:
            return AxisState.OFFLINE
        if st.estop:
            return AxisState.ESTOPPED
        if st.fault:
            return AxisState.FAULTED
        if ax.move is not None and ax.move.state == "running":
            return AxisState.MOVING
        if ax.stopping or abs(st.velocity or 0.0) > 0.5:
            return AxisState.STOPPING
        return AxisState.IDLE if st.enabled else AxisState.DISABLED

    def enabled(self, now: float | None = None) -> bool:
        t = self.clock() if now is None else now
        return any(exp > t for exp in self.enables.values())

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        axes = {}
        for name, ax in self.axes.items():
            st, lim = ax.status, ax.limits
            axes[name] = {
                "state": self.state(name, now).value,
                "position": None if st is None else st.position,
                "velocity": None if st is None else st.velocity,
                "load": None if st is None else st.load,
                "fault_code": None if st is None else st.fault_code,
                "soft_min": lim.soft_min,
                "soft_max": lim.soft_max,
                "max_speed": lim.speed,
                "use_case": lim.use_case.value,
                "group": lim.group,
                "move": None if ax.move is None else ax.move.id,
                "last_abort": ax.aborted,
                "bad_statuses": ax.bad_statuses,
                "shown": self.learning.shown(name),
            }
        return {
            "estop": {"latched": self.estop_latched, "reason": self.estop_reason},
            "enable": {"live": self.enabled(now), "holders": sorted(self.enables)},
            "axes": axes,
            "moves": [self.move_view(m, now) for m in self.moves.values()],
            "cycle": {"hz": self.config.cycle_hz, "ticks": self.ticks, "late": self.late_ticks},
        }

    def move_view(self, m: Move, now: float) -> dict[str, Any]:
        t = m.elapsed(now)
        return {
            "id": m.id,
            "state": m.state,
            "axes": list(m.axes),
            "targets": m.targets,
            "duration_s": m.plan.duration,
            "progress": min(1.0, t / m.plan.duration) if m.plan.duration > 0 else 1.0,
            "remaining_s": max(0.0, m.plan.duration - t) if m.start is not None else None,
            "reason": m.reason,
            "source": m.origin.source,
            "warnings": m.warnings,
        }

    # --- journal ---------------------------------------------------------------------------

    async def journal_event(
        self,
        origin: Origin,
        command: str,
        result: Result,
        *,
        targets: Sequence[str] = (),
        reason: str = "",
        args: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one event; a failing journal is logged and never stops a stop."""
        now = self.wall()
        try:
            await self.journal.append(
                JournalEvent(
                    kind=origin.kind,
                    source=origin.source,
                    command=command,
                    result=result,
                    requested=now,
                    executed=None if result is Result.REFUSED else now,
                    reason=reason,
                    targets=tuple(targets),
                    args=dict(args or {}),
                )
            )
        except JournalHeld as held:  # written when the journal can: late, not lost
            log.warning("%s: %s", command, held)
        except Exception:  # the journal must never stop a stop
            log.exception("journal append failed for %s", command)

    async def _refuse(
        self, origin: Origin, command: str, reason: str, targets: Sequence[str] = ()
    ) -> MotionRefused:
        await self.journal_event(origin, command, Result.REFUSED, targets=targets, reason=reason)
        return MotionRefused(reason)

    # --- hold-to-run -----------------------------------------------------------------------

    def keep_enabled(self, holder: str, now: float | None = None) -> float:
        """Renew ``holder``'s hold-to-run enable; returns its expiry (monotonic)."""
        if not holder:
            raise MotionRefused("an enable needs the holder's name")
        t = self.clock() if now is None else now
        exp = t + self.config.enable_timeout_s
        self.enables[holder] = exp
        return exp

    def release_enable(self, holder: str) -> None:
        self.enables.pop(holder, None)

    # --- E-stop ----------------------------------------------------------------------------

    async def estop(self, origin: Origin, reason: str = "software E-stop") -> dict[str, str]:
        """Latch the E-stop and stop every axis at once; returns axes whose stop failed."""
        first = not self.estop_latched
        self.estop_latched = True
        if first:
            self.estop_reason = reason
        for m in list(self.moves.values()):
            self._end(m, "aborted", f"E-stop: {reason}")
        kind = StopKind.QUICK if self.config.stop_category == 1 else StopKind.QUICK_HOLD
        failures = await self._stop_axes(list(self.axes), kind)
        await self.journal_event(
            origin,
            "estop",
            Result.FAILED if failures else Result.OK,
            targets=list(self.axes),
            reason="; ".join(f"{k}: {v}" for k, v in sorted(failures.items())) or reason,
        )
        return failures

    async def reset_estop(self, origin: Origin) -> None:
        """Unlatch the software E-stop: a person's explicit act (a user origin: never a cue,
        a schedule or the supervisor), refused while any axis reports its e-stop input, or
        cannot report it (offline: an input not known to be clear is not clear)."""
        if origin.kind is not SourceKind.USER:
            raise await self._refuse(
                origin, "estop.reset", "an E-stop is reset by an operator, not by a cue or script"
            )
        now = self.clock()
        active = [n for n, ax in self.axes.items() if ax.status is not None and ax.status.estop]
        if active:
            raise await self._refuse(
                origin,
                "estop.reset",
                f"E-stop inputs still active on {', '.join(sorted(active))}: clear them first",
            )
        unknown = [n for n in self.axes if self.state(n, now) is AxisState.OFFLINE]
        if unknown:
            raise await self._refuse(
                origin,
                "estop.reset",
                f"E-stop inputs unknown on {', '.join(sorted(unknown))} (offline): bring them "
                "back, or take them out of the venue, first",
            )
        self.estop_latched = False
        self.estop_reason = ""
        await self.journal_event(origin, "estop.reset", Result.OK, targets=list(self.axes))

    # --- moves -----------------------------------------------------------------------------

    async def move(
        self,
        targets: Mapping[str, float],
        origin: Origin,
        *,
        speed: float | Mapping[str, float] | None = None,
        acceleration: float | Mapping[str, float] | None = None,
        relative: bool = False,
        synchronized: bool = True,
    ) -> Move:
        """Check and plan a move (``speed``/``acceleration``: one for every axis, or per axis;
        None: each axis's limit), then start it (or hold it for confirmation when a performer
        axis is in it). Raises ``MotionRefused`` with the reason; nothing moves then."""
        now = self.clock()
        names = list(targets)
        try:
            move = self._plan(targets, now, speed, acceleration, relative, synchronized, origin)
        except MotionRefused as exc:
            raise await self._refuse(origin, "move", str(exc), names) from None
        self.moves[move.id] = move
        args = {
            "move": move.id,
            "targets": move.targets,
            "duration_s": round(move.plan.duration, 3),
            **({"warnings": move.warnings} if move.warnings else {}),
        }
        needs_two = any(USE_CASES[self.axes[a].limits.use_case].two_person for a in names)
        if needs_two:
            await self.journal_event(origin, "move.request", Result.OK, targets=names, args=args)
            self._spawn(self._expire(move))
            return move
        await self._start(move, origin)
        return move

    async def confirm(self, move_id: int, origin: Origin) -> Move:
        """The second person's confirmation of a pending (performer) move."""
        move = self.moves.get(move_id)
        if move is None or move.state != "pending":
            raise await self._refuse(
                origin, "move.confirm", f"no move {move_id} awaits confirmation"
            )
        if origin.kind is not SourceKind.USER:
            raise await self._refuse(
                origin,
                "move.confirm",
                "two-person rule: a person confirms, not a cue or script",
                list(move.axes),
            )
        if origin.source == move.origin.source:
            raise await self._refuse(
                origin,
                "move.confirm",
                "two-person rule: the confirmation must come from another operator than "
                f"'{move.origin.source}'",
                list(move.axes),
            )
        # the world may have changed since the request: check everything again
        try:
            self._check_axes(list(move.axes), self.clock(), origin)
        except MotionRefused as exc:
            self._end(move, "refused", str(exc))
            raise await self._refuse(origin, "move.confirm", str(exc), list(move.axes)) from None
        move.confirmed_by = origin.source
        await self._start(move, origin)
        return move

    async def _expire(self, move: Move) -> None:
        await asyncio.sleep(self.config.confirm_timeout_s)
        if move.state == "pending":
            self._end(move, "refused", "no second confirmation in time")
            await self.journal_event(
                SUPERVISOR,
                "move.expired",
                Result.REFUSED,
                targets=list(move.axes),
                reason=f"move {move.id}: no second confirmation in "
                f"{self.config.confirm_timeout_s:g} s",
            )

    def _check_axes(self, names: list[str], now: float, origin: Origin) -> None:
        if self.estop_latched:
            raise MotionRefused(f"E-stop is latched ({self.estop_reason}): reset it first")
        if not self.enabled(now):
            raise MotionRefused("no hold-to-run enable: hold the enable while the axes move")
        for a in names:
            if a not in self.axes:
                raise MotionRefused(f"no axis '{a}'")
            st = self.state(a, now)
            if st in (AxisState.OFFLINE, AxisState.FAULTED, AxisState.ESTOPPED):
                extra = ""
                status = self.axes[a].status
                if st is AxisState.FAULTED and status is not None:
                    extra = f" (fault code {status.fault_code})"
                raise MotionRefused(f"{a} is {st.value}{extra}")
            busy = self.axes[a].move
            if busy is not None and self._settling(busy, now):
                self._finish(busy)  # its plan is over: it only settles on its target
                busy = None
            if busy is not None and busy.state in ("running", "pending"):
                raise MotionRefused(f"{a} is already in move {busy.id}: stop it first")
            if st is AxisState.STOPPING:
                raise MotionRefused(f"{a} is still stopping")
        blocked = self._blocking_interlocks(names)
        if blocked:
            raise MotionRefused(blocked[0])

    def _plan(
        self,
        targets: Mapping[str, float],
        now: float,
        speed: float | Mapping[str, float] | None,
        acceleration: float | Mapping[str, float] | None,
        relative: bool,
        synchronized: bool,
        origin: Origin,
    ) -> Move:
        names = list(targets)
        if not names:
            raise MotionRefused("a move needs at least one axis")

        def per_axis(name: str, given: float | Mapping[str, float] | None) -> dict[str, float]:
            values = dict(given) if isinstance(given, Mapping) else {}
            if given is not None and not isinstance(given, Mapping):
                values = dict.fromkeys(names, given)
            for value in values.values():
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not math.isfinite(value)
                    or value <= 0
                ):
                    raise MotionRefused(f"{name} must be a finite number > 0, not {value!r}")
            return values

        speeds_in = per_axis("speed", speed)
        accels_in = per_axis("acceleration", acceleration)
        self._check_axes(names, now, origin)
        for group in {self.axes[a].limits.group for a in names} - {None}:
            mode = self.config.groups[group].mode if group in self.config.groups else "free"
            members = {n for n, ax in self.axes.items() if ax.limits.group == group}
            if mode == "locked" and not members <= set(names):
                missing = ", ".join(sorted(members - set(names)))
                raise MotionRefused(f"group '{group}' is locked: move it whole (missing {missing})")
        states: dict[str, State] = {}
        absolute: dict[str, float] = {}
        kin: dict[str, Kinematics] = {}
        speeds: dict[str, float] = {}
        accels: dict[str, float] = {}
        for a in names:
            ax = self.axes[a]
            lim = ax.limits
            st = ax.status
            assert st is not None
            assert st.position is not None
            value = targets[a]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise MotionRefused(f"{a}: target must be a number, not {value!r}")
            if not math.isfinite(value):
                raise MotionRefused(f"{a}: target must be a finite number, not {value!r}")
            goal = st.position + value if relative else float(value)
            if not lim.rotary and not lim.soft_min <= goal <= lim.soft_max:
                raise MotionRefused(
                    f"{a}: target {goal:g} is outside its soft limits "
                    f"{lim.soft_min:g} … {lim.soft_max:g}"
                )
            cap = lim.speed
            rule = USE_CASES[lim.use_case]
            if rule.speed_cap is not None:
                cap = min(cap, float(getattr(self.config, rule.speed_cap)))
            v = float(speeds_in.get(a, cap))
            if v > cap:
                why = f" ({lim.use_case.value})" if cap < lim.speed else ""
                raise MotionRefused(f"{a}: speed {v:g} is above its limit {cap:g}{why}")
            acc = float(accels_in.get(a, lim.acceleration))
            if acc > lim.acceleration:
                raise MotionRefused(
                    f"{a}: acceleration {acc:g} is above its limit {lim.acceleration:g}"
                )
            states[a] = State(st.position, 0.0)
            absolute[a] = goal
            kin[a] = Kinematics(v, acc, lim.jerk)
            speeds[a], accels[a] = v, acc
        try:
            plan = plan_move(states, absolute, kin, synchronized=synchronized)
        except PlanError as exc:
            raise MotionRefused(str(exc)) from None
        for a in names:
            lim = self.axes[a].limits
            if lim.rotary:
                continue
            lo, hi = plan.extrema(a)
            if lo < lim.soft_min - 1e-6 or hi > lim.soft_max + 1e-6:
                raise MotionRefused(f"{a}: the path leaves its soft limits ({lo:g} … {hi:g})")
        conflict = check_zones(self.zones, self._tracks(now, plan, now), now, moving=names)
        if conflict is not None:
            raise MotionRefused(str(conflict))
        move = Move(next(self._ids), plan, absolute, speeds, accels, origin, now)
        peaks = plan.peaks()
        move.warnings = self.learning.warnings(
            {a: p[0] for a, p in peaks.items()}, {a: p[1] for a, p in peaks.items()}
        )
        return move

    def _tracks(self, now: float, new: Plan | None = None, start: float = 0.0) -> dict[str, Track]:
        tracks: dict[str, Track] = {}
        for name, ax in self.axes.items():
            st = ax.status
            pos = st.position if st is not None and st.position is not None else math.nan
            if new is not None and name in new.index:
                tracks[name] = Track(pos, new, start)
            elif ax.move is not None and ax.move.state == "running" and ax.move.start is not None:
                tracks[name] = Track(pos, ax.move.plan, ax.move.start)
            elif not math.isnan(pos):
                tracks[name] = Track(pos)
        return tracks

    async def _start(self, move: Move, origin: Origin) -> None:
        results = await asyncio.gather(
            *(self.io.enable(a) for a in move.axes), return_exceptions=True
        )
        failed = {
            a: r for a, r in zip(move.axes, results, strict=True) if isinstance(r, BaseException)
        }
        if failed:
            reason = "; ".join(f"{a}: {r}" for a, r in failed.items())
            self._end(move, "refused", f"could not enable: {reason}")
            await self.journal_event(
                origin, "move", Result.FAILED, targets=list(move.axes), reason=reason
            )
            raise MotionRefused(f"could not enable: {reason}")
        move.state = "running"
        move.start = self.clock()
        for a in move.axes:
            ax = self.axes[a]
            ax.move, ax.stopping, ax.aborted = move, False, ""
        self._stream(move, move.start)
        await self.journal_event(
            origin,
            "move",
            Result.OK,
            targets=list(move.axes),
            args={
                "move": move.id,
                "targets": move.targets,
                "duration_s": round(move.plan.duration, 3),
                **({"confirmed_by": move.confirmed_by} if move.confirmed_by else {}),
                **({"warnings": move.warnings} if move.warnings else {}),
            },
        )

    def at_position(self, axis: str, position: float, tolerance: float) -> asyncio.Future[float]:
        """A future given the status time once ``axis`` reports a good position within
        ``tolerance`` of ``position`` (the cue engine's ``wait.position``, at the cycle's rate).
        Cancel it to stop waiting."""
        ax = self.axes.get(axis)
        if ax is None:
            raise MotionRefused(f"no axis '{axis}'")
        if not (math.isfinite(position) and math.isfinite(tolerance) and tolerance >= 0):
            raise MotionRefused(f"{axis}: a position wait needs a finite position and tolerance")
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        ax.waits.append((float(position), float(tolerance), fut))
        if ax.status is not None:
            self._check_waits(ax, ax.status)
        return fut

    def _check_waits(self, ax: _Axis, st: AxisStatus) -> None:
        keep = []
        for position, tolerance, fut in ax.waits:
            if fut.done():
                continue
            if st.good and st.position is not None and abs(st.position - position) <= tolerance:
                fut.set_result(st.t)
            else:
                keep.append((position, tolerance, fut))
        ax.waits = keep

    def trigger(self, move: Move, axis: str, position: float) -> asyncio.Event:
        """An event set when ``axis`` of ``move`` passes ``position`` (position-triggered cues)."""
        if axis not in move.plan.index:
            raise MotionRefused(f"{axis} is not in move {move.id}")
        ev = asyncio.Event()
        move.triggers.append((axis, float(position), ev))
        return ev

    # --- stops -----------------------------------------------------------------------------

    async def stop(
        self, axes: Iterable[str], origin: Origin, kind: StopKind = StopKind.CONTROLLED
    ) -> dict[str, str]:
        names = list(axes)
        unknown = [a for a in names if a not in self.axes]
        if unknown:
            raise await self._refuse(origin, "stop", f"no axis '{unknown[0]}'", names)
        for a in names:
            m = self.axes[a].move
            if m is not None and m.state in ("running", "pending"):
                self._end(m, "aborted", f"stopped by {origin.source or origin.kind.value}")
        failures = await self._stop_axes(names, kind)
        await self.journal_event(
            origin,
            "stop",
            Result.FAILED if failures else Result.OK,
            targets=names,
            reason="; ".join(f"{k}: {v}" for k, v in sorted(failures.items())),
            args={"kind": kind.value},
        )
        return failures

    async def stop_all(self, origin: Origin) -> dict[str, str]:
        return await self.stop(list(self.axes), origin)

    async def _stop_axes(self, names: Sequence[str], kind: StopKind) -> dict[str, str]:
        for a in names:
            self.axes[a].stopping = True
        # Every stop frame is written in this one step (``io.stop``); a cyclic collection
        # falling due in it would hold all of them back (a full one takes tens of ms in the
        # service's heap), so the collector waits until they are on the wire.
        with collector_paused():
            stops = [self.io.stop(a, kind) for a in names]
        results = await asyncio.gather(*stops, return_exceptions=True)
        return {
            a: f"{type(r).__name__}: {r}"
            for a, r in zip(names, results, strict=True)
            if isinstance(r, BaseException)
        }

    def _end(self, move: Move, state: str, reason: str = "") -> None:
        if move.state in ("done", "aborted", "refused"):
            return
        move.state, move.reason = state, reason
        for a in move.axes:
            ax = self.axes[a]
            if ax.move is move:
                ax.move = None
                if state == "aborted":
                    ax.aborted = reason
        move.done.set()
        self.moves.pop(move.id, None)

    async def _abort(
        self, axes: Sequence[str], reason: str, kind: StopKind = StopKind.QUICK
    ) -> None:
        """Stop ``axes`` and every axis their safe/locked groups hold, and the moves they are in."""
        hit = set(axes)
        for a in list(hit):
            group = self.axes[a].limits.group
            cfg = self.config.groups.get(group) if group is not None else None
            if cfg is not None and cfg.mode in ("safe", "locked"):
                hit |= {n for n, ax in self.axes.items() if ax.limits.group == group}
        for a in list(hit):
            m = self.axes[a].move
            if m is not None:
                hit |= set(m.axes)
                self._end(m, "aborted", reason)
        names = sorted(hit)
        log.warning("abort %s: %s", ", ".join(names), reason)
        failures = await self._stop_axes(names, kind)
        await self.journal_event(
            SUPERVISOR,
            "abort",
            Result.FAILED if failures else Result.OK,
            targets=names,
            reason=reason
            + ("; " + "; ".join(f"{k}: {v}" for k, v in failures.items()) if failures else ""),
        )

    # --- inputs: statuses ------------------------------------------------------------------

    def status(self, axis: str, st: AxisStatus) -> None:
        """A status of ``axis`` arrived: keep it and run the checks that depend on it."""
        ax = self.axes.get(axis)
        if ax is None:
            return
        if not st.good and ax.status is not None and ax.status.good:
            # No usable position (a read that failed or timed out): as no status at all. The
            # axis keeps its last good status, which goes stale after ``stale_cycles``
            # cycles, and ``tick`` stops a move then ("stale telemetry"), so one lost read
            # does not abort a move but a lost link does, within the configured time. A
            # fault or e-stop flag it carries is still acted on at once, below.
            ax.bad_statuses += 1
            if not (st.estop or st.fault):
                return
        ax.status = st
        if ax.stopping and abs(st.velocity or 0.0) <= 0.5 and ax.move is None:
            ax.stopping = False
        ax.following_error = None
        if ax.waits:
            self._check_waits(ax, st)
        reason = self._status_abort(ax, st)
        if st.good:
            self.learning.observe(axis, st.t, st.velocity, st.load, ax.following_error)
        if reason is not None:
            if st.estop and not self.estop_latched:
                self._spawn(self.estop(SUPERVISOR, f"e-stop input of {axis}"))
            elif ax.move is not None:
                self._spawn(self._abort([axis], reason))

    def _status_abort(self, ax: _Axis, st: AxisStatus) -> str | None:
        lim = ax.limits
        if st.estop:
            return f"{ax.name}: e-stop input"
        if ax.move is None or ax.move.state != "running":
            return None
        if st.fault:
            return f"{ax.name}: drive fault {st.fault_code}"
        if not st.good or st.position is None:
            return f"{ax.name}: bad status"
        if lim.max_load is not None and st.load is not None and st.load > lim.max_load:
            return f"{ax.name}: overload {st.load:g} > {lim.max_load:g}"
        if lim.min_load is not None and st.load is not None and st.load < lim.min_load:
            return f"{ax.name}: slack rope (load {st.load:g} < {lim.min_load:g})"
        if not lim.rotary and not (lim.soft_min - 1.0 <= st.position <= lim.soft_max + 1.0):
            return f"{ax.name}: position {st.position:g} outside its soft limits"
        move = ax.move
        if move.start is not None:
            # Where the plan says the axis is, give or take the cycle's timing: the speed sent
            # is the plan's one cycle ahead, and a status can be a cycle or two old.
            p, v, _ = move.plan.at(st.t - move.start)
            i = move.plan.index[ax.name]
            expected = float(p[i])
            ends = (
                expected - float(v[i]) * LAG_CYCLES * self.period,
                expected + float(v[i]) * self.period,
            )
            lo, hi = min(ends), max(ends)
            err = (
                0.0
                if lo <= st.position <= hi
                else min(abs(st.position - lo), abs(st.position - hi))
            )
            ax.following_error = err
            if err > move.max_error.get(ax.name, -1.0):
                move.max_error[ax.name] = err
            if err > lim.following_error:
                return (
                    f"{ax.name}: following error {err:.0f} > {lim.following_error:g} "
                    f"(at {st.position:.0f}, planned {expected:.0f})"
                )
        return None

    # --- the cycle -------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """One cycle: stream every running move's setpoints and run the time-based checks."""
        self.ticks += 1
        if self.enables:
            for holder, exp in list(self.enables.items()):
                if exp <= now:
                    del self.enables[holder]
        moving = [m for m in self.moves.values() if m.state == "running"]
        if moving and not self.enabled(now):
            axes = [a for m in moving for a in m.axes]
            for m in moving:
                self._end(m, "aborted", "hold-to-run enable released")
            self._spawn(self._released(axes))
            return
        for m in moving:
            stale = [a for a in m.axes if self.stale(self.axes[a], now)]
            if stale:
                self._spawn(self._abort(stale, f"stale telemetry from {', '.join(stale)}"))
                continue
            blocked = self._blocking_interlocks(list(m.axes))
            if blocked:
                self._spawn(self._abort(list(m.axes), blocked[0]))
                continue
            self._stream(m, now)
            self._fire_triggers(m)
            if self._arrived(m, now):
                self._finish(m)
                self._spawn(self._park(list(m.axes)))

    def busy(self, axis: str, now: float | None = None) -> bool:
        """``axis`` is in a move a new one would be refused for: pending or running, and not
        yet settling on its target (a settling move gives way)."""
        ax = self.axes.get(axis)
        m = ax.move if ax is not None else None
        if m is None or m.state not in ("running", "pending"):
            return False
        return not self._settling(m, self.clock() if now is None else now)

    def _settling(self, m: Move, now: float) -> bool:
        """``m``'s plan is over and every axis is within ``SETTLE_TOLERANCE`` of its target,
        still closing the last of the distance on the drive's own ramp."""
        if m.state != "running" or m.start is None or now - m.start < m.plan.duration:
            return False
        for a in m.axes:
            st = self.axes[a].status
            if st is None or st.position is None:
                return False
            if abs(st.position - m.targets[a]) > SETTLE_TOLERANCE:
                return False
        return True

    def _finish(self, m: Move) -> None:
        """A move arrived: journalled with each axis's worst following error, which the
        learning reads back at the next start (``Learning.learn_moves``)."""
        self._end(m, "done")
        args: dict[str, Any] = {"move": m.id}
        if m.max_error:
            args["following_error"] = {a: round(e, 1) for a, e in sorted(m.max_error.items())}
        self._spawn(
            self.journal_event(m.origin, "move.done", Result.OK, targets=list(m.axes), args=args)
        )

    async def _park(self, axes: list[str]) -> None:
        """Axes that arrived go onto their brakes (a failure is logged: the drive holds)."""
        results = await asyncio.gather(
            *(self.io.stop(a, StopKind.PARK) for a in axes), return_exceptions=True
        )
        for a, r in zip(axes, results, strict=True):
            if isinstance(r, BaseException):
                log.warning("%s: parking after its move failed: %s", a, r)

    def may_actuate(self, axis: str, *, needs_enable: bool) -> str | None:
        """Why a machinery command other than a move (bolts, a fault reset) may not go to
        ``axis`` now, or None."""
        if needs_enable and self.estop_latched:
            return f"E-stop is latched ({self.estop_reason})"
        if needs_enable and not self.enabled():
            return "no hold-to-run enable"
        ax = self.axes[axis]
        if ax.move is not None and ax.move.state in ("running", "pending"):
            return f"{axis} is in move {ax.move.id}"
        st = ax.status
        if st is not None and abs(st.velocity or 0.0) > 0.5:
            return f"{axis} is moving"
        return None

    async def _released(self, axes: Sequence[str]) -> None:
        failures = await self._stop_axes(list(axes), StopKind.CONTROLLED)
        await self.journal_event(
            SUPERVISOR,
            "abort",
            Result.FAILED if failures else Result.OK,
            targets=list(axes),
            reason="hold-to-run enable released",
        )

    def _stream(self, m: Move, now: float) -> None:
        """Each axis's setpoint for the next cycle: run to the move's target at the speed the
        plan has one cycle ahead, plus ``CATCH_UP`` per second of the distance the axis lags
        behind its plan (never above the move's speed, never below ``MIN_SPEED``).

        A drive of the machinery map runs to a target on its own ramp and brakes to stop there
        (modbus-machinery.md §7.4), so streaming the plan's *positions* as targets makes it
        brake every cycle and fall behind; its speed limit, though, is live and is reached at
        its acceleration, so the plan's *velocity* is what it can follow."""
        assert m.start is not None
        t = now - m.start + self.period
        pos, vel, _ = m.plan.at(t)
        over = t >= m.plan.duration  # the drive's own ramp brings it onto the target now
        for i, a in enumerate(m.axes):
            target = m.targets[a]
            if over:
                self.io.stream(a, target, m.speeds[a], self.axes[a].limits.acceleration)
                continue
            v = abs(float(vel[i]))
            st = self.axes[a].status
            if st is not None and st.position is not None:
                toward = 1.0 if target >= st.position else -1.0
                v += CATCH_UP * max(0.0, (float(pos[i]) - st.position) * toward)
            speed = min(max(v, MIN_SPEED), m.speeds[a])
            self.io.stream(a, target, speed, self.axes[a].limits.acceleration)

    def _arrived(self, m: Move, now: float) -> bool:
        if m.start is None or now - m.start < m.plan.duration:
            return False
        for a in m.axes:
            st = self.axes[a].status
            if st is None or st.position is None:
                return False
            if abs(st.position - m.targets[a]) > ARRIVAL_TOLERANCE or abs(st.velocity or 0) > 0.5:
                return False
        return True

    def _fire_triggers(self, m: Move) -> None:
        if not m.triggers:
            return
        keep = []
        for axis, position, ev in m.triggers:
            st = self.axes[axis].status
            start = m.plan.position(axis, 0.0)
            if st is not None and st.position is not None:
                passed = (st.position - position) * (start - position) <= 0
                if passed:
                    ev.set()
                    continue
            keep.append((axis, position, ev))
        m.triggers = keep

    def _blocking_interlocks(self, axes: Sequence[str]) -> list[str]:
        out = []
        for lock in self.config.interlocks:
            hit = [a for a in axes if a in lock.axes]
            if not hit:
                continue
            cond = lock.block_when
            value = self.points(cond.device, cond.point)
            if value is None:
                out.append(
                    f"interlock '{lock.name}': {cond.device}.{cond.point} is unknown, "
                    f"so {', '.join(hit)} may not move"
                )
            elif cond.met(value):
                out.append(f"interlock '{lock.name}': {cond} blocks {', '.join(hit)}")
        return out

    # --- running ---------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        """Tick at ``cycle_hz`` on drift-free deadlines until ``close()``."""
        self._stop_flag.clear()
        deadline = self.clock()
        while not self._stop_flag.is_set():
            self.tick(self.clock())
            deadline += self.period
            now = self.clock()
            if now > deadline:
                missed = int((now - deadline) // self.period) + 1
                self.late_ticks += missed
                deadline += missed * self.period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_flag.wait(), max(0.0, deadline - now))

    async def close(self) -> None:
        self._stop_flag.set()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
