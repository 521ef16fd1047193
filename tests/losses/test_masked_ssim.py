"""masked_ssim / ssim_map against scikit-image's SSIM (the peer oracle), 2D and 3D."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from clinfuse.losses.ssim import masked_ssim, ssim_map


def _pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-2, 2, shape)
    b = np.clip(0.7 * a + rng.normal(0, 0.6, shape), -2, 2)
    return a, b


def _skimage_map(a, b, data_range=4.0):
    _, full = structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=data_range,
        full=True,
    )
    return full


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))[None, None]


@pytest.mark.parametrize("shape", [(24, 30), (14, 16, 18)])
def test_full_map_matches_skimage_including_borders(shape):
    a, b = _pair(shape)
    ours = ssim_map(_t(a), _t(b))[0, 0].numpy()
    np.testing.assert_allclose(ours, _skimage_map(a, b), atol=1e-10)
    # float32 (the training dtype) stays within the 1e-4 tolerance of METRICS.md
    ours32 = ssim_map(_t(a).float(), _t(b).float())[0, 0].numpy()
    np.testing.assert_allclose(ours32, _skimage_map(a, b), atol=1e-4)


def test_data_range_is_passed_to_the_constants():
    a, b = _pair((20, 20), seed=1)
    ours = ssim_map(_t(a), _t(b), data_range=1.0)[0, 0].numpy()
    np.testing.assert_allclose(ours, _skimage_map(a, b, data_range=1.0), atol=1e-10)


@pytest.mark.parametrize("shape", [(24, 30), (14, 16, 18)])
def test_masked_mean_is_skimage_map_averaged_in_mask(shape):
    a, b = _pair(shape, seed=2)
    mask = np.zeros(shape, dtype=bool)
    mask[(slice(3, 11),) * len(shape)] = True  # touches no border; windows see outside context
    mask[(slice(0, 2),) * len(shape)] = True  # and a corner piece: border by reflection
    expected = _skimage_map(a, b)[mask].mean()
    for m in (torch.from_numpy(mask), _t(mask), _t(mask).expand(1, 1, *shape)):
        got = masked_ssim(_t(a), _t(b), m, low=None, mask_inputs=False)
        assert got.shape == ()
        assert float(got) == pytest.approx(expected, abs=1e-10)
    # The ROI-SSIM convention: shift to [0, 4], mask, then average the map in the mask.
    expected_roi = _skimage_map((a + 2) * mask, (b + 2) * mask)[mask].mean()
    assert float(masked_ssim(_t(a), _t(b), _t(mask))) == pytest.approx(expected_roi, abs=1e-10)


def test_identical_inside_the_roi_scores_one():
    a, b = _pair((24, 30), seed=3)
    mask = np.zeros((24, 30), dtype=bool)
    mask[5:15, 6:20] = True
    c = np.where(mask, a, b)  # equals a inside the ROI, anything outside
    assert float(masked_ssim(_t(c), _t(a), _t(mask))) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("shape", [(40, 36), (24, 22, 20)])
def test_small_roi_crop_is_exact_in_value_and_gradient(shape):
    # masked_ssim crops to the ROI's box grown by the window radius; compare with the plain
    # full-image formula, for an interior ROI and one touching the image border.
    a, b = _pair(shape, seed=7)
    for sl in [(slice(9, 13),) * len(shape), (slice(0, 3),) + (slice(5, 9),) * (len(shape) - 1)]:
        mask = torch.zeros(shape, dtype=torch.float64)
        mask[sl] = 1.0
        x1 = _t(a).clone().requires_grad_(True)
        x2 = _t(a).clone().requires_grad_(True)
        got = masked_ssim(x1, _t(b), mask, low=None, mask_inputs=False)
        full = (ssim_map(x2, _t(b))[0, 0] * mask).sum() / mask.sum()
        got.backward()
        full.backward()
        assert float(got.detach()) == pytest.approx(float(full.detach()), abs=1e-12)
        torch.testing.assert_close(x1.grad, x2.grad, atol=1e-12, rtol=0)
        assert float(got.detach()) == pytest.approx(_skimage_map(a, b)[mask.bool().numpy()].mean())


def test_batch_and_channels_per_item_means():
    a, b = _pair((2, 3, 16, 16), seed=3)
    x, y = torch.from_numpy(a), torch.from_numpy(b)
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    mask[0, 0, :8] = True
    mask[1, 0, 4:] = True
    per_item = masked_ssim(x, y, mask, reduction="none")
    assert per_item.shape == (2,)
    for i in range(2):
        mi = mask[i, 0].numpy()
        maps = [_skimage_map((a[i, c] + 2) * mi, (b[i, c] + 2) * mi) for c in range(3)]
        m = mask[i, 0].numpy()
        expected = np.mean([mp[m] for mp in maps])
        assert float(per_item[i]) == pytest.approx(expected, abs=1e-10)
    assert float(masked_ssim(x, y, mask)) == pytest.approx(float(per_item.mean()), abs=1e-12)


def test_half_precision_and_autocast_compute_in_float32():
    a, b = _pair((24, 24), seed=8)
    mask = torch.ones(24, 24, dtype=torch.bool)
    ref = float(masked_ssim(_t(a).float(), _t(b).float(), mask))
    got = masked_ssim(_t(a).bfloat16(), _t(b).bfloat16(), mask)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(ref, abs=2e-2)  # only the bf16 rounding of the inputs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = masked_ssim(_t(a).float(), _t(b).float(), mask)
    assert float(inside) == pytest.approx(ref, abs=1e-6)


def test_identical_images_give_one():
    a, _ = _pair((12, 12, 12), seed=4)
    v = masked_ssim(_t(a), _t(a), torch.ones(12, 12, 12, dtype=torch.bool))
    assert float(v) == pytest.approx(1.0, abs=1e-12)


def test_gradient_is_finite_and_ascent_improves_ssim():
    a, b = _pair((20, 20), seed=5)
    x = _t(a).clone().requires_grad_(True)
    mask = torch.zeros(20, 20, dtype=torch.bool)
    mask[5:15, 5:15] = True
    v = masked_ssim(x, _t(b), mask)
    v.backward()
    v = v.detach()
    g = x.grad
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    with torch.no_grad():
        v2 = masked_ssim(x + 0.5 * g / g.abs().max(), _t(b), mask)
    assert float(v2) > float(v)


@pytest.mark.parametrize("shape", [(5, 6), (3, 4, 3)])
def test_gradcheck_small(shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, *shape, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 1, *shape, generator=gen, dtype=torch.float64)
    m = torch.rand(*shape, generator=gen, dtype=torch.float64) > 0.5
    assert torch.autograd.gradcheck(
        lambda t: masked_ssim(t, y, m, win_size=3), (x,), fast_mode=True
    )


def test_empty_mask_is_nan_with_finite_gradient():
    a, b = _pair((2, 1, 16, 16), seed=6)
    x = torch.from_numpy(a).requires_grad_(True)
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    mask[1, 0, 2:10, 2:10] = True
    per_item = masked_ssim(x, torch.from_numpy(b), mask, reduction="none")
    per_item = per_item.detach()
    assert math.isnan(float(per_item[0])) and not math.isnan(float(per_item[1]))
    mean = masked_ssim(x, torch.from_numpy(b), mask)  # skips the empty item
    assert float(mean.detach()) == pytest.approx(float(per_item[1]))
    mean.backward()
    assert torch.isfinite(x.grad).all()
    assert float(x.grad[0].abs().sum()) == 0.0
    all_empty = masked_ssim(x, torch.from_numpy(b), torch.zeros(16, 16, dtype=torch.bool))
    assert math.isnan(float(all_empty.detach()))


def test_bad_shapes_raise():
    x = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError):
        masked_ssim(x, torch.zeros(1, 1, 16, 15), torch.ones(16, 16))
    with pytest.raises(ValueError):
        masked_ssim(x, x, torch.ones(15, 16))
    with pytest.raises(ValueError):
        masked_ssim(torch.zeros(1, 1, 4, 16), torch.zeros(1, 1, 4, 16), torch.ones(4, 16))


def test_head_sized_volume_runs_with_gradient():
    # 96x112x96 (a 2 mm head): the separable shift-and-add filter keeps memory small.
    gen = torch.Generator().manual_seed(1)
    y = torch.rand(1, 1, 96, 112, 96, generator=gen) * 4 - 2
    x = y.clone().requires_grad_(True)
    v = masked_ssim(x, y, y > 0)
    v.backward()
    assert float(v.detach()) == pytest.approx(1.0, abs=1e-5)
    assert torch.isfinite(x.grad).all()
