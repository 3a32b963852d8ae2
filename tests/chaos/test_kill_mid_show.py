"""Chaos: ``kill -9`` of the service mid-show, with a hoist moving, and the service started
again as its supervisor would (``deploy/flytower.service``: ``Restart=always``).

The demo venue's simulators run as a process of their own, as real machinery outlives its
controller. Before the kill the show runs: the operator holds the enable and GOes three cues, the
third of which flies hoist-1 in. What must hold:

- **machinery stopped safely**: the hoist's drive stops on its own watchdog once the service's
  heartbeat is gone (ground truth from the simulator), and after the restart it stays where it
  stopped: no command is replayed;
- **0 journal events lost**: every event the journal had acknowledged before the kill (the GOs,
  the cues' actions) is there after the restart, with the same sequence numbers;
- **0 readings lost**: every reading of hoist-1's position that was queryable before the kill
  (acknowledged by the store) is there after the restart, with the same timestamps and values;
- **the service recovers**: started again, it polls the hoist and answers the API.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any

import httpx
import pytest

from tests.chaos.test_disk_full import wait
from tests.conftest import stop_all
from tests.peers.demo import admin_token, demo_venue

pytestmark = pytest.mark.chaos


def truth(sim: str, device: str) -> dict[str, Any]:
    devices = httpx.get(f"{sim}/truth", params={"ids": device}, timeout=5).json()["devices"]
    found = (
        devices[device]
        if isinstance(devices, dict)
        else next(d for d in devices if d.get("id") == device)
    )
    return dict(found)


def fly_hoist(c: httpx.Client, sim: str) -> None:
    """The operator moves hoist-1 well away from where it stands (the enable must be held)."""
    start = truth(sim, "hoist-1")["position_mm"]
    r = c.post(
        "/api/v1/devices/hoist-1/commands/move_to",
        json={"position": 2000 if start > 6000 else 10000, "speed": 300},
    )
    assert r.status_code == 200, r.text


class Enable(threading.Thread):
    """The operator's hold-to-run enable, renewed every 0.1 s (through the kill, in vain)."""

    def __init__(self, api: str, token: str) -> None:
        super().__init__(daemon=True)
        self.api, self.token = api, token
        self.stop = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.api, headers=headers, timeout=1) as c:
            while not self.stop.wait(0.1):
                with contextlib.suppress(httpx.HTTPError):
                    c.post("/api/v1/machinery/enable", json={"holder": "chaos desk"})


@pytest.mark.timeout(600)
def test_kill_9_mid_show_stops_the_hoist_and_loses_nothing(tmp_path: Any) -> None:
    demo = demo_venue(tmp_path / "demo")
    token = admin_token(demo.venue)
    enable = Enable(demo.api, token)
    try:
        demo.start_simulators()
        demo.start(simulators=False)
        with demo.client(token) as c:
            t0 = time.time()

            def positions(end: float) -> list[tuple[float, Any]]:
                h = c.get(
                    "/api/v1/devices/hoist-1/points/position/history",
                    params={"start": t0 - 60, "end": end, "limit": 100_000},
                ).json()
                return list(zip(h["ts"], h["values"], strict=True))

            wait("hoist-1 polled", lambda: len(positions(time.time())) > 10)
            enable.start()
            wait(
                "the enable held",
                lambda: c.get("/api/v1/machinery").json().get("enable", {}).get("live", False),
                10,
            )
            for _ in range(3):
                r = c.post("/api/v1/playback/go", json={})
                assert r.status_code == 200, r.text
                time.sleep(0.7)  # past the list's GO debounce
            # Cue 3 flies hoist-1 in; if it has arrived already, the operator moves it.
            if not truth(demo.sim, "hoist-1")["moving"]:
                fly_hoist(c, demo.sim)
            wait("hoist-1 moving", lambda: truth(demo.sim, "hoist-1")["moving"], 10)
            target = truth(demo.sim, "hoist-1")["target_mm"]
            time.sleep(0.5)
            acked_at = time.time()
            readings = positions(acked_at)
            journal = c.get("/api/v1/journal", params={"limit": 10000}).json()["events"]
        assert demo.proc is not None
        before = truth(demo.sim, "hoist-1")
        os.kill(demo.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        demo.proc.wait(10)
        stopped = wait(
            "the drive stopping on its own watchdog",
            lambda: not truth(demo.sim, "hoist-1")["moving"],
            10,
        )
        at = truth(demo.sim, "hoist-1")
        print(
            f"\nkill -9 with hoist-1 at {before['velocity_mm_s']:.0f} mm/s: stopped "
            f"{time.monotonic() - killed:.2f} s after the kill ({stopped:.2f} s of polling), "
            f"at {at['position_mm']:.0f} mm, target {target:.0f}"
        )
        demo.start(simulators=False)
        restarted = time.monotonic()
        with demo.client(token) as c:
            wait(
                "hoist-1 polled again",
                lambda: (
                    c.get("/api/v1/devices/hoist-1").json().get("health", {}).get("state")
                    == "online"
                ),
                30,
            )
            print(f"polling again {time.monotonic() - restarted:.2f} s after the restart")
            after = dict(positions(acked_at))
            missing = [(ts, v) for ts, v in readings if after.get(ts) != v]
            assert not missing, f"{len(missing)} of {len(readings)} readings lost: {missing[:5]}"
            kept = {
                e["seq"]: (e["command"], e["result"])
                for e in c.get("/api/v1/journal", params={"limit": 10000}).json()["events"]
            }
            lost = [e for e in journal if kept.get(e["seq"]) != (e["command"], e["result"])]
            assert not lost, f"{len(lost)} journal events lost: {lost[:3]}"
            commands = [e["command"] for e in journal]
            assert commands.count("go") == 3, commands
            print(f"{len(readings)} readings and {len(journal)} journal events, none lost")
            time.sleep(3)  # nothing is replayed: the hoist stays where it stopped
            now = truth(demo.sim, "hoist-1")
            assert not now["moving"]
            assert abs(now["position_mm"] - at["position_mm"]) < 1.0
    finally:
        enable.stop.set()
        stop_all([p for p in (demo.proc, demo.sims) if p is not None])
