"""Fault early-warning against the simulated drive's physics, in simulated time (no sockets):
each slow degradation is warned of before the drive faults; a healthy axis never warns; bad
readings are ignored, never raised on."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.model import Device, ModbusTcpTransport, Quality, Reading, find_profile, load_profile
from edge.early_warning import (
    DriftWarning,
    EarlyWarning,
    EarlyWarningSettings,
    MachineWatch,
    ModelSettings,
    models_for,
)
from simulators.core import DeviceSpec, FaultError
from simulators.machinery import MachineDevice, MachineryFamily
from simulators.machinery.registers import (
    CW_ENABLE,
    CW_RUN,
    FAULT_BRAKE,
    FAULT_DRIVE_TRIP,
    REG_CONTROL,
    REG_HEARTBEAT,
    REG_SPEED,
    REG_TARGET,
    SW_BRAKE_RELEASED,
    SW_ENABLED,
    i32,
)

DT = 0.01
POLL = 5  # cycles: a 20 Hz poll


def sim(**simulate: Any) -> MachineDevice:
    transport = {"kind": "modbus-tcp", "host": "127.0.0.1", "port": 15020, "unit": 1}
    spec = DeviceSpec("hoist-1", "hoist", transport, {"model": "hoist", **simulate}, "v.toml")
    dev = MachineryFamily({}).add(spec)
    assert isinstance(dev, MachineDevice)
    return dev


class Rig:
    """A master in simulated time moving the hoist back and forth, polling it at 20 Hz."""

    def __init__(self, dev: MachineDevice, watch: MachineWatch) -> None:
        self.dev, self.drive, self.watch = dev, dev.drive, watch
        self.t, self.hb, self.n = 1000.0, 0, 0
        self.warnings: list[DriftWarning] = []
        self.fault_at: float | None = None

    def poll(self) -> None:
        d = self.drive
        sw = d.status_word()
        values = {
            "velocity": round(d.velocity, 1),
            "load": round(d.load_kg(), 1),
            "enabled": bool(sw & SW_ENABLED),
            "brake_released": bool(sw & SW_BRAKE_RELEASED),
            "fault_code": d.fault,
            "motor_current": round(d.current, 1),
            "motor_temperature": round(d.temperature, 1),
        }
        for point, v in values.items():
            self.warnings += self.watch.observe(point, v, self.t, True)
        if d.fault and self.fault_at is None:
            self.fault_at = self.t

    def run(self, seconds: float) -> None:
        end = self.t + seconds
        while self.t < end - 1e-9:
            if self.n % POLL == 0:
                self.hb += 1
                self.drive.write(REG_HEARTBEAT, [self.hb], self.t)
                self.poll()
            self.drive.step(self.t, DT)
            self.t += DT
            self.n += 1

    def move(self, target: float, speed: int = 1000) -> None:
        d = self.drive
        d.write(REG_SPEED, [speed, 1000], self.t)
        d.write(REG_TARGET, list(i32(target / d.kind.position_scale)), self.t)
        d.write(REG_CONTROL, [CW_ENABLE | CW_RUN], self.t)
        for _ in range(400):  # at most 20 s
            self.run(0.05)
            if d.fault or (abs(d.measured - target) < 1 and not d.moving and d.brake_open):
                break
        d.write(REG_CONTROL, [0], self.t)
        self.run(0.5)  # parks on its brake

    def cycles(self, n: int, stop_on_fault: bool = True) -> None:
        for i in range(n):
            self.move(3000.0 if i % 2 == 0 else 1000.0, speed=600 + 300 * (i % 3))
            if stop_on_fault and self.drive.fault:
                return


def rig(**simulate: Any) -> Rig:
    dev = sim(start_position_mm=1000, **simulate)
    models = ["motor_current", "temperature_rise", "brake_release"]
    return Rig(dev, MachineWatch("hoist-1", models, EarlyWarningSettings()))  # type: ignore[arg-type]


def first(warnings: list[DriftWarning], model: str) -> DriftWarning:
    found = [w for w in warnings if w.model == model and w.active]
    assert found, f"no {model} warning: {warnings}"
    return found[0]


def test_a_healthy_hoist_learns_every_model_and_never_warns() -> None:
    r = rig(thermal_tau_s=60)
    r.cycles(16)
    assert all(f.watching for f in r.watch.fits.values()), {
        k: f.state() for k, f in r.watch.fits.items()
    }
    r.cycles(16)
    assert r.warnings == [] and r.drive.fault == 0
    fit = r.watch.fits["motor_current"]
    assert fit.coef is not None and fit.coef[2] > 0  # current grows with load × speed


@pytest.mark.parametrize(
    ("fault", "params", "model", "code"),
    [
        ("bearing_wear", {"rate_n_s": 300}, "motor_current", FAULT_DRIVE_TRIP),
        ("motor_cooling", {"rate_s": 0.05}, "temperature_rise", FAULT_DRIVE_TRIP),
        ("brake_wear", {"rate_ms_s": 15}, "brake_release", FAULT_BRAKE),
    ],
)
def test_each_degradation_is_warned_of_before_the_drive_faults(
    fault: str, params: dict[str, float], model: str, code: int
) -> None:
    r = rig(thermal_tau_s=20)
    r.cycles(16)
    assert all(f.watching for f in r.watch.fits.values())
    injected = r.t
    r.dev.inject(fault, params)
    r.cycles(200)
    assert r.drive.fault == code, r.drive.truth()
    assert r.fault_at is not None
    warned = first(r.warnings, model)
    lead = r.fault_at - warned.ts
    print(f"{fault}: warned {warned.ts - injected:.1f} s after injection, {lead:.1f} s before")
    assert warned.ts < r.fault_at and lead > 2.0
    assert warned.residual > 0 and warned.statistic > warned.threshold
    # the other models stayed quiet until the warned one had warned
    others = [w for w in r.warnings if w.model != model and w.ts < warned.ts]
    assert others == []


def test_a_cleared_degradation_replaces_the_part_and_the_warning_clears() -> None:
    r = rig()
    r.cycles(12)
    r.dev.inject("bearing_wear", {"rate_n_s": 200})
    r.run(2.0)  # the friction grows while the axis stands
    r.cycles(2)
    first(r.warnings, "motor_current")
    r.dev.clear("bearing_wear")
    assert r.drive.injected.friction_n == 0.0
    r.cycles(6)
    cleared = [w for w in r.warnings if w.model == "motor_current" and not w.active]
    assert cleared and not r.watch.fits["motor_current"].active


@pytest.mark.parametrize(
    ("fault", "params", "error"),
    [
        ("bearing_wear", {"rate_n_s": -1}, "0..1e6"),
        ("bearing_wear", {"rate_n_s": math.inf}, "finite"),
        ("motor_cooling", {"rate_s": "fast"}, "finite"),
        ("brake_wear", {"rate": 5}, "unknown parameter"),
        ("brake_wear", {"rate_ms_s": True}, "finite"),
    ],
)
def test_bad_degradation_parameters_are_refused(
    fault: str, params: dict[str, Any], error: str
) -> None:
    dev = sim()
    with pytest.raises(FaultError, match=error):
        dev.inject(fault, params)
    assert dev.active_faults() == {} and not dev.drive.injected.degrading()


def test_degradations_are_in_the_catalogue_with_their_rate() -> None:
    faults = {f.name: f for f in sim().fault_catalogue()}
    assert "rate_n_s" in faults["bearing_wear"].params
    assert "rate_s" in faults["motor_cooling"].params
    assert "rate_ms_s" in faults["brake_wear"].params
    dev = sim()
    dev.inject("brake_wear", {})
    assert dev.active_faults() == {"brake_wear": {"rate_ms_s": 5.0}}
    assert dev.truth()["wear"]["brake_delay_ms"] == 0.0


def hoist_device() -> Device:
    profile = load_profile(find_profile("hoist"))
    transport = ModbusTcpTransport(kind="modbus-tcp", host="127.0.0.1")
    return Device("hoist-1", profile, transport, 20.0)


def test_models_follow_the_profile_points() -> None:
    assert models_for(hoist_device()) == ["motor_current", "temperature_rise", "brake_release"]
    ew = EarlyWarning([hoist_device()])
    assert set(ew.status()["devices"]["hoist-1"]) == {
        "motor_current",
        "temperature_rise",
        "brake_release",
    }


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "velocity",
                    "load",
                    "enabled",
                    "brake_released",
                    "fault_code",
                    "motor_current",
                    "motor_temperature",
                    "position",
                    "unknown",
                ]
            ),
            values,
            st.floats(-1e12, 1e12, allow_nan=False),
            st.sampled_from(list(Quality)),
        ),
        max_size=80,
    )
)
def test_hostile_readings_never_raise(rows: list[tuple[str, Any, float, Quality]]) -> None:
    tiny = ModelSettings(min_samples=2, h=1.0)
    s = EarlyWarningSettings(motor_current=tiny, temperature_rise=tiny, brake_release=tiny)
    ew = EarlyWarning([hoist_device()], s)
    for point, v, ts, q in rows:
        ew.observe(Reading("hoist-1", point, v, 0.0, ts, q))
        ew.observe(Reading("ghost", point, v, 0.0, ts, q))
    status = ew.status()
    assert all(math.isfinite(f["cusum"]) for f in status["devices"]["hoist-1"].values())


def test_on_warning_errors_do_not_stop_the_watch() -> None:
    calls: list[DriftWarning] = []

    def broken(w: DriftWarning) -> None:
        calls.append(w)
        raise RuntimeError("consumer down")

    s = EarlyWarningSettings(brake_release=ModelSettings(min_samples=3, h=2.0, min_sigma=0.01))
    ew = EarlyWarning([hoist_device()], s, on_warning=broken)
    t = 0.0
    for release in [0.1, 0.1, 0.1, 0.1, 0.5, 0.5]:
        for point, v, dt in [("enabled", True, 0.0), ("brake_released", True, release)]:
            ew.observe(Reading("hoist-1", point, v, 0.0, t + dt))
        for point in ("enabled", "brake_released"):
            ew.observe(Reading("hoist-1", point, False, 0.0, t + 1))
        t += 2
    assert len(calls) == 1 and calls[0].model == "brake_release"
    assert [w.model for w in ew.active()] == ["brake_release"]
    ew.relearn("hoist-1")
    assert ew.active() == [] and ew.status()["devices"]["hoist-1"]["brake_release"]["state"] == (
        "learning"
    )


async def test_warnings_are_raised_and_cleared_as_alarms(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from edge.alarms import AlarmEngine, AlarmStore
    from edge.config import AlarmsConfig
    from edge.maintenance import warning_to_alarm

    store = AlarmStore(tmp_path / "alarms.sqlite3")
    await store.open()
    try:
        engine = AlarmEngine(AlarmsConfig(defaults=False), [hoist_device()], store)
        service = SimpleNamespace(alarms=None)
        bridge = warning_to_alarm(service)
        w = DriftWarning("hoist-1", "motor_current", True, 1.0, 9.0, 8.0, 0.7, 0.1, "drifting")
        bridge(w)  # no engine yet: nothing happens, nothing raises
        service.alarms = engine
        bridge(w)
        (alarm,) = engine.active()
        assert alarm["device"] == "hoist-1" and alarm["point"] == "motor_current"
        assert alarm["severity"] == "warning" and "drifting" in alarm["message"]
        bridge(DriftWarning("hoist-1", "motor_current", False, 2.0, 0, 8, -0.1, 0.1, "normal"))
        assert all(not a["active"] for a in engine.active(include_inactive=True))
    finally:
        await store.close()


def test_a_brake_released_within_one_poll_counts_whichever_bit_is_read_first() -> None:
    watch = MachineWatch("hoist-1", ["brake_release"], EarlyWarningSettings())
    fit = watch.fits["brake_release"]
    t = 100.0
    for first in ("enabled", "brake_released"):  # both rise in one poll, either order
        second = "brake_released" if first == "enabled" else "enabled"
        watch.observe(first, 1, t, True)
        watch.observe(second, 1, t, True)
        t += 1.0
        watch.observe("enabled", 0, t, True)
        watch.observe("brake_released", 0, t, True)
        t += 1.0
    watch.observe("enabled", 1, t, True)  # and one a poll apart
    watch.observe("brake_released", 1, t + 0.05, True)
    assert fit.y == [0.0, 0.0, pytest.approx(0.05)]
