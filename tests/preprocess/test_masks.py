"""Automatic ROI masks: hand-built rings with known answers, phantoms as ground truth, real CT,
bad input, and the optional TotalSegmentator adapter's message."""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from clinfuse.errors import ClinfuseInputError
from clinfuse.phantom import PhantomConfig, generate_phantom
from clinfuse.preprocess.masks import (
    auto_bone_mask,
    auto_brain_mask,
    bone_threshold_hu,
    mri_brain_mask,
    totalsegmentator_masks,
)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def dice(a, b):
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def ring_ct(n=64, r_in=20.0, r_out=24.0, inside=30.0, bone=1400.0, outside=-1000.0):
    """2D skull-like ring: soft tissue disk, cortical ring, air outside (1 mm pixels)."""
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2.0
    r = np.hypot(yy, xx)
    ct = np.full((n, n), outside, dtype=np.float32)
    ct[r < r_out] = bone
    ct[r < r_in] = inside
    return ct, (r >= r_in) & (r < r_out), r < r_in


def test_ring_hand_built_exact():
    ct, ring, disk = ring_ct()
    np.testing.assert_array_equal(auto_bone_mask(ct, (1.0, 1.0)), ring)
    np.testing.assert_array_equal(auto_brain_mask(None, ct, (1.0, 1.0)), disk)


def test_threshold_is_fat_side_half_maximum():
    ct, _, _ = ring_ct(bone=1400.0)
    # (1400 + (-90)) / 2 - 25 = 630 HU; clamped to 300..700 for very dense or faint bone.
    assert bone_threshold_hu(ct) == pytest.approx(630.0)
    assert bone_threshold_hu(ring_ct(bone=3000.0)[0]) == 700.0


def test_diploe_between_tables_is_bone_but_soft_edge_is_not():
    n = 64
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2.0
    r = np.hypot(yy, xx)
    ct = np.full((n, n), -1000.0, dtype=np.float32)
    ct[r < 27] = 20.0  # scalp
    ct[r < 25] = 1400.0  # outer table
    ct[r < 23] = 450.0  # diploe (below the 630 HU threshold)
    ct[r < 21] = 1400.0  # inner table
    ct[r < 19] = 10.0  # CSF/brain
    ct[(r >= 19) & (r < 19.6)] = 450.0  # a partial-volume rim at the inner edge: not bone
    bone = auto_bone_mask(ct, (1.0, 1.0))
    np.testing.assert_array_equal(bone, (r >= 19.6) & (r < 25))


def test_fracture_gap_does_not_empty_the_brain():
    ct, ring, disk = ring_ct()
    ct[30:34, 40:] = 40.0  # a 4-pixel fracture through the right side of the ring
    brain = auto_brain_mask(None, ct, (1.0, 1.0))
    assert dice(brain, disk) > 0.97
    assert not brain[30:34, 60:].any()  # the outside of the gap is not brain


def test_floating_marker_and_display_ct():
    ct, ring, disk = ring_ct(inside=110.0, bone=255.0, outside=0.0)
    ct[2:4, 2:4] = 255.0  # fiducial marker in air
    bone = auto_bone_mask(ct, (1.0, 1.0), ct_kind="display")
    np.testing.assert_array_equal(bone, ring)


@pytest.fixture(scope="module")
def phantom():
    cfg = PhantomConfig(
        shape=(56, 64, 40), spacing=(2.2, 2.2, 3.0), mri_contrast="T2", fracture=True
    )
    return generate_phantom(cfg, 21).case


def test_phantom_dice_3d(phantom):
    c = phantom
    bone = auto_bone_mask(c.ct, c.spacing)
    brain = auto_brain_mask(c.mri, c.ct, c.spacing, bone=bone)
    assert dice(bone, c.bone) >= 0.95
    assert dice(brain, c.brain) >= 0.95
    assert not (bone & brain).any()
    # Without a given bone mask the same result comes out.
    np.testing.assert_array_equal(auto_brain_mask(c.mri, c.ct, c.spacing), brain)
    # MRI-only fallback: looser, but clearly the intracranial space.
    assert dice(mri_brain_mask(c.mri, c.spacing), c.brain) >= 0.85


def test_phantom_dice_2d():
    c = generate_phantom(PhantomConfig(shape=(96, 112), spacing=(2.0, 2.0)), 8).case
    assert dice(auto_bone_mask(c.ct, c.spacing), c.bone) >= 0.95
    assert dice(auto_brain_mask(c.mri, c.ct, c.spacing), c.brain) >= 0.95
    # Display-windowed CT: brain from the MRI only.
    disp = np.clip((c.ct + 160) / 400 * 255, 0, 255)
    assert dice(auto_brain_mask(c.mri, disp, c.spacing, ct_kind="display"), c.brain) >= 0.85


@pytest.mark.skipif(not (DATA / "volumes").is_dir(), reason="shared real data not present")
def test_real_head_ct():
    from clinfuse.io.nifti import load_nifti

    raw, aff = load_nifti(DATA / "volumes" / "vtk_headsq_ct" / "ct_raw_plus1024.nii.gz")
    hu = raw - 1024.0  # this file stores HU + 1024
    sp = tuple(float(s) for s in np.linalg.norm(aff[:3, :3], axis=0))
    bone = auto_bone_mask(hu, sp)
    brain = auto_brain_mask(None, hu, sp, bone=bone)
    assert np.median(hu[bone]) > 600
    assert 5_000 < brain.sum() and 0 < np.median(hu[brain]) < 60  # brain parenchyma HU
    # Near the top of this volume the head section is mostly cranial cavity.
    head = ndimage.binary_fill_holes(hu[:, :, -6] > -300)
    assert brain[:, :, -6].sum() > 0.35 * head.sum()
    assert not (brain & ~head[:, :, None])[:, :, -6].any()


@pytest.mark.parametrize(
    "call",
    [
        lambda: auto_bone_mask(np.full((8, 8), np.nan), (1.0, 1.0)),
        lambda: auto_bone_mask(np.zeros((8, 8)), (1.0, 1.0, 1.0)),
        lambda: auto_bone_mask(np.zeros((4, 8, 8, 8)), (1.0,) * 4),
        lambda: auto_bone_mask(np.zeros((8, 8)), (1.0, 1.0), ct_kind="raw"),
        lambda: auto_brain_mask(None, np.zeros((16, 16)), (1.0, 1.0)),  # no skull in the CT
        lambda: auto_brain_mask(None, None, (1.0, 1.0)),
        lambda: auto_brain_mask(None, np.zeros((8, 8)), (1.0, 1.0), bone=np.ones((4, 4), bool)),
    ],
)
def test_bad_input_is_a_user_error(call):
    with pytest.raises(ClinfuseInputError):
        call()


def test_totalsegmentator_missing_is_explained():
    with pytest.raises(ClinfuseInputError, match="TotalSegmentator is not installed"):
        totalsegmentator_masks(np.zeros((8, 8, 8)), np.eye(4))


@pytest.mark.skipif(not (DATA / "volumes").is_dir(), reason="shared real data not present")
def test_mri_brain_mask_stops_at_the_orbits_on_a_thick_slice_t1():
    """visible_male (5 mm slices): the orbital roof is thinner than a slice, so the plain mask
    (unknown contrast) runs into the orbits' fat and the face; told the sequence is T1, the fat
    is left out and the deeper core cuts the face off."""
    from clinfuse.phantom.realhead import _resample, load_real_mri

    r = _resample(load_real_mri(DATA / "volumes" / "visible_male_head" / "mri_t1.nii.gz"), 2.0)
    ml = 8.0 / 1000.0  # one 2 mm voxel in mL
    old = mri_brain_mask(r.mri, r.spacing)
    new = mri_brain_mask(r.mri, r.spacing, contrast="T1")
    assert old.sum() * ml > 2300.0
    assert 1500.0 < new.sum() * ml < 2050.0
    # What the new mask drops is bright (orbital and facial fat) or below the brain.
    dropped = old & ~new
    fat = r.mri[dropped] > np.percentile(r.mri[new], 95)
    low = np.nonzero(dropped)[2] < np.percentile(np.nonzero(new)[2], 20)
    assert (fat | low).mean() > 0.6


@pytest.mark.parametrize("contrast", ["T2", "ADC"])
def test_mri_brain_mask_keeps_bright_csf(contrast):
    """Bright CSF (T2, ADC) stays in the mask: the bright band is left out only on T1/FLAIR,
    and every other sequence gets the plain mask of an unknown contrast."""
    c = generate_phantom(PhantomConfig(mri_contrast=contrast), 4).case
    told = mri_brain_mask(c.mri, c.spacing, contrast=contrast)
    np.testing.assert_array_equal(told, mri_brain_mask(c.mri, c.spacing))
    assert dice(told, c.brain) >= 0.9
    if contrast == "ADC":  # CSF is the brightest class by far: the band would cut the rim off
        banded = mri_brain_mask(c.mri, c.spacing, contrast="T1")
        assert dice(banded, c.brain) < dice(told, c.brain) - 0.05
