"""``flytower user`` and ``flytower token``: the console's users and the scripts' API tokens,
from the command line (docs/api.md, "Users and API tokens (the command line)").

::

    flytower user add VENUE NAME --role ROLE [--password-stdin | --generate] [--if-missing]
    flytower user list VENUE
    flytower user passwd VENUE NAME [--password-stdin | --generate]
    flytower user role VENUE NAME ROLE
    flytower user disable|enable|remove VENUE NAME
    flytower token create VENUE LABEL --role ROLE
    flytower token list VENUE
    flytower token revoke VENUE ID

Everything is done through :class:`edge.auth.AuthStore` on the venue's ``[auth] path``, the
file the running service reads: a user added, disabled or demoted, or a token revoked, here
takes effect in the service at its next request, without a restart.

- **Passwords** are asked twice with ``getpass`` on a terminal, or read as one line from stdin
  with ``--password-stdin`` (scripts, Makefiles: only the line's end is removed, so spaces
  are kept), or made with ``--generate`` (``secrets.token_urlsafe(15)``, 20 characters) and
  printed once. Without a terminal and without either flag the command refuses rather than
  read a password from a pipe that was not meant for it.
- **Secrets go to stdout alone** (a generated password, a new token's secret), one line, so
  ``$(flytower token create …)`` captures exactly the secret; what the command did goes to
  stderr then. Otherwise a confirmation or a table goes to stdout. No command prints a
  password hash or an existing secret: the store keeps only hashes and digests.
- **Refusals** (a bad name, a short or long password, an unknown role or user, passwords that
  differ, a venue file missing or invalid, a venue whose access control is off, a store file
  that cannot be opened) are one line on stderr and exit code 2; user input is echoed only
  escaped (``repr``), so a hostile name cannot write a second line or a terminal escape.
- **Journal**: every change is journalled as the API's are (``auth.user.add``,
  ``auth.token.revoke``, …, source ``cli <login>``). The change is made first; a journal that
  cannot be written is a warning, not a refusal.
"""

from __future__ import annotations

import argparse
import getpass
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.auth import AuthStore, Role
    from edge.config import Venue

REFUSED = 2  # exit code of every refusal
GENERATED_BYTES = 15  # secrets.token_urlsafe(15): 120 bits, 20 characters


class Refused(Exception):
    """The command cannot be done; the message (one line) says why."""


Action = Callable[[argparse.Namespace], int]


def add_user_arguments(parser: argparse.ArgumentParser) -> None:
    """``flytower user …``: the console's users."""
    sub = parser.add_subparsers(dest="user_cmd", required=True)
    p = sub.add_parser(
        "add",
        help="add a user (the password: asked twice, --password-stdin or --generate)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("venue", type=Path)
    p.add_argument("name")
    # Roles are checked by the command, not argparse's choices: a bad one is a one-line error.
    p.add_argument("--role", required=True, help="viewer|operator|technician|programmer|admin")
    _password_arguments(p)
    p.add_argument(
        "--if-missing", action="store_true", help="exit 0 without change if the user exists"
    )
    p.set_defaults(fn=_guarded(_user_add))
    p = sub.add_parser("list", help="the users: name, role, created (UTC), disabled")
    p.add_argument("venue", type=Path)
    p.set_defaults(fn=_guarded(_user_list))
    p = sub.add_parser("passwd", help="set a user's password (signs their sessions out)")
    p.add_argument("venue", type=Path)
    p.add_argument("name")
    _password_arguments(p)
    p.set_defaults(fn=_guarded(_user_passwd))
    p = sub.add_parser("role", help="set a user's role (effective at their next request)")
    p.add_argument("venue", type=Path)
    p.add_argument("name")
    p.add_argument("role", help="viewer|operator|technician|programmer|admin")
    p.set_defaults(fn=_guarded(_user_role))
    for name, help_text, action in (
        ("disable", "disable a user (signs their sessions out)", _user_disable),
        ("enable", "enable a disabled user", _user_enable),
        ("remove", "remove a user (signs their sessions out)", _user_remove),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("venue", type=Path)
        p.add_argument("name")
        p.set_defaults(fn=_guarded(action))


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    """``flytower token …``: API tokens for scripts."""
    sub = parser.add_subparsers(dest="token_cmd", required=True)
    p = sub.add_parser(
        "create",
        help="a new API token: its secret on stdout (shown once), its id on stderr",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("venue", type=Path)
    p.add_argument("label", help="what the token is for, e.g. show-script")
    p.add_argument("--role", required=True, help="viewer|operator|technician|programmer|admin")
    p.set_defaults(fn=_guarded(_token_create))
    p = sub.add_parser("list", help="the tokens: id, label, role, created, last used, revoked")
    p.add_argument("venue", type=Path)
    p.set_defaults(fn=_guarded(_token_list))
    p = sub.add_parser("revoke", help="revoke a token (refused from its next request)")
    p.add_argument("venue", type=Path)
    p.add_argument("id", help="the token's id (flytower token list)")
    p.set_defaults(fn=_guarded(_token_revoke))


def _password_arguments(p: argparse.ArgumentParser) -> None:
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--password-stdin", action="store_true", help="read the password as one line from stdin"
    )
    how.add_argument(
        "--generate",
        action="store_true",
        help="generate a strong random password and print it once on stdout",
    )


def _guarded(action: Action) -> Action:
    """``action`` with every refusal turned into one line on stderr and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        from edge.auth import AuthError

        what = f"flytower {args.cmd} {args.user_cmd if args.cmd == 'user' else args.token_cmd}"
        try:
            return action(args)
        except (Refused, AuthError) as exc:
            print(f"{what}: {_one_line(str(exc))}", file=sys.stderr)
        except sqlite3.Error as exc:  # locked past the busy timeout, disk full …
            print(f"{what}: the user store: {_one_line(str(exc))}", file=sys.stderr)
        except OSError as exc:  # a closed stdout (| head), a journal folder not writable …
            print(f"{what}: {_one_line(str(exc))}", file=sys.stderr)
        return REFUSED

    return run


# --- users ---------------------------------------------------------------------------------


def _user_add(args: argparse.Namespace) -> int:
    from edge.auth import AuthError

    name = _name(args.name)
    role = _role(args.role)
    venue, store = _open(args.venue)
    if _exists(store, name):
        if args.if_missing:
            print(f"user '{name}' exists: unchanged (--if-missing)", file=sys.stderr)
            return 0
        raise Refused(f"user '{name}' exists")
    password = _password(args, name)
    try:
        store.add_user(name, role, password)
    except AuthError:
        if args.if_missing and _exists(store, name):  # added meanwhile, by someone else
            print(f"user '{name}' exists: unchanged (--if-missing)", file=sys.stderr)
            return 0
        raise
    done = f"user '{name}' added, role {role.value}"
    if args.generate:
        print(password)
        print(f"{done}; the password above is shown only this once", file=sys.stderr)
    else:
        print(done)
    _journal(venue, "auth.user.add", f"{name} ({role.value})")
    return 0


def _user_list(args: argparse.Namespace) -> int:
    _, store = _open(args.venue)
    users = store.users()
    if not users:
        print(
            f"no users: add the first admin with flytower user add {args.venue} NAME --role admin"
        )
        return 0
    rows = [
        [u["name"], u["role"], _iso(u["created"]), "yes" if u["disabled"] else "no"] for u in users
    ]
    _table(["NAME", "ROLE", "CREATED (UTC)", "DISABLED"], rows)
    return 0


def _user_passwd(args: argparse.Namespace) -> int:
    name = _name(args.name)
    venue, store = _open(args.venue)
    if not _exists(store, name):
        raise Refused(f"no user '{name}'")
    password = _password(args, name)
    store.set_password(name, password)
    if args.generate:
        print(password)
        print(f"password of '{name}' set; it is shown above only this once", file=sys.stderr)
    else:
        print(f"password of '{name}' set; their console sessions are signed out")
    _journal(venue, "auth.user.passwd", name)
    return 0


def _user_role(args: argparse.Namespace) -> int:
    name = _name(args.name)
    role = _role(args.role)
    venue, store = _open(args.venue)
    store.set_role(name, role)
    print(f"user '{name}' is now {role.value}, from their next request")
    _journal(venue, "auth.user.role", f"{name} ({role.value})")
    return 0


def _user_disable(args: argparse.Namespace) -> int:
    name = _name(args.name)
    venue, store = _open(args.venue)
    store.set_disabled(name, True)
    print(f"user '{name}' disabled; their console sessions are signed out")
    _journal(venue, "auth.user.disable", name)
    return 0


def _user_enable(args: argparse.Namespace) -> int:
    name = _name(args.name)
    venue, store = _open(args.venue)
    store.set_disabled(name, False)
    print(f"user '{name}' enabled")
    _journal(venue, "auth.user.enable", name)
    return 0


def _user_remove(args: argparse.Namespace) -> int:
    name = _name(args.name)
    venue, store = _open(args.venue)
    store.remove_user(name)
    print(f"user '{name}' removed; their console sessions are signed out")
    _journal(venue, "auth.user.remove", name)
    return 0


# --- tokens --------------------------------------------------------------------------------


def _token_create(args: argparse.Namespace) -> int:
    label = _name(args.label, "label")
    role = _role(args.role)
    venue, store = _open(args.venue)
    tid, secret = store.create_token(label, role)
    print(secret)
    print(
        f"token {tid} created: label '{label}', role {role.value}; its secret above is shown "
        f"only this once (revoke with: flytower token revoke {args.venue} {tid})",
        file=sys.stderr,
    )
    _journal(venue, "auth.token.create", f"{label} ({role.value})")
    return 0


def _token_list(args: argparse.Namespace) -> int:
    _, store = _open(args.venue)
    tokens = store.tokens()
    if not tokens:
        print(f"no tokens: create one with flytower token create {args.venue} LABEL --role ROLE")
        return 0
    rows = [
        [
            t["id"],
            t["name"],
            t["role"],
            _iso(t["created"]),
            _iso(t["last_used"]),
            _iso(t["revoked"]),
        ]
        for t in tokens
    ]
    _table(["ID", "LABEL", "ROLE", "CREATED (UTC)", "LAST USED (UTC)", "REVOKED (UTC)"], rows)
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    tid: str = args.id
    venue, store = _open(args.venue)
    # Only a token: a console session is signed out by its user, or by disabling the user.
    token = next((t for t in store.tokens() if t["id"] == tid), None)
    if token is None:
        raise Refused(f"no token {_show(tid)} (flytower token list {args.venue} shows them)")
    if token["revoked"] is not None:
        raise Refused(f"token {tid} was already revoked at {_iso(token['revoked'])}")
    store.revoke(tid)
    print(f"token {tid} ('{token['name']}') revoked: refused from its next request")
    _journal(venue, "auth.token.revoke", tid)
    return 0


# --- shared --------------------------------------------------------------------------------


def _open(venue_path: Path) -> tuple[Venue, AuthStore]:
    """The venue and its user store, or :class:`Refused` saying why not."""
    from drivers.model import ConfigError
    from edge.auth import AuthStore
    from edge.config import load_venue

    try:
        venue = load_venue(venue_path)
    except ConfigError as exc:
        problems = exc.problems or ["not a valid venue"]
        more = len(problems) - 1
        tail = f" (and {more} more problem(s): flytower check {venue_path})" if more else ""
        raise Refused(f"{exc.path}: {problems[0]}{tail}") from None
    auth = venue.config.auth
    if not auth.enabled:
        raise Refused(
            f"{venue_path}: access control is off in this venue ([auth] enabled = false): "
            "it has no users or tokens; set enabled = true to use them"
        )
    path = venue.resolve(auth.path)
    try:
        return venue, AuthStore(path, auth.session_ttl_s)
    except (sqlite3.Error, OSError) as exc:
        raise Refused(f"{path}: cannot open the user store: {exc}") from None


def _exists(store: AuthStore, name: str) -> bool:
    return any(u["name"] == name for u in store.users())


def _name(text: str, what: str = "name") -> str:
    """``text`` if it is a valid user name or token label, else :class:`AuthError`."""
    from edge.auth import NAME_RE, AuthError, check_name

    # fullmatch: NAME_RE.match ($) would let a name end with a newline.
    if NAME_RE.fullmatch(text) is None:
        try:
            check_name("")
        except AuthError as exc:
            raise AuthError(f"{what} {_show(text)}: {exc}") from None
    return check_name(text)


def _role(text: str) -> Role:
    from edge.auth import AuthError, Role, role_of

    try:
        return role_of(text)
    except AuthError:  # role_of echoes the text raw: say it again, escaped
        roles = ", ".join(r.value for r in Role)
        raise AuthError(f"unknown role {_show(text)} (one of {roles})") from None


def _password(args: argparse.Namespace, name: str) -> str:
    """A new password: generated, one line of stdin, or asked twice on the terminal."""
    import secrets

    from edge.auth import MAX_PASSWORD, check_password

    if args.generate:
        return secrets.token_urlsafe(GENERATED_BYTES)
    stdin = sys.stdin
    if args.password_stdin:
        if stdin is None:
            raise Refused("no stdin to read the password from")
        try:
            # A bounded read: a longer line is refused by its length, not held in memory.
            line = stdin.readline(MAX_PASSWORD + 3)
        except UnicodeDecodeError:
            raise Refused("the password on stdin is not UTF-8 text") from None
        if not line.strip("\r\n"):
            raise Refused("no password on stdin (--password-stdin reads one line)")
        return check_password(line.removesuffix("\n").removesuffix("\r"))
    if stdin is None or not stdin.isatty():
        raise Refused(
            "stdin is not a terminal to ask the password on: "
            "give it as one line on stdin with --password-stdin, or use --generate"
        )
    try:
        first = getpass.getpass(f"New password for '{name}': ")
        check_password(first)
        second = getpass.getpass("Again: ")
    except EOFError:
        raise Refused("no password given") from None
    if first != second:
        raise Refused("the two passwords differ: nothing was changed")
    return first


def _journal(venue: Venue, command: str, reason: str) -> None:
    """Journal a change made here, as the API journals its own; a warning if it cannot be."""
    import asyncio

    from controller.journal import JournalEvent, Result, SourceKind
    from edge.journal import JournalStore, journal_path

    try:
        who = f"cli {getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        who = "cli"

    async def append() -> None:
        now = time.time()
        event = JournalEvent(SourceKind.USER, who, command, Result.OK, now, now, reason=reason)
        async with JournalStore(journal_path(venue.store_path)) as journal:
            await journal.append(event)

    try:
        asyncio.run(append())
    except (OSError, sqlite3.Error, RuntimeError, ValueError) as exc:
        print(f"warning: done, but not journalled: {_one_line(str(exc))}", file=sys.stderr)


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(header: list[str], rows: list[list[Any]]) -> None:
    cells = [header, *([str(c) for c in r] for r in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _show(text: str, limit: int = 40) -> str:
    """User input, quoted and escaped (a newline, NUL or terminal escape stays visible)."""
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


def _one_line(text: str) -> str:
    """``text`` with every non-printable character (a line break, a NUL) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
