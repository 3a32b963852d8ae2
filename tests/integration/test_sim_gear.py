"""MQTT gear simulators against a real Mosquitto, observed with ``mosquitto_sub``/``mosquitto_pub``.

Mosquitto's own clients are the independent peers: what the simulators publish is checked
against mqtt.md and the device pages (topics, payload keys, types, documented ranges, retained
births, ordering, wills), commands go in as any client would send them, and every fault is seen
from outside. Each test has its own venue id, so retained messages never leak between tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulators import runner
from simulators.core import DeviceSpec
from simulators.gear import MqttFamily
from simulators.gear.models import MODELS
from tests.conftest import REPO, RealServer, free_port, start_mosquitto, stop_process
from tests.unit.test_sim_gear import RANGES, check_value

pytestmark = pytest.mark.integration

Line = tuple[bool, str, bytes]
# A line holds a whole payload: the ``malformed`` fault sends some over 64 KiB, which is also
# asyncio's default line limit (a reader that hits it dies and leaves mosquitto_sub's pipe
# paused, so ``wait()`` never returns).
LINE_LIMIT = 1 << 20


def new_venue() -> str:
    return f"g{uuid.uuid4().hex[:10]}"


def device_entry(model: str, venue: str, **simulate: Any) -> dict[str, Any]:
    dev_id = f"{model.replace('_', '-')}-1"
    if MODELS[model].vendor:
        transport = {"kind": "mqtt", "base": f"shellies-{venue}/{dev_id}"}
    else:
        transport = {"kind": "mqtt", "node": "gw"}
    return {"id": dev_id, "profile": model, "transport": transport,
            "simulate": {"model": model, **simulate}}  # fmt: skip


@contextlib.asynccontextmanager
async def running(
    port: int, venue: str, entries: list[dict[str, Any]]
) -> AsyncIterator[MqttFamily]:
    family = MqttFamily({"venue": {"id": venue}, "mqtt": {"host": "127.0.0.1", "port": port}})
    for i, e in enumerate(entries):
        family.add(DeviceSpec(e["id"], e["profile"], e["transport"], e["simulate"], f"[{i}]"))
    async with contextlib.AsyncExitStack() as stack:
        for host in family.hosts():
            await stack.enter_async_context(host)
        yield family


class Sub:
    """``mosquitto_sub`` collecting ``retained topic payload`` lines in the background."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[Line] = []
        self._reader = asyncio.create_task(self._read(), name="mosquitto_sub-reader")

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            retained, topic, payload = line.rstrip(b"\n").split(b" ", 2)
            self.lines.append((retained == b"1", topic.decode(), payload))

    @classmethod
    @contextlib.asynccontextmanager
    async def run(cls, port: int, *topics: str) -> AsyncIterator[Sub]:
        args = [a for t in topics for a in ("-t", t)]
        proc = await asyncio.create_subprocess_exec(
            "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-F", "%r %t %p",
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            limit=LINE_LIMIT,
        )  # fmt: skip
        sub = cls(proc)
        await asyncio.sleep(0.3)  # subscribed before anything is published
        try:
            yield sub
        finally:
            proc.kill()
            try:
                await asyncio.wait_for(sub._reader, 5)  # reads to EOF, so the pipe closes
            finally:
                sub._reader.cancel()
                await asyncio.gather(sub._reader, return_exceptions=True)
                await asyncio.wait_for(proc.wait(), 5)

    def on(self, topic: str) -> list[Line]:
        return [line for line in self.lines if line[1] == topic]

    async def wait_for(self, predicate: Any, what: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"timed out waiting for {what}; last lines: {self.lines[-5:]}")


async def retained(port: int, topic: str, count: int = 1) -> list[Line]:
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-F", "%r %t %p",
        "--retained-only", "-C", str(count), "-W", "3", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    lines = [line.split(b" ", 2) for line in out.splitlines()]
    return [(r == b"1", t.decode(), p) for r, t, p in lines]


async def pub(port: int, topic: str, payload: bytes) -> None:
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic, "-s",
        stdin=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.wait_for(proc.communicate(payload), 10)
    assert proc.returncode == 0


def now_ms() -> int:
    return round(time.time() * 1000)


# --- what each type publishes -----------------------------------------------------------------

FAST = {"temp_humidity": 2.0, "power_meter": 2.0, "projector": 2.0, "media_server": 2.0,
        "led_wall_processor": 2.0, "shelly_3em": 2.0}  # fmt: skip


async def test_every_type_publishes_its_documented_topics_in_order(mosquitto: RealServer) -> None:
    venue, port = new_venue(), mosquitto.port
    entries = [device_entry(m, venue, **({"publish_hz": FAST[m]} if m in FAST else {}))
               for m in sorted(MODELS)]  # fmt: skip
    native = [e for e in entries if "node" in e["transport"]]
    async with (
        Sub.run(port, f"flytower/{venue}/#", f"shellies-{venue}/#") as sub,
        running(port, venue, entries),
    ):

        def complete() -> bool:
            seen = {t for _, t, _ in sub.lines}
            return all(
                f"{prefix(e, venue)}{p}" in seen for e in entries for p in RANGES[e["profile"]]
            )

        await sub.wait_for(complete, "every documented point of every type")
        states = await retained(port, f"flytower/{venue}/gw/+/$state", len(native))
        assert len(states) == len(native) and all(r for r, _, _ in states)
        [(was_retained, _, online)] = await retained(port, f"shellies-{venue}/shelly-3em-1/online")
        assert was_retained and online == b"true"
    topics = [t for _, t, _ in sub.lines]
    # mqtt.md §4.3: node birth, then device births, then points.
    birth_at = topics.index(f"flytower/{venue}/gw/$state")
    birth = json.loads(sub.lines[birth_at][2])
    assert birth["state"] == "online" and birth["devices"] == sorted(e["id"] for e in native)
    assert set(birth) == {"state", "ts", "session", "devices"}
    for e in entries:
        for point in RANGES[e["profile"]]:
            lines = sub.on(prefix(e, venue) + point)
            for _, _, payload in lines:
                check_payload(e["profile"], point, payload)
        if e in native:
            state_at = topics.index(f"{prefix(e, venue)}$state")
            first_point = min(topics.index(prefix(e, venue) + p) for p in RANGES[e["profile"]])
            assert birth_at < state_at < first_point
            state = json.loads(sub.lines[state_at][2])
            assert state == {"state": "online", "ts": state["ts"], "profile": e["profile"],
                             "reason": ""}  # fmt: skip
    for _, topic, _ in sub.lines:  # nothing published off the documented tree
        assert topic.rsplit("/", 1)[-1] in {"$state", "online", *_all_points()}, topic


def prefix(entry: dict[str, Any], venue: str) -> str:
    tr = entry["transport"]
    return f"{tr['base']}/" if "base" in tr else f"flytower/{venue}/gw/{entry['id']}/"


def _all_points() -> set[str]:
    return {p.rsplit("/", 1)[-1] for points in RANGES.values() for p in points}


def check_payload(model: str, point: str, payload: bytes) -> None:
    if MODELS[model].vendor:  # bare values, as a Shelly sends them
        text = payload.decode()
        kind = RANGES[model][point][0]
        value: Any = {"true": True, "false": False}[text] if kind is bool else (
            text if kind is str else float(text))  # fmt: skip
        check_value(model, point, value)
        return
    doc = json.loads(payload, parse_constant=lambda c: pytest.fail(f"{point}: {c}"))
    assert set(doc) == {"v", "ts", "q"} and doc["q"] == "good", (point, doc)
    assert isinstance(doc["ts"], int) and abs(doc["ts"] - now_ms()) < 60_000
    check_value(model, point, doc["v"])


# --- commands ---------------------------------------------------------------------------------


async def test_commands_reply_and_change_the_state(mosquitto: RealServer) -> None:
    venue, port = new_venue(), mosquitto.port
    entries = [device_entry(m, venue) for m in
               ("projector", "power_amplifier", "media_server", "shelly_3em")]  # fmt: skip
    inbox = f"flytower/{venue}/ctl/$reply"
    cmd = f"flytower/{venue}/gw/{{}}/cmd/{{}}"

    def request(rid: str, args: dict[str, Any] | None = None, ts: int | None = None) -> bytes:
        doc = {"id": rid, "args": args or {}, "ts": ts or now_ms(), "reply_to": inbox}
        return json.dumps(doc).encode()

    async with (
        Sub.run(port, inbox, f"flytower/{venue}/gw/+/+", f"shellies-{venue}/#") as sub,
        running(port, venue, entries) as family,
    ):
        await sub.wait_for(lambda: sub.on(f"flytower/{venue}/gw/projector-1/shutter_closed"),
                           "the projector's first values")  # fmt: skip
        sends = [
            ("projector-1", "open_shutter", request("r1")),
            ("power-amplifier-1", "set_mute_2", request("r2", {"muted": True})),
            ("media-server-1", "load_clip", request("r3", {"clip": 12})),
            ("projector-1", "select_input", request("r4", {"input": 9})),
            ("projector-1", "select_input", request("r5", {"input": 2}, ts=now_ms() - 120_000)),
            ("power-amplifier-1", "mute_all", b'{"id":"r6","ts":1,"reply_to":"' + inbox.encode()
             + b'","args":{"x":[1]}}'),
            ("power-amplifier-1", "set_mute_2", request("r2", {"muted": False})),  # duplicate id
        ]  # fmt: skip
        for device, name, payload in sends:
            await pub(port, cmd.format(device, name), payload)
        await pub(port, f"shellies-{venue}/shelly-3em-1/relay/0/command", b"off")
        await pub(port, cmd.format("projector-1", "open_shutter"), b"not json, no id")

        def replies() -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {}
            for _, _, p in sub.on(inbox):
                doc = json.loads(p)
                out.setdefault(doc["id"], []).append(doc)
            return out

        await sub.wait_for(lambda: sum(map(len, replies().values())) >= 7, "seven replies")
        r = replies()
        assert r["r1"][0] | {"ts": 0} == {"id": "r1", "ok": True, "code": "ok", "ts": 0,
                                          "result": [["shutter_closed", False]]}  # fmt: skip
        assert r["r2"][0]["result"] == [["mute_2", True]]
        assert r["r2"][1] == r["r2"][0]  # the duplicate got the same reply, not re-executed
        assert r["r3"][0]["result"] == [["transport", 0], ["clip", 12]]
        assert (r["r4"][0]["code"], r["r4"][0]["ok"]) == ("refused", False)
        assert "9" in r["r4"][0]["error"]
        assert r["r5"][0]["code"] == "expired"
        assert r["r6"][0]["code"] == "bad_request"

        def last(device: str, point: str) -> Any:
            lines = sub.on(f"flytower/{venue}/gw/{device}/{point}")
            return json.loads(lines[-1][2])["v"] if lines else None

        await sub.wait_for(lambda: last("projector-1", "shutter_closed") is False, "shutter")
        await sub.wait_for(lambda: last("power-amplifier-1", "mute_2") is True, "mute_2")
        await sub.wait_for(lambda: last("power-amplifier-1", "level_2") == -60.0, "silence")
        await sub.wait_for(lambda: last("media-server-1", "clip") == 12, "clip 12 loaded")
        await sub.wait_for(lambda: last("media-server-1", "duration") not in (None, 0.0),
                           "the clip's duration")  # fmt: skip
        relay = f"shellies-{venue}/shelly-3em-1/relay/0"
        await sub.wait_for(lambda: any(p == b"off" for _, _, p in sub.on(relay)), "relay off")
        stats = family.stats()
        # r1-r5 and the relay; r6 was a bad request, the duplicate was answered from the cache
        assert stats["commands"] == 6 and stats["malformed_commands"] == 1
        assert family.devices[1].truth()["mute_2"] is True


# --- faults -----------------------------------------------------------------------------------


async def test_faults_are_seen_from_outside(mosquitto: RealServer) -> None:
    venue, port = new_venue(), mosquitto.port
    entries = [device_entry("load_cell", venue, publish_hz=10.0),
               device_entry("shelly_3em", venue, publish_hz=5.0)]  # fmt: skip
    load = f"flytower/{venue}/gw/load-cell-1/load"
    node_state = f"flytower/{venue}/gw/$state"
    async with (
        Sub.run(port, f"flytower/{venue}/#", f"shellies-{venue}/#") as sub,
        running(port, venue, entries) as family,
    ):
        cell, meter = family.devices
        await sub.wait_for(lambda: len(sub.on(load)) > 3, "load readings")
        # malformed: a burst of bad payloads on the device's own topics
        cell.inject("malformed", {"count": 10})
        meter.inject("malformed", {"count": 5, "kind": "nan"})
        bad_topic = f"flytower/{venue}/gw/load-cell-1/-load"
        await sub.wait_for(lambda: len(sub.on(bad_topic)) == 2, "wrong-topic messages")
        power = f"shellies-{venue}/shelly-3em-1/emeter/0/power"
        await sub.wait_for(lambda: sum(p == b"NaN" for _, _, p in sub.on(power)) == 5,
                           "five NaN payloads from the Shelly")  # fmt: skip
        kinds = [malformed_kind(p) for _, _, p in sub.on(load)]
        # ten of the mixed kind: two of each, one of them on a topic level that is invalid
        assert {k: kinds.count(k) for k in set(kinds) - {"ok"}} == {
            "not_json": 2, "wrong_type": 2, "oversized": 2, "nan": 2}  # fmt: skip
        # stuck: the same value, still published
        cell.inject("stuck", {})
        n = len(sub.on(load))
        await sub.wait_for(lambda: len(sub.on(load)) > n + 5, "more readings")
        assert len({p[:16] for _, _, p in sub.on(load)[n + 1 :]}) == 1
        cell.clear("stuck")
        # drift: readings leave the truth
        cell.inject("drift", {"rate_per_h": 360_000.0})  # 100 kg a second
        await asyncio.sleep(1.5)
        last = json.loads(sub.on(load)[-1][2])["v"]
        assert last - cell.truth()["load"] > 80
        cell.clear("drift")
        # dropout without the connection: silence, then data again
        cell.inject("dropout", {"duration_s": 1.0})
        await asyncio.sleep(0.3)
        n = len(sub.on(load))
        await asyncio.sleep(0.5)
        assert len(sub.on(load)) == n
        await sub.wait_for(lambda: len(sub.on(load)) > n, "data after the dropout")
        # dropout with the connection dropped: the broker publishes the node's will, then the
        # node comes back with a new birth.
        births = len(sub.on(node_state))
        cell.inject("dropout", {"duration_s": 1.5, "drop_connection": True})
        await sub.wait_for(lambda: len(sub.on(node_state)) > births, "the will")
        will = json.loads(sub.on(node_state)[births][2])
        assert will["state"] == "offline" and will["reason"] == "lost"
        assert will["ts"] == will["session"]
        await sub.wait_for(lambda: len(sub.on(node_state)) > births + 1, "a new birth")
        assert json.loads(sub.on(node_state)[-1][2])["state"] == "online"
        # the Shelly's own will
        meter.inject("dropout", {"drop_connection": True})
        online = f"shellies-{venue}/shelly-3em-1/online"
        await sub.wait_for(lambda: sub.on(online)[-1][2] == b"false", "the Shelly's will")
        meter.clear()
        await sub.wait_for(lambda: sub.on(online)[-1][2] == b"true", "the Shelly back")
        assert family.stats()["reconnects"] == 2


# Each type's own faults, and what a subscriber sees: (model, fault, params, point, value).
TYPE_FAULTS: list[tuple[str, str, dict[str, Any], str, Any]] = [
    ("load_cell", "overload", {"load_kg": 3600.0}, "overload", True),
    ("spl_meter", "overload", {}, "overload", True),
    ("people_counter", "blocked", {}, "fault", True),
    ("power_meter", "phase_loss", {"phase": 2}, "voltage_l2", 0.0),
    ("wireless_mic_receiver", "tx_off", {}, "tx_present", False),
    ("power_amplifier", "protect", {"channel": 3}, "protect_3", True),
    ("projector", "lamp_fault", {}, "error_code", 3),
    ("media_server", "clip_missing", {}, "playback_state", 4),
    ("led_wall_processor", "fault", {"code": 4}, "fault_code", 4),
    ("shelly_3em", "phase_loss", {"phase": 1}, "emeter/0/voltage", "0.0"),
]


async def test_type_faults_are_seen_from_outside(mosquitto: RealServer) -> None:
    venue, port = new_venue(), mosquitto.port
    entries = [device_entry(m, venue, publish_hz=5.0) for m, *_ in TYPE_FAULTS]

    def seen(entry: dict[str, Any], point: str) -> list[Any]:
        lines = sub.on(prefix(entry, venue) + point)
        if "base" in entry["transport"]:
            return [p.decode() for _, _, p in lines]
        return [json.loads(p)["v"] for _, _, p in lines]

    async with (
        Sub.run(port, f"flytower/{venue}/#", f"shellies-{venue}/#") as sub,
        running(port, venue, entries) as family,
    ):
        for entry, (_, _, _, point, value) in zip(entries, TYPE_FAULTS, strict=True):
            await sub.wait_for(lambda e=entry, p=point: seen(e, p), f"{entry['id']} {point}")
            assert value not in seen(entry, point), (entry["id"], point)
        for device, (_, fault, params, _, _) in zip(family.devices, TYPE_FAULTS, strict=True):
            device.inject(fault, params)
            assert fault in device.active_faults()
        for entry, (_, fault, _, point, value) in zip(entries, TYPE_FAULTS, strict=True):
            await sub.wait_for(
                lambda e=entry, p=point, v=value: seen(e, p)[-1] == v,
                f"{entry['id']}: {fault} seen as {point} = {value!r}",
            )
        for device in family.devices:
            device.clear()
        for entry, (model, fault, _, point, value) in zip(entries, TYPE_FAULTS, strict=True):
            if model in ("spl_meter", "media_server"):
                continue  # the overload flag covers the last minute; a failed load stays failed
            await sub.wait_for(
                lambda e=entry, p=point, v=value: seen(e, p)[-1] != v,
                f"{entry['id']}: {point} back after clearing {fault}",
            )


# --- the people counter: a show, and the control endpoint's override --------------------------

# A show compressed to about 9 s (docs/interfaces/devices/people_counter.md).
QUICK_SHOW = {"capacity": 300, "empty_s": 0.5, "doors_s": 3.0, "act_1_s": 1.0,
              "interval_s": 2.0, "act_2_s": 1.0, "egress_s": 1.5, "repeat": False}  # fmt: skip


def counter_states(lines: list[Line]) -> list[tuple[int, dict[str, Any]]]:
    """What a subscriber knows of the counter after each tick: (ts, latest value per point).

    The points a tick changed go out together with the tick's timestamp, so the state is
    complete and consistent each time the timestamp moves on."""
    latest: dict[str, Any] = {}
    states: list[tuple[int, dict[str, Any]]] = []
    ts = None
    for _, topic, payload in lines:
        point = topic.rsplit("/", 1)[-1]
        if point == "$state":
            continue
        doc = json.loads(payload)
        if ts is not None and doc["ts"] != ts:
            states.append((ts, dict(latest)))
        ts = doc["ts"]
        latest[point] = doc["v"]
    if ts is not None:
        states.append((ts, dict(latest)))
    return states


async def test_people_counter_follows_a_show_over_mosquitto(mosquitto: RealServer) -> None:
    venue, port = new_venue(), mosquitto.port
    base = f"flytower/{venue}/gw/people-counter-1/"
    entry = device_entry("people_counter", venue, **QUICK_SHOW)
    async with (
        Sub.run(port, base + "+") as sub,
        running(port, venue, [entry]) as family,
    ):
        (dev,) = family.devices

        def now() -> dict[str, Any]:
            states = counter_states(sub.lines)
            return states[-1][1] if states else {}

        await sub.wait_for(lambda: now().get("occupancy", 0) > 0, "the doors open")
        await sub.wait_for(lambda: dev.truth()["phase"] == "egress", "the end of the show", 15)
        await sub.wait_for(lambda: now().get("exits", 0) > 0 and now()["occupancy"] == 0,
                           "the hall empty", 10)  # fmt: skip
        audience = dev.truth()["audience"]
    states = counter_states(sub.lines)
    assert len(states) > 20
    for _, s in states:
        assert set(s) == {"occupancy", "entries", "exits", "capacity", "fault"}
        assert s["entries"] - s["exits"] == s["occupancy"] >= 0, s
        assert s["capacity"] == 300 and s["fault"] is False
        for point, value in s.items():
            check_value("people_counter", point, value)
    peak = max(s["occupancy"] for _, s in states)
    assert 250 <= peak == audience <= 300  # everyone who came was in at once
    assert states[-1][1]["entries"] > audience  # the interval: out and in again
    assert states[-1][1]["entries"] == states[-1][1]["exits"]
    occupancy = [s["occupancy"] for _, s in states]
    rising = occupancy[: occupancy.index(peak) + 1]
    assert rising == sorted(rising) and len(set(rising)) > 5  # it filled over several ticks


async def test_people_counter_is_set_through_the_control_endpoint(
    mosquitto: RealServer,
) -> None:
    """What an end-to-end test does: "now 1200 people are in", over HTTP, seen on the wire."""
    venue, port = new_venue(), mosquitto.port
    base = f"flytower/{venue}/foh/counter-hall/"
    config = {
        "venue": {"id": venue},
        "mqtt": {"host": "127.0.0.1", "port": port},
        "devices": [{"id": "counter-hall", "profile": "people_counter",
                     "transport": {"kind": "mqtt", "node": "foh"},
                     "simulate": {"model": "people_counter"}}],
    }  # fmt: skip
    ports: list[int] = []
    ready = asyncio.Event()

    def on_ready(bound: int) -> None:
        ports.append(bound)
        ready.set()

    server = asyncio.create_task(runner.serve(config, "venue.toml", port=0, ready=on_ready))
    try:
        async with Sub.run(port, base + "+") as sub:
            await asyncio.wait_for(ready.wait(), 15)
            url = f"http://127.0.0.1:{ports[0]}/sim/v1"
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:

                def last(point: str) -> Any:
                    lines = sub.on(base + point)
                    return json.loads(lines[-1][2])["v"] if lines else None

                await sub.wait_for(lambda: last("occupancy") == 0, "the empty hall")
                reply = await http.post("/devices/counter-hall/faults/occupancy",
                                        json={"people": 1200})  # fmt: skip
                assert reply.status_code == 200, reply.text
                assert reply.json() == {"active": {"occupancy": {"people": 1200}}}
                await sub.wait_for(lambda: last("occupancy") == 1200, "1200 people in")
                assert (last("entries"), last("exits")) == (1200, 0)
                truth = (await http.get("/truth", params={"ids": "counter-hall"})).json()
                hall = truth["devices"]["counter-hall"]
                assert hall["occupancy"] == hall["people_inside"] == 1200 and hall["held"]

                hostile = [
                    b'{"people": "1200"}', b'{"people": 1200.5}', b'{"people": -1}',
                    b'{"people": 100001}', b'{"people": true}', b'{"people": null}',
                    b'{"people": NaN}', b'{"people": 1e999}', b'{"count": 5}', b"[1200]",
                    b"people=1200", b'{"people": [1]}',
                ]  # fmt: skip
                for body in hostile:
                    r = await http.post("/devices/counter-hall/faults/occupancy", content=body)
                    assert r.status_code == 422, (body, r.status_code, r.text)
                    assert r.json()["detail"], body
                bad = await http.post("/devices/counter-hall/faults/blocked",
                                      json={"missed_pct": 150})  # fmt: skip
                assert bad.status_code == 422 and "missed_pct" in bad.json()["detail"]
                one = (await http.get("/devices/counter-hall")).json()
                assert one["active"] == {"occupancy": {"people": 1200}}
                assert one["truth"]["occupancy"] == 1200

                reply = await http.post("/devices/counter-hall/faults/blocked", json={})
                assert reply.status_code == 200, reply.text
                await sub.wait_for(lambda: last("fault") is True, "the fault flag")
                reply = await http.delete("/devices/counter-hall/faults")
                assert reply.status_code == 200 and reply.json() == {"active": {}}
                await sub.wait_for(lambda: last("fault") is False, "the flag cleared")
                assert last("occupancy") == 1200  # handed back to the show: doors still shut
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)


def malformed_kind(payload: bytes) -> str:
    """How a point payload breaks mqtt.md §3, judged as a receiver would ("ok" if it does not)."""
    if len(payload) > 65_536:
        return "oversized"
    try:
        doc = json.loads(payload, parse_constant=lambda c: 1 / 0)
    except ZeroDivisionError:
        return "nan"
    except ValueError:
        return "not_json"
    ok = isinstance(doc, dict) and set(doc) == {"v", "ts", "q"} and isinstance(doc["ts"], int)
    return "ok" if ok and not isinstance(doc["v"], dict | list) else "wrong_type"


# --- lifecycle --------------------------------------------------------------------------------


async def test_kill_9_fires_the_wills(mosquitto: RealServer, tmp_path: Path) -> None:
    venue, port = new_venue(), mosquitto.port
    entries = [device_entry("temp_humidity", venue), device_entry("shelly_3em", venue)]
    text = (
        f'version = 1\n[venue]\nid = "{venue}"\n[[nodes]]\nid = "stage"\n'
        f'[mqtt]\nmode = "external"\nport = {port}\n'
    )
    for e in entries:
        tr = ", ".join(f'{k} = "{v}"' for k, v in e["transport"].items())
        text += (f'[[devices]]\nid = "{e["id"]}"\nprofile = "{e["profile"]}"\n'
                 f'transport = {{ {tr} }}\n'
                 f'simulate = {{ model = "{e["profile"]}" }}\n')  # fmt: skip
    path = tmp_path / "venue.toml"
    path.write_text(text)
    node_state = f"flytower/{venue}/gw/$state"
    online = f"shellies-{venue}/shelly-3em-1/online"
    log = os.open(tmp_path / "sim.log", os.O_WRONLY | os.O_CREAT, 0o644)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators", str(path), "--control-port", str(free_port()),
        cwd=REPO, stdout=log, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    os.close(log)
    try:
        async with Sub.run(port, node_state, online) as sub:
            await sub.wait_for(lambda: len(sub.on(node_state)) == 1 and sub.on(online),
                               "the births", 15)  # fmt: skip
            birth = json.loads(sub.on(node_state)[0][2])
            os.kill(proc.pid, signal.SIGKILL)
            await sub.wait_for(lambda: len(sub.on(node_state)) == 2, "the node's will")
            await sub.wait_for(lambda: sub.on(online)[-1][2] == b"false", "the Shelly's will")
        will = json.loads(sub.on(node_state)[1][2])
        assert will == {"state": "offline", "ts": birth["session"], "session": birth["session"],
                        "reason": "lost"}  # fmt: skip
        [(was_retained, _, payload)] = await retained(port, node_state)
        assert was_retained and json.loads(payload)["reason"] == "lost"
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()


async def test_waits_for_a_late_broker_and_survives_its_restart(tmp_path: Path) -> None:
    venue, port = new_venue(), free_port()
    node_state = f"flytower/{venue}/gw/$state"
    async with running(port, venue, [device_entry("spl_meter", venue)]) as family:
        await asyncio.sleep(0.8)  # the broker is not there yet: the node keeps retrying
        assert family.stats()["connected"] == 0
        broker = start_mosquitto(tmp_path / "broker", port)
        try:
            async with Sub.run(port, node_state, f"flytower/{venue}/gw/spl-meter-1/laf") as sub:
                await sub.wait_for(lambda: sub.on(node_state), "the birth after the broker came")
                await stop_process(broker)
                broker = start_mosquitto(tmp_path / "broker", port)
            async with Sub.run(port, node_state, f"flytower/{venue}/gw/spl-meter-1/laf") as sub:
                await sub.wait_for(
                    lambda: any(b'"online"' in p for _, _, p in sub.on(node_state)),
                    "a new birth after the restart",
                    15,
                )
                await sub.wait_for(lambda: sub.on(f"flytower/{venue}/gw/spl-meter-1/laf"),
                                   "telemetry again")  # fmt: skip
            assert family.stats()["reconnects"] >= 1
        finally:
            await stop_process(broker)
