"""Chaos: devices that go silent, answer slowly or drop off the broker, under the running demo.

The demo venue runs as ``flytower run`` with its simulators (``tests/peers/demo.py``); the
faults are the simulators' own (``POST /sim/v1/devices/{id}/faults/{fault}``), held 5 s (30 s
at full length), then cleared. What must hold:

- **a dead device never delays a live one**: lx-bar-1 stops answering (``comms_loss``), and
  hoist-2 behind the same gateway connection (port 15022) keeps its 10 Hz series without a gap;
  wagon-1 answers 50 ms late (``slow_response``), and the revolve beside it (port 15026) keeps
  its series too; wagon-1 itself stays online;
- **faults are seen and cleared on their own**: lx-bar-1 goes offline with its
  ``device-offline`` alarm; the stage climate sensor's gateway drops its broker connection
  (``dropout``, its will fires) and goes offline; once the faults end, both come back online
  with new readings and the alarm's condition clears, without anyone touching the service;
- **machinery stopped safely**: hoist-1 loses its connection mid-move (``comms_loss`` drop):
  its drive stops on its own watchdog (the simulator's ground truth), the service marks it
  offline and aborts the move with the reason; after the fault it is polled again and stays
  where it stopped (nothing is replayed);
- **0 readings and 0 journal events lost**: the live devices' series are whole (above), and
  every journal event from before the faults is there after them.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.conftest import full_length
from tests.chaos.test_disk_full import wait
from tests.chaos.test_kill_mid_show import Enable, fly_hoist, truth
from tests.conftest import stop_all
from tests.peers.demo import admin_token, demo_venue

pytestmark = pytest.mark.chaos

MAX_GAP_S = 0.5  # a 10 Hz series with a gap above this missed polls


def fault(sim: str, device: str, name: str, **params: Any) -> None:
    r = httpx.post(f"{sim}/devices/{device}/faults/{name}", json=params, timeout=5)
    assert r.status_code in (200, 201, 204), f"{device} {name}: {r.status_code} {r.text}"


def clear(sim: str, device: str) -> None:
    r = httpx.delete(f"{sim}/devices/{device}/faults", timeout=5)
    assert r.status_code in (200, 204), f"{device}: {r.status_code} {r.text}"


def state(c: httpx.Client, device: str) -> str:
    return str(c.get(f"/api/v1/devices/{device}").json()["health"]["state"])


def series(
    c: httpx.Client, device: str, start: float, end: float, point: str = "position"
) -> list[float]:
    h = c.get(
        f"/api/v1/devices/{device}/points/{point}/history",
        params={"start": start, "end": end, "limit": 100_000},
    ).json()
    return [float(t) for t in h["ts"]]


def largest_gap(ts: list[float], start: float, end: float) -> float:
    edges = [start, *sorted(t for t in ts if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(edges))


def offline_alarm(c: httpx.Client, device: str) -> dict[str, Any] | None:
    found = c.get(
        "/api/v1/alarms", params={"device": device, "rule": "device-offline", "all": "true"}
    ).json()["alarms"]
    return found[0] if found else None


@pytest.mark.timeout(600)
def test_dead_slow_and_dropped_devices_under_the_running_show(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    hold_s = 30.0 if full_length(request.config) else 5.0
    demo = demo_venue(tmp_path / "demo")
    token = admin_token(demo.venue)
    enable = Enable(demo.api, token)
    demo.start()
    try:
        with demo.client(token) as c:
            live = ("hoist-1", "hoist-2", "lx-bar-1", "revolve", "wagon-1", "climate-stage")
            wait("the devices online", lambda: all(state(c, d) == "online" for d in live))
            assert c.post("/api/v1/playback/go", json={}).status_code == 200
            time.sleep(1)
            journal = c.get("/api/v1/journal", params={"limit": 10000}).json()["events"]

            # --- a dead, a slow and a dropped device, for hold_s -------------------------
            t0 = time.time()
            fault(demo.sim, "lx-bar-1", "comms_loss", mode="silent")
            fault(demo.sim, "wagon-1", "slow_response", delay_ms=50)
            fault(demo.sim, "climate-stage", "dropout", duration_s=hold_s, drop_connection=True)
            seen = wait("lx-bar-1 offline", lambda: state(c, "lx-bar-1") == "offline", 15)
            print(f"\nlx-bar-1 offline {seen:.2f} s after it went silent")
            wait("the climate sensor offline", lambda: state(c, "climate-stage") != "online", 15)
            wait(
                "lx-bar-1's device-offline alarm",
                lambda: (a := offline_alarm(c, "lx-bar-1")) is not None and a["active"],
                10,
            )
            time.sleep(max(0.0, hold_s - (time.time() - t0)))
            assert state(c, "wagon-1") == "online", "50 ms late is within the timeout"
            t1 = time.time()
            clear(demo.sim, "lx-bar-1")
            clear(demo.sim, "wagon-1")
            time.sleep(1)  # the window's last readings reach the store
            for device, beside in (("hoist-2", "lx-bar-1"), ("revolve", "wagon-1")):
                gap = largest_gap(series(c, device, t0 - 1, t1 + 1), t0, t1)
                print(f"{device}, beside {beside}: largest gap {gap:.2f} s over {t1 - t0:.1f} s")
                assert gap < MAX_GAP_S, f"{device} was delayed by {beside}: a {gap:.2f} s gap"
            back = wait("lx-bar-1 online again", lambda: state(c, "lx-bar-1") == "online", 30)
            print(f"lx-bar-1 online {back:.2f} s after the fault ended")
            wait(
                "lx-bar-1's alarm condition cleared",
                lambda: not (offline_alarm(c, "lx-bar-1") or {"active": True})["active"],
                10,
            )
            wait(
                "the climate sensor online again, with new readings",
                lambda: (
                    state(c, "climate-stage") == "online"
                    and any(
                        t > t0 + hold_s
                        for t in series(c, "climate-stage", t0, time.time() + 1, "temperature")
                    )
                ),
                30,
            )

            # --- hoist-1 loses its connection mid-move -----------------------------------
            enable.start()
            wait(
                "the enable held",
                lambda: c.get("/api/v1/machinery").json().get("enable", {}).get("live", False),
                10,
            )
            fly_hoist(c, demo.sim)
            wait("hoist-1 moving", lambda: truth(demo.sim, "hoist-1")["moving"], 10)
            fault(demo.sim, "hoist-1", "comms_loss", mode="drop")
            cut = time.monotonic()
            wait("hoist-1 stopped by its drive", lambda: not truth(demo.sim, "hoist-1")["moving"])
            stopped = time.monotonic() - cut
            at = truth(demo.sim, "hoist-1")
            wait("hoist-1 offline", lambda: state(c, "hoist-1") == "offline", 15)
            axis = c.get("/api/v1/machinery").json()["axes"]["hoist-1"]
            print(
                f"hoist-1 cut mid-move: its drive stopped {stopped:.2f} s after "
                f"(fault {at['fault']}); the service's abort: {axis.get('last_abort')}"
            )
            assert axis.get("last_abort"), "the move was not aborted with a reason"
            time.sleep(hold_s)
            clear(demo.sim, "hoist-1")
            wait("hoist-1 polled again", lambda: state(c, "hoist-1") == "online", 30)
            time.sleep(2)  # nothing is replayed: the hoist stays where it stopped
            now = truth(demo.sim, "hoist-1")
            assert not now["moving"]
            assert abs(now["position_mm"] - at["position_mm"]) < 1.0

            kept = {
                e["seq"]: (e["command"], e["result"])
                for e in c.get("/api/v1/journal", params={"limit": 10000}).json()["events"]
            }
            lost = [e for e in journal if kept.get(e["seq"]) != (e["command"], e["result"])]
            assert not lost, f"{len(lost)} journal events lost: {lost[:3]}"
    finally:
        enable.stop.set()
        stop_all([p for p in (demo.proc, demo.sims) if p is not None])
