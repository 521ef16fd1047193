"""Report plots as PNG: reliability diagrams of lesion probabilities, per-case box/strip plots.

Agg canvas only (no pyplot state). Curves come from `clinfuse.metrics.calibration`
(`reliability_curve`); any object with `bin_centres, accuracy, confidence, counts` works.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from clinfuse.io.atomic import atomic_write

# Tableau-10: distinct hues for up to 10 methods; the same method keeps its colour in every plot.
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)


class CurveLike(Protocol):
    """What a reliability diagram needs (the fields of `metrics.calibration.reliability_curve`)."""

    bin_centres: Any
    accuracy: Any
    confidence: Any
    counts: Any


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    out = Path(path)
    with atomic_write(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return out


def save_reliability_diagram(
    path: str | Path,
    curves: Mapping[str, CurveLike],
    *,
    scores: Mapping[str, Mapping[str, float]] | None = None,
    title: str = "Lesion probability calibration",
    dpi: int = 110,
) -> Path:
    """Reliability diagram: observed lesion frequency against mean predicted probability per bin.

    One line per entry of `curves` (label -> curve), the diagonal is perfect calibration; a lower
    panel shows how many voxels fall in each bin (log scale), because a bin with a handful of
    voxels says little. `scores` (label -> {"ECE": .., "Brier": ..}) is added to the legend.
    Empty bins (count 0) are not drawn.
    """
    if not curves:
        raise ValueError("no reliability curves to plot")
    fig = Figure(figsize=(4.6, 5.2))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfect calibration")
    n = len(curves)
    for i, (label, curve) in enumerate(curves.items()):
        colour = PALETTE[i % len(PALETTE)]
        counts = np.asarray(curve.counts, dtype=float)
        keep = counts > 0
        conf = np.asarray(curve.confidence, dtype=float)[keep]
        acc = np.asarray(curve.accuracy, dtype=float)[keep]
        centres = np.asarray(curve.bin_centres, dtype=float)
        text = label
        if scores and label in scores:
            text += " (" + ", ".join(f"{k} {v:.3f}" for k, v in scores[label].items()) + ")"
        top.plot(conf, acc, marker="o", ms=3, lw=1.4, color=colour, label=text)
        width = (centres[1] - centres[0] if centres.size > 1 else 1.0) / (n + 1)
        bottom.bar(centres + (i - (n - 1) / 2) * width, counts, width=width, color=colour)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("observed lesion frequency")
    top.set_title(title, fontsize=10)
    top.legend(fontsize=7, loc="upper left", frameon=False)
    bottom.set_yscale("log")
    bottom.set_xlabel("predicted lesion probability")
    bottom.set_ylabel("voxels")
    fig.tight_layout()
    return _save(fig, path, dpi)


def save_reliability_panels(
    path: str | Path,
    panels: Mapping[str, Mapping[str, CurveLike]],
    *,
    title: str = "Lesion probability calibration",
    dpi: int = 110,
) -> Path:
    """Reliability diagrams of several voxel selections, one row each (e.g. brain voxels, the
    lesion neighbourhood, class-balanced): left the observed lesion frequency against the mean
    predicted probability per bin (diagonal = perfect calibration), right the voxels per bin
    (log scale). `panels` maps a row title to label -> curve; a label keeps its colour in every
    row and is named once in a legend below. Narrow enough (~660 px) to sit beside a table.
    """
    if not panels or not any(panels.values()):
        raise ValueError("no reliability curves to plot")
    labels: list[str] = []
    for curves in panels.values():
        labels += [k for k in curves if k not in labels]
    colour = {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}
    n = len(panels)
    fig = Figure(figsize=(6.0, 2.7 * n + 0.4 + 0.22 * (len(labels) + 1) // 2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 2, squeeze=False, gridspec_kw={"width_ratios": [3, 2]})
    for (region, curves), (left, right) in zip(panels.items(), axes, strict=True):
        left.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
        width = 1.0 / 15 / (len(curves) + 1)
        for i, (label, curve) in enumerate(curves.items()):
            counts = np.asarray(curve.counts, dtype=float)
            keep = counts > 0
            conf = np.asarray(curve.confidence, dtype=float)[keep]
            acc = np.asarray(curve.accuracy, dtype=float)[keep]
            centres = np.asarray(curve.bin_centres, dtype=float)
            if centres.size > 1:
                width = (centres[1] - centres[0]) / (len(curves) + 1)
            left.plot(conf, acc, marker="o", ms=3, lw=1.4, color=colour[label])
            offset = (i - (len(curves) - 1) / 2) * width
            right.bar(centres + offset, counts, width=width, color=colour[label])
        left.set_xlim(0, 1)
        left.set_ylim(0, 1)
        left.set_title(region, fontsize=10)
        left.set_ylabel("observed lesion frequency", fontsize=8)
        left.set_xlabel("predicted lesion probability", fontsize=8)
        right.set_yscale("log")
        right.set_xlim(0, 1)
        right.set_title("voxels per bin", fontsize=9)
        right.set_xlabel("predicted lesion probability", fontsize=8)
    handles = [Line2D([0], [0], color=colour[lab], lw=2, label=lab) for lab in labels]
    handles.append(Line2D([0], [0], color="0.6", ls="--", lw=1, label="perfect calibration"))
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    bottom = (0.22 * ((len(handles) + 1) // 2) + 0.1) / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return _save(fig, path, dpi)


def save_metric_plot(
    path: str | Path,
    values: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    title: str | None = None,
    ylabel: str = "ROI-SSIM",
    dpi: int = 110,
) -> Path:
    """Box plot with every case drawn as a dot, one panel per metric, one box per method.

    `values` maps metric title -> method -> per-case values (NaN values are dropped, and the
    number of cases kept is printed under each method). With 3–10 cases a box alone would hide
    that there are so few, hence the dots. Dot offsets are fixed, not random, so the PNG is
    reproducible.
    """
    if not values:
        raise ValueError("no metrics to plot")
    methods: list[str] = []
    for per_method in values.values():
        methods += [m for m in per_method if m not in methods]
    ncols = len(values)
    fig = Figure(figsize=(max(3.2, 0.55 * len(methods) + 1.2) * ncols, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax, (metric, per_method) in zip(axes, values.items(), strict=True):
        labels = []
        for pos, method in enumerate(methods):
            data = np.asarray(per_method.get(method, []), dtype=float)
            data = data[np.isfinite(data)]
            labels.append(f"{method} (n={data.size})")
            if data.size == 0:
                continue
            colour = PALETTE[pos % len(PALETTE)]
            ax.boxplot(
                [data],
                positions=[pos],
                widths=0.6,
                showfliers=False,
                patch_artist=True,
                boxprops={"facecolor": colour, "alpha": 0.35, "edgecolor": colour},
                medianprops={"color": colour},
                whiskerprops={"color": colour},
                capprops={"color": colour},
            )
            offsets = np.linspace(-0.18, 0.18, data.size) if data.size > 1 else np.zeros(1)
            ax.scatter(pos + offsets, data, s=12, color=colour, zorder=3)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        ax.set_xlim(-0.7, len(methods) - 0.3)
        ax.set_title(metric, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(axis="y", color="0.9")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def per_case_values(
    rows: Sequence[Mapping[str, Any]], metric: str, *, method_key: str = "method"
) -> dict[str, list[float]]:
    """Group per-case rows (e.g. read from `per_case.csv`) into method -> list of `metric` values.

    Missing or non-numeric entries become NaN (then dropped by the plot), keeping row order.
    """
    out: dict[str, list[float]] = {}
    for row in rows:
        raw = row.get(metric)
        try:
            val = float(raw) if raw not in (None, "") else math.nan
        except (TypeError, ValueError):
            val = math.nan
        out.setdefault(str(row[method_key]), []).append(val)
    return out
