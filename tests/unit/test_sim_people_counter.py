"""The simulated people counter without a broker: its audience, its counter, its override.

The documented rules (docs/interfaces/devices/people_counter.md) are checked on the model and on
the device wrapper the control endpoint talks to: counts never negative, ``entries - exits ==
occupancy`` after every step, a show that fills and empties whatever the step size, the
``occupancy`` override held until cleared, and hostile injections refused without a change.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.core import DeviceSpec, FaultError, SimulationError
from simulators.gear.audience import (
    MAX_COUNT,
    MAX_OCCUPANCY,
    Audience,
    Counter,
    Crowd,
    Show,
    ShowError,
    poisson,
)
from simulators.gear.family import GearDevice, MqttFamily
from simulators.gear.models import MODELS, PeopleCounter, Refused

T0 = 1_700_000_000.0
# A show compressed to 60 s: 5 empty, 15 doors, 12 act 1, 10 interval, 12 act 2, 6 egress.
SHORT: dict[str, Any] = {"empty_s": 5.0, "doors_s": 15.0, "act_1_s": 12.0, "interval_s": 10.0,
         "act_2_s": 12.0, "egress_s": 6.0}  # fmt: skip


def counter(seed: int = 1, **params: Any) -> PeopleCounter:
    return PeopleCounter(PeopleCounter.Params(**params), random.Random(seed), T0)


def run(m: PeopleCounter, seconds: float, dt: float) -> list[dict[str, Any]]:
    """The truth after every step of ``dt`` over ``seconds``, each checked against the rules."""
    out = []
    for _ in range(round(seconds / dt)):
        m.step(dt, T0)
        t = m.truth()
        check(t)
        out.append(t)
    return out


def check(t: dict[str, Any]) -> None:
    assert t["entries"] - t["exits"] == t["occupancy"], t
    assert 0 <= t["occupancy"] <= MAX_OCCUPANCY and t["people_inside"] >= 0, t
    assert 0 <= t["exits"] <= t["entries"] <= MAX_COUNT, t
    for point in ("occupancy", "entries", "exits", "capacity"):
        assert type(t[point]) is int, (point, t[point])
    assert type(t["fault"]) is bool


def device(**simulate: Any) -> GearDevice:
    family = MqttFamily({"venue": {"id": "v"}, "mqtt": {"host": "127.0.0.1", "port": 1}})
    return family.add(
        DeviceSpec("counter-1", "people_counter", {"kind": "mqtt", "node": "foh"},
                   {"model": "people_counter", **simulate}, "v.toml: devices[2].simulate")
    )  # fmt: skip


def by_phase(truths: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for t in truths:
        out.setdefault(t["phase"], []).append(t)
    return out


# --- the counter ------------------------------------------------------------------------------

ops = st.lists(
    st.tuples(st.sampled_from(["in", "out", "set", "reset"]), st.integers(-5, 150_000)),
    max_size=60,
)


@given(ops)
def test_counter_never_negative_and_occupancy_is_entries_minus_exits(
    steps: list[tuple[str, int]],
) -> None:
    c = Counter()
    for op, n in steps:
        if op == "in":
            assert 0 <= c.count_in(n) <= max(n, 0)
        elif op == "out":
            assert 0 <= c.count_out(n) <= max(n, 0)
        elif op == "set":
            if 0 <= n <= MAX_OCCUPANCY:
                c.set_occupancy(n)
                assert c.occupancy == n
            else:
                before = (c.entries, c.exits)
                with pytest.raises(ShowError, match="occupancy must be"):
                    c.set_occupancy(n)
                assert (c.entries, c.exits) == before
        else:
            c.reset()
        assert c.entries >= 0 and c.exits >= 0
        assert c.occupancy == c.entries - c.exits
        assert 0 <= c.occupancy <= MAX_OCCUPANCY


def test_counter_cannot_count_out_whom_it_never_counted_in() -> None:
    c = Counter()
    assert c.count_out(3) == 0 and (c.entries, c.exits) == (0, 0)
    c.count_in(5)
    assert c.count_out(8) == 5 and c.occupancy == 0


def test_counter_rebases_before_its_range_ends() -> None:
    c = Counter(entries=MAX_COUNT - 10, exits=MAX_COUNT - 110)
    c.count_in(50)
    assert c.occupancy == 150 and c.entries <= MAX_COUNT and c.exits == 0


# --- poisson ----------------------------------------------------------------------------------


@given(st.floats(allow_nan=True, allow_infinity=False), st.floats(0.0, 1.0))
def test_poisson_is_a_count(mean: float, u: float) -> None:
    n = poisson(mean, u)
    assert isinstance(n, int) and n >= 0
    if not mean > 0:
        assert n == 0


@pytest.mark.parametrize("mean", [0.05, 2.0, 25.0, 400.0])
def test_poisson_mean(mean: float) -> None:
    rng = random.Random(7)
    draws = [poisson(mean, rng.random()) for _ in range(20_000)]
    assert sum(draws) / len(draws) == pytest.approx(mean, rel=0.05, abs=0.01)


# --- the show ---------------------------------------------------------------------------------


def test_a_show_fills_dips_in_the_interval_and_empties() -> None:
    m = counter(capacity=1500)
    truths = run(m, Show().cycle_s + 10.0, 1.0)
    order = [
        t["phase"] for i, t in enumerate(truths) if i == 0 or truths[i - 1]["phase"] != t["phase"]
    ]
    assert order == ["empty", "doors", "act_1", "interval", "act_2", "egress", "empty"]
    phases = by_phase(truths)
    audience = phases["doors"][0]["audience"]
    assert 0.85 * 1500 <= audience <= 1500
    assert all(t["occupancy"] == 0 for t in phases["empty"][:10])  # before the doors
    doors = [t["occupancy"] for t in phases["doors"]]
    assert doors == sorted(doors)  # nobody leaves while the doors are open
    assert doors[len(doors) // 2] < doors[-1] / 2  # most come in the second half
    assert doors[-1] >= 0.9 * audience
    act_1 = phases["act_1"][-1]
    assert act_1["occupancy"] == audience and act_1["exits"] == 0  # the latecomers are in
    lowest = min(t["occupancy"] for t in phases["interval"])
    assert audience * 0.5 < lowest < audience * 0.7  # 40 % out at the bar
    back = phases["act_2"][0]
    assert audience * 0.97 < back["occupancy"] < audience  # 3 % of them went home
    assert back["entries"] > audience  # those who came back were counted in again
    assert phases["egress"][len(phases["egress"]) // 2]["occupancy"] < 0.2 * audience
    end = phases["egress"][-1]
    assert end["occupancy"] == end["people_inside"] == 0
    assert end["entries"] == end["exits"] > audience


def test_the_next_show_starts_from_the_days_reset() -> None:
    m = counter(**SHORT)
    truths = run(m, 2 * 60.0 + 10.0, 0.1)
    shows = {t["show"] for t in truths}
    assert shows == {0, 1, 2}
    first_of_second = next(t for t in truths if t["show"] == 1)
    assert (first_of_second["entries"], first_of_second["exits"]) == (0, 0)
    assert max(t["occupancy"] for t in truths if t["show"] == 1) > 1000


def test_no_repeat_stays_empty_after_the_show() -> None:
    m = counter(repeat=False, **SHORT)
    truths = run(m, 200.0, 0.5)
    assert all(t["show"] == 0 for t in truths)
    assert truths[-1]["occupancy"] == 0 and truths[-1]["entries"] > 1000
    assert truths[-1]["phase"] == "empty"


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    dt=st.sampled_from([0.02, 0.1, 0.7, 3.0, 11.0]),
    capacity=st.integers(0, 5000),
    interval_s=st.sampled_from([0.0, 10.0]),
)
def test_any_step_size_fills_and_empties_the_hall(
    seed: int, dt: float, capacity: int, interval_s: float
) -> None:
    """The pools are used up by their windows' ends, whatever the steps: at the end of act 1
    everyone who came is in, at the end of egress nobody is."""
    m = counter(seed, capacity=capacity, **(SHORT | {"interval_s": interval_s}))
    show = Show(**(SHORT | {"interval_s": interval_s}))
    truths = []
    interval = show.starts()["interval"]
    for seconds in (interval, show.cycle_s - interval):  # to the interval, then to the end
        elapsed = 0.0
        while elapsed < seconds - 1e-9:
            step = min(dt, seconds - elapsed)
            m.step(step, T0)
            elapsed += step
            check(m.truth())
        truths.append(m.truth())
    at_interval, at_end = truths
    assert at_interval["occupancy"] == at_interval["audience"] <= capacity
    assert at_end["occupancy"] == at_end["people_inside"] == 0


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    dts=st.lists(st.floats(0.0, 40.0), min_size=1, max_size=80),
    missed=st.floats(0.0, 100.0),
    start_s=st.floats(0.0, 200.0),
    hold=st.one_of(st.none(), st.integers(0, 3000)),
)
def test_counts_stay_consistent_under_anything(
    seed: int, dts: list[float], missed: float, start_s: float, hold: int | None
) -> None:
    m = counter(seed, start_s=start_s, **SHORT)
    m.inject("blocked", {"missed_pct": missed})
    for i, dt in enumerate(dts):
        if hold is not None and i == len(dts) // 2:
            m.inject("occupancy", {"people": hold})
        m.step(dt, T0)
        t = m.truth()
        check(t)
        json.dumps(t, allow_nan=False)
        if hold is not None and i >= len(dts) // 2:
            assert t["occupancy"] == t["people_inside"] == hold


def test_a_blocked_sensor_misses_people_and_says_so() -> None:
    m = counter(**SHORT)
    run(m, 5.0 + 5.0, 0.1)  # into the doors
    m.inject("blocked", {"missed_pct": 100.0})
    assert m.values()["fault"] is True
    before = m.truth()
    truths = run(m, 10.0, 0.1)
    assert truths[-1]["entries"] == before["entries"]  # nobody counted
    assert truths[-1]["people_inside"] > before["people_inside"]
    assert truths[-1]["missed"] == truths[-1]["people_inside"] - before["people_inside"]
    m.clear("blocked")
    assert m.values()["fault"] is False
    half = counter(seed=3, **SHORT)
    half.inject("blocked", {"missed_pct": 50.0})
    t = run(half, 40.0, 0.1)[-1]
    assert 0.35 < t["occupancy"] / t["people_inside"] < 0.65


def test_start_s_starts_mid_show_with_the_counts_of_the_evening() -> None:
    m = counter(start_s=5.0 + 15.0 + 12.0 + 10.0 + 1.0, **SHORT)  # a second into act 2
    t = m.truth()
    check(t)
    assert t["phase"] == "act_2" and t["occupancy"] > 1000
    assert t["entries"] > t["occupancy"] and t["exits"] > 0  # the interval happened


def test_a_long_pause_skips_whole_shows() -> None:
    m = counter(**SHORT)
    m.step(1e9, T0)  # returns: shows are skipped, not simulated
    check(m.truth())
    assert m.truth()["show"] > 1e6


# --- the override and the fault flag through the device (the control endpoint's path) ---------


def test_occupancy_override_holds_then_hands_back_to_the_show() -> None:
    dev = device(**SHORT)
    m = dev.m
    assert isinstance(m, PeopleCounter)
    dev.tick(0.1, 0.0, T0)
    dev.inject("occupancy", {"people": 1200})
    assert dev.active_faults() == {"occupancy": {"people": 1200}}
    t = dev.truth()
    assert (t["occupancy"], t["entries"], t["exits"], t["held"]) == (1200, 1200, 0, True)
    for k in range(1, 400):  # 40 s: doors, act 1, the interval would all move people
        dev.tick(0.1, k * 0.1, T0)
        assert dev.truth()["occupancy"] == 1200
    dev.inject("occupancy", {"people": 800})  # again: 400 walk out
    t = dev.truth()
    assert (t["occupancy"], t["entries"], t["exits"]) == (800, 1200, 400)
    dev.inject("occupancy", {"people": 0})
    assert dev.truth()["occupancy"] == 0
    dev.inject("occupancy", {"people": MAX_OCCUPANCY})
    assert dev.truth()["occupancy"] == MAX_OCCUPANCY
    dev.clear("occupancy")
    assert dev.active_faults() == {} and dev.truth()["held"] is False
    seen = {dev.truth()["occupancy"]}
    for k in range(400, 1000):
        dev.tick(0.1, k * 0.1, T0)
        check(dev.truth())
        seen.add(dev.truth()["occupancy"])
    assert len(seen) > 10  # the show moves the count again


def test_the_fault_flag_goes_out_on_the_wire() -> None:
    dev = device()
    dev.link = type("Link", (), {"ready": True})()
    first = {t.rsplit("/", 1)[-1]: json.loads(p)["v"] for t, p in dev.tick(0.1, 0.0, T0)}
    assert first == {"occupancy": 0, "entries": 0, "exits": 0, "capacity": 1200, "fault": False}
    assert dev.tick(0.1, 0.1, T0) == []  # nothing changed, the heartbeat is 30 s away
    dev.inject("blocked", {"missed_pct": 0})
    dev.inject("occupancy", {"people": 1200})
    sent = {t.rsplit("/", 1)[-1]: json.loads(p)["v"] for t, p in dev.tick(0.1, 0.2, T0)}
    assert sent == {"occupancy": 1200, "entries": 1200, "fault": True}
    heartbeat = {t.rsplit("/", 1)[-1] for t, _ in dev.tick(0.1, 31.0, T0)}
    assert heartbeat == {"occupancy", "entries", "exits", "capacity", "fault"}


HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("occupancy", {"people": -1}, "people must be 0 to 100000"),
    ("occupancy", {"people": MAX_OCCUPANCY + 1}, "people must be 0 to 100000"),
    ("occupancy", {"people": 10**30}, "people must be 0 to 100000"),
    ("occupancy", {"people": 1200.5}, "people must be a int"),
    ("occupancy", {"people": 1200.0}, "people must be a int"),
    ("occupancy", {"people": "1200"}, "people must be a int"),
    ("occupancy", {"people": True}, "people must be a int"),
    ("occupancy", {"people": None}, "people must be a int"),
    ("occupancy", {"people": math.nan}, "people must be a int"),
    ("occupancy", {"people": [1200]}, "people must be a int"),
    ("occupancy", {"count": 1200}, "no parameter"),
    ("occupancy", {"people": 1200, "hold": False}, "no parameter"),
    ("blocked", {"missed_pct": -0.1}, "missed_pct must be 0 to 100"),
    ("blocked", {"missed_pct": 100.5}, "missed_pct must be 0 to 100"),
    ("blocked", {"missed_pct": math.nan}, "must be a float"),
    ("blocked", {"missed_pct": math.inf}, "must be a float"),
    ("blocked", {"missed_pct": "all"}, "must be a float"),
    ("blocked", {"missed_pct": False}, "must be a float"),
    ("tamper", {}, "no fault 'tamper'"),
]


@pytest.mark.parametrize(("fault", "params", "match"), HOSTILE)
def test_hostile_injections_are_refused_and_change_nothing(
    fault: str, params: dict[str, Any], match: str
) -> None:
    dev = device(start_s=30.0, **SHORT)  # mid-show: a full hall
    before = dev.truth()
    with pytest.raises(FaultError, match=match) as exc:
        dev.inject(fault, params)
    assert str(exc.value).startswith(("counter-1", "people_counter"))
    assert dev.active_faults() == {}
    assert dev.truth() == before


def test_catalogue() -> None:
    names = {f.name: f for f in device().fault_catalogue()}
    assert set(names) == {"drift", "stuck", "dropout", "malformed", "occupancy", "blocked"}
    assert names["occupancy"].params == {"people": "int, people, 0-100000, default 0"}


# --- commands ---------------------------------------------------------------------------------


def test_commands() -> None:
    m = counter(start_s=30.0, **SHORT)
    assert m.command("set_capacity", {"seats": 900}) == [["capacity", 900]]
    assert m.values()["capacity"] == 900
    assert m.command("reset_counts", {}) == [["counts_reset", True]]
    v = m.values()
    assert (v["occupancy"], v["entries"], v["exits"]) == (0, 0, 0)
    assert m.truth()["people_inside"] > 0  # they are still there, uncounted
    refused: list[tuple[str, dict[str, Any]]] = [
        ("set_capacity", {"seats": -1}),
        ("set_capacity", {"seats": 100_001}),
        ("set_capacity", {"seats": 12.5}),
        ("set_capacity", {"seats": "900"}),
        ("set_capacity", {}),
        ("set_capacity", {"seats": 9, "rows": 3}),
        ("reset_counts", {"now": True}),
        ("set_occupancy", {"people": 3}),
    ]
    for name, args in refused:
        with pytest.raises(Refused):
            m.command(name, args)
    assert m.values()["capacity"] == 900


# --- the venue's simulate table ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("simulate", "match"),
    [
        ({"doors_s": 0}, "doors_s must be a finite number of seconds > 0"),
        ({"egress_s": math.nan}, "egress_s must be a finite number"),
        ({"act_1_s": math.inf}, "act_1_s must be a finite number"),
        ({"empty_s": -1}, "empty_s must be a finite number of seconds >= 0"),
        ({"capacity": -1}, "capacity must be a whole number 0 .. 100000"),
        ({"capacity": 200_000}, "capacity must be a whole number"),
        ({"capacity": 12.5}, "expected a whole number"),
        ({"attendance_pct": 101}, "attendance_pct must be a percentage"),
        ({"late_pct": math.nan}, "late_pct must be a percentage"),
        ({"start_s": -5}, "start_s must be a finite number >= 0"),
        ({"start_s": math.inf}, "start_s must be a finite number >= 0"),
        ({"repeat": 1}, "expected true or false"),
        ({"seats": 3}, "unknown parameter"),
    ],
)
def test_bad_simulate_tables_say_what_is_wrong(simulate: dict[str, Any], match: str) -> None:
    with pytest.raises(SimulationError, match=match):
        device(**simulate)


def test_show_and_crowd_refuse_nonsense_directly() -> None:
    with pytest.raises(ShowError, match="interval_s"):
        Show(interval_s=-1.0)
    with pytest.raises(ShowError, match="capacity"):
        Crowd(capacity=True)
    a = Audience(Show(**SHORT), Crowd(), random.Random(1))
    with pytest.raises(ShowError, match="whole number"):
        a.set_people(1.5)  # type: ignore[arg-type]
    a.advance(math.nan)
    a.advance(-3.0)
    assert (a.cycle, a.t) == (0, 0.0)


def test_registered_as_a_gear_model() -> None:
    from simulators.registry import family_of

    assert family_of("people_counter") == "gear"
    assert MODELS["people_counter"] is PeopleCounter
