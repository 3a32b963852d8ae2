"""The machinery family: venue specs -> drives, their Modbus hosts, one physics clock, faults.

``MachineryFamily.add`` validates a ``[[devices]]`` entry (transport, unit, the ``simulate``
parameters of its model) and builds a ``MachineDevice``: a ``Drive`` with its type, plus the
communication faults its server consults. Units are grouped by what they share: a TCP
host:port (a gateway, or one port per drive) or a serial line (``simulate.serial_port``, the
simulator's end of the RS-485 stand-in; every unit on it must agree on the line settings).

``hosts()`` gives the Modbus servers and the clock: one task for the whole family that steps
every drive at 100 Hz on a monotonic deadline (overruns are skipped and counted, not bunched;
after a stall the physics catches up in steps of at most 50 ms, so a loaded host does not slow
the machines down).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import fields
from typing import Any

from pymodbus.constants import ExcCodes

from simulators.core import (
    DeviceSpec,
    FaultError,
    FaultInfo,
    SimulatedDevice,
    SimulationError,
    check_params,
)
from simulators.machinery.drive import AxisParams, Drive, param_kinds
from simulators.machinery.models import TYPES, AxisType
from simulators.machinery.server import Comms, ModbusHost, Unit

TICK_S = 0.01
MAX_STEP_S = 0.05  # after a stall the physics catches up in steps of at most this
MAX_CATCH_UP_S = 1.0  # and catches up at most this much; a longer stall is time lost (counted)
LINE_KEYS = ("baudrate", "parity", "stopbits", "bytesize")
LINE_DEFAULTS: dict[str, Any] = {"baudrate": 19200, "parity": "E", "stopbits": 1, "bytesize": 8}


# What one device costs this family, measured with ``python -m simulators.machinery.measure``
# (pymodbus masters in another process, a busy 2-core VM, old code and new alternated in the
# same minutes, 2026-12): CPU per Modbus request served, and per axis and physics cycle.
#
#   mix                                          before          after (this code)
#   --mix cycle, 16 axes moving, 800 FC 23/s     303-327 us/req  221-240 us/req (-27 %)
#     (the benchmark's load on one of its four simulator processes; process 27-30 % -> 20-22 %)
#   --mix poll, 64 axes, 2 000 req/s (FC 03/06)  161-231 us/req  122-163 us/req (-25 %)
#   physics, a running hoist, per axis-cycle     18-21 us        15-17 us (in the family)
#     (Drive.step alone, in-process: 10-15 us -> 7-10 us; enabled at rest 9-10 -> 4.5-7 us;
#      a quiet axis ~2 us)
#
# Where a request's CPU goes (py-spy on one benchmark simulator process, before): the event
# loop's wake-up and socket calls ~40 % (a bare asyncio echo server costs 110-150 us a request
# on this VM; uvloop halves that: ``measure --uvloop``), pymodbus's framing, decoding,
# SimDevice checks and its per-request thread hop ~45 % (the hop is gone: server.py), our hook
# ~10 % (now ~5 us: Drive.write and the status block) and the 100 Hz physics the rest.
# The weights below stay as they were (conservative for partitioning).
REQUEST_CPU_S = 200e-6
AXIS_CYCLE_CPU_S = 15e-6
HEARTBEAT_HZ = 20.0  # the master writes register 105 every 50 ms (§7.2)


def weight(spec: DeviceSpec) -> float:
    """The load ``spec`` puts on this family, as a fraction of one core, for partitioning.

    Requests/s a master sends (per poll one read per documented block of the type, at the
    device's ``poll_hz``; plus the heartbeat writes of a commanded axis) times the CPU of a
    request, plus the 100 Hz physics of a running axis. An unknown model is costed as a hoist:
    the family reports the error when the spec is added.
    """
    kind = TYPES.get(spec.model, TYPES["hoist"])
    blocks = 1 + bool(kind.extras_count) + kind.has_commands + bool(kind.settings_count)
    poll_hz = spec.poll_hz if math.isfinite(spec.poll_hz) and spec.poll_hz > 0 else 10.0
    requests = poll_hz * blocks + (HEARTBEAT_HZ if kind.has_commands else 0.0)
    return requests * REQUEST_CPU_S + AXIS_CYCLE_CPU_S / TICK_S


# Slow degradations: fault -> (parameter, growth-rate field, grown field of ``Injected``,
# default rate). Each grows with wall time from its injection; clearing it replaces the part.
DEGRADATIONS: dict[str, tuple[str, str, str, float]] = {
    "bearing_wear": ("rate_n_s", "friction_rate_n_s", "friction_n", 20.0),
    "motor_cooling": ("rate_s", "cooling_rate_s", "cooling_loss", 0.01),
    "brake_wear": ("rate_ms_s", "brake_rate_ms_s", "brake_delay_ms", 5.0),
}


def _comms_faults() -> tuple[FaultInfo, ...]:
    return (
        FaultInfo(
            "slow_response",
            "every answer comes late, within the master's timeout",
            {"delay_ms": "float, ms, default 50"},
        ),
        FaultInfo(
            "late_response",
            "every answer comes after the master's timeout (a stale answer)",
            {"delay_ms": "float, ms, default 1000"},
        ),
        FaultInfo(
            "comms_loss",
            "the drive stops answering ('silent') or its connection is dropped on every request "
            "('drop', TCP only; a serial unit goes silent)",
            {"mode": "str, 'silent' or 'drop', default 'silent'"},
        ),
        FaultInfo(
            "exception_response",
            "requests are answered with an exception code",
            {
                "code": "int, Modbus exception code, default 4",
                "function": "int, only this function code, default any",
                "start": "int, only requests touching [start, start + count), default any",
                "count": "int, registers, default 1",
            },
        ),
    )


class MachineDevice:
    """One simulated machinery device: a drive, its unit's comms faults, its fault catalogue."""

    def __init__(self, spec_id: str, model: str, unit: Unit) -> None:
        self._id, self._model, self.unit = spec_id, model, unit
        self.drive = unit.drive
        self.kind: AxisType = unit.drive.kind
        self._active: dict[str, dict[str, Any]] = {}
        unit_name = self.kind.unit
        drive_faults = [
            FaultInfo("estop", "the hard-wired e-stop chain is open (fault 8, status bit 5)"),
            FaultInfo(
                "overload",
                "extra load on the axis",
                {"extra_kg": f"float, kg, default {self.drive.params.rated_load_kg:g}"},
            ),
            FaultInfo("encoder_fault", "position feedback lost: the reading freezes (fault 5)"),
            FaultInfo(
                "encoder_jump",
                "the encoder's count jumps: the drive believes it is elsewhere "
                f"(fault 5 beyond {self.drive.params.encoder_plausibility:g} {unit_name})",
                {"jump": f"float, {unit_name}, default 10"},
            ),
            FaultInfo(
                "brake_fault",
                "the brake does not release ('no_release') or does not hold ('slip') (fault 6)",
                {"mode": "str, 'no_release' or 'slip', default 'no_release'"},
            ),
            FaultInfo("drive_trip", "the power stage trips: the brake drops at once (fault 4)"),
            FaultInfo(
                "bearing_wear",
                "slow degradation: friction grows by rate_n_s every second, so the motor draws "
                "more current at the same load and speed until the drive trips on overcurrent "
                "(fault 4 above 2x rated current)",
                {"rate_n_s": "float, N/s, default 20"},
            ),
            FaultInfo(
                "motor_cooling",
                "slow degradation: the motor's cooling fails, the winding heats (1 + rate_s * t) "
                "times as fast, until the drive trips on over-temperature (fault 4 above 1.5x "
                "the rated rise)",
                {"rate_s": "float, 1/s, default 0.01"},
            ),
            FaultInfo(
                "brake_wear",
                "slow degradation: the brake's release time grows by rate_ms_s every second until "
                "it misses brake_release_ms + 0.5 s (fault 6)",
                {"rate_ms_s": "float, ms/s, default 5"},
            ),
        ]
        if self.kind.has_rope:
            params = {"line": "int, 1..5, default 1"} if model == "lineshaft_flybar" else {}
            drive_faults.append(FaultInfo("slack_rope", "the rope goes slack (fault 7)", params))
        self._catalogue = {
            f.name: f for f in (*drive_faults, *_comms_faults(), *self.kind.CONDITIONS)
        }

    @property
    def id(self) -> str:
        return self._id

    @property
    def model(self) -> str:
        return self._model

    def truth(self) -> dict[str, Any]:
        truth = self.drive.truth()
        truth["responding"] = not (self.unit.comms.silent or self.unit.comms.drop)
        return truth

    def fault_catalogue(self) -> Sequence[FaultInfo]:
        return list(self._catalogue.values())

    def active_faults(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._active.items()}

    def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        if fault not in self._catalogue:
            raise FaultError(
                f"{self.id}: no fault {fault!r} for a {self.model} "
                f"(known: {', '.join(sorted(self._catalogue))})"
            )
        clean = self._apply(fault, dict(params), on=True)
        self._active[fault] = clean

    def clear(self, fault: str | None = None) -> None:
        names = list(self._active) if fault is None else [fault]
        for name in names:
            if name in self._active:
                self._apply(name, self._active.pop(name), on=False)

    def _apply(self, fault: str, params: dict[str, Any], on: bool) -> dict[str, Any]:
        """Start (``on``) or end one fault; returns the parameters as they were understood."""
        inj, comms = self.drive.injected, self.unit.comms
        take = _Params(self.id, fault, params)
        out: dict[str, Any] = {}
        if fault == "estop":
            inj.estop = on
        elif fault == "overload":
            out["extra_kg"] = take.number("extra_kg", self.drive.params.rated_load_kg)
            inj.extra_load_kg = out["extra_kg"] if on else 0.0
        elif fault == "encoder_fault":
            self.drive.freeze_encoder(on)
        elif fault == "encoder_jump":
            out["jump"] = take.number("jump", 10.0)
            inj.encoder_offset = out["jump"] if on else 0.0
        elif fault == "brake_fault":
            out["mode"] = take.choice("mode", ("no_release", "slip"))
            inj.brake = out["mode"] if on else None
        elif fault == "drive_trip":
            inj.trip = on
        elif fault in DEGRADATIONS:
            name, rate_field, grown_field, default = DEGRADATIONS[fault]
            out[name] = take.number(name, default)
            if not 0 <= out[name] <= 1e6:
                raise FaultError(f"{self.id}: {fault}: {name} must be 0..1e6")
            take.done()  # refuse unknown parameters before anything changes
            setattr(inj, rate_field, out[name] if on else 0.0)
            setattr(inj, grown_field, 0.0)  # injected: from a healthy part; cleared: replaced
        elif fault == "slack_rope":
            if self.model == "lineshaft_flybar":
                out["line"] = take.integer("line", 1, 1, 5)
                self.kind.set_condition(
                    self.drive, fault, out
                ) if on else self.kind.clear_condition(self.drive, fault)
            inj.slack = on
        elif fault in ("slow_response", "late_response"):
            out["delay_ms"] = take.number("delay_ms", 50.0 if fault == "slow_response" else 1000.0)
            if out["delay_ms"] < 0:
                raise FaultError(f"{self.id}: {fault}: delay_ms must be >= 0")
            comms.delay_s = out["delay_ms"] / 1000 if on else 0.0
        elif fault == "comms_loss":
            out["mode"] = take.choice("mode", ("silent", "drop"))
            comms.silent = on and out["mode"] == "silent"
            comms.drop = on and out["mode"] == "drop"
        elif fault == "exception_response":
            codes = {int(c) for c in ExcCodes}
            out["code"] = take.integer("code", 4, 1, 255)
            if out["code"] not in codes:
                raise FaultError(
                    f"{self.id}: exception_response: code must be one of {sorted(codes)}"
                )
            function = take.optional_integer("function")
            start = take.optional_integer("start")
            count = take.integer("count", 1, 1, 125)
            out.update(function=function, start=start, count=count)
            comms.exception = ExcCodes(out["code"]) if on else None
            comms.exception_function = function
            comms.exception_range = None if start is None else (start, start + count)
        else:
            out = params  # a condition of the type: its own validation
            if on:
                self.kind.set_condition(self.drive, fault, params)
                out = self.kind.conditions[fault]
            else:
                self.kind.clear_condition(self.drive, fault)
            return out
        take.done()
        return out


class _Params:
    """Fault parameters: typed look-ups with defaults; unknown names are errors."""

    def __init__(self, device: str, fault: str, params: dict[str, Any]) -> None:
        self.where, self.params, self.used = f"{device}: {fault}", params, set[str]()

    def _get(self, name: str) -> Any:
        self.used.add(name)
        return self.params.get(name)

    def number(self, name: str, default: float) -> float:
        value = self._get(name)
        if value is None:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise FaultError(f"{self.where}: {name} must be a finite number, not {value!r}")
        return float(value)

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise FaultError(
                f"{self.where}: {name} must be a whole number {lo}..{hi}, not {value!r}"
            )
        return value

    def optional_integer(self, name: str) -> int | None:
        value = self._get(name)
        if value is None:
            return None
        return self.integer(name, 0, 0, 65535)

    def choice(self, name: str, options: tuple[str, ...]) -> str:
        value = self._get(name)
        if value is None:
            return options[0]
        if value not in options:
            raise FaultError(
                f"{self.where}: {name} must be one of {', '.join(options)}, not {value!r}"
            )
        return str(value)

    def done(self) -> None:
        unknown = sorted(set(self.params) - self.used)
        if unknown:
            raise FaultError(f"{self.where}: unknown parameter(s) {', '.join(unknown)}")


class MachineryFamily:
    """Every machinery drive of one process, its Modbus hosts and its physics clock."""

    models = frozenset(TYPES)
    weight = staticmethod(weight)

    def __init__(self, venue: Mapping[str, Any]) -> None:
        self.devices: list[MachineDevice] = []
        self._tcp: dict[tuple[str, int], list[Unit]] = {}
        self._serial: dict[str, tuple[dict[str, Any], list[Unit]]] = {}
        self._hosts: list[ModbusHost] = []
        self.ticks = 0
        self.overruns = 0
        self.lost_s = 0.0  # physics time lost to stalls longer than MAX_CATCH_UP_S
        self.step_s = 0.0  # CPU spent stepping, for stats
        self._started = time.monotonic()

    def add(self, spec: DeviceSpec) -> SimulatedDevice:
        kind_cls = TYPES.get(spec.model)
        if kind_cls is None:
            raise SimulationError(f"{spec.where}.model: {spec.model!r} is not a machinery model")
        axis_kinds = param_kinds(kind_cls.unit)
        allowed: dict[str, type] = {name: kind for name, (_, kind) in axis_kinds.items()}
        allowed.update({name: kind for name, (kind, _) in kind_cls.PARAMS.items()})
        allowed["serial_port"] = str
        params = check_params(spec, allowed)
        values: dict[str, Any] = dict(kind_cls.DEFAULTS)
        for name, value in params.items():
            if name in axis_kinds:
                values[axis_kinds[name][0]] = value
        axis = AxisParams(
            **{f.name: values[f.name] for f in fields(AxisParams) if f.name in values}
        )
        self._check_figures(spec, axis, kind_cls)
        kind = kind_cls({k: v for k, v in params.items() if k in kind_cls.PARAMS})
        unit = Unit(self._unit_id(spec), Drive(axis, kind))
        self._place(spec, unit, params.get("serial_port"))
        device = MachineDevice(spec.id, spec.model, unit)
        self.devices.append(device)
        return device

    @staticmethod
    def _check_figures(spec: DeviceSpec, p: AxisParams, kind: type[AxisType]) -> None:
        positive = (
            "travel",
            "max_speed",
            "max_accel",
            "quick_stop_decel",
            "brake_stop_decel",
            "encoder_resolution",
        )
        for name in positive:
            if not getattr(p, name) > 0:
                raise SimulationError(f"{spec.where}.{name}: must be above 0")
        if (
            p.max_jerk < 0
            or p.watchdog_ms_default <= 0
            or p.rated_current_a <= 0
            or p.thermal_tau_s <= 0
        ):
            raise SimulationError(
                f"{spec.where}: jerk, watchdog, rated current and tau must be positive"
            )
        if (
            not kind.rotary
            and not -p.hard_limit_margin <= p.start_position <= p.travel + p.hard_limit_margin
        ):
            raise SimulationError(
                f"{spec.where}.start_position: outside the travel 0..{p.travel:g}"
            )

    @staticmethod
    def _unit_id(spec: DeviceSpec) -> int:
        unit = spec.transport.get("unit", 1)
        if isinstance(unit, bool) or not isinstance(unit, int) or not 1 <= unit <= 247:
            raise SimulationError(f"{spec.where}: transport unit must be 1..247, not {unit!r}")
        return unit

    def _place(self, spec: DeviceSpec, unit: Unit, serial_port: str | None) -> None:
        tr = spec.transport
        kind = tr.get("kind")
        if kind == "modbus-tcp":
            if serial_port is not None:
                raise SimulationError(f"{spec.where}.serial_port: only for a modbus-rtu transport")
            port = tr.get("port", 502)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise SimulationError(
                    f"{spec.where}: transport port must be 1..65535, not {port!r}"
                )
            units = self._tcp.setdefault((str(tr.get("host", "127.0.0.1")), port), [])
        elif kind == "modbus-rtu":
            if not serial_port:
                raise SimulationError(
                    f"{spec.where}.serial_port: a modbus-rtu device needs the simulator's end of "
                    "the serial line (e.g. the other pty of a socat pair)"
                )
            line = {k: tr.get(k, LINE_DEFAULTS[k]) for k in LINE_KEYS}
            known_line, units = self._serial.setdefault(serial_port, (line, []))
            if known_line != line:
                raise SimulationError(
                    f"{spec.where}: units on {serial_port} disagree on the line settings "
                    f"({line} against {known_line})"
                )
        else:
            raise SimulationError(
                f"{spec.where}: a {spec.model} needs a modbus-tcp or modbus-rtu transport"
            )
        if any(u.unit == unit.unit for u in units):
            raise SimulationError(f"{spec.where}: unit {unit.unit} is taken twice on one host")
        units.append(unit)

    def hosts(self) -> Sequence[AbstractAsyncContextManager[Any]]:
        self._hosts = [ModbusHost(units, tcp=addr) for addr, units in self._tcp.items()]
        self._hosts += [
            ModbusHost(units, serial={"port": port, **line})
            for port, (line, units) in self._serial.items()
        ]
        return [self._clock(), *self._hosts]

    @contextlib.asynccontextmanager
    async def _clock(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._run_clock(), name="machinery-physics")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run_clock(self) -> None:
        drives = [d.drive for d in self.devices]
        last = time.monotonic()
        deadline = last
        self._started = last
        while True:
            deadline += TICK_S
            delay = deadline - time.monotonic()
            if delay < 0:
                skipped = math.ceil(-delay / TICK_S)
                self.overruns += skipped
                deadline += skipped * TICK_S
                delay = deadline - time.monotonic()
            await asyncio.sleep(max(0.0, delay))
            now = time.monotonic()
            elapsed, last = now - last, now
            if elapsed > MAX_CATCH_UP_S:
                self.lost_s += elapsed - MAX_CATCH_UP_S
                elapsed = MAX_CATCH_UP_S
            t0 = time.thread_time()
            # A stalled process (a loaded host) must not slow the machines down: a real drive
            # keeps moving while nobody looks, so the physics catches up in short steps.
            steps = max(1, math.ceil(elapsed / MAX_STEP_S - 1e-9))
            dt = elapsed / steps
            for k in range(steps, 0, -1):
                at = now - (k - 1) * dt
                for drive in drives:
                    if drive.quiet():
                        drive.idle(at, dt)
                    else:
                        drive.step(at, dt)
            self.step_s += time.thread_time() - t0
            self.ticks += 1

    def stats(self) -> dict[str, Any]:
        elapsed = max(1e-9, time.monotonic() - self._started)
        requests = sum(h.requests for h in self._hosts)
        return {
            "axes": len(self.devices),
            "hosts": len(self._hosts),
            "ticks": self.ticks,
            "ticks_per_s": self.ticks / elapsed,
            "overruns": self.overruns,
            "lost_s": round(self.lost_s, 3),
            "physics_cpu_s": self.step_s,
            "requests": requests,
            "requests_per_s": requests / elapsed,
        }


__all__ = ["Comms", "MachineDevice", "MachineryFamily", "weight"]
