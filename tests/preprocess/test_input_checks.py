"""Bad input is refused before fusing: a CT with no bone in its field of view, and a
brain-extracted MRI (real C-STAR volume); heads with skull (phantoms incl. ADC, a real T1) pass."""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.case import Case
from clinfuse.io.nifti import load_nifti
from clinfuse.phantom import PhantomConfig, generate_phantom
from clinfuse.preprocess.checks import check_ct_has_bone, check_mri_has_skull
from clinfuse.preprocess.masks import mri_brain_mask
from clinfuse.preprocess.pipeline import preprocess_case

VOL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "volumes"
needs_data = pytest.mark.skipif(not VOL.is_dir(), reason="shared real data not present")


def _spacing(aff: np.ndarray) -> tuple[float, ...]:
    return tuple(float(s) for s in np.linalg.norm(aff[:3, :3], axis=0))


def shell_ct(brain: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A CT in HU around an intracranial mask: 35 HU inside, a 2-7 mm skull, then air."""
    d = ndimage.distance_transform_edt(~brain, sampling=spacing)
    bone = (d > 1.0) & (d <= 6.0)
    ct = np.where(brain, 35.0, -1000.0) + np.where(bone, 1400.0 + 1000.0, 0.0)
    return ct.astype(np.float32), bone


def test_ct_without_bone_is_refused_naming_the_file():
    ph = generate_phantom(PhantomConfig(shape=(40, 48, 40), spacing=(4.0, 4.0, 4.0)), 3).case
    ph.ct = np.where(ph.ct > 100, 40.0, ph.ct).astype(np.float32)  # bone replaced by tissue
    ph.sources = {"mri": "/x/mri.nii.gz", "ct": "/x/ct_noskull.nii.gz"}
    with pytest.raises(ClinfuseInputError, match="no bone in its field of view") as err:
        preprocess_case(ph)
    assert "ct_noskull.nii.gz" in str(err.value)
    with pytest.raises(ClinfuseInputError, match="mm\\^2"):
        check_ct_has_bone(np.zeros((32, 32), np.float32), (1.0, 1.0), "slice.png")


@pytest.mark.parametrize("contrast", ["T1", "T2", "ADC"])
def test_phantoms_with_skull_pass(contrast: str):
    case = generate_phantom(
        PhantomConfig(shape=(40, 48, 40), spacing=(4.0, 4.0, 4.0), mri_contrast=contrast), 5
    ).case
    check_ct_has_bone(case.ct, case.spacing)
    check_mri_has_skull(case.mri, case.bone, case.spacing)  # ADC: dark scalp, but noisy


@needs_data
def test_brain_extracted_mri_is_refused_naming_the_file():
    path = VOL / "cstar_chronic_stroke_brainextracted" / "t1.nii.gz"
    mri, aff = load_nifti(path)
    brain = ndimage.binary_fill_holes(mri > 0)
    ct, bone = shell_ct(brain, _spacing(aff))
    case = Case("cstar", mri.astype(np.float32), ct, aff, sources={"mri": str(path)})
    with pytest.raises(ClinfuseInputError, match="brain-extracted") as err:
        preprocess_case(case, spacing=2.0)
    assert "t1.nii.gz" in str(err.value)
    # ... also with masks given: the check does not depend on automatic masks.
    case.brain, case.bone = brain, bone
    with pytest.raises(ClinfuseInputError, match="no skull or scalp"):
        preprocess_case(case, spacing=2.0)


@needs_data
def test_real_head_mri_with_skull_passes():
    mri, aff = load_nifti(VOL / "rire_training_001" / "mr_t1.nii.gz")
    sp = _spacing(aff)
    _, bone = shell_ct(mri_brain_mask(mri, sp), sp)
    check_mri_has_skull(mri.astype(np.float32), bone, sp)
