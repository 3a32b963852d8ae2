"""The OSC server on loopback, driven by python-osc's own clients as the independent peer.

UDP: ``pythonosc.udp_client.SimpleUDPClient`` (blocking; run in a thread so the server keeps
the loop). TCP: ``pythonosc.tcp_client.AsyncSimpleTCPClient`` in OSC 1.1 (SLIP) mode, and raw
sockets where the test needs bytes python-osc would never send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pythonosc import slip
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import build_msg
from pythonosc.tcp_client import AsyncSimpleTCPClient
from pythonosc.udp_client import SimpleUDPClient

from drivers.model import HealthState
from drivers.osc import address_space as space
from drivers.osc.router import OscRequest, OscRequestError, OscRouter
from drivers.osc.server import OscServer, OscServerConfig
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

TIMEOUT_S = 5.0


class Recorder:
    """The service's side: handlers that record what they were called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.router = OscRouter()
        for spec in (space.GO, space.STOP, space.PANIC, space.CUE_START, space.CUE_STOP):
            self.router.add(spec, self.record)
        self.router.add(space.PLAYHEAD, self.record)
        self.router.add(space.DEVICE_COMMAND, self.command)
        self.router.add(space.DEVICE_POINT, self.point)

    async def record(self, req: OscRequest) -> Any:
        self.calls.append((req.address, dict(req.params), dict(req.args)))
        return None

    async def command(self, req: OscRequest) -> Any:
        await self.record(req)
        if req.params["name"] == "explode":
            raise RuntimeError("a handler bug")
        if req.params["name"] == "nan":
            return math.nan
        if req.params["id"] != "hoist1":
            raise OscRequestError(f"no device {req.params['id']}")
        return {"writes": req.args.get("args", {})}

    async def point(self, req: OscRequest) -> Any:
        await self.record(req)
        return {"value": 1500.0, "quality": "good", "ts": 1.0}


@asynccontextmanager
async def serving(**config: Any) -> AsyncIterator[tuple[OscServer, Recorder]]:
    recorder = Recorder()
    cfg = OscServerConfig(host="127.0.0.1", udp_port=0, tcp_port=0, **config)
    async with OscServer(cfg, recorder.router) as server:
        yield server, recorder


def _reply(dgram: bytes) -> dict[str, Any]:
    """A reply parsed by python-osc; the body as a dict plus the OSC address."""
    msg = OscMessage(dgram)
    (body,) = msg.params
    return {"osc": msg.address, **json.loads(body)}


class Udp:
    """One python-osc UDP client (one source address:port) used from async tests."""

    def __init__(self, port: int) -> None:
        self.client = SimpleUDPClient("127.0.0.1", port)

    async def ask(self, address: str, *args: Any) -> dict[str, Any]:
        self.client.send_message(address, list(args))
        return await self.receive()

    async def receive(self, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        data = await asyncio.to_thread(self.client.receive, timeout_s)
        assert data, "no reply"
        return _reply(data)

    async def nothing_within(self, seconds: float) -> bool:
        return await asyncio.to_thread(self.client.receive, seconds) == b""

    def send_raw(self, data: bytes) -> None:
        self.client._sock.sendto(data, (self.client._address, self.client._port))

    def close(self) -> None:
        self.client.close()


class Tcp:
    """python-osc's asyncio TCP client in OSC 1.1 (SLIP) mode."""

    def __init__(self, port: int) -> None:
        self.client = AsyncSimpleTCPClient("127.0.0.1", port, mode="1.1")
        self._pending: list[bytes] = []

    async def __aenter__(self) -> Tcp:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def ask(self, address: str, *args: Any) -> dict[str, Any]:
        await self.client.send_message(address, list(args))
        return await self.receive()

    async def receive(self) -> dict[str, Any]:
        while not self._pending:
            frames = await self.client.receive(TIMEOUT_S)
            assert frames, "no reply"
            self._pending += [f for f in frames if f]
        return _reply(self._pending.pop(0))


@asynccontextmanager
async def peer(kind: str, server: OscServer) -> AsyncIterator[Udp | Tcp]:
    if kind == "udp":
        assert server.udp_port is not None
        udp = Udp(server.udp_port)
        try:
            yield udp
        finally:
            udp.close()
    else:
        assert server.tcp_port is not None
        async with Tcp(server.tcp_port) as tcp:
            yield tcp


BOTH = pytest.mark.parametrize("kind", ["udp", "tcp"])

# --- the address space --------------------------------------------------------------------------

GOOD: list[tuple[tuple[Any, ...], Any]] = [
    (("/go",), None),
    (("/stop",), None),
    (("/panic",), None),
    (("/cue/12.5/start",), None),
    (("/cue/*/stop",), None),
    (("/playhead/7",), None),
    (
        ("/flytower/device/hoist1/command/move_to", '{"position_mm": 1500}'),
        {"writes": {"position_mm": 1500}},
    ),
    (("/flytower/device/hoist1/command/stop",), {"writes": {}}),
    (
        ("/flytower/device/hoist1/point/position",),
        {
            "value": 1500.0,
            "quality": "good",
            "ts": 1.0,
        },
    ),
    (("/connect",), "no passcode needed"),
    (("/disconnect",), None),
]


@BOTH
async def test_every_documented_address_answers_ok(kind: str) -> None:
    async with serving() as (server, rec), peer(kind, server) as client:
        for (address, *args), data in GOOD:
            reply = await client.ask(address, *args)
            assert reply == {
                "osc": "/reply" + address,
                "address": address,
                "status": "ok",
                "data": data,
            }, address
        ping = await client.ask("/flytower/ping")
        assert ping["status"] == "ok" and abs(ping["data"]["ts"] - time.time()) < 60
    assert [c[0] for c in rec.calls] == [g[0][0] for g in GOOD[:9]]
    assert rec.calls[3][1] == {"number": "12.5"}
    assert rec.calls[4][1] == {"number": "*"}
    assert rec.calls[6] == (
        "/flytower/device/hoist1/command/move_to",
        {"id": "hoist1", "name": "move_to"},
        {"args": {"position_mm": 1500}},
    )


BAD: list[tuple[tuple[Any, ...], str]] = [
    (("/go", 1.0), "/go expects (), got (float)"),
    (("/stop", "now"), "/stop expects (), got (string)"),
    (("/panic", True), "/panic expects (), got (bool)"),
    (("/cue/1/start", 1), "/cue/1/start expects (), got (int)"),
    (("/cue/1/stop", 1), "/cue/1/stop expects (), got (int)"),
    (("/playhead/1", "x"), "/playhead/1 expects (), got (string)"),
    (("/flytower/device/hoist1/command/x", 5), "expects (args: json-object?), got (int)"),
    (("/flytower/device/hoist1/command/x", "{}", "{}"), "got (string, string)"),
    (("/flytower/device/hoist1/command/x", "[1]"), "must be a JSON object, got list"),
    (("/flytower/device/hoist1/command/x", '{"a": NaN}'), "is not valid JSON"),
    (("/flytower/device/hoist1/point/p", 1), "expects (), got (int)"),
    (("/flytower/ping", 1), "/flytower/ping expects (), got (int)"),
    (("/connect", 1234), "/connect expects (passcode: string?), got (int)"),
    (("/disconnect", 1), "/disconnect expects (), got (int)"),
    (("/nope",), "unknown address /nope"),
    (("/go/now",), "unknown address /go/now"),
    (("/flytower/device/ghost/command/stop",), "no device ghost"),
    (("/flytower/device/hoist1/command/explode",), "internal error: RuntimeError"),
    (("/flytower/device/hoist1/command/nan",), "internal error: reply data is not JSON"),
]


@BOTH
async def test_wrong_arguments_and_unknown_addresses_get_error_replies(kind: str) -> None:
    async with serving() as (server, _), peer(kind, server) as client:
        for (address, *args), reason in BAD:
            reply = await client.ask(address, *args)
            assert reply["status"] == "error" and reply["address"] == address, reply
            assert reason in reply["data"], (reason, reply)
        assert server.health.state is HealthState.DEGRADED  # the two handler bugs
        await client.ask("/go")
        assert server.health.state is HealthState.ONLINE
        stats = server.stats_dict()
    assert stats["errors"] >= len(BAD)
    assert stats["requests"] == len(BAD) + 1
    assert stats["latency_p50_ms"] is not None and stats["latency_p99_ms"] is not None


async def test_incoming_replies_are_never_answered() -> None:
    async with serving() as (server, _):
        udp = Udp(server.udp_port or 0)
        try:
            udp.client.send_message("/reply/go", '{"status":"ok"}')
            assert (await udp.ask("/flytower/ping"))["address"] == "/flytower/ping"
        finally:
            udp.close()
        assert server.counters.ignored_replies == 1


# --- bundles ------------------------------------------------------------------------------------


def _bundle(timetag: float, *contents: Any) -> Any:
    builder = OscBundleBuilder(timetag)  # type: ignore[arg-type]
    for c in contents:
        builder.add_content(c)
    return builder.build()


@BOTH
async def test_nested_immediate_bundle_runs_in_order(kind: str) -> None:
    inner = _bundle(IMMEDIATELY, build_msg("/cue/2/start"), build_msg("/nope"))
    packet = _bundle(IMMEDIATELY, build_msg("/cue/1/start"), inner, build_msg("/go"))
    async with serving() as (server, rec), peer(kind, server) as client:
        await client.client.send(packet) if isinstance(client, Tcp) else client.client.send(packet)
        replies = [await client.receive() for _ in range(4)]
    assert [r["address"] for r in replies] == ["/cue/1/start", "/cue/2/start", "/nope", "/go"]
    assert [r["status"] for r in replies] == ["ok", "ok", "error", "ok"]
    assert [c[0] for c in rec.calls] == ["/cue/1/start", "/cue/2/start", "/go"]


@BOTH
async def test_future_bundle_waits_for_its_time_and_far_future_is_refused(kind: str) -> None:
    async with serving(max_schedule_ahead_s=30) as (server, rec), peer(kind, server) as client:
        later = _bundle(time.time() + 0.5, build_msg("/cue/9/start"))
        await client.client.send(later) if isinstance(client, Tcp) else client.client.send(later)
        first = await client.ask("/go")  # sent after, answered before the scheduled cue
        second = await client.receive()
        too_far = _bundle(time.time() + 3600, build_msg("/panic"))
        await client.client.send(too_far) if isinstance(client, Tcp) else client.client.send(
            too_far
        )
        refused = await client.receive()
        assert server.counters.scheduled == 1
    assert (first["address"], second["address"]) == ("/go", "/cue/9/start")
    assert second["status"] == "ok"
    assert refused["address"] == "/panic" and refused["status"] == "error"
    assert "the limit is 30 s" in refused["data"]
    assert [c[0] for c in rec.calls] == ["/go", "/cue/9/start"]


async def test_past_bundle_runs_at_once() -> None:
    async with serving() as (server, _), peer("udp", server) as client:
        assert isinstance(client, Udp)
        client.client.send(_bundle(time.time() - 10, build_msg("/stop")))
        assert (await client.receive())["address"] == "/stop"
        assert server.counters.scheduled == 0


async def test_scheduled_bundles_are_cancelled_on_close() -> None:
    async with serving() as (server, rec), peer("udp", server) as client:
        assert isinstance(client, Udp)
        client.client.send(_bundle(time.time() + 20, build_msg("/go")))
        await wait_until(_is(lambda: server.counters.scheduled == 1), TIMEOUT_S, "scheduling")
    assert rec.calls == []  # and no task is left behind (the autouse fixture checks)


# --- access control -----------------------------------------------------------------------------


async def test_passcode_flow_over_udp_is_per_source() -> None:
    async with serving(passcode="1234") as (server, rec):
        a, b = Udp(server.udp_port or 0), Udp(server.udp_port or 0)
        try:
            assert (await a.ask("/go"))["status"] == "denied"
            assert (await a.ask("/connect"))["status"] == "denied"
            assert (await a.ask("/connect", "4321")) == {
                "osc": "/reply/connect",
                "address": "/connect",
                "status": "denied",
                "data": "wrong passcode",
            }
            assert (await a.ask("/connect", "1234"))["status"] == "ok"
            assert (await a.ask("/go"))["status"] == "ok"
            assert (await b.ask("/go"))["status"] == "denied"  # another source port
            assert (await a.ask("/disconnect"))["status"] == "ok"
            assert (await a.ask("/flytower/ping"))["status"] == "denied"
        finally:
            a.close()
            b.close()
        assert server.counters.denied == 5
    assert [c[0] for c in rec.calls] == ["/go"]


async def test_passcode_flow_over_tcp_is_per_connection() -> None:
    async with serving(passcode="s3cret") as (server, rec):
        async with peer("tcp", server) as one, peer("tcp", server) as two:
            assert (await one.ask("/cue/1/start"))["status"] == "denied"
            assert (await one.ask("/connect", "s3cret"))["status"] == "ok"
            assert (await one.ask("/cue/1/start"))["status"] == "ok"
            assert (await two.ask("/cue/1/start"))["status"] == "denied"
        async with peer("tcp", server) as again:  # a new connection starts without a session
            assert (await again.ask("/cue/1/start"))["status"] == "denied"
    assert len(rec.calls) == 1


async def test_passcode_inside_a_bundle_opens_the_session_for_what_follows() -> None:
    async with serving(passcode="pw") as (server, _), peer("udp", server) as client:
        assert isinstance(client, Udp)
        client.client.send(_bundle(IMMEDIATELY, build_msg("/connect", "pw"), build_msg("/go")))
        assert [(await client.receive())["status"] for _ in range(2)] == ["ok", "ok"]


async def test_udp_session_expires_when_idle() -> None:
    async with serving(passcode="pw", udp_session_idle_s=0.2) as (server, _):
        udp = Udp(server.udp_port or 0)
        try:
            assert (await udp.ask("/connect", "pw"))["status"] == "ok"
            await asyncio.sleep(0.4)
            assert (await udp.ask("/go"))["status"] == "denied"
        finally:
            udp.close()


async def test_allow_list_drops_udp_and_closes_tcp_from_strangers() -> None:
    async with serving(allowed_sources=("10.0.0.0/8",)) as (server, rec):
        udp = Udp(server.udp_port or 0)
        try:
            udp.client.send_message("/go", [])
            await wait_until(_is(lambda: server.counters.blocked == 1), TIMEOUT_S, "udp blocked")
            assert await udp.nothing_within(0.2)
        finally:
            udp.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
        writer.write(slip.encode(build_msg("/go").dgram))
        assert await _closed_without_reply(reader)
        await _close(writer)
        assert server.counters.blocked == 2
    assert rec.calls == []


async def test_allow_list_admits_listed_networks() -> None:
    async with serving(allowed_sources=("10.0.0.0/8", "127.0.0.1")) as (server, _):
        for kind in ("udp", "tcp"):
            async with peer(kind, server) as client:
                assert (await client.ask("/go"))["status"] == "ok"


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="does not appear to be"):
        OscServerConfig(allowed_sources=("not-an-address",))
    with pytest.raises(ValueError, match="empty passcode"):
        OscServerConfig(passcode="")
    with pytest.raises(ValueError, match="outside"):
        OscServerConfig(udp_port=70000)
    with pytest.raises(ValueError, match="at least one"):
        OscServerConfig(udp_port=None, tcp_port=None)


# --- hostile input ------------------------------------------------------------------------------

GARBAGE = [
    b"",
    b"\x00",
    b"hello",
    b"/go",  # not padded
    b"/go\x00,i\x00\x00",  # int missing
    b"/go\x00,Q\x00\x00",  # unknown type tag
    b"#bundle\x00" + b"\x00" * 7 + b"\x01" + b"\xff\xff\xff\xfc",  # element size -4
    b"#bundle\x00\x00",
    bytes(range(256)),
]


async def test_malformed_and_oversized_datagrams_are_counted_and_survived() -> None:
    async with serving(max_frame_bytes=1024) as (server, _), peer("udp", server) as client:
        assert isinstance(client, Udp)
        for data in GARBAGE:
            client.send_raw(data)
        client.send_raw(build_msg("/go", "x" * 2000).dgram)
        # The ping is answered and is the first reply: nothing before it was answered.
        assert (await client.ask("/flytower/ping"))["address"] == "/flytower/ping"
        await wait_until(
            _is(lambda: server.counters.malformed == len(GARBAGE)), TIMEOUT_S, "counting"
        )
        assert server.counters.oversized == 1
        assert server.health.state is HealthState.ONLINE


async def test_tcp_bad_frames_are_dropped_and_good_ones_still_answered() -> None:
    async with serving(max_frame_bytes=1024) as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
        try:
            writer.write(
                slip.encode(b"junk")  # not OSC
                + b"\xc0ab\xdbZ\xc0"  # an illegal SLIP escape
                + slip.encode(build_msg("/x", "y" * 2000).dgram)  # oversized
                + slip.encode(build_msg("/go").dgram)
            )
            data = await asyncio.wait_for(reader.readuntil(b"\xc0/"), TIMEOUT_S)
            data += await asyncio.wait_for(reader.readuntil(b"\xc0"), TIMEOUT_S)
            assert _reply(slip.decode(data[1:]))["address"] == "/go"
        finally:
            await _close(writer)
        assert (server.counters.malformed, server.counters.oversized) == (2, 1)
        assert server.counters.garbage_disconnects == 0


async def test_tcp_peer_sending_only_garbage_is_disconnected() -> None:
    async with serving(tcp_garbage_limit=4) as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
        # OSC 1.0 length-prefixed framing: no SLIP END ever comes, then junk frames.
        writer.write(len(build_msg("/go").dgram).to_bytes(4, "big") + build_msg("/go").dgram)
        writer.write(b"\xc0" + b"nope\xc0" * 10)
        assert await _closed_without_reply(reader)
        await _close(writer)
        assert server.counters.garbage_disconnects == 1
        async with peer("tcp", server) as client:  # the server itself is fine
            assert (await client.ask("/go"))["status"] == "ok"


async def test_tcp_peer_that_vanishes_mid_frame_is_cleaned_up() -> None:
    async with serving() as (server, _):
        sock = socket.create_connection(("127.0.0.1", server.tcp_port or 0))
        sock.sendall(b"\xc0/go\x00")
        sock.close()
        await wait_until(_is(lambda: not server._connections), TIMEOUT_S, "connection cleanup")


# --- load ---------------------------------------------------------------------------------------


async def test_many_clients_at_once() -> None:
    rounds = 20
    async with serving() as (server, rec):

        async def one(kind: str, n: int) -> list[str]:
            async with peer(kind, server) as client:
                return [(await client.ask(f"/cue/{n}/start"))["status"] for _ in range(rounds)]

        results = await asyncio.gather(
            *(one("udp", n) for n in range(8)), *(one("tcp", n) for n in range(100, 104))
        )
    assert all(r == ["ok"] * rounds for r in results)
    assert len(rec.calls) == 12 * rounds
    assert server.stats.requests == 12 * rounds and server.stats.errors == 0


async def _closed_without_reply(reader: asyncio.StreamReader) -> bool:
    """The server closed the connection (a reset, if our bytes were still unread) unanswered."""
    try:
        return await asyncio.wait_for(reader.read(), TIMEOUT_S) == b""
    except ConnectionResetError:
        return True


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionResetError):
        await writer.wait_closed()


def _is(check: Callable[[], bool]) -> Callable[[], Any]:
    async def predicate() -> bool:
        return check()

    return predicate
