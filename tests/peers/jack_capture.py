"""A JACK capture client for the tests: records what another client's output ports send.

It runs in a child process (``spawn``), as the acoustic room does (simulators/acoustics/jack.py),
for the same reasons: PortAudio joins a JACK server once, reading ``JACK_DEFAULT_SERVER`` when it
initialises, and the child names its JACK client with ``PaJack_SetClientName`` before that, so
it is ``client_name`` and not a second ``PortAudio`` mistaken for Flytower's stream. Its ports
are ``{client_name}:in_0..``. ``connect(src_port, k)`` patches a port into ``in_k`` with
``jack_connect`` (and undoes PortAudio's automatic ``system:capture_*`` links, which on the dummy
backend only add silence).

Frames land in a shared ``RawArray`` (the first ``capacity`` frames after the stream starts);
``frames()`` says how many so far, ``array()`` copies them out. Nothing of Flytower is imported.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import subprocess
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from numpy.typing import NDArray


def _main(
    conn: Connection, server: str, name: str, channels: int, data: Any, count: Any, capacity: int
) -> None:
    os.environ["JACK_DEFAULT_SERVER"] = server
    os.environ["JACK_NO_START_SERVER"] = "1"
    cname = ctypes.create_string_buffer(name.encode())
    try:
        pa = ctypes.CDLL(ctypes.util.find_library("portaudio") or "libportaudio.so.2")
        pa.PaJack_SetClientName(cname)  # PortAudio keeps the pointer: cname lives here
        import sounddevice as sd

        apis = sd.query_hostapis()
        index = next(
            d["index"]
            for d in sd.query_devices()
            if apis[d["hostapi"]]["name"] == "JACK Audio Connection Kit"
            and d["max_input_channels"] >= channels
        )
        buf = np.frombuffer(memoryview(data), dtype=np.float32).reshape(capacity, channels)
        n = np.frombuffer(memoryview(count), dtype=np.float64)

        def callback(indata: Any, frames: int, _t: Any, _status: Any) -> None:
            at = int(n[0])
            k = min(frames, capacity - at)
            if k > 0:
                buf[at : at + k] = indata[:k]
                n[0] = at + k

        stream = sd.InputStream(
            device=index, channels=channels, samplerate=48000, dtype="float32", callback=callback
        )
        stream.start()
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        os._exit(1)
    conn.send(("ready", name))
    with contextlib.suppress(EOFError, OSError):
        conn.recv()  # stop (or the parent gone)
    stream.close()
    os._exit(0)  # no Pa_Terminate (it may abort once jackd is gone)


class JackCapture:
    """``with JackCapture(server, channels, seconds) as cap: cap.connect(port, 0)``."""

    def __init__(self, server: str, channels: int = 2, seconds: float = 20.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.server = server
        self.name = f"ftcap{os.getpid() % 100000}"
        self.channels = channels
        self.capacity = int(48000 * seconds)
        self._data: Any = ctx.RawArray(ctypes.c_float, self.capacity * channels)
        self._count: Any = ctx.RawArray(ctypes.c_double, 1)
        self._parent, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_main,
            args=(child, server, self.name, channels, self._data, self._count, self.capacity),
            daemon=True,
        )
        self._child = child

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "JACK_DEFAULT_SERVER": self.server, "JACK_NO_START_SERVER": "1"}

    def __enter__(self) -> JackCapture:
        self._proc.start()
        self._child.close()
        if not self._parent.poll(30):
            self.close()
            raise TimeoutError("the capture client did not start in 30 s")
        message = self._parent.recv()
        if message[0] != "ready":
            self.close()
            raise RuntimeError(f"capture client: {message[1]}")
        deadline = time.monotonic() + 5
        while not all(f"{self.name}:in_{k}" in self.ports() for k in range(self.channels)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ports of {self.name}: {self.ports()}")
            time.sleep(0.05)
        for k in range(self.channels):
            self._jack("jack_disconnect", f"system:capture_{k + 1}", f"{self.name}:in_{k}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._parent.send(("stop",))
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._parent.close()

    def _jack(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(list(args), env=self.env, capture_output=True, timeout=5, check=False)

    def ports(self) -> list[str]:
        return self._jack("jack_lsp").stdout.decode().split()

    def connect(self, source: str, channel: int) -> None:
        done = self._jack("jack_connect", source, f"{self.name}:in_{channel}")
        if done.returncode != 0:
            raise RuntimeError(f"jack_connect {source}: {done.stderr.decode()}")

    def frames(self) -> int:
        return int(np.frombuffer(memoryview(self._count), dtype=np.float64)[0])

    def array(self) -> NDArray[np.float32]:
        flat = np.frombuffer(memoryview(self._data), dtype=np.float32)
        return flat.reshape(self.capacity, self.channels)[: self.frames()].copy()
