"""Maximum fusion: F = max(MRI, CT) pixel-wise (bright bone from CT, bright tissue from MRI)."""

from __future__ import annotations

import numpy as np

from clinfuse.baselines._channels import CtChannel, sources, to_model_range
from clinfuse.preprocess.prepared import PreparedCase


def max_fusion(prepared: PreparedCase, *, ct_channel: CtChannel = "bone") -> np.ndarray:
    """Pixel-wise maximum of MRI and CT (model range, same shape, 2D or 3D)."""
    mri, ct = sources(prepared, ct_channel)
    return to_model_range(np.maximum(mri, ct))
