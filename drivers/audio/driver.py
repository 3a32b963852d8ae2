"""Audio driver: the connection to an audio host process, and its supervisor.

Three parts, as every driver (STYLE.md):

- the "wire format" is the channel map and counters of ``engine.py`` (pure, realtime-safe) and
  the device matching of ``devices.py``;
- ``AudioConnection`` is an async context manager that owns one audio host process
  (``host.py``): entering starts it and waits until its stream runs (or raises ``AudioError``
  with the reason: device not found, format refused, ...); leaving stops it, and kills it if it
  does not stop within ``STOP_TIMEOUT_S``. Its events (processor errors, the stream's death)
  arrive through the event loop (``add_reader`` on the pipe and on the process sentinel), so
  nothing blocks the loop and no thread is left behind;
- ``AudioDriver`` supervises: opens the stream, reopens it with capped exponential backoff when
  it dies, turns events and counters into health (OFFLINE with the reason when the stream cannot
  open or dies; DEGRADED while the processor fails or is bypassed, or when xruns happened in the
  last report interval; ONLINE otherwise) and, given a sink, publishes its figures as readings
  once per interval.

The processor runs in the host process; it is made there by the picklable ``factory`` from the
stream's format (``ProcessorFactory``), so ``drivers/`` never imports ``dsp/``: ``edge/`` passes
a factory from ``dsp/``.

Control: ``AudioDriver.control(payload)`` sends a payload down to the running processor
(``host.Controllable``: the file player of ``player.py``, the sound-field engine later); what it
reports comes back to ``on_event`` as ``("event", payload)`` or ``("control_error", text)``, on
the event loop. When a stream ends (stopped, or died: the processor and its state die with it)
``on_event`` gets ``("stream_lost", reason)``, so whoever waits on the processor can give up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray

from drivers.audio.config import AudioConfig, AudioError, AudioFormatError, DeviceNotFound
from drivers.audio.engine import N_SLOTS, Slot
from drivers.audio.host import ProcessorFactory, host_main
from drivers.base import Backoff, HealthSink, HealthTracker, ReadingSink, StopFlag
from drivers.model import DriverStats, Health, HealthState, Reading

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 30.0  # a cold spawn imports numpy, scipy and PortAudio: seconds on a busy box
STOP_TIMEOUT_S = 5.0

Event = tuple[Any, ...]
EventSink = Callable[[Event], None]


class StreamAborted(AudioError):
    """The running stream died (device removed, audio server gone, host process crashed)."""


@dataclass(frozen=True, slots=True)
class AudioStats:
    """The counters of one stream (they start at zero each time the stream opens)."""

    callbacks: int = 0
    frames: int = 0
    input_underflows: int = 0
    input_overflows: int = 0
    output_underflows: int = 0
    output_overflows: int = 0
    processor_errors: int = 0
    bypassed: bool = False
    odd_blocks: int = 0
    busy_s: float = 0.0
    busy_max_s: float = 0.0
    cpu_load: float = 0.0  # PortAudio's estimate (0..1 of the block period)
    samplerate: float = 0.0
    blocksize: int = 0
    input_latency_s: float = 0.0
    output_latency_s: float = 0.0
    device: str = ""

    @property
    def xruns(self) -> int:
        return (
            self.input_underflows
            + self.input_overflows
            + self.output_underflows
            + self.output_overflows
        )

    @property
    def callback_load(self) -> float:
        """Time in the callback over audio time processed (0.25: a quarter of one core)."""
        audio_s = self.frames / self.samplerate if self.samplerate else 0.0
        return self.busy_s / audio_s if audio_s else 0.0


class AudioConnection:
    """One audio host process running one stream. Reusable, not reentrant."""

    def __init__(self, config: AudioConfig, factory: ProcessorFactory) -> None:
        self.config = config
        self._factory = factory
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._stats: NDArray[np.float64] = np.zeros(N_SLOTS)
        self._events: deque[Event] = deque()
        self._wakeup: asyncio.Event | None = None
        self._watched: list[int] = []
        self.info: dict[str, Any] = {}

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        shared = self._ctx.RawArray(ctypes.c_double, N_SLOTS)
        self._stats = np.frombuffer(memoryview(shared), dtype=np.float64)
        parent, child = self._ctx.Pipe()
        self._conn = parent
        self._proc = self._ctx.Process(
            target=host_main,
            args=(self.config, self._factory, shared, child),
            name=f"audio-host:{self.config.device or 'default'}",
            daemon=True,
        )
        self._proc.start()
        child.close()  # our copy: EOF on the pipe must mean the child has gone
        self._watch()
        try:
            event = await self.next_event(OPEN_TIMEOUT_S)
            if event is None:
                raise AudioError(f"the audio host did not open the stream in {OPEN_TIMEOUT_S} s")
            if event[0] == "failed":
                kind, text = event[1], event[2]
                raise {"device": DeviceNotFound, "format": AudioFormatError}.get(kind, AudioError)(
                    text
                )
            if event[0] != "ready":
                raise AudioError(f"the audio host failed while opening: {event[-1]}")
        except BaseException:
            await self._shutdown()
            raise
        self.info = event[1]
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        proc, conn = self._proc, self._conn
        if proc is None or conn is None:
            return
        if proc.is_alive():
            with contextlib.suppress(OSError):  # it may be exiting already
                conn.send(("stop",))
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while proc.is_alive() and time.monotonic() < deadline:
                # Events or wake-ups; what counts is the process ending (its sentinel).
                await self.next_event(deadline - time.monotonic())
            if proc.is_alive():
                log.warning("audio host %s did not stop: killing it", proc.pid)
                proc.kill()
        self._unwatch()
        proc.join(STOP_TIMEOUT_S)
        proc.close()
        conn.close()
        self._proc = self._conn = None

    # --- events -------------------------------------------------------------------------

    def _watch(self) -> None:
        assert self._proc is not None
        assert self._conn is not None
        loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._watched = [self._conn.fileno(), self._proc.sentinel]
        loop.add_reader(self._watched[0], self._readable)
        loop.add_reader(self._watched[1], self._exited)

    def _unwatch(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in self._watched:
            loop.remove_reader(fd)
        self._watched = []

    def _drain(self) -> bool:
        """Queue every message waiting in the pipe; False once the pipe is at EOF."""
        assert self._conn is not None
        try:
            while self._conn.poll():
                self._events.append(self._conn.recv())
        except (EOFError, OSError):
            return False
        return True

    def _readable(self) -> None:
        assert self._wakeup is not None
        if not self._drain():
            # EOF: stop watching the pipe (it would stay readable); the sentinel says the rest.
            asyncio.get_running_loop().remove_reader(self._watched[0])
        self._wakeup.set()

    def _exited(self) -> None:
        assert self._proc is not None
        assert self._wakeup is not None
        self._drain()  # what the child said before it went comes first
        self._unwatch()
        # The sentinel fires when the child's files close, a moment before the kernel lets it
        # be reaped: this join returns within microseconds, but join(0) could see it "alive".
        self._proc.join(STOP_TIMEOUT_S)
        self._events.append(("exited", f"audio host exited with code {self._proc.exitcode}"))
        self._wakeup.set()

    def wake(self) -> None:
        """Make a pending ``next_event`` return ``None`` now (the supervisor is stopping)."""
        if self._wakeup is not None:
            self._wakeup.set()

    async def next_event(self, timeout_s: float | None) -> Event | None:
        """The next event from the host, or None after ``timeout_s`` or ``wake()``."""
        if not self._events and self._wakeup is not None:
            self._wakeup.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._wakeup.wait()
            except TimeoutError:
                return None
        return self._events.popleft() if self._events else None

    def control(self, payload: Any) -> None:
        """Send ``payload`` to the processor (``host.Controllable``); never waits for it."""
        if self._conn is None or self._proc is None or not self._proc.is_alive():
            raise AudioError("the audio host is not running")
        try:
            self._conn.send(("control", payload))
        except OSError as exc:  # the host is going away; its sentinel tells the rest
            raise AudioError(f"the audio host is not reachable: {exc}") from exc

    # --- figures ------------------------------------------------------------------------

    def snapshot(self) -> AudioStats:
        s = self._stats.copy()  # one consistent-enough read of counters written by the callback
        info = self.info
        return AudioStats(
            callbacks=int(s[Slot.CALLBACKS]),
            frames=int(s[Slot.FRAMES]),
            input_underflows=int(s[Slot.INPUT_UNDERFLOWS]),
            input_overflows=int(s[Slot.INPUT_OVERFLOWS]),
            output_underflows=int(s[Slot.OUTPUT_UNDERFLOWS]),
            output_overflows=int(s[Slot.OUTPUT_OVERFLOWS]),
            processor_errors=int(s[Slot.PROCESSOR_ERRORS]),
            bypassed=bool(s[Slot.BYPASSED]),
            odd_blocks=int(s[Slot.ODD_BLOCKS]),
            busy_s=float(s[Slot.BUSY_S]),
            busy_max_s=float(s[Slot.BUSY_MAX_S]),
            cpu_load=float(s[Slot.CPU_LOAD]),
            samplerate=float(info.get("samplerate", self.config.samplerate)),
            blocksize=int(info.get("blocksize", self.config.blocksize)),
            input_latency_s=float(info.get("input_latency_s", 0.0)),
            output_latency_s=float(info.get("output_latency_s", 0.0)),
            device=str(info.get("device", "")),
        )


class AudioDriver:
    """Keeps one duplex stream running through a processor; reports its health and figures.

    ``async with AudioDriver(...)`` runs the supervisor in a task until the block ends; or call
    ``run()`` / ``stop()`` yourself (as ``edge/`` does for every driver).
    """

    def __init__(
        self,
        name: str,
        config: AudioConfig,
        factory: ProcessorFactory,
        on_health: HealthSink | None = None,
        sink: ReadingSink | None = None,
        report_interval_s: float = 1.0,
        on_event: EventSink | None = None,
    ) -> None:
        self.name = name
        self._on_event = on_event
        self.config = config
        self._factory = factory
        self._sink = sink
        self._interval = report_interval_s
        self._tracker = HealthTracker(name, log, on_health, offline_after_failures=1)
        self._stop = StopFlag()
        self._conn: AudioConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._last = AudioStats()
        self.last_processor_error = ""

    @property
    def health(self) -> Health:
        return self._tracker.health

    @property
    def stats(self) -> DriverStats:
        return self._tracker.stats

    def snapshot(self) -> AudioStats:
        """The running stream's figures (those of the last stream while none runs)."""
        return self._conn.snapshot() if self._conn is not None else self._last

    @property
    def streaming(self) -> bool:
        """A stream is open (``control`` can reach its processor)."""
        return self._conn is not None

    def control(self, payload: Any) -> None:
        """Send ``payload`` to the running stream's processor; ``AudioError`` if none runs."""
        if self._conn is None:
            raise AudioError(f"{self.name}: no audio stream running ({self.health.reason})")
        self._conn.control(payload)

    def _emit(self, event: Event) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:  # a listener's bug must not stop the supervisor
            log.exception("%s: audio event listener failed on %r", self.name, event[0])

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name=f"{self.name}:audio")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self._task is not None:
            await self._task

    def stop(self) -> None:
        """Stop the stream and make ``run`` return."""
        self._stop.set()
        if self._conn is not None:
            self._conn.wake()

    async def run(self) -> None:
        backoff = Backoff()
        first = True
        while not self._stop.is_set():
            try:
                async with AudioConnection(self.config, self._factory) as conn:
                    self._conn = conn
                    if not first:
                        self._tracker.reconnected()
                    first = False
                    backoff.reset()
                    self._tracker.succeeded()
                    log.info("%s: streaming on %s", self.name, conn.info.get("device"))
                    lost = "stopped"
                    try:
                        await self._serve(conn)
                    except StreamAborted as exc:
                        lost = str(exc)
                        raise
                    finally:
                        self._last = conn.snapshot()
                        self._conn = None
                        self._emit(("stream_lost", lost))
            except AudioError as exc:
                if not self._stop.is_set():
                    self._tracker.failed(str(exc), offline=True)
            await self._stop.sleep(backoff.next_delay())
        self._tracker.set(HealthState.OFFLINE, "stopped")

    async def _serve(self, conn: AudioConnection) -> None:
        previous = conn.snapshot()
        deadline = time.monotonic() + self._interval
        while not self._stop.is_set():
            event = await conn.next_event(max(0.0, deadline - time.monotonic()))
            if event is not None:
                kind = event[0]
                if kind == "processor_error":
                    self.last_processor_error = str(event[1])
                elif kind in ("event", "control_error"):
                    self._emit(event)
                elif kind in ("aborted", "exited"):
                    raise StreamAborted(str(event[1]))
            if time.monotonic() >= deadline:
                current = conn.snapshot()
                self._judge(previous, current)
                if self._sink is not None:
                    await self._sink(self._readings(previous, current))
                previous = current
                deadline += self._interval

    def _judge(self, before: AudioStats, now: AudioStats) -> None:
        """Health from what happened in the last interval."""
        if now.bypassed:
            self._tracker.set(
                HealthState.DEGRADED,
                f"processor bypassed (muted) after {self.config.max_consecutive_failures} "
                f"failures in a row; last: {self.last_processor_error}",
            )
        elif now.processor_errors > before.processor_errors:
            n = now.processor_errors - before.processor_errors
            self._tracker.set(
                HealthState.DEGRADED,
                f"processor failed in {n} block(s): {self.last_processor_error}",
            )
        elif now.xruns > before.xruns:
            self._tracker.set(
                HealthState.DEGRADED, f"{now.xruns - before.xruns} xrun(s) in the last interval"
            )
        else:
            self._tracker.succeeded()

    def _readings(self, before: AudioStats, now: AudioStats) -> list[Reading]:
        mono, wall = time.monotonic(), time.time()
        audio_s = (now.frames - before.frames) / now.samplerate if now.samplerate else 0.0
        load = (now.busy_s - before.busy_s) / audio_s if audio_s else 0.0
        values: dict[str, float | int | bool] = {
            "callbacks": now.callbacks,
            "frames": now.frames,
            "xruns": now.xruns,
            "input_underflows": now.input_underflows,
            "input_overflows": now.input_overflows,
            "output_underflows": now.output_underflows,
            "output_overflows": now.output_overflows,
            "processor_errors": now.processor_errors,
            "bypassed": now.bypassed,
            "cpu_load": now.cpu_load,
            "callback_load": load,
            "callback_max_ms": 1000 * now.busy_max_s,
            "input_latency_ms": 1000 * now.input_latency_s,
            "output_latency_ms": 1000 * now.output_latency_s,
        }
        return [Reading(self.name, k, v, mono, wall) for k, v in values.items()]
