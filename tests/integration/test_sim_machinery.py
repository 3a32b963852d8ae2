"""Machinery simulators against independent masters: mbpoll (libmodbus), raw sockets, pymodbus.

The expected maps below are written from docs/interfaces/devices/*.md (the "Requests" table of
each page and its register tables), not from the simulator, so a simulator that drifts from
its page fails here. Every injected fault is observed from outside, through Modbus only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from simulators.core import DeviceSpec
from simulators.machinery import MachineDevice, MachineryFamily
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.integration

MODELS = [
    "hoist",
    "lineshaft_flybar",
    "chain_hoist",
    "stage_lift",
    "pit_lift",
    "turntable",
    "wagon",
    "curtain_track",
    "fire_curtain",
]

# From each page's "Requests" table: the blocks a master reads, (start, count).
BLOCKS: dict[str, list[tuple[int, int]]] = {
    "hoist": [(0, 11), (100, 7)],
    "lineshaft_flybar": [(0, 11), (20, 12), (100, 7)],
    "chain_hoist": [(0, 11), (20, 5), (100, 7), (120, 3)],
    "stage_lift": [(0, 11), (20, 2), (100, 7), (120, 1)],
    "pit_lift": [(0, 11), (20, 2), (100, 7), (120, 1)],
    "turntable": [(0, 11), (20, 4), (100, 7), (120, 1)],
    "wagon": [(0, 11), (20, 1), (100, 7)],
    "curtain_track": [(0, 11), (20, 1), (100, 7)],
    "fire_curtain": [(0, 11), (20, 3)],
}

# Power-up register values the pages give (reference figures, default simulate tables).
POWER_UP: dict[str, dict[int, int]] = {
    "hoist": {6: 9, 7: 0, 102: 500, 103: 500, 104: 0, 106: 0},
    # batten 120.0 kg, arbor 300.0 kg (simulate defaults); no slack line, no warning
    "lineshaft_flybar": {20: 0, 21: 1200, 22: 0, 23: 3000, 31: 0},
    # overload limit powers up at 1250 kg, underload off, peak_reset reads 0
    "chain_hoist": {120: 1250, 121: 0, 122: 0, 22: 0},
    # at stage level (4000 mm): bolts engaged, guard closed; lock level 2
    "stage_lift": {0: 0, 1: 40000, 20: 0b10001, 21: 2, 120: 0},
    "pit_lift": {0: 0, 1: 23000, 20: 0b10001, 21: 2, 120: 0},
    "turntable": {7: 0, 20: 0, 21: 0, 22: 0, 23: 0, 120: 0},
    # at the dock: docked, guide engaged, cable ok
    "wagon": {20: 0b1011},
    # closed (0 mm): closed switch
    "curtain_track": {20: 0b001},
    # raised (open) at 9000 mm: state 1, mains and UPS ok; ready + in_position + limit_high
    "fire_curtain": {0: 1, 1: 24464, 6: 0b100001001, 8: 0, 20: 1, 21: 0b11000, 22: 0},
}


def mbpoll(port: int, unit: int, *args: str, timeout_s: float = 1.0) -> tuple[int, list[int], str]:
    """Run mbpoll once against 127.0.0.1:port; (exit code, values by address, stderr)."""
    cmd = ["mbpoll", "-m", "tcp", "-p", str(port), "-a", str(unit), "-0", "-1"]
    cmd += ["-o", f"{timeout_s:.2f}", *args]
    done = subprocess.run(_place(cmd), **RUN)
    values = [int(m.group(2)) for m in VALUE.finditer(done.stdout)]
    return done.returncode, values, done.stderr


VALUE = re.compile(r"^\[(\d+)\]:\s+(-?\d+)", re.M)
RUN: dict[str, Any] = {"capture_output": True, "text": True, "timeout": 20}


def _place(cmd: list[str]) -> list[str]:
    """mbpoll wants the host before the values to write (after ``--``)."""
    if "--" in cmd:
        i = cmd.index("--")
        return [*cmd[:i], "127.0.0.1", *cmd[i:]]
    return [*cmd, "127.0.0.1"]


async def read(
    port: int, unit: int, start: int, count: int, **kw: Any
) -> tuple[int, list[int], str]:
    args = ["-t", "4", "-r", str(start), "-c", str(count)]
    return await asyncio.to_thread(mbpoll, port, unit, *args, **kw)


async def write(port: int, unit: int, start: int, *values: int) -> tuple[int, list[int], str]:
    args = ["-t", "4", "-r", str(start), "--", *map(str, values)]
    return await asyncio.to_thread(mbpoll, port, unit, *args)


@dataclass
class Rig:
    port: int
    family: MachineryFamily
    devices: dict[str, MachineDevice]

    def unit(self, model: str) -> int:
        return MODELS.index(model) + 1


@contextlib.asynccontextmanager
async def serving(family: MachineryFamily) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for host in family.hosts():
            await stack.enter_async_context(host)
        yield


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """Every type behind one gateway port, unit = its index in MODELS + 1."""
    port = free_port()
    family = MachineryFamily({})
    devices: dict[str, MachineDevice] = {}
    for unit, model in enumerate(MODELS, start=1):
        tr = {"kind": "modbus-tcp", "host": "127.0.0.1", "port": port, "unit": unit}
        dev = family.add(DeviceSpec(model, model, tr, {"model": model}, f"test: {model}"))
        assert isinstance(dev, MachineDevice)
        devices[model] = dev
    async with serving(family):
        yield Rig(port, family, devices)


@pytest.mark.parametrize("model", MODELS)
async def test_each_type_serves_its_documented_map(rig: Rig, model: str) -> None:
    unit = rig.unit(model)
    image: dict[int, int] = {}
    for start, count in BLOCKS[model]:
        rc, values, err = await read(rig.port, unit, start, count)
        assert rc == 0, f"{model} {start}+{count}: {err}"
        assert len(values) == count
        image.update(zip(range(start, start + count), [v & 0xFFFF for v in values], strict=True))
        # One register past the block's end is unmapped (exception 02), unless a block follows.
        after = start + count
        if not any(s == after for s, _ in BLOCKS[model]):
            rc, _, err = await read(rig.port, unit, after, 1)
            assert rc != 0 and "Illegal data address" in err, f"{model} {after}: {err}"
    for address, expected in POWER_UP[model].items():
        assert image[address] == expected, f"{model} register {address}"
    assert image[6] & 0xFC00 == 0  # reserved status bits read 0
    # The status block is read-only: a write is refused with 02 and changes nothing.
    rc, _, err = await write(rig.port, unit, 7, 1)
    assert rc != 0 and "Illegal data address" in err
    rc, values, _ = await read(rig.port, unit, 7, 1)
    assert values == [0]


async def test_fire_curtain_has_no_command_block(rig: Rig) -> None:
    rc, _, err = await read(rig.port, rig.unit("fire_curtain"), 100, 7)
    assert rc != 0 and "Illegal data address" in err
    rc, _, err = await write(rig.port, rig.unit("fire_curtain"), 105, 1)
    assert rc != 0 and "Illegal data address" in err


async def test_exception_rules(rig: Rig) -> None:
    port, unit = rig.port, rig.unit("hoist")
    for start, count in [(0, 12), (11, 1), (99, 2), (107, 1)]:
        rc, _, err = await read(port, unit, start, count)
        assert rc != 0 and "Illegal data address" in err, (start, count)
    # FC 16 105..107 runs into 107: rejected as a whole, the heartbeat is not written.
    rc, _, err = await write(port, unit, 105, 77, 0, 0)
    assert rc != 0 and "Illegal data address" in err
    assert (await read(port, unit, 105, 1))[1] == [0]
    rc, _, err = await read(port, 99, 0, 1)  # a unit the gateway does not host
    assert rc != 0 and "Slave device or server failure" in err


class Master:
    """A pymodbus master with a live heartbeat, for tests that must enable a drive."""

    def __init__(self, port: int, unit: int) -> None:
        self.client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2)
        self.unit = unit
        self._beat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Master:
        assert await self.client.connect()
        self._beat = asyncio.create_task(self._heartbeat(), name="test-heartbeat")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._beat is not None
        self._beat.cancel()
        await asyncio.gather(self._beat, return_exceptions=True)
        self.client.close()

    async def _heartbeat(self) -> None:
        n = 0
        while True:
            n = (n + 1) & 0xFFFF
            await self.client.write_register(105, n, device_id=self.unit)
            await asyncio.sleep(0.05)

    async def status(self) -> tuple[float, int, int]:
        rr = await self.client.read_holding_registers(0, count=11, device_id=self.unit)
        raw = struct.unpack(">i", struct.pack(">HH", *rr.registers[:2]))[0]
        return raw / 10, rr.registers[6], rr.registers[7]

    async def move(self, target: float, speed: int = 500, accel: int = 500) -> None:
        hi, lo = struct.unpack(">HH", struct.pack(">i", round(target * 10)))
        await self.client.write_registers(102, [speed, accel], device_id=self.unit)
        await self.client.write_registers(100, [hi, lo], device_id=self.unit)
        await self.client.write_register(104, 3, device_id=self.unit)


async def test_a_master_moves_an_axis_and_the_watchdog_stops_it(rig: Rig) -> None:
    async with Master(rig.port, rig.unit("hoist")) as m:
        await m.move(300, speed=1000, accel=2000)

        async def arrived() -> bool:
            pos, sw, _ = await m.status()
            return pos == 300 and bool(sw & 0b1000) and not sw & 0b100

        await wait_until(arrived, 5, "hoist at 300 mm")
        await m.move(5000, speed=1000, accel=2000)
        await wait_until(lambda: _moving(m), 5, "hoist moving")
        assert m._beat is not None
        m._beat.cancel()

        async def watchdog_fault() -> bool:
            _, sw, fault = await m.status()
            return fault == 1 and not sw & 0b100

        await wait_until(watchdog_fault, 5, "fault 1 and standstill")
    assert 300 < rig.devices["hoist"].truth()["position_mm"] < 5000


async def _moving(m: Master) -> bool:
    return bool((await m.status())[1] & 0b100)


@pytest.mark.parametrize(
    ("fault", "params", "code", "needs_motion"),
    [
        ("estop", {}, 8, False),
        ("overload", {"extra_kg": 500}, 2, False),
        ("encoder_fault", {}, 5, False),
        ("drive_trip", {}, 4, False),
        ("slack_rope", {}, 7, False),
        ("brake_fault", {"mode": "no_release"}, 6, True),
    ],
)
async def test_drive_faults_show_as_fault_codes(
    rig: Rig, fault: str, params: dict[str, Any], code: int, needs_motion: bool
) -> None:
    dev, unit = rig.devices["hoist"], rig.unit("hoist")
    dev.inject(fault, params)
    if needs_motion:
        async with Master(rig.port, unit) as m:
            await m.move(100)
            await wait_until(lambda: _fault(rig.port, unit, code), 5, f"fault {code}")
    else:
        await wait_until(lambda: _fault(rig.port, unit, code), 5, f"fault {code}")
    status = (await read(rig.port, unit, 6, 1))[1][0] & 0xFFFF
    assert status & 0b10000 and not status & 0b11  # fault, not ready, not enabled
    assert bool(status & 0b100000) == (fault == "estop")
    dev.clear(fault)
    await asyncio.sleep(0.05)
    assert await _fault(rig.port, unit, code)  # latched until a reset
    assert (await write(rig.port, unit, 104, 8))[0] == 0
    await wait_until(lambda: _fault(rig.port, unit, 0), 5, "fault reset")


async def _fault(port: int, unit: int, code: int) -> bool:
    rc, values, _ = await read(port, unit, 7, 1)
    return rc == 0 and values == [code]


async def test_encoder_jump_shows_in_the_reported_position(rig: Rig) -> None:
    port, unit = rig.port, rig.unit("hoist")
    rig.devices["hoist"].inject("encoder_jump", {"jump": 12.5})
    rc, values, _ = await asyncio.to_thread(
        mbpoll, port, unit, "-t", "4:int", "-B", "-r", "0", "-c", "1"
    )
    assert rc == 0 and values == [125]  # 0.0 mm + 12.5 mm, in 0.1 mm
    assert rig.devices["hoist"].truth()["position_mm"] == 0.0


async def test_comms_faults_are_observed_on_the_wire(rig: Rig) -> None:
    port, unit, dev = rig.port, rig.unit("chain_hoist"), rig.devices["chain_hoist"]
    dev.inject("late_response", {"delay_ms": 600})
    rc, _, err = await read(port, unit, 0, 11, timeout_s=0.2)
    assert rc != 0 and "timed out" in err
    dev.clear("late_response")
    dev.inject("slow_response", {"delay_ms": 150})
    rc, _, err = await read(port, unit, 0, 11, timeout_s=0.05)
    assert rc != 0 and "timed out" in err  # later than a 50 ms master waits ...
    rc, values, err = await read(port, unit, 0, 11, timeout_s=2)
    assert rc == 0 and len(values) == 11, err  # ... but answered within 2 s
    dev.clear("slow_response")
    dev.inject("comms_loss", {})
    rc, _, err = await read(port, unit, 0, 1, timeout_s=0.2)
    assert rc != 0 and "timed out" in err
    assert (await read(port, rig.unit("hoist"), 0, 1))[0] == 0  # the gateway's others answer
    dev.clear("comms_loss")
    assert (await read(port, unit, 0, 1))[0] == 0
    dev.inject("exception_response", {"code": 6, "function": 3, "start": 120, "count": 3})
    rc, _, err = await read(port, unit, 120, 3)
    assert rc != 0 and "busy" in err
    assert (await read(port, unit, 0, 11))[0] == 0  # other addresses answer
    assert (await write(port, unit, 120, 900))[0] == 0  # other functions answer
    dev.clear()
    assert (await read(port, unit, 120, 1))[1] == [900]


def test_comms_loss_drop_closes_the_connection() -> None:
    async def scenario() -> None:
        port = free_port()
        family = MachineryFamily({})
        tr = {"kind": "modbus-tcp", "host": "127.0.0.1", "port": port, "unit": 3}
        dev = family.add(DeviceSpec("w", "wagon", tr, {"model": "wagon"}, "t"))
        async with serving(family):
            dev.inject("comms_loss", {"mode": "drop"})
            reply = await asyncio.to_thread(_raw_request, port, 3)
            assert reply == b""  # the peer closed the connection instead of answering
            dev.clear()
            reply = await asyncio.to_thread(_raw_request, port, 3)
            assert reply[7] == 3 and reply[8] == 2  # FC 03, 2 bytes

    asyncio.run(scenario())


def _raw_request(port: int, unit: int) -> bytes:
    """One FC 03 request for register 0 over a raw socket; what comes back before EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(struct.pack(">HHHBBHH", 1, 0, 6, unit, 3, 0, 1))
        data = b""
        while len(data) < 11:
            chunk = s.recv(64)
            if not chunk:
                break
            data += chunk
        return data


async def test_type_conditions_show_in_their_registers(rig: Rig) -> None:
    port = rig.port
    rig.devices["stage_lift"].inject("guard_open", {})
    rig.devices["stage_lift"].inject("safety_edge", {})
    assert (await read(port, rig.unit("stage_lift"), 20, 1))[1] == [0b01001]
    rig.devices["wagon"].inject("bumper_contact", {"towards": "far"})
    rig.devices["wagon"].inject("guide_out", {})
    assert (await read(port, rig.unit("wagon"), 20, 1))[1] == [0b1101]
    rig.devices["chain_hoist"].inject("load_cell_fault", {})
    assert (await read(port, rig.unit("chain_hoist"), 22, 1))[1] == [0b100]
    rig.devices["lineshaft_flybar"].inject("slack_rope", {"line": 3})
    rc, values, _ = await read(port, rig.unit("lineshaft_flybar"), 26, 6)
    assert rc == 0 and values[2] == 5 and values[5] & 1  # line 3 at 0.5 kg, slack_line
    rig.devices["lineshaft_flybar"].inject("arbor_reload", {"arbor_weight_kg": 100})
    rig.devices["fire_curtain"].inject("alarm_release", {})

    async def lowering() -> bool:
        values = (await read(port, rig.unit("fire_curtain"), 20, 2))[1]
        return values[0] == 2 and values[1] & 0b101 == 0b101  # lowering, alarm, drencher

    await wait_until(lowering, 5, "fire curtain lowering")
    rc, values, _ = await read(port, rig.unit("lineshaft_flybar"), 31, 1)
    assert rc == 0 and values[0] & 0b10  # |imbalance| = 320 - 100 kg > 150 kg


async def test_estop_of_every_device(rig: Rig) -> None:
    for dev in rig.devices.values():
        dev.inject("estop", {})
    for model in MODELS:
        unit = rig.unit(model)

        async def estop(unit: int = unit) -> bool:
            return await _fault(rig.port, unit, 8)

        await wait_until(estop, 5, f"{model} e-stop")
        status = (await read(rig.port, rig.unit(model), 6, 1))[1][0]
        assert status & 0b100000 and not status & 1
    rig.devices["fire_curtain"].clear()
    await wait_until(lambda: _fault(rig.port, rig.unit("fire_curtain"), 0), 5, "panel reset")
    stats = rig.family.stats()
    assert stats["axes"] == 9 and stats["requests"] > 0 and stats["ticks"] > 0


# --- RTU over a socat pty pair ------------------------------------------------------------------


@pytest.fixture
def line(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two pty ends joined by socat: (simulator end, master end)."""
    a, b = tmp_path / "sim", tmp_path / "master"
    log = open(tmp_path / "socat.log", "wb")  # noqa: SIM115 -- closed below
    proc = subprocess.Popen(
        ["socat", "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"socat: {(tmp_path / 'socat.log').read_text()}")
            time.sleep(0.02)
        yield str(a), str(b)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(5)
        log.close()


async def test_rtu_units_on_one_line_answer_mbpoll(line: tuple[str, str]) -> None:
    sim_end, master_end = line
    family = MachineryFamily({})
    devices = {}
    for unit, model in [(1, "hoist"), (2, "turntable")]:
        # A pty refuses parity settings (EINVAL): the line runs 8N1 here.
        tr = {"kind": "modbus-rtu", "port": master_end, "unit": unit, "baudrate": 38400}
        tr["parity"] = "N"
        sim = {"model": model, "serial_port": sim_end}
        devices[model] = family.add(DeviceSpec(model, model, tr, sim, "t"))
    devices["hoist"].inject("overload", {})
    async with serving(family):

        def rtu(unit: int, *args: str) -> subprocess.CompletedProcess[str]:
            cmd = ["mbpoll", "-m", "rtu", "-b", "38400", "-P", "none", "-a", str(unit), "-0"]
            cmd += ["-1", "-o", "1", *args, master_end]
            return subprocess.run(cmd, **RUN)

        done = await asyncio.to_thread(rtu, 1, "-t", "4", "-r", "0", "-c", "11")
        values = [int(m.group(2)) & 0xFFFF for m in VALUE.finditer(done.stdout)]
        assert done.returncode == 0, done.stderr
        assert values[7] == 2  # overload, over RTU
        done = await asyncio.to_thread(rtu, 2, "-t", "4", "-r", "120", "-c", "1")
        assert done.returncode == 0 and VALUE.search(done.stdout), done.stderr
        done = await asyncio.to_thread(rtu, 2, "-t", "4", "-r", "11", "-c", "1")
        assert done.returncode != 0 and "Illegal data address" in done.stderr


async def test_turntable_wraps_around_zero_on_the_wire(rig: Rig) -> None:
    unit = rig.unit("turntable")
    async with Master(rig.port, unit) as m:
        c = m.client
        await c.write_register(120, 2, device_id=unit)  # anticlockwise
        await c.write_registers(102, [3600, 2000], device_id=unit)  # 36 °/s, 20 °/s²
        await c.write_registers(100, [0, 35000], device_id=unit)  # 350.00°: 10° back over 0
        await c.write_register(104, 3, device_id=unit)

        async def arrived() -> bool:
            rr = await c.read_holding_registers(0, count=11, device_id=unit)
            return rr.registers[:2] == [0, 35000] and bool(rr.registers[6] & 0b1000)

        await wait_until(arrived, 8, "turntable at 350.00°")
        rr = await c.read_holding_registers(20, count=4, device_id=unit)
    revolutions = struct.unpack(">i", struct.pack(">HH", *rr.registers[:2]))[0]
    total = struct.unpack(">i", struct.pack(">HH", *rr.registers[2:]))[0]
    assert (revolutions, total) == (-1, -1000)  # one turn back, -10.00° unwrapped
    assert rig.devices["turntable"].truth()["angle_total_deg"] == pytest.approx(-10, abs=0.01)


async def test_watchdog_time_written_to_106_is_obeyed(rig: Rig) -> None:
    unit = rig.unit("hoist")
    async with Master(rig.port, unit) as m:
        await m.client.write_register(106, 1500, device_id=unit)
        await m.move(8000, speed=200, accel=500)
        await wait_until(lambda: _moving(m), 5, "hoist moving")
        assert m._beat is not None
        m._beat.cancel()
        await asyncio.sleep(0.5)  # beyond the default 200 ms, inside 1.5 s
        _, sw, fault = await m.status()
        assert fault == 0 and sw & 0b100

        async def watchdog_fault() -> bool:
            return (await m.status())[2] == 1

        await wait_until(watchdog_fault, 5, "fault 1 after 1.5 s")
