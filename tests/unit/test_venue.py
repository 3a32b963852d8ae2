"""Venue files and `flytower check`: precise errors, every problem reported."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.model import ConfigError
from edge.cli import main
from edge.config import load_venue, parse_venue

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "venue-demo.toml"

MINIMAL = """
version = 1
[venue]
id = "t"
[[nodes]]
id = "n1"
[[devices]]
id = "h1"
profile = "hoist"
transport = { kind = "modbus-tcp", host = "127.0.0.1", port = 1502 }
"""


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "venue.toml"
    f.write_text(text)
    return f


def test_demo_venue_is_valid() -> None:
    venue = load_venue(DEMO)
    assert {"hoist-1", "hoist-2", "lx-bar-1"} <= {d.id for d in venue.devices}
    assert len(venue.devices) >= 30
    assert venue.config.api.host == "127.0.0.1"
    assert venue.store_path == DEMO.parent / "var" / "demo-telemetry.sqlite3"
    assert len(venue.devices_of("stage")) == len(venue.devices)


def test_minimal_venue_defaults(tmp_path: Path) -> None:
    venue = load_venue(write(tmp_path, MINIMAL))
    dev = venue.devices[0]
    assert dev.poll_hz == 10.0
    assert dev.transport.unit == 1
    assert venue.config.mqtt.mode == "embedded"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda t: t.replace('profile = "hoist"', 'profile = "nope"'),
            "devices.h1.profile: no profile 'nope'",
        ),
        (
            lambda t: t.replace("port = 1502", "port = 70000"),
            "devices[0] (h1).transport.modbus-tcp.port",
        ),
        (lambda t: t.replace('id = "h1"', 'id = "h 1"'), "devices[0] (h 1).id"),
        (
            lambda t: (
                t + '[[devices]]\nid = "h1"\nprofile = "hoist"\n'
                'transport = { kind = "modbus-tcp", host = "127.0.0.1", port = 1503 }\n'
            ),
            "id 'h1' is used twice",
        ),
        (lambda t: t + 'node = "elsewhere"\n', "no node 'elsewhere'"),
        (lambda t: t.replace("version = 1", "version = 2"), "version"),
        (lambda t: t + "poll_hz = 0\n", "poll_hz"),
        (lambda t: t + "colour = 'red'\n", "colour"),
        (lambda t: t.replace('kind = "modbus-tcp"', 'kind = "carrier-pigeon"'), "transport"),
        (lambda t: 'show = "missing.json"\n' + t, "show: file 'missing.json' does not exist"),
        (
            lambda t: (
                t + '[[devices]]\nid = "h2"\nprofile = "hoist"\n'
                'transport = { kind = "modbus-tcp", host = "127.0.0.1", port = 1502 }\n'
            ),
            "is also device 'h1'",
        ),
        (lambda t: t.replace('[[nodes]]\nid = "n1"\n', ""), "nodes"),
    ],
)
def test_venue_errors_are_precise(tmp_path: Path, edit: Any, expected: str) -> None:
    f = write(tmp_path, edit(MINIMAL))
    with pytest.raises(ConfigError) as info:
        load_venue(f)
    assert str(f) in str(info.value)
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_venue_with_local_profile_dir_reports_profile_errors(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "winch.toml").write_text('id = "winch"\nprotocol = "modbus"\n')
    text = 'profile_dirs = ["profiles"]\n' + MINIMAL.replace('"hoist"', '"winch"')
    with pytest.raises(ConfigError) as info:
        load_venue(write(tmp_path, text))
    joined = "\n".join(info.value.problems)
    assert "winch.toml" in joined and "device_class" in joined


def test_check_command_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(DEMO)]) == 0
    assert "ok" in capsys.readouterr().out


def test_check_command_reports_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = MINIMAL.replace('profile = "hoist"', 'profile = "nope"') + (
        '[[devices]]\nid = "h2"\nprofile = "nope2"\n'
        'transport = { kind = "modbus-tcp", host = "127.0.0.1", port = 1503 }\n'
    )
    assert main(["check", str(write(tmp_path, text))]) == 1
    err = capsys.readouterr().err
    assert "'nope'" in err and "'nope2'" in err and "2 problem(s)" in err


def test_check_command_on_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "none.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err


scalars = st.one_of(st.integers(), st.floats(), st.booleans(), st.text(max_size=12), st.none())
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from(
        [
            "version",
            "venue",
            "nodes",
            "api",
            "mqtt",
            "telemetry",
            "devices",
            "show",
            "profile_dirs",
            "extra",
        ]
    ),
    value=values,
)
def test_hostile_venues_raise_config_error_only(
    tmp_path_factory: pytest.TempPathFactory, key: str, value: Any
) -> None:
    data = tomllib.loads(MINIMAL)
    data[key] = value
    try:
        parse_venue(data, tmp_path_factory.getbasetemp() / "v.toml")
    except ConfigError as exc:
        assert exc.problems


PAR_PROFILE = """
id = "test_par"
device_class = "led_par"
protocol = "dmx"
footprint = 4
[points.dimmer]
dmx = { offset = 1, merge = "htp" }
[points.red]
dmx = { offset = 2 }
[points.green]
dmx = { offset = 3 }
[points.blue]
dmx = { offset = 4 }
"""

DMX_VENUE = """
version = 1
profile_dirs = ["profiles"]
[venue]
id = "t"
[[nodes]]
id = "n1"
[[dmx.outputs]]
protocol = "sacn"
universes = [1, 2]
[[dmx.outputs]]
protocol = "enttec"
universes = [3]
device = "/dev/ttyUSB0"
[[devices]]
id = "par1"
profile = "test_par"
transport = { kind = "dmx", universe = 1, address = 1 }
[[devices]]
id = "par2"
profile = "test_par"
transport = { kind = "dmx", universe = 1, address = 5 }
"""


def dmx_venue(tmp_path: Path, text: str) -> Path:
    (tmp_path / "profiles").mkdir(exist_ok=True)
    (tmp_path / "profiles" / "test_par.toml").write_text(PAR_PROFILE)
    return write(tmp_path, text)


def test_dmx_fixtures_patch_and_route(tmp_path: Path) -> None:
    venue = load_venue(dmx_venue(tmp_path, DMX_VENUE))
    assert [d.transport.endpoint for d in venue.devices] == ["dmx://1/1", "dmx://1/5"]
    assert [o.protocol for o in venue.config.dmx.outputs] == ["sacn", "enttec"]
    assert venue.config.panic.fade_s == 1.0 and venue.config.panic.lighting == []
    safe = DMX_VENUE + '[panic]\nfade_s = 3\nlighting = [{ fixture = "par2", level = 60 }]\n'
    panic = load_venue(dmx_venue(tmp_path, safe)).config.panic
    assert panic.fade_s == 3.0 and panic.lighting[0].fixture == "par2"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda t: t.replace("universe = 1, address = 5", "universe = 1, address = 3"),
            "devices.par2.transport: universe 1 channel 3 is also patched to 'par1'",
        ),
        (
            lambda t: t.replace("universe = 1, address = 5", "universe = 1, address = 510"),
            "address 510 + footprint 4 runs past channel 512",
        ),
        (
            lambda t: t.replace("universe = 1, address = 5", "universe = 9, address = 5"),
            "devices.par2.transport: universe 9 is sent by no [[dmx.outputs]]",
        ),
        (
            lambda t: t.replace("universes = [3]", "universes = [2]"),
            "dmx: outputs[1]: universe 2 is also sent by outputs[0]",
        ),
        (
            lambda t: t.replace("universes = [3]", "universes = [3, 4]"),
            "exactly one universe",
        ),
        (
            lambda t: t.replace('device = "/dev/ttyUSB0"\n', ""),
            "an enttec output needs 'device'",
        ),
        (
            lambda t: t.replace("universes = [1, 2]", "universes = [0, 1, 2]"),
            "universes must be 1..63999, not [0]",
        ),
        (
            lambda t: t.replace(
                'kind = "dmx", universe = 1, address = 1', 'kind = "modbus-tcp", host = "h"'
            ),
            "a dmx profile needs kind 'dmx', not 'modbus-tcp'",
        ),
        (
            lambda t: t + '[panic]\nlighting = [{ fixture = "par9", level = 50 }]\n',
            "panic.lighting[0].fixture: no DMX fixture 'par9'",
        ),
        (
            lambda t: (
                t + "[panic]\nlighting = [{ channel = { universe = 5, address = 1 }, "
                "level = 50 }]\n"
            ),
            "panic.lighting[0].channel: universe 5 is sent by no [[dmx.outputs]]",
        ),
        (
            lambda t: t + '[panic]\nlighting = [{ fixture = "par1", level = 150 }]\n',
            "level 150 % is outside 0 … 100 %",
        ),
        (lambda t: t + "[panic]\nfade_s = -1\n", "panic.fade_s"),
        (lambda t: t + "[panic]\nfade = 1\n", "panic.fade"),
    ],
)
def test_dmx_venue_errors_are_precise(tmp_path: Path, edit: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_venue(dmx_venue(tmp_path, edit(DMX_VENUE)))
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('[mqtt]\nmode = "embedded"\nusername = "u"', "use mode = 'external'"),
        ('[mqtt]\nmode = "external"\npassword_env = "PW"', "'password_env' needs 'username'"),
        ('[mqtt]\nmode = "external"\ntls = { cert = "c.pem" }', "needs both 'cert' and 'key'"),
        ('[mqtt]\nmode = "external"\npassword_env = "1X"', "mqtt.password_env"),
        ("[osc]\nudp_port = 70000", "osc.udp_port"),
        ('[osc]\npasscode = "secret"', "osc.passcode"),
    ],
)
def test_service_sections_refuse_bad_settings(tmp_path: Path, section: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_venue(write(tmp_path, MINIMAL.replace("[[devices]]", f"{section}\n[[devices]]", 1)))
    assert expected in str(err.value)


def test_mqtt_device_needs_a_broker(tmp_path: Path) -> None:
    text = MINIMAL.replace("[[devices]]", '[mqtt]\nmode = "off"\n[[devices]]', 1).replace(
        'transport = { kind = "modbus-tcp", host = "127.0.0.1", port = 1502 }',
        'transport = { kind = "mqtt", node = "sensors" }',
    )
    with pytest.raises(ConfigError) as err:
        load_venue(write(tmp_path, text))
    assert "an mqtt device needs mqtt.mode other than off" in str(err.value)
