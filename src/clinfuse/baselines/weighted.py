"""Weighted fusion: F = 0.7 MRI + 0.3 CT (MRI-dominant, as the proposal's baseline)."""

from __future__ import annotations

import numpy as np

from clinfuse.baselines._channels import CtChannel, sources, to_model_range
from clinfuse.preprocess.prepared import PreparedCase

MRI_WEIGHT = 0.7  # the proposal's weighted baseline: soft tissue dominates, CT adds bone


def weighted_fusion(
    prepared: PreparedCase, *, mri_weight: float = MRI_WEIGHT, ct_channel: CtChannel = "bone"
) -> np.ndarray:
    """`mri_weight * MRI + (1 - mri_weight) * CT` (model range, same shape, 2D or 3D)."""
    if not 0.0 <= mri_weight <= 1.0:
        raise ValueError(f"mri_weight must be in [0, 1], got {mri_weight}")
    mri, ct = sources(prepared, ct_channel)
    return to_model_range(mri_weight * mri + (1.0 - mri_weight) * ct)
