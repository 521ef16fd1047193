"""NIfTI in and out (nibabel): canonical RAS+ voxel order on load, affine kept on save, atomic."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.atomic import atomic_write

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti(path: str | Path) -> bool:
    """True when the file name ends in `.nii` or `.nii.gz` (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def canonicalise(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip a 3D array so its voxel axes are RAS+ (`nibabel.as_closest_canonical`)."""
    arr = np.asarray(array)
    is_bool = arr.dtype == np.bool_  # NIfTI has no bool type: go through uint8
    img = nib.Nifti1Image(arr.astype(np.uint8) if is_bool else arr, np.asarray(affine, float))
    can = nib.as_closest_canonical(img)
    out = np.asanyarray(can.dataobj)
    return (out.astype(bool) if is_bool else out), np.asarray(can.affine, dtype=np.float64)


def squeeze_to_2d(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 3D array with exactly one singleton axis becomes 2D; that axis moves to the affine's
    third column so that the first two columns still describe the two array axes."""
    if array.ndim != 3 or sum(s == 1 for s in array.shape) != 1:
        return array, affine
    s = array.shape.index(1)
    order = [a for a in range(3) if a != s] + [s]
    new_aff = np.array(affine, dtype=np.float64, copy=True)
    new_aff[:, :3] = np.asarray(affine, dtype=np.float64)[:, order]
    return np.transpose(array, order)[..., 0], new_aff


def load_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI file as float32 in canonical RAS+ voxel order, and its 4x4 affine.

    A 3D image with one singleton axis (a single slice) is returned as 2D; trailing singleton
    4th+ axes are dropped. Raises `ClinfuseInputError` for a missing/unreadable file, an image
    that is not 2D/3D, or NaN/Inf values.
    """
    path = Path(path)
    if not path.is_file():
        raise ClinfuseInputError("file not found", path)
    try:
        img = nib.load(str(path))
        if len(img.shape) > 3:
            extra = img.shape[3:]
            if any(int(e) != 1 for e in extra):
                raise ClinfuseInputError(
                    f"image has shape {tuple(img.shape)}: 4D (time/channel) images are not "
                    "supported; give one 2D or 3D volume",
                    path,
                )
            img = nib.Nifti1Image(np.asanyarray(img.dataobj).reshape(img.shape[:3]), img.affine)
        if len(img.shape) == 2:
            data = img.get_fdata(dtype=np.float32)[:, :, None]
            img = nib.Nifti1Image(data, img.affine)
        can = nib.as_closest_canonical(img)
        data = can.get_fdata(dtype=np.float32)
        affine = np.asarray(can.affine, dtype=np.float64)
    except ClinfuseInputError:
        raise
    except Exception as err:  # nibabel raises many types for corrupt files
        msg = f"cannot read NIfTI file ({type(err).__name__}: {err})"
        raise ClinfuseInputError(msg, path) from err
    data, affine = squeeze_to_2d(data, affine)
    if data.ndim not in (2, 3) or min(data.shape) < 1:
        raise ClinfuseInputError(f"image must be 2D or 3D, got shape {data.shape}", path)
    if not np.all(np.isfinite(data)):
        n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise ClinfuseInputError(f"image contains {n_bad} NaN/Inf values", path)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ClinfuseInputError("image affine is singular or not finite", path)
    return np.ascontiguousarray(data, dtype=np.float32), affine


def save_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write `array` with `affine` atomically. Bool arrays (masks) are stored as uint8, others
    as float32; a 2D array gets a singleton third axis (`load_nifti` restores 2D)."""
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"save_nifti needs a .nii or .nii.gz path, got {path}")
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"save_nifti expects a 2D or 3D array, got shape {arr.shape}")
    arr = arr.astype(np.uint8) if arr.dtype == np.bool_ else arr.astype(np.float32)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    # Scanner-anatomical codes in both forms so ITK-SNAP/Slicer and nibabel agree on geometry.
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    with atomic_write(path) as tmp:
        nib.save(img, str(tmp))
    return path
