"""Audio I/O: a duplex PortAudio stream (sounddevice) running a processor from ``dsp/``.

See ``driver.py`` for the design and docs/interfaces/audio.md for the interface.
"""

from drivers.audio.config import (
    AudioConfig,
    AudioError,
    AudioFormatError,
    DeviceNotFound,
    StreamFormat,
)
from drivers.audio.devices import AudioDevice, list_devices, match_device
from drivers.audio.driver import AudioConnection, AudioDriver, AudioStats, StreamAborted
from drivers.audio.engine import CallbackEngine, Processor
from drivers.audio.host import ProcessorFactory

__all__ = [
    "AudioConfig",
    "AudioConnection",
    "AudioDevice",
    "AudioDriver",
    "AudioError",
    "AudioFormatError",
    "AudioStats",
    "CallbackEngine",
    "DeviceNotFound",
    "Processor",
    "ProcessorFactory",
    "StreamAborted",
    "StreamFormat",
    "list_devices",
    "match_device",
]
