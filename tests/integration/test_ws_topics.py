"""WebSocket subscriptions on the running service, against simulated hoists over real Modbus
TCP: each topic's snapshot then RFC 6902 patches (applied here with the jsonpatch library, as a
client would) keep the client's copy equal to the server's state; telemetry narrowed to points;
bad subscriptions refused with the reason; the per-client rate limit, which never holds a stop."""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import websockets

from tests.conftest import free_port, hold_enable, run_service, wait_for_port, write_venue


class Mirror:
    """A client's copy of every subscribed topic, kept by applying the server's patches."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.seq: dict[str, int] = {}
        self.patches: dict[str, int] = {}
        self.other: list[dict[str, Any]] = []

    def take(self, msg: dict[str, Any]) -> None:
        topic = msg["type"]
        if "snapshot" in msg and "seq" in msg:
            self.state[topic] = msg["snapshot"]
        elif "patch" in msg:
            self.state[topic] = jsonpatch.apply_patch(
                copy.deepcopy(self.state[topic]), msg["patch"]
            )
            self.patches[topic] = self.patches.get(topic, 0) + 1
        else:
            self.other.append(msg)
            return
        assert msg["seq"] == self.seq.get(topic, -1) + 1, (topic, msg["seq"])  # no gaps
        self.seq[topic] = msg["seq"]


async def pump(ws: websockets.ClientConnection, mirror: Mirror, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        try:
            mirror.take(json.loads(await asyncio.wait_for(ws.recv(), left)))
        except TimeoutError:
            return


async def test_topics_snapshot_then_patches_mirror_the_service(
    tmp_path: Path, simulator_process: Callable[..., subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    path = write_venue(
        tmp_path,
        [
            {"id": "hoist-1", "port": port, "start": 1000, "watchdog_ms": 1000},
            {"id": "hoist-2", "port": port, "unit": 2, "start": 5000, "watchdog_ms": 1000},
        ],
    )
    path.write_text(
        path.read_text().replace("[telemetry]", "[machinery]\nenable_timeout_s = 2\n\n[telemetry]")
    )
    control = free_port()
    simulator_process(path, control_port=control)
    wait_for_port(control)
    async with run_service(path) as svc:
        base = f"http://127.0.0.1:{svc.bound_api_port}"
        url = base.replace("http", "ws") + "/ws"
        async with (
            httpx.AsyncClient(base_url=base, timeout=5) as api,
            websockets.connect(url) as ws,
            websockets.connect(url) as narrow,
        ):
            # Bad subscriptions: the reason, and the connection stays up.
            for bad, why in (
                ({"type": "subscribe", "topics": ["nope"]}, "unknown topic"),
                ({"type": "subscribe", "topics": ["telemetry"], "points": ["x"]}, "device/point"),
                ({"type": "subscribe", "topics": ["telemetry"], "devices": ["ghost"]}, "no device"),
            ):
                await ws.send(json.dumps(bad))
                while (msg := json.loads(await ws.recv()))["type"] != "error":
                    pass
                assert why in msg["detail"]
            topics = ["devices", "telemetry", "axes", "alarms", "playback", "lighting", "acoustics"]
            await ws.send(json.dumps({"type": "subscribe", "topics": topics}))
            await narrow.send(
                json.dumps(
                    {"type": "subscribe", "topics": ["telemetry"], "points": ["hoist-2/position"]}
                )
            )
            mirror, narrow_mirror = Mirror(), Mirror()
            async with hold_enable(api):
                r = await api.post(
                    "/api/v1/machinery/move", json={"targets": {"hoist-1": 1600}, "speed": 800}
                )
                assert r.status_code == 200, r.text
                await asyncio.gather(pump(ws, mirror, 3.0), pump(narrow, narrow_mirror, 1.0))
            await pump(ws, mirror, 1.0)
            assert set(mirror.state) == set(topics)
            assert mirror.patches.get("telemetry", 0) > 5 and mirror.patches.get("axes", 0) > 5
            # The client's copy is the server's state.
            points = {
                p["name"]: p["value"]
                for p in (await api.get("/api/v1/devices/hoist-1/points")).json()
            }
            live = mirror.state["telemetry"]
            assert abs(live["hoist-1/position"]["v"] - points["position"]) < 1.0
            assert abs(live["hoist-1/position"]["v"] - 1600) < 2.0
            axes = (await api.get("/api/v1/machinery")).json()["axes"]
            mirrored = mirror.state["axes"]["axes"]
            assert mirrored["hoist-1"]["state"] == axes["hoist-1"]["state"]
            assert abs(mirrored["hoist-1"]["position"] - axes["hoist-1"]["position"]) < 1.0
            assert set(mirror.state["devices"]) == {"hoist-1", "hoist-2"}
            assert mirror.state["devices"]["hoist-1"]["health"]["state"] == "online"
            assert mirror.state["lighting"] == {"rendered": False}
            assert mirror.state["acoustics"] == {"configured": False}
            # The narrow subscription saw only its point.
            assert set(narrow_mirror.state["telemetry"]) == {"hoist-2/position"}
            # A new subscription replaces the last: its topics start again from a snapshot.
            await narrow.send(json.dumps({"type": "subscribe", "topics": ["axes"]}))
            again = Mirror()
            while (msg := json.loads(await asyncio.wait_for(narrow.recv(), 5)))["type"] != "axes":
                assert msg["type"] in ("telemetry", "subscribed")
            again.take(msg)
            assert msg["seq"] == 0 and "snapshot" in msg
            await pump(narrow, again, 0.5)
            assert set(again.state) == {"axes"}
            assert not [m for m in again.other if m.get("type") == "telemetry"]

            # The rate limit: a burst of 40, then refusals; a stop always passes.
            for i in range(80):
                await ws.send(json.dumps({"type": "playback", "command": "go", "id": i}))
            await ws.send(json.dumps({"type": "machinery", "command": "stop", "id": "stop"}))
            results: dict[Any, dict[str, Any]] = {}
            while "stop" not in results:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if msg["type"].endswith(".result"):
                    results[msg["id"]] = msg
            limited = [r for r in results.values() if r.get("status") == 429]
            assert 30 <= len(limited) <= 45, len(limited)
            assert "at most 20 a second" in limited[0]["detail"]
            assert results["stop"]["ok"] is True
        # Subscribed from the handshake: no console feeds first.
        async with websockets.connect(url + "?topics=axes,telemetry&points=hoist-1/position") as q:
            first = json.loads(await asyncio.wait_for(q.recv(), 5))
            assert first == {"type": "subscribed", "topics": ["axes", "telemetry"]}
            kinds = set()
            for _ in range(2):
                kinds.add(json.loads(await asyncio.wait_for(q.recv(), 5))["type"])
            assert kinds == {"axes", "telemetry"}
        async with websockets.connect(url + "?topics=axes,bogus") as q:
            first = json.loads(await asyncio.wait_for(q.recv(), 5))
            assert first["type"] == "error" and "unknown topic" in first["detail"]
