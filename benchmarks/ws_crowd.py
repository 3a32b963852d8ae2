"""A crowd of WebSocket consoles for ``bench_ws_fanout``: ``python -m benchmarks.ws_crowd``.

Connects ``--clients`` clients to ``/ws`` (with the token), subscribes each to ``--topics``,
prints ``ready`` once every client has its snapshots, then records the monotonic arrival time of
every message of ``--track`` until stdin closes, and writes ``{"times": [[...] per client],
"messages": n, "bytes": n, "closed": n}`` to ``--out``. Messages are not parsed beyond their
type: the crowd stands in for consoles, and should spend as little of the box as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import websockets


async def client(
    url: str,
    token: str,
    topics: list[str],
    track: str,
    ready: asyncio.Queue[int],
    record: dict[str, Any],
) -> None:
    """One console; what it sees goes into ``record`` as it comes (it is cancelled at the end)."""
    times: list[float] = record["times"]
    stats = record
    prefix = f'{{"type":"{track}","seq":'
    headers = {"Authorization": f"Bearer {token}"}
    where = f"{url}?topics={','.join(topics)}"  # subscribed from the handshake on
    async with websockets.connect(where, additional_headers=headers, max_size=None) as ws:
        snapshots = 0
        try:
            async for raw in ws:
                at = time.monotonic()
                text = raw if isinstance(raw, str) else raw.decode()
                stats["messages"] += 1
                stats["bytes"] += len(text)
                if '"snapshot":' in text[:60]:
                    snapshots += 1
                    if snapshots == len(topics):
                        ready.put_nowait(1)
                elif text.startswith(prefix):
                    times.append(at)
        except websockets.ConnectionClosed:
            stats["closed"] += 1


async def main(args: argparse.Namespace) -> dict[str, Any]:
    topics = args.topics.split(",")
    ready: asyncio.Queue[int] = asyncio.Queue()
    tasks = []
    done: list[dict[str, Any]] = []
    for i in range(args.clients):
        record: dict[str, Any] = {"times": [], "messages": 0, "bytes": 0, "closed": 0}
        done.append(record)
        tasks.append(
            asyncio.create_task(client(args.url, args.token, topics, args.track, ready, record))
        )
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # connect in waves, as consoles come up
    for _ in range(args.clients):
        await asyncio.wait_for(ready.get(), 60)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until the benchmark closes our stdin
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "times": [r["times"] for r in done],
        "messages": sum(r["messages"] for r in done),
        "bytes": sum(r["bytes"] for r in done),
        "closed": sum(r["closed"] for r in done),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--clients", type=int, default=500)
    p.add_argument("--topics", default="playback,lighting")
    p.add_argument("--track", default="playback")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    Path(a.out).write_text(json.dumps(asyncio.run(main(a))))
