"""Conversion between clinfuse's (array in RAS+ voxel order, RAS affine) pairs and SimpleITK
images (LPS world), and reading any other SimpleITK-readable volume (.mha, .nrrd, .mhd)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from clinfuse.errors import ClinfuseInputError

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


def load_sitk_image(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a MetaImage/NRRD (any format SimpleITK reads) as float32 in canonical RAS+ order."""
    from clinfuse.io.nifti import canonicalise, squeeze_to_2d

    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ClinfuseInputError(f"cannot read image ({str(err).strip()[:200]})", path) from err
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ClinfuseInputError("vector/colour images are not supported", path)
    if img.GetDimension() == 2:
        return sitk.GetArrayFromImage(img).T.astype(np.float32), np.eye(4)
    if img.GetDimension() != 3:
        raise ClinfuseInputError(f"image must be 2D or 3D, got {img.GetDimension()}D", path)
    arr, aff = from_sitk(img)
    arr, aff = canonicalise(arr.astype(np.float32), aff)
    arr, aff = squeeze_to_2d(np.asarray(arr, np.float32), aff)
    if not np.all(np.isfinite(arr)):
        raise ClinfuseInputError("image contains NaN/Inf values", path)
    return np.ascontiguousarray(arr), aff
