"""What the cue engine drives, as small protocols; the service adapts the real subsystems.

- ``Lighting``: levels into a named layer at a priority (the list's source of the lighting
  engine), release of a layer, and the panic look. ``controller.playback.lighting`` adapts
  ``controller.lighting.LightingEngine`` to it.
- ``Devices``: run a profile command on a device (journalled by the service with the origin
  it is given), write a point, read a point's latest value, wait for a point condition.
- ``Machinery``: the one choke point every machinery command of a cue passes. This one hands
  the command to ``Devices``; in the service it is ``controller.motion.cues
  .SupervisedMachinery``, over the safety supervisor; panic calls its ``stop_all``.
- ``Audio`` and ``TimecodeSource`` are optional: without them the actions that need them fail
  with a reason (journalled) and the rest of the cue runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from controller.journal import Origin
from controller.show.model import Level

MOVE_COMMAND = "move_to"
STOP_COMMAND = "stop"
POSITION_POINT = "position"


class PlaybackError(Exception):
    """A command the engine did not carry out; ``status`` is the HTTP-like class of it:
    409 (the state does not allow it now: debounce, end of list, panic) or 422 (the request
    names something that does not exist)."""

    def __init__(self, reason: str, status: int = 409) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Unavailable(PlaybackError):
    """This node has no such subsystem (no sound-field engine, no audio output): the action
    cannot run here at all, which callers may treat as skipped rather than failed."""


class Refused(PlaybackError):
    """Not done, on purpose (debounce, nothing on standby, no show): journalled as refused."""


class Incomplete(PlaybackError):
    """Carried out as far as it could go, but a part of it failed (a device that cannot be
    reached): journalled as failed, HTTP 503 with what did not happen."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, 503)


class NotFound(PlaybackError):
    """An unknown list or cue (422)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, 422)


@dataclass(frozen=True, slots=True)
class PointValue:
    value: Any
    quality: str  # "good" / "stale" / "bad"
    ts: float | None = None


class Lighting(Protocol):
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
        """Fade ``levels`` in ``layer``; ``scale`` multiplies intensities (presets)."""
        ...

    def release(
        self, layer: str, priority: int, *, fade_s: float, keep: Sequence[Level] = ()
    ) -> int:
        """Let go of every attribute of ``layer`` except those ``keep`` sets."""
        ...

    def panic(self, fade_s: float) -> None:
        """Fade to the safe look above every layer: every intensity to zero but the venue's
        safe-look levels (work lights)."""
        ...

    def clear_panic(self, fade_s: float) -> None: ...

    def pause(self, layer: str, priority: int) -> None:
        """Hold every fade of ``layer`` where it stands (changes made meanwhile snap)."""
        ...

    def resume(self, layer: str, priority: int) -> None:
        """Carry on the held fades of ``layer`` with the rest of their time."""
        ...


class Devices(Protocol):
    async def execute(
        self,
        device: str,
        command: str,
        args: Mapping[str, Any],
        origin: Origin,
        *,
        at: float | None = None,
        request_id: str | None = None,
    ) -> Any:
        """Run a device command; ``at`` (epoch s) is when it must start, for a device whose
        ``lead`` is above 0 (on another node), passed only then, with ``request_id``: the same
        for the same command of a cue on a primary and on its standby controller, so the node
        runs it once."""
        ...

    # Optional: ``lead(device) -> float``, how many seconds ahead a command for ``device``
    # must be sent to start on time (a device of another node: docs/distributed.md). A port
    # without it runs every command when it is due.

    async def write(self, device: str, point: str, value: float, origin: Origin) -> Any: ...

    def read(self, device: str, point: str) -> PointValue | None: ...

    async def wait_for(
        self, device: str, point: str, condition: Callable[[Any], bool]
    ) -> PointValue:
        """Return the first value (the latest known, or a later one) that meets ``condition``."""
        ...


class Audio(Protocol):
    async def soundfield(self, mode: str, fade_s: float, origin: Origin) -> None: ...

    async def play(
        self,
        file: str,
        level_db: float,
        loop: bool,
        output: str | None,
        fade_s: float,
        origin: Origin,
    ) -> None: ...


class TimecodeSource(Protocol):
    async def reached(self, timecode: str, fps: float) -> None:
        """Return once the chased timecode has reached ``timecode``."""
        ...


class Machinery:
    """Every machinery command of the cue engine passes here (moves, stops, stop-all).

    ``controller.motion.cues.SupervisedMachinery`` puts the safety supervisor here: these are
    the only ways a cue moves or stops an axis, and ``stop_all`` is what panic calls."""

    def __init__(self, devices: Devices, axes: Iterable[str] = ()) -> None:
        self.devices = devices
        self.axes = tuple(axes)  # every axis panic stops

    async def move(self, device: str, args: Mapping[str, Any], origin: Origin) -> Any:
        return await self.devices.execute(device, MOVE_COMMAND, args, origin)

    async def stop(self, device: str, origin: Origin) -> Any:
        return await self.devices.execute(device, STOP_COMMAND, {}, origin)

    async def command(self, device: str, name: str, args: Mapping[str, Any], origin: Origin) -> Any:
        """Any other machinery command of ``device``'s profile (bolts, brakes): through the
        same choke point as moves, so the safety supervisor sees it."""
        return await self.devices.execute(device, name, args, origin)

    async def move_many(
        self, targets: Mapping[str, Mapping[str, Any]], origin: Origin
    ) -> asyncio.Future[str] | None:
        """Start every axis of ``targets`` towards its ``position`` as one move; raise
        ``PlaybackError`` with the reasons if it did not start. Returns a future that is given
        the reason if the move is later aborted (None: this layer has no such signal)."""
        results = await asyncio.gather(
            *(self.move(dev, args, origin) for dev, args in targets.items()),
            return_exceptions=True,
        )
        errors = [
            f"{dev}: {r}"
            for dev, r in zip(targets, results, strict=True)
            if isinstance(r, BaseException)
        ]
        if errors:
            raise PlaybackError("; ".join(errors))
        return None

    def wait_position(
        self, device: str, position: float, tolerance: float
    ) -> Awaitable[Any] | None:
        """An awaitable done when ``device`` is within ``tolerance`` of ``position``, from a
        source faster than its telemetry (the supervisor's axis cycle); None: wait on the
        device's position point."""
        return None

    def busy(self, device: str) -> bool:
        """``device`` is still in a move a new one would be refused for (the tail of the last
        one: within its arrival tolerance, not yet at rest). False: no such signal here."""
        return False

    async def stop_all(self, origin: Origin) -> dict[str, str]:
        """A controlled stop of every axis at once; returns the axes that failed, with why."""
        results = await asyncio.gather(
            *(self.stop(axis, origin) for axis in self.axes), return_exceptions=True
        )
        return {
            axis: f"{type(r).__name__}: {r}"
            for axis, r in zip(self.axes, results, strict=True)
            if isinstance(r, BaseException)
        }
