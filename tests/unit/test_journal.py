"""The journal's event, its query and the journalled() wrapper, without a database."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.journal import (
    MAX_TEXT,
    JournalEvent,
    NullJournal,
    Origin,
    Result,
    SourceKind,
    classify,
    journalled,
)
from drivers.base import DeviceUnavailable
from drivers.model import CommandError
from edge.journal import _TRIGGERS, JournalQuery, QueryError, _split

T0 = 1_700_000_000.0


class ListSink:
    def __init__(self) -> None:
        self.events: list[JournalEvent] = []

    async def append(self, event: JournalEvent) -> int:
        self.events.append(event)
        return len(self.events)


def test_event_fields_are_checked_with_every_reason() -> None:
    with pytest.raises(ValueError, match="journal event: ") as info:
        JournalEvent(
            SourceKind.USER,
            "x" * (MAX_TEXT + 1),
            "",
            Result.OK,
            math.nan,
            duration_s=-1.0,
            targets=("",),
        )
    text = str(info.value)
    for reason in (
        "command is empty",
        "source is longer",
        "requested is not a finite time",
        "duration_s must be finite and >= 0",
        "a target id is empty",
    ):
        assert reason in text


def test_event_kinds_from_text_and_long_reasons_cut() -> None:
    e = JournalEvent("osc", "", "go", "refused", T0, reason="r" * 10_000)  # type: ignore[arg-type]
    assert e.kind is SourceKind.OSC and e.result is Result.REFUSED
    assert len(e.reason) == 4 * MAX_TEXT and e.reason.endswith("…")
    with pytest.raises(ValueError, match="not a valid SourceKind"):
        JournalEvent("console", "", "go", Result.OK, T0)  # type: ignore[arg-type]


def test_classify_refused_failed_cancelled() -> None:
    assert classify(CommandError("too high")) == (Result.REFUSED, "too high")
    assert classify(DeviceUnavailable("offline")) == (Result.FAILED, "offline")
    assert classify(RuntimeError("boom")) == (Result.FAILED, "RuntimeError: boom")
    assert classify(asyncio.CancelledError())[0] is Result.FAILED


async def test_journalled_appends_before_returning_or_raising() -> None:
    sink = ListSink()

    async def call() -> str:
        assert sink.events == []  # nothing is journalled before the command ran
        return "done"

    assert await journalled(sink, Origin(SourceKind.TIMECODE, "01:00:00:00"), "go", call) == "done"
    assert [(e.kind, e.source, e.result) for e in sink.events] == [
        (SourceKind.TIMECODE, "01:00:00:00", Result.OK)
    ]

    async def refused() -> None:
        raise CommandError("debounce")

    with pytest.raises(CommandError):
        await journalled(sink, Origin(SourceKind.USER), "go", refused, cue_list="l", cue="1")
    assert sink.events[-1].result is Result.REFUSED and sink.events[-1].executed is None


async def test_null_journal_keeps_nothing() -> None:
    assert await NullJournal().append(JournalEvent(SourceKind.SYSTEM, "", "x", Result.OK, 0)) == 0


def test_queries_refuse_hostile_parameters_with_reasons() -> None:
    cases = {
        "since must be a finite number": {"since": math.inf},
        "until must be a finite number": {"until": math.nan},
        "since is after until": {"since": T0 + 1, "until": T0},
        "device must be 1 to 1000 characters": {"device": ""},
        "source must be one of: user, script": {"source": "hacker"},
        "limit must be a whole number >= 1": {"limit": 0},
    }
    for reason, kwargs in cases.items():
        with pytest.raises(QueryError, match=reason):
            JournalQuery(**kwargs)  # type: ignore[arg-type]
    for device in ("a\x00b", "x\n", "y" * 1001, "\x7f"):
        with pytest.raises(QueryError, match="device"):
            JournalQuery(device=device)
    with pytest.raises(QueryError, match="limit"):
        JournalQuery(limit=True)


@given(
    since=st.one_of(st.none(), st.floats()),
    until=st.one_of(st.none(), st.floats()),
    device=st.one_of(st.none(), st.text(max_size=50)),
    source=st.one_of(
        st.none(), st.text(max_size=10), st.sampled_from([k.value for k in SourceKind])
    ),
    limit=st.one_of(st.none(), st.integers(-5, 20_000)),
)
def test_any_query_is_either_refused_or_parameterised(
    since: float | None,
    until: float | None,
    device: str | None,
    source: str | None,
    limit: int | None,
) -> None:
    try:
        q = JournalQuery(since, until, device, source, limit)  # type: ignore[arg-type]
    except QueryError as exc:
        assert str(exc)
        return
    for newest in (True, False):
        sql, params = q.sql(newest)
        # Values only ever travel as parameters, never inside the statement.
        assert sql.count("?") == len(params)
        # The statement depends on which filters are set, never on their values.
        shape = JournalQuery(
            None if since is None else 0.0,
            None if until is None else 0.0,
            None if device is None else "d",
            q.source,
            limit,
        )
        assert sql == shape.sql(newest)[0]


def test_schema_script_splits_into_whole_trigger_statements() -> None:
    statements = list(_split(_TRIGGERS))
    assert len(statements) == 4
    assert all(s.startswith("CREATE TRIGGER") and s.endswith("END;") for s in statements)
