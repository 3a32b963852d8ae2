"""Raw MIDI input from a character device: an ALSA rawmidi port or a serial MIDI interface.

``MtcInput`` owns one file descriptor as an async context manager. It reads whatever bytes
the device has (ALSA's ``/dev/snd/midiC*D*`` hands over the MIDI byte stream as it came off
the wire; a serial interface or a pseudo-terminal is put in raw mode first), runs them through
an ``MtcReader`` and hands each time, stamped with the monotonic arrival time of its bytes,
to ``on_time``. A read error or end of file (the device unplugged, the pty's other end gone)
closes the descriptor, marks the input offline and reopens it with capped backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import termios
import time
import tty
from collections.abc import Callable
from types import TracebackType
from typing import Self

from drivers.base import Backoff, HealthSink, HealthTracker
from drivers.midi.wire import MidiStats, MtcReader, MtcTime
from drivers.model import Health, HealthState

log = logging.getLogger(__name__)

TimeSink = Callable[[MtcTime, float], None]  # (time, monotonic arrival)


class MtcInput:
    """MTC from a raw MIDI character device (``path``)."""

    def __init__(
        self,
        path: str,
        *,
        on_time: TimeSink | None = None,
        name: str = "mtc-in",
        on_health: HealthSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.name = name
        self.on_time = on_time
        self.reader = MtcReader()
        self.tracker = HealthTracker(name, log, on_health)
        self.times = 0
        self._clock = clock
        self._fd: int | None = None
        self._backoff = Backoff(0.1, 2.0)
        self._reopen: asyncio.TimerHandle | None = None
        self._closed = True

    @property
    def stats(self) -> MidiStats:
        return self.reader.stats

    @property
    def health(self) -> Health:
        return self.tracker.health

    async def __aenter__(self) -> Self:
        self._closed = False
        self._open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None
        self._close()
        self.tracker.set(HealthState.OFFLINE, "closed")

    def _open(self) -> None:
        self._reopen = None
        if self._closed:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            self._lost(f"cannot open {self.path}: {exc.strerror or exc}")
            return
        try:
            if os.isatty(fd):
                # Raw mode: a serial MIDI byte 0x0D or 0x03 must arrive unchanged.
                tty.setraw(fd, termios.TCSANOW)
            asyncio.get_running_loop().add_reader(fd, self._readable)
        except (OSError, termios.error) as exc:
            os.close(fd)
            self._lost(f"cannot set up {self.path}: {exc}")
            return
        if self._fd is None and self.tracker.stats.errors:
            self.tracker.reconnected()
        self._fd = fd
        self._backoff.reset()
        self.tracker.succeeded()

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _lost(self, reason: str) -> None:
        self._close()
        self.tracker.failed(reason, offline=True)
        if not self._closed:
            loop = asyncio.get_running_loop()
            self._reopen = loop.call_later(self._backoff.next_delay(), self._open)

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            chunk = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: a pty whose other end closed
            self._lost(f"read from {self.path} failed: {exc.strerror or exc}")
            return
        if not chunk:
            self._lost(f"{self.path}: end of file")
            return
        at = self._clock()
        for mtc in self.reader.feed(chunk):
            self.times += 1
            if self.on_time is not None:
                self.on_time(mtc, at)


__all__ = ["MtcInput", "TimeSink"]
