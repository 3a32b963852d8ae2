"""The service's DMX ports: the outputs and inputs the venue's [dmx] section asks for.

Each output is a driver connection (drivers/dmx) entered into the service's exit stack, so it
is closed in order at shutdown (sACN then sends its stream-terminated packets). Universes are
routed through one ``DmxOutputs`` router, which the lighting engine sends whole frames to.

The sACN CID is derived from the venue and node ids (a name-based UUID), so a receiver sees the
same source after a restart rather than a new one competing with a ghost for 2.5 s.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from drivers.dmx import (
    ArtNetInput,
    ArtNetNode,
    ArtNetOutput,
    DmxOutputs,
    EnttecProOutput,
    SacnInput,
    SacnOutput,
)
from drivers.dmx.artnet import ARTNET_PORT
from drivers.dmx.sacn import SACN_PORT
from drivers.model import DriverStats, Health
from edge.config import DmxConfig

CID_NAMESPACE = uuid.UUID("6f1d2d2e-6c1b-4a53-9d0e-5a7d1c3f2b10")

Port = ArtNetOutput | SacnOutput | EnttecProOutput | ArtNetInput | SacnInput


def artnet_port_address(universe: int) -> int:
    """Flytower universe 1 is Art-Net 0:0:0, as lighting consoles number them."""
    return universe - 1


@dataclass
class DmxPorts:
    outputs: DmxOutputs = field(default_factory=DmxOutputs)
    ports: list[Port] = field(default_factory=list)

    def status(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for port in self.ports:
            h: Health = port.health
            stats = port.stats
            out[port.tracker.name] = {
                "state": h.state.value,
                "reason": h.reason,
                "stats": stats.as_dict() if isinstance(stats, DriverStats) else asdict(stats),
            }
        return out


async def open_dmx(
    cfg: DmxConfig, venue: str, node: str, stack: contextlib.AsyncExitStack
) -> DmxPorts:
    dmx = DmxPorts()
    cid = uuid.uuid5(CID_NAMESPACE, f"{venue}/{node}")
    for i, oc in enumerate(cfg.outputs):
        name = f"dmx-out-{i}-{oc.protocol}"
        if oc.protocol == "sacn":
            sacn_out = SacnOutput(
                name=name,
                source_name=f"Flytower {venue}/{node}",
                cid=cid,
                priority=oc.priority,
                hosts=oc.targets,
                port=oc.udp_port or SACN_PORT,
            )
            await stack.enter_async_context(sacn_out)
            dmx.ports.append(sacn_out)
            for u in oc.universes:
                dmx.outputs.route(u, sacn_out)
        elif oc.protocol == "artnet":
            art_out = ArtNetOutput(
                name=name,
                nodes=[
                    ArtNetNode(
                        host,
                        port=oc.udp_port or ARTNET_PORT,
                        port_addresses=frozenset(artnet_port_address(u) for u in oc.universes),
                    )
                    for host in oc.targets
                ],
                broadcast=oc.broadcast,
                # Not 6454 when this node also listens for Art-Net: two sockets on one port
                # would split the traffic between them.
                bind=("0.0.0.0", 0 if cfg.input is not None or oc.udp_port else ARTNET_PORT),
                port=oc.udp_port or ARTNET_PORT,
            )
            await stack.enter_async_context(art_out)
            dmx.ports.append(art_out)
            for u in oc.universes:
                dmx.outputs.route(u, art_out, as_universe=artnet_port_address(u))
        else:
            assert oc.device is not None  # the config guarantees it
            enttec = EnttecProOutput(oc.device, name=name)
            await stack.enter_async_context(enttec)
            dmx.ports.append(enttec)
            dmx.outputs.route(oc.universes[0], enttec)
    if cfg.input is not None:
        ic = cfg.input
        if "sacn" in ic.protocols:
            sacn_in = SacnInput(
                universes=ic.universes,
                bind=(ic.bind, ic.udp_port or SACN_PORT),
            )
            await stack.enter_async_context(sacn_in)
            dmx.ports.append(sacn_in)
        if "artnet" in ic.protocols:
            art_in = ArtNetInput(
                port_addresses=[artnet_port_address(u) for u in ic.universes],
                short_name=f"Flytower {node}"[:17],
                bind=(ic.bind, ic.udp_port or ARTNET_PORT),
            )
            await stack.enter_async_context(art_in)
            dmx.ports.append(art_in)
    return dmx
