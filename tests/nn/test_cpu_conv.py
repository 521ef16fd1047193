"""OneDNNConv3d: identical results and gradients to nn.Conv3d, and the fallbacks."""

from __future__ import annotations

import torch
from torch import nn

from clinfuse.nn.cpu_conv import OneDNNConv3d, use_onednn_conv3d


def _pair(**kw: object) -> tuple[nn.Conv3d, nn.Conv3d]:
    ref = nn.Conv3d(4, 8, 3, **kw)  # type: ignore[arg-type]
    fast = nn.Conv3d(4, 8, 3, **kw)  # type: ignore[arg-type]
    fast.load_state_dict(ref.state_dict())
    assert use_onednn_conv3d(fast) == 1 and type(fast) is OneDNNConv3d
    return ref, fast


def test_same_output_and_gradients_as_conv3d() -> None:
    g = torch.Generator().manual_seed(0)
    for kw in ({"padding": 1}, {"padding": 1, "stride": 2}, {"padding": 0, "bias": False}):
        ref, fast = _pair(**kw)
        x = torch.randn((1, 4, 9, 10, 7), generator=g)  # small batch-1 input: the slow path
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ref(xa), fast(xb)
        torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
        ya.square().sum().backward()
        yb.square().sum().backward()
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)


def test_fallbacks_and_state_dict_unchanged() -> None:
    ref, fast = _pair(padding=1)
    assert ref.state_dict().keys() == fast.state_dict().keys()
    x = torch.randn(1, 4, 6, 6, 6, dtype=torch.float64)
    # float64 is not handled by oneDNN: falls back to nn.Conv3d
    torch.testing.assert_close(fast.double()(x), ref.double()(x))
    circ = nn.Conv3d(4, 4, 3, padding=1, padding_mode="circular")
    use_onednn_conv3d(circ)
    assert not circ._fast_ok(torch.zeros(1, 4, 4, 4, 4))  # type: ignore[operator]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fast._fast_ok(torch.zeros(1, 4, 4, 4, 4))  # type: ignore[operator]
