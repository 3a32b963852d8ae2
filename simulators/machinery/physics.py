"""Motion of one axis: pure functions of state and limits, no I/O, no clock.

A drive advances its axis every control cycle (10 ms) with one of two generators:

- ``run_step``: run to a goal position under a speed, acceleration and optional jerk limit,
  without overshoot. Without a jerk limit the profile is trapezoidal and exact: the largest
  velocity for this step that still lets the axis stop at the goal at the given deceleration
  (the v1 reference drive's rule). With a jerk limit it is an S-curve: each cycle takes the
  largest acceleration change within ±jerk·dt whose jerk-limited stopping distance still fits
  before the goal (``stop_distance``, closed form), and that keeps the speed under its limit.
  Feasibility is monotone in the chosen acceleration, so the choice is a bisection that only
  runs in the cycles where braking begins.
- ``stop_step``: ramp the velocity down to zero at a deceleration (jerk-limited too when a jerk
  limit is given and the stop is a controlled one).

Both work in the frame of the motion ("along"): the caller passes signed quantities and gets
signed quantities back. Positions are engineering units (mm, or degrees for a turntable); the
rotary helpers at the end turn a wrapped target and a direction rule into an unwrapped goal.
"""

from __future__ import annotations

import math
from typing import NamedTuple

# Limits and Motion are named tuples, not frozen dataclasses: every drive makes one of each
# per control cycle, and a frozen dataclass costs several times more to build.


class Limits(NamedTuple):
    """What one run may use: speed, acceleration (= deceleration) and jerk (0 = unlimited)."""

    speed: float
    accel: float
    jerk: float = 0.0


class Motion(NamedTuple):
    """The state of an axis after a step: position, velocity, acceleration, and whether the
    run has settled on its goal in this step."""

    position: float
    velocity: float
    accel: float
    settled: bool = False


def stop_distance(v: float, a: float, decel: float, jerk: float, dt: float = 0.0) -> float:
    """Signed distance travelled until standstill when braking as hard as allowed.

    From velocity ``v`` and acceleration ``a`` (signed, same axis), with the acceleration
    ramped at ``jerk`` towards ``-decel`` (or less: a triangular profile), held, then ramped
    back to zero as the velocity reaches zero. Exact for piecewise-constant jerk; with a
    control cycle ``dt`` it allows for the first ramp ending inside a cycle, where a drive that
    moves its acceleration linearly over whole cycles brakes a little less (up to
    jerk*dt^2/8 of velocity, which would otherwise carry over into an overshoot).
    """
    if jerk <= 0:
        return v * abs(v) / (2 * decel) if decel > 0 else math.copysign(math.inf, v)
    s = v + a * abs(a) / (2 * jerk)  # the velocity left if the acceleration went to 0 now
    if s <= 0 and (v < 0 or (v == 0 and a < 0)):  # moving away and braking: mirror it
        return -stop_distance(-v, -a, decel, jerk, dt)
    if s < 0:
        # Braking so hard that the velocity reaches zero before the acceleration can: how
        # far it still goes forward when braking as hard as allowed (it then turns back).
        hold = min(a, -decel)
        t1 = max(0.0, (a - hold) / jerk)
        t = (a + math.sqrt(a * a + 2 * jerk * v)) / jerk  # v + a t - jerk t^2 / 2 = 0
        if t <= t1:
            return v * t + a * t * t / 2 - jerk * t**3 / 6
        v1 = v + a * t1 - jerk * t1 * t1 / 2
        return v * t1 + a * t1 * t1 / 2 - jerk * t1**3 / 6 + v1 * v1 / (-2 * hold)
    peak = -min(decel, math.sqrt(max(0.0, v * jerk + a * a / 2)))
    if peak == 0.0:
        return 0.0
    sign = 1.0 if peak > a else -1.0
    t1 = abs(peak - a) / jerk
    v1 = v + a * t1 + sign * jerk * t1 * t1 / 2
    d1 = v * t1 + a * t1 * t1 / 2 + sign * jerk * t1**3 / 6
    if dt > 0:
        tau = math.fmod(t1, dt)
        v1 += jerk * tau * (dt - tau) / 2
    t2 = max(0.0, (v1 - peak * peak / (2 * jerk)) / -peak)
    d2 = v1 * t2 + peak * t2 * t2 / 2
    v2 = v1 + peak * t2
    t3 = -peak / jerk
    d3 = v2 * t3 + peak * t3 * t3 / 2 + jerk * t3**3 / 6
    return d1 + d2 + d3


def _advance(p: float, v: float, a: float, a_next: float, dt: float) -> tuple[float, float]:
    """Position and velocity after ``dt`` with the acceleration ramping linearly a -> a_next."""
    return p + v * dt + dt * dt * (2 * a + a_next) / 6, v + (a + a_next) * dt / 2


def run_step(
    position: float,
    velocity: float,
    accel: float,
    goal: float,
    limits: Limits,
    dt: float,
    settle: float,
) -> Motion:
    """One control cycle of a run to ``goal``; settles on it within ``settle`` when slow."""
    error = goal - position
    direction = 1.0 if error >= 0 else -1.0
    e, v, a = abs(error), velocity * direction, accel * direction
    vmax, amax, jerk = limits.speed, limits.accel, limits.jerk
    if vmax <= 0 or amax <= 0:  # nothing to run with: the v1 drive does not move
        return stop_step(position, velocity, accel, max(amax, 10.0), limits.jerk, dt)
    if jerk <= 0:
        # v'^2 <= 2 a (e - (v + v') dt / 2), solved for the fastest v' of this step.
        room = max(0.0, e - v * dt / 2)
        v_stop = (-amax * dt + math.sqrt((amax * dt) ** 2 + 8 * amax * room)) / 2
        v_new = max(min(vmax, v_stop, v + amax * dt), v - amax * dt)
        a_new = (v_new - v) / dt
        if e < settle and abs(v_new) <= amax * dt:
            return Motion(goal, 0.0, 0.0, settled=True)
        return Motion(
            position + direction * (v + v_new) * dt / 2, direction * v_new, direction * a_new
        )
    # A discrete controller changes the acceleration once a cycle, so a ramp shorter than a
    # cycle cannot be followed: plan with at most amax/dt. Within a cycle the acceleration
    # moves linearly, which can gain up to jerk*dt^2/8 of speed over the plan: keep that margin.
    jerk = min(jerk, amax / dt)
    vcap = max(vmax - jerk * dt * dt / 8, vmax / 2)
    a_lo, a_hi = max(-amax, a - jerk * dt), min(amax, a + jerk * dt)
    a_lo = min(a_lo, a_hi)  # an acceleration above a lowered limit comes down at the jerk rate
    a_new = min(a_hi, max(a_lo, _speed_capped_accel(v, a, vcap, jerk, dt)))

    def fits(a_next: float) -> bool:
        dp, v_next = _advance(0.0, v, a, a_next, dt)
        return stop_distance(v_next, a_next, amax, jerk, dt) <= e - dp

    if not fits(a_new):
        if not fits(a_lo):
            a_new = a_lo
        else:
            lo, hi = a_lo, a_new
            for _ in range(30):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if fits(mid) else (lo, mid)
                if hi - lo < 1e-9 * amax:
                    break
            a_new = lo
    dp, v_new = _advance(0.0, v, a, a_new, dt)
    slow = abs(v_new) <= jerk * dt * dt and abs(a) <= jerk * dt and abs(a_new) <= jerk * dt
    if abs(e - dp) < settle and slow:
        return Motion(goal, 0.0, 0.0, settled=True)
    return Motion(position + direction * dp, direction * v_new, direction * a_new)


def _speed_capped_accel(v: float, a: float, vmax: float, jerk: float, dt: float) -> float:
    """The acceleration at the end of this step after which ramping it to zero at ``jerk``
    lands exactly on ``vmax``: v + (a + a') dt / 2 + a'|a'| / (2 jerk) = vmax."""
    c = v + a * dt / 2 - vmax
    if c <= 0:
        return jerk * (-dt / 2 + math.sqrt(dt * dt / 4 - 2 * c / jerk))
    return (jerk * dt - math.sqrt(jerk * jerk * dt * dt + 8 * jerk * c)) / 2


def stop_step(
    position: float, velocity: float, accel: float, decel: float, jerk: float, dt: float
) -> Motion:
    """One control cycle of ramping down to standstill at ``decel`` (and ``jerk``, if > 0)."""
    if velocity == 0.0 and accel == 0.0:
        return Motion(position, 0.0, 0.0)
    direction = 1.0 if velocity > 0 or (velocity == 0 and accel < 0) else -1.0
    v, a = velocity * direction, accel * direction
    if jerk <= 0 or decel <= 0:
        dv = min(v, max(decel, 0.0) * dt) if v > 0 else 0.0
        v_new = v - dv
        a_new = -dv / dt if dt > 0 else 0.0
        return Motion(
            position + direction * (v + v_new) * dt / 2, direction * v_new, direction * a_new
        )
    # Aim the acceleration at -decel, but start ramping it back to zero when the velocity left
    # is what that ramp takes off (v = a^2 / 2 jerk), so the stop ends with a = 0.
    if v + a * abs(a) / (2 * jerk) <= 0 or v <= 0:
        a_new = min(0.0, a + jerk * dt)
    else:
        a_new = max(-decel, a - jerk * dt, min(a + jerk * dt, -math.sqrt(2 * jerk * v)))
    dp, v_new = _advance(0.0, v, a, a_new, dt)
    if v_new <= 0.0:
        # Standstill inside this step: stop exactly where the velocity reaches zero.
        t = v / max(-(a + a_new) / 2, 1e-12) if a + a_new < 0 else dt
        t = min(dt, t)
        return Motion(position + direction * v * t / 2, 0.0, 0.0)
    return Motion(position + direction * dp, direction * v_new, direction * a_new)


# --- rotary axes --------------------------------------------------------------------------------

SHORTEST, CLOCKWISE, ANTICLOCKWISE = 0, 1, 2


def wrap(angle: float, turn: float = 360.0) -> float:
    """``angle`` in [0, turn)."""
    w = math.fmod(angle, turn)
    if w < 0:
        w += turn
    return 0.0 if w >= turn else w


def rotary_goal(angle: float, target: float, direction: int, turn: float = 360.0) -> float:
    """The unwrapped goal for a run from the unwrapped ``angle`` to the wrapped ``target``.

    0: the shorter way (clockwise = positive on a tie of half a turn), 1: clockwise, possibly
    more than half a turn, 2: anticlockwise. The target is reached on the first pass.
    """
    forward = wrap(target - angle, turn)
    if forward < 1e-6 or forward > turn - 1e-6:  # on the target but for rounding: no turn
        forward = 0.0
    if direction == CLOCKWISE:
        delta = forward
    elif direction == ANTICLOCKWISE:
        delta = forward - turn if forward > 0 else 0.0
    else:
        delta = forward if forward <= turn / 2 else forward - turn
    return angle + delta


def angular_distance(a: float, b: float, turn: float = 360.0) -> float:
    """Shortest distance between two angles, in [0, turn / 2]."""
    d = wrap(a - b, turn)
    return min(d, turn - d)
