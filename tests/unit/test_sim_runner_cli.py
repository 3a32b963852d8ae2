"""The command lines: `flytower simulate`/`python -m simulators` options, `flytower hil`."""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import pytest

from edge import cli
from simulators import __main__ as sim_main
from simulators import runner


def test_hil_passes_its_arguments_through_to_edge_hil(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[argparse.Namespace] = []
    fake = types.ModuleType("edge.hil")

    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("scenario", type=Path)
        p.add_argument("--until", type=float)
        p.add_argument("--fast", action="store_true")

    def main(args: argparse.Namespace) -> int:
        seen.append(args)
        return 3

    fake.add_arguments = add_arguments  # type: ignore[attr-defined]
    fake.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edge.hil", fake)
    assert cli.main(["hil", "--fast", "show.toml", "--until", "2.5"]) == 3
    assert seen[0] == argparse.Namespace(scenario=Path("show.toml"), until=2.5, fast=True)


def test_other_commands_still_refuse_unknown_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["check", "v.toml", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_simulate_reports_an_unreadable_venue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "v.toml"
    bad.write_text("[[devices]\n")
    assert cli.main(["simulate", str(bad)]) == 1
    assert "TOML syntax" in capsys.readouterr().err
    assert sim_main.main([str(bad)]) == 1


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_part_must_be_i_of_n(text: str) -> None:
    with pytest.raises(SystemExit):
        sim_main.main(["v.json", "--part", text])


def test_part_is_zero_based_inside() -> None:
    assert sim_main._part("2/3") == (1, 3)


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5"])
def test_processes_must_be_a_positive_whole_number(text: str) -> None:
    with pytest.raises(SystemExit):
        sim_main.main(["v.json", "--processes", text])


def test_processes_default_to_the_venue(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[int | None] = []

    def run_venue(venue: object, source: str, n: int | None, port: int | None) -> int:
        seen.append(n)
        return 0

    monkeypatch.setattr(runner, "run_venue", run_venue)
    venue = tmp_path / "v.json"
    venue.write_text('{"simulation": {"processes": 3}, "devices": []}')
    assert sim_main.main([str(venue)]) == 0
    assert sim_main.main([str(venue), "--processes", "2"]) == 0
    assert seen == [None, 2], "None: run_venue takes the venue's [simulation] processes"


@pytest.mark.parametrize("text", ["", "{}", '[["a"]]', '[["a"], [1]]', '[["a"], "b"]', "not json"])
def test_a_bad_parts_file_is_a_clear_error(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    venue, parts = tmp_path / "v.json", tmp_path / "parts.json"
    venue.write_text('{"devices": []}')
    parts.write_text(text)
    assert sim_main.main([str(venue), "--part", "1/2", "--parts-file", str(parts)]) == 1
    assert f"error: {parts}" in capsys.readouterr().err


def test_a_parts_file_is_read_as_ids_per_part(tmp_path: Path) -> None:
    parts = tmp_path / "parts.json"
    parts.write_text('[["a", "b"], ["c"]]')
    assert sim_main._assignment(parts, 0, 2) == [["a", "b"], ["c"]]
