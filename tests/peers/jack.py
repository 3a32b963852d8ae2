"""A real JACK server (jackd2, dummy backend) for the audio tests and benchmark, and the
signals the tests send through it.

``JackServer`` starts ``jackd -n NAME -d dummy`` with a unique name and, unless a test asks
otherwise, a 1024-frame period (21 ms): a CI run saw 50-70 xruns a second at 256 frames, which
a jackd without real-time scheduling on a busy machine reproduces, and none at 1024. It
remembers the server by PID, waits until it accepts clients (``jack_wait -w``) and stops it by
PID. Every JACK command runs with
``JACK_DEFAULT_SERVER=NAME`` so parallel test sessions never meet. ``kill()`` is the crash the
recovery test needs. ``connect()`` loops an output port back to an input port with
``jack_connect``; the PortAudio client's ports are found with ``jack_lsp``, because its name
gets a suffix (``PortAudio-01``) while an earlier client of the same name is still closing.

The processor factories below are picklable dataclasses, because the audio host process that
runs them is started with ``spawn``. Recording goes into a ``RawArray`` shared with the test.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from drivers.audio import Processor, StreamFormat

Block = NDArray[np.float32]


class JackServer:
    """One jackd on the dummy backend, started and stopped by PID."""

    def __init__(
        self,
        log_dir: Path,
        inputs: int = 2,
        outputs: int = 2,
        period: int = 1024,
        rate: int = 48000,
        name: str | None = None,
    ) -> None:
        if shutil.which("jackd") is None:
            raise RuntimeError("jackd is not installed: run `make test` (apt jackd2)")
        self.name = name or f"ft-{uuid.uuid4().hex[:10]}"
        self.args = [
            "jackd", "-n", self.name, "-d", "dummy", "-r", str(rate), "-p", str(period),
            "-C", str(inputs), "-P", str(outputs),
        ]  # fmt: skip
        self.log = log_dir / f"jackd-{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "JACK_DEFAULT_SERVER": self.name, "JACK_NO_START_SERVER": "1"}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 10.0) -> JackServer:
        # No D-Bus device reservation: there is no session bus, and the dummy backend has no card.
        env = {**os.environ, "JACK_NO_AUDIO_RESERVATION": "1"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jackd exited with {self.proc.returncode}: see {self.log}")
            ready = subprocess.run(
                ["jack_wait", "-c"], env=self.env, capture_output=True, check=False, timeout=5
            )
            if b"running" in ready.stdout and b"not" not in ready.stdout:
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"jackd {self.name} not ready after {timeout_s} s")

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill(self) -> None:
        """A crash: SIGKILL, no goodbye to the clients."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def ports(self) -> list[str]:
        done = subprocess.run(
            ["jack_lsp"], env=self.env, capture_output=True, check=True, timeout=5
        )
        return done.stdout.decode().split()

    def portaudio_port(self, suffix: str, timeout_s: float = 5.0) -> str:
        """The full name of the PortAudio client's port ``suffix`` (``out_0``, ``in_1``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [p for p in self.ports() if p.startswith("PortAudio") and p.endswith(suffix)]
            if len(found) == 1:
                return found[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"PortAudio port {suffix}: found {found}")
            time.sleep(0.05)

    def loop(self, out_port: int, in_port: int) -> None:
        """Connect PortAudio's ``out_{out_port}`` to its ``in_{in_port}``."""
        src = self.portaudio_port(f":out_{out_port}")
        dst = self.portaudio_port(f":in_{in_port}")
        subprocess.run(["jack_connect", src, dst], env=self.env, check=True, timeout=5)

    def __enter__(self) -> JackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- signals and processors -----------------------------------------------------------------


def prbs(length: int = 4096, seed: int = 7) -> NDArray[np.float32]:
    """A fixed pseudo-random +-0.5 sequence: its autocorrelation is one sharp peak."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2, length) - 0.5).astype(np.float32)


class Recording:
    """Shared memory the audio host records processor inputs into (the first ``capacity``
    frames after the stream starts); the test reads it while the stream runs."""

    def __init__(self, capacity: int, channels: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.capacity, self.channels = capacity, channels
        self.data: Any = ctx.RawArray(ctypes.c_float, capacity * channels)
        self.count: Any = ctx.RawArray(ctypes.c_double, 1)

    def frames(self) -> int:
        return int(np.frombuffer(memoryview(self.count), dtype=np.float64)[0])

    def array(self) -> NDArray[np.float32]:
        flat = np.frombuffer(memoryview(self.data), dtype=np.float32)
        return flat.reshape(self.capacity, self.channels)[: self.frames()].copy()


@dataclass
class SignalFactory:
    """Output ``i`` plays ``signals[i]`` (``sine:HZ``, ``prbs`` or ``silence``); records inputs."""

    signals: tuple[str, ...]
    recording: Recording | None = None
    amplitude: float = 0.5

    def __call__(self, fmt: StreamFormat) -> Processor:
        return _SignalProcessor(self, fmt)


class _SignalProcessor:
    def __init__(self, spec: SignalFactory, fmt: StreamFormat) -> None:
        period = 4096
        t = np.arange(period * 4)
        tables = []
        for sig in spec.signals:
            if sig.startswith("sine:"):
                hz = float(sig.split(":")[1])
                # A table long enough that the phase wraps cleanly: whole cycles of `hz`.
                n = int(fmt.samplerate)
                tables.append(spec.amplitude * np.sin(2 * np.pi * hz * np.arange(n) / n))
            elif sig == "prbs":
                tables.append(np.resize(prbs(period), t.size))
            else:
                tables.append(np.zeros(t.size))
        self._tables = [np.concatenate([x, x[: fmt.blocksize]]).astype(np.float32) for x in tables]
        self._pos = [0] * len(tables)
        self._rec = spec.recording
        if self._rec is not None:
            self._rec_data = np.frombuffer(memoryview(self._rec.data), dtype=np.float32).reshape(
                self._rec.capacity, self._rec.channels
            )
            self._rec_count = np.frombuffer(memoryview(self._rec.count), dtype=np.float64)

    def __call__(self, inp: Block, out: Block) -> None:
        frames = out.shape[0]
        for i, table in enumerate(self._tables):
            pos = self._pos[i]
            out[:, i] = table[pos : pos + frames]
            self._pos[i] = (pos + frames) % (table.size - frames)
        if self._rec is not None:
            n = int(self._rec_count[0])
            if n + frames <= self._rec.capacity:
                self._rec_data[n : n + frames] = inp
                self._rec_count[0] = n + frames


@dataclass
class FailingFactory:
    """A processor that raises (or writes NaN) in every ``every``-th block."""

    every: int = 1
    nan: bool = False

    def __call__(self, fmt: StreamFormat) -> Processor:
        state = {"n": 0}

        def process(inp: Block, out: Block) -> None:
            state["n"] += 1
            out.fill(0.1)
            if state["n"] % self.every == 0:
                if self.nan:
                    out[0, 0] = np.nan
                else:
                    raise ValueError(f"block {state['n']} is bad")

        return process
