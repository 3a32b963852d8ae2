"""The cue engine: runs the cue lists of a ``Show`` (docs/playback.md).

One ``Playback`` holds a show and one ``_ListRun`` per cue list. Every command (GO, GO to a
cue, back, stop, pause/resume, panic, standby, release) arrives through the same methods from
REST, WebSocket, OSC and scripts with an ``Origin``, and every command and every scheduled start
(follow, auto-continue, list.start, timecode) is journalled with its source, result and timing.

A GO starts the cue on standby: each action of the cue and of its parts is a task that waits
its part's delay plus its own delay on the *list's* clock (which stands still while the list is
paused), then acts through the ports (``Lighting``, ``Machinery``, ``Devices``, ``Audio``,
``TimecodeSource``). A cue is complete when every action is; a follow cue then starts the next,
an auto-continue cue starts it ``auto_continue_s`` after its GO. A failed action (a device
error, a wait's timeout) ends the cue as failed and cancels its follow / auto-continue.

Lighting: a list is one layer of the lighting engine at the list's priority. In a tracking list
values persist until a later cue changes them; in a cue-only list a cue first releases every
value the previous cues set that it does not set itself, so they fall back to what lies below.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from controller.journal import JournalEvent, JournalHeld, JournalSink, Origin, Result, SourceKind
from controller.show.model import (
    Action,
    AudioLevels,
    AudioPlay,
    AudioSoundfield,
    Cue,
    CueList,
    DeviceCommand,
    Level,
    LightingLevels,
    LightingPreset,
    ListMode,
    ListStart,
    ListStop,
    MachineryGoto,
    MachineryMove,
    MachineryStop,
    MotionProfile,
    Show,
    WaitPoint,
    WaitPosition,
    WaitTimecode,
    format_cue_number,
    parse_cue_number,
)

from .clock import Clock, LoopClock
from .ports import (
    POSITION_POINT,
    Audio,
    Devices,
    Incomplete,
    Lighting,
    Machinery,
    NotFound,
    PlaybackError,
    Refused,
    TimecodeSource,
)

log = logging.getLogger(__name__)

PANIC_FADE_S = 1.0
ARRIVAL_TOLERANCE = 5.0  # a machinery move is complete within this of its target (axis unit)
SYSTEM = Origin(SourceKind.SYSTEM, "playback")
# Actions that reach outside the engine: a standby controller (``live`` False) tracks them and
# sends nothing (docs/distributed.md, "Hot standby").
_SENDS = (DeviceCommand, AudioLevels, AudioSoundfield, AudioPlay, MachineryStop)
_MIRRORING: contextvars.ContextVar[bool] = contextvars.ContextVar("mirroring", default=False)
TRACKED_KEEP = 512  # a standby's tracked device commands kept for a takeover's resend


@dataclass(frozen=True)
class PlaybackConfig:
    panic_fade_s: float = PANIC_FADE_S
    """Time of panic's fade to the safe look (``Lighting.panic``)."""
    debounce_s: float | None = None
    """Minimum time between GOs of a list for every list (None: each list's go_debounce_s)."""
    arrival_tolerance: float = ARRIVAL_TOLERANCE


class _ListClock:
    """A list's time: the engine clock minus the time the list spent paused."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.paused_total = 0.0
        self.paused_since: float | None = None
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.paused = asyncio.Event()

    def now(self) -> float:
        t = self.clock.now()
        held = self.paused_total + (t - self.paused_since if self.paused_since is not None else 0)
        return t - held

    def pause(self) -> None:
        if self.paused_since is None:
            self.paused_since = self.clock.now()
            self.resumed.clear()
            self.paused.set()

    def resume(self) -> None:
        if self.paused_since is not None:
            self.paused_total += self.clock.now() - self.paused_since
            self.paused_since = None
            self.paused.clear()
            self.resumed.set()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of list time: the sleep stands still while the list is paused."""
        remaining = seconds
        while True:
            await self.resumed.wait()
            if remaining <= 0:
                return
            start = self.now()
            sleeper = asyncio.ensure_future(self.clock.sleep(remaining))
            pauser = asyncio.ensure_future(self.paused.wait())
            try:
                done, _ = await asyncio.wait({sleeper, pauser}, return_when="FIRST_COMPLETED")
            finally:
                for t in (sleeper, pauser):
                    t.cancel()
                await asyncio.gather(sleeper, pauser, return_exceptions=True)
            if sleeper in done and not sleeper.cancelled():
                return
            remaining -= self.now() - start


@dataclass(frozen=True)
class Tracked:
    """A device command a standby controller did not send: sent at its takeover if recent."""

    wall: float  # when it was (or would have been) sent
    device: str
    command: str
    args: dict[str, Any]
    at: float | None  # its start time on another node
    request_id: str
    cue_list: str
    cue: str


@dataclass
class _RunningAction:
    index: int
    part: int
    action: Action
    starts_at: float  # list time
    duration: float | None  # None: until a condition holds (waits, moves)
    state: str = "pending"  # pending, running, done, failed, stopped
    started: float | None = None
    reason: str = ""
    progress_fn: Callable[[], float | None] | None = None
    moving: tuple[str, ...] = ()
    targets: dict[str, dict[str, float]] = field(default_factory=dict)  # a move's, per axis
    held: bool = False  # a move stopped by pause, sent again on resume
    failure: asyncio.Future[str] | None = None  # set when a resumed move could not restart
    # A lighting action without delay is set by the GO itself (``_start``), so its early frame
    # leaves before the GO's journal commit and snapshots; its task then only times the fade
    # (and fails the action with ``lit_error``, if setting it failed).
    lit: bool = False
    lit_error: Exception | None = None


@dataclass
class _RunningCue:
    seq: int
    index: int
    cue: Cue
    go_at: float  # list time
    origin: Origin
    # The operator command this cue descends from, and how many follows / auto-continues /
    # list.starts away: the same on a primary and on its standby, so a device command gets
    # the same request id on both and a node runs it once (``_request_id``).
    chain: str = ""
    hop: int = 0
    actions: list[_RunningAction] = field(default_factory=list)
    state: str = "running"
    task: asyncio.Task[None] | None = None
    auto: asyncio.Task[None] | None = None


class _ListRun:
    def __init__(self, cl: CueList, clock: Clock) -> None:
        self.cl = cl
        self.at = {c.number: i for i, c in enumerate(cl.cues)}
        self.standby: int | None = 0 if cl.cues else None
        self.current: int | None = None
        self.last_go: float | None = None
        self.last_go_wall: float | None = None
        self.running: dict[int, _RunningCue] = {}
        self.lclock = _ListClock(clock)

    @property
    def paused(self) -> bool:
        return self.lclock.paused_since is not None

    def number(self, index: int | None) -> str | None:
        return None if index is None else format_cue_number(self.cl.cues[index].number)


def _request_id(run: _ListRun, rc: _RunningCue, ra: _RunningAction) -> str:
    """The request id of a cue's device command: the same on a primary and its standby."""
    text = f"{rc.chain}/{rc.hop}/{run.cl.id}/{format_cue_number(rc.cue.number)}/{ra.index}"
    if len(text) <= 128 and text.isascii() and text.isprintable() and " " not in text:
        return text
    return "cue-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _cue_number(cue: Any) -> Decimal:
    try:
        return parse_cue_number(cue)
    except ValueError as exc:
        raise NotFound(str(exc)) from None


class Playback:
    """The cue engine over one show. All methods run on the event loop."""

    def __init__(
        self,
        show: Show | None,
        *,
        lighting: Lighting | None,
        devices: Devices,
        machinery: Machinery | None = None,
        journal: JournalSink,
        clock: Clock | None = None,
        audio: Audio | None = None,
        timecode: TimecodeSource | None = None,
        config: PlaybackConfig | None = None,
    ) -> None:
        self.lighting = lighting
        self.devices = devices
        self.machinery = machinery or Machinery(devices)
        self.journal = journal
        self.clock: Clock = clock or LoopClock()
        self.audio = audio
        self.timecode = timecode
        self.config = config or PlaybackConfig()
        self.show: Show | None = None
        self.lists: dict[str, _ListRun] = {}
        self.panicked = False
        # Others that must stop on panic (a venue configuration switch): called after the
        # lists, the lighting and the axes; their failures are panic's failures.
        self.on_panic: list[Callable[[Origin], Awaitable[Any]]] = []
        self.version = 0
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []
        self._seq = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        # Hot standby (edge/control.py): a standby's engine tracks the primary's show, with
        # ``live`` False (lighting renders, nothing is sent) and operator commands refused
        # with ``refusal``; the primary's accepted commands reach ``mirror`` through the
        # ``accepted`` listeners. ``chain_prefix`` makes request ids unique per session.
        self.live = True
        self.refusal: str | None = None
        self.accepted: list[Callable[[dict[str, Any]], None]] = []
        self.chain_prefix = "c"
        self._chains = 0
        self.tracked: collections.deque[Tracked] = collections.deque(maxlen=TRACKED_KEEP)
        if show is not None:
            self._install(show)

    # --- show -----------------------------------------------------------------------------

    def _install(self, show: Show) -> None:
        self.show = show
        self.lists = {cl.id: _ListRun(cl, self.clock) for cl in show.lists}
        self._notify()

    async def load(self, show: Show, origin: Origin = SYSTEM) -> None:
        """Replace the show; refused while any cue runs (stop first)."""

        async def do() -> dict[str, Any]:
            busy = [lid for lid, r in self.lists.items() if r.running]
            if busy:
                raise Refused(f"cues are running in list(s) {', '.join(busy)}: stop them first")
            self._install(show)
            return {"show": show.show.title}

        await self._command("show.load", origin, None, None, do)

    # --- notifications --------------------------------------------------------------------

    def _notify(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        for cb in list(self._listeners):
            try:
                cb()
            except Exception:  # a listener never breaks the engine
                log.exception("playback listener failed")

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (no arguments, on the loop) on every change; returns unsubscribe."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def wait_changed(self, since: int) -> int:
        """Return the version once it differs from ``since``."""
        while self.version == since:
            await self._changed.wait()
        return self.version

    # --- commands -------------------------------------------------------------------------

    def _run_of(self, list_id: str | None) -> _ListRun:
        if self.show is None:
            raise Refused("no cue engine: no show is loaded")
        if list_id is None:
            return self.lists[self.show.lists[0].id]
        run = self.lists.get(list_id)
        if run is None:
            raise NotFound(f"no cue list '{list_id}' (lists: {', '.join(self.lists)})")
        return run

    def _index(self, run: _ListRun, cue: Any) -> int:
        number = _cue_number(cue)
        index = run.at.get(number)
        if index is None:
            raise NotFound(f"no cue {format_cue_number(number)} in cue list '{run.cl.id}'")
        return index

    async def _command(
        self,
        command: str,
        origin: Origin,
        list_id: str | None,
        cue: Any,
        call: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
        kind: SourceKind | None = None,
    ) -> dict[str, Any]:
        requested = self.clock.wall()
        t0 = self.clock.now()
        result, reason, out = Result.OK, "", {}
        refusal = self.refusal
        if (
            refusal is not None
            and not _MIRRORING.get()
            and origin.kind not in (SourceKind.FOLLOW, SourceKind.WAIT)
        ):

            async def refuse() -> dict[str, Any]:
                raise Refused(refusal)

            call = refuse
        cue_text = str(cue) if cue is not None else None
        try:
            out = await call()
            list_id = out.get("list", list_id)
            cue_text = out.get("cue", cue_text)
        except Refused as exc:
            result, reason = Result.REFUSED, exc.reason
            raise
        except NotFound as exc:
            result, reason = Result.REFUSED, exc.reason
            raise
        except Exception as exc:
            result, reason = Result.FAILED, f"{type(exc).__name__}: {exc}"
            raise
        finally:
            done = self.clock.now()
            await self._append(
                JournalEvent(
                    kind=origin.kind,
                    source=origin.source,
                    command=command,
                    result=result,
                    requested=requested,
                    executed=None if result is Result.REFUSED else requested + (done - t0),
                    duration_s=max(0.0, done - t0),
                    reason=reason,
                    cue_list=None if list_id is None else str(list_id)[:100],
                    cue=None if cue_text is None else str(cue_text)[:100],
                )
            )
        return out

    def _replicate(self, event: dict[str, Any]) -> None:
        """An operator command was accepted: tell the ``accepted`` listeners (a primary's
        control seat sends it to its standby), unless it is itself a mirrored one."""
        if _MIRRORING.get() or not self.accepted:
            return
        event["wall"] = self.clock.wall()
        for cb in list(self.accepted):
            try:
                cb(event)
            except Exception:
                log.exception("playback replication listener failed")

    async def mirror(self, event: Mapping[str, Any], origin: Origin) -> dict[str, Any]:
        """Apply a command the primary controller accepted (``_replicate``'s event) to this
        standby's engine: its cues start with the primary's chain, so their device commands
        carry the same request ids. Journalled like any command, with ``origin``."""
        token = _MIRRORING.set(True)
        try:
            op = event.get("op")
            lid, cue = event.get("list"), event.get("cue")
            if op in ("go", "start"):

                async def do() -> dict[str, Any]:
                    run = self._run_of(lid)
                    index = self._index(run, cue)
                    standby = run.standby
                    if op == "go":
                        run.last_go, run.last_go_wall = self.clock.now(), self.clock.wall()
                    self._start(run, index, origin, chain=str(event.get("chain") or ""))
                    if op == "start" and event.get("keep_standby"):
                        run.standby = standby
                    return {"list": run.cl.id, "cue": run.number(index)}

                return await self._command(str(op), origin, lid, cue, do)
            if op == "standby":
                return await self.standby(lid, cue, origin)
            if op == "back":
                return await self.back(lid, origin)
            if op == "stop":
                return await self.stop(lid, cue, origin)
            if op in ("pause", "resume"):
                return await self._pause(lid, origin, op == "pause")
            if op == "release":
                return await self.release(lid, float(event.get("fade_s") or 0.0), origin)
            if op == "panic":
                return await self.panic(origin)
            raise NotFound(f"cannot mirror '{op}'")
        finally:
            _MIRRORING.reset(token)

    async def mirror_load(self, show: Show, origin: Origin) -> None:
        """Load the show the primary controller loaded (a standby's ``load``)."""
        token = _MIRRORING.set(True)
        try:
            await self.load(show, origin)
        finally:
            _MIRRORING.reset(token)

    def positions(self) -> dict[str, dict[str, str | None]]:
        """Each list's current and standby cue (a standby that joins late starts from the
        primary's, ``set_positions``)."""
        return {
            lid: {"current": run.number(run.current), "standby": run.number(run.standby)}
            for lid, run in self.lists.items()
        }

    def set_positions(self, positions: Mapping[str, Mapping[Any, Any]]) -> None:
        for lid, pos in positions.items():
            run = self.lists.get(lid)
            if run is None:
                continue
            for key in ("current", "standby"):
                number = pos.get(key)
                try:
                    index = None if number is None else self._index(run, number)
                except NotFound:
                    continue
                setattr(run, key, index)
        self._notify()

    async def go_live(self, window_s: float, origin: Origin) -> int:
        """This standby takes over: from now on its cues send what they do, and the device
        commands it tracked in the last ``window_s`` are sent now with their request ids (a
        node that already ran one from the primary answers it again and does not run it)."""
        self.live, self.refusal = True, None
        now = self.clock.wall()
        recent = [t for t in self.tracked if t.wall >= now - window_s]
        self.tracked.clear()

        async def send(t: Tracked) -> None:
            at = t.at if t.at is not None and t.at > self.clock.wall() else None
            try:
                await self.devices.execute(
                    t.device, t.command, t.args, origin, at=at, request_id=t.request_id
                )
            except Exception as exc:
                await self._append(
                    JournalEvent(
                        kind=origin.kind,
                        source=origin.source,
                        command="action.device.command",
                        result=Result.FAILED,
                        requested=self.clock.wall(),
                        reason=f"resent at takeover: {exc}"[:1000],
                        cue_list=t.cue_list,
                        cue=t.cue,
                    )
                )

        for t in recent:
            self._spawn(send(t), f"resend:{t.request_id}")
        self._notify()
        return len(recent)

    async def _append(self, event: JournalEvent) -> None:
        try:
            await asyncio.shield(self.journal.append(event))
        except asyncio.CancelledError:
            raise
        except JournalHeld as held:  # written when the journal can: late, not lost
            log.warning("%s: %s", event.command, held)
        except Exception:  # the journal failing must not stop the show; it is logged
            log.exception("journal append failed for %s", event.command)

    async def go(
        self, list_id: str | None = None, cue: Any = None, origin: Origin = SYSTEM
    ) -> dict[str, Any]:
        """GO: start the cue on standby (or cue ``cue``) of the list (default: the first)."""

        async def do() -> dict[str, Any]:
            run = self._run_of(list_id)
            index = self._index(run, cue) if cue is not None else run.standby
            now = self.clock.now()
            debounce = (
                self.config.debounce_s
                if self.config.debounce_s is not None
                else run.cl.go_debounce_s
            )
            if run.last_go is not None and now - run.last_go < debounce:
                raise Refused(
                    f"GO {now - run.last_go:.3f} s after the last GO of list '{run.cl.id}' "
                    f"(minimum {debounce:g} s between GOs)"
                )
            if index is None:
                raise Refused(f"list '{run.cl.id}' has no cue on standby (end of the list)")
            run.last_go = now
            run.last_go_wall = self.clock.wall()
            rc = self._start(run, index, origin)
            self._replicate(
                {"op": "go", "list": run.cl.id, "cue": run.number(index), "chain": rc.chain}
            )
            return {"list": run.cl.id, "cue": run.number(index)}

        return await self._command("go", origin, list_id, cue, do)

    async def start(
        self, list_id: str | None, cue: Any, origin: Origin, *, keep_standby: bool = False
    ) -> dict[str, Any]:
        """A start that is not a GO (timecode trigger, OSC ``/cue/{n}/start``): not debounced;
        with ``keep_standby`` the standby cue stays where it was (QLab's playhead)."""

        async def do() -> dict[str, Any]:
            run = self._run_of(list_id)
            index = self._index(run, cue) if cue is not None else (0 if run.cl.cues else None)
            if index is None:
                raise Refused(f"list '{run.cl.id}' has no cues")
            standby = run.standby
            rc = self._start(run, index, origin)
            if keep_standby:
                run.standby = standby
            self._replicate(
                {
                    "op": "start",
                    "list": run.cl.id,
                    "cue": run.number(index),
                    "chain": rc.chain,
                    "keep_standby": keep_standby,
                }
            )
            return {"list": run.cl.id, "cue": run.number(index)}

        return await self._command("start", origin, list_id, cue, do)

    async def standby(
        self, list_id: str | None, cue: Any, origin: Origin = SYSTEM
    ) -> dict[str, Any]:
        """Put cue ``cue`` on standby: the next GO of the list runs it."""

        async def do() -> dict[str, Any]:
            run = self._run_of(list_id)
            run.standby = self._index(run, cue)
            self._notify()
            self._replicate({"op": "standby", "list": run.cl.id, "cue": run.number(run.standby)})
            return {"list": run.cl.id, "cue": run.number(run.standby)}

        return await self._command("standby", origin, list_id, cue, do)

    async def back(self, list_id: str | None = None, origin: Origin = SYSTEM) -> dict[str, Any]:
        """Move standby one cue back (nothing starts)."""

        async def do() -> dict[str, Any]:
            run = self._run_of(list_id)
            if not run.cl.cues:
                raise Refused(f"list '{run.cl.id}' has no cues")
            at = run.standby if run.standby is not None else len(run.cl.cues)
            if at == 0:
                raise Refused(f"list '{run.cl.id}' is at its first cue")
            run.standby = at - 1
            self._notify()
            self._replicate({"op": "back", "list": run.cl.id})
            return {"list": run.cl.id, "cue": run.number(run.standby)}

        return await self._command("back", origin, list_id, None, do)

    async def stop(
        self, list_id: str | None = None, cue: Any = None, origin: Origin = SYSTEM
    ) -> dict[str, Any]:
        """Stop one cue, one list, or (no list) every list. Lighting holds where it is;
        machinery that a stopped cue is moving gets a controlled stop."""

        async def do() -> dict[str, Any]:
            if list_id is None and cue is None:
                if self.show is None:
                    raise Refused("no cue engine: no show is loaded")
                stopped = 0
                for run in self.lists.values():
                    stopped += await self._stop_list(run, origin)
                self._replicate({"op": "stop"})
                return {"stopped": stopped}
            run = self._run_of(list_id)
            if cue is None:
                stopped = await self._stop_list(run, origin)
                self._replicate({"op": "stop", "list": run.cl.id})
                return {"list": run.cl.id, "stopped": stopped}
            index = self._index(run, cue)
            hits = [rc for rc in run.running.values() if rc.index == index]
            if not hits:
                raise Refused(f"cue {run.number(index)} of list '{run.cl.id}' is not running")
            for rc in hits:
                await self._stop_cue(run, rc, origin)
            self._replicate({"op": "stop", "list": run.cl.id, "cue": run.number(index)})
            return {"list": run.cl.id, "cue": run.number(index), "stopped": len(hits)}

        return await self._command("stop", origin, list_id, cue, do)

    async def pause(self, list_id: str | None = None, origin: Origin = SYSTEM) -> dict[str, Any]:
        return await self._pause(list_id, origin, True)

    async def resume(self, list_id: str | None = None, origin: Origin = SYSTEM) -> dict[str, Any]:
        return await self._pause(list_id, origin, False)

    async def _pause(self, list_id: str | None, origin: Origin, pause: bool) -> dict[str, Any]:
        """Pause holds a list where it stands: its clock (delays, waits' timeouts, timers), its
        lighting fades (its source of the lighting engine), and its moves in flight (a
        controlled stop of those axes; resume sends them to the same targets again)."""

        async def do() -> dict[str, Any]:
            if self.show is None:
                raise Refused("no cue engine: no show is loaded")
            runs = [self._run_of(list_id)] if list_id is not None else list(self.lists.values())
            failures: dict[str, str] = {}
            axes: list[str] = []
            for run in runs:
                if run.paused == pause:
                    continue
                run.lclock.pause() if pause else run.lclock.resume()
                if self.lighting is not None:
                    if pause:
                        self.lighting.pause(run.cl.id, run.cl.priority)
                    else:
                        self.lighting.resume(run.cl.id, run.cl.priority)
                moves = [
                    ra
                    for rc in run.running.values()
                    for ra in rc.actions
                    if ra.state == "running" and ra.targets and ra.held != pause
                ]
                for ra in moves:
                    ra.held = pause
                    axes.extend(ra.targets)
                failures.update(await self._hold_moves(moves, pause, origin))
            self._notify()
            self._replicate({"op": "pause" if pause else "resume", "list": list_id})
            if failures:
                raise Incomplete(
                    ("pause: " if pause else "resume: ")
                    + "; ".join(f"{k}: {v}" for k, v in sorted(failures.items()))
                )
            return {"lists": [r.cl.id for r in runs], "axes": axes} | (
                {"list": list_id} if list_id is not None else {}
            )

        return await self._command("pause" if pause else "resume", origin, list_id, None, do)

    async def _hold_moves(
        self, moves: list[_RunningAction], pause: bool, origin: Origin
    ) -> dict[str, str]:
        """Stop (pause) or restart (resume) the axes of running moves; the axes that failed,
        with why. A move that cannot restart fails its action, with the reason."""
        failures: dict[str, str] = {}
        if not self.live:  # a standby's pause and resume move nothing: the holder's do
            return failures
        if pause:
            calls = [(dev, self.machinery.stop(dev, origin)) for ra in moves for dev in ra.targets]
            results = await asyncio.gather(*(c for _, c in calls), return_exceptions=True)
            for (dev, _), r in zip(calls, results, strict=True):
                if isinstance(r, BaseException):
                    failures[dev] = f"{type(r).__name__}: {r}"
            return failures
        restarts = await asyncio.gather(
            *(self.machinery.move_many(ra.targets, origin) for ra in moves),
            return_exceptions=True,
        )
        for ra, r in zip(moves, restarts, strict=True):
            if not isinstance(r, BaseException):
                self._watch_abort(ra, r)
                continue
            axes = ", ".join(ra.targets)
            failures[axes] = str(r) if isinstance(r, PlaybackError) else f"{type(r).__name__}: {r}"
            if ra.failure is not None and not ra.failure.done():
                ra.failure.set_result(f"{axes} did not restart after resume: {failures[axes]}")
        return failures

    @staticmethod
    def _watch_abort(ra: _RunningAction, aborted: asyncio.Future[str] | None) -> None:
        """A move the machinery layer aborts (the safety supervisor: overload, E-stop, ...)
        fails its action with the reason, rather than waiting for an arrival."""
        if aborted is None:
            return

        def passed_on(f: asyncio.Future[str]) -> None:
            if ra.held:
                return  # stopped by our own pause: resume sends it again
            if not f.cancelled() and ra.failure is not None and not ra.failure.done():
                ra.failure.set_result(f.result())

        aborted.add_done_callback(passed_on)

    async def release(
        self, list_id: str | None = None, fade_s: float = 0.0, origin: Origin = SYSTEM
    ) -> dict[str, Any]:
        """Let go of every lighting value the list holds, fading over ``fade_s``."""

        async def do() -> dict[str, Any]:
            run = self._run_of(list_id)
            if not (isinstance(fade_s, int | float) and math.isfinite(fade_s) and fade_s >= 0):
                raise NotFound(f"fade_s must be a finite number >= 0, not {fade_s!r}")
            n = 0
            if self.lighting is not None:
                n = self.lighting.release(run.cl.id, run.cl.priority, fade_s=float(fade_s))
            self._notify()
            self._replicate({"op": "release", "list": run.cl.id, "fade_s": float(fade_s)})
            return {"list": run.cl.id, "released": n}

        return await self._command("release", origin, list_id, None, do)

    async def panic(self, origin: Origin = SYSTEM) -> dict[str, Any]:
        """Stop every list, fade lighting to the safe look, stop all machinery."""

        async def do() -> dict[str, Any]:
            failures: dict[str, str] = {}
            for run in self.lists.values():
                await self._stop_list(run, origin, stop_axes=False)
            if self.lighting is not None:
                try:
                    self.lighting.panic(self.config.panic_fade_s)
                except Exception as exc:
                    failures["lighting"] = f"{type(exc).__name__}: {exc}"
            hooks = list(self.on_panic) if self.live else []  # a standby stops nothing itself
            if self.live:
                failures.update(await self.machinery.stop_all(origin))
            for hook in hooks:
                try:
                    await hook(origin)
                except Refused:
                    pass  # nothing of theirs was running
                except Exception as exc:
                    failures[getattr(hook, "__qualname__", "hook")] = f"{type(exc).__name__}: {exc}"
            self.panicked = True
            self._notify()
            self._replicate({"op": "panic"})
            if failures:
                raise Incomplete(
                    "panic: " + "; ".join(f"{k}: {v}" for k, v in sorted(failures.items()))
                )
            return {"axes": list(self.machinery.axes)}

        return await self._command("panic", origin, None, None, do)

    async def close(self) -> None:
        """Cancel every task of the engine (service shutdown, tests)."""
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for run in self.lists.values():
            run.running.clear()

    # --- running cues ---------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        # A context of its own: a cue started by ``mirror`` must not run as a mirrored command.
        task = asyncio.create_task(coro, name=name, context=contextvars.Context())
        self._tasks.add(task)  # a strong reference: the loop keeps only weak ones
        task.add_done_callback(self._tasks.discard)
        return task

    def _lighting_levels(self, action: Action) -> list[Level]:
        if isinstance(action, LightingLevels):
            return list(action.levels)
        if isinstance(action, LightingPreset) and self.show is not None:
            preset = self.show.presets.get(action.preset)
            return list(preset.levels) if preset is not None else []
        return []

    def _lead(self, action: Action) -> float:
        """How far ahead ``action`` must be sent to start on time: a device command on
        another node goes there with its start time (``Devices.lead``); 0 for the rest, and
        for a ``Devices`` port that has no such notion."""
        lead = getattr(self.devices, "lead", None)
        return float(lead(action.device)) if isinstance(action, DeviceCommand) and lead else 0.0

    def _start(
        self, run: _ListRun, index: int, origin: Origin, *, chain: str = "", hop: int = 0
    ) -> _RunningCue:
        cue = run.cl.cues[index]
        self._seq += 1
        if not chain:
            self._chains += 1
            chain = f"{self.chain_prefix}.{self._chains}"
        rc = _RunningCue(self._seq, index, cue, run.lclock.now(), origin, chain, hop)
        # A cue that reaches other nodes starts everywhere at once, the lead after its GO:
        # long enough for its commands to reach them; its own actions wait as long.
        lead = max((self._lead(a) for _, _, a in cue.all_actions()), default=0.0)
        lighting_fades = [
            a.duration_s - a.delay_s
            for _, _, a in cue.all_actions()
            if isinstance(a, LightingLevels | LightingPreset)
        ]
        if self.panicked and self.lighting is not None:
            self.lighting.clear_panic(max(lighting_fades, default=0.0))
        self.panicked = False
        if run.cl.mode is ListMode.CUE_ONLY and self.lighting is not None:
            keep = [lv for _, _, a in cue.all_actions() for lv in self._lighting_levels(a)]
            self.lighting.release(
                run.cl.id, run.cl.priority, fade_s=max(lighting_fades, default=0.0), keep=keep
            )
        for i, (part, part_delay, action) in enumerate(cue.all_actions()):
            duration: float | None
            if isinstance(action, LightingLevels | LightingPreset | AudioLevels | AudioSoundfield):
                duration = action.duration_s - action.delay_s
            elif isinstance(action, AudioPlay):
                duration = action.fade_s
            elif isinstance(
                action, MachineryMove | MachineryGoto | WaitPosition | WaitPoint | WaitTimecode
            ):
                duration = None
            else:
                duration = 0.0
            rc.actions.append(
                _RunningAction(
                    i, part, action, rc.go_at + lead + part_delay + action.delay_s, duration
                )
            )
        if not run.paused:  # GO -> wire: lighting that starts now is set before any task runs
            for ra in rc.actions:
                if ra.starts_at <= rc.go_at and isinstance(
                    ra.action, LightingLevels | LightingPreset
                ):
                    ra.lit = True
                    try:
                        self._light(run, ra.action)
                    except Exception as exc:  # the action's task fails with it
                        ra.lit_error = exc
        run.running[rc.seq] = rc
        run.current = index
        run.standby = run.cl.next_of(index)
        name = f"{run.cl.id}/{format_cue_number(cue.number)}"
        rc.task = self._spawn(self._run_cue(run, rc), f"cue:{name}")
        if cue.auto_continue_s is not None:
            rc.auto = self._spawn(self._auto_continue(run, rc), f"auto:{name}")
        self._notify()
        return rc

    def _cue_origin(self, run: _ListRun, rc: _RunningCue) -> Origin:
        return Origin(SourceKind.WAIT, f"cue {run.cl.id}/{format_cue_number(rc.cue.number)}")

    async def _run_cue(self, run: _ListRun, rc: _RunningCue) -> None:
        try:
            await asyncio.gather(*(self._run_action(run, rc, ra) for ra in rc.actions))
        except asyncio.CancelledError:
            rc.state = "stopped"
            for ra in rc.actions:
                if ra.state in ("pending", "running"):
                    ra.state = "stopped"
            run.running.pop(rc.seq, None)
            self._notify()
            raise
        failed = [ra for ra in rc.actions if ra.state == "failed"]
        rc.state = "failed" if failed else "complete"
        run.running.pop(rc.seq, None)
        name = f"{run.cl.id}/{format_cue_number(rc.cue.number)}"
        if failed:
            if rc.auto is not None:
                rc.auto.cancel()
            self._notify()
            return
        self._notify()
        if rc.cue.follow:
            nxt = run.cl.next_of(rc.index)
            if nxt is not None:
                origin = Origin(SourceKind.FOLLOW, f"follow of {name}")
                await self._scheduled(run, nxt, origin, rc.chain, rc.hop + 1)

    async def _auto_continue(self, run: _ListRun, rc: _RunningCue) -> None:
        assert rc.cue.auto_continue_s is not None
        await run.lclock.sleep(rc.go_at + rc.cue.auto_continue_s - run.lclock.now())
        nxt = run.cl.next_of(rc.index)
        if nxt is not None:
            name = f"{run.cl.id}/{format_cue_number(rc.cue.number)}"
            origin = Origin(SourceKind.WAIT, f"auto-continue of {name}")
            await self._scheduled(run, nxt, origin, rc.chain, rc.hop + 1)

    async def _scheduled(
        self, run: _ListRun, index: int, origin: Origin, chain: str, hop: int
    ) -> None:
        async def do() -> dict[str, Any]:
            self._start(run, index, origin, chain=chain, hop=hop)
            return {"list": run.cl.id, "cue": run.number(index)}

        with contextlib.suppress(PlaybackError):
            await self._command("start", origin, run.cl.id, run.number(index), do)

    async def _stop_list(self, run: _ListRun, origin: Origin, *, stop_axes: bool = True) -> int:
        cues = list(run.running.values())
        for rc in cues:
            await self._stop_cue(run, rc, origin, stop_axes=stop_axes)
        self._notify()
        return len(cues)

    async def _stop_cue(
        self, run: _ListRun, rc: _RunningCue, origin: Origin, *, stop_axes: bool = True
    ) -> None:
        moving = [d for ra in rc.actions if ra.state == "running" for d in ra.moving]
        me = asyncio.current_task()
        # A cue may stop its own list (list.stop): it never cancels or awaits itself.
        tasks = [t for t in (rc.auto, rc.task) if t is not None and t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        run.running.pop(rc.seq, None)
        if stop_axes and moving and self.live:
            results = await asyncio.gather(
                *(self.machinery.stop(d, origin) for d in dict.fromkeys(moving)),
                return_exceptions=True,
            )
            for d, r in zip(dict.fromkeys(moving), results, strict=True):
                if isinstance(r, BaseException):
                    log.warning("stop of %s after cue stop failed: %s", d, r)

    async def _run_action(self, run: _ListRun, rc: _RunningCue, ra: _RunningAction) -> None:
        lc = run.lclock
        await lc.sleep(ra.starts_at - self._lead(ra.action) - lc.now())
        ra.state = "running"
        ra.started = lc.now()
        self._notify()
        origin = self._cue_origin(run, rc)
        try:
            await self._act(run, rc, ra, origin)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ra.state = "failed"
            ra.reason = str(exc) if isinstance(exc, PlaybackError) else f"{exc}"
            now = self.clock.wall()
            await self._append(
                JournalEvent(
                    kind=origin.kind,
                    source=origin.source,
                    command=f"action.{ra.action.kind}",
                    result=Result.FAILED,
                    requested=now,
                    reason=ra.reason or type(exc).__name__,
                    cue_list=run.cl.id,
                    cue=format_cue_number(rc.cue.number),
                )
            )
            self._notify()
            return
        ra.state = "done"
        self._notify()

    async def _act(
        self, run: _ListRun, rc: _RunningCue, ra: _RunningAction, origin: Origin
    ) -> None:
        a = ra.action
        lc = run.lclock
        if not self.live and isinstance(a, _SENDS):  # a standby: tracked, not sent
            if isinstance(a, DeviceCommand) and self._lead(a) > 0:
                self.tracked.append(
                    Tracked(
                        self.clock.wall(),
                        a.device,
                        a.command,
                        dict(a.args),
                        self.clock.wall() + (ra.starts_at - lc.now()),
                        _request_id(run, rc, ra),
                        run.cl.id,
                        format_cue_number(rc.cue.number),
                    )
                )
            elif isinstance(a, AudioLevels | AudioSoundfield):
                await lc.sleep(ra.duration or 0.0)
            return
        if isinstance(a, LightingLevels | LightingPreset):
            if not ra.lit:
                self._light(run, a)
            elif ra.lit_error is not None:
                raise ra.lit_error
            await lc.sleep(ra.duration or 0.0)
        elif isinstance(a, MachineryMove):
            targets = {ax.device: _move_args(ax.position, ax, a.profile) for ax in a.axes}
            await self._move(ra, targets, origin)
        elif isinstance(a, MachineryGoto):
            assert self.show is not None
            position = self.show.positions.get(a.device, {}).get(a.position)
            if position is None:
                raise PlaybackError(f"no position '{a.position}' for '{a.device}'")
            await self._move(
                ra, {a.device: _move_args(position, a.profile, MotionProfile())}, origin
            )
        elif isinstance(a, MachineryStop):
            results = await asyncio.gather(
                *(self.machinery.stop(d, origin) for d in a.devices), return_exceptions=True
            )
            errors = [
                f"{d}: {r}"
                for d, r in zip(a.devices, results, strict=True)
                if isinstance(r, BaseException)
            ]
            if errors:
                raise PlaybackError("; ".join(errors))
        elif isinstance(a, DeviceCommand):
            if self._lead(a) > 0:  # on another node: it starts there at this wall time
                at = self.clock.wall() + (ra.starts_at - lc.now())
                await self.devices.execute(
                    a.device, a.command, dict(a.args), origin, at=at,
                    request_id=_request_id(run, rc, ra),
                )  # fmt: skip
            else:
                await self.devices.execute(a.device, a.command, dict(a.args), origin)
        elif isinstance(a, AudioLevels):
            for lv in a.levels:
                await self.devices.write(lv.device, lv.point, lv.value, origin)
            await lc.sleep(ra.duration or 0.0)
        elif isinstance(a, AudioSoundfield):
            if self.audio is None:
                raise PlaybackError("no sound-field engine on this node")
            await self.audio.soundfield(a.mode, a.fade_s, origin)
            await lc.sleep(ra.duration or 0.0)
        elif isinstance(a, AudioPlay):
            if self.audio is None:
                raise PlaybackError("no audio player on this node")
            await self.audio.play(a.file, a.level_db, a.loop, a.output, a.fade_s, origin)
        elif isinstance(a, WaitPosition):
            pos, tol = a.position, a.tolerance
            await self._timed(
                lc,
                self._at_position(a.device, pos, tol),
                a.timeout_s,
                f"{a.device} did not reach {pos:g} ± {tol:g}",
            )
        elif isinstance(a, WaitPoint):
            above, below = a.above, a.below

            def met(v: Any) -> bool:
                if not _number(v):
                    return False
                x = float(v)
                return x > above if above is not None else x < (below or 0.0)

            what = f"over {above:g}" if above is not None else f"under {below:g}"
            await self._timed(
                lc,
                self.devices.wait_for(a.device, a.point, met),
                a.timeout_s,
                f"{a.device}.{a.point} did not go {what}",
            )
        elif isinstance(a, WaitTimecode):
            if self.timecode is None:
                raise PlaybackError("no timecode source on this node")
            await self._timed(
                lc,
                self.timecode.reached(a.timecode, a.fps),
                a.timeout_s,
                f"timecode {a.timecode} was not reached",
            )
        elif isinstance(a, ListStart):
            target = self._run_of(a.list)
            index = self._index(target, a.cue) if a.cue is not None else 0
            if not target.cl.cues:
                raise PlaybackError(f"list '{a.list}' has no cues")
            name = f"list.start of {origin.source.removeprefix('cue ')}"
            await self._scheduled(
                target, index, Origin(SourceKind.WAIT, name), rc.chain, rc.hop + 1
            )
        elif isinstance(a, ListStop):
            await self._stop_list(self._run_of(a.list), origin)
        else:  # pragma: no cover - the model's union is closed
            raise PlaybackError(f"unknown action {a!r}")

    def _light(self, run: _ListRun, a: LightingLevels | LightingPreset) -> None:
        if self.lighting is None:
            raise PlaybackError("no lighting engine on this node")
        scale = a.level / 100.0 if isinstance(a, LightingPreset) else 1.0
        self.lighting.levels(
            run.cl.id,
            run.cl.priority,
            self._lighting_levels(a),
            fade_s=a.fade_s,
            up_s=a.up_s,
            down_s=a.down_s,
            curve=a.curve.value,
            scale=scale,
        )

    async def _timed(
        self, lc: _ListClock, coro: Awaitable[Any], limit_s: float | None, what: str
    ) -> None:
        if limit_s is None:
            await coro
            return
        waiter = asyncio.ensure_future(coro)
        timer = asyncio.ensure_future(lc.sleep(limit_s))
        try:
            done, _ = await asyncio.wait({waiter, timer}, return_when="FIRST_COMPLETED")
        finally:
            for t in (waiter, timer):
                t.cancel()
            results = await asyncio.gather(waiter, timer, return_exceptions=True)
        if waiter in done:
            if isinstance(results[0], BaseException) and not isinstance(
                results[0], asyncio.CancelledError
            ):
                raise results[0]
            return
        raise PlaybackError(f"timeout after {limit_s:g} s: {what}")

    def _at_position(self, device: str, position: float, tolerance: float) -> Awaitable[Any]:
        """Done when ``device`` is within ``tolerance`` of ``position``: from the machinery
        port's faster source when it has one (a supervised axis's cycle status), else from the
        device's position point."""
        fast = self.machinery.wait_position(device, position, tolerance)
        if fast is not None:
            return fast
        return self.devices.wait_for(
            device, POSITION_POINT, lambda v: _near(v, position, tolerance)
        )

    async def _move(
        self, ra: _RunningAction, targets: dict[str, dict[str, float]], origin: Origin
    ) -> None:
        starts: dict[str, float] = {}
        for dev in targets:
            pv = self.devices.read(dev, POSITION_POINT)
            if pv is not None and _number(pv.value):
                starts[dev] = float(pv.value)
        ra.moving = tuple(targets)
        ra.targets = targets
        ra.failure = asyncio.get_running_loop().create_future()

        def progress() -> float | None:
            parts = []
            for dev, args in targets.items():
                pv = self.devices.read(dev, POSITION_POINT)
                start = starts.get(dev)
                if pv is None or start is None or not _number(pv.value):
                    return None
                total = abs(args["position"] - start)
                left = abs(args["position"] - float(pv.value))
                parts.append(1.0 if total <= 0 else max(0.0, min(1.0, 1 - left / total)))
            return min(parts) if parts else None

        ra.progress_fn = progress
        if self.live:  # a standby only follows the axes' positions
            self._watch_abort(ra, await self.machinery.move_many(targets, origin))
        tol = self.config.arrival_tolerance
        arrivals = asyncio.ensure_future(
            asyncio.gather(
                *(self._at_position(dev, args["position"], tol) for dev, args in targets.items())
            )
        )
        try:
            either: set[asyncio.Future[Any]] = {arrivals, ra.failure}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not arrivals.done():
                arrivals.cancel()
                await asyncio.gather(arrivals, return_exceptions=True)
        if ra.failure.done():
            raise PlaybackError(ra.failure.result())
        arrivals.result()

    # --- observation ----------------------------------------------------------------------

    @property
    def default_list(self) -> str | None:
        """The list a command without a list acts on: the show's first."""
        return None if self.show is None else self.show.lists[0].id

    def snapshot(self) -> dict[str, Any]:
        """Every list's state: current and standby cue, paused, running cues and actions with
        progress 0..1 and remaining seconds (None when it depends on a condition)."""
        show = self.show
        return {
            "version": self.version,
            "show": None if show is None else {"title": show.show.title},
            "panic": self.panicked,
            "default_list": None if show is None else show.lists[0].id,
            "lists": [self._list_snapshot(run) for run in self.lists.values()],
        }

    def _list_snapshot(self, run: _ListRun) -> dict[str, Any]:
        cl = run.cl

        def cue_info(i: int | None) -> dict[str, Any] | None:
            if i is None:
                return None
            c = cl.cues[i]
            return {"number": format_cue_number(c.number), "label": c.label}

        now = run.lclock.now()
        return {
            "id": cl.id,
            "name": cl.name,
            "mode": cl.mode.value,
            "priority": cl.priority,
            "paused": run.paused,
            "current": cue_info(run.current),
            "standby": cue_info(run.standby),
            "last_go": run.last_go_wall,
            "running": [self._cue_snapshot(rc, now) for rc in run.running.values()],
        }

    def _cue_snapshot(self, rc: _RunningCue, now: float) -> dict[str, Any]:
        actions = [self._action_snapshot(ra, now) for ra in rc.actions]
        remaining = [a["remaining_s"] for a in actions]
        progress = [a["progress"] for a in actions]
        return {
            "number": format_cue_number(rc.cue.number),
            "label": rc.cue.label,
            "state": rc.state,
            "source": rc.origin.source,
            "elapsed_s": round(max(0.0, now - rc.go_at), 3),
            "progress": round(sum(progress) / len(progress), 4) if progress else 1.0,
            "remaining_s": None
            if any(r is None for r in remaining)
            else round(max(remaining, default=0.0), 3),
            "actions": actions,
        }

    def _action_snapshot(self, ra: _RunningAction, now: float) -> dict[str, Any]:
        progress: float | None
        remaining: float | None
        if ra.state in ("done",):
            progress, remaining = 1.0, 0.0
        elif ra.duration is None:
            p = ra.progress_fn() if ra.progress_fn is not None and ra.state == "running" else None
            progress, remaining = (p if p is not None else 0.0), None
        else:
            end = ra.starts_at + ra.duration
            remaining = max(0.0, end - now)
            if ra.state == "pending" or ra.duration <= 0:
                progress = 0.0 if ra.state == "pending" else 1.0
            else:
                progress = min(1.0, max(0.0, (now - ra.starts_at) / ra.duration))
        return {
            "index": ra.index,
            "part": ra.part,
            "kind": ra.action.kind,
            "state": ra.state,
            "progress": round(progress, 4),
            "remaining_s": None if remaining is None else round(remaining, 3),
            "reason": ra.reason,
        }


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _near(v: Any, target: float, tol: float) -> bool:
    return _number(v) and abs(float(v) - target) <= tol


def _move_args(position: float, own: MotionProfile, defaults: MotionProfile) -> dict[str, float]:
    """The arguments of ``move_to`` (jerk is for the motion layer, not the drive command)."""
    args: dict[str, float] = {"position": position}
    speed = own.speed if own.speed is not None else defaults.speed
    accel = own.acceleration if own.acceleration is not None else defaults.acceleration
    if speed is not None:
        args["speed"] = speed
    if accel is not None:
        args["acceleration"] = accel
    return args
