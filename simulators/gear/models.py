"""One declarative model per MQTT device type, written from its page in docs/interfaces/devices.

A model is a parameters dataclass (every field can be overridden from the venue's ``simulate``
table) plus behaviour: ``step(dt, t)`` advances its physics, ``values()`` says what the device
would publish now, ``schedule`` says how often each point goes out (mqtt.md and the device
page), ``command`` acts on a documented command and returns the writes it made, and
``inject``/``clear`` add the faults natural to the type. Models know nothing about MQTT
connections or clocks; ``simulators.gear.family`` drives them, applies the generic faults
(drift, stuck, dropout, malformed) and publishes.

Native models publish point names under ``flytower/{venue}/{node}/{device}/``; vendor models
(the Shelly pair) publish relative topics under their transport ``base``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from simulators.core import FaultError, FaultInfo, SimulationError
from simulators.gear.audience import MAX_OCCUPANCY, Audience, Crowd, Show, ShowError
from simulators.gear.dynamics import (
    FPS_RATES,
    SoundWindows,
    clamp,
    daily_cycle,
    dew_point_c,
    energy,
    first_order,
    ou_step,
    phase_current_a,
    show_level_db,
    timecode_frame,
)

Scalar = bool | int | float | str


class Refused(Exception):
    """The command or its arguments are wrong (reply code ``refused``)."""


class Unavailable(Exception):
    """The device cannot act on the command now (reply code ``unavailable``)."""


@dataclass(frozen=True)
class Every:
    """When a point is published: at the device's rate (``fast``), at least every
    ``period_s``, and/or on a change of at least ``change`` (0: any change)."""

    period_s: float | None = None
    fast: bool = False
    change: float | None = None


@dataclass(frozen=True)
class FaultDef:
    """A fault and its parameters: name -> (type, unit, default)."""

    name: str
    description: str
    params: Mapping[str, tuple[type, str, Scalar]] = field(default_factory=dict)

    def info(self) -> FaultInfo:
        return FaultInfo(
            self.name,
            self.description,
            {
                k: f"{t.__name__}{', ' + u if u else ''}, default {d!r}"
                for k, (t, u, d) in self.params.items()
            },
        )

    def parse(self, device: str, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` checked and completed with defaults; FaultError names what is wrong."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise FaultError(
                f"{device}: fault {self.name} has no parameter(s) {', '.join(unknown)} "
                f"(known: {', '.join(self.params) or 'none'})"
            )
        out: dict[str, Any] = {}
        for name, (kind, _, default) in self.params.items():
            value = given.get(name, default)
            ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise FaultError(
                    f"{device}: fault {self.name}: {name} must be a {kind.__name__}, not {value!r}"
                )
            out[name] = value
        return out


def arg(args: Mapping[str, Any], name: str, kind: type, lo: float = -math.inf,
        hi: float = math.inf) -> Any:  # fmt: skip
    """A command argument, type- and range-checked as the device page lists it."""
    if name not in args:
        raise Refused(f"missing argument '{name}'")
    value = args[name]
    if kind is bool:
        if not isinstance(value, bool):
            raise Refused(f"'{name}' must be true or false, not {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refused(f"'{name}' must be a number, not {value!r}")
    if kind is int and not float(value).is_integer():
        raise Refused(f"'{name}' must be a whole number, not {value!r}")
    if not lo <= value <= hi:
        raise Refused(f"'{name}' {value} is outside {lo:g} … {hi:g}")
    return int(value) if kind is int else float(value)


def only(args: Mapping[str, Any], *names: str) -> None:
    if extra := sorted(set(args) - set(names)):
        raise Refused(f"unknown argument(s) {', '.join(extra)}")


class Model:
    """Behaviour shared by every model; subclasses declare their points and physics."""

    name: ClassVar[str]
    vendor: ClassVar[bool] = False  # third-party topics under the transport's base
    default_hz: ClassVar[float]  # publish_hz when the venue does not give one
    primary: ClassVar[str]  # the point drift applies to by default
    schedule: ClassVar[dict[str, Every]]
    faults: ClassVar[tuple[FaultDef, ...]] = ()
    command_topics: ClassVar[tuple[str, ...]] = ()  # vendor models: topics they obey

    @dataclass
    class Params:
        pass

    def __init__(self, params: Any, rng: random.Random, t: float) -> None:
        # Each model keeps its own typed ``self.p``; ``params`` is its ``Params``.
        self.rng = rng
        self.active: dict[str, dict[str, Any]] = {}

    def z(self) -> float:
        return self.rng.gauss(0.0, 1.0)

    def step(self, dt: float, t: float) -> None:
        raise NotImplementedError

    def values(self) -> dict[str, Scalar]:
        raise NotImplementedError

    def truth(self) -> dict[str, Any]:
        raise NotImplementedError

    def command(self, name: str, args: Mapping[str, Any]) -> list[list[Scalar]]:
        raise Refused(f"{self.name} has no command '{name}'")

    def vendor_command(self, topic: str, payload: bytes) -> bool:
        """A vendor model's reaction to a message on one of its command topics."""
        return False

    def events(self) -> list[tuple[str, Scalar, float]]:
        """Messages that must each go out, with their own time (every timecode frame)."""
        return []

    def wants_report(self) -> bool:
        """True when the device publishes all its points now (a sensor woken by a change)."""
        return False

    def inject(self, fault: str, params: dict[str, Any]) -> None:
        self.active[fault] = params

    def clear(self, fault: str) -> None:
        self.active.pop(fault, None)


# --- sensors ----------------------------------------------------------------------------------


class LoadCell(Model):
    """Wireless load shackle (load_cell.md): load with sway and noise, tare, peak, overload."""

    name = "load_cell"
    default_hz = 4.0
    primary = "load"
    RATED_KG, MAX_KG = 3250.0, 4875.0
    schedule: ClassVar[dict[str, Every]] = {
        "load": Every(fast=True),
        "peak": Every(fast=True),
        "overload": Every(fast=True, change=0),
        "battery": Every(30.0),
        "rssi": Every(30.0),
    }
    faults = (
        FaultDef(
            "overload",
            "a load above the 3250 kg rating hangs from the shackle",
            {"load_kg": (float, "kg", 3600.0)},
        ),
    )

    @dataclass
    class Params:
        load_kg: float = 450.0  # what hangs from it
        sway_pct: float = 1.0  # dynamic load: standard deviation of the sway, % of the load
        battery_pct: float = 90.0
        rssi_dbm: float = -65.0

    def __init__(self, params: Params, rng: random.Random, t: float) -> None:
        super().__init__(params, rng, t)
        self.p: LoadCell.Params = params
        self.sway = 0.0
        self.tare_kg = 0.0
        self.battery = params.battery_pct
        self.rssi = params.rssi_dbm
        self.load = params.load_kg
        self.peak = self.load

    def hanging_kg(self) -> float:
        fault = self.active.get("overload")
        return float(fault["load_kg"]) if fault else self.p.load_kg

    def step(self, dt: float, t: float) -> None:
        hanging = self.hanging_kg()
        self.sway = ou_step(self.sway, 0.0, 1.5, hanging * self.p.sway_pct / 100.0, dt, self.z())
        self.load = clamp(hanging + self.sway - self.tare_kg, -50.0, self.MAX_KG)
        self.measured = clamp(self.load + 0.3 * self.z(), -50.0, self.MAX_KG)
        self.peak = max(self.peak, self.measured)
        self.battery = max(0.0, self.battery - dt * 2.0 / 86_400.0)  # 2 % a day
        self.rssi = clamp(ou_step(self.rssi, self.p.rssi_dbm, 10.0, 3.0, dt, self.z()), -110, -30)

    def values(self) -> dict[str, Scalar]:
        return {
            "load": round(self.measured, 1),
            "peak": round(self.peak, 1),
            # The rating is the shackle's, so the gross force counts, whatever was tared off.
            "overload": self.measured + self.tare_kg > self.RATED_KG,
            "battery": round(self.battery, 1),
            "rssi": round(self.rssi, 1),
        }

    def truth(self) -> dict[str, Any]:
        return {
            "load": self.load,
            "peak": self.peak,
            "overload": self.load + self.tare_kg > self.RATED_KG,
            "battery": self.battery,
            "rssi": self.rssi,
            "hanging_kg": self.hanging_kg(),
            "tare_kg": self.tare_kg,
        }

    def command(self, name: str, args: Mapping[str, Any]) -> list[list[Scalar]]:
        only(args)
        if name == "tare":
            self.tare_kg += self.load
            self.load = self.measured = 0.0
            return [["tare", True]]
        if name == "reset_peak":
            self.peak = self.measured
            return [["peak_reset", True]]
        return super().command(name, args)


class TempHumidity(Model):
    """Temperature and humidity sensor (temp_humidity.md): a daily cycle, slow weather, sensor
    noise; humidity moves against temperature; the dew point is computed by the sensor."""

    name = "temp_humidity"
    default_hz = 1.0 / 30.0
    primary = "temperature"
    schedule: ClassVar[dict[str, Every]] = {
        "temperature": Every(fast=True),
        "humidity": Every(fast=True),
        "dew_point": Every(fast=True),
        "battery": Every(300.0),
    }

    @dataclass
    class Params:
        temperature_c: float = 21.0
        humidity_pct: float = 45.0
        daily_amplitude_c: float = 1.5
        period_s: float = 86_400.0  # of the "daily" cycle
        battery_pct: float = 80.0

    def __init__(self, params: Params, rng: random.Random, t: float) -> None:
        super().__init__(params, rng, t)
        self.p: TempHumidity.Params = params
        self.weather = 0.0
        self.damp = 0.0
        self.battery = params.battery_pct
        self.step(0.0, t)

    def step(self, dt: float, t: float) -> None:
        p = self.p
        self.weather = ou_step(self.weather, 0.0, 1800.0, 0.3, dt, self.z())
        self.damp = ou_step(self.damp, 0.0, 1800.0, 2.0, dt, self.z())
        self.temperature = p.temperature_c + daily_cycle(t, p.daily_amplitude_c, p.period_s)
        self.temperature += self.weather
        self.humidity = clamp(
            p.humidity_pct - 3.0 * (self.temperature - p.temperature_c) + self.damp, 0.0, 100.0
        )
        self.battery = max(0.0, self.battery - dt / 86_400.0)
        self.t_meas = clamp(self.temperature + 0.05 * self.z(), -40.0, 85.0)
        self.h_meas = clamp(self.humidity + 0.3 * self.z(), 0.0, 100.0)

    def values(self) -> dict[str, Scalar]:
        return {
            "temperature": round(self.t_meas, 2),
            "humidity": round(self.h_meas, 1),
            "dew_point": round(dew_point_c(self.t_meas, self.h_meas), 2),
            "battery": round(self.battery, 1),
        }

    def truth(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "humidity": self.humidity,
            "dew_point": dew_point_c(self.temperature, self.humidity),
            "battery": self.battery,
        }


class SplMeter(Model):
    """Class 1 sound level meter (spl_meter.md) following a show: music, then talk, repeated."""

    name = "spl_meter"
    default_hz = 10.0
    primary = "laf"
    schedule: ClassVar[dict[str, Every]] = {
        "laf": Every(fast=True),
        "laeq_1min": Every(1.0),
        "laeq_15min": Every(1.0),
        "lafmax": Every(1.0),
        "lcpeak": Every(1.0),
        "overload": Every(1.0),
    }
    faults = (FaultDef("overload", "the meter's input overloads (levels of the minute invalid)"),)

    @dataclass
    class Params:
        music_db: float = 94.0  # LAeq of the loud part of the show
        quiet_db: float = 52.0  # talk, applause, changeovers
        cycle_s: float = 300.0  # one number and the pause after it
        crest_db: float = 16.0  # C-weighted peak above LAF
        start_s: float = 0.0  # where in the cycle the show starts

    def __init__(self, params: Params, rng: random.Random, t: float) -> None:
        super().__init__(params, rng, t)
        self.p: SplMeter.Params = params
        self.t0 = t - params.start_s
        self.wiggle = 0.0
        self.windows = SoundWindows()
        self.step(0.1, t)

    def step(self, dt: float, t: float) -> None:
        p = self.p
        self.envelope = show_level_db(t - self.t0, p.music_db, p.quiet_db, p.cycle_s)
        self.wiggle = ou_step(self.wiggle, 0.0, 0.4, 4.0, dt, self.z())
        self.laf = clamp(self.envelope + self.wiggle, 20.0, 140.0)
        peak = self.laf + p.crest_db + 2.0 * abs(self.z())
        over = peak > 148.0 or "overload" in self.active
        self.windows.add(dt, self.laf, clamp(peak, 40.0, 150.0), over)

    def values(self) -> dict[str, Scalar]:
        w = self.windows
        return {
            "laf": round(self.laf, 1),
            "laeq_1min": round(clamp(w.leq(60), 20.0, 140.0), 1),
            "laeq_15min": round(clamp(w.leq(900), 20.0, 140.0), 1),
            "lafmax": round(clamp(w.max_laf(60), 20.0, 140.0), 1),
            "lcpeak": round(clamp(w.max_peak(60), 40.0, 150.0), 1),
            "overload": w.overloaded(60),
        }

    def truth(self) -> dict[str, Any]:
        return {**self.values(), "laf": self.laf, "envelope_db": self.envelope}


class PeopleCounter(Model):
    """People counter over the hall's doors (people_counter.md) following a show: empty, the
    doors open and the hall fills, act 1, an interval (some leave and come back), act 2, the
    hall empties; then the next show, with the day's counts reset (simulators.gear.audience).
    The ``occupancy`` fault holds the count at a given number, for a test to say "now 1200
    people are in"; ``blocked`` sets the fault flag and makes the sensor miss people."""

    name = "people_counter"
    default_hz = 1.0 / 30.0  # the heartbeat; every change goes out at once as well
    primary = "occupancy"
    schedule: ClassVar[dict[str, Every]] = {
        "occupancy": Every(fast=True, change=0),
        "entries": Every(fast=True, change=0),
        "exits": Every(fast=True, change=0),
        "capacity": Every(fast=True, change=0),
        "fault": Every(fast=True, change=0),
    }
    faults = (
        FaultDef(
            "occupancy",
            "hold the count at people (as if the difference walked in or out) until cleared; "
            "then the show goes on from there",
            {"people": (int, f"people, 0-{MAX_OCCUPANCY}", 0)},
        ),
        FaultDef(
            "blocked",
            "a sensor is blocked or tampered with: the fault flag is set and missed_pct of "
            "the people passing are not counted",
            {"missed_pct": (float, "%, 0-100", 100.0)},
        ),
    )

    @dataclass
    class Params:
        capacity: int = 1200  # seats
        attendance_pct: float = 92.0  # of the seats taken, on average (2 % spread a show)
        late_pct: float = 3.0  # of the audience arriving in the first fifth of act 1
        interval_out_pct: float = 40.0  # of the audience leaving the hall in the interval
        interval_home_pct: float = 3.0  # of those, the share who do not come back
        empty_s: float = 600.0  # the phases, in seconds: shorten them to compress a show
        doors_s: float = 1800.0
        act_1_s: float = 3000.0
        interval_s: float = 1200.0  # 0: no interval
        act_2_s: float = 2700.0
        egress_s: float = 600.0
        start_s: float = 0.0  # where in the show the simulation starts (0: empty, doors next)
        repeat: bool = True  # the next show after the hall has emptied
        daily_reset: bool = True  # entries and exits back to 0 as each show's cycle starts

        def __post_init__(self) -> None:
            # A venue's ``simulate`` table arrives here: say which value is wrong, and how.
            try:
                self.show()
                self.crowd()
            except ShowError as exc:
                raise SimulationError(str(exc)) from None
            if not (math.isfinite(self.start_s) and self.start_s >= 0):
                raise SimulationError(f"start_s must be a finite number >= 0, not {self.start_s}")

        def show(self) -> Show:
            return Show(self.empty_s, self.doors_s, self.act_1_s, self.interval_s,
                        self.act_2_s, self.egress_s)  # fmt: skip

        def crowd(self) -> Crowd:
            return Crowd(self.capacity, self.attendance_pct, self.late_pct,
                         self.interval_out_pct, self.interval_home_pct)  # fmt: skip

    def __init__(self, params: Params, rng: random.Random, t: float) -> None:
        super().__init__(params, rng, t)
        self.p: PeopleCounter.Params = params
        self.capacity = params.capacity
        show = params.show()
        self.hall = Audience(show, params.crowd(), rng, params.repeat, params.daily_reset)
        # Starting mid-show: the evening so far happens now (counted since the day's reset).
        self.hall.advance(params.start_s % show.cycle_s)

    def step(self, dt: float, t: float) -> None:
        self.hall.advance(dt)

    def values(self) -> dict[str, Scalar]:
        c = self.hall.counter
        return {
            "occupancy": c.occupancy,
            "entries": c.entries,
            "exits": c.exits,
            "capacity": self.capacity,
            "fault": "blocked" in self.active,
        }

    def truth(self) -> dict[str, Any]:
        h = self.hall
        return {
            **self.values(),
            "people_inside": h.inside,  # really in the hall; occupancy is what was counted
            "phase": h.phase(),
            "show": h.cycle,
            "show_s": h.t,
            "audience": h.audience,  # coming to tonight's show
            "foyer": h.pools.get("foyer", 0) + h.pools.get("returning", 0),
            "missed": h.missed,
            "held": h.hold,
        }

    def command(self, name: str, args: Mapping[str, Any]) -> list[list[Scalar]]:
        if name == "reset_counts":
            only(args)
            self.hall.counter.reset()
            return [["counts_reset", True]]
        if name == "set_capacity":
            only(args, "seats")
            self.capacity = arg(args, "seats", int, 0, MAX_OCCUPANCY)
            return [["capacity", self.capacity]]
        return super().command(name, args)

    def inject(self, fault: str, params: dict[str, Any]) -> None:
        # Checked before anything changes: a refused injection leaves the device as it was.
        if fault == "occupancy":
            people = params["people"]
            if not 0 <= people <= MAX_OCCUPANCY:
                raise FaultError(
                    f"{self.name}: occupancy: people must be 0 to {MAX_OCCUPANCY}, not {people}"
                )
            self.hall.set_people(people)
            self.hall.hold = True
        elif fault == "blocked":
            missed = params["missed_pct"]
            if not 0.0 <= missed <= 100.0:
                raise FaultError(
                    f"{self.name}: blocked: missed_pct must be 0 to 100, not {missed:g}"
                )
            self.hall.missed_pct = missed
        super().inject(fault, params)

    def clear(self, fault: str) -> None:
        if fault == "occupancy":
            self.hall.hold = False
        elif fault == "blocked":
            self.hall.missed_pct = 0.0
        super().clear(fault)


@dataclass
class ThreePhase:
    """A three-phase supply and its load: per phase V, P, PF by slow random processes; I from
    P = V·I·PF; imported and exported energy integrate P. Used by both power meters."""

    voltage_v: float
    load_w: float
    pf: float
    imbalance: float
    rng: random.Random
    v: list[float] = field(default_factory=lambda: [0.0] * 3)
    p: list[float] = field(default_factory=lambda: [0.0] * 3)
    pfs: list[float] = field(default_factory=lambda: [0.0] * 3)
    i: list[float] = field(default_factory=lambda: [0.0] * 3)
    imported_wh: list[float] = field(default_factory=lambda: [0.0] * 3)
    exported_wh: list[float] = field(default_factory=lambda: [0.0] * 3)
    freq: float = 50.0
    _vn: list[float] = field(default_factory=lambda: [0.0] * 3)
    _pn: list[float] = field(default_factory=lambda: [0.0] * 3)
    _fn: float = 0.0

    def step(self, dt: float, dead: set[int], switched_off: bool, max_w: float) -> None:
        g = self.rng.gauss
        self._fn = ou_step(self._fn, 0.0, 60.0, 0.02, dt, g(0, 1))
        self.freq = 50.0 + self._fn
        for k in range(3):
            share = self.load_w / 3.0 * (1.0 + self.imbalance * (k - 1))
            self._vn[k] = ou_step(self._vn[k], 0.0, 30.0, 1.2, dt, g(0, 1))
            self._pn[k] = ou_step(self._pn[k], 0.0, 20.0, 0.06 * max(share, 100.0), dt, g(0, 1))
            if k in dead:
                self.v[k] = self.p[k] = self.i[k] = self.pfs[k] = 0.0
                continue
            power = 0.0 if switched_off else clamp(share + self._pn[k], -max_w, max_w)
            self.pfs[k] = 0.0 if switched_off else clamp(self.pf + 0.01 * g(0, 1), -1.0, 1.0)
            self.v[k] = self.voltage_v + self._vn[k] - 0.002 * abs(power) / 10.0
            self.p[k] = power
            self.i[k] = phase_current_a(power, self.v[k], self.pfs[k])
            if power > 0:
                self.imported_wh[k] += power * dt / 3600.0
            else:
                self.exported_wh[k] -= power * dt / 3600.0


POWER_FAULTS = (
    FaultDef("phase_loss", "one phase loses its supply (a blown fuse)", {"phase": (int, "1-3", 1)}),
)


def _phase(fault: Mapping[str, Any] | None) -> set[int]:
    return {int(fault["phase"]) - 1} if fault else set()


def _check_phase(device: str, params: Mapping[str, Any]) -> None:
    if not 1 <= params["phase"] <= 3:
        raise FaultError(f"{device}: phase_loss: phase must be 1, 2 or 3")


class PowerMeter(Model):
    """Three-phase power meter (power_meter.md): kW, PF, V, A per phase, total, kWh, Hz."""

    name = "power_meter"
    default_hz = 1.0
    primary = "power_total"
    schedule: ClassVar[dict[str, Every]] = {
        f"{q}_l{k}": Every(fast=True)
        for k in (1, 2, 3)
        for q in ("voltage", "current", "power", "pf")
    } | {"power_total": Every(fast=True), "energy_total": Every(fast=True),
         "frequency": Every(fast=True)}  # fmt: skip
    faults = POWER_FAULTS

    @dataclass
    class Params:
        voltage_v: float = 230.0
        load_kw: float = 18.0  # mean of the three phases together
        pf: float = 0.95
        imbalance: float = 0.15
        energy_kwh: float = 15_234.0  # the meter's reading when the simulation starts

    def __init__(self, params: Params, rng: random.Random, t: float) -> None:
        super().__init__(params, rng, t)
        self.p: PowerMeter.Params = params
        self.supply = ThreePhase(params.voltage_v, params.load_kw * 1000, params.pf,
                                 params.imbalance, rng)  # fmt: skip
        self.step(0.0, t)

    def step(self, dt: float, t: float) -> None:
        self.supply.step(dt, _phase(self.active.get("phase_loss")), False, 35_000.0)

    def values(self) -> dict[str, Scalar]:
        s = self.supply
        out: dict[str, Scalar] = {}
        for k in range(3):
            out[f"voltage_l{k + 1}"] = round(s.v[k], 2)
            out[f"current_l{k + 1}"] = round(s.i[k], 3)
            out[f"power_l{k + 1}"] = round(s.p[k] / 1000.0, 4)
            out[f"pf_l{k + 1}"] = round(s.pfs[k], 3)
        out["power_total"] = round(sum(s.p) / 1000.0, 4)
        out["energy_total"] = round(self.p.energy_kwh + sum(s.imported_wh) / 1000.0, 3)
        out["frequency"] = round(s.freq, 3)
        return out

    def truth(self) -> dict[str, Any]:
        return self.values()

    def inject(self, fault: str, params: dict[str, Any]) -> None:
        _check_phase(self.name, params)
        super().inject(fault, params)


class Shelly3em(Model):
    """Shelly 3EM Gen1 (shelly_3em.md) on its own topics: W and Wh, a contactor relay."""

    name = "shelly_3em"
    vendor = True
    default_hz = 1.0 / 30.0  # mqtt_update_period 30 s
    primary = "emeter/0/power"
    schedule: ClassVar[dict[str, Every]] = {
        f"emeter/{k}/{q}": Every(fast=True)
        for k in range(3)
        for q in ("voltage", "current", "power", "pf", "total", "total_returned")
    } | {"relay/0": Every(fast=True, change=0)}  # fmt: skip
    faults = POWER_FAULTS
    command_topics = ("relay/0/command",)

    @dataclass
    class Params:
        voltage_v: float = 230.0
        load_w: float = 4500.0
        pf: float = 0.92
        imbalance: float = 0.2
        energy_wh: float = 1_250_000.0  # each phase's counter at start
        relay: bool = True

    def __init__(self, params: Params, rng: random.Random, t: float) -> None:
        super().__init__(params, rng, t)
        self.p: Shelly3em.Params = params
        self.relay = params.relay
        self.supply = ThreePhase(params.voltage_v, params.load_w, params.pf, params.imbalance,
                                 rng)  # fmt: skip
        self.step(0.0, t)

    def step(self, dt: float, t: float) -> None:
        # The contactor switches the load: the current transformers see nothing when it is
        # open, the voltage taps sit ahead of it and still see the supply.
        self.supply.step(dt, _phase(self.active.get("phase_loss")), not self.relay, 28_000.0)

    def values(self) -> dict[str, Scalar]:
        s = self.supply
        out: dict[str, Scalar] = {"relay/0": "on" if self.relay else "off"}
        for k in range(3):
            out[f"emeter/{k}/voltage"] = round(s.v[k], 2)
            out[f"emeter/{k}/current"] = round(s.i[k], 2)
            out[f"emeter/{k}/power"] = round(s.p[k], 2)
            out[f"emeter/{k}/pf"] = round(s.pfs[k], 2)
            out[f"emeter/{k}/total"] = round(self.p.energy_wh + s.imported_wh[k], 1)
            out[f"emeter/{k}/total_returned"] = round(s.exported_wh[k], 1)
        return out

    def truth(self) -> dict[str, Any]:
        return {**self.values(), "relay": self.relay}

    def vendor_command(self, topic: str, payload: bytes) -> bool:
        text = payload.decode("utf-8", "replace").strip().lower()
        if topic != "relay/0/command" or text not in ("on", "off", "toggle"):
            return False  # a real Gen1 device ignores what it does not understand
        self.relay = (not self.relay) if text == "toggle" else text == "on"
        return True

    def inject(self, fault: str, params: dict[str, Any]) -> None:
        _check_phase(self.name, params)
        super().inject(fault, params)


class ShellyHt(Model):
    """Shelly H&T Gen1 (shelly_ht.md): sleeps, wakes on 0.5 °C or 5 % RH of change or at least
    every report period (6 h), publishes everything and sleeps again."""

    name = "shelly_ht"
    vendor = True
    default_hz = 1.0 / 21_600.0
    primary = "sensor/temperature"
    schedule: ClassVar[dict[str, Every]] = {
        "sensor/temperature": Every(fast=True),
        "sensor/humidity": Every(fast=True),
        "sensor/battery": Every(fast=True),
        "sensor/ext_power": Every(fast=True),
    }

    @dataclass
    class Params:
        temperature_c: float = 20.0
        humidity_pct: float = 50.0
        daily_amplitude_c: float = 2.0
        period_s: float = 86_400.0
        battery_pct: float = 85.0
        external_power: bool = False

    def __init__(self, params: Params, rng: random.Random, t: float) -> None:
        super().__init__(params, rng, t)
        self.p: ShellyHt.Params = params
        self.climate = TempHumidity(
            TempHumidity.Params(params.temperature_c, params.humidity_pct,
                                params.daily_amplitude_c, params.period_s, params.battery_pct),
            rng, t,
        )  # fmt: skip
        self.reported: tuple[float, float] | None = None

    def step(self, dt: float, t: float) -> None:
        self.climate.step(dt, t)

    def values(self) -> dict[str, Scalar]:
        c = self.climate
        return {
            "sensor/temperature": round(c.t_meas, 2),
            "sensor/humidity": round(c.h_meas, 1),
            "sensor/battery": 100 if self.p.external_power else round(c.battery),
            "sensor/ext_power": self.p.external_power,
        }

    def wants_report(self) -> bool:
        c = self.climate
        now = (c.t_meas, c.h_meas)
        if self.reported is None or (
            abs(now[0] - self.reported[0]) >= 0.5 or abs(now[1] - self.reported[1]) >= 5.0
        ):
            self.reported = now
            return True
        return False

    def truth(self) -> dict[str, Any]:
        return {**self.climate.truth(), "external_power": self.p.external_power}


# --- audio ------------------------------------------------------------------------------------


class WirelessMicReceiver(Model):
    """UHF receiver channel (wireless_mic_receiver.md): two diversity antennas fading on their
    own, speech at the output, the transmitter's battery draining while it is on."""

    name = "wireless_mic_receiver"
    default_hz = 10.0
    primary = "rf_level"
    schedule: ClassVar[dict[str, Every]] = {
        "rf_level": Every(fast=True),
        "af_level": Every(fast=True),
        "tx_present": Every(fast=True),
        "antenna": Every(fast=True),  # it says which antenna rf_level is from
        "battery": Every(30.0),
        "frequency": Every(10.0, change=0),
        "gain": Every(10.0, change=0),
        "mute": Every(10.0, change=0),
    }
    faults = (
        FaultDef("battery_low", "the transmitter's battery is nearly flat",
                 {"level_pct": (float, "%", 8.0)}),
        FaultDef("tx_off", "the transmitter is switched off (or out of range)"),
        FaultDef("rf_fade", "a deep fade on both antennas (a body, a steel door)",
                 {"depth_db": (float, "dB", 30.0)}),
    )  # fmt: skip

    @dataclass
    class Params:
        frequency_khz: int = 606_000
        tx_frequency_khz: int = 0  # the transmitter's frequency; 0: the receiver's
        rf_dbm: float = -55.0
        battery_pct: float = 100.0
        battery_life_h: float = 8.0
        gain_db: int = 24
        muted: bool = False
        speech_dbfs: float = -24.0  # average output level at 24 dB gain

    def __init__(self, params: Params, rng: random.Random, t: float) -> None:
        super().__init__(params, rng, t)
        self.p: WirelessMicReceiver.Params = params
        self.frequency = params.frequency_khz
        self.tx_frequency = params.tx_frequency_khz or params.frequency_khz
        self.gain = params.gain_db
        self.mute = params.muted
        self.battery = params.battery_pct
        self.fade = [0.0, 0.0]
        self.speech = 0.0
        self.step(0.0, t)

    def tx_present(self) -> bool:
        return "tx_off" not in self.active and self.frequency == self.tx_frequency

    def step(self, dt: float, t: float) -> None:
        present = self.tx_present()
        depth = float(self.active["rf_fade"]["depth_db"]) if "rf_fade" in self.active else 0.0
        rf = []
        for k in (0, 1):
            self.fade[k] = ou_step(self.fade[k], 0.0, 0.8, 5.0, dt, self.z())
            mean = self.p.rf_dbm - depth if present else -97.0
            rf.append(clamp(mean + (self.fade[k] if present else self.fade[k] / 5.0), -100, -20))
        self.antenna = 1 if rf[0] >= rf[1] else 2
        self.rf = max(rf)
        self.speech = ou_step(self.speech, 0.0, 0.3, 6.0, dt, self.z())
        audible = present and not self.mute and self.rf > -90.0
        self.af = (
            clamp(self.p.speech_dbfs + (self.gain - 24) + self.speech, -60.0, 0.0)
            if audible
            else -60.0
        )
        if present:
            self.battery = max(0.0, self.battery - dt * 100.0 / (self.p.battery_life_h * 3600))
        if "battery_low" in self.active:
            self.battery = min(self.battery, float(self.active["battery_low"]["level_pct"]))

    def values(self) -> dict[str, Scalar]:
        out: dict[str, Scalar] = {
            "frequency": self.frequency,
            "rf_level": round(self.rf, 1),
            "antenna": self.antenna,
            "af_level": round(self.af, 1),
            "tx_present": self.tx_present(),
            "gain": self.gain,
            "mute": self.mute,
        }
        if self.tx_present():  # the battery is known from the pilot tone only
            out["battery"] = round(self.battery, 1)
        return out

    def truth(self) -> dict[str, Any]:
        return {**self.values(), "rf_level": self.rf, "af_level": self.af,
                "battery": self.battery, "tx_frequency_khz": self.tx_frequency}  # fmt: skip

    def command(self, name: str, args: Mapping[str, Any]) -> list[list[Scalar]]:
        if name == "set_frequency":
            only(args, "frequency")
            khz = arg(args, "frequency", int, 470_000, 694_000)
            if khz % 25:
                raise Refused(f"frequency {khz} kHz is not on the 25 kHz raster")
            self.frequency = khz
            return [["frequency", khz]]
        if name == "set_gain":
            only(args, "gain")
            self.gain = arg(args, "gain", int, -18, 42)
            return [["gain", self.gain]]
        if name == "set_mute":
            only(args, "muted")
            self.mute = arg(args, "muted", bool)
            return [["mute", self.mute]]
        return super().command(name, args)


class PowerAmplifier(Model):
    """Four-channel amplifier (power_amplifier.md): programme on each channel, a heatsink that
    follows the output power, a limiter from 85 °C and protection from 95 °C."""

    name = "power_amplifier"
    default_hz = 10.0
    primary = "temperature"
    LIMIT_C, PROTECT_C, RECOVER_C = 85.0, 95.0, 80.0
    schedule: ClassVar[dict[str, Every]] = {
        "standby": Every(10.0, change=0),
        "temperature": Every(10.0, change=0.5),
        **{f"level_{k}": Every(fast=True) for k in (1, 2, 3, 4)},
        **{f"mute_{k}": Every(10.0, change=0) for k in (1, 2, 3, 4)},
        **{f"protect_{k}": Every(10.0, change=0) for k in (1, 2, 3, 4)},
    }
    faults = (
        FaultDef("protect", "a channel's output is short-circuited: it protects",
                 {"channel": (int, "1-4", 1)}),
        FaultDef("fan_failure", "the fans stop: the heatsink runs four times as hot"),
    )  # fmt: skip

    @dataclass
    class Params:
        programme_db: float = -16.0  # average output level re clip
        ambient_c: float = 25.0
        thermal_tau_s: float = 180.0
        idle_rise_c: float = 12.0  # above ambient, powered and silent
        full_rise_c: float = 60.0  # above ambient at clip on every channel (sqrt law)
        wake_s: float = 3.0
        standby: bool = False

    def __init__(self, params: Params, rng: random.Random, t: float) -> None:
        super().__init__(params, rng, t)
        self.p: PowerAmplifier.Params = params
        self.standby = params.standby
        self.waking = 0.0
        self.mute = [False] * 4
        self.wiggle = [0.0] * 4
        self.level = [-60.0] * 4
        self.hot_protect = False
        self.temperature = params.ambient_c + (0.0 if params.standby else params.idle_rise_c)

    def protect(self, k: int) -> bool:
        fault = self.active.get("protect")
        return self.hot_protect or (fault is not None and fault["channel"] == k + 1)

    def step(self, dt: float, t: float) -> None:
        p = self.p
        self.waking = max(0.0, self.waking - dt)
        powered = not self.standby
        limiting = self.temperature >= self.LIMIT_C
        for k in range(4):
            self.wiggle[k] = ou_step(self.wiggle[k], 0.0, 0.3, 4.0, dt, self.z())
            live = powered and self.waking == 0 and not self.mute[k] and not self.protect(k)
            out = p.programme_db + self.wiggle[k] - (6.0 if limiting else 0.0)
            self.level[k] = clamp(out, -60.0, 0.0) if live else -60.0
        relative = sum(energy(x) for x in self.level if x > -60.0) / 4.0
        rise = (p.idle_rise_c + p.full_rise_c * math.sqrt(relative)) if powered else 0.0
        if "fan_failure" in self.active:
            rise *= 4.0
        self.temperature = clamp(
            first_order(self.temperature, p.ambient_c + rise, p.thermal_tau_s, dt), 0.0, 110.0
        )
        if self.temperature >= self.PROTECT_C:
            self.hot_protect = True
        elif self.temperature < self.RECOVER_C:
            self.hot_protect = False

    def values(self) -> dict[str, Scalar]:
        out: dict[str, Scalar] = {"standby": self.standby,
                                  "temperature": round(self.temperature, 1)}  # fmt: skip
        for k in range(4):
            out[f"mute_{k + 1}"] = self.mute[k]
            out[f"level_{k + 1}"] = round(self.level[k], 1)
            out[f"protect_{k + 1}"] = self.protect(k)
        return out

    def truth(self) -> dict[str, Any]:
        return {**self.values(), "temperature": self.temperature,
                "limiting": self.temperature >= self.LIMIT_C}  # fmt: skip

    def command(self, name: str, args: Mapping[str, Any]) -> list[list[Scalar]]:
        if name.startswith("set_mute_") and name[-1] in "1234" and len(name) == 10:
            only(args, "muted")
            k = int(name[-1])
            self.mute[k - 1] = arg(args, "muted", bool)
            return [[f"mute_{k}", self.mute[k - 1]]]
        if name == "mute_all":
            only(args)
            self.mute = [True] * 4
            return [[f"mute_{k}", True] for k in (1, 2, 3, 4)]
        if name == "set_standby":
            only(args, "on")
            on = arg(args, "on", bool)
            if self.standby and not on:
                self.waking = self.p.wake_s
            self.standby = on
            return [["standby", on]]
        return super().command(name, args)

    def inject(self, fault: str, params: dict[str, Any]) -> None:
        if fault == "protect" and not 1 <= params["channel"] <= 4:
            raise FaultError(f"{self.name}: protect: channel must be 1 to 4")
        super().inject(fault, params)


# --- video ------------------------------------------------------------------------------------

STANDBY, WARMING, ON, COOLING, ERROR = 0, 1, 2, 3, 4


class Projector(Model):
    """Laser projector (projector.md): warm-up and cool-down, a 0.2 s shutter, light-source
    hours that count while it is lit, error codes."""

    name = "projector"
    default_hz = 0.1
    primary = "temperature"
    SHUTTER_S = 0.2
    schedule: ClassVar[dict[str, Every]] = {
        "power": Every(fast=True, change=0),
        "power_state": Every(fast=True, change=0),
        "shutter_closed": Every(fast=True, change=0),
        "input": Every(fast=True, change=0),
        "light_source_hours": Every(60.0),
        "temperature": Every(fast=True, change=0.5),
        "error_code": Every(fast=True, change=0),
    }
    faults = (
        FaultDef("lamp_fault", "the laser light source fails (error 3): the projector stops"),
        FaultDef("error", "any error code (1 over-temperature, 2 fan, 3 light source, "
                 "4 shutter, 5 lens)", {"code": (int, "1-5", 1)}),
    )  # fmt: skip

    @dataclass
    class Params:
        power: bool = False
        warmup_s: float = 30.0
        cooldown_s: float = 60.0
        light_source_hours: float = 1_234.5
        ambient_c: float = 24.0
        input: int = 1
        shutter_closed: bool = True

    def __init__(self, params: Params, rng: random.Random, t: float) -> None:
        super().__init__(params, rng, t)
        self.p: Projector.Params = params
        self.power = params.power
        self.state = ON if params.power else STANDBY
        self.timer = 0.0
        self.shutter = params.shutter_closed
        self.shutter_target = params.shutter_closed
        self.shutter_timer = 0.0
        self.input = params.input
        self.hours = params.light_source_hours
        self.temperature = params.ambient_c
        self.noise = 0.0

    def error_code(self) -> int:
        if "lamp_fault" in self.active:
            return 3
        return int(self.active["error"]["code"]) if "error" in self.active else 0

    def step(self, dt: float, t: float) -> None:
        if self.error_code():
            self.state, self.power = ERROR, False
        elif self.state == ERROR:
            self.state = STANDBY  # a cleared error leaves the projector in standby
        self.timer = max(0.0, self.timer - dt)
        if self.state == WARMING and self.timer == 0:
            self.state = ON
        elif self.state == COOLING and self.timer == 0:
            self.state = STANDBY
        # A request made during warm-up or cool-down is acted on once that has finished.
        if self.state == STANDBY and self.power:
            self.state, self.timer = WARMING, self.p.warmup_s
        elif self.state == ON and not self.power:
            self.state, self.timer = COOLING, self.p.cooldown_s
        if self.shutter != self.shutter_target:
            self.shutter_timer -= dt
            if self.shutter_timer <= 0:
                self.shutter = self.shutter_target
        if self.state in (WARMING, ON):
            self.hours += dt / 3600.0
        lit = 3.0 if self.state in (WARMING, ON) else 0.0
        self.noise = ou_step(self.noise, 0.0, 60.0, 0.3, dt, self.z())
        self.temperature = first_order(self.temperature, self.p.ambient_c + lit, 120.0, dt)

    def values(self) -> dict[str, Scalar]:
        return {
            "power": self.power,
            "power_state": self.state,
            "shutter_closed": self.shutter,
            "input": self.input,
            "light_source_hours": round(self.hours, 2),
            "temperature": round(clamp(self.temperature + self.noise, -20.0, 100.0), 1),
            "error_code": self.error_code(),
        }

    def truth(self) -> dict[str, Any]:
        return {**self.values(), "light_source_hours": self.hours,
                "temperature": self.temperature}  # fmt: skip

    def command(self, name: str, args: Mapping[str, Any]) -> list[list[Scalar]]:
        if name in ("power_on", "power_off"):
            only(args)
            if self.error_code():
                raise Unavailable(f"projector in error {self.error_code()}")
            self.power = name == "power_on"
            return [["power", self.power]]
        if name in ("open_shutter", "close_shutter"):
            only(args)
            closed = name == "close_shutter"
            if closed != self.shutter_target:
                self.shutter_target, self.shutter_timer = closed, self.SHUTTER_S
            return [["shutter_closed", closed]]
        if name == "select_input":
            only(args, "input")
            self.input = arg(args, "input", int, 1, 4)
            return [["input", self.input]]
        return super().command(name, args)

    def inject(self, fault: str, params: dict[str, Any]) -> None:
        if fault == "error" and not 1 <= params["code"] <= 5:
            raise FaultError(f"{self.name}: error: code must be 1 to 5")
        super().inject(fault, params)


STOPPED, PLAYING, PAUSED, LOADING, FAILED = 0, 1, 2, 3, 4


def clip_info(clip: int) -> tuple[float, float]:
    """(duration s, frame rate) of a clip of the simulated media bank: fixed per number."""
    return 20.0 + (clip * 7919) % 580, FPS_RATES[clip % len(FPS_RATES)]


class MediaServer(Model):
    """Media server layer (media_server.md): a media bank of clips 1…bank_size, loading,
    transport, a running playhead published every frame as timecode."""

    name = "media_server"
    default_hz = 0.2
    primary = "opacity"
    schedule: ClassVar[dict[str, Every]] = {
        "transport": Every(fast=True, change=0),
        "playback_state": Every(fast=True, change=0),
        "clip": Every(fast=True, change=0),
        "timecode": Every(1.0, change=0),  # every frame while playing (events())
        "frame_rate": Every(fast=True, change=0),
        "duration": Every(fast=True, change=0),
        "opacity": Every(fast=True, change=0),
    }
    faults = (
        FaultDef("clip_missing", "the loaded clip's file is missing or unreadable (state 4)"),
    )

    @dataclass
    class Params:
        clip: int = 1
        bank_size: int = 100  # clips 1…bank_size exist; others are missing
        load_s: float = 0.5
        loop: bool = False  # at the end: loop, or hold the last frame paused
        opacity_pct: float = 100.0
        playing: bool = False

    def __init__(self, params: Params, rng: random.Random, t: float) -> None:
        super().__init__(params, rng, t)
        self.p: MediaServer.Params = params
        self.clip = 0
        self.transport = STOPPED
        self.state = STOPPED
        self.position = 0.0
        self.duration, self.fps = 0.0, 25.0
        self.loading = 0.0
        self.opacity = params.opacity_pct
        self.frames: list[tuple[str, Scalar, float]] = []
        if params.clip:
            self.load(params.clip)
            self.loading = 0.0
            self.settle()
        if params.playing and self.state == STOPPED:
            self.transport = self.state = PLAYING

    def exists(self, clip: int) -> bool:
        return 1 <= clip <= self.p.bank_size

    def load(self, clip: int) -> None:
        self.clip, self.transport, self.position = clip, STOPPED, 0.0
        self.state, self.loading = LOADING, self.p.load_s

    def settle(self) -> None:
        """The end of loading: the clip's facts are known, or it is missing."""
        if self.exists(self.clip) and "clip_missing" not in self.active:
            self.duration, self.fps = clip_info(self.clip)
            self.state = PLAYING if self.transport == PLAYING else STOPPED
        else:
            self.duration, self.state = 0.0, FAILED

    def step(self, dt: float, t: float) -> None:
        if "clip_missing" in self.active and self.state != FAILED and self.clip:
            self.state, self.transport = FAILED, STOPPED
        if self.state == LOADING:
            self.loading -= dt
            if self.loading <= 0:
                self.settle()
        if self.state != PLAYING:
            return
        before = timecode_frame(self.position, self.fps)
        self.position += dt
        if self.position >= self.duration:
            if self.p.loop and self.duration > 0:
                self.position %= self.duration
                before = -1
            else:
                self.position = max(0.0, self.duration - 1.0 / self.fps)
                self.state = self.transport = PAUSED
        now = timecode_frame(self.position, self.fps)
        # Every frame crossed goes out with the time it was shown (mqtt.md: every frame).
        first = before + 1 if before < now else now
        for frame in range(first, now + 1):
            self.frames.append(("timecode", frame, t - (now - frame) / self.fps))

    def events(self) -> list[tuple[str, Scalar, float]]:
        out, self.frames = self.frames, []
        return out

    def values(self) -> dict[str, Scalar]:
        return {
            "transport": self.transport,
            "playback_state": self.state,
            "clip": self.clip,
            "timecode": min(timecode_frame(self.position, self.fps), 8_639_999),
            "frame_rate": self.fps,
            "duration": round(self.duration, 3),
            "opacity": round(self.opacity, 2),
        }

    def truth(self) -> dict[str, Any]:
        return {**self.values(), "position_s": self.position}

    def command(self, name: str, args: Mapping[str, Any]) -> list[list[Scalar]]:
        if name in ("play", "pause", "stop"):
            only(args)
            want = {"play": PLAYING, "pause": PAUSED, "stop": STOPPED}[name]
            if want != STOPPED and (self.clip == 0 or self.state == FAILED):
                raise Unavailable("no playable clip loaded")
            self.transport = want
            if want == STOPPED:
                self.position = 0.0
            if self.state in (STOPPED, PLAYING, PAUSED):
                self.state = want
            return [["transport", want]]
        if name == "load_clip":
            only(args, "clip")
            clip = arg(args, "clip", int, 1, 9999)
            self.load(clip)
            return [["transport", STOPPED], ["clip", clip]]
        if name == "seek":
            only(args, "position")
            position = arg(args, "position", float, 0.0)
            self.position = min(position, self.duration)
            return [["seek", position]]
        if name == "set_opacity":
            only(args, "level")
            self.opacity = arg(args, "level", float, 0.0, 100.0)
            return [["opacity", self.opacity]]
        return super().command(name, args)


class LedWallProcessor(Model):
    """LED wall processor (led_wall_processor.md): input lock after a switch, brightness that
    heats the processor, automatic over-temperature fault and derating from 75 °C."""

    name = "led_wall_processor"
    default_hz = 0.1
    primary = "temperature"
    HOT_C, COOL_C = 75.0, 70.0
    schedule: ClassVar[dict[str, Every]] = {
        "brightness": Every(fast=True, change=0),
        "input": Every(fast=True, change=0),
        "input_signal": Every(fast=True, change=0),
        "blackout": Every(fast=True, change=0),
        "temperature": Every(fast=True, change=0.5),
        "fault": Every(fast=True, change=0),
        "fault_code": Every(fast=True, change=0),
    }
    faults = (
        FaultDef("fault", "a hardware fault code (1 receiving card, 3 power supply, 4 fan, "
                 "5 output port link; 2 over-temperature comes by itself)",
                 {"code": (int, "1-5", 1)}),
        FaultDef("signal_loss", "the source on the selected input goes away"),
    )  # fmt: skip

    @dataclass
    class Params:
        brightness_pct: float = 80.0
        input: int = 1
        blackout: bool = False
        ambient_c: float = 25.0
        thermal_tau_s: float = 300.0
        lock_s: float = 0.8

    def __init__(self, params: Params, rng: random.Random, t: float) -> None:
        super().__init__(params, rng, t)
        self.p: LedWallProcessor.Params = params
        self.brightness = params.brightness_pct
        self.input = params.input
        self.blackout = params.blackout
        self.locking = 0.0
        self.hot = False
        self.temperature = self.target()

    def target(self) -> float:
        drive = 0.0 if self.blackout else self.brightness / 100.0
        rise = 10.0 + 45.0 * drive
        fault = self.active.get("fault")
        if fault is not None and fault["code"] == 4:
            rise *= 1.6  # no fan
        return self.p.ambient_c + rise

    def fault_code(self) -> int:
        fault = self.active.get("fault")
        if fault is not None:
            return int(fault["code"])
        return 2 if self.hot else 0

    def step(self, dt: float, t: float) -> None:
        self.locking = max(0.0, self.locking - dt)
        self.temperature = clamp(
            first_order(self.temperature, self.target(), self.p.thermal_tau_s, dt), -20, 100
        )
        if self.temperature >= self.HOT_C:
            self.hot = True
        elif self.temperature < self.COOL_C:
            self.hot = False

    def output_pct(self) -> float:
        """Light actually sent to the wall: derated while over-temperature."""
        if self.blackout:
            return 0.0
        return self.brightness * (0.5 if self.hot else 1.0)

    def values(self) -> dict[str, Scalar]:
        code = self.fault_code()
        return {
            "brightness": round(self.brightness, 2),
            "input": self.input,
            "input_signal": self.locking == 0 and "signal_loss" not in self.active,
            "blackout": self.blackout,
            "temperature": round(self.temperature, 1),
            "fault": code != 0,
            "fault_code": code,
        }

    def truth(self) -> dict[str, Any]:
        return {**self.values(), "temperature": self.temperature, "output": self.output_pct()}

    def command(self, name: str, args: Mapping[str, Any]) -> list[list[Scalar]]:
        if name == "set_brightness":
            only(args, "level")
            self.brightness = arg(args, "level", float, 0.0, 100.0)
            return [["brightness", self.brightness]]
        if name == "select_input":
            only(args, "input")
            new = arg(args, "input", int, 1, 4)
            if new != self.input:
                self.input, self.locking = new, self.p.lock_s
            return [["input", new]]
        if name == "set_blackout":
            only(args, "on")
            self.blackout = arg(args, "on", bool)
            return [["blackout", self.blackout]]
        return super().command(name, args)

    def inject(self, fault: str, params: dict[str, Any]) -> None:
        if fault == "fault" and not 1 <= params["code"] <= 5:
            raise FaultError(f"{self.name}: fault: code must be 1 to 5")
        super().inject(fault, params)


MODELS: dict[str, type[Model]] = {
    m.name: m
    for m in (
        LoadCell,
        TempHumidity,
        SplMeter,
        PeopleCounter,
        PowerMeter,
        WirelessMicReceiver,
        PowerAmplifier,
        Projector,
        MediaServer,
        LedWallProcessor,
        Shelly3em,
        ShellyHt,
    )
}
