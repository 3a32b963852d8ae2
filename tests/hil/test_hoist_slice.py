"""Hardware-in-loop: the whole vertical slice over real sockets.

The simulators run as their own process (as under `flytower run`), the service polls them over
Modbus TCP, readings flow over the bus into SQLite and out to a real Mosquitto, and the test
drives everything through the HTTP API and the WebSocket like a script or the console would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import httpx
import pytest
from pymodbus.client import AsyncModbusTcpClient

from edge.config import load_venue
from edge.hil.run import hold_enable as hold_enable_forever
from tests.conftest import (
    RealServer,
    free_port,
    hold_enable,
    run_service,
    wait_for_port,
    wait_until,
    write_venue,
)

pytestmark = pytest.mark.hil


async def points(client: httpx.AsyncClient, device: str) -> dict[str, object]:
    res = await client.get(f"/api/v1/devices/{device}/points")
    res.raise_for_status()
    return {p["name"]: p["value"] for p in res.json()}


async def wait_online(client: httpx.AsyncClient, devices: list[str]) -> None:
    """Every device online and its position read at least once."""

    async def ready() -> bool:
        for d in devices:
            if (await client.get(f"/api/v1/devices/{d}")).json()["health"]["state"] != "online":
                return False
            if (await points(client, d))["position"] is None:
                return False
        return True

    await wait_until(ready, 10, f"{', '.join(devices)} online")


@pytest.fixture
def venue(
    tmp_path: Path,
    mosquitto: RealServer,
    simulator_process: Callable[[Path], subprocess.Popen[bytes]],
) -> Path:
    port_a, port_b = free_port(), free_port()
    path = write_venue(
        tmp_path,
        [
            {"id": "hoist-1", "port": port_a, "start": 2000},
            {"id": "hoist-2", "port": port_b, "unit": 1, "start": 5000},
            {"id": "hoist-3", "port": port_b, "unit": 2, "start": 8000},
        ],
        mqtt_mode="external",
        mqtt_port=mosquitto.port,
    )
    # These tests are about moves and records, not the watchdog (examples/hil/hoist-watchdog
    # is) nor hold-to-run, stale telemetry or following error (tests/hil/test_machinery_safety.py
    # and the supervisor's unit tests are): a 1 s watchdog, a 2 s enable, 0.5 s of stale
    # telemetry and 400 mm of following error ride out a loaded CI machine starving the
    # service's loop for a few hundred ms. CI saw the 0.5 s enable lapse mid-move, a 100 ms
    # stale-telemetry abort and a 50 mm following-error abort, and each stopped the move as it
    # must.
    text = path.read_text().replace("watchdog_ms_default = 200", "watchdog_ms_default = 1000")
    text = text.replace(
        "[telemetry]",
        (
            "[machinery]\nenable_timeout_s = 2.0\nstale_cycles = 25\n\n"
            + "".join(f"[machinery.axes.hoist-{i}]\nfollowing_error = 400\n\n" for i in (1, 2, 3))
            + "[telemetry]"
        ),
        1,
    )
    path.write_text(text)
    simulator_process(path)
    wait_for_port(port_a)
    wait_for_port(port_b)
    return path


async def test_move_to_converges_and_is_recorded(venue: Path, mosquitto: RealServer) -> None:
    mqtt_positions: list[float] = []

    async def listen() -> None:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as mqtt:
            await mqtt.subscribe("flytower/test/stage/hoist-1/position", qos=1)
            async for msg in mqtt.messages:
                assert isinstance(msg.payload, bytes)
                mqtt_positions.append(json.loads(msg.payload)["v"])

    listener = asyncio.create_task(listen())
    try:
        async with (
            run_service(venue) as service,
            contextlib.AsyncExitStack() as stack,
        ):
            base = f"http://127.0.0.1:{service.bound_api_port}"
            async with httpx.AsyncClient(base_url=base, timeout=5) as client:
                await wait_online(client, ["hoist-1", "hoist-2", "hoist-3"])
                before = await points(client, "hoist-1")
                assert before["position"] == pytest.approx(2000, abs=0.1)
                await stack.enter_async_context(hold_enable(client))  # the operator

                res = await client.post(
                    "/api/v1/devices/hoist-1/commands/move_to",
                    json={"position": 3500, "speed": 1200, "acceleration": 1500},
                )
                assert res.status_code == 200, res.text
                assert res.json()["writes"]["target_position"] == 3500

                last: dict[str, object] = {}

                async def arrived() -> bool:
                    last.update(await points(client, "hoist-1"))
                    return bool(last["in_position"]) and abs(float(last["position"]) - 3500) <= 1.0  # type: ignore[arg-type]

                try:
                    await wait_until(arrived, 10, "hoist-1 to reach 3500 mm")
                except BaseException:
                    print(f"hoist-1 points at the time-out: {last}")
                    snap = (await client.get("/api/v1/machinery")).json()
                    print(f"supervisor: {snap['axes']['hoist-1']} moves {snap['moves']}")
                    raise
                after = await points(client, "hoist-1")
                assert after["velocity"] == 0
                assert after["fault"] is False and after["watchdog_ok"] is True
                # The other hoists did not move: commands reach only their device.
                assert (await points(client, "hoist-2"))["position"] == pytest.approx(5000, abs=0.1)
                assert (await points(client, "hoist-3"))["position"] == pytest.approx(8000, abs=0.1)

                history = (
                    await client.get(
                        "/api/v1/devices/hoist-1/points/position/history", params={"limit": 10000}
                    )
                ).json()
                values = history["values"]
                assert values[0] == pytest.approx(2000, abs=0.1)
                assert values[-1] == pytest.approx(3500, abs=1)
                assert len(values) > 20
                assert values == sorted(values)  # a monotonic move, recorded in order
            store_path = service.venue.store_path
        # After a clean stop every reading is in the WAL-mode SQLite file.
        with sqlite3.connect(store_path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            n = db.execute(
                "SELECT count(*) FROM readings r JOIN series s ON s.id = r.series "
                "WHERE s.device = 'hoist-1' AND s.point = 'position'"
            ).fetchone()[0]
        assert n >= len(values)
        assert mqtt_positions and max(mqtt_positions) == pytest.approx(3500, abs=1)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def test_out_of_range_target_is_refused_and_nothing_moves(venue: Path) -> None:
    async with run_service(venue) as service:
        base = f"http://127.0.0.1:{service.bound_api_port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            await wait_online(client, ["hoist-1"])
            res = await client.post(
                "/api/v1/devices/hoist-1/commands/move_to", json={"position": 12500}
            )
            assert res.status_code == 422
            assert "above the maximum 12000 mm" in res.json()["detail"]
            await asyncio.sleep(0.5)
            p = await points(client, "hoist-1")
            assert p["position"] == pytest.approx(2000, abs=0.1)
            assert p.get("target_position") is None  # the axis cycle wrote no setpoint


async def test_drive_watchdog_stops_the_axis_when_the_service_dies(venue: Path) -> None:
    """No heartbeat, no motion: when the service stops mid-move the drive stops by itself."""
    port = load_venue(venue).devices[0].transport.port  # hoist-1's Modbus port
    async with run_service(venue) as service:
        base = f"http://127.0.0.1:{service.bound_api_port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            await wait_online(client, ["hoist-1"])
            r = await client.post("/api/v1/machinery/enable", json={"holder": "test"})
            assert r.status_code == 200
            enable = asyncio.create_task(hold_enable_forever(client, "test"))  # past the service
            try:
                res = await client.post(
                    "/api/v1/devices/hoist-1/commands/move_to",
                    json={"position": 11000, "speed": 800},
                )
                assert res.status_code == 200, res.text

                async def moving() -> bool:
                    return bool((await points(client, "hoist-1"))["moving"])

                await wait_until(moving, 5, "hoist-1 moving")
            except BaseException:
                enable.cancel()
                raise
    enable.cancel()
    await asyncio.gather(enable, return_exceptions=True)
    # The service is gone; read the drive directly over Modbus, as an independent master.
    modbus = AsyncModbusTcpClient("127.0.0.1", port=port)
    await modbus.connect()
    try:

        async def stopped_with_watchdog_fault() -> bool:
            rr = await modbus.read_holding_registers(0, count=11, device_id=1)
            status, fault = rr.registers[6], rr.registers[7]
            return fault == 1 and not status & 0b100  # fault 1 = watchdog, bit 2 = moving

        await wait_until(stopped_with_watchdog_fault, 3, "the drive's watchdog to stop hoist-1")
        rr = await modbus.read_holding_registers(0, count=2, device_id=1)
        position = (rr.registers[0] << 16 | rr.registers[1]) / 10
        assert 2000 < position < 11000
    finally:
        modbus.close()


@pytest.fixture
def realtime_venue(venue: Path) -> Path:
    """The slice's venue with ``[machinery] realtime_priority = 10`` (skipped where the
    system refuses SCHED_FIFO: tests/unit/test_realtime.py covers the refusal)."""
    if subprocess.run(["chrt", "-f", "1", "true"], capture_output=True).returncode != 0:
        pytest.skip("no CAP_SYS_NICE here")
    text = venue.read_text().replace("[machinery]\n", "[machinery]\nrealtime_priority = 10\n", 1)
    venue.write_text(text)
    return venue


async def test_realtime_priority_runs_the_loop_fifo_and_moves(realtime_venue: Path) -> None:
    """``[machinery] realtime_priority``: the service's loop runs SCHED_FIFO while it runs, its
    worker threads do not, an axis still moves, and the scheduling is given back at the end."""
    from edge import realtime

    async with run_service(realtime_venue) as service:
        assert realtime.describe() == "SCHED_FIFO 10"  # this test shares the service's loop
        assert await asyncio.to_thread(realtime.describe) == "SCHED_OTHER 0"
        base = f"http://127.0.0.1:{service.bound_api_port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as client, hold_enable(client):
            await wait_online(client, ["hoist-1"])
            res = await client.post(
                "/api/v1/devices/hoist-1/commands/move_to", json={"position": 2500, "speed": 800}
            )
            assert res.status_code == 200, res.text

            async def arrived() -> bool:
                p = await points(client, "hoist-1")
                return abs(float(p["position"]) - 2500) < 1 and not p["moving"]  # type: ignore[arg-type]

            await wait_until(arrived, 10, "hoist-1 at 2500 mm")
    assert realtime.describe() == "SCHED_OTHER 0"
