"""The simulator control endpoint: ground truth and fault injection over HTTP/JSON.

Three layers, so one HTTP app serves one process or many:

- ``Control`` is the set of operations (list devices, read truth, inject/clear faults, open the
  e-stop chain, stats). ``LocalControl`` performs them on the devices of this process.
- ``ChildLink`` performs them in a child process over its stdin/stdout pipe: one JSON object
  per line each way, one request at a time. A pipe needs no port, cannot be reached by anyone
  else, and its end-of-file tells a child that its parent is gone. ``FanOutControl`` sends each
  operation to the child that owns the device, or to all of them and merges the answers.
- ``create_app`` is the FastAPI app of the contract (``/sim/v1/...``), served by ``serve_http``
  from a socket we bind ourselves, so a taken port is an ``OSError`` for the caller, not a
  ``sys.exit`` inside uvicorn.

Hostile input gets 4xx, never 500: unknown device 404; unknown fault, bad parameters, a body
that is not a JSON object, or a non-finite number 422 with the reason in ``detail``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from simulators.core import FaultError, SimulatedDevice

PREFIX = "/sim/v1"
ESTOP_FAULT = "estop"


class UnknownDevice(LookupError):
    """No simulated device has this id (HTTP 404)."""


class ChildGone(RuntimeError):
    """A child process stopped answering (HTTP 503)."""


class Control(Protocol):
    async def health(self) -> dict[str, Any]: ...

    async def devices(self) -> list[dict[str, Any]]: ...

    async def device(self, device_id: str) -> dict[str, Any]: ...

    async def truth(self, ids: Sequence[str] | None) -> dict[str, Any]: ...

    async def inject(
        self, device_id: str, fault: str, params: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    async def clear(self, device_id: str, fault: str | None) -> dict[str, Any]: ...

    async def estop(self, open_chain: bool) -> list[str]: ...

    async def stats(self) -> dict[str, Any]: ...


# --- JSON -----------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (families vectorise) as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _finite(value: Any) -> Any:
    """NaN and infinities (a dropped-out sensor) as null: JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Strict JSON of ``value``: numpy values made plain, non-finite numbers as null."""
    try:
        return json.dumps(value, allow_nan=False, default=_plain, separators=(",", ":"))
    except ValueError:
        plain = json.loads(json.dumps(value, default=_plain))
        return json.dumps(_finite(plain), allow_nan=False, separators=(",", ":"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def loads_object(body: bytes, what: str) -> dict[str, Any]:
    """A JSON object from a request body (empty means {}); FaultError says what is wrong."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FaultError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise FaultError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content).encode()


# --- operations on this process's devices ----------------------------------------------------


def device_info(device: SimulatedDevice, family: str) -> dict[str, Any]:
    return {
        "id": device.id,
        "model": device.model,
        "family": family,
        "faults": [
            {"name": f.name, "description": f.description, "params": dict(f.params)}
            for f in device.fault_catalogue()
        ],
        "active": device.active_faults(),
    }


class LocalControl:
    """The control operations on the devices simulated in this process."""

    def __init__(
        self,
        devices: Mapping[str, SimulatedDevice],
        family_of: Mapping[str, str],
        family_stats: Mapping[str, Any],
    ) -> None:
        self._devices = devices
        self._family_of = family_of
        self._family_stats = family_stats  # name -> Family; stats() is called on demand
        self.started = time.monotonic()

    def _get(self, device_id: str) -> SimulatedDevice:
        try:
            return self._devices[device_id]
        except KeyError:
            raise UnknownDevice(f"no simulated device {device_id!r}") from None

    def process(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "devices": len(self._devices), "cpu_s": time.process_time()}

    async def health(self) -> dict[str, Any]:
        return {"ready": True, "pid": os.getpid(), "devices": len(self._devices), "processes": 1}

    async def devices(self) -> list[dict[str, Any]]:
        return [device_info(d, self._family_of[i]) for i, d in self._devices.items()]

    async def device(self, device_id: str) -> dict[str, Any]:
        dev = self._get(device_id)
        return {**device_info(dev, self._family_of[device_id]), "truth": dev.truth()}

    async def truth(self, ids: Sequence[str] | None) -> dict[str, Any]:
        chosen = [self._get(i) for i in ids] if ids is not None else self._devices.values()
        return {d.id: d.truth() for d in chosen}

    async def inject(self, device_id: str, fault: str, params: Mapping[str, Any]) -> dict[str, Any]:
        dev = self._get(device_id)
        dev.inject(fault, params)
        return dev.active_faults()

    async def clear(self, device_id: str, fault: str | None) -> dict[str, Any]:
        dev = self._get(device_id)
        if fault is not None:
            known = [f.name for f in dev.fault_catalogue()]
            if fault not in known:
                raise FaultError(
                    f"{device_id}: no fault {fault!r} (known: {', '.join(known) or 'none'})"
                )
        dev.clear(fault)
        return dev.active_faults()

    async def estop(self, open_chain: bool) -> list[str]:
        chained = [
            d
            for d in self._devices.values()
            if any(f.name == ESTOP_FAULT for f in d.fault_catalogue())
        ]
        for d in chained:
            if open_chain:
                d.inject(ESTOP_FAULT, {})
            else:
                d.clear(ESTOP_FAULT)
        return [d.id for d in chained]

    async def stats(self) -> dict[str, Any]:
        return {
            "uptime_s": time.monotonic() - self.started,
            "processes": [self.process()],
            "families": {name: fam.stats() for name, fam in self._family_stats.items()},
        }


# --- the pipe between a parent and its children ----------------------------------------------

OPS = ("health", "devices", "device", "truth", "inject", "clear", "estop", "stats")


async def answer(control: LocalControl, line: bytes) -> bytes:
    """Child side: one request line in, one reply line out (errors travel as kinds)."""
    try:
        request = json.loads(line)
        op, args = request["op"], request.get("args", {})
        if op not in OPS:
            raise ValueError(f"unknown operation {op!r}")
        result = await getattr(control, op)(**args)
        reply: dict[str, Any] = {"ok": result}
        if op == "stats":
            reply["ok"] = {**result, "process": control.process()}
    except UnknownDevice as exc:
        reply = {"error": "unknown_device", "message": str(exc)}
    except FaultError as exc:
        reply = {"error": "fault", "message": str(exc)}
    except (ValueError, KeyError, TypeError) as exc:  # a malformed request from our parent
        reply = {"error": "bad_request", "message": f"{type(exc).__name__}: {exc}"}
    return dumps(reply).encode() + b"\n"


class ChildLink:
    """Parent side of one child's pipe: ``call`` sends a request and waits for its reply."""

    def __init__(
        self, pid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.pid = pid
        self.device_ids: frozenset[str] = frozenset()
        self._reader, self._writer = reader, writer
        self._lock = asyncio.Lock()  # one request at a time: replies need no ids

    async def call(self, op: str, **args: Any) -> Any:
        async with self._lock:
            try:
                self._writer.write(dumps({"op": op, "args": args}).encode() + b"\n")
                await self._writer.drain()
                line = await self._reader.readline()
            except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
                raise ChildGone(f"simulator process {self.pid}: {exc}") from exc
        if not line:
            raise ChildGone(f"simulator process {self.pid} has exited")
        reply = json.loads(line)
        if "ok" in reply:
            return reply["ok"]
        kind, message = reply.get("error"), str(reply.get("message"))
        if kind == "unknown_device":
            raise UnknownDevice(message)
        if kind == "fault":
            raise FaultError(message)
        raise RuntimeError(f"simulator process {self.pid}: {message}")


class FanOutControl:
    """The control operations over several child processes, each owning some devices."""

    def __init__(self, children: Sequence[ChildLink]) -> None:
        self._children = list(children)
        self._owner = {i: c for c in self._children for i in c.device_ids}
        self.started = time.monotonic()

    def _child(self, device_id: str) -> ChildLink:
        try:
            return self._owner[device_id]
        except KeyError:
            raise UnknownDevice(f"no simulated device {device_id!r}") from None

    async def _all(self, op: str, **args: Any) -> list[Any]:
        return await asyncio.gather(*(c.call(op, **args) for c in self._children))

    async def health(self) -> dict[str, Any]:
        await self._all("health")  # every child answers, or this raises ChildGone
        return {
            "ready": True,
            "pid": os.getpid(),
            "devices": len(self._owner),
            "processes": len(self._children),
        }

    async def devices(self) -> list[dict[str, Any]]:
        return [d for part in await self._all("devices") for d in part]

    async def device(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._child(device_id).call("device", device_id=device_id)
        return result

    async def truth(self, ids: Sequence[str] | None) -> dict[str, Any]:
        if ids is None:
            parts = await self._all("truth", ids=None)
        else:
            wanted: dict[ChildLink, list[str]] = {}
            for i in ids:
                wanted.setdefault(self._child(i), []).append(i)
            parts = await asyncio.gather(*(c.call("truth", ids=w) for c, w in wanted.items()))
        return {k: v for part in parts for k, v in part.items()}

    async def inject(self, device_id: str, fault: str, params: Mapping[str, Any]) -> dict[str, Any]:
        child = self._child(device_id)
        result: dict[str, Any] = await child.call(
            "inject", device_id=device_id, fault=fault, params=dict(params)
        )
        return result

    async def clear(self, device_id: str, fault: str | None) -> dict[str, Any]:
        result: dict[str, Any] = await self._child(device_id).call(
            "clear", device_id=device_id, fault=fault
        )
        return result

    async def estop(self, open_chain: bool) -> list[str]:
        return [i for part in await self._all("estop", open_chain=open_chain) for i in part]

    async def stats(self) -> dict[str, Any]:
        parts = await self._all("stats")
        # A family split over processes reports per process: its rates are not all additive.
        families: dict[str, Any] = {}
        for part in parts:
            pid = str(part["process"]["pid"])
            for name, stats in part["families"].items():
                families.setdefault(name, {"per_process": {}})["per_process"][pid] = stats
        for name, entry in families.items():
            if len(entry["per_process"]) == 1:
                families[name] = next(iter(entry["per_process"].values()))
        return {
            "uptime_s": time.monotonic() - self.started,
            "processes": [part["process"] for part in parts],
            "families": families,
        }


# --- HTTP -------------------------------------------------------------------------------------


def _detail(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def create_app(control: Control) -> FastAPI:
    """The control endpoint of docs: /sim/v1/health, devices, truth, faults, estop, stats."""
    app = FastAPI(
        title="Flytower simulators",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
        default_response_class=JSONResponse,
    )

    @app.exception_handler(UnknownDevice)
    async def _unknown(request: Request, exc: UnknownDevice) -> Response:
        return _detail(404, str(exc.args[0]) if exc.args else "unknown device")

    @app.exception_handler(FaultError)
    async def _fault(request: Request, exc: FaultError) -> Response:
        return _detail(422, str(exc))

    @app.exception_handler(ChildGone)
    async def _gone(request: Request, exc: ChildGone) -> Response:
        return _detail(503, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return _detail(422, "; ".join(str(e.get("msg", e)) for e in exc.errors()))

    @app.get(f"{PREFIX}/health")
    async def health() -> Any:
        return await control.health()

    @app.get(f"{PREFIX}/devices")
    async def devices() -> Any:
        return await control.devices()

    @app.get(f"{PREFIX}/devices/{{device_id}}")
    async def device(device_id: str) -> Any:
        return await control.device(device_id)

    @app.get(f"{PREFIX}/truth")
    async def truth(ids: str | None = None) -> Any:
        chosen = None if ids is None else [i for i in ids.split(",") if i]
        t = time.time()
        return {"t": t, "devices": await control.truth(chosen)}

    @app.post(f"{PREFIX}/devices/{{device_id}}/faults/{{fault}}")
    async def inject(device_id: str, fault: str, request: Request) -> Any:
        params = loads_object(await request.body(), f"{device_id}/{fault} parameters")
        return {"active": await control.inject(device_id, fault, params)}

    @app.delete(f"{PREFIX}/devices/{{device_id}}/faults/{{fault}}")
    async def clear_one(device_id: str, fault: str) -> Any:
        return {"active": await control.clear(device_id, fault)}

    @app.delete(f"{PREFIX}/devices/{{device_id}}/faults")
    async def clear_all(device_id: str) -> Any:
        return {"active": await control.clear(device_id, None)}

    @app.post(f"{PREFIX}/estop")
    async def estop(request: Request) -> Any:
        body = loads_object(await request.body(), "estop")
        if set(body) != {"open"} or not isinstance(body["open"], bool):
            raise FaultError('estop: expected {"open": true} or {"open": false}')
        return {"open": body["open"], "devices": await control.estop(body["open"])}

    @app.get(f"{PREFIX}/stats")
    async def stats() -> Any:
        return await control.stats()

    return app


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """The endpoint's listening socket (port 0: any free port); OSError if it is taken.

    The protocol is named: asyncio sets TCP_NODELAY on accepted connections only when the
    listening socket's ``proto`` is IPPROTO_TCP, and without it Nagle plus delayed ACK make
    every control request wait ~40 ms."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"control endpoint {host}:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def serve_http(control: Control, sock: socket.socket) -> AsyncIterator[None]:
    """Serve the control endpoint on ``sock`` until the block exits."""
    config = uvicorn.Config(
        create_app(control), log_level="warning", lifespan="off", timeout_graceful_shutdown=1
    )
    server = _Uvicorn(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="sim-control")
    try:
        while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn has no event)
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        yield
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        sock.close()
