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


def test_group_norm_encoder_has_no_batch_norm_and_ignores_the_batch() -> None:
    # MONAI's ResNet builds BatchNorm residual blocks whatever `norm` says; block_norm="group"
    # replaces every one, so a case's tokens no longer depend on the other cases of its batch.
    torch.manual_seed(0)
    enc = ConditionEncoder(3, (16, 32, 64, 64), 256, 2, 8, block_norm="group").train()
    norms = [m for m in enc.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert not norms
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in enc.modules()) == 2 * 20
    a, b = torch.randn(1, 3, 48, 48, 48), torch.randn(1, 3, 48, 48, 48)
    alone = enc(a)
    batched = enc(torch.cat([a, 5 * b + 3]))[:1]
    torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-5)
    batch_enc = ConditionEncoder(3, (16, 32, 64, 64), 256, 2, 8).train()
    assert not torch.allclose(batch_enc(a), batch_enc(torch.cat([a, 5 * b + 3]))[:1])


def test_group_norm_model_warm_starts_from_a_batch_norm_checkpoint(tmp_path) -> None:
    from torch.optim.swa_utils import AveragedModel

    from clinfuse.training.checkpoint import build_model, save_checkpoint
    from clinfuse.training.config import resolve_config
    from clinfuse.training.loop import init_weights

    cfg = resolve_config("ci-tiny", [])
    src = build_model(cfg.model)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "batch.ckpt"
    save_checkpoint(path, model=src, ema=AveragedModel(src), config=cfg, step=0)
    dst = build_model({**cfg.model, "encoder_norm": "group"})
    init_weights(dst, path)
    own, theirs = dst.state_dict(), src.state_dict()
    assert not any(k.endswith("running_mean") for k in own if k.startswith("encoder."))
    bn = "encoder.mri.backbone.layer4.1.bn2.weight"
    assert isinstance(dst.get_submodule(bn.rsplit(".", 1)[0]), torch.nn.GroupNorm)
    for k in own:  # every weight comes from the checkpoint, GroupNorms' from the BatchNorms
        torch.testing.assert_close(own[k].float(), theirs[k].float())
