"""The acoustic room on a real JACK server (jackd2, dummy backend), heard by an independent client.

The peer is a separate process with its own PortAudio JACK client (named ``PortAudio``, as
Flytower's would be): it plays a periodic flat-spectrum sequence on one output and records its
inputs. The room patches itself to it (its default ``flytower_client`` pattern). Folding the
recording over the sequence's period and dividing spectra gives the loop's impulse response,
which must be the room's IR (delayed by the JACK loop latency) to a correlation > 0.99. With the
peer silent, the microphones carry the configured noise level.

Timing is never asserted: waits are for outcomes, with generous timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simulators.acoustics import RoomDevice, RoomFamily
from simulators.acoustics.family import ir_job, room_config
from simulators.core import DeviceSpec
from tests.conftest import wait_until
from tests.peers.jack import JackServer

pytestmark = pytest.mark.integration

RATE = 48000
PERIOD = 1 << 14  # longer than the IR (0.2 s) plus the loop latency
SETTLE = 3 * RATE // 4  # frames recorded before the room has surely patched the peer
NOISE_DB = 40.0

PEER = """
import sys, numpy as np, sounddevice as sd
seconds, out, play_on, period = float(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(3)
spectrum = np.exp(2j * np.pi * rng.random(period // 2 + 1))
spectrum[0] = spectrum[-1] = 1
seq = (0.3 * np.fft.irfft(spectrum, period) / np.fft.irfft(spectrum, period).std()).astype("f4")
frames = int(seconds * 48000)
rec = np.zeros((frames, 2), "f4")
state = {"n": 0}
def cb(indata, outdata, n, t, status):
    i = state["n"]
    outdata.fill(0)
    if play_on >= 0 and i < frames - 48000:  # the last second is silent: room noise only
        idx = (i + np.arange(n)) % period
        outdata[:, play_on] = seq[idx]
    k = min(n, frames - i)
    if k > 0:
        rec[i:i + k] = indata[:k]
    state["n"] = i + n
with sd.Stream(device="system", channels=2, samplerate=48000, blocksize=256, dtype="float32",
               callback=cb):
    while state["n"] < frames:
        sd.sleep(50)
np.save(out, rec)
"""


def sequence() -> np.ndarray:
    """The peer's sequence (same seed and construction)."""
    rng = np.random.default_rng(3)
    spectrum = np.exp(2j * np.pi * rng.random(PERIOD // 2 + 1))
    spectrum[0] = spectrum[-1] = 1
    seq = np.fft.irfft(spectrum, PERIOD)
    return 0.3 * seq / seq.std()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One IR cache for the module: the second test reuses the first one's empty-room IRs."""
    return tmp_path_factory.mktemp("room-cache")


@pytest.fixture(scope="module")
def jack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JackServer]:
    with JackServer(tmp_path_factory.mktemp("jack"), period=256) as server:
        yield server


def room_spec(jack: JackServer, cache: Path) -> DeviceSpec:
    return DeviceSpec(
        id="hall",
        profile="audio_interface",
        transport={"kind": "audio", "device": "system", "jack_server": jack.name},
        simulate={
            "model": "room",
            "dimensions": [6.0, 5.0, 3.0],
            "materials": {"walls": 0.3, "floor": "audience_floor", "ceiling": 0.5},
            "audience_area_m2": 20.0,
            "speakers": [[1.0, 1.0, 1.5], [5.0, 1.0, 1.5]],
            "mics": [[3.0, 3.5, 1.2], [4.0, 2.5, 1.2]],
            "ir_seconds": 0.2,
            "max_order": 2,
            "rays": 1000,
            "noise_db_spl": NOISE_DB,
            "crossfade_s": 0.05,
            "cache_dir": str(cache),
        },
        where="test: devices[0] (hall).simulate",
    )


@contextlib.asynccontextmanager
async def running_room(jack: JackServer, cache: Path) -> AsyncIterator[RoomDevice]:
    family = RoomFamily({"venue": {"id": "test"}})
    room = family.add(room_spec(jack, cache))
    async with contextlib.AsyncExitStack() as stack:
        for host in family.hosts():
            await stack.enter_async_context(host)

        async def settled() -> bool:
            return bool(room.truth()["settled"])

        await wait_until(settled, 60, "the first IR to play")
        yield room


async def peer(jack: JackServer, tmp: Path, seconds: float, play_on: int) -> np.ndarray:
    out = tmp / f"rec-{play_on}.npy"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PEER, str(seconds), str(out), str(play_on), str(PERIOD),
        env=jack.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    return np.load(out)


def loop_response(x: np.ndarray) -> np.ndarray:
    """The loop's impulse response: each period of the recording deconvolved by the sequence
    (circularly: the excitation is periodic), then the median over periods, so that a period
    hit by an xrun on this loaded machine does not spoil the estimate."""
    first = -(-SETTLE // PERIOD) * PERIOD
    periods = (len(x) - RATE - first) // PERIOD
    assert periods >= 3, "not enough signal recorded"
    folded = x[first : first + periods * PERIOD].reshape(periods, PERIOD)
    each = np.fft.irfft(np.fft.rfft(folded, axis=1) / np.fft.rfft(sequence()), PERIOD, axis=1)
    return np.asarray(np.median(each, axis=0))


def best_match(measured: np.ndarray, ir: np.ndarray) -> tuple[int, float]:
    """Lag of ``ir`` in ``measured`` and their correlation coefficient there."""
    padded = np.zeros(PERIOD)
    padded[: ir.size] = ir
    xcorr = np.fft.irfft(np.fft.rfft(measured) * np.conj(np.fft.rfft(padded)), PERIOD)
    lag = int(np.argmax(xcorr))
    segment = np.roll(measured, -lag)[: ir.size]
    coeff = float(np.dot(segment, ir) / (np.linalg.norm(segment) * np.linalg.norm(ir)))
    return lag, coeff


def ports(jack: JackServer) -> dict[str, Any]:
    done = subprocess.run(["jack_lsp", "-c"], env=jack.env, capture_output=True, check=True)
    from simulators.acoustics.jack import parse_jack_lsp

    return dict(parse_jack_lsp(done.stdout.decode()))


async def test_room_returns_its_ir_and_noise(
    jack: JackServer, cache: Path, tmp_path: Path
) -> None:
    # Warm the cache here: the second test exercises computing an IR in the room's worker.
    spec_config = room_config(room_spec(jack, cache))
    await asyncio.to_thread(ir_job, spec_config.model, spec_config.initial, str(cache))
    async with running_room(jack, cache) as room:
        truth = room.truth()
        assert truth["stream"]["running"] and truth["playing"]["occupancy"] == 0.0
        irs, _, cached = ir_job(room.config.model, room.state, str(cache))
        assert cached, "the room uses the cache it was given"

        # Speaker 1 plays; both microphones record.
        rec = await peer(jack, tmp_path, (SETTLE + 6 * PERIOD + RATE) / RATE, play_on=0)
        lags = []
        for mic in range(2):
            lag, coeff = best_match(loop_response(rec[:, mic].astype(float)), irs[mic, 0])
            print(f"\nmic {mic + 1}: loop lag {lag} samples, correlation {coeff:.4f}")
            assert coeff > 0.99
            lags.append(lag)
        assert lags[0] == lags[1], "both microphones are heard with the same loop latency"
        assert lags[0] % 256 == 0, "the loop delays by whole JACK periods"

        # The room client is patched to the peer only, never to the system ports.
        graph = ports(jack)
        room_links = {p: peers for p, peers in graph.items() if p.startswith("room-hall:")}
        assert room_links and not any(
            peer.startswith("system:") for peers in room_links.values() for peer in peers
        )

        # Silence in: the configured noise floor out; a noise fault raises it.
        quiet = rec[-RATE // 2 :]  # the peer's silent end, after the room stopped ringing
        level = 20 * np.log10(np.sqrt(np.mean(quiet**2, axis=0))) + 120
        print(f"noise floor {level} dB SPL (configured {NOISE_DB})")
        np.testing.assert_allclose(level, NOISE_DB, atol=1.0)
        room.inject("noise_level", {"db_spl": 70.0})
        loud = await peer(jack, tmp_path, 1.5, play_on=-1)
        level = 20 * np.log10(np.sqrt(np.mean(loud[SETTLE:] ** 2, axis=0))) + 120
        np.testing.assert_allclose(level, 70.0, atol=1.0)
        room.clear("noise_level")


async def test_occupancy_crossfades_in_the_occupied_ir(
    jack: JackServer, cache: Path, tmp_path: Path
) -> None:
    async with running_room(jack, cache) as room:
        empty, _, _ = ir_job(room.config.model, room.state, str(cache))
        version = room.version
        room.inject("occupancy", {"fraction": 1.0})
        assert room.truth()["settled"] is False

        async def settled() -> bool:
            return bool(room.truth()["settled"])

        await wait_until(settled, 60, "the occupied IR to crossfade in")
        truth = room.truth()
        assert truth["playing"]["occupancy"] == 1.0 and room.version > version
        irs, _, _ = ir_job(room.config.model, room.state, str(cache))
        assert not np.allclose(irs, empty, atol=1e-3), "occupancy changed the IRs"
        rec = await peer(jack, tmp_path, (SETTLE + 6 * PERIOD + RATE) / RATE, play_on=1)
        _, coeff = best_match(loop_response(rec[:, 0].astype(float)), irs[0, 1])
        assert coeff > 0.99, "speaker 2 -> mic 1 now sounds like the occupied room"
