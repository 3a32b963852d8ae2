"""Simulator cost: CPU per device per second of simulated time, per family, under real load.

Figure: CPU seconds of the simulator process / (devices x wall seconds) while real clients use
it at the venue's rates, and from it how many such devices one core can simulate:
- machinery: hoists behind Modbus TCP gateways (4 units a port), each polled at 20 Hz (status
  block read) with its heartbeat written at 20 Hz, by pymodbus clients in this process;
- MQTT gear: sensors publishing on their own through Mosquitto, counted by a subscriber here;
- DMX receivers: fixtures on Art-Net universes, each universe sent at 44 Hz from here;
- OSC loudspeaker matrices: every point of each queried at 10 Hz from here.
Reference, same run, same load: the bare cost of that traffic without a simulation behind it:
a pymodbus SimDevice with static registers; a plain aiomqtt client publishing the same message
rate; a UDP socket that only receives the same frames; a UDP socket that echoes each query.
The acoustic room is one per venue, not per device: its figure is the realtime convolution of
its speaker-mic paths, against the same convolution done offline in one piece. Last, the cost
per device is turned into how many devices of each family one core carries, and what the large
venue needs (``examples/venue-large.toml``).

``python -m benchmarks.bench_simulators`` runs it alone; ``python -m benchmarks`` runs all.

The simulator and the references each run in their own process (``python -m simulators`` and
``python -m benchmarks.bench_simulators reference-...``), so their CPU time is theirs alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

SECONDS = 6.0
WARMUP_S = 1.0
PORTS, UNITS, POLL_HZ = 8, 4, 20.0
MQTT_DEVICES = 30
DMX_UNIVERSES, DMX_HZ = 16, 44.0
OSC_DEVICES, OSC_HZ = 8, 10.0
PER_CORE: dict[str, float] = {}  # family -> devices one core carries (filled as benches run)
REPO = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def _start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*args, cwd=REPO, stderr=asyncio.subprocess.DEVNULL)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def _wait_port(port: int, proc: asyncio.subprocess.Process, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@contextlib.asynccontextmanager
async def process(args: Sequence[str], ready_port: int | None) -> AsyncIterator[int]:
    """A child process (its pid), ready once ``ready_port`` listens; stopped after."""
    proc = await _start(sys.executable, *args)
    try:
        if ready_port is not None:
            await _wait_port(ready_port, proc)
        yield proc.pid
    finally:
        await _stop(proc)


@contextlib.asynccontextmanager
async def simulator(venue: dict[str, Any]) -> AsyncIterator[int]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "venue.json"
        path.write_text(json.dumps(venue))
        control = _port()
        args = ["-m", "simulators", str(path), "--control-port", str(control)]
        async with process(args, control) as pid:
            yield pid


async def measure(pid: int, load: Callable[[float], Awaitable[int]]) -> tuple[float, int]:
    """CPU seconds of ``pid`` per wall second while ``load`` runs; the load's own count."""
    await load(WARMUP_S)
    c0, t0 = cpu_s(pid), time.monotonic()
    count = await load(SECONDS)
    return (cpu_s(pid) - c0) / (time.monotonic() - t0), count


def report(name: str, devices: int, ours: float, ref: float, what: str) -> None:
    per_dev, ref_per_dev = ours / devices, ref / devices
    PER_CORE[name] = 1 / per_dev if per_dev else float("inf")
    print(
        f"   {name:<10} {devices:3d} devices  {1000 * per_dev:7.3f} ms CPU per device-second"
        f"  -> {1 / per_dev if per_dev else float('inf'):8.0f} devices per core   ({what})"
    )
    print(
        f"   {'':<10} reference {1000 * ref_per_dev:7.3f} ms   ratio ours/ref "
        f"{per_dev / ref_per_dev if ref_per_dev else float('inf'):.2f}"
    )


# --- machinery over Modbus --------------------------------------------------------------------


def machinery_venue(ports: Sequence[int]) -> dict[str, Any]:
    return {
        "venue": {"id": "bench"},
        "nodes": [{"id": "stage"}],
        "devices": [
            {
                "id": f"hoist-{p}-{u}",
                "profile": "hoist",
                "poll_hz": POLL_HZ,
                "transport": {"kind": "modbus-tcp", "host": "127.0.0.1", "port": p, "unit": u},
                "simulate": {"model": "hoist", "start_position_mm": 1000},
            }
            for p in ports
            for u in range(1, UNITS + 1)
        ],
    }


def modbus_load(ports: Sequence[int]) -> Callable[[float], Awaitable[int]]:
    """Each unit: status block read and heartbeat write at POLL_HZ; returns transactions."""
    from pymodbus.client import AsyncModbusTcpClient

    async def load(seconds: float) -> int:
        clients = [AsyncModbusTcpClient("127.0.0.1", port=p) for p in ports]
        # The simulators answer on their control port before every Modbus port listens.
        deadline = time.monotonic() + 30
        for c, port in zip(clients, ports, strict=True):
            while not await c.connect():
                if time.monotonic() > deadline:
                    raise ConnectionError(f"no Modbus server on port {port} within 30 s")
                await asyncio.sleep(0.1)
        done = 0

        async def axis(client: AsyncModbusTcpClient, unit: int) -> None:
            nonlocal done
            period, beat = 1 / POLL_HZ, 0
            next_at = time.monotonic()
            end = next_at + seconds
            while (next_at := next_at + period) < end:
                await client.read_holding_registers(0, count=11, device_id=unit)
                beat = (beat + 1) & 0xFFFF
                await client.write_register(105, beat, device_id=unit)
                done += 2
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        try:
            await asyncio.gather(*(axis(c, u) for c in clients for u in range(1, UNITS + 1)))
        finally:
            for c in clients:
                c.close()
        return done

    return load


async def bench_machinery() -> None:
    ports = [_port() for _ in range(PORTS)]
    devices = PORTS * UNITS
    load = modbus_load(ports)
    async with simulator(machinery_venue(ports)) as pid:
        ours, count = await measure(pid, load)
    args = ["-m", "benchmarks.bench_simulators", "reference-modbus", *map(str, ports)]
    async with process(args, ports[-1]) as pid:
        ref, _ = await measure(pid, load)
    report("machinery", devices, ours, ref, f"{count / SECONDS:.0f} Modbus transactions/s")


def serve_reference_modbus(ports: Sequence[int]) -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    async def main() -> None:
        servers = []
        for p in ports:
            devices = [
                SimDevice(
                    u,
                    simdata=[
                        SimData(0, count=11, values=0, datatype=DataType.REGISTERS),
                        SimData(100, count=7, values=0, datatype=DataType.REGISTERS),
                    ],
                )
                for u in range(1, UNITS + 1)
            ]
            server = ModbusTcpServer(devices, address=("127.0.0.1", p))
            await server.serve_forever(background=True)
            servers.append(server)
        await asyncio.Event().wait()

    asyncio.run(main())


# --- MQTT gear --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def mosquitto() -> AsyncIterator[int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = _port()
    with tempfile.TemporaryDirectory() as folder:
        conf = Path(folder) / "mosquitto.conf"
        conf.write_text(
            f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
            "persistence false\n"
        )
        proc = await _start(exe, "-c", str(conf))
        try:
            await _wait_port(port, proc)
            yield port
        finally:
            await _stop(proc)


def mqtt_venue(broker: int) -> dict[str, Any]:
    models = ["load_cell", "power_meter", "spl_meter"]
    return {
        "venue": {"id": "bench"},
        "nodes": [{"id": "stage"}],
        "mqtt": {"mode": "external", "host": "127.0.0.1", "port": broker},
        "devices": [
            {
                "id": f"gear-{i}",
                "profile": models[i % 3],
                "transport": {"kind": "mqtt", "node": f"rack-{i % 5}"},
                "simulate": {"model": models[i % 3]},
            }
            for i in range(MQTT_DEVICES)
        ],
    }


def mqtt_counter(broker: int) -> Callable[[float], Awaitable[int]]:
    import aiomqtt

    async def load(seconds: float) -> int:
        count = 0
        async with aiomqtt.Client("127.0.0.1", broker) as client:
            await client.subscribe("#")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    async for _ in client.messages:
                        count += 1
        return count

    return load


async def bench_mqtt() -> None:
    async with mosquitto() as broker:
        counter = mqtt_counter(broker)
        async with simulator(mqtt_venue(broker)) as pid:
            ours, count = await measure(pid, counter)
        rate = count / SECONDS
        args = ["-m", "benchmarks.bench_simulators", "reference-mqtt", str(broker), str(rate)]
        async with process(args, None) as pid:
            await asyncio.sleep(1.0)  # connected
            ref, _ = await measure(pid, counter)
    report("mqtt gear", MQTT_DEVICES, ours, ref, f"{rate:.0f} messages/s")


def serve_reference_mqtt(broker: int, rate: float) -> None:
    import aiomqtt

    async def main() -> None:
        async with aiomqtt.Client("127.0.0.1", broker) as client:
            period, i = 1 / max(rate, 1.0), 0
            next_at = time.monotonic()
            while True:
                i += 1
                payload = json.dumps({"v": 20.0 + (i % 10) / 10, "ts": time.time(), "q": "good"})
                await client.publish(f"flytower/bench/ref/d{i % MQTT_DEVICES}/v", payload)
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    asyncio.run(main())


# --- DMX receivers ----------------------------------------------------------------------------


def dmx_venue(port: int) -> dict[str, Any]:
    devices = []
    for u in range(1, DMX_UNIVERSES + 1):
        devices.append(("moving_head", u, 1))
        devices += [("led_par_rgbw", u, 17 + 8 * k) for k in range(8)]
    return {
        "venue": {"id": "bench"},
        "nodes": [{"id": "stage"}],
        "dmx": {
            "outputs": [
                {
                    "protocol": "artnet",
                    "universes": list(range(1, DMX_UNIVERSES + 1)),
                    "targets": ["127.0.0.1"],
                    "udp_port": port,
                }
            ]
        },
        "devices": [
            {
                "id": f"{model}-{u}-{a}",
                "profile": model,
                "transport": {"kind": "dmx", "universe": u, "address": a},
                "simulate": {"model": model},
            }
            for model, u, a in devices
        ],
    }


def artdmx(universe: int, sequence: int, data: bytes) -> bytes:
    """ArtDmx (Art-Net 4): Flytower universe 1 is Port-Address 0."""
    port_address = universe - 1
    return (
        b"Art-Net\x00"
        + struct.pack("<H", 0x5000)
        + struct.pack(">HBBBBH", 14, sequence, 0, port_address & 0xFF, port_address >> 8, 512)
        + data
    )


def dmx_sender(port: int) -> Callable[[float], Awaitable[int]]:
    async def load(seconds: float) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent, seq = 0, 0
        try:
            next_at = time.monotonic()
            end = next_at + seconds
            while (next_at := next_at + 1 / DMX_HZ) < end:
                seq = seq % 255 + 1
                level = bytes([seq]) * 512
                for u in range(1, DMX_UNIVERSES + 1):
                    sock.sendto(artdmx(u, seq, level), ("127.0.0.1", port))
                sent += DMX_UNIVERSES
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            sock.close()
        return sent

    return load


async def bench_dmx() -> None:
    port = _port()
    venue = dmx_venue(port)
    sender = dmx_sender(port)
    async with simulator(venue) as pid:
        ours, count = await measure(pid, sender)
    args = ["-m", "benchmarks.bench_simulators", "reference-udp", str(port)]
    async with process(args, None) as pid:
        await asyncio.sleep(0.5)  # bound
        ref, _ = await measure(pid, sender)
    report("dmx", len(venue["devices"]), ours, ref, f"{count / SECONDS:.0f} ArtDmx frames/s")


def serve_reference_udp(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    while True:
        sock.recv(1024)


# --- OSC loudspeaker matrices -----------------------------------------------------------------


def osc_venue(ports: Sequence[int]) -> dict[str, Any]:
    return {
        "venue": {"id": "bench"},
        "nodes": [{"id": "stage"}],
        "devices": [
            {
                "id": f"dsp-{i}",
                "profile": "dsp_matrix",
                "poll_hz": OSC_HZ,
                "transport": {"kind": "osc", "host": "127.0.0.1", "port": p},
                "simulate": {"model": "dsp_matrix"},
            }
            for i, p in enumerate(ports)
        ],
    }


def osc_query(address: str) -> bytes:
    """An OSC message without arguments (a query, docs/interfaces/osc.md)."""
    raw = address.encode() + b"\x00"
    return raw + b"\x00" * (-len(raw) % 4) + b",\x00\x00\x00"


def osc_points() -> list[str]:
    from simulators.osc_matrix import CHANNELS

    ins = [f"/in/{c}/{p}" for c in range(1, CHANNELS + 1) for p in ("gain", "mute")]
    outs = [f"/out/{c}/{p}" for c in range(1, CHANNELS + 1) for p in ("gain", "mute")]
    return [*ins, *outs, "/preset"]


def osc_poller(ports: Sequence[int]) -> Callable[[float], Awaitable[int]]:
    """Every point of every matrix queried at OSC_HZ; returns the replies received."""
    queries = [osc_query(a) for a in osc_points()]

    class Counter(asyncio.DatagramProtocol):
        replies = 0

        def datagram_received(self, data: bytes, addr: Any) -> None:
            Counter.replies += 1

    async def load(seconds: float) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            Counter, local_addr=("127.0.0.1", 0), family=socket.AF_INET
        )
        Counter.replies = 0
        try:
            next_at = time.monotonic()
            end = next_at + seconds
            while (next_at := next_at + 1 / OSC_HZ) < end:
                for p in ports:
                    for q in queries:
                        transport.sendto(q, ("127.0.0.1", p))
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.sleep(0.1)  # the last replies
        finally:
            transport.close()
        return Counter.replies

    return load


async def bench_osc() -> None:
    ports = [_port() for _ in range(OSC_DEVICES)]
    poller = osc_poller(ports)
    async with simulator(osc_venue(ports)) as pid:
        ours, count = await measure(pid, poller)
    args = ["-m", "benchmarks.bench_simulators", "reference-echo", *map(str, ports)]
    async with process(args, None) as pid:
        await asyncio.sleep(0.5)  # bound
        ref, _ = await measure(pid, poller)
    report("osc", OSC_DEVICES, ours, ref, f"{count / SECONDS:.0f} queries answered/s")


def serve_reference_echo(ports: Sequence[int]) -> None:
    async def main() -> None:
        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: Any = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                self.transport.sendto(data, addr)

        loop = asyncio.get_running_loop()
        for p in ports:
            await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", p))
        await asyncio.Event().wait()

    asyncio.run(main())


# --- the acoustic room ------------------------------------------------------------------------


ROOM_RATE = 48_000
ROOM_BLOCK = 256
ROOM_IR_S = 2.0


def bench_room() -> None:
    """The room's realtime work per JACK block: partitioned convolution of every speaker-mic path
    plus the background noise, block by block at 48 kHz (no JACK server needed: the cost is the
    numpy work the process callback does). Reference, same run: the same signal convolved
    offline in one piece (scipy.signal.oaconvolve), the least any method pays for it."""
    import numpy as np
    import scipy.signal

    from simulators.acoustics.convolver import NoiseSource, PartitionedConvolver

    rng = np.random.default_rng(0)
    taps = int(ROOM_IR_S * ROOM_RATE)
    blocks = int(SECONDS * ROOM_RATE / ROOM_BLOCK)
    for n in (1, 2, 4):
        irs = (rng.standard_normal((n, n, taps)) * 0.01).astype(np.float32)
        x = rng.standard_normal((blocks * ROOM_BLOCK, n)).astype(np.float32)
        conv = PartitionedConvolver(n, n, ROOM_BLOCK, taps)
        conv.load(irs)
        noise = NoiseSource(n, ROOM_BLOCK, 1e-4)
        for i in range(20):  # warm-up, and the loaded IR takes over
            conv.process(x[i * ROOM_BLOCK : (i + 1) * ROOM_BLOCK])
        t0 = time.thread_time()
        for i in range(blocks):
            noise.add_to(conv.process(x[i * ROOM_BLOCK : (i + 1) * ROOM_BLOCK]))
        ours = (time.thread_time() - t0) / SECONDS
        t0 = time.thread_time()
        for o in range(n):
            sum(scipy.signal.oaconvolve(x[:, i], irs[o, i]) for i in range(n))
        ref = (time.thread_time() - t0) / SECONDS
        paths = n * n
        print(
            f"   {'room':<10} {n}x{n} paths, {ROOM_IR_S:g} s IRs, block {ROOM_BLOCK}: "
            f"{100 * ours:5.1f} % of a core ({100 * ours / paths:.2f} % per path)"
            f"   offline reference {100 * ref:.1f} %   ratio ours/ref {ours / ref:.2f}"
        )


# --- entry points -----------------------------------------------------------------------------


def large_venue_needs() -> None:
    """What the large venue's devices cost at these rates, in cores (an estimate: the bench's
    rates are not the venue's; the runner's weights in simulators.registry are the other
    estimate, from the venue's own rates)."""
    from drivers.model import read_toml
    from edge.config import expand_venue
    from simulators import registry, runner

    path = REPO / "examples" / "venue-large.toml"
    venue = expand_venue(read_toml(path), path)
    specs, _ = runner.device_specs(venue, str(path))
    families = {
        "machinery": "machinery",
        "gear": "mqtt gear",
        "lighting": "dmx",
        "osc_matrix": "osc",
    }
    counts: dict[str, int] = {}
    for spec in specs:
        name = families.get(registry.MODELS.get(spec.model, ""), "")
        counts[name] = counts.get(name, 0) + 1
    print("   devices per core (this bench's rates):")
    cores = 0.0
    for name, per_core in PER_CORE.items():
        n = counts.get(name, 0)
        cores += n / per_core
        print(
            f"   {name:<10} {per_core:8.0f} per core; the large venue has {n:3d}: "
            f"{100 * n / per_core:5.1f} % of a core"
        )
    estimate = sum(registry.device_weight(s) for s in specs)
    print(
        f"   large venue: {cores:.2f} cores at these rates; the runner's estimate at its own "
        f"rates {estimate:.2f} cores ([simulation] processes = "
        f"{runner.processes_of(venue, None)})"
    )


async def run() -> None:
    await bench_machinery()
    await bench_mqtt()
    await bench_dmx()
    await bench_osc()
    bench_room()
    large_venue_needs()


if __name__ == "__main__":
    kind, *rest = sys.argv[1:] or ["all"]
    if kind == "all":
        asyncio.run(run())
    elif kind == "reference-modbus":
        serve_reference_modbus([int(p) for p in rest])
    elif kind == "reference-mqtt":
        serve_reference_mqtt(int(rest[0]), float(rest[1]))
    elif kind == "reference-udp":
        serve_reference_udp(int(rest[0]))
    elif kind == "reference-echo":
        serve_reference_echo([int(p) for p in rest])
    else:
        sys.exit(f"unknown part {kind!r}")
