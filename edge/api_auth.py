"""Access control on the API (docs/api.md "Access control"): sign-in, the role check on every
route and WebSocket message, API tokens, and who a request is for the journal.

Every request passes ``authorize`` (an app-wide dependency), which finds the credential (an
``Authorization: Bearer`` header, or the console's session cookie), and checks that its role
grants one of the permissions the route needs. A GET needs ``read``; every other method must be
listed in ``RULES``, or only an admin may call it (fail closed; a test walks every route).
Public: the console's page and files, the OpenAPI document, and the login itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request, Response, WebSocketException, status
from fastapi.requests import HTTPConnection
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from controller.journal import JournalEvent, Origin, Result, SourceKind
from edge.api_docs import errors
from edge.auth import (
    GRANTS,
    OPEN,
    AuthError,
    AuthStore,
    LoginLimiter,
    Permission,
    Principal,
    RateLimiter,
    Role,
    role_of,
)

if TYPE_CHECKING:
    from edge.service import Service

COOKIE = "flytower_session"
RECHECK_S = 2.0  # an open WebSocket's credential is checked again this often

P = Permission
RUN_OR_MAINTAIN = frozenset({P.RUN, P.MAINTAIN})
RULES: dict[tuple[str, str], frozenset[Permission]] = {
    ("POST", "/api/v1/devices/{device_id}/commands/{command}"): RUN_OR_MAINTAIN,
    ("POST", "/api/v1/control/takeover"): frozenset({P.RUN}),
    ("POST", "/api/v1/playback/go"): frozenset({P.RUN}),
    ("POST", "/api/v1/playback/back"): frozenset({P.RUN}),
    ("POST", "/api/v1/playback/stop"): frozenset({P.STOP}),
    ("POST", "/api/v1/playback/pause"): frozenset({P.STOP}),
    ("POST", "/api/v1/playback/resume"): frozenset({P.RUN}),
    ("POST", "/api/v1/playback/panic"): frozenset({P.STOP}),
    ("POST", "/api/v1/playback/standby"): frozenset({P.RUN}),
    ("POST", "/api/v1/playback/release"): frozenset({P.RUN}),
    ("PUT", "/api/v1/show"): frozenset({P.PROGRAM}),
    ("POST", "/api/v1/configurations/switch/abort"): frozenset({P.STOP}),
    ("POST", "/api/v1/configurations/{name}/switch"): frozenset({P.RUN}),
    ("POST", "/api/v1/machinery/enable"): frozenset({P.RUN}),
    ("DELETE", "/api/v1/machinery/enable"): frozenset({P.STOP}),  # releasing stops motion
    ("POST", "/api/v1/machinery/move"): frozenset({P.RUN}),
    ("POST", "/api/v1/machinery/moves/{move_id}/confirm"): frozenset({P.RUN}),
    ("POST", "/api/v1/machinery/stop"): frozenset({P.STOP}),
    ("POST", "/api/v1/machinery/estop"): frozenset({P.STOP}),
    ("POST", "/api/v1/machinery/estop/reset"): frozenset({P.RUN}),
    ("PUT", "/api/v1/lighting/faders/{name}"): frozenset({P.RUN}),
    ("PUT", "/api/v1/lighting/fixtures/{fixture_id}"): frozenset({P.RUN}),
    ("DELETE", "/api/v1/lighting/fixtures/{fixture_id}"): frozenset({P.RUN}),
    ("POST", "/api/v1/acoustics/recall"): frozenset({P.RUN}),
    ("POST", "/api/v1/acoustics/measure"): RUN_OR_MAINTAIN,
    ("POST", "/api/v1/acoustics/zones/{zone}/adapt"): RUN_OR_MAINTAIN,
    ("POST", "/api/v1/acoustics/stop"): frozenset({P.STOP}),  # the test signal off, now
    ("POST", "/api/v1/maintenance/records"): frozenset({P.MAINTAIN}),
    ("POST", "/api/v1/maintenance/work-orders"): frozenset({P.MAINTAIN}),
    ("PATCH", "/api/v1/maintenance/work-orders/{order}"): frozenset({P.MAINTAIN}),
    ("POST", "/api/v1/maintenance/early-warning/{device}/relearn"): frozenset({P.MAINTAIN}),
    ("POST", "/api/v1/alarms/{alarm_id}/ack"): RUN_OR_MAINTAIN,
    ("POST", "/api/v1/alarms/{alarm_id}/shelve"): RUN_OR_MAINTAIN,
    ("POST", "/api/v1/alarms/{alarm_id}/unshelve"): RUN_OR_MAINTAIN,
    ("POST", "/api/v1/auth/logout"): frozenset(P),  # anyone signed in
    ("POST", "/api/v1/auth/tokens"): frozenset({P.ADMIN}),
    ("DELETE", "/api/v1/auth/tokens/{token_id}"): frozenset({P.ADMIN}),
    ("GET", "/api/v1/auth/tokens"): frozenset({P.ADMIN}),
    ("GET", "/api/v1/auth/users"): frozenset({P.ADMIN}),
}
PUBLIC = frozenset({("POST", "/api/v1/auth/login"), ("GET", "/")})
READ = frozenset({P.READ})
STOP_ONLY = frozenset({P.STOP})
ADMIN_ONLY = frozenset({P.ADMIN})

# WebSocket messages: (type, command) -> permissions. A type's None entry is its default.
WS_RULES: dict[tuple[str, str | None], frozenset[Permission]] = {
    ("subscribe", None): READ,
    ("playback", None): frozenset({P.RUN}),
    ("playback", "stop"): frozenset({P.STOP}),
    ("playback", "pause"): frozenset({P.STOP}),
    ("playback", "panic"): frozenset({P.STOP}),
    ("machinery", None): frozenset({P.RUN}),
    ("machinery", "release"): frozenset({P.STOP}),
    ("machinery", "stop"): frozenset({P.STOP}),
    ("machinery", "estop"): frozenset({P.STOP}),
}


def needed(method: str, path: str) -> frozenset[Permission] | None:
    """The permissions a route needs (any one suffices); None: public."""
    if (method, path) in PUBLIC:
        return None
    rule = RULES.get((method, path))
    if rule is not None:
        return rule
    return READ if method in ("GET", "HEAD") else ADMIN_ONLY


def ws_needed(kind: str, command: str | None) -> frozenset[Permission]:
    return WS_RULES.get((kind, command)) or WS_RULES.get((kind, None)) or ADMIN_ONLY


def credential(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return conn.cookies.get(COOKIE)


class Gate:
    """The service's access control: the store, the login limiter, and the checks."""

    def __init__(self, service: Service) -> None:
        cfg = service.venue.config.auth
        self.tls = cfg.tls_cert is not None
        self.allowed_origins = {o.rstrip("/").lower() for o in cfg.allowed_origins}
        self.store: AuthStore | None = (
            AuthStore(service.venue.resolve(cfg.path), cfg.session_ttl_s) if cfg.enabled else None
        )
        self.limiter = LoginLimiter(cfg.login_attempts, cfg.login_window_s)
        self.rate, self.burst = (
            service.venue.config.api.rate_per_s,
            service.venue.config.api.rate_burst,
        )
        self.buckets: dict[str, RateLimiter] = {}

    def allow(self, p: Principal, conn: HTTPConnection) -> bool:
        """Per client: its credential, or its address where access control is off."""
        key = p.credential or f"addr:{conn.client.host if conn.client else '?'}"
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) > 10_000:  # credentials come and go: forget the idle ones
                idle = time.monotonic() - 60.0
                self.buckets = {k: b for k, b in self.buckets.items() if b.at > idle}
            bucket = self.buckets[key] = RateLimiter(self.rate, self.burst)
        return bucket.allow()

    def principal(self, conn: HTTPConnection) -> Principal:
        """Who ``conn`` is, or HTTP 401 with the reason."""
        if self.store is None:
            return OPEN
        secret = credential(conn)
        if not secret:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "sign in (POST /api/v1/auth/login) or send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            return self.store.authenticate(secret)
        except AuthError as exc:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "Bearer"}
            ) from None

    def origin_ok(self, conn: HTTPConnection) -> bool:
        """A browser's WebSocket comes from the console's own origin or an allowed one."""
        origin = conn.headers.get("origin")
        if origin is None:
            return True  # not a browser: the credential decides
        origin = origin.rstrip("/").lower()
        if origin in self.allowed_origins:
            return True
        parts = urlsplit(origin)
        host = conn.headers.get("host", "").lower()
        return parts.scheme in ("http", "https") and parts.netloc == host


def refusal(p: Principal, perms: frozenset[Permission]) -> str:
    wanted = " or ".join(sorted(x.value for x in perms))
    return f"{p.name} ({p.role.value}) may not do this: it needs the {wanted} permission"


def dependency(gate: Gate) -> Callable[[HTTPConnection], Any]:
    async def authorize(conn: HTTPConnection) -> None:
        route = conn.scope.get("route")
        path = getattr(route, "path", conn.url.path)
        if conn.scope["type"] == "websocket":
            if not gate.origin_ok(conn):
                raise WebSocketException(status.WS_1008_POLICY_VIOLATION, "origin not allowed")
            try:
                p = gate.principal(conn)
            except HTTPException as exc:
                raise WebSocketException(status.WS_1008_POLICY_VIOLATION, exc.detail) from None
            conn.state.principal = p
            return
        method = conn.scope.get("method", "GET")
        perms = needed(method, path)
        if perms is None:
            conn.state.principal = OPEN if gate.store is None else None
            return
        p = gate.principal(conn)
        if not p.may(perms):
            raise HTTPException(status.HTTP_403_FORBIDDEN, refusal(p, perms))
        if perms != STOP_ONLY and not gate.allow(p, conn):
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"too many requests: at most {gate.rate:g} a second",
                headers={"Retry-After": "1"},
            )
        conn.state.principal = p

    return authorize


def principal_of(conn: HTTPConnection) -> Principal:
    p = getattr(conn.state, "principal", None)
    return p if isinstance(p, Principal) else OPEN


def origin_of(conn: HTTPConnection, channel: str = "rest") -> Origin:
    """Who sent a request, for the journal. Signed in: the user's name (a person, ``user``)
    or ``token:<label>`` (a script). Without access control: the address, or the names a
    client gives (``X-Flytower-Operator``, ``X-Flytower-Client``), as before sign-in existed."""
    p = principal_of(conn)
    if p.via == "session":
        return Origin(SourceKind.USER, p.name)
    if p.via == "token":
        return Origin(SourceKind.SCRIPT, p.name)
    peer = f"{conn.client.host}:{conn.client.port}" if conn.client else "?"
    agent = conn.headers.get("x-flytower-client", "")
    if agent:
        return Origin(SourceKind.SCRIPT, f"{agent[:100]} {peer}")
    operator = conn.headers.get("x-flytower-operator", "").strip()[:100]
    return Origin(SourceKind.USER, operator or f"{channel} {peer}")


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    password: Annotated[StrictStr, Field(min_length=1, max_length=1024)]


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    role: Annotated[  # role_of says which roles there are; the document lists them too
        StrictStr,
        Field(min_length=1, max_length=20, json_schema_extra={"enum": [r.value for r in Role]}),
    ]


def router(service: Service, gate: Gate) -> APIRouter:
    api = APIRouter(prefix="/api/v1/auth", tags=["auth"])

    async def journal(origin: Origin, command: str, result: Result, reason: str = "") -> None:
        now = time.time()
        await service.journal.append(
            JournalEvent(origin.kind, origin.source, command, result, now, now, reason=reason)
        )

    def store() -> AuthStore:
        if gate.store is None:
            raise HTTPException(404, "access control is off on this node ([auth] enabled)")
        return gate.store

    @api.post("/login", responses=errors(401, 404, 429))
    async def login(request: Request, response: Response, body: LoginIn) -> dict[str, Any]:
        """Sign in to the console: sets the session cookie (HttpOnly, SameSite=Strict) and
        returns the session's secret too, for a client that cannot keep cookies."""
        s = store()
        peer = request.client.host if request.client else "?"
        keys = (f"addr:{peer}", f"name:{body.name}")
        wait = gate.limiter.wait_s(*keys)
        if wait > 0:
            raise HTTPException(
                429,
                f"too many failed sign-ins: wait {wait:.0f} s",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        who = Origin(SourceKind.USER, body.name)
        try:
            p = await s.check_login(body.name, body.password)
        except AuthError as exc:
            gate.limiter.failed(*keys)
            await journal(who, "auth.login", Result.REFUSED, f"{exc} (from {peer})")
            raise HTTPException(401, str(exc)) from None
        gate.limiter.succeeded(*keys)
        secret, expires = s.open_session(p.name)
        response.set_cookie(
            COOKIE,
            secret,
            max_age=int(expires - time.time()),
            httponly=True,
            samesite="strict",
            secure=gate.tls,
            path="/",
        )
        await journal(who, "auth.login", Result.OK, f"from {peer}")
        return {"name": p.name, "role": p.role.value, "expires": expires, "session": secret}

    @api.post("/logout")
    async def logout(request: Request, response: Response) -> dict[str, Any]:
        p = principal_of(request)
        if p.via == "session" and p.credential is not None:
            store().revoke(p.credential)
            await journal(origin_of(request), "auth.logout", Result.OK)
        response.delete_cookie(COOKIE, path="/")
        return {"signed_out": p.via == "session"}

    @api.get("/me")
    async def me(request: Request) -> dict[str, Any]:
        """Who this request is, with the role's permissions (the console shows what fits)."""
        p = principal_of(request)
        return {
            "name": p.name,
            "role": p.role.value,
            "via": p.via,
            "permissions": sorted(x.value for x in GRANTS[p.role]),
        }

    @api.get("/users", responses=errors(404))
    async def users() -> list[dict[str, Any]]:
        return store().users()

    @api.get("/tokens", responses=errors(404))
    async def tokens() -> list[dict[str, Any]]:
        return store().tokens()

    @api.post("/tokens", responses=errors(404))
    async def create_token(request: Request, body: TokenIn) -> dict[str, Any]:
        """A new API token for a script. Its secret is in this answer only."""
        try:
            role = role_of(body.role)
            tid, secret = store().create_token(body.label, role)
        except AuthError as exc:
            raise HTTPException(422, str(exc)) from None
        await journal(origin_of(request), "auth.token.create", Result.OK, f"{body.label} ({role})")
        return {"id": tid, "label": body.label, "role": role.value, "token": secret}

    @api.delete("/tokens/{token_id}", responses=errors(404))
    async def revoke_token(request: Request, token_id: str) -> dict[str, Any]:
        try:
            store().revoke(token_id)
        except AuthError as exc:
            raise HTTPException(404, str(exc)) from None
        await journal(origin_of(request), "auth.token.revoke", Result.OK, token_id[:40])
        return {"revoked": token_id}

    return api
