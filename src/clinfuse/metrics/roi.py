"""ROI image-quality metrics on numpy arrays (2D or 3D): ROI-SSIM (the masked mean of the one
differentiable SSIM map of `losses.ssim`) and ROI-PSNR over the ROI voxels only."""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch

from clinfuse.errors import ClinfuseInputError
from clinfuse.losses.ssim import masked_ssim
from clinfuse.model_range import DATA_RANGE


def _check(
    fused: np.ndarray, ref: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = np.asarray(fused, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    m = np.asarray(mask)
    if f.shape != r.shape or m.shape != f.shape:
        raise ClinfuseInputError(
            f"fused {f.shape}, reference {r.shape} and mask {m.shape} must have the same shape"
        )
    if f.ndim not in (2, 3):
        raise ClinfuseInputError(f"images must be 2D or 3D, got shape {f.shape}")
    if not (np.isfinite(f).all() and np.isfinite(r).all()):
        raise ClinfuseInputError("image contains NaN or infinite values")
    return f, r, m.astype(bool)


def roi_ssim(
    fused: np.ndarray, ref: np.ndarray, mask: np.ndarray, data_range: float = DATA_RANGE
) -> float:
    """Mean SSIM map of `fused` against `ref` inside `mask` (same 2D/3D shape, numpy).

    Gaussian window sigma 1.5 (11 taps), C1/C2 from `data_range` (4.0 = model range [-2, 2]);
    both images are shifted to [0, 4] and masked before the map is computed (the convention of
    `clinfuse.losses.ssim.masked_ssim`, docs/METRICS.md), and the map is averaged over the ROI.
    An empty ROI gives NaN with a RuntimeWarning.
    """
    f, r, m = _check(fused, ref, mask)
    if not m.any():
        warnings.warn("roi_ssim: empty ROI mask; returning NaN", RuntimeWarning, stacklevel=2)
        return float("nan")
    # float32: 3x faster than float64 on CPU convolutions; agrees with skimage's float64 map to
    # ~1e-7 on model-range images (tests assert 1e-6).
    with torch.no_grad():
        value = masked_ssim(
            torch.from_numpy(f.astype(np.float32))[None, None],
            torch.from_numpy(r.astype(np.float32))[None, None],
            torch.from_numpy(m),
            data_range=data_range,
        )
    return float(value)


def roi_psnr(
    fused: np.ndarray, ref: np.ndarray, mask: np.ndarray, data_range: float = DATA_RANGE
) -> float:
    """PSNR = 10 log10(data_range^2 / MSE) with the MSE over the ROI voxels only (dB).

    Identical images inside the ROI give +inf; an empty ROI gives NaN with a RuntimeWarning.
    """
    f, r, m = _check(fused, ref, mask)
    if not m.any():
        warnings.warn("roi_psnr: empty ROI mask; returning NaN", RuntimeWarning, stacklevel=2)
        return float("nan")
    mse = float(np.mean((f[m] - r[m]) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _zscore_in(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    mu, sd = float(x[m].mean()), float(x[m].std())
    return (x - mu) / (sd if sd > 0 else 1.0)


def structural_roi_ssim(
    fused: np.ndarray,
    ref: np.ndarray,
    mask: np.ndarray,
    variant: Literal["masked", "whole"] = "masked",
) -> float:
    """Structure-only ROI-SSIM (issue 13), insensitive to each image's scale and offset in the ROI.

    Both images are z-scored with their own mean and standard deviation inside `mask`. Variant
    "masked" (Algorithm 1's SSIM(x·M, ref·M)): everything outside the ROI is set to 0; "whole":
    the z-scored neighbours outside are kept, so the windows at the ROI border see them. The SSIM
    map (Gaussian window sigma 1.5, 11 taps, C1/C2 from L = the range of the z-scored reference
    inside the ROI) is averaged over the ROI. An empty ROI gives NaN with a RuntimeWarning.
    """
    f, r, m = _check(fused, ref, mask)
    if variant not in ("masked", "whole"):
        raise ValueError(f"variant must be 'masked' or 'whole', got {variant!r}")
    if not m.any():
        warnings.warn(
            "structural_roi_ssim: empty ROI mask; returning NaN", RuntimeWarning, stacklevel=2
        )
        return float("nan")
    fz, rz = _zscore_in(f, m), _zscore_in(r, m)
    span = float(rz[m].max() - rz[m].min())
    with torch.no_grad():
        value = masked_ssim(
            torch.from_numpy(fz.astype(np.float32))[None, None],
            torch.from_numpy(rz.astype(np.float32))[None, None],
            torch.from_numpy(m),
            data_range=span if span > 0 else 1.0,
            low=None,
            mask_inputs=variant == "masked",
        )
    return float(value)


def roi_scores(
    fused: np.ndarray,
    mri: np.ndarray,
    ct_bone: np.ndarray,
    brain: np.ndarray,
    bone: np.ndarray,
    prefix: str = "",
) -> dict[str, float]:
    """The three ROI scores of the real-head benchmarks, per ROI: brain against the MRI, bone
    against the bone-window CT; keys `{prefix}{roi}_{ssim|s_masked|s_whole}` (`roi_ssim`, and
    `structural_roi_ssim` masked / whole)."""
    out: dict[str, float] = {}
    for roi, ref, m in (("brain", mri, brain), ("bone", ct_bone, bone)):
        out[f"{prefix}{roi}_ssim"] = float(roi_ssim(fused, ref, m))
        out[f"{prefix}{roi}_s_masked"] = structural_roi_ssim(fused, ref, m, "masked")
        out[f"{prefix}{roi}_s_whole"] = structural_roi_ssim(fused, ref, m, "whole")
    return out
