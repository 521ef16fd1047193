"""`pipeline.estimate.estimate_sampling`: the calls it expects the sampler to make."""

from __future__ import annotations

import torch

from clinfuse.diffusion.guidance import GuidanceConfig
from clinfuse.pipeline.estimate import estimate_sampling


class _Net:
    """Stands in for the sampling network: cheap, with an encoder and a lesion head."""

    def encode(self, cond: torch.Tensor) -> torch.Tensor:
        return cond.mean(dim=(2, 3, 4))[:, None]

    def __call__(self, x, t, cond, tokens):
        return x

    def lesion_head(self, x, cond, box=None):
        out = x
        return out if box is None else out[(..., *box)]


def _calls(cfg: GuidanceConfig, steps: int = 10) -> dict:
    cond = torch.zeros(1, 3, 8, 8, 8)
    brain = torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool)
    brain[..., :4, :, :] = True
    masks = {"brain": brain, "bone": ~brain}
    out = estimate_sampling(_Net(), cond, masks, steps=steps, num_train_steps=1000, guidance=cfg)
    return out["calls"]


def test_ssim_calls_count_the_final_inner_steps():
    # 9 steps of 1 inner step + 30 at the last, two ROI terms (brain, bone)
    assert _calls(GuidanceConfig(n_inner=1, final_inner=30))["ssim"] == (9 + 30) * 2
    # final_inner 0: the last step takes n_inner like the others
    assert _calls(GuidanceConfig(n_inner=10))["ssim"] == 10 * 10 * 2
    # lesion term from t <= T/2: 5 of 10 DDIM steps, forward + backward counted as 3, + final
    assert _calls(GuidanceConfig(n_inner=1, final_inner=30))["lesion_head"] == 1 + 5 * 3
    assert _calls(GuidanceConfig(eta=0.0))["ssim"] == 0
