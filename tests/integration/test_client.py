"""The Python client (``edge/client.py``) and its example scripts (``examples/scripts/``)
against the running service with access control on, API tokens made beforehand, and
simulated hoists over Modbus TCP in a process of their own (ground truth from the simulators'
control endpoint):

- no token, an unknown token: ``AccessDenied`` (401) over HTTP and on the ``/ws`` handshake;
- a viewer's token: GO, the enable and a move refused (403, with the reason); stopping allowed;
- an operator's token: hold the enable, move, ``wait_for_axis`` arrives where the simulated
  drive says it is; refusals come back as ``MotionRefused`` with the supervisor's reason;
- a drive trip is seen by ``alarm_events`` and acknowledged, in the token's name;
- each example script runs to completion as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.auth import AuthStore, Role
from edge.client import (
    AccessDenied,
    AlarmRefused,
    FlytowerClient,
    MotionAborted,
    MotionRefused,
    RateLimited,
    apply_patch,
)
from edge.config import load_venue
from edge.service import Service
from tests.conftest import REPO, free_port, run_service, wait_for_port, wait_until, write_venue

pytestmark = pytest.mark.integration
LO = "127.0.0.1"
SCRIPTS = REPO / "examples" / "scripts"

# This file is about the client, not the supervisor's timing rules (their own tests are):
# a 2 s enable, 0.5 s of stale telemetry and 1 s drive watchdogs ride out a loaded machine.
MACHINERY = """
[machinery]
enable_timeout_s = 2.0
stale_cycles = 25
[machinery.axes.hoist-1]
[machinery.axes.hoist-2]
"""

SHOW = """
version = 1
[show]
title = "Client"
[[lists]]
id = "main"
go_debounce_s = 0.1
[[lists.cues]]
number = 1
label = "hoist-2 out"
actions = [
  { kind = "machinery.move", axes = [{ device = "hoist-2", position = 5300, speed = 1000 }] },
]
[[lists.cues]]
number = 2
label = "hoist-2 home"
actions = [
  { kind = "machinery.move", axes = [{ device = "hoist-2", position = 5000, speed = 1000 }] },
]
"""


def venue(tmp_path: Path) -> Path:
    port = free_port()
    path = write_venue(
        tmp_path,
        [
            {"id": "hoist-1", "port": port, "unit": 1, "start": 1000, "watchdog_ms": 1000},
            {"id": "hoist-2", "port": port, "unit": 2, "start": 5000, "watchdog_ms": 1000},
        ],
    )
    text, n = re.subn(r"\[auth\]\nenabled = false[^\n]*\n", "[auth]\n", path.read_text())
    assert n == 1, "the test venue template changed: access control is not switched on"
    text = text.replace("[telemetry]", MACHINERY.lstrip() + "[telemetry]", 1)
    path.write_text('show = "show.toml"\n' + text)
    (tmp_path / "show.toml").write_text(SHOW)
    return path


@dataclass
class Rig:
    service: Service
    url: str
    sim: httpx.AsyncClient
    tokens: dict[Role, str]
    store: AuthStore
    made: dict[Role, tuple[str, str]]  # (id, secret)

    def client(self, role: Role | None, **kw: Any) -> FlytowerClient:
        token = None if role is None else self.tokens[role]
        return FlytowerClient(self.url, name="test", token=token, **kw)

    async def position(self, device: str) -> float:
        body = (await self.sim.get("/sim/v1/truth", params={"ids": device})).json()
        return float(body["devices"][device]["position_mm"])


@pytest.fixture
async def rig(
    tmp_path: Path, simulator_process: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    monkeypatch.delenv("FLYTOWER_TOKEN", raising=False)
    path = venue(tmp_path)
    store = AuthStore(load_venue(path).resolve("var/auth.sqlite3"))
    made = {role: store.create_token(role.value, role) for role in (Role.VIEWER, Role.OPERATOR)}
    tokens = {role: secret for role, (_, secret) in made.items()}
    async with contextlib.AsyncExitStack() as stack:
        control = free_port()
        simulator_process(path, control_port=control)
        wait_for_port(control)
        svc = await stack.enter_async_context(run_service(path))
        sim = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://{LO}:{control}", timeout=5)
        )
        r = Rig(svc, f"http://{LO}:{svc.bound_api_port}", sim, tokens, store, made)

        async def reporting() -> bool:
            async with r.client(Role.VIEWER) as ft:
                axes = await ft.axes()
            return all(a["state"] in ("disabled", "idle") for a in axes.values())

        await wait_until(reporting, 15, "every axis reporting")
        yield r


async def test_without_a_valid_token_access_is_denied(rig: Rig) -> None:
    async with rig.client(None) as ft:
        with pytest.raises(AccessDenied) as info:
            await ft.snapshot()
        assert info.value.status == 401 and "Authorization: Bearer" in str(info.value.reason)
        with pytest.raises(AccessDenied) as info:
            await ft.wait_for_cue("main", 1, timeout_s=5)  # its REST check or the /ws handshake
        assert info.value.status == 401
        with pytest.raises(AccessDenied) as info:  # the feed alone: the handshake is refused
            async with ft.alarm_events() as events:
                await anext(events)
        assert info.value.status == 401 and "Bearer" in str(info.value)
    async with FlytowerClient(rig.url, token="ftt_" + "x" * 43) as ft:
        with pytest.raises(AccessDenied) as info:
            await ft.go("main")
        assert info.value.status == 401 and "unknown session or token" in info.value.reason
    for bad in ["ftt_a\nX-Evil: 1", "ftt_ä", "ftt_a b"]:
        with pytest.raises(ValueError, match="printable ASCII"):
            FlytowerClient(rig.url, token=bad)
    with pytest.raises(ValueError, match="http"):
        FlytowerClient("ftp://" + rig.url.removeprefix("http://"))


async def test_a_viewer_may_look_and_stop_but_not_run(rig: Rig) -> None:
    async with rig.client(Role.VIEWER) as ft:
        assert (await ft.whoami())["role"] == "viewer"
        assert (await ft.snapshot())["show"]["title"] == "Client"
        with pytest.raises(AccessDenied) as info:
            await ft.go("main")
        assert info.value.status == 403
        assert info.value.reason == (
            "token:viewer (viewer) may not do this: it needs the run permission"
        )
        with pytest.raises(AccessDenied, match="run permission"):
            async with ft.hold_enable():
                pass
        with pytest.raises(AccessDenied, match="run permission"):
            await ft.move({"hoist-1": 1500})
        with pytest.raises(AccessDenied, match="run permission"):
            await ft.ack("machinery-fault:hoist-1:fault_code", "no")
        assert (await ft.stop_axes())["stopped"] == ["hoist-1", "hoist-2"]  # stopping: anyone
        view = await ft.wait_for_axis("hoist-1", timeout_s=5)  # a viewer may follow /ws
        assert view["state"] in ("disabled", "idle")
        playback = await ft.snapshot()
    assert playback["lists"][0]["current"] is None  # nothing ran
    assert await rig.position("hoist-1") == pytest.approx(1000, abs=1)

    # a token revoked while a feed follows /ws: the service closes it (1008), the wait says why
    async with rig.client(Role.VIEWER) as ft:
        waiter = asyncio.create_task(ft.wait_for_axis("hoist-1", state="moving", timeout_s=10))
        await asyncio.sleep(0.3)
        rig.store.revoke(rig.made[Role.VIEWER][0])
        with pytest.raises(AccessDenied, match="revoked"):
            await waiter
        with pytest.raises(AccessDenied, match="revoked"):
            await ft.axes()


async def test_an_operator_holds_the_enable_moves_and_waits_for_the_axis(rig: Rig) -> None:
    updates: list[dict[str, Any]] = []
    async with rig.client(Role.OPERATOR) as ft:
        with pytest.raises(MotionRefused) as refused:
            await ft.move({"hoist-1": 1500})
        assert refused.value.status == 409 and "no hold-to-run enable" in refused.value.reason
        with pytest.raises(ValueError, match="no axis 'ghost'"):
            await ft.wait_for_axis("ghost", 1, timeout_s=5)
        with pytest.raises(ValueError, match="finite"):
            await ft.move({"hoist-1": float("nan")})
        async with ft.hold_enable("client test"):
            assert (await ft.machinery())["enable"]["holders"] == ["client test"]
            with pytest.raises(MotionRefused) as refused:
                await ft.move({"hoist-1": 12_500})
            assert refused.value.status == 409
            assert "outside its soft limits" in refused.value.reason
            with pytest.raises(MotionRefused) as refused:
                await ft.move({"hoist-1": 1500}, speed=5000)
            assert "above its limit" in refused.value.reason
            with pytest.raises(MotionRefused) as refused:  # a malformed request: 422
                await ft.stop_axes(["ghost"])
            assert refused.value.status == 422 and "no axis 'ghost'" in str(refused.value)
            await asyncio.sleep(2.5)  # longer than enable_timeout_s: the renewals keep it
            move = await ft.move({"hoist-1": 1500}, speed=800)
            assert move["axes"] == ["hoist-1"]
            view = await ft.wait_for_axis("hoist-1", 1500, timeout_s=15, on_update=updates.append)
            assert abs(view["position"] - 1500) <= 5 and view["move"] is None
            assert abs(await rig.position("hoist-1") - 1500) < 5  # the drive agrees
        assert (await ft.machinery())["enable"]["holders"] == []  # released on exit
        assert len(updates) >= 3  # followed the /ws feed while it moved
        assert any(u["moves"] for u in updates)

        # an E-stop on the way: the wait ends with the reason, not a timeout
        async with ft.hold_enable():
            await ft.move({"hoist-1": 3000}, speed=500)
            waiter = asyncio.create_task(ft.wait_for_axis("hoist-1", 3000, timeout_s=15))
            await asyncio.sleep(0.3)
            assert (await ft.estop("client test"))["latched"] is True
            with pytest.raises(MotionAborted, match="E-stop is latched"):
                await waiter
        with pytest.raises(MotionRefused, match="E-stop"):
            async with ft.hold_enable():
                await ft.move({"hoist-1": 1000})
    async with httpx.AsyncClient(
        base_url=rig.url, headers={"authorization": f"Bearer {rig.tokens[Role.OPERATOR]}"}
    ) as api:
        events = (await api.get("/api/v1/journal", params={"limit": 500})).json()["events"]
    moves = [e for e in events if e["command"] == "move" and e["result"] == "ok"]
    assert moves and all(e["source"] == "token:operator" for e in moves)


async def test_an_alarm_is_seen_by_alarm_events_and_acknowledged(rig: Rig) -> None:
    aid = "machinery-fault:hoist-1:fault_code"
    async with rig.client(Role.OPERATOR) as ft:
        assert await ft.alarms() == []
        events = ft.alarm_events(severities={"critical"}, devices={"hoist-1"}, existing=False)
        seen = asyncio.create_task(anext(events))
        await asyncio.sleep(0.3)  # the feed has its first list
        r = await rig.sim.post("/sim/v1/devices/hoist-1/faults/drive_trip", json={})
        assert r.status_code == 200, r.text
        alarm = await asyncio.wait_for(seen, 5)
        assert (alarm["id"], alarm["state"], alarm["message"]) == (
            aid,
            "active_unack",
            "drive trip",
        )
        acked = await ft.ack(aid, "hoist-1 stopped by the client test")
        assert (acked["state"], acked["acked_by"]) == ("active_ack", "token:operator")
        # the acknowledgement is a change too, but the default filter wants unacknowledged ones
        listed = await ft.alarms(states=["active_ack"])
        assert [a["id"] for a in listed] == [aid]
        with pytest.raises(AlarmRefused) as info:
            await ft.ack(aid)
        assert info.value.status == 409 and "nothing to acknowledge" in info.value.reason
        with pytest.raises(AlarmRefused) as info:
            await ft.ack("nope:hoist-1:-/../x")
        assert info.value.status == 404
        # every state: the acknowledged alarm is news to a feed that follows all of them
        async with ft.alarm_events(states=None) as every:
            first = await asyncio.wait_for(anext(every), 5)
        assert (first["id"], first["state"]) == (aid, "active_ack")
        # ``events`` was never closed by hand: the client closes it on exit


async def script(rig: Rig, name: str, *args: str, status: int = 0, timeout_s: float = 30) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPTS / name),
        "--url",
        rig.url,
        "--token",
        rig.tokens[Role.OPERATOR],
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    text = out.decode()
    assert proc.returncode == status, text
    return text


async def test_the_example_scripts_run(rig: Rig) -> None:
    # without the enable the first cue's move is refused: the script says why and stops
    out = await script(rig, "run_cue_list.py", "--cues", "1", status=1)
    assert "GO main/1" in out and "FAILED: action.machinery.move" in out, out
    assert "no hold-to-run enable" in out, out

    out = await script(rig, "run_cue_list.py", "--enable", "cue script", "--pause", "0.2")
    assert "main: 2 cue(s): 1 2" in out and "GO main/1" in out and "GO main/2" in out, out
    assert out.rstrip().endswith("done")
    assert abs(await rig.position("hoist-2") - 5000) < 5  # out and home again

    out = await script(rig, "wait_for_axis.py", "--axis", "hoist-1", "--to", "1400")
    assert "hoist-1 arrived at" in out and "%" in out, out  # progress lines
    assert abs(await rig.position("hoist-1") - 1400) < 5

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPTS / "react_to_alarm.py"),
        "--url",
        rig.url,
        "--token",
        rig.tokens[Role.OPERATOR],
        "--panic",
        "--timeout",
        "30",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 15)
    assert b"waiting for" in first, first
    await asyncio.sleep(0.5)  # connected to the feed
    r = await rig.sim.post("/sim/v1/devices/hoist-2/faults/drive_trip", json={})
    assert r.status_code == 200, r.text
    rest, _ = await asyncio.wait_for(proc.communicate(), 20)
    out = first.decode() + rest.decode()
    assert proc.returncode == 0, out
    assert "ALARM critical machinery-fault:hoist-2:fault_code" in out, out
    assert "stopped hoist-1, hoist-2" in out and "panic" in out, out
    assert "acknowledged by token:operator" in out, out


async def test_a_feed_reopens_its_connection_when_the_service_restarts_and_429s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLYTOWER_TOKEN", raising=False)
    port = free_port()
    path = write_venue(tmp_path, [])
    text = re.sub(r"\[auth\]\nenabled = false[^\n]*\n", "[auth]\n", path.read_text())
    text = text.replace("port = 0", f"port = {port}\nrate_per_s = 2\nrate_burst = 2", 1)
    path.write_text(text)
    store = AuthStore(load_venue(path).resolve("var/auth.sqlite3"))
    _, token = store.create_token("restart", Role.OPERATOR)
    async with FlytowerClient(f"http://{LO}:{port}", token=token) as ft:
        feed = ft.feed("alarms")

        async def listed() -> dict[str, Any]:
            """The topic's first state is empty; its first patch brings the list."""
            while "alarms" not in (msg := await anext(feed))["snapshot"]:
                pass
            return msg

        async with run_service(path):
            first = await asyncio.wait_for(listed(), 5)
        waiting = asyncio.create_task(listed())
        await asyncio.sleep(0.5)
        assert not waiting.done()  # the service is gone: retrying, not failing
        async with run_service(path):
            again = await asyncio.wait_for(waiting, 10)
        assert first == again == {"type": "alarms", "snapshot": {"alarms": []}}

        # more requests than [api] rate_per_s allows: RateLimited, and when to try again
        async with run_service(path):
            for _ in range(2):
                await ft.whoami()  # the burst
            with pytest.raises(RateLimited) as info:
                await ft.whoami()
            assert info.value.status == 429 and info.value.retry_after_s == 1
            assert "at most 2 a second" in info.value.reason
        # the feed stays open: the client closes it


def test_apply_patch_follows_rfc_6902_and_refuses_what_does_not_fit() -> None:
    doc = {"axes": {"hoist-1": {"position": 1.0}, "a/b": 1}, "moves": [1, 2]}
    doc = apply_patch(
        doc,
        [
            {"op": "replace", "path": "/axes/hoist-1/position", "value": 2.0},
            {"op": "add", "path": "/axes/hoist-2", "value": {"position": 3.0}},
            {"op": "remove", "path": "/axes/a~1b"},
            {"op": "replace", "path": "/moves", "value": []},
            {"op": "add", "path": "/moves/-", "value": 7},
        ],
    )
    assert doc == {
        "axes": {"hoist-1": {"position": 2.0}, "hoist-2": {"position": 3.0}},
        "moves": [7],
    }
    assert apply_patch(doc, [{"op": "replace", "path": "", "value": {}}]) == {}
    bad_ops: list[dict[str, Any]] = [
        {"op": "move", "path": "/axes", "from": "/x"},
        {"op": "replace", "path": "/nope", "value": 1},
        {"op": "remove", "path": "/axes/hoist-9"},
        {"op": "add", "path": "/axes/hoist-1/position/deeper", "value": 1},
        {"op": "add", "path": "axes", "value": 1},
        {"op": "replace", "path": "/moves/x", "value": 1},
    ]
    for bad in bad_ops:
        with pytest.raises((KeyError, IndexError, ValueError, TypeError)):
            apply_patch({"axes": {"hoist-1": {"position": 1.0}}, "moves": []}, [bad])
