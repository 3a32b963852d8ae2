"""One run of a scenario: start the rig, run the timeline, sample, judge, stop everything.

Who runs where, and why:

- **The simulators** run as a child process (``python -m simulators VENUE.json``), as the
  hardware they stand in for is outside the service. Their physics clocks then never share an
  event loop with the service or with this runner. The child sits in its own process group,
  is told to die with us (PR_SET_PDEATHSIG), and is stopped with SIGTERM, then SIGKILL.
- **The service** runs in this process: ``edge.service.Service``, the very object
  `flytower run` builds, on the venue we moved to free ports, API on an ephemeral port it
  reports. In-process it needs no venue file of its own (its paths resolve against the
  original venue), its shutdown is awaited in order (drivers stop, the store drains), and
  it cannot be orphaned. The runner still talks to it only over its REST API, like a
  console, so moving it out into a child later changes nothing else.
- **The runner** drives the timeline on the monotonic clock (steps in file order, each at its
  ``at`` or ``delay_s``), and samples on fixed deadlines (``sample_hz``; a late tick is
  skipped, never bunched): the service's points (``GET /api/v1/devices/{id}/points``, one
  request per device), its health (``GET /api/v1/health``) and the simulators' truth
  (``GET /sim/v1/truth?ids=…``), all concurrently. A sample's time is when its answers
  arrived. Each sample feeds the judges (``edge.hil.judge``) and wakes waiting steps.

Errors: anything wrong before the timeline starts (venue, simulators, a device that never comes
online, a fault or truth key the simulators do not know) is a ``SetupError`` (exit 2). The
simulators dying mid-run is recorded as a rig error (exit 2); the service dying is a failure
of the system under test (exit 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from drivers.model import ConfigError
from edge.config import Venue, parse_venue
from edge.hil import venue as hil_venue
from edge.hil.judge import Judge, Verdict, holds
from edge.hil.scenario import LoadedScenario, Step, _fmt, check_against_venue

log = logging.getLogger(__name__)

Series = tuple[str, str, str]  # (kind: point | truth | health, device, name)
STOP_GRACE_S = 5.0
HTTP_TIMEOUT_S = 5.0


class SetupError(RuntimeError):
    """The rig could not be set up: nothing was judged. ``problems`` are one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class StepResult:
    index: int
    step: Step
    planned: float | None  # seconds from the start, when known in advance
    started: float | None = None
    finished: float | None = None
    ok: bool | None = None  # None: never ran
    detail: str = ""
    skipped: bool = False  # due after the end of the run

    @property
    def title(self) -> str:
        name = f" '{self.step.id}'" if self.step.id else ""
        return f"step {self.index + 1}{name}: {self.step.describe()}"


@dataclass
class FaultEvent:
    t: float
    device: str
    active: list[str]  # every fault active on the device after the step


@dataclass
class RunResult:
    """What a run produced: the reports are made from this alone."""

    name: str
    scenario: LoadedScenario
    series: list[Series]
    units: dict[Series, str]
    times: list[float] = field(default_factory=list)
    values: dict[Series, list[Any]] = field(default_factory=dict)
    steps: list[StepResult] = field(default_factory=list)
    judges: list[Judge] = field(default_factory=list)
    faults: list[FaultEvent] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # failures of the system under test
    rig_errors: list[str] = field(default_factory=list)  # failures of the rig (exit 2)
    started_wall: float = 0.0
    elapsed: float = 0.0
    sample_misses: int = 0

    @property
    def failed(self) -> int:
        judged = sum(j.verdict is Verdict.FAILED for j in self.judges)
        return judged + sum(s.ok is not True for s in self.steps) + len(self.errors)

    @property
    def passed(self) -> bool:
        return self.failed == 0 and not self.rig_errors


class Progress:
    """Live progress on a terminal: events as lines, and one status line redrawn in place
    (only on a TTY; a log file or CI gets the event lines alone)."""

    def __init__(self, stream: Any = None, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._status = ""

    def event(self, text: str) -> None:
        if self.quiet:
            return
        self._clear()
        print(text, file=self.stream, flush=True)
        self._draw()

    def status(self, text: str) -> None:
        self._status = text
        self._draw()

    def done(self) -> None:
        self._clear()
        self._status = ""

    def _clear(self) -> None:
        if self.tty and self._status and not self.quiet:
            print("\r\033[2K", end="", file=self.stream, flush=True)

    def _draw(self) -> None:
        if self.tty and self._status and not self.quiet:
            print(f"\r{self._status}", end="", file=self.stream, flush=True)


# --- the rig ----------------------------------------------------------------------------------


def prepare_venue(sc: LoadedScenario, out: Path) -> tuple[dict[str, Any], Venue]:
    """The venue data a run uses (see edge.hil.venue) and its validated form."""
    try:
        data = hil_venue.read_expanded(sc.venue_path)
        if sc.spec.scenario.isolate_ports:
            data = hil_venue.isolate(data)
        data = hil_venue.with_store(data, out / "telemetry.sqlite3")
        venue = parse_venue(data, sc.venue_path)
    except ConfigError as exc:
        raise SetupError([f"{exc.path}: {p}" for p in exc.problems]) from exc
    simulated = hil_venue.simulated_ids(data)
    problems = check_against_venue(sc.spec, {d.id: d for d in venue.devices}, simulated)
    if problems:
        raise SetupError([f"{sc.path}: {p}" for p in problems])
    return data, venue


def _die_with_parent() -> None:
    """In the simulators' child: SIGTERM when we die; its own process group, so a terminal's
    Ctrl-C reaches us alone and we stop it in order."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setpgrp()


@contextlib.asynccontextmanager
async def simulators(
    venue_json: Path, source: Path, processes: int, log_path: Path, timeout_s: float
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``python -m simulators`` as a child; yields it and its control URL once it is ready."""
    port = hil_venue.free_port()
    with log_path.open("ab") as logfile:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "simulators",
            str(venue_json),
            "--control-port",
            str(port),
            "--processes",
            str(processes),
            "--source",  # problems name the scenario's venue, not our JSON copy
            str(source),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=logfile,
            stderr=logfile,
            preexec_fn=_die_with_parent,
        )
    url = f"http://127.0.0.1:{port}/sim/v1"
    try:
        await _until_ready(proc, url, timeout_s, log_path)
        yield proc, url
    finally:
        await stop_child(proc)


async def _until_ready(
    proc: asyncio.subprocess.Process, url: str, timeout_s: float, log_path: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise SetupError(
                    [
                        f"the simulators exited with {proc.returncode} before they were ready:",
                        *_tail(log_path),
                    ]
                )
            with contextlib.suppress(httpx.HTTPError):
                res = await client.get(f"{url}/health")
                if res.status_code == 200 and res.json().get("ready"):
                    return
            await asyncio.sleep(0.1)
    raise SetupError([f"the simulators were not ready after {timeout_s:g} s:", *_tail(log_path)])


def _tail(path: Path, lines: int = 15) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return ["  " + line for line in text.splitlines()[-lines:]]


async def stop_child(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            log.warning("simulators (pid %d) did not stop; killing them", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def service(venue: Venue, timeout_s: float) -> AsyncIterator[tuple[Any, asyncio.Task[None]]]:
    """The real service in this process; yields it and its task once its API listens."""
    from edge.service import Service  # the service pulls in every driver: only when running

    svc = Service(venue, api_port=0)
    task = asyncio.create_task(svc.run(), name="hil-service")
    started = asyncio.create_task(svc.started.wait(), name="hil-service-started")
    try:
        await asyncio.wait([task, started], timeout=timeout_s, return_when="FIRST_COMPLETED")
        if task.done():
            exc = task.exception() if not task.cancelled() else None
            raise SetupError([f"the service stopped while starting: {exc!r}"])
        if not svc.started.is_set():
            raise SetupError([f"the service did not start within {timeout_s:g} s"])
        yield svc, task
    finally:
        started.cancel()
        svc.stop()
        done, _ = await asyncio.wait([task], timeout=15)
        if not done:
            log.warning("the service did not stop within 15 s; cancelling it")
            task.cancel()
        await asyncio.gather(task, started, return_exceptions=True)


# --- sampling ---------------------------------------------------------------------------------


class Sampler:
    """Samples every series on fixed deadlines and tells judges and waiting steps."""

    def __init__(
        self,
        result: RunResult,
        api: httpx.AsyncClient,
        sim: httpx.AsyncClient,
        t0: float,
        period: float,
    ) -> None:
        self.result = result
        self.api, self.sim = api, sim
        self.t0, self.period = t0, period
        self.latest: dict[Series, Any] = {}
        self.on_sample: list[Callable[[float], None]] = []
        kinds: dict[str, set[str]] = {"point": set(), "truth": set(), "health": set()}
        for kind, device, _ in result.series:
            kinds[kind].add(device)
        self._point_devices = sorted(kinds["point"])
        self._truth_devices = sorted(kinds["truth"])
        self._health = bool(kinds["health"])
        self.failures = 0
        self.last_error = ""

    async def read(self) -> dict[Series, Any]:
        """One sample of every series (None where a value is missing)."""
        jobs = [self._points(d) for d in self._point_devices]
        if self._truth_devices:
            jobs.append(self._truth())
        if self._health:
            jobs.append(self._health_states())
        parts = await asyncio.gather(*jobs, return_exceptions=True)
        found: dict[Series, Any] = {}
        for part in parts:
            if isinstance(part, BaseException):
                if not isinstance(part, httpx.HTTPError | ValueError | KeyError | TypeError):
                    raise part
                self.failures += 1
                self.last_error = f"{type(part).__name__}: {part}"
                continue
            found.update(part)
        return {s: found.get(s) for s in self.result.series}

    async def _points(self, device: str) -> dict[Series, Any]:
        res = await self.api.get(f"/api/v1/devices/{device}/points")
        res.raise_for_status()
        out: dict[Series, Any] = {}
        for p in res.json():
            # A stale or bad reading is no value: the service does not know it now.
            value = p["value"] if p.get("quality") == "good" else None
            out[("point", device, p["name"])] = value
            self.result.units.setdefault(("point", device, p["name"]), p.get("unit") or "")
        return out

    async def _truth(self) -> dict[Series, Any]:
        res = await self.sim.get("/truth", params={"ids": ",".join(self._truth_devices)})
        res.raise_for_status()
        devices = res.json()["devices"]
        out: dict[Series, Any] = {}
        for kind, device, name in self.result.series:
            if kind == "truth":
                out[(kind, device, name)] = truth_value(devices.get(device), name)
        return out

    async def _health_states(self) -> dict[Series, Any]:
        res = await self.api.get("/api/v1/health")
        res.raise_for_status()
        states = res.json()["devices"]
        return {("health", d, ""): states.get(d) for d in states}

    async def run(self, until: float) -> None:
        """Sample until ``until`` (seconds from t0), on deadlines k × period."""
        k = 0
        while True:
            due = self.t0 + k * self.period
            now = time.monotonic()
            if due > self.t0 + until:
                return
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > self.period:  # late by a whole tick: skip, don't bunch
                skipped = int((now - due) / self.period)
                self.result.sample_misses += skipped
                k += skipped
                continue
            sample = await self.read()
            t = time.monotonic() - self.t0
            self.record(t, sample)
            k += 1

    def record(self, t: float, sample: Mapping[Series, Any]) -> None:
        self.result.times.append(t)
        for s in self.result.series:
            self.result.values.setdefault(s, []).append(sample.get(s))
        self.latest = dict(sample)
        for judge in self.result.judges:
            judge.feed(t, sample.get(judge.expectation.source))
        for callback in self.on_sample:
            callback(t)


def truth_value(truth: Any, path: str) -> Any:
    """``path`` ('a.b.0') inside a device's truth object; None where it leads nowhere."""
    value = truth
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


# --- the run ----------------------------------------------------------------------------------


async def run_scenario(sc: LoadedScenario, out: Path, progress: Progress) -> RunResult:
    """Set up the rig, run the timeline, and return what happened (SetupError before start)."""
    spec = sc.spec
    data, venue = prepare_venue(sc, out)
    venue_json = out / "venue.json"
    venue_json.write_text(json.dumps(data, indent=1), encoding="utf-8")
    info = spec.scenario
    result = RunResult(sc.name, sc, spec.series(), {})
    result.judges = [Judge(e) for e in spec.expect]
    result.steps = [StepResult(i, s, s.at) for i, s in enumerate(spec.steps)]

    progress.event(f"{sc.name}: starting the simulators ({len(venue.devices)} device(s))")
    async with (
        simulators(
            venue_json,
            sc.venue_path,
            info.sim_processes,
            out / "simulators.log",
            info.ready_timeout_s,
        ) as (sim_proc, sim_url),
        service(venue, info.ready_timeout_s) as (svc, svc_task),
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{svc.bound_api_port}", timeout=HTTP_TIMEOUT_S
        ) as api,
        httpx.AsyncClient(base_url=sim_url, timeout=HTTP_TIMEOUT_S) as sim,
    ):
        progress.event(f"{sc.name}: service up, waiting for devices to come online")
        await _wait_online(api, sorted(spec.devices()), info.ready_timeout_s, progress)
        await _check_simulated(sc, sim)
        result.started_wall = time.time()
        t0 = time.monotonic()
        sampler = Sampler(result, api, sim, t0, 1.0 / info.sample_hz)
        first = await sampler.read()  # truth keys are checked before anything moves
        _check_truth_keys(sc, first)
        timeline = Timeline(result, api, sim, sampler, t0, progress)
        sampler.on_sample.append(timeline.show)
        watch = asyncio.create_task(_watch(sim_proc, svc_task, result, t0), name="hil-watch")
        # The runner is the operator: it holds the machinery's hold-to-run enable for the whole
        # run (docs/machinery.md), as the console's enable would be held during a show.
        enable = asyncio.create_task(hold_enable(api), name="hil-enable")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sampler.run(info.duration_s), name="hil-sampler")
                tg.create_task(timeline.run(info.duration_s), name="hil-timeline")
        finally:
            for task in (watch, enable):
                task.cancel()
            await asyncio.gather(watch, enable, return_exceptions=True)
        result.elapsed = time.monotonic() - t0
        for judge in result.judges:
            judge.finish(result.elapsed)
        if sampler.failures:
            progress.event(
                f"{sampler.failures} sample request(s) failed; last: {sampler.last_error}"
            )
    progress.done()
    return result


async def hold_enable(api: httpx.AsyncClient, holder: str = "hil runner") -> None:
    """Renew the hold-to-run enable every 0.1 s until cancelled (a node without machinery
    answers 404, which is fine)."""
    while True:
        # RuntimeError: the client was closed under us (the caller is shutting down)
        with contextlib.suppress(httpx.HTTPError, RuntimeError):
            await api.post("/api/v1/machinery/enable", json={"holder": holder})
        await asyncio.sleep(0.1)


async def _wait_online(
    api: httpx.AsyncClient, devices: list[str], timeout_s: float, progress: Progress
) -> None:
    """Every device the scenario uses online (DMX fixtures have no health: not waited for)."""
    listing = (await api.get("/api/v1/devices")).json()
    waited = [d["id"] for d in listing if d["id"] in devices and d["protocol"] != "dmx"]
    deadline = time.monotonic() + timeout_s
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            states = (await api.get("/api/v1/health")).json()["devices"]
        late = [d for d in waited if states.get(d) != "online"]
        if not late:
            return
        progress.status(f"waiting for {len(late)} device(s): {', '.join(late[:5])}")
        await asyncio.sleep(0.1)
    late = [f"{d} ({states.get(d, 'unknown')})" for d in waited if states.get(d) != "online"]
    raise SetupError([f"not online after {timeout_s:g} s: {', '.join(late)}"])


async def _check_simulated(sc: LoadedScenario, sim: httpx.AsyncClient) -> None:
    """Fault names against the simulators' catalogues: a typo fails before the run, not in it."""
    catalogue = {
        d["id"]: {f["name"] for f in d["faults"]} for d in (await sim.get("/devices")).json()
    }
    problems = []
    for i, step in enumerate(sc.spec.steps):
        target = step.inject or step.clear
        if target is None or target.fault is None:
            continue
        known = catalogue.get(target.device, set())
        if target.fault not in known:
            problems.append(
                f"{sc.path}: steps[{i}].{step.kind}.fault: {target.device} has no fault "
                f"'{target.fault}' (faults: {', '.join(sorted(known)) or 'none'})"
            )
    if problems:
        raise SetupError(problems)


def _check_truth_keys(sc: LoadedScenario, sample: Mapping[Series, Any]) -> None:
    missing = [s for s in sc.spec.series() if s[0] == "truth" and sample.get(s) is None]
    if missing:
        raise SetupError(
            [
                f"{sc.path}: truth {d}.{n}: the simulator reports no such value"
                for _, d, n in missing
            ]
        )


async def _watch(
    sim_proc: asyncio.subprocess.Process,
    svc_task: asyncio.Task[None],
    result: RunResult,
    t0: float,
) -> None:
    """Notice the rig or the service dying mid-run; the timeline goes on, to record it."""
    sim_wait = asyncio.ensure_future(sim_proc.wait())
    try:
        done, _ = await asyncio.wait([sim_wait, svc_task], return_when="FIRST_COMPLETED")
    finally:
        sim_wait.cancel()
    t = time.monotonic() - t0
    if svc_task in done:
        exc = svc_task.exception() if not svc_task.cancelled() else None
        result.errors.append(f"the service stopped at {t:.3f} s: {exc!r}")
    if sim_wait in done and not sim_wait.cancelled():
        result.rig_errors.append(f"the simulators exited with {sim_proc.returncode} at {t:.3f} s")


class Timeline:
    """Runs the steps in order, each at its time, and reports progress."""

    def __init__(
        self,
        result: RunResult,
        api: httpx.AsyncClient,
        sim: httpx.AsyncClient,
        sampler: Sampler,
        t0: float,
        progress: Progress,
    ) -> None:
        self.result, self.api, self.sim, self.sampler = result, api, sim, sampler
        self.t0, self.progress = t0, progress
        self.duration = result.scenario.spec.scenario.duration_s
        self._told: set[int] = set()

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self, duration: float) -> None:
        previous_end = 0.0
        for sr in self.result.steps:
            step = sr.step
            due = step.at if step.at is not None else previous_end + (step.delay_s or 0.0)
            due = max(due, previous_end)
            if due > duration:
                sr.skipped = True
                sr.detail = f"not reached: due at {due:.3f} s, after the end ({duration:g} s)"
                continue
            await asyncio.sleep(max(0.0, due - self.now()))
            sr.started = self.now()
            for judge in self.result.judges:
                if step.id is not None and judge.expectation.after == step.id:
                    judge.start(sr.started)
            try:
                sr.ok, sr.detail = await self._do(step, duration)
            except httpx.HTTPError as exc:
                sr.ok, sr.detail = False, f"{type(exc).__name__}: {exc}"
            sr.finished = previous_end = self.now()
            mark = "ok" if sr.ok else "FAILED"
            self.progress.event(f"[{sr.started:7.3f} s] {sr.title}: {mark} {sr.detail}".rstrip())
        # Hold until the end so the sampler records the whole duration.
        await asyncio.sleep(max(0.0, duration - self.now()))

    async def _do(self, step: Step, duration: float) -> tuple[bool, str]:
        if step.command is not None:
            c = step.command
            res = await self.api.post(f"/api/v1/devices/{c.device}/commands/{c.name}", json=c.args)
            ok = res.status_code == step.expect_status if step.expect_status else res.is_success
            return ok, f"→ {res.status_code} {_brief(res)}"
        if step.inject is not None:
            f = step.inject
            res = await self.sim.post(f"/devices/{f.device}/faults/{f.fault}", json=f.params)
            self._faults(f.device, res)
            return res.is_success, f"→ {res.status_code} {_brief(res)}"
        if step.clear is not None:
            c2 = step.clear
            path = f"/devices/{c2.device}/faults" + (f"/{c2.fault}" if c2.fault else "")
            res = await self.sim.delete(path)
            self._faults(c2.device, res)
            return res.is_success, f"→ {res.status_code} {_brief(res)}"
        if step.estop is not None:
            res = await self.sim.post("/estop", json={"open": step.estop == "open"})
            if res.is_success:
                t = self.now()
                for device in res.json().get("devices", []):
                    active = set(self._active(device))
                    if step.estop == "open":
                        active.add("estop")
                    else:
                        active.discard("estop")
                    self.result.faults.append(FaultEvent(t, device, sorted(active)))
            return res.is_success, f"→ {res.status_code}"
        assert step.wait is not None
        return await self._wait(step, duration)

    async def _wait(self, step: Step, duration: float) -> tuple[bool, str]:
        cond = step.wait
        assert cond is not None
        started = self.now()
        limit = min(cond.timeout_s, duration - started)
        met = asyncio.Event()

        def check(t: float) -> None:
            if holds(cond, self.sampler.latest.get(cond.source)):
                met.set()

        check(started)
        self.sampler.on_sample.append(check)
        try:
            await asyncio.wait_for(met.wait(), max(0.0, limit))
            return True, f"held at {self.now():.3f} s"
        except TimeoutError:
            last = self.sampler.latest.get(cond.source)
            return False, f"timed out after {limit:g} s; last value {_fmt(last)}"
        finally:
            self.sampler.on_sample.remove(check)

    def _active(self, device: str) -> list[str]:
        for event in reversed(self.result.faults):
            if event.device == device:
                return event.active
        return []

    def _faults(self, device: str, res: httpx.Response) -> None:
        if res.is_success:
            active = res.json().get("active", {})
            self.result.faults.append(FaultEvent(self.now(), device, sorted(active)))

    def show(self, t: float) -> None:
        """Status line, and a line for each verdict as it is given."""
        r = self.result
        for i, judge in enumerate(r.judges):
            if judge.verdict is not Verdict.PENDING and i not in self._told:
                self._told.add(i)
                mark = "passed" if judge.verdict is Verdict.PASSED else "FAILED"
                self.progress.event(
                    f"[{judge.decided_at or t:7.3f} s] expect {judge.expectation.title()}: {mark}"
                )
        done = sum(s.finished is not None or s.skipped for s in r.steps)
        passed = sum(j.verdict is Verdict.PASSED for j in r.judges)
        failed = sum(j.verdict is Verdict.FAILED for j in r.judges)
        self.progress.status(
            f"{r.name}  {t:6.1f}/{self.duration:g} s  steps {done}/{len(r.steps)}  "
            f"expect {passed} passed, {failed} failed, {len(r.judges) - passed - failed} pending"
        )


def _brief(res: httpx.Response) -> str:
    """A response body, short enough for a line of progress."""
    text = res.text.strip().replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."
