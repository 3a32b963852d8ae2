"""An audio device in the running service: a real stream on JACK's dummy backend.

The service opens the venue's audio device (its own child process), and the stream's figures
arrive as readings of the device: callbacks counting up in real time, latency, load. A device
that names no such audio device is offline with a reason listing what exists, and the rest of
the service runs on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_service, wait_until, write_venue
from tests.peers.jack import JackServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def jack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JackServer]:
    with JackServer(tmp_path_factory.mktemp("jack")) as server:
        yield server


def audio_venue(tmp_path: Path, jack: JackServer) -> Path:
    venue = write_venue(tmp_path, [])
    venue.write_text(
        venue.read_text()
        + f"""
[[devices]]
id = "fx-stream"
profile = "audio_interface"
transport = {{ kind = "audio", device = "JACK", jack_server = "{jack.name}", blocksize = 128, \
inputs = 2, outputs = 2, output_map = [2, 1] }}

[[devices]]
id = "missing-card"
profile = "audio_interface"
transport = {{ kind = "audio", device = "Dante Virtual Soundcard", jack_server = "{jack.name}" }}
"""
    )
    return venue


async def test_stream_figures_become_readings(tmp_path: Path, jack: JackServer) -> None:
    async with run_service(audio_venue(tmp_path, jack)) as service:

        async def streaming() -> bool:
            r = service.live.get(("fx-stream", "callbacks"))
            return r is not None and isinstance(r.value, int) and r.value > 100

        await wait_until(streaming, 30, "the audio stream's callbacks as readings")
        assert service.health["fx-stream"].state.value in ("online", "degraded")
        latency = service.live[("fx-stream", "output_latency_ms")].value
        assert isinstance(latency, float) and latency > 0

        async def refused() -> bool:
            return service.health["missing-card"].state.value == "offline"

        await wait_until(refused, 30, "the missing card offline")
        assert "Dante Virtual Soundcard" in service.health["missing-card"].reason
        driver = service.drivers["missing-card"]
        with pytest.raises(Exception, match="no commands"):
            await driver.command("anything", {})
