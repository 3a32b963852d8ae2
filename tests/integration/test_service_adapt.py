"""Adaptation in the running service, through the acoustic room simulator on JACK's dummy backend.

The small hall of ``test_dsp_measure_room`` (6 x 5 x 3 m, T30 about 0.8 s; two loudspeakers,
two microphones) is the venue: loudspeaker 1 is the stage source, loudspeaker 2 the zone's one
enhancement loudspeaker, microphone 1 the pickup (the zone's input), microphone 2 the listener.
The room really couples the enhancement loudspeaker back into the pickup: the field is a
feedback loop, and a field designed without the loop in mind can ring or run away (a concert
recall did, and the stream bypassed its processor).

The service measures the paths with the field muted, adapts ``drama`` in its worker process
with each iteration measured through the running field (the closed loop), stores the result,
recalls the adapted field, and from then on checks the loop gain of every recall on the
measured paths: ``concert`` is lowered to the stability margin (or refused with the reason),
and the engine keeps running.

The run is started and followed by ``flytower acoustics adapt`` as a subprocess, so the one
adaptation run (a minute of the suite) also carries the command's checks: its progress, a
second command refused while the run goes on (409), Ctrl-C ending the command with 130 while
the run goes on, ``--follow`` taking it up again with the table, the plot's place and exit 0.
(``test_acoustics_adapt_cli`` has the command's refusals, which need no run.)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulators.acoustics.jack import parse_jack_lsp
from tests.conftest import REPO, run_service, wait_until, write_venue
from tests.integration.test_dsp_measure_room import running_room
from tests.peers.jack import JackServer

pytestmark = pytest.mark.integration

LO = "127.0.0.1"
ACOUSTICS = """
[acoustics]
device = "hall"

[[acoustics.zones]]
name = "stalls"
inputs = [1]
outputs = [2]
pickup = 1
listener = 2
source = 1
layout = { speakers = [
  { name = "R", channel = 1, azimuth_deg = -40, elevation_deg = 5, distance_m = 3 },
] }
"""


@pytest.fixture(scope="module")
def jack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JackServer]:
    with JackServer(tmp_path_factory.mktemp("jack"), inputs=2, outputs=2) as server:
        yield server


def venue(tmp_path: Path, jack: JackServer) -> Path:
    path = write_venue(tmp_path, [])
    path.write_text(
        path.read_text()
        + f"""
[[devices]]
id = "hall"
profile = "audio_interface"
transport = {{ kind = "audio", device = "system, JACK Audio Connection Kit", \
jack_server = "{jack.name}", blocksize = 128, \
inputs = 2, outputs = 2 }}
"""
        + ACOUSTICS
    )
    return path


def patched(jack: JackServer) -> bool:
    """The room has connected both its loudspeakers and microphones to Flytower's client (as
    ``test_dsp_measure_room.patched``, with a timeout: on a loaded machine ``jack_lsp`` was
    seen to hang on a jackd whose clients kept missing their deadlines)."""
    try:
        done = subprocess.run(
            ["jack_lsp", "-c"], env=jack.env, capture_output=True, check=True, timeout=10
        )
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError):
        return False
    graph = parse_jack_lsp(done.stdout.decode())
    ports = [f"room-hall:in_{k}" for k in (0, 1)] + [f"room-hall:out_{k}" for k in (0, 1)]
    return all(any(p.startswith("PortAudio") for p in graph.get(port, ())) for port in ports)


def _json(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "FLYTOWER_TOKEN"}


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    """``flytower acoustics adapt ARGS`` as a subprocess."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.cli", "acoustics", "adapt", *args,
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


async def run_cli(*args: str, timeout_s: float = 60) -> tuple[int, str, str]:
    proc = await start_cli(*args)
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(500)  # a measurement, a worker process and the closed loop, on 2 cores
async def test_a_zone_is_adapted_in_the_room_and_its_loop_guarded(
    tmp_path: Path, jack: JackServer
) -> None:
    async with (
        running_room(jack, tmp_path / "room-cache") as (_room, _http),
        run_service(venue(tmp_path, jack)) as service,
        httpx.AsyncClient(
            base_url=f"http://{LO}:{service.bound_api_port}",
            timeout=60,
            headers={"x-flytower-operator": "sound"},
        ) as api,
    ):

        async def body() -> dict[str, Any]:
            got = (await api.get("/api/v1/acoustics")).json()
            assert got["configured"]
            return dict(got)

        async def ready() -> bool:
            return bool((await body())["running"]) and await asyncio.to_thread(patched, jack)

        await wait_until(ready, 90, "the sound field's stream running and the room patched to it")
        sf = service.soundfield
        assert sf is not None and sf.driver is not None
        zone = (await body())["zones"]["stalls"]
        assert zone["paths"] is None and not zone["loop"]["checked"]

        # what cannot be done is refused, with the reason, before anything plays
        url = "/api/v1/acoustics/zones/stalls/adapt"
        for bad in ({"mode": "drama", "iterations": 0}, {"mode": "drama", "iterations": 6},
                    {"mode": "drama", "iterations": True}, {"mode": "drama", "iterations": "3"},
                    {"mode": "drama", "iterations": 2.5}, {"mode": ""}, {"iterations": 2},
                    {"mode": "drama", "level_db": float("nan")}, {"mode": "drama", "level_db": 0},
                    {"mode": "drama", "rm": "-rf"}, {"mode": "x" * 65}, [1, 2]):  # fmt: skip
            r = await api.post(url, content=_json(bad))
            assert r.status_code == 422, (bad, r.text)
        r = await api.post(url, json={"mode": "stadium"})
        assert r.status_code == 404 and "no sound-field mode 'stadium'" in r.text
        r = await api.post("/api/v1/acoustics/zones/gallery/adapt", json={"mode": "drama"})
        assert r.status_code == 404 and "no sound-field zone 'gallery'" in r.text
        r = await api.post("/api/v1/acoustics/zones/..%2F..%2Fetc/adapt", json={"mode": "drama"})
        assert r.status_code == 404, r.text

        # the command starts the run and shows its progress
        base = str(api.base_url).rstrip("/")
        first = await start_cli("stalls", "drama", "--iterations", "3", "--url", base)
        assert first.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while not any("measuring" in line for line in lines):
            assert time.monotonic() < deadline, lines
            line = await asyncio.wait_for(first.stderr.readline(), 60)
            assert line, (lines, await first.communicate())
            lines.append(line.decode())
        run_id = lines[-1].split()[0]
        assert f"{run_id} stalls -> drama: measuring" in lines[-1], lines
        run = (await body())["adaptation"]
        assert run["id"] == run_id and run["zone"] == "stalls" and run["iterations"] == 3

        # while it runs, what would disturb it is refused with the reason
        rc, _out, err = await run_cli("stalls", "drama", "--url", base)
        assert rc == 1 and f"409: adaptation {run_id} is still running" in err, err
        busy = await api.post(url, json={"mode": "drama"})
        assert busy.status_code == 409 and "still running" in busy.json()["detail"]
        busy = await api.post("/api/v1/acoustics/measure", json={"outputs": [1], "inputs": [2]})
        assert busy.status_code == 409, busy.text
        busy = await api.post("/api/v1/acoustics/recall", json={"mode": "opera"})
        assert busy.status_code == 409 and "being adapted" in busy.json()["detail"]

        # Ctrl-C: the command ends, the run goes on
        first.send_signal(signal.SIGINT)
        _, rest = await asyncio.wait_for(first.communicate(), 30)
        said = "".join(lines) + rest.decode()
        assert first.returncode == 130, said
        assert f"interrupted: adaptation {run_id} goes on in the service" in said, said
        assert "--follow" in said and "Traceback" not in said, said
        got = (await body())["adaptation"]
        assert got["id"] == run_id and got["state"] in ("measuring", "adapting", "recalling")

        # --follow takes it up again and reports its end
        saved = tmp_path / "adapted.png"
        rc, out, err = await run_cli(
            "stalls", "drama", "--follow", "--url", base, "--plot", str(saved), timeout_s=330
        )
        print("\n" + err + out)
        a = (await body())["adaptation"]
        assert a["id"] == run_id and a["state"] == "done", a
        result = a["result"]
        print("worst error per iteration (JND):", a["worst_jnd"], "->", result["reason"])
        print("unreachable:", [(u["metric"], u["band_hz"]) for u in result["unreachable"]])
        assert 1 <= len(a["worst_jnd"]) <= 3
        # drama is reachable in this room: the measured combined response within one JND
        assert result["converged"], result["reason"]
        assert result["worst_jnd"] is not None and result["worst_jnd"] <= 1.0
        assert sum(len(b) for b in result["held"].values()) >= 3
        assert all(u["reason"] for u in result["unreachable"])
        assert result["loop_gain_db"] <= -6.0 + 0.2
        # what the command said: converged, exit 0, the table, the plot
        assert rc == 0, (out, err)
        assert "adapting 1 of 3" in err  # the progress line named the iteration
        assert out.startswith(f"adaptation {run_id}: zone stalls to 'drama': converged\n"), out
        assert "iteration worst JND  within 1 JND" in out
        rows = [line for line in out.splitlines() if line.strip().split(" ")[0].isdigit()]
        assert len(rows) == len(a["worst_jnd"]) >= 1, out
        assert any(row.endswith("yes (best)") for row in rows), out
        for u in result["unreachable"]:
            assert f"{u['metric']} at " in out and u["reason"][:40] in out
        assert f"plot: var/acoustics/{run_id}/adaptation.png" in out

        # the zone runs the adapted field, on the paths it was adapted on
        zone = (await body())["zones"]["stalls"]
        assert zone["mode"] == "drama" and zone["state"] in ("fading", "playing")
        assert zone["adaptation"]["converged"] and zone["paths"] == f"adaptation {a['id']}"
        assert zone["room"]["source"].startswith("adapted ")
        assert zone["loop"]["checked"] and zone["loop"]["applied_gain_db"] <= -6.0 + 0.2
        folder = service.venue.resolve("var/acoustics") / a["id"]
        stored = json.loads((folder / "adaptation.json").read_text())
        assert stored["mode"] == "drama" and stored["converged"] and stored["iterations"]
        assert (folder / "adaptation.png").stat().st_size > 10_000
        assert (folder / "summary.json").is_file()  # the muted measurement of the paths
        # --plot saved the service's plot, which the API serves with the run's record
        assert f"the plot saved: {saved}" in err
        assert saved.read_bytes() == (folder / "adaptation.png").read_bytes()
        r = await api.get(f"/api/v1/acoustics/adaptations/{run_id}/plot")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        record = (await api.get(f"/api/v1/acoustics/adaptations/{run_id}")).json()
        assert record["id"] == run_id and record["restore"]["version"] == 1
        for bad_id in ("nope", "..", "a b", "x" * 65, "%2e%2e%2fetc"):
            r = await api.get(f"/api/v1/acoustics/adaptations/{bad_id}/plot")
            assert r.status_code == 404, (bad_id, r.text)

        # the recall that ran away before is now guarded, and the engine keeps running
        errors = int(sf.driver.snapshot().processor_errors)
        r = await api.post("/api/v1/acoustics/recall", json={"mode": "concert", "fade_s": 0.5})
        print("concert:", r.status_code, r.json())
        zone = (await body())["zones"]["stalls"]
        if r.status_code == 200:
            assert zone["mode"] == "concert" and zone["loop"]["checked"]
            assert zone["loop"]["applied_gain_db"] <= -6.0 + 0.2, zone["loop"]
            assert zone["adaptation"] is None  # concert plays its (guarded) design
        else:
            assert r.status_code == 409 and "feedback loop" in r.json()["detail"], r.text
        await asyncio.sleep(3.0)  # a loop that runs away does so within a few of its trips
        stats = sf.driver.snapshot()
        assert not stats.bypassed and int(stats.processor_errors) == errors

        # back to drama: the adapted parameters again, without a new adaptation
        r = await api.post("/api/v1/acoustics/recall", json={"mode": "drama", "fade_s": 0.5})
        assert r.status_code == 200, r.text
        assert r.json()["zones"]["stalls"]["adaptation"]["converged"]

        events = (await api.get("/api/v1/journal", params={"limit": 200})).json()["events"]
        by = {(e["command"], e["result"]) for e in events}
        assert {("acoustics.adapt", "ok"), ("acoustics.adapted", "ok")} <= by
        (done,) = [e for e in events if e["command"] == "acoustics.adapted"]
        assert done["args"]["zone"] == "stalls" and done["args"]["converged"]
        recalls = [e for e in events if e["command"] == "acoustics.recall"]
        assert any(e["args"].get("adaptation") == a["id"] for e in recalls)
        concert = [e for e in recalls if e["args"]["mode"] == "concert"]
        assert concert and all(e["args"]["loop"]["stalls"]["checked"] for e in concert)
