"""React to an alarm: wait until one is raised (following the ``/ws`` alarm feed), stop the
machinery (and, with ``--panic``, panic the show: every cue list stopped, lighting to the safe
look), then acknowledge it with a note.

    python examples/scripts/react_to_alarm.py --url http://127.0.0.1:8080 --token ftt_... \\
        --severity critical --panic --note "stopped by the alarm script"

Alarms raised and not yet acknowledged count, including those already standing when the script
starts. It handles ``--count`` alarms (1) and exits; ``--timeout`` gives up waiting (status 3).
The token's role needs the run permission (operator, programmer, admin) to acknowledge; any
role may stop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import httpx

from edge.client import FlytowerClient, FlytowerError, PlaybackRefused

SEVERITIES = ("critical", "major", "minor", "warning", "info")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default=os.environ.get("FLYTOWER_URL", "http://127.0.0.1:8080"))
    p.add_argument("--token", help="API token (default: $FLYTOWER_TOKEN)")
    p.add_argument(
        "--severity",
        action="append",
        choices=SEVERITIES,
        help="react to these severities (repeatable; default: critical and major)",
    )
    p.add_argument("--device", action="append", help="only alarms of these devices")
    p.add_argument("--quick", action="store_true", help="quick stop (default: controlled)")
    p.add_argument("--panic", action="store_true", help="panic the show too")
    p.add_argument("--note", default="machinery stopped by react_to_alarm.py")
    p.add_argument("--count", type=int, default=1, help="alarms to handle before exiting (1)")
    p.add_argument("--timeout", type=float, help="give up after this many seconds")
    return p.parse_args(argv)


async def react(args: argparse.Namespace) -> int:
    severities = args.severity or ["critical", "major"]
    async with FlytowerClient(args.url, name="react_to_alarm.py", token=args.token) as ft:
        events = ft.alarm_events(severities=severities, devices=args.device)
        print(f"waiting for {'/'.join(severities)} alarms", flush=True)
        handled = 0
        async with events:
            async for alarm in events:
                print(f"ALARM {alarm['severity']} {alarm['id']}: {alarm['message']}", flush=True)
                stopped = await ft.stop_axes(kind="quick" if args.quick else "controlled")
                print(f"  stopped {', '.join(stopped['stopped']) or 'no axes'}", flush=True)
                for axis, why in stopped["failed"].items():
                    print(f"  {axis} did not confirm its stop: {why}", flush=True)
                if args.panic:
                    try:
                        await ft.panic()
                        print("  panic", flush=True)
                    except PlaybackRefused as exc:  # e.g. 404: no show loaded
                        print(f"  no panic: {exc}", flush=True)
                acked = await ft.ack(alarm["id"], args.note)
                print(f"  acknowledged by {acked['acked_by']}", flush=True)
                handled += 1
                if handled >= args.count:
                    break
    return 0


async def run(args: argparse.Namespace) -> int:
    if args.timeout is None:
        return await react(args)
    try:
        async with asyncio.timeout(args.timeout):
            return await react(args)
    except TimeoutError:
        print(f"no alarm within {args.timeout:g} s", file=sys.stderr)
        return 3


def main() -> int:
    args = parse_args()
    try:
        return asyncio.run(run(args))
    except FlytowerError as exc:
        print(f"refused: {exc}", file=sys.stderr)
    except (httpx.HTTPError, OSError) as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
