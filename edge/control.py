"""The control seat: which controller runs the show, and its hot standby (docs/distributed.md).

A venue with two ``[[nodes]] role = "controller"`` has a primary (the first listed, by
preference) and a standby. Both load the show and reach every node's devices; one **holds the
seat** at a time. Everything between them goes over the broker (``$control`` topics,
``drivers.mqtt.schema.control_topic``):

- ``active`` (retained): ``{"node", "term", "since", "reason"}``, the holder. A claim has a term
  one above the highest seen; a holder that sees a claim of a higher term (or of the same term
  by a controller listed earlier) yields. The holder publishes its claim again after every
  reconnect, so a broker that lost its retained messages learns it again.
- ``events``: every operator command the holder's cue engine accepted (GO, stop, pause, ...,
  ``Playback.accepted``), numbered. The standby applies each to its own engine
  (``Playback.mirror``): its cues run **tracking**, their lighting rendered into its own DMX
  outputs and nothing else sent (``Playback.live`` False). Follows and auto-continues it runs
  itself, from the same GO.
- ``positions`` (retained): each list's current and standby cue, so a standby that starts
  while the show runs puts its lists where the holder's are.

**Takeover.** The standby takes the seat when the holder's node goes offline: at once when
the broker publishes its will (a crash closes its connection; a hang is noticed after the
keepalive, 1.5 × ``[mqtt] keepalive_s``), or when it says goodbye. It claims the next term,
goes live (``Playback.go_live``): the device commands it tracked in the last
``RESEND_WINDOW_S`` are sent with their request ids, so a node that already ran one from the
old holder answers it again and does not run it twice; one the old holder never sent now runs.
Cues that had not reached their commands yet send them when they do. Its sACN outputs go from
the standby priority (one below the configured one) to the configured one, and its Art-Net
and ENTTEC outputs, silent on a standby (they cannot be merged by priority), start sending.

**Fail-back is explicit**: a controller that comes back finds the seat held and stays the
standby until an operator asks it to take the seat (``POST /api/v1/control/takeover``). Every
claim, takeover and yield is journalled, with the time from the old holder's death to the
claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from controller.journal import JournalEvent, JournalHeld, Origin, Result, SourceKind
from controller.motion.supervisor import StopKind
from controller.show import save_show
from controller.show.file import show_data
from drivers.dmx.output import SacnOutput
from drivers.mqtt.hub import BrokerUnavailable
from drivers.mqtt.schema import control_topic, safety_topic

if TYPE_CHECKING:
    from edge.nodes import NodeView
    from edge.service import Service

log = logging.getLogger(__name__)

RESEND_WINDOW_S = 5.0  # tracked device commands this recent are sent at a takeover
JOIN_WAIT_S = 1.0  # at start, for the retained claim and the nodes' states to arrive
PREFERRED_GRACE_S = 2.0  # at start with no holder: how long the standby leaves the primary
# A will can also mean the broker is going down (Mosquitto publishes every client's will as
# it stops): the standby takes over only if its own connection is still up this much later.
CONFIRM_S = 0.25
# After our own reconnect, how long the holder has to be born again before it is taken for dead
RECONNECT_GRACE_S = 10.0
MAX_PAYLOAD = 64 * 1024
MAX_SHOW = 8 * 1024 * 1024  # a show file's data, as JSON

_Id = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
_Text = Annotated[StrictStr, Field(max_length=100)]
_Term = Annotated[StrictInt, Field(ge=1, lt=2**53)]
_Wall = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Claim(_Strict):
    node: _Id
    term: _Term
    since: _Wall
    reason: Annotated[StrictStr, Field(max_length=300)] = ""


class MirroredCommand(_Strict):
    """One command the holder's engine accepted (``Playback._replicate``'s event)."""

    op: Literal["go", "start", "standby", "back", "stop", "pause", "resume", "release", "panic"]
    wall: _Wall
    list: _Text | None = None
    cue: _Text | None = None
    chain: Annotated[StrictStr, Field(max_length=128, pattern=r"^[!-~]*$")] = ""
    keep_standby: StrictBool = False
    fade_s: Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)] = 0.0  # as the API


class Event(_Strict):
    node: _Id
    term: _Term
    seq: Annotated[StrictInt, Field(ge=1, lt=2**53)]
    command: MirroredCommand


class Positions(_Strict):
    node: _Id
    term: _Term
    lists: Annotated[
        dict[_Text, dict[Literal["current", "standby"], _Text | None]], Field(max_length=1000)
    ]


M = TypeVar("M", bound=_Strict)


class SharedShow(_Strict):
    """The show the holder loaded (``PUT /api/v1/show``), as the show file's data."""

    node: _Id
    term: _Term
    show: dict[str, Any]


def _decode(model: type[M], msg: aiomqtt.Message, limit: int = MAX_PAYLOAD) -> M:
    payload = msg.payload if isinstance(msg.payload, bytes) else b""
    if len(payload) > limit:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {limit}")
    return model.model_validate_json(payload)


class ControlSeat:
    def __init__(self, service: Service) -> None:
        cfg = service.venue.config
        self.service = service
        self.node = service.node
        self.venue = cfg.venue.id
        self.controllers = [n.id for n in cfg.nodes if n.role == "controller"]
        # Only a venue with a second controller has a seat to share.
        self.enabled = service.role == "controller" and len(self.controllers) > 1
        self.holder: str | None = None
        self.term = 0
        self.since: float | None = None
        self.reason = ""
        self.sent = self.applied = self.malformed = self.refused = 0
        self.last_takeover: dict[str, Any] | None = None
        self._seq = 0
        self._last_applied: tuple[str, int, int] | None = None  # holder, term, seq
        self._joined = False
        self._claim_seen = asyncio.Event()
        self._claiming = False
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._inbox: asyncio.Queue[Event] = asyncio.Queue()  # applied in order, one at a time
        self._tasks: set[asyncio.Task[None]] = set()
        self._sacn_priority: dict[int, int] = {}  # each sACN output's configured priority

    # --- state ----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return not self.enabled or self.holder == self.node

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "node": self.node,
            "controllers": self.controllers,
            "active": self.active,
            "state": ("active" if self.active else "standby") if self._joined else "joining",
            "holder": self.holder if self.enabled else self.node,
            "term": self.term,
            "since": self.since,
            "reason": self.reason,
            "events_sent": self.sent,
            "events_applied": self.applied,
            "malformed": self.malformed,
            "last_takeover": self.last_takeover,
        }

    def _ports(self) -> list[Any]:
        dmx = self.service.dmx
        return [] if dmx is None else list(dmx.ports)

    def _output(self, live: bool) -> None:
        """Live: every DMX output sends at its configured priority. Standby: sACN one below
        it (a receiver takes the holder's and falls back to ours when the holder's source
        times out), Art-Net and ENTTEC silent (no priority to merge by)."""
        for port in self._ports():
            if isinstance(port, SacnOutput):
                base = self._sacn_priority.get(id(port), port.priority)
                port.priority = base if live else max(0, base - 1)
            elif hasattr(port, "muted"):
                port.muted = not live
        playback = self.service.playback
        if playback is not None:
            playback.live = live
            playback.refusal = None if live else self._refusal()

    def _refusal(self) -> str:
        where = f"controller {self.holder}" if self.holder else "no controller yet"
        return f"this controller ({self.node}) is the standby: the show is run by {where}"

    async def _journal(self, command: str, reason: str, requested: float) -> None:
        now = time.time()
        event = JournalEvent(
            SourceKind.SYSTEM, f"control {self.node}", command, Result.OK, requested, now,
            max(0.0, now - requested), reason[:1000],
        )  # fmt: skip
        try:
            await self.service.journal.append(event)
        except JournalHeld as held:  # written when the journal can: late, not lost
            log.warning("control: %s: %s", command, held)
        except Exception:
            log.exception("control: journal append failed for %s", command)

    # --- run ------------------------------------------------------------------------------

    async def run(self) -> None:
        link = self.service.mqtt
        if not self.enabled or link is None:
            return
        hub = link.hub
        self._sacn_priority = {
            id(p): p.priority for p in self._ports() if isinstance(p, SacnOutput)
        }
        try:
            await self._run(hub)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, hub: Any) -> None:
        self._output(False)
        playback = self.service.playback
        if playback is not None:
            playback.accepted.append(self._accepted)
        hub.on_connect(self._reclaim)
        self.service.nodes.listeners.append(self._on_node)
        await hub.subscribe(control_topic(self.venue, "active"), self._on_claim)
        await hub.subscribe(control_topic(self.venue, "events"), self._on_event)
        await hub.subscribe(control_topic(self.venue, "positions"), self._on_positions)
        await hub.subscribe(control_topic(self.venue, "show"), self._on_show)
        self._spawn(self._apply_loop())
        await hub.connected.wait()
        await asyncio.sleep(JOIN_WAIT_S)  # the retained claim and the nodes' births
        if self.holder is None and self.node != self.controllers[0]:
            # the primary by preference claims first, if it is there
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._claim_seen.wait(), PREFERRED_GRACE_S)
        self._joined = True
        if self.holder is None:
            await self.claim("no controller held the show", "control.claim")
        elif self.holder == self.node:
            await self.claim("this controller held the show before its restart", "control.claim")
        elif self._holder_offline():
            await self.claim(f"{self.holder} is offline", "control.takeover")
        else:
            await self._journal("control.standby", f"the show is run by {self.holder}", time.time())
            log.info("control: standby; the show is run by %s (term %d)", self.holder, self.term)
        topic = control_topic(self.venue, "events")
        while True:  # in order; one that cannot go now goes after the reconnect
            payload = await self._outbox.get()
            while True:
                try:
                    await hub.publish(topic, payload, qos=1)
                    break
                except Exception as exc:
                    log.warning(
                        "control: a command waits for the broker to reach the standby: %s", exc
                    )
                    await hub.connected.wait()
                    await asyncio.sleep(0.1)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # a strong reference: the loop keeps only weak ones
        task.add_done_callback(self._tasks.discard)

    def _rank(self, node: str | None) -> int:
        return self.controllers.index(node) if node in self.controllers else len(self.controllers)

    def _holder_offline(self) -> bool:
        view = self.service.nodes.nodes.get(self.holder or "")
        return view is not None and view.state == "offline"

    async def claim(self, reason: str, command: str, *, lost_at: float | None = None) -> None:
        """Take the seat: the next term, published retained, then live."""
        if self._claiming:
            return
        self._claiming = True
        started = time.time()
        try:
            previous = self.holder
            self.term += 1
            self.holder, self.since, self.reason = self.node, started, reason
            self._output(True)
            playback = self.service.playback
            resent = 0
            if playback is not None and previous not in (None, self.node):
                origin = Origin(SourceKind.SYSTEM, f"takeover from {previous}")
                resent = await playback.go_live(RESEND_WINDOW_S, origin)
            await self._publish_claim()
            self._publish_positions()
            claimed = time.time()
            detail = f"{reason}; term {self.term}"
            if command == "control.takeover":
                self.last_takeover = {
                    "from": previous,
                    "term": self.term,
                    "at": claimed,
                    "after_death_ms": None if lost_at is None else (claimed - lost_at) * 1000,
                    "resent": resent,
                }
                if lost_at is not None:
                    detail += f"; seat taken {(claimed - lost_at) * 1000:.0f} ms after the death"
                detail += f"; {resent} tracked command(s) resent"
            log.warning("control: %s: %s", command, detail)
            await self._journal(command, detail, started)
        finally:
            self._claiming = False

    async def _retain(self, what: Literal["active", "positions", "show"], message: _Strict) -> None:
        """Publish ``message`` retained on ``$control/{what}``; a failure is logged (the next
        change, or the reconnect for a claim, publishes it again)."""
        link = self.service.mqtt
        if link is None:
            return
        topic = control_topic(self.venue, what)
        try:
            await link.hub.publish(topic, message.model_dump_json().encode(), qos=1, retain=True)
        except Exception as exc:
            log.warning("control: %s not published: %s", what, exc)

    async def _publish_claim(self) -> None:
        since = self.since or time.time()
        claim = Claim(node=self.node, term=self.term, since=since, reason=self.reason[:300])
        await self._retain("active", claim)

    async def _reclaim(self) -> None:
        """After every (re)connect: a holder says its claim again (a restarted broker may have
        lost it); a standby gives a holder that the broker called dead time to come back."""
        if not self._joined:
            return
        if self.active:
            await self._publish_claim()
        elif self._holder_offline():
            self._spawn(self._confirm_death(self.holder or "", time.time(), RECONNECT_GRACE_S))

    def _on_claim(self, msg: aiomqtt.Message) -> None:
        try:
            claim = _decode(Claim, msg)
        except (ValidationError, ValueError) as exc:
            self.malformed += 1
            log.warning("control: a malformed claim ignored: %s", str(exc)[:300])
            return
        if claim.node not in self.controllers:
            self.malformed += 1
            log.warning("control: a claim by %s, not a controller of the venue", claim.node)
            return
        if claim.node == self.node and claim.term == self.term:
            return  # our own
        # The higher term wins; at the same term (two claims at once), the one listed first.
        if self.holder is not None and (claim.term, -self._rank(claim.node)) <= (
            self.term,
            -self._rank(self.holder),
        ):
            if self.active and self._joined:  # a stale claim, retained from before: ours wins
                self._spawn(self._publish_claim())
            return
        was_active = self.active and self._joined
        self._claim_seen.set()
        self.term, self.holder = claim.term, claim.node
        self.since, self.reason = claim.since, claim.reason
        if claim.node == self.node:
            return  # a retained claim of ours from before a restart: run() claims again
        self._output(False)
        if was_active:
            reason = f"{claim.node} claimed the show (term {claim.term}): {claim.reason}"
            log.warning("control: control.yield: %s", reason)
            self._spawn(self._journal("control.yield", reason, time.time()))

    def _on_node(self, view: NodeView) -> None:
        """A node's state changed: the holder's death is the standby's cue to take over."""
        if self._joined and not self.active and view.id == self.holder and view.state == "offline":
            self._spawn(self._confirm_death(view.id, time.time(), CONFIRM_S))

    async def _confirm_death(self, node: str, lost_at: float, wait_s: float) -> None:
        """Take over from ``node`` if, ``wait_s`` later, it is still offline, still holds the
        seat, and our own connection is up (else the broker went away, not the holder)."""
        await asyncio.sleep(wait_s)
        link = self.service.mqtt
        view = self.service.nodes.nodes.get(node)
        if link is None or view is None or self.active or self.holder != node:
            return
        if not link.hub.connected.is_set():
            log.warning(
                "control: %s's will came as the broker went away: not taken as its death", node
            )
            return
        if view.state != "offline":
            return
        lost = view.reason == "lost"
        what = "was lost (the broker published its will)" if lost else "said goodbye"
        await self.claim(f"{node} {what}", "control.takeover", lost_at=lost_at)

    # --- mirroring ------------------------------------------------------------------------

    def _accepted(self, event: dict[str, Any]) -> None:
        """The holder's engine accepted an operator command: to the standby, in order."""
        if not (self.active and self._joined):
            return
        self._seq += 1
        try:
            command = MirroredCommand.model_validate(event)
        except ValidationError as exc:  # an engine bug, not a reason to stop the show
            log.error("control: command not mirrored: %s", exc)
            return
        ev = Event(node=self.node, term=self.term, seq=self._seq, command=command)
        self._outbox.put_nowait(ev.model_dump_json().encode())
        self.sent += 1
        self._publish_positions()

    def _publish_positions(self) -> None:
        playback = self.service.playback
        if playback is None:
            return
        pos = Positions(node=self.node, term=max(1, self.term), lists=playback.positions())
        self._spawn(self._retain("positions", pos))

    def _on_event(self, msg: aiomqtt.Message) -> None:
        try:
            ev = _decode(Event, msg)
        except (ValidationError, ValueError) as exc:
            self.malformed += 1
            log.warning("control: a malformed command ignored: %s", str(exc)[:300])
            return
        if ev.node == self.node or ev.node != self.holder or self.active:
            return  # ours, or from a controller that does not hold the seat
        key = (ev.node, ev.term, ev.seq)
        if self._last_applied is not None and key <= self._last_applied:
            return  # a QoS 1 repeat
        self._last_applied = key
        self._inbox.put_nowait(ev)

    async def _apply_loop(self) -> None:
        while True:
            ev = await self._inbox.get()
            playback = self.service.playback
            if playback is None or self.active:
                continue
            self.applied += 1
            try:
                await playback.mirror(
                    ev.command.model_dump(), Origin(SourceKind.SYSTEM, f"mirror of {ev.node}")
                )
            except Exception as exc:  # journalled by the engine; the standby goes on tracking
                self.refused += 1
                log.warning("control: mirrored %s not applied: %s", ev.command.op, exc)

    def share_show(self, data: dict[str, Any]) -> None:
        """The holder loaded a show: retained for its standby (now, or when it starts)."""
        if self.enabled and self.active and self._joined:
            self._spawn(self._retain("show", SharedShow(node=self.node, term=self.term, show=data)))

    def _on_show(self, msg: aiomqtt.Message) -> None:
        try:
            shared = _decode(SharedShow, msg, MAX_SHOW)
        except (ValidationError, ValueError) as exc:
            self.malformed += 1
            log.warning("control: a malformed show ignored: %s", str(exc)[:300])
            return
        if shared.node == self.node or self.active:
            return
        self._spawn(self._load_shared(shared))

    async def _load_shared(self, shared: SharedShow) -> None:
        """A standby loads the holder's show, checked against its own catalogue, and keeps it
        in its show file (atomically), so a restart finds it too."""
        from edge import api_playback  # it imports the service's types

        playback = self.service.playback
        if playback is None or (
            playback.show is not None and show_data(playback.show) == shared.show
        ):
            return
        path = api_playback.show_path(self.service)
        try:
            show = await asyncio.to_thread(
                save_show, path, shared.show, api_playback.catalogue(self.service)
            )
            await playback.mirror_load(show, Origin(SourceKind.SYSTEM, f"mirror of {shared.node}"))
            api_playback.use_groups(playback, show)
        except Exception as exc:  # journalled by the engine when it refused
            self.refused += 1
            log.error("control: the show of %s was not loaded here: %s", shared.node, exc)
            return
        log.info("control: loaded %s's show '%s'", shared.node, show.show.title)

    def _on_positions(self, msg: aiomqtt.Message) -> None:
        try:
            pos = _decode(Positions, msg)
        except (ValidationError, ValueError) as exc:
            self.malformed += 1
            log.warning("control: malformed positions ignored: %s", str(exc)[:300])
            return
        playback = self.service.playback
        if self._joined or pos.node == self.node or playback is None:
            return  # only a standby that joins late starts from the holder's positions
        if any(run.running for run in playback.lists.values()):
            return
        playback.set_positions(pos.lists)


PARTITION_POLL_S = 0.05


async def guard_partition(service: Service) -> None:
    """An edge node cut off from the broker stops its axes that are moving: whoever moved
    them can no longer see or stop them (docs/distributed.md, "Partitions"). Its lighting
    holds its last look, its drivers go on, and what its controller sent while it was away
    is refused when it arrives late (``command_max_late_s``, ``command_max_age_s``)."""
    link, supervisor = service.mqtt, service.supervisor
    if link is None or supervisor is None or service.role != "edge":
        return
    hub = link.hub
    origin = Origin(SourceKind.SYSTEM, f"node {service.node}: cut off from the broker")
    while True:
        await hub.connected.wait()
        while hub.connected.is_set():  # noqa: ASYNC110 (the hub has no event for a lost link)
            await asyncio.sleep(PARTITION_POLL_S)
        moving = [a for a in supervisor.axes if supervisor.busy(a)]
        if moving:
            log.warning("cut off from the broker: stopping %s", ", ".join(moving))
            failures = await supervisor.stop_all(origin)
            if failures:
                log.error("cut off from the broker: stops failed: %s", failures)


CONTROLLER_WATCHDOG_S = 1.0  # an edge node's moves outlive the controller's death this long


class ControllerWatch:
    """On an edge node with axes: a move commanded over the broker (a controller's cue or
    command, ``SourceKind.MQTT``) goes on only while a controller holds the show.

    When the holder's node goes offline (its will, or a goodbye), the node waits
    ``CONTROLLER_WATCHDOG_S`` for a controller's claim (the standby's takeover takes ~0.25 s).
    With one, the moves go on and the new holder's cue sees them arrive; without, every axis in
    such a move gets a controlled stop, journalled with the reason. Moves of the node's own
    operators (its console, OSC) are theirs and go on. A venue with one controller has no
    claims: its controller's death stops them after the same time.
    """

    def __init__(self, service: Service) -> None:
        cfg = service.venue.config
        self.service = service
        self.venue = cfg.venue.id
        self.controllers = [n.id for n in cfg.nodes if n.role == "controller"]
        self.holder: str | None = self.controllers[0] if len(self.controllers) == 1 else None
        self.term = 0
        self.stopped: list[str] = []  # the axes it stopped, last time (status, tests)
        self._timer: asyncio.Task[None] | None = None

    async def run(self) -> None:
        link, sup = self.service.mqtt, self.service.supervisor
        if self.service.role != "edge" or not self.controllers or link is None or sup is None:
            return
        self.service.nodes.listeners.append(self._on_node)
        await link.hub.subscribe(control_topic(self.venue, "active"), self._on_claim)
        try:
            await asyncio.Event().wait()
        finally:
            if self._timer is not None:
                self._timer.cancel()

    def _on_claim(self, msg: aiomqtt.Message) -> None:
        try:
            claim = _decode(Claim, msg)
        except (ValidationError, ValueError):
            return  # the controllers count and log malformed claims
        if claim.node not in self.controllers or claim.term < self.term:
            return
        self.term, self.holder = claim.term, claim.node
        view = self.service.nodes.nodes.get(claim.node)
        if self._timer is not None and (view is None or view.state != "offline"):
            self._timer.cancel()
            self._timer = None
            log.warning(
                "controller %s took the show over: moves commanded over MQTT go on", claim.node
            )

    def _on_node(self, view: NodeView) -> None:
        if view.id != self.holder or view.state != "offline" or self._timer is not None:
            return
        self._timer = asyncio.get_running_loop().create_task(self._expire(view.id))

    async def _expire(self, lost: str) -> None:
        await asyncio.sleep(CONTROLLER_WATCHDOG_S)
        self._timer = None
        sup = self.service.supervisor
        if sup is None:
            return
        axes = sorted(
            {a for m in sup.moves.values() if m.origin.kind is SourceKind.MQTT for a in m.axes}
        )
        if not axes:
            return
        why = (
            f"controller {lost} is gone and none took the show within "
            f"{CONTROLLER_WATCHDOG_S:g} s: its moves stopped"
        )
        log.warning("%s: %s", why, ", ".join(axes))
        self.stopped = axes
        failures = await sup.stop(axes, Origin(SourceKind.SYSTEM, why), StopKind.CONTROLLED)
        if failures:
            log.error("controller watchdog: stops failed: %s", failures)


SAFETY_EVERY_S = 0.1  # how often a node looks for a change of its safety state to publish
ESTOP_MAX_AGE_S = 5.0  # a venue E-stop older than this (held while a node was away) is stale


class VenueEstop(_Strict):
    node: _Id
    reason: Annotated[StrictStr, Field(max_length=300)] = "software E-stop"
    ts: _Wall


class SafetyShare:
    """The machinery's safety state across nodes (docs/distributed.md, "Safety").

    A node with axes publishes its safety state, retained, on ``…/{node}/$safety`` whenever it
    changes (E-stop latched and why, a hold-to-run enable held), so every controller (the
    holder and its standby alike) shows it live (``GET /api/v1/nodes``). And it latches its
    E-stop on a controller's venue E-stop (``$control/estop``), which is not older than
    ``ESTOP_MAX_AGE_S``; the reset stays at the node, where the machinery can be seen."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.venue = service.venue.config.venue.id
        self.received = 0
        self._tasks: set[asyncio.Task[Any]] = set()  # the E-stops it is latching

    def state(self) -> dict[str, Any] | None:
        sup = self.service.supervisor
        if sup is None:
            return None
        return {
            "estop": sup.estop_latched,
            "reason": sup.estop_reason if sup.estop_latched else "",
            "enabled": sup.enabled(),
            "axes": sorted(sup.axes),
        }

    async def send_estop(self, reason: str) -> None:
        """A controller's E-stop, for every node's machinery."""
        link = self.service.mqtt
        if link is None:
            raise BrokerUnavailable("no broker: the E-stop cannot reach the other nodes")
        doc = VenueEstop(node=self.service.node, reason=reason[:300], ts=time.time())
        await link.hub.publish(
            control_topic(self.venue, "estop"), doc.model_dump_json().encode(), qos=1, timeout_s=2
        )

    async def run(self) -> None:
        link, sup = self.service.mqtt, self.service.supervisor
        if link is None or sup is None:
            return
        await link.hub.subscribe(control_topic(self.venue, "estop"), self._on_estop)
        topic = safety_topic(self.venue, self.service.node)
        sent: dict[str, Any] | None = None
        while True:
            await link.hub.connected.wait()
            now = self.state()
            if now != sent:
                try:
                    payload = json.dumps({**(now or {}), "ts": round(time.time() * 1000)})
                    await link.hub.publish(topic, payload.encode(), qos=1, retain=True)
                    sent = now
                except BrokerUnavailable:
                    pass
            await asyncio.sleep(SAFETY_EVERY_S)

    def _on_estop(self, msg: aiomqtt.Message) -> None:
        try:
            doc = _decode(VenueEstop, msg)
        except (ValidationError, ValueError) as exc:
            log.warning("a malformed venue E-stop ignored: %s", str(exc)[:300])
            return
        age = time.time() - doc.ts
        if age > ESTOP_MAX_AGE_S:
            log.warning("a venue E-stop from %s %.1f s old ignored (stale)", doc.node, age)
            return
        sup = self.service.supervisor
        if sup is None:
            return
        self.received += 1
        origin = Origin(SourceKind.MQTT, f"venue E-stop from {doc.node}")
        log.warning("venue E-stop from %s: %s", doc.node, doc.reason)
        task = asyncio.get_running_loop().create_task(sup.estop(origin, doc.reason))
        self._tasks.add(task)  # a strong reference: the loop keeps only weak ones
        task.add_done_callback(self._tasks.discard)
