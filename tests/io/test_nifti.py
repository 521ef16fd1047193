import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.nifti import load_nifti, save_nifti


def test_load_is_canonical_ras_like_nibabel(tmp_path: Path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(5, 6, 7)).astype(np.float32)
    # LPI-oriented, permuted axes: voxel axis 0 -> y, axis 1 -> -x, axis 2 -> -z.
    aff = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, -4], [0, 0, -3.0, 8], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "img.nii.gz")
    arr, affine = load_nifti(tmp_path / "img.nii.gz")
    oracle = nib.as_closest_canonical(nib.Nifti1Image(data, aff))
    assert arr.dtype == np.float32
    np.testing.assert_allclose(arr, oracle.get_fdata())
    np.testing.assert_allclose(affine, oracle.affine)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")


def test_save_round_trip_keeps_affine_and_masks_are_uint8(tmp_path: Path):
    aff = np.diag([0.9, 1.1, 2.5, 1.0])
    aff[:3, 3] = [-30, 12, 5]
    img = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    save_nifti(tmp_path / "x.nii.gz", img, aff)
    arr, a2 = load_nifti(tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(arr, img)
    np.testing.assert_allclose(a2, aff)
    save_nifti(tmp_path / "m.nii", img > 30, aff)
    raw = nib.load(tmp_path / "m.nii")
    assert raw.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(raw.dataobj), (img > 30).astype(np.uint8))
    assert raw.header.get_xyzt_units()[0] == "mm"
    assert {p.name for p in tmp_path.iterdir()} == {"x.nii.gz", "m.nii"}


def test_2d_round_trip(tmp_path: Path):
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    aff = np.diag([0.5, 0.5, 5.0, 1.0])
    save_nifti(tmp_path / "s.nii.gz", img, aff)
    assert nib.load(tmp_path / "s.nii.gz").shape == (3, 4, 1)
    arr, a2 = load_nifti(tmp_path / "s.nii.gz")
    assert arr.shape == (3, 4)
    np.testing.assert_array_equal(arr, img)
    np.testing.assert_allclose(a2, aff)


def test_bad_files_name_the_file(tmp_path: Path):
    with pytest.raises(ClinfuseInputError, match="not found") as e:
        load_nifti(tmp_path / "missing.nii.gz")
    assert "missing.nii.gz" in str(e.value)
    bad = tmp_path / "garbage.nii.gz"
    bad.write_bytes(b"this is not a nifti file at all")
    with pytest.raises(ClinfuseInputError, match="cannot read NIfTI file") as e:
        load_nifti(bad)
    assert "garbage.nii.gz" in str(e.value)
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(ClinfuseInputError, match="2 NaN/Inf") as e:
        load_nifti(tmp_path / "nan.nii.gz")
    assert "nan.nii.gz" in str(e.value)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), tmp_path / "t.nii")
    with pytest.raises(ClinfuseInputError, match="4D"):
        load_nifti(tmp_path / "t.nii")


def _patched_header(tmp_path: Path, name: str, **fields) -> Path:
    """A valid 4x4x4 .nii whose header fields are then overwritten as a damaged file would be."""
    src = tmp_path / "valid.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), src)
    raw = bytearray(src.read_bytes())
    with src.open("rb") as fh:
        hdr = nib.Nifti1Header.from_fileobj(fh)
    for key, value in fields.items():
        hdr[key] = value
    raw[:348] = hdr.binaryblock
    out = tmp_path / name
    if name.endswith(".gz"):
        out.write_bytes(gzip.compress(bytes(raw)))
    else:
        out.write_bytes(bytes(raw))
    return out


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_huge_header_is_a_clear_error_not_memoryerror(tmp_path: Path, name):
    # 30000^3 float32 voxels (108 TB) claimed by a file of a few hundred bytes.
    bad = _patched_header(tmp_path, name, dim=[3, 30000, 30000, 30000, 1, 1, 1, 1])
    with pytest.raises(ClinfuseInputError) as e:
        load_nifti(bad)
    text = str(e.value)
    assert name in text and "(30000, 30000, 30000)" in text and "108.0 TB" in text
    assert "MemoryError" not in text
    assert ("truncated" in text) if name == "huge.nii" else ("memory" in text)


def test_out_of_memory_while_reading_names_the_file(tmp_path: Path, monkeypatch):
    good = tmp_path / "ok.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), good)

    def no_memory(self, *args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", no_memory)
    with pytest.raises(ClinfuseInputError, match="not enough memory.*shape \\(4, 4, 4\\)") as e:
        load_nifti(good)
    assert "ok.nii.gz" in str(e.value)


@pytest.mark.parametrize(
    ("fields", "source"),
    [
        ({"pixdim": [1, 1, 0, 1, 1, 1, 1, 1], "qform_code": 1, "sform_code": 0}, "pixdim"),
        ({"pixdim": [1, 1, 0, 1, 1, 1, 1, 1], "qform_code": 0, "sform_code": 0}, "pixdim"),
        ({"srow_y": [0, 0, 0, 0], "qform_code": 0, "sform_code": 1}, "sform"),
    ],
)
def test_zero_spacing_header_is_a_clear_error(tmp_path: Path, fields, source):
    bad = _patched_header(tmp_path, "zero.nii.gz", **fields)
    with pytest.raises(ClinfuseInputError, match="zero") as e:
        load_nifti(bad)
    text = str(e.value)
    assert "zero.nii.gz" in text and source in text and "axis 1" in text
    assert "OrientationError" not in text


def test_zero_pixdim_is_fine_when_a_valid_sform_is_used(tmp_path: Path):
    ok = _patched_header(
        tmp_path, "s.nii", pixdim=[1, 1, 0, 1, 1, 1, 1, 1], qform_code=0, sform_code=1
    )
    arr, affine = load_nifti(ok)
    assert arr.shape == (4, 4, 4)
    np.testing.assert_allclose(affine, np.eye(4))
