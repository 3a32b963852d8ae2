"""Modbus polling at scale: many units behind gateway ports, the driver against raw pymodbus.

Setup: ``units`` simulated drives (``simulators.machinery.MachineryFamily``, model hoist) behind
``ports`` gateway ports, served by a child process so that the simulators do not share the
driver's event loop. This process polls every unit with a ``ModbusDeviceDriver`` at
``poll_hz``, one TCP connection per unit (the machinery map, §2), with the profile's heartbeat
when it has one.

Two scenarios (``run()``, i.e. ``make bench``):

- *polling*: DESIGN's "200 Modbus devices x 10 Hz (2 000 transactions/s) with < 1 % missed
  cycles": 200 units behind 8 ports, the hoist's status block only (one FC 03 per poll).
- *machinery*: the large venue's 64 axes, 8 a port, the full hoist profile at 5 Hz (two block
  reads a poll) plus its 20 Hz heartbeat: 30 transactions/s an axis, 1 920/s in all.

Figures per scenario: achieved good polls/s and transactions/s, missed cycles, p50/p99 request
latency, reconnects, and this process's CPU per transaction (the service's cost; the simulators
are in the child). Reference, in the same run against the same child: raw pymodbus clients, one
per unit, making the same requests at the same rates on monotonic deadlines, with no driver.
The ratios ours/raw are printed.

    python -m benchmarks.bench_modbus_poll --units 64 --ports 8 --poll-hz 5 --full --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import random
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus.codec import plan_reads
from drivers.modbus.driver import ModbusDeviceDriver
from drivers.model import (
    PROFILE_DIR,
    Device,
    ModbusTcpTransport,
    Profile,
    Reading,
    load_profile,
    parse_profile,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SECONDS = 10.0
WARMUP_S = 2.0


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of this process: the kernel's share is the sockets'."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def status_profile() -> Profile:
    """The hoist's status block only, without heartbeat or commands: one FC 03 per poll."""
    hoist = load_profile(PROFILE_DIR / "hoist.toml")
    points = {
        name: p.model_dump(exclude_none=True)
        for name, p in hoist.points.items()
        if p.modbus is not None and p.modbus.address < 100
    }
    return parse_profile(
        {"id": "hoist_status", "device_class": "hoist", "protocol": "modbus", "points": points}
    )


def layout(units: int, ports: list[int]) -> list[tuple[int, int]]:
    """(port, unit id) of every unit: spread over the ports, unit ids from 1 on each."""
    per = -(-units // len(ports))
    return [(ports[i // per], i % per + 1) for i in range(units)]


# --- the simulators' process ------------------------------------------------------------------


async def serve(units: int, ports: list[int]) -> None:
    """Host the drives until stdin closes (the parent's end of the pipe)."""
    from simulators.core import DeviceSpec
    from simulators.machinery import MachineryFamily

    family = MachineryFamily({})
    for i, (port, unit) in enumerate(layout(units, ports)):
        tr = {"kind": "modbus-tcp", "host": "127.0.0.1", "port": port, "unit": unit}
        family.add(DeviceSpec(f"h{i}", "hoist", tr, {"model": "hoist"}, "bench"))
    async with contextlib.AsyncExitStack() as stack:
        for host in family.hosts():
            await stack.enter_async_context(host)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)
        stats = family.stats()
        print(f"served {stats.get('requests')}", flush=True)


@contextlib.asynccontextmanager
async def simulators(units: int, ports: list[int]) -> AsyncIterator[subprocess.Popen[str]]:
    cmd = [sys.executable, "-m", "benchmarks.bench_modbus_poll", "--serve"]
    cmd += [f"--units={units}", "--port-list=" + ",".join(map(str, ports))]
    proc = subprocess.Popen(  # noqa: ASYNC220 -- started once, stopped below
        cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        if line.strip() != "ready":
            raise RuntimeError(f"simulators did not start: {line!r}")
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- figures ----------------------------------------------------------------------------------


def pct_ms(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    s = sorted(samples)
    return 1000 * s[min(len(s) - 1, int(q * len(s)))]


@dataclass
class Figures:
    name: str
    seconds: float = 0.0
    cpu_s: float = 0.0
    sys_s: float = 0.0
    polls: int = 0  # good polls
    transactions: int = 0  # answered requests
    cycles: int = 0
    missed: int = 0
    reconnects: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def cpu_per_tx_us(self) -> float:
        return 1e6 * self.cpu_s / max(1, self.transactions)

    @property
    def missed_pct(self) -> float:
        return 100 * self.missed / max(1, self.cycles)

    def line(self) -> str:
        return (
            f"   {self.name:<8} {self.polls / self.seconds:7.1f} polls/s "
            f"{self.transactions / self.seconds:7.1f} tx/s   missed {self.missed_pct:5.2f} %   "
            f"p50 {pct_ms(self.latencies, 0.5):6.2f} ms  p99 {pct_ms(self.latencies, 0.99):6.2f} ms"
            f"   CPU {100 * self.cpu_s / self.seconds:5.1f} %  {self.cpu_per_tx_us:5.0f} us/tx"
            f" ({1e6 * self.sys_s / max(1, self.transactions):3.0f} in the kernel)"
            f"   reconnects {self.reconnects}"
        )


async def measure(seconds: float, figures: Figures, snapshot: Callable[[], Figures]) -> None:
    """Wait out the warm-up, then take the difference of two snapshots ``seconds`` apart."""
    await asyncio.sleep(WARMUP_S)
    a, cpu0, t0 = snapshot(), _cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    b, cpu1, t1 = snapshot(), _cpu(), time.monotonic()
    figures.seconds = t1 - t0
    figures.cpu_s = sum(cpu1) - sum(cpu0)
    figures.sys_s = cpu1[1] - cpu0[1]
    figures.polls, figures.transactions = b.polls - a.polls, b.transactions - a.transactions
    figures.cycles, figures.missed = b.cycles - a.cycles, b.missed - a.missed
    figures.reconnects = b.reconnects - a.reconnects
    figures.latencies = b.latencies[len(a.latencies) :] if b.latencies else []


# --- the driver -------------------------------------------------------------------------------


async def drive(
    where: list[tuple[int, int]], profile: Profile, poll_hz: float, seconds: float
) -> Figures:
    async def sink(readings: list[Reading]) -> None:
        pass

    drivers = []
    for i, (port, unit) in enumerate(where):
        transport = ModbusTcpTransport(kind="modbus-tcp", host="127.0.0.1", port=port, unit=unit)
        drivers.append(ModbusDeviceDriver(Device(f"d{i}", profile, transport, poll_hz), sink))

    def snapshot() -> Figures:
        f = Figures("driver")
        for d in drivers:
            s = d.stats
            f.transactions += s.requests - s.errors
            f.cycles += s.cycles
            f.missed += s.missed
            f.reconnects += s.reconnects
        f.polls = f.cycles - f.missed
        return f

    figures = Figures("driver")
    async with asyncio.TaskGroup() as tg:
        for d in drivers:
            tg.create_task(d.run(), name=f"bench:{d.device.id}")
        await measure(seconds, figures, snapshot)
        for d in drivers:
            d.stop()
    # latencies: every driver's last 256 samples, all of them inside the window at these rates
    figures.latencies = [x for d in drivers for x in d.stats.latencies_s]
    return figures


# --- the reference: bare pymodbus clients -------------------------------------------------


async def reference(
    where: list[tuple[int, int]], profile: Profile, poll_hz: float, seconds: float
) -> Figures:
    blocks = plan_reads(profile.points.values())
    heartbeat_hz = 1000 / profile.heartbeat.period_ms if profile.heartbeat else 0.0
    counters = Figures("raw")
    stop = asyncio.Event()

    async def paced(hz: float, step: Callable[[], Awaitable[bool]], poll: bool) -> None:
        period = 1 / hz
        next_at = time.monotonic() + random.uniform(0, period)
        while not stop.is_set():
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            ok = await step()
            now = time.monotonic()
            next_at += period
            if poll:
                counters.cycles += 1
                if ok and now <= next_at:
                    counters.polls += 1
                else:
                    counters.missed += 1
                if now > next_at:
                    skipped = int((now - next_at) // period) + 1
                    counters.cycles += skipped
                    counters.missed += skipped
                    next_at += skipped * period

    async def one(port: int, unit: int) -> None:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=0.2, retries=0)
        await client.connect()
        beat = 0

        async def request(call: Callable[[], Awaitable[Any]]) -> bool:
            t0 = time.monotonic()
            try:
                rr = await call()
            except Exception:  # the reference only counts; it has no error policy
                return False
            if rr.isError():
                return False
            counters.transactions += 1
            counters.latencies.append(time.monotonic() - t0)
            return True

        async def poll() -> bool:
            ok = True
            for b in blocks:
                read = client.read_holding_registers
                ok &= await request(functools.partial(read, b.start, count=b.count, device_id=unit))
            return ok

        async def heartbeat() -> bool:
            nonlocal beat
            beat = (beat + 1) & 0xFFFF
            return await request(lambda: client.write_register(105, beat, device_id=unit))

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(paced(poll_hz, poll, True))
                if heartbeat_hz:
                    tg.create_task(paced(heartbeat_hz, heartbeat, False))
        finally:
            client.close()

    def snapshot() -> Figures:
        f = Figures("raw")
        f.polls, f.transactions = counters.polls, counters.transactions
        f.cycles, f.missed = counters.cycles, counters.missed
        f.latencies = list(counters.latencies)
        return f

    figures = Figures("raw")
    async with asyncio.TaskGroup() as tg:
        for port, unit in where:
            tg.create_task(one(port, unit))
        await measure(seconds, figures, snapshot)
        stop.set()
    return figures


# --- scenarios --------------------------------------------------------------------------------


async def scenario(
    title: str, units: int, n_ports: int, poll_hz: float, full: bool, seconds: float
) -> tuple[Figures, Figures]:
    profile = load_profile(PROFILE_DIR / "hoist.toml") if full else status_profile()
    blocks = len(plan_reads(profile.points.values()))
    hb = 1000 / profile.heartbeat.period_ms if profile.heartbeat else 0.0
    offered = units * (poll_hz * blocks + hb)
    print(
        f"   {title}: {units} units behind {n_ports} ports, {poll_hz:g} Hz x {blocks} block(s)"
        f"{f' + {hb:g} Hz heartbeat' if hb else ''} = {offered:.0f} tx/s offered, {seconds:g} s",
        flush=True,
    )
    ports = _free_ports(n_ports)
    where = layout(units, ports)
    async with simulators(units, ports):
        raw = await reference(where, profile, poll_hz, seconds)
        print(raw.line(), "(ref)", flush=True)
        ours = await drive(where, profile, poll_hz, seconds)
        print(ours.line(), flush=True)
    print(
        f"   ratio ours/raw: polls/s {ours.polls / max(1, raw.polls):.2f}   "
        f"CPU/tx {ours.cpu_per_tx_us / raw.cpu_per_tx_us:.2f}   "
        f"p99 {pct_ms(ours.latencies, 0.99) / pct_ms(raw.latencies, 0.99):.2f}",
        flush=True,
    )
    return raw, ours


async def run(seconds: float = DEFAULT_SECONDS) -> None:
    await scenario("polling", 200, 8, 10.0, False, seconds)
    await scenario("machinery", 64, 8, 5.0, True, seconds)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port-list", default="", help=argparse.SUPPRESS)
    parser.add_argument("--units", type=int, default=0, help="units (default: both scenarios)")
    parser.add_argument("--ports", type=int, default=8, help="gateway ports")
    parser.add_argument("--poll-hz", type=float, default=10.0)
    parser.add_argument("--full", action="store_true", help="full hoist profile + heartbeat")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.units, [int(p) for p in args.port_list.split(",")]))
    elif args.units:
        asyncio.run(
            scenario("custom", args.units, args.ports, args.poll_hz, args.full, args.seconds)
        )
    else:
        asyncio.run(run(args.seconds))


if __name__ == "__main__":
    main(sys.argv[1:])
