"""Ingest workers (edge/ingest.py) in a real service, with a real Mosquitto and store process.

Mapped MQTT sensors and a polled Modbus device (a hoist's status block, served by the
simulators) are read by three worker processes: every reading published reaches the store
exactly once; the live view, health and counters reach the service; a command still goes out
on the service's own connection, and the Modbus device (no commands) refuses one; a worker
killed with ``kill -9`` is said, its devices go offline with the reason, and it is restarted
and reads again; the store process's ingest link refuses anything but a write, and a hostile
frame ends only that link.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import signal
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import httpx
import pytest
from pydantic import ValidationError

from benchmarks.bench_ingest import status_profile_toml
from drivers.model import HealthState, Reading
from edge.config import TelemetryConfig
from edge.ingest import RemoteDevice, assign
from edge.service import Service
from edge.store_process import IngestWriter, StoreProcess, StoreProcessError, receive_frame
from tests.conftest import RealServer, free_port, run_service, simulators, wait_until

pytestmark = pytest.mark.integration

SENSORS = 5
PROFILE = """
id = "ingest_sensor"
vendor = "Test"
model = "Mapped sensor"
device_class = "sensor"
protocol = "mqtt"
[health]
kind = "timeout"
offline_after_failures = 20
[points.t]
unit = "°C"
mqtt = { topic = "state", field = "t" }
[points.n]
dtype = "int"
mqtt = { topic = "state", field = "n" }
[points.level]
dtype = "int"
min = 0
max = 254
access = "rw"
mqtt = { topic = "state", field = "level", set_topic = "set", set_field = "level" }
[commands.dim]
args = { level = { dtype = "int", min = 0, max = 254 } }
writes = [{ point = "level", arg = "level" }]
"""


def venue_text(port: int, modbus: int, workers: int = 3) -> str:
    text = (
        'version = 1\nprofile_dirs = ["profiles"]\n[venue]\nid = "test"\n[[nodes]]\nid = "stage"\n'
        '[api]\nhost = "127.0.0.1"\nport = 0\n[auth]\nenabled = false\n'
        f'[mqtt]\nmode = "external"\nhost = "127.0.0.1"\nport = {port}\n'
        '[telemetry]\nstore = "telemetry.sqlite3"\nwriter = "process"\n'
        f"ingest_workers = {workers}\ningest_latest_hz = 10\n"
    )
    for i in range(SENSORS):
        text += (
            f'[[devices]]\nid = "s-{i}"\nprofile = "ingest_sensor"\npoll_hz = 10\n'
            f'transport = {{ kind = "mqtt", base = "test/s-{i}" }}\n'
        )
    text += (
        '[[devices]]\nid = "mb-0"\nprofile = "hoist_status"\npoll_hz = 10\n'
        f'transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {modbus}, unit = 1 }}\n'
    )
    return text


SIM_VENUE = """
version = 1
[venue]
id = "sim"
[[devices]]
id = "mb-0"
profile = "hoist"
transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {port}, unit = 1 }}
simulate = {{ model = "hoist", start_position_mm = 1234 }}
"""


@contextlib.asynccontextmanager
async def ingest_service(tmp_path: Path, port: int) -> AsyncIterator[Service]:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "ingest_sensor.toml").write_text(PROFILE)
    (tmp_path / "profiles" / "hoist_status.toml").write_text(status_profile_toml())
    modbus = free_port()
    sims = tmp_path / "sims.toml"
    sims.write_text(SIM_VENUE.format(port=modbus))
    venue = tmp_path / "venue.toml"
    venue.write_text(venue_text(port, modbus))
    async with simulators(sims), run_service(venue) as svc:
        yield svc


class Publisher:
    """Each sensor's state at 10 Hz, QoS 1, ``n`` counting up per sensor from 0."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = [0] * SENSORS
        self.paused = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="ingest-test-pub") as c:
            while True:
                if not self.paused.is_set():
                    for i in range(SENSORS):
                        n = self.sent[i]
                        doc = {"t": 20.0 + i + n / 1000, "n": n, "level": 100}
                        await c.publish(f"test/s-{i}/state", json.dumps(doc), qos=1)
                        self.sent[i] = n + 1
                await asyncio.sleep(0.1)


async def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    async def check() -> bool:
        return predicate()

    await wait_until(check, timeout_s, what)


async def stored_ns(svc: Service, device: str) -> list[int]:
    rows = await svc.store.history(device, "n", limit=100_000)
    return sorted(int(r.value) for r in rows)  # type: ignore[arg-type]


async def test_workers_read_store_feed_command_and_survive_a_kill(
    tmp_path: Path, mosquitto: RealServer
) -> None:
    pub = Publisher(mosquitto.port)
    async with contextlib.AsyncExitStack() as stack:
        svc = await stack.enter_async_context(ingest_service(tmp_path, mosquitto.port))
        task = asyncio.create_task(pub.run())
        stack.callback(task.cancel)
        ingest = svc.ingest
        assert ingest is not None and isinstance(svc.store, StoreProcess)
        # The shares: MQTT and Modbus apart, then by points (3 a sensor).
        assert [w.devices for w in ingest.workers] == [
            ["s-0", "s-2", "s-4"],
            ["s-1", "s-3"],
            ["mb-0"],
        ]
        for dev in ("mb-0", *(f"s-{i}" for i in range(SENSORS))):
            assert isinstance(svc.drivers[dev], RemoteDevice)
        pids = {w.pid for w in ingest.workers}
        assert os.getpid() not in pids and None not in pids

        def all_online() -> bool:
            devices = ("mb-0", *(f"s-{i}" for i in range(SENSORS)))
            return all(svc.health[d].state is HealthState.ONLINE for d in devices)

        await until(all_online, 15, "every sensor online, judged by its worker")
        # The live view: the newest values, sent by the workers.
        await until(
            lambda: all((f"s-{i}", "n") in svc.live for i in range(SENSORS)), 10, "live values"
        )
        t = svc.live[("s-1", "t")]
        assert isinstance(t, Reading) and 21.0 <= float(t.value or 0) < 22.0
        await until(lambda: ("mb-0", "position") in svc.live, 10, "the hoist's position, polled")
        assert svc.live[("mb-0", "position")].value == pytest.approx(1234, abs=1)
        # Counters from the workers' drivers.
        await until(lambda: svc.drivers["s-0"].stats.requests > 0, 5, "driver counters")

        # A command: a point write on the service's own connection.
        async with (
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="ingest-test-sub") as sub,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.bound_api_port}") as api,
        ):
            await sub.subscribe("test/s-2/set", qos=1)
            r = await api.post("/api/v1/devices/s-2/commands/dim", json={"level": 42})
            assert r.status_code == 200, r.text
            async with asyncio.timeout(5):
                msg = await anext(aiter(sub.messages))
            assert json.loads(msg.payload) == {"level": 42}  # type: ignore[arg-type]
            r = await api.post("/api/v1/devices/mb-0/commands/move_to", json={"target": 1})
            assert r.status_code in (400, 404, 422) and "move_to" in r.text, r.text
            h = (await api.get("/api/v1/health")).json()
            assert h["links"]["ingest-2"]["devices"] == ["mb-0"]
            assert h["links"]["ingest-2"]["state"] == "online"
            m = await api.get("/metrics")
            assert "flytower_ingest_worker_running" in m.text

        # kill -9 the first worker: said, offline with the reason, restarted, reading again.
        victim = ingest.workers[0]
        os.kill(victim.pid or 0, signal.SIGKILL)
        its = victim.devices[0]

        def said_offline() -> bool:
            h = svc.health[its]
            return h.state is HealthState.OFFLINE and "exited (code -9)" in h.reason

        await until(said_offline, 10, f"{its} offline because its worker was killed")
        await until(lambda: victim.starts == 2 and victim.running, 20, "the restart")
        await until(all_online, 15, "every sensor online again")
        before = pub.sent[0]
        await until(
            lambda: svc.live[("s-0", "n")].value >= before, 10, "readings after the restart"
        )
        pub.paused.set()
        await asyncio.sleep(0.5)  # the last messages reach the workers
        sent = list(pub.sent)
        spared = [i for i in range(SENSORS) if f"s-{i}" not in victim.devices]

        async def complete() -> bool:
            got = [await stored_ns(svc, f"s-{i}") for i in spared]
            return got == [list(range(sent[i])) for i in spared]

        # Every reading of the sensors whose worker lived is stored, once.
        await wait_until(complete, 10, "every reading of the spared workers' sensors stored")
        # The killed worker's sensors lost at most what it held unwritten when it died.
        for dev in victim.devices:
            i = int(dev.split("-")[1])
            ns = await stored_ns(svc, dev)
            assert len(ns) == len(set(ns)), f"{dev}: a reading stored twice"
            assert ns[-1] == sent[i] - 1 and len(ns) >= sent[i] - 20, (dev, len(ns), sent[i])


async def test_the_store_process_ingest_link_only_writes(tmp_path: Path) -> None:
    async with StoreProcess(tmp_path / "t.sqlite3") as store:
        w = await IngestWriter.connect(store.ingest_path)
        now = time.time()
        readings = [Reading("d", "p", float(i), time.monotonic(), now) for i in range(100)]
        assert await w.write(readings) == 100
        await w.close()
        # Anything but a write is refused, and that link ends; the store goes on.
        r, wr = await asyncio.open_unix_connection(str(store.ingest_path))
        data = pickle.dumps((1, "prune", (0.0,)))
        wr.write(struct.pack("!I", len(data)) + data)
        call, ok, payload, counters = await receive_frame(r)
        assert (call, ok, counters) == (1, False, None)
        assert "may not call 'prune'" in str(payload)
        assert await r.read() == b""
        # A frame that does not unpickle ends only its link; so does one too long.
        for hostile in (struct.pack("!I", 5) + b"\x80\x05junk", struct.pack("!I", 0xFFFFFFFF)):
            r, wr = await asyncio.open_unix_connection(str(store.ingest_path))
            wr.write(hostile)
            assert await r.read() == b""
        assert await store.count() == 100
        w = await IngestWriter.connect(store.ingest_path)
        assert await w.write(readings[:1]) == 1
        folder = store.ingest_path.parent
    # The store closed: its writer is told so, and the private folder is gone.
    with pytest.raises(StoreProcessError):
        await w.write(readings[:1])
    await w.close()
    assert not folder.exists()


def test_ingest_workers_need_the_store_process_and_no_influx_mirror() -> None:
    with pytest.raises(ValidationError, match='needs writer = "process"'):
        TelemetryConfig(ingest_workers=1)
    influx = {"url": "http://127.0.0.1:1", "org": "o", "bucket": "b", "queue": "q.sqlite3"}
    with pytest.raises(ValidationError, match="cannot be used with"):
        TelemetryConfig(ingest_workers=1, writer="process", influxdb=influx)
    with pytest.raises(ValidationError):
        TelemetryConfig(ingest_workers=-1, writer="process")
    with pytest.raises(ValidationError):
        TelemetryConfig(ingest_workers=1, writer="process", ingest_latest_hz=float("nan"))
    assert TelemetryConfig(ingest_workers=2, writer="process").ingest_latest_hz == 2.0


def test_devices_are_shared_by_points_and_only_telemetry_ones() -> None:
    from drivers.model import Device, MqttTransport, parse_profile

    def dev(i: int, points: int, transport: dict[str, str]) -> Device:
        prof = parse_profile(
            {
                "id": f"p{points}",
                "device_class": "sensor",
                "protocol": "mqtt",
                "points": {f"x{j}": {"mqtt": {"topic": "s"}} for j in range(points)},
            }
        )
        return Device(f"d-{i}", prof, MqttTransport(kind="mqtt", **transport), 10.0)

    devices = [dev(0, 10, {"base": "a"}), dev(1, 50, {"base": "b"}), dev(2, 30, {"node": "n"})]
    devices += [dev(3, 20, {"base": "c"}), dev(4, 25, {"base": "d"})]
    shares = assign(devices, 2)
    assert [[d.id for d in s] for s in shares] == [["d-1"], ["d-0", "d-3", "d-4"]]
    # a worker a device at most
    assert [[d.id for d in s] for s in assign(devices, 8)] == [["d-1"], ["d-4"], ["d-3"], ["d-0"]]

    # Modbus: a TCP device with no commands, not an axis; never RTU nor one with commands.
    from drivers.model import PROFILE_DIR, ModbusRtuTransport, ModbusTcpTransport, load_profile
    from edge.ingest import eligible

    hoist = load_profile(PROFILE_DIR / "hoist.toml")
    status = hoist.model_copy(update={"commands": {}})
    tcp = ModbusTcpTransport(kind="modbus-tcp", host="127.0.0.1", port=502, unit=1)
    rtu = ModbusRtuTransport(kind="modbus-rtu", port="/dev/ttyUSB0", unit=1)
    assert eligible(Device("m", status, tcp, 10.0))
    assert not eligible(Device("m", status, tcp, 10.0), axes={"m"})
    assert not eligible(Device("m", hoist, tcp, 10.0))
    assert not eligible(Device("m", status, rtu, 10.0))

    # MQTT and Modbus apart when there are workers enough; spare workers by points.
    mb = [Device(f"m-{i}", status, tcp, 10.0) for i in range(3)]  # 11+ points each
    mixed = devices + mb
    split = [[d.id for d in s] for s in assign(mixed, 3)]
    assert all(len({x[0] for x in share}) == 1 for share in split), split
    assert sorted(x for share in split for x in share) == sorted(d.id for d in mixed if eligible(d))
    assert len(assign(mixed, 1)) == 1  # one worker: both protocols in it
    assert [[d.id for d in s] for s in assign(mixed, 4, protocols=["modbus"])] == [
        ["m-0"],
        ["m-1"],
        ["m-2"],
    ]
