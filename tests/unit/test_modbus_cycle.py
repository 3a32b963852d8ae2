"""The axis cycle without a network: its map, setpoint checks, the registers a cycle writes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import HealthTracker
from drivers.modbus.cycle import (
    RTT_SAMPLES,
    AxisCycle,
    AxisStatus,
    AxisStopped,
    CycleMap,
    CycleStats,
    Setpoint,
    StopKind,
)
from drivers.modbus.driver import ModbusDeviceDriver
from drivers.model import (
    PROFILE_DIR,
    CommandError,
    Device,
    ModbusRtuTransport,
    ModbusTcpTransport,
    Reading,
    load_profile,
)

FAST = settings(max_examples=300, deadline=None, derandomize=True)
TCP = ModbusTcpTransport(kind="modbus-tcp", host="127.0.0.1", port=1502, unit=1)
AXES = [
    "hoist",
    "chain_hoist",
    "lineshaft_flybar",
    "stage_lift",
    "pit_lift",
    "turntable",
    "wagon",
    "curtain_track",
]


async def _sink(readings: list[Reading]) -> None:
    pass


def make_cycle(profile: str = "hoist", cycle_hz: float = 50.0) -> AxisCycle:
    device = Device("axis", load_profile(PROFILE_DIR / f"{profile}.toml"), TCP, 10.0)
    tracker = HealthTracker("axis", __import__("logging").getLogger("t"))
    return AxisCycle(device, cycle_hz, tracker, _sink)


@pytest.mark.parametrize("profile", AXES)
def test_every_commanded_axis_type_has_a_cycle_map(profile: str) -> None:
    m = make_cycle(profile).map
    assert m.write_start == 100 and [w.address for w in m.write_wires] == [100, 102, 103, 104, 105]
    assert (m.status.start, m.status.count) == (0, 11)
    assert m.status_word_index == 6


def test_the_fire_curtain_has_no_cycle() -> None:
    device = Device("fc", load_profile(PROFILE_DIR / "fire_curtain.toml"), TCP, 10.0)
    with pytest.raises(ValueError, match="has no"):
        CycleMap.from_device(device)


def test_cycle_mode_is_tcp_only_and_needs_a_sane_rate() -> None:
    hoist = load_profile(PROFILE_DIR / "hoist.toml")
    rtu = ModbusRtuTransport(kind="modbus-rtu", port=str(Path("/dev/null")))
    with pytest.raises(ValueError, match="TCP only"):
        ModbusDeviceDriver(Device("a", hoist, rtu, 10.0), _sink, cycle_hz=50)
    for bad in (0.0, -5.0, math.nan, math.inf, 5000.0):
        with pytest.raises(ValueError, match="cycle_hz"):
            make_cycle(cycle_hz=bad)
    assert ModbusDeviceDriver(Device("a", hoist, TCP, 10.0), _sink).cycle is None


def test_stop_kinds_are_the_documented_control_words() -> None:
    assert (StopKind.QUICK, StopKind.CONTROLLED, StopKind.DISABLE) == (16, 5, 0)


def test_the_registers_a_cycle_writes() -> None:
    c = make_cycle()
    assert c._write_block() == (105, [1])  # no setpoint yet: the heartbeat alone
    c.set_setpoint(Setpoint(3500.0, 1200.0, 1500.0))
    assert c._write_block() == (100, [0, 35000, 1200, 1500, 3, 2])
    c.set_setpoint(None)  # hold: the same setpoint, a new heartbeat
    assert c._write_block() == (100, [0, 35000, 1200, 1500, 3, 3])
    c.set_setpoint(Setpoint(-0.0, 1.0, 10.0, control=1))
    assert c._write_block() == (100, [0, 0, 1, 10, 1, 4])
    c._stop_word = int(StopKind.QUICK)  # as stop_axis latches it
    assert c._write_block() == (104, [16, 5])
    with pytest.raises(AxisStopped):
        c.set_setpoint(Setpoint(1000.0, 500.0, 500.0))
    c.set_setpoint(None)  # hold is allowed while stopped
    c.release_stop()
    assert c._write_block() == (105, [6])  # released: no old setpoint comes back
    c._heartbeat = 0xFFFF
    assert c._write_block() == (105, [0])  # the counter wraps


@pytest.mark.parametrize(
    ("setpoint", "message"),
    [
        (Setpoint(12000.5, 500, 500), "target_position 12000.5 is above the maximum 12000"),
        (Setpoint(-1.0, 500, 500), "below the minimum 0"),
        (Setpoint(100.0, 0.5, 500), "speed_limit 0.5 is below the minimum 1"),
        (Setpoint(100.0, 500, 5000), "acceleration 5000 is above the maximum 2000"),
        (Setpoint(math.nan, 500, 500), "not finite"),
        (Setpoint(100.0, math.inf, 500), "not finite"),
        (Setpoint(100.0, 500, 500, control=8), "fault-reset bit"),
        (Setpoint(100.0, 500, 500, control=11), "fault-reset bit"),
        (Setpoint(100.0, 500, 500, control=32), "not in 0...31"),
        (Setpoint(100.0, 500, 500, control=-1), "not in 0...31"),
        (Setpoint(100.0, 500, 500, control=True), "not in 0...31"),
        (Setpoint("100", 500, 500), "is not a number"),  # type: ignore[arg-type]
        (Setpoint(100.0, 500, 500, control=3.0), "not in 0...31"),  # type: ignore[arg-type]
    ],
)
def test_bad_setpoints_are_refused_and_change_nothing(setpoint: Setpoint, message: str) -> None:
    c = make_cycle()
    c.set_setpoint(Setpoint(1000.0, 500.0, 500.0))
    before = c._write_block()[1][:-1]
    with pytest.raises(CommandError, match=message):
        c.set_setpoint(setpoint)
    assert c._write_block()[1][:-1] == before


@FAST
@given(
    target=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers()),
    speed=st.floats(allow_nan=True, allow_infinity=True),
    accel=st.floats(allow_nan=True, allow_infinity=True),
    control=st.integers(-(2**40), 2**40),
)
def test_fuzzed_setpoints_are_written_or_refused(
    target: float, speed: float, accel: float, control: int
) -> None:
    c = make_cycle()
    try:
        c.set_setpoint(Setpoint(target, speed, accel, control))
    except CommandError:
        assert c._write_block() == (105, [1])
        return
    start, regs = c._write_block()
    assert start == 100 and len(regs) == 6 and all(0 <= r <= 0xFFFF for r in regs)
    assert not regs[4] & 8 and 0 <= target <= 12000 and 1 <= speed <= 1500


def test_decoding_a_status_block_and_a_bad_one() -> None:
    c = make_cycle()
    s = c._decode([0, 35000, 0xFFFF, 0xD120, 0, 1800, 587, 0, 9, 20, 0xFF06], 12.5)
    assert (s.good, s.position, s.velocity, s.load) == (True, 3500.0, -1200.0, 180.0)
    assert (s.status_word, s.fault_code, s.heartbeat_echo) == (587, 0, 9)
    assert (s.motor_current, s.motor_temperature, s.received) == (2.0, -25.0, 12.5)
    assert s.ready and s.enabled and s.in_position and s.brake_released and s.watchdog_ok
    assert not (s.moving or s.fault or s.estop)
    short = c._decode([0, 1], 1.0)
    assert not short.good and math.isnan(short.position) and short.error


def test_rtt_statistics_are_a_bounded_ring() -> None:
    stats = CycleStats()
    assert stats.rtt_ms(0.5) is None
    for i in range(3 * RTT_SAMPLES):
        stats.record_rtt(i / 1e6)
    assert len(stats.rtt_s) == RTT_SAMPLES
    assert stats.rtt_ms(0.0) == pytest.approx(2 * RTT_SAMPLES / 1e3)
    assert set(stats.as_dict()) >= {"cycles", "late", "missed", "rtt_p99_ms", "fallback"}


def test_a_failing_status_callback_does_not_stop_the_cycle() -> None:
    c = make_cycle()

    def broken(status: AxisStatus) -> None:
        raise RuntimeError("consumer bug")

    c.on_status = broken
    c._deliver(c._bad(1.0, "x"))
    assert c.latest is not None and c.latest.error == "x"
