"""``GET /metrics``: Flytower's own health in the Prometheus text format (docs/telemetry.md,
"Prometheus metrics").

A ``prometheus_client`` collector reads the service's state at scrape time, so nothing is
counted twice and a scrape costs nothing between scrapes:

- devices: health state (one series per state, 1 for the current one), requests, errors,
  reconnects, poll cycles and missed cycles, request latency p50/p99;
- queues: every readings-bus subscription's depth, delivered and dropped;
- store: readings written, refused by reason, flagged by reason; held in memory and dropped
  while it takes no writes (and the journal's likewise);
- InfluxDB sink (when configured): queue depth and bytes, lag, delivered, write failures,
  quarantined, dropped;
- lighting output: frames, late / skipped frames, send errors, interval jitter p50/p99;
- machinery: per axis cycles, late and missed cycles, round trip p99, stops, the stop
  connection; the E-stop latch;
- audio streams: callbacks, xruns (the four flags summed), processor errors, callback load;
- alarms: instances per state and severity (every combination, 0 included), alarms raised
  since start per severity;
- HTTP: request latency per route template (a histogram filled by the API's middleware).

Names are ``flytower_*``; labels are the device / axis / queue / reason names.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from edge.service import Service

HEALTH_STATES = ("online", "degraded", "offline", "unknown")


def _pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


class ServiceCollector(Collector):
    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        yield from self._devices()
        yield from self._queues()
        yield from self._store()
        yield from self._ingest()
        yield from self._influx()
        yield from self._lighting()
        yield from self._machinery()
        yield from self._audio()
        yield from self._alarms()

    def _devices(self) -> Iterator[Metric]:
        svc = self.service
        health = GaugeMetricFamily(
            "flytower_device_health",
            "1 for the device's current health state",
            labels=["device", "state"],
        )
        for dev, h in sorted(svc.health.items()):
            for state in HEALTH_STATES:
                health.add_metric([dev, state], 1.0 if h.state.value == state else 0.0)
        yield health
        counters = {
            name: CounterMetricFamily(f"flytower_device_{name}", text, labels=["device"])
            for name, text in (
                ("requests", "requests made to the device"),
                ("errors", "failed requests"),
                ("reconnects", "reconnections"),
                ("cycles", "poll deadlines"),
                ("missed_cycles", "poll deadlines whose poll failed or came too late"),
            )
        }
        latency = GaugeMetricFamily(
            "flytower_device_latency_seconds",
            "request latency over the last 256 requests",
            labels=["device", "quantile"],
        )
        for dev, driver in sorted(svc.drivers.items()):
            st = driver.stats
            counters["requests"].add_metric([dev], st.requests)
            counters["errors"].add_metric([dev], st.errors)
            counters["reconnects"].add_metric([dev], st.reconnects)
            counters["cycles"].add_metric([dev], st.cycles)
            counters["missed_cycles"].add_metric([dev], st.missed)
            for q in (0.5, 0.99):
                latency.add_metric([dev, str(q)], _pct(st.latencies_s, q))
        yield from counters.values()
        yield latency

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "flytower_queue_depth", "items waiting in a readings-bus subscription", labels=["queue"]
        )
        delivered = CounterMetricFamily(
            "flytower_queue_delivered", "items delivered to a subscription", labels=["queue"]
        )
        dropped = CounterMetricFamily(
            "flytower_queue_dropped", "items a subscription dropped by its policy", labels=["queue"]
        )
        for sub in self.service.readings.subscriptions:
            depth.add_metric([sub.name], len(sub))
            delivered.add_metric([sub.name], sub.delivered)
            dropped.add_metric([sub.name], sub.dropped)
        yield from (depth, delivered, dropped)

    def _store(self) -> Iterator[Metric]:
        store = self.service.store
        yield CounterMetricFamily(
            "flytower_store_written", "readings written to the embedded store", value=store.written
        )
        for name, what in (("rejected", "refused"), ("flagged", "stored but flagged bad")):
            fam = CounterMetricFamily(
                f"flytower_store_{name}", f"readings the store {what}, by reason", labels=["reason"]
            )
            for reason, n in sorted(dict(getattr(store, name, {}) or {}).items()):
                fam.add_metric([str(reason)], n)
            yield fam
        svc = self.service
        yield GaugeMetricFamily(
            "flytower_store_failing",
            "1 while the store takes no writes (a full disk): readings are held in memory",
            value=int(svc.store_failing is not None),
        )
        yield GaugeMetricFamily(
            "flytower_store_held", "readings held in memory for the store", value=svc.store_held
        )
        yield CounterMetricFamily(
            "flytower_store_dropped",
            "held readings dropped: more than hold_max_readings, or lost at a stop",
            value=svc.store_dropped,
        )
        journal = svc.journal
        yield GaugeMetricFamily(
            "flytower_journal_failing",
            "1 while the journal's file takes no writes: events are held in memory",
            value=int(journal.failing is not None),
        )
        yield CounterMetricFamily(
            "flytower_journal_dropped", "held journal events dropped", value=journal.dropped
        )

    def _ingest(self) -> Iterator[Metric]:
        ingest = self.service.ingest
        if ingest is None:
            return
        fams: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            name: kind(f"flytower_ingest_worker_{name}", text, labels=["worker"])
            for name, kind, text in (
                ("running", GaugeMetricFamily, "1 while the worker process runs"),
                ("starts", CounterMetricFamily, "times the worker process started"),
                ("written", CounterMetricFamily, "readings its batches committed since it started"),
                ("queued", GaugeMetricFamily, "readings waiting in the worker for the store"),
                ("published", CounterMetricFamily, "newest readings it sent the service"),
            )
        }
        for w in ingest.workers:
            for name, fam in fams.items():
                fam.add_metric([str(w.index)], float(getattr(w, name)))
        yield from fams.values()

    def _influx(self) -> Iterator[Metric]:
        sink = self.service.influx
        if sink is None:
            return
        st: dict[str, Any] = sink.stats()
        for key, kind, text in (
            ("queue_readings", "gauge", "readings waiting in the disk queue"),
            ("queue_bytes", "gauge", "bytes waiting in the disk queue"),
            ("lag_s", "gauge", "age of the oldest queued reading, seconds"),
            ("delivered", "counter", "readings the server acknowledged"),
            ("write_failures", "counter", "failed writes (retried)"),
            ("quarantined", "counter", "lines the server refused, set aside"),
            ("dropped", "counter", "readings dropped by the queue bound"),
        ):
            value = st.get(key)
            if not isinstance(value, int | float):
                continue
            name = f"flytower_influx_{key}"
            if kind == "gauge":
                yield GaugeMetricFamily(name, text, value=float(value))
            else:
                yield CounterMetricFamily(name, text, value=float(value))

    def _lighting(self) -> Iterator[Metric]:
        engine = self.service.lighting
        if engine is None:
            return
        s = engine.stats.summary(engine.clock())
        for key, text in (
            ("frames", "frames rendered"),
            ("late_frames", "frames sent after their deadline"),
            ("skipped_frames", "deadlines skipped after an overrun"),
            ("send_errors", "frames a port failed to send"),
        ):
            yield CounterMetricFamily(f"flytower_lighting_{key}", text, value=s.get(key) or 0)
        jitter = GaugeMetricFamily(
            "flytower_lighting_jitter_seconds",
            "frame interval jitter (|interval - period|)",
            labels=["quantile"],
        )
        for q in ("p50", "p99"):
            ms = (s.get("jitter_ms") or {}).get(q)
            jitter.add_metric([q.removeprefix("p")], float("nan") if ms is None else ms / 1000)
        yield jitter

    def _machinery(self) -> Iterator[Metric]:
        sup = self.service.supervisor
        if sup is None:
            return
        yield GaugeMetricFamily(
            "flytower_estop_latched", "1 while the software E-stop is latched",
            value=1.0 if sup.estop_latched else 0.0,
        )  # fmt: skip
        cycles = {
            key: CounterMetricFamily(f"flytower_axis_{key}", text, labels=["axis"])
            for key, text in (
                ("cycles", "axis cycles (50 Hz status/setpoint transactions)"),
                ("late_cycles", "cycles not done before the next deadline"),
                ("missed_cycles", "deadlines without a good status"),
                ("stops", "stop writes"),
            )
        }
        rtt = GaugeMetricFamily(
            "flytower_axis_rtt_seconds", "cycle round trip p99", labels=["axis"]
        )
        stop_link = GaugeMetricFamily(
            "flytower_axis_stop_connection",
            "1 while the axis's stop connection is open (a stop goes out without waiting)",
            labels=["axis"],
        )
        io = sup.io
        for axis, cycle in sorted(getattr(io, "cycles", {}).items()):
            stop_link.add_metric([axis], 1.0 if cycle.stop_link_up else 0.0)
            st = cycle.stats
            cycles["cycles"].add_metric([axis], st.cycles)
            cycles["late_cycles"].add_metric([axis], st.late)
            cycles["missed_cycles"].add_metric([axis], st.missed)
            cycles["stops"].add_metric([axis], st.stops)
            p99 = st.rtt_ms(0.99)
            rtt.add_metric([axis], float("nan") if p99 is None else p99 / 1000)
        yield from cycles.values()
        yield rtt
        yield stop_link

    def _audio(self) -> Iterator[Metric]:
        from edge.audio import AudioDevice

        fams = {
            key: CounterMetricFamily(f"flytower_audio_{key}", text, labels=["device"])
            for key, text in (
                ("callbacks", "audio callbacks"),
                ("xruns", "under- and overflows, input and output"),
                ("processor_errors", "blocks the processor failed"),
            )
        }
        load = GaugeMetricFamily(
            "flytower_audio_cpu_load", "PortAudio's callback load (0..1)", labels=["device"]
        )
        for dev, driver in sorted(self.service.drivers.items()):
            if not isinstance(driver, AudioDevice):
                continue
            s = driver.driver.snapshot()
            xruns = (
                s.input_underflows + s.input_overflows + s.output_underflows + s.output_overflows
            )
            fams["callbacks"].add_metric([dev], s.callbacks)
            fams["xruns"].add_metric([dev], xruns)
            fams["processor_errors"].add_metric([dev], s.processor_errors)
            load.add_metric([dev], s.cpu_load)
        yield from fams.values()
        yield load

    def _alarms(self) -> Iterator[Metric]:
        from edge.alarms import SEVERITIES, State

        engine = self.service.alarms
        if engine is None:
            return
        # Every state x severity, 0 included: an alert rule on a series that is absent while
        # nothing is wrong would never see it appear, and a dashboard would show "no data".
        counts = {(st.value, sev): 0 for st in State for sev in SEVERITIES}
        for a in engine.alarms.values():
            key = (a.state.value, a.severity)
            counts[key] = counts.get(key, 0) + 1
        gauge = GaugeMetricFamily(
            "flytower_alarms",
            "alarm instances in each state and severity",
            labels=["state", "severity"],
        )
        for (state, sev), n in sorted(counts.items()):
            gauge.add_metric([state, sev], n)
        yield gauge
        raised = CounterMetricFamily(
            "flytower_alarms_raised",
            "alarms raised since the service started, by severity",
            labels=["severity"],
        )
        for sev, n in sorted((dict.fromkeys(SEVERITIES, 0) | engine.raised).items()):
            raised.add_metric([sev], n)
        yield raised


def registry_for(service: Service) -> tuple[CollectorRegistry, Histogram]:
    """A registry of its own (not the process-wide default: tests run several services)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service))
    http = Histogram(
        "flytower_http_request_seconds",
        "API request latency by route template",
        ["method", "route"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    )
    return registry, http


class TimingMiddleware:
    """ASGI middleware: each HTTP request's duration into ``histogram`` by route template
    (``/api/v1/devices/{device_id}``; requests that match no route count as ``other``, so a
    scanner cannot grow the label set)."""

    def __init__(self, app: Any, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "other"
            method = scope.get("method", "GET") if path != "other" else "any"
            self.histogram.labels(method, path).observe(time.perf_counter() - t0)
