"""Run the simulated devices of a venue: in this process, or split over child processes.

In one process (``Simulation`` + ``serve``): the venue's ``[[devices]]`` with a ``simulate``
table become ``DeviceSpec``s; each spec's model names a family (``simulators.registry``),
imported only when used; every family is built once and given its devices; every problem is
collected and reported together (``SimulationProblems``), as ``flytower check`` does; then
every family's hosts are entered and the control endpoint (``simulators.control``) serves them.

Over N processes (``serve_processes``): the devices are split into N parts by ``partition``
without separating what shares a socket or a clock (all units behind one Modbus host:port or
serial line, all devices of one MQTT node, every receiver of one DMX destination port, the
room). The parent writes the venue as JSON and starts ``python -m simulators VENUE.json
--part i/N`` for each part; each child computes the same deterministic partition and serves
its part. Children talk to the parent over their stdin/stdout pipe (``simulators.control``):
the first line is their ready report (or their problems), then they answer control requests.
The parent serves the one HTTP endpoint and forwards. Children die with the parent
(PR_SET_PDEATHSIG, and end-of-file on their stdin) and sit in their own process group, so a
terminal's Ctrl-C reaches only the parent, which stops them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from simulators import registry
from simulators.control import ChildLink, FanOutControl, LocalControl, answer, bind, serve_http
from simulators.core import DeviceSpec, Family, SimulatedDevice, SimulationError

log = logging.getLogger("simulators")

DEFAULT_CONTROL_PORT = 18890
CONTROL_HOST = "127.0.0.1"
DMX_PORTS = {"artnet": 6454, "sacn": 5568}
CHILD_READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
PIPE_LIMIT = 1 << 26  # one truth reply of a large venue is one line


class SimulationProblems(SimulationError):
    """Every problem found in a venue's simulated devices, one per line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# --- specs and partitions ---------------------------------------------------------------------


def device_specs(venue: Mapping[str, Any], source: str) -> tuple[list[DeviceSpec], list[str]]:
    """The simulated devices of an expanded venue, and the problems of malformed entries."""
    specs: list[DeviceSpec] = []
    problems: list[str] = []
    devices = venue.get("devices", [])
    if not isinstance(devices, list):
        return [], [f"{source}: devices: expected an array of tables"]
    seen: set[str] = set()
    for i, dev in enumerate(devices):
        if not isinstance(dev, dict) or dev.get("simulate") is None:
            continue
        dev_id, sim, transport = dev.get("id"), dev["simulate"], dev.get("transport", {})
        where = f"{source}: devices[{i}] ({dev_id}).simulate"
        if not isinstance(dev_id, str) or not dev_id:
            problems.append(f"{where}: the device needs an id")
        elif dev_id in seen:
            problems.append(f"{where}: device id {dev_id!r} is used twice")
        elif not isinstance(sim, dict) or not isinstance(sim.get("model"), str):
            problems.append(f"{where}: expected a table with a model name")
        elif not isinstance(transport, dict):
            problems.append(f"{where}: the device's transport must be a table")
        else:
            poll_hz = dev.get("poll_hz", 10.0)
            if isinstance(poll_hz, bool) or not isinstance(poll_hz, int | float) or poll_hz <= 0:
                problems.append(f"{where}: poll_hz must be a positive number")
                continue
            seen.add(dev_id)
            specs.append(
                DeviceSpec(
                    dev_id, str(dev.get("profile", "")), transport, sim, where, float(poll_hz)
                )
            )
    return specs, problems


def group_key(spec: DeviceSpec, venue: Mapping[str, Any]) -> str:
    """What ``spec`` shares a socket or a clock with: devices with one key stay together."""
    tr = spec.transport
    kind = tr.get("kind")
    if kind == "modbus-tcp":
        return f"modbus-tcp:{tr.get('host', '127.0.0.1')}:{tr.get('port', 502)}"
    if kind == "modbus-rtu":
        return f"modbus-rtu:{tr.get('port')}"
    if kind == "mqtt":
        node = tr.get("node")
        return f"mqtt-node:{node}" if node is not None else f"mqtt-base:{tr.get('base')}"
    if kind == "dmx":
        # Receivers bind the destination port of the output carrying their universe; two
        # processes cannot both receive unicast on one port, so a port is one group.
        outputs = venue.get("dmx", {}).get("outputs", [])
        for out in outputs if isinstance(outputs, list) else []:
            if isinstance(out, dict) and tr.get("universe") in out.get("universes", []):
                return f"dmx:{out.get('udp_port') or DMX_PORTS.get(out.get('protocol', ''), 0)}"
        return f"dmx:universe:{tr.get('universe')}"
    if kind == "osc":
        return f"osc:{tr.get('host')}:{tr.get('port')}"
    if kind == "audio":
        return "audio"  # the room: one JACK client, one acoustic space
    return f"device:{spec.id}"


Weigh = Callable[[DeviceSpec], float]


def group_weights(
    specs: Sequence[DeviceSpec], venue: Mapping[str, Any], weigh: Weigh = registry.device_weight
) -> dict[str, tuple[float, list[int]]]:
    """Each group's key -> (its load, the indices of its specs in ``specs``)."""
    members: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        members.setdefault(group_key(spec, venue), []).append(i)
    return {
        key: (
            sum(weigh(specs[i]) for i in idx) + registry.group_overhead([specs[i] for i in idx]),
            idx,
        )
        for key, idx in members.items()
    }


def partition(
    specs: Sequence[DeviceSpec],
    parts: int,
    venue: Mapping[str, Any],
    weigh: Weigh = registry.device_weight,
) -> list[list[DeviceSpec]]:
    """Split ``specs`` into at most ``parts`` parts of similar load, keeping groups whole.

    A group's load is the sum of its devices' weights (``registry.device_weight``: the fraction
    of a core each is expected to take, from its rates) plus what the group itself costs (a DMX
    universe's frames). Largest group first, each into the part with the least load so far,
    ties to the lowest part (the LPT rule: never worse than 4/3 of the best split).
    Deterministic; venue order is kept inside a part. There are never more parts than groups,
    and no part is empty.
    """
    groups = group_weights(specs, venue, weigh)
    n = max(1, min(parts, len(groups)))
    bins: list[list[int]] = [[] for _ in range(n)]
    loads = [0.0] * n
    for key in sorted(groups, key=lambda k: (-groups[k][0], -len(groups[k][1]), k)):
        lightest = min(range(n), key=lambda b: (loads[b], len(bins[b]), b))
        bins[lightest].extend(groups[key][1])
        loads[lightest] += groups[key][0]
    return [[specs[i] for i in sorted(b)] for b in bins if b]


def load_of(part: Sequence[DeviceSpec], venue: Mapping[str, Any], weigh: Weigh) -> float:
    """The estimated load of one part (fraction of a core)."""
    return sum(w for w, _ in group_weights(part, venue, weigh).values())


def processes_of(venue: Mapping[str, Any], override: int | None) -> int:
    """``--processes`` if given, else the venue's ``[simulation] processes``, else 1."""
    if override is not None:
        return override
    sim = venue.get("simulation", {})
    n = sim.get("processes") if isinstance(sim, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1


# --- one process ------------------------------------------------------------------------------


class Simulation:
    """The families of this process and their devices, built from specs; entered to serve."""

    def __init__(self, venue: Mapping[str, Any], specs: Sequence[DeviceSpec]) -> None:
        self.families: dict[str, Family] = {}
        self.devices: dict[str, SimulatedDevice] = {}
        self.family_of: dict[str, str] = {}
        problems: list[str] = []
        broken: dict[str, str] = {}  # family name -> why it cannot be built
        for spec in specs:
            try:
                name = registry.family_of(spec.model)
            except SimulationError as exc:
                problems.append(f"{spec.where}.model: {exc}")
                continue
            if name in broken:
                problems.append(f"{spec.where}: {broken[name]}")
                continue
            try:
                family = self.families[name] if name in self.families else self._build(name, venue)
                device = family.add(spec)
            except _BuildError as exc:
                broken[name] = str(exc)
                problems.append(f"{spec.where}: {exc}")
                continue
            except (SimulationError, KeyError, TypeError, ValueError) as exc:
                # Families raise SimulationError; the others are a malformed table they met.
                text = str(exc) if isinstance(exc, SimulationError) else repr(exc)
                problems.append(text if text.startswith(spec.where) else f"{spec.where}: {text}")
                continue
            self.devices[spec.id] = device
            self.family_of[spec.id] = name
        if problems:
            raise SimulationProblems(problems)
        self.control = LocalControl(self.devices, self.family_of, self.families)

    def _build(self, name: str, venue: Mapping[str, Any]) -> Family:
        try:
            family = registry.load_family(name)(venue)
        except SimulationError as exc:
            raise _BuildError(str(exc)) from exc
        self.families[name] = family
        return family

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Simulation]:
        """Every family's hosts entered (sockets open, clocks ticking), left in reverse order."""
        async with contextlib.AsyncExitStack() as stack:
            for family in self.families.values():
                for host in family.hosts():
                    await stack.enter_async_context(host)
            yield self


class _BuildError(SimulationError):
    """A family could not be imported or constructed: every device of it fails the same way."""


def control_port(venue: Mapping[str, Any], override: int | None) -> int:
    if override is not None:
        return override
    sim = venue.get("simulation", {})
    port = sim.get("control_port") if isinstance(sim, dict) else None
    return port if isinstance(port, int) and not isinstance(port, bool) else DEFAULT_CONTROL_PORT


def build(venue: Mapping[str, Any], source: str) -> Simulation:
    """Every simulated device of ``venue`` in this process; SimulationProblems lists all."""
    specs, problems = device_specs(venue, source)
    try:
        sim = Simulation(venue, specs)
    except SimulationProblems as exc:
        problems += exc.problems
    if problems:
        raise SimulationProblems(problems)
    return sim


async def serve(
    venue: Mapping[str, Any],
    source: str,
    *,
    port: int | None = None,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Serve every simulated device of ``venue`` and the control endpoint until cancelled.

    ``port`` None: the venue's ``[simulation] control_port`` or 18890; 0: any free port.
    ``ready`` is called with the endpoint's port once everything serves.
    """
    t0 = time.monotonic()
    # The endpoint's port first: a taken port fails before a long build, not after it.
    sock = bind(CONTROL_HOST, control_port(venue, port))
    try:
        sim = build(venue, source)
    except BaseException:
        sock.close()
        raise
    bound = int(sock.getsockname()[1])
    async with sim.running(), serve_http(sim.control, sock):
        _log_ready(len(sim.devices), 1, bound, time.monotonic() - t0)
        if ready is not None:
            ready(bound)
        await asyncio.Event().wait()


def _log_ready(devices: int, processes: int, port: int, startup_s: float) -> None:
    log.info(
        "simulators ready: %d device(s) in %d process(es), control http://%s:%d/sim/v1 "
        "(started in %.1f s)",
        devices,
        processes,
        CONTROL_HOST,
        port,
        startup_s,
    )


# --- a child process --------------------------------------------------------------------------


async def serve_part(
    venue: Mapping[str, Any],
    source: str,
    part: int,
    parts: int,
    assignment: Sequence[Sequence[str]] | None = None,
) -> int:
    """Child: serve part ``part`` of ``parts`` (0-based) and answer the parent on stdin/stdout.

    ``assignment`` is the parent's partition (device ids per part); without it the child
    partitions the venue itself. The pipe to the parent is moved off fd 1 first, so a stray
    print in a family lands on stderr instead of corrupting the protocol. Returns the exit
    status.
    """
    rpc_fd = os.dup(1)
    os.dup2(2, 1)
    loop = asyncio.get_running_loop()
    out_transport, out_protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(rpc_fd, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(out_transport, out_protocol, None, loop)
    reader = asyncio.StreamReader(limit=PIPE_LIMIT)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )

    async def report(message: Mapping[str, Any]) -> None:
        writer.write(json.dumps(message).encode() + b"\n")
        await writer.drain()

    try:
        specs, problems = device_specs(venue, source)
        if assignment is None:
            mine = partition(specs, parts, venue)
        else:
            by_id = {s.id: s for s in specs}
            mine = [[by_id[i] for i in ids if i in by_id] for ids in assignment]
        if part >= len(mine):
            problems.append(f"{source}: part {part + 1}/{parts} does not exist")
            raise SimulationProblems(problems)
        if problems:
            raise SimulationProblems(problems)
        sim = Simulation(venue, mine[part])
    except SimulationProblems as exc:
        await report({"problems": exc.problems})
        writer.close()
        return 1
    async with sim.running():
        await report({"ready": {"pid": os.getpid(), "devices": sorted(sim.devices)}})
        while line := await reader.readline():  # end of file: the parent is gone or done
            writer.write(await answer(sim.control, line))
            await writer.drain()
    writer.close()
    return 0


# --- the parent of several --------------------------------------------------------------------


def die_with_parent() -> None:
    """In a child: ask Linux to SIGTERM us when the parent dies, and leave its process group
    (a terminal's Ctrl-C reaches the parent only, which stops us in order)."""
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setpgrp()


async def serve_processes(
    venue: Mapping[str, Any],
    source: str,
    processes: int,
    *,
    port: int | None = None,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Serve ``venue`` from up to ``processes`` children and the control endpoint here."""
    t0 = time.monotonic()
    specs, problems = device_specs(venue, source)
    if problems:
        raise SimulationProblems(problems)
    chosen = partition(specs, processes, venue)
    parts = len(chosen)
    for i, part in enumerate(chosen):
        log.info(
            "part %d/%d: %d device(s), estimated load %.0f %% of a core",
            i + 1,
            parts,
            len(part),
            100 * load_of(part, venue, registry.device_weight),
        )
    sock = bind(CONTROL_HOST, control_port(venue, port))
    bound = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory(prefix="flytower-sim-") as folder:
        path = Path(folder) / "venue.json"
        path.write_text(json.dumps(venue), encoding="utf-8")
        # The children serve what the parent chose: one partition, computed once.
        assignment = Path(folder) / "parts.json"
        assignment.write_text(json.dumps([[s.id for s in p] for p in chosen]), encoding="utf-8")
        procs: list[asyncio.subprocess.Process] = []
        try:
            for i in range(parts):
                procs.append(await _spawn(path, source, i, parts, assignment))
            links = await _handshake(procs)
            control = FanOutControl(links)
            async with serve_http(control, sock):
                _log_ready(len(specs), parts, bound, time.monotonic() - t0)
                if ready is not None:
                    ready(bound)
                died = await _first_exit(procs)
                raise SimulationError(
                    f"simulator process {died.pid} exited with {died.returncode}; stopping"
                )
        finally:
            sock.close()
            await _stop_children(procs)


async def _spawn(
    path: Path, source: str, part: int, parts: int, assignment: Path
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators",
        str(path),
        "--part",
        f"{part + 1}/{parts}",
        "--parts-file",
        str(assignment),
        "--source",
        source,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent,
        limit=PIPE_LIMIT,
    )


async def _handshake(procs: Sequence[asyncio.subprocess.Process]) -> list[ChildLink]:
    """Every child's first line: its devices, or its problems (all of them, from every child)."""

    async def first_line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            return {"problems": [f"simulator process {proc.pid} exited before it was ready"]}
        message: dict[str, Any] = json.loads(line)
        return message

    try:
        messages = await asyncio.wait_for(
            asyncio.gather(*(first_line(p) for p in procs)), CHILD_READY_TIMEOUT_S
        )
    except TimeoutError:
        raise SimulationError(
            f"simulator processes not ready after {CHILD_READY_TIMEOUT_S:.0f} s"
        ) from None
    problems = [p for m in messages for p in m.get("problems", [])]
    if problems:
        raise SimulationProblems(problems)
    links = []
    for proc, message in zip(procs, messages, strict=True):
        assert proc.stdin is not None
        assert proc.stdout is not None
        link = ChildLink(proc.pid, proc.stdout, proc.stdin)
        link.device_ids = frozenset(message["ready"]["devices"])
        links.append(link)
    return links


async def _first_exit(
    procs: Sequence[asyncio.subprocess.Process],
) -> asyncio.subprocess.Process:
    waits = {asyncio.ensure_future(p.wait()): p for p in procs}
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        return waits[next(iter(done))]
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def _stop_children(procs: Sequence[asyncio.subprocess.Process]) -> None:
    """Close every child's pipe and SIGTERM it; SIGKILL what outlives the grace period."""
    for proc in procs:
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    waits = [asyncio.ensure_future(p.wait()) for p in procs]
    if not waits:
        return
    await asyncio.wait(waits, timeout=STOP_GRACE_S)
    for proc in procs:
        if proc.returncode is None:
            log.warning("simulator process %d did not stop; killing it", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    await asyncio.gather(*waits, return_exceptions=True)


# --- entry points -----------------------------------------------------------------------------


def run(main: Callable[[], Awaitable[Any]]) -> int:
    """Run ``main`` until it ends or SIGINT/SIGTERM cancels it; report problems, no tracebacks.

    Returns 0 after a signal, 1 after a simulation problem or an OS error (a taken port).
    """

    async def runner() -> int:
        task = asyncio.ensure_future(main())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            result = await task
        except asyncio.CancelledError:
            return 0
        return int(result) if isinstance(result, int) else 0

    try:
        return asyncio.run(runner())
    except SimulationProblems as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
    except (SimulationError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    return 1


def run_venue(
    venue: Mapping[str, Any], source: str, processes: int | None = None, port: int | None = None
) -> int:
    """``flytower simulate``: serve ``venue`` in this process or over ``processes`` children.

    ``processes`` None: the venue's ``[simulation] processes`` (default 1)."""
    processes = processes_of(venue, processes)
    if processes <= 1:
        return run(lambda: serve(venue, source, port=port))
    return run(lambda: serve_processes(venue, source, processes, port=port))
