"""Judging expectations over samples: the semantics of docs/hil.md, as a pure state machine."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.hil.judge import Judge, Verdict, holds, observations
from edge.hil.scenario import Condition, Expectation


def cond(op: str, value: Any, **kw: Any) -> Condition:
    return Condition.model_validate({"device": "d", "point": "p", "op": op, "value": value, **kw})


def exp(**kw: Any) -> Expectation:
    base = {"device": "d", "point": "p", "op": ">=", "value": 10}
    return Expectation.model_validate({**base, **kw})


def judge(e: Expectation, samples: list[tuple[float, Any]], end: float = 100.0) -> Judge:
    j = Judge(e)
    for t, v in samples:
        j.feed(t, v)
    j.finish(end)
    return j


@pytest.mark.parametrize(
    ("op", "value", "observed", "expected"),
    [
        ("==", 1, 1, True),
        ("==", 1, 1.0, True),
        ("==", 1, True, False),  # a status bit is not the number 1
        ("==", True, 1, False),
        ("==", True, True, True),
        ("!=", True, False, True),
        ("==", "online", "online", True),
        ("!=", "online", "offline", True),
        ("==", 1, "1", False),
        ("!=", 1, "1", True),
        ("<", 5, 4.9, True),
        ("<", 5, 5, False),
        ("<=", 5, 5, True),
        (">", 5, 5, False),
        (">=", 5, 5, True),
        (">", 5, "6", False),
        (">", 5, True, False),
        (">", 5, float("nan"), False),
        ("between", [1, 2], 1, True),
        ("between", [1, 2], 2, True),
        ("between", [1, 2], 2.0001, False),
        ("between", [1, 2], None, False),
        ("==", 0, None, False),
        ("!=", 0, None, False),  # no value satisfies nothing, not even !=
    ],
)
def test_holds(op: str, value: Any, observed: Any, expected: bool) -> None:
    assert holds(cond(op, value), observed) is expected


def test_tolerance_widens_equality() -> None:
    assert holds(cond("==", 100, tol=0.5), 100.5)
    assert not holds(cond("==", 100, tol=0.5), 100.6)
    assert holds(cond("!=", 100, tol=0.5), 100.6)


def test_within_passes_on_the_first_hold_in_the_window() -> None:
    j = judge(exp(within_s=1.0), [(0.0, 1), (0.5, 5), (0.9, 12), (1.5, 1)])
    assert j.verdict is Verdict.PASSED
    assert j.decided_at == 0.9


def test_within_fails_when_the_hold_comes_late_and_says_when() -> None:
    j = judge(exp(within_s=1.0), [(0.0, 1), (0.5, 5), (1.2, 8), (1.6, 12)])
    assert j.verdict is Verdict.FAILED
    assert j.decided_at == 1.2
    text = j.report()
    assert "never held" in text
    assert "1 at 0.000 s, 5 at 0.500 s, 8 at 1.200 s" in text
    assert "first held later, at 1.600 s (12)" in text


def test_a_hold_may_not_begin_after_the_window() -> None:
    # Window [0, 0.3]; samples inside it are false, the first true one comes after.
    j = judge(exp(within_s=0.3), [(0.1, 1), (0.5, 12)])
    assert j.verdict is Verdict.FAILED


def test_at_mode_judges_the_first_sample_at_or_after_the_anchor() -> None:
    assert judge(exp(at=1.0), [(0.5, 1), (1.05, 11), (1.2, 1)]).verdict is Verdict.PASSED
    assert judge(exp(at=1.0), [(0.5, 11), (1.05, 1), (1.2, 11)]).verdict is Verdict.FAILED


def test_for_needs_the_hold_to_last() -> None:
    samples = [(t / 10, 11) for t in range(0, 30)]
    assert judge(exp(for_s=2.0), samples).verdict is Verdict.PASSED
    broken = [*samples[:15], (1.5, 3), *samples[16:]]
    j = judge(exp(for_s=2.0), broken)
    assert j.verdict is Verdict.FAILED
    assert "held from 0.000 s but was 3 at 1.500 s" in j.report()


def test_within_with_for_may_retry_inside_the_window() -> None:
    samples = [(0.0, 11), (0.1, 1), (0.2, 11), (0.3, 11), (0.4, 11), (0.5, 11)]
    j = judge(exp(within_s=0.2, for_s=0.3), samples)
    assert j.verdict is Verdict.PASSED
    assert j.message == "held from 0.200 s"


def test_a_hold_cut_short_by_the_end_of_the_run_fails() -> None:
    j = judge(exp(for_s=5.0), [(0.0, 11), (1.0, 11)], end=1.5)
    assert j.verdict is Verdict.FAILED
    assert "until the run ended at 1.500 s, short of 5 s" in j.report()


def test_an_expectation_after_a_step_waits_for_it() -> None:
    j = Judge(exp(after="go", within_s=1.0))
    j.feed(0.5, 11)  # before the step: ignored
    assert j.verdict.value == "pending"
    j.start(2.0)
    j.feed(2.5, 1)
    j.feed(2.9, 12)
    assert j.verdict is Verdict.PASSED
    assert j.anchor == 2.0
    never = judge(exp(after="go", within_s=1.0), [(0.0, 11)], end=5)
    assert never.verdict is Verdict.FAILED
    assert "step 'go' never ran" in never.report()


def test_no_sample_at_all_fails() -> None:
    j = judge(exp(at=3.0), [(1.0, 11)], end=3.0)
    assert j.verdict is Verdict.FAILED
    assert "no sample after the anchor" in j.report()


def test_observations_quote_both_ends_of_a_long_window() -> None:
    text = observations([(i / 10, i) for i in range(20)])
    assert text.startswith("0 at 0.000 s, 1 at 0.100 s")
    assert "(12 more)" in text
    assert text.endswith("19 at 1.900 s")
    assert observations([(0.0, None)]) == "no value at 0.000 s"


SAMPLES = st.lists(
    st.one_of(st.none(), st.integers(0, 20), st.booleans(), st.floats(allow_nan=True)),
    min_size=0,
    max_size=40,
)
TIMING = st.fixed_dictionaries(
    {},
    optional={
        "at": st.sampled_from([0.0, 0.35, 1.0]),
        "within_s": st.sampled_from([0.05, 0.3, 1.0, 2.5]),
        "for_s": st.sampled_from([0.0, 0.2, 0.5, 1.5]),
    },
)


def offline(e: Expectation, samples: list[tuple[float, Any]], end: float) -> bool:
    """The semantics of docs/hil.md written plainly, over the whole record at once."""
    anchor = e.at or 0.0
    after = [(t, v) for t, v in samples if t >= anchor]
    if not after:
        return False
    deadline = anchor + (e.within_s or 0.0)
    starts = [i for i, (t, _) in enumerate(after) if t <= deadline or i == 0]
    if e.within_s is None:
        starts = [0]
    for i in starts:
        t0 = after[i][0]
        if not holds(e, after[i][1]):
            continue
        for t, v in after[i:]:
            if not holds(e, v):
                break
            if t - t0 >= e.for_s:
                return True
    return False


@given(SAMPLES, TIMING)
def test_live_verdict_equals_the_offline_semantics_and_never_changes(
    values: list[Any], timing: dict[str, float]
) -> None:
    e = exp(**timing)
    samples = [(i * 0.1, v) for i, v in enumerate(values)]
    end = len(values) * 0.1
    j = Judge(e)
    first: Verdict | None = None
    for t, v in samples:
        j.feed(t, v)
        if j.verdict is not Verdict.PENDING and first is None:
            first = j.verdict
        if first is not None:
            assert j.verdict is first  # a verdict once given stays
    j.finish(end)
    assert (j.verdict is Verdict.PASSED) == offline(e, samples, end)
