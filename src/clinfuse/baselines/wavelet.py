"""Discrete-wavelet fusion (PyWavelets `wavedecn`): max-abs details, averaged approximation."""

from __future__ import annotations

import numpy as np
import pywt

from clinfuse.baselines._channels import CtChannel, sources, to_model_range
from clinfuse.preprocess.prepared import PreparedCase

WAVELET = "db2"  # short support (4 taps): little ringing around the skull edge
LEVELS = 3


def wavelet_fuse_arrays(
    a: np.ndarray, b: np.ndarray, *, wavelet: str = WAVELET, levels: int = LEVELS
) -> np.ndarray:
    """Fuse two same-shape 2D/3D arrays in the wavelet domain; returns float64 of that shape.

    The approximation band is averaged; in every detail band the coefficient with the larger
    magnitude is kept. `levels` is clamped to the deepest level the shape allows.
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    max_level = pywt.dwtn_max_level(a.shape, wavelet)
    level = max(1, min(levels, max_level))
    ca = pywt.wavedecn(a, wavelet, mode="symmetric", level=level)
    cb = pywt.wavedecn(b, wavelet, mode="symmetric", level=level)
    fused: list = [0.5 * (ca[0] + cb[0])]
    for da, db in zip(ca[1:], cb[1:], strict=True):
        fused.append({k: np.where(np.abs(da[k]) >= np.abs(db[k]), da[k], db[k]) for k in da})
    rec = pywt.waverecn(fused, wavelet, mode="symmetric")
    # waverecn may return one extra sample per odd-sized axis: crop back to the input shape.
    return rec[tuple(slice(0, s) for s in a.shape)]


def wavelet_fusion(
    prepared: PreparedCase,
    *,
    wavelet: str = WAVELET,
    levels: int = LEVELS,
    ct_channel: CtChannel = "bone",
) -> np.ndarray:
    """Wavelet fusion of MRI and CT (model range, same shape, 2D or 3D)."""
    mri, ct = sources(prepared, ct_channel)
    return to_model_range(wavelet_fuse_arrays(mri, ct, wavelet=wavelet, levels=levels))
