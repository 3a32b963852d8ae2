"""Show files on disk: reading errors, round trips, and atomic saves that survive a kill -9."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from controller.show import (
    ShowError,
    dumps_show,
    edit_show,
    load_show,
    loads_show,
    parse_show,
    save_show,
)
from controller.show.file import show_data

from .test_show import base, catalogue

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "show-demo.toml"


def write_base(folder: Path) -> Path:
    path = folder / "show.toml"
    save_show(path, base(), catalogue())
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_round_trip_of_the_demo_show() -> None:
    show = load_show(DEMO)
    text = dumps_show(show)
    assert loads_show(text) == show
    assert text.startswith("version = 1\n")
    assert '{ kind = "lighting.preset", preset = "warm", level = 50.0 }' in text


def test_save_then_load(tmp_path: Path) -> None:
    path = write_base(tmp_path)
    assert load_show(path, catalogue()) == parse_show(base(), "x", catalogue())
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"version = 1\n[show\n", "TOML syntax: "),
        (b"\xff\xfe", "not UTF-8 text (byte 0)"),
        (b"", "version: missing (write version = 1 first)"),
        (b"version = 1\n", "show: required key is missing"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ShowError) as info:
        load_show(path)
    assert info.value.problems[0].startswith(expected)
    assert str(info.value).startswith(f"{path}: {expected}")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ShowError, match="cannot read: No such file"):
        load_show(tmp_path / "none.toml")


def test_a_huge_file_is_refused_unparsed(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    path.write_bytes(b"#" * (16 * 1024 * 1024 + 1))
    with pytest.raises(ShowError, match="larger than"):
        load_show(path)


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(ShowError):
        loads_show("x = " + "[" * 100_000 + "]" * 100_000)


def test_deeply_nested_data_in_an_old_version_is_an_error() -> None:
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ShowError, match="nested too deeply"):
        parse_show({"version": 0, "title": "x", "extra": deep})


def test_a_failed_validation_leaves_the_old_file_untouched(tmp_path: Path) -> None:
    path = write_base(tmp_path)
    before = path.read_bytes()
    bad = base()
    bad["lists"][0]["cues"][0]["actions"][0]["levels"][0]["level"] = 300
    with pytest.raises(ShowError, match="level 300 % is outside"):
        save_show(path, bad, catalogue())
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_edit_show(tmp_path: Path) -> None:
    path = write_base(tmp_path)

    def relabel(data: dict[str, Any]) -> None:
        data["lists"][0]["cues"][1]["label"] = "Warm"

    show = edit_show(path, relabel, catalogue())
    assert show.lists[0].cues[1].label == "Warm"
    assert load_show(path).lists[0].cues[1].label == "Warm"

    before = path.read_bytes()

    def break_it(data: dict[str, Any]) -> dict[str, Any]:
        data["lists"][0]["cues"][1]["number"] = 1
        return data

    with pytest.raises(ShowError, match="duplicate cue number 1"):
        edit_show(path, break_it, catalogue())
    assert path.read_bytes() == before


def test_save_keeps_permissions_and_follows_symlinks(tmp_path: Path) -> None:
    path = write_base(tmp_path)
    path.chmod(0o640)
    link = tmp_path / "current.toml"
    link.symlink_to(path.name)
    data = base()
    data["show"]["title"] = "Renamed"
    save_show(link, data, catalogue())
    assert link.is_symlink()
    assert load_show(path).show.title == "Renamed"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_model_saves_as_itself(tmp_path: Path) -> None:
    show = load_show(DEMO)
    path = tmp_path / "copy.toml"
    assert save_show(path, show) == show
    assert tomllib.loads(path.read_text()) == show_data(show)


# --- crash safety -----------------------------------------------------------------------------

# The writer is a real process killed with SIGKILL at a chosen point: after half of the new
# content is written, or after the whole temporary file is flushed but before the rename.
WRITER = textwrap.dedent(
    """
    import os, sys, time
    from controller.show import load_show, save_show
    import controller.show.file as f

    point, path, title = sys.argv[1], sys.argv[2], sys.argv[3]
    show = load_show(path)
    data = f.show_data(show)
    data["show"]["title"] = title
    # A large file (~300 kB), so that half of it is many writes' worth of bytes.
    data["lists"][1]["cues"] += [{"number": n, "notes": "x" * 100} for n in range(2, 2002)]

    def ready():
        sys.stdout.write("ready\\n")
        sys.stdout.flush()
        time.sleep(60)

    real_write, real_replace = os.write, os.replace
    if point == "write":
        def half_write(fd, data):
            n = real_write(fd, bytes(data[: len(data) // 2]))
            ready()
            return n
        os.write = half_write
    else:
        def stuck_replace(src, dst):
            ready()
            real_replace(src, dst)
        os.replace = stuck_replace
    save_show(path, data)
    """
)


@pytest.mark.parametrize("point", ["write", "rename"])
def test_a_killed_writer_leaves_the_old_show_whole(tmp_path: Path, point: str) -> None:
    path = write_base(tmp_path)
    before = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, point, str(path), "New title"],
        stdout=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    assert load_show(path, catalogue()).show.title == "Test"
    (tmp,) = leftovers(tmp_path)  # the half-done temporary file is left, named as documented
    assert tmp.startswith(".show.toml.")
    # The next save works and is not confused by the leftover.
    data = base()
    data["show"]["title"] = "After the crash"
    save_show(path, data, catalogue())
    assert load_show(path).show.title == "After the crash"


def test_a_writer_that_finishes_replaces_the_file(tmp_path: Path) -> None:
    path = write_base(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = WRITER.replace("time.sleep(60)", "pass")
    subprocess.run(
        [sys.executable, "-c", script, "rename", str(path), "Done"],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert load_show(path).show.title == "Done"
    assert leftovers(tmp_path) == []
