"""Native-resolution detail: what a fusion on a coarser working grid lost, taken back from the
source that owns each ROI.

Our own code (the fusion literature works on one grid). When the model fuses on a coarser grid
than the MRI's (`fuse --spacing`, the 2 mm default for a 1 mm head), resampling the fused image
back to the native grid gives only the working grid's frequencies. Inside each ROI the method
already says which source the fused image follows (Algorithm 1: MRI in the brain, bone-window CT
in the skull), so the missing band is that source's own: its native image minus the same image
taken to the working grid and back (the identical round trip the fused image made). Adding it
restores the source's fine structure (thin cortical bone, sulci, a sharp lesion border) exactly
where the model was guided towards that source, and nothing outside the ROIs.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from clinfuse.preprocess.prepared import PreparedCase
from clinfuse.preprocess.resample import resample_to_grid
from clinfuse.preprocess.windowing import MODEL_RANGE

# ROI -> the source channel of `PreparedCase` whose detail it takes.
DETAIL_SOURCES: dict[str, str] = {"brain": "mri", "bone": "ct_bone"}


def round_trip(
    image: np.ndarray,
    affine: np.ndarray,
    work_shape: tuple[int, ...],
    work_affine: np.ndarray,
    default: float = MODEL_RANGE[0],
) -> np.ndarray:
    """`image` resampled (linear) onto the working grid and back onto its own grid."""
    low = resample_to_grid(image, affine, work_shape, work_affine, default=default)
    return resample_to_grid(low, work_affine, image.shape, affine, default=default)


def interior_weight(mask: np.ndarray, spacing: tuple[float, ...], width_mm: float) -> np.ndarray:
    """0 on the ROI's border voxels rising linearly to 1 at `width_mm` inside (0 outside)."""
    if not np.any(mask):
        return np.zeros(mask.shape, dtype=np.float32)
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)
    depth = depth[tuple(slice(1, -1) for _ in mask.shape)] - min(spacing)
    return np.clip(depth / max(width_mm, 1e-6), 0.0, 1.0).astype(np.float32) * mask


def restore_detail(
    fused_native: np.ndarray,
    native: PreparedCase,
    work_shape: tuple[int, ...],
    work_affine: np.ndarray,
    rois: Iterable[str] = ("brain", "bone"),
) -> np.ndarray:
    """The fused image on the native grid with each ROI's lost band taken from its source.

    `fused_native`: the fused image resampled (linear) onto the native grid, model range.
    Inside an ROI with source s (`DETAIL_SOURCES`): s + w * (fused_native - round_trip(s)), i.e.
    the source's native structure plus the model's deviation from the source at the working
    resolution. w (`interior_weight`) is 1 deeper than one working voxel inside the ROI and
    falls to 0 at its border, where a working voxel straddles two tissues and its deviation is
    mostly the other tissue (a thin skull is nearly all border at 2 mm). Outside the ROIs the
    fused image is unchanged. Clipped to the model range.
    """
    if fused_native.shape != native.shape:
        raise ValueError(f"fused {fused_native.shape} is not on the native grid {native.shape}")
    affine = np.asarray(native.affine, dtype=np.float64)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, : len(native.shape)], axis=0))
    work_vox = float(np.max(np.linalg.norm(work_affine[:3, : len(work_shape)], axis=0)))
    out = np.asarray(fused_native, dtype=np.float32).copy()
    for roi in rois:
        mask = getattr(native, roi)
        if mask is None or not np.any(mask):
            continue
        src = np.asarray(getattr(native, DETAIL_SOURCES[roi]), dtype=np.float32)
        low = round_trip(src, affine, work_shape, work_affine)
        w = interior_weight(np.asarray(mask, bool), spacing, work_vox)
        out = np.where(mask, src + w * (fused_native - low), out)
    return np.clip(out, *MODEL_RANGE).astype(np.float32)
