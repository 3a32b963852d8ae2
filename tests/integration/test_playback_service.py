"""The cue engine in the running service: a GO over REST, WebSocket and OSC moves a simulated
hoist (truth from the simulators' control endpoint) and brings up a PAR that the simulated DMX
receiver sees; hostile requests are refused with 422 and change nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from drivers.model import OscTransport
from drivers.osc import OscClient
from edge.client import FlytowerClient, PlaybackRefused
from edge.service import Service
from tests.conftest import (
    free_port,
    hold_enable,
    run_service,
    simulators,
    wait_until,
    write_venue,
)

pytestmark = pytest.mark.integration
LO = "127.0.0.1"

SHOW = """
version = 1
[show]
title = "Integration"
[[lists]]
id = "main"
go_debounce_s = 2.0  # wide: the tests refused inside it run on a loaded machine
[[lists.cues]]
number = 1
label = "up and out"
actions = [
  { kind = "lighting.levels", fade_s = 0.2, levels = [{ fixture = "par-1", level = 100 }] },
  { kind = "machinery.move", axes = [{ device = "hoist-1", position = 1600, speed = 1000 }] },
]
[[lists.cues]]
number = 2
actions = [{ kind = "lighting.levels", levels = [{ fixture = "par-1", level = 0 }] }]
[[lists.cues]]
number = 3
actions = [
  { kind = "machinery.move", axes = [{ device = "hoist-1", position = 1300, speed = 1000 }] },
]
"""


def venue(tmp_path: Path) -> Path:
    path = write_venue(tmp_path, [{"id": "hoist-1", "port": free_port(), "start": 1000}])
    dmx = f"""
show = "show.toml"
[osc]
enabled = true
[panic]
fade_s = 0.2
lighting = [{{ fixture = "work-1", level = 80 }}]
[[dmx.outputs]]
protocol = "sacn"
universes = [1]
targets = ["{LO}"]
udp_port = {free_port()}
"""
    text = path.read_text().replace("[telemetry]", dmx.lstrip() + "[telemetry]", 1)
    # the top-level key must come before any table
    text = text.replace('show = "show.toml"\n', "")
    text = 'show = "show.toml"\n' + text
    text += """
[[devices]]
id = "par-1"
profile = "led_par_rgbw"
transport = { kind = "dmx", universe = 1, address = 1 }
simulate = { model = "led_par_rgbw" }

[[devices]]
id = "work-1"
profile = "led_par_rgbw"
transport = { kind = "dmx", universe = 1, address = 9 }
simulate = { model = "led_par_rgbw" }
"""
    path.write_text(text)
    (tmp_path / "show.toml").write_text(SHOW)
    return path


class Rig:
    def __init__(self, service: Service, api: httpx.AsyncClient, sim: httpx.AsyncClient) -> None:
        self.service, self.api, self.sim = service, api, sim

    async def truth(self, device: str) -> dict[str, Any]:
        body = (await self.sim.get("/sim/v1/truth", params={"ids": device})).json()
        return dict(body["devices"][device])


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    path = venue(tmp_path)
    async with contextlib.AsyncExitStack() as stack:
        port = await stack.enter_async_context(simulators(path))
        svc = await stack.enter_async_context(run_service(path, osc_ports=(0, 0)))
        api = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://{LO}:{svc.bound_api_port}", timeout=5)
        )
        sim = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://{LO}:{port}", timeout=5)
        )

        async def positioned() -> bool:
            r = svc.live.get(("hoist-1", "position"))
            return r is not None and r.value is not None

        await wait_until(positioned, 10, "hoist-1 has a position")
        await stack.enter_async_context(hold_enable(api))  # hold-to-run, as the console does
        yield Rig(svc, api, sim)


async def test_rest_go_moves_the_hoist_and_lights_the_par(rig: Rig) -> None:
    snap = (await rig.api.get("/api/v1/playback")).json()
    assert snap["show"] == {"title": "Integration"}
    assert snap["lists"][0]["standby"]["number"] == "1"
    r = await rig.api.post("/api/v1/playback/go", json={})
    assert r.status_code == 200, r.text
    assert r.json()["cue"] == "1"
    # a second GO inside the debounce is refused, with the reason, and nothing queues
    r2 = await rig.api.post("/api/v1/playback/go", json={"list": "main"})
    assert r2.status_code == 409 and "between GOs" in r2.json()["detail"]

    async def lit() -> bool:
        return bool((await rig.truth("par-1")).get("intensity") == 100)

    await wait_until(lit, 10, "the simulated PAR at full")

    async def arrived() -> bool:
        return bool(abs((await rig.truth("hoist-1"))["position_mm"] - 1600) < 2)

    await wait_until(arrived, 15, "the simulated hoist at 1600 mm")

    async def complete() -> bool:
        snap = (await rig.api.get("/api/v1/playback")).json()
        return bool(snap["lists"][0]["running"] == [])

    await wait_until(complete, 10, "cue 1 complete")
    events = (await rig.api.get("/api/v1/journal", params={"limit": 200})).json()
    text = json.dumps(events)
    assert '"go"' in text and "between GOs" in text and "cue main/1" in text


async def test_websocket_and_osc_reach_the_same_engine(rig: Rig) -> None:
    url = f"ws://{LO}:{rig.service.bound_api_port}/ws"
    async with websockets.connect(url, open_timeout=5, close_timeout=2) as ws:

        async def receive() -> dict[str, Any]:
            return dict(json.loads(await asyncio.wait_for(ws.recv(), 5)))

        for _ in range(20):
            if (await receive())["type"] == "playback":
                break
        else:
            pytest.fail("no playback snapshot on connect")
        await ws.send(json.dumps({"type": "playback", "id": 1, "command": "standby", "cue": 3}))
        await ws.send(json.dumps({"type": "playback", "id": 2, "command": "fly"}))
        await ws.send(json.dumps({"type": "playback", "id": 3, "command": "go", "cue": "1e99"}))
        await ws.send("{not json")
        replies: dict[int, dict[str, Any]] = {}
        errors = 0
        for _ in range(100):
            msg = await receive()
            if msg["type"] == "playback.result":
                replies[msg["id"]] = msg
            errors += msg["type"] == "error"
            if len(replies) == 3 and errors:
                break
        assert replies[1]["ok"] is True and replies[1]["cue"] == "3"
        assert replies[2]["status"] == 422 and "command" in replies[2]["detail"]
        assert replies[3]["status"] == 422 and "cue number" in replies[3]["detail"]

    assert rig.service.osc is not None
    transport = OscTransport(kind="osc", host=LO, port=rig.service.osc.udp_port)
    async with OscClient(transport) as osc:
        reply = await osc.request("/go", timeout_s=3)
        assert reply.ok, reply
        assert reply.data["cue"] == "3"
        bad = await osc.request("/cue/77/start", timeout_s=3)
        assert not bad.ok and "no cue 77" in str(bad.data)

    async def moved() -> bool:
        return bool(abs((await rig.truth("hoist-1"))["position_mm"] - 1300) < 2)

    await wait_until(moved, 15, "the hoist at 1300 mm after OSC /go")
    reply_panic = await rig.api.post("/api/v1/playback/panic")
    assert reply_panic.status_code == 200, reply_panic.text
    snap = (await rig.api.get("/api/v1/playback")).json()
    assert snap["panic"] is True

    async def safe_look() -> bool:  # the work light up, everything else out, on the wire
        work, par = await rig.truth("work-1"), await rig.truth("par-1")
        return bool(work.get("intensity") == 80 and par.get("intensity") == 0)

    await wait_until(safe_look, 10, "the panic safe look on the simulated fixtures")


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("go", {"list": "nope"}),
        ("go", {"cue": "12.5.5"}),
        ("go", {"cue": float("inf")}),
        ("go", {"cue": True}),
        ("go", {"cue": [1]}),
        ("go", {"list": 5}),
        ("go", {"list": "x" * 100}),
        ("go", {"extra": 1}),
        ("go", [1, 2]),
        ("standby", {}),
        ("standby", {"cue": -1}),
        ("stop", {"list": "main", "cue": 99}),
        ("release", {"fade_s": -1}),
        ("release", {"fade_s": 1e300}),
    ],
)
async def test_hostile_requests_are_422_and_change_nothing(rig: Rig, route: str, body: Any) -> None:
    before = (await rig.api.get("/api/v1/playback")).json()
    content = json.dumps(body, allow_nan=True)
    r = await rig.api.post(
        f"/api/v1/playback/{route}", content=content, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, (r.status_code, r.text)
    after = (await rig.api.get("/api/v1/playback")).json()
    before.pop("version"), after.pop("version")
    assert before == after


async def test_show_get_put_validate_and_refuse(rig: Rig, tmp_path: Path) -> None:
    data = (await rig.api.get("/api/v1/show")).json()
    assert data["show"]["title"] == "Integration"
    bad = json.loads(json.dumps(data))
    bad["lists"][0]["cues"][0]["actions"][1]["axes"][0]["device"] = "hoist-9"
    bad["lists"][0]["cues"].append(bad["lists"][0]["cues"][0])
    r = await rig.api.put("/api/v1/show", json=bad)
    assert r.status_code == 422
    detail = json.dumps(r.json()["detail"])
    assert "hoist-9" in detail
    assert (tmp_path / "show.toml").read_text() == SHOW  # untouched
    hostiles: list[Any] = [[], "x", {"version": 99}, {"version": 1, "unknown": 1}]
    for hostile in hostiles:
        r = await rig.api.put("/api/v1/show", json=hostile)
        assert r.status_code == 422, hostile
    data["show"]["title"] = "Renamed"
    r = await rig.api.put("/api/v1/show", params={"validate_only": "true"}, json=data)
    assert r.status_code == 200 and r.json()["valid"] is True
    assert (tmp_path / "show.toml").read_text() == SHOW
    r = await rig.api.put("/api/v1/show", json=data)
    assert r.status_code == 200, r.text
    assert "Renamed" in (tmp_path / "show.toml").read_text()
    assert (await rig.api.get("/api/v1/playback")).json()["show"]["title"] == "Renamed"


async def test_client_library(rig: Rig) -> None:
    url = f"http://{LO}:{rig.service.bound_api_port}"
    async with FlytowerClient(url, name="test-script") as ft:
        assert (await ft.standby("main", 2))["cue"] == "2"
        waiter = asyncio.create_task(ft.wait_for_cue("main", 2.0, complete=True, timeout_s=10))
        await asyncio.sleep(0.2)
        assert (await ft.go("main"))["cue"] == "2"
        state = await waiter
        assert state["current"]["number"] == "2" and state["standby"]["number"] == "3"
        with pytest.raises(PlaybackRefused) as info:
            await ft.go("main")
        assert info.value.status == 409 and "between GOs" in str(info.value.reason)
        with pytest.raises(PlaybackRefused) as info:
            await ft.standby("nope", 1)
        assert info.value.status == 422
    events = (await rig.api.get("/api/v1/journal", params={"limit": 200})).json()
    assert "script test-script" in json.dumps(events)
