"""The realtime sound-field engine: zones of direct + early + late, crossfaded mode switches.

A **zone** (``ZoneConfig``) mixes some processor inputs to one source and renders a
``FieldParams`` onto some processor outputs. Zones may share outputs (they add). The engine
(``SoundFieldEngine``) is the audio driver's processor: ``engine(inp, out)`` per block, in
PortAudio's callback; ``SoundFieldFactory`` is the picklable factory the audio host calls.

Per zone and block (``block`` frames; a stream block longer than ``MAX_BLOCK`` is processed as
equal sub-blocks):

1. **source**: ``np.dot`` of the input block with the zone's input weights, stored into a
   circular history (``max_early_delay_s`` long) and band-split for the late path; zones fed
   by the same inputs share one source;
2. **direct + early**: one tap per direct channel (``direct_delay_s``, ``direct_gain[j]``) and
   one per early reflection (``delay, gain * 10**(early_db/20), channel``); one ``np.take``
   gathers ``[block, taps]`` from the history, one ``np.matmul`` with a ``[taps, width]`` gain
   matrix puts them on the outputs. A tap of delay 0 is heard in the same block: this path adds
   **no latency** beyond the stream's own (its latency is the tap's delay, exactly);
3. **late**: the source is split into octave bands (``late.BandHistory``, latency
   ``PathLatency.crossover_samples``), and each parameter set's ``late.LateReverb`` reads its
   band input pre-delayed so that the late field starts at ``late.delay_s`` — but never before
   ``late_min_samples`` = crossover latency + shortest delay line (about 33 ms at 48 kHz);
   a shorter ``delay_s`` is rendered at that minimum, and ``latency()`` says so.

**Mode switches** (``SetField`` through ``control``): the control thread (never the audio
thread) validates the parameters and builds a complete new parameter set (``_Render``: tap
matrix, index arrays, its own late network and buffers), then publishes it by one reference
store (``zone.request``). The audio thread picks it up at the next block boundary (unless a
fade is running: then the newest request waits for the fade to end) and runs old and new side
by side: direct + early crossfade linearly over ``early_fade_s`` (the two are the same signal
with different gains: amplitudes add), the late fields with equal power (``cos``/``sin``) over
``late_fade_s`` (two different networks: uncorrelated, powers add). The new network starts
empty and fills while it fades in; the old one keeps its input and decays while it fades out.
At the end the new set becomes the active one; the old one goes back to the control thread,
which releases it once the audio thread has moved on two blocks (so the audio thread never
frees arrays either).

**No allocation in the audio thread**: every buffer, index table and view is made in
``__init__`` or in ``control``; a block runs only ``take``, ``matmul``, ufuncs and ``copyto``
with ``out=`` (no FFT call: pocketfft takes a work buffer per call; the band split's transforms
are matrix products). Two numpy traps are avoided on purpose: a ufunc with a broadcast operand
buffers, and a copy within one array takes a temporary. What stays true in Python: a call
creates small transient objects (argument tuples, ints) from CPython's own pools
(``tests/unit/test_dsp_engine.py`` measures the transient peak, < 1 KiB, and checks that
nothing stays allocated).

Single writer per field (no locks): ``request`` is written by the control thread only;
``active``, ``incoming``, ``fade_pos``, ``blocks`` by the audio thread only.

``render_ir`` runs this engine over an impulse: what the metrics measure is what plays.
"""

from __future__ import annotations

import gc
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from dsp.field import BANDS_HZ, FieldParams, FloatArray
from dsp.late import (
    MAX_BLOCK,
    BandHistory,
    LateLayout,
    LateReverb,
    design_crossover,
    late_energy,
    make_layout,
)

F32 = NDArray[np.float32]
Index = NDArray[np.intp]

MAX_GAIN = 16.0  # +24 dB: a direct or tap gain beyond this is a design error, not a wish
MAX_LEVEL_DB = 24.0
MAX_TAPS = 4096
CONTROL_SWITCH_INTERVAL_S = 0.0002
PATHS = ("direct", "early", "late")


class StreamShape(Protocol):
    """What the engine needs of the audio driver's ``StreamFormat`` (dsp/ imports no driver)."""

    @property
    def samplerate(self) -> int: ...

    @property
    def blocksize(self) -> int: ...

    @property
    def n_in(self) -> int: ...

    @property
    def n_out(self) -> int: ...


@dataclass(frozen=True)
class ZoneConfig:
    """One zone: ``inputs`` (0-based processor inputs) averaged to one source, rendered with
    ``params`` onto ``outputs`` (0-based processor outputs; ``params.n_out == len(outputs)``).
    ``params`` None: the zone is silent until a ``SetField``."""

    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    params: FieldParams | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a zone needs a name")
        if not self.inputs or not self.outputs:
            raise ValueError(f"zone {self.name}: needs at least one input and one output")
        if len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"zone {self.name}: an output is named twice")
        if min(self.inputs) < 0 or min(self.outputs) < 0:
            raise ValueError(f"zone {self.name}: channels are 0-based indices >= 0")
        if self.params is not None and self.params.n_out != len(self.outputs):
            raise ValueError(
                f"zone {self.name}: params have {self.params.n_out} outputs, the zone "
                f"{len(self.outputs)}"
            )


@dataclass(frozen=True)
class EngineConfig:
    """The engine's zones and limits (picklable: the audio host is spawned)."""

    zones: tuple[ZoneConfig, ...]
    early_fade_s: float = 0.1
    late_fade_s: float = 1.5
    max_early_delay_s: float = 0.5
    max_late_delay_s: float = 0.5
    crossover_taps: int | None = None  # None: 2047 at 48 kHz, scaled with the rate

    def __post_init__(self) -> None:
        if not self.zones:
            raise ValueError("the engine needs at least one zone")
        names = [z.name for z in self.zones]
        if len(set(names)) != len(names):
            raise ValueError(f"zone names must be unique: {names}")
        for name in ("early_fade_s", "late_fade_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 60):
                raise ValueError(f"{name} must be within 0..60 s, got {value}")
        for name in ("max_early_delay_s", "max_late_delay_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value <= 10):
                raise ValueError(f"{name} must be within (0, 10] s, got {value}")


@dataclass(frozen=True)
class SetField:
    """Control payload: crossfade ``zone`` to ``params`` (fades None: the engine's defaults)."""

    zone: str
    params: FieldParams
    early_fade_s: float | None = None
    late_fade_s: float | None = None


@dataclass(frozen=True)
class PathLatency:
    """Latencies of a zone's paths in samples, from the processor's input block to its output
    block (the stream adds its own buffering on top: ``input_latency + output_latency``)."""

    direct_samples: int  # the direct taps' delay: the engine adds nothing to it
    early_min_samples: int  # the earliest early tap (0 when there is none)
    late_onset_samples: int  # where the late field starts (>= late_min_samples)
    late_min_samples: int  # crossover latency + shortest delay line
    late_requested_samples: int  # params.late.delay_s in samples
    crossover_samples: int

    @property
    def late_clamped(self) -> bool:
        return self.late_onset_samples > self.late_requested_samples


@dataclass(frozen=True)
class FieldReady:
    """Event: a zone's new parameter set is built; the crossfade starts at the next block."""

    zone: str
    latency: PathLatency


@dataclass(frozen=True)
class FadeDone:
    """Event: a zone's crossfade has ended; the new parameter set alone is playing."""

    zone: str


def _check_params(p: FieldParams, cfg: EngineConfig) -> None:
    gains = np.concatenate([np.asarray(p.direct_gain, float), np.asarray(p.early.gains, float)])
    if not np.all(np.isfinite(gains)) or (gains.size and float(np.max(np.abs(gains))) > MAX_GAIN):
        raise ValueError(f"direct and early gains must be finite and within +-{MAX_GAIN}")
    for name in ("early_db", "late_db"):
        if getattr(p, name) > MAX_LEVEL_DB:
            raise ValueError(f"{name} must be <= {MAX_LEVEL_DB} dB, got {getattr(p, name)}")
    if not 0 <= p.direct_delay_s <= cfg.max_early_delay_s:
        raise ValueError(f"direct_delay_s must be within 0..{cfg.max_early_delay_s} s")
    if len(p.early.delays_s) > MAX_TAPS:
        raise ValueError(f"at most {MAX_TAPS} early taps, got {len(p.early.delays_s)}")
    if len(p.early.delays_s) and float(np.max(p.early.delays_s)) > cfg.max_early_delay_s:
        raise ValueError(f"early taps must be within {cfg.max_early_delay_s} s (max_early_delay_s)")
    if p.late.delay_s > cfg.max_late_delay_s:
        raise ValueError(f"late.delay_s must be within {cfg.max_late_delay_s} s")


class _Render:
    """One parameter set of one zone: its tap matrix and its late network (built off-thread)."""

    def __init__(self, zone: _Zone, params: FieldParams, paths: Sequence[str] = PATHS) -> None:
        fs, b = zone.samplerate, zone.block
        self.params = params
        self.fades = (1, 1)  # early and late fade lengths (samples) when this set comes in
        cols = zone.config.outputs
        delays: list[int] = []
        gains: list[tuple[int, float]] = []
        if "direct" in paths:
            d = round(params.direct_delay_s * fs)
            for j, g in enumerate(np.asarray(params.direct_gain, float)):
                delays.append(d)
                gains.append((cols[j], float(g)))
        if "early" in paths:
            scale = 10 ** (params.early_db / 20)
            for d_s, g, ch in zip(
                params.early.delays_s, params.early.gains, params.early.channels, strict=True
            ):
                delays.append(round(float(d_s) * fs))
                gains.append((cols[int(ch)], float(g) * scale))
        n_taps = max(1, len(delays))
        g_mat = np.zeros((n_taps, zone.width))
        for i, (col, g) in enumerate(gains):
            g_mat[i, col] = g
        tap_delays = np.array(delays or [0], dtype=np.intp)
        self._g: F32 = g_mat.astype(np.float32)
        self._tmd: Index = (np.arange(b)[:, None] - tap_delays[None, :]).astype(np.intp)
        self._idx: Index = np.zeros((b, n_taps), dtype=np.intp)
        self._taps: F32 = np.zeros((b, n_taps), dtype=np.float32)
        self.early_out: F32 = np.zeros((b, zone.width), dtype=np.float32)
        self.late_out: F32 = np.zeros((b, zone.width), dtype=np.float32)
        requested = round(params.late.delay_s * fs)
        minimum = zone.history.latency + zone.layout.min_latency
        onset = max(requested, minimum)
        late_gain = 10 ** (params.late_db / 20) if "late" in paths else 0.0
        self.has_late = late_gain != 0.0
        self.late = LateReverb(
            zone.layout,
            np.asarray(params.late.t60_s, dtype=np.float64),
            cols,
            zone.history.energy,
            onset - minimum,
            late_gain,
            seed=zone.seed,
        )
        self.late.attach(zone.history)
        early_delays = [round(float(d) * fs) for d in params.early.delays_s]
        self.latency = PathLatency(
            direct_samples=round(params.direct_delay_s * fs),
            early_min_samples=min(early_delays, default=0),
            late_onset_samples=onset,
            late_min_samples=minimum,
            late_requested_samples=requested,
            crossover_samples=zone.history.latency,
        )

    def render(self, zone: _Zone) -> None:
        """Fill ``early_out`` and ``late_out`` for the block just pushed into ``zone``."""
        src = zone.source
        idx = self._idx
        np.add(self._tmd, src.hist_pos, out=idx)
        np.bitwise_and(idx, src.hist_cap - 1, out=idx)
        np.take(src.hist, idx, out=self._taps, mode="clip")
        np.matmul(self._taps, self._g, out=self.early_out)
        if self.has_late:
            self.late.process(zone.history, self.late_out)


class _Source:
    """A mono source (the average of some inputs), its history and its band split. Zones fed
    by the same inputs share one: the split is done once per block, not once per zone."""

    def __init__(self, inputs: tuple[int, ...], cfg: EngineConfig, fs: int, block: int,
                 n_in: int) -> None:  # fmt: skip
        self.inputs = inputs
        self.block = block
        w_in = np.zeros(n_in, dtype=np.float32)
        w_in[list(inputs)] = 1.0 / len(inputs)
        self._w_in = w_in
        self.mono: F32 = np.zeros(block, dtype=np.float32)
        max_early = math.ceil(cfg.max_early_delay_s * fs)
        self.hist_cap = 1 << (max_early + 2 * block).bit_length()
        self.hist: F32 = np.zeros(self.hist_cap, dtype=np.float32)
        self._hist_at = [self.hist[i : i + block] for i in range(0, self.hist_cap, block)]
        self.hist_pos = 0
        max_late = math.ceil(cfg.max_late_delay_s * fs)
        self.history = BandHistory(fs, block, max_late, cfg.crossover_taps)

    def push(self, inp: F32) -> None:
        """Audio thread: mix, store and band-split one input block."""
        np.dot(inp, self._w_in, out=self.mono)
        b = self.block
        pos = self.hist_pos + b
        if pos == self.hist_cap:
            pos = 0
        self.hist_pos = pos
        np.copyto(self._hist_at[pos // b], self.mono)
        self.history.push(self.mono)


class _Zone:
    """A zone's state: its source, fade envelopes, the parameter sets."""

    def __init__(
        self, config: ZoneConfig, engine_cfg: EngineConfig, source: _Source, fs: int,
        block: int, width: int, seed: int,
    ) -> None:  # fmt: skip
        if max(config.outputs) >= width:
            raise ValueError(f"zone {config.name}: output {max(config.outputs)} >= {width}")
        self.config = config
        self.name = config.name
        self.samplerate, self.block, self.width, self.seed = fs, block, width, seed
        self.engine_cfg = engine_cfg
        self.source = source
        self.history = source.history
        self.layout: LateLayout = make_layout(fs, block, width, len(config.outputs))
        self.request: _Render | None = None  # control thread writes
        self.active: _Render | None = None  # audio thread writes (below too)
        self.incoming: _Render | None = None
        self.taken: _Render | None = None
        self.fade_pos = 0
        self.early_fade = 1
        self.late_fade = 1
        self.fades_done = 0
        self.blocks = 0
        ramp = np.arange(block, dtype=np.float32)
        self._ramp = ramp
        self._r: F32 = np.zeros(block, dtype=np.float32)
        self._e_in: F32 = np.zeros((block, 1), dtype=np.float32)
        self._e_out: F32 = np.zeros((block, 1), dtype=np.float32)
        self._l_in: F32 = np.zeros((block, 1), dtype=np.float32)
        self._l_out: F32 = np.zeros((block, 1), dtype=np.float32)
        self._e_in_v = self._e_in[:, 0]
        self._e_out_v = self._e_out[:, 0]
        self._l_in_v = self._l_in[:, 0]
        self._l_out_v = self._l_out[:, 0]
        # A ufunc with a broadcast operand buffers (allocates); a broadcasting copyto does not.
        # So each envelope is copied out to the full block width and multiplied from there.
        self._envs: list[tuple[F32, F32]] = []
        for column in (self._e_in, self._e_out, self._l_in, self._l_out):
            full = np.zeros((block, width), dtype=np.float32)
            self._envs.append((full, np.broadcast_to(column, (block, width))))
        self._e_in_f, self._e_out_f, self._l_in_f, self._l_out_f = (f for f, _ in self._envs)
        if config.params is not None:
            _check_params(config.params, engine_cfg)
            self.active = self.taken = self.request = _Render(self, config.params)

    def prepare(
        self, params: FieldParams, early_fade_s: float | None, late_fade_s: float | None
    ) -> _Render:
        """Control thread: validate and build a parameter set, then publish it."""
        if params.n_out != len(self.config.outputs):
            raise ValueError(
                f"zone {self.name}: params have {params.n_out} outputs, the zone "
                f"{len(self.config.outputs)}"
            )
        _check_params(params, self.engine_cfg)
        fades = []
        for value, default in ((early_fade_s, self.engine_cfg.early_fade_s),
                               (late_fade_s, self.engine_cfg.late_fade_s)):  # fmt: skip
            v = default if value is None else value
            if not (math.isfinite(v) and 0 <= v <= 60):
                raise ValueError(f"fade times must be within 0..60 s, got {v}")
            fades.append(max(1, round(v * self.samplerate)))
        render = _Render(self, params)
        render.fades = (fades[0], fades[1])
        self.request = render
        return render

    def process(self, acc: F32) -> None:
        """Audio thread: render one block of this zone (its source is pushed) into ``acc``."""
        b = self.block
        req = self.request
        if self.incoming is None and req is not None and req is not self.taken:
            self.taken = req
            self.incoming = req
            self.early_fade, self.late_fade = req.fades
            self.fade_pos = 0
        act, inc = self.active, self.incoming
        if act is not None:
            act.render(self)
        if inc is None:
            if act is not None:
                np.add(acc, act.early_out, out=acc)
                np.add(acc, act.late_out, out=acc)
        else:
            inc.render(self)
            self._envelopes()
            np.multiply(inc.early_out, self._e_in_f, out=inc.early_out)
            np.multiply(inc.late_out, self._l_in_f, out=inc.late_out)
            np.add(acc, inc.early_out, out=acc)
            np.add(acc, inc.late_out, out=acc)
            if act is not None:
                np.multiply(act.early_out, self._e_out_f, out=act.early_out)
                np.multiply(act.late_out, self._l_out_f, out=act.late_out)
                np.add(acc, act.early_out, out=acc)
                np.add(acc, act.late_out, out=acc)
            self.fade_pos += b
            if self.fade_pos >= self.early_fade and self.fade_pos >= self.late_fade:
                self.active = inc
                self.incoming = None
                self.fades_done += 1
        self.blocks += 1

    def _envelopes(self) -> None:
        r = self._r
        np.add(self._ramp, self.fade_pos + 1, out=r)
        np.multiply(r, 1.0 / self.early_fade, out=self._e_in_v)
        np.minimum(self._e_in_v, 1.0, out=self._e_in_v)
        np.subtract(1.0, self._e_in_v, out=self._e_out_v)
        np.multiply(r, 0.5 * math.pi / self.late_fade, out=r)
        np.minimum(r, 0.5 * math.pi, out=r)
        np.sin(r, out=self._l_in_v)
        np.cos(r, out=self._l_out_v)
        for full, column in self._envs:
            np.copyto(full, column)


def processing_block(blocksize: int) -> int:
    """The engine's internal block: the stream's, or the largest divisor <= MAX_BLOCK."""
    if blocksize <= MAX_BLOCK:
        if blocksize < 16:
            raise ValueError(f"blocks of at least 16 frames, got {blocksize}")
        return blocksize
    for b in range(MAX_BLOCK, 15, -1):
        if blocksize % b == 0:
            return b
    raise ValueError(f"blocksize {blocksize} has no divisor within 16..{MAX_BLOCK}")


class SoundFieldEngine:
    """The audio driver's processor for several zones; a ``host.Controllable``."""

    def __init__(self, config: EngineConfig, fmt: StreamShape) -> None:
        self.config = config
        self.samplerate = int(fmt.samplerate)
        self.blocksize = int(fmt.blocksize)
        self.block = processing_block(self.blocksize)
        self.n_in, self.n_out = int(fmt.n_in), int(fmt.n_out)
        self.sources: list[_Source] = []
        by_inputs: dict[tuple[int, ...], _Source] = {}
        self.zones: list[_Zone] = []
        for i, z in enumerate(config.zones):
            if max(z.inputs) >= self.n_in:
                raise ValueError(f"zone {z.name}: input {max(z.inputs)} >= {self.n_in} inputs")
            key = tuple(sorted(set(z.inputs)))
            if key not in by_inputs:
                by_inputs[key] = _Source(key, config, self.samplerate, self.block, self.n_in)
                self.sources.append(by_inputs[key])
            self.zones.append(
                _Zone(z, config, by_inputs[key], self.samplerate, self.block, self.n_out, i)
            )
        self._by_name = {z.name: z for z in self.zones}
        self._acc: F32 = np.zeros((self.block, self.n_out), dtype=np.float32)
        self._sub = self.blocksize // self.block
        self._seen: tuple[Any, Any] | None = None
        self._pairs: list[tuple[F32, F32]] = []
        self._events: list[Any] = []
        self._fades_reported = [0] * len(self.zones)
        self._alive: list[tuple[_Zone, _Render, int]] = []  # sets the control thread holds

    def __call__(self, inp: F32, out: F32) -> None:
        """Audio thread: one stream block (``inp`` [frames, n_in], ``out`` [frames, n_out])."""
        if self._sub == 1:
            self._block(inp, out)
            return
        seen = self._seen
        if seen is None or seen[0] is not inp or seen[1] is not out:
            # a new pair of arrays (the callback engine passes the same two every block)
            b = self.block
            self._pairs = [(inp[i : i + b], out[i : i + b]) for i in range(0, len(inp), b)]
            self._seen = (inp, out)
        for i_v, o_v in self._pairs:
            self._block(i_v, o_v)

    def _block(self, inp: F32, out: F32) -> None:
        acc = self._acc
        acc.fill(0.0)
        for source in self.sources:
            source.push(inp)
        for zone in self.zones:
            zone.process(acc)
        np.copyto(out, acc)

    # --- control thread -------------------------------------------------------------------

    def control(self, payload: Any) -> None:
        """Handle a ``SetField`` (outside the audio thread); anything else is an error."""
        if not isinstance(payload, SetField):
            raise TypeError(f"the sound-field engine takes SetField, got {type(payload).__name__}")
        zone = self._by_name.get(payload.zone)
        if zone is None:
            raise KeyError(f"no zone {payload.zone!r}; zones: {sorted(self._by_name)}")
        if not isinstance(payload.params, FieldParams):
            raise TypeError("SetField.params must be a FieldParams")
        previous = zone.request
        # While this thread runs Python beside the callback, the callback waits for the GIL
        # whenever it gives it up (in every BLAS call), and the holder yields it only every
        # switch interval: 5 ms by default, longer than a 2.7 ms block. Shorten it meanwhile.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, CONTROL_SWITCH_INTERVAL_S))
        try:
            render = zone.prepare(payload.params, payload.early_fade_s, payload.late_fade_s)
        finally:
            sys.setswitchinterval(interval)
        if previous is not None:
            self._alive.append((zone, previous, -1))
        self._events.append(FieldReady(zone.name, render.latency))
        self._release()

    def poll_events(self) -> list[Any]:
        self._release()
        for i, zone in enumerate(self.zones):
            done = zone.fades_done
            if done != self._fades_reported[i]:
                self._fades_reported[i] = done
                self._events.append(FadeDone(zone.name))
        events, self._events = self._events, []
        return events

    def _release(self) -> None:
        """Drop parameter sets the audio thread no longer uses (two blocks after it let go)."""
        keep: list[tuple[_Zone, _Render, int]] = []
        for zone, render, seen_at in self._alive:
            in_use = any(
                render is r for r in (zone.active, zone.incoming, zone.request, zone.taken)
            )
            if in_use:
                keep.append((zone, render, -1))
            elif seen_at < 0:
                keep.append((zone, render, zone.blocks))
            elif zone.blocks < seen_at + 2:
                keep.append((zone, render, seen_at))
        self._alive = keep

    def latency(self, zone: str) -> PathLatency | None:
        """The latencies of ``zone``'s newest parameter set (None before any)."""
        render = self._by_name[zone].request
        return None if render is None else render.latency

    def fading(self, zone: str) -> bool:
        z = self._by_name[zone]
        return z.incoming is not None or (z.request is not None and z.request is not z.taken)

    def band_energy(self, zone: str) -> FloatArray:
        """The band filters' energies of ``zone`` (``late.late_energy``'s ``band_energy``)."""
        return np.asarray(self._by_name[zone].history.energy, dtype=np.float64)


@dataclass(frozen=True)
class SoundFieldFactory:
    """The picklable processor factory for the audio driver (``host.ProcessorFactory``)."""

    config: EngineConfig

    def __call__(self, fmt: StreamShape) -> SoundFieldEngine:
        engine = SoundFieldEngine(self.config, fmt)
        # The audio host calls this once, before its stream starts. Everything that exists now
        # (numpy, scipy, sounddevice, the engine) is moved out of the cyclic garbage
        # collector's reach: a full collection over it takes ~40 ms with the GIL held, and it
        # runs in whichever thread allocates when the threshold is crossed (the control
        # thread building a new mode, or the callback): the callback would miss ~15 blocks.
        # Reference counting still frees everything as before.
        gc.collect()
        gc.freeze()
        return engine


@dataclass(frozen=True)
class _Shape:
    samplerate: int
    blocksize: int
    n_in: int
    n_out: int


def render_ir(
    params: FieldParams,
    samplerate: int,
    seconds: float,
    paths: Sequence[str] = PATHS,
    blocksize: int = 128,
    config: EngineConfig | None = None,
) -> FloatArray:
    """The engine's response to a unit impulse: ``[params.n_out, round(seconds * fs)]``.

    It runs ``SoundFieldEngine`` block by block over an impulse, so it is the realtime path
    itself. ``paths`` keeps only some of direct / early / late (the others get zero gain; the
    code that runs is the same)."""
    bad = [p for p in paths if p not in PATHS]
    if bad:
        raise ValueError(f"unknown paths {bad}: choose from {PATHS}")
    if not (math.isfinite(seconds) and 0 < seconds <= 60):
        raise ValueError(f"seconds must be within (0, 60], got {seconds}")
    zone = ZoneConfig("render", (0,), tuple(range(params.n_out)), None)
    base = config or EngineConfig((zone,))
    cfg = EngineConfig(
        (zone,),
        max_early_delay_s=base.max_early_delay_s,
        max_late_delay_s=base.max_late_delay_s,
        crossover_taps=base.crossover_taps,
    )
    engine = SoundFieldEngine(cfg, _Shape(samplerate, blocksize, 1, params.n_out))
    z = engine.zones[0]
    _check_params(params, cfg)
    z.active = z.taken = z.request = _Render(z, params, paths)
    n = round(seconds * samplerate)
    blocks = -(-n // blocksize)
    inp = np.zeros((blocksize, 1), dtype=np.float32)
    out = np.zeros((blocksize, params.n_out), dtype=np.float32)
    y = np.zeros((blocks * blocksize, params.n_out))
    for i in range(blocks):
        inp[0, 0] = 1.0 if i == 0 else 0.0
        engine(inp, out)
        y[i * blocksize : (i + 1) * blocksize] = out
    return np.ascontiguousarray(y[:n].T)


def predicted_late_energy(
    params: FieldParams, samplerate: int, crossover_taps: int | None = None
) -> FloatArray:
    """Energy per band (``BANDS_HZ``) of the late field ``params`` make, all outputs together,
    in absolute units (a unit impulse has energy 1): ``10**(late_db/10) * frac_b * T60_b / 1 s``
    (``late.late_energy``)."""
    energy = np.sum(design_crossover(samplerate, crossover_taps) ** 2, axis=1)
    return late_energy(params.late.t60_s, energy, params.late_db)


__all__ = [
    "BANDS_HZ",
    "EngineConfig",
    "FadeDone",
    "FieldReady",
    "PathLatency",
    "SetField",
    "SoundFieldEngine",
    "SoundFieldFactory",
    "ZoneConfig",
    "predicted_late_energy",
    "processing_block",
    "render_ir",
]
