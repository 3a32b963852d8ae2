"""The audio host: a child process that owns PortAudio, the stream and the callback.

Why a process of its own, and not a stream in the service's process:

- PortAudio's JACK host API joins the JACK server once, in ``Pa_Initialize``, and cannot rejoin.
  Measured with Debian 12's libportaudio2 19.6.0 and jackd2 1.9.21: after jackd dies,
  ``Pa_StopStream``/``Pa_CloseStream`` wait up to 10 minutes for a process callback that never
  comes, and ``Pa_Terminate`` fails an assertion (``pa_jack.c: Terminate: err == 0``) and
  aborts the process, which sounddevice's exit handler would then do to the whole service. A
  child process can simply be let go: it reports why it stopped and leaves with ``os._exit``
  (no ``Pa_Terminate``); the supervisor starts a fresh one, which initialises PortAudio anew.
- The callback runs Python. In its own process it does not compete for the GIL with the
  service's event loop (API, telemetry, MQTT), which would otherwise show up as xruns.
- PortAudio reads ``JACK_DEFAULT_SERVER`` when it initialises: a fresh process started with the
  right environment is the reliable way to choose the server (``sd._terminate()`` /
  ``sd._initialize()`` in a long-lived process works only until the first server death).

The parent (``drivers/audio/driver.py``) starts this module's ``host_main`` with the
``spawn`` start method (no fork of a threaded asyncio process), so the processor factory must be
picklable: a module-level function or a dataclass instance. Messages go over a pipe as tuples:

- child to parent: ``("ready", info)``, ``("failed", kind, text)`` with kind ``device`` /
  ``format`` / ``other``, ``("processor_error", text)``, ``("aborted", reason)``,
  ``("stopped", "")``, ``("event", payload)`` (what the processor reports, see below),
  ``("control_error", text)`` (a control message the processor refused or failed on);
- parent to child: ``("stop",)``; a closed pipe also means stop; ``("control", payload)``.

The control channel: ``("control", payload)`` is handed, in this process's control loop (never
in the audio thread), to the processor's ``control(payload)`` method if it has one
(``Controllable``). That method may do slow work (decode a file, design a filter) and then
hands the result to the callback by a single reference store that the callback picks up on its
next block: it never blocks the callback and takes no lock. What the processor wants to say
(a voice started, ended, failed) it returns from ``poll_events()``, which the loop calls every
``CONTROL_PERIOD_S`` and after every control message; each payload goes up as
``("event", payload)``. A control method that raises does not stop the stream: its exception
goes up as ``("control_error", text)``. Payloads are pickled: module-level classes only.

Counters travel through a shared ``RawArray`` of float64 (``engine.Slot``), written by the
callback without a lock and read by the parent whenever it likes.

``python -m drivers.audio.host --list`` prints the device list as JSON (``list_devices``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol, runtime_checkable

import numpy as np

from drivers.audio.config import AudioConfig, AudioFormatError, DeviceNotFound, StreamFormat
from drivers.audio.devices import AudioDevice, match_device
from drivers.audio.engine import CallbackEngine, Processor, Slot

ProcessorFactory = Callable[[StreamFormat], Processor]

CONTROL_PERIOD_S = 0.05
EXIT_ABORTED = 3


@runtime_checkable
class Controllable(Protocol):
    """A processor that takes control messages (in the host's control loop, not the callback)."""

    def control(self, payload: Any) -> None: ...

    def poll_events(self) -> list[Any]: ...


def _query(sd: Any) -> tuple[list[AudioDevice], int | None]:
    apis = sd.query_hostapis()
    devices = [
        AudioDevice(
            index=int(d["index"]),
            name=str(d["name"]),
            hostapi=str(apis[d["hostapi"]]["name"]),
            max_inputs=int(d["max_input_channels"]),
            max_outputs=int(d["max_output_channels"]),
            default_samplerate=float(d["default_samplerate"]),
        )
        for d in sd.query_devices()
    ]
    default = sd.default.device[1]
    return devices, (int(default) if default is not None and default >= 0 else None)


def _open(
    sd: Any, config: AudioConfig, engine_for: Callable[[], CallbackEngine]
) -> tuple[Any, AudioDevice]:
    devices, default = _query(sd)
    device = match_device(
        devices, config.device, config.device_inputs, config.device_outputs, default
    )
    try:
        sd.check_input_settings(
            device.index,
            channels=config.device_inputs,
            dtype="float32",
            samplerate=config.samplerate,
        )
        sd.check_output_settings(
            device.index,
            channels=config.device_outputs,
            dtype="float32",
            samplerate=config.samplerate,
        )
    except sd.PortAudioError as exc:
        raise AudioFormatError(
            f"{device.describe()} refuses {config.samplerate} Hz with {config.device_inputs} in/"
            f"{config.device_outputs} out float32 ({exc}); its default rate is "
            f"{device.default_samplerate:g} Hz"
        ) from exc
    stream = sd.Stream(
        device=device.index,
        samplerate=config.samplerate,
        blocksize=config.blocksize,
        channels=(config.device_inputs, config.device_outputs),
        dtype="float32",
        latency="low",
        callback=engine_for(),
    )
    stream.start()
    return stream, device


def host_main(
    config: AudioConfig, factory: ProcessorFactory, shared_stats: Any, conn: Connection
) -> None:
    """Run one stream until told to stop or until it dies (then exit without Pa_Terminate)."""
    if config.jack_server is not None:
        os.environ["JACK_DEFAULT_SERVER"] = config.jack_server
    os.environ["JACK_NO_START_SERVER"] = "1"
    import sounddevice as sd  # initialises PortAudio: only now, with the environment set

    stats = np.frombuffer(memoryview(shared_stats), dtype=np.float64)
    engine: CallbackEngine | None = None

    def engine_for() -> CallbackEngine:
        nonlocal engine
        engine = CallbackEngine(config, factory(config.stream_format), stats)
        return engine

    try:
        stream, device = _open(sd, config, engine_for)
    except DeviceNotFound as exc:
        conn.send(("failed", "device", str(exc)))
        return
    except AudioFormatError as exc:
        conn.send(("failed", "format", str(exc)))
        return
    except Exception as exc:  # PortAudioError, or the processor factory's own failure
        conn.send(("failed", "other", f"{type(exc).__name__}: {exc}"))
        return
    assert engine is not None
    latency_in, latency_out = stream.latency
    conn.send(
        (
            "ready",
            {
                "device": device.label,
                "samplerate": float(stream.samplerate),
                "blocksize": int(stream.blocksize),
                "input_latency_s": float(latency_in),
                "output_latency_s": float(latency_out),
            },
        )
    )
    reason = _control_loop(stream, engine, stats, conn, config.stall_timeout_s)
    if reason:
        conn.send(("aborted", reason))
        # Pa_Terminate (sounddevice's exit handler) would abort on a dead JACK client, and
        # closing the stream could wait for minutes: leave at once, the OS cleans up.
        os._exit(EXIT_ABORTED)
    stream.stop()
    stream.close()
    conn.send(("stopped", ""))


def _control_loop(
    stream: Any,
    engine: CallbackEngine,
    stats: np.ndarray[Any, np.dtype[np.float64]],
    conn: Connection,
    stall_timeout_s: float,
) -> str:
    """Watch the stream until stop (returns "") or until it dies (returns the reason)."""
    reported_errors = 0.0
    last_callbacks = -1.0
    last_progress = time.monotonic()
    processor = engine.processor
    controllable = processor if isinstance(processor, Controllable) else None
    while True:
        try:
            if conn.poll(CONTROL_PERIOD_S):
                message = conn.recv()
                if not isinstance(message, tuple) or not message or message[0] != "control":
                    return ""  # "stop" (anything else is a parent we do not understand: stop)
                began = time.monotonic()
                _control(controllable, message[1:], conn)
                # Time the control loop spent in the processor (decoding a long file) is not
                # the stream stalling: the callback is judged from when the loop looks again.
                last_progress += time.monotonic() - began
            if controllable is not None:
                for payload in controllable.poll_events():
                    conn.send(("event", payload))
        except (EOFError, OSError):
            return ""  # the parent has gone: stop quietly
        stats[Slot.CPU_LOAD] = stream.cpu_load
        errors = stats[Slot.PROCESSOR_ERRORS]
        if errors != reported_errors:
            reported_errors = errors
            conn.send(("processor_error", engine.last_error))
        if not stream.active:
            return "the stream stopped by itself (device removed or audio server gone)"
        now = time.monotonic()
        callbacks = stats[Slot.CALLBACKS]
        if callbacks != last_callbacks:
            last_callbacks, last_progress = callbacks, now
        elif now - last_progress > stall_timeout_s:
            return f"no audio callback for {now - last_progress:.1f} s (stream stalled)"


def _control(controllable: Controllable | None, args: tuple[Any, ...], conn: Connection) -> None:
    """Hand one control payload to the processor; its failure goes up, the stream runs on."""
    if controllable is None:
        conn.send(("control_error", "this stream's processor takes no control messages"))
        return
    if len(args) != 1:
        conn.send(("control_error", f"a control message carries one payload, got {len(args)}"))
        return
    try:
        controllable.control(args[0])
    except Exception as exc:  # a bad payload must not take the stream down
        conn.send(("control_error", f"{type(exc).__name__}: {exc}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--list", action="store_true", help="print the devices as JSON")
    args = parser.parse_args()
    if args.list:
        import sounddevice as sd

        devices, _ = _query(sd)
        print(json.dumps([d.as_dict() for d in devices]))


if __name__ == "__main__":
    main()
