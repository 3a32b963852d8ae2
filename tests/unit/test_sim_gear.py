"""MQTT gear simulators without a broker: pure dynamics, the wire format, models, faults.

Documented ranges are copied here from docs/interfaces/devices/*.md (not from the simulator),
so a model publishing outside its page fails.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.core import DeviceSpec, FaultError, SimulationError
from simulators.gear import dynamics as dyn
from simulators.gear import wire
from simulators.gear.family import GearDevice, MqttFamily
from simulators.gear.models import MODELS, Model

REPO = Path(__file__).resolve().parents[2]
INF = math.inf

# point -> (JSON type, min, max), from the device pages.
RANGES: dict[str, dict[str, tuple[type, float, float]]] = {
    "load_cell": {"load": (float, -50, 4875), "peak": (float, -50, 4875),
                  "overload": (bool, 0, 1), "battery": (float, 0, 100),
                  "rssi": (float, -110, -30)},
    "temp_humidity": {"temperature": (float, -40, 85), "humidity": (float, 0, 100),
                      "dew_point": (float, -60, 85), "battery": (float, 0, 100)},
    "spl_meter": {"laf": (float, 20, 140), "laeq_1min": (float, 20, 140),
                  "laeq_15min": (float, 20, 140), "lafmax": (float, 20, 140),
                  "lcpeak": (float, 40, 150), "overload": (bool, 0, 1)},
    "people_counter": {"occupancy": (int, 0, 100000), "entries": (int, 0, 10000000),
                       "exits": (int, 0, 10000000), "capacity": (int, 0, 100000),
                       "fault": (bool, 0, 1)},
    "power_meter": {
        **{f"voltage_l{k}": (float, 0, 300) for k in (1, 2, 3)},
        **{f"current_l{k}": (float, 0, 150) for k in (1, 2, 3)},
        **{f"power_l{k}": (float, -35, 35) for k in (1, 2, 3)},
        **{f"pf_l{k}": (float, -1, 1) for k in (1, 2, 3)},
        "power_total": (float, -105, 105), "energy_total": (float, 0, INF),
        "frequency": (float, 45, 65),
    },
    "wireless_mic_receiver": {"frequency": (int, 470000, 694000), "rf_level": (float, -100, -20),
                              "antenna": (int, 1, 2), "af_level": (float, -60, 0),
                              "tx_present": (bool, 0, 1), "battery": (float, 0, 100),
                              "gain": (float, -18, 42), "mute": (bool, 0, 1)},
    "power_amplifier": {"standby": (bool, 0, 1), "temperature": (float, 0, 110),
                        **{f"mute_{k}": (bool, 0, 1) for k in (1, 2, 3, 4)},
                        **{f"level_{k}": (float, -60, 0) for k in (1, 2, 3, 4)},
                        **{f"protect_{k}": (bool, 0, 1) for k in (1, 2, 3, 4)}},
    "projector": {"power": (bool, 0, 1), "power_state": (int, 0, 4),
                  "shutter_closed": (bool, 0, 1), "input": (int, 1, 4),
                  "light_source_hours": (float, 0, 100000), "temperature": (float, -20, 100),
                  "error_code": (int, 0, 5)},
    "media_server": {"transport": (int, 0, 2), "playback_state": (int, 0, 4),
                     "clip": (int, 0, 9999), "timecode": (int, 0, 8639999),
                     "frame_rate": (float, 23.976, 60), "duration": (float, 0, INF),
                     "opacity": (float, 0, 100)},
    "led_wall_processor": {"brightness": (float, 0, 100), "input": (int, 1, 4),
                           "input_signal": (bool, 0, 1), "blackout": (bool, 0, 1),
                           "temperature": (float, -20, 100), "fault": (bool, 0, 1),
                           "fault_code": (int, 0, 5)},
    "shelly_3em": {
        "relay/0": (str, 0, 0),
        **{f"emeter/{k}/voltage": (float, 0, 280) for k in (0, 1, 2)},
        **{f"emeter/{k}/current": (float, 0, 120) for k in (0, 1, 2)},
        **{f"emeter/{k}/power": (float, -28000, 28000) for k in (0, 1, 2)},
        **{f"emeter/{k}/pf": (float, -1, 1) for k in (0, 1, 2)},
        **{f"emeter/{k}/total": (float, 0, INF) for k in (0, 1, 2)},
        **{f"emeter/{k}/total_returned": (float, 0, INF) for k in (0, 1, 2)},
    },
    "shelly_ht": {"sensor/temperature": (float, -40, 60), "sensor/humidity": (float, 0, 100),
                  "sensor/battery": (float, 0, 100), "sensor/ext_power": (bool, 0, 1)},
}  # fmt: skip


def check_value(model: str, point: str, value: Any) -> None:
    kind, lo, hi = RANGES[model][point]
    if kind is bool:
        assert isinstance(value, bool), (point, value)
    elif kind is str:
        assert value in ("on", "off"), (point, value)
    elif kind is int:
        assert isinstance(value, int) and not isinstance(value, bool), (point, value)
        assert lo <= value <= hi, (point, value)
    else:
        assert isinstance(value, int | float) and not isinstance(value, bool), (point, value)
        assert math.isfinite(value) and lo <= value <= hi, (point, value)


def make(model: str, **params: Any) -> Model:
    cls = MODELS[model]
    return cls(cls.Params(**params), random.Random(1), 1_700_000_000.0)


def spec(model: str, i: int = 0, **simulate: Any) -> DeviceSpec:
    vendor = MODELS[model].vendor
    transport = (
        {"kind": "mqtt", "base": f"shellies/x-{i}"} if vendor else {"kind": "mqtt", "node": "gw"}
    )
    return DeviceSpec(f"{model.replace('_', '-')}-{i}", model, transport,
                      {"model": model, **simulate},
                      f"venue.toml: devices[{i}].simulate")  # fmt: skip


# --- dynamics ---------------------------------------------------------------------------------

finite = st.floats(-1e3, 1e3)


@given(finite, finite, st.floats(0.01, 1e4), st.floats(0, 100), st.floats(0, 1e4), finite)
def test_ou_step_is_finite_and_reverts(x: float, mean: float, tau: float, sigma: float,
                                       dt: float, z: float) -> None:  # fmt: skip
    y = dyn.ou_step(x, mean, tau, sigma, dt, 0.0)
    assert abs(y - mean) <= abs(x - mean) + 1e-9
    assert math.isfinite(dyn.ou_step(x, mean, tau, sigma, dt, z))


def test_ou_step_stationary_spread_is_sigma() -> None:
    rng, x, xs = random.Random(3), 0.0, []
    for _ in range(20_000):
        x = dyn.ou_step(x, 5.0, 1.0, 2.0, 0.5, rng.gauss(0, 1))
        xs.append(x)
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((v - mean) ** 2 for v in xs) / len(xs))
    assert abs(mean - 5.0) < 0.2 and abs(sd - 2.0) < 0.2


@given(finite, finite, st.floats(0.01, 1e4), st.floats(0, 1e4))
def test_first_order_moves_towards_target(x: float, target: float, tau: float, dt: float) -> None:
    y = dyn.first_order(x, target, tau, dt)
    assert min(x, target) - 1e-9 <= y <= max(x, target) + 1e-9


@given(st.floats(-40, 60), st.floats(1, 100))
def test_dew_point_is_at_most_the_temperature(t: float, rh: float) -> None:
    d = dyn.dew_point_c(t, rh)
    assert d <= t + 1e-6
    assert abs(dyn.dew_point_c(t, 100.0) - t) < 1e-6


def test_dew_point_reference_value() -> None:
    assert dyn.dew_point_c(20.0, 50.0) == pytest.approx(9.26, abs=0.05)


@given(st.floats(20, 140), st.integers(1, 300))
def test_leq_of_a_constant_level_is_that_level(laf: float, seconds: int) -> None:
    w = dyn.SoundWindows()
    for _ in range(seconds * 10):
        w.add(0.1, laf, laf + 10, False)
    assert w.leq(60) == pytest.approx(laf, abs=1e-6)
    assert w.leq(900) == pytest.approx(laf, abs=1e-6)
    assert w.max_laf() == laf and not w.overloaded()


def test_leq_averages_energy_not_decibels() -> None:
    w = dyn.SoundWindows()
    for level in (100.0, 70.0):
        for _ in range(300):
            w.add(0.1, level, level, False)
    assert w.leq(60) == pytest.approx(97.0, abs=0.05)  # half the time at 100 dB: -3 dB


@given(st.floats(0, 1e5), st.sampled_from(dyn.FPS_RATES), st.floats(0, 10))
def test_timecode_is_monotonic(position: float, fps: float, step: float) -> None:
    assert dyn.timecode_frame(position + step, fps) >= dyn.timecode_frame(position, fps)
    assert dyn.timecode_frame(3600.0, 25.0) == 90_000


@given(st.floats(0, 1e6), st.floats(0, 1e6), st.floats(0.3, 1))
def test_phase_current_satisfies_p_equals_v_i_pf(p: float, v: float, pf: float) -> None:
    i = dyn.phase_current_a(p, v, pf)
    assert math.isfinite(i)
    if v >= 1:
        assert i * v * pf == pytest.approx(p, rel=1e-9, abs=1e-9)


# --- wire -------------------------------------------------------------------------------------


@given(st.one_of(st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=True),
                 st.text(max_size=50), st.none()), st.integers(0, 2**53 - 1))  # fmt: skip
def test_point_payload_is_standard_json_per_schema(value: Any, ts: int) -> None:
    doc = json.loads(wire.encode_point(value, ts), parse_constant=lambda c: pytest.fail(c))
    assert set(doc) == {"v", "ts", "q"} and doc["ts"] == ts
    if doc["v"] is None:
        assert doc["q"] == "bad"
    else:
        assert doc["v"] == value and doc["q"] == "good"


@given(st.binary(max_size=300), st.text(max_size=40))
def test_decode_request_raises_only_bad_request(payload: bytes, device: str) -> None:
    with contextlib.suppress(wire.BadRequest):
        wire.decode_request(f"flytower/v/gw/{device}/cmd/go", payload, "v", "gw")


def request(**doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_decode_request_cases() -> None:
    topic = "flytower/v/gw/amp-1/cmd/set_mute_1"
    ok = wire.decode_request(topic, request(id="a", ts=5, args={"muted": True}), "v", "gw")
    assert (ok.device, ok.name, ok.args, ok.reply_to) == (
        "amp-1",
        "set_mute_1",
        {"muted": True},
        topic + "/reply",
    )
    with pytest.raises(wire.BadRequest) as no_id:
        wire.decode_request(topic, request(ts=5), "v", "gw")
    assert no_id.value.request_id is None  # unanswerable: counted only
    with pytest.raises(wire.BadRequest) as bad_args:
        wire.decode_request(topic, request(id="b", ts=5, args={"x": [1]}), "v", "gw")
    assert bad_args.value.request_id == "b" and bad_args.value.reply_to == topic + "/reply"
    for reply_to in ("a/#", "$SYS/x", "flytower/v/gw/$state"):
        with pytest.raises(wire.BadRequest) as bad_reply:
            wire.decode_request(topic, request(id="c", ts=5, reply_to=reply_to), "v", "gw")
        assert bad_reply.value.request_id is None
    for payload in (b"[1]", b"\xff", b'{"id":"d","ts":NaN}', b"x" * 70_000):
        with pytest.raises(wire.BadRequest):
            wire.decode_request(topic, payload, "v", "gw")
    with pytest.raises(wire.BadRequest):
        wire.decode_request("flytower/v/other/amp-1/cmd/x", request(id="e", ts=1), "v", "gw")


@pytest.mark.parametrize("kind", wire.MALFORMED_KINDS)
def test_malformed_messages_break_the_schema(kind: str) -> None:
    topic, payload = wire.malformed(kind, "flytower/v/gw/d/load", 1)
    levels = topic.split("/")
    if kind == "wrong_topic":
        assert not wire.SEGMENT.fullmatch(levels[-1])
        return
    assert topic == "flytower/v/gw/d/load"
    try:
        doc = json.loads(payload, parse_constant=lambda c: 1 / 0)
    except (ValueError, ZeroDivisionError):
        return  # not JSON, or NaN
    assert len(payload) > wire.MAX_PAYLOAD or not isinstance(doc["ts"], int)


def test_unknown_malformed_kind() -> None:
    with pytest.raises(ValueError, match="unknown"):
        wire.malformed("rude", "t", 1)
    with pytest.raises(ValueError, match="unknown"):
        wire.malformed_vendor("rude", "t")


# --- models -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(MODELS))
@settings(max_examples=25)
@given(seed=st.integers(0, 2**32), dts=st.lists(st.floats(0.0, 5.0), min_size=1, max_size=40))
def test_published_values_stay_in_documented_ranges(model: str, seed: int,
                                                    dts: list[float]) -> None:  # fmt: skip
    cls = MODELS[model]
    m = cls(cls.Params(), random.Random(seed), 1_700_000_000.0)
    assert set(cls.schedule) == set(RANGES[model])
    t = 1_700_000_000.0
    for dt in dts:
        t += dt
        m.step(dt, t)
        values = m.values()
        assert set(values) <= set(RANGES[model])
        for point, value in values.items():
            check_value(model, point, value)
        json.dumps(m.truth(), allow_nan=False)


def test_power_meter_is_consistent_and_energy_integrates() -> None:
    m = make("power_meter", load_kw=30.0)
    e0 = float(m.values()["energy_total"])
    for _ in range(3600):
        m.step(1.0, 0.0)
    v = m.values()
    for k in (1, 2, 3):
        p = float(v[f"voltage_l{k}"]) * float(v[f"current_l{k}"]) * float(v[f"pf_l{k}"]) / 1000
        assert p == pytest.approx(float(v[f"power_l{k}"]), rel=2e-3)
    total = sum(float(v[f"power_l{k}"]) for k in (1, 2, 3))
    assert float(v["power_total"]) == pytest.approx(total, abs=1e-3)
    assert 25.0 < float(v["energy_total"]) - e0 < 35.0  # ~30 kW for one hour


def test_shelly_3em_relay_switches_the_load() -> None:
    m = make("shelly_3em")
    assert m.vendor_command("relay/0/command", b"off")
    m.step(1.0, 0.0)
    v = m.values()
    assert v["relay/0"] == "off" and v["emeter/0/power"] == 0 and float(v["emeter/0/voltage"]) > 200
    assert not m.vendor_command("relay/0/command", b"maybe")
    assert m.vendor_command("relay/0/command", b"toggle") and m.values()["relay/0"] == "on"


def test_commands_and_refusals() -> None:
    mic = make("wireless_mic_receiver")
    assert mic.command("set_frequency", {"frequency": 606_025}) == [["frequency", 606_025]]
    mic.step(0.1, 0.0)
    assert mic.values()["tx_present"] is False  # the transmitter was not retuned
    assert "battery" not in mic.values()
    from simulators.gear.models import Refused, Unavailable

    refused: list[tuple[str, dict[str, Any]]] = [
        ("set_frequency", {"frequency": 606_010}),
        ("set_frequency", {"frequency": 700_000}),
        ("set_gain", {"gain": 1.5}),
        ("set_mute", {"muted": 1}),
        ("set_mute", {"muted": True, "extra": 1}),
        ("launch", {}),
    ]
    for name, args in refused:
        with pytest.raises(Refused):
            mic.command(name, args)
    media = make("media_server", clip=0)
    with pytest.raises(Unavailable):
        media.command("play", {})


def test_projector_warms_up_and_cools_down() -> None:
    p = make("projector", warmup_s=2.0, cooldown_s=3.0)
    assert p.command("power_on", {}) == [["power", True]]
    states = []
    for _ in range(30):
        p.step(0.1, 0.0)
        states.append(p.values()["power_state"])
    assert states[0] == 1 and states[-1] == 2
    p.command("open_shutter", {})
    p.step(0.1, 0.0)
    assert p.values()["shutter_closed"] is True  # the blade takes 0.2 s
    p.step(0.15, 0.0)
    assert p.values()["shutter_closed"] is False
    p.command("power_off", {})
    p.command("power_on", {})  # during cool-down: acted on once it has finished
    p.command("power_off", {})
    seen = set()
    for _ in range(50):
        p.step(0.1, 0.0)
        seen.add(p.values()["power_state"])
    assert seen == {3, 0}
    p.inject("lamp_fault", {})
    p.step(0.1, 0.0)
    assert (p.values()["power_state"], p.values()["error_code"]) == (4, 3)


def test_media_server_plays_every_frame() -> None:
    m = make("media_server", clip=2, load_s=0.0)  # clip 2: 25 fps
    assert m.values()["frame_rate"] == 25.0
    m.command("play", {})
    t = 0.0
    frames: list[int] = []
    for _ in range(20):
        t += 0.1
        m.step(0.1, t)
        frames += [int(v) for _, v, _ in m.events()]
    assert frames == list(range(frames[0], frames[0] + len(frames)))  # no frame skipped
    assert 49 <= len(frames) <= 51
    m.command("load_clip", {"clip": 5000})  # beyond the bank: missing
    for _ in range(10):
        m.step(0.1, t)
    assert m.values()["playback_state"] == 4


def test_amplifier_trips_when_hot_and_recovers() -> None:
    amp = make("power_amplifier", thermal_tau_s=1.0, programme_db=-6.0)
    amp.inject("fan_failure", {})
    for _ in range(100):
        amp.step(0.1, 0.0)
    v = amp.values()
    assert all(v[f"protect_{k}"] for k in (1, 2, 3, 4))
    assert all(v[f"level_{k}"] == -60.0 for k in (1, 2, 3, 4))
    amp.clear("fan_failure")
    for _ in range(100):
        amp.step(0.1, 0.0)
    assert not any(amp.values()[f"protect_{k}"] for k in (1, 2, 3, 4))


def test_load_cell_tare_and_peak() -> None:
    lc = make("load_cell", load_kg=1000.0)
    lc.step(0.25, 0.0)
    lc.command("tare", {})
    lc.step(0.25, 0.0)
    assert abs(float(lc.values()["load"])) < 50
    lc.inject("overload", {"load_kg": 3600.0})
    lc.step(0.25, 0.0)
    assert lc.values()["overload"] is True
    lc.clear("overload")
    lc.step(0.25, 0.0)
    lc.command("reset_peak", {})
    assert float(lc.values()["peak"]) < 100


# --- the device wrapper and its generic faults ------------------------------------------------


class FakeLink:
    ready = True

    def __init__(self) -> None:
        self.severed: list[float | None] = []
        self.resumed = 0

    def sever(self, hold_s: float | None) -> None:
        self.severed.append(hold_s)

    def resume(self) -> None:
        self.resumed += 1


def device(model: str, **simulate: Any) -> tuple[GearDevice, FakeLink]:
    family = MqttFamily({"venue": {"id": "v"}, "mqtt": {"host": "127.0.0.1", "port": 1}})
    dev = family.add(spec(model, **simulate))
    link = FakeLink()
    dev.link = link  # type: ignore[assignment]
    return dev, link


def points(messages: list[tuple[str, bytes]]) -> dict[str, Any]:
    return {t.rsplit("/", 1)[-1]: json.loads(p)["v"] for t, p in messages}


def test_schedule_fast_periodic_and_on_change() -> None:
    dev, _ = device("wireless_mic_receiver")
    first = points(dev.tick(0.1, 0.0, 1e9))
    assert set(first) == set(RANGES["wireless_mic_receiver"])  # everything once at start
    second = points(dev.tick(0.1, 0.1, 1e9))
    assert {"rf_level", "af_level", "tx_present"} <= set(second)
    assert "frequency" not in second and "battery" not in second
    dev.handle_command("set_gain", {"gain": 30})
    assert points(dev.tick(0.1, 0.2, 1e9))["gain"] == 30
    later = points(dev.tick(0.1, 30.5, 1e9))
    assert {"battery", "frequency"} <= set(later)


def test_publish_hz_below_one() -> None:
    """venue-large.toml's sensors send one reading every 30 s (publish_hz = 0.0333)."""
    dev, _ = device("temp_humidity", publish_hz=0.0333)
    sent = [mono for mono in (x * 0.1 for x in range(0, 1201))  # two minutes at 10 Hz
            if "temperature" in points(dev.tick(0.1, mono, 1e9))]  # fmt: skip
    assert len(sent) == 4  # at 0, ~30, ~60, ~90 s
    assert all(29.9 < b - a < 30.2 for a, b in itertools.pairwise(sent))


@pytest.mark.parametrize("hz", [0, -1, -0.5, math.nan, math.inf, 51])
def test_publish_hz_must_be_a_rate(hz: float) -> None:
    family = MqttFamily({"venue": {"id": "v"}})
    with pytest.raises(SimulationError) as exc:
        family.add(spec("temp_humidity", 3, publish_hz=hz))
    message = str(exc.value)
    assert message.startswith("venue.toml: devices[3].simulate.publish_hz: ")
    assert "temp-humidity-3" in message and "above 0" in message


def test_media_server_sends_each_frame_once() -> None:
    dev, _ = device("media_server", clip=2, load_s=0.0, publish_hz=1.0)  # clip 2: 25 fps
    dev.tick(0.1, 0.0, 1e9)
    dev.handle_command("play", {})
    frames = [json.loads(p)["v"] for i in range(1, 21)
              for t, p in dev.tick(0.1, i * 0.1, 1e9 + i * 0.1)
              if t.endswith("/timecode")]  # fmt: skip
    assert frames == list(range(frames[0], frames[0] + len(frames)))  # none twice, none skipped
    dev.handle_command("stop", {})
    quiet = [t for i in range(21, 40) for t, _ in dev.tick(0.1, i * 0.1, 1e9)
             if t.endswith("/timecode")]  # fmt: skip
    assert 1 <= len(quiet) <= 3  # at the stop, then at least every second


def test_command_reply_codes() -> None:
    dev, _ = device("led_wall_processor")
    assert dev.handle_command("set_brightness", {"level": 50}) == ("ok", [["brightness", 50.0]])
    assert dev.handle_command("set_brightness", {"level": 150})[0] == "refused"
    assert dev.handle_command("nope", {})[0] == "refused"
    dev.inject("dropout", {})
    assert dev.handle_command("set_blackout", {"on": True})[0] == "unavailable"


def test_an_integer_point_drifts_in_whole_counts() -> None:
    """A count (the people counter's occupancy) stays an integer under drift: the driver
    refuses 1200.0083 for an int point, as it must."""
    dev, _ = device("people_counter", empty_s=3600.0, repeat=False)
    dev.tick(0.1, 0.0, 1e9)
    dev.inject("occupancy", {"people": 1200})
    dev.inject("drift", {"rate_per_h": 3600.0})  # one person a second
    dev._since["drift"] = 0.0
    seen = [points(dev.tick(0.1, t, 1e9)).get("occupancy") for t in (2.5, 33.7, 64.2)]
    drifted = [v for v in seen if v is not None]
    assert drifted and all(type(v) is int and v > 1200 for v in drifted), seen


def test_drift_stuck_dropout_malformed() -> None:
    dev, link = device("temp_humidity", temperature_c=20.0, daily_amplitude_c=0.0, publish_hz=10)
    dev.tick(0.1, 0.0, 1e9)
    dev.inject("drift", {"rate_per_h": 3600.0})  # 1 °C a second
    dev._since["drift"] = 0.0
    v = points(dev.tick(0.1, 5.0, 1e9))
    assert v["temperature"] > 23.5 and dev.truth()["temperature"] < 21.5
    dev.clear("drift")
    dev.inject("stuck", {"point": "humidity"})
    frozen = dev.active_faults()
    assert frozen == {"stuck": {"point": "humidity"}}
    hs = {points(dev.tick(0.1, 40.0 + 31 * i, 1e9))["humidity"] for i in range(5)}
    assert len(hs) == 1
    dev.clear()
    dev.inject("dropout", {"duration_s": 2.0, "drop_connection": True})
    assert link.severed == [2.0]
    dev._since["dropout"] = 1000.0
    assert dev.tick(0.1, 1001.0, 1e9) == []
    assert dev.tick(0.1, 1002.5, 1e9) != [] and "dropout" not in dev.active_faults()
    dev.inject("malformed", {"count": 10})
    bad = dev.tick(0.1, 1003.0, 1e9)[-10:]
    assert {t.rsplit("/", 1)[-1] for t, _ in bad} == {"temperature", "-temperature"}
    assert "malformed" not in dev.active_faults()  # the burst is over


@pytest.mark.parametrize(
    ("fault", "params", "match"),
    [
        ("melt", {}, "no fault"),
        ("drift", {"rate": 1}, "no parameter"),
        ("drift", {"rate_per_h": "fast"}, "must be a float"),
        ("drift", {"point": "nope"}, "no point"),
        ("malformed", {"kind": "rude"}, "kind must be"),
        ("malformed", {"count": 0}, "count 1 to 1000"),
        ("dropout", {"duration_s": -1}, "duration_s"),
        ("dropout", {"duration_s": math.nan}, "must be a float"),
        ("protect", {"channel": 7}, "channel"),
    ],
)
def test_bad_fault_injections(fault: str, params: dict[str, Any], match: str) -> None:
    dev, _ = device("power_amplifier")
    with pytest.raises(FaultError, match=match):
        dev.inject(fault, params)
    assert dev.active_faults() == {}


def test_catalogue_lists_generic_and_type_faults() -> None:
    dev, _ = device("wireless_mic_receiver")
    names = {f.name for f in dev.fault_catalogue()}
    assert names == {"drift", "stuck", "dropout", "malformed", "battery_low", "tx_off", "rf_fade"}


@pytest.mark.parametrize(
    ("model", "transport", "simulate", "match"),
    [
        ("projector", {"kind": "mqtt", "base": "x"}, {}, "needs transport.node"),
        ("shelly_3em", {"kind": "mqtt", "node": "gw"}, {}, "needs transport.base"),
        ("projector", {"kind": "modbus-tcp"}, {}, "needs an mqtt transport"),
        ("projector", {"kind": "mqtt", "node": "gw"}, {"warp": 9}, "unknown parameter"),
        ("projector", {"kind": "mqtt", "node": "gw"}, {"publish_hz": 0}, "publish_hz"),
        ("hoist", {"kind": "mqtt", "node": "gw"}, {}, "not an MQTT model"),
    ],
)
def test_bad_specs_name_where(model: str, transport: dict[str, Any], simulate: dict[str, Any],
                              match: str) -> None:  # fmt: skip
    family = MqttFamily({"venue": {"id": "v"}})
    bad = DeviceSpec("d-1", model, transport, {"model": model, **simulate}, "v.toml: devices[4]")
    with pytest.raises(SimulationError, match=match) as exc:
        family.add(bad)
    assert str(exc.value).startswith("v.toml: devices[4]")


def test_simulators_do_not_import_flytower() -> None:
    found = subprocess.run(
        ["grep", "-rnE", "from drivers|import drivers|from edge|from controller",
         str(REPO / "simulators" / "gear")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert found.stdout == ""
