"""`generate_phantom`: one seeded synthetic stroke case (MRI + CT in native units, exact masks,
ground truth incl. the true CT misregistration), 2D or 3D."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.case import Case
from clinfuse.phantom import tissues as T
from clinfuse.phantom.anatomy import Anatomy, draw_anatomy, tissue_labels
from clinfuse.phantom.config import PhantomConfig

# 2: brain and bone masks disjoint (bone wins ties); the unmoved CT (`ct_reference`) of a
# misregistered case; the rigid motion drawn after the noise, so the same seed gives the same MRI
# and CT noise with and without misregistration.
# 3: ischaemic CT offset -15..-5 HU (was -8..-4); FLAIR and DWI contrasts.
GENERATOR_VERSION = "3"
# Redraws allowed for a lesion volume inside `PhantomConfig.lesion_ml` (each redraw is a new
# anatomy from the same seeded stream; the demo phantoms need at most a few). Ischaemic
# lesions of 0.5-5 mL (mostly lacunes) can need more: one of 60 such phantoms drew none in 40
# (session 11). A case that succeeds within fewer draws is the same whatever this limit is.
MAX_LESION_REDRAWS = 200


@dataclass
class Phantom:
    """A generated case: `case` holds MRI/CT (native units) and the exact masks, which live on
    the MRI grid; `truth` holds every drawn parameter (JSON-ready)."""

    case: Case
    truth: dict[str, Any]
    labels: np.ndarray  # tissue label at each MRI voxel's central sub-voxel (uint8)
    # The CT as it would be without the misregistration (same anatomy, noise and rounding, on
    # the MRI grid), float32 HU; None when the CT is not moved (then it equals `case.ct`).
    ct_reference: np.ndarray | None = None


def grid_affine(shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """Diagonal RAS affine whose world origin (0, 0, 0) is the centre of the volume."""
    sp = np.ones(3)
    sp[: len(spacing)] = spacing
    n = np.ones(3)
    n[: len(shape)] = shape
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = -(n - 1.0) / 2.0 * sp
    return aff


def _subvoxel_axes(shape: tuple[int, ...], spacing: tuple[float, ...], k: int) -> list[np.ndarray]:
    """World coordinates (mm) of the k sub-voxel centres along each axis, voxel-major."""
    axes = []
    for n, s in zip(shape, spacing, strict=True):
        sub = (np.arange(n * k, dtype=np.float64) + 0.5) / k - 0.5  # voxel index units
        axes.append(((sub - (n - 1) / 2.0) * s).astype(np.float32))
    return axes


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Average non-overlapping k^d blocks (partial volume)."""
    if k == 1:
        return a.astype(np.float32)
    shp: list[int] = []
    for n in a.shape:
        shp += [n // k, k]
    return a.reshape(shp).mean(axis=tuple(range(1, 2 * a.ndim, 2)), dtype=np.float32)


def _random_rigid(rng: np.random.Generator, mm: float, deg: float, ndim: int) -> np.ndarray:
    """4x4 world transform: rotation by `deg` about a random axis through the volume centre
    (the z axis in 2D) then translation by `mm` in a random direction (in-plane in 2D)."""
    if ndim == 2:
        axis = np.array([0.0, 0.0, 1.0])
        tdir = np.array([*rng.standard_normal(2), 0.0])
    else:
        axis = rng.standard_normal(3)
        tdir = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    tdir /= max(np.linalg.norm(tdir), 1e-12)
    sign = rng.choice([-1.0, 1.0])
    th = np.deg2rad(deg) * sign
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    R = np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * (K @ K)  # Rodrigues
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = tdir * mm
    return M


def _labels_on_grid(
    anat: Anatomy, cfg: PhantomConfig, axes: list[np.ndarray], z_slice: float
) -> np.ndarray:
    """Labels on the (sub-voxel) grid `axes`; 2D mode samples the plane z = `z_slice`."""
    if cfg.ndim == 3:
        return tissue_labels(axes[0], axes[1], axes[2], anat)
    return tissue_labels(axes[0], axes[1], np.array([z_slice], dtype=np.float32), anat)[..., 0]


def _move_image(
    img: np.ndarray, rigid: np.ndarray, axes: list[np.ndarray], fill: float
) -> np.ndarray:
    """Resample `img` (on the grid `axes`, world mm) so that its content moves by `rigid`:
    out(w) = img(rigid^-1 w). Linear interpolation on the supersampled grid, before the block
    average, so the moved CT keeps realistic partial volume."""
    nd = img.ndim
    inv = np.linalg.inv(rigid)
    step = np.array([float(a[1] - a[0]) for a in axes])
    org = np.array([float(a[0]) for a in axes])
    # index -> world: w = org + step * i; world -> index: i = (w - org) / step.
    A = inv[:nd, :nd]
    t = inv[:nd, 3]
    matrix = (A * step[None, :]) / step[:, None]
    offset = (A @ org + t - org) / step
    return ndimage.affine_transform(
        img, matrix, offset=offset, order=1, mode="constant", cval=fill
    ).astype(np.float32)


def _as_rng(seed: int | np.random.Generator | np.random.SeedSequence) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def generate_phantom(
    config: PhantomConfig, seed: int | np.random.Generator | np.random.SeedSequence
) -> Phantom:
    """Generate one phantom. Same config and seed -> bit-identical arrays.

    The MRI and the masks share the grid given by `config.shape`/`spacing` (affine from
    `grid_affine`); the CT is the same anatomy moved by the recorded rigid transform
    `truth["misregistration"]["mri_to_ct_world"]` (identity when `misregistration` is (0, 0)).
    """
    rng = _as_rng(seed)
    cfg = config
    shape = tuple(int(s) for s in cfg.shape)
    spacing = tuple(float(s) for s in cfg.spacing)
    k = int(cfg.supersample)
    ext = np.array([n * s for n, s in zip(shape, spacing, strict=True)], dtype=np.float64)
    if cfg.ndim == 2:
        # A single axial slice: give the virtual head a z extent like its y extent.
        ext = np.array([ext[0], ext[1], ext[1]])
    mm, deg = (float(v) for v in cfg.misregistration)
    # Fields are only sampled on the MRI grid (the CT is the moved high-resolution image), so
    # a fixed margin suffices and the anatomy does not depend on the misregistration.
    margin = 10.0

    plane = cfg.slice_height if cfg.ndim == 2 else None

    def draw() -> Anatomy:
        territories = cfg.ischaemic_territories
        return draw_anatomy(
            rng, ext, cfg.lesion, cfg.n_lesions, cfg.fracture, margin, plane, territories
        )

    anat = draw()
    z_slice = float(cfg.slice_height * anat.brain_axes[2])
    axes = _subvoxel_axes(shape, spacing, k)
    labels_hi = _labels_on_grid(anat, cfg, axes, z_slice)
    # Lesions that miss the tissue entirely (e.g. a 2D slice above a PCA wedge) are re-drawn,
    # so a case asked to have a lesion has one; with `lesion_ml` set, so is a lesion whose
    # total volume falls outside that range. Draws stay deterministic.
    vox_ml = float(np.prod(spacing)) / 1000.0
    tries = 0
    while cfg.lesion != "none" and cfg.n_lesions > 0 and not _lesion_ok(labels_hi, k, cfg, vox_ml):
        tries += 1
        if tries > (MAX_LESION_REDRAWS if cfg.lesion_ml else 8):
            if cfg.lesion_ml:
                raise ClinfuseInputError(
                    f"invalid phantom config: no lesion of {cfg.lesion_ml[0]}-{cfg.lesion_ml[1]}"
                    f" mL in {MAX_LESION_REDRAWS} draws on a {shape} grid of {spacing} mm "
                    "(is the field of view too small for that range?)"
                )
            break
        anat = draw()
        z_slice = float(cfg.slice_height * anat.brain_axes[2])
        labels_hi = _labels_on_grid(anat, cfg, axes, z_slice)

    mri_lut = T.draw_lookup(T.MRI_UNITS[cfg.mri_contrast], rng, "mri")
    ct_lut = T.draw_lookup(T.CT_HU, rng, "ct")
    # Noise is drawn before the rigid motion: the misregistration then changes nothing but the
    # CT's position (same seed -> same MRI and the same CT noise, moved or not).
    n1 = rng.standard_normal(shape, dtype=np.float32)
    n2 = rng.standard_normal(shape, dtype=np.float32)
    ct_noise = np.float32(cfg.ct_noise_hu) * rng.standard_normal(shape, dtype=np.float32)
    rigid = _random_rigid(rng, mm, deg, cfg.ndim) if (mm > 0 or deg > 0) else np.eye(4)
    moved = not np.array_equal(rigid, np.eye(4))

    # Exact masks: a voxel belongs to a structure when at least half of its sub-voxels do.
    # With an even number of sub-voxels a voxel can be exactly half bone, half intracranial
    # (inner table against CSF); both ">= 0.5" tests would claim it. Bone wins: the voxel's CT
    # value is halfway between CSF and bone (>= ~600 HU), so the CT shows it as bone, and the
    # skull is the thin structure (3-4 voxels) that loses most from a missing voxel. Masks are
    # therefore disjoint by construction.
    bone, brain, lesion = _exact_masks(labels_hi, k)

    mri = _block_mean(mri_lut[labels_hi], k)
    ct_hi = ct_lut[labels_hi]
    ct_ref = _block_mean(ct_hi, k) if moved else None
    if moved:
        ct_hi = _move_image(ct_hi, rigid, axes, fill=float(ct_lut[T.AIR]))
    ct = _block_mean(ct_hi, k)
    centre = tuple(slice(k // 2, None, k) for _ in shape)
    labels = labels_hi[centre].copy()
    del labels_hi, ct_hi

    # MRI corruptions: smooth multiplicative bias (receive-coil inhomogeneity) on magnitude
    # images (not on ADC, which is a ratio map), then Rician noise (magnitude of complex
    # Gaussian noise); ADC gets Gaussian noise clipped at 0.
    vox = _subvoxel_axes(shape, spacing, 1)
    vz = vox[2] if cfg.ndim == 3 else np.array([z_slice], dtype=np.float32)
    bias = np.ones(shape, dtype=np.float32)
    if cfg.mri_contrast != "ADC" and cfg.bias_field > 0:
        field = anat.fields["bias"].on_grid(vox[0], vox[1], vz).reshape(shape)
        bias = np.exp(cfg.bias_field * field).astype(np.float32)
    sigma = float(cfg.mri_noise * mri_lut[T.WM])
    if cfg.mri_contrast == "ADC":
        mri = np.maximum(mri + sigma * n1, 0.0)
    else:
        mri = np.sqrt((mri * bias + sigma * n1) ** 2 + (sigma * n2) ** 2)
    # CT is stored as integer HU (int16 on disk, as scanners do); keep memory == file.
    ct = np.clip(np.round(ct + ct_noise), -1024, 3071)
    if ct_ref is not None:
        ct_ref = np.clip(np.round(ct_ref + ct_noise), -1024, 3071).astype(np.float32)

    affine = grid_affine(shape, spacing)
    truth = _truth(cfg, seed, anat, mri_lut, ct_lut, rigid, brain, bone, lesion, spacing, z_slice)
    case = Case(
        case_id="phantom",
        mri=mri.astype(np.float32),
        ct=ct.astype(np.float32),
        affine=affine,
        brain=brain,
        bone=bone,
        lesion=lesion,
        ct_kind="hu",
        meta={"phantom": True, "mri_contrast": cfg.mri_contrast},
    )
    return Phantom(case=case, truth=truth, labels=labels, ct_reference=ct_ref)


def _lesion_ok(labels_hi: np.ndarray, k: int, cfg: PhantomConfig, vox_ml: float) -> bool:
    """The drawn lesion(s) show on the output grid and, with `cfg.lesion_ml`, their total volume
    (the exact lesion mask's, as `truth["lesion_volume_ml"]`) lies in that range."""
    voxels = int(_exact_masks(labels_hi, k)[2].sum())
    if cfg.lesion_ml is None:
        return voxels > 0
    lo, hi = cfg.lesion_ml
    return lo <= voxels * vox_ml <= hi


def _exact_masks(labels_hi: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bone, brain and lesion masks on the output grid: a voxel belongs to a structure when at
    least half of its `k`^d sub-voxels do; bone wins ties with brain (see `generate_phantom`),
    and lesion voxels are brain voxels."""
    bone = _block_mean(np.isin(labels_hi, T.BONE_LABELS), k) >= 0.5
    brain = (_block_mean(np.isin(labels_hi, T.INTRACRANIAL_LABELS), k) >= 0.5) & ~bone
    lesion = (_block_mean(np.isin(labels_hi, T.LESION_LABELS), k) >= 0.5) & brain
    return bone, brain, lesion


def _truth(
    cfg: PhantomConfig,
    seed: Any,
    anat: Anatomy,
    mri_lut: np.ndarray,
    ct_lut: np.ndarray,
    rigid: np.ndarray,
    brain: np.ndarray,
    bone: np.ndarray,
    lesion: np.ndarray,
    spacing: tuple[float, ...],
    z_slice: float,
) -> dict[str, Any]:
    vox_ml = float(np.prod(spacing)) / 1000.0  # 2D: "ml" per unit slice thickness (1 mm)
    R = rigid[:3, :3]
    angle = float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed if isinstance(seed, int) else None,
        "config": cfg.to_dict(),
        "array_order": "x, y, z (RAS+); 2D: x, y of one axial slice",
        "slice_z_mm": z_slice if cfg.ndim == 2 else None,
        "intensities": {
            "ct_hu": dict(zip(T.TISSUE_NAMES, (round(float(v), 3) for v in ct_lut), strict=True)),
            "mri": dict(zip(T.TISSUE_NAMES, (round(float(v), 3) for v in mri_lut), strict=True)),
        },
        "anatomy": {
            "head_semi_axes_mm": [float(v) for v in anat.head_axes],
            "brain_semi_axes_mm": [float(v) for v in anat.brain_axes],
            "layers_mm": {k: float(v) for k, v in anat.layers_mm.items()},
        },
        "lesions": [les.to_dict() for les in anat.lesions],
        "fracture": anat.fracture,
        "misregistration": {
            "convention": (
                "mri_to_ct_world maps a point of the MRI's world (RAS mm) to where the same "
                "anatomy lies in the CT image; it is the fixed->moving transform that a "
                "SimpleITK registration of CT (moving) to MRI (fixed) should recover. "
                "Rotation is about the volume centre, which is world (0, 0, 0)."
            ),
            "translation_mm": [float(v) for v in rigid[:3, 3]],
            "translation_norm_mm": float(np.linalg.norm(rigid[:3, 3])),
            "rotation_deg": angle,
            "mri_to_ct_world": rigid.tolist(),
            "ct_to_mri_world": np.linalg.inv(rigid).tolist(),
        },
        "masks_grid": "mri",
        "mask_voxels": {
            "brain": int(brain.sum()),
            "bone": int(bone.sum()),
            "lesion": int(lesion.sum()),
        },
        "lesion_volume_ml": float(lesion.sum()) * vox_ml,
    }
