"""DICOM series in (pydicom): slices sorted along the slice normal, HU via the modality LUT,
an RAS affine from orientation/position/spacing. No patient identifiers are kept or logged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.nifti import canonicalise, squeeze_to_2d

# LPS (DICOM patient coordinates) -> RAS (NIfTI world): negate x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _read_headers(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    found = []
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError):
            continue  # not a DICOM file (README, DICOMDIR index...): skip it
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            found.append((f, ds))
    return found


def load_dicom_series(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load the one image series in `folder` as float32 (HU for CT) and its 4x4 RAS affine.

    Slices are sorted by the projection of ImagePositionPatient on the slice normal; the stored
    values pass through the modality LUT (HU = RescaleSlope * x + RescaleIntercept). The array is
    returned in canonical RAS+ voxel order like `load_nifti` (2D if the series has one slice).
    Only geometry and pixel values are read: no identifier leaves this function.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ClinfuseInputError("DICOM series folder not found", folder)
    headers = _read_headers(folder)
    if not headers:
        raise ClinfuseInputError("no DICOM image files with position/orientation found", folder)
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise ClinfuseInputError(
            f"folder holds {len(series)} DICOM series; put each series in its own folder", folder
        )
    iop = np.asarray(headers[0][1].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]  # direction of increasing column / row index
    normal = np.cross(row_dir, col_dir)
    for f, ds in headers:
        this_iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        if not np.allclose(this_iop, iop, atol=1e-4):
            raise ClinfuseInputError("slices have different ImageOrientationPatient", f)
    headers.sort(key=lambda h: float(np.dot(np.asarray(h[1].ImagePositionPatient, float), normal)))
    positions = np.array([np.asarray(ds.ImagePositionPatient, float) for _, ds in headers])
    first = headers[0][1]
    try:
        row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    except AttributeError:
        raise ClinfuseInputError("DICOM slices have no PixelSpacing", headers[0][0]) from None
    n = len(headers)
    if n > 1:
        steps = np.diff(positions @ normal)
        if np.any(steps < 1e-3):
            raise ClinfuseInputError("two slices share one position (duplicate slices?)", folder)
        if np.ptp(steps) > 0.01 * float(np.median(steps)) + 1e-3:
            raise ClinfuseInputError(
                f"slice spacing is not uniform ({steps.min():.3f}-{steps.max():.3f} mm): "
                "a slice is missing or the series is tilted/variable",
                folder,
            )
        slice_vec = (positions[-1] - positions[0]) / (n - 1)
    else:
        thick = float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)) or 1.0)
        slice_vec = normal * thick
    rows, cols = int(first.Rows), int(first.Columns)
    vol = np.empty((cols, rows, n), dtype=np.float32)
    for k, (f, _) in enumerate(headers):
        try:
            ds = pydicom.dcmread(str(f))
            px = ds.pixel_array
        except Exception as err:  # missing codec, truncated pixel data...
            msg = f"cannot decode DICOM pixels ({type(err).__name__})"
            raise ClinfuseInputError(msg, f) from err
        if px.shape != (rows, cols):
            raise ClinfuseInputError(f"slice is {px.shape}, expected {(rows, cols)}", f)
        # Array axis 0 = column index (along row_dir), axis 1 = row index (along col_dir).
        vol[:, :, k] = np.asarray(apply_modality_lut(px, ds), dtype=np.float32).T
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * col_spacing
    affine_lps[:3, 1] = col_dir * row_spacing
    affine_lps[:3, 2] = slice_vec
    affine_lps[:3, 3] = positions[0]
    data, affine = canonicalise(vol, _LPS_TO_RAS @ affine_lps)
    data, affine = squeeze_to_2d(np.asarray(data, dtype=np.float32), affine)
    if not np.all(np.isfinite(data)):
        raise ClinfuseInputError("DICOM pixel values contain NaN/Inf", folder)
    return np.ascontiguousarray(data, dtype=np.float32), affine
