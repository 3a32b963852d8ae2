"""Cross-node start skew: three edge nodes run one command at a shared time (issue 10: ≤ 5 ms).

Setup, all on this machine: a real Mosquitto on loopback; three ``flytower run`` processes, the
nodes ``a``, ``b`` and ``c`` of one venue, each with a mapped MQTT lamp (its command publishes on
``sync/lamp-N/set``); this process as the controller (``MqttHub``, ``Requester``,
``ClockProbe``), and a subscriber that stamps each ``set`` message as it arrives.

Figures:
- each node's clock offset and its error bound (16 probes; one machine, so this is the
  probe's own error);
- over ROUNDS rounds, the three commands sent with one start time 50 ms ahead: the spread of
  the three nodes' ``started`` (each on its own clock) p50 / p99 / max, how late they started,
  and the spread of the three ``set`` messages' arrival at the subscriber;
- reference, same run: the same three commands sent at once without a start time, the spread
  of their ``set`` messages' arrival. The ratio says what scheduling buys over sending at once.

``python -m benchmarks bench_node_sync`` or ``python -m benchmarks.bench_node_sync --rounds N``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the module loads fast for the test that shares it
    from drivers.mqtt.hub import MqttHub

REPO = Path(__file__).resolve().parent.parent
NODES = ("a", "b", "c")
ROUNDS = 100
AHEAD_S = 0.05
LAMP = """
id = "sync_lamp"
vendor = "Test"
model = "Mapped lamp"
device_class = "light"
protocol = "mqtt"
[health]
kind = "lwt"
[points.on]
dtype = "bool"
access = "rw"
mqtt = { topic = "state", field = "on", set_topic = "set", set_field = "on" }
[commands.turn_on]
writes = [{ point = "on", value = true }]
"""


def sync_venue(port: int, store: str = "telemetry.sqlite3") -> str:
    """Nodes a, b, c (the default role), each with a lamp ``lamp-N`` under ``sync/lamp-N``."""
    text = (
        'version = 1\nprofile_dirs = ["profiles"]\n[venue]\nid = "sync"\n'
        + "".join(f'[[nodes]]\nid = "{n}"\n' for n in NODES)
        + '[api]\nhost = "127.0.0.1"\nport = 0\n[auth]\nenabled = false\n'
        f'[mqtt]\nmode = "external"\nhost = "127.0.0.1"\nport = {port}\n'
        f'[telemetry]\nstore = "{store}"\n'
    )
    for n in NODES:
        text += (
            f'[[devices]]\nid = "lamp-{n}"\nprofile = "sync_lamp"\nnode = "{n}"\n'
            f'transport = {{ kind = "mqtt", base = "sync/lamp-{n}" }}\n'
        )
    return text


@contextlib.contextmanager
def nodes(folder: Path, port: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The three nodes as ``flytower run`` processes, each in a folder of its own."""
    (folder / "profiles").mkdir(exist_ok=True)
    (folder / "profiles" / "sync_lamp.toml").write_text(LAMP)
    procs = []
    try:
        for n in NODES:
            mine = folder / n
            mine.mkdir()
            (mine / "profiles").symlink_to(folder / "profiles")
            (mine / "venue.toml").write_text(sync_venue(port))
            args = ["run", str(mine / "venue.toml"), "--node", n, "--no-simulators"]
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "edge.cli", *args],
                    cwd=REPO,
                    stdout=(mine / "node.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


async def births(port: int, timeout_s: float = 30) -> None:
    """Until every node's retained ``$state`` says online."""
    import json

    import aiomqtt

    online: set[str] = set()
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"sync-births-{os.getpid()}") as c:
        await c.subscribe("flytower/sync/+/$state", qos=1)
        async with asyncio.timeout(timeout_s):
            async for msg in c.messages:
                if json.loads(msg.payload).get("state") == "online":
                    online.add(msg.topic.value.split("/")[2])
                if online >= set(NODES):
                    return


@contextlib.asynccontextmanager
async def controller(port: int) -> AsyncIterator[MqttHub]:
    from drivers.mqtt.hub import BrokerSettings, MqttHub

    hub = MqttHub(BrokerSettings("127.0.0.1", port, client_id=f"sync-ctrl-{os.getpid()}"))
    task = asyncio.create_task(hub.run())
    try:
        await asyncio.wait_for(hub.connected.wait(), 10)
        yield hub
    finally:
        hub.stop()
        await asyncio.wait_for(task, 10)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000 if ordered else 0.0


async def measure(port: int, rounds: int) -> None:
    import aiomqtt

    from drivers.mqtt.clock import ClockProbe
    from drivers.mqtt.driver import Requester
    from drivers.mqtt.schema import command_topic

    async with (
        controller(port) as hub,
        aiomqtt.Client("127.0.0.1", port, identifier=f"sync-watch-{os.getpid()}") as watch,
    ):
        await watch.subscribe("sync/+/set", qos=0)
        arrivals: list[float] = []
        got = asyncio.Event()

        async def stamp() -> None:
            async for _ in watch.messages:
                arrivals.append(time.time())
                if len(arrivals) == len(NODES):
                    got.set()

        stamper = asyncio.create_task(stamp())
        probe = ClockProbe(hub, "sync", "bench")
        for n in NODES:
            est = await probe.measure(n, samples=16)
            print(
                f"   node {n}: clock offset {est.offset_s * 1000:+.3f} ms "
                f"(± {est.error_s * 1000:.3f}, round trip {est.rtt_s * 1000:.3f} ms)"
            )
        requester = Requester(hub, "sync", "bench")
        topics = [command_topic("sync", n, f"lamp-{n}", "turn_on") for n in NODES]

        async def round_(at: float | None) -> tuple[float, float, list[float]]:
            arrivals.clear()
            got.clear()
            replies = await asyncio.gather(*(requester.request(t, {}, 5.0, at) for t in topics))
            await asyncio.wait_for(got.wait(), 5)
            assert all(r.ok for r in replies), replies
            arrived = max(arrivals) - min(arrivals)
            if at is None:
                return 0.0, arrived, []
            starts = [r.started_us / 1e6 for r in replies if r.started_us is not None]
            sent_at = round(at * 1e6) / 1e6  # ``at`` travels in whole µs
            return max(starts) - min(starts), arrived, [s - sent_at for s in starts]

        started, arrived, late, ref = [], [], [], []
        for i in range(rounds):
            s, a, lt = await round_(time.time() + AHEAD_S)
            started.append(s)
            arrived.append(a)
            late += lt
            ref.append((await round_(None))[1])
            if (i + 1) % 20 == 0:
                print(f"      ... {i + 1}/{rounds} rounds", flush=True)
            await asyncio.sleep(0.02)
        stamper.cancel()
        print(
            f"   scheduled {AHEAD_S * 1000:.0f} ms ahead, {rounds} rounds of 3 nodes: start "
            f"spread p50 {pct(started, 50):.2f} p99 {pct(started, 99):.2f} max "
            f"{max(started) * 1000:.2f} ms (target ≤ 5); late p50 {pct(late, 50):.2f} "
            f"max {max(late) * 1000:.2f} ms"
        )
        print(
            f"   set messages' arrival spread: scheduled p50 {pct(arrived, 50):.2f} p99 "
            f"{pct(arrived, 99):.2f} ms; reference, sent at once: p50 {pct(ref, 50):.2f} "
            f"p99 {pct(ref, 99):.2f} ms; ratio scheduled/at once (p99) "
            f"{pct(arrived, 99) / pct(ref, 99) if pct(ref, 99) else float('nan'):.2f}"
        )


async def run(rounds: int = ROUNDS) -> None:
    from benchmarks.bench_ingest import mosquitto

    with tempfile.TemporaryDirectory(prefix="bench-node-sync-") as tmp:
        folder = Path(tmp)
        async with mosquitto(folder) as (port, _):
            with nodes(folder, port):
                await births(port)
                await measure(port, rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_node_sync")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    asyncio.run(run(parser.parse_args().rounds))
