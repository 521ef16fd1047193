"""The banded-matrix Gaussian filter of losses/ssim.py equals the depthwise-convolution one
(values and gradients), in 2D and 3D, for short axes (reflection of almost the whole axis) and
for axes above MATMUL_MAX_AXIS (convolution fallback)."""

from __future__ import annotations

import pytest
import torch

from clinfuse.losses import ssim
from clinfuse.losses.ssim import _filter_axis, _filter_axis_conv, gaussian_kernel1d


@pytest.mark.parametrize("shape", [(2, 3, 6, 17, 9), (1, 5, 12, 7, 30), (2, 2, 13, 6)])
def test_matrix_filter_equals_convolution(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    k = gaussian_kernel1d(1.5, 11, torch.float64, torch.device("cpu"))
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    for axis in range(2, len(shape)):
        a = _filter_axis(x, k, axis)
        b = _filter_axis_conv(x, k, axis)
        assert torch.allclose(a, b, atol=1e-12)
        (ga,) = torch.autograd.grad((a * w).sum(), x)
        (gb,) = torch.autograd.grad((b * w).sum(), x)
        assert torch.allclose(ga, gb, atol=1e-12)


def test_long_axis_uses_convolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssim, "MATMUL_MAX_AXIS", 8)
    k = gaussian_kernel1d(1.5, 11, torch.float64, torch.device("cpu"))
    x = torch.randn(1, 1, 20, 7, 9, dtype=torch.float64)
    for axis in (2, 3, 4):
        assert torch.allclose(_filter_axis(x, k, axis), _filter_axis_conv(x, k, axis), atol=1e-12)


@pytest.mark.parametrize("spatial", [(14, 17, 12), (20, 23)])
def test_prepared_masked_ssim_equals_masked_ssim(spatial: tuple[int, ...]) -> None:
    from clinfuse.losses.ssim import MaskedSSIM, masked_ssim

    g = torch.Generator().manual_seed(1)
    y = torch.rand(1, 1, *spatial, generator=g, dtype=torch.float64) * 4 - 2
    mask = torch.zeros(1, 1, *spatial, dtype=torch.bool)
    mask[(0, 0, *(slice(2, s - 3) for s in spatial))] = True
    x = (torch.rand(2, 1, *spatial, generator=g, dtype=torch.float64) * 4 - 2).requires_grad_()
    want = masked_ssim(x, y.expand_as(x), mask, reduction="none")
    got = MaskedSSIM(y, mask)(x)
    assert torch.allclose(got, want, atol=1e-12)
    (gw,) = torch.autograd.grad(want.sum(), x)
    (gg,) = torch.autograd.grad(got.sum(), x)
    assert torch.allclose(gg, gw, atol=1e-12)
    assert float(gg[~mask.expand_as(gg)].abs().max()) == 0.0  # only ROI voxels move


def test_prepared_masked_ssim_empty_mask_is_nan() -> None:
    from clinfuse.losses.ssim import MaskedSSIM

    y = torch.zeros(1, 1, 12, 12, 12)
    out = MaskedSSIM(y, torch.zeros_like(y, dtype=torch.bool))(torch.zeros(2, 1, 12, 12, 12))
    assert out.shape == (2,) and bool(torch.isnan(out).all())


def test_roi_loss_with_prepared_terms_equals_plain() -> None:
    from types import SimpleNamespace

    from clinfuse.losses.roi import prepare_ssim_terms, roi_loss

    g = torch.Generator().manual_seed(2)
    shape = (2, 1, 14, 16, 12)
    mri = (torch.rand(1, 1, *shape[2:], generator=g, dtype=torch.float64) * 4 - 2).expand(shape)
    ct = (torch.rand(1, 1, *shape[2:], generator=g, dtype=torch.float64) * 4 - 2).expand(shape)
    brain = torch.zeros(1, 1, *shape[2:], dtype=torch.bool)
    brain[..., 4:10, 4:12, 3:9] = True
    bone = torch.zeros_like(brain)
    bone[..., 2:12, 2:14, 1:3] = True
    cfg = SimpleNamespace(alpha=1.0, beta=1.2, gamma=0.0, voxel_scaled=True, tau_mm=2.0)
    x = (torch.rand(shape, generator=g, dtype=torch.float64) * 4 - 2).requires_grad_()
    args = (x, mri, ct, brain, bone, None, None, (2.0, 2.0, 2.0), cfg)
    plain = roi_loss(*args)
    fast = roi_loss(*args, ssim=prepare_ssim_terms(mri, ct, brain, bone))
    assert torch.allclose(plain.total, fast.total, atol=1e-9)
    assert abs(plain.brain - fast.brain) < 1e-12 and abs(plain.bone - fast.bone) < 1e-12
    (ga,) = torch.autograd.grad(plain.total, x)
    (gb,) = torch.autograd.grad(fast.total, x)
    assert torch.allclose(ga, gb, atol=1e-9)
