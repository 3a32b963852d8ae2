"""The simulated DMX node without sockets: merge, sequence, timing, fixtures and their faults."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators.core import DeviceSpec, FaultError, SimulationError
from simulators.lighting import DmxFamily
from simulators.lighting.fixtures import Fixture
from simulators.lighting.receiver import SOURCE_TIMEOUT_S, Timing, Universe

# --- one universe -----------------------------------------------------------------------------


def test_highest_priority_wins_and_equal_priorities_merge_htp() -> None:
    u = Universe(1)
    u.accept("sacn:a", "sacn", "a", 100, 0, bytes([10, 200, 0]), 0.0)
    u.accept("sacn:b", "sacn", "b", 100, 0, bytes([50, 20, 0, 7]), 0.0)
    u.refresh(0.0)
    assert list(u.merged[:4]) == [50, 200, 0, 7]
    u.accept("sacn:c", "sacn", "c", 150, 0, bytes([1]), 0.1)
    u.refresh(0.1)
    assert list(u.merged[:4]) == [1, 0, 0, 0]  # only the highest priority counts


def test_artnet_sources_merge_htp_and_a_third_is_refused() -> None:
    u = Universe(1)
    assert u.accept("artnet:10.0.0.1", "artnet", "x", 100, 0, bytes([0, 90]), 0.0)
    assert u.accept("artnet:10.0.0.2", "artnet", "y", 100, 0, bytes([80, 10]), 0.0)
    assert not u.accept("artnet:10.0.0.3", "artnet", "z", 100, 0, bytes([255, 255]), 0.0)
    u.refresh(0.0)
    assert list(u.merged[:2]) == [80, 90]
    assert u.refused_sources == 1


def test_sources_time_out_and_terminate() -> None:
    u = Universe(1)
    u.accept("sacn:a", "sacn", "a", 100, 0, bytes([10]), 0.0)
    u.accept("sacn:b", "sacn", "b", 100, 0, bytes([20]), 2.0)
    u.refresh(2.6)  # a is 2.6 s old: gone
    assert list(u.sources) == ["sacn:b"] and u.merged[0] == 20 and u.live
    u.accept("sacn:b", "sacn", "b", 100, 1, bytes([20]), 3.0, terminated=True)
    u.refresh(3.0)
    assert not u.sources and not u.live and u.merged[0] == 0 and u.lost_at == 3.0
    u.accept("sacn:b", "sacn", "b", 100, 2, bytes([30]), 4.0)
    u.refresh(4.0)
    assert u.live and u.lost_at is None


def test_timeout_loss_time_is_the_expiry_not_the_refresh() -> None:
    u = Universe(1)
    u.accept("sacn:a", "sacn", "a", 100, 0, bytes([10]), 1.0)
    u.refresh(9.0)
    assert u.lost_at == 1.0 + SOURCE_TIMEOUT_S


def test_stale_packets_are_dropped_and_gaps_counted() -> None:
    u = Universe(1)
    for seq, ok in [(10, True), (11, True), (11, False), (5, False), (14, True), (200, True)]:
        assert u.accept("sacn:a", "sacn", "a", 100, seq, bytes([seq]), 0.0) == ok
    assert u.sequence_errors == 2
    assert u.lost == 2 + 185
    u.refresh(0.0)
    assert u.merged[0] == 200


def test_artnet_sequence_wraps_past_zero_and_zero_means_unsequenced() -> None:
    u = Universe(1)
    for seq in (254, 255, 1, 2):
        assert u.accept("artnet:h", "artnet", "h", 100, seq, b"\x00\x00", 0.0)
    assert u.lost == 0 and u.sequence_errors == 0
    for _ in range(3):
        assert u.accept("artnet:h", "artnet", "h", 100, 0, b"\x00\x00", 0.0)


@given(st.lists(st.integers(0, 255), max_size=300))
def test_any_sequence_of_sequence_numbers_keeps_counters_sane(seqs: list[int]) -> None:
    u = Universe(1)
    for seq in seqs:
        u.accept("sacn:a", "sacn", "a", 100, seq, b"\x01", 0.0)
    assert u.packets + u.sequence_errors == len(seqs)
    assert u.lost >= 0


def test_timing_rate_and_jitter() -> None:
    t = Timing()
    for i in range(500):
        t.record(100.0 + i * 0.025 + (0.002 if i % 10 == 0 else 0.0))
    s = t.summary(100.0 + 500 * 0.025)
    assert s["rate_hz"] == pytest.approx(40.0, rel=0.01)
    assert s["interval_p50_ms"] == pytest.approx(25.0, abs=0.01)
    assert s["jitter_p99_ms"] == pytest.approx(2.0, abs=0.05)
    assert Timing().summary(0.0)["rate_hz"] is None


# --- the family and its fixtures --------------------------------------------------------------

VENUE: dict[str, Any] = {
    "dmx": {
        "outputs": [
            {"protocol": "sacn", "universes": [1, 2], "targets": ["127.0.0.1"], "udp_port": 15568},
            {"protocol": "artnet", "universes": [3], "targets": ["127.0.0.1"], "udp_port": 16454},
            {"protocol": "sacn", "universes": [4]},
            {"protocol": "enttec", "universes": [5], "device": "/dev/ttyUSB0"},
        ]
    }
}


def spec(device_id: str, model: str, universe: int, address: int, **params: Any) -> DeviceSpec:
    return DeviceSpec(
        device_id,
        model,
        {"kind": "dmx", "universe": universe, "address": address},
        {"model": model, **params},
        f"venue.toml: devices ({device_id}).simulate",
    )


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def family_with(*specs: DeviceSpec) -> tuple[DmxFamily, Clock, list[Fixture]]:
    family = DmxFamily(VENUE)
    clock = Clock()
    family.now = clock  # type: ignore[method-assign]
    fixtures = [family.add(s) for s in specs]
    assert all(isinstance(f, Fixture) for f in fixtures)
    return family, clock, fixtures  # type: ignore[return-value]


def send(family: DmxFamily, universe: int, slots: list[int], at: float, seq: int = 0) -> None:
    family._universes[universe].accept("sacn:x", "sacn", "x", 100, seq, bytes(slots), at)


def test_led_par_truth_follows_its_page() -> None:
    family, clock, (par,) = family_with(spec("par", "led_par_rgbw", 1, 10))
    t = par.truth()
    assert t["state"] == "no_signal" and t["intensity"] == 0 and t["red"] == 100
    assert t["channels"] == [0, 255, 255, 255, 255, 0, 0, 0]
    send(family, 1, [0] * 9 + [255, 128, 0, 64, 255, 10, 40, 70], clock.t)
    t = par.truth()
    assert t["state"] == "live" and t["receiving"]
    assert t["intensity"] == 100 and t["red"] == pytest.approx(50.196, abs=1e-3)
    assert (t["green"], t["white"]) == (0, 100)
    assert t["strobe"] == 10 and t["strobe_hz"] == 1.0
    assert t["colour_macro"] == 40 and t["macro"] == 3
    assert t["output_red"] is None  # a macro decides the colour
    assert t["dimmer_curve"] == 70 and t["curve"] == "square"
    assert t["signal"]["live"] and t["universe"] == 1 and t["address"] == 10
    send(family, 1, [0] * 9 + [128, 255, 0, 0, 0, 0, 0, 200], clock.t, 1)
    t = par.truth()
    x = 128 / 255
    assert t["curve"] == "s_curve"
    assert t["output"] == pytest.approx((3 * x * x - 2 * x**3) * 100, abs=1e-3)
    assert t["output_red"] == pytest.approx(t["output"], abs=1e-3) and t["output_green"] == 0


def test_moving_head_truth_and_reset_after_three_seconds() -> None:
    family, clock, (head,) = family_with(spec("mh", "moving_head", 2, 1))
    t = head.truth()
    assert t["pan"] == pytest.approx(270.004, abs=1e-3) and t["shutter_state"] == "open"
    frame = [0xFF, 0xFF, 0, 0, 7, 0, 0x80, 0x00, 24, 130, 200, 128, 0, 255, 0, 105]
    send(family, 2, frame, clock.t)
    t = head.truth()
    assert (t["pan"], t["tilt"]) == (540.0, 0.0)
    assert t["dimmer"] == pytest.approx(50.0, abs=0.01) and t["output"] == 0  # closed shutter
    assert (t["colour"], t["gobo"], t["gobo_mode"]) == ("slot 2", "shake", "rotate_ccw")
    assert t["prism_in"] and t["zoom"] == 100 and t["control_function"] == "reset"
    assert t["resets"] == 0
    for seq, dt in enumerate([1.0, 1.0, 1.1, 1.0], start=1):
        clock.t += dt
        send(family, 2, frame, clock.t, seq)
        family.refresh(force=True)
    assert head.truth()["resets"] == 1  # once per hold, however long it is held
    send(family, 2, [*frame[:15], 0], clock.t, 9)
    family.refresh(force=True)
    clock.t += 0.1
    send(family, 2, frame, clock.t, 10)
    family.refresh(force=True)
    clock.t += 3.0
    send(family, 2, frame, clock.t, 11)
    assert head.truth()["resets"] == 2


def test_dimmer_rack_holds_then_fades_on_loss() -> None:
    family, clock, (rack,) = family_with(spec("rack", "dimmer_rack", 1, 1, hold_s=4, fade_s=2))
    send(family, 1, [255, 51] + [0] * 10, clock.t)
    assert rack.truth()["dimmer_1"] == 100
    clock.t += SOURCE_TIMEOUT_S + 3.9  # lost at +2.5, held 4 s
    t = rack.truth()
    assert t["state"] == "hold" and t["dimmer_1"] == 100 and not t["receiving"]
    clock.t += 1.1  # 1 s into the 2 s fade
    t = rack.truth()
    assert t["state"] == "blackout" and t["dimmer_1"] == pytest.approx(50, abs=0.1)
    assert t["dimmer_2"] == pytest.approx(10, abs=0.1)
    clock.t += 1.0
    assert rack.truth()["dimmer_1"] == 0


def test_loss_behaviour_faults() -> None:
    family, clock, (par,) = family_with(spec("par", "led_par_rgbw", 1, 1))
    par.inject("no_signal_hold", {})
    send(family, 1, [200], clock.t)
    family.refresh()  # the clock ticks while the frame is live
    clock.t += 1000
    assert par.truth()["intensity"] == pytest.approx(78.431, abs=1e-3)  # held for ever
    par.inject("blackout_on_loss", {})
    assert par.active_faults() == {"blackout_on_loss": {}}
    assert par.truth()["intensity"] == 0 and par.truth()["state"] == "blackout"
    par.inject("no_signal_hold", {"hold_s": 2000})
    assert par.truth()["state"] == "hold"
    par.clear()
    assert par.active_faults() == {} and par.truth()["intensity"] == 0  # default 5 s is over


def test_receiver_offline_ignores_data_and_holds() -> None:
    family, clock, (a, b) = family_with(
        spec("a", "dimmer_rack", 1, 1, hold_s=1, fade_s=0), spec("b", "dimmer_rack", 1, 13)
    )
    send(family, 1, [100] * 24, clock.t)
    a.inject("receiver_offline", {})
    clock.t += 0.5
    send(family, 1, [200] * 24, clock.t, 1)
    ta, tb = a.truth(), b.truth()
    assert ta["channels"][0] == 100 and not ta["receiving"] and ta["state"] == "hold"
    assert tb["channels"][0] == 200 and tb["receiving"]
    assert family._art_ports(family._universes)[0] == [0]  # b still announces universe 1
    b.inject("receiver_offline", {})
    assert family._art_ports(family._universes)[0] == []
    clock.t += 1.0
    assert a.truth()["dimmer_1"] == 0
    a.clear("receiver_offline")
    assert a.truth()["channels"][0] == 200 and a.truth()["receiving"]


def test_bad_channels_stick() -> None:
    family, clock, (par,) = family_with(spec("par", "led_par_rgbw", 1, 1))
    send(family, 1, [10, 20, 30], clock.t)
    par.inject("bad_channels", {"channels": [1], "value": 255})
    par.inject("bad_channels", {"channels": [2, 3]})  # stuck where they are
    send(family, 1, [0, 0, 0], clock.t, 1)
    assert par.truth()["channels"][:3] == [255, 20, 30]
    par.clear("bad_channels")
    assert par.truth()["channels"][:3] == [0, 0, 0]


@pytest.mark.parametrize(
    ("fault", "params", "reason"),
    [
        ("melting", {}, "no fault 'melting'"),
        ("receiver_offline", {"x": 1}, "takes no parameter"),
        ("no_signal_hold", {"hold_s": -1}, "hold_s must be"),
        ("no_signal_hold", {"hold_s": math.inf}, "hold_s must be"),
        ("no_signal_hold", {"hold_s": "long"}, "hold_s must be"),
        ("bad_channels", {}, "non-empty list"),
        ("bad_channels", {"channels": [9]}, "non-empty list of 1..8"),
        ("bad_channels", {"channels": [True]}, "non-empty list"),
        ("bad_channels", {"channels": [1], "value": 256}, "0..255"),
    ],
)
def test_bad_fault_injections_are_refused(fault: str, params: dict[str, Any], reason: str) -> None:
    _, _, (par,) = family_with(spec("par", "led_par_rgbw", 1, 1))
    with pytest.raises(FaultError, match=reason):
        par.inject(fault, params)
    assert par.active_faults() == {}


@pytest.mark.parametrize(
    ("device", "reason"),
    [
        (spec("x", "led_par_rgbw", 9, 1), "universe 9 is not sent by any"),
        (spec("x", "led_par_rgbw", 5, 1), "only Art-Net and sACN"),
        (spec("x", "moving_head", 1, 500), "16-channel moving_head at address 500"),
        (spec("x", "led_par_rgbw", 1, 0), "does not fit"),
        (spec("x", "led_par_rgbw", 1, 1, hold_s=-2), "hold_s: must be"),
        (spec("x", "led_par_rgbw", 1, 1, colour="red"), "unknown parameter"),
        (spec("x", "hoist", 1, 1), "not a DMX fixture model"),
        (
            DeviceSpec("x", "p", {"kind": "dmx", "universe": "1"}, {"model": "dimmer_rack"}, "w"),
            "needs transport",
        ),
    ],
)
def test_bad_devices_are_refused_with_where(device: DeviceSpec, reason: str) -> None:
    with pytest.raises(SimulationError, match=reason) as err:
        DmxFamily(VENUE).add(device)
    assert str(err.value).startswith(device.where)


def test_listening_addresses_follow_the_outputs() -> None:
    family, _, _ = family_with(
        spec("a", "led_par_rgbw", 1, 1),
        spec("b", "led_par_rgbw", 2, 1),
        spec("c", "led_par_rgbw", 3, 1),
        spec("d", "led_par_rgbw", 4, 1),
    )
    assert {k: sorted(v) for k, v in family._endpoints.items()} == {
        ("127.0.0.1", 15568): [1, 2],
        ("127.0.0.1", 16454): [3],
        ("239.255.0.4", 5568): [4],
    }
    assert family._groups == {("239.255.0.4", 5568): "239.255.0.4"}


def test_decoding_is_one_gather_for_many_fixtures() -> None:
    specs = [spec(f"p{i}", "led_par_rgbw", 1 + i % 2, 1 + 8 * (i // 2)) for i in range(100)]
    family, clock, fixtures = family_with(*specs)
    send(family, 1, list(np.arange(400) % 256), clock.t)
    family.refresh(force=True)
    for f in fixtures:
        expected = [0] * 8 if f.universe == 2 else [(f.address - 1 + k) % 256 for k in range(8)]
        assert f.bank.effective[f.index].tolist() == (
            expected if f.universe == 1 else [0, 255, 255, 255, 255, 0, 0, 0]
        )
