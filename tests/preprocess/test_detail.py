"""Native-resolution detail restored from each ROI's source (`preprocess.detail`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from clinfuse.metrics.roi import roi_ssim
from clinfuse.phantom import PhantomConfig, generate_phantom
from clinfuse.preprocess.detail import (
    interior_weight,
    outside_detail,
    restore_detail,
    round_trip,
)
from clinfuse.preprocess.pipeline import preprocess_case
from clinfuse.preprocess.resample import resample_to_grid


def test_detail_brings_back_what_the_working_grid_lost():
    case = generate_phantom(PhantomConfig(shape=(48, 48, 32), spacing=(1.5, 1.5, 1.5)), 0).case
    native = preprocess_case(case)
    work = preprocess_case(case, spacing=3.0)
    # "Fused" on the working grid = the source each ROI follows (the ideal guided result),
    # taken to the working grid the way the pipeline resamples.
    ideal = np.where(native.bone, native.ct_bone, native.mri).astype(np.float32)
    fused_w = resample_to_grid(ideal, native.affine, work.shape, work.affine, default=-2.0)
    up = resample_to_grid(fused_w, work.affine, native.shape, native.affine, default=-2.0)
    out = restore_detail(up, native, work.shape, work.affine)
    assert out.shape == native.shape and out.min() >= -2.0 and out.max() <= 2.0
    inner_bone = ndimage.binary_erosion(native.bone)
    inner_brain = ndimage.binary_erosion(native.brain, iterations=2)
    # Inside each ROI the restored image is its source, up to the round trip's border error.
    before = roi_ssim(up, native.mri, inner_brain), roi_ssim(up, native.ct_bone, native.bone)
    after = roi_ssim(out, native.mri, inner_brain), roi_ssim(out, native.ct_bone, native.bone)
    assert after[0] > before[0] and after[1] > before[1]
    assert after[0] > 0.99
    np.testing.assert_allclose(out[inner_bone], native.ct_bone[inner_bone], atol=0.35)
    # the model's own deviation is kept deep inside an ROI
    w = interior_weight(native.brain, (1.5, 1.5, 1.5), 3.0)
    assert w.max() == 1.0 and w[~native.brain].max() == 0.0
    # Without `outside`, nothing changes outside the ROIs.
    outside = ~(native.brain | native.bone)
    roi_only = restore_detail(up, native, work.shape, work.affine, outside=False)
    np.testing.assert_array_equal(roi_only[outside], np.clip(up[outside], -2, 2))
    np.testing.assert_array_equal(roi_only[~outside], out[~outside])
    # With it (the default), outside the ROIs the fused image (the MRI there) gets the MRI's
    # lost band back: the error against the native MRI shrinks, where the MRI has structure.
    err_up = np.abs(up - native.mri)[outside]
    err_out = np.abs(out - native.mri)[outside]
    assert err_out.mean() < 0.7 * err_up.mean()


def test_outside_detail_follows_the_locally_fitted_source_mix():
    # Fused = 0.5 * a + 0.25 * b at the working resolution: the transfer adds the same mix of
    # the sources' lost bands; a source the fused image does not follow contributes nothing.
    rng = np.random.default_rng(0)
    shape = (24, 24, 24)
    a, b, c = (
        ndimage.gaussian_filter(rng.normal(size=shape), 1.0).astype(np.float32) for _ in "abc"
    )
    lows = [ndimage.gaussian_filter(x, 2.0) for x in (a, b, c)]
    fused_low = 0.5 * lows[0] + 0.25 * lows[1]
    band = outside_detail(fused_low, [a, b, c], lows, (1.0, 1.0, 1.0), 3.0, eps=1e-6)
    want = 0.5 * (a - lows[0]) + 0.25 * (b - lows[1])
    inner = (slice(4, -4),) * 3
    np.testing.assert_allclose(band[inner], want[inner], atol=0.05 * np.abs(want).max())
    # Flat sources (variance far below eps): nothing is added.
    flat = [np.full(shape, 0.3, np.float32)] * 3
    assert np.abs(outside_detail(fused_low, flat, flat, (1.0,) * 3, 3.0)).max() == 0.0


def test_same_grid_adds_nothing():
    case = generate_phantom(PhantomConfig(shape=(32, 32, 24), spacing=(2.0, 2.0, 2.0)), 1).case
    p = preprocess_case(case)
    rt = round_trip(p.mri, p.affine, p.shape, p.affine)
    np.testing.assert_allclose(rt, p.mri, atol=1e-4)
