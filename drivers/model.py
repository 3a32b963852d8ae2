"""The unified device model: one vocabulary for every piece of equipment.

A *profile* (a TOML file in ``drivers/profiles/``) describes a device type: its points, its
commands and how its health is judged. A *device* is one instance of a profile at a transport
address. Drivers turn wire traffic into *readings* and command calls into wire writes; everything
above ``drivers/`` (controller, telemetry, API) sees only these types, never a protocol.

Profiles are validated with pydantic when they are loaded, and every error names the file, the
key (or line, for TOML syntax errors) and what is wrong, because a profile is written by a person
who has to find the mistake.
"""

from __future__ import annotations

import math
import operator
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROFILE_DIR = Path(__file__).parent / "profiles"

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]
DeviceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Value = float | int | bool | str


class Quality(StrEnum):
    """How far a reading can be trusted (OPC UA's three top-level quality classes)."""

    GOOD = "good"
    STALE = "stale"  # the last good value, older than the point's staleness limit
    BAD = "bad"  # no value: the read failed or the device reported an error


class Access(StrEnum):
    R = "r"
    W = "w"
    RW = "rw"

    @property
    def readable(self) -> bool:
        return self is not Access.W

    @property
    def writable(self) -> bool:
        return self is not Access.R


class ValueType(StrEnum):
    FLOAT = "float"
    INT = "int"
    BOOL = "bool"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- wire addresses -------------------------------------------------------------------------

ModbusEncoding = Literal["int16", "uint16", "int32", "uint32", "float32", "bool"]
_REGISTER_WIDTH: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "bool": 1,
}


class ModbusWire(_Strict):
    """Where a point lives in a Modbus device, and how its raw value maps to engineering units.

    ``value = raw * scale + offset``. ``bit`` selects one bit of a 16-bit register (a bit field
    of a status or control word); coils and discrete inputs are addressed as single bits.
    """

    table: Literal["holding", "input", "coil", "discrete"] = "holding"
    address: int = Field(ge=0, le=65535)
    encoding: ModbusEncoding = "uint16"
    word_order: Literal["big", "little"] = "big"
    bit: int | None = Field(default=None, ge=0, le=15)
    scale: float = 1.0
    offset: float = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.scale == 0 or not math.isfinite(self.scale) or not math.isfinite(self.offset):
            raise ValueError("scale must be finite and non-zero, offset finite")
        bit_table = self.table in ("coil", "discrete")
        if bit_table and self.encoding != "bool":
            raise ValueError(f"a {self.table} holds one bit: encoding must be 'bool'")
        if self.bit is not None and (bit_table or self.encoding not in ("uint16", "int16")):
            raise ValueError("'bit' selects a bit of a 16-bit register (uint16/int16)")
        if self.encoding == "bool" and not bit_table:
            raise ValueError(
                "encoding 'bool' is for coils and discrete inputs; use 'bit' in a register"
            )
        if self.address + self.width - 1 > 65535:
            raise ValueError("the value runs past register 65535")
        return self

    @property
    def width(self) -> int:
        """Number of registers (or bits, for coil tables) the value occupies."""
        return _REGISTER_WIDTH[self.encoding]

    @property
    def writable_table(self) -> bool:
        return self.table in ("holding", "coil")


class MqttWire(_Strict):
    """Where a third-party MQTT device keeps a point (a device that does not speak our schema).

    ``topic`` is relative to the device's ``base`` topic unless it starts with ``/``; empty, it
    is the base topic itself (zigbee2mqtt publishes a device's JSON there); ``field``
    is a dotted path into a JSON object payload (``None``: the whole payload is the value);
    ``values`` maps payload strings to values (``"ON"`` -> true). Writable points say where a
    write goes: ``set_topic`` (relative like ``topic``) and ``set_field`` (``None``: the bare
    value is the payload); a value that ``values`` names is written as its payload string.
    """

    topic: str = Field(default="", max_length=200, pattern=r"^[^#+\x00]*$")
    field: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_$@-]+(\.[A-Za-z0-9_$@-]+)*$")
    values: dict[str, float | int | bool] = Field(default_factory=dict)
    set_topic: str | None = Field(default=None, max_length=200, pattern=r"^[^#+\x00]+$")
    set_field: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_$@-]+$")


class DmxWire(_Strict):
    """Where a point lives in a DMX fixture's footprint (docs/interfaces/dmx.md).

    ``offset`` is 1-based within the footprint. A 16-bit value takes ``offset`` (coarse) and
    ``offset + 1`` (fine). The point's ``min``/``max`` map linearly onto the full DMX range
    (0..255 or 0..65535); without them the value is the raw DMX value. ``merge`` says how two
    sources of the same channel combine: HTP (highest takes precedence, for intensities) or
    LTP (latest, for positions and colours). ``default`` is the raw value when nothing drives
    the channel (a pan at centre is 32768, not 0).
    """

    offset: int = Field(ge=1, le=512)
    bits: Literal[8, 16] = 8
    merge: Literal["htp", "ltp"] = "ltp"
    default: int = Field(default=0, ge=0, le=65535)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.offset + self.channels - 1 > 512:
            raise ValueError("the value runs past channel 512")
        if self.default > (1 << self.bits) - 1:
            raise ValueError(f"default {self.default} does not fit in {self.bits} bits")
        return self

    @property
    def channels(self) -> int:
        return self.bits // 8


class OscWire(_Strict):
    """The OSC address of a point on a device that speaks OSC (a DSP matrix, a console)."""

    address: str = Field(pattern=r"^/[!-~]{1,200}$")
    type: Literal["f", "i", "s", "T"] = "f"


# --- points and commands --------------------------------------------------------------------


class PointSpec(_Strict):
    """One named value of a device: a measurement, a setpoint or a status bit."""

    name: Identifier
    unit: str = ""
    dtype: ValueType = ValueType.FLOAT
    min: float | None = None
    max: float | None = None
    access: Access = Access.R
    description: str = ""
    stale_after_s: float | None = Field(default=None, gt=0)
    modbus: ModbusWire | None = None
    mqtt: MqttWire | None = None
    dmx: DmxWire | None = None
    osc: OscWire | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.modbus is not None:
            if self.access.writable and not self.modbus.writable_table:
                raise ValueError(
                    f"a writable point cannot live in the read-only {self.modbus.table} table"
                )
            if self.access.writable and self.modbus.bit is not None:
                raise ValueError(
                    "bit fields are read-only (a bit write would need a racy "
                    "read-modify-write); map a control word as a whole register"
                )
            if (
                self.dtype is ValueType.BOOL
                and self.modbus.bit is None
                and self.modbus.encoding != "bool"
            ):
                raise ValueError("a bool point needs 'bit' or a coil/discrete table")
        return self

    def check_range(self, value: float) -> str | None:
        """Why ``value`` is outside this point's range, or None if it is inside."""
        return _range_reason(value, self.min, self.max, self.unit)


def _range_reason(value: float, lo: float | None, hi: float | None, unit: str) -> str | None:
    if lo is not None and value < lo:
        return f"{value:g} is below the minimum {lo:g} {unit}".rstrip()
    if hi is not None and value > hi:
        return f"{value:g} is above the maximum {hi:g} {unit}".rstrip()
    return None


class ArgSpec(_Strict):
    dtype: ValueType = ValueType.FLOAT
    unit: str = ""
    min: float | None = None
    max: float | None = None
    default: float | int | bool | None = None
    description: str = ""


class WriteSpec(_Strict):
    """One write a command makes: a point takes an argument's value or a constant."""

    point: Identifier
    arg: Identifier | None = None
    value: float | int | bool | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.arg is None) == (self.value is None):
            raise ValueError("a write takes exactly one of 'arg' or 'value'")
        return self


class CommandSpec(_Strict):
    name: Identifier
    description: str = ""
    args: dict[Identifier, ArgSpec] = Field(default_factory=dict)
    writes: list[WriteSpec] = Field(min_length=1)
    # Motion commands always pass the safety supervisor (controller/); drivers only refuse
    # what the profile itself forbids (ranges).
    moves_machinery: bool = False


class HealthSpec(_Strict):
    """How availability is judged for the device."""

    kind: Literal["poll", "heartbeat", "lwt", "timeout"] = "poll"
    offline_after_failures: int = Field(default=3, ge=1, le=100)


class HeartbeatSpec(_Strict):
    """A counter the driver writes so the device can tell that its master is alive."""

    point: Identifier
    period_ms: int = Field(default=50, ge=5, le=5000)


class Profile(_Strict):
    """A device type. Adding a product is a new profile, not new code."""

    id: Identifier
    vendor: str = ""
    model: str = ""
    device_class: Identifier
    protocol: Literal["modbus", "mqtt", "dmx", "osc", "audio"]
    description: str = ""
    points: dict[Identifier, PointSpec]
    commands: dict[Identifier, CommandSpec] = Field(default_factory=dict)
    health: HealthSpec = Field(default_factory=HealthSpec)
    heartbeat: HeartbeatSpec | None = None
    # DMX fixtures: the number of channels the fixture occupies from its start address.
    footprint: int | None = Field(default=None, ge=1, le=512)

    @model_validator(mode="before")
    @classmethod
    def _names_from_keys(cls, data: Any) -> Any:
        # In TOML a point is written as [points.position]; its name is the key.
        if isinstance(data, dict):
            data = dict(data)
            for section in ("points", "commands"):
                table = data.get(section)
                if isinstance(table, dict):
                    data[section] = {
                        k: ({"name": k, **v} if isinstance(v, dict) and "name" not in v else v)
                        for k, v in table.items()
                    }
        return data

    @model_validator(mode="after")
    def _references(self) -> Self:
        if self.protocol == "dmx" and self.footprint is None:
            raise ValueError("a dmx profile needs 'footprint' (channels from the start address)")
        for key, point in self.points.items():
            if point.name != key:
                raise ValueError(f"points.{key}: name '{point.name}' differs from its key")
            if self.protocol in ("modbus", "dmx") and getattr(point, self.protocol) is None:
                raise ValueError(
                    f"points.{key}: a {self.protocol} profile needs a "
                    f"[points.{key}.{self.protocol}] address"
                )
            if point.dmx is not None and point.dmx.offset + point.dmx.channels - 1 > (
                self.footprint or 0
            ):
                raise ValueError(
                    f"points.{key}: dmx offset {point.dmx.offset} is outside the footprint "
                    f"({self.footprint} channels)"
                )
        for key, cmd in self.commands.items():
            if cmd.name != key:
                raise ValueError(f"commands.{key}: name '{cmd.name}' differs from its key")
            for i, w in enumerate(cmd.writes):
                where = f"commands.{key}.writes[{i}]"
                target = self.points.get(w.point)
                if target is None:
                    raise ValueError(f"{where}: no point named '{w.point}'")
                if not target.access.writable:
                    raise ValueError(f"{where}: point '{w.point}' is read-only")
                if w.arg is not None and w.arg not in cmd.args:
                    raise ValueError(f"{where}: no argument named '{w.arg}'")
                if w.value is not None and (reason := target.check_range(float(w.value))):
                    raise ValueError(f"{where}: constant {reason}")
        if self.heartbeat is not None:
            hb = self.points.get(self.heartbeat.point)
            if hb is None or not hb.access.writable:
                raise ValueError(
                    f"heartbeat.point: '{self.heartbeat.point}' is not a writable point"
                )
        self._check_modbus_overlaps()
        self._check_dmx_overlaps()
        return self

    def _check_dmx_overlaps(self) -> None:
        owner: dict[int, str] = {}
        for point in self.points.values():
            if point.dmx is None:
                continue
            for ch in range(point.dmx.offset, point.dmx.offset + point.dmx.channels):
                if ch in owner:
                    raise ValueError(f"points.{point.name}: dmx channel {ch} is also '{owner[ch]}'")
                owner[ch] = point.name

    def _check_modbus_overlaps(self) -> None:
        owner: dict[tuple[str, int], str] = {}
        bits: dict[tuple[str, int, int], str] = {}
        for point in self.points.values():
            wire = point.modbus
            if wire is None:
                continue
            if wire.bit is not None:
                key3 = (wire.table, wire.address, wire.bit)
                if key3 in bits:
                    raise ValueError(
                        f"points.{point.name}: bit {wire.bit} of {wire.table} "
                        f"{wire.address} is also '{bits[key3]}'"
                    )
                bits[key3] = point.name
                continue
            for reg in range(wire.address, wire.address + wire.width):
                if (wire.table, reg) in owner:
                    raise ValueError(
                        f"points.{point.name}: {wire.table} register {reg} is also "
                        f"'{owner[(wire.table, reg)]}'"
                    )
                owner[(wire.table, reg)] = point.name
        for (table, address, _bit), name in bits.items():
            if (table, address) in owner:
                raise ValueError(
                    f"points.{name}: {table} register {address} is also '{owner[(table, address)]}'"
                )

    # --- commands -------------------------------------------------------------------------

    def resolve_command(self, name: str, args: Mapping[str, Any]) -> list[tuple[PointSpec, Value]]:
        """Validate a command call and return the point writes it makes, in order.

        Raises CommandError with a reason a person can act on: an unknown command or argument,
        a missing one, a wrong type, or a value outside the argument's or the target point's
        range (the point's range is the device's documented travel, so it always applies).
        """
        cmd = self.commands.get(name)
        if cmd is None:
            known = ", ".join(sorted(self.commands)) or "none"
            raise CommandError(f"profile '{self.id}' has no command '{name}' (known: {known})")
        unknown = sorted(set(args) - set(cmd.args))
        if unknown:
            raise CommandError(f"{name}: unknown argument(s) {', '.join(unknown)}")
        values: dict[str, Value] = {}
        for arg_name, spec in cmd.args.items():
            raw = args.get(arg_name, spec.default)
            if raw is None:
                raise CommandError(f"{name}: argument '{arg_name}' is required")
            values[arg_name] = _coerce(f"{name}.{arg_name}", raw, spec.dtype)
            if spec.dtype is not ValueType.BOOL:
                number = float(values[arg_name])
                if reason := _range_reason(number, spec.min, spec.max, spec.unit):
                    raise CommandError(f"{name}: {arg_name} {reason}")
        writes: list[tuple[PointSpec, Value]] = []
        for w in cmd.writes:
            point = self.points[w.point]
            value: Value = values[w.arg] if w.arg is not None else w.value  # type: ignore[assignment]
            in_range = isinstance(value, bool | str) or w.arg is None
            if not in_range and (reason := point.check_range(float(value))):
                raise CommandError(f"{name}: {w.arg} {reason} (range of '{point.name}')")
            writes.append((point, value))
        return writes


def _coerce(where: str, raw: Any, dtype: ValueType) -> Value:
    if dtype is ValueType.BOOL:
        if isinstance(raw, bool):
            return raw
        raise CommandError(f"{where}: expected true or false, got {type(raw).__name__}")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise CommandError(f"{where}: expected a number, got {type(raw).__name__}")
    if not math.isfinite(raw):
        raise CommandError(f"{where}: {raw} is not a finite number")
    if dtype is ValueType.INT:
        if float(raw) != int(raw):
            raise CommandError(f"{where}: expected a whole number, got {raw}")
        return int(raw)
    return float(raw)


class CommandError(ValueError):
    """A command call that the profile refuses; the message says why."""


class ConfigError(ValueError):
    """A profile or venue file that cannot be used. ``problems`` are 'file: key: what' lines."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {p}" for p in problems))


def format_validation_error(exc: ValidationError, prefix: str = "") -> list[str]:
    """Turn pydantic's errors into 'key.path: message' lines."""
    lines = []
    for err in exc.errors():
        parts = [prefix] if prefix else []
        for loc in err["loc"]:
            if isinstance(loc, int) and parts:
                parts[-1] = f"{parts[-1]}[{loc}]"
            else:
                parts.append(str(loc))
        key = ".".join(p for p in parts if p) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{key}: {msg}")
    return lines


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into a ConfigError that names the line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror or exc}"]) from exc
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"not UTF-8 text (byte {exc.start})"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"TOML syntax: {exc}"]) from exc


def parse_profile(data: Any, source: Path | str = "<profile>") -> Profile:
    """Validate already-parsed profile data; ConfigError names ``source`` and each bad key."""
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from exc


def load_profile(path: Path | str) -> Profile:
    path = Path(path)
    return parse_profile(read_toml(path), path)


def find_profile(name: str, search: list[Path] | None = None) -> Path:
    """The file of profile ``name``: a path, or a name looked up in ``search`` then built-ins."""
    candidate = Path(name)
    if candidate.suffix == ".toml":
        return candidate
    for folder in [*(search or []), PROFILE_DIR]:
        p = folder / f"{name}.toml"
        if p.is_file():
            return p
    raise FileNotFoundError(name)


# --- transports and devices -----------------------------------------------------------------


class ModbusTcpTransport(_Strict):
    kind: Literal["modbus-tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=255)
    timeout_s: float = Field(default=0.5, gt=0, le=30)

    @property
    def endpoint(self) -> str:
        return f"modbus-tcp://{self.host}:{self.port}/{self.unit}"


class ModbusRtuTransport(_Strict):
    """A device on an RS-485 line. Devices on the same ``port`` share the line, one request
    at a time, so their poll rates add up on it."""

    kind: Literal["modbus-rtu"]
    port: str = Field(min_length=1)
    baudrate: int = Field(default=19200, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit: int = Field(default=1, ge=1, le=247)
    timeout_s: float = Field(default=0.2, gt=0, le=30)

    @property
    def endpoint(self) -> str:
        return f"modbus-rtu://{self.port}?unit={self.unit}"


class MqttTransport(_Strict):
    """A device on the MQTT broker: either one that speaks our schema, published by ``node``,
    or a third-party device under its own ``base`` topic, mapped by the profile's points."""

    kind: Literal["mqtt"]
    node: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    base: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[^#+\x00]+$")

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.node is None) == (self.base is None):
            raise ValueError("an mqtt transport takes exactly one of 'node' or 'base'")
        return self

    @property
    def endpoint(self) -> str:
        return f"mqtt://node/{self.node}" if self.node is not None else f"mqtt://{self.base}"


class DmxTransport(_Strict):
    """A fixture patched at ``address`` in ``universe``; universes are routed to outputs
    (Art-Net, sACN, ENTTEC) by the venue's [dmx] section."""

    kind: Literal["dmx"]
    universe: int = Field(ge=1, le=63999)
    address: int = Field(ge=1, le=512)

    @property
    def endpoint(self) -> str:
        return f"dmx://{self.universe}/{self.address}"


class OscTransport(_Strict):
    kind: Literal["osc"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    protocol: Literal["udp", "tcp"] = "udp"

    @property
    def endpoint(self) -> str:
        return f"osc.{self.protocol}://{self.host}:{self.port}"


class AudioTransport(_Strict):
    """A PortAudio device (by name or substring), with the stream's format."""

    kind: Literal["audio"]
    device: str | None = None
    samplerate: int = Field(default=48000, ge=8000, le=192000)
    blocksize: int = Field(default=128, ge=16, le=8192)
    inputs: int = Field(default=2, ge=0, le=128)
    outputs: int = Field(default=2, ge=0, le=128)
    # The channel map (1-based device channels): input_map[i] feeds the processor's input i,
    # output_map[j] receives its output j. None: the first ``inputs``/``outputs`` channels.
    input_map: list[Annotated[int, Field(ge=1, le=1024)]] | None = None
    output_map: list[Annotated[int, Field(ge=1, le=1024)]] | None = None
    jack_server: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    @model_validator(mode="after")
    def _maps(self) -> Self:
        for name, chmap, n in (
            ("input_map", self.input_map, self.inputs),
            ("output_map", self.output_map, self.outputs),
        ):
            if chmap is not None and len(chmap) != n:
                raise ValueError(f"{name} has {len(chmap)} channels, the stream {n}")
        if self.output_map is not None and len(set(self.output_map)) != len(self.output_map):
            raise ValueError("output_map names a device output twice")
        return self

    @property
    def endpoint(self) -> str:
        return f"audio://{self.device or 'default'}"


Transport = Annotated[
    ModbusTcpTransport
    | ModbusRtuTransport
    | MqttTransport
    | DmxTransport
    | OscTransport
    | AudioTransport,
    Field(discriminator="kind"),
]
TransportModel = (
    ModbusTcpTransport
    | ModbusRtuTransport
    | MqttTransport
    | DmxTransport
    | OscTransport
    | AudioTransport
)

# Which transports each profile protocol can use.
PROTOCOL_TRANSPORTS: dict[str, tuple[str, ...]] = {
    "modbus": ("modbus-tcp", "modbus-rtu"),
    "mqtt": ("mqtt",),
    "dmx": ("dmx",),
    "osc": ("osc",),
    "audio": ("audio",),
}


@dataclass(frozen=True, slots=True)
class Device:
    """One piece of equipment: a profile at a transport address, polled at a rate."""

    id: str
    profile: Profile
    transport: TransportModel
    poll_hz: float
    name: str = ""


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one point at one moment. ``ts_mono`` orders; ``ts_wall`` is for people."""

    device: str
    point: str
    value: Value | None
    ts_mono: float
    ts_wall: float
    quality: Quality = Quality.GOOD


# A reading's (device, point), in C: the key of every conflated (LATEST) feed of readings; one
# object, so the bus computes it once per batch for all of them
reading_key: Callable[[Reading], tuple[str, str]] = operator.attrgetter("device", "point")


class HealthState(StrEnum):
    UNKNOWN = "unknown"
    ONLINE = "online"
    DEGRADED = "degraded"  # answering, with some errors
    OFFLINE = "offline"


@dataclass(slots=True)
class DriverStats:
    """Per-device counters; latencies keep the last 256 samples for percentiles.

    ``cycles`` counts poll deadlines; ``missed`` those whose poll failed or came too late."""

    requests: int = 0
    errors: int = 0
    reconnects: int = 0
    cycles: int = 0
    missed: int = 0
    latencies_s: list[float] = field(default_factory=list)

    def record(self, latency_s: float) -> None:
        self.requests += 1
        self.latencies_s.append(latency_s)
        if len(self.latencies_s) > 256:
            del self.latencies_s[:-256]

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "reconnects": self.reconnects,
            "cycles": self.cycles,
            "missed": self.missed,
            "latency_p50_ms": self.percentile_ms(0.5),
            "latency_p99_ms": self.percentile_ms(0.99),
        }


@dataclass(frozen=True, slots=True)
class Health:
    device: str
    state: HealthState
    reason: str = ""
    since_wall: float = field(default_factory=time.time)
