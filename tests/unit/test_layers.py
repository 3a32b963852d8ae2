"""The layering of DESIGN.md, checked on every module's imports (lazy ones inside functions too).

- dsp/ and drivers/ import no other Flytower package;
- controller/ imports drivers/ and dsp/, never edge/;
- simulators/ import none of edge, controller or drivers: a simulator is written from the
  interface documents, so a wrong map in a profile is caught instead of mirrored.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("edge", "controller", "drivers", "dsp", "simulators")
FORBIDDEN = {
    "dsp": {"edge", "controller", "drivers", "simulators"},
    "drivers": {"edge", "controller", "dsp", "simulators"},
    "controller": {"edge", "simulators"},
    "simulators": {"edge", "controller", "drivers"},
    "edge": set(),  # the top: the CLI also fronts `flytower simulate`
}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in ``path``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_down_only(package: str) -> None:
    broken = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in modules(package)
        for line, name in imported_packages(path)
        if name in FORBIDDEN[package]
    ]
    assert not broken, "layering (DESIGN.md) broken:\n" + "\n".join(broken)


def test_every_package_is_checked() -> None:
    assert {p for p in PACKAGES if (REPO / p).is_dir()} <= set(FORBIDDEN)
    assert modules("simulators"), "the simulators package is where the test expects it"
