"""The show: cue lists of cues whose actions drive every subsystem, and its file.

- ``model``: the typed, frozen show model (``Show`` > ``CueList`` > ``Cue`` > ``Part`` /
  actions) — what the playback engine reads;
- ``check``: the checks that need the whole show or the venue (``Catalogue``);
- ``migrate``: older file versions brought to the current one;
- ``file``: load (all problems at once, in one ``ShowError``) and atomic save / edit.

The file format is docs/interfaces/show-file.md.
"""

from .check import DEFAULT_SOUNDFIELD_MODES, Catalogue, check_show
from .file import ShowError, dumps_show, edit_show, load_show, loads_show, parse_show, save_show
from .migrate import MIGRATIONS, MigrationError, migrate
from .model import (
    ACTION_KINDS,
    SHOW_VERSION,
    Action,
    Cue,
    CueList,
    Curve,
    ListMode,
    Part,
    Show,
    format_cue_number,
    parse_cue_number,
)

__all__ = [
    "ACTION_KINDS",
    "DEFAULT_SOUNDFIELD_MODES",
    "MIGRATIONS",
    "SHOW_VERSION",
    "Action",
    "Catalogue",
    "Cue",
    "CueList",
    "Curve",
    "ListMode",
    "MigrationError",
    "Part",
    "Show",
    "ShowError",
    "check_show",
    "dumps_show",
    "edit_show",
    "format_cue_number",
    "load_show",
    "loads_show",
    "migrate",
    "parse_cue_number",
    "parse_show",
    "save_show",
]
