"""The Modbus driver against a plain pymodbus server that knows nothing of our profiles.

The server's register values are written by hand here (not encoded by our codec), so a codec
and a server that agreed on a wrong convention would not pass. The same server injects
exception responses, non-finite floats and delayed answers through its action hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.base import DeviceUnavailable
from drivers.modbus.codec import plan_reads
from drivers.modbus.driver import ModbusDeviceDriver, request_timeout_s
from drivers.modbus.link import ModbusLink, ModbusRequestError, Priority
from drivers.model import (
    CommandError,
    Device,
    HealthState,
    ModbusTcpTransport,
    Profile,
    Quality,
    Reading,
    parse_profile,
)
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.integration

# Holding registers, by hand (big-endian bytes in each register, as Modbus defines).
HOLDING = [
    0xFB2E,  # 0      int16 -1234
    54321,  # 1       uint16
    0xF8A4,  # 2-3    int32 -123456789, high word first
    0x32EB,
    0x32EB,  # 4-5    the same int32, low word first
    0xF8A4,
    0xB2D0,  # 6-7    uint32 3000000000, high word first
    0x5E00,
    0x5E00,  # 8-9    the same uint32, low word first
    0xB2D0,
    0x4060,  # 10-11  float32 3.5, high word first
    0x0000,
    0x0000,  # 12-13  float32 -0.15625, low word first
    0xBE20,
    0xA005,  # 14     bits 0, 2, 13, 15
    250,  # 15        uint16 raw 250: 250 * 0.1 - 10 = 15.0
]
SETPOINT = 20  # holding 20-21: a writable int32, low word first, scale 0.01

EXPECTED = {
    "i16": -1234,
    "u16": 54321,
    "i32_big": -123456789,
    "i32_little": -123456789,
    "u32_big": 3000000000,
    "u32_little": 3000000000,
    "f32_big": 3.5,
    "f32_little": -0.15625,
    "bit0": True,
    "bit1": False,
    "bit2": True,
    "bit13": True,
    "bit15": True,
    "scaled": 15.0,
    "in_scaled": -1.0,
    "coil3": True,
    "discrete5": True,
    "setpoint": 0.0,
}


def make_profile(extra_points: dict[str, Any] | None = None) -> Profile:
    def reg(address: int, encoding: str = "uint16", **kw: Any) -> dict[str, Any]:
        return {"address": address, "encoding": encoding, **kw}

    points: dict[str, Any] = {
        "i16": {"dtype": "int", "modbus": reg(0, "int16")},
        "u16": {"dtype": "int", "modbus": reg(1)},
        "i32_big": {"dtype": "int", "modbus": reg(2, "int32")},
        "i32_little": {"dtype": "int", "modbus": reg(4, "int32", word_order="little")},
        "u32_big": {"dtype": "int", "modbus": reg(6, "uint32")},
        "u32_little": {"dtype": "int", "modbus": reg(8, "uint32", word_order="little")},
        "f32_big": {"modbus": reg(10, "float32")},
        "f32_little": {"modbus": reg(12, "float32", word_order="little")},
        **{f"bit{b}": {"dtype": "bool", "modbus": reg(14, bit=b)} for b in (0, 1, 2, 13, 15)},
        "scaled": {"modbus": reg(15, scale=0.1, offset=-10.0)},
        "in_scaled": {"modbus": reg(0, "int16", table="input", scale=0.5)},
        "coil3": {"dtype": "bool", "modbus": {"table": "coil", "address": 3, "encoding": "bool"}},
        "discrete5": {
            "dtype": "bool",
            "modbus": {"table": "discrete", "address": 5, "encoding": "bool"},
        },
        "setpoint": {
            "access": "rw",
            "min": -1000.0,
            "max": 1000.0,
            "modbus": reg(SETPOINT, "int32", word_order="little", scale=0.01),
        },
        **(extra_points or {}),
    }
    return parse_profile(
        {
            "id": "encodings",
            "device_class": "test",
            "protocol": "modbus",
            "points": points,
            "commands": {
                "set": {
                    "args": {"value": {"min": -1000.0, "max": 1000.0}},
                    "writes": [{"point": "setpoint", "arg": "value"}],
                }
            },
        }
    )


class PeerServer:
    """A pymodbus TCP server with hand-written registers and injectable misbehaviour."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[tuple[int, int]] = []  # (function code, address), in arrival order
        self.writes: list[list[int]] = []
        self.refuse: dict[tuple[int, int], ExcCodes] = {}  # (fc, address) -> exception
        self.overrides: dict[int, int] = {}  # holding address -> register value
        self.gate = asyncio.Event()  # reads wait here while hold_reads is set
        self.gate.set()
        self.holding = [*HOLDING, *[0] * (SETPOINT - len(HOLDING)), 0, 0]

    def device(self) -> SimDevice:
        async def action(
            func_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            self.requests.append((func_code, address))
            if set_values is not None:
                self.writes.append([int(v) for v in set_values])
            if func_code == 3:
                await self.gate.wait()
            if (func_code, address) in self.refuse:
                return self.refuse[func_code, address]
            if func_code == 3:
                for a, v in self.overrides.items():
                    registers[a - start_address] = v
            return None

        return SimDevice(
            1,
            simdata=(
                [SimData(0, values=[False, False, False, True], datatype=DataType.BITS)],
                [SimData(0, values=[False] * 5 + [True], datatype=DataType.BITS)],
                [SimData(0, values=self.holding, datatype=DataType.REGISTERS)],
                [SimData(0, values=[0xFFFE], datatype=DataType.REGISTERS)],
            ),
            action=action,
        )

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[PeerServer]:
        server = ModbusTcpServer(self.device(), address=("127.0.0.1", self.port))
        await server.serve_forever(background=True)
        try:
            yield self
        finally:
            self.gate.set()
            await server.shutdown()  # type: ignore[no-untyped-call]


@pytest.fixture
async def peer() -> AsyncIterator[PeerServer]:
    async with PeerServer(free_port()).serve() as server:
        yield server


class Run:
    """A driver running in the background, with every reading and health change kept."""

    def __init__(self, driver: ModbusDeviceDriver) -> None:
        self.driver = driver
        self.batches: list[list[Reading]] = []

    def latest(self) -> dict[str, Reading]:
        return {r.point: r for batch in self.batches for r in batch}


@contextlib.asynccontextmanager
async def running(device: Device) -> AsyncIterator[Run]:
    run: Run

    async def sink(readings: list[Reading]) -> None:
        run.batches.append(readings)

    run = Run(ModbusDeviceDriver(device, sink))
    task = asyncio.create_task(run.driver.run(), name=f"driver:{device.id}")
    try:
        yield run
    finally:
        run.driver.stop()
        await asyncio.wait_for(task, 5)


def device(port: int, profile: Profile | None = None, timeout_s: float = 0.5) -> Device:
    transport = ModbusTcpTransport(
        kind="modbus-tcp", host="127.0.0.1", port=port, unit=1, timeout_s=timeout_s
    )
    return Device("peer", profile or make_profile(), transport, poll_hz=20)


def became(pred: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return pred()

    return check


async def test_every_encoding_decodes_from_hand_written_registers(peer: PeerServer) -> None:
    async with running(device(peer.port)) as run:
        await wait_until(became(lambda: len(run.batches) >= 2), 5, "two polls")
        latest = run.latest()
        values = {name: r.value for name, r in latest.items()}
        assert values == EXPECTED
        assert all(r.quality is Quality.GOOD for r in latest.values())
        assert isinstance(values["i16"], int) and isinstance(values["bit0"], bool)
        assert run.driver.health.state is HealthState.ONLINE
        # 4 tables -> 4 block reads per poll: holding 0..21 in one, not one per point.
        assert [b.label for b in plan_reads(make_profile().points.values())] == [
            "coil 3+1",
            "discrete 5+1",
            "holding 0+22",
            "input 0+1",
        ]


async def test_command_writes_registers_and_refuses_out_of_range(peer: PeerServer) -> None:
    async with running(device(peer.port)) as run:
        await wait_until(became(lambda: run.driver.health.state is HealthState.ONLINE), 5, "up")
        assert await run.driver.command("set", {"value": -12.34}) == [("setpoint", -12.34)]
        # -1234 = 0xFFFFFB2E, low word first; checked on the server's own register image.
        assert (16, SETPOINT) in peer.requests
        await wait_until(
            became(lambda: run.latest()["setpoint"].value == -12.34), 5, "setpoint read back"
        )
        for bad in (1000.01, math.nan, math.inf, "12"):
            with pytest.raises(CommandError):
                await run.driver.command("set", {"value": bad})
        with pytest.raises(CommandError, match="no command"):
            await run.driver.command("launch", {})
        assert run.driver.health.state is HealthState.ONLINE


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (ExcCodes.ILLEGAL_FUNCTION, "exception 1 (illegal function)"),
        (ExcCodes.ILLEGAL_ADDRESS, "exception 2 (illegal data address)"),
        (ExcCodes.ILLEGAL_VALUE, "exception 3 (illegal data value)"),
        (ExcCodes.DEVICE_BUSY, "exception 6 (server device busy)"),
        (ExcCodes.GATEWAY_PATH_UNAVIABLE, "exception 10 (gateway path unavailable)"),
        (ExcCodes.GATEWAY_NO_RESPONSE, "exception 11 (gateway target device failed to respond)"),
    ],
)
async def test_exception_responses_become_bad_readings_and_a_reason(
    peer: PeerServer, code: ExcCodes, reason: str
) -> None:
    peer.refuse[3, 0] = code  # the holding block: FC 03 from 0
    async with running(device(peer.port)) as run:
        await wait_until(
            became(lambda: run.driver.health.state is HealthState.OFFLINE), 5, "offline"
        )
        assert run.driver.health.reason == f"read holding 0+22: {reason}"
        latest = run.latest()
        assert latest["i16"].quality is Quality.BAD and latest["i16"].value is None
        assert latest["coil3"].quality is Quality.GOOD  # other blocks are unaffected
        peer.refuse.clear()
        await wait_until(
            became(lambda: run.driver.health.state is HealthState.ONLINE), 5, "recovered"
        )
        assert run.latest()["i16"].value == -1234
        assert run.driver.stats.reconnects == 0  # an answer, even a refusal, is not a dead link


async def test_a_block_over_unmapped_registers_is_refused_by_the_server(peer: PeerServer) -> None:
    profile = make_profile({"ghost": {"modbus": {"address": 900}}})
    async with running(device(peer.port, profile)) as run:
        await wait_until(became(lambda: "ghost" in run.latest()), 5, "ghost read")
        await wait_until(became(lambda: "holding 900+1" in run.driver.health.reason), 5, "a reason")
        assert "exception 2 (illegal data address)" in run.driver.health.reason
        assert run.latest()["ghost"].quality is Quality.BAD
        assert run.latest()["u16"].value == 54321


@pytest.mark.parametrize(
    ("words", "what"),
    [((0x7FC0, 0x0000), "nan"), ((0x7F80, 0x0000), "inf"), ((0xFF80, 0x0000), "-inf")],
)
async def test_non_finite_floats_are_bad_points_not_bad_blocks(
    peer: PeerServer, words: tuple[int, int], what: str
) -> None:
    peer.overrides = {10: words[0], 11: words[1]}
    async with running(device(peer.port)) as run:
        await wait_until(became(lambda: len(run.batches) >= 2), 5, "two polls")
        latest = run.latest()
        assert latest["f32_big"].quality is Quality.BAD and latest["f32_big"].value is None
        assert latest["f32_little"].quality is Quality.GOOD
        assert latest["i16"].value == -1234
        assert run.driver.health.state in (HealthState.DEGRADED, HealthState.OFFLINE)
        assert f"f32_big: the device sent a non-finite value ({what})" in run.driver.health.reason
        peer.overrides = {10: HOLDING[10], 11: HOLDING[11]}  # the hook writes the image
        await wait_until(
            became(lambda: run.driver.health.state is HealthState.ONLINE), 5, "recovered"
        )


async def test_a_write_overtakes_queued_polls(peer: PeerServer) -> None:
    """Order on the wire, not time: the server holds the first read until all are queued."""
    transport = ModbusTcpTransport(kind="modbus-tcp", host="127.0.0.1", port=peer.port)
    block = plan_reads(make_profile().points.values())[2]  # holding 0+22
    wire = make_profile().points["setpoint"].modbus
    assert wire is not None
    peer.gate.clear()
    async with ModbusLink.tcp(transport) as link:
        first = asyncio.create_task(link.read(1, block, 10), name="poll-0")
        await wait_until(became(lambda: len(peer.requests) == 1), 5, "the first poll on the wire")
        polls = [asyncio.create_task(link.read(1, block, 10), name=f"poll-{i}") for i in (1, 2)]
        heartbeat = asyncio.create_task(
            link.write(1, wire, [7, 0], 10, Priority.HEARTBEAT), name="heartbeat"
        )
        await wait_until(became(lambda: link.scheduler.waiting == 3), 5, "three queued")
        command = asyncio.create_task(link.write(1, wire, [1, 0], 10), name="command")
        await wait_until(became(lambda: link.scheduler.waiting == 4), 5, "the write queued")
        assert len(peer.requests) == 1  # nothing overtook the read on the wire
        peer.gate.set()
        await asyncio.gather(first, *polls, heartbeat, command)
    assert peer.requests == [(3, 0), (16, SETPOINT), (16, SETPOINT), (3, 0), (3, 0)]
    assert peer.writes == [[1, 0], [7, 0]]  # the command, then the heartbeat


async def test_timeout_is_capped_by_the_heartbeat_period() -> None:
    hb = parse_profile(
        {
            "id": "hb",
            "device_class": "test",
            "protocol": "modbus",
            "heartbeat": {"point": "hb", "period_ms": 40},
            "points": {"hb": {"access": "rw", "modbus": {"address": 0}}},
        }
    )
    assert request_timeout_s(device(1, hb, timeout_s=0.5)) == pytest.approx(0.08)
    assert request_timeout_s(device(1, hb, timeout_s=0.05)) == pytest.approx(0.05)
    assert request_timeout_s(device(1, make_profile(), timeout_s=0.5)) == 0.5


async def test_command_on_a_device_that_is_not_connected_is_unavailable() -> None:
    async with running(device(free_port())) as run:
        await wait_until(
            became(lambda: run.driver.health.state is HealthState.OFFLINE), 5, "offline"
        )
        with pytest.raises(DeviceUnavailable, match="not connected"):
            await run.driver.command("set", {"value": 1.0})
        assert "cannot connect" in run.driver.health.reason


async def test_link_request_errors_are_modbus_request_errors(peer: PeerServer) -> None:
    transport = ModbusTcpTransport(kind="modbus-tcp", host="127.0.0.1", port=peer.port)
    block = plan_reads(make_profile({"ghost": {"modbus": {"address": 900}}}).points.values())
    async with ModbusLink.tcp(transport) as link:
        with pytest.raises(ModbusRequestError, match=r"read holding 900\+1: exception 2"):
            await link.read(1, block[-2], 1)
