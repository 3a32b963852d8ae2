"""Plots of room acoustics people look at (docs/acoustics.md, "Command line and plots").

Three figures, drawn with matplotlib's Agg backend (no display), written as PNG or SVG by the
file's suffix, from the same JSON the service serves the console (``edge.acoustics.ir_report``,
a design's ``prediction``), so a plot and the console never disagree:

- ``plot_decays``: the energy-decay curve of every band, with the EDT / T20 / T30 fit ranges
  shaded and their regression lines, and the point where the noise was cut off;
- ``plot_targets``: per band, the measured T30, EDT, C80, D50 and Ts as bars against a mode's
  targets, with the just-noticeable-difference band around each target;
- ``plot_compare``: before and after (two measurements, or a measurement and a prediction), per
  band and metric, with the target's JND band when a mode is given.

- ``plot_adaptation``: ``dsp.adapt``'s ``Adaptation.to_dict()``: the natural room before,
  the best iteration after, against the adapted mode's targets.

Values are accepted as a report (``{"bands": [{"band_hz": 125, "t30_s": ...}, ...]}``) or as
per-band lists (``{"bands_hz": [...], "t30_s": [...], ...}``, a design's prediction; without
``bands_hz`` the octave bands 125 Hz .. 4 kHz).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from dsp.field import BANDS_HZ
from dsp.presets import MODES, RELATIVE, Mode

FORMATS = (".png", ".svg")
METRICS: tuple[tuple[str, str, float], ...] = (
    # key, axis label, scale (values are shown in these units)
    ("t30_s", "T30 (s)", 1.0),
    ("edt_s", "EDT (s)", 1.0),
    ("c80_db", "C80 (dB)", 1.0),
    ("d50", "D50", 1.0),
    ("ts_s", "Ts (ms)", 1000.0),
)
FIT_COLOURS = {"edt": "tab:green", "t20": "tab:orange", "t30": "tab:red"}


class PlotError(ValueError):
    """Data that cannot be plotted, or a file name that is not .png / .svg."""


def _check_path(path: Path | str) -> Path:
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise PlotError(f"{p}: plots are written as .png or .svg, not '{p.suffix or 'no suffix'}'")
    return p


def _save(fig: Figure, path: Path) -> Path:
    try:
        fig.savefig(path, format=path.suffix.lower()[1:], dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _hz(band_hz: float) -> str:
    return f"{band_hz / 1000:g} kHz" if band_hz >= 1000 else f"{band_hz:g} Hz"


def band_values(data: Mapping[str, Any], metric: str) -> dict[float, float | None]:
    """``metric`` per band (Hz -> value or None) from a report or per-band lists."""
    if "bands" in data and isinstance(data["bands"], Sequence):
        return {float(b["band_hz"]): _finite(b.get(metric)) for b in data["bands"]}
    if metric in data:
        bands = data.get("bands_hz", BANDS_HZ)
        if len(bands) != len(data[metric]):
            raise PlotError(f"{metric}: {len(data[metric])} values for {len(bands)} bands")
        return {float(hz): _finite(v) for hz, v in zip(bands, data[metric], strict=True)}
    raise PlotError(f"no per-band {metric} in the data (keys: {', '.join(sorted(data))})")


def _finite(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def plot_decays(report: Mapping[str, Any], path: Path | str, title: str = "") -> Path:
    """Energy-decay curves per band with the fit ranges (``report["curves"]``)."""
    out = _check_path(path)
    return _save(decays_figure(report, title), out)


def decays_figure(report: Mapping[str, Any], title: str = "") -> Figure:
    """The figure of ``plot_decays`` (not yet saved: close it with ``plt.close``)."""
    curves = [c for c in report.get("curves", []) if "time_s" in c]
    if not curves:
        raise PlotError("no decay curves to plot")
    cols = 3 if len(curves) <= 9 else 4
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, layout="constrained"
    )
    for ax, curve in zip(axes.flat, curves, strict=False):
        t = curve["time_s"]
        level = [math.nan if v is None else v for v in curve["level_db"]]
        ax.plot(t, level, color="tab:blue", lw=1.2, label="decay (Schroeder)")
        for fit in curve["fits"]:
            start, end = fit.get("start_s"), fit.get("end_s")
            slope, icpt = fit.get("slope_db_per_s"), fit.get("intercept_db")
            colour = FIT_COLOURS.get(fit["name"], "grey")
            value = fit.get("value_s")
            label = f"{fit['name'].upper()} {value:.2f} s" if value else fit["name"].upper()
            if start is not None and end is not None:
                ax.axvspan(start, end, color=colour, alpha=0.08)
                if slope is not None and icpt is not None:
                    ax.plot(
                        [start, end],
                        [icpt + slope * start, icpt + slope * end],
                        color=colour,
                        lw=1.0,
                        ls="--",
                        label=label,
                    )
        trunc = curve.get("truncation_s")
        if trunc:
            ax.axvline(trunc, color="grey", lw=0.8, ls=":", label="noise cut-off")
        band = float(curve["band_hz"])
        ax.set_title(_hz(band) if band else "broadband")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("level (dB)")
        ax.set_ylim(-70, 5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    for ax in list(axes.flat)[len(curves) :]:
        ax.set_visible(False)
    fig.suptitle(title or "Energy-decay curves and fit ranges")
    return fig


def _target(mode: Mode, metric: str, band_hz: float) -> tuple[float, float] | None:
    """The target and its tolerance (absolute) in ``band_hz``, if the mode has one there."""
    try:
        t = mode.band(metric, int(band_hz))
    except (KeyError, ValueError):
        return None
    tol = t.tol * t.value if metric in RELATIVE else t.tol
    return t.value, tol


def _metric_axes(n: int) -> tuple[Figure, Any]:
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), squeeze=False, layout="constrained")
    return fig, axes[0]


def plot_targets(
    report: Mapping[str, Any], mode: Mode | None, path: Path | str, title: str = ""
) -> Path:
    """Per-band bars of the measured parameters against ``mode``'s targets (a line with its
    JND band); without a mode, the bars alone."""
    out = _check_path(path)
    return _save(targets_figure(report, mode, title), out)


def targets_figure(report: Mapping[str, Any], mode: Mode | None, title: str = "") -> Figure:
    """The figure of ``plot_targets`` (not yet saved)."""
    tables = [band_values(report, metric) for metric, _, _ in METRICS]  # bad data: no figure
    fig, axes = _metric_axes(len(METRICS))
    for ax, (metric, label, scale), values in zip(axes, METRICS, tables, strict=True):
        bands = list(values)
        xs = range(len(bands))
        heights = [math.nan if v is None else v * scale for v in values.values()]
        ax.bar(xs, heights, color="tab:blue", alpha=0.75, label="measured")
        if mode is not None:
            for x, hz in zip(xs, bands, strict=True):
                tgt = _target(mode, metric, hz)
                if tgt is None:
                    continue
                value, tol = tgt[0] * scale, tgt[1] * scale
                ax.fill_between(
                    [x - 0.45, x + 0.45],
                    value - tol,
                    value + tol,
                    color="tab:orange",
                    alpha=0.3,
                    label="target ± 1 JND" if x == 0 else None,
                )
                ax.plot([x - 0.45, x + 0.45], [value, value], color="tab:orange", lw=2)
        ax.set_xticks(list(xs), [_hz(b) for b in bands], rotation=45, fontsize=7)
        ax.set_xlabel("octave band" if len(bands) <= 10 else "band")
        ax.set_ylabel(label)
        ax.set_title(label.split(" ")[0])
        ax.grid(axis="y", alpha=0.3)
        if metric == METRICS[0][0]:
            ax.legend(fontsize=7)
    name = f" against '{mode.title or mode.name}'" if mode is not None else ""
    fig.suptitle(title or f"Room parameters per band{name}")
    return fig


def _ys(values: dict[float, float | None], bands: list[float], scale: float) -> list[float]:
    out = []
    for hz in bands:
        v = values.get(hz)
        out.append(math.nan if v is None else v * scale)
    return out


def plot_compare(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    path: Path | str,
    labels: tuple[str, str] = ("before", "after"),
    mode: Mode | None = None,
    title: str = "",
) -> Path:
    """Before and after per band and metric (two measurements, or a measurement and a
    prediction), with ``mode``'s targets and their JND band when given."""
    out = _check_path(path)
    return _save(compare_figure(before, after, labels, mode, title), out)


def compare_figure(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    labels: tuple[str, str] = ("before", "after"),
    mode: Mode | None = None,
    title: str = "",
) -> Figure:
    """The figure of ``plot_compare`` (not yet saved)."""
    tables = [(band_values(before, m), band_values(after, m)) for m, _, _ in METRICS]
    fig, axes = _metric_axes(len(METRICS))
    for ax, (metric, label, scale), (a, b) in zip(axes, METRICS, tables, strict=True):
        bands = sorted(set(a) | set(b))
        xs = list(range(len(bands)))

        ax.bar([x - 0.2 for x in xs], _ys(a, bands, scale), 0.4, color="tab:grey", label=labels[0])
        ax.bar([x + 0.2 for x in xs], _ys(b, bands, scale), 0.4, color="tab:blue", label=labels[1])
        if mode is not None:
            for x, hz in zip(xs, bands, strict=True):
                tgt = _target(mode, metric, hz)
                if tgt is not None:
                    value, tol = tgt[0] * scale, tgt[1] * scale
                    ax.fill_between(
                        [x - 0.45, x + 0.45],
                        value - tol,
                        value + tol,
                        color="tab:orange",
                        alpha=0.3,
                        label="target ± 1 JND" if x == 0 else None,
                    )
        ax.set_xticks(xs, [_hz(hz) for hz in bands], rotation=45, fontsize=7)
        ax.set_xlabel("octave band")
        ax.set_ylabel(label)
        ax.set_title(label.split(" ")[0])
        ax.grid(axis="y", alpha=0.3)
        if metric == METRICS[0][0]:
            ax.legend(fontsize=7)
    fig.suptitle(title or f"{labels[0]} and {labels[1]}")
    return fig


def plot_adaptation(
    adaptation: Mapping[str, Any], path: Path | str, mode: Mode | None = None
) -> Path:
    """Before (the natural room) and after (the best iteration) of an adaptation
    (``dsp.adapt.Adaptation.to_dict()``), against its mode's targets (``mode``, or the built-in
    mode of that name)."""
    out = _check_path(path)
    for key in ("before", "after"):
        if not isinstance(adaptation.get(key), Mapping):
            raise PlotError(f"an adaptation needs '{key}' (per-band values), got none")
    name = str(adaptation.get("mode", ""))
    mode = mode if mode is not None else MODES.get(name)
    verdict = "converged" if adaptation.get("converged") else "not converged"
    fig = compare_figure(
        adaptation["before"],
        adaptation["after"],
        ("natural room", "adapted"),
        mode,
        f"Adaptation to '{name}': {verdict}",
    )
    return _save(fig, out)
