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
the node runs no show, machinery or alarm engine), ``AcousticsRefused`` (404 unknown zone or
mode, 409 busy or no stream, 422 a bad request). An answer that is not what the route
documents is ``MalformedAnswer``. Network errors are httpx's and websockets' own.

**Acoustics.** ``adapt(zone, mode, iterations)`` starts a closed-loop adaptation and returns
its ``AdaptationState``; ``wait_adaptation(id, on_progress=...)`` follows it over the
``acoustics`` topic to its end (``flytower acoustics adapt`` is built on the two).

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
from dataclasses import dataclass, field
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


class AcousticsRefused(FlytowerError):
    """A sound-field request refused: 404 unknown zone, mode or run, 409 busy (an adaptation
    or a measurement running), no stream or no sound field on the node, 422 a bad request or
    a zone that cannot be adapted."""


class MalformedAnswer(ValueError):
    """The service answered something this client cannot read (not JSON, or not the shape
    the route documents): a proxy in the way, or a service of another version."""


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


def _refusal(r: httpx.Response, refused: type[FlytowerError]) -> FlytowerError:
    """The typed error of a refused request: the service's reason (its ``detail``), access
    denied (401/403), rate limited (429, with Retry-After), else ``refused``."""
    try:
        body = r.json()
        reason = body.get("detail", r.text) if isinstance(body, dict) else r.text
    except ValueError:
        reason = r.text or r.reason_phrase
    if r.status_code in (401, 403):
        return AccessDenied(r.status_code, reason)
    if r.status_code == 429:
        try:
            after = float(r.headers.get("retry-after", "1"))
        except ValueError:
            after = 1.0
        return RateLimited(429, reason, after if math.isfinite(after) else 1.0)
    return refused(r.status_code, reason)


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
            try:
                return r.json()
            except ValueError:  # a proxy's page, a truncated body
                raise MalformedAnswer(
                    f"{method} {path}: {r.status_code} with a body that is not JSON"
                ) from None
        raise _refusal(r, refused)

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

    # --- acoustics -------------------------------------------------------------------------

    async def acoustics(self) -> dict[str, Any]:
        """The sound field (``GET /api/v1/acoustics``): modes, zones, the measurement and the
        adaptation in progress; ``{"configured": False}`` on a node without ``[acoustics]``."""
        body = await self._call("GET", "/api/v1/acoustics", AcousticsRefused)
        if not isinstance(body, dict):
            raise MalformedAnswer(f"GET /api/v1/acoustics answered a {type(body).__name__}")
        return body

    async def adapt(
        self,
        zone: str,
        mode: str,
        iterations: int = 3,
        *,
        sweeps: int | None = None,
        level_db: float | None = None,
    ) -> AdaptationState:
        """Start adapting ``zone`` to ``mode`` by measurement (``POST
        /api/v1/acoustics/zones/{zone}/adapt``); returns the run's state once its first
        measurement has started: follow it with ``wait_adaptation(state.id)``.
        ``AcousticsRefused``: 404 unknown zone or mode, 409 busy (an adaptation or a
        measurement running) or no stream, 422 a bad request (iterations outside 1..5,
        ``sweeps`` outside 1..8, ``level_db`` outside -80..-6) or a zone that cannot be
        adapted. ``ValueError`` before anything is sent for an empty zone or mode, or
        iterations, sweeps or level that are not numbers."""
        if not isinstance(zone, str) or not zone:
            raise ValueError(f"a zone is a non-empty name, not {zone!r}")
        if not isinstance(mode, str) or not mode:
            raise ValueError(f"a mode is a non-empty name, not {mode!r}")
        body: dict[str, Any] = {"mode": mode, "iterations": _whole(iterations, "iterations")}
        if sweeps is not None:
            body["sweeps"] = _whole(sweeps, "sweeps")
        if level_db is not None:
            body["level_db"] = _finite(level_db, "level_db")
        path = f"/api/v1/acoustics/zones/{quote(zone, safe='')}/adapt"
        return AdaptationState.parse(await self._call("POST", path, AcousticsRefused, json=body))

    async def stop_acoustics(self) -> dict[str, Any]:
        """Stop the test signal now: abort the running measurement, cancel a running
        adaptation (POST /api/v1/acoustics/stop). Returns what was stopped."""
        done = await self._call("POST", "/api/v1/acoustics/stop", AcousticsRefused)
        if not isinstance(done, dict):
            raise MalformedAnswer("POST /api/v1/acoustics/stop: not an object")
        return done

    async def adaptation_plot(self, run_id: str) -> bytes:
        """A finished adaptation's before/after plot (PNG bytes). AcousticsRefused 404: no
        such adaptation or no plot (it failed, or the plot could not be drawn); 409: still
        running."""
        path = f"/api/v1/acoustics/adaptations/{quote(run_id, safe='')}/plot"
        r = await self._http.get(path)
        if r.is_success:
            if not r.content.startswith(b"\x89PNG\r\n\x1a\n"):
                raise MalformedAnswer(f"GET {path}: {r.status_code} with a body that is not a PNG")
            return r.content
        raise _refusal(r, AcousticsRefused)

    async def adaptation(self) -> AdaptationState | None:
        """The service's current (or last) adaptation, None when it has run none since it
        started (or has no sound field)."""
        return _adaptation_of(await self.acoustics())

    async def wait_adaptation(
        self,
        run_id: str,
        *,
        on_progress: Callable[[AdaptationState], Any] | None = None,
        timeout_s: float = 900.0,
    ) -> AdaptationState:
        """Follow the adaptation ``run_id`` (the ``/ws`` topic ``acoustics``) until it is done
        or failed, and return its last state (``state.result`` when done: converged or not,
        the unreachable targets with their reasons). ``on_progress(state)`` sees every
        change of its state, phase or ``worst_jnd``. ``AcousticsRefused`` (404) when the
        service's adaptation is not (or no longer) this one, e.g. after a restart;
        ``MalformedAnswer`` for a state that does not parse; ``TimeoutError`` after
        ``timeout_s`` (the run goes on in the service)."""
        seen: tuple[Any, ...] | None = None

        def check(snap: dict[str, Any]) -> AdaptationState | None:
            nonlocal seen
            state = _adaptation_of(snap)
            if state is None or state.id != run_id:
                now = "none" if state is None else f"{state.id} ({state.zone}, {state.mode})"
                raise AcousticsRefused(
                    404, f"adaptation {run_id[:64]} is not the service's (its adaptation: {now})"
                )
            key = (state.state, state.phase, state.worst_jnd)
            if key != seen:
                seen = key
                if on_progress is not None:
                    on_progress(state)
            return state if state.finished else None

        async with asyncio.timeout(timeout_s), self.feed("acoustics") as feed:
            if (hit := check(await self.acoustics())) is not None:
                return hit
            async for msg in feed:
                snap = msg["snapshot"]
                if not isinstance(snap, dict) or "configured" not in snap:
                    continue  # the topic's first, empty state
                if (hit := check(snap)) is not None:
                    return hit
        raise TimeoutError(f"adaptation {run_id} did not end")  # pragma: no cover

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


# --- acoustics answers ---------------------------------------------------------------------

ADAPTATION_STATES = ("measuring", "adapting", "recalling", "done", "failed")
MAX_TEXT = 2000  # a reason or phase longer than this is cut (it is printed to terminals)
MAX_ITEMS = 1000  # iterations, unreachable targets, held bands: far more than a run has


def _whole(value: Any, what: str) -> int:
    """An integer argument (``True`` is not 1): ``ValueError`` before anything is sent."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be a whole number, not {value!r}")
    return value


def _text(value: Any, what: str, *, default: str | None = None) -> str:
    """A string of the answer, control characters (a terminal's escape codes) made visible
    and cut to ``MAX_TEXT``."""
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise MalformedAnswer(f"{what}: expected text, got {type(value).__name__}")
    clean = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in value[:MAX_TEXT])
    return clean + ("…" if len(value) > MAX_TEXT else "")


def _number(value: Any, what: str) -> float | None:
    """A number of the answer; None (or NaN, ±inf: the service sends none) is None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedAnswer(f"{what}: expected a number, got {type(value).__name__}")
    v = float(value)
    return v if math.isfinite(v) else None


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ITEMS:
        raise MalformedAnswer(f"{what}: expected a count 0..{MAX_ITEMS}, got {value!r}"[:200])
    return value


def _items(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedAnswer(f"{what}: expected a list, got {type(value).__name__}")
    if len(value) > MAX_ITEMS:
        raise MalformedAnswer(f"{what}: {len(value)} items, more than {MAX_ITEMS}")
    return value


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedAnswer(f"{what}: expected an object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class UnreachableTarget:
    """A mode's target the room cannot be brought to, and why (``dsp.adapt.Unreachable``)."""

    metric: str
    band_hz: float
    target: float | None
    best: float | None
    reason: str

    @classmethod
    def parse(cls, data: Any) -> UnreachableTarget:
        d = _mapping(data, "unreachable target")
        band = _number(d.get("band_hz"), "unreachable band_hz")
        if band is None or band <= 0:
            raise MalformedAnswer(f"unreachable target: band_hz {d.get('band_hz')!r}"[:200])
        return cls(
            metric=_text(d.get("metric"), "unreachable metric"),
            band_hz=band,
            target=_number(d.get("target"), "unreachable target"),
            best=_number(d.get("best"), "unreachable best"),
            reason=_text(d.get("reason"), "unreachable reason", default=""),
        )


@dataclass(frozen=True)
class AdaptationResult:
    """How an adaptation ended (``result`` of its state once done): ``converged`` (every held
    target within one JND), the ``reason``, the best iteration's worst error in JNDs, the
    targets ``held`` (metric -> bands), the ``unreachable`` ones with reasons, the loop gain,
    and the before/after plot's file name in the run's folder (``plot``; ``plot_error`` when
    it could not be drawn)."""

    converged: bool
    reason: str
    worst_jnd: float | None
    best_iteration: int | None
    held: dict[str, tuple[float, ...]]
    unreachable: tuple[UnreachableTarget, ...]
    loop_gain_db: float | None
    plot: str | None
    plot_error: str

    @classmethod
    def parse(cls, data: Any) -> AdaptationResult:
        d = _mapping(data, "adaptation result")
        converged = d.get("converged")
        if not isinstance(converged, bool):
            raise MalformedAnswer(f"adaptation result: converged {converged!r}"[:200])
        held: dict[str, tuple[float, ...]] = {}
        for metric, bands in _mapping(d.get("held", {}), "held").items():
            hz = [_number(b, f"held {metric}") for b in _items(bands, f"held {metric}")]
            held[_text(metric, "held metric")] = tuple(b for b in hz if b is not None)
        best = d.get("best_iteration")
        plot = d.get("plot")
        return cls(
            converged=converged,
            reason=_text(d.get("reason"), "adaptation reason", default=""),
            worst_jnd=_number(d.get("worst_jnd"), "result worst_jnd"),
            best_iteration=None if best is None else _count(best, "best_iteration"),
            held=held,
            unreachable=tuple(
                UnreachableTarget.parse(u) for u in _items(d.get("unreachable", []), "unreachable")
            ),
            loop_gain_db=_number(d.get("loop_gain_db"), "loop_gain_db"),
            plot=None if plot is None else _plot_name(plot),
            plot_error=_text(d.get("plot_error"), "plot_error", default=""),
        )


def _plot_name(value: Any) -> str:
    """The plot is a file name in the run's folder: never a path to somewhere else."""
    name = _text(value, "plot")
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise MalformedAnswer(f"plot: not a file name: {name!r}"[:200])
    return name


@dataclass(frozen=True)
class AdaptationState:
    """An adaptation run as the service reports it (``adaptation`` in ``GET
    /api/v1/acoustics``): ``state`` measuring / adapting / recalling / done / failed, a
    readable ``phase`` ("adapting 2 of 3: measuring"), ``iteration`` of ``iterations``, the
    worst error over the held targets in JNDs after each measured iteration (``worst_jnd``;
    None where it was not finite), ``error`` when failed, ``result`` when done; ``raw`` is
    the whole answer."""

    id: str
    zone: str
    mode: str
    state: str
    phase: str
    iteration: int
    iterations: int
    worst_jnd: tuple[float | None, ...]
    error: str
    result: AdaptationResult | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    @classmethod
    def parse(cls, data: Any) -> AdaptationState:
        d = _mapping(data, "adaptation")
        run_id = _text(d.get("id"), "adaptation id")
        if not run_id or not all(c.isalnum() or c in "-_" for c in run_id) or len(run_id) > 64:
            raise MalformedAnswer(f"adaptation id {run_id!r}"[:200])
        state = d.get("state")
        if state not in ADAPTATION_STATES:
            raise MalformedAnswer(f"adaptation state {state!r}"[:200])
        result = d.get("result")
        if state == "done" and result is None:
            raise MalformedAnswer("adaptation done without a result")
        return cls(
            id=run_id,
            zone=_text(d.get("zone"), "adaptation zone"),
            mode=_text(d.get("mode"), "adaptation mode"),
            state=state,
            phase=_text(d.get("phase"), "adaptation phase", default=state),
            iteration=_count(d.get("iteration", 0), "adaptation iteration"),
            iterations=_count(d.get("iterations"), "adaptation iterations"),
            worst_jnd=tuple(
                _number(v, "worst_jnd") for v in _items(d.get("worst_jnd", []), "worst_jnd")
            ),
            error=_text(d.get("error"), "adaptation error", default=""),
            result=None if result is None else AdaptationResult.parse(result),
            raw=d,
        )


def _adaptation_of(snapshot: Any) -> AdaptationState | None:
    """The adaptation of a ``GET /api/v1/acoustics`` answer (or the ``acoustics`` topic's
    state); None on a node without a sound field or before the first run."""
    snap = _mapping(snapshot, "GET /api/v1/acoustics")
    if snap.get("configured") is False:
        return None
    a = snap.get("adaptation")
    return None if a is None else AdaptationState.parse(a)


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
