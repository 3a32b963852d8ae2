"""The axis cycle: one status/setpoint transaction per axis on fixed-rate monotonic deadlines.

A machinery axis streamed by the motion layer (issue 6) needs, every cycle (50 Hz), its setpoint
written and its status read. ``AxisCycle`` does both in **one round trip**, Modbus FC 23
(read/write multiple registers): write the command block's target, speed limit, acceleration,
control word and heartbeat (100...105 on the machinery map) and read the status block (0...10).
The device performs the write before the read, and the map's drive applies target, speed and
acceleration before the control word and heartbeat of the same write (docs/interfaces/
modbus-machinery.md §7, §9.5). A drive without FC 23 answers exception 01; the cycle then falls
back, for the rest of the connection, to FC 16 (write) + FC 03 (read) per cycle, both inside one
scheduler slot so nothing gets between them.

The cycle replaces the driver's poll and heartbeat loops (``ModbusDeviceDriver(cycle_hz=...)``):
the heartbeat lives only in the cycle, so an axis whose cycle stops trips its drive's watchdog.
Its connection is a ``LeanTcpClient`` (``lean.py``) rather than pymodbus's client: a third less
CPU per cycle, measured (docs/decisions.md).

What the motion layer uses (all on the driver's event loop):

- ``set_setpoint(Setpoint(...))``: the next cycle writes it; latest wins. ``set_setpoint(None)``
  (hold) changes nothing: the last setpoint is written again with the new heartbeat. Before the
  first setpoint the cycle writes the heartbeat alone (FC 23 writing register 105 only), so the
  drive keeps whatever target and control word a command left there. The fault-reset bit is
  refused in a setpoint: it acts on every write (§7.7), and a cycle would reset 50 times a
  second; resets stay explicit commands (``reset_fault``).
- ``await stop_axis(StopKind.QUICK)``: writes the stop's control word at once, outside the
  cycle's deadlines, as a transaction of its own that also reads the status back, and returns
  when the drive has answered. "At once": on the axis's **stop connection**, a second TCP
  connection to the drive that carries nothing but stops, so a stop never waits for the cycle
  transaction on the wire (a Modbus server need not take a pipelined request, and pymodbus's
  drops it: docs/decisions.md "E-stop fan-out"); the cycle's own connection writes it again
  right after its transaction in flight, so the last control word the drive sees is the stop
  whatever order it served the two connections in. Without a stop connection (the drive
  refused a second one) the stop goes on the cycle's connection at command priority and waits
  for at most the one transaction on the wire. The stop **latches** in the cycle: every later
  cycle writes the stop word (registers 104...105 only) and ``set_setpoint`` raises
  ``AxisStopped`` until ``release_stop()``, which also forgets the last setpoint, so a
  released axis never resumes an old run by itself.
- ``on_status``: a plain callback given every decoded ``AxisStatus`` with its monotonic receive
  time, good or bad, in the cycle task (keep it short; it must not block). 64 axes at 50 Hz
  are 3 200 statuses a second, so decoding is a handful of compiled readers and one slotted
  object per status.
- ``stats``: cycles, late cycles (the transaction not done before the next deadline), missed
  cycles (no good status for a deadline: failed, or skipped after an overrun), round-trip
  p50/p99 of the last 1 024 transactions, stop writes and their acknowledgement times.

Telemetry: the driver's reading sink still gets the status block, decimated to the device's
``poll_hz`` (every ``round(cycle_hz / poll_hz)``-th good status), plus what the cycle wrote
(target, speed, acceleration, control word, heartbeat: the FC 23 answer acknowledges the write).
The sink is called in its own task; when it is still busy with the previous batch the new one
is dropped and counted (``telemetry_dropped``), so a slow telemetry store never delays a cycle.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from drivers.base import Backoff, DeviceUnavailable, HealthTracker, ReadingSink, StopFlag
from drivers.modbus.codec import ReadBlock, encode, plan_reads, point_reader
from drivers.modbus.lean import LeanTcpClient
from drivers.modbus.link import (
    LinkSession,
    ModbusExceptionAnswer,
    ModbusLink,
    ModbusRequestError,
    ModbusTimeout,
    Priority,
)
from drivers.model import (
    CommandError,
    Device,
    ModbusWire,
    PointSpec,
    Quality,
    Reading,
    Value,
)

__all__ = [
    "AxisCycle",
    "AxisStatus",
    "AxisStopped",
    "CycleMap",
    "CycleStats",
    "Setpoint",
    "StopKind",
]

log = logging.getLogger(__name__)

# Control word bits (docs/interfaces/modbus-machinery.md §7.1).
CW_ENABLE = 0x01
CW_RUN = 0x02
CW_STOP = 0x04
CW_RESET = 0x08
CW_QUICK_STOP = 0x10
ILLEGAL_FUNCTION = 1
RTT_SAMPLES = 1024

# The command registers the cycle writes, in address order, and the status fields it decodes.
WRITE_POINTS = ("target_position", "speed_limit", "acceleration", "control_word", "heartbeat")
STATUS_FIELDS = (
    "position",
    "velocity",
    "load",
    "fault_code",
    "heartbeat_echo",
    "motor_current",
    "motor_temperature",
)
STATUS_WORD_POINT = "ready"  # bit 0 of the status word: its address is the status word's


class StopKind(IntEnum):
    """A stop written outside the cycle; the value is the control word (§7.1).

    IEC 60204-1 categories: category 0 (removal of power) is the drive's STO and hard-wired
    e-stop chain, not Flytower's to write.
    """

    QUICK = CW_QUICK_STOP  # 16: quick-stop ramp, then power off and brake: category 1
    QUICK_HOLD = CW_ENABLE | CW_QUICK_STOP  # 17: quick-stop ramp, stays enabled: category 2
    CONTROLLED = CW_ENABLE | CW_STOP  # 5: ramp at register 103, stays enabled: category 2
    DISABLE = 0  # 0: ramp at register 103, then power off and brake: category 1


class AxisStopped(RuntimeError):
    """A stop is latched in the cycle: ``release_stop()`` before new setpoints."""


@dataclass(frozen=True, slots=True)
class Setpoint:
    """What the cycle writes: target, limits (engineering units) and the control word.

    ``control`` is enable + run (3) by default; 1 holds under power, 0 disables, 5 and 17 stop.
    The fault-reset bit (8) is refused: resets are explicit commands.
    """

    target: float
    speed: float
    acceleration: float
    control: int = CW_ENABLE | CW_RUN


@dataclass(frozen=True, slots=True)
class AxisStatus:
    """One decoded status block. Bad statuses (``good`` False) carry NaN / 0 and ``error``."""

    received: float  # time.monotonic() when the answer (or the failure) was seen
    cycle: int
    good: bool
    position: float
    velocity: float
    load: float
    status_word: int
    fault_code: int
    heartbeat_echo: int
    motor_current: float
    motor_temperature: float
    error: str = ""

    @property
    def ready(self) -> bool:
        return bool(self.status_word & 0x0001)

    @property
    def enabled(self) -> bool:
        return bool(self.status_word & 0x0002)

    @property
    def moving(self) -> bool:
        return bool(self.status_word & 0x0004)

    @property
    def in_position(self) -> bool:
        return bool(self.status_word & 0x0008)

    @property
    def fault(self) -> bool:
        return bool(self.status_word & 0x0010)

    @property
    def estop(self) -> bool:
        return bool(self.status_word & 0x0020)

    @property
    def brake_released(self) -> bool:
        return bool(self.status_word & 0x0040)

    @property
    def watchdog_ok(self) -> bool:
        return bool(self.status_word & 0x0200)


def _pct(samples: Sequence[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class CycleStats:
    """Counters of one axis cycle (see the module docstring for the definitions)."""

    cycles: int = 0
    late: int = 0
    missed: int = 0
    failed: int = 0
    fallback: bool = False  # the device has no FC 23: FC 16 + FC 03 per cycle
    stops: int = 0
    telemetry_dropped: int = 0
    rtt_s: list[float] = field(default_factory=list)
    stop_ack_s: list[float] = field(default_factory=list)
    stop_sent_s: list[float] = field(default_factory=list)  # stop_axis() -> frame to the socket
    _next: int = 0

    def record_rtt(self, seconds: float) -> None:
        if len(self.rtt_s) < RTT_SAMPLES:
            self.rtt_s.append(seconds)
        else:  # a ring: no allocation per cycle once full
            self.rtt_s[self._next] = seconds
            self._next = (self._next + 1) % RTT_SAMPLES

    def rtt_ms(self, q: float) -> float | None:
        return _pct(self.rtt_s, q)

    def as_dict(self) -> dict[str, object]:
        return {
            "cycles": self.cycles,
            "late": self.late,
            "missed": self.missed,
            "failed": self.failed,
            "fallback": self.fallback,
            "stops": self.stops,
            "telemetry_dropped": self.telemetry_dropped,
            "rtt_p50_ms": self.rtt_ms(0.5),
            "rtt_p99_ms": self.rtt_ms(0.99),
        }


@dataclass(frozen=True)
class CycleMap:
    """Where a profile keeps what the cycle writes and reads; ValueError if it has no cycle.

    The written points must be contiguous in this order (target int32, speed, acceleration,
    control word, heartbeat: 100...105 on the machinery map), so one write carries them.
    """

    write_start: int
    write_wires: tuple[ModbusWire, ...]
    write_points: tuple[PointSpec, ...]
    status: ReadBlock
    readers: tuple[Callable[[Sequence[int]], float], ...]  # in STATUS_FIELDS order
    status_word_index: int

    @classmethod
    def from_device(cls, device: Device) -> CycleMap:
        points = device.profile.points
        missing = [n for n in (*WRITE_POINTS, *STATUS_FIELDS, STATUS_WORD_POINT) if n not in points]
        if missing:
            raise ValueError(f"{device.id}: profile {device.profile.id} has no {missing}")
        wires: list[ModbusWire] = []
        for name in WRITE_POINTS:
            wire = points[name].modbus
            if wire is None or wire.table != "holding" or not points[name].access.writable:
                raise ValueError(f"{device.id}: {name} is not a writable holding register")
            wires.append(wire)
        start = wires[0].address
        at = start
        for name, wire in zip(WRITE_POINTS, wires, strict=True):
            if wire.address != at or wire.bit is not None:
                raise ValueError(
                    f"{device.id}: the cycle's registers must be contiguous from {start}: "
                    f"{name} is at {wire.address}, expected {at}"
                )
            at += wire.width
        status_wires = [points[n].modbus for n in (*STATUS_FIELDS, STATUS_WORD_POINT)]
        if any(w is None or w.table != "holding" for w in status_wires):
            raise ValueError(f"{device.id}: the status fields must be holding registers")
        addresses = [w.address for w in status_wires if w is not None]
        lo = min(addresses)
        hi = max(w.address + w.width for w in status_wires if w is not None)
        members = [
            p
            for p in points.values()
            if p.modbus is not None
            and p.modbus.table == "holding"
            and p.access.readable
            and lo <= p.modbus.address < hi
        ]
        blocks = plan_reads(members, max_gap=hi - lo)
        if len(blocks) != 1:
            raise ValueError(f"{device.id}: the status fields do not fit one read")
        block = blocks[0]
        readers = tuple(_fast_reader(points[n], block.start) for n in STATUS_FIELDS)
        word = points[STATUS_WORD_POINT].modbus
        assert word is not None
        return cls(
            start,
            tuple(wires),
            tuple(points[n] for n in WRITE_POINTS),
            block,
            readers,
            word.address - block.start,
        )


def _fast_reader(point: PointSpec, start: int) -> Callable[[Sequence[int]], float]:
    """A status field as a float, in a few operations: the cycle decodes 3 200 blocks a second.

    Integer encodings are computed directly (a scale of 1/n divides by n, which is exact where
    ``raw * 0.1`` is not); anything else goes through the codec's checked reader.
    """
    wire = point.modbus
    assert wire is not None
    i = wire.address - start
    j, k = (i, i + 1) if wire.word_order == "big" else (i + 1, i)
    inverse = 1 / wire.scale
    divisor = float(round(inverse)) if abs(inverse - round(inverse)) < 1e-9 else 0.0
    scale, offset = wire.scale, wire.offset
    raw: Callable[[Sequence[int]], int]
    if wire.bit is not None or wire.encoding not in ("uint16", "int16", "int32", "uint32"):
        reader = point_reader(point, start)
        return lambda r: float(reader(r))
    if wire.encoding == "uint16":
        raw = lambda r: r[i]  # noqa: E731
    elif wire.encoding == "int16":
        raw = lambda r: ((r[i] & 0xFFFF) ^ 0x8000) - 0x8000  # noqa: E731
    elif wire.encoding == "uint32":
        raw = lambda r: r[j] << 16 | r[k]  # noqa: E731
    else:
        raw = lambda r: ((r[j] << 16 | r[k]) ^ 0x80000000) - 0x80000000  # noqa: E731
    if divisor:
        return lambda r: raw(r) / divisor + offset
    return lambda r: raw(r) * scale + offset


class AxisCycle:
    """The status/setpoint cycle of one axis; run by ``ModbusDeviceDriver`` in cycle mode."""

    def __init__(
        self,
        device: Device,
        cycle_hz: float,
        tracker: HealthTracker,
        sink: ReadingSink,
        on_status: Callable[[AxisStatus], None] | None = None,
    ) -> None:
        if not (math.isfinite(cycle_hz) and 0 < cycle_hz <= 1000):
            raise ValueError(f"{device.id}: cycle_hz must be in (0, 1000], not {cycle_hz!r}")
        self.device = device
        self.map = CycleMap.from_device(device)
        self.cycle_hz = cycle_hz
        self.period = 1.0 / cycle_hz
        self.on_status = on_status
        self.stats = CycleStats()
        self.latest: AxisStatus | None = None
        self._tracker = tracker
        self._sink = sink
        self._decimate = max(1, round(cycle_hz / device.poll_hz))
        self._tick = 0  # statuses delivered; every _decimate-th goes to the sink
        self._sink_task: asyncio.Task[None] | None = None
        self._setpoint: list[int] | None = None  # target hi, lo, speed, accel, control
        self._setpoint_values: tuple[Value, ...] = ()
        self._stop_word: int | None = None
        self._out_of_cycle_at = -math.inf  # when a stop's own transaction was answered
        self.stop_sent_at = -math.inf  # when the last stop's first frame went to a socket
        self._stop_t0 = -math.inf  # when the last stop_axis() was called
        self._heartbeat = 0
        self._link: ModbusLink | None = None
        self._session: LinkSession | None = None
        self._stop_link: ModbusLink | None = None  # the stop connection, if the drive took one
        self._stop_session: LinkSession | None = None
        self._repeats: set[asyncio.Task[tuple[bool, bool, bool]]] = set()
        self._sent_block: tuple[int, list[int]] = (0, [])  # what _send_stop wrote
        self._unit = 0
        self._timeout_s = 0.1

    # --- the motion layer's API -----------------------------------------------------------

    @property
    def stopped(self) -> StopKind | None:
        return None if self._stop_word is None else StopKind(self._stop_word)

    def set_setpoint(self, setpoint: Setpoint | None) -> None:
        """The setpoint the next cycle writes (latest wins); None holds the last one.

        CommandError for a value outside the profile's range or the encoding, a control word
        outside 0...31 or with the fault-reset bit; AxisStopped while a stop is latched.
        """
        if setpoint is None:
            return
        if self._stop_word is not None:
            raise AxisStopped(
                f"{self.device.id}: stopped ({StopKind(self._stop_word).name}); release first"
            )
        control = setpoint.control
        if isinstance(control, bool) or not isinstance(control, int) or not 0 <= control <= 31:
            raise CommandError(f"{self.device.id}: control word {control!r} is not in 0...31")
        if control & CW_RESET:
            raise CommandError(
                f"{self.device.id}: the fault-reset bit is never cycled; use reset_fault"
            )
        values = (setpoint.target, setpoint.speed, setpoint.acceleration, control)
        registers: list[int] = []
        for point, wire, value in zip(
            self.map.write_points[:4], self.map.write_wires[:4], values, strict=True
        ):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CommandError(f"{self.device.id}: {point.name}: {value!r} is not a number")
            if not math.isfinite(value):
                raise CommandError(f"{self.device.id}: {point.name}: {value!r} is not finite")
            if point.min is not None and value < point.min:
                raise CommandError(
                    f"{self.device.id}: {point.name} {value:g} is below the minimum {point.min:g}"
                )
            if point.max is not None and value > point.max:
                raise CommandError(
                    f"{self.device.id}: {point.name} {value:g} is above the maximum {point.max:g}"
                )
            try:
                registers.extend(encode(wire, value))
            except ValueError as exc:
                raise CommandError(f"{self.device.id}: {point.name}: {exc}") from exc
        self._setpoint = registers
        self._setpoint_values = values

    async def stop_axis(self, kind: StopKind = StopKind.QUICK) -> float:
        """``await stop_now(kind)``: the seconds until the drive's answer."""
        return await self.stop_now(kind)

    def stop_now(self, kind: StopKind = StopKind.QUICK) -> asyncio.Future[float]:
        """Latch ``kind`` and write its control word **in this call**; the future of the
        seconds until the drive's answer.

        The stop frame goes to the stop connection's socket before this returns (the module
        docstring), so a fan-out to every axis has every frame on the wire in the caller's own
        loop step, however busy the loop is: a cycle transaction of its own, the stop word and
        the heartbeat written (104...105), the status block read back in the same round trip
        and delivered like any status, so the caller's next status already shows the stop. The
        cycle's connection repeats it at command priority after the transaction on its wire
        (in the background when the stop connection was answered), and a regular cycle due
        within half a period after that is skipped, so a fan-out adds no load to the drives
        beyond one extra transaction each. Without a free stop connection the stop takes its
        turn on the cycle's connection.

        The latch is set first, so every later cycle writes the stop even when this write
        fails. The future fails with DeviceUnavailable if the device is not connected or
        neither connection's write is acknowledged (the latched stop is then written by every
        cycle that gets through).
        """
        kind = StopKind(kind)
        self._stop_word = int(kind)
        self.stats.stops += 1
        self._stop_t0 = t0 = time.monotonic()
        link = self._link
        if link is None or not link.connected:
            failed: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            failed.set_exception(
                DeviceUnavailable(f"{self.device.id}: not connected; the stop is latched")
            )
            return failed
        sent = self._send_stop()
        return asyncio.ensure_future(self._stopped(t0, link, sent))

    def _send_stop(self) -> tuple[ModbusLink, LinkSession] | None:
        """The stop's FC 23 on the stop connection's socket now, holding its slot; None when
        there is no free stop connection (or the drive has no FC 23: the cycle's path)."""
        fast, session = self._stop_link, self._stop_session
        if (
            fast is None
            or session is None
            or not fast.connected
            or self.stats.fallback
            or not isinstance(fast.client, LeanTcpClient)
            or not fast.scheduler.try_acquire()
        ):
            return None
        try:
            start, registers = self._write_block()
            block = self.map.status
            session.sent = fast.client.send_readwrite_nowait(
                read_address=block.start,
                read_count=block.count,
                write_address=start,
                values=registers,
                device_id=self._unit,
            )
        except Exception as exc:  # not sent: the cycle's connection carries the stop
            fast.scheduler.release()
            log.warning("%s: stop connection: %s", self.device.id, exc)
            return None
        self.stop_sent_at = time.monotonic()
        self._sent_block = (start, registers)
        return fast, session

    async def _stopped(
        self, t0: float, link: ModbusLink, sent: tuple[ModbusLink, LinkSession] | None
    ) -> float:
        repeat = asyncio.ensure_future(self._repeat_stop(link))
        self._repeats.add(repeat)
        repeat.add_done_callback(self._repeat_done)
        written = False
        if sent is not None:
            fast, session = sent
            try:
                written = (await self._transact(fast, Priority.COMMAND, session, presend=True))[2]
            except ConnectionError as exc:  # the cycle's connection is still trying
                log.warning("%s: stop connection: %s", self.device.id, exc)
        if not written:
            try:
                written = (await repeat)[2]
            except ConnectionError as exc:
                raise DeviceUnavailable(f"{self.device.id}: stop: {exc}") from exc
        elapsed = time.monotonic() - t0
        if not written:
            error = self.latest.error if self.latest is not None else "no answer"
            raise DeviceUnavailable(f"{self.device.id}: stop: {error}")
        if len(self.stats.stop_ack_s) < RTT_SAMPLES:
            self.stats.stop_ack_s.append(elapsed)
            self.stats.stop_sent_s.append(max(0.0, self.stop_sent_at - t0))
        return elapsed

    async def _repeat_stop(self, link: ModbusLink) -> tuple[bool, bool, bool]:
        """The latched stop on the cycle's connection, at command priority (stop_axis)."""
        result = await self._transact(link, Priority.COMMAND)
        if result[2]:
            self._out_of_cycle_at = time.monotonic()
        return result

    def _repeat_done(self, task: asyncio.Task[tuple[bool, bool, bool]]) -> None:
        self._repeats.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The connection was lost under it: the driver reconnects, and the cycle then
            # writes the latched stop.
            log.warning("%s: stop repeat: %s", self.device.id, task.exception())

    @property
    def stop_link_up(self) -> bool:
        """The axis's stop connection is open: a stop goes out without waiting."""
        return self._stop_link is not None and self._stop_link.connected

    def use_stop_link(self, link: ModbusLink | None) -> None:
        """The axis's stop connection (``stop_axis``), kept open by the driver; None while
        there is none (stops then take turns on the cycle's connection)."""
        self._stop_link = link
        self._stop_session = None if link is None else LinkSession(link)

    def release_stop(self) -> None:
        """Clear the latched stop and forget the last setpoint: the cycle writes the heartbeat
        alone (the drive keeps the stop word) until the next ``set_setpoint``."""
        self._stop_word = None
        self._setpoint = None
        self._setpoint_values = ()

    # --- the loop ---------------------------------------------------------------------------

    async def run(
        self,
        link: ModbusLink,
        unit: int,
        timeout_s: float,
        stop: StopFlag,
        silent_limit: int,
        backoff: Backoff | None = None,
    ) -> None:
        """Cycle until ``stop``; ConnectionError when the link is lost or the device is silent
        for ``silent_limit`` transactions (the driver reconnects with back-off)."""
        self._link, self._unit, self._timeout_s = link, unit, timeout_s
        self._session = LinkSession(link)
        self.stats.fallback = False  # a new connection may reach a new device: ask again
        silent = 0
        period = self.period
        # Stagger axes across the period so 64 cycles do not hit the server on the same tick.
        next_at = time.monotonic() + random.uniform(0, period)
        try:
            while True:
                await stop.sleep(next_at - time.monotonic())
                if stop.is_set():
                    return
                if self._out_of_cycle_at >= next_at - period / 2:
                    # A stop's transaction has just written the drive and read its status:
                    # this deadline's would repeat it (stop_axis). Counted, not missed.
                    next_at = self._account(next_at, True)
                    continue
                ok, answered, _ = await self._transact(link)
                silent = 0 if answered else silent + 1
                if answered and backoff is not None:
                    backoff.reset()  # after an answer, not a connect: a silent peer backs off
                next_at = self._account(next_at, ok)
                if silent >= silent_limit:
                    raise ConnectionError(f"no answer to {silent} cycles")
        finally:
            self._link = None
            for task in list(self._repeats):
                task.cancel()
            if self._sink_task is not None and not self._sink_task.done():
                await asyncio.gather(self._sink_task, return_exceptions=True)

    def _account(self, deadline: float, ok: bool) -> float:
        now = time.monotonic()
        stats = self.stats
        stats.cycles += 1
        next_at = deadline + self.period
        if now > next_at:
            stats.late += 1
        if not ok or now > next_at:
            stats.missed += 1
        if now > next_at + self.period:
            # Overran by more than a period: skip the deadlines that passed meanwhile rather
            # than burst to catch up. Within one period the next cycle just starts at once:
            # a skipped cycle would leave the drive 40 ms without a heartbeat and setpoint.
            skipped = int((now - next_at) // self.period)
            stats.cycles += skipped
            stats.missed += skipped
            next_at += skipped * self.period
        shown = self._tracker.stats  # the driver's own counters follow the cycle's
        shown.cycles, shown.missed = stats.cycles, stats.missed
        return next_at

    def _write_block(self) -> tuple[int, list[int]]:
        """(start, registers) this cycle writes; called holding the link, after any stop."""
        self._heartbeat = hb = (self._heartbeat + 1) & 0xFFFF
        if self._stop_word is not None:
            return self.map.write_wires[3].address, [self._stop_word, hb]  # control, heartbeat
        if self._setpoint is None:
            return self.map.write_wires[4].address, [hb]  # the heartbeat alone
        return self.map.write_start, [*self._setpoint, hb]

    async def _transact(
        self,
        link: ModbusLink,
        priority: Priority = Priority.HEARTBEAT,
        session: LinkSession | None = None,
        presend: bool = False,
    ) -> tuple[bool, bool, bool]:
        """One cycle's transaction: (a good status was delivered, the device answered, the
        write was acknowledged). ``session`` is the link's (the cycle's by default);
        ``presend``: ``_send_stop`` has sent it already and holds the slot."""
        block = self.map.status
        t0 = time.monotonic()
        # The cycle runs at heartbeat priority: a command or a stop goes first. (The scheduler
        # is used directly, not through ``link.session``: this runs 3 200 times a second.)
        scheduler = link.scheduler
        if not presend:
            await scheduler.acquire(priority)
        try:
            if presend:
                t0 = self.stop_sent_at
                start, registers = self._sent_block
            else:
                t0 = time.monotonic()
                start, registers = self._write_block()  # after any stop that went first
            if not presend and (
                priority is Priority.COMMAND
                and self._stop_word is not None
                and self.stop_sent_at < self._stop_t0
            ):
                self.stop_sent_at = t0  # the stop's first frame goes to a socket in this step
            if session is None:
                session = self._session if self._session is not None else LinkSession(link)
                self._session = session
            if not self.stats.fallback:
                try:
                    answer = await session.read_write(
                        self._unit, block.start, block.count, start, registers, self._timeout_s
                    )
                except ModbusExceptionAnswer as exc:
                    if exc.code != ILLEGAL_FUNCTION:
                        raise
                    self.stats.fallback = True
                    log.warning("%s: no FC 23 (%s): FC 16 + FC 03", self.device.id, exc)
            if self.stats.fallback:
                await session.write_block(self._unit, start, registers, self._timeout_s)
                answer = await session.read(self._unit, block, self._timeout_s)
        except ModbusRequestError as exc:
            if not link.connected:
                raise ConnectionError(f"connection lost: {exc}") from exc
            self.stats.failed += 1
            self._tracker.stats.requests += 1
            self._tracker.failed(str(exc))
            bad = self._bad(time.monotonic(), str(exc))
            self._deliver(bad)
            self._tick += 1
            if self._tick % self._decimate == 0:
                self._publish(None, 0, [], bad.received)
            return False, not isinstance(exc, ModbusTimeout), False
        finally:
            scheduler.release()
        t1 = time.monotonic()
        self.stats.record_rtt(t1 - t0)
        self._tracker.stats.record(t1 - t0)
        status = self._decode(answer, t1)
        self._deliver(status)
        if status.good:
            self._tracker.succeeded()
        else:
            self.stats.failed += 1
            self._tracker.failed(f"cycle {block.label}: {status.error}")
        self._tick += 1
        if self._tick % self._decimate == 0:
            self._publish(answer, start, registers, t1)
        return status.good, True, True

    def _decode(self, registers: list[int], now: float) -> AxisStatus:
        r = self.map.readers
        try:
            return AxisStatus(
                now,
                self.stats.cycles,
                True,
                r[0](registers),
                r[1](registers),
                r[2](registers),
                registers[self.map.status_word_index],
                int(r[3](registers)),
                int(r[4](registers)),
                r[5](registers),
                r[6](registers),
            )
        except (ValueError, TypeError, IndexError, OverflowError) as exc:
            return self._bad(now, str(exc))

    def _bad(self, now: float, error: str) -> AxisStatus:
        nan = math.nan
        return AxisStatus(now, self.stats.cycles, False, nan, nan, nan, 0, 0, 0, nan, nan, error)

    def _deliver(self, status: AxisStatus) -> None:
        self.latest = status
        if self.on_status is not None:
            try:
                self.on_status(status)
            except Exception:  # a consumer's bug must not stop the heartbeat of its axis
                log.exception("%s: on_status callback failed", self.device.id)

    def _publish(
        self, answer: list[int] | None, start: int, written: list[int], now: float
    ) -> None:
        if self._sink_task is not None and not self._sink_task.done():
            self.stats.telemetry_dropped += 1
            return
        dev = self.device.id
        wall = time.time()
        readings: list[Reading] = []
        block = self.map.status
        if answer is None:
            bad = Quality.BAD
            readings.extend(Reading(dev, p.name, None, now, wall, bad) for p in block.points)
        else:
            values, errors = block.decode_points(answer)
            readings.extend(Reading(dev, k, v, now, wall) for k, v in values.items())
            readings.extend(Reading(dev, k, None, now, wall, Quality.BAD) for k in errors)
            if start == self.map.write_start and self._setpoint_values:
                names = [p.name for p in self.map.write_points]
                readings.extend(
                    Reading(dev, k, v, now, wall)
                    for k, v in zip(names, self._setpoint_values, strict=False)
                )
            elif start == self.map.write_wires[3].address:  # a latched stop's control word
                control = self.map.write_points[3].name
                readings.append(Reading(dev, control, written[0], now, wall))
            heartbeat = self.map.write_points[4].name
            readings.append(Reading(dev, heartbeat, written[-1], now, wall))
        self._sink_task = asyncio.create_task(self._send(readings), name=f"{dev}:telemetry")

    async def _send(self, readings: list[Reading]) -> None:
        try:
            await self._sink(readings)
        except Exception:  # the telemetry path's failure is its own; the cycle goes on
            log.exception("%s: telemetry sink failed", self.device.id)
