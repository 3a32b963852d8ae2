"""The outputs of a run, from a made-up result: JUnit XML, CSV, HTML with plots."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from edge.hil.judge import Judge
from edge.hil.report import junit_setup_error, write_all
from edge.hil.run import FaultEvent, RunResult, StepResult
from edge.hil.scenario import parse_scenario


def made_up_run(tmp_path: Path) -> RunResult:
    sc = parse_scenario(
        {
            "scenario": {"venue": "v.toml", "duration_s": 2, "name": "demo"},
            "record": {"points": {"h": ["position", "moving"]}, "health": ["h"]},
            "steps": [
                {"at": 0.5, "id": "go", "command": {"device": "h", "name": "move_to"}},
                {"inject": {"device": "h", "fault": "comms_loss"}},
            ],
            "expect": [
                {
                    "device": "h",
                    "point": "position",
                    "op": ">=",
                    "value": 5,
                    "after": "go",
                    "within_s": 0.5,
                    "name": "moves <fast> & far",
                },
                {"device": "h", "truth": "fault", "op": "==", "value": 1, "at": 1.0},
            ],
        },
        tmp_path / "s.toml",
    )
    series = sc.spec.series()
    r = RunResult("demo", sc, series, {("point", "h", "position"): "mm"})
    r.judges = [Judge(e) for e in sc.spec.expect]
    r.steps = [StepResult(0, sc.spec.steps[0], 0.5), StepResult(1, sc.spec.steps[1], None)]
    values: dict[tuple[str, str, str], list[Any]] = {
        ("point", "h", "position"): [0, 0, 0, 2, 4, 6, 8, None, 10, 10],
        ("point", "h", "moving"): [False, False, True, True, True, True, True, None, False, False],
        ("health", "h", ""): ["online"] * 7 + ["offline"] * 3,
        ("truth", "h", "fault"): [0] * 8 + [1, 1],
    }
    r.started_wall = 1.7e9
    for i in range(10):
        t = i * 0.2
        if i == 3:
            r.judges[0].start(0.5)
            r.steps[0].started, r.steps[0].finished, r.steps[0].ok = 0.5, 0.52, True
        if i == 7:
            r.steps[1].started, r.steps[1].finished, r.steps[1].ok = 1.4, 1.41, False
            r.steps[1].detail = '→ 422 {"detail": "no fault"}'
            r.faults.append(FaultEvent(1.4, "h", ["comms_loss"]))
        r.times.append(t)
        for s in series:
            r.values.setdefault(s, []).append(values[s][i])
        for j in r.judges:
            j.feed(t, values[j.expectation.source][i])
    r.elapsed = 2.0
    for j in r.judges:
        j.finish(2.0)
    return r


def test_junit_has_a_testcase_per_expectation_and_step(tmp_path: Path) -> None:
    result = made_up_run(tmp_path)
    written = write_all(result, tmp_path)
    assert [p.name for p in written] == ["junit.xml", "samples.csv", "report.html"]
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.get("name") == "demo"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "2", "0")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["moves <fast> & far"].find("failure") is None
    failure = cases["truth h.fault == 1"].find("failure")
    assert failure is not None
    message = failure.get("message", "")
    assert "expected truth h.fault == 1 at 1 s" in message
    assert "observed 0 at 1.000 s" in message  # the observed value and its time
    step = cases["step 2: inject comms_loss() on h"].find("failure")
    assert step is not None and "422" in step.get("message", "")
    classes = {c.get("classname") for c in suite.iter("testcase")}
    assert classes == {"hil.demo.expect", "hil.demo.steps"}


def test_csv_has_a_row_per_sample_and_a_column_per_series(tmp_path: Path) -> None:
    write_all(made_up_run(tmp_path), tmp_path)
    with (tmp_path / "samples.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == [
        "t_s",
        "point:h.position",
        "point:h.moving",
        "health:h",
        "truth:h.fault",
    ]
    assert len(rows) == 11
    assert rows[8] == ["1.4000", "", "", "offline", "0"]  # missing values are empty cells
    assert rows[4][1:3] == ["2", "true"]


def test_html_report_is_self_contained_with_plots_and_escaped(tmp_path: Path) -> None:
    write_all(made_up_run(tmp_path), tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "FAILED (2)" in page
    assert page.count("data:image/png;base64,") == 2  # numbers by unit; states and faults
    assert "moves &lt;fast&gt; &amp; far" in page
    assert "<fast>" not in page
    assert "href='samples.csv'" in page


def test_setup_error_is_one_erroring_testcase() -> None:
    root = junit_setup_error("demo", ["venue.toml: devices: bad", "second"]).getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("errors") == "1" and suite.get("tests") == "1"
    error = suite.find("testcase/error")
    assert error is not None
    assert error.get("message") == "venue.toml: devices: bad"
    assert error.text == "venue.toml: devices: bad\nsecond"
