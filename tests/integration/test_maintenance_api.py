"""The maintenance routes in the running service (real uvicorn, a simulated hoist over Modbus
TCP feeding the readings bus): counters appear from live readings, work orders and records go
through their states, and hostile input is refused with a 4xx that echoes nothing."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge import maintenance as edge_maintenance
from tests.conftest import free_port, run_service, simulators, wait_until, write_venue

pytestmark = pytest.mark.integration
BASE = "/api/v1/maintenance"

MAINTENANCE = """
[maintenance]
store = "maintenance.sqlite3"
flush_interval_s = 0.2
[maintenance.classes.hoist]
cycles = 10000
run_hours = 500
days = 365
[maintenance.devices.hoist-1]
cycles = 2
"""


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    venue = write_venue(tmp_path, [{"id": "hoist-1", "port": free_port(), "start": 2000}])
    venue.write_text(venue.read_text().replace("[telemetry]", MAINTENANCE + "[telemetry]", 1))
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(simulators(venue))
        svc = await stack.enter_async_context(run_service(venue))
        if getattr(svc, "maintenance", None) is None:  # until edge/service.py wires it
            await stack.enter_async_context(edge_maintenance.for_service(svc))
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{svc.bound_api_port}",
                timeout=5,
                headers={"x-flytower-operator": "alice"},
            )
        )
        yield client


async def test_counters_intervals_and_work_orders(api: httpx.AsyncClient) -> None:
    async def counted() -> bool:
        r = await api.get(f"{BASE}/devices/hoist-1")
        return r.status_code == 200 and "cycles" in r.json()["counters"]

    await wait_until(counted, 10, "hoist-1's counters")
    doc = (await api.get(f"{BASE}/devices/hoist-1")).json()
    assert doc["class"] == "hoist" and doc["distance_unit"] == "mm"
    kinds = {i["kind"]: i for i in doc["intervals"]}
    assert kinds["cycles"]["every"] == 2 and kinds["run_hours"]["every"] == 500
    assert kinds["days"]["state"] == "ok"
    overview = (await api.get(BASE)).json()
    assert [d["device"] for d in overview["devices"]] == ["hoist-1"]
    assert (await api.get(BASE, params={"state": "overdue"})).json()["devices"] == []

    r = await api.post(
        f"{BASE}/work-orders",
        json={"device": "hoist-1", "title": "Inspect rope", "description": "annual\ninspection"},
    )
    assert r.status_code == 201, r.text
    wo = r.json()
    assert wo["status"] == "open" and wo["created_by"] == "alice"
    r = await api.patch(f"{BASE}/work-orders/{wo['id']}", json={"assignee": "bob"})
    assert r.json()["status"] == "assigned"
    r = await api.patch(
        f"{BASE}/work-orders/{wo['id']}",
        json={"status": "done", "note": "rope fine", "by": "bob"},
    )
    assert r.status_code == 200 and r.json()["done_by"] == "bob"
    r = await api.patch(f"{BASE}/work-orders/{wo['id']}", json={"status": "open"})
    assert r.status_code == 409 and "done" in r.json()["detail"]
    listed = (await api.get(f"{BASE}/work-orders", params={"status": "done"})).json()
    assert [w["id"] for w in listed["work_orders"]] == [wo["id"]]
    recs = (await api.get(f"{BASE}/records", params={"device": "hoist-1"})).json()["records"]
    assert recs[0]["work_order"] == wo["id"] and recs[0]["by"] == "bob"

    r = await api.post(f"{BASE}/records", json={"device": "hoist-1", "kind": "inspection"})
    assert r.status_code == 201 and r.json()["by"] == "alice"
    ew = (await api.get(f"{BASE}/early-warning")).json()
    assert set(ew["devices"]["hoist-1"]) == {"motor_current", "temperature_rise", "brake_release"}
    r = await api.post(f"{BASE}/early-warning/hoist-1/relearn", json={"model": "brake_release"})
    assert r.status_code == 200
    assert r.json()["models"]["brake_release"]["state"] == "learning"


HOSTILE: list[tuple[str, str, Any, int]] = [
    ("post", "/work-orders", {"device": "hoist-1"}, 422),  # no title
    ("post", "/work-orders", {"device": "ghost", "title": "x"}, 404),
    ("post", "/work-orders", {"device": "../etc", "title": "x"}, 422),
    ("post", "/work-orders", {"device": "hoist-1", "title": "a\x00b"}, 422),
    ("post", "/work-orders", {"device": "hoist-1", "title": "x" * 101}, 422),
    ("post", "/work-orders", {"device": "hoist-1", "title": "x", "description": "y" * 5000}, 422),
    ("post", "/work-orders", {"device": "hoist-1", "title": "x", "priority": "now!"}, 422),
    ("post", "/work-orders", {"device": "hoist-1", "title": "x", "extra": 1}, 422),
    ("post", "/work-orders", {"device": "hoist-1", "title": 5}, 422),
    ("post", "/work-orders", {"device": "hoist-1", "title": "x", "due": -1}, 422),
    ("post", "/work-orders", ["not", "an", "object"], 422),
    ("post", "/records", {"device": "hoist-1", "kind": "party"}, 422),
    ("post", "/records", {"device": "hoist-1", "kind": "service", "at": 1e300}, 422),
    ("post", "/records", {"device": "hoist-1", "kind": "service", "at": 4_000_000_000}, 422),
    ("patch", "/work-orders/1", {}, 422),
    ("patch", "/work-orders/999999", {"note": "x"}, 404),
    ("patch", "/work-orders/-1", {"note": "x"}, 404),
    ("patch", "/work-orders/abc", {"note": "x"}, 422),
    ("patch", "/work-orders/99999999999999999999999", {"note": "x"}, 404),
    ("get", "/work-orders?status=lost", None, 422),
    ("get", "/work-orders?limit=0", None, 422),
    ("get", "/records?device=%00", None, 422),
    ("get", "/devices/ghost", None, 404),
    ("get", "?state=broken", None, 422),
    ("post", "/early-warning/ghost/relearn", {}, 404),
    ("post", "/early-warning/hoist-1/relearn", {"model": "vibes"}, 422),
]


async def test_hostile_input_is_refused_and_changes_nothing(api: httpx.AsyncClient) -> None:
    # one service for every case: starting one per case would cost ~2 s each
    for method, path, body, status in HOSTILE:
        kw: dict[str, Any] = {} if body is None else {"json": body}
        r = await api.request(method.upper(), BASE + path, **kw)
        assert r.status_code == status, (method, path, r.text)
        assert "\x00" not in r.text and "etc" not in r.text and "y" * 100 not in r.text
    assert (await api.get(f"{BASE}/work-orders")).json()["work_orders"] == []
    assert (await api.get(f"{BASE}/records")).json()["records"] == []


async def test_invalid_utf8_and_huge_bodies_are_refused(api: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json"}
    r = await api.post(f"{BASE}/work-orders", content=b'{"title": "\xff\xfe"}', headers=headers)
    assert r.status_code in (400, 422)
    r = await api.post(f"{BASE}/records", content=b"[" * 100_000, headers=headers)
    assert r.status_code in (400, 422)
