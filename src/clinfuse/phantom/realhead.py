"""Real-anatomy training pairs: a real head MRI turned into a co-registered MRI + pseudo-CT pair
with exact brain, bone and lesion masks and inserted lesions.

Written here because the field has no such generator: MR-to-CT synthesis networks need paired
scans we do not have, and our phantoms (`clinfuse.phantom.generate`) have real-looking tissue
values but not real anatomy. This module keeps the MRI's own anatomy and texture and builds the
CT from it, tissue by tissue, in Hounsfield units:

- **Masks.** Given masks are used as they are; missing ones are derived from the MRI: the
  intracranial mask by `clinfuse.preprocess.masks.mri_brain_mask`, the skull as the shell
  between the intracranial surface and the scalp (a smooth random thickness of 4-8 mm that
  never reaches closer than `scalp_mm` to the head surface). A brain-extracted MRI (no skull in
  the field of view) gets a synthetic skull and scalp, painted into the MRI with the sequence's
  own contrast (``skull="synthetic"``).
- **CT in HU.** Intracranial soft tissue from the MRI's own tissue classes (CSF, grey and white
  matter; soft memberships from a 1-D three-class k-means inside the intracranial mask, so
  partial volume carries over): CSF 2-12, GM 36-44, WM 22-29 HU. Skull: a cortical (1200-1700
  HU) and diploe (350-650 HU) profile across the bone's thickness (inner and outer tables about
  1.5 mm). Extracranial soft tissue: fat -110..-70 HU where the MRI says fat (bright on T1),
  skin/muscle 20-50 HU elsewhere, air -1000 HU outside the head. Then a Gaussian point-spread
  (partial volume) and Gaussian noise of `ct_noise_hu`.
- **Lesions** with known masks, sizes drawn log-uniformly in `lesion_ml` (0.5-80 mL by default),
  shape an ellipsoid with a low-frequency perturbed border, placed in the parenchyma (never in
  CSF) of a random hemisphere: ischaemic = each sequence's own contrast (`LESION_MRI_LEVEL`,
  placed among the image's own fitted CSF/GM/WM levels by `lesion_level`) and -5 to -15 HU on
  CT; haemorrhagic = +40 to +70 HU on CT and the sequence's blood contrast.
- **Other contrasts.** ``output_contrast`` re-paints the intracranial tissue classes with another
  sequence's values (T1, T2, FLAIR, DWI, ADC) and keeps the MRI's texture inside each class.
- **Augmentation** with MONAI's random transforms, the same draw for MRI, CT and masks: affine
  (rotation, scale), elastic deformation; on the MRI only: bias field, gamma, Gaussian noise.

The result is a `clinfuse.phantom.generate.Phantom`, written by the same
`clinfuse.phantom.dataset.write_phantom_case` as the phantoms, so training, evaluation and
`clinfuse synth` read both the same way. Generating a pair never reads or writes outside the
arrays it is given; `clinfuse synth --from-mri` is the command.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.case import Case
from clinfuse.io.nifti import load_nifti
from clinfuse.phantom.generate import Phantom
from clinfuse.preprocess.masks import FAT_BRIGHTEST, ball, largest_component, mri_brain_mask
from clinfuse.preprocess.resample import grid_with_spacing, resample_to_grid

# Version 2 (session 15): the intracranial mask leaves out the fat of the orbits and face on
# T1/FLAIR sources and erodes deeper before regrowing (`mri_brain_mask(contrast=...)`), and the
# tissue classes ignore a bright tail (`tissue_memberships(trim_bright=True)`). Version 1 (the
# data of sessions 11-14 and of the shipped checkpoint) stays reproducible with `version="1"`.
# Version 3 (session 26): a lesion's MRI level is placed among the image's own fitted tissue
# centres (`lesion_level`), not at a multiple of its white matter: on a source whose grey/white
# ratio differs from `CLASS_MEANS` (C-STAR's T2: grey matter at 1.8x white) a version-2 infarct
# could come out as bright as grey matter, a label the MRI does not show. Versions 1 and 2 stay
# reproducible.
REALHEAD_VERSION = "3"
REALHEAD_VERSIONS = ("1", "2", "3")
CONTRASTS = ("T1", "T2", "FLAIR", "DWI", "ADC")
LESION_KINDS = ("ischaemic", "haemorrhagic", "none")
# The test cases of the project: never a source of training pairs (README "real data" rule).
TEST_CASE_NAMES = ("seg3d_t1_skullmask", "clinical_stroke_t2_lesion")

# Intracranial class means per sequence (arbitrary units, white matter = 1), CSF/GM/WM order.
CLASS_MEANS: dict[str, tuple[float, float, float]] = {
    "T1": (0.25, 0.70, 1.00),
    "T2": (2.20, 1.30, 1.00),
    "FLAIR": (0.25, 1.25, 1.00),
    "DWI": (0.20, 1.15, 1.00),
    "ADC": (4.20, 1.18, 1.00),
}
# Lesion signal per sequence as a level in white-matter units of `CLASS_MEANS`, (low, high): an
# infarct's oedema replaces the grey/white contrast by a nearly uniform signal. Version 3 maps the
# level through the image's own class centres (`lesion_level`), so "between grey matter and
# CSF" stays so on a source whose centres differ from CLASS_MEANS.
LESION_MRI_LEVEL: dict[str, dict[str, tuple[float, float]]] = {
    "ischaemic": {
        "T1": (0.42, 0.62),  # dark, between CSF and grey matter
        "T2": (1.55, 2.00),  # bright, between grey matter and CSF
        "FLAIR": (1.45, 1.95),  # bright, above grey matter (CSF is dark)
        "DWI": (1.70, 2.60),  # bright (restricted diffusion)
        "ADC": (0.45, 0.70),  # dark
    },
    "haemorrhagic": {
        "T1": (0.80, 1.05),  # hyperacute blood: roughly iso
        "T2": (0.40, 0.70),  # deoxyhaemoglobin: dark
        "FLAIR": (0.60, 1.00),  # mixed
        "DWI": (0.40, 0.80),  # susceptibility-dark
        "ADC": (0.45, 0.70),  # restricted
    },
}
LESION_CT_OFFSET_HU: dict[str, tuple[float, float]] = {
    "ischaemic": (-15.0, -5.0),
    "haemorrhagic": (40.0, 70.0),
}
CT_HU: dict[str, tuple[float, float]] = {
    "csf": (2.0, 12.0),
    "grey_matter": (36.0, 44.0),
    "white_matter": (22.0, 29.0),
    "cortical_bone": (1200.0, 1700.0),
    "diploe": (350.0, 650.0),
    "soft_tissue": (20.0, 50.0),
    "fat": (-110.0, -70.0),
}
AIR_HU = -1000.0


@dataclass(frozen=True)
class RealHeadConfig:
    """How one real MRI becomes a pair. Spacing in mm (None keeps the input's grid)."""

    contrast: str = "T1"  # the input MRI's sequence
    output_contrast: str | None = None  # re-paint to another sequence (None = keep)
    spacing: float | None = 2.0
    lesion: str = "ischaemic"
    n_lesions: int = 1
    lesion_ml: tuple[float, float] = (0.5, 80.0)
    # Hemisphere(s) lesions may go in: "any", "left" or "right" (RAS: left = smaller x). A
    # source with an unlabelled real lesion in one hemisphere gets lesions in the other only.
    lesion_side: str = "any"
    skull: str = "auto"  # "auto" (from the MRI), "synthetic" (brain-extracted input)
    scalp_mm: float = 3.0
    ct_noise_hu: tuple[float, float] = (3.0, 6.0)
    augment: bool = True
    rotate_deg: float = 8.0
    scale: float = 0.06
    elastic: bool = True
    version: str = REALHEAD_VERSION  # generator version ("1" rebuilds data made before session 15)

    def __post_init__(self) -> None:
        if self.version not in REALHEAD_VERSIONS:
            raise ClinfuseInputError(
                f"realhead version must be one of {REALHEAD_VERSIONS}, got {self.version!r}"
            )
        if self.contrast not in CONTRASTS:
            raise ClinfuseInputError(f"contrast must be one of {CONTRASTS}, got {self.contrast!r}")
        if self.output_contrast is not None and self.output_contrast not in CONTRASTS:
            raise ClinfuseInputError(
                f"output contrast must be one of {CONTRASTS}, got {self.output_contrast!r}"
            )
        if self.lesion not in LESION_KINDS:
            raise ClinfuseInputError(f"lesion must be one of {LESION_KINDS}, got {self.lesion!r}")
        if self.lesion_side not in ("any", "left", "right"):
            raise ClinfuseInputError(f"lesion side must be any/left/right: {self.lesion_side!r}")
        if self.skull not in ("auto", "synthetic"):
            raise ClinfuseInputError(f"skull must be 'auto' or 'synthetic', got {self.skull!r}")
        if not 0 <= self.n_lesions <= 4:
            raise ClinfuseInputError(f"n_lesions must be 0..4, got {self.n_lesions}")
        lo, hi = self.lesion_ml
        if not 0 < lo <= hi:
            raise ClinfuseInputError(f"lesion_ml must be 0 < low <= high, got {self.lesion_ml}")
        if self.spacing is not None and self.spacing <= 0:
            raise ClinfuseInputError(f"spacing must be > 0, got {self.spacing}")

    @property
    def mri_contrast(self) -> str:
        """The contrast of the MRI that comes out."""
        return self.output_contrast or self.contrast

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RealMri:
    """A real MRI and its optional masks, on one grid (canonical RAS+)."""

    mri: np.ndarray
    affine: np.ndarray
    brain: np.ndarray | None = None
    bone: np.ndarray | None = None
    lesion: np.ndarray | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def load_real_mri(
    mri: str | Path,
    brain: str | Path | None = None,
    bone: str | Path | None = None,
    lesion: str | Path | None = None,
) -> RealMri:
    """Load a 3D MRI NIfTI and optional masks on the same grid (errors name the file)."""
    arr, aff = load_nifti(mri)
    if arr.ndim != 3:
        raise ClinfuseInputError(f"a real-anatomy pair needs a 3D MRI, got {arr.ndim}D", mri)
    masks: dict[str, np.ndarray | None] = {}
    for role, path in (("brain", brain), ("bone", bone), ("lesion", lesion)):
        if path is None:
            masks[role] = None
            continue
        m, maff = load_nifti(path)
        if m.shape != arr.shape or not np.allclose(maff, aff, atol=1e-3):
            raise ClinfuseInputError(
                f"{role} mask is not on the MRI's grid (shape {m.shape} vs {arr.shape})", path
            )
        masks[role] = m > 0.5
    return RealMri(arr.astype(np.float32), aff, source=str(mri), **masks)


def _resample(real: RealMri, spacing: float | None) -> RealMri:
    if spacing is None:
        return real
    shape, aff = grid_with_spacing(real.mri.shape, real.affine, spacing)
    mri = resample_to_grid(real.mri, real.affine, shape, aff)

    def mask(m: np.ndarray | None) -> np.ndarray | None:
        if m is None:
            return None
        # Linear interpolation of the mask then >= 0.5: smoother than nearest when downsampling.
        return resample_to_grid(m.astype(np.float32), real.affine, shape, aff) >= 0.5

    return RealMri(
        mri, aff, mask(real.brain), mask(real.bone), mask(real.lesion), real.source, real.extra
    )


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, sigma_vox: float) -> np.ndarray:
    """A smooth random field with zero mean and unit standard deviation."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return ((f - f.mean()) / max(float(f.std()), 1e-6)).astype(np.float32)


def _robust_scale(mri: np.ndarray, mask: np.ndarray) -> float:
    vals = mri[mask]
    return float(np.percentile(vals, 99.0)) if vals.size else float(mri.max() or 1.0)


def head_mask(mri: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The head (everything that is not air): a low threshold, largest component, holes filled."""
    sm = ndimage.gaussian_filter(mri, sigma=[1.0 / s for s in spacing])
    hi = float(np.percentile(sm, 99.5))
    if hi <= 0:
        raise ClinfuseInputError("MRI is empty (no positive values)")
    head = largest_component(sm > 0.08 * hi)
    head = ndimage.binary_closing(np.pad(head, 3), structure=ball(3.0, spacing))[3:-3, 3:-3, 3:-3]
    return ndimage.binary_fill_holes(head)


def _mri_intracranial(mri: np.ndarray, spacing: Sequence[float], cfg: RealHeadConfig) -> np.ndarray:
    """The automatic intracranial mask of generator version `cfg.version` (see REALHEAD_VERSION)."""
    if cfg.version == "1":
        return mri_brain_mask(mri, spacing)
    return mri_brain_mask(mri, spacing, contrast=cfg.contrast)


def cut_below_foramen(intracranial: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """Drop the part of an MRI-derived intracranial mask that leaks down the neck: below the
    largest axial cross-section, the first slice whose area falls under `fraction` of it is the
    foramen magnum (brainstem into the spinal canal); everything below it goes."""
    area = intracranial.sum(axis=(0, 1))
    if area.max() == 0:
        return intracranial
    top = int(area.argmax())
    below = np.nonzero(area[:top] < fraction * area.max())[0]
    if below.size == 0:
        return intracranial
    out = intracranial.copy()
    out[:, :, : int(below.max()) + 1] = False
    return largest_component(out)


def skull_shell(
    head: np.ndarray,
    intracranial: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    thickness_mm: tuple[float, float] = (4.0, 8.0),
    scalp_mm: float = 3.0,
) -> np.ndarray:
    """The skull as the shell around the intracranial mask: a smooth random thickness in
    `thickness_mm`, never closer than `scalp_mm` to the head surface, at least one voxel."""
    sp = tuple(float(s) for s in spacing)
    d_in = ndimage.distance_transform_edt(~intracranial, sampling=sp)
    d_out = ndimage.distance_transform_edt(np.pad(head, 1), sampling=sp)[1:-1, 1:-1, 1:-1]
    lo, hi = thickness_mm
    t = lo + (hi - lo) * (0.5 + 0.5 * np.tanh(_smooth_field(head.shape, rng, 12.0 / min(sp))))
    shell = ~intracranial & (d_in <= t) & ((d_out >= scalp_mm) | (d_in <= min(sp) * 1.01))
    return shell & head


def tissue_memberships(
    mri: np.ndarray, intracranial: np.ndarray, contrast: str, trim_bright: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Soft CSF/GM/WM memberships inside the intracranial mask from a 1-D three-class k-means.

    `trim_bright`: fit the k-means without values above the upper Tukey fence (Q3 + 1.5 IQR),
    for sequences whose brightest tissue class is a large one (T1: white matter), so a bright
    tail of fat or marrow that the mask took in cannot become the white-matter centre; every
    voxel still gets memberships.

    Returns (p (3, *S) float32 summing to 1 inside the mask and 0 outside, class centres in MRI
    units ordered CSF, GM, WM by the sequence's known order (`CLASS_MEANS`)).
    """
    vals = mri[intracranial].astype(np.float64)
    if vals.size < 30:
        raise ClinfuseInputError("intracranial mask is (almost) empty; cannot find tissue classes")
    if trim_bright:
        q1, q3 = np.percentile(vals, [25.0, 75.0])
        vals = vals[vals <= q3 + 1.5 * (q3 - q1)]
    c = np.percentile(vals, [15.0, 50.0, 85.0])
    for _ in range(30):
        lab = np.argmin(np.abs(vals[:, None] - c[None, :]), axis=1)
        new = np.array([vals[lab == k].mean() if np.any(lab == k) else c[k] for k in range(3)])
        if np.allclose(new, c):
            break
        c = new
    # Order the sorted centres as CSF, GM, WM by this sequence's expected ranking.
    ranks = np.argsort(np.argsort(CLASS_MEANS[contrast]))  # rank of CSF, GM, WM
    centres = np.sort(c)[ranks]
    width = max(float(np.std(vals)) * 0.25, 1e-3)
    d = np.stack([(mri - m) ** 2 for m in centres]).astype(np.float32)
    logit = -d / (2.0 * width**2)
    logit -= logit.max(axis=0, keepdims=True)
    p = np.exp(logit)
    p /= p.sum(axis=0, keepdims=True)
    p *= intracranial[None]
    return p.astype(np.float32), centres.astype(np.float32)


def lesion_level(canonical: float, contrast: str, centres: np.ndarray) -> float:
    """A lesion's MRI level for an image whose CSF/GM/WM centres are `centres` (MRI units).

    `canonical` is a level on `CLASS_MEANS[contrast]`'s scale (white matter = 1, as in
    `LESION_MRI_LEVEL`). It is carried over piecewise-linearly between the canonical class means
    and the fitted ones (linear beyond the outer classes, with the slope of the nearest
    segment), so a level between grey matter and CSF on the canonical scale lies between the
    image's grey matter and CSF. When the fitted centres are not in the sequence's order with a
    usable gap (a degenerate fit), it falls back to `canonical` times the white-matter centre,
    version 2's rule. Written here: the field has no lesion-insertion model to borrow this from.
    """
    canon = np.asarray(CLASS_MEANS[contrast], dtype=np.float64)
    fitted = np.asarray(centres, dtype=np.float64)
    order = np.argsort(canon)
    xs, ys = canon[order], fitted[order]
    wm = float(fitted[2])
    slopes = np.diff(ys) / np.diff(xs)
    if not np.all(slopes > 0.05 * max(wm, 1e-6)):
        return float(canonical) * wm
    if canonical <= xs[0]:
        return float(ys[0] + (canonical - xs[0]) * slopes[0])
    if canonical >= xs[-1]:
        return float(ys[-1] + (canonical - xs[-1]) * slopes[-1])
    return float(np.interp(canonical, xs, ys))


def _bone_profile(
    bone: np.ndarray, spacing: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """HU across the skull: cortical tables (about 1.5 mm) at both surfaces, diploe inside."""
    sp = tuple(float(s) for s in spacing)
    depth = ndimage.distance_transform_edt(np.pad(bone, 1), sampling=sp)[1:-1, 1:-1, 1:-1]
    thick = ndimage.maximum_filter(depth, size=5) * bone  # local half-thickness
    cortical = rng.uniform(*CT_HU["cortical_bone"])
    diploe = rng.uniform(*CT_HU["diploe"])
    table = float(rng.uniform(1.2, 2.0))
    # Weight of cortical bone: 1 at the surfaces, decaying inward; thin bone is all cortical.
    w = np.exp(-np.maximum(depth - min(sp) * 0.5, 0.0) / table)
    w = np.where(thick <= table * 1.5, 1.0, w)
    return (diploe + (cortical - diploe) * w).astype(np.float32) * bone


def _paint_synthetic_skull(
    mri: np.ndarray,
    bone: np.ndarray,
    scalp: np.ndarray,
    contrast: str,
    wm: float,
    spacing: Sequence[float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Skull and scalp values in a brain-extracted MRI, in the sequence's contrast (white
    matter = `wm`): dark cortical bone on every sequence, marrow and scalp fat by sequence."""
    rel = {
        "T1": (0.05, 0.9, 0.7),
        "T2": (0.05, 0.7, 0.8),
        "FLAIR": (0.05, 0.8, 0.8),
        "DWI": (0.05, 0.2, 0.4),
        "ADC": (0.05, 0.2, 1.0),
    }[contrast]
    cort, marrow, skin = rel
    out = mri.copy()
    sp = tuple(float(s) for s in spacing)
    depth = ndimage.distance_transform_edt(np.pad(bone, 1), sampling=sp)[1:-1, 1:-1, 1:-1]
    bone_val = np.where(depth > 1.5, marrow, cort) * wm
    tex = 1.0 + 0.08 * _smooth_field(mri.shape, rng, 1.5)
    out = np.where(bone, bone_val * tex, out)
    out = np.where(scalp & ~bone, skin * wm * tex, out)
    return out.astype(np.float32)


def _lesion_mask(
    parenchyma: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    volume_ml: float,
    side: str,
    midline_x: float,
) -> np.ndarray:
    """One lesion in the parenchyma: a perturbed ellipsoid scaled to about `volume_ml`."""
    sp = np.asarray(spacing, dtype=np.float64)
    xs = np.arange(parenchyma.shape[0])[:, None, None]
    # Strokes respect the midline: the lesion stays in its hemisphere, its centre 3 voxels off.
    if side == "left":
        parenchyma = parenchyma & (xs < midline_x)
        cand = parenchyma & (xs < midline_x - 3)
    elif side == "right":
        parenchyma = parenchyma & (xs > midline_x)
        cand = parenchyma & (xs > midline_x + 3)
    else:
        cand = parenchyma.copy()
    idx = np.argwhere(cand)
    if idx.size == 0:
        return np.zeros_like(parenchyma)
    centre = idx[rng.integers(len(idx))].astype(np.float64)
    axes = np.array([1.0, rng.uniform(0.5, 1.0), rng.uniform(0.4, 1.0)])
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    half = np.ceil(60.0 / sp).astype(int)
    lo = np.maximum(centre.astype(int) - half, 0)
    hi = np.minimum(centre.astype(int) + half + 1, parenchyma.shape)
    grid = np.stack(
        np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    ).astype(np.float64)
    rel = (grid - centre[:, None, None, None]) * sp[:, None, None, None]
    rot = np.einsum("ij,j...->i...", q.T, rel) / axes[:, None, None, None]
    r = np.sqrt((rot**2).sum(axis=0))
    noise = _smooth_field(r.shape, rng, 4.0 / float(sp.min()))
    sub_par = parenchyma[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    vox_ml = float(np.prod(sp)) / 1000.0
    target = max(volume_ml / vox_ml, 3.0)
    # Bisection on the radius so the lesion inside the parenchyma has about the target size.
    a, b = 0.5, 60.0
    m = np.zeros_like(sub_par)
    for _ in range(18):
        rad = 0.5 * (a + b)
        m = (r / rad + 0.25 * noise) < 1.0
        m &= sub_par
        n = int(m.sum())
        if n < target:
            a = rad
        else:
            b = rad
    m = largest_component(m) if m.any() else m
    out = np.zeros_like(parenchyma)
    out[tuple(slice(a_, b_) for a_, b_ in zip(lo, hi, strict=True))] = m
    return out


def _augment(
    arrays: dict[str, np.ndarray], masks: dict[str, np.ndarray], cfg: RealHeadConfig, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """The same MONAI random affine (+ elastic) draw for images (bilinear) and masks (nearest)."""
    from monai.transforms import Compose, Rand3DElasticd, RandAffined

    keys_img = list(arrays)
    keys_msk = list(masks)
    keys = keys_img + keys_msk
    modes = ["bilinear"] * len(keys_img) + ["nearest"] * len(keys_msk)
    rot = np.deg2rad(cfg.rotate_deg)
    tfs: list[Any] = [
        RandAffined(
            keys=keys,
            prob=1.0,
            rotate_range=(rot, rot, rot),
            scale_range=(cfg.scale,) * 3,
            mode=modes,
            padding_mode="border",
        )
    ]
    if cfg.elastic:
        tfs.append(
            Rand3DElasticd(
                keys=keys,
                sigma_range=(6.0, 9.0),
                magnitude_range=(40.0, 120.0),
                prob=0.7,
                mode=modes,
                padding_mode="border",
            )
        )
    tf = Compose(tfs)
    tf.set_random_state(seed=seed)
    data = {k: v[None].astype(np.float32) for k, v in {**arrays, **masks}.items()}
    out = tf(data)
    imgs = {k: np.asarray(out[k])[0].astype(np.float32) for k in keys_img}
    msks = {k: np.asarray(out[k])[0] > 0.5 for k in keys_msk}
    return imgs, msks, {"affine_and_elastic_seed": seed, "rotate_deg": cfg.rotate_deg}


def _mri_intensity_augment(
    mri: np.ndarray, head: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, float]]:
    """MONAI bias field, gamma (contrast) and Gaussian noise on the MRI (inside its range)."""
    from monai.transforms import RandAdjustContrast, RandBiasField, RandGaussianNoise

    scale = max(_robust_scale(mri, head), 1e-6)
    x = (mri / scale)[None].astype(np.float32)
    seed = int(rng.integers(2**31 - 1))
    for i, t in enumerate(
        (
            RandBiasField(coeff_range=(0.0, 0.25), prob=0.7),
            RandAdjustContrast(gamma=(0.8, 1.25), prob=0.5),
            RandGaussianNoise(std=float(rng.uniform(0.005, 0.03)), prob=0.8),
        )
    ):
        t.set_random_state(seed=seed + i)
        x = np.asarray(t(x))
    out = np.maximum(x[0], 0.0) * scale * head
    return out.astype(np.float32), {"intensity_seed": seed}


def generate_real_pair(
    real: RealMri,
    config: RealHeadConfig,
    seed: int | np.random.Generator,
    case_id: str = "realhead",
) -> Phantom:
    """One real-anatomy pair: MRI (the input's anatomy, optionally re-painted and with lesions),
    pseudo-CT in HU, exact brain/bone/lesion masks, all on one grid. Same inputs and seed ->
    same arrays. A lesion mask given with the MRI is kept (its lesion is already in the MRI and
    is added to the CT); `config.n_lesions` more are inserted when `config.lesion` is not none.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    cfg = config
    r = _resample(real, cfg.spacing)
    sp = r.spacing
    mri = np.maximum(r.mri, 0.0).astype(np.float32)
    if not np.isfinite(mri).all():
        raise ClinfuseInputError("MRI contains NaN or Inf values", real.source or None)

    # 1. Masks: given, or derived from the MRI; a brain-extracted input gets a synthetic skull.
    if cfg.skull == "synthetic":
        pad = int(np.ceil(16.0 / min(sp)))
        mri = np.pad(mri, pad)
        aff = r.affine.copy()
        aff[:3, 3] -= r.affine[:3, :3] @ np.full(3, pad)
        brain_given = None if r.brain is None else np.pad(r.brain, pad)
        lesion_given = None if r.lesion is None else np.pad(r.lesion, pad)
        intracranial = (
            brain_given
            if brain_given is not None
            else ndimage.binary_fill_holes(largest_component(mri > 0.02 * mri.max()))
        )
        t_skull = float(rng.uniform(4.0, 7.0))
        t_scalp = float(rng.uniform(3.0, 6.0))
        d_in = ndimage.distance_transform_edt(~intracranial, sampling=sp)
        bone = ~intracranial & (d_in <= t_skull)
        head = intracranial | (d_in <= t_skull + t_scalp)
        scalp = head & ~intracranial & ~bone
        wm_guess = float(np.percentile(mri[intracranial], 75))
        mri = _paint_synthetic_skull(mri, bone, scalp, cfg.contrast, wm_guess, sp, rng)
    else:
        aff = r.affine
        lesion_given = r.lesion
        head = head_mask(mri, sp)
        intracranial = (
            r.brain if r.brain is not None else cut_below_foramen(_mri_intracranial(mri, sp, cfg))
        )
        if r.bone is not None:
            bone = r.bone & ~intracranial
        else:
            bone = skull_shell(head, intracranial, sp, rng, scalp_mm=cfg.scalp_mm)
        head |= bone | intracranial
    brain = intracranial & ~bone

    # 2. Tissue classes inside the skull (from the input contrast), optional re-painting.
    trim = cfg.version != "1" and cfg.contrast in FAT_BRIGHTEST
    p, centres = tissue_memberships(mri, brain, cfg.contrast, trim_bright=trim)
    wm = float(centres[2])
    contrast = cfg.mri_contrast
    repainted = cfg.output_contrast is not None and cfg.output_contrast != cfg.contrast
    if repainted:
        means = np.asarray(CLASS_MEANS[contrast], dtype=np.float32) * wm
        fitted = np.einsum("k...,k->...", p, centres)
        resid = (mri - fitted) / max(wm, 1e-6)  # texture inside each class, WM units
        painted = np.einsum("k...,k->...", p, means) * (1.0 + 0.8 * resid)
        # Outside the brain: keep the anatomy but scale to the new sequence's white matter.
        mri = np.where(brain, np.maximum(painted, 0.0), mri)
        if contrast in ("DWI", "ADC"):
            mri = np.where(brain, mri, mri * 0.3)

    # White matter of the MRI that comes out (re-painting keeps it at `wm`), and its class
    # centres (re-painting sets them to the new sequence's CLASS_MEANS).
    wm_out = wm
    centres_out = np.asarray(CLASS_MEANS[contrast], dtype=np.float32) * wm if repainted else centres
    # 3. Lesions: given (already in the MRI) plus inserted ones.
    lesion = np.zeros_like(brain) if lesion_given is None else (lesion_given & brain)
    parenchyma = brain & (p[0] < 0.5)
    parenchyma = ndimage.binary_erosion(parenchyma, iterations=1) | (parenchyma & lesion)
    lesions_truth: list[dict[str, Any]] = []
    ct_offset = np.zeros(mri.shape, dtype=np.float32)
    if lesion_given is not None and lesion.any():
        off = float(rng.uniform(*LESION_CT_OFFSET_HU["ischaemic"]))
        ct_offset += off * lesion
        lesions_truth.append({"kind": "given", "voxels": int(lesion.sum()), "ct_offset_hu": off})
    xs = np.argwhere(brain)[:, 0]
    midline = float(xs.mean()) if xs.size else mri.shape[0] / 2.0
    if cfg.lesion != "none":
        for _ in range(cfg.n_lesions):
            lo, hi = np.log(cfg.lesion_ml[0]), np.log(cfg.lesion_ml[1])
            ml = float(np.exp(rng.uniform(lo, hi)))
            side = cfg.lesion_side
            if side == "any":
                side = str(rng.choice(["left", "right"]))
            m = _lesion_mask(parenchyma & ~lesion, sp, rng, ml, side, midline)
            if not m.any():
                continue
            canonical = float(rng.uniform(*LESION_MRI_LEVEL[cfg.lesion][contrast]))
            if cfg.version in ("1", "2"):
                level = canonical * wm_out
            else:
                level = lesion_level(canonical, contrast, centres_out)
            off = float(rng.uniform(*LESION_CT_OFFSET_HU[cfg.lesion]))
            pv = ndimage.gaussian_filter(m.astype(np.float32), 0.6) * brain
            tex = 1.0 + 0.06 * _smooth_field(mri.shape, rng, 1.0)
            mri = mri * (1.0 - pv) + level * tex * pv
            ct_offset += off * pv
            lesion |= m
            lesions_truth.append(
                {
                    "kind": cfg.lesion,
                    "side": side,
                    "target_ml": ml,
                    "voxels": int(m.sum()),
                    "mri_level": level,
                    "mri_level_canonical": canonical,
                    "ct_offset_hu": off,
                }
            )

    # 4. The pseudo-CT in HU.
    ct_classes = np.array(
        [rng.uniform(*CT_HU[k]) for k in ("csf", "grey_matter", "white_matter")], dtype=np.float32
    )
    ct = np.full(mri.shape, AIR_HU, dtype=np.float32)
    soft = float(rng.uniform(*CT_HU["soft_tissue"]))
    fat = float(rng.uniform(*CT_HU["fat"]))
    outside = head & ~brain & ~bone
    if contrast == "T1":
        # Fat (scalp, orbit) is the brightest extracranial tissue on T1.
        scale_out = _robust_scale(mri, outside) if outside.any() else 1.0
        fat_w = np.clip((mri / max(scale_out, 1e-6) - 0.55) / 0.3, 0.0, 1.0)
    else:
        fat_w = np.zeros(mri.shape, dtype=np.float32)
    ct = np.where(outside, soft + (fat - soft) * fat_w, ct)
    ct = np.where(brain, np.einsum("k...,k->...", p, ct_classes) + ct_offset, ct)
    ct = np.where(bone, _bone_profile(bone, sp, rng), ct)
    ct = ndimage.gaussian_filter(ct, sigma=[0.45 * min(sp) / s for s in sp])
    noise_hu = float(rng.uniform(*cfg.ct_noise_hu))
    ct = ct + noise_hu * rng.standard_normal(ct.shape).astype(np.float32) * head

    # 5. Augmentation: one spatial draw for everything, intensity on the MRI only.
    aug: dict[str, Any] = {}
    if cfg.augment:
        imgs, msks, aug = _augment(
            {"mri": mri, "ct": ct},
            {"brain": brain, "bone": bone, "lesion": lesion, "head": head},
            cfg,
            int(rng.integers(2**31 - 1)),
        )
        mri, ct = imgs["mri"], imgs["ct"]
        brain, bone, lesion, head = msks["brain"], msks["bone"], msks["lesion"], msks["head"]
        mri, aug_int = _mri_intensity_augment(mri, head, rng)
        aug.update(aug_int)
        brain &= ~bone
        lesion &= brain
    ct = np.clip(np.round(ct), -1024, 3071).astype(np.float32)
    mri = np.maximum(mri, 0.0).astype(np.float32)

    vox_ml = float(np.prod(sp)) / 1000.0
    truth: dict[str, Any] = {
        "generator": "realhead",
        "realhead_version": cfg.version,
        "seed": seed if isinstance(seed, int) else None,
        "source_mri": real.source,
        "config": cfg.to_dict(),
        "mri_contrast": contrast,
        "array_order": "x, y, z (RAS+)",
        "masks_from": {
            "brain": "given" if r.brain is not None else "mri_brain_mask",
            "bone": "given"
            if r.bone is not None
            else ("synthetic" if cfg.skull == "synthetic" else "skull_shell"),
            "lesion": "given+inserted" if lesion_given is not None else "inserted",
        },
        "ct_hu": {
            "csf_gm_wm": [float(v) for v in ct_classes],
            "soft_tissue": soft,
            "fat": fat,
            "noise_sigma": noise_hu,
        },
        "lesions": lesions_truth,
        "lesion_volume_ml": float(lesion.sum()) * vox_ml,
        # Whether every lesion in the MRI is in the mask (a source with an unlabelled real
        # lesion is not: lesion-head training must not treat its unmasked voxels as negatives).
        "lesion_complete": bool(real.extra.get("lesion_complete", True)),
        "augmentation": aug,
        "mask_voxels": {
            "brain": int(brain.sum()),
            "bone": int(bone.sum()),
            "lesion": int(lesion.sum()),
        },
        "masks_grid": "mri",
        "misregistration": None,
    }
    case = Case(
        case_id=case_id,
        mri=mri,
        ct=ct,
        affine=np.asarray(aff, dtype=np.float64),
        brain=brain,
        bone=bone,
        lesion=lesion,
        ct_kind="hu",
        meta={"realhead": True, "mri_contrast": contrast},
    )
    return Phantom(case=case, truth=truth, labels=np.zeros(mri.shape, dtype=np.uint8))


@dataclass(frozen=True)
class RealSource:
    """One real MRI used as training anatomy (paths relative to a data root)."""

    name: str
    mri: str
    contrast: str
    skull: str = "auto"
    # Hemisphere(s) where inserted lesions may go; a source with a real, unlabelled lesion
    # gets them on the other side, and the unlabelled side is written as `ignore.nii.gz`.
    lesion_side: str = "any"
    unlabelled_side: str | None = None
    output_contrasts: tuple[str | None, ...] = (None,)
    patient: str = ""  # one person's volumes share it, so splits keep them together
    # Optional masks on the MRI's grid (paths relative to the root like `mri`).
    brain: str | None = None
    bone: str | None = None
    lesion: str | None = None


# The training anatomy of issue 13: every real volume except the two test cases.
TRAINING_SOURCES: tuple[RealSource, ...] = (
    RealSource(
        "chris_t1",
        "chris_t1_wholehead/t1.nii.gz",
        "T1",
        output_contrasts=(None, "T2", "FLAIR", "DWI", "ADC"),
        patient="chris",
    ),
    RealSource(
        "rire_t1",
        "rire_training_001/mr_t1.nii.gz",
        "T1",
        output_contrasts=(None, "T2", "FLAIR", "DWI", "ADC"),
        patient="rire001",
    ),
    RealSource(
        "vm_t1",
        "visible_male_head/mri_t1.nii.gz",
        "T1",
        output_contrasts=(None, "T2"),
        patient="visible_male",
    ),
    RealSource(
        "cstar_t1",
        "cstar_chronic_stroke_brainextracted/t1.nii.gz",
        "T1",
        skull="synthetic",
        lesion_side="right",
        unlabelled_side="left",
        patient="cstar",
    ),
    RealSource(
        "cstar_t2",
        "cstar_chronic_stroke_brainextracted/t2.nii.gz",
        "T2",
        skull="synthetic",
        lesion_side="right",
        unlabelled_side="left",
        patient="cstar",
    ),
    RealSource(
        "cstar_flair",
        "cstar_chronic_stroke_brainextracted/flair.nii.gz",
        "FLAIR",
        skull="synthetic",
        lesion_side="right",
        unlabelled_side="left",
        patient="cstar",
    ),
)


def is_test_case(path: str) -> bool:
    """Whether `path` lies in one of the project's test heads (`TEST_CASE_NAMES`)."""
    return any(name in Path(path).parts for name in TEST_CASE_NAMES)


def unlabelled_mask(case: Case, side: str | None) -> np.ndarray | None:
    """Voxels whose lesion label is unknown: the brain of the `side` hemisphere (RAS x)."""
    if side is None or case.brain is None:
        return None
    xs = np.argwhere(case.brain)[:, 0]
    mid = float(xs.mean())
    x = np.arange(case.mri.shape[0])[:, None, None]
    half = x < mid if side == "left" else x > mid
    return np.broadcast_to(half, case.mri.shape) & case.brain


def write_real_dataset(
    out: str | Path,
    root: str | Path,
    n_per_source: int,
    seed: int,
    sources: Sequence[RealSource] = TRAINING_SOURCES,
    spacing: float | None = 2.0,
    lesion_cycle: Sequence[str] = ("ischaemic", "ischaemic", "haemorrhagic", "ischaemic", "none"),
    augment: bool = True,
    overwrite: bool = False,
    progress: Any = None,
    version: str = REALHEAD_VERSION,
    patients: Collection[str] | None = None,
    exclude_patients: Collection[str] = (),
) -> Path:
    """Write `n_per_source` augmented pairs of every source to `<out>/<name>_<k>/` plus
    `manifest.csv` (the phantom layout, so `clinfuse train` reads it). Case k of source s uses
    `default_rng(seed + 1000 * s + k)`; its output contrast cycles through the source's
    `output_contrasts` and its lesion kind through `lesion_cycle`. The test cases are refused.

    `patients` / `exclude_patients`: only the sources of those people (`RealSource.patient`) /
    all but theirs, for splits that keep a person's anatomy out of training (leave one person
    out). `s` stays the source's index in `sources`, so a kept source's pairs are the same as
    in a build of every source. An unknown name is a `ClinfuseInputError`.
    """
    from clinfuse.phantom.dataset import (
        MANIFEST_COLUMNS,
        _atomic_bytes,
        check_out_dir,
        nifti_bytes,
        write_phantom_case,
    )

    known = {src.patient for src in sources}
    for name in [*(patients or ()), *exclude_patients]:
        if name not in known:
            raise ClinfuseInputError(
                f"unknown patient {name!r}: the sources' patients are {sorted(known)}", Path(out)
            )
    root = Path(root)
    out = check_out_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    rows = [",".join((*MANIFEST_COLUMNS, "ignore", "patient_id"))]
    for s, src in enumerate(sources):
        if (patients is not None and src.patient not in patients) or (
            src.patient in exclude_patients
        ):
            continue
        if is_test_case(src.mri):
            raise ClinfuseInputError(
                "is a test case of this project: never a source of training pairs", src.mri
            )
        if any(is_test_case(p) for p in (src.brain, src.bone, src.lesion) if p):
            raise ClinfuseInputError("a mask of a test case: never a training source", src.mri)
        real = load_real_mri(
            root / src.mri,
            *(None if p is None else root / p for p in (src.brain, src.bone, src.lesion)),
        )
        if src.unlabelled_side is not None:
            real.extra["lesion_complete"] = False
        for k in range(n_per_source):
            rng = np.random.default_rng(seed + 1000 * s + k)
            cfg = RealHeadConfig(
                contrast=src.contrast,
                output_contrast=src.output_contrasts[k % len(src.output_contrasts)],
                spacing=spacing,
                lesion=lesion_cycle[k % len(lesion_cycle)],
                n_lesions=1 + int(rng.random() < 0.25),
                lesion_side=src.lesion_side,
                skull=src.skull,
                augment=augment,
                version=version,
            )
            case_id = f"{src.name}_{k:03d}"
            ph = generate_real_pair(real, cfg, rng, case_id=case_id)
            ph.truth["seed"] = seed + 1000 * s + k
            ph.truth["source_name"] = src.name
            write_phantom_case(out / case_id, ph)
            files = [f"{case_id}/{f}.nii.gz" for f in ("mri", "ct", "brain", "bone", "lesion")]
            ign = unlabelled_mask(ph.case, src.unlabelled_side)
            if ign is not None:
                _atomic_bytes(
                    out / case_id / "ignore.nii.gz",
                    nifti_bytes(ign.astype(np.uint8), ph.case.affine),
                )
                files.append(f"{case_id}/ignore.nii.gz")
            else:
                files.append("")
            rows.append(",".join([case_id, *files, src.patient or src.name]))
            if progress is not None:
                progress(case_id)
    _atomic_bytes(out / "manifest.csv", ("\n".join(rows) + "\n").encode("utf-8"))
    return out
