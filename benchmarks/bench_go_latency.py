"""GO latency: GO (REST, OSC, WebSocket) -> first changed sACN / Art-Net packet on the wire.

Figure: the real service (``flytower run``, a child process) on a generated venue: four RGBW
PARs on universe 1 over sACN and one on universe 2 over Art-Net, both unicast to loopback UDP
ports this benchmark listens on, and a looping two-cue list whose cues set the PARs to 100 % and
20 % with ``fade_s = 0``, so each GO changes the next frame. ``N`` rounds, each sending a GO by
REST (``POST /api/v1/playback/go``, httpx), by OSC (``/go`` over UDP, python-osc) and by
WebSocket (``/ws`` playback message), after a random pause so GOs fall at every phase of the
frame clock. The latency is from just before the GO is sent to the arrival of the first packet
of each protocol whose slots differ from the packet before it (timestamps taken by a receiver
thread on blocking sockets), in p50 / p99 / max per input and protocol.

Also shown, to say what dominates: the GO's own round trip (the reply, which waits for the
journal commit: an OK reply means the GO is durable, so it comes after the frame); on which
packet after the GO the change appeared; and which frame carried it: an **early frame** (off the
deadline grid, which the receiver finds from the phase of the unchanged packets) sent by the GO's
own command path, or a **deadline frame** of the engine's fixed tick (a deadline that fell inside
the command path: the 2nd-packet cases).

What dominates (perf_counter probes in the service, 2-core box): before the fix, the GO's change
woke the lighting engine's loop task (three loop turns, behind the GO's journal flush, whose
writer thread then competed for the GIL, and the WebSocket snapshot) and then waited out a 3 ms
guard after any frame and before any deadline (a quarter of the GOs): p99 6-9 ms. Now the GO
sets its cue's undelayed lighting itself and the engine sends the changed universes at the next
turn of the loop, ahead of the journal commit (controller/lighting/engine.py, "Early frames"):
OSC is ~0.2 ms to the handler, ~0.4 ms of GO (resolving the levels, the fade) and ~0.4 ms of
render and send. Via REST the round trip of the HTTP stack itself (the httpx client, uvicorn,
FastAPI: the reference below) is most of the figure; on a busy box p99 is noise (say so).

A second pass (half the rounds) has 50 more WebSocket clients connected, as consoles: each is
sent the playback snapshot on every change. Every client used to send in the same turn of the
loop, so a GO arriving meanwhile waited for all of them (p99 ~10 ms with 50); now they share
one snapshot and take turns, one per turn of the loop (edge/api_playback.py ``ws_feed``).

Reference, same run: the same round trip with no GO in it: ``GET /api/v1/playback`` (REST),
``/flytower/ping`` (OSC) and an invalid playback message refused by validation (WebSocket;
no playback message is a no-op). Target (DESIGN.md): p99 <= 5 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import websockets
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from drivers.dmx import artnet, sacn
from edge.auth import AuthStore, Role

ROUNDS = 200  # GOs per input at 44 Hz
CONSOLES = 50  # the second pass: this many more WebSocket clients, each sent every snapshot
RATE_HZ = 44.0
PARS = 4
START_TIMEOUT_S = 30.0
CHANGE_TIMEOUT_S = 1.0
GRID_TOLERANCE_S = 0.001  # a changed packet this close to the deadline grid rode a deadline
PROTOCOLS = ("sacn", "artnet")
INPUTS = ("rest", "osc", "ws")

_VENUE = """\
version = 1
show = "show.toml"

[venue]
id = "golat"

[[nodes]]
id = "stage"

[api]
host = "127.0.0.1"
port = {api_port}

[mqtt]
mode = "off"

[osc]
enabled = true
host = "127.0.0.1"
udp_port = {osc_port}
tcp_port = {osc_tcp_port}

[telemetry]
store = "var/telemetry.sqlite3"

[dmx]
rate_hz = {rate_hz}

[[dmx.outputs]]
protocol = "sacn"
universes = [1]
targets = ["127.0.0.1"]
udp_port = {sacn_port}

[[dmx.outputs]]
protocol = "artnet"
universes = [2]
targets = ["127.0.0.1"]
udp_port = {artnet_port}

[[groups]]
label = "pars"
id = "par-{{n}}"
profile = "led_par_rgbw"
count = {pars}
transport = {{ kind = "dmx", universe = 1, address = 1 }}

[[devices]]
id = "par-art"
profile = "led_par_rgbw"
transport = {{ kind = "dmx", universe = 2, address = 1 }}
"""

_SHOW = """\
version = 1

[show]
title = "GO latency benchmark"

[[lists]]
id = "main"
loop = true
go_debounce_s = 0

[[lists.cues]]
number = 1
actions = [{ kind = "lighting.levels", fade_s = 0, levels = [
    { group = "pars", level = 100 }, { fixture = "par-art", level = 100 },
] }]

[[lists.cues]]
number = 2
actions = [{ kind = "lighting.levels", fade_s = 0, levels = [
    { group = "pars", level = 20 }, { fixture = "par-art", level = 20 },
] }]
"""


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Change:
    at: float  # when the first packet with the new slots arrived
    prev: float  # when the packet before it (the old look) arrived


@dataclass
class Wire:
    """The DMX receiver: a thread on blocking sockets that timestamps every packet and keeps,
    per protocol, every change of slots and every packet arrival."""

    socks: dict[str, socket.socket]
    changes: dict[str, list[Change]] = field(default_factory=lambda: {p: [] for p in PROTOCOLS})
    arrivals: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PROTOCOLS})
    steady: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PROTOCOLS})
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def open(cls) -> Wire:
        socks = {}
        for proto in PROTOCOLS:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind(("127.0.0.1", 0))
            socks[proto] = s
        return cls(socks)

    def port(self, proto: str) -> int:
        return int(self.socks[proto].getsockname()[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dmx-wire", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        for s in self.socks.values():
            s.close()

    def _slots(self, proto: str, packet: bytes) -> bytes | None:
        try:
            if proto == "sacn":
                p = sacn.decode(packet)
                if isinstance(p, sacn.SacnData) and not p.stream_terminated:
                    return p.data
                return None  # discovery, sync, or the stream-terminated packets at shutdown
            a = artnet.decode(packet)
            return a.data if isinstance(a, artnet.ArtDmx) else None
        except Exception:  # count and go on: a bad packet must not end the measurement
            self.errors += 1
            return None

    def _run(self) -> None:
        by_fd = {s.fileno(): (p, s) for p, s in self.socks.items()}
        last: dict[str, tuple[bytes, float] | None] = {p: None for p in PROTOCOLS}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(by_fd), [], [], 0.1)
            for fd in ready:
                proto, s = by_fd[fd]
                packet = s.recv(2048)
                now = time.monotonic()
                data = self._slots(proto, packet)
                if data is None:
                    continue
                self.arrivals[proto].append(now)
                before = last[proto]
                if before is not None and before[0] != data:
                    self.changes[proto].append(Change(now, before[1]))
                elif before is not None:  # the same slots again: a deadline frame
                    self.steady[proto].append(now)
                last[proto] = (data, now)

    def mark(self) -> dict[str, int]:
        return {p: len(self.changes[p]) for p in PROTOCOLS}

    async def wait_change(self, mark: dict[str, int]) -> dict[str, Change]:
        """The first change of each protocol after ``mark`` (polling: the timestamps are the
        receiver thread's, so the poll interval does not enter the figures)."""
        deadline = time.monotonic() + CHANGE_TIMEOUT_S
        while any(len(self.changes[p]) <= mark[p] for p in PROTOCOLS):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no changed DMX packet within {CHANGE_TIMEOUT_S} s of a GO")
            await asyncio.sleep(0.002)
        return {p: self.changes[p][mark[p]] for p in PROTOCOLS}

    def off_grid(self, proto: str, at: float, period: float) -> bool:
        """Whether the packet at ``at`` is an early frame: off the deadline grid (whose phase is
        the circular mean of the phases of the latest unchanged packets: only deadline frames
        repeat a look), or on it next to the deadline frame."""
        recent = np.array(self.steady[proto][-200:])
        if recent.size < 8:
            return False
        angle = 2 * np.pi * recent / period
        grid = float(np.arctan2(np.sin(angle).mean(), np.cos(angle).mean()))
        off = (2 * np.pi * at / period - grid + np.pi) % (2 * np.pi) - np.pi
        if abs(off) * period / (2 * np.pi) > GRID_TOLERANCE_S:
            return True
        # On the grid's phase: a deadline frame, unless the deadline frame is a neighbour (an
        # early frame sent just before or after a deadline).
        return any(
            t != at and abs(t - at) <= 2 * GRID_TOLERANCE_S for t in self.arrivals[proto][-64:]
        )

    def next_arrivals(self, proto: str, after: float, until: float) -> int:
        """How many packets of ``proto`` arrived in ``(after, until]``."""
        arr = self.arrivals[proto]
        return sum(1 for t in arr[-64:] if after < t <= until)


class OscClient(asyncio.DatagramProtocol):
    """A UDP OSC client: a message to the service, its ``/reply/...`` back as a future."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not a subclass on 3.11

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        msg = OscMessage(data)
        fut = self.waiting.pop(msg.address.removeprefix("/reply"), None)
        if fut is not None and not fut.done():
            fut.set_result(json.loads(msg.params[0]))

    async def request(self, address: str) -> dict[str, Any]:
        assert self.transport is not None
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[address] = fut
        self.transport.sendto(OscMessageBuilder(address).build().dgram)
        reply = await asyncio.wait_for(fut, 2.0)
        if reply.get("status") != "ok":
            raise RuntimeError(f"OSC {address}: {reply}")
        return reply


class WsClient:
    """A WebSocket client of ``/ws``: playback commands matched to their results by id."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seq = 0
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read(), name="ws-reader")

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg.get("type") == "playback.result":
                    fut = self.waiting.pop(msg.get("id"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)

    async def command(self, command: str) -> dict[str, Any]:
        self.seq += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[self.seq] = fut
        await self.ws.send(json.dumps({"type": "playback", "id": self.seq, "command": command}))
        msg = await asyncio.wait_for(fut, 2.0)
        if not msg.get("ok"):
            raise RuntimeError(f"WebSocket {command}: {msg}")
        return msg

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


@dataclass
class Samples:
    latency: dict[str, list[float]] = field(default_factory=dict)  # "rest/sacn" -> ms
    reply: dict[str, list[float]] = field(default_factory=dict)  # input -> ms
    early: list[bool] = field(default_factory=list)  # the change came in an early frame
    tick: list[int] = field(default_factory=list)  # the change came on the k-th packet after GO
    reference: dict[str, list[float]] = field(default_factory=dict)  # input -> ms

    def add(self, key: str, table: dict[str, list[float]], value: float) -> None:
        table.setdefault(key, []).append(value)


def pct(values: list[float]) -> tuple[float, float, float]:
    a = np.array(values)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.max())


async def _start_service(venue: Path, api_port: int) -> asyncio.subprocess.Process:
    """``flytower run`` on ``venue``, its log in a file beside it (a pipe nobody reads could
    fill and stall the service); ready once the API serves the loaded show."""
    log_path = venue.with_name("service.log")
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.cli", "run", str(venue), "--no-simulators",
            stdout=subprocess.DEVNULL, stderr=log_file,
        )  # fmt: skip
    url = f"http://127.0.0.1:{api_port}/api/v1/playback"
    deadline = time.monotonic() + START_TIMEOUT_S
    async with httpx.AsyncClient(timeout=1.0, headers=_auth(venue)) as client:
        while time.monotonic() < deadline and proc.returncode is None:
            with contextlib.suppress(httpx.HTTPError):
                r = await client.get(url)
                if r.status_code == 200 and r.json().get("show") is not None:
                    return proc
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.1)
    await _stop_service(proc)
    err = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
    raise RuntimeError(f"the service did not start with its show loaded:\n{err}")


def _auth(venue: Path) -> dict[str, str]:
    """An operator's API token (access control is on, as in a venue): every GO pays its check."""
    secret = venue.with_name("token")
    if not secret.exists():
        store = AuthStore(venue.parent / "var" / "auth.sqlite3")
        secret.write_text(store.create_token("bench", Role.OPERATOR)[1])
        store.close()
    return {"Authorization": f"Bearer {secret.read_text()}"}


async def _stop_service(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def write_venue(folder: Path, wire: Wire, rate_hz: float) -> tuple[Path, int, int]:
    """The benchmark's venue and show in ``folder``: (the venue file, API port, OSC port)."""
    api_port = _free_port(socket.SOCK_STREAM)
    osc_port = _free_port(socket.SOCK_DGRAM)
    venue = folder / "venue.toml"
    venue.write_text(
        _VENUE.format(
            api_port=api_port,
            osc_port=osc_port,
            osc_tcp_port=_free_port(socket.SOCK_STREAM),
            rate_hz=rate_hz,
            sacn_port=wire.port("sacn"),
            artnet_port=wire.port("artnet"),
            pars=PARS,
        ),
        encoding="utf-8",
    )
    (folder / "show.toml").write_text(_SHOW, encoding="utf-8")
    return venue, api_port, osc_port


async def measure(rate_hz: float, rounds: int, consoles: int = 0) -> tuple[Samples, int]:
    """One service at ``rate_hz``; ``rounds`` GOs per input, with ``consoles`` more WebSocket
    clients connected (each gets every playback snapshot). Returns the samples and the number
    of undecodable packets."""
    wire = Wire.open()
    with tempfile.TemporaryDirectory(prefix="bench-golat-") as tmp:
        venue, api_port, osc_port = write_venue(Path(tmp), wire, rate_hz)
        wire.start()
        proc = await _start_service(venue, api_port)
        loop = asyncio.get_running_loop()
        transport, osc = await loop.create_datagram_endpoint(
            OscClient, remote_addr=("127.0.0.1", osc_port)
        )
        base = f"http://127.0.0.1:{api_port}"
        try:
            auth = _auth(venue)
            url = f"ws://127.0.0.1:{api_port}/ws"
            async with (
                httpx.AsyncClient(base_url=base, timeout=2.0, headers=auth) as http,
                websockets.connect(url, max_size=None, additional_headers=auth) as raw_ws,
            ):
                ws = WsClient(raw_ws)
                others: list[WsClient] = []
                try:
                    for _ in range(consoles):
                        sock = await websockets.connect(url, max_size=None, additional_headers=auth)
                        others.append(WsClient(sock))
                    samples = await _rounds(rate_hz, rounds, wire, http, osc, ws)
                finally:
                    for c in [ws, *others]:
                        await c.close()
        finally:
            transport.close()
            await _stop_service(proc)
            wire.close()
    return samples, wire.errors


async def _rounds(
    rate_hz: float, rounds: int, wire: Wire, http: httpx.AsyncClient, osc: OscClient, ws: WsClient
) -> Samples:
    async def rest_go() -> None:
        r = await http.post("/api/v1/playback/go")
        r.raise_for_status()

    async def rest_ref() -> None:
        (await http.get("/api/v1/playback")).raise_for_status()

    async def osc_go() -> None:
        await osc.request("/go")

    async def osc_ref() -> None:
        await osc.request("/flytower/ping")

    async def ws_go() -> None:
        await ws.command("go")

    async def ws_ref() -> None:
        # No playback message is a no-op, so the reference is an unknown command: the same
        # socket, handler and reply, refused by validation before the cue engine.
        with contextlib.suppress(RuntimeError):
            await ws.command("nothing")

    gos: dict[str, Callable[[], Awaitable[None]]] = {"rest": rest_go, "osc": osc_go, "ws": ws_go}
    refs: dict[str, Callable[[], Awaitable[None]]] = {
        "rest": rest_ref,
        "osc": osc_ref,
        "ws": ws_ref,
    }
    period = 1.0 / rate_hz
    rng = random.Random(5)
    s = Samples()
    for name in INPUTS:  # warm up every path (first connections, imports)
        await refs[name]()
    for _ in range(rounds):
        for name in INPUTS:
            t = time.monotonic()
            await refs[name]()
            s.add(name, s.reference, (time.monotonic() - t) * 1000)
            await asyncio.sleep(period * rng.random())  # GOs at every phase of the frame clock
            mark = wire.mark()
            t0 = time.monotonic()
            await gos[name]()
            s.add(name, s.reply, (time.monotonic() - t0) * 1000)
            changed = await wire.wait_change(mark)
            for proto, ch in changed.items():
                s.add(f"{name}/{proto}", s.latency, (ch.at - t0) * 1000)
                s.early.append(wire.off_grid(proto, ch.at, period))
                s.tick.append(wire.next_arrivals(proto, t0, ch.at))
    return s


def _report(rate_hz: float, s: Samples, errors: int, consoles: int = 0) -> None:
    period_ms = 1000.0 / rate_hz
    also = f", {consoles} more console (WebSocket) clients connected" if consoles else ""
    print(f"   -- lighting engine at {rate_hz:g} Hz (frame period {period_ms:.1f} ms){also}")
    for name in INPUTS:
        ref50, ref99, _ = pct(s.reference[name])
        rep50, rep99, _ = pct(s.reply[name])
        for proto in PROTOCOLS:
            p50, p99, mx = pct(s.latency[f"{name}/{proto}"])
            print(
                f"   GO {name:4} -> {proto:6}  p50 {p50:6.2f}  p99 {p99:6.2f}  max {mx:6.2f} ms"
                f"   (x{p50 / ref50:5.1f} / x{p99 / ref99:5.1f} the reference)"
            )
        label = {"rest": "GET /api/v1/playback", "osc": "/flytower/ping", "ws": "invalid command"}
        print(
            f"      {name} GO reply   p50 {rep50:6.2f}  p99 {rep99:6.2f} ms;  reference "
            f"{label[name]} round trip p50 {ref50:5.2f}  p99 {ref99:5.2f} ms"
        )
    ticks = np.bincount(np.array(s.tick))
    early = float(np.mean(s.early)) * 100
    tick_text = ", ".join(f"{k}: {100 * n / len(s.tick):.0f} %" for k, n in enumerate(ticks) if n)
    print(
        f"   change carried by an early frame (off the deadline grid) {early:.0f} %, "
        f"by a deadline frame {100 - early:.0f} %"
    )
    print(f"   change on the k-th packet after the GO: {tick_text}; undecodable packets {errors}")


async def run() -> None:
    result, errors = await measure(RATE_HZ, ROUNDS)
    _report(RATE_HZ, result, errors)
    worst = max(pct(v)[1] for v in result.latency.values())
    crowd, errors = await measure(RATE_HZ, ROUNDS // 2, CONSOLES)
    _report(RATE_HZ, crowd, errors, CONSOLES)
    crowded = max(pct(v)[1] for v in crowd.latency.values())
    print(
        f"   p99 GO -> wire, worst input and protocol: {worst:.2f} ms at {RATE_HZ:g} Hz, "
        f"{crowded:.2f} ms with {CONSOLES} consoles (target <= 5 ms; GO -> wire is the input's "
        "stack and the GO's command path)"
    )
