"""The `Case`: one co-registered MRI/CT pair with optional ROI masks, in native intensities.

Array convention (everywhere in clinfuse): arrays are in the voxel order of the RAS+ canonical
NIfTI image, i.e. 3D arrays are (i, j, k) = (x, y, z) after `nibabel.as_closest_canonical`;
2D arrays are (rows, cols) as read from a PNG. Torch tensors are (B, C, *spatial).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from clinfuse.errors import ClinfuseInputError

CtKind = Literal["hu", "display"]
"""`hu`: CT in Hounsfield units. `display`: an already display-windowed 8-bit CT (Harvard PNGs),
whose HU cannot be recovered, so only a linear 0..255 -> [-2, 2] mapping applies."""

MASK_ROLES = ("brain", "bone", "lesion")


@dataclass
class Case:
    """A co-registered MRI/CT pair. `mri`/`ct` are float32 in native units; masks are bool."""

    case_id: str
    mri: np.ndarray
    ct: np.ndarray
    affine: np.ndarray  # 4x4 voxel -> RAS mm; for 2D, the in-plane part is used
    brain: np.ndarray | None = None
    bone: np.ndarray | None = None
    lesion: np.ndarray | None = None
    ct_kind: CtKind = "hu"
    sources: dict[str, str] = field(default_factory=dict)  # role -> file path (for messages)
    meta: dict[str, Any] = field(default_factory=dict)
    # role -> 4x4 affine for an array that is NOT on the MRI grid (`affine`); such arrays keep
    # their own shape and are resampled onto the MRI grid by `preprocess_case`. Empty = all on
    # the MRI grid (the usual, co-registered case).
    grids: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return int(self.mri.ndim)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis (from the affine's column norms)."""
        cols = np.linalg.norm(np.asarray(self.affine, dtype=np.float64)[:3, :3], axis=0)
        return tuple(float(c) for c in cols[: self.ndim])

    def masks(self) -> dict[str, np.ndarray]:
        """The masks that are present, by role."""
        out = {}
        for role in MASK_ROLES:
            m = getattr(self, role)
            if m is not None:
                out[role] = m
        return out

    def validate(self) -> None:
        """Raise `ClinfuseInputError` naming the file and problem if the case is inconsistent."""
        src = self.sources
        if self.mri.ndim not in (2, 3):
            raise ClinfuseInputError(f"MRI must be 2D or 3D, got {self.mri.ndim}D", src.get("mri"))
        if self.ct.ndim != self.mri.ndim:
            raise ClinfuseInputError(
                f"CT is {self.ct.ndim}D but the MRI is {self.mri.ndim}D (2D/3D mix)",
                src.get("ct"),
            )
        for role, arr in (("mri", self.mri), ("ct", self.ct)):
            if not np.all(np.isfinite(arr)):
                raise ClinfuseInputError(
                    f"{role.upper()} contains NaN or Inf values", src.get(role)
                )
        if "ct" not in self.grids and self.ct.shape != self.mri.shape:
            raise ClinfuseInputError(
                f"CT shape {self.ct.shape} does not match the MRI shape {self.mri.shape}",
                src.get("ct"),
            )
        for role, m in self.masks().items():
            if m.ndim != self.mri.ndim:
                raise ClinfuseInputError(
                    f"{role} mask is {m.ndim}D but the MRI is {self.mri.ndim}D (2D/3D mix)",
                    src.get(role),
                )
            if role not in self.grids and m.shape != self.mri.shape:
                raise ClinfuseInputError(
                    f"{role} mask shape {m.shape} does not match the MRI shape {self.mri.shape}",
                    src.get(role),
                )
            if m.dtype != np.bool_:
                raise ClinfuseInputError(f"{role} mask must be boolean", src.get(role))
            if role != "lesion" and not m.any():
                raise ClinfuseInputError(f"{role} mask is empty", src.get(role))
