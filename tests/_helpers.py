"""Shared test fixtures as plain functions (imported as `from _helpers import ...`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ball(
    shape: Sequence[int],
    centre_mm: Sequence[float],
    radius_mm: float,
    spacing: Sequence[float],
) -> np.ndarray:
    """Bool mask of the voxels whose centres lie within `radius_mm` of `centre_mm` (2D or 3D).

    Voxel i along an axis sits at i * spacing mm, so with spacing 1 the centre is in voxels.
    """
    grids = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    d2 = sum((g - c) ** 2 for g, c in zip(grids, centre_mm, strict=True))
    return d2 <= radius_mm**2
