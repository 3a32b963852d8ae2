"""The demo venue (``examples/venue-demo.toml``, what ``make run`` starts) in a test's folder,
on free ports, run as ``flytower run`` with its simulators: every subsystem on real sockets.

Its fixed ports (the API's 8080, the embedded broker's 18830, OSC, DMX, the simulators' control
and Modbus ports) are each replaced by a free one, so a developer's ``make run`` and the test
never meet. Its show and sounds are copied beside it; its state (``var/``) is the folder's own.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import REPO, _stop, free_port

EXAMPLES = REPO / "examples"
FIXED = (8080, 18830, 53000, 53100, 15568, 16454, 18890, *range(15021, 15028))


@dataclass
class Demo:
    """A copy of the demo venue; ``start`` runs it (``flytower run``) and waits for its API."""

    folder: Path
    venue: Path
    ports: dict[int, int]
    proc: subprocess.Popen[bytes] | None = None
    sims: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports[8080]}"

    @property
    def log(self) -> Path:
        return self.folder / "flytower.log"

    @property
    def sim(self) -> str:
        """The simulators' control endpoint (ground truth, faults)."""
        return f"http://127.0.0.1:{self.ports[18890]}/sim/v1"

    def start_simulators(self) -> subprocess.Popen[bytes]:
        """The simulated venue as a process of its own (``start(simulators=False)`` then), so
        that it outlives a killed service, as real machinery does."""
        args = [str(self.venue), "--control-port", str(self.ports[18890])]
        with (self.folder / "simulators.log").open("ab") as out:
            self.sims = subprocess.Popen(
                [sys.executable, "-m", "simulators", *args],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.sim}/health", timeout=2).status_code == 200:
                    return self.sims
            time.sleep(0.2)
        _stop(self.sims)
        raise RuntimeError("the simulators did not answer within 60 s")

    def start(
        self,
        timeout_s: float = 60,
        verbose: bool = False,
        env: Mapping[str, str] | None = None,
        simulators: bool = True,
    ) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edge.cli",
                    *(["-v"] if verbose else []),
                    "run",
                    str(self.venue),
                    *([] if simulators else ["--no-simulators"]),
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flytower exited with {self.proc.returncode}: {self.tail()}")
            try:
                # Any answer will do: with access control on it is a 401.
                if httpx.get(f"{self.api}/api/v1/health", timeout=2).status_code in (200, 401):
                    return self.proc
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        _stop(self.proc)  # not left running (with its simulators) after a failed start
        raise RuntimeError(f"flytower did not answer within {timeout_s:g} s: {self.tail()}")

    def client(self, token: str) -> httpx.Client:
        """An API client of the running service, signed in with ``token``."""
        return httpx.Client(
            base_url=self.api, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def flytower(*args: str, stdin: str | None = None) -> str:
    """``flytower ARGS`` (the CLI); what it printed on stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "edge.cli", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def admin_token(venue: Path) -> str:
    """A new admin token's secret (``flytower token create`` prints it alone on stdout)."""
    return flytower("token", "create", str(venue), "tests", "--role", "admin")


def demo_venue(folder: Path) -> Demo:
    """The demo venue, show and sounds copied into ``folder``, every fixed port a free one."""
    folder.mkdir(parents=True, exist_ok=True)
    ports = {p: free_port() for p in FIXED}
    text = (EXAMPLES / "venue-demo.toml").read_text()
    fixed = r"\b(" + "|".join(map(str, FIXED)) + r")\b"
    text = re.sub(fixed, lambda m: str(ports[int(m[1])]), text)
    venue = folder / "venue-demo.toml"
    venue.write_text(text)
    shutil.copy(EXAMPLES / "show-demo.toml", folder / "show-demo.toml")
    if not (folder / "sounds").exists():
        (folder / "sounds").symlink_to(EXAMPLES / "sounds")
    return Demo(folder, venue, ports)
