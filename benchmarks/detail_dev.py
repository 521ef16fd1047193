"""Native-resolution detail outside the ROIs, measured on development pairs only (issue 13,
items 4 and 8).

    python benchmarks/detail_dev.py [--sources chris_t1,cstar_t2] [--cut-mm 25] [--work DIR]

`fuse --spacing 2` fuses on a 2 mm grid and restores each ROI's lost band from its source
(`preprocess.detail.restore_detail`). An automatic brain mask that stops short of the exact one
(on the seg3d test case it ends at the skull and leaves out the lowest brainstem) leaves those
brain voxels with only the 2 mm estimate. This script measures what the guided-filter transfer
outside the ROIs (`restore_detail(outside=True)`) recovers, on real-anatomy pairs of the
*training* volumes (`clinfuse.phantom.realhead.TRAINING_SOURCES`; never the two test heads),
each generated on its MRI's native grid (seed 0, no augmentation, no inserted lesion).

Scenarios (ours fuses on the 2 mm grid, stroke preset, DDIM-10, shipped checkpoint):
- `exact`: the pair's exact masks guide (a control: scores inside them barely move);
- `auto`: no masks given (`preprocess.masks`);
- `cut`: the exact masks, but the brain mask loses everything within `--cut-mm` of its lowest
  slice, a stand-in for an automatic mask that misses the brainstem.
Scored at native spacing inside the exact masks (brain vs the MRI, bone vs the bone-window CT):
the project's ROI-SSIM and the structure-only masked / whole-map variants
(`metrics.roi.structural_roi_ssim`), for the fused image upsampled, with ROI detail only, and
with ROI + outside detail. Each restoration's wall time and memory peak (tracemalloc) are
printed and kept in the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from clinfuse.io.case import Case
from clinfuse.metrics.roi import roi_scores
from clinfuse.preprocess import detail
from clinfuse.preprocess.detail import restore_detail
from clinfuse.preprocess.pipeline import preprocess_case
from clinfuse.preprocess.resample import resample_to_grid

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "volumes"


def dev_pair(name: str, data: Path) -> Case:
    from clinfuse.phantom.realhead import (
        TRAINING_SOURCES,
        RealHeadConfig,
        generate_real_pair,
        load_real_mri,
    )

    src = {s.name: s for s in TRAINING_SOURCES}[name]
    real = load_real_mri(data / src.mri)
    cfg = RealHeadConfig(
        contrast=src.contrast,
        spacing=None,
        lesion="none",
        augment=False,
        skull=src.skull,
        version="1",  # the pairs of its documented numbers (docs/GUIDANCE.md, SPEED.md)
    )
    return generate_real_pair(real, cfg, 0, case_id=name).case


def cut_brain(case: Case, cut_mm: float) -> Case:
    """The case with its brain mask cut `cut_mm` above its lowest point (world S axis)."""
    brain = np.asarray(case.brain, bool)
    idx = np.argwhere(brain)
    z_world = (case.affine[:3, :3] @ idx.T + case.affine[:3, 3:4])[2]
    keep = z_world > z_world.min() + cut_mm
    out = np.zeros_like(brain)
    out[tuple(idx[keep].T)] = True
    return dataclasses.replace(case, brain=out, meta=dict(case.meta))


@contextlib.contextmanager
def _guide_settings(radius: float, eps: float) -> Iterator[None]:
    """Temporarily other guided-filter settings in `preprocess.detail` (the grid search)."""
    old = detail.GUIDE_RADIUS_WORK_VOXELS, detail.GUIDE_EPS
    detail.GUIDE_RADIUS_WORK_VOXELS, detail.GUIDE_EPS = radius, eps
    try:
        yield
    finally:
        detail.GUIDE_RADIUS_WORK_VOXELS, detail.GUIDE_EPS = old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", default="chris_t1,cstar_t2")
    ap.add_argument("--cut-mm", type=float, default=25.0)
    ap.add_argument("--scenarios", default="exact,auto,cut")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/clinfuse_detail_dev"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument(
        "--grid",
        default="",
        help="extra outside-detail settings 'r:eps,...' (window radius in working voxels, "
        "ridge term), e.g. 1:1e-3,3:1e-3; the default row uses preprocess.detail's constants",
    )
    args = ap.parse_args()
    from clinfuse.pipeline import fuse_prepared, load_model

    args.work.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.checkpoint, 3, "cpu")
    t0 = time.time()
    rows = []
    for name in args.sources.split(","):
        case = dev_pair(name, args.data)
        native_exact = preprocess_case(case)
        variants = {
            "exact": case,
            "auto": dataclasses.replace(case, brain=None, bone=None, meta=dict(case.meta)),
            "cut": cut_brain(case, args.cut_mm),
        }
        for scen in args.scenarios.split(","):
            c = variants[scen]
            work = preprocess_case(c, spacing=2.0)
            native = preprocess_case(c)  # the masks `fuse` itself would use at native spacing
            cache = args.work / f"{name}_{scen}.npy"
            if cache.exists():
                fused = np.load(cache)
            else:
                res = fuse_prepared(work, loaded.model, preset="stroke", steps=10, window="whole")
                fused = np.asarray(res.fused, np.float32)
                np.save(cache, fused)
            up = resample_to_grid(fused, work.affine, native.shape, native.affine, default=-2.0)
            # each restoration timed, with the peak of the memory it allocates (numpy reports
            # its buffers to tracemalloc)
            outs = {"upsampled": up}
            cost: dict[str, tuple[float, float]] = {}
            for v, outside in (("roi detail", False), ("roi + outside detail", True)):
                tracemalloc.start()
                t1 = time.perf_counter()
                outs[v] = restore_detail(up, native, work.shape, work.affine, outside=outside)
                cost[v] = (time.perf_counter() - t1, tracemalloc.get_traced_memory()[1] / 1e9)
                tracemalloc.stop()
            print(
                f"{name} {scen}: native grid {native.shape}; restore_detail "
                + ", ".join(f"{v} {s:.1f} s, peak {gb:.2f} GB" for v, (s, gb) in cost.items()),
                flush=True,
            )
            for item in filter(None, args.grid.split(",")):
                r, eps = (float(v) for v in item.split(":"))
                with _guide_settings(r, eps):
                    outs[f"outside r={r:g} eps={eps:g}"] = restore_detail(
                        up, native, work.shape, work.affine
                    )
            brain_dice = (
                2
                * (native.brain & native_exact.brain).sum()
                / (native.brain.sum() + native_exact.brain.sum())
            )
            for v in outs:
                row = {"source": name, "scenario": scen, "variant": v, "brain_dice": brain_dice}
                if v in cost:
                    row["restore_seconds"], row["restore_peak_gb"] = cost[v]
                ne = native_exact
                row |= roi_scores(outs[v], ne.mri, ne.ct_bone, ne.brain, ne.bone)
                rows.append(row)
                print(
                    f"{time.time() - t0:6.0f}s {name:9s} {scen:5s} {v:22s} dice {brain_dice:.3f}"
                    f"  ssim {row['brain_ssim']:.3f}/{row['bone_ssim']:.3f}"
                    f"  masked {row['brain_s_masked']:.3f}/{row['bone_s_masked']:.3f}"
                    f"  whole {row['brain_s_whole']:.3f}/{row['bone_s_whole']:.3f}",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
