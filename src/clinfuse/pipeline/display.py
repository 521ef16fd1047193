"""`fused_display.png`: three orthogonal planes through the centre of the fused volume with
orientation markers (R/L, A/P, S/I) placed from the affine, so any voxel order (LAS, LPI,
oblique) shows the patient's left where the marker says.

Radiological convention: the patient's right on the left of the screen in the axial and
coronal planes, anterior on the left in the sagittal plane, superior at the top.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# world direction pair -> (screen start, screen end) letters of the convention above
_AXIAL = (("R", "L"), ("A", "P"))  # (horizontal left->right, vertical top->bottom)
_CORONAL = (("R", "L"), ("S", "I"))
_SAGITTAL = (("A", "P"), ("S", "I"))
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


@dataclass
class Plane:
    """One displayed plane: `image` (rows top->bottom, columns left->right on the screen), the
    letter at each screen edge, and the pixel aspect (row mm / column mm)."""

    name: str
    image: np.ndarray
    left: str
    right: str
    top: str
    bottom: str
    aspect: float


def _axis_toward(codes: tuple[str, ...], letter: str) -> tuple[int, bool]:
    """The array axis along `letter`'s world direction, and whether its index increases
    toward `letter` (True) or away from it."""
    for i, c in enumerate(codes):
        if c == letter:
            return i, True
        if c == _OPPOSITE[letter]:
            return i, False
    raise ValueError(f"no axis along {letter} in {codes}")


def orthogonal_planes(volume: np.ndarray, affine: np.ndarray) -> list[Plane]:
    """Axial, coronal and sagittal planes through the centre of `volume` (3D, any voxel
    order), each arranged on the screen by the radiological convention from `affine`'s
    closest axis codes (`nibabel.aff2axcodes`)."""
    import nibabel as nib

    vol = np.asarray(volume)
    codes = tuple(nib.aff2axcodes(np.asarray(affine, np.float64)))
    spacing = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    planes = []
    for name, (horiz, vert) in (("axial", _AXIAL), ("coronal", _CORONAL), ("sagittal", _SAGITTAL)):
        h_ax, h_up = _axis_toward(codes, horiz[1])  # columns increase toward the right letter
        v_ax, v_up = _axis_toward(codes, vert[1])  # rows increase toward the bottom letter
        fixed = ({0, 1, 2} - {h_ax, v_ax}).pop()
        index = [slice(None)] * 3
        index[fixed] = vol.shape[fixed] // 2
        sl = vol[tuple(index)]
        kept = [a for a in range(3) if a != fixed]
        img = sl if kept.index(v_ax) == 0 else sl.T  # rows = vertical axis
        if not v_up:
            img = img[::-1]
        if not h_up:
            img = img[:, ::-1]
        aspect = float(spacing[v_ax] / spacing[h_ax])
        planes.append(Plane(name, np.ascontiguousarray(img), *horiz, *vert, aspect))
    return planes


def save_display(
    path: str | Path,
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    vrange: tuple[float, float],
    title: str = "",
) -> Path:
    """Write the three planes of `orthogonal_planes` side by side as a PNG (grey, fixed window
    `vrange`), with the orientation letters at the edges of each plane. Atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clinfuse.io.atomic import atomic_write

    planes = orthogonal_planes(volume, affine)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), facecolor="black")
    for ax, p in zip(axes, planes, strict=True):
        ax.imshow(p.image, cmap="gray", vmin=vrange[0], vmax=vrange[1], aspect=p.aspect)
        ax.set_title(p.name, color="white", fontsize=12)
        ax.axis("off")
        style = {"color": "yellow", "fontsize": 14, "fontweight": "bold", "transform": ax.transAxes}
        ax.text(0.02, 0.5, p.left, ha="left", va="center", **style)
        ax.text(0.98, 0.5, p.right, ha="right", va="center", **style)
        ax.text(0.5, 0.98, p.top, ha="center", va="top", **style)
        ax.text(0.5, 0.02, p.bottom, ha="center", va="bottom", **style)
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, facecolor="black")
    plt.close(fig)
    return path
