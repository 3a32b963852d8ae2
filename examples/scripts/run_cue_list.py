"""Run a cue list from a script: for each cue, put it on standby, GO, and wait until it is
complete (every action done) before the next.

    python examples/scripts/run_cue_list.py --url http://127.0.0.1:8080 --token ftt_... \\
        --list main --cues 1 2 3 --enable "cue script"

Without ``--cues``, every cue of the list in show order (``GET /api/v1/show``). A list with
machinery cues needs the hold-to-run enable: ``--enable HOLDER`` holds it for the whole run
(the token's role needs the run permission: operator, programmer or admin). A refused GO, a
cue that fails (an action failed: the journal says why, e.g. a move the safety supervisor
refused or aborted) or one that does not complete in ``--timeout`` seconds stops the run
(exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Any

import httpx

from edge.client import FlytowerClient, FlytowerError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default=os.environ.get("FLYTOWER_URL", "http://127.0.0.1:8080"))
    p.add_argument("--token", help="API token (default: $FLYTOWER_TOKEN)")
    p.add_argument("--list", dest="list_id", help="cue list id (default: the show's first)")
    p.add_argument("--cues", nargs="+", metavar="CUE", help="cue numbers (default: all)")
    p.add_argument("--enable", metavar="HOLDER", help="hold the hold-to-run enable as HOLDER")
    p.add_argument("--pause", type=float, default=0.5, help="seconds between cues (0.5)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per cue (120)")
    return p.parse_args(argv)


async def cues_of(ft: FlytowerClient, list_id: str | None) -> tuple[str, list[str]]:
    data = await ft.show()
    lists: list[dict[str, Any]] = data.get("lists", [])
    for lst in lists:
        if list_id is None or lst["id"] == list_id:
            return lst["id"], [str(c["number"]) for c in lst.get("cues", [])]
    raise SystemExit(f"no cue list '{list_id}' in the show")


async def failures(ft: FlytowerClient, list_id: str, cue: str, go_at: float) -> list[str]:
    """The reasons of the cue's failed actions, from the journal (a cue's own actions are
    journalled with the source ``cue LIST/CUE``; ``go_at`` is the service's time of the GO)."""
    events = await ft.journal(since=go_at, source_kind="wait", limit=500)
    return [
        f"{e['command']}: {e['reason']}"
        for e in events
        if e["source"] == f"cue {list_id}/{cue}" and e["result"] == "failed"
    ]


async def run(args: argparse.Namespace) -> int:
    async with FlytowerClient(args.url, name="run_cue_list.py", token=args.token) as ft:
        list_id, cues = await cues_of(ft, args.list_id)
        cues = args.cues or cues
        print(f"{list_id}: {len(cues)} cue(s): {' '.join(cues)}", flush=True)
        enable = ft.hold_enable(args.enable) if args.enable else contextlib.nullcontext()
        async with enable:
            for i, cue in enumerate(cues):
                if i and args.pause > 0:
                    await asyncio.sleep(args.pause)
                await ft.standby(list_id, cue)
                started = await ft.go(list_id)
                print(f"GO {list_id}/{started['cue']}", flush=True)
                state = await ft.wait_for_cue(
                    list_id, started["cue"], complete=True, timeout_s=args.timeout
                )
                failed = await failures(ft, list_id, started["cue"], state["last_go"])
                if failed:
                    print(f"  FAILED: {'; '.join(failed)}", flush=True)
                    return 1
                standby = (state.get("standby") or {}).get("number", "-")
                print(f"  complete; standby {standby}", flush=True)
    print("done", flush=True)
    return 0


def main() -> int:
    args = parse_args()
    try:
        return asyncio.run(run(args))
    except FlytowerError as exc:
        print(f"refused: {exc}", file=sys.stderr)
    except TimeoutError:
        print(f"a cue did not complete within {args.timeout:g} s", file=sys.stderr)
    except (httpx.HTTPError, OSError) as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
