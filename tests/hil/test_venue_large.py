"""Hardware-in-loop: the opera house (examples/venue-large.toml) simulated and served at scale.

`flytower simulate` runs the whole house in two processes, as its `[simulation]` table says;
`flytower run --no-simulators` is the service, in its own process as in production. The test
measures how long the simulated house takes to be ready, waits until the service reaches every
device it polls or subscribes to, and then prints the rates it achieved per protocol against
the rates the venue configures, from the service's API (`/api/v1/health` for states,
`/api/v1/devices` for each driver's counters) and the simulators' `/sim/v1/stats`.

Ports: the venue's own loopback ports are used as they are (Modbus TCP 16001-16013, OSC
53101-53104, sACN 15569, Art-Net 16455): the file is what is under test. The broker is the
session's Mosquitto instead of the embedded one (the only edit, besides an ephemeral API port),
so the MQTT load is carried by a real broker as in production.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_venue
from tests.conftest import RealServer, free_port

pytestmark = pytest.mark.hil

REPO = Path(__file__).resolve().parents[2]
LARGE = REPO / "examples" / "venue-large.toml"
PROCESSES = 2
START_LIMIT_S = 30.0  # the figure; asserted generously below (it is printed)
MEASURE_S = 6.0

EMBEDDED = '[mqtt]\nmode = "embedded"\nhost = "127.0.0.1"\nport = 18831\n'


def get(port: int, path: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as res:
        return json.load(res)


def wait_for(what: str, timeout_s: float, check: Any, procs: list[subprocess.Popen[bytes]]) -> Any:
    """Call ``check`` until it returns something true; fail if a process dies or time is up."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"{proc.args!r} exited with {proc.returncode} waiting for {what}")
        try:
            result = check()
            if result:
                return result
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what} {last_error}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def venue(tmp_path: Path, mosquitto: RealServer) -> Path:
    text = LARGE.read_text()
    assert EMBEDDED in text, "the large venue's [mqtt] table changed: update this test"
    mqtt = f'[mqtt]\nmode = "external"\nhost = "127.0.0.1"\nport = {mosquitto.port}\n'
    path = tmp_path / "venue-large.toml"
    path.write_text(text.replace(EMBEDDED, mqtt))
    return path


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes the test starts; stopped (SIGTERM, then SIGKILL) in reverse order after."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in reversed(procs):
        stop(proc)
    for log in sorted(tmp_path.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"--- {log.name} (last lines)\n" + "\n".join(tail))


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edge.cli", *args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def device_stats(api: int) -> tuple[float, dict[str, dict[str, Any]]]:
    return time.monotonic(), {d["id"]: d for d in get(api, "/api/v1/devices", 10)}


def test_large_venue_starts_fast_and_runs_at_its_rates(
    venue: Path, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    config = load_venue(venue)
    polled = {d.id: d for d in config.devices if d.transport.kind in ("modbus-tcp", "mqtt", "osc")}
    control, api = free_port(), free_port()

    started = time.monotonic()
    sims = spawn(
        ["simulate", str(venue), "--processes", str(PROCESSES), "--control-port", str(control)],
        tmp_path / "simulators.log",
    )
    processes.append(sims)
    health = wait_for(
        "the simulators' control endpoint",
        2 * START_LIMIT_S,
        lambda: get(control, "/sim/v1/health"),
        processes,
    )
    startup_s = time.monotonic() - started
    print(
        f"\nsimulators: {health['devices']} devices in {health['processes']} process(es) "
        f"ready in {startup_s:.1f} s (limit {START_LIMIT_S:.0f} s)"
    )
    assert health["ready"] and health["devices"] == len(config.devices)
    assert startup_s < START_LIMIT_S

    service = spawn(
        ["run", str(venue), "--no-simulators", "--port", str(api)], tmp_path / "service.log"
    )
    processes.append(service)

    def all_online() -> bool:
        states = get(api, "/api/v1/health")["devices"]
        return all(states.get(d) == "online" for d in polled)

    wait_for(f"{len(polled)} polled devices online", 40, all_online, processes)
    reached_s = time.monotonic() - started
    print(f"service: all {len(polled)} polled/subscribed devices online after {reached_s:.1f} s")

    # Counters over a window: what each protocol achieved against what the venue asks for.
    sims_cpu0 = get(control, "/sim/v1/stats")
    service_cpu0 = cpu_s(service.pid)
    t0, before = device_stats(api)
    time.sleep(MEASURE_S)
    t1, after = device_stats(api)
    service_cpu1 = cpu_s(service.pid)
    sims_stats = get(control, "/sim/v1/stats")
    dt = t1 - t0

    rates: dict[str, dict[str, float]] = {}
    for dev_id, dev in polled.items():
        kind = dev.transport.kind
        a, b = before[dev_id]["stats"], after[dev_id]["stats"]
        r = rates.setdefault(kind, {"configured": 0.0, "cycles": 0, "missed": 0, "requests": 0})
        r["configured"] += dev.poll_hz
        for key in ("cycles", "missed", "requests"):
            r[key] += b.get(key, 0) - a.get(key, 0)
    print(f"achieved over {dt:.1f} s (a cycle is a poll deadline; missed: failed or late):")
    for protocol, r in sorted(rates.items()):
        print(
            f"  {protocol:<11} {(r['cycles'] - r['missed']) / dt:7.1f} good polls/s of "
            f"{r['configured']:.1f} configured, missed {r['missed']} of {r['cycles']}, "
            f"{r['requests'] / dt:7.1f} requests or messages/s"
        )
    for name, family in sorted(sims_stats.get("families", {}).items()):
        print(f"  simulators {name}: {json.dumps(family, sort_keys=True)[:300]}")
    sim_cpu = sum(p["cpu_s"] for p in sims_stats["processes"]) - sum(
        p["cpu_s"] for p in sims_cpu0["processes"]
    )
    print(
        f"CPU: service {100 * (service_cpu1 - service_cpu0) / dt:.0f} % of a core, "
        f"simulators {100 * sim_cpu / dt:.0f} % (in {len(sims_stats['processes'])} processes)"
    )

    # Every polled and subscribed device was reached (above) and is still answering; the rates
    # are figures to read, not to assert (a loaded 2-core runner must not fail the test).
    for protocol, r in rates.items():
        assert r["requests"] > 0, (protocol, r)
    states = get(api, "/api/v1/health")["devices"]
    assert [d for d in polled if states.get(d) != "online"] == []
