"""The hoist simulator's drive behaviour, stepped in simulated time (no sockets, no clock)."""

from __future__ import annotations

from simulators.hoist import (
    CW_ENABLE,
    CW_QUICK_STOP,
    CW_RESET,
    CW_RUN,
    CW_STOP,
    FAULT_NONE,
    FAULT_WATCHDOG,
    REG_CONTROL,
    REG_HEARTBEAT,
    REG_TARGET,
    SW_FAULT,
    SW_IN_POSITION,
    SW_MOVING,
    HoistAxis,
    HoistParams,
    HoistRegisters,
)

DT = 0.01


def run(axis: HoistAxis, seconds: float, t0: float = 0.0, heartbeat: bool = True) -> float:
    t = t0
    hb = axis.heartbeat
    while t < t0 + seconds:
        if heartbeat:
            hb = (hb + 1) & 0xFFFF
            axis.write_heartbeat(hb, t)
        axis.step(DT, t)
        t += DT
    return t


def test_moves_to_target_without_overshoot() -> None:
    axis = HoistAxis(HoistParams(start_position_mm=2000))
    axis.target, axis.speed_limit, axis.accel_limit = 3000.0, 1000.0, 500.0
    axis.write_control(CW_ENABLE | CW_RUN)
    t, peak = 0.0, 0.0
    while t < 5:
        t = run(axis, DT, t)
        peak = max(peak, axis.position)
        assert abs(axis.velocity) <= 1000.0 + 1e-9
    assert axis.position == 3000.0 and axis.velocity == 0.0
    assert peak <= 3000.0
    assert axis.status_word(t) & SW_IN_POSITION


def test_does_not_move_without_enable() -> None:
    axis = HoistAxis(HoistParams(start_position_mm=2000))
    axis.target = 5000.0
    axis.write_control(CW_RUN)
    run(axis, 2)
    assert axis.position == 2000.0


def test_does_not_move_without_heartbeat_and_faults() -> None:
    axis = HoistAxis(HoistParams(start_position_mm=2000))
    axis.target = 5000.0
    axis.write_control(CW_ENABLE | CW_RUN)
    t = run(axis, 1, heartbeat=False)
    assert axis.position == 2000.0
    assert axis.fault == FAULT_WATCHDOG
    assert axis.status_word(t) & SW_FAULT


def test_stale_heartbeat_mid_move_stops_the_axis() -> None:
    axis = HoistAxis(HoistParams(start_position_mm=0))
    axis.target, axis.speed_limit, axis.accel_limit = 10000.0, 1500.0, 2000.0
    axis.write_control(CW_ENABLE | CW_RUN)
    t = run(axis, 2)
    assert axis.moving
    t = run(axis, 0.19, t, heartbeat=False)  # inside the 200 ms watchdog: keeps going
    assert axis.fault == FAULT_NONE and axis.moving
    t = run(axis, 1.5, t, heartbeat=False)
    assert axis.fault == FAULT_WATCHDOG
    assert not axis.moving and not axis.status_word(t) & SW_MOVING
    stopped_at = axis.position
    run(axis, 1, t, heartbeat=False)
    assert axis.position == stopped_at


def test_every_reset_write_is_a_reset_request() -> None:
    axis = HoistAxis()
    axis.fault = FAULT_WATCHDOG
    axis.write_control(CW_RESET)
    assert axis.fault == FAULT_NONE
    axis.fault = FAULT_WATCHDOG
    axis.write_control(CW_RESET)  # the same word again still resets
    assert axis.fault == FAULT_NONE
    axis.estop = True
    axis.fault = FAULT_WATCHDOG
    axis.write_control(CW_RESET)  # not while the e-stop input is active
    assert axis.fault == FAULT_WATCHDOG


def test_quick_stop_overrides_run() -> None:
    axis = HoistAxis(HoistParams(start_position_mm=0))
    axis.target, axis.speed_limit, axis.accel_limit = 10000.0, 1500.0, 500.0
    axis.write_control(CW_ENABLE | CW_RUN)
    t = run(axis, 3)
    axis.write_control(CW_ENABLE | CW_RUN | CW_QUICK_STOP)
    run(axis, 0.6, t)  # 1500 mm/s at the 3000 mm/s² quick-stop rate: 0.5 s
    assert not axis.moving


def test_controlled_stop() -> None:
    axis = HoistAxis(HoistParams(start_position_mm=0))
    axis.target, axis.speed_limit, axis.accel_limit = 10000.0, 1000.0, 1000.0
    axis.write_control(CW_ENABLE | CW_RUN)
    t = run(axis, 2)
    axis.write_control(CW_ENABLE | CW_STOP)
    t = run(axis, 1.2, t)  # 1000 mm/s at 1000 mm/s² stops in 1 s
    assert not axis.moving
    assert axis.position < 10000.0


def test_register_image_follows_the_documented_map() -> None:
    axis = HoistAxis(HoistParams(start_position_mm=1234.5))
    regs = HoistRegisters(axis)
    status = regs.status(0.0)
    assert (status[0] << 16 | status[1]) == 12345  # int32, 0.1 mm, high word first
    regs.write(REG_TARGET, [0, 50000], 0.0)  # 5000.0 mm
    assert axis.target == 5000.0
    regs.write(REG_TARGET, [0xFFFF, 0xFFF6], 0.0)  # -1.0 mm (drive takes it; travel ends at 0)
    assert axis.target == -1.0
    regs.write(REG_HEARTBEAT, [7], 1.0)
    assert axis.heartbeat == 7 and axis.heartbeat_at == 1.0
    regs.write(REG_CONTROL, [CW_ENABLE], 1.0)
    assert axis.enabled
