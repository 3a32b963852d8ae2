"""The safety supervisor in the service (docs/machinery.md).

Every machinery axis of the node (a device whose profile's ``move_to`` moves machinery, over
Modbus TCP) runs its driver in **cycle mode** (drivers/modbus/cycle.py): one FC 23 per cycle
writes its setpoint and heartbeat and reads its status, which goes straight to the supervisor.
``CycleIO`` is the supervisor's ``AxisIO`` over those cycles. Nothing else may move an axis:

- cues reach it through ``SupervisedMachinery`` (the cue engine's machinery port);
- device commands from REST, OSC and MQTT pass ``gate``: ``move_to`` becomes a supervised move,
  ``stop`` and ``disable`` supervised stops, any other command that moves machinery (bolts) is
  refused while the E-stop is latched, without a live enable, or while the axis moves;
  ``reset_fault`` only while the axis stands still;
- an axis that cannot be cycled (Modbus RTU) is not supervised, so its motion commands are
  refused with that reason;
- on a controller, an axis of another node passes through to that node (its supervisor, its
  enable, its limits decide there), where a move commanded over the broker lives only as long
  as a controller holds the show (``edge.control.ControllerWatch``).

At start the supervisor learns from the telemetry store what each axis has shown (velocity and
load history of the last ``LEARN_DAYS``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from controller.journal import Origin, journalled
from controller.motion.config import AxisLimits, is_axis, resolve_limits
from controller.motion.supervisor import (
    AxisStatus,
    MotionRefused,
    StopKind,
    Supervisor,
)
from drivers.base import DeviceUnavailable
from drivers.modbus.cycle import CW_ENABLE, AxisCycle, Setpoint
from drivers.modbus.cycle import AxisStatus as CycleStatus
from drivers.modbus.cycle import StopKind as CycleStop
from drivers.modbus.driver import ModbusDeviceDriver
from drivers.model import CommandError, Device, ModbusTcpTransport, Quality, Value
from drivers.mqtt.driver import MqttDeviceDriver
from edge.journal import JournalQuery

if TYPE_CHECKING:
    from edge.service import Service

log = logging.getLogger(__name__)

ENABLE_TIMEOUT_S = 1.0  # the drive reports enabled (brake released) within this of the request
LEARN_DAYS = 30
LEARN_ROWS = 20_000  # the newest readings per point: as many as learning keeps (its WINDOW)
STOPS = {
    StopKind.CONTROLLED: CycleStop.CONTROLLED,
    StopKind.QUICK: CycleStop.QUICK,
    StopKind.QUICK_HOLD: CycleStop.QUICK_HOLD,
    StopKind.PARK: CycleStop.DISABLE,
}


def supervised(device: Device) -> bool:
    return is_axis(device.profile) and isinstance(device.transport, ModbusTcpTransport)


def status_of(st: CycleStatus) -> AxisStatus:
    good = st.good and math.isfinite(st.position)
    return AxisStatus(
        t=st.received,
        position=st.position if good else None,
        velocity=st.velocity if good else None,
        load=st.load if good and math.isfinite(st.load) else None,
        enabled=st.enabled,
        fault=st.fault,
        estop=st.estop,
        fault_code=st.fault_code,
        good=good,
    )


class CycleIO:
    """``AxisIO`` over the axes' Modbus cycles."""

    def __init__(self, limits: Mapping[str, AxisLimits]) -> None:
        self.cycles: dict[str, AxisCycle] = {}
        self.limits = limits
        self._enabled: dict[str, asyncio.Event] = {}

    def attach(self, axis: str, cycle: AxisCycle) -> None:
        self.cycles[axis] = cycle

    def _cycle(self, axis: str) -> AxisCycle:
        cycle = self.cycles.get(axis)
        if cycle is None:
            raise DeviceUnavailable(f"{axis} has no running cycle on this node")
        return cycle

    def stream(self, axis: str, target: float, speed: float, acceleration: float) -> None:
        cycle = self._cycle(axis)
        if cycle.stopped is not None:
            cycle.release_stop()
        cycle.set_setpoint(Setpoint(target, speed, acceleration))

    def stop(self, axis: str, kind: StopKind) -> Awaitable[object]:
        """The stop frame is on the wire when this returns (``AxisCycle.stop_now``)."""
        try:
            return self._cycle(axis).stop_now(STOPS[kind])
        except Exception as exc:  # one axis's failure never keeps the fan-out from the others
            failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed

    async def enable(self, axis: str) -> None:
        """Power the drive on holding where it stands, and wait until it reports enabled."""
        cycle = self._cycle(axis)
        st = cycle.latest
        if st is None or not st.good or not math.isfinite(st.position):
            raise DeviceUnavailable(f"{axis}: no good status to enable from")
        lim = self.limits[axis]
        cycle.release_stop()
        cycle.set_setpoint(Setpoint(st.position, lim.speed, lim.acceleration, control=CW_ENABLE))
        deadline = time.monotonic() + ENABLE_TIMEOUT_S
        while time.monotonic() < deadline:
            latest = cycle.latest
            if latest is not None and latest.good and latest.enabled and latest.brake_released:
                return
            if latest is not None and (latest.fault or latest.estop):
                raise DeviceUnavailable(f"{axis}: faulted (code {latest.fault_code}) on enable")
            await asyncio.sleep(cycle.period / 2)
        raise DeviceUnavailable(
            f"{axis}: the drive did not report enabled within {ENABLE_TIMEOUT_S:g} s"
        )


def build(service: Service) -> Supervisor | None:
    """The node's supervisor over its cycled axes (None when the node has no axes)."""
    cfg = service.venue.config.machinery
    mine = {d.id: d for d in service.own.values() if supervised(d)}
    if not mine:
        return None
    limits, problems = resolve_limits(cfg, {k: d.profile for k, d in mine.items()})
    if problems:  # the venue was checked on load; a node's subset cannot add problems
        raise ValueError("; ".join(problems))
    io = CycleIO(limits)

    def point(device: str, name: str) -> Value | None:
        r = service.live.get((device, name))
        return r.value if r is not None and r.quality is Quality.GOOD else None

    return Supervisor(cfg, limits, io, service.journal, points=point)


def driver_for(service: Service, device: Device) -> ModbusDeviceDriver:
    """A cycled driver whose statuses go to the supervisor."""
    sup = service.supervisor
    assert sup is not None
    axis = device.id

    def on_status(st: CycleStatus) -> None:
        sup.status(axis, status_of(st))

    driver = ModbusDeviceDriver(
        device,
        service.readings.publish_many,
        service._on_health,
        cycle_hz=service.venue.config.machinery.cycle_hz,
        on_status=on_status,
    )
    assert driver.cycle is not None
    assert isinstance(sup.io, CycleIO)  # build() made it
    sup.io.attach(axis, driver.cycle)
    return driver


async def learn(service: Service) -> None:
    """Feed the supervisor's learning from the telemetry history of every axis."""
    sup = service.supervisor
    if sup is None:
        return
    since = time.time() - LEARN_DAYS * 86400
    for axis in sup.axes:
        try:
            v = await service.store.history(axis, "velocity", since, limit=LEARN_ROWS)
            load = {
                r.ts: r.value
                for r in await service.store.history(axis, "load", since, limit=LEARN_ROWS)
            }
        except Exception as exc:  # the store is an aid here, never a reason not to start
            log.warning("machinery learning: history of %s not read: %s", axis, exc)
            continue
        rows = [
            (
                r.ts,
                float(r.value) if isinstance(r.value, int | float) else None,
                _num(load.get(r.ts)),
            )
            for r in v
        ]
        sup.learning.learn(axis, rows)
    await _learn_from_journal(service, since)


async def _learn_from_journal(service: Service, since: float) -> None:
    """Each axis's worst following error per move, from the journal's ``move.done`` events
    (the telemetry has no planned positions to compare with)."""
    sup = service.supervisor
    assert sup is not None
    for axis in sup.axes:
        try:
            events, _ = await service.journal.query(
                JournalQuery(since=since, device=axis, limit=LEARN_ROWS)
            )
        except Exception as exc:  # an aid, never a reason not to start
            log.warning("machinery learning: journal of %s not read: %s", axis, exc)
            continue
        errors = []
        for stored in events:
            e = stored.event
            per_axis = e.args.get("following_error") if e.command == "move.done" else None
            if isinstance(per_axis, dict) and axis in per_axis:
                errors.append(per_axis[axis])
        sup.learning.learn_moves(axis, errors)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --- device commands ------------------------------------------------------------------------

MOVE, STOP, DISABLE, RESET = "move_to", "stop", "disable", "reset_fault"


async def gate(
    service: Service, driver: Any, name: str, args: Mapping[str, Any], origin: Origin
) -> list[tuple[str, Value]] | None:
    """A device command that is the supervisor's business: carried out through it (and
    journalled) and its result returned; None when it is not (the caller runs it as usual)."""
    device: Device = driver.device
    spec = device.profile.commands.get(name)
    if spec is None:
        return None
    sup = service.supervisor
    axis = device.id
    if isinstance(driver, MqttDeviceDriver) and driver.remote:
        return None  # another node's axis: that node's supervisor decides
    if sup is None or axis not in sup.axes:
        if spec.moves_machinery:
            raise CommandError(
                f"{axis}: {name} moves machinery and this axis is not supervised on this node "
                "(only Modbus TCP axes are): refused"
            )
        return None
    if name == MOVE:

        async def move() -> list[tuple[str, Value]]:
            values = device.profile.resolve_command(name, args)  # the profile's checks
            given = {p.name: v for p, v in values}
            target = given.get("target_position")
            if not isinstance(target, int | float) or isinstance(target, bool):
                raise CommandError(f"{axis}: move_to needs a position")
            speed = given.get("speed_limit")
            accel = given.get("acceleration")
            m = await sup.move(
                {axis: float(target)},
                origin,
                speed=float(speed) if isinstance(speed, int | float) else None,
                acceleration=float(accel) if isinstance(accel, int | float) else None,
            )
            return [("move", m.id), ("target_position", float(target))]

        return await _as_device_command(service, origin, axis, name, args, move)
    if name in (STOP, DISABLE):
        kind = StopKind.CONTROLLED if name == STOP else StopKind.PARK

        async def stop() -> list[tuple[str, Value]]:
            device.profile.resolve_command(name, args)  # the profile's checks: no stray args
            failures = await sup.stop([axis], origin, kind)
            if failures:
                raise DeviceUnavailable(failures[axis])
            return [("stop", kind.value)]

        return await _as_device_command(service, origin, axis, name, args, stop)
    if name == RESET or spec.moves_machinery:
        problem = sup.may_actuate(axis, needs_enable=spec.moves_machinery)
        if problem is None:
            return None  # the caller runs it through the driver, as any command

        async def refuse() -> list[tuple[str, Value]]:
            raise CommandError(f"{axis}: {name} refused: {problem}")

        return await _as_device_command(service, origin, axis, name, args, refuse)
    return None


async def _as_device_command(
    service: Service,
    origin: Origin,
    axis: str,
    name: str,
    args: Mapping[str, Any],
    call: Callable[[], Awaitable[list[tuple[str, Value]]]],
) -> list[tuple[str, Value]]:
    """Journalled as ``device.{name}``, as every device command is (the supervisor journals
    its own ``move``/``stop`` beside it); its refusal is a ``CommandError`` (422)."""

    async def run() -> list[tuple[str, Value]]:
        try:
            return await call()
        except MotionRefused as exc:
            raise CommandError(str(exc)) from None

    return await journalled(
        service.journal, origin, f"device.{name}", run, targets=(axis,), args=args
    )
