"""Access control on the running service, over real HTTP and WebSocket connections: sign-in,
sessions, API tokens, the role check on every route (walked from the published OpenAPI
document) and every WebSocket message, the origin check, the login limit, and who the journal
records. The machinery part runs against simulated drives in a process of their own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from edge.auth import AuthStore, Role
from edge.config import load_venue
from edge.service import Service
from tests.conftest import (
    free_port,
    hold_enable,
    run_service,
    wait_for_port,
    wait_until,
    write_venue,
)

PASSWORD = "correct horse battery"
ROLES = list(Role)


def auth_venue(tmp_path: Path, devices: list[dict[str, object]] | None = None) -> Path:
    path = write_venue(tmp_path, devices or [])
    text = path.read_text()
    off = "[auth]\nenabled = false"
    assert off in text
    path.write_text(text.replace(off, "[auth]\nlogin_attempts = 5\nlogin_window_s = 30", 1))
    return path


def store_of(path: Path) -> AuthStore:
    venue = load_venue(path)
    return AuthStore(venue.resolve(venue.config.auth.path))


@contextlib.asynccontextmanager
async def service_with(path: Path) -> AsyncIterator[tuple[Service, str]]:
    async with run_service(path) as svc:
        yield svc, f"http://127.0.0.1:{svc.bound_api_port}"


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[Path, dict[Role, str]]:
    """A venue without devices, and an API token per role."""
    path = auth_venue(tmp_path)
    store = store_of(path)
    return path, {r: store.create_token(f"script-{r.value}", r)[1] for r in ROLES}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_every_route_checks_its_role(tokens: tuple[Path, dict[Role, str]]) -> None:
    """For every operation in the OpenAPI document: no credential 401, a role without the
    permission 403 with the reason, a role with it never 401/403. GET needs ``read``."""
    from edge.api_auth import needed
    from edge.auth import GRANTS

    path, secrets = tokens
    async with service_with(path) as (_svc, base), httpx.AsyncClient(base_url=base) as c:
        doc = (await c.get("/api/v1/openapi.json")).json()  # published: no sign-in
        ops = [
            (method.upper(), route)
            for route, item in doc["paths"].items()
            for method in item
            if method in ("get", "post", "put", "patch", "delete")
        ]
        ops.append(("GET", "/metrics"))
        assert len(ops) > 40
        checked = 0
        for method, route in ops:
            url = route.replace("{", "").replace("}", "")  # {device_id} -> device_id
            perms = needed(method, route)
            if perms is None:
                continue
            r = await c.request(method, url, json={})
            assert r.status_code == 401, (method, route, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
            for role in ROLES:
                r = await c.request(method, url, json={}, headers=bearer(secrets[role]))
                if GRANTS[role] & perms:
                    assert r.status_code not in (401, 403), (method, route, role, r.text)
                else:
                    assert r.status_code == 403, (method, route, role, r.status_code)
                    assert f"({role.value}) may not do this" in r.json()["detail"]
                checked += 1
        assert checked >= 5 * 40
        # Public: the console's page and files, the OpenAPI document, the login.
        assert (await c.get("/")).status_code == 200
        assert (await c.get("/static/console.js")).status_code == 200


async def test_every_mutating_route_is_listed(tokens: tuple[Path, dict[Role, str]]) -> None:
    """A route added without a rule is admin-only (fail closed); this catches it being forgotten."""
    from edge.api_auth import PUBLIC, RULES

    path, _ = tokens
    async with service_with(path) as (_svc, base), httpx.AsyncClient(base_url=base) as c:
        doc = (await c.get("/api/v1/openapi.json")).json()
    mutating = {
        (m.upper(), route)
        for route, item in doc["paths"].items()
        for m in item
        if m in ("post", "put", "patch", "delete")
    }
    missing = mutating - set(RULES) - PUBLIC
    assert not missing, f"routes without an access rule in edge/api_auth.py RULES: {missing}"


async def test_sign_in_session_and_sign_out(tmp_path: Path) -> None:
    path = auth_venue(tmp_path)
    store = store_of(path)
    store.add_user("alice", Role.OPERATOR, PASSWORD)
    async with service_with(path) as (_svc, base), httpx.AsyncClient(base_url=base) as c:
        assert (await c.get("/api/v1/auth/me")).status_code == 401
        r = await c.post("/api/v1/auth/login", json={"name": "alice", "password": "wrong one!"})
        assert r.status_code == 401 and r.json()["detail"] == "wrong name or password"
        r = await c.post("/api/v1/auth/login", json={"name": "nobody", "password": PASSWORD})
        assert r.status_code == 401 and r.json()["detail"] == "wrong name or password"
        r = await c.post("/api/v1/auth/login", json={"name": "alice", "password": PASSWORD})
        assert r.status_code == 200, r.text
        cookie = r.headers["set-cookie"]
        assert "flytower_session=fts_" in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        me = (await c.get("/api/v1/auth/me")).json()  # the cookie signs the client in
        assert me["name"] == "alice" and me["role"] == "operator" and me["via"] == "session"
        assert "run" in me["permissions"] and "admin" not in me["permissions"]
        # The session takes the user's role at every request: a demotion counts at once.
        store.set_role("alice", Role.VIEWER)
        r = await c.post("/api/v1/playback/go", json={})
        assert r.status_code == 403 and "(viewer)" in r.json()["detail"]
        store.set_role("alice", Role.OPERATOR)
        # Signing out revokes the session on the server, not just the cookie.
        session = r2 = (await c.post("/api/v1/auth/logout")).json()
        assert session == {"signed_out": True}
        assert (await c.get("/api/v1/auth/me", headers={})).status_code == 401
        secret = (
            await c.post("/api/v1/auth/login", json={"name": "alice", "password": PASSWORD})
        ).json()["session"]
        await c.post("/api/v1/auth/logout")
        c.cookies.clear()
        r2 = await c.get("/api/v1/auth/me", headers=bearer(secret))
        assert r2.status_code == 401 and "revoked" in r2.json()["detail"]
        # A disabled user's sessions end.
        secret = (
            await c.post("/api/v1/auth/login", json={"name": "alice", "password": PASSWORD})
        ).json()["session"]
        c.cookies.clear()
        store.set_disabled("alice", True)
        assert (await c.get("/api/v1/auth/me", headers=bearer(secret))).status_code == 401


async def test_login_limit_and_hostile_input(tmp_path: Path) -> None:
    path = auth_venue(tmp_path)
    store_of(path).add_user("bob", Role.VIEWER, PASSWORD)
    async with service_with(path) as (_svc, base), httpx.AsyncClient(base_url=base) as c:
        login = "/api/v1/auth/login"
        for body in (
            {"name": "bob"},
            {"name": "bob", "password": PASSWORD, "role": "admin"},
            {"name": "bob", "password": "x" * 5000},
            {"name": "", "password": PASSWORD},
            {"name": ["bob"], "password": PASSWORD},
            {"name": "bob", "password": 123456789012},
        ):
            r = await c.post(login, json=body)
            assert r.status_code == 422, (body, r.text)
            assert "x" * 100 not in r.text  # never echoes what was sent
        r = await c.post(
            login, content=b"\xff\xfe{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code in (400, 422)
        for name in ("bob\x00", "../../etc/passwd", "b" * 64, "bob' OR 1=1 --"):
            r = await c.post(login, json={"name": name, "password": PASSWORD})
            assert r.status_code == 401, name
        # The fifth failure from this address within the window: the next try waits, even a
        # right one (per name too: tests/unit/test_auth.py).
        r = await c.post(login, json={"name": "bob", "password": "not the password"})
        assert r.status_code == 401
        r = await c.post(login, json={"name": "bob", "password": PASSWORD})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        # Hostile credentials.
        for value in (
            "Bearer",
            "Bearer fts_" + "A" * 5000,
            "Bearer ftt_~!",
            "Basic Ym9iOmJvYg==",
        ):
            r = await c.get("/api/v1/health", headers={"Authorization": value})
            assert r.status_code == 401, value
        c.cookies.set("flytower_session", "fts_forged")
        assert (await c.get("/api/v1/health")).status_code == 401


async def test_tokens_created_used_and_revoked_over_the_api(
    tokens: tuple[Path, dict[Role, str]],
) -> None:
    path, secrets = tokens
    async with service_with(path) as (_svc, base), httpx.AsyncClient(base_url=base) as c:
        admin = bearer(secrets[Role.ADMIN])
        r = await c.post(
            "/api/v1/auth/tokens", json={"label": "lx", "role": "operator"}, headers=admin
        )
        assert r.status_code == 200, r.text
        made = r.json()
        assert made["token"].startswith("ftt_")
        listed = (await c.get("/api/v1/auth/tokens", headers=admin)).json()
        assert any(t["id"] == made["id"] for t in listed)
        assert all("token" not in t and "digest" not in t for t in listed)  # never the secret
        me = (await c.get("/api/v1/auth/me", headers=bearer(made["token"]))).json()
        assert me == {
            "name": "token:lx",
            "role": "operator",
            "via": "token",
            "permissions": ["read", "run", "stop"],
        }
        bad = await c.post(
            "/api/v1/auth/tokens", json={"label": "x y", "role": "operator"}, headers=admin
        )
        assert bad.status_code == 422
        bad = await c.post(
            "/api/v1/auth/tokens", json={"label": "ok", "role": "root"}, headers=admin
        )
        assert bad.status_code == 422 and "unknown role" in bad.json()["detail"]
        op = bearer(secrets[Role.OPERATOR])
        assert (
            await c.post("/api/v1/auth/tokens", json={"label": "me", "role": "admin"}, headers=op)
        ).status_code == 403
        r = await c.delete(f"/api/v1/auth/tokens/{made['id']}", headers=admin)
        assert r.status_code == 200
        r = await c.get("/api/v1/auth/me", headers=bearer(made["token"]))
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
        assert (
            await c.delete(f"/api/v1/auth/tokens/{made['id']}", headers=admin)
        ).status_code == 404
        # A token revoked from another process (the CLI) is refused at the next request.
        store_of(path).revoke(next(t["id"] for t in listed if t["name"] == "script-viewer"))
        assert (
            await c.get("/api/v1/health", headers=bearer(secrets[Role.VIEWER]))
        ).status_code == 401


async def ws_connect(base: str, **kw: Any) -> websockets.ClientConnection:
    return await websockets.connect(base.replace("http", "ws") + "/ws", open_timeout=5, **kw)


async def ws_reply(ws: websockets.ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if msg.get("type") == kind:
            return dict(msg)


async def test_websocket_needs_a_credential_a_good_origin_and_the_role(
    tokens: tuple[Path, dict[Role, str]],
) -> None:
    path, secrets = tokens
    async with service_with(path) as (_svc, base):
        with pytest.raises(InvalidStatus) as no:
            await ws_connect(base)
        assert no.value.response.status_code == 403
        with pytest.raises(InvalidStatus):
            await ws_connect(base, additional_headers=bearer("ftt_forged"))
        host = base.removeprefix("http://")
        with pytest.raises(InvalidStatus):  # a page elsewhere, with a stolen token
            await ws_connect(
                base,
                additional_headers=bearer(secrets[Role.ADMIN]),
                origin="http://evil.example",
            )
        ws = await ws_connect(
            base,
            additional_headers=bearer(secrets[Role.VIEWER]),
            origin=f"http://{host}",
        )
        async with ws:
            await ws_reply(ws, "snapshot")
            await ws.send(json.dumps({"type": "playback", "command": "go", "id": 1}))
            r = await ws_reply(ws, "playback.result")
            assert r["status"] == 403 and r["id"] == 1 and "(viewer)" in r["detail"]
            await ws.send(json.dumps({"type": "playback", "command": "panic", "id": 2}))
            r = await ws_reply(ws, "playback.result")
            assert r.get("status") != 403  # every role may stop
            await ws.send(json.dumps({"type": "machinery", "command": "move", "id": 3}))
            r = await ws_reply(ws, "machinery.result")
            assert r["status"] == 403
            await ws.send(json.dumps({"type": "bogus", "command": "x"}))
            r = await ws_reply(ws, "error")
            assert r["status"] == 403  # an unknown message type is admin-only, then refused
            await ws.send(json.dumps({"type": "subscribe", "devices": []}))
            assert (await ws_reply(ws, "subscribed"))["devices"] == []
            # Revoked while connected: the server closes the socket (1008) within RECHECK_S.
            tid = next(t["id"] for t in store_of(path).tokens() if t["name"] == "script-viewer")
            store_of(path).revoke(tid)

            async def drain() -> None:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)

            with pytest.raises(websockets.ConnectionClosed) as closed:
                await drain()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            assert "revoked" in closed.value.rcvd.reason


async def test_estop_reset_needs_a_signed_in_operator(
    tmp_path: Path, simulator_process: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """Anyone may E-stop; only a person with the run permission may reset it, never a script's
    token; and the journal names who did what."""
    path = auth_venue(tmp_path, [{"id": "hoist-1", "port": free_port(), "start": 1000}])
    machinery = (
        "[machinery]\nenable_timeout_s = 2.0\nconfirm_timeout_s = 10\n"
        '[machinery.axes.hoist-1]\nuse_case = "performer"\nmax_load = 400\nmin_load = 50\n\n'
    )
    path.write_text(path.read_text().replace("[telemetry]", machinery + "[telemetry]", 1))
    store = store_of(path)
    store.add_user("olga", Role.OPERATOR, PASSWORD)
    store.add_user("otto", Role.OPERATOR, PASSWORD)
    store.add_user("vic", Role.VIEWER, PASSWORD)
    script = store.create_token("cue-script", Role.OPERATOR)[1]
    control = free_port()
    simulator_process(path, control_port=control)
    wait_for_port(control)
    async with service_with(path) as (_svc, base):
        sessions = {}
        for name in ("olga", "otto", "vic"):
            async with httpx.AsyncClient(base_url=base) as c:
                r = await c.post("/api/v1/auth/login", json={"name": name, "password": PASSWORD})
                sessions[name] = bearer(r.json()["session"])
        async with httpx.AsyncClient(base_url=base, timeout=5) as c:

            async def online() -> bool:
                r = await c.get("/api/v1/machinery", headers=sessions["vic"])
                return r.json()["axes"]["hoist-1"]["state"] in ("disabled", "idle")

            await wait_until(online, 10, "hoist-1 reporting")
            r = await c.post("/api/v1/machinery/estop", json={}, headers=sessions["vic"])
            assert r.status_code == 200, r.text
            r = await c.post("/api/v1/machinery/estop/reset", json={}, headers=sessions["vic"])
            assert r.status_code == 403 and "needs the run permission" in r.json()["detail"]
            r = await c.post("/api/v1/machinery/estop/reset", json={}, headers=bearer(script))
            assert r.status_code == 409 and "not by a cue or script" in r.json()["detail"]
            r = await c.post("/api/v1/machinery/estop/reset", json={}, headers=sessions["olga"])
            assert r.status_code == 200, r.text
        # Two-person rule for a performer: two signed-in people, never a script's token.
        async with (
            httpx.AsyncClient(base_url=base, timeout=5, headers=sessions["olga"]) as olga,
            hold_enable(olga, "olga's desk"),
        ):
            r = await olga.post("/api/v1/machinery/move", json={"targets": {"hoist-1": 1100}})
            assert r.status_code == 200 and r.json()["state"] == "pending", r.text
            confirm = f"/api/v1/machinery/moves/{r.json()['id']}/confirm"
            r = await olga.post(confirm)
            assert r.status_code == 409 and "another operator than 'olga'" in r.json()["detail"]
            r = await olga.post(confirm, headers=bearer(script))
            assert r.status_code == 409 and "a person confirms" in r.json()["detail"]
            r = await olga.post(confirm, headers=sessions["vic"])
            assert r.status_code == 403
            r = await olga.post(confirm, headers=sessions["otto"])
            assert r.status_code == 200 and r.json()["state"] == "running", r.text
        async with httpx.AsyncClient(base_url=base, timeout=5) as c:
            events = (
                await c.get("/api/v1/journal", params={"limit": 100}, headers=sessions["olga"])
            ).json()["events"]
            who = {(e["command"], e["source"], e["result"]) for e in events}
            assert ("estop", "vic", "ok") in who
            assert ("estop.reset", "token:cue-script", "refused") in who
            assert ("estop.reset", "olga", "ok") in who
            assert ("auth.login", "olga", "ok") in who
            assert ("move.confirm", "otto", "ok") in who or ("move", "otto", "ok") in who


async def test_tls_serves_https_with_a_secure_session_cookie(tmp_path: Path) -> None:
    from tests.integration.test_mqtt_commands import make_ca_and_server_cert

    ca, cert, key = make_ca_and_server_cert(tmp_path / "tls")
    path = auth_venue(tmp_path)
    text = path.read_text().replace(
        "[auth]\n", f'[auth]\ntls_cert = "{cert}"\ntls_key = "{key}"\n', 1
    )
    path.write_text(text)
    store_of(path).add_user("tess", Role.TECHNICIAN, PASSWORD)
    async with run_service(path) as svc:
        base = f"https://127.0.0.1:{svc.bound_api_port}"
        async with httpx.AsyncClient(
            base_url=base, verify=ssl.create_default_context(cafile=ca)
        ) as c:
            r = await c.post("/api/v1/auth/login", json={"name": "tess", "password": PASSWORD})
            assert r.status_code == 200, r.text
            assert "Secure" in r.headers["set-cookie"]
            assert (await c.get("/api/v1/auth/me")).json()["role"] == "technician"
        async with httpx.AsyncClient(base_url=base.replace("https", "http")) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get("/api/v1/health")


async def test_rest_rate_limit_per_client_never_holds_a_stop(tmp_path: Path) -> None:
    path = auth_venue(tmp_path)
    path.write_text(
        # One request back every 5 s: the 31st request is refused however slow the machine
        # (at 5 a second, a CI run on a busy machine had one back by then).
        path.read_text().replace("port = 0\n", "port = 0\nrate_per_s = 0.2\nrate_burst = 10\n", 1)
    )
    store = store_of(path)
    busy, calm = (
        store.create_token("busy", Role.OPERATOR)[1],
        store.create_token("calm", Role.VIEWER)[1],
    )
    async with service_with(path) as (_svc, base), httpx.AsyncClient(base_url=base) as c:
        codes = [
            (await c.get("/api/v1/health", headers=bearer(busy))).status_code for _ in range(30)
        ]
        assert codes[:10] == [200] * 10 and 429 in codes
        r = await c.get("/api/v1/health", headers=bearer(busy))
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "at most 0.2 a second" in r.json()["detail"]
        stops = [
            (await c.post("/api/v1/playback/stop", json={}, headers=bearer(busy))).status_code
            for _ in range(5)
        ]
        assert 429 not in stops and 401 not in stops and 403 not in stops
        # Another client is not held by the busy one.
        assert (await c.get("/api/v1/health", headers=bearer(calm))).status_code == 200
