"""OSC /go round trip: our server (router, access checks, JSON reply) against python-osc's own.

Figure: p50/p99 of OscClient.request("/go") -> /reply/go over loopback UDP and TCP (SLIP),
answered by OscServer with a no-op handler and a passcode session. Reference: the same client
and requests answered by python-osc's AsyncIOOSCUDPServer with a handler returning the same
JSON reply, in the same run. Then a burst: many requests in flight at once, replies/s.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import AsyncIOOSCUDPServer

from drivers.model import OscTransport
from drivers.osc import OscClient, OscRequest, OscRouter, OscServer, OscServerConfig
from drivers.osc import address_space as space

ROUNDS = 2000
BURST = 200


def _port() -> int:
    with socket.socket(type=socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return 1000 * s[min(len(s) - 1, int(q * len(s)))]


async def _measure(transport: OscTransport, passcode: str | None = None) -> list[float]:
    out: list[float] = []
    async with OscClient(transport) as client:
        if passcode is not None:
            await client.request("/connect", passcode, timeout_s=2)
        for _ in range(100):  # warm-up
            await client.request("/go", timeout_s=2)
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            await client.request("/go", timeout_s=2)
            out.append(time.perf_counter() - t0)
    return out


async def _burst(transport: OscTransport) -> float:
    async with OscClient(transport) as client:
        await client.request("/connect", "pw", timeout_s=2)
        t0 = time.perf_counter()
        for _ in range(5):
            await asyncio.gather(*(client.request("/go", timeout_s=5) for _ in range(BURST)))
        return 5 * BURST / (time.perf_counter() - t0)


async def run() -> None:
    async def go(req: OscRequest) -> Any:
        return None

    router = OscRouter()
    router.add(space.GO, go)
    cfg = OscServerConfig(udp_port=0, tcp_port=0, passcode="pw", max_pending=1024)
    async with OscServer(cfg, router) as server:
        udp = OscTransport(kind="osc", host="127.0.0.1", port=server.udp_port or 0)
        tcp = OscTransport(kind="osc", host="127.0.0.1", port=server.tcp_port or 0, protocol="tcp")
        ours_udp = await _measure(udp, "pw")
        ours_tcp = await _measure(tcp, "pw")
        burst_udp = await _burst(udp)
        burst_tcp = await _burst(tcp)

    def reply(address: str, *args: Any) -> tuple[str, str]:
        return "/reply" + address, json.dumps({"address": address, "status": "ok", "data": None})

    dispatcher = Dispatcher()
    dispatcher.map("/go", reply)
    port = _port()
    ref_server = AsyncIOOSCUDPServer(("127.0.0.1", port), dispatcher, asyncio.get_running_loop())  # type: ignore[arg-type]
    endpoint, _ = await ref_server.create_serve_endpoint()
    try:
        ref = await _measure(OscTransport(kind="osc", host="127.0.0.1", port=port))
    finally:
        endpoint.close()

    print(
        f"   ours udp          p50 {pct(ours_udp, 0.5):6.3f} ms   p99 {pct(ours_udp, 0.99):6.3f} ms"
    )
    print(
        f"   ours tcp (SLIP)   p50 {pct(ours_tcp, 0.5):6.3f} ms   p99 {pct(ours_tcp, 0.99):6.3f} ms"
    )
    print(f"   python-osc udp    p50 {pct(ref, 0.5):6.3f} ms   p99 {pct(ref, 0.99):6.3f} ms  (ref)")
    print(f"   ratio p50 ours-udp/ref {pct(ours_udp, 0.5) / pct(ref, 0.5):.2f}")
    print(f"   burst of {BURST} in flight: udp {burst_udp:,.0f} replies/s, tcp {burst_tcp:,.0f}/s")
