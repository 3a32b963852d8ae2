"""OSC into the running service: device commands and point reads reach the real drivers.

The service runs with [osc] enabled on ephemeral ports against simulated hoists; the peer is
our OSC client over real UDP and TCP sockets (the driver's own tests use python-osc's).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.model import OscTransport
from drivers.osc import OscClient
from edge.service import Service
from tests.conftest import (
    free_port,
    operator_enable,
    run_service,
    simulators,
    wait_until,
    write_venue,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    venue = write_venue(tmp_path, [{"id": "hoist-1", "port": free_port(), "start": 2000}])
    venue.write_text(
        venue.read_text().replace("[telemetry]", "[osc]\nenabled = true\n[telemetry]", 1)
    )
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(simulators(venue))
        svc = await stack.enter_async_context(run_service(venue, osc_ports=(0, 0)))

        async def positioned() -> bool:
            r = svc.live.get(("hoist-1", "position"))
            return r is not None and r.value is not None

        await wait_until(positioned, 10, "hoist-1 has a position")
        await stack.enter_async_context(operator_enable(svc))
        yield svc


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
async def test_point_read_and_command_over_osc(service: Service, protocol: str) -> None:
    assert service.osc is not None
    port = service.osc.udp_port if protocol == "udp" else service.osc.tcp_port
    assert port is not None
    transport = OscTransport(kind="osc", host="127.0.0.1", port=port, protocol=protocol)  # type: ignore[arg-type]
    async with OscClient(transport) as client:
        reply = await client.request("/flytower/device/hoist-1/point/position", timeout_s=3)
        assert reply.ok, reply
        assert reply.data["quality"] == "good"
        assert abs(reply.data["value"] - 2000) < 1

        args = json.dumps({"position": 2100, "speed": 200})
        reply = await client.request("/flytower/device/hoist-1/command/move_to", args, timeout_s=3)
        assert reply.ok, reply
        assert ["target_position", 2100.0] in reply.data["writes"]

        async def moved() -> bool:
            r = service.live.get(("hoist-1", "position"))
            return r is not None and isinstance(r.value, float) and r.value > 2010

        await wait_until(moved, 10, "the hoist moves after the OSC command")
        await client.request("/flytower/device/hoist-1/command/stop", timeout_s=3)


@pytest.mark.parametrize(
    ("address", "args", "reason"),
    [
        ("/flytower/device/nope/point/position", (), "no device 'nope'"),
        ("/flytower/device/hoist-1/point/nope", (), "no reading of hoist-1/nope"),
        ("/flytower/device/hoist-1/command/fly", ("{}",), "has no command 'fly'"),
        (
            "/flytower/device/hoist-1/command/move_to",
            ('{"position": 99999999, "speed": 100}',),
            "above the maximum",
        ),
        ("/flytower/device/hoist-1/command/move_to", ("not json",), "JSON"),
        ("/go", (), "no cue engine"),
        ("/cue/12.5/start", (), "no cue engine"),
        ("/no/such/address", (), "/no/such/address"),
    ],
)
async def test_refused_requests_say_why(
    service: Service, address: str, args: tuple[str, ...], reason: str
) -> None:
    assert service.osc is not None and service.osc.udp_port is not None
    transport = OscTransport(kind="osc", host="127.0.0.1", port=service.osc.udp_port)
    async with OscClient(transport) as client:
        reply = await client.request(address, *args, timeout_s=3)
    assert reply.status == "error"
    assert reason in json.dumps(reply.data), reply
    assert service.links()["osc"]["state"] == "online"
