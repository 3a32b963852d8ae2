"""A lean Modbus TCP client for the axis cycle: MBAP framing on a plain asyncio protocol.

Why (measured, docs/decisions.md "Axis cycle transport"): at 64 axes x 50 Hz the master makes
3 200 transactions a second on a 2-core box that also runs the drives' simulators. pymodbus's
client costs about 190 us of CPU per FC 23 round trip in the client process, where the same
exchange on a bare asyncio protocol costs about 110 us: its transaction manager, framer,
``wait_for`` and eagerly formatted debug strings are paid on every request. This client keeps
pymodbus's PDU classes for the rarely used function codes (coils, discrete and input
registers) and replaces the transport (MBAP framing, transaction ids, one future per request)
and the encoding of the four function codes of the cycle and of commands: 03, 06, 16 and 23.
Those are a few ``struct`` calls each, checked byte for byte against pymodbus's PDU classes in
tests/unit/test_modbus_lean.py; the PDU classes cost ~30 us a round trip of their own
(validation, one struct call per register, eagerly formatted debug strings). The interface is
exactly what ``ModbusLink`` uses of a pymodbus client.

Rules kept from pymodbus's client, so ``link.py``'s error handling applies unchanged:

- at most one request in flight (the link's scheduler guarantees it); a new request while one
  is pending is a programming error;
- an answer with a stale transaction id (a late answer to a request that timed out) is dropped;
  a frame with a wrong protocol id or an impossible length is dropped with the buffer, so the
  request times out, as pymodbus does;
- a frame whose function code we cannot decode, or a lost connection, fails the request with
  ``ConnectionException`` and closes the connection: the supervisor reconnects;
- our timeout is the caller's ``asyncio.timeout``; this client has none of its own.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from typing import Any

from pymodbus.exceptions import ConnectionException, ModbusIOException, ParameterException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadCoilsResponse,
    ReadDiscreteInputsRequest,
    ReadDiscreteInputsResponse,
    WriteSingleCoilRequest,
    WriteSingleCoilResponse,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
    ReadWriteMultipleRegistersResponse,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterResponse,
)

__all__ = ["LeanTcpClient"]

_MBAP = struct.Struct(">HHHB")
MAX_FRAME_LENGTH = 254  # the MBAP length field of the largest Modbus TCP ADU (1 + 253)

RESPONSES: dict[int, type[ModbusPDU]] = {
    1: ReadCoilsResponse,
    2: ReadDiscreteInputsResponse,
    3: ReadHoldingRegistersResponse,
    4: ReadInputRegistersResponse,
    5: WriteSingleCoilResponse,
    6: WriteSingleRegisterResponse,
    16: WriteMultipleRegistersResponse,
    23: ReadWriteMultipleRegistersResponse,
}


class LeanTcpClient(asyncio.Protocol):
    """One Modbus TCP connection; the subset of pymodbus's async client that ``ModbusLink``
    uses (``connect``, ``close``, ``connected`` and the request methods)."""

    def __init__(self, host: str, port: int, connect_timeout_s: float) -> None:
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._tid = 0
        self._pending: asyncio.Future[Any] | None = None
        self._pending_tid = -1

    # --- connection ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def connect(self) -> bool:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await loop.create_connection(lambda: self, self.host, self.port)
        except (OSError, TimeoutError):
            return False
        return True

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._fail(ConnectionException("connection closed"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._buffer.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(ConnectionException(f"connection lost: {exc or 'closed by the peer'}"))

    def _fail(self, exc: Exception) -> None:
        fut, self._pending = self._pending, None
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    # --- framing ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        while len(buf) >= 8:
            tid, pid, length, _unit = _MBAP.unpack_from(buf)
            if pid != 0 or not 2 <= length <= MAX_FRAME_LENGTH:
                buf.clear()  # not Modbus TCP: drop it all; the request times out
                return
            end = 6 + length
            if len(buf) < end:
                return
            pdu = bytes(buf[7:end])
            del buf[:end]
            if tid == self._pending_tid:
                self._answer(pdu)

    def _answer(self, pdu: bytes) -> None:
        fut = self._pending
        if fut is None or fut.done():
            return
        try:
            response = decode_response(pdu)
        except (ModbusIOException, ValueError, IndexError, struct.error) as exc:
            # As pymodbus: a frame we cannot decode ends the connection.
            self._pending = None
            fut.set_exception(ConnectionException(f"undecodable answer: {exc}"))
            if self._transport is not None:
                self._transport.close()
            return
        self._pending = None
        fut.set_result(response)

    async def _execute(self, request: ModbusPDU | tuple[int, int, bytes]) -> Any:
        """Send ``request`` (a pymodbus PDU, or (unit, function code, data) already encoded)
        and wait for its answer; the caller's timeout bounds the wait."""
        fut = self._send(request)
        try:
            return await fut
        finally:
            if self._pending is fut:  # cancelled (our caller's timeout): forget it
                self._pending = None
                self._pending_tid = -1

    def send_readwrite_nowait(
        self,
        *,
        read_address: int,
        read_count: int,
        write_address: int,
        values: Sequence[int],
        device_id: int,
    ) -> asyncio.Future[Any]:
        """FC 23 written to the socket now, in the caller's step; the future of its answer
        (await it under a timeout, as ``_execute`` does; a cancelled future is forgotten at
        the next request)."""
        _check(read_address, read_count, MAX_READ)
        _check(write_address, len(values), MAX_READ_WRITE)
        n = len(values)
        body = struct.pack(
            f">HHHHB{n}H", read_address, read_count, write_address, n, 2 * n, *values
        )
        return self._send((device_id, 23, body))

    def _send(self, request: ModbusPDU | tuple[int, int, bytes]) -> asyncio.Future[Any]:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionException(f"not connected to {self.host}:{self.port}")
        if self._pending is not None and not self._pending.done():
            raise RuntimeError("one request at a time on a LeanTcpClient")
        self._tid = tid = self._tid % 0xFFFF + 1
        if isinstance(request, tuple):
            unit, function_code, body = request
        else:
            unit, function_code, body = request.dev_id, request.function_code, request.encode()
        transport.write(_MBAP.pack(tid, 0, len(body) + 2, unit) + bytes((function_code,)) + body)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending, self._pending_tid = fut, tid
        return fut

    # --- the requests ModbusLink makes --------------------------------------------------

    async def read_holding_registers(self, address: int, *, count: int, device_id: int) -> Any:
        _check(address, count, MAX_READ)
        return await self._execute((device_id, 3, _HH.pack(address, count)))

    async def read_input_registers(self, address: int, *, count: int, device_id: int) -> Any:
        return await self._execute(
            ReadInputRegistersRequest(address=address, count=count, dev_id=device_id)
        )

    async def read_coils(self, address: int, *, count: int, device_id: int) -> Any:
        return await self._execute(ReadCoilsRequest(address=address, count=count, dev_id=device_id))

    async def read_discrete_inputs(self, address: int, *, count: int, device_id: int) -> Any:
        return await self._execute(
            ReadDiscreteInputsRequest(address=address, count=count, dev_id=device_id)
        )

    async def write_coil(self, address: int, value: bool, *, device_id: int) -> Any:
        return await self._execute(
            WriteSingleCoilRequest(address=address, bits=[value], dev_id=device_id)
        )

    async def write_register(self, address: int, value: int, *, device_id: int) -> Any:
        _check(address, 1, 1)
        return await self._execute((device_id, 6, _HH.pack(address, value)))

    async def write_registers(self, address: int, values: Sequence[int], *, device_id: int) -> Any:
        _check(address, len(values), MAX_WRITE)
        n = len(values)
        return await self._execute(
            (device_id, 16, struct.pack(f">HHB{n}H", address, n, 2 * n, *values))
        )

    async def readwrite_registers(
        self,
        *,
        read_address: int,
        read_count: int,
        write_address: int,
        values: Sequence[int],
        device_id: int,
    ) -> Any:
        _check(read_address, read_count, MAX_READ)
        _check(write_address, len(values), MAX_READ_WRITE)
        n = len(values)
        body = struct.pack(
            f">HHHHB{n}H", read_address, read_count, write_address, n, 2 * n, *values
        )
        return await self._execute((device_id, 23, body))


# --- the hot path's encoding, checked byte for byte against pymodbus's PDU classes -------------
# (tests/unit/test_modbus_lean.py): the PDU classes cost ~30 us a round trip in validation,
# per-register struct calls and debug formatting, a fifth of the cycle's CPU.

_HH = struct.Struct(">HH")
MAX_READ, MAX_WRITE, MAX_READ_WRITE = 125, 123, 121


def _check(address: int, count: int, limit: int) -> None:
    """As pymodbus's PDU checks: a ParameterException (a ModbusException) before sending."""
    if not 0 <= address <= 0xFFFF:
        raise ParameterException(f"address {address} is not 0...65535")
    if not 1 <= count <= limit:
        raise ParameterException(f"{count} registers: not 1...{limit}")


class Response:
    """A decoded answer: the attributes of a pymodbus response that ``ModbusLink`` reads."""

    __slots__ = ("bits", "exception_code", "function_code", "registers")

    def __init__(
        self,
        function_code: int,
        registers: list[int] | None = None,
        exception_code: int = 0,
        bits: list[bool] | None = None,
    ) -> None:
        self.function_code = function_code
        self.registers = registers if registers is not None else []
        self.exception_code = exception_code
        self.bits = bits if bits is not None else []

    def isError(self) -> bool:
        return self.function_code > 0x80


def decode_response(pdu: bytes) -> Response:
    """The answer in ``pdu`` (function code first); ModbusIOException if it cannot be one.

    As pymodbus: a byte count larger than the data is an error, data beyond it is ignored.
    """
    code = pdu[0]
    if code & 0x80:
        return Response(code, exception_code=pdu[1])
    if code in (3, 4, 23):
        count = pdu[1]
        if count + 2 > len(pdu):
            raise ModbusIOException(f"byte count {count} > length of the data {len(pdu) - 2}")
        return Response(code, list(struct.unpack_from(f">{count // 2}H", pdu, 2)))
    if code in (6, 16):
        if len(pdu) < 5:
            raise ModbusIOException(f"function {code}: {len(pdu)} bytes, expected 5")
        return Response(code, [_HH.unpack_from(pdu, 1)[1]] if code == 6 else [])
    cls = RESPONSES.get(code)
    if cls is None:
        raise ModbusIOException(f"unknown function code {code} in the answer")
    response = cls()
    response.decode(pdu[1:])
    return Response(code, list(response.registers), bits=list(response.bits))
