"""Move one axis and wait for it to arrive, printing its progress: holds the hold-to-run
enable for the move, sends it through the safety supervisor, follows the ``/ws`` machinery
snapshots until the axis is on target and at rest, then releases the enable.

    python examples/scripts/wait_for_axis.py --url http://127.0.0.1:8080 --token ftt_... \\
        --axis hoist-1 --to 3000 --speed 500

The token's role needs the run permission (operator, programmer, admin). A refused move prints
the supervisor's reason (outside the soft limits, too fast, a collision zone, the E-stop...);
an abort on the way (E-stop, fault) or no arrival within ``--timeout`` exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import httpx

from edge.client import FlytowerClient, FlytowerError, MotionAborted


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default=os.environ.get("FLYTOWER_URL", "http://127.0.0.1:8080"))
    p.add_argument("--token", help="API token (default: $FLYTOWER_TOKEN)")
    p.add_argument("--axis", required=True, help="axis id, e.g. hoist-1")
    p.add_argument("--to", type=float, required=True, help="target position (mm or degrees)")
    p.add_argument("--speed", type=float, help="speed (default: the axis's limit)")
    p.add_argument("--tolerance", type=float, default=5.0, help="arrived within this (5)")
    p.add_argument("--holder", default="wait_for_axis.py", help="who holds the enable")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds (120)")
    return p.parse_args(argv)


class Progress:
    """One line per snapshot, at most five a second."""

    def __init__(self, axis: str) -> None:
        self.axis = axis
        self.last = 0.0

    def __call__(self, snap: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        ax = snap["axes"].get(self.axis, {})
        line = f"{self.axis}: {ax.get('state')} at {ax.get('position')}"
        move = next((m for m in snap.get("moves", []) if m["id"] == ax.get("move")), None)
        if move is not None:
            left = move.get("remaining_s")
            line += f", move {move['id']} {move['progress'] * 100:.0f} %"
            line += "" if left is None else f", {left:.1f} s left"
        print(line, flush=True)


async def run(args: argparse.Namespace) -> int:
    async with FlytowerClient(args.url, name="wait_for_axis.py", token=args.token) as ft:
        axis = (await ft.axes()).get(args.axis)
        if axis is None:
            print(f"no axis '{args.axis}'", file=sys.stderr)
            return 1
        print(f"{args.axis}: {axis['state']} at {axis['position']}, moving to {args.to:g}")
        async with ft.hold_enable(args.holder):
            move = await ft.move({args.axis: args.to}, speed=args.speed)
            print(f"move {move['id']}: {move['duration_s']:.1f} s planned", flush=True)
            for warning in move.get("warnings", []):
                print(f"  warning: {warning}")
            view = await ft.wait_for_axis(
                args.axis,
                args.to,
                tolerance=args.tolerance,
                timeout_s=args.timeout,
                on_update=Progress(args.axis),
            )
        print(f"{args.axis} arrived at {view['position']}", flush=True)
    return 0


def main() -> int:
    args = parse_args()
    try:
        return asyncio.run(run(args))
    except (FlytowerError, MotionAborted) as exc:
        print(f"refused: {exc}", file=sys.stderr)
    except TimeoutError:
        print(f"{args.axis} did not arrive within {args.timeout:g} s", file=sys.stderr)
    except (httpx.HTTPError, OSError) as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
