"""What every simulator family shares: device specs, the simulated-device contract, faults.

A venue's simulated equipment is declared as data (a ``[[devices]]`` table with a ``simulate``
table naming a ``model``) plus behaviour hooks, the way pymodbus's ``SimDevice`` is declared
with an action hook. Each protocol has one **family** (Modbus machinery, MQTT gear, DMX
receivers, OSC consoles, the acoustic room). A family claims models, turns specs into
simulated devices, and owns the sockets and clocks that serve them (its hosts).

The runner (``simulators.runner``) builds the families a venue needs, hands each its devices,
enters their hosts, and exposes every device through one control endpoint: ground truth for
tests, and fault injection.

Nothing here imports Flytower: a simulator is written from ``docs/interfaces/`` alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class SimulationError(ValueError):
    """A venue asks for something no simulator can be: the message says where and what."""


class FaultError(ValueError):
    """A fault injection names an unknown fault or gives bad parameters."""


@dataclass(frozen=True)
class DeviceSpec:
    """One simulated device as the venue declares it (already expanded, plain data)."""

    id: str
    profile: str
    transport: Mapping[str, Any]
    simulate: Mapping[str, Any]  # includes "model"
    where: str  # "venue.toml: devices[3] (hoist-4).simulate", for errors
    poll_hz: float = 10.0

    @property
    def model(self) -> str:
        return str(self.simulate.get("model", ""))

    def params(self) -> dict[str, Any]:
        """The ``simulate`` table without ``model``."""
        return {k: v for k, v in self.simulate.items() if k != "model"}


@dataclass(frozen=True)
class FaultInfo:
    """A fault a device can have injected, for the control endpoint's listing."""

    name: str
    description: str
    params: Mapping[str, str] = field(default_factory=dict)  # name -> "float, s, default 1.0"


@runtime_checkable
class SimulatedDevice(Protocol):
    """One simulated device: its ground truth and its injectable faults."""

    @property
    def id(self) -> str: ...

    @property
    def model(self) -> str: ...

    def truth(self) -> dict[str, Any]:
        """Ground truth now, JSON-serialisable (engineering units, named as in the device page)."""
        ...

    def fault_catalogue(self) -> Sequence[FaultInfo]: ...

    def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        """Start a fault; raises FaultError for an unknown fault or bad parameters."""
        ...

    def clear(self, fault: str | None = None) -> None:
        """End one injected fault, or all of them (None). Latched drive faults stay latched:
        clearing the cause is not a reset."""
        ...

    def active_faults(self) -> dict[str, dict[str, Any]]: ...


class Family(Protocol):
    """The simulators of one protocol in one process."""

    models: frozenset[str]

    def add(self, spec: DeviceSpec) -> SimulatedDevice:
        """Validate ``spec`` (SimulationError naming ``spec.where``) and create its device."""
        ...

    def hosts(self) -> Sequence[AbstractAsyncContextManager[Any]]:
        """The servers, clients and clocks to enter once every device has been added."""
        ...

    def stats(self) -> dict[str, Any]:
        """Achieved rates for the control endpoint: ticks/s, requests/s, messages/s ..."""
        ...


def check_params(spec: DeviceSpec, allowed: Mapping[str, type]) -> dict[str, Any]:
    """Coerce ``spec.params()`` to the allowed types; unknown names are errors, not ignored."""
    params = spec.params()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise SimulationError(
            f"{spec.where}: unknown parameter(s) {', '.join(unknown)} for model {spec.model} "
            f"(known: {', '.join(sorted(allowed))})"
        )
    out: dict[str, Any] = {}
    for name, value in params.items():
        kind = allowed[name]
        if kind is bool and not isinstance(value, bool):
            raise SimulationError(f"{spec.where}.{name}: expected true or false, got {value!r}")
        if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise SimulationError(f"{spec.where}.{name}: expected a number, got {value!r}")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise SimulationError(f"{spec.where}.{name}: expected a whole number, got {value!r}")
        if kind is str and not isinstance(value, str):
            raise SimulationError(f"{spec.where}.{name}: expected a string, got {value!r}")
        out[name] = kind(value) if kind in (int, float) else value
    return out
