"""The demo's figures, `summary.md` and `report.html`, from the per-method results of a run.

Kept apart from `clinfuse.demo` (which runs the methods) so the report layout can change
without touching the pipeline, and so `clinfuse benchmark`-style results can reuse it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse.report.html import Table, format_stat, write_report
from clinfuse.report.montage import comparison_montage, save_montage
from clinfuse.report.plots import save_metric_plot, save_reliability_diagram

OUR_METHOD = "clinfuse"
METRICS = (
    ("brain_ssim", "brain ROI-SSIM"),
    ("bone_ssim", "bone ROI-SSIM"),
    ("brain_psnr", "brain PSNR (dB)"),
    ("bone_psnr", "bone PSNR (dB)"),
    ("dice", "lesion Dice"),
    ("nsd", "lesion NSD@2mm"),
    ("hd95", "lesion HD95 (mm)"),
    ("fuse_seconds", "seconds / case"),
)


def _stat_cell(summary: Mapping[str, Any], key: str) -> str:
    s = summary.get(key)
    if s is None:
        return "—"
    return format_stat(s.mean, s.sd, (s.ci_low, s.ci_high))


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def results_table(
    rows_by_method: Mapping[str, list[dict[str, Any]]], *, caption: str = ""
) -> Table:
    """Method × metric table, cells `mean ± sd [95 % CI]` (evaluation harness summaries)."""
    from clinfuse.evaluation.dataset import summarise_rows

    rows = []
    for method, rows_m in rows_by_method.items():
        summary = summarise_rows(rows_m)
        n_ok = sum(1 for r in rows_m if not r.get("error"))
        rows.append([method, n_ok, *(_stat_cell(summary, key) for key, _ in METRICS)])
    return Table(
        "Results: mean ± sd [95 % bootstrap CI] over cases",
        ["method", "n", *(title for _, title in METRICS)],
        rows,
        caption=caption,
        highlight=[OUR_METHOD],
    )


def contrast_table(
    rows_by_method: Mapping[str, list[dict[str, Any]]], contrast_of: Mapping[str, str]
) -> Table:
    """ROI-SSIM per MRI contrast: a baseline that wins on T1 can lose on T2 (and vice versa)."""
    contrasts = sorted(set(contrast_of.values()))
    header = ["method"]
    for c in contrasts:
        header += [f"{c} brain", f"{c} bone"]
    rows = []
    for method, rows_m in rows_by_method.items():
        cells: list[Any] = [method]
        for c in contrasts:
            mine = [r for r in rows_m if contrast_of.get(r["case_id"]) == c]
            cells += [_mean([r["brain_ssim"] for r in mine]), _mean([r["bone_ssim"] for r in mine])]
        rows.append(cells)
    return Table(
        "ROI-SSIM by MRI contrast (mean over the cases of that contrast)",
        header,
        rows,
        caption="T1-like MRI: bright marrow, dark CSF; T2-like: bright CSF, dark bone.",
        highlight=[OUR_METHOD],
    )


def calibration_table(scores: Mapping[str, Mapping[str, float]]) -> Table:
    """ECE and Brier of the lesion head's probabilities on each method's fused image."""
    rows = [[m, s["ECE"], s["Brier"]] for m, s in scores.items()]
    return Table(
        "Lesion probability calibration (brain voxels of all cases pooled)",
        ["fused image from", "ECE (15 bins)", "Brier"],
        rows,
        caption="The same lesion head is applied to every method's fused image.",
        highlight=[OUR_METHOD],
    )


def summary_markdown(
    tables: Sequence[Table], notes: Sequence[str], command: str | None, title: str
) -> str:
    """`summary.md`: the report's tables as markdown, its notes and the reproducing command."""
    from clinfuse.report.html import format_cell

    lines = [f"# {title}", ""]
    lines += [f"> {n}\n" for n in notes]
    for t in tables:
        lines += [f"## {t.title}", ""]
        lines.append("| " + " | ".join(str(h) for h in t.header) + " |")
        lines.append("|---" * len(t.header) + "|")
        for row in t.rows:
            lines.append("| " + " | ".join(format_cell(v) for v in row) + " |")
        if t.caption:
            lines += ["", t.caption]
        lines.append("")
    if command:
        lines += ["Reproduce with:", "", "```", command, "```", ""]
    return "\n".join(lines)


def _case_figures(
    fig_dir: Path, case: Any, recorders: Mapping[str, Any], ours_ok: bool
) -> list[tuple[str, Path]]:
    prepared = case.prepared
    spacing = prepared.spacing
    ref = prepared.lesion
    fused_name = OUR_METHOD if ours_ok else "composite"
    out = recorders.get(fused_name, next(iter(recorders.values()))).outputs.get(case.case_id, {})
    panels: dict[str, np.ndarray] = {"MRI": prepared.mri, "CT (bone window)": prepared.ct_bone}
    label = "fused (clinfuse)" if ours_ok else "ROI composite (model missing)"
    if "fused" in out:
        panels[label] = out["fused"]
    if "uncertainty" in out:
        panels["uncertainty (sd)"] = out["uncertainty"]
    overlay: dict[str, np.ndarray] = {}
    if ours_ok and "lesion_prob" in out:
        overlay["predicted lesion (p > 0.5)"] = out["lesion_prob"] > 0.5
    if ref is not None:
        overlay["reference lesion"] = ref
    title = f"{case.case_id} ({case.contrast}-like MRI, seed {case.seed})"
    montage = save_montage(
        fig_dir / f"{case.case_id}_montage.png",
        panels,
        overlay=overlay or None,
        overlay_on=label if label in panels else None,
        spacing=spacing,
        title=title,
    )
    images = {"MRI": prepared.mri, "CT (bone)": prepared.ct_bone}
    for name, rec in recorders.items():
        if case.case_id in rec.outputs:
            images[name] = rec.outputs[case.case_id]["fused"]
    cmp_path = comparison_montage(
        fig_dir / f"{case.case_id}_methods.png",
        images,
        overlay={"reference lesion": ref} if ref is not None else None,
        spacing=spacing,
        title=f"{case.case_id}: every method, same slices",
    )
    return [
        (f"{title}: MRI | CT | fused | uncertainty | lesion overlay", montage),
        (f"{case.case_id}: every method on the same slices (reference lesion outlined)", cmp_path),
    ]


def write_demo_report(
    out_dir: Path,
    *,
    cases: Sequence[Any],
    recorders: Mapping[str, Any],
    rows_by_method: Mapping[str, list[dict[str, Any]]],
    status: Any,
    per_case_csv: Path,
    calibration: tuple[Mapping[str, Any], Mapping[str, Mapping[str, float]]],
    settings: Mapping[str, Any],
    command: str | None,
    timings: Mapping[str, float],
) -> tuple[Path, Path]:
    """Write `figures/*.png`, `summary.md` and `report.html` into `out_dir`; return the last two.

    `recorders` map method -> object with `.outputs[case_id]` = {"fused", "lesion_prob"?,
    "uncertainty"?}; `rows_by_method` are the evaluation harness rows; `status` says whether our
    model ran (`.available`, `.reason`, `.checkpoint`, `.sha256`).
    """
    fig_dir = out_dir / "figures"
    ours_ok = bool(status.available) and OUR_METHOD in rows_by_method
    images: list[tuple[str, Path]] = []
    curves, scores = calibration
    plots: list[tuple[str, Path]] = []
    ssim = {
        "brain ROI-SSIM (fused vs MRI)": {
            m: [r["brain_ssim"] for r in rows] for m, rows in rows_by_method.items()
        },
        "bone ROI-SSIM (fused vs bone-window CT)": {
            m: [r["bone_ssim"] for r in rows] for m, rows in rows_by_method.items()
        },
    }
    plots.append(
        ("Per-case ROI-SSIM of every method", save_metric_plot(fig_dir / "roi_ssim.png", ssim))
    )
    if curves:
        rel = save_reliability_diagram(fig_dir / "reliability.png", curves, scores=scores)
        plots.append(("Reliability of the lesion head's probability per fused image", rel))
    for case in cases:
        images += _case_figures(fig_dir, case, recorders, ours_ok)

    notes = []
    if not ours_ok:
        notes.append(f"Our model's row is missing: {status.reason}.")
    else:
        notes.append(
            f"Our model: checkpoint {status.checkpoint} (sha256 {str(status.sha256)[:12]}…), "
            f"preset {settings.get('preset')}; the lesion mask that guides it is predicted from "
            "the inputs by its lesion head (never the reference mask)."
        )
    if curves:
        notes.append(
            "Lesion Dice/NSD/HD95 of every row come from the same trained lesion head applied to "
            "that method's fused image (with the MRI and CT), thresholded at 0.5."
        )
    else:
        notes.append(
            "Lesion Dice/NSD/HD95 need our lesion head (part of the model), so they are blank "
            "while the model is missing."
        )
    notes.append(
        "The masks are the phantoms' exact masks, so the ROI composite copies MRI into the brain "
        "and CT into the bone: it is the ROI-SSIM ceiling by construction, not a competitor."
    )
    n = len(cases)
    notes.append(
        f"{n} case{'s' if n != 1 else ''}: the confidence intervals are wide; "
        "`clinfuse benchmark` runs the larger tables (docs/BENCHMARKS.md)."
    )

    contrast_of = {c.case_id: c.contrast for c in cases}
    tables = [
        results_table(rows_by_method, caption=command or ""),
        contrast_table(rows_by_method, contrast_of),
    ]
    if scores:
        tables.append(calibration_table(scores))
    title = "clinfuse demo: ROI-guided MRI–CT fusion on held-out stroke phantoms"
    summary_md = out_dir / "summary.md"
    from clinfuse.io.atomic import write_text_atomic

    write_text_atomic(summary_md, summary_markdown(tables, notes, command, title))
    provenance = {
        "cases": ", ".join(f"{c.case_id} (seed {c.seed})" for c in cases),
        "phantom grid": f"{settings.get('shape')} voxels at {settings.get('spacing')} mm",
        "checkpoint": f"{status.checkpoint} (sha256 {status.sha256})"
        if ours_ok
        else f"none ({status.reason})",
        "preset": settings.get("preset"),
        "device": settings.get("device"),
        "bootstrap": "percentile, 2000 resamples, seed 0 (clinfuse.evaluation.stats)",
        "timings (s)": {k: f"{v:.1f}" for k, v in timings.items()},
    }
    report = write_report(
        out_dir / "report.html",
        title=title,
        intro=(
            "Each held-out phantom (never trained on) was fused by every method; fused images are "
            "scored inside the brain against the MRI and inside the skull against the bone-window "
            "CT (ROI-SSIM, PSNR), and the lesion is segmented from each fused image."
        ),
        tables=tables,
        images=plots + images,
        per_case_csv=per_case_csv,
        commands=[command] if command else [],
        provenance=provenance,
        notes=notes,
    )
    return report, summary_md
