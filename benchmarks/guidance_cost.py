"""Where the guidance time goes on one real head (issue 11): one process, one volume, wall time
and brain / bone ROI-SSIM of `fuse_prepared` with the presets and with parts switched off.

    python benchmarks/guidance_cost.py [--threads 2] [--checkpoint CKPT]

Case: `chris_t1_wholehead` at 2 mm with the shared pseudo-CT generator (the real head of
benchmarks/speed.py; a training-side volume, never a test case). Stroke preset, lesion guide
predicted, whole-volume window, seed 0. Rows: unguided (eta 0); the presets (the lesion term's
head on the zone's box, `lesion_crop`); the same with the lesion term on the whole volume; the
presets without the lesion term (gamma 0); 20 final inner steps with momentum 0.95; the same
with the brain / bone terms only from t = T/2; and that without the lesion term. Run it on an
idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("unguided", {"eta": 0.0}),
    ("presets", {}),
    ("presets, lesion term on the whole volume", {"lesion_crop": False}),
    ("presets, no lesion term", {"gamma": 0.0}),
    ("20 final steps, momentum 0.95", {"final_inner": 20, "inner_momentum": 0.95}),
    (
        "20 final, momentum 0.95, brain/bone from T/2",
        {
            "final_inner": 20,
            "inner_momentum": 0.95,
            "brain_window": [0.5, 1.0],
            "bone_window": [0.5, 1.0],
        },
    ),
    (
        "... and no lesion term",
        {
            "final_inner": 20,
            "inner_momentum": 0.95,
            "brain_window": [0.5, 1.0],
            "bone_window": [0.5, 1.0],
            "gamma": 0.0,
        },
    ),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="default: all cores")
    ap.add_argument("--checkpoint", type=Path, default=None)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from clinfuse.metrics.roi import roi_ssim
    from clinfuse.nn.precision import set_threads
    from clinfuse.pipeline import fuse_prepared, load_model
    from speed import real_head_case

    n = set_threads(args.threads)
    prep = real_head_case()
    loaded = load_model(args.checkpoint, 3, "cpu")
    print(f"{prep.case_id} {prep.shape}, {n} threads, checkpoint {loaded.sha256[:12]}")
    print("| variant | wall s | lesion guide | brain ROI-SSIM | bone ROI-SSIM |")
    print("|---|---|---|---|---|")
    for name, overrides in VARIANTS:
        t0 = time.perf_counter()
        res = fuse_prepared(
            prep, loaded.model, preset="stroke", overrides=overrides, seed=0, window="whole"
        )
        secs = time.perf_counter() - t0
        brain = roi_ssim(res.fused, prep.mri, prep.brain)
        bone = roi_ssim(res.fused, prep.ct_bone, prep.bone)
        print(f"| {name} | {secs:.1f} | {res.lesion_source} | {brain:.4f} | {bone:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
