"""REST and WebSocket API (``/api/v1``, ``/ws``) and the operator console (``/``).

Errors are JSON ``{"detail": "..."}`` with a reason a person can act on: 404 for an unknown
device, point or command; 422 for a command the profile refuses (out of range, wrong type,
missing argument); 503 when the device cannot take it now.

WebSocket ``/ws``: on connect the server sends ``{"type": "snapshot", ...}`` with every device,
its health and the latest value of every point, then ``{"type": "readings", ...}`` diffs at most
10 times a second, conflated per point, so a slow client receives fewer, newer messages and
never holds up anything else. A client may send ``{"type": "subscribe", "devices": [...]}``
to narrow the feed; anything malformed gets an ``error`` message and the connection stays up.
Playback (docs/playback.md, ``edge/api_playback.py``): ``{"type": "playback", "command": …}``
messages run cue-engine commands and are answered with ``playback.result``; while a show is
loaded the server also sends ``{"type": "playback", "snapshot": …}`` on every change.
Machinery (docs/machinery.md, ``edge/api_machinery.py``): ``{"type": "machinery", "command":
…}`` (enable, release, move, stop, confirm, estop, estop.reset) answered with
``machinery.result``; on a node with axes the server sends ``{"type": "machinery",
"snapshot": …}`` every 0.1 s while anything moves or an enable is held, else every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import (
    Body,
    Depends,
    FastAPI,
    HTTPException,
    Query,
    Request,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from drivers.base import DeviceUnavailable
from drivers.model import CommandError, Device, Reading
from edge import (
    api_acoustics,
    api_alarms,
    api_auth,
    api_configurations,
    api_journal,
    api_lighting,
    api_machinery,
    api_maintenance,
    api_playback,
    api_telemetry,
    api_timecode,
    ws_topics,
)
from edge import metrics as edge_metrics
from edge.api_docs import allowed_methods, complete, errors
from edge.auth import RateLimiter

if TYPE_CHECKING:
    from edge.service import Service

STATIC = Path(__file__).parent / "static"
WS_INTERVAL_S = 0.1
WS_MIN_GAP_S = 0.05  # a topic's changes go out at most this often (bursts are conflated)


class HealthOut(BaseModel):
    state: str
    reason: str
    since: float


class DeviceOut(BaseModel):
    id: str
    name: str
    profile: str
    device_class: str
    protocol: str
    address: str
    poll_hz: float
    health: HealthOut
    stats: dict[str, Any]
    commands: dict[str, dict[str, Any]]


class PointOut(BaseModel):
    name: str
    unit: str
    dtype: str
    access: str
    min: float | None
    max: float | None
    description: str
    value: float | int | bool | str | None
    quality: str | None
    ts: float | None


class HistoryOut(BaseModel):
    device: str
    point: str
    ts: list[float]
    values: list[float | int | str | None]
    quality: list[str]


class CommandOut(BaseModel):
    device: str
    command: str
    writes: dict[str, float | int | bool | str]


def reading_json(r: Reading) -> dict[str, Any]:
    return {
        "d": r.device,
        "p": r.point,
        "v": ws_topics.json_safe(r.value),
        "q": r.quality.value,
        "ts": r.ts_wall,
    }


def create_app(service: Service) -> FastAPI:
    gate = api_auth.Gate(service)
    app = FastAPI(
        dependencies=[Depends(api_auth.dependency(gate))],
        title="Flytower",
        version="1",
        summary="Stage machinery, lighting, AV and acoustics from one edge service",
        docs_url="/api/docs",
        openapi_url="/api/v1/openapi.json",
    )

    registry, http_seconds = edge_metrics.registry_for(service)
    app.add_middleware(edge_metrics.TimingMiddleware, histogram=http_seconds)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus text format (edge/metrics.py)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default handler echoes the raw input, and crashes (500) on a body that is
        # not UTF-8 (fastapi#13111). Say where and what, never echo what the client sent.
        detail = [
            {"loc": [str(part) for part in err.get("loc", ())], "msg": err.get("msg", "")}
            for err in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(405)
    async def method_not_allowed(request: Request, exc: StarletteHTTPException) -> Response:
        # Starlette names the methods of the first route on the path only.
        allow = ", ".join(sorted(allowed_methods(app, request.url.path)))
        exc.headers = {**(exc.headers or {}), "Allow": allow}
        return await http_exception_handler(request, exc)

    def device_or_404(device_id: str) -> Device:
        dev = service.devices.get(device_id)
        if dev is None:
            raise HTTPException(404, f"no device '{device_id}'")
        return dev

    def device_out(dev: Device) -> DeviceOut:
        h = service.health[dev.id]
        driver = service.drivers.get(dev.id)
        return DeviceOut(
            id=dev.id,
            name=dev.name,
            profile=dev.profile.id,
            device_class=dev.profile.device_class,
            protocol=dev.profile.protocol,
            address=dev.transport.endpoint,
            poll_hz=dev.poll_hz,
            health=HealthOut(state=h.state.value, reason=h.reason, since=h.since_wall),
            stats=driver.stats.as_dict() if driver else {},
            commands={
                name: {
                    "description": c.description,
                    "moves_machinery": c.moves_machinery,
                    "args": {a: s.model_dump() for a, s in c.args.items()},
                }
                for name, c in dev.profile.commands.items()
            },
        )

    def topic_source(topic: str, key: Any) -> tuple[ws_topics.Source, Callable[[], Any] | None]:
        """Where a WebSocket topic's states come from (edge/ws_topics.py): one source per
        topic and filter, shared by every connection that subscribes to it; and how to build
        its state at once, where it can (for a newcomer)."""

        async def every(interval_s: float, build: Callable[[], Any]) -> ws_topics.States:
            while True:
                yield build(), None
                await asyncio.sleep(interval_s)

        def devices() -> Any:
            return {
                d.id: device_out(d).model_dump()
                for d in service.devices.values()
                if key is None or d.id in key
            }

        def axes() -> Any:
            sup = service.supervisor
            return {} if sup is None else ws_topics.json_safe(sup.snapshot())

        def alarms() -> Any:
            engine = getattr(service, "alarms", None)
            return {"alarms": [] if engine is None else ws_topics.json_safe(engine.active())}

        def lighting() -> Any:
            e = service.lighting
            if e is None:
                return {"rendered": False}
            levels = {str(u): e.universe(u).tolist() for u in e.patch.universes}
            return ws_topics.json_safe({"rendered": True} | e.status() | {"levels": levels})

        def acoustics() -> Any:
            sf = service.soundfield
            if sf is None:
                return {"configured": False}
            return ws_topics.json_safe({"configured": True} | sf.snapshot())

        async def playback() -> ws_topics.States:
            """Every change at once (a GO reaches the consoles without waiting out an
            interval), at most one per WS_MIN_GAP_S; while cues run, their progress every
            WS_INTERVAL_S besides."""
            while (pb := service.playback) is None:
                yield {}, None
                await asyncio.sleep(1.0)
            while True:
                snap = ws_topics.json_safe(pb.snapshot())
                yield snap, None
                sent_at = time.monotonic()
                running = any(r["running"] for r in snap["lists"])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        pb.wait_changed(snap["version"]), WS_INTERVAL_S if running else 5.0
                    )
                await asyncio.sleep(max(0.0, sent_at + WS_MIN_GAP_S - time.monotonic()))

        async def configurations() -> ws_topics.States:
            sw = api_configurations.switcher(service)
            yield ({} if sw is None else ws_topics.json_safe(sw.progress())), None
            if sw is None:
                await asyncio.Event().wait()  # this node runs no switches
                return
            while True:
                version = sw.version
                if sw.running:
                    await asyncio.sleep(WS_INTERVAL_S)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(sw.wait_changed(version), 5.0)
                yield ws_topics.json_safe(sw.progress()), None

        async def telemetry() -> ws_topics.States:
            devs, points = key if key is not None else (None, None)

            def wanted(r: Reading) -> bool:
                if devs is None and points is None:
                    return True
                return (devs is not None and r.device in devs) or (
                    points is not None and (r.device, r.point) in points
                )

            def entry(r: Reading) -> dict[str, Any]:
                return {"v": ws_topics.json_safe(r.value), "q": r.quality.value, "ts": r.ts_wall}

            sub = service.live_feed(f"ws-topic:telemetry:{hash(key)}")
            try:
                state = {
                    f"{r.device}/{r.point}": entry(r)
                    for r in list(service.live.values())
                    if wanted(r)
                }
                yield state, None
                while True:
                    batch = await sub.get_batch()
                    ops = []
                    for r in batch:
                        if wanted(r):
                            name = f"{r.device}/{r.point}"
                            op = "replace" if name in state else "add"
                            state[name] = value = entry(r)
                            path = "/" + ws_topics.escape(name)
                            ops.append({"op": op, "path": path, "value": value})
                    if ops:
                        yield state, ops
                    await asyncio.sleep(WS_INTERVAL_S)  # conflate: at most 10 a second
            finally:
                sub.close()

        def playback_now() -> Any:
            pb = service.playback
            return {} if pb is None else ws_topics.json_safe(pb.snapshot())

        def configurations_now() -> Any:
            sw = api_configurations.switcher(service)
            return {} if sw is None else ws_topics.json_safe(sw.progress())

        polled: dict[str, tuple[float, Callable[[], Any]]] = {
            "devices": (1.0, devices),
            "axes": (WS_INTERVAL_S, axes),
            "alarms": (WS_INTERVAL_S, alarms),
            "lighting": (WS_INTERVAL_S, lighting),
            "acoustics": (2 * WS_INTERVAL_S, acoustics),
        }
        if topic in polled:
            interval, build = polled[topic]
            return (lambda: every(interval, build)), build
        if topic == "playback":
            return playback, playback_now
        if topic == "configurations":
            return configurations, configurations_now
        return telemetry, None

    hub = ws_topics.Hub(topic_source)

    @app.get("/api/v1/health", tags=["service"])
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "venue": service.venue.config.venue.id,
            "node": service.node,
            "uptime_s": round(time.time() - service.started_at, 3),
            "devices": {d: h.state.value for d, h in service.health.items()},
            "links": service.links(),
            "readings_stored": service.store.written,
            "queues": {s.name: len(s) for s in service.readings.subscriptions},
        }

    @app.get("/api/v1/nodes", tags=["service"])
    async def list_nodes() -> list[dict[str, Any]]:
        """The venue's nodes: role, state from their births and wills, devices, and, seen
        from a controller, each one's clock offset (docs/distributed.md)."""
        return service.nodes.status()

    @app.get("/api/v1/control", tags=["service"])
    async def control_status() -> dict[str, Any]:
        """Which controller runs the show, and this one's part in it: holder, term, the
        commands sent to or applied from the other, the last takeover (docs/distributed.md)."""
        return service.control.status()

    @app.post("/api/v1/control/takeover", tags=["service"], responses=errors(409))
    async def control_takeover(request: Request) -> dict[str, Any]:
        """This standby controller takes the show: a planned switch, or the fail-back to a
        primary that came back. Journalled; the other controller yields."""
        seat = service.control
        if not seat.enabled:
            raise HTTPException(409, "this node has no standby controller to share the show with")
        if seat.active:
            raise HTTPException(409, f"this controller ({seat.node}) already runs the show")
        who = api_auth.origin_of(request).source
        await seat.claim(f"asked by {who}", "control.failback")
        return seat.status()

    @app.get("/api/v1/devices", tags=["devices"])
    async def list_devices() -> list[DeviceOut]:
        return [device_out(d) for d in service.devices.values()]

    @app.get("/api/v1/devices/{device_id}", tags=["devices"], responses=errors(404))
    async def get_device(device_id: str) -> DeviceOut:
        return device_out(device_or_404(device_id))

    @app.get("/api/v1/devices/{device_id}/points", tags=["devices"], responses=errors(404))
    async def get_points(device_id: str) -> list[PointOut]:
        dev = device_or_404(device_id)
        out = []
        for p in dev.profile.points.values():
            r = service.live.get((dev.id, p.name))
            out.append(
                PointOut(
                    name=p.name,
                    unit=p.unit,
                    dtype=p.dtype.value,
                    access=p.access.value,
                    min=p.min,
                    max=p.max,
                    description=p.description,
                    value=ws_topics.json_safe(r.value) if r else None,
                    quality=r.quality.value if r else None,
                    ts=r.ts_wall if r else None,
                )
            )
        return out

    @app.get(
        "/api/v1/devices/{device_id}/points/{point}/history",
        tags=["telemetry"],
        responses=errors(404),
    )
    async def get_history(
        device_id: str,
        point: str,
        start: float | None = Query(None, description="epoch seconds, inclusive"),
        end: float | None = Query(None, description="epoch seconds, inclusive"),
        limit: int = Query(1000, ge=1, le=100_000),
    ) -> HistoryOut:
        dev = device_or_404(device_id)
        if point not in dev.profile.points:
            raise HTTPException(404, f"device '{device_id}' has no point '{point}'")
        for name, v in (("start", start), ("end", end)):
            if v is not None and not math.isfinite(v):
                raise HTTPException(422, f"{name} must be a finite number of epoch seconds")
        if start is not None and end is not None and start > end:
            raise HTTPException(422, "start is after end")
        rows = await service.store.history(device_id, point, start, end, limit)
        return HistoryOut(
            device=device_id,
            point=point,
            ts=[r.ts for r in rows],
            values=[r.value for r in rows],
            quality=[r.quality.value for r in rows],
        )

    @app.post(
        "/api/v1/devices/{device_id}/commands/{command}",
        tags=["devices"],
        responses=errors(404, 503),
    )
    async def post_command(
        request: Request,
        device_id: str,
        command: str,
        args: dict[str, Any] = Body(default_factory=dict),
    ) -> CommandOut:
        dev = device_or_404(device_id)
        if command not in dev.profile.commands:
            known = ", ".join(sorted(dev.profile.commands))
            raise HTTPException(
                404, f"device '{device_id}' has no command '{command}' (known: {known})"
            )
        driver = service.drivers.get(device_id)
        if driver is None:
            raise HTTPException(503, f"device '{device_id}' has no running driver")
        try:
            writes = await service.command(driver, command, args, api_auth.origin_of(request))
        except CommandError as exc:
            raise HTTPException(422, str(exc)) from exc
        except DeviceUnavailable as exc:
            raise HTTPException(503, str(exc)) from exc
        return CommandOut(device=device_id, command=command, writes=dict(writes))

    @app.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()  # signed in and from an allowed origin: api_auth.dependency
        peer = f"{socket.client.host}:{socket.client.port}" if socket.client else "?"
        principal = api_auth.principal_of(socket)
        limiter = RateLimiter(ws_topics.MESSAGES_PER_S, ws_topics.BURST)
        wanted: set[str] | None = None  # the console's feeds: readings of these devices only
        feeds: asyncio.Task[None] | None = None

        sending_since: list[float] = []  # when each send in progress began

        async def send_text(text: str) -> None:
            """A client that stops reading (its TCP window full) is dropped once a send has
            waited SEND_TIMEOUT_S (``watchdog``): it never holds memory, the other clients or
            the show. (No timer per message: with hundreds of consoles that cost more than
            the send.)"""
            sending_since.append(time.monotonic())
            try:
                await socket.send_text(text)
            finally:
                sending_since.pop(0)

        async def watchdog() -> None:
            while True:
                await asyncio.sleep(1.0)
                if sending_since and time.monotonic() - sending_since[0] > ws_topics.SEND_TIMEOUT_S:
                    raise WebSocketDisconnect(1008, "too slow: messages not read")

        async def send_json(msg: dict[str, Any]) -> None:
            await send_text(ws_topics.encode(msg))

        def refused(msg: dict[str, Any]) -> dict[str, Any] | None:
            """The refusal of a message this principal's role may not send, or of one over the
            client's rate (stops are never limited), else None."""
            kind = str(msg.get("type"))
            command = msg.get("command")
            perms = api_auth.ws_needed(kind, command if isinstance(command, str) else None)
            status = 0
            if not principal.may(perms):
                status, detail = 403, api_auth.refusal(principal, perms)
            elif perms != api_auth.STOP_ONLY and not limiter.allow():
                status = 429
                detail = f"too many messages: at most {ws_topics.MESSAGES_PER_S:g} a second"
            if not status:
                return None
            return {
                "type": f"{kind}.result" if kind in ("playback", "machinery") else "error",
                "id": msg.get("id"),
                "ok": False,
                "status": status,
                "detail": detail,
            }

        async def receive() -> None:
            nonlocal wanted, feeds
            while True:
                message = await socket.receive()
                if message["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(message.get("code", 1000))
                text = message.get("text")
                if text is None:
                    await send_json({"type": "error", "detail": "send JSON text frames"})
                    continue
                try:
                    msg = json.loads(text)
                    if not isinstance(msg, dict):
                        raise ValueError('expected {"type": "subscribe", "topics": [...]}')
                    no = refused(msg)
                    if no is not None:
                        await send_json(no)
                        continue
                    origin = api_auth.origin_of(socket, "ws")
                    if msg.get("type") == "playback":
                        await send_json(await api_playback.ws_command(service, msg, origin))
                        continue
                    if msg.get("type") == "machinery":
                        await send_json(await api_machinery.ws_command(service, msg, origin, peer))
                        continue
                    if msg.get("type") != "subscribe":
                        raise ValueError('expected {"type": "subscribe", "topics": [...]}')
                    topics, devices, points = ws_topics.parse_subscription(msg, service.devices)
                    if topics is None:  # the console's feeds, narrowed to these devices
                        wanted = devices
                        await send_json({"type": "subscribed", "devices": msg.get("devices")})
                        continue
                    if feeds is not None:
                        feeds.cancel()
                        await asyncio.gather(feeds, return_exceptions=True)
                    await send_json(
                        {
                            "type": "subscribed",
                            "topics": topics,
                            "devices": sorted(devices) if devices is not None else None,
                            "points": sorted(f"{d}/{p}" for d, p in points) if points else None,
                        }
                    )
                    feeds = asyncio.create_task(subscribed(topics, devices, points))
                except ValueError as exc:  # JSONDecodeError and SubscribeError are ValueErrors
                    await send_json({"type": "error", "detail": str(exc)[:200]})

        async def console_feeds() -> None:
            """Every feed, whole snapshots: what the console has used from the start."""
            sub = service.live_feed(f"ws:{id(socket)}")
            try:
                await send_json(
                    {
                        "type": "snapshot",
                        "devices": [device_out(d).model_dump() for d in service.devices.values()],
                        "readings": [reading_json(r) for r in list(service.live.values())],
                    }
                )
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(api_playback.ws_feed(service, send_json))
                    tg.create_task(api_configurations.ws_feed(service, send_json))
                    tg.create_task(api_machinery.ws_feed(service, send_json))
                    tg.create_task(api_alarms.ws_feed(service, send_json))
                    last_health: dict[str, str] = {}
                    while True:
                        batch = await sub.get_batch()
                        health = {
                            d: f"{h.state.value}:{h.reason}" for d, h in service.health.items()
                        }
                        if health != last_health:
                            last_health = health
                            await send_json(
                                {
                                    "type": "health",
                                    "health": {
                                        d: {"state": h.state.value, "reason": h.reason}
                                        for d, h in service.health.items()
                                    },
                                }
                            )
                        readings = [
                            reading_json(r) for r in batch if wanted is None or r.device in wanted
                        ]
                        if readings:
                            await send_json({"type": "readings", "readings": readings})
                        await asyncio.sleep(WS_INTERVAL_S)  # conflate: at most 10 a second
            finally:
                sub.close()

        async def subscribed(
            topics: list[str], devices: set[str] | None, points: set[tuple[str, str]] | None
        ) -> None:
            """Each topic: its snapshot, then JSON patches of what changed, from the hub's one
            publisher per topic and filter (edge/ws_topics.py)."""
            sub = ws_topics.Subscriber(send_text)
            try:
                for topic in topics:
                    key: Any = None
                    if topic == "telemetry" and (devices is not None or points is not None):
                        key = (
                            frozenset(devices) if devices is not None else None,
                            frozenset(points) if points is not None else None,
                        )
                    elif topic == "devices" and devices is not None:
                        key = frozenset(devices)
                    hub.subscribe(sub, topic, key)
                await sub.run()
            finally:
                hub.unsubscribe(sub)

        async def still_signed_in() -> None:
            """A revoked or expired credential, a disabled user: close with 1008 and why."""
            while True:
                await asyncio.sleep(api_auth.RECHECK_S)
                try:
                    gate.principal(socket)
                except HTTPException as exc:
                    await socket.close(1008, str(exc.detail)[:120])
                    raise WebSocketDisconnect(1008) from None

        async def from_query() -> None:
            """``/ws?topics=a,b&devices=x&points=d/p``: subscribed from the handshake on, with
            no console feeds first (what a script or a crowd of consoles wants)."""
            q = socket.query_params
            msg: dict[str, Any] = {"topics": q["topics"].split(",")}
            for name in ("devices", "points"):
                if q.get(name):
                    msg[name] = q[name].split(",")
            try:
                topics, devices, points = ws_topics.parse_subscription(msg, service.devices)
            except ws_topics.SubscribeError as exc:
                await send_json({"type": "error", "detail": str(exc)[:200]})
                await asyncio.Event().wait()  # until the client subscribes by a message
                return
            assert topics is not None
            await send_json({"type": "subscribed", "topics": topics})
            await subscribed(topics, devices, points)

        async def feeds_until_subscribed() -> None:
            nonlocal feeds
            wanted_topics = "topics" in socket.query_params
            feeds = asyncio.create_task(from_query() if wanted_topics else console_feeds())
            while True:  # a subscription replaces the task; end with whichever fails
                current = feeds
                await asyncio.wait([current])  # (being cancelled here leaves `current` be)
                if feeds is current:
                    current.result()  # raises what ended it
                    return

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(receive())
                tg.create_task(feeds_until_subscribed())
                tg.create_task(watchdog())
                if principal.via != "open":
                    tg.create_task(still_signed_in())
        except* (WebSocketDisconnect, RuntimeError):
            pass  # the client went away (RuntimeError: sending on a closed socket)
        finally:
            if feeds is not None:
                feeds.cancel()
                await asyncio.gather(feeds, return_exceptions=True)
            with contextlib.suppress(RuntimeError, WebSocketDisconnect, TimeoutError):
                async with asyncio.timeout(1.0):  # already gone, or not reading
                    await socket.close()

    @app.get("/", include_in_schema=False)
    async def console() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    # The cue engine's routes first: a GO matches before the other routes are tried.
    app.include_router(api_auth.router(service, gate))
    app.include_router(api_playback.router(service))
    app.include_router(api_configurations.router(service))
    app.include_router(api_journal.router(service))
    app.include_router(api_machinery.router(service))
    app.include_router(api_lighting.router(service))
    app.include_router(api_timecode.router(service))
    app.include_router(api_acoustics.router(service))
    app.include_router(api_telemetry.router(service))
    app.include_router(api_maintenance.router(service))
    app.include_router(api_alarms.router(service))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    complete(app)  # the error answers in the OpenAPI document
    return app
