import math

import numpy as np
import pytest

from clinfuse.errors import ClinfuseInputError
from clinfuse.evaluation.case import FUSION_COLUMNS, evaluate_case
from clinfuse.nn.lesion_mask import LesionMaskRule


def test_brain_vs_mri_and_bone_vs_bone_window(case_factory):
    p = case_factory()
    row = evaluate_case(p.mri, p)
    assert row["brain_ssim"] == pytest.approx(1.0)
    assert row["brain_psnr"] == math.inf
    # Bone is judged against the bone window, not the clinical window.
    row = evaluate_case(p.ct_bone, p)
    assert row["bone_ssim"] == pytest.approx(1.0)
    assert row["bone_psnr"] == math.inf
    assert row["brain_ssim"] < 0.9
    assert evaluate_case(p.ct, p)["bone_ssim"] < 0.9


def test_roi_psnr_hand_value(case_factory):
    p = case_factory()
    # An offset of 0.4 inside the brain: MSE 0.16, PSNR = 10 log10(4^2 / 0.16) = 20 dB.
    row = evaluate_case(np.where(p.brain, p.mri + 0.4, p.mri), p)
    assert row["brain_psnr"] == pytest.approx(20.0, abs=1e-4)


def test_lesion_metrics_only_with_a_prediction(case_factory):
    p = case_factory()
    row = evaluate_case(p.mri, p)
    assert all(math.isnan(row[k]) for k in ("dice", "nsd", "hd95"))
    row = evaluate_case(p.mri, p, lesion_pred=p.lesion.astype(np.float32) * 0.9)
    assert row["dice"] == 1.0 and row["nsd"] == 1.0 and row["hd95"] == 0.0
    shifted = np.roll(p.lesion, 1, axis=0)
    row = evaluate_case(p.mri, p, lesion_pred=shifted)
    assert 0 < row["dice"] < 1 and row["hd95"] == pytest.approx(1.0)


def test_bad_inputs_raise_clear_errors(case_factory):
    p = case_factory()
    with pytest.raises(ClinfuseInputError, match="shape"):
        evaluate_case(p.mri[:-1], p)
    f = p.mri.copy()
    f[0, 0, 0] = np.nan
    with pytest.raises(ClinfuseInputError, match="NaN"):
        evaluate_case(f, p)
    with pytest.raises(ClinfuseInputError, match="lesion prediction"):
        evaluate_case(p.mri, p, lesion_pred=np.zeros((4, 4, 4), bool))
    p.bone = np.zeros((15, 16, 16), bool)
    with pytest.raises(ClinfuseInputError, match="bone mask"):
        evaluate_case(p.mri, p)


def test_empty_roi_is_nan_with_a_warning(case_factory):
    p = case_factory()
    p.bone = np.zeros_like(p.bone)
    with pytest.warns(RuntimeWarning, match="empty ROI"):
        row = evaluate_case(p.mri, p)
    assert math.isnan(row["bone_ssim"]) and math.isnan(row["bone_psnr"])
    assert row["brain_ssim"] == pytest.approx(1.0)


def test_2d_adds_the_standard_metrics(case_factory):
    pytest.importorskip("clinfuse.metrics.fusion")
    from clinfuse.metrics.fusion import fusion_metrics

    p = case_factory(shape=(64, 64), lesion=False)
    a = np.round((p.mri + 2) / 4 * 255).astype(np.uint8)
    b = np.round((p.ct + 2) / 4 * 255).astype(np.uint8)
    fused = 0.5 * (p.mri + p.ct)
    row = evaluate_case(fused, p, sources_uint8=(a, b))
    assert list(row)[:8] == list(FUSION_COLUMNS)
    # The fused image is scored as saved: min-max scaled to 0..255 and rounded.
    lo, hi = fused.min(), fused.max()
    f8 = np.round((fused - lo) / (hi - lo) * 255).astype(np.uint8)
    want = fusion_metrics(a, b, f8)
    for k in FUSION_COLUMNS:
        assert row[k] == pytest.approx(want[k], rel=1e-6), k


def test_probability_is_cleaned_with_the_heads_mask_rule(case_factory):
    """A probability is scored as `clean_mask` with the head's mask rule: a 1-voxel
    false-positive speck far from the lesion is gone with a minimum size, kept without."""
    p = case_factory()
    prob = p.lesion.astype(np.float32) * 0.9
    prob[2, 8, 8] = 0.9  # one voxel (1 µL at 1 mm) inside the brain, away from the lesion
    kept = evaluate_case(p.mri, p, lesion_pred=prob)
    assert kept["dice"] < 1.0 and kept["nsd"] < 1.0 and kept["no_predicted_lesion"] == 0.0
    clean = evaluate_case(p.mri, p, lesion_pred=prob, mask_rule=LesionMaskRule(0.002))  # 2 vox
    assert clean["dice"] == 1.0 and clean["hd95"] == 0.0 and clean["nsd"] == 1.0
    # a bool prediction is the mask as given: never cleaned
    as_given = evaluate_case(p.mri, p, lesion_pred=prob >= 0.5, mask_rule=LesionMaskRule(0.002))
    assert as_given["dice"] == kept["dice"]


def test_mirror_ghost_rule_is_applied_with_the_cases_mri(case_factory):
    """A rule that drops mirror ghosts is given the case's MRI: the lesion's fainter twin,
    about the MRI's own mid-sagittal plane, is not scored."""
    from dataclasses import replace

    from clinfuse.nn.symmetry import mri_plane, near_mirror_image

    p = case_factory()
    d2 = sum((g - c) ** 2 for g, c in zip(np.indices(p.shape), (4.5, 8.5, 8.5), strict=True))
    p = replace(p, lesion=d2 <= 1.5**2)  # a small lesion left of the midline
    twin = near_mirror_image(p.lesion, mri_plane(p.mri), margin=0)
    assert twin.any() and not (twin & p.lesion).any()
    prob = np.where(p.lesion > 0, 0.95, np.where(twin, 0.8, 0.0)).astype(np.float32)
    ghosted = evaluate_case(p.mri, p, lesion_pred=prob)
    rule = LesionMaskRule(drop_mirror_ghosts=True)
    clean = evaluate_case(p.mri, p, lesion_pred=prob, mask_rule=rule)
    assert ghosted["dice"] < 0.9 and clean["dice"] == 1.0


def test_empty_prediction_is_flagged(case_factory):
    p = case_factory()
    row = evaluate_case(p.mri, p, lesion_pred=np.zeros(p.shape, np.float32))
    assert row["no_predicted_lesion"] == 1.0 and row["dice"] == 0.0
    assert row["hd95"] > 20  # the image diagonal stand-in of metrics.segmentation.hd95
    # everything predicted is smaller than the minimum size: empty after cleaning, flagged too
    row = evaluate_case(p.mri, p, lesion_pred=p.lesion * 0.9, mask_rule=LesionMaskRule(1.0))
    assert row["no_predicted_lesion"] == 1.0
    assert math.isnan(evaluate_case(p.mri, p)["no_predicted_lesion"])  # nothing scored
