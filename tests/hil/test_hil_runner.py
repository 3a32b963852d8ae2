"""`flytower hil` end to end: real simulators (a child process), the real service, real
sockets; the command is run as a user runs it, and its files and exit status are checked."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

from edge.hil import add_arguments, main
from simulators.control import LocalControl, bind, serve_http

pytestmark = pytest.mark.hil

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "hil"

PASSING = f"""
[scenario]
name = "short-move"
venue = "{EXAMPLES / "venue-machinery.toml"}"
duration_s = 3.5

[record]
points = {{ hoist-1 = ["position", "velocity"] }}
truth = {{ hoist-1 = ["position_mm"] }}

[[steps]]
at = 0.2
id = "move"
command = {{ device = "hoist-1", name = "move_to", args = {{ position = 2300, speed = 1500 }} }}

[[steps]]
command = {{ device = "hoist-1", name = "move_to", args = {{ position = 99999 }} }}
expect_status = 422

[[steps]]
id = "arrived"
wait = {{ device = "hoist-1", point = "in_position", op = "==", value = true, timeout_s = 3 }}

[[expect]]
name = "hoist-1 arrives"
device = "hoist-1"
truth = "position_mm"
op = "between"
value = [2299, 2301]
after = "move"
within_s = 3

[[expect]]
device = "hoist-2"
point = "position"
op = "=="
value = 6500
tol = 0.5
at = 0
for_s = 2

[[expect]]
device = "lx-bar-1"
health = true
op = "=="
value = "online"
after = "arrived"
"""


def hil(scenario: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", "hil", str(scenario), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def suite_of(out: Path) -> ET.Element:
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    return suite


def no_children_left(out: Path) -> None:
    """The simulators' child is gone once the command has returned."""
    log = (out / "simulators.log").read_text()
    assert "simulators ready" in log
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out / "venue.json") not in ps


def test_a_passing_scenario_exits_0_with_its_reports(tmp_path: Path) -> None:
    scenario = tmp_path / "short.toml"
    scenario.write_text(PASSING)
    out = tmp_path / "out"
    proc = hil(scenario, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "short-move: passed — 3/3 expectation(s) passed, 3/3 step(s) ok" in proc.stdout
    suite = suite_of(out)
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("6", "0", "0")
    names = [c.get("name") for c in suite.iter("testcase")]
    assert "hoist-1 arrives" in names
    assert "point hoist-2.position == 6500 ±0.5" in names
    page = (out / "report.html").read_text()
    assert "PASSED" in page and "data:image/png;base64," in page
    header = (out / "samples.csv").read_text().splitlines()[0]
    assert header.startswith("t_s,point:hoist-1.position,point:hoist-1.velocity,")
    assert "truth:hoist-1.position_mm" in header
    assert (out / "telemetry.sqlite3").exists()  # the store went into the output folder
    no_children_left(out)


def test_a_failing_scenario_exits_1_with_observed_values(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = hil(EXAMPLES / "deliberately-failing.toml", out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "deliberately-failing: FAILED — 1/3 expectation(s) passed" in proc.stdout
    suite = suite_of(out)
    assert (suite.get("tests"), suite.get("failures")) == ("4", "2")
    failures = {
        c.get("name"): c.find("failure")
        for c in suite.iter("testcase")
        if c.find("failure") is not None
    }
    impossible = failures["hoist-1 reaches 5000 mm in 0.3 s (impossible)"]
    assert impossible is not None
    message = impossible.get("message", "")
    assert "expected point hoist-1.position >= 5000 within 0.3 s after step 'move'" in message
    assert "never held; observed 2000 at " in message  # values with their times
    assert "FAILED (2)" in (out / "report.html").read_text()
    no_children_left(out)


def run_in_process(scenario: Path, out: Path) -> int:
    """``edge.hil.main`` in this process: quicker than a new interpreter for setup errors."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return main(parser.parse_args([str(scenario), "--out", str(out), "--quiet"]))


def test_an_unknown_fault_is_a_setup_error_before_anything_moves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "typo.toml"
    scenario.write_text(
        f"""
[scenario]
venue = "{EXAMPLES / "venue-machinery.toml"}"
duration_s = 1
[[steps]]
inject = {{ device = "hoist-1", fault = "comms_los" }}
"""
    )
    out = tmp_path / "out"
    assert run_in_process(scenario, out) == 2
    err = capsys.readouterr().err
    assert "steps[0].inject.fault: hoist-1 has no fault 'comms_los' (faults: " in err
    suite = suite_of(out)
    assert (suite.get("tests"), suite.get("errors")) == ("1", "1")
    assert not (out / "report.html").exists()


def test_an_invalid_scenario_exits_2_and_says_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text('[scenario]\nvenue = "nowhere.toml"\nduration_s = 1\nsample_hz = 99\n')
    assert run_in_process(scenario, tmp_path / "out") == 2
    assert "bad.toml: scenario.sample_hz: Input should be less than or equal to 50" in (
        capsys.readouterr().err
    )
    scenario.write_text('[scenario]\nvenue = "nowhere.toml"\nduration_s = 1\n')
    assert run_in_process(scenario, tmp_path / "out") == 2
    assert f"{tmp_path / 'nowhere.toml'}: cannot read" in capsys.readouterr().err


async def test_the_control_endpoint_answers_without_delayed_ack_stalls() -> None:
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    async with (
        serve_http(LocalControl({}, {}, {}), sock),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        await client.get("/sim/v1/health")
        took = []
        for _ in range(5):
            t = time.perf_counter()
            await client.get("/sim/v1/truth")
            took.append(time.perf_counter() - t)
            await asyncio.sleep(0)
    # Not a timing assert on our code: 40 ms is the kernel's delayed-ACK timer, a stall of
    # 20x what a loopback round trip takes even on a loaded machine.
    assert sorted(took)[2] < 0.030
