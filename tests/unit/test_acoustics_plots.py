"""The acoustics plots render: files exist and are not trivial, axes and legends are labelled,
bad data and bad file names get clear errors. (No pixel comparison.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.patches import Rectangle

from dsp.presets import MODES
from edge.acoustics import ir_report
from edge.acoustics_plots import (
    PlotError,
    compare_figure,
    decays_figure,
    plot_adaptation,
    plot_compare,
    plot_decays,
    plot_targets,
    targets_figure,
)

FS = 48000


def synthetic_ir(t60: float, seed: int = 1) -> np.ndarray:
    t = np.arange(int(1.6 * t60 * FS)) / FS
    rng = np.random.default_rng(seed)
    ir = rng.standard_normal(t.size) * np.exp(-6.9 * t / t60)
    ir[0] = 8.0  # the direct sound
    return ir


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return ir_report(synthetic_ir(1.2), FS)


@pytest.fixture(scope="module")
def after() -> dict[str, Any]:
    return ir_report(synthetic_ir(1.8, 2), FS)


def test_every_plot_is_written(
    tmp_path: Path, report: dict[str, Any], after: dict[str, Any]
) -> None:
    """Every plot as SVG, and one as PNG too: both formats go through the same ``savefig`` call
    (PNG is also written by the prediction and third-octave tests), and a many-panel figure
    takes seconds to render, so each plot is not rendered twice."""
    files = [
        plot_decays(report, tmp_path / "decays.svg"),
        plot_targets(report, MODES["concert"], tmp_path / "targets.svg"),
        plot_targets(report, None, tmp_path / "bars.svg"),
        plot_compare(report, after, tmp_path / "compare.svg", mode=MODES["concert"]),
        plot_decays(report, tmp_path / "decays.png"),
    ]
    for f in files:
        assert f.is_file() and f.stat().st_size > 10_000, f
    assert files[0].read_text().lstrip().startswith("<?xml")
    assert files[-1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_measurement_against_a_prediction(tmp_path: Path, report: dict[str, Any]) -> None:
    prediction = {
        "bands_hz": [125, 250, 500, 1000, 2000, 4000],
        "t30_s": [2.2, 2.1, 2.0, 2.0, 1.8, 1.5],
        "edt_s": [2.1, 2.0, 1.9, 1.9, 1.7, 1.4],
        "c80_db": [-2.0, -1.5, -1.0, -1.0, 0.0, 0.5],
        "d50": [0.3, 0.35, 0.4, 0.4, 0.45, 0.5],
        "ts_s": [0.14, 0.13, 0.12, 0.12, 0.1, 0.09],
    }
    fig = compare_figure(report, prediction, ("measured", "predicted"), MODES["concert"])
    try:
        labels = [ax.get_ylabel() for ax in fig.axes]
        assert labels == ["T30 (s)", "EDT (s)", "C80 (dB)", "D50", "Ts (ms)"]
        legend = fig.axes[0].get_legend()
        assert legend is not None
        assert {t.get_text() for t in legend.get_texts()} == {
            "measured",
            "predicted",
            "target ± 1 JND",
        }
        assert fig.get_suptitle() == "measured and predicted"
    finally:
        plt.close(fig)
    assert plot_compare(report, prediction, tmp_path / "p.png").stat().st_size > 10_000


def test_an_adaptation_before_and_after(tmp_path: Path) -> None:
    """The shape of ``dsp.adapt.Adaptation.to_dict()``: per-metric lists of the octave bands."""
    adaptation = {
        "mode": "concert",
        "bands_hz": [125, 250, 500, 1000, 2000, 4000],
        "converged": True,
        "before": {
            "t30_s": [1.3, 1.2, 1.1, 1.0, 0.95, 0.85],
            "edt_s": [1.2, 1.1, 1.0, 0.9, 0.9, 0.8],
            "c80_db": [1.0, 1.5, 2.0, 2.5, 3.0, 3.5],
            "d50": [0.45, 0.5, 0.55, 0.6, 0.6, 0.65],
            "ts_s": [0.08, 0.07, 0.065, 0.06, 0.055, 0.05],
        },
        "after": {
            "t30_s": [2.3, 2.2, 2.0, 2.0, 1.8, 1.6],
            "edt_s": [2.4, 2.3, 2.1, 2.1, 1.9, None],
            "c80_db": [-2.0, -1.5, -1.0, -1.0, -0.5, 0.0],
            "d50": [0.28, 0.3, 0.31, 0.31, 0.34, 0.37],
            "ts_s": [0.16, 0.15, 0.14, 0.14, 0.125, 0.11],
        },
    }
    out = plot_adaptation(adaptation, tmp_path / "adapt.svg")
    assert out.stat().st_size > 10_000
    with pytest.raises(PlotError, match="needs 'after'"):
        plot_adaptation({"mode": "concert", "before": {}}, tmp_path / "x.png")
    with pytest.raises(PlotError, match="5 values for 6 bands"):
        plot_adaptation({**adaptation, "after": {"t30_s": [1.0] * 5}}, tmp_path / "x.png")


def test_axes_titles_and_fit_ranges_are_labelled(report: dict[str, Any]) -> None:
    fig = decays_figure(report)
    try:
        shown = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in shown] == [
            "125 Hz", "250 Hz", "500 Hz", "1 kHz", "2 kHz", "4 kHz",
        ]  # fmt: skip
        for ax in shown:
            assert ax.get_xlabel() == "time (s)" and ax.get_ylabel() == "level (dB)"
            legend = ax.get_legend()
            assert legend is not None
            texts = [t.get_text() for t in legend.get_texts()]
            assert texts[0] == "decay (Schroeder)"
            assert any(t.startswith("T30 1.") for t in texts), texts
        assert "fit ranges" in fig.get_suptitle()
    finally:
        plt.close(fig)
    fig = targets_figure(report, MODES["opera"])
    try:
        assert "against" in fig.get_suptitle()
        assert fig.axes[0].get_xlabel() == "octave band"
        # the measured bar of T30 at 1 kHz is the report's value
        bar = fig.axes[0].patches[3]
        assert isinstance(bar, Rectangle) and bar.get_height() == pytest.approx(
            report["bands"][3]["t30_s"]
        )
    finally:
        plt.close(fig)


def test_third_octave_reports_plot(tmp_path: Path) -> None:
    report = ir_report(synthetic_ir(1.0), FS, bands="third")
    assert len(report["curves"]) > 6
    # PNG for the 18-panel decays (renders faster than SVG), SVG for the bars
    assert plot_decays(report, tmp_path / "third.png").stat().st_size > 10_000
    assert plot_targets(report, MODES["concert"], tmp_path / "third.svg").stat().st_size > 10_000


def test_bad_input_is_refused(tmp_path: Path, report: dict[str, Any]) -> None:
    with pytest.raises(PlotError, match=r"\.png or \.svg, not '\.jpg'"):
        plot_decays(report, tmp_path / "x.jpg")
    with pytest.raises(PlotError, match="no suffix"):
        plot_decays(report, tmp_path / "x")
    with pytest.raises(PlotError, match="no decay curves"):
        plot_decays({"curves": []}, tmp_path / "x.png")
    with pytest.raises(PlotError, match="no per-band t30_s"):
        plot_targets({"fs": 48000}, None, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())
