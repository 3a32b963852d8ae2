"""``GET /api/v1/telemetry`` and its export in the running service, with a simulated hoist polled
over real Modbus TCP: live readings become queryable, rollups answer, exports stream, and
every unusable parameter gets a 422 that says why without echoing hostile text."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from drivers.model import Reading
from edge.service import Service
from tests.conftest import free_port, run_service, simulators, wait_until, write_venue

pytestmark = pytest.mark.integration

# A past hour of motor temperature written into the store directly: 1 Hz, value = second.
BASE = float(math.floor(time.time() / 3600) * 3600 - 2 * 86400)
URL = "/api/v1/telemetry"


@dataclass
class Running:
    service: Service
    client: httpx.AsyncClient


@pytest.fixture
async def running(tmp_path: Any) -> AsyncIterator[Running]:
    venue = write_venue(tmp_path, [{"id": "hoist-1", "port": free_port(), "start": 2000}])
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(simulators(venue))
        svc = await stack.enter_async_context(run_service(venue))
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.bound_api_port}", timeout=10)
        )
        await svc.store.write(
            [Reading("hoist-1", "motor_temperature", float(i), 0.0, BASE + i) for i in range(3600)]
        )
        await svc.store.rollup()
        yield Running(svc, client)


async def get(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    res = await client.get(URL, params=params)
    assert res.status_code == 200, res.text
    body: dict[str, Any] = res.json()
    return body


async def test_live_readings_become_queryable(running: Running) -> None:
    t0 = time.time()
    seen: list[float] = []

    async def visible() -> bool:
        body = await get(running.client, device="hoist-1", point="position", resolution="raw")
        seen[:] = body["series"][0]["ts"]
        return bool(seen) and seen[-1] >= t0

    await wait_until(visible, 10, "a position read after the query started")
    body = await get(running.client, device="hoist-1", point=["position", "moving"])
    assert [s["point"] for s in body["series"]] == ["position", "moving"]
    assert body["resolution"] == "raw"  # an hour of a few seconds' readings fits
    moving = body["series"][1]
    good = [v for v, q in zip(moving["values"], moving["quality"], strict=True) if q == "good"]
    assert good and set(good) <= {0, 1}  # (a cycle that timed out on a loaded box: a bad None)


async def test_rollups_by_resolution_and_agg(running: Running) -> None:
    c = running.client
    window: dict[str, Any] = {
        "device": "hoist-1",
        "point": "motor_temperature",
        "from": BASE,
        "to": BASE + 3599,
    }
    body = await get(c, **window, resolution="1m", agg="mean")
    assert (body["resolution"], body["step_s"], body["agg"]) == ("1m", 60, "mean")
    s = body["series"][0]
    assert len(s["ts"]) == 60 and s["ts"][0] == BASE and s["values"][0] == 29.5
    assert s["count"] == [60] * 60
    for agg, want in (("min", 60.0), ("max", 119.0), ("last", 119.0)):
        body = await get(c, **window, resolution="1m", agg=agg)
        assert body["series"][0]["values"][1] == want
    body = await get(c, **window, resolution="auto", max_points=100)
    assert (body["resolution"], body["step_s"]) == ("1m", 60)
    body = await get(c, **window, resolution="auto", max_points=5000)
    assert body["resolution"] == "raw" and len(body["series"][0]["values"]) == 3600
    iso = {
        "from": dt.datetime.fromtimestamp(BASE, dt.UTC).isoformat().replace("+00:00", "Z"),
        "to": dt.datetime.fromtimestamp(BASE + 59, dt.UTC).isoformat(),
    }
    body = await get(c, device="hoist-1", point="motor_temperature", resolution="1s", **iso)
    assert body["series"][0]["values"] == [float(i) for i in range(60)]
    body = await get(c, **window, resolution="raw", limit=10)
    assert body["series"][0]["truncated"] and body["series"][0]["values"][0] == 3590.0


HOSTILE = ["x\x00y", "' OR 1=1 --", "<script>alert(1)</script>", "é" * 150, "../../etc/passwd"]


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"from": 2000.0, "to": 1000.0}, "from is after to"),
        ({"from": 0, "to": 4e9}, "span is longer"),
        ({"from": "yesterday"}, "from: not epoch seconds nor an ISO 8601 time"),
        ({"from": "2026-12-01T10:00:00"}, "needs a zone"),
        ({"to": "nan"}, "to must be a finite"),
        ({"to": "inf"}, "to must be a finite"),
        ({"from": -10}, "between 1970 and 2100"),
    ],
)
async def test_bad_parameters_are_422_with_a_reason(
    running: Running, params: dict[str, Any], why: str
) -> None:
    res = await running.client.get(URL, params={"device": "hoist-1"} | params)
    assert res.status_code == 422, res.text
    assert why in res.json()["detail"]


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"device": "nobody"}, "device: no device 'nobody' on this node"),
        ({"point": "nothing"}, "has no point 'nothing'"),
    ],
)
async def test_a_device_or_point_this_node_lacks_is_404(
    running: Running, params: dict[str, Any], why: str
) -> None:
    for path in (URL, URL + "/export"):
        res = await running.client.get(path, params={"device": "hoist-1", "format": "csv"} | params)
        assert res.status_code == 404, res.text
        assert why in res.json()["detail"]


@pytest.mark.parametrize(
    "params",
    [
        {"resolution": "1h"},
        {"agg": "median"},
        {"limit": 0},
        {"limit": 10**7},
        {"max_points": "many"},
        {"device": "d" * 201},
        {},  # no device
    ],
)
async def test_malformed_parameters_are_422(running: Running, params: dict[str, Any]) -> None:
    res = await running.client.get(URL, params=({"device": "hoist-1"} | params) if params else {})
    assert res.status_code == 422, res.text


async def test_hostile_strings_are_refused_and_never_echoed(running: Running) -> None:
    c = running.client
    for text in HOSTILE:
        for params in ({"device": text}, {"device": "hoist-1", "point": text}):
            res = await c.get(URL, params=params)
            assert res.status_code == 404, res.text
            assert text not in res.text
        res = await c.get(URL + "/export", params={"format": "csv", "device": text})
        assert res.status_code in (404, 422) and text not in res.text
    assert (await c.get("/api/v1/health")).status_code == 200


async def test_csv_and_parquet_exports_stream(running: Running) -> None:
    c = running.client
    window: dict[str, Any] = {
        "device": "hoist-1",
        "point": "motor_temperature",
        "from": BASE,
        "to": BASE + 3599,
    }
    res = await c.get(URL + "/export", params={"format": "csv", **window})
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(res.text)))
    assert rows[0] == ["device", "point", "ts", "value", "quality"]
    assert len(rows) == 3601 and rows[1] == [
        "hoist-1",
        "motor_temperature",
        repr(BASE),
        "0.0",
        "good",
    ]
    res = await c.get(URL + "/export", params={"format": "parquet", "resolution": "1m", **window})
    assert res.status_code == 200
    table = pq.read_table(io.BytesIO(res.content))
    assert table.num_rows == 60
    assert table.column("mean").to_pylist()[:2] == [29.5, 89.5]
    res = await c.get(URL + "/export", params={"format": "xlsx", **window})
    assert res.status_code == 422


async def test_the_history_route_still_answers(running: Running) -> None:
    res = await running.client.get(
        "/api/v1/devices/hoist-1/points/motor_temperature/history",
        params={"start": BASE, "end": BASE + 9},
    )
    assert res.status_code == 200
    assert res.json()["values"] == [float(i) for i in range(10)]
