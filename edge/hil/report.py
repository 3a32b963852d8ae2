"""What a run leaves behind: JUnit XML for CI, raw samples as CSV, a report people read.

- ``junit.xml``: one ``testsuite`` per scenario, one ``testcase`` per expectation (classname
  ``hil.<scenario>.expect``) and per step (``hil.<scenario>.steps``: a refused command or an
  unknown fault is a finding too); a failure's message carries the observed values and times.
  A setup error is one ``testcase`` with an ``error``, so CI shows why nothing was judged.
- ``samples.csv``: one row per sample, ``t_s`` then one column per series
  (``point:hoist-1.position``, ``truth:hoist-1.position_mm``, ``health:hoist-1``); an empty
  cell is a missing value.
- ``report.html``: one self-contained page (plots embedded as PNG): the verdict, the timeline
  of steps, every expectation with its verdict, and plots of every recorded series over time
  with the steps marked and each expectation's window shaded where its series is drawn;
  numbers are grouped by unit (positions with positions), states (booleans, health, enums)
  and injected faults are drawn as bands.

Plots use matplotlib's object API with the Agg canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from edge.hil.judge import Judge, Verdict
from edge.hil.run import RunResult, Series, StepResult
from edge.hil.scenario import _fmt

AXES_PER_FIGURE = 4
STATE_COLOURS = {
    "online": "#2e7d32",
    "degraded": "#f9a825",
    "offline": "#c62828",
    "unknown": "#9e9e9e",
}
PALETTE = ["#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#558b2f", "#4e342e"]


def label(series: Series) -> str:
    kind, device, name = series
    return f"{kind}:{device}" + (f".{name}" if name else "")


# --- JUnit ------------------------------------------------------------------------------------


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(wall))


def _suite(name: str, wall: float, elapsed: float) -> tuple[ET.Element, ET.Element]:
    root = ET.Element("testsuites", name="flytower hil")
    suite = ET.SubElement(
        root,
        "testsuite",
        name=name,
        timestamp=_iso(wall),
        hostname=socket.gethostname(),
        time=f"{elapsed:.3f}",
    )
    return root, suite


def _totals(root: ET.Element, suite: ET.Element, elapsed: float) -> None:
    cases = suite.findall("testcase")
    counts = {
        "tests": len(cases),
        "failures": sum(c.find("failure") is not None for c in cases),
        "errors": sum(c.find("error") is not None for c in cases),
        "skipped": 0,
    }
    for element in (root, suite):
        for key, n in counts.items():
            element.set(key, str(n))
    root.set("time", f"{elapsed:.3f}")


def junit(result: RunResult) -> ET.ElementTree[ET.Element]:
    """The run as JUnit XML (the shape Jenkins, GitLab and GitHub reporters read)."""
    spec = result.scenario.spec.scenario
    root, suite = _suite(result.name, result.started_wall, result.elapsed)
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("scenario", str(result.scenario.path)),
        ("venue", str(result.scenario.venue_path)),
        ("duration_s", f"{spec.duration_s:g}"),
        ("sample_hz", f"{spec.sample_hz:g}"),
        ("samples", str(len(result.times))),
        ("samples_missed", str(result.sample_misses)),
    ):
        ET.SubElement(props, "property", name=key, value=value)
    for judge in result.judges:
        _expect_case(suite, result.name, judge)
    for step in result.steps:
        _step_case(suite, result.name, step)
    for error in result.errors:
        case = ET.SubElement(suite, "testcase", classname=f"hil.{result.name}", name="service")
        ET.SubElement(case, "failure", message=error, type="ServiceStopped").text = error
    for error in result.rig_errors:
        case = ET.SubElement(suite, "testcase", classname=f"hil.{result.name}", name="rig")
        ET.SubElement(case, "error", message=error, type="RigError").text = error
    ET.SubElement(suite, "system-out").text = "\n".join(
        f"{s.title}: {'ok' if s.ok else 'failed'} {s.detail}" for s in result.steps
    )
    _totals(root, suite, result.elapsed)
    ET.indent(root)
    return ET.ElementTree(root)


def _expect_case(suite: ET.Element, name: str, judge: Judge) -> None:
    exp = judge.expectation
    took = 0.0
    if judge.decided_at is not None and judge.anchor is not None:
        took = max(0.0, judge.decided_at - judge.anchor)
    case = ET.SubElement(
        suite,
        "testcase",
        classname=f"hil.{name}.expect",
        name=exp.title(),
        time=f"{took:.3f}",
    )
    if judge.verdict is not Verdict.PASSED:
        text = judge.report()
        ET.SubElement(case, "failure", message=text, type="ExpectationFailed").text = text
    else:
        ET.SubElement(case, "system-out").text = judge.report()


def _step_case(suite: ET.Element, name: str, step: StepResult) -> None:
    took = 0.0
    if step.started is not None and step.finished is not None:
        took = step.finished - step.started
    case = ET.SubElement(
        suite, "testcase", classname=f"hil.{name}.steps", name=step.title, time=f"{took:.3f}"
    )
    if step.ok is not True:
        when = f" at {step.started:.3f} s" if step.started is not None else ""
        text = f"{step.title}{when}: {step.detail or 'did not run'}"
        ET.SubElement(case, "failure", message=text, type="StepFailed").text = text


def junit_setup_error(name: str, problems: Sequence[str]) -> ET.ElementTree[ET.Element]:
    """A run that could not start, for CI: one testcase 'setup' with the problems."""
    root, suite = _suite(name, time.time(), 0.0)
    case = ET.SubElement(suite, "testcase", classname=f"hil.{name}", name="setup")
    text = "\n".join(problems)
    ET.SubElement(
        case, "error", message=problems[0] if problems else "", type="SetupError"
    ).text = text
    _totals(root, suite, 0.0)
    ET.indent(root)
    return ET.ElementTree(root)


# --- CSV --------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return json.dumps(value)


def write_csv(result: RunResult, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["t_s", *(label(s) for s in result.series)])
        for i, t in enumerate(result.times):
            w.writerow([f"{t:.4f}", *(_cell(result.values[s][i]) for s in result.series)])


# --- plots ------------------------------------------------------------------------------------


def _numeric(values: Sequence[Any]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in present
    )


def _runs(
    times: Sequence[float], values: Sequence[Any], end: float
) -> list[tuple[float, float, Any]]:
    """(start, length, value) for each run of one value (None included)."""
    out: list[tuple[float, float, Any]] = []
    for i, (t, v) in enumerate(zip(times, values, strict=True)):
        t_next = times[i + 1] if i + 1 < len(times) else max(end, t)
        if out and out[-1][2] == v and type(out[-1][2]) is type(v):
            start, _, _ = out[-1]
            out[-1] = (start, t_next - start, v)
        else:
            out.append((t, t_next - t, v))
    return out


def _groups(result: RunResult) -> tuple[dict[str, list[Series]], list[Series]]:
    """Numeric series grouped by unit (points) or by truth key; the rest are states."""
    numeric: dict[str, list[Series]] = {}
    states: list[Series] = []
    for s in result.series:
        values = result.values.get(s, [])
        if s[0] != "health" and _numeric(values):
            key = f"{result.units.get(s) or '(no unit)'}" if s[0] == "point" else f"truth {s[2]}"
            numeric.setdefault(key, []).append(s)
        else:
            states.append(s)
    return numeric, states


def _marks(ax: Axes, result: RunResult, labels: bool) -> None:
    for step in result.steps:
        if step.started is None:
            continue
        ax.axvline(step.started, color="#555555", linestyle="--", linewidth=0.8)
        if labels:
            ax.annotate(
                str(step.index + 1),
                (step.started, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, 2),
                textcoords="offset points",
                fontsize=8,
                color="#333333",
            )


def _windows(ax: Axes, result: RunResult, shown: set[Series]) -> None:
    for judge in result.judges:
        exp = judge.expectation
        if exp.source not in shown or judge.anchor is None:
            continue
        end = judge.anchor + (exp.within_s or 0.0) + exp.for_s
        end = max(end, judge.anchor + 0.05)  # an instant still gets a visible band
        colour = "#2e7d32" if judge.verdict is Verdict.PASSED else "#c62828"
        ax.axvspan(judge.anchor, end, color=colour, alpha=0.12, linewidth=0)
        targets = exp.value if isinstance(exp.value, list) else [exp.value]
        for v in targets:
            if isinstance(v, int | float) and not isinstance(v, bool) and exp.op != "!=":
                ax.axhline(float(v), color=colour, linestyle=":", linewidth=1)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(result: RunResult) -> list[tuple[str, str]]:
    """(title, base64 PNG) of every plot of the run."""
    numeric, states = _groups(result)
    out: list[tuple[str, str]] = []
    keys = list(numeric)
    end = result.elapsed or (result.times[-1] if result.times else 1.0)
    for first in range(0, len(keys), AXES_PER_FIGURE):
        chunk = keys[first : first + AXES_PER_FIGURE]
        fig = Figure(figsize=(11, 2.3 * len(chunk) + 0.6))
        axes = fig.subplots(len(chunk), 1, sharex=True, squeeze=False)[:, 0]
        for i, (ax, key) in enumerate(zip(axes, chunk, strict=True)):
            for j, s in enumerate(numeric[key]):
                ys = [float(v) if v is not None else float("nan") for v in result.values[s]]
                ax.plot(result.times, ys, label=label(s), color=PALETTE[j % len(PALETTE)])
            _windows(ax, result, set(numeric[key]))
            _marks(ax, result, labels=i == 0)
            ax.set_ylabel(key)
            ax.grid(True, alpha=0.3)
            ax.legend(loc="upper left", fontsize=8, framealpha=0.8)
            ax.set_xlim(0, end)
        axes[-1].set_xlabel("time from start (s); dashed lines: steps")
        out.append((", ".join(chunk), _png(fig)))
    rows = _state_rows(result, states, end)
    if rows:
        fig = Figure(figsize=(11, 0.45 * len(rows) + 1.2))
        ax = fig.subplots()
        for y, (_, bars) in enumerate(rows):
            for start, length, text, colour in bars:
                ax.broken_barh([(start, length)], (y - 0.35, 0.7), color=colour)
                if text and length > end / 40:
                    ax.text(start + length / 2, y, text, ha="center", va="center", fontsize=7)
        ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.invert_yaxis()
        ax.set_xlim(0, end)
        _marks(ax, result, labels=True)
        ax.set_xlabel("time from start (s); dashed lines: steps")
        out.append(("states, health and faults", _png(fig)))
    return out


def _state_rows(
    result: RunResult, states: list[Series], end: float
) -> list[tuple[str, list[tuple[float, float, str, str]]]]:
    rows = []
    for s in states:
        colours: dict[str, str] = {}
        bars = []
        for start, length, v in _runs(result.times, result.values.get(s, []), end):
            if v is None:
                continue
            text = _fmt(v)
            if s[0] == "health":
                colour = STATE_COLOURS.get(str(v), "#9e9e9e")
            elif isinstance(v, bool):
                colour = "#c62828" if v else "#e0e0e0"
                text = "true" if v else ""
            else:
                colour = colours.setdefault(text, PALETTE[len(colours) % len(PALETTE)])
            bars.append((start, length, text, colour))
        rows.append((label(s), bars))
    devices = sorted({f.device for f in result.faults})
    for device in devices:
        events = [f for f in result.faults if f.device == device]
        bars = []
        for i, ev in enumerate(events):
            stop = events[i + 1].t if i + 1 < len(events) else end
            if ev.active:
                bars.append((ev.t, stop - ev.t, ", ".join(ev.active), "#ef6c00"))
        rows.append((f"faults:{device}", bars))
    return rows


# --- HTML -------------------------------------------------------------------------------------

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } .muted { color: #666; }
.verdict { display: inline-block; padding: 0.2em 0.7em; border-radius: 4px; color: #fff; }
.pass { background: #2e7d32; } .fail { background: #c62828; } .error { background: #6d4c41; }
table { border-collapse: collapse; width: 100%; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.5em; text-align: left;
  vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.ok { color: #2e7d32; font-weight: 600; } td.bad { color: #c62828; font-weight: 600; }
code, .msg { font-family: ui-monospace, monospace; font-size: 12px; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
"""


def _t(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def write_html(result: RunResult, path: Path, files: Sequence[str]) -> None:
    spec = result.scenario.spec.scenario
    e = html.escape
    failed = result.failed
    if result.rig_errors:
        badge = '<span class="verdict error">RIG ERROR</span>'
    elif failed:
        badge = f'<span class="verdict fail">FAILED ({failed})</span>'
    else:
        badge = '<span class="verdict pass">PASSED</span>'
    passed = sum(j.verdict is Verdict.PASSED for j in result.judges)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>HIL {e(result.name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{e(result.name)} {badge}</h1>",
        f"<p class='muted'>{e(spec.description)}</p>" if spec.description else "",
        "<table>",
        f"<tr><th>scenario</th><td><code>{e(str(result.scenario.path))}</code></td></tr>",
        f"<tr><th>venue</th><td><code>{e(str(result.scenario.venue_path))}</code></td></tr>",
        f"<tr><th>started</th><td>{e(_iso(result.started_wall))}</td></tr>",
        f"<tr><th>duration</th><td>{result.elapsed:.2f} s of {spec.duration_s:g} s</td></tr>",
        f"<tr><th>expectations</th><td>{passed} passed, {len(result.judges) - passed} failed"
        "</td></tr>",
        f"<tr><th>steps</th><td>{sum(s.ok is True for s in result.steps)} of "
        f"{len(result.steps)} ok</td></tr>",
        f"<tr><th>samples</th><td>{len(result.times)} at {spec.sample_hz:g} Hz "
        f"({result.sample_misses} missed)</td></tr>",
        "<tr><th>files</th><td>"
        + " · ".join(f"<a href='{e(f)}'>{e(f)}</a>" for f in files)
        + "</td></tr></table>",
    ]
    for error in result.errors + result.rig_errors:
        parts.append(f"<p class='msg bad'>{e(error)}</p>")
    parts.append("<h2>Timeline</h2><table><tr><th>#</th><th>planned s</th><th>started s</th>")
    parts.append("<th>took s</th><th>step</th><th>result</th><th>detail</th></tr>")
    for s in result.steps:
        took = None if s.started is None or s.finished is None else s.finished - s.started
        ok = "ok" if s.ok else "failed" if s.ok is False else "not run"
        parts.append(
            f"<tr><td class='num'>{s.index + 1}</td><td class='num'>{_t(s.planned)}</td>"
            f"<td class='num'>{_t(s.started)}</td><td class='num'>{_t(took)}</td>"
            f"<td>{e(s.step.describe())}</td><td class='{'ok' if s.ok else 'bad'}'>{ok}</td>"
            f"<td class='msg'>{e(s.detail)}</td></tr>"
        )
    parts.append("</table><h2>Expectations</h2><table><tr><th>#</th><th>expectation</th>")
    parts.append("<th>when</th><th>result</th><th>decided s</th><th>what was seen</th></tr>")
    for i, j in enumerate(result.judges):
        x = j.expectation
        good = j.verdict is Verdict.PASSED
        name = e(x.title()) + ("" if not x.name else f"<br><code>{e(x.describe())}</code>")
        parts.append(
            f"<tr><td class='num'>{i + 1}</td><td>{name}</td><td>{e(x.describe_timing())}</td>"
            f"<td class='{'ok' if good else 'bad'}'>{j.verdict.value}</td>"
            f"<td class='num'>{_t(j.decided_at)}</td><td class='msg'>{e(j.report())}</td></tr>"
        )
    parts.append("</table><h2>Plots</h2>")
    parts.append(
        "<p class='muted'>Dashed lines: steps (numbered as in the timeline). Shaded: the "
        "window of each expectation on its series, green passed, red failed; dotted: its "
        "threshold.</p>"
    )
    for title, png in plots(result):
        parts.append(f"<h3>{e(title)}</h3><img alt='{e(title)}' src='data:image/png;base64,{png}'>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")


def write_all(result: RunResult, out: Path) -> list[Path]:
    """Every output of a run into ``out``; returns the paths written."""
    written = [out / "junit.xml", out / "samples.csv", out / "report.html"]
    junit(result).write(written[0], encoding="utf-8", xml_declaration=True)
    write_csv(result, written[1])
    files = [p.name for p in written[:2]] + [
        n for n in ("run.log", "simulators.log", "venue.json") if (out / n).exists()
    ]
    write_html(result, written[2], files)
    return written
