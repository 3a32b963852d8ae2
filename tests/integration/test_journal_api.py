"""The journal in the running service: REST, OSC and MQTT device commands are journalled with
their source; ``GET /api/v1/journal`` and its export answer, and refuse hostile parameters."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pyarrow.parquet as pq
import pytest

from drivers.model import OscTransport
from drivers.osc import OscClient
from edge.journal import JournalQuery, JournalStore, journal_path
from edge.service import Service
from tests.conftest import (
    RealServer,
    free_port,
    operator_enable,
    run_service,
    simulators,
    wait_until,
    write_venue,
)

pytestmark = pytest.mark.integration

MOVE_TO = "/api/v1/devices/hoist-1/commands/move_to"


@dataclass
class Running:
    service: Service
    client: httpx.AsyncClient


@pytest.fixture
async def running(tmp_path: Path, mosquitto: RealServer) -> AsyncIterator[Running]:
    venue = write_venue(
        tmp_path,
        [{"id": "hoist-1", "port": free_port(), "start": 2000}],
        mqtt_mode="external",
        mqtt_port=mosquitto.port,
    )
    venue.write_text(
        venue.read_text().replace("[telemetry]", "[osc]\nenabled = true\n[telemetry]", 1)
    )
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(simulators(venue))
        svc = await stack.enter_async_context(run_service(venue, osc_ports=(0, 0)))
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.bound_api_port}", timeout=10)
        )

        async def positioned() -> bool:
            r = svc.live.get(("hoist-1", "position"))
            return r is not None and r.value is not None

        await wait_until(positioned, 10, "hoist-1 has a position")
        await stack.enter_async_context(operator_enable(svc))
        yield Running(svc, client)


async def _events(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    res = await client.get("/api/v1/journal", params=params)
    assert res.status_code == 200, res.text
    events: list[dict[str, Any]] = res.json()["events"]
    return events


async def test_commands_from_rest_osc_and_mqtt_are_journalled_with_their_source(
    running: Running,
) -> None:
    svc, c = running.service, running.client
    t0 = time.time()
    # REST: accepted, then refused by the profile (above the axis' maximum).
    res = await c.post(MOVE_TO, json={"position": 2100, "speed": 200})
    assert res.status_code == 200, res.text
    res = await c.post(MOVE_TO, json={"position": 999_999})
    assert res.status_code == 422
    reason = res.json()["detail"]
    # The response came after the commit: the events are in the file already.
    events = [e for e in await _events(c, since=t0) if e["command"] == "device.move_to"]
    assert [(e["source_kind"], e["result"]) for e in events] == [
        ("user", "ok"),
        ("user", "refused"),
    ]
    ok, refused = events
    assert ok["targets"] == ["hoist-1"] and ok["args"] == {"position": 2100, "speed": 200}
    assert ok["source"].startswith("rest 127.0.0.1:")
    assert ok["executed"] >= ok["ts"] >= t0 and ok["duration_s"] >= 0
    assert refused["reason"] == reason and refused["executed"] is None

    # OSC
    assert svc.osc is not None and svc.osc.udp_port is not None
    osc = OscTransport(kind="osc", host="127.0.0.1", port=svc.osc.udp_port, protocol="udp")
    async with OscClient(osc) as client:
        reply = await client.request(
            "/flytower/device/hoist-1/command/stop", json.dumps({}), timeout_s=3
        )
        assert reply.ok, reply
    # the device command, and the supervisor's stop it became (docs/machinery.md)
    e, sup = await _events(c, source="osc")
    assert (e["command"], e["result"], e["targets"]) == ("device.stop", "ok", ["hoist-1"])
    assert (sup["command"], sup["result"]) == ("stop", "ok")
    assert e["source"].startswith("/flytower/device/hoist-1/command/stop from osc.udp://")

    # MQTT: a command on the device's cmd topic, answered on its reply topic.
    base = f"flytower/test/{svc.node}/hoist-1"
    async with aiomqtt.Client("127.0.0.1", svc.mqtt_port) as m:
        await m.subscribe(f"{base}/cmd/stop/reply", qos=1)
        await m.publish(
            f"{base}/cmd/stop",
            json.dumps({"id": "j1", "args": {}, "ts": int(time.time() * 1000)}),
            qos=1,
        )
        async with asyncio.timeout(5):
            async for message in m.messages:
                assert json.loads(message.payload)["id"] == "j1"
                break
    e, _ = await _events(c, source="mqtt")
    assert (e["command"], e["targets"], e["source"]) == (
        "device.stop",
        ["hoist-1"],
        "mqtt hoist-1/cmd/stop",
    )

    # The service's own start is journalled by the system; the device filter sees the four
    # device commands, and the supervisor's move and stops beside them.
    (start,) = [e for e in await _events(c, source="system") if e["command"] == "service.start"]
    assert start["command"] == "service.start"
    on_hoist = [e["command"] for e in await _events(c, device="hoist-1")]
    assert [x for x in on_hoist if x.startswith("device.")] == [
        "device.move_to",
        "device.move_to",
        "device.stop",
        "device.stop",
    ]
    assert {"move", "stop"} <= set(on_hoist)


async def _has(c: httpx.AsyncClient, **params: Any) -> bool:
    return bool(await _events(c, **params))


async def test_the_stop_is_journalled_and_the_file_is_its_own(tmp_path: Path) -> None:
    venue = write_venue(tmp_path, [{"id": "hoist-1", "port": free_port()}])
    async with simulators(venue), run_service(venue) as svc:
        path = svc.journal.path
    assert path == journal_path(svc.venue.store_path) != svc.venue.store_path
    async with JournalStore(path) as j:
        got, _ = await j.query(JournalQuery())
    assert [e.event.command for e in got] == ["service.start", "service.stop"]


async def test_window_limit_and_exports(running: Running) -> None:
    c = running.client

    async def idle() -> bool:
        return not (await c.get("/api/v1/machinery")).json()["moves"]

    for pos in (2010, 2020, 2030):
        assert (await c.post(MOVE_TO, json={"position": pos})).status_code == 200
        await wait_until(idle, 5, f"the move to {pos} done")  # one move of an axis at a time
    params = {"limit": 2, "device": "hoist-1", "source": "user"}
    body = (await c.get("/api/v1/journal", params=params)).json()
    assert body["truncated"] is True
    # the newest two: the last request and what the supervisor made of it
    assert {e["command"] for e in body["events"]} <= {"device.move_to", "move", "move.done"}
    assert body["events"][-1]["command"] == "move.done"

    res = await c.get(
        "/api/v1/journal/export", params={"format": "csv", "device": "hoist-1", "source": "user"}
    )
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/csv")
    assert 'filename="journal.csv"' in res.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(res.text, newline="")))
    asked = [json.loads(r["args"])["position"] for r in rows if r["command"] == "device.move_to"]
    assert asked == [2010, 2020, 2030]

    res = await c.get("/api/v1/journal/export", params={"format": "parquet", "source": "user"})
    assert res.status_code == 200
    table = pq.read_table(io.BytesIO(res.content))
    assert table.column("command").to_pylist().count("device.move_to") == 3
    assert set(table.column("source_kind").to_pylist()) == {"user"}


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"since": "nan"}, "since must be a finite number"),
        ({"until": "inf"}, "until must be a finite number"),
        ({"since": "2", "until": "1"}, "since is after until"),
        ({"device": ""}, "device must be 1 to 1000 characters"),
        ({"device": "a\x00b"}, "device must be 1 to 1000 characters"),
        ({"device": "x" * 1001}, "device must be 1 to 1000 characters"),
        ({"source": "'; DROP TABLE journal; --"}, "source must be one of"),
        ({"limit": "0"}, "limit"),
        ({"limit": "100000001"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"since": "yesterday"}, "since"),
    ],
)
async def test_hostile_query_parameters_are_422_with_a_reason(
    running: Running, params: dict[str, str], reason: str
) -> None:
    for path in ("/api/v1/journal", "/api/v1/journal/export"):
        res = await running.client.get(path, params={"format": "csv", **params})
        assert res.status_code == 422, (path, params, res.text)
        assert reason in json.dumps(res.json()["detail"]), res.text
    assert await running.service.journal.count() >= 1  # the table is still there


async def test_export_format_is_required_and_checked(running: Running) -> None:
    for params in ({}, {"format": "xlsx"}, {"format": "csv", "limit": "-1"}):
        res = await running.client.get("/api/v1/journal/export", params=params)
        assert res.status_code == 422, res.text
        assert "format" in res.text or "limit" in res.text


async def test_there_is_no_route_that_changes_the_journal(running: Running) -> None:
    c = running.client
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        res = await c.request(method, "/api/v1/journal")
        assert res.status_code == 405, (method, res.status_code)
