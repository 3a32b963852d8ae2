"""MQTT at 5 000 messages/s: commands and telemetry, our schema and link against bare aiomqtt.

Two figures, both through a Mosquitto this benchmark starts on loopback, with the far end in
its own process so the two ends do not share one interpreter lock.

Command round trips: p50/p99 of commands paced at 5 000/s. A ``Requester`` (the device
driver's requesting side) publishes ``…/cmd/{name}`` at QoS 1, a ``MqttNodeLink`` in another
process decodes it, checks its id against the duplicate cache, runs a trivial handler and
publishes the reply at QoS 1; the requester matches it by id. Reference: the same pacing, QoS
and process layout with bare aiomqtt clients, the responder echoing each payload to the reply
topic, no schema.

Telemetry stream: readings handed to a ``MqttNodeLink`` at 5 000/s through its ``run`` feed,
the way ``edge/service.py`` feeds it, published at QoS 1. A bare aiomqtt subscriber in another
process, subscribed to ``flytower/#`` at QoS 1, measures each message's one-way latency: receive
wall time minus the send time carried in the payload (same clock: one machine). The payload's
``ts`` is in whole milliseconds, too coarse for this, so each reading's *value* is the float
``time.time()`` at the moment it is handed to the link. Reference: a bare aiomqtt publisher
sending a JSON payload of the same shape and size at the same pacing and QoS to the same
subscriber. Both report received/sent (loss), the rate achieved at the subscriber, p50 and p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt

# Command rates, run in order. 5 000/s saturates this 2-core machine (four packets per command
# through one interpreter at each end); add a lower rate (BENCH_MQTT_RATES=1000,5000, lower
# first: a saturated run leaves the broker draining a backlog) for an unsaturated figure.
RATES = [int(r) for r in os.environ.get("BENCH_MQTT_RATES", "5000").split(",")]
TELEMETRY_RATE = int(os.environ.get("BENCH_MQTT_TELEMETRY_RATE", "5000"))
DURATION_S = float(os.environ.get("BENCH_MQTT_SECONDS", "10"))
ROOT = Path(__file__).resolve().parents[1]
TICK_S = 0.002  # requests and readings are started in small bursts, every 2 ms
NODE, DEVICE, POINT = "stage", "hoist-1", "position"
REQ, REPLY = "bench/bare/req", "bench/bare/reply"
# The same in-flight window as the hub's (drivers/mqtt/hub.py), so the comparison is fair.
BARE: dict[str, Any] = {
    "max_inflight_messages": 64,
    "max_concurrent_outgoing_calls": 64,
    "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
}
QUIET_S = 2.0  # the subscriber stops waiting for the rest of a stream after this much silence


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return 1000 * s[min(len(s) - 1, int(q * len(s)))]


def _point_topic(venue: str) -> str:
    # Spelled out rather than taken from drivers.mqtt.schema: the subscriber and the reference
    # publisher stay bare aiomqtt; the link builds the same topic with the schema.
    return f"flytower/{venue}/{NODE}/{DEVICE}/{POINT}"


# --- far ends (child processes) -------------------------------------------------------------------


async def _serve_ours(port: int, venue: str) -> None:
    from drivers.mqtt.link import EndOfFeed, MqttNodeLink

    async def handler(device: str, name: str, args: Any) -> Any:
        return [["control_word", 5]]

    link = MqttNodeLink(
        "127.0.0.1", port, venue, NODE, [DEVICE], command_handler=handler, dedup_size=100_000
    )
    closed = asyncio.Event()

    async def next_batch() -> list[Any]:
        await closed.wait()
        raise EndOfFeed

    task = asyncio.create_task(link.run(next_batch))
    await link.connected.wait()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    closed.set()
    await task


async def _serve_bare(port: int, venue: str) -> None:
    async with aiomqtt.Client("127.0.0.1", port, **BARE) as client:
        client.pending_calls_threshold = 100_000
        await client.subscribe(f"{venue}/{REQ}", qos=1)
        print("ready", flush=True)
        tasks: set[asyncio.Task[None]] = set()
        stdin = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        messages = client.messages
        while not stdin.done():
            get = asyncio.ensure_future(messages.__anext__())
            done, _ = await asyncio.wait([get, stdin], return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                break
            msg = get.result()
            t = asyncio.create_task(client.publish(f"{venue}/{REPLY}", msg.payload, qos=1))
            tasks.add(t)
            t.add_done_callback(tasks.discard)


async def _serve_subscriber(port: int, venue: str) -> None:
    """Time every message on the stream's topic; once told how many were sent, report.

    Protocol on stdin/stdout: prints ``ready`` once subscribed; reads one line with the count
    sent; waits until that many arrived or the stream has been quiet for QUIET_S; prints one
    JSON line with the count, the rate achieved and the percentiles.
    """
    topic = _point_topic(venue)
    latencies: list[float] = []
    first = last = 0.0
    async with aiomqtt.Client("127.0.0.1", port, **BARE) as client:
        client.pending_calls_threshold = 100_000
        await client.subscribe("flytower/#", qos=1)

        async def receive() -> None:
            nonlocal first, last
            async for msg in client.messages:
                now = time.time()
                # Retained $state documents (births, goodbyes) share the wildcard: not timed.
                if msg.topic.value != topic or not isinstance(msg.payload, bytes):
                    continue
                latencies.append(now - float(json.loads(msg.payload)["v"]))
                first = first or now
                last = now

        receiver = asyncio.create_task(receive())
        print("ready", flush=True)
        sent = int(await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
        seen = -1
        while len(latencies) < sent and len(latencies) != seen:
            seen = len(latencies)
            for _ in range(int(QUIET_S / 0.05)):
                await asyncio.sleep(0.05)
                if len(latencies) >= sent:
                    break
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
    span = last - first
    report = {
        "received": len(latencies),
        "rate": (len(latencies) - 1) / span if span > 0 else 0.0,
        "p50": pct(latencies, 0.5) if latencies else None,
        "p99": pct(latencies, 0.99) if latencies else None,
    }
    print(json.dumps(report), flush=True)


# --- pacing ---------------------------------------------------------------------------------------


async def _pace(start_some: Callable[[int], None], rate: int) -> tuple[int, float]:
    """Call ``start_some(n)`` every tick so ``rate``/s start for DURATION_S; (sent, offered/s)."""
    per_tick = max(1, round(rate * TICK_S))
    total = round(rate * DURATION_S)
    start = time.perf_counter()
    sent = 0
    while sent < total:
        # Everything due by the end of this tick, so a loop that fell behind catches up in one
        # burst: the offered rate stays the asked one and the run ends on time.
        due = min(total, per_tick + int((time.perf_counter() - start) * rate))
        if due > sent:
            start_some(due - sent)
            sent = due
        await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    return sent, sent / (time.perf_counter() - start)


# --- command round trips --------------------------------------------------------------------------


async def _paced(send: Callable[[], Awaitable[None]], rate: int) -> tuple[list[float], int, float]:
    """Start ``send`` at ``rate``/s for DURATION_S; (round trips, failures, offered rate)."""
    rtts: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        t0 = time.perf_counter()
        with contextlib.suppress(Exception):  # a failure is a round trip that did not complete
            await send()
            rtts.append(time.perf_counter() - t0)

    def start_some(n: int) -> None:
        for _ in range(n):
            t = asyncio.create_task(one())
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    sent, offered = await _pace(start_some, rate)
    if tasks:
        await asyncio.wait(set(tasks), timeout=10)
    return rtts, sent - len(rtts), offered


async def _measure_ours(port: int, rate: int, venue: str) -> tuple[list[float], int, float]:
    from drivers.mqtt.driver import Requester
    from drivers.mqtt.hub import BrokerSettings, MqttHub
    from drivers.mqtt.schema import command_topic

    # A fresh session per run: a persistent one would replay the backlog of a saturated run.
    hub = MqttHub(BrokerSettings("127.0.0.1", port, client_id=f"{venue}-ctl"))
    requester = Requester(hub, venue, "ctl")
    topic = command_topic(venue, NODE, DEVICE, "stop")
    task = asyncio.create_task(hub.run())
    await hub.connected.wait()
    await requester.request(topic, {}, 5.0)  # warm up: the reply inbox subscription

    async def send() -> None:
        reply = await requester.request(topic, {}, 5.0)
        assert reply.ok

    try:
        return await _paced(send, rate)
    finally:
        hub.stop()
        await task


async def _measure_bare(port: int, rate: int, venue: str) -> tuple[list[float], int, float]:
    waiting: dict[int, asyncio.Future[None]] = {}
    counter = 0
    async with aiomqtt.Client("127.0.0.1", port, **BARE) as client:
        client.pending_calls_threshold = 100_000
        await client.subscribe(f"{venue}/{REPLY}", qos=1)

        async def receive() -> None:
            async for msg in client.messages:
                assert isinstance(msg.payload, bytes)
                fut = waiting.pop(json.loads(msg.payload)["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(None)

        receiver = asyncio.create_task(receive())

        async def send() -> None:
            nonlocal counter
            counter += 1
            n = counter
            fut = asyncio.get_running_loop().create_future()
            waiting[n] = fut
            payload = json.dumps({"id": n, "args": {}, "ts": round(time.time() * 1000)})
            await client.publish(f"{venue}/{REQ}", payload.encode(), qos=1)
            await asyncio.wait_for(fut, 5.0)

        try:
            return await _paced(send, rate)
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)


# --- telemetry stream -----------------------------------------------------------------------------


async def _stream_ours(port: int, rate: int, venue: str) -> tuple[int, float]:
    from drivers.model import Reading
    from drivers.mqtt.link import EndOfFeed, MqttNodeLink

    # A long drain: readings still queued when pacing stops are published, not counted as lost.
    link = MqttNodeLink("127.0.0.1", port, venue, NODE, [DEVICE], drain_timeout_s=30)
    queued: list[Reading] = []
    arrived = asyncio.Event()
    ended = False

    async def next_batch() -> list[Reading]:
        # Like the service's live feed: everything queued since the last call, or wait.
        while not queued:
            if ended:
                raise EndOfFeed
            arrived.clear()
            await arrived.wait()
        batch = queued[:]
        queued.clear()
        return batch

    def hand_off(n: int) -> None:
        for _ in range(n):
            now = time.time()
            queued.append(Reading(DEVICE, POINT, now, time.monotonic(), now))
        arrived.set()

    task = asyncio.create_task(link.run(next_batch))
    await link.connected.wait()
    try:
        return await _pace(hand_off, rate)
    finally:
        ended = True
        arrived.set()
        await task


async def _stream_bare(port: int, rate: int, venue: str) -> tuple[int, float]:
    topic = _point_topic(venue)
    tasks: set[asyncio.Task[None]] = set()
    async with aiomqtt.Client("127.0.0.1", port, **BARE) as client:
        client.pending_calls_threshold = 100_000

        def publish(n: int) -> None:
            for _ in range(n):
                now = time.time()
                doc = {"v": now, "ts": round(now * 1000), "q": "good"}  # the link's shape
                payload = json.dumps(doc, separators=(",", ":")).encode()
                t = asyncio.create_task(client.publish(topic, payload, qos=1))
                tasks.add(t)
                t.add_done_callback(tasks.discard)

        result = await _pace(publish, rate)
        if tasks:
            await asyncio.wait(set(tasks), timeout=30)
        return result


# --- orchestration --------------------------------------------------------------------------------


def _start_broker(folder: Path, port: int) -> subprocess.Popen[bytes]:
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
        "persistence false\nset_tcp_nodelay true\nmax_queued_messages 100000\n"
    )
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


@contextlib.asynccontextmanager
async def _child(role: str, port: int, venue: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """The far end ``role`` in its own process, once it said ``ready``; ended on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.bench_mqtt_rtt", "serve", role, str(port), venue,
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        if line.strip() != b"ready":
            raise RuntimeError(f"{role} far end did not start: {line!r}")
        yield proc
        assert proc.stdin is not None
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


Measure = Callable[[int, int, str], Awaitable[tuple[list[float], int, float]]]
Stream = Callable[[int, int, str], Awaitable[tuple[int, float]]]


async def _with_responder(
    mode: str, port: int, rate: int, measure: Measure
) -> tuple[list[float], int, float]:
    venue = f"bench{rate}{mode}"
    async with _child(mode, port, venue):
        return await measure(port, rate, venue)


async def _with_subscriber(mode: str, port: int, rate: int, stream: Stream) -> dict[str, Any]:
    venue = f"telemetry{rate}{mode}"
    async with _child("sub", port, venue) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        sent, offered = await stream(port, rate, venue)
        proc.stdin.write(f"{sent}\n".encode())
        await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), 60)  # a slow subscriber catching up
        report: dict[str, Any] = json.loads(line)
    return {**report, "sent": sent, "offered": offered}


def _line(name: str, result: tuple[list[float], int, float]) -> str:
    rtts, failed, rate = result
    if not rtts:
        return f"   {name}: no round trip completed ({failed} failed)"
    return (
        f"   {name}: p50 {pct(rtts, 0.5):.2f} ms, p99 {pct(rtts, 0.99):.2f} ms, "
        f"{len(rtts)} ok, {failed} failed, offered {rate:.0f}/s"
    )


def _stream_line(name: str, r: dict[str, Any]) -> str:
    received, sent = r["received"], r["sent"]
    head = f"   {name}: received {received}/{sent} ({sent - received} lost)"
    if not received:
        return head
    return (
        f"{head}, {r['rate']:.0f}/s at the subscriber (offered {r['offered']:.0f}/s), "
        f"one-way p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms"
    )


async def _commands(port: int) -> None:
    print(f"   command round trips, QoS 1, {DURATION_S:g} s per rate, loopback Mosquitto")
    for rate in RATES:
        ours = await _with_responder("ours", port, rate, _measure_ours)
        bare = await _with_responder("bare", port, rate, _measure_bare)
        print(f"   at {rate} commands/s:")
        print(_line("flytower (schema, link, dedup, correlation)", ours))
        print(_line("reference (bare aiomqtt echo)", bare))
        if ours[0] and bare[0]:
            ratio = pct(ours[0], 0.99) / pct(bare[0], 0.99)
            print(f"   p99 ratio flytower / reference: {ratio:.2f}")


async def _telemetry(port: int) -> None:
    rate = TELEMETRY_RATE
    print(
        f"   telemetry stream at {rate} readings/s, QoS 1, {DURATION_S:g} s, "
        "one bare aiomqtt subscriber process on flytower/#"
    )
    ours = await _with_subscriber("ours", port, rate, _stream_ours)
    bare = await _with_subscriber("bare", port, rate, _stream_bare)
    print(_stream_line("flytower (MqttNodeLink feed, schema)", ours))
    print(_stream_line("reference (bare aiomqtt publisher)", bare))
    if ours["received"] and bare["received"]:
        print(f"   p99 ratio flytower / reference: {ours['p99'] / bare['p99']:.2f}")


async def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = _port()
        broker = _start_broker(Path(tmp), port)
        try:
            # Telemetry first: a saturated command run leaves the broker draining a backlog.
            await _telemetry(port)
            await _commands(port)
        finally:
            broker.terminate()
            broker.wait(10)


SERVE = {"ours": _serve_ours, "bare": _serve_bare, "sub": _serve_subscriber}

if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "serve":
    asyncio.run(SERVE[sys.argv[2]](int(sys.argv[3]), sys.argv[4]))
