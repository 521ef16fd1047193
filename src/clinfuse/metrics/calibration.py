"""Calibration of voxel-wise lesion probabilities: expected calibration error (equal-width bins),
Brier score and the reliability curve, over brain voxels, over the lesion neighbourhood and
class-balanced; and temperature or Platt scaling (`fit_temperature`, `fit_platt`, voxels
optionally weighted by region with `region_weights`) to correct an over/under-confident head on
a validation split."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, optimize

from clinfuse.errors import ClinfuseInputError

N_BINS = 15  # METRICS.md: ECE over 15 equal-width bins
# Lesion neighbourhood: brain voxels within this distance of the reference lesion. Pooled over
# a whole brain, ~99 % of voxels are far from any lesion and get p ~ 0, so brain-wide ECE/Brier
# stay ~0.01 even for a head that finds nothing; 10 mm around the lesion is where the head has
# to decide, and matches the guidance's lesion zone (lesion_zone_mm = 10).
NEIGHBOURHOOD_MM = 10.0
# Temperature search interval: beyond these the head is not miscalibrated but broken.
TEMPERATURE_BOUNDS = (0.05, 20.0)


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin statistics of `n_bins` equal-width probability bins on [0, 1].

    `accuracy` (observed lesion frequency) and `confidence` (mean predicted probability) are NaN
    for empty bins and weighted means when weights were given; `counts` is the number of voxels
    per bin; `weights` the share of the total weight per bin (sums to 1; `counts / N` without
    weights).
    """

    bin_centres: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    counts: np.ndarray
    weights: np.ndarray | None = None


@dataclass(frozen=True)
class CalibrationScores:
    """ECE, Brier and the reliability curve of one voxel selection (`region`)."""

    region: str
    ece: float
    brier: float
    n_voxels: int  # voxels selected
    n_lesion: int  # of which reference lesion
    curve: ReliabilityCurve


def _select(
    prob: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray | None,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Flatten `prob`, `gt` (and `weights`) to the voxels of `mask` (all when None), validated."""
    p = np.asarray(prob, dtype=np.float64)
    g = np.asarray(gt)
    if p.shape != g.shape:
        raise ClinfuseInputError(f"prob shape {p.shape} does not match gt shape {g.shape}")
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    if w is not None and w.shape != p.shape:
        raise ClinfuseInputError(f"weights shape {w.shape} does not match prob shape {p.shape}")
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != p.shape:
            raise ClinfuseInputError(f"mask shape {m.shape} does not match prob shape {p.shape}")
        p, g = p[m], g[m]
        w = None if w is None else w[m]
    p, g = p.ravel(), g.ravel()
    if not np.isfinite(p).all() or p.min(initial=0.0) < 0 or p.max(initial=0.0) > 1:
        raise ClinfuseInputError("prob must be finite probabilities in [0, 1]")
    if not np.isin(g, (0, 1)).all():
        raise ClinfuseInputError("gt must be a binary mask (values 0/1)")
    if w is not None:
        w = w.ravel()
        if not np.isfinite(w).all() or w.min(initial=0.0) < 0:
            raise ClinfuseInputError("weights must be finite and non-negative")
    return p, g.astype(np.float64), w


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    # Bins [k/n, (k+1)/n), with p = 1 in the last bin.
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)


def reliability_curve(
    prob: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray | None = None,
    n_bins: int = N_BINS,
    weights: np.ndarray | None = None,
) -> ReliabilityCurve:
    """Reliability curve of probabilities `prob` against binary `gt` (any shape, same shape),
    over the voxels of `mask` (e.g. the brain; all voxels when None). `weights` (same shape,
    e.g. `class_balanced_weights`) make each bin's accuracy and confidence weighted means."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p, g, w = _select(prob, gt, mask, weights)
    idx = _bin_index(p, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    wt = np.ones_like(p) if w is None else w
    w_sum = np.bincount(idx, weights=wt, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=wt * p, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=wt * g, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(w_sum > 0, conf_sum / w_sum, np.nan)
        accuracy = np.where(w_sum > 0, acc_sum / w_sum, np.nan)
        share = w_sum / w_sum.sum() if w_sum.sum() > 0 else np.zeros(n_bins)
    centres = (np.arange(n_bins) + 0.5) / n_bins
    return ReliabilityCurve(centres, accuracy, confidence, counts, share)


def _curve_ece(curve: ReliabilityCurve) -> float:
    share = curve.weights if curve.weights is not None else curve.counts / curve.counts.sum()
    gap = np.abs(curve.accuracy - curve.confidence)
    return float(np.nansum(share * gap))


def ece(
    prob: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray | None = None,
    n_bins: int = N_BINS,
    weights: np.ndarray | None = None,
) -> float:
    """Expected calibration error: sum over bins of (bin weight / total) * |accuracy - confidence|.

    15 equal-width bins [k/15, (k+1)/15) (1.0 falls in the last), voxels inside `mask`; without
    `weights` every voxel counts once. An empty selection (or zero total weight) gives NaN with a
    RuntimeWarning.
    """
    curve = reliability_curve(prob, gt, mask, n_bins, weights)
    if int(curve.counts.sum()) == 0 or curve.weights is None or curve.weights.sum() == 0:
        warnings.warn("ece: no voxels selected (empty mask); returning NaN", RuntimeWarning, 2)
        return float("nan")
    return _curve_ece(curve)


def brier(
    prob: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> float:
    """Brier score: (weighted) mean of (prob - gt)^2 over the voxels of `mask` (all when None).

    An empty selection (or zero total weight) gives NaN with a RuntimeWarning.
    """
    p, g, w = _select(prob, gt, mask, weights)
    total = p.size if w is None else float(w.sum())
    if p.size == 0 or total == 0:
        warnings.warn("brier: no voxels selected (empty mask); returning NaN", RuntimeWarning, 2)
        return float("nan")
    sq = (p - g) ** 2
    return float(sq.mean() if w is None else (w * sq).sum() / total)


def class_balanced_weights(gt: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Voxel weights (shape of `gt`) that give lesion and non-lesion voxels of `mask` half of
    the total weight each: 0.5 / n_lesion and 0.5 / n_background; 0 outside `mask`.

    With these, ECE and Brier weigh a missed lesion as much as the sea of correct background, so
    a head that predicts nothing cannot look calibrated. Raises `ClinfuseInputError` when the
    selection lacks one of the two classes (balance is then undefined).
    """
    g = np.asarray(gt).astype(bool)
    m = np.ones(g.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != g.shape:
        raise ClinfuseInputError(f"mask shape {m.shape} does not match gt shape {g.shape}")
    n_pos = int(np.count_nonzero(g & m))
    n_neg = int(np.count_nonzero(~g & m))
    if n_pos == 0 or n_neg == 0:
        raise ClinfuseInputError(
            f"class-balanced calibration needs lesion and non-lesion voxels in the selection "
            f"(lesion {n_pos}, non-lesion {n_neg})"
        )
    w = np.zeros(g.shape, dtype=np.float64)
    w[g & m] = 0.5 / n_pos
    w[~g & m] = 0.5 / n_neg
    return w


def lesion_neighbourhood(
    gt: np.ndarray,
    spacing: Sequence[float],
    radius_mm: float = NEIGHBOURHOOD_MM,
    within: np.ndarray | None = None,
) -> np.ndarray:
    """Voxels at most `radius_mm` (Euclidean, spacing-aware) from the reference lesion `gt`,
    the lesion included, restricted to `within` (e.g. the brain). Empty `gt`: all False.

    `gt` is 2D or 3D, `spacing` one value in mm per axis.
    """
    g = np.asarray(gt).astype(bool)
    sp = tuple(float(s) for s in spacing)
    if len(sp) != g.ndim or any(not math.isfinite(s) or s <= 0 for s in sp):
        raise ValueError(f"spacing {spacing!r} must have {g.ndim} positive values")
    if radius_mm < 0:
        raise ValueError(f"radius_mm must be >= 0, got {radius_mm}")
    if not g.any():
        return np.zeros(g.shape, dtype=bool)
    dist = ndimage.distance_transform_edt(~g, sampling=sp)
    near = dist <= radius_mm
    if within is not None:
        w = np.asarray(within, dtype=bool)
        if w.shape != g.shape:
            raise ValueError(f"within shape {w.shape} does not match gt shape {g.shape}")
        near &= w
    return near


def _scores(
    region: str,
    prob: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray,
    n_bins: int,
    weights: np.ndarray | None = None,
) -> CalibrationScores:
    curve = reliability_curve(prob, gt, mask, n_bins, weights)
    n = int(curve.counts.sum())
    n_lesion = int(np.count_nonzero(np.asarray(gt).astype(bool) & mask))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty selection: NaN, reported as n 0
        e = _curve_ece(curve) if n else math.nan
        b = brier(prob, gt, mask, weights) if n else math.nan
    return CalibrationScores(region, e, b, n, n_lesion, curve)


REGION_BRAIN = "brain"
REGION_NEIGHBOURHOOD = "lesion neighbourhood"
REGION_BALANCED = "class-balanced (brain)"


def calibration_scores(
    prob: np.ndarray,
    gt: np.ndarray,
    brain: np.ndarray,
    neighbourhood: np.ndarray | None = None,
    n_bins: int = N_BINS,
) -> dict[str, CalibrationScores]:
    """ECE, Brier and reliability curve three ways (same-shape arrays, e.g. several cases
    flattened and concatenated):

    - `"brain"`: every brain voxel counts once (METRICS.md);
    - `"lesion neighbourhood"`: only the voxels of `neighbourhood` (`lesion_neighbourhood`,
      computed per case before pooling); left out when None;
    - `"class-balanced (brain)"`: brain voxels weighted so lesion and non-lesion voxels carry
      half the weight each (`class_balanced_weights`); NaN when the brain has no lesion voxel.
    """
    b = np.asarray(brain, dtype=bool)
    out = {REGION_BRAIN: _scores(REGION_BRAIN, prob, gt, b, n_bins)}
    if neighbourhood is not None:
        nb = np.asarray(neighbourhood, dtype=bool)
        out[REGION_NEIGHBOURHOOD] = _scores(REGION_NEIGHBOURHOOD, prob, gt, nb, n_bins)
    try:
        weights = class_balanced_weights(gt, b)
    except ClinfuseInputError:
        empty = reliability_curve(prob, gt, np.zeros_like(b), n_bins)
        out[REGION_BALANCED] = CalibrationScores(
            REGION_BALANCED, math.nan, math.nan, out[REGION_BRAIN].n_voxels, 0, empty
        )
    else:
        out[REGION_BALANCED] = _scores(REGION_BALANCED, prob, gt, b, n_bins, weights)
    return out


# --- temperature scaling (Guo et al. 2017, "On calibration of modern neural networks") ---


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of an array or a torch tensor (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _nll(inv_t: float, logits: np.ndarray, labels: np.ndarray, w: np.ndarray | None) -> float:
    """(Weighted) mean binary cross-entropy of sigmoid(inv_t * logits): softplus(z) - y z."""
    z = inv_t * logits
    loss = np.logaddexp(0.0, z) - labels * z
    return float(np.mean(loss) if w is None else np.dot(w, loss))


def _fit_inputs(
    logits: Any, labels: Any, mask: Any, weights: Any, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Flattened float64 logits, 0/1 labels and normalised weights (None: equal) of the voxels
    of `mask`, validated for a calibration fit."""
    z = _to_numpy(logits).astype(np.float64)
    y = _to_numpy(labels)
    if z.shape != y.shape:
        raise ValueError(f"logits shape {z.shape} does not match labels shape {y.shape}")
    w = None if weights is None else _to_numpy(weights).astype(np.float64)
    if w is not None and w.shape != z.shape:
        raise ValueError(f"weights shape {w.shape} does not match logits shape {z.shape}")
    if mask is not None:
        m = _to_numpy(mask).astype(bool)
        if m.shape != z.shape:
            raise ValueError(f"mask shape {m.shape} does not match logits shape {z.shape}")
        z, y = z[m], y[m]
        w = None if w is None else w[m]
    z, y = z.ravel(), y.ravel()
    if z.size == 0:
        raise ValueError(f"{name}: no voxels selected")
    if not np.isfinite(z).all():
        raise ValueError(f"{name}: logits contain NaN/Inf")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name}: labels must be 0/1")
    if w is not None:
        w = w.ravel()
        if not np.isfinite(w).all() or w.min() < 0 or w.sum() <= 0:
            raise ValueError(f"{name}: weights must be finite, non-negative, not all zero")
        keep = w > 0
        z, y, w = z[keep], y[keep], w[keep] / w.sum()
    y = y.astype(np.float64)
    if y.min() == y.max():
        raise ValueError(
            f"{name} needs both lesion and non-lesion voxels (with one class the NLL "
            "keeps falling as T goes to 0 or infinity)"
        )
    return z, y, w


def fit_temperature(
    logits: Any,
    labels: Any,
    mask: Any = None,
    *,
    weights: Any = None,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> float:
    """Temperature T > 0 minimising the mean binary NLL of sigmoid(logits / T) over `mask`.

    `logits`, `labels` (0/1), `mask` (bool, optional) and `weights` (non-negative, optional;
    e.g. `region_weights`): numpy arrays or torch tensors of one shape, e.g. the lesion head's
    logits and reference masks on a validation split, pooled. With `weights` the NLL is their
    weighted mean. The NLL is convex in 1/T, so a bounded 1-D search (scipy's Brent, `bounds`
    on T) finds the global minimum; a result at a bound means the head is far from calibrated,
    and a warning says so. Apply with `apply_temperature`. T > 1 softens an over-confident head.
    """
    z, y, w = _fit_inputs(logits, labels, mask, weights, "fit_temperature")
    lo, hi = bounds
    if not 0 < lo < hi:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
    res = optimize.minimize_scalar(
        lambda inv_t: _nll(inv_t, z, y, w),
        bounds=(1.0 / hi, 1.0 / lo),
        method="bounded",
        options={"xatol": 1e-7},
    )
    t = float(1.0 / res.x)
    if min(abs(t - lo) / lo, abs(t - hi) / hi) < 1e-3:
        warnings.warn(
            f"fit_temperature: optimum at the bound T = {t:.3g} of {bounds}", RuntimeWarning, 2
        )
    return t


def fit_platt(
    logits: Any, labels: Any, mask: Any = None, *, weights: Any = None
) -> tuple[float, float]:
    """Platt scaling (Platt 1999): scale a > 0 and bias b minimising the (weighted) mean binary
    NLL of sigmoid(a * logits + b) over `mask`; arguments as `fit_temperature`. The NLL is
    convex in (a, b); L-BFGS from (1, 0) with its analytic gradient. A temperature is the
    special case b = 0, a = 1 / T; unlike it, a bias moves the 0.5 boundary (the mask)."""
    z, y, w = _fit_inputs(logits, labels, mask, weights, "fit_platt")
    wt = np.full(z.shape, 1.0 / z.size) if w is None else w

    def fun(ab: np.ndarray) -> tuple[float, np.ndarray]:
        s = ab[0] * z + ab[1]
        loss = np.logaddexp(0.0, s) - y * s
        r = wt * (np.exp(-np.logaddexp(0.0, -s)) - y)  # dNLL/ds per voxel
        return float(np.dot(wt, loss)), np.array([np.dot(r, z), r.sum()])

    res = optimize.minimize(fun, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    a, b = (float(v) for v in res.x)
    if not (math.isfinite(a) and a > 0 and math.isfinite(b)):
        raise ValueError(f"fit_platt: no usable fit (a = {a:.3g}, b = {b:.3g})")
    return a, b


def region_weights(brain: Any, neighbourhood: Any) -> np.ndarray:
    """Voxel weights for a calibration fit that counts the brain and the lesion neighbourhood
    equally: 0.5 / n_brain on every brain voxel plus 0.5 / n_neighbourhood on each neighbourhood
    voxel (a voxel of both gets both), 0 elsewhere. Without the neighbourhood term the ~99 % of
    brain voxels far from any lesion decide the fit (see NEIGHBOURHOOD_MM)."""
    b = _to_numpy(brain).astype(bool)
    nb = _to_numpy(neighbourhood).astype(bool)
    if b.shape != nb.shape:
        raise ValueError(f"neighbourhood shape {nb.shape} does not match brain shape {b.shape}")
    nb = nb & b
    if not b.any() or not nb.any():
        raise ValueError("region_weights needs brain and neighbourhood voxels")
    return b * (0.5 / b.sum()) + nb * (0.5 / nb.sum())


def apply_platt(logits: np.ndarray, scale: float, bias: float) -> np.ndarray:
    """Calibrated probabilities sigmoid(scale * logits + bias) (numpy, float32, same shape)."""
    if not (math.isfinite(scale) and scale > 0 and math.isfinite(bias)):
        raise ValueError(f"scale must be positive and bias finite, got {scale}, {bias}")
    z = np.asarray(logits, dtype=np.float64) * scale + bias
    return np.exp(-np.logaddexp(0.0, -z)).astype(np.float32)


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities sigmoid(logits / T) (numpy, float32, same shape)."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    # sigmoid via exp(-logaddexp(0, -z)): no overflow for large |z|.
    return np.exp(-np.logaddexp(0.0, -z)).astype(np.float32)
