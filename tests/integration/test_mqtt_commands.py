"""Commands over MQTT against a real Mosquitto: the node link's serving side, the device
driver's requesting side, and requests written by hand with ``mosquitto_pub`` (an independent
client), plus the session, restart, will, authentication and TLS behaviour of the link."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import shutil
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from drivers.base import DeviceUnavailable
from drivers.model import (
    PROFILE_DIR,
    CommandError,
    Device,
    HealthState,
    MqttTransport,
    load_profile,
)
from drivers.mqtt.driver import MqttDeviceDriver
from drivers.mqtt.hub import BrokerSettings, MqttHub
from drivers.mqtt.link import EndOfFeed, MqttNodeLink
from drivers.mqtt.schema import (
    command_topic,
    default_reply_topic,
)
from tests.conftest import (
    RealServer,
    free_port,
    start_mosquitto,
    stop_process,
    wait_for_port,
    wait_until,
)
from tests.integration.test_mqtt import MosquittoSub, new_venue, retained_state

pytestmark = pytest.mark.integration

NODE = "stage"
HOIST = load_profile(PROFILE_DIR / "hoist.toml")


class Machine:
    """A command handler as edge wires it: the profile validates, the 'drive' executes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, device: str, name: str, args: Mapping[str, Any]) -> Any:
        self.calls.append((device, name, dict(args)))
        await self.gate.wait()
        if device == "hoist-off":
            raise DeviceUnavailable("hoist-off is not connected")
        return [[p.name, v] for p, v in HOIST.resolve_command(name, args)]


@contextlib.asynccontextmanager
async def serving(link: MqttNodeLink) -> AsyncIterator[MqttNodeLink]:
    """Run ``link`` with an empty feed; on exit close the feed and wait for the goodbye."""
    closed = asyncio.Event()

    async def next_batch() -> list[Any]:
        await closed.wait()
        raise EndOfFeed

    task = asyncio.create_task(link.run(next_batch), name="mqtt-link")
    try:
        await asyncio.wait_for(link.connected.wait(), 10)
        yield link
    finally:
        closed.set()
        done, _ = await asyncio.wait([task], timeout=10)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            pytest.fail("the link did not return within 10 s of its feed closing")
        task.result()


@contextlib.asynccontextmanager
async def running_hub(hub: MqttHub) -> AsyncIterator[MqttHub]:
    task = asyncio.create_task(hub.run(), name="hub")
    try:
        yield hub
    finally:
        hub.stop()
        await asyncio.wait_for(task, 10)


def node_link(port: int, venue: str, machine: Machine, **kw: Any) -> MqttNodeLink:
    devices = ["hoist-1", "hoist-off"]
    return MqttNodeLink(
        "127.0.0.1", port, venue, NODE, devices, command_handler=machine,
        profiles={d: "hoist" for d in devices}, **kw,
    )  # fmt: skip


def request(
    rid: str, args: dict[str, Any] | None = None, ts: float | None = None, **extra: Any
) -> bytes:
    doc = {"id": rid, "args": args or {}, "ts": round((ts or time.time()) * 1000), **extra}
    return json.dumps(doc).encode()


async def mosquitto_pub(port: int, topic: str, payload: bytes, *extra: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic, "-s", *extra,
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(payload), 10)
    assert proc.returncode == 0, err


async def replies(s: MosquittoSub, count: int) -> dict[str, dict[str, Any]]:
    out = {}
    for _ in range(count):
        doc = json.loads((await s.message())[2])
        out[doc["id"]] = doc
    return out


# --- round trips ------------------------------------------------------------------------------


async def test_command_round_trip_from_driver_to_node(mosquitto: RealServer) -> None:
    venue, machine = new_venue(), Machine()
    ctl = MqttHub(BrokerSettings("127.0.0.1", mosquitto.port, client_id=f"ctl-{venue}"))
    transport = MqttTransport(kind="mqtt", node=NODE)
    readings: list[Any] = []

    async def sink(batch: list[Any]) -> None:
        readings.extend(batch)

    hoist = MqttDeviceDriver(Device("hoist-1", HOIST, transport, 10), ctl, venue, sink)
    off = MqttDeviceDriver(Device("hoist-off", HOIST, transport, 10), ctl, venue, sink)
    async with serving(node_link(mosquitto.port, venue, machine)) as link, running_hub(ctl):
        await asyncio.wait_for(ctl.connected.wait(), 10)
        done = await hoist.command("move_to", {"position": 2500.0})
        assert ("target_position", 2500.0) in done
        assert machine.calls == [("hoist-1", "move_to", {"position": 2500.0})]
        with pytest.raises(CommandError, match="speed"):  # refused locally by the profile
            await hoist.command("move_to", {"position": 1.0, "speed": 9000.0})
        with pytest.raises(DeviceUnavailable, match="not connected"):  # refused by the node
            await off.command("stop", {})
        assert hoist.stats.requests == 1
        assert hoist.stats.percentile_ms(0.99) is not None
        assert link.stats.commands == 2
        assert link.stats.command_errors == 1


async def test_mqtt5_response_topic_and_correlation_data(mosquitto: RealServer) -> None:
    venue, machine = new_venue(), Machine()
    topic = command_topic(venue, NODE, "hoist-1", "stop")
    inbox = f"test/{venue}/inbox"
    async with (
        serving(node_link(mosquitto.port, venue, machine, mqtt5=True)),
        MosquittoSub.run(mosquitto.port, inbox, 1, "-V", "5", "-F", "%D %p") as s,
    ):
        await asyncio.sleep(0.2)  # mosquitto_sub prints nothing once subscribed
        await mosquitto_pub(
            mosquitto.port, topic, request("r-1"), "-V", "5",
            "-D", "publish", "response-topic", inbox,
            "-D", "publish", "correlation-data", "corr-42",
        )  # fmt: skip
        assert s.proc.stdout is not None
        line = await asyncio.wait_for(s.proc.stdout.readline(), 10)
    correlation, payload = line.rstrip(b"\n").split(b" ", 1)
    assert correlation == b"corr-42"
    reply = json.loads(payload)
    assert reply["id"] == "r-1" and reply["ok"] is True and reply["code"] == "ok"
    assert reply["result"] == [["control_word", 5]]


async def test_a_duplicate_id_is_executed_once_and_answered_twice(mosquitto: RealServer) -> None:
    venue, machine = new_venue(), Machine()
    topic = command_topic(venue, NODE, "hoist-1", "move_to")
    machine.gate.clear()  # the first delivery is still running when the second arrives
    async with (
        serving(node_link(mosquitto.port, venue, machine)) as link,
        MosquittoSub.run(mosquitto.port, default_reply_topic(topic), 3) as s,
    ):
        await asyncio.sleep(0.2)
        payload = request("move-7", {"position": 100.0})
        await mosquitto_pub(mosquitto.port, topic, payload)
        await mosquitto_pub(mosquitto.port, topic, payload)

        async def both_seen() -> bool:
            return link.stats.duplicates == 1

        await wait_until(both_seen, 10, "the duplicate to be recognised")
        machine.gate.set()
        first, second = [json.loads((await s.message())[2]) for _ in range(2)]
        await mosquitto_pub(mosquitto.port, topic, payload)  # and once more, after it ran
        third = json.loads((await s.message())[2])
    assert len(machine.calls) == 1
    assert first == second == third
    assert first["ok"] is True and first["id"] == "move-7"
    assert link.stats.duplicates == 2


async def test_error_replies_name_the_reason(mosquitto: RealServer) -> None:
    venue, machine = new_venue(), Machine()
    inbox = f"test/{venue}/errors"
    # id: (device, command, payload extras, expected code, text in the error)
    cases: dict[str, tuple[str, str, dict[str, Any], str, str]] = {
        "unknown": ("hoist-1", "fly", {}, "refused", "no command 'fly'"),
        "bad-arg": ("hoist-1", "move_to", {"args": {"position": "high"}}, "refused", "number"),
        "extra": ("hoist-1", "stop", {"args": {"force": True}}, "refused", "unknown argument"),
        "off": ("hoist-off", "stop", {}, "unavailable", "not connected"),
        "old": ("hoist-1", "stop", {"ts": 1_000_000}, "expired", "old"),
        "nested": ("hoist-1", "stop", {"args": {"a": [1]}}, "bad_request", "argument 'a'"),
    }
    async with (
        serving(node_link(mosquitto.port, venue, machine)) as link,
        MosquittoSub.run(mosquitto.port, inbox, len(cases)) as s,
    ):
        await asyncio.sleep(0.2)
        for rid, (device, name, extras, _, _) in cases.items():
            doc: dict[str, Any] = {"id": rid, "args": {}, "ts": round(time.time() * 1000)}
            doc.update(extras, reply_to=inbox)
            raw = json.dumps(doc).encode()
            await mosquitto_pub(mosquitto.port, command_topic(venue, NODE, device, name), raw)
        got = await replies(s, len(cases))
    for rid, (_, _, _, code, text) in cases.items():
        assert got[rid]["ok"] is False, got[rid]
        assert got[rid]["code"] == code, got[rid]
        assert text in got[rid]["error"], got[rid]
    assert link.stats.malformed == 1  # the bad request; refusals are not malformed
    assert {c[0] for c in machine.calls} == {"hoist-1", "hoist-off"}


async def test_malformed_requests_are_counted_and_the_link_carries_on(
    mosquitto: RealServer,
) -> None:
    venue, machine = new_venue(), Machine()
    topic = command_topic(venue, NODE, "hoist-1", "stop")
    bad = [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"args": {}, "ts": 1}',  # no id, so no reply either
        json.dumps({"id": "x", "ts": 1, "reply_to": "a/+/b"}).encode(),  # a wildcard reply_to
        b'{"id": "big", "ts": 1, "args": {"s": "' + b"x" * 70_000 + b'"}}',
        b'{"id": 5, "ts": 1}',
        b'{"id": "nan", "ts": 1, "args": {"position": NaN}}',  # not JSON: no reply possible
    ]
    async with serving(node_link(mosquitto.port, venue, machine)) as link:
        for raw in bad:
            await mosquitto_pub(mosquitto.port, topic, raw)
        async with MosquittoSub.run(mosquitto.port, default_reply_topic(topic), 1) as s:
            await asyncio.sleep(0.2)
            await mosquitto_pub(mosquitto.port, topic, request("fine"))
            reply = json.loads((await s.message())[2])
    assert reply["id"] == "fine" and reply["ok"] is True
    assert link.stats.malformed == len(bad)
    assert "not JSON" in link.stats.as_dict()["last_malformed"] or link.stats.last_malformed
    assert machine.calls == [("hoist-1", "stop", {})]


# --- sessions, restarts, will -------------------------------------------------------------------


async def test_a_command_sent_while_the_node_is_away_is_delivered_on_reconnect(
    tmp_path: Path,
) -> None:
    """Persistent session: the broker queues the QoS 1 request (across its own restart,
    with persistence on) and delivers it when the node's session resumes."""
    folder, port, venue, machine = tmp_path / "broker", free_port(), new_venue(), Machine()
    broker = await asyncio.to_thread(start_mosquitto, folder, port, True)
    topic = command_topic(venue, NODE, "hoist-1", "stop")
    try:
        async with serving(node_link(port, venue, machine)):
            pass  # the session (with its command subscriptions) outlives the connection
        await mosquitto_pub(port, topic, request("while-away"))
        await stop_process(broker)
        broker = await asyncio.to_thread(start_mosquitto, folder, port, True)
        assert machine.calls == []
        # Subscribed (SUBACK) before the node comes back: a CI run on a busy machine saw a
        # mosquitto_sub given 0.2 s to subscribe miss the reply.
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"{venue}-away") as sub:
            await sub.subscribe(default_reply_topic(topic), qos=1)
            async with serving(node_link(port, venue, machine)), asyncio.timeout(10):
                msg = await anext(sub.messages)
        reply = json.loads(msg.payload)  # type: ignore[arg-type]
        assert reply["id"] == "while-away" and reply["ok"] is True
        assert machine.calls == [("hoist-1", "stop", {})]
    finally:
        await stop_process(broker)


async def test_after_a_broker_restart_births_and_subscriptions_are_restored(
    tmp_path: Path,
) -> None:
    """A broker restarted *without* persistence has forgotten retained births and the
    node's subscriptions: the link must publish and subscribe again."""
    folder, port, venue, machine = tmp_path / "broker", free_port(), new_venue(), Machine()
    broker = await asyncio.to_thread(start_mosquitto, folder, port)
    topic = command_topic(venue, NODE, "hoist-1", "stop")
    try:
        async with serving(node_link(port, venue, machine, keepalive_s=2)) as link:
            await stop_process(broker)

            async def noticed() -> bool:
                return not link.connected.is_set()

            await wait_until(noticed, 10, "the link to notice that the broker is gone")
            broker = await asyncio.to_thread(start_mosquitto, folder, port)

            async def back() -> bool:
                return link.connected.is_set()

            await wait_until(back, 15, "the link to reconnect")
            assert link.reconnects == 1
            state = await retained_state(port, venue)
            assert state["state"] == "online" and state["devices"] == ["hoist-1", "hoist-off"]
            async with MosquittoSub.run(port, default_reply_topic(topic), 1) as s:
                await asyncio.sleep(0.2)
                await mosquitto_pub(port, topic, request("after-restart"))
                reply = json.loads((await s.message())[2])
            assert reply["ok"] is True
        assert (await retained_state(port, venue))["state"] == "offline"
    finally:
        await stop_process(broker)


class DropStateProxy:
    """A TCP relay between the link and the broker that, once armed, silently drops every
    PUBLISH the client sends to a ``$state`` topic: a goodbye lost on the way."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.port = free_port()
        self.armed = False
        self.dropped = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DropStateProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        br, bw = await asyncio.open_connection("127.0.0.1", self.broker_port)
        up = asyncio.create_task(self._upstream(cr, bw))
        down = asyncio.create_task(self._pipe(br, cw))
        self._tasks |= {up, down}
        await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        for t in (up, down):
            t.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        self._tasks -= {up, down}
        bw.close()
        cw.close()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()

    async def _upstream(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:  # MQTT framing: a type byte, then the remaining length as a varint
            head = await r.readexactly(1)
            length, shift, raw = 0, 0, b""
            while True:
                b = await r.readexactly(1)
                raw += b
                length |= (b[0] & 0x7F) << shift
                shift += 7
                if not b[0] & 0x80:
                    break
            body = await r.readexactly(length)
            if self.armed and head[0] >> 4 == 3:
                (tlen,) = struct.unpack("!H", body[:2])
                if body[2 : 2 + tlen].endswith(b"/$state"):
                    self.dropped += 1
                    continue
            w.write(head + raw + body)
            await w.drain()


@pytest.mark.parametrize("mqtt5", [False, True], ids=["3.1.1-abort", "5-disconnect-with-will"])
async def test_a_lost_goodbye_still_leaves_the_node_offline(
    mosquitto: RealServer, mqtt5: bool
) -> None:
    venue = new_venue()
    async with DropStateProxy(mosquitto.port) as proxy:
        link = MqttNodeLink(
            "127.0.0.1", proxy.port, venue, NODE, ["hoist-1"], goodbye_timeout_s=0.5, mqtt5=mqtt5
        )
        async with serving(link):
            assert (await retained_state(mosquitto.port, venue))["state"] == "online"
            proxy.armed = True
        assert proxy.dropped >= 1
    state = await retained_state(mosquitto.port, venue)
    assert state["state"] == "offline"
    assert state["reason"] == "lost"  # the will, published by the broker


# --- authentication and TLS ---------------------------------------------------------------------


def _start_custom(folder: Path, listener: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = folder / "mosquitto.conf"
    lines = [f"user {getpass.getuser()}", "persistence false", f"listener {port} 127.0.0.1"]
    conf.write_text("\n".join([*lines, *listener]) + "\n")
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with open(folder / "mosquitto.log", "wb") as log:
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, 10.0, proc)
    return proc, port


@contextlib.asynccontextmanager
async def custom_mosquitto(folder: Path, listener: list[str]) -> AsyncIterator[int]:
    """A Mosquitto with its own listener settings (credentials, TLS), stopped by PID."""
    proc, port = await asyncio.to_thread(_start_custom, folder, listener)
    try:
        yield port
    finally:
        await stop_process(proc)


async def test_username_and_password(tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    cmd = ["mosquitto_passwd", "-b", "-c", str(passwords), "stage-node", "s3cret"]
    await asyncio.to_thread(subprocess.run, cmd, check=True)
    listener = ["allow_anonymous false", f"password_file {passwords}"]
    async with custom_mosquitto(tmp_path / "broker", listener) as port:
        venue = new_venue()
        right = node_link(port, venue, Machine(), username="stage-node", password="s3cret")
        async with serving(right):
            assert right.hub.tracker.health.state is HealthState.ONLINE
        wrong = node_link(port, venue, Machine(), username="stage-node", password="guess")
        task = asyncio.create_task(wrong.hub.run())

        async def refused() -> bool:
            return wrong.hub.tracker.health.state is HealthState.OFFLINE

        await wait_until(refused, 10, "the refused login to show in health")
        assert "authori" in wrong.hub.tracker.health.reason.lower()
        assert not wrong.connected.is_set()
        wrong.hub.stop()
        await asyncio.wait_for(task, 10)


def make_ca_and_server_cert(folder: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1, with the openssl CLI."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem")
    )
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return ca, cert, key


async def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    ca, cert, key = await asyncio.to_thread(make_ca_and_server_cert, tmp_path / "pki")
    listener = ["allow_anonymous true", f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
    async with custom_mosquitto(tmp_path / "broker", listener) as port:
        venue, machine = new_venue(), Machine()
        link = node_link(port, venue, machine, tls=aiomqtt.TLSParameters(ca_certs=str(ca)))
        async with serving(link):
            topic = command_topic(venue, NODE, "hoist-1", "stop")
            tls = ("--cafile", str(ca))
            async with MosquittoSub.run(port, default_reply_topic(topic), 1, *tls) as s:
                await asyncio.sleep(0.3)
                await mosquitto_pub(port, topic, request("over-tls"), *tls)
                assert json.loads((await s.message())[2])["ok"] is True
        # A client that does not trust the CA must not get in.
        other = ssl.create_default_context()
        untrusting = node_link(
            port,
            venue,
            machine,
            tls=aiomqtt.TLSParameters(ca_certs=None, cert_reqs=other.verify_mode),
        )
        task = asyncio.create_task(untrusting.hub.run())

        async def refused() -> bool:
            return untrusting.hub.tracker.health.state is HealthState.OFFLINE

        await wait_until(refused, 10, "the untrusted certificate to be refused")
        assert "certificate" in untrusting.hub.tracker.health.reason.lower()
        untrusting.hub.stop()
        await asyncio.wait_for(task, 10)
