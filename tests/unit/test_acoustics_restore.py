"""What a zone learnt survives a restart (edge/acoustics.py ``SoundFieldControl.restore``,
docs/acoustics.md "After a restart"): the results folder is built in ``tmp_path`` by the
service's own writers (``analyse_measurement`` for measurements, ``adaptation_record`` /
``write_adaptation`` for adaptations), then a new ``SoundFieldControl`` takes it up. No stream
is needed: restoring happens below it."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.signal import butter, fftconvolve, sosfilt  # type: ignore[import-untyped]

from controller.journal import JournalEvent
from dsp.adapt import MeasuredPaths
from dsp.design import design, room_from
from dsp.measure import MeasurementPlan, Recording, plan_measurement
from dsp.presets import MODES
from edge.acoustics import (
    SoundFieldControl,
    adaptation_record,
    analyse_measurement,
    read_ir,
    restore_results,
    write_adaptation,
    zone_record,
)
from edge.acoustics_config import AcousticsConfig, ZoneSettings

FS = 24000
LAYOUT = {
    "speakers": [
        {"name": "L", "channel": 1, "azimuth_deg": 40, "elevation_deg": 5, "distance_m": 6},
        {"name": "R", "channel": 2, "azimuth_deg": -40, "elevation_deg": 5, "distance_m": 6},
    ]
}
ZONE: dict[str, Any] = {
    "name": "stalls",
    "inputs": [1, 2],
    "outputs": [3, 4],
    "layout": LAYOUT,
    "pickup": 1,
    "listener": 5,
    "source": 1,
}
OLD, MID, NEW = "20261201T100000Z-1", "20261201T110000Z-1", "20261201T120000Z-1"
T_OLD, T_MID, T_NEW = 1_700_000_000.0, 1_700_003_600.0, 1_700_007_200.0


def zone(**change: Any) -> ZoneSettings:
    return ZoneSettings(**{**ZONE, **change})


def config(**change: Any) -> AcousticsConfig:
    return AcousticsConfig(device="hall", zones=[zone(**change)])


def room_ir(t60: float, seed: int) -> np.ndarray:
    """A room-like IR: an impulse after a short delay, then decaying noise, 80 Hz .. 9 kHz."""
    rng = np.random.default_rng(seed)
    n = round(0.9 * FS)
    t = np.arange(n) / FS
    h = 0.3 * rng.standard_normal(n) * 10 ** (-3 * t / t60)
    h[0] = 1.0
    h = sosfilt(butter(4, [80, 9000], btype="bandpass", fs=FS, output="sos"), h)
    return np.concatenate([np.zeros(20 + 7 * seed), 0.1 * h / np.linalg.norm(h)])


def recording(plan: MeasurementPlan) -> Recording:
    """What the inputs hear in a room: every output through its own IR to every input."""
    y = 1e-6 * np.random.default_rng(0).standard_normal((plan.total_frames, len(plan.inputs)))
    s = plan.sweep.signal
    for k, o in enumerate(plan.outputs):
        played = np.zeros(plan.total_frames)
        for j in range(plan.sweeps):
            start = plan.sweep_start(k, j)
            played[start : start + s.size] = s
        for c, i in enumerate(plan.inputs):
            h = room_ir(0.5 + 0.05 * c, seed=3 * o + i)
            y[:, c] += fftconvolve(played, h)[: plan.total_frames]
    return Recording(plan.fs, plan.inputs, y.astype(np.float32))


def write_measurement(
    var: Path,
    run_id: str,
    started: float,
    outputs: list[int],
    inputs: list[int],
    *,
    zone_name: str | None,
    mute_inner: bool,
    settings: ZoneSettings | None = None,
) -> dict[str, Any]:
    """A measurement as the service stores it (``SoundFieldControl._measured``'s meta)."""
    plan = plan_measurement(
        FS, outputs, inputs, sweeps=1, sweep_s=0.8, ir_s=1.0, noise_s=0.3, level_db=-6.0,
        mute_inner=mute_inner,
    )  # fmt: skip
    meta: dict[str, Any] = {
        "id": run_id, "started": started, "by": "test", "outputs": outputs, "inputs": inputs,
        "sweeps": 1, "level_db": -6.0, "mute_inner": mute_inner, "zone": zone_name, "xruns": 0,
    }  # fmt: skip
    if zone_name is not None:
        meta["zone_config"] = zone_record(settings or zone())
    return analyse_measurement(plan, recording(plan), None, str(var / run_id), meta)


def write_adaptation_run(var: Path, run_id: str, started: float, mode: str = "drama") -> Any:
    """An adaptation as the service stores it: the muted measurement of the paths (source and
    outputs into pickup and listener), then ``adaptation.json``. Returns the params played."""
    z = zone()
    write_measurement(var, run_id, started, [1, 3, 4], [1, 5], zone_name=None, mute_inner=True)
    folder = var / run_id

    def ir(o: int, i: int) -> np.ndarray:
        return read_ir(folder / f"ir-out{o}-in{i}.wav")[1]

    paths = MeasuredPaths(
        FS, ir(1, 5), ir(1, 1), np.array([ir(3, 5), ir(4, 5)]), np.array([ir(3, 1), ir(4, 1)])
    )
    room = room_from({"t30_s": [0.9, 0.85, 0.8, 0.8, 0.75, 0.7], "c80_db": [2.0] * 6})
    params = design(MODES[mode], z.layout_obj(), room).params
    state = {
        "id": run_id, "zone": "stalls", "mode": mode, "state": "recalling", "phase": "x",
        "started": started, "measurement": run_id, "source": 1, "outputs": [3, 4],
        "pickup": 1, "listener": 5, "latency_s": 0.0,
    }  # fmt: skip
    summary = {"mode": mode, "converged": True, "reason": "within one JND", "notes": []}
    final = {"converged": True, "reason": "within one JND", "worst_jnd": 0.5}
    write_adaptation(folder, adaptation_record(state, summary, z, params, paths, room, final))
    return params


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """Results made once: OLD a muted measurement of the zone (room + loop paths), MID an
    adaptation to drama, NEW a room measurement of the zone (not muted: a room, no paths)."""
    var = tmp_path_factory.mktemp("lib") / "acoustics"
    var.mkdir()
    write_measurement(var, OLD, T_OLD, [3, 4], [1, 2], zone_name="stalls", mute_inner=True)
    params = write_adaptation_run(var, MID, T_MID)
    write_measurement(var, NEW, T_NEW, [1], [5], zone_name="stalls", mute_inner=False)
    return var, params


def copy(library: tuple[Path, Any], tmp_path: Path, *ids: str) -> Path:
    var = tmp_path / "var" / "acoustics"
    var.mkdir(parents=True)
    for run_id in ids:
        shutil.copytree(library[0] / run_id, var / run_id)
    return var


class Journal:
    def __init__(self) -> None:
        self.events: list[JournalEvent] = []

    async def append(self, event: JournalEvent) -> int:
        self.events.append(event)
        return len(self.events)


def control(var: Path, **change: Any) -> tuple[SoundFieldControl, Journal]:
    sf = SoundFieldControl(config(**change))
    sf.var_dir, journal = var, Journal()
    sf.journal = journal
    return sf, journal


def same_params(a: Any, b: Any) -> bool:
    return bool(
        a.n_out == b.n_out
        and np.array_equal(a.direct_gain, b.direct_gain)
        and np.array_equal(a.early.delays_s, b.early.delays_s)
        and np.array_equal(a.early.gains, b.early.gains)
        and np.array_equal(a.early.channels, b.early.channels)
        and np.array_equal(a.late.t60_s, b.late.t60_s)
        and (a.late.delay_s, a.direct_delay_s, a.early_db, a.late_db)
        == (b.late.delay_s, b.direct_delay_s, b.early_db, b.late_db)
    )


# --- what is restored ---------------------------------------------------------------------------


async def test_an_adaptation_is_restored_with_its_room_paths_and_params(
    library: tuple[Path, Any], tmp_path: Path
) -> None:
    var = copy(library, tmp_path, OLD, MID)
    sf, journal = control(var)
    args = await sf.restore(FS)
    z = sf.zones["stalls"]
    assert z.room_source.startswith(f"restored from adaptation {MID} (made ")
    assert z.paths_source == f"restored from adaptation {MID}"
    assert z.paths is not None and z.paths.n_out == 2 and z.paths.samplerate == FS
    assert float(z.room.t30_s[2]) == pytest.approx(0.8)  # the adaptation's calibrated room
    params, paths, final = sf._adapted[("stalls", "drama")]
    assert paths is z.paths and same_params(params, library[1])
    assert final["restored_from"] == MID and final["converged"] is True
    # a recall of drama plays the adapted parameters (no design)
    _, played = await sf._params_for("stalls", "drama")
    assert played is params
    z.mode = "drama"
    snap = sf.snapshot()["zones"]["stalls"]
    assert snap["adaptation"]["restored_from"] == MID
    assert snap["room"]["source"].startswith(f"restored from adaptation {MID}")
    assert snap["restored"] == {
        "room": f"adaptation {MID}",
        "paths": f"adaptation {MID}",
        "params": {"drama": f"adaptation {MID}"},
        "skipped": [],
    }
    (event,) = journal.events
    assert event.command == "acoustics.restored" and event.targets == ("stalls",)
    assert event.args == args and args["zones"]["stalls"]["room"] == f"adaptation {MID}"
    json.dumps(event.args, allow_nan=False)  # the journal stores it as JSON


async def test_a_newer_room_measurement_supersedes_the_adaptations_room_only(
    library: tuple[Path, Any], tmp_path: Path
) -> None:
    var = copy(library, tmp_path, OLD, MID, NEW)
    sf, _ = control(var)
    await sf.restore(FS)
    z = sf.zones["stalls"]
    assert z.room_source.startswith(f"restored from measurement {NEW}")
    assert z.paths_source == f"restored from adaptation {MID}"  # NEW has no loop paths
    assert ("stalls", "drama") in sf._adapted


async def test_a_muted_measurement_alone_gives_room_and_loop_paths(
    library: tuple[Path, Any], tmp_path: Path
) -> None:
    var = copy(library, tmp_path, OLD)
    sf, _ = control(var)
    await sf.restore(FS)
    z = sf.zones["stalls"]
    assert z.room_source.startswith(f"restored from measurement {OLD}")
    assert z.paths_source == f"restored from measurement {OLD}"
    assert z.paths is not None and z.paths.speaker_pickup.shape[0] == 2
    assert sf._adapted == {}


async def test_a_newer_muted_measurement_retires_the_adaptation(tmp_path: Path) -> None:
    """As in the running service: new loop paths leave the older adapted parameters unused."""
    var = tmp_path / "acoustics"
    var.mkdir()
    write_adaptation_run(var, OLD, T_OLD)
    write_measurement(var, MID, T_MID, [3, 4], [1, 2], zone_name="stalls", mute_inner=True)
    sf, _ = control(var)
    await sf.restore(FS)
    z = sf.zones["stalls"]
    assert z.paths_source == f"restored from measurement {MID}"
    assert z.room_source.startswith(f"restored from measurement {MID}")
    assert sf._adapted == {}


async def test_nothing_stored_leaves_the_configured_room(tmp_path: Path) -> None:
    sf, journal = control(tmp_path / "none")
    args = await sf.restore(FS)
    z = sf.zones["stalls"]
    assert z.room_source == "assumed" and z.paths is None
    assert args["zones"]["stalls"] == {"room": None, "paths": None, "params": None, "skipped": []}
    assert len(journal.events) == 1 and journal.events[0].targets == ()


# --- what no longer fits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fs", "why"),
    [
        ({"outputs": [3]}, FS, "was made with outputs [3, 4]; the zone now has [3]"),
        ({"inputs": [1, 2, 6]}, FS, "was made with inputs [1, 2]; the zone now has [1, 2, 6]"),
        ({"listener": 6}, FS, "was made with listener 5; the zone now has 6"),
        ({"source": 7}, FS, "was made with source 1; the zone now has 7"),
        (
            {
                "layout": {
                    "speakers": [{**LAYOUT["speakers"][0], "distance_m": 9}, LAYOUT["speakers"][1]]
                }
            },
            FS,
            "was made with layout",
        ),
        ({}, 48000, f"was made at {FS} Hz; the stream runs at 48000 Hz"),
    ],
)
async def test_a_result_that_no_longer_fits_the_zone_is_ignored_saying_why(
    library: tuple[Path, Any], tmp_path: Path, change: dict[str, Any], fs: int, why: str
) -> None:
    var = copy(library, tmp_path, OLD, MID)
    if change.get("outputs") == [3]:
        change["layout"] = {"speakers": [LAYOUT["speakers"][0]]}
    sf, _ = control(var, **change)
    args = await sf.restore(fs)
    z = sf.zones["stalls"]
    assert z.room_source == "assumed" and z.paths is None and sf._adapted == {}
    skipped = args["zones"]["stalls"]["skipped"]
    assert len(skipped) == 2, skipped
    assert skipped[0].startswith(f"adaptation {MID} ") and why in skipped[0]
    assert skipped[1].startswith(f"measurement {OLD} ") and why in skipped[1]


async def test_an_adaptation_to_a_mode_no_longer_configured_is_ignored(tmp_path: Path) -> None:
    var = tmp_path / "acoustics"
    var.mkdir()
    write_adaptation_run(var, OLD, T_OLD)
    rec = json.loads((var / OLD / "adaptation.json").read_text())
    rec["mode"] = "gone"
    (var / OLD / "adaptation.json").write_text(json.dumps(rec))
    sf, _ = control(var)
    args = await sf.restore(FS)
    assert (
        "adapted mode 'gone', which is not configured now" in args["zones"]["stalls"]["skipped"][0]
    )


async def test_results_of_other_zones_and_old_files_are_noted(
    library: tuple[Path, Any], tmp_path: Path
) -> None:
    var = copy(library, tmp_path, OLD, MID)
    summary = json.loads((var / OLD / "summary.json").read_text())
    summary["zone"] = "balcony"
    (var / OLD / "summary.json").write_text(json.dumps(summary))
    rec = json.loads((var / MID / "adaptation.json").read_text())
    del rec["restore"]  # as written before restoring existed
    (var / MID / "adaptation.json").write_text(json.dumps(rec))
    sf, _ = control(var)
    args = await sf.restore(FS)
    assert args["other"] == [f"measurement {OLD} was made for zone 'balcony', not configured now"]
    assert "written before restoring was supported" in args["zones"]["stalls"]["skipped"][0]


# --- corrupt and hostile files ------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _nan_in_json(path: Path) -> None:
    path.write_text(path.read_text().replace('"late_db": ', '"late_db": NaN, "x": ', 1))


def _wav_short(folder: Path) -> None:
    wav = folder / "ir-out3-in1.wav"
    fs, ir = read_ir(wav)
    from scipy.io import wavfile  # type: ignore[import-untyped]

    wavfile.write(wav, fs, ir[:-100].astype(np.float32))


def _wav_rate(folder: Path) -> None:
    wav = folder / "ir-out3-in1.wav"
    _, ir = read_ir(wav)
    from scipy.io import wavfile

    wavfile.write(wav, 22050, ir.astype(np.float32))


def _wav_nan(folder: Path) -> None:
    wav = folder / "ir-out4-in1.wav"
    fs, ir = read_ir(wav)
    ir[10] = np.nan
    from scipy.io import wavfile

    wavfile.write(wav, fs, ir.astype(np.float32))


def _symlink_out(folder: Path) -> None:
    outside = folder.parent.parent / "elsewhere.json"
    outside.write_text((folder / "adaptation.json").read_text())
    (folder / "adaptation.json").unlink()
    (folder / "adaptation.json").symlink_to(outside)


def _wav_symlink_out(folder: Path) -> None:
    outside = folder.parent.parent / "elsewhere.wav"
    shutil.copy(folder / "ir-out3-in5.wav", outside)
    (folder / "ir-out3-in5.wav").unlink()
    (folder / "ir-out3-in5.wav").symlink_to(outside)


def _wav_name_escapes(folder: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d["pairs"][0]["file"] = "../x/ir.wav"

    _edit(folder / "summary.json", change)


HOSTILE: dict[str, tuple[Callable[[Path], Any], str]] = {
    "truncated JSON": (lambda f: _truncate(f / "adaptation.json"), "is not valid JSON"),
    "NaN in JSON": (lambda f: _nan_in_json(f / "adaptation.json"), "NaN is not a JSON number"),
    "not an object": (lambda f: (f / "adaptation.json").write_text("[1, 2]"), "not a JSON object"),
    "direct_gain of the wrong length": (
        lambda f: _edit(
            f / "adaptation.json", lambda d: d["restore"]["params"].update(direct_gain=[1.0])
        ),
        "direct_gain must be a list of 2 numbers",
    ),
    "a negative decay": (
        lambda f: _edit(
            f / "adaptation.json",
            lambda d: d["restore"]["params"]["late"].update(t60_s=[-1.0] * 6),
        ),
        "t60_s must be finite and > 0",
    ),
    "a string for a number": (
        lambda f: _edit(
            f / "adaptation.json", lambda d: d["restore"]["params"].update(early_db="0")
        ),
        "early_db must be a finite number",
    ),
    "a tap on a channel the zone lacks": (
        lambda f: _edit(
            f / "adaptation.json",
            lambda d: d["restore"]["params"]["early"].update(
                channels=[7] * len(d["restore"]["params"]["early"]["channels"])
            ),
        ),
        "early pattern names a channel >= n_out",
    ),
    "a room out of range": (
        lambda f: _edit(
            f / "adaptation.json", lambda d: d["restore"]["room"].update(t30_s=[99] * 6)
        ),
        "t30_s must lie in",
    ),
    "a WAV of the wrong length": (_wav_short, "has 23900 samples; the measurement made 24000"),
    "a WAV at another rate": (_wav_rate, "is at 22050 Hz"),
    "a WAV with NaN": (_wav_nan, "contains NaN"),
    "a symlink out of the folder": (_symlink_out, "leads out of the results folder"),
    "a WAV symlinked out": (_wav_symlink_out, "leads out of the results folder"),
    "a WAV name that leaves the folder": (_wav_name_escapes, "is not a plain .wav name"),
    "a missing WAV": (lambda f: (f / "ir-out4-in5.wav").unlink(), "No such file"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_a_corrupt_newest_result_is_skipped_for_an_older_good_one(
    library: tuple[Path, Any], tmp_path: Path, case: str
) -> None:
    var = copy(library, tmp_path, OLD, MID)
    spoil, why = HOSTILE[case]
    spoil(var / MID)
    sf, journal = control(var)
    args = await sf.restore(FS)
    z = sf.zones["stalls"]
    # the older muted measurement stands in: its room and its loop paths
    assert z.paths_source == f"restored from measurement {OLD}", args
    assert sf._adapted == {}
    notes = [*args["zones"]["stalls"]["skipped"], *args["other"]]
    assert len(notes) == 1 and why in notes[0], notes
    assert MID in notes[0]
    assert len(journal.events) == 1


async def test_a_symlinked_result_folder_and_stray_files_are_ignored(
    library: tuple[Path, Any], tmp_path: Path
) -> None:
    var = copy(library, tmp_path)
    outside = tmp_path / "outside"
    shutil.copytree(library[0] / OLD, outside)
    (var / OLD).symlink_to(outside, target_is_directory=True)
    (var / "notes.txt").write_text("hello")
    (var / ".tmp").mkdir()
    sf, _ = control(var)
    args = await sf.restore(FS)
    assert sf.zones["stalls"].paths is None
    assert args["other"] == [f"{OLD}: {OLD} leads out of the results folder"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(["summary.json", "adaptation.json"]),
    blob=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
            max_leaves=20,
        ).map(lambda v: json.dumps({"zone": "stalls", "started": 1.0, "restore": v}).encode()),
    ),
)
def test_any_file_content_is_skipped_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, name: str, blob: bytes
) -> None:
    var = tmp_path_factory.mktemp("fuzz")
    (var / OLD).mkdir()
    (var / OLD / name).write_bytes(blob)
    found, _ = restore_results(var, [zone()], FS, set(MODES))
    assert found["stalls"].room is None and found["stalls"].paths is None


# --- at start ----------------------------------------------------------------------------------


class _Driver:
    class config:  # the audio driver's config: its stream's sample rate
        samplerate = FS


async def test_the_service_loop_restores_before_its_first_recall(
    library: tuple[Path, Any], tmp_path: Path
) -> None:
    var = copy(library, tmp_path, OLD, MID)
    sf, journal = control(var)
    sf.driver = _Driver()
    task = asyncio.create_task(sf.run(lambda: False, period_s=0.01))
    try:
        for _ in range(500):
            if sf.restored is not None:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sf.zones["stalls"].paths_source == f"restored from adaptation {MID}"
    assert [e.command for e in journal.events] == ["acoustics.restored"]
