"""Peers for the InfluxDB sink's tests: a real VictoriaMetrics, and a scripted InfluxDB.

``VictoriaMetrics`` runs Debian's ``victoria-metrics`` (REAL-PEERS.md) on a free loopback port
with its storage in a test folder, remembered by PID and stopped by PID (``stop`` is SIGTERM,
``kill`` is SIGKILL); ``start`` again reuses the folder and port, as a restarted server does.
It speaks InfluxDB's ``/api/v2/write``; ``export`` reads samples back through
``/api/v1/export`` (series are named ``{measurement}_{field}``, timestamps in ms, the bucket
is not kept) after ``/internal/force_flush``. ``dedup=True`` starts it with
``-dedup.minScrapeInterval=1ms``: one sample per series and millisecond, as InfluxDB keeps one
point per series key and timestamp. ``basic_auth`` makes it refuse unauthenticated writes (401).

VictoriaMetrics accepts what it cannot parse with a 204 (it logs and skips the line), so the
paths where a server refuses points need a server that does refuse them, as InfluxDB 2 does:
``ScriptedInflux`` is a small HTTP server on a real socket that answers ``/api/v2/write`` like
InfluxDB (204; 400 ``{"code":"invalid"}`` for a body holding a line with a marker; 413 above a
size; 503 with ``Retry-After`` while told to be down) and records every accepted body in
arrival order. Nothing of Flytower is imported.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port

EXE = "victoria-metrics"


def available() -> str | None:
    """Why VictoriaMetrics cannot be used here, or None."""
    if shutil.which(EXE) is None:
        return "victoria-metrics is not installed (apt; `make test` installs it)"
    return None


@dataclass
class Series:
    metric: dict[str, str]
    values: list[float]
    timestamps: list[int]

    @property
    def name(self) -> str:
        return self.metric["__name__"]


class VictoriaMetrics:
    def __init__(
        self,
        folder: Path,
        port: int | None = None,
        dedup: bool = False,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.dedup = dedup
        self.basic_auth = basic_auth
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / "victoria-metrics.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 20.0) -> VictoriaMetrics:
        args = [
            EXE,
            f"-storageDataPath={self.folder / 'data'}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=1d",
            "-search.latencyOffset=0s",
        ]
        if self.dedup:
            args.append("-dedup.minScrapeInterval=1ms")
        if self.basic_auth is not None:
            args += [f"-httpAuth.username={self.basic_auth[0]}"]
            args += [f"-httpAuth.password={self.basic_auth[1]}"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"victoria-metrics exited with {self.proc.returncode}: {self.log}"
                )
            try:
                with self._open("/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"victoria-metrics not healthy after {timeout_s} s: {self.log}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (VictoriaMetrics flushes and exits), SIGKILL after ``timeout_s``."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def _open(self, path: str, data: bytes | None = None, timeout: float = 10) -> object:
        req = urllib.request.Request(self.url + path, data=data)
        if self.basic_auth is not None:
            import base64

            cred = base64.b64encode(":".join(self.basic_auth).encode()).decode()
            req.add_header("Authorization", f"Basic {cred}")
        return urllib.request.urlopen(req, timeout=timeout)

    def force_flush(self) -> None:
        with self._open("/internal/force_flush") as r:  # type: ignore[attr-defined]
            r.read()

    def export(self, match: str) -> list[Series]:
        """Every raw sample of the series ``match`` selects (a PromQL series selector)."""
        self.force_flush()
        data = urllib.parse.urlencode({"match[]": match}).encode()
        with self._open("/api/v1/export", data=data, timeout=60) as r:  # type: ignore[attr-defined]
            text = r.read().decode()
        out = []
        for line in text.splitlines():
            if line.strip():
                row = json.loads(line)
                out.append(Series(row["metric"], row["values"], row["timestamps"]))
        return out

    def __enter__(self) -> VictoriaMetrics:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_export(
    vm: VictoriaMetrics, match: str, samples: int, timeout_s: float = 30.0
) -> list[Series]:
    """Poll ``export`` until it holds at least ``samples`` samples (new series appear ~1 s
    after writing); returns the last answer whatever it holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = vm.export(match)
        if sum(len(s.values) for s in got) >= samples or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


# --- a scripted InfluxDB --------------------------------------------------------------------


@dataclass
class ScriptedState:
    reject_marker: bytes = b"REJECT"  # a line holding it makes the request a 400
    max_body: int = 1 << 30  # above: 413
    down: bool = False  # 503 with Retry-After
    retry_after_s: int = 1
    token: str | None = None  # required "Authorization: Token ..." (else 401)
    accepted: list[bytes] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ScriptedInflux:
    """An HTTP server answering ``POST /api/v2/write`` as InfluxDB 2 does (see the module
    docstring). Use as a context manager; ``state`` is shared with the serving thread."""

    def __init__(self) -> None:
        self.state = ScriptedState()
        state = self.state

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: dict[str, str] | None = None) -> None:
                with state.lock:
                    state.answers.append(status)
                data = json.dumps(body).encode() if body else b""
                self.send_response(status)
                if status == 503:
                    self.send_header("Retry-After", str(state.retry_after_s))
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if urllib.parse.urlparse(self.path).path != "/api/v2/write":
                    self._answer(404, {"code": "not found", "message": "path not found"})
                elif state.token is not None and (
                    self.headers.get("Authorization") != f"Token {state.token}"
                ):
                    self._answer(401, {"code": "unauthorized", "message": "unauthorized access"})
                elif state.down:
                    self._answer(503, {"code": "unavailable", "message": "service unavailable"})
                elif len(body) > state.max_body:
                    self._answer(413, {"code": "request too large", "message": "too large"})
                elif state.reject_marker in body:
                    line = next(
                        i for i, ln in enumerate(body.split(b"\n")) if state.reject_marker in ln
                    )
                    msg = f"unable to parse line {line + 1}: invalid field format"
                    self._answer(400, {"code": "invalid", "message": msg})
                else:
                    with state.lock:
                        state.accepted.append(body)
                    self._answer(204)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def lines(self) -> list[bytes]:
        with self.state.lock:
            return [ln for body in self.state.accepted for ln in body.split(b"\n")]

    def __enter__(self) -> ScriptedInflux:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def series_values(series: list[Series]) -> Iterator[tuple[tuple[tuple[str, str], ...], int, float]]:
    """(sorted labels, timestamp, value) per sample."""
    for s in series:
        key = tuple(sorted(s.metric.items()))
        for ts, v in zip(s.timestamps, s.values, strict=True):
            yield key, ts, v
