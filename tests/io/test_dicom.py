"""DICOM series loading, checked against the DICOM geometry formula on a series made here."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.dicom import load_dicom_series

ROW_DIR = np.array([1.0, 0.0, 0.0])  # direction of increasing column index (LPS)
COL_DIR = np.array([0.0, 1.0, 0.0])  # direction of increasing row index (LPS)
ROW_SP, COL_SP = 0.8, 0.6  # PixelSpacing = [between rows, between columns]
SLOPE, INTERCEPT = 2.0, -1024.0


def write_series(
    folder: Path, n: int = 4, dz: float = 2.5, skip: int | None = None, intercept: float = INTERCEPT
) -> list:
    """Write `n` slices in shuffled file order; returns the stored pixel arrays by slice."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    rows, cols = 5, 6
    pixels = []
    for k in range(n):
        px = (np.arange(rows * cols).reshape(rows, cols) * 3 + 100 * k).astype(np.uint16)
        pixels.append(px)
        if k == skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(
            str(folder / f"f{(k * 7) % n}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128
        )
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = uid
        ds.Modality = "CT"
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "SECRET-123"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [ROW_SP, COL_SP]
        ds.SliceThickness = dz
        ds.ImageOrientationPatient = [*ROW_DIR, *COL_DIR]
        ds.ImagePositionPatient = [-10.0, 20.0, 5.0 + dz * k]
        ds.RescaleSlope, ds.RescaleIntercept = SLOPE, intercept
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = px.tobytes()
        ds.save_as(folder / f"f{(k * 7) % n}.dcm", enforce_file_format=True)
    (folder / "README.txt").write_text("not dicom")  # must be skipped, not fail
    return pixels


def test_geometry_and_hu(tmp_path: Path):
    pixels = write_series(tmp_path / "s")
    arr, aff = load_dicom_series(tmp_path / "s")
    assert arr.shape == (6, 5, 4) and arr.dtype == np.float32
    inv = np.linalg.inv(aff)
    for k in (0, 3):
        for r, c in ((0, 0), (4, 5), (2, 1)):
            lps = (
                np.array([-10.0, 20.0, 5.0 + 2.5 * k]) + c * COL_SP * ROW_DIR + r * ROW_SP * COL_DIR
            )
            ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
            ijk = inv @ ras
            np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-6)
            i, j, kk = (int(v) for v in np.round(ijk[:3]))
            assert arr[i, j, kk] == SLOPE * pixels[k][r, c] + INTERCEPT
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), [COL_SP, ROW_SP, 2.5])


def test_single_slice_is_2d(tmp_path: Path):
    write_series(tmp_path / "one", n=1)
    arr, aff = load_dicom_series(tmp_path / "one")
    assert arr.shape == (6, 5)


def test_bad_series(tmp_path: Path):
    write_series(tmp_path / "gap", n=5, skip=2)
    with pytest.raises(ClinfuseInputError, match="not uniform"):
        load_dicom_series(tmp_path / "gap")
    write_series(tmp_path / "two", n=2)
    write_series(tmp_path / "two_b", n=2)
    for f in (tmp_path / "two_b").glob("*.dcm"):
        f.rename(tmp_path / "two" / f"b_{f.name}")
    with pytest.raises(ClinfuseInputError, match="2 DICOM series"):
        load_dicom_series(tmp_path / "two")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClinfuseInputError, match="no DICOM"):
        load_dicom_series(tmp_path / "empty")
    with pytest.raises(ClinfuseInputError, match="not found"):
        load_dicom_series(tmp_path / "nope")


def test_identifiers_are_not_returned(tmp_path: Path):
    write_series(tmp_path / "s", n=2)
    assert pydicom.dcmread(next((tmp_path / "s").glob("*.dcm"))).PatientName == "Doe^Jane"
    out = load_dicom_series(tmp_path / "s")
    assert len(out) == 2 and all(isinstance(o, np.ndarray) for o in out)
