"""Measure what the machinery family costs: physics per axis, CPU per Modbus request.

Not a test: a load script for sizing venues and for the weights of ``family.weight``.

    python -m simulators.machinery.measure --axes 64 --rate 2000 --seconds 10

This process serves ``--axes`` hoists behind gateway ports (``--per-port`` units a port, 8 by
default) with the family's 100 Hz physics clock. A child process (``--client``) runs pymodbus
masters, one connection per axis as Flytower's driver does, that send ``--rate`` requests/s in
total, paced, in one of two mixes:

- ``--mix poll`` (the default): what a polling master sends (per poll the status block and the
  command block read, and heartbeat writes at 20 Hz; ``--moving`` axes run back and forth);
- ``--mix cycle``: what Flytower's axis cycle sends (docs/interfaces/modbus-machinery.md §9.5):
  one FC 23 per cycle that writes the control word and heartbeat (``--moving`` axes: the
  whole command block, with a target that runs back and forth) and reads the status block, as
  ``benchmarks.bench_machinery_cycle`` does (64 axes, 16 a port, 3 200 requests/s).

The server's own CPU time is split into physics (the clock's thread time) and the rest
(requests, the loop), and printed per axis and per request, with the achieved tick and
request rates. ``--profile FILE`` writes a cProfile of the server (``--seconds`` of load);
``--uvloop`` serves on uvloop's event loop instead of asyncio's (to size that option: most of
a request's CPU on a virtual machine is the event loop's wake-up and socket calls).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import subprocess
import sys
import time

from simulators.core import DeviceSpec
from simulators.machinery.family import MachineryFamily

UNITS_PER_PORT = 8
CW_ENABLE_RUN = 1 | 2  # control word: enable, run


def _ports(base: int, axes: int, per_port: int = UNITS_PER_PORT) -> list[tuple[int, int]]:
    """(port, unit) of each axis."""
    return [(base + i // per_port, i % per_port + 1) for i in range(axes)]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def serve(args: argparse.Namespace) -> None:
    family = MachineryFamily({})
    for i, (port, unit) in enumerate(_ports(args.base_port, args.axes, args.per_port)):
        tr = {"kind": "modbus-tcp", "host": "127.0.0.1", "port": port, "unit": unit}
        family.add(DeviceSpec(f"h{i}", "hoist", tr, {"model": "hoist"}, "measure"))
    async with contextlib.AsyncExitStack() as stack:
        for host in family.hosts():
            await stack.enter_async_context(host)
        client = None
        if args.rate > 0:
            cmd = [sys.executable, "-m", "simulators.machinery.measure", "--client"]
            cmd += [f"--axes={args.axes}", f"--rate={args.rate}", f"--base-port={args.base_port}"]
            cmd += [f"--moving={args.moving}", f"--seconds={args.seconds + 2}"]
            cmd += [f"--per-port={args.per_port}", f"--mix={args.mix}"]
            client = subprocess.Popen(cmd)  # noqa: ASYNC220 -- started once, waited below
        await asyncio.sleep(1.5)  # connections up, clocks settled
        cpu0, wall0 = _cpu(), time.monotonic()
        ticks0, phys0 = family.ticks, family.step_s
        req0 = family.stats()["requests"]
        await asyncio.sleep(args.seconds)
        cpu, wall = _cpu() - cpu0, time.monotonic() - wall0
        ticks, phys = family.ticks - ticks0, family.step_s - phys0
        requests = family.stats()["requests"] - req0
        if client is not None:
            await asyncio.to_thread(client.wait, 10)
    other = cpu - phys
    print(
        f"axes {args.axes} ({args.moving} moving, {args.per_port} a port), mix {args.mix}, "
        f"offered {args.rate:g} req/s, {wall:.1f} s, {'uvloop' if args.uvloop else 'asyncio'}"
    )
    print(f"  ticks/s {ticks / wall:7.1f}   requests/s {requests / wall:7.1f}")
    print(f"  process CPU {100 * cpu / wall:5.1f} % of a core")
    print(
        f"  physics     {100 * phys / wall:5.1f} %  = "
        f"{100 * phys / wall / args.axes:.3f} % per axis"
        f"  ({1e6 * phys / max(ticks, 1) / args.axes:.1f} us per axis-tick)"
    )
    if requests:
        print(
            f"  requests    {100 * other / wall:5.1f} %  = {1e6 * other / requests:.0f} us CPU "
            "per request (incl. the loop's idle overhead)"
        )


async def clients(args: argparse.Namespace) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    axes = _ports(args.base_port, args.axes, args.per_port)
    per_axis = args.rate / len(axes)
    end = time.monotonic() + args.seconds

    async def master(i: int, port: int, unit: int) -> None:
        c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1)
        await c.connect()
        period = 1 / per_axis
        deadline = time.monotonic() + (i / len(axes)) * period
        n, beat = 0, 0
        moving = i < args.moving
        try:
            while time.monotonic() < end:
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                deadline += period
                n += 1
                with contextlib.suppress(Exception):
                    if args.mix == "cycle":
                        beat = (beat + 1) & 0xFFFF
                        if moving:
                            target = 20000 if (n // 400) % 2 else 100000
                            write = [target >> 16, target & 0xFFFF, 1500, 2000, CW_ENABLE_RUN]
                            await c.readwrite_registers(
                                read_address=0,
                                read_count=11,
                                write_address=100,
                                values=[*write, beat],
                                device_id=unit,
                            )
                        else:
                            await c.readwrite_registers(
                                read_address=0,
                                read_count=11,
                                write_address=104,
                                values=[1, beat],
                                device_id=unit,
                            )
                        continue
                    if n % 2 == 0:  # half of a master's requests are heartbeats
                        beat = (beat + 1) & 0xFFFF
                        await c.write_register(105, beat, device_id=unit)
                    elif n % 4 == 1:
                        await c.read_holding_registers(0, count=11, device_id=unit)
                    else:
                        await c.read_holding_registers(100, count=7, device_id=unit)
                    if moving and n % 400 == 2:
                        target = 20000 if (n // 400) % 2 else 100000
                        await c.write_registers(100, [0, target], device_id=unit)
                        await c.write_registers(102, [1500, 2000, 3], device_id=unit)
        finally:
            c.close()

    await asyncio.gather(*(master(i, p, u) for i, (p, u) in enumerate(axes)))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.machinery.measure")
    parser.add_argument("--axes", type=int, default=64)
    parser.add_argument("--rate", type=float, default=2000.0, help="requests/s in total")
    parser.add_argument("--moving", type=int, default=0, help="axes that run back and forth")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--base-port", type=int, default=26001)
    parser.add_argument("--per-port", type=int, default=UNITS_PER_PORT, help="units a port")
    parser.add_argument("--mix", choices=("poll", "cycle"), default="poll")
    parser.add_argument("--profile", help="write a cProfile of the server to this file")
    parser.add_argument("--uvloop", action="store_true", help="serve on uvloop's event loop")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.uvloop and not args.client:
        import uvloop  # installed with uvicorn[standard]

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.client:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        asyncio.run(clients(args))
    elif args.profile:
        import cProfile

        cProfile.runctx("asyncio.run(serve(args))", globals(), {"args": args}, args.profile)
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main(sys.argv[1:])
