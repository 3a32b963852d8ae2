"""Hot standby takeover: kill -9 of the controller that holds the show, to the standby's claim.

Two ``flytower run`` controllers of one venue on a real Mosquitto. Each round kills the one
that holds the show (``kill -9``) and stamps, at a subscriber of the broker: the dead
controller's will (the broker noticing the closed connection and publishing it: the
**reference**, the earliest any takeover could start) and the standby's claim of the next term
(the **figure**: issue 10 asks for ≤ 1 s). The killed controller is started again; it comes
back as the standby (fail-back is explicit), so the next round kills the other one.
``python -m benchmarks.bench_takeover [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONTROLLERS = ("ctl-1", "ctl-2")
ROUNDS = 5


def venue_text(port: int) -> str:
    return (
        'version = 1\n[venue]\nid = "bench"\n'
        + "".join(f'[[nodes]]\nid = "{n}"\nrole = "controller"\n' for n in CONTROLLERS)
        + '[api]\nhost = "127.0.0.1"\nport = 0\n[auth]\nenabled = false\n'
        f'[mqtt]\nmode = "external"\nhost = "127.0.0.1"\nport = {port}\n'
        '[telemetry]\nstore = "telemetry.sqlite3"\n'
    )


def start(folder: Path, node: str) -> subprocess.Popen[bytes]:
    mine = folder / node
    mine.mkdir(exist_ok=True)
    venue = mine / "venue.toml"
    if not venue.exists():
        venue.write_text((folder / "venue.toml").read_text())
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", str(venue), "--node", node, "--no-simulators"],
        cwd=REPO,
        stdout=(mine / "node.log").open("ab"),
        stderr=subprocess.STDOUT,
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


async def measure(folder: Path, port: int, rounds: int) -> None:
    import aiomqtt

    procs = {n: start(folder, n) for n in CONTROLLERS}
    claims: asyncio.Queue[tuple[float, dict[str, object]]] = asyncio.Queue()
    wills: asyncio.Queue[tuple[float, str]] = asyncio.Queue()
    holder: dict[str, object] = {}
    try:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-tk-{os.getpid()}") as c:
            await c.subscribe("flytower/bench/$control/active", qos=1)
            await c.subscribe("flytower/bench/+/$state", qos=1)

            async def listen() -> None:
                async for msg in c.messages:
                    now = time.time()
                    doc = json.loads(msg.payload)  # type: ignore[arg-type]
                    if msg.topic.value.endswith("$control/active"):
                        holder.update(doc)
                        claims.put_nowait((now, doc))
                    elif doc.get("state") == "offline" and doc.get("reason") == "lost":
                        wills.put_nowait((now, msg.topic.value.split("/")[2]))

            listener = asyncio.create_task(listen())
            will_ms, claim_ms, reaction_ms = [], [], []
            async with asyncio.timeout(60):
                await claims.get()  # the first controller's claim
            await asyncio.sleep(4.0)  # the standby joined (it waits up to 3 s)
            for i in range(rounds):
                while not claims.empty():
                    claims.get_nowait()
                while not wills.empty():
                    wills.get_nowait()
                dead = str(holder["node"])
                term = int(holder["term"])  # type: ignore[call-overload]
                killed = time.time()
                procs[dead].kill()
                async with asyncio.timeout(10):
                    will_at, who = await wills.get()
                    while who != dead:
                        will_at, who = await wills.get()
                    while True:
                        claim_at, doc = await claims.get()
                        if int(doc["term"]) > term:  # type: ignore[call-overload]
                            break
                procs[dead].wait()
                will_ms.append((will_at - killed) * 1000)
                claim_ms.append((claim_at - killed) * 1000)
                reaction_ms.append((claim_at - will_at) * 1000)
                print(
                    f"      round {i + 1}/{rounds}: {dead} killed; will after "
                    f"{will_ms[-1]:.1f} ms, {doc['node']}'s claim (term {doc['term']}) after "
                    f"{claim_ms[-1]:.1f} ms",
                    flush=True,
                )
                procs[dead] = start(folder, dead)  # back as the standby
                await asyncio.sleep(5.0)
            listener.cancel()
            print(
                f"   takeover (kill -9 -> the standby's claim), {rounds} rounds: p50 "
                f"{pct(claim_ms, 50):.1f} max {max(claim_ms):.1f} ms (target ≤ 1000); "
                f"reference, kill -9 -> the broker's will: p50 {pct(will_ms, 50):.1f} max "
                f"{max(will_ms):.1f} ms; the standby's own part (will -> claim) p50 "
                f"{pct(reaction_ms, 50):.1f} ms (250 ms of it is the check that the broker "
                f"itself is not going away); ratio takeover/will p50 "
                f"{pct(claim_ms, 50) / max(pct(will_ms, 50), 1e-3):.0f}"
            )
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


async def run(rounds: int = ROUNDS) -> None:
    from benchmarks.bench_ingest import mosquitto

    with tempfile.TemporaryDirectory(prefix="bench-takeover-") as tmp:
        folder = Path(tmp)
        async with mosquitto(folder) as (port, _):
            (folder / "venue.toml").write_text(venue_text(port))
            await measure(folder, port, rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_takeover")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    asyncio.run(run(parser.parse_args().rounds))
