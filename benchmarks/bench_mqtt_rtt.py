"""MQTT command round trip at 5 000 messages/s: our schema and link against a bare aiomqtt echo.

Figure: p50/p99 round trip of commands paced at 5 000/s for 10 s through a Mosquitto this
benchmark starts on loopback: a ``Requester`` (the device driver's requesting side) publishes
``…/cmd/{name}`` at QoS 1, a ``MqttNodeLink`` in another process decodes it, checks its id
against the duplicate cache, runs a trivial handler and publishes the reply at QoS 1; the
requester matches it by id. Reference: the same pacing, QoS and process layout with bare aiomqtt
clients, the responder echoing each payload to the reply topic, no schema. Responders run in
their own process so the two ends do not share one interpreter lock.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt

# A rate this 2-core machine sustains, then the target rate: a saturated run still comes with a
# latency figure that is not just queueing. Sustained first: a saturated run leaves the broker
# draining its backlog for a while, which would disturb whatever runs next.
RATES = [int(r) for r in os.environ.get("BENCH_MQTT_RATES", "1000,5000").split(",")]
DURATION_S = float(os.environ.get("BENCH_MQTT_SECONDS", "10"))
ROOT = Path(__file__).resolve().parents[1]
TICK_S = 0.002  # requests are started in small bursts, every 2 ms
NODE, DEVICE = "stage", "hoist-1"
REQ, REPLY = "bench/bare/req", "bench/bare/reply"
# The same in-flight window as the hub's (drivers/mqtt/hub.py), so the comparison is fair.
BARE: dict[str, Any] = {
    "max_inflight_messages": 64,
    "max_concurrent_outgoing_calls": 64,
    "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return 1000 * s[min(len(s) - 1, int(q * len(s)))]


# --- responders (child processes) ---------------------------------------------------------------


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


# --- the paced requester --------------------------------------------------------------------------


async def _paced(send: Callable[[], Awaitable[None]], rate: int) -> tuple[list[float], int, float]:
    """Start ``send`` at ``rate``/s for DURATION_S; (round trips, failures, offered rate)."""
    rtts: list[float] = []
    failures = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        nonlocal failures
        t0 = time.perf_counter()
        try:
            await send()
        except Exception:
            failures += 1
            return
        rtts.append(time.perf_counter() - t0)

    per_tick = max(1, round(rate * TICK_S))
    tick_s = per_tick / rate
    start = time.perf_counter()
    next_at, sent = start, 0
    while next_at - start < DURATION_S:
        for _ in range(per_tick):
            t = asyncio.create_task(one())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        sent += per_tick
        next_at += tick_s
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    elapsed = time.perf_counter() - start
    if tasks:
        await asyncio.wait(set(tasks), timeout=10)
    return rtts, failures + (sent - len(rtts) - failures), sent / elapsed


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


Measure = Callable[[int, int, str], Awaitable[tuple[list[float], int, float]]]


async def _with_responder(
    mode: str, port: int, rate: int, measure: Measure
) -> tuple[list[float], int, float]:
    venue = f"bench{rate}{mode}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.bench_mqtt_rtt", "serve", mode, str(port), venue,
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        if line.strip() != b"ready":
            raise RuntimeError(f"{mode} responder did not start: {line!r}")
        result = await measure(port, rate, venue)
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 10)
        return result
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _line(name: str, result: tuple[list[float], int, float]) -> str:
    rtts, failed, rate = result
    if not rtts:
        return f"   {name}: no round trip completed ({failed} failed)"
    return (
        f"   {name}: p50 {pct(rtts, 0.5):.2f} ms, p99 {pct(rtts, 0.99):.2f} ms, "
        f"{len(rtts)} ok, {failed} failed, offered {rate:.0f}/s"
    )


async def run() -> None:
    print(f"   command round trips, QoS 1, {DURATION_S:g} s per rate, loopback Mosquitto")
    with tempfile.TemporaryDirectory() as tmp:
        port = _port()
        broker = _start_broker(Path(tmp), port)
        try:
            for rate in RATES:
                ours = await _with_responder("ours", port, rate, _measure_ours)
                bare = await _with_responder("bare", port, rate, _measure_bare)
                print(f"   at {rate} commands/s:")
                print(_line("flytower (schema, link, dedup, correlation)", ours))
                print(_line("reference (bare aiomqtt echo)", bare))
                if ours[0] and bare[0]:
                    ratio = pct(ours[0], 0.99) / pct(bare[0], 0.99)
                    print(f"   p99 ratio flytower / reference: {ratio:.2f}")
        finally:
            broker.terminate()
            broker.wait(10)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "serve":
    serve = _serve_ours if sys.argv[2] == "ours" else _serve_bare
    asyncio.run(serve(int(sys.argv[3]), sys.argv[4]))
