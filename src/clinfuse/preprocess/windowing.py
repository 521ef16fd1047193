"""CT intensity windows and their inverses: the proposal's clinical window and our bone window.

The clinical window (centre 40 HU, width 400 -> [-160, 240] HU -> [-2, 2]) is fixed by the
proposal, which fixed a real training failure by windowing instead of z-scoring CT. It clips
everything above 240 HU, so skull detail is lost; the bone window (centre 500, width 2000 ->
[-500, 1500] HU) keeps diploe (300-700 HU) and cortical bone (>1000 HU) apart, and bone is
judged against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clinfuse.model_range import MODEL_RANGE

__all__ = [
    "BONE_WINDOW",
    "CLINICAL_WINDOW",
    "MODEL_RANGE",
    "Window",
    "apply_window",
    "display_to_model",
    "invert_window",
    "model_to_display",
]


@dataclass(frozen=True)
class Window:
    """A CT display window in HU."""

    centre: float
    width: float

    @property
    def low(self) -> float:
        return self.centre - self.width / 2.0

    @property
    def high(self) -> float:
        return self.centre + self.width / 2.0


CLINICAL_WINDOW = Window(centre=40.0, width=400.0)  # brain window of the proposal
BONE_WINDOW = Window(centre=500.0, width=2000.0)  # keeps diploe vs cortical bone apart


def apply_window(hu: np.ndarray, window: Window) -> np.ndarray:
    """Map HU linearly from [low, high] onto [-2, 2], clipping outside. Same shape, float32."""
    lo, hi = MODEL_RANGE
    x = (np.asarray(hu, dtype=np.float64) - window.low) / window.width
    return (np.clip(x, 0.0, 1.0) * (hi - lo) + lo).astype(np.float32)


def invert_window(x: np.ndarray, window: Window) -> np.ndarray:
    """Map model-range values back to HU (clipped values come back at the window edge)."""
    lo, hi = MODEL_RANGE
    u = (np.asarray(x, dtype=np.float64) - lo) / (hi - lo)
    return (u * window.width + window.low).astype(np.float32)


def display_to_model(x: np.ndarray) -> np.ndarray:
    """An already display-windowed 8-bit image (0..255) linearly onto [-2, 2]."""
    lo, hi = MODEL_RANGE
    return (np.clip(np.asarray(x, dtype=np.float64), 0, 255) / 255.0 * (hi - lo) + lo).astype(
        np.float32
    )


def model_to_display(x: np.ndarray) -> np.ndarray:
    """Inverse of `display_to_model`, rounded to uint8."""
    lo, hi = MODEL_RANGE
    u = (np.clip(np.asarray(x, dtype=np.float64), lo, hi) - lo) / (hi - lo)
    return np.round(u * 255.0).astype(np.uint8)
