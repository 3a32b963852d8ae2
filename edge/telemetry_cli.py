"""``flytower telemetry export``: a device's telemetry from a venue's store into a CSV or
Parquet file (docs/telemetry.md, "Export from the command line").

::

    flytower telemetry export VENUE --device D [--point P ...] [--node N] [--from T] [--to T]
        [--resolution raw|1s|1m|auto] [--agg mean|min|max|last] [--max-points N]
        --format csv|parquet -o OUT

The query is the API's (``GET /api/v1/telemetry/export``), validated by the same code
(:func:`edge.api_telemetry.build_query`): the device must be one of the node's, every point
one of its profile's, ``--from`` / ``--to`` epoch seconds or ISO 8601 with a zone (default:
the last hour). The store is opened read-only (:func:`edge.store.export_stream`), so a service
may be writing it meanwhile; the export is one snapshot.

The file is written beside ``OUT`` under a hidden temporary name and renamed to ``OUT`` only
once complete: a refused or failed export leaves no file behind (and never half of one).
A long export prints a progress line on stderr every few seconds.

Exit codes: 0 written (one line on stdout: rows, bytes, path); 2 refused or failed, with a
one-line reason on stderr (a bad argument, an unknown device or point, no store yet, an output
that cannot be written).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import os
import secrets
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from edge.store import ExportFormat, TelemetryQuery

FORMATS = ("csv", "parquet")
RESOLUTIONS = ("raw", "1s", "1m", "auto")
AGGS = ("mean", "min", "max", "last")
PROGRESS_S = 2.0  # a progress line on stderr at most this often (none for a quick export)


class ExportRefused(Exception):
    """The export cannot be made; the message (one line) says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="telemetry_cmd", required=True)
    p = sub.add_parser(
        "export",
        help="a device's telemetry from the venue's store into CSV or Parquet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("venue", type=Path)
    p.add_argument("--device", required=True, help="a device id of the node")
    p.add_argument(
        "--point", action="append", help="a point of the device; repeat for several; none: all"
    )
    p.add_argument("--node", help="which node of the venue (default: the first)")
    p.add_argument(
        "--from", dest="start", metavar="TIME", help="epoch seconds or ISO 8601 with a zone"
    )
    p.add_argument(
        "--to", dest="end", metavar="TIME", help="epoch seconds or ISO 8601 with a zone; now"
    )
    # Choices are checked by the command, not argparse: a bad one is a one-line error.
    p.add_argument("--resolution", default="raw", metavar="raw|1s|1m|auto", help="default raw")
    p.add_argument("--agg", default="mean", metavar="mean|min|max|last", help="rollup value")
    p.add_argument("--max-points", type=int, default=1000, help="auto: rows per point at most")
    p.add_argument("--format", required=True, metavar="csv|parquet")
    p.add_argument("-o", "--output", required=True, type=Path, help="the file to write")
    p.set_defaults(fn=export_command)


def export_command(args: argparse.Namespace) -> int:
    try:
        rows, size, out = asyncio.run(export(args, sys.stderr))
    except ExportRefused as exc:
        print(f"flytower telemetry export: {exc}", file=sys.stderr)
        return 2
    print(f"{rows} rows, {size} bytes written to {out}")
    return 0


async def export(args: argparse.Namespace, progress: TextIO | None = None) -> tuple[int, int, Path]:
    """Run the export ``args`` describe; (rows, bytes, path) or :class:`ExportRefused`."""
    fmt, q, store = _plan(args)
    out: Path = args.output
    tmp = _temp_beside(out)
    try:
        rows, size = await _write(store, q, fmt, tmp, progress)
        os.replace(tmp, out)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            if exc.errno is None:  # the store's own "no telemetry store" (it went away)
                raise ExportRefused(_one_line(str(exc))) from exc
            raise ExportRefused(f"{out}: {exc.strerror or exc}") from exc
        if isinstance(exc, RuntimeError):  # the store's schema check names the file
            raise ExportRefused(_one_line(str(exc))) from exc
        if isinstance(exc, sqlite3.Error):  # not a database, corrupt
            raise ExportRefused(f"{store}: {exc}") from exc
        raise
    return rows, size, out


def _plan(args: argparse.Namespace) -> tuple[ExportFormat, TelemetryQuery, Path]:
    from drivers.model import ConfigError
    from edge.api_telemetry import build_query
    from edge.config import load_venue
    from edge.store import QueryError

    fmt = args.format
    if fmt not in FORMATS:
        raise ExportRefused("--format must be csv or parquet")
    if args.resolution not in RESOLUTIONS:
        raise ExportRefused("--resolution must be raw, 1s, 1m or auto")
    if args.agg not in AGGS:
        raise ExportRefused("--agg must be mean, min, max or last")
    try:
        venue = load_venue(args.venue)
    except ConfigError as exc:
        first = exc.problems[0] if exc.problems else "invalid"
        more = f" (and {len(exc.problems) - 1} more: flytower check)" if exc.problems[1:] else ""
        raise ExportRefused(f"{exc.path}: {first}{more}") from exc
    except OSError as exc:
        raise ExportRefused(f"{args.venue}: {exc.strerror or exc}") from exc
    nodes = [n.id for n in venue.config.nodes]
    node = args.node or nodes[0]
    if node not in nodes:
        raise ExportRefused(f"--node: the venue has no such node (nodes: {', '.join(nodes)})")
    devices = {d.id: d for d in venue.devices_of(node)}
    try:
        q = build_query(
            devices,
            args.device,
            args.point,
            args.start,
            args.end,
            args.resolution,
            args.agg,
            max_points=args.max_points,
        )
    except QueryError as exc:
        raise ExportRefused(_one_line(str(exc))) from exc
    store = venue.store_path
    if not store.is_file():
        raise ExportRefused(f"{store}: no telemetry store yet (the service has not run here)")
    return fmt, q, store


def _temp_beside(out: Path) -> Path:
    """A new empty file in ``out``'s folder (so the rename is atomic): an unwritable folder,
    or an ``out`` that is a folder, is refused before the store is read. Created with mode
    0666 less the umask, as ``open`` would (``mkstemp``'s 0600 would survive the rename)."""
    if out.is_dir():
        raise ExportRefused(f"{out}: is a directory")
    folder = out.parent
    for _ in range(10):
        tmp = folder / f".{out.name}.{secrets.token_hex(4)}.part"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        except OSError as exc:
            raise ExportRefused(f"{folder}: cannot write here ({exc.strerror or exc})") from exc
        return tmp
    raise ExportRefused(f"{folder}: cannot create a temporary file here")


async def _write(
    store: Path, q: TelemetryQuery, fmt: ExportFormat, tmp: Path, progress: TextIO | None
) -> tuple[int, int]:
    from edge.store import export_stream

    # export_stream rather than export_to_file (its wrapper): the chunks are counted (rows,
    # progress) as they are written.
    _, body = await export_stream(store, q, fmt)
    count = _csv_records if fmt == "csv" else None
    rows = -1 if fmt == "csv" else 0  # the CSV header is a record
    size = 0
    t0 = last = time.monotonic()
    with tmp.open("wb") as f:
        async for chunk in body:
            f.write(chunk)
            size += len(chunk)
            if count is not None:
                rows += count(chunk)
            now = time.monotonic()
            if progress is not None and now - last >= PROGRESS_S:
                last = now
                done = f"{rows} rows, " if count is not None else ""
                print(
                    f"... {done}{size / 1e6:.1f} MB in {now - t0:.0f} s",
                    file=progress,
                    flush=True,
                )
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_metadata(tmp).num_rows
    return max(rows, 0), size


def _csv_records(chunk: bytes) -> int:
    """Records in a chunk of the store's CSV (each chunk holds whole records): a field holding
    a line break is always quoted, so a chunk without quotes is one record a line."""
    if b'"' not in chunk:
        return chunk.count(b"\r\n")
    return sum(1 for _ in csv.reader(io.StringIO(chunk.decode(), newline="")))


def _one_line(text: str) -> str:
    return " ".join(text.split())
