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
from dsp.engine import SetField
from edge.config import load_venue
from tests.conftest import RealServer, run_service, wait_until, write_venue
from tests.integration.test_sim_gear import device_entry
from tests.integration.test_sim_gear import running as sim_running
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


def venue(
    tmp_path: Path,
    jack: JackServer,
    acoustics: str = ACOUSTICS,
    mqtt_port: int | None = None,
    devices: str = "",
) -> Path:
    """A venue with the JACK device ``hall`` and ``acoustics``; ``devices``: more
    ``[[devices]]`` entries; ``mqtt_port``: an external broker."""
    if mqtt_port is None:
        path = write_venue(tmp_path, [])
    else:
        path = write_venue(tmp_path, [], mqtt_mode="external", mqtt_port=mqtt_port)
    path.write_text(
        path.read_text()
        + f"""
[[devices]]
id = "hall"
profile = "audio_interface"
transport = {{ kind = "audio", device = "JACK", jack_server = "{jack.name}", blocksize = 128, \
inputs = 2, outputs = 4 }}
"""
        + devices
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

        # every set reaches the audio host built (in the design process), ready to swap in
        sf = service.soundfield
        assert sf is not None and sf.send is not None
        sent: list[Any] = []
        send = sf.send
        sf.send = lambda payload: (sent.append(payload), send(payload))[1]
        r = await api.post("/api/v1/acoustics/recall", json={"mode": "opera", "fade_s": 0.5})
        assert r.status_code == 200, r.text
        assert r.json()["zones"]["stalls"]["mode"] == "opera"
        await wait_until(lambda: playing("opera"), 10, "opera crossfaded in")
        assert len(sent) == 1 and isinstance(sent[0], SetField) and sent[0].built is not None
        assert sent[0].built.params is sent[0].params and sent[0].late_fade_s == 0.5

        # what cannot be done is refused with the reason, and nothing changes
        r = await api.post("/api/v1/acoustics/recall", json={"mode": "stadium"})
        assert r.status_code == 404 and "no sound-field mode 'stadium'" in r.json()["detail"]
        r = await api.post("/api/v1/acoustics/recall", json={"mode": "drama", "zones": ["gallery"]})
        assert r.status_code == 404 and "no sound-field zone 'gallery'" in r.json()["detail"]
        bad: dict[str, Any]
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


@pytest.mark.timeout(400)  # two measurements, analysed, on a loaded 2-core machine
async def test_a_measurement_in_the_service_becomes_the_zones_room(
    tmp_path: Path, jack: JackServer
) -> None:
    """The acoustic room simulator plays the hall; the service measures it through the sound
    field's own stream (the enhancement muted: the natural room), analyses it in its worker,
    keeps the IRs and a summary under the venue's var folder, serves metrics and decay curves,
    and the measured room becomes the zone's room."""
    import asyncio

    from tests.integration.test_dsp_measure_room import pair, patched, running_room, truth

    cache = tmp_path / "room-cache"
    async with (
        running_room(jack, cache) as (_room, http),
        run_service(venue(tmp_path, jack)) as service,
        httpx.AsyncClient(
            base_url=f"http://{LO}:{service.bound_api_port}",
            timeout=60,
            headers={"x-flytower-operator": "sound"},
        ) as api,
    ):
        t = await truth(http)

        async def ready() -> bool:
            body = (await api.get("/api/v1/acoustics")).json()
            zone = body["zones"]["stalls"]
            return zone["state"] in ("fading", "playing") and await asyncio.to_thread(patched, jack)

        await wait_until(ready, 90, "the sound field playing and the room patched to it")

        # hostile parameters are refused before anything plays
        for bad in ({"outputs": [], "inputs": [1]}, {"outputs": [0], "inputs": [1]},
                    {"outputs": [1], "inputs": [1, 1]}, {"outputs": [1], "inputs": [1],
                    "level_db": 6}, {"outputs": [1], "inputs": [1], "sweeps": 10**9},
                    {"outputs": [1], "inputs": [1], "level_db": float("nan")},
                    {"outputs": [True], "inputs": [1]}, {"outputs": "1", "inputs": [1]},
                    {"outputs": [1], "inputs": [1], "rm": "-rf"}):  # fmt: skip
            r = await api.post("/api/v1/acoustics/measure", content=_json(bad))
            assert r.status_code == 422, (bad, r.text)
        r = await api.post("/api/v1/acoustics/measure", json={"outputs": [9], "inputs": [1]})
        assert r.status_code == 422 and "4 output(s)" in r.json()["detail"], r.text
        r = await api.post(
            "/api/v1/acoustics/measure", json={"outputs": [1], "inputs": [1], "zone": "gallery"}
        )
        assert r.status_code == 404, r.text
        r = await api.get("/api/v1/acoustics/measurements/..%2F..%2Fetc")
        assert r.status_code == 404, r.text

        request = {
            "outputs": [1],
            "inputs": [1, 2],
            "sweeps": 3,
            "sweep_s": 1.5,
            "ir_s": 0.9,
            "noise_s": 1.0,
            "level_db": -30,
            "mute_inner": True,
            "zone": "stalls",
        }

        async def measure_once(take: int) -> tuple[str, dict[str, Any]]:
            r = await api.post("/api/v1/acoustics/measure", json=request)
            assert r.status_code == 202, r.text
            run_id = str(r.json()["id"])
            if take == 1:
                busy = await api.post("/api/v1/acoustics/measure", json=request)
                assert busy.status_code == 409 and "still running" in busy.json()["detail"]
            seen: set[str] = set()

            async def finished() -> bool:
                m = (await api.get("/api/v1/acoustics")).json()["measurement"]
                seen.add(m["state"])
                assert m["state"] != "failed", m["error"]
                return bool(m["state"] == "done" and m.get("id", run_id) == run_id)

            await wait_until(finished, 120, "the measurement measured and analysed")
            assert "measuring" in seen
            return run_id, (await api.get(f"/api/v1/acoustics/measurements/{run_id}")).json()

        def check(run_id: str, result: dict[str, Any]) -> None:
            assert result["mute_inner"] and result["xruns"] >= 0
            folder = service.venue.resolve("var/acoustics") / run_id
            assert (folder / "summary.json").is_file()
            for p in result["pairs"]:
                assert (folder / p["file"]).stat().st_size > 1000, p
                metrics = p["metrics"]
                bands = [b["band_hz"] for b in metrics["bands"]]
                assert bands == [125, 250, 500, 1000, 2000, 4000]
                curve = metrics["curves"][3]
                assert len(curve["time_s"]) == len(curve["level_db"]) <= 600
                assert {f["name"] for f in curve["fits"]} == {"edt", "t20", "t30"}
                # the natural room (the enhancement muted), within one JND of the room's truth
                truth_pair = pair(t, 1, p["input"])
                got_t30 = [b["t30_s"] for b in metrics["bands"]]
                print(f"\ninput {p['input']}: T30 measured {got_t30}")
                print(f"         truth {truth_pair['t30_s']}")
                for i, (got, want) in enumerate(zip(got_t30, truth_pair["t30_s"], strict=True)):
                    if got is not None and want is not None and i >= 1:
                        assert abs(got - want) <= 0.05 * want, (p["input"], i, got, want)

        # A take during which JACK lost cycles (an xrun drops periods from the sweeps it falls
        # in) and that misses the truth is measured again, each time said; up to three takes.
        # A take with no xrun is judged as it is.
        run_ids: list[str] = []
        for take in range(1, 4):
            run_id, result = await measure_once(take)
            run_ids.append(run_id)
            try:
                check(run_id, result)
                break
            except AssertionError as exc:
                if not result["xruns"] or take == 3:
                    raise
                print(f"take {take}: {result['xruns']} xrun(s), spoiled ({exc}): measured again")
        listed = (await api.get("/api/v1/acoustics/measurements")).json()["measurements"]
        assert sorted(m["id"] for m in listed) == sorted(run_ids)

        zone = (await api.get("/api/v1/acoustics")).json()["zones"]["stalls"]
        assert zone["room"]["source"].startswith("measured ")
        assert zone["room"]["t30_s"] == pytest.approx(result["room"]["t30_s"], abs=1e-3)
        # the next design starts from the measured room
        r = await api.post("/api/v1/acoustics/recall", json={"mode": "concert", "fade_s": 0.2})
        assert r.status_code == 200, r.text
        design_room = r.json()["zones"]["stalls"]["room"]
        assert design_room["source"].startswith("measured ")

        events = (await api.get("/api/v1/journal", params={"limit": 100})).json()["events"]
        measures = [e for e in events if e["command"] == "acoustics.measure"]
        assert {e["result"] for e in measures} >= {"ok", "failed"}
        measured = [e for e in events if e["command"] == "acoustics.measured"]
        assert len(measured) == len(run_ids)  # one a take
        last = next(e for e in measured if e["args"]["id"] == run_id)
        assert last["result"] == "ok" and last["source"] == "sound"
        assert last["args"]["room"] == "updated"


@pytest.mark.timeout(300)
async def test_the_cli_measures_the_room_through_the_venue_device(
    tmp_path: Path, jack: JackServer
) -> None:
    """``flytower acoustics measure``: the venue's sound-field device opened directly with the
    measurement processor, a live status line, IR WAVs, summary.json and plots; the room's
    T30 found within one JND of its truth."""
    import asyncio
    import json

    import soundfile as sf

    from edge.cli import main
    from tests.integration.test_dsp_measure_room import pair, running_room, truth

    out = tmp_path / "results"
    async with running_room(jack, tmp_path / "room-cache") as (_room, http):
        t = await truth(http)
        argv = ["acoustics", "measure", str(venue(tmp_path, jack)), "--outputs", "1",
                "--inputs", "1,2", "--sweeps", "3", "--sweep-s", "1.5", "--ir-s", "0.9",
                "--level-db", "-30", "--settle-s", "2", "--out", str(out),
                "--plot", str(tmp_path / "hall.png"), "--mode", "concert"]  # fmt: skip
        code = await asyncio.to_thread(main, argv)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "hall" and summary["xruns"] >= 0
    for p in summary["pairs"]:
        ir, rate = sf.read(out / p["file"])
        assert rate == 48000 and ir.ndim == 1 and ir.size == round(0.9 * rate)
        want = pair(t, 1, p["input"])["t30_s"]
        got = [b["t30_s"] for b in p["metrics"]["bands"]]
        for g, w in list(zip(got, want, strict=True))[1:]:
            assert g is not None and w is not None and abs(g - w) <= 0.05 * w, (got, want)
        for tag in ("", "-bands"):
            plot = tmp_path / f"hall-out1-in{p['input']}{tag}.png"
            assert plot.stat().st_size > 10_000, plot
    (tmp_path / "x").mkdir()
    bad = ["acoustics", "measure", str(venue(tmp_path / "x", jack)), "--outputs", "9",
           "--inputs", "1", "--out", str(tmp_path / "bad"), "--settle-s", "0"]  # fmt: skip
    assert await asyncio.to_thread(main, bad) == 1


async def test_the_field_follows_the_audience_counted_at_the_doors(
    tmp_path: Path, jack: JackServer, mosquitto: RealServer
) -> None:
    """A simulated people counter over a real Mosquitto, the service's MQTT driver, its live
    view, and the sound field on a real stream: 1 500 people in re-design the playing zone
    for a drier hall (journalled), a blocked sensor is not believed, and an empty hall
    brings the measured room back."""
    counter = device_entry("people_counter", "test", empty_s=3600.0, repeat=False)
    occupancy = """
[acoustics.occupancy]
point = "people-counter-1/occupancy"
fault_point = "people-counter-1/fault"
volume_m3 = 6000
min_interval_s = 0
"""
    counter_device = """
[[devices]]
id = "people-counter-1"
profile = "people_counter"
transport = { kind = "mqtt", node = "gw" }
"""
    path = venue(tmp_path, jack, ACOUSTICS + occupancy, mosquitto.port, counter_device)
    load_venue(path)  # the venue as a whole is valid
    async with (
        sim_running(mosquitto.port, "test", [counter]) as family,
        run_service(path) as service,
        httpx.AsyncClient(base_url=f"http://{LO}:{service.bound_api_port}", timeout=60) as api,
    ):
        (sim,) = family.devices

        async def acoustics() -> dict[str, Any]:
            return dict((await api.get("/api/v1/acoustics")).json())

        async def playing() -> bool:
            z = (await acoustics())["zones"]["stalls"]
            return z["state"] in ("fading", "playing")

        await wait_until(playing, 90, "the initial mode designed and in")
        measured = (await acoustics())["zones"]["stalls"]["room"]["t30_s"]

        sim.inject("occupancy", {"people": 1500})

        async def redesigned() -> bool:  # the new design in (its notes say what for)
            z = (await acoustics())["zones"]["stalls"]
            return "1500 people" in " ".join(z["design"]["notes"])

        await wait_until(redesigned, 60, "the zone re-designed for 1500 people")
        body = await acoustics()
        assert body["occupancy"]["state"] == "ok" and body["occupancy"]["people"] == 1500
        z = body["zones"]["stalls"]
        assert all(o < m for o, m in zip(z["occupancy"]["room"]["t30_s"], measured, strict=True))
        assert z["occupancy"]["people"] == 1500 and z["occupancy"]["room"] is not None
        readapted: list[dict[str, Any]] = []

        async def journalled() -> bool:  # the journal is written behind the action
            events = (await api.get("/api/v1/journal", params={"limit": 200})).json()["events"]
            readapted[:] = [e for e in events if e["command"] == "acoustics.readapted"]
            return bool(readapted)

        await wait_until(journalled, 10, "the re-design journalled")
        assert (
            readapted[-1]["result"] == "ok" and readapted[-1]["source"] == "sound field: occupancy"
        )
        assert readapted[-1]["args"]["people"] == 1500
        assert readapted[-1]["args"]["t30_s"][3] < readapted[-1]["args"]["t30_s_before"][3]

        sim.inject("blocked", {"missed_pct": 100.0})

        async def not_believed() -> bool:
            return bool((await acoustics())["occupancy"]["state"] == "bad")

        await wait_until(not_believed, 30, "a blocked sensor not believed")
        assert "fault is set" in (await acoustics())["occupancy"]["note"]
        sim.clear("blocked")
        sim.inject("occupancy", {"people": 0})

        async def measured_again() -> bool:
            z = (await acoustics())["zones"]["stalls"]
            return z["occupancy"]["people"] == 0 and z["occupancy"]["room"] is None

        await wait_until(measured_again, 60, "the empty hall: the measured room again")


async def test_the_test_signal_stops_at_once(tmp_path: Path, jack: JackServer) -> None:
    """POST /api/v1/acoustics/stop: a long sweep running in the stream is aborted (the run
    fails, saying so), journalled with who stopped it; with nothing running it says so; a
    panic stops a sweep too."""
    async with (
        run_service(venue(tmp_path, jack)) as service,
        httpx.AsyncClient(
            base_url=f"http://{LO}:{service.bound_api_port}",
            timeout=60,
            headers={"x-flytower-operator": "sound"},
        ) as api,
    ):
        r = await api.post("/api/v1/acoustics/stop")
        assert (
            r.status_code == 200 and r.json()["note"] == "no measurement or adaptation was running"
        )

        async def streaming() -> bool:  # the sound field in: the stream runs
            z = (await api.get("/api/v1/acoustics")).json()["zones"]["stalls"]
            return bool(z["state"] in ("fading", "playing"))

        await wait_until(streaming, 90, "the sound field playing")
        request = {"outputs": [1], "inputs": [1], "sweeps": 8, "sweep_s": 20.0, "noise_s": 0}
        r = await api.post("/api/v1/acoustics/measure", json=request)
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]

        async def measuring() -> bool:
            m = (await api.get("/api/v1/acoustics")).json()["measurement"]
            return bool(m["state"] == "measuring" and m["percent"] > 0)

        await wait_until(measuring, 30, "the sweep playing")
        r = await api.post("/api/v1/acoustics/stop", headers={"x-flytower-operator": "stage mgr"})
        assert r.status_code == 200 and r.json()["measurement"] == run_id, r.text
        m = (await api.get("/api/v1/acoustics")).json()["measurement"]
        assert m["state"] == "failed" and "abort" in m["error"], m
        # ended, not the 160 s the 8 sweeps would have taken
        events = (await api.get("/api/v1/journal", params={"limit": 100})).json()["events"]
        stops = [e for e in events if e["command"] == "acoustics.stop"]
        assert [e["source"] for e in stops] == ["sound", "stage mgr"]
        assert stops[-1]["args"]["measurement"] == run_id and stops[-1]["result"] == "ok"
        measured = [e for e in events if e["command"] == "acoustics.measured"]
        assert measured and measured[-1]["result"] != "ok"
        # the stream goes on: the next measurement starts, and a panic stops it too
        r = await api.post("/api/v1/acoustics/measure", json=request)
        assert r.status_code == 202, r.text
        second = r.json()["id"]
        await wait_until(measuring, 30, "the next sweep playing")
        r = await api.post("/api/v1/playback/panic")
        assert r.status_code == 200, r.text
        m = (await api.get("/api/v1/acoustics")).json()["measurement"]
        assert m["id"] == second and m["state"] == "failed" and "abort" in m["error"], m
