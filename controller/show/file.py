"""Reading, checking and atomically writing show files.

- ``load_show`` / ``loads_show`` / ``parse_show`` read a show: TOML syntax, then migrations to
  the current version (``controller.show.migrate``), then the model, then the checks against
  the show itself and the caller's ``Catalogue``. Every problem is reported at once in one
  ``ShowError`` whose lines are ``file: key.path: what``.
- ``save_show`` validates first and writes only a valid show: to a temporary file in the same
  folder, fsynced, renamed over the old file, then the folder fsynced. A crash at any moment
  leaves either the old file or the new one, never a mixture; a show that fails validation
  leaves the old file untouched. ``edit_show`` is a read-modify-write on top.

Saving rewrites the file from the model: the content is kept, comments and key order are not.
"""

from __future__ import annotations

import copy
import os
import stat
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from drivers.model import ConfigError

from .check import Catalogue, check_show
from .migrate import MigrationError, migrate
from .model import Show, format_cue_number, parse_cue_number

MAX_FILE_BYTES = 16 * 1024 * 1024
"""A show file larger than this is refused before it is parsed."""

_MESSAGES = {
    "extra_forbidden": "unknown key (not part of the show format)",
    "missing": "required key is missing",
}


class ShowError(ConfigError):
    """A show that cannot be used. ``problems`` are 'key.path: what' lines; ``str()`` gives
    them as 'file: key.path: what', one per line."""


def load_show(path: Path | str, catalogue: Catalogue | None = None) -> Show:
    """Read, migrate and validate the show file at ``path``."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ShowError(path, [f"cannot read: {exc.strerror or exc}"]) from exc
    return loads_show(raw, path, catalogue)


def loads_show(
    text: bytes | str, source: Path | str = "<show>", catalogue: Catalogue | None = None
) -> Show:
    """Parse show file content; ``source`` names it in errors."""
    return parse_show(_toml(text, source), source, catalogue)


def parse_show(
    data: Mapping[str, Any], source: Path | str = "<show>", catalogue: Catalogue | None = None
) -> Show:
    """Migrate and validate already-parsed show data (a TOML document as a dict)."""
    if not isinstance(data, Mapping):
        raise ShowError(source, ["(top level): expected a table"])
    try:
        current, _ = migrate(dict(data))
    except MigrationError as exc:
        raise ShowError(source, exc.problems) from exc
    except RecursionError as exc:  # data built by a program, nested beyond any show
        raise ShowError(source, ["(top level): nested too deeply"]) from exc
    try:
        show = Show.model_validate(current)
    except ValidationError as exc:
        raise ShowError(source, format_errors(exc, current)) from exc
    problems = check_show(show, catalogue)
    if problems:
        raise ShowError(source, problems)
    return show


def _toml(text: bytes | str, source: Path | str) -> dict[str, Any]:
    if isinstance(text, bytes):
        if len(text) > MAX_FILE_BYTES:
            raise ShowError(source, [f"larger than {MAX_FILE_BYTES} bytes"])
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ShowError(source, [f"not UTF-8 text (byte {exc.start})"]) from exc
    elif len(text) > MAX_FILE_BYTES:
        raise ShowError(source, [f"larger than {MAX_FILE_BYTES} characters"])
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ShowError(source, [f"TOML syntax: {exc}"]) from exc
    except RecursionError as exc:  # pathologically nested arrays
        raise ShowError(source, ["TOML syntax: nested too deeply"]) from exc


# --- error paths ------------------------------------------------------------------------------


def format_errors(exc: ValidationError, data: Any) -> list[str]:
    """pydantic's errors as 'key.path: what' lines, with cue lists named by id and cues by
    number (``lists[main].cues[12.5].actions[0].level``), as ``check_show`` names them."""
    lines: list[str] = []
    for err in exc.errors():
        key = _key(err["loc"], data)
        msg = _MESSAGES.get(err["type"], err["msg"].removeprefix("Value error, "))
        line = f"{key}: {msg}"
        if line not in lines:
            lines.append(line)
    return lines


def _key(loc: tuple[int | str, ...], data: Any) -> str:
    out = ""
    cur: Any = data
    parent: int | str | None = None
    for elem in loc:
        if isinstance(elem, int):
            label = str(elem)
            item = cur[elem] if isinstance(cur, list) and 0 <= elem < len(cur) else None
            if isinstance(item, dict):
                label = _item_label(parent, item) or label
            out += f"[{label}]"
            cur = item
        else:
            if isinstance(cur, dict) and elem not in cur and cur.get("kind") == elem:
                continue  # pydantic's discriminator step: not a key of the file
            out += f".{elem}" if out else elem
            cur = cur.get(elem) if isinstance(cur, dict) else None
        parent = elem
    return out or "(top level)"


def _item_label(parent: int | str | None, item: dict[str, Any]) -> str | None:
    if parent == "lists":
        ident = item.get("id")
        if isinstance(ident, str) and 0 < len(ident) <= 64 and ident.isprintable():
            return ident
    elif parent == "cues":
        try:
            return format_cue_number(parse_cue_number(item.get("number")))
        except ValueError:
            return None
    elif parent == "parts":
        part = item.get("part")
        if isinstance(part, int) and not isinstance(part, bool) and 1 <= part <= 99:
            return str(part)
    return None


# --- writing ----------------------------------------------------------------------------------


def show_data(show: Show) -> dict[str, Any]:
    """The show as file data (what ``dumps_show`` writes): defaults and empty values left out."""
    data: dict[str, Any] = show.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
    data.pop("version", None)
    return {"version": show.version, **_kind_first(data)}


def _kind_first(value: Any) -> Any:
    """Put an action's ``kind`` first, where a person looks for it."""
    if isinstance(value, dict):
        out = {k: _kind_first(v) for k, v in value.items()}
        return {"kind": out.pop("kind"), **out} if "kind" in out else out
    if isinstance(value, list):
        return [_kind_first(v) for v in value]
    return value


def dumps_show(show: Show) -> str:
    """The TOML text of ``show``; reading it back gives an equal ``Show``."""
    return tomli_w.dumps(show_data(show))


def save_show(
    path: Path | str, show: Show | Mapping[str, Any], catalogue: Catalogue | None = None
) -> Show:
    """Validate ``show`` (a model or file data) and, only if it is valid, replace the file at
    ``path`` atomically. Returns the validated show; raises ShowError and leaves the file as
    it was otherwise."""
    path = Path(os.path.realpath(path))  # replace a symlink's target, not the link
    data = show_data(show) if isinstance(show, Show) else dict(show)
    checked = parse_show(data, path, catalogue)
    text = dumps_show(checked)
    if parse_show(tomllib.loads(text), path) != checked:  # pragma: no cover - a model bug
        raise ShowError(path, ["(internal): the written form does not read back equal"])
    atomic_write(path, text.encode("utf-8"))
    return checked


def edit_show(
    path: Path | str,
    change: Callable[[dict[str, Any]], dict[str, Any] | None],
    catalogue: Catalogue | None = None,
) -> Show:
    """Read the show at ``path``, let ``change`` edit its data (in place, or return new data),
    validate and save atomically. A failure anywhere leaves the file untouched.

    One writer at a time: the controller owns the show file while it runs it."""
    current = load_show(path, catalogue)
    data = copy.deepcopy(show_data(current))
    result = change(data)
    return save_show(path, data if result is None else result, catalogue)


def atomic_write(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` so that a crash leaves the old or the new file whole.

    A temporary file in the same folder (a rename is atomic only within one file system) is
    written, flushed to disk, renamed over ``path``, and the folder is flushed so the rename
    itself survives a power cut. The old file's permissions are kept. A temporary file left by
    a killed writer is named ``.{name}.*.tmp`` and never read."""
    folder = path.parent
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - a platform without directory handles
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
