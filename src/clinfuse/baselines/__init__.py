"""Classical fusion baselines, one file per method, registered by name in `BASELINES`.

Each takes a `PreparedCase` and returns a float32 array of its shape in model range [-2, 2].
All fuse the MRI with the bone-window CT (see `_channels.py` for why).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from clinfuse.baselines.average import average_fusion
from clinfuse.baselines.composite import composite_fusion, roi_composite
from clinfuse.baselines.laplacian import laplacian_fusion
from clinfuse.baselines.maximum import max_fusion
from clinfuse.baselines.wavelet import wavelet_fusion
from clinfuse.baselines.weighted import weighted_fusion
from clinfuse.preprocess.prepared import PreparedCase

BASELINES: dict[str, Callable[[PreparedCase], np.ndarray]] = {
    "average": average_fusion,
    "weighted": weighted_fusion,
    "max": max_fusion,
    "laplacian": laplacian_fusion,
    "wavelet": wavelet_fusion,
    "composite": composite_fusion,
}

__all__ = [
    "BASELINES",
    "average_fusion",
    "composite_fusion",
    "laplacian_fusion",
    "max_fusion",
    "roi_composite",
    "wavelet_fusion",
    "weighted_fusion",
]
