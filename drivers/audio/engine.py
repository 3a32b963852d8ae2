"""The realtime part: what runs in PortAudio's callback, once per block.

``CallbackEngine`` is called by PortAudio's audio thread with the device's interleaved input and
output blocks. It

1. gathers the mapped device inputs into a preallocated ``[frames, n_in]`` float32 block
   (``np.take`` with precomputed flat indices and ``out=``);
2. calls the processor, ``process(inp, out)``, which writes ``out`` (``[frames, n_out]``) in place;
3. scatters ``out`` onto the mapped device outputs (``np.put`` with precomputed flat indices);
   device outputs that nothing maps to are silent;
4. counts: callbacks, frames, the four xrun flags separately, processor failures, and the time
   the callback took.

Steady state creates no arrays and takes no lock: every buffer and index array is made in
``__init__``, ``mode="clip"`` keeps ``take``/``put`` from buffering, and the counters are plain
stores into a float64 array (``Slot``) that a reader in another process may read at any time
(8-byte aligned stores are not torn on the platforms we run on; a reader may see a counter one
block old, never a half-written one). What CPython does underneath (a float object per
``perf_counter()`` call) comes from its free lists, not from a lock or the system allocator in
the usual case.

A processor that raises, or writes NaN/inf, makes that block silent and is counted; after
``max_consecutive_failures`` such blocks in a row it is bypassed: it is not called again and the
outputs stay muted until the stream is reopened. The reasoning: a processor that fails once
(a bad parameter for one block) should not take the room's sound down, but one that fails every
block would otherwise burn the callback's time raising exceptions, and a half-working reverb is
worse than silence in a theatre. The callback itself never raises: an exception escaping it
would make sounddevice abort the stream.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import IntEnum
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from drivers.audio.config import AudioConfig

Block = NDArray[np.float32]
Processor = Callable[[Block, Block], None]


class Slot(IntEnum):
    """Positions in the shared float64 statistics array."""

    CALLBACKS = 0
    FRAMES = 1
    INPUT_UNDERFLOWS = 2
    INPUT_OVERFLOWS = 3
    OUTPUT_UNDERFLOWS = 4
    OUTPUT_OVERFLOWS = 5
    PRIMING_BLOCKS = 6
    PROCESSOR_ERRORS = 7
    CONSECUTIVE_ERRORS = 8
    BYPASSED = 9
    ODD_BLOCKS = 10  # a block whose frame count differs from the configured block size
    BUSY_S = 11  # total time spent in the callback
    BUSY_MAX_S = 12
    CPU_LOAD = 13  # PortAudio's own estimate, written by the host's control loop


N_SLOTS = len(Slot)


class StatusFlags(Protocol):
    """What the engine reads of ``sounddevice.CallbackFlags``."""

    def __bool__(self) -> bool: ...

    @property
    def input_underflow(self) -> bool: ...

    @property
    def input_overflow(self) -> bool: ...

    @property
    def output_underflow(self) -> bool: ...

    @property
    def output_overflow(self) -> bool: ...

    @property
    def priming_output(self) -> bool: ...


def flat_indices(frames: int, width: int, channels: tuple[int, ...]) -> NDArray[np.intp]:
    """Flat indices into a C-ordered ``[frames, width]`` block of the 1-based ``channels``."""
    rows = np.arange(frames, dtype=np.intp)[:, None] * width
    return rows + (np.asarray(channels, dtype=np.intp) - 1)[None, :]


class CallbackEngine:
    """The PortAudio stream callback: channel map, processor, counters."""

    def __init__(
        self,
        config: AudioConfig,
        processor: Processor,
        stats: NDArray[np.float64],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if stats.shape != (N_SLOTS,) or stats.dtype != np.float64:
            raise ValueError(f"stats must be float64[{N_SLOTS}]")
        self.frames = config.blocksize
        self.last_error = ""
        self._process = processor
        self._stats = stats
        self._clock = clock
        self._max_failures = config.max_consecutive_failures
        self._in = np.zeros((self.frames, config.n_in), dtype=np.float32)
        self._out = np.zeros((self.frames, config.n_out), dtype=np.float32)
        self._in_idx = flat_indices(self.frames, config.device_inputs, config.input_map)
        self._out_idx = flat_indices(self.frames, config.device_outputs, config.output_map)
        self._all_outputs_mapped = config.n_out == config.device_outputs
        self._bypassed = False

    @property
    def processor(self) -> Processor:
        """The processor this engine calls (the host hands it control messages)."""
        return self._process

    def __call__(
        self, indata: Block, outdata: Block, frames: int, time_info: object, status: StatusFlags
    ) -> None:
        t0 = self._clock()
        s = self._stats
        s[Slot.CALLBACKS] += 1
        s[Slot.FRAMES] += frames
        if status:
            self._count_status(status)
        if frames != self.frames:
            # PortAudio promises the fixed block size we asked for; if a host API breaks that
            # promise, a silent block is safer than a processor fed a block of the wrong size.
            outdata.fill(0)
            s[Slot.ODD_BLOCKS] += 1
        else:
            np.take(indata, self._in_idx, out=self._in, mode="clip")
            self._run_processor()
            if not self._all_outputs_mapped:
                outdata.fill(0)
            np.put(outdata, self._out_idx, self._out, mode="clip")
        busy = self._clock() - t0
        s[Slot.BUSY_S] += busy
        if busy > s[Slot.BUSY_MAX_S]:
            s[Slot.BUSY_MAX_S] = busy

    def _run_processor(self) -> None:
        out = self._out
        if self._bypassed:
            out.fill(0)
            return
        try:
            self._process(self._in, out)
        except Exception as exc:  # any processor failure: count it, never let it kill the stream
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        # One reduction instead of np.isfinite(out).all(), which would allocate a mask.
        if not math.isfinite(float(out.sum())):
            self._failed("processor wrote NaN or infinity")
            return
        if self._stats[Slot.CONSECUTIVE_ERRORS]:
            self._stats[Slot.CONSECUTIVE_ERRORS] = 0

    def _failed(self, reason: str) -> None:
        s = self._stats
        self._out.fill(0)
        self.last_error = reason
        s[Slot.PROCESSOR_ERRORS] += 1
        s[Slot.CONSECUTIVE_ERRORS] += 1
        if s[Slot.CONSECUTIVE_ERRORS] >= self._max_failures:
            self._bypassed = True
            s[Slot.BYPASSED] = 1

    def _count_status(self, status: StatusFlags) -> None:
        s = self._stats
        if status.input_underflow:
            s[Slot.INPUT_UNDERFLOWS] += 1
        if status.input_overflow:
            s[Slot.INPUT_OVERFLOWS] += 1
        if status.output_underflow:
            s[Slot.OUTPUT_UNDERFLOWS] += 1
        if status.output_overflow:
            s[Slot.OUTPUT_OVERFLOWS] += 1
        if status.priming_output:
            s[Slot.PRIMING_BLOCKS] += 1
