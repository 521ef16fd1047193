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
