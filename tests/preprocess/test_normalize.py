import numpy as np
import pytest

from clinfuse.errors import ClinfuseInputError
from clinfuse.preprocess.normalize import denormalise_mri, head_foreground, normalise_mri


def test_hand_computed_mapping_with_mask():
    x = np.array([0.0, 50.0, 100.0, 200.0, 400.0], np.float32)
    mask = np.array([False, True, True, True, False])
    y, p = normalise_mri(x, mask)
    # 99.5th percentile of [50, 100, 200] (linear interpolation) = 100 + 0.99 * 100 = 199
    assert p["scale"] == pytest.approx(199.0)
    np.testing.assert_allclose(y, [-2.0, 50 / 199 * 4 - 2, 100 / 199 * 4 - 2, 2.0, 2.0], atol=1e-6)
    back = denormalise_mri(y, p)
    np.testing.assert_allclose(back[:3], x[:3], rtol=1e-5)
    assert back[4] == pytest.approx(199.0)  # clipped values come back at the robust maximum


def test_otsu_foreground_ignores_air_and_hot_voxels():
    rng = np.random.default_rng(0)
    x = np.zeros((40, 40, 40), np.float32)
    x[:20] = 100.0
    x[:20] += rng.normal(0, 1, size=(20, 40, 40)).astype(np.float32)
    x[20:] += np.abs(rng.normal(0, 2, size=(20, 40, 40))).astype(np.float32)  # noisy air
    x[0, 0, :10] = 5000.0  # a few hot voxels: 0.03 % of the head
    fg = head_foreground(x)
    assert fg[:20].mean() > 0.99 and fg[20:].mean() < 0.01
    y, p = normalise_mri(x)
    assert p["foreground"] == "otsu" and 100 < p["scale"] < 104
    assert y.dtype == np.float32 and y.min() >= -2 and y.max() <= 2
    assert abs(float(np.median(y[:20])) - (100 / p["scale"] * 4 - 2)) < 0.05


def test_empty_mri_is_a_user_error():
    with pytest.raises(ClinfuseInputError, match="no positive"):
        normalise_mri(np.zeros((4, 4), np.float32))
