"""The MQTT gear family: simulated devices, their generic faults, one clock, the connections.

``MqttFamily(venue)`` takes the venue's ``[[devices]]`` whose ``simulate.model`` is an MQTT
model (``simulators.gear.models``). Native devices are grouped by ``transport.node``: one
``NativeNode`` (one connection, one will) per node. Vendor devices (Shelly) get one
``VendorLink`` each, on their ``transport.base``. One ``Clock`` task steps every device of the
family at ``tick_hz`` and hands each connection the batch of messages due in that tick.

``GearDevice`` is the part every type shares: the publish schedule (``publish_hz`` for a
type's fast points, the documented periods and on-change rules for the rest), the generic
faults (drift, stuck, dropout, malformed) applied on top of the model's values, and command
dispatch to the model with the reply code of mqtt.md §5.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import fields
from typing import Any

from simulators.core import DeviceSpec, FaultError, FaultInfo, SimulationError, check_params
from simulators.gear import wire
from simulators.gear.models import MODELS, Every, FaultDef, Model, Refused, Unavailable
from simulators.gear.node import MqttLink, NativeNode, VendorLink

log = logging.getLogger("simulators.gear")

Scalar = bool | int | float | str
MIN_TICK_HZ, MAX_TICK_HZ = 10.0, 50.0

GENERIC_FAULTS = (
    FaultDef(
        "drift",
        "a reading drifts away from the truth at a steady rate",
        {"rate_per_h": (float, "point unit per hour", 1.0), "point": (str, "", "")},
    ),
    FaultDef(
        "stuck",
        "readings freeze at their present value (one point, or all when point is empty)",
        {"point": (str, "", "")},
    ),
    FaultDef(
        "dropout",
        "the device stops publishing for duration_s (0: until cleared); with drop_connection "
        "its MQTT connection (the whole node's) ends without a goodbye, so the will fires",
        {"duration_s": (float, "s", 0.0), "drop_connection": (bool, "", False)},
    ),
    FaultDef(
        "malformed",
        "a burst of count malformed messages on its topics; kind: mixed, "
        + ", ".join(wire.MALFORMED_KINDS),
        {"count": (int, "", 5), "kind": (str, "", "mixed")},
    ),
)


def _changed(value: Scalar, last: Scalar, deadband: float) -> bool:
    if deadband > 0 and isinstance(value, int | float) and isinstance(last, int | float):
        return abs(value - last) >= deadband
    return value != last or type(value) is not type(last)


class GearDevice:
    """One simulated MQTT device: a model, its schedule, its faults (see module docstring)."""

    def __init__(self, spec: DeviceSpec, model: Model, publish_hz: float, prefix: str) -> None:
        self.id = spec.id
        self.model = model.name
        self.profile = spec.profile or model.name
        self.m = model
        self.publish_hz = publish_hz
        self.prefix = prefix  # "flytower/{venue}/{node}/{device}/" or "{base}/"
        self.link: MqttLink | None = None
        self.published = 0
        self._defs = {f.name: f for f in (*GENERIC_FAULTS, *model.faults)}
        self._faults: dict[str, dict[str, Any]] = {}
        self._since: dict[str, float] = {}
        self._frozen: dict[str, Scalar] = {}
        self._values: dict[str, Scalar] = {}
        self._last: dict[str, tuple[Scalar, float]] = {}
        self._next_fast = 0.0
        self._burst: list[str] = []

    # --- the clock's side ------------------------------------------------------------------

    def tick(self, dt: float, mono: float, wall: float) -> list[tuple[str, bytes]]:
        self.m.step(dt, wall)
        events = self.m.events()
        self._values = self.m.values()
        dropout = self._faults.get("dropout")
        if dropout is not None:
            if mono - self._since["dropout"] < dropout["duration_s"] or not dropout["duration_s"]:
                return []
            self.clear("dropout")
        if self.link is None or not self.link.ready:
            self._last.clear()  # all of it goes out again once (re)connected, after the births
            return []
        values = self._overlay(self._values, mono)
        fast = mono >= self._next_fast
        if fast:
            period = 1.0 / self.publish_hz
            self._next_fast = max(self._next_fast + period, mono + period / 2)
        everything = self.m.wants_report()
        ts = round(wall * 1000)
        out: list[tuple[str, bytes]] = []
        stuck = self._faults.get("stuck")
        if stuck is not None:  # a frozen point sends its frozen value, not its events
            events = [e for e in events if stuck["point"] not in ("", e[0])]
        evented = {point for point, _, _ in events}  # each event goes out: no second copy
        for point, value in values.items():
            if point in evented:
                continue
            rule: Every = self.m.schedule[point]
            last = self._last.get(point)
            if (
                everything
                or last is None
                or (rule.fast and fast)
                or (rule.period_s is not None and mono - last[1] >= rule.period_s)
                or (rule.change is not None and _changed(value, last[0], rule.change))
            ):
                out.append((self.prefix + point, self._encode(value, ts)))
                self._last[point] = (value, mono)
        for point, value, t in events:
            out.append((self.prefix + point, self._encode(value, round(t * 1000))))
            self._last[point] = (value, mono)
        if self._burst:
            out += self._malformed(ts)
        self.published += len(out)
        return out

    def _encode(self, value: Scalar, ts_ms: int) -> bytes:
        return wire.vendor_value(value) if self.m.vendor else wire.encode_point(value, ts_ms)

    def _overlay(self, values: dict[str, Scalar], mono: float) -> dict[str, Scalar]:
        drift, stuck = self._faults.get("drift"), self._faults.get("stuck")
        if drift is None and stuck is None:
            return values
        out = dict(values)
        if drift is not None:
            point = drift["point"] or self.m.primary
            v = out.get(point)
            if isinstance(v, int | float) and not isinstance(v, bool):
                hours = (mono - self._since["drift"]) / 3600.0
                drifted = v + drift["rate_per_h"] * hours
                # an integer point (a count) drifts in whole steps: still an integer
                out[point] = round(drifted) if isinstance(v, int) else round(drifted, 4)
        for point, v in self._frozen.items():
            if point in out:
                out[point] = v
        return out

    def _malformed(self, ts: int) -> list[tuple[str, bytes]]:
        topic = self.prefix + self.m.primary
        out = [
            wire.malformed_vendor(kind, topic) if self.m.vendor else wire.malformed(kind, topic, ts)
            for kind in self._burst
        ]
        self._burst = []
        self._faults.pop("malformed", None)
        return out

    # --- commands ----------------------------------------------------------------------------

    def handle_command(self, name: str, args: Mapping[str, Any]) -> tuple[str, Any]:
        """(reply code, result or error) for a command of the device page (mqtt.md §5)."""
        if "dropout" in self._faults:
            return "unavailable", f"{self.id} does not respond"
        try:
            return "ok", self.m.command(name, args)
        except Refused as exc:
            return "refused", f"{name}: {exc}"
        except Unavailable as exc:
            return "unavailable", f"{name}: {exc}"
        except Exception as exc:
            log.exception("%s: command %s failed", self.id, name)
            return "internal", f"{name}: {exc}"

    def vendor_command(self, topic: str, payload: bytes) -> bool:
        if "dropout" in self._faults:
            return True  # heard, but the device is not there to act
        return self.m.vendor_command(topic, payload)

    # --- SimulatedDevice -------------------------------------------------------------------

    def truth(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in self.m.truth().items()}

    def fault_catalogue(self) -> Sequence[FaultInfo]:
        return [f.info() for f in self._defs.values()]

    def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        definition = self._defs.get(fault)
        if definition is None:
            raise FaultError(f"{self.id}: no fault {fault!r} (known: {', '.join(self._defs)})")
        parsed = definition.parse(self.id, params)
        if fault not in {f.name for f in GENERIC_FAULTS}:
            self.m.inject(fault, parsed)
            return
        point = parsed.get("point")
        if point and point not in self.m.schedule:
            raise FaultError(
                f"{self.id}: {fault}: no point {point!r} (points: {', '.join(self.m.schedule)})"
            )
        if fault == "dropout":
            if parsed["duration_s"] < 0:
                raise FaultError(f"{self.id}: dropout: duration_s must be >= 0")
            if parsed["drop_connection"] and self.link is not None:
                self.link.sever(parsed["duration_s"] or None)
        if fault == "malformed":
            kinds = wire.MALFORMED_KINDS
            if parsed["kind"] not in ("mixed", *kinds) or not 1 <= parsed["count"] <= 1000:
                raise FaultError(
                    f"{self.id}: malformed: kind must be mixed or one of {', '.join(kinds)} "
                    "and count 1 to 1000"
                )
            n = parsed["count"]
            mixed = parsed["kind"] == "mixed"
            self._burst = [kinds[i % len(kinds)] if mixed else parsed["kind"] for i in range(n)]
        if fault == "stuck":
            self._frozen = (
                {point: self._values[point]}
                if point and point in self._values
                else dict(self._values)
                if not point
                else {}
            )
        self._faults[fault] = parsed
        self._since[fault] = time.monotonic()

    def clear(self, fault: str | None = None) -> None:
        names = list(self._faults) + list(self.m.active) if fault is None else [fault]
        for name in names:
            if name in self.m.active:
                self.m.clear(name)
            params = self._faults.pop(name, None)
            if name == "stuck":
                self._frozen = {}
            if name == "malformed":
                self._burst = []
            if name == "dropout" and params and params["drop_connection"] and self.link:
                self.link.resume()

    def active_faults(self) -> dict[str, dict[str, Any]]:
        return {**{k: dict(v) for k, v in self._faults.items()},
                **{k: dict(v) for k, v in self.m.active.items()}}  # fmt: skip


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Clock:
    """The one task that steps and publishes every device of the family."""

    def __init__(self, devices: Sequence[GearDevice], tick_hz: float) -> None:
        self.devices = list(devices)
        self.tick_hz = tick_hz
        self.ticks = self.late = 0
        self.tick_s = 0.0  # CPU time spent stepping and encoding (thread time), for sizing
        self.started = time.monotonic()
        self._samples: deque[tuple[float, int]] = deque(maxlen=11)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Clock:
        self._task = asyncio.create_task(self._run(), name="sim-gear-clock")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        period = 1.0 / self.tick_hz
        last = next_at = time.monotonic()
        while True:
            now, cpu = time.monotonic(), time.thread_time()
            self.tick(now - last, now, time.time())
            self.tick_s += time.thread_time() - cpu
            last = now
            next_at += period
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind: count it and start again from now, no burst
                self.late += 1
                next_at, delay = time.monotonic(), 0.0
            await asyncio.sleep(delay)

    def tick(self, dt: float, mono: float, wall: float) -> None:
        batches: dict[MqttLink, list[tuple[str, bytes]]] = {}
        for device in self.devices:
            messages = device.tick(dt, mono, wall)
            if messages and device.link is not None:
                batches.setdefault(device.link, []).extend(messages)
        for link, messages in batches.items():
            link.publish(messages)
        self.ticks += 1
        if not self._samples or mono - self._samples[-1][0] >= 1.0:
            self._samples.append((mono, sum(d.published for d in self.devices)))

    def messages_per_s(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class MqttFamily:
    """Every MQTT gear model of one process (simulators.core.Family)."""

    models = frozenset(MODELS)

    def __init__(self, venue: Mapping[str, Any]) -> None:
        info = venue.get("venue", {})
        self.venue = str(info.get("id", "")) if isinstance(info, dict) else ""
        if not wire.SEGMENT.fullmatch(self.venue):
            raise SimulationError(f"venue.id {self.venue!r} is not a valid MQTT topic level")
        mqtt = venue.get("mqtt", {})
        mqtt = mqtt if isinstance(mqtt, dict) else {}
        self.host = str(mqtt.get("host", "127.0.0.1"))
        self.port = int(mqtt.get("port", 1883))
        self.devices: list[GearDevice] = []
        self._nodes: dict[str, list[GearDevice]] = {}
        self._vendor: dict[str, GearDevice] = {}
        self.nodes: list[NativeNode] = []
        self.vendor_links: list[VendorLink] = []
        self.clock: Clock | None = None

    def add(self, spec: DeviceSpec) -> GearDevice:
        cls = MODELS.get(spec.model)
        if cls is None:
            raise SimulationError(f"{spec.where}.model: {spec.model!r} is not an MQTT model")
        tr = spec.transport
        if tr.get("kind") != "mqtt":
            raise SimulationError(f"{spec.where}: model {spec.model} needs an mqtt transport")
        kinds: dict[str, type] = {f.name: type(f.default) for f in fields(cls.Params)}
        kinds |= {"publish_hz": float, "seed": int}
        params = check_params(spec, kinds)
        hz = float(params.pop("publish_hz", cls.default_hz))
        if not 0 < hz <= MAX_TICK_HZ:  # also NaN: every comparison with it is false
            raise SimulationError(
                f"{spec.where}.publish_hz: {hz!r} is not a rate {spec.id} can publish at: "
                f"messages a second, above 0 and at most {MAX_TICK_HZ:g} "
                "(below 1 is slower than once a second: 0.0333 is once every 30 s)"
            )
        seed = int(params.pop("seed", zlib.crc32(spec.id.encode())))
        model = cls(cls.Params(**params), random.Random(seed), time.time())
        if cls.vendor:
            base = tr.get("base")
            if not isinstance(base, str) or not base or any(c in base for c in "+#\x00"):
                raise SimulationError(f"{spec.where}: model {spec.model} needs transport.base")
            if base in self._vendor:
                raise SimulationError(f"{spec.where}: base {base!r} is used twice")
            device = GearDevice(spec, model, hz, f"{base}/")
            self._vendor[base] = device
        else:
            node = tr.get("node")
            if not isinstance(node, str) or not wire.SEGMENT.fullmatch(node):
                raise SimulationError(f"{spec.where}: model {spec.model} needs transport.node")
            if not wire.SEGMENT.fullmatch(spec.id):
                raise SimulationError(f"{spec.where}: id {spec.id!r} is not a valid topic level")
            prefix = f"{wire.ROOT}/{self.venue}/{node}/{spec.id}/"
            device = GearDevice(spec, model, hz, prefix)
            self._nodes.setdefault(node, []).append(device)
        self.devices.append(device)
        return device

    def hosts(self) -> Sequence[AbstractAsyncContextManager[Any]]:
        links: list[AbstractAsyncContextManager[Any]] = []
        self.nodes = [
            NativeNode(self.host, self.port, self.venue, node, devices)
            for node, devices in self._nodes.items()
        ]
        for n in self.nodes:
            for d in self._nodes[n.node]:
                d.link = n.link
            links.append(n.link)
        self.vendor_links.clear()
        for base, device in self._vendor.items():
            v = VendorLink(
                self.host,
                self.port,
                f"sim-{self.venue}-{device.id}",
                base,
                "online" if device.model == "shelly_3em" else None,
                device.m.command_topics,
                device.vendor_command,
            )
            device.link = v.link
            self.vendor_links.append(v)
            links.append(v.link)
        fastest = max((d.publish_hz for d in self.devices), default=MIN_TICK_HZ)
        self.clock = Clock(self.devices, min(MAX_TICK_HZ, max(MIN_TICK_HZ, fastest)))
        return [*links, self.clock]

    def stats(self) -> dict[str, Any]:
        all_links = [n.link for n in self.nodes] + [v.link for v in self.vendor_links]
        clock = self.clock
        uptime = time.monotonic() - clock.started if clock else 0.0
        return {
            "devices": len(self.devices),
            "connections": len(all_links),
            "connected": sum(link.ready for link in all_links),
            "tick_hz": clock.tick_hz if clock else 0.0,
            "ticks_per_s": round(clock.ticks / uptime, 2) if clock and uptime > 0 else 0.0,
            "late_ticks": clock.late if clock else 0,
            "messages_per_s": round(clock.messages_per_s(), 1) if clock else 0.0,
            "published": sum(link.published for link in all_links),
            "dropped": sum(link.dropped for link in all_links),
            "reconnects": sum(max(0, link.connects - 1) for link in all_links),
            "commands": sum(n.commands for n in self.nodes)
            + sum(v.commands for v in self.vendor_links),
            "malformed_commands": sum(n.malformed for n in self.nodes)
            + sum(v.malformed for v in self.vendor_links),
        }
