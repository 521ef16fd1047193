"""NRRD/MetaImage via SimpleITK agree with the same volume read as NIfTI by nibabel."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.dataset import load_image
from clinfuse.io.nifti import load_nifti


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_same_array_and_affine_as_nifti(tmp_path: Path, suffix: str):
    data = np.random.default_rng(1).normal(size=(5, 6, 7)).astype(np.float32)
    aff = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, -4], [0, 0, -3.0, 8], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "a.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "a.nii.gz")), str(tmp_path / f"a{suffix}"))
    arr, affine = load_image(tmp_path / f"a{suffix}")
    ref, ref_aff = load_nifti(tmp_path / "a.nii.gz")
    np.testing.assert_allclose(arr, ref)
    np.testing.assert_allclose(affine, ref_aff, atol=1e-5)


def test_unreadable(tmp_path: Path):
    (tmp_path / "bad.mha").write_text("garbage")
    with pytest.raises(ClinfuseInputError, match="cannot read") as e:
        load_image(tmp_path / "bad.mha")
    assert "bad.mha" in str(e.value)
    (tmp_path / "x.tif").write_text("garbage")
    with pytest.raises(ClinfuseInputError, match="unsupported"):
        load_image(tmp_path / "x.tif")
