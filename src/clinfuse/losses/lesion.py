"""Differentiable lesion losses: soft Dice and distance-transform surrogates of NSD@tau and HD95,
for lesion probabilities `(B, 1, *spatial)` against a fixed binary target, 2D and 3D."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

_EPS = 1e-6


@dataclass(frozen=True)
class LesionTarget:
    """A binary target and its distance maps, computed once (scipy EDT, mm) and reused.

    All tensors are `(B, 1, *spatial)` on the device/dtype of the prediction they were made for.
    `dist_out`: distance (mm) from each outside voxel to the nearest target voxel (0 inside);
    `dist_in`: distance from each inside voxel to the nearest background voxel (0 outside);
    `surface`: 1 on target voxels that touch the background (face neighbours), else 0.
    `degenerate[b]` is True when item b has an empty or full target (no surface).
    """

    mask: Tensor
    dist_out: Tensor
    dist_in: Tensor
    surface: Tensor
    degenerate: Tensor
    spacing: tuple[float, ...]


def prepare_target(
    target: Tensor | np.ndarray, spacing: Sequence[float], *, like: Tensor | None = None
) -> LesionTarget:
    """Distance maps of a binary `target` `(B, 1, *spatial)` with `spacing` in mm per spatial axis.

    The maps depend only on the (fixed) target, so gradients of the losses flow through the
    prediction only. Pass the result to the losses instead of the raw target when the same
    target is used many times (guidance calls the loss at every sampling step).
    """
    t = target.detach().cpu().numpy() if isinstance(target, Tensor) else np.asarray(target)
    t = t.astype(bool)
    if t.ndim not in (4, 5) or t.shape[1] != 1:
        raise ValueError(f"target must be (B, 1, *spatial) with 2 or 3 spatial axes, got {t.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != t.ndim - 2:
        raise ValueError(f"spacing {spacing} needs one value per spatial axis of {t.shape}")
    d_out = np.zeros(t.shape, dtype=np.float64)
    d_in = np.zeros(t.shape, dtype=np.float64)
    surface = np.zeros(t.shape, dtype=bool)
    degenerate = np.zeros(t.shape[0], dtype=bool)
    struct = ndimage.generate_binary_structure(t.ndim - 2, 1)
    for b in range(t.shape[0]):
        tb = t[b, 0]
        if not tb.any() or tb.all():
            degenerate[b] = True
            continue
        d_out[b, 0] = ndimage.distance_transform_edt(~tb, sampling=spacing)
        d_in[b, 0] = ndimage.distance_transform_edt(tb, sampling=spacing)
        surface[b, 0] = tb & ~ndimage.binary_erosion(tb, struct, border_value=1)
    dtype = like.dtype if like is not None else torch.float32
    device = like.device if like is not None else torch.device("cpu")

    def conv(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, dtype=dtype, device=device)

    return LesionTarget(
        mask=conv(t),
        dist_out=conv(d_out),
        dist_in=conv(d_in),
        surface=conv(surface),
        degenerate=torch.as_tensor(degenerate, device=device),
        spacing=spacing,
    )


def _moved(lt: LesionTarget, like: Tensor) -> LesionTarget:
    """The same target on `like`'s device and dtype (e.g. prepared on CPU, used on CUDA)."""

    def conv(t: Tensor) -> Tensor:
        return t.to(dtype=like.dtype, device=like.device)

    return replace(
        lt,
        mask=conv(lt.mask),
        dist_out=conv(lt.dist_out),
        dist_in=conv(lt.dist_in),
        surface=conv(lt.surface),
        degenerate=lt.degenerate.to(like.device),
    )


def _as_target(
    prob: Tensor, target: Tensor | np.ndarray | LesionTarget, spacing: Sequence[float] | None
) -> LesionTarget:
    if isinstance(target, LesionTarget):
        lt = target
        if lt.mask.device != prob.device or lt.mask.dtype != prob.dtype:
            lt = _moved(lt, prob)
    else:
        if spacing is None:
            raise ValueError("spacing is required unless target is a LesionTarget")
        lt = prepare_target(target, spacing, like=prob)
    if tuple(lt.mask.shape) != tuple(prob.shape):
        raise ValueError(f"prob {tuple(prob.shape)} and target {tuple(lt.mask.shape)} differ")
    return lt


def _spatial_sum(t: Tensor) -> Tensor:
    return t.sum(dim=tuple(range(1, t.ndim)))


def _upcast(prob: Tensor) -> Tensor:
    # Sums over a whole volume lose most digits in fp16/bf16 (e.g. under autocast): use float32.
    return prob.float() if prob.dtype in (torch.float16, torch.bfloat16) else prob


def _batch_mean(per_item: Tensor, prob: Tensor, lt: LesionTarget) -> Tensor:
    """Mean over the batch; items without a target surface (empty or full) use mean (p - g)^2,
    since surface distances are undefined there."""
    fallback = _spatial_sum((prob - lt.mask) ** 2) / prob[0].numel()
    return torch.where(lt.degenerate, fallback, per_item).mean()


def soft_dice_loss(prob: Tensor, target: Tensor | np.ndarray | LesionTarget) -> Tensor:
    """1 - soft Dice, `prob` `(B, 1, *spatial)` in [0, 1]; mean over the batch (scalar).

    Soft Dice = (2 sum(p g) + eps) / (sum(p) + sum(g) + eps), eps = 1e-6, so an empty target
    and an all-zero prediction give loss 0.
    """
    prob = _upcast(prob)
    g = target.mask if isinstance(target, LesionTarget) else _to_tensor(target, prob)
    if g.shape != prob.shape:
        raise ValueError(f"prob {tuple(prob.shape)} and target {tuple(g.shape)} differ")
    inter = _spatial_sum(prob * g)
    denom = _spatial_sum(prob) + _spatial_sum(g)
    return (1 - (2 * inter + _EPS) / (denom + _EPS)).mean()


def _to_tensor(target: Tensor | np.ndarray, like: Tensor) -> Tensor:
    return torch.as_tensor(np.asarray(target) if not isinstance(target, Tensor) else target).to(
        dtype=like.dtype, device=like.device
    )


def nsd_surrogate_loss(
    prob: Tensor,
    target: Tensor | np.ndarray | LesionTarget,
    spacing: Sequence[float] | None = None,
    tau: float = 2.0,
) -> Tensor:
    """Surrogate of 1 - NSD@tau (mm), in [0, 1]; mean over the batch (scalar).

    Per item, the mean of two fractions, each linear in `prob` (so the gradient is exact and
    dense where it matters):
    - false surface: the share of the predicted mass lying farther than `tau` mm outside the
      target (beyond the tolerance band NSD forgives);
    - missed surface: the mean of (1 - p) over the target's surface voxels (the target surface
      the prediction does not cover).
    Items with an empty or full target (no surface) use the mean of (p - g)^2 instead.
    """
    prob = _upcast(prob)
    lt = _as_target(prob, target, spacing)
    far = (lt.dist_out > tau).to(prob.dtype)
    false_surface = _spatial_sum(prob * far) / (_spatial_sum(prob) + _EPS)
    n_surface = _spatial_sum(lt.surface)
    missed = _spatial_sum((1 - prob) * lt.surface) / n_surface.clamp_min(1.0)
    return _batch_mean(0.5 * (false_surface + missed), prob, lt)


def hd95_surrogate_loss(
    prob: Tensor,
    target: Tensor | np.ndarray | LesionTarget,
    spacing: Sequence[float] | None = None,
) -> Tensor:
    """Distance-weighted error (Karimi & Salcudean 2019, one-sided, alpha = 2); mean over batch.

    Per item: sum((p - g)^2 * d^2) / (sum(g) * R^2), with d the distance in mm of each voxel to
    the target boundary (EDT outside plus EDT inside), so errors far from the lesion cost the
    square of their distance, as Hausdorff distances do, and R the target's inscribed radius
    (max inside distance, mm). The normaliser makes the loss dimensionless and independent of
    the field of view: 1 means error mass equal to the lesion volume at one lesion radius.
    Not bounded above (a far false positive is meant to cost much). Items with an empty or full
    target use the mean of (p - g)^2 instead.
    """
    prob = _upcast(prob)
    lt = _as_target(prob, target, spacing)
    d2 = (lt.dist_out + lt.dist_in) ** 2
    radius = lt.dist_in.amax(dim=tuple(range(1, prob.ndim)))
    norm = _spatial_sum(lt.mask) * radius**2
    loss = _spatial_sum((prob - lt.mask) ** 2 * d2) / norm.clamp_min(_EPS)
    return _batch_mean(loss, prob, lt)


def lesion_loss(
    prob: Tensor,
    target: Tensor | np.ndarray | LesionTarget,
    spacing: Sequence[float] | None = None,
    tau: float = 2.0,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Tensor:
    """L_lesion of Algorithm 1: w0 * soft Dice + w1 * NSD surrogate + w2 * HD95 surrogate.

    `prob` `(B, 1, *spatial)` in [0, 1] (sigmoid of the lesion head), `target` binary of the same
    shape (or a `LesionTarget` from `prepare_target`), `spacing` in mm. Scalar, differentiable
    in `prob`; 0 for a perfect binary prediction.
    """
    prob = _upcast(prob)
    lt = _as_target(prob, target, spacing)
    w_dice, w_nsd, w_hd = weights
    return (
        w_dice * soft_dice_loss(prob, lt)
        + w_nsd * nsd_surrogate_loss(prob, lt, tau=tau)
        + w_hd * hd95_surrogate_loss(prob, lt)
    )
