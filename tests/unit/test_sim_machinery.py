"""Machinery simulators without sockets: motion physics, drive behaviour, faults, venue specs."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from simulators.core import DeviceSpec, FaultError, SimulationError
from simulators.machinery import MachineDevice, MachineryFamily
from simulators.machinery import physics as ph
from simulators.machinery.drive import AxisParams, Drive
from simulators.machinery.models import TYPES
from simulators.machinery.registers import (
    CW_ENABLE,
    CW_RESET,
    CW_RUN,
    FAULT_BRAKE,
    FAULT_DRIVE_TRIP,
    FAULT_ENCODER,
    FAULT_ESTOP,
    FAULT_HARD_LIMIT,
    FAULT_NONE,
    FAULT_OVERLOAD,
    FAULT_SLACK_ROPE,
    FAULT_WATCHDOG,
    REG_CONTROL,
    REG_HEARTBEAT,
    REG_SPEED,
    REG_TARGET,
    REG_WATCHDOG,
    SETTINGS_START,
    SW_BRAKE_RELEASED,
    SW_ESTOP,
    SW_READY,
    i16,
    i32,
    to_i16,
    to_i32,
    u32,
)

DT = 0.01

# --- physics ------------------------------------------------------------------------------------

limits = st.builds(
    ph.Limits,
    speed=st.floats(100, 2000),
    accel=st.floats(50, 3000),
    jerk=st.one_of(st.just(0.0), st.floats(200, 100_000)),
)


def run_to(goal: float, lim: ph.Limits, start: float = 0.0) -> dict[str, float]:
    """Run from rest to ``goal``; the worst excursions seen on the way."""
    p, v, a = start, 0.0, 0.0
    sign = 1.0 if goal >= start else -1.0
    out = {"overshoot": 0.0, "v": 0.0, "a": 0.0, "j": 0.0, "t": 0.0}
    # the jerk-limited cruise keeps a margin of at most amax*dt/8 below the speed limit
    cruise = lim.speed - (lim.accel * DT / 8 if lim.jerk else 0)
    budget = abs(goal - start) / cruise + 2 * lim.speed / lim.accel + 5
    if lim.jerk:
        budget += 4 * lim.accel / lim.jerk
    while out["t"] < budget:
        m = ph.run_step(p, v, a, goal, lim, DT, 0.1)
        out["j"] = max(out["j"], abs(m.accel - a) / DT)
        p, v, a = m.position, m.velocity, m.accel
        out["overshoot"] = max(out["overshoot"], (p - goal) * sign)
        out["v"], out["a"] = max(out["v"], abs(v)), max(out["a"], abs(a))
        out["t"] += DT
        if m.settled:
            out["end"] = p
            return out
    pytest.fail(f"did not reach {goal} within {budget:.1f} s: at {p}, v {v}, a {a}")


@settings(max_examples=60, deadline=None)
@given(goal=st.floats(-3000, 3000), lim=limits)
def test_a_run_reaches_its_goal_within_its_limits_without_overshoot(
    goal: float, lim: ph.Limits
) -> None:
    seen = run_to(goal, lim)
    assert seen["end"] == goal
    assert seen["overshoot"] <= 0.1  # the settle tolerance: the axis never passes the goal
    assert seen["v"] <= lim.speed * (1 + 1e-9)
    assert seen["a"] <= lim.accel * (1 + 1e-9)
    if lim.jerk:
        assert seen["j"] <= lim.jerk * (1 + 1e-6)


def test_trapezoid_matches_the_documented_example() -> None:
    # §10: 2000 -> 3500 mm at 1200 mm/s and 1500 mm/s²: 0.8 s + 0.45 s + 0.8 s.
    seen = run_to(3500, ph.Limits(1200, 1500), start=2000)
    assert seen["t"] == pytest.approx(2.05, abs=0.03)
    assert seen["v"] == pytest.approx(1200)


def test_jerk_limit_gives_an_s_curve_that_takes_a_little_longer() -> None:
    plain = run_to(3500, ph.Limits(1200, 1500), start=2000)
    s_curve = run_to(3500, ph.Limits(1200, 1500, 5000), start=2000)
    assert s_curve["j"] <= 5000 * (1 + 1e-6) < plain["j"]
    # Each of the four acceleration corners costs half a ramp time (1500/5000 s): ~0.3 s.
    assert plain["t"] < s_curve["t"] < plain["t"] + 0.5


@settings(max_examples=100, deadline=None)
@given(
    v=st.floats(-2000, 2000),
    decel=st.floats(100, 4000),
    jerk=st.one_of(st.just(0.0), st.floats(1000, 100_000)),
)
def test_a_stop_ends_at_standstill_in_time(v: float, decel: float, jerk: float) -> None:
    p, vel, a, t = 0.0, v, 0.0, 0.0
    expected = abs(v) / decel + (2 * decel / jerk if jerk else 0) + 2 * DT
    while vel != 0.0 or a != 0.0:
        m = ph.stop_step(p, vel, a, decel, jerk, DT)
        assert abs(m.velocity) <= abs(vel) + 1e-9  # never speeds up
        assert m.velocity * v >= 0  # never reverses
        p, vel, a, t = m.position, m.velocity, m.accel, t + DT
        assert t <= expected + DT
    assert p * v >= 0


@given(v=st.floats(0, 2000), a=st.floats(-3000, 3000), jerk=st.floats(100, 1e5))
def test_stop_distance_is_never_shorter_than_the_plain_ramp(
    v: float, a: float, jerk: float
) -> None:
    # With a jerk limit, braking can only take longer than with an instant deceleration,
    # unless the axis already brakes (a < 0).
    if a >= 0:
        assert ph.stop_distance(v, a, 2000, jerk) >= v * v / 4000 - 1e-6


@given(
    angle=st.floats(-1e5, 1e5),
    raw_target=st.integers(0, 35999),
    direction=st.sampled_from([0, 1, 2]),
)
@example(angle=-2.3645363484688672e-57, raw_target=0, direction=2)  # on target: no full turn
def test_rotary_goal_reaches_the_target_angle_the_way_it_was_told(
    angle: float, raw_target: int, direction: int
) -> None:
    target = raw_target / 100  # register 100-101 in 0.01°
    goal = ph.rotary_goal(angle, target, direction)
    assert ph.angular_distance(ph.wrap(goal), target) <= 1e-6
    delta = goal - angle
    if direction == ph.CLOCKWISE:
        assert 0 <= delta < 360
    elif direction == ph.ANTICLOCKWISE:
        assert -360 < delta <= 0
    else:
        assert -180 < delta <= 180 + 1e-9


def test_rotary_shortest_way_ties_go_clockwise() -> None:
    assert ph.rotary_goal(0.0, 180.0, ph.SHORTEST) == 180.0
    assert ph.rotary_goal(350.0, 10.0, ph.SHORTEST) == 370.0  # across 0, clockwise
    assert ph.rotary_goal(10.0, 350.0, ph.SHORTEST) == -10.0
    assert ph.rotary_goal(10.0, 350.0, ph.CLOCKWISE) == 350.0
    assert ph.wrap(-0.0) == 0.0 and ph.wrap(720.5) == 0.5


@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_register_encodings_round_trip_or_saturate(value: float) -> None:
    hi, lo = i32(value)
    raw = to_i32(hi, lo)
    if math.isfinite(value) and abs(value) < 2**31 - 1:
        assert raw == round(value)
    assert -(2**31) <= raw < 2**31
    assert 0 <= i16(value) <= 0xFFFF and -32768 <= to_i16(i16(value)) <= 32767
    assert all(0 <= w <= 0xFFFF for w in u32(value))


# --- the drive ----------------------------------------------------------------------------------


def make(model: str = "hoist", **params: Any) -> Drive:
    kind = TYPES[model]
    return Drive(AxisParams(**{**kind.DEFAULTS, **params}), kind({}))


class Master:
    """A master in simulated time: heartbeat every 50 ms, the drive's 10 ms cycle."""

    def __init__(self, drive: Drive) -> None:
        self.drive, self.t, self.hb = drive, 0.0, 0

    def run(self, seconds: float, heartbeat: bool = True) -> None:
        end = self.t + seconds
        while self.t < end - 1e-9:
            if heartbeat and round(self.t / DT) % 5 == 0:
                self.hb += 1
                self.drive.write(REG_HEARTBEAT, [self.hb], self.t)
            self.drive.step(self.t, DT)
            self.t += DT

    def move(self, target: float, speed: int, accel: int) -> None:
        scale = self.drive.kind.position_scale
        self.drive.write(REG_SPEED, [speed, accel], self.t)
        self.drive.write(REG_TARGET, list(i32(target / scale)), self.t)
        self.drive.write(REG_CONTROL, [CW_ENABLE | CW_RUN], self.t)

    def word(self, value: int) -> None:
        self.drive.write(REG_CONTROL, [value], self.t)


def test_watchdog_stops_the_axis_within_watchdog_plus_a_cycle() -> None:
    drive = make(start_position=0)
    m = Master(drive)
    m.run(0.2)
    m.move(10000, 1500, 2000)
    m.run(2)
    last_beat = m.t - DT * (round(m.t / DT) % 5)
    m.run(0.5, heartbeat=False)
    assert drive.fault == FAULT_WATCHDOG
    # the fault followed the last heartbeat by at most the watchdog plus one cycle
    assert drive.status_word() & SW_READY == 0
    assert last_beat + 0.2 + DT >= m.t - 0.5 - DT
    m.run(1, heartbeat=False)
    assert not drive.moving


def test_brake_opens_before_the_axis_moves_and_closes_after_it_stops() -> None:
    drive = make(start_position=1000, brake_release_ms=300, brake_engage_ms=200)
    m = Master(drive)
    m.run(0.1)
    m.move(2000, 500, 500)
    m.run(0.25)
    assert drive.position == 1000 and not drive.status_word() & SW_BRAKE_RELEASED
    m.run(0.1)
    assert drive.brake_open
    m.run(4)
    assert drive.position == 2000
    m.word(0)
    m.run(0.15)
    assert drive.brake_open  # still closing
    m.run(0.1)
    assert not drive.brake_open and drive.current == 0


def test_estop_latches_fault_8_and_refuses_reset_until_closed() -> None:
    drive = make(start_position=0)
    m = Master(drive)
    m.run(0.1)
    m.move(5000, 1000, 1000)
    m.run(1)
    drive.injected.estop = True
    m.run(1)
    assert drive.fault == FAULT_ESTOP and not drive.moving
    assert drive.status_word() & SW_ESTOP and not drive.status_word() & SW_READY
    m.word(CW_RESET)
    assert drive.fault == FAULT_ESTOP
    drive.injected.estop = False
    m.run(0.1)
    assert drive.fault == FAULT_ESTOP  # latched until reset
    m.word(CW_RESET)
    assert drive.fault == FAULT_NONE


@pytest.mark.parametrize(
    ("cause", "code"),
    [
        ("trip", FAULT_DRIVE_TRIP),
        ("encoder_lost", FAULT_ENCODER),
        ("slack", FAULT_SLACK_ROPE),
        ("overload", FAULT_OVERLOAD),
    ],
)
def test_injected_causes_latch_their_fault_until_reset(cause: str, code: int) -> None:
    drive = make(start_position=2000)
    m = Master(drive)
    m.run(0.1)
    m.move(8000, 1000, 1000)
    m.run(1)
    if cause == "encoder_lost":
        drive.freeze_encoder(True)
    elif cause == "overload":
        drive.injected.extra_load_kg = 500
    else:
        setattr(drive.injected, cause, True)
    m.run(1.5)
    assert drive.fault == code and not drive.moving
    m.word(CW_RESET)
    m.run(0.05)
    assert drive.fault == code  # the cause is still there: latched again
    if cause == "encoder_lost":
        drive.freeze_encoder(False)
    elif cause == "overload":
        drive.injected.extra_load_kg = 0
    else:
        setattr(drive.injected, cause, False)
    m.run(0.05)
    m.word(CW_RESET)
    m.run(0.05)
    assert drive.fault == FAULT_NONE


def test_brake_faults() -> None:
    drive = make(start_position=2000)
    drive.injected.brake = "no_release"
    m = Master(drive)
    m.run(0.1)
    m.move(3000, 500, 500)
    m.run(1)
    assert drive.fault == FAULT_BRAKE and drive.position == 2000
    slip = make(start_position=2000)
    slip.injected.brake = "slip"
    Master(slip).run(1)
    assert slip.fault == FAULT_BRAKE and slip.position < 2000


def test_encoder_jump_moves_the_axis_off_its_true_target() -> None:
    drive = make(start_position=1000)
    drive.injected.encoder_offset = 20.0  # the drive believes it is 20 mm higher
    m = Master(drive)
    m.run(0.1)
    m.move(2000, 500, 500)
    m.run(4)
    assert drive.in_position()
    assert drive.position == pytest.approx(1980)
    assert drive.truth()["reported_position_mm"] == pytest.approx(2000)
    drive.injected.encoder_offset = 500.0  # beyond plausibility
    m.run(0.05)
    assert drive.fault == FAULT_ENCODER


def test_hard_limit_halts_and_latches_fault_3_and_allows_moving_away() -> None:
    drive = make(start_position=11900)
    m = Master(drive)
    m.run(0.1)
    m.move(13000, 500, 500)
    m.run(3)
    assert drive.fault == FAULT_HARD_LIMIT and drive.position == 12050
    assert drive.limit_high()
    m.word(CW_RESET)
    m.move(11000, 500, 500)
    m.run(4)
    assert drive.fault == FAULT_NONE and drive.position == 11000


def test_turntable_wraps_and_counts_revolutions() -> None:
    drive = make("turntable", start_position=350)
    m = Master(drive)
    m.run(0.1)
    drive.write(SETTINGS_START, [1], m.t)  # clockwise
    m.move(10, 3600, 2000)
    m.run(3)
    assert drive.kind.in_position(drive)
    block = drive.status_block()
    assert to_i32(block[0], block[1]) == 1000  # 10.00°
    extras = drive.kind.extras(drive)
    assert to_i32(extras[0], extras[1]) == 1  # one revolution
    assert to_i32(extras[2], extras[3]) == 37000  # 370.00° unwrapped
    drive.write(SETTINGS_START, [2], m.t)  # anticlockwise to 20°: nearly a whole turn back
    m.move(20, 3600, 2000)
    m.run(14)
    assert drive.position == pytest.approx(20, abs=0.01)
    assert drive.kind.extras(drive)[:2] == [0, 0]


def test_stage_lift_runs_only_with_bolts_released() -> None:
    drive = make("stage_lift")  # starts at stage level, bolts engaged
    m = Master(drive)
    m.run(0.1)
    assert drive.kind.extras(drive) == [0b10001, 2]
    m.move(4500, 200, 200)
    m.run(1)
    assert drive.position == 4000
    drive.write(SETTINGS_START, [2], m.t)  # release
    m.run(2.1)
    assert drive.kind.extras(drive) == [0b10010, 0]
    m.run(5)
    assert drive.position == 4500
    drive.write(SETTINGS_START, [1], m.t)  # not at a locking level: ignored
    assert drive.kind.settings(drive) == [0]


def test_fire_curtain_lowers_on_release_and_raises_after() -> None:
    drive = make("fire_curtain")
    m = Master(drive)
    kind: Any = drive.kind
    kind.set_condition(drive, "alarm_release", {})
    m.run(2)
    assert kind.state(drive) == 2 and drive.velocity < 0
    m.run(35)
    assert kind.state(drive) == 3 and drive.position == 0
    assert 15 < kind.last_descent_s < 31
    kind.clear_condition(drive, "alarm_release")
    m.run(1)
    assert kind.state(drive) == 4 and drive.enabled
    assert drive.fault == 0 and not drive.kind.has_commands  # no heartbeat needed


# --- devices, faults and specs ------------------------------------------------------------------


def spec(model: str = "hoist", unit: int = 1, **simulate: Any) -> DeviceSpec:
    transport = {"kind": "modbus-tcp", "host": "127.0.0.1", "port": 15020, "unit": unit}
    return DeviceSpec(f"{model}-{unit}", model, transport, {"model": model, **simulate}, "v.toml")


def device(model: str = "hoist", **simulate: Any) -> MachineDevice:
    dev = MachineryFamily({}).add(spec(model, **simulate))
    assert isinstance(dev, MachineDevice)
    return dev


@pytest.mark.parametrize(
    ("fault", "params", "error"),
    [
        ("melt", {}, "no fault 'melt'"),
        ("overload", {"extra_kg": "lots"}, "finite number"),
        ("overload", {"extra_kg": math.nan}, "finite number"),
        ("overload", {"extra": 3}, "unknown parameter"),
        ("brake_fault", {"mode": "sticky"}, "must be one of"),
        ("exception_response", {"code": 9}, "code must be one of"),
        ("exception_response", {"code": True}, "whole number"),
        ("slow_response", {"delay_ms": -1}, ">= 0"),
        ("comms_loss", {"mode": 1}, "must be one of"),
    ],
)
def test_bad_fault_injections_are_refused(fault: str, params: dict[str, Any], error: str) -> None:
    dev = device()
    with pytest.raises(FaultError, match=error):
        dev.inject(fault, params)
    assert dev.active_faults() == {}


def test_faults_are_listed_per_type() -> None:
    names = {f.name for f in device("hoist").fault_catalogue()}
    expected = {"estop", "overload", "encoder_jump", "slack_rope", "comms_loss", "late_response"}
    assert expected <= names
    assert "slack_rope" not in {f.name for f in device("turntable").fault_catalogue()}
    assert "bumper_contact" in {f.name for f in device("wagon").fault_catalogue()}


def test_inject_and_clear_one_or_all() -> None:
    dev = device()
    dev.inject("overload", {})
    dev.inject("comms_loss", {"mode": "drop"})
    assert dev.active_faults() == {"overload": {"extra_kg": 500.0}, "comms_loss": {"mode": "drop"}}
    assert dev.unit.comms.drop and not dev.truth()["responding"]
    dev.clear("overload")
    assert dev.drive.injected.extra_load_kg == 0 and "comms_loss" in dev.active_faults()
    dev.clear()
    assert dev.active_faults() == {} and not dev.unit.comms.active()


@pytest.mark.parametrize(
    ("specs", "error"),
    [
        ([spec(travel_mm="x")], "expected a number"),
        ([spec(speed=3)], "unknown parameter"),
        ([spec("turntable", travel_mm=10)], "unknown parameter"),
        ([spec(max_speed_mm_s=0)], "max_speed: must be above 0"),
        ([spec(start_position_mm=20000)], "outside the travel"),
        ([spec(), spec("wagon")], "unit 1 is taken twice"),
        ([spec(unit=0)], "unit must be 1..247"),
        ([spec(serial_port="/dev/null")], "only for a modbus-rtu"),
    ],
)
def test_bad_specs_are_refused_with_where(specs: list[DeviceSpec], error: str) -> None:
    family = MachineryFamily({})
    for s in specs[:-1]:
        family.add(s)
    with pytest.raises(SimulationError, match=error) as info:
        family.add(specs[-1])
    assert str(info.value).startswith("v.toml")


def test_rtu_needs_the_simulators_end_of_the_line_and_one_line_setting() -> None:
    family = MachineryFamily({})
    rtu = {"kind": "modbus-rtu", "port": "/dev/ttyA", "unit": 1}
    with pytest.raises(SimulationError, match="serial_port"):
        family.add(DeviceSpec("a", "hoist", rtu, {"model": "hoist"}, "v.toml"))
    family.add(DeviceSpec("a", "hoist", rtu, {"model": "hoist", "serial_port": "/dev/B"}, "v"))
    other = {**rtu, "unit": 2, "baudrate": 9600}
    sim_b = {"model": "hoist", "serial_port": "/dev/B"}
    with pytest.raises(SimulationError, match="disagree on the line settings"):
        family.add(DeviceSpec("b", "hoist", other, sim_b, "v"))


def test_truth_is_json_plain() -> None:
    import json

    for model in TYPES:
        truth = device(model).truth()
        json.dumps(truth)
        assert {"load_kg", "fault", "estop", "brake_released", "current_a"} <= set(truth)


def test_watchdog_time_is_configurable_in_register_106() -> None:
    drive = make(start_position=0)
    m = Master(drive)
    drive.write(REG_WATCHDOG, [1000], m.t)  # 1 s instead of the default 200 ms
    m.run(0.1)
    m.move(10000, 1000, 1000)
    m.run(1)
    m.run(0.6, heartbeat=False)  # beyond 200 ms, inside 1 s: still running
    assert drive.fault == FAULT_NONE and drive.moving
    m.run(0.5, heartbeat=False)
    assert drive.fault == FAULT_WATCHDOG
    assert drive.command_block()[6] == 1000


def test_load_cell_reads_static_plus_dynamic_load() -> None:
    drive = make(start_position=1000, payload_kg=200)
    m = Master(drive)
    m.run(0.3)
    assert drive.load_kg() == pytest.approx(200)  # at rest: the payload
    m.move(8000, 1500, 2000)
    m.run(0.25)  # accelerating upwards at 2000 mm/s²: 200 * (1 + 2/9.81)
    assert drive.accel == pytest.approx(2000)
    assert drive.load_kg() == pytest.approx(200 * (1 + 2 / 9.81))
    m.run(2)
    while drive.accel >= 0:
        m.run(DT)
    assert drive.load_kg() < 200  # braking an upward run: the load cell reads less


def test_motor_current_and_temperature_follow_load_and_duty() -> None:
    light, heavy = make(payload_kg=100), make(payload_kg=450)
    temps: dict[str, float] = {}
    for name, drive in (("light", light), ("heavy", heavy)):
        m = Master(drive)
        m.run(0.2)
        peak_current = 0.0
        for leg in range(6):  # a busy duty cycle: up and down the travel
            m.move(10000 if leg % 2 == 0 else 0, 1500, 2000)
            for _ in range(900):
                m.run(DT)
                peak_current = max(peak_current, drive.current)
        temps[name] = drive.temperature
        assert peak_current > drive.params.holding_current_a
        assert drive.temperature > drive.params.ambient_c
        temps[name + "_current"] = peak_current
    assert temps["heavy_current"] > temps["light_current"]
    assert temps["heavy"] > temps["light"]
    idle = make()
    Master(idle).run(5)
    assert idle.temperature == idle.params.ambient_c and idle.current == 0  # no duty, no heat


def test_quiet_drives_are_stepped_less_but_behave_the_same() -> None:
    drive = make(start_position=500, payload_kg=700)  # above 125 % of 500 kg
    assert drive.quiet()
    for k in range(20):
        drive.idle(k * DT, DT)
    assert drive.fault == FAULT_OVERLOAD  # a static cause still latches while quiet
    busy = make(start_position=500)
    busy.write(REG_CONTROL, [CW_ENABLE], 0.0)
    assert not busy.quiet()
    busy.injected.estop = True
    busy.write(REG_CONTROL, [0], 0.0)
    assert not busy.quiet()
