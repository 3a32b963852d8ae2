"""The service's DMX ports: the venue's [dmx] section opens real sockets that carry frames.

The driver's own tests prove the wire against olad; these prove the wiring: universes reach
the output the venue routes them to, under the right wire number (Flytower universe 1 is
Art-Net 0:0:0), the sACN source keeps one CID across restarts, and a clean stop terminates
the sACN stream so receivers let go at once instead of after 2.5 s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drivers.dmx import ArtNetInput, SacnInput
from tests.conftest import free_port, run_service, wait_until, write_venue

pytestmark = pytest.mark.integration

LO = "127.0.0.1"


def dmx_venue(tmp_path: Path, sacn_port: int, artnet_port: int) -> Path:
    venue = write_venue(tmp_path, [])
    section = f"""
[[dmx.outputs]]
protocol = "sacn"
universes = [1, 2]
targets = ["{LO}"]
priority = 120
udp_port = {sacn_port}

[[dmx.outputs]]
protocol = "artnet"
universes = [3]
targets = ["{LO}"]
udp_port = {artnet_port}
"""
    venue.write_text(venue.read_text().replace("[telemetry]", section + "[telemetry]", 1))
    return venue


async def test_frames_reach_the_routed_outputs(tmp_path: Path) -> None:
    sacn_port, artnet_port = free_port(), free_port()
    venue = dmx_venue(tmp_path, sacn_port, artnet_port)
    ramp = np.arange(512, dtype=np.uint8)
    async with (
        SacnInput(universes=[1, 2], bind=(LO, sacn_port)) as sacn_rx,
        ArtNetInput(port_addresses=[2], bind=(LO, artnet_port)) as art_rx,
    ):
        async with run_service(venue, lighting=False) as service:
            assert service.dmx is not None
            await service.dmx.outputs.send_frame({1: ramp, 2: ramp[::-1].copy(), 3: ramp})

            async def received() -> bool:
                return all(
                    rx.merged(u) is not None for rx, u in ((sacn_rx, 1), (sacn_rx, 2), (art_rx, 2))
                )

            await wait_until(received, 5, "universes 1 and 2 over sACN, 3 as Art-Net 0:0:2")
            assert bytes(sacn_rx.merged(1)) == ramp.tobytes()  # type: ignore[arg-type]
            assert bytes(sacn_rx.merged(2)) == ramp[::-1].tobytes()  # type: ignore[arg-type]
            assert bytes(art_rx.merged(2)) == ramp.tobytes()  # type: ignore[arg-type]
            (source,) = sacn_rx.sources(1)
            assert source.priority == 120
            cid = source.id
            links = service.links()
            assert links["dmx-out-0-sacn"]["state"] == "online"
            assert links["dmx-out-1-artnet"]["state"] == "online"

        # A clean stop sends stream-terminated: the receiver drops the source at once.
        async def released() -> bool:
            return sacn_rx.sources(1) == []

        await wait_until(released, 1.0, "the sACN source terminated on service stop")

        async with run_service(venue, lighting=False) as service:
            assert service.dmx is not None
            await service.dmx.outputs.send_frame({1: ramp})

            async def back() -> bool:
                return bool(sacn_rx.sources(1))

            await wait_until(back, 5, "the restarted service's sACN source")
            assert sacn_rx.sources(1)[0].id == cid  # the same CID: the same source
