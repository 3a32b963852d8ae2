"""Ingest workers (``[telemetry] ingest_workers = N``): telemetry devices read outside the
service's interpreter.

Why (docs/decisions.md, "Telemetry ingest"): at 80 000 readings/s the service's one event
loop spends most of a core on receiving, mapping and fanning out every sensor reading, and
the axes, cues and API wait for its GIL. Every reading has to reach only the store; the live
view, alarms, the node link and the WebSocket feeds want each point's present value.

So each worker process:

- runs the service's own drivers for its share of the devices: ``MqttDeviceDriver`` on a broker
  connection of its own (client id ``{service's}-ingest-{k}``), ``ModbusDeviceDriver`` on the
  devices' own TCP connections;
- writes **every** reading to the store process over its own link (``IngestWriter``), and a
  batch is acknowledged only once committed, as the service's own writer does;
- sends the service, ``ingest_latest_hz`` times a second, each point's newest reading, every
  change of a device's health, and its drivers' counters.

In the service each such device has a :class:`RemoteDevice`: its health, counters and commands
(an MQTT device's point write goes out on the service's own broker connection, as before; a
Modbus device a worker reads has no commands). The newest
readings go on the readings bus to every consumer except the store (and there is no InfluxDB
mirror with workers: the configuration refuses it), so the live view, alarms, maintenance,
early warning and the node link see a point at most ``ingest_latest_hz`` times a second.

A worker that dies (or is killed) is restarted after a capped back-off; meanwhile its devices
are offline, with the reason. A service that dies closes the link, and the worker stops.
Backpressure: when ``queue_size`` readings wait for the store, the drivers' own queues fill and
then drop, counted, as in the service.

Which devices go to workers (:func:`eligible`): third-party MQTT devices mapped by their
profile (``base=``), and Modbus TCP devices whose profile has no commands and that are not
axes: polled telemetry. A ``node=`` device's health follows another node's birth and will;
axes (cycled and supervised), commanded Modbus devices, RTU buses (one serial port, one owner),
lighting and audio stay in the service's loop. Maintenance counters and early warning see a
worker's device at ``ingest_latest_hz``: a state that lasts less than one period between two
feeds is not counted (docs/telemetry.md, "Ingest workers").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.base import Backoff, HealthSink, StopFlag
from drivers.modbus.driver import ModbusDeviceDriver
from drivers.model import (
    CommandError,
    Device,
    DriverStats,
    Health,
    HealthState,
    ModbusTcpTransport,
    MqttTransport,
    Reading,
    Value,
    reading_key,
)
from drivers.mqtt.driver import MqttDeviceDriver
from drivers.mqtt.hub import BrokerSettings, MqttHub
from edge.bus import Subscription
from edge.store_process import (
    IngestWriter,
    StoreProcess,
    StoreProcessError,
    receive_frame,
    send_frame,
    spawn_linked,
)

if TYPE_CHECKING:
    from edge.service import Service

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15.0  # a worker's last batches and its farewell
START_WAIT_S = 30.0  # the service waits this long for its workers before it says started
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 10.0
STABLE_S = 30.0  # a worker that ran this long is restarted after the shortest back-off
# A reading as the worker sends it (Reading(*row) in the service): tuples pickle cheaply.
_ROW = operator.attrgetter("device", "point", "value", "ts_mono", "ts_wall", "quality")


def eligible(
    device: Device, axes: Collection[str] = (), protocols: Collection[str] = ("mqtt", "modbus")
) -> bool:
    """A device an ingest worker may read: a third-party MQTT device mapped by its profile, or
    a Modbus TCP device with no commands that is not one of the supervised ``axes``, of the
    ``protocols`` asked for."""
    t = device.transport
    if isinstance(t, MqttTransport):
        return "mqtt" in protocols and t.base is not None
    return (
        "modbus" in protocols
        and isinstance(t, ModbusTcpTransport)
        and not device.profile.commands
        and device.id not in axes
    )


def assign(
    devices: Sequence[Device],
    workers: int,
    axes: Collection[str] = (),
    protocols: Collection[str] = ("mqtt", "modbus"),
) -> list[list[Device]]:
    """The eligible ``devices`` shared out over at most ``workers`` workers.

    With workers enough, MQTT and Modbus devices go to separate workers, as many for each as
    its share of the points (at least one): in one event loop a hundred pollers' callbacks
    would make the broker's socket wait its turn behind them. Within a protocol, each device
    (largest first) goes to the worker with the fewest points. Shares keep the venue's order."""
    chosen = [d for d in devices if eligible(d, axes, protocols)]
    groups = [
        [d for d in chosen if isinstance(d.transport, MqttTransport)],
        [d for d in chosen if not isinstance(d.transport, MqttTransport)],
    ]
    groups = [g for g in groups if g]
    if len(groups) > workers:
        groups = [chosen]  # fewer workers than protocols: mixed
    points = [sum(len(d.profile.points) for d in g) for g in groups]
    counts = [1] * len(groups)
    for _ in range(workers - len(groups)):  # each spare worker to the most points per worker
        open_ = [i for i in range(len(groups)) if counts[i] < len(groups[i])]
        if not open_:
            break  # a worker per device already
        counts[max(open_, key=lambda i: points[i] / counts[i])] += 1
    order = {d.id: i for i, d in enumerate(devices)}
    out: list[list[Device]] = []
    for group, n in zip(groups, counts, strict=True):
        shares: list[list[Device]] = [[] for _ in range(n)]
        load = [0] * n
        for dev in sorted(group, key=lambda d: -len(d.profile.points)):
            k = load.index(min(load))
            shares[k].append(dev)
            load[k] += len(dev.profile.points)
        out += [sorted(s, key=lambda d: order[d.id]) for s in shares if s]
    return out


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker process is started with (it is pickled to it)."""

    index: int
    broker: BrokerSettings
    venue: str
    devices: tuple[Device, ...]
    store_sock: str
    batch_max: int
    queue_size: int
    latest_hz: float


# --- the service's side ------------------------------------------------------------------------


class RemoteDevice:
    """The service's driver of a device an ingest worker reads (a ``DeviceDriver``)."""

    def __init__(self, device: Device, worker: int, commander: MqttDeviceDriver | None) -> None:
        self.device = device
        self.worker = worker
        self.stats = DriverStats()
        self.remote: dict[str, Any] = {}  # the worker driver's report()
        self._health = Health(device.id, HealthState.UNKNOWN, f"ingest worker {worker} starting")
        self._commander = commander  # never run: it only publishes point writes
        self._stop = StopFlag()

    @property
    def health(self) -> Health:
        return self._health

    def report(self) -> dict[str, Any]:
        return {**self.stats.as_dict(), **self.remote, "ingest_worker": self.worker}

    async def run(self) -> None:
        await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()

    async def command(self, name: str, args: Mapping[str, Any]) -> list[tuple[str, Value]]:
        if self._commander is None:  # a Modbus device with no commands: refused with the reason
            self.device.profile.resolve_command(name, args)
            raise CommandError(
                f"{self.device.id} is read by an ingest worker and takes no commands"
            )
        return await self._commander.command(name, args)


@dataclass(slots=True)
class WorkerState:
    """One worker as the service sees it (``/metrics``, the links of ``GET /api/v1/status``)."""

    index: int
    devices: list[str]
    pid: int | None = None
    starts: int = 0
    running: bool = False
    reason: str = "not started"
    written: int = 0  # readings the worker's batches committed, this start
    queued: int = 0  # readings waiting in the worker for the store
    published: int = 0  # newest readings it sent the service


class IngestWorkers:
    """The ingest worker processes of a service: start, feed the service, restart, stop."""

    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        commanders: Mapping[str, MqttDeviceDriver | None],
        publish: Callable[[list[Reading]], Awaitable[None]],
        on_health: HealthSink,
    ) -> None:
        self.specs = list(specs)
        self.devices: dict[str, RemoteDevice] = {
            d.id: RemoteDevice(d, s.index, commanders.get(d.id)) for s in specs for d in s.devices
        }
        self.workers = [WorkerState(s.index, [d.id for d in s.devices]) for s in specs]
        self._publish = publish
        self._on_health = on_health
        self._stop = StopFlag()
        self._tried: set[int] = set()
        self.ready = asyncio.Event()  # every worker's first start was tried

    def _tried_start(self, index: int) -> None:
        self._tried.add(index)
        if len(self._tried) == len(self.specs):
            self.ready.set()

    def stop(self) -> None:
        """Stop every worker (its last batches are written first) and return from ``run``."""
        self._stop.set()

    async def run(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="flytower-ingest-"))  # 0700
        try:
            async with asyncio.TaskGroup() as tg:
                for spec in self.specs:
                    tg.create_task(self._supervise(spec, folder), name=f"ingest-{spec.index}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _offline(self, spec: WorkerSpec, reason: str) -> None:
        for dev in spec.devices:
            self._set_health(Health(dev.id, HealthState.OFFLINE, reason))

    def _set_health(self, h: Health) -> None:
        remote = self.devices.get(h.device)
        if remote is None:
            return
        remote._health = h
        self._on_health(h)

    async def _supervise(self, spec: WorkerSpec, folder: Path) -> None:
        state = self.workers[spec.index]
        backoff = Backoff(BACKOFF_START_S, BACKOFF_MAX_S)
        while not self._stop.is_set():
            name = f"flytower-ingest-{spec.index}"
            try:
                proc, reader, writer = await spawn_linked(
                    work, (spec,), folder / f"ingest-{spec.index}.sock", name
                )
            except StoreProcessError as exc:
                self._tried_start(spec.index)
                state.reason = str(exc)
                self._offline(spec, f"ingest worker {spec.index}: {exc}")
                await self._stop.sleep(backoff.next_delay())
                continue
            state.pid, state.running, state.reason = proc.pid, True, "running"
            state.starts += 1
            started = time.monotonic()
            self._tried_start(spec.index)
            log.info(
                "ingest worker %d: process %d, %d device(s)",
                spec.index,
                proc.pid,
                len(spec.devices),
            )
            try:
                served = asyncio.create_task(self._serve(state, reader))
                stop = asyncio.create_task(self._stop.wait())
                await asyncio.wait({served, stop}, return_when=asyncio.FIRST_COMPLETED)
                if stop.done() and not served.done():
                    with contextlib.suppress(ConnectionError, OSError):
                        await send_frame(writer, ("stop",))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(served), STOP_TIMEOUT_S)
                for task in (served, stop):
                    task.cancel()
                await asyncio.gather(served, stop, return_exceptions=True)
                why = served.result() if served.done() and not served.cancelled() else ""
            finally:
                writer.close()
                await asyncio.to_thread(proc.join, 5)
                if proc.is_alive():
                    proc.kill()
                    await asyncio.to_thread(proc.join, 5)
                state.running = False
            if self._stop.is_set():
                state.reason = "stopped"
                self._offline(spec, "stopped")
                return
            why = f"ingest worker {spec.index} exited (code {proc.exitcode}){why}; restarting"
            log.error("%s", why)
            state.reason = why
            self._offline(spec, why)
            if time.monotonic() - started > STABLE_S:
                backoff.reset()  # it ran a while: a crash now is not a crash loop
            await self._stop.sleep(backoff.next_delay())

    async def _serve(self, state: WorkerState, reader: asyncio.StreamReader) -> str:
        """Take the worker's frames until its link closes; what it said of its end, if any."""
        try:
            while True:
                frame = await receive_frame(reader)
                if frame[0] == "feed":
                    _, rows, healths, stats, counters = frame
                    for h in healths:
                        self._set_health(h)
                    for device, (st, report) in stats.items():
                        remote = self.devices.get(device)
                        if remote is not None:
                            remote.stats, remote.remote = st, report
                    state.written, state.queued = counters["written"], counters["queued"]
                    if rows:
                        state.published += len(rows)
                        await self._publish([Reading(*row) for row in rows])
                elif frame[0] == "fatal":
                    return f": {frame[1]}"
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return ""
        except Exception as exc:  # a frame that does not unpickle: the link is not trusted
            log.exception("ingest worker %d: bad frame", state.index)
            return f": bad frame ({exc})"

    def status(self) -> list[dict[str, Any]]:
        return [asdict(w) for w in self.workers]


async def _no_readings(batch: list[Reading]) -> None:
    """The sink of a command-only driver, which is never run."""


def for_service(service: Service, stored: Sequence[Subscription[Reading]]) -> IngestWorkers | None:
    """The service's ingest workers, if ``[telemetry] ingest_workers`` asks for them and it
    has devices they can read; their newest readings go to every subscriber but ``stored``
    (the store's own feed: the workers wrote them already)."""
    cfg = service.venue.config
    if not cfg.telemetry.ingest_workers or service.mqtt is None:
        return None
    store = service.store
    if not isinstance(store, StoreProcess):  # the configuration refuses it
        raise TypeError('ingest workers need [telemetry] writer = "process"')
    axes = service.supervisor.axes if service.supervisor is not None else ()
    shares = assign(
        list(service.own.values()),
        cfg.telemetry.ingest_workers,
        axes,
        cfg.telemetry.ingest_protocols,
    )
    if not shares:
        return None
    hub = service.mqtt.hub
    specs = [
        WorkerSpec(
            k,
            replace(hub.settings, client_id=f"{hub.settings.client_id}-ingest-{k}"),
            cfg.venue.id,
            tuple(share),
            str(store.ingest_path),
            cfg.telemetry.batch_max,
            cfg.telemetry.queue_size,
            cfg.telemetry.ingest_latest_hz,
        )
        for k, share in enumerate(shares)
    ]
    commanders: dict[str, MqttDeviceDriver | None] = {
        d.id: MqttDeviceDriver(d, hub, cfg.venue.id, _no_readings)
        for spec in specs
        for d in spec.devices
        if isinstance(d.transport, MqttTransport)
    }
    skip = frozenset(stored)
    readings = service.readings

    async def publish(batch: list[Reading]) -> None:
        await readings.publish_many(batch, skip)

    return IngestWorkers(specs, commanders, publish, service._on_health)


# --- the worker process ------------------------------------------------------------------------


def work(sock: str, spec: WorkerSpec) -> None:
    """An ingest worker's main (a spawned process): serve until the service says stop or its
    link closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service decides when workers stop
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)-7s ingest-{spec.index} %(name)s: %(message)s",
    )
    raise SystemExit(asyncio.run(_Worker(spec).main(sock)))


class _Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.pending: list[Reading] = []
        self.latest: dict[tuple[str, str], Reading] = {}
        self.healths: list[Health] = []
        self.written = 0
        self.arrived = asyncio.Event()
        self.room = asyncio.Event()
        self.stopping = False

    async def sink(self, batch: list[Reading]) -> None:
        """The drivers' sink: every reading to the store's queue, the newest of each point to
        the service's; waits (the drivers then queue, then drop) while the store is behind."""
        self.pending.extend(batch)
        self.latest.update(zip(map(reading_key, batch), batch, strict=True))
        self.arrived.set()
        while len(self.pending) >= self.spec.queue_size:
            self.room.clear()
            await self.room.wait()

    def on_health(self, h: Health) -> None:
        self.healths.append(h)  # sent with the next feed

    async def write_loop(self, store: IngestWriter) -> None:
        """Batches to the store, one at a time (each awaited: durable, in order) until stopped
        and drained."""
        batch_max = self.spec.batch_max
        while True:
            if not self.pending:
                if self.stopping:
                    return
                self.arrived.clear()
                await self.arrived.wait()
                continue
            if len(self.pending) <= batch_max:
                batch, self.pending = self.pending, []
            else:
                batch = self.pending[:batch_max]
                del self.pending[:batch_max]
            self.room.set()
            await store.write(batch)
            self.written += len(batch)

    async def feed(
        self, link: asyncio.StreamWriter, drivers: Sequence[MqttDeviceDriver | ModbusDeviceDriver]
    ) -> None:
        latest, self.latest = self.latest, {}
        healths, self.healths = self.healths, []
        stats = {
            d.device.id: (d.stats, d.report() if isinstance(d, MqttDeviceDriver) else {})
            for d in drivers
        }
        counters = {"written": self.written, "queued": len(self.pending)}
        rows = list(map(_ROW, latest.values()))
        await send_frame(link, ("feed", rows, healths, stats, counters))

    async def main(self, sock: str) -> int:
        spec = self.spec
        reader, link = await asyncio.open_unix_connection(sock)
        try:
            store = await IngestWriter.connect(spec.store_sock)
        except OSError as exc:
            await send_frame(link, ("fatal", f"cannot reach the store process: {exc}"))
            return 3
        hub = MqttHub(spec.broker, name=f"ingest-{spec.index}")
        drivers: list[MqttDeviceDriver | ModbusDeviceDriver] = [
            MqttDeviceDriver(d, hub, spec.venue, self.sink, self.on_health)
            if isinstance(d.transport, MqttTransport)
            else ModbusDeviceDriver(d, self.sink, self.on_health)
            for d in spec.devices
        ]
        # A broker connection only for a share with MQTT devices.
        mqtt = any(isinstance(d, MqttDeviceDriver) for d in drivers)
        hub_task = asyncio.create_task(hub.run()) if mqtt else None
        driver_tasks = [asyncio.create_task(d.run()) for d in drivers]
        writes = asyncio.create_task(self.write_loop(store))
        told = asyncio.create_task(receive_frame(reader))  # "stop", or the link's end
        period = 1.0 / spec.latest_hz
        code = 0
        try:
            while not told.done():
                await asyncio.wait({told, writes}, timeout=period)
                if writes.done():  # the store is gone: nothing read can be kept
                    await send_frame(link, ("fatal", f"store: {writes.exception()}"))
                    return 3
                await self.feed(link, drivers)
        except (ConnectionError, OSError):
            pass  # the service is gone: stop as told
        finally:
            for d in drivers:
                d.stop()
            await asyncio.gather(*driver_tasks, return_exceptions=True)
            self.stopping = True
            self.arrived.set()
            if not writes.done():
                try:
                    await writes
                except StoreProcessError as exc:
                    log.error("last batches not written: %s", exc)
                    code = 3
            with contextlib.suppress(ConnectionError, OSError):
                await self.feed(link, drivers)  # the last values and the drivers' "stopped"
            hub.stop()
            if hub_task is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(hub_task, 5)
            told.cancel()
            await asyncio.gather(told, return_exceptions=True)  # "stop", or the link's end
            await store.close()
            link.close()
        return code
