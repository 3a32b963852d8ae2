"""Machinery cycle: 64 axes x 50 Hz status/setpoint over Modbus TCP, and the E-stop fan-out.

Setup: 64 simulated hoists (``simulators.machinery``), 16 units behind each of 4 ports, served
by 4 child processes (one per port) so that the drives do not share this process's event loop;
one TCP connection per axis (the machinery map, §2). All on the same 2-core machine. This
process runs 64 ``ModbusDeviceDriver(cycle_hz=50)``: per cycle one FC 23 transaction writes the
setpoint and heartbeat and reads the status block (docs/interfaces/modbus-machinery.md §9.5).

Phases, each FLYTOWER_BENCH_SECONDS after a 2 s warm-up, against the same children:

1. reference: 64 raw pymodbus clients making FC 03 (status block) round trips at 50 Hz on
   monotonic deadlines, with no driver; and, meanwhile, ``ESTOPS`` fan-outs of a raw FC 06
   write of the quick-stop word to all 64 (the drives are at rest);
2. the cycle at rest: no setpoints, the cycle writes the heartbeat alone (drives at rest, as in
   the reference);
3. the cycle streamed: a task plays the motion layer and gives every axis a new target every
   20 ms on a sine trajectory (amplitude 2 m, period 10 s, random phase), so 64 axes move;
4. the E-stop fan-out, ``ESTOPS`` times at a random phase: ``stop_axis(QUICK)`` on all 64, from
   the call to the last drive's answer (p50/p99/max; DESIGN's target <= 20 ms), and from the
   drives' ground truth that every axis was disabled at once, decelerated, then stood still.

Figures per phase: cycles/s, late cycles (the transaction not done before the next deadline;
target < 1 %), missed cycles, round trip p50/p99, this process's CPU (per cycle), the
simulators' CPU, and this event loop's lag (a 5 ms sleeper's oversleep: whether our loop or the
answers are late).

This process's event loop runs under SCHED_FIFO 20, as the service's does with the recommended
``[machinery] realtime_priority = 20`` (edge/realtime.py); ``--realtime 0`` measures the
time-sharing scheduler instead.

Duration: FLYTOWER_BENCH_SECONDS (default 30) per phase; ``--seconds N`` as a script:

    python -m benchmarks.bench_machinery_cycle --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus.cycle import AxisCycle, Setpoint, StopKind
from drivers.modbus.driver import ModbusDeviceDriver
from drivers.model import PROFILE_DIR, Device, ModbusTcpTransport, Reading, load_profile
from edge import realtime

REPO = Path(__file__).resolve().parent.parent
AXES, PORTS = 64, 4
CYCLE_HZ = 50.0
DEFAULT_SECONDS = 30.0
WARMUP_S = 2.0
ESTOPS = 100
REALTIME_PRIORITY = 20  # docs/machinery.md recommends [machinery] realtime_priority = 20
START_MM = 6000.0
AMPLITUDE_MM, PERIOD_S = 2000.0, 10.0


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pct_ms(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    s = sorted(samples)
    return 1000 * s[min(len(s) - 1, int(q * len(s)))]


# --- the simulators' processes: one port, 16 drives, truth on request ------------------------


async def serve(port: int, units: int) -> None:
    """Host ``units`` hoists on ``port``; answer 'truth' and 'cpu' lines on stdin."""
    from simulators.core import DeviceSpec
    from simulators.machinery import MachineDevice, MachineryFamily

    family = MachineryFamily({})
    devices: dict[str, MachineDevice] = {}
    for unit in range(1, units + 1):
        tr = {"kind": "modbus-tcp", "host": "127.0.0.1", "port": port, "unit": unit}
        simulate = {"model": "hoist", "start_position_mm": START_MM}
        dev = family.add(DeviceSpec(f"{port}-{unit}", "hoist", tr, simulate, "bench"))
        assert isinstance(dev, MachineDevice)
        devices[str(unit)] = dev
    async with contextlib.AsyncExitStack() as stack:
        for host in family.hosts():
            await stack.enter_async_context(host)
        print("ready", flush=True)
        while line := (await asyncio.to_thread(sys.stdin.readline)).strip():
            if line == "truth":
                answer: Any = {
                    unit: {k: d.truth()[k] for k in ("velocity_mm_s", "enabled", "moving")}
                    for unit, d in devices.items()
                }
            else:
                answer = {"cpu_s": _cpu_s(), "requests": family.stats().get("requests")}
            print(json.dumps(answer), flush=True)


class Children:
    """The simulator processes, one per port, and their line protocol."""

    def __init__(self, ports: list[int], per: int) -> None:
        self.ports, self.per = ports, per
        self.procs: list[subprocess.Popen[str]] = []

    async def start(self) -> None:
        for port in self.ports:
            cmd = [sys.executable, "-m", "benchmarks.bench_machinery_cycle", "--serve"]
            cmd += [f"--port={port}", f"--units={self.per}"]
            self.procs.append(
                subprocess.Popen(  # noqa: ASYNC220 -- started once, stopped in close()
                    cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
            )
        for proc in self.procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
            if line.strip() != "ready":
                raise RuntimeError(f"simulators did not start: {line!r}")

    async def ask(self, what: str) -> list[Any]:
        def one(proc: subprocess.Popen[str]) -> Any:
            assert proc.stdin is not None
            assert proc.stdout is not None
            proc.stdin.write(what + "\n")
            proc.stdin.flush()
            return json.loads(proc.stdout.readline())

        return list(await asyncio.gather(*(asyncio.to_thread(one, p) for p in self.procs)))

    async def truth(self) -> dict[tuple[int, int], dict[str, Any]]:
        answers = await self.ask("truth")
        return {
            (port, int(unit)): t
            for port, answer in zip(self.ports, answers, strict=True)
            for unit, t in answer.items()
        }

    async def cpu_s(self) -> float:
        return sum(float(a["cpu_s"]) for a in await self.ask("cpu"))

    async def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.asynccontextmanager
async def simulators() -> AsyncIterator[tuple[Children, list[tuple[int, int]]]]:
    ports = _free_ports(PORTS)
    per = AXES // PORTS
    children = Children(ports, per)
    try:
        await children.start()
        yield children, [(p, u) for p in ports for u in range(1, per + 1)]
    finally:
        await children.close()


# --- figures ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def loop_lag(samples: list[float]) -> AsyncIterator[None]:
    """How late this process's event loop wakes a 5 ms sleeper: is *our* loop the bottleneck,
    or are the answers late (the simulators, the other processes on the two cores)?"""

    async def probe() -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(0.005)
            samples.append(time.monotonic() - t0 - 0.005)

    task = asyncio.create_task(probe(), name="loop-lag")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@dataclass
class Figures:
    name: str
    seconds: float = 0.0
    cpu_s: float = 0.0
    sim_cpu_s: float = 0.0
    cycles: int = 0
    late: int = 0
    missed: int = 0
    rtt: list[float] = field(default_factory=list)
    fanout: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)

    def line(self) -> str:
        late = 100 * self.late / max(1, self.cycles)
        missed = 100 * self.missed / max(1, self.cycles)
        return (
            f"   {self.name:<16} {self.cycles / self.seconds:7.1f} cycles/s   late {late:5.2f} %"
            f"   missed {missed:5.2f} %   rtt p50 {pct_ms(self.rtt, 0.5):5.2f} ms"
            f"  p99 {pct_ms(self.rtt, 0.99):6.2f} ms"
            f"   CPU here {100 * self.cpu_s / self.seconds:5.1f} %"
            f" ({1e6 * self.cpu_s / max(1, self.cycles):4.0f} us/cycle)"
            f"   simulators {100 * self.sim_cpu_s / self.seconds:5.1f} %"
            f"   loop lag p50 {pct_ms(self.lag, 0.5):4.2f} ms p99 {pct_ms(self.lag, 0.99):5.2f} ms"
        )


async def reference(children: Children, axes: list[tuple[int, int]], seconds: float) -> Figures:
    """Raw pymodbus FC 03 round trips at the same rate, on monotonic deadlines, no driver; and
    the same E-stop fan-out as raw FC 06 writes of the quick-stop word on the same clients."""
    figures = Figures("raw pymodbus FC03")
    period = 1 / CYCLE_HZ
    t_start = time.monotonic() + WARMUP_S
    end = t_start + seconds
    clients = [
        AsyncModbusTcpClient("127.0.0.1", port=port, timeout=0.5, retries=0) for port, _ in axes
    ]
    for client in clients:
        await client.connect()

    async def axis(client: AsyncModbusTcpClient, unit: int) -> None:
        next_at = time.monotonic() + random.uniform(0, period)
        while next_at < end:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            t0 = time.monotonic()
            try:
                rr = await client.read_holding_registers(0, count=11, device_id=unit)
                ok = not rr.isError()
            except Exception:  # the reference only counts; it has no error policy
                ok = False
            now = time.monotonic()
            counted = t0 >= t_start
            next_at += period
            if counted:
                figures.cycles += 1
                if ok:
                    figures.rtt.append(now - t0)
                if now > next_at:
                    figures.late += 1
                if not ok or now > next_at:
                    figures.missed += 1
            if now > next_at + period:
                skipped = int((now - next_at) // period)
                if counted:
                    figures.cycles += skipped
                    figures.missed += skipped
                next_at += skipped * period

    async def fanouts() -> None:
        # After the measured window's CPU snapshot: the cycles keep running meanwhile.
        await asyncio.sleep(WARMUP_S + seconds * 0.5)
        for _ in range(ESTOPS):
            await asyncio.sleep(random.uniform(0.1, 0.3))
            t0 = time.monotonic()
            await asyncio.gather(
                *(
                    c.write_register(104, 16, device_id=u)
                    for c, (_, u) in zip(clients, axes, strict=True)
                ),
                return_exceptions=True,
            )
            figures.fanout.append(time.monotonic() - t0)

    try:
        jobs = [asyncio.create_task(axis(c, u)) for c, (_, u) in zip(clients, axes, strict=True)]
        fan = asyncio.create_task(fanouts())
        await asyncio.sleep(WARMUP_S)
        cpu0, sim0, t0 = _cpu_s(), await children.cpu_s(), time.monotonic()
        async with loop_lag(figures.lag):
            await asyncio.gather(*jobs)
        figures.seconds = time.monotonic() - t0
        figures.cpu_s = _cpu_s() - cpu0
        figures.sim_cpu_s = await children.cpu_s() - sim0
        await fan
    finally:
        for client in clients:
            client.close()
    return figures


@dataclass
class Fleet:
    drivers: list[ModbusDeviceDriver]
    cycles: list[AxisCycle]
    phase: list[float]
    streaming: bool = True

    def stream(self, now: float) -> None:
        """The motion layer's share: a new setpoint per axis per cycle (sine trajectories)."""
        if not self.streaming:
            return
        w = 2 * math.pi / PERIOD_S
        for cycle, phase in zip(self.cycles, self.phase, strict=True):
            target = START_MM + AMPLITUDE_MM * math.sin(w * now + phase)
            cycle.set_setpoint(Setpoint(target, 1500.0, 2000.0))


def snapshot(fleet: Fleet) -> tuple[int, int, int]:
    return (
        sum(c.stats.cycles for c in fleet.cycles),
        sum(c.stats.late for c in fleet.cycles),
        sum(c.stats.missed for c in fleet.cycles),
    )


async def ours(children: Children, axes: list[tuple[int, int]], seconds: float) -> None:
    hoist = load_profile(PROFILE_DIR / "hoist.toml")
    statuses = [0]

    async def sink(readings: list[Reading]) -> None:
        pass

    def on_status(status: object) -> None:
        statuses[0] += 1

    drivers = []
    for i, (port, unit) in enumerate(axes):
        tr = ModbusTcpTransport(kind="modbus-tcp", host="127.0.0.1", port=port, unit=unit)
        drivers.append(
            ModbusDeviceDriver(
                Device(f"a{i}", hoist, tr, 10.0), sink, cycle_hz=CYCLE_HZ, on_status=on_status
            )
        )
    cycles = [d.cycle for d in drivers if d.cycle is not None]
    fleet = Fleet(drivers, cycles, [random.uniform(0, 2 * math.pi) for _ in drivers])
    tasks = [asyncio.create_task(d.run(), name=f"a{i}") for i, d in enumerate(drivers)]

    async def streamer() -> None:
        next_at = time.monotonic()
        while True:
            fleet.stream(time.monotonic())
            next_at += 1 / CYCLE_HZ
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def measure(name: str) -> None:
        await asyncio.sleep(WARMUP_S)
        figures = Figures(name)
        a, cpu0, sim0, t0 = snapshot(fleet), _cpu_s(), await children.cpu_s(), time.monotonic()
        for c in cycles:
            c.stats.rtt_s.clear()
        async with loop_lag(figures.lag):
            await asyncio.sleep(seconds)
        b, cpu1, t1 = snapshot(fleet), _cpu_s(), time.monotonic()
        figures.sim_cpu_s = await children.cpu_s() - sim0
        figures.seconds, figures.cpu_s = t1 - t0, cpu1 - cpu0
        figures.cycles, figures.late, figures.missed = (y - x for x, y in zip(a, b, strict=True))
        for c in cycles:  # the last 1 024 round trips of each axis
            figures.rtt.extend(c.stats.rtt_s)
        print(figures.line())

    # First at rest (the heartbeat alone, as the reference's drives are idle), then streamed.
    fleet.streaming = False
    stream_task = asyncio.create_task(streamer(), name="motion-layer")
    try:
        await measure("cycle, at rest")
        fleet.streaming = True
        await measure("cycle, streamed")
        fallbacks = sum(c.stats.fallback for c in cycles)
        failed = sum(c.stats.failed for c in cycles)
        dropped = sum(c.stats.telemetry_dropped for c in cycles)
        print(
            f"   statuses delivered {statuses[0]}, failed {failed}, fallbacks {fallbacks}, "
            f"telemetry batches dropped {dropped}"
        )
        await estops(children, axes, fleet)
    finally:
        stream_task.cancel()
        await asyncio.gather(stream_task, return_exceptions=True)
        for d in drivers:
            d.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


class GcPauses:
    """The cyclic collector's pauses in this process (start, seconds, generation)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.monotonic()
        else:
            self.pauses.append((self._t0, time.monotonic() - self._t0, info["generation"]))

    def within(self, a: float, b: float) -> list[tuple[float, float, int]]:
        return [p for p in self.pauses if p[0] < b and p[0] + p[1] > a]


async def estops(children: Children, axes: list[tuple[int, int]], fleet: Fleet) -> None:
    gc_pauses = GcPauses()
    gc.callbacks.append(gc_pauses)
    in_stop: list[tuple[float, float, int]] = []
    fanout: list[float] = []
    written: list[float] = []  # call -> the last stop frame handed to its socket
    late_send: list[int] = []  # axes whose stop was not on the wire when stop_now returned
    per_axis: list[float] = []
    not_disabled = not_decelerating = not_stopped = moving_at_stop = 0
    for _ in range(ESTOPS):
        # Running again: release, stream, let the drives enable and move, then a random phase.
        for c in fleet.cycles:
            c.release_stop()
        fleet.streaming = True
        await asyncio.sleep(random.uniform(0.7, 1.0) + random.uniform(0, 1 / CYCLE_HZ))
        before = await children.truth()
        fleet.streaming = False  # the supervisor latches its E-stop first ...
        t0 = time.monotonic()
        # As the supervisor's E-stop does: every frame is written in this step (stop_now),
        # then the answers are awaited.
        pending = [c.stop_now(StopKind.QUICK) for c in fleet.cycles]
        in_call = sum(c.stop_sent_at >= t0 for c in fleet.cycles)
        late_send.append(len(fleet.cycles) - in_call)
        acks = await asyncio.gather(*pending, return_exceptions=True)
        fanout.append(time.monotonic() - t0)
        written.append(max(c.stop_sent_at for c in fleet.cycles) - t0)
        in_stop.extend(gc_pauses.within(t0, t0 + written[-1]))
        per_axis.extend(a for a in acks if isinstance(a, float))
        errors = [a for a in acks if isinstance(a, BaseException)]
        if errors:
            print(f"   stop write errors: {len(errors)}: {errors[0]}")
        t1 = await children.truth()
        await asyncio.sleep(0.1)
        t2 = await children.truth()
        await asyncio.sleep(0.5)  # a quick stop from 1.3 m/s at 3 m/s^2 takes < 0.45 s
        t3 = await children.truth()
        for key in axes:
            v0 = abs(before[key]["velocity_mm_s"])
            v1, v2 = abs(t1[key]["velocity_mm_s"]), abs(t2[key]["velocity_mm_s"])
            moving_at_stop += v1 > 1.0
            not_disabled += bool(t1[key]["enabled"])
            not_decelerating += v1 > 1.0 and v2 >= v1
            not_stopped += bool(t3[key]["moving"])
            del v0
    gc.callbacks.remove(gc_pauses)
    n = ESTOPS * len(axes)
    longest = max((p[1] for p in in_stop), default=0.0)
    print(
        f"   cyclic GC pauses inside a fan-out's write: {len(in_stop)} (generations "
        f"{sorted({p[2] for p in in_stop})}, longest {1000 * longest:.1f} ms)"
    )
    print(
        f"   E-stop fan-out to {len(axes)} axes: call -> last stop written"
        f" {fanout_line(written, '')} (target <= 20 ms)"
    )
    print(
        f"   stops not written within the call (no free stop connection): "
        f"{sum(late_send)} of {ESTOPS * len(axes)}"
    )
    print(
        f"   E-stop fan-out to {len(axes)} axes: {fanout_line(fanout)};"
        f" per axis p99 {pct_ms(per_axis, 0.99):5.2f} ms"
    )
    print(
        f"   ground truth of {n} axis stops ({moving_at_stop} moving at the stop): "
        f"still enabled {not_disabled}, not decelerating {not_decelerating}, "
        f"not at standstill after 0.6 s {not_stopped}"
    )


def fanout_line(samples: list[float], what: str = "call -> last ack ") -> str:
    return (
        f"{what}p50 {pct_ms(samples, 0.5):5.2f} ms  p99 {pct_ms(samples, 0.99):5.2f}"
        f" ms  max {pct_ms(samples, 1.0):5.2f} ms ({len(samples)} times)"
    )


def seconds_from_env() -> float:
    return float(os.environ.get("FLYTOWER_BENCH_SECONDS", DEFAULT_SECONDS))


async def run(
    seconds: float | None = None, skip_reference: bool = False, priority: int = REALTIME_PRIORITY
) -> None:
    seconds = seconds_from_env() if seconds is None else seconds
    async with simulators() as (children, axes):
        # As the service does with [machinery] realtime_priority (the simulators, started
        # before, keep the time-sharing scheduler, as a venue's drives are other machines).
        scheduling = realtime.raise_priority(priority, asyncio.get_running_loop())
        print(
            f"   {len(axes)} hoists on {PORTS} ports in {PORTS} processes, {CYCLE_HZ:g} Hz, "
            f"{seconds:g} s per phase; this process: {scheduling}"
        )
        if not skip_reference:
            ref = await reference(children, axes, seconds)
            print(ref.line())
            print(
                f"   raw FC06 fan-out of the stop word to {len(axes)} axes:"
                f" {fanout_line(ref.fanout)}"
            )
        await ours(children, axes, seconds)
    print(f"   target: {len(axes) * CYCLE_HZ:.0f} cycles/s with < 1 % late")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_machinery_cycle")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument(
        "--realtime",
        type=int,
        default=REALTIME_PRIORITY,
        metavar="PRIORITY",
        help="SCHED_FIFO priority of this process's loop, as [machinery] realtime_priority "
        f"(default {REALTIME_PRIORITY}; 0: time-sharing)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--units", type=int, default=AXES // PORTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.port, args.units))
    else:
        asyncio.run(run(args.seconds, args.skip_reference, args.realtime))
