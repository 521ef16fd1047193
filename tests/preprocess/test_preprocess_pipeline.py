"""preprocess_case / save_prepared / load_prepared / to_native on tiny cases and real data."""

import json
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import clinfuse.preprocess
from clinfuse.errors import ClinfuseInputError
from clinfuse.io.case import Case
from clinfuse.preprocess.pipeline import (
    load_prepared,
    native_grid,
    preprocess_case,
    save_prepared,
    to_native,
)
from clinfuse.preprocess.windowing import BONE_WINDOW, CLINICAL_WINDOW, apply_window

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
AFF = np.diag([2.0, 2.0, 2.0, 1.0])
AFF[:3, 3] = -15.0  # a 16^3 grid centred on the origin


def ball_case(n: int = 16, affine: np.ndarray = AFF, **kw) -> Case:
    g = np.indices((n, n, n)).astype(float) - (n - 1) / 2
    r = np.sqrt((g**2).sum(0))
    brain, bone = r < 4.5, (r >= 4.5) & (r < 6.5)
    mri = (np.where(brain, 100.0, 0.0) + np.where(bone, 20.0, 0.0)).astype(np.float32)
    ct = (np.where(brain, 35.0, -1000.0) + np.where(bone, 2200.0, 0.0)).astype(np.float32)
    lesion = brain & (g[0] > 2)
    kw = {"brain": brain, "bone": bone, "lesion": lesion, **kw}
    return Case("ball", mri, ct, affine, **kw)


def test_intensities_masks_and_record():
    case = ball_case()
    p = preprocess_case(case)
    assert p.shape == case.mri.shape and p.mask_source == {
        "brain": "given",
        "bone": "given",
        "lesion": "given",
    }
    np.testing.assert_allclose(p.mri[case.brain], 2.0)  # brain = 99.5th pct of head -> +2
    assert np.all(p.mri[case.mri == 0] == -2.0)
    # 35 HU in the clinical window [-160, 240]: (35 + 160) / 400 * 4 - 2 = -0.05
    np.testing.assert_allclose(p.ct[case.brain], -0.05, atol=1e-6)
    # 1200 HU in the bone window [-500, 1500]: (1200 + 500) / 2000 * 4 - 2 = 1.4
    np.testing.assert_allclose(p.ct_bone[case.bone], 1.4, atol=1e-6)
    assert np.all(p.ct[case.ct == -1000] == -2.0)
    rec = p.record
    assert rec["ct"]["clinical_window"]["centre"] == CLINICAL_WINDOW.centre
    assert rec["ct"]["bone_window"]["width"] == BONE_WINDOW.width
    assert rec["mri_normalisation"]["scale"] == pytest.approx(100.0)
    assert rec["registration"] is None and rec["grid"]["resampled"] is False
    json.dumps(rec)  # JSON-serialisable
    assert p.stack().shape == (3, 16, 16, 16)


def test_bone_window_clips_dense_bone():
    case = ball_case()
    case.ct[case.bone] = 2200.0
    p = preprocess_case(case)
    np.testing.assert_allclose(p.ct_bone[case.bone], 2.0)  # above the bone window's 1500 HU
    np.testing.assert_allclose(p.ct[case.bone], 2.0)  # clipped by the clinical window
    nat = to_native(np.where(p.bone, p.ct_bone, p.mri), p)
    np.testing.assert_allclose(nat[case.bone], 1500.0)  # comes back at the window top


def test_spacing_resamples_everything_and_to_native_maps_back():
    case = ball_case()
    p = preprocess_case(case, spacing=4.0)
    assert p.shape == (8, 8, 8) and p.spacing == (4.0, 4.0, 4.0)
    assert p.brain.dtype == bool and p.brain.shape == p.shape and p.lesion.shape == p.shape
    assert p.record["grid"]["resampled"] and p.record["ct_resampled"]
    back = to_native(p.mri, p, mode="mri")
    assert back.shape == case.mri.shape
    shape, aff = native_grid(p)
    assert shape == case.mri.shape and np.allclose(aff, case.affine)
    # 4 mm -> 2 mm linear: the brain interior (away from the blurred edge) is still ~100.
    core = np.sqrt(((np.indices(shape) - 7.5) ** 2).sum(0)) < 2.5
    np.testing.assert_allclose(back[core], 100.0, rtol=0.05)
    # Same grid: to_native inverts the normalisation exactly inside the brain.
    q = preprocess_case(case)
    np.testing.assert_allclose(to_native(q.mri, q, mode="mri")[case.brain], 100.0, rtol=1e-5)
    fused = np.where(q.bone, q.ct_bone, q.mri)
    nat = to_native(fused, q)  # "roi": bone -> HU through the bone window, rest -> MRI units
    np.testing.assert_allclose(nat[case.bone], 1200.0, rtol=1e-5)
    np.testing.assert_allclose(nat[case.brain], 100.0, rtol=1e-5)
    np.testing.assert_allclose(to_native(q.ct, q, mode="ct_clinical")[case.brain], 35, atol=1e-3)


def test_ct_on_another_grid_is_resampled_with_air_outside():
    case = ball_case()
    ct_aff = np.diag([1.0, 1.0, 1.0, 1.0])
    ct_aff[:3, 3] = [-10, -10, -10]  # a smaller field of view than the MRI's
    r = np.sqrt(((np.indices((21, 21, 21)) - 10.0) ** 2).sum(0))
    case.ct = np.where((r >= 8) & (r < 10), 1500.0, 40.0).astype(np.float32)  # a 2 mL skull
    case.grids = {"ct": ct_aff}
    p = preprocess_case(case)
    assert p.ct.shape == case.mri.shape and p.record["ct_resampled"]
    centre = p.ct[6:10, 6:10, 6:10]
    np.testing.assert_allclose(centre, apply_window(np.float32(40.0), CLINICAL_WINDOW))
    assert p.ct[0, 0, 0] == -2.0  # outside the CT's FOV -> air (-1024 HU)


def test_reorientation_to_ras_and_back():
    las = AFF.copy()
    las[0, 0] = -2.0  # axis 0 runs right -> left
    case = ball_case(affine=las)
    case.mri[0, 5, 5] = 50.0  # an asymmetric marker
    p = preprocess_case(case)
    assert nib.aff2axcodes(p.affine) == ("R", "A", "S") and p.record["reoriented"]
    assert p.mri[-1, 5, 5] == pytest.approx(50 / 100 * 4 - 2)
    back = to_native(p.mri, p, mode="mri")
    np.testing.assert_allclose(back, np.clip(case.mri, 0, 100), atol=1e-4)


def test_save_load_round_trip_3d_and_2d(tmp_path: Path):
    p = preprocess_case(ball_case())
    save_prepared(p, tmp_path / "c3")
    names = sorted(f.name for f in (tmp_path / "c3").iterdir())
    assert names == [
        "bone.nii.gz",
        "brain.nii.gz",
        "ct.nii.gz",
        "ct_bone.nii.gz",
        "lesion.nii.gz",
        "mri.nii.gz",
        "preprocess.json",
    ]
    q = load_prepared(tmp_path / "c3")
    for key in ("mri", "ct", "ct_bone", "brain", "bone", "lesion"):
        np.testing.assert_array_equal(getattr(q, key), getattr(p, key))
    np.testing.assert_allclose(q.affine, p.affine)
    assert q.record == json.loads(json.dumps(p.record)) and q.mask_source == p.mask_source
    side = json.loads((tmp_path / "c3" / "preprocess.json").read_text())
    assert side["spacing"] == [2.0, 2.0, 2.0] and side["files"]["ct_bone"] == "ct_bone.nii.gz"

    img = np.zeros((12, 10), np.float32)
    img[3:9, 2:8] = 200
    c2 = Case("p", img, img.copy(), np.eye(4), brain=img > 0, bone=img > 100, ct_kind="display")
    p2 = preprocess_case(c2)
    np.testing.assert_allclose(p2.ct, p2.ct_bone)
    np.testing.assert_allclose(p2.ct[3, 2], 200 / 255 * 4 - 2, atol=1e-6)
    save_prepared(p2, tmp_path / "c2")
    q2 = load_prepared(tmp_path / "c2")
    assert q2.ndim == 2 and q2.shape == (12, 10) and q2.lesion is None and q2.ct_kind == "display"
    np.testing.assert_array_equal(to_native(q2.ct, q2), img.astype(np.uint8))
    with pytest.raises(ClinfuseInputError, match="preprocess.json"):
        load_prepared(tmp_path)


def test_missing_masks_use_auto_masks(monkeypatch):
    calls = []
    fake = types.ModuleType("clinfuse.preprocess.masks")

    def auto_bone_mask(ct, spacing, ct_kind="hu"):
        calls.append(("bone", ct.shape, tuple(spacing), ct_kind))
        return ct > 500

    def auto_brain_mask(mri, ct, spacing, ct_kind="hu", bone=None):
        calls.append(("brain", bone is not None))
        return (ct > 0) & (ct < 100)

    fake.auto_bone_mask, fake.auto_brain_mask = auto_bone_mask, auto_brain_mask
    monkeypatch.setitem(sys.modules, "clinfuse.preprocess.masks", fake)
    monkeypatch.setattr(clinfuse.preprocess, "masks", fake, raising=False)
    case = ball_case(brain=None, bone=None, lesion=None)
    p = preprocess_case(case)
    assert calls == [("bone", (16, 16, 16), (2.0, 2.0, 2.0), "hu"), ("brain", True)]
    assert p.mask_source == {"bone": "auto", "brain": "auto"} and p.lesion is None
    assert p.record["masks"] == {"bone": "auto", "brain": "auto"}
    with pytest.raises(ClinfuseInputError, match="automatic masks are off"):
        preprocess_case(case, auto_masks=False)


def test_register_in_pipeline_realigns_ct():
    case = ball_case(n=24)
    shift = np.zeros(3, int)
    shift[0] = 2  # 4 mm along x
    case.ct = np.roll(case.ct, 2, axis=0)
    case.mri[case.mri > 0] += np.indices(case.mri.shape)[1][case.mri > 0]  # break symmetry
    p = preprocess_case(case, register=True)
    t = p.record["registration"]["translation_mm"]
    assert abs(abs(t[0]) - 4.0) < 1.0 and abs(t[1]) < 1.0 and abs(t[2]) < 1.0
    moved = preprocess_case(case).ct_bone
    err_before = np.abs(moved - apply_window(ball_case(n=24).ct, BONE_WINDOW)).mean()
    err_after = np.abs(p.ct_bone - apply_window(ball_case(n=24).ct, BONE_WINDOW)).mean()
    assert err_after < 0.5 * err_before
    with pytest.raises(ClinfuseInputError, match="display"):
        c2 = Case("d", np.ones((8, 8)), np.ones((8, 8)), np.eye(4), ct_kind="display")
        preprocess_case(c2, register=True, auto_masks=False)


def test_ct_in_another_world_frame_needs_registration():
    """A CT whose affine puts it 400 mm away (another scanner's origin) is refused without
    registration (naming the file) and aligned with it."""
    case = ball_case(n=24)
    far = AFF.copy()
    far[:3, 3] += [400.0, -50.0, 0.0]
    case.mri[case.mri > 0] += np.indices(case.mri.shape)[1][case.mri > 0]  # break symmetry
    case.grids = {"ct": far}
    case.meta["no_overlap"] = ["ct"]
    case.sources = {"ct": "/data/ct.nii.gz"}
    with pytest.raises(ClinfuseInputError, match="--register") as e:
        preprocess_case(case)
    assert "/data/ct.nii.gz" in str(e.value)
    p = preprocess_case(case, register=True)
    m = np.asarray(p.record["registration"]["matrix_ras"])
    np.testing.assert_allclose(m[:3, 3], [400.0, -50.0, 0.0], atol=1.0)
    ref = apply_window(ball_case(n=24).ct, BONE_WINDOW)
    assert np.abs(p.ct_bone - ref).mean() < 0.1


@pytest.mark.skipif(not (DATA / "volumes").is_dir(), reason="shared data not present")
def test_real_seg3d_t1_with_pseudo_ct(tmp_path: Path):
    """Real T1 + the skull mask segmented on the patient's CT; the CT is a pseudo-CT made from
    the masks (skull 1200 HU, intracranial 30 HU, other head tissue 20 HU, air -1000 HU)."""
    from clinfuse.io.dataset import load_case

    root = DATA / "volumes" / "seg3d_t1_skullmask"
    skull = nib.load(root / "skull_mask.nii.gz")
    intra = np.asanyarray(nib.load(root / "intracranial_mask.nii.gz").dataobj) > 0
    headm = np.asanyarray(nib.load(root / "head_mask.nii.gz").dataobj) > 0
    sk = np.asanyarray(skull.dataobj) > 0
    ct = np.where(headm, 20.0, -1000.0)
    ct[intra] = 30.0
    ct[sk] = 1200.0
    nib.save(nib.Nifti1Image(ct.astype(np.float32), skull.affine), tmp_path / "ct.nii.gz")
    case = load_case(
        root / "t1.nii.gz",
        tmp_path / "ct.nii.gz",
        brain=root / "intracranial_mask.nii.gz",
        bone=root / "skull_mask.nii.gz",
    )
    p = preprocess_case(case, spacing=3.0)
    assert p.shape == (53, 69, 48) and p.mask_source == {"brain": "given", "bone": "given"}
    assert p.record["ct"]["offset_subtracted"] == 0.0 and p.mri.max() == 2.0
    # Masks (nearest) and CT (linear) are resampled consistently: the given skull and the
    # pseudo-CT's bone (above 600 HU in the bone window) still coincide on the 3 mm grid.
    ct_bone = p.ct_bone > (600 + 500) / 2000 * 4 - 2
    dice = 2 * (ct_bone & p.bone).sum() / (ct_bone.sum() + p.bone.sum())
    assert dice > 0.9, dice
    assert abs(p.brain.mean() - intra.mean()) < 0.01  # nearest-neighbour keeps the volume
