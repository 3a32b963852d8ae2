"""`flytower simulate` as a real process tree: split over children, served, stopped, killed.

mbpoll (an independent Modbus master) checks that every part of a split venue is served and
that the control endpoint's e-stop reaches the drives; the process tree is checked by PID in
/proc, so an orphaned child fails the test.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, free_port, wait_for_port, wait_until, write_venue

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a reaper (a container's PID 1 may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started `flytower simulate` processes; anything left is killed (and fails nothing)."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()  # its children follow (PR_SET_PDEATHSIG)
            proc.wait()


def simulate(
    tree: list[subprocess.Popen[bytes]], venue: Path, *args: str
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "simulate", str(venue), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    tree.append(proc)
    return proc


def three_hoists(tmp_path: Path) -> tuple[Path, int, int]:
    a, b = free_port(), free_port()
    venue = write_venue(
        tmp_path,
        [
            {"id": "h1", "port": a},
            {"id": "h2", "port": b, "unit": 1},
            {"id": "h3", "port": b, "unit": 2},
        ],
    )
    return venue, a, b


async def status_word(port: int, unit: int = 1) -> int:
    exe = shutil.which("mbpoll")
    if exe is None:
        pytest.fail("mbpoll is not installed: run `make test`, which installs it")
    proc = await asyncio.create_subprocess_exec(
        *[exe, "-m", "tcp", "-p", str(port), "-a", str(unit), "-t", "4", "-0", "-1"],
        *["-r", "6", "-c", "1", "127.0.0.1"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out = (await proc.communicate())[0].decode()
    assert proc.returncode == 0, out
    match = re.search(r"^\[6\]:\s+(-?\d+)", out, re.MULTILINE)
    assert match is not None, out
    return int(match[1]) & 0xFFFF


async def get(port: int, path: str) -> Any:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/sim/v1") as client:
        response = await client.get(path)
        response.raise_for_status()
        return response.json()


async def post(port: int, path: str, body: dict[str, Any]) -> Any:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/sim/v1") as client:
        response = await client.post(path, json=body)
        response.raise_for_status()
        return response.json()


async def started(proc: subprocess.Popen[bytes], control: int) -> list[int]:
    """Wait for the endpoint; the PIDs of the simulator processes behind it."""
    await asyncio.to_thread(wait_for_port, control, 30, proc)
    stats = await get(control, "/stats")
    return [p["pid"] for p in stats["processes"]]


async def test_two_processes_serve_every_part_and_stop_cleanly_on_sigterm(
    tmp_path: Path, tree: list[subprocess.Popen[bytes]]
) -> None:
    venue, a, b = three_hoists(tmp_path)
    control = free_port()
    proc = simulate(tree, venue, "--processes", "2", "--control-port", str(control))
    children = await started(proc, control)
    assert len(children) == 2
    assert all(parent_of(pid) == proc.pid for pid in children)
    health = await get(control, "/health")
    assert health == {"ready": True, "pid": proc.pid, "devices": 3, "processes": 2}
    by_pid = {p["pid"]: p["devices"] for p in (await get(control, "/stats"))["processes"]}
    assert sorted(by_pid.values()) == [1, 2], "the two units behind one port stay together"

    estop = 0x20
    assert not await status_word(a) & estop
    opened = await post(control, "/estop", {"open": True})
    assert sorted(opened["devices"]) == ["h1", "h2", "h3"]
    for port, unit in [(a, 1), (b, 1), (b, 2)]:
        assert await status_word(port, unit) & estop
    assert (await get(control, "/devices/h3"))["active"] == {"estop": {}}
    await post(control, "/estop", {"open": False})
    assert not await status_word(b, 2) & estop

    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.to_thread(proc.communicate, timeout=20)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err, err.decode()
    assert not [pid for pid in children if alive(pid)]


async def test_children_die_with_a_killed_parent(
    tmp_path: Path, tree: list[subprocess.Popen[bytes]]
) -> None:
    venue, _, _ = three_hoists(tmp_path)
    control = free_port()
    proc = simulate(tree, venue, "--processes", "2", "--control-port", str(control))
    children = await started(proc, control)
    proc.kill()
    await asyncio.to_thread(proc.wait)

    async def orphans_gone() -> bool:
        return not any(alive(pid) for pid in children)

    await wait_until(orphans_gone, 15, f"children {children} to die with their parent")


async def test_a_dead_child_stops_the_whole_run(
    tmp_path: Path, tree: list[subprocess.Popen[bytes]]
) -> None:
    venue, _, _ = three_hoists(tmp_path)
    control = free_port()
    proc = simulate(tree, venue, "--processes", "2", "--control-port", str(control))
    children = await started(proc, control)
    os.kill(children[0], signal.SIGKILL)
    _, err = await asyncio.to_thread(proc.communicate, timeout=20)
    assert proc.returncode == 1
    assert f"simulator process {children[0]} exited" in err.decode()
    assert not alive(children[1])


async def test_problems_of_every_child_are_reported_together(
    tmp_path: Path, tree: list[subprocess.Popen[bytes]]
) -> None:
    venue, _, _ = three_hoists(tmp_path)
    text = venue.read_text()
    text = text.replace("watchdog_ms_default = 200 }", "watchdog_ms_default = 200, colour = 1 }")
    venue.write_text(text)
    proc = simulate(tree, venue, "--processes", "2", "--control-port", str(free_port()))
    _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 1
    lines = err.decode().splitlines()
    assert sum("unknown parameter(s) colour" in line for line in lines) == 3, lines
    assert f"{venue}: devices[0] (h1).simulate" in err.decode()
    assert "3 problem(s) found" in lines[-1]


async def test_ctrl_c_stops_a_single_process_without_a_traceback(
    tmp_path: Path, tree: list[subprocess.Popen[bytes]]
) -> None:
    venue, a, _ = three_hoists(tmp_path)
    control = free_port()
    proc = simulate(tree, venue, "--control-port", str(control))
    assert await started(proc, control) == [proc.pid]
    await asyncio.to_thread(wait_for_port, a, 10, proc)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.to_thread(proc.communicate, timeout=20)
    assert proc.returncode == 0
    assert b"Traceback" not in err


async def test_a_taken_control_port_is_a_clear_error(
    tmp_path: Path, tree: list[subprocess.Popen[bytes]]
) -> None:
    venue, _, _ = three_hoists(tmp_path)
    control = free_port()
    first = simulate(tree, venue, "--control-port", str(control))
    await started(first, control)
    second = simulate(tree, venue, "--processes", "2", "--control-port", str(control))
    _, err = await asyncio.to_thread(second.communicate, timeout=20)
    assert second.returncode == 1
    assert f"error: [Errno 98] control endpoint 127.0.0.1:{control}: " in err.decode()
    assert b"Traceback" not in err


async def test_sixty_four_axes_over_two_processes_start_within_the_budget(
    tmp_path: Path, tree: list[subprocess.Popen[bytes]]
) -> None:
    """The large venue's machinery (64 axes, 16 gateways) ready inside the 30 s budget."""
    ports = [free_port() for _ in range(16)]
    devices = [{"id": f"a{i}", "port": ports[i % 16], "unit": i // 16 + 1} for i in range(64)]
    venue = write_venue(tmp_path, devices)
    control = free_port()
    proc = simulate(tree, venue, "--processes", "2", "--control-port", str(control))
    await asyncio.to_thread(wait_for_port, control, 30, proc)
    health = await get(control, "/health")
    assert health.items() >= {"ready": True, "devices": 64, "processes": 2}.items()
    for port in ports:
        await asyncio.to_thread(wait_for_port, port, 5, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.to_thread(proc.communicate, timeout=20)
    assert proc.returncode == 0
    started_in = re.search(rb"started in ([\d.]+) s", err)
    assert started_in is not None, err.decode()
    print(f"64 axes in 2 processes ready in {started_in[1].decode()} s")


async def test_the_service_runs_the_venue_simulators_as_flytower_simulate(
    tmp_path: Path,
) -> None:
    """`flytower run` starts `flytower simulate` as its child; the hoist it serves comes online
    over Modbus; stopping the service leaves no simulator behind. The service waits for the
    control endpoint the venue names before it starts its drivers."""
    from edge.service import Service
    from tests.conftest import run_service

    venue = write_venue(tmp_path, [{"id": "h", "port": free_port()}])
    control = free_port()
    venue.write_text(venue.read_text() + f"\n[simulation]\ncontrol_port = {control}\n")
    async with run_service(venue, api_port=0, simulators=True) as service:
        service_: Service = service

        async def online() -> bool:
            h = service_.health.get("h")
            return h is not None and h.state.value == "online"

        await wait_until(online, 20, "the simulated hoist online")
        stats = await get(control, "/stats")
        pids = [p["pid"] for p in stats["processes"]]
        cmdline = (await asyncio.to_thread(Path(f"/proc/{pids[0]}/cmdline").read_bytes)).split(
            b"\0"
        )
        assert cmdline[1:4] == [b"-m", b"edge.cli", b"simulate"]
    assert not [pid for pid in pids if alive(pid)]


async def test_the_service_does_not_run_without_its_simulators(tmp_path: Path) -> None:
    """Another process on the venue's control port: the simulators exit with a clear error, and
    so does the service (never driving a venue whose simulators are someone else's)."""
    from edge.config import load_venue
    from edge.service import Service, SimulatorsFailed

    venue = write_venue(tmp_path, [{"id": "h", "port": free_port()}])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        venue.write_text(venue.read_text() + f"\n[simulation]\ncontrol_port = {port}\n")
        service = Service(load_venue(venue), api_port=0, simulators=True)
        with pytest.raises(SimulatorsFailed, match="exited with status 1 before they were ready"):
            await asyncio.wait_for(service.run(), 60)
