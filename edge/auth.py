"""Who may do what: users, roles, console sessions, API tokens, and the login rate limit.

- **Roles** (docs/api.md "Access control"): viewer, operator (runs the show), technician
  (maintenance and device configuration), programmer (edits shows), admin. A role grants
  permissions; a route or a WebSocket message needs one of a set of permissions
  (``edge/api_auth.py`` holds that table). Stopping is never refused to a signed-in person:
  every role may stop, E-stop and panic.
- **Passwords** are hashed with Argon2id (argon2-cffi, RFC 9106 parameters); a hash is
  upgraded at the next login when the parameters change. Verification runs in a worker
  thread: it takes tens of milliseconds on purpose and must not stall the show's event loop.
- **Credentials** are random bearer secrets (``fts_…`` for a console session, ``ftt_…`` for
  a script's API token), 256 bits from ``secrets``. Only their SHA-256 is stored, so a copy of
  the database signs nobody in. A session lasts ``session_ttl_s``; an API token until revoked.
  A session takes its user's role at every request, so a demoted or disabled user loses their
  rights at once.
- **Storage** is one SQLite file (``[auth] path``, WAL), shared by the service and the CLI
  (``flytower user``, ``flytower token``): a token revoked from the CLI is refused by the
  running service at its next request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
SESSION_PREFIX = "fts_"
TOKEN_PREFIX = "ftt_"
LAST_USED_EVERY_S = 60.0  # a credential's last use is written at most this often
CACHE_S = LAST_USED_EVERY_S  # a credential's check is reused for at most this long


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    TECHNICIAN = "technician"
    PROGRAMMER = "programmer"
    ADMIN = "admin"


class Permission(StrEnum):
    READ = "read"  # see everything but credentials
    STOP = "stop"  # stop, E-stop, panic: every role
    RUN = "run"  # run the show: GO, moves, enables, recalls, E-stop reset
    MAINTAIN = "maintain"  # maintenance, work orders, alarm handling, device configuration
    PROGRAM = "program"  # edit shows and configurations
    ADMIN = "admin"  # users and tokens


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ, Permission.STOP}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.STOP, Permission.RUN}),
    Role.TECHNICIAN: frozenset({Permission.READ, Permission.STOP, Permission.MAINTAIN}),
    Role.PROGRAMMER: frozenset(
        {Permission.READ, Permission.STOP, Permission.RUN, Permission.PROGRAM}
    ),
    Role.ADMIN: frozenset(Permission),
}


class AuthError(Exception):
    """A credential, name, password or role that cannot be accepted; the message says why."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking. ``via``: "session" (the console), "token" (a script), "open" (auth off)."""

    name: str
    role: Role
    via: str
    credential: str | None = None  # the credential's id: a session or token to revoke

    def may(self, needed: frozenset[Permission]) -> bool:
        return bool(GRANTS[self.role] & needed)


OPEN = Principal("anonymous", Role.ADMIN, "open")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise AuthError(
            "a name is 1 to 64 letters, digits, '_', '.', '@' or '-', starting with a letter "
            "or digit"
        )
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AuthError(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def role_of(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        raise AuthError(
            f"unknown role '{text[:40]}' (one of {', '.join(r.value for r in Role)})"
        ) from None


SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash TEXT NOT NULL,
    created REAL NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS credentials (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('session', 'token')),
    name TEXT NOT NULL,          -- the user of a session, the label of a token
    role TEXT,                   -- a token's own role; a session takes its user's
    created REAL NOT NULL,
    expires REAL,
    revoked REAL,
    last_used REAL
);
"""


class AuthStore:
    """Users and credentials in one SQLite file. Every method is short and synchronous except
    the password checks, which are ``async`` and run Argon2 in a worker thread."""

    def __init__(self, path: Path, session_ttl_s: float = 12 * 3600) -> None:
        self.path = path
        self.session_ttl_s = session_ttl_s
        self.hasher = PasswordHasher()
        self._dummy: str | None = None  # a hash to check unknown users against: equal time
        self._used: dict[str, float] = {}
        self._conn: sqlite3.Connection | None = None
        self._cache: dict[str, tuple[float, Principal]] = {}  # digest -> (valid until, who)
        self._version = -1
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """The store's one connection (autocommit; every statement is its own transaction),
        opened at first use: a request's check is one indexed lookup, not a new connection."""
        if self._conn is None:
            self._conn = sqlite3.connect(
                self.path, timeout=5, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # a revocation survives a power cut
            self._conn.execute("PRAGMA busy_timeout=5000")
        yield self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- users -----------------------------------------------------------------------------

    def add_user(self, name: str, role: Role, password: str) -> None:
        check_name(name)
        check_password(password)
        with self._db() as db:
            try:
                db.execute(
                    "INSERT INTO users (name, role, hash, created) VALUES (?, ?, ?, ?)",
                    (name, role.value, self.hasher.hash(password), time.time()),
                )
            except sqlite3.IntegrityError:
                raise AuthError(f"user '{name}' exists") from None

    def set_password(self, name: str, password: str) -> None:
        check_password(password)
        self._update_user(name, "hash = ?", self.hasher.hash(password))
        self._revoke_sessions(name)

    def set_role(self, name: str, role: Role) -> None:
        self._update_user(name, "role = ?", role.value)

    def set_disabled(self, name: str, disabled: bool) -> None:
        self._update_user(name, "disabled = ?", int(disabled))
        if disabled:
            self._revoke_sessions(name)

    def remove_user(self, name: str) -> None:
        with self._db() as db:
            if db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise AuthError(f"no user '{name}'")
        self._revoke_sessions(name)

    def users(self) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT name, role, created, disabled FROM users ORDER BY name")
            return [
                {"name": n, "role": r, "created": c, "disabled": bool(d)} for n, r, c, d in rows
            ]

    def has_users(self) -> bool:
        with self._db() as db:
            return db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None

    def _update_user(self, name: str, assignment: str, value: object) -> None:
        self._cache.clear()
        with self._db() as db:
            cur = db.execute(f"UPDATE users SET {assignment} WHERE name = ?", (value, name))
            if cur.rowcount == 0:
                raise AuthError(f"no user '{name}'")

    def _revoke_sessions(self, name: str) -> None:
        self._cache.clear()
        with self._db() as db:
            db.execute(
                "UPDATE credentials SET revoked = ? WHERE kind = 'session' AND name = ? "
                "AND revoked IS NULL",
                (time.time(), name),
            )

    # --- passwords ---------------------------------------------------------------------------

    async def check_login(self, name: str, password: str) -> Principal:
        """The user, if ``password`` is theirs and they are enabled; else ``AuthError`` with
        one message for every reason, so a caller cannot probe which names exist."""
        with self._db() as db:
            row = db.execute(
                "SELECT role, hash, disabled FROM users WHERE name = ?", (name,)
            ).fetchone()
        if row is None and self._dummy is None:
            self._dummy = self.hasher.hash(secrets.token_hex(16))
        stored = row[1] if row else self._dummy
        assert stored is not None
        ok = len(password) <= MAX_PASSWORD and await asyncio.to_thread(
            self._verify, stored, password
        )
        if row is None or not ok or row[2]:
            raise AuthError("wrong name or password")
        if self.hasher.check_needs_rehash(stored):
            self._update_user(name, "hash = ?", self.hasher.hash(password))
        return Principal(name, Role(row[0]), "session")

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    # --- credentials -------------------------------------------------------------------------

    def open_session(self, name: str) -> tuple[str, float]:
        """A new console session of ``name``: (its secret, its expiry in epoch seconds)."""
        secret = SESSION_PREFIX + secrets.token_urlsafe(32)
        expires = time.time() + self.session_ttl_s
        self._insert(secret, "session", name, None, expires)
        return secret, expires

    def create_token(self, label: str, role: Role) -> tuple[str, str]:
        """A new API token: (its id, its secret). The secret is shown once, never stored."""
        check_name(label)
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        return self._insert(secret, "token", label, role.value, None), secret

    def _insert(
        self, secret: str, kind: str, name: str, role: str | None, expires: float | None
    ) -> str:
        cid = secrets.token_hex(6)
        with self._db() as db:
            db.execute(
                "INSERT INTO credentials (id, digest, kind, name, role, created, expires) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (cid, digest(secret), kind, name, role, time.time(), expires),
            )
        return cid

    def revoke(self, cid: str) -> None:
        self._cache.clear()
        with self._db() as db:
            cur = db.execute(
                "UPDATE credentials SET revoked = ? WHERE id = ? AND revoked IS NULL",
                (time.time(), cid),
            )
            if cur.rowcount == 0:
                raise AuthError(f"no live credential '{cid[:40]}'")

    def tokens(self) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute(
                "SELECT id, name, role, created, revoked, last_used FROM credentials "
                "WHERE kind = 'token' ORDER BY created"
            )
            keys = ("id", "name", "role", "created", "revoked", "last_used")
            return [dict(zip(keys, row, strict=True)) for row in rows]

    def authenticate(self, secret: str) -> Principal:
        """The principal a session or token secret stands for, or ``AuthError``. A check is
        kept for up to ``CACHE_S``, until the credential expires, or until anything in the store
        changes, here or in another process (the CLI): SQLite's ``data_version`` says so."""
        if not secret.startswith((SESSION_PREFIX, TOKEN_PREFIX)) or len(secret) > 100:
            raise AuthError("not a Flytower session or token")
        key = digest(secret)
        with self._db() as db:  # another connection's commit (the CLI) empties the cache
            version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._version = version
            self._cache.clear()
        now = time.time()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        p, expires = self._lookup(key)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (min(expires, now + CACHE_S), p)
        return p

    def _lookup(self, key: str) -> tuple[Principal, float]:
        now = time.time()
        with self._db() as db:
            row = db.execute(
                "SELECT c.id, c.kind, c.name, c.role, c.expires, c.revoked, u.role, u.disabled "
                "FROM credentials c LEFT JOIN users u ON c.kind = 'session' AND u.name = c.name "
                "WHERE c.digest = ?",
                (key,),
            ).fetchone()
            if row is None:
                raise AuthError("unknown session or token")
            cid, kind, name, role, expires, revoked, user_role, disabled = row
            if revoked is not None:
                raise AuthError("this session or token was revoked")
            if expires is not None and expires <= now:
                raise AuthError("this session has expired: sign in again")
            if kind == "session" and (user_role is None or disabled):
                raise AuthError("this user no longer exists or is disabled")
            if now - self._used.get(cid, 0.0) >= LAST_USED_EVERY_S:
                self._used[cid] = now
                # Not worth an fsync on the show's event loop (a power cut may lose it; the
                # next change to the store makes it durable).
                db.execute("PRAGMA synchronous=NORMAL")
                try:
                    db.execute("UPDATE credentials SET last_used = ? WHERE id = ?", (now, cid))
                except sqlite3.OperationalError as exc:  # a full disk: sign-ins still work
                    log.debug("auth: last use of credential %s not recorded: %s", cid, exc)
                db.execute("PRAGMA synchronous=FULL")
        until = float(expires) if expires is not None else math.inf
        if kind == "session":
            return Principal(name, Role(user_role), "session", cid), until
        return Principal(f"token:{name}", Role(role), "token", cid), until


class LoginLimiter:
    """At most ``attempts`` failed logins per client address and per user name in any
    ``window_s``; past that, logins from there or for that name wait (HTTP 429)."""

    def __init__(self, attempts: int = 5, window_s: float = 60.0) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def wait_s(self, *keys: str) -> float:
        """Seconds before another attempt for any of ``keys`` is allowed (0: now)."""
        now = time.monotonic()
        wait = 0.0
        for key in keys:
            q = self._failures.get(key)
            if q is None:
                continue
            while q and q[0] <= now - self.window_s:
                q.popleft()
            if not q:
                del self._failures[key]
            elif len(q) >= self.attempts:
                wait = max(wait, q[0] + self.window_s - now)
        return wait

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        if len(self._failures) > 100_000:  # a flood of names: forget the oldest
            self._failures.clear()
        for key in keys:
            self._failures.setdefault(key, deque(maxlen=self.attempts)).append(now)

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)


class RateLimiter:
    """A token bucket: ``rate`` messages a second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.at = time.monotonic()
        self.refused = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.refused += 1
        return False
