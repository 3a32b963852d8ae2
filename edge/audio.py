"""Audio devices in the service, and the cue engine's ``Audio`` port over them.

Each venue audio device is an ``AudioDriver`` stream whose processor is the file player
(``drivers.audio.player``) over silence: when nothing plays the outputs are silent, and the
stream still runs in real time and reports its xruns, load and latency. (On the device that
runs the venue's sound field, ``[acoustics]``, the sound-field engine is the player's ``inner``
processor: the player mixes files over it; ``edge.acoustics``.) The
processor factory runs in the stream's child process, so it is picklable.

``PlayerLink`` is the parent's side of one stream's player: it sends commands through
``AudioDriver.control`` and turns the player's events into futures, one per voice.

``ServiceAudio`` implements ``controller.playback.ports.Audio``:

- ``play`` resolves the file under the show's media folder (the show file's folder), refusing
  any path that leaves it (``..``, absolute, a symlink out) before anything reaches the child;
  picks the audio device named ``output`` (or the venue's first audio device with outputs);
  sends ``Play`` and **returns when the sound ends** (a loop never ends by itself). When the
  awaiting task is cancelled (the cue is stopped, panic, release) it stops the voice with a
  ``STOP_FADE_S`` fade, waits (briefly) for the player to confirm, and re-raises. Failures
  (file not found, unreadable, too long, channels, voice limit, stream down) raise
  ``PlaybackError`` with the reason.
- ``soundfield``: recalls a mode on the node's sound field (``edge.acoustics``, the
  ``soundfield`` argument, or a callable giving it); a node without one raises
  ``Unavailable`` (a ``PlaybackError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Protocol

import numpy as np

from controller.journal import Origin
from controller.playback.ports import PlaybackError, Unavailable
from drivers.audio import AudioConfig, AudioDriver, AudioError, StreamFormat
from drivers.audio.engine import Processor
from drivers.audio.player import (
    Ended,
    Failed,
    FailReason,
    Play,
    PlayerFactory,
    Position,
    Started,
    Stop,
    StopAll,
)
from drivers.base import HealthSink, ReadingSink
from drivers.model import (
    AudioTransport,
    CommandError,
    Device,
    DriverStats,
    Health,
    Value,
)

log = logging.getLogger(__name__)

STOP_FADE_S = 0.05  # a cancelled play fades out this fast: short, but no click
STOP_CONFIRM_S = 1.0  # how long a cancelled play waits for the player to confirm the stop


def _silence(inp: np.ndarray, out: np.ndarray) -> None:
    out.fill(0.0)


def silence(fmt: StreamFormat) -> Processor:
    """The processor under the player until the sound-field engine lands: silence."""
    return _silence


def config_of(transport: AudioTransport) -> AudioConfig:
    extra: dict[str, object] = {"jack_server": transport.jack_server}
    if transport.input_map is not None:
        extra["input_map"] = tuple(transport.input_map)
    if transport.output_map is not None:
        extra["output_map"] = tuple(transport.output_map)
    return AudioConfig.from_transport(transport, **extra)


# --- the player of one stream -----------------------------------------------------------------


class InnerEvents(Protocol):
    """The parent's side of the player's inner processor: its events, refusals, stream loss."""

    def on_event(self, payload: Any) -> None: ...

    def on_control_error(self, text: str) -> None: ...

    def on_stream_lost(self, why: str) -> None: ...


class PlayerLink:
    """The parent's side of one stream's file player: commands out, one future per voice."""

    def __init__(self, name: str, inner: InnerEvents | None = None) -> None:
        self.name = name
        self.inner = inner  # the inner processor's side (the sound field), if any
        self.driver: AudioDriver | None = None
        self._voices: dict[str, asyncio.Future[Ended]] = {}
        self.positions: dict[str, float] = {}  # voice -> seconds into its file, last reported
        self._ids = itertools.count(1)

    def on_event(self, event: tuple[Any, ...]) -> None:
        """``AudioDriver``'s ``on_event`` (runs on the event loop)."""
        kind = event[0]
        if kind == "event":
            if isinstance(event[1], Position | Started | Ended | Failed):
                self._player_event(event[1])
            elif self.inner is not None:
                self.inner.on_event(event[1])
        elif kind == "stream_lost":
            for voice in list(self._voices):
                self._fail(voice, f"{self.name}: the audio stream ended ({event[1]})")
            if self.inner is not None:
                self.inner.on_stream_lost(str(event[1]))
        elif kind == "control_error":
            log.warning("%s: a control message was refused: %s", self.name, event[1])
            if self.inner is not None:
                self.inner.on_control_error(str(event[1]))

    def _player_event(self, ev: Any) -> None:
        if isinstance(ev, Position):
            if ev.voice in self._voices:
                self.positions[ev.voice] = ev.seconds
        elif isinstance(ev, Started):
            self.positions[ev.voice] = 0.0
        elif isinstance(ev, Ended):
            fut = self._voices.pop(ev.voice, None)
            self.positions.pop(ev.voice, None)
            if fut is not None and not fut.done():
                fut.set_result(ev)
        elif isinstance(ev, Failed):
            self._fail(ev.voice, _failure_text(ev))

    def _fail(self, voice: str, text: str) -> None:
        fut = self._voices.pop(voice, None)
        self.positions.pop(voice, None)
        if fut is not None and not fut.done():
            fut.set_exception(PlaybackError(text))

    def _send(self, payload: Any) -> None:
        if self.driver is None:
            raise PlaybackError(f"audio output '{self.name}' is not running")
        try:
            self.driver.control(payload)
        except AudioError as exc:
            raise PlaybackError(f"audio output '{self.name}': {exc}") from None

    async def play(
        self,
        path: Path,
        level_db: float,
        loop: bool,
        fade_in_s: float,
        channels: tuple[int, ...] | None = None,
        stop_fade_s: float = STOP_FADE_S,
        tag: str = "",
    ) -> Ended:
        """Play until the end (or until cancelled: then stop with ``stop_fade_s`` and
        re-raise)."""
        voice = f"{tag or 'play'}#{next(self._ids)}"
        fut: asyncio.Future[Ended] = asyncio.get_running_loop().create_future()
        self._voices[voice] = fut
        try:
            self._send(Play(voice, str(path), level_db, loop, channels, fade_in_s))
        except BaseException:
            self._voices.pop(voice, None)
            raise
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if not fut.done():
                with contextlib.suppress(PlaybackError):
                    self._send(Stop(voice, stop_fade_s))
                # Wait for the fade to finish (the player confirms), so a stopped cue is
                # silent when its task ends; never long, the stream may be going away.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(fut), STOP_CONFIRM_S + stop_fade_s)
            self._voices.pop(voice, None)
            raise

    def stop_all(self, fade_s: float = STOP_FADE_S) -> None:
        self._send(StopAll(fade_s))

    @property
    def playing(self) -> list[str]:
        return list(self._voices)


def _failure_text(ev: Failed) -> str:
    what = {
        FailReason.NOT_FOUND: "file not found",
        FailReason.UNREADABLE: "unreadable file",
        FailReason.TOO_LONG: "file too long",
        FailReason.CHANNELS: "channels do not match",
        FailReason.LEVEL: "level refused",
        FailReason.VOICES: "too many sounds playing",
        FailReason.BAD_REQUEST: "refused",
    }[ev.reason]
    return f"{what}: {ev.text}"


# --- the service's audio devices --------------------------------------------------------------


class AudioDevice:
    """An audio stream as a device: readings are the stream's figures; no commands. Its
    processor is the file player over silence (``player`` sends it sounds)."""

    def __init__(
        self,
        device: Device,
        sink: ReadingSink,
        on_health: HealthSink,
        inner: Callable[[StreamFormat], Processor] | None = None,
        inner_events: InnerEvents | None = None,
    ) -> None:
        assert isinstance(device.transport, AudioTransport)
        self._device = device
        self.player = PlayerLink(device.id, inner_events)
        self.driver = AudioDriver(
            device.id,
            config_of(device.transport),
            PlayerFactory(inner=inner or silence),
            on_health=on_health,
            sink=sink,
            on_event=self.player.on_event,
        )
        self.player.driver = self.driver

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


# --- the cue engine's port --------------------------------------------------------------------


class SoundField(Protocol):
    """The sound field the cue engine recalls modes on (``edge.acoustics``)."""

    async def recall(self, mode: str, fade_s: float | None, origin: Origin) -> Any: ...


def media_path(media_dir: Path, file: str) -> Path:
    """``file`` under ``media_dir``, or ``PlaybackError`` if it would leave it."""
    parts = PurePosixPath(file.replace("\\", "/")).parts
    if (
        not file
        or "\x00" in file
        or PureWindowsPath(file).drive
        or file.startswith(("/", "\\"))
        or ".." in parts
    ):
        raise PlaybackError(f"'{file}' must be a path inside the show's folder (no '/…' or '..')")
    root = media_dir.resolve()
    path = (root / file).resolve()
    if os.path.commonpath([path, root]) != str(root):
        raise PlaybackError(f"'{file}' leads outside the show's folder {root}")
    return path


def _has_outputs(device: Device) -> bool:
    return isinstance(device.transport, AudioTransport) and device.transport.outputs > 0


class ServiceAudio:
    """``controller.playback.ports.Audio`` over the service's audio devices.

    ``outputs``: device id -> device (the service's ``drivers`` mapping will do: entries that
    are not ``AudioDevice`` are ignored; it is read at each play, so devices started after the
    cue engine count). ``media_dir``: the show's folder, or a callable giving it (the show may
    move when a new one is PUT)."""

    def __init__(
        self,
        outputs: Mapping[str, object],
        media_dir: Path | Callable[[], Path],
        soundfield: SoundField | Callable[[], SoundField | None] | None = None,
        stop_fade_s: float = STOP_FADE_S,
    ) -> None:
        self._outputs = outputs
        self._media_dir = media_dir
        self._soundfield = soundfield
        self.stop_fade_s = stop_fade_s

    def _links(self) -> dict[str, PlayerLink]:
        links: dict[str, PlayerLink] = {}
        for name, dev in self._outputs.items():
            if isinstance(dev, PlayerLink):
                links[name] = dev
            elif isinstance(dev, AudioDevice) and _has_outputs(dev.device):
                links[name] = dev.player
        return links

    def output(self, name: str | None) -> PlayerLink:
        links = self._links()
        if name is None:
            if not links:
                raise PlaybackError("no audio output device on this node")
            return next(iter(links.values()))
        if name not in links:
            known = ", ".join(links) or "none"
            raise PlaybackError(f"no audio output '{name}' (audio outputs: {known})", 422)
        return links[name]

    async def play(
        self,
        file: str,
        level_db: float,
        loop: bool,
        output: str | None,
        fade_s: float,
        origin: Origin,
    ) -> None:
        media = self._media_dir() if callable(self._media_dir) else self._media_dir
        path = media_path(media, file)
        link = self.output(output)
        log.info("%s plays %s on %s at %g dB", origin.source, file, link.name, level_db)
        await link.play(
            path, level_db, loop, fade_s, stop_fade_s=self.stop_fade_s, tag=origin.source
        )

    async def soundfield(self, mode: str, fade_s: float, origin: Origin) -> None:
        sf = self._soundfield() if callable(self._soundfield) else self._soundfield
        if sf is None:
            raise Unavailable(
                f"no sound-field engine on this node ([acoustics] in the venue file): mode "
                f"'{mode}' not recalled"
            )
        await sf.recall(mode, fade_s, origin)

    def stop_all(self, fade_s: float = STOP_FADE_S) -> None:
        """Fade out every sound on every output (an operator's audio panic)."""
        for link in self._links().values():
            with contextlib.suppress(PlaybackError):
                link.stop_all(fade_s)
