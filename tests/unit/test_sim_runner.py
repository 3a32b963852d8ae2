"""The simulator runner without sockets: specs, partitions, problem collection, control ops.

A small fake family (defined here, claimed through the registry by monkeypatching) stands in
for the real ones, so these tests pin the runner's own behaviour.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators import registry, runner
from simulators.control import (
    ESTOP_FAULT,
    FanOutControl,
    LocalControl,
    UnknownDevice,
    answer,
    dumps,
    loads_object,
)
from simulators.core import DeviceSpec, FaultError, FaultInfo, SimulationError, check_params

EVENTS: list[str] = []  # hosts entered/left, in order, across fake families


class FakeDevice:
    def __init__(self, spec: DeviceSpec, level: float) -> None:
        self.id, self.model = spec.id, spec.model
        self.level = level
        self.active: dict[str, dict[str, Any]] = {}

    def truth(self) -> dict[str, Any]:
        return {"level": self.level, "estop": ESTOP_FAULT in self.active}

    def fault_catalogue(self) -> list[FaultInfo]:
        return [
            FaultInfo(ESTOP_FAULT, "the e-stop chain is open"),
            FaultInfo("drift", "the reading drifts", {"rate": "float, 1/s, default 1.0"}),
        ]

    def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        if fault not in {f.name for f in self.fault_catalogue()}:
            raise FaultError(f"{self.id}: no fault {fault!r}")
        rate = params.get("rate", 1.0)
        if set(params) - {"rate"} or not isinstance(rate, int | float):
            raise FaultError(f"{self.id}: {fault}: bad parameters {dict(params)}")
        self.active[fault] = dict(params)

    def clear(self, fault: str | None = None) -> None:
        if fault is None:
            self.active.clear()
        else:
            self.active.pop(fault, None)

    def active_faults(self) -> dict[str, dict[str, Any]]:
        return dict(self.active)


class FakeHost:
    def __init__(self, name: str) -> None:
        self.name = name

    async def __aenter__(self) -> FakeHost:
        EVENTS.append(f"enter {self.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        EVENTS.append(f"exit {self.name}")


class FakeFamily:
    """Models fake_sensor (any transport) and fake_drive (needs a port); level is a param."""

    models = frozenset({"fake_sensor", "fake_drive"})

    def __init__(self, venue: Mapping[str, Any]) -> None:
        self.devices: list[FakeDevice] = []
        if venue.get("break_family"):
            raise SimulationError("fake family refuses this venue")

    def add(self, spec: DeviceSpec) -> FakeDevice:
        params = check_params(spec, {"level": float})
        if spec.model == "fake_drive" and "port" not in spec.transport:
            raise SimulationError(f"{spec.where}: fake_drive needs a port")
        device = FakeDevice(spec, params.get("level", 0.0))
        self.devices.append(device)
        return device

    def hosts(self) -> list[AbstractAsyncContextManager[Any]]:
        return [FakeHost("a"), FakeHost("b")]

    def stats(self) -> dict[str, Any]:
        return {"devices": len(self.devices), "rate_hz": 10.0}


@pytest.fixture(autouse=True)
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.FAMILIES, "fake", f"{__name__}:FakeFamily")
    monkeypatch.setitem(registry.FAMILIES, "missing", "tests.unit.no_such_module:Family")
    monkeypatch.setitem(registry.MODELS, "fake_sensor", "fake")
    monkeypatch.setitem(registry.MODELS, "fake_drive", "fake")
    monkeypatch.setitem(registry.MODELS, "ghost", "missing")
    EVENTS.clear()


def dev(i: str, model: str = "fake_sensor", **transport: Any) -> dict[str, Any]:
    return {
        "id": i,
        "profile": model,
        "transport": transport or {"kind": "mqtt", "node": f"n-{i}"},
        "simulate": {"model": model},
    }


# --- specs ------------------------------------------------------------------------------------


def test_specs_skip_devices_without_simulate_and_keep_where() -> None:
    venue = {"devices": [dev("a"), {"id": "real", "transport": {}}, {**dev("b"), "poll_hz": 50}]}
    specs, problems = runner.device_specs(venue, "v.toml")
    assert problems == []
    assert [(s.id, s.poll_hz) for s in specs] == [("a", 10.0), ("b", 50.0)]
    assert specs[1].where == "v.toml: devices[2] (b).simulate"


def test_every_malformed_entry_is_reported() -> None:
    venue = {
        "devices": [
            dev("a"),
            dev("a"),
            {"id": "b", "simulate": "hoist"},
            {"id": "c", "simulate": {"level": 1}},
            {**dev("d"), "poll_hz": -1},
            {**dev("e"), "transport": "mqtt"},
            {"simulate": {"model": "fake_sensor"}},
        ]
    }
    specs, problems = runner.device_specs(venue, "v.toml")
    assert [s.id for s in specs] == ["a"]
    assert len(problems) == 6
    assert "used twice" in problems[0]
    assert problems[1].startswith("v.toml: devices[2] (b).simulate: expected a table")
    assert "poll_hz" in problems[3]
    assert "needs an id" in problems[5]


def test_devices_must_be_a_list() -> None:
    assert runner.device_specs({"devices": {"a": 1}}, "v")[1] == [
        "v: devices: expected an array of tables"
    ]


# --- groups and partitions --------------------------------------------------------------------

DMX_VENUE = {
    "dmx": {
        "outputs": [
            {"protocol": "artnet", "universes": [1, 2], "udp_port": 16454},
            {"protocol": "sacn", "universes": [3]},
        ]
    }
}


@pytest.mark.parametrize(
    ("transport", "key"),
    [
        ({"kind": "modbus-tcp", "host": "h", "port": 1502, "unit": 3}, "modbus-tcp:h:1502"),
        ({"kind": "modbus-rtu", "port": "/dev/ttyS1", "unit": 3}, "modbus-rtu:/dev/ttyS1"),
        ({"kind": "mqtt", "node": "fly"}, "mqtt-node:fly"),
        ({"kind": "mqtt", "base": "shellies/x"}, "mqtt-base:shellies/x"),
        ({"kind": "dmx", "universe": 2, "address": 1}, "dmx:16454"),
        ({"kind": "dmx", "universe": 3, "address": 1}, "dmx:5568"),
        ({"kind": "dmx", "universe": 9, "address": 1}, "dmx:universe:9"),
        ({"kind": "osc", "host": "h", "port": 9000}, "osc:h:9000"),
        ({"kind": "audio", "device": "x"}, "audio"),
        ({"kind": "carrier-pigeon"}, "device:x"),
    ],
)
def test_group_keys(transport: dict[str, Any], key: str) -> None:
    spec = DeviceSpec("x", "p", transport, {"model": "m"}, "w")
    assert runner.group_key(spec, DMX_VENUE) == key


@st.composite
def venues(draw: st.DrawFn) -> list[DeviceSpec]:
    ports = draw(st.lists(st.integers(1000, 1010), min_size=0, max_size=40))
    return [
        DeviceSpec(f"d{i}", "p", {"kind": "modbus-tcp", "host": "h", "port": p}, {}, "w")
        for i, p in enumerate(ports)
    ]


@given(venues(), st.integers(1, 8))
def test_partition_keeps_groups_whole_and_loses_nothing(specs: list[DeviceSpec], n: int) -> None:
    parts = runner.partition(specs, n, {})
    groups = {runner.group_key(s, {}) for s in specs}
    assert sorted(s.id for p in parts for s in p) == sorted(s.id for s in specs)
    assert all(parts), "no part is empty"
    assert len(parts) <= max(1, min(n, len(groups)))
    owner: dict[str, int] = {}
    for i, part in enumerate(parts):
        for s in part:
            assert owner.setdefault(runner.group_key(s, {}), i) == i
    assert parts == runner.partition(list(specs), n, {}), "deterministic"
    if parts:
        sizes = [len(p) for p in parts]
        largest = max(sum(1 for s in specs if runner.group_key(s, {}) == g) for g in groups)
        assert max(sizes) - min(sizes) <= largest


def test_partition_of_equal_weights_balances_device_counts() -> None:
    specs = [
        DeviceSpec(f"d{i}", "p", {"kind": "modbus-tcp", "host": "h", "port": port}, {}, "w")
        for i, port in enumerate([1] * 4 + [2] * 2 + [3] * 2 + [4] * 1 + [5] * 1)
    ]
    parts = runner.partition(specs, 2, {})
    assert sorted(len(p) for p in parts) == [5, 5]


def hoist(i: int, port: int, poll_hz: float = 5.0) -> DeviceSpec:
    transport = {"kind": "modbus-tcp", "host": "127.0.0.1", "port": port, "unit": i % 8 + 1}
    return DeviceSpec(f"hoist-{i}", "hoist", transport, {"model": "hoist"}, "w", poll_hz)


def fixture(i: int, universe: int) -> DeviceSpec:
    transport = {"kind": "dmx", "universe": universe, "address": 1 + 8 * (i % 60)}
    return DeviceSpec(f"wash-{i}", "led_par_rgbw", transport, {"model": "led_par_rgbw"}, "w")


def sensor(i: int, node: str, hz: float) -> DeviceSpec:
    sim = {"model": "load_cell", "publish_hz": hz}
    return DeviceSpec(f"load-{i}", "load_cell", {"kind": "mqtt", "node": node}, sim, "w")


def test_partition_balances_load_not_device_count() -> None:
    """The large venue's failure: 66 axes (few devices, most of the load) ended up in one
    process because 500 light DMX fixtures filled the other by count."""
    venue = {"dmx": {"outputs": [{"protocol": "sacn", "universes": [1, 2], "udp_port": 15569}]}}
    axes = [hoist(i, 16001 + i // 8) for i in range(64)]
    fixtures = [fixture(i, 1 + i % 2) for i in range(500)]
    parts = runner.partition([*fixtures, *axes], 2, venue, registry.estimate_weight)
    loads = [runner.load_of(p, venue, registry.estimate_weight) for p in parts]
    axes_per_part = [sum(s.model == "hoist" for s in p) for p in parts]
    assert min(axes_per_part) >= 24, axes_per_part
    assert max(loads) - min(loads) <= max(
        w for w, _ in runner.group_weights(axes, venue, registry.estimate_weight).values()
    )
    by_count = [len(p) for p in parts]
    assert max(by_count) > 2 * min(by_count), "device counts are not what is balanced"


def test_partition_keeps_what_shares_a_socket_together_whatever_the_weights() -> None:
    venue = {"dmx": {"outputs": [{"protocol": "artnet", "universes": [1, 2], "udp_port": 1}]}}
    specs = [
        *(sensor(i, "rigging", 4.0) for i in range(10)),
        *(fixture(i, 1 + i % 2) for i in range(20)),
        *(hoist(i, 2000) for i in range(8)),
    ]
    parts = runner.partition(specs, 8, venue, registry.estimate_weight)
    assert len(parts) == 3
    assert sorted({s.model for s in p}.pop() for p in parts) == [
        "hoist",
        "led_par_rgbw",
        "load_cell",
    ]


@given(
    st.lists(st.tuples(st.integers(1000, 1010), st.floats(0.5, 50)), max_size=40),
    st.integers(1, 6),
)
def test_weighted_partition_is_within_one_group_of_the_mean(
    devices: list[tuple[int, float]], n: int
) -> None:
    specs = [hoist(i, port, hz) for i, (port, hz) in enumerate(devices)]
    parts = runner.partition(specs, n, {}, registry.estimate_weight)
    assert sorted(s.id for p in parts for s in p) == sorted(s.id for s in specs)
    assert parts == runner.partition(list(specs), n, {}, registry.estimate_weight)
    if parts:
        groups = runner.group_weights(specs, {}, registry.estimate_weight)
        loads = [runner.load_of(p, {}, registry.estimate_weight) for p in parts]
        mean = sum(w for w, _ in groups.values()) / len(parts)
        assert max(loads) <= mean + max(w for w, _ in groups.values()) + 1e-9


def test_weights_follow_the_rates() -> None:
    est = registry.estimate_weight
    assert est(hoist(0, 1, 10.0)) > est(hoist(0, 1, 5.0)) > est(fixture(0, 1))
    assert est(sensor(0, "n", 4.0)) == pytest.approx(4 * est(sensor(0, "n", 1.0)))
    assert est(sensor(0, "n", True)) == est(sensor(0, "n", 1.0)), "a bad rate: the default"
    curtain = DeviceSpec("iron", "fire_curtain", {}, {"model": "fire_curtain"}, "w", 5.0)
    assert est(curtain) < est(hoist(0, 1, 5.0)), "monitored only: no heartbeat"
    assert est(DeviceSpec("x", "p", {}, {"model": "zeppelin"}, "w")) > 0


def test_a_family_may_state_its_own_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeFamily, "weight", staticmethod(lambda spec: 0.25), raising=False)
    spec = DeviceSpec("a", "p", {}, {"model": "fake_sensor"}, "w")
    assert registry.device_weight(spec) == 0.25
    monkeypatch.setattr(FakeFamily, "weight", staticmethod(lambda spec: -1), raising=False)
    assert registry.device_weight(spec) == registry.estimate_weight(spec), "nonsense: estimate"
    ghost = DeviceSpec("g", "p", {}, {"model": "ghost"}, "w")
    assert registry.device_weight(ghost) == registry.estimate_weight(ghost), "unloadable"


def test_processes_come_from_the_option_then_the_venue_then_one() -> None:
    assert runner.processes_of({"simulation": {"processes": 3}}, 2) == 2
    assert runner.processes_of({"simulation": {"processes": 3}}, None) == 3
    assert runner.processes_of({"simulation": {"processes": True}}, None) == 1
    assert runner.processes_of({"simulation": {"processes": 0}}, None) == 1
    assert runner.processes_of({}, None) == 1


# --- building ---------------------------------------------------------------------------------


def test_all_problems_of_all_devices_are_reported_together() -> None:
    venue = {
        "devices": [
            dev("ok"),
            {**dev("unknown"), "simulate": {"model": "zeppelin"}},
            {**dev("badparam"), "simulate": {"model": "fake_sensor", "colour": "red"}},
            dev("noport", "fake_drive", kind="modbus-tcp"),
            dev("ghost1", "ghost"),
            dev("ghost2", "ghost"),
            {"id": "broken", "simulate": 3},
        ]
    }
    with pytest.raises(runner.SimulationProblems) as err:
        runner.build(venue, "v.toml")
    problems = err.value.problems
    assert len(problems) == 6, problems
    assert problems[0].startswith("v.toml: devices[6] (broken).simulate: expected a table")
    text = "\n".join(problems)
    assert "devices[1] (unknown).simulate.model: model 'zeppelin' is not simulated" in text
    assert "devices[2] (badparam).simulate: unknown parameter(s) colour" in text
    assert "devices[3] (noport).simulate: fake_drive needs a port" in text
    assert text.count("cannot be loaded") == 2, "each device of a broken family is named"
    assert str(err.value) == text


def test_a_family_that_refuses_the_venue_names_every_device() -> None:
    venue = {"break_family": True, "devices": [dev("a"), dev("b")]}
    with pytest.raises(runner.SimulationProblems) as err:
        runner.build(venue, "v.toml")
    assert [p.split(":")[1].strip() for p in err.value.problems] == [
        "devices[0] (a).simulate",
        "devices[1] (b).simulate",
    ]


async def test_hosts_are_entered_in_order_and_left_in_reverse() -> None:
    sim = runner.build({"devices": [dev("a"), dev("b")]}, "v")
    async with sim.running():
        assert EVENTS == ["enter a", "enter b"]
    assert EVENTS == ["enter a", "enter b", "exit b", "exit a"]


def test_control_port_comes_from_the_option_then_the_venue_then_the_default() -> None:
    assert runner.control_port({"simulation": {"control_port": 1234}}, 99) == 99
    assert runner.control_port({"simulation": {"control_port": 1234}}, None) == 1234
    assert runner.control_port({"simulation": {"control_port": True}}, None) == 18890
    assert runner.control_port({}, None) == 18890


def test_run_prints_every_problem_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        raise runner.SimulationProblems(["a: one", "b: two"])

    assert runner.run(main) == 1
    err = capsys.readouterr().err
    assert "error: a: one\nerror: b: two\n2 problem(s) found" in err


# --- control operations -----------------------------------------------------------------------


@pytest.fixture
def local() -> LocalControl:
    venue = {"devices": [{**dev("a"), "simulate": {"model": "fake_sensor", "level": 2}}, dev("b")]}
    return runner.build(venue, "v").control


async def test_local_control_operations(local: LocalControl) -> None:
    assert (await local.health()).items() >= {"ready": True, "devices": 2, "processes": 1}.items()
    listing = await local.devices()
    assert [d["id"] for d in listing] == ["a", "b"]
    assert listing[0]["family"] == "fake"
    assert listing[0]["faults"][1] == {
        "name": "drift",
        "description": "the reading drifts",
        "params": {"rate": "float, 1/s, default 1.0"},
    }
    assert (await local.device("a"))["truth"] == {"level": 2.0, "estop": False}
    assert await local.inject("a", "drift", {"rate": 3}) == {"drift": {"rate": 3}}
    assert await local.clear("a", "drift") == {}
    assert await local.estop(True) == ["a", "b"]
    assert (await local.truth(["b"]))["b"]["estop"] is True
    await local.estop(False)
    assert set(await local.truth(None)) == {"a", "b"}
    stats = await local.stats()
    assert stats["families"] == {"fake": {"devices": 2, "rate_hz": 10.0}}
    assert stats["processes"][0]["devices"] == 2


async def test_local_control_refuses_what_does_not_exist(local: LocalControl) -> None:
    with pytest.raises(UnknownDevice):
        await local.device("zz")
    with pytest.raises(UnknownDevice):
        await local.truth(["a", "zz"])
    with pytest.raises(FaultError, match="no fault 'melt'"):
        await local.inject("a", "melt", {})
    with pytest.raises(FaultError, match="no fault 'melt'"):
        await local.clear("a", "melt")
    with pytest.raises(FaultError, match="bad parameters"):
        await local.inject("a", "drift", {"rate": "fast"})


async def test_the_pipe_protocol_carries_results_and_error_kinds(local: LocalControl) -> None:
    async def ask(request: Any) -> dict[str, Any]:
        line = request if isinstance(request, bytes) else json.dumps(request).encode()
        reply: dict[str, Any] = json.loads(await answer(local, line))
        return reply

    assert (await ask({"op": "health"}))["ok"]["devices"] == 2
    assert (await ask({"op": "truth", "args": {"ids": ["a"]}}))["ok"] == {
        "a": {"level": 2.0, "estop": False}
    }
    assert (await ask({"op": "device", "args": {"device_id": "q"}}))["error"] == "unknown_device"
    fault = await ask({"op": "inject", "args": {"device_id": "a", "fault": "x", "params": {}}})
    assert fault == {"error": "fault", "message": "a: no fault 'x'"}
    assert "process" in (await ask({"op": "stats"}))["ok"]
    for bad in [b"not json", b"[]", {"op": "__init__"}, {"op": "device", "args": {"x": 1}}]:
        assert (await ask(bad))["error"] == "bad_request"


class FakeLink:
    """A ChildLink's interface over a LocalControl, as if through the pipe."""

    def __init__(self, pid: int, control: LocalControl) -> None:
        self.pid, self._control = pid, control
        self.device_ids = frozenset(d.id for d in control._devices.values())

    async def call(self, op: str, **args: Any) -> Any:
        reply = json.loads(
            await answer(self._control, json.dumps({"op": op, "args": args}).encode())
        )
        if op == "stats":  # as if each control ran in its own process
            reply["ok"]["process"]["pid"] = self.pid
        if "ok" in reply:
            return reply["ok"]
        raise (UnknownDevice if reply["error"] == "unknown_device" else FaultError)(
            reply["message"]
        )


async def test_fan_out_routes_by_owner_and_merges() -> None:
    one = runner.build({"devices": [dev("a"), dev("b")]}, "v").control
    two = runner.build({"devices": [dev("c")]}, "v").control
    fan = FanOutControl([FakeLink(1, one), FakeLink(2, two)])  # type: ignore[list-item]
    assert (await fan.health()).items() >= {"ready": True, "devices": 3, "processes": 2}.items()
    assert [d["id"] for d in await fan.devices()] == ["a", "b", "c"]
    assert set(await fan.truth(["c", "a"])) == {"a", "c"}
    assert set(await fan.truth(None)) == {"a", "b", "c"}
    assert await fan.inject("c", "drift", {}) == {"drift": {}}
    assert (await two.device("c"))["active"] == {"drift": {}}
    assert await fan.clear("c", None) == {}
    assert sorted(await fan.estop(True)) == ["a", "b", "c"]
    with pytest.raises(UnknownDevice):
        await fan.inject("zz", "drift", {})
    with pytest.raises(UnknownDevice):
        await fan.truth(["a", "zz"])
    stats = await fan.stats()
    assert [p["devices"] for p in stats["processes"]] == [2, 1]
    assert set(stats["families"]["fake"]["per_process"]) == {
        str(p["pid"]) for p in stats["processes"]
    }


# --- JSON at the boundary ---------------------------------------------------------------------


def test_dumps_makes_numpy_plain_and_non_finite_null() -> None:
    value = {"a": np.float32(1.5), "b": np.arange(3), "c": [math.nan, math.inf], "d": (1, 2)}
    assert json.loads(dumps(value)) == {"a": 1.5, "b": [0, 1, 2], "c": [None, None], "d": [1, 2]}


def test_loads_object_refuses_everything_but_an_object() -> None:
    assert loads_object(b"", "x") == {}
    assert loads_object(b'  {"rate": 2}', "x") == {"rate": 2}
    for bad in [b"[1]", b"3", b"{", b'{"a": NaN}', b'{"a": -Infinity}', b"\xff\xfe"]:
        with pytest.raises(FaultError, match=r"^x: "):
            loads_object(bad, "x")


@given(st.binary(max_size=200))
def test_loads_object_raises_only_fault_error(body: bytes) -> None:
    with contextlib.suppress(FaultError):
        assert isinstance(loads_object(body, "x"), dict)
