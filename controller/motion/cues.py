"""The cue engine's machinery port over the safety supervisor.

``controller.playback`` sends every machinery action through its ``Machinery`` port; this one
hands it to the ``Supervisor``: a ``machinery.move`` of several axes is one synchronised move
(they arrive together), its refusal is the action's failure with the supervisor's reason, an
abort later on (overload, E-stop, enable released, ...) fails the action with that reason, and
panic's ``stop_all`` is a quick stop of every axis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any

from controller.journal import Origin
from controller.motion.supervisor import MotionRefused, Move, StopKind, Supervisor
from controller.playback.ports import Devices, Machinery, PlaybackError


class SupervisedMachinery(Machinery):
    def __init__(self, supervisor: Supervisor, devices: Devices) -> None:
        super().__init__(devices, list(supervisor.axes))
        self.supervisor = supervisor

    async def move(self, device: str, args: Mapping[str, Any], origin: Origin) -> Any:
        return await self.move_many({device: args}, origin)

    async def move_many(
        self, targets: Mapping[str, Mapping[str, Any]], origin: Origin
    ) -> asyncio.Future[str] | None:
        unknown = [d for d in targets if d not in self.supervisor.axes]
        if unknown:
            raise PlaybackError(f"{unknown[0]} is not a machinery axis", 422)
        positions = {d: a.get("position") for d, a in targets.items()}
        speeds = {d: a["speed"] for d, a in targets.items() if a.get("speed") is not None}
        accels = {
            d: a["acceleration"] for d, a in targets.items() if a.get("acceleration") is not None
        }
        try:
            move = await self.supervisor.move(
                positions,  # type: ignore[arg-type]  # checked by the supervisor
                origin,
                speed=speeds or None,
                acceleration=accels or None,
            )
        except MotionRefused as exc:
            raise PlaybackError(str(exc)) from None
        return _aborted(move)

    async def stop(self, device: str, origin: Origin) -> Any:
        try:
            return await self.supervisor.stop([device], origin)
        except MotionRefused as exc:
            raise PlaybackError(str(exc), 422) from None

    def wait_position(
        self, device: str, position: float, tolerance: float
    ) -> Awaitable[Any] | None:
        """A supervised axis is waited for on its 50 Hz status, not its telemetry."""
        if device not in self.supervisor.axes:
            return None
        return self.supervisor.at_position(device, position, tolerance)

    def busy(self, device: str) -> bool:
        return device in self.supervisor.axes and self.supervisor.busy(device)

    async def stop_all(self, origin: Origin) -> dict[str, str]:
        return await self.supervisor.stop(list(self.supervisor.axes), origin, StopKind.QUICK)


def _aborted(move: Move) -> asyncio.Future[str]:
    """A future given the reason when ``move`` ends other than done (refused, aborted)."""
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def watch() -> None:
        await move.done.wait()
        if move.state != "done" and not fut.done():
            fut.set_result(move.reason or move.state)
        elif not fut.done():
            fut.cancel()

    task = asyncio.ensure_future(watch())
    fut.add_done_callback(lambda _: task.cancel())
    return fut
