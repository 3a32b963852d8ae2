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


class MqttTlsConfig(_Strict):
    """TLS to the broker. Paths are relative to the venue file. ``insecure`` skips the host
    name check (a lab broker with an IP-only certificate), never the chain check."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure: bool = False

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both 'cert' and 'key'")
        return self


class MqttConfig(_Strict):
    """``embedded`` starts an in-process broker (amqtt) for a single-machine venue;
    ``external`` connects to a real broker (Mosquitto) as production does.

    Secrets do not belong in a venue file that is copied around: ``password_env`` names the
    environment variable that holds the password."""

    mode: Literal["embedded", "external", "off"] = "embedded"
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=0, le=65535)
    username: str | None = Field(default=None, min_length=1)
    password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    tls: MqttTlsConfig | None = None

    @model_validator(mode="after")
    def _embedded_plain(self) -> Self:
        if self.mode == "embedded" and (self.tls is not None or self.username is not None):
            raise ValueError(
                "the embedded broker is loopback-only and anonymous: use mode = 'external' "
                "for username/password or TLS"
            )
        if self.password_env is not None and self.username is None:
            raise ValueError("'password_env' needs 'username'")
        return self


class OscConfig(_Strict):
    """The OSC server scripts and consoles talk to (docs/interfaces/osc.md). QLab listens on
    53000 (UDP and TCP); 0 means an ephemeral port. ``allow`` lists the source addresses
    accepted (empty: any); with ``passcode_env`` set, a peer must /connect with the passcode
    first, as QLab does."""

    enabled: bool = False
    host: str = "127.0.0.1"
    udp_port: int | None = Field(default=53000, ge=0, le=65535)
    tcp_port: int | None = Field(default=53000, ge=0, le=65535)
    allow: list[str] = Field(default_factory=list)
    passcode_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class DmxOutputConfig(_Strict):
    """One DMX output: which universes it carries and how (docs/interfaces/dmx.md).

    ``artnet``: unicast to ``targets`` plus nodes discovered by ArtPoll that subscribe to the
    universe; ``broadcast`` to the given address only when set. Flytower universe 1 is Art-Net
    Port-Address 0 (0:0:0), as consoles number them. ``sacn``: multicast unless ``targets``
    are given, at ``priority``. ``enttec``: an ENTTEC DMX USB Pro on serial ``device`` (one
    universe). ``udp_port`` overrides the protocol's port (6454 / 5568) for a lab or a test.
    """

    protocol: Literal["artnet", "sacn", "enttec"]
    universes: list[int] = Field(min_length=1)
    targets: list[str] = Field(default_factory=list)
    broadcast: str | None = None
    priority: int = Field(default=100, ge=0, le=200)
    device: str | None = None
    udp_port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        bad = [u for u in self.universes if not 1 <= u <= 63999]
        if bad:
            raise ValueError(f"universes must be 1..63999, not {bad}")
        if self.protocol == "enttec":
            if self.device is None:
                raise ValueError("an enttec output needs 'device' (its serial device)")
            if len(self.universes) != 1:
                raise ValueError("an ENTTEC DMX USB Pro carries exactly one universe")
        elif self.device is not None:
            raise ValueError(f"'device' is for enttec outputs, not {self.protocol}")
        if self.protocol == "artnet" and max(self.universes) > 32768:
            raise ValueError("Art-Net Port-Addresses end at 32767 (universe 32768)")
        if self.protocol != "artnet" and self.broadcast is not None:
            raise ValueError("'broadcast' is an Art-Net option")
        return self


class DmxInputConfig(_Strict):
    """Receive Art-Net and/or sACN (a console feeding Flytower), merged per universe."""

    protocols: list[Literal["artnet", "sacn"]] = Field(min_length=1)
    universes: list[int] = Field(min_length=1)
    bind: str = "0.0.0.0"
    udp_port: int | None = Field(default=None, ge=1, le=65535)


class DmxConfig(_Strict):
    outputs: list[DmxOutputConfig] = Field(default_factory=list)
    input: DmxInputConfig | None = None

    @model_validator(mode="after")
    def _each_universe_once(self) -> Self:
        owner: dict[int, int] = {}
        for i, out in enumerate(self.outputs):
            for u in out.universes:
                if u in owner:
                    raise ValueError(
                        f"outputs[{i}]: universe {u} is also sent by outputs[{owner[u]}]"
                    )
                owner[u] = i
        return self


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
    osc: OscConfig = Field(default_factory=OscConfig)
    dmx: DmxConfig = Field(default_factory=DmxConfig)
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
            if dev.transport.kind == "mqtt" and self.mqtt.mode == "off":
                raise ValueError(f"devices.{dev.id}: an mqtt device needs mqtt.mode other than off")
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
    routed = {u for out in config.dmx.outputs for u in out.universes}
    for patched in devices:
        t = patched.transport
        if isinstance(t, DmxTransport) and t.universe not in routed:
            problems.append(
                f"devices.{patched.id}.transport: universe {t.universe} is sent by "
                "no [[dmx.outputs]]"
            )
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
