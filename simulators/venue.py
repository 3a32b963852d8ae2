"""Read a venue for the simulators: an expanded venue file, TOML or JSON, as plain data.

Simulators read the venue file on their own, like a test rig configured from the same drawing
as the real installation; they share no code with the service. Compact group specs are
expanded by ``flytower simulate`` (``edge.config.expand_venue``) before the runner sees them;
a file given here must already list its ``[[devices]]``. The children of a multi-process run
read the JSON the parent wrote.

    [[devices]]
    id = "hoist-1"
    transport = { kind = "modbus-tcp", host = "127.0.0.1", port = 15021, unit = 1 }
    simulate = { model = "hoist", start_position_mm = 2000, payload_kg = 180 }
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from simulators.core import SimulationError


def load(path: Path) -> dict[str, Any]:
    """The venue in ``path`` (``.json``: JSON, else TOML); SimulationError if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # TOMLDecodeError is a ValueError
        raise SimulationError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SimulationError(f"{path}: expected a table at the top")
    return data
