"""``flytower user`` and ``flytower token`` through ``edge.cli.main`` on a real venue file and
a real user store: what a command does is checked through :class:`edge.auth.AuthStore` (a
created user signs in, a revoked token is refused), what it prints through capsys. Every
refusal is one line on stderr with exit code 2, and hostile input (odd names, huge passwords,
unknown roles, control characters) never gets a traceback or a raw control character out.

Argon2 with the store's parameters costs 50 to 250 ms a hash, and every command that opens the
store pays at least one (the store's equal-time dummy): in this process the store hashes with
argon2's ``CHEAPEST`` parameters (still Argon2id, still verified), and the one test through a
real process (as ``make run`` calls it) keeps the real ones. The fuzzed names are refused before
the store is opened."""

from __future__ import annotations

import asyncio
import calendar
import io
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from argon2.profiles import CHEAPEST
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.auth import NAME_RE, AuthError, AuthStore, Role
from edge.cli import main
from tests.conftest import REPO

VENUE = """\
version = 1
[venue]
id = "test"
[[nodes]]
id = "stage"
[api]
host = "127.0.0.1"
port = 0
[mqtt]
mode = "off"
[telemetry]
store = "telemetry.sqlite3"
"""
PW = "correct horse battery"
PW2 = "staple 2 the moon"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@dataclass
class Ran:
    rc: int
    out: str
    err: str


Cli = Callable[..., Ran]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "edge.auth.PasswordHasher", lambda: PasswordHasher.from_parameters(CHEAPEST)
    )


@pytest.fixture
def venue(tmp_path: Path) -> Path:
    path = tmp_path / "venue.toml"
    path.write_text(VENUE)
    return path


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """``cli(*argv, stdin="", tty=False)``: run ``flytower`` with that stdin, capture it all."""

    def run(*argv: str | Path, stdin: str = "", tty: bool = False) -> Ran:
        monkeypatch.setattr("sys.stdin", Tty(stdin) if tty else io.StringIO(stdin))
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return Ran(rc, out, err)

    return run


@pytest.fixture
def store(venue: Path) -> AuthStore:
    """The venue's user store as the service opens it ([auth] path, relative to the venue)."""
    return AuthStore(venue.parent / "var" / "auth.sqlite3")


def refused(r: Ran, *words: str) -> None:
    """Exit code 2, nothing on stdout, one printable line on stderr naming ``words``."""
    assert r.rc == 2, r
    assert r.out == "", r
    assert r.err.endswith("\n") and r.err.count("\n") == 1, r.err
    assert r.err[:-1].isprintable(), r.err
    assert "Traceback" not in r.err
    for w in words:
        assert w in r.err, (w, r.err)


def login(store: AuthStore, name: str, password: str) -> Role:
    return asyncio.run(store.check_login(name, password)).role


def journal(venue: Path) -> list[tuple[str, str, str, str]]:
    with closing(sqlite3.connect(venue.parent / "telemetry.journal.sqlite3")) as db:
        rows = db.execute("SELECT source_kind, source, command, reason FROM journal ORDER BY seq")
        return [tuple(r) for r in rows]


def table(out: str) -> list[list[str]]:
    """A printed table's rows (after its header), split on runs of two or more spaces."""
    lines = out.splitlines()
    return [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]


# --- users ---------------------------------------------------------------------------------


def test_user_lifecycle(cli: Cli, venue: Path, store: AuthStore) -> None:
    outputs: list[str] = []

    def ok(*argv: str, stdin: str = "") -> Ran:
        r = cli(*argv, stdin=stdin)
        assert r.rc == 0, r
        outputs.extend([r.out, r.err])
        return r

    v = str(venue)
    r = ok("user", "add", v, "bob", "--role", "operator", "--password-stdin", stdin=PW + "\n")
    assert r.out == "user 'bob' added, role operator\n"
    assert login(store, "bob", PW) is Role.OPERATOR
    r = ok("user", "list", v)
    assert r.out.split()[:4] == ["NAME", "ROLE", "CREATED", "(UTC)"]
    [[name, role, created, disabled]] = table(r.out)
    assert (name, role, disabled) == ("bob", "operator", "no")
    assert ISO_UTC.match(created)
    assert abs(calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")) - time.time()) < 120

    r = ok("user", "passwd", v, "bob", "--password-stdin", stdin=PW2 + "\r\n")
    assert "signed out" in r.out
    with pytest.raises(AuthError):
        login(store, "bob", PW)
    assert login(store, "bob", PW2) is Role.OPERATOR

    ok("user", "role", v, "bob", "programmer")
    assert login(store, "bob", PW2) is Role.PROGRAMMER
    ok("user", "disable", v, "bob")
    assert table(ok("user", "list", v).out)[0][3] == "yes"
    with pytest.raises(AuthError):
        login(store, "bob", PW2)
    ok("user", "enable", v, "bob")
    assert login(store, "bob", PW2) is Role.PROGRAMMER
    ok("user", "remove", v, "bob")
    assert ok("user", "list", v).out.startswith("no users: add the first admin")
    assert store.users() == []
    refused(cli("user", "remove", v, "bob"), "no user 'bob'")

    for text in outputs:  # never a hash, never a password
        assert "$argon2" not in text and PW not in text and PW2 not in text
    commands = [(kind, cmd, reason) for kind, _, cmd, reason in journal(venue)]
    assert commands == [
        ("user", "auth.user.add", "bob (operator)"),
        ("user", "auth.user.passwd", "bob"),
        ("user", "auth.user.role", "bob (programmer)"),
        ("user", "auth.user.disable", "bob"),
        ("user", "auth.user.enable", "bob"),
        ("user", "auth.user.remove", "bob"),
    ]
    assert all(source.startswith("cli") for _, source, _, _ in journal(venue))


def test_password_asked_twice_on_a_terminal(
    cli: Cli, venue: Path, store: AuthStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers: list[str] = []
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        if not answers:
            raise EOFError
        return answers.pop(0)

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    add = ("user", "add", venue, "ann", "--role", "technician")

    answers[:] = [PW, PW + "!"]
    refused(cli(*add, tty=True), "differ")
    answers[:] = ["short", "short"]  # refused at once: not asked a second time
    refused(cli(*add, tty=True), "10 to 1024")
    assert answers == ["short"]
    answers[:] = []
    refused(cli(*add, tty=True), "no password given")
    assert store.users() == []

    prompts.clear()
    answers[:] = [PW, PW]
    r = cli(*add, tty=True)
    assert (r.rc, r.out) == (0, "user 'ann' added, role technician\n")
    assert len(prompts) == 2 and "'ann'" in prompts[0]
    assert login(store, "ann", PW) is Role.TECHNICIAN
    answers[:] = [PW2, PW2]
    assert cli("user", "passwd", venue, "ann", tty=True).rc == 0
    assert login(store, "ann", PW2) is Role.TECHNICIAN

    # No terminal and no --password-stdin: refused, the pipe is not read.
    r = cli("user", "passwd", venue, "ann", stdin=PW + "\n")
    refused(r, "not a terminal", "--password-stdin")
    assert sys.stdin.read() == PW + "\n"


def test_generate_prints_the_password_once_on_stdout(
    cli: Cli, venue: Path, store: AuthStore
) -> None:
    r = cli("user", "add", venue, "admin", "--role", "admin", "--generate")
    assert r.rc == 0
    password = r.out.removesuffix("\n")
    assert r.out == password + "\n" and re.fullmatch(r"[A-Za-z0-9_-]{20}", password)
    assert password not in r.err and "only this once" in r.err
    assert login(store, "admin", password) is Role.ADMIN

    r = cli("user", "passwd", venue, "admin", "--generate")
    new = r.out.removesuffix("\n")
    assert r.rc == 0 and len(new) == 20 and new != password
    assert login(store, "admin", new) is Role.ADMIN
    with pytest.raises(AuthError):
        login(store, "admin", password)

    with pytest.raises(SystemExit) as exc:  # two sources of a password: argparse's usage error
        cli("user", "passwd", venue, "admin", "--generate", "--password-stdin")
    assert exc.value.code == 2


def test_if_missing_leaves_an_existing_user_alone(cli: Cli, venue: Path, store: AuthStore) -> None:
    add = ("user", "add", venue, "admin", "--role", "admin", "--password-stdin", "--if-missing")
    r = cli(*add, stdin=PW + "\n")
    assert (r.rc, r.out) == (0, "user 'admin' added, role admin\n")
    r = cli(*add, stdin=PW2 + "\n")
    assert (r.rc, r.out) == (0, "")
    assert "exists: unchanged" in r.err
    assert sys.stdin.read() == PW2 + "\n"  # not even read
    r = cli("user", "add", venue, "admin", "--role", "viewer", "--generate", "--if-missing")
    assert (r.rc, r.out) == (0, "")  # `make run`: no second password printed
    assert login(store, "admin", PW) is Role.ADMIN  # neither password nor role changed
    with pytest.raises(AuthError):
        login(store, "admin", PW2)
    # Without --if-missing an existing user is a refusal, before any password is asked.
    r = cli("user", "add", venue, "admin", "--role", "admin", "--password-stdin", stdin=PW2)
    refused(r, "user 'admin' exists")
    assert [c for _, _, c, _ in journal(venue)] == ["auth.user.add"]


def test_make_run_style_generate_through_a_real_process(venue: Path, store: AuthStore) -> None:
    """As a Makefile runs it: a real process (the store's real Argon2 parameters), stdout a
    pipe, stdin not a terminal. (Its second run, a no-op, is test_if_missing's.)"""
    argv = [sys.executable, "-m", "edge.cli", "user", "add", str(venue), "admin"]
    argv += ["--role", "admin", "--generate", "--if-missing"]
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"[A-Za-z0-9_-]{20}\n", done.stdout)
    assert "Traceback" not in done.stderr and done.stdout.strip() not in done.stderr
    with closing(sqlite3.connect(store.path)) as db:
        hashed = db.execute("SELECT hash FROM users").fetchone()[0]
    assert hashed.startswith("$argon2id$") and ",p=4$" in hashed  # not this module's cheap one
    store.hasher = PasswordHasher()  # verify as the service would
    assert login(store, "admin", done.stdout.strip()) is Role.ADMIN


# --- tokens --------------------------------------------------------------------------------


def test_token_create_list_revoke(cli: Cli, venue: Path, store: AuthStore) -> None:
    assert cli("token", "list", venue).out.startswith("no tokens")
    r = cli("token", "create", venue, "show-script", "--role", "operator")
    assert r.rc == 0
    secret = r.out.removesuffix("\n")
    assert r.out == secret + "\n" and secret.startswith("ftt_")
    tid = re.search(r"token ([0-9a-f]{12}) created", r.err)
    assert tid is not None and secret not in r.err
    token_id = tid.group(1)
    p = store.authenticate(secret)
    assert (p.name, p.role, p.via, p.credential) == (
        "token:show-script",
        Role.OPERATOR,
        "token",
        token_id,
    )

    r = cli("token", "list", venue)
    [[rid, label, role, created, last_used, revoked]] = table(r.out)
    assert (rid, label, role, revoked) == (token_id, "show-script", "operator", "-")
    assert ISO_UTC.match(created) and ISO_UTC.match(last_used)  # authenticate used it
    assert secret not in r.out and secret[4:] not in r.out

    r = cli("token", "revoke", venue, token_id)
    assert r.rc == 0 and "revoked" in r.out
    with pytest.raises(AuthError, match="revoked"):
        store.authenticate(secret)
    assert ISO_UTC.match(table(cli("token", "list", venue).out)[0][5])
    refused(cli("token", "revoke", venue, token_id), "already revoked")
    refused(cli("token", "revoke", venue, "0123456789ab"), "no token '0123456789ab'")
    refused(cli("token", "revoke", venue, "x\ny\x00\x1b[2J" * 20), "no token", "…")
    # A console session's id is not a token's: the token command does not sign people out.
    cli("user", "add", venue, "bob", "--role", "viewer", "--password-stdin", stdin=PW)
    sid = store.authenticate(store.open_session("bob")[0]).credential
    assert sid is not None
    refused(cli("token", "revoke", venue, sid), "no token")
    assert [c for _, _, c, _ in journal(venue)] == [
        "auth.token.create",
        "auth.token.revoke",
        "auth.user.add",
    ]


# --- refusals ------------------------------------------------------------------------------

LONG = "p" * 2000
BAD_NAMES = ["a b", "a/b", "../etc", "a\x00b", "bob\n", "", "x" * 65, "é", "_x", "a\x1b[31m"]


@pytest.mark.parametrize(
    ("argv", "stdin", "words"),
    [
        *(
            (["user", "add", "{v}", n, "--role", "viewer", "--password-stdin"], PW, ["name "])
            for n in BAD_NAMES
        ),
        (["user", "add", "{v}", "bob", "--role", "root", "--password-stdin"], PW, ["'root'"]),
        (["user", "add", "{v}", "bob", "--role", "Admin", "--password-stdin"], PW, ["role"]),
        (["user", "add", "{v}", "bob", "--role", "admin\n", "--password-stdin"], PW, ["role"]),
        (["user", "add", "{v}", "bob", "--role", "", "--password-stdin"], PW, ["role ''"]),
        (["user", "add", "{v}", "bob", "--role", "viewer", "--password-stdin"], "short\n", ["10"]),
        (["user", "add", "{v}", "bob", "--role", "viewer", "--password-stdin"], LONG, ["1024"]),
        (["user", "add", "{v}", "bob", "--role", "viewer", "--password-stdin"], "", ["no pass"]),
        (["user", "add", "{v}", "bob", "--role", "viewer", "--password-stdin"], "\n", ["no pa"]),
        (["user", "passwd", "{v}", "ghost", "--password-stdin"], PW, ["no user 'ghost'"]),
        (["user", "passwd", "{v}", "a b", "--password-stdin"], PW, ["name 'a b'"]),
        (["user", "role", "{v}", "ghost", "admin"], "", ["no user 'ghost'"]),
        (["user", "role", "{v}", "ghost", "superuser"], "", ["unknown role 'superuser'"]),
        (["user", "disable", "{v}", "ghost"], "", ["no user 'ghost'"]),
        (["user", "enable", "{v}", "ghost"], "", ["no user 'ghost'"]),
        (["user", "remove", "{v}", "ghost"], "", ["no user 'ghost'"]),
        (["user", "remove", "{v}", "a/b"], "", ["name 'a/b'"]),
        (["token", "create", "{v}", "my script", "--role", "viewer"], "", ["label 'my script'"]),
        (["token", "create", "{v}", "s\x00", "--role", "viewer"], "", ["label 's\\x00'"]),
        (["token", "create", "{v}", "script", "--role", "god"], "", ["unknown role 'god'"]),
    ],
)
def test_refusals_are_one_line(
    cli: Cli, venue: Path, argv: list[str], stdin: str, words: list[str]
) -> None:
    r = cli(*(str(venue) if a == "{v}" else a for a in argv), stdin=stdin)
    refused(r, *words)
    assert r.err.startswith(f"flytower {argv[0]} {argv[1]}: ")
    assert LONG not in r.err and PW not in r.err


def test_one_line_also_for_a_long_password_on_a_terminal(
    cli: Cli, venue: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("getpass.getpass", lambda prompt="": LONG)
    refused(cli("user", "add", venue, "bob", "--role", "viewer", tty=True), "1024")


@pytest.mark.parametrize("cmd", [["user", "list"], ["token", "list"], ["user", "remove"]])
def test_venue_problems(cli: Cli, tmp_path: Path, cmd: list[str]) -> None:
    extra = ["bob"] if cmd[1] == "remove" else []
    missing = tmp_path / "nowhere.toml"
    refused(cli(*cmd, missing, *extra), "nowhere.toml", "cannot read")
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 1\n[venue\n")
    refused(cli(*cmd, bad, *extra), "TOML syntax")
    invalid = tmp_path / "invalid.toml"
    invalid.write_text(VENUE + "[auth]\nenabled = 'maybe'\nsession_ttl_s = -1\nbogus = 1\n")
    refused(cli(*cmd, invalid, *extra), "invalid.toml", "more problem(s)", "flytower check")
    off = tmp_path / "off.toml"
    off.write_text(VENUE + "[auth]\nenabled = false\n")
    refused(cli(*cmd, off, *extra), "access control is off", "enabled = false")
    assert not (tmp_path / "var").exists()  # nothing created for a venue without auth


def test_access_control_off_refuses_every_command(cli: Cli, tmp_path: Path) -> None:
    off = tmp_path / "venue.toml"
    off.write_text(VENUE + "[auth]\nenabled = false\n")
    for argv in (
        ["user", "add", off, "bob", "--role", "admin", "--generate"],
        ["user", "add", off, "bob", "--role", "admin", "--generate", "--if-missing"],
        ["user", "passwd", off, "bob", "--generate"],
        ["user", "role", off, "bob", "admin"],
        ["user", "disable", off, "bob"],
        ["user", "enable", off, "bob"],
        ["token", "create", off, "script", "--role", "viewer"],
        ["token", "revoke", off, "0123456789ab"],
    ):
        refused(cli(*argv), "access control is off")
    assert not (tmp_path / "var").exists()


def test_a_store_file_that_cannot_be_used(cli: Cli, venue: Path) -> None:
    var = venue.parent / "var"
    var.mkdir()
    (var / "auth.sqlite3").write_bytes(b"this is not a database, " * 100)
    refused(cli("user", "list", venue), "auth.sqlite3", "cannot open the user store")
    (var / "auth.sqlite3").unlink()
    (var / "auth.sqlite3").mkdir()  # a directory where the file should be
    refused(cli("token", "list", venue), "cannot open the user store")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=st.text(max_size=80))
def test_fuzzed_names_are_refused_on_one_line(cli: Cli, venue: Path, name: str) -> None:
    if NAME_RE.fullmatch(name) or name.startswith("-"):  # valid, or an option to argparse
        return
    for argv in (
        ["user", "role", venue, name, "viewer"],
        ["token", "create", venue, name, "--role", name],
    ):
        refused(cli(*argv), "'")
