"""`PreparedCase`: a case on one grid, in model range [-2, 2], with brain and bone masks.

Produced by `clinfuse.preprocess.pipeline.preprocess_case`; consumed by baselines, training,
fusion and evaluation. `record` holds every transform applied (JSON-serialisable) so that
fused intensities and geometry can be mapped back to the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clinfuse.io.case import CtKind


@dataclass
class PreparedCase:
    """Model-ready case. Images float32 in [-2, 2]; masks bool; all the same shape."""

    case_id: str
    mri: np.ndarray  # robust-normalised MRI
    ct: np.ndarray  # clinical window (centre 40, width 400)
    ct_bone: np.ndarray  # bone window (centre 500, width 2000)
    affine: np.ndarray  # 4x4 voxel -> RAS mm of this grid
    brain: np.ndarray  # always present: given or automatic
    bone: np.ndarray  # always present: given or automatic
    lesion: np.ndarray | None = None
    ct_kind: CtKind = "hu"
    mask_source: dict[str, str] = field(default_factory=dict)  # role -> "given" | "auto"
    record: dict[str, Any] = field(default_factory=dict)  # transforms, for mapping back

    @property
    def ndim(self) -> int:
        return int(self.mri.ndim)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.mri.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        cols = np.linalg.norm(np.asarray(self.affine, dtype=np.float64)[:3, :3], axis=0)
        return tuple(float(c) for c in cols[: self.ndim])

    @property
    def mri_contrast(self) -> str | None:
        """The MRI sequence (`choices.MRI_CONTRASTS`) when the user or the dataset said it,
        else None (unknown)."""
        value = self.record.get("mri_contrast")
        return None if value is None else str(value)

    def stack(self) -> np.ndarray:
        """Conditioning channels `[mri, ct, ct_bone]`, shape (3, *spatial), float32."""
        return np.stack([self.mri, self.ct, self.ct_bone]).astype(np.float32)
