"""The realtime sound-field engine: zones of direct + early + late, crossfaded mode switches.

A **zone** (``ZoneConfig``) mixes some processor inputs to one source and renders a
``FieldParams`` onto some processor outputs. Zones may share outputs (they add). The engine
(``SoundFieldEngine``) is the audio driver's processor: ``engine(inp, out)`` per block, in
PortAudio's callback; ``SoundFieldFactory`` is the picklable factory the audio host calls.

**Batched**: a Python callback pays per numpy call (1-5 us each), not per sample, so nothing
loops over zones in the audio thread except a few attribute checks. Per block (``block``
frames; a stream block longer than ``MAX_BLOCK`` is processed as equal sub-blocks):

1. **sources** (``_Sources``): one ``matmul`` mixes the input block into every source (zones
   fed by the same inputs share one), stored into a mirrored history (``max_early_delay_s``
   long) and band-split for the late path, all sources at once (``late.BandHistory``);
2. **direct + early** (``_EarlyBank``): every tap of every parameter set in one table (a tap:
   a delay and a gain per output; equal delays merged); one ``np.take`` gathers ``[block,
   taps]`` from the histories, one ``np.matmul`` with the ``[taps, width]`` gains puts them on
   the outputs. A tap of delay 0 is heard in the same block: this path adds **no latency**
   beyond the stream's own (its latency is the tap's delay, exactly);
3. **late** (``late.LateBank``, one per network size): the FDNs of every zone in one set of
   arrays, a slot per network (zone ``i``'s playing one in slot ``i``, a network fading in in a
   secondary slot), each reading its band input pre-delayed so that the late field starts at
   ``late.delay_s`` — but never before ``late_min_samples`` = crossover latency + shortest
   delay line (about 33 ms at 48 kHz); a shorter ``delay_s`` is rendered at that minimum, and
   ``latency()`` says so.

**Mode switches** (``SetField`` through ``control``): a parameter set is built (``build_set``:
taps, gains, its late network's matrices) where it cannot hold the callback's GIL — the service
builds it in its design process and sends it in ``SetField.built`` — and the control thread
(never the audio thread) checks it against this engine, places it (``_Render``), publishes a
new early bank that holds its taps, then the set by one reference store (``zone.request``). A
``SetField`` without ``built`` is built by the control thread itself. The audio thread picks it
up at the next block boundary (unless a fade is running in the zone: then the newest request
waits for the fade to end; and at most one set starts or ends per block in the whole engine:
each clears or moves a late slot) and runs old and new side by side: direct + early crossfade
linearly over ``early_fade_s`` (the two are the same signal with different gains: amplitudes
add), the late fields with equal power (``cos``/``sin``) over ``late_fade_s`` (two different
networks: uncorrelated, powers add); each set's envelope is applied per block as a line (value
and slope). The new network starts empty and fills while it fades in; the old one keeps its
input and decays while it fades out. At the end the new network moves to the zone's slot; the
old set goes back to the control thread, which releases it (and early banks no longer used)
once the audio thread has moved on two blocks (so the audio thread never frees arrays either).

**No allocation in the audio thread**: every buffer, index table and view is made in
``__init__`` or in ``control``; a block runs only ``take``, ``matmul``, ufuncs and ``copyto``
with ``out=`` on contiguous operands (no FFT call: pocketfft takes a work buffer per call; the
band split's transforms are matrix products). Numpy traps avoided on purpose: a ufunc with a
broadcast or strided operand buffers, and a copy within one array takes a temporary. What
stays true in Python: a call creates small transient objects (argument tuples, ints) from
CPython's own pools, and a set starting or ending makes a few view objects
(``tests/unit/test_dsp_engine.py`` measures the transient peak, < 1 KiB, and checks that
nothing stays allocated). BLAS runs on one thread (``single_threaded_blas``): OpenBLAS's
worker threads are not real-time threads, and the batched products are large enough for it
to use them.

Single writer per field (no locks): ``request`` and ``_early_next`` are written by the
control thread only; ``active``, ``incoming``, ``fade_pos``, ``blocks``, the banks' slots and
envelopes by the audio thread only.

``render_ir`` runs this engine over an impulse: what the metrics measure is what plays.
"""

from __future__ import annotations

import functools
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
    LateBank,
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
    """Control payload: crossfade ``zone`` to ``params`` (fades None: the engine's defaults).

    ``built``: ``params`` already built for this engine (``build_set``, in another process);
    without it the engine builds them in the audio host's control thread, beside the callback
    (set-up, tests). ``built.params`` must be ``params`` itself (one pickle keeps that)."""

    zone: str
    params: FieldParams
    early_fade_s: float | None = None
    late_fade_s: float | None = None
    built: BuiltSet | None = None

    @classmethod
    def of(cls, built: BuiltSet, early_fade_s: float | None = None,
           late_fade_s: float | None = None) -> SetField:  # fmt: skip
        return cls(built.zone, built.params, early_fade_s, late_fade_s, built)


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


@dataclass(frozen=True)
class BuiltSet:
    """A zone's parameter set built ready to play: its tap table and its late network's
    matrices (``build_set``). Picklable: the service builds it in its design process and sends
    it in ``SetField.built``, so the audio host only checks it and swaps it in.

    ``geometry`` is what it was built for (rate, processing block, processor outputs, the
    zone's outputs, its seed, the crossover's latency); the engine refuses a set built for
    another."""

    zone: str
    geometry: tuple[int, int, int, tuple[int, ...], int, int]
    params: FieldParams
    delays: Index  # [taps] ascending, samples
    gains: F32  # [taps, processor outputs]
    late: LateReverb  # not attached to a history yet
    latency: PathLatency


@functools.lru_cache(maxsize=8)
def _late_geometry(fs: int, block: int, width: int, n_out: int, taps: int | None
                   ) -> tuple[LateLayout, FloatArray, int]:  # fmt: skip
    """A zone's late layout, band energies and crossover latency (what ``BandHistory`` has)."""
    filters = design_crossover(fs, taps)
    return make_layout(fs, block, width, n_out), np.sum(filters**2, axis=1), filters.shape[1] // 2


def _build(
    cfg: EngineConfig, index: int, fs: int, block: int, width: int, params: FieldParams,
    paths: Sequence[str] = PATHS,
) -> BuiltSet:  # fmt: skip
    zc = cfg.zones[index]
    if max(zc.outputs) >= width:
        raise ValueError(f"zone {zc.name}: output {max(zc.outputs)} >= {width}")
    if params.n_out != len(zc.outputs):
        raise ValueError(
            f"zone {zc.name}: params have {params.n_out} outputs, the zone {len(zc.outputs)}"
        )
    _check_params(params, cfg)
    layout, energy, crossover = _late_geometry(fs, block, width, len(zc.outputs),
                                               cfg.crossover_taps)  # fmt: skip
    cols = zc.outputs
    # a tap is a delay and a gain per output: taps of equal delay (the direct sound to every
    # output, above all) are one gather
    taps: dict[int, FloatArray] = {}

    def tap(delay: int, col: int, gain: float) -> None:
        row = taps.get(delay)
        if row is None:
            row = taps[delay] = np.zeros(width)
        row[col] += gain

    if "direct" in paths:
        d = round(params.direct_delay_s * fs)
        for j, g in enumerate(np.asarray(params.direct_gain, float)):
            tap(d, cols[j], float(g))
    if "early" in paths:
        scale = 10 ** (params.early_db / 20)
        for d_s, g, ch in zip(
            params.early.delays_s, params.early.gains, params.early.channels, strict=True
        ):
            tap(round(float(d_s) * fs), cols[int(ch)], float(g) * scale)
    delays = sorted(taps)
    requested = round(params.late.delay_s * fs)
    minimum = crossover + layout.min_latency
    onset = max(requested, minimum)
    late_gain = 10 ** (params.late_db / 20) if "late" in paths else 0.0
    late = LateReverb(layout, np.asarray(params.late.t60_s, dtype=np.float64), cols, energy,
                      onset - minimum, late_gain, seed=index)  # fmt: skip
    early_delays = [round(float(d) * fs) for d in params.early.delays_s]
    return BuiltSet(
        zone=zc.name,
        geometry=(fs, block, width, cols, index, crossover),
        params=params,
        delays=np.array(delays, dtype=np.intp),
        gains=np.array([taps[d] for d in delays], dtype=np.float32).reshape(len(delays), width),
        late=late,
        latency=PathLatency(
            direct_samples=round(params.direct_delay_s * fs),
            early_min_samples=min(early_delays, default=0),
            late_onset_samples=onset,
            late_min_samples=minimum,
            late_requested_samples=requested,
            crossover_samples=crossover,
        ),
    )


def build_set(
    config: EngineConfig, fmt: StreamShape, zone: str, params: FieldParams,
    paths: Sequence[str] = PATHS,
) -> BuiltSet:  # fmt: skip
    """Build ``params`` for ``zone`` of an engine of ``config`` on a stream of ``fmt``, ready
    to swap in: the work a mode switch takes (the tap table; the late network, whose level is
    set by running it over an impulse: about 25 ms the first time), done wherever this is
    called — the service calls it in its design process, not in the audio host, where the
    builder would hold the GIL the callback needs (docs/acoustics.md, "Mode switches")."""
    names = [z.name for z in config.zones]
    if zone not in names:
        raise KeyError(f"no zone {zone!r}; zones: {sorted(names)}")
    block = processing_block(int(fmt.blocksize))
    return _build(config, names.index(zone), int(fmt.samplerate), block, int(fmt.n_out), params,
                  paths)  # fmt: skip


def _check_built(built: BuiltSet, zone: _Zone) -> None:
    """The audio host's check of a set built elsewhere: for this zone and stream, and sound
    (a few numpy calls: the thorough validation ran where it was built)."""
    if built.zone != zone.name or built.geometry != zone.geometry:
        raise ValueError(
            f"zone {zone.name}: the set was built for zone {built.zone!r} with geometry "
            f"{built.geometry}, this engine's is {zone.geometry}"
        )
    g, d, late = built.gains, built.delays, built.late
    lines = zone.layout.lines
    nb = len(zone.layout.delays)
    if not (isinstance(g, np.ndarray) and isinstance(d, np.ndarray)
            and isinstance(late, LateReverb)):  # fmt: skip
        raise TypeError(f"zone {zone.name}: a built set holds numpy arrays and a LateReverb")
    if (
        g.dtype != np.float32 or d.dtype != np.intp or g.ndim != 2 or d.ndim != 1
        or g.shape != (len(d), zone.width) or len(d) > MAX_TAPS + zone.width
        or late.m.dtype != np.float32 or late.m.shape != (nb, lines, lines + 2)
        or late.c.dtype != np.float32 or late.c.shape != (nb * (lines + 2), zone.width)
        or late.layout.lines != lines or not np.array_equal(late.layout.delays, zone.layout.delays)
    ):  # fmt: skip
        raise ValueError(f"zone {zone.name}: a built set of the wrong shape")
    max_delay = math.ceil(zone.engine_cfg.max_early_delay_s * zone.samplerate)
    if len(d) and (int(d.min()) < 0 or int(d.max()) > max_delay or np.any(np.diff(d) <= 0)):
        raise ValueError(f"zone {zone.name}: tap delays must be ascending within 0..{max_delay}")
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(late.m))
            and np.all(np.isfinite(late.c))):  # fmt: skip
        raise ValueError(f"zone {zone.name}: a built set with non-finite values")


class _Render:
    """One parameter set of one zone as the audio thread plays it: a ``BuiltSet`` placed in
    this engine's histories (the tap table's read positions, the late network's input).

    The audio thread reads the tap tables every block and copies the network's matrices into
    a ``LateBank`` slot when the set comes in."""

    def __init__(self, zone: _Zone, built: BuiltSet) -> None:
        src = zone.sources
        self.params = built.params
        self.fades = (1, 1)  # early and late fade lengths (samples) when this set comes in
        self.g: F32 = built.gains
        # tap k reads the mirrored history at base[k] + hist_pos + t (no wrap mask)
        self.base: Index = (zone.source * 2 * src.hist_cap + src.hist_cap - built.delays).astype(
            np.intp
        )
        self.late = built.late
        self.late.attach(src.bands, zone.source)
        self.latency = built.latency


class _EarlyBank:
    """The direct and early taps of every parameter set the control thread holds, in one set
    of arrays (built by the control thread, read by the audio thread): a block is one
    ``take`` of ``[block, taps]`` from the sources' history and one ``matmul`` with the
    ``[taps, width]`` gains, whatever the number of zones.

    Each set has a row of ``env`` (per-sample gain, written by the audio thread): 1 for a
    playing set, its fade envelope while it fades, 0 for a set that is not playing (one built
    and not yet taken, or one retired and not yet released). While every row is 1 (no fade,
    no idle set) the envelope is skipped (``clean``); otherwise each row's envelope over the
    block is taken as a line (a linear fade is one, except in the block where it ends), and
    two products with the gains scaled by value and slope make the faded sum."""

    def __init__(self, renders: Sequence[_Render], block: int, width: int) -> None:
        b = block
        bases = [r.base for r in renders]
        gains = [r.g for r in renders]
        rows = [np.full(len(x), i, dtype=np.intp) for i, x in enumerate(bases)]
        # one silent tap keeps the arrays non-empty
        base = np.concatenate([*bases, np.zeros(1, dtype=np.intp)])
        g = np.concatenate([*gains, np.zeros((1, width), dtype=np.float32)])
        row = np.concatenate([*rows, np.zeros(1, dtype=np.intp)])
        t = np.arange(b, dtype=np.intp)[:, None]
        self.tmd: Index = np.ascontiguousarray(t + base[None, :])
        self.g: F32 = np.ascontiguousarray(g, dtype=np.float32)
        self.rows = {id(r): i for i, r in enumerate(renders)}
        self.renders = list(renders)  # keeps the ids above unique while the bank lives
        self.env: F32 = np.zeros((max(1, len(renders)), b), dtype=np.float32)
        self.env_rows = list(self.env)
        self.idx: Index = np.zeros_like(self.tmd)
        self.taps: F32 = np.zeros(self.tmd.shape, dtype=np.float32)
        self.out: F32 = np.zeros((b, width), dtype=np.float32)
        self.clean = False
        # fades: each row's envelope over the block as a line (value a, slope d); the gains
        # are scaled by both and out = taps @ (g * a) + t * (taps @ (g * d))
        self._first = self.env[:, 0]
        self._last = self.env[:, b - 1]
        self._a: F32 = np.zeros(len(self.env), dtype=np.float32)
        self._d: F32 = np.zeros(len(self.env), dtype=np.float32)
        self._row_of: Index = np.ascontiguousarray(np.repeat(row[:, None], width, axis=1))
        self._coef: F32 = np.zeros_like(self.g)
        self._ga: F32 = np.zeros_like(self.g)
        self._gd: F32 = np.zeros_like(self.g)
        self._slope: F32 = np.zeros((b, width), dtype=np.float32)
        self._ramp: F32 = np.ascontiguousarray(
            np.repeat(np.arange(b, dtype=np.float32)[:, None], width, axis=1)
        )

    def process(self, src: _Sources, acc: F32) -> None:
        """Add the taps of the block just pushed into ``src`` into ``acc`` (audio thread)."""
        np.add(self.tmd, src.hist_pos, out=self.idx)
        np.take(src.hist_flat, self.idx, out=self.taps, mode="clip")
        if self.clean:
            np.matmul(self.taps, self.g, out=self.out)
            np.add(acc, self.out, out=acc)
            return
        a, d, coef, b = self._a, self._d, self._coef, len(self._ramp)
        np.copyto(a, self._first)
        np.copyto(d, self._last)
        np.subtract(d, a, out=d)
        np.multiply(d, 1.0 / (b - 1), out=d)
        np.take(a, self._row_of, out=coef, mode="clip")
        np.multiply(self.g, coef, out=self._ga)
        np.take(d, self._row_of, out=coef, mode="clip")
        np.multiply(self.g, coef, out=self._gd)
        np.matmul(self.taps, self._ga, out=self.out)
        np.add(acc, self.out, out=acc)
        np.matmul(self.taps, self._gd, out=self._slope)
        np.multiply(self._slope, self._ramp, out=self._slope)
        np.add(acc, self._slope, out=acc)


class _Sources:
    """The mono sources (each the average of some inputs), their history and their band split,
    all in one set of arrays. Zones fed by the same inputs share one source: the split is done
    once per block for every source together, not once per zone."""

    def __init__(self, keys: Sequence[tuple[int, ...]], cfg: EngineConfig, fs: int, block: int,
                 n_in: int) -> None:  # fmt: skip
        n = len(keys)
        self.keys = list(keys)
        self.block = block
        w = np.zeros((n_in, n), dtype=np.float32)
        for i, inputs in enumerate(keys):
            w[list(inputs), i] = 1.0 / len(inputs)
        self._w = w
        self._mono: F32 = np.zeros((block, n), dtype=np.float32)
        self._mono_t = self._mono.T  # [sources, block]
        max_early = math.ceil(cfg.max_early_delay_s * fs)
        self.hist_cap = cap = 1 << (max_early + 2 * block).bit_length()
        self.hist: F32 = np.zeros((n, 2 * cap), dtype=np.float32)  # mirrored ring per source
        self.hist_flat = self.hist.reshape(-1)
        self._at = [self.hist[:, i : i + block] for i in range(0, cap, block)]
        self._mirror = [self.hist[:, cap + i : cap + i + block] for i in range(0, cap, block)]
        self.hist_pos = 0
        max_late = math.ceil(cfg.max_late_delay_s * fs)
        self.bands = BandHistory(fs, block, max_late, cfg.crossover_taps, sources=n)

    def push(self, inp: F32) -> None:
        """Audio thread: mix, store and band-split one input block."""
        np.matmul(inp, self._w, out=self._mono)
        b = self.block
        pos = self.hist_pos + b
        if pos == self.hist_cap:
            pos = 0
        self.hist_pos = pos
        np.copyto(self._at[pos // b], self._mono_t)
        np.copyto(self._mirror[pos // b], self._mono_t)
        self.bands.push(self._mono_t)


class _Group:
    """The zones whose late networks share a layout, and their ``LateBank``: one primary slot
    per zone (its playing network, slots ``0 .. zones - 1``) and as many secondaries (a network
    fading in; when the fade ends it moves to the primary). Only slots up to the highest one
    in use are computed."""

    def __init__(self, layout: LateLayout, zones: int, bands: BandHistory) -> None:
        self.layout = layout
        self.zones = zones
        self.bank = LateBank(layout, 2 * zones, bands)
        self.bank.live = zones
        self.bank.env[:zones] = 1.0
        self.free = [True] * zones  # secondaries
        self.fading = 0
        self.out: F32 = np.zeros((layout.block, layout.width), dtype=np.float32)

    def take_secondary(self) -> int:
        for i in range(self.zones):
            if self.free[i]:
                self.free[i] = False
                slot = self.zones + i
                if slot >= self.bank.live:
                    self.bank.live = slot + 1
                return slot
        return -1

    def release_secondary(self, slot: int) -> None:
        self.free[slot - self.zones] = True
        live = self.zones
        for i in range(self.zones - 1, -1, -1):
            if not self.free[i]:
                live = self.zones + i + 1
                break
        self.bank.live = live


class _Zone:
    """A zone's state: its source, fade envelopes, the parameter sets."""

    def __init__(
        self, config: ZoneConfig, engine_cfg: EngineConfig, sources: _Sources, source: int,
        fs: int, block: int, width: int, seed: int,
    ) -> None:  # fmt: skip
        if max(config.outputs) >= width:
            raise ValueError(f"zone {config.name}: output {max(config.outputs)} >= {width}")
        self.config = config
        self.name = config.name
        self.samplerate, self.block, self.width, self.seed = fs, block, width, seed
        self.engine_cfg = engine_cfg
        self.sources = sources
        self.source = source
        self.layout: LateLayout = make_layout(fs, block, width, len(config.outputs))
        self.geometry = (fs, block, width, config.outputs, seed, sources.bands.latency)
        self.group: _Group | None = None  # set by the engine
        self.slot = -1  # primary slot in the group's bank
        self.in_slot = -1  # secondary slot of the incoming set
        self.request: _Render | None = None  # control thread writes
        self.active: _Render | None = None  # audio thread writes (below too)
        self.incoming: _Render | None = None
        self.taken: _Render | None = None
        self.fade_pos = 0
        self.early_fade = 1
        self.late_fade = 1
        self.fades_done = 0
        self.blocks = 0
        self._ramp = np.arange(block, dtype=np.float32)
        self._r: F32 = np.zeros(block, dtype=np.float32)
        # envelope rows (per-sample gains) the audio thread writes during a fade: the early
        # bank's rows of the incoming and the outgoing set, the late bank's slots
        self._spare: F32 = np.zeros(block, dtype=np.float32)
        self._e_in: F32 = self._spare
        self._e_out: F32 = self._spare
        self._l_in: F32 = self._spare
        self._l_out: F32 = self._spare

    def attach(self, group: _Group, slot: int) -> None:
        """Engine set-up: the group whose bank runs this zone's late networks, and its slot."""
        self.group, self.slot = group, slot
        if self.config.params is not None:
            self.install(_Render(self, self.build(self.config.params)))

    def install(self, render: _Render) -> None:
        """Play ``render`` at once, without a fade (set-up, ``render_ir``)."""
        assert self.group is not None
        self.active = self.taken = self.request = render
        self.group.bank.load(self.slot, render.late)
        self.group.bank.env[self.slot].fill(1.0)

    def build(self, params: FieldParams, paths: Sequence[str] = PATHS) -> BuiltSet:
        """``build_set`` for this zone (in this process)."""
        fs, block, width, _, seed, _ = self.geometry
        return _build(self.engine_cfg, seed, fs, block, width, params, paths)

    def prepare(self, payload: SetField) -> _Render:
        """Control thread: a ``SetField``'s set, checked (built here when it was not built
        elsewhere), with its fades (``control`` publishes it)."""
        built = payload.built
        if built is not None and not isinstance(built, BuiltSet):
            raise TypeError(f"SetField.built must be a BuiltSet, got {type(built).__name__}")
        if built is None:
            built = self.build(payload.params)
        else:
            if built.params is not payload.params:
                raise ValueError(f"zone {self.name}: SetField.built is of other params")
            _check_built(built, self)
        early_fade_s, late_fade_s = payload.early_fade_s, payload.late_fade_s
        fades = []
        for value, default in ((early_fade_s, self.engine_cfg.early_fade_s),
                               (late_fade_s, self.engine_cfg.late_fade_s)):  # fmt: skip
            v = default if value is None else value
            if not (math.isfinite(v) and 0 <= v <= 60):
                raise ValueError(f"fade times must be within 0..60 s, got {v}")
            fades.append(max(1, round(v * self.samplerate)))
        render = _Render(self, built)
        render.fades = (fades[0], fades[1])
        return render

    def step(self, engine: SoundFieldEngine) -> None:
        """Audio thread, before the late banks run: take up a new parameter set, advance a
        fade, end it. A set's start and end touch whole slots of the bank (a ring to clear or
        to move, about 2 MB): at most one of them per block in the whole engine
        (``engine.budget``); a set that has to wait starts (or ends) a block later."""
        group = self.group
        assert group is not None
        self.blocks += 1
        if self.incoming is None:
            req = self.request
            if req is None or req is self.taken or engine.budget == 0:
                return
            slot = group.take_secondary()
            if slot < 0:  # cannot happen: a zone has one secondary and one fade at a time
                return
            engine.budget -= 1
            group.bank.load(slot, req.late)
            self.in_slot = slot
            self.taken = req
            self.incoming = req
            self.early_fade, self.late_fade = req.fades
            self.fade_pos = 0
            self._l_in = group.bank.env[slot]
            self._l_out = group.bank.env[self.slot]
            group.fading += 1
            group.bank.fading = True
            engine.changed = True
        elif self.fade_pos >= self.early_fade and self.fade_pos >= self.late_fade:
            if engine.budget == 0:
                self._envelopes()  # both at their end values: the new set alone, a block more
                return
            engine.budget -= 1
            group.bank.move(self.in_slot, self.slot)
            group.bank.env[self.slot].fill(1.0)
            group.release_secondary(self.in_slot)
            self.in_slot = -1
            self.active = self.incoming
            self.incoming = None
            self.fades_done += 1
            group.fading -= 1
            group.bank.fading = group.fading > 0
            engine.changed = True
            return
        self._envelopes()
        self.fade_pos += self.block

    def rows(self, bank: _EarlyBank) -> int:
        """Audio thread, after a change: point this zone's envelopes at ``bank``'s rows and set
        a playing set's row to 1; how many of the bank's rows are playing."""
        act, inc = self.active, self.incoming
        a = bank.rows.get(id(act), -1) if act is not None else -1
        if inc is None:
            if a >= 0:
                bank.env_rows[a].fill(1.0)
                return 1
            return 0
        i = bank.rows.get(id(inc), -1)
        self._e_in = bank.env_rows[i] if i >= 0 else self._spare
        self._e_out = bank.env_rows[a] if a >= 0 else self._spare
        self._envelopes()
        return (a >= 0) + (i >= 0)

    def _envelopes(self) -> None:
        """The block's fade envelopes: early linear (amplitudes add), late equal power."""
        r = self._r
        np.add(self._ramp, self.fade_pos + 1, out=r)
        np.multiply(r, 1.0 / self.early_fade, out=self._e_in)
        np.minimum(self._e_in, 1.0, out=self._e_in)
        if self.active is not None:
            np.subtract(1.0, self._e_in, out=self._e_out)
        np.multiply(r, 0.5 * math.pi / self.late_fade, out=r)
        np.minimum(r, 0.5 * math.pi, out=r)
        np.sin(r, out=self._l_in)
        if self.active is not None:
            np.cos(r, out=self._l_out)


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
        keys: list[tuple[int, ...]] = []
        for z in config.zones:
            if max(z.inputs) >= self.n_in:
                raise ValueError(f"zone {z.name}: input {max(z.inputs)} >= {self.n_in} inputs")
            key = tuple(sorted(set(z.inputs)))
            if key not in keys:
                keys.append(key)
        self.sources = _Sources(keys, config, self.samplerate, self.block, self.n_in)
        self.zones: list[_Zone] = [
            _Zone(z, config, self.sources, keys.index(tuple(sorted(set(z.inputs)))),
                  self.samplerate, self.block, self.n_out, i)
            for i, z in enumerate(config.zones)
        ]  # fmt: skip
        # zones whose late networks have the same layout (lines, delays) share one bank
        by_lines: dict[int, list[_Zone]] = {}
        for zone in self.zones:
            by_lines.setdefault(zone.layout.lines, []).append(zone)
        self.groups: list[_Group] = []
        for members in by_lines.values():
            group = _Group(members[0].layout, len(members), self.sources.bands)
            self.groups.append(group)
            for slot, zone in enumerate(members):
                zone.attach(group, slot)
        self.budget = 1  # slot starts / ends per block (audio thread)
        self.changed = True  # a set started or ended, or a new early bank (audio thread)
        self.blocks = 0  # audio thread
        self._by_name = {z.name: z for z in self.zones}
        self._acc: F32 = np.zeros((self.block, self.n_out), dtype=np.float32)
        self._sub = self.blocksize // self.block
        self._seen: tuple[Any, Any] | None = None
        self._pairs: list[tuple[F32, F32]] = []
        self._events: list[Any] = []
        self._fades_reported = [0] * len(self.zones)
        self._alive: list[tuple[_Zone, _Render, int]] = []  # sets the control thread holds
        self._early_next = self._early_bank()  # control thread writes
        self.early = self._early_next  # audio thread writes
        self._banks_retired: list[tuple[_EarlyBank, int]] = []

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
        self.sources.push(inp)
        self.budget = 1
        self.blocks += 1
        for zone in self.zones:
            zone.step(self)
        # after the zones took up their requests: the control thread publishes a bank that
        # holds a new set before the set itself, so this bank has every set now playing
        early = self._early_next
        if early is not self.early or self.changed:
            self.early = early
            self.changed = False
            self._rows(early)
        acc = self._acc
        groups = self.groups
        groups[0].bank.process(acc)
        for group in groups[1:]:
            group.bank.process(group.out)
            np.add(acc, group.out, out=acc)
        early.process(self.sources, acc)
        np.copyto(out, acc)

    def _rows(self, early: _EarlyBank) -> None:
        """Audio thread, after a change: every envelope row of the early bank anew."""
        early.env.fill(0.0)
        playing = 0
        fading = False
        for zone in self.zones:
            playing += zone.rows(early)
            fading = fading or zone.incoming is not None
        early.clean = not fading and playing == len(early.renders)

    def _early_bank(self) -> _EarlyBank:
        """Control thread: a bank of every parameter set the audio thread may play."""
        held: list[_Render] = []
        for zone in self.zones:
            for r in (zone.active, zone.incoming, zone.taken, zone.request):
                if r is not None and not any(r is h for h in held):
                    held.append(r)
        for _, r, _ in self._alive:
            if not any(r is h for h in held):
                held.append(r)
        return _EarlyBank(held, self.block, self.n_out)

    def _publish_early(self) -> None:
        """Control thread: publish a new early bank; the old one is dropped (here, not in the
        audio thread) once the audio thread has used the new one for two blocks."""
        old = self._early_next
        self._early_next = self._early_bank()
        self._banks_retired.append((old, -1))

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
            render = zone.prepare(payload)
            if previous is not None:
                self._alive.append((zone, previous, -1))
            self._alive.append((zone, render, -1))
            self._publish_early()  # first the bank with the new set's taps, then the set
            zone.request = render
        finally:
            sys.setswitchinterval(interval)
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
        dropped = len(keep) < len(self._alive)
        self._alive = keep
        if dropped:
            self._publish_early()
        banks: list[tuple[_EarlyBank, int]] = []
        for bank, seen_at in self._banks_retired:
            if bank is self.early:
                banks.append((bank, -1))
            elif seen_at < 0:
                banks.append((bank, self.blocks))
            elif self.blocks < seen_at + 2:
                banks.append((bank, seen_at))
        self._banks_retired = banks

    def latency(self, zone: str) -> PathLatency | None:
        """The latencies of ``zone``'s newest parameter set (None before any)."""
        render = self._by_name[zone].request
        return None if render is None else render.latency

    def fading(self, zone: str) -> bool:
        z = self._by_name[zone]
        return z.incoming is not None or (z.request is not None and z.request is not z.taken)

    def band_energy(self, zone: str) -> FloatArray:
        """The band filters' energies of ``zone`` (``late.late_energy``'s ``band_energy``)."""
        return np.asarray(self._by_name[zone].sources.bands.energy, dtype=np.float64)


_BLAS_SET_THREADS = (
    "openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
)


def single_threaded_blas() -> int:
    """Make every OpenBLAS loaded in this process run on one thread; return
    how many libraries were set.

    Why: OpenBLAS splits a product over its own worker threads once it is large enough (for
    sgemm about 2^18 multiply-adds, for sgemv 9216), and the batched engine's products are.
    The workers are ordinary threads: the real-time callback would wait for them, and on a
    busy machine they wait for a core (a 0.6 MFLOP product measured 6 ms instead of 0.05 ms
    with 2 cores loaded). One thread is also what a callback wants anyway. ``numpy`` and
    ``scipy`` each bundle their own OpenBLAS; both are found through ``/proc/self/maps``
    (Linux) and set through their exported ``*_set_num_threads`` (what ``threadpoolctl``
    does). Elsewhere this does nothing: set ``OPENBLAS_NUM_THREADS=1`` in the audio host's
    environment instead. Called by ``SoundFieldFactory`` (in the audio host, before the
    stream starts)."""
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return 0
    done = 0
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _BLAS_SET_THREADS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn(1)
                done += 1
                break
    return done


@dataclass(frozen=True)
class SoundFieldFactory:
    """The picklable processor factory for the audio driver (``host.ProcessorFactory``)."""

    config: EngineConfig

    def __call__(self, fmt: StreamShape) -> SoundFieldEngine:
        engine = SoundFieldEngine(self.config, fmt)
        single_threaded_blas()
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
    z.install(_Render(z, z.build(params, paths)))
    engine._early_next = engine.early = engine._early_bank()
    engine.changed = True
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
    "BuiltSet",
    "EngineConfig",
    "FadeDone",
    "FieldReady",
    "PathLatency",
    "SetField",
    "SoundFieldEngine",
    "SoundFieldFactory",
    "ZoneConfig",
    "build_set",
    "predicted_late_energy",
    "processing_block",
    "render_ir",
    "single_threaded_blas",
]
