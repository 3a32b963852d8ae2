"""Hardware-in-loop: a sweep measurement through the audio driver into the acoustic room.

Everything is real except the room itself: a jackd (dummy backend), the acoustic room simulator
as ``flytower simulate`` runs it (its own JACK client, patching itself to PortAudio's client;
truth and faults over HTTP), and Flytower's audio driver (an audio host process owning a
PortAudio stream) running ``dsp.measure.MeasurementProcessor``. The test starts a measurement
over the driver's control channel, waits for the recording in the ``MeasurementDone`` event,
analyzes it, and holds what it recovers against the room:

- the background noise is the room's setting, the noise margin enough for a T30 everywhere;
- each IR is the room's own IR (limited to the sweep's band), whole JACK periods later;
- per octave band, against the truth the endpoint reports (``truth.py``, independent of
  ``dsp/``), within one JND (issue 7, part 5: T30 and EDT 5 %, C80 1 dB, D50 0.05): with the
  truth's own estimator to a quarter of a JND (typically a tenth) in all four, and with Flytower's
  ``dsp.metrics.analyze`` in T30, C80 and D50 (``check_pair`` says why not EDT).

Then a loud background noise (a fault injected into the room) must get the next measurement
flagged for its noise margin.

Timing is never asserted: waits are for outcomes, with generous timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from drivers.audio import AudioConfig, AudioDriver
from dsp.measure import (
    Measurement,
    MeasurementDone,
    MeasurementFactory,
    MeasurementFailed,
    MeasurementPlan,
    Recording,
    StartMeasurement,
    analyze_recording,
    plan_measurement,
)
from dsp.metrics import analyze
from dsp.sweep import deconvolve
from simulators.acoustics import RoomDevice
from simulators.acoustics.family import ir_job, room_config
from simulators.acoustics.jack import parse_jack_lsp
from simulators.acoustics.truth import band_metrics
from simulators.control import bind, serve_http
from simulators.core import DeviceSpec
from simulators.runner import Simulation
from tests.conftest import wait_until
from tests.peers.jack import JackServer

pytestmark = pytest.mark.integration

RATE = 48000
NOISE_DB = 40.0
BANDS = (125, 250, 500, 1000, 2000, 4000)


@pytest.fixture(scope="module")
def jack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JackServer]:
    with JackServer(tmp_path_factory.mktemp("jack")) as server:
        yield server


def room_spec(jack: JackServer, cache: Path) -> DeviceSpec:
    """The small hall of tests/integration/test_sim_room.py: 0.8 s IRs, two speakers, two mics."""
    return DeviceSpec(
        id="hall",
        profile="audio_interface",
        transport={"kind": "audio", "device": "system", "jack_server": jack.name},
        simulate={
            "model": "room",
            "dimensions": [6.0, 5.0, 3.0],
            "materials": {"walls": 0.12, "floor": "audience_floor", "ceiling": 0.12},
            "audience_area_m2": 25.0,
            "speakers": [[1.0, 1.0, 1.5], [5.0, 1.0, 1.5]],
            "mics": [[3.0, 3.5, 1.2], [4.0, 2.5, 1.2]],
            "ir_seconds": 0.8,
            "max_order": 2,
            "rays": 3000,
            "noise_db_spl": NOISE_DB,
            "crossfade_s": 0.05,
            "cache_dir": str(cache),
        },
        where="test: devices[0] (hall).simulate",
    )


@contextlib.asynccontextmanager
async def running_room(
    jack: JackServer, cache: Path
) -> AsyncIterator[tuple[RoomDevice, httpx.AsyncClient]]:
    spec = room_spec(jack, cache)
    config = room_config(spec)
    await asyncio.to_thread(ir_job, config.model, config.initial, str(cache))  # warm the cache
    sim = Simulation({"venue": {"id": "test"}}, [spec])
    room = sim.devices["hall"]
    assert isinstance(room, RoomDevice)
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/sim/v1"
    async with (
        sim.running(),
        serve_http(sim.control, sock),
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        await wait_settled(http)
        yield room, http


async def truth(http: httpx.AsyncClient) -> dict[str, Any]:
    reply = await http.get("/truth", params={"ids": "hall"})
    reply.raise_for_status()
    return dict(reply.json()["devices"]["hall"])


async def wait_settled(http: httpx.AsyncClient) -> dict[str, Any]:
    async def settled() -> bool:
        return bool((await truth(http))["settled"])

    await wait_until(settled, 90, "the room's IR to play")
    return await truth(http)


def patched(jack: JackServer) -> bool:
    """The room has connected both speakers and both mics to Flytower's PortAudio client."""
    done = subprocess.run(["jack_lsp", "-c"], env=jack.env, capture_output=True, check=True)
    graph = parse_jack_lsp(done.stdout.decode())
    ports = [f"room-hall:in_{k}" for k in (0, 1)] + [f"room-hall:out_{k}" for k in (0, 1)]
    return all(any(p.startswith("PortAudio") for p in graph.get(port, ())) for port in ports)


class Measurer:
    """The parent's side of a measurement stream: starts runs, waits for their end."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.arrived = asyncio.Event()

    def on_event(self, event: tuple[Any, ...]) -> None:
        self.events.append(event)
        self.arrived.set()

    async def measure(self, driver: AudioDriver, run_id: str, plan: MeasurementPlan) -> Recording:
        driver.control(StartMeasurement(run_id, plan))
        deadline = asyncio.get_running_loop().time() + plan.seconds + 30
        while True:
            for event in self.events:
                payload = event[1] if event[0] == "event" else None
                if isinstance(payload, MeasurementDone) and payload.id == run_id:
                    assert payload.recording is not None
                    return payload.recording
                if isinstance(payload, MeasurementFailed) and payload.id == run_id:
                    pytest.fail(f"measurement failed: {payload}")
                if event[0] in ("control_error", "stream_lost"):
                    pytest.fail(f"measurement stream: {event}")
            self.arrived.clear()
            timeout = deadline - asyncio.get_running_loop().time()
            assert timeout > 0, f"no end of measurement {run_id}: {self.events[-5:]}"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout)


def pair(t: dict[str, Any], speaker: int, mic: int) -> dict[str, Any]:
    pairs = t["metrics"]["pairs"]
    return dict(next(p for p in pairs if p["speaker"] == speaker and p["mic"] == mic))


def best_match(measured: np.ndarray, ir: np.ndarray) -> tuple[int, float]:
    """Lag of the room's ``ir`` in ``measured`` and their correlation coefficient there."""
    n = measured.size + ir.size
    xcorr = np.fft.irfft(np.fft.rfft(measured, n) * np.conj(np.fft.rfft(ir, n)), n)
    lag = int(np.argmax(xcorr[: measured.size]))
    k = min(ir.size, measured.size - lag)
    segment, ref = measured[lag : lag + k], ir[:k]
    return lag, float(np.dot(segment, ref) / (np.linalg.norm(segment) * np.linalg.norm(ref)))


def band_limited(ir: np.ndarray, plan: MeasurementPlan) -> np.ndarray:
    """``ir`` as a measurement with the plan's sweep can see it: convolved with what
    deconvolving the sweep itself gives (the sweep's band, 20 Hz .. 20 kHz; a modelled IR
    has energy up to the Nyquist frequency, a few % of it above 20 kHz)."""
    s = plan.sweep
    own = deconvolve(np.concatenate([s.signal, np.zeros(RATE)]), s, RATE)
    half = RATE // 10
    kernel = own.data[own.zero - half : own.zero + half]
    return np.asarray(np.convolve(ir, kernel)[half : half + ir.size])


METRICS = ("t30_s", "edt_s", "c80_db", "d50")
JND = {"t30_s": (0.05, True), "edt_s": (0.05, True), "c80_db": (1.0, False), "d50": (0.05, False)}
"""One just-noticeable difference (issue 7): (tolerance, relative)."""


def ours(ir: np.ndarray) -> dict[str, list[float | None]]:
    """Flytower's ISO 3382 metrics (dsp.metrics) in the truth's layout."""
    got = analyze(ir, RATE)
    return {name: [getattr(got.band(fc), name) for fc in BANDS] for name in METRICS}


def off_by(
    got: dict[str, list[float | None]], expected: dict[str, Any], name: str, scale: float = 1.0
) -> list[float | None]:
    """How far ``got`` is from ``expected`` per band, in JNDs (times ``scale``)."""
    tol, relative = JND[name]
    out: list[float | None] = []
    for g, e in zip(got[name], expected[name], strict=True):
        if g is None or e is None:
            out.append(None)
        else:
            out.append(round((g - e) / (tol * scale * (e if relative else 1.0)), 3))
    return out


def within(
    got: dict[str, list[float | None]],
    expected: dict[str, Any],
    names: tuple[str, ...],
    what: str,
    scale: float = 1.0,
) -> None:
    """Every band both define within ``scale`` JND; T30 in at least four bands."""
    defined = [
        g for g, e in zip(got["t30_s"], expected["t30_s"], strict=True) if None not in (g, e)
    ]
    assert len(defined) >= 4, (what, got["t30_s"], expected["t30_s"])
    for name in names:
        off = off_by(got, expected, name, scale)
        print(f"  {what}, {name} off by {off} x {scale:g} JND")
        assert all(d is None or abs(d) <= 1.0 for d in off), (what, name, off)


def check_pair(
    measured: np.ndarray, room_ir: np.ndarray, truth: dict[str, Any], fine: float = 0.25
) -> None:
    """The measured IR against the room's truth, three ways (``fine``: the JNDs items 1 and 2
    allow).

    1. The measurement is transparent: the truth's own estimator (``truth.band_metrics``)
       finds the truth in the measured IR to a quarter of a JND (T30 1.25 %, C80 0.25 dB;
       typically within a tenth, but a loaded machine's xruns leave a little more).
    2. So is it for Flytower's metrics: ``dsp.metrics.analyze`` of the measured IR equals its
       value on the room's true IR to a quarter of a JND.
    3. ``dsp.metrics.analyze`` of the measured IR matches the truth within one JND in T30, C80
       and D50. (EDT is not held here: the two estimators' band filters differ, zero-phase in
       the truth, time-reversed in dsp.metrics, and their EDTs on this room's own IR differ by
       up to two JNDs at 125 Hz; item 1 holds the measurement's EDT to the truth.)
    """
    within(band_metrics(measured, RATE), truth, METRICS, "truth.py on the measured IR", fine)
    within(ours(measured), ours(room_ir), METRICS, "dsp.metrics, measured vs true IR", fine)
    mine = ours(measured)
    print(f"  dsp.metrics vs truth, edt_s off by {off_by(mine, truth, 'edt_s')} JND (not held)")
    within(mine, truth, ("t30_s", "c80_db", "d50"), "dsp.metrics on the measured IR vs truth")


def judge(
    result: Measurement,
    plan: MeasurementPlan,
    irs: np.ndarray,
    t: dict[str, Any],
    strict: bool = True,
) -> None:
    """The measurement of the room's four pairs against the room's own IRs and truth.
    ``strict``: a correlation of 0.999 and transparency to a quarter of a JND; else 0.99 and
    one JND, the issue's own bar, for a take JACK lost cycles in."""
    # The background noise the room was told to make: 40 dB SPL, full scale 120 dB SPL.
    for n in result.noise:
        print(f"noise at input {n.input}: {n.broadband_dbfs:.1f} dBFS broadband")
        assert n.broadband_dbfs + 120 == pytest.approx(NOISE_DB, abs=1.5)
    assert result.noise_margin_ok and not result.flagged("clipped")
    for speaker in (1, 2):
        for mic in (1, 2):
            p = result.pair(speaker, mic)
            assert p.peak_to_noise_db is not None
            print(
                f"speaker {speaker} -> mic {mic}: peak-to-noise "
                f"{np.round(p.peak_to_noise_db, 1).tolist()} dB, THD {p.thd:.2e}, "
                f"onset {1000 * p.onset_s:.1f} ms, sweeps used {p.sweeps_used}"
            )
            assert min(p.peak_to_noise_db) > 45, "enough for a T30 in every band"
            assert p.thd < 0.01, "the room is linear"
            room_ir = irs[mic - 1, speaker - 1].astype(float)
            _, raw = best_match(p.ir, room_ir)
            lag, coeff = best_match(p.ir, band_limited(room_ir, plan))
            print(
                f"  the room's IR found {lag} samples in, correlation {coeff:.6f} "
                f"({raw:.4f} with its energy above {plan.sweep.f2_hz:g} Hz)"
            )
            assert coeff > (0.999 if strict else 0.99)
            assert lag % 256 == 0, "the loop delays by whole JACK periods"
            check_pair(p.ir, room_ir, pair(t, speaker, mic), 0.25 if strict else 1.0)


async def test_a_sweep_measurement_recovers_the_room(jack: JackServer, tmp_path: Path) -> None:
    cache = tmp_path / "room-cache"
    # The room's IRs ring 0.8 s; the loop adds three JACK periods and the sound's flight.
    plan = plan_measurement(
        RATE, (1, 2), (1, 2), sweeps=3, sweep_s=1.5, ir_s=0.9, noise_s=1.0, level_db=-30.0
    )
    measurer = Measurer()
    config = AudioConfig(
        device="system, JACK Audio Connection Kit",
        jack_server=jack.name,
        blocksize=256,
        input_map=(1, 2),
        output_map=(1, 2),
    )
    async with running_room(jack, cache) as (room, http):
        t = await truth(http)
        irs, _, _ = ir_job(room.config.model, room.state, str(cache))  # [mic, speaker, n]
        async with AudioDriver(
            "measure", config, MeasurementFactory(), on_event=measurer.on_event
        ) as driver:

            async def connected() -> bool:
                return driver.streaming and await asyncio.to_thread(patched, jack)

            await wait_until(connected, 60, "the room to patch itself to the measurement stream")
            # A take during which JACK lost cycles (an xrun: the machine not running the graph
            # in time, which drops periods from the sweeps it falls in) and that fails the
            # checks is measured again, each time said; up to three takes. A take with no xrun
            # is judged as it is. If every take had xruns, one of them must meet the issue's
            # own bar (one JND; CI saw 64-122 xruns in each of three 14.7 s takes).
            spoiled: list[Measurement] = []
            for take in range(1, 4):
                before = driver.snapshot().xruns
                recording = await measurer.measure(driver, f"hall-{take}", plan)
                xruns = driver.snapshot().xruns - before
                result = await asyncio.to_thread(analyze_recording, plan, recording)
                print(f"\ntake {take}: {plan.seconds:.1f} s measured, {xruns} xrun(s)")
                print(result.to_dict()["noise"])
                for w in result.warnings:
                    print("warning:", w.text)
                try:
                    judge(result, plan, irs, t)
                    break
                except AssertionError as exc:
                    if not xruns:
                        raise
                    spoiled.append(result)
                    print(f"take {take} spoiled by its xruns ({exc})")
            else:
                errors: list[AssertionError] = []
                for i, result in enumerate(spoiled, 1):
                    print(f"take {i} against one JND:")
                    try:
                        judge(result, plan, irs, t, strict=False)
                        break
                    except AssertionError as exc:
                        errors.append(exc)
                else:
                    raise errors[0]

            # A loud room: the same measurement is flagged as too noisy for a T30.
            reply = await http.post("/devices/hall/faults/noise_level", json={"db_spl": 95.0})
            assert reply.status_code == 200, reply.text
            quick = plan_measurement(
                RATE, (1,), (1,), sweeps=1, sweep_s=1.5, ir_s=0.9, level_db=-30.0
            )
            recording = await measurer.measure(driver, "hall-noisy", quick)
            noisy = await asyncio.to_thread(analyze_recording, quick, recording)
            low = noisy.flagged("low_noise_margin")
            print(f"with 95 dB SPL of noise: {[w.text for w in low]}")
            assert low and not noisy.noise_margin_ok
            assert noisy.noise[0].broadband_dbfs + 120 == pytest.approx(95.0, abs=1.5)
