"""The alarm engine on its own: every rule kind at its hysteresis edges, states and operator
actions, persistence across a restart, the rule parser (hypothesis), webhooks against a real
local HTTP server."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.journal import JournalEvent
from drivers.model import Device, Health, HealthState, Quality, Reading
from edge.alarms import (
    AlarmConfigError,
    AlarmEngine,
    AlarmError,
    AlarmEvent,
    AlarmStore,
    State,
    WebhookNotifier,
    alarm_id,
    bind_rules,
    effective_rules,
    parse_rules,
)
from edge.config import AlarmsConfig, AlarmWebhookConfig, load_venue
from tests.conftest import write_venue


class Journal:
    def __init__(self) -> None:
        self.events: list[JournalEvent] = []

    async def append(self, event: JournalEvent) -> int:
        self.events.append(event)
        return len(self.events)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def devices(tmp_path: Path) -> list[Device]:
    venue = write_venue(tmp_path, [{"id": "hoist-1", "port": 1}, {"id": "hoist-2", "port": 2}])
    return load_venue(venue).devices


async def make(
    tmp_path: Path, devices: list[Device], rules: list[dict[str, Any]], **cfg: Any
) -> tuple[AlarmEngine, Clock, Journal]:
    clock, journal = Clock(), Journal()
    store = AlarmStore(tmp_path / "alarms.sqlite3")
    engine = AlarmEngine(
        AlarmsConfig(rules=parse_rules(rules), defaults=cfg.pop("defaults", False), **cfg),
        devices,
        store,
        journal,
        clock=clock,
        monotonic=clock,
    )
    engine.restore(await store.open())
    return engine, clock, journal


@pytest.fixture
async def closing() -> AsyncIterator[list[AlarmEngine]]:
    engines: list[AlarmEngine] = []
    yield engines
    for e in engines:
        await e.store.close()


def reading(
    point: str, value: Any, t: float, q: Quality = Quality.GOOD, dev: str = "hoist-1"
) -> Reading:
    return Reading(dev, point, value, t, t, q)


def state(engine: AlarmEngine, rule: str, point: str | None, dev: str = "hoist-1") -> State:
    return engine.alarms[alarm_id(rule, dev, point)].state


HIGH = {"id": "hot", "kind": "high", "point": "motor_temperature", "limit": 80.0, "deadband": 5.0}


async def test_high_threshold_with_deadband(
    tmp_path: Path, devices: list[Device], closing: list[AlarmEngine]
) -> None:
    e, clock, journal = await make(tmp_path, devices, [HIGH])
    closing.append(e)
    feed = [(80.0, State.INACTIVE), (80.001, State.ACTIVE_UNACK), (76.0, State.ACTIVE_UNACK),
            (75.001, State.ACTIVE_UNACK), (75.0, State.CLEARED_UNACK), (80.0, State.CLEARED_UNACK),
            (81.0, State.ACTIVE_UNACK)]  # fmt: skip
    for v, want in feed:
        clock.t += 1
        e.on_readings([reading("motor_temperature", v, clock.t)])
        assert state(e, "hot", "motor_temperature") is want, v
    assert len(e.alarms) == 2  # one instance per device
    await e.flush()
    assert [j.command for j in journal.events] == ["alarm.raise", "alarm.clear", "alarm.raise"]
    assert journal.events[0].targets == ("hoist-1",)
    assert journal.events[0].args["severity"] == "major"


async def test_low_threshold_and_bad_quality_is_ignored(
    tmp_path: Path, devices: list[Device], closing: list[AlarmEngine]
) -> None:
    rule = {"id": "low", "kind": "low", "point": "load", "limit": 10, "deadband": 2,
            "severity": "warning"}  # fmt: skip
    e, clock, _ = await make(tmp_path, devices, [rule])
    closing.append(e)
    for v, q, want in [
        (9.0, Quality.BAD, State.INACTIVE),  # bad quality says nothing
        (10.0, Quality.GOOD, State.INACTIVE),
        (9.9, Quality.GOOD, State.ACTIVE_UNACK),
        (11.9, Quality.GOOD, State.ACTIVE_UNACK),
        (float("nan"), Quality.GOOD, State.ACTIVE_UNACK),  # not a number: ignored
        ("text", Quality.GOOD, State.ACTIVE_UNACK),
        (10**400, Quality.GOOD, State.ACTIVE_UNACK),  # beyond a float: ignored, no crash
        (None, Quality.GOOD, State.ACTIVE_UNACK),
        (12.1, Quality.GOOD, State.CLEARED_UNACK),
    ]:
        clock.t += 1
        e.on_readings([reading("load", v, clock.t, q)])
        assert state(e, "low", "load") is want, v


async def test_on_delay_needs_the_condition_to_hold(
    tmp_path: Path, devices: list[Device], closing: list[AlarmEngine]
) -> None:
    e, clock, _ = await make(tmp_path, devices, [{**HIGH, "on_delay_s": 2.0}])
    closing.append(e)
    e.on_readings([reading("motor_temperature", 90.0, clock.t)])
    clock.t += 1.5
    e.tick()
    assert state(e, "hot", "motor_temperature") is State.INACTIVE
    e.on_readings([reading("motor_temperature", 70.0, clock.t)])  # back below: timer reset
    clock.t += 1
    e.on_readings([reading("motor_temperature", 90.0, clock.t)])
    clock.t += 1.9
    e.tick()
    assert state(e, "hot", "motor_temperature") is State.INACTIVE
    clock.t += 0.2
    e.tick()  # held for 2.1 s: raised by the timer, not waiting for a reading
    assert state(e, "hot", "motor_temperature") is State.ACTIVE_UNACK


async def test_rate_of_change_over_a_window(
    tmp_path: Path, devices: list[Device], closing: list[AlarmEngine]
) -> None:
    rule = {"id": "fast", "kind": "rate", "point": "position", "rate_per_s": 100.0,
            "window_s": 1.0, "deadband": 20.0, "direction": "fall"}  # fmt: skip
    e, clock, _ = await make(tmp_path, devices, [rule])
    closing.append(e)
    pos = 5000.0
    for step, want in [(-50.0, State.INACTIVE), (-100.0, State.INACTIVE),  # exactly 100/s
                       (-150.0, State.ACTIVE_UNACK), (-90.0, State.ACTIVE_UNACK),
                       (+200.0, State.CLEARED_UNACK)]:  # fmt: skip
        for _ in range(11):  # 0.1 s apart: the window holds 1 s of this step
            clock.t += 0.1
            pos += step * 0.1
            e.on_readings([reading("position", pos, clock.t)])
        assert state(e, "fast", "position") is want, step


async def test_stale_data(
    tmp_path: Path, devices: list[Device], closing: list[AlarmEngine]
) -> None:
    rule = {"id": "quiet", "kind": "stale", "point": "load", "stale_s": 3.0, "devices": ["hoist-1"]}
    e, clock, _ = await make(tmp_path, devices, [rule])
    closing.append(e)
    clock.t += 2.9
    e.tick()
    assert state(e, "quiet", "load") is State.INACTIVE
    clock.t += 0.2
    e.tick()
    assert state(e, "quiet", "load") is State.ACTIVE_UNACK  # nothing since the start
    e.on_readings([reading("load", 1.0, clock.t, Quality.STALE)])  # not good: still stale
    e.tick()
    assert state(e, "quiet", "load") is State.ACTIVE_UNACK
    e.on_readings([reading("load", 1.0, clock.t)])
    assert state(e, "quiet", "load") is State.CLEARED_UNACK
    assert alarm_id("quiet", "hoist-2", "load") not in e.alarms  # named devices only


async def test_offline_from_health_and_default_fault_codes(
    tmp_path: Path, devices: list[Device], closing: list[AlarmEngine]
) -> None:
    e, clock, _ = await make(tmp_path, devices, [], defaults=True)
    closing.append(e)
    e.on_health(Health("hoist-1", HealthState.UNKNOWN, "not started"))
    assert state(e, "device-offline", None) is State.INACTIVE
    e.on_health(Health("hoist-1", HealthState.OFFLINE, "3 polls failed"))
    a = e.alarms[alarm_id("device-offline", "hoist-1", None)]
    assert (a.state, a.severity, a.message) == (
        State.ACTIVE_UNACK,
        "major",
        "offline: 3 polls failed",
    )
    e.on_health(Health("hoist-1", HealthState.DEGRADED, "1 error"))
    assert a.state is State.CLEARED_UNACK
    e.on_readings([reading("fault_code", 4, clock.t)])
    f = e.alarms[alarm_id("machinery-fault", "hoist-1", "fault_code")]
    assert (f.state, f.severity, f.message) == (State.ACTIVE_UNACK, "critical", "drive trip")
    e.on_readings([reading("fault_code", 2, clock.t)])
    assert f.message == "overload"  # another code: the text follows, one "change" event
    assert [x.event for x in e._pending][-1] == "change"
    e.on_readings([reading("fault_code", 0, clock.t)])
    assert f.state is State.CLEARED_UNACK
    e.on_readings([reading("estop", True, clock.t)])
    assert state(e, "machinery-estop", "estop") is State.ACTIVE_UNACK


async def test_fault_codes_in_a_set(
    tmp_path: Path, devices: list[Device], closing: list[AlarmEngine]
) -> None:
    rule = {"id": "bad-code", "kind": "fault", "point": "fault_code", "nonzero": False,
            "codes": {"5": "encoder lost", "7": "slack rope"}, "message": "axis"}  # fmt: skip
    e, clock, _ = await make(tmp_path, devices, [rule])
    closing.append(e)
    e.on_readings([reading("fault_code", 2, clock.t)])
    assert state(e, "bad-code", "fault_code") is State.INACTIVE  # not in the set
    e.on_readings([reading("fault_code", 7, clock.t)])
    a = e.alarms[alarm_id("bad-code", "hoist-1", "fault_code")]
    assert (a.state, a.message) == (State.ACTIVE_UNACK, "axis: slack rope")


async def test_ack_shelve_and_latch(
    tmp_path: Path, devices: list[Device], closing: list[AlarmEngine]
) -> None:
    e, clock, journal = await make(tmp_path, devices, [HIGH])
    closing.append(e)
    aid = alarm_id("hot", "hoist-1", "motor_temperature")
    with pytest.raises(AlarmError) as err:
        await e.ack(aid, "ann")
    assert err.value.status == 409
    with pytest.raises(AlarmError) as err:
        await e.ack("nope", "ann")
    assert err.value.status == 404
    e.on_readings([reading("motor_temperature", 90.0, clock.t)])
    doc = await e.ack(aid, "ann", "seen")
    assert (doc["state"], doc["acked_by"], doc["acked_at"]) == ("active_ack", "ann", clock.t)
    e.on_readings([reading("motor_temperature", 10.0, clock.t)])
    assert state(e, "hot", "motor_temperature") is State.INACTIVE  # acked: no latch
    # shelve: conditions come and go silently; unshelve shows what is true now
    with pytest.raises(AlarmError):
        await e.shelve(aid, "bob", clock.t - 1, "past")
    with pytest.raises(AlarmError):
        await e.shelve(aid, "bob", clock.t + 8 * 86400, "too long")
    doc = await e.shelve(aid, "bob", clock.t + 60, "sensor swap")
    assert (doc["shelved_by"], doc["shelve_reason"], doc["shelved_until"]) == (
        "bob", "sensor swap", clock.t + 60)  # fmt: skip
    e.on_readings([reading("motor_temperature", 95.0, clock.t)])
    assert state(e, "hot", "motor_temperature") is State.SHELVED
    assert e.active(states={"shelved"})[0]["active"] is True
    clock.t += 61
    e.tick()  # expired: the condition still holds, so it is active and unacknowledged
    assert state(e, "hot", "motor_temperature") is State.ACTIVE_UNACK
    await e.shelve(aid, "bob", clock.t + 60, "again")
    await e.unshelve(aid, "carol")
    assert state(e, "hot", "motor_temperature") is State.ACTIVE_UNACK
    with pytest.raises(AlarmError):
        await e.unshelve(aid, "carol")
    await e.flush()
    users = [(j.command, j.source, j.kind.value) for j in journal.events if j.kind.value == "user"]
    assert users == [
        ("alarm.ack", "ann", "user"),
        ("alarm.shelve", "bob", "user"),
        ("alarm.shelve", "bob", "user"),
        ("alarm.unshelve", "carol", "user"),
    ]
    history = await e.store.history(0, clock.t + 1, alarm=aid)
    assert history[0]["event"] == "unshelve"  # newest first
    assert {h["event"] for h in history} >= {"raise", "ack", "clear", "shelve", "unshelve"}


async def test_state_survives_a_restart(
    tmp_path: Path, devices: list[Device], closing: list[AlarmEngine]
) -> None:
    e, clock, _ = await make(tmp_path, devices, [HIGH])
    e.on_readings([reading("motor_temperature", 90.0, clock.t)])
    aid = alarm_id("hot", "hoist-1", "motor_temperature")
    await e.ack(aid, "ann")
    e.raise_alarm("maintenance.drift", "hoist-2", "motor_current", "warning", "current drifting")
    await e.flush()
    await e.store.close()
    e2, _, _ = await make(tmp_path, devices, [HIGH])
    closing.append(e2)
    a = e2.alarms[aid]
    assert (a.state, a.condition, a.acked_by, a.value) == (State.ACTIVE_ACK, True, "ann", 90.0)
    x = e2.alarms[alarm_id("maintenance.drift", "hoist-2", "motor_current")]
    assert (x.state, x.severity, x.message) == (State.ACTIVE_UNACK, "warning", "current drifting")
    e2.clear("maintenance.drift", "hoist-2", "motor_current")
    assert x.state is State.CLEARED_UNACK
    await e2.flush()
    await e2.store.close()
    closing.remove(e2)
    # the rule is gone from the venue: its instance is cleared, latched until acknowledged
    e3, _, _ = await make(tmp_path, devices, [])
    closing.append(e3)
    assert aid not in e3.alarms  # it was acknowledged: nothing to keep
    assert e3.alarms[alarm_id("maintenance.drift", "hoist-2", "motor_current")].state is (
        State.CLEARED_UNACK
    )


async def test_an_unacknowledged_alarm_of_a_removed_rule_latches(
    tmp_path: Path, devices: list[Device], closing: list[AlarmEngine]
) -> None:
    e, clock, _ = await make(tmp_path, devices, [HIGH])
    e.on_readings([reading("motor_temperature", 90.0, clock.t)])
    await e.flush()
    await e.store.close()
    e2, _, _ = await make(tmp_path, devices, [])
    closing.append(e2)
    a = e2.alarms[alarm_id("hot", "hoist-1", "motor_temperature")]
    assert (a.state, a.condition) == (State.CLEARED_UNACK, False)
    await e2.ack(a.id, "ann")
    assert a.state is State.INACTIVE


async def test_external_alarms(
    tmp_path: Path, devices: list[Device], closing: list[AlarmEngine]
) -> None:
    e, _, _ = await make(tmp_path, devices, [])
    closing.append(e)
    with pytest.raises(ValueError, match="severity"):
        e.raise_alarm("x", "hoist-1", None, "urgent", "m")
    with pytest.raises(ValueError, match="MQTT topic"):
        e.raise_alarm("x", "hoist/#", None, "minor", "m")
    aid = e.raise_alarm("influx.queue", "node", None, "minor", "queue 80 % full")
    assert e.alarms[aid].state is State.ACTIVE_UNACK
    e.raise_alarm("influx.queue", "node", None, "major", "queue full, dropping")
    assert e.alarms[aid].severity == "major"
    assert e.alarms[aid].message == "queue full, dropping"


def test_rules_refer_to_the_venue(devices: list[Device]) -> None:
    rules = parse_rules([{"id": "a", "kind": "high", "point": "nope", "limit": 1,
                          "devices": ["hoist-1"]},
                         {"id": "b", "kind": "offline", "devices": ["ghost"]}])  # fmt: skip
    with pytest.raises(AlarmConfigError) as err:
        bind_rules(rules, devices)
    assert err.value.problems == [
        "rule 'a': device 'hoist-1' has no point 'nope'",
        "rule 'b': no device 'ghost'",
    ]
    # by class, a point some types lack is not an error: those devices are left out
    by_class = parse_rules([{"id": "c", "kind": "high", "point": "nope", "limit": 1,
                             "device_class": ["hoist"]}])  # fmt: skip
    assert bind_rules(by_class, devices) == []


def test_venue_rules_override_and_disable_defaults() -> None:
    cfg = AlarmsConfig(
        rules=parse_rules([
            {"id": "device-offline", "kind": "offline", "severity": "critical"},
            {"id": "machinery-estop", "kind": "fault", "point": "estop", "enabled": False},
        ])
    )  # fmt: skip
    rules = {r.id: r for r in effective_rules(cfg)}
    assert rules["device-offline"].severity == "critical"
    assert "machinery-estop" not in rules
    assert "machinery-fault" in rules
    assert effective_rules(AlarmsConfig(defaults=False)) == []


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ({"id": "a", "kind": "high", "point": "x"}, "needs a 'limit'"),
        ({"id": "a", "kind": "rate", "point": "x"}, "needs 'rate_per_s'"),
        ({"id": "a", "kind": "rate", "point": "x", "rate_per_s": 1, "deadband": 1}, "below"),
        ({"id": "a", "kind": "stale", "point": "x"}, "needs 'stale_s'"),
        ({"id": "a", "kind": "offline", "point": "x"}, "takes no 'point'"),
        ({"id": "a", "kind": "fault"}, "needs a 'point'"),
        ({"id": "a", "kind": "fault", "point": "x", "nonzero": False}, "needs 'codes'"),
        ({"id": "a", "kind": "fault", "point": "x", "codes": {"x1": "?"}}, "not an integer"),
        ({"id": "a", "kind": "high", "point": "x", "limit": float("nan")}, "finite"),
        ({"id": "a", "kind": "high", "point": "x", "limit": 1, "severity": "bad"}, "severity"),
        ({"id": "1a", "kind": "offline"}, "id"),
        ({"id": "a", "kind": "offline", "colour": "red"}, "colour"),
        ({"id": "a", "kind": "glow"}, "kind"),
    ],
)
def test_rule_errors_say_why(rule: dict[str, Any], needle: str) -> None:
    with pytest.raises(AlarmConfigError) as err:
        parse_rules([rule])
    assert needle in str(err.value)


def test_duplicate_rule_ids() -> None:
    with pytest.raises(AlarmConfigError, match="unique: a repeated"):
        parse_rules([{"id": "a", "kind": "offline"}, {"id": "a", "kind": "offline"}])
    with pytest.raises(AlarmConfigError, match="list"):
        parse_rules({"id": "a"})


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.text(max_size=5),
                                                         max_size=3),
)  # fmt: skip
rule_dicts = st.dictionaries(
    st.sampled_from(
        ["id", "kind", "severity", "point", "limit", "deadband", "on_delay_s", "rate_per_s",
         "window_s", "direction", "stale_s", "codes", "nonzero", "devices", "device_class",
         "enabled", "message", "junk"]
    ),
    scalars,
)  # fmt: skip


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(scalars, st.lists(st.one_of(rule_dicts, scalars), max_size=4)))
def test_rule_parser_never_crashes(data: Any) -> None:
    """Any TOML-ish input is either a valid rule list or an AlarmConfigError naming problems."""
    try:
        rules = parse_rules(data)
    except AlarmConfigError as exc:
        assert exc.problems
        assert all(isinstance(p, str) and p for p in exc.problems)
        return
    for r in rules:
        assert r.kind in ("high", "low", "rate", "stale", "offline", "fault")


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0, 100))
@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_threshold_never_flaps_inside_the_deadband(values: list[float], deadband: float) -> None:
    """Between limit − deadband and limit the state never changes: no chatter at the mark."""
    venue_devices = _devices()
    rule = {"id": "t", "kind": "high", "point": "load", "limit": 0.0, "deadband": deadband}

    async def go() -> None:
        store = AlarmStore(Path("/nonexistent"))  # never opened: no flush in this test
        e = AlarmEngine(AlarmsConfig(rules=parse_rules([rule]), defaults=False), venue_devices,
                        store)  # fmt: skip
        a = e.alarms[alarm_id("t", "hoist-1", "load")]
        for i, v in enumerate(values):
            before = a.condition
            e.on_readings([reading("load", v, float(i))])
            if -deadband < v <= 0.0:
                assert a.condition == before
            assert a.condition == (v > 0.0 or (before and v > -deadband))
        store._pool.shutdown()

    asyncio.run(go())


_cached: list[Device] = []


def _devices() -> list[Device]:
    if not _cached:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            _cached.extend(load_venue(write_venue(Path(d), [{"id": "hoist-1", "port": 1}])).devices)
    return _cached


# --- webhooks against a real local HTTP server -------------------------------------------


class Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]
    answers: list[int]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        status = self.answers.pop(0) if self.answers else 200
        if status == 200:
            self.received.append(json.loads(body))
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook_server() -> Iterator[tuple[str, type[Hook]]]:
    handler = type("H", (Hook,), {"received": [], "answers": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()
    server.server_close()


def event(n: int, severity: str = "major") -> AlarmEvent:
    doc = {"id": f"r:d:{n}", "rule": "r", "device": "d", "point": str(n), "severity": severity}
    return AlarmEvent(float(n), doc, "raise", "inactive", "active_unack", "system")


async def test_webhook_retries_then_delivers_in_order(hook_server: tuple[str, type[Hook]]) -> None:
    import httpx

    url, handler = hook_server
    handler.answers.extend([503, 500, 429])  # three refusals, then 200s
    cfg = AlarmWebhookConfig(url=url, backoff_min_s=0.01, backoff_max_s=0.05, min_severity="minor")
    async with httpx.AsyncClient() as client:
        wh = WebhookNotifier(cfg, client)
        task = asyncio.create_task(wh.run())
        wh.notify(event(1))
        wh.notify(event(2, "info"))  # below min_severity: not sent
        wh.notify(event(3, "critical"))
        for _ in range(200):
            if wh.delivered == 2:  # counted after the server's answer, not before
                break
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [r["alarm"]["point"] for r in handler.received] == ["1", "3"]
    assert (wh.delivered, wh.attempts, wh.given_up) == (2, 5, 0)


async def test_webhook_gives_up_on_a_client_error_and_bounds_its_queue(
    hook_server: tuple[str, type[Hook]],
) -> None:
    import httpx

    url, handler = hook_server
    handler.answers.append(400)
    cfg = AlarmWebhookConfig(url=url, queue_size=2, backoff_min_s=0.01)
    async with httpx.AsyncClient() as client:
        wh = WebhookNotifier(cfg, client)
        for n in range(4):
            wh.notify(event(n))  # a ring of 2: the two oldest are dropped
        assert (len(wh), wh.dropped) == (2, 2)
        task = asyncio.create_task(wh.run())
        wh.notify(event(9))  # the queue is still full (the task has not run): 2 dropped too
        assert wh.dropped == 3
        for _ in range(200):
            if wh.delivered == 1:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # 3 met the 400 and was given up at once (no retry); 9 was delivered
    assert [r["alarm"]["point"] for r in handler.received] == ["9"]
    assert wh.given_up == 1


async def test_webhook_to_a_closed_port_gives_up_after_max_attempts() -> None:
    import httpx

    from tests.conftest import free_port

    cfg = AlarmWebhookConfig(
        url=f"http://127.0.0.1:{free_port()}/x", max_attempts=3, backoff_min_s=0.01, timeout_s=1
    )
    async with httpx.AsyncClient() as client:
        wh = WebhookNotifier(cfg, client)
        task = asyncio.create_task(wh.run())
        wh.notify(event(1))
        for _ in range(200):
            if wh.given_up:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert (wh.attempts, wh.given_up, wh.delivered) == (3, 1, 0)


async def test_influx_queue_levels_become_an_alarm(
    tmp_path: Path, devices: list[Device], closing: list[AlarmEngine]
) -> None:
    from types import SimpleNamespace

    from edge.alarms import on_influx_queue
    from edge.influx import QueueAlarm, QueueLevel

    e, _, _ = await make(tmp_path, devices, [])
    closing.append(e)
    hear = on_influx_queue(SimpleNamespace(alarms=e, node="stage"))  # type: ignore[arg-type]
    aid = alarm_id("influx-queue", "stage", None)
    hear(QueueAlarm(QueueLevel.HIGH, 8000, 1 << 20, 0))
    assert (e.alarms[aid].state, e.alarms[aid].severity) == (State.ACTIVE_UNACK, "warning")
    hear(QueueAlarm(QueueLevel.FULL, 10000, 1 << 21, 50))
    assert e.alarms[aid].severity == "major"
    assert "50 dropped" in e.alarms[aid].message
    hear(QueueAlarm(QueueLevel.NORMAL, 10, 100, 50))
    assert e.alarms[aid].state is State.CLEARED_UNACK


values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
    st.lists(st.integers(), max_size=2), st.binary(max_size=3),
)  # fmt: skip


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["load", "position", "fault_code", "estop", "velocity"]),
            values,
            st.sampled_from(list(Quality)),
            st.floats(-1e9, 1e9),
        ),
        max_size=30,
    )
)
def test_hostile_readings_never_crash_the_engine(
    batch: list[tuple[str, Any, Quality, float]],
) -> None:
    rules = parse_rules([
        {"id": "h", "kind": "high", "point": "load", "limit": 1.0, "deadband": 0.5},
        {"id": "l", "kind": "low", "point": "load", "limit": -1.0, "on_delay_s": 1},
        {"id": "r", "kind": "rate", "point": "position", "rate_per_s": 10.0},
        {"id": "s", "kind": "stale", "point": "velocity", "stale_s": 1.0},
    ])  # fmt: skip

    async def go() -> None:
        store = AlarmStore(Path("/nonexistent"))
        e = AlarmEngine(AlarmsConfig(rules=rules), _devices(), store)
        e.on_readings([Reading("hoist-1", p, v, t, t, q) for p, v, q, t in batch])
        e.tick()
        for a in e.alarms.values():
            json.dumps(a.as_dict())  # every state stays serialisable
        store._pool.shutdown()

    asyncio.run(go())
