"""``GET /metrics`` on the running service, scraped and parsed as Prometheus would.

Two simulated hoists behind a real Modbus TCP socket: the scrape must parse with the Prometheus
client's own parser and carry the devices' health and counters, the readings-bus queues, the
store's counts, the axis cycles and the E-stop latch, and the API's request latency by route
template (never by raw path: hostile paths must not grow the label set).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, run_service, simulators, wait_until, write_venue

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


async def test_the_scrape_parses_and_reports_the_service(tmp_path: Path) -> None:
    port = free_port()
    venue = write_venue(
        tmp_path,
        [
            {"id": "hoist-1", "port": port, "unit": 1, "start": 2000},
            {"id": "hoist-2", "port": port, "unit": 2, "start": 5000},
        ],
    )
    async with (
        simulators(venue),
        run_service(venue) as service,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.bound_api_port}") as api,
    ):

        async def cycling() -> bool:
            s = samples((await api.get("/metrics")).text)
            cycles = {lab["axis"]: v for lab, v in s.get("flytower_axis_cycles_total", [])}
            links = [v for _, v in s.get("flytower_axis_stop_connection", [])]
            return len(cycles) == 2 and min(cycles.values()) > 10 and links == [1.0, 1.0]

        await wait_until(cycling, 20, "both axes cycling in the scrape")
        for path in ("/api/v1/devices/hoist-1", "/api/v1/devices/nope", "/../../etc/passwd"):
            await api.get(path)
        r = await api.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        s = samples(r.text)
        health = {(lab["device"], lab["state"]): v for lab, v in s["flytower_device_health"]}
        assert health[("hoist-1", "online")] == 1 and health[("hoist-1", "offline")] == 0
        assert {lab["queue"] for lab, _ in s["flytower_queue_depth"]} >= {"store", "live"}
        assert s["flytower_store_written_total"][0][1] > 0
        assert s["flytower_estop_latched"][0][1] == 0
        routes = {lab["route"] for lab, _ in s["flytower_http_request_seconds_count"]}
        assert "/api/v1/devices/{device_id}" in routes and "/metrics" in routes
        assert not any("passwd" in r or r.startswith("/..") for r in routes)
        assert service.supervisor is not None


ALARM_RULE = """
[alarms]
store = "alarms.sqlite3"
tick_s = 0.05

[[alarms.rules]]
id = "too-high"
kind = "high"
point = "position"
limit = 1000.0
severity = "minor"
"""


async def test_alarm_counts_by_state_and_severity(tmp_path: Path) -> None:
    """A real rule on a real reading (the hoist stands at 2000 mm, the rule's limit is 1000):
    the scrape counts it per state and severity, every combination present, and acknowledging
    it moves it from active_unack to active_ack while the raised counter stays at one."""
    from edge.alarms import SEVERITIES, State

    venue = write_venue(tmp_path, [{"id": "hoist-1", "port": free_port(), "start": 2000}])
    venue.write_text(venue.read_text() + ALARM_RULE)
    async with (
        simulators(venue),
        run_service(venue) as service,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.bound_api_port}") as api,
    ):

        async def scrape() -> dict[tuple[str, str], float]:
            s = samples((await api.get("/metrics")).text)
            return {(lab["state"], lab["severity"]): v for lab, v in s["flytower_alarms"]}

        async def raised() -> bool:
            return (await scrape())[("active_unack", "minor")] == 1

        await wait_until(raised, 20, "the position alarm counted as active_unack, minor")
        counts = await scrape()
        assert set(counts) == {(st.value, sev) for st in State for sev in SEVERITIES}
        assert sum(v for (st, _), v in counts.items() if st != "inactive") == 1
        s = samples((await api.get("/metrics")).text)
        total = {lab["severity"]: v for lab, v in s["flytower_alarms_raised_total"]}
        assert total == {**dict.fromkeys(SEVERITIES, 0.0), "minor": 1.0}

        r = await api.post("/api/v1/alarms/too-high:hoist-1:position/ack", json={})
        assert r.status_code == 200, r.text
        counts = await scrape()
        assert counts[("active_unack", "minor")] == 0 and counts[("active_ack", "minor")] == 1
        s = samples((await api.get("/metrics")).text)
        total = {lab["severity"]: v for lab, v in s["flytower_alarms_raised_total"]}
        assert total["minor"] == 1
