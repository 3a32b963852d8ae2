"""Which family simulates which model, imported only when a venue uses it.

The model names are the profile names (docs/interfaces/devices/). Families are imported lazily,
one module per protocol, so a venue of hoists never imports the acoustic room (pyroomacoustics,
JACK) and a family that fails to import breaks only the venues that use it, with a message
naming the devices concerned instead of a traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

from simulators.core import (
    DeviceSpec,
    Family,
    FaultError,
    FaultInfo,
    SimulatedDevice,
    SimulationError,
    check_params,
)

# Family name -> "module:Class". The family name is what the control endpoint reports.
FAMILIES: dict[str, str] = {
    "machinery": "simulators.machinery:MachineryFamily",
    "gear": "simulators.gear:MqttFamily",
    "lighting": "simulators.lighting:DmxFamily",
    "osc_matrix": "simulators.osc_matrix:OscFamily",
    "acoustics": "simulators.acoustics:RoomFamily",
}

MODELS: dict[str, str] = {
    **dict.fromkeys(
        [
            "hoist",
            "lineshaft_flybar",
            "chain_hoist",
            "stage_lift",
            "pit_lift",
            "turntable",
            "wagon",
            "curtain_track",
            "fire_curtain",
        ],
        "machinery",
    ),
    **dict.fromkeys(
        [
            "load_cell",
            "temp_humidity",
            "spl_meter",
            "power_meter",
            "wireless_mic_receiver",
            "power_amplifier",
            "projector",
            "media_server",
            "led_wall_processor",
            "shelly_3em",
            "shelly_ht",
        ],
        "gear",
    ),
    **dict.fromkeys(["led_par_rgbw", "moving_head", "dimmer_rack"], "lighting"),
    "dsp_matrix": "osc_matrix",
    "room": "acoustics",
}

FamilyFactory = Callable[[Mapping[str, Any]], Family]


def family_of(model: str) -> str:
    """The family name that simulates ``model``; SimulationError (without a location) if none."""
    try:
        return MODELS[model]
    except KeyError:
        raise SimulationError(
            f"model {model!r} is not simulated (known: {', '.join(sorted(MODELS))})"
        ) from None


def load_family(name: str) -> FamilyFactory:
    """Import the class of family ``name``; SimulationError if it cannot be imported."""
    module_name, _, class_name = FAMILIES[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name and name == "machinery":
            return _LegacyHoistFamily  # until simulators.machinery lands
        raise SimulationError(
            f"the {name} simulators ({FAMILIES[name]}) cannot be loaded: {exc}"
        ) from exc
    except ImportError as exc:
        raise SimulationError(
            f"the {name} simulators ({FAMILIES[name]}) cannot be loaded: {exc}"
        ) from exc
    if not hasattr(module, class_name):
        if name == "machinery":
            return _LegacyHoistFamily  # the package is there, its family not yet
        raise SimulationError(
            f"the {name} simulators ({FAMILIES[name]}) cannot be loaded: no {class_name}"
        )
    return cast(FamilyFactory, getattr(module, class_name))


# --- until simulators.machinery exists: the first hoist simulator behind the Family protocol ---


class _LegacyHoist:
    def __init__(self, spec_id: str, axis: Any) -> None:
        self.id, self.model, self.axis = spec_id, "hoist", axis

    def truth(self) -> dict[str, Any]:
        a = self.axis
        return {
            "position_mm": a.position,
            "velocity_mm_s": a.velocity,
            "load_kg": a.load_kg,
            "fault": a.fault,
            "estop": a.estop,
        }

    def fault_catalogue(self) -> list[FaultInfo]:
        return [FaultInfo("estop", "the hard-wired e-stop chain is open")]

    def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        if fault != "estop" or params:
            raise FaultError(f"{self.id}: no fault {fault!r} with {dict(params)} (known: estop)")
        self.axis.estop = True

    def clear(self, fault: str | None = None) -> None:
        self.axis.estop = False

    def active_faults(self) -> dict[str, dict[str, Any]]:
        return {"estop": {}} if self.axis.estop else {}


class _LegacyHoistFamily:
    models = frozenset({"hoist"})

    def __init__(self, venue: Mapping[str, Any]) -> None:
        self._groups: dict[tuple[str, int], list[Any]] = {}

    def add(self, spec: DeviceSpec) -> SimulatedDevice:
        from simulators.hoist import HoistAxis, HoistParams
        from simulators.modbus_server import SimulatedUnit

        if spec.model != "hoist":
            raise SimulationError(f"{spec.where}.model: {spec.model} is not simulated yet")
        kinds: dict[str, type] = {f: float for f in HoistParams.__dataclass_fields__}
        kinds["watchdog_ms_default"] = int
        params = check_params(spec, kinds)
        tr = spec.transport
        if tr.get("kind") != "modbus-tcp":
            raise SimulationError(f"{spec.where}: model hoist needs a modbus-tcp transport")
        units = self._groups.setdefault((str(tr.get("host", "127.0.0.1")), int(tr["port"])), [])
        unit = int(tr.get("unit", 1))
        if any(u.unit == unit for u in units):
            raise SimulationError(f"{spec.where}: unit {unit} is taken twice")
        axis = HoistAxis(HoistParams(**params))
        units.append(SimulatedUnit(unit, axis))
        return _LegacyHoist(spec.id, axis)

    def hosts(self) -> list[AbstractAsyncContextManager[Any]]:
        from simulators.modbus_server import ModbusSimServer

        return [ModbusSimServer(h, p, units) for (h, p), units in self._groups.items()]

    def stats(self) -> dict[str, Any]:
        return {"servers": len(self._groups)}
