"""Scenario files of `flytower hil`: valid ones load, hostile ones get precise errors."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.model import ConfigError
from edge.config import load_venue
from edge.hil.scenario import check_against_venue, load_scenario, parse_scenario
from edge.hil.venue import isolate, read_expanded, simulated_ids

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "hil"

HEAD = """
[scenario]
venue = "venue.toml"
duration_s = 5
"""


def load_text(tmp_path: Path, text: str) -> list[str]:
    """The problems of a scenario text ([] if it loads)."""
    path = tmp_path / "s.toml"
    path.write_text(text)
    try:
        load_scenario(path)
    except ConfigError as exc:
        assert exc.path == str(path)
        return exc.problems
    return []


def test_a_full_scenario_loads(tmp_path: Path) -> None:
    path = tmp_path / "my scenario!.toml"
    path.write_text(
        HEAD
        + """
[record]
points = { hoist-1 = ["position"] }
truth = { hoist-1 = ["position_mm", "a.b.0"] }
health = ["hoist-1"]
[[steps]]
at = 0.5
id = "move"
command = { device = "hoist-1", name = "move_to", args = { position = 4000 } }
[[steps]]
wait = { device = "hoist-1", point = "moving", op = "==", value = true, timeout_s = 2 }
[[steps]]
delay_s = 1
inject = { device = "hoist-1", fault = "comms_loss", params = { seconds = 1.5 } }
[[steps]]
clear = { device = "hoist-1" }
[[steps]]
estop = "open"
[[expect]]
device = "hoist-1"
truth = "fault"
op = "between"
value = [1, 2]
after = "move"
within_s = 0.5
for_s = 1
"""
    )
    sc = load_scenario(path)
    assert sc.name == "my-scenario"  # a folder name, from the file name
    assert sc.venue_path == tmp_path / "venue.toml"
    assert [s.kind for s in sc.spec.steps] == ["command", "wait", "inject", "clear", "estop"]
    assert sc.spec.devices() == {"hoist-1"}
    assert ("point", "hoist-1", "moving") in sc.spec.series()  # what a wait reads is sampled
    exp = sc.spec.expect[0]
    assert exp.describe() == "truth hoist-1.fault between 1 and 2"
    assert exp.describe_timing() == "within 0.5 s after step 'move', holding for 1 s"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("", "scenario: Field required"),
        (HEAD + "surprise = 1\n", "scenario.surprise: Extra inputs are not permitted"),
        (HEAD.replace("5", '"5"'), "scenario.duration_s: Input should be a valid number"),
        (HEAD.replace("5", "-1"), "scenario.duration_s: Input should be greater than 0"),
        (HEAD.replace("5", "nan"), "scenario.duration_s: Input should be a finite number"),
        (HEAD.replace("5", "inf"), "scenario.duration_s: Input should be a finite number"),
        (HEAD + "[[steps]]\nat = 1\n", "steps[0]: a step does exactly one of command, inject"),
        (
            HEAD + '[[steps]]\nestop = "open"\nclear = { device = "a" }\n',
            "(got clear, estop)",
        ),
        (HEAD + '[[steps]]\nestop = "ajar"\n', "steps[0].estop: Input should be 'open' or"),
        (HEAD + '[[steps]]\nat = 9\nestop = "open"\n', "steps[0].at: 9.0 s is after the end"),
        (
            HEAD + '[[steps]]\nat = 2\nestop = "open"\n[[steps]]\nat = 1\nestop = "close"\n',
            "steps[1].at: 1.0 s is before an earlier step's 2.0 s",
        ),
        (
            HEAD + '[[steps]]\nat = 1\ndelay_s = 1\nestop = "open"\n',
            "give 'at' (from the start) or 'delay_s'",
        ),
        (
            HEAD + '[[steps]]\nid = "a"\nestop = "open"\n[[steps]]\nid = "a"\nestop = "close"\n',
            "steps[1].id: 'a' is also steps[0]",
        ),
        (
            HEAD + '[[steps]]\nestop = "open"\nexpect_status = 422\n',
            "expect_status is for command steps",
        ),
        (
            HEAD + '[[steps]]\ninject = { device = "a", fault = "Comms Loss" }\n',
            "steps[0].inject.fault: String should match pattern",
        ),
        (
            HEAD + '[[steps]]\ninject = { device = "a", fault = "x", params = { v = nan } }\n',
            "params: v is not a finite number",
        ),
        (
            HEAD + '[[steps]]\ncommand = { device = "a", name = "go", args = { p = [1, inf] } }\n',
            "args: p[1] is not a finite number",
        ),
        (
            HEAD + '[[steps]]\ncommand = { device = "../etc", name = "go" }\n',
            "steps[0].command.device: String should match pattern",
        ),
        (
            HEAD + '[[expect]]\ndevice = "a"\nop = "=="\nvalue = 1\n',
            "expect[0]: name exactly one of point, truth or health = true (got none)",
        ),
        (
            HEAD + '[[expect]]\ndevice = "a"\npoint = "p"\ntruth = "t"\nop = "=="\nvalue = 1\n',
            "(got point, truth)",
        ),
        (HEAD + '[[expect]]\ndevice = "a"\npoint = "p"\nop = "~"\nvalue = 1\n', "expect[0].op"),
        (
            HEAD + '[[expect]]\ndevice = "a"\npoint = "p"\nop = "<"\nvalue = "high"\n',
            "'<' compares numbers, not 'high'",
        ),
        (
            HEAD + '[[expect]]\ndevice = "a"\npoint = "p"\nop = "between"\nvalue = [5, 1]\n',
            "needs finite low <= high",
        ),
        (
            HEAD + '[[expect]]\ndevice = "a"\npoint = "p"\nop = "between"\nvalue = 3\n',
            "'between' needs [low, high]",
        ),
        (
            HEAD + '[[expect]]\ndevice = "a"\npoint = "p"\nop = "=="\nvalue = [1, 2]\n',
            "a list is only for 'between'",
        ),
        (
            HEAD + '[[expect]]\ndevice = "a"\npoint = "p"\nop = "=="\nvalue = -inf\n',
            "value: not a finite number",
        ),
        (
            HEAD + '[[expect]]\ndevice = "a"\npoint = "p"\nop = "=="\nvalue = { a = 1 }\n',
            "value: expected a number, true/false, a string or [low, high]",
        ),
        (
            HEAD + '[[expect]]\ndevice = "a"\nhealth = true\nop = "=="\nvalue = "fine"\n',
            "a health state is one of unknown, online, degraded, offline",
        ),
        (
            HEAD + '[[expect]]\ndevice = "a"\nhealth = true\nop = ">"\nvalue = 1\n',
            "health is compared with == or !=",
        ),
        (
            HEAD + '[[expect]]\ndevice = "a"\npoint = "p"\nop = ">"\nvalue = 1\ntol = 1\n',
            "tol: only for == and != on numbers",
        ),
        (
            HEAD + '[[expect]]\ndevice = "a"\npoint = "p"\nop = "=="\nvalue = 1\nafter = "x"\n',
            "expect[0].after: no step 'x' (steps: none has an id)",
        ),
        (
            HEAD + '[[expect]]\ndevice = "a"\npoint = "p"\nop = "=="\nvalue = 1\nat = 6\n',
            "expect[0].at: 6.0 s is after the end",
        ),
        (
            HEAD + '[[expect]]\ndevice = "a"\npoint = "p"\nop = "=="\nvalue = 1\nwithin_s = 0\n',
            "expect[0].within_s: Input should be greater than 0",
        ),
        (HEAD + "[[expect]]\n" + "x = 1\n" * 2, "TOML syntax"),
        ("version = 2\n" + HEAD, "version: Input should be 1"),
    ],
)
def test_hostile_scenarios_are_refused_with_where_and_what(
    tmp_path: Path, body: str, problem: str
) -> None:
    problems = load_text(tmp_path, body)
    assert any(problem in p for p in problems), problems


def test_several_timeline_problems_are_reported_together(tmp_path: Path) -> None:
    problems = load_text(
        tmp_path,
        HEAD
        + '[[steps]]\nat = 7\nestop = "open"\n'
        + '[[expect]]\ndevice = "a"\npoint = "p"\nop = "=="\nvalue = 1\nafter = "nope"\n',
    )
    assert len(problems) == 2
    assert problems[0].startswith("steps[0].at:")
    assert problems[1].startswith("expect[0].after:")


def test_unreadable_files(tmp_path: Path) -> None:
    assert "cannot read" in load_text_missing(tmp_path / "absent.toml")
    (tmp_path / "s.toml").write_bytes(b"\xff\xfe[scenario]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_scenario(tmp_path / "s.toml")
    (tmp_path / "s.toml").write_text("[scenario\n")
    with pytest.raises(ConfigError, match="TOML syntax"):
        load_scenario(tmp_path / "s.toml")
    (tmp_path / "s.toml").write_text("#" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="a scenario is at most"):
        load_scenario(tmp_path / "s.toml")


def load_text_missing(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    return str(info.value)


@settings(max_examples=150)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_config_error(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "s.toml"
        path.write_bytes(data)
        with contextlib.suppress(ConfigError):
            load_scenario(path)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@settings(max_examples=200)
@given(JSONISH)
def test_random_structures_raise_only_config_error(data: object) -> None:
    try:
        parse_scenario({"scenario": {"venue": "v", "duration_s": 1}, "expect": [data]}, Path("x"))
        parse_scenario({"scenario": {"venue": "v", "duration_s": 1}, "steps": [data]}, Path("x"))
        parse_scenario(data, Path("x"))
    except ConfigError:
        pass


def test_references_are_checked_against_the_venue() -> None:
    venue = load_venue(EXAMPLES / "venue-machinery.toml")
    sc = parse_scenario(
        {
            "scenario": {"venue": "v", "duration_s": 5},
            "record": {"points": {"hoist-1": ["position", "altitude"]}, "truth": {"hoist-9": []}},
            "steps": [
                {"command": {"device": "hoist-1", "name": "fly"}},
                {"inject": {"device": "nobody", "fault": "x"}},
            ],
            "expect": [{"device": "hoist-2", "health": True, "op": "==", "value": "online"}],
        },
        Path("s.toml"),
    )
    problems = check_against_venue(
        sc.spec, {d.id: d for d in venue.devices}, simulated={"hoist-1", "hoist-2"}
    )
    assert problems[0].startswith(
        "record.points.hoist-1: hoist-1 (hoist) has no point 'altitude' (acceleration, "
    )
    assert problems[1:] == [
        "record.truth.hoist-9: no device 'hoist-9' in the venue (devices: hoist-1, hoist-2, "
        "lx-bar-1)",
        "steps[0].command.name: hoist-1 (hoist) has no command 'fly' (commands: disable, "
        "move_to, reset_fault, stop)",
        "steps[1].inject.device: no device 'nobody' in the venue (devices: hoist-1, hoist-2, "
        "lx-bar-1)",
    ]
    truth_of_real = parse_scenario(
        {"scenario": {"venue": "v", "duration_s": 5}, "record": {"truth": {"lx-bar-1": ["a"]}}},
        Path("s.toml"),
    )
    assert check_against_venue(
        truth_of_real.spec, {d.id: d for d in venue.devices}, simulated={"hoist-1"}
    ) == ["record.truth.lx-bar-1: device 'lx-bar-1' is not simulated (no simulate table)"]


SCENARIOS = sorted(p for p in EXAMPLES.glob("*.toml") if not p.name.startswith("venue-"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_example_scenario_is_valid_against_its_venue(path: Path) -> None:
    sc = load_scenario(path)
    venue = load_venue(sc.venue_path)
    data = read_expanded(sc.venue_path)
    assert check_against_venue(sc.spec, {d.id: d for d in venue.devices}, simulated_ids(data)) == []


def test_isolation_moves_every_loopback_port_consistently() -> None:
    data = {
        "api": {"port": 8080},
        "mqtt": {"mode": "embedded", "port": 1883},
        "osc": {"enabled": True, "udp_port": 53000, "tcp_port": 53000},
        "simulation": {"control_port": 18890},
        "dmx": {
            "outputs": [{"protocol": "artnet", "universes": [1]}, {"protocol": "enttec"}],
            "input": {"protocols": ["sacn"], "universes": [1]},
        },
        "devices": [
            {"id": "a", "transport": {"kind": "modbus-tcp", "host": "127.0.0.1", "port": 502}},
            {"id": "b", "transport": {"kind": "modbus-tcp", "host": "127.0.0.1", "port": 502}},
            {"id": "c", "transport": {"kind": "modbus-tcp", "host": "10.0.0.5", "port": 502}},
            {"id": "d", "transport": {"kind": "osc", "host": "localhost", "port": 9000}},
            {"id": "e", "transport": {"kind": "modbus-rtu", "port": "/dev/ttyUSB0"}},
        ],
    }
    ports = iter(range(40000, 40100))
    out = isolate(data, tcp_port=lambda: next(ports), udp_port=lambda: next(ports))
    assert data["api"] == {"port": 8080}  # the input is not touched
    assert out["api"]["port"] == 0
    assert out["osc"]["udp_port"] == out["osc"]["tcp_port"] == 0
    assert "control_port" not in out["simulation"]
    assert 40000 <= out["mqtt"]["port"] < 40100
    tr = [d["transport"] for d in out["devices"]]
    assert tr[0]["port"] == tr[1]["port"] != 502  # one gateway stays one gateway
    assert tr[2]["port"] == 502  # not ours: another machine
    assert tr[3]["port"] not in (9000, tr[0]["port"])
    assert tr[4]["port"] == "/dev/ttyUSB0"
    assert out["dmx"]["outputs"][0]["udp_port"] >= 40000
    assert "udp_port" not in out["dmx"]["outputs"][1]
    assert out["dmx"]["input"]["udp_port"] >= 40000
    external = isolate({"mqtt": {"mode": "external", "port": 8883}})
    assert external["mqtt"]["port"] == 8883  # a real broker is not ours to move
