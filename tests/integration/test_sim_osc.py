"""The simulated DSP matrix over UDP, driven by python-osc's own client (an independent peer)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.udp_client import SimpleUDPClient

from simulators.core import DeviceSpec, SimulationError
from simulators.osc_matrix import MatrixServer, OscFamily
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def matrix(port: int, **params: Any) -> AsyncIterator[MatrixServer]:
    family = OscFamily({})
    transport = {"kind": "osc", "host": "127.0.0.1", "port": port}
    device = family.add(
        DeviceSpec("mx", "dsp_matrix", transport, {"model": "dsp_matrix", **params}, "v: mx")
    )
    assert isinstance(device, MatrixServer)
    async with contextlib.AsyncExitStack() as stack:
        for host in family.hosts():
            await stack.enter_async_context(host)
        yield device


async def ask(client: SimpleUDPClient, address: str) -> OscMessage:
    client.send_message(address, [])
    data = await asyncio.to_thread(client._sock.recv, 65536)  # python-osc's socket, its reply
    return OscMessage(data)


def make_client(port: int, timeout: float = 2.0) -> SimpleUDPClient:
    client = SimpleUDPClient("127.0.0.1", port)
    client._sock.settimeout(timeout)
    return client


async def test_queries_writes_and_presets() -> None:
    port = free_port()
    async with matrix(port, preset=2) as device:
        client = make_client(port)
        try:
            reply = await ask(client, "/in/1/gain")
            assert (reply.address, reply.params) == ("/in/1/gain", [-1.0])
            client.send_message("/in/3/gain", -12.5)
            client.send_message("/out/1/mute", True)
            client.send_message("/out/2/gain", 99.0)  # clamped by the device

            async def applied() -> bool:
                return bool(device.truth()["out_2_gain"] == 10.0)

            await wait_until(applied, 5, "the writes")
            assert (await ask(client, "/in/3/gain")).params == [-12.5]
            assert (await ask(client, "/out/1/mute")).params == [True]
            assert (await ask(client, "/out/2/mute")).params == [False]
            client.send_message("/preset", 5)
            assert (await ask(client, "/preset")).params == [5]
            assert (await ask(client, "/in/3/gain")).params == [-4.0]
            assert device.truth()["out_1_mute"] is False

            client.send_message("/in/1/mute", 1)  # not a boolean: refused
            client.send_message("/nope", [])  # unknown: no answer
            client._sock.sendto(b"\x00garbage", ("127.0.0.1", port))
            client.send_message("/in/1/gain", [1.0, 2.0])
            reply = await ask(client, "/in/1/mute")
            assert reply.params == [False]
            c = device.counters
            assert (c.rejected, c.unknown, c.malformed) == (2, 1, 1)
        finally:
            client._sock.close()


async def test_faults_are_seen_by_the_client() -> None:
    port = free_port()
    async with matrix(port) as device:
        client = make_client(port, timeout=0.5)
        try:
            device.inject("silence", {})
            client.send_message("/in/2/gain", -3.0)  # still applied
            with pytest.raises(TimeoutError):
                await ask(client, "/in/2/gain")
            assert device.truth()["in_2_gain"] == -3.0
            device.clear("silence")

            device.inject("nonsense_replies", {})
            assert (await ask(client, "/in/2/gain")).params == ["nonsense"]
            device.inject("nonsense_replies", {"kind": "wrong_address"})
            assert (await ask(client, "/in/2/gain")).address == "/nonsense/in/2/gain"
            device.inject("nonsense_replies", {"kind": "garbage"})
            client.send_message("/in/2/gain", [])
            assert await asyncio.to_thread(client._sock.recv, 1024) == b"\xffnot OSC\x00"
            device.clear()

            device.inject("late_replies", {"delay_s": 1.0})
            client.send_message("/in/2/gain", [])
            with pytest.raises(TimeoutError):  # not within 0.5 s ...
                await asyncio.to_thread(client._sock.recv, 1024)
            client._sock.settimeout(5)
            late = OscMessage(await asyncio.to_thread(client._sock.recv, 1024))
            assert late.params == [-3.0]  # ... but it comes
        finally:
            client._sock.close()


async def test_late_replies_pending_at_shutdown_are_cancelled() -> None:
    port = free_port()
    async with matrix(port) as device:
        device.inject("late_replies", {"delay_s": 30})
        client = make_client(port)
        client.send_message("/preset", [])
        await wait_until(lambda: _queried(device), 5, "the query")
        client._sock.close()
    assert not device._late


async def _queried(device: MatrixServer) -> bool:
    return device.counters.queries == 1


async def test_a_taken_port_is_a_simulation_error() -> None:
    port = free_port()
    async with matrix(port):
        with pytest.raises(SimulationError, match=f"cannot listen on 127.0.0.1:{port}"):
            async with matrix(port):
                pass
