"""Lesion head benchmark (issue 10): segmentation, calibration and what the lesion term does.

    python benchmarks/lesion_eval.py --checkpoint CKPT --out OUT [--phantoms 12] [--fuse-cases 3]

Cases (never trained on): held-out phantoms at 2 mm (`clinfuse synth` generator, seeds
7000 + i (`--first-seed`), all five contrasts cycled, ischaemic / haemorrhagic alternating,
one lesion each; `--territories branch` draws the ischaemic ones as 1-10 mL branch infarcts,
a size the default sets never hold: docs/PHANTOMS.md) and
the real stroke T2 test case (`clinical_stroke_t2_lesion`, the hand-drawn 38 mL lesion, pseudo-CT
from the shared generator exactly as benchmarks/real3d.py builds it), prepared at 2 mm.

(a) The head on each case with the ROI composite as the fused channel (the fusion a perfect
model gives) and with average fusion: Dice, NSD@2 mm, HD95 (empty prediction = "no
prediction", never a number), with the 95 % percentile-bootstrap CI of the mean Dice
(`clinfuse.evaluation.stats.bootstrap_ci`: 2000 resamples, seed 0) and, for the phantoms in the
0.5-80 mL range, Dice and lesions found by MRI sequence and lesion kind; calibration ECE (15
bins) / Brier over brain voxels, lesion neighbourhood (10 mm) and class-balanced, with their
reliability diagram (`reliability.png`) and the per-bin table of the phantoms' lesion
neighbourhood. The real case is also scored on its native 1 mm grid.
(b) With diffusion (first `--fuse-cases` phantoms + the real case; `--option key=value` overrides
the guidance of every fuse): ours with the lesion term
guided by the head's own mask (line 7), with the lesion term off (gamma = 0), and with the
reference mask ("oracle", labelled): border sharpness (mean gradient magnitude on the reference
lesion border, as a ratio to the MRI's), the head's Dice on the final fused image, brain / bone
ROI-SSIM.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "volumes"
sys.path.insert(0, str(Path(__file__).resolve().parent))
IN_RANGE_ML = (0.5, 80.0)  # issue 10's lesion sizes


def held_out_phantoms(
    n: int,
    spacing: float = 2.0,
    first_seed: int = 7000,
    lesion_ml: tuple[float, float] | None = None,
    territories: tuple[str, ...] | None = None,
) -> list[Any]:
    """`n` phantoms, contrasts cycled, ischaemic/haemorrhagic alternating; `lesion_ml`: lesions
    redrawn into that volume range (`PhantomConfig.lesion_ml`), else kept as drawn;
    `territories`: where the ischaemic ones are drawn (`PhantomConfig.ischaemic_territories`;
    None: the default, which every held-out set of sessions 1-28 used)."""
    return [held_out_phantom(i, spacing, first_seed, lesion_ml, territories) for i in range(n)]


def held_out_phantom(
    i: int,
    spacing: float = 2.0,
    first_seed: int = 7000,
    lesion_ml: tuple[float, float] | None = None,
    territories: tuple[str, ...] | None = None,
) -> tuple[str, Any, None]:
    """The `i`-th phantom of the set starting at `first_seed` (seed `first_seed + i`; its
    sequence and lesion kind follow from `i`), prepared: ("phantom", prepared case, None)."""
    from clinfuse.phantom import MRI_CONTRASTS, PhantomConfig, generate_phantom
    from clinfuse.phantom.config import ISCHAEMIC_TERRITORIES
    from clinfuse.preprocess.pipeline import preprocess_case

    cfg = PhantomConfig(
        shape=(96, 96, 72),
        spacing=(spacing,) * 3,
        mri_contrast=MRI_CONTRASTS[i % len(MRI_CONTRASTS)],  # type: ignore[arg-type]
        lesion="ischaemic" if i % 2 == 0 else "haemorrhagic",
        lesion_ml=lesion_ml,
        ischaemic_territories=territories or ISCHAEMIC_TERRITORIES,
    )
    ph = generate_phantom(cfg, first_seed + i)
    ph.case.case_id = f"phantom_{first_seed + i}_{cfg.mri_contrast}_{cfg.lesion}"
    return ("phantom", preprocess_case(ph.case), None)


def held_out_id(case_id: str) -> tuple[str, str] | None:
    """(MRI sequence, lesion kind) of a `held_out_phantom` case id, None for any other id."""
    from clinfuse.phantom import MRI_CONTRASTS
    from clinfuse.phantom.config import LESION_KINDS

    parts = str(case_id).split("_")
    if len(parts) == 4 and parts[0] == "phantom" and parts[2] in MRI_CONTRASTS:
        return (parts[2], parts[3]) if parts[3] in LESION_KINDS else None
    return None


def real_stroke(spacing: float = 2.0) -> tuple[str, Any, Any]:
    from clinfuse.preprocess.pipeline import preprocess_case
    from real3d import build_cases  # the shared builder of the real test cases

    case = next(c for c in build_cases() if c.name == "stroke_t2").case
    native = preprocess_case(case)
    work = preprocess_case(case, spacing=spacing)
    return ("real", work, native)


def head_prob(model: Any, fused: np.ndarray, prep: Any) -> np.ndarray:
    from clinfuse.nn.lesion_head import sliding_logits, told_contrast

    head = model.lesion_head
    f = torch.from_numpy(np.ascontiguousarray(fused, np.float32))[None, None]
    c = torch.from_numpy(np.ascontiguousarray(prep.stack(), np.float32))[None]
    # a head with sequence slots is told the case's sequence (phantom / real T2: known)
    with torch.no_grad(), told_contrast(head, prep.mri_contrast):
        logits = sliding_logits(head, f, c if head.inputs != "fused" else None)
    prob = torch.sigmoid(logits)[0, 0].numpy()
    return prob * prep.brain


def seg_scores(
    prob: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...], rule: Any, mri: np.ndarray
) -> dict:
    from clinfuse.metrics.segmentation import dice, hd95, nsd

    pred = rule.apply(prob, spacing, 0.5, mri)
    empty = not pred.any()
    return {
        "dice": float(dice(pred, gt)),
        "nsd2": float("nan") if empty else float(nsd(pred, gt, spacing, tau=2.0)),
        "hd95": float("nan") if empty else float(hd95(pred, gt, spacing)),
        "pred_ml": float(pred.sum() * np.prod(spacing) / 1000.0),
        "gt_ml": float(gt.sum() * np.prod(spacing) / 1000.0),
        "no_prediction": empty,
    }


def cal_scores(
    probs: list[np.ndarray], gts: list[np.ndarray], brains: list, spacings: list
) -> dict:
    from clinfuse.metrics.calibration import calibration_scores, lesion_neighbourhood

    p = np.concatenate([pr[b] for pr, b in zip(probs, brains, strict=True)])
    y = np.concatenate([g[b] for g, b in zip(gts, brains, strict=True)])
    near = np.concatenate(
        [
            lesion_neighbourhood(g, s, within=b)[b]
            for g, b, s in zip(gts, brains, spacings, strict=True)
        ]
    )
    cal = calibration_scores(p, y, np.ones_like(y), near)
    return {
        k: {
            "ece": v.ece,
            "brier": v.brier,
            "n": v.n_voxels,
            "curve": {
                "confidence": v.curve.confidence.tolist(),
                "accuracy": v.curve.accuracy.tolist(),
                "counts": v.curve.counts.tolist(),
            },
        }
        for k, v in cal.items()
    }


def reliability_lines(calib: dict[str, dict[str, Any]], out: Path) -> list[str]:
    """`reliability.png` in `out` (one row per voxel selection, one line per cases / fused
    channel; `clinfuse.report.plots.save_reliability_panels`, the demo report's figure) and the
    per-bin table of the held-out phantoms' lesion neighbourhood with the composite channel, the
    selection where the head has to decide. Empty when no entry has a curve."""
    from clinfuse.metrics.calibration import N_BINS, REGION_NEIGHBOURHOOD, ReliabilityCurve
    from clinfuse.report.plots import save_reliability_panels

    centres = (np.arange(N_BINS) + 0.5) / N_BINS
    panels: dict[str, dict[str, ReliabilityCurve]] = {}
    for label, regions in calib.items():
        for region, v in regions.items():
            if "curve" not in v:
                continue
            c = v["curve"]
            panels.setdefault(region, {})[label] = ReliabilityCurve(
                centres,
                np.asarray(c["accuracy"], float),
                np.asarray(c["confidence"], float),
                np.asarray(c["counts"], np.int64),
            )
    if not panels:
        return []
    save_reliability_panels(out / "reliability.png", panels)
    lines = ["", "Reliability diagram: `reliability.png`."]
    curve = panels.get(REGION_NEIGHBOURHOOD, {}).get("phantom/composite")
    if curve is not None:
        lines += [
            "",
            "Held-out phantoms, composite channel, lesion neighbourhood (10 mm), per bin:",
            "",
            "| bin | voxels | mean predicted | observed lesion frequency |",
            "|---|---|---|---|",
        ]
        for k in range(N_BINS):
            if curve.counts[k]:
                lines.append(
                    f"| {k / N_BINS:.2f}-{(k + 1) / N_BINS:.2f} | {int(curve.counts[k])} | "
                    f"{curve.confidence[k]:.3f} | {curve.accuracy[k]:.3f} |"
                )
    return lines


def border_sharpness(img: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Mean gradient magnitude (model units per mm) on the reference lesion's border voxels."""
    border = gt ^ ndimage.binary_erosion(gt)
    border |= ndimage.binary_dilation(gt) & ~gt
    grads = np.gradient(img.astype(np.float64), *spacing)
    mag = np.sqrt(sum(g**2 for g in grads))
    return float(mag[border].mean()) if border.any() else float("nan")


def fmt(v: float, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--phantoms", type=int, default=12)
    ap.add_argument(
        "--first-seed",
        type=int,
        default=7000,
        help="seeds of the held-out phantoms: first, first + 1, ... (never a training seed)",
    )
    ap.add_argument(
        "--lesion-ml",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="redraw the phantoms' lesions into LOW-HIGH mL (issue 10: 0.5 80); default: as drawn",
    )
    ap.add_argument(
        "--territories",
        default=None,
        help="comma list of MCA, ACA, PCA, lacune, branch: where the ischaemic lesions are "
        "drawn (default: the first four; branch = 1-10 mL cortical branch infarcts, "
        "docs/PHANTOMS.md). A different list defines a different held-out set.",
    )
    ap.add_argument("--fuse-cases", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument(
        "--option",
        action="append",
        default=[],
        help="guidance override key=value for every fuse of part (b), e.g. roi_final_only=false",
    )
    args = ap.parse_args()
    from clinfuse.cli._method_options import method_options

    guidance_options = method_options(None, None, args.option)
    from clinfuse.baselines import BASELINES
    from clinfuse.pipeline import load_model
    from clinfuse.training.data import training_target

    t0 = time.time()
    loaded = load_model(args.checkpoint, 3)
    model = loaded.model.eval()
    rule = model.lesion_head.mask_rule
    lesion_ml = tuple(args.lesion_ml) if args.lesion_ml else None
    from clinfuse.phantom.config import parse_territories

    territories = parse_territories(args.territories)
    cases = held_out_phantoms(
        args.phantoms, first_seed=args.first_seed, lesion_ml=lesion_ml, territories=territories
    )
    if not args.no_real:
        cases.append(real_stroke())
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    store: dict[str, dict[str, list]] = {}
    for kind, prep, native in cases:
        gt = prep.lesion.astype(bool)
        for name in ("composite", "average"):
            fused = training_target(prep, 1.0) if name == "composite" else BASELINES[name](prep)
            prob = head_prob(model, np.asarray(fused), prep)
            r = {"case": prep.case_id, "kind": kind, "fused": name, "grid_mm": 2.0}
            r.update(seg_scores(prob, gt, prep.spacing, rule, prep.mri))
            rows.append(r)
            s = store.setdefault(f"{kind}/{name}", {"p": [], "g": [], "b": [], "s": []})
            # the probability a reader is given: the head's near-mask temperature, if it has one
            s["p"].append(
                rule.calibrated(prob, rule.apply(prob, prep.spacing, 0.5, prep.mri), prep.spacing)
            )
            s["g"].append(gt)
            s["b"].append(prep.brain)
            s["s"].append(prep.spacing)
            if native is not None and name == "composite":
                from clinfuse.preprocess.resample import resample_to_grid

                up = resample_to_grid(prob, prep.affine, native.shape, native.affine)
                r2 = {"case": prep.case_id, "kind": kind, "fused": name, "grid_mm": 1.0}
                r2.update(
                    seg_scores(up * native.brain, native.lesion, native.spacing, rule, native.mri)
                )
                rows.append(r2)
            print(
                f"{time.time() - t0:6.0f}s {prep.case_id} {name}: Dice {r['dice']:.3f}", flush=True
            )
    calib = {k: cal_scores(v["p"], v["g"], v["b"], v["s"]) for k, v in store.items()}

    # (b) the lesion term on / off / oracle, with diffusion
    from clinfuse.metrics.roi import roi_ssim
    from clinfuse.metrics.segmentation import dice
    from clinfuse.pipeline.fuse import fuse_prepared

    grows: list[dict[str, Any]] = []
    fuse_list = [c for c in cases if c[0] == "phantom"][: args.fuse_cases]
    if args.fuse_cases > 0:
        fuse_list += [c for c in cases if c[0] == "real"]
    for _kind, prep, _ in fuse_list:
        gt = prep.lesion.astype(bool)
        mri_sharp = border_sharpness(prep.mri, gt, prep.spacing)
        for label, kw in (
            ("lesion term on (head's mask)", {"lesion": "predicted"}),
            ("lesion term off (gamma 0)", {"lesion": "predicted", "overrides": {"gamma": 0.0}}),
            ("oracle mask (reference)", {"lesion": "oracle"}),
        ):
            ts = time.time()
            kw = {**kw, "overrides": {**guidance_options, **kw.get("overrides", {})}}
            res = fuse_prepared(prep, model, steps=args.steps, seed=0, **kw)
            fused = np.asarray(res.fused)
            prob = head_prob(model, fused, prep)
            pred = rule.apply(prob, prep.spacing, 0.5, prep.mri)
            grows.append(
                {
                    "case": prep.case_id,
                    "variant": label,
                    "guided_by": str(res.lesion_source),
                    "border_sharpness_vs_mri": border_sharpness(fused, gt, prep.spacing)
                    / mri_sharp,
                    "head_dice_on_fused": float(dice(pred, gt)),
                    "brain_ssim": float(roi_ssim(fused, prep.mri, prep.brain)),
                    "bone_ssim": float(roi_ssim(fused, prep.ct_bone, prep.bone)),
                    "seconds": time.time() - ts,
                }
            )
            print(f"{time.time() - t0:6.0f}s {prep.case_id} {label}: {grows[-1]}", flush=True)

    write_outputs(args, rows, calib, grows, loaded, rule, time.time() - t0)


def by_sequence_table(rows: list[dict[str, Any]]) -> list[str]:
    """The held-out phantoms within issue 10's size range (ROI composite, 2 mm) by MRI sequence
    and lesion kind, read from their case ids (`held_out_phantom`): n, Dice, lesions with a
    prediction. Empty when no phantom row is in range."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        key = held_out_id(r["case"])
        if (
            key is None
            or r["kind"] != "phantom"
            or r["fused"] != "composite"
            or r["grid_mm"] != 2.0
            or not IN_RANGE_ML[0] <= r["gt_ml"] <= IN_RANGE_ML[1]
        ):
            continue
        groups.setdefault(key, []).append(r)
    if not groups:
        return []
    lines = [
        "",
        f"Held-out phantoms with a lesion of {IN_RANGE_ML[0]:g}-{IN_RANGE_ML[1]:g} mL by MRI "
        "sequence and lesion kind (ROI composite, 2 mm):",
        "",
        "| MRI sequence | lesion | n | Dice | lesions with a prediction |",
        "|---|---|---|---|---|",
    ]
    for (seq, kind), rs in sorted(groups.items()):
        d = np.array([r["dice"] for r in rs])
        found = sum(not r["no_prediction"] for r in rs)
        lines.append(f"| {seq} | {kind} | {len(rs)} | {d.mean():.3f} | {found} of {len(rs)} |")
    return lines


def write_outputs(args, rows, calib, grows, loaded, rule, seconds) -> None:
    from clinfuse.evaluation.stats import bootstrap_ci

    out: Path = args.out
    for name, data in (("lesion_seg_per_case.csv", rows), ("lesion_guidance_per_case.csv", grows)):
        if data:
            with open(out / name, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(data[0]))
                w.writeheader()
                w.writerows(data)
    head = subprocess.run(  # the repository's commit, wherever the command is run from
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    cmd = "python benchmarks/lesion_eval.py " + " ".join(sys.argv[1:])
    lines = [
        "# Lesion head benchmark",
        "",
        f"Command: `{cmd}` (code {head.stdout.strip()}, {seconds / 60:.0f} min).",
        f"Checkpoint: `{loaded.path}` (sha256 {loaded.sha256[:12]}); {rule.describe()}; "
        f"temperature {float(loaded.model.lesion_head.temperature):.3f}; left-right flip "
        f"averaging {'on' if bool(loaded.model.lesion_head.flip_tta) else 'off'}.",
        "",
        "## (a) Segmentation on the 2 mm working grid (the real case also at its native 1 mm)",
        "",
        "| cases | fused channel | grid | n | Dice | Dice 95 % CI | NSD@2mm | HD95 mm "
        "| no prediction |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["fused"], r["grid_mm"]), []).append(r)
    # The size range is 0.5-80 mL; the phantom generator also draws lacunes and small
    # haematomas below it. Both rows are given: all phantoms, and those in the range.
    for r in rows:
        if r["kind"] == "phantom" and IN_RANGE_ML[0] <= r["gt_ml"] <= IN_RANGE_ML[1]:
            groups.setdefault(("phantom in range", r["fused"], r["grid_mm"]), []).append(r)
    names = {
        "phantom": "held-out phantoms",
        "phantom in range": f"held-out phantoms, lesion {IN_RANGE_ML[0]:g}-{IN_RANGE_ML[1]:g} mL",
        "real": "real stroke T2 (test case)",
    }
    for (kind, fused, grid), rs in sorted(
        groups.items(), key=lambda kv: list(names).index(kv[0][0])
    ):
        d = np.array([r["dice"] for r in rs])
        n_s = np.array([r["nsd2"] for r in rs], float)
        h = np.array([r["hd95"] for r in rs], float)
        empty = sum(bool(r["no_prediction"]) for r in rs)
        name = names[kind]
        lo, hi = bootstrap_ci(d)
        lines.append(
            f"| {name} | {fused} | {grid:g} mm | {len(rs)} | {d.mean():.3f} ± {d.std():.3f} | "
            f"{'—' if math.isnan(lo) else f'{lo:.3f}-{hi:.3f}'} | "
            f"{fmt(np.nanmean(n_s)) if np.isfinite(n_s).any() else '—'} | "
            f"{fmt(np.nanmean(h), 1) if np.isfinite(h).any() else '—'} | {empty} of {len(rs)} |"
        )
    lines += by_sequence_table(rows)
    lines += [
        "",
        "Calibration (the head's temperature, and its near-mask one if it has one; 15 bins), "
        "ECE / Brier:",
        "",
        "| cases / fused | brain | lesion neighbourhood (10 mm) | class-balanced (brain) |",
        "|---|---|---|---|",
    ]
    for k, v in calib.items():
        cells = [f"{fmt(v[r]['ece'])} / {fmt(v[r]['brier'])}" for r in v]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += reliability_lines(calib, out)
    if grows:
        lines += [
            "",
            "## (b) The lesion term, with diffusion (DDIM, stroke preset)",
            "",
            "| case | variant | guided by | border sharpness / MRI's | head Dice on fused | "
            "brain ROI-SSIM | bone ROI-SSIM | s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for g in grows:
            lines.append(
                f"| {g['case']} | {g['variant']} | {g['guided_by']} | "
                f"{fmt(g['border_sharpness_vs_mri'])} | {fmt(g['head_dice_on_fused'])} | "
                f"{fmt(g['brain_ssim'])} | {fmt(g['bone_ssim'])} | {g['seconds']:.0f} |"
            )
    (out / "lesion_eval.md").write_text("\n".join(lines) + "\n")
    (out / "lesion_eval.json").write_text(
        json.dumps({"calibration": calib, "rows": rows, "guidance": grows}, indent=1, default=str)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
