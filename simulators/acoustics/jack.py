"""The room as a JACK client: a child process that owns PortAudio, the stream and the patching.

Why a child process (the same reasons Flytower's audio driver has, found the same way):
PortAudio joins a JACK server once, when it initialises, reading ``JACK_DEFAULT_SERVER`` then;
after jackd dies, closing a stream or terminating PortAudio can hang or abort the process. A
child started with ``spawn`` and the right environment joins the right server, can be let go
with ``os._exit``, and runs the Python callback without competing with the simulators' event
loop for the GIL.

Naming: before PortAudio initialises, the child calls ``PaJack_SetClientName`` in the same
``libportaudio`` sounddevice loads, so the room is the JACK client ``client_name`` (not a
second ``PortAudio`` that would be mistaken for Flytower). Its ports are ``in_0..`` (one per
loudspeaker) and ``out_0..`` (one per microphone).

Patching: PortAudio connects a stream to its device's ports (the JACK ``system`` client). A
patch thread undoes that (the room must not hear a real capture port) and, every
``patch_period_s``, connects every client whose name fully matches ``flytower_client``:
``{flytower}:{speaker_port[k]} -> {room}:in_k`` and ``{room}:out_m -> {flytower}:{mic_port[m]}``,
with ``jack_lsp -c`` / ``jack_connect`` / ``jack_disconnect``. So Flytower may start before or
after the room, and reconnect at will.

Messages over the pipe, child to parent: ``("ready", client)``, ``("failed", text)``,
``("applied", version)`` once an IR has fully crossfaded in, ``("aborted", text)``. Parent to
child: ``("ir", version, irs)``, ``("noise", rms)``, ``("stop",)``; a closed pipe also means
stop. Counters (callbacks, xruns, busy seconds, longest callback) live in a shared ``RawArray``
written by the callback without a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from simulators.acoustics.convolver import NoiseSource, PartitionedConvolver

log = logging.getLogger(__name__)

CALLBACKS, XRUNS, BUSY_S, BUSY_MAX_S, ODD_BLOCKS = range(5)
COUNTERS = 5


class RoomStreamError(RuntimeError):
    """The room's JACK client could not start or died; the message says why."""


@dataclass(frozen=True)
class HostConfig:
    """Everything the child needs (picklable)."""

    client_name: str
    jack_server: str | None
    device: str
    samplerate: int
    blocksize: int
    n_speakers: int
    n_mics: int
    ir_length: int
    crossfade: int  # samples
    noise_rms: float
    flytower_client: str  # regex, full match on a JACK client name
    speaker_ports: tuple[str, ...]  # Flytower's port feeding speaker k, e.g. "out_0"
    mic_ports: tuple[str, ...]  # Flytower's port that mic m feeds, e.g. "in_0"
    patch_period_s: float = 0.5


# --- the child --------------------------------------------------------------------------------


def host_main(conn: Connection, cfg: HostConfig, counters: Any) -> None:
    """Child process entry point."""
    if cfg.jack_server is not None:
        os.environ["JACK_DEFAULT_SERVER"] = cfg.jack_server
    os.environ["JACK_NO_START_SERVER"] = "1"
    name = ctypes.create_string_buffer(cfg.client_name.encode())
    try:
        portaudio = ctypes.CDLL(ctypes.util.find_library("portaudio") or "libportaudio.so.2")
        # PortAudio keeps the pointer: `name` lives as long as this function.
        portaudio.PaJack_SetClientName(name)
        import sounddevice as sd

        stream, convolver, noise = _open(sd, cfg, counters)
        stream.start()
    except Exception as exc:  # the parent gets the reason, whatever PortAudio raised
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        os._exit(1)
    stop = threading.Event()
    patcher = threading.Thread(target=_patch_loop, args=(cfg, stop), name="room-patch", daemon=True)
    patcher.start()
    conn.send(("ready", cfg.client_name))
    reason = _serve(conn, stream, convolver, noise)
    stop.set()
    if reason is None:
        stream.close()
        os._exit(0)
    with contextlib.suppress(OSError):
        conn.send(("aborted", reason))
    # No Pa_Terminate: it may abort or hang once the JACK server is gone.
    os._exit(2)


def _open(sd: Any, cfg: HostConfig, counters: Any) -> tuple[Any, PartitionedConvolver, NoiseSource]:
    convolver = PartitionedConvolver(
        cfg.n_speakers, cfg.n_mics, cfg.blocksize, cfg.ir_length, cfg.crossfade
    )
    noise = NoiseSource(cfg.n_mics, cfg.blocksize, cfg.noise_rms)
    count = np.frombuffer(memoryview(counters), dtype=np.float64)

    def callback(indata: Any, outdata: Any, frames: int, _time: Any, status: Any) -> None:
        start = time.perf_counter()
        if frames != cfg.blocksize:  # PortAudio promised fixed blocks; never seen on JACK
            outdata.fill(0)
            count[ODD_BLOCKS] += 1
        else:
            outdata[...] = convolver.process(indata)
            noise.add_to(outdata)
        busy = time.perf_counter() - start
        count[CALLBACKS] += 1
        if status:
            count[XRUNS] += 1
        count[BUSY_S] += busy
        if busy > count[BUSY_MAX_S]:
            count[BUSY_MAX_S] = busy

    stream = sd.Stream(
        device=(cfg.device, cfg.device),
        channels=(cfg.n_speakers, cfg.n_mics),
        samplerate=cfg.samplerate,
        blocksize=cfg.blocksize,
        dtype="float32",
        callback=callback,
    )
    return stream, convolver, noise


def _serve(
    conn: Connection, stream: Any, convolver: PartitionedConvolver, noise: NoiseSource
) -> str | None:
    """Handle the parent's messages until told to stop (None) or the stream dies (reason)."""
    waiting: list[tuple[int, int]] = []  # (generation that means applied, version)
    while True:
        if not stream.active:
            return "the stream stopped by itself (JACK server gone?)"
        for generation, version in list(waiting):
            if convolver.generation >= generation:
                conn.send(("applied", version))
                waiting.remove((generation, version))
        try:
            if not conn.poll(0.02):
                continue
            message = conn.recv()
        except (EOFError, OSError):
            return None
        if message[0] == "stop":
            return None
        if message[0] == "noise":
            noise.target = float(message[1])
        elif message[0] == "ir":
            try:
                convolver.load(message[2])
            except TimeoutError as exc:
                return str(exc)
            waiting.append((convolver.generation + 1, int(message[1])))


def _patch_loop(cfg: HostConfig, stop: threading.Event) -> None:
    own = re.compile(rf"{re.escape(cfg.client_name)}:(in|out)_\d+")
    flytower = re.compile(cfg.flytower_client)
    while not stop.is_set():
        try:
            graph = _jack_graph()
            connect, disconnect = plan_patch(graph, cfg, own, flytower)
            for src, dst in disconnect:
                _jack("jack_disconnect", src, dst)
            for src, dst in connect:
                _jack("jack_connect", src, dst)
        except (OSError, subprocess.SubprocessError):
            pass  # the server is going away; the stream check reports it
        stop.wait(cfg.patch_period_s)


def plan_patch(
    graph: dict[str, set[str]], cfg: HostConfig, own: re.Pattern[str], flytower: re.Pattern[str]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Which links to make and which to break, given ``graph`` (port -> connected ports)."""
    clients = {p.split(":", 1)[0] for p in graph}
    others = sorted(c for c in clients if c != cfg.client_name and flytower.fullmatch(c))
    connect: list[tuple[str, str]] = []
    for client in others:
        for k, port in enumerate(cfg.speaker_ports):
            src, dst = f"{client}:{port}", f"{cfg.client_name}:in_{k}"
            if src in graph and dst in graph and dst not in graph[src]:
                connect.append((src, dst))
        for m, port in enumerate(cfg.mic_ports):
            src, dst = f"{cfg.client_name}:out_{m}", f"{client}:{port}"
            if src in graph and dst in graph and dst not in graph[src]:
                connect.append((src, dst))
    disconnect = []
    for port, peers in graph.items():
        if own.fullmatch(port):
            for peer in sorted(peers):
                if peer.startswith("system:"):
                    pair = (port, peer) if ":out_" in port else (peer, port)
                    disconnect.append(pair)
    return connect, disconnect


def parse_jack_lsp(text: str) -> dict[str, set[str]]:
    """``jack_lsp -c`` output: a port at column 0, each connection indented below it."""
    graph: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            if current is not None:
                current.add(line.strip())
        else:
            current = graph.setdefault(line.strip(), set())
    return graph


def _jack_graph() -> dict[str, set[str]]:
    done = subprocess.run(["jack_lsp", "-c"], capture_output=True, timeout=5, check=True)
    return parse_jack_lsp(done.stdout.decode(errors="replace"))


def _jack(*args: str) -> None:
    subprocess.run(list(args), capture_output=True, timeout=5, check=False)


# --- the parent -------------------------------------------------------------------------------


class RoomStream:
    """Starts and stops the child; sends it IRs and the noise level; reports its events."""

    def __init__(self, cfg: HostConfig, on_event: Callable[[tuple[Any, ...]], None]) -> None:
        self.cfg = cfg
        self._on_event = on_event
        ctx = multiprocessing.get_context("spawn")
        self._ctx = ctx
        self._counters: Any = ctx.RawArray(ctypes.c_double, COUNTERS)
        self._proc: Any = None
        self._conn: Connection | None = None
        self.running = False

    async def __aenter__(self) -> RoomStream:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=host_main,
            args=(child, self.cfg, self._counters),
            name=f"room-{self.cfg.client_name}",
            daemon=True,
        )
        self._proc.start()
        child.close()
        self._conn = parent
        loop = asyncio.get_running_loop()
        first: asyncio.Future[tuple[Any, ...]] = loop.create_future()

        def readable() -> None:
            try:
                message = parent.recv()
            except (EOFError, OSError):
                loop.remove_reader(parent.fileno())
                message = ("aborted", f"room process exited with code {self._proc.exitcode}")
            if not first.done():
                first.set_result(message)
            else:
                self._event(message)

        loop.add_reader(parent.fileno(), readable)
        try:
            message = await asyncio.wait_for(first, 30)
        except TimeoutError:
            await self._shutdown()
            raise RoomStreamError(
                f"{self.cfg.client_name}: no answer from the JACK client"
            ) from None
        if message[0] != "ready":
            await self._shutdown()
            raise RoomStreamError(f"{self.cfg.client_name}: {message[1]}")
        self.running = True
        return self

    def _event(self, message: tuple[Any, ...]) -> None:
        if message[0] == "aborted":
            self.running = False
            if self._conn is not None:
                with contextlib.suppress(ValueError, OSError):
                    asyncio.get_running_loop().remove_reader(self._conn.fileno())
        self._on_event(message)

    async def __aexit__(self, *exc: object) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        self.running = False
        conn, proc = self._conn, self._proc
        if conn is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(conn.fileno())
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        if proc is not None:
            await asyncio.to_thread(proc.join, 10)
            if proc.is_alive():
                proc.kill()
                await asyncio.to_thread(proc.join, 5)
        if conn is not None:
            conn.close()
        self._conn = self._proc = None

    def send(self, *message: Any) -> None:
        if self._conn is None or not self.running:
            raise RoomStreamError(f"{self.cfg.client_name}: the room's JACK client is not running")
        self._conn.send(message)

    def counters(self) -> dict[str, float]:
        c = np.frombuffer(memoryview(self._counters), dtype=np.float64)
        return {
            "callbacks": float(c[CALLBACKS]),
            "xruns": float(c[XRUNS]),
            "busy_s": float(c[BUSY_S]),
            "busy_max_s": float(c[BUSY_MAX_S]),
            "odd_blocks": float(c[ODD_BLOCKS]),
        }


def port_names(prefix: str, channels: Iterable[int]) -> tuple[str, ...]:
    """PortAudio's JACK port names for 1-based device channels: ``out_0`` is channel 1."""
    return tuple(f"{prefix}_{c - 1}" for c in channels)
