"""Raw queries read the inbox's uncompacted rows from memory (``TelemetryStore._view``), not
by scanning the inbox table: the same answers as the scan, at every moment of a flush, and no
acknowledged reading ever missing from a query (a reader thread racing the compactions)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.model import Quality, Reading
from edge.store import StoreSettings, TelemetryQuery, TelemetryStore, connect, run_query

NOW = time.time()
POINTS = ("a", "b", "c")

# one step: a batch to write (point, ts offset, value, bad?), a flush, or a flush that fails
# after its first chunk (the rest goes back to pending)
batch = st.lists(
    st.tuples(
        st.sampled_from(POINTS),
        st.integers(0, 40),  # few timestamps: duplicates and late readings are common
        st.one_of(st.floats(-1e6, 1e6), st.integers(-5, 5), st.text(max_size=3)),
        st.booleans(),
    ),
    min_size=1,
    max_size=30,
)
step = st.one_of(
    st.tuples(st.just("write"), batch), st.just(("flush", None)), st.just(("fail", None))
)


def _q() -> TelemetryQuery:
    return TelemetryQuery("dev", NOW - 100, NOW + 100, resolution="raw", limit=10_000)


def _reading(point: str, dt: int, value: Any, bad: bool) -> Reading:
    quality = Quality.BAD if bad else Quality.GOOD
    return Reading("dev", point, None if bad else value, 0.0, NOW + dt / 4, quality)


async def _failing_flush(store: TelemetryStore) -> None:
    """A flush whose second chunk fails (rolled back): its rows go back to pending."""
    original = store._compact_chunk
    calls = 0

    def fail_second(chunk: Any, top: int) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError("disk full (test)")
        return original(chunk, top)

    store._compact_chunk = fail_second  # type: ignore[method-assign]
    try:
        await store.rollup()
    except OSError:
        pass
    finally:
        store._compact_chunk = original  # type: ignore[method-assign]


def _same(a: Any, b: Any) -> None:
    assert a.resolution == b.resolution
    for x, y in zip(a.series, b.series, strict=True):
        assert (x.point, x.ts, x.quality) == (y.point, y.ts, y.quality)
        assert [str(v) for v in x.values] == [str(v) for v in y.values]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(step, min_size=1, max_size=12))
def test_the_view_answers_as_the_inbox_scan(tmp_path_factory: Any, steps: list[Any]) -> None:
    path: Path = tmp_path_factory.mktemp("view") / "t.sqlite3"

    async def run() -> None:
        settings_ = StoreSettings(flush_chunk=2)  # a chunk of a few series: flushes interleave
        async with TelemetryStore(path, settings_, maintain=False) as store:
            scan = connect(path, readonly=True)  # the scan's answer, from the same file
            try:
                for kind, data in steps:
                    if kind == "write":
                        await store.write([_reading(p, dt, v, bad) for p, dt, v, bad in data])
                    elif kind == "flush":
                        await store.rollup()
                    else:
                        await _failing_flush(store)
                    _same(await store.query(_q()), run_query(scan, _q()))
                    for p in POINTS:
                        got = await store.history("dev", p, NOW - 100, NOW + 100, 10_000)
                        one = TelemetryQuery(
                            "dev", NOW - 100, NOW + 100, points=(p,), resolution="raw", limit=10_000
                        )
                        want = run_query(scan, one)
                        assert [r.ts for r in got] == want.series[0].ts
            finally:
                scan.close()

    asyncio.run(run())


async def test_no_acknowledged_reading_is_ever_missing(tmp_path: Path) -> None:
    """A writer, compactions one after another (a chunk of 3 series each), and queries on the
    reader thread at once: every reading acknowledged before a query began is in its answer."""
    n_points, rounds = 12, 60
    acked: dict[str, list[float]] = {f"p{i}": [] for i in range(n_points)}
    missing: list[str] = []
    stop = asyncio.Event()

    async with TelemetryStore(
        tmp_path / "t.sqlite3", StoreSettings(flush_chunk=3), maintain=False
    ) as store:

        async def writer() -> None:
            for r in range(rounds):
                ts = NOW + r / 100
                await store.write([Reading("dev", p, float(r), 0.0, ts) for p in acked])
                for p in acked:
                    acked[p].append(ts)
                await asyncio.sleep(0)
            stop.set()

        async def compactor() -> None:
            while not stop.is_set():
                await store.rollup()
                await asyncio.sleep(0)

        async def reader() -> None:
            while not stop.is_set():
                seen = {p: len(ts) for p, ts in acked.items()}
                res = await store.query(_q())
                for s in res.series:
                    want = acked[s.point][: seen[s.point]]
                    if not set(want) <= set(s.ts):
                        missing.append(f"{s.point}: {sorted(set(want) - set(s.ts))[:3]}")
                p = f"p{len(missing) % n_points}"
                got = await store.history("dev", p, -math.inf, math.inf, 100_000)
                if not set(acked[p][: seen[p]]) <= {r.ts for r in got}:
                    missing.append(f"history {p}")

        await asyncio.gather(writer(), compactor(), reader())
        assert missing == []
        res = await store.query(_q())
        assert all(len(s.ts) == rounds for s in res.series)


async def test_a_compaction_just_before_the_view_loses_nothing(tmp_path: Path) -> None:
    """The worst moment: a compaction commits as a query is about to take the view. The view
    is taken before the query's snapshot, so the rows it no longer has are in ``readings``."""
    async with TelemetryStore(tmp_path / "t.sqlite3", maintain=False) as store:
        real = store._view

        def compact_then_view(sids: Any, start: float, end: float) -> Any:
            def compact() -> None:  # on the writer thread, as a flush runs it
                chunks, top = store._take()
                for chunk in chunks:
                    store._compact_chunk(chunk, top)

            store._writer.submit(compact).result()
            return real(sids, start, end)

        store._view = compact_then_view  # type: ignore[method-assign]
        for r in range(3):
            await store.write([Reading("dev", f"p{i}", r, 0.0, NOW + r) for i in range(10)])
            res = await store.query(_q())
            assert [len(s.ts) for s in res.series] == [r + 1] * 10
            got = await store.history("dev", "p3", NOW - 100, NOW + 100)
            assert [x.value for x in got] == list(range(r + 1))
