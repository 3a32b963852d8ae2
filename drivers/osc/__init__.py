"""OSC driver: a QLab-compatible server with the Flytower address space, and a client.

``wire`` is the pure wire format (packets, SLIP, replies), ``router`` the typed address
router, ``address_space`` the documented routes, ``server`` and ``client`` the sockets.
docs/interfaces/osc.md is the contract.
"""

from drivers.osc.client import OscClient
from drivers.osc.router import (
    ArgSpec,
    ArgType,
    OscRequest,
    OscRequestError,
    OscRouter,
    Peer,
    RouteSpec,
)
from drivers.osc.server import OscCounters, OscServer, OscServerConfig
from drivers.osc.wire import Message, OscDecodeError, OscEncodeError, Reply

__all__ = [
    "ArgSpec",
    "ArgType",
    "Message",
    "OscClient",
    "OscCounters",
    "OscDecodeError",
    "OscEncodeError",
    "OscRequest",
    "OscRequestError",
    "OscRouter",
    "OscServer",
    "OscServerConfig",
    "Peer",
    "Reply",
    "RouteSpec",
]
