"""The audio driver against a real JACK server (jackd2, dummy backend), looped back with
jack_connect. Each stream runs in its own audio host process (drivers/audio/host.py), which is
also what makes PortAudio pick up JACK_DEFAULT_SERVER reliably: the environment is set before
the child initialises PortAudio, so nothing here re-initialises PortAudio in the test process.

Timing is never asserted: tests wait for outcomes with generous timeouts. The loop latency is
measured (printed with -s) and checked only for being a whole, stable number of samples.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from drivers.audio import (
    AudioConfig,
    AudioConnection,
    AudioDriver,
    AudioFormatError,
    DeviceNotFound,
    list_devices,
)
from drivers.model import Health, HealthState, Reading
from tests.conftest import wait_until
from tests.peers.jack import FailingFactory, JackServer, Recording, SignalFactory, prbs

pytestmark = pytest.mark.integration

PERIOD = 4096  # length of the pseudo-random sequence, longer than any loop latency here
OPEN_S = 30.0


@pytest.fixture(scope="module")
def jack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JackServer]:
    with JackServer(tmp_path_factory.mktemp("jack")) as server:
        yield server


def config(jack: JackServer, **fields: object) -> AudioConfig:
    return AudioConfig.model_validate({"device": "JACK", "jack_server": jack.name, **fields})


async def streaming(driver: AudioDriver) -> None:
    async def running() -> bool:
        return driver.snapshot().callbacks > 0

    await wait_until(running, OPEN_S, "the stream to run")


async def recorded(rec: Recording, frames: int) -> None:
    async def enough() -> bool:
        return rec.frames() >= frames

    await wait_until(enough, 30, f"{frames} recorded frames")


def loop_lag(x: np.ndarray, start: int) -> tuple[int, float, np.ndarray]:
    """Lag (samples) of the PRBS in ``x`` after ``start``, the normalised peak, and the
    received period. ``x`` is indexed in stream frames, as is the sequence the processor played
    (it starts at frame 0), so the lag is the loop latency modulo PERIOD."""
    first = math.ceil(start / PERIOD) * PERIOD
    periods = (len(x) - first) // PERIOD
    assert periods >= 4, "not enough looped signal recorded"
    folded = x[first : first + periods * PERIOD].reshape(periods, PERIOD).mean(axis=0)
    ref = prbs(PERIOD)
    corr = np.fft.irfft(np.fft.rfft(folded) * np.conj(np.fft.rfft(ref)), PERIOD)
    lag = int(np.argmax(np.abs(corr)))
    return lag, float(corr[lag] / np.dot(ref, ref)), folded


def test_list_devices_sees_jack(jack: JackServer) -> None:
    devices = list_devices(jack.name)
    system = [d for d in devices if d.hostapi == "JACK Audio Connection Kit"]
    assert [(d.name, d.max_inputs, d.max_outputs) for d in system] == [("system", 2, 2)]


async def test_samples_flow_through_the_loop(jack: JackServer) -> None:
    """A 440 Hz sine on output 1 and a pseudo-random sequence on output 2, looped back by
    jack_connect, arrive on inputs 1 and 2: the sine at 440 Hz, the sequence bit-exact after a
    fixed delay, which is the loop latency."""
    rec = Recording(48000 * 5, 2)
    readings: list[Reading] = []

    async def sink(batch: list[Reading]) -> None:
        readings.extend(batch)

    factory = SignalFactory(("sine:440", "prbs"), rec)
    async with AudioDriver("fx", config(jack), factory, sink=sink, report_interval_s=0.2) as drv:
        await streaming(drv)
        await asyncio.to_thread(jack.loop, 0, 0)
        await asyncio.to_thread(jack.loop, 1, 1)
        connected = rec.frames()
        await recorded(rec, connected + 48000 + 8 * PERIOD)
        stats = drv.snapshot()
        assert drv.health.state in (HealthState.ONLINE, HealthState.DEGRADED)  # xruns may occur

    x = rec.array()
    settle = connected + 48000 // 4  # jack_connect returns before the next cycle uses the edge
    tail = x[settle:, 0]
    spectrum = np.abs(np.fft.rfft(tail * np.hanning(len(tail))))
    peak_hz = np.argmax(spectrum) * 48000 / len(tail)
    assert abs(peak_hz - 440) < 2, peak_hz

    lag, peak, folded = loop_lag(x[:, 1], settle)
    print(f"\nJACK loop latency: {lag} samples ({1000 * lag / 48000:.2f} ms)")
    assert peak > 0.99, f"sequence not found in the input (peak {peak:.2f})"
    np.testing.assert_allclose(folded, np.roll(prbs(PERIOD), lag), atol=1e-6)
    assert lag % 128 == 0, "the loop delays by whole blocks"

    assert stats.callbacks > 0 and stats.frames == stats.callbacks * 128
    assert stats.device == "system, JACK Audio Connection Kit"
    assert stats.output_latency_s > 0
    names = {r.point for r in readings}
    assert {"xruns", "cpu_load", "callback_load", "output_latency_ms", "frames"} <= names


async def test_channel_map_routes_to_the_named_channels(jack: JackServer) -> None:
    """The processor's only output goes to device output 2: looped 2 -> 2 it arrives on
    processor input 2; device output 1 (unmapped) is silent, so input 1 hears nothing."""
    rec = Recording(48000 * 5, 2)
    cfg = config(jack, input_map=(1, 2), output_map=(2,))
    async with AudioDriver("map", cfg, SignalFactory(("prbs",), rec)) as drv:
        await streaming(drv)
        await asyncio.to_thread(jack.loop, 0, 0)
        await asyncio.to_thread(jack.loop, 1, 1)
        connected = rec.frames()
        await recorded(rec, connected + 48000 // 4 + 6 * PERIOD)
    x = rec.array()
    settle = connected + 48000 // 4
    assert not x[settle:, 0].any(), "device output 1 is not mapped: input 1 must stay silent"
    _, peak, _ = loop_lag(x[:, 1], settle)
    assert peak > 0.99


async def test_processor_that_always_fails_is_bypassed(jack: JackServer) -> None:
    health: list[Health] = []
    cfg = config(jack, max_consecutive_failures=4)
    async with AudioDriver(
        "bad", cfg, FailingFactory(every=1), on_health=health.append, report_interval_s=0.2
    ) as drv:

        async def bypassed() -> bool:
            return drv.health.state is HealthState.DEGRADED and "bypassed" in drv.health.reason

        await wait_until(bypassed, OPEN_S, "the processor to be bypassed")
        stats = drv.snapshot()
    assert stats.bypassed and stats.processor_errors == 4, "not called again once bypassed"
    assert any("ValueError: block 4 is bad" in h.reason for h in health)
    assert stats.callbacks > 4, "the stream survives its processor"


async def test_intermittent_processor_failures_degrade_health(jack: JackServer) -> None:
    cfg = config(jack, max_consecutive_failures=2)
    async with AudioDriver(
        "nan", cfg, FailingFactory(every=3, nan=True), report_interval_s=0.2
    ) as drv:

        async def degraded() -> bool:
            return drv.snapshot().processor_errors >= 3 and "NaN" in drv.health.reason

        await wait_until(degraded, OPEN_S, "NaN blocks to be counted")
        assert drv.health.state is HealthState.DEGRADED
        assert not drv.snapshot().bypassed


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        (
            {"device": "Dante Virtual Soundcard"},
            DeviceNotFound,
            "system, JACK Audio Connection Kit",
        ),
        ({"input_map": (3,)}, DeviceNotFound, "too few channels"),
        ({"samplerate": 44100}, AudioFormatError, "default rate is 48000 Hz"),
    ],
)
async def test_bad_config_gives_a_clear_error(
    jack: JackServer, fields: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        async with AudioConnection(config(jack, **fields), SignalFactory(("silence",))):
            pass


async def test_driver_reports_a_missing_device_offline_and_keeps_trying(jack: JackServer) -> None:
    async with AudioDriver("nodev", config(jack, device="Dante"), SignalFactory(("silence",))) as d:

        async def offline() -> bool:
            return d.health.state is HealthState.OFFLINE and "Dante" in d.health.reason

        await wait_until(offline, OPEN_S, "health OFFLINE naming the device")
        assert "available: [0] system" in d.health.reason
    assert d.health.reason == "stopped"


async def test_stop_and_restart(jack: JackServer) -> None:
    conn = AudioConnection(config(jack), SignalFactory(("sine:1000", "silence")))
    for _ in range(2):  # reusable, one stream at a time
        async with conn:

            async def running() -> bool:
                return conn.snapshot().callbacks > 10

            await wait_until(running, OPEN_S, "callbacks")
        assert not [p for p in await asyncio.to_thread(jack.ports) if p.startswith("PortAudio")]


async def test_jackd_killed_then_back(tmp_path: Path) -> None:
    """jackd dies under a running stream: health goes OFFLINE with the reason; when jackd is
    back (same name), the supervisor opens a new stream in a new audio host process."""
    health: list[Health] = []
    server = JackServer(tmp_path).start()
    try:
        cfg = config(server, stall_timeout_s=1.0)
        async with AudioDriver(
            "crash", cfg, SignalFactory(("sine:440", "silence")), on_health=health.append
        ) as drv:
            await streaming(drv)
            server.kill()

            async def offline() -> bool:
                return drv.health.state is HealthState.OFFLINE

            await wait_until(offline, 30, "health OFFLINE after jackd was killed")
            first = next(h for h in health if h.state is HealthState.OFFLINE)
            assert "stopped by itself" in first.reason or "stalled" in first.reason, first

            server = JackServer(tmp_path, name=server.name).start()

            async def recovered() -> bool:
                return (
                    drv.stats.reconnects >= 1
                    and drv.health.state is not HealthState.OFFLINE
                    and drv.snapshot().callbacks > 10
                )

            await wait_until(recovered, 60, "a new stream on the restarted jackd")
    finally:
        server.stop()
