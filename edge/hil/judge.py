"""Judging expectations against samples: pure functions and a small state machine, no I/O.

``holds`` says whether one observed value satisfies a condition. A ``Judge`` follows one
expectation through the samples of its series as they arrive (``feed``), so the terminal can
show a verdict the moment it is known, and settles what is still open when the run ends
(``finish``). A verdict, once given, never changes; feeding every sample at once and then
finishing gives the same verdict as feeding them live (the tests check this property).

Semantics (sample times are seconds from the start of the timeline; the anchor is when the
``after`` step started, or ``at``, or 0):

- at the anchor: the first sample at or after the anchor must hold;
- ``within_s`` W: some sample in [anchor, anchor + W] must hold;
- ``for_s`` F: from that sample on, every sample up to F later must hold too, and the run must
  last that long.

A missing value (no reading yet, a reading whose quality is not good, a truth key a device
stopped reporting) satisfies no condition: the service not knowing is not the axis being still.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from edge.hil.scenario import Condition, Expectation, _fmt

MAX_SHOWN = 4  # observations quoted from each end of a window in a failure message


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def holds(cond: Condition, observed: Any) -> bool:
    """Whether ``observed`` satisfies ``cond``; a missing or mistyped value never does."""
    if observed is None:
        return False
    want = cond.value
    if cond.op == "between":
        x = _number(observed)
        return x is not None and float(want[0]) <= x <= float(want[1])
    if cond.op in ("==", "!="):
        if isinstance(want, bool) or isinstance(observed, bool):
            # true is not 1: a status bit compared with a number is a mistake, not a match
            equal = isinstance(want, bool) and isinstance(observed, bool) and want == observed
        elif isinstance(want, str) or isinstance(observed, str):
            equal = want == observed
        else:
            x = _number(observed)
            if x is None:
                return False
            equal = abs(x - float(want)) <= cond.tol
        return equal if cond.op == "==" else not equal
    x = _number(observed)
    bound = float(want)
    if x is None:
        return False
    if cond.op == "<":
        return x < bound
    if cond.op == "<=":
        return x <= bound
    if cond.op == ">":
        return x > bound
    return x >= bound


class Verdict(StrEnum):
    PENDING = "pending"
    PASSED = "passed"
    FAILED = "failed"


@dataclass
class Judge:
    """One expectation followed through time."""

    expectation: Expectation
    anchor: float | None = None  # None until the anchoring step has run
    verdict: Verdict = Verdict.PENDING
    decided_at: float | None = None
    message: str = ""
    _streak: float | None = None  # time of the first sample of the current run of trues
    _seen: list[tuple[float, Any]] = field(default_factory=list)
    _late_true: tuple[float, Any] | None = None  # first hold after a window was missed
    _last: tuple[float, Any] | None = None

    def __post_init__(self) -> None:
        if self.anchor is None and self.expectation.after is None:
            self.anchor = self.expectation.at or 0.0

    @property
    def deadline(self) -> float | None:
        """The last moment a hold may begin (None before the anchor is known)."""
        if self.anchor is None:
            return None
        return self.anchor + (self.expectation.within_s or 0.0)

    def start(self, t: float) -> None:
        """The anchoring step has started at ``t``."""
        if self.anchor is None:
            self.anchor = t

    def feed(self, t: float, value: Any) -> None:
        if self.anchor is None or t < self.anchor:
            return
        ok = holds(self.expectation, value)
        self._last = (t, value)
        if self.verdict is Verdict.FAILED:
            if ok and self._late_true is None and self.message.startswith("never held"):
                self._late_true = (t, value)
            return
        if self.verdict is Verdict.PASSED:
            return
        self._seen.append((t, value))
        deadline = self.deadline
        assert deadline is not None
        if ok:
            if self._streak is None:
                if t > deadline and len(self._seen) > 1:  # a hold may not begin this late
                    self._late_true = (t, value)
                    self._fail(t, "never held")
                    return
                self._streak = t
            if t - self._streak >= self.expectation.for_s:
                self._pass(t)
            return
        if self._streak is not None:
            streak, self._streak = self._streak, None
            if self.expectation.within_s is None or t > deadline:
                self._fail(t, f"held from {streak:.3f} s but was {_fmt(value)} at {t:.3f} s")
        elif t >= deadline:
            self._fail(t, "never held")

    def finish(self, t_end: float) -> None:
        """The run ended at ``t_end``: settle a verdict that is still open."""
        if self.verdict is not Verdict.PENDING:
            return
        exp = self.expectation
        if self.anchor is None:
            self._fail(t_end, f"step '{exp.after}' never ran")
        elif not self._seen:
            self._fail(t_end, f"no sample after the anchor at {self.anchor:.3f} s")
        elif self._streak is not None:
            self._fail(
                t_end,
                f"held from {self._streak:.3f} s until the run ended at {t_end:.3f} s, "
                f"short of {_fmt(exp.for_s)} s",
            )
        else:
            self._fail(t_end, f"never held (the run ended at {t_end:.3f} s)")

    # --- verdicts -------------------------------------------------------------------------

    def _pass(self, t: float) -> None:
        self.verdict, self.decided_at = Verdict.PASSED, t
        assert self._streak is not None
        self.message = f"held from {self._streak:.3f} s"

    def _fail(self, t: float, why: str) -> None:
        self.verdict, self.decided_at = Verdict.FAILED, t
        self.message = why

    def report(self) -> str:
        """The verdict with what was observed, for people and the JUnit failure text."""
        exp = self.expectation
        head = f"expected {exp.describe()} {exp.describe_timing()}"
        if self.anchor is not None:
            head += f" (anchor {self.anchor:.3f} s)"
        text = f"{head}: {self.message}"
        if self.verdict is Verdict.FAILED:
            text += f"; observed {observations(self._seen)}"
            if self._late_true is not None:
                t, v = self._late_true
                text += f"; first held later, at {t:.3f} s ({_fmt(v)})"
            elif self._last is not None and (not self._seen or self._last != self._seen[-1]):
                t, v = self._last
                text += f"; last value {_fmt(v)} at {t:.3f} s"
        return text


def observations(seen: Sequence[tuple[float, Any]]) -> str:
    """'2000 at 0.512 s, 2001.5 at 0.61 s, … (12 more) …, 2190 at 1.81 s' (both ends)."""
    if not seen:
        return "nothing"

    def one(item: tuple[float, Any]) -> str:
        t, v = item
        return f"{'no value' if v is None else _fmt(v)} at {t:.3f} s"

    if len(seen) <= 2 * MAX_SHOWN:
        return ", ".join(one(s) for s in seen)
    head = ", ".join(one(s) for s in seen[:MAX_SHOWN])
    tail = ", ".join(one(s) for s in seen[-MAX_SHOWN:])
    return f"{head}, … ({len(seen) - 2 * MAX_SHOWN} more) …, {tail}"
