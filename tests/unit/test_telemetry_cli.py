"""``flytower telemetry export``: a real store file written with the store's own API, exported
through ``edge.cli.main`` (and once through the installed ``flytower`` script) to CSV and
Parquet and read back; hostile arguments exit 2 with a one-line reason and leave no file."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import math
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.model import Quality, Reading
from edge import telemetry_cli
from edge.cli import main
from edge.store import StoreSettings, TelemetryStore
from tests.conftest import write_venue

BASE = float(math.floor(time.time() / 3600) * 3600 - 2 * 3600)  # two hours ago, on the hour
N = 3600
# Text that CSV must quote (a comma, a quote, line breaks): the row count must survive it.
TEXTS = ['trip "A", phase 2', "line1\r\nline2", "plain", "cr\ronly"]
WINDOW = ["--from", str(BASE), "--to", str(BASE + N)]


def _fill(venue: Path) -> None:
    async def fill() -> None:
        path = venue.parent / "telemetry.sqlite3"
        async with TelemetryStore(path, StoreSettings(), maintain=False) as store:
            await store.write(
                [Reading("hoist-1", "position", float(i), 0.0, BASE + i) for i in range(N)]
                + [Reading("hoist-1", "load", 1.5 * i, 0.0, BASE + i) for i in range(0, N, 10)]
                + [
                    Reading("hoist-1", "fault_code", t, 0.0, BASE + 100 + i)
                    for i, t in enumerate(TEXTS)
                ]
                + [Reading("hoist-1", "velocity", None, 0.0, BASE + 5, Quality.BAD)]
            )
            await store.rollup()

    asyncio.run(fill())


@pytest.fixture
def venue(tmp_path: Path) -> Path:
    v = write_venue(tmp_path, [{"id": "hoist-1", "port": 1502}])
    _fill(v)
    return v


def export(venue: Path, out: Path, *extra: str, fmt: str = "csv") -> int:
    args = ["telemetry", "export", str(venue), "--device", "hoist-1", *WINDOW]
    return main([*args, *extra, "--format", fmt, "-o", str(out)])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_csv_matches_what_was_written(
    venue: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.csv"
    assert export(venue, out, "--point", "position", "--point", "fault_code") == 0
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    position = [r for r in rows if r["point"] == "position"]
    assert [float(r["ts"]) for r in position] == [BASE + i for i in range(N)]
    assert [float(r["value"]) for r in position] == [float(i) for i in range(N)]
    assert {r["quality"] for r in position} == {"good"} and {r["device"] for r in rows} == {
        "hoist-1"
    }
    assert [r["value"] for r in rows if r["point"] == "fault_code"] == TEXTS
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as any file the user creates
    printed = capsys.readouterr().out.strip()
    assert printed == f"{N + len(TEXTS)} rows, {out.stat().st_size} bytes written to {out}"
    assert leftovers(tmp_path) == []


def test_every_point_by_default_and_the_bad_reading(venue: Path, tmp_path: Path) -> None:
    out = tmp_path / "all.csv"
    assert export(venue, out) == 0
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    by_point: dict[str, int] = {}
    for r in rows:
        by_point[r["point"]] = by_point.get(r["point"], 0) + 1
    assert by_point == {"position": N, "load": N // 10, "fault_code": len(TEXTS), "velocity": 1}
    (bad,) = [r for r in rows if r["point"] == "velocity"]
    assert (bad["value"], bad["quality"]) == ("", "bad")


def test_parquet_raw_and_rollups_read_back(venue: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    assert export(venue, out, "--point", "position", fmt="parquet") == 0
    table = pq.read_table(out)
    assert table.column_names == ["device", "point", "ts", "value", "quality"]
    ts = [t.timestamp() for t in table.column("ts").to_pylist()]
    assert ts == [BASE + i for i in range(N)]
    assert [float(v) for v in table.column("value").to_pylist()] == [float(i) for i in range(N)]

    out = tmp_path / "minutes.parquet"
    extra = ("--point", "position", "--resolution", "1m", "--agg", "max")
    assert export(venue, out, *extra, fmt="parquet") == 0
    t = pq.read_table(out).to_pydict()
    assert len(t["ts"]) == 60
    assert [x.timestamp() for x in t["ts"]] == [BASE + 60 * m for m in range(60)]
    assert t["max"] == [60.0 * m + 59 for m in range(60)]
    assert t["mean"] == [60.0 * m + 29.5 for m in range(60)]
    assert t["count"] == [60] * 60


def test_iso_times_select_the_window(venue: Path, tmp_path: Path) -> None:
    import datetime as dt

    def iso(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()

    out = tmp_path / "w.csv"
    args = ["telemetry", "export", str(venue), "--device", "hoist-1", "--point", "position"]
    window = ["--from", iso(BASE + 10), "--to", iso(BASE + 19)]
    assert main([*args, *window, "--format", "csv", "-o", str(out)]) == 0
    values = [float(r["value"]) for r in csv.DictReader(out.open(newline=""))]
    assert values == [float(i) for i in range(10, 20)]


def test_progress_on_stderr_for_a_long_export(
    venue: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telemetry_cli, "PROGRESS_S", 0.0)  # every chunk "takes long"
    monkeypatch.setattr("edge.store.EXPORT_CHUNK", 500)
    out = tmp_path / "p.csv"
    assert export(venue, out, "--point", "position") == 0
    lines = capsys.readouterr().err.strip().splitlines()
    progress = [ln for ln in lines if ln.startswith("... ")]
    assert progress and "rows" in progress[-1] and "MB" in progress[-1]


def test_an_existing_output_is_replaced_whole(venue: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    out.write_text("old content that is longer than nothing\n" * 100)
    assert export(venue, out, "--point", "fault_code") == 0
    data = out.read_bytes()
    assert data.startswith(b"device,point,ts,value,quality\r\n") and b"old content" not in data


HOSTILE = [
    (["--device", "nope"], "device: no device 'nope' on this node"),
    (["--device", "hoist-1\x1b[31m"], "device: no device (not an id) on this node"),
    (["--point", "pos\x00ition\n"], "has no point (not an id)"),
    (["--point", "position", "--point", "position"], "a point is named twice"),
    (["--from", str(BASE + 10), "--to", str(BASE)], "from is after to"),
    (["--from", "nonsense"], "from: not epoch seconds nor an ISO 8601 time"),
    (["--to", "2026-12-02T10:00:00"], "to: an ISO 8601 time needs a zone"),
    (["--from", "nan"], "from must be a finite number of epoch seconds"),
    (["--from=-1e300"], "from must be between 1970 and 2100"),
    (["--resolution", "1h"], "--resolution must be raw, 1s, 1m or auto"),
    (["--agg", "median"], "--agg must be mean, min, max or last"),
    (["--node", "fly"], "--node: the venue has no such node (nodes: stage)"),
    (["--max-points", "0"], "max_points must be a whole number"),
]


@pytest.mark.parametrize(("extra", "message"), HOSTILE)
def test_hostile_arguments_exit_2_and_leave_nothing(
    venue: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "out.csv"
    args = ["telemetry", "export", str(venue), "--device", "hoist-1", *extra]
    assert main([*args, "--format", "csv", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert all(c.isprintable() for c in err.rstrip("\n")), repr(err)
    assert not out.exists() and leftovers(tmp_path) == []


def test_bad_format_exits_2(
    venue: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.xlsx"
    assert export(venue, out, fmt="xlsx") == 2
    assert "--format must be csv or parquet" in capsys.readouterr().err
    assert not out.exists() and leftovers(tmp_path) == []


def test_missing_store_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    venue = write_venue(tmp_path, [{"id": "hoist-1", "port": 1502}])  # never ran: no store
    out = tmp_path / "out.csv"
    assert export(venue, out) == 2
    err = capsys.readouterr().err
    assert "no telemetry store yet" in err and err.count("\n") == 1
    assert not out.exists() and leftovers(tmp_path) == []
    assert not (tmp_path / "telemetry.sqlite3").exists()  # the export never creates one


def test_not_a_store_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    venue = write_venue(tmp_path, [{"id": "hoist-1", "port": 1502}])
    (tmp_path / "telemetry.sqlite3").write_bytes(b"not a database at all" * 100)
    out = tmp_path / "out.csv"
    assert export(venue, out) == 2
    err = capsys.readouterr().err
    assert "telemetry.sqlite3" in err and err.count("\n") == 1
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_store_of_another_schema_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    venue = write_venue(tmp_path, [{"id": "hoist-1", "port": 1502}])
    conn = sqlite3.connect(tmp_path / "telemetry.sqlite3")
    conn.execute("CREATE TABLE readings (x)")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    out = tmp_path / "out.csv"
    assert export(venue, out) == 2
    err = capsys.readouterr().err
    assert "store schema 1, this Flytower reads 2" in err and err.count("\n") == 1
    assert not out.exists() and leftovers(tmp_path) == []


async def test_export_while_the_store_is_being_written(venue: Path, tmp_path: Path) -> None:
    """A writer keeps committing batches (as a running service does) while the installed
    script exports: the export is a consistent snapshot and the writer never fails."""
    script = Path(sys.executable).with_name("flytower")
    out = tmp_path / "live.csv"
    written = 0
    started = asyncio.Event()
    async with TelemetryStore(
        venue.parent / "telemetry.sqlite3", StoreSettings(), maintain=False
    ) as store:

        async def writer() -> None:
            nonlocal written
            while True:
                t = BASE + N + written
                await store.write([Reading("hoist-1", "position", -1.0, 0.0, t)])
                written += 1
                if written == 20:
                    started.set()
                await asyncio.sleep(0.001)

        task = asyncio.create_task(writer(), name="writer")
        try:
            await asyncio.wait_for(started.wait(), 30)
            proc = await asyncio.create_subprocess_exec(
                str(script),
                *["telemetry", "export", str(venue), "--device", "hoist-1"],
                *["--point", "position", "--from", str(BASE), "--to", str(BASE + 2 * N)],
                *["--format", "csv", "-o", str(out)],
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert proc.returncode == 0, stderr.decode()
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    values = [float(r["value"]) for r in rows]
    assert values[:N] == [float(i) for i in range(N)]
    assert len(values) > N and set(values[N:]) == {-1.0}  # some of the live writes
    ts = [float(r["ts"]) for r in rows]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    assert stdout.decode().startswith(f"{len(rows)} rows, ")


def test_unwritable_outputs_exit_2(
    venue: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Tests run as root here, which mode bits do not stop: a missing folder, a folder that is
    # a file and an output that is a folder are what cannot be written whoever runs it.
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    for out, message in (
        (tmp_path / "missing" / "out.csv", "cannot write here"),
        (tmp_path / "afile" / "out.csv", "cannot write here"),
        (tmp_path / "adir", "is a directory"),
    ):
        assert export(venue, out) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert leftovers(tmp_path) == [] and leftovers(tmp_path / "adir") == []
    assert sorted(p.name for p in (tmp_path / "adir").iterdir()) == []


def test_the_installed_script(venue: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("flytower")
    out = tmp_path / "out.parquet"
    args = ["telemetry", "export", str(venue), "--device", "hoist-1", "--point", "load"]
    ok = subprocess.run(
        [str(script), *args, *WINDOW, "--format", "parquet", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().startswith(f"{N // 10} rows, ")
    assert pq.read_table(out).column("value").to_pylist()[:2] == ["0.0", "15.0"]
    bad = subprocess.run(
        [str(script), *args, "--from", "soon", "--format", "csv", "-o", str(tmp_path / "x.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "flytower telemetry export: from: not epoch seconds nor an ISO 8601 time"
    ]
    assert not (tmp_path / "x.csv").exists()


_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(device=_TEXT, point=_TEXT, start=_TEXT, end=_TEXT)
def test_any_text_is_an_export_or_a_one_line_refusal(
    venue: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    device: str,
    point: str,
    start: str,
    end: str,
) -> None:
    out = tmp_path / "fuzz.csv"
    out.unlink(missing_ok=True)
    capsys.readouterr()
    args = ["telemetry", "export", str(venue), "--device=" + device, "--point=" + point]
    args += ["--from=" + start, "--to=" + end, "--format", "csv", "-o", str(out)]
    code = main(args)
    err = capsys.readouterr().err
    if code == 2:
        assert not out.exists() and err.count("\n") == 1, err
        assert all(c.isprintable() for c in err.rstrip("\n")), repr(err)
    else:
        assert code == 0 and out.exists()
    assert leftovers(tmp_path) == []
