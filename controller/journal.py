"""The journal's event and the sink the controller appends to (docs/journal.md).

Every control and scheduling event — who or what asked (an operator, a script, an OSC address,
timecode, the follow/wait of a cue, the system), the command, the cue, the targets, the result
(ok, refused with the reason, failed with the error) and its timing — becomes one
:class:`JournalEvent`. The controller emits events through a :class:`JournalSink`; it never knows
where they are kept (the SQLite journal lives in ``edge/journal.py``, which the controller must
not import).

The promise a sink makes: when ``append`` returns, the event survives a crash of the process.
So a caller that acknowledges a command *after* :func:`journalled` returns never acknowledges
something the journal could lose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from drivers.base import DeviceUnavailable
from drivers.model import CommandError

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_TEXT = 1000  # longest source, command, cue or target id kept; reasons are cut at 4x that


class SourceKind(StrEnum):
    """Who or what asked. ``source`` (free text) says which one: address, peer, cue."""

    USER = "user"  # an operator: REST, WebSocket, the console
    SCRIPT = "script"  # a show-control script (the Python client library)
    OSC = "osc"  # an OSC message; source names the address and the peer
    MQTT = "mqtt"  # a command on an MQTT …/cmd/{name} topic
    TIMECODE = "timecode"  # a timecode-triggered cue
    FOLLOW = "follow"  # the follow of cue X (source names it)
    WAIT = "wait"  # the wait / auto-continue of cue X
    SYSTEM = "system"  # the service itself: start, stop, panic on shutdown, retention


class Result(StrEnum):
    OK = "ok"
    REFUSED = "refused"  # not done, on purpose: out of range, safety, debounce; reason says why
    FAILED = "failed"  # tried and it did not work: device unavailable, an error; reason says it


@dataclass(frozen=True, slots=True)
class Origin:
    """The source of a request, as a front end (REST, OSC, MQTT, cue engine) knows it."""

    kind: SourceKind
    source: str = ""


@dataclass(frozen=True, slots=True)
class JournalEvent:
    """One control or scheduling event. Times are wall-clock epoch seconds.

    ``requested`` is when the request arrived (the journal's time index); ``executed`` when the
    command was carried out (None if it never was); ``duration_s`` how long carrying it out took.
    ``cue`` is the cue number as written ("12.5"): decimal cue numbers are not floats.
    """

    kind: SourceKind
    source: str
    command: str
    result: Result
    requested: float
    executed: float | None = None
    duration_s: float | None = None
    reason: str = ""
    cue_list: str | None = None
    cue: str | None = None
    targets: tuple[str, ...] = ()
    args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not self.command:
            problems.append("command is empty")
        for name, text in (
            ("source", self.source),
            ("command", self.command),
            ("cue_list", self.cue_list or ""),
            ("cue", self.cue or ""),
            *(("target", t) for t in self.targets),
        ):
            if len(text) > MAX_TEXT:
                problems.append(f"{name} is longer than {MAX_TEXT} characters")
        for name, t in (("requested", self.requested), ("executed", self.executed)):
            if t is not None and not math.isfinite(t):
                problems.append(f"{name} is not a finite time")
        if self.duration_s is not None and not (
            math.isfinite(self.duration_s) and self.duration_s >= 0
        ):
            problems.append("duration_s must be finite and >= 0")
        if any(not t for t in self.targets):
            problems.append("a target id is empty")
        if problems:
            raise ValueError("journal event: " + "; ".join(problems))
        if len(self.reason) > 4 * MAX_TEXT:  # an error text is cut, not refused
            object.__setattr__(self, "reason", self.reason[: 4 * MAX_TEXT - 1] + "…")
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "kind", SourceKind(self.kind))
        object.__setattr__(self, "result", Result(self.result))


class JournalHeld(RuntimeError):
    """The event is not yet durable: the journal's file takes no writes now (the reason is in
    the message). It is held in memory and written when it can be: late, not lost."""


class JournalSink(Protocol):
    """Where events go. ``append`` returns the event's sequence number once it is durable."""

    async def append(self, event: JournalEvent) -> int: ...


class NullJournal:
    """A sink that keeps nothing (tools and tests that run a controller without a journal)."""

    async def append(self, event: JournalEvent) -> int:
        return 0


def classify(exc: BaseException) -> tuple[Result, str]:
    """How an exception from a command is journalled: refused (the profile or the safety rules
    said no) or failed (the device or the code could not do it)."""
    if isinstance(exc, CommandError):
        return Result.REFUSED, str(exc)
    if isinstance(exc, asyncio.CancelledError):
        return Result.FAILED, "cancelled before it completed (the caller went away)"
    if isinstance(exc, DeviceUnavailable):
        return Result.FAILED, str(exc) or "device unavailable"
    return Result.FAILED, f"{type(exc).__name__}: {exc}"


async def journalled(
    sink: JournalSink,
    origin: Origin,
    command: str,
    call: Callable[[], Awaitable[T]],
    *,
    targets: Sequence[str] = (),
    args: Mapping[str, Any] | None = None,
    cue_list: str | None = None,
    cue: str | None = None,
) -> T:
    """Run ``call`` and append its event; return (or raise) only once the event is durable.

    The event is appended whatever happens — ok, refused, failed or cancelled — and the
    outcome of ``call`` is passed on unchanged. A cancelled caller still gets its event
    written (the append is shielded), because the command may already have reached a device.
    """
    requested = time.time()
    t0 = time.perf_counter()

    def event(result: Result, reason: str, executed: float | None) -> JournalEvent:
        return JournalEvent(
            kind=origin.kind,
            source=origin.source,
            command=command,
            result=result,
            requested=requested,
            executed=executed,
            duration_s=time.perf_counter() - t0,
            reason=reason,
            cue_list=cue_list,
            cue=cue,
            targets=tuple(targets),
            args=dict(args or {}),
        )

    try:
        out = await call()
    except BaseException as exc:
        result, reason = classify(exc)
        # A refusal never reached the device: no execution time. A failure may have.
        executed = None if result is Result.REFUSED else time.time()
        with contextlib.suppress(JournalHeld):  # held, written later: the outcome stands
            await asyncio.shield(sink.append(event(result, reason, executed)))
        raise
    try:
        await sink.append(event(Result.OK, "", time.time()))
    except JournalHeld as held:  # the command was carried out; its record is late, not lost
        log.warning("%s: %s", command, held)
    return out
