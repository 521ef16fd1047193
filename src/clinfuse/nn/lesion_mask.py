"""How a lesion probability map becomes a lesion mask: threshold, minimum component size, a
peak (hysteresis) filter, a component-confidence filter and a mirror-ghost filter
(`clean_mask`, `LesionMaskRule`).

numpy / scipy only (MONAI's `RemoveSmallObjects` imported on use; the mirror-ghost filter
imports `nn.symmetry`, hence torch, only when a rule uses it), so the evaluation harness and
the pipeline can carry a head's rule without importing torch. The confidence and ghost filters
are written here: MONAI's component transforms filter by size (`RemoveSmallObjects`) or keep the
largest component (`KeepLargestConnectedComponent`), not by a component's probability or by
where it lies relative to another's mirror image. The peak filter is hysteresis thresholding
(scikit-image's `apply_hysteresis_threshold` does the same with face-connected components
only; here components are 26-connected, as everywhere else in the rule).

`LesionMaskRule.calibrated` is the head's second calibration step (session 27): within
`NEAR_MASK_MM` of the mask, the probability's logit is rescaled by a factor fitted on the
validation split (a second temperature where the head decides, `training.lesion`); our own, as
no library calibrates by distance to a predicted mask.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The region of the near-mask temperature: voxels this close (mm, spacing-aware) to the head's
# mask. The lesion neighbourhood of the calibration metrics and the guidance's lesion zone use
# the same 10 mm (`metrics.calibration.NEIGHBOURHOOD_MM`, `lesion_zone_mm`).
NEAR_MASK_MM = 10.0


def clean_mask(
    prob: np.ndarray,
    spacing: Sequence[float],
    threshold: float = 0.5,
    min_ml: float = 0.0,
    min_component_prob: float = 0.0,
    min_lesion_prob: float = 0.0,
    drop_mirror_ghosts: bool = False,
    mri: np.ndarray | None = None,
    min_peak_prob: float = 0.0,
) -> np.ndarray:
    """Threshold a lesion probability map, drop connected components (26-connected in 3D)
    smaller than `min_ml` millilitres (MONAI `RemoveSmallObjects`, size in voxels from the
    spacing), then every remaining component whose mean probability is below
    `min_component_prob`, except the most probable one (largest summed probability): a lesion
    mask a reader would draw, without isolated false-positive specks or faint far blobs.

    The confidence filter (scipy `ndimage.label` / `mean` / `sum`) never empties a mask: a weak
    single lesion stays, and only secondary components that the head itself doubts go (issue
    10: such components, tens of mm from the lesion, set the HD95). `min_lesion_prob` is the
    case-level gate that may: when the most probable component's mean probability is below
    it, the head is taken to have found no lesion and the mask is empty (session 18: on
    lesion-free real anatomy a head's only component was a faint 0.1-1.3 mL blob).

    `min_peak_prob` (hysteresis, applied after the minimum size and before the confidence
    filter): every component whose highest probability is below it goes, the most probable one
    included, so it may empty a mask. Session 25, validation (val17+24+29, lesion25w's
    probability, 0.1 mL minimum): the true components' highest probability was >= 0.975 for 90 %
    of them on real anatomy and 1.00 for 95 % on phantoms; the false ones' median was 0.90 (real
    anatomy, 43) and 0.81 (phantoms, 7): most false lesions are faint throughout.

    `drop_mirror_ghosts` (needs `mri`, the case's MRI on `prob`'s grid): last, the components
    left lying on the mirror image of a more confident one go (`drop_ghosts`)."""
    from monai.transforms import RemoveSmallObjects
    from scipy import ndimage

    prob = np.asarray(prob)
    if drop_mirror_ghosts and mri is None:
        raise ValueError("the mirror-ghost filter needs the case's MRI (its mid-sagittal plane)")
    mask = prob >= threshold
    if not mask.any():
        return mask
    if min_ml > 0:
        vox_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
        min_vox = max(1, int(np.ceil(min_ml / vox_ml)))
        with warnings.catch_warnings():
            # scikit-image (under MONAI) renames min_size; the semantics we use are unchanged.
            warnings.simplefilter("ignore", FutureWarning)
            out = RemoveSmallObjects(min_size=min_vox, connectivity=mask.ndim)(mask[None])
        mask = np.asarray(out)[0].astype(bool)
    if min_peak_prob > 0 and mask.any():
        mask = keep_peaked(mask, prob, min_peak_prob)
    if (min_component_prob > 0 or min_lesion_prob > 0) and mask.any():
        labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
        index = np.arange(1, n + 1)
        p64 = prob.astype(np.float64)
        means = np.asarray(ndimage.mean(p64, labels, index))
        primary = int(np.argmax(ndimage.sum(p64, labels, index)))
        if means[primary] < min_lesion_prob:
            return np.zeros_like(mask)
        if min_component_prob > 0 and n > 1:
            keep = means >= min_component_prob
            keep[primary] = True
            mask = np.isin(labels, index[keep])
    if drop_mirror_ghosts and mri is not None:
        mask = drop_ghosts(mask, prob, mri)
    return mask


def keep_peaked(mask: np.ndarray, prob: np.ndarray, min_peak: float) -> np.ndarray:
    """The components of `mask` (26-connected) whose highest probability reaches `min_peak`."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    index = np.arange(1, n + 1)
    peaks = np.asarray(ndimage.maximum(np.asarray(prob, np.float64), labels, index))
    return np.isin(labels, index[peaks >= min_peak])


def drop_ghosts(mask: np.ndarray, prob: np.ndarray, mri: np.ndarray) -> np.ndarray:
    """`mask` without its mirror ghosts: the components (26-connected) taken in order of mean
    probability, highest first, each dropped when any of its voxels lies within
    `nn.symmetry.GHOST_MARGIN_VOXELS` of the mirror image, about the rigid mid-sagittal plane
    of `mri` (`nn.symmetry.mri_plane`), of a component already kept. The first always stays.

    Session 23: a head reading mirror channels marks a lesion's contralateral twin where the
    absolute intensity does not say which side is abnormal (held-out 7503: a 4.16 mL ghost at
    mean probability 0.90 beside the 3.34 mL lesion at 0.95, HD95 62 mm). Ordered by mean, not
    summed, probability: there the ghost outweighed the lesion by sum. The cost: of a truly
    bilateral, symmetric pair of lesions only the more confident side is kept."""
    from scipy import ndimage

    from clinfuse.nn.symmetry import mri_plane, near_mirror_image

    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if n < 2:
        return mask
    index = np.arange(1, n + 1)
    means = np.asarray(ndimage.mean(np.asarray(prob, np.float64), labels, index))
    plane = mri_plane(mri)
    kept = np.zeros_like(mask)
    shadow = kept
    for i in np.argsort(-means, kind="stable"):
        comp = labels == index[i]
        if kept.any() and (comp & shadow).any():
            continue
        kept |= comp
        shadow = near_mirror_image(kept, plane)
    return kept


@dataclass(frozen=True)
class LesionMaskRule:
    """How a lesion head's probability becomes the mask that guides, is written and is
    scored (`clean_mask` at a threshold): components below `min_ml` mL go, then every component
    whose highest probability is below `min_peak_prob`, then secondary
    components whose mean probability is below `min_component_prob`, then everything when the
    most probable component's mean probability is below `min_lesion_prob` (no lesion found),
    then (`drop_mirror_ghosts`) components on the mirror image of a more confident one. All
    are fitted on the validation split with the head (`training.lesion`) and travel with
    it as buffers (`LesionHead.mask_rule`); the default keeps every component.

    `near_logit_scale` is not part of the mask: the reported probability (`calibrated`) has its
    logit multiplied by it within `NEAR_MASK_MM` of the mask (1 = one temperature everywhere)."""

    min_ml: float = 0.0
    min_component_prob: float = 0.0
    min_lesion_prob: float = 0.0
    drop_mirror_ghosts: bool = False
    min_peak_prob: float = 0.0
    near_logit_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.near_logit_scale) and self.near_logit_scale > 0):
            raise ValueError(f"near_logit_scale must be positive, got {self.near_logit_scale}")

    def describe(self) -> str:
        """The rule in words, for logs and result files."""
        near = ""
        if self.near_logit_scale != 1.0:
            near = (
                f"; within {NEAR_MASK_MM:g} mm of the mask the reported probability's logit "
                f"x {self.near_logit_scale:.3f}"
            )
        return (
            f"minimum lesion {self.min_ml:.2f} mL; components kept from peak probability "
            f"{self.min_peak_prob:.2f}; secondary components kept from mean probability "
            f"{self.min_component_prob:.2f}; case-level lesion gate {self.min_lesion_prob:.2f}; "
            f"mirror ghosts {'dropped' if self.drop_mirror_ghosts else 'kept'}{near}"
        )

    def calibrated(
        self, prob: np.ndarray, mask: np.ndarray, spacing: Sequence[float]
    ) -> np.ndarray:
        """The probability a reader is given (written, scored for calibration): `prob` (the
        head's, temperature-scaled: what `apply` reads) with, within `NEAR_MASK_MM` of `mask`
        (this rule's mask of `prob`), sigmoid(logit(p) x `near_logit_scale`); unchanged
        elsewhere, and wherever `prob` is exactly 0 (outside the brain). A positive scale keeps
        every voxel on its side of 0.5, so the mask of the result at 0.5 is the same.

        Session 27: on validation the head's brain-fitted temperature (2.07) leaves the 10 mm
        lesion neighbourhood over-confident at the top and the bottom (ECE 0.049); one
        temperature fitted there (4.1) fixes it but breaks brain-wide ECE (0.0007 -> 0.021);
        a second temperature only near the head's own mask does both (docs/TRAINING.md)."""
        p = np.asarray(prob)
        if self.near_logit_scale == 1.0 or not np.any(mask):
            return p
        from scipy import ndimage

        m = np.asarray(mask, dtype=bool)
        if m.shape != p.shape:
            raise ValueError(f"mask shape {m.shape} does not match prob shape {p.shape}")
        sp = tuple(float(v) for v in spacing)
        near = ndimage.distance_transform_edt(~m, sampling=sp) <= NEAR_MASK_MM
        near &= p > 0
        q = np.clip(p[near].astype(np.float64), 1e-12, 1.0 - 1e-12)
        z = (np.log(q) - np.log1p(-q)) * self.near_logit_scale
        out = p.copy()
        out[near] = np.exp(-np.logaddexp(0.0, -z))
        return out

    def apply(
        self,
        prob: np.ndarray,
        spacing: Sequence[float],
        threshold: float = 0.5,
        mri: np.ndarray | None = None,
    ) -> np.ndarray:
        """The mask of `prob` (bool, same shape). `mri` (the case's MRI on `prob`'s grid) is
        needed by a rule that drops mirror ghosts (a `ValueError` without it)."""
        return clean_mask(
            prob,
            spacing,
            threshold,
            self.min_ml,
            self.min_component_prob,
            self.min_lesion_prob,
            self.drop_mirror_ghosts,
            mri,
            self.min_peak_prob,
        )


@dataclass(frozen=True)
class LesionComponent:
    """One connected component of a lesion mask, as a reader's findings table lists it."""

    volume_ml: float  # a 2D mask: its area as a 1 mm thick slab (mm^2 / 1000)
    mean_prob: float  # mean lesion probability over the component
    max_prob: float
    centroid_mm: tuple[float, ...]  # world (scanner RAS) coordinates, mm
    doubtful: bool  # mean probability below the doubt threshold (`lesion_components`)


def lesion_components(
    prob: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    affine: np.ndarray | None = None,
    doubt_below: float = 0.0,
) -> list[LesionComponent]:
    """The connected components (26-connected in 3D, as `clean_mask`) of a lesion `mask`, most
    probable first (largest summed probability: the one `clean_mask` never drops), each with
    its volume, mean and maximum probability, centroid in world mm (`affine`: voxel -> RAS mm,
    4x4; a 2D mask is read as the slice k = 0; None: voxel index times `spacing`) and whether
    it is doubtful: mean probability below `doubt_below` (the guidance presets' specificity
    gate, `GuidanceConfig.lesion_guide_min_prob`: below it a prediction does not steer the
    fused image; 0 = nothing is doubtful). A 2D mask's volume is its area as a 1 mm slab."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    prob = np.asarray(prob, np.float64)
    if mask.shape != prob.shape:
        raise ValueError(f"mask {mask.shape} and probability {prob.shape} differ in shape")
    if not mask.any():
        return []
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    index = np.arange(1, n + 1)
    sums = np.asarray(ndimage.sum(prob, labels, index), np.float64)
    counts = np.asarray(ndimage.sum(mask, labels, index), np.float64)
    maxes = np.asarray(ndimage.maximum(prob, labels, index), np.float64)
    centres = np.asarray(ndimage.center_of_mass(mask, labels, index), np.float64).reshape(n, -1)
    vox_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    if affine is None:
        world = centres * np.asarray(spacing, dtype=np.float64)
    else:
        ijk = np.zeros((n, 3))
        ijk[:, : mask.ndim] = centres
        aff = np.asarray(affine, np.float64)
        world = ijk @ aff[:3, :3].T + aff[:3, 3]
    out = []
    for i in np.argsort(-sums, kind="stable"):
        mean = float(sums[i] / counts[i])
        out.append(
            LesionComponent(
                volume_ml=float(counts[i]) * vox_ml,
                mean_prob=mean,
                max_prob=float(maxes[i]),
                centroid_mm=tuple(float(v) for v in world[i]),
                doubtful=doubt_below > 0 and mean < doubt_below,
            )
        )
    return out
