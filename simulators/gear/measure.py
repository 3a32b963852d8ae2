"""Measure what the MQTT gear family costs: CPU per device at its configured publish rate.

Not a test: a load script for sizing venues (how many sensors one core can simulate).

    python -m simulators.gear.measure --scale 1 --seconds 10            # a Mosquitto of its own
    python -m simulators.gear.measure --port 1883 --scale 4 --seconds 20

The devices are venue-large.toml's gear groups (148 devices, 11 types, five gateway nodes
plus one connection per Shelly, each at its configured ``publish_hz``), ``--scale`` times
over. The family runs in this process as the runner would run it, without the runner:
``MqttFamily(venue)``, ``add(DeviceSpec)`` per device, then every ``hosts()`` entered. After
the connections are up and the births are out, the process's CPU time over ``--seconds`` is
printed per device and per message, split into the clock (stepping the models, encoding,
handing batches to paho) and the rest (paho's socket I/O, PUBACKs, the loop), with the
broker's own CPU when it was started here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from simulators.core import DeviceSpec
from simulators.gear.family import MqttFamily

# venue-large.toml's gear: (model, count, transport, publish_hz or None for the default)
LARGE_MIX: list[tuple[str, int, str, float | None]] = [
    ("load_cell", 24, "node:rigging", 4.0),
    ("temp_humidity", 16, "node:env", 0.0333),
    ("shelly_ht", 6, "base", None),
    ("spl_meter", 4, "node:env", 1.0),
    ("power_meter", 12, "node:env", 1.0),
    ("shelly_3em", 4, "base", None),
    ("wireless_mic_receiver", 48, "node:rf", 2.0),
    ("power_amplifier", 24, "node:amps", 1.0),
    ("projector", 4, "node:video", 1.0),
    ("media_server", 4, "node:video", 1.0),
    ("led_wall_processor", 2, "node:video", 1.0),
]


def venue_devices(scale: int) -> list[DeviceSpec]:
    specs: list[DeviceSpec] = []
    for copy in range(scale):
        for model, count, where, hz in LARGE_MIX:
            for n in range(count):
                dev_id = f"{model.replace('_', '-')}-{copy}-{n}"
                if where == "base":
                    transport: dict[str, Any] = {"kind": "mqtt", "base": f"shellies/{dev_id}"}
                else:
                    transport = {"kind": "mqtt", "node": f"{where[5:]}-{copy}"}
                simulate: dict[str, Any] = {"model": model}
                if hz is not None:
                    simulate["publish_hz"] = hz
                specs.append(DeviceSpec(dev_id, model, transport, simulate, f"measure {dev_id}"))
    return specs


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _mosquitto() -> Any:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = _free_port()
    with tempfile.TemporaryDirectory() as folder:
        conf = Path(folder) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "set_tcp_nodelay true\n"
        )
        proc = subprocess.Popen([exe, "-c", str(conf)], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 5
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mosquitto does not listen on {port}")
                time.sleep(0.05)
            yield port, proc.pid
        finally:
            proc.terminate()
            proc.wait(5)


async def measure(port: int, broker_pid: int | None, scale: int, seconds: float) -> None:
    family = MqttFamily({"venue": {"id": "measure"}, "mqtt": {"port": port}})
    for spec in venue_devices(scale):
        family.add(spec)
    n = len(family.devices)
    async with contextlib.AsyncExitStack() as stack:
        for host in family.hosts():
            await stack.enter_async_context(host)
        await asyncio.sleep(3.0)  # connected, births out, the first full reports sent
        assert family.clock is not None
        clock = family.clock
        stats0 = family.stats()
        cpu0, tick0, wall0 = _cpu(), clock.tick_s, time.monotonic()
        broker0 = _proc_cpu(broker_pid) if broker_pid else 0.0
        await asyncio.sleep(seconds)
        cpu, wall = _cpu() - cpu0, time.monotonic() - wall0
        tick = clock.tick_s - tick0
        broker = _proc_cpu(broker_pid) - broker0 if broker_pid else None
        stats = family.stats()
    sent = stats["published"] - stats0["published"]
    dropped = stats["dropped"] - stats0["dropped"]
    connections = stats["connections"]
    print(f"{n} devices over {connections} connections, {wall:.1f} s, tick {clock.tick_hz:g} Hz")
    print(f"  messages/s {sent / wall:8.1f}   dropped {dropped}   late ticks {stats['late_ticks']}")
    print(
        f"  process CPU {100 * cpu / wall:5.1f} % of a core = {100 * cpu / wall / n:.3f} % per "
        f"device, {1e6 * cpu / max(sent, 1):.0f} us per message"
    )
    print(
        f"    clock     {100 * tick / wall:5.1f} %  (models, encoding, handing to paho)   "
        f"rest {100 * (cpu - tick) / wall:5.1f} %  (socket I/O, PUBACKs, loop)"
    )
    if broker is not None:
        print(
            f"  mosquitto   {100 * broker / wall:5.1f} % of a core "
            f"({1e6 * broker / max(sent, 1):.0f} us per message)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="a broker's port (0: start one)")
    parser.add_argument("--scale", type=int, default=1, help="copies of the 148-device mix")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if args.port:
        asyncio.run(measure(args.port, None, args.scale, args.seconds))
        return
    with _mosquitto() as (port, pid):
        asyncio.run(measure(port, pid, args.scale, args.seconds))


if __name__ == "__main__":
    main()
