"""The room model: venue parameters in, one impulse response per loudspeaker x microphone out.

The IRs come from an independent model, pyroomacoustics (image sources up to ``max_order``
plus ray tracing for the diffuse tail), for a shoebox or an extruded polygon with per-surface
absorption per octave band; or from a measured multichannel WAV file. Nothing here knows how
Flytower processes audio: the room is what a hall would be.

Runtime changes are expressed as a ``RoomState`` (occupancy 0..1, doors open or shut):

- **occupancy** blends the absorption of the seating area on the floor between empty seats and
  seats with people in them (area-weighted into the floor's coefficients, because a
  pyroomacoustics surface has one material);
- **open doors** replace ``door_area_m2`` of one wall by a perfect absorber (an opening lets all
  sound out), again area-weighted into that wall.

A measured WAV IR has no geometry, so for it a state change shortens the measured decay by an
exponential envelope: full occupancy multiplies the reverberation time by
``occupied_rt_ratio``, open doors by ``doors_rt_ratio``. The base reverberation time is measured
from the IR itself (``truth.measure``), never assumed.

Scaling: pyroomacoustics gives a direct sound of amplitude 1/r, i.e. unit gain at 1 m. The
model delay of its fractional-delay and band filters is removed, so the direct sound arrives at
r/c. Computing an IR takes seconds: ``IrCache`` keeps results on disk, keyed by a hash of every
parameter that shapes the IR (and the pyroomacoustics version).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

BANDS_HZ = (125, 250, 500, 1000, 2000, 4000)
SHOEBOX_WALLS = ("west", "east", "south", "north")
CACHE_SCHEMA = 2  # 2: seeded ray tracing
SPEED_OF_SOUND = 343.0  # m/s, pyroomacoustics' default

Coeffs = tuple[float, ...]  # absorption per octave band, BANDS_HZ


class RoomError(ValueError):
    """A room declaration that cannot be built; the message names the parameter."""


@dataclass(frozen=True)
class RoomState:
    """What changes while the show runs."""

    occupancy: float = 0.0
    doors_open: bool = False

    def describe(self) -> str:
        return f"occupancy {self.occupancy:.2f}, doors {'open' if self.doors_open else 'shut'}"


@dataclass(frozen=True)
class RoomModel:
    """Everything that shapes the IRs, resolved to plain numbers (hashable, cache key)."""

    samplerate: int
    ir_seconds: float
    speakers: tuple[tuple[float, float, float], ...]
    mics: tuple[tuple[float, float, float], ...]
    # Geometry: a shoebox (dimensions) or a polygon floor plan (corners) extruded to height.
    dimensions: tuple[float, float, float] | None = None
    corners: tuple[tuple[float, float], ...] | None = None
    height: float = 0.0
    surfaces: Mapping[str, Coeffs] = field(default_factory=dict)  # wall name -> coefficients
    scattering: float = 0.1
    audience_area_m2: float = 0.0
    seats_empty: Coeffs = (0.4, 0.5, 0.58, 0.61, 0.58, 0.5)
    seats_occupied: Coeffs = (0.55, 0.86, 0.83, 0.87, 0.9, 0.87)
    door_area_m2: float = 4.0
    door_wall: str = "south"
    max_order: int = 3
    rays: int = 5000
    seed: int = 0  # pyroomacoustics' random generators: the same venue gives the same IRs
    air_absorption: bool = True
    # A measured IR instead of a model.
    ir_wav: str | None = None
    occupied_rt_ratio: float = 0.75
    doors_rt_ratio: float = 0.9

    @property
    def n_speakers(self) -> int:
        return len(self.speakers)

    @property
    def n_mics(self) -> int:
        return len(self.mics)

    @property
    def length(self) -> int:
        return round(self.ir_seconds * self.samplerate)

    def wall_names(self) -> tuple[str, ...]:
        if self.corners is not None:
            return tuple(str(i) for i in range(len(self.corners)))
        return SHOEBOX_WALLS

    def wall_area(self, name: str) -> float:
        if self.corners is not None:
            i = int(name)
            (x0, y0), (x1, y1) = self.corners[i], self.corners[(i + 1) % len(self.corners)]
            return math.hypot(x1 - x0, y1 - y0) * self.height
        assert self.dimensions is not None
        lx, ly, lz = self.dimensions
        return (ly if name in ("west", "east") else lx) * lz

    def floor_area(self) -> float:
        if self.corners is not None:
            xs = np.array([c[0] for c in self.corners])
            ys = np.array([c[1] for c in self.corners])
            return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)
        assert self.dimensions is not None
        return self.dimensions[0] * self.dimensions[1]

    def volume(self) -> float:
        if self.corners is not None:
            return self.floor_area() * self.height
        assert self.dimensions is not None
        return math.prod(self.dimensions)

    def surface_coeffs(self, state: RoomState) -> dict[str, Coeffs]:
        """Absorption of every surface in ``state``: seating blended into the floor by
        occupancy, an open door blended into its wall as a perfect absorber."""
        out = dict(self.surfaces)
        if self.audience_area_m2 > 0:
            occ = state.occupancy
            seats = [
                occ * o + (1 - occ) * e
                for o, e in zip(self.seats_occupied, self.seats_empty, strict=True)
            ]
            share = self.audience_area_m2 / self.floor_area()
            out["floor"] = _blend(out["floor"], seats, share)
        if state.doors_open and self.door_area_m2 > 0:
            share = self.door_area_m2 / self.wall_area(self.door_wall)
            out[self.door_wall] = _blend(out[self.door_wall], [1.0] * len(BANDS_HZ), share)
        return out

    def cache_key(self, state: RoomState) -> str:
        blob = json.dumps(
            {
                "schema": CACHE_SCHEMA,
                # The installed version, without importing it (seconds, and not needed on a hit).
                "pra": importlib.metadata.version("pyroomacoustics"),
                "model": asdict(self),
                "state": asdict(state),
                "wav": _file_stamp(self.ir_wav),
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _blend(base: Sequence[float], other: Sequence[float], share: float) -> Coeffs:
    return tuple((1 - share) * b + share * o for b, o in zip(base, other, strict=True))


def _file_stamp(path: str | None) -> str | None:
    if path is None:
        return None
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


# --- materials -------------------------------------------------------------------------------


def material_coeffs(value: Any, where: str) -> Coeffs:
    """A material as the venue gives it: a pyroomacoustics material name, one absorption
    coefficient for every band, or one per octave band 125 Hz .. 4 kHz."""
    if isinstance(value, str):
        import pyroomacoustics as pra

        try:
            coeffs = pra.Material(value).energy_absorption["coeffs"]
        except (KeyError, ValueError, TypeError) as exc:
            raise RoomError(f"{where}: unknown material {value!r} ({exc})") from exc
        return tuple(float(c) for c in coeffs[: len(BANDS_HZ)])
    if isinstance(value, int | float) and not isinstance(value, bool):
        values: list[Any] = [value] * len(BANDS_HZ)
    elif isinstance(value, list) and len(value) == len(BANDS_HZ):
        values = value
    else:
        raise RoomError(
            f"{where}: expected a material name, a number or {len(BANDS_HZ)} numbers "
            f"(bands {', '.join(map(str, BANDS_HZ))} Hz), got {value!r}"
        )
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
            raise RoomError(f"{where}: absorption coefficients lie in 0..1, got {v!r}")
        out.append(float(v))
    return tuple(out)


# --- computing IRs ---------------------------------------------------------------------------


def compute_irs(model: RoomModel, state: RoomState) -> NDArray[np.float32]:
    """The IRs in ``state``: float32 array [mic, speaker, sample] of ``model.length`` samples."""
    if model.ir_wav is not None:
        return _wav_irs(model, state)
    import pyroomacoustics as pra

    coeffs = model.surface_coeffs(state)

    def material(name: str) -> Any:
        return pra.Material(
            {"coeffs": list(coeffs[name]), "center_freqs": list(BANDS_HZ)}, model.scattering
        )

    common: dict[str, Any] = {
        "fs": model.samplerate,
        "max_order": model.max_order,
        "ray_tracing": model.rays > 0,
        "air_absorption": model.air_absorption,
    }
    if model.corners is not None:
        room = pra.Room.from_corners(
            np.array(model.corners, dtype=float).T,
            materials=[material(w) for w in model.wall_names()],
            **common,
        )
        room.extrude(
            model.height, materials={"floor": material("floor"), "ceiling": material("ceiling")}
        )
    else:
        names = (*SHOEBOX_WALLS, "floor", "ceiling")
        room = pra.ShoeBox(
            list(model.dimensions or ()), materials={n: material(n) for n in names}, **common
        )
    if model.rays > 0:
        room.set_ray_tracing(n_rays=model.rays, receiver_radius=0.5, time_thres=model.ir_seconds)
    for pos in model.speakers:
        room.add_source(list(pos))
    room.add_microphone(np.array(model.mics, dtype=float).T)
    # Ray tracing is random (the T30 of a small hall with 2000 rays varies by ~7 % between
    # seeds): seeding both of pyroomacoustics' generators makes an IR a function of the
    # declaration, so every process computes the same room and the cache is only a cache.
    pra.random.seed(numpy=model.seed, libroom=model.seed)
    room.compute_rir()
    delay = model_delay(model.samplerate)
    out = np.zeros((model.n_mics, model.n_speakers, model.length), dtype=np.float32)
    for m in range(model.n_mics):
        for s in range(model.n_speakers):
            h = np.asarray(room.rir[m][s])[delay : delay + model.length]
            out[m, s, : h.size] = h
    return out


@functools.cache
def model_delay(samplerate: int) -> int:
    """pyroomacoustics' constant model delay (fractional-delay and band filters), in samples,
    measured once in free field: where the direct sound peaks minus where it should be."""
    import pyroomacoustics as pra

    distance = 2.0
    room = pra.ShoeBox([20.0, 20.0, 20.0], fs=samplerate, max_order=0)
    room.add_source([5.0, 5.0, 5.0])
    room.add_microphone(np.array([[5.0 + distance, 5.0, 5.0]]).T)
    room.compute_rir()
    peak = int(np.argmax(np.abs(room.rir[0][0])))
    return max(0, peak - round(distance / SPEED_OF_SOUND * samplerate))


def _wav_irs(model: RoomModel, state: RoomState) -> NDArray[np.float32]:
    import soundfile as sf
    from scipy.signal import resample_poly  # type: ignore[import-untyped]

    assert model.ir_wav is not None
    data, rate = sf.read(model.ir_wav, dtype="float64", always_2d=True)
    pairs = model.n_mics * model.n_speakers
    if data.shape[1] != pairs:
        raise RoomError(
            f"{model.ir_wav}: {data.shape[1]} channel(s), the room needs {pairs} "
            f"({model.n_mics} mics x {model.n_speakers} speakers, mic-major)"
        )
    if rate != model.samplerate:
        g = math.gcd(int(rate), model.samplerate)
        data = resample_poly(data, model.samplerate // g, int(rate) // g, axis=0)
    irs = np.zeros((model.n_mics, model.n_speakers, model.length))
    n = min(model.length, data.shape[0])
    irs.reshape(pairs, model.length)[:, :n] = data[:n].T
    ratio = (1 - state.occupancy * (1 - model.occupied_rt_ratio)) * (
        model.doors_rt_ratio if state.doors_open else 1.0
    )
    if ratio < 1:
        from simulators.acoustics.truth import broadband_t30

        base = broadband_t30(irs[0, 0], model.samplerate)
        if base is not None:
            # Energy decays 60 dB over T: amplitude envelope exp(-3 ln(10) t / T).
            t = np.arange(model.length) / model.samplerate
            irs *= np.exp(-3 * math.log(10) * t * (1 / (ratio * base) - 1 / base))
    return irs.astype(np.float32)


# --- disk cache ------------------------------------------------------------------------------


class IrCache:
    """IRs (``KEY.npy``) and their measured metrics (``KEY.json``) under one directory."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def load(self, key: str) -> tuple[NDArray[np.float32], dict[str, Any]] | None:
        try:
            irs = np.load(self.folder / f"{key}.npy")
            metrics = json.loads((self.folder / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return irs.astype(np.float32, copy=False), metrics

    def store(self, key: str, irs: NDArray[np.float32], metrics: Mapping[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader (another simulator process) never sees half a file.
        tmp = self.folder / f"{key}.tmp.npy"
        np.save(tmp, irs)
        tmp.replace(self.folder / f"{key}.npy")
        tmp_json = self.folder / f"{key}.json.tmp"
        tmp_json.write_text(json.dumps(metrics), encoding="utf-8")
        tmp_json.replace(self.folder / f"{key}.json")
