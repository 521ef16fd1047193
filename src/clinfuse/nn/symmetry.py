"""The head's mid-sagittal plane as a rigid plane, and images reflected about it.

The lesion head's mirror channels compare each voxel with its contralateral twin. Session 4's
mirror (`lesion_head.mid_sagittal_shift`) is a left-right shift only: on a head that is turned
(yaw) or tilted (roll) in its volume, as real heads are, it pairs voxels with the wrong twin
(session 19). Here the plane is rigid: a unit normal tilted from the volume's x axis by a yaw
(toward y) and a roll (toward z) and an offset, found as the plane that maximises the
correlation of the head's voxels with their reflections (the symmetry criterion of mid-sagittal
plane methods, e.g. Liu, Collins & Rothfus 2001; Tuzikov, Colliot & Bloch 2003) on a copy of
about 4 mm voxels with its ~8 mm blur removed, under a weak prior toward upright, by a
coarse-to-fine grid search. On lesion-free real pairs it doubles the brain's MRI-vs-twin
correlation (0.28 -> 0.55, docs/TRAINING.md session 20); a head retrained on it found more
lesions but kept its false ones, which are really asymmetric CSF-like tissue. Images are then
reflected with `grid_sample`, so a gradient flows from the mirror channels back to the image
(the guidance of x̂0 keeps it).

Written here: MONAI, SimpleITK and scikit-image have no mid-sagittal plane estimator (a
registration of the image to its flipped copy gives a general improper rigid map, not a plane).

Coordinates are voxel indices of the volume, axis 0 = RAS x (left-right), as in the rest of the
lesion head; the volumes it reads are isotropic (the model grid), so angles are true angles.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

COARSE_VOXELS = 48  # longest axis of the search copy (a 96-voxel, 2 mm grid -> 4 mm)
MAX_ANGLE = 12.0  # degrees searched either side of the volume's x axis (yaw and roll)
HEAD_LEVEL = 0.1  # head voxels: MRI above this share of its range (as `mid_sagittal_shift`)
HIGH_PASS = 2.0  # coarse voxels (~8 mm): the Gaussian subtracted before correlating
ANGLE_PRIOR = 1e-3  # correlation charged per squared degree of yaw and of roll
# A mask component this close (voxels, 26-neighbour steps) to another's mirror image lies where
# the mirror channels show that other one: its "ghost" (session 23, `near_mirror_image`).
GHOST_MARGIN_VOXELS = 2


@dataclass(frozen=True)
class MirrorPlane:
    """The plane ``normal · p = offset`` (voxel coordinates `p`), the normal ∝ (1, tan yaw, tan
    roll): `yaw` tilts it from axis 0 toward axis 1, `roll` toward axis 2 (degrees; 2D volumes
    have no roll)."""

    yaw: float = 0.0
    roll: float = 0.0
    offset: float = 0.0

    def normal(self, ndim: int = 3) -> tuple[float, ...]:
        """The unit normal in `ndim` dimensions (2 or 3)."""
        parts = [1.0, math.tan(math.radians(self.yaw))]
        if ndim == 3:
            parts.append(math.tan(math.radians(self.roll)))
        elif self.roll != 0.0:
            raise ValueError("a 2D plane has no roll")
        norm = math.sqrt(sum(v * v for v in parts))
        return tuple(v / norm for v in parts)

    @classmethod
    def from_shift(cls, shift: int, n: int) -> MirrorPlane:
        """The plane of the shift-only mirror ``out[i] = x[n - 1 - i + shift]`` along axis 0."""
        return cls(0.0, 0.0, 0.5 * (n - 1 + shift))

    def flipped(self, n: int, ndim: int = 3) -> MirrorPlane:
        """This plane for the volume flipped along axis 0 (`n` voxels): ``p0 -> n - 1 - p0``."""
        a = self.normal(ndim)[0]
        return MirrorPlane(-self.yaw, -self.roll, a * (n - 1) - self.offset)


def reflected_points(points: torch.Tensor, plane: MirrorPlane) -> torch.Tensor:
    """`points` (..., ndim) in voxel coordinates reflected about `plane`."""
    ndim = points.shape[-1]
    n = torch.tensor(plane.normal(ndim), dtype=points.dtype, device=points.device)
    dist = points @ n - plane.offset
    return points - 2.0 * dist[..., None] * n


def _normalised(points: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Voxel coordinates (..., ndim) -> `grid_sample`'s [-1, 1] coordinates (last axis first,
    ``align_corners=True``)."""
    cols = []
    for k in reversed(range(len(shape))):
        size = max(int(shape[k]) - 1, 1)
        cols.append(2.0 * points[..., k] / size - 1.0)
    return torch.stack(cols, dim=-1)


def reflect(x: torch.Tensor, plane: MirrorPlane) -> torch.Tensor:
    """`x` (C, *S) reflected about `plane`: ``out[p] = x[reflection of p]``, (bi/tri)linear,
    each channel's edge value where the twin lies outside the volume. Differentiable in `x`."""
    shape = tuple(x.shape[1:])
    axes = [torch.arange(n, dtype=torch.float32, device=x.device) for n in shape]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    grid = _normalised(reflected_points(points, plane), shape).to(x.dtype)
    out = F.grid_sample(
        x[None], grid[None], mode="bilinear", padding_mode="border", align_corners=True
    )
    return out[0]


def _scores(
    small: torch.Tensor,
    points: torch.Tensor,
    values: torch.Tensor,
    planes: Sequence[MirrorPlane],
) -> list[float]:
    """Correlation of the head's voxel values with the values at their reflections (each
    volume edge's value beyond it), for each candidate plane. Every head voxel counts: a plane
    that sends head onto background is charged for it (scoring only the voxels whose twin is
    in the head let a badly turned plane pick a small, agreeable overlap)."""
    q = torch.stack([reflected_points(points, p) for p in planes])  # (K, N, ndim)
    grid = _normalised(q, small.shape)
    # one row of sample points per candidate: grid (1, K, N[, 1], ndim)
    grid = grid.reshape(1, q.shape[0], q.shape[1], *([1] * (small.ndim - 2)), small.ndim)
    out = F.grid_sample(
        small[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True
    )
    twins = out[0, 0].reshape(q.shape[0], -1)
    a = values - values.mean()
    b = twins - twins.mean(dim=1, keepdim=True)
    den = torch.sqrt((a * a).sum() * (b * b).sum(dim=1)).clamp_min(1e-12)
    return ((b @ a) / den).tolist()


def _through(point: torch.Tensor, yaw: float, roll: float, ndim: int) -> MirrorPlane:
    """The plane of `yaw`, `roll` through `point`."""
    n = MirrorPlane(yaw, roll if ndim == 3 else 0.0, 0.0).normal(ndim)
    return MirrorPlane(
        yaw,
        roll if ndim == 3 else 0.0,
        float(sum(a * float(b) for a, b in zip(n, point, strict=True))),
    )


def estimate_plane(mri: torch.Tensor, max_angle: float = MAX_ANGLE) -> MirrorPlane:
    """The rigid mid-sagittal plane of one MRI volume (*S, 2D or 3D): the plane maximising the
    correlation of the head's voxels (MRI above `HEAD_LEVEL` of its range) with their mirror
    twins, searched on a copy average-pooled to about `COARSE_VOXELS` voxels along its
    longest axis. Three stages: yaw and roll on a 3 degree grid in [-max_angle, max_angle] with
    the plane through the head's centroid; then +-2 degrees in 1 degree steps with the offset
    +-1.5 coarse voxels in half-voxel steps; then +-0.5 degree and +-0.25 voxel. A volume with
    no head gives the plane of `mid_sagittal_shift` (yaw = roll = 0)."""
    m = mri.detach().to("cpu", torch.float32)
    ndim = m.ndim
    if ndim not in (2, 3):
        raise ValueError(f"estimate_plane takes one 2D or 3D volume, got shape {tuple(m.shape)}")
    factor = max(1, round(max(m.shape) / COARSE_VOXELS))
    pool = F.avg_pool3d if ndim == 3 else F.avg_pool2d
    small = pool(m[None, None], factor, ceil_mode=True)[0, 0] if factor > 1 else m
    lo, hi = float(small.min()), float(small.max())
    head = small > lo + HEAD_LEVEL * (hi - lo)
    if hi <= lo or int(head.sum()) < 10:
        return MirrorPlane(0.0, 0.0, 0.5 * (m.shape[0] - 1))
    # Structure, not shading: a smooth bias field is not mirror-symmetric and pulls the plane
    # toward whatever orientation keeps its gradient (seen on the phantoms), so the search
    # correlates the image minus its ~8 mm Gaussian blur.
    s = small.numpy()
    small = torch.from_numpy(s - ndimage.gaussian_filter(s, HIGH_PASS, mode="nearest"))
    points = torch.nonzero(head).to(torch.float32)
    values = small[head]
    centre = points.mean(dim=0)
    rolls_on = ndim == 3

    def best(cands: list[MirrorPlane]) -> MirrorPlane:
        # A weak prior on the angles: where the anatomy leaves an angle undetermined (a
        # phantom's near-round axial outline and random sulci leave its yaw flat within a few
        # hundredths of correlation) the plane stays near upright; a real head's symmetry
        # peak is tenths high, far above this (0.064 at 8 degrees).
        scores = []
        for i in range(0, len(cands), 64):
            scores += _scores(small, points, values, cands[i : i + 64])
        scores = [
            v - ANGLE_PRIOR * (c.yaw**2 + c.roll**2) for v, c in zip(scores, cands, strict=True)
        ]
        return cands[max(range(len(cands)), key=scores.__getitem__)]

    grid = [3.0 * k for k in range(-int(max_angle // 3), int(max_angle // 3) + 1)]
    plane = best(
        [_through(centre, y, r, ndim) for y in grid for r in (grid if rolls_on else [0.0])]
    )
    for step, reach, off_step, off_reach in ((1.0, 2, 0.5, 3), (0.5, 1, 0.25, 1)):
        n = torch.tensor(plane.normal(ndim))
        on_plane = centre - (float(centre @ n) - plane.offset) * n  # centroid, projected
        angles = [step * k for k in range(-reach, reach + 1)]
        offsets = [off_step * k for k in range(-off_reach, off_reach + 1)]
        cands = []
        for dy in angles:
            for dr in angles if rolls_on else [0.0]:
                through = _through(on_plane, plane.yaw + dy, plane.roll + dr, ndim)
                cands += [replace(through, offset=through.offset + o) for o in offsets]
        plane = best(cands)
    # coarse voxel i covers full voxels i*f .. i*f + f - 1 (centre i*f + (f - 1) / 2)
    n = plane.normal(ndim)
    offset = factor * plane.offset + 0.5 * (factor - 1) * sum(n)
    return MirrorPlane(plane.yaw, plane.roll, offset)


_CACHE: OrderedDict[tuple[object, ...], MirrorPlane] = OrderedDict()
_CACHE_SIZE = 4096


def _key(m: torch.Tensor) -> tuple[object, ...]:
    return (tuple(m.shape), hashlib.sha1(m.contiguous().numpy().tobytes()).hexdigest())


def _remember(key: tuple[object, ...], plane: MirrorPlane) -> None:
    _CACHE[key] = plane
    _CACHE.move_to_end(key)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)


def plane_of(mri: torch.Tensor) -> MirrorPlane:
    """`estimate_plane(mri)`, remembered by the volume's content (a SHA-1 of its values): the
    lesion head reads the same MRI at every guidance step and validation pass. The volume
    flipped along axis 0 (the flip average of `LesionHead.flip_tta`) is remembered with the
    flipped plane at the same time, so both halves of a flip average use one plane."""
    m = mri.detach().to("cpu", torch.float32)
    key = _key(m)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    plane = estimate_plane(m)
    _remember(_key(m.flip(0)), plane.flipped(m.shape[0], m.ndim))
    _remember(key, plane)
    return plane


def mri_plane(mri: np.ndarray) -> MirrorPlane:
    """`plane_of` for a numpy MRI volume (*S): the plane the "+rigid-mirror" heads reflect
    about, remembered by content."""
    return plane_of(torch.from_numpy(np.ascontiguousarray(mri, dtype=np.float32)))


def near_mirror_image(
    mask: np.ndarray, plane: MirrorPlane, margin: int = GHOST_MARGIN_VOXELS
) -> np.ndarray:
    """The voxels within `margin` voxels (26-neighbour dilations) of `mask` (bool, *S)
    reflected about `plane` (`reflect`, the reflected mask kept where it is above 0.5): where
    the mirror channels of a rigid-mirror head show `mask`. Bool, same shape."""
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
    out = reflect(m, plane)[0].numpy() > 0.5
    if margin > 0 and out.any():
        structure = np.ones((3,) * out.ndim, dtype=bool)
        out = ndimage.binary_dilation(out, structure=structure, iterations=margin)
    return out
