"""The Flytower service: wires drivers, bus, store, MQTT, OSC, DMX and the API in one loop.

Each device gets the driver its transport names (Modbus TCP/RTU, MQTT on the shared hub, OSC,
audio); DMX fixtures have none (the lighting engine renders them). Commands reach a driver
from REST, OSC (``edge/osc.py``) and MQTT (``…/cmd/{name}``) through the same
``DeviceDriver.command``, so every path refuses the same things with the same reasons.

    drivers ──► readings bus ──► store writer   (BLOCK: never drops; backpressure to pollers)
                              ├─► live view      (LATEST: the present value of every point)
                              ├─► MQTT link      (LATEST: live feed; the store is the record)
                              └─► WebSocket      (LATEST per client: a slow browser never waits
                                                  on the show, nor the show on it)

``Service.run()`` runs until ``stop()`` (or SIGINT/SIGTERM from the CLI), then shuts down in
order: API first (no new commands), then drivers, then the store is drained and closed, then
MQTT says goodbye, then OSC and the DMX ports close (sACN terminates its streams), then the
embedded broker and the simulators stop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from typing import Any

import httpx
import uvicorn

from controller.journal import JournalEvent, JournalHeld, Origin, Result, SourceKind
from controller.lighting import LightingEngine, Patch
from controller.motion.supervisor import Supervisor
from controller.playback import Playback
from drivers.base import DeviceDriver, DeviceUnavailable
from drivers.dmx import ArtNetInput, SacnInput
from drivers.modbus.driver import ModbusDeviceDriver
from drivers.model import (
    AudioTransport,
    Device,
    DmxTransport,
    Health,
    HealthState,
    ModbusRtuTransport,
    ModbusTcpTransport,
    MqttTransport,
    OscTransport,
    Reading,
    Value,
    reading_key,
)
from drivers.mqtt.driver import MqttDeviceDriver
from drivers.mqtt.link import EndOfFeed, MqttNodeLink, until_wall
from drivers.osc import OscServer
from drivers.osc.device import OscDeviceDriver
from edge import acoustics as edge_acoustics
from edge import alarms as edge_alarms
from edge import audio as edge_audio
from edge import dmx as edge_dmx
from edge import influx as edge_influx
from edge import ingest as edge_ingest
from edge import machinery as edge_machinery
from edge import maintenance as edge_maintenance
from edge import mqtt as edge_mqtt
from edge import osc as edge_osc
from edge import realtime
from edge.broker import EmbeddedBroker
from edge.bus import Bus, Closed, Overflow, Subscription
from edge.config import DmxConfig, Venue
from edge.control import ControllerWatch, ControlSeat, SafetyShare, guard_partition
from edge.early_warning import EarlyWarning
from edge.journal import JournalStore, device_command, journal_path
from edge.nodes import NodeDirectory
from edge.store import StoreSettings, TelemetryStore, point_types
from edge.store_process import StoreProcess
from edge.timecode import ServiceTimecode

log = logging.getLogger(__name__)


class SimulatorsFailed(RuntimeError):
    """The venue's simulators could not be started: the service does not run without them."""


# A reading's (device, point): the key of every LATEST feed, called per reading per feed, so a
# C-level getter rather than a Python function (it was 8 % of a saturated loop, bench_ingest).


STORE_RETRY_S = 1.0  # a store that takes no writes is tried again this often
SIMULATORS_READY_S = 120.0  # a large venue is ready in seconds; computing room IRs takes longer
LIVE_FEED_POINTS = 100_000  # a LATEST feed holds one slot per point: room for a large venue


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class Service:
    def __init__(
        self,
        venue: Venue,
        node: str | None = None,
        *,
        api_port: int | None = None,
        mqtt_port: int | None = None,
        osc_ports: tuple[int, int] | None = None,
        simulators: bool = False,
        lighting: bool = True,
    ) -> None:
        self.venue = venue
        cfg = venue.config
        self.node = node or cfg.nodes[0].id
        if self.node not in {n.id for n in cfg.nodes}:
            raise ValueError(f"venue has no node '{self.node}'")
        self.api_host = cfg.api.host
        self.api_port = cfg.api.port if api_port is None else api_port
        self.mqtt_port = cfg.mqtt.port if mqtt_port is None else mqtt_port
        self.osc_ports = osc_ports
        self.osc: OscServer | None = None
        self.dmx: edge_dmx.DmxPorts | None = None
        self.lighting: LightingEngine | None = None
        self.playback: Playback | None = None  # the cue engine (edge/api_playback.py)
        self.soundfield: edge_acoustics.SoundFieldControl | None = None  # [acoustics]
        self._soundfield_task: asyncio.Task[None] | None = None
        # the safety supervisor of the node's machinery axes (edge/machinery.py)
        self.supervisor: Supervisor | None = None
        self.timecode: ServiceTimecode | None = None  # the chased timecode (edge/timecode.py)
        # Only a venue that declares simulated devices has simulators to start.
        self.run_simulators = simulators and any(d.simulate is not None for d in cfg.devices)
        self.run_lighting = lighting  # False: the DMX ports open, nothing renders into them
        me = next(n for n in cfg.nodes if n.id == self.node)
        self.role = me.role
        self.lead_s = me.lead_ms / 1000  # commands to other nodes' devices, sent this far ahead
        # The node's own devices, which it drives, supervises, alarms and publishes ...
        self.own: dict[str, Device] = {d.id: d for d in venue.devices_of(self.node)}
        # ... and, on a controller, every other node's, reached over MQTT (docs/distributed.md)
        self.devices: dict[str, Device] = {**self.own, **self._remote_devices()}
        self.readings: Bus[Reading] = Bus("readings")
        self.live: dict[tuple[str, str], Reading] = {}
        self.health: dict[str, Health] = {}
        self.drivers: dict[str, DeviceDriver] = {}
        store_kind = StoreProcess if cfg.telemetry.writer == "process" else TelemetryStore
        self.store: TelemetryStore | StoreProcess = store_kind(
            venue.store_path,
            StoreSettings.from_config(cfg.telemetry),
            dtypes=point_types(self.devices.values()),
        )
        self.influx: edge_influx.InfluxSink | None = None  # [telemetry.influxdb] mirror
        self.alarms: edge_alarms.AlarmEngine | None = None  # [alarms] (edge/alarms.py)
        # The store while it takes no writes (_store_writer): why, readings held, dropped.
        self.store_failing: str | None = None
        self.store_held = 0
        self.store_dropped = 0
        self.maintenance: edge_maintenance.Maintenance | None = None  # [maintenance]
        self.early_warning: EarlyWarning | None = None  # set by edge_maintenance.for_service
        edge_alarms.check(cfg.alarms, self.own.values())  # a bad rule fails here
        self.journal = JournalStore(journal_path(venue.store_path))
        self.mqtt: MqttNodeLink | None = None
        # telemetry devices read in processes of their own ([telemetry] ingest_workers)
        self.ingest: edge_ingest.IngestWorkers | None = None
        self.nodes = NodeDirectory(self)  # the venue's nodes, as seen from here
        self.control = ControlSeat(self)  # which controller runs the show (edge/control.py)
        self.safety = SafetyShare(self)  # the machinery's safety state across nodes
        self._mqtt_feed: Subscription[Reading] | None = None
        self.started = asyncio.Event()
        self._stop = asyncio.Event()
        self.started_at = time.time()
        self.bound_api_port: int | None = None

    def stop(self) -> None:
        self._stop.set()

    def _remote_devices(self) -> dict[str, Device]:
        """On a controller, every other node's device as an MQTT device of that node: its
        readings, health and commands come over the broker from the node that drives it."""
        if self.role != "controller":
            return {}
        cfg = self.venue.config  # a controller has MQTT: the venue's validation says so
        out = {}
        for n in cfg.nodes:
            if n.id != self.node:
                for d in self.venue.devices_of(n.id):
                    if n.role == "controller" and isinstance(d.transport, DmxTransport):
                        # The other controller's fixtures: rendered here too, into this
                        # node's outputs, so a standby's DMX is the same look (edge/control.py).
                        out[d.id] = d
                        continue
                    out[d.id] = dataclasses.replace(
                        d, transport=MqttTransport(kind="mqtt", node=n.id)
                    )
        return out

    @staticmethod
    def freeze_startup_heap() -> None:
        """Once started: what start-up built lives as long as the service, so it goes out of
        the cyclic collector's sight (``gc.freeze``), and its full collections stay short and
        do not stall the show's loop (bench_ws_fanout: GO -> DMX p99 with 500 consoles;
        bench_ingest: a full collection took ~160 ms, once a second, at 72 000 readings/s)."""
        gc.collect()
        gc.freeze()

    # --- consumers -------------------------------------------------------------------------

    async def _store_writer(self, sub: Subscription[Reading]) -> None:
        """Readings into the store. A write the store refuses (a full disk, an I/O error) is
        held in memory with what follows, in order, and tried again every ``STORE_RETRY_S``:
        the pollers never wait on a store that takes no writes. Beyond ``hold_max_readings``
        the oldest held go, counted. An alarm says so while it lasts."""
        cfg = self.venue.config.telemetry
        held: collections.deque[Reading] = collections.deque()
        try:
            while True:
                if held:  # what came meanwhile joins the queue: the pollers never wait on it
                    held.extend(sub.get_nowait())
                    self._hold_at_most(held, cfg.hold_max_readings)
                    batch = [held.popleft() for _ in range(min(len(held), cfg.batch_max))]
                else:
                    batch = await sub.get_batch(cfg.batch_max)
                try:
                    await self.store.write(batch)
                except Exception as exc:
                    held.extendleft(reversed(batch))
                    self._store_failing(str(exc), held)
                    # Wait, taking what comes meanwhile, so the bus never fills behind us.
                    until = time.monotonic() + STORE_RETRY_S
                    while time.monotonic() < until:
                        held.extend(sub.get_nowait())
                        self._hold_at_most(held, cfg.hold_max_readings)
                        self.store_held = len(held)
                        await asyncio.sleep(0.05)
                        if sub.closed:
                            raise Closed(sub.name) from None
                else:
                    self.store_held = len(held)
                    if self.store_failing is not None and not held:
                        self._store_failing(None, held)
        except Closed:
            if held:  # a last try at the stop; what still cannot be written is said
                try:
                    await self.store.write(list(held))
                except Exception as exc:
                    log.error(
                        "telemetry: %d held reading(s) lost at the stop: the store still "
                        "takes no writes (%s)",
                        len(held),
                        exc,
                    )
                    self.store_dropped += len(held)

    def _journal_state(self, why: str | None, held: int) -> None:
        """The journal's file takes no writes (``why``), or does again (None): the alarm
        ``journal:{node}``."""
        if self.alarms is None:
            return
        if why is None:
            self.alarms.clear("journal", self.node)
        else:
            text = f"journal cannot write ({why}): events held in memory"
            self.alarms.raise_alarm("journal", self.node, None, "major", text, held)

    def _hold_at_most(self, held: collections.deque[Reading], limit: int) -> None:
        over = len(held) - limit
        if over > 0:
            for _ in range(over):
                held.popleft()
            self.store_dropped += over

    def _store_failing(self, why: str | None, held: collections.deque[Reading]) -> None:
        """The store's state for the log, the alarm (``telemetry-store:{node}``) and
        ``/metrics``: ``why`` it takes no writes (None: it does again)."""
        was, self.store_failing, self.store_held = self.store_failing, why, len(held)
        alarms = self.alarms
        if why is None:
            log.warning("telemetry store: writing again; the held readings are stored")
            if alarms is not None:
                alarms.clear("telemetry-store", self.node)
            return
        if was is None:  # once: /metrics has the count held as it grows
            log.error("telemetry store: cannot write (%s): readings held in memory", why)
            if alarms is not None:
                text = f"telemetry store cannot write ({why}): readings held in memory"
                alarms.raise_alarm("telemetry-store", self.node, None, "major", text, len(held))

    async def _live_view(self, sub: Subscription[Reading]) -> None:
        live = self.live
        with contextlib.suppress(Closed):
            while True:  # a batch at a time: no coroutine step per reading
                batch = await sub.get_batch()
                live.update(zip(map(reading_key, batch), batch, strict=True))

    def live_feed(self, name: str) -> Subscription[Reading]:
        """A conflated feed of readings: the newest value of each point, never blocking."""
        return self.readings.subscribe(name, Overflow.LATEST, LIVE_FEED_POINTS, reading_key)

    def links(self) -> dict[str, dict[str, Any]]:
        """Health and counters of the service's own links (not devices): OSC, MQTT, DMX ports,
        ingest workers."""
        out: dict[str, dict[str, Any]] = {}
        if self.osc is not None:
            h = self.osc.health
            out["osc"] = {
                "state": h.state.value,
                "reason": h.reason,
                "udp_port": self.osc.udp_port,
                "tcp_port": self.osc.tcp_port,
                "stats": self.osc.stats_dict(),
            }
        if self.mqtt is not None:
            h = self.mqtt.hub.tracker.health
            out["mqtt"] = {
                "state": h.state.value,
                "reason": h.reason,
                "broker": f"{self.venue.config.mqtt.host}:{self.mqtt_port}",
                "stats": {**asdict(self.mqtt.hub.stats), **self.mqtt.stats.as_dict()},
            }
        if self.dmx is not None:
            out.update(self.dmx.status())
        if self.ingest is not None:
            for w in self.ingest.status():
                out[f"ingest-{w['index']}"] = {
                    "state": "online" if w["running"] else "offline",
                    **w,
                }
        return out

    def _on_health(self, h: Health) -> None:
        self.health[h.device] = h
        if self.alarms is not None:
            self.alarms.on_health(h)
        if self.mqtt is not None:
            self.mqtt.device_health(h)

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.venue.config
        store_sub = self.readings.subscribe(
            "store", Overflow.BLOCK, maxsize=cfg.telemetry.queue_size
        )
        live_sub = self.live_feed("live")
        influx_cfg = cfg.telemetry.influxdb
        # BLOCK, like the store: the sink's queue is on disk, so an InfluxDB outage never
        # pushes back; only a saturated CPU or disk would, and then nothing is lost.
        influx_sub = (
            self.readings.subscribe("influx", Overflow.BLOCK, maxsize=cfg.telemetry.queue_size)
            if influx_cfg is not None
            else None
        )
        async with contextlib.AsyncExitStack() as stack:
            # The API's port first: a port taken fails the start before anything connects.
            api_socket = stack.enter_context(_listen(self.api_host, self.api_port))
            sims = await self._start_simulators() if self.run_simulators else None
            if sims is not None:
                stack.push_async_callback(_stop_process, sims)
            await stack.enter_async_context(self.store)
            if influx_cfg is not None:
                self.influx = await stack.enter_async_context(
                    edge_influx.from_config(
                        influx_cfg,
                        self.venue.resolve(influx_cfg.queue),
                        cfg.venue.id,
                        self.node,
                        edge_influx.device_types(self.own),
                        on_alarm=edge_alarms.on_influx_queue(self),
                    )
                )
            await self._open_journal(stack)
            pruned = await self.store.prune(cfg.telemetry.retention_days * 86400)
            if pruned:
                log.info(
                    "telemetry: %d readings older than %g days removed",
                    pruned,
                    cfg.telemetry.retention_days,
                )
            if cfg.mqtt.mode == "embedded":
                await stack.enter_async_context(EmbeddedBroker(cfg.mqtt.host, self.mqtt_port))
            # An edge node without fixtures leaves the venue's DMX outputs to the nodes that
            # render into them (its frames would be an empty source on every universe).
            fixtures = any(isinstance(d.transport, DmxTransport) for d in self.devices.values())
            if (cfg.dmx.outputs or cfg.dmx.input is not None) and (self.role != "edge" or fixtures):
                self.dmx = await edge_dmx.open_dmx(cfg.dmx, cfg.venue.id, self.node, stack)
                if cfg.dmx.outputs and self.run_lighting:
                    self.lighting = _lighting_engine(self.dmx, cfg.dmx, self.devices.values())
            await self._open_timecode(stack)
            if cfg.osc.enabled:
                udp, tcp = self.osc_ports or (None, None)
                self.osc = await stack.enter_async_context(
                    OscServer(
                        edge_osc.server_config(cfg.osc, udp, tcp),
                        edge_osc.build_router(self),
                    )
                )
            if sims is not None:
                # Drivers start once the simulated devices answer: no connect-refused storm.
                await self._simulators_ready(sims)
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(self._store_writer(store_sub), name="store-writer")
                influx_task = (
                    tg.create_task(self.influx.run(influx_sub), name="influx-sink")
                    if self.influx is not None and influx_sub is not None
                    else None
                )
                tg.create_task(self._live_view(live_sub), name="live-view")
                mqtt_task = self._start_mqtt(tg)
                if cfg.alarms.enabled:  # after the MQTT link (it notifies through it)
                    self.alarms = await stack.enter_async_context(edge_alarms.for_service(self))
                    self.journal.on_state = self._journal_state
                # the other nodes' states (after the alarms: a dead node is one)
                nodes_task = tg.create_task(self.nodes.run(), name="nodes")
                # counters and early warning, before the drivers start (no reading missed)
                await stack.enter_async_context(edge_maintenance.for_service(self))
                supervisor_task = self._start_supervisor(tg)
                playback_feed = self._start_playback(tg)
                if self.playback is not None:  # request ids unique to this run of this node
                    self.playback.chain_prefix = f"{self.node}-{int(self.started_at * 1000)}"
                # a standby's engine tracks, sending nothing, before any command can arrive
                control_task = tg.create_task(self.control.run(), name="control")
                partition_task = tg.create_task(guard_partition(self), name="partition-guard")
                watch_task = tg.create_task(ControllerWatch(self).run(), name="controller-watch")
                safety_task = tg.create_task(self.safety.run(), name="safety-share")
                timecode_task = self._start_timecode(tg)
                lighting_task = (
                    tg.create_task(self.lighting.run(), name="lighting")
                    if self.lighting is not None
                    else None
                )
                # Telemetry devices read in processes of their own, if asked (not the axes).
                stored = [sub for sub in (store_sub, influx_sub) if sub is not None]
                self.ingest = edge_ingest.for_service(self, stored)
                ingest_task = (
                    tg.create_task(self.ingest.run(), name="ingest-workers")
                    if self.ingest is not None
                    else None
                )
                driver_tasks = [
                    task
                    for dev in self.devices.values()
                    if (task := self._start_driver(tg, dev)) is not None
                ]
                if self.ingest is not None:  # the workers read before the service says started
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.ingest.ready.wait(), edge_ingest.START_WAIT_S)
                server = self._api_server()
                api_task = tg.create_task(server.serve([api_socket]), name="api")
                while not server.started and not api_task.done():  # noqa: ASYNC110 (no event to wait on)
                    await asyncio.sleep(0.01)
                self.bound_api_port = _bound_port(server)
                # Last, so that the threads start-up made keep the time-sharing scheduler.
                if cfg.machinery.realtime_priority:
                    stack.callback(realtime.time_sharing)
                log.info(
                    "scheduling: %s",
                    realtime.raise_priority(
                        cfg.machinery.realtime_priority, asyncio.get_running_loop()
                    ),
                )
                self.started.set()
                log.info(
                    "flytower %s/%s: %d device(s), console %s://%s:%s/",
                    cfg.venue.id,
                    self.node,
                    len(self.devices),
                    "https" if cfg.auth.tls_cert else "http",
                    self.api_host,
                    self.bound_api_port,
                )
                self._warn_about_access()
                stop = tg.create_task(self._stop.wait(), name="stop-wait")
                await asyncio.wait([stop, api_task], return_when=asyncio.FIRST_COMPLETED)
                # Orderly shutdown: no new requests, no new readings, then drain.
                server.should_exit = True
                await api_task
                await self._stop_playback(playback_feed)  # before drivers and lighting
                if self.supervisor is not None and supervisor_task is not None:
                    # Moves end; the drives' watchdogs stop any axis still moving once the
                    # cycles (and with them the heartbeats) stop below.
                    await self.supervisor.close()
                    await _finish([supervisor_task], 1.0)
                await self._stop_timecode(timecode_task)
                if self.lighting is not None and lighting_task is not None:
                    self.lighting.stop()  # the last frame holds until the ports close
                    await _finish([lighting_task], 1.0)
                if self.soundfield is not None and self._soundfield_task is not None:
                    self._soundfield_task.cancel()
                    await asyncio.gather(self._soundfield_task, return_exceptions=True)
                    self.soundfield.close()
                    await self.soundfield.drain()
                if self.alarms is not None:
                    self.alarms.stopping = True  # devices going offline now is the shutdown
                for driver in self.drivers.values():
                    driver.stop()
                await _finish(driver_tasks, 3.0)
                if self.ingest is not None and ingest_task is not None:
                    self.ingest.stop()  # their last batches are written before the store closes
                    await _finish([ingest_task], edge_ingest.STOP_TIMEOUT_S + 10)
                store_sub.close()
                await writer
                if influx_sub is not None and influx_task is not None:
                    influx_sub.close()
                    await influx_task  # flushes for at most flush_timeout_s
                live_sub.close()
                if mqtt_task is not None and self._mqtt_feed is not None:
                    self._mqtt_feed.close()  # the link drains, says offline, and returns
                    await _finish([mqtt_task], 3.0)
                stop.cancel()
                nodes_task.cancel()
                control_task.cancel()
                partition_task.cancel()
                watch_task.cancel()
                safety_task.cancel()
        log.info("flytower stopped; %d readings stored this run", self.store.written)

    def _start_supervisor(self, tg: asyncio.TaskGroup) -> asyncio.Task[None] | None:
        """The safety supervisor of the node's axes, before their drivers and the cue engine."""
        self.supervisor = edge_machinery.build(self)
        if self.supervisor is None:
            return None
        tg.create_task(edge_machinery.learn(self), name="machinery-learn")
        return tg.create_task(self.supervisor.run(), name="supervisor")

    def _start_playback(self, tg: asyncio.TaskGroup) -> asyncio.Task[None]:
        from edge import api_configurations, api_playback  # they import the service's types

        feed = api_playback.start(self, tg)
        api_configurations.start(self)  # venue configurations, over the cue engine's ports
        return feed

    async def _stop_playback(self, feed: asyncio.Task[None]) -> None:
        from edge import api_configurations, api_playback

        await api_configurations.stop(self)  # a running switch stops its axes first
        await api_playback.stop(self, feed)

    async def _open_timecode(self, stack: contextlib.AsyncExitStack) -> None:
        """The venue's ``[timecode]`` source: Art-Net timecode on the ``[dmx.input]`` socket
        when there is one, else on a socket of its own; or MTC from a raw MIDI device."""
        cfg = self.venue.config.timecode
        if cfg.source == "none":
            return
        shared = None
        if self.dmx is not None:
            shared = next((p for p in self.dmx.ports if isinstance(p, ArtNetInput)), None)
        self.timecode = ServiceTimecode(cfg, self.journal)
        await self.timecode.open(stack, shared)

    def _start_timecode(self, tg: asyncio.TaskGroup) -> asyncio.Task[None] | None:
        """Chase (and journal) the timecode; ``wait.timecode`` actions wait on it."""
        if self.timecode is None:
            return None
        if self.playback is not None:
            self.playback.timecode = self.timecode.source
        return tg.create_task(self.timecode.run(), name="timecode")

    async def _stop_timecode(self, task: asyncio.Task[None] | None) -> None:
        if self.timecode is not None and task is not None:
            self.timecode.stop()  # the clock events already queued are journalled first
            await _finish([task], 2.0)

    def _start_driver(self, tg: asyncio.TaskGroup, dev: Device) -> asyncio.Task[None] | None:
        driver: DeviceDriver
        if self.ingest is not None and dev.id in self.ingest.devices:
            driver = self.ingest.devices[dev.id]  # read by an ingest worker
        elif self.supervisor is not None and dev.id in self.supervisor.axes:
            driver = edge_machinery.driver_for(self, dev)  # cycled, its statuses supervised
        elif isinstance(dev.transport, ModbusTcpTransport | ModbusRtuTransport):
            driver = ModbusDeviceDriver(dev, self.readings.publish_many, self._on_health)
        elif isinstance(dev.transport, MqttTransport):
            assert self.mqtt is not None  # the venue refuses mqtt devices with mqtt off
            driver = MqttDeviceDriver(
                dev,
                self.mqtt.hub,
                self.venue.config.venue.id,
                self.readings.publish_many,
                self._on_health,
            )
        elif isinstance(dev.transport, OscTransport):
            driver = OscDeviceDriver(dev, self.readings.publish_many, self._on_health)
        elif isinstance(dev.transport, AudioTransport):
            ac = self.venue.config.acoustics
            if ac is not None and ac.device == dev.id:
                # The venue's sound field runs in this stream, under the file player.
                sf = self.soundfield = edge_acoustics.SoundFieldControl(ac)
                audio = edge_audio.AudioDevice(
                    dev, self.readings.publish_many, self._on_health, sf.factory(), sf
                )
                sf.send = audio.driver.control
                sf.driver, sf.journal = audio.driver, self.journal
                sf.var_dir = self.venue.resolve("var/acoustics")  # measurements
                if ac.occupancy is not None:  # the headcount, from the live view
                    dev_id, point = ac.occupancy.point.split("/", 1)
                    sf.headcount = lambda: self.live.get((dev_id, point))
                    if ac.occupancy.fault_point is not None:
                        f_dev, f_point = ac.occupancy.fault_point.split("/", 1)
                        sf.counter_fault = lambda: self.live.get((f_dev, f_point))
                self._soundfield_task = tg.create_task(
                    sf.run(lambda: audio.driver.streaming), name="soundfield"
                )
            else:
                audio = edge_audio.AudioDevice(dev, self.readings.publish_many, self._on_health)
            driver = audio
        else:
            # DMX fixtures have no driver: the lighting engine renders them into universes.
            reason = "rendered by the lighting engine into its universe, not polled"
            self.health[dev.id] = Health(dev.id, HealthState.UNKNOWN, reason)
            return None
        self.drivers[dev.id] = driver
        self.health[dev.id] = driver.health
        return tg.create_task(driver.run(), name=f"driver:{dev.id}")

    def _start_mqtt(self, tg: asyncio.TaskGroup) -> asyncio.Task[None] | None:
        cfg = self.venue.config
        if cfg.mqtt.mode == "off":
            return None
        sub = self._mqtt_feed = self.live_feed("mqtt")
        link = self.mqtt = MqttNodeLink(
            cfg.mqtt.host,
            self.mqtt_port,
            cfg.venue.id,
            self.node,
            sorted(self.own),  # a controller publishes and serves its own devices only
            command_handler=self._mqtt_command,
            profiles={d.id: d.profile.id for d in self.own.values()},
            telemetry_rate=cfg.mqtt.telemetry_rate,
            **edge_mqtt.credentials(cfg.mqtt, self.venue),
        )

        own = self.own if len(self.own) < len(self.devices) else None

        async def next_batch() -> list[Reading]:
            try:
                batch = await sub.get_batch()
            except Closed:
                raise EndOfFeed from None
            if own is not None:  # a controller: other nodes publish their devices themselves
                batch = [r for r in batch if r.device in own]
            return batch

        return tg.create_task(link.run(next_batch), name="mqtt-link")

    async def _mqtt_command(self, device: str, name: str, args: Mapping[str, Any]) -> Any:
        driver = self.drivers.get(device)
        if driver is None:
            raise DeviceUnavailable(f"{device} has no driver on this node")
        origin = Origin(SourceKind.MQTT, f"mqtt {device}/cmd/{name}")
        writes = await self.command(driver, name, args, origin)
        return {"writes": [[point, value] for point, value in writes]}

    async def command(
        self,
        driver: DeviceDriver,
        name: str,
        args: Mapping[str, Any],
        origin: Origin,
        *,
        at: float | None = None,
        request_id: str | None = None,
    ) -> list[tuple[str, Value]]:
        """A device command from any front end (REST, OSC, MQTT, a cue's ``device.command``):
        what moves machinery goes through the safety supervisor; the rest to the driver. Both
        are journalled before the caller hears back. ``at`` (epoch s): a device of another
        node runs it then (docs/distributed.md); any other waits for it here. ``request_id``:
        the id a device of another node gets it with (its node runs an id once)."""
        remote = isinstance(driver, MqttDeviceDriver) and driver.remote
        if at is not None and not remote:
            await until_wall(at)
            at = None
        supervised = await edge_machinery.gate(self, driver, name, args, origin)
        if supervised is not None:
            return supervised
        return await device_command(
            self.journal, origin, driver, name, args, at=at,
            request_id=request_id if remote else None,
        )  # fmt: skip

    async def _open_journal(self, stack: contextlib.AsyncExitStack) -> None:
        """The journal opens before any command can arrive and closes after the last one;
        the service's start and stop are journalled by the system."""
        await stack.enter_async_context(self.journal)

        async def system(command: str) -> None:
            now = time.time()
            origin = f"node {self.node} pid {os.getpid()}"
            try:
                await self.journal.append(
                    JournalEvent(SourceKind.SYSTEM, origin, command, Result.OK, now, now)
                )
            except JournalHeld as held:  # a start or stop on a full disk goes on
                log.warning("%s: %s", command, held)

        await system("service.start")
        stack.push_async_callback(system, "service.stop")

    def _warn_about_access(self) -> None:
        auth = self.venue.config.auth
        if not auth.enabled:
            log.warning(
                "access control is OFF ([auth] enabled = false): anyone who reaches port %s "
                "may run the show and move machinery",
                self.bound_api_port,
            )
            return
        from edge.auth import AuthStore

        if not AuthStore(self.venue.resolve(auth.path)).has_users():
            log.warning(
                "access control is on and there is no user yet: create the first admin with "
                "`flytower user add %s NAME --role admin`",
                self.venue.path,
            )

    def _api_server(self) -> uvicorn.Server:
        from edge.api import create_app  # the API imports the service's types

        auth = self.venue.config.auth
        config = uvicorn.Config(
            create_app(self),
            host=self.api_host,
            port=self.api_port,
            ssl_certfile=self.venue.resolve(auth.tls_cert) if auth.tls_cert else None,
            ssl_keyfile=self.venue.resolve(auth.tls_key) if auth.tls_key else None,
            log_level="warning",
            lifespan="off",
            ws_ping_interval=10,
            ws_ping_timeout=10,
            # Per-message deflate compresses every message once per client: with hundreds of
            # consoles it cost more than the rest of the fan-out (benchmarks/bench_ws_fanout).
            ws_per_message_deflate=False,
        )
        return _Uvicorn(config)

    async def _start_simulators(self) -> asyncio.subprocess.Process:
        """The simulated venue runs as its own process, talking to us only over the wire.

        It is ``flytower simulate``, which expands a compact venue the same way we did; its
        own children (``--processes``) die with it as it dies with us."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge.cli",
            "simulate",
            str(self.venue.path),
            preexec_fn=_die_with_parent,
        )
        log.info("simulators started (pid %d)", proc.pid)
        return proc

    async def _simulators_ready(self, proc: asyncio.subprocess.Process) -> None:
        """Wait until ``proc`` serves its control endpoint (the venue's ``[simulation]
        control_port``), which it does once every simulated device serves. The health answer
        names its pid, so another process holding that port is not mistaken for ours."""
        port = self.venue.config.simulation.control_port
        url = f"http://127.0.0.1:{port}/sim/v1/health"
        deadline = time.monotonic() + SIMULATORS_READY_S
        async with httpx.AsyncClient(timeout=2.0) as client:
            while proc.returncode is None and time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    health = (await client.get(url)).json()
                    if isinstance(health, dict) and health.get("pid") == proc.pid:
                        log.info("simulators ready (control http://127.0.0.1:%d/sim/v1)", port)
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.2)
        if proc.returncode is not None:
            raise SimulatorsFailed(
                f"the simulators exited with status {proc.returncode} before they were ready "
                "(their error is logged above)"
            )
        raise SimulatorsFailed(
            f"the simulators did not answer on {url} within {SIMULATORS_READY_S:g} s"
        )


def _lighting_engine(
    dmx: edge_dmx.DmxPorts, cfg: DmxConfig, devices: Iterable[Device]
) -> LightingEngine:
    """The lighting engine over this node's DMX fixtures, sending through the DMX router.

    Every universe an output carries is rendered (empty ones too, so receivers see a live
    source); a console on the DMX inputs is a source at ``[dmx.input] priority`` (docs/lighting.md).
    """
    routed = {u for oc in cfg.outputs for u in oc.universes}
    engine = LightingEngine(
        Patch.from_devices(devices, routed),
        dmx.outputs,
        rate_hz=cfg.rate_hz,
        early_frames=None if cfg.early_frames else False,
    )
    inputs = [p for p in dmx.ports if isinstance(p, SacnInput | ArtNetInput)]
    if inputs and cfg.input is not None:
        engine.add_input("console", inputs, cfg.input.priority)
    return engine


async def _finish(tasks: list[asyncio.Task[None]], grace_s: float) -> None:
    """Wait for tasks that were asked to stop; cancel any that outstay ``grace_s``."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=grace_s)
    for t in late:
        log.warning("%s did not stop within %.1f s; cancelling it", t.get_name(), grace_s)
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _listen(host: str, port: int) -> socket.socket:
    """The API's listening socket, or an OSError that says which address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise OSError(
            f"the API cannot listen on {host}:{port}: {os.strerror(exc.errno or 0)}; "
            "choose another port with [api] port or --port"
        ) from exc


def _bound_port(server: uvicorn.Server) -> int | None:
    for s in getattr(server, "servers", []):
        for sock in s.sockets:
            return int(sock.getsockname()[1])
    return None


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM us when the parent dies, so none are orphaned."""
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setpgrp()  # our SIGTERM on stop reaches it; a terminal's Ctrl-C goes to us only


async def _stop_process(proc: asyncio.subprocess.Process, grace_s: float = 3.0) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def install_signal_handlers(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
