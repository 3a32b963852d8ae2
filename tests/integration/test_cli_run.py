"""``flytower run`` when its API port is taken: one clear line, exit status 1, and nothing
started (no store, no broker, no device connected) before the port is known to be ours."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def test_a_taken_api_port_fails_the_start_before_anything_opens(tmp_path: Path) -> None:
    broker = free_port()
    venue = tmp_path / "venue.toml"
    venue.write_text(
        'version = 1\n[venue]\nid = "taken"\n[[nodes]]\nid = "n1"\nrole = "both"\n'
        '[api]\nhost = "127.0.0.1"\nport = 0\n[auth]\nenabled = false\n'
        f'[mqtt]\nmode = "embedded"\nhost = "127.0.0.1"\nport = {broker}\n'
        '[telemetry]\nstore = "telemetry.sqlite3"\n'
    )
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        args = ["run", str(venue), "--no-simulators", "--port", str(port)]
        done = subprocess.run(
            [sys.executable, "-m", "edge.cli", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        f"error: the API cannot listen on 127.0.0.1:{port}: Address already in use; "
        "choose another port with [api] port or --port"
    )
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "telemetry.sqlite3").exists()
    with socket.socket() as s:  # the embedded broker never started
        assert s.connect_ex(("127.0.0.1", broker)) != 0
