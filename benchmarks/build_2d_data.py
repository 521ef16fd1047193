"""Build the training data of a 2D model we may ship (issue 13 item 5): axial slices of
real-anatomy pairs made ONLY from openly licensed volumes, plus slices of our phantoms.

    python benchmarks/build_2d_data.py OUT [--per-source N] [--phantoms N]
        [--slices-per-volume K] [--seed S] [--spacing MM] [--display-ct P]
        [--orientation display|ras]

Sources and licences (../shared/data/volumes/README.md):
- `cstar_chronic_stroke_brainextracted` T1, T2, FLAIR (C-STAR, MIT): one person;
- `rire_training_001` T1 (RIRE, CC BY 3.0 US), re-painted to five contrasts;
- phantoms (`clinfuse.phantom`, ours).
Never `chris_t1_wholehead` (CC BY-NC), `visible_male_head` (NLM terms) or the two test heads
(`write_real_dataset` refuses those).

Steps: OUT/3d/real (`write_real_dataset(..., sources=OPEN_SOURCES)`) and OUT/3d/phantoms
(`write_phantom_dataset`, seeds 30000 + S, all five contrasts, a 192x192x144 mm field of
view) are written first. Then K axial slices per volume, evenly spread over the slices whose
brain area is at least `--min-brain` of the largest one (one of them moved onto the lesion's
largest cross-section when no pick hits the lesion), each written as 2D NIfTI files
OUT/slices/<case>/{mri,ct,brain,bone,lesion[,ignore]}.nii.gz. OUT/all/manifest.csv lists them
(paths relative to OUT/all), with `patient_id` = the person (`cstar`, `rire001`) or the phantom,
so a split by patient never puts one anatomy on both sides.

- `--orientation display` (default): arrays in the order a PNG pair is read (rows anterior ->
  posterior, columns patient right -> left, the radiological view), and like a PNG the affine
  carries only the pixel size (no world orientation). `ras`: RAS+ slices with their true
  geometry (rows = x, columns = y).
- `--display-ct P`: a share P of the slices gets an 8-bit display CT (a brain window, centre
  35-45 HU, width 80-200 HU, bone saturated, like the Harvard PNGs) and an 8-bit MRI, with
  `ct_kind=display`; the others keep the CT in HU.
- Cases whose source has a real, unlabelled lesion (C-STAR's chronic left-hemisphere stroke)
  get an EMPTY `lesion` cell, so `clinfuse train`'s lesion term never learns that stroke as
  background; their inserted-lesion mask is in the `lesion_partial` column and the unlabelled
  side in `ignore` (for `train-lesion`-style losses).
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse.io.dataset import load_dataset
from clinfuse.io.nifti import load_nifti, save_nifti
from clinfuse.phantom import PhantomConfig, write_phantom_dataset
from clinfuse.phantom.realhead import (
    REALHEAD_VERSION,
    REALHEAD_VERSIONS,
    TRAINING_SOURCES,
    RealSource,
    write_real_dataset,
)

VOLUMES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "volumes"
# Openly licensed real volumes (MIT, CC BY 3.0): the only real anatomy of a shipped 2D model.
OPEN_VOLUMES = ("cstar_chronic_stroke_brainextracted", "rire_training_001")
OPEN_SOURCES: tuple[RealSource, ...] = tuple(
    s for s in TRAINING_SOURCES if Path(s.mri).parts[0] in OPEN_VOLUMES
)
PHANTOM_FOV_MM = (192.0, 192.0, 144.0)
PHANTOM_SEED = 30000  # apart from build_training_data.py's 20000+ and the demo's 9000+
MIN_BONE_MM2 = 50.0  # a slice needs a skull ring (the loader refuses < 20 mm^2 of bone)
COLUMNS = (
    "case_id",
    "mri",
    "ct",
    "brain",
    "bone",
    "lesion",
    "ignore",
    "lesion_partial",
    "ct_kind",
    "patient_id",
    "source",
    "volume",
    "slice_index",
    "brain_fraction",
    "orientation",
)


def pick_slices(
    brain: np.ndarray,
    k: int,
    min_fraction: float = 0.25,
    lesion: np.ndarray | None = None,
) -> list[int]:
    """`k` axial (last-axis) indices evenly spread (bin centres) over the slices whose brain
    area is at least `min_fraction` of the largest; if none of them crosses `lesion`, the pick
    nearest to the lesion's largest cross-section moves there. Sorted, unique (fewer than `k`
    when the brain spans fewer slices)."""
    area = brain.reshape(-1, brain.shape[-1]).sum(axis=0)
    if k < 1 or area.max() == 0:
        return []
    ok = np.flatnonzero(area >= min_fraction * area.max())
    lo, hi = int(ok.min()), int(ok.max())
    # Centres of k equal bins of [lo, hi]: spread, without the thin slices at both ends.
    picks = np.round(lo + (hi - lo) * (np.arange(k) + 0.5) / k).astype(int).tolist()
    # Snap to eligible slices (the brain profile may dip inside [lo, hi]).
    picks = sorted({int(ok[np.argmin(np.abs(ok - p))]) for p in picks})
    if lesion is not None and lesion.any():
        l_area = lesion.reshape(-1, lesion.shape[-1]).sum(axis=0)
        if not any(l_area[p] for p in picks):
            z = int(np.argmax(l_area))
            if area[z] >= min_fraction * area.max():
                nearest = min(picks, key=lambda p: abs(p - z))
                picks = sorted({*(p for p in picks if p != nearest), z})
    return picks


def slice_geometry(affine: np.ndarray, z: int, shape: Sequence[int], orientation: str) -> Any:
    """(index function, 4x4 affine) of axial slice `z` of a RAS+ volume of `shape`.

    `ras`: the slice's true affine (a singleton third axis at z). `display`: rows anterior ->
    posterior, columns right -> left; the affine is diagonal (row, column pixel size, slice
    thickness), like the identity of a PNG: no world orientation.
    """
    a = np.asarray(affine, np.float64)
    if orientation == "ras":
        aff = a.copy()
        aff[:3, 3] = a[:3, 3] + a[:3, 2] * z
        return (lambda v: v[:, :, z]), aff
    if orientation != "display":
        raise ValueError(f"orientation must be 'display' or 'ras', got {orientation!r}")
    sp = np.linalg.norm(a[:3, :3], axis=0)
    aff = np.diag([sp[1], sp[0], sp[2], 1.0])
    return (lambda v: np.ascontiguousarray(v[:, :, z].T[::-1, ::-1])), aff


def display_pair(
    mri: np.ndarray, ct_hu: np.ndarray, head: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """8-bit display versions of a slice: CT through a brain window (centre 35-45 HU, width
    80-200 HU; bone saturates at 255, as in the Harvard PNGs) and the MRI scaled so its 99.5th
    percentile in the head is 230-255. Both rounded to integers 0..255 (float32)."""
    centre, width = rng.uniform(35.0, 45.0), rng.uniform(80.0, 200.0)
    ct = np.clip((ct_hu - (centre - width / 2)) / width, 0.0, 1.0) * 255.0
    ref = float(np.percentile(mri[head], 99.5)) if head.any() else float(mri.max())
    top = rng.uniform(230.0, 255.0)
    m = np.clip(mri / max(ref, 1e-6) * top, 0.0, 255.0)
    return np.round(m).astype(np.float32), np.round(ct).astype(np.float32)


def _read_rows(manifest: Path) -> dict[str, dict[str, str]]:
    with open(manifest, newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def slice_part(
    part_dir: Path,
    prefix: str,
    out: Path,
    k: int,
    min_brain: float,
    orientation: str,
    display_ct: float,
    seed: int,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Cut `k` slices of every case of the 3D dataset at `part_dir` into `out/slices/`; return
    the manifest rows (paths relative to `out/all`)."""
    rows_3d = _read_rows(part_dir / "manifest.csv")
    rows: list[dict[str, Any]] = []
    for v, ref in enumerate(load_dataset(part_dir)):
        case = ref.load(ct_offset=0)
        row3 = rows_3d[ref.case_id]
        ign = None
        if row3.get("ignore"):
            ign = load_nifti(part_dir / row3["ignore"])[0] > 0.5
        assert case.brain is not None and case.bone is not None and case.ndim == 3
        lesion = case.lesion if case.lesion is not None else np.zeros(case.mri.shape, bool)
        head = case.brain | case.bone
        picks = pick_slices(case.brain, k, min_brain, lesion)
        volume = f"{prefix}{ref.case_id}"
        patient = ref.patient_id or volume
        source = volume.rsplit("_", 1)[0] if prefix == "" else volume
        area_max = float(case.brain.sum(axis=(0, 1)).max())
        for z in picks:
            take, aff = slice_geometry(case.affine, z, case.mri.shape, orientation)
            px_mm2 = float(np.prod(np.linalg.norm(aff[:3, :2], axis=0)))
            bone = take(case.bone)
            if bone.sum() * px_mm2 < MIN_BONE_MM2:
                log(f"  skip {volume} z={z}: {bone.sum() * px_mm2:.0f} mm^2 of bone")
                continue
            cid = f"{volume}_z{z:03d}"
            folder = out / "slices" / cid
            mri, ct = take(case.mri), take(case.ct)
            # Per-slice generator: the display draw does not depend on which other slices exist.
            rng = np.random.default_rng([seed, v, z, len(prefix)])
            kind = "hu"
            if rng.random() < display_ct:
                mri, ct = display_pair(mri, ct, take(head), rng)
                kind = "display"
            files: dict[str, str] = {}
            arrays: dict[str, np.ndarray] = {
                "mri": mri,
                "ct": ct,
                "brain": take(case.brain),
                "bone": bone,
                "lesion": take(lesion),
            }
            if ign is not None:
                arrays["ignore"] = take(ign)
            for role, arr in arrays.items():
                save_nifti(folder / f"{role}.nii.gz", arr, aff)
                files[role] = f"../slices/{cid}/{role}.nii.gz"
            partial = ign is not None  # a real lesion no mask labels: no lesion target
            rows.append(
                {
                    **files,
                    "case_id": cid,
                    "lesion": "" if partial else files["lesion"],
                    "lesion_partial": files["lesion"] if partial else "",
                    "ct_kind": kind,
                    "patient_id": patient,
                    "source": source,
                    "volume": volume,
                    "slice_index": z,
                    "brain_fraction": round(float(arrays["brain"].sum()) / area_max, 3),
                    "orientation": orientation,
                }
            )
    return rows


def build(
    out: Path,
    per_source: int = 4,
    phantoms: int = 16,
    slices_per_volume: int = 8,
    seed: int = 0,
    spacing: float = 1.0,
    root: Path = VOLUMES,
    sources: Sequence[RealSource] = OPEN_SOURCES,
    min_brain: float = 0.25,
    orientation: str = "display",
    display_ct: float = 0.5,
    log: Any = print,
    realhead_version: str = REALHEAD_VERSION,
) -> Path:
    """Write the 2D dataset to `out` and return `out/all/manifest.csv` (see the module doc)."""
    t0 = time.time()
    bad = [s.name for s in sources if Path(s.mri).parts[0] not in OPEN_VOLUMES]
    if bad:
        raise ValueError(f"not openly licensed, not for a shipped model: {bad}")
    parts: list[tuple[Path, str]] = []
    if per_source > 0 and sources:
        write_real_dataset(
            out / "3d" / "real",
            root,
            per_source,
            seed,
            sources=sources,
            spacing=spacing,
            overwrite=True,
            version=realhead_version,
            progress=lambda cid: log(f"{time.time() - t0:7.1f}s real {cid}"),
        )
        parts.append((out / "3d" / "real", ""))
    if phantoms > 0:
        shape = tuple(max(8, round(f / spacing)) for f in PHANTOM_FOV_MM)
        cfg = PhantomConfig(shape=shape, spacing=(spacing,) * 3)
        write_phantom_dataset(
            out / "3d" / "phantoms",
            phantoms,
            cfg,
            PHANTOM_SEED + seed,
            overwrite=True,
            contrast="all",
            lesion="mixed",
            progress=lambda i, cid: log(f"{time.time() - t0:7.1f}s phantom {cid}"),
        )
        parts.append((out / "3d" / "phantoms", "phantoms_"))
    if not parts:
        raise ValueError("nothing to build: --per-source and --phantoms are both 0")
    rows: list[dict[str, Any]] = []
    for part_dir, prefix in parts:
        rows += slice_part(
            part_dir, prefix, out, slices_per_volume, min_brain, orientation, display_ct, seed, log
        )
        log(f"{time.time() - t0:7.1f}s sliced {part_dir.name}: {len(rows)} slices so far")
    (out / "all").mkdir(parents=True, exist_ok=True)
    manifest = out / "all" / "manifest.csv"
    tmp = manifest.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in COLUMNS})
    tmp.replace(manifest)
    n_pat = len({r["patient_id"] for r in rows})
    log(f"{time.time() - t0:7.1f}s wrote {len(rows)} slices of {n_pat} patients to {manifest}")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-source", type=int, default=4, help="3D pairs per open source")
    ap.add_argument("--phantoms", type=int, default=16, help="3D phantoms")
    ap.add_argument("--slices-per-volume", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spacing", type=float, default=1.0, help="mm, isotropic 3D grid")
    ap.add_argument("--min-brain", type=float, default=0.25, help="of the largest brain slice")
    ap.add_argument("--orientation", choices=("display", "ras"), default="display")
    ap.add_argument("--display-ct", type=float, default=0.5, help="share of 8-bit display CTs")
    ap.add_argument("--root", type=Path, default=VOLUMES)
    ap.add_argument(
        "--realhead-version",
        choices=REALHEAD_VERSIONS,
        default=REALHEAD_VERSION,
        help="real-anatomy generator version (1: the shipped open2d model's data)",
    )
    args = ap.parse_args()
    build(
        args.out,
        args.per_source,
        args.phantoms,
        args.slices_per_volume,
        args.seed,
        args.spacing,
        args.root,
        min_brain=args.min_brain,
        orientation=args.orientation,
        display_ct=args.display_ct,
        log=lambda s: print(s, flush=True),
        realhead_version=args.realhead_version,
    )


if __name__ == "__main__":
    main()
