"""``flytower acoustics``: analyse an impulse response, measure a room, list the modes.

::

    flytower acoustics analyze IR.wav [--bands octave|third] [--channel N] [--fs HZ]
                                      [--plot out.png|.svg] [--mode concert] [--json]
    flytower acoustics measure VENUE --outputs 1 --inputs 1,2 [--sweeps 3] [--level-db -20]
                                     [--device ID] [--settle-s 1] [--out DIR]
                                     [--plot out.png|.svg] [--mode M]
    flytower acoustics modes [--json]
    flytower acoustics adapt ZONE MODE [--iterations 3] [--sweeps 2] [--level-db -30]
                                       [--url http://127.0.0.1:8080] [--follow] [--json]
                                       [--plot out.png]
    flytower acoustics stop [--url http://127.0.0.1:8080]

``analyze`` reads a WAV (any format libsndfile reads; a multichannel file is analysed channel
by channel, or ``--channel N``) or a ``.npy`` array ``[frames]`` / ``[frames, channels]``
(``--fs`` required), prints the ISO 3382-1 metrics per band (``--json``: the report the
service serves, decay curves included), and with ``--plot`` writes the energy-decay curves to
that file and the per-band parameters (against ``--mode``'s targets) beside it
(``NAME-bands.png``). ``measure`` opens the venue's audio device itself (the sound-field
device, or ``--device``; the service must not be running it) with the measurement processor,
plays the sweeps with a live status line, then writes the IRs (WAV), ``summary.json`` and,
with ``--plot``, the plots per pair into ``--out``. Exit codes: 0 done, 1 the input or the
measurement failed (the reason on stderr), 2 bad arguments. ``adapt`` talks to the running
service (``edge.client``): it starts the closed-loop adaptation of a zone, follows it with a
live status line and prints a table per iteration and what is not reachable; its exit codes
are in its ``--help`` (0 converged, 1 refused or failed, 2 not converged, 130 Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MAX_CHANNELS = 64
MAX_FILE_BYTES = 512 * 2**20


class InputError(Exception):
    """A file or an argument the command cannot use; the message says why."""


def _channels(text: str) -> list[int]:
    try:
        chans = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"channels are 1-based numbers like 1,2: {text!r}"
        ) from None
    if not chans or any(c < 1 for c in chans):
        raise argparse.ArgumentTypeError(f"channels are 1-based numbers like 1,2: {text!r}")
    return chans


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="acoustics_cmd", required=True)
    p = sub.add_parser("analyze", help="ISO 3382-1 metrics of an impulse response (WAV/.npy)")
    p.add_argument("ir", type=Path, help="the impulse response: a WAV file or a .npy array")
    p.add_argument("--bands", choices=("octave", "third"), default="octave")
    p.add_argument("--channel", type=int, help="analyse only this channel (1-based)")
    p.add_argument("--fs", type=int, help="sample rate of a .npy IR (Hz)")
    p.add_argument("--plot", type=Path, help="write the decay curves (and the bands) as PNG/SVG")
    p.add_argument("--mode", help="plot the parameters against this mode's targets")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(fn=analyze_command)
    p = sub.add_parser("measure", help="measure a room through a venue's audio device")
    p.add_argument("venue", type=Path)
    p.add_argument("--outputs", type=_channels, required=True, help="1-based, e.g. 1 or 1,2")
    p.add_argument("--inputs", type=_channels, required=True, help="1-based, e.g. 1,2")
    p.add_argument("--sweeps", type=int, default=3)
    p.add_argument("--level-db", type=float, default=-20.0, help="sweep peak, dB re full scale")
    p.add_argument("--sweep-s", type=float, default=2.0)
    p.add_argument("--ir-s", type=float, default=2.0, help="IR length kept (s)")
    p.add_argument("--noise-s", type=float, default=1.0, help="silent lead-in (s)")
    p.add_argument(
        "--settle-s",
        type=float,
        default=1.0,
        help="run the stream this long before the sweeps (an audio server's patching settles)",
    )
    p.add_argument("--device", help="the venue's audio device (default: the sound-field one)")
    p.add_argument("--out", type=Path, help="results folder (default: acoustics-<time>)")
    p.add_argument("--plot", type=Path, help="plots per pair, named after this .png/.svg")
    p.add_argument("--mode", help="plot the parameters against this mode's targets")
    p.set_defaults(fn=measure_command)
    p = sub.add_parser("modes", help="list the sound-field modes and their targets")
    p.add_argument("venue", type=Path, nargs="?", help="include this venue's custom modes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=modes_command)
    add_adapt_arguments(sub)
    p = sub.add_parser(
        "stop",
        help="stop the test signal now: abort the running measurement, cancel an adaptation",
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
    p.set_defaults(fn=stop_command)


def _fail(text: str) -> int:
    print(f"error: {text}", file=sys.stderr)
    return 1


# --- reading IRs ------------------------------------------------------------------------------


def read_ir(path: Path, fs: int | None = None) -> tuple[np.ndarray, int]:
    """``(data[frames, channels] float64, rate)`` from a sound file or a ``.npy``; an
    ``InputError`` for a missing, unreadable, empty, oversized or wrongly laid-out file."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB: not an IR")
    if path.suffix.lower() == ".npy":
        if fs is None:
            raise InputError(f"{path}: a .npy array has no sample rate: give --fs")
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a numpy array file: {exc}") from None
        if data.dtype.kind not in "fiu":
            raise InputError(f"{path}: samples must be numbers, got {data.dtype}")
        if data.ndim == 1:
            data = data[:, None]
        elif data.ndim != 2:
            raise InputError(f"{path}: an IR is [frames] or [frames, channels], got {data.shape}")
        rate = fs
    else:
        import soundfile as sf

        try:
            data, rate = sf.read(str(path), dtype="float64", always_2d=True)
        except Exception as exc:  # libsndfile: "Format not recognised", ...
            raise InputError(f"{path}: not a sound file we read: {exc}") from None
        if fs is not None and fs != rate:
            raise InputError(
                f"{path} is at {rate} Hz, not {fs} Hz: an IR is analysed at its own rate"
            )
    frames, channels = data.shape
    if frames == 0:
        raise InputError(f"{path}: holds no samples")
    if channels > MAX_CHANNELS:
        hint = " (it looks like [channels, frames]: transpose it)" if frames <= MAX_CHANNELS else ""
        raise InputError(f"{path}: {channels} channels, at most {MAX_CHANNELS}{hint}")
    if channels > frames:
        raise InputError(
            f"{path}: {channels} channels of {frames} samples: laid out as [channels, frames]? "
            "an IR is [frames, channels]"
        )
    return np.asarray(data, dtype=np.float64), int(rate)


# --- analyze ----------------------------------------------------------------------------------


def _fmt(v: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v * scale:.{digits}f}"


def table(report: dict[str, Any]) -> str:
    """A per-band table of a report (``edge.acoustics.ir_report``)."""
    head = (
        f"{'band':>8} {'T20 s':>6} {'T30 s':>6} {'EDT s':>6} {'C50 dB':>7} {'C80 dB':>7} "
        f"{'D50':>5} {'Ts ms':>6} {'margin':>6}"
    )
    lines = [head]
    for b in [*report["bands"], {**report["broadband"], "band_hz": 0}]:
        hz = b["band_hz"]
        name = "all" if not hz else (f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}")
        lines.append(
            f"{name:>8} {_fmt(b['t20_s']):>6} {_fmt(b['t30_s']):>6} {_fmt(b['edt_s']):>6} "
            f"{_fmt(b['c50_db'], digits=1):>7} {_fmt(b['c80_db'], digits=1):>7} "
            f"{_fmt(b['d50']):>5} {_fmt(b['ts_s'], 1000, 0):>6} "
            f"{_fmt(b['noise_margin_db'], digits=0):>6}"
        )
    if report.get("bass_ratio") is not None:
        lines.append(f"bass ratio {report['bass_ratio']:.2f}")
    for b in report["bands"]:
        for w in b.get("warnings", []):
            lines.append(f"warning ({b['band_hz']:g} Hz): {w}")
    for w in report.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def _mode(name: str | None, extra: dict[str, Any] | None = None) -> Any:
    from dsp.presets import MODES

    if name is None:
        return None
    modes = {**MODES, **(extra or {})}
    if name not in modes:
        raise InputError(f"no mode '{name}' (modes: {', '.join(sorted(modes))})")
    return modes[name]


def _side(path: Path, tag: str) -> Path:
    return path.with_name(f"{path.stem}-{tag}{path.suffix}")


def plots_for(report: dict[str, Any], plot: Path, mode: Any, title: str) -> list[Path]:
    from edge.acoustics_plots import plot_decays, plot_targets

    return [
        plot_decays(report, plot, f"{title}: energy-decay curves and fit ranges"),
        plot_targets(report, mode, _side(plot, "bands"), ""),
    ]


def analyze_command(args: argparse.Namespace) -> int:
    from dsp.metrics import IRError
    from edge.acoustics import ir_report
    from edge.acoustics_plots import FORMATS, PlotError

    try:
        mode = _mode(args.mode)
        if args.plot is not None and args.plot.suffix.lower() not in FORMATS:
            raise InputError(f"--plot {args.plot}: write .png or .svg")
        data, rate = read_ir(args.ir, args.fs)
        channels = list(range(data.shape[1]))
        if args.channel is not None:
            if not 1 <= args.channel <= data.shape[1]:
                raise InputError(f"--channel {args.channel}: {args.ir} has {data.shape[1]}")
            channels = [args.channel - 1]
        reports = []
        for c in channels:
            try:
                reports.append(ir_report(data[:, c], rate, args.bands))
            except IRError as exc:
                where = f" channel {c + 1}" if data.shape[1] > 1 else ""
                raise InputError(f"{args.ir}{where}: {exc}") from None
        written: list[Path] = []
        if args.plot is not None:
            for c, report in zip(channels, reports, strict=True):
                plot = args.plot if len(channels) == 1 else _side(args.plot, f"ch{c + 1}")
                title = args.ir.name + (f" channel {c + 1}" if len(channels) > 1 else "")
                written += plots_for(report, plot, mode, title)
    except (InputError, PlotError) as exc:
        return _fail(str(exc))
    if args.json:
        body = [{"channel": c + 1, **r} for c, r in zip(channels, reports, strict=True)]
        print(json.dumps(body[0] if len(body) == 1 else body, indent=1))
    else:
        for c, report in zip(channels, reports, strict=True):
            print(
                f"{args.ir}" + (f", channel {c + 1}" if data.shape[1] > 1 else "") + f", {rate} Hz"
            )
            print(table(report))
        for p in written:
            print(f"plot: {p}")
    return 0


# --- modes ------------------------------------------------------------------------------------


def modes_command(args: argparse.Namespace) -> int:
    from dsp.presets import MODES

    modes = dict(MODES)
    if args.venue is not None:
        from drivers.model import ConfigError
        from edge.config import load_venue

        try:
            venue = load_venue(args.venue)
        except ConfigError as exc:
            return _fail(str(exc))
        if venue.config.acoustics is not None:
            modes = venue.config.acoustics.all_modes()
    if args.json:
        print(json.dumps({n: m.to_dict() for n, m in sorted(modes.items())}, indent=1))
        return 0
    print(
        f"{'mode':<16} {'T30 s':>6} {'EDT s':>6} {'C80 dB':>7} {'D50':>5} {'Ts ms':>6} "
        f"{'BR':>5}  title"
    )
    for name, m in sorted(modes.items()):
        print(
            f"{name:<16} {m.mid('t30_s'):>6.2f} {m.mid('edt_s'):>6.2f} {m.mid('c80_db'):>7.1f} "
            f"{m.mid('d50'):>5.2f} {1000 * m.mid('ts_s'):>6.0f} {m.bass_ratio:>5.2f}  {m.title}"
        )
    print("(mid-frequency targets: the mean of 500 Hz and 1 kHz; --json for every band)")
    return 0


# --- measure ----------------------------------------------------------------------------------


def measure_command(args: argparse.Namespace) -> int:
    from drivers.audio import AudioError
    from drivers.model import AudioTransport, ConfigError
    from dsp.measure import MeasurementError
    from edge.acoustics_plots import FORMATS, PlotError
    from edge.audio import config_of
    from edge.config import load_venue

    if not (math.isfinite(args.settle_s) and 0 <= args.settle_s <= 60):
        return _fail(f"--settle-s {args.settle_s}: 0..60 s")
    try:
        venue = load_venue(args.venue)
    except ConfigError as exc:
        return _fail(str(exc))
    ac = venue.config.acoustics
    try:
        mode = _mode(args.mode, ac.all_modes() if ac is not None else None)
        if args.plot is not None and args.plot.suffix.lower() not in FORMATS:
            raise InputError(f"--plot {args.plot}: write .png or .svg")
        name = args.device or (ac.device if ac is not None else None)
        audio = [d for d in venue.devices if isinstance(d.transport, AudioTransport)]
        if name is None:
            if not audio:
                raise InputError(f"{args.venue}: no audio device")
            name = audio[0].id
        device = next((d for d in audio if d.id == name), None)
        if device is None:
            known = ", ".join(d.id for d in audio) or "none"
            raise InputError(f"no audio device '{name}' in {args.venue} (audio devices: {known})")
        assert isinstance(device.transport, AudioTransport)
        config = config_of(device.transport)
        out = args.out or Path(f"acoustics-{time.strftime('%Y%m%dT%H%M%S')}")
        out.mkdir(parents=True, exist_ok=True)
        summary = asyncio.run(_measure(args, name, config, out, out.resolve()))
        written: list[Path] = []
        if args.plot is not None:
            for p in summary["pairs"]:
                if "metrics" in p:
                    tag = f"out{p['output']}-in{p['input']}"
                    plot = _side(args.plot, tag)
                    written += plots_for(p["metrics"], plot, mode, f"{name} {tag}")
    except (InputError, PlotError, MeasurementError, AudioError, OSError) as exc:
        print(file=sys.stderr)
        return _fail(str(exc))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return _fail("interrupted")
    for p in summary["pairs"]:
        print(f"output {p['output']} -> input {p['input']}: {out / p['file']}")
        if "metrics" in p:
            print(table(p["metrics"]))
        else:
            print(f"  not analysed: {p['error']}")
    for w in summary["measurement"]["warnings"]:
        print(f"warning: {w['text']}")
    print(f"summary: {out / 'summary.json'} ({summary['xruns']} xrun(s) while measuring)")
    for p in written:
        print(f"plot: {p}")
    return 0


async def _measure(
    args: argparse.Namespace, name: str, config: Any, out: Path, folder: Path
) -> dict[str, Any]:
    from drivers.audio import AudioDriver
    from dsp.measure import (
        MeasurementDone,
        MeasurementFactory,
        MeasurementFailed,
        MeasurementProgress,
        StartMeasurement,
        plan_measurement,
    )
    from edge.acoustics import PIPE_BYTES, analyse_measurement

    events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    async with AudioDriver(
        f"measure:{name}", config, MeasurementFactory(), on_event=events.put_nowait
    ) as driver:
        deadline = time.monotonic() + 30
        while not driver.streaming or driver.snapshot().samplerate <= 0:
            if time.monotonic() > deadline:
                raise InputError(f"{name}: the audio stream did not open ({driver.health.reason})")
            await asyncio.sleep(0.1)
        fs = int(driver.snapshot().samplerate)
        await asyncio.sleep(args.settle_s)
        kw: dict[str, Any] = {
            "sweeps": args.sweeps,
            "level_db": args.level_db,
            "sweep_s": args.sweep_s,
            "ir_s": args.ir_s,
            "noise_s": args.noise_s,
        }
        plan = plan_measurement(fs, args.outputs, args.inputs, **kw)
        if plan.recording_bytes > PIPE_BYTES:
            kw["save_to"] = str(folder / "recording.npz")
            plan = plan_measurement(fs, args.outputs, args.inputs, **kw)
        run_id = out.name
        xruns = driver.snapshot().xruns
        driver.control(StartMeasurement(run_id, plan))
        limit = time.monotonic() + plan.seconds + 30
        while True:
            try:
                event = await asyncio.wait_for(events.get(), max(0.1, limit - time.monotonic()))
            except TimeoutError:
                raise InputError(
                    "no recording came back in time (is the stream running?)"
                ) from None
            if event[0] in ("stream_lost", "control_error"):
                raise InputError(f"{name}: {event[0].replace('_', ' ')}: {event[1]}")
            payload = event[1] if event[0] == "event" else None
            if isinstance(payload, MeasurementProgress):
                pct = 100 * payload.seconds / payload.total_s
                print(
                    f"\rmeasuring {name}: {payload.seconds:5.1f} / {payload.total_s:.1f} s "
                    f"({pct:3.0f} %)",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
            elif isinstance(payload, MeasurementFailed):
                raise InputError(f"the measurement failed: {payload.reason}: {payload.text}")
            elif isinstance(payload, MeasurementDone):
                break
        xruns = driver.snapshot().xruns - xruns
    print(f"\rmeasured {plan.seconds:.1f} s; analysing ...{' ' * 20}", file=sys.stderr)
    meta = {
        "id": run_id,
        "started": time.time(),
        "device": name,
        "outputs": list(plan.outputs),
        "inputs": list(plan.inputs),
        "sweeps": plan.sweeps,
        "level_db": args.level_db,
        "xruns": xruns,
    }
    return await asyncio.to_thread(
        analyse_measurement, plan, payload.recording, payload.path, str(out), meta
    )


# --- adapt ------------------------------------------------------------------------------------

DEFAULT_URL = "http://127.0.0.1:8080"
ADAPT_HELP = """\
Adapt a sound-field zone to a mode by measurement, through the running service (POST
/api/v1/acoustics/zones/ZONE/adapt): the service measures the zone's paths with the field
muted, then iterates design -> play -> measure through the running field (the closed loop),
stores the result and recalls the adapted field. This command starts the run, shows its
progress on stderr (phase, iteration k of n, worst error so far in JNDs), and at the end
prints a table per iteration, the targets held and those that are not reachable (with the
reason), and where the before/after plot is (adaptation.png in the run's folder,
var/acoustics/RUN under the venue's folder on the service's node).

The token is FLYTOWER_TOKEN's (an API token with the run permission), as for scripts.

exit codes:
  0    converged: every held target within one JND
  1    refused or failed: unknown zone or mode, bad --iterations/--sweeps/--level-db, no
       service at --url, busy, no stream, or the run failed (the reason on stderr)
  2    not converged in the iterations (it says which targets, and why when unreachable);
       also argparse's own usage errors (a missing ZONE or MODE), before anything is sent
  130  Ctrl-C: the run goes on in the service; follow it again with --follow, or stop
       it (and any measurement's test signal) with: flytower acoustics stop
"""


def add_adapt_arguments(sub: Any) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt a zone to a mode by measurement, through the running service",
        description=ADAPT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("zone", help="the sound-field zone ([[acoustics.zones]] name)")
    p.add_argument("mode", help="the mode to adapt it to (flytower acoustics modes)")
    # numbers are read here, not by argparse: a bad one is a refusal (exit 1), never exit 2
    p.add_argument("--iterations", default="3", help="measured iterations, 1..5 (default 3)")
    p.add_argument("--sweeps", help="sweeps averaged per measurement, 1..8 (service: 2)")
    p.add_argument("--level-db", help="sweep level, dB re full scale, -80..-6 (service: -30)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
    p.add_argument(
        "--timeout-s", default="960", help="give up following after this long (default 960)"
    )
    p.add_argument(
        "--follow",
        action="store_true",
        help="start nothing: follow the service's current (or last) adaptation of ZONE to "
        "MODE, e.g. after a Ctrl-C",
    )
    p.add_argument("--json", action="store_true", help="print the final state as JSON")
    p.add_argument(
        "--plot", type=Path, help="save the run's before/after plot here (PNG) when it is done"
    )
    p.set_defaults(fn=adapt_command)


def stop_command(args: argparse.Namespace) -> int:
    """``flytower acoustics stop``: POST /api/v1/acoustics/stop; says what was stopped."""
    import httpx

    from edge.client import FlytowerClient, FlytowerError

    if not getattr(args, "verbose", False):
        logging.getLogger("httpx").setLevel(logging.WARNING)

    async def stop() -> dict[str, Any]:
        async with FlytowerClient(args.url, name="flytower acoustics stop") as client:
            return await client.stop_acoustics()

    try:
        done = asyncio.run(stop())
    except FlytowerError as exc:
        return _fail(f"the service refused: {exc}")
    except httpx.HTTPError as exc:
        return _fail(f"no Flytower service at {args.url}: {exc}")
    if done.get("note"):
        print(done["note"])
    for what in ("measurement", "adaptation"):
        if done.get(what):
            print(f"{what} {done[what]} stopped")
    if done.get("recall_error"):
        print(f"the zone's mode not recalled: {done['recall_error']}", file=sys.stderr)
    return 0


def _number_arg(text: str | None, what: str, whole: bool) -> Any:
    if text is None:
        return None
    try:
        value: float = int(text) if whole else float(text)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise InputError(f"{what} {text!r}: {kind}") from None
    if not math.isfinite(value):
        raise InputError(f"{what} {text!r}: a finite number")
    return value


class _Status:
    """The live status line on stderr: rewritten in place on a terminal, a line per change
    elsewhere (a log, a pipe)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.width = 0

    def show(self, text: str) -> None:
        if self.tty:
            # one line, or ``\r`` would rewrite only its wrapped tail
            text = text[: max(20, shutil.get_terminal_size().columns - 1)]
            pad = " " * max(0, self.width - len(text))
            print(f"\r{text}{pad}", end="", file=sys.stderr, flush=True)
            self.width = len(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.tty and self.width:
            print(file=sys.stderr, flush=True)
        self.width = 0


def _progress_text(state: Any) -> str:
    worst = " ".join("-" if w is None else f"{w:.2f}" for w in state.worst_jnd)
    so_far = f" (worst JND per iteration: {worst})" if worst else ""
    return f"{state.id} {state.zone} -> {state.mode}: {state.phase}{so_far}"


def _hz(hz: float) -> str:
    return f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}"


def adaptation_report(state: Any) -> str:
    """The end of a run as text: a row per measured iteration, the targets held, those not
    reachable with the reason, the plot."""
    r = state.result
    assert r is not None
    verdict = "converged" if r.converged else "NOT converged"
    lines = [f"adaptation {state.id}: zone {state.zone} to '{state.mode}': {verdict}"]
    if r.reason:
        lines.append(f"  {r.reason}")
    lines.append(f"{'iteration':>9} {'worst JND':>9}  within 1 JND")
    for i, w in enumerate(state.worst_jnd):
        mark = " (best)" if r.best_iteration == i else ""
        ok = "-" if w is None else ("yes" if w <= 1.0 else "no")
        lines.append(f"{i + 1:>9} {'-' if w is None else f'{w:.2f}':>9}  {ok}{mark}")
    if not state.worst_jnd:
        lines.append(f"{'-':>9} {'-':>9}  (no measured iteration reported)")
    extra = []
    if r.worst_jnd is not None:
        extra.append(f"worst held error {r.worst_jnd:.2f} JND")
    if r.loop_gain_db is not None:
        extra.append(f"loop gain {r.loop_gain_db:.1f} dB")
    if extra:
        lines.append("; ".join(extra))
    held = "; ".join(
        f"{m} {', '.join(_hz(b) for b in bands)} Hz" for m, bands in r.held.items() if bands
    )
    lines.append(f"held: {held or 'none'}")
    if r.unreachable:
        lines.append(f"not reachable ({len(r.unreachable)}):")
        for u in r.unreachable:
            t = "-" if u.target is None else f"{u.target:.3g}"
            b = "-" if u.best is None else f"{u.best:.3g}"
            lines.append(
                f"  {u.metric} at {_hz(u.band_hz)} Hz (target {t}, best {b}): "
                f"{u.reason or 'no reason given'}"
            )
    if r.plot:
        lines.append(
            f"plot: var/acoustics/{state.id}/{r.plot} (in the venue's folder on the service's "
            "node; the API does not serve it)"
        )
    elif r.plot_error:
        lines.append(f"no plot: {r.plot_error}")
    return "\n".join(lines)


def adapt_command(args: argparse.Namespace) -> int:
    from edge.client import FlytowerClient

    if not getattr(args, "verbose", False):  # a line per request is noise here
        logging.getLogger("httpx").setLevel(logging.WARNING)
    started: dict[str, Any] = {}
    try:
        iterations = _number_arg(args.iterations, "--iterations", True)
        sweeps = _number_arg(args.sweeps, "--sweeps", True)
        level_db = _number_arg(args.level_db, "--level-db", False)
        timeout_s = _number_arg(args.timeout_s, "--timeout-s", False)
        if timeout_s <= 0:
            raise InputError(f"--timeout-s {args.timeout_s}: more than 0")
        client = FlytowerClient(args.url, name="flytower acoustics adapt")
    except (InputError, ValueError) as exc:
        return _fail(str(exc))
    status = _Status()
    try:
        return asyncio.run(
            _adapt(args, client, iterations, sweeps, level_db, timeout_s, status, started)
        )
    except KeyboardInterrupt:
        status.end()
        if "id" in started:
            print(
                f"interrupted: adaptation {started['id']} goes on in the service; follow it "
                f"with: flytower acoustics adapt {args.zone} {args.mode} --follow --url "
                f"{args.url}, or stop it with: flytower acoustics stop --url {args.url}",
                file=sys.stderr,
            )
        else:
            print(
                "interrupted before the service answered: an adaptation may have started "
                f"(GET {args.url}/api/v1/acoustics)",
                file=sys.stderr,
            )
        return 130


async def _save_plot(client: Any, run_id: str, path: Path) -> None:
    """The run's plot into ``path``; a plot that cannot be had or written is said on stderr
    (the adaptation stands without it, and the exit code is the adaptation's)."""
    from edge.client import FlytowerError, MalformedAnswer

    try:
        png = await client.adaptation_plot(run_id)
        await asyncio.to_thread(path.write_bytes, png)
    except (FlytowerError, MalformedAnswer, OSError) as exc:
        print(f"plot: not saved: {exc}", file=sys.stderr)
        return
    print(f"the plot saved: {path}", file=sys.stderr)


async def _adapt(
    args: argparse.Namespace,
    client: Any,
    iterations: int,
    sweeps: int | None,
    level_db: float | None,
    timeout_s: float,
    status: _Status,
    started: dict[str, Any],
) -> int:
    import httpx
    import websockets

    from edge.client import FlytowerError, MalformedAnswer

    where = args.url
    async with client:
        try:
            if args.follow:
                state = await client.adaptation()
                if state is None or (state.zone, state.mode) != (args.zone, args.mode):
                    last = "none" if state is None else f"{state.id}: {state.zone} to {state.mode}"
                    return _fail(
                        f"no adaptation of {args.zone} to '{args.mode}' to follow at {where} "
                        f"(the service's last: {last})"
                    )
            else:
                state = await client.adapt(
                    args.zone, args.mode, iterations, sweeps=sweeps, level_db=level_db
                )
            started["id"] = state.id  # its progress: wait_adaptation's first on_progress
            final = await client.wait_adaptation(
                state.id, on_progress=lambda s: status.show(_progress_text(s)), timeout_s=timeout_s
            )
            if args.plot is not None and final.state == "done":
                status.end()
                await _save_plot(client, final.id, args.plot)
        except FlytowerError as exc:
            status.end()
            return _fail(f"the service refused: {exc}")
        except MalformedAnswer as exc:
            status.end()
            return _fail(f"{where} answered something unexpected: {exc}")
        except ValueError as exc:  # an empty zone or mode, refused before anything is sent
            status.end()
            return _fail(str(exc))
        except TimeoutError:
            status.end()
            return _fail(
                f"adaptation {started.get('id')} did not end within {timeout_s:g} s "
                "(it may go on in the service)"
            )
        except httpx.ConnectError as exc:
            status.end()
            return _fail(f"no Flytower service at {where}: {exc}")
        except (httpx.HTTPError, OSError, websockets.WebSocketException) as exc:
            status.end()
            return _fail(f"talking to {where}: {type(exc).__name__}: {exc}")
    status.end()
    if args.json:
        print(json.dumps(final.raw, indent=1))
    if final.state == "failed":
        return _fail(f"adaptation {final.id} failed: {final.error or 'no reason given'}")
    if not args.json:
        print(adaptation_report(final))
    result = final.result
    assert result is not None
    if result.converged:
        return 0
    why = [f"not converged in {final.iterations} iteration(s): {result.reason}"]
    if result.worst_jnd is not None:
        held = ", ".join(
            f"{m} at {'/'.join(_hz(b) for b in bands)} Hz" for m, bands in result.held.items()
        )
        why.append(f"the held targets ({held}) are {result.worst_jnd:.2f} JND off at worst")
    for u in result.unreachable:
        why.append(f"unreachable: {u.metric} at {_hz(u.band_hz)} Hz: {u.reason}")
    print("\n".join(why), file=sys.stderr)
    return 2
