"""The 8 x 8 DSP matrix over OSC, as its page describes it (docs/interfaces/devices/dsp_matrix.md).

Written from that page and docs/interfaces/osc.md; nothing here imports Flytower. The device
speaks OSC over UDP only (its page says so): a message to a point's address with one argument
sets it, a message with none asks for it, and the answer goes from the device's socket to the
address and port the query came from, with the same address and the current value (``f`` for
gains, ``T``/``F`` for mutes, ``i`` for the preset). Writes are not answered.

- Gains are clamped to their ranges (inputs −80 … +12 dB, outputs −80 … +10 dB), as the page
  says the device does. A non-finite gain, a mute that is not a boolean, a preset outside
  1 … 64, or more than one argument is rejected and counted, never applied.
- ``/preset i`` recalls a stored preset: every gain and mute changes at once. The stored
  presets of a simulated matrix are fixed: preset ``p`` sets every gain to ``−(p − 1)`` dB and
  unmutes everything (preset 1: all at 0 dB).
- Bundles are not spoken (counted as ignored); an unknown address is ignored and counted;
  an undecodable datagram (bad string, unknown type tag, truncated argument) is counted as
  malformed. Nothing a sender does stops the server.

``MatrixState`` is the pure state (unit-tested); ``MatrixServer`` owns the UDP socket and the
faults (``silence``, ``late_replies``, ``nonsense_replies``), observable by any OSC client;
``OscFamily`` builds one server per device and serves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, cast

from pythonosc.osc_message import OscMessage, ParseError
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.parsing import osc_types

from simulators.core import (
    DeviceSpec,
    FaultError,
    FaultInfo,
    SimulatedDevice,
    SimulationError,
    check_params,
)

CHANNELS = 8
IN_RANGE = (-80.0, 12.0)
OUT_RANGE = (-80.0, 10.0)
PRESETS = 64
KNOWN_TAGS = frozenset("ihfdsbrmtTFN[]")  # osc.md section 1: anything else has no known width
FIXED_WIDTH = {"i": 4, "f": 4, "r": 4, "m": 4, "h": 8, "d": 8, "t": 8}
NONSENSE_KINDS = ("wrong_type", "garbage", "wrong_address")
MAX_DELAY_S = 30.0


def preset_gain(preset: int) -> float:
    return -float(preset - 1)


@dataclass
class MatrixState:
    """Gains (dB), mutes and the last recalled preset of the matrix."""

    in_gain: list[float] = field(default_factory=lambda: [0.0] * CHANNELS)
    in_mute: list[bool] = field(default_factory=lambda: [False] * CHANNELS)
    out_gain: list[float] = field(default_factory=lambda: [0.0] * CHANNELS)
    out_mute: list[bool] = field(default_factory=lambda: [False] * CHANNELS)
    preset: int = 1

    def recall(self, preset: int) -> None:
        gain = preset_gain(preset)
        self.in_gain = [max(IN_RANGE[0], min(IN_RANGE[1], gain))] * CHANNELS
        self.out_gain = [max(OUT_RANGE[0], min(OUT_RANGE[1], gain))] * CHANNELS
        self.in_mute = [False] * CHANNELS
        self.out_mute = [False] * CHANNELS
        self.preset = preset

    def read(self, address: str) -> tuple[str, Any] | None:
        """``(type tag, value)`` of a readable address, or None for an unknown one."""
        if address == "/preset":
            return "i", self.preset
        point = _POINTS.get(address)
        if point is None:
            return None
        side, i, what = point
        if what == "gain":
            return "f", (self.in_gain if side == "in" else self.out_gain)[i]
        return ("T" if (self.in_mute if side == "in" else self.out_mute)[i] else "F"), None

    def write(self, address: str, value: Any) -> str | None:
        """Apply a write; the reason it was rejected, or None when applied."""
        if address == "/preset":
            if isinstance(value, bool) or not isinstance(value, int):
                return f"/preset takes an int, not {type(value).__name__}"
            if not 1 <= value <= PRESETS:
                return f"preset {value} is outside 1..{PRESETS}"
            self.recall(value)
            return None
        point = _POINTS.get(address)
        if point is None:
            return f"unknown address {address}"
        side, i, what = point
        if what == "mute":
            if not isinstance(value, bool):
                return f"{address} takes T or F, not {type(value).__name__}"
            (self.in_mute if side == "in" else self.out_mute)[i] = value
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{address} takes a number, not {type(value).__name__}"
        if not math.isfinite(value):
            return f"{address} refuses {value}"
        low, high = IN_RANGE if side == "in" else OUT_RANGE
        (self.in_gain if side == "in" else self.out_gain)[i] = max(low, min(high, float(value)))
        return None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for side in ("in", "out"):
            gains, mutes = (
                (self.in_gain, self.in_mute) if side == "in" else (self.out_gain, self.out_mute)
            )
            for i in range(CHANNELS):
                out[f"{side}_{i + 1}_gain"] = gains[i]
                out[f"{side}_{i + 1}_mute"] = mutes[i]
        out["preset"] = self.preset
        return out


_POINTS: dict[str, tuple[str, int, str]] = {
    f"/{side}/{i + 1}/{what}": (side, i, what)
    for side in ("in", "out")
    for i in range(CHANNELS)
    for what in ("gain", "mute")
}


class Undecodable(ValueError):
    """A datagram that is not an OSC message this device can read."""


def parse(data: bytes) -> tuple[str, list[Any]] | None:
    """``(address, arguments)`` of an OSC message; None for a bundle; Undecodable otherwise."""
    if data.startswith(b"#bundle"):
        return None
    try:
        address, index = osc_types.get_string(data, 0)
        if index < len(data):
            tags, index = osc_types.get_string(data, index)
            if not tags.startswith(",") or not set(tags[1:]) <= KNOWN_TAGS:
                raise Undecodable(f"type tags {tags!r} are not OSC 1.0/1.1 tags this device reads")
            # python-osc pads a truncated number with zeros (for one synth's sake); a gain
            # that arrives cut short must not become 0 dB.
            fixed = sum(FIXED_WIDTH.get(tag, 0) for tag in tags[1:])
            if fixed > len(data) - index:
                raise Undecodable(f"arguments {tags!r} need more bytes than the message has")
        message = OscMessage(data)
    except (ParseError, osc_types.ParseError, UnicodeDecodeError) as exc:
        raise Undecodable(str(exc)) from exc
    if not address.startswith("/"):
        raise Undecodable(f"OSC address {address!r} does not start with '/'")
    return address, list(message.params)


def reply(address: str, tag: str, value: Any) -> bytes:
    builder = OscMessageBuilder(address)
    if tag in "TF":
        builder.add_arg(tag == "T")
    else:
        builder.add_arg(value, tag)
    return bytes(builder.build().dgram)


FAULTS = (
    FaultInfo("silence", "the matrix answers no query (writes are still applied)"),
    FaultInfo(
        "late_replies",
        "every answer leaves delay_s after its query",
        {"delay_s": f"float, s, default 1.0, at most {MAX_DELAY_S:g}"},
    ),
    FaultInfo(
        "nonsense_replies",
        "answers are wrong: a string instead of the value (wrong_type), bytes that are not "
        "OSC (garbage), or the value on another address (wrong_address)",
        {"kind": "string, one of wrong_type|garbage|wrong_address, default wrong_type"},
    ),
)
_FAULT_PARAMS = {"silence": set(), "late_replies": {"delay_s"}, "nonsense_replies": {"kind"}}


@dataclass
class Counters:
    datagrams: int = 0
    queries: int = 0
    replies: int = 0
    writes: int = 0
    rejected: int = 0
    unknown: int = 0
    ignored: int = 0
    malformed: int = 0
    last_error: str = ""


class MatrixServer(asyncio.DatagramProtocol):
    """One DSP matrix on one UDP address: the state, the socket and the faults."""

    def __init__(self, device_id: str, bind: tuple[str, int], start_preset: int = 1) -> None:
        self.id = device_id
        self.model = "dsp_matrix"
        self.bind = bind
        self.state = MatrixState()
        self.state.recall(start_preset)
        self.counters = Counters()
        self.transport: asyncio.DatagramTransport | None = None
        self._active: dict[str, dict[str, Any]] = {}
        self._late: set[asyncio.TimerHandle] = set()

    # --- SimulatedDevice ------------------------------------------------------------------

    def truth(self) -> dict[str, Any]:
        return self.state.as_dict()

    def fault_catalogue(self) -> Sequence[FaultInfo]:
        return FAULTS

    def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        if fault not in _FAULT_PARAMS:
            raise FaultError(f"{self.id}: no fault {fault!r} (known: {', '.join(_FAULT_PARAMS)})")
        unknown = set(params) - _FAULT_PARAMS[fault]
        if unknown:
            raise FaultError(f"{self.id}: {fault} takes no parameter(s) {', '.join(unknown)}")
        checked = dict(params)
        if fault == "late_replies":
            delay = params.get("delay_s", 1.0)
            if (
                isinstance(delay, bool)
                or not isinstance(delay, int | float)
                or not 0 < delay <= MAX_DELAY_S
            ):
                raise FaultError(f"{self.id}: delay_s must be > 0 and <= {MAX_DELAY_S:g} s")
            checked["delay_s"] = float(delay)
        elif fault == "nonsense_replies":
            kind = params.get("kind", "wrong_type")
            if kind not in NONSENSE_KINDS:
                raise FaultError(f"{self.id}: kind must be one of {', '.join(NONSENSE_KINDS)}")
            checked["kind"] = kind
        self._active[fault] = checked

    def clear(self, fault: str | None = None) -> None:
        if fault is None:
            self._active.clear()
        else:
            self._active.pop(fault, None)

    def active_faults(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._active.items()}

    # --- the socket -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        self.counters.last_error = f"socket: {exc}"

    def close(self) -> None:
        for handle in self._late:
            handle.cancel()
        self._late.clear()
        if self.transport is not None:
            self.transport.close()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        c = self.counters
        c.datagrams += 1
        try:
            message = parse(data)
        except Undecodable as exc:
            c.malformed += 1
            c.last_error = f"{addr[0]}:{addr[1]}: {exc}"
            return
        if message is None:
            c.ignored += 1
            return
        address, args = message
        if not args:
            self._answer(address, addr)
            return
        if len(args) > 1:
            c.rejected += 1
            c.last_error = f"{address} takes one argument, got {len(args)}"
            return
        problem = self.state.write(address, args[0])
        if problem is None:
            c.writes += 1
        elif address in _POINTS or address == "/preset":
            c.rejected += 1
            c.last_error = problem
        else:
            c.unknown += 1

    def _answer(self, address: str, to: tuple[str | Any, int]) -> None:
        value = self.state.read(address)
        if value is None:
            self.counters.unknown += 1
            return
        self.counters.queries += 1
        if "silence" in self._active:
            return
        nonsense = self._active.get("nonsense_replies")
        if nonsense is None:
            packet = reply(address, *value)
        elif nonsense["kind"] == "wrong_type":
            packet = reply(address, "s", "nonsense")
        elif nonsense["kind"] == "garbage":
            packet = b"\xffnot OSC\x00"
        else:
            packet = reply("/nonsense" + address, *value)
        late = self._active.get("late_replies")
        if late is None:
            self._send(packet, to)
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def send_late() -> None:
            assert handle is not None
            self._late.discard(handle)
            self._send(packet, to)

        handle = loop.call_later(late["delay_s"], send_late)
        self._late.add(handle)

    def _send(self, packet: bytes, to: tuple[str | Any, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(packet, (to[0], to[1]))
            self.counters.replies += 1


PARAMS: dict[str, type] = {"preset": int}


class OscFamily:
    """Simulated OSC devices: the dsp_matrix."""

    models = frozenset({"dsp_matrix"})

    def __init__(self, venue: Mapping[str, Any]) -> None:
        self._servers: dict[tuple[str, int], MatrixServer] = {}
        self._started = time.monotonic()

    def add(self, spec: DeviceSpec) -> SimulatedDevice:
        if spec.model != "dsp_matrix":
            raise SimulationError(f"{spec.where}.model: {spec.model} is not an OSC device model")
        params = check_params(spec, PARAMS)
        preset = params.get("preset", 1)
        if not 1 <= preset <= PRESETS:
            raise SimulationError(f"{spec.where}.preset: must be 1..{PRESETS}, not {preset}")
        tr = spec.transport
        host, port = tr.get("host"), tr.get("port")
        if (
            tr.get("kind") != "osc"
            or not isinstance(host, str)
            or isinstance(port, bool)
            or not isinstance(port, int)
            or not 1 <= port <= 65535
        ):
            raise SimulationError(
                f"{spec.where}: model dsp_matrix needs transport "
                '{ kind = "osc", host = H, port = P }'
            )
        if tr.get("protocol", "udp") != "udp":
            raise SimulationError(
                f"{spec.where}: the dsp_matrix speaks OSC over UDP only (its device page), "
                f"not {tr.get('protocol')}"
            )
        if (host, port) in self._servers:
            other = self._servers[(host, port)].id
            raise SimulationError(f"{spec.where}: {host}:{port} is already {other}'s address")
        server = MatrixServer(spec.id, (host, port), preset)
        self._servers[(host, port)] = server
        return server

    @contextlib.asynccontextmanager
    async def _serving(self) -> AsyncIterator[OscFamily]:
        loop = asyncio.get_running_loop()
        opened: list[MatrixServer] = []
        try:
            for bind, server in self._servers.items():
                try:
                    await loop.create_datagram_endpoint(lambda s=server: s, local_addr=bind)  # type: ignore[misc]
                except OSError as exc:
                    raise SimulationError(
                        f"{server.id}: cannot listen on {bind[0]}:{bind[1]}: {exc}"
                    ) from exc
                opened.append(server)
            self._started = time.monotonic()
            yield self
        finally:
            for server in opened:
                server.close()

    def hosts(self) -> Sequence[AbstractAsyncContextManager[Any]]:
        return [self._serving()]

    def stats(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        total = Counters()
        for server in self._servers.values():
            for name, value in vars(server.counters).items():
                if isinstance(value, int):
                    setattr(total, name, getattr(total, name) + value)
        return {
            "devices": len(self._servers),
            "requests_per_s": round(total.datagrams / elapsed, 1),
            "replies_per_s": round(total.replies / elapsed, 1),
            **{k: v for k, v in vars(total).items() if k != "last_error"},
        }


__all__ = ["MatrixServer", "MatrixState", "OscFamily"]
