"""What the speed options cost in quality (issue 11, item 3): ROI-SSIM of each variant against the
reference (float32, DDIM-20, 10 inner guidance steps) on VALIDATION phantoms only.

    python benchmarks/speed_quality.py [--checkpoint CKPT] [--variants ref,bf16,...]
        [--cases 3] [--threads 1] [--out runs/speed_quality.json]

Cases: `clinfuse.phantom` seeds 5000, 5001, 5002 (T1, T2, ADC; one ischaemic lesion; 64x64x48
voxels at 3 mm) — the validation phantoms of docs/GUIDANCE.md, disjoint from training (0-23,
3000-3059), the benchmark (1000-1009) and the demo (9000+); the real test heads are never used.
Every variant fuses with the stroke preset, lesion guide predicted, whole-volume window (unless
the variant says "sliding"), seed 0,
and is scored by `metrics.roi.roi_ssim` (brain vs MRI, bone vs bone-window CT, exact masks).
The acceptance rule: |delta ROI-SSIM| <= 0.002 against `ref`, per ROI, mean over the cases (the
per-case maximum is printed as well). Results are cached per (variant, case) in `--out`, so an
interrupted run resumes; timing here is informative only (benchmarks/speed.py measures speed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SEEDS = (5000, 5001, 5002)
CONTRASTS = ("T1", "T2", "ADC")
SHAPE = (64, 64, 48)
SPACING = (3.0, 3.0, 3.0)

# name -> fuse_prepared arguments: steps, guidance overrides, precision, channels_last
VARIANTS: dict[str, dict[str, Any]] = {
    "ref": {"steps": 20, "overrides": {"n_inner": 10}, "precision": "fp32"},
    "inner5": {"steps": 20, "overrides": {"n_inner": 5}, "precision": "fp32"},
    "inner3": {"steps": 20, "overrides": {"n_inner": 3}, "precision": "fp32"},
    "inner1": {"steps": 20, "overrides": {"n_inner": 1}, "precision": "fp32"},
    "bf16": {"steps": 20, "overrides": {"n_inner": 10}, "precision": "bf16"},
    "bf16_cl": {
        "steps": 20,
        "overrides": {"n_inner": 10},
        "precision": "bf16",
        "channels_last": True,
    },
    "ddim10": {"steps": 10, "overrides": {"n_inner": 10}, "precision": "fp32"},
    "ddim10_inner20": {"steps": 10, "overrides": {"n_inner": 20}, "precision": "fp32"},
    "ddim10_bf16_cl": {
        "steps": 10,
        "overrides": {"n_inner": 10},
        "precision": "bf16",
        "channels_last": True,
    },
    # fewer inner steps at a proportionally larger step (same total step per DDIM step)
    "ddim10_bf16_cl_inner5_eta04": {
        "steps": 10,
        "overrides": {"n_inner": 5, "eta": 0.04},
        "precision": "bf16",
        "channels_last": True,
    },
    "ddim10_bf16_cl_inner5": {
        "steps": 10,
        "overrides": {"n_inner": 5},
        "precision": "bf16",
        "channels_last": True,
    },
    # issue 11/13 (session 4): few inner steps along the trajectory, many at the last DDIM step
    # (whose guided x̂0 is the output): GuidanceConfig.final_inner
    **{
        f"ddim10_bf16_cl_inner{k}_final{f}": {
            "steps": 10,
            "overrides": {"n_inner": k, "final_inner": f},
            "precision": "bf16",
            "channels_last": True,
        }
        for k, f in ((1, 10), (1, 20), (2, 20), (2, 40), (3, 30))
    },
    # ... with Nesterov momentum in the inner loop (GuidanceConfig.inner_momentum)
    **{
        f"ddim10_bf16_cl_inner{k}_final{f}_mom{int(m * 100)}": {
            "steps": 10,
            "overrides": {"n_inner": k, "final_inner": f, "inner_momentum": m},
            "precision": "bf16",
            "channels_last": True,
        }
        for k, f, m in (
            (1, 10, 0.9),
            (1, 15, 0.9),
            (1, 20, 0.9),
            (1, 30, 0.9),
            (1, 10, 0.8),
            (2, 10, 0.9),
            (1, 20, 0.95),
        )
    },
    # the shipped presets (1 inner, 30 at the end, momentum 0.9) with whole-volume and with
    # sliding-window sampling (fuse's --window): which one should be the default
    "presets_whole": {"steps": 10, "overrides": {}, "precision": "bf16", "channels_last": True},
    # session 5: the presets with the lesion term on the whole volume (lesion_crop false), the
    # form before the lesion term ran the head on the zone's box only
    "presets_lesion_whole": {
        "steps": 10,
        "overrides": {"lesion_crop": False},
        "precision": "bf16",
        "channels_last": True,
    },
    # session 6: the ROI terms at the last DDIM step only (its guided x̂0 is the output; the
    # "half" rows showed the trajectory's ROI steps change nothing), window [0.9, 1] = the last
    # of DDIM-10's steps (t = 99, p = 0.901): 30 masked-SSIM steps per fuse instead of 39
    "presets_roi_last": {
        "steps": 10,
        "overrides": {"brain_window": [0.9, 1.0], "bone_window": [0.9, 1.0]},
        "precision": "bf16",
        "channels_last": True,
    },
    # ... and the presets with fewer steps at the last DDIM step
    **{
        f"presets_final{f}": {
            "steps": 10,
            "overrides": {"final_inner": f},
            "precision": "bf16",
            "channels_last": True,
        }
        for f in (20, 25)
    },
    "presets_sliding": {
        "steps": 10,
        "overrides": {},
        "precision": "bf16",
        "channels_last": True,
        "window": "sliding",
    },
    # ... and the ROI terms only in the second half of the trajectory (p >= 0.5)
    "ddim10_bf16_cl_inner1_final20_mom90_half": {
        "steps": 10,
        "overrides": {
            "n_inner": 1,
            "final_inner": 20,
            "inner_momentum": 0.9,
            "brain_window": [0.5, 1.0],
            "bone_window": [0.5, 1.0],
        },
        "precision": "bf16",
        "channels_last": True,
    },
}


def make_cases(n: int) -> list[Any]:
    from clinfuse.phantom import PhantomConfig, generate_phantom
    from clinfuse.preprocess.pipeline import preprocess_case

    out = []
    for seed, contrast in list(zip(SEEDS, CONTRASTS, strict=True))[:n]:
        cfg = PhantomConfig(
            shape=SHAPE, spacing=SPACING, mri_contrast=contrast, lesion="ischaemic", n_lesions=1
        )
        case = generate_phantom(cfg, seed).case
        case.case_id = f"val{seed}_{contrast}"
        out.append(preprocess_case(case))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument(
        "--real",
        action="store_true",
        help="score on the real-anatomy head of benchmarks/speed.py instead (chris_t1_wholehead, "
        "a training-side volume, 2 mm, pseudo-CT; never a test head)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/speed_quality.json"))
    args = ap.parse_args(argv)

    import torch

    from clinfuse.metrics.roi import roi_ssim
    from clinfuse.pipeline import fuse_prepared, load_model

    torch.set_num_threads(args.threads)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if "ref" not in names:
        names.insert(0, "ref")
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    loaded = load_model(args.checkpoint, 3, "cpu")
    results.setdefault("_checkpoint", loaded.sha256)
    if results["_checkpoint"] != loaded.sha256:
        print("cache is from another checkpoint; starting over", file=sys.stderr)
        results = {"_checkpoint": loaded.sha256}
    if args.real:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from speed import real_head_case

        cases = [real_head_case()]
    else:
        cases = make_cases(args.cases)
    for name in names:
        variant = VARIANTS[name]
        for prep in cases:
            key = f"{name}/{prep.case_id}"
            if key in results:
                continue
            t0 = time.perf_counter()
            res = fuse_prepared(
                prep,
                loaded.model,
                preset="stroke",
                overrides=variant["overrides"],
                steps=variant["steps"],
                seed=0,
                window=variant.get("window", "whole"),
                patch_size=loaded.patch_size,
                precision=variant["precision"],
                channels_last=variant.get("channels_last", False),
            )
            results[key] = {
                "brain": roi_ssim(res.fused, prep.mri, prep.brain),
                "bone": roi_ssim(res.fused, prep.ct_bone, prep.bone),
                "lesion_source": res.lesion_source,
                "seconds": time.perf_counter() - t0,
            }
            print(key, json.dumps(results[key]), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    print()
    print("| variant | brain ROI-SSIM | bone ROI-SSIM | Δ brain (max) | Δ bone (max) | s/case |")
    print("|---|---|---|---|---|---|")
    ids = [p.case_id for p in cases]
    for name in names:
        rows = [results[f"{name}/{c}"] for c in ids]
        ref = [results[f"ref/{c}"] for c in ids]
        cells = []
        for roi in ("brain", "bone"):
            cells.append(f"{np.mean([r[roi] for r in rows]):.4f}")
        for roi in ("brain", "bone"):
            d = [r[roi] - q[roi] for r, q in zip(rows, ref, strict=True)]
            cells.append(f"{np.mean(d):+.4f} ({np.max(np.abs(d)):.4f})")
        cells.append(f"{np.mean([r['seconds'] for r in rows]):.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
