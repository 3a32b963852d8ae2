"""The built-in device profiles: valid, complete across the venue, and documented.

Each profile is checked against the rules a person writing one could break without the model
noticing: the shared machinery axis layout (taken from docs/interfaces/modbus-machinery.md
itself, so the map and the profiles cannot drift apart), motion commands flagged for the safety
supervisor, life-safety equipment never commanded, HTP only for intensities, and a device page
in docs/interfaces/devices/ that is exactly what tools/profile-docs writes from the profile.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from drivers.model import PROFILE_DIR, ConfigError, Profile, load_profile, parse_profile

ROOT = Path(__file__).resolve().parents[2]
MACHINERY_DOC = ROOT / "docs" / "interfaces" / "modbus-machinery.md"
PROFILE_FILES = sorted(PROFILE_DIR.glob("*.toml"))
AREAS = ("machinery", "lighting", "audio", "video", "sensors")

# SI-ish units a profile may use; a new one is a deliberate addition here.
UNITS = {
    *("", "mm", "mm/s", "mm/s²", "°", "°/s", "°/s²", "kg", "°C", "%", "s", "ms", "h"),
    *("dB", "dB(A)", "dB(C)", "dBFS", "dBm", "V", "A", "W", "kW", "Wh", "kWh", "Hz", "kHz"),
    "fps",
}


def _load_tool() -> ModuleType:
    path = ROOT / "tools" / "profile-docs"
    loader = importlib.machinery.SourceFileLoader("profile_docs", str(path))
    spec = importlib.util.spec_from_loader("profile_docs", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return _load_tool()


@pytest.fixture(scope="module")
def profiles() -> dict[str, Profile]:
    return {p.stem: load_profile(p) for p in PROFILE_FILES}


def _machinery(profiles: dict[str, Profile], tool: ModuleType) -> list[Profile]:
    return [p for p in profiles.values() if tool.area_of(p) == "machinery"]


# --- loading and coverage ---------------------------------------------------------------------


@pytest.mark.parametrize("path", PROFILE_FILES, ids=[p.stem for p in PROFILE_FILES])
def test_profile_loads_and_its_id_is_its_file_name(path: Path) -> None:
    profile = load_profile(path)
    assert profile.id == path.stem


def test_at_least_twenty_profiles_across_all_five_areas(
    profiles: dict[str, Profile], tool: ModuleType
) -> None:
    assert tuple(tool.AREAS) == AREAS
    by_area: dict[str, list[str]] = {a: [] for a in AREAS}
    for p in profiles.values():
        by_area[tool.area_of(p)].append(p.id)  # KeyError: a class without an area
    assert len(profiles) >= 20, sorted(profiles)
    assert all(by_area.values()), by_area


def test_an_unknown_device_class_has_no_area(tool: ModuleType) -> None:
    data = tomllib.loads((PROFILE_DIR / "spl_meter.toml").read_text())
    data["device_class"] = "teapot"
    with pytest.raises(KeyError, match="teapot"):
        tool.area_of(parse_profile(data))


def test_units_are_from_the_house_list(profiles: dict[str, Profile]) -> None:
    for p in profiles.values():
        for point in p.points.values():
            assert point.unit in UNITS, f"{p.id}.{point.name}: unit {point.unit!r}"
        for cmd in p.commands.values():
            for name, arg in cmd.args.items():
                assert arg.unit in UNITS, f"{p.id}.{cmd.name}.{name}: unit {arg.unit!r}"


def test_points_and_commands_say_what_they_are(profiles: dict[str, Profile]) -> None:
    for p in profiles.values():
        assert p.description and p.model, p.id
        for cmd in p.commands.values():
            assert cmd.description, f"{p.id}.{cmd.name}"
        if p.id == "hoist":
            continue  # not ours to edit; its points are described in modbus-machinery.md
        for point in p.points.values():
            assert point.description, f"{p.id}.{point.name}"


# --- machinery --------------------------------------------------------------------------------


def _documented_axis_layout() -> tuple[dict[str, tuple[int, str]], dict[str, int]]:
    """Registers (point -> address, type) and status bits (point -> bit) of the machinery map.

    Parsed from the tables of modbus-machinery.md §5, §5.1 and §7, so that a profile is held
    to the published document, not to another profile.
    """
    text = MACHINERY_DOC.read_text(encoding="utf-8")
    registers = {
        name: (int(addr), kind)
        for addr, name, kind in re.findall(
            r"^\| (\d+)(?:–\d+)? \| 4\d{4}(?:–4\d{4})? \| `(\w+)` \| (\w+)[^|]*\|", text, re.M
        )
    }
    bits = {
        name: int(bit)
        for bit, name in re.findall(r"^\| (\d+) \| 0x[0-9A-F]{4} \| `(\w+)` \|", text, re.M)
    }
    return registers, bits


AXIS_REGISTERS, AXIS_BITS = _documented_axis_layout()
COMMAND_BLOCK = {n for n, (addr, _) in AXIS_REGISTERS.items() if addr >= 100}


def test_the_machinery_map_document_parses_into_the_axis_layout() -> None:
    # If the document's tables change shape, this fails first and says so.
    assert {"position", "velocity", "load", "fault_code", "motor_temperature"} <= set(
        AXIS_REGISTERS
    )
    assert {"target_position", "speed_limit", "acceleration", "control_word"} <= COMMAND_BLOCK
    assert {"heartbeat", "watchdog_ms"} <= COMMAND_BLOCK
    assert AXIS_BITS["ready"] == 0 and AXIS_BITS["watchdog_ok"] == 9
    assert len(AXIS_BITS) == 10


def _check_register(p: Profile, name: str, address: int, kind: str) -> None:
    point = p.points.get(name)
    assert point is not None, f"{p.id}: no point '{name}' (register {address})"
    assert point.modbus is not None
    assert point.modbus.table == "holding", f"{p.id}.{name}"
    assert point.modbus.address == address, f"{p.id}.{name}: address {point.modbus.address}"
    assert point.modbus.encoding == kind, f"{p.id}.{name}: {point.modbus.encoding} not {kind}"
    assert point.access.writable == (address >= 100), f"{p.id}.{name}: access"


def test_every_axis_shares_the_documented_status_and_command_blocks(
    profiles: dict[str, Profile], tool: ModuleType
) -> None:
    axes = _machinery(profiles, tool)
    assert len(axes) >= 8
    for p in axes:
        assert p.protocol == "modbus", p.id
        monitor_only = p.device_class == "fire_curtain"
        for name, (address, kind) in AXIS_REGISTERS.items():
            if monitor_only and name in COMMAND_BLOCK:
                assert name not in p.points, f"{p.id}: '{name}' must not exist"
                continue
            _check_register(p, name, address, kind)
        for name, bit in AXIS_BITS.items():
            wire = p.points[name].modbus
            assert wire is not None and (wire.address, wire.bit) == (6, bit), f"{p.id}.{name}"
        # Extras live in their own areas so the common blocks are read exactly as documented.
        for point in p.points.values():
            assert point.modbus is not None
            if point.name not in AXIS_REGISTERS and point.name not in AXIS_BITS:
                assert 20 <= point.modbus.address < 100 or point.modbus.address >= 120, (
                    f"{p.id}.{point.name}: extras start at register 20 (status) or 120"
                )


def test_every_commanded_axis_has_the_same_commands_and_heartbeat(
    profiles: dict[str, Profile], tool: ModuleType
) -> None:
    hoist = profiles["hoist"]
    for p in _machinery(profiles, tool):
        if p.device_class == "fire_curtain":
            continue
        for name in ("stop", "disable", "reset_fault"):
            assert p.commands[name].writes == hoist.commands[name].writes, f"{p.id}.{name}"
        assert p.heartbeat == hoist.heartbeat, p.id
        move = [w.point for w in p.commands["move_to"].writes]
        common = [n for n in move if n in COMMAND_BLOCK]
        assert common == ["speed_limit", "acceleration", "target_position", "control_word"]
        assert p.commands["move_to"].writes[-1].value == 3, p.id


def _moves(p: Profile, command: str) -> bool:
    """Whether a command sets machinery in motion, from what it writes."""
    for w in p.commands[command].writes:
        if w.point in ("target_position", "bolt_command", "direction"):
            return True
        # Run to target (bit 1) without a controlled stop (bit 2).
        if w.point == "control_word" and w.value is not None and int(w.value) & 0b110 == 0b010:
            return True
    return False


def test_motion_commands_are_flagged_for_the_safety_supervisor(
    profiles: dict[str, Profile], tool: ModuleType
) -> None:
    flagged = 0
    for p in profiles.values():
        for name, cmd in p.commands.items():
            if _moves(p, name):
                assert cmd.moves_machinery, f"{p.id}.{name} moves machinery but is not flagged"
            if cmd.moves_machinery:
                flagged += 1
                assert tool.area_of(p) == "machinery", f"{p.id}.{name}"
    assert flagged >= 8


def test_the_fire_curtain_is_monitored_and_never_commanded(profiles: dict[str, Profile]) -> None:
    curtain = profiles["fire_curtain"]
    assert not curtain.commands
    assert curtain.heartbeat is None
    assert all(not p.access.writable for p in curtain.points.values())


def test_a_command_writing_a_read_only_point_is_refused_with_its_name() -> None:
    data = tomllib.loads((PROFILE_DIR / "fire_curtain.toml").read_text())
    data["commands"] = {
        "lower": {"writes": [{"point": "curtain_state", "value": 2}], "moves_machinery": True}
    }
    with pytest.raises(ConfigError) as info:
        parse_profile(data, "fire_curtain.toml")
    (problem,) = info.value.problems
    assert problem.endswith("commands.lower.writes[0]: point 'curtain_state' is read-only")
    assert str(info.value).startswith("fire_curtain.toml: ")


def test_turntable_angles_wrap_within_one_turn(profiles: dict[str, Profile]) -> None:
    tt = profiles["turntable"]
    for name in ("position", "target_position"):
        point = tt.points[name]
        assert (point.unit, point.min, point.max) == ("°", 0.0, 359.99)
        assert point.modbus is not None and point.modbus.scale == 0.01
    assert tt.resolve_command("move_to", {"position": 359.99, "direction": 2})[-1][1] == 3


# --- lighting, audio, video, sensors ----------------------------------------------------------


def test_dmx_intensities_are_htp_and_everything_else_ltp(profiles: dict[str, Profile]) -> None:
    for p in profiles.values():
        if p.protocol != "dmx":
            continue
        for point in p.points.values():
            assert point.dmx is not None
            intensity = re.fullmatch(r"intensity|dimmer(_\d+)?", point.name) is not None
            assert (point.dmx.merge == "htp") == intensity, f"{p.id}.{point.name}"


def test_moving_head_pan_and_tilt_are_16_bit_at_centre(profiles: dict[str, Profile]) -> None:
    head = profiles["moving_head"]
    for name in ("pan", "tilt"):
        wire = head.points[name].dmx
        assert wire is not None and (wire.bits, wire.default) == (16, 32768)


def test_mqtt_profiles_map_all_points_or_none(profiles: dict[str, Profile]) -> None:
    third_party = 0
    for p in profiles.values():
        if p.protocol != "mqtt":
            continue
        mapped = [point.mqtt is not None for point in p.points.values()]
        assert all(mapped) or not any(mapped), p.id
        third_party += all(mapped)
        for point in p.points.values():
            # A retained availability topic changes only on (dis)connect, so it never goes stale.
            if point.access.readable and point.name != "online":
                assert point.stale_after_s is not None, f"{p.id}.{point.name}: stale_after_s"
            if point.mqtt is not None and point.access.writable:
                assert point.mqtt.set_topic is not None, f"{p.id}.{point.name}: set_topic"
    assert third_party >= 1


def test_osc_points_have_unique_addresses(profiles: dict[str, Profile]) -> None:
    for p in profiles.values():
        if p.protocol != "osc":
            continue
        addresses = [point.osc.address for point in p.points.values() if point.osc is not None]
        assert len(addresses) == len(p.points) == len(set(addresses)), p.id


# --- documentation ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PROFILE_FILES, ids=[p.stem for p in PROFILE_FILES])
def test_every_profile_has_a_current_page(path: Path, tool: ModuleType) -> None:
    profile = load_profile(path)
    page = tool.page_path(profile)
    assert page.is_file(), f"no page {page}: run tools/profile-docs"
    text = page.read_text(encoding="utf-8")
    prose = tool.prose_of(text)
    assert prose is not None, f"{page}: the prose markers are missing"
    assert prose.strip() and "TODO" not in prose, f"{page}: write the prose"
    assert text == tool.render(profile, prose), f"{page} is out of date: run tools/profile-docs"
    if tool.area_of(profile) == "machinery":
        assert "Safety" in prose, f"{page}: machinery pages have safety notes"


def test_the_interfaces_index_lists_every_page(tool: ModuleType) -> None:
    text = tool.INDEX.read_text(encoding="utf-8")
    assert text == tool.index_with(text, tool.builtin_profiles()), "run tools/profile-docs"
    for path in PROFILE_FILES:
        assert f"(devices/{path.stem}.md)" in text


def test_the_tool_renders_a_page_for_a_new_profile_with_a_todo(tool: ModuleType) -> None:
    data: dict[str, Any] = tomllib.loads((PROFILE_DIR / "shelly_ht.toml").read_text())
    data["id"] = "new_sensor"
    page = tool.render(parse_profile(data), tool.TODO)
    assert tool.prose_of(page) == tool.TODO
    assert "`sensor/temperature`" in page and "# Shelly H&T (Gen1) (`new_sensor`)" in page
