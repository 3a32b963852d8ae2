"""The reference hoist drive's behaviour, stepped in simulated time (no sockets, no clock).

Ported to ``simulators.machinery``: the same scenarios as the v1 reference drive, now through
the register interface a master uses (``Drive.write``), with the brake's release delay.
"""

from __future__ import annotations

from simulators.machinery.drive import AxisParams, Drive
from simulators.machinery.models import Hoist
from simulators.machinery.registers import (
    CW_ENABLE,
    CW_QUICK_STOP,
    CW_RESET,
    CW_RUN,
    CW_STOP,
    FAULT_NONE,
    FAULT_WATCHDOG,
    REG_ACCEL,
    REG_CONTROL,
    REG_HEARTBEAT,
    REG_SPEED,
    REG_TARGET,
    SW_FAULT,
    SW_IN_POSITION,
    SW_MOVING,
    i32,
    to_i32,
)

DT = 0.01


def hoist(start: float = 0.0) -> Drive:
    return Drive(AxisParams(start_position=start), Hoist({}))


class Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.hb = 0

    def run(self, drive: Drive, seconds: float, heartbeat: bool = True) -> None:
        end = self.t + seconds
        while self.t < end - 1e-9:
            if heartbeat:
                self.hb = (self.hb + 1) & 0xFFFF
                drive.write(REG_HEARTBEAT, [self.hb], self.t)
            drive.step(self.t, DT)
            self.t += DT


def command(drive: Drive, clock: Clock, target: float, speed: int, accel: int, word: int) -> None:
    drive.write(REG_SPEED, [speed, accel], clock.t)
    drive.write(REG_TARGET, list(i32(target * 10)), clock.t)
    drive.write(REG_CONTROL, [word], clock.t)


def test_moves_to_target_without_overshoot() -> None:
    drive, clock = hoist(2000), Clock()
    clock.run(drive, 0.1)
    command(drive, clock, 3000, 1000, 500, CW_ENABLE | CW_RUN)
    peak = 0.0
    while clock.t < 6:
        clock.run(drive, DT)
        peak = max(peak, drive.position)
        assert abs(drive.velocity) <= 1000.0 + 1e-9
    assert drive.position == 3000.0 and drive.velocity == 0.0
    assert peak <= 3000.0
    assert drive.status_word() & SW_IN_POSITION


def test_does_not_move_without_enable() -> None:
    drive, clock = hoist(2000), Clock()
    command(drive, clock, 5000, 500, 500, CW_RUN)
    clock.run(drive, 2)
    assert drive.position == 2000.0


def test_does_not_move_without_heartbeat_and_faults() -> None:
    drive, clock = hoist(2000), Clock()
    command(drive, clock, 5000, 500, 500, CW_ENABLE | CW_RUN)
    clock.run(drive, 1, heartbeat=False)
    assert drive.position == 2000.0
    assert drive.fault == FAULT_WATCHDOG
    assert drive.status_word() & SW_FAULT


def test_stale_heartbeat_mid_move_stops_the_axis() -> None:
    drive, clock = hoist(0), Clock()
    clock.run(drive, 0.1)
    command(drive, clock, 10000, 1500, 2000, CW_ENABLE | CW_RUN)
    clock.run(drive, 2)
    assert drive.moving
    clock.run(drive, 0.19, heartbeat=False)  # inside the 200 ms watchdog: keeps going
    assert drive.fault == FAULT_NONE and drive.moving
    clock.run(drive, 1.5, heartbeat=False)
    assert drive.fault == FAULT_WATCHDOG
    assert not drive.moving and not drive.status_word() & SW_MOVING
    stopped_at = drive.position
    clock.run(drive, 1, heartbeat=False)
    assert drive.position == stopped_at


def test_every_reset_write_is_a_reset_request() -> None:
    drive, clock = hoist(), Clock()
    drive.fault = FAULT_WATCHDOG
    drive.write(REG_CONTROL, [CW_RESET], clock.t)
    assert drive.fault == FAULT_NONE
    drive.fault = FAULT_WATCHDOG
    drive.write(REG_CONTROL, [CW_RESET], clock.t)  # the same word again still resets
    assert drive.fault == FAULT_NONE
    drive.injected.estop = True
    drive.fault = FAULT_WATCHDOG
    drive.write(REG_CONTROL, [CW_RESET], clock.t)  # not while the e-stop input is open
    assert drive.fault == FAULT_WATCHDOG


def test_quick_stop_overrides_run() -> None:
    drive, clock = hoist(0), Clock()
    clock.run(drive, 0.1)
    command(drive, clock, 10000, 1500, 500, CW_ENABLE | CW_RUN)
    clock.run(drive, 4)
    drive.write(REG_CONTROL, [CW_ENABLE | CW_RUN | CW_QUICK_STOP], clock.t)
    clock.run(drive, 0.6)  # 1500 mm/s at the 3000 mm/s² quick-stop rate: 0.5 s
    assert not drive.moving


def test_controlled_stop() -> None:
    drive, clock = hoist(0), Clock()
    clock.run(drive, 0.1)
    command(drive, clock, 10000, 1000, 1000, CW_ENABLE | CW_RUN)
    clock.run(drive, 2)
    drive.write(REG_CONTROL, [CW_ENABLE | CW_STOP], clock.t)
    clock.run(drive, 1.2)  # 1000 mm/s at 1000 mm/s² stops in 1 s
    assert not drive.moving
    assert drive.position < 10000.0


def test_register_image_follows_the_documented_map() -> None:
    drive = hoist(1234.5)
    status = drive.status_block()
    assert to_i32(status[0], status[1]) == 12345  # int32, 0.1 mm, high word first
    drive.write(REG_TARGET, [0, 50000], 0.0)  # 5000.0 mm
    assert drive.target == 5000.0
    drive.write(REG_TARGET, [0xFFFF, 0xFFF6], 0.0)  # -1.0 mm (drive takes it; travel ends at 0)
    assert drive.target == -1.0
    drive.write(REG_HEARTBEAT, [7], 1.0)
    assert drive.heartbeat == 7 and drive.heartbeat_at == 1.0
    drive.write(REG_CONTROL, [CW_ENABLE], 1.0)
    drive.write(REG_ACCEL, [700], 1.0)
    assert drive.enabled and drive.command_block()[3] == 700
