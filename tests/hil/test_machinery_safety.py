"""The safety supervisor in the running service against simulated drives over real Modbus TCP:
every refusal leaves the drives standing, every stop shows on the simulated drive (ground truth
from the simulators' control endpoint), and a ``kill -9`` of the service stops a moving axis by
the drive's own watchdog and leaves an intact journal holding every acknowledged command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.config import load_venue
from edge.journal import JournalQuery, JournalStore, journal_path
from edge.service import Service
from tests.conftest import (
    REPO,
    free_port,
    hold_enable,
    run_service,
    simulators,
    wait_for_port,
    wait_until,
    write_venue,
)

pytestmark = pytest.mark.hil
LO = "127.0.0.1"

# stale_cycles 15 (300 ms at 50 Hz, not the default 100 ms): two CI runs on a busy machine
# saw an axis's status late by more than 100 ms, and the supervisor rightly refused or aborted
# a move that these tests are not about. Lost telemetry still aborts (test_lost_telemetry_...).
MACHINERY = """
[machinery]
enable_timeout_s = 0.5
stale_cycles = 15
[machinery.axes.hoist-1]
max_load = 400
min_load = 50
[machinery.axes.hoist-2]
[[machinery.zones]]
name = "flys"
axes = ["hoist-1", "hoist-2"]
min_gap = 500
[[machinery.interlocks]]
name = "one at a time"
axes = ["hoist-3"]
block_when = { device = "hoist-2", point = "moving", equals = true }
"""


def venue(tmp_path: Path) -> Path:
    port = free_port()
    path = write_venue(
        tmp_path,
        [
            {"id": "hoist-1", "port": port, "unit": 1, "start": 1000, "watchdog_ms": 500},
            {"id": "hoist-2", "port": port, "unit": 2, "start": 5000, "watchdog_ms": 500},
            {"id": "hoist-3", "port": port, "unit": 3, "start": 8000, "watchdog_ms": 500},
        ],
    )
    path.write_text(path.read_text().replace("[telemetry]", MACHINERY + "[telemetry]", 1))
    return path


class Rig:
    def __init__(self, service: Service, api: httpx.AsyncClient, sim: httpx.AsyncClient) -> None:
        self.service, self.api, self.sim = service, api, sim

    async def truth(self, device: str) -> dict[str, Any]:
        body = (await self.sim.get("/sim/v1/truth", params={"ids": device})).json()
        return dict(body["devices"][device])

    async def position(self, device: str) -> float:
        return float((await self.truth(device))["position_mm"])

    async def move(self, targets: dict[str, float], **kw: Any) -> httpx.Response:
        return await self.api.post("/api/v1/machinery/move", json={"targets": targets, **kw})

    async def at_rest(self, device: str) -> bool:
        return abs(float((await self.truth(device))["velocity_mm_s"])) < 0.5

    async def journal(self, command: str) -> list[dict[str, Any]]:
        events = (await self.api.get("/api/v1/journal", params={"limit": 1000})).json()
        return [e for e in events["events"] if e["command"] == command]


async def reporting(api: httpx.AsyncClient) -> bool:
    """Every axis cycled and (interlock venue) hoist-2's ``moving``, the interlock's input, read."""
    axes = (await api.get("/api/v1/machinery")).json()["axes"]
    if not all(a["state"] in ("disabled", "idle") for a in axes.values()):
        return False
    if "hoist-2" not in axes:
        return True
    points = (await api.get("/api/v1/devices/hoist-2/points")).json()
    return any(p["name"] == "moving" and p["quality"] == "good" for p in points)


@contextlib.asynccontextmanager
async def running(path: Path, start_sims: Callable[..., Any]) -> AsyncIterator[Rig]:
    """Simulators (in a process of their own, as ``flytower run`` starts them: a busy test
    loop then never starves the drives' watchdogs and answers) and the service for the venue at
    ``path``, once every axis reports."""
    async with contextlib.AsyncExitStack() as stack:
        port = free_port()
        start_sims(path, control_port=port)
        wait_for_port(port)
        svc = await stack.enter_async_context(run_service(path))
        api = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=f"http://{LO}:{svc.bound_api_port}",
                timeout=5,
                headers={"x-flytower-operator": "alice"},
            )
        )
        sim = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://{LO}:{port}", timeout=5)
        )

        await wait_until(lambda: reporting(api), 15, "every axis reporting")
        yield Rig(svc, api, sim)


@pytest.fixture
async def rig(tmp_path: Path, simulator_process: Callable[..., Any]) -> AsyncIterator[Rig]:
    async with running(venue(tmp_path), simulator_process) as r:
        yield r


async def test_no_enable_no_motion_then_a_supervised_move_arrives(rig: Rig) -> None:
    r = await rig.move({"hoist-1": 1600})
    assert r.status_code == 409 and "no hold-to-run enable" in r.json()["detail"]
    # a device command that moves machinery goes through the supervisor too
    r = await rig.api.post("/api/v1/devices/hoist-1/commands/move_to", json={"position": 1600})
    assert r.status_code == 422 and "no hold-to-run enable" in r.json()["detail"]
    await asyncio.sleep(0.3)
    assert await rig.position("hoist-1") == pytest.approx(1000, abs=1)
    async with hold_enable(rig.api):
        r = await rig.move({"hoist-1": 1600, "hoist-3": 7000}, speed=600)
        assert r.status_code == 200, r.text
        move = r.json()

        async def arrived() -> bool:
            p1, p3 = await rig.position("hoist-1"), await rig.position("hoist-3")
            return abs(p1 - 1600) < 3 and abs(p3 - 7000) < 3

        try:  # 10 s of motion at 600 mm/s; a machine busy with other work takes longer
            await wait_until(arrived, 30, "both hoists on target")
        except pytest.fail.Exception as e:
            pytest.fail(f"{e}: {(await rig.api.get('/api/v1/machinery')).text[:3000]}")

        async def journalled() -> bool:
            done = await rig.journal("move.done")
            return any(e["args"].get("move") == move["id"] for e in done)

        await wait_until(journalled, 5, "move.done in the journal")
    await wait_until(lambda: rig.at_rest("hoist-1"), 5, "hoist-1 at rest")
    assert not (await rig.truth("hoist-1"))["enabled"]  # parked on its brake


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"targets": {"hoist-1": 12_500}}, 409, "outside its soft limits"),
        ({"targets": {"hoist-1": 2000}, "speed": 5000}, 409, "above its limit 1500"),
        ({"targets": {"ghost": 2000}}, 409, "no axis 'ghost'"),
        ({"targets": {"hoist-1": "up"}}, 422, "targets"),
        ({"targets": {}}, 422, "targets"),
        ({"targets": {"hoist-1": 2000}, "extra": 1}, 422, "extra"),
        ({"targets": {"hoist-1": 5200}}, 409, "collision zone 'flys'"),
    ],
)
async def test_bad_moves_are_refused_and_nothing_moves(
    rig: Rig, body: dict[str, Any], status: int, reason: str
) -> None:
    async with hold_enable(rig.api):
        for _ in range(3):
            r = await rig.api.post("/api/v1/machinery/move", json=body)
            # A CI run saw hoist-1's status go stale for a moment on a loaded machine: the
            # supervisor rightly refused ("hoist-1 is offline"), but that is not this test's
            # refusal. Once the axis reports again, the same move is asked again.
            if not str(r.json().get("detail", "")).endswith("is offline"):
                break
            await wait_until(lambda: reporting(rig.api), 15, "every axis reporting")
    assert r.status_code == status and reason in str(r.json()["detail"]), r.text
    assert await rig.position("hoist-1") == pytest.approx(1000, abs=1)
    assert await rig.at_rest("hoist-1")


async def test_a_nan_target_is_refused(rig: Rig) -> None:
    content = b'{"targets": {"hoist-1": NaN}}'
    r = await rig.api.post(
        "/api/v1/machinery/move", content=content, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422


async def test_estop_stops_every_axis_and_needs_a_reset(rig: Rig) -> None:
    async with hold_enable(rig.api):
        assert (await rig.move({"hoist-1": 4000, "hoist-3": 11_000}, speed=800)).status_code == 200

        async def moving() -> bool:
            return not await rig.at_rest("hoist-1")

        await wait_until(moving, 5, "hoist-1 moving")
        r = await rig.api.post("/api/v1/machinery/estop", json={"reason": "test"})
        assert r.status_code == 200 and r.json()["failed"] == {}
        for axis in ("hoist-1", "hoist-3"):
            await wait_until(lambda a=axis: rig.at_rest(a), 3, f"{axis} stopped")  # type: ignore[misc]
            assert not (await rig.truth(axis))["enabled"]
        r = await rig.move({"hoist-2": 6000})
        assert r.status_code == 409 and "E-stop is latched" in r.json()["detail"]
        # a hard-wired e-stop input keeps the reset refused
        await rig.sim.post("/sim/v1/estop", json={"open": True})
        await asyncio.sleep(0.3)
        r = await rig.api.post("/api/v1/machinery/estop/reset")
        assert r.status_code == 409 and "E-stop inputs still active" in r.json()["detail"]
        await rig.sim.post("/sim/v1/estop", json={"open": False})
        for axis in ("hoist-1", "hoist-2", "hoist-3"):
            await rig.api.post(f"/api/v1/devices/{axis}/commands/reset_fault", json={})
        await asyncio.sleep(0.3)
        r = await rig.api.post("/api/v1/machinery/estop/reset")
        assert r.status_code == 200, r.text
    results = [e["result"] for e in await rig.journal("estop.reset")]
    assert results == ["refused", "ok"]


async def test_releasing_the_enable_stops_the_move(rig: Rig) -> None:
    async with hold_enable(rig.api):
        r = await rig.move({"hoist-3": 2000}, speed=500)
        assert r.status_code == 200, r.text
        await asyncio.sleep(0.8)
    await wait_until(lambda: rig.at_rest("hoist-3"), 5, "hoist-3 stopped")
    assert await rig.position("hoist-3") > 2100
    snap = (await rig.api.get("/api/v1/machinery")).json()
    assert "enable released" in snap["axes"]["hoist-3"]["last_abort"]


async def test_overload_aborts_the_move(rig: Rig) -> None:
    async with hold_enable(rig.api):
        assert (await rig.move({"hoist-1": 800}, speed=200)).status_code == 200
        await asyncio.sleep(0.3)
        r = await rig.sim.post("/sim/v1/devices/hoist-1/faults/overload", json={"extra_kg": 300})
        assert r.status_code == 200, r.text
        await wait_until(lambda: rig.at_rest("hoist-1"), 5, "hoist-1 stopped")
    snap = (await rig.api.get("/api/v1/machinery")).json()
    assert "overload" in snap["axes"]["hoist-1"]["last_abort"]
    assert any("overload" in e["reason"] for e in await rig.journal("abort"))


async def test_an_interlock_refuses_while_its_condition_holds(rig: Rig) -> None:
    async with hold_enable(rig.api):
        assert (await rig.move({"hoist-2": 7000}, speed=400)).status_code == 200

        async def moving() -> bool:
            return not await rig.at_rest("hoist-2")

        await wait_until(moving, 5, "hoist-2 moving")
        await asyncio.sleep(0.3)  # its moving point reaches the service's live view
        r = await rig.move({"hoist-3": 9000})
        assert r.status_code == 409 and "interlock 'one at a time'" in r.json()["detail"]


async def test_kill_9_stops_a_moving_axis_by_its_watchdog(tmp_path: Path) -> None:
    """The service as its own process, killed mid-move: the drive stops on its watchdog."""
    path = venue(tmp_path)
    api_port = free_port()
    path.write_text(path.read_text().replace("port = 0", f"port = {api_port}", 1))
    async with simulators(path) as sim_port:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge.cli",
            "run",
            str(path),
            "--no-simulators",
            cwd=REPO,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with (
                httpx.AsyncClient(base_url=f"http://{LO}:{api_port}", timeout=5) as api,
                httpx.AsyncClient(base_url=f"http://{LO}:{sim_port}", timeout=5) as sim,
            ):

                async def up() -> bool:
                    with contextlib.suppress(httpx.HTTPError):
                        return await reporting(api)
                    return False

                await wait_until(up, 30, "the service up with its axes")
                async with hold_enable(api):
                    r = await api.post(
                        "/api/v1/machinery/move", json={"targets": {"hoist-3": 2000}, "speed": 800}
                    )
                    assert r.status_code == 200, r.text

                    async def fast() -> bool:
                        t = (await sim.get("/sim/v1/truth", params={"ids": "hoist-3"})).json()
                        return abs(t["devices"]["hoist-3"]["velocity_mm_s"]) > 500

                    await wait_until(fast, 5, "hoist-3 at speed")
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = time.monotonic()

                async def stopped() -> bool:
                    t = (await sim.get("/sim/v1/truth", params={"ids": "hoist-3"})).json()
                    d = t["devices"]["hoist-3"]
                    return abs(d["velocity_mm_s"]) < 0.5 and d["fault"] == 1

                await wait_until(stopped, 5, "hoist-3 stopped by its watchdog (fault 1)")
                acknowledged = r.json()["id"]
                took = time.monotonic() - killed
                print(
                    f"\nwatchdog stop after kill -9: {took * 1000:.0f} ms (200 ms watchdog + ramp)"
                )
        finally:
            if proc.returncode is None:
                proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
    # The journal after the kill: intact, and every acknowledged command in it.
    journal = journal_path(load_venue(path).store_path)
    with sqlite3.connect(journal) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    async with JournalStore(journal) as j:
        got, _ = await j.query(JournalQuery(limit=None))
    commands = [e.event.command for e in got]
    assert commands[0] == "service.start" and "service.stop" not in commands
    moves = [e.event for e in got if e.event.command == "move"]
    assert [m.args["move"] for m in moves] == [acknowledged]
    assert "enable" in commands
    assert [e.seq for e in got] == list(range(1, len(got) + 1))


async def test_estop_during_a_64_axis_synchronised_move(
    tmp_path: Path, simulator_process: Any
) -> None:
    """64 hoists on 4 gateways (the simulators in two processes of their own), one synchronised
    move of all of them, a software E-stop mid-move: every drive stops and is switched off."""
    ports = [free_port() for _ in range(4)]
    axes = [f"hoist-{i + 1:02d}" for i in range(64)]
    path = write_venue(
        tmp_path,
        [
            {"id": a, "port": ports[i // 16], "unit": i % 16 + 1, "start": 2000, "poll_hz": 5}
            for i, a in enumerate(axes)
        ],
    )
    # This test is about the E-stop's fan-out, not the watchdog (test_kill_9 is), stale
    # telemetry (test_lost_telemetry is) nor following errors (their own test is): a 1 s drive
    # watchdog, a 0.5 s staleness limit and a 0.5 m following error ride out a loaded machine
    # starving 64 cycles in one loop for 200 ms.
    text = path.read_text().replace("watchdog_ms_default = 200", "watchdog_ms_default = 1000")
    tolerant = "".join(f"[machinery.axes.{a}]\nfollowing_error = 500\n\n" for a in axes)
    text = text.replace(
        "[telemetry]", f"[machinery]\nstale_cycles = 25\n\n{tolerant}[telemetry]", 1
    )
    path.write_text(text)
    control = free_port()
    simulator_process(path, processes=2, control_port=control)
    for p in ports:
        wait_for_port(p)
    async with (
        run_service(path) as svc,
        httpx.AsyncClient(base_url=f"http://{LO}:{svc.bound_api_port}", timeout=10) as api,
        httpx.AsyncClient(base_url=f"http://{LO}:{control}", timeout=10) as sim,
    ):

        async def ready() -> bool:
            snap = (await api.get("/api/v1/machinery")).json()
            return all(a["state"] in ("disabled", "idle") for a in snap["axes"].values())

        await wait_until(ready, 30, "all 64 axes reporting")

        async def truth() -> dict[str, Any]:
            body = (await sim.get("/sim/v1/truth", params={"ids": ",".join(axes)})).json()
            return dict(body["devices"])

        async with hold_enable(api):
            r = await api.post(
                "/api/v1/machinery/move",
                json={"targets": dict.fromkeys(axes, 1000), "relative": True, "speed": 400},
            )
            assert r.status_code == 200, r.text
            assert len(r.json()["axes"]) == 64

            async def all_moving() -> bool:
                return all(abs(t["velocity_mm_s"]) > 50 for t in (await truth()).values())

            await wait_until(all_moving, 10, "all 64 hoists moving together")
            t0 = time.monotonic()
            r = await api.post("/api/v1/machinery/estop", json={"reason": "64-axis test"})
            took = time.monotonic() - t0
            assert r.status_code == 200 and r.json()["failed"] == {}, r.text

            async def all_stopped() -> bool:
                t = await truth()
                return all(abs(d["velocity_mm_s"]) < 0.5 and not d["enabled"] for d in t.values())

            await wait_until(all_stopped, 5, "all 64 hoists stopped and switched off")
        print(f"\nE-stop of 64 moving axes: all stops acknowledged {took * 1000:.1f} ms after")
        positions = [t["position_mm"] for t in (await truth()).values()]
        assert all(2000 < p < 3000 for p in positions)  # stopped mid-move, not at the target
        snap = (await api.get("/api/v1/machinery")).json()
        assert snap["estop"]["latched"] and snap["moves"] == []


async def test_slack_rope_aborts_the_move(rig: Rig) -> None:
    async with hold_enable(rig.api):
        assert (await rig.move({"hoist-1": 3000}, speed=300)).status_code == 200
        await asyncio.sleep(0.4)
        r = await rig.sim.post("/sim/v1/devices/hoist-1/faults/slack_rope", json={})
        assert r.status_code == 200, r.text
        await wait_until(lambda: rig.at_rest("hoist-1"), 5, "hoist-1 stopped")
    snap = (await rig.api.get("/api/v1/machinery")).json()
    reason = snap["axes"]["hoist-1"]["last_abort"]
    assert "slack rope" in reason or "drive fault 7" in reason, reason


async def test_lost_telemetry_stops_the_axis(rig: Rig) -> None:
    async with hold_enable(rig.api):
        assert (await rig.move({"hoist-3": 6000}, speed=400)).status_code == 200
        await asyncio.sleep(0.4)
        r = await rig.sim.post("/sim/v1/devices/hoist-3/faults/comms_loss", json={})
        assert r.status_code == 200, r.text

        async def aborted() -> bool:
            snap = (await rig.api.get("/api/v1/machinery")).json()
            return bool(snap["axes"]["hoist-3"]["last_abort"]) and not snap["moves"]

        await wait_until(aborted, 5, "the supervisor to abort hoist-3's move")
        # the drive, cut off from the heartbeat as well, stops on its own watchdog
        await wait_until(lambda: rig.at_rest("hoist-3"), 5, "hoist-3 stopped")
    snap = (await rig.api.get("/api/v1/machinery")).json()
    assert snap["axes"]["hoist-3"]["state"] == "offline"
    reason = snap["axes"]["hoist-3"]["last_abort"]
    assert "stale telemetry" in reason or "bad status" in reason, reason


GROUPS = """
[machinery]
enable_timeout_s = 0.5
confirm_timeout_s = 5
[machinery.axes.hoist-1]
use_case = "performer"
max_load = 400
min_load = 50
[machinery.axes.hoist-2]
group = "pair"
[machinery.axes.hoist-3]
group = "pair"
[machinery.groups.pair]
mode = "safe"
"""


@pytest.fixture
async def rig2(tmp_path: Path, simulator_process: Callable[..., Any]) -> AsyncIterator[Rig]:
    path = venue(tmp_path)
    path.write_text(path.read_text().replace(MACHINERY, GROUPS, 1))
    async with running(path, simulator_process) as r:
        yield r


async def test_a_fault_stops_its_whole_group_and_refuses_the_faulted_axis(rig2: Rig) -> None:
    rig = rig2
    async with hold_enable(rig.api):
        r = await rig.move({"hoist-2": 3000, "hoist-3": 6000}, speed=300)
        assert r.status_code == 200, r.text
        await asyncio.sleep(0.5)
        r = await rig.sim.post("/sim/v1/devices/hoist-2/faults/drive_trip", json={})
        assert r.status_code == 200, r.text
        for axis in ("hoist-2", "hoist-3"):
            await wait_until(lambda a=axis: rig.at_rest(a), 5, f"{axis} stopped")  # type: ignore[misc]
        snap = (await rig.api.get("/api/v1/machinery")).json()
        assert "drive fault 4" in snap["axes"]["hoist-3"]["last_abort"]  # stopped as its group
        r = await rig.move({"hoist-2": 5000})
        assert r.status_code == 409 and "hoist-2 is faulted (fault code 4)" in r.json()["detail"]


async def test_a_performer_move_needs_a_second_operator(rig2: Rig) -> None:
    rig = rig2
    async with hold_enable(rig.api):
        r = await rig.move({"hoist-1": 1400}, speed=500)
        assert r.status_code == 409 and "above its limit 300 (performer)" in r.json()["detail"]
        r = await rig.move({"hoist-1": 1400})
        assert r.status_code == 200 and r.json()["state"] == "pending"
        move = r.json()["id"]
        await asyncio.sleep(0.5)
        assert await rig.position("hoist-1") == pytest.approx(1000, abs=1)  # nothing yet
        r = await rig.api.post(f"/api/v1/machinery/moves/{move}/confirm")
        assert r.status_code == 409 and "another operator than 'alice'" in r.json()["detail"]
        r = await rig.api.post(
            f"/api/v1/machinery/moves/{move}/confirm", headers={"x-flytower-operator": "bob"}
        )
        assert r.status_code == 200 and r.json()["state"] == "running", r.text

        async def arrived() -> bool:
            return abs(await rig.position("hoist-1") - 1400) < 1.5

        await wait_until(arrived, 10, "hoist-1 at 1400")
    confirmed = [e for e in await rig.journal("move") if e["args"].get("confirmed_by") == "bob"]
    assert confirmed and confirmed[0]["source"] == "bob"


async def test_a_following_error_aborts_the_move(rig: Rig) -> None:
    async with hold_enable(rig.api):
        assert (await rig.move({"hoist-3": 6000}, speed=400)).status_code == 200
        await asyncio.sleep(0.5)
        # the encoder count jumps 80 mm (inside the drive's 100 mm plausibility limit): the
        # axis reports a position 80 mm off its plan
        r = await rig.sim.post("/sim/v1/devices/hoist-3/faults/encoder_jump", json={"jump": 80})
        assert r.status_code == 200, r.text
        await wait_until(lambda: rig.at_rest("hoist-3"), 5, "hoist-3 stopped")
    snap = (await rig.api.get("/api/v1/machinery")).json()
    assert "following error" in snap["axes"]["hoist-3"]["last_abort"]
