"""Audio devices in the service: the audio driver behind the ``DeviceDriver`` interface.

The sound-field engine (dsp/) is not wired yet, so the stream's processor writes silence: the
stream still opens, runs in real time and reports its xruns, load and latency, so a venue can
check its audio path without sending sound to the room. The processor factory runs in the
stream's child process, so it must be a picklable module-level function.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from drivers.audio import AudioConfig, AudioDriver, StreamFormat
from drivers.audio.engine import Processor
from drivers.base import HealthSink, ReadingSink
from drivers.model import (
    AudioTransport,
    CommandError,
    Device,
    DriverStats,
    Health,
    Value,
)


def _silence(inp: np.ndarray, out: np.ndarray) -> None:
    out.fill(0.0)


def silence(fmt: StreamFormat) -> Processor:
    """The processor until the sound-field engine lands: outputs stay silent."""
    return _silence


def config_of(transport: AudioTransport) -> AudioConfig:
    extra: dict[str, object] = {"jack_server": transport.jack_server}
    if transport.input_map is not None:
        extra["input_map"] = tuple(transport.input_map)
    if transport.output_map is not None:
        extra["output_map"] = tuple(transport.output_map)
    return AudioConfig.from_transport(transport, **extra)


class AudioDevice:
    """An audio stream as a device: readings are the stream's figures; no commands."""

    def __init__(self, device: Device, sink: ReadingSink, on_health: HealthSink) -> None:
        assert isinstance(device.transport, AudioTransport)
        self._device = device
        self.driver = AudioDriver(
            device.id, config_of(device.transport), silence, on_health=on_health, sink=sink
        )

    @property
    def device(self) -> Device:
        return self._device

    @property
    def stats(self) -> DriverStats:
        return self.driver.stats

    @property
    def health(self) -> Health:
        return self.driver.health

    async def run(self) -> None:
        await self.driver.run()

    def stop(self) -> None:
        self.driver.stop()

    async def command(self, name: str, args: Mapping[str, Any]) -> list[tuple[str, Value]]:
        raise CommandError(f"{self._device.id}: an audio stream has no commands")
