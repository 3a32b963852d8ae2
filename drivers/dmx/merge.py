"""Merging several DMX sources of one universe (E1.31 section 6.2.3 and 6.7; Art-Net 4 merge).

Each source's latest frame is kept with its priority and arrival time. A source ends when it
sends a stream-terminated packet or when nothing arrives for 2.5 s (E131_NETWORK_DATA_LOSS_TIMEOUT;
Art-Net 4 uses a longer 10 s merge timeout, but one rule for every source keeps a stalled
console from holding a channel). Among the live sources the highest priority wins; sources of
equal priority merge highest-takes-precedence per channel (numpy ``maximum``). Art-Net carries
no priority, so Art-Net sources get ``ARTNET_PRIORITY`` (100, sACN's default): an Art-Net
console and a default sACN console merge HTP, and an sACN source above 100 overrides both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from drivers.dmx.sacn import MAX_PRIORITY, NETWORK_DATA_LOSS_TIMEOUT_S

ARTNET_PRIORITY = 100
Frame = npt.NDArray[np.uint8]


def as_frame(data: bytes | npt.NDArray[np.uint8]) -> Frame:
    """A 512-slot uint8 array from bytes or an array of up to 512 slots (zero-padded)."""
    src = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    if src.dtype != np.uint8 or src.ndim != 1 or src.size > 512:
        raise ValueError(f"a DMX frame is at most 512 uint8 slots, got {src.dtype} {src.shape}")
    frame = np.zeros(512, dtype=np.uint8)
    frame[: src.size] = src
    return frame


@dataclass(slots=True)
class Source:
    """One sender's latest frame for a universe."""

    id: str
    name: str
    priority: int
    frame: Frame
    last_seen: float


class Merger:
    """The merged output of every live source of one universe."""

    def __init__(self, universe: int, timeout_s: float = NETWORK_DATA_LOSS_TIMEOUT_S) -> None:
        self.universe = universe
        self.timeout_s = timeout_s
        self._sources: dict[str, Source] = {}

    def update(
        self,
        source_id: str,
        data: bytes | Frame,
        priority: int,
        *,
        name: str = "",
        now: float | None = None,
    ) -> None:
        if not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority {priority} out of range 0..{MAX_PRIORITY}")
        when = time.monotonic() if now is None else now
        self._sources[source_id] = Source(source_id, name, priority, as_frame(data), when)

    def terminate(self, source_id: str) -> None:
        """The source said it stops (sACN stream-terminated): drop it at once."""
        self._sources.pop(source_id, None)

    def expire(self, now: float | None = None) -> list[str]:
        """Drop sources silent for longer than the timeout; return their ids."""
        when = time.monotonic() if now is None else now
        gone = [s.id for s in self._sources.values() if when - s.last_seen > self.timeout_s]
        for sid in gone:
            del self._sources[sid]
        return gone

    def sources(self, now: float | None = None) -> list[Source]:
        self.expire(now)
        return sorted(self._sources.values(), key=lambda s: (-s.priority, s.id))

    def winning_priority(self, now: float | None = None) -> int | None:
        live = self.sources(now)
        return live[0].priority if live else None

    def merged(self, now: float | None = None) -> Frame | None:
        """The merged universe, or None when no source is live."""
        live = self.sources(now)
        if not live:
            return None
        top = live[0].priority
        frames = [s.frame for s in live if s.priority == top]
        if len(frames) == 1:
            return frames[0].copy()
        merged: Frame = np.maximum.reduce(frames)
        return merged
