"""Registration jitter: configured distribution, spacing-aware motion, off when disabled."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, stats

from clinfuse.training.config import JitterConfig
from clinfuse.training.jitter import JitterParams, apply_jitter, sample_jitter


def test_applied_fraction_and_uniform_bounds():
    cfg = JitterConfig(enabled=True, p=0.5, max_translation_mm=2.0, max_rotation_deg=2.0)
    rng = np.random.default_rng(3)
    draws = [sample_jitter(rng, cfg, (1.0, 2.0, 3.0)) for _ in range(4000)]
    applied = [d for d in draws if d.applied]
    # Binomial(4000, 0.5): sd = 31.6, so ±5 sd is ±158.
    assert abs(len(applied) - 2000) < 158
    t = np.array([d.translation_mm for d in applied])
    r = np.array([d.rotation_deg for d in applied])
    assert t.shape[1] == 3 and r.shape[1] == 3
    assert np.abs(t).max() <= 2.0 and np.abs(r).max() <= 2.0
    # Uniform on [-2, 2] per axis (Kolmogorov-Smirnov), and the tails are reached.
    for col in (*t.T, *r.T):
        assert stats.kstest(col, stats.uniform(loc=-2, scale=4).cdf).pvalue > 1e-3
        assert col.max() > 1.9 and col.min() < -1.9
        assert np.var(col) == pytest.approx(16 / 12, rel=0.1)  # variance of U(-2, 2)
    skipped = [d for d in draws if not d.applied]
    assert all(d.translation_mm == (0.0, 0.0, 0.0) for d in skipped)


def test_disabled_and_p_zero_never_apply():
    rng = np.random.default_rng(1)
    for cfg in (JitterConfig(enabled=False, p=1.0), JitterConfig(enabled=True, p=0.0)):
        assert not any(sample_jitter(rng, cfg, (1.0, 1.0)).applied for _ in range(200))


def test_draw_count_does_not_depend_on_the_outcome():
    # Same generator state after a draw whether or not it applied: later samples do not shift.
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    sample_jitter(a, JitterConfig(p=0.0), (1.0, 1.0, 1.0))
    sample_jitter(b, JitterConfig(p=1.0), (1.0, 1.0, 1.0))
    assert a.random() == b.random()


def test_translation_in_mm_on_an_anisotropic_grid():
    spacing = (1.0, 2.0, 4.0)
    img = np.full((24, 24, 24), -2.0, np.float32)
    img[8:12, 8:12, 8:12] = 1.0
    mask = img > 0
    params = JitterParams(True, (3.0, 4.0, -8.0), (0.0, 0.0, 0.0))
    out = apply_jitter({"img": img, "mask": mask}, params, spacing)
    # 3 mm / 1 mm = 3 voxels, 4 / 2 = 2 voxels, -8 / 4 = -2 voxels.
    expected = np.roll(mask, (3, 2, -2), axis=(0, 1, 2))
    assert out["mask"].dtype == bool
    np.testing.assert_array_equal(out["mask"], expected)
    com_in = np.array(ndimage.center_of_mass(img > 0))
    com_out = np.array(ndimage.center_of_mass(out["img"] > 0))
    np.testing.assert_allclose(com_out - com_in, [3, 2, -2], atol=1e-6)
    assert img[9, 9, 9] == 1.0  # input untouched


def test_rotation_is_about_the_centre_in_physical_space():
    # 2D, anisotropic: a blob 20 mm right of the centre along axis 0, rotated by 90 degrees,
    # must end 20 mm along axis 1 (= 10 voxels at 2 mm), not 20 voxels.
    spacing = (1.0, 2.0)
    img = np.zeros((61, 61), np.float32) - 2
    c = 30
    img[c + 20 - 1 : c + 20 + 2, c - 1 : c + 2] = 1.0
    out = apply_jitter({"img": img}, JitterParams(True, (0.0, 0.0), (90.0,)), spacing)["img"]
    com = np.array(ndimage.center_of_mass(out > 0))
    np.testing.assert_allclose(com, [c, c + 10], atol=0.6)


def test_small_rotation_moves_off_centre_point_by_arc_length():
    spacing = (2.0, 2.0, 2.0)
    img = np.zeros((33, 33, 33), bool)
    img[16 + 10, 16, 16] = True  # 20 mm from the centre along axis 0
    params = JitterParams(True, (0.0, 0.0, 0.0), (0.0, 0.0, 2.0))  # 2 degrees about axis 2
    blob = ndimage.binary_dilation(img, iterations=2).astype(np.float32) * 3 - 2
    out = apply_jitter({"b": blob}, params, spacing)["b"]
    com_in = np.array(ndimage.center_of_mass(blob > 0)) - 16
    com_out = np.array(ndimage.center_of_mass(np.clip(out + 2, 0, None))) - 16
    moved_mm = np.linalg.norm(com_out - com_in) * 2.0
    assert moved_mm == pytest.approx(20.0 * np.deg2rad(2.0), rel=0.1)  # ≈ 0.70 mm


def test_identity_when_not_applied():
    img = np.random.default_rng(0).standard_normal((8, 9)).astype(np.float32)
    out = apply_jitter({"img": img}, JitterParams(False, (0.0, 0.0), (0.0,)), (1.0, 1.0))
    np.testing.assert_array_equal(out["img"], img)
