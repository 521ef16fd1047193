"""benchmarks/guidance_cost.py: the component timer sees the guide's work and restores it."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "guidance_cost.py"
_spec = importlib.util.spec_from_file_location("bench_guidance_cost", _PATH)
gc = importlib.util.module_from_spec(_spec)
sys.modules["bench_guidance_cost"] = gc
_spec.loader.exec_module(gc)


class _Model(torch.nn.Module):
    """x̂0 = mean of MRI and bone CT; lesion logits 6 (x - 1)."""

    config = SimpleNamespace(prediction="x0")

    def encode(self, cond):
        return cond.mean(dim=(2, 3, 4))[:, None, :]

    def forward(self, x_t, t, cond, tokens):
        return 0.5 * (cond[:, 0:1] + cond[:, 2:3]) + 0.1 * x_t

    def lesion_head(self, x, cond, box=None):
        out = 6.0 * (x - 1.0)
        return out if box is None else out[(..., *box)]


def test_component_timer_times_the_guide_and_restores_it():
    from clinfuse.diffusion.guidance import GuidanceConfig, RoiGuide, guided_sample
    from clinfuse.diffusion.schedule import NoiseSchedule

    g = torch.linspace(-1.5, 1.5, 8)
    cond = torch.stack([g[None, :, None].expand(8, 8, 8), *[g[None, None, :].expand(8, 8, 8)] * 2])
    brain = (torch.arange(8) < 4)[:, None, None].expand(8, 8, 8)[None, None]
    masks = {"brain": brain, "bone": ~brain}
    cfg = GuidanceConfig(eta=0.02, gamma=3.0, n_inner=1, final_inner=4, roi_final_only=True)
    originals = (RoiGuide._line7, RoiGuide._objective, torch.autograd.grad)
    acc: dict[str, float] = gc.defaultdict(float)
    with gc.component_timer(acc):
        guided_sample(
            _Model(), cond[None].clone(), masks, NoiseSchedule(1000), steps=5, guidance=cfg,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
    assert acc["line 7"] > 0 and acc["brain/bone SSIM"] > 0 and acc["lesion term"] > 0
    assert (RoiGuide._line7, RoiGuide._objective, torch.autograd.grad) == originals
