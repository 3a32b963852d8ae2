"""tools/audit tells an audit that found something, one that found nothing and one that could
not happen apart (pip-audit exits 0 on all three). pip-audit is replaced by a module that
prints what the real one prints in each case; the real one runs in `make test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
NOT_FOUND = "Dependency not found on PyPI and could not be audited: {} (1.0)"


def run(tmp_path: Path, deps: list[dict[str, Any]], *args: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "pip_audit"
    fake.mkdir(exist_ok=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(
        f"print({json.dumps(json.dumps({'dependencies': deps, 'fixes': []}))})\n"
    )
    env = os.environ | {"PYTHONPATH": str(tmp_path)}
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "audit"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_a_known_vulnerability_fails_and_names_the_fix(tmp_path: Path) -> None:
    vuln = {"id": "PYSEC-2099-1", "fix_versions": ["2.0"], "aliases": [], "description": ""}
    deps = [
        {"name": "fastapi", "version": "1.0", "vulns": []},
        {"name": "urllib3", "version": "1.0", "vulns": [vuln]},
    ]
    out = run(tmp_path, deps)
    assert out.returncode == 1, out
    assert "urllib3 1.0: PYSEC-2099-1 (fixed in: 2.0)" in out.stdout


def test_a_clean_audit_passes_and_says_what_it_could_not_check(tmp_path: Path) -> None:
    deps = [
        {"name": "fastapi", "version": "1.0", "vulns": []},
        {"name": "private-lib", "skip_reason": NOT_FOUND.format("private-lib")},
    ]
    out = run(tmp_path, deps, "--required")
    assert out.returncode == 0, out
    assert "1 packages checked, no known vulnerability" in out.stdout
    assert "not checked (1): private-lib" in out.stdout


@pytest.mark.parametrize(("args", "code"), [((), 0), (("--required",), 1)])
def test_an_audit_that_reached_nothing_is_not_a_pass(
    tmp_path: Path, args: tuple[str, ...], code: int
) -> None:
    deps = [{"name": n, "skip_reason": NOT_FOUND.format(n)} for n in ("fastapi", "numpy")]
    out = run(tmp_path, deps, *args)
    assert out.returncode == code, out
    assert "dependency audit NOT DONE: none of the 2 packages could be checked" in out.stdout


def test_pip_audit_failing_outright_fails(tmp_path: Path) -> None:
    fake = tmp_path / "pip_audit"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("import sys; sys.exit('no network at all')\n")
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "audit")],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(tmp_path)},
        timeout=60,
    )
    assert out.returncode == 1 and "pip-audit failed" in out.stderr
