"""The Modbus driver against a raw asyncio TCP peer that breaks the protocol on purpose.

The peer parses requests itself and answers FC 03 by hand-built MBAP frames; in each bad mode
it answers wrongly (or not at all). Every mode must give bad readings and a health reason while
the driver keeps running, and the driver must recover once the peer behaves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator

import pytest

from drivers.modbus.driver import ModbusDeviceDriver
from drivers.model import (
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


class RawPeer:
    """A hand-written Modbus TCP server whose answers follow ``mode``."""

    def __init__(self) -> None:
        self.mode = "good"
        self.requests = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _pid, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                if reply := self.answer(tid, unit, pdu):
                    writer.write(reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def answer(self, tid: int, unit: int, pdu: bytes) -> bytes:
        fc, start, count = struct.unpack(">BHH", pdu[:5])
        data = b"".join(struct.pack(">H", start + i + 1) for i in range(count))
        body = bytes([fc, len(data)]) + data
        pid, mode = 0, self.mode
        if mode == "silent":
            return b""
        if mode == "wrong_fc":
            body = bytes([4]) + body[1:]
        if mode == "unknown_fc":
            body = bytes([0x55]) + body[1:]
        if mode == "wrong_tid":
            tid = (tid + 1) & 0xFFFF
        if mode == "wrong_pid":
            pid = 7
        if mode == "exception":
            body = bytes([fc | 0x80, 4])
        length = len(body) + 1
        if mode == "oversized":
            length = 0xFFFF
        frame = struct.pack(">HHHB", tid, pid, length, unit) + body
        if mode == "truncated":
            return frame[:9]
        if mode == "short_data":  # a well-framed answer carrying one register too few
            body = bytes([fc, len(data) - 2]) + data[:-2]
            frame = struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
        return frame

    def drop_connections(self) -> None:
        for w in list(self._writers):
            w.close()


@contextlib.asynccontextmanager
async def raw_peer(port: int) -> AsyncIterator[RawPeer]:
    peer = RawPeer()
    server = await asyncio.start_server(peer.handle, "127.0.0.1", port)
    try:
        yield peer
    finally:
        peer.drop_connections()
        server.close()
        await server.wait_closed()


def profile() -> Profile:
    return parse_profile(
        {
            "id": "two",
            "device_class": "test",
            "protocol": "modbus",
            "points": {
                "a": {"dtype": "int", "modbus": {"address": 10}},
                "b": {"dtype": "int", "modbus": {"address": 11}},
            },
        }
    )


MODES = {
    "silent": "read holding 10+2: no valid answer within 200 ms",
    "truncated": "read holding 10+2: no valid answer within 200 ms",
    "oversized": "read holding 10+2: no valid answer within 200 ms",
    "wrong_tid": "read holding 10+2: no valid answer within 200 ms",
    "wrong_pid": "read holding 10+2: no valid answer within 200 ms",
    "wrong_fc": "read holding 10+2: answer has function code 4, expected 3",
    "exception": "read holding 10+2: exception 4 (server device failure)",
    "short_data": "read holding 10+2: short answer, 1 of 2",
    "unknown_fc": "undecodable answer",  # the connection is closed and reopened
}


@pytest.mark.parametrize("mode", list(MODES))
async def test_misbehaving_peer_gives_bad_readings_and_the_driver_recovers(mode: str) -> None:
    port = free_port()
    batches: list[list[Reading]] = []

    async def sink(readings: list[Reading]) -> None:
        batches.append(readings)

    transport = ModbusTcpTransport(
        kind="modbus-tcp", host="127.0.0.1", port=port, unit=1, timeout_s=0.2
    )
    driver = ModbusDeviceDriver(Device("raw", profile(), transport, poll_hz=20), sink)

    def latest() -> dict[str, Reading]:
        return {r.point: r for batch in batches for r in batch}

    async def state_is(state: HealthState) -> bool:
        return driver.health.state is state

    async with raw_peer(port) as peer:
        task = asyncio.create_task(driver.run(), name="driver:raw")
        try:
            await wait_until(lambda: state_is(HealthState.ONLINE), 5, "online")
            assert latest()["a"].value == 11 and latest()["b"].value == 12

            peer.mode = mode
            seen: set[str] = set()

            async def bad_with_reason() -> bool:
                seen.add(driver.health.reason)
                return latest()["a"].quality is Quality.BAD and any(MODES[mode] in r for r in seen)

            await wait_until(bad_with_reason, 5, f"bad readings and a reason in mode {mode}")
            assert not task.done()

            peer.mode = "good"
            await wait_until(lambda: state_is(HealthState.ONLINE), 10, "recovery")
            await wait_until(
                lambda: asyncio.sleep(0, latest()["a"].quality is Quality.GOOD), 5, "good again"
            )
            assert latest()["a"].value == 11
        finally:
            driver.stop()
            await asyncio.wait_for(task, 5)
