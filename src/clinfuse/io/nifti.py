"""NIfTI in and out (nibabel): canonical RAS+ voxel order on load, affine kept on save, atomic."""

from __future__ import annotations

import os
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


def _reason(err: BaseException) -> str:
    """A user-facing reason: the message, or a plain description when it is empty/cryptic."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, EOFError | OSError) and not text:
        return "the file ends early (truncated or damaged)"
    return text or "the file is damaged or not a NIfTI image"


def _fmt_bytes(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _physical_memory() -> int | None:
    """This machine's RAM in bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _check_header_size(img: nib.Nifti1Image | nib.Nifti2Image, path: Path) -> None:
    """Refuse a header whose shape cannot be the file's data before anything is allocated.

    A corrupt or hostile header (e.g. 30000^3 voxels in a 1 kB file) would otherwise end in a
    bare `MemoryError` from numpy, which names neither the file nor the cause.
    """
    shape = tuple(int(s) for s in img.shape)
    n_vox = int(np.prod(shape, dtype=np.float64)) if shape else 0
    hdr = img.header
    itemsize = int(hdr.get_data_dtype().itemsize)
    stored = n_vox * itemsize
    as_float32 = n_vox * 4
    desc = f"the header says shape {shape} ({n_vox:,} voxels, {_fmt_bytes(stored)} of data)"
    if isinstance(img, nib.Nifti1Image) and not str(path).lower().endswith(".gz"):
        offset = int(hdr.get("vox_offset", 0) or 0)
        available = path.stat().st_size - offset
        if stored > available:
            raise ClinfuseInputError(
                f"{desc} but the file holds only {_fmt_bytes(max(available, 0))} of image data: "
                "the file is truncated or its header is corrupt",
                path,
            )
    memory = _physical_memory()
    # The data in its stored type plus the float32 copy we return must fit in memory.
    if memory is not None and stored + as_float32 > memory:
        raise ClinfuseInputError(
            f"{desc}; loading it needs about {_fmt_bytes(stored + as_float32)}, more than this "
            f"machine's {_fmt_bytes(memory)} of memory: the header is probably corrupt, or the "
            "image must be cropped or downsampled before use",
            path,
        )


def _check_geometry(img: nib.Nifti1Image | nib.Nifti2Image, path: Path) -> None:
    """Voxel spacing must be positive and the affine invertible, checked on the header itself.

    nibabel silently replaces a zero `pixdim` by 1 mm when the qform (or no transform) is used,
    and a zero axis in the sform ends in an `OrientationError` deep in reorientation; both
    mean a damaged header, so say so instead.
    """
    hdr = img.header
    nifti = isinstance(img, nib.Nifti1Image)  # Nifti2Image included; other formats: affine only
    if nifti:
        try:  # nibabel "fixes" a zero pixdim to 1 while loading: read the header as written
            with nib.openers.ImageOpener(path) as fh:
                hdr = type(img.header).from_fileobj(fh, check=False)
        except Exception:  # the header nibabel loaded is the fallback
            hdr = img.header
    shape = tuple(int(s) for s in img.shape[:3])
    axes = [i for i, n in enumerate(shape) if n > 1]  # a singleton slice axis has no spacing
    if not nifti:
        source = "image"
        affine = np.asarray(img.affine, dtype=np.float64)
    elif int(hdr.get("sform_code", 0)) > 0:
        source = "sform (srow_x/y/z)"
        affine = np.asarray(hdr.get_sform(), dtype=np.float64)
    else:
        source = "qform" if int(hdr.get("qform_code", 0)) > 0 else "pixdim"
        pixdim = np.asarray(hdr["pixdim"][1 : 1 + len(shape)], dtype=np.float64)
        bad = [i for i in axes if not (np.isfinite(pixdim[i]) and pixdim[i] != 0)]
        if bad:
            raise ClinfuseInputError(
                f"the header's voxel spacing (pixdim) is {tuple(float(v) for v in pixdim)} mm: "
                f"zero or not finite along voxel axis {', '.join(map(str, bad))}. A spacing must "
                "be positive; the header is damaged or was written without spacing (fix it, e.g. "
                "with nibabel's header.set_zooms, before use)",
                path,
            )
        affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise ClinfuseInputError(f"the header's {source} affine is not finite", path)
    lengths = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    zero = [i for i in axes if lengths[i] < 1e-6]
    if zero:
        spacing = ", ".join(f"{v:g}" for v in lengths[: len(shape)])
        raise ClinfuseInputError(
            f"the header's {source} affine gives voxel spacing ({spacing}) mm: zero along voxel "
            f"axis {', '.join(map(str, zero))}. A spacing must be positive; the header is damaged",
            path,
        )
    if len(axes) == 3 and abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ClinfuseInputError(
            f"the header's {source} affine is singular (its voxel axes are not independent)", path
        )


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
    except Exception as err:  # nibabel raises many types for corrupt files
        raise ClinfuseInputError(
            f"cannot read NIfTI file: {_reason(err)} (expected a .nii or .nii.gz image)", path
        ) from None
    _check_header_size(img, path)
    _check_geometry(img, path)
    try:
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
    except MemoryError:
        n_vox = int(np.prod(img.shape, dtype=np.float64))
        raise ClinfuseInputError(
            f"not enough memory to load an image of shape {tuple(img.shape)} "
            f"({_fmt_bytes(n_vox * 4)} as float32)",
            path,
        ) from None
    except Exception as err:  # nibabel raises many types for corrupt files
        raise ClinfuseInputError(f"cannot read NIfTI file: {_reason(err)}", path) from err
    data, affine = squeeze_to_2d(data, affine)
    if data.ndim not in (2, 3) or min(data.shape) < 1:
        raise ClinfuseInputError(f"image must be 2D or 3D, got shape {data.shape}", path)
    if not np.all(np.isfinite(data)):
        n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise ClinfuseInputError(f"image contains {n_bad} NaN/Inf values", path)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ClinfuseInputError("image affine is singular or not finite", path)
    return np.ascontiguousarray(data, dtype=np.float32), affine


def save_nifti(
    path: str | Path,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    cal_range: tuple[float, float] | None = None,
    descrip: str | None = None,
) -> Path:
    """Write `array` with `affine` atomically. Bool arrays (masks) are stored as uint8, others
    as float32; a 2D array gets a singleton third axis (`load_nifti` restores 2D).
    `cal_range` sets the header's display window (cal_min, cal_max), `descrip` its text."""
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
    if cal_range is not None:
        img.header["cal_min"], img.header["cal_max"] = (float(v) for v in cal_range)
    if descrip is not None:
        img.header["descrip"] = descrip.encode("ascii", "replace")[:79]
    with atomic_write(path) as tmp:
        nib.save(img, str(tmp))
    return path
