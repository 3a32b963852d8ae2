"""A small asyncio client for show-control scripts: playback, machinery and alarms, over the
same REST routes and ``/ws`` feeds as the console (docs/api.md, "The Python client").

    import asyncio
    from edge.client import FlytowerClient

    async def main() -> None:
        async with FlytowerClient("http://127.0.0.1:8080", name="preshow.py") as ft:
            await ft.standby("main", 1)
            await ft.go("main")
            await ft.wait_for_cue("main", "2", timeout_s=60)  # followed by cue 1
            async with ft.hold_enable("preshow.py"):
                await ft.move({"hoist-1": 3000}, speed=500)
                await ft.wait_for_axis("hoist-1", 3000, timeout_s=30)
            async for alarm in ft.alarm_events(severities={"critical"}):
                await ft.stop_axes()
                await ft.ack(alarm["id"], "stopped by preshow.py")
                break

    asyncio.run(main())

**Credentials.** ``token`` (an API token ``ftt_…`` from ``flytower token create`` or
``POST /api/v1/auth/tokens``; default: the ``FLYTOWER_TOKEN`` environment variable) is sent as
``Authorization: Bearer …`` on every request and on the ``/ws`` handshake. The journal then
names the script ``token:<label>``; without access control, ``script <name> <peer>`` (the
``X-Flytower-Client`` header).

**Refusals** raise a ``FlytowerError`` carrying the HTTP ``status`` and the server's ``reason``
(its ``detail``): ``AccessDenied`` (401: no, unknown or revoked credential; 403: the role lacks
the permission), ``RateLimited`` (429, with ``retry_after_s``), ``PlaybackRefused``,
``MotionRefused`` and ``AlarmRefused`` (409: the state refuses it, e.g. debounce, no
hold-to-run enable, a soft limit; 422: unknown list, cue or axis, or a malformed request; 404:
the node runs no show, machinery or alarm engine). Network errors are httpx's and websockets'
own.

**Feeds.** ``wait_for_cue``, ``wait_for_axis`` and ``alarm_events`` follow the ``/ws`` topics
``playback``, ``axes`` and ``alarms`` (edge/ws_topics.py: a snapshot, then JSON patches, which
``Feed`` applies), so they see a change within the feed's period (0.1 s) instead of polling.
Each opens its own connection subscribed to its topic only; a connection lost mid-wait is
reopened (0.1 s doubling to 5 s) and starts again from a fresh snapshot, a credential refused
is ``AccessDenied`` at once. A feed left open (a ``break`` out of ``alarm_events``) is closed
with the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from controller.show.model import format_cue_number, parse_cue_number

log = logging.getLogger(__name__)

TOKEN_ENV = "FLYTOWER_TOKEN"
ENABLE_RENEW_S = 0.1  # the hold-to-run enable lapses after enable_timeout_s (0.5 s by default)
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0
WS_MAX_SIZE = 64 * 2**20  # the first message lists every device of a large venue
UNSETTLED = ("moving", "stopping")
HALTED = ("faulted", "e-stopped", "offline")  # an axis in these will not arrive anywhere


class FlytowerError(Exception):
    """The service refused a request: ``status`` (HTTP) and ``reason`` (its ``detail``, a
    string, or the list of a malformed body's problems)."""

    def __init__(self, status: int, reason: Any) -> None:
        super().__init__(f"{status}: {_readable(reason)}")
        self.status = status
        self.reason = reason


class AccessDenied(FlytowerError):
    """401: no credential, or one the service does not accept (unknown, revoked, expired);
    403: the credential's role lacks the permission (the reason names it)."""


class RateLimited(FlytowerError):
    """429: more requests than the service allows this credential (``[api] rate_per_s``);
    ``retry_after_s`` says when to try again. Stops are never limited."""

    def __init__(self, status: int, reason: Any, retry_after_s: float) -> None:
        super().__init__(status, reason)
        self.retry_after_s = retry_after_s


class PlaybackRefused(FlytowerError):
    """A playback command refused: 409 by the state (debounce, end of list), 422 unknown list
    or cue or a malformed request, 404 no show loaded."""


class MotionRefused(FlytowerError):
    """A machinery command refused by the safety supervisor (409, with the rule it would
    break), a malformed one (422), or a node without machinery (404)."""


class AlarmRefused(FlytowerError):
    """An alarm action refused: 404 unknown alarm, 409 nothing to acknowledge, 422 bad input."""


class MotionAborted(Exception):
    """While ``wait_for_axis`` waited for a position, the axis stopped short: the E-stop
    latched, the axis faulted or went offline, or its move was aborted (``reason`` says)."""

    def __init__(self, axis: str, reason: str) -> None:
        super().__init__(f"{axis}: {reason}")
        self.axis = axis
        self.reason = reason


def _readable(detail: Any) -> str:
    """A pydantic error list as ``where: what; …``; anything else as it is."""
    if isinstance(detail, list) and all(isinstance(e, dict) for e in detail):
        parts = []
        for e in detail:
            loc = [str(x) for x in e.get("loc", ()) if x != "body"]
            parts.append(f"{'.'.join(loc) or 'body'}: {e.get('msg', e)}")
        return "; ".join(parts)
    return str(detail)


def _token(token: str | None) -> str | None:
    if token is None:
        token = os.environ.get(TOKEN_ENV)
    token = (token or "").strip()
    if not token:
        return None
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError("a Flytower token is printable ASCII without spaces (ftt_…)")
    return token


def _finite(value: float, what: str) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return v


class FlytowerClient:
    """``async with FlytowerClient(url, name=..., token=...)``: one use, not reentrant; on
    exit (or ``aclose()``) its HTTP connections and every feed still open are closed."""

    def __init__(
        self,
        url: str,
        *,
        name: str = "script",
        token: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the service's URL starts with http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        self.name = name
        self._token = _token(token)
        self.headers = {"X-Flytower-Client": f"script {name}"}
        if self._token is not None:
            self.headers["Authorization"] = f"Bearer {self._token}"
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout_s, headers=self.headers)
        self._feeds: set[Feed] = set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every feed still open and the HTTP connections."""
        for feed in list(self._feeds):
            await feed.aclose()
        await self._http.aclose()

    # --- HTTP ------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        refused: type[FlytowerError] = FlytowerError,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        kw: dict[str, Any] = {"json": json, "params": params}
        if timeout_s is not None:
            kw["timeout"] = timeout_s
        r = await self._http.request(method, path, **kw)
        if r.is_success:
            return r.json()
        try:
            body = r.json()
            reason = body.get("detail", r.text) if isinstance(body, dict) else r.text
        except ValueError:
            reason = r.text or r.reason_phrase
        if r.status_code in (401, 403):
            raise AccessDenied(r.status_code, reason)
        if r.status_code == 429:
            try:
                after = float(r.headers.get("retry-after", "1"))
            except ValueError:
                after = 1.0
            raise RateLimited(429, reason, after if math.isfinite(after) else 1.0)
        raise refused(r.status_code, reason)

    async def whoami(self) -> dict[str, Any]:
        """Who the service takes this client for: name, role, permissions."""
        return dict(await self._call("GET", "/api/v1/auth/me"))

    async def journal(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        device: str | None = None,
        source_kind: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Journal events (who, what, when, result, reason), the latest ``limit``, oldest
        first; ``since``/``until`` in the service's epoch seconds, ``source_kind`` as ``user``,
        ``script``, ``wait`` (a cue's own actions)…"""
        params: dict[str, Any] = {"limit": limit}
        for key, value in (
            ("since", since),
            ("until", until),
            ("device", device),
            ("source", source_kind),
        ):
            if value is not None:
                params[key] = value
        return list((await self._call("GET", "/api/v1/journal", params=params))["events"])

    # --- playback --------------------------------------------------------------------------

    async def _post(self, command: str, **body: Any) -> dict[str, Any]:
        payload = {k: v for k, v in body.items() if v is not None}
        out = await self._call("POST", f"/api/v1/playback/{command}", PlaybackRefused, json=payload)
        return dict(out)

    async def snapshot(self) -> dict[str, Any]:
        """The playback state: every list's current and standby cue and running cues."""
        return dict(await self._call("GET", "/api/v1/playback", PlaybackRefused))

    async def show(self) -> dict[str, Any]:
        """The loaded show's data (``GET /api/v1/show``): its lists and their cues."""
        return dict(await self._call("GET", "/api/v1/show", PlaybackRefused))

    async def go(
        self, list_id: str | None = None, cue: str | float | None = None
    ) -> dict[str, Any]:
        return await self._post("go", list=list_id, cue=None if cue is None else str(cue))

    async def standby(self, list_id: str | None, cue: str | float) -> dict[str, Any]:
        return await self._post("standby", list=list_id, cue=str(cue))

    async def back(self, list_id: str | None = None) -> dict[str, Any]:
        return await self._post("back", list=list_id)

    async def stop(
        self, list_id: str | None = None, cue: str | float | None = None
    ) -> dict[str, Any]:
        """Stop cues (playback). Machinery: ``stop_axes``."""
        return await self._post("stop", list=list_id, cue=None if cue is None else str(cue))

    async def pause(self, list_id: str | None = None) -> dict[str, Any]:
        return await self._post("pause", list=list_id)

    async def resume(self, list_id: str | None = None) -> dict[str, Any]:
        return await self._post("resume", list=list_id)

    async def release(self, list_id: str | None = None, fade_s: float = 0.0) -> dict[str, Any]:
        return await self._post("release", list=list_id, fade_s=fade_s)

    async def panic(self) -> dict[str, Any]:
        return await self._post("panic")

    async def wait_for_cue(
        self, list_id: str, cue: str | float, *, complete: bool = False, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Wait until ``cue`` is the list's current cue (and, with ``complete``, no cue of the
        list runs any more); returns that list's state. Raises TimeoutError."""
        want = format_cue_number(parse_cue_number(cue))

        def reached(snap: dict[str, Any]) -> dict[str, Any] | None:
            for lst in snap.get("lists", []):
                if lst["id"] != list_id:
                    continue
                current = (lst.get("current") or {}).get("number")
                if current == want and (not complete or not lst["running"]):
                    return dict(lst)
            return None

        async with asyncio.timeout(timeout_s), self.feed("playback") as feed:
            if (hit := reached(await self.snapshot())) is not None:
                return hit
            async for msg in feed:
                if (hit := reached(msg["snapshot"])) is not None:
                    return hit
        raise TimeoutError(f"cue {want} of {list_id} not reached")  # pragma: no cover

    # --- machinery -------------------------------------------------------------------------

    async def machinery(self) -> dict[str, Any]:
        """E-stop, hold-to-run enable, every axis, the moves (``GET /api/v1/machinery``)."""
        return dict(await self._call("GET", "/api/v1/machinery", MotionRefused))

    async def axes(self) -> dict[str, dict[str, Any]]:
        """Every axis by id: state, position, velocity, load, soft limits, its move, last abort."""
        return dict((await self.machinery())["axes"])

    @contextlib.asynccontextmanager
    async def hold_enable(self, holder: str | None = None) -> AsyncIterator[None]:
        """Hold the hold-to-run enable while the block runs: taken at once (``AccessDenied``
        without the run permission), renewed every 0.1 s (it lapses after the venue's
        ``enable_timeout_s``, stopping every move), released on exit, which stops motion.
        A renewal that fails is logged; the server's refusals of later moves say why."""
        who = holder or f"script {self.name}"
        await self._call("POST", "/api/v1/machinery/enable", MotionRefused, json={"holder": who})
        task = asyncio.create_task(self._renew(who), name=f"hold-enable {who}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(httpx.HTTPError, FlytowerError, RuntimeError):
                # RuntimeError: the client was closed under us; either way the enable lapses
                await self._call(
                    "DELETE", "/api/v1/machinery/enable", MotionRefused, params={"holder": who}
                )

    async def _renew(self, holder: str) -> None:
        failing = False
        while True:
            await asyncio.sleep(ENABLE_RENEW_S)
            try:
                await self._call(
                    "POST",
                    "/api/v1/machinery/enable",
                    MotionRefused,
                    json={"holder": holder},
                    timeout_s=0.5,
                )
            except (httpx.HTTPError, FlytowerError) as exc:
                if not failing:  # once, then quietly until it works again
                    log.warning("renewing the enable of %s failed: %s", holder, exc)
                failing = True
                continue
            if failing:
                log.warning("renewing the enable of %s works again", holder)
                failing = False

    async def move(
        self,
        targets: Mapping[str, float],
        speed: float | None = None,
        *,
        acceleration: float | None = None,
        relative: bool = False,
        synchronized: bool = True,
    ) -> dict[str, Any]:
        """One supervised move (needs a live enable: ``hold_enable``); returns the move (id,
        duration_s, progress, warnings). ``MotionRefused`` with the supervisor's reason."""
        body: dict[str, Any] = {
            "targets": {str(a): _finite(p, f"target of {a}") for a, p in targets.items()},
            "relative": relative,
            "synchronized": synchronized,
        }
        if speed is not None:
            body["speed"] = _finite(speed, "speed")
        if acceleration is not None:
            body["acceleration"] = _finite(acceleration, "acceleration")
        return dict(await self._call("POST", "/api/v1/machinery/move", MotionRefused, json=body))

    async def stop_axes(
        self,
        axes: Collection[str] | None = None,
        kind: Literal["controlled", "quick"] = "controlled",
    ) -> dict[str, Any]:
        """Stop ``axes`` (every axis when None): ``{"stopped": [...], "failed": {...}}``."""
        body: dict[str, Any] = {"kind": kind}
        if axes is not None:
            body["axes"] = list(axes)
        return dict(await self._call("POST", "/api/v1/machinery/stop", MotionRefused, json=body))

    async def estop(self, reason: str = "software E-stop") -> dict[str, Any]:
        """Latch the software E-stop: every axis stops. Its reset is a person's act (the
        console), never a script's."""
        body = {"reason": reason[:200]}
        return dict(await self._call("POST", "/api/v1/machinery/estop", MotionRefused, json=body))

    async def wait_for_axis(
        self,
        axis: str,
        position: float | None = None,
        state: str | None = None,
        *,
        tolerance: float = 5.0,
        settled: bool = True,
        timeout_s: float = 60.0,
        on_update: Callable[[dict[str, Any]], Any] | None = None,
    ) -> dict[str, Any]:
        """Wait, following the ``/ws`` machinery snapshots, until ``axis`` is

        - within ``tolerance`` of ``position`` (and, with ``settled``, its move over and the
          axis no longer moving or stopping), and/or
        - in ``state`` (``idle``, ``disabled``, ``moving``, …);
        - with neither: settled (not in a move, not moving or stopping).

        Returns the axis's view. ``on_update(snapshot)`` sees every snapshot (progress).
        While waiting for a position without ``state``, raises ``MotionAborted`` if the E-stop
        is latched, the axis is faulted, e-stopped or offline, or a new abort is reported.
        ``ValueError`` for an unknown axis, ``TimeoutError`` after ``timeout_s``."""
        want = None if position is None else _finite(position, "position")
        first_abort: Any = ...

        def check(snap: dict[str, Any]) -> dict[str, Any] | None:
            nonlocal first_abort
            view = snap["axes"].get(axis)
            if view is None:
                known = ", ".join(sorted(snap.get("axes", {}))) or "none"
                raise ValueError(f"no axis '{axis}' (axes: {known})")
            is_settled = view.get("move") is None and view.get("state") not in UNSETTLED
            pos = view.get("position")
            at = want is None or (pos is not None and abs(pos - want) <= tolerance)
            if state is not None:
                ok = view.get("state") == state and at
            elif want is not None:
                ok = at and (is_settled or not settled)
            else:
                ok = is_settled
            if ok:
                return dict(view)
            if want is not None and state is None:
                if snap.get("estop", {}).get("latched"):
                    reason = snap["estop"].get("reason") or "software E-stop"
                    raise MotionAborted(axis, f"the E-stop is latched ({reason})")
                if view.get("state") in HALTED:
                    raise MotionAborted(axis, f"the axis is {view['state']}")
                if first_abort is ...:
                    first_abort = view.get("last_abort")
                elif view.get("last_abort") != first_abort and view.get("last_abort"):
                    raise MotionAborted(axis, f"aborted: {view['last_abort']}")
            return None

        async with asyncio.timeout(timeout_s), self.feed("axes") as feed:
            snap = await self.machinery()  # 404 on a node without machinery, not a timeout
            if on_update is not None:
                on_update(snap)
            if (hit := check(snap)) is not None:
                return hit
            async for msg in feed:
                snap = msg["snapshot"]
                if "axes" not in snap:  # the topic's first, empty state
                    continue
                if on_update is not None:
                    on_update(snap)
                if (hit := check(snap)) is not None:
                    return hit
        raise TimeoutError(f"{axis} did not arrive")  # pragma: no cover

    # --- alarms ----------------------------------------------------------------------------

    async def alarms(
        self,
        *,
        states: Collection[str] | None = None,
        severities: Collection[str] | None = None,
        device: str | None = None,
        rule: str | None = None,
        include_inactive: bool = False,
    ) -> list[dict[str, Any]]:
        """Alarms that are not inactive (``include_inactive``: every one), most severe first."""
        params: dict[str, Any] = {}
        if states:
            params["state"] = list(states)
        if severities:
            params["severity"] = list(severities)
        if device is not None:
            params["device"] = device
        if rule is not None:
            params["rule"] = rule
        if include_inactive:
            params["all"] = "true"
        body = await self._call("GET", "/api/v1/alarms", AlarmRefused, params=params)
        return list(body["alarms"])

    async def ack(self, alarm_id: str, note: str = "") -> dict[str, Any]:
        """Acknowledge an alarm with a note; returns it. ``AlarmRefused`` (404 unknown,
        409 nothing to acknowledge)."""
        path = f"/api/v1/alarms/{quote(alarm_id, safe=':')}/ack"
        return dict(await self._call("POST", path, AlarmRefused, json={"comment": note[:500]}))

    def alarm_events(
        self,
        *,
        states: Collection[str] | None = ("active_unack",),
        severities: Collection[str] | None = None,
        devices: Collection[str] | None = None,
        existing: bool = True,
    ) -> AlarmEvents:
        """``async for alarm in client.alarm_events(...)``: each alarm as it is raised or
        changes (state, severity, message, acknowledgement), filtered by ``states`` (default:
        raised and not yet acknowledged; None: every state), ``severities`` and ``devices``.
        ``existing``: those already listed at the start count too. An alarm that goes back to
        inactive leaves the list and is not yielded. Closed by ``aclose()``, by ``async with``,
        or with the client."""
        return AlarmEvents(
            self.feed("alarms"),
            None if states is None else frozenset(states),
            None if severities is None else frozenset(severities),
            None if devices is None else frozenset(devices),
            existing,
        )

    # --- feeds -----------------------------------------------------------------------------

    def feed(self, *topics: str) -> Feed:
        """The state of ``/ws`` topics (``playback``, ``axes``, ``alarms``, ``configurations``,
        ``devices``, ``lighting``, ``acoustics``, ``telemetry``; edge/ws_topics.py), as
        ``{"type": topic, "snapshot": state}`` after every change."""
        if not topics:
            raise ValueError("name at least one topic")
        return Feed(self, tuple(dict.fromkeys(topics)))

    async def _open_ws(self, topics: Collection[str]) -> ClientConnection:
        ws_url = "ws" + self.url.removeprefix("http") + "/ws"
        try:
            ws = await websockets.connect(
                ws_url, additional_headers=self.headers, max_size=WS_MAX_SIZE
            )
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            if status not in (401, 403):
                raise
            # The handshake's refusal carries no reason: ask the same question over HTTP.
            await self.whoami()  # raises AccessDenied with the server's reason
            raise AccessDenied(status, "the /ws handshake was refused") from None
        await ws.send(json.dumps({"type": "subscribe", "topics": list(topics)}))
        return ws


def apply_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """``doc`` after RFC 6902 ``add`` / ``remove`` / ``replace`` operations (what the ``/ws``
    topics send); changed in place where it can be, so use the result. ``KeyError``,
    ``IndexError``, ``ValueError`` or ``TypeError`` for a patch that does not fit ``doc``."""
    for op in ops:
        kind, path = op["op"], op["path"]
        if kind not in ("add", "remove", "replace"):
            raise ValueError(f"unsupported patch operation {kind!r}")
        if path == "":
            doc = None if kind == "remove" else op["value"]
            continue
        if not path.startswith("/"):
            raise ValueError(f"a patch path starts with '/': {path!r}")
        keys = [k.replace("~1", "/").replace("~0", "~") for k in path[1:].split("/")]
        parent = doc
        for key in keys[:-1]:
            parent = parent[int(key)] if isinstance(parent, list) else parent[key]
        last = keys[-1]
        if isinstance(parent, list):
            i = len(parent) if last == "-" and kind == "add" else int(last)
            if kind == "add":
                parent.insert(i, op["value"])
            elif kind == "replace":
                parent[i] = op["value"]
            else:
                del parent[i]
        elif not isinstance(parent, dict):
            raise TypeError(f"{path!r} goes through a {type(parent).__name__}")
        elif kind == "remove":
            del parent[last]
        else:
            if kind == "replace" and last not in parent:
                raise KeyError(last)
            parent[last] = op["value"]
    return doc


class Feed:
    """The state of some ``/ws`` topics, as an async iterator (``async with`` closes it): each
    topic's snapshot, then its JSON patches applied, yielded whole as ``{"type": topic,
    "snapshot": state}`` (a copy: keep it as long as you like). A lost connection, a patch that
    does not fit or a gap in a topic's ``seq`` reopens the connection with a capped backoff (a
    new snapshot follows); a refused credential (at the handshake, or a close with 1008)
    raises ``AccessDenied``, a refused subscription ``FlytowerError`` (422)."""

    def __init__(self, client: FlytowerClient, topics: tuple[str, ...]) -> None:
        self.client = client
        self.topics = topics
        self._ws: ClientConnection | None = None
        self._closed = False
        self._connected_once = False
        self._state: dict[str, Any] = {}
        self._seq: dict[str, int] = {}
        self._subscribed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def aclose(self) -> None:
        self._closed = True
        self.client._feeds.discard(self)
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def _drop(self, why: str) -> None:
        """Close the connection to start again from fresh snapshots."""
        log.warning("/ws: %s; resubscribing", why)
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def __anext__(self) -> dict[str, Any]:
        backoff = RECONNECT_MIN_S
        while not self._closed:
            if self._ws is None:
                self.client._feeds.add(self)
                self._state.clear()
                self._seq.clear()
                self._subscribed = False
                try:
                    self._ws = await self.client._open_ws(self.topics)
                except (OSError, websockets.InvalidHandshake) as exc:
                    if not self._connected_once:
                        raise
                    log.warning("/ws: %s; again in %.1f s", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, RECONNECT_MAX_S)
                    continue
                self._connected_once = True
            try:
                raw = await self._ws.recv()
            except websockets.ConnectionClosed as exc:
                self._ws = None
                if self._closed:
                    break
                if exc.rcvd is not None and exc.rcvd.code == 1008:  # credential refused
                    raise AccessDenied(401, exc.rcvd.reason or "policy violation") from None
                log.warning("/ws closed (%s); again in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)
                continue
            backoff = RECONNECT_MIN_S
            msg = json.loads(raw)
            if not isinstance(msg, dict):
                continue
            kind = msg.get("type")
            if kind == "error":
                raise FlytowerError(422, msg.get("detail", "refused"))
            if kind == "subscribed" and msg.get("topics") is not None:
                self._subscribed = True
                continue
            if not self._subscribed or kind not in self.topics:
                continue  # the console's feeds, sent until the subscription is read
            topic = str(kind)
            seq = msg.get("seq")
            if "snapshot" in msg:
                self._state[topic] = msg["snapshot"]
            elif "patch" in msg and topic in self._state and seq == self._seq.get(topic, -2) + 1:
                try:
                    self._state[topic] = apply_patch(self._state[topic], msg["patch"])
                except (KeyError, IndexError, ValueError, TypeError) as exc:
                    await self._drop(f"a {topic} patch that does not fit ({exc!r})")
                    continue
            else:
                await self._drop(f"{topic} message {seq} out of order")
                continue
            self._seq[topic] = seq if isinstance(seq, int) else 0
            return {"type": topic, "snapshot": copy.deepcopy(self._state[topic])}
        raise StopAsyncIteration


class AlarmEvents:
    """What ``FlytowerClient.alarm_events`` returns: the alarm feed's changes, one alarm at a
    time (a change is a new alarm id, or a new ``state``, ``severity``, ``message``,
    ``acked_by`` or ``updated_at`` of a listed one)."""

    def __init__(
        self,
        feed: Feed,
        states: frozenset[str] | None,
        severities: frozenset[str] | None,
        devices: frozenset[str] | None,
        existing: bool,
    ) -> None:
        self.feed = feed
        self.states, self.severities, self.devices = states, severities, devices
        self._seen: dict[str, tuple[Any, ...]] | None = None
        self._skip_first = not existing
        self._pending: list[dict[str, Any]] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def aclose(self) -> None:
        await self.feed.aclose()

    def _wanted(self, a: dict[str, Any]) -> bool:
        return (
            (self.states is None or a.get("state") in self.states)
            and (self.severities is None or a.get("severity") in self.severities)
            and (self.devices is None or a.get("device") in self.devices)
        )

    async def __anext__(self) -> dict[str, Any]:
        while not self._pending:
            msg = await self.feed.__anext__()
            if "alarms" not in msg["snapshot"]:  # the topic's first, empty state
                continue
            seen = self._seen if self._seen is not None else {}
            now: dict[str, tuple[Any, ...]] = {}
            for a in msg["snapshot"].get("alarms", []):
                key = tuple(
                    a.get(k) for k in ("state", "severity", "message", "acked_by", "updated_at")
                )
                now[a["id"]] = key
                if seen.get(a["id"]) != key and self._wanted(a):
                    self._pending.append(a)
            if self._skip_first:  # what was listed before we looked is not news
                self._pending.clear()
                self._skip_first = False
            self._seen = now  # after a reconnect the list is compared with the last one seen
        return self._pending.pop(0)
