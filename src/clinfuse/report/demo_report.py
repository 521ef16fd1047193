"""The demo's figures, `summary.md` and `report.html`, from the per-method results of a run.

Kept apart from `clinfuse.demo` (which runs the methods) so the report layout can change
without touching the pipeline, and so `clinfuse benchmark`-style results can reuse it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse.report.html import DISCLAIMER, Table, format_stat, write_report
from clinfuse.report.model_card import lesion_head_status
from clinfuse.report.montage import comparison_montage, save_montage
from clinfuse.report.plots import save_metric_plot, save_reliability_panels

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
# Paired tests: ours against each baseline on the quality metrics (not on time).
PAIRED = tuple(m for m in METRICS if m[0] != "fuse_seconds")
LOWER_IS_BETTER = ("hd95", "fuse_seconds")
PSNR_KEYS = ("brain_psnr", "bone_psnr")
NEIGHBOURHOOD_TITLE = "lesion neighbourhood"


def _summary_text(values: Sequence[float]) -> str:
    """`mean ± sd [95 % CI]` of finite values (the evaluation harness's bootstrap, seed 0)."""
    from clinfuse.evaluation.stats import BOOT_SEED, summarise_metric

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return "—"
    s = summarise_metric(x, rng=np.random.default_rng(BOOT_SEED))
    return format_stat(s.mean, s.sd, (s.ci_low, s.ci_high))


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _value(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    try:
        return float(v) if v not in (None, "") else math.nan
    except (TypeError, ValueError):
        return math.nan


def metric_cell(
    rows: Sequence[Mapping[str, Any]],
    key: str,
    no_prediction: Mapping[str, bool] | None = None,
) -> str:
    """One results cell over the cases of one method, never averaging in a stand-in value:

    - `hd95`: cases whose lesion prediction is empty (`no_prediction[case_id]`) are counted
      apart ("k of n: no prediction") instead of averaging in the image diagonal that
      `metrics.segmentation.hd95` returns for them;
    - PSNR: infinite values (the fused image equals the reference in the ROI, e.g. the ROI
      composite in the brain) are counted apart ("k of n: identical in ROI, ∞ dB");
    - otherwise `mean ± sd [95 % CI]` of the defined values.
    """
    ok = [r for r in rows if not r.get("error")]
    vals = [_value(r, key) for r in ok]
    defined = [v for v in vals if not math.isnan(v)]
    if not defined:
        return "—"
    n = len(defined)
    notes = []
    if key == "hd95" and no_prediction:
        empty = [
            bool(no_prediction.get(str(r.get("case_id")), False))
            for r, v in zip(ok, vals, strict=True)
            if not math.isnan(v)
        ]
        k = sum(empty)
        defined = [v for v, e in zip(defined, empty, strict=True) if not e]
        if k:
            notes.append(f"{k} of {n}: no prediction")
    if key in PSNR_KEYS:
        k = sum(1 for v in defined if math.isinf(v))
        defined = [v for v in defined if math.isfinite(v)]
        if k:
            notes.append(f"{k} of {n}: identical in ROI (∞ dB)")
    head = _summary_text(defined) if defined else ""
    if not head:
        return "\n".join(notes)  # every case counted apart: nothing to average
    return "\n".join([head, *notes])


def results_table(
    rows_by_method: Mapping[str, list[dict[str, Any]]],
    *,
    caption: str = "",
    no_prediction: Mapping[str, Mapping[str, bool]] | None = None,
) -> Table:
    """Method × metric table, cells `mean ± sd [95 % CI]` over cases (`metric_cell`): empty
    lesion predictions (HD95) and exact copies (PSNR ∞) are counted apart, never averaged."""
    rows = []
    for method, rows_m in rows_by_method.items():
        n_ok = sum(1 for r in rows_m if not r.get("error"))
        empty = (no_prediction or {}).get(method)
        rows.append([method, n_ok, *(metric_cell(rows_m, key, empty) for key, _ in METRICS)])
    return Table(
        "Results: mean ± sd [95 % bootstrap CI] over cases",
        ["method", "n", *(title for _, title in METRICS)],
        rows,
        caption=caption,
        highlight=[OUR_METHOD],
    )


def _fmt_diff(d: float) -> str:
    if math.isnan(d):
        return "—"
    if math.isinf(d):
        return "+∞" if d > 0 else "−∞"
    return f"{d:+.3f}"


def paired_table(
    rows_by_method: Mapping[str, list[dict[str, Any]]],
    *,
    ours: str = OUR_METHOD,
    no_prediction: Mapping[str, Mapping[str, bool]] | None = None,
) -> Table | None:
    """Paired Wilcoxon signed-rank tests (`evaluation.stats.paired_wilcoxon`) of ours against
    each other method, per metric over the cases both scored; None without our row."""
    from clinfuse.evaluation.stats import paired_wilcoxon

    if ours not in rows_by_method:
        return None

    def by_case(method: str, key: str) -> dict[str, float]:
        empty = (no_prediction or {}).get(method, {})
        out = {}
        for r in rows_by_method[method]:
            if r.get("error"):
                continue
            cid = str(r.get("case_id"))
            v = _value(r, key)
            # An empty prediction has no HD95: the pair is left out, not given the diagonal.
            out[cid] = math.nan if key == "hd95" and empty.get(cid, False) else v
        return out

    rows = []
    n_max = 0
    for method in rows_by_method:
        if method == ours:
            continue
        cells: list[Any] = [method]
        for key, _ in PAIRED:
            a, b = by_case(method, key), by_case(ours, key)
            common = [c for c in b if c in a]
            t = paired_wilcoxon(key, [a[c] for c in common], [b[c] for c in common])
            n_max = max(n_max, t.n)
            if t.n == 0:
                cells.append("—")
            else:
                p = "—" if math.isnan(t.p_value) else f"{t.p_value:.3g}"
                cells.append(f"{_fmt_diff(t.mean_diff)}\np = {p} (n = {t.n})")
        rows.append(cells)
    floor = f" With {n_max} cases the smallest possible p is {2 / 2**n_max:.3g}." if n_max else ""
    return Table(
        f"Paired Wilcoxon signed-rank tests: {ours} against each method",
        ["against", *(title for _, title in PAIRED)],
        rows,
        caption=(
            f"Each cell: mean over cases of ({ours} − that method) and the two-sided p-value of "
            "the Wilcoxon signed-rank test on the paired per-case values (scipy). A positive "
            f"difference favours {ours} except for HD95 (lower is better). Cases without a "
            "lesion prediction on either side are left out of the HD95 pairs, ∞ − ∞ PSNR pairs "
            f"are left out. No correction for multiple comparisons.{floor}"
        ),
        highlight=[],
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


@dataclass
class CalibrationResult:
    """Per method: scores of each voxel selection (`metrics.calibration.calibration_scores`)."""

    scores: dict[str, dict[str, Any]]  # method -> region -> CalibrationScores
    radius_mm: float


def demo_calibration(recorders: Mapping[str, Any], cases: Sequence[Any]) -> CalibrationResult:
    """ECE, Brier and reliability curves of the lesion head's probability on each method's
    fused image, pooled over the cases: brain voxels, brain voxels within `NEIGHBOURHOOD_MM`
    of the reference lesion (computed per case, spacing-aware), and class-balanced."""
    from clinfuse.metrics.calibration import (
        NEIGHBOURHOOD_MM,
        calibration_scores,
        lesion_neighbourhood,
    )

    scores: dict[str, dict[str, Any]] = {}
    near_of = {}
    for c in cases:
        p = c.prepared
        if p.lesion is not None:
            near_of[c.case_id] = lesion_neighbourhood(
                p.lesion, p.spacing, NEIGHBOURHOOD_MM, within=p.brain
            )
    for name, rec in recorders.items():
        probs, gts, brains, nears = [], [], [], []
        for c in cases:
            out = rec.outputs.get(c.case_id, {})
            if "lesion_prob" not in out or c.prepared.lesion is None:
                continue
            probs.append(np.clip(out["lesion_prob"], 0.0, 1.0).ravel())
            gts.append(np.asarray(c.prepared.lesion, bool).ravel())
            brains.append(np.asarray(c.prepared.brain, bool).ravel())
            nears.append(near_of[c.case_id].ravel())
        if not probs:
            continue
        scores[name] = calibration_scores(
            np.concatenate(probs),
            np.concatenate(gts),
            np.concatenate(brains),
            np.concatenate(nears),
        )
    return CalibrationResult(scores, NEIGHBOURHOOD_MM)


def _region_title(region: str, radius_mm: float) -> str:
    return f"{region} (≤ {radius_mm:g} mm)" if region == NEIGHBOURHOOD_TITLE else region


def calibration_table(result: CalibrationResult, figure: Path | None = None) -> Table:
    """ECE and Brier of the lesion head's probabilities per method and voxel selection, with
    the reliability diagram (`figure`) beside it."""
    regions: list[str] = []
    for per_region in result.scores.values():
        regions += [r for r in per_region if r not in regions]
    header = ["fused image from"]
    for r in regions:
        t = _region_title(r, result.radius_mm)
        header += [f"{t} ECE", f"{t} Brier"]
    rows = []
    for method, per_region in result.scores.items():
        cells: list[Any] = [method]
        for r in regions:
            s = per_region.get(r)
            cells += [math.nan, math.nan] if s is None else [s.ece, s.brier]
        rows.append(cells)
    counts = []
    first = next(iter(result.scores.values()), {})
    for r in regions:
        if r in first and r != "class-balanced (brain)":
            counts.append(
                f"{_region_title(r, result.radius_mm)}: {first[r].n_voxels:,} voxels, "
                f"{first[r].n_lesion:,} of them lesion"
            )
    return Table(
        "Lesion probability calibration (ECE over 15 bins, Brier; cases pooled)",
        header,
        rows,
        caption=(
            "The same lesion head is applied to every method's fused image. Brain: every brain "
            "voxel counts once, so the many easy non-lesion voxels dominate and a head that "
            "predicts almost nothing still scores near 0. Lesion neighbourhood: brain voxels "
            f"within {result.radius_mm:g} mm of the reference lesion, where the head has to "
            "decide. Class-balanced: brain voxels weighted so lesion and non-lesion voxels "
            "count half each. " + "; ".join(counts) + "."
        ),
        highlight=[OUR_METHOD],
        figure=(
            (
                "Reliability: observed lesion frequency per predicted-probability bin, per voxel "
                "selection (diagonal = calibrated); right: voxels per bin.",
                figure,
            )
            if figure is not None
            else None
        ),
    )


def no_prediction_flags(
    rows_by_method: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, dict[str, bool]]:
    """method -> case -> True when the scored lesion mask (the head's probability on that
    method's fused image after `clean_mask`) was empty: the evaluation harness's per-case flag
    (`evaluation.percase.no_prediction`); its HD95 is then undefined (counted apart, never
    averaged), as in the harness's own summaries."""
    from clinfuse.evaluation.percase import no_prediction

    return {
        m: {str(r.get("case_id")): no_prediction(dict(r)) for r in rows if not r.get("error")}
        for m, rows in rows_by_method.items()
    }


def summary_markdown(
    tables: Sequence[Table], notes: Sequence[str], command: str | None, title: str
) -> str:
    """`summary.md`: the report's tables as markdown, its notes and the reproducing command."""
    from clinfuse.report.html import format_cell

    lines = [f"# {title}", "", f"**{DISCLAIMER}**", ""]
    lines += [f"> {n}\n" for n in notes]
    for t in tables:
        lines += [f"## {t.title}", ""]
        lines.append("| " + " | ".join(str(h) for h in t.header) + " |")
        lines.append("|---" * len(t.header) + "|")
        for row in t.rows:
            cells = (format_cell(v).replace("\n", "; ") for v in row)
            lines.append("| " + " | ".join(cells) + " |")
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
    if ours_ok and "lesion_mask" in out:
        # the scored mask: p >= 0.5 cleaned by the head's LesionMaskRule
        overlay["predicted lesion"] = out["lesion_mask"]
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
    columns = list(panels) + (["lesion overlay"] if overlay else [])
    overlay_text = ""
    if overlay:
        what = " and ".join(overlay)
        overlay_text = f"; the last column outlines {what} on the {label} image"
    return [
        (f"{title}: {' | '.join(columns)}{overlay_text}", montage),
        (
            f"{case.case_id}: {' | '.join(images)} on the same slices"
            + (" (reference lesion outlined in cyan)" if ref is not None else ""),
            cmp_path,
        ),
    ]


def write_demo_report(
    out_dir: Path,
    *,
    cases: Sequence[Any],
    recorders: Mapping[str, Any],
    rows_by_method: Mapping[str, list[dict[str, Any]]],
    status: Any,
    per_case_csv: Path,
    settings: Mapping[str, Any],
    command: str | None,
    timings: Mapping[str, float],
) -> tuple[Path, Path]:
    """Write `figures/*.png`, `summary.md` and `report.html` into `out_dir`; return the last two.

    `recorders` map method -> object with `.outputs[case_id]` = {"fused", "lesion_prob"?,
    "lesion_mask"? (the scored mask), "uncertainty"?}; `rows_by_method` are the evaluation
    harness rows (their `no_predicted_lesion` flags decide "no prediction"); `status` says
    whether our model ran (`.available`, `.reason`, `.checkpoint`, `.sha256`). Calibration is
    computed here from the recorded lesion probabilities (`demo_calibration`, three voxel
    selections).
    """
    fig_dir = out_dir / "figures"
    ours_ok = bool(status.available) and OUR_METHOD in rows_by_method
    images: list[tuple[str, Path]] = []
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
    cal = demo_calibration(recorders, cases)
    reliability = None
    if cal.scores:
        panels: dict[str, dict[str, Any]] = {}
        for method, per_region in cal.scores.items():
            for region, sc in per_region.items():
                if sc.n_voxels:
                    title = _region_title(region, cal.radius_mm)
                    panels.setdefault(title, {})[method] = sc.curve
        reliability = save_reliability_panels(fig_dir / "reliability.png", panels)
    for case in cases:
        images += _case_figures(fig_dir, case, recorders, ours_ok)
    empty = no_prediction_flags(rows_by_method)

    notes = []
    if not ours_ok:
        notes.append(f"Our model's row is missing: {status.reason}.")
    else:
        notes.append(
            f"Our model: checkpoint {status.checkpoint} (sha256 {str(status.sha256)[:12]}…), "
            f"preset {settings.get('preset')}; the lesion mask that guides it is predicted from "
            "the inputs by its lesion head (never the reference mask)."
        )
    if getattr(status, "checkpoint", None) and (ours_ok or cal.scores):
        notes.append(lesion_head_status(status.checkpoint))
    if cal.scores:
        notes.append(
            "Lesion Dice/NSD/HD95 of every row come from the same trained lesion head applied to "
            "that method's fused image (with the MRI and CT), thresholded at 0.5."
        )
        seqs = " / ".join(sorted({str(c.contrast) for c in cases}))
        sp = [float(v) for v in settings.get("spacing") or ()]
        grid = f"{sp[0]:g}" if sp and len(set(sp)) == 1 else " x ".join(f"{v:g}" for v in sp)
        grid = f"{grid or '?'} mm"
        if settings.get("work_spacing"):
            grid += f", worked at {float(settings['work_spacing']):g} mm"
        notes.append(
            f"These phantoms ({seqs}, at {grid}) are the demo's quick "
            "setting, not the lesion head's benchmark: its held-out numbers and calibration in "
            "the model card come from `python benchmarks/lesion_eval.py` on 2 mm phantoms of "
            "all five MRI sequences and both lesion kinds, so the lesion columns here can differ "
            "from them."
        )
    else:
        notes.append(
            "Lesion Dice/NSD/HD95 need our lesion head (part of the model), so they are blank "
            "while the model is missing."
        )
    n_empty = sum(v for per in empty.values() for v in per.values())
    if n_empty:
        notes.append(
            f"HD95 is undefined when the head predicts no lesion voxel ({n_empty} method × case "
            "pairs here): those cases are shown as 'no prediction' and left out of the HD95 mean "
            "and of the paired tests, instead of counting the image diagonal as a distance. "
            "Their Dice and NSD are 0 and stay in the means."
        )
    if any(
        math.isinf(_value(r, k))
        for rows in rows_by_method.values()
        for r in rows
        for k in PSNR_KEYS
    ):
        notes.append(
            "PSNR is infinite (∞ dB) when a fused image equals the reference inside the ROI (zero "
            "error), as the ROI composite does by construction: such cases are counted apart "
            "('identical in ROI') and the mean ± sd is over the other cases."
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
        results_table(rows_by_method, caption=command or "", no_prediction=empty),
    ]
    paired = paired_table(rows_by_method, no_prediction=empty) if ours_ok else None
    if paired is not None:
        tables.append(paired)
    tables.append(contrast_table(rows_by_method, contrast_of))
    if cal.scores:
        tables.append(calibration_table(cal, reliability))
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
