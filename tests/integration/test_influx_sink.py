"""The InfluxDB sink against real servers: VictoriaMetrics (the v2 write API) for what arrives,
and a scripted InfluxDB (tests/peers/victoria.py) for the answers VictoriaMetrics never gives
(400 for a malformed point, 413, 503 with Retry-After, 401 for a wrong token).

What is checked: names, values and timestamps as docs/telemetry.md states them; the bad-input
policy (each case counted, none crashes); an outage and a restart of the sink lose nothing and
deliver in order; a refused point is quarantined without wedging the queue; the bounded queue
drops the oldest and raises its alarms; shutdown flushes for a bounded time; the token is never
logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.model import Quality, Reading
from edge import influx
from edge.config import InfluxConfig
from edge.influx import (
    DeviceType,
    InfluxSink,
    InfluxWriter,
    LineEncoder,
    QueueAlarm,
    QueueLevel,
    SinkOptions,
)
from tests.conftest import wait_until
from tests.peers import victoria
from tests.peers.victoria import ScriptedInflux, VictoriaMetrics, wait_export

pytestmark = pytest.mark.integration

HOIST = DeviceType("hoist", "hoist")
TYPES = {"hoist-1": HOIST, "hoist-2": HOIST, "spl-1": DeviceType("spl_meter", "spl_meter")}


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    why = victoria.available()
    if why is not None:
        pytest.fail(why)
    with VictoriaMetrics(tmp_path_factory.mktemp("vm")) as server:
        yield server


def now_readings(device: str, point: str, values: list[Any], step_s: float = 0.01) -> list[Reading]:
    t0 = round(time.time(), 3) - 5  # whole milliseconds, a little in the past
    return [
        Reading(device, point, v, time.monotonic(), t0 + i * step_s) for i, v in enumerate(values)
    ]


def make_sink(
    tmp_path: Path,
    url: str,
    venue: str,
    *,
    token: str | None = None,
    on_alarm: Any = None,
    name: str = "queue.sqlite3",
    **opts: Any,
) -> InfluxSink:
    options = SinkOptions(**{"flush_interval_s": 0.05, "backoff_min_s": 0.02,
                             "backoff_max_s": 0.2, "flush_timeout_s": 5.0, **opts})  # fmt: skip
    writer = InfluxWriter(url, "org", "bucket", token, timeout_s=5)
    encoder = LineEncoder(venue, "stage", TYPES)
    return InfluxSink(tmp_path / name, writer, encoder, options, on_alarm)


@contextlib.asynccontextmanager
async def running(sink: InfluxSink) -> AsyncIterator[InfluxSink]:
    async with sink:
        task = asyncio.create_task(sink.run(), name="influx-run")
        try:
            yield sink
        finally:
            sink.close()
            await asyncio.wait_for(task, 30)


def samples(series: list[victoria.Series]) -> dict[tuple[str, str, str], list[tuple[int, float]]]:
    """{(name, device, point): [(ts, value)]} from an export."""
    out: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for s in series:
        key = (s.name, s.metric.get("device", ""), s.metric.get("point", ""))
        out.setdefault(key, []).extend(zip(s.timestamps, s.values, strict=True))
    return {k: sorted(v) for k, v in out.items()}


# --- what arrives ---------------------------------------------------------------------------


async def test_readings_arrive_with_schema_names_values_and_timestamps(
    vm: VictoriaMetrics, tmp_path: Path
) -> None:
    pos = now_readings("hoist-1", "position", [1000.5, 1001.25, 1002.0])
    moving = now_readings("hoist-1", "moving", [True, False])
    fault = now_readings("hoist-1", "fault_code", [0, 17])
    stale = [Reading("hoist-2", "load", 12.5, 0.0, pos[0].ts_wall, Quality.STALE)]
    bad = [Reading("hoist-2", "velocity", None, 0.0, pos[0].ts_wall, Quality.BAD)]
    async with running(make_sink(tmp_path, vm.url, "v-schema")) as sink:
        await sink.enqueue(pos + moving + fault + stale + bad)
        assert await sink.flush(20)
        assert sink.stats()["delivered"] == 9
    got = samples(await asyncio.to_thread(wait_export, vm, '{venue="v-schema"}', 17))
    ms = [round(r.ts_wall * 1000) for r in pos]
    assert got[("hoist_value", "hoist-1", "position")] == list(
        zip(ms, [1000.5, 1001.25, 1002.0], strict=True)
    )
    assert got[("hoist_quality", "hoist-1", "position")] == [(t, 0.0) for t in ms]
    assert [v for _, v in got[("hoist_value", "hoist-1", "moving")]] == [1.0, 0.0]
    assert [v for _, v in got[("hoist_value", "hoist-1", "fault_code")]] == [0.0, 17.0]
    assert got[("hoist_quality", "hoist-2", "load")] == [(ms[0], 1.0)]
    assert got[("hoist_quality", "hoist-2", "velocity")] == [(ms[0], 2.0)]
    assert ("hoist_value", "hoist-2", "velocity") not in got  # no value: no value field
    series = await asyncio.to_thread(vm.export, '{venue="v-schema",point="position"}')
    assert {k for s in series for k in s.metric} == {"__name__", *influx.TAG_KEYS}
    assert {s.metric["class"] for s in series} == {"hoist"}
    assert {s.metric["node"] for s in series} == {"stage"}


async def test_hostile_input_is_rejected_or_flagged_and_counted(
    vm: VictoriaMetrics, tmp_path: Path
) -> None:
    t = round(time.time(), 3) - 5
    weird = 'Bühne 1,links=oben "x"'  # unicode, comma, equals, space, quotes: all escaped

    def r(device: str, point: str, value: Any, ts: float = t) -> Reading:
        return Reading(device, point, value, 0.0, ts)

    hostile = [
        r("hoist-1", "nan", math.nan),  # flagged: quality 2, no value
        r("hoist-1", "inf", -math.inf),  # flagged
        r("hoist-1", "huge", 1.7e308),  # written as it is
        r("hoist-1", "bigint", 10**400),  # out_of_range
        r("hoist-1", "list", [1, 2]),  # bad_type
        r("hoist-1", "bytes", b"\x00"),  # bad_type
        r("hoist-1", "text", 'say "hi" \\ there'),  # a string field, escaped
        r("hoist-1", "text2", "two\nlines"),  # bad_text
        r("hoist-1", "text3", "x" * 5000),  # bad_text
        r(weird, "position", 1.0),  # a unicode, escaped tag value
        r("back\\slash", "position", 1.0),  # bad_tag
        r("new\nline", "position", 1.0),  # bad_tag
        r("", "position", 1.0),  # bad_tag
        r("hoist-1", "future", 1.0, t + 86400),  # future
        r("hoist-1", "past", 1.0, t - 30 * 86400),  # past
        r("hoist-1", "when", 1.0, math.nan),  # bad_time
        r("hoist-1", "dup", 1.0),
        r("hoist-1", "dup", 2.0),  # duplicate (same series, same ms)
        Reading("hoist-1", "q", 3.0, 0.0, t, "excellent"),  # type: ignore[arg-type]
    ]
    async with running(make_sink(tmp_path, vm.url, "v-hostile")) as sink:
        await sink.enqueue(hostile)
        assert await sink.flush(20)
        stats = sink.stats()
    assert stats["rejected"] == {
        "out_of_range": 1, "bad_type": 2, "bad_text": 2, "bad_tag": 3, "future": 1, "past": 1,
        "bad_time": 1, "duplicate": 1,
    }  # fmt: skip
    assert stats["flagged"] == {"nonfinite": 2, "bad_quality": 1}
    assert stats["delivered"] == 7
    got = samples(await asyncio.to_thread(wait_export, vm, '{venue="v-hostile"}', 12))
    assert got[("hoist_quality", "hoist-1", "nan")] == [(round(t * 1000), 2.0)]
    assert ("hoist_value", "hoist-1", "nan") not in got
    assert got[("hoist_value", "hoist-1", "huge")][0][1] == pytest.approx(1.7e308, rel=1e-9)
    assert ("hoist_quality", "hoist-1", "text") in got  # VictoriaMetrics keeps no strings
    assert got[("unknown_value", weird, "position")] == [(round(t * 1000), 1.0)]
    assert got[("hoist_value", "hoist-1", "dup")] == [(round(t * 1000), 1.0)]
    assert got[("hoist_quality", "hoist-1", "q")] == [(round(t * 1000), 2.0)]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    device=st.text(max_size=20),
    point=st.text(max_size=20),
    value=st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=50),
        st.binary(max_size=5), st.lists(st.integers(), max_size=2),
    ),
    ts=st.one_of(st.floats(), st.floats(min_value=1.7e9, max_value=1.9e9), st.integers()),
    quality=st.one_of(st.sampled_from(list(Quality)), st.text(max_size=5), st.just([1])),
)  # fmt: skip
def test_encoder_never_crashes_and_accounts_for_every_reading(
    device: str, point: str, value: Any, ts: float, quality: Any
) -> None:
    enc = LineEncoder("venue", "node", TYPES, clock=lambda: 1.8e9)
    out = enc.encode([Reading(device, point, value, 0.0, ts, quality)])
    assert len(out) + sum(enc.rejected.values()) == 1
    for ms, line in out:
        text = line.decode()
        assert "\n" not in text and text.endswith(f" {ms}")
        assert text.startswith(("hoist,", "spl_meter,", "unknown,"))


# --- outages, order, quarantine -------------------------------------------------------------


async def test_outage_and_sink_restart_lose_nothing(tmp_path: Path) -> None:
    with VictoriaMetrics(tmp_path / "vm") as server:
        first = now_readings("hoist-1", "position", list(range(100)), step_s=0.002)
        async with running(
            make_sink(tmp_path, server.url, "v-outage", flush_timeout_s=0.5)
        ) as sink:
            await sink.enqueue(first[:50])
            assert await sink.flush(20)
            await asyncio.to_thread(server.stop)
            await sink.enqueue(first[50:])
            await wait_until(
                lambda: _async(sink.stats()["write_failures"] > 0), 10, "a failed write"
            )
            assert sink.stats()["link"] == "backing_off"
            assert sink.stats()["queue_readings"] == 50
        # The sink stopped with the server still down: the readings wait on disk.
        second = make_sink(tmp_path, server.url, "v-outage")
        async with second:
            assert second.queue.state.readings == 50
        await asyncio.to_thread(server.start)
        async with running(make_sink(tmp_path, server.url, "v-outage")) as sink:
            assert await sink.flush(20)
        got = samples(await asyncio.to_thread(wait_export, server, '{venue="v-outage"}', 200))
    values = [v for _, v in got[("hoist_value", "hoist-1", "position")]]
    assert values == [float(v) for v in range(100)]


async def test_delivery_resumes_in_order_after_503_honouring_retry_after(tmp_path: Path) -> None:
    with ScriptedInflux() as peer:
        peer.state.down = True
        peer.state.retry_after_s = 1
        sink = make_sink(tmp_path, peer.url, "v-order", batch_size=7, backoff_max_s=5)
        async with running(sink):
            for i in range(10):
                await sink.enqueue(
                    now_readings("hoist-1", "position", [i * 10 + k for k in range(5)])
                )
                await asyncio.sleep(0.01)
            await wait_until(lambda: _async(503 in peer.state.answers), 10, "a 503")
            peer.state.down = False
            assert await sink.flush(20)
            stats = sink.stats()
        values = [float(ln.split(b"value=")[1].split(b",")[0]) for ln in peer.lines()]
        assert values == sorted(values) and len(values) == 50
        assert stats["errors_by_status"]["503"] >= 1
        assert stats["link"] == "ok"


async def test_a_refused_point_is_quarantined_without_wedging_the_queue(tmp_path: Path) -> None:
    with ScriptedInflux() as peer:
        sink = make_sink(tmp_path, peer.url, "v-quarantine", batch_size=64)
        good = now_readings("hoist-1", "position", [float(i) for i in range(100)])
        poison = Reading("hoist-1", "note", "REJECT me", 0.0, good[37].ts_wall)
        async with running(sink):
            await sink.enqueue([*good[:37], poison, *good[37:]])
            assert await sink.flush(20)
            stats = sink.stats()
            kept = await asyncio.to_thread(sink.queue.quarantine)
        assert stats["quarantined"] == 1 and stats["delivered"] == 100
        assert [(s, line.split(b" ", 1)[1].rsplit(b" ", 1)[0]) for s, _, line in kept] == [
            (400, b'text="REJECT me",quality=0i')
        ]
        assert "invalid" in kept[0][1]
        values = [float(ln.split(b"value=")[1].split(b",")[0]) for ln in peer.lines()]
        assert values == [float(i) for i in range(100)]


async def test_413_splits_the_batch(tmp_path: Path) -> None:
    with ScriptedInflux() as peer:
        peer.state.max_body = 2000
        sink = make_sink(tmp_path, peer.url, "v-413", batch_size=500)
        async with running(sink):
            await sink.enqueue(now_readings("hoist-1", "position", list(range(300)), 0.001))
            assert await sink.flush(20)
        assert 413 in peer.state.answers
        assert len(peer.lines()) == 300 and sink.stats()["quarantined"] == 0


async def test_wrong_credentials_back_off_and_keep_the_queue(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-token-value"
    caplog.set_level(logging.DEBUG, logger="edge.influx")
    with ScriptedInflux() as peer:
        peer.state.token = secret
        async with running(
            make_sink(tmp_path, peer.url, "v-auth", token="wrong", flush_timeout_s=0.5)
        ) as sink:
            await sink.enqueue(now_readings("hoist-1", "position", [1.0, 2.0]))
            await wait_until(lambda: _async(401 in peer.state.answers), 10, "a 401")
            assert sink.stats()["quarantined"] == 0
            assert sink.stats()["queue_readings"] == 2
        monkeypatch.setenv("FT_TEST_INFLUX_TOKEN", secret)
        cfg = InfluxConfig(url=peer.url, bucket="b", token_env="FT_TEST_INFLUX_TOKEN")
        sink = influx.from_config(cfg, tmp_path / "queue.sqlite3", "v-auth", "stage", TYPES)
        async with running(sink):
            assert await sink.flush(20)
            stats = sink.stats()
        assert len(peer.lines()) == 2
    assert secret not in caplog.text and secret not in repr(stats) and secret not in repr(sink)
    assert secret not in repr(sink.writer) and secret not in repr(cfg)


async def test_victoria_metrics_refusing_unauthenticated_writes(tmp_path: Path) -> None:
    with VictoriaMetrics(tmp_path / "vm", basic_auth=("ft", "pw")) as server:
        async with running(make_sink(tmp_path, server.url, "v-401", flush_timeout_s=0.5)) as sink:
            await sink.enqueue(now_readings("hoist-1", "position", [1.0]))
            await wait_until(
                lambda: _async(sink.stats()["errors_by_status"].get("401", 0) > 0), 10, "a 401"
            )
            assert sink.stats()["queue_readings"] == 1


def test_token_env_unset_is_a_clear_error() -> None:
    cfg = InfluxConfig(url="http://127.0.0.1:1", bucket="b", token_env="FT_SURELY_UNSET_VAR")
    with pytest.raises(RuntimeError, match="FT_SURELY_UNSET_VAR is not set"):
        influx.token_from_env(cfg, {})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": "ftp://x"}, "url"),
        ({"url": "http://x", "bucket": ""}, "bucket"),
        ({"url": "http://x", "high_water": 0.5, "low_water": 0.7}, "low_water"),
        ({"url": "http://x", "token_env": "not valid"}, "token_env"),
        ({"url": "http://x", "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_config_is_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InfluxConfig.model_validate({"bucket": "b", **fields})


# --- the bounded queue, its alarm, shutdown -------------------------------------------------


async def test_full_queue_drops_the_oldest_and_raises_alarms(tmp_path: Path) -> None:
    alarms: list[QueueAlarm] = []
    with ScriptedInflux() as peer:
        peer.state.down = True
        peer.state.retry_after_s = 0
        sink = make_sink(
            tmp_path, peer.url, "v-full", on_alarm=alarms.append, max_readings=2500,
            high_water=0.8, low_water=0.4, batch_size=10_000,
        )  # fmt: skip
        async with running(sink):
            for k in range(5):  # 5 batches of 1000: the first 2 500 go
                await sink.enqueue(now_readings(f"hoist-{k % 2 + 1}", f"p{k}", list(range(1000))))
            stats = sink.stats()
            assert stats["dropped"] == 3000 and stats["queue_readings"] == 2000
            assert [a.level for a in alarms] == [QueueLevel.HIGH, QueueLevel.FULL]
            peer.state.down = False
            assert await sink.flush(20)
        assert [a.level for a in alarms][-1] is QueueLevel.NORMAL
        points = {ln.split(b",point=")[1].split(b",")[0] for ln in peer.lines()}
        assert points == {b"p3", b"p4"}  # the newest kept, in order


async def test_shutdown_flush_is_bounded_and_keeps_the_rest(tmp_path: Path) -> None:
    with ScriptedInflux() as peer:
        peer.state.down = True
        sink = make_sink(tmp_path, peer.url, "v-shutdown", flush_timeout_s=0.5)
        async with sink:
            task = asyncio.create_task(sink.run())
            await sink.enqueue(now_readings("hoist-1", "position", [1.0, 2.0, 3.0]))
            started = time.monotonic()
            sink.close()
            await asyncio.wait_for(task, 10)  # a bound, not a figure: 0.5 s plus one write
            assert time.monotonic() - started < 10
            assert sink.queue.state.readings == 3
        peer.state.down = False
        async with running(make_sink(tmp_path, peer.url, "v-shutdown")) as again:
            assert await again.flush(20)
        assert len(peer.lines()) == 3


async def test_run_consumes_a_bus_feed_and_flushes_when_it_closes(tmp_path: Path) -> None:
    from edge.bus import Bus, Overflow

    bus: Bus[Reading] = Bus("readings")
    feed = bus.subscribe("influx", Overflow.BLOCK, maxsize=1000)
    with ScriptedInflux() as peer:
        sink = make_sink(tmp_path, peer.url, "v-bus", flush_interval_s=10)
        async with sink:
            task = asyncio.create_task(sink.run(feed))
            for chunk in range(5):
                await bus.publish_many(now_readings("hoist-1", f"p{chunk}", list(range(100))))
            feed.close()
            await asyncio.wait_for(task, 20)
        assert len(peer.lines()) == 500  # flushed at close, not after flush_interval_s


async def _async(value: bool) -> bool:
    return value


async def test_wiring_from_a_venue_file(vm: VictoriaMetrics, tmp_path: Path) -> None:
    """What the service does with ``[telemetry.influxdb]`` (the lines given to edge/service.py):
    the queue resolved against the venue folder, the node's devices typed by their profiles."""
    from edge.config import load_venue
    from tests.conftest import write_venue

    path = write_venue(tmp_path, [{"id": "hoist-7", "port": 1502}])
    path.write_text(
        path.read_text()
        + f'\n[telemetry.influxdb]\nurl = "{vm.url}"\nbucket = "b"\nqueue = "var/iq.sqlite3"\n'
    )
    venue = load_venue(path)
    cfg = venue.config.telemetry.influxdb
    assert cfg is not None
    node = venue.config.nodes[0].id
    devices = {d.id: d for d in venue.devices_of(node)}
    sink = influx.from_config(
        cfg, venue.resolve(cfg.queue), venue.config.venue.id, node, influx.device_types(devices)
    )
    assert sink.queue.path == tmp_path / "var" / "iq.sqlite3"
    async with running(sink):
        await sink.enqueue(now_readings("hoist-7", "position", [42.0]))
        assert await sink.flush(20)
    got = await asyncio.to_thread(wait_export, vm, '{device="hoist-7"}', 2)
    assert {(s.name, s.metric["venue"], s.metric["node"], s.metric["class"]) for s in got} == {
        ("hoist_value", "test", "stage", "hoist"),
        ("hoist_quality", "test", "stage", "hoist"),
    }
