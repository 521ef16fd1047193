"""Dice of the automatic bone/brain masks against the phantoms' exact masks (target >= 0.95),
against the masks of real-anatomy pairs (`--real`), and an optional montage on real data.

    python benchmarks/masks_dice.py [--n 10] [--seed 1000] [--montage masks.png]
    python benchmarks/masks_dice.py --n 0 --real [--test-cases]

`--real`: real MRIs of `../shared/data/volumes` turned into MRI + pseudo-CT pairs by the shared
generator (`clinfuse.phantom.realhead`, no augmentation, seed 0) on a 2 mm grid; the automatic
masks (`preprocess_case` without masks) against the pair's exact masks, and what they cost the
ROI composite (scored inside the exact masks: project ROI-SSIM and structure-only masked).
Development volumes only; `--test-cases` adds the two test cases (seg3d: its given skull and
intracranial masks; stroke T2: the generator's MRI-derived masks), reported, never tuned on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from clinfuse.phantom import PhantomConfig, generate_phantom
from clinfuse.preprocess.masks import auto_bone_mask, auto_brain_mask, mri_brain_mask

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CONTRASTS = ("T1", "T2", "ADC")
LESIONS = ("ischaemic", "haemorrhagic")
# Even cases: isotropic 2 mm (192 x 224 x 192 mm head box); odd cases: anisotropic
# 1.8 x 1.8 x 3 mm covering about the same box.
GRIDS = (((96, 112, 96), (2.0, 2.0, 2.0)), ((106, 124, 64), (1.8, 1.8, 3.0)))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def phantom_configs(n: int, scale: float) -> list[PhantomConfig]:
    """Case i: contrast cycles T1/T2/ADC, lesion ischaemic/haemorrhagic, fracture on every
    third case, grid alternates isotropic/anisotropic; `scale` shrinks the grids (quick runs)."""
    out = []
    for i in range(n):
        shape, spacing = GRIDS[i % 2]
        shape = tuple(max(16, int(round(s * scale))) for s in shape)
        spacing = tuple(s / scale for s in spacing)
        out.append(
            PhantomConfig(
                shape=shape,
                spacing=spacing,
                mri_contrast=CONTRASTS[i % 3],
                lesion=LESIONS[(i // 2) % 2],
                n_lesions=1 + i % 2,
                fracture=i % 3 == 0,
            )
        )
    return out


def run_phantoms(n: int, seed: int, scale: float) -> dict:
    rows = []
    for i, cfg in enumerate(phantom_configs(n, scale)):
        ph = generate_phantom(cfg, np.random.default_rng(seed + i))
        c = ph.case
        t0 = time.perf_counter()
        bone = auto_bone_mask(c.ct, c.spacing)
        brain = auto_brain_mask(c.mri, c.ct, c.spacing, bone=bone)
        secs = time.perf_counter() - t0
        mri_only = mri_brain_mask(c.mri, c.spacing)
        rows.append(
            {
                "seed": seed + i,
                "contrast": cfg.mri_contrast,
                "lesion": cfg.lesion,
                "fracture": cfg.fracture,
                "shape": list(cfg.shape),
                "spacing": list(cfg.spacing),
                "dice_bone": dice(bone, c.bone),
                "dice_brain": dice(brain, c.brain),
                "dice_brain_mri_only": dice(mri_only, c.brain),
                "seconds_masks": secs,
            }
        )
        r = rows[-1]
        print(
            f"seed {r['seed']:5d} {r['contrast']:3s} {r['lesion']:12s}"
            f" fracture={r['fracture']!s:5s}"
            f" {'x'.join(map(str, r['shape'])):>10s}  bone {r['dice_bone']:.4f}"
            f"  brain {r['dice_brain']:.4f}  brain(MRI only) {r['dice_brain_mri_only']:.4f}"
        )
    summary = {}
    for key in ("dice_bone", "dice_brain", "dice_brain_mri_only"):
        v = np.array([r[key] for r in rows])
        summary[key] = {"mean": float(v.mean()), "min": float(v.min())}
    return {"rows": rows, "summary": summary}


# name -> (MRI file, contrast, skull mode, given brain/bone mask files, test case?)
REAL_DEV = {
    "chris_t1": ("chris_t1_wholehead/t1.nii.gz", "T1", "auto", None, None),
    "rire_t1": ("rire_training_001/mr_t1.nii.gz", "T1", "auto", None, None),
    "visible_male_t1": ("visible_male_head/mri_t1.nii.gz", "T1", "auto", None, None),
    "cstar_t2_synthetic_skull": (
        "cstar_chronic_stroke_brainextracted/t2.nii.gz", "T2", "synthetic", None, None
    ),
}  # fmt: skip
REAL_TEST = {
    "TEST seg3d_t1": (
        "seg3d_t1_skullmask/t1.nii.gz", "T1", "auto",
        "seg3d_t1_skullmask/intracranial_mask.nii.gz", "seg3d_t1_skullmask/skull_mask.nii.gz",
    ),
    "TEST stroke_t2": ("clinical_stroke_t2_lesion/t2.nii.gz", "T2", "auto", None, None),
}  # fmt: skip


def run_real(names: dict, seed: int = 0, grid_mm: float = 2.0) -> list[dict]:
    """Automatic vs exact masks on real-anatomy pairs, and the ROI composite's cost."""
    import dataclasses

    from clinfuse.baselines import roi_composite
    from clinfuse.metrics.roi import roi_ssim, structural_roi_ssim
    from clinfuse.phantom.realhead import RealHeadConfig, generate_real_pair, load_real_mri
    from clinfuse.preprocess.pipeline import preprocess_case

    vol = DATA / "volumes"
    rows = []
    for name, (mri, contrast, skull, brain, bone) in names.items():
        t0 = time.perf_counter()
        real = load_real_mri(
            vol / mri,
            brain=None if brain is None else vol / brain,
            bone=None if bone is None else vol / bone,
        )
        cfg = RealHeadConfig(
            contrast=contrast, spacing=grid_mm, lesion="none", augment=False, skull=skull
        )
        case = generate_real_pair(real, cfg, seed, case_id=name).case
        exact = preprocess_case(case)
        auto = preprocess_case(dataclasses.replace(case, brain=None, bone=None))
        row: dict = {
            "case": name,
            "shape": list(exact.shape),
            "dice_brain": dice(auto.brain, exact.brain),
            "dice_bone": dice(auto.bone, exact.bone),
            "brain_missed": float((exact.brain & ~auto.brain).sum() / exact.brain.sum()),
            "brain_extra": float((auto.brain & ~exact.brain).sum() / exact.brain.sum()),
        }
        for roi, ref, m in (("brain", exact.mri, exact.brain), ("bone", exact.ct_bone, exact.bone)):
            comp = {
                k: roi_composite(p.mri, p.ct_bone, p.brain, p.bone)
                for k, p in (("exact", exact), ("auto", auto))
            }
            row[f"cost_{roi}_ssim"] = roi_ssim(comp["exact"], ref, m) - roi_ssim(
                comp["auto"], ref, m
            )
            row[f"cost_{roi}_s_masked"] = structural_roi_ssim(
                comp["exact"], ref, m
            ) - structural_roi_ssim(comp["auto"], ref, m)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(
            f"{name:26s} Dice brain {row['dice_brain']:.4f} bone {row['dice_bone']:.4f}"
            f"  missed {row['brain_missed']:.3f} extra {row['brain_extra']:.3f}"
            f"  composite cost brain {row['cost_brain_ssim']:+.4f}/"
            f"{row['cost_brain_s_masked']:+.4f} bone {row['cost_bone_ssim']:+.4f}/"
            f"{row['cost_bone_s_masked']:+.4f}"
        )
    return rows


def _overlay(ax, img, masks, title) -> None:  # noqa: ANN001
    lo, hi = np.percentile(img, [1, 99.5])
    ax.imshow(np.clip(img, lo, hi).T, cmap="gray", origin="lower")
    colours = {"bone": "tab:orange", "brain": "tab:cyan", "ref": "yellow", "lesion": "red"}
    for name, m in masks.items():
        if m is not None and m.any():
            ax.contour(m.T.astype(float), levels=[0.5], colors=colours[name], linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def montage(path: Path) -> dict:
    """Automatic masks on the real data (bone orange, brain cyan, references yellow/red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    from clinfuse.io.nifti import load_nifti
    from clinfuse.io.png import load_png

    vol = DATA / "volumes"
    notes: dict = {}
    fig, axes = plt.subplots(4, 3, figsize=(11, 14))

    # 1) seg3d: real T1 + a pseudo-CT built from the skull mask segmented on the patient's CT.
    t1, aff = load_nifti(vol / "seg3d_t1_skullmask" / "t1.nii.gz")
    skull = load_nifti(vol / "seg3d_t1_skullmask" / "skull_mask.nii.gz")[0] > 0.5
    icv = load_nifti(vol / "seg3d_t1_skullmask" / "intracranial_mask.nii.gz")[0] > 0.5
    sp = tuple(float(s) for s in np.linalg.norm(aff[:3, :3], axis=0))
    rng = np.random.default_rng(0)
    head = ndimage.binary_fill_holes(t1 > 0.1 * np.percentile(t1, 99)) | skull | icv
    pct = np.where(head, 20.0, -1000.0)
    pct[icv] = 35.0
    # Cortical tables at the skull surface (1400 HU), diploe (500 HU) deeper than 1.5 mm.
    depth = ndimage.distance_transform_edt(skull, sampling=sp)
    pct[skull] = np.where(depth[skull] > 1.5, 500.0, 1400.0)
    pct = ndimage.gaussian_filter(pct, 0.6) + rng.normal(0, 4, pct.shape)
    bone = auto_bone_mask(pct, sp)
    brain_ct = auto_brain_mask(t1, pct, sp, bone=bone)
    brain_mri = mri_brain_mask(t1, sp)
    notes["seg3d"] = {
        "dice_bone_vs_skull_mask": dice(bone, skull),
        "dice_brain_pseudoct_vs_intracranial": dice(brain_ct, icv),
        "dice_brain_mri_only_vs_intracranial": dice(brain_mri, icv),
    }
    k = t1.shape[2] // 2 + 15
    j = t1.shape[1] // 2
    _overlay(
        axes[0, 0],
        t1[:, :, k],
        {"ref": skull[:, :, k], "bone": bone[:, :, k]},
        "seg3d T1: skull mask (yellow) vs auto bone\nfrom pseudo-CT (orange)",
    )
    _overlay(
        axes[0, 1],
        t1[:, j, :],
        {"ref": icv[:, j, :], "brain": brain_ct[:, j, :]},
        "seg3d coronal: intracranial (yellow)\nvs auto brain from pseudo-CT (cyan)",
    )
    _overlay(
        axes[0, 2],
        t1[:, :, k],
        {"ref": icv[:, :, k], "brain": brain_mri[:, :, k]},
        "seg3d T1: intracranial (yellow)\nvs MRI-only brain (cyan)",
    )

    # 2) VTK headsq CT (raw = HU + 1024), skull base to neck.
    raw, aff = load_nifti(vol / "vtk_headsq_ct" / "ct_raw_plus1024.nii.gz")
    hu = raw - 1024.0
    sp = tuple(float(s) for s in np.linalg.norm(aff[:3, :3], axis=0))
    bone = auto_bone_mask(hu, sp)
    brain = auto_brain_mask(None, hu, sp, bone=bone)  # CT only: the MRI is not needed
    notes["vtk_headsq"] = {"bone_voxels": int(bone.sum()), "brain_voxels": int(brain.sum())}
    for col, k in enumerate((hu.shape[2] * 95 // 100, hu.shape[2] * 82 // 100)):
        _overlay(
            axes[1, col],
            np.clip(hu[:, :, k], -200, 1500),
            {"bone": bone[:, :, k], "brain": brain[:, :, k]},
            f"vtk headsq CT axial z={k}",
        )
    i = hu.shape[0] // 2
    _overlay(
        axes[1, 2],
        np.clip(hu[i], -200, 1500),
        {"bone": bone[i], "brain": brain[i]},
        "vtk headsq CT sagittal",
    )

    # 3) Harvard pair (display-windowed CT): bone from the CT, brain from the MRI only.
    for col, idx in enumerate(("025", "060")):
        mri = load_png(DATA / "harvard_mri_ct" / "mri" / f"{idx}.png").astype(np.float32)
        ct = load_png(DATA / "harvard_mri_ct" / "ct" / f"{idx}.png").astype(np.float32)
        bone = auto_bone_mask(ct, (1.0, 1.0), ct_kind="display")
        brain = auto_brain_mask(mri, ct, (1.0, 1.0), ct_kind="display")
        _overlay(
            axes[2, col],
            mri.T,
            {"bone": bone.T, "brain": brain.T},
            f"Harvard {idx} MRI + auto bone (from CT)\n+ MRI-only brain",
        )
        if col == 1:
            _overlay(axes[2, 2], ct.T, {"bone": bone.T, "brain": brain.T}, f"Harvard {idx} CT")

    # 4) Clinical stroke T2 (MRI only) with its hand-drawn lesion.
    t2, aff = load_nifti(vol / "clinical_stroke_t2_lesion" / "t2.nii.gz")
    les = load_nifti(vol / "clinical_stroke_t2_lesion" / "lesion_mask.nii.gz")[0] > 0.5
    sp = tuple(float(s) for s in np.linalg.norm(aff[:3, :3], axis=0))
    brain = mri_brain_mask(t2, sp)
    notes["clinical_stroke"] = {"lesion_inside_brain": float((les & brain).sum() / les.sum())}
    k = int(np.argmax(les.sum((0, 1))))
    _overlay(
        axes[3, 0],
        t2[:, :, k],
        {"brain": brain[:, :, k], "lesion": les[:, :, k]},
        f"stroke T2 z={k}: MRI-only brain, lesion (red)",
    )
    _overlay(
        axes[3, 1],
        t2[:, :, t2.shape[2] // 2],
        {"brain": brain[:, :, t2.shape[2] // 2]},
        "stroke T2 mid axial",
    )
    i = int(np.argmax(les.sum((1, 2))))
    _overlay(axes[3, 2], t2[i], {"brain": brain[i], "lesion": les[i]}, "stroke T2 sagittal")

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10, help="number of phantoms")
    ap.add_argument("--seed", type=int, default=1000, help="phantom i uses seed + i")
    ap.add_argument("--scale", type=float, default=1.0, help="grid scale (0.5 = quick run)")
    ap.add_argument("--montage", type=Path, default=None, help="PNG of masks on real data")
    ap.add_argument("--json", type=Path, default=None, help="write all numbers as JSON")
    ap.add_argument("--real", action="store_true", help="real-anatomy pairs (development)")
    ap.add_argument("--test-cases", action="store_true", help="with --real: the two test cases")
    args = ap.parse_args()
    result: dict = {}
    if args.n > 0:
        result = run_phantoms(args.n, args.seed, args.scale)
        for key, s in result["summary"].items():
            print(f"{key:22s} mean {s['mean']:.4f}  min {s['min']:.4f}")
    if args.real:
        result["real_pairs"] = run_real(REAL_DEV)
        if args.test_cases:
            result["real_test_cases"] = run_real(REAL_TEST)
    if args.montage is not None:
        result["real_data"] = montage(args.montage)
        print(json.dumps(result["real_data"], indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
