"""olad as an sACN sender: our SacnInput receives it and merges it with a source of ours.

This olad has only an E1.31 *output* port (OLA universe 3 -> sACN universe 3, multicast).
With an E1.31 input port patched as well, olad's multicast did not loop back to receivers on
the same host (seen with olad 0.10.9), so this test runs its own olad, after the module of
test_dmx_ola.py has stopped its one (the ports are fixed: one olad at a time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from drivers.dmx import sacn
from drivers.dmx.input import SacnInput
from drivers.dmx.output import SacnOutput
from tests.conftest import wait_until
from tests.peers import ola

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def olad() -> Iterator[ola.Olad]:
    with ola.running({"11-1-O-1": 3}) as server:
        yield server


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    async def check() -> bool:
        return predicate()

    await wait_until(check, timeout_s, what)


async def test_olad_sender_is_merged_with_our_source(olad: ola.Olad) -> None:
    # Bound to the group address: receives only universe 3's multicast, never olad's unicast.
    # olad multicasts from the interface its E1.31 device chose: listen and send there.
    iface = await asyncio.to_thread(ola.e131_interface)
    group = (sacn.multicast_group(3), sacn.SACN_PORT)
    async with SacnInput(universes=[3], bind=group, interface=iface) as rx:
        await asyncio.to_thread(ola.set_dmx, 3, [10, 200, 30])
        await until(lambda: rx.merged(3) is not None, "olad's sACN on universe 3")
        merged = rx.merged(3)
        assert merged is not None and list(merged[:3]) == [10, 200, 30]
        (olas,) = rx.sources(3)
        assert olas.priority == sacn.DEFAULT_PRIORITY
        async with SacnOutput(source_name="ours", multicast_interface=iface) as ours:
            await ours.send_frame({3: bytes([100, 0, 0, 40])})
            await until(lambda: len(rx.sources(3)) == 2, "both sources")

            def htp() -> bool:
                m = rx.merged(3)
                return m is not None and list(m[:4]) == [100, 200, 30, 40]

            await until(htp, "HTP merge of olad and our source")
        await until(lambda: len(rx.sources(3)) == 1, "our source to terminate")
