"""Build the simulators a venue file asks for: every device with a ``simulate`` table.

Simulators read the venue file on their own (tomllib), like a test rig configured from the same
drawing as the real installation; they share no code with the service.

    [[devices]]
    id = "hoist-1"
    transport = { kind = "modbus-tcp", host = "127.0.0.1", port = 15021, unit = 1 }
    simulate = { model = "hoist", start_position_mm = 2000, payload_kg = 180 }
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from simulators.hoist import HoistAxis, HoistParams
from simulators.modbus_server import ModbusSimServer, SimulatedUnit

MODELS = {"hoist": HoistParams}


class SimulationError(ValueError):
    pass


def plan(venue: dict[str, Any], source: str = "venue") -> list[ModbusSimServer]:
    """One ModbusSimServer per distinct host:port among the simulated devices."""
    groups: dict[tuple[str, int], list[SimulatedUnit]] = {}
    for i, dev in enumerate(venue.get("devices", [])):
        sim = dev.get("simulate") if isinstance(dev, dict) else None
        if sim is None:
            continue
        where = f"{source}: devices[{i}] ({dev.get('id', '?')}).simulate"
        if not isinstance(sim, dict):
            raise SimulationError(f"{where}: expected a table")
        sim = dict(sim)
        model = sim.pop("model", None)
        if model not in MODELS:
            raise SimulationError(f"{where}.model: {model!r} is not one of {sorted(MODELS)}")
        params_cls = MODELS[model]
        kinds = {f.name: int if f.type == "int" else float for f in dataclasses.fields(params_cls)}
        if unknown := sorted(set(sim) - set(kinds)):
            raise SimulationError(f"{where}: unknown parameter(s) {', '.join(unknown)}")
        try:
            values: dict[str, Any] = {k: kinds[k](v) for k, v in sim.items()}
            params = params_cls(**values)
        except (TypeError, ValueError) as exc:
            raise SimulationError(f"{where}: {exc}") from exc
        tr = dev.get("transport", {})
        if not isinstance(tr, dict) or tr.get("kind") != "modbus-tcp":
            raise SimulationError(f"{where}: model {model} needs a modbus-tcp transport")
        key = (str(tr.get("host", "127.0.0.1")), int(tr.get("port", 502)))
        units = groups.setdefault(key, [])
        unit = int(tr.get("unit", 1))
        if any(u.unit == unit for u in units):
            raise SimulationError(f"{where}: unit {unit} on {key[0]}:{key[1]} is taken twice")
        units.append(SimulatedUnit(unit, HoistAxis(params)))
    return [ModbusSimServer(host, port, units) for (host, port), units in groups.items()]


def load(path: Path) -> list[ModbusSimServer]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SimulationError(f"{path}: {exc}") from exc
    return plan(data, str(path))


async def serve(servers: list[ModbusSimServer], ready: asyncio.Event | None = None) -> None:
    """Run the servers until cancelled."""
    async with contextlib.AsyncExitStack() as stack:
        for server in servers:
            await stack.enter_async_context(server)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
