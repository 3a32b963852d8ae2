"""The file player: sound files mixed onto a stream's outputs, over any other processor.

``PlayerFactory`` is a picklable processor factory (the audio host is spawned). The processor it
makes, ``FilePlayer``, first runs the ``inner`` processor (silence when there is none; the
sound-field engine later), then adds every playing voice onto the outputs. It is a
``host.Controllable``: the host's control loop hands it the commands below and sends up what
``poll_events`` returns.

Two threads touch a voice, and never through a lock:

- the **control thread** (the host's control loop) does everything slow: checks the request,
  decodes the file with soundfile (WAV, FLAC, AIFF, ... what libsndfile reads), resamples it to
  the stream rate (``scipy.signal.resample_poly``), builds the ``_Voice`` with its channel routes
  and gains, and publishes it by storing its reference into a free slot of a fixed list;
  level changes and stops are published the same way, as one new tuple stored into
  ``voice.request``;
- the **audio thread** (the callback) mixes each voice in a slot: it applies a new ``request``
  when the reference differs from the last one it applied, computes the block's gain envelope
  into a preallocated buffer (linear ramps, sample-accurate: a fade of N samples reaches its
  target exactly on its N-th sample, whatever the block boundaries), and adds
  ``data * envelope`` onto the routed outputs with ``out=`` ufuncs (no buffer is allocated).
  When a voice ends (its last sample played, or its stop fade reached zero) the callback sets
  ``voice.done``; the control thread then frees the slot and reports ``Ended``.

Each field has one writer: ``request`` (control), ``pos`` / ``gain`` / ``done`` (audio);
reference and int stores are atomic under the GIL, so a reader sees an old or a new value,
never a torn one.

Commands (payloads of ``("control", payload)``): ``Play``, ``SetLevel``, ``Stop``, ``StopAll``;
any other payload goes to the inner processor's ``control`` when it has one (the sound-field
engine's ``SetField``), and the inner processor's ``poll_events`` are sent up with the player's.
Events (payloads of ``("event", payload)``): ``Started``, ``Position`` (every
``report_interval_s`` per voice), ``Ended`` (``stopped`` says whether a stop ended it),
``Failed`` with a ``FailReason`` and a message for a person.

Limits: at most ``max_voices`` voices at once (one more fails with ``voices``); one decoded
file at most ``max_bytes`` of float32 samples at the stream rate (``too_long``); levels
within ``[MIN_DB, MAX_DB]`` dB (``level``). The caller resolves paths; ``root``, when set,
refuses any path that does not resolve inside it (``bad_request``), as a second guard.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from drivers.audio.config import StreamFormat
from drivers.audio.engine import Block, Processor

MIN_DB = -120.0
MAX_DB = 12.0
MAX_FADE_S = 3600.0
DEFAULT_MAX_BYTES = 256 * 2**20  # 23 min of stereo at 48 kHz


# --- commands ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Play:
    """Play ``path`` (absolute) as voice ``voice``; ``channels`` are 1-based processor outputs:
    a mono file goes to every one named, a file of N channels needs exactly N (None: outputs
    1..N). ``fade_in_s`` ramps linearly from silence to ``level_db``."""

    voice: str
    path: str
    level_db: float = 0.0
    loop: bool = False
    channels: tuple[int, ...] | None = None
    fade_in_s: float = 0.0


@dataclass(frozen=True, slots=True)
class SetLevel:
    voice: str
    level_db: float
    fade_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Stop:
    voice: str
    fade_s: float = 0.05


@dataclass(frozen=True, slots=True)
class StopAll:
    fade_s: float = 0.05


Command = Play | SetLevel | Stop | StopAll


# --- events -----------------------------------------------------------------------------------


class FailReason(StrEnum):
    NOT_FOUND = "not_found"
    UNREADABLE = "unreadable"
    TOO_LONG = "too_long"
    CHANNELS = "channels"
    LEVEL = "level"
    VOICES = "voices"
    BAD_REQUEST = "bad_request"


@dataclass(frozen=True, slots=True)
class Started:
    voice: str
    duration_s: float
    channels: int  # the file's
    file_samplerate: int


@dataclass(frozen=True, slots=True)
class Position:
    voice: str
    seconds: float  # into the file
    loops: int  # times it wrapped


@dataclass(frozen=True, slots=True)
class Ended:
    voice: str
    stopped: bool  # a stop (with its fade) ended it, not the end of the file
    seconds: float


@dataclass(frozen=True, slots=True)
class Failed:
    voice: str
    reason: FailReason
    text: str


PlayerEvent = Started | Position | Ended | Failed


class PlayError(Exception):
    def __init__(self, reason: FailReason, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text


# --- decoding (control thread) ----------------------------------------------------------------


def db_to_gain(level_db: float) -> float:
    return float(10.0 ** (level_db / 20.0))


def check_level(level_db: float) -> float:
    if not isinstance(level_db, int | float) or not math.isfinite(level_db):
        raise PlayError(FailReason.LEVEL, f"level {level_db!r} dB is not a finite number")
    if not MIN_DB <= level_db <= MAX_DB:
        raise PlayError(
            FailReason.LEVEL, f"level {level_db:g} dB is outside {MIN_DB:g}..{MAX_DB:g} dB"
        )
    return float(level_db)


def check_fade(fade_s: float) -> float:
    if not isinstance(fade_s, int | float) or not math.isfinite(fade_s):
        raise PlayError(FailReason.BAD_REQUEST, f"fade {fade_s!r} s is not a finite number")
    if not 0.0 <= fade_s <= MAX_FADE_S:
        raise PlayError(FailReason.BAD_REQUEST, f"fade {fade_s:g} s is outside 0..{MAX_FADE_S:g}")
    return float(fade_s)


def load(
    path: str, samplerate: int, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[NDArray[np.float32], int]:
    """Decode ``path`` and resample it to ``samplerate``: ``(data[channels, frames], file
    rate)``, C-contiguous float32. ``PlayError`` says why not."""
    import soundfile as sf
    from scipy.signal import resample_poly  # type: ignore[import-untyped]  # no stubs installed

    if not os.path.isfile(path):
        raise PlayError(FailReason.NOT_FOUND, f"no file {path}")
    try:
        info = sf.info(path)
    except Exception as exc:  # libsndfile's "Format not recognised", "System error", ...
        raise PlayError(
            FailReason.UNREADABLE, f"{path} is not a sound file we read: {exc}"
        ) from exc
    if info.frames <= 0 or info.channels <= 0 or info.samplerate <= 0:
        raise PlayError(FailReason.UNREADABLE, f"{path} holds no audio")
    out_frames = math.ceil(info.frames * samplerate / info.samplerate)
    size = out_frames * info.channels * 4
    if size > max_bytes:
        raise PlayError(
            FailReason.TOO_LONG,
            f"{path} is {info.frames / info.samplerate:.1f} s of {info.channels} channel(s): "
            f"{size / 2**20:.0f} MiB decoded, over the {max_bytes / 2**20:.0f} MiB limit",
        )
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:
        raise PlayError(FailReason.UNREADABLE, f"{path} cannot be decoded: {exc}") from exc
    if data.shape[0] == 0:
        raise PlayError(FailReason.UNREADABLE, f"{path} holds no audio")
    if not np.isfinite(data).all():
        raise PlayError(FailReason.UNREADABLE, f"{path} holds NaN or infinite samples")
    rate = int(rate)
    if rate != samplerate:
        g = math.gcd(samplerate, rate)
        data = resample_poly(data, samplerate // g, rate // g, axis=0)
    return np.ascontiguousarray(data.T, dtype=np.float32), rate


def routes_for(
    file_channels: int, channels: tuple[int, ...] | None, n_out: int
) -> tuple[tuple[int, int], ...]:
    """``(file channel, processor output)`` pairs, 0-based, for a ``Play.channels`` map."""
    if channels is None:
        if file_channels > n_out:
            raise PlayError(
                FailReason.CHANNELS,
                f"the file has {file_channels} channels and the stream {n_out} output(s): "
                "name the outputs to play it on",
            )
        channels = tuple(range(1, file_channels + 1))
    if not channels:
        raise PlayError(FailReason.CHANNELS, "no output channel named")
    bad = [c for c in channels if not isinstance(c, int) or not 1 <= c <= n_out]
    if bad:
        raise PlayError(FailReason.CHANNELS, f"output channel(s) {bad} do not exist (1..{n_out})")
    if len(set(channels)) != len(channels):
        raise PlayError(FailReason.CHANNELS, f"output channels {list(channels)} repeat")
    if file_channels == 1:
        return tuple((0, c - 1) for c in channels)
    if len(channels) != file_channels:
        raise PlayError(
            FailReason.CHANNELS,
            f"the file has {file_channels} channels but the map names {len(channels)} "
            f"output(s) {list(channels)}",
        )
    return tuple((i, c - 1) for i, c in enumerate(channels))


# --- the voice and the processor --------------------------------------------------------------


class _Voice:
    """One playing file. ``request`` is written by the control thread only; ``pos``, ``gain``,
    ``target``, ``step``, ``fade_left``, ``loops``, ``stopping``, ``applied`` and ``done`` by
    the audio thread only."""

    __slots__ = (
        "applied",
        "data",
        "done",
        "fade_left",
        "frames",
        "gain",
        "id",
        "loop",
        "loops",
        "pos",
        "reported",
        "request",
        "routes",
        "step",
        "stop_sent",
        "stopping",
        "target",
    )

    def __init__(
        self,
        ident: str,
        data: NDArray[np.float32],
        routes: tuple[tuple[int, int], ...],
        loop: bool,
        gain: float,
        fade_in: int,
    ) -> None:
        self.id = ident
        self.data = data
        self.routes = routes
        self.loop = loop
        self.frames = int(data.shape[1])
        # The fade-in is the first request: the audio thread applies it before the first block.
        self.request: tuple[float, int, bool] = (gain, fade_in, False)
        self.applied: tuple[float, int, bool] | None = None
        self.pos = 0
        self.loops = 0
        self.gain = 0.0
        self.target = 0.0
        self.step = 0.0
        self.fade_left = 0
        self.stopping = False
        self.done = False
        self.stop_sent = False  # control thread: a stop was requested
        self.reported = 0.0  # control thread: when its position was last reported


class FilePlayer:
    """A processor: the inner processor's output plus every voice (see the module docstring)."""

    def __init__(
        self,
        fmt: StreamFormat,
        inner: Processor | None = None,
        max_voices: int = 16,
        max_bytes: int = DEFAULT_MAX_BYTES,
        root: str | None = None,
        report_interval_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_voices < 1:
            raise ValueError("max_voices must be at least 1")
        # Import the decoders now, in the factory (before the stream runs): the first import of
        # scipy.signal takes over a second, which would otherwise delay the first sound.
        import scipy.signal  # type: ignore[import-untyped]  # noqa: F401
        import soundfile  # noqa: F401

        self.fmt = fmt
        self._inner = inner
        self._slots: list[_Voice | None] = [None] * max_voices
        self._max_bytes = max_bytes
        self._root = os.path.realpath(root) if root is not None else None
        self._interval = report_interval_s
        self._clock = clock
        self._events: list[PlayerEvent] = []
        n = fmt.blocksize
        self._ramp = np.arange(1, n + 1, dtype=np.float64)  # 1..n: a fade's k-th sample
        self._env64 = np.zeros(n, dtype=np.float64)
        self._env = np.zeros(n, dtype=np.float32)
        self._tmp = np.zeros(n, dtype=np.float32)

    # --- audio thread ---------------------------------------------------------------------

    def __call__(self, inp: Block, out: Block) -> None:
        if self._inner is not None:
            self._inner(inp, out)
        else:
            out.fill(0.0)
        for v in self._slots:
            if v is not None and not v.done:
                self._mix(v, out)

    def _mix(self, v: _Voice, out: Block) -> None:
        req = v.request
        if req is not v.applied:
            v.applied = req
            target, frames, stop = req
            if stop:
                v.stopping = True
            if frames <= 0:
                v.gain = v.target = target
                v.fade_left = 0
            else:
                v.target = target
                v.step = (target - v.gain) / frames
                v.fade_left = frames
        n = out.shape[0]
        env = self._env
        if v.fade_left > 0:
            k = min(n, v.fade_left)
            e64 = self._env64[:k]
            np.multiply(self._ramp[:k], v.step, out=e64)
            e64 += v.gain
            env[:k] = e64
            env[k:] = v.target
            v.fade_left -= k
            v.gain = v.target if v.fade_left == 0 else v.gain + v.step * k
        else:
            env.fill(v.gain)
        data, tmp = v.data, self._tmp
        o, pos = 0, v.pos
        while o < n:
            m = min(n - o, v.frames - pos)
            for src, dst in v.routes:
                t = tmp[o : o + m]
                np.multiply(data[src, pos : pos + m], env[o : o + m], out=t)
                col = out[o : o + m, dst]
                col += t
            o += m
            pos += m
            if pos >= v.frames:
                if not v.loop:
                    break
                pos = 0
                v.loops += 1
        v.pos = pos
        if (pos >= v.frames and not v.loop) or (v.stopping and v.fade_left == 0):
            v.done = True

    # --- control thread -------------------------------------------------------------------

    def control(self, payload: Any) -> None:
        """Carry out one command; failures become ``Failed`` events (never raise for a bad
        request: the stream must not care)."""
        self._reap()
        if not isinstance(payload, Play | SetLevel | Stop | StopAll) and callable(
            getattr(self._inner, "control", None)
        ):
            # Not a player command: the inner processor's (the sound-field engine's). What it
            # raises goes up as a control_error, like any refused control message.
            self._inner.control(payload)  # type: ignore[union-attr]
            return
        voice = str(getattr(payload, "voice", ""))
        try:
            if isinstance(payload, Play):
                self._play(payload)
            elif isinstance(payload, SetLevel):
                v = self._find(payload.voice)
                if v is not None and not v.stop_sent:
                    gain = db_to_gain(check_level(payload.level_db))
                    v.request = (gain, self._frames(check_fade(payload.fade_s)), False)
            elif isinstance(payload, Stop):
                v = self._find(payload.voice)
                if v is not None:
                    self._stop(v, check_fade(payload.fade_s))
            elif isinstance(payload, StopAll):
                fade = check_fade(payload.fade_s)
                for v in self._slots:
                    if v is not None:
                        self._stop(v, fade)
            else:
                raise PlayError(
                    FailReason.BAD_REQUEST, f"unknown player command {type(payload).__name__}"
                )
        except PlayError as exc:
            self._events.append(Failed(voice, exc.reason, exc.text))

    def _frames(self, seconds: float) -> int:
        return round(seconds * self.fmt.samplerate)

    def _stop(self, v: _Voice, fade_s: float) -> None:
        if v.stop_sent:
            return
        v.stop_sent = True
        v.request = (0.0, max(1, self._frames(fade_s)), True)

    def _find(self, voice: str) -> _Voice | None:
        return next((v for v in self._slots if v is not None and v.id == voice), None)

    def _play(self, p: Play) -> None:
        if not isinstance(p.voice, str) or not p.voice:
            raise PlayError(FailReason.BAD_REQUEST, "a voice needs a name")
        if self._find(p.voice) is not None:
            raise PlayError(FailReason.BAD_REQUEST, f"voice '{p.voice}' is already playing")
        gain = db_to_gain(check_level(p.level_db))
        fade = self._frames(check_fade(p.fade_in_s))
        if not isinstance(p.path, str) or not os.path.isabs(p.path):
            raise PlayError(FailReason.BAD_REQUEST, f"{p.path!r} is not an absolute path")
        if self._root is not None:
            real = os.path.realpath(p.path)
            if os.path.commonpath([real, self._root]) != self._root:
                raise PlayError(FailReason.BAD_REQUEST, f"{p.path} is outside {self._root}")
        try:
            free = self._slots.index(None)
        except ValueError:
            raise PlayError(
                FailReason.VOICES, f"{len(self._slots)} voices are playing: the limit"
            ) from None
        data, rate = load(p.path, self.fmt.samplerate, self._max_bytes)
        routes = routes_for(data.shape[0], p.channels, self.fmt.n_out)
        v = _Voice(p.voice, data, routes, bool(p.loop), gain, fade)
        v.reported = self._clock()
        self._slots[free] = v  # the one store that hands the voice to the audio thread
        self._events.append(
            Started(p.voice, data.shape[1] / self.fmt.samplerate, data.shape[0], rate)
        )

    def _reap(self) -> None:
        for i, v in enumerate(self._slots):
            if v is not None and v.done:
                self._slots[i] = None
                self._events.append(Ended(v.id, v.stopping, v.pos / self.fmt.samplerate))

    def poll_events(self) -> list[Any]:
        self._reap()
        now = self._clock()
        for v in self._slots:
            if v is not None and now - v.reported >= self._interval:
                v.reported = now
                self._events.append(Position(v.id, v.pos / self.fmt.samplerate, v.loops))
        events, self._events = self._events, []
        poll = getattr(self._inner, "poll_events", None)
        inner: list[Any] = poll() if callable(poll) else []
        return [*events, *inner]

    @property
    def playing(self) -> list[str]:
        return [v.id for v in self._slots if v is not None and not v.done]


@dataclass(frozen=True)
class PlayerFactory:
    """Picklable factory of a ``FilePlayer`` over ``inner`` (another factory, or silence)."""

    inner: Callable[[StreamFormat], Processor] | None = None
    max_voices: int = 16
    max_bytes: int = DEFAULT_MAX_BYTES
    root: str | None = None
    report_interval_s: float = 0.25

    def __call__(self, fmt: StreamFormat) -> FilePlayer:
        inner = self.inner(fmt) if self.inner is not None else None
        return FilePlayer(
            fmt,
            inner,
            max_voices=self.max_voices,
            max_bytes=self.max_bytes,
            root=self.root,
            report_interval_s=self.report_interval_s,
        )
