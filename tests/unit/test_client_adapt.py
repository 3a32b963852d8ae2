"""The client's adaptation methods and ``flytower acoustics adapt`` against hostile answers.

The service's side is a small server on a loopback port (``websockets``' server: its
``process_request`` answers the REST routes, its connections speak the ``/ws`` protocol of
edge/ws_topics.py), scripted per test with what a broken proxy, another version of the
service or a hostile one might send: bodies that are not JSON, states of the wrong shape,
escape codes for the terminal, a plot "name" that is a path. Each must end in a typed error
(``MalformedAnswer``, ``AcousticsRefused``) or, for the command, a one-line reason and exit 1:
never a traceback. The real service is in tests/integration/test_acoustics_adapt_cli.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Response, WebSocket, WebSocketDisconnect
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request as StarletteRequest

from edge.acoustics_cli import adaptation_report
from edge.client import (
    AcousticsRefused,
    AdaptationResult,
    AdaptationState,
    FlytowerClient,
    MalformedAnswer,
)
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
RUN = "20261202T101500-abc"


def state(**over: Any) -> dict[str, Any]:
    """An adaptation state as ``SoundFieldControl.adapt`` reports it."""
    base: dict[str, Any] = {
        "id": RUN,
        "zone": "stalls",
        "mode": "drama",
        "state": "measuring",
        "phase": "measuring the paths (the field muted)",
        "iteration": 0,
        "iterations": 3,
        "worst_jnd": [],
        "error": "",
        "latency_s": 0.0,
    }
    return {**base, **over}


def result(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "converged": True,
        "reason": "every held target within one JND",
        "best_iteration": 0,
        "worst_jnd": 0.67,
        "unreachable": [
            {
                "metric": "t30_s",
                "band_hz": 125.0,
                "target": 1.2,
                "best": 0.9,
                "reason": "shorter than the natural room's",
            }
        ],
        "held": {"t30_s": [250, 1000, 2000], "d50": [125, 250]},
        "loop_gain_db": -6.0,
        "plot": "adaptation.png",
    }
    return {**base, **over}


def done(**over: Any) -> dict[str, Any]:
    return state(state="done", phase="done", worst_jnd=[0.67], result=result(**over))


# --- parsing ----------------------------------------------------------------------------------


def test_a_state_and_its_result_parse() -> None:
    s = AdaptationState.parse(done())
    assert (s.id, s.zone, s.mode, s.state, s.finished) == (RUN, "stalls", "drama", "done", True)
    assert s.worst_jnd == (0.67,) and s.raw["latency_s"] == 0.0
    r = s.result
    assert r is not None and r.converged and r.best_iteration == 0 and r.plot == "adaptation.png"
    assert r.held == {"t30_s": (250.0, 1000.0, 2000.0), "d50": (125.0, 250.0)}
    (u,) = r.unreachable
    assert (u.metric, u.band_hz, u.target, u.best) == ("t30_s", 125.0, 1.2, 0.9)
    text = adaptation_report(s)
    assert "converged" in text and "t30_s at 125 Hz (target 1.2, best 0.9): shorter" in text
    assert f"var/acoustics/{RUN}/adaptation.png" in text
    assert not AdaptationState.parse(state()).finished


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ([1, 2], "expected an object"),
        ("done", "expected an object"),
        (None, "expected an object"),
        (state(id=None), "adaptation id"),
        (state(id=""), "adaptation id"),
        (state(id="../../etc"), "adaptation id"),
        (state(id="x" * 65), "adaptation id"),
        (state(state="exploded"), "adaptation state"),
        (state(state=None), "adaptation state"),
        (state(state="done"), "done without a result"),
        (state(zone=7), "adaptation zone"),
        (state(iterations="3"), "iterations"),
        (state(iterations=True), "iterations"),
        (state(iterations=-1), "iterations"),
        (state(iterations=10**9), "iterations"),
        (state(worst_jnd="0.5"), "worst_jnd"),
        (state(worst_jnd=["0.5"]), "worst_jnd"),
        (state(worst_jnd=[True]), "worst_jnd"),
        (state(worst_jnd=[0.1] * 5000), "more than"),
        (state(worst_jnd={"0": 1}), "worst_jnd"),
        (done(converged="yes"), "converged"),
        (done(converged=None), "converged"),
        (done(held=[250]), "held"),
        (done(held={"t30_s": 250}), "held t30_s"),
        (done(unreachable={"metric": "t30_s"}), "unreachable"),
        (done(unreachable=[{"metric": "t30_s", "band_hz": "125"}]), "band_hz"),
        (done(unreachable=[{"metric": "t30_s", "band_hz": -125}]), "band_hz"),
        (done(unreachable=[{"band_hz": 125}]), "unreachable metric"),
        (done(unreachable=["t30_s"]), "unreachable target"),
        (done(plot="../../../etc/passwd"), "not a file name"),
        (done(plot="/adaptation.png"), "not a file name"),
        (done(plot=".."), "not a file name"),
        (done(plot=["a.png"]), "plot"),
        (done(best_iteration=-1), "best_iteration"),
        (done(loop_gain_db="-6"), "loop_gain_db"),
        (state(state="done", result=[]), "adaptation result"),
    ],
)
def test_an_answer_of_the_wrong_shape_is_malformed(answer: Any, why: str) -> None:
    with pytest.raises(MalformedAnswer, match=why):
        AdaptationState.parse(answer)


def test_escape_codes_and_endless_text_are_made_harmless() -> None:
    s = AdaptationState.parse(
        done(reason="\x1b[2J\x1b]0;owned\x07ok\r\n" + "x" * 10_000, plot=None, plot_error="\x00")
    )
    r = s.result
    assert r is not None and r.plot is None
    assert "\x1b" not in r.reason and "\\x1b[2J" in r.reason and "\r" not in r.reason
    assert len(r.reason) < 2100 and r.reason.endswith("…")
    assert r.plot_error == "\\x00"
    assert all(c.isprintable() or c == "\n" for c in adaptation_report(s))


def test_non_finite_numbers_are_none_not_a_crash() -> None:
    """Python's JSON reader takes NaN and Infinity: they come out as None."""
    s = AdaptationState.parse(
        json.loads(
            '{"id": "r1", "zone": "z", "mode": "m", "state": "done", "iterations": 2, '
            '"worst_jnd": [NaN, Infinity, 0.5], "result": {"converged": false, '
            '"worst_jnd": -Infinity, "loop_gain_db": NaN, "unreachable": [], "held": {}}}'
        )
    )
    assert s.worst_jnd == (None, None, 0.5)
    assert s.result is not None and s.result.worst_jnd is None and s.result.loop_gain_db is None
    text = adaptation_report(s)
    assert "NOT converged" in text and "held: none" in text


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=30,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        k: JSON | st.just(v)
        for k, v in done().items()
        if k in ("id", "zone", "mode", "state", "iterations", "worst_jnd", "phase", "error")
    }
    | {"result": JSON | st.builds(result)},
)


@given(st.one_of(JSON, FIELDS))
def test_any_json_parses_or_is_malformed(answer: Any) -> None:
    try:
        s = AdaptationState.parse(answer)
    except MalformedAnswer:
        return
    if s.result is not None:
        assert isinstance(s.result, AdaptationResult)
        adaptation_report(s)  # whatever parsed can be printed


# --- the methods against a scripted server ------------------------------------------------------

Handler = Callable[[str, str], tuple[int, str, str]]


@contextlib.asynccontextmanager
async def scripted(
    rest: Handler, feed: list[Any] | None = None
) -> AsyncIterator[tuple[str, list[str]]]:
    """A server on a loopback port (FastAPI under uvicorn, in this loop):
    ``rest(method, path) -> (status, content type, body)`` answers the REST routes byte for
    byte; ``/ws`` subscribers get ``feed``'s snapshots of the topic ``acoustics``, 0.05 s
    apart. Yields the URL and what was requested (request line, then the body of a POST)."""
    seen: list[str] = []
    app = FastAPI()

    async def answer(request: StarletteRequest) -> Response:
        seen.append(f"{request.method} {request.scope['raw_path'].decode()}")  # as sent
        if request.method == "POST":
            seen.append((await request.body()).decode())
        status, ctype, body = rest(request.method, request.url.path)
        return Response(body, status_code=status, media_type=ctype)

    app.add_api_route("/api/v1/acoustics", answer, methods=["GET"])
    app.add_api_route("/api/v1/acoustics/zones/{zone:path}", answer, methods=["POST"])

    @app.websocket("/ws")
    async def ws(sock: WebSocket) -> None:
        await sock.accept()
        await sock.receive_text()  # the subscription
        await sock.send_text(json.dumps({"type": "subscribed", "topics": ["acoustics"]}))
        for seq, snap in enumerate(feed or []):
            await sock.send_text(json.dumps({"type": "acoustics", "seq": seq, "snapshot": snap}))
            await asyncio.sleep(0.05)
        with contextlib.suppress(WebSocketDisconnect):
            await sock.receive_text()

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve(), name="scripted-service")
    try:
        while not server.started:
            assert not task.done(), "the scripted server did not start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def answers(post: tuple[int, str, str], get: Any = None) -> Handler:
    def rest(method: str, path: str) -> tuple[int, str, str]:
        if method == "POST":
            return post
        return 200, "application/json", json.dumps(get if get is not None else {})

    return rest


J = "application/json"


@pytest.mark.parametrize(
    ("post", "error", "match"),
    [
        ((202, "text/html", "<html>proxy</html>"), MalformedAnswer, "not JSON"),
        ((202, J, '{"id": "r1", "state": "meas'), MalformedAnswer, "not JSON"),
        ((202, J, "[1, 2]"), MalformedAnswer, "expected an object"),
        ((202, J, json.dumps(state(state="exploded"))), MalformedAnswer, "adaptation state"),
        ((404, J, '{"detail": "no sound-field zone \'gallery\'"}'), AcousticsRefused, "404: no"),
        ((409, J, '{"detail": "adaptation r0 is still running"}'), AcousticsRefused, "409"),
        (
            (422, J, json.dumps({"detail": [{"loc": ["body", "iterations"], "msg": "≤ 5"}]})),
            AcousticsRefused,
            "iterations: ≤ 5",
        ),
        ((500, "text/plain", "Internal Server Error"), AcousticsRefused, "500"),
        ((404, J, '"just a string"'), AcousticsRefused, "404"),
    ],
)
async def test_adapt_refusals_and_malformed_answers(
    post: tuple[int, str, str], error: type[Exception], match: str
) -> None:
    async with scripted(answers(post)) as (url, seen), FlytowerClient(url, name="t") as ft:
        with pytest.raises(error, match=match):
            await ft.adapt("stalls", "drama", 2, sweeps=3, level_db=-20.5)
    assert seen[0] == "POST /api/v1/acoustics/zones/stalls/adapt"
    assert json.loads(seen[1]) == {"mode": "drama", "iterations": 2, "sweeps": 3, "level_db": -20.5}


async def test_adapt_quotes_the_zone_and_checks_its_arguments_before_sending() -> None:
    async with (
        scripted(answers((202, J, json.dumps(state())))) as (url, seen),
        FlytowerClient(url, name="t") as ft,
    ):
        s = await ft.adapt("../a b?", "drama")
        assert s.state == "measuring" and s.worst_jnd == ()
        for bad in ({"zone": ""}, {"mode": ""}, {"iterations": True}, {"iterations": 2.5}):
            args: dict[str, Any] = {"zone": "z", "mode": "m", **bad}
            with pytest.raises(ValueError, match=r"zone|mode|iterations"):
                await ft.adapt(**args)
        with pytest.raises(ValueError, match="level_db"):
            await ft.adapt("z", "m", level_db=float("nan"))
        with pytest.raises(ValueError, match="sweeps"):
            await ft.adapt("z", "m", sweeps="2")  # type: ignore[arg-type]
    assert seen[0] == "POST /api/v1/acoustics/zones/..%2Fa%20b%3F/adapt"
    assert len(seen) == 2  # nothing sent for the refused ones


async def test_wait_adaptation_follows_the_feed_to_the_end() -> None:
    snaps = [
        {"configured": True, "adaptation": state()},
        {"configured": True, "adaptation": state(state="adapting", phase="adapting 1 of 3")},
        {"configured": True, "adaptation": state(state="adapting", phase="adapting 1 of 3")},
        {"configured": True, "adaptation": state(state="adapting", worst_jnd=[1.4])},
        {"configured": True, "adaptation": done()},
    ]
    async with (
        scripted(answers((404, J, "{}"), get=snaps[0]), snaps) as (url, _seen),
        FlytowerClient(url, name="t") as ft,
    ):
        seen: list[AdaptationState] = []
        final = await ft.wait_adaptation(RUN, on_progress=seen.append, timeout_s=10)
    assert final.state == "done" and final.result is not None and final.result.converged
    assert [s.phase for s in seen][:2] == ["measuring the paths (the field muted)"] * 1 + [
        "adapting 1 of 3"
    ]
    assert len(seen) == 4  # the repeated snapshot is not a change


@pytest.mark.parametrize(
    ("snap", "error", "match"),
    [
        ({"configured": False}, AcousticsRefused, "its adaptation: none"),
        ({"configured": True, "adaptation": None}, AcousticsRefused, "none"),
        ({"configured": True, "adaptation": state(id="other")}, AcousticsRefused, "other"),
        ({"configured": True, "adaptation": {"id": RUN}}, MalformedAnswer, "state"),
        ([], MalformedAnswer, "answered a list"),
    ],
)
async def test_wait_adaptation_refuses_what_is_not_its_run(
    snap: Any, error: type[Exception], match: str
) -> None:
    async with (
        scripted(answers((404, J, "{}"), get=snap)) as (url, _seen),
        FlytowerClient(url, name="t") as ft,
    ):
        with pytest.raises(error, match=match):
            await ft.wait_adaptation(RUN, timeout_s=10)


async def test_wait_adaptation_refuses_a_feed_that_turns_hostile() -> None:
    snaps = [
        {"configured": True, "adaptation": state()},
        {"configured": True, "adaptation": state(state="done", result={"converged": 1})},
    ]
    async with (
        scripted(answers((404, J, "{}"), get=snaps[0]), snaps) as (url, _seen),
        FlytowerClient(url, name="t") as ft,
    ):
        with pytest.raises(MalformedAnswer, match="converged"):
            await ft.wait_adaptation(RUN, timeout_s=10)


# --- the command against the scripted server ----------------------------------------------------


async def run_cli(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FLYTOWER_TOKEN"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.cli", "acoustics", "adapt", *args,
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(180)
async def test_the_command_exits_2_when_not_converged_and_1_when_failed_or_malformed() -> None:
    not_converged = done(
        converged=False,
        reason="2 held targets more than one JND off after 3 iterations",
        worst_jnd=1.8,
        best_iteration=1,
    )
    not_converged["worst_jnd"] = [2.5, 1.8, 1.9]
    failed = state(state="failed", phase="failed", error="the measurement of the paths failed")
    cases = [
        (not_converged, 2, "NOT converged", "unreachable: t30_s at 125 Hz: shorter than"),
        (failed, 1, "", "error: adaptation 20261202T101500-abc failed: the measurement of"),
        ({**failed, "state": "on fire"}, 1, "", "answered something unexpected"),
    ]
    outs = []
    for final, code, out_has, err_has in cases:
        snaps = [
            {"configured": True, "adaptation": state()},
            {"configured": True, "adaptation": final},
        ]
        rest = answers((202, J, json.dumps(state())), get=snaps[0])
        async with scripted(rest, snaps) as (url, _seen):
            rc, out, err = await run_cli("stalls", "drama", "--url", url)
        assert rc == code, (out, err)
        assert out_has in out and err_has in err, (out, err)
        assert "Traceback" not in err
        outs.append(out)
    # the table: a row per iteration, which one was best, what is not reachable and why
    assert "        1      2.50  no\n" in outs[0], outs[0]
    assert "        2      1.80  no (best)\n" in outs[0]
    assert "t30_s at 125 Hz (target 1.2, best 0.9): shorter than the natural room's" in outs[0]
