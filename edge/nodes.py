"""The venue's nodes as this one sees them (``GET /api/v1/nodes``, docs/distributed.md).

Every node of the venue file is listed with its role. Its state comes from its retained
``$state`` on the broker: the birth (online, its session and devices), its goodbye or the
broker's will (offline, with the reason). A will from an older session than the latest birth
is stale and ignored, as the MQTT device drivers do. A controller also measures each online
node's clock against its own every ``CLOCK_EVERY_S`` (``drivers.mqtt.clock``): the offset and
its error bound are reported, and an offset beyond ``CLOCK_WARN_S`` is logged, since scheduled
actions start on each node's own clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiomqtt

from drivers.mqtt.clock import ClockEstimate, ClockProbe
from drivers.mqtt.schema import SchemaError, decode_node_state, node_state_topic, safety_topic

if TYPE_CHECKING:
    from edge.service import Service

log = logging.getLogger(__name__)

NODE_ALARM = "node-offline"  # the alarm a controller raises for a node that is offline
CLOCK_EVERY_S = 10.0
CLOCK_WARN_S = 0.002  # NTP on a venue LAN keeps well within 1 ms; PTP within µs


@dataclass(slots=True)
class NodeView:
    id: str
    role: str
    self: bool = False
    state: str = "unknown"  # online / offline / unknown (never heard)
    reason: str = ""
    session: int | None = None
    devices: list[str] = field(default_factory=list)
    since: float | None = None  # when this node learned the state (epoch s)
    clock: ClockEstimate | None = None
    clock_error: str = ""
    safety: dict[str, Any] | None = None  # its machinery's, as it publishes it (edge/control.py)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "self": self.self,
            "state": self.state,
            "reason": self.reason,
            "session": self.session,
            "devices": self.devices,
            "since": self.since,
            "clock": self.clock.as_dict() if self.clock is not None else None,
            "clock_error": self.clock_error,
            "safety": self.safety,
        }


class NodeDirectory:
    def __init__(self, service: Service) -> None:
        cfg = service.venue.config
        self.service = service
        self.venue = cfg.venue.id
        self.nodes = {n.id: NodeView(n.id, n.role, self=n.id == service.node) for n in cfg.nodes}
        me = self.nodes[service.node]
        me.state, me.devices, me.since = "online", sorted(service.own), time.time()
        self.malformed = 0
        # called with a node's view when its state changes (the control seat's takeover)
        self.listeners: list[Callable[[NodeView], None]] = []

    def _on_state(self, msg: aiomqtt.Message) -> None:
        node = msg.topic.value.split("/")[2]
        view = self.nodes.get(node)
        if view is None or view.self:
            return  # a node not in the venue file, or our own births
        try:
            st = decode_node_state(msg.payload if isinstance(msg.payload, bytes) else b"")
        except SchemaError:
            self.malformed += 1
            return
        if st.state == "offline" and view.session is not None and st.session != view.session:
            return  # the will of an older session: the node is back already
        view.state, view.session, view.since = st.state, st.session, time.time()
        view.reason = (st.reason or "") if st.state == "offline" else ""
        if st.state == "online":
            view.devices = list(st.devices)
        else:
            view.clock = None
        self._alarm(view)
        for listener in list(self.listeners):
            try:
                listener(view)
            except Exception:
                log.exception("node state listener failed")

    def _on_safety(self, msg: aiomqtt.Message) -> None:
        view = self.nodes.get(msg.topic.value.split("/")[2])
        if view is None or view.self:
            return
        try:
            doc = json.loads(msg.payload if isinstance(msg.payload, bytes) else b"")
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("estop"), bool):
            self.malformed += 1
            return
        view.safety = {
            "estop": doc["estop"],
            "reason": str(doc.get("reason", ""))[:300],
            "enabled": doc.get("enabled") is True,
            "ts": doc.get("ts") if isinstance(doc.get("ts"), int) else None,
        }

    def _alarm(self, view: NodeView) -> None:
        """On a controller, a node that is offline is an alarm (its own engine cannot say
        it): major when the broker published its will, a warning when it said goodbye."""
        engine = self.service.alarms
        if engine is None or self.service.role != "controller":
            return
        if view.state == "online":
            engine.clear(NODE_ALARM, view.id)
            return
        lost = view.reason == "lost"
        severity = "major" if lost else "warning"
        what = "lost (the broker published its will)" if lost else f"offline ({view.reason})"
        n = len(view.devices)
        engine.raise_alarm(
            NODE_ALARM, view.id, None, severity, f"node {view.id} {what}: {n} device(s) unreachable"
        )

    async def run(self) -> None:
        """Follow the nodes' states; as a controller, measure their clocks."""
        link = self.service.mqtt
        if link is None:
            return
        for n in self.nodes.values():
            if not n.self:
                await link.hub.subscribe(node_state_topic(self.venue, n.id), self._on_state)
                await link.hub.subscribe(safety_topic(self.venue, n.id), self._on_safety)
        if self.service.role != "controller":
            return
        probe = ClockProbe(link.hub, self.venue, f"{self.service.node}-clock")
        while True:
            await link.hub.connected.wait()
            for n in list(self.nodes.values()):
                if n.self or n.state != "online":
                    continue
                try:
                    n.clock, n.clock_error = await probe.measure(n.id), ""
                except (TimeoutError, ConnectionError) as exc:
                    n.clock_error = str(exc) or type(exc).__name__
                    continue
                if abs(n.clock.offset_s) - n.clock.error_s > CLOCK_WARN_S:
                    log.warning(
                        "node %s: its clock is %+.1f ms from ours (± %.1f): scheduled actions "
                        "start apart by that much; check NTP/PTP (docs/distributed.md)",
                        n.id,
                        n.clock.offset_s * 1000,
                        n.clock.error_s * 1000,
                    )
            await asyncio.sleep(CLOCK_EVERY_S)

    def status(self) -> list[dict[str, Any]]:
        me = self.nodes[self.service.node]
        me.safety = self.service.safety.state()
        return [n.as_dict() for n in self.nodes.values()]
