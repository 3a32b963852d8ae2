"""Timecode over real transports: ArtTimeCode over UDP to ArtNetInput, MTC over a socat pty.

The senders are written here from the specs (hand-built Art-Net 4 packets; MIDI bytes), not
from our encoders, and interleave hostile input: malformed packets, MIDI garbage and
real-time bytes. Asserts allow for a loaded 2-core machine: positions within a few frames.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from controller.timecode import (
    ChaseClock,
    ChaseState,
    Firing,
    FrameRate,
    Timecode,
    TimecodeInput,
    TriggerScheduler,
)
from drivers.dmx.input import ArtNetInput
from drivers.midi.rawmidi import MtcInput
from drivers.model import HealthState
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

LO = "127.0.0.1"
F25 = FrameRate.FPS_25


def art_timecode(h: int, m: int, s: int, f: int, kind: int = 1, stream: int = 0) -> bytes:
    # Art-Net 4, ArtTimeCode: "Art-Net\0", OpCode 0x9700 little-endian, ProtVerHi 0, ProtVerLo
    # 14, Filler1, StreamId, Frames, Seconds, Minutes, Hours, Type.
    return b"Art-Net\x00" + bytes([0x00, 0x97, 0, 14, 0, stream, f, s, m, h, kind])


async def test_arttimecode_over_udp_chase_triggers_and_dropout() -> None:
    clock = ChaseClock()
    source = TimecodeInput(clock)
    fired: list[Firing] = []
    sched = TriggerScheduler(clock, on_fire=fired.append)
    sched.add(Timecode(10, 0, 0, 20, F25), "main", "1")
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    runner = asyncio.create_task(sched.run(0.005), name="timecode-scheduler")
    try:
        async with ArtNetInput(bind=(LO, 0), on_timecode=source.on_artnet) as rx:
            dest = rx.local_address
            start = Timecode(10, 0, 0, 0, F25).to_frames()
            t0 = time.monotonic()
            for i in range(40):  # 1.6 s of 25 fps timecode, with hostile packets between
                tc = Timecode.from_frames(start + i, F25)
                sender.sendto(art_timecode(tc.hours, tc.minutes, tc.seconds, tc.frames), dest)
                if i % 10 == 3:
                    sender.sendto(art_timecode(10, 0, 0, 25), dest)  # frame 25 at 25 fps
                    sender.sendto(art_timecode(1, 2, 3, 4)[:15], dest)  # truncated
                    sender.sendto(art_timecode(1, 2, 3, 4, stream=9), dest)  # another stream
                    sender.sendto(art_timecode(0, 1, 0, 0, kind=2), dest)  # skipped DF label
                await asyncio.sleep(max(0.0, t0 + (i + 1) / 25 - time.monotonic()))
            now = time.monotonic()
            reading = clock.read(now)
            assert reading.state is ChaseState.RUNNING
            assert reading.position is not None
            expected = start + (now - t0) * 25
            assert abs(reading.position - expected) < 3  # frames
            assert rx.stats.malformed == 8 and "19 bytes" in rx.stats.last_error
            assert rx.stats.timecodes == 40 + 8
            assert source.ignored == 4 and source.errors == 4
            await wait_until(_async(lambda: len(fired) == 1), 2, "trigger fired")
            assert fired[0].trigger.cue == "1"
            # Dropout: freewheel, then (2 s later) stopped.
            await wait_until(
                _async(lambda: clock.state(time.monotonic()) is ChaseState.FREEWHEEL),
                2,
                "freewheel",
            )
            await wait_until(
                _async(lambda: clock.state(time.monotonic()) is ChaseState.STOPPED),
                5,
                "stopped after freewheel",
            )
            assert len(fired) == 1
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        sender.close()


def _async(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


@pytest.fixture
def midi_line(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """Two pty ends joined by socat: (sender end, receiver end, socat)."""
    a, b = tmp_path / "midi-out", tmp_path / "midi-in"
    proc = subprocess.Popen(
        ["socat", "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "socat.log", "wb"),  # noqa: SIM115 -- closed by the child
    )
    try:
        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"socat failed: {(tmp_path / 'socat.log').read_text()}")
            time.sleep(0.02)
        yield str(a), str(b), proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(5)


def quarter(h: int, m: int, s: int, f: int, rate: int) -> list[bytes]:
    # MTC quarter frames: F1 0nnn dddd, piece n = frames lo/hi, seconds lo/hi, minutes lo/hi,
    # hours lo, hours hi | rate << 1.
    nibbles = [f & 15, f >> 4, s & 15, s >> 4, m & 15, m >> 4, h & 15, (h >> 4) | rate << 1]
    return [bytes([0xF1, n << 4 | v]) for n, v in enumerate(nibbles)]


async def test_mtc_over_pty_chase_and_full_frame(
    midi_line: tuple[str, str, subprocess.Popen[bytes]],
) -> None:
    out_path, in_path, socat = midi_line
    clock = ChaseClock()
    source = TimecodeInput(clock)
    fd = os.open(out_path, os.O_WRONLY | os.O_NOCTTY)
    try:
        async with MtcInput(in_path, on_time=source.on_mtc) as mtc:
            assert mtc.health.state is HealthState.ONLINE
            start = Timecode(1, 0, 0, 0, F25).to_frames()
            t0 = time.monotonic()
            # Garbage first: data bytes without status, an unterminated SysEx ended by a note.
            os.write(fd, bytes([0x12, 0x34, 0xF0, 1, 2, 0x90, 60, 100, 61, 101]))
            for pair in range(25):  # 2 s: a full time every 2 frames (8 quarter frames)
                tc = Timecode.from_frames(start + 2 * pair, F25)
                for k, piece in enumerate(quarter(tc.hours, tc.minutes, tc.seconds, tc.frames, 1)):
                    due = t0 + (8 * pair + k) / 100  # a quarter frame every 10 ms at 25 fps
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    os.write(fd, piece + (b"\xf8" if k % 3 == 0 else b""))  # MIDI clock between
            await asyncio.sleep(0.005)
            now = time.monotonic()
            reading = clock.read(now)
            assert reading.state is ChaseState.RUNNING
            assert reading.position is not None
            assert abs(reading.position - (start + (now - t0) * 25)) < 3
            assert mtc.times == 25
            assert mtc.stats.errors == 3  # 2 stray data bytes, the SysEx cut short
            # A full-frame locate: stopped there.
            os.write(fd, bytes([0xF0, 0x7F, 0x7F, 0x01, 0x01, 0x20 | 2, 30, 0, 0, 0xF7]))
            await wait_until(
                _async(lambda: clock.state(time.monotonic()) is ChaseState.STOPPED), 2, "locate"
            )
            assert clock.read(time.monotonic()).timecode == Timecode(2, 30, 0, 0, F25)
            # The line goes away: offline, no exception.
            os.close(fd)
            fd = -1
            os.kill(socat.pid, signal.SIGTERM)
            await wait_until(_async(lambda: mtc.health.state is HealthState.OFFLINE), 3, "offline")
    finally:
        if fd >= 0:
            os.close(fd)
