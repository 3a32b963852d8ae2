"""The venue's sound field in the running service, on a real stream (JACK's dummy backend).

``[acoustics]`` puts the sound-field engine under the file player of one audio device: the
service designs the zone's initial mode in its design process, the engine builds it and
crossfades it in, and the REST API recalls other modes, journalled, with clear refusals for
what cannot be done. The cue engine's ``audio.soundfield`` goes through the same recall.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.journal import Origin, SourceKind
from controller.playback.ports import PlaybackError
from edge.config import load_venue
from tests.conftest import run_service, wait_until, write_venue
from tests.peers.jack import JackServer

pytestmark = pytest.mark.integration

LO = "127.0.0.1"
ACOUSTICS = """
[acoustics]
device = "hall"
room = { t30_s = [1.3, 1.2, 1.1, 1.0, 0.95, 0.85], c80_db = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5] }

[[acoustics.zones]]
name = "stalls"
inputs = [1, 2]
outputs = [1, 2, 3, 4]
mode = "chamber"
layout = { speakers = [
  { name = "L", channel = 1, azimuth_deg = 30, elevation_deg = 10, distance_m = 12, pa = true },
  { name = "R", channel = 2, azimuth_deg = -30, elevation_deg = 10, distance_m = 12, pa = true },
  { name = "SL", channel = 3, azimuth_deg = 100, elevation_deg = 20, distance_m = 8 },
  { name = "SR", channel = 4, azimuth_deg = -100, elevation_deg = 20, distance_m = 8 },
] }
"""


@pytest.fixture(scope="module")
def jack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JackServer]:
    with JackServer(tmp_path_factory.mktemp("jack"), inputs=2, outputs=4) as server:
        yield server


def venue(tmp_path: Path, jack: JackServer, acoustics: str = ACOUSTICS) -> Path:
    path = write_venue(tmp_path, [])
    path.write_text(
        path.read_text()
        + f"""
[[devices]]
id = "hall"
profile = "audio_interface"
transport = {{ kind = "audio", device = "JACK", jack_server = "{jack.name}", blocksize = 128, \
inputs = 2, outputs = 4 }}
"""
        + acoustics
    )
    return path


async def test_modes_are_designed_recalled_and_journalled(tmp_path: Path, jack: JackServer) -> None:
    async with (
        run_service(venue(tmp_path, jack)) as service,
        httpx.AsyncClient(
            base_url=f"http://{LO}:{service.bound_api_port}",
            timeout=60,
            headers={"x-flytower-operator": "sound"},
        ) as api,
    ):

        async def zone() -> dict[str, Any]:
            body = (await api.get("/api/v1/acoustics")).json()
            assert body["configured"]
            return dict(body["zones"]["stalls"])

        async def playing(mode: str) -> bool:
            z = await zone()
            return z["mode"] == mode and z["state"] in ("fading", "playing")

        await wait_until(lambda: playing("chamber"), 90, "the initial mode designed and in")
        z = await zone()
        assert z["room"]["source"] == "configured"
        assert z["latency"]["direct_samples"] >= 0
        assert z["design"]["params"]["n_out"] == 4 and z["design"]["notes"] is not None

        r = await api.post("/api/v1/acoustics/recall", json={"mode": "opera", "fade_s": 0.5})
        assert r.status_code == 200, r.text
        assert r.json()["zones"]["stalls"]["mode"] == "opera"
        await wait_until(lambda: playing("opera"), 10, "opera crossfaded in")

        # what cannot be done is refused with the reason, and nothing changes
        r = await api.post("/api/v1/acoustics/recall", json={"mode": "stadium"})
        assert r.status_code == 404 and "no sound-field mode 'stadium'" in r.json()["detail"]
        r = await api.post("/api/v1/acoustics/recall", json={"mode": "drama", "zones": ["gallery"]})
        assert r.status_code == 404 and "no sound-field zone 'gallery'" in r.json()["detail"]
        for bad in ({"mode": "drama", "fade_s": -1}, {"mode": "drama", "fade_s": float("inf")},
                    {"mode": ""}, {"mode": "drama", "extra": 1}, {"zones": []}):  # fmt: skip
            r = await api.post("/api/v1/acoustics/recall", content=_json(bad))
            assert r.status_code == 422, (bad, r.text)
        assert (await zone())["mode"] == "opera"

        # the cue engine's audio.soundfield reaches the same recall
        assert service.playback is not None and service.playback.audio is not None
        await service.playback.audio.soundfield("drama", 0.2, Origin(SourceKind.USER, "cue 3"))
        await wait_until(lambda: playing("drama"), 10, "drama from a cue")
        with pytest.raises(PlaybackError, match="no sound-field mode"):
            await service.playback.audio.soundfield("nope", 0.2, Origin(SourceKind.USER, "cue 4"))

        events = (await api.get("/api/v1/journal", params={"limit": 100})).json()["events"]
        recalls = [e for e in events if e["command"] == "acoustics.recall"]
        assert {(e["args"]["mode"], e["result"]) for e in recalls} >= {
            ("opera", "ok"),
            ("stadium", "failed"),
        }
        assert all(e["source"] == "sound" for e in recalls)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, allow_nan=True)


def test_bad_acoustics_sections_are_refused_with_the_reason(tmp_path: Path) -> None:
    from drivers.model import ConfigError

    class _Jack:
        name = "nobody"

    cases = {
        ACOUSTICS.replace('device = "hall"', 'device = "nope"'): "no audio device 'nope'",
        ACOUSTICS.replace("outputs = [1, 2, 3, 4]", "outputs = [1, 2, 3, 9]"): "beyond device",
        ACOUSTICS.replace('mode = "chamber"', 'mode = "disco"'): "no mode 'disco'",
        ACOUSTICS.replace("channel = 4", "channel = 7"): "layout",
        ACOUSTICS.replace("c80_db = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5]", "c80_db = [1.0]"): "c80_db",
        ACOUSTICS.replace("inputs = [1, 2]", "inputs = [1, 1]"): "named twice",
    }
    for i, (text, reason) in enumerate(cases.items()):
        folder = tmp_path / str(i)
        folder.mkdir()
        with pytest.raises(ConfigError, match=reason):
            load_venue(venue(folder, _Jack(), text))  # type: ignore[arg-type]
