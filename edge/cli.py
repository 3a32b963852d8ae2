"""The ``flytower`` command line.

flytower check VENUE       validate a venue file and every profile it uses (exit 1 on error)
flytower run VENUE         run the service (and the simulators the venue declares)
flytower simulate VENUE    run only the simulators the venue declares
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from drivers.model import ConfigError


def _check(args: argparse.Namespace) -> int:
    from edge.config import load_venue

    try:
        venue = load_venue(args.venue)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.path}: {problem}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    profiles = sorted({d.profile.id for d in venue.devices})
    print(
        f"{args.venue}: ok — venue '{venue.config.venue.id}', {len(venue.config.nodes)} "
        f"node(s), {len(venue.devices)} device(s), profiles: {', '.join(profiles) or 'none'}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from edge.config import load_venue
    from edge.service import Service, install_signal_handlers

    try:
        venue = load_venue(args.venue)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1

    async def main() -> None:
        service = Service(venue, args.node, api_port=args.port, simulators=not args.no_simulators)
        install_signal_handlers(service.stop)
        await service.run()

    try:
        asyncio.run(main())
    except OSError as exc:  # typically: the API or broker port is taken
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from simulators.__main__ import main as sim_main

    return sim_main([str(args.venue)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flytower", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("check", help="validate a venue file and its profiles")
    p.add_argument("venue", type=Path)
    p.set_defaults(fn=_check)
    p = sub.add_parser("run", help="run the service")
    p.add_argument("venue", type=Path)
    p.add_argument("--node", help="which node of the venue this is (default: the first)")
    p.add_argument("--port", type=int, help="API/console port (default: from the venue)")
    p.add_argument(
        "--no-simulators",
        action="store_true",
        help="do not start the simulators the venue declares",
    )
    p.set_defaults(fn=_run)
    p = sub.add_parser("simulate", help="run only the simulators a venue declares")
    p.add_argument("venue", type=Path)
    p.set_defaults(fn=_simulate)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    with contextlib.suppress(KeyboardInterrupt):
        return int(args.fn(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
