"""Registration jitter: random rigid misalignment of the CT (and its masks) relative to the MRI.

torchio-style: `sample_jitter` draws and returns the parameters (so they are logged and
replayable), `apply_jitter` applies them deterministically, in mm (spacing-aware).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import affine_transform
from scipy.spatial.transform import Rotation

from clinfuse.model_range import MODEL_RANGE
from clinfuse.training.config import JitterConfig

AIR = MODEL_RANGE[0]  # model-range value of air: what enters the field of view from outside


@dataclass(frozen=True)
class JitterParams:
    """One draw. `translation_mm` per array axis; `rotation_deg` per rotation axis
    (3D: about array axes 0, 1, 2; 2D: one in-plane angle). `applied` False = identity."""

    applied: bool
    translation_mm: tuple[float, ...]
    rotation_deg: tuple[float, ...]

    def as_row(self) -> dict[str, float]:
        """Flat columns for `RUN/jitter.csv` (3 translation and 3 rotation columns, 0-padded)."""
        t = list(self.translation_mm) + [0.0] * (3 - len(self.translation_mm))
        r = list(self.rotation_deg) + [0.0] * (3 - len(self.rotation_deg))
        row = {"applied": float(self.applied)}
        row.update({f"t{i}_mm": t[i] for i in range(3)})
        row.update({f"r{i}_deg": r[i] for i in range(3)})
        return row


def identity_jitter(ndim: int) -> JitterParams:
    """The no-op jitter for an `ndim`-D image."""
    return JitterParams(False, (0.0,) * ndim, (0.0,) * (3 if ndim == 3 else 1))


def sample_jitter(
    rng: np.random.Generator, cfg: JitterConfig, spacing: tuple[float, ...]
) -> JitterParams:
    """Draw one jitter: applied with probability `cfg.p`; translation and rotation uniform in
    [-max, max] per axis. `spacing` (mm per array axis) sets the dimension."""
    ndim = len(spacing)
    if ndim not in (2, 3):
        raise ValueError(f"jitter needs 2 or 3 spacing values, got {spacing}")
    n_rot = 3 if ndim == 3 else 1
    # Always draw the same number of values so one sample's draw never shifts the next ones.
    coin = rng.random()
    t = rng.uniform(-cfg.max_translation_mm, cfg.max_translation_mm, size=ndim)
    r = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg, size=n_rot)
    if not cfg.enabled or coin >= cfg.p:
        return identity_jitter(ndim)
    return JitterParams(True, tuple(float(x) for x in t), tuple(float(x) for x in r))


def _rotation_matrix(params: JitterParams, ndim: int) -> np.ndarray:
    if ndim == 3:
        return Rotation.from_euler("xyz", params.rotation_deg, degrees=True).as_matrix()
    a = np.deg2rad(params.rotation_deg[0])
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def apply_jitter(
    arrays: dict[str, np.ndarray], params: JitterParams, spacing: tuple[float, ...]
) -> dict[str, np.ndarray]:
    """Move each array rigidly by `params` about the grid centre, in physical mm.

    A point at voxel index p (mm position S p, S = diag(spacing)) moves to
    S^-1 (R S (p - c) + t) + c, so a translation of t mm moves content by t / spacing voxels.
    Boolean arrays are resampled nearest-neighbour, others linearly; outside the field of view
    images get air (-2) and masks False. Returns new arrays; inputs are not modified.
    """
    if not params.applied:
        return {k: v.copy() for k, v in arrays.items()}
    out = {}
    for key, arr in arrays.items():
        ndim = arr.ndim
        if len(spacing) != ndim:
            raise ValueError(f"'{key}' is {ndim}D but spacing has {len(spacing)} values")
        s = np.asarray(spacing, dtype=np.float64)
        rot = _rotation_matrix(params, ndim)
        t = np.asarray(params.translation_mm, dtype=np.float64)
        centre = (np.asarray(arr.shape, dtype=np.float64) - 1.0) / 2.0
        # affine_transform maps output index o to input index: i = M o + offset (the inverse).
        matrix = (rot.T * s[None, :]) / s[:, None]  # S^-1 R^T S
        offset = centre - matrix @ centre - (rot.T @ t) / s
        if arr.dtype == np.bool_:
            moved = affine_transform(
                arr.astype(np.uint8), matrix, offset, order=0, mode="constant", cval=0
            )
            out[key] = moved.astype(bool)
        else:
            out[key] = affine_transform(
                arr.astype(np.float32), matrix, offset, order=1, mode="constant", cval=AIR
            ).astype(np.float32)
    return out
