"""Differentiable losses: masked SSIM (`ssim`), lesion Dice/NSD/HD95 surrogates (`lesion`) and
the ROI loss of Algorithm 1 built from them (`roi`)."""

from clinfuse.losses.lesion import (
    LesionTarget,
    hd95_surrogate_loss,
    lesion_loss,
    nsd_surrogate_loss,
    prepare_target,
    soft_dice_loss,
)
from clinfuse.losses.roi import RoiLoss, roi_loss
from clinfuse.losses.ssim import masked_ssim, ssim_map

__all__ = [
    "LesionTarget",
    "RoiLoss",
    "hd95_surrogate_loss",
    "lesion_loss",
    "masked_ssim",
    "nsd_surrogate_loss",
    "prepare_target",
    "roi_loss",
    "soft_dice_loss",
    "ssim_map",
]
