"""The venue a run uses: the scenario's venue, expanded, moved onto free ports.

A run must not disturb, nor be disturbed by, anything else on the machine: a `flytower run` of
the same venue, another run in a CI job, a test suite. So (unless the scenario sets
``isolate_ports = false``) every port the venue would listen on or serve from on loopback is
moved to a free one, consistently (devices that share a Modbus gateway keep sharing it):

- the API (the service binds an ephemeral port and says which),
- the embedded MQTT broker (an external broker is left alone: it is not ours to move),
- the OSC server (ephemeral) and every OSC device on loopback,
- every Modbus TCP device on loopback,
- every DMX output and input port (the receivers bind what the outputs send to).

Serial lines and the JACK server are left as they are. The telemetry store always goes into
the run's output folder: a test run never writes into a venue's own history.

The result is plain data, written as JSON for the simulators (``python -m simulators`` reads
JSON) and validated by ``edge.config.parse_venue`` for the service with the original path, so
relative paths in the venue (profiles, show) still resolve against the venue's folder.
"""

from __future__ import annotations

import copy
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import edge.config
from drivers.model import ConfigError, read_toml

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nobody listens on now (TCP or UDP); the caller binds it soon after."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_expanded(path: Path) -> dict[str, Any]:
    """The venue file as data, compact group specs expanded into ``[[devices]]``."""
    data = read_toml(path)
    # Compact venues are expanded by edge.config once it has expand_venue (as `flytower
    # simulate` does); an explicit venue is used as it is.
    expand: Callable[[dict[str, Any], Path], dict[str, Any]] | None = getattr(
        edge.config, "expand_venue", None
    )
    return expand(data, path) if expand is not None else data


def isolate(
    data: dict[str, Any],
    tcp_port: Callable[[], int] = free_port,
    udp_port: Callable[[], int] = lambda: free_port(socket.SOCK_DGRAM),
) -> dict[str, Any]:
    """A copy of ``data`` with every loopback port moved as the module docstring says."""
    out = copy.deepcopy(data)
    moved: dict[tuple[str, int], int] = {}

    def move(kind: str, port: Any, new: Callable[[], int]) -> Any:
        if not isinstance(port, int) or isinstance(port, bool):
            return port  # malformed: the venue's validation will say so
        return moved.setdefault((kind, port), new())

    api = _table(out, "api")
    api["port"] = 0
    mqtt = _table(out, "mqtt")
    if mqtt.get("mode", "embedded") == "embedded":
        mqtt["port"] = move("tcp", mqtt.get("port", 1883), tcp_port)
    osc = _table(out, "osc")
    osc["udp_port"], osc["tcp_port"] = 0, 0
    dmx = out.get("dmx")
    if isinstance(dmx, dict):
        outputs = dmx.get("outputs", [])
        for o in outputs if isinstance(outputs, list) else []:
            if isinstance(o, dict) and o.get("protocol") in ("artnet", "sacn"):
                default = 6454 if o["protocol"] == "artnet" else 5568
                o["udp_port"] = move("udp", o.get("udp_port", default), udp_port)
        dmx_in = dmx.get("input")
        if isinstance(dmx_in, dict):
            dmx_in["udp_port"] = move("udp", dmx_in.get("udp_port", 0), udp_port)
    devices = out.get("devices", [])
    for dev in devices if isinstance(devices, list) else []:
        tr = dev.get("transport") if isinstance(dev, dict) else None
        if (
            isinstance(tr, dict)
            and tr.get("kind") in ("modbus-tcp", "osc")
            and tr.get("host", "127.0.0.1") in LOOPBACK
        ):
            tr["port"] = move(str(tr["kind"]), tr.get("port", 502), tcp_port)
    sim = out.get("simulation")
    if isinstance(sim, dict):
        sim.pop("control_port", None)  # the runner names the control port itself
    return out


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    table = data.setdefault(key, {})
    if not isinstance(table, dict):
        raise ConfigError("<venue>", [f"{key}: expected a table"])
    return table


def with_store(data: dict[str, Any], store: Path) -> dict[str, Any]:
    """``data`` with its telemetry store at ``store`` (an absolute path)."""
    out = copy.deepcopy(data)
    _table(out, "telemetry")["store"] = str(store.resolve())
    return out


def simulated_ids(data: dict[str, Any]) -> set[str]:
    devices = data.get("devices", [])
    return {
        d["id"]
        for d in (devices if isinstance(devices, list) else [])
        if isinstance(d, dict) and d.get("simulate") is not None and isinstance(d.get("id"), str)
    }
