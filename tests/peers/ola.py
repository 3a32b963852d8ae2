"""OLA's olad as an independent Art-Net / sACN peer for the DMX tests (REAL-PEERS.md recipe).

olad refuses to run as root, so it runs as the ``olad`` user through ``setpriv`` (``Popen.pid``
is then olad's own PID, which is what we stop). Its configuration directory is pre-seeded:
every plugin but Art-Net and E1.31 disabled, both on 127.0.0.1, and ports patched to universes
in ``ola-port.conf``, so it starts in ~100 ms without a first run. Art-Net (6454), sACN (5568)
and the RPC port (9010, which the OLA command-line tools use) are fixed ports: one olad per
machine at a time.

Read-back uses the OLA Python client under the system ``/usr/bin/python3`` (it needs
``protobuf<6``, which Debian's python3-protobuf is), in a subprocess.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

OLAD = "/usr/bin/olad"
SYSTEM_PYTHON = "/usr/bin/python3"
RPC_PORT = 9010
ARTNET_DEVICE = "2-1"  # OLA's Art-Net plugin (id 2), device 1
E131_DEVICE = "11-1"  # OLA's E1.31 plugin (id 11), device 1
# Every plugin olad 0.10 knows; all but Art-Net and E1.31 are switched off.
OTHER_PLUGINS = (
    *("dummy", "espnet", "ftdidmx", "gpio", "karate", "kinet", "milinst", "opendmx"),
    *("openpixelcontrol", "osc", "pathport", "renard", "sandnet", "shownet", "spi"),
    *("stageprofi", "uartdmx", "usbdmx", "usbserial"),
)

_FETCH = """
import sys
from ola.ClientWrapper import ClientWrapper
wrapper = ClientWrapper()
def done(status, universe, data):
    if status.Succeeded():
        sys.stdout.write(bytes(data).hex())
    else:
        sys.stderr.write(str(status.message))
    wrapper.Stop()
wrapper.Client().FetchDmx(int(sys.argv[1]), done)
wrapper.Run()
"""


def available() -> str | None:
    """Why olad cannot be used here, or None."""
    if not Path(OLAD).exists():
        return "olad is not installed (apt package 'ola'; `make test` installs it)"
    if not Path(SYSTEM_PYTHON).exists():
        return "/usr/bin/python3 (for the OLA Python client) is missing"
    try:
        import pwd

        pwd.getpwnam("olad")
    except KeyError:
        return "the 'olad' user does not exist (created by the ola package)"
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", RPC_PORT)) == 0:
            return f"something already listens on the OLA RPC port {RPC_PORT}"
    return None


def seed_config(folder: Path, patches: dict[str, int]) -> None:
    """Write olad's config: ``patches`` maps OLA port ids ('11-1-I-0') to universes."""
    folder.mkdir(parents=True, exist_ok=True)
    for plugin in OTHER_PLUGINS:
        (folder / f"ola-{plugin}.conf").write_text("enabled = false\n")
    (folder / "ola-artnet.conf").write_text(
        "enabled = true\nip = 127.0.0.1\nuse_loopback = true\nnet = 0\nsubnet = 0\n"
        "output_ports = 4\nshort_name = OLA test node\nlong_name = OLA - ArtNet node\n"
        "always_broadcast = false\nuse_limited_broadcast = false\n"
    )
    (folder / "ola-e131.conf").write_text(
        "enabled = true\nip = 127.0.0.1\ninput_ports = 5\noutput_ports = 5\n"
        "ignore_preview = true\ndraft_discovery = false\nprepend_hostname = false\n"
        "cid = 31f7b082-3eda-4e39-ab1a-dd2460d0650a\ndscp = 0\nrevision = 0.46\n"
    )
    (folder / "ola-server.conf").write_text("instance-name = Flytower test OLA\n")
    (folder / "ola-port.conf").write_text("".join(f"{k} = {v}\n" for k, v in patches.items()))


@dataclass
class Olad:
    folder: Path
    proc: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.folder / "olad.log"

    @classmethod
    def start(cls, patches: dict[str, int]) -> Olad:
        """Start olad in a fresh config folder; ``stop`` removes it again.

        The folder is made with ``tempfile.mkdtemp`` under /tmp rather than pytest's tmp_path,
        whose private (0700, root-owned) parents the olad user could not enter.
        """
        folder = Path(tempfile.mkdtemp(prefix="flytower-olad-"))
        seed_config(folder, patches)
        shutil.chown(folder, "olad")
        for f in folder.iterdir():
            shutil.chown(f, "olad")
        with open(folder / "olad.log", "wb") as out:
            proc = subprocess.Popen(
                [
                    "setpriv",
                    "--reuid=olad",
                    "--regid=nogroup",
                    "--clear-groups",
                    OLAD,
                    "-c",
                    str(folder),
                    "-l",
                    "3",
                    "--no-http",
                    "--no-register-with-dns-sd",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        olad = cls(folder, proc)
        try:
            olad._wait_ready()
        except BaseException:
            olad.stop()
            raise
        return olad

    def _wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"olad exited with {self.proc.returncode}: see {self.log}")
            with socket.socket() as s:
                up = s.connect_ex(("127.0.0.1", RPC_PORT)) == 0
            if up:
                info = subprocess.run(
                    ["ola_dev_info"], capture_output=True, text=True, timeout=5, check=False
                ).stdout
                if "ArtNet" in info and "E1.31" in info:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"olad not ready after {timeout_s}s: see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def running(patches: dict[str, int]) -> Iterator[Olad]:
    """An olad for a test module; skips the module (with the reason) if olad cannot run."""
    reason = available()
    if reason is not None:
        pytest.skip(reason)
    server = Olad.start(patches)
    try:
        yield server
    finally:
        server.stop()


def e131_interface() -> str:
    """The IPv4 address olad's E1.31 device uses. Its plugin has no loopback option, so it
    picks the first non-loopback interface and sends multicast from there."""
    info = subprocess.run(
        ["ola_dev_info"], capture_output=True, text=True, timeout=5, check=True
    ).stdout
    match = re.search(r"E1\.31 \(DMX over ACN\) \[([0-9.]+)\]", info)
    if match is None:
        raise RuntimeError(f"no E1.31 device in ola_dev_info:\n{info}")
    return match.group(1)


def fetch_dmx(universe: int) -> bytes:
    """The current 512 slots of an OLA universe, read with the OLA Python client."""
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", _FETCH, str(universe)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if result.returncode != 0 or result.stderr:
        raise RuntimeError(f"FetchDmx({universe}) failed: {result.stderr.strip()}")
    return bytes.fromhex(result.stdout)


def set_dmx(universe: int, values: list[int]) -> None:
    """Make olad send ``values`` on ``universe`` (through whatever output port is patched)."""
    subprocess.run(
        ["ola_set_dmx", "-u", str(universe), "-d", ",".join(map(str, values))],
        check=True,
        capture_output=True,
        timeout=10,
    )
