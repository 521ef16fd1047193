"""Laplacian-pyramid fusion (Burt & Adelson): max-abs detail selection, averaged base; 2D and 3D."""

from __future__ import annotations

import numpy as np
from skimage.transform import pyramid_reduce, resize

from clinfuse.baselines._channels import CtChannel, sources, to_model_range
from clinfuse.preprocess.prepared import PreparedCase

MIN_TOP_SIZE = 4  # stop before the coarsest level gets smaller than this along any axis


def _expand(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    # Linear upsampling to the exact finer shape (odd sizes included). Any operator gives exact
    # reconstruction here, because each detail level is defined with this same operator.
    return resize(x, shape, order=1, mode="reflect", anti_aliasing=False, preserve_range=True)


def laplacian_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    """Detail levels (finest first) followed by the coarsest Gaussian level.

    `x` is 2D or 3D float; `levels` is the number of detail levels (clamped so the coarsest level
    keeps at least `MIN_TOP_SIZE` voxels per axis). `sum` of the expanded levels gives `x` back
    exactly (`reconstruct_laplacian`).
    """
    if levels < 0:
        raise ValueError(f"levels must be >= 0, got {levels}")
    out: list[np.ndarray] = []
    g = np.asarray(x, dtype=np.float64)
    for _ in range(levels):
        if min(g.shape) // 2 < MIN_TOP_SIZE:
            break
        # Gaussian blur (sigma = 2/3 for downscale 2, skimage's default) then decimate by 2.
        g_next = pyramid_reduce(g, downscale=2, mode="reflect", preserve_range=True)
        out.append(g - _expand(g_next, g.shape))
        g = g_next
    out.append(g)
    return out


def reconstruct_laplacian(pyramid: list[np.ndarray]) -> np.ndarray:
    """Collapse a pyramid made by `laplacian_pyramid` back into an image."""
    g = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        g = detail + _expand(g, detail.shape)
    return g


def laplacian_fusion(
    prepared: PreparedCase, *, levels: int = 4, ct_channel: CtChannel = "bone"
) -> np.ndarray:
    """Fuse MRI and CT pyramids: per coefficient the detail with larger |value|, mean base."""
    mri, ct = sources(prepared, ct_channel)
    pa = laplacian_pyramid(mri, levels)
    pb = laplacian_pyramid(ct, levels)
    fused = [np.where(np.abs(a) >= np.abs(b), a, b) for a, b in zip(pa[:-1], pb[:-1], strict=True)]
    fused.append(0.5 * (pa[-1] + pb[-1]))
    return to_model_range(reconstruct_laplacian(fused))
