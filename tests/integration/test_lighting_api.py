"""The service renders its venue's DMX fixtures through the lighting engine, and the lighting
routes drive it: what the API sets is what an independent sACN receiver sees on the wire."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from drivers.dmx import SacnInput
from edge.service import Service
from tests.conftest import free_port, run_service, wait_until, write_venue

pytestmark = pytest.mark.integration

LO = "127.0.0.1"

FIXTURES = """
[[devices]]
id = "par-1"
profile = "led_par_rgbw"
transport = { kind = "dmx", universe = 1, address = 1 }

[[devices]]
id = "par-2"
profile = "led_par_rgbw"
transport = { kind = "dmx", universe = 1, address = 11 }

[[devices]]
id = "head-1"
profile = "moving_head"
transport = { kind = "dmx", universe = 2, address = 1 }
"""


def lighting_venue(tmp_path: Path, port: int) -> Path:
    venue = write_venue(tmp_path, [])
    section = f"""
[[dmx.outputs]]
protocol = "sacn"
universes = [1, 2, 3]
targets = ["{LO}"]
udp_port = {port}
"""
    text = venue.read_text().replace("[telemetry]", section + "[telemetry]", 1)
    venue.write_text(text + FIXTURES)
    return venue


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Service, httpx.AsyncClient, SacnInput]]:
    port = free_port()
    async with (
        SacnInput(universes=[1, 2, 3], bind=(LO, port)) as rx,
        run_service(lighting_venue(tmp_path, port)) as service,
        httpx.AsyncClient(base_url=f"http://{LO}:{service.bound_api_port}", timeout=5) as api,
    ):
        yield service, api, rx


async def test_status_universes_and_fixtures(
    rig: tuple[Service, httpx.AsyncClient, SacnInput],
) -> None:
    service, api, rx = rig
    assert service.lighting is not None

    async def all_live() -> bool:
        return all(rx.merged(u) is not None for u in (1, 2, 3))

    await wait_until(all_live, 5, "universes 1..3 on the wire, the empty one too")
    body = (await api.get("/api/v1/lighting")).json()
    assert body["universes"] == [1, 2, 3]
    assert set(body["fixtures"]) == {"par-1", "par-2", "head-1"}
    assert body["fixtures"]["head-1"]["output"]["pan"] == pytest.approx(270, abs=0.01)
    assert body["groups"] == {"led_par": ["par-1", "par-2"], "moving_head": ["head-1"]}
    assert body["stats"]["frames"] > 0 and body["stats"]["rate_hz_nominal"] == 44.0
    levels = (await api.get("/api/v1/lighting/universes/2")).json()["levels"]
    assert len(levels) == 512 and levels[0:2] == [128, 0]  # pan at its 16-bit centre
    assert (await api.get("/api/v1/lighting/universes/9")).status_code == 404


async def test_fixture_and_fader_reach_the_wire(
    rig: tuple[Service, httpx.AsyncClient, SacnInput],
) -> None:
    _, api, rx = rig
    r = await api.put(
        "/api/v1/lighting/fixtures/par-2", json={"attributes": {"intensity": 100, "red": 0}}
    )
    assert r.status_code == 200, r.text

    async def shows(channel: int, value: int) -> bool:
        frame = rx.merged(1)
        return frame is not None and int(frame[channel - 1]) == value

    await wait_until(lambda: shows(11, 255), 5, "par-2 at full on the wire")
    assert int(rx.merged(1)[11]) == 0  # type: ignore[index]
    r = await api.put("/api/v1/lighting/faders/grand", json={"level": 50})
    assert r.status_code == 200, r.text
    await wait_until(lambda: shows(11, 128), 5, "the grand master at half")
    r = await api.put("/api/v1/lighting/faders/led_par", json={"level": 0})
    await wait_until(lambda: shows(11, 0), 5, "the PAR group master at zero")
    out = (await api.get("/api/v1/lighting")).json()["fixtures"]["par-2"]["output"]
    assert out["intensity"] == 0.0 and out["red"] == 0.0
    await api.put("/api/v1/lighting/faders/led_par", json={"level": 100})
    r = await api.delete("/api/v1/lighting/fixtures/par-2")
    assert r.json()["released"] == 2
    await wait_until(lambda: shows(12, 255), 5, "par-2 red back at its default")


FIX = "/api/v1/lighting/fixtures/par-1"
ONE = {"intensity": 1}
BAD: list[tuple[str, str, Any, int, str]] = [
    ("put", "/api/v1/lighting/fixtures/ghost", {"attributes": ONE}, 404, "no fixture 'ghost'"),
    ("put", FIX, {"attributes": {"pan": 1}}, 422, "has no attribute 'pan'"),
    ("put", FIX, {"attributes": {"intensity": 101}}, 422, "above"),
    ("put", FIX, {"attributes": {"strobe": 300}}, 422, "0..255"),
    ("put", FIX, {"attributes": {"intensity": "x"}}, 422, "intensity"),
    ("put", FIX, {"attributes": {}}, 422, "attributes"),
    ("put", FIX, {"attributes": ONE, "fade_s": -1}, 422, "fade_s"),
    ("put", FIX, {"attributes": ONE, "fade_s": 1e6}, 422, "fade_s"),
    ("put", FIX, {"attributes": ONE, "curve": "cubic"}, 422, "curve"),
    ("put", FIX, {"attributes": ONE, "bogus": 1}, 422, "bogus"),
    ("put", FIX, [1, 2], 422, "body"),
    ("put", "/api/v1/lighting/faders/grand", {"level": 101}, 422, "level"),
    ("put", "/api/v1/lighting/faders/grand", {"level": True}, 422, "level"),
    ("put", "/api/v1/lighting/faders/grand", {}, 422, "level"),
    ("put", "/api/v1/lighting/faders/nope", {"level": 1}, 404, "no fader 'nope'"),
    ("delete", "/api/v1/lighting/fixtures/ghost", None, 404, "no fixture 'ghost'"),
]


@pytest.mark.parametrize(("method", "url", "body", "status", "text"), BAD)
async def test_bad_requests_are_refused_precisely(
    rig: tuple[Service, httpx.AsyncClient, SacnInput],
    method: str,
    url: str,
    body: Any,
    status: int,
    text: str,
) -> None:
    _, api, _ = rig
    r = await api.request(method.upper(), url, json=body)
    assert r.status_code == status, r.text
    assert text in r.text


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_non_finite_numbers_are_refused(
    rig: tuple[Service, httpx.AsyncClient, SacnInput], literal: str
) -> None:
    _, api, _ = rig
    for url, body in (
        (FIX, '{"attributes": {"intensity": LIT}}'),
        (FIX, '{"attributes": {"intensity": 1}, "fade_s": LIT}'),
        ("/api/v1/lighting/faders/grand", '{"level": LIT}'),
    ):
        body = body.replace("LIT", literal)
        r = await api.put(url, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (url, body, r.text)
