"""The ``flytower`` command line.

flytower check VENUE       validate a venue file and every profile it uses (exit 1 on error)
flytower run VENUE         run the service (and the simulators the venue declares)
flytower simulate VENUE    run only the simulators the venue declares (--processes N to split)
flytower hil SCENARIO      run a hardware-in-loop scenario against the simulated venue
flytower journal prune VENUE --before DATE   delete old journal events (journalled)
flytower configuration preview VENUE NAME [--from NAME]   try a venue configuration switch
                           on the simulators (progress, timings, a plot in hil-out/)
flytower acoustics analyze IR.wav | measure VENUE --outputs 1 --inputs 1,2 | modes
                           room acoustics (docs/acoustics.md, "Command line and plots")
flytower telemetry export VENUE --device D --format csv|parquet -o OUT [--from T --to T]
                           a device's telemetry from the store (docs/telemetry.md)
flytower user add|list|passwd|role|disable|enable|remove VENUE ...
                           the console's users (docs/api.md, "Users and API tokens")
flytower token create|list|revoke VENUE ...   API tokens for scripts
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import sys
from pathlib import Path

from drivers.model import ConfigError, DmxTransport


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
    # The size of the venue, as the figures in DESIGN.md count it: an axis is a device that
    # takes motion commands (a fire curtain is monitored, not moved); a universe is patched.
    axes = sum(any(c.moves_machinery for c in d.profile.commands.values()) for d in venue.devices)
    universes = {
        d.transport.universe for d in venue.devices if isinstance(d.transport, DmxTransport)
    }
    print(
        f"{len(venue.devices)} devices, {len(profiles)} types, "
        f"{sum(len(d.profile.points) for d in venue.devices)} points, {axes} machinery axes, "
        f"{len(universes)} DMX universes"
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
        run = asyncio.create_task(service.run())
        started = asyncio.create_task(service.started.wait())
        await asyncio.wait([run, started], return_when=asyncio.FIRST_COMPLETED)
        if started.done():
            service.freeze_startup_heap()
        else:
            started.cancel()
        await run

    from edge.service import SimulatorsFailed

    try:
        asyncio.run(main())
    except (OSError, SimulatorsFailed) as exc:  # typically: the API or broker port is taken
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from drivers.model import read_toml
    from edge.config import expand_venue
    from simulators.runner import run_venue

    try:
        # Compact group specs become explicit [[devices]].
        venue = expand_venue(read_toml(args.venue), args.venue)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.path}: {problem}", file=sys.stderr)
        return 1
    logging.getLogger("pymodbus").setLevel(logging.WARNING)
    return run_venue(venue, str(args.venue), args.processes, args.control_port)


def _hil(args: argparse.Namespace) -> int:
    # Imported only for this command (plots and scenario machinery are not light); it parses
    # its own arguments, which ``main`` passed through untouched.
    hil = importlib.import_module("edge.hil")
    parser = argparse.ArgumentParser(prog="flytower hil", description=hil.__doc__)
    hil.add_arguments(parser)
    return int(hil.main(parser.parse_args(args.rest)))


def _journal_prune(args: argparse.Namespace) -> int:
    """The journal's one deleting path, for an administrator (docs/journal.md, Retention)."""
    import datetime as dt
    import getpass

    from edge.config import load_venue
    from edge.journal import JournalStore, journal_path

    try:
        venue = load_venue(args.venue)
        before = dt.datetime.fromisoformat(args.before)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"--before: {exc} (expected an ISO date or time, e.g. 2026-01-31)", file=sys.stderr)
        return 1
    if before.tzinfo is None:
        before = before.astimezone()  # a local date, as an operator means it
    path = journal_path(venue.store_path)
    if not path.exists():
        print(f"{path}: no journal", file=sys.stderr)
        return 1

    async def prune() -> int:
        async with JournalStore(path) as journal:
            return await journal.prune(before.timestamp(), who=f"cli {getpass.getuser()}")

    deleted = asyncio.run(prune())
    print(f"{path}: {deleted} event(s) requested before {before.isoformat()} deleted")
    return 0


def _configuration_preview(args: argparse.Namespace) -> int:
    from edge import configuration_preview

    return configuration_preview.main(args)


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
    from simulators.__main__ import add_arguments as add_simulate_arguments

    add_simulate_arguments(p)
    p.set_defaults(fn=_simulate)
    p = sub.add_parser("journal", help="administer the journal (prune)")
    jsub = p.add_subparsers(dest="journal_cmd", required=True)
    jp = jsub.add_parser("prune", help="delete events requested before a date (journalled)")
    jp.add_argument("venue", type=Path)
    jp.add_argument("--before", required=True, help="ISO date or time, e.g. 2026-01-31")
    jp.set_defaults(fn=_journal_prune)
    p = sub.add_parser("configuration", help="venue configurations (docs/configurations.md)")
    csub = p.add_subparsers(dest="configuration_cmd", required=True)
    cp = csub.add_parser("preview", help="run a switch on the simulated venue and report it")
    from edge.configuration_preview import add_arguments as add_preview_arguments

    add_preview_arguments(cp)
    cp.set_defaults(fn=_configuration_preview)
    p = sub.add_parser("acoustics", help="room acoustics: analyze an IR, measure, list modes")
    from edge.acoustics_cli import add_arguments as add_acoustics_arguments

    add_acoustics_arguments(p)
    p = sub.add_parser("telemetry", help="the telemetry store: export to CSV or Parquet")
    from edge.telemetry_cli import add_arguments as add_telemetry_arguments

    add_telemetry_arguments(p)
    p = sub.add_parser("user", help="the console's users (access control)")
    from edge.auth_cli import add_token_arguments, add_user_arguments

    add_user_arguments(p)
    p = sub.add_parser("token", help="API tokens for scripts (access control)")
    add_token_arguments(p)
    p = sub.add_parser(
        "hil",
        help="run a hardware-in-loop scenario against the simulated venue (see hil --help)",
        add_help=False,
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=_hil)
    args, unknown = parser.parse_known_args(argv)
    if args.cmd == "hil":
        args.rest = unknown + args.rest
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    with contextlib.suppress(KeyboardInterrupt):
        return int(args.fn(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
