"""``python -m simulators VENUE``: serve the simulated devices of a venue until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from simulators.venue import SimulationError, load, serve


async def _serve_until_signalled(venue: Path) -> None:
    servers = load(venue)
    task = asyncio.create_task(serve(servers), name="simulators")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators")
    parser.add_argument("venue", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s sim %(name)s: %(message)s"
    )
    logging.getLogger("pymodbus").setLevel(logging.WARNING)
    try:
        asyncio.run(_serve_until_signalled(args.venue))
    except SimulationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
