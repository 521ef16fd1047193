"""Does the ensemble std of `clinfuse fuse --samples K` point at the fusion's errors? Measured on
held-out phantoms against the exact ROI composite (docs/UNCERTAINTY.md).

    OMP_NUM_THREADS=1 python benchmarks/uncertainty.py --n 4 --samples 4 [--out runs/uncertainty]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_gradient_magnitude
from scipy.stats import rankdata, spearmanr

RESULTS = Path(__file__).resolve().parent / "results"
# Same geometry as the 3D benchmark (benchmarks/bench3d_ours.sh) and the shipped model's
# training data: 64x64x48 voxels at 3 mm. Seeds from 2000: never trained on (training 0-23),
# not the benchmark's 1000-1009 nor the demo's 9000+.
SHAPE = (64, 64, 48)
SPACING = (3.0, 3.0, 3.0)
TOP_FRACTION = 0.10  # "large error" = the top 10 % of |mean - composite| in the region
BORDER_VOXELS = 2  # border = the 2 voxel layers on each side of a brain or bone mask edge
REGIONS = ("head", "brain", "bone")  # where rank metrics are computed (head = brain | bone)
STD_REGIONS = ("brain", "bone", "lesion", "border", "interior")


# --------------------------------------------------------------------------- metric functions


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `score` for detecting `positive`, by ranks (Mann-Whitney U).

    Ties get average ranks, so they count one half. NaN when either class is empty.
    """
    s = np.asarray(score, dtype=np.float64).ravel()
    pos = np.asarray(positive, dtype=bool).ravel()
    n1 = int(pos.sum())
    n0 = pos.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def top_fraction(values: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Bool mask of the largest `fraction` of `values` (>= the 'higher' quantile 1 - fraction)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return np.zeros(v.shape, dtype=bool)
    return v >= np.quantile(v, 1.0 - fraction, method="higher")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equally long samples (NaN if either is constant)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def border_region(masks: Sequence[np.ndarray], width: int = BORDER_VOXELS) -> np.ndarray:
    """Voxels within `width` voxels of the edge of any mask, on both sides of it.

    Inside a mask: Euclidean distance (in voxels) to the nearest voxel outside it <= width, so
    width 2 keeps the two outermost layers; outside: the same towards the mask. An empty or full
    mask has no edge.
    """
    out = np.zeros(np.shape(masks[0]), dtype=bool)
    for m in masks:
        m = np.asarray(m, dtype=bool)
        if not m.any() or m.all():
            continue
        out |= (m & (distance_transform_edt(m) <= width)) | (
            ~m & (distance_transform_edt(~m) <= width)
        )
    return out


def ensemble_rmse(
    mean: np.ndarray, std: np.ndarray, ref: np.ndarray, mask: np.ndarray
) -> tuple[float, float]:
    """(RMSE of the K-sample mean, RMSE of one sample averaged over the K) against `ref`.

    With the population std (ddof 0, as `fuse_prepared` computes it), the samples' average
    squared error is exactly (mean - ref)^2 + std^2 per voxel, so the single-sample error needs
    no access to the individual samples.
    """
    m = np.asarray(mask, dtype=bool)
    d2 = (mean[m].astype(np.float64) - ref[m]) ** 2
    s2 = std[m].astype(np.float64) ** 2
    return float(np.sqrt(d2.mean())), float(np.sqrt((d2 + s2).mean()))


def uncertainty_metrics(
    mean: np.ndarray,
    std: np.ndarray,
    ref: np.ndarray,
    brain: np.ndarray,
    bone: np.ndarray,
    lesion: np.ndarray | None = None,
    proxy: np.ndarray | None = None,
) -> dict[str, float]:
    """Every number of the benchmark for one case (arrays of one shape, masks bool).

    `ref` is the target (exact ROI composite); error = |mean - ref|. For each region of REGIONS:
    Spearman(std, error), AUROC of std for the top-10 % error voxels of that region, the same two
    for `proxy` (a map computed from the inputs alone, for reference), RMSE of the mean and of a
    single sample and the relative reduction. Mean std and mean error in STD_REGIONS (border:
    `border_region([brain, bone])`; interior: head minus border). `std_over_rmse`: RMS of std
    over RMSE of the mean in the head (1 = the spread is as large as the error).
    """
    brain = np.asarray(brain, dtype=bool)
    bone = np.asarray(bone, dtype=bool)
    head = brain | bone
    err = np.abs(mean.astype(np.float64) - ref)
    border = border_region([brain, bone])
    regions = {"head": head, "brain": brain, "bone": bone}
    out: dict[str, float] = {}
    for name in REGIONS:
        r = regions[name]
        e, s = err[r], std[r]
        big = top_fraction(e)
        out[f"spearman_{name}"] = spearman(s, e)
        out[f"auroc_{name}"] = auroc(s, big)
        if proxy is not None:
            out[f"proxy_spearman_{name}"] = spearman(proxy[r], e)
            out[f"proxy_auroc_{name}"] = auroc(proxy[r], big)
        rm, r1 = ensemble_rmse(mean, std, ref, r)
        out[f"rmse_mean_{name}"] = rm
        out[f"rmse_single_{name}"] = r1
        out[f"rmse_reduction_{name}"] = 1.0 - rm / r1 if r1 > 0 else float("nan")
    std_regions = {
        "brain": brain,
        "bone": bone,
        "lesion": np.zeros_like(head) if lesion is None else (np.asarray(lesion, bool) & brain),
        "border": border,
        "interior": head & ~border,
    }
    for name, r in std_regions.items():
        out[f"std_{name}"] = float(std[r].mean()) if r.any() else float("nan")
        out[f"err_{name}"] = float(err[r].mean()) if r.any() else float("nan")
    rms_std = float(np.sqrt((std[head].astype(np.float64) ** 2).mean()))
    out["std_over_rmse"] = rms_std / out["rmse_mean_head"] if out["rmse_mean_head"] > 0 else 0.0
    return out


# --------------------------------------------------------------------------- the run


def _phantoms(n: int, seed: int) -> list[tuple[int, str, Any]]:
    """(seed, MRI contrast, phantom) of the cases `clinfuse synth --n N --shape 48 64 64 --spacing
    3 3 3 --seed SEED --contrast mixed --lesion ischaemic` writes (same per-case config and
    generator), kept in memory."""
    from clinfuse.phantom import PhantomConfig, generate_phantom
    from clinfuse.phantom.dataset import case_config

    base = PhantomConfig(shape=SHAPE, spacing=SPACING)
    out = []
    for i in range(n):
        cfg = case_config(base, i, "mixed", "ischaemic")
        ph = generate_phantom(cfg, np.random.default_rng(seed + i))
        ph.case.case_id = f"phantom_seed{seed + i}"
        out.append((seed + i, cfg.mri_contrast, ph))
    return out


def _model_card_step(checkpoint: Path) -> str:
    """The 'step N' the model card next to the checkpoint states, if any (for the doc)."""
    card = checkpoint.with_suffix(".md")
    if not card.is_file():
        return ""
    import re

    m = re.search(r"step \*\*(\d+)\*\*", card.read_text(encoding="utf-8"))
    return m.group(1) if m else ""


def _git_state() -> str:
    """HEAD's short hash, "+dirty" when src/ has uncommitted edits (the code that ran)."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        # tiny values (the RMSE reduction) would all print as 0.000
        return f"{v:.1e}" if 0 < abs(v) < 5e-3 else f"{v:.3f}"
    return str(v)


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean over cases of every numeric column (NaN-aware: a case without a value is skipped)."""
    keys = [k for k, v in rows[0].items() if isinstance(v, float)]
    return {k: float(np.nanmean([float(r[k]) for r in rows])) for k in keys}


def markdown(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    """The results as markdown: how they were made, then three tables (mean over cases last)."""
    mean = {"case": "**mean**", "contrast": "", **summarise(rows)}
    table_rows = [*rows, mean]
    tables = [
        (
            "Does std rank the errors? (Spearman std vs |mean - composite|; AUROC of std for the "
            "top-10 % error voxels; `edge` = the same for the composite's gradient magnitude)",
            [
                ("spearman_head", "ρ head"),
                ("spearman_brain", "ρ brain"),
                ("spearman_bone", "ρ bone"),
                ("auroc_head", "AUROC head"),
                ("auroc_brain", "AUROC brain"),
                ("auroc_bone", "AUROC bone"),
                ("proxy_spearman_head", "edge ρ head"),
                ("proxy_auroc_head", "edge AUROC head"),
                ("proxy_auroc_brain", "edge AUROC brain"),
                ("proxy_auroc_bone", "edge AUROC bone"),
            ],
        ),
        (
            "Where is std high? Mean std (and mean |error|) per region, model range [-2, 2]",
            [
                ("std_brain", "std brain"),
                ("std_bone", "std bone"),
                ("std_lesion", "std lesion"),
                ("std_border", "std border"),
                ("std_interior", "std interior"),
                ("err_brain", "err brain"),
                ("err_bone", "err bone"),
                ("err_lesion", "err lesion"),
                ("err_border", "err border"),
                ("err_interior", "err interior"),
            ],
        ),
        (
            f"Does averaging K = {meta['samples']} samples help? RMSE vs the composite of the "
            "mean and of one sample (expected over the K), and the relative reduction",
            [
                ("rmse_single_head", "1 sample head"),
                ("rmse_mean_head", "mean head"),
                ("rmse_reduction_head", "reduction head"),
                ("rmse_reduction_brain", "reduction brain"),
                ("rmse_reduction_bone", "reduction bone"),
                ("std_over_rmse", "RMS std / RMSE"),
                ("brain_ssim", "brain ROI-SSIM"),
                ("bone_ssim", "bone ROI-SSIM"),
            ],
        ),
    ]
    lines = [
        "# Ensemble uncertainty vs error on held-out phantoms",
        "",
        f"Command: `{meta['command']}`  ",
        f"Checkpoint: `{meta['checkpoint']}` (sha256 {meta['sha256'][:12]}, step "
        f"{meta['step']}); preset stroke, window=whole, DDIM-{meta['steps']}, "
        f"{meta['samples']} samples (sampling seed {meta['sample_seed']}), uncertainty_blend 0"
        f"{''.join(f', {k}={v}' for k, v in meta['overrides'].items())}; "
        f"lesion guidance from the lesion head's own prediction. Phantoms: seeds "
        f"{meta['seed']}..{meta['seed'] + meta['n'] - 1}, 64x64x48 at 3 mm, contrast cycling "
        "T1/T2/ADC, ischaemic lesion; reference = exact ROI composite (exact masks). "
        f"Code: {meta.get('code', 'unknown')}. Wall time {meta['seconds']:.0f} s.",
        "",
    ]
    for title, cols in tables:
        lines += [f"**{title}**", ""]
        lines.append("| case | MRI | " + " | ".join(c[1] for c in cols) + " |")
        lines.append("|---|---|" + "---|" * len(cols))
        for r in table_rows:
            cells = " | ".join(_fmt(r.get(k, float("nan"))) for k, _ in cols)
            lines.append(f"| {r['case']} | {r['contrast']} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fuse each phantom with K samples, measure, and write markdown + CSV after every case."""
    import torch

    from clinfuse.baselines.composite import composite_fusion
    from clinfuse.io.atomic import check_output_dir, write_text_atomic
    from clinfuse.metrics.roi import roi_ssim
    from clinfuse.pipeline import fuse_prepared, load_model
    from clinfuse.preprocess.pipeline import preprocess_case

    torch.set_num_threads(args.threads)
    out = check_output_dir(args.out, overwrite=args.overwrite)
    loaded = load_model(args.checkpoint, 3, "cpu")
    step = loaded.step if loaded.step is not None else _model_card_step(Path(loaded.path))
    meta: dict[str, Any] = {
        "command": args.command,
        "checkpoint": Path(loaded.path).name,
        "sha256": loaded.sha256,
        "step": step,
        "steps": args.steps,
        "samples": args.samples,
        "sample_seed": args.sample_seed,
        "seed": args.seed,
        "n": args.n,
        "seconds": 0.0,
        "overrides": dict(args.overrides),
        "code": _git_state(),
    }
    name = f"uncertainty_{args.tag}" if args.tag else "uncertainty"
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for case_seed, contrast, ph in _phantoms(args.n, args.seed):
        t0 = time.perf_counter()
        prepared = preprocess_case(ph.case)
        res = fuse_prepared(
            prepared,
            loaded.model,
            preset="stroke",
            # the raw ensemble mean: the blend would move high-std voxels toward the reference
            overrides={"uncertainty_blend": 0.0, **args.overrides},
            steps=args.steps,
            samples=args.samples,
            seed=args.sample_seed,
            lesion="predicted",
            patch_size=loaded.patch_size,
            window="whole",
        )
        if res.uncertainty is None:
            raise SystemExit("--samples must be >= 2 to have a std")
        ref = composite_fusion(prepared)
        # a free map computed from the inputs alone: does std know more than "errors sit at
        # edges"? (sigma 1 voxel)
        proxy = gaussian_gradient_magnitude(ref.astype(np.float64), sigma=1.0)
        m = uncertainty_metrics(
            res.fused,
            res.uncertainty,
            ref,
            prepared.brain,
            prepared.bone,
            prepared.lesion,
            proxy,
        )
        row: dict[str, Any] = {
            "case": ph.case.case_id,
            "contrast": contrast,
            "seed": case_seed,
            "brain_ssim": roi_ssim(res.fused, prepared.mri, prepared.brain),
            "bone_ssim": roi_ssim(res.fused, prepared.ct_bone, prepared.bone),
            **m,
            "lesion_voxels": int(prepared.lesion.sum()) if prepared.lesion is not None else 0,
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        meta["seconds"] = time.perf_counter() - t_start
        print(
            f"{row['case']} {row['contrast']}: rho head {m['spearman_head']:.3f} "
            f"AUROC head {m['auroc_head']:.3f} reduction {m['rmse_reduction_head']:.3f} "
            f"({row['seconds']:.0f} s)",
            flush=True,
        )
        md, csv_text = markdown(rows, meta), _csv_text(rows)
        for folder in (out, RESULTS) if args.copy_results else (out,):
            write_text_atomic(folder / f"{name}.md", md + "\n")
            write_text_atomic(folder / f"{name}_per_case.csv", csv_text)
    summary = {"meta": meta, "mean": summarise(rows)}
    write_text_atomic(out / f"{name}.json", json.dumps(summary, indent=2) + "\n")
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4, help="number of held-out phantoms")
    p.add_argument("--samples", type=int, default=4, help="ensemble size K (>= 2)")
    p.add_argument("--seed", type=int, default=2000, help="phantom seed of the first case")
    p.add_argument("--sample-seed", type=int, default=0, help="sampling seed (fuse's --seed)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped one")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=Path("runs/uncertainty"), help="(git-ignored)")
    p.add_argument("--overwrite", action="store_true", help="replace files in --out")
    p.add_argument(
        "--no-copy",
        dest="copy_results",
        action="store_false",
        help="do not copy the markdown/CSV to benchmarks/results/ (quick trial runs)",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="guidance override as in `clinfuse evaluate --option` (e.g. eta=0), repeatable",
    )
    p.add_argument("--tag", default="", help="name results uncertainty_TAG.* (e.g. unguided)")
    args = p.parse_args(argv)
    from clinfuse.cli._method_options import method_options
    from clinfuse.diffusion.guidance import load_preset
    from clinfuse.errors import ClinfuseInputError

    try:
        args.overrides = method_options(None, None, args.option)
        load_preset("stroke", args.overrides)  # a bad key or value fails before any work
    except ClinfuseInputError as e:
        p.error(str(e))
    if args.n < 1 or args.samples < 2 or args.steps < 1 or args.threads < 1:
        p.error("need --n >= 1, --samples >= 2, --steps >= 1, --threads >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    import sys

    args = parse_args(argv)
    args.command = "OMP_NUM_THREADS=1 python benchmarks/uncertainty.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    run(args)


if __name__ == "__main__":
    main()
