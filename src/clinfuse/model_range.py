"""The model range: every image the model sees or produces is float32 in [-2, 2], air = -2
(docs/ARCHITECTURE.md). Defined once here; windowing, normalisation, sampling, losses and
metrics import it."""

from __future__ import annotations

MODEL_RANGE: tuple[float, float] = (-2.0, 2.0)
"""(low, high) of the model range; low is air in MRI and in CT."""
DATA_RANGE: float = MODEL_RANGE[1] - MODEL_RANGE[0]
"""4.0: the data range of SSIM and PSNR computed in the model range."""
