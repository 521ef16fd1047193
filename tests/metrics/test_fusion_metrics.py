"""The eight standard fusion metrics pinned on tiny hand-computed cases, plus a sanity check of
the average fusion of two Harvard MRI-CT pairs against the published ballpark."""

import math
from pathlib import Path

import numpy as np
import pytest

from clinfuse.errors import ClinfuseInputError
from clinfuse.metrics.fusion import (
    METRIC_NAMES,
    entropy,
    fusion_metrics,
    gaussian_window_1d,
    mutual_information,
    qabf,
    scd,
    spatial_frequency,
    ssim_sum,
    standard_deviation,
    to_uint8,
    vif,
)

HARVARD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "harvard_mri_ct"

HALVES = np.repeat(np.array([[0, 0, 255, 255]]), 4, axis=0)  # left half 0, right half 255
ZERO = np.zeros((4, 4))


def _texture(seed, shape=(64, 64)):
    # smooth deterministic texture with even grey values (so A/2 is exact)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 128, size=shape)
    return (2 * x).astype(np.uint8)


def test_to_uint8_min_max_and_round():
    np.testing.assert_array_equal(to_uint8(np.array([-2.0, 0.0, 2.0])), [0, 128, 255])
    np.testing.assert_array_equal(to_uint8(np.full((2, 2), 7.0)), np.zeros((2, 2)))
    with pytest.raises(ClinfuseInputError):
        to_uint8(np.array([0.0, np.nan]))


def test_entropy_sd_sf_hand_values():
    assert entropy(HALVES) == pytest.approx(1.0)
    quarters = np.repeat(np.array([[0, 85, 170, 255]]), 4, axis=0)
    assert entropy(quarters) == pytest.approx(2.0)
    assert standard_deviation(HALVES) == pytest.approx(127.5)
    ramp = np.add.outer(2 * np.arange(4), np.arange(4))  # dx = 1, dy = 2
    assert spatial_frequency(ramp) == pytest.approx(math.sqrt(5))


def test_mutual_information_natural_log():
    rows = HALVES.T  # top half 0, bottom half 255: independent of HALVES
    # MI(F, A) = 0 (independent), MI(F, B) = H(F) = ln 2 (B = F)
    assert mutual_information(rows, HALVES, HALVES) == pytest.approx(math.log(2))
    assert mutual_information(HALVES, ZERO, HALVES) == pytest.approx(math.log(2))


def test_mutual_information_equals_entropy_identity():
    # oracle: MI(X, Y) = H(X) + H(Y) - H(X, Y), entropies by scipy (natural log)
    from scipy.stats import entropy as h

    a, b = _texture(10, (32, 32)), _texture(11, (32, 32))
    f = a // 2 + b // 4

    def mi(x, y):
        joint = np.histogram2d(x.ravel(), y.ravel(), bins=256, range=[[0, 256], [0, 256]])[0]
        return h(joint.sum(1)) + h(joint.sum(0)) - h(joint.ravel())

    assert mutual_information(a, b, f) == pytest.approx(mi(f, a) + mi(f, b), abs=1e-10)


def test_scd_of_the_sum_is_two():
    a, b = _texture(0) // 2, _texture(1) // 2
    assert scd(a, b, a + b) == pytest.approx(2.0)


def test_vif_identity_and_shift():
    a, b = _texture(2), _texture(3)
    # VIF(A, A) = 1: unit gain, no residual noise; a constant shift changes nothing either.
    assert vif(a, a, a) == pytest.approx(2.0, abs=1e-9)
    shifted = a.astype(np.int64) // 2 + 10
    assert vif(shifted, shifted, shifted) == pytest.approx(2.0, abs=1e-9)
    # a flat reference scores 1 (published evaluator's convention)
    assert vif(np.full((64, 64), 9), a, a) == pytest.approx(1.0 + 1.0, abs=1e-9)
    assert 0 < vif(a, b, a // 2 + b // 2) < 2


def test_vif_window_is_matlab_fspecial():
    for n in (17, 9, 5, 3):
        w = gaussian_window_1d(n, n / 5)
        r = (n - 1) / 2
        y, x = np.mgrid[-r : r + 1, -r : r + 1]
        h = np.exp(-(x * x + y * y) / (2 * (n / 5) ** 2))
        np.testing.assert_allclose(np.outer(w, w), h / h.sum(), atol=1e-15)


def test_qabf_hand_values():
    a = _texture(4)
    q_a1 = 0.9879 / (1 + math.exp(-22 * (1 - 0.8)))  # same orientation
    # F = A, B flat: every edge kept at full strength
    assert qabf(a, np.zeros_like(a), a) == pytest.approx(0.9994 / (1 + math.exp(-7.5)) * q_a1)
    # F = A / 2: orientation kept, strength ratio 1/2, Q_g = 0.9994 / 2
    assert qabf(a, np.zeros_like(a), a // 2) == pytest.approx(0.9994 / 2 * q_a1)
    assert qabf(ZERO, ZERO, HALVES) == 0.0


def test_ssim_data_range_two_hand_value():
    ones, zeros = np.ones((8, 8)), np.zeros((8, 8))
    # constant images: SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), C1 = (0.01 * 2)^2
    c1 = (0.01 * 2) ** 2
    assert ssim_sum(ones, zeros, zeros) == pytest.approx(c1 / (1 + c1) + 1.0)
    a = _texture(5)
    assert ssim_sum(a, a, a) == pytest.approx(2.0)


def test_fusion_metrics_keys_and_float_input_is_rescaled():
    a, b = _texture(6), _texture(7)
    a[0, 0], a[0, 1] = 0, 254
    got = fusion_metrics(a, b, a)
    assert tuple(got) == METRIC_NAMES == ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")
    # a float fused image is min-max scaled to 0..255 and rounded before scoring
    float_f = a.astype(np.float64) / 254 * 4 - 2
    expected = fusion_metrics(a, b, to_uint8(float_f))
    assert fusion_metrics(a, b, float_f) == pytest.approx(expected)


def test_bad_inputs():
    a = _texture(8, (16, 16))
    with pytest.raises(ClinfuseInputError):
        fusion_metrics(a, a[:, :8], a)
    with pytest.raises(ClinfuseInputError):
        fusion_metrics(a.astype(float) + 0.5, a, a)
    with pytest.raises(ClinfuseInputError):
        fusion_metrics(a[None], a[None], a[None])


@pytest.mark.skipif(not HARVARD.is_dir(), reason="shared Harvard data not available")
def test_average_fusion_on_harvard_pairs_is_in_the_published_ballpark():
    from PIL import Image

    rows = []
    for idx in (25, 45):  # case 16 and case 21, the CDDFuse test cases
        a = np.array(Image.open(HARVARD / "mri" / f"{idx:03d}.png"))
        b = np.array(Image.open(HARVARD / "ct" / f"{idx:03d}.png"))
        rows.append(fusion_metrics(a, b, (a.astype(np.float64) + b) / 2))
    mean = {k: float(np.mean([r[k] for r in rows])) for k in METRIC_NAMES}
    assert 3.8 <= mean["EN"] <= 5.0
    assert 50 <= mean["SD"] <= 80
    assert 0.3 <= mean["Qabf"] <= 0.7
    assert 1.0 <= mean["SSIM"] <= 1.6
    assert 0.3 <= mean["VIF"] <= 0.8
