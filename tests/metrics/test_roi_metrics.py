"""ROI-SSIM (vs scikit-image's map) and ROI-PSNR (hand values), empty ROIs and bad input."""

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from clinfuse.errors import ClinfuseInputError
from clinfuse.metrics.roi import roi_psnr, roi_scores, roi_ssim, structural_roi_ssim


@pytest.mark.parametrize("shape", [(32, 28), (16, 18, 14)])
def test_roi_ssim_is_skimage_map_mean_in_roi(shape):
    rng = np.random.default_rng(0)
    ref = rng.uniform(-2, 2, shape)
    fused = np.clip(ref + rng.normal(0, 0.4, shape), -2, 2).astype(np.float32)
    mask = rng.random(shape) > 0.6
    # ROI-SSIM convention: shift to [0, 4] and mask both images, average the map in the ROI.
    _, full = structural_similarity(
        (fused.astype(np.float64) + 2) * mask,
        (ref + 2) * mask,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=4.0,
        full=True,
    )
    assert roi_ssim(fused, ref, mask) == pytest.approx(full[mask].mean(), abs=1e-6)


def test_roi_psnr_hand_value_uses_roi_voxels_only():
    ref = np.zeros((4, 4))
    fused = np.zeros((4, 4))
    fused[0, :2] = 1.0  # error 1 on two ROI voxels
    fused[3, 3] = 100.0  # outside the ROI: ignored
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2] = True  # 8 voxels, MSE = 2/8
    assert roi_psnr(fused, ref, mask) == pytest.approx(10 * math.log10(16 / 0.25))
    assert roi_psnr(fused, ref, mask, data_range=1.0) == pytest.approx(10 * math.log10(4.0))
    assert roi_psnr(ref, ref, mask) == math.inf


def test_empty_roi_is_nan_with_warning():
    a = np.zeros((12, 12))
    empty = np.zeros((12, 12), dtype=bool)
    with pytest.warns(RuntimeWarning):
        assert math.isnan(roi_ssim(a, a, empty))
    with pytest.warns(RuntimeWarning):
        assert math.isnan(roi_psnr(a, a, empty))


def test_bad_input_raises():
    a = np.zeros((12, 12))
    m = np.ones((12, 12), dtype=bool)
    with pytest.raises(ClinfuseInputError):
        roi_ssim(a, np.zeros((12, 13)), m)
    with pytest.raises(ClinfuseInputError):
        roi_psnr(a, a, np.ones((12, 11), dtype=bool))
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ClinfuseInputError):
        roi_ssim(bad, a, m)


def test_structural_roi_ssim_is_scale_free_and_matches_skimage():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(24, 20, 18))
    mask = np.zeros(ref.shape, bool)
    mask[5:18, 4:15, 3:14] = True
    other = ref + rng.normal(scale=0.5, size=ref.shape)
    for variant in ("masked", "whole"):
        # Scale and offset inside the ROI do not matter; identical structure scores 1.
        assert structural_roi_ssim(3.0 * ref + 1.0, ref, mask, variant) == pytest.approx(1.0)

    # Hand-made reference: z-score inside the ROI, zero outside, skimage's Gaussian SSIM map.
    def z(x):
        return (x - x[mask].mean()) / x[mask].std()

    for variant in ("masked", "whole"):
        zf, zr = z(other), z(ref)
        if variant == "masked":
            zf, zr = zf * mask, zr * mask
        span = float(z(ref)[mask].max() - z(ref)[mask].min())
        _, smap = structural_similarity(
            zf, zr, data_range=span, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, full=True,
        )  # fmt: skip
        expected = float(smap[mask].mean())
        assert structural_roi_ssim(other, ref, mask, variant) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError):
        structural_roi_ssim(other, ref, mask, "full")  # type: ignore[arg-type]


def test_roi_scores_keys_and_values_match_the_single_scores():
    rng = np.random.default_rng(0)
    mri, ct = rng.random((2, 24, 24, 16)).astype(np.float32)
    brain = np.zeros(mri.shape, bool)
    brain[6:18, 6:18, 4:12] = True
    bone = np.zeros(mri.shape, bool)
    bone[2:4, :, :] = True
    fused = np.where(bone, ct, mri).astype(np.float32)
    out = roi_scores(fused, mri, ct, brain, bone, prefix="n_")
    assert set(out) == {
        f"n_{r}_{s}" for r in ("brain", "bone") for s in ("ssim", "s_masked", "s_whole")
    }
    assert out["n_brain_ssim"] == pytest.approx(roi_ssim(fused, mri, brain))
    assert out["n_bone_s_masked"] == pytest.approx(structural_roi_ssim(fused, ct, bone, "masked"))
    assert out["n_brain_s_masked"] == pytest.approx(1.0, abs=1e-5)  # the composite is the MRI there
