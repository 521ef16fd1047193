"""The condition encoders under bf16 autocast (the 3D training's default on CPU)."""

from __future__ import annotations

import pytest
import torch

from clinfuse.nn.encoders import ConditionEncoder


@pytest.mark.parametrize("seed", [1, 2])
def test_encoder_gradients_under_bf16_autocast_equal_float32(seed: int) -> None:
    # Before the encoders were pinned to float32, these seeds gave NaN/inf gradient norms under
    # bf16 autocast (the last stage's BatchNorm sees 1-2 voxels per axis) while float32 gave ~1.
    torch.manual_seed(seed)
    enc = ConditionEncoder(3, (16, 32, 64, 64), 256, 2, 8)
    x = torch.randn(2, 3, 16, 16, 16)
    norms, outs = [], []
    for bf16 in (True, False):
        enc.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = enc(x)
        assert y.dtype == torch.float32
        (y**2).mean().backward()
        grads = [p.grad.norm() for p in enc.parameters() if p.grad is not None]
        norms.append(float(torch.stack(grads).norm()))
        outs.append(y.detach())
    assert all(torch.isfinite(torch.tensor(norms)))
    assert norms[0] == pytest.approx(norms[1], rel=1e-6)
    torch.testing.assert_close(outs[0], outs[1])
