"""Calibration of voxel-wise lesion probabilities: expected calibration error (equal-width bins),
Brier score and the reliability curve behind the reliability diagram."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from clinfuse.errors import ClinfuseInputError


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin statistics of `n_bins` equal-width probability bins on [0, 1].

    `accuracy` (observed lesion frequency) and `confidence` (mean predicted probability) are NaN
    for empty bins; `counts` is the number of voxels per bin.
    """

    bin_centres: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    counts: np.ndarray


def _select(
    prob: np.ndarray, gt: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Flatten `prob` and `gt` to the voxels of `mask` (all voxels when None), validated."""
    p = np.asarray(prob, dtype=np.float64)
    g = np.asarray(gt)
    if p.shape != g.shape:
        raise ClinfuseInputError(f"prob shape {p.shape} does not match gt shape {g.shape}")
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != p.shape:
            raise ClinfuseInputError(f"mask shape {m.shape} does not match prob shape {p.shape}")
        p, g = p[m], g[m]
    p, g = p.ravel(), g.ravel()
    if not np.isfinite(p).all() or p.min(initial=0.0) < 0 or p.max(initial=0.0) > 1:
        raise ClinfuseInputError("prob must be finite probabilities in [0, 1]")
    if not np.isin(g, (0, 1)).all():
        raise ClinfuseInputError("gt must be a binary mask (values 0/1)")
    return p, g.astype(np.float64)


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    # Bins [k/n, (k+1)/n), with p = 1 in the last bin.
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)


def reliability_curve(
    prob: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, n_bins: int = 15
) -> ReliabilityCurve:
    """Reliability curve of probabilities `prob` against binary `gt` (any shape, same shape),
    over the voxels of `mask` (e.g. the brain; all voxels when None)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p, g = _select(prob, gt, mask)
    idx = _bin_index(p, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=p, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=g, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(counts > 0, conf_sum / counts, np.nan)
        accuracy = np.where(counts > 0, acc_sum / counts, np.nan)
    centres = (np.arange(n_bins) + 0.5) / n_bins
    return ReliabilityCurve(centres, accuracy, confidence, counts)


def ece(
    prob: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, n_bins: int = 15
) -> float:
    """Expected calibration error: sum over bins of (count / N) * |accuracy - confidence|.

    15 equal-width bins [k/15, (k+1)/15) (1.0 falls in the last), voxels inside `mask`.
    An empty selection gives NaN with a RuntimeWarning.
    """
    curve = reliability_curve(prob, gt, mask, n_bins)
    total = int(curve.counts.sum())
    if total == 0:
        warnings.warn("ece: no voxels selected (empty mask); returning NaN", RuntimeWarning, 2)
        return float("nan")
    gap = np.abs(curve.accuracy - curve.confidence)
    return float(np.nansum(curve.counts * gap) / total)


def brier(prob: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Brier score: mean of (prob - gt)^2 over the voxels of `mask` (all when None).

    An empty selection gives NaN with a RuntimeWarning.
    """
    p, g = _select(prob, gt, mask)
    if p.size == 0:
        warnings.warn("brier: no voxels selected (empty mask); returning NaN", RuntimeWarning, 2)
        return float("nan")
    return float(np.mean((p - g) ** 2))
