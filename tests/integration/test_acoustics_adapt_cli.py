"""``flytower acoustics adapt`` against the running service, as a subprocess.

The venue, the room and the zone are those of ``test_service_adapt`` (the small hall of the
acoustic room simulator on JACK's dummy backend; loudspeaker 1 the stage source, loudspeaker
2 the zone's enhancement loudspeaker, microphone 1 the pickup, microphone 2 the listener).

- The refusals need no adaptation run and no room: an unknown zone or mode, iterations the
  service refuses or that are not a number, no service listening. Each is one line on stderr
  and exit 1, never a traceback.
- The checks of a real run (progress, 409 while it runs, Ctrl-C, ``--follow``, the plot) ride
  on ``test_service_adapt``'s one adaptation run, which the command starts and follows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, run_service
from tests.integration.test_service_adapt import run_cli, venue
from tests.peers.jack import JackServer

pytestmark = pytest.mark.integration

LO = "127.0.0.1"


@pytest.fixture(scope="module")
def jack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JackServer]:
    with JackServer(tmp_path_factory.mktemp("jack"), inputs=2, outputs=2) as server:
        yield server


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
