"""The eight standard 2D fusion metrics (EN, SD, SF, MI, SCD, VIF, Qabf, SSIM) exactly as
docs/METRICS.md defines them, on 0..255 grey values, comparable with the published evaluators."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import convolve2d
from skimage.metrics import structural_similarity

from clinfuse.errors import ClinfuseInputError

METRIC_NAMES = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")


def to_uint8(f: np.ndarray) -> np.ndarray:
    """Min-max scale `f` to 0..255 and round, as a fused image is saved to PNG (uint8).

    A constant image maps to zeros. NaN or infinite values raise `ClinfuseInputError`.
    """
    x = np.asarray(f, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ClinfuseInputError("fused image contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        return np.zeros(x.shape, dtype=np.uint8)
    return np.round((x - lo) / (hi - lo) * 255.0).astype(np.uint8)


def _grey(img: np.ndarray, name: str) -> np.ndarray:
    """Validate a 2D image of grey values 0..255 and return it as float64."""
    a = np.asarray(img)
    if a.ndim != 2:
        raise ClinfuseInputError(f"{name} must be a 2D image, got shape {a.shape}")
    x = a.astype(np.float64)
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 255 or (x != np.round(x)).any():
        raise ClinfuseInputError(f"{name} must hold integer grey values in 0..255")
    return x


def entropy(f: np.ndarray) -> float:
    """EN: Shannon entropy (bits) of the 256-bin histogram of the 0..255 image `f`."""
    x = _grey(f, "F").astype(np.int64)
    p = np.bincount(x.ravel(), minlength=256) / x.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def standard_deviation(f: np.ndarray) -> float:
    """SD: population standard deviation of the grey values."""
    return float(np.std(_grey(f, "F")))


def spatial_frequency(f: np.ndarray) -> float:
    """SF = sqrt(mean(dx^2) + mean(dy^2)), forward differences along columns and rows."""
    x = _grey(f, "F")
    dx = x[:, 1:] - x[:, :-1]
    dy = x[1:, :] - x[:-1, :]
    return float(np.sqrt(np.mean(dx**2) + np.mean(dy**2)))


def _mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """MI (nats) of the joint histogram of the exact integer values 0..255 of x and y."""
    xi, yi = x.astype(np.int64).ravel(), y.astype(np.int64).ravel()
    joint = np.bincount(xi * 256 + yi, minlength=256 * 256).reshape(256, 256) / xi.size
    px = joint.sum(axis=1, keepdims=True)
    py = joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (px @ py)[nz])).sum())


def mutual_information(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """MI = MI(F, A) + MI(F, B), natural log."""
    x_a, x_b, x_f = _grey(a, "A"), _grey(b, "B"), _grey(f, "F")
    return _mutual_information(x_f, x_a) + _mutual_information(x_f, x_b)


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    den = math.sqrt(float((xc**2).sum()) * float((yc**2).sum()))
    return float((xc * yc).sum()) / den if den > 0 else float("nan")


def scd(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """SCD = corr(A, F - B) + corr(B, F - A), Pearson; NaN when a term has zero variance."""
    x_a, x_b, x_f = _grey(a, "A"), _grey(b, "B"), _grey(f, "F")
    return _corr(x_a, x_f - x_b) + _corr(x_b, x_f - x_a)


def gaussian_window_1d(n: int, sd: float) -> np.ndarray:
    """1D factor of MATLAB's fspecial('gaussian', n, sd): the 2D window is its outer product.

    fspecial also zeroes values below eps * max; for the VIF windows (n <= 17, sd = n / 5) the
    smallest value is 4e-3 of the maximum, so that never applies and the window is separable.
    """
    r = (n - 1) / 2.0
    x = np.arange(-r, r + 1)
    h = np.exp(-(x * x) / (2.0 * sd * sd))
    return h / h.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """'valid' 2D convolution with the separable symmetric window outer(w, w)."""
    n = len(w)
    x = sliding_window_view(x, n, axis=0) @ w
    return sliding_window_view(x, n, axis=1) @ w


def _vif_pair(ref: np.ndarray, dist: np.ndarray) -> float:
    """Pixel-domain VIF (Sheikh & Bovik) of `dist` against `ref`, 4 scales, sigma_n^2 = 2."""
    sigma_nsq, eps = 2.0, 1e-10
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1  # 17, 9, 5, 3
        win = gaussian_window_1d(n, n / 5.0)
        if scale > 1:
            ref = _filter_valid(ref, win)[::2, ::2]
            dist = _filter_valid(dist, win)[::2, ::2]
        mu1 = _filter_valid(ref, win)
        mu2 = _filter_valid(dist, win)
        s1 = np.maximum(_filter_valid(ref * ref, win) - mu1 * mu1, 0)
        s2 = np.maximum(_filter_valid(dist * dist, win) - mu2 * mu2, 0)
        s12 = _filter_valid(ref * dist, win) - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        # The published evaluator's special cases, in its order: flat reference, flat
        # distorted image, negative gain, and a floor on the residual variance.
        flat1 = s1 < eps
        g[flat1] = 0
        sv[flat1] = s2[flat1]
        s1[flat1] = 0
        flat2 = s2 < eps
        g[flat2] = 0
        sv[flat2] = 0
        neg = g < 0
        sv[neg] = s2[neg]
        g[neg] = 0
        sv[sv <= eps] = eps
        num += float(np.sum(np.log10(1 + g * g * s1 / (sv + sigma_nsq))))
        den += float(np.sum(np.log10(1 + s1 / sigma_nsq)))
    # A flat reference (den = 0) scores 1, as in the published evaluator.
    return num / den if den > 0 else 1.0


def vif(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """VIF = VIF(A, F) + VIF(B, F): 4 scales, Gaussian windows 17/9/5/3 (sigma N/5), 'valid'
    convolution, downsampling by 2 between scales, sigma_n^2 = 2, eps 1e-10."""
    x_a, x_b, x_f = _grey(a, "A"), _grey(b, "B"), _grey(f, "F")
    return _vif_pair(x_a, x_f) + _vif_pair(x_b, x_f)


# Sobel kernels of the published evaluator ('same' convolution, zero padding).
_SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)


def _gradient(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sx = convolve2d(x, _SOBEL_X, mode="same")
    sy = convolve2d(x, _SOBEL_Y, mode="same")
    g = np.sqrt(sx * sx + sy * sy)
    alpha = np.full(x.shape, np.pi / 2)
    nz = sx != 0
    alpha[nz] = np.arctan(sy[nz] / sx[nz])
    return g, alpha


def _edge_preservation(
    g_s: np.ndarray, a_s: np.ndarray, g_f: np.ndarray, a_f: np.ndarray
) -> np.ndarray:
    """Q_SF of Xydeas & Petrovic: sigmoid strength term times sigmoid orientation term."""
    with np.errstate(invalid="ignore", divide="ignore"):
        g_rel = np.where(g_s == g_f, 1.0, np.minimum(g_s, g_f) / np.maximum(g_s, g_f))
    a_rel = 1 - np.abs(a_s - a_f) / (np.pi / 2)
    q_g = 0.9994 / (1 + np.exp(-15 * (g_rel - 0.5)))
    q_a = 0.9879 / (1 + np.exp(-22 * (a_rel - 0.8)))
    return q_g * q_a


def qabf(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Qabf = sum(Q_AF gA + Q_BF gB) / sum(gA + gB) with Sobel gradients (METRICS.md).

    G_AF = min(gA, gF) / max(gA, gF), 1 where equal (METRICS.md; the CDDFuse evaluator puts gF
    there, which changes Q_g by < 6e-4 relative on those pixels only). 0 for flat A and B.
    """
    x_a, x_b, x_f = _grey(a, "A"), _grey(b, "B"), _grey(f, "F")
    g_a, a_a = _gradient(x_a)
    g_b, a_b = _gradient(x_b)
    g_f, a_f = _gradient(x_f)
    den = float(np.sum(g_a + g_b))
    if den == 0:
        return 0.0
    q_af = _edge_preservation(g_a, a_a, g_f, a_f)
    q_bf = _edge_preservation(g_b, a_b, g_f, a_f)
    return float(np.sum(q_af * g_a + q_bf * g_b)) / den


def ssim_sum(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """SSIM = SSIM(F, A) + SSIM(F, B) as the published evaluators computed it.

    They called `skimage` SSIM with its old defaults on float images of 0..255 values: 7x7
    uniform window, sample covariance, mean over the map without its 3-pixel border, and
    data_range taken from the float dtype's nominal range [-1, 1], i.e. 2 (not 255). So
    C1 = (0.01 * 2)^2 and C2 = (0.03 * 2)^2, which is what we pass explicitly.
    """
    x_a, x_b, x_f = _grey(a, "A"), _grey(b, "B"), _grey(f, "F")

    def one(x: np.ndarray, y: np.ndarray) -> float:
        return float(structural_similarity(x, y, win_size=7, data_range=2.0))

    return one(x_f, x_a) + one(x_f, x_b)


def fusion_metrics(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> dict[str, float]:
    """All eight metrics for sources `a` (MRI) and `b` (CT), 2D uint8 (0..255), and fused `f`.

    `f` of dtype uint8 is taken as saved; any other dtype is min-max scaled to 0..255 and
    rounded first (`to_uint8`). Keys exactly `EN, SD, SF, MI, SCD, VIF, Qabf, SSIM`.
    """
    f_arr = np.asarray(f)
    f8 = f_arr if f_arr.dtype == np.uint8 else to_uint8(f_arr)
    x_a, x_b = _grey(a, "A"), _grey(b, "B")
    if not (x_a.shape == x_b.shape == f8.shape):
        raise ClinfuseInputError(
            f"A {x_a.shape}, B {x_b.shape} and F {f8.shape} must have the same shape"
        )
    return {
        "EN": entropy(f8),
        "SD": standard_deviation(f8),
        "SF": spatial_frequency(f8),
        "MI": mutual_information(x_a, x_b, f8),
        "SCD": scd(x_a, x_b, f8),
        "VIF": vif(x_a, x_b, f8),
        "Qabf": qabf(x_a, x_b, f8),
        "SSIM": ssim_sum(x_a, x_b, f8),
    }
