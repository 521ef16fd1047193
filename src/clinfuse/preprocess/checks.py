"""Bad-input checks run by `preprocess_case` before anything is fused: a CT with no bone in its
field of view, and a brain-extracted (skull-stripped) MRI. Both raise `ClinfuseInputError`
naming the file; nothing is fused silently. Self-contained (numpy/scipy only), so they run even
when the automatic mask makers are replaced or unavailable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from clinfuse.errors import ClinfuseInputError
from clinfuse.preprocess.normalize import head_foreground

DENSE_BONE_HU = 300.0  # nothing but bone (or metal, contrast) is denser in a head CT
MIN_BONE_ML = 1.0  # 3D: a head CT's skull holds 300-600 mL; a vertex slab still several mL
MIN_BONE_MM2 = 20.0  # 2D: a slice through the skull cuts hundreds of mm^2 of bone
MIN_BONE_FRACTION = 0.01  # ... or 1 % of a smaller field of view (the skull is 10-20 % of a head)
SKULL_INSIDE_HEAD_MIN = 0.5  # fraction of the skull that a head MRI's foreground encloses
SKULL_AT_BACKGROUND_MIN = 0.5  # fraction of skull voxels at the MRI's exact minimum
HEAD_CLOSING_MM = 3.0  # closes the dark skull band between scalp and brain in the MRI


def check_ct_has_bone(
    ct_hu: np.ndarray, spacing: Sequence[float], source: str | Path | None = None
) -> None:
    """Refuse a HU CT with no bone in its field of view (`ClinfuseInputError` naming `source`).

    Bone = voxels above 300 HU. Less than 1 mL of it in 3D (20 mm^2 in 2D; or 1 % of a field of
    view too small to hold that) means the CT shows no skull: a wrong file, a body CT, a field of
    view below the skull, or intensities that are not HU. There is nothing to fuse as bone, so
    nothing is fused. (A display-windowed CT, whose window is unknown, is not checked here.)
    """
    x = np.asarray(ct_hu)
    if len(spacing) != x.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not fit a {x.ndim}D image")
    voxel = float(np.prod(spacing))
    size = float((x > DENSE_BONE_HU).sum()) * voxel
    fov = MIN_BONE_FRACTION * x.size * voxel
    if x.ndim == 3:
        unit, found, minimum = "mL", size / 1000.0, min(MIN_BONE_ML, fov / 1000.0)
    else:
        unit, found, minimum = "mm^2", size, min(MIN_BONE_MM2, fov)
    if found < minimum:
        raise ClinfuseInputError(
            f"CT shows no bone in its field of view ({found:.2f} {unit} above "
            f"{DENSE_BONE_HU:g} HU, minimum {minimum:g} {unit}; a head CT's skull holds hundreds): "
            "wrong file, a field of view without the skull, or not a head CT in HU? "
            "Nothing was fused.",
            source,
        )


def _filled_head(mri: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The MRI's head: Otsu foreground, closed by 3 mm (the dark skull band), holes filled in
    3D and slice by slice along every axis (a head open at the field of view's edge)."""
    fg = head_foreground(mri)
    r = [max(1, int(round(HEAD_CLOSING_MM / s))) for s in spacing]
    grids = np.ogrid[tuple(slice(-ri, ri + 1) for ri in r)]
    se = sum((g * s / HEAD_CLOSING_MM) ** 2 for g, s in zip(grids, spacing, strict=True)) <= 1.0
    pad = [(ri + 1,) * 2 for ri in r]
    closed = ndimage.binary_closing(np.pad(fg, pad), structure=se)
    closed = closed[tuple(slice(p[0], p[0] + n) for p, n in zip(pad, fg.shape, strict=True))]
    filled = ndimage.binary_fill_holes(closed)
    if closed.ndim == 3:
        for axis in range(3):
            m = np.moveaxis(closed, axis, 0)
            f = np.stack([ndimage.binary_fill_holes(s) for s in m])
            filled |= np.moveaxis(f, 0, axis)
    return filled


def check_mri_has_skull(
    mri: np.ndarray,
    bone: np.ndarray,
    spacing: Sequence[float],
    source: str | Path | None = None,
) -> None:
    """Refuse a brain-extracted (skull-stripped) MRI (`ClinfuseInputError` naming `source`).

    `bone` is the skull mask on the MRI's grid (from the CT, or given). In a head MRI the scalp
    surrounds the skull, so the MRI's filled foreground encloses most of the skull, and the
    skull holds dark but noisy values. Brain extraction replaces scalp and skull by one
    constant (the image minimum, usually 0). Both signs together — less than half of the skull
    inside the head the MRI shows, and more than half of the skull voxels exactly at the MRI's
    minimum (linear resampling blurs the brain edge into the nearest skull voxels) — are
    refused. An ADC map (dark outside the brain, but noisy) passes.
    """
    x = np.asarray(mri, dtype=np.float32)
    b = np.asarray(bone, dtype=bool)
    if b.shape != x.shape or len(spacing) != x.ndim:
        raise ValueError(f"bone {b.shape}, MRI {x.shape} and spacing {tuple(spacing)} differ")
    if not b.any():
        return
    at_min = float((x[b] == x.min()).mean())
    if at_min <= SKULL_AT_BACKGROUND_MIN:
        return
    inside = float((b & _filled_head(x, spacing)).sum()) / float(b.sum())
    if inside < SKULL_INSIDE_HEAD_MIN:
        raise ClinfuseInputError(
            f"MRI shows no skull or scalp: {at_min:.0%} of the skull (bone mask) lies where the "
            f"MRI is exactly its background value {float(x.min()):g}, and only {inside:.0%} of "
            "it inside the head the MRI shows. Is it brain-extracted (skull-stripped)? Give the "
            "MRI of the whole head. Nothing was fused.",
            source,
        )
