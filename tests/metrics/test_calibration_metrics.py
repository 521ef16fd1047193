"""ECE, Brier and the reliability curve on hand-computed cases."""

import math

import numpy as np
import pytest

from clinfuse.errors import ClinfuseInputError
from clinfuse.metrics.calibration import (
    apply_platt,
    apply_temperature,
    brier,
    calibration_scores,
    class_balanced_weights,
    ece,
    fit_platt,
    fit_temperature,
    lesion_neighbourhood,
    region_weights,
    reliability_curve,
)


def test_hand_case_ten_bins():
    prob = np.array([0.1, 0.1, 0.9, 0.9])
    gt = np.array([0, 1, 1, 1])
    # bin 1: confidence 0.1, accuracy 0.5; bin 9: confidence 0.9, accuracy 1.0
    assert ece(prob, gt, n_bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    assert brier(prob, gt) == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)
    curve = reliability_curve(prob, gt, n_bins=10)
    np.testing.assert_array_equal(curve.counts, [0, 2, 0, 0, 0, 0, 0, 0, 0, 2])
    assert curve.accuracy[1] == pytest.approx(0.5) and curve.accuracy[9] == pytest.approx(1.0)
    assert curve.confidence[9] == pytest.approx(0.9)
    assert np.isnan(curve.accuracy[0]) and np.isnan(curve.confidence[5])
    np.testing.assert_allclose(curve.bin_centres, np.arange(10) / 10 + 0.05)


def test_bin_edges_and_default_fifteen_bins():
    prob = np.array([0.0, 1 / 15, 1.0])
    curve = reliability_curve(prob, np.array([0, 0, 1]))
    assert len(curve.counts) == 15
    # [k/15, (k+1)/15): 1/15 opens bin 1; 1.0 closes the last bin
    assert curve.counts[0] == 1 and curve.counts[1] == 1 and curve.counts[14] == 1


def test_calibrated_and_confidently_wrong():
    gt = np.array([1, 0, 0, 0] * 5)
    assert ece(np.full(20, 0.25), gt) == pytest.approx(0.0)
    assert ece(1.0 - gt, gt) == pytest.approx(1.0)
    assert brier(1.0 - gt, gt) == pytest.approx(1.0)
    assert brier(gt.astype(float), gt) == 0.0


def test_mask_selects_voxels_in_3d():
    prob = np.zeros((2, 2, 2))
    gt = np.zeros((2, 2, 2), dtype=bool)
    prob[0] = 0.8
    gt[0, 0] = True
    mask = np.zeros((2, 2, 2), dtype=bool)
    mask[0] = True  # four voxels at 0.8, two of them lesion
    assert ece(prob, gt, mask) == pytest.approx(abs(0.5 - 0.8))
    assert brier(prob, gt, mask) == pytest.approx((2 * 0.04 + 2 * 0.64) / 4)


def test_empty_mask_is_nan_with_warning():
    prob, gt = np.full((3, 3), 0.5), np.zeros((3, 3))
    empty = np.zeros((3, 3), dtype=bool)
    with pytest.warns(RuntimeWarning):
        assert math.isnan(ece(prob, gt, empty))
    with pytest.warns(RuntimeWarning):
        assert math.isnan(brier(prob, gt, empty))


def test_bad_inputs():
    with pytest.raises(ClinfuseInputError):
        ece(np.array([0.5, 1.2]), np.array([0, 1]))
    with pytest.raises(ClinfuseInputError):
        brier(np.array([0.5, np.nan]), np.array([0, 1]))
    with pytest.raises(ClinfuseInputError):
        brier(np.array([0.5, 0.5]), np.array([0, 2]))
    with pytest.raises(ClinfuseInputError):
        ece(np.zeros((2, 2)), np.zeros((2, 3)))


# --- class-balanced, lesion neighbourhood, the three-way summary -------------------------------

# 15 bins: 0.2 falls in bin 3, 0.8 in bin 12. Three non-lesion voxels and one lesion voxel at
# p 0.2, one lesion voxel at p 0.8.
P5 = np.array([0.2, 0.2, 0.2, 0.2, 0.8])
G5 = np.array([0, 0, 0, 1, 1])


def test_class_balanced_hand_case():
    w = class_balanced_weights(G5)
    # 2 lesion voxels share 0.5 (0.25 each), 3 background voxels share 0.5 (1/6 each).
    np.testing.assert_allclose(w, [1 / 6, 1 / 6, 1 / 6, 0.25, 0.25])
    # bin 3: weight 0.75, accuracy 0.25 / 0.75 = 1/3, confidence 0.2;
    # bin 12: weight 0.25, accuracy 1, confidence 0.8.
    assert ece(P5, G5, weights=w) == pytest.approx(0.75 * (1 / 3 - 0.2) + 0.25 * 0.2)  # 0.15
    # 0.5 * mean over lesion of (p - 1)^2 + 0.5 * mean over background of p^2
    assert brier(P5, G5, weights=w) == pytest.approx(0.5 * (0.64 + 0.04) / 2 + 0.5 * 0.04)
    curve = reliability_curve(P5, G5, weights=w)
    assert curve.weights[3] == pytest.approx(0.75) and curve.weights[12] == pytest.approx(0.25)
    assert curve.accuracy[3] == pytest.approx(1 / 3) and curve.counts[3] == 4
    # Unweighted, the same voxels: 4/5 * |0.25 - 0.2| + 1/5 * |1 - 0.8| = 0.08; Brier 0.16.
    assert ece(P5, G5) == pytest.approx(0.08)
    assert brier(P5, G5) == pytest.approx(0.16)


def test_class_balanced_exposes_a_head_that_predicts_nothing():
    # 1 lesion voxel among 999 background voxels, p = 0 everywhere: brain-wide it looks
    # calibrated, balanced it is half wrong.
    gt = np.zeros(1000)
    gt[0] = 1
    prob = np.zeros(1000)
    assert ece(prob, gt) == pytest.approx(0.001)
    w = class_balanced_weights(gt)
    assert ece(prob, gt, weights=w) == pytest.approx(0.5)
    assert brier(prob, gt, weights=w) == pytest.approx(0.5)


def test_class_balanced_needs_both_classes():
    with pytest.raises(ClinfuseInputError, match="lesion 0"):
        class_balanced_weights(np.zeros(4))
    mask = np.array([True, True, False, False])
    with pytest.raises(ClinfuseInputError, match="non-lesion 0"):
        class_balanced_weights(np.array([1, 1, 0, 0]), mask)


def test_lesion_neighbourhood_is_spacing_aware():
    gt = np.zeros((7, 7, 3), dtype=bool)
    gt[3, 3, 1] = True
    near = lesion_neighbourhood(gt, (1.0, 2.0, 5.0), radius_mm=2.0)
    # x: +-1, +-2 mm; y: +-2 mm; z: 5 mm is too far; (1, 1, 0) is sqrt(5) mm > 2.
    expected = np.zeros_like(gt)
    expected[1:6, 3, 1] = True
    expected[3, 2:5, 1] = True
    np.testing.assert_array_equal(near, expected)
    brain = np.zeros_like(gt)
    brain[3:, :, :] = True
    np.testing.assert_array_equal(
        lesion_neighbourhood(gt, (1.0, 2.0, 5.0), 2.0, within=brain), expected & brain
    )
    assert not lesion_neighbourhood(np.zeros((4, 4), bool), (1.0, 1.0)).any()
    with pytest.raises(ValueError, match="spacing"):
        lesion_neighbourhood(gt, (1.0, 0.0, 1.0))


def test_calibration_scores_three_regions():
    prob = np.array([0.2, 0.2, 0.2, 0.2, 0.8, 0.0, 0.0])
    gt = np.array([0, 0, 0, 1, 1, 0, 0])
    brain = np.array([1, 1, 1, 1, 1, 0, 0], dtype=bool)
    near = np.array([0, 0, 0, 1, 1, 0, 0], dtype=bool)
    out = calibration_scores(prob, gt, brain, near)
    assert list(out) == ["brain", "lesion neighbourhood", "class-balanced (brain)"]
    assert out["brain"].ece == pytest.approx(0.08) and out["brain"].n_voxels == 5
    assert out["brain"].n_lesion == 2
    # Neighbourhood = the two lesion voxels: bin 3 |1 - 0.2|, bin 12 |1 - 0.8|, half each.
    assert out["lesion neighbourhood"].ece == pytest.approx(0.5 * 0.8 + 0.5 * 0.2)
    assert out["lesion neighbourhood"].brier == pytest.approx((0.64 + 0.04) / 2)
    assert out["class-balanced (brain)"].ece == pytest.approx(0.15)
    assert out["class-balanced (brain)"].brier == pytest.approx(0.19)
    no_lesion = calibration_scores(prob, np.zeros(7), brain)
    assert "lesion neighbourhood" not in no_lesion
    assert math.isnan(no_lesion["class-balanced (brain)"].ece)


# --- temperature scaling -----------------------------------------------------------------------


def test_fit_temperature_hand_case():
    # Logits +-2 ln 3; at +2 ln 3 three of four voxels are lesion, at -2 ln 3 one of four.
    # The NLL optimum has sigmoid(2 ln 3 / T) = 3/4, i.e. 2 ln 3 / T = ln 3: T = 2.
    lg = 2 * math.log(3)
    logits = np.array([lg, lg, lg, lg, -lg, -lg, -lg, -lg])
    labels = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.0, rel=1e-5)
    np.testing.assert_allclose(apply_temperature(logits, t)[:2], [0.75, 0.75], rtol=1e-5)
    # Already calibrated logits (+-ln 3 with the same labels): T = 1.
    assert fit_temperature(logits / 2, labels) == pytest.approx(1.0, rel=1e-5)


def test_fit_temperature_mask_and_torch_tensors():
    import torch

    lg = 2 * math.log(3)
    logits = torch.tensor([lg, lg, lg, lg, -lg, -lg, -lg, -lg, 3.0, -3.0])
    labels = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0, 0, 1])  # last two: confidently wrong
    mask = torch.tensor([True] * 8 + [False, False])
    assert fit_temperature(logits, labels, mask) == pytest.approx(2.0, rel=1e-5)
    assert fit_temperature(logits, labels) > 2.0  # the wrong voxels, kept, soften it further


def test_fit_temperature_bad_inputs():
    with pytest.raises(ValueError, match="both"):
        fit_temperature(np.array([1.0, 2.0]), np.array([1, 1]))
    with pytest.raises(ValueError, match="shape"):
        fit_temperature(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="no voxels"):
        fit_temperature(np.zeros(2), np.array([0, 1]), np.zeros(2, bool))
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(np.zeros(2), 0.0)
    # Perfectly separable with huge logits: the optimum is the smallest T, with a warning.
    with pytest.warns(RuntimeWarning, match="bound"):
        fit_temperature(np.array([5.0, -5.0]), np.array([1, 0]))


def test_fit_temperature_weights_equal_duplicates():
    # A weight of 2 on a voxel is the same fit as writing that voxel twice.
    lg = 2 * math.log(3)
    logits = np.array([lg, lg, lg, -lg, -lg, -lg, -lg])
    labels = np.array([1, 1, 0, 1, 0, 0, 0])
    w = np.array([1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # duplicate the second voxel
    dup = fit_temperature(np.r_[logits, lg], np.r_[labels, 1])
    assert fit_temperature(logits, labels, weights=w) == pytest.approx(dup, rel=1e-5)
    # Zero weights drop voxels, like a mask.
    w0 = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    masked = fit_temperature(logits, labels, w0 > 0)
    assert fit_temperature(logits, labels, weights=w0) == pytest.approx(masked, rel=1e-5)
    with pytest.raises(ValueError, match="weights"):
        fit_temperature(logits, labels, weights=-w)
    with pytest.raises(ValueError, match="weights shape"):
        fit_temperature(logits, labels, weights=w[:3])


def test_fit_platt_recovers_scale_and_bias():
    # Labels drawn from sigmoid(0.5 z - 1): Platt recovers (0.5, -1); a temperature cannot.
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 4.0, 200_000)
    y = rng.random(z.size) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))
    a, b = fit_platt(z, y)
    assert a == pytest.approx(0.5, abs=0.02)
    assert b == pytest.approx(-1.0, abs=0.05)
    p = apply_platt(z, a, b)
    assert ece(p, y) < 0.01
    assert ece(apply_temperature(z, fit_temperature(z, y)), y) > 2 * ece(p, y)
    # The hand case of a temperature: the optimum is b = 0, a = 1 / 2.
    lg = 2 * math.log(3)
    a, b = fit_platt(np.array([lg] * 4 + [-lg] * 4), np.array([1, 1, 1, 0, 1, 0, 0, 0]))
    assert (a, b) == pytest.approx((0.5, 0.0), abs=1e-4)
    with pytest.raises(ValueError, match="scale"):
        apply_platt(z, 0.0, 0.0)


def test_region_weights():
    brain = np.array([1, 1, 1, 1, 0], bool)
    near = np.array([0, 0, 1, 1, 1], bool)  # the last voxel is outside the brain: ignored
    w = region_weights(brain, near)
    np.testing.assert_allclose(w, [0.125, 0.125, 0.375, 0.375, 0.0])
    assert w.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="neighbourhood"):
        region_weights(brain, np.zeros(5, bool))
