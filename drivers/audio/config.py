"""Configuration of one audio stream: the device, its format and the channel map.

``AudioConfig`` carries the fields of ``drivers.model.AudioTransport`` (device, samplerate,
blocksize) plus what the transport does not have yet:

- ``input_map`` / ``output_map``: the channel map. ``input_map[i]`` is the device input channel
  (1-based, as on a stage box and in sounddevice's ``mapping``) that feeds the processor's input
  ``i``; ``output_map[j]`` is the device output that the processor's output ``j`` goes to. The
  stream opens as many device channels as the highest channel named, so ``output_map = [2]``
  opens two outputs and leaves output 1 silent. One device input may feed several processor
  inputs; two processor outputs may not share a device output (there is no mixer here).
- ``max_consecutive_failures``: after this many blocks in a row in which the processor raised
  (or wrote NaN/inf), it is bypassed and the outputs stay muted until the stream is reopened.
- ``jack_server``: which JACK server to join (``JACK_DEFAULT_SERVER``), ``None`` for the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.model import AudioTransport

Channel = int


class AudioError(RuntimeError):
    """The audio stream cannot be opened or has stopped; the message says why."""


class DeviceNotFound(AudioError):
    """No device matches the configured name; the message lists the available devices."""


class AudioFormatError(AudioError):
    """The device refuses the configured format (sample rate, channel count)."""


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """What a processor factory is told about the stream it will serve."""

    samplerate: int
    blocksize: int
    n_in: int
    n_out: int


class AudioConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str | None = None
    samplerate: int = Field(default=48000, ge=8000, le=192000)
    blocksize: int = Field(default=128, ge=16, le=8192)
    input_map: tuple[Channel, ...] = (1, 2)
    output_map: tuple[Channel, ...] = (1, 2)
    max_consecutive_failures: int = Field(default=8, ge=1, le=10_000)
    jack_server: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # How long the stream may go without a callback before it counts as stalled.
    stall_timeout_s: float = Field(default=1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _maps(self) -> Self:
        for name, chans in (("input_map", self.input_map), ("output_map", self.output_map)):
            if len(chans) > 128:
                raise ValueError(f"{name}: at most 128 channels")
            bad = [c for c in chans if not 1 <= c <= 128]
            if bad:
                raise ValueError(f"{name}: device channels are numbered 1..128, got {bad}")
        if not self.input_map or not self.output_map:
            raise ValueError("a duplex stream needs at least one input and one output channel")
        dupes = sorted({c for c in self.output_map if self.output_map.count(c) > 1})
        if dupes:
            raise ValueError(f"output_map: device output(s) {dupes} named twice")
        return self

    @property
    def n_in(self) -> int:
        """Processor inputs."""
        return len(self.input_map)

    @property
    def n_out(self) -> int:
        """Processor outputs."""
        return len(self.output_map)

    @property
    def device_inputs(self) -> int:
        """Device input channels the stream opens."""
        return max(self.input_map, default=0)

    @property
    def device_outputs(self) -> int:
        """Device output channels the stream opens."""
        return max(self.output_map, default=0)

    @property
    def stream_format(self) -> StreamFormat:
        return StreamFormat(self.samplerate, self.blocksize, self.n_in, self.n_out)

    @classmethod
    def from_transport(cls, transport: AudioTransport, **extra: object) -> AudioConfig:
        """Identity map over the transport's ``inputs``/``outputs``, unless ``extra`` says else."""
        fields: dict[str, object] = {
            "device": transport.device,
            "samplerate": transport.samplerate,
            "blocksize": transport.blocksize,
            "input_map": tuple(range(1, transport.inputs + 1)),
            "output_map": tuple(range(1, transport.outputs + 1)),
        }
        fields.update(extra)
        return cls.model_validate(fields)
