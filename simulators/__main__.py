"""``python -m simulators VENUE``: serve the simulated devices of an expanded venue.

    python -m simulators VENUE [--control-port P] [--processes N]

``--processes`` defaults to the venue's ``[simulation] processes`` (else 1).

``VENUE`` is TOML or JSON with explicit ``[[devices]]`` (``flytower simulate`` also expands
compact venues). ``--part i/N --source NAME`` is how a multi-process run starts its children:
serve part i of N and talk to the parent over stdin/stdout (see ``simulators.runner``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from simulators import runner
from simulators.core import SimulationError
from simulators.venue import load


def _part(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if m is None or not 1 <= int(m[1]) <= int(m[2]):
        raise argparse.ArgumentTypeError(f"expected i/N with 1 <= i <= N, not {text!r}")
    return int(m[1]) - 1, int(m[2])


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def _assignment(path: Path, part: int, parts: int) -> list[list[str]]:
    """The parent's partition: a JSON array of ``parts`` arrays of device ids."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SimulationError(f"{path}: {exc}") from exc
    ok = (
        isinstance(data, list)
        and len(data) == parts
        and all(isinstance(p, list) and all(isinstance(i, str) for i in p) for p in data)
    )
    if not ok:
        raise SimulationError(f"{path}: expected {parts} arrays of device ids")
    return [list(p) for p in data]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``python -m simulators`` and ``flytower simulate`` share."""
    parser.add_argument("venue", type=Path)
    parser.add_argument(
        "--processes",
        type=_positive,
        metavar="N",
        help="split the devices over N child processes, by load (default: the venue's "
        "[simulation] processes, else 1: this process)",
    )
    parser.add_argument(
        "--control-port",
        type=int,
        metavar="P",
        help=f"control endpoint port (default: [simulation] control_port, else "
        f"{runner.DEFAULT_CONTROL_PORT}; 0: any free port)",
    )


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s sim %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pymodbus").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators", description=__doc__)
    add_arguments(parser)
    parser.add_argument("--part", type=_part, help=argparse.SUPPRESS)
    parser.add_argument("--parts-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        venue = load(args.venue)
    except SimulationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    source = args.source or str(args.venue)
    if args.part is not None:
        part, parts = args.part
        try:
            chosen = None if args.parts_file is None else _assignment(args.parts_file, part, parts)
        except SimulationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return runner.run(lambda: runner.serve_part(venue, source, part, parts, chosen))
    return runner.run_venue(venue, source, args.processes, args.control_port)


if __name__ == "__main__":
    sys.exit(main())
