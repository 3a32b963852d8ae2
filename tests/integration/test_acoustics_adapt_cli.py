"""``flytower acoustics adapt`` against the running service, as a subprocess.

The venue, the room and the zone are those of ``test_service_adapt`` (the small hall of the
acoustic room simulator on JACK's dummy backend; loudspeaker 1 the stage source, loudspeaker
2 the zone's enhancement loudspeaker, microphone 1 the pickup, microphone 2 the listener).

- The refusals need no adaptation run and no room: an unknown zone or mode, iterations the
  service refuses or that are not a number, no service listening. Each is one line on stderr
  and exit 1, never a traceback.
- One adaptation run (drama, reachable in this room) carries every check of a real run: the
  command starts it and shows its progress; a second command is refused while it runs (409);
  Ctrl-C ends the first command with 130 and says the run goes on; ``--follow`` takes the
  same run up again and ends with the table, the plot's place and exit 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port, run_service, wait_until
from tests.integration.test_dsp_measure_room import running_room
from tests.integration.test_service_adapt import patched, venue
from tests.peers.jack import JackServer

pytestmark = pytest.mark.integration

LO = "127.0.0.1"


@pytest.fixture(scope="module")
def jack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JackServer]:
    with JackServer(tmp_path_factory.mktemp("jack"), inputs=2, outputs=2) as server:
        yield server


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "FLYTOWER_TOKEN"}


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.cli", "acoustics", "adapt", *args,
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


async def run_cli(*args: str, timeout_s: float = 60) -> tuple[int, str, str]:
    proc = await start_cli(*args)
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_no_service_listening_is_one_line_and_exit_1() -> None:
    url = f"http://{LO}:{free_port()}"
    rc, out, err = await run_cli("stalls", "drama", "--url", url)
    assert rc == 1 and out == "", (out, err)
    assert err.startswith(f"error: no Flytower service at {url}") and err.count("\n") == 1, err
    rc, _out, err = await run_cli("stalls", "drama", "--url", "localhost:8080")
    assert rc == 1 and "starts with http:// or https://" in err and "Traceback" not in err


@pytest.mark.timeout(120)
async def test_the_command_relays_the_services_refusals(tmp_path: Path, jack: JackServer) -> None:
    async with run_service(venue(tmp_path, jack)) as service:
        url = f"http://{LO}:{service.bound_api_port}"
        cases = [
            (("gallery", "drama"), "no sound-field zone 'gallery'"),
            (("stalls", "stadium"), "no sound-field mode 'stadium' (modes: "),
            (("stalls", "drama", "--iterations", "0"), "422: iterations: "),
            (("stalls", "drama", "--iterations", "6"), "422: iterations: "),
            (("stalls", "drama", "--sweeps", "9"), "422: sweeps: "),
            (("stalls", "drama", "--level-db", "0"), "422: level_db: "),
            (("stalls", "drama", "--iterations", "three"), "--iterations 'three': a whole number"),
            (("stalls", "drama", "--iterations", "2.5"), "--iterations '2.5': a whole number"),
            (("stalls", "drama", "--level-db", "nan"), "--level-db 'nan': a finite number"),
            (("stalls", "drama", "--follow"), "no adaptation of stalls to 'drama' to follow"),
            (("", "drama"), "a zone is a non-empty name"),
        ]
        for args, reason in cases:
            rc, out, err = await run_cli(*args, "--url", url)
            print(args, "->", rc, err.strip())
            assert rc == 1 and out == "", (args, out, err)
            assert reason in err and "Traceback" not in err, (args, err)
            assert err.startswith("error: ") and err.count("\n") == 1, (args, err)
        # nothing was started
        async with httpx.AsyncClient(timeout=10) as api:
            got = (await api.get(f"{url}/api/v1/acoustics")).json()
        assert got["adaptation"] is None and got["measurement"] is None


@pytest.mark.timeout(400)  # a measurement, a worker process and the closed loop, on 2 cores
async def test_the_command_adapts_a_zone_and_survives_ctrl_c(
    tmp_path: Path, jack: JackServer
) -> None:
    async with (
        running_room(jack, tmp_path / "room-cache") as (_room, _http),
        run_service(venue(tmp_path, jack)) as service,
        httpx.AsyncClient(base_url=f"http://{LO}:{service.bound_api_port}", timeout=60) as api,
    ):
        url = str(api.base_url).rstrip("/")

        async def ready() -> bool:
            got = (await api.get("/api/v1/acoustics")).json()
            return bool(got["running"]) and await asyncio.to_thread(patched, jack)

        await wait_until(ready, 90, "the sound field's stream running and the room patched to it")

        first = await start_cli("stalls", "drama", "--iterations", "3", "--url", url)
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

        # while it runs, a second command is refused with the reason
        rc, _out, err = await run_cli("stalls", "drama", "--url", url)
        assert rc == 1 and f"409: adaptation {run_id} is still running" in err, err

        # Ctrl-C: the command ends, the run goes on
        first.send_signal(signal.SIGINT)
        _, rest = await asyncio.wait_for(first.communicate(), 30)
        said = "".join(lines) + rest.decode()
        assert first.returncode == 130, said
        assert f"interrupted: adaptation {run_id} goes on in the service" in said, said
        assert "--follow" in said and "Traceback" not in said, said
        got = (await api.get("/api/v1/acoustics")).json()["adaptation"]
        assert got["id"] == run_id and got["state"] in ("measuring", "adapting", "recalling")

        # --follow takes it up again and reports its end
        saved = tmp_path / "adapted.png"
        rc, out, err = await run_cli(
            "stalls", "drama", "--follow", "--url", url, "--plot", str(saved), timeout_s=330
        )
        print("\n" + err + out)
        a = (await api.get("/api/v1/acoustics")).json()["adaptation"]
        assert a["id"] == run_id and a["state"] == "done", a
        # drama is reachable in this room (test_service_adapt): converged, exit 0
        assert a["result"]["converged"], a["result"]["reason"]
        assert rc == 0, (out, err)
        assert "adapting 1 of 3" in err  # the progress line named the iteration
        assert out.startswith(f"adaptation {run_id}: zone stalls to 'drama': converged\n"), out
        assert "iteration worst JND  within 1 JND" in out
        rows = [line for line in out.splitlines() if line.strip().split(" ")[0].isdigit()]
        assert len(rows) == len(a["worst_jnd"]) >= 1, out
        assert any(row.endswith("yes (best)") for row in rows), out
        for u in a["result"]["unreachable"]:
            assert f"{u['metric']} at " in out and u["reason"][:40] in out
        assert f"plot: var/acoustics/{run_id}/adaptation.png" in out
        folder = service.venue.resolve("var/acoustics") / run_id
        assert (folder / "adaptation.png").stat().st_size > 10_000
        # --plot saved the service's plot, which the API serves with the run's record
        assert f"the plot saved: {saved}" in err
        assert saved.read_bytes() == (folder / "adaptation.png").read_bytes()
        r = await api.get(f"/api/v1/acoustics/adaptations/{run_id}/plot")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        record = (await api.get(f"/api/v1/acoustics/adaptations/{run_id}")).json()
        assert record["id"] == run_id and record["restore"]["version"] == 1
        for bad in ("nope", "..", "a b", "x" * 65, "%2e%2e%2fetc"):
            r = await api.get(f"/api/v1/acoustics/adaptations/{bad}/plot")
            assert r.status_code == 404, (bad, r.text)
