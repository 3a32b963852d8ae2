"""Compact group specs in venue files: every allocation rule, spreads, hostile input, and the
shipped venues passing `flytower check` with the size the issue asks for."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.model import ConfigError, read_toml
from edge.cli import main
from edge.config import MAX_DEVICES, check_pattern, expand_venue, load_venue, parse_venue

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "venue-demo.toml"
LARGE = REPO / "examples" / "venue-large.toml"
PATH = Path("/venues/v.toml")


def venue(*groups: dict[str, Any], devices: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": 1,
        "venue": {"id": "t"},
        "nodes": [{"id": "n1"}],
        "dmx": {"outputs": [{"protocol": "sacn", "universes": list(range(1, 11))}]},
        "groups": list(groups),
    }
    if devices is not None:
        data["devices"] = devices
    return data


def group(**overrides: Any) -> dict[str, Any]:
    g: dict[str, Any] = {
        "label": "hoists",
        "id": "hoist-{n:02}",
        "profile": "hoist",
        "count": 3,
        "transport": {"kind": "modbus-tcp", "host": "127.0.0.1", "port": 1502},
    }
    g.update(overrides)
    return g


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_venue(data, PATH)
    return info.value.problems


def transports(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [d["transport"] for d in expand_venue(data, PATH)["devices"]]


# --- expansion --------------------------------------------------------------------------------


def test_group_expands_to_devices_after_the_explicit_ones() -> None:
    explicit = {
        "id": "solo",
        "profile": "hoist",
        "transport": {"kind": "modbus-tcp", "host": "127.0.0.1", "port": 1600},
    }
    data = venue(group(name="Hoist {n}", first=7, poll_hz=20, node="n1"), devices=[explicit])
    before = copy.deepcopy(data)
    out = expand_venue(data, PATH)
    assert data == before  # pure: the input is left alone
    assert "groups" not in out
    assert [d["id"] for d in out["devices"]] == ["solo", "hoist-07", "hoist-08", "hoist-09"]
    assert out["devices"][1] == {
        "id": "hoist-07",
        "name": "Hoist 7",
        "profile": "hoist",
        "node": "n1",
        "poll_hz": 20,
        "transport": {"kind": "modbus-tcp", "host": "127.0.0.1", "port": 1502, "unit": 1},
    }
    venue_ = parse_venue(data, PATH)
    assert [d.poll_hz for d in venue_.devices] == [10.0, 20.0, 20.0, 20.0]


def test_a_venue_without_groups_is_unchanged() -> None:
    data = venue()
    del data["groups"]
    assert expand_venue(data, PATH) is data


def test_modbus_tcp_one_port_per_device_by_default() -> None:
    assert [(t["port"], t["unit"]) for t in transports(venue(group(count=3)))] == [
        (1502, 1),
        (1503, 1),
        (1504, 1),
    ]


def test_modbus_tcp_several_units_per_port() -> None:
    g = group(count=5)
    g["transport"] |= {"unit": 3, "units_per_port": 2}
    got = [(t["port"], t["unit"]) for t in transports(venue(g))]
    assert got == [(1502, 3), (1502, 4), (1503, 3), (1503, 4), (1504, 3)]
    assert all("units_per_port" not in t for t in transports(venue(g)))


def test_modbus_rtu_lines_and_units() -> None:
    one_line = group(count=3, transport={"kind": "modbus-rtu", "port": "/dev/ttyS0", "unit": 5})
    assert [(t["port"], t["unit"]) for t in transports(venue(one_line))] == [
        ("/dev/ttyS0", 5),
        ("/dev/ttyS0", 6),
        ("/dev/ttyS0", 7),
    ]
    lines = group(count=5, transport={"kind": "modbus-rtu", "port": ["/dev/a", "/dev/b"]})
    assert [(t["port"], t["unit"]) for t in transports(venue(lines))] == [
        ("/dev/a", 1),
        ("/dev/a", 2),
        ("/dev/a", 3),
        ("/dev/b", 1),
        ("/dev/b", 2),
    ]
    short = group(
        count=5,
        transport={"kind": "modbus-rtu", "port": ["/dev/a", "/dev/b"], "units_per_port": 2},
    )
    assert any("need 3 serial lines, 2 given" in p for p in problems(venue(short)))
    parse_venue(venue(lines), PATH)  # the expanded devices are valid RTU devices


def fixtures(**transport: Any) -> dict[str, Any]:
    return group(
        label="pars",
        id="par-{n}",
        profile="led_par_rgbw",  # 8 channels
        count=transport.pop("count"),
        transport={"kind": "dmx", **transport},
    )


def patch(**transport: Any) -> list[tuple[int, int]]:
    return [(t["universe"], t["address"]) for t in transports(venue(fixtures(**transport)))]


def test_dmx_packs_by_footprint_into_the_next_universe() -> None:
    got = patch(count=65, universe=2)
    assert got[:3] == [(2, 1), (2, 9), (2, 17)]
    assert got[63] == (2, 505)  # 505..512: the last one that fits
    assert got[64] == (3, 1)
    parse_venue(venue(fixtures(count=65, universe=2)), PATH)


def test_dmx_gap_align_and_per_universe() -> None:
    assert patch(count=3, address=101, gap=2) == [(1, 101), (1, 111), (1, 121)]
    assert patch(count=3, align=10) == [(1, 1), (1, 11), (1, 21)]
    assert patch(count=3, address=5, align=16) == [(1, 17), (1, 33), (1, 49)]
    assert patch(count=5, per_universe=2, address=11) == [
        (1, 11),
        (1, 19),
        (2, 11),
        (2, 19),
        (3, 11),
    ]
    out = transports(venue(fixtures(count=2, gap=1, align=2, per_universe=4, last_universe=9)))
    assert out[0] == {"kind": "dmx", "universe": 1, "address": 1}


def test_dmx_overflow_is_refused() -> None:
    found = problems(venue(fixtures(count=200, universe=3, last_universe=4)))
    assert found == [
        "groups[0] (pars).transport: 200 fixtures of 8 channels do not fit in universes "
        "3..4 (128 do)"
    ]
    found = problems(venue(fixtures(count=65, universe=63999)))
    assert any("do not fit in universes 63999..63999" in p for p in found)
    found = problems(venue(fixtures(count=1, address=510)))
    assert any("8-channel fixture at address 510 runs past channel 512" in p for p in found)
    found = problems(venue(fixtures(count=1, universe=64000)))
    assert any(p.startswith("groups[0] (pars).transport.universe:") for p in found)
    found = problems(venue(fixtures(count=1, universe=5, last_universe=4)))
    assert any("last_universe: 4 is before universe 5" in p for p in found)


def test_dmx_needs_a_fixture_profile() -> None:
    g = fixtures(count=1, universe=1)
    assert problems(venue({**g, "profile": "hoist"})) == [
        "groups[0] (pars).profile: profile 'hoist' is a modbus profile, not a DMX fixture"
    ]
    assert problems(venue({**g, "profile": "nope"})) == [
        "groups[0] (pars).profile: no profile 'nope'"
    ]


def test_dmx_group_collides_with_an_explicit_fixture() -> None:
    explicit = {
        "id": "special",
        "profile": "led_par_rgbw",
        "transport": {"kind": "dmx", "universe": 1, "address": 20},
    }
    found = problems(venue(fixtures(count=4), devices=[explicit]))
    assert any("par-3" in p and "also patched to 'special'" in p for p in found)


def test_osc_consecutive_ports() -> None:
    g = group(
        id="dsp-{n}",
        profile="dsp_matrix",
        count=3,
        transport={"kind": "osc", "host": "h", "port": 9000},
    )
    assert [t["port"] for t in transports(venue(g))] == [9000, 9001, 9002]


def test_mqtt_node_and_base_templates() -> None:
    node = group(
        id="lc-{n}", profile="load_cell", count=2, transport={"kind": "mqtt", "node": "rig"}
    )
    base = group(
        label="shellys",
        id="ht-{n}",
        profile="shelly_ht",
        count=2,
        transport={"kind": "mqtt", "base": "shellies/shellyht-{n:03}"},
    )
    data = venue(node, base)
    assert transports(data) == [
        {"kind": "mqtt", "node": "rig"},
        {"kind": "mqtt", "node": "rig"},
        {"kind": "mqtt", "base": "shellies/shellyht-001"},
        {"kind": "mqtt", "base": "shellies/shellyht-002"},
    ]
    parse_venue(data, PATH)  # many devices behind one node are not an endpoint collision


def test_port_overflow_is_refused() -> None:
    found = problems(
        venue(group(count=24, transport={"kind": "modbus-tcp", "host": "h", "port": 65530}))
    )
    assert found == [
        "groups[0] (hoists).transport.port: 24 devices at 1 per port from port 65530 need "
        "ports up to 65553, past 65535"
    ]
    osc = group(
        count=2, profile="dsp_matrix", transport={"kind": "osc", "host": "h", "port": 65535}
    )
    assert problems(venue(osc)) == [
        "groups[0] (hoists).transport.port: 2 devices from port 65535 run past 65535"
    ]
    units = group(count=4)
    units["transport"] |= {"unit": 253, "units_per_port": 8}
    assert any("units 253..256 run past 255" in p for p in problems(venue(units)))


def test_collisions_between_groups_and_devices_are_named() -> None:
    clash: dict[str, Any] = {
        "id": "hoist-02",
        "profile": "hoist",
        "transport": {"kind": "modbus-tcp", "host": "127.0.0.1", "port": 1400},
    }
    assert any("'hoist-02' is used twice" in p for p in problems(venue(group(), devices=[clash])))
    same_port = {**clash, "id": "other", "transport": {**clash["transport"], "port": 1503}}
    found = problems(venue(group(), devices=[same_port]))
    assert any(
        "hoist-02.transport: modbus-tcp://127.0.0.1:1503/1 is also device 'other'" in p
        for p in found
    )


# --- spreads --------------------------------------------------------------------------------


def simulated(**simulate: Any) -> list[dict[str, Any]]:
    g = group(count=5, simulate={"model": "hoist", **simulate})
    return [d["simulate"] for d in expand_venue(venue(g), PATH)["devices"]]


def test_linear_spread_of_whole_numbers_stays_whole() -> None:
    got = [s["start_position_mm"] for s in simulated(start_position_mm={"from": 1000, "to": 2000})]
    assert got == [1000, 1250, 1500, 1750, 2000]
    got = [s["p"] for s in simulated(p={"from": 0, "to": 10})]
    assert got == [0, 2, 5, 8, 10] and all(isinstance(v, int) for v in got)


def test_linear_spread_of_floats_and_a_group_of_one() -> None:
    got = [s["x"] for s in simulated(x={"from": 1.0, "to": 0.0})]
    assert got == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    one = group(count=1, simulate={"model": "hoist", "x": {"from": 3, "to": 9}})
    assert expand_venue(venue(one), PATH)["devices"][0]["simulate"] == {"model": "hoist", "x": 3}


def test_cycle_spread_and_plain_values() -> None:
    got = simulated(
        payload_kg={"cycle": [100, 200]},
        channels=[1, 2],
        table={"a": 1},
        label="axis {n}",
    )
    assert [s["payload_kg"] for s in got] == [100, 200, 100, 200, 100]
    assert all(s["channels"] == [1, 2] and s["table"] == {"a": 1} for s in got)
    assert [s["label"] for s in got] == [f"axis {n}" for n in range(1, 6)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"from": 1}, "a spread is { from = A, to = B } or { cycle = [...] }, not keys ['from']"),
        ({"from": 1, "to": 2, "by": 1}, "not keys ['by', 'from', 'to']"),
        ({"from": "a", "to": 2}, "'from' and 'to' must be finite numbers"),
        ({"from": float("nan"), "to": 2}, "'from' and 'to' must be finite numbers"),
        ({"from": 0, "to": float("inf")}, "'from' and 'to' must be finite numbers"),
        ({"from": True, "to": 2}, "'from' and 'to' must be finite numbers"),
        ({"cycle": []}, "simulate.x.cycle: expected a non-empty array"),
        ({"cycle": 3}, "simulate.x.cycle: expected a non-empty array"),
    ],
)
def test_bad_spreads_are_refused(value: Any, expected: str) -> None:
    g = group(simulate={"model": "hoist", "x": value})
    found = problems(venue(g))
    assert len(found) == 1 and found[0].startswith("groups[0] (hoists).simulate.x")
    assert expected in found[0]


# --- hostile input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "{n.__class__}",
        "{n.__class__.__mro__}",
        "{i[0]}",
        "{n!r}",
        "{n:>999999999}",
        "{n:{i}}",
        "{0}",
        "{}",
        "{name}",
        "{n",
        "n}",
        "{n:x}",
        "{n:,}",
    ],
)
def test_unsafe_or_bad_patterns_are_refused(pattern: str) -> None:
    assert check_pattern(pattern) is not None
    found = problems(venue(group(id=pattern)))
    assert len(found) == 1 and found[0].startswith("groups[0] (hoists).id: bad pattern")


@pytest.mark.parametrize(
    "pattern", ["hoist-{n}", "h{n:02}", "h{i:3}", "h{n:03d}", "x{{n}}-{n}", "plain"]
)
def test_good_patterns(pattern: str) -> None:
    assert check_pattern(pattern) is None


def test_patterns_in_names_and_templates_are_checked_too() -> None:
    bad = group(name="{n.real}", simulate={"model": "hoist", "s": "{i.imag}"})
    bad["transport"] |= {"host": "{n.__doc__}"}
    found = problems(venue(bad))
    assert [p.split(":")[0] for p in found] == [
        "groups[0] (hoists).name",
        "groups[0] (hoists).transport.host",
        "groups[0] (hoists).simulate.s",
    ]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"count": -1}, "groups[0] (hoists).count: Input should be greater than or equal to 1"),
        ({"count": 0}, "groups[0] (hoists).count: Input should be greater than or equal to 1"),
        (
            {"count": MAX_DEVICES + 1},
            "groups[0] (hoists).count: Input should be less than or equal",
        ),
        ({"count": 2.5}, "groups[0] (hoists).count: Input should be a valid integer"),
        ({"first": -5}, "groups[0] (hoists).first: Input should be greater than or equal to 0"),
        ({"colour": "red"}, "groups[0] (hoists).colour: Extra inputs are not permitted"),
        ({"poll_hz": 0}, "groups[0] (hoists).poll_hz: Input should be greater than 0"),
        (
            {"transport": "modbus"},
            "groups[0] (hoists).transport: Input should be a valid dictionary",
        ),
    ],
)
def test_bad_group_keys(edit: dict[str, Any], expected: str) -> None:
    found = problems(venue(group(**edit)))
    assert any(p.startswith(expected) for p in found), found


def test_huge_counts_are_capped_over_all_groups() -> None:
    half = MAX_DEVICES // 2 + 1
    found = problems(venue(group(count=half), group(count=half)))
    assert found == [f"groups: {2 * half} devices in all, more than the {MAX_DEVICES} allowed"]


def test_all_problems_are_reported_together() -> None:
    found = problems(
        venue(
            group(count=-1),
            group(label="b", id="{n.x}"),
            fixtures(count=1, address=600),
        )
    )
    assert [p.split(":")[0] for p in found] == [
        "groups[0] (hoists).count",
        "groups[1] (b).id",
        "groups[2] (pars).transport.address",
    ]


def test_a_group_mistake_is_reported_once_against_the_group() -> None:
    found = problems(venue(group(count=50, id="bad id {n}")))
    assert len(found) == 1
    assert found[0].startswith("groups[0] (hoists).id: String should match pattern")
    g = group(count=4)
    g["transport"] |= {"timeout_s": -1}
    assert problems(venue(g)) == [
        "groups[0] (hoists).transport.modbus-tcp.timeout_s: Input should be greater than 0"
    ]


def test_groups_must_be_tables() -> None:
    data = venue()
    data["groups"] = ["hoist"]
    assert problems(data) == ["groups: expected an array of tables ([[groups]])"]
    data = venue(group())
    data["devices"] = {"id": "x"}
    assert problems(data) == ["devices: expected an array of tables ([[devices]])"]


def test_unlabelled_group_is_named_by_its_id_pattern() -> None:
    g = group(count=0)
    del g["label"]
    assert problems(venue(g))[0].startswith("groups[0] (hoist-{n:02}).count")


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(1, 300),
    universe=st.integers(1, 20),
    address=st.integers(1, 505),
    gap=st.integers(0, 20),
    align=st.integers(1, 32),
    per_universe=st.none() | st.integers(1, 64),
)
def test_dmx_packing_never_overlaps_or_overflows(
    count: int, universe: int, address: int, gap: int, align: int, per_universe: int | None
) -> None:
    """Whatever the rule, a packing either fits (no overlap, inside 1..512, in order) or is
    refused with a ConfigError naming the group; nothing else escapes."""
    spec: dict[str, Any] = {"count": count, "universe": universe, "address": address}
    spec |= {"gap": gap, "align": align, "last_universe": universe + 9}
    if per_universe is not None:
        spec["per_universe"] = per_universe
    data = venue(fixtures(**spec))
    try:
        got = [(t["universe"], t["address"]) for t in transports(data)]
    except ConfigError as exc:
        assert all(p.startswith("groups[0] (pars).transport") for p in exc.problems)
        return
    assert len(got) == count and got == sorted(got)
    used: set[tuple[int, int]] = set()
    for u, a in got:
        assert universe <= u <= universe + 9 and a >= 1 and a + 7 <= 512
        assert (a - 1) % align == 0
        channels = {(u, c) for c in range(a, a + 8)}
        assert not channels & used
        used |= channels


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_random_patterns_are_accepted_or_refused_never_crash(pattern: str) -> None:
    why = check_pattern(pattern)
    if why is None:
        formatted = pattern.format(n=12, i=11)
        assert len(formatted) <= len(pattern) + 20
    else:
        assert why.startswith("bad pattern")


# --- the shipped venues ---------------------------------------------------------------------


def summary(capsys: pytest.CaptureFixture[str], path: Path) -> dict[str, int]:
    assert main(["check", str(path)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(
        r"(\d+) devices, (\d+) types, (\d+) points, (\d+) machinery axes, (\d+) DMX universes",
        line,
    )
    assert match, line
    return dict(
        zip(
            ["devices", "types", "points", "axes", "universes"],
            map(int, match.groups()),
            strict=True,
        )
    )


def test_large_venue_is_an_opera_house(capsys: pytest.CaptureFixture[str]) -> None:
    size = summary(capsys, LARGE)
    assert size["devices"] >= 200
    assert size["types"] >= 20
    assert size["points"] >= 8000
    assert size["axes"] == 64
    assert size["universes"] == 64
    venue_ = load_venue(LARGE)
    assert not any(d.profile.protocol == "audio" for d in venue_.devices)  # no JACK needed
    assert all(
        d.transport.kind != "modbus-tcp" or d.transport.host == "127.0.0.1" for d in venue_.devices
    )
    simulated_ = expand_venue(read_toml(LARGE), LARGE)["devices"]
    assert all(d["simulate"]["model"] == d["profile"] for d in simulated_)


def test_demo_venue_is_a_small_theatre(capsys: pytest.CaptureFixture[str]) -> None:
    size = summary(capsys, DEMO)
    assert 25 <= size["devices"] <= 40
    venue_ = load_venue(DEMO)
    ids = {d.id: d for d in venue_.devices}
    # Existing tests and docs rely on these.
    assert {"hoist-1", "hoist-2", "lx-bar-1"} <= ids.keys()
    assert venue_.config.osc.udp_port == 53000 and venue_.config.osc.enabled
    assert venue_.config.mqtt.mode == "embedded" and venue_.config.mqtt.port == 18830
    assert venue_.store_path.suffix == ".sqlite3"
    # Every kind of gear, and nothing that needs JACK.
    profiles = {d.profile.id for d in venue_.devices}
    assert {
        "hoist",
        "lineshaft_flybar",
        "chain_hoist",
        "stage_lift",
        "pit_lift",
        "turntable",
        "wagon",
        "curtain_track",
        "fire_curtain",
        "load_cell",
        "temp_humidity",
        "spl_meter",
        "power_meter",
        "wireless_mic_receiver",
        "power_amplifier",
        "projector",
        "media_server",
        "led_wall_processor",
        "led_par_rgbw",
        "moving_head",
        "dimmer_rack",
        "dsp_matrix",
    } <= profiles
    assert "audio_interface" not in profiles
    for d in venue_.devices:
        t = d.transport
        if t.kind == "modbus-tcp":
            assert t.host == "127.0.0.1" and t.port >= 15021
    for out in venue_.config.dmx.outputs:
        assert out.targets == ["127.0.0.1"] and out.udp_port not in (None, 5568, 6454)
    simulated_ = expand_venue(read_toml(DEMO), DEMO)["devices"]
    assert all(d["simulate"]["model"] == d["profile"] for d in simulated_)


def test_simulation_table(tmp_path: Path) -> None:
    data = read_toml(DEMO)
    assert load_venue(DEMO).config.simulation.control_port == 18890
    data["simulation"] = {"control_port": 70000}
    with pytest.raises(ConfigError, match=r"simulation\.control_port"):
        parse_venue(data, tmp_path / "v.toml")
    data["simulation"] = {"processes": 0}
    with pytest.raises(ConfigError, match=r"simulation\.processes"):
        parse_venue(data, tmp_path / "v.toml")


def test_check_reports_group_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = LARGE.read_text().replace('id = "fly-{n:02}"', 'id = "fly-{n.__class__}"')
    bad = tmp_path / "v.toml"
    bad.write_text(text.replace("port = 16013", "port = 65535"))
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: groups[0] (flybars).id: bad pattern" in err
    assert f"{bad}: groups[8] (fire curtains).transport.port:" not in err  # 2 units on one port
    assert "2 problem(s) found" not in err and "1 problem(s) found" in err
