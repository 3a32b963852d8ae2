"""Shared fixtures: real servers on free loopback ports, and hygiene checks.

Real servers (Mosquitto now; OLA, JACK, VictoriaMetrics later) are started once per session by
fixtures, remembered by PID and stopped by PID. Each writes a log file; when a test fails, the
tail of every server log is attached to its report.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import settings

from edge.config import load_venue
from edge.hil.run import hold_enable as keep_enabled
from edge.service import Service
from simulators import runner as simrunner
from simulators import venue as simvenue

REPO = Path(__file__).resolve().parent.parent

# CI runs the fuzzers on fixed seeds and without per-example deadlines: a failure there must
# reproduce, and a loaded 2-core runner must not fail a test for being slow. Developers' runs
# stay random and keep exploring; what they find goes into explicit tests.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def _ephemeral_floor() -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


_EPHEMERAL = _ephemeral_floor()
_handed: set[int] = set()
_pick = random.Random(os.getpid() ^ time.monotonic_ns())


def free_port() -> int:
    """A loopback port free for TCP and UDP, below the kernel's ephemeral range.

    A port the kernel hands out (bind to 0) is one it also picks for outgoing connections: a
    test's MQTT or HTTP client could take it before the server the test starts binds it (seen
    in CI: a controller whose API port was taken exited at start). Ports below the range are
    never picked that way, and none is handed out twice in a session."""
    for _ in range(200):
        port = _pick.randrange(10000, max(_EPHEMERAL, 10100))
        if port in _handed:
            continue
        try:
            with socket.socket() as t, socket.socket(type=socket.SOCK_DGRAM) as u:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, timeout_s: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


@dataclass
class RealServer:
    name: str
    host: str
    port: int
    pid: int
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


_SERVERS: list[RealServer] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for server in _SERVERS:
            report.sections.append((f"{server.name} log (pid {server.pid})", server.tail()))
    return report


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 5) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def stop_all(procs: Iterable[subprocess.Popen[bytes]], timeout_s: float = 15) -> None:
    """SIGTERM to every one first (they stop together, as a venue's nodes do), then wait for
    each; SIGKILL what has not exited within ``timeout_s``."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


async def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """``_stop`` without blocking the event loop (a broker restarted mid-test)."""
    await asyncio.to_thread(_stop, proc, timeout_s)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    """A real Mosquitto broker on a free loopback port, for the whole session."""
    folder = tmp_path_factory.mktemp("mosquitto")
    port = free_port()
    proc = start_mosquitto(folder, port)
    server = RealServer("mosquitto", "127.0.0.1", port, proc.pid, folder / "mosquitto.log")
    _SERVERS.append(server)
    try:
        yield server
    finally:
        _stop(proc)
        _SERVERS.remove(server)


@pytest.fixture(autouse=True)
async def no_lingering_tasks() -> AsyncIterator[None]:
    """Fail any test that leaves asyncio tasks running behind it (aioesphomeapi's rule)."""
    before = asyncio.all_tasks()
    yield
    await asyncio.sleep(0)  # let tasks that were just cancelled finish
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    if left:
        where = "; ".join(sorted(f"{t.get_name()} at {_await_chain(t)}" for t in left))
        for t in left:
            t.cancel()
        _, pending = await asyncio.wait(left, timeout=5)
        refused = f" ({len(pending)} refused to be cancelled)" if pending else ""
        pytest.fail(f"test left {len(left)} asyncio task(s) running{refused}: {where}")


def start_mosquitto(folder: Path, port: int, persistence: bool = False) -> subprocess.Popen[bytes]:
    """Start a Mosquitto on ``port``, config and log in ``folder``; wait until it listens."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        pytest.fail("mosquitto is not installed: run `make test`, which installs it")
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "mosquitto.conf"
    # Run as us: as root, mosquitto would switch to its own user and lose its log folder.
    lines = [
        f"user {getpass.getuser()}",
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        f"log_dest file {folder / 'mosquitto.log'}",
        "log_type error\nlog_type warning\nlog_type notice\nlog_type information",
    ]
    lines += (
        [f"persistence true\npersistence_location {folder}/"]
        if persistence
        else ["persistence false"]
    )
    conf.write_text("\n".join(lines) + "\n")
    with open(folder / "stdout.log", "ab") as out:
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    wait_for_port(port, proc=proc)
    return proc


VENUE_TEMPLATE = """
version = 1
[venue]
id = "test"
[[nodes]]
id = "stage"
[api]
host = "127.0.0.1"
port = 0
[auth]
enabled = false  # access control has its own tests (tests/integration/test_auth_api.py)
[mqtt]
mode = "{mqtt_mode}"
host = "127.0.0.1"
port = {mqtt_port}
[telemetry]
store = "telemetry.sqlite3"
"""

DEVICE_TEMPLATE = """
[[devices]]
id = "{id}"
profile = "hoist"
poll_hz = {poll_hz}
transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {port}, unit = {unit}, \
timeout_s = 0.3 }}
simulate = {{ model = "hoist", start_position_mm = {start}, watchdog_ms_default = {watchdog_ms} }}
"""


def write_venue(
    folder: Path,
    devices: list[dict[str, object]],
    mqtt_mode: str = "off",
    mqtt_port: int = 1883,
) -> Path:
    """A venue file for tests; each device dict gives id, port and optionally unit, start,
    poll_hz and watchdog_ms (the simulated drive's watchdog, 200 ms by default)."""
    text = VENUE_TEMPLATE.format(mqtt_mode=mqtt_mode, mqtt_port=mqtt_port)
    for d in devices:
        text += DEVICE_TEMPLATE.format(
            **{"unit": 1, "start": 1000, "poll_hz": 20, "watchdog_ms": 200, **d}
        )
    path = folder / "venue.toml"
    path.write_text(text)
    return path


@pytest.fixture
def simulator_process(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `python -m simulators VENUE` as its own process, as `flytower run` does.

    ``start(venue, processes=1, control_port=None)``: the control endpoint listens on
    ``control_port``, or on a free port nobody asked for (never the shared default 18890).
    """
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        venue: Path, processes: int = 1, control_port: int | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"simulators-{len(procs)}.log", "wb")  # noqa: SIM115
        port = free_port() if control_port is None else control_port
        args = ["--control-port", str(port), "--processes", str(processes)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "simulators", str(venue), *args],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        procs.append(proc)
        server = RealServer("simulators", "127.0.0.1", port, proc.pid, Path(log.name))
        _SERVERS.append(server)
        return proc

    yield start
    for proc in procs:
        _stop(proc)
    _SERVERS[:] = [s for s in _SERVERS if s.name != "simulators"]


@contextlib.asynccontextmanager
async def run_service(venue_path: Path, **kwargs: Any) -> AsyncIterator[Service]:
    """Run the real service in this event loop; stop it and wait for a clean exit after."""
    service = Service(load_venue(venue_path), **kwargs)
    task = asyncio.create_task(service.run(), name="service")
    started = asyncio.create_task(service.started.wait(), name="service-started")
    try:
        await asyncio.wait([task, started], timeout=15, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what made the service fail to start
            raise RuntimeError("service exited during start")
        if not service.started.is_set():
            raise TimeoutError("service did not start within 15 s")
        yield service
    finally:
        started.cancel()
        service.stop()
        done, _ = await asyncio.wait([task, started], timeout=15)
        if task not in done:
            stuck = [f"{t.get_name()}: {_await_chain(t)}" for t in asyncio.all_tasks()]
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            pytest.fail("service did not stop within 15 s; tasks: " + "; ".join(stuck))
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


@contextlib.asynccontextmanager
async def hold_enable(api: httpx.AsyncClient, holder: str = "test desk") -> AsyncIterator[None]:
    """Hold the machinery's hold-to-run enable (docs/machinery.md) through the REST API, as a
    console does, renewed every 0.1 s; released on exit."""

    r = await api.post("/api/v1/machinery/enable", json={"holder": holder})
    assert r.status_code == 200, r.text  # held before the caller's first command
    task = asyncio.create_task(keep_enabled(api, holder))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(httpx.HTTPError, RuntimeError):  # RuntimeError: client closed
            await api.delete("/api/v1/machinery/enable", params={"holder": holder})


@contextlib.asynccontextmanager
async def operator_enable(service: Service, holder: str = "test operator") -> AsyncIterator[None]:
    """Hold the hold-to-run enable of an in-process service's supervisor directly (for tests of
    other front ends that move machinery: MQTT, OSC), renewed every 0.1 s."""
    sup = service.supervisor
    if sup is None:
        yield
        return
    sup.keep_enabled(holder)

    async def keep() -> None:
        while True:
            await asyncio.sleep(0.1)
            sup.keep_enabled(holder)

    task = asyncio.create_task(keep())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sup.release_enable(holder)


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def _await_chain(task: asyncio.Task[Any]) -> str:
    """Where a task is waiting, innermost last (get_stack shows only the outer frame)."""
    frames: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and len(frames) < 30:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            frames.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    return " > ".join(frames)


@contextlib.asynccontextmanager
async def simulators(venue_path: Path) -> AsyncIterator[int]:
    """The venue's simulated devices, served from this event loop; yields the control port."""
    ports: list[int] = []
    ready = asyncio.Event()

    def on_ready(port: int) -> None:
        ports.append(port)
        ready.set()

    venue = simvenue.load(venue_path)
    task = asyncio.create_task(
        simrunner.serve(venue, str(venue_path), port=0, ready=on_ready), name="sims"
    )
    try:
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait([task, waiter], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        if task.done():
            task.result()
        assert ready.is_set(), "simulators did not start within 10 s"
        yield ports[0]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
