"""Timecode-triggered cues in the running service: hand-built ArtTimeCode over real UDP to the
venue's ``[timecode]`` input; a cue with a ``timecode`` starts once when the chased time passes
it; a backward relocate re-fires it only in a list with ``timecode_rearm = "on_backward"``; a
show PUT while the master runs replaces the triggers (those it is already past do not fire).

Every start is read back from the journal (source kind ``timecode``), as an operator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.timecode import FrameRate, Timecode
from tests.conftest import run_service, wait_until, write_venue

pytestmark = pytest.mark.integration

LO = "127.0.0.1"
F25 = FrameRate.FPS_25

SHOW = """
version = 1
[show]
title = "Triggers"
timecode_fps = 25
[[lists]]
id = "main"
[[lists.cues]]
number = 1
label = "at 10:00:01:00, once"
timecode = "10:00:01:00"
[[lists.cues]]
number = 2
label = "by GO only"
[[lists]]
id = "fx"
timecode_rearm = "on_backward"
[[lists.cues]]
number = 5
label = "at 10:00:01:10, again after a backward relocate"
timecode = "10:00:01:10"
"""


def art_timecode(tc: Timecode, stream: int = 0) -> bytes:
    # Art-Net 4 ArtTimeCode: "Art-Net\0", OpCode 0x9700 little-endian, ProtVerHi 0, ProtVerLo
    # 14, Filler1, StreamId, Frames, Seconds, Minutes, Hours, Type (1 = EBU 25).
    return b"Art-Net\x00" + bytes(
        [0x00, 0x97, 0, 14, 0, stream, tc.frames, tc.seconds, tc.minutes, tc.hours, 1]
    )


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LO, 0))
        return int(s.getsockname()[1])


class Rig:
    def __init__(self, api: httpx.AsyncClient, port: int) -> None:
        self.api, self.port = api, port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def run_master(self, start: str, frames: int) -> None:
        """A master at 25 fps from ``start`` for ``frames`` frames, paced in real time."""
        label = Timecode.parse(start, F25)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(frames):
            self.sock.sendto(art_timecode(label + i), (LO, self.port))
            await asyncio.sleep(max(0.0, t0 + (i + 1) / 25 - loop.time()))

    async def starts(self) -> list[dict[str, Any]]:
        r = await self.api.get("/api/v1/journal", params={"source": "timecode"})
        assert r.status_code == 200, r.text
        return [e for e in r.json()["events"] if e["command"] == "start"]

    async def started(self) -> list[str]:
        return [f"{e['cue_list']}/{e['cue']}" for e in await self.starts()]

    async def triggers(self) -> dict[str, Any]:
        r = await self.api.get("/api/v1/timecode")
        assert r.status_code == 200, r.text
        return dict(r.json()["triggers"])


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    port = udp_port()
    path = write_venue(tmp_path, [])
    path.write_text(
        'show = "show.toml"\n'
        + path.read_text()
        + f'\n[timecode]\nsource = "artnet"\nartnet_bind = "{LO}"\nartnet_port = {port}\n'
    )
    (tmp_path / "show.toml").write_text(SHOW)
    async with contextlib.AsyncExitStack() as stack:
        svc = await stack.enter_async_context(run_service(path))
        api = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://{LO}:{svc.bound_api_port}", timeout=5)
        )
        rig = Rig(api, port)
        stack.callback(rig.sock.close)
        yield rig


async def test_triggers_fire_once_and_rearm_only_where_asked(rig: Rig) -> None:
    trig = await rig.triggers()
    assert [(t["list"], t["cue"], t["at"]) for t in trig["armed"]] == [
        ("main", "1", "10:00:01:00"),
        ("fx", "5", "10:00:01:10"),
    ]

    # 10:00:00:00 → 10:00:01:19: both triggers passed, each starts once.
    await rig.run_master("10:00:00:00", 45)

    async def both() -> bool:
        return sorted(await rig.started()) == ["fx/5", "main/1"]

    await wait_until(both, 5, "both timecode cues started")
    starts = await rig.starts()
    assert [e["cue_list"] for e in starts] == ["main", "fx"]  # in timecode order
    main = starts[0]
    assert main["result"] == "ok" and main["source_kind"] == "timecode"
    assert main["source"] == f"timecode artnet {LO}:{rig.port} stream 0 at 10:00:01:00"

    # Backward relocate to 10:00:00:15 and through both labels again: only fx re-fires.
    await rig.run_master("10:00:00:15", 30)

    async def fx_again() -> bool:
        return sorted(await rig.started()) == ["fx/5", "fx/5", "main/1"]

    await wait_until(fx_again, 5, "fx re-armed by the backward relocate and started again")
    # Running on past them changes nothing; a forward relocate past nothing armed neither.
    await rig.run_master("10:00:01:20", 10)
    await asyncio.sleep(0.2)
    assert sorted(await rig.started()) == ["fx/5", "fx/5", "main/1"]
    trig = await rig.triggers()
    assert trig["fired"] == ["fx/5", "main/1"] and trig["armed"] == []
    assert trig["started"] == 3 and trig["failed"] == 0


async def test_a_show_put_while_running_replaces_the_triggers(rig: Rig) -> None:
    await rig.run_master("10:00:00:00", 10)  # running at 10:00:00:09
    new = {
        "version": 1,
        "show": {"title": "Replaced"},
        "lists": [
            {
                "id": "main",
                "cues": [
                    {"number": 1, "timecode": "10:00:00:05"},  # already passed
                    {"number": 2, "timecode": "10:00:00:20"},
                ],
            }
        ],
    }
    r = await rig.api.put("/api/v1/show", json=new)
    assert r.status_code == 200, r.text
    trig = await rig.triggers()
    assert [(t["list"], t["cue"]) for t in trig["armed"]] == [("main", "1"), ("main", "2")]

    await rig.run_master("10:00:00:10", 20)  # carries on through 10:00:00:20

    async def second() -> bool:
        return await rig.started() == ["main/2"]

    await wait_until(second, 5, "the new show's trigger started")
    await asyncio.sleep(0.2)
    assert await rig.started() == ["main/2"]  # the one already passed did not fire

    # A bad show is refused and the triggers are untouched.
    bad = {**new, "lists": [{"id": "main", "cues": [{"number": 1, "timecode": "10:00:00:25"}]}]}
    r = await rig.api.put("/api/v1/show", json=bad)
    assert r.status_code == 422 and "frames must be 0..24" in r.text
    trig = await rig.triggers()
    assert [(t["list"], t["cue"]) for t in trig["armed"]] == [("main", "1")]
