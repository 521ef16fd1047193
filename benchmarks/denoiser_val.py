"""Compare 3D checkpoints on validation cases only (issue 13 item 3: a new denoiser replaces the
shipped one only if it is better on validation).

    python benchmarks/denoiser_val.py --checkpoints A.pt,B.pt [--labels a,b]
        [--data RUNS/data3_val/all] [--patients rire001,phantoms_*] [--out runs/dval.json]

Cases: the validation set of the lesion head (`benchmarks/build_training_data.py RUNS/data3_val
--per-source 2 --phantoms 6 --seed 500`), by default its held-out anatomy (rire_001, whose pairs
no denoiser trains on) and its 6 phantoms (seeds 20500+, disjoint from every training set); never
the two test heads. Each case is fused at its 2 mm grid three ways, stroke preset, DDIM-10, lesion
guide predicted, whole-volume window, seed 0:
- `guided`: the case's exact masks guide;
- `auto`: no masks given (`preprocess.masks`), scored inside the exact masks;
- `unguided`: eta 0 (the denoiser alone).
Scores inside the exact masks, brain vs the MRI and bone vs the bone-window CT: the project's
ROI-SSIM (`metrics.roi.roi_ssim`) and the structure-only masked / whole-map ROI-SSIM
(`metrics.roi.structural_roi_ssim`). Results are cached per (label, case, mode) in `--out`, so an
interrupted run resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

MODES: dict[str, dict[str, Any]] = {
    "guided": {"masks": True, "overrides": {}},
    "auto": {"masks": False, "overrides": {}},
    "unguided": {"masks": True, "overrides": {"eta": 0.0}},
}
SCORE_KEYS = [f"{roi}_{s}" for roi in ("brain", "bone") for s in ("ssim", "s_masked", "s_whole")]


def summary(results: dict[str, Any], labels: list[str], modes: list[str]) -> str:
    lines = [
        "| checkpoint | mode | cases | " + " | ".join(SCORE_KEYS) + " |",
        "|---|---|---|" + "---|" * len(SCORE_KEYS),
    ]
    for label in labels:
        for mode in modes:
            rows = [
                v for k, v in results.items() if k.startswith(f"{label}|") and v["mode"] == mode
            ]
            if not rows:
                continue
            means = [float(np.mean([r[k] for r in rows])) for k in SCORE_KEYS]
            cells = " | ".join(f"{m:.4f}" for m in means)
            lines.append(f"| {label} | {mode} | {len(rows)} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", required=True, help="comma-separated; 'shipped' = default")
    ap.add_argument("--labels", default="")
    ap.add_argument("--data", type=Path, default=Path("/work/runs/data3_val/all"))
    ap.add_argument("--patients", default="rire001,phantoms_*")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("runs/denoiser_val.json"))
    args = ap.parse_args(argv)

    from clinfuse.io.dataset import load_dataset
    from clinfuse.metrics.roi import roi_scores
    from clinfuse.phantom.realhead import is_test_case
    from clinfuse.pipeline import fuse_prepared, load_model
    from clinfuse.preprocess.pipeline import preprocess_case

    ckpts = args.checkpoints.split(",")
    labels = args.labels.split(",") if args.labels else [Path(c).stem for c in ckpts]
    modes = args.modes.split(",")
    wanted = args.patients.split(",")
    refs = []
    for ref in load_dataset(args.data):
        if any(is_test_case(str(p)) for p in ref.paths.values()):
            raise SystemExit(f"{ref.case_id} comes from a test head: never used for validation")
        if any(fnmatch.fnmatch(ref.patient_id or "", w) for w in wanted):
            refs.append(ref)
    if not refs:
        raise SystemExit(f"no case of {args.data} matches --patients {args.patients}")
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for ckpt, label in zip(ckpts, labels, strict=True):
        loaded = load_model(None if ckpt == "shipped" else ckpt, 3, "cpu")
        for ref in refs:
            case = ref.load()
            exact = preprocess_case(case, spacing=2.0)
            for mode in modes:
                key = f"{label}|{case.case_id}|{mode}"
                if key in results:
                    continue
                spec = MODES[mode]
                if spec["masks"]:
                    prep = exact
                else:
                    c = dataclasses.replace(case, brain=None, bone=None, meta=dict(case.meta))
                    prep = preprocess_case(c, spacing=2.0)
                t1 = time.time()
                res = fuse_prepared(
                    prep,
                    loaded.model,
                    preset="stroke",
                    overrides=spec["overrides"],
                    steps=args.steps,
                    window="whole",
                )
                row = {"mode": mode, "case": case.case_id, "seconds": time.time() - t1}
                fused = np.asarray(res.fused, np.float32)
                row |= roi_scores(fused, exact.mri, exact.ct_bone, exact.brain, exact.bone)
                results[key] = row
                args.out.write_text(json.dumps(results, indent=1))
                print(
                    f"{time.time() - t0:6.0f}s {label} {case.case_id} {mode}: "
                    + " ".join(f"{k} {row[k]:.4f}" for k in SCORE_KEYS),
                    flush=True,
                )
    print(summary(results, labels, modes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
