"""Resampling onto one voxel grid with SimpleITK (images linear, masks nearest-neighbour), and
conversion between our (array in RAS+ voxel order, RAS affine) pairs and SimpleITK images."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])  # SimpleITK's world frame is LPS


def to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """Array (x, y, z) + 4x4 RAS affine -> SimpleITK image in LPS physical space.

    2D arrays use a plain pixel frame (spacing from the affine, identity direction, origin 0)
    because a 2D slice may lie in any plane; 2D data are only resampled onto themselves.
    """
    arr = np.asarray(array)
    aff = np.asarray(affine, dtype=np.float64)
    # GetImageFromArray reads numpy axes as (z, y, x): transpose so array axis 0 is ITK's x.
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.T))
    if arr.ndim == 2:
        img.SetSpacing(tuple(float(s) for s in np.linalg.norm(aff[:3, :2], axis=0)))
        return img
    m = _RAS_TO_LPS @ aff[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in (m / spacing).ravel()))
    img.SetOrigin(tuple(float(v) for v in _RAS_TO_LPS @ aff[:3, 3]))
    return img


def from_sitk(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `to_sitk` for 3D images: (array in x, y, z order, 4x4 RAS affine)."""
    arr = sitk.GetArrayFromImage(img).T
    if img.GetDimension() == 2:
        aff = np.diag([*img.GetSpacing(), 1.0, 1.0])
        return arr, aff
    d = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, :3] = _RAS_TO_LPS @ (d * np.asarray(img.GetSpacing()))
    aff[:3, 3] = _RAS_TO_LPS @ np.asarray(img.GetOrigin())
    return arr, aff


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
    new = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (nd,)).copy()
    if np.any(new <= 0):
        raise ValueError(f"spacing must be positive, got {spacing}")
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
