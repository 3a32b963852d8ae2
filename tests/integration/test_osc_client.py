"""OscClient against python-osc's own asyncio servers (UDP, and TCP in OSC 1.1 SLIP mode),
and against our server for the full round trip."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import AsyncIOOSCUDPServer
from pythonosc.osc_tcp_server import AsyncOSCTCPServer

from drivers.base import DeviceUnavailable
from drivers.model import HealthState, OscTransport
from drivers.osc import OscClient, OscDecodeError, OscRouter, OscServer, OscServerConfig
from drivers.osc import address_space as space
from drivers.osc.router import OscRequest
from drivers.osc.wire import Message, decode_reply, encode_bundle, encode_message
from tests.conftest import free_port, wait_for_port, wait_until

pytestmark = pytest.mark.integration


def _dispatcher(seen: list[tuple[str, tuple[Any, ...]]]) -> Dispatcher:
    """A QLab-like peer: answers /go and /cue/n/start on /reply/..., a gain on its own address."""

    def qlab(address: str, *args: Any) -> tuple[str, str]:
        seen.append((address, args))
        body = {"address": address, "status": "ok", "data": list(args)}
        return "/reply" + address, json.dumps(body)

    def gain(address: str, *args: Any) -> tuple[str, float]:
        seen.append((address, args))
        return address, 0.5

    def bad(address: str, *args: Any) -> tuple[str, str]:
        return "/reply" + address, "not json"

    def silent(address: str, *args: Any) -> None:
        seen.append((address, args))

    def chatty(address: str, *args: Any) -> tuple[str, str]:
        return "/meter/1", "unsolicited"

    d = Dispatcher()
    d.map("/go", qlab)
    d.map("/cue/*/start", qlab)
    d.map("/mixer/gain", gain)
    d.map("/bad", bad)
    d.map("/silent", silent)
    d.map("/chatty", chatty)
    return d


@contextlib.asynccontextmanager
async def python_osc_peer(
    protocol: str,
) -> AsyncIterator[tuple[OscTransport, list[tuple[str, tuple[Any, ...]]]]]:
    seen: list[tuple[str, tuple[Any, ...]]] = []
    port = free_port()
    transport = OscTransport(kind="osc", host="127.0.0.1", port=port, protocol=protocol)
    if protocol == "udp":
        server = AsyncIOOSCUDPServer(
            ("127.0.0.1", port), _dispatcher(seen), asyncio.get_running_loop()
        )
        udp, _ = await server.create_serve_endpoint()
        try:
            yield transport, seen
        finally:
            udp.close()
    else:
        tcp = AsyncOSCTCPServer("127.0.0.1", port, _dispatcher(seen), mode="1.1")
        task = asyncio.create_task(tcp.start(), name="python-osc tcp server")
        await asyncio.to_thread(wait_for_port, port)
        try:
            yield transport, seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


BOTH = pytest.mark.parametrize("protocol", ["udp", "tcp"])


@BOTH
async def test_request_reply_and_send(protocol: str) -> None:
    async with python_osc_peer(protocol) as (transport, seen), OscClient(transport) as client:
        reply = await client.request("/go", timeout_s=5)
        assert (reply.address, reply.status, reply.data, reply.ok) == ("/go", "ok", [], True)
        reply = await client.request("/cue/3/start", 1, 2.5, "x", timeout_s=5)
        assert reply.data == [1, 2.5, "x"]
        gain = await client.request("/mixer/gain", reply_to="/mixer/gain", timeout_s=5)
        assert (gain.status, gain.data) == ("ok", [0.5])
        client.send("/silent", 7)
        await client.request("/go", timeout_s=5)  # the peer handles a connection in order
        assert ("/silent", (7,)) in seen
        assert client.health.state is HealthState.ONLINE
        assert client.stats.requests == 4 and client.stats.percentile_ms(0.99) is not None


@BOTH
async def test_concurrent_requests_are_all_matched(protocol: str) -> None:
    async with python_osc_peer(protocol) as (transport, _), OscClient(transport) as client:
        replies = await asyncio.gather(
            *(client.request(f"/cue/{n}/start", n, timeout_s=5) for n in range(20))
        )
    assert [r.data for r in replies] == [[n] for n in range(20)]


@BOTH
async def test_no_reply_times_out_and_degrades_health(protocol: str) -> None:
    async with python_osc_peer(protocol) as (transport, _), OscClient(transport) as client:
        with pytest.raises(TimeoutError):
            await client.request("/silent", timeout_s=0.2)
        assert client.health.state is HealthState.DEGRADED
        assert client.stats.errors == 1
        assert not client._pending  # the waiter was removed
        await client.request("/go", timeout_s=5)
        assert client.health.state is HealthState.ONLINE


async def test_invalid_reply_is_an_error_and_unsolicited_messages_are_passed_on() -> None:
    got: list[Message] = []
    async with (
        python_osc_peer("udp") as (transport, _),
        OscClient(transport, on_message=got.append) as client,
    ):
        with pytest.raises(OscDecodeError, match="not JSON"):
            await client.request("/bad", timeout_s=5)
        client.send("/chatty")
        await client.request("/go", timeout_s=5)
    assert got == [Message("/meter/1", ("unsolicited",))]


async def test_udp_peer_not_listening_times_out() -> None:
    transport = OscTransport(kind="osc", host="127.0.0.1", port=free_port())
    async with OscClient(transport) as client:
        with pytest.raises(TimeoutError):
            await client.request("/go", timeout_s=0.3)


async def test_tcp_refused_and_closed_connections_fail_clearly() -> None:
    port = free_port()
    transport = OscTransport(kind="osc", host="127.0.0.1", port=port, protocol="tcp")
    client = OscClient(transport)
    with pytest.raises(ConnectionRefusedError):
        await client.__aenter__()
    assert client.health.state is HealthState.OFFLINE

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # wait for the request, then close without a reply
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", port)
    try:
        async with OscClient(transport) as client:
            with pytest.raises(DeviceUnavailable, match="closed by the peer"):
                await client.request("/go", timeout_s=5)
            assert client.health.state is HealthState.OFFLINE
            with pytest.raises(DeviceUnavailable, match="not connected"):
                client.send("/go")
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
async def test_client_against_our_server_with_passcode_and_bundles(protocol: str) -> None:
    calls: list[str] = []

    async def handler(req: OscRequest) -> Any:
        calls.append(req.address)
        return {"cue": req.params.get("number")}

    router = OscRouter()
    router.add(space.CUE_START, handler)
    cfg = OscServerConfig(udp_port=0, tcp_port=0, passcode="pw")
    async with OscServer(cfg, router) as server:
        port = server.udp_port if protocol == "udp" else server.tcp_port
        transport = OscTransport(kind="osc", host="127.0.0.1", port=port or 0, protocol=protocol)
        unsolicited: list[Message] = []
        async with OscClient(transport, on_message=unsolicited.append) as client:
            assert (await client.request("/cue/1/start", timeout_s=5)).status == "denied"
            assert (await client.request("/connect", "pw", timeout_s=5)).ok
            reply = await client.request("/cue/1/start", timeout_s=5)
            assert (reply.status, reply.data) == ("ok", {"cue": "1"})
            reply = await client.request("/cue/1/start", 3, timeout_s=5)
            assert reply.status == "error" and "expects ()" in reply.data
            nested = encode_bundle([encode_message("/cue/3/start")])
            bundle = encode_bundle([encode_message("/cue/2/start"), nested])
            client.send_packet(bundle)

            async def both_answered() -> bool:
                return len(unsolicited) == 2

            await wait_until(both_answered, 5, "the bundle's replies")
    assert calls == ["/cue/1/start", "/cue/2/start", "/cue/3/start"]
    assert [(m.address, decode_reply(m.address, m.args).data) for m in unsolicited] == [
        ("/reply/cue/2/start", {"cue": "2"}),
        ("/reply/cue/3/start", {"cue": "3"}),
    ]
