"""The 50 Hz axis cycle (drivers/modbus/cycle.py) against real Modbus TCP peers.

The reference drive (simulators/machinery, pymodbus server) serves FC 23; its
``exception_response`` fault stands in for a drive without FC 23. A hand-written raw peer
answers FC 23 wrongly on purpose. Ground truth comes from the simulated drive itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from pymodbus.client import AsyncModbusTcpClient

from drivers.base import DeviceUnavailable
from drivers.modbus.cycle import AxisCycle, AxisStatus, AxisStopped, Setpoint, StopKind
from drivers.modbus.driver import ModbusDeviceDriver
from drivers.model import (
    PROFILE_DIR,
    Device,
    HealthState,
    ModbusTcpTransport,
    Quality,
    Reading,
    load_profile,
)
from simulators.core import DeviceSpec
from simulators.machinery import MachineDevice, MachineryFamily
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.integration

HOIST = load_profile(PROFILE_DIR / "hoist.toml")


@dataclass
class Axis:
    """A cycle driver on one reference hoist, with everything it delivered."""

    driver: ModbusDeviceDriver
    sim: MachineDevice | None
    port: int
    statuses: list[AxisStatus] = field(default_factory=list)
    batches: list[list[Reading]] = field(default_factory=list)

    @property
    def cycle(self) -> AxisCycle:
        assert self.driver.cycle is not None
        return self.driver.cycle

    def truth(self) -> dict[str, object]:
        assert self.sim is not None
        return self.sim.truth()

    async def good_status(self) -> AxisStatus:
        """The next good status delivered from now on."""
        n = len(self.statuses)
        await wait_until(lambda: _true(any(s.good for s in self.statuses[n:])), 2, "a good status")
        return next(s for s in self.statuses[n:] if s.good)


async def _true(value: bool) -> bool:
    return value


@contextlib.asynccontextmanager
async def cycle_driver(
    port: int, sim: MachineDevice | None = None, cycle_hz: float = 50, timeout_s: float = 0.3
) -> AsyncIterator[Axis]:
    transport = ModbusTcpTransport(
        kind="modbus-tcp", host="127.0.0.1", port=port, unit=1, timeout_s=timeout_s
    )
    axis: Axis

    async def sink(readings: list[Reading]) -> None:
        axis.batches.append(readings)

    driver = ModbusDeviceDriver(
        Device("axis", HOIST, transport, 10.0),
        sink,
        cycle_hz=cycle_hz,
        on_status=lambda s: axis.statuses.append(s),
    )
    axis = Axis(driver, sim, port)
    task = asyncio.create_task(driver.run(), name="cycle-driver")
    try:
        yield axis
    finally:
        driver.stop()
        await asyncio.wait_for(task, 5)


@contextlib.asynccontextmanager
async def reference_hoist(start_mm: float = 1000.0) -> AsyncIterator[tuple[int, MachineDevice]]:
    port = free_port()
    family = MachineryFamily({})
    tr = {"kind": "modbus-tcp", "host": "127.0.0.1", "port": port, "unit": 1}
    # The drive shares this test's event loop: a 1 s watchdog rides out a loaded CI machine
    # starving the loop (the watchdog's own tests use the service and a process of its own).
    params = {"model": "hoist", "start_position_mm": start_mm, "watchdog_ms_default": 1000}
    sim = family.add(DeviceSpec("hoist", "hoist", tr, params, "t"))
    assert isinstance(sim, MachineDevice)
    async with contextlib.AsyncExitStack() as stack:
        for host in family.hosts():
            await stack.enter_async_context(host)
        yield port, sim


async def test_fc23_writes_before_it_reads_on_the_reference_drive() -> None:
    """The map's drive answers FC 23, and the answer already shows the write (§9.5)."""
    async with reference_hoist() as (port, _sim):
        client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0)
        await client.connect()
        try:
            hi, lo = struct.unpack(">HH", struct.pack(">i", 12000))
            rr = await client.readwrite_registers(
                read_address=0,
                read_count=11,
                write_address=100,
                values=[hi, lo, 800, 1000, 1, 77],
                device_id=1,
            )
            assert rr.function_code == 23 and len(rr.registers) == 11
            assert rr.registers[8] == 77  # heartbeat echo of this very write
            assert rr.registers[6] & 0x0202 == 0x0202  # enabled + watchdog_ok, same answer
            back = await client.read_holding_registers(100, count=6, device_id=1)
            assert back.registers == [hi, lo, 800, 1000, 1, 77]
        finally:
            client.close()


async def test_the_cycle_moves_a_hoist_by_streaming_targets() -> None:
    async with reference_hoist(1000.0) as (port, sim), cycle_driver(port, sim) as axis:
        first = await axis.good_status()
        assert first.position == pytest.approx(1000.0, abs=0.1)
        assert not axis.truth()["enabled"]  # no setpoint yet: the heartbeat alone
        # Stream a ramp 1000 -> 1400 mm in 100 steps, one per cycle, as the motion layer would.
        for i in range(101):
            axis.cycle.set_setpoint(Setpoint(1000.0 + 4.0 * i, 1000.0, 2000.0))
            await asyncio.sleep(0.02)
        axis.cycle.set_setpoint(None)  # hold: the last target goes on with the heartbeat

        async def arrived() -> bool:
            s = axis.cycle.latest
            return s is not None and s.good and s.in_position and abs(s.position - 1400) < 1.1

        await wait_until(arrived, 5, "hoist at 1400 mm")
        assert axis.truth()["position_mm"] == pytest.approx(1400.0, abs=1.0)
        assert axis.truth()["enabled"]
        good = [s for s in axis.statuses if s.good]
        assert all(a.received <= b.received for a, b in itertools.pairwise(good))
        assert len({s.heartbeat_echo for s in good}) > 50  # a new heartbeat every cycle
        assert max(s.position for s in good) <= 1400.1  # no overshoot as seen by the master
        stats = axis.cycle.stats
        assert stats.cycles >= 100 and not stats.fallback
        assert stats.rtt_ms(0.5) is not None
        # Telemetry is decimated to poll_hz (10 of 50 Hz): every 5th status is published.
        published = [b for b in axis.batches if any(r.point == "position" for r in b)]
        assert 0 < len(published) <= len(axis.statuses) // 5 + 1
        last = {r.point: r for r in published[-1]}
        assert last["target_position"].value == pytest.approx(1400.0)
        assert last["control_word"].value == 3 and last["position"].quality is Quality.GOOD
        assert axis.driver.health.state is HealthState.ONLINE


async def test_the_heartbeat_lives_only_in_the_cycle() -> None:
    async with reference_hoist(1000.0) as (port, sim):
        async with cycle_driver(port, sim) as axis:
            await axis.good_status()
            axis.cycle.set_setpoint(Setpoint(5000.0, 500.0, 500.0))

            async def moving() -> bool:
                return bool(axis.truth()["moving"])

            await wait_until(moving, 3, "hoist moving")
        # The cycle has stopped: nobody writes the heartbeat, the drive's watchdog trips.

        async def watchdog_fault() -> bool:
            return axis.truth()["fault"] == 1 and not axis.truth()["moving"]

        await wait_until(watchdog_fault, 3, "fault 1 (watchdog) and standstill")
        assert 1000 < float(axis.truth()["position_mm"]) < 5000  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "word"), [(StopKind.QUICK, 16), (StopKind.CONTROLLED, 5), (StopKind.DISABLE, 0)]
)
async def test_a_stop_write_lands_within_one_cycle(kind: StopKind, word: int) -> None:
    async with reference_hoist(1000.0) as (port, sim), cycle_driver(port, sim) as axis:
        await axis.good_status()
        axis.cycle.set_setpoint(Setpoint(9000.0, 1500.0, 2000.0))

        async def fast() -> bool:
            return float(axis.truth()["velocity_mm_s"]) > 500  # type: ignore[arg-type]

        await wait_until(fast, 5, "hoist running fast")
        ack_s = await axis.cycle.stop_axis(kind)
        assert ack_s >= 0 and axis.cycle.stopped is kind
        # The stop's own round trip read the status back: it already shows the stop, and so
        # does every status after it.
        own = axis.cycle.latest
        assert own is not None and own.good
        if kind is not StopKind.CONTROLLED:
            assert not own.enabled
        after = await axis.good_status()
        if kind is StopKind.CONTROLLED:
            assert after.enabled  # category 2: stays enabled, ramping down
        else:
            assert not after.enabled  # category 1: power stage off after the ramp
        with pytest.raises(AxisStopped, match="release first"):
            axis.cycle.set_setpoint(Setpoint(2000.0, 500.0, 500.0))

        async def standstill() -> bool:
            return not axis.truth()["moving"]

        await wait_until(standstill, 5, "standstill")
        # The latched stop is what every later cycle writes, with a live heartbeat.
        client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0)
        await client.connect()
        try:
            rr = await client.read_holding_registers(104, count=1, device_id=1)
            assert rr.registers == [word]
        finally:
            client.close()
        assert axis.truth()["fault"] == 0  # the heartbeat never stopped
        axis.cycle.release_stop()
        assert axis.cycle.stopped is None
        axis.cycle.set_setpoint(Setpoint(2000.0, 500.0, 500.0))


async def test_fallback_to_fc16_and_fc03_on_a_drive_without_fc23() -> None:
    async with reference_hoist(1000.0) as (port, sim):
        sim.inject("exception_response", {"code": 1, "function": 23})
        async with cycle_driver(port, sim) as axis:
            await axis.good_status()
            assert axis.cycle.stats.fallback
            axis.cycle.set_setpoint(Setpoint(1200.0, 1000.0, 2000.0))

            async def arrived() -> bool:
                s = axis.cycle.latest
                return s is not None and s.good and s.in_position and abs(s.position - 1200) < 1.1

            await wait_until(arrived, 5, "hoist at 1200 mm over FC 16 + FC 03")
            assert axis.truth()["fault"] == 0
            # Statuses before the fallback are bad with the reason; none after it.
            bad = [s for s in axis.statuses if not s.good]
            assert len(bad) <= 1
            assert all("exception 1" in s.error for s in bad)


async def test_a_stop_without_a_connection_is_latched_and_unavailable() -> None:
    port = free_port()  # nobody listens
    async with cycle_driver(port) as axis:
        with pytest.raises(DeviceUnavailable, match="latched"):
            await axis.cycle.stop_axis(StopKind.QUICK)
        assert axis.cycle.stopped is StopKind.QUICK


# --- a peer that answers FC 23 wrongly on purpose ---------------------------------------------


class Fc23Peer:
    """A hand-written Modbus TCP server: FC 23, 16 and 03 by hand-built frames, per ``mode``."""

    def __init__(self) -> None:
        self.mode = "good"
        self.requests: list[int] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.max_connections = 2
        self.delay_first_s = 0.0  # the first connection's answers wait this long
        # (event, connection, first register written, values written) for FC 23 requests and
        # answers sent: the order the peer saw things in.
        self.events: list[tuple[str, int, int, list[int]]] = []
        self.by_conn: dict[int, asyncio.StreamWriter] = {}
        self.handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self.connections
        self.connections += 1
        if len(self._writers) >= self.max_connections:  # a drive taking this many at once
            writer.close()
            return
        self._writers.add(writer)
        self.by_conn[conn] = writer
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while True:
                tid, _pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                self.requests.append(pdu[0])
                start, values = 0, []
                if pdu[0] == 23 and len(pdu) >= 10:
                    start, count = struct.unpack(">HH", pdu[5:9])
                    values = list(struct.unpack(f">{count}H", pdu[10 : 10 + 2 * count]))
                    self.events.append(("request", conn, start, values))
                if conn == 0 and self.delay_first_s:
                    await asyncio.sleep(self.delay_first_s)
                if reply := self.answer(tid, unit, pdu):
                    writer.write(reply)
                    await writer.drain()
                    if pdu[0] == 23:
                        self.events.append(("answer", conn, start, values))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def answer(self, tid: int, unit: int, pdu: bytes) -> bytes:
        fc = pdu[0]
        status = [0, 10000, 0, 0, 0, 1800, 521, 0, 1, 0, 250]  # 1000.0 mm, ready, watchdog_ok
        data = b"".join(struct.pack(">H", v) for v in status)
        mode = self.mode
        if fc == 16:
            body = pdu[:5]
        elif mode == "silent":
            return b""
        elif mode == "short":  # well framed, 2 registers of 11
            body = bytes([fc, 4]) + data[:4]
        elif mode == "exception2":
            body = bytes([fc | 0x80, 2])
        elif mode == "exception4":
            body = bytes([fc | 0x80, 4])
        elif mode == "no_fc23" and fc == 23:
            body = bytes([fc | 0x80, 1])
        elif mode == "wrong_fc":
            body = bytes([3, len(data)]) + data if fc == 23 else bytes([4, len(data)]) + data
        elif mode == "byte_count_lies":  # says 22 bytes, carries 4
            body = bytes([fc, 22]) + data[:4]
        elif mode == "garbage":
            return b"\xde\xad\xbe\xef" * 5
        else:
            body = bytes([fc, len(data)]) + data
        return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body

    def drop_connections(self) -> None:
        for w in list(self._writers):
            w.close()


@contextlib.asynccontextmanager
async def fc23_peer() -> AsyncIterator[tuple[int, Fc23Peer]]:
    peer = Fc23Peer()
    port = free_port()
    server = await asyncio.start_server(peer.handle, "127.0.0.1", port)
    try:
        yield port, peer
    finally:
        peer.drop_connections()
        for task in peer.handlers:
            task.cancel()
        await asyncio.gather(*peer.handlers, return_exceptions=True)
        server.close()
        await server.wait_closed()


HOSTILE = {
    "short": "short answer, 2 of 11",
    "exception2": "exception 2 (illegal data address)",
    "exception4": "exception 4 (server device failure)",
    "wrong_fc": "answer has function code 3, expected 23",
    "silent": "no valid answer within 100 ms",
    "byte_count_lies": "",  # pymodbus drops the frame or the link: bad either way
    "garbage": "",
}


@pytest.mark.parametrize("mode", sorted(HOSTILE))
async def test_hostile_fc23_answers_give_bad_statuses_never_a_crash(mode: str) -> None:
    async with fc23_peer() as (port, peer), cycle_driver(port, timeout_s=0.1) as axis:
        good = await axis.good_status()
        assert good.position == pytest.approx(1000.0) and good.watchdog_ok
        peer.mode = mode
        n = len(axis.statuses)

        async def bad_seen() -> bool:
            return any(not s.good for s in axis.statuses[n:]) or (
                axis.driver.health.state is not HealthState.ONLINE
            )

        await wait_until(bad_seen, 3, f"a bad status or degraded health in mode {mode}")
        bad = [s for s in axis.statuses[n:] if not s.good]
        if HOSTILE[mode]:
            assert bad, f"no bad status in mode {mode}"
            assert HOSTILE[mode] in bad[0].error
            assert bad[0].position != bad[0].position  # NaN, never a stale number
        assert not axis.cycle.stats.fallback
        peer.mode = "good"  # and it recovers by itself
        await wait_until(
            lambda: _true(axis.cycle.latest is not None and axis.cycle.latest.good),
            6,
            "recovery",
        )


async def test_fallback_on_the_raw_peer_uses_fc16_then_fc03() -> None:
    async with fc23_peer() as (port, peer), cycle_driver(port, timeout_s=0.1) as axis:
        peer.mode = "no_fc23"
        await axis.good_status()
        assert axis.cycle.stats.fallback
        n = len(peer.requests)
        await axis.good_status()
        tail = peer.requests[n:]
        assert 23 not in tail and tail[:2] in ([16, 3], [3, 16])


async def test_a_stop_goes_on_the_stop_connection_without_waiting_for_the_cycle() -> None:
    """The cycle's connection is slow (each answer held 150 ms): the stop is written on the
    second connection while the cycle's transaction is still on the wire, acknowledged there,
    and then written again on the cycle's connection, so the drive's last word is the stop."""
    async with fc23_peer() as (port, peer), cycle_driver(port, timeout_s=0.4) as axis:
        await axis.good_status()
        await wait_until(lambda: _true(axis.cycle.stop_link_up), 3, "the stop connection")
        assert peer.connections == 2  # the cycle's and the stop connection
        peer.delay_first_s = 0.15
        axis.cycle.set_setpoint(Setpoint(2000.0, 500.0, 500.0))

        def pending_run() -> bool:  # a setpoint write on the cycle's connection, unanswered
            asked = [e for e in peer.events if e[:3] == ("request", 0, 100)]
            return bool(asked) and asked[-1] == peer.events[-1]

        await wait_until(lambda: _true(pending_run()), 3, "a cycle transaction on the wire")
        n = len(peer.events)
        called = time.monotonic()
        answered = axis.cycle.stop_now(StopKind.QUICK)
        # On the stop connection's socket before anything was awaited: in the caller's step.
        assert axis.cycle.stop_sent_at >= called and not answered.done()
        await answered
        seen = peer.events[n:]
        # Acknowledged on the stop connection before the cycle's transaction was answered.
        assert seen[:2] == [("request", 1, 104, seen[0][3]), ("answer", 1, 104, seen[0][3])]
        assert seen[0][3][0] == int(StopKind.QUICK)
        stats = axis.cycle.stats
        assert stats.stop_sent_s[-1] <= stats.stop_ack_s[-1]

        def repeated() -> bool:  # then the cycle's connection writes it too, after its run
            return any(e[:3] == ("request", 0, 104) for e in peer.events[n:])

        await wait_until(lambda: _true(repeated()), 3, "the stop repeated on the cycle's link")
        later = peer.events[n:]
        run_answered = later.index(next(e for e in later if e[:3] == ("answer", 0, 100)))
        repeat_asked = later.index(next(e for e in later if e[:3] == ("request", 0, 104)))
        assert run_answered < repeat_asked
        assert later[repeat_asked][3][0] == int(StopKind.QUICK)


async def test_a_drive_with_one_connection_takes_its_stops_on_the_cycle() -> None:
    async with fc23_peer() as (port, peer):
        peer.max_connections = 1  # the second connection is closed at once
        async with cycle_driver(port, timeout_s=0.2) as axis:
            await axis.good_status()
            n = len(peer.events)
            await axis.cycle.stop_axis(StopKind.QUICK)
            stops = [e for e in peer.events[n:] if e[0] == "request" and e[2] == 104]
            assert stops and {e[1] for e in stops} == {0}
            assert not axis.cycle.stop_link_up
            assert (await axis.good_status()).good  # the cycle goes on, the stop latched


async def test_a_stop_connection_the_drive_closed_is_opened_again() -> None:
    async with fc23_peer() as (port, peer), cycle_driver(port, timeout_s=0.2) as axis:
        await wait_until(lambda: _true(axis.cycle.stop_link_up), 3, "the stop connection")
        peer.by_conn[1].close()  # a drive closing an idle connection
        await wait_until(lambda: _true(peer.connections == 3), 5, "a new stop connection")
        await wait_until(lambda: _true(axis.cycle.stop_link_up), 3, "the stop connection up")
        n = len(peer.events)
        await axis.cycle.stop_axis(StopKind.QUICK)
        assert ("request", 2, 104) in [e[:3] for e in peer.events[n:]]
