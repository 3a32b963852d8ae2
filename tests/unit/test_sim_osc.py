"""The simulated DSP matrix without sockets: its state, and the OSC datagrams it reads."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pythonosc.osc_message_builder import OscMessageBuilder

from simulators.core import DeviceSpec, FaultError, SimulationError
from simulators.osc_matrix import MatrixServer, MatrixState, OscFamily, Undecodable, parse


def message(address: str, *args: Any) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return bytes(builder.build().dgram)


def test_writes_clamp_gains_and_refuse_bad_values() -> None:
    m = MatrixState()
    assert m.write("/in/3/gain", -12.5) is None and m.read("/in/3/gain") == ("f", -12.5)
    assert m.write("/in/3/gain", 40) is None and m.read("/in/3/gain") == ("f", 12.0)
    assert m.write("/out/8/gain", -500.0) is None and m.read("/out/8/gain") == ("f", -80.0)
    assert m.write("/out/8/gain", 11.0) is None and m.read("/out/8/gain") == ("f", 10.0)
    assert m.write("/out/2/mute", True) is None and m.read("/out/2/mute") == ("T", None)
    assert "takes a number" in (m.write("/in/1/gain", "loud") or "")
    assert "takes a number" in (m.write("/in/1/gain", True) or "")
    assert "refuses nan" in (m.write("/in/1/gain", math.nan) or "")
    assert "T or F" in (m.write("/in/1/mute", 1) or "")
    assert "outside 1..64" in (m.write("/preset", 65) or "")
    assert "takes an int" in (m.write("/preset", 2.0) or "")
    assert "unknown address" in (m.write("/in/9/gain", 0.0) or "")
    assert m.read("/in/9/gain") is None and m.read("/in/1") is None


def test_preset_recall_changes_everything_at_once() -> None:
    m = MatrixState()
    m.write("/in/1/mute", True)
    assert m.write("/preset", 7) is None
    t = m.as_dict()
    assert t["preset"] == 7 and m.read("/preset") == ("i", 7)
    assert all(t[f"in_{i}_gain"] == -6.0 and t[f"out_{i}_gain"] == -6.0 for i in range(1, 9))
    assert not any(t[f"in_{i}_mute"] or t[f"out_{i}_mute"] for i in range(1, 9))
    m.recall(64)
    assert m.as_dict()["in_1_gain"] == -63.0


def test_parse_reads_messages_and_refuses_the_rest() -> None:
    assert parse(message("/in/1/gain")) == ("/in/1/gain", [])
    assert parse(message("/in/1/mute", False)) == ("/in/1/mute", [False])
    assert parse(b"#bundle\x00" + bytes(8)) is None
    for bad, reason in [
        (b"/in/1/gain\x00\x00,x\x00\x00", "type tags"),
        (b"/in\x00,f\x00\x00", "need more bytes"),
        (b"/in\x00,if\x00" + bytes(6), "need more bytes"),
        (b"in/1\x00\x00\x00\x00", "does not start with"),
        (b"\xff\xfe\x00\x00", "codec|decode"),
        (b"", "parse|short|index"),
    ]:
        with pytest.raises(Undecodable, match=reason):
            parse(bad)


@given(st.binary(max_size=200))
def test_random_datagrams_only_raise_undecodable(data: bytes) -> None:
    with contextlib.suppress(Undecodable):
        parse(data)


@given(st.binary(max_size=64))
def test_random_arguments_behind_a_valid_address_only_raise_undecodable(tail: bytes) -> None:
    with contextlib.suppress(Undecodable):
        parse(b"/in/1/gain\x00\x00" + tail)


@given(st.one_of(st.floats(), st.integers(-(2**31), 2**31 - 1), st.booleans(), st.text()))
def test_any_written_value_leaves_a_valid_state(value: Any) -> None:
    m = MatrixState()
    for address in ("/in/1/gain", "/out/1/gain", "/in/1/mute", "/preset"):
        m.write(address, value)
    t = m.as_dict()
    assert -80 <= t["in_1_gain"] <= 12 and -80 <= t["out_1_gain"] <= 10
    assert isinstance(t["in_1_mute"], bool) and 1 <= t["preset"] <= 64


def spec(transport: dict[str, Any], **params: Any) -> DeviceSpec:
    return DeviceSpec("mx", "dsp_matrix", transport, {"model": "dsp_matrix", **params}, "v: mx")


UDP = {"kind": "osc", "host": "127.0.0.1", "port": 19000}


@pytest.mark.parametrize(
    ("device", "reason"),
    [
        (spec({**UDP, "protocol": "tcp"}), "UDP only"),
        (spec({"kind": "osc", "host": "127.0.0.1"}), "needs transport"),
        (spec({**UDP, "port": 70000}), "needs transport"),
        (spec(UDP, preset=0), "preset: must be 1..64"),
        (spec(UDP, gain=3), "unknown parameter"),
    ],
)
def test_bad_devices_are_refused(device: DeviceSpec, reason: str) -> None:
    with pytest.raises(SimulationError, match=reason) as err:
        OscFamily({}).add(device)
    assert str(err.value).startswith("v: mx")


def test_two_matrices_on_one_address_are_refused() -> None:
    family = OscFamily({})
    family.add(spec(UDP))
    with pytest.raises(SimulationError, match="already mx's address"):
        family.add(spec(UDP))


def test_start_preset_and_faults_are_checked() -> None:
    device = OscFamily({}).add(spec(UDP, preset=3))
    assert isinstance(device, MatrixServer) and device.truth()["in_1_gain"] == -2.0
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("hum", {}, "no fault 'hum'"),
        ("silence", {"x": 1}, "takes no parameter"),
        ("late_replies", {"delay_s": 0}, "delay_s must be"),
        ("late_replies", {"delay_s": 31}, "delay_s must be"),
        ("nonsense_replies", {"kind": "poetry"}, "kind must be one of"),
    ]
    for fault, params, reason in cases:
        with pytest.raises(FaultError, match=reason):
            device.inject(fault, params)
    device.inject("late_replies", {})
    device.inject("silence", {})
    assert device.active_faults() == {"late_replies": {"delay_s": 1.0}, "silence": {}}
    device.clear("silence")
    assert list(device.active_faults()) == ["late_replies"]
    device.clear()
    assert device.active_faults() == {}
