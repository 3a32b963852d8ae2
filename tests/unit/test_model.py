"""Device model: profiles, command validation, and the TOML loaders under hostile input."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from drivers.model import (
    PROFILE_DIR,
    CommandError,
    ConfigError,
    DriverStats,
    Profile,
    Transport,
    load_profile,
    parse_profile,
)

HOIST_PATH = PROFILE_DIR / "hoist.toml"


@pytest.fixture(scope="module")
def hoist_data() -> dict[str, Any]:
    return tomllib.loads(HOIST_PATH.read_text())


@pytest.fixture(scope="module")
def hoist() -> Profile:
    return load_profile(HOIST_PATH)


def test_builtin_hoist_profile_loads(hoist: Profile) -> None:
    assert hoist.protocol == "modbus"
    assert hoist.points["position"].unit == "mm"
    assert hoist.points["position"].modbus is not None
    assert hoist.commands["move_to"].moves_machinery
    assert not hoist.commands["stop"].moves_machinery
    assert hoist.heartbeat is not None and hoist.heartbeat.point == "heartbeat"


def test_every_builtin_profile_is_valid() -> None:
    files = sorted(PROFILE_DIR.glob("*.toml"))
    assert files
    for f in files:
        load_profile(f)


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_profile(data, "x.toml")
    assert str(info.value).startswith("x.toml: ")
    return info.value.problems


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["points"]["position"]["modbus"].update(address=70000),
            "points.position.modbus.address",
        ),
        (
            lambda d: d["points"]["position"].update(min=10.0, max=1.0),
            "min (10.0) is greater than max",
        ),
        (lambda d: d["points"]["position"].update(colour="red"), "points.position.colour"),
        (lambda d: d.update(protocol="carrier-pigeon"), "protocol"),
        (
            lambda d: d["commands"]["move_to"]["writes"].append({"point": "nope", "value": 1}),
            "no point named 'nope'",
        ),
        (
            lambda d: d["commands"]["stop"]["writes"].append({"point": "position", "value": 1}),
            "point 'position' is read-only",
        ),
        (
            lambda d: d["commands"]["stop"]["writes"].append({"point": "control_word", "arg": "x"}),
            "no argument named 'x'",
        ),
        (
            lambda d: d["commands"]["stop"]["writes"].append({"point": "control_word"}),
            "exactly one of 'arg' or 'value'",
        ),
        (
            lambda d: d["commands"]["stop"]["writes"].append(
                {"point": "control_word", "value": 99}
            ),
            "above the maximum",
        ),
        (
            lambda d: d["points"]["velocity"]["modbus"].update(address=1),
            "register 1 is also 'position'",
        ),
        (lambda d: d["points"]["moving"]["modbus"].update(bit=1), "bit 1 of holding 6 is also"),
        (lambda d: d["points"]["load"].pop("modbus"), "needs a [points.load.modbus] address"),
        (lambda d: d["heartbeat"].update(point="position"), "heartbeat.point"),
        (
            lambda d: d["points"]["position"]["modbus"].update(scale=0),
            "scale must be finite and non-zero",
        ),
        (lambda d: d["points"]["ready"].update(access="rw"), "bit fields are read-only"),
    ],
)
def test_profile_errors_name_the_key(
    hoist_data: dict[str, Any], mutate: Any, expected: str
) -> None:
    data = copy.deepcopy(hoist_data)
    mutate(data)
    problems = _problems(data)
    assert any(expected in p for p in problems), problems


def test_writable_point_in_input_table_is_refused(hoist_data: dict[str, Any]) -> None:
    data = copy.deepcopy(hoist_data)
    data["points"]["target_position"]["modbus"]["table"] = "input"
    assert any("read-only input table" in p for p in _problems(data))


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "broken.toml"
    f.write_text('id = "x"\nprotocol = "modbus"\n[points.a\n')
    with pytest.raises(ConfigError) as info:
        load_profile(f)
    assert "broken.toml" in str(info.value)
    assert "line 3" in str(info.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_profile(tmp_path / "nope.toml")
    f = tmp_path / "bin.toml"
    f.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_profile(f)


def test_resolve_move_to(hoist: Profile) -> None:
    writes = {p.name: v for p, v in hoist.resolve_command("move_to", {"position": 4000})}
    assert writes == {
        "target_position": 4000.0,
        "speed_limit": 500.0,
        "acceleration": 500.0,
        "control_word": 3,
    }


@pytest.mark.parametrize(
    ("name", "args", "reason"),
    [
        ("move_to", {"position": 12000.5}, "above the maximum 12000 mm"),
        ("move_to", {"position": -1}, "below the minimum 0 mm"),
        ("move_to", {"position": 100, "speed": 5000}, "speed 5000 is above the maximum 1500"),
        ("move_to", {}, "argument 'position' is required"),
        ("move_to", {"position": "high"}, "expected a number, got str"),
        ("move_to", {"position": True}, "expected a number, got bool"),
        ("move_to", {"position": None}, "argument 'position' is required"),
        ("move_to", {"position": float("nan")}, "not a finite number"),
        ("move_to", {"position": float("inf")}, "not a finite number"),
        ("move_to", {"position": [1]}, "expected a number, got list"),
        ("move_to", {"position": 1, "turbo": True}, "unknown argument(s) turbo"),
        ("fly", {}, "has no command 'fly'"),
    ],
)
def test_resolve_refuses_with_reason(
    hoist: Profile, name: str, args: dict[str, Any], reason: str
) -> None:
    with pytest.raises(CommandError) as info:
        hoist.resolve_command(name, args)
    assert reason in str(info.value)


def test_driver_stats_percentiles() -> None:
    stats = DriverStats()
    assert stats.percentile_ms(0.5) is None
    for i in range(1, 1001):
        stats.record(i / 1000)
    assert stats.requests == 1000
    assert len(stats.latencies_s) == 256  # bounded
    p99 = stats.percentile_ms(0.99)
    assert p99 is not None and p99 > 990


# --- hostile input: the loaders either return a valid profile or raise ConfigError -------------

toml_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=20),
    st.none(),
)
json_like = st.recursive(
    toml_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_profiles_never_crash(data: st.DataObject) -> None:
    base = tomllib.loads(HOIST_PATH.read_text())
    paths = _paths(base)[1:]
    path = data.draw(st.sampled_from(paths))
    replacement = data.draw(json_like)
    target = base
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = replacement
    try:
        parse_profile(base, "fuzz.toml")
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_arbitrary_text_never_crashes_the_loader(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    f = tmp_path_factory.mktemp("fuzz") / "p.toml"
    f.write_text(text, encoding="utf-8")
    try:
        load_profile(f)
    except ConfigError as exc:
        assert exc.problems


@settings(max_examples=200, deadline=None)
@given(
    args=st.dictionaries(
        st.sampled_from(["position", "speed", "acceleration", "x"]),
        toml_scalars | st.lists(st.integers(), max_size=2),
        max_size=4,
    )
)
def test_command_validation_never_crashes(args: dict[str, Any]) -> None:
    hoist = load_profile(HOIST_PATH)
    try:
        writes = hoist.resolve_command("move_to", args)
    except CommandError:
        return
    for point, value in writes:
        assert point.check_range(float(value)) is None


def _dmx_profile(**points: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "fixture",
        "device_class": "led_par",
        "protocol": "dmx",
        "footprint": 6,
        "points": {name: {"dmx": wire} for name, wire in points.items()},
    }


def test_dmx_profile_wires() -> None:
    profile = parse_profile(
        _dmx_profile(
            dimmer={"offset": 1, "merge": "htp"}, pan={"offset": 2, "bits": 16, "default": 32768}
        )
    )
    pan = profile.points["pan"].dmx
    assert pan is not None and pan.channels == 2 and pan.merge == "ltp"


@pytest.mark.parametrize(
    ("points", "footprint", "expected"),
    [
        ({"a": {"offset": 1}, "b": {"offset": 1}}, 6, "points.b: dmx channel 1 is also 'a'"),
        ({"a": {"offset": 1, "bits": 16}, "b": {"offset": 2}}, 6, "dmx channel 2 is also 'a'"),
        ({"a": {"offset": 6, "bits": 16}}, 6, "dmx offset 6 is outside the footprint (6"),
        ({"a": {"offset": 1, "default": 256}}, 6, "default 256 does not fit in 8 bits"),
        ({"a": {"offset": 512, "bits": 16}}, 512, "runs past channel 512"),
        ({"a": {"offset": 0}}, 6, "greater than or equal to 1"),
        ({"a": {"offset": 1}}, None, "needs 'footprint'"),
    ],
)
def test_dmx_profile_errors(points: dict[str, Any], footprint: int | None, expected: str) -> None:
    data = _dmx_profile(**points)
    if footprint is None:
        del data["footprint"]
    else:
        data["footprint"] = footprint
    with pytest.raises(ConfigError) as err:
        parse_profile(data)
    assert expected in str(err.value)


def test_dmx_profile_point_without_wire_is_refused() -> None:
    data = _dmx_profile(a={"offset": 1})
    data["points"]["b"] = {"unit": "%"}
    with pytest.raises(ConfigError, match=r"points.b: a dmx profile needs a \[points.b.dmx\]"):
        parse_profile(data)


def test_mqtt_and_osc_wires() -> None:
    profile = parse_profile(
        {
            "id": "z2m_climate",
            "device_class": "climate_sensor",
            "protocol": "mqtt",
            "points": {
                "temperature": {"mqtt": {"topic": "state", "field": "sensor.temperature"}},
                "relay": {
                    "dtype": "bool",
                    "access": "rw",
                    "mqtt": {
                        "topic": "state",
                        "field": "state",
                        "values": {"ON": True, "OFF": False},
                        "set_topic": "set",
                        "set_field": "state",
                    },
                },
                "gain": {"osc": {"address": "/in/1/gain", "type": "f"}},
            },
        }
    )
    assert profile.points["relay"].mqtt is not None
    for bad in (
        {"topic": "a/#"},
        {"topic": "a/+/b"},
        {"topic": "a\x00b"},
        {"topic": "x", "field": "a..b"},
        {"topic": "x", "set_topic": "s/#"},
    ):
        with pytest.raises(ConfigError):
            parse_profile(
                {
                    "id": "p",
                    "device_class": "c",
                    "protocol": "mqtt",
                    "points": {"v": {"mqtt": bad}},
                }
            )
    with pytest.raises(ConfigError, match=r"osc\.address"):
        parse_profile(
            {
                "id": "p",
                "device_class": "c",
                "protocol": "osc",
                "points": {"v": {"osc": {"address": "no-slash"}}},
            }
        )


@pytest.mark.parametrize(
    ("transport", "endpoint"),
    [
        ({"kind": "modbus-tcp", "host": "h", "port": 1502, "unit": 3}, "modbus-tcp://h:1502/3"),
        ({"kind": "modbus-rtu", "port": "/dev/ttyS0", "unit": 7}, "modbus-rtu:///dev/ttyS0?unit=7"),
        ({"kind": "mqtt", "node": "sensors"}, "mqtt://node/sensors"),
        ({"kind": "mqtt", "base": "zigbee2mqtt/t1"}, "mqtt://zigbee2mqtt/t1"),
        ({"kind": "dmx", "universe": 2, "address": 101}, "dmx://2/101"),
        ({"kind": "osc", "host": "10.0.0.9", "port": 53000}, "osc.udp://10.0.0.9:53000"),
        ({"kind": "audio", "device": "JACK"}, "audio://JACK"),
    ],
)
def test_transports_and_endpoints(transport: dict[str, Any], endpoint: str) -> None:
    assert TypeAdapter(Transport).validate_python(transport).endpoint == endpoint


@pytest.mark.parametrize(
    "transport",
    [
        {"kind": "mqtt"},
        {"kind": "mqtt", "node": "a", "base": "b"},
        {"kind": "mqtt", "base": "a/#"},
        {"kind": "modbus-rtu", "port": "/dev/x", "unit": 0},
        {"kind": "modbus-rtu", "port": "/dev/x", "parity": "X"},
        {"kind": "dmx", "universe": 0, "address": 1},
        {"kind": "dmx", "universe": 1, "address": 513},
        {"kind": "audio", "samplerate": 1000},
        {"kind": "carrier-pigeon"},
    ],
)
def test_bad_transports_are_refused(transport: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(Transport).validate_python(transport)
