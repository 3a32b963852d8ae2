"""Hardware-in-loop runs: ``flytower hil SCENARIO [--out DIR]``.

A scenario (``edge.hil.scenario``) names a venue, a timeline of steps (device commands
through the service's REST API; fault injection, clearing and the e-stop chain through the
simulators' control endpoint; waits) and expectations on the service's points, its health
and the simulators' ground truth. The runner (``edge.hil.run``) starts the simulators and the
service on free ports, runs the timeline, samples, judges (``edge.hil.judge``), stops
everything, and writes JUnit XML, CSV and an HTML report with plots (``edge.hil.report``)
into ``hil-out/<scenario>/`` unless ``--out`` says otherwise.

Exit status: 0 every expectation and step passed; 1 one failed (or the service died);
2 the scenario or the rig could not be set up (nothing was judged). See docs/hil.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from drivers.model import ConfigError
from edge.hil.scenario import LoadedScenario, load_scenario

EXIT_PASSED, EXIT_FAILED, EXIT_SETUP = 0, 1, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``flytower hil``."""
    p.add_argument("scenario", type=Path, help="the scenario file (TOML; see docs/hil.md)")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where the reports go (default: hil-out/<scenario name>/)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="only validate the scenario and its venue; start nothing",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, only the summary")


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """The service's and runner's logs into ``path``: the terminal is for progress."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root.handlers = [handler]
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    quiet = [logging.getLogger(n) for n in ("httpx", "httpcore", "matplotlib")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)  # one line per sample request drowns what matters
    try:
        yield
    finally:
        root.handlers = saved
        root.setLevel(level)
        for q, lv in zip(quiet, levels, strict=True):
            q.setLevel(lv)
        handler.close()


def _problems(problems: list[str]) -> None:
    for line in problems:
        print(f"error: {line}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    """Run ``args.scenario``; the exit status says how it went (module docstring)."""
    from edge.hil import report
    from edge.hil.run import Progress, SetupError, prepare_venue, run_scenario

    try:
        sc: LoadedScenario = load_scenario(args.scenario)
    except ConfigError as exc:
        _problems([f"{exc.path}: {p}" for p in exc.problems])
        return EXIT_SETUP
    out: Path = args.out if args.out is not None else Path("hil-out") / sc.name
    progress = Progress(quiet=args.quiet)
    if args.check:
        try:
            prepare_venue(sc, out)
        except SetupError as exc:
            _problems(exc.problems)
            return EXIT_SETUP
        print(
            f"{sc.path}: ok — {len(sc.spec.steps)} step(s), {len(sc.spec.expect)} "
            f"expectation(s), venue {sc.venue_path}"
        )
        return EXIT_PASSED
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _problems([f"{out}: cannot create the output folder: {exc.strerror or exc}"])
        return EXIT_SETUP
    try:
        with _log_to(out / "run.log"):
            result = asyncio.run(run_scenario(sc, out, progress))
            report.write_all(result, out)
    except SetupError as exc:
        progress.done()
        _problems(exc.problems)
        tree = report.junit_setup_error(sc.name, exc.problems)
        tree.write(out / "junit.xml", encoding="utf-8", xml_declaration=True)
        return EXIT_SETUP
    failed = result.failed
    verdict = "rig error" if result.rig_errors else "FAILED" if failed else "passed"
    passed = sum(j.verdict.value == "passed" for j in result.judges)
    print(
        f"{sc.name}: {verdict} — {passed}/{len(result.judges)} expectation(s) passed, "
        f"{sum(s.ok is True for s in result.steps)}/{len(result.steps)} step(s) ok; "
        f"report {out / 'report.html'}"
    )
    for line in result.errors + result.rig_errors:
        print(f"  {line}")
    if result.rig_errors:
        return EXIT_SETUP
    return EXIT_FAILED if failed else EXIT_PASSED
