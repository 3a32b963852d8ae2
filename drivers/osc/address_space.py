"""The documented OSC address space (docs/interfaces/osc.md), as route specifications.

The server itself answers ``/connect``, ``/disconnect`` and ``/flytower/ping``. Every other
address here is served by a handler the service registers with ``OscRouter.add(SPEC, handler)``;
until it does, the address is unknown and answers an error. Keeping the specs in one module
means the documentation, the service's wiring and the tests name the same signatures.
"""

from __future__ import annotations

from drivers.osc.router import ArgSpec, ArgType, RouteSpec

# --- answered by the server -------------------------------------------------------------------
CONNECT = RouteSpec(
    "/connect",
    (ArgSpec("passcode", ArgType.STRING, optional=True),),
    "Open a session for this UDP source or TCP connection (QLab's /connect).",
)
DISCONNECT = RouteSpec("/disconnect", (), "Close this source's session.")
PING = RouteSpec("/flytower/ping", (), "Liveness; data: {'ts': server wall-clock seconds}.")

# --- QLab-compatible transport, served by the cue engine ----------------------------------------
GO = RouteSpec("/go", (), "GO: start the cue at the playhead and advance it.")
STOP = RouteSpec("/stop", (), "Stop every running cue (a controlled stop, with its fades).")
PANIC = RouteSpec("/panic", (), "Stop everything now: no fades; machinery to a safe stop.")
CUE_START = RouteSpec("/cue/{number}/start", (), "Start cue {number}; the playhead stays.")
CUE_STOP = RouteSpec("/cue/{number}/stop", (), "Stop cue {number} if it runs.")
PLAYHEAD = RouteSpec("/playhead/{number}", (), "Put cue {number} on standby (QLab's playhead).")

# --- Flytower devices, served by the device layer -----------------------------------------------
DEVICE_COMMAND = RouteSpec(
    "/flytower/device/{id}/command/{name}",
    (ArgSpec("args", ArgType.JSON_OBJECT, optional=True),),
    "Run a profile command; arguments as one JSON-object string (omitted: no arguments).",
)
DEVICE_POINT = RouteSpec(
    "/flytower/device/{id}/point/{name}",
    (),
    "Read a point; data: {'value', 'quality', 'ts'}.",
)

SERVED_BY_SERVER = (CONNECT, DISCONNECT, PING)
SERVED_BY_SERVICE = (GO, STOP, PANIC, CUE_START, CUE_STOP, PLAYHEAD, DEVICE_COMMAND, DEVICE_POINT)
