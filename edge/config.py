"""The venue file: which nodes and devices a venue has, and how this service runs.

A venue is a TOML file (examples/venue-demo.toml). Relative paths in it (profiles, the store,
the show) are resolved against the folder the venue file is in, so a venue folder can be moved
as a whole. ``load_venue`` validates the file and every profile it references and reports every
problem it finds as 'file: key: what is wrong', not just the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drivers.model import (
    PROTOCOL_TRANSPORTS,
    ConfigError,
    Device,
    DeviceId,
    DmxTransport,
    Profile,
    Transport,
    find_profile,
    format_validation_error,
    load_profile,
    read_toml,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VenueInfo(_Strict):
    id: DeviceId
    name: str = ""


class NodeConfig(_Strict):
    id: DeviceId
    name: str = ""


class ApiConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class MqttConfig(_Strict):
    """``embedded`` starts an in-process broker (amqtt) for a single-machine venue;
    ``external`` connects to a real broker (Mosquitto) as production does."""

    mode: Literal["embedded", "external", "off"] = "embedded"
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=0, le=65535)


class TelemetryConfig(_Strict):
    store: str = "var/telemetry.sqlite3"
    retention_days: float = Field(default=30, gt=0)
    batch_max: int = Field(default=2000, ge=1, le=100_000)
    queue_size: int = Field(default=10_000, ge=1)


class DeviceConfig(_Strict):
    id: DeviceId
    name: str = ""
    node: DeviceId | None = None
    profile: str = Field(min_length=1)
    poll_hz: float = Field(default=10.0, gt=0, le=1000)
    transport: Transport
    # Read by simulators/ only; the service ignores it.
    simulate: dict[str, Any] | None = None


class VenueConfig(_Strict):
    version: Literal[1] = 1
    venue: VenueInfo
    nodes: list[NodeConfig] = Field(min_length=1)
    api: ApiConfig = Field(default_factory=ApiConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    show: str | None = None
    profile_dirs: list[str] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Self:
        nodes = [n.id for n in self.nodes]
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"nodes: duplicate node id in {nodes}")
        seen: set[str] = set()
        for dev in self.devices:
            if dev.id in seen:
                raise ValueError(f"devices: id '{dev.id}' is used twice")
            seen.add(dev.id)
            if dev.node is not None and dev.node not in nodes:
                raise ValueError(f"devices.{dev.id}.node: no node '{dev.node}' (nodes: {nodes})")
        return self


class Venue:
    """A validated venue: its config, its resolved paths and its devices with profiles."""

    def __init__(self, path: Path, config: VenueConfig, devices: list[Device]) -> None:
        self.path = path
        self.config = config
        self.devices = devices
        self.folder = path.parent

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.folder / p

    @property
    def store_path(self) -> Path:
        return self.resolve(self.config.telemetry.store)

    def devices_of(self, node: str) -> list[Device]:
        default = self.config.nodes[0].id
        node_of = {d.id: d.node or default for d in self.config.devices}
        return [d for d in self.devices if node_of[d.id] == node]


def load_venue(path: Path | str) -> Venue:
    """Load and validate a venue file and every profile it names; ConfigError lists problems."""
    path = Path(path)
    return parse_venue(read_toml(path), path)


def parse_venue(data: dict[str, Any], path: Path) -> Venue:
    """Validate parsed venue data; ``path`` names it in errors and anchors relative paths."""
    try:
        config = VenueConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, _with_device_ids(format_validation_error(exc), data)) from exc
    folder = path.parent
    search = [folder / d for d in config.profile_dirs]
    problems: list[str] = []
    profiles: dict[str, Profile] = {}
    devices: list[Device] = []
    for dev in config.devices:
        if dev.profile not in profiles:
            try:
                ref = (
                    dev.profile if not dev.profile.endswith(".toml") else str(folder / dev.profile)
                )
                profiles[dev.profile] = load_profile(find_profile(ref, search))
            except FileNotFoundError:
                problems.append(
                    f"devices.{dev.id}.profile: no profile '{dev.profile}' "
                    f"(looked in {', '.join(str(s) for s in search) or 'nothing'} "
                    "and the built-in profiles)"
                )
                continue
            except ConfigError as exc:
                problems.extend(
                    f"devices.{dev.id}.profile: {line}" for line in str(exc).splitlines()
                )
                continue
        devices.append(Device(dev.id, profiles[dev.profile], dev.transport, dev.poll_hz, dev.name))
    if config.show is not None and not (folder / config.show).is_file():
        problems.append(f"show: file '{config.show}' does not exist")
    endpoints: dict[str, str] = {}
    for dev in config.devices:
        t = dev.transport
        if t.endpoint in endpoints:
            problems.append(
                f"devices.{dev.id}.transport: {t.endpoint} is also device '{endpoints[t.endpoint]}'"
            )
        endpoints[t.endpoint] = dev.id
    problems.extend(_check_transports(devices))
    if problems:
        raise ConfigError(path, problems)
    return Venue(path, config, devices)


def _check_transports(devices: list[Device]) -> list[str]:
    """A transport must suit its profile's protocol, and DMX fixtures must not overlap."""
    problems: list[str] = []
    patched: dict[tuple[int, int], str] = {}
    for dev in devices:
        allowed = PROTOCOL_TRANSPORTS[dev.profile.protocol]
        if dev.transport.kind not in allowed:
            problems.append(
                f"devices.{dev.id}.transport: a {dev.profile.protocol} profile needs "
                f"kind {' or '.join(repr(k) for k in allowed)}, not '{dev.transport.kind}'"
            )
            continue
        if isinstance(dev.transport, DmxTransport):
            footprint = dev.profile.footprint or 1
            last = dev.transport.address + footprint - 1
            if last > 512:
                problems.append(
                    f"devices.{dev.id}.transport: address {dev.transport.address} + footprint "
                    f"{footprint} runs past channel 512"
                )
            for ch in range(dev.transport.address, min(last, 512) + 1):
                other = patched.setdefault((dev.transport.universe, ch), dev.id)
                if other != dev.id:
                    problems.append(
                        f"devices.{dev.id}.transport: universe {dev.transport.universe} "
                        f"channel {ch} is also patched to '{other}'"
                    )
                    break
    return problems


def _with_device_ids(lines: list[str], data: dict[str, Any]) -> list[str]:
    """'devices.3.poll_hz' means little to a person; 'devices[3] (hoist-4).poll_hz' does."""
    devices = data.get("devices")
    out = []
    for line in lines:
        if line.startswith("devices[") and isinstance(devices, list):
            index = line[len("devices[") :].split("]", 1)[0]
            if index.isdigit() and int(index) < len(devices):
                dev = devices[int(index)]
                name = dev.get("id") if isinstance(dev, dict) else None
                if isinstance(name, str):
                    line = line.replace(f"devices[{index}]", f"devices[{index}] ({name})", 1)
        out.append(line)
    return out
