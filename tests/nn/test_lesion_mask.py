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
