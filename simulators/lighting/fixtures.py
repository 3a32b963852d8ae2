"""What the fixtures do with their channels: the three DMX fixture pages, decoded per universe.

Each model is data from its page in docs/interfaces/devices/ — footprint, power-on values, which
channels carry intensity — plus a vectorised ``decode`` from the raw footprints of every fixture
of the model (an ``(n, footprint)`` uint8 array) to engineering units, named as the page's points
(``intensity`` %, ``pan`` °, ``dimmer_3`` %, …) with the page's interpretation beside them
(``strobe_hz``, ``shutter_state``, ``colour``, …).

A ``Bank`` holds every fixture of one model in the venue, so one numpy gather reads all their
footprints out of all universes at once, and the DMX-loss behaviour of their pages (hold the last
look for ``hold_s``, then black out, or fade out over ``fade_s`` for the dimmer rack), stuck
channels and offline receivers are array operations too. ``Fixture`` is one device of a bank:
its truth and its faults (``simulators.core.SimulatedDevice``). Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from simulators.core import FaultError, FaultInfo

U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]
Columns = dict[str, npt.NDArray[Any]]

STATE_LIVE, STATE_HOLD, STATE_DARK, STATE_NEVER = 0, 1, 2, 3
STATE_NAMES = ("live", "hold", "blackout", "no_signal")


def _pct(raw: npt.NDArray[Any], full: float = 255.0) -> F64:
    return np.round(raw.astype(np.float64) * (100.0 / full), 3)


def _word(coarse: U8, fine: U8) -> npt.NDArray[np.int64]:
    return coarse.astype(np.int64) << 8 | fine.astype(np.int64)


def _led_par(eff: U8, factor: F64) -> Columns:
    x = eff[:, 0] / 255.0
    curve = eff[:, 7] // 64
    shaped = np.select(
        [curve == 0, curve == 1, curve == 2], [x, x * x, 1 - (1 - x) ** 2], 3 * x * x - 2 * x**3
    )
    macro = np.where(eff[:, 6] < 10, 0, np.minimum((eff[:, 6].astype(int) - 10) // 15 + 1, 16))
    output = shaped * factor * 100.0
    cols: Columns = {
        "intensity": _pct(eff[:, 0]) * factor,
        "red": _pct(eff[:, 1]),
        "green": _pct(eff[:, 2]),
        "blue": _pct(eff[:, 3]),
        "white": _pct(eff[:, 4]),
        "strobe": eff[:, 5].astype(np.int64),
        "colour_macro": eff[:, 6].astype(np.int64),
        "dimmer_curve": eff[:, 7].astype(np.int64),
        "strobe_hz": np.where(
            eff[:, 5] < 10, 0.0, np.round(1 + (eff[:, 5].astype(float) - 10) * 19 / 245, 2)
        ),
        "macro": macro,
        "curve": np.array(["linear", "square", "inverse_square", "s_curve"])[curve],
        "output": np.round(output, 3),
    }
    # With a colour macro on, the LED mix is the macro's, which the page does not list.
    for name, ch in (("red", 1), ("green", 2), ("blue", 3), ("white", 4)):
        cols[f"output_{name}"] = np.where(
            macro > 0, np.nan, np.round(output * eff[:, ch] / 255.0, 3)
        )
    return cols


_SHUTTER = np.array(["closed", "open", "strobe", "open", "pulse", "open", "random_strobe", "open"])


def _wheel(raw: U8, slots: int, rest: str, prefix: str) -> npt.NDArray[np.str_]:
    slot = (raw.astype(int) - 8) // 16 + 1
    names = np.array(["open", *(f"{prefix} {i}" for i in range(1, slots + 1)), rest])
    return names[np.where(raw < 8, 0, np.minimum(slot, slots + 1))]


def _moving_head(eff: U8, factor: F64) -> Columns:
    shutter = _SHUTTER[eff[:, 5] // 32]
    dimmer = _pct(_word(eff[:, 6], eff[:, 7]), 65535.0) * factor
    control = eff[:, 15]
    rot = eff[:, 10].astype(float)
    return {
        "pan": np.round(_word(eff[:, 0], eff[:, 1]) * (540.0 / 65535.0), 4),
        "tilt": np.round(_word(eff[:, 2], eff[:, 3]) * (270.0 / 65535.0), 4),
        "pan_tilt_speed": eff[:, 4].astype(np.int64),
        "shutter": eff[:, 5].astype(np.int64),
        "dimmer": dimmer,
        "colour_wheel": eff[:, 8].astype(np.int64),
        "gobo_wheel": eff[:, 9].astype(np.int64),
        "gobo_rotation": eff[:, 10].astype(np.int64),
        "prism": eff[:, 11].astype(np.int64),
        "focus": _pct(eff[:, 12]),
        "zoom": _pct(eff[:, 13]),
        "frost": _pct(eff[:, 14]),
        "control": control.astype(np.int64),
        "shutter_state": shutter,
        "output": np.where(shutter == "closed", 0.0, dimmer),
        "colour": _wheel(eff[:, 8], 8, "rotating", "slot"),
        "gobo": _wheel(eff[:, 9], 7, "shake", "gobo"),
        "gobo_mode": np.select([rot < 128, rot < 192], ["index", "rotate_cw"], "rotate_ccw"),
        "gobo_angle": np.where(rot < 128, np.round(rot * 360.0 / 128.0, 3), np.nan),
        "prism_in": eff[:, 11] >= 128,
        "control_function": np.select(
            [(control >= 100) & (control <= 109), (control >= 110) & (control <= 119)],
            ["reset", "display_off"],
            "none",
        ),
    }


def _dimmer_rack(eff: U8, factor: F64) -> Columns:
    levels = _pct(eff) * factor[:, None]
    return {f"dimmer_{i + 1}": np.round(levels[:, i], 3) for i in range(12)}


@dataclass(frozen=True)
class Model:
    """A fixture type as its page describes it."""

    name: str
    footprint: int
    power_on: tuple[int, ...]  # what the fixture shows before it has ever seen DMX
    decode: Callable[[U8, F64], Columns]
    hold_s: float  # DMX loss: the last look is held this long ...
    fade_s: float  # ... then fades out over this long (0: blackout at once)


MODELS: dict[str, Model] = {
    "led_par_rgbw": Model("led_par_rgbw", 8, (0, 255, 255, 255, 255, 0, 0, 0), _led_par, 5.0, 0.0),
    "moving_head": Model(
        "moving_head",
        16,
        (128, 0, 128, 0, 0, 32, 0, 0, 0, 0, 0, 0, 128, 128, 0, 0),
        _moving_head,
        5.0,
        0.0,
    ),
    "dimmer_rack": Model("dimmer_rack", 12, (0,) * 12, _dimmer_rack, 10.0, 3.0),
}

RESET_HOLD_S = 3.0  # moving head: the control channel's reset takes after 3 s held

FAULTS = (
    FaultInfo(
        "receiver_offline",
        "the fixture's network receiver is down: it ignores every packet (its DMX-loss "
        "behaviour runs) and the node no longer announces its universe in ArtPollReply "
        "unless another fixture there still receives",
    ),
    FaultInfo(
        "no_signal_hold",
        "on DMX loss hold the last look for hold_s, then go dark (without hold_s: for ever)",
        {"hold_s": "float, s, default: for ever"},
    ),
    FaultInfo("blackout_on_loss", "on DMX loss go dark at once (no hold, no fade)"),
    FaultInfo(
        "bad_channels",
        "channels of the footprint are stuck: they ignore DMX and keep value",
        {
            "channels": "list of int, footprint channels 1..footprint, required",
            "value": "int, 0..255, default: the channel's value when the fault starts",
        },
    ),
)
_FAULT_NAMES = frozenset(f.name for f in FAULTS)


@dataclass
class Bank:
    """Every fixture of one model: where they are patched and their per-fixture state."""

    model: Model
    rows: list[int] = field(default_factory=list)  # row of the universe in the frames array
    starts: list[int] = field(default_factory=list)  # 0-based start channel
    hold_default: list[float] = field(default_factory=list)
    fade_default: list[float] = field(default_factory=list)
    columns: Columns = field(default_factory=dict)

    def add(self, row: int, start: int, hold_s: float, fade_s: float) -> int:
        self.rows.append(row)
        self.starts.append(start)
        self.hold_default.append(hold_s)
        self.fade_default.append(fade_s)
        return len(self.rows) - 1

    def freeze(self) -> None:
        """Turn the patch into arrays; called once every fixture is added."""
        n, fp = len(self.rows), self.model.footprint
        self.row_idx = np.array(self.rows, np.intp)
        self.col_idx = np.array(self.starts, np.intp)[:, None] + np.arange(fp)
        self.held: U8 = np.tile(np.array(self.model.power_on, np.uint8), (n, 1))
        self.effective: U8 = self.held.copy()
        self.stuck = np.zeros((n, fp), bool)
        self.stuck_value: U8 = np.zeros((n, fp), np.uint8)
        self.offline = np.zeros(n, bool)
        self.offline_since = np.full(n, np.nan)
        self.hold_s = np.array(self.hold_default, np.float64)
        self.fade_s = np.array(self.fade_default, np.float64)
        self.ever = np.zeros(n, bool)
        self.receiving = np.zeros(n, bool)
        self.state = np.full(n, STATE_NEVER, np.int8)
        self.factor = np.ones(n)
        self.reset_since = np.full(n, np.nan)
        self.reset_taken = np.zeros(n, bool)
        self.resets = np.zeros(n, np.int64)
        self.columns = self.model.decode(self.effective, self.factor)

    def refresh(self, now: float, frames: U8, live: npt.NDArray[np.bool_], lost_at: F64) -> None:
        """Read every fixture's footprint from the merged universes and apply its state."""
        raw = frames[self.row_idx[:, None], self.col_idx]
        recv = live[self.row_idx] & ~self.offline
        self.held[recv] = raw[recv]
        self.ever |= recv
        self.receiving = recv
        self.effective = np.where(self.stuck, self.stuck_value, self.held)
        lost = np.fmax(lost_at[self.row_idx], self.offline_since)
        with np.errstate(invalid="ignore"):
            over = now - lost - self.hold_s  # nan while receiving or never lost
            fading = np.where(
                self.fade_s > 0, np.clip(1 - over / np.maximum(self.fade_s, 1e-9), 0, 1), 0.0
            )
            dark = over >= 0
        self.factor = np.where(recv | ~dark, 1.0, fading)
        self.state = np.select(
            [recv, ~self.ever, dark], [STATE_LIVE, STATE_NEVER, STATE_DARK], STATE_HOLD
        ).astype(np.int8)
        if self.model.name == "moving_head":
            self._reset_timer(now)
        self.columns = self.model.decode(self.effective, self.factor)

    def _reset_timer(self, now: float) -> None:
        control = self.effective[:, 15]
        held = (control >= 100) & (control <= 109)
        self.reset_since = np.where(
            held, np.where(np.isnan(self.reset_since), now, self.reset_since), np.nan
        )
        with np.errstate(invalid="ignore"):
            due = held & ~self.reset_taken & (now - self.reset_since >= RESET_HOLD_S)
        self.resets += due
        self.reset_taken = held & (self.reset_taken | due)


def _plain(value: Any) -> Any:
    item = value.item() if hasattr(value, "item") else value
    if isinstance(item, float) and math.isnan(item):
        return None
    return item


class Fixture:
    """One simulated DMX fixture (``SimulatedDevice``): its row of a bank, and its faults."""

    def __init__(
        self,
        device_id: str,
        bank: Bank,
        index: int,
        universe: int,
        address: int,
        family: Any,  # the DmxFamily: refreshes before a truth is read, gives the clock
    ) -> None:
        self.id = device_id
        self.model = bank.model.name
        self.bank = bank
        self.index = index
        self.universe = universe
        self.address = address
        self.family = family
        self._active: dict[str, dict[str, Any]] = {}

    def truth(self) -> dict[str, Any]:
        self.family.refresh()
        b, i = self.bank, self.index
        out = {name: _plain(col[i]) for name, col in b.columns.items()}
        out["state"] = STATE_NAMES[int(b.state[i])]
        out["receiving"] = bool(b.receiving[i])
        if self.model == "moving_head":
            out["resets"] = int(b.resets[i])
        out["channels"] = b.effective[i].tolist()
        out["universe"], out["address"] = self.universe, self.address
        out["signal"] = self.family.signal(self.universe)
        return out

    def fault_catalogue(self) -> Sequence[FaultInfo]:
        return FAULTS

    def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        if fault not in _FAULT_NAMES:
            raise FaultError(
                f"{self.id}: no fault {fault!r} (known: {', '.join(sorted(_FAULT_NAMES))})"
            )
        self.family.refresh()  # the bank's arrays exist once the family serves or refreshes
        b, i = self.bank, self.index
        allowed = {"no_signal_hold": {"hold_s"}, "bad_channels": {"channels", "value"}}
        unknown = set(params) - allowed.get(fault, set())
        if unknown:
            raise FaultError(f"{self.id}: {fault} takes no parameter(s) {', '.join(unknown)}")
        if fault == "receiver_offline":
            b.offline[i], b.offline_since[i] = True, self.family.now()
        elif fault == "no_signal_hold":
            hold = params.get("hold_s")
            if hold is not None and not _non_negative(hold):
                raise FaultError(f"{self.id}: hold_s must be a finite number >= 0, not {hold!r}")
            self._active.pop("blackout_on_loss", None)
            b.hold_s[i] = math.inf if hold is None else float(hold)
            b.fade_s[i] = b.fade_default[i]
        elif fault == "blackout_on_loss":
            self._active.pop("no_signal_hold", None)
            b.hold_s[i], b.fade_s[i] = 0.0, 0.0
        else:
            self._stick(params)
        self._active[fault] = dict(params)
        self.family.refresh(force=True)

    def _stick(self, params: Mapping[str, Any]) -> None:
        b, i, fp = self.bank, self.index, self.bank.model.footprint
        channels = params.get("channels")
        if (
            not isinstance(channels, list)
            or not channels
            or not all(_int_in(c, 1, fp) for c in channels)
        ):
            raise FaultError(f"{self.id}: channels must be a non-empty list of 1..{fp}")
        value = params.get("value")
        if value is not None and not _int_in(value, 0, 255):
            raise FaultError(f"{self.id}: value must be a whole number 0..255, not {value!r}")
        for c in channels:
            b.stuck[i, c - 1] = True
            b.stuck_value[i, c - 1] = b.effective[i, c - 1] if value is None else value

    def clear(self, fault: str | None = None) -> None:
        b, i = self.bank, self.index
        for name in list(self._active) if fault is None else [fault]:
            if self._active.pop(name, None) is None:
                continue
            if name == "receiver_offline":
                b.offline[i], b.offline_since[i] = False, np.nan
            elif name in ("no_signal_hold", "blackout_on_loss"):
                b.hold_s[i], b.fade_s[i] = b.hold_default[i], b.fade_default[i]
            else:
                b.stuck[i] = False
        self.family.refresh(force=True)

    def active_faults(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._active.items()}


def _non_negative(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
