"""An audience coming and going, as a people counter over the hall's doors sees it.

Pure logic for the ``people_counter`` model (docs/interfaces/devices/people_counter.md): no
I/O, no clocks. ``Show`` is the timeline of one show, in seconds from the start of its cycle:

    empty -> doors open -> act 1 -> interval -> act 2 -> egress -> (empty: the next show)

``Audience`` moves real people between pools along that timeline, and ``Counter`` is what the
device makes of them (entries, exits and the occupancy between them). The two are kept apart
so that a blocked sensor can miss people: the truth is ``Audience.inside``, what the device
publishes is ``Counter``.

How people move: each movement (arrivals while the doors are open, latecomers, leaving and
coming back in the interval, egress) has a window of the timeline, a pool of people who will
move in it, and a shape ``F(x)``, the share of the pool that has moved by the fraction ``x`` of
the window. Over a piece ``x1 .. x2`` of the window the expected number moving is
``R (F(x2) - F(x1)) / (1 - F(x1))`` of the ``R`` still waiting, times a noisy rate factor
(buses and tram stops: arrivals come in bursts); the number is drawn from a Poisson law with
that mean, and at the window's end whoever is left moves. So the pool is always used up by
the end of its window, whatever the step sizes, and a step may be any length: ``advance``
splits it at every window boundary.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist

MAX_OCCUPANCY = 100_000  # the profile's range of ``occupancy`` and ``capacity``
MAX_COUNT = 10_000_000  # the profile's range of ``entries`` and ``exits``

Shape = Callable[[float], float]


def rising(x: float) -> float:
    """Few at first, most at the end (arrivals before curtain-up; the interval bell)."""
    return x * x


def falling(x: float) -> float:
    """Most at first, a trickle at the end (out at the interval; egress)."""
    return 1.0 - (1.0 - x) ** 3


def even(x: float) -> float:
    return x


def poisson(mean: float, u: float) -> int:
    """A Poisson-distributed count of the given mean, from one uniform draw ``u`` in [0, 1)
    (inverse CDF; a normal approximation above a mean of 30)."""
    if not mean > 0.0:  # also NaN
        return 0
    u = min(max(u, 1e-12), 1.0 - 1e-12)
    if mean > 30.0:
        return max(0, round(NormalDist(mean, math.sqrt(mean)).inv_cdf(u)))
    k, p = 0, math.exp(-mean)
    cumulative = p
    while cumulative < u and k < 1000:
        k += 1
        p *= mean / k
        cumulative += p
    return k


class ShowError(ValueError):
    """A show timeline or an audience that cannot be."""


@dataclass(frozen=True)
class Show:
    """Durations of the phases of one show, in seconds; a show repeats every ``cycle_s``."""

    empty_s: float = 600.0  # before the doors open (and after the hall has emptied)
    doors_s: float = 1800.0
    act_1_s: float = 3000.0
    interval_s: float = 1200.0  # 0: no interval
    act_2_s: float = 2700.0
    egress_s: float = 600.0

    def durations(self) -> dict[str, float]:
        """Each phase and its duration, in the order of the show."""
        return {
            "empty": self.empty_s,
            "doors": self.doors_s,
            "act_1": self.act_1_s,
            "interval": self.interval_s,
            "act_2": self.act_2_s,
            "egress": self.egress_s,
        }

    def __post_init__(self) -> None:
        for name, value in self.durations().items():
            least = 0.0 if name in ("empty", "interval") else 1e-3
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value < least:
                bound = ">= 0" if least == 0.0 else "> 0"
                raise ShowError(f"{name}_s must be a finite number of seconds {bound}, not {value}")

    @property
    def cycle_s(self) -> float:
        return float(sum(self.durations().values()))

    def starts(self) -> dict[str, float]:
        """Where each phase starts in the cycle."""
        out, t = {}, 0.0
        for name, duration in self.durations().items():
            out[name] = t
            t += duration
        return out

    def phase_at(self, s: float) -> str:
        """The phase at ``s`` seconds into a cycle (``empty`` from its end on)."""
        if s >= self.cycle_s:
            return "empty"
        durations = self.durations()
        for name, start in reversed(self.starts().items()):
            if s >= start and durations[name] > 0:
                return name
        return "empty"


@dataclass
class Counter:
    """What the device counts: people in and out over its counting lines since the last reset.

    ``occupancy`` is always ``entries - exits`` and stays within 0 .. MAX_OCCUPANCY: an exit
    with nobody counted in, or an entry into a full count, is not counted (the device cannot
    know of it). A count about to pass MAX_COUNT is rebased (exits taken off both).
    """

    entries: int = 0
    exits: int = 0

    @property
    def occupancy(self) -> int:
        return self.entries - self.exits

    def count_in(self, n: int) -> int:
        """Count ``n`` people in; how many were counted."""
        n = max(0, min(n, MAX_OCCUPANCY - self.occupancy))
        if self.entries + n > MAX_COUNT:
            self.entries, self.exits = self.occupancy, 0
        self.entries += n
        return n

    def count_out(self, n: int) -> int:
        """Count ``n`` people out; how many were counted."""
        n = max(0, min(n, self.occupancy))
        self.exits += n
        return n

    def set_occupancy(self, people: int) -> None:
        """Move the count to ``people`` as if the difference had walked in or out."""
        if not 0 <= people <= MAX_OCCUPANCY:
            raise ShowError(f"occupancy must be 0 .. {MAX_OCCUPANCY}, not {people}")
        delta = people - self.occupancy
        if delta > 0:
            self.count_in(delta)
        else:
            self.count_out(-delta)

    def reset(self) -> None:
        self.entries = self.exits = 0


@dataclass(frozen=True)
class Crowd:
    """Who comes and how they behave (percentages of the audience)."""

    capacity: int = 1200  # seats
    attendance_pct: float = 92.0  # of the seats that are taken, on average
    late_pct: float = 3.0  # of the audience arriving in the first fifth of act 1
    interval_out_pct: float = 40.0  # of the audience leaving the hall in the interval
    interval_home_pct: float = 3.0  # of those who leave and do not come back

    def __post_init__(self) -> None:
        cap = self.capacity
        if isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap <= MAX_OCCUPANCY:
            raise ShowError(f"capacity must be a whole number 0 .. {MAX_OCCUPANCY}, not {cap!r}")
        for name in ("attendance_pct", "late_pct", "interval_out_pct", "interval_home_pct"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 100):
                raise ShowError(f"{name} must be a percentage 0 .. 100, not {value!r}")


@dataclass(frozen=True)
class Window:
    name: str
    start: float
    end: float
    pool: str  # the pool it empties
    into: str  # where they go: "inside" (counted in), "foyer"/"out" (counted out)
    shape: Shape


@dataclass
class Audience:
    """Real people along the show's timeline, and the counter over the doors (module doc)."""

    show: Show
    crowd: Crowd
    rng: random.Random
    repeat: bool = True  # another show after this one (the counts reset as it starts)
    daily_reset: bool = True
    t: float = 0.0  # seconds into the present show's cycle
    inside: int = 0  # really in the hall
    counter: Counter = field(default_factory=Counter)
    missed_pct: float = 0.0  # of the people passing that the counter misses (a blocked sensor)
    missed: int = 0  # people who passed uncounted since the start
    hold: bool = False  # no one moves (the control endpoint's override holds the count)
    audience: int = 0  # coming to the show of the present cycle
    pools: dict[str, int] = field(default_factory=dict)
    rate_noise: float = 0.0  # log of the arrival rate's factor (an Ornstein-Uhlenbeck process)

    def __post_init__(self) -> None:
        st = self.show.starts()
        sh = self.show
        a1, iv = st["act_1"], st["interval"]
        self.windows = [
            Window("doors", st["doors"], a1, "punctual", "inside", rising),
            Window("late", a1, a1 + 0.2 * sh.act_1_s, "late", "inside", even),
            Window("out", iv, iv + 0.4 * sh.interval_s, "leaving", "foyer", falling),
            Window(
                "back",
                iv + 0.5 * sh.interval_s,
                iv + 0.95 * sh.interval_s,
                "returning",
                "inside",
                rising,
            ),
            Window("egress", st["egress"], sh.cycle_s, "inside", "out", falling),
        ]
        self.windows = [w for w in self.windows if w.end > w.start]
        cuts = {sh.cycle_s} | {w.start for w in self.windows} | {w.end for w in self.windows}
        self.cuts = sorted(cuts)
        self.cycle = 0
        self._new_cycle(0)

    # --- the timeline -------------------------------------------------------------------------

    def position(self) -> tuple[int, float]:
        """(show number, seconds into its cycle); a show that does not repeat stays at its
        end, the hall empty, once it is over."""
        return self.cycle, self.t

    def phase(self) -> str:
        return self.show.phase_at(self.t)

    def advance(self, dt: float) -> None:
        """Move the present time on by ``dt`` seconds, and the people with it."""
        if not (math.isfinite(dt) and dt > 0):
            return
        cycle_s, left = self.show.cycle_s, dt
        while left > 0:
            if self.t >= cycle_s:
                if not self.repeat:
                    return  # the show is over, for good
                skipped = int(left // cycle_s)  # a long pause (a suspended process): whole
                left -= skipped * cycle_s  # shows are skipped, not simulated
                self._new_cycle(self.cycle + 1 + skipped)
                if left <= 0:
                    return
            nxt = next(c for c in self.cuts if c > self.t)  # cuts end with cycle_s > t
            piece = min(nxt - self.t, left)
            self._move(self.t, self.t + piece)
            self.t = nxt if piece == nxt - self.t else self.t + piece
            left -= piece

    def _new_cycle(self, k: int) -> None:
        """A new show: whoever is still in leaves, the day's counts reset, tonight's audience."""
        self.cycle, self.t = k, 0.0
        if not self.hold:
            if self.inside:
                self._out(self.inside)
            if self.daily_reset:
                self.counter.reset()
        c = self.crowd
        spread = math.exp(0.02 * self.rng.gauss(0.0, 1.0))
        self.audience = min(c.capacity, round(c.capacity * c.attendance_pct / 100.0 * spread))
        late = round(self.audience * c.late_pct / 100.0)
        self.pools = {"punctual": self.audience - late, "late": late, "leaving": 0,
                      "foyer": 0, "returning": 0}  # fmt: skip
        self._decided: set[str] = set()

    def _move(self, a: float, b: float) -> None:
        """People who move between ``a`` and ``b`` seconds into the cycle (no cut between)."""
        self.rate_noise = _ou(self.rate_noise, max(10.0, self.show.doors_s / 30.0), 0.5, b - a,
                              self.rng.gauss(0.0, 1.0))  # fmt: skip
        if self.hold:
            return
        for w in self.windows:
            if b <= w.start or a >= w.end:
                continue
            self._decide(w)
            waiting = self.inside if w.pool == "inside" else self.pools[w.pool]
            if waiting <= 0:
                continue
            x1 = (a - w.start) / (w.end - w.start)
            x2 = (b - w.start) / (w.end - w.start)
            if x2 >= 1.0 - 1e-9:
                n = waiting
            else:
                f1 = w.shape(x1)
                share = (w.shape(x2) - f1) / (1.0 - f1) if f1 < 1.0 else 1.0
                factor = math.exp(self.rate_noise - 0.125)  # mean 1 (sigma 0.5)
                n = min(waiting, poisson(waiting * share * factor, self.rng.random()))
            if n <= 0:
                continue
            if w.pool != "inside":
                self.pools[w.pool] -= n
            if w.into == "inside":
                self._in(n)
            else:
                self._out(n)
                if w.into == "foyer":
                    self.pools["foyer"] += n

    def _decide(self, w: Window) -> None:
        """Pools that depend on the moment their window opens."""
        if w.name in self._decided:
            return
        self._decided.add(w.name)
        c = self.crowd
        if w.name == "out":
            self.pools["leaving"] = round(self.inside * c.interval_out_pct / 100.0)
        elif w.name == "back":
            foyer = self.pools["foyer"]
            self.pools["returning"] = foyer - round(foyer * c.interval_home_pct / 100.0)
            self.pools["foyer"] = 0

    # --- people through the doors -------------------------------------------------------------

    def _counted(self, n: int) -> int:
        """How many of ``n`` people passing are counted (all, unless a sensor is blocked)."""
        if self.missed_pct <= 0.0:
            return n
        if n > 1000:  # a crowd in one step: the expected share
            seen = round(n * (1.0 - self.missed_pct / 100.0))
        else:
            seen = sum(self.rng.random() * 100.0 >= self.missed_pct for _ in range(n))
        self.missed += n - seen
        return seen

    def _in(self, n: int) -> None:
        n = min(n, MAX_OCCUPANCY - self.inside)
        self.inside += n
        self.counter.count_in(self._counted(n))

    def _out(self, n: int) -> None:
        n = min(n, self.inside)
        self.inside -= n
        self.counter.count_out(self._counted(n))

    # --- the control endpoint's override ----------------------------------------------------

    def set_people(self, people: int) -> None:
        """``people`` are in the hall now, and counted so (they walked in or out)."""
        if isinstance(people, bool) or not isinstance(people, int):
            raise ShowError(f"people must be a whole number, not {people!r}")
        if not 0 <= people <= MAX_OCCUPANCY:
            raise ShowError(f"people must be 0 .. {MAX_OCCUPANCY}, not {people}")
        self.inside = people
        self.counter.set_occupancy(people)


def _ou(x: float, tau_s: float, sigma: float, dt: float, z: float) -> float:
    a = math.exp(-dt / tau_s)
    return x * a + sigma * math.sqrt(1.0 - a * a) * z
