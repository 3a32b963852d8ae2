"""``flytower acoustics analyze`` and ``modes`` in-process: a synthetic WAV with a known decay,
multichannel files, plots, JSON, and hostile files, each with a clear error and exit code 1
(bad arguments: argparse's 2). ``measure`` runs against jackd in
tests/integration/test_service_acoustics.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.cli import main

FS = 48000
T60 = 1.2


def decay(t60: float = T60, fs: int = FS, seconds: float = 2.0, seed: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * fs)) / fs
    ir = np.random.default_rng(seed).standard_normal(t.size) * np.exp(-6.9 * t / t60)
    ir[0] = 8.0
    return np.asarray(0.5 * ir / np.abs(ir).max(), dtype=np.float64)


def wav(path: Path, data: np.ndarray, fs: int = FS, subtype: str = "FLOAT") -> Path:
    sf.write(str(path), data.astype(np.float32), fs, subtype=subtype)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["acoustics", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_prints_a_band_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = wav(tmp_path / "ir.wav", decay())
    code, out, err = run(capsys, "analyze", str(path))
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert set(rows) >= {"125", "250", "500", "1k", "2k", "4k", "all", "bass"}
    assert float(rows["1k"][2]) == pytest.approx(T60, rel=0.03)  # T30


def test_analyze_json_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = wav(tmp_path / "ir.wav", decay(), subtype="PCM_24")
    plot = tmp_path / "plots" / "hall.svg"
    plot.parent.mkdir()
    code, out, err = run(capsys, "analyze", str(path), "--json", "--plot", str(plot), "--mode",
                         "opera")  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    t30 = [b["t30_s"] for b in report["bands"]]
    assert all(math.isclose(t, T60, rel_tol=0.05) for t in t30), t30
    assert len(report["curves"]) == 6 and report["curves"][0]["fits"]
    assert plot.stat().st_size > 10_000
    assert (plot.parent / "hall-bands.svg").stat().st_size > 10_000


def test_third_octaves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = wav(tmp_path / "ir.wav", decay())
    code, out, err = run(capsys, "analyze", str(path), "--bands", "third", "--json")
    assert code == 0, err
    assert len(json.loads(out)["bands"]) > 6


def test_multichannel_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    both = np.stack([decay(1.0, seed=1), decay(1.6, seed=2)], axis=1)
    path = wav(tmp_path / "pair.wav", both)
    code, out, err = run(capsys, "analyze", str(path), "--json")
    assert code == 0, err
    reports = json.loads(out)
    assert [r["channel"] for r in reports] == [1, 2]
    assert reports[1]["bands"][3]["t30_s"] == pytest.approx(1.6, rel=0.05)
    code, out, err = run(capsys, "analyze", str(path), "--channel", "2", "--plot",
                         str(tmp_path / "c.png"))  # fmt: skip
    assert code == 0 and ", channel 2" in out, err
    code, out, err = run(capsys, "analyze", str(path), "--channel", "3")
    assert code == 1 and "--channel 3" in err and "has 2" in err


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda d: None, (), "no such file"),
        (lambda d: (d / "x.wav").write_text("not a sound"), (), "not a sound file we read"),
        (lambda d: wav(d / "x.wav", np.zeros(FS)), (), "silent"),
        (lambda d: wav(d / "x.wav", decay()[:200]), (), "too short"),
        (lambda d: wav(d / "x.wav", decay(fs=8000), fs=8000), (), "too close to Nyquist"),
        (lambda d: wav(d / "x.wav", decay()), ("--fs", "44100"), "at 48000 Hz, not 44100"),
        (lambda d: wav(d / "x.wav", np.r_[decay(), np.nan]), (), "NaN or infinite"),
        (lambda d: np.save(d / "x.npy", decay()), (), "give --fs"),
        (lambda d: np.save(d / "x.npy", np.stack([decay()] * 2)), ("--fs", "48000"),
         "transpose"),
        (lambda d: np.save(d / "x.npy", np.zeros((2, 2, 2))), ("--fs", "48000"),
         "[frames] or [frames, channels]"),
        (lambda d: np.save(d / "x.npy", np.array(["a", "b"])), ("--fs", "48000"),
         "must be numbers"),
        (lambda d: np.save(d / "x.npy", np.array([{}], dtype=object)), ("--fs", "48000"),
         "not a numpy array file"),
        (lambda d: wav(d / "x.wav", decay()), ("--mode", "disco"), "no mode 'disco'"),
        (lambda d: wav(d / "x.wav", decay()), ("--plot", "p.jpg"), "write .png or .svg"),
        (lambda d: wav(d / "x.wav", np.zeros((0, 1))), (), "no samples"),
    ],
)  # fmt: skip
def test_hostile_files_get_clear_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: object,
    args: tuple[str, ...],
    message: str,
) -> None:
    make(tmp_path)  # type: ignore[operator]
    name = "x.npy" if (tmp_path / "x.npy").exists() else "x.wav"
    code, out, err = run(capsys, "analyze", str(tmp_path / name), *args)
    assert code == 1, (out, err)
    assert err.startswith("error: ") and message in err, err
    assert not list(tmp_path.glob("*.png"))


def test_clipped_irs_are_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = wav(tmp_path / "x.wav", np.clip(decay() * 40, -1, 1))
    code, out, err = run(capsys, "analyze", str(path))
    assert code == 0 and "warning: clipped" in out, (out, err)


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["acoustics", "analyze", "x.wav", "--bands", "sixth"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["acoustics", "measure", "venue.toml", "--outputs", "0", "--inputs", "1"])
    assert exc.value.code == 2
    assert "1-based" in capsys.readouterr().err


def test_modes_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "modes")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[1:-1]]
    assert {"concert", "opera", "drama", "cinema", "multipurpose"} <= set(names)
    code, out, _ = run(capsys, "modes", "--json")
    modes = json.loads(out)
    assert modes["concert"]["t30_s"]["1000"] == pytest.approx(2.0)
