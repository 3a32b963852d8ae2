"""Soak: the opera house (examples/venue-large.toml) under a scripted show for 10 minutes.

``flytower simulate`` runs the house (746 devices: 64 axes on Modbus TCP, 148 MQTT devices,
64 DMX universes, 4 OSC matrices) and ``flytower run --no-simulators`` serves it, each in its own
processes, as ``tests/hil/test_venue_large.py`` starts them. A script (the Python client, as a
show-control script would) loads a generated show and plays it for the whole run:

- ``main``, a looping list of 6 cues, one GO every 5 s: lighting fades over the 336 bar washes,
  96 movers and 96 dimmers, four flybars flown 1 m out and in (with the hold-to-run enable held
  all along), projector shutters and the LED walls' brightness;
- ``chase``, 8 cues chained by 0.5 s auto-continues over the bar washes' red, started again by
  every ``main`` cue, so the engine, the lighting and the journal work between the GOs too.

The house runs on a real Mosquitto, as ``tests/hil/test_venue_large.py`` runs it (the file's
embedded broker is for trying the venue out on one machine, docs/telemetry.md).

Every 10 s it samples the service's memory (resident set of ``flytower run`` and of its child
processes, the store writer and the ingest workers, each), the round trip of ``GET
/api/v1/devices`` (746 devices), the lighting engine's frame-interval jitter (p99 over its last
frames), the store's write rate and queue, and the devices online; each GO's round trip is
timed. The **reference** of each figure is the run's own first measured window (after a 2-minute
warm-up): the figures are the last window's against it, and the memory's trend, a least-squares
line through every sample after the warm-up, in MB per hour. The plot goes to
``var/bench/soak.png``.

``python -m benchmarks.bench_soak [--minutes M]`` (``make bench``: 10).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
LARGE = REPO / "examples" / "venue-large.toml"
PLOT = REPO / "var" / "bench" / "soak.png"
MINUTES = 10.0
# Memory is stable when the last window is within 2 % of the first and the run's last half
# grows less than 2 % an hour: what a ring still filling or a slow leak would exceed.
STABLE_RATIO = 1.02
STABLE_TREND = 0.02
WARMUP_S = 120.0
SAMPLE_S = 10.0
GO_EVERY_S = 5.0
WINDOW_S = 120.0  # the reference window (first after the warm-up) and the last one
FLYBARS = ("fly-01", "fly-09", "fly-17", "fly-25")
FLY_BY_MM = 1000.0
EMBEDDED = '[mqtt]\nmode = "embedded"\nhost = "127.0.0.1"\nport = 18831\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str, timeout_s: float = 10.0) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as res:
        body = res.read()
    return json.loads(body) if path != "/metrics" else body.decode()


def metric(text: str, name: str) -> float:
    """The sum of a Prometheus family's samples (``name`` and ``name{...}``) in ``text``."""
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([-+0-9.eE]+|NaN)$", re.M)
    return sum(float(v) for v in pattern.findall(text) if v != "NaN")


def show(positions: dict[str, float]) -> dict[str, Any]:
    """The soak's show, as show-file data (docs/interfaces/show-file.md)."""

    def fly(out: bool) -> dict[str, Any]:
        axes = []
        for axis in FLYBARS:
            home = positions[axis]
            away = home - FLY_BY_MM if home - FLY_BY_MM > 500 else home + FLY_BY_MM
            axes.append({"device": axis, "position": round(away if out else home, 1)})
        return {
            "kind": "machinery.move",
            "profile": {"speed": 600, "acceleration": 600, "jerk": 3000},
            "axes": axes,
        }

    def levels(fade_s: float, *pairs: tuple[str, str | None, float]) -> dict[str, Any]:
        return {
            "kind": "lighting.levels",
            "fade_s": fade_s,
            "levels": [
                {"group": g, "level": lv} | ({"attribute": a} if a else {}) for g, a, lv in pairs
            ],
        }

    def command(device: str, name: str, **args: Any) -> dict[str, Any]:
        return {"kind": "device.command", "device": device, "command": name} | (
            {"args": args} if args else {}
        )

    main = [
        [levels(3, ("bar washes", None, 80), ("dimmers", "dimmer_1", 60))],
        [fly(True), levels(2, ("movers", None, 70), ("movers", "pan", 200))],
        [
            levels(2, ("movers", "tilt", 90), ("dimmers", "dimmer_1", 30)),
            command("projector-1", "open_shutter"),
        ],
        [fly(False), command("ledwall-1", "set_brightness", level=40)],
        [
            levels(4, ("bar washes", "blue", 100), ("movers", "pan", 60)),
            command("projector-1", "close_shutter"),
        ],
        [
            levels(2, ("dimmers", "dimmer_1", 80), ("movers", None, 20)),
            command("ledwall-1", "set_brightness", level=80),
        ],
    ]
    chase = [levels(0.3, ("bar washes", "red", lv)) for lv in (100, 20, 70, 0, 90, 10, 60, 0)]
    start_chase = {"kind": "list.start", "list": "chase"}
    return {
        "version": 1,
        "show": {"title": "Soak", "venue": "opera"},
        "lists": [
            {
                "id": "main",
                "name": "Main",
                "loop": True,
                "go_debounce_s": 0.5,
                "cues": [
                    {"number": i + 1, "label": f"Main {i + 1}", "actions": [*actions, start_chase]}
                    for i, actions in enumerate(main)
                ],
            },
            {
                "id": "chase",
                "name": "Chase",
                "mode": "cue-only",
                "priority": 110,
                "cues": [
                    {
                        "number": i + 1,
                        "label": f"Chase {i + 1}",
                        "actions": [a],
                    }
                    | ({"auto_continue_s": 0.5} if i < len(chase) - 1 else {})
                    for i, a in enumerate(chase)
                ],
            },
        ],
    }


@dataclass
class Sample:
    t: float
    rss_mb: dict[str, float]
    devices_ms: float
    jitter_p99_ms: float
    written: float
    queue: float
    online: int


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    gos: list[tuple[float, float]] = field(default_factory=list)  # (t, round trip ms)
    failed_events: list[str] = field(default_factory=list)  # the journal's refused or failed
    wall0: float = field(default_factory=time.time)
    warmup_s: float = WARMUP_S  # a shorter run takes a fifth of itself for each
    window_s: float = WINDOW_S
    events: int = 0


def rss(service: psutil.Process, names: dict[int, str]) -> dict[str, float]:
    """Resident MB of the service and of each of its child processes, by role."""
    out = {"service": service.memory_info().rss / 1e6}
    for child in service.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "resource_tracker" in " ".join(child.cmdline()):
                continue  # multiprocessing's bookkeeping, 13 MB, not ours
            out[names.get(child.pid, "store writer")] = child.memory_info().rss / 1e6
    return out


def child_names(health: dict[str, Any]) -> dict[int, str]:
    """The ingest workers' pids, from the service's health (the other child is the store's)."""
    return {
        int(link["pid"]): name.replace("-", " worker ")
        for name, link in health["links"].items()
        if name.startswith("ingest-") and link.get("pid")
    }


async def sample(api: int, service: psutil.Process, t0: float) -> Sample:
    loop = asyncio.get_running_loop()
    t = time.perf_counter()
    await loop.run_in_executor(None, get, api, "/api/v1/devices")
    devices_ms = (time.perf_counter() - t) * 1000
    metrics = await loop.run_in_executor(None, get, api, "/metrics")
    lighting = await loop.run_in_executor(None, get, api, "/api/v1/lighting")
    health = await loop.run_in_executor(None, get, api, "/api/v1/health")
    jitter = (lighting["stats"].get("jitter_ms") or {}).get("p99", float("nan"))
    return Sample(
        t=time.monotonic() - t0,
        rss_mb=rss(service, child_names(health)),
        devices_ms=devices_ms,
        jitter_p99_ms=float(jitter),
        written=metric(metrics, "flytower_store_written_total"),
        queue=metric(metrics, "flytower_queue_depth"),
        online=sum(s == "online" for s in health["devices"].values()),
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def slope_per_h(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per hour."""
    if len(points) < 3:
        return float("nan")
    return statistics.linear_regression([p[0] for p in points], [p[1] for p in points]).slope * 3600


def plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, lat) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    keys = sorted({k for s in run.samples for k in s.rss_mb})
    minutes = [s.t / 60 for s in run.samples]
    for key in keys:
        mem.plot(minutes, [s.rss_mb.get(key, float("nan")) for s in run.samples], label=key)
    mem.plot(minutes, [sum(s.rss_mb.values()) for s in run.samples], "k--", label="total")
    mem.axvline(run.warmup_s / 60, color="grey", lw=0.8, ls=":")
    mem.set_ylabel("resident memory (MB)")
    mem.set_title("Soak: examples/venue-large.toml under a scripted show")
    mem.legend(fontsize=8, loc="center right")
    lat.plot(
        [t / 60 for t, _ in run.gos], [ms for _, ms in run.gos], ".", ms=3, label="GO round trip"
    )
    lat.plot(minutes, [s.devices_ms for s in run.samples], "-", label="GET /api/v1/devices")
    lat.plot(minutes, [s.jitter_p99_ms for s in run.samples], "-", label="DMX frame jitter p99")
    lat.set_yscale("log")
    lat.set_ylabel("ms")
    lat.set_xlabel("minutes")
    lat.axvline(run.warmup_s / 60, color="grey", lw=0.8, ls=":")
    lat.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def play(api: int, service: psutil.Process, seconds: float) -> Run:
    from edge.client import FlytowerClient, FlytowerError

    run = Run(warmup_s=min(WARMUP_S, seconds / 5), window_s=min(WINDOW_S, seconds / 5))
    t0 = time.monotonic()
    async with FlytowerClient(f"http://127.0.0.1:{api}", name="soak") as ft:
        axes = await ft.axes()
        positions = {a: float(axes[a]["position"]) for a in FLYBARS}
        await ft._call("PUT", "/api/v1/show", json=show(positions))
        async with ft.hold_enable("soak"):
            next_go = next_sample = time.monotonic()
            last_minute = -1
            while (now := time.monotonic()) - t0 < seconds:
                if now >= next_go:
                    t = time.perf_counter()
                    try:
                        await ft.go("main")
                        run.gos.append((now - t0, (time.perf_counter() - t) * 1000))
                    except FlytowerError as exc:
                        run.failed_events.append(str(exc))
                    next_go += GO_EVERY_S
                if now >= next_sample:
                    run.samples.append(await sample(api, service, t0))
                    next_sample += SAMPLE_S
                    minute = int((now - t0) // 60)
                    if minute != last_minute:
                        last_minute = minute
                        s = run.samples[-1]
                        print(
                            f"   {minute:>3} min: {sum(s.rss_mb.values()):7.1f} MB, "
                            f"{len(run.gos)} GOs, devices {s.devices_ms:6.1f} ms, "
                            f"jitter p99 {s.jitter_p99_ms:5.2f} ms, {s.online} online",
                            flush=True,
                        )
                await asyncio.sleep(min(next_go, next_sample) - time.monotonic())
        events = await ft.journal(since=run.wall0, limit=10_000)
    run.events = len(events)
    run.failed_events += [
        f"{e['command']} {e['result']}: {e.get('reason')}" for e in events if e["result"] != "ok"
    ]
    return run


def report(run: Run) -> None:
    s = run.samples
    after = [x for x in s if x.t >= run.warmup_s]
    first = [x for x in after if x.t < run.warmup_s + run.window_s]
    last = [x for x in after if x.t >= s[-1].t - run.window_s]
    if not first or not last:
        print("   too short a run for a figure: give --minutes above 4")
        return
    total = [(x.t, sum(x.rss_mb.values())) for x in after]
    mean_total = statistics.fmean(v for _, v in total)
    growth = slope_per_h(total)
    half = total[len(total) // 2 :]
    print(
        f"   memory (service + children): {mean_total:.0f} MB on average after the warm-up; "
        f"trend {growth:+.1f} MB/h ({100 * growth / mean_total:+.2f} %/h), "
        f"over the last half {slope_per_h(half):+.1f} MB/h"
    )
    mem_first = statistics.fmean(sum(x.rss_mb.values()) for x in first)
    mem_last = statistics.fmean(sum(x.rss_mb.values()) for x in last)
    print(
        f"   memory, last window against the first: {mem_last:.0f} / {mem_first:.0f} MB"
        f" = {mem_last / mem_first:.3f}x"
    )
    stable = mem_last / mem_first <= STABLE_RATIO and slope_per_h(half) <= STABLE_TREND * mean_total
    print(
        f"   memory stable: {'yes' if stable else 'NO'} (last window at most {STABLE_RATIO}x "
        f"the first, and over the last half a trend of at most {STABLE_TREND:.0%} an hour)"
    )
    for key in sorted({k for x in after for k in x.rss_mb}):
        series = [(x.t, x.rss_mb[key]) for x in after if key in x.rss_mb]
        was = statistics.fmean(x.rss_mb.get(key, 0.0) for x in first)
        now = statistics.fmean(x.rss_mb.get(key, 0.0) for x in last)
        print(
            f"     {key}: {was:.0f} -> {now:.0f} MB, trend {slope_per_h(series):+.1f} MB/h, "
            f"over the last half {slope_per_h(series[len(series) // 2 :]):+.1f} MB/h"
        )

    def gos(window: list[Sample]) -> list[float]:
        lo, hi = window[0].t - SAMPLE_S, window[-1].t
        return [ms for t, ms in run.gos if lo <= t <= hi]

    rows = [
        ("GO round trip p99", gos(first), gos(last)),
        ("GET /api/v1/devices p99", [x.devices_ms for x in first], [x.devices_ms for x in last]),
        ("DMX frame jitter p99", [x.jitter_p99_ms for x in first], [x.jitter_p99_ms for x in last]),
    ]
    for label, a, b in rows:
        pa, pb = pct(a, 99), pct(b, 99)
        print(f"   {label}: last window {pb:.2f} ms, first {pa:.2f} ms = {pb / pa:.2f}x")
    rate = [(y.written - x.written) / (y.t - x.t) for x, y in itertools.pairwise(after)]
    print(
        f"   store: {statistics.fmean(rate):.0f} readings/s written (min {min(rate):.0f}), "
        f"queue max {max(x.queue for x in after):.0f}; devices online "
        f"{min(x.online for x in after)}..{max(x.online for x in after)}"
    )
    print(
        f"   {len(run.gos)} GOs; journal: {run.events} events"
        f"{' (the latest 10 000)' if run.events >= 10_000 else ''}, "
        f"{len(run.failed_events)} refused or failed"
    )
    for reason in run.failed_events[:5]:
        print(f"     {reason}")


def wait_ready(api: int, procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """Until 95 % of the devices with a health of their own are online (DMX fixtures have
    none: DMX has no answer)."""
    deadline = time.monotonic() + timeout_s
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args!r} exited with {p.returncode}")
        with contextlib.suppress(OSError, ValueError):
            states = {
                d["id"]: d["health"]["state"]
                for d in get(api, "/api/v1/devices")
                if d["protocol"] != "dmx"
            }
            late = sorted(d for d, s in states.items() if s != "online")
            if states and len(late) <= 0.05 * len(states):
                # Shelly H&T sensors sleep between their reports, minutes apart
                print(f"   {len(states) - len(late)} of {len(states)} online; not yet: {late}")
                return
        time.sleep(1)
    late = sorted(d for d, s in states.items() if s != "online")
    raise RuntimeError(f"{len(late)} devices not online after {timeout_s} s: {late[:20]}")


async def run(minutes: float = MINUTES) -> None:
    with tempfile.TemporaryDirectory(prefix="flytower-soak-") as tmp:
        folder = Path(tmp)
        from benchmarks.bench_ingest import mosquitto

        async with mosquitto(folder) as (port, _):
            mqtt = f'[mqtt]\nmode = "external"\nhost = "127.0.0.1"\nport = {port}\n'
            text = LARGE.read_text()
            if EMBEDDED not in text:
                raise RuntimeError("the large venue's [mqtt] table changed: update bench_soak")
            venue = folder / "venue-large.toml"
            venue.write_text(text.replace(EMBEDDED, mqtt))
            await soak(folder, venue, minutes)


async def soak(folder: Path, venue: Path, minutes: float) -> None:
    api = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(*args: str, log: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", *args],
            cwd=REPO,
            stdout=(folder / log).open("wb"),
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        return proc

    try:
        spawn("simulate", str(venue), log="sim.log")
        service = spawn("run", str(venue), "--no-simulators", "--port", str(api), log="run.log")
        t = time.monotonic()
        wait_ready(api, procs, 120)
        print(f"   the house is online {time.monotonic() - t:.0f} s after the start", flush=True)
        result = await play(api, psutil.Process(service.pid), minutes * 60)
    except Exception:
        for log in ("run.log", "sim.log"):
            tail = (folder / log).read_text(errors="replace").splitlines()[-20:]
            print(f"--- {log}\n" + "\n".join(tail))
        raise
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    report(result)
    plot(result, PLOT)
    print(f"   plot: {PLOT.relative_to(REPO)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_soak")
    parser.add_argument("--minutes", type=float, default=MINUTES)
    asyncio.run(run(parser.parse_args().minutes))
