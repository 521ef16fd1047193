"""Average fusion: F = (MRI + CT) / 2, the simplest classical baseline."""

from __future__ import annotations

import numpy as np

from clinfuse.baselines._channels import CtChannel, sources, to_model_range
from clinfuse.preprocess.prepared import PreparedCase


def average_fusion(prepared: PreparedCase, *, ct_channel: CtChannel = "bone") -> np.ndarray:
    """Pixel-wise mean of MRI and CT (model range in and out, same shape, 2D or 3D)."""
    mri, ct = sources(prepared, ct_channel)
    return to_model_range(0.5 * (mri + ct))
