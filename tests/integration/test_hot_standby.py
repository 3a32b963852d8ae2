"""A hot standby controller: two edge nodes with a lamp each and two controllers, all real
``flytower run`` processes on a real Mosquitto (docs/distributed.md, "Hot standby").

The show: cue 1 switches both lamps on and follows into cue 2, whose commands switch them off
1.5 s later and which follows into cue 3, on again 1.5 s after that. The primary is killed
(``kill -9``) while cue 2 waits for its commands. What must hold:

- the standby takes the seat within 1 s of the death (its journal says how long);
- every lamp's ``set`` messages are exactly on, off, on: no command lost (cue 2 and 3 run on
  the standby), none repeated (the standby sends the tracked commands of cue 1 again at its
  takeover, with the primary's request ids, and the nodes answer them from their cache);
- the standby refused a GO while the primary held the show, with the reason;
- the primary, started again, stays the standby until asked (fail-back is explicit), then takes
  the show back when asked, and the other yields; both journal it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from benchmarks.bench_node_sync import LAMP as SYNC_LAMP
from tests.conftest import RealServer, free_port, stop_all, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VENUE_ID = "hs"
EDGES = ("a", "b")
CONTROLLERS = ("ctl-1", "ctl-2")

LAMP = (
    SYNC_LAMP.replace('id = "sync_lamp"', 'id = "hs_lamp"')
    + '[commands.turn_off]\nwrites = [{ point = "on", value = false }]\n'
)

SHOW = """
version = 1
[show]
title = "On, off, on"
venue = "hs"
[[lists]]
id = "main"
name = "Main"
[[lists.cues]]
number = 1
follow = true
actions = [
    { kind = "device.command", device = "lamp-a", command = "turn_on" },
    { kind = "device.command", device = "lamp-b", command = "turn_on" },
]
[[lists.cues]]
number = 2
follow = true
actions = [
    { kind = "device.command", device = "lamp-a", command = "turn_off", delay_s = 1.5 },
    { kind = "device.command", device = "lamp-b", command = "turn_off", delay_s = 1.5 },
]
[[lists.cues]]
number = 3
actions = [
    { kind = "device.command", device = "lamp-a", command = "turn_on", delay_s = 1.5 },
    { kind = "device.command", device = "lamp-b", command = "turn_on", delay_s = 1.5 },
]
"""


def venue_text(port: int) -> str:
    text = (
        'version = 1\nshow = "show.toml"\nprofile_dirs = ["profiles"]\n'
        f'[venue]\nid = "{VENUE_ID}"\n'
        + "".join(f'[[nodes]]\nid = "{n}"\nrole = "edge"\n' for n in EDGES)
        + "".join(f'[[nodes]]\nid = "{n}"\nrole = "controller"\n' for n in CONTROLLERS)
        + '[api]\nhost = "127.0.0.1"\nport = 0\n[auth]\nenabled = false\n'
        f'[mqtt]\nmode = "external"\nhost = "127.0.0.1"\nport = {port}\n'
        '[telemetry]\nstore = "telemetry.sqlite3"\n'
    )
    for n in EDGES:
        text += (
            f'[[devices]]\nid = "lamp-{n}"\nprofile = "hs_lamp"\nnode = "{n}"\n'
            f'transport = {{ kind = "mqtt", base = "hs/lamp-{n}" }}\n'
        )
    return text


class Venue:
    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.api = {n: free_port() for n in CONTROLLERS}
        (folder / "profiles").mkdir()
        (folder / "profiles" / "hs_lamp.toml").write_text(LAMP)

    def start(self, node: str) -> None:
        mine = self.folder / node
        if not mine.exists():
            mine.mkdir()
            (mine / "profiles").symlink_to(self.folder / "profiles")
            (mine / "venue.toml").write_text(venue_text(self.port))
            (mine / "show.toml").write_text(SHOW)
        args = ["run", str(mine / "venue.toml"), "--node", node, "--no-simulators"]
        args += ["--port", str(self.api[node])] if node in self.api else []
        self.procs[node] = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", *args],
            cwd=REPO,
            stdout=(mine / "node.log").open("ab"),
            stderr=subprocess.STDOUT,
        )

    def start_all(self) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        """Every node; a client of each controller's API."""
        for n in (*EDGES, *CONTROLLERS):
            self.start(n)
        one, two = (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.api[n]}", timeout=5)
            for n in CONTROLLERS
        )
        return one, two

    def logs(self) -> dict[str, Path]:
        """The controllers' log files."""
        return {n: self.folder / n / "node.log" for n in CONTROLLERS}

    def stop(self) -> None:
        stop_all(self.procs.values())


async def control(c: httpx.AsyncClient) -> dict[str, Any]:
    try:
        r = await c.get("/api/v1/control")
    except httpx.TransportError:
        return {}
    return dict(r.json()) if r.status_code == 200 else {}


async def seated(one: httpx.AsyncClient, two: httpx.AsyncClient, logs: dict[str, Path]) -> None:
    """Wait until ctl-1 holds the show and ctl-2 is its standby; fail with the controllers'
    logs (``logs``: each controller's log file) if they do not get there."""

    async def both() -> bool:
        a, b = await control(one), await control(two)
        return a.get("state") == "active" and b.get("state") == "standby"

    try:
        await wait_until(both, 40, "ctl-1 holding the show and ctl-2 its standby")
    except pytest.fail.Exception as e:
        tails = "".join(f"\n--- {n} ---\n{p.read_text()[-3000:]}" for n, p in logs.items())
        pytest.fail(f"{e}{tails}")


async def system_events(c: httpx.AsyncClient, command: str) -> list[dict[str, Any]]:
    events = (await c.get("/api/v1/journal", params={"source": "system"})).json()["events"]
    return [e for e in events if e["command"] == command]


async def test_the_standby_takes_the_show_when_the_primary_dies_mid_cue(
    tmp_path: Path, mosquitto: RealServer
) -> None:
    venue = Venue(tmp_path, mosquitto.port)
    sets: dict[str, list[tuple[float, bool]]] = {f"lamp-{n}": [] for n in EDGES}
    try:
        one, two = venue.start_all()
        async with (
            one,
            two,
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="hs-watch") as watch,
        ):
            await watch.subscribe("hs/+/set", qos=1)
            for n in EDGES:  # each lamp's state, as the lamp keeps it on the broker
                await watch.publish(f"hs/lamp-{n}/state", b'{"on":false}', qos=1, retain=True)

            async def record() -> None:
                async for msg in watch.messages:
                    lamp = msg.topic.value.split("/")[1]
                    sets[lamp].append((time.time(), json.loads(msg.payload)["on"]))  # type: ignore[arg-type]

            recorder = asyncio.create_task(record())

            await seated(one, two, venue.logs())

            async def lamps_online(c: httpx.AsyncClient) -> bool:
                try:
                    h = (await c.get("/api/v1/health")).json()["devices"]
                except (httpx.TransportError, KeyError, ValueError):
                    return False
                return all(h.get(f"lamp-{n}") == "online" for n in EDGES)

            for c in (one, two):
                await wait_until(lambda c=c: lamps_online(c), 30, "the lamps at both controllers")

            # The standby refuses to run the show while the primary holds it.
            r = await two.post("/api/v1/playback/go", json={"list": "main"})
            assert r.status_code == 409 and "standby" in r.json()["detail"], r.text

            r = await one.post("/api/v1/playback/go", json={"list": "main"})
            assert r.status_code == 200, r.text
            gone = 0.0

            async def mirrored() -> bool:
                snap = (await two.get("/api/v1/playback")).json()
                return snap["lists"][0]["current"] is not None

            await wait_until(mirrored, 5, "the standby tracking the GO")
            await asyncio.sleep(0.6)  # cue 2 runs: its commands are 1.5 s after its start
            venue.procs["ctl-1"].kill()  # kill -9, mid-cue
            gone = time.time()

            async def took_over() -> bool:
                return (await control(two)).get("active") is True

            await wait_until(took_over, 5, "ctl-2 taking the show")
            status = await control(two)
            takeover = status["last_takeover"]
            print(f"takeover: {json.dumps(takeover)}; seen by the test {time.time() - gone:.3f} s")
            assert takeover["from"] == "ctl-1" and takeover["after_death_ms"] <= 1000
            assert status["term"] >= 2 and takeover["resent"] >= 2

            async def all_sets() -> bool:
                return all(len(v) >= 3 for v in sets.values())

            await wait_until(all_sets, 10, "on, off, on at both lamps")
            await asyncio.sleep(1.0)  # nothing more arrives
            for lamp, seen in sets.items():
                print(lamp, [(round(t - gone, 3), on) for t, on in seen])
                assert [on for _, on in seen] == [True, False, True], (lamp, seen)
            events = await system_events(two, "control.takeover")
            assert any("ms after the death" in e["reason"] for e in events), events

            # The primary comes back: the show stays with ctl-2 until someone asks.
            venue.start("ctl-1")

            async def back_as_standby() -> bool:
                return (await control(one)).get("state") == "standby"

            await wait_until(back_as_standby, 40, "ctl-1 back, as the standby")
            await asyncio.sleep(0.5)
            assert (await control(two))["active"] is True
            r = await one.post("/api/v1/control/takeover")
            assert r.status_code == 200, r.text
            r = await one.post("/api/v1/control/takeover")
            assert r.status_code == 409, r.text  # it holds the show already

            async def failed_back() -> bool:
                a, b = await control(one), await control(two)
                return a.get("active") is True and b.get("active") is False

            await wait_until(failed_back, 5, "ctl-1 holding the show again, ctl-2 yielded")
            assert await system_events(two, "control.yield")
            assert await system_events(one, "control.failback")
            recorder.cancel()
    finally:
        venue.stop()


async def test_a_broker_restart_mid_show_keeps_one_controller_and_the_show_going(
    tmp_path: Path,
) -> None:
    """The broker is restarted (without persistence: every retained message is gone) while
    a cue waits for its commands. Afterwards one controller holds the show and the other
    tracks it, every node is back at both, and the show goes on: the cue's commands run once
    when they can, and a GO after the restart runs on both lamps once."""
    from tests.conftest import _stop, start_mosquitto

    port = free_port()
    broker = start_mosquitto(tmp_path / "broker", port)
    venue = Venue(tmp_path, port)
    sets: dict[str, list[tuple[float, bool]]] = {f"lamp-{n}": [] for n in EDGES}
    try:
        one, two = venue.start_all()
        async with one, two:
            await seated(one, two, venue.logs())

            async def lamps(c: httpx.AsyncClient) -> bool:
                try:
                    h = (await c.get("/api/v1/health")).json()["devices"]
                except (httpx.TransportError, KeyError, ValueError):
                    return False
                return all(h.get(f"lamp-{n}") == "online" for n in EDGES)

            async def watched() -> None:
                # A watcher that reconnects across the restart, as the lamps themselves would.
                while True:
                    try:
                        async with aiomqtt.Client("127.0.0.1", port, identifier="hs-w2") as w:
                            await w.subscribe("hs/+/set", qos=1)
                            for n in EDGES:
                                await w.publish(
                                    f"hs/lamp-{n}/state", b'{"on":false}', qos=1, retain=True
                                )
                            async for msg in w.messages:
                                lamp = msg.topic.value.split("/")[1]
                                on = json.loads(msg.payload)["on"]  # type: ignore[arg-type]
                                sets[lamp].append((time.time(), on))
                    except aiomqtt.MqttError:
                        await asyncio.sleep(0.2)

            watcher = asyncio.create_task(watched())
            for c in (one, two):
                await wait_until(lambda c=c: lamps(c), 30, "the lamps at both controllers")
            r = await one.post("/api/v1/playback/go", json={"list": "main"})
            assert r.status_code == 200, r.text
            await asyncio.sleep(0.3)
            _stop(broker)  # mid-show: cue 2 waits for its commands
            await asyncio.sleep(2.0)
            broker = start_mosquitto(tmp_path / "broker", port)
            for c in (one, two):
                await wait_until(lambda c=c: lamps(c), 30, "the lamps back at both controllers")
            await asyncio.sleep(4.0)  # cue 3's commands are due 3 s after cue 2's start
            a, b = await control(one), await control(two)
            print("after the restart:", json.dumps(a), json.dumps(b))
            # The wills Mosquitto publishes as it stops are not taken for ctl-1's death.
            assert (a["state"], b["state"], b["last_takeover"]) == ("active", "standby", None)
            holder, standby = one, two
            for lamp, seen in sets.items():
                print(lamp, [on for _, on in seen])
                # Every command of the show ran once at most: on, (off, on once the broker
                # is back, or failed and journalled while it was away).
                assert seen and seen[0][1] is True and len(seen) <= 3, (lamp, seen)
            failed = (await holder.get("/api/v1/journal", params={"source": "wait"})).json()
            print("failed while the broker was away:", [e["reason"] for e in failed["events"]])

            # The show goes on: GO at the holder from the top; both lamps once, tracked.
            before = {k: len(v) for k, v in sets.items()}
            await holder.post("/api/v1/playback/standby", json={"list": "main", "cue": "3"})
            r = await holder.post("/api/v1/playback/go", json={"list": "main"})
            assert r.status_code == 200, r.text

            async def cue3_done() -> bool:
                return all(len(sets[k]) == before[k] + 1 for k in sets)

            await wait_until(cue3_done, 10, "cue 3 on both lamps")
            await asyncio.sleep(0.5)
            assert all(len(sets[k]) == before[k] + 1 for k in sets), sets

            async def tracked() -> bool:
                snap = (await standby.get("/api/v1/playback")).json()
                return (
                    snap["lists"][0]["current"] == {"number": "3", "label": ""}
                    or (snap["lists"][0]["current"] or {}).get("number") == "3"
                )

            await wait_until(tracked, 5, "the standby tracking the GO after the restart")
            watcher.cancel()
    finally:
        venue.stop()
        _stop(broker)


def run_node(venue: Path, node: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    args = ["run", str(venue), "--node", node, "--no-simulators", "--port", str(port)]
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli", *args],
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


class Stage:
    """The stage node's hoist, seen through the stage node's API."""

    def __init__(self, api: httpx.AsyncClient) -> None:
        self.api = api

    async def hoist(self) -> dict[str, Any]:
        try:
            r = await self.api.get("/api/v1/devices/hoist-1/points")
        except httpx.TransportError:
            return {}
        return {p["name"]: p["value"] for p in r.json()} if r.is_success else {}

    async def moving(self) -> bool:
        return bool((await self.hoist()).get("moving"))

    async def move(self, via: httpx.AsyncClient, position: float, speed: float) -> None:
        """A move of the hoist commanded at the controller ``via``; returns once it moves."""
        r = await via.post(
            "/api/v1/devices/hoist-1/commands/move_to",
            json={"position": position, "speed": speed, "acceleration": 1000},
        )
        assert r.status_code == 200, r.text
        await wait_until(self.moving, 5, f"the hoist moving to {position}")


def machinery_venue(port: int, modbus: int) -> str:
    """A stage node with a simulated hoist, and the two controllers."""
    return (
        'version = 1\n[venue]\nid = "hsm"\n'
        '[[nodes]]\nid = "stage"\nrole = "edge"\n'
        + "".join(f'[[nodes]]\nid = "{n}"\nrole = "controller"\n' for n in CONTROLLERS)
        + '[api]\nhost = "127.0.0.1"\nport = 0\n[auth]\nenabled = false\n'
        f'[mqtt]\nmode = "external"\nhost = "127.0.0.1"\nport = {port}\n'
        '[telemetry]\nstore = "telemetry.sqlite3"\n'
        '[[devices]]\nid = "hoist-1"\nprofile = "hoist"\nnode = "stage"\npoll_hz = 20\n'
        f'transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {modbus}, unit = 1, '
        "timeout_s = 0.3 }\n"
        'simulate = { model = "hoist", start_position_mm = 1000, watchdog_ms_default = 200 }\n'
    )


async def test_a_controllers_move_outlives_its_death_only_if_the_standby_takes_over(
    tmp_path: Path, mosquitto: RealServer, simulator_process: Any
) -> None:
    """A move of a stage node's hoist commanded at the primary (the stage's operator holds
    the enable there) goes on when the primary is killed: the standby takes the show within
    the node's controller watchdog (1 s), and the hoist arrives. A move commanded at the
    standby, which is then killed too, is stopped by the stage node once no controller has
    taken the show within that second."""
    from tests.conftest import hold_enable

    modbus = free_port()
    venue_file = tmp_path / "venue.toml"
    venue_file.write_text(machinery_venue(mosquitto.port, modbus))
    simulator_process(venue_file)
    api = {n: free_port() for n in ("stage", *CONTROLLERS)}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for n, port in api.items():
            procs[n] = run_node(venue_file, n, port, tmp_path / f"{n}.log")
        stage, one, two = (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{api[n]}", timeout=5)
            for n in ("stage", *CONTROLLERS)
        )
        async with stage, one, two:
            hoist = Stage(stage).hoist

            await seated(one, two, {n: tmp_path / f"{n}.log" for n in CONTROLLERS})

            async def ready() -> bool:
                h = (await one.get("/api/v1/health")).json()["devices"]
                return h.get("hoist-1") == "online" and (await hoist()).get("position") is not None

            await wait_until(ready, 30, "the hoist online at the stage and at ctl-1")
            async with hold_enable(stage, "stage manager"):
                await Stage(stage).move(one, 6000, 1000)
                procs["ctl-1"].kill()  # mid-move

                async def arrived() -> bool:
                    h = await hoist()
                    return bool(h.get("in_position")) and abs(float(h["position"]) - 6000) <= 1

                await wait_until(arrived, 15, "the hoist at 6000 mm: ctl-2 took over in time")
                assert (await control(two))["state"] == "active"

                async def settled() -> bool:
                    return not (await stage.get("/api/v1/machinery")).json()["moves"]

                await wait_until(settled, 5, "the move done at the stage")

                # Now the last controller dies mid-move: the stage node stops the hoist.
                await Stage(stage).move(two, 1000, 1000)
                procs["ctl-2"].kill()
                killed = time.time()

                async def stopped() -> bool:
                    h = await hoist()
                    return h.get("moving") is False and float(h["position"]) > 1100

                await wait_until(stopped, 10, "the stage node stopping the hoist")
                print(f"hoist stopped {time.time() - killed:.2f} s after the last controller died")
            log = (tmp_path / "stage.log").read_text()
            assert "none took the show" in log, log[-2000:]
    finally:
        stop_all(procs.values())


async def test_a_node_cut_off_stops_its_machinery_and_replays_nothing_stale(
    tmp_path: Path, mosquitto: RealServer, simulator_process: Any
) -> None:
    """The stage node reaches the broker only through a relay, which is cut while the hoist
    moves for the controller (a partition): the stage node stops the hoist at once; the
    controller sees the node lost and refuses its commands at once; a scheduled move sent to
    the node while it is away waits in its session and, delivered at the reconnect 3 s later,
    is refused as stale and moves nothing. After the reconnect the controller sees the node
    and its hoist again."""
    from drivers.mqtt.driver import Requester
    from drivers.mqtt.hub import BrokerSettings, MqttHub
    from drivers.mqtt.schema import command_topic
    from tests.conftest import hold_enable
    from tests.peers.relay import CuttableRelay

    modbus = free_port()
    venue_file = tmp_path / "venue.toml"
    venue_file.write_text(machinery_venue(mosquitto.port, modbus))
    simulator_process(venue_file)
    api = {"stage": free_port(), "ctl-1": free_port()}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    async with CuttableRelay(mosquitto.port) as relay:
        stage_file = tmp_path / "stage.toml"  # the same venue, its broker through the relay
        stage_file.write_text(
            machinery_venue(relay.port, modbus).replace('[[nodes]]\nid = "ctl-2"\n'
                                                        'role = "controller"\n', "")
        )  # fmt: skip
        venue_file.write_text(stage_file.read_text().replace(str(relay.port), str(mosquitto.port)))
        try:
            procs["stage"] = run_node(stage_file, "stage", api["stage"], tmp_path / "stage.log")
            procs["ctl-1"] = run_node(venue_file, "ctl-1", api["ctl-1"], tmp_path / "ctl-1.log")
            stage, ctl = (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{api[n]}", timeout=5)
                for n in ("stage", "ctl-1")
            )
            hub = MqttHub(BrokerSettings("127.0.0.1", mosquitto.port, client_id="hsm-test"))
            hub_task = asyncio.create_task(hub.run())
            async with stage, ctl:
                hoist = Stage(stage).hoist

                async def online_at_ctl() -> bool:
                    try:
                        h = (await ctl.get("/api/v1/health")).json()["devices"]
                    except (httpx.TransportError, KeyError, ValueError):
                        return False
                    return h.get("hoist-1") == "online"

                async def ready() -> bool:
                    return await online_at_ctl() and (await hoist()).get("position") is not None

                await wait_until(ready, 40, "the hoist online at the stage and the controller")
                async with hold_enable(stage, "stage manager"):
                    await Stage(stage).move(ctl, 9000, 500)
                    await relay.cut()
                    cut = time.time()

                    async def stopped() -> bool:
                        h = await hoist()
                        return h.get("moving") is False and float(h["position"]) < 8000

                    await wait_until(stopped, 5, "the stage node stopping its hoist")
                    print(f"hoist stopped {time.time() - cut:.2f} s after the cut")
                    where = float((await hoist())["position"])

                    async def lost() -> bool:
                        nodes = {n["id"]: n for n in (await ctl.get("/api/v1/nodes")).json()}
                        return nodes["stage"]["state"] == "offline"

                    await wait_until(lost, 5, "the controller seeing the stage node lost")
                    r = await ctl.post(
                        "/api/v1/devices/hoist-1/commands/move_to", json={"position": 2000}
                    )
                    assert r.status_code == 503 and "offline" in r.text, r.text

                    # A scheduled move sent to the node while it is cut off waits in its
                    # session on the broker ...
                    await hub.connected.wait()
                    requester = Requester(hub, "hsm", "hsm-test")
                    topic = command_topic("hsm", "stage", "hoist-1", "move_to")
                    late = asyncio.create_task(
                        requester.request(topic, {"position": 2000}, 15.0, time.time() + 0.05)
                    )
                    await asyncio.sleep(3.0)
                    await relay.restore()  # ... and arrives 3 s late at the reconnect
                    reply = await late
                    print(f"the move held while cut off: {reply.code}: {reply.error}")
                    assert not reply.ok and reply.code == "expired", reply
                    await wait_until(online_at_ctl, 20, "the hoist back at the controller")
                    await asyncio.sleep(0.5)
                    h = await hoist()
                    assert h["moving"] is False and float(h["position"]) == pytest.approx(
                        where, abs=1
                    )

                    # An E-stop at the controller latches every node's, and the controller
                    # sees it; the reset is the node's, where the machinery can be seen.
                    r = await ctl.post("/api/v1/machinery/estop", json={"reason": "test"})
                    assert r.status_code == 200 and r.json()["venue"] is True, r.text

                    async def latched() -> bool:
                        nodes = {n["id"]: n for n in (await ctl.get("/api/v1/nodes")).json()}
                        safety = nodes["stage"]["safety"] or {}
                        return safety.get("estop") is True and "test" in safety["reason"]

                    await wait_until(latched, 5, "the stage's E-stop latched, seen at ctl-1")
                    assert (await stage.get("/api/v1/machinery")).json()["estop"]["latched"]
                    r = await ctl.post("/api/v1/machinery/estop/reset")
                    assert r.status_code == 404, r.text
            hub.stop()
            await asyncio.gather(hub_task, return_exceptions=True)
        finally:
            stop_all(procs.values())


LIGHT_SHOW = """
version = 1
[show]
title = "A look"
venue = "hsl"
[[lists]]
id = "main"
[[lists.cues]]
number = 1
actions = [{ kind = "lighting.levels", levels = [{ fixture = "par-1", level = 60 }] }]
"""


async def test_dmx_hands_over_by_sacn_priority_without_a_blackout(tmp_path: Path) -> None:
    """Both controllers render the look into sACN universe 1: the primary at its configured
    priority 100, the standby at 99. A receiver on real UDP (our E1.31 merge: highest priority
    wins, a source silent for 2.5 s is dropped) sees both sources, and through the primary's
    kill -9 its merged level never leaves the look; after the takeover the standby sends at 100."""
    from drivers.dmx import SacnInput
    from tests.conftest import _stop, start_mosquitto

    sacn_port = free_port()
    venue_file = tmp_path / "venue.toml"
    venue_file.write_text(
        'version = 1\nshow = "show.toml"\n[venue]\nid = "hsl"\n'
        + "".join(f'[[nodes]]\nid = "{n}"\nrole = "controller"\n' for n in CONTROLLERS)
        + '[api]\nhost = "127.0.0.1"\nport = 0\n[auth]\nenabled = false\n'
        '[mqtt]\nmode = "external"\nhost = "127.0.0.1"\nport = MQTT\n'
        '[telemetry]\nstore = "telemetry.sqlite3"\n'
        '[[dmx.outputs]]\nprotocol = "sacn"\nuniverses = [1]\ntargets = ["127.0.0.1"]\n'
        f"priority = 100\nudp_port = {sacn_port}\n"
        '[[devices]]\nid = "par-1"\nprofile = "led_par_rgbw"\nnode = "ctl-1"\n'
        'transport = { kind = "dmx", universe = 1, address = 1 }\n'
    )
    api = {n: free_port() for n in CONTROLLERS}
    broker_port = free_port()
    broker = start_mosquitto(tmp_path / "broker", broker_port)
    venue_file.write_text(venue_file.read_text().replace("MQTT", str(broker_port)))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        async with SacnInput(universes=[1], bind=("127.0.0.1", sacn_port)) as rx:
            for n in CONTROLLERS:  # each with its own show file, as on machines of their own
                mine = tmp_path / f"{n}-show"
                mine.mkdir()
                (mine / "venue.toml").write_text(venue_file.read_text())
                (mine / "show.toml").write_text(LIGHT_SHOW)
                procs[n] = run_node(mine / "venue.toml", n, api[n], tmp_path / f"{n}.log")
            one, two = (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{api[n]}", timeout=5)
                for n in CONTROLLERS
            )
            async with one, two:
                await seated(one, two, {n: tmp_path / f"{n}.log" for n in CONTROLLERS})
                # The show edited at the holder reaches the standby (and its show file); the
                # standby's own edit is refused, and its file left as it was.
                edited = (await one.get("/api/v1/show")).json()
                edited["show"]["title"] = "Another look"
                edited["lists"][0]["cues"][0]["actions"][0]["levels"][0]["level"] = 40
                r = await one.put("/api/v1/show", json=edited)
                assert r.status_code == 200, r.text

                async def shared() -> bool:
                    r = await two.get("/api/v1/show")
                    return r.is_success and r.json()["show"]["title"] == "Another look"

                await wait_until(shared, 10, "the edited show at the standby")
                assert "Another look" in (tmp_path / "ctl-2-show" / "show.toml").read_text()
                r = await two.put("/api/v1/show", json=edited | {"show": {"title": "Mine"}})
                assert r.status_code == 409 and "standby" in r.text, r.text
                assert "Mine" not in (tmp_path / "ctl-2-show" / "show.toml").read_text()
                r = await one.post("/api/v1/playback/go", json={"list": "main"})
                assert r.status_code == 200, r.text

                def level() -> bytes:
                    merged = rx.merged(1)
                    return b"" if merged is None else bytes(merged)[:16]  # par-1's channels

                async def both_sources_lit() -> bool:
                    sources = sorted(s.priority for s in rx.sources(1))
                    return sources == [99, 100] and any(level())

                await wait_until(both_sources_lit, 10, "the look from both, at 100 and 99")
                look = level()
                procs["ctl-1"].kill()
                levels = []
                for _ in range(40):  # 4 s: past the 2.5 s source loss and the takeover
                    await asyncio.sleep(0.1)
                    levels.append(level())
                print(f"look {look.hex()}; frames through the failover: {len(set(levels))} kind(s)")
                assert all(v == look for v in levels), levels
                (source,) = rx.sources(1)
                assert source.priority == 100  # the standby, now holding the show
                assert (await control(two))["state"] == "active"
    finally:
        stop_all(procs.values())
        _stop(broker)
