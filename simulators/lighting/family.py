"""``DmxFamily``: the venue's DMX fixtures, listening where the venue sends their universes.

Where to listen comes from the venue's ``[[dmx.outputs]]`` (what the service sends, and where):
the output that carries a fixture's universe names the protocol, the ``targets`` and the
``udp_port`` (default 6454 for Art-Net, 5568 for sACN). The simulated receivers are the
network fixtures (or gateways) at those targets:

- unicast targets (Art-Net or sACN): one socket bound to each ``target:port``;
- Art-Net without targets (broadcast or ArtPoll discovery): ``0.0.0.0:port``;
- sACN without targets (multicast, the default): one socket per universe bound to its group
  ``239.255.hi.lo:port`` and joined on the default interface, which is the interface a sender
  without a configured multicast interface sends from. Binding the group address keeps other
  groups and unicast out of that socket.

A socket decodes Art-Net and sACN alike and feeds the ``Universe`` of each venue universe it
serves; a universe received on two sockets is one universe with more sources. Every socket
answers ArtPoll with the Port-Addresses of its universes that have a receiving fixture.

One host (``hosts()``) owns every socket and one clock task: at ``TICK_HZ`` it expires silent
sources, re-merges the universes that changed into one ``(universes, 512)`` array, and decodes
all fixtures of a model from it in one go (``fixtures.Bank``). Reading a truth refreshes first
when packets arrived since, so tests never see a stale frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import numpy as np

from simulators.core import DeviceSpec, SimulatedDevice, SimulationError, check_params
from simulators.lighting import wire
from simulators.lighting.fixtures import MODELS, Bank, Fixture
from simulators.lighting.receiver import NodeSocket, Universe

TICK_HZ = 20.0
DEFAULT_PORTS = {"artnet": wire.ARTNET_PORT, "sacn": wire.SACN_PORT}
PARAMS: dict[str, type] = {"hold_s": float, "fade_s": float}


class DmxFamily:
    """Simulated DMX fixtures: led_par_rgbw, moving_head, dimmer_rack."""

    models = frozenset(MODELS)

    def __init__(self, venue: Mapping[str, Any]) -> None:
        dmx = venue.get("dmx", {})
        outputs = dmx.get("outputs", []) if isinstance(dmx, Mapping) else []
        self._outputs: list[Mapping[str, Any]] = [o for o in outputs if isinstance(o, Mapping)]
        self._universes: dict[int, Universe] = {}
        self._endpoints: dict[tuple[str, int], dict[int, Universe]] = {}
        self._groups: dict[tuple[str, int], str] = {}  # endpoint -> multicast group
        self._banks: dict[str, Bank] = {}
        self._fixtures: list[Fixture] = []
        self._art_fixtures: dict[int, list[Fixture]] = {}  # universe -> its fixtures
        self.nodes: list[NodeSocket] = []
        self._frozen = False
        self._refreshed_at = -1.0
        self._seen_packets = -1
        self._started = time.monotonic()
        self.ticks = 0

    # --- building ---------------------------------------------------------------------------

    def add(self, spec: DeviceSpec) -> SimulatedDevice:
        if self._frozen:
            raise SimulationError(f"{spec.where}: devices cannot be added once serving")
        model = MODELS.get(spec.model)
        if model is None:
            raise SimulationError(f"{spec.where}.model: {spec.model} is not a DMX fixture model")
        params = check_params(spec, PARAMS)
        for name in PARAMS:
            if name in params and not (0 <= params[name] < float("inf")):
                raise SimulationError(f"{spec.where}.{name}: must be a finite number >= 0")
        tr = spec.transport
        if (
            tr.get("kind") != "dmx"
            or not _whole(tr.get("universe"))
            or not _whole(tr.get("address"))
        ):
            raise SimulationError(
                f"{spec.where}: model {spec.model} needs transport "
                '{ kind = "dmx", universe = U, address = A }'
            )
        universe, address = int(tr["universe"]), int(tr["address"])
        if not 1 <= universe <= wire.MAX_UNIVERSE:
            raise SimulationError(f"{spec.where}: universe {universe} is outside 1..63999")
        if address < 1 or address + model.footprint - 1 > wire.SLOTS:
            raise SimulationError(
                f"{spec.where}: a {model.footprint}-channel {spec.model} at address {address} "
                "does not fit in channels 1..512"
            )
        self._listen(spec, universe)
        row = self._universe(universe)
        bank = self._banks.setdefault(model.name, Bank(model))
        index = bank.add(
            row,
            address - 1,
            params.get("hold_s", model.hold_s),
            params.get("fade_s", model.fade_s),
        )
        fixture = Fixture(spec.id, bank, index, universe, address, self)
        self._fixtures.append(fixture)
        self._art_fixtures.setdefault(universe, []).append(fixture)
        return fixture

    def _universe(self, number: int) -> int:
        if number not in self._universes:
            self._universes[number] = Universe(number)
        return list(self._universes).index(number)

    def _listen(self, spec: DeviceSpec, universe: int) -> None:
        """Register the sockets where the venue sends ``universe``."""
        output = next((o for o in self._outputs if universe in o.get("universes", [])), None)
        if output is None:
            raise SimulationError(
                f"{spec.where}: universe {universe} is not sent by any [[dmx.outputs]], so "
                "the fixture could never receive it"
            )
        protocol = output.get("protocol")
        if protocol not in DEFAULT_PORTS:
            raise SimulationError(
                f"{spec.where}: universe {universe} goes out over {protocol!r}; only Art-Net "
                "and sACN receivers are simulated"
            )
        port = output.get("udp_port") or DEFAULT_PORTS[str(protocol)]
        targets = [str(t) for t in output.get("targets", [])]
        if targets:
            binds = [(host, int(port)) for host in targets]
        elif protocol == "artnet":
            binds = [("0.0.0.0", int(port))]
        else:
            group = wire.multicast_group(universe)
            binds = [(group, int(port))]
            self._groups[binds[0]] = group
        self._universe(universe)
        for bind in binds:
            self._endpoints.setdefault(bind, {})[universe] = self._universes[universe]

    def _freeze(self) -> None:
        self._frozen = True
        self._frames = np.zeros((max(1, len(self._universes)), wire.SLOTS), np.uint8)
        for row, universe in enumerate(self._universes.values()):
            universe.merged = self._frames[row]  # the merge writes straight into the array
        self._live = np.zeros(len(self._frames), bool)
        self._lost_at = np.full(len(self._frames), np.nan)
        for bank in self._banks.values():
            bank.freeze()

    # --- the clock ----------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic()

    def packets(self) -> int:
        return sum(u.packets + u.ended_sources for u in self._universes.values())

    def refresh(self, force: bool = False) -> None:
        """Merge and decode if packets arrived or time passed since the last refresh."""
        if not self._frozen:
            self._freeze()
        now = self.now()
        seen = self.packets()
        if not force and seen == self._seen_packets and now - self._refreshed_at < 1 / TICK_HZ:
            return
        self._seen_packets, self._refreshed_at = seen, now
        for row, universe in enumerate(self._universes.values()):
            universe.refresh(now)
            self._live[row] = universe.live
            self._lost_at[row] = np.nan if universe.lost_at is None else universe.lost_at
        for bank in self._banks.values():
            bank.refresh(now, self._frames, self._live, self._lost_at)

    async def _clock(self) -> None:
        while True:
            self.refresh()
            self.ticks += 1
            await asyncio.sleep(1 / TICK_HZ)

    # --- serving ------------------------------------------------------------------------------

    def _art_ports(self, universes: Mapping[int, Universe]) -> tuple[list[int], list[int]]:
        announced, receiving = [], []
        for number, universe in universes.items():
            if any(not f.bank.offline[f.index] for f in self._art_fixtures.get(number, [])):
                announced.append(number - 1)
                if universe.live:
                    receiving.append(number - 1)
        return announced, receiving

    @contextlib.asynccontextmanager
    async def _serving(self) -> AsyncIterator[DmxFamily]:
        if not self._frozen:
            self._freeze()
        loop = asyncio.get_running_loop()
        transports: list[asyncio.DatagramTransport] = []
        clock = None
        try:
            for bind, universes in self._endpoints.items():
                node = NodeSocket(
                    bind,
                    universes,
                    lambda u=universes: self._art_ports(u),  # type: ignore[misc]
                    group=self._groups.get(bind),
                )
                try:
                    sock = node.open_socket()
                except OSError as exc:
                    raise SimulationError(
                        f"DMX receivers cannot listen on {bind[0]}:{bind[1]} (universes "
                        f"{', '.join(map(str, sorted(universes)))}): {exc}"
                    ) from exc
                transport, _ = await loop.create_datagram_endpoint(lambda n=node: n, sock=sock)  # type: ignore[misc]
                transports.append(transport)
                self.nodes.append(node)
            self._started = time.monotonic()
            clock = asyncio.create_task(self._clock(), name="dmx-sim-clock")
            yield self
        finally:
            if clock is not None:
                clock.cancel()
                await asyncio.gather(clock, return_exceptions=True)
            for transport in transports:
                transport.close()
            self.nodes.clear()

    def hosts(self) -> Sequence[AbstractAsyncContextManager[Any]]:
        return [self._serving()]

    # --- reporting ----------------------------------------------------------------------------

    def signal(self, number: int) -> dict[str, Any]:
        """What a fixture's universe receives: sources, rate, jitter, sequence errors."""
        return self._universes[number].summary(self.now())

    def stats(self) -> dict[str, Any]:
        now = self.now()
        elapsed = max(now - self._started, 1e-9)
        totals = {"datagrams": 0, "malformed": 0, "ignored": 0, "polls": 0, "poll_replies": 0}
        for node in self.nodes:
            for key in totals:
                totals[key] += getattr(node.stats, key)
        packets = sum(u.packets for u in self._universes.values())
        universes = {}
        for number, u in self._universes.items():
            s = u.summary(now)
            universes[str(number)] = {
                k: s[k] for k in ("live", "rate_hz", "jitter_p99_ms", "sequence_errors", "lost")
            }
        return {
            "fixtures": len(self._fixtures),
            "sockets": len(self.nodes),
            "ticks_per_s": round(self.ticks / elapsed, 2),
            "frames_per_s": round(packets / elapsed, 1),
            "frames": packets,
            **totals,
            "last_error": next((n.stats.last_error for n in self.nodes if n.stats.last_error), ""),
            "universes": universes,
        }


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
