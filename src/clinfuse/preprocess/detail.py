"""Native-resolution detail: what a fusion on a coarser working grid lost, taken back from the
source that owns each ROI.

Our own code (the fusion literature works on one grid). When the model fuses on a coarser grid
than the MRI's (`fuse --spacing`, the 2 mm default for a 1 mm head), resampling the fused image
back to the native grid gives only the working grid's frequencies. Inside each ROI the method
already says which source the fused image follows (Algorithm 1: MRI in the brain, bone-window CT
in the skull), so the missing band is that source's own: its native image minus the same image
taken to the working grid and back (the identical round trip the fused image made). Adding it
restores the source's fine structure (thin cortical bone, sulci, a sharp lesion border) exactly
where the model was guided towards that source.

Outside the ROIs no source owns the fused image, but at the working resolution it is locally
close to a linear mix of the sources (scalp and neck follow the MRI or the CT, a brainstem that an
automatic brain mask left out still follows the MRI). `outside_detail` fits that mix voxel by
voxel with a guided filter (He et al., TPAMI 2013, with the three source channels as the guide),
on the working-resolution versions of the fused image and the sources, and adds the same mix of
the sources' lost bands. Where the sources are locally flat the fit is regularised to zero and
nothing is added.
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
# The guide channels of `outside_detail` (all three sources the model is conditioned on).
GUIDE_SOURCES: tuple[str, ...] = ("mri", "ct", "ct_bone")
# Guided-filter window radius in working voxels, and the ridge term (model-range units
# squared: sources varying by less than ~0.03 within a window count as flat).
GUIDE_RADIUS_WORK_VOXELS = 2.0
GUIDE_EPS = 1e-3


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


def _box(x: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    return ndimage.uniform_filter(x, size=size, mode="nearest")


def outside_detail(
    fused_native: np.ndarray,
    sources: list[np.ndarray],
    lows: list[np.ndarray],
    spacing: tuple[float, ...],
    radius_mm: float,
    eps: float = GUIDE_EPS,
) -> np.ndarray:
    """The lost band of the fused image where no ROI says which source it follows.

    Guided filter with a multi-channel guide: in every window of `radius_mm`, the fused image at
    the working resolution (`fused_native`, resampled back) is fitted as sum_k a_k low_k + b
    (ridge `eps`); the coefficients are averaged over the windows covering each voxel, and
    sum_k a_k (source_k - low_k) is returned (float32, same shape).
    """
    size = tuple(max(1, 2 * int(round(radius_mm / s)) + 1) for s in spacing)
    k = len(sources)
    f = np.asarray(fused_native, dtype=np.float32)
    mean_f = _box(f, size)
    mean_l = [_box(low, size) for low in lows]
    rhs = [_box(lows[i] * f, size) - mean_l[i] * mean_f for i in range(k)]
    del mean_f
    cov = {
        (i, j): _box(lows[i] * lows[j], size) - mean_l[i] * mean_l[j] + (eps if i == j else 0.0)
        for i in range(k)
        for j in range(i, k)
    }
    del mean_l
    # Solved in slabs along the first axis, so the k x k systems never exist all at once
    # (a 1 mm head is ~10 M voxels).
    a = np.empty((k, *f.shape), dtype=np.float32)
    for start in range(0, f.shape[0], 16):
        sl = slice(start, start + 16)
        m = np.empty((*f[sl].shape, k, k), dtype=np.float32)
        for (i, j), c in cov.items():
            m[..., i, j] = m[..., j, i] = c[sl]
        b = np.stack([r[sl] for r in rhs], axis=-1)[..., None]
        a[:, sl] = np.moveaxis(np.linalg.solve(m, b)[..., 0], -1, 0)
    del cov, rhs
    out = np.zeros(f.shape, dtype=np.float32)
    for i in range(k):
        out += _box(a[i], size) * (sources[i] - lows[i])
    return out


def restore_detail(
    fused_native: np.ndarray,
    native: PreparedCase,
    work_shape: tuple[int, ...],
    work_affine: np.ndarray,
    rois: Iterable[str] = ("brain", "bone"),
    outside: bool = True,
) -> np.ndarray:
    """The fused image on the native grid with each ROI's lost band taken from its source.

    `fused_native`: the fused image resampled (linear) onto the native grid, model range.
    Inside an ROI with source s (`DETAIL_SOURCES`): s + w * (fused_native - round_trip(s)), i.e.
    the source's native structure plus the model's deviation from the source at the working
    resolution. w (`interior_weight`) is 1 deeper than one working voxel inside the ROI and
    falls to 0 at its border, where a working voxel straddles two tissues and its deviation is
    mostly the other tissue (a thin skull is nearly all border at 2 mm). Outside the ROIs, with
    `outside`, the sources' lost bands in the locally fitted mix (`outside_detail`); without it
    the fused image is unchanged there. Clipped to the model range.
    """
    if fused_native.shape != native.shape:
        raise ValueError(f"fused {fused_native.shape} is not on the native grid {native.shape}")
    affine = np.asarray(native.affine, dtype=np.float64)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, : len(native.shape)], axis=0))
    work_vox = float(np.max(np.linalg.norm(work_affine[:3, : len(work_shape)], axis=0)))
    out = np.asarray(fused_native, dtype=np.float32).copy()
    names = list(GUIDE_SOURCES) if outside else sorted(set(DETAIL_SOURCES.values()))
    srcs = {n: np.asarray(getattr(native, n), dtype=np.float32) for n in names}
    lows = {n: round_trip(x, affine, work_shape, work_affine) for n, x in srcs.items()}
    if outside:
        out += outside_detail(
            out,
            [srcs[n] for n in names],
            [lows[n] for n in names],
            spacing,
            GUIDE_RADIUS_WORK_VOXELS * work_vox,
            GUIDE_EPS,
        )
    for roi in rois:
        mask = getattr(native, roi)
        if mask is None or not np.any(mask):
            continue
        name = DETAIL_SOURCES[roi]
        w = interior_weight(np.asarray(mask, bool), spacing, work_vox)
        out = np.where(mask, srcs[name] + w * (fused_native - lows[name]), out)
    return np.clip(out, *MODEL_RANGE).astype(np.float32)
