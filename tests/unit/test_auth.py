"""edge/auth.py: the role grants, the credential store and the login limiter (the API over real
HTTP is tests/integration/test_auth_api.py)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.auth import (
    GRANTS,
    AuthError,
    AuthStore,
    LoginLimiter,
    Permission,
    Role,
    check_name,
    role_of,
)

PASSWORD = "a long enough password"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> AuthStore:
    s = AuthStore(tmp_path_factory.mktemp("auth") / "var" / "auth.sqlite3", session_ttl_s=60)
    s.add_user("ada", Role.PROGRAMMER, PASSWORD)
    return s


def test_every_role_may_stop_and_only_admin_administers() -> None:
    for role in Role:
        assert Permission.STOP in GRANTS[role] and Permission.READ in GRANTS[role]
        assert (Permission.ADMIN in GRANTS[role]) == (role is Role.ADMIN)
    assert Permission.RUN not in GRANTS[Role.VIEWER]
    assert Permission.RUN not in GRANTS[Role.TECHNICIAN]
    assert Permission.MAINTAIN in GRANTS[Role.TECHNICIAN]
    assert Permission.PROGRAM in GRANTS[Role.PROGRAMMER]


async def test_passwords_are_argon2_hashes_and_checked(store: AuthStore) -> None:
    with sqlite3.connect(store.path) as db:
        (stored,) = db.execute("SELECT hash FROM users WHERE name = 'ada'").fetchone()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    p = await store.check_login("ada", PASSWORD)
    assert (p.name, p.role, p.via) == ("ada", Role.PROGRAMMER, "session")
    for name, password in (("ada", "wrong password"), ("nobody", PASSWORD), ("ada", "x" * 5000)):
        with pytest.raises(AuthError, match=r"^wrong name or password$"):
            await store.check_login(name, password)


def test_credentials_are_stored_as_digests_only(store: AuthStore) -> None:
    secret, expires = store.open_session("ada")
    tid, token = store.create_token("lx-script", Role.OPERATOR)
    assert expires > time.time() and secret.startswith("fts_") and token.startswith("ftt_")
    raw = store.path.read_bytes() + Path(f"{store.path}-wal").read_bytes()
    assert secret.encode() not in raw and token.encode() not in raw
    assert store.authenticate(secret).name == "ada"
    p = store.authenticate(token)
    assert (p.name, p.role, p.via, p.credential) == ("token:lx-script", Role.OPERATOR, "token", tid)
    store.revoke(tid)
    with pytest.raises(AuthError, match="revoked"):
        store.authenticate(token)
    with pytest.raises(AuthError, match="no live credential"):
        store.revoke(tid)


def test_a_session_expires_and_follows_its_user(tmp_path: Path) -> None:
    s = AuthStore(tmp_path / "auth.sqlite3", session_ttl_s=60)
    s.add_user("bo", Role.OPERATOR, PASSWORD)
    secret, _ = s.open_session("bo")
    s.set_role("bo", Role.VIEWER)
    assert s.authenticate(secret).role is Role.VIEWER
    s.set_password("bo", "another long password")  # a new password ends the old sessions
    with pytest.raises(AuthError, match="revoked"):
        s.authenticate(secret)
    secret, _ = s.open_session("bo")
    with sqlite3.connect(s.path) as db:
        db.execute("UPDATE credentials SET expires = ?", (time.time() - 1,))
    with pytest.raises(AuthError, match="expired"):
        s.authenticate(secret)
    secret, _ = s.open_session("bo")
    s.remove_user("bo")
    with pytest.raises(AuthError):
        s.authenticate(secret)


def test_bad_names_roles_and_passwords_are_refused(store: AuthStore) -> None:
    for name in ("", " ada", "a/b", "a b", "x" * 65, "ad\x00a", "-lead", "é", "bob\n"):
        with pytest.raises(AuthError, match="a name is"):
            check_name(name)
    with pytest.raises(AuthError, match="unknown role 'root'"):
        role_of("root")
    with pytest.raises(AuthError, match="password is"):
        store.add_user("shorty", Role.VIEWER, "short")
    with pytest.raises(AuthError, match="exists"):
        store.add_user("ada", Role.VIEWER, PASSWORD)
    for bad in ("", "fts_", "Bearer x", "ftt_" + "A" * 200, "fts_unknown"):
        with pytest.raises(AuthError):
            store.authenticate(bad)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_presented_secret_is_refused_without_a_crash(store: AuthStore, secret: str) -> None:
    with pytest.raises(AuthError):
        store.authenticate(secret)


def test_the_login_limiter_counts_per_key_within_its_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    lim = LoginLimiter(attempts=3, window_s=60)
    for _ in range(3):
        assert lim.wait_s("addr:a", "name:bob") == 0
        lim.failed("addr:a", "name:bob")
    assert lim.wait_s("addr:a") == pytest.approx(60)
    assert lim.wait_s("addr:b", "name:bob") == pytest.approx(60)  # the name, from elsewhere
    assert lim.wait_s("addr:b", "name:eve") == 0
    now[0] += 30
    assert lim.wait_s("name:bob") == pytest.approx(30)
    now[0] += 30.5
    assert lim.wait_s("addr:a", "name:bob") == 0
    lim.failed("addr:a")
    lim.succeeded("addr:a")
    assert lim.wait_s("addr:a") == 0
