"""Three edge nodes, each a real ``flytower run`` process on a real Mosquitto, and a controller
(this test) that measures each node's clock over the broker and has the three run a command at
one shared time.

What is measured and printed: each node's clock offset (and its error bound, half the best
round trip), and over 20 rounds the spread of the three nodes' start times (the ``started``
each node's reply gives, on its own clock, here the same clock) and how late each started.
Asserted: the offsets within their error bound of zero (one machine, one clock); no start
before its time; the median spread within 5 ms (issue 10's target, measured on a quiet machine
by ``benchmarks/bench_node_sync.py``). A command scheduled too
far ahead is refused with the reason, and a hostile clock probe is counted, not answered.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest

from benchmarks.bench_node_sync import LAMP, NODES, births, controller, nodes
from drivers.mqtt.clock import ClockProbe
from drivers.mqtt.driver import Requester
from drivers.mqtt.schema import command_topic, time_topic
from tests.conftest import RealServer, stop_all

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


async def test_three_nodes_start_a_scheduled_command_together(
    tmp_path: Path, mosquitto: RealServer
) -> None:
    with nodes(tmp_path, mosquitto.port) as procs:
        try:
            await births(mosquitto.port)
        except TimeoutError:
            logs = {n: (tmp_path / n / "node.log").read_text()[-2000:] for n in NODES}
            pytest.fail(f"the nodes did not come online: {logs}")
        async with controller(mosquitto.port) as hub:
            probe = ClockProbe(hub, "sync", "ctrl")
            for n in NODES:
                est = await probe.measure(n, samples=16)
                print(f"node {n}: clock offset {est.as_dict()}")
                assert est.samples >= 12
                # One machine, one clock: zero, within the measurement's own bound.
                assert abs(est.offset_s) <= est.error_s + 0.0005, est

            requester = Requester(hub, "sync", "ctrl")
            spreads, late = [], []
            for _ in range(20):
                at = time.time() + 0.25
                replies = await asyncio.gather(
                    *(
                        requester.request(
                            command_topic("sync", n, f"lamp-{n}", "turn_on"), {}, 5.0, at
                        )
                        for n in NODES
                    )
                )
                assert all(r.ok for r in replies), replies
                starts = [r.started_us / 1e6 for r in replies if r.started_us is not None]
                assert len(starts) == 3
                spreads.append(max(starts) - min(starts))
                # ``at`` travels in whole µs: lateness against what the nodes were sent
                late += [s - round(at * 1e6) / 1e6 for s in starts]
                await asyncio.sleep(0.05)
            ms = [x * 1000 for x in spreads]
            print(
                f"start spread of 3 nodes over 20 rounds: median {statistics.median(ms):.2f} ms, "
                f"max {max(ms):.2f} ms; lateness median "
                f"{statistics.median(late) * 1000:.2f} ms, max {max(late) * 1000:.2f} ms"
            )
            assert min(late) >= 0, "a node ran a scheduled command before its time"
            # The figure (issue 10: within 5 ms) is bench_node_sync's, on a quiet machine;
            # here, beside the rest of the suite, most rounds and not a stray one.
            assert statistics.median(ms) <= 5.0 and max(ms) <= 100.0

            # Too far ahead: refused with the reason, not run.
            far = await requester.request(
                command_topic("sync", "a", "lamp-a", "turn_on"), {}, 5.0, time.time() + 3600
            )
            assert not far.ok and far.code == "bad_request" and "ahead" in far.error, far

            # Past its start time (held while the node was cut off): refused, not run late.
            stale = await requester.request(
                command_topic("sync", "a", "lamp-a", "turn_on"), {}, 5.0, time.time() - 5
            )
            assert not stale.ok and stale.code == "expired" and "passed" in stale.error, stale

            # A hostile clock probe is not answered; the node goes on answering good ones.
            await hub.publish(time_topic("sync", "b"), b'{"id":"x","t0":-1}', qos=0)
            await hub.publish(time_topic("sync", "b"), b"\xff\xfe", qos=0)
            assert (await probe.measure("b", samples=4)).samples >= 3
        assert all(p.poll() is None for p in procs), "a node exited"


CONTROLLED = ("a", "b", "ctrl")


SHOW = """
version = 1
[show]
title = "Both lamps at once"
venue = "sync"
[[lists]]
id = "main"
name = "Main"
[[lists.cues]]
number = 1
actions = [
    { kind = "device.command", device = "lamp-a", command = "turn_on" },
    { kind = "device.command", device = "lamp-b", command = "turn_on" },
]
"""


def start_node(folder: Path, node: str, venue: str, api: int) -> subprocess.Popen[bytes]:
    """``flytower run`` for ``node`` in a folder of its own (its stores), the controller on
    the API port ``api``."""
    mine = folder / node
    mine.mkdir()
    (mine / "profiles").symlink_to(folder / "profiles")
    (mine / "venue.toml").write_text(venue)
    (mine / "show.toml").write_text(SHOW)
    args = ["run", str(mine / "venue.toml"), "--node", node, "--no-simulators"]
    args += ["--port", str(api)] if node == "ctrl" else []
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli", *args],
        cwd=REPO,
        stdout=(mine / "node.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


def group_venue(port: int) -> str:
    """Two edge nodes with a lamp each, and a controller that has none of its own."""
    text = (
        'version = 1\nshow = "show.toml"\nprofile_dirs = ["profiles"]\n[venue]\nid = "sync"\n'
        '[[nodes]]\nid = "a"\nrole = "edge"\n[[nodes]]\nid = "b"\nrole = "edge"\n'
        '[[nodes]]\nid = "ctrl"\nrole = "controller"\n'
        '[api]\nhost = "127.0.0.1"\nport = 0\n[auth]\nenabled = false\n'
        f'[mqtt]\nmode = "external"\nhost = "127.0.0.1"\nport = {port}\n'
        '[telemetry]\nstore = "telemetry.sqlite3"\n'
    )
    for n in ("a", "b"):
        text += (
            f'[[devices]]\nid = "lamp-{n}"\nprofile = "sync_lamp"\nnode = "{n}"\n'
            f'transport = {{ kind = "mqtt", base = "sync/lamp-{n}" }}\n'
        )
    return text


async def test_a_controller_reaches_the_edge_nodes_devices(
    tmp_path: Path, mosquitto: RealServer
) -> None:
    import httpx

    from tests.conftest import free_port, wait_until

    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "sync_lamp.toml").write_text(LAMP)
    api = free_port()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for n in CONTROLLED:
            procs[n] = start_node(tmp_path, n, group_venue(mosquitto.port), api)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{api}", timeout=5) as c,
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="sync-watch") as watch,
        ):
            await watch.subscribe("sync/+/set", qos=1)
            await watch.subscribe("flytower/sync/ctrl/#", qos=1)
            for n in ("a", "b"):  # each lamp's state, as the lamp keeps it on the broker
                await watch.publish(f"sync/lamp-{n}/state", b'{"on":false}', qos=1, retain=True)

            async def health() -> dict[str, str]:
                try:
                    r = await c.get("/api/v1/health")
                except httpx.TransportError:
                    return {}
                return dict(r.json()["devices"]) if r.status_code == 200 else {}

            async def both_online() -> bool:
                h = await health()
                return h.get("lamp-a") == "online" and h.get("lamp-b") == "online"

            await wait_until(both_online, 30, "the edge nodes' lamps online at the controller")
            devices = {d["id"] for d in (await c.get("/api/v1/devices")).json()}
            assert devices == {"lamp-a", "lamp-b"}

            async def clocks() -> bool:
                nodes = {n["id"]: n for n in (await c.get("/api/v1/nodes")).json()}
                return all(nodes[n]["clock"] is not None for n in ("a", "b"))

            await wait_until(clocks, 20, "the controller's clock probes of both edge nodes")
            nodes = {n["id"]: n for n in (await c.get("/api/v1/nodes")).json()}
            assert nodes["ctrl"]["self"] and nodes["ctrl"]["role"] == "controller"
            for n in ("a", "b"):
                assert nodes[n]["state"] == "online" and nodes[n]["devices"] == [f"lamp-{n}"]
                assert abs(nodes[n]["clock"]["offset_ms"]) <= nodes[n]["clock"]["error_ms"] + 0.5
            print("nodes, seen from the controller:", json.dumps(list(nodes.values())))

            # A command at the controller runs on the node that drives the lamp.
            r = await c.post("/api/v1/devices/lamp-b/commands/turn_on", json={})
            assert r.status_code == 200, r.text
            async with asyncio.timeout(5):
                async for msg in watch.messages:
                    if msg.topic.value == "sync/lamp-b/set":
                        assert json.loads(msg.payload) == {"on": True}  # type: ignore[arg-type]
                        break
                    # The controller publishes only its own node's state: no device of a or b.
                    assert "lamp-" not in msg.topic.value, msg.topic.value

            # A cue on the controller with a command to each node's lamp: sent ahead with one
            # start time, the two lamps are switched together.
            arrived: dict[str, float] = {}
            r = await c.post("/api/v1/playback/go", json={"list": "main"})
            assert r.status_code == 200, r.text
            async with asyncio.timeout(5):
                async for msg in watch.messages:
                    if msg.topic.value.endswith("/set"):
                        arrived[msg.topic.value] = time.time()
                        if len(arrived) == 2:
                            break
            spread = abs(arrived["sync/lamp-a/set"] - arrived["sync/lamp-b/set"]) * 1000
            print(f"cue on the controller: the two nodes' lamps switched {spread:.2f} ms apart")
            assert spread <= 25.0  # 20 ms lead; the figure is bench_node_sync's

            # kill -9 of an edge node: the broker's will makes its devices offline there.
            procs["a"].kill()

            async def a_lost() -> bool:
                nodes = {n["id"]: n for n in (await c.get("/api/v1/nodes")).json()}
                return nodes["a"]["state"] == "offline" and (await health())["lamp-a"] == "offline"

            await wait_until(a_lost, 10, "node a offline at the controller, with its lamp")
            nodes = {n["id"]: n for n in (await c.get("/api/v1/nodes")).json()}
            assert nodes["a"]["reason"] == "lost" and nodes["b"]["state"] == "online"
            # ... and an alarm at the controller: the dead node cannot raise its own.
            # (b may have one cleared, from an earlier test's retained goodbye of a node "b".)
            alarms = (await c.get("/api/v1/alarms", params={"rule": "node-offline"})).json()
            active = [(a["device"], a["severity"]) for a in alarms["alarms"] if a["active"]]
            assert active == [("a", "major")]
            r = await c.post("/api/v1/devices/lamp-a/commands/turn_on", json={})
            assert r.status_code == 503, r.text  # said, not queued for a dead node
    finally:
        stop_all(procs.values())


def test_a_controller_needs_mqtt(tmp_path: Path) -> None:
    from edge.config import ConfigError, load_venue

    venue = tmp_path / "venue.toml"
    venue.write_text(
        'version = 1\n[venue]\nid = "v"\n[[nodes]]\nid = "a"\nrole = "edge"\n'
        '[[nodes]]\nid = "c"\nrole = "controller"\n[mqtt]\nmode = "off"\n'
    )
    with pytest.raises(ConfigError, match="controller reaches the other nodes over MQTT"):
        load_venue(venue)
    venue.write_text(venue.read_text().replace('role = "controller"', 'role = "boss"'))
    with pytest.raises(ConfigError, match="role"):
        load_venue(venue)
