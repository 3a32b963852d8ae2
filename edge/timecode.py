"""Timecode in the service: the chase clock, its input, the ``wait.timecode`` port, the journal.

The venue's ``[timecode]`` section (docs/interfaces/timecode.md, "Service wiring") names one
source. ``ServiceTimecode`` owns a ``controller.timecode.ChaseClock`` fed by a
``TimecodeInput``, which is attached to:

- ``artnet``: the ``[dmx.input]`` Art-Net socket when the venue has one (two sockets on one UDP
  port would split the traffic between them), else an ``ArtNetInput`` of its own on
  ``artnet_bind``:``artnet_port`` (6454 by default);
- ``mtc``: an ``MtcInput`` reading the raw MIDI device ``mtc_device``.

``ChaseTimecode`` is the cue engine's ``TimecodeSource`` (controller/playback/ports.py) over the
clock: ``reached(timecode, fps)`` returns once the chased position is at or past the label (the
short way round midnight: a label up to 12 h behind counts as passed). Unlike a trigger, a wait
is a condition, not an edge: a relocate past the label, or a master parked past it, satisfies
it. It sleeps until the label is due at the chased speed and wakes early on every clock event
(lock, relocate, start, stop, freewheel, lost), so a relocate is seen at once.

Clock events are journalled (source kind ``timecode``, command ``timecode.<event>``, the
chased label, rate and state in ``args``). The chase clock reports them synchronously from the
receive callback; they go through a bounded queue (1 024; when full, events are dropped and
counted in ``journal.dropped``: a hostile sender relocating on every packet must not grow
memory) to a writer task that appends them in batches. ``run()`` also polls the clock so
dropouts (freewheel, lost) are noticed without a packet arriving.

Timecode triggers: ``attach(playback)`` (called by edge/api_playback.py once the cue engine
exists) registers every cue of the loaded show that has a ``timecode`` with a
``controller.timecode.TriggerScheduler`` over the clock, and registers them again whenever the
playback's show changes (``PUT /api/v1/show``). There are two schedulers, made once and polled
for the whole run: one for lists with ``timecode_rearm = "never"`` and one for
``"on_backward"`` (the venue's ``rearm_on_backward`` makes the first re-arm too). Because they
are polled all along, a show loaded while the master runs starts from where the master is: the
triggers it is already past do not fire (as after a forward relocate) and stay armed. A firing
runs ``Playback.start(list, cue, Origin(TIMECODE, "<source> at <label>"))`` in a task of its
own; the playback journals it (or its refusal) like any other start. The poller wakes at most
10 ms apart while triggers are armed (just after the next one is due), else every 20 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from controller.journal import JournalEvent, Origin, Result, SourceKind
from controller.playback import Playback, PlaybackError
from controller.show import Show
from controller.timecode import (
    ChaseClock,
    ChaseConfig,
    ChaseEvent,
    ChaseReading,
    ChaseState,
    Firing,
    FrameRate,
    Timecode,
    TimecodeError,
    TimecodeInput,
    TriggerScheduler,
)
from drivers.dmx import ArtNetInput
from drivers.dmx.artnet import ARTNET_PORT
from drivers.midi import MtcInput
from edge.config import TimecodeConfig
from edge.journal import JournalStore

log = logging.getLogger(__name__)

JOURNAL_QUEUE = 1024  # clock events waiting for the journal; beyond it they are dropped
JOURNAL_BATCH = 256
POLL_S = 0.02  # how often dropouts are looked for (freewheel after 4 frames = 160 ms at 25)
TRIGGER_POLL_S = 0.01  # at most this long between polls while timecode triggers are armed
MAX_WAIT_SLEEP_S = 0.25  # a waiter re-reads the clock at least this often

_RATES = {
    24.0: FrameRate.FPS_24,
    25.0: FrameRate.FPS_25,
    29.97: FrameRate.FPS_29_97_DF,
    30.0: FrameRate.FPS_30,
}
_REASONS = {
    ChaseEvent.LOCKED: "first timecode received",
    ChaseEvent.RELOCATED: "the position jumped",
    ChaseEvent.STARTED: "running again",
    ChaseEvent.STOPPED: "the master stopped",
    ChaseEvent.REACQUIRED: "timecode back during freewheel",
    ChaseEvent.FREEWHEEL: "no timecode: freewheeling",
    ChaseEvent.LOST: "freewheel ran out: stopped",
}


def target_of(timecode: str, fps: float) -> Timecode:
    """The label a ``wait.timecode`` action waits for (29.97 is drop-frame, as on the wire)."""
    rate = _RATES.get(float(fps))
    if rate is None:
        raise PlaybackError(f"wait.timecode: fps must be 24, 25, 29.97 or 30, not {fps:g}", 422)
    try:
        return Timecode.parse(timecode, rate)
    except TimecodeError as exc:
        raise PlaybackError(f"wait.timecode: {exc}", 422) from exc


def _wrap(diff: float, day: int) -> float:
    half = day / 2
    return (diff + half) % day - half


class ChaseTimecode:
    """``controller.playback.TimecodeSource`` over a ``ChaseClock`` (module docstring)."""

    def __init__(self, clock: ChaseClock, now: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._now = now
        self._changed = asyncio.Event()
        self.waiting = 0

    def signal(self) -> None:
        """The clock changed course (an event): waiters read it again now."""
        self._changed.set()
        self._changed = asyncio.Event()

    def remaining(self, target: Timecode, now: float) -> tuple[float | None, ChaseReading]:
        """Frames from the chased position to ``target`` (<= 0: reached; None: idle)."""
        r = self.clock.read(now)
        if r.position is None or r.rate is None:
            return None, r
        frame = target.convert(r.rate).to_frames()
        return -_wrap(r.position - frame, r.rate.frames_per_day), r

    async def reached(self, timecode: str, fps: float) -> None:
        target = target_of(timecode, fps)
        self.waiting += 1
        try:
            while True:
                changed = self._changed
                left, r = self.remaining(target, self._now())
                if left is not None and left <= 1e-6:
                    return
                sleep = MAX_WAIT_SLEEP_S
                if left is not None and r.rate is not None and r.state in _ADVANCING:
                    sleep = min(sleep, max(left / float(r.rate.fps), 0.001))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), sleep)
        finally:
            self.waiting -= 1


_ADVANCING = (ChaseState.RUNNING, ChaseState.FREEWHEEL)


class ServiceTimecode:
    """The venue's timecode source, chased, journalled and readable (module docstring)."""

    def __init__(self, cfg: TimecodeConfig, journal: JournalStore) -> None:
        self.cfg = cfg
        self.journal = journal
        self.clock = ChaseClock(
            ChaseConfig(
                freewheel_s=cfg.freewheel_s,
                dropout_frames=cfg.dropout_frames,
                relocate_frames=cfg.relocate_frames,
            ),
            on_event=self._on_event,
        )
        self.input = TimecodeInput(self.clock, stream_id=cfg.artnet_stream)
        self.source = ChaseTimecode(self.clock)
        self.link: ArtNetInput | MtcInput | None = None
        self.shared = False  # the Art-Net input is the [dmx.input] one
        self.origin = f"timecode {cfg.source}"
        self.journal_dropped = 0
        self.journal_failed = 0
        self.journalled = 0
        self._queue: asyncio.Queue[JournalEvent | None] = asyncio.Queue(JOURNAL_QUEUE)
        self._stopping = False
        # Timecode triggers: keyed by "re-arm on a backward relocate" (module docstring).
        self.schedulers = {
            False: TriggerScheduler(
                self.clock, on_fire=self._on_fire, rearm_on_backward=cfg.rearm_on_backward
            ),
            True: TriggerScheduler(self.clock, on_fire=self._on_fire, rearm_on_backward=True),
        }
        self.playback: Playback | None = None
        self.triggers_fired = 0
        self.triggers_failed = 0
        self.last_trigger_error = ""
        self._show: Show | None = None
        self._unsubscribe: Callable[[], None] | None = None
        # Strong references: a task the loop holds only weakly may vanish mid-start.
        self._firings: set[asyncio.Task[None]] = set()

    async def open(self, stack: contextlib.AsyncExitStack, shared: ArtNetInput | None) -> None:
        """Attach to ``shared`` (the [dmx.input] Art-Net socket) or open our own input."""
        cfg = self.cfg
        if cfg.source == "artnet":
            if shared is not None:
                shared.on_timecode = self.input.on_artnet
                self.link, self.shared = shared, True
            else:
                art = ArtNetInput(
                    name="timecode-in",
                    short_name="Flytower timecode",
                    long_name="Flytower timecode input",
                    bind=(cfg.artnet_bind, cfg.artnet_port or ARTNET_PORT),
                    on_timecode=self.input.on_artnet,
                )
                self.link = await stack.enter_async_context(art)
            host, port = self.link.local_address
            self.origin = f"timecode artnet {host}:{port} stream {cfg.artnet_stream}"
        elif cfg.source == "mtc":
            assert cfg.mtc_device is not None  # the config guarantees it
            mtc = MtcInput(cfg.mtc_device, on_time=self.input.on_mtc, name="mtc-in")
            self.link = await stack.enter_async_context(mtc)
            self.origin = f"timecode mtc {cfg.mtc_device}"
        log.info("%s: chasing", self.origin)

    # --- triggers --------------------------------------------------------------------------

    def attach(self, playback: Playback) -> None:
        """Start cues of ``playback``'s show at their timecode; follow its show changes."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.playback = playback
        self._unsubscribe = playback.subscribe(self._on_playback_change)
        self.load_triggers(playback.show)

    def _on_playback_change(self) -> None:
        if self.playback is not None and self.playback.show is not self._show:
            self.load_triggers(self.playback.show)

    def load_triggers(self, show: Show | None) -> None:
        """Register the timecode cues of ``show`` (None: none), all armed; the previous show's
        triggers are dropped."""
        self._show = show
        for scheduler in self.schedulers.values():
            scheduler.clear()
        cues = [] if show is None else show.timecode_cues()
        for tc in cues:
            self.schedulers[tc.rearm_on_backward].add(
                tc.at, tc.list_id, tc.cue, key=f"{tc.list_id}/{tc.cue}"
            )
        if cues:
            log.info("%s: %d timecode trigger(s)", self.origin, len(cues))

    def _on_fire(self, firing: Firing) -> None:
        playback = self.playback
        if playback is None:
            return
        trigger = firing.trigger
        origin = Origin(SourceKind.TIMECODE, f"{self.origin} at {trigger.at}"[:200])
        task = asyncio.get_running_loop().create_task(
            self._start(playback, trigger.cue_list, trigger.cue, origin),
            name=f"timecode-trigger {trigger.key}",
        )
        self._firings.add(task)
        task.add_done_callback(self._firings.discard)

    async def _start(self, playback: Playback, cue_list: str, cue: str, origin: Origin) -> None:
        try:
            await playback.start(cue_list, cue, origin)  # journalled by the playback
            self.triggers_fired += 1
        except Exception as exc:  # refused (panic, no such cue after a reload) or failed
            self.triggers_failed += 1
            self.last_trigger_error = f"{cue_list}/{cue}: {exc}"[:500]
            log.warning("timecode trigger %s/%s: %s", cue_list, cue, exc)

    def _triggers_status(self) -> dict[str, Any]:
        armed = sorted(
            (t for s in self.schedulers.values() for t in s.armed()),
            key=lambda t: t.at.to_seconds(),
        )
        fired = sorted(k for s in self.schedulers.values() for k in s.fired())
        return {
            "armed": [{"list": t.cue_list, "cue": t.cue, "at": str(t.at)} for t in armed],
            "fired": fired,
            "started": self.triggers_fired,
            "failed": self.triggers_failed,
            "last_error": self.last_trigger_error,
        }

    # --- journal ---------------------------------------------------------------------------

    def _on_event(self, event: ChaseEvent, reading: ChaseReading) -> None:
        self.source.signal()
        now = time.time()
        tc = reading.timecode
        journal_event = JournalEvent(
            SourceKind.TIMECODE,
            self.origin[:200],
            f"timecode.{event.value}",
            Result.OK,
            now,
            now,
            reason=_REASONS.get(event, ""),
            args={
                "timecode": None if tc is None else str(tc),
                "rate": None if reading.rate is None else reading.rate.label,
                "state": reading.state.value,
                "generation": reading.generation,
            },
        )
        try:
            self._queue.put_nowait(journal_event)
        except asyncio.QueueFull:
            self.journal_dropped += 1

    async def run(self) -> None:
        """Poll the clock for dropouts and write its events to the journal until ``stop``;
        the events already queued are written before it returns."""
        poller = asyncio.create_task(self._poll(), name="timecode-poll")
        try:
            while not (self._stopping and self._queue.empty()):
                batch = [await self._queue.get()]
                while len(batch) < JOURNAL_BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                events = [e for e in batch if e is not None]
                if not events:
                    continue
                try:
                    await self.journal.append_many(events)
                    self.journalled += len(events)
                except Exception:
                    self.journal_failed += len(events)
                    log.exception("timecode: %d event(s) not journalled", len(events))
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            if self._firings:  # starts in flight finish (they only start cues)
                await asyncio.gather(*list(self._firings), return_exceptions=True)

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(asyncio.QueueFull):  # full: the writer is not waiting anyway
            self._queue.put_nowait(None)

    async def _poll(self) -> None:
        while True:
            now = time.monotonic()
            self.clock.poll(now)
            sleep = POLL_S
            for scheduler in self.schedulers.values():
                scheduler.poll(now)
                if scheduler.armed():
                    sleep = TRIGGER_POLL_S
                    wait = scheduler.seconds_until_next(now)
                    if wait is not None:
                        sleep = min(sleep, wait + 0.0005)
            await asyncio.sleep(sleep)

    # --- reading ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``GET /api/v1/timecode`` answers."""
        r = self.clock.read(time.monotonic())
        tc = r.timecode
        fps = None if r.rate is None else float(r.rate.fps)
        return {
            "source": self.cfg.source,
            "state": r.state.value,
            "timecode": None if tc is None else str(tc),
            "rate": None if r.rate is None else r.rate.label,
            "fps": fps,
            "position_frames": None if r.position is None else round(r.position, 3),
            "seconds": None if r.position is None or fps is None else r.position / fps,
            "generation": r.generation,
            "events": {e.value: n for e, n in sorted(self.clock.events.items())},
            "waiting": self.source.waiting,
            "triggers": self._triggers_status(),
            "input": {
                "accepted": self.input.accepted,
                "ignored": self.input.ignored,
                "errors": self.input.errors,
                "last_error": self.input.last_error,
            },
            "link": self._link_status(),
            "journal": {
                "written": self.journalled,
                "queued": self._queue.qsize(),
                "dropped": self.journal_dropped,
                "failed": self.journal_failed,
            },
            "config": self.cfg.model_dump(),
        }

    def _link_status(self) -> dict[str, Any] | None:
        link = self.link
        if link is None:
            return None
        out: dict[str, Any] = {
            "name": link.tracker.name,
            "state": link.health.state.value,
            "reason": link.health.reason,
            "stats": asdict(link.stats),
        }
        if isinstance(link, ArtNetInput):
            out["shared"] = self.shared
            with contextlib.suppress(Exception):  # closed: no address
                host, port = link.local_address
                out["address"] = f"{host}:{port}"
        else:
            out["device"] = link.path
            out["times"] = link.times
        return out
