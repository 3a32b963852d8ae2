"""OSC devices: the DSP matrix profile polled and written against an independent OSC peer.

The peer is python-osc's own UDP server, playing a DSP matrix by the convention of its device
page (docs/interfaces/devices/dsp_matrix.md): a message with one argument sets the address, a
message with none asks for it and is answered from the server's socket with the address and
the value. It can be told to stay silent, or to answer nonsense, to show BAD readings with a
reason and an offline device that comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_server import ThreadingOSCUDPServer

from drivers.model import (
    PROFILE_DIR,
    CommandError,
    Device,
    OscTransport,
    Quality,
    Reading,
    load_profile,
)
from drivers.osc.device import OscDeviceDriver
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


@dataclass
class Matrix:
    server: ThreadingOSCUDPServer
    values: dict[str, Any] = field(default_factory=dict)
    silent: bool = False
    nonsense: bool = False
    received: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


@pytest.fixture
def matrix() -> Iterator[Matrix]:
    dispatcher = Dispatcher()
    server = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    m = Matrix(server)
    for i in range(1, 9):
        for side in ("in", "out"):
            m.values[f"/{side}/{i}/gain"] = 0.0
            m.values[f"/{side}/{i}/mute"] = False
    m.values["/preset"] = 1

    def handle(client: tuple[str, int], address: str, *args: Any) -> None:
        m.received.append((address, args))
        if args:
            m.values[address] = args[0]
            return
        if m.silent or address not in m.values:
            return
        builder = OscMessageBuilder(address)
        builder.add_arg("loud" if m.nonsense else m.values[address])
        server.socket.sendto(builder.build().dgram, client)

    dispatcher.set_default_handler(handle, needs_reply_address=True)
    thread = threading.Thread(target=server.serve_forever, name="osc-matrix", daemon=True)
    thread.start()
    try:
        yield m
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.asynccontextmanager
async def driver_for(matrix: Matrix, readings: list[Reading]) -> AsyncIterator[OscDeviceDriver]:
    profile = load_profile(PROFILE_DIR / "dsp_matrix.toml")
    transport = OscTransport(kind="osc", host="127.0.0.1", port=matrix.port)
    device = Device("matrix-1", profile, transport, poll_hz=5)

    async def sink(batch: list[Reading]) -> None:
        readings.extend(batch)

    driver = OscDeviceDriver(device, sink, timeout_s=0.3)
    task = asyncio.create_task(driver.run(), name="osc-device")
    try:
        yield driver
    finally:
        driver.stop()
        await asyncio.wait_for(task, 5)


def latest(readings: list[Reading], point: str) -> Reading | None:
    return next((r for r in reversed(readings) if r.point == point), None)


async def test_points_are_read_and_written(matrix: Matrix) -> None:
    matrix.values["/in/3/gain"] = -12.5
    matrix.values["/out/1/mute"] = True
    readings: list[Reading] = []
    async with driver_for(matrix, readings) as driver:

        async def read() -> bool:
            r = latest(readings, "in_3_gain")
            return r is not None and r.value == -12.5

        await wait_until(read, 5, "the matrix's input 3 gain read")
        assert latest(readings, "out_1_mute").value is True  # type: ignore[union-attr]
        assert latest(readings, "preset").value == 1  # type: ignore[union-attr]
        assert driver.health.state.value == "online", driver.health.reason

        written = await driver.command("set_in_1_gain", {"gain": -6.0})
        assert written == [("in_1_gain", -6.0)]

        async def applied() -> bool:
            return matrix.values["/in/1/gain"] == -6.0

        await wait_until(applied, 5, "the matrix took the new gain")
        await driver.command("set_in_1_mute", {"muted": True})
        await wait_until(lambda: _is(matrix, "/in/1/mute", True), 5, "the matrix muted input 1")

        with pytest.raises(CommandError, match="above the maximum"):
            await driver.command("set_in_1_gain", {"gain": 40.0})
        with pytest.raises(CommandError, match="expected true or false"):
            await driver.command("set_in_1_mute", {"muted": "yes"})


async def _is(matrix: Matrix, address: str, value: Any) -> bool:
    return bool(matrix.values.get(address) == value)


async def test_silence_and_nonsense_are_bad_readings_with_reasons(matrix: Matrix) -> None:
    readings: list[Reading] = []
    async with driver_for(matrix, readings) as driver:

        async def online() -> bool:
            return driver.health.state.value == "online"

        await wait_until(online, 5, "online")
        matrix.nonsense = True

        async def bad() -> bool:
            r = latest(readings, "in_1_gain")
            return r is not None and r.quality is Quality.BAD

        await wait_until(bad, 5, "a BAD reading for a nonsense answer")
        assert "expected a number" in driver.health.reason

        matrix.nonsense, matrix.silent = False, True

        async def offline() -> bool:
            return driver.health.state.value == "offline"

        await wait_until(offline, 10, "offline after polls with no answer")
        assert "no answer" in driver.health.reason
        matrix.silent = False
        await wait_until(online, 10, "back online when the matrix answers again")
