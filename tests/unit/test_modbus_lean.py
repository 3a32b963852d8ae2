"""The lean client's hand-written encodings, byte for byte against pymodbus's PDU classes."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.exceptions import ModbusIOException, ParameterException
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadWriteMultipleRegistersRequest,
    ReadWriteMultipleRegistersResponse,
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterRequest,
    WriteSingleRegisterResponse,
)

from drivers.modbus.lean import LeanTcpClient, decode_response

FAST = settings(max_examples=300, deadline=None, derandomize=True)
REG = st.integers(0, 0xFFFF)


class Capture(LeanTcpClient):
    """Records what would go on the wire instead of sending it."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1", 1, 1.0)
        self.sent: list[tuple[int, int, bytes]] = []

    async def _execute(self, request: Any) -> Any:
        self.sent.append(request)
        return None


def wire(pdu: Any) -> tuple[int, int, bytes]:
    return (pdu.dev_id, pdu.function_code, pdu.encode())


@FAST
@given(
    unit=st.integers(0, 255),
    address=REG,
    count=st.integers(1, 125),
    values=st.lists(REG, min_size=1, max_size=121),
)
def test_requests_encode_as_pymodbus_does(
    unit: int, address: int, count: int, values: list[int]
) -> None:
    c = Capture()
    run = asyncio.run
    run(c.read_holding_registers(address, count=count, device_id=unit))
    run(c.write_register(address, values[0], device_id=unit))
    run(c.write_registers(address, values, device_id=unit))
    run(
        c.readwrite_registers(
            read_address=address,
            read_count=count,
            write_address=(address + 7) & 0xFFFF,
            values=values,
            device_id=unit,
        )
    )
    expected = [
        wire(ReadHoldingRegistersRequest(address=address, count=count, dev_id=unit)),
        wire(WriteSingleRegisterRequest(address=address, registers=[values[0]], dev_id=unit)),
        wire(WriteMultipleRegistersRequest(address=address, registers=values, dev_id=unit)),
        wire(
            ReadWriteMultipleRegistersRequest(
                read_address=address,
                read_count=count,
                write_address=(address + 7) & 0xFFFF,
                write_registers=values,
                dev_id=unit,
            )
        ),
    ]
    assert c.sent == expected


@FAST
@given(registers=st.lists(REG, min_size=0, max_size=125), fc=st.sampled_from([3, 23]))
def test_register_answers_decode_as_pymodbus_does(registers: list[int], fc: int) -> None:
    cls = ReadHoldingRegistersResponse if fc == 3 else ReadWriteMultipleRegistersResponse
    pdu = bytes([fc]) + cls(registers=registers).encode()
    ours = decode_response(pdu)
    theirs = cls()
    theirs.decode(pdu[1:])
    assert ours.registers == theirs.registers == registers
    assert ours.function_code == fc and not ours.isError()


@FAST
@given(address=REG, value=REG, count=st.integers(1, 123))
def test_write_answers_decode(address: int, value: int, count: int) -> None:
    six = bytes([6]) + WriteSingleRegisterResponse(address=address, registers=[value]).encode()
    assert decode_response(six).registers == [value]
    sixteen = bytes([16]) + WriteMultipleRegistersResponse(address=address, count=count).encode()
    assert decode_response(sixteen).function_code == 16


@FAST
@given(data=st.binary(min_size=1, max_size=300))
def test_any_answer_decodes_or_is_refused_with_a_modbus_error(data: bytes) -> None:
    try:
        r = decode_response(data)
    except (ModbusIOException, ValueError, IndexError, struct.error):
        return
    assert all(0 <= v <= 0xFFFF for v in r.registers)


def test_exception_answers_and_refusals() -> None:
    r = decode_response(bytes([0x97, 1]))
    assert r.isError() and r.exception_code == 1 and r.function_code == 0x97
    with pytest.raises(ModbusIOException, match="byte count 22"):
        decode_response(bytes([23, 22, 0, 1]))
    with pytest.raises(ModbusIOException, match="unknown function code 85"):
        decode_response(bytes([0x55, 2, 0, 1]))
    c = Capture()
    with pytest.raises(ParameterException, match=r"not 1\.\.\.121"):
        asyncio.run(
            c.readwrite_registers(
                read_address=0, read_count=11, write_address=100, values=[0] * 122, device_id=1
            )
        )
    with pytest.raises(ParameterException, match=r"not 0\.\.\.65535"):
        asyncio.run(c.read_holding_registers(70000, count=1, device_id=1))
    assert c.sent == []


async def test_not_connected_is_a_connection_exception() -> None:
    from pymodbus.exceptions import ConnectionException

    c = LeanTcpClient("127.0.0.1", 1, 0.2)
    assert not c.connected
    with pytest.raises(ConnectionException, match="not connected"):
        await c.read_holding_registers(0, count=1, device_id=1)
    assert not await c.connect()  # nothing listens on port 1
