"""End-to-end ingest: 8 000 points at 10 Hz from Modbus and MQTT into SQLite via a real Service.

Setup, all on this machine: a real Mosquitto on loopback; hoist drives served by our Modbus
simulators (``python -m simulators VENUE --processes 2``), each polled for its status block
(FC 03, 0+11, one TCP connection per unit) at 10 Hz by the service's ModbusDeviceDriver; the
rest of the 8 000 points from mapped MQTT sensors (``MqttTransport(base=…)``, a generated
profile of 100 points in one JSON object per message, plus ``sent``, the message's send time),
published at 10 Hz by a paho-mqtt publisher in a process of its own. The service is the real
``edge.service.Service`` (drivers -> readings bus -> store writer, MQTT link, API), run in this
process with the [telemetry] batch_max / queue_size bench_store uses for 80 000 readings/s.

Figures, per step of the ramp:
- readings/s **stored**, split by source: rows of the SQLite file (readings + inbox) whose
  timestamp falls in the measured window, counted after the service stops; against the offered
  rate (devices x points x 10 Hz; a Modbus poll's point count is read from the store too);
- publish -> queryable latency p50/p99 (DESIGN.md: p99 <= 500 ms), by probes (two a second per
  source) that poll a raw query of the store (``TelemetryStore.history``, as bench_store) every
  20 ms until a reading made after the probe started is visible: MQTT, now minus the ``sent``
  value (the publisher's clock, same host); Modbus, now minus the poll's timestamp;
- CPU (share of one core) of each process: the service (this process, probes included), the
  simulators, Mosquitto, the publisher.
Reference, same run: the store's share alone — the same 80 000 readings/s published straight
onto a readings bus in this process (bench_store's path, same batch and queue sizes, same probes).
The ratio end-to-end/store-alone of the p99 says what the transports and drivers add to it.

If 80 000/s does not hold (stored < 97 % of offered, or p99 > 500 ms), a short ramp finds the
highest fraction of the load that does. Duration of each step: FLYTOWER_BENCH_SECONDS (default
30), ``--seconds N`` when run as a script (``python -m benchmarks.bench_ingest --seconds 10``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import getpass
import json
import logging
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.bench_simulators import _wait_port

if TYPE_CHECKING:  # imported where used: the publisher process must start fast
    from drivers.model import Reading
    from edge.bus import Subscription
    from edge.store import TelemetryStore
    from edge.store_process import StoreProcess

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SECONDS = 30.0
WARMUP_S = 3.0
POINTS, HZ = 8000, 10.0
MODBUS_DEVICES = 200  # bench_modbus_fleet: 200 x 10 Hz is what one service polls
UNITS_PER_PORT = 50
SIM_PROCESSES = 2
MQTT_POINTS_PER_MESSAGE = 100
BATCH, QUEUE = 20_000, 50_000  # bench_store's [telemetry] batch_max / queue_size for 80 000/s
TARGET_P99_MS = 500.0
HOLDS = 0.97  # stored / offered for a step to count as sustained
RAMP = (1.0, 0.5, 0.25, 0.125, 0.0625)  # halving: a short ramp


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat_cpu_s(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_s(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += _stat_cpu_s(Path(f"/proc/{pid}/stat"))
    return total


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads by name (the loop, the store's SQLite threads)."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            name = names.get(int(task.name), "other")
            name = "event loop" if name == "MainThread" else name.rstrip("_0123456789") or name
            out[name] = out.get(name, 0.0) + _stat_cpu_s(task / "stat")
    return out


def family(pid: int) -> list[int]:
    """A process and its descendants (the simulators run child processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]
    return out


@contextlib.asynccontextmanager
async def child(
    args: Sequence[str], ready_ports: Sequence[int] = (), ready_line: bool = False
) -> AsyncIterator[int]:
    """A child process (its pid), ready once every port in ``ready_ports`` listens and, with
    ``ready_line``, once it has written a line to its stdout."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE if ready_line else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for port in ready_ports:
            await _wait_port(port, proc)
        if ready_line:
            assert proc.stdout is not None
            if not await asyncio.wait_for(proc.stdout.readline(), 60):
                raise RuntimeError(f"process {proc.pid} exited with {await proc.wait()}")
        yield proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def mosquitto(folder: Path) -> AsyncIterator[tuple[int, int]]:
    """A Mosquitto on loopback: (port, pid)."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = _port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
        "persistence false\nmax_queued_messages 100000\n"
    )
    async with child([exe, "-c", str(conf)], [port]) as pid:
        yield port, pid


# --- the venue ---------------------------------------------------------------------------------


def status_profile_toml() -> str:
    """The hoist's status block (addresses below 100) as a plain polled device: no commands,
    so it is not a supervised axis and its driver is the telemetry poller."""
    from drivers.model import PROFILE_DIR, load_profile

    hoist = load_profile(PROFILE_DIR / "hoist.toml")
    lines = [
        'id = "hoist_status"\nvendor = "Bench"\nmodel = "Hoist status block"\n'
        'device_class = "hoist"\nprotocol = "modbus"\n'
        'description = "A hoist drive\'s status block, polled for telemetry"\n'
    ]
    for name, p in hoist.points.items():
        if p.modbus is None or p.modbus.address >= 100:
            continue
        d = p.model_dump(mode="json", exclude_none=True, exclude={"name"})
        lines.append(f"[points.{name}]\n")
        for key, value in d.items():
            lines.append(f"{key} = {_toml(value)}\n")
    return "".join(lines)


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def sensor_profile_toml(points: int) -> str:
    lines = [
        'id = "bench_sensor"\nvendor = "Bench"\nmodel = "Multi-point MQTT sensor"\n'
        'device_class = "sensor"\nprotocol = "mqtt"\n'
        f'description = "{points} points in one JSON object a message, at 10 Hz"\n'
        '[health]\nkind = "timeout"\noffline_after_failures = 10\n'
        '[points.sent]\nunit = "s"\ndescription = "Send time of the message (publisher clock)"\n'
        'mqtt = { topic = "state", field = "sent" }\n'
    ]
    lines += [
        f'[points.p{j:03}]\nmqtt = {{ topic = "state", field = "p{j:03}" }}\n'
        for j in range(points)
    ]
    return "".join(lines)


def sim_venue(ports: Sequence[int], devices: int) -> str:
    lines = ['version = 1\n[venue]\nid = "bench-sim"\n']
    for i in range(devices):
        port, unit = ports[i // UNITS_PER_PORT], i % UNITS_PER_PORT + 1
        lines.append(
            f'[[devices]]\nid = "mb-{i:03}"\nprofile = "hoist"\n'
            f'transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {port}, '
            f"unit = {unit} }}\n"
            f'simulate = {{ model = "hoist", start_position_mm = {1000 + i} }}\n'
        )
    return "".join(lines)


@dataclass(frozen=True)
class Setup:
    """The service's [telemetry] choices under test."""

    writer: str = "process"
    ingest_workers: int = 2  # telemetry devices read outside the service's interpreter
    ingest_protocols: tuple[str, ...] = ("mqtt", "modbus")  # which devices the workers read
    ingest_latest_hz: float = 2.0  # the newest values the workers send the service

    def toml(self) -> str:
        return (
            f'writer = "{self.writer}"\ningest_workers = {self.ingest_workers}\n'
            f"ingest_protocols = {json.dumps(list(self.ingest_protocols))}\n"
            f"ingest_latest_hz = {self.ingest_latest_hz}\n"
        )

    def __str__(self) -> str:
        workers = (
            f"{self.ingest_workers} ingest worker(s) reading {'+'.join(self.ingest_protocols)}, "
            f"newest values at {self.ingest_latest_hz:g} Hz"
            if self.ingest_workers
            else "no ingest worker"
        )
        return f"store writer in a {self.writer}, {workers}"


def service_venue(
    ports: Sequence[int], broker: int, modbus: int, mqtt: int, setup: Setup = Setup()
) -> str:
    lines = [
        'version = 1\nprofile_dirs = ["profiles"]\n[venue]\nid = "bench"\n'
        '[[nodes]]\nid = "edge"\n[api]\nport = 0\n'
        f'[mqtt]\nmode = "external"\nhost = "127.0.0.1"\nport = {broker}\n'
        f'[telemetry]\nstore = "telemetry.sqlite3"\nbatch_max = {BATCH}\nqueue_size = {QUEUE}\n'
        + setup.toml()
    ]
    for i in range(modbus):
        port, unit = ports[i // UNITS_PER_PORT], i % UNITS_PER_PORT + 1
        lines.append(
            f'[[devices]]\nid = "mb-{i:03}"\nprofile = "hoist_status"\npoll_hz = {HZ}\n'
            f'transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {port}, '
            f"unit = {unit} }}\n"
        )
    for i in range(mqtt):
        lines.append(
            f'[[devices]]\nid = "mq-{i:03}"\nprofile = "bench_sensor"\npoll_hz = {HZ}\n'
            f'transport = {{ kind = "mqtt", base = "bench/mq-{i:03}" }}\n'
        )
    return "".join(lines)


# --- the publisher (a process of its own) ------------------------------------------------------


def publish(port: int, devices: int, points: int, seconds: float) -> None:
    """Each device's message at HZ, devices spread over the period, stamped with its send time."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}")
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    print("ready", flush=True)
    body = ",".join(f'"p{j:03}":{(j * 7919) % 1000 / 10}' for j in range(points))
    topics = [f"bench/mq-{i:03}/state" for i in range(devices)]
    period = 1 / HZ
    slots = 20  # 5 ms apart
    start = time.monotonic()
    k = 0
    while (elapsed := time.monotonic() - start) < seconds:
        while k <= int(elapsed / period * slots):
            slot = k % slots
            for i in range(slot, devices, slots):
                client.publish(topics[i], f'{{"sent":{time.time()!r},{body}}}', qos=0)
            k += 1
        time.sleep(max(0.0, (k / slots) * period - (time.monotonic() - start)))
    client.loop_stop()
    client.disconnect()


class GcClock:
    """Collections of the service's interpreter and the time they took, by generation: the
    cyclic collector runs on the loop's thread, so its time is the loop's."""

    def __init__(self) -> None:
        self.runs = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
        self._t = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            g = self.runs[info["generation"]]
            g[0] += 1
            g[1] += time.perf_counter() - self._t

    def start(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self)


# --- probes ------------------------------------------------------------------------------------


async def probe(
    store: TelemetryStore | StoreProcess,
    device: str,
    point: str,
    sent_value: bool,
    stop: asyncio.Event,
) -> list[float]:
    """Two probes a second: from the probe's start, poll a raw query every 20 ms until a reading
    made after it is visible; latency = now - its make time (the ``sent`` value or its ts)."""
    out: list[float] = []
    while not stop.is_set():
        await asyncio.sleep(0.5)
        t0 = time.time()
        while not stop.is_set():
            rows = await store.history(device, point, t0 - 5, None, 5)
            made = [
                float(r.value) if sent_value else r.ts
                for r in rows
                if isinstance(r.value, int | float)
            ]
            fresh = [m for m in made if m >= t0]
            if fresh:
                out.append(time.time() - min(fresh))
                break
            await asyncio.sleep(0.02)
    return out


def pct(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.array(values) * 1000, q)) if values else float("nan")


# --- one step ----------------------------------------------------------------------------------


@dataclass
class Step:
    fraction: float
    modbus_devices: int
    mqtt_devices: int
    seconds: float = 0.0
    stored: dict[str, int] = field(default_factory=dict)
    per_poll: float = 0.0
    probes: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    threads: dict[str, float] = field(default_factory=dict)  # the service's, by thread name
    missed: tuple[int, int] = (0, 0)  # Modbus (missed, cycles) over the whole run
    dropped: int = 0  # MQTT readings the drivers' queues dropped (newest-dropped overflow)
    poll_ms: tuple[float, float] = (float("nan"), float("nan"))  # Modbus poll p50, p99
    gc: dict[int, tuple[int, float]] = field(default_factory=dict)  # generation: (runs, s)

    def offered(self, source: str) -> float:
        if source == "modbus":
            return self.modbus_devices * HZ * self.per_poll
        return self.mqtt_devices * HZ * (MQTT_POINTS_PER_MESSAGE + 1)

    def rate(self, source: str) -> float:
        return self.stored.get(source, 0) / self.seconds if self.seconds else 0.0

    def p99(self) -> float:
        return max((pct(v, 99) for v in self.probes.values() if v), default=float("nan"))

    def holds(self) -> bool:
        """Each source stored >= HOLDS of what it offered, and every probe's p99 in target."""
        kept = all(self.rate(s) >= HOLDS * self.offered(s) for s in ("modbus", "mqtt"))
        return kept and self.p99() <= TARGET_P99_MS


def count_stored(path: Path, t0: float, t1: float) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out: dict[str, int] = {}
        for table in ("readings", "inbox"):
            rows = conn.execute(
                f"SELECT substr(s.device, 1, 3), count(*) FROM {table} t "
                "JOIN series s ON s.id = t.series WHERE t.ts >= ? AND t.ts < ? GROUP BY 1",
                (t0, t1),
            ).fetchall()
            for prefix, n in rows:
                key = {"mb-": "modbus", "mq-": "mqtt"}.get(prefix, prefix)
                out[key] = out.get(key, 0) + int(n)
        return out
    finally:
        conn.close()


def points_per_poll(path: Path) -> float:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT count(*) FROM series WHERE device = 'mb-000'").fetchone()
        return float(row[0])
    finally:
        conn.close()


async def step(
    folder: Path,
    ports: Sequence[int],
    broker: tuple[int, int],
    sims: int,
    fraction: float,
    seconds: float,
    per_poll_guess: float,
    setup: Setup = Setup(),
) -> Step:
    from edge.config import load_venue
    from edge.service import Service

    modbus = max(1, round(MODBUS_DEVICES * fraction))
    mqtt_points = max(0.0, POINTS * fraction - modbus * per_poll_guess)
    mqtt = max(1, round(mqtt_points / (MQTT_POINTS_PER_MESSAGE + 1)))
    st = Step(fraction, modbus, mqtt)
    work = folder / f"step-{fraction:.4f}-{time.monotonic_ns()}"
    (work / "profiles").mkdir(parents=True)
    (work / "profiles" / "hoist_status.toml").write_text(status_profile_toml())
    (work / "profiles" / "bench_sensor.toml").write_text(
        sensor_profile_toml(MQTT_POINTS_PER_MESSAGE)
    )
    (work / "venue.toml").write_text(service_venue(ports, broker[0], modbus, mqtt, setup))
    venue = load_venue(work / "venue.toml")
    total = seconds + WARMUP_S + 1.0
    pub_args = [sys.executable, "-m", "benchmarks.bench_ingest", "publish"]
    pub_args += [str(broker[0]), str(mqtt), str(MQTT_POINTS_PER_MESSAGE), str(total + 5)]
    service = Service(venue)
    task = asyncio.create_task(service.run(), name="service")
    gc_clock = GcClock()
    try:
        await asyncio.wait_for(service.started.wait(), 30)
        service.freeze_startup_heap()  # as ``flytower run`` does
        async with child(pub_args, ready_line=True) as pub:
            await asyncio.sleep(WARMUP_S)  # drivers connected, broker subscriptions made
            procs = {
                "service": [os.getpid()],
                "simulators": family(sims),
                "mosquitto": [broker[1]],
                "publisher": [pub],
                "store": [p] if (p := getattr(service.store, "pid", None)) else [],
                "ingest": [w.pid for w in service.ingest.workers if w.pid]
                if service.ingest is not None
                else [],
            }
            c0 = {k: cpu_s(v) for k, v in procs.items()}
            th0 = thread_cpu()
            stats0 = [d.stats for d in service.drivers.values() if d.device.id.startswith("mb-")]
            missed0 = (sum(x.missed for x in stats0), sum(x.cycles for x in stats0))
            stop = asyncio.Event()
            probers = {
                "modbus": asyncio.create_task(
                    probe(service.store, "mb-000", "position", False, stop)
                ),
                "mqtt": asyncio.create_task(probe(service.store, "mq-000", "sent", True, stop)),
            }
            gc_clock.start()
            t0, m0 = time.time(), time.monotonic()
            w_prev, t_prev = service.store.written, m0
            while (left := seconds - (time.monotonic() - m0)) > 0:
                await asyncio.sleep(min(5.0, left))
                now = time.monotonic()
                written = service.store.written
                print(
                    f"      ... {now - m0:5.1f} s  {(written - w_prev) / (now - t_prev):9,.0f} "
                    "readings/s written",
                    flush=True,
                )
                w_prev, t_prev = written, now
            t1 = time.time()
            gc_clock.stop()
            st.gc = {g: (int(n), float(s)) for g, (n, s) in gc_clock.runs.items()}
            st.seconds = time.monotonic() - m0
            st.cpu = {k: (cpu_s(v) - c0[k]) / st.seconds for k, v in procs.items()}
            st.threads = {k: (v - th0.get(k, 0.0)) / st.seconds for k, v in thread_cpu().items()}
            stop.set()
            st.probes = {k: await t for k, t in probers.items()}
            stats = [d.stats for d in service.drivers.values() if d.device.id.startswith("mb-")]
            st.missed = (
                sum(x.missed for x in stats) - missed0[0],
                sum(x.cycles for x in stats) - missed0[1],
            )
            lat = [x for d in stats for x in d.latencies_s]
            st.poll_ms = (pct(lat, 50), pct(lat, 99))
            st.dropped = sum(
                int(d.report().get("dropped", 0))
                for d in service.drivers.values()
                if d.device.id.startswith("mq-") and hasattr(d, "report")
            )
    finally:
        gc_clock.stop()
        service.stop()
        await asyncio.wait_for(task, 60)
    st.stored = count_stored(venue.store_path, t0, t1)
    st.per_poll = points_per_poll(venue.store_path)
    return st


def print_step(st: Step) -> None:
    print(
        f"   load {st.fraction:4.0%}: {st.modbus_devices} Modbus devices "
        f"({st.per_poll:g} points a poll), {st.mqtt_devices} MQTT sensors "
        f"({MQTT_POINTS_PER_MESSAGE + 1} points a message), {st.seconds:.1f} s"
    )
    for source in ("modbus", "mqtt"):
        v = st.probes.get(source, [])
        print(
            f"      {source:<6}  stored {st.rate(source):9,.0f}/s of {st.offered(source):9,.0f} "
            f"offered   queryable p50 {pct(v, 50):6.1f} ms  p99 {pct(v, 99):6.1f} ms "
            f"({len(v)} probes)"
        )
    total = st.rate("modbus") + st.rate("mqtt")
    print(
        f"      total   stored {total:9,.0f}/s   p99 {st.p99():6.1f} ms (target ≤ "
        f"{TARGET_P99_MS:.0f})   {'holds' if st.holds() else 'does NOT hold'}"
    )
    print(
        "      CPU (share of one core): "
        + ", ".join(f"{k} {v:.2f}" for k, v in st.cpu.items())
        + f"   (machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})"
    )
    busy = sorted(st.threads.items(), key=lambda kv: -kv[1])[:4]
    print("      service threads: " + ", ".join(f"{k} {v:.2f}" for k, v in busy))
    if st.seconds:
        print(
            "      the service's cyclic GC (on the loop): "
            + ", ".join(
                f"gen {g} {n} runs, {s / st.seconds:.1%} of the time "
                f"({s / n * 1000 if n else 0:.0f} ms each)"
                for g, (n, s) in st.gc.items()
            )
        )
    missed, cycles = st.missed
    print(
        f"      Modbus missed cycles {missed:,} of {cycles:,} "
        f"({missed / cycles if cycles else 0:.1%}), poll p50 {st.poll_ms[0]:.1f} ms "
        f"p99 {st.poll_ms[1]:.1f} ms; MQTT readings dropped by drivers "
        f"{st.dropped:,}"
    )


# --- reference: the store's share alone ---------------------------------------------------------


async def reference(folder: Path, seconds: float) -> tuple[float, list[float]]:
    """80 000 readings/s straight onto a readings bus -> writer -> store, same probes."""
    from drivers.model import Reading
    from edge.bus import Bus, Closed, Overflow
    from edge.store import StoreSettings, TelemetryStore

    names = [(f"mb-{i // 10:03}", f"p{i % 10}") for i in range(POINTS)]
    bus: Bus[Reading] = Bus("readings")
    sub = bus.subscribe("store", Overflow.BLOCK, maxsize=QUEUE)

    async def writer(store: TelemetryStore, sub: Subscription[Reading]) -> None:
        with contextlib.suppress(Closed):
            while True:
                await store.write(await sub.get_batch(BATCH))

    tick, per_tick = 0.01, int(POINTS * HZ * 0.01)
    async with TelemetryStore(folder / "reference.sqlite3", StoreSettings()) as store:
        task = asyncio.create_task(writer(store, sub))
        stop = asyncio.Event()
        prober = asyncio.create_task(probe(store, "mb-000", "p0", False, stop))
        m0 = time.monotonic()
        k = 0
        while (elapsed := time.monotonic() - m0) < seconds:
            while k < int(elapsed / tick) + 1:
                now = time.time()
                start = k * per_tick % POINTS
                await bus.publish_many(
                    [Reading(*names[start + j], float(k), 0.0, now) for j in range(per_tick)]
                )
                k += 1
            await asyncio.sleep(max(0.0, k * tick - (time.monotonic() - m0)))
        stop.set()
        probes = await prober
        rate = store.written / (time.monotonic() - m0)
        sub.close()
        await task
    return rate, probes


# --- the bench ---------------------------------------------------------------------------------


def seconds_from_env() -> float:
    return float(os.environ.get("FLYTOWER_BENCH_SECONDS", DEFAULT_SECONDS))


async def run(
    seconds: float | None = None,
    ramp: Sequence[float] = RAMP,
    setup: Setup = Setup(),
) -> None:
    seconds = seconds_from_env() if seconds is None else seconds
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    for name in ("drivers", "edge", "uvicorn", "uvicorn.error", "controller"):
        logging.getLogger(name).setLevel(logging.ERROR)
    per_poll_guess = float(status_profile_toml().count("[points."))
    print(f"   the service: {setup}")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        folder = Path(tmp)
        ref_rate, ref_probes = await reference(folder, min(seconds, 10.0))
        print(
            f"   reference (bus -> store alone, same probes): {ref_rate:,.0f} readings/s, "
            f"queryable p50 {pct(ref_probes, 50):.1f} ms p99 {pct(ref_probes, 99):.1f} ms"
        )
        ports = [_port() for _ in range(-(-MODBUS_DEVICES // UNITS_PER_PORT))]
        (folder / "sim.toml").write_text(sim_venue(ports, MODBUS_DEVICES))
        sim_args = [sys.executable, "-m", "simulators", str(folder / "sim.toml")]
        sim_args += ["--processes", str(SIM_PROCESSES), "--control-port", "0"]
        async with mosquitto(folder) as broker, child(sim_args, ports) as sims:
            best: Step | None = None
            first: Step | None = None
            failed = 0.0
            for fraction in ramp:
                st = await step(
                    folder,
                    ports,
                    broker,
                    sims,
                    fraction,
                    seconds,
                    per_poll_guess,
                    setup,
                )
                print_step(st)
                first = first or st
                if st.holds():
                    best = st
                    break
                failed = fraction
            if best is not None and failed > best.fraction:
                # One step back up, halfway to the load that failed.
                mid = (best.fraction + failed) / 2
                st = await step(
                    folder,
                    ports,
                    broker,
                    sims,
                    mid,
                    seconds,
                    per_poll_guess,
                    setup,
                )
                print_step(st)
                if st.holds():
                    best = st
    assert first is not None
    if best is None:
        print(f"   no step of the ramp held p99 ≤ {TARGET_P99_MS:.0f} ms at ≥ {HOLDS:.0%}")
    else:
        total = best.rate("modbus") + best.rate("mqtt")
        print(
            f"   highest load that holds: {total:,.0f} readings/s stored "
            f"({best.fraction:.0%} of 80 000/s offered), p99 {best.p99():.1f} ms"
        )
        ref_p99 = pct(ref_probes, 99)
        print(
            f"   ratio end-to-end/store-alone: rate {total / ref_rate:.2f}, "
            f"p99 {best.p99() / ref_p99 if ref_p99 else float('nan'):.2f}"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        port, devices, points, secs = sys.argv[2:6]
        publish(int(port), int(devices), int(points), float(secs))
    else:
        parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ingest")
        parser.add_argument("--seconds", type=float, default=None)
        parser.add_argument(
            "--load",
            type=float,
            nargs="+",
            default=RAMP,
            help="fractions of 80 000/s to try, in order, until one holds (default: %(default)s)",
        )
        parser.add_argument(
            "--writer",
            choices=("process", "thread"),
            default="process",
            help="[telemetry] writer of the service: the store in a process of its own "
            "(default) or a thread of the service's",
        )
        parser.add_argument(
            "--ingest-workers",
            type=int,
            default=Setup.ingest_workers,
            help="[telemetry] ingest_workers of the service (default: %(default)s; 0: every "
            "device is read in the service)",
        )
        parser.add_argument(
            "--ingest-protocols",
            nargs="+",
            choices=("mqtt", "modbus"),
            default=Setup.ingest_protocols,
            help="[telemetry] ingest_protocols: which devices the workers read "
            "(default: %(default)s)",
        )
        parser.add_argument(
            "--latest-hz",
            type=float,
            default=Setup.ingest_latest_hz,
            help="[telemetry] ingest_latest_hz (default: %(default)s)",
        )
        args = parser.parse_args()
        if args.ingest_workers and args.writer != "process":
            parser.error("--ingest-workers needs --writer process")
        setup = Setup(
            args.writer, args.ingest_workers, tuple(args.ingest_protocols), args.latest_hz
        )
        asyncio.run(run(args.seconds, args.load, setup))
