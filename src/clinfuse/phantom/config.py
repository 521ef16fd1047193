"""`PhantomConfig`: every knob of the synthetic stroke phantom, validated once."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from clinfuse.choices import MRI_CONTRASTS
from clinfuse.errors import ClinfuseInputError

MriContrast = Literal["T1", "T2", "ADC", "FLAIR", "DWI"]
LesionKind = Literal["ischaemic", "haemorrhagic", "none"]
# What `--contrast mixed` cycles through (kept at three so existing seeded datasets, the demo
# and the benchmark phantoms keep their contrasts); `--contrast all` cycles all five.
MIXED_CONTRASTS: tuple[str, ...] = ("T1", "T2", "ADC")
LESION_KINDS: tuple[str, ...] = ("ischaemic", "haemorrhagic", "none")
# Where an ischaemic lesion may be drawn (`PhantomConfig.ischaemic_territories`): a whole
# vascular territory (MCA, ACA, PCA: a wedge of 9 mL or more on the standard grid), a lacune
# (a small deep sphere, up to ~1 mL), or a branch infarct (a small cortical-subcortical wedge
# of one territory's branch, ~1-10 mL: the sizes neither of the others reaches).
ISCHAEMIC_TERRITORIES: tuple[str, ...] = ("MCA", "ACA", "PCA", "lacune")
TERRITORY_CHOICES: tuple[str, ...] = (*ISCHAEMIC_TERRITORIES, "branch")


def parse_territories(text: str | None) -> tuple[str, ...]:
    """A `--territories` comma list ("branch", " MCA, lacune ") as `ischaemic_territories`;
    None or empty: the default `ISCHAEMIC_TERRITORIES`. An unknown name is a user error."""
    names = tuple(s.strip() for s in (text or "").split(",") if s.strip())
    bad = [s for s in names if s not in TERRITORY_CHOICES]
    if bad:
        raise ClinfuseInputError(
            f"unknown territory {', '.join(bad)} in ischaemic_territories (--territories): "
            f"choose from {', '.join(TERRITORY_CHOICES)}"
        )
    return names or ISCHAEMIC_TERRITORIES


@dataclass(frozen=True)
class PhantomConfig:
    """One phantom's geometry, contrast and corruptions.

    `shape` and `spacing` are in array order: (x, y, z) for 3D (RAS+, see ARCHITECTURE.md) or
    (x, y) for a single axial slice (2D mode). Spacing is in mm.
    """

    shape: tuple[int, ...] = (64, 64, 48)
    spacing: tuple[float, ...] = (2.0, 2.0, 2.0)
    mri_contrast: MriContrast = "T1"
    lesion: LesionKind = "ischaemic"
    n_lesions: int = 1
    # Total lesion volume range (mL, low, high): lesion draws outside it are redrawn (issue 10's
    # 0.5-80 mL for lesion data and the demo). None keeps every draw that shows on the grid,
    # which includes lacunes below 0.5 mL (the seeded benchmark phantoms were made that way).
    lesion_ml: tuple[float, float] | None = None
    fracture: bool = False
    # Rigid misregistration of the CT relative to the MRI: translation norm (mm) and rotation
    # angle (degrees) about a random axis through the volume centre. (0, 0) = perfectly aligned.
    misregistration: tuple[float, float] = (0.0, 0.0)
    mri_noise: float = 0.02  # Rician sigma as a fraction of the white-matter signal
    ct_noise_hu: float = 4.0  # Gaussian sigma in HU (head CT: a few HU in soft tissue)
    bias_field: float = 0.15  # amplitude of the log bias field on T1/T2 (0 = none)
    # Partial volume: labels are drawn on a grid `supersample` times finer along each axis and
    # averaged back, so edge voxels mix tissues as a real acquisition would. 1 = hard edges.
    supersample: int = 2
    # 2D mode: height of the axial slice as a fraction of the head's z semi-axis (above centre).
    slice_height: float = 0.2
    # Territories an ischaemic lesion is drawn in, cycled in a random order per phantom. The
    # default keeps every seeded phantom as it was; add "branch" for 1-10 mL infarcts.
    ischaemic_territories: tuple[str, ...] = ISCHAEMIC_TERRITORIES

    def __post_init__(self) -> None:
        _check(len(self.shape) in (2, 3), f"shape must have 2 or 3 entries, got {self.shape}")
        _check(
            len(self.spacing) == len(self.shape),
            f"spacing {self.spacing} must have one value per axis of shape {self.shape}",
        )
        _check(
            all(int(s) >= 8 for s in self.shape), f"every shape entry must be >= 8: {self.shape}"
        )
        _check(all(float(s) > 0 for s in self.spacing), f"spacing must be > 0: {self.spacing}")
        _check(
            self.mri_contrast in MRI_CONTRASTS,
            f"mri_contrast must be one of {MRI_CONTRASTS}, got {self.mri_contrast!r}",
        )
        _check(self.lesion in LESION_KINDS, f"lesion must be one of {LESION_KINDS}")
        _check(0 <= self.n_lesions <= 4, f"n_lesions must be 0..4, got {self.n_lesions}")
        if self.lesion_ml is not None:
            _check(
                len(self.lesion_ml) == 2 and 0 <= self.lesion_ml[0] <= self.lesion_ml[1],
                f"lesion_ml must be (low, high) mL with 0 <= low <= high, got {self.lesion_ml}",
            )
        _check(
            len(self.misregistration) == 2 and all(v >= 0 for v in self.misregistration),
            "misregistration must be (mm >= 0, degrees >= 0)",
        )
        _check(self.mri_noise >= 0 and self.ct_noise_hu >= 0, "noise levels must be >= 0")
        _check(0 <= self.bias_field <= 1, "bias_field must be in [0, 1]")
        _check(1 <= self.supersample <= 4, "supersample must be 1..4")
        _check(
            len(self.ischaemic_territories) > 0
            and all(t in TERRITORY_CHOICES for t in self.ischaemic_territories),
            f"ischaemic_territories must be a non-empty choice of {TERRITORY_CHOICES}, "
            f"got {self.ischaemic_territories}",
        )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return asdict(self)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ClinfuseInputError(f"invalid phantom config: {message}")
