"""The ROI loss, Algorithm 1 lines 10-12: 1 - masked SSIM in the brain (vs MRI) and in the bone
(vs bone-window CT), plus the lesion surrogates. One copy, used by guidance and by training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from clinfuse.losses.lesion import LesionTarget, lesion_loss, prepare_target
from clinfuse.losses.ssim import MaskedSSIM, masked_ssim


class RoiWeights(Protocol):
    """What `roi_loss` reads from a config (`diffusion.guidance.GuidanceConfig` has it all)."""

    alpha: float
    beta: float
    gamma: float
    voxel_scaled: bool
    tau_mm: float


@dataclass
class RoiLoss:
    """The ROI objective and its terms. `total` carries the graph; the rest are floats."""

    total: torch.Tensor  # scalar; what the gradient is taken of
    brain: float  # mean over the batch of 1 - SSIM in the brain (nan if the term is off)
    bone: float
    lesion: float


def only_inside(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Same values as `x`; gradients flow only through the voxels inside `mask`."""
    m = mask.to(x.dtype)
    return x * m + x.detach() * (1.0 - m)


def ssim_term(
    x: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, *, grad_inside_only: bool = True
) -> torch.Tensor:
    """1 - masked SSIM(x, ref) inside `mask`, one value per item: (B,) (NaN for an empty mask).

    x (B, 1, *S); ref and mask broadcast to it. With `grad_inside_only` (guidance) the gradient
    reaches only voxels inside the mask (x·M of Alg.1), while the SSIM windows still see the real
    neighbourhood (not zeros, which would invent an edge at the mask border); training lets it
    reach every voxel the windows see.
    """
    xm = only_inside(x, mask) if grad_inside_only else x
    return 1.0 - masked_ssim(xm, ref.expand_as(x), mask.to(x.dtype), reduction="none")


def mean_ssim_term(x: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`ssim_term` averaged over the items whose mask is non-empty (0 if none is): training's
    L_ROI brain/bone terms, where a random patch may miss the skull or the brain entirely."""
    per_item = ssim_term(x, ref, mask, grad_inside_only=False)
    keep = torch.isfinite(per_item)
    if not bool(keep.any()):
        return x.sum() * 0.0
    return per_item[keep].mean()


def prepare_ssim_terms(
    mri: torch.Tensor, ct_bone: torch.Tensor, brain: torch.Tensor, bone: torch.Tensor
) -> dict[str, MaskedSSIM]:
    """The brain and bone SSIM terms of `roi_loss` prepared once for fixed references and
    masks (`losses.ssim.MaskedSSIM`): what guidance evaluates n_inner times per step. Pass the
    result as `roi_loss(..., ssim=...)`; values and gradients are those of `ssim_term`."""
    return {"brain": MaskedSSIM(mri, brain), "bone": MaskedSSIM(ct_bone, bone)}


def roi_loss(
    x: torch.Tensor,
    mri: torch.Tensor,
    ct_bone: torch.Tensor,
    brain: torch.Tensor,
    bone: torch.Tensor,
    lesion_prob: torch.Tensor | None,
    lesion_target: Any,
    spacing: Sequence[float],
    cfg: RoiWeights,
    *,
    weights: tuple[float, float, float] | None = None,
    ssim: dict[str, MaskedSSIM] | None = None,
) -> RoiLoss:
    """Algorithm 1 lines 10-12 on `x` (B, 1, *S); references and masks broadcast on B.

    `mri`/`ct_bone` (B|1, 1, *S) model range; `brain`/`bone`/`lesion_target` (B|1, 1, *S) bool
    or {0, 1} float (`lesion_target` may be a prepared `losses.lesion.LesionTarget`);
    `lesion_prob` (B, 1, *S) in [0, 1] or None (term skipped). `weights` defaults to
    (cfg.alpha, cfg.beta, cfg.gamma). With `cfg.voxel_scaled` each term is multiplied by its
    ROI voxel count (the summed form) so the per-voxel gradient does not depend on volume size.
    The batch items are summed, so each sample receives its own gradient. `ssim`: the brain and
    bone terms prepared by `prepare_ssim_terms` for these references and masks (same values,
    about 2x cheaper per call).
    """
    a, b, g = weights if weights is not None else (cfg.alpha, cfg.beta, cfg.gamma)
    total = x.new_zeros(())
    out = {"brain": float("nan"), "bone": float("nan"), "lesion": float("nan")}

    def scale(mask: torch.Tensor) -> float:
        # per-item voxel count of the ROI; 1 for the literal mean form
        return float(mask[0].sum()) if cfg.voxel_scaled else 1.0

    for name, w, ref, mask in (("brain", a, mri, brain), ("bone", b, ct_bone, bone)):
        if w <= 0 or not bool(mask.any()):
            continue
        # Alg.1 lines 10-11, (B,); the prepared form masks x itself (gradient inside M only)
        term = 1.0 - ssim[name](x) if ssim is not None else ssim_term(x, ref, mask)
        total = total + w * scale(mask) * term.sum()
        out[name] = float(term.detach().mean())
    if g > 0 and lesion_prob is not None and lesion_target is not None:
        lt = lesion_target
        if not isinstance(lt, LesionTarget):
            lt = prepare_target(lt.expand_as(lesion_prob), spacing, like=lesion_prob)
        if bool(lt.mask.any()):
            # Alg.1 line 12; lesion_loss averages the batch, x B gives each item its own gradient
            term = lesion_loss(lesion_prob, lt, tau=cfg.tau_mm) * lesion_prob.shape[0]
            total = total + g * scale(lt.mask) * term
            out["lesion"] = float(term.detach()) / lesion_prob.shape[0]
    return RoiLoss(total=total, brain=out["brain"], bone=out["bone"], lesion=out["lesion"])
