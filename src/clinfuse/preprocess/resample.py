"""Resampling onto one voxel grid with SimpleITK: images linear, masks nearest-neighbour."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.sitk import from_sitk, to_sitk

__all__ = ["from_sitk", "grid_with_spacing", "resample_to_grid", "to_sitk"]


def grid_with_spacing(
    shape: tuple[int, ...], affine: np.ndarray, spacing: float | tuple[float, ...]
) -> tuple[tuple[int, ...], np.ndarray]:
    """A grid covering the same field of view as (shape, affine) with a new voxel size.

    Voxel directions are kept; the outer voxel edges stay where they were (corner-aligned, as
    SimpleITK/ANTs resample-to-spacing do), so the new shape is round(extent / spacing).
    """
    nd = len(shape)
    aff = np.asarray(affine, dtype=np.float64)
    old = np.linalg.norm(aff[:3, :nd], axis=0)
    given = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if given.size not in (1, nd):
        raise ClinfuseInputError(
            f"spacing {tuple(float(v) for v in given)} has {given.size} values for a {nd}D "
            f"image; give one value or {nd}"
        )
    new = np.broadcast_to(given, (nd,)).copy()
    if not np.all(new > 0):
        raise ClinfuseInputError(f"spacing must be positive mm, got {spacing}")
    extent = np.asarray(shape, dtype=np.float64) * old
    n_vox = np.maximum(1, np.round(extent / new)).astype(int)
    new_shape = tuple(int(n) for n in n_vox)
    # Keep the extent exact: the rounded shape sets the spacing actually used.
    new = extent / n_vox
    out = aff.copy()
    dirs = aff[:3, :nd] / old
    out[:3, :nd] = dirs * new
    out[:3, 3] = aff[:3, 3] + dirs @ ((new - old) / 2.0)
    return new_shape, out


def resample_to_grid(
    array: np.ndarray,
    affine: np.ndarray,
    shape: tuple[int, ...],
    ref_affine: np.ndarray,
    *,
    nearest: bool = False,
    default: float = 0.0,
    transform: sitk.Transform | None = None,
) -> np.ndarray:
    """Resample `array` (on `affine`) onto the grid (`shape`, `ref_affine`).

    Linear interpolation for images, nearest-neighbour for masks (`nearest=True`, bool in ->
    bool out). `transform` (fixed -> moving physical points, as from `register_rigid`) is applied
    on the way; points outside the input get `default` (e.g. -1024 HU for CT air).
    """
    arr = np.asarray(array)
    is_bool = arr.dtype == np.bool_
    src = to_sitk(arr.astype(np.uint8) if is_bool else arr.astype(np.float32), affine)
    ref = to_sitk(np.zeros(shape, dtype=np.uint8), ref_affine)
    if arr.ndim == 2:
        # 2D pixel frames start at 0: place the reference grid's origin in the source's frame.
        aff = np.asarray(affine, dtype=np.float64)
        dirs = aff[:3, :2] / np.linalg.norm(aff[:3, :2], axis=0)
        ref.SetOrigin(tuple(float(v) for v in dirs.T @ (ref_affine[:3, 3] - aff[:3, 3])))
    interp = sitk.sitkNearestNeighbor if (nearest or is_bool) else sitk.sitkLinear
    tx = transform if transform is not None else sitk.Transform(arr.ndim, sitk.sitkIdentity)
    out = sitk.Resample(src, ref, tx, interp, float(default), src.GetPixelID())
    res = sitk.GetArrayFromImage(out).T
    return res.astype(bool) if is_bool else res.astype(np.float32)
