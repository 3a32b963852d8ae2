"""The simulator control endpoint over real HTTP (httpx and a raw socket as the clients).

Every route of the contract, and hostile input on each: unknown devices are 404, unknown
faults, bad parameters and bodies that are not JSON objects are 422 with the reason, and
nothing a client sends produces a 500 or stops the server.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from simulators import runner
from tests.unit.test_sim_runner import FakeFamily, dev, fake_registry  # noqa: F401 (autouse)

pytestmark = pytest.mark.integration


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    venue = {
        "devices": [
            {**dev("a"), "simulate": {"model": "fake_sensor", "level": 2}},
            dev("b"),
            dev("nan"),
        ]
    }
    ports: list[int] = []
    ready = asyncio.Event()

    def on_ready(port: int) -> None:
        ports.append(port)
        ready.set()

    task = asyncio.create_task(runner.serve(venue, "v.toml", port=0, ready=on_ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}/sim/v1") as c:
            yield c
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


async def test_health_devices_and_one_device(client: httpx.AsyncClient) -> None:
    health = await ok(await client.get("/health"))
    assert health == {"ready": True, "pid": os.getpid(), "devices": 3, "processes": 1}
    listing = await ok(await client.get("/devices"))
    assert [d["id"] for d in listing] == ["a", "b", "nan"]
    assert set(listing[0]) == {"id", "model", "family", "faults", "active"}
    assert listing[0]["faults"][0] == {
        "name": "estop",
        "description": "the e-stop chain is open",
        "params": {},
    }
    one = await ok(await client.get("/devices/a"))
    assert one["truth"] == {"level": 2.0, "estop": False}
    assert one["model"] == "fake_sensor"


async def test_truth_in_bulk_and_by_ids(client: httpx.AsyncClient) -> None:
    everything = await ok(await client.get("/truth"))
    assert set(everything["devices"]) == {"a", "b", "nan"}
    assert isinstance(everything["t"], float)
    some = await ok(await client.get("/truth", params={"ids": "b,a"}))
    assert set(some["devices"]) == {"a", "b"}
    assert (await ok(await client.get("/truth", params={"ids": ""})))["devices"] == {}
    missing = await client.get("/truth", params={"ids": "a,zz"})
    assert missing.status_code == 404
    assert "zz" in missing.json()["detail"]


async def test_a_non_finite_truth_value_is_null(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.test_sim_runner import FakeDevice

    monkeypatch.setattr(
        FakeDevice, "truth", lambda self: {"level": math.nan if self.id == "nan" else 1.0}
    )
    assert (await ok(await client.get("/devices/nan")))["truth"] == {"level": None}
    assert (await ok(await client.get("/truth")))["devices"]["nan"] == {"level": None}


async def test_inject_and_clear_faults(client: httpx.AsyncClient) -> None:
    assert await ok(await client.post("/devices/a/faults/drift", json={"rate": 2.5})) == {
        "active": {"drift": {"rate": 2.5}}
    }
    # An empty body is no parameters.
    assert (await ok(await client.post("/devices/a/faults/estop")))["active"] == {
        "drift": {"rate": 2.5},
        "estop": {},
    }
    assert (await ok(await client.get("/devices/a")))["active"]["drift"] == {"rate": 2.5}
    assert await ok(await client.delete("/devices/a/faults/drift")) == {"active": {"estop": {}}}
    await client.post("/devices/a/faults/drift", json={})
    assert await ok(await client.delete("/devices/a/faults")) == {"active": {}}


async def test_estop_opens_and_closes_every_chained_device(client: httpx.AsyncClient) -> None:
    opened = await ok(await client.post("/estop", json={"open": True}))
    assert opened == {"open": True, "devices": ["a", "b", "nan"]}
    truth = (await ok(await client.get("/truth")))["devices"]
    assert truth["a"]["estop"] and truth["b"]["estop"]
    await ok(await client.post("/estop", json={"open": False}))
    assert not (await ok(await client.get("/devices/b")))["truth"]["estop"]


async def test_stats(client: httpx.AsyncClient) -> None:
    stats = await ok(await client.get("/stats"))
    assert set(stats) == {"uptime_s", "processes", "families"}
    assert stats["processes"][0]["devices"] == 3
    assert stats["processes"][0]["cpu_s"] > 0
    assert stats["families"]["fake"]["devices"] == 3


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/devices/zz"),
        ("POST", "/devices/zz/faults/drift"),
        ("DELETE", "/devices/zz/faults/drift"),
        ("DELETE", "/devices/zz/faults"),
    ],
)
async def test_unknown_device_is_404(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path)
    assert response.status_code == 404
    assert response.json() == {"detail": "no simulated device 'zz'"}


@pytest.mark.parametrize(
    ("method", "path", "body", "detail"),
    [
        ("POST", "/devices/a/faults/melt", b"{}", "a: no fault 'melt'"),
        ("DELETE", "/devices/a/faults/melt", b"", "a: no fault 'melt' (known: estop, drift)"),
        ("POST", "/devices/a/faults/drift", b'{"rate": "fast"}', "a: drift: bad parameters"),
        ("POST", "/devices/a/faults/drift", b'{"speed": 1}', "a: drift: bad parameters"),
        ("POST", "/devices/a/faults/drift", b"rate=2", "a/drift parameters: not valid JSON"),
        ("POST", "/devices/a/faults/drift", b"[1, 2]", "expected a JSON object, got list"),
        ("POST", "/devices/a/faults/drift", b'{"rate": NaN}', "NaN is not a number"),
        ("POST", "/devices/a/faults/drift", b'{"rate": 1e999}', "1e999 is out of range"),
        ("POST", "/devices/a/faults/drift", b"\xff\xfe{", "not valid JSON"),
        ("POST", "/estop", b"", 'expected {"open": true} or {"open": false}'),
        ("POST", "/estop", b'{"open": "yes"}', 'expected {"open": true}'),
        ("POST", "/estop", b'{"open": 1}', 'expected {"open": true}'),
        ("POST", "/estop", b'{"open": true, "all": 1}', 'expected {"open": true}'),
        ("POST", "/estop", b"open", "estop: not valid JSON"),
    ],
)
async def test_bad_input_is_422_with_the_reason(
    client: httpx.AsyncClient, method: str, path: str, body: bytes, detail: str
) -> None:
    response = await client.request(method, path, content=body)
    assert response.status_code == 422, response.text
    assert detail in response.json()["detail"]
    assert await ok(await client.get("/health"))


async def test_wrong_routes_and_methods_are_4xx(client: httpx.AsyncClient) -> None:
    assert (await client.get("/nothing")).status_code == 404
    assert (await client.put("/devices/a/faults/drift")).status_code == 405
    assert (await client.get("/estop")).status_code == 405
    assert (await client.post("/devices/a/faults/" + "x" * 5000)).status_code == 422


async def test_garbage_on_the_socket_does_not_stop_the_server(client: httpx.AsyncClient) -> None:
    host, port = client.base_url.host, client.base_url.port
    assert port is not None
    for garbage in [b"\x00\xff" * 100 + b"\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"POST /sim/v1/e"]:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(garbage)
        await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
    assert await ok(await client.get("/health"))


async def test_a_taken_port_is_an_os_error() -> None:
    from simulators.control import bind

    first = bind("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(OSError, match=f"control endpoint 127.0.0.1:{port}: .*in use"):
            bind("127.0.0.1", port)
    finally:
        first.close()
