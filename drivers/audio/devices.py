"""Finding the audio device a configuration names.

``match_device`` is pure: it picks one of the devices PortAudio lists, by exact name, then by
case-insensitive substring of ``"name, host API"`` (so ``"JACK"`` finds JACK's ``system``
device), and checks that it has the channels the channel map needs. When nothing (or more than
one device) matches, the error lists what is available, because the person reading it is
standing next to the rack wondering which name to type.

``list_devices`` asks PortAudio in a short-lived child process (``python -m
drivers.audio.host --list``), never in the calling process: PortAudio joins the JACK server when
it initialises, and a process whose JACK server has died can no longer shut PortAudio down
without aborting (see ``drivers/audio/host.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from drivers.audio.config import AudioError, DeviceNotFound


@dataclass(frozen=True, slots=True)
class AudioDevice:
    """One PortAudio device, as ``sounddevice.query_devices()`` describes it."""

    index: int
    name: str
    hostapi: str
    max_inputs: int
    max_outputs: int
    default_samplerate: float

    @property
    def label(self) -> str:
        return f"{self.name}, {self.hostapi}"

    def describe(self) -> str:
        return f"[{self.index}] {self.label} ({self.max_inputs} in, {self.max_outputs} out)"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _available(devices: Sequence[AudioDevice]) -> str:
    if not devices:
        return "no devices at all (is the audio server running?)"
    return "available: " + "; ".join(d.describe() for d in devices)


def match_device(
    devices: Sequence[AudioDevice],
    wanted: str | None,
    inputs: int,
    outputs: int,
    default: int | None = None,
) -> AudioDevice:
    """The device ``wanted`` names (``None``: PortAudio's ``default``) with enough channels.

    Raises ``DeviceNotFound`` when nothing matches, the name is ambiguous or the match has too
    few channels; the message lists the available devices.
    """
    if wanted is None:
        found = [d for d in devices if d.index == default]
        if not found:
            raise DeviceNotFound(f"no default audio device; {_available(devices)}")
    else:
        found = [d for d in devices if d.name == wanted or d.label == wanted]
        if not found:
            needle = wanted.casefold()
            found = [d for d in devices if needle in d.label.casefold()]
        if not found:
            raise DeviceNotFound(f"no audio device matches '{wanted}'; {_available(devices)}")
        if len(found) > 1:
            # Prefer the one device that has the channels, if the name alone is ambiguous.
            fit = [d for d in found if d.max_inputs >= inputs and d.max_outputs >= outputs]
            if len(fit) != 1:
                names = "; ".join(d.describe() for d in found)
                raise DeviceNotFound(f"'{wanted}' matches several devices: {names}")
            found = fit
    device = found[0]
    if device.max_inputs < inputs or device.max_outputs < outputs:
        raise DeviceNotFound(
            f"{device.describe()} has too few channels: the channel map needs {inputs} in, "
            f"{outputs} out; {_available(devices)}"
        )
    return device


def host_environment(jack_server: str | None) -> dict[str, str]:
    """The environment a PortAudio child process needs to join ``jack_server``."""
    env = dict(os.environ)
    # Never let a PortAudio client start a JACK server of its own behind our back.
    env["JACK_NO_START_SERVER"] = "1"
    if jack_server is not None:
        env["JACK_DEFAULT_SERVER"] = jack_server
    return env


def list_devices(jack_server: str | None = None, timeout_s: float = 15.0) -> list[AudioDevice]:
    """The devices PortAudio sees (in a child process; blocks for a fraction of a second).

    From the event loop, call it through ``asyncio.to_thread``.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-m", "drivers.audio.host", "--list"],
            env=host_environment(jack_server),
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AudioError(f"listing audio devices took longer than {timeout_s} s") from exc
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise AudioError(f"listing audio devices failed: {' / '.join(tail)}")
    # libjack may print to stdout too; the listing is the last line.
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    return [AudioDevice(**d) for d in json.loads(lines[-1] if lines else "[]")]
