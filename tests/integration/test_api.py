"""The REST API and the WebSocket against the real service and in-process simulators.

Every test runs the service (MQTT off) in the test's event loop with the simulated venue served
from the same loop, and talks to it over real HTTP and WebSocket connections. Hostile input must
get a 4xx with a ``detail`` a person can act on, never a 500, and never take the service down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

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

DEVICES = ["hoist-1", "hoist-2"]
MOVE_TO = "/api/v1/devices/hoist-1/commands/move_to"
HISTORY = "/api/v1/devices/hoist-1/points/position/history"
WS_TIMEOUT_S = 5.0


@dataclass
class Api:
    service: Service
    client: httpx.AsyncClient
    responses: list[httpx.Response]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.service.bound_api_port}/ws"


def _client(
    port: int | None, responses: list[httpx.Response], allowed_5xx: frozenset[int] = frozenset()
) -> httpx.AsyncClient:
    """A client that fails the request at once on any unexpected 5xx (a 500 is never right)."""

    async def check(response: httpx.Response) -> None:
        responses.append(response)
        if response.status_code >= 500 and response.status_code not in allowed_5xx:
            await response.aread()
            raise AssertionError(
                f"{response.request.method} {response.request.url} -> "
                f"{response.status_code}: {response.text[:500]}"
            )

    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=10, event_hooks={"response": [check]}
    )


async def _points(client: httpx.AsyncClient, device: str) -> dict[str, Any]:
    res = await client.get(f"/api/v1/devices/{device}/points")
    assert res.status_code == 200, res.text
    return {p["name"]: p["value"] for p in res.json()}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """Two simulated hoists (units 1 and 2 behind one gateway port), both online and read."""
    port = free_port()
    venue = write_venue(
        tmp_path,
        [
            {"id": "hoist-1", "port": port, "unit": 1, "start": 2000},
            {"id": "hoist-2", "port": port, "unit": 2, "start": 5000},
        ],
        mqtt_mode="off",
    )
    responses: list[httpx.Response] = []
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(simulators(venue))
        service = await stack.enter_async_context(run_service(venue))
        client = await stack.enter_async_context(_client(service.bound_api_port, responses))

        async def ready() -> bool:
            for d in DEVICES:
                dev = (await client.get(f"/api/v1/devices/{d}")).json()
                if dev["health"]["state"] != "online":
                    return False
                if (await _points(client, d))["position"] is None:
                    return False
            return True

        await wait_until(ready, 10, "both hoists online with a position")
        yield Api(service, client, responses)
        # Whatever a test threw at it, the service is still up and answering.
        assert (await client.get("/api/v1/health")).status_code == 200
    assert not [r for r in responses if r.status_code >= 500]


async def _still_healthy(client: httpx.AsyncClient) -> None:
    res = await client.get("/api/v1/health")
    assert res.status_code == 200, res.text
    assert res.json()["status"] == "ok"


# --- service, devices, schema, console ------------------------------------------------------


async def test_health_reports_the_service_and_its_devices(api: Api) -> None:
    res = await api.client.get("/api/v1/health")
    assert res.status_code == 200
    body = res.json()
    assert body["status"] == "ok"
    assert body["venue"] == "test"
    assert body["node"] == "stage"
    assert body["devices"] == {"hoist-1": "online", "hoist-2": "online"}
    assert body["uptime_s"] >= 0
    assert isinstance(body["readings_stored"], int)
    assert "store" in body["queues"] and "live" in body["queues"]


async def test_device_list_has_health_and_stats(api: Api) -> None:
    res = await api.client.get("/api/v1/devices")
    assert res.status_code == 200
    devices = {d["id"]: d for d in res.json()}
    assert sorted(devices) == DEVICES
    for dev_id, dev in devices.items():
        assert dev["profile"] == "hoist"
        assert dev["protocol"] == "modbus"
        assert dev["health"]["state"] == "online"
        assert dev["health"]["since"] <= time.time()
        assert dev["stats"]["requests"] >= 1
        assert dev["stats"]["errors"] == 0
        assert dev["stats"]["latency_p50_ms"] is not None
        assert set(dev["commands"]) >= {"move_to", "stop"}
        assert dev["address"].startswith("modbus-tcp://127.0.0.1:")
        one = (await api.client.get(f"/api/v1/devices/{dev_id}")).json()
        assert one["id"] == dev_id


async def test_openapi_document_is_valid_json_with_the_device_paths(api: Api) -> None:
    res = await api.client.get("/api/v1/openapi.json")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("application/json")
    doc = json.loads(res.content)
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] == "Flytower"
    assert "/api/v1/devices" in doc["paths"]
    assert "/api/v1/devices/{device_id}/commands/{command}" in doc["paths"]


async def test_the_document_lists_the_errors_each_operation_gives(api: Api) -> None:
    doc = (await api.client.get("/api/v1/openapi.json")).json()
    ops = doc["paths"]
    command = ops["/api/v1/devices/{device_id}/commands/{command}"]["post"]["responses"]
    # its own (404, 503), the body's (400, 422) and the access gate's (401, 403, 429)
    assert {"400", "401", "403", "404", "422", "429", "503"} <= set(command)
    assert command["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorOut"
    }
    login = ops["/api/v1/auth/login"]["post"]["responses"]  # public: its own 401 and 429
    assert {"401", "429"} <= set(login) and "403" not in login
    assert "429" not in ops["/api/v1/playback/stop"]["post"]["responses"]  # stops: no limit
    export = ops["/api/v1/journal/export"]["get"]["responses"]["200"]["content"]
    assert "text/csv" in export and "application/json" not in export
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    # the one shape every refusal has: a sentence, or problems with where and what
    res = await api.client.get("/api/v1/devices/nope")
    assert res.status_code == 404 and isinstance(res.json()["detail"], str)
    res = await api.client.get("/api/v1/devices/hoist-1/points/position/history?limit=0")
    assert res.status_code == 422 and set(res.json()["detail"][0]) == {"loc", "msg"}


async def test_a_405_names_every_method_of_the_path(api: Api) -> None:
    res = await api.client.put("/api/v1/maintenance/work-orders/1")
    assert res.status_code == 405
    assert res.headers["allow"] == "GET, PATCH"


async def test_console_page_and_its_script_are_served(api: Api) -> None:
    page = await api.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Flytower" in page.text
    script = await api.client.get("/static/console.js")
    assert script.status_code == 200
    assert len(script.content) > 0
    for escape in (
        "/static/%2E%2E/api.py",
        "/static/..%2Fapi.py",
        "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
    ):  # no way out of static/
        assert (await api.client.get(escape)).status_code == 404, escape


# --- errors: 404 ----------------------------------------------------------------------------


async def test_unknown_device_command_and_point_are_404_with_a_clear_detail(api: Api) -> None:
    c = api.client
    res = await c.get("/api/v1/devices/no-such-hoist")
    assert res.status_code == 404
    assert res.json()["detail"] == "no device 'no-such-hoist'"

    res = await c.get("/api/v1/devices/no-such-hoist/points")
    assert res.status_code == 404
    assert "no-such-hoist" in res.json()["detail"]

    res = await c.post("/api/v1/devices/no-such-hoist/commands/stop", json={})
    assert res.status_code == 404
    assert res.json()["detail"] == "no device 'no-such-hoist'"

    res = await c.post("/api/v1/devices/hoist-1/commands/fly_away", json={})
    assert res.status_code == 404
    detail = res.json()["detail"]
    assert "no command 'fly_away'" in detail
    assert "move_to" in detail and "stop" in detail  # says what would have worked

    res = await c.get("/api/v1/devices/hoist-1/points/altitude/history")
    assert res.status_code == 404
    assert res.json()["detail"] == "device 'hoist-1' has no point 'altitude'"

    res = await c.get("/api/v1/devices/no-such-hoist/points/position/history")
    assert res.status_code == 404
    assert res.json()["detail"] == "no device 'no-such-hoist'"
    await _still_healthy(c)


# --- errors: 422 on commands ----------------------------------------------------------------

# (name, request kwargs, a fragment the detail must contain, or None for a pydantic detail list)
INVALID_COMMANDS: list[tuple[str, dict[str, Any], str | None]] = [
    ("above the travel", {"json": {"position": 12500}}, "above the maximum 12000 mm"),
    ("below the travel", {"json": {"position": -1}}, "below the minimum 0 mm"),
    ("speed out of range", {"json": {"position": 3000, "speed": 5000}}, "speed"),
    ("string position", {"json": {"position": "3000"}}, "expected a number, got str"),
    ("bool position", {"json": {"position": True}}, "expected a number, got bool"),
    ("list position", {"json": {"position": [3000]}}, "expected a number, got list"),
    ("null position", {"json": {"position": None}}, "'position' is required"),
    ("missing position", {"json": {}}, "'position' is required"),
    ("no body at all", {}, "'position' is required"),
    ("unknown argument", {"json": {"position": 3000, "turbo": True}}, "unknown argument(s) turbo"),
    ("huge number", {"json": {"position": 1e308}}, "above the maximum"),
    (
        "huge number as text",
        {"content": b'{"position": 1e999}', "headers": {"content-type": "application/json"}},
        None,
    ),
    ("nested garbage", {"json": {"position": {"a": [{"b": {"c": None}}]}}}, "got dict"),
    ("body is an array", {"json": [3000]}, None),
    ("body is a string", {"json": "move"}, None),
    ("body is a number", {"json": 3000}, None),
    (
        "malformed JSON",
        {"content": b'{"position": 3000', "headers": {"content-type": "application/json"}},
        None,
    ),
    (
        "not JSON at all",
        {
            "content": b"position=3000",
            "headers": {"content-type": "application/x-www-form-urlencoded"},
        },
        None,
    ),
    (
        "UTF-8 text body",
        {"content": "position=3000 é".encode(), "headers": {"content-type": "text/plain"}},
        None,
    ),
]


async def test_invalid_commands_are_422_and_nothing_moves(api: Api) -> None:
    c = api.client
    wrong = []
    for name, kwargs, fragment in INVALID_COMMANDS:
        res = await c.post(MOVE_TO, **kwargs)
        detail = res.json().get("detail") if res.status_code == 422 else None
        if res.status_code != 422 or not detail:
            wrong.append(f"{name}: {res.status_code} {res.text[:200]}")
        elif fragment is not None and (not isinstance(detail, str) or fragment not in detail):
            wrong.append(f"{name}: detail {detail!r} lacks {fragment!r}")
    assert not wrong, "\n".join(wrong)

    # The stop command takes no arguments: any argument is refused.
    res = await c.post("/api/v1/devices/hoist-1/commands/stop", json={"now": True})
    assert res.status_code == 422
    assert "unknown argument(s) now" in res.json()["detail"]

    # Refused means refused: no write reached the drive.
    await asyncio.sleep(0.2)
    p = await _points(c, "hoist-1")
    assert p["position"] == pytest.approx(2000, abs=0.1)
    assert not p["moving"]
    # the axis cycle publishes what it writes: nothing was written, so no target either
    assert p.get("target_position") is None
    await _still_healthy(c)


async def test_a_valid_command_still_works_after_the_invalid_ones(api: Api) -> None:
    for _, kwargs, _ in INVALID_COMMANDS[:5]:
        await api.client.post(MOVE_TO, **kwargs)
    async with hold_enable(api.client):
        res = await api.client.post(MOVE_TO, json={"position": 2100, "speed": 1000})
        assert res.status_code == 200, res.text
        body = res.json()
        # a hoist's move_to is a move of the safety supervisor (docs/machinery.md)
        assert (body["device"], body["command"]) == ("hoist-1", "move_to")
        assert body["writes"]["target_position"] == 2100.0 and body["writes"]["move"] >= 1

        async def arrived() -> bool:
            position = (await _points(api.client, "hoist-1"))["position"]
            return bool(abs(position - 2100) < 2)

        await wait_until(arrived, 10, "the hoist at its new target")


async def test_undecodable_json_is_a_client_error(api: Api) -> None:
    """FastAPI answers 400, not 422, when the JSON bytes cannot be decoded at all (not UTF-8,
    nested past the parser's recursion limit); any 4xx with a detail is acceptable here."""
    deep = b'{"position": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    for body in (b"\xff", b'{"position": "\xff"}', deep):
        res = await api.client.post(
            MOVE_TO, content=body, headers={"content-type": "application/json"}
        )
        assert res.status_code in (400, 422), res.text
        assert res.json()["detail"]
    await _still_healthy(api.client)


async def test_binary_body_is_refused_not_500(api: Api) -> None:
    statuses = []
    # A client without the 5xx hook: the fixture's no-500 check must not see these.
    async with httpx.AsyncClient(base_url=api.client.base_url, timeout=10) as raw:
        for content_type in ("application/octet-stream", "text/plain", None):
            headers = {"content-type": content_type} if content_type else {}
            res = await raw.post(MOVE_TO, content=b"\xff\xfe\x00\x01", headers=headers)
            statuses.append(res.status_code)
        await _still_healthy(raw)  # one request failed; the service did not
    assert statuses == [422, 422, 422]


# --- errors: 422 on history -----------------------------------------------------------------


async def test_history_answers_and_refuses_bad_queries(api: Api) -> None:
    c = api.client

    async def stored() -> bool:
        res = await c.get(HISTORY, params={"limit": 5})
        return bool(res.status_code == 200 and len(res.json()["values"]) == 5)

    await wait_until(stored, 5, "five stored positions")
    res = await c.get(HISTORY, params={"limit": 5})
    body = res.json()
    assert body["device"] == "hoist-1" and body["point"] == "position"
    assert body["ts"] == sorted(body["ts"])
    assert set(body["quality"]) == {"good"}
    assert body["values"] == pytest.approx([2000] * 5, abs=0.1)
    now = time.time()
    res = await c.get(HISTORY, params={"start": now - 3600, "end": now + 3600})
    assert res.status_code == 200
    assert len(res.json()["values"]) >= 5

    bad: list[tuple[str, dict[str, Any], str | None]] = [
        ("start after end", {"start": now, "end": now - 1}, "start is after end"),
        ("limit 0", {"limit": 0}, None),
        ("limit 10**9", {"limit": 10**9}, None),
        ("negative limit", {"limit": -5}, None),
        ("fractional limit", {"limit": 1.5}, None),
        ("non-numeric start", {"start": "yesterday"}, None),
        ("non-numeric end", {"end": "[]"}, None),
        ("start nan", {"start": "nan"}, None),
        ("end inf", {"end": "inf"}, None),
        ("huge limit", {"limit": "9" * 400}, None),
    ]
    wrong = []
    for name, params, fragment in bad:
        res = await c.get(HISTORY, params=params)
        if res.status_code != 422 or not res.json().get("detail"):
            wrong.append(f"{name}: {res.status_code} {res.text[:200]}")
        elif fragment is not None and fragment not in res.json()["detail"]:
            wrong.append(f"{name}: detail {res.json()['detail']!r} lacks {fragment!r}")
    assert not wrong, "\n".join(wrong)
    await _still_healthy(c)


# --- hostile paths --------------------------------------------------------------------------

HOSTILE_IDS = [
    "..%2F..%2Fetc%2Fpasswd",
    "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2E%2E",
    "a" * 5000,
    "%E2%98%83-h%C3%B6ist-%F0%9F%8E%AD",
    "%00",
    "hoist-1%00",
    "hoist-1%0D%0AX-Injected:%20yes",
    "%27%20OR%201%3D1%20--",
    "%25s%25s%25n",
    "%FF%FE",
]


async def test_hostile_device_ids_are_404_never_500(api: Api) -> None:
    c = api.client
    wrong = []
    for raw in HOSTILE_IDS:
        for method, suffix in [
            ("GET", ""),
            ("GET", "/points"),
            ("GET", "/points/position/history"),
            ("POST", "/commands/stop"),
        ]:
            url = f"/api/v1/devices/{raw}{suffix}"  # httpx keeps the percent-encoding as is
            res = await c.request(method, url, json={} if method == "POST" else None)
            if res.status_code != 404:
                wrong.append(f"{method} {raw[:40]}{suffix}: {res.status_code} {res.text[:120]}")
            elif "detail" not in res.json():
                wrong.append(f"{method} {raw[:40]}{suffix}: no detail")
            if "X-Injected" in res.headers:
                wrong.append(f"{raw}: a header was injected")
    assert not wrong, "\n".join(wrong)
    # The device that exists was not touched by the near-misses above.
    p = await _points(c, "hoist-1")
    assert p["position"] == pytest.approx(2000, abs=0.1) and p.get("target_position") is None
    await _still_healthy(c)


# --- a device whose drive is down -----------------------------------------------------------


async def test_commands_to_an_unreachable_device_are_503(tmp_path: Path) -> None:
    venue = write_venue(tmp_path, [{"id": "hoist-1", "port": free_port()}], mqtt_mode="off")
    responses: list[httpx.Response] = []
    async with contextlib.AsyncExitStack() as stack:
        service = await stack.enter_async_context(run_service(venue))
        c = await stack.enter_async_context(
            _client(service.bound_api_port, responses, frozenset({503}))
        )

        async def offline() -> bool:
            dev = (await c.get("/api/v1/devices/hoist-1")).json()
            return bool(dev["health"]["state"] == "offline")

        await wait_until(offline, 10, "hoist-1 to be reported offline")
        dev = (await c.get("/api/v1/devices/hoist-1")).json()
        assert dev["health"]["reason"]  # says why
        assert dev["stats"]["errors"] >= 3

        res = await c.post("/api/v1/devices/hoist-1/commands/stop")
        assert res.status_code == 503
        assert "not connected" in res.json()["detail"]
        assert "hoist-1" in res.json()["detail"]

        # a move is the safety supervisor's: refused, with the axis's state as the reason
        async with hold_enable(c):
            res = await c.post(MOVE_TO, json={"position": 3000})
        assert res.status_code == 422
        assert "hoist-1 is offline" in res.json()["detail"]

        # Validation still comes first: a bad command is 422 whatever the device's state.
        res = await c.post(MOVE_TO, json={"position": 99999})
        assert res.status_code == 422

        points = (await c.get("/api/v1/devices/hoist-1/points")).json()
        position = next(p for p in points if p["name"] == "position")
        assert position["value"] is None
        assert position["quality"] == "bad"

        health = (await c.get("/api/v1/health")).json()
        assert health["devices"] == {"hoist-1": "offline"}
    assert {r.status_code for r in responses if r.status_code >= 500} == {503}


# --- WebSocket ------------------------------------------------------------------------------


async def _recv(ws: ClientConnection, timeout_s: float = WS_TIMEOUT_S) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout_s)
    assert isinstance(raw, str), f"expected a text frame, got {raw!r}"
    msg = json.loads(raw)
    assert isinstance(msg, dict)
    return msg


async def _recv_type(
    ws: ClientConnection, kind: str, timeout_s: float = WS_TIMEOUT_S
) -> dict[str, Any]:
    """The next message of ``kind``, skipping the live feeds (readings, health, the machinery and
    alarms snapshots) in between."""
    deadline = time.monotonic() + timeout_s
    while True:
        msg = await _recv(ws, max(0.01, deadline - time.monotonic()))
        if msg["type"] == kind:
            return msg
        assert msg["type"] in ("readings", "health", "machinery", "alarms"), (
            f"unexpected {msg} while waiting for {kind}"
        )


async def test_ws_sends_a_snapshot_then_readings(api: Api) -> None:
    async with websockets.connect(api.ws_url, open_timeout=5, close_timeout=2) as ws:
        first = await _recv(ws)
        assert first["type"] == "snapshot"
        assert [d["id"] for d in first["devices"]] == DEVICES
        assert all(d["health"]["state"] == "online" for d in first["devices"])
        got = {(r["d"], r["p"]): r for r in first["readings"]}
        assert got[("hoist-1", "position")]["v"] == pytest.approx(2000, abs=0.1)
        assert got[("hoist-2", "position")]["v"] == pytest.approx(5000, abs=0.1)
        assert got[("hoist-1", "position")]["q"] == "good"

        readings = await _recv_type(ws, "readings")
        assert readings["readings"]
        assert {r["d"] for r in readings["readings"]} <= set(DEVICES)
        for r in readings["readings"]:
            assert set(r) == {"d", "p", "v", "q", "ts"}
        # Conflated per point: a message carries at most one value of each point.
        keys = [(r["d"], r["p"]) for r in readings["readings"]]
        assert len(keys) == len(set(keys))

        # Rate-limited to about 10 a second, and the feed keeps coming.
        start, count = time.monotonic(), 0
        while time.monotonic() - start < 1.0:
            msg = await _recv(ws)
            count += msg["type"] == "readings"
        assert 3 <= count <= 13


MALFORMED: list[str | bytes] = [
    "not json",
    "[]",
    '{"type":"subscribe","devices":"x"}',
    '{"type":"subscribe","devices":[1,2]}',
    '{"type":"unsubscribe"}',
    "{" * 10_000,
    "null",
    "",
    b"\x00\x01",
]


async def test_ws_malformed_messages_get_an_error_and_the_connection_stays(api: Api) -> None:
    async with websockets.connect(api.ws_url, open_timeout=5, close_timeout=2) as ws:
        assert (await _recv(ws))["type"] == "snapshot"
        for bad in MALFORMED:
            await ws.send(bad)
            err = await _recv_type(ws, "error")
            assert isinstance(err["detail"], str) and err["detail"], (bad, err)
        await ws.send(json.dumps({"type": "subscribe", "devices": ["hoist-1"]}))
        ok = await _recv_type(ws, "subscribed")
        assert ok["devices"] == ["hoist-1"]
        readings = await _recv_type(ws, "readings")
        assert {r["d"] for r in readings["readings"]} == {"hoist-1"}
    await _still_healthy(api.client)


async def test_ws_subscription_narrows_the_feed(api: Api) -> None:
    async with websockets.connect(api.ws_url, open_timeout=5, close_timeout=2) as ws:
        assert (await _recv(ws))["type"] == "snapshot"
        assert (await _recv_type(ws, "readings"))["readings"]  # the feed is flowing

        await ws.send(json.dumps({"type": "subscribe", "devices": ["nonexistent"]}))
        assert (await _recv_type(ws, "subscribed"))["devices"] == ["nonexistent"]
        leaked: list[str] = []
        start = time.monotonic()
        while (left := 1.0 - (time.monotonic() - start)) > 0:
            try:
                msg = await _recv(ws, left)
            except TimeoutError:
                break
            if msg["type"] == "readings":
                leaked += [r["d"] for r in msg["readings"] if r["d"] != "nonexistent"]
        assert not leaked, f"readings of {sorted(set(leaked))} after subscribing to nonexistent"

        await ws.send(json.dumps({"type": "subscribe", "devices": ["hoist-2"]}))
        assert (await _recv_type(ws, "subscribed"))["devices"] == ["hoist-2"]
        readings = await _recv_type(ws, "readings")
        assert {r["d"] for r in readings["readings"]} == {"hoist-2"}

        await ws.send(json.dumps({"type": "subscribe"}))  # no list: everything again
        assert (await _recv_type(ws, "subscribed"))["devices"] is None

        async def both() -> bool:
            msg = await _recv_type(ws, "readings")
            return {r["d"] for r in msg["readings"]} == set(DEVICES)

        await wait_until(both, 5, "readings of both hoists again")


async def test_ws_clients_that_go_away_leave_nothing_behind(api: Api) -> None:
    queues_before = (await api.client.get("/api/v1/health")).json()["queues"]
    for _ in range(5):
        async with websockets.connect(api.ws_url, open_timeout=5, close_timeout=2) as ws:
            assert (await _recv(ws))["type"] == "snapshot"
    ws = await websockets.connect(api.ws_url, open_timeout=5, close_timeout=2)
    assert (await _recv(ws))["type"] == "snapshot"
    ws.transport.abort()  # no closing handshake: the client just vanishes

    async def unsubscribed() -> bool:
        queues = (await api.client.get("/api/v1/health")).json()["queues"]
        return set(queues) == set(queues_before)

    await wait_until(unsubscribed, 5, "every WebSocket subscription to be closed")
    await _still_healthy(api.client)
