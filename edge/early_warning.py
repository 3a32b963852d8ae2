"""Fault early-warning: learn each machine's normal behaviour, warn on drift before a trip.

Three models per axis, each chosen by the points its profile has (docs/telemetry.md,
"Fault early-warning"):

- ``motor_current``: while the axis moves, motor current against speed and load,
  ``I = b0 + b1·|v| + b2·load·|v|`` (least squares). The physics: the drive's current is its
  holding current plus mechanical power over the supply, and power is force times speed;
  friction adds a term in ``|v|``. Worn bearings raise the current at the same load and speed.
- ``temperature_rise``: over windows of ``window_s``, the winding's rise against its duty,
  ``ΔT = a·∫I²dt − b·∫T dt + c·Δt`` (the first-order thermal model, integrated, so the
  derivative of a 0.1 °C reading is never taken). A failing fan makes ΔT larger at the same duty.
- ``brake_release``: the time from the drive's ``enabled`` bit rising to its
  ``brake_released`` bit rising (status bits, so the resolution is the poll period); normal is
  its mean. A worn brake releases later, until the drive faults (no release within 0.5 s).

Each model learns from a healthy period: the telemetry store's raw history
(``learn_from_store``, replayed through the same feature extraction as live readings) or the
live readings themselves until it has ``min_samples``. Then it watches: every new sample's
residual against the fit, divided by the learned residual deviation (``σ``, floored at the
points' resolution), drives a one-sided CUSUM, ``S = max(0, S + z − k)``; ``S > h`` raises a
warning, and it clears when ``S`` is back at 0. Only upward drift is watched: wear costs more
current, more heat, more time. Readings while a fault is latched are not samples.

The watcher takes readings from a bus subscription (``run``) and never blocks the pollers
(``DROP_OLDEST``: a lost reading loses a sample, never the pipeline). Warnings go to
``on_warning`` (the service raises them as alarms) and are listed by ``status()``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import numpy as np

from drivers.model import Device, Quality, Reading
from edge.bus import Closed

log = logging.getLogger(__name__)

ModelName = Literal["motor_current", "temperature_rise", "brake_release"]
MODELS: tuple[ModelName, ...] = ("motor_current", "temperature_rise", "brake_release")

# The points each model needs in a device's profile.
NEEDS: dict[ModelName, tuple[str, ...]] = {
    "motor_current": ("velocity", "load", "motor_current"),
    "temperature_rise": ("motor_current", "motor_temperature"),
    "brake_release": ("enabled", "brake_released"),
}
# The points a watcher reads (from the bus, and from the store when it learns).
POINTS = (
    "velocity",
    "load",
    "enabled",
    "brake_released",
    "fault_code",
    "motor_current",
    "motor_temperature",
)


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """Thresholds of one model: CUSUM reference ``k`` and decision interval ``h`` (both in
    learned standard deviations), samples needed to learn, and the smallest σ used."""

    k: float = 0.5
    h: float = 8.0
    min_samples: int = 200
    max_samples: int = 50_000
    min_sigma: float = 0.1

    def __post_init__(self) -> None:
        for name in ("k", "h", "min_sigma"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number")
        if not 1 <= self.min_samples <= self.max_samples:
            raise ValueError("min_samples must be at least 1 and at most max_samples")


@dataclass(frozen=True, slots=True)
class EarlyWarningSettings:
    motor_current: ModelSettings = ModelSettings(min_samples=200, min_sigma=0.1)  # A
    temperature_rise: ModelSettings = ModelSettings(h=6.0, min_samples=10, min_sigma=0.1)  # °C
    brake_release: ModelSettings = ModelSettings(h=4.0, min_samples=5, min_sigma=0.03)  # s
    moving_mm_s: float = 20.0  # |velocity| above this: a motor-current sample
    window_s: float = 5.0  # temperature-rise windows
    max_gap_s: float = 2.0  # a longer silence ends a temperature window unused

    def model(self, name: ModelName) -> ModelSettings:
        m: ModelSettings = getattr(self, name)
        return m


@dataclass(frozen=True, slots=True)
class DriftWarning:
    """A model's warning raised (``active``) or cleared."""

    device: str
    model: ModelName
    active: bool
    ts: float  # wall clock of the sample that crossed
    statistic: float  # the CUSUM, in σ
    threshold: float
    residual: float  # the last sample's residual, in the model's unit
    sigma: float
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Fit:
    """One linear model: least squares on the learned samples, σ of their residuals."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.x: list[Sequence[float]] = []
        self.y: list[float] = []
        self.coef: np.ndarray | None = None
        self.sigma = settings.min_sigma
        self.cusum = 0.0
        self.active = False
        self.samples_seen = 0
        self.last_residual = 0.0

    @property
    def watching(self) -> bool:
        return self.coef is not None

    def add(self, x: Sequence[float], y: float) -> None:
        if len(self.y) < self.settings.max_samples:
            self.x.append(x)
            self.y.append(y)

    def fit(self) -> bool:
        if len(self.y) < self.settings.min_samples:
            return False
        X, y = np.asarray(self.x, dtype=float), np.asarray(self.y, dtype=float)
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ coef
        dof = max(1, len(y) - X.shape[1])
        self.sigma = max(self.settings.min_sigma, float(np.sqrt(resid @ resid / dof)))
        self.coef = coef
        self.x, self.y = [], []
        self.cusum, self.active = 0.0, False
        return True

    def reset(self) -> None:
        self.x, self.y, self.coef = [], [], None
        self.sigma = self.settings.min_sigma
        self.cusum, self.active, self.samples_seen, self.last_residual = 0.0, False, 0, 0.0

    def score(self, x: Sequence[float], y: float) -> tuple[float, bool | None]:
        """Update the CUSUM with one sample; returns (residual, new state or None)."""
        assert self.coef is not None
        s = self.settings
        resid = y - float(np.dot(self.coef, x))
        self.samples_seen += 1
        self.last_residual = resid
        z = resid / self.sigma
        self.cusum = min(10 * s.h, max(0.0, self.cusum + z - s.k))
        if not self.active and self.cusum > s.h:
            self.active = True
            return resid, True
        if self.active and self.cusum == 0.0:
            self.active = False
            return resid, False
        return resid, None

    def state(self) -> dict[str, Any]:
        return {
            "state": ("warning" if self.active else "watching") if self.watching else "learning",
            "samples": len(self.y),
            "needed": self.settings.min_samples,
            "coef": None if self.coef is None else [float(c) for c in self.coef],
            "sigma": self.sigma,
            "cusum": self.cusum,
            "threshold": self.settings.h,
            "k": self.settings.k,
            "last_residual": self.last_residual,
            "scored": self.samples_seen,
        }


UNITS: dict[ModelName, str] = {"motor_current": "A", "temperature_rise": "°C", "brake_release": "s"}


class MachineWatch:
    """The models of one device, fed its readings in order (live, or replayed history)."""

    def __init__(self, device: str, models: Iterable[ModelName], settings: EarlyWarningSettings):
        self.device, self.settings = device, settings
        self.fits: dict[ModelName, _Fit] = {m: _Fit(settings.model(m)) for m in models}
        self.values: dict[str, float] = {}
        self._window: tuple[float, float, float, float, float] | None = None  # t0, T0, ∫I², ∫T, t
        self._enabled_at: float | None = None
        self._released_at: float | None = None  # a brake bit seen rising before the enable

    def observe(self, point: str, value: Any, ts: float, good: bool) -> list[DriftWarning]:
        if not good or value is None or isinstance(value, str):
            if point in ("motor_current", "motor_temperature"):
                self._window = None  # a gap in the duty integral: start again
            return []
        v = float(value)
        if not math.isfinite(v):
            return []
        previous = self.values.get(point)
        self.values[point] = v
        faulted = self.values.get("fault_code", 0.0) != 0.0
        out: list[DriftWarning] = []
        if point == "enabled":
            if v and not previous and not faulted:
                self._enabled_at = ts
                if self._released_at == ts and "brake_release" in self.fits:
                    # both bits rose in one poll (the brake bit read first): a release
                    # within one poll period, which counts too, or the model only ever
                    # learns the slow ones
                    out += self._sample("brake_release", [1.0], 0.0, ts)
                    self._enabled_at = None
            elif not v:
                self._enabled_at = None
            self._released_at = None
        elif point == "brake_released" and v and not previous:
            if self._enabled_at is not None and "brake_release" in self.fits and not faulted:
                out += self._sample("brake_release", [1.0], ts - self._enabled_at, ts)
            self._released_at = ts if self._enabled_at is None and not faulted else None
            self._enabled_at = None
        elif point == "motor_current" and "motor_current" in self.fits and not faulted:
            speed = abs(self.values.get("velocity", 0.0))
            load = self.values.get("load")
            if speed > self.settings.moving_mm_s and load is not None:
                x = [1.0, speed / 1000, load * speed / 1e6]
                out += self._sample("motor_current", x, v, ts)
        elif point == "motor_temperature" and "temperature_rise" in self.fits:
            out += self._thermal(v, ts, faulted)
        return out

    def _thermal(self, temp: float, ts: float, faulted: bool) -> list[DriftWarning]:
        current = self.values.get("motor_current")
        if current is None or faulted:
            self._window = None
            return []
        if self._window is None:
            self._window = (ts, temp, 0.0, 0.0, ts)
            return []
        t0, temp0, i2, tint, last = self._window
        dt = ts - last
        if dt <= 0 or dt > self.settings.max_gap_s:
            self._window = (ts, temp, 0.0, 0.0, ts)
            return []
        i2 += current * current * dt
        tint += temp * dt
        if ts - t0 < self.settings.window_s:
            self._window = (t0, temp0, i2, tint, ts)
            return []
        self._window = (ts, temp, 0.0, 0.0, ts)
        return self._sample("temperature_rise", [i2, tint, ts - t0], temp - temp0, ts)

    def _sample(self, name: ModelName, x: list[float], y: float, ts: float) -> list[DriftWarning]:
        fit = self.fits[name]
        if not fit.watching:
            fit.add(x, y)
            if fit.fit():
                log.info("early warning: %s %s learned (σ %.3g)", self.device, name, fit.sigma)
            return []
        resid, change = fit.score(x, y)
        if change is None:
            return []
        unit = UNITS[name]
        what = "drifting" if change else "back to normal"
        msg = (
            f"{self.device}: {name.replace('_', ' ')} {what}: residual {resid:+.3g} {unit} "
            f"(σ {fit.sigma:.3g} {unit}, CUSUM {fit.cusum:.1f} of {fit.settings.h:g})"
        )
        return [
            DriftWarning(
                self.device, name, change, ts, fit.cusum, fit.settings.h, resid, fit.sigma, msg
            )
        ]

    def learn_done(self) -> dict[ModelName, bool]:
        """After a replay of history: fit what has samples enough."""
        return {name: fit.watching or fit.fit() for name, fit in self.fits.items()}


class HistorySource(Protocol):
    """What learning needs of the telemetry store (``edge.store.TelemetryStore``)."""

    async def query(self, q: Any) -> Any: ...


def models_for(device: Device) -> list[ModelName]:
    points = set(device.profile.points)
    return [m for m in MODELS if set(NEEDS[m]) <= points]


class EarlyWarning:
    """Every watched device's models; the entry point the service wires."""

    def __init__(
        self,
        devices: Iterable[Device],
        settings: EarlyWarningSettings | None = None,
        on_warning: Callable[[DriftWarning], None] | None = None,
        history: int = 200,
    ) -> None:
        self.settings = settings or EarlyWarningSettings()
        self.on_warning = on_warning
        self.watches: dict[str, MachineWatch] = {}
        self.models: dict[str, list[ModelName]] = {}
        for dev in devices:
            models = models_for(dev)
            if models:
                self.models[dev.id] = models
                self.watches[dev.id] = MachineWatch(dev.id, models, self.settings)
        self.recent: deque[DriftWarning] = deque(maxlen=history)
        self.observed = 0

    def observe(self, r: Reading) -> list[DriftWarning]:
        watch = self.watches.get(r.device)
        if watch is None or r.point not in POINTS:
            return []
        self.observed += 1
        out = watch.observe(r.point, r.value, r.ts_wall, r.quality is not Quality.BAD)
        for w in out:
            self._emit(w)
        return out

    def _emit(self, w: DriftWarning) -> None:
        self.recent.append(w)
        (log.warning if w.active else log.info)("early warning: %s", w.message)
        if self.on_warning is not None:
            try:
                self.on_warning(w)
            except Exception:  # a broken consumer never stops the watch
                log.exception("early warning: on_warning failed")

    async def run(self, feed: Any) -> None:
        """Consume a bus subscription (``Subscription[Reading]``) until it is closed."""
        with contextlib.suppress(Closed):
            while True:  # a batch at a time: no coroutine step per reading
                for r in await feed.get_batch():
                    self.observe(r)

    async def learn_from_store(
        self,
        store: HistorySource,
        start: float,
        end: float,
        devices: Iterable[str] | None = None,
    ) -> dict[str, dict[ModelName, bool]]:
        """Relearn ``devices`` (default: all) from the store's raw readings in [start, end]:
        the history is replayed, in time order, through fresh models, which are fitted and
        then watch the live readings. Returns which models learned (enough samples)."""
        from edge.store import TelemetryQuery

        out: dict[str, dict[ModelName, bool]] = {}
        for dev in list(devices) if devices is not None else list(self.watches):
            if dev not in self.watches:
                raise KeyError(dev)
            q = TelemetryQuery(dev, start, end, points=POINTS, resolution="raw", limit=100_000)
            result = await store.query(q)
            order = {p: i for i, p in enumerate(POINTS)}
            rows = sorted(
                (
                    (ts, order[s.point], s.point, v, qual)
                    for s in result.series
                    for ts, v, qual in zip(s.ts, s.values, s.quality or [], strict=False)
                ),
                key=lambda row: (row[0], row[1]),
            )
            watch = MachineWatch(dev, self.models[dev], self.settings)
            for ts, _, point, v, qual in rows:
                watch.observe(point, v, ts, qual != "bad")
            out[dev] = watch.learn_done()
            old = self.watches[dev]
            for name, learned in out[dev].items():
                if learned:  # what history did not teach, the live readings go on teaching
                    old.fits[name] = watch.fits[name]
        return out

    def relearn(self, device: str, model: ModelName | None = None) -> None:
        """Forget what ``device`` learned (e.g. after a repair): it learns again, live."""
        watch = self.watches[device]
        for name, fit in watch.fits.items():
            if model is None or name == model:
                fit.reset()

    def active(self) -> list[DriftWarning]:
        """The warnings raised and not cleared, one per device and model."""
        latest: dict[tuple[str, str], DriftWarning] = {}
        for w in self.recent:
            latest[(w.device, w.model)] = w
        return [
            w for w in latest.values() if w.active and self.watches[w.device].fits[w.model].active
        ]

    def status(self) -> dict[str, Any]:
        return {
            "devices": {
                dev: {name: fit.state() for name, fit in watch.fits.items()}
                for dev, watch in self.watches.items()
            },
            "active": [w.as_dict() for w in self.active()],
            "recent": [w.as_dict() for w in self.recent],
            "observed": self.observed,
            "at": time.time(),
        }


def settings_summary(s: EarlyWarningSettings) -> Mapping[str, Any]:
    return {name: asdict(s.model(name)) for name in MODELS} | {
        "moving_mm_s": s.moving_mm_s,
        "window_s": s.window_s,
    }


__all__ = [
    "MODELS",
    "DriftWarning",
    "EarlyWarning",
    "EarlyWarningSettings",
    "MachineWatch",
    "ModelSettings",
    "models_for",
    "settings_summary",
]
