"""Which CT channel the classical baselines fuse, and the shared output convention.

Decision: every baseline fuses the MRI with the **bone-window** CT (`PreparedCase.ct_bone`).
Bone is judged against the bone window (the clinical window clips everything above 240 HU, so a
fusion of it cannot show skull structure), and the ROI composite copies the bone window by
contract; using the same channel everywhere keeps the baselines comparable. For display CT
(Harvard PNGs) both channels are the same image. `ct_channel="clinical"` selects the proposal's
clinical window instead (an ablation).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from clinfuse.model_range import MODEL_RANGE
from clinfuse.preprocess.prepared import PreparedCase

CtChannel = Literal["bone", "clinical"]


def sources(
    prepared: PreparedCase, ct_channel: CtChannel = "bone"
) -> tuple[np.ndarray, np.ndarray]:
    """The (MRI, CT) pair a baseline fuses, as float64 arrays of the same shape."""
    if ct_channel == "bone":
        ct = prepared.ct_bone
    elif ct_channel == "clinical":
        ct = prepared.ct
    else:
        raise ValueError(f"ct_channel must be 'bone' or 'clinical', got {ct_channel!r}")
    mri = np.asarray(prepared.mri, dtype=np.float64)
    ct = np.asarray(ct, dtype=np.float64)
    if mri.shape != ct.shape:
        raise ValueError(f"MRI shape {mri.shape} and CT shape {ct.shape} differ")
    return mri, ct


def to_model_range(x: np.ndarray) -> np.ndarray:
    """Clip to [-2, 2] and cast to float32.

    Pyramid and wavelet reconstructions overshoot a little at edges (max-abs selection mixes
    coefficients of two images); the model range is a contract, so the overshoot is clipped.
    """
    return np.clip(x, *MODEL_RANGE).astype(np.float32)
