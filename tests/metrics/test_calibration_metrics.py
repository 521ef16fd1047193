"""ECE, Brier and the reliability curve on hand-computed cases."""

import math

import numpy as np
import pytest

from clinfuse.errors import ClinfuseInputError
from clinfuse.metrics.calibration import brier, ece, reliability_curve


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
