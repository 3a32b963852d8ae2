"""mbpoll (libmodbus) as an independent Modbus master against our hoist simulator.

The simulator runs as its own process (``python -m simulators VENUE``); mbpoll reads the status
block and writes the command block, and the drive must react as
docs/interfaces/modbus-machinery.md says. Nothing of Flytower's driver is involved, so a map
that our driver and simulator both got wrong in the same way would show here.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_port, wait_until, write_venue

pytestmark = pytest.mark.integration


async def mbpoll(port: int, *args: str) -> tuple[int, str]:
    exe = shutil.which("mbpoll")
    if exe is None:
        pytest.fail("mbpoll is not installed: run `make test`, which installs it")
    proc = await asyncio.create_subprocess_exec(
        exe,
        "-m",
        "tcp",
        "-p",
        str(port),
        "-a",
        "1",
        "-t",
        "4",
        "-0",
        "-1",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def read(port: int, start: int, count: int) -> list[int]:
    rc, out = await mbpoll(port, "-r", str(start), "-c", str(count), "127.0.0.1")
    assert rc == 0, out
    # mbpoll prints a register above 32767 as signed, with the unsigned value in brackets.
    values = dict(re.findall(r"^\[(\d+)\]:\s+(-?\d+)", out, re.MULTILINE))
    return [int(values[str(a)]) & 0xFFFF for a in range(start, start + count)]


async def write(port: int, start: int, *values: int) -> tuple[int, str]:
    return await mbpoll(port, "-r", str(start), "127.0.0.1", *map(str, values))


@pytest.fixture
def hoist_port(tmp_path: Path, simulator_process: Callable[[Path], subprocess.Popen[bytes]]) -> int:
    port = free_port()
    proc = simulator_process(write_venue(tmp_path, [{"id": "h", "port": port, "start": 1000}]))
    wait_for_port(port, proc=proc)
    return port


async def test_mbpoll_reads_the_status_block_as_documented(hoist_port: int) -> None:
    status = await read(hoist_port, 0, 11)
    assert (status[0] << 16 | status[1]) == 10000  # position 1000.0 mm, int32 high word first
    assert status[2:4] == [0, 0]  # velocity 0
    assert status[6] == 9  # §5.1: power-up at rest on target = ready + in_position
    assert status[7] == 0  # no fault
    commands = await read(hoist_port, 100, 7)
    assert commands[:2] == [0, 10000]  # §7: the power-up target is the actual position
    assert commands[2:5] == [500, 500, 0]


async def test_mbpoll_writes_the_command_block_and_the_drive_reacts(hoist_port: int) -> None:
    rc, out = await write(hoist_port, 100, 0, 35000)  # target 3500.0 mm, one FC 16
    assert rc == 0, out
    assert (await read(hoist_port, 100, 2)) == [0, 35000]
    # §7.2 rule 5: enabling without a heartbeat latches fault 1 and nothing moves.
    rc, out = await write(hoist_port, 104, 3)
    assert rc == 0, out

    async def watchdog_fault() -> bool:
        status = await read(hoist_port, 0, 11)
        return status[7] == 1 and bool(status[6] & 0x10) and not status[6] & 0x2

    await wait_until(watchdog_fault, 5, "fault 1 (watchdog)")
    status = await read(hoist_port, 0, 4)
    assert (status[0] << 16 | status[1]) == 10000 and status[2:4] == [0, 0]
    # §7.7: a fault reset (control word 8) clears it and leaves the drive disabled.
    rc, out = await write(hoist_port, 104, 8)
    assert rc == 0, out

    async def cleared() -> bool:
        status = await read(hoist_port, 0, 11)
        return status[7] == 0 and status[6] & 0x13 == 0x1  # ready, not enabled, no fault

    await wait_until(cleared, 5, "fault cleared")


@pytest.mark.parametrize(
    ("start", "values"),
    [(5, (7,)), (105, (1, 2, 3)), (50, (1,))],
    ids=["status block", "past the command block", "unmapped"],
)
async def test_mbpoll_writes_outside_the_command_block_are_refused(
    hoist_port: int, start: int, values: tuple[int, ...]
) -> None:
    rc, out = await write(hoist_port, start, *values)
    assert rc != 0
    assert "Illegal data address" in out
    assert (await read(hoist_port, 104, 3))[0] == 0  # nothing of it was written


async def test_mbpoll_reads_into_unmapped_registers_are_refused(hoist_port: int) -> None:
    rc, out = await mbpoll(hoist_port, "-r", "0", "-c", "12", "127.0.0.1")
    assert rc != 0
    assert "Illegal data address" in out
