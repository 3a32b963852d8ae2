"""Timecode in the running service: ArtTimeCode over real UDP to the venue's ``[timecode]``
input, the chased time in ``GET /api/v1/timecode``, a cue's ``wait.timecode`` completing when
the label is passed, and dropout → freewheel → stopped in the API and the journal.

The packets are hand-built from the Art-Net 4 spec (as in test_timecode_io.py), with hostile
ones interleaved. Positions are checked within a few frames: a loaded 2-core machine.
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

from controller.playback import PlaybackError
from controller.timecode import ChaseClock, FrameRate, Timecode
from drivers.model import ConfigError
from edge.config import load_venue
from edge.service import Service
from edge.timecode import ChaseTimecode
from tests.conftest import run_service, wait_until, write_venue

pytestmark = pytest.mark.integration

LO = "127.0.0.1"
F25 = FrameRate.FPS_25
START = Timecode(10, 0, 0, 0, F25)

SHOW = """
version = 1
[show]
title = "Timecode"
[[lists]]
id = "main"
go_debounce_s = 0
[[lists.cues]]
number = 1
label = "at ten o'clock and one second"
actions = [{ kind = "wait.timecode", timecode = "10:00:01:00", fps = 25, timeout_s = 30 }]
[[lists.cues]]
number = 2
label = "a label drop-frame skips"
actions = [{ kind = "wait.timecode", timecode = "10:01:00;00", fps = 29.97 }]
"""


def art_timecode(h: int, m: int, s: int, f: int, kind: int = 1, stream: int = 0) -> bytes:
    # Art-Net 4, ArtTimeCode: "Art-Net\0", OpCode 0x9700 little-endian, ProtVerHi 0, ProtVerLo
    # 14, Filler1, StreamId, Frames, Seconds, Minutes, Hours, Type.
    return b"Art-Net\x00" + bytes([0x00, 0x97, 0, 14, 0, stream, f, s, m, h, kind])


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LO, 0))
        return int(s.getsockname()[1])


def venue(tmp_path: Path, timecode: str) -> Path:
    path = write_venue(tmp_path, [])
    path.write_text('show = "show.toml"\n' + path.read_text() + timecode)
    (tmp_path / "show.toml").write_text(SHOW)
    return path


class Rig:
    def __init__(self, service: Service, api: httpx.AsyncClient, port: int) -> None:
        self.service, self.api, self.port = service, api, port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, packet: bytes) -> None:
        self.sock.sendto(packet, (LO, self.port))

    async def timecode(self) -> dict[str, Any]:
        r = await self.api.get("/api/v1/timecode")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def cue(self, number: str) -> dict[str, Any] | None:
        snap = (await self.api.get("/api/v1/playback")).json()
        for c in snap["lists"][0]["running"]:
            if c["number"] == number:
                return dict(c)
        return None


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    port = udp_port()
    path = venue(
        tmp_path,
        f"""
[timecode]
source = "artnet"
artnet_bind = "{LO}"
artnet_port = {port}
freewheel_s = 0.6
""",
    )
    async with contextlib.AsyncExitStack() as stack:
        svc = await stack.enter_async_context(run_service(path))
        api = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://{LO}:{svc.bound_api_port}", timeout=5)
        )
        rig = Rig(svc, api, port)
        stack.callback(rig.sock.close)
        yield rig


async def test_chase_wait_and_dropout_through_the_api(rig: Rig) -> None:
    tc = await rig.timecode()
    assert tc["source"] == "artnet" and tc["state"] == "idle" and tc["timecode"] is None
    assert tc["link"]["address"] == f"{LO}:{rig.port}" and tc["link"]["shared"] is False

    r = await rig.api.post("/api/v1/playback/go", json={"list": "main", "cue": 1})
    assert r.status_code == 200, r.text
    running = await rig.cue("1")
    assert running is not None and running["actions"][0]["state"] == "running"

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    seen_before: dict[str, Any] = {}
    for i in range(40):  # 1.6 s of 25 fps from 10:00:00:00; the wait is at frame 25
        label = START + i
        rig.send(art_timecode(label.hours, label.minutes, label.seconds, label.frames))
        if i % 10 == 5:
            rig.send(art_timecode(10, 0, 0, 25))  # no frame 25 at 25 fps: malformed
            rig.send(art_timecode(1, 2, 3, 4, stream=7))  # another stream: ignored
            rig.send(b"Art-Net\x00\x00\x97\x00\x0e")  # truncated: malformed
        if i == 15:
            seen_before = await rig.timecode()
            still = await rig.cue("1")
            assert still is not None and still["actions"][0]["state"] == "running"
        await asyncio.sleep(max(0.0, t0 + (i + 1) / 25 - loop.time()))

    # While the master ran at frame 15, the API showed it, at 25 fps.
    assert seen_before["state"] == "running" and seen_before["rate"] == "25"
    chased = Timecode.parse(seen_before["timecode"], F25).to_frames() - START.to_frames()
    assert 12 <= chased <= 19, seen_before["timecode"]

    # The label was passed: the cue's only action, the wait, is done and the cue complete.
    async def complete() -> bool:
        return await rig.cue("1") is None

    await wait_until(complete, 5, "cue 1's wait.timecode completed")
    tc = await rig.timecode()
    assert tc["input"]["ignored"] == 4 and tc["link"]["stats"]["malformed"] == 8
    assert tc["input"]["accepted"] == 40 and tc["generation"] == 1

    # Dropout: the clock freewheels, then stops where freewheel ended; the API says so.
    async def state_is(state: str) -> bool:
        return bool((await rig.timecode())["state"] == state)

    await wait_until(lambda: state_is("freewheel"), 3, "freewheel after the dropout")
    await wait_until(lambda: state_is("stopped"), 3, "stopped once freewheel ran out")
    tc = await rig.timecode()
    held = Timecode.parse(tc["timecode"], F25).to_frames() - START.to_frames()
    assert 40 <= held <= 40 + 0.6 * 25 + 8, tc["timecode"]  # 4-frame dropout + 0.6 s

    # The state is derived when asked; the dropout events (freewheel, lost) are reported by the
    # clock's poll, which may come a moment after the API already says "stopped".
    async def events_are() -> bool:
        events = (await rig.timecode())["events"]
        assert set(events) <= {"freewheel", "locked", "lost"} and max(events.values()) == 1
        return bool(events == {"freewheel": 1, "locked": 1, "lost": 1})

    await wait_until(events_are, 3, "the lost event reported by the clock's poll")

    # Every clock event is in the journal, from the timecode source.
    async def journalled() -> bool:
        r = await rig.api.get("/api/v1/journal", params={"source": "timecode"})
        return [e["command"] for e in r.json()["events"]] == [
            "timecode.locked",
            "timecode.freewheel",
            "timecode.lost",
        ]

    await wait_until(journalled, 3, "locked, freewheel and lost journalled")
    r = await rig.api.get("/api/v1/journal", params={"source": "timecode"})
    locked = r.json()["events"][0]
    assert locked["source"] == f"timecode artnet {LO}:{rig.port} stream 0"
    assert locked["args"]["timecode"] == "10:00:00:00" and locked["args"]["rate"] == "25"


async def test_a_skipped_drop_frame_label_fails_the_wait_with_the_reason(rig: Rig) -> None:
    r = await rig.api.post("/api/v1/playback/go", json={"list": "main", "cue": 2})
    assert r.status_code == 200, r.text

    async def failed() -> bool:
        events = (await rig.api.get("/api/v1/journal")).json()["events"]
        return any(e["command"] == "action.wait.timecode" for e in events)

    await wait_until(failed, 5, "the wait failed")
    events = (await rig.api.get("/api/v1/journal")).json()["events"]
    action = next(e for e in events if e["command"] == "action.wait.timecode")
    assert action["result"] == "failed" and "drop-frame skips" in action["reason"]


async def test_timecode_shares_the_dmx_input_socket(tmp_path: Path) -> None:
    port = udp_port()
    path = venue(
        tmp_path,
        f"""
[dmx.input]
protocols = ["artnet"]
universes = [1]
bind = "{LO}"
udp_port = {port}
[timecode]
source = "artnet"
artnet_stream = 3
""",
    )
    async with (
        run_service(path) as svc,
        httpx.AsyncClient(base_url=f"http://{LO}:{svc.bound_api_port}", timeout=5) as api,
    ):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for i in range(3):
                label = START + i
                packet = art_timecode(label.hours, label.minutes, label.seconds, label.frames)
                sock.sendto(art_timecode(1, 0, 0, 0, stream=0), (LO, port))  # not stream 3
                sock.sendto(packet[:13] + bytes([3]) + packet[14:], (LO, port))
                await asyncio.sleep(0.04)

        async def locked() -> bool:
            body = (await api.get("/api/v1/timecode")).json()
            return bool(body["input"]["accepted"] == 3)

        await wait_until(locked, 3, "three timecodes on the shared socket")
        body = (await api.get("/api/v1/timecode")).json()
        assert body["link"]["shared"] is True and body["link"]["name"] == "artnet-in"
        assert body["input"]["ignored"] == 3 and body["timecode"].startswith("10:00:00:")


async def test_no_timecode_section_answers_off(tmp_path: Path) -> None:
    path = venue(tmp_path, "")
    async with (
        run_service(path) as svc,
        httpx.AsyncClient(base_url=f"http://{LO}:{svc.bound_api_port}", timeout=5) as api,
    ):
        body = (await api.get("/api/v1/timecode")).json()
        assert body["source"] == "none" and body["state"] == "off"
        assert svc.playback is not None and svc.playback.timecode is None


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('source = "ltc"', "Input should be 'artnet', 'mtc' or 'none'"),
        ('source = "mtc"', "needs 'mtc_device'"),
        ('source = "artnet"\nmtc_device = "/dev/null"', "mtc_device: only for source 'mtc'"),
        ("artnet_stream = 2", "artnet_stream: only for source 'artnet' (source is 'none')"),
        ('source = "artnet"\nartnet_stream = 256', "less than or equal to 255"),
        ('source = "artnet"\nartnet_port = 0', "greater than or equal to 1"),
        ('source = "artnet"\nfreewheel_s = nan', "finite number"),
        ('source = "artnet"\ndropout_frames = -1', "greater than 0"),
        ('source = "artnet"\nrelocate = 2', "Extra inputs are not permitted"),
        (
            f'source = "artnet"\n[[dmx.outputs]]\nprotocol = "artnet"\nuniverses = [1]\n'
            f'targets = ["{LO}"]',
            "binds Art-Net port 6454 too",
        ),
        (
            f'source = "artnet"\nartnet_port = {6455}\n[dmx.input]\nprotocols = ["artnet"]\n'
            "universes = [1]",
            "arrives on the [dmx.input] Art-Net socket",
        ),
    ],
)
def test_bad_timecode_sections_are_refused_precisely(
    tmp_path: Path, section: str, expected: str
) -> None:
    path = venue(tmp_path, "\n[timecode]\n" + section + "\n")
    with pytest.raises(ConfigError) as err:
        load_venue(path)
    assert expected in str(err.value)
    assert "timecode" in str(err.value)


async def test_the_wait_is_a_condition_a_relocate_past_the_label_meets_it() -> None:
    now = [100.0]
    clock = ChaseClock()
    source = ChaseTimecode(clock, now=lambda: now[0])
    waiter = asyncio.create_task(source.reached("10:00:30:00", 25))
    await asyncio.sleep(0.01)
    assert not waiter.done() and source.waiting == 1  # idle: nothing reached
    clock.feed(START, now[0])
    source.signal()
    await asyncio.sleep(0.01)
    assert not waiter.done()  # running, 30 s before the label
    now[0] += 0.04
    clock.feed(Timecode(10, 0, 40, 0, F25), now[0])  # the master jumped past it
    source.signal()
    await asyncio.wait_for(waiter, 1)
    assert source.waiting == 0
    # Already past (up to 12 h behind): met at once; a malformed label is refused with why.
    await asyncio.wait_for(source.reached("09:00:00:00", 25), 1)
    with pytest.raises(PlaybackError, match="drop-frame skips"):
        await source.reached("10:01:00;00", 29.97)
