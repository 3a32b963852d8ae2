"""No secret reaches a log: the demo venue run with debug logging (``flytower run -v``), every
kind of secret in use and some of them refused, and then the log and the journal (where
sign-ins and tokens are audited) searched for each one.

The secrets: a console user's password (a good sign-in and bad ones), the session cookie, an
API token (used, refused once revoked) and one created over the API, the MQTT password
(``password_env``, against Mosquitto), the InfluxDB token (``token_env``; the server first
refuses it, then takes it) and an alarm webhook's token (``token_env``; the hook answers 500
so the delivery is retried and logged). Whatever they appear in, the tests look for the secret
itself, and for its base64 form (a Basic header would carry it so).
"""

from __future__ import annotations

import base64
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RealServer, stop_all
from tests.peers.demo import demo_venue, flytower
from tests.peers.victoria import ScriptedInflux

pytestmark = pytest.mark.integration

MQTT_PASSWORD = "mqtt-Pa55-wörd-7f3c"
INFLUX_TOKEN = "influx-T0ken-91b2e"
HOOK_TOKEN = "hook-T0ken-55d0a"
PASSWORD = "console-Pa55word-a1"


class FailingHook(BaseHTTPRequestHandler):
    """An alarm webhook that answers 500: every delivery is retried, and logged."""

    seen: list[str] = []  # noqa: RUF012 (one test, one server)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.seen.append(self.headers.get("authorization", ""))
        self.send_response(500)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_no_secret_appears_in_the_log_or_the_journal(tmp_path: Path, mosquitto: RealServer) -> None:
    hook = ThreadingHTTPServer(("127.0.0.1", 0), FailingHook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    with ScriptedInflux() as influx:
        influx.state.token = "another"  # refused (401) until the test changes its mind
        demo = demo_venue(tmp_path / "demo")
        text = demo.venue.read_text()
        embedded = f'[mqtt]\nmode = "embedded"\nhost = "127.0.0.1"\nport = {demo.ports[18830]}\n'
        assert embedded in text, "the demo venue's [mqtt] table changed: update this test"
        text = text.replace(
            embedded,
            f'[mqtt]\nmode = "external"\nhost = "127.0.0.1"\nport = {mosquitto.port}\n'
            'username = "flytower"\npassword_env = "FT_MQTT_PASSWORD"\n',
        )
        text += (
            f'\n[telemetry.influxdb]\nurl = "{influx.url}"\norg = "o"\nbucket = "b"\n'
            'token_env = "FT_INFLUX_TOKEN"\nbackoff_min_s = 0.1\n'
            "\n[[alarms.webhooks]]\n"
            f'url = "http://127.0.0.1:{hook.server_address[1]}/alarms"\n'
            'token_env = "FT_HOOK_TOKEN"\nbackoff_min_s = 0.1\nmax_attempts = 3\n'
        )
        demo.venue.write_text(text)
        flytower(
            "user",
            "add",
            str(demo.venue),
            "ada",
            "--role",
            "operator",
            "--password-stdin",
            stdin=PASSWORD + "\n",
        )
        token = flytower("token", "create", str(demo.venue), "script", "--role", "admin")
        env = {
            "FT_MQTT_PASSWORD": MQTT_PASSWORD,
            "FT_INFLUX_TOKEN": INFLUX_TOKEN,
            "FT_HOOK_TOKEN": HOOK_TOKEN,
        }
        demo.start(verbose=True, env={**os.environ, **env})
        secrets = [MQTT_PASSWORD, INFLUX_TOKEN, HOOK_TOKEN, PASSWORD, token]
        try:
            with httpx.Client(base_url=demo.api, timeout=10) as c:
                for wrong in ("wrong-" + PASSWORD, PASSWORD.upper()):
                    r = c.post("/api/v1/auth/login", json={"name": "ada", "password": wrong})
                    assert r.status_code == 401
                r = c.post("/api/v1/auth/login", json={"name": "ada", "password": PASSWORD})
                assert r.status_code == 200, r.text
                secrets += [r.json()["session"], *c.cookies.values()]
                assert c.get("/api/v1/auth/me").status_code == 200
                c.cookies.clear()
                admin = {"Authorization": f"Bearer {token}"}
                r = c.post(
                    "/api/v1/auth/tokens", json={"label": "x", "role": "viewer"}, headers=admin
                )
                assert r.status_code in (200, 201), r.text
                made = r.json()
                secrets.append(made["token"])
                viewer = {"Authorization": f"Bearer {made['token']}"}
                assert c.get("/api/v1/health", headers=viewer).status_code == 200
                assert c.delete(f"/api/v1/auth/tokens/{made['id']}", headers=admin).is_success
                assert c.get("/api/v1/health", headers=viewer).status_code == 401
                influx.state.token = INFLUX_TOKEN
                # An alarm for the webhook: a drive trip on the simulated hoist.
                sim = f"http://127.0.0.1:{demo.ports[18890]}/sim/v1"
                assert httpx.post(f"{sim}/devices/hoist-1/faults/drive_trip", json={}).is_success
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and (
                    len(FailingHook.seen) < 2 or not influx.state.accepted
                ):
                    time.sleep(0.2)
                assert len(FailingHook.seen) >= 2, "the webhook was not retried"
                assert FailingHook.seen[0] == f"Bearer {HOOK_TOKEN}"
                assert influx.state.accepted, "InfluxDB got nothing"
                journal = c.get("/api/v1/journal", params={"limit": 10000}, headers=admin).text
        finally:
            assert demo.proc is not None
            stop_all([demo.proc])
        hook.shutdown()
    log = demo.log.read_text(errors="replace")
    assert "DEBUG" in log, "not a debug log"
    for secret in secrets:
        for form in (secret, base64.b64encode(secret.encode()).decode()):
            for name, where in (("log", log), ("journal", journal)):
                assert form not in where, f"a secret ({secret[:4]}…) is in the {name}"
