"""The venue file: which nodes and devices a venue has, and how this service runs.

A venue is a TOML file (examples/venue-demo.toml; the format is docs/interfaces/venue-file.md).
Relative paths in it (profiles, the store, the show) are resolved against the folder the venue
file is in, so a venue folder can be moved as a whole. ``load_venue`` validates the file and
every profile it references and reports every problem it finds as 'file: key: what is wrong',
not just the first.

A large venue is written compactly: a ``[[groups]]`` table stands for ``count`` devices of one
profile, with an id pattern (``"hoist-{n:02}"``), a transport template plus an allocation rule
(consecutive Modbus TCP ports with several units each, DMX addresses packed by the profile's
footprint, consecutive OSC ports) and a ``simulate`` template whose values may be spread over
the group (``{ from = 1000, to = 9000 }``, ``{ cycle = [...] }``). ``expand_venue`` turns the
groups into explicit ``[[devices]]`` before anything else looks at the file: it is a pure
function of the raw TOML (profiles are read only for DMX footprints), so the service and the
simulators (``flytower simulate``) see the same devices. Collisions between expanded and
explicit devices are left to the ordinary checks, which name both devices.
"""

from __future__ import annotations

import math
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.configurations import (
    Configuration,
    ConfigurationSettings,
    axis_info,
    check_configurations,
)
from controller.configurations.model import ConfigName
from controller.motion.config import MachineryConfig, resolve_limits
from controller.show.model import Level
from drivers.model import (
    PROTOCOL_TRANSPORTS,
    AudioTransport,
    ConfigError,
    Device,
    DeviceId,
    DmxTransport,
    MqttTransport,
    Profile,
    Transport,
    find_profile,
    format_validation_error,
    load_profile,
    read_toml,
)
from edge.acoustics_config import AcousticsConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VenueInfo(_Strict):
    id: DeviceId
    name: str = ""


NodeRole = Literal["both", "edge", "controller"]


class NodeConfig(_Strict):
    id: DeviceId
    name: str = ""
    # "both" (the default): runs its own devices and a show, as a single-node venue does.
    # "edge": runs its devices and executes what it is sent. "controller": runs the show and
    # reaches every other node's devices over MQTT (docs/distributed.md).
    role: NodeRole = "both"
    # On a controller: how far ahead a cue's commands to other nodes are sent with their
    # start time, so that every node starts them together (the broker's round trip and more)
    lead_ms: float = Field(default=20.0, ge=0, le=1000, allow_inf_nan=False)


class ApiConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    rate_per_s: float = Field(default=100.0, gt=0, le=100_000, allow_inf_nan=False)
    """REST requests a second per client (a session, a token, or an address where access
    control is off); stops are never limited. Over it: 429 with Retry-After."""
    rate_burst: float = Field(default=200.0, ge=1, le=1_000_000, allow_inf_nan=False)


class AuthConfig(_Strict):
    """Access control (edge/auth.py, docs/api.md "Access control"). On by default: create the
    first admin with ``flytower user add NAME --role admin``."""

    enabled: bool = True
    path: str = "var/auth.sqlite3"  # users, sessions, API tokens (relative to the venue file)
    session_ttl_s: float = Field(default=12 * 3600, ge=60, le=30 * 86400, allow_inf_nan=False)
    login_attempts: int = Field(default=5, ge=1, le=1000)
    """Failed logins allowed per client address and per user name in ``login_window_s``."""
    login_window_s: float = Field(default=60.0, gt=0, le=86400, allow_inf_nan=False)
    allowed_origins: list[str] = Field(default_factory=list, max_length=100)
    """Browser origins, besides the console's own, whose WebSocket connections are accepted
    (e.g. ``https://console.example``). A connection without an Origin (a script) is not a
    browser's and is judged by its credential alone."""
    tls_cert: str | None = None  # PEM certificate chain: serve HTTPS/WSS (with tls_key)
    tls_key: str | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("auth: tls_cert and tls_key go together")
        return self


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
    telemetry_rate: float = Field(default=5000.0, gt=0, le=1_000_000, allow_inf_nan=False)
    """Messages/s cap of the node's live telemetry feed. Over it each point is published less
    often, always with its newest value; the store keeps every reading."""

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
    # The console's layer in the lighting engine's merge (docs/lighting.md): at 100 it merges
    # HTP with cue lists of the same priority; above them, it overrides them.
    priority: int = Field(default=100, ge=0, le=199)


class DmxConfig(_Strict):
    outputs: list[DmxOutputConfig] = Field(default_factory=list)
    input: DmxInputConfig | None = None
    rate_hz: float = Field(default=44.0, ge=1.0, le=1000.0)  # the lighting engine's frame rate
    # A change (a GO) goes out at once in an extra frame rather than at the next deadline
    # (docs/lighting.md, "Early frames"); off: frames only on the fixed rate, as E1.31 §6.6.1
    # asks of a source unless the user configures otherwise.
    early_frames: bool = True

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


class PanicConfig(_Strict):
    """What panic does beyond stopping every list and every axis (docs/playback.md)."""

    fade_s: float = Field(default=1.0, ge=0.0, le=60.0, allow_inf_nan=False)
    """Lighting's fade to the safe look."""
    lighting: list[Level] = Field(default_factory=list, max_length=1000)
    """The safe look: these levels (work lights, house lights) above a blackout of every
    other intensity. Empty: a blackout."""


class TimecodeConfig(_Strict):
    """The timecode the cue engine chases (docs/interfaces/timecode.md, "Service wiring").

    ``artnet``: ArtTimeCode of stream ``artnet_stream``, on the ``[dmx.input]`` socket when it
    receives Art-Net, else on a socket of its own (``artnet_bind``:``artnet_port``, 6454 by
    default). ``mtc``: MIDI timecode from the raw MIDI device ``mtc_device``. The chase
    settings are ``controller.timecode.ChaseConfig``'s."""

    source: Literal["artnet", "mtc", "none"] = "none"
    artnet_stream: int = Field(default=0, ge=0, le=255)
    artnet_bind: str = Field(default="0.0.0.0", min_length=1)
    artnet_port: int | None = Field(default=None, ge=1, le=65535)
    mtc_device: str | None = Field(default=None, min_length=1)
    freewheel_s: float = Field(default=2.0, ge=0, le=3600, allow_inf_nan=False)
    dropout_frames: float = Field(default=4.0, gt=0, le=1000, allow_inf_nan=False)
    relocate_frames: float = Field(default=2.0, gt=0, le=1000, allow_inf_nan=False)
    rearm_on_backward: bool = False

    @model_validator(mode="after")
    def _source_keys(self) -> Self:
        if self.source == "mtc" and self.mtc_device is None:
            raise ValueError("source 'mtc' needs 'mtc_device' (a raw MIDI device)")
        own = {"artnet": {"artnet_stream", "artnet_bind", "artnet_port"}, "mtc": {"mtc_device"}}
        for src, keys in own.items():
            stray = sorted(keys & self.model_fields_set) if self.source != src else []
            if stray:
                raise ValueError(
                    f"{', '.join(stray)}: only for source '{src}' (source is '{self.source}')"
                )
        return self


class InfluxConfig(_Strict):
    """``[telemetry.influxdb]``: mirror every reading into InfluxDB (docs/telemetry.md,
    "InfluxDB sink"). Readings wait in a disk-backed queue (``queue``, an SQLite file relative
    to the venue file) until the server acknowledges them.

    The token is never written in the venue file: ``token_env`` names the environment variable
    that holds it (unset: no token, as VictoriaMetrics and an open InfluxDB 1.x accept).
    Beyond ``queue_max_readings`` or ``queue_max_bytes`` the oldest queued readings are dropped
    and counted; ``high_water`` (a fraction of either limit) raises the queue alarm, which
    clears below ``low_water``."""

    url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=500)
    org: str = Field(default="", max_length=200)
    bucket: str = Field(min_length=1, max_length=200)
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    queue: str = "var/influx-queue.sqlite3"
    queue_max_readings: int = Field(default=10_000_000, ge=1000)
    queue_max_bytes: int = Field(default=2 << 30, ge=1 << 20)
    high_water: float = Field(default=0.8, gt=0, lt=1)
    low_water: float = Field(default=0.6, gt=0, lt=1)
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    flush_interval_s: float = Field(default=1.0, gt=0, le=60, allow_inf_nan=False)
    flush_timeout_s: float = Field(default=5.0, ge=0, le=300, allow_inf_nan=False)
    timeout_s: float = Field(default=10.0, gt=0, le=300, allow_inf_nan=False)
    backoff_min_s: float = Field(default=0.1, gt=0, le=60, allow_inf_nan=False)
    backoff_max_s: float = Field(default=30.0, gt=0, le=3600, allow_inf_nan=False)
    max_future_s: float = Field(default=300.0, ge=0, allow_inf_nan=False)
    max_past_s: float = Field(default=7 * 86400.0, gt=0, allow_inf_nan=False)
    gzip: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low_water >= self.high_water:
            raise ValueError(
                f"low_water ({self.low_water}) must be below high_water ({self.high_water})"
            )
        if self.backoff_min_s > self.backoff_max_s:
            raise ValueError("backoff_min_s must not exceed backoff_max_s")
        return self


IngestProtocol = Literal["mqtt", "modbus"]
INGEST_PROTOCOLS: tuple[IngestProtocol, ...] = ("mqtt", "modbus")


class TelemetryConfig(_Strict):
    store: str = "var/telemetry.sqlite3"
    retention_days: float = Field(default=30, gt=0)
    batch_max: int = Field(default=2000, ge=1, le=100_000)
    queue_size: int = Field(default=10_000, ge=1)
    # While the store takes no writes (a full disk): readings held in memory at most, the
    # oldest dropped and counted beyond (docs/telemetry.md, "A full disk").
    hold_max_readings: int = Field(default=500_000, ge=0)
    # Where the store's writer runs: a thread of the service, or a process of its own
    # (edge/store_process.py), which takes its work off the service's GIL at high rates.
    writer: Literal["thread", "process"] = "thread"
    # --- embedded store: rollup tiers, retention per tier, bad input (edge/store.py;
    # docs/telemetry.md, "Embedded store"). ``retention_days`` above is the raw tier's.
    retention_1s_days: float = Field(default=90, gt=0, allow_inf_nan=False)
    retention_1m_days: float = Field(default=1825, gt=0, allow_inf_nan=False)
    rollup_interval_s: float = Field(default=5.0, gt=0, le=60, allow_inf_nan=False)
    prune_interval_s: float = Field(default=60.0, gt=0, le=86400, allow_inf_nan=False)
    prune_chunk: int = Field(default=20_000, ge=100, le=1_000_000)
    future_tolerance_s: float = Field(default=300.0, gt=0, le=86400, allow_inf_nan=False)
    # --- end of the embedded store's fields
    # Ingest workers (edge/ingest.py): mapped MQTT devices read in this many processes of
    # their own, which write every reading to the store process and send the service each
    # point's newest value ``ingest_latest_hz`` times a second. 0: read in the service.
    ingest_workers: int = Field(default=0, ge=0, le=16)
    ingest_latest_hz: float = Field(default=2.0, ge=0.5, le=50, allow_inf_nan=False)
    # Which devices the workers read: mapped MQTT devices, polled Modbus TCP devices with no
    # commands (not axes), or both. On a machine with few cores, MQTT alone may cost less.
    ingest_protocols: list[IngestProtocol] = Field(
        default_factory=lambda: list(INGEST_PROTOCOLS), min_length=1, max_length=2
    )
    influxdb: InfluxConfig | None = None

    @model_validator(mode="after")
    def _workers_write_to_the_store_process(self) -> Self:
        if self.ingest_workers and self.writer != "process":
            raise ValueError(
                'ingest_workers needs writer = "process": the workers write to the store '
                "process, not to a thread of the service"
            )
        if self.ingest_workers and self.influxdb is not None:
            raise ValueError(
                "ingest_workers cannot be used with [telemetry.influxdb]: the workers' "
                "readings reach only the embedded store, and the mirror would miss them"
            )
        return self


# --- [alarms] (edge/alarms.py, docs/telemetry.md "Alarms") ------------------------------------

AlarmSeverity = Literal["critical", "major", "minor", "warning", "info"]
AlarmRuleId = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]
_POINT_KINDS = ("high", "low", "rate", "stale", "fault")


class AlarmRuleConfig(_Strict):
    """One ``[[alarms.rules]]`` entry: which devices and point, what condition, how severe.

    A rule with the id of a built-in default replaces it; ``enabled = false`` disables it."""

    id: AlarmRuleId
    kind: Literal["high", "low", "rate", "stale", "offline", "fault"]
    severity: AlarmSeverity = "major"
    enabled: bool = True
    message: str = Field(default="", max_length=500)
    # which devices: all of these that are given must match (none given: every device)
    devices: list[DeviceId] = Field(default_factory=list, max_length=10_000)
    device_class: list[str] = Field(default_factory=list, max_length=100)
    profile: list[str] = Field(default_factory=list, max_length=100)
    point: str | None = Field(default=None, min_length=1, max_length=200)
    # high / low: enter beyond limit, leave once back past limit ∓ deadband
    limit: float | None = Field(default=None, allow_inf_nan=False)
    deadband: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    on_delay_s: float = Field(default=0.0, ge=0, le=86400, allow_inf_nan=False)
    # rate: |Δvalue / Δt| over window_s above rate_per_s (direction: rise, fall or both)
    rate_per_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    window_s: float = Field(default=1.0, gt=0, le=3600, allow_inf_nan=False)
    direction: Literal["rise", "fall", "both"] = "both"
    # stale: no good reading of the point for stale_s
    stale_s: float | None = Field(default=None, gt=0, le=86400, allow_inf_nan=False)
    # fault: the value is a code; any nonzero code (or, with nonzero = false, one of codes)
    codes: dict[str, str] = Field(default_factory=dict, max_length=1000)
    nonzero: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        k = self.kind
        if k in _POINT_KINDS and self.point is None:
            raise ValueError(f"a '{k}' rule needs a 'point'")
        if k == "offline" and self.point is not None:
            raise ValueError("an 'offline' rule is about a device: it takes no 'point'")
        if k in ("high", "low") and self.limit is None:
            raise ValueError(f"a '{k}' rule needs a 'limit'")
        if k == "rate" and self.rate_per_s is None:
            raise ValueError("a 'rate' rule needs 'rate_per_s'")
        if k == "rate" and self.deadband >= self.rate_per_s:  # type: ignore[operator]
            raise ValueError("a 'rate' rule's 'deadband' must be below 'rate_per_s'")
        if k == "stale" and self.stale_s is None:
            raise ValueError("a 'stale' rule needs 'stale_s'")
        if k == "fault" and not self.nonzero and not self.codes:
            raise ValueError("a 'fault' rule with nonzero = false needs 'codes'")
        for code in self.codes:
            try:
                int(code)
            except ValueError:
                raise ValueError(f"fault code '{code[:20]}' is not an integer") from None
        return self


class AlarmWebhookConfig(_Strict):
    """An HTTP endpoint that receives every alarm event as a JSON POST."""

    url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=500)
    min_severity: AlarmSeverity = "info"
    timeout_s: float = Field(default=5.0, gt=0, le=300, allow_inf_nan=False)
    queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    max_attempts: int = Field(default=10, ge=1, le=1000)
    backoff_min_s: float = Field(default=0.5, gt=0, le=60, allow_inf_nan=False)
    backoff_max_s: float = Field(default=60.0, gt=0, le=3600, allow_inf_nan=False)
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class AlarmsConfig(_Strict):
    enabled: bool = True
    store: str = "var/alarms.sqlite3"
    defaults: bool = True  # the built-in rules per device class (edge/alarms.py DEFAULT_RULES)
    rules: list[AlarmRuleConfig] = Field(default_factory=list, max_length=10_000)
    webhooks: list[AlarmWebhookConfig] = Field(default_factory=list, max_length=20)
    mqtt: bool = True  # retained states and events under …/{node}/$alarms
    tick_s: float = Field(default=0.1, ge=0.01, le=1.0, allow_inf_nan=False)
    max_shelve_s: float = Field(default=7 * 86400.0, gt=0, allow_inf_nan=False)
    history_days: float = Field(default=365.0, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        ids = [r.id for r in self.rules]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"alarm rule ids must be unique: {', '.join(dup)} repeated")
        return self


# --- [maintenance] (edge/maintenance.py, docs/telemetry.md "Maintenance") -----------------------


class ServiceIntervalConfig(_Strict):
    """Service intervals of a device class or device: any of these (none: no interval).
    A device's own table overrides its class's field by field."""

    run_hours: float | None = Field(default=None, gt=0, le=1e7, allow_inf_nan=False)
    cycles: int | None = Field(default=None, gt=0, le=10**12)
    distance: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # profile unit
    brake_operations: int | None = Field(default=None, gt=0, le=10**12)
    lamp_hours: float | None = Field(default=None, gt=0, le=1e7, allow_inf_nan=False)
    days: float | None = Field(default=None, gt=0, le=36500, allow_inf_nan=False)
    due_at: float = Field(default=0.9, gt=0, le=1, allow_inf_nan=False)  # "due" from here


class MaintenanceConfig(_Strict):
    store: str = "var/maintenance.sqlite3"
    flush_interval_s: float = Field(default=5.0, gt=0, le=3600, allow_inf_nan=False)
    max_gap_s: float = Field(default=5.0, gt=0, le=3600, allow_inf_nan=False)
    classes: dict[str, ServiceIntervalConfig] = Field(default_factory=dict, max_length=1000)
    devices: dict[DeviceId, ServiceIntervalConfig] = Field(default_factory=dict, max_length=10_000)


class SimulationConfig(_Strict):
    """How ``flytower simulate`` runs this venue's simulators; the service ignores it."""

    control_port: int = Field(default=18890, ge=1, le=65535)
    processes: int = Field(default=1, ge=1, le=64)


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
    auth: AuthConfig = Field(default_factory=AuthConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    osc: OscConfig = Field(default_factory=OscConfig)
    dmx: DmxConfig = Field(default_factory=DmxConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    timecode: TimecodeConfig = Field(default_factory=TimecodeConfig)
    panic: PanicConfig = Field(default_factory=PanicConfig)
    machinery: MachineryConfig = Field(default_factory=MachineryConfig)
    acoustics: AcousticsConfig | None = None  # the sound field (edge/acoustics.py)
    alarms: AlarmsConfig = Field(default_factory=AlarmsConfig)  # edge/alarms.py
    maintenance: MaintenanceConfig = Field(default_factory=MaintenanceConfig)  # edge/maintenance.py
    # Named whole-venue setups and how switches run (docs/configurations.md).
    configurations: dict[ConfigName, Configuration] = Field(default_factory=dict, max_length=200)
    configuration_settings: ConfigurationSettings = Field(default_factory=ConfigurationSettings)
    show: str | None = None
    profile_dirs: list[str] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Self:
        nodes = [n.id for n in self.nodes]
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"nodes: duplicate node id in {nodes}")
        controllers = [n.id for n in self.nodes if n.role == "controller"]
        if len(controllers) > 2:
            raise ValueError(
                f"nodes: {len(controllers)} controllers ({', '.join(controllers)}); a venue has "
                "one, or two: a primary and its hot standby"
            )
        for n in self.nodes:
            if n.role == "controller" and self.mqtt.mode == "off":
                raise ValueError(
                    f"nodes.{n.id}: a controller reaches the other nodes over MQTT, "
                    "so mqtt.mode cannot be off"
                )
        seen: set[str] = set()
        for dev in self.devices:
            if dev.id in seen:
                raise ValueError(f"devices: id '{dev.id}' is used twice")
            seen.add(dev.id)
            if dev.node is not None and dev.node not in nodes:
                raise ValueError(f"devices.{dev.id}.node: no node '{dev.node}' (nodes: {nodes})")
            if dev.transport.kind == "mqtt" and self.mqtt.mode == "off":
                raise ValueError(f"devices.{dev.id}: an mqtt device needs mqtt.mode other than off")
        if self.acoustics is not None:
            self._acoustics_device(self.acoustics)
        return self

    def _acoustics_device(self, ac: AcousticsConfig) -> None:
        dev = next((d for d in self.devices if d.id == ac.device), None)
        if dev is None or not isinstance(dev.transport, AudioTransport):
            raise ValueError(f"acoustics.device: no audio device '{ac.device}'")
        t = dev.transport
        for z in ac.zones:
            if max(z.device_inputs()) > t.inputs or max(z.device_outputs()) > t.outputs:
                raise ValueError(
                    f"acoustics: zone {z.name} names channels beyond device '{dev.id}' "
                    f"({t.inputs} inputs, {t.outputs} outputs)"
                )
        if ac.occupancy is not None:
            for key in ("point", "fault_point"):
                name = getattr(ac.occupancy, key)
                device = None if name is None else name.split("/", 1)[0]
                if device is not None and all(d.id != device for d in self.devices):
                    raise ValueError(f"acoustics.occupancy.{key}: no device '{device}' ({name!r})")

    @model_validator(mode="after")
    def _timecode_socket(self) -> Self:
        tc, dmx = self.timecode, self.dmx
        if tc.source != "artnet":
            return self
        shared = dmx.input is not None and "artnet" in dmx.input.protocols
        if shared:
            assert dmx.input is not None
            port = dmx.input.udp_port or 6454
            if {"artnet_bind", "artnet_port"} & tc.model_fields_set:
                raise ValueError(
                    "timecode: ArtTimeCode arrives on the [dmx.input] Art-Net socket "
                    f"(port {port}); remove timecode.artnet_bind and timecode.artnet_port"
                )
            return self
        # Without a [dmx.input], an Art-Net output binds 6454 itself (edge/dmx.py, for ArtPoll
        # replies); two sockets on one port would split the timecode between them.
        clash = [
            i
            for i, out in enumerate(dmx.outputs)
            if out.protocol == "artnet" and out.udp_port is None
        ]
        if dmx.input is None and clash and (tc.artnet_port or 6454) == 6454:
            raise ValueError(
                f"timecode: dmx.outputs[{clash[0]}] binds Art-Net port 6454 too; add a "
                "[dmx.input] with protocols = ['artnet'] (timecode then shares its socket) "
                "or set timecode.artnet_port"
            )
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
    """Validate parsed venue data; ``path`` names it in errors and anchors relative paths.

    Groups are expanded first (``expand_venue``)."""
    raw = data
    data, origins = _expand(data, path)
    try:
        config = VenueConfig.model_validate(data)
    except ValidationError as exc:
        lines = _with_device_ids(format_validation_error(exc), data, origins)
        raise ConfigError(path, list(dict.fromkeys(lines))) from exc
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
        if isinstance(t, MqttTransport) and t.node is not None:
            continue  # a node serves many devices, each under its own id (mqtt.md §2)
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
    _, machinery_problems = resolve_limits(config.machinery, {d.id: d.profile for d in devices})
    problems.extend(machinery_problems)
    fixtures = {d.id for d in devices if isinstance(d.transport, DmxTransport)}
    for i, lv in enumerate(config.panic.lighting):
        if lv.fixture is not None and lv.fixture not in fixtures:
            problems.append(f"panic.lighting[{i}].fixture: no DMX fixture '{lv.fixture}'")
        if lv.channel is not None and lv.channel.universe not in routed:
            problems.append(
                f"panic.lighting[{i}].channel: universe {lv.channel.universe} is sent by "
                "no [[dmx.outputs]]"
            )
    problems.extend(_check_configurations(config, devices, raw, path))
    if problems:
        raise ConfigError(path, problems)
    return Venue(path, config, devices)


def _check_configurations(
    config: VenueConfig, devices: list[Device], data: dict[str, Any], path: Path
) -> list[str]:
    """``[configurations.NAME]`` against the devices: axes, travel, fixtures, groups."""
    if not config.configurations:
        return []
    axes = {d.id: info for d in devices if (info := axis_info(d)) is not None}
    fixtures = [d for d in devices if isinstance(d.transport, DmxTransport)]
    raw_groups = data.get("groups")
    if raw_groups is None and path.is_file():
        # Already expanded (the HIL rig, a preview): the labels are in the venue file, where
        # the service's lighting reads them too (edge/api_playback.py venue_groups).
        try:
            raw_groups = read_toml(path).get("groups")
        except ConfigError:
            raw_groups = None
    labels = {
        g["label"]
        for g in (raw_groups if isinstance(raw_groups, list) else [])
        if isinstance(g, dict) and isinstance(g.get("label"), str)
    }
    # A group is a venue [[groups]] label or a fixture class (the lighting patch's groups).
    groups = labels | {d.profile.device_class for d in fixtures}
    routed = {u for out in config.dmx.outputs for u in out.universes}
    return check_configurations(
        config.configurations,
        axes,
        [d.id for d in config.devices],
        [d.id for d in fixtures],
        groups,
        routed,
    )


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


def _with_device_ids(
    lines: list[str], data: dict[str, Any], origins: list[str | None] | None = None
) -> list[str]:
    """'devices.3.poll_hz' means little to a person; 'devices[3] (hoist-4).poll_hz' does.

    A device expanded from a group is reported as its group (``origins[i]``), where the
    mistake was made: 'groups[1] (hoists).poll_hz', once for the whole group (callers drop
    the repeats)."""
    devices = data.get("devices")
    out = []
    for line in lines:
        if line.startswith("devices[") and isinstance(devices, list):
            index = line[len("devices[") :].split("]", 1)[0]
            if index.isdigit() and int(index) < len(devices):
                origin = origins[int(index)] if origins else None
                dev = devices[int(index)]
                name = dev.get("id") if isinstance(dev, dict) else None
                if origin is not None:
                    line = line.replace(f"devices[{index}]", origin, 1)
                elif isinstance(name, str):
                    line = line.replace(f"devices[{index}]", f"devices[{index}] ({name})", 1)
        out.append(line)
    return out


# --- compact group specs ----------------------------------------------------------------------

MAX_DEVICES = 10_000  # a venue file, groups expanded; beyond it a typo in `count` is likelier
PATTERN_FIELDS = ("n", "i")  # n: the device's number (from `first`), i: its index in the group
_FORMAT_SPEC = re.compile(r"^0?[1-9]?d?$")  # "", "2", "02", "03d": a zero-padded width at most


class _GroupAlloc(BaseModel):
    """The allocation keys of a transport template; the other keys are the devices' own."""

    model_config = ConfigDict(extra="allow", frozen=True)


class _TcpAlloc(_GroupAlloc):
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=255)
    units_per_port: int = Field(default=1, ge=1, le=255)


class _RtuAlloc(_GroupAlloc):
    port: str | list[str] = Field(min_length=1)
    unit: int = Field(default=1, ge=1, le=247)
    units_per_port: int | None = Field(default=None, ge=1, le=247)


class _DmxAlloc(_GroupAlloc):
    universe: int = Field(default=1, ge=1, le=63999)
    last_universe: int | None = Field(default=None, ge=1, le=63999)
    address: int = Field(default=1, ge=1, le=512)
    gap: int = Field(default=0, ge=0, le=511)
    align: int = Field(default=1, ge=1, le=512)
    per_universe: int | None = Field(default=None, ge=1, le=512)


class _OscAlloc(_GroupAlloc):
    port: int = Field(ge=1, le=65535)


_ALLOC_KEYS: dict[str, type[_GroupAlloc]] = {
    "modbus-tcp": _TcpAlloc,
    "modbus-rtu": _RtuAlloc,
    "dmx": _DmxAlloc,
    "osc": _OscAlloc,
}


class GroupConfig(_Strict):
    """``count`` devices of one profile (docs/interfaces/venue-file.md, "Groups")."""

    label: str = Field(default="", max_length=64)
    id: str = Field(min_length=1, max_length=200)
    name: str = Field(default="", max_length=200)
    profile: str = Field(min_length=1)
    count: int = Field(ge=1, le=MAX_DEVICES)
    first: int = Field(default=1, ge=0, le=1_000_000)
    node: DeviceId | None = None
    poll_hz: float | None = Field(default=None, gt=0, le=1000)
    transport: dict[str, Any]
    simulate: dict[str, Any] | None = None


# Allocation keys that are rules for the group, not keys of any device's transport.
_RULE_KEYS = frozenset({"units_per_port", "last_universe", "gap", "align", "per_universe"})
# Where the allocation rule puts one device of a group: the transport keys it sets.
_Slot = dict[str, Any]


def expand_venue(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """The venue ``data`` (raw TOML) with its ``[[groups]]`` expanded into ``[[devices]]``.

    Pure: the input is not modified; the result has no ``groups`` key and the explicit devices
    first, then each group's devices in order. DMX groups read their profile for its
    footprint (``profile_dirs`` are searched as the venue does). Every problem is reported in
    one ConfigError: 'groups[2] (hoists).transport.port: ...'."""
    return _expand(data, path)[0]


def _expand(data: dict[str, Any], path: Path) -> tuple[dict[str, Any], list[str | None]]:
    """``expand_venue`` plus, per device, the group it came from (None: written explicitly)."""
    groups = data.get("groups")
    devices = data.get("devices", [])
    if groups is None:
        return data, [None] * (len(devices) if isinstance(devices, list) else 0)
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise ConfigError(path, ["groups: expected an array of tables ([[groups]])"])
    if not isinstance(devices, list):
        raise ConfigError(path, ["devices: expected an array of tables ([[devices]])"])
    problems: list[str] = []
    parsed: list[tuple[str, GroupConfig]] = []
    for g, raw in enumerate(groups):
        where = _group_where(g, raw)
        try:
            parsed.append((where, GroupConfig.model_validate(raw)))
        except ValidationError as exc:
            problems.extend(format_validation_error(exc, prefix=where))
    total = len(devices) + sum(group.count for _, group in parsed)
    if total > MAX_DEVICES:
        problems.append(f"groups: {total} devices in all, more than the {MAX_DEVICES} allowed")
        raise ConfigError(path, problems)
    search = _profile_search(data, path)
    out_devices: list[Any] = list(devices)
    origins: list[str | None] = [None] * len(devices)
    for where, group in parsed:
        expanded, group_problems = _expand_group(where, group, search, path)
        problems.extend(group_problems)
        out_devices.extend(expanded)
        origins.extend([where] * len(expanded))
    if problems:
        raise ConfigError(path, problems)
    out = {k: v for k, v in data.items() if k != "groups"}
    out["devices"] = out_devices
    return out, origins


def _group_where(index: int, raw: dict[str, Any]) -> str:
    label = raw.get("label") or raw.get("id")
    return f"groups[{index}] ({label})" if isinstance(label, str) else f"groups[{index}]"


def _profile_search(data: dict[str, Any], path: Path) -> list[Path]:
    dirs = data.get("profile_dirs", [])
    return [path.parent / d for d in dirs if isinstance(d, str)] if isinstance(dirs, list) else []


def check_pattern(pattern: str) -> str | None:
    """Why ``pattern`` is not a safe device pattern, or None.

    Only ``{n}`` and ``{i}`` with an optional zero-padded width (``{n:02}``) are allowed:
    ``str.format`` would otherwise read attributes and items (``{n.__class__}``) and take
    arbitrary widths (``{n:999999999}``)."""
    try:
        fields = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        return f"bad pattern {pattern!r}: {exc} (write {{{{ and }}}} for literal braces)"
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in PATTERN_FIELDS:
            return f"bad pattern {pattern!r}: only {{n}} and {{i}} may be used, not {{{name}}}"
        if conversion is not None or not _FORMAT_SPEC.match(spec or ""):
            return (
                f"bad pattern {pattern!r}: a field takes at most a zero-padded width "
                f"({{{name}:02}}), not {'!' + conversion if conversion else ':' + (spec or '')}"
            )
    return None


def _expand_group(
    where: str, group: GroupConfig, search: list[Path], path: Path
) -> tuple[list[dict[str, Any]], list[str]]:
    problems: list[str] = []
    patterns = {"id": group.id, "name": group.name}
    templates = {f"transport.{k}": v for k, v in group.transport.items() if isinstance(v, str)}
    templates.update(
        {f"simulate.{k}": v for k, v in (group.simulate or {}).items() if isinstance(v, str)}
    )
    for key, text in [*patterns.items(), *templates.items()]:
        why = check_pattern(text)
        if why is not None:
            problems.append(f"{where}.{key}: {why}")
    spreads, spread_problems = _spreads(where, group)
    problems.extend(spread_problems)
    slots, alloc_problems = _allocate(where, group, search, path)
    problems.extend(alloc_problems)
    if problems:
        return [], problems
    out: list[dict[str, Any]] = []
    for i, slot in enumerate(slots):
        n = group.first + i

        def fmt(value: Any, n: int = n, i: int = i) -> Any:
            return value.format(n=n, i=i) if isinstance(value, str) else value

        dev: dict[str, Any] = {"id": fmt(group.id), "profile": group.profile}
        if group.name:
            dev["name"] = fmt(group.name)
        if group.node is not None:
            dev["node"] = group.node
        if group.poll_hz is not None:
            dev["poll_hz"] = group.poll_hz
        transport = {k: fmt(v) for k, v in group.transport.items() if k not in _RULE_KEYS}
        transport.update(slot)
        dev["transport"] = transport
        if group.simulate is not None:
            dev["simulate"] = {
                k: spreads[k](i) if k in spreads else fmt(v) for k, v in group.simulate.items()
            }
        out.append(dev)
    return out, problems


def _spreads(where: str, group: GroupConfig) -> tuple[dict[str, Any], list[str]]:
    """The ``simulate`` values spread over the group, as functions of the device index."""
    spreads: dict[str, Any] = {}
    problems: list[str] = []
    last = max(1, group.count - 1)
    for key, value in (group.simulate or {}).items():
        if not isinstance(value, dict) or not {"from", "to", "cycle"} & value.keys():
            continue  # an ordinary value (a table parameter passes through as it is)
        at = f"{where}.simulate.{key}"
        if set(value) == {"cycle"}:
            cycle = value["cycle"]
            if not isinstance(cycle, list) or not cycle:
                problems.append(f"{at}.cycle: expected a non-empty array")
            else:
                spreads[key] = lambda i, c=cycle: c[i % len(c)]
        elif set(value) == {"from", "to"}:
            lo, hi = value["from"], value["to"]
            if not all(_finite_number(v) for v in (lo, hi)):
                problems.append(f"{at}: 'from' and 'to' must be finite numbers, not {lo!r}, {hi!r}")
            elif isinstance(lo, int) and isinstance(hi, int):
                # Whole ends give whole steps: an int parameter must not receive 1333.33.
                spreads[key] = lambda i, a=lo, b=hi: a + round((b - a) * i / last)
            else:
                spreads[key] = lambda i, a=lo, b=hi: a + (b - a) * i / last
        else:
            problems.append(
                f"{at}: a spread is {{ from = A, to = B }} or {{ cycle = [...] }}, "
                f"not keys {sorted(value)}"
            )
    return spreads, problems


def _finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _allocate(
    where: str, group: GroupConfig, search: list[Path], path: Path
) -> tuple[list[_Slot], list[str]]:
    """Per device, the transport keys the group's allocation rule gives it."""
    kind = group.transport.get("kind")
    alloc_model = _ALLOC_KEYS.get(kind) if isinstance(kind, str) else None
    if alloc_model is None:  # mqtt, audio, or a bad kind the device check will name
        return [{} for _ in range(group.count)], []
    try:
        alloc = alloc_model.model_validate(group.transport)
    except ValidationError as exc:
        return [], format_validation_error(exc, prefix=f"{where}.transport")
    at = f"{where}.transport"
    if isinstance(alloc, _TcpAlloc):
        return _allocate_tcp(at, group.count, alloc)
    if isinstance(alloc, _RtuAlloc):
        return _allocate_rtu(at, group.count, alloc)
    if isinstance(alloc, _OscAlloc):
        last_port = alloc.port + group.count - 1
        if last_port > 65535:
            return [], [f"{at}.port: {group.count} devices from port {alloc.port} run past 65535"]
        return [({"port": alloc.port + i}) for i in range(group.count)], []
    assert isinstance(alloc, _DmxAlloc)
    footprint, why = _footprint(group.profile, search, path)
    if footprint is None:
        return [], [f"{where}.profile: {why}"]
    return _allocate_dmx(at, group.count, footprint, alloc)


def _allocate_tcp(at: str, count: int, alloc: _TcpAlloc) -> tuple[list[_Slot], list[str]]:
    per_port = min(alloc.units_per_port, count)
    problems = []
    if alloc.unit + per_port - 1 > 255:
        problems.append(
            f"{at}.units_per_port: units {alloc.unit}..{alloc.unit + per_port - 1} run past 255"
        )
    last_port = alloc.port + (count - 1) // alloc.units_per_port
    if last_port > 65535:
        problems.append(
            f"{at}.port: {count} devices at {alloc.units_per_port} per port from port "
            f"{alloc.port} need ports up to {last_port}, past 65535"
        )
    if problems:
        return [], problems
    return [
        {
            "port": alloc.port + i // alloc.units_per_port,
            "unit": alloc.unit + i % alloc.units_per_port,
        }
        for i in range(count)
    ], []


def _allocate_rtu(at: str, count: int, alloc: _RtuAlloc) -> tuple[list[_Slot], list[str]]:
    lines = [alloc.port] if isinstance(alloc.port, str) else alloc.port
    per_line = alloc.units_per_port or -(-count // len(lines))
    if alloc.unit + min(per_line, count) - 1 > 247:
        return [], [
            f"{at}.units_per_port: units {alloc.unit}..{alloc.unit + per_line - 1} on a line "
            "run past 247"
        ]
    if (count - 1) // per_line >= len(lines):
        return [], [
            f"{at}.port: {count} devices at {per_line} per line need "
            f"{-(-count // per_line)} serial lines, {len(lines)} given"
        ]
    return [
        ({"port": lines[i // per_line], "unit": alloc.unit + i % per_line}) for i in range(count)
    ], []


def _allocate_dmx(
    at: str, count: int, footprint: int, alloc: _DmxAlloc
) -> tuple[list[_Slot], list[str]]:
    """Pack fixtures into consecutive universes: from ``address`` (each start address aligned
    to a multiple of ``align`` counted from 1), ``gap`` free channels after each, at most
    ``per_universe`` to a universe; a fixture that would cross channel 512 opens the next."""
    last_universe = alloc.last_universe or 63999
    if last_universe < alloc.universe:
        return [], [f"{at}.last_universe: {last_universe} is before universe {alloc.universe}"]

    def aligned(address: int) -> int:
        return address + (-(address - 1) % alloc.align)

    first = aligned(alloc.address)
    if first + footprint - 1 > 512:
        return [], [
            f"{at}.address: a {footprint}-channel fixture at address {first} runs past channel 512"
        ]
    slots: list[_Slot] = []
    universe, address, in_universe = alloc.universe, first, 0
    for _ in range(count):
        address = aligned(address)
        full = alloc.per_universe is not None and in_universe == alloc.per_universe
        if full or address + footprint - 1 > 512:
            universe, address, in_universe = universe + 1, first, 0
        if universe > last_universe:
            return [], [
                f"{at}: {count} fixtures of {footprint} channels do not fit in universes "
                f"{alloc.universe}..{last_universe} ({len(slots)} do)"
            ]
        slots.append({"universe": universe, "address": address})
        address += footprint + alloc.gap
        in_universe += 1
    return slots, []


def _footprint(profile: str, search: list[Path], path: Path) -> tuple[int | None, str]:
    ref = profile if not profile.endswith(".toml") else str(path.parent / profile)
    try:
        loaded = load_profile(find_profile(ref, search))
    except FileNotFoundError:
        return None, f"no profile '{profile}'"
    except ConfigError as exc:
        return None, f"profile '{profile}' is not valid: {exc.problems[0]}"
    if loaded.footprint is None:
        return None, f"profile '{profile}' is a {loaded.protocol} profile, not a DMX fixture"
    return loaded.footprint, ""
