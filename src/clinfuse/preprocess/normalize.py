"""MRI robust intensity normalisation onto the model range and its inverse."""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.filters import threshold_otsu

from clinfuse.errors import ClinfuseInputError
from clinfuse.model_range import MODEL_RANGE

MRI_PERCENTILE = 99.5
"""Robust maximum: the 99.5th percentile ignores the few hot voxels (vessels, fat, artefacts)
that would squash the brain's contrast if the true maximum were mapped to +2."""


def head_foreground(x: np.ndarray) -> np.ndarray:
    """Voxels brighter than the Otsu threshold of the positive values: the head, not the air.

    Values are clipped at their 99.9th percentile first: a few very bright voxels (vessels,
    metal artefacts) would otherwise pull Otsu's threshold above the whole head.
    """
    pos = x[x > 0]
    if pos.size == 0 or float(pos.max()) == float(pos.min()):
        return x > 0
    pos = np.minimum(pos, np.percentile(pos, 99.9))
    if float(pos.max()) == float(pos.min()):
        return x > 0
    return x > threshold_otsu(pos)


def normalise_mri(
    x: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Map MRI intensities linearly so 0 -> -2 and the 99.5th percentile of the head foreground
    (or of `mask`, when given) -> +2, clipping to [-2, 2]. Returns (float32 array, params).

    Zero stays at -2 (air) rather than z-scoring, so the background matches CT air (-2) and the
    mapping is invertible with `denormalise_mri` (up to the clipping).
    """
    x = np.asarray(x, dtype=np.float32)
    fg = head_foreground(x) if mask is None else np.asarray(mask, dtype=bool)
    if fg.shape != x.shape:
        raise ValueError(f"mask shape {fg.shape} != image shape {x.shape}")
    vals = x[fg]
    scale = float(np.percentile(vals, MRI_PERCENTILE)) if vals.size else 0.0
    if not scale > 0:
        raise ClinfuseInputError(
            "MRI has no positive foreground intensities: cannot normalise (is it empty?)"
        )
    if float(x.max()) == float(x.min()):
        # a constant image has no soft-tissue contrast to keep: fusing it would silently
        # return CT-like bone on a flat field
        raise ClinfuseInputError(
            f"MRI is constant (every voxel {float(x.max()):g}): no contrast to fuse; "
            "wrong file or a failed export?"
        )
    lo, hi = MODEL_RANGE
    y = np.clip(x / scale * (hi - lo) + lo, lo, hi).astype(np.float32)
    params = {
        "method": "robust_percentile",
        "percentile": MRI_PERCENTILE,
        "foreground": "otsu" if mask is None else "mask",
        "zero": 0.0,
        "scale": scale,
        "n_foreground": int(vals.size),
    }
    return y, params


def denormalise_mri(y: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Inverse of `normalise_mri`: model range back to MRI units (clipped values stay clipped)."""
    lo, hi = MODEL_RANGE
    y = np.asarray(y, dtype=np.float64)
    return ((y - lo) / (hi - lo) * float(params["scale"]) + float(params["zero"])).astype(
        np.float32
    )
