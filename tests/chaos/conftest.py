"""Chaos tests: real servers stopped, restarted and killed under a live stream.

``make test`` runs them short (a ~5 s outage); ``pytest -m chaos`` or FLYTOWER_CHAOS_FULL=1
runs them at full length (the 30 s outage of issue 8).
"""

from __future__ import annotations

import os

import pytest


def full_length(config: pytest.Config) -> bool:
    """True under ``-m chaos`` or FLYTOWER_CHAOS_FULL=1."""
    expr = str(config.getoption("markexpr", "") or "")
    return os.environ.get("FLYTOWER_CHAOS_FULL") == "1" or "chaos" in expr.split()
