"""The ROI loss of Algorithm 1 lines 10-12 (`losses.roi`), shared by guidance and training."""

import pytest
import torch

from clinfuse.diffusion.guidance import GuidanceConfig
from clinfuse.losses.roi import mean_ssim_term, roi_loss

S = 8


def _case():
    """MRI: a ramp along y; CT (both windows): a ramp along z; brain = x < 4, bone = x >= 4."""
    g = torch.linspace(-1.5, 1.5, S)
    mri = g[None, :, None].expand(S, S, S)
    ct = g[None, None, :].expand(S, S, S)
    cond = torch.stack([mri, ct, ct])[None].clone()
    brain = (torch.arange(S) < S // 2)[:, None, None].expand(S, S, S)[None, None].clone()
    return cond, {"brain": brain, "bone": ~brain}


def test_roi_loss_is_zero_for_the_sources_and_voxel_scaled():
    cond, masks = _case()
    cfg = GuidanceConfig()
    # a perfect fusion in both ROIs: x = MRI in the brain, CT elsewhere -> SSIM < 1 only at edges
    x = torch.where(masks["brain"], cond[:, 0:1], cond[:, 2:3])
    loss = roi_loss(
        x,
        cond[:, 0:1],
        cond[:, 2:3],
        masks["brain"],
        masks["bone"],
        None,
        None,
        (1.0, 1.0, 1.0),
        cfg,
    )
    avg = 0.5 * (cond[:, 0:1] + cond[:, 2:3])
    worse = roi_loss(
        avg,
        cond[:, 0:1],
        cond[:, 2:3],
        masks["brain"],
        masks["bone"],
        None,
        None,
        (1.0, 1.0, 1.0),
        cfg,
    )
    assert worse.brain > loss.brain and worse.bone > loss.bone
    literal = roi_loss(
        avg,
        cond[:, 0:1],
        cond[:, 2:3],
        masks["brain"],
        masks["bone"],
        None,
        None,
        (1.0, 1.0, 1.0),
        GuidanceConfig(voxel_scaled=False),
    )
    n_brain, n_bone = int(masks["brain"].sum()), int(masks["bone"].sum())
    expected = 1.0 * n_brain * worse.brain + 1.2 * n_bone * worse.bone
    assert worse.total.item() == pytest.approx(expected, rel=1e-5)
    assert literal.total.item() == pytest.approx(worse.brain + 1.2 * worse.bone, rel=1e-5)


def test_mean_ssim_term_skips_items_without_roi():
    cond, masks = _case()
    x = torch.cat([cond[:, 0:1], cond[:, 2:3]])  # item 0 = MRI exactly, item 1 = CT
    mask = torch.cat([masks["brain"], torch.zeros_like(masks["brain"])])  # item 1: empty ROI
    assert mean_ssim_term(x, cond[:, 0:1], mask).item() == pytest.approx(0.0, abs=1e-5)
    none = torch.zeros_like(mask)
    assert mean_ssim_term(x, cond[:, 0:1], none).item() == 0.0
