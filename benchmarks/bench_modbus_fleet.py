"""Modbus fleet: 200 devices polled at 10 Hz, 10 % of them dead, against raw pymodbus clients.

Setup: 180 live hoist drives served by our simulators in 4 processes (`python -m simulators`,
45 units on one port each, one TCP connection per unit as the machinery map says), plus 20
dead devices: 10 ports that refuse connections and 10 that accept and never answer. Each live
device is polled for its status block (FC 03, 0+11) at 10 Hz by a ModbusDeviceDriver; the
dead ones run their drivers too, with the default 0.5 s timeout.

Figures: the achieved rate of good polls of live devices, their missed cycles (target < 1 %)
and their p99 poll latency. Reference, measured first in the same run on the same servers:
180 raw pymodbus clients, each polling the same block at 10 Hz on monotonic deadlines, with no
driver, no dead devices and no readings.

Duration: FLYTOWER_BENCH_SECONDS (default 60) for each of the two phases; `--seconds N` when
run as a script (`python -m benchmarks.bench_modbus_fleet --seconds 20`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

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
LIVE, REFUSING, SILENT = 180, 10, 10
SERVER_PROCESSES = 4
POLL_HZ = 10.0
STATUS_EVERY_S = 5.0
DEFAULT_SECONDS = 60.0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


@contextlib.contextmanager
def simulators(folder: Path) -> Iterator[list[tuple[int, int]]]:
    """Start the server processes; yield (port, unit) of every live drive."""
    per = LIVE // SERVER_PROCESSES
    live: list[tuple[int, int]] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(SERVER_PROCESSES):
            port = _port()
            lines = ['version = 1\n[venue]\nid = "bench"\n']
            for unit in range(1, per + 1):
                lines.append(
                    f'[[devices]]\nid = "h{i}-{unit}"\nprofile = "hoist"\n'
                    f'transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {port}, '
                    f"unit = {unit} }}\n"
                    f'simulate = {{ model = "hoist", start_position_mm = {1000 + unit} }}\n'
                )
                live.append((port, unit))
            venue = folder / f"venue-{i}.toml"
            venue.write_text("".join(lines))
            procs.append(
                subprocess.Popen(
                    # --control-port 0: the processes must not all want the default 18890
                    [sys.executable, "-m", "simulators", str(venue), "--control-port", "0"],
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=open(folder / f"sim-{i}.log", "wb"),  # noqa: SIM115
                )
            )
        for port in sorted({p for p, _ in live}):
            _wait_for_port(port)
        yield live
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(10)


def _wait_for_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"simulator on port {port} did not start")


@contextlib.asynccontextmanager
async def silent_ports(n: int) -> AsyncIterator[list[int]]:
    """Ports that accept connections and read requests, and never answer."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass
        writer.close()

    servers = [await asyncio.start_server(swallow, "127.0.0.1", 0) for _ in range(n)]
    try:
        yield [int(s.sockets[0].getsockname()[1]) for s in servers]
    finally:
        for s in servers:
            s.close()
        for s in servers:
            await s.wait_closed()


def pct_ms(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    s = sorted(samples)
    return 1000 * s[min(len(s) - 1, int(q * len(s)))]


@dataclass
class Tally:
    """Counters of one phase, for the live devices."""

    cycles: int = 0
    missed: int = 0
    good: int = 0
    latencies: list[float] = field(default_factory=list)

    def line(self, elapsed: float) -> str:
        missed = 100 * self.missed / max(1, self.cycles)
        return (
            f"{self.good / max(elapsed, 1e-9):7.1f} good polls/s   missed {missed:5.2f} %   "
            f"p50 {pct_ms(self.latencies, 0.5):6.2f} ms   "
            f"p99 {pct_ms(self.latencies, 0.99):6.2f} ms"
        )


async def reference(live: list[tuple[int, int]], seconds: float) -> Tally:
    """Raw pymodbus clients polling the same block at the same rate, no driver."""
    tally = Tally()
    period = 1 / POLL_HZ
    end = time.monotonic() + seconds

    async def poll(port: int, unit: int) -> None:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=0.5, retries=0)
        await client.connect()
        try:
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
                tally.cycles += 1
                next_at += period
                if ok:
                    tally.good += 1
                    tally.latencies.append(now - t0)
                if not ok or now > next_at:
                    tally.missed += 1
                if now > next_at:
                    skipped = int((now - next_at) // period) + 1
                    tally.cycles += skipped
                    tally.missed += skipped
                    next_at += skipped * period
        finally:
            client.close()

    await _with_status("reference", seconds, tally, [poll(p, u) for p, u in live])
    return tally


async def _with_status(
    name: str, seconds: float, tally: Tally, jobs: list[Coroutine[Any, Any, None]]
) -> None:
    t0 = time.monotonic()

    async def status() -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            print(f"   [{name} {time.monotonic() - t0:5.1f} s] {tally.line(time.monotonic() - t0)}")

    ticker = asyncio.create_task(status(), name=f"{name}-status")
    try:
        await asyncio.gather(*jobs)
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)


async def ours(live: list[tuple[int, int]], dead: list[int], seconds: float) -> Tally:
    profile = status_profile()

    async def sink(readings: list[Reading]) -> None:
        pass

    drivers: list[ModbusDeviceDriver] = []
    for i, (port, unit) in enumerate([*live, *((p, 1) for p in dead)]):
        transport = ModbusTcpTransport(kind="modbus-tcp", host="127.0.0.1", port=port, unit=unit)
        drivers.append(ModbusDeviceDriver(Device(f"d{i}", profile, transport, POLL_HZ), sink))
    live_drivers = drivers[: len(live)]
    tally = Tally()
    seen = [0] * len(live_drivers)

    def collect() -> None:
        # DriverStats keeps the last 256 latencies: sampled every second, none are lost.
        tally.cycles = sum(d.stats.cycles for d in live_drivers)
        tally.missed = sum(d.stats.missed for d in live_drivers)
        for i, d in enumerate(live_drivers):
            answered = d.stats.requests - d.stats.errors  # a live hoist has no decode errors
            new = answered - seen[i]
            if new > 0:
                seen[i] = answered
                tally.latencies.extend(d.stats.latencies_s[-new:])
                tally.good += new

    async def sampler() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
            collect()
        for d in drivers:
            d.stop()

    tasks = [d.run() for d in drivers]
    await _with_status("flytower", seconds, tally, [sampler(), *tasks])
    collect()
    dead_requests = sum(d.stats.requests for d in drivers[len(live) :])
    print(f"   dead devices: {dead_requests} requests in {seconds:.0f} s (20 devices)")
    return tally


def seconds_from_env() -> float:
    return float(os.environ.get("FLYTOWER_BENCH_SECONDS", DEFAULT_SECONDS))


async def run(seconds: float | None = None) -> None:
    seconds = seconds_from_env() if seconds is None else seconds
    # The dead devices are dead on purpose: keep their log lines out of the figures.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("drivers").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, simulators(Path(tmp)) as live:
        async with silent_ports(SILENT) as silent:
            refusing = [_port() for _ in range(REFUSING)]
            print(
                f"   {len(live)} live + {REFUSING} refusing + {SILENT} silent devices, "
                f"{POLL_HZ:g} Hz, {seconds:g} s per phase"
            )
            ref = await reference(live, seconds)
            flytower = await ours(live, [*refusing, *silent], seconds)
    target = len(live) * POLL_HZ
    print(f"   raw pymodbus (ref) {ref.line(seconds)}")
    print(f"   flytower driver    {flytower.line(seconds)}")
    print(f"   target {target:.0f} polls/s; missed cycles must be < 1 %")
    print(
        f"   ratio ours/ref: rate {flytower.good / max(1, ref.good):.3f}, "
        f"p99 {pct_ms(flytower.latencies, 0.99) / pct_ms(ref.latencies, 0.99):.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_modbus_fleet")
    parser.add_argument("--seconds", type=float, default=None)
    asyncio.run(run(parser.parse_args().seconds))
