"""ROI composite: MRI inside the brain mask, bone-window CT inside the bone mask, average elsewhere.

With exact masks this copies the sources inside each ROI, so it is the ceiling of ROI-SSIM by
construction. With `feather_sigma > 0` the mask edges are blurred (in voxels), which is the
training target of the diffusion model (docs/METHOD.md): a hard-edged target would teach seams.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from clinfuse.preprocess.prepared import PreparedCase


def roi_composite(
    mri: np.ndarray,
    ct: np.ndarray,
    brain: np.ndarray,
    bone: np.ndarray,
    *,
    feather_sigma: float = 0.0,
) -> np.ndarray:
    """Composite of model-range images (2D or 3D, same shape). `ct` is the bone-window CT.

    Weights: w_brain = blur(brain), w_bone = blur(bone) * (1 - w_brain); the rest is the average.
    Returns float32 of the input shape.
    """
    if not (mri.shape == ct.shape == brain.shape == bone.shape):
        raise ValueError(
            f"shapes differ: mri {mri.shape}, ct {ct.shape}, brain {brain.shape}, bone {bone.shape}"
        )
    wb = brain.astype(np.float64)
    wo = bone.astype(np.float64)
    if feather_sigma > 0:
        wb = gaussian_filter(wb, feather_sigma)
        wo = gaussian_filter(wo, feather_sigma)
    wo = wo * (1.0 - wb)
    rest = np.clip(1.0 - wb - wo, 0.0, 1.0)
    out = wb * mri + wo * ct + rest * 0.5 * (mri + ct)
    return out.astype(np.float32)


def composite_fusion(prepared: PreparedCase, *, feather_sigma: float = 0.0) -> np.ndarray:
    """ROI composite of a prepared case: MRI in brain, bone-window CT in bone, average elsewhere.

    With exact (phantom) masks this is the ceiling of ROI-SSIM; with automatic masks it is as
    good as the masks.
    """
    return roi_composite(
        prepared.mri, prepared.ct_bone, prepared.brain, prepared.bone, feather_sigma=feather_sigma
    )
