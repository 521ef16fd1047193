"""Where the guidance time goes on one real head (issue 11): one process, one volume, wall time
and brain / bone ROI-SSIM of `fuse_prepared` with the presets and with parts switched off.

    python benchmarks/guidance_cost.py [--threads 2] [--checkpoint CKPT] [--case real|96x112x96]
        [--repeats 3] [--first 4]

Case: `chris_t1_wholehead` at 2 mm with the shared pseudo-CT generator (the real head of
benchmarks/speed.py; a training-side volume, never a test case), or one of speed.py's phantoms
(`--case 64x64x64`, `--case 96x112x96`: its seeds). Stroke preset, lesion guide
predicted, whole-volume window, seed 0. Rows: unguided (eta 0); the presets (brain / bone terms
at the last DDIM step only, `roi_final_only`; the lesion term's head on the zone's box,
`lesion_crop`); the presets with the brain / bone terms at every step (session 5); the presets
with the lesion term on the whole volume; the
presets without the lesion term (gamma 0); 20 final inner steps with momentum 0.95; the same
with the brain / bone terms only from t = T/2; and that without the lesion term. Run it on an
idle machine.

`--components`: also where the presets row's guidance time goes (median seconds per fuse):
Algorithm 1 line 7, the lesion-term evaluations (head forward on the zone's box + gradient) and
the brain / bone masked-SSIM evaluations (forward + gradient), by wrapping the guide's methods.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("unguided", {"eta": 0.0}),
    ("presets", {}),
    ("presets, brain/bone terms at every DDIM step (session 5)", {"roi_final_only": False}),
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


@contextlib.contextmanager
def component_timer(acc: dict[str, float]) -> Iterator[None]:
    """Add the seconds spent in line 7, in lesion-term and in brain/bone-only evaluations
    (objective + its gradient) of `diffusion.guidance.RoiGuide` to `acc` while active."""
    import torch

    from clinfuse.diffusion import guidance

    guide_cls = guidance.RoiGuide
    line7, objective, grad = guide_cls._line7, guide_cls._objective, torch.autograd.grad
    last = ["ssim"]

    def timed_line7(self: Any, *a: Any) -> Any:
        t0 = time.perf_counter()
        out = line7(self, *a)
        acc["line 7"] += time.perf_counter() - t0
        return out

    def timed_objective(self: Any, z: Any, w: Any) -> Any:
        last[0] = "lesion term" if w[2] > 0 and self.lesion_on else "brain/bone SSIM"
        t0 = time.perf_counter()
        out = objective(self, z, w)
        acc[last[0]] += time.perf_counter() - t0
        return out

    def timed_grad(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = grad(*a, **k)
        acc[last[0]] += time.perf_counter() - t0
        return out

    guide_cls._line7, guide_cls._objective = timed_line7, timed_objective  # type: ignore[method-assign]
    torch.autograd.grad = timed_grad  # type: ignore[assignment]
    try:
        yield
    finally:
        guide_cls._line7, guide_cls._objective = line7, objective  # type: ignore[method-assign]
        torch.autograd.grad = grad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="default: all cores")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument(
        "--case",
        default="real",
        help="'real' (chris_t1 at 2 mm) or a phantom grid of benchmarks/speed.py, e.g. 96x112x96",
    )
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs per row (median)")
    ap.add_argument("--first", type=int, default=0, help="only the first N rows (0: all)")
    ap.add_argument("--components", action="store_true", help="time line 7 / lesion / SSIM")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from clinfuse.metrics.roi import roi_ssim
    from clinfuse.nn.precision import set_threads
    from clinfuse.pipeline import fuse_prepared, load_model
    from speed import SEED_64, SEED_96, parse_size, phantom_case, real_head_case

    n = set_threads(args.threads)
    if args.case == "real":
        prep = real_head_case()
    else:
        seed = SEED_64 if args.case.startswith("64") else SEED_96
        prep = phantom_case(parse_size(args.case), seed)
    loaded = load_model(args.checkpoint, 3, "cpu")
    print(f"{prep.case_id} {prep.shape}, {n} threads, checkpoint {loaded.sha256[:12]}")
    variants = VARIANTS[: args.first] if args.first else VARIANTS
    fuse_prepared(prep, loaded.model, preset="stroke", seed=0, window="whole")  # warm-up
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    rows: dict[str, str] = {}
    parts: list[dict[str, float]] = []
    for _ in range(args.repeats):  # interleaved, so a slow spell of the VM hits every row
        for name, overrides in variants:
            acc: dict[str, float] = defaultdict(float)
            timer = (
                component_timer(acc)
                if args.components and name == "presets"
                else contextlib.nullcontext()
            )
            with timer:
                t0 = time.perf_counter()
                res = fuse_prepared(
                    prep, loaded.model, preset="stroke", overrides=overrides, seed=0, window="whole"
                )
                times[name].append(time.perf_counter() - t0)
            if acc:
                parts.append(dict(acc))
            brain = roi_ssim(res.fused, prep.mri, prep.brain)
            bone = roi_ssim(res.fused, prep.ct_bone, prep.bone)
            hist = res.record.get("guidance_history", [])
            frac = [h["predicted_fraction"] for h in hist if "predicted_fraction" in h]
            guide = res.lesion_source + (f" ({100 * frac[0]:.2f} % of brain)" if frac else "")
            rows[name] = f"{guide} | {brain:.4f} | {bone:.4f}"
    base = float(np.median(times[variants[0][0]]))
    print(f"median of {args.repeats} interleaved run(s) after a warm-up run")
    head = ("variant", "wall s (median)", "vs unguided", "lesion guide", "brain ROI-SSIM")
    print("| " + " | ".join(head) + " | bone ROI-SSIM |")
    print("|---|---|---|---|---|---|")
    for name, _ in variants:
        med = float(np.median(times[name]))
        print(f"| {name} | {med:.1f} | {100 * (med / base - 1):+.0f} % | {rows[name]} |")
    if parts:
        print()
        print("presets, where the guidance time goes (median s per fuse):")
        for key in ("line 7", "lesion term", "brain/bone SSIM"):
            vals = [p.get(key, 0.0) for p in parts]
            print(f"- {key}: {float(np.median(vals)):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
