"""nn.lesion_mask.lesion_components: the findings table of a lesion mask."""

import numpy as np
import pytest

from clinfuse.nn.lesion_mask import lesion_components


def test_components_most_probable_first_with_world_centroids_and_doubt():
    prob = np.zeros((12, 10, 8))
    prob[1:3, 1:3, 1:3] = 0.95  # 8 voxels, confident
    prob[6:10, 5:9, 3:7] = 0.7  # 64 voxels: more summed probability, doubtful under 0.85
    mask = prob > 0.5
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = [-10.0, 4.0, 1.0]
    big, small = lesion_components(prob, mask, (2.0, 2.0, 2.5), affine, doubt_below=0.85)
    assert big.volume_ml == pytest.approx(64 * 0.01) and small.volume_ml == pytest.approx(0.08)
    assert (big.mean_prob, big.max_prob, big.doubtful) == (pytest.approx(0.7), 0.7, True)
    assert not small.doubtful
    assert big.centroid_mm == pytest.approx((7.5 * 2 - 10, 6.5 * 2 + 4, 4.5 * 2.5 + 1))
    assert small.centroid_mm == pytest.approx((1.5 * 2 - 10, 1.5 * 2 + 4, 1.5 * 2.5 + 1))
    # no threshold: nothing is doubtful; no affine: index x spacing
    plain = lesion_components(prob, mask, (2.0, 2.0, 2.5))
    assert not any(c.doubtful for c in plain)
    assert plain[1].centroid_mm == pytest.approx((3.0, 3.0, 3.75))


def test_diagonal_neighbours_are_one_component_and_an_empty_mask_has_none():
    prob = np.zeros((6, 6, 6))
    prob[1, 1, 1] = prob[2, 2, 2] = 0.9  # corner-touching: 26-connected, as clean_mask
    assert len(lesion_components(prob, prob > 0.5, (1, 1, 1))) == 1
    assert lesion_components(prob, np.zeros_like(prob, bool), (1, 1, 1)) == []
    with pytest.raises(ValueError, match="differ in shape"):
        lesion_components(prob, np.zeros((6, 6), bool), (1, 1, 1))


def test_a_2d_mask_is_the_slice_k0_of_its_affine():
    prob = np.zeros((8, 8))
    prob[2:4, 4:6] = 0.9
    affine = np.diag([0.5, 0.5, 3.0, 1.0])
    affine[:3, 3] = [1.0, 2.0, 30.0]
    (c,) = lesion_components(prob, prob > 0.5, (0.5, 0.5), affine)
    assert c.centroid_mm == pytest.approx((1.0 + 2.5 * 0.5, 2.0 + 4.5 * 0.5, 30.0))
    assert c.volume_ml == pytest.approx(4 * 0.25 / 1000)


def test_near_mask_calibration_rescales_only_near_the_mask():
    """`LesionMaskRule.calibrated`: within 10 mm of the mask the logit is multiplied by
    `near_logit_scale`; farther voxels and exact zeros (outside the brain) are unchanged, every
    voxel stays on its side of 0.5 (same mask), and a scale of 1 returns the input."""
    from clinfuse.nn.lesion_mask import NEAR_MASK_MM, LesionMaskRule

    sp = (2.0, 2.0, 2.0)
    prob = np.full((40, 8, 8), 0.2, np.float32)
    prob[2:6, 2:6, 2:6] = 0.9
    prob[:, 0, 0] = 0.0  # outside the brain
    rule = LesionMaskRule(near_logit_scale=0.5)
    mask = rule.apply(prob, sp)
    out = rule.calibrated(prob, mask, sp)

    def expect(p: float) -> float:
        z = np.log(p / (1 - p)) * 0.5
        return float(1 / (1 + np.exp(-z)))

    assert out[3, 3, 3] == pytest.approx(expect(0.9), abs=1e-6)  # inside: softened
    assert out[6 + int(NEAR_MASK_MM / 2) - 1, 3, 3] == pytest.approx(expect(0.2), abs=1e-6)
    assert out[30, 3, 3] == pytest.approx(0.2)  # 25 voxels = 50 mm away: unchanged
    assert (out[:, 0, 0] == 0).all()
    assert np.array_equal(out >= 0.5, prob >= 0.5)
    assert np.array_equal(rule.apply(out, sp), mask)
    assert LesionMaskRule().calibrated(prob, mask, sp) is prob
    assert rule.calibrated(prob, np.zeros_like(mask), sp) is prob  # no mask: nothing near
    assert "logit x 0.500" in rule.describe() and "logit" not in LesionMaskRule().describe()
    with pytest.raises(ValueError, match="near_logit_scale"):
        LesionMaskRule(near_logit_scale=0.0)
    with pytest.raises(ValueError, match="shape"):
        rule.calibrated(prob, mask[:10], sp)
