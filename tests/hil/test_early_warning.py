"""Fault early-warning end to end: the service and a simulated hoist over Modbus TCP, moved back
and forth through the safety supervisor (hold-to-run enable). The models learn from the
telemetry store's history of a healthy period; then a slow degradation is injected over the
simulators' control endpoint and the hoist keeps working until its drive faults. The warning
must come before the fault (the lead time is printed). The maintenance counters count the
same moves."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from drivers.model import Reading
from edge import maintenance as edge_maintenance
from edge.bus import Overflow
from edge.early_warning import EarlyWarning, ModelName
from edge.service import Service
from tests.conftest import (
    free_port,
    hold_enable,
    run_service,
    wait_until,
    write_venue,
)

pytestmark = pytest.mark.hil
LO = "127.0.0.1"
HEALTHY_MOVES = 8
PARKED_S = 0.5  # five polls of the 10 Hz telemetry
FAULT_TIMEOUT_S = 50.0

EXTRA = """
[machinery]
enable_timeout_s = 0.5
stale_cycles = 25  # the test machine is shared and loaded: a late poll is not a fault here
[machinery.axes.hoist-1]
following_error = 400  # late polls on the loaded machine read as following error
[maintenance]
store = "maintenance.sqlite3"
flush_interval_s = 0.5
"""


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path, start_sims: Callable[..., Any]
) -> AsyncIterator[tuple[Service, httpx.AsyncClient, httpx.AsyncClient]]:
    # The drive's watchdog at 1 s: the test machine is shared and loaded (this test is about
    # drift, not about the 200 ms watchdog, which tests/hil/test_machinery_safety.py covers).
    hoist = {"id": "hoist-1", "port": free_port(), "start": 1000, "watchdog_ms": 1000}
    path = write_venue(tmp_path, [hoist])
    path.write_text(path.read_text().replace("[telemetry]", EXTRA + "[telemetry]", 1))
    async with contextlib.AsyncExitStack() as stack:
        # The simulators in a process of their own (as ``flytower run`` does): a busy event loop
        # of the service then never delays the drive's answers too.
        port = free_port()
        start_sims(path, control_port=port)
        sim = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://{LO}:{port}", timeout=5)
        )

        async def sims_ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return (await sim.get("/sim/v1/health")).status_code == 200
            return False

        await wait_until(sims_ready, 20, "the simulators")
        svc = await stack.enter_async_context(run_service(path))
        if getattr(svc, "maintenance", None) is None:  # until edge/service.py wires it
            await stack.enter_async_context(edge_maintenance.for_service(svc))
        api = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=f"http://{LO}:{svc.bound_api_port}",
                timeout=5,
                headers={"x-flytower-operator": "alice"},
            )
        )

        async def ready() -> bool:
            axes = (await api.get("/api/v1/machinery")).json()["axes"]
            return all(a["state"] in ("disabled", "idle") for a in axes.values())

        await wait_until(ready, 15, "hoist-1 reporting")
        yield svc, api, sim


async def truth(sim: httpx.AsyncClient) -> dict[str, Any]:
    body = (await sim.get("/sim/v1/truth", params={"ids": "hoist-1"})).json()
    return dict(body["devices"]["hoist-1"])


async def move(api: httpx.AsyncClient, sim: httpx.AsyncClient, target: float) -> str:
    """One supervised move: ``done``, ``aborted`` (the supervisor stopped it: on this loaded
    machine a poll answered late reads as stale telemetry) or ``fault`` (the drive faulted)."""
    r = await api.post(
        "/api/v1/machinery/move", json={"targets": {"hoist-1": target}, "speed": 1000}
    )
    if (await truth(sim))["fault"]:
        return "fault"
    if r.status_code != 200:
        return "aborted"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        t = await truth(sim)
        if t["fault"]:
            return "fault"
        if not t["moving"] and not t["enabled"]:
            # Parked: stay so for a few telemetry periods, as between cues. The brake model
            # learns from the stored 10 Hz status (enabled rising, then the brake released):
            # a park shorter than one poll is never stored, so the next release is not seen.
            await asyncio.sleep(PARKED_S)
            return "done" if abs(t["position_mm"] - target) < 2 else "aborted"
    return "aborted"


@pytest.mark.parametrize(
    ("fault", "params", "model", "code"),
    [
        ("bearing_wear", {"rate_n_s": 1600}, "motor_current", 4),
        ("brake_wear", {"rate_ms_s": 60}, "brake_release", 6),
    ],
)
async def test_drift_is_warned_of_before_the_drive_faults(
    tmp_path: Path,
    simulator_process: Callable[..., Any],
    fault: str,
    params: dict[str, float],
    model: ModelName,
    code: int,
) -> None:
    started = time.monotonic()
    async with rig(tmp_path, simulator_process) as (svc, api, sim):
        early = getattr(svc, "early_warning", None)  # set by edge.maintenance.for_service
        assert isinstance(early, EarlyWarning)
        faults: list[Reading] = []
        watch = svc.readings.subscribe("test-faults", Overflow.DROP_OLDEST, maxsize=100_000)

        async def fault_watch() -> None:
            async for r in watch:
                if r.point == "fault_code" and r.value and not faults:
                    faults.append(r)

        watcher = asyncio.create_task(fault_watch())
        try:
            async with hold_enable(api):
                healthy_from = time.time()
                done, tries = 0, 0
                while done < HEALTHY_MOVES and tries < 2 * HEALTHY_MOVES:
                    outcome = await move(api, sim, 3000.0 if tries % 2 == 0 else 1000.0)
                    assert outcome != "fault", await truth(sim)
                    done, tries = done + (outcome == "done"), tries + 1
                assert done >= HEALTHY_MOVES // 2, f"{tries - done} of {tries} moves aborted"
                learned = await early.learn_from_store(svc.store, healthy_from, time.time())
                # A loaded machine can leave a model short of samples (a brake release seen in
                # 10 Hz telemetry, a move aborted): a few more healthy moves, as an operator
                # would run the machine longer before trusting the model.
                for extra in range(2 * HEALTHY_MOVES):  # (CI once needed more than 8)
                    if learned["hoist-1"][model]:
                        break
                    outcome = await move(api, sim, 3000.0 if extra % 2 == 0 else 1000.0)
                    assert outcome != "fault", await truth(sim)
                    done += outcome == "done"
                    learned = await early.learn_from_store(svc.store, healthy_from, time.time())
                assert learned["hoist-1"][model], early.status()["devices"]["hoist-1"]
                assert list(early.recent) == []  # a healthy period warns of nothing
                r = await sim.post(f"/sim/v1/devices/hoist-1/faults/{fault}", json=params)
                assert r.status_code == 200, r.text
                injected = time.time()
                i = 0
                while time.time() - injected < FAULT_TIMEOUT_S:
                    if await move(api, sim, 3000.0 if i % 2 == 0 else 1000.0) == "fault":
                        break
                    i += 1
            await wait_until(lambda: _true(bool(faults)), 3, "the fault reading")
        finally:
            watch.close()
            await watcher
        fault_at = faults[0].ts_wall
        assert faults[0].value == code
        warned = [w for w in early.recent if w.model == model and w.active]
        assert warned, early.status()
        lead = fault_at - warned[0].ts
        print(
            f"\n{fault}: warning {warned[0].ts - injected:.1f} s after injection, "
            f"drive fault {code} {fault_at - injected:.1f} s after: lead {lead:.1f} s "
            f"({i} moves while degrading; test {time.monotonic() - started:.0f} s)"
        )
        assert warned[0].ts < fault_at and lead > 1.0
        # visible on the API, and raised as an alarm when the service runs an alarm engine
        body = (await api.get("/api/v1/maintenance/early-warning")).json()
        assert any(w["model"] == model and w["device"] == "hoist-1" for w in body["active"])
        engine = getattr(svc, "alarms", None)
        if engine is not None:
            rules = {a["rule"] for a in engine.active(device="hoist-1")}
            assert f"early_warning.{model}" in rules, rules
        # the maintenance counters counted the moves
        doc = (await api.get("/api/v1/maintenance/devices/hoist-1")).json()
        assert doc["counters"]["cycles"] >= done
        # brake operations are counted from the 10 Hz telemetry of the brake bit: a short
        # release between two readings can be missed, so at least some, not one per move
        assert doc["counters"]["brake_operations"] >= 1
        assert doc["counters"]["distance"] >= done * 1900


async def _true(value: bool) -> bool:
    return value
