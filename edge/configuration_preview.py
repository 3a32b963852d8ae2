"""``flytower configuration preview VENUE NAME [--from NAME]``: a switch, tried on the simulators.

The HIL rig (``edge.hil``) is reused as it is: the venue moved onto free loopback ports
(``edge.hil.venue.isolate``), the simulators in a child process, the real service in this
process, and this runner talking to it only over REST as a console does. With ``--from`` the
venue is first switched to that configuration (the simulators start from the positions their
``simulate`` tables give, not from where the real venue stands). The switch is then run while
the terminal shows a status line (overall fraction, phase, elapsed, remaining), the preview
holding the machinery's hold-to-run enable as the operator would; at the end the
per-phase and per-axis timings are printed, and ``OUT/positions.png`` (every axis' position
over time, phases shaded) and ``OUT/summary.json`` are written.

Exit status: 0 the switch completed; 1 it failed or was aborted (Ctrl-C aborts it); 2 the rig
could not be set up (a bad venue or name, the simulators or the service not starting).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx

from drivers.model import ConfigError
from edge.config import parse_venue
from edge.hil import run as hil_run
from edge.hil import venue as hil_venue

log = logging.getLogger(__name__)

SAMPLE_S = 0.1
READY_TIMEOUT_S = 60.0


class PreviewError(RuntimeError):
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("venue", type=Path)
    p.add_argument("name", help="the configuration to switch to")
    p.add_argument("--from", dest="start", help="switch to this configuration first")
    p.add_argument("--out", type=Path, help="output folder (default hil-out/configuration-NAME)")
    p.add_argument("--quiet", action="store_true", help="no progress on the terminal")


def main(args: argparse.Namespace) -> int:
    out = args.out or Path("hil-out") / f"configuration-{args.name}"
    out.mkdir(parents=True, exist_ok=True)
    progress = hil_run.Progress(quiet=args.quiet)
    try:
        return asyncio.run(preview(args.venue, args.name, args.start, out, progress))
    except (PreviewError, hil_run.SetupError) as exc:
        progress.done()
        print(f"error: {exc}")
        return 2


def _prepare(venue_path: Path, out: Path) -> tuple[dict[str, Any], Any]:
    try:
        data = hil_venue.read_expanded(venue_path)
        data = hil_venue.isolate(data)
        data = hil_venue.with_store(data, out / "telemetry.sqlite3")
        venue = parse_venue(data, venue_path)
    except ConfigError as exc:
        raise PreviewError("\n".join(f"{exc.path}: {p}" for p in exc.problems)) from exc
    return data, venue


async def preview(
    venue_path: Path, name: str, start: str | None, out: Path, progress: hil_run.Progress
) -> int:
    data, venue = _prepare(venue_path, out)
    known = venue.config.configurations
    for wanted in [name] + ([start] if start else []):
        if wanted not in known:
            raise PreviewError(
                f"{venue_path}: no configuration '{wanted}' "
                f"(configurations: {', '.join(known) or 'none'})"
            )
    (out / "venue.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    state = out / "telemetry.configuration.json"
    state.unlink(missing_ok=True)  # a preview starts from the simulated venue, never "known"
    handler = logging.FileHandler(out / "run.log", mode="w", encoding="utf-8")
    root = logging.getLogger()
    root.addHandler(handler)
    saved = [(h, h.level) for h in root.handlers if h is not handler]
    for h, _ in saved:
        h.setLevel(logging.WARNING)  # the service's INFO lines go to run.log, not the terminal
    axes = list(known[name].machinery) + (list(known[start].machinery) if start else [])
    try:
        progress.event(f"starting the simulators ({len(venue.devices)} device(s))")
        async with (
            hil_run.simulators(
                out / "venue.json", venue_path, 1, out / "simulators.log", READY_TIMEOUT_S
            ),
            hil_run.service(venue, READY_TIMEOUT_S) as (svc, _task),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.bound_api_port}", timeout=10) as api,
        ):
            await _positions_known(api, sorted(set(axes)), progress)
            # On the simulators the preview is the operator: it holds the hold-to-run enable
            # (docs/machinery.md) for the whole run, as the console's enable would be held.
            keeper = asyncio.create_task(hil_run.hold_enable(api, "preview"))
            try:
                if start:
                    progress.event(f"switching to '{start}' first")
                    first = await _switch(api, start, progress, None)
                    if first["state"] != "done":
                        raise PreviewError(
                            f"the switch to '{start}' {first['state']}: {first['reason']}"
                        )
                progress.event(f"switching to '{name}'")
                samples: list[tuple[float, dict[str, float | None]]] = []
                final = await _switch(api, name, progress, samples)
            finally:
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)
    finally:
        progress.done()
        root.removeHandler(handler)
        handler.close()
        for h, level in saved:
            h.setLevel(level)
    report(final, samples, out, print)
    return 0 if final["state"] == "done" else 1


async def _positions_known(api: httpx.AsyncClient, axes: list[str], progress: Any) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    late = axes
    while time.monotonic() < deadline:
        late = []
        for axis in axes:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                points = (await api.get(f"/api/v1/devices/{axis}/points")).json()
                pos = next((p for p in points if p["name"] == "position"), None)
                if pos is not None and pos["quality"] == "good":
                    continue
            late.append(axis)
        if not late:
            return
        progress.status(
            f"waiting for the positions of {len(late)} axis/axes: {', '.join(late[:4])}"
        )
        await asyncio.sleep(0.2)
    raise PreviewError(f"no position after {READY_TIMEOUT_S:g} s from: {', '.join(late)}")


async def _switch(
    api: httpx.AsyncClient,
    name: str,
    progress: Any,
    samples: list[tuple[float, dict[str, float | None]]] | None,
) -> dict[str, Any]:
    res = await api.post(f"/api/v1/configurations/{name}/switch")
    if res.status_code != 202:
        raise PreviewError(
            f"switch to '{name}' refused ({res.status_code}): {res.json()['detail']}"
        )
    t0 = time.monotonic()
    told: set[str] = set()
    try:
        while True:
            p = (await api.get("/api/v1/configurations/switch")).json()
            if samples is not None:
                samples.append(
                    (time.monotonic() - t0, {a["axis"]: a["present"] for a in p["axes"]})
                )
            for ph in p["phases"]:
                for key, what in (("started_s", "started"), ("ended_s", ph["state"])):
                    tag = f"{ph['index']}:{key}"
                    if ph[key] is not None and tag not in told:
                        told.add(tag)
                        progress.event(
                            f"[{ph[key]:7.2f} s] phase {ph['index'] + 1} "
                            f"({', '.join(ph['axes'])}) {what}"
                        )
            if p["state"] != "running":
                return dict(p)
            progress.status(status_line(p))
            await asyncio.sleep(SAMPLE_S)
    except (KeyboardInterrupt, asyncio.CancelledError):
        with contextlib.suppress(httpx.HTTPError):
            await api.post("/api/v1/configurations/switch/abort")
        raise


def status_line(p: dict[str, Any], width: int = 24) -> str:
    fraction = float(p.get("fraction") or 0.0)
    filled = round(fraction * width)
    bar = "#" * filled + "-" * (width - filled)
    phase = p.get("phase")
    remaining = p.get("remaining_s")
    rest = f"~{remaining:.0f} s left" if remaining is not None else "remaining unknown"
    return (
        f"{p['configuration']} [{bar}] {fraction * 100:5.1f} %  phase "
        f"{(phase + 1) if phase is not None else '-'}/{p['phase_count']}  "
        f"{p['elapsed_s']:.1f} s  {rest}"
    )


def report(
    final: dict[str, Any],
    samples: list[tuple[float, dict[str, float | None]]],
    out: Path,
    echo: Any,
) -> None:
    """Print the timings, write ``summary.json`` and ``positions.png``."""
    echo(
        f"switch to '{final['configuration']}': {final['state']} in {final['elapsed_s']:.2f} s"
        + (f" — {final['reason']}" if final["reason"] else "")
    )
    echo("phase  start s    end s  duration s  axes")
    for ph in final["phases"]:
        s, e = ph["started_s"], ph["ended_s"]
        dur = f"{e - s:10.2f}" if s is not None and e is not None else "         -"
        echo(
            f"{ph['index'] + 1:>5}  {_t(s)}  {_t(e)}  {dur}  "
            f"{', '.join(ph['axes'])} ({ph['state']})"
        )
    echo("axis              start      target     present  moved s  state")
    for a in final["axes"]:
        s, e = a["started_s"], a["arrived_s"]
        dur = f"{e - s:7.2f}" if s is not None and e is not None else "      -"
        echo(
            f"{a['axis']:<14} {_v(a['start'])} {_v(a['target'])} {_v(a['present'])}  {dur}  "
            f"{a['state']} {a['unit']}{(' — ' + a['reason']) if a['reason'] else ''}"
        )
    for key in ("lighting", "acoustics"):
        if final[key]["state"] != "none":
            echo(f"{key}: {final[key]['state']} {final[key]['reason']}".rstrip())
    (out / "summary.json").write_text(
        json.dumps({"progress": final, "samples": samples}, indent=1), encoding="utf-8"
    )
    plot(final, samples, out / "positions.png")
    echo(f"written: {out / 'positions.png'}, {out / 'summary.json'}")


def _t(v: float | None) -> str:
    return f"{v:7.2f}" if v is not None else "      -"


def _v(v: float | None) -> str:
    return f"{v:10.1f}" if v is not None else "         -"


def plot(
    final: dict[str, Any], samples: list[tuple[float, dict[str, float | None]]], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = [a["axis"] for a in final["axes"]]
    fig, ax = plt.subplots(figsize=(10, 5))
    try:
        for axis in axes:
            points = [(t, v[axis]) for t, v in samples if v.get(axis) is not None]
            ts = [t for t, _ in points]
            vs = [float(x) for _, x in points if x is not None]
            ax.plot(ts, vs, label=axis)
        colours = ["#dde8f5", "#f5e8dd"]
        for ph in final["phases"]:
            s, e = ph["started_s"], ph["ended_s"]
            if s is None:
                continue
            end = e if e is not None else (samples[-1][0] if samples else s)
            ax.axvspan(s, end, color=colours[ph["index"] % 2], alpha=0.6)
            ax.text(
                s,
                1.0,
                f" phase {ph['index'] + 1}",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=8,
            )
        ax.set_xlabel("time since the switch (s)")
        ax.set_ylabel("position (axis unit)")
        ax.set_title(
            f"switch to '{final['configuration']}': {final['state']} in {final['elapsed_s']:.1f} s"
        )
        if axes:
            ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
