"""The scenario file of a hardware-in-loop run: what to start, do, record and expect.

A scenario is TOML, validated here with pydantic in strict mode (a number written as a string,
an unknown key, NaN or infinity are errors) and reported as ``file: key.path: what`` lines,
every problem at once, as ``edge.config`` reports a venue::

    [scenario]
    venue = "venue-machinery.toml"   # relative to this file
    duration_s = 6

    [record]
    points = { hoist-1 = ["position", "velocity"] }
    truth = { hoist-1 = ["position_mm"] }

    [[steps]]
    at = 0.5
    id = "move"
    command = { device = "hoist-1", name = "move_to", args = { position = 4000 } }

    [[expect]]
    name = "hoist-1 arrives"
    device = "hoist-1"
    point = "position"
    op = "between"
    value = [3999, 4001]
    after = "move"
    within_s = 5

A step does exactly one thing, named by its key (``command``, ``inject``, ``clear``, ``estop``,
``wait``), so a new kind (``cue = { go = 5 }`` once the cue engine exists) is one more optional
key and one more branch in the runner, and old files stay valid.

What cannot be checked from the file alone (do the devices, points and commands exist in the
venue) is checked by ``check_against_venue`` once the venue is loaded; fault names and truth
keys are checked against the running simulators before the timeline starts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drivers.model import ConfigError, DeviceId, Identifier, format_validation_error, read_toml

MAX_FILE_BYTES = 1 << 20  # a scenario is a page of text; anything larger is a mistake
HEALTH_STATES = ("unknown", "online", "degraded", "offline")
STEP_KINDS = ("command", "inject", "clear", "estop", "wait")

Op = Literal["==", "!=", "<", "<=", ">", ">=", "between"]
Seconds = Annotated[float, Field(ge=0, le=86_400)]
TruthPath = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$", max_length=200)]
FaultName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
StepId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _non_finite(value: Any, where: str = "") -> Iterator[str]:
    """Where in a JSON-like value a NaN or an infinity hides (TOML can spell both)."""
    if isinstance(value, float) and not math.isfinite(value):
        yield where or "value"
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _non_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{where}[{i}]")


def _finite_json(value: dict[str, Any], what: str) -> dict[str, Any]:
    bad = list(_non_finite(value))
    if bad:
        raise ValueError(f"{what}: {', '.join(bad)} is not a finite number (JSON has no NaN)")
    return value


class Condition(_Strict):
    """``device``'s point, simulator truth or health compared with ``value``.

    Exactly one source: ``point`` (the service's live value, through its REST API), ``truth``
    (the simulator's ground truth; a dotted path into the device's truth object) or
    ``health = true`` (the service's health state of the device: unknown, online, degraded,
    offline). ``tol`` widens ``==`` and ``!=`` for numbers.
    """

    device: DeviceId
    point: Identifier | None = None
    truth: TruthPath | None = None
    health: bool = False
    op: Op
    value: Any  # checked below: one message instead of one per member of a union
    tol: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        sources = [s for s in ("point", "truth") if getattr(self, s) is not None]
        if self.health:
            sources.append("health")
        if len(sources) != 1:
            raise ValueError(
                "name exactly one of point, truth or health = true "
                f"(got {', '.join(sources) or 'none'})"
            )
        value = self.value
        if not isinstance(value, bool | int | float | str | list):
            raise ValueError("value: expected a number, true/false, a string or [low, high]")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("value: not a finite number")
        if self.op == "between":
            if not isinstance(value, list) or len(value) != 2 or not all(map(_is_number, value)):
                raise ValueError("value: 'between' needs [low, high], two numbers")
            low, high = value
            if not all(math.isfinite(v) for v in value) or low > high:
                raise ValueError(f"value: [low, high] needs finite low <= high, not {value}")
        elif isinstance(value, list):
            raise ValueError(f"value: a list is only for 'between', not '{self.op}'")
        elif self.op in ("<", "<=", ">", ">=") and not _is_number(value):
            raise ValueError(f"value: '{self.op}' compares numbers, not {value!r}")
        if self.health:
            if self.op not in ("==", "!="):
                raise ValueError(f"op: health is compared with == or !=, not '{self.op}'")
            if value not in HEALTH_STATES:
                raise ValueError(f"value: a health state is one of {', '.join(HEALTH_STATES)}")
        if self.tol and not (self.op in ("==", "!=") and _is_number(value)):
            raise ValueError("tol: only for == and != on numbers")
        return self

    @property
    def source(self) -> tuple[str, str, str]:
        """The sampled series this condition reads: (kind, device, name)."""
        if self.point is not None:
            return ("point", self.device, self.point)
        if self.truth is not None:
            return ("truth", self.device, self.truth)
        return ("health", self.device, "")

    def describe(self) -> str:
        kind, device, name = self.source
        what = f"{kind} {device}" + (f".{name}" if name else "")
        if self.op == "between":
            assert isinstance(self.value, list)
            return f"{what} between {_fmt(self.value[0])} and {_fmt(self.value[1])}"
        tol = f" ±{_fmt(self.tol)}" if self.tol else ""
        return f"{what} {self.op} {_fmt(self.value)}{tol}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class Command(_Strict):
    """A device command through the service: ``POST /api/v1/devices/{device}/commands/{name}``."""

    device: DeviceId
    name: Identifier
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _finite(self) -> Self:
        _finite_json(self.args, "args")
        return self


class Inject(_Strict):
    """A fault injected on the simulators' control endpoint (parameters are the fault's)."""

    device: DeviceId
    fault: FaultName
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _finite(self) -> Self:
        _finite_json(self.params, "params")
        return self


class Clear(_Strict):
    """End one injected fault, or every fault of the device when ``fault`` is left out."""

    device: DeviceId
    fault: FaultName | None = None


class Wait(Condition):
    """Hold the timeline until the condition holds; the step fails after ``timeout_s``."""

    timeout_s: float = Field(gt=0, le=3600)


class Step(_Strict):
    """One thing the timeline does, at ``at`` seconds from the start, or ``delay_s`` after the
    previous step finished, or (neither) as soon as the previous step finished."""

    id: StepId | None = None
    at: Seconds | None = None
    delay_s: Seconds | None = None
    command: Command | None = None
    inject: Inject | None = None
    clear: Clear | None = None
    estop: Literal["open", "close"] | None = None
    wait: Wait | None = None
    # A command step passes on any 2xx; a test of a refusal names the status it expects.
    expect_status: int | None = Field(default=None, ge=100, le=599)

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        kinds = [k for k in STEP_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"a step does exactly one of {', '.join(STEP_KINDS)} "
                f"(got {', '.join(kinds) or 'none'})"
            )
        if self.at is not None and self.delay_s is not None:
            raise ValueError("give 'at' (from the start) or 'delay_s' (after the previous step)")
        if self.expect_status is not None and self.command is None:
            raise ValueError("expect_status is for command steps")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in STEP_KINDS if getattr(self, k) is not None)

    @property
    def device(self) -> str | None:
        target = getattr(self, self.kind)
        return getattr(target, "device", None)

    def describe(self) -> str:
        if self.command is not None:
            c = self.command
            args = ", ".join(f"{k}={_fmt(v)}" for k, v in c.args.items())
            return f"command {c.device}.{c.name}({args})"
        if self.inject is not None:
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in self.inject.params.items())
            return f"inject {self.inject.fault}({params}) on {self.inject.device}"
        if self.clear is not None:
            return f"clear {self.clear.fault or 'every fault'} on {self.clear.device}"
        if self.estop is not None:
            return f"e-stop chain {self.estop}"
        assert self.wait is not None
        return f"wait until {self.wait.describe()} (at most {_fmt(self.wait.timeout_s)} s)"


class Expectation(Condition):
    """A condition expected at a time, or within a time.

    The anchor is the moment step ``after`` started, else ``at`` seconds, else the start.
    Without ``within_s`` the condition must hold at the first sample at or after the anchor;
    with it, at some sample up to ``within_s`` after the anchor. ``for_s`` asks it to keep
    holding that long from there (``at = 0, for_s = 10``: never false in the first 10 s).
    """

    name: str = Field(default="", max_length=200)
    after: StepId | None = None
    at: Seconds | None = None
    within_s: float | None = Field(default=None, gt=0, le=86_400)
    for_s: Seconds = 0.0

    @model_validator(mode="after")
    def _anchor(self) -> Self:
        if self.after is not None and self.at is not None:
            raise ValueError("give 'after' (a step id) or 'at' (seconds), not both")
        return self

    def title(self) -> str:
        return self.name or self.describe()

    def describe_timing(self) -> str:
        anchor = f"after step '{self.after}'" if self.after else f"at {_fmt(self.at or 0.0)} s"
        within = f"within {_fmt(self.within_s)} s {anchor}" if self.within_s else anchor
        held = f", holding for {_fmt(self.for_s)} s" if self.for_s else ""
        return within + held


class Record(_Strict):
    """What to sample and plot besides what the expectations read (which is always sampled)."""

    points: dict[DeviceId, list[Identifier]] = Field(default_factory=dict)
    truth: dict[DeviceId, list[TruthPath]] = Field(default_factory=dict)
    health: list[DeviceId] = Field(default_factory=list)


class ScenarioInfo(_Strict):
    name: str = Field(default="", pattern=r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})?$")
    description: str = Field(default="", max_length=4000)
    venue: str = Field(min_length=1, max_length=1000)
    duration_s: float = Field(gt=0, le=86_400)
    sample_hz: float = Field(default=10.0, gt=0, le=50)
    ready_timeout_s: float = Field(default=30.0, gt=0, le=600)
    # Move every port of the venue to a free one, so a run sits beside `flytower run` or
    # another run (CI) on one machine; the telemetry store always goes into the output folder.
    isolate_ports: bool = True
    sim_processes: int = Field(default=1, ge=1, le=64)


class Scenario(_Strict):
    version: Literal[1] = 1
    scenario: ScenarioInfo
    record: Record = Field(default_factory=Record)
    steps: list[Step] = Field(default_factory=list)
    expect: list[Expectation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _timeline(self) -> Self:
        problems: list[str] = []
        duration = self.scenario.duration_s
        ids: dict[str, int] = {}
        last_at = 0.0
        for i, step in enumerate(self.steps):
            if step.id is not None:
                if step.id in ids:
                    problems.append(f"steps[{i}].id: '{step.id}' is also steps[{ids[step.id]}]")
                ids.setdefault(step.id, i)
            if step.at is not None:
                if step.at > duration:
                    problems.append(f"steps[{i}].at: {step.at} s is after the end ({duration} s)")
                if step.at < last_at:
                    problems.append(
                        f"steps[{i}].at: {step.at} s is before an earlier step's {last_at} s "
                        "(steps run in file order)"
                    )
                last_at = max(last_at, step.at)
        for i, exp in enumerate(self.expect):
            if exp.after is not None and exp.after not in ids:
                known = ", ".join(sorted(ids)) or "none has an id"
                problems.append(f"expect[{i}].after: no step '{exp.after}' (steps: {known})")
            if exp.at is not None and exp.at > duration:
                problems.append(f"expect[{i}].at: {exp.at} s is after the end ({duration} s)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def devices(self) -> set[str]:
        """Every device the scenario reads or acts on."""
        used = set(self.record.points) | set(self.record.truth) | set(self.record.health)
        used |= {d for s in self.steps if (d := s.device) is not None}
        used |= {e.device for e in self.expect}
        return used

    def series(self) -> list[tuple[str, str, str]]:
        """Every sampled series, (kind, device, name), in a stable order: recorded first."""
        out: list[tuple[str, str, str]] = []
        for dev, names in self.record.points.items():
            out += [("point", dev, n) for n in names]
        for dev, names in self.record.truth.items():
            out += [("truth", dev, n) for n in names]
        out += [("health", dev, "") for dev in self.record.health]
        out += [e.source for e in self.expect]
        out += [s.wait.source for s in self.steps if s.wait is not None]
        return list(dict.fromkeys(out))


class LoadedScenario:
    """A validated scenario with its file, its name and its venue's path."""

    def __init__(self, path: Path, spec: Scenario) -> None:
        self.path = path
        self.spec = spec
        self.name = spec.scenario.name or _safe_name(path.stem)
        venue = Path(spec.scenario.venue)
        self.venue_path = venue if venue.is_absolute() else path.parent / venue


def _safe_name(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "scenario"
    return name[:64]


def parse_scenario(data: Any, path: Path) -> LoadedScenario:
    """Validate parsed scenario data; ConfigError lists every problem as 'key.path: what'."""
    try:
        spec = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, _split(format_validation_error(exc))) from exc
    return LoadedScenario(path, spec)


def _split(lines: list[str]) -> list[str]:
    """The timeline check reports several problems in one error: one line each, keyed."""
    out = []
    for line in lines:
        key, _, message = line.partition(": ")
        if key == "(top level)" and "; " in message:
            out += message.split("; ")
        else:
            out.append(line)
    return out


def load_scenario(path: Path | str) -> LoadedScenario:
    """Read and validate a scenario file; ConfigError says what is wrong and where."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror or exc}"]) from exc
    if size > MAX_FILE_BYTES:
        raise ConfigError(path, [f"{size} bytes: a scenario is at most {MAX_FILE_BYTES} bytes"])
    return parse_scenario(read_toml(path), path)


def check_against_venue(
    spec: Scenario, devices: Mapping[str, Any], simulated: set[str]
) -> list[str]:
    """Problems of ``spec`` against a loaded venue: unknown devices, points, commands, and
    truth or faults asked of a device no simulator plays. ``devices`` maps id -> Device."""
    problems: list[str] = []

    def device(where: str, dev_id: str, needs_simulator: bool = False) -> Any:
        if dev_id not in devices:
            known = ", ".join(sorted(devices)) or "none"
            problems.append(f"{where}: no device '{dev_id}' in the venue (devices: {known})")
            return None
        if needs_simulator and dev_id not in simulated:
            problems.append(f"{where}: device '{dev_id}' is not simulated (no simulate table)")
        return devices[dev_id]

    def point(where: str, dev_id: str, name: str) -> None:
        dev = device(where, dev_id)
        if dev is not None and name not in dev.profile.points:
            known = ", ".join(sorted(dev.profile.points))
            problems.append(f"{where}: {dev_id} ({dev.profile.id}) has no point '{name}' ({known})")

    def condition(where: str, cond: Condition) -> None:
        if cond.point is not None:
            point(f"{where}.point", cond.device, cond.point)
        else:
            device(f"{where}.device", cond.device, needs_simulator=cond.truth is not None)

    for dev_id, names in spec.record.points.items():
        for name in names:
            point(f"record.points.{dev_id}", dev_id, name)
    for dev_id in spec.record.truth:
        device(f"record.truth.{dev_id}", dev_id, needs_simulator=True)
    for dev_id in spec.record.health:
        device("record.health", dev_id)
    for i, step in enumerate(spec.steps):
        where = f"steps[{i}]"
        if step.command is not None:
            dev = device(f"{where}.command.device", step.command.device)
            if dev is not None and step.command.name not in dev.profile.commands:
                known = ", ".join(sorted(dev.profile.commands)) or "none"
                problems.append(
                    f"{where}.command.name: {step.command.device} ({dev.profile.id}) has no "
                    f"command '{step.command.name}' (commands: {known})"
                )
        elif step.inject is not None:
            device(f"{where}.inject.device", step.inject.device, needs_simulator=True)
        elif step.clear is not None:
            device(f"{where}.clear.device", step.clear.device, needs_simulator=True)
        elif step.wait is not None:
            condition(f"{where}.wait", step.wait)
    for i, exp in enumerate(spec.expect):
        condition(f"expect[{i}]", exp)
    return problems
