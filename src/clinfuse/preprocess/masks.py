"""Automatic ROI masks: skull (bone) from CT, intracranial soft tissue (brain + CSF) from CT
and/or MRI, 2D and 3D; plus an optional TotalSegmentator adapter.

Bone: a half-maximum HU threshold between soft tissue and cortical bone (so partial-volume edge
voxels are split where the tissue fraction is 0.5), a lower threshold for diploe kept only where
a spacing-aware closing of the cortical tables encloses it, and removal of small components.
Brain: the cavity the skull encloses (3D hole filling of the closed skull, united with
slice-wise filling of axial slices so an opening at the skull base or a fracture does not
empty it), minus bone, kept soft-tissue HU, largest component. Without a HU CT (none, or a
display-windowed one such as the Harvard PNGs) the brain comes from the MRI alone: the dark
skull separates brain from scalp, so threshold, erode, keep the largest blob, dilate back.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from clinfuse.errors import ClinfuseInputError

FAT_HU = -90.0  # scalp fat, the darkest tissue next to the skull (the outer table's side)
NOISE_MARGIN_HU = 25.0  # a few sigma of soft-tissue CT noise
DIPLOE_HU = 250.0  # below the diploe range (300-700 HU), above any soft tissue or blood
BONE_HALF_MAX_RANGE = (300.0, 700.0)  # clamp of the per-voxel half-maximum threshold
SHELL_HU = 150.0  # above blood (50-90 HU): the densest thing that is still brain
DISPLAY_BONE_LEVEL = 200  # 8-bit display-windowed CT: bone saturates near 255, brain ~90-150
BRIGHT_TAIL = 1.6  # x median of the deep head: fat on T1/FLAIR lies above, brain below
CORE_MM = 8.0  # erosion radius of the MRI-only brain core (3D)
FAT_BRIGHTEST = ("T1", "FLAIR")  # sequences on which fat outshines every intracranial tissue


def _check_image(x: np.ndarray | None, spacing: Sequence[float], name: str) -> np.ndarray:
    if x is None:
        raise ClinfuseInputError(f"{name} image is missing")
    x = np.asarray(x)
    if x.ndim not in (2, 3):
        raise ClinfuseInputError(f"{name} must be 2D or 3D for automatic masks, got {x.ndim}D")
    if len(spacing) != x.ndim:
        raise ClinfuseInputError(
            f"{name}: spacing {tuple(spacing)} has {len(spacing)} values for a {x.ndim}D image"
        )
    if not np.all(np.isfinite(x)):
        raise ClinfuseInputError(f"{name} contains NaN or Inf values")
    return x.astype(np.float32, copy=False)


def ball(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Ellipsoidal structuring element of `radius_mm` in physical space (>= 1 voxel per axis)."""
    r = [max(1, int(np.floor(radius_mm / s))) for s in spacing]
    grids = np.ogrid[tuple(slice(-ri, ri + 1) for ri in r)]
    d2 = sum((g * s / max(radius_mm, 1e-6)) ** 2 for g, s in zip(grids, spacing, strict=True))
    se = d2 <= 1.0
    if se.sum() == 1:
        # A radius below the voxel size still connects face neighbours rather than nothing.
        se |= ndimage.generate_binary_structure(len(spacing), 1)
    return se


def _pad_op(op: str, mask: np.ndarray, se: np.ndarray) -> np.ndarray:
    """Binary closing/dilation with padding so nothing leaks through the array border."""
    pad = [(s // 2 + 1,) * 2 for s in se.shape]
    m = np.pad(mask, pad)
    if op == "close":
        m = ndimage.binary_closing(m, structure=se)
    elif op == "dilate":
        m = ndimage.binary_dilation(m, structure=se)
    elif op == "erode":
        m = ndimage.binary_erosion(m, structure=se, border_value=0)
    else:  # pragma: no cover - programming error
        raise ValueError(op)
    return m[tuple(slice(p[0], p[0] + n) for p, n in zip(pad, mask.shape, strict=True))]


def remove_small_components(mask: np.ndarray, min_fraction: float = 0.01) -> np.ndarray:
    """Drop connected components smaller than `min_fraction` of the largest one."""
    lab, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, 2))
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    keep = sizes >= max(1.0, min_fraction * sizes.max())
    keep[0] = False
    return keep[lab]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6/4-connected component (empty in -> empty out)."""
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(sizes.argmax())


def _fill_slicewise(mask: np.ndarray, axis: int = -1) -> np.ndarray:
    """Fill holes in each 2D slice across `axis` (the whole image in 2D)."""
    if mask.ndim == 2:
        return ndimage.binary_fill_holes(mask)
    m = np.moveaxis(mask, axis, 0)
    out = np.zeros_like(m)
    for k in range(m.shape[0]):
        if m[k].any():
            out[k] = ndimage.binary_fill_holes(m[k])
    return np.moveaxis(out, 0, axis)


def _fill_any_direction(mask: np.ndarray) -> np.ndarray:
    """Union of 3D hole filling and slice-wise filling along each axis: a cavity open at the
    skull base (foramen magnum, end of the field of view) is still closed in most coronal or
    sagittal slices, and a fracture opens only a few slices of any one direction."""
    filled = ndimage.binary_fill_holes(mask)
    for axis in range(mask.ndim if mask.ndim == 3 else 0):
        filled |= _fill_slicewise(mask, axis)
    return filled


def _drop_floating(bone: np.ndarray, air: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Remove bright components that float in air (fiducial markers, head-holder arcs): real
    bone is mostly surrounded by soft tissue, so drop components whose 2 mm rim is > 80 % air."""
    lab, n = ndimage.label(bone, structure=ndimage.generate_binary_structure(bone.ndim, 2))
    if n <= 1:
        return bone
    rim = _pad_op("dilate", bone, ball(2.0, spacing)) & ~bone
    # Assign each rim voxel to the nearest component label (grey dilation of the label map).
    near = ndimage.grey_dilation(lab, footprint=ball(2.0, spacing))
    rim_n = np.bincount(near[rim], minlength=n + 1)
    air_n = np.bincount(near[rim & air], minlength=n + 1)
    floating = air_n > 0.8 * np.maximum(rim_n, 1)
    floating[0] = False
    return bone & ~floating[lab]


def cortical_peak_hu(ct_hu: np.ndarray) -> float:
    """This scan's dense cortical bone value: the 99th percentile of voxels above 300 HU."""
    dense = ct_hu[ct_hu > 300.0]
    return float(np.percentile(dense, 99)) if dense.size >= 10 else 2 * BONE_HALF_MAX_RANGE[0]


def bone_threshold_hu(ct_hu: np.ndarray) -> float:
    """Half-maximum threshold between this scan's cortical bone and scalp fat (300-700 HU).

    A voxel that is half cortical bone (~1400 HU) and half fat (-90) holds ~655 HU, half bone
    and half CSF ~705: thresholding just below the fat-side half-maximum (by 25 HU, a few
    sigma of CT noise) keeps every voxel with a bone fraction >= 0.5 and drops thinner
    partial-volume rims on both sides.
    """
    peak = cortical_peak_hu(ct_hu)
    thr = (peak + FAT_HU) / 2.0 - NOISE_MARGIN_HU
    return float(np.clip(thr, *BONE_HALF_MAX_RANGE))


def auto_bone_mask(
    ct: np.ndarray,
    spacing: Sequence[float],
    ct_kind: str = "hu",
    threshold: float | None = None,
) -> np.ndarray:
    """Skull mask (cortical tables + diploe) from a CT, bool, same shape (2D or 3D).

    `ct_kind="hu"`: CT in Hounsfield units (if the scan stores HU + 1024, subtract it first).
    `ct_kind="display"`: an 8-bit display-windowed CT where bone is saturated; `threshold`
    defaults to grey level 200. An explicit `threshold` replaces the adaptive one.
    """
    x = _check_image(ct, spacing, "CT")
    if ct_kind == "display":
        strict = x >= (DISPLAY_BONE_LEVEL if threshold is None else threshold)
        bone = _pad_op("close", strict, ball(1.5, spacing)) & (x >= 0.8 * DISPLAY_BONE_LEVEL)
        bone = remove_small_components(bone | strict)
        return _drop_floating(bone, x < 10, spacing)
    if ct_kind != "hu":
        raise ClinfuseInputError(f"ct_kind must be 'hu' or 'display', got {ct_kind!r}")
    thr = bone_threshold_hu(x) if threshold is None else float(threshold)
    strict = x > thr
    # Diploe (300-700 HU) can fall below the half-maximum, but it lies between the two
    # cortical tables, so no face neighbour is soft tissue; a partial-volume edge voxel of the
    # same HU always touches soft tissue or CSF on its open side.
    cross = ndimage.generate_binary_structure(x.ndim, 1)
    touches_soft = _pad_op("dilate", x < SHELL_HU, cross)
    bone = remove_small_components(strict | ((x > min(DIPLOE_HU, thr)) & ~touches_soft))
    return _drop_floating(bone, x < -500.0, spacing)


def auto_brain_mask(
    mri: np.ndarray | None,
    ct: np.ndarray | None,
    spacing: Sequence[float],
    ct_kind: str = "hu",
    bone: np.ndarray | None = None,
) -> np.ndarray:
    """Intracranial soft tissue (brain + CSF inside the inner skull table), bool, 2D or 3D.

    With a HU CT: the cavity enclosed by the (given or automatic) bone mask. With no CT, or a
    display-windowed CT (`ct_kind="display"`, whose alignment and window are not trusted),
    from the MRI alone (see `mri_brain_mask`).
    """
    if ct is None or ct_kind == "display":
        return mri_brain_mask(_check_image(mri, spacing, "MRI"), spacing)
    if ct_kind != "hu":
        raise ClinfuseInputError(f"ct_kind must be 'hu' or 'display', got {ct_kind!r}")
    x = _check_image(ct, spacing, "CT")
    if bone is None:
        bone = auto_bone_mask(x, spacing, ct_kind)
    elif bone.shape != x.shape:
        raise ClinfuseInputError(f"bone mask shape {bone.shape} does not match CT {x.shape}")
    bone = bone.astype(bool)
    if not bone.any():
        raise ClinfuseInputError("no skull found in the CT (no voxel above the bone threshold)")
    # The cavity wall: the skull plus anything denser than blood (thin bone that partial
    # volume pushed below the bone threshold still closes the wall), with small openings
    # (fracture lines, foramina, partial-volume holes) closed before filling.
    shell = bone | (x > SHELL_HU)
    closed = _pad_op("close", shell, ball(4.0, spacing))
    interior = _fill_any_direction(closed) & ~closed
    soft = (x > -30.0) & ~bone
    # Closing and the low wall threshold took the innermost brain voxels along the inner
    # table: add back the non-bone voxels one voxel outside the interior (not a whole
    # fracture gap, which is thicker than one voxel from the cavity).
    near = _pad_op("dilate", interior, ndimage.generate_binary_structure(x.ndim, 1))
    brain = (interior | near) & soft
    # Facial cavities (orbits, nasal cavity) can look enclosed in some slice direction; they
    # join the brain only through thin openings (cribriform plate, optic canals), which an
    # opening cuts. Then grow the main blob back inside the mask by the opening radius only.
    return _open_and_regrow(brain, spacing, 5.0)


def _open_and_regrow(mask: np.ndarray, spacing: Sequence[float], radius_mm: float) -> np.ndarray:
    """Largest component after a morphological opening, regrown (geodesic dilation inside
    `mask`) by `radius_mm` + 1 voxel: thin bridges stay cut, the rim is restored."""
    se = ball(radius_mm, spacing)
    core = largest_component(
        ndimage.binary_opening(np.pad(mask, 1), structure=se)[
            tuple(slice(1, -1) for _ in mask.shape)
        ]
    )
    if not core.any():
        return largest_component(mask)
    steps = int(np.ceil(radius_mm / min(spacing))) + 1
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return ndimage.binary_dilation(core, structure=cross, iterations=steps, mask=mask)


def mri_brain_mask(
    mri: np.ndarray, spacing: Sequence[float], contrast: str | None = None
) -> np.ndarray:
    """Intracranial mask from a head MRI with skull (T1/T2-like), no CT.

    The skull's cortical bone is dark on every MRI contrast and separates the brain from the
    scalp, and the brain lies at least ~8 mm (skin + fat + skull) below the head surface.
    Steps: head = Otsu foreground; tissue = smoothed image above half the median of the deep
    (> 15 mm) head, deeper than 8 mm; a core = the largest blob of that tissue eroded by 5 mm
    (cuts bridges through the skull and the brainstem-neck junction); grow the core back
    inside the tissue by at most 8 mm (geodesic dilation); fill holes (dark ventricles on T1).
    On T1 the dark subarachnoid CSF rim is indistinguishable from bone, so the mask is
    slightly tighter there; on T2 the bright CSF is included.

    Told that fat outshines every intracranial tissue (`contrast` in `FAT_BRIGHTEST`: T1,
    FLAIR), the tissue is kept below `BRIGHT_TAIL` x that median, which leaves out the fat of
    the orbits, marrow and scalp; the core is eroded by `CORE_MM` instead (in 3D; 5 mm if that
    leaves less than 5 % of the tissue) and grown back by its radius + 3 mm, which cuts the
    face off below the skull base where the orbital roof is thinner than a slice (5 mm-slice
    T1, visible_male: 2381 -> 1924 mL); a last 2 mm grows into the whole tissue (partial
    volume next to fat) before filling holes. Unknown contrast (`None`, as in `fuse`) and
    every other sequence keep the plain steps: on the phantoms they score higher. (Measured on
    T1 heads; FLAIR is included by the sequence's physics, no FLAIR head with a skull was at
    hand.)
    """
    x = _check_image(mri, spacing, "MRI")
    sm = ndimage.gaussian_filter(x, sigma=[1.0 / s for s in spacing])
    hi = float(np.percentile(sm, 99.5))
    if hi <= 0:
        raise ClinfuseInputError("MRI is empty (no positive values)")
    head = sm > threshold_otsu(np.clip(sm, 0, hi)) * 0.5
    head = largest_component(_fill_any_direction(head))
    depth = ndimage.distance_transform_edt(np.pad(head, 1), sampling=spacing)
    depth = depth[tuple(slice(1, -1) for _ in head.shape)]
    deep = head & (depth > min(15.0, 0.5 * float(depth.max())))
    med = float(np.median(sm[deep]))
    tissue = head & (sm > 0.5 * med) & (depth > min(8.0, 0.2 * float(depth.max())))
    fat_bright = contrast in FAT_BRIGHTEST
    band = tissue & (sm < BRIGHT_TAIL * med) if fat_bright else tissue
    cross = ndimage.generate_binary_structure(x.ndim, 1)
    core = np.zeros_like(band)
    for radius in (CORE_MM, 5.0) if fat_bright and x.ndim == 3 else (5.0,):
        core = largest_component(_pad_op("erode", band, ball(radius, spacing)))
        if core.sum() >= 0.05 * band.sum():
            break
    if not core.any():
        core, radius = largest_component(band), 5.0
    steps = max(1, int(round((radius + 3.0) / min(spacing))))
    brain = ndimage.binary_dilation(core, structure=cross, iterations=steps, mask=band)
    rim = int(round(2.0 / min(spacing))) if fat_bright else 0
    if rim > 0:
        brain = _fill_any_direction(brain)
        brain = ndimage.binary_dilation(brain, structure=cross, iterations=rim, mask=tissue | brain)
    return largest_component(_fill_any_direction(brain))


def totalsegmentator_masks(
    ct: np.ndarray, affine: np.ndarray, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Brain and skull masks from TotalSegmentator (task "total"), only when the package and
    its weights are present; raises `ClinfuseInputError` saying what is missing otherwise.

    Note TotalSegmentator's "brain" is the parenchyma, not the intracranial volume.
    """
    if importlib.util.find_spec("totalsegmentator") is None:
        raise ClinfuseInputError(
            "TotalSegmentator is not installed (pip install TotalSegmentator, then download its "
            "weights with `totalseg_download_weights -t total`). It is optional: "
            "clinfuse's auto_bone_mask/auto_brain_mask work without it."
        )
    home = Path(os.environ.get("TOTALSEG_HOME_DIR", Path.home() / ".totalsegmentator"))
    weights = home / "nnunet" / "results"
    if not weights.is_dir() or not any(weights.iterdir()):
        raise ClinfuseInputError(
            f"TotalSegmentator weights not found in {weights}; run "
            "`totalseg_download_weights -t total` on a machine with internet access "
            "(clinfuse never downloads weights at run time)."
        )
    import nibabel as nib  # noqa: PLC0415 - only needed on this optional path
    from totalsegmentator.map_to_binary import class_map  # type: ignore[import-not-found]
    from totalsegmentator.python_api import totalsegmentator  # type: ignore[import-not-found]

    img = nib.Nifti1Image(np.asarray(ct, dtype=np.float32), np.asarray(affine, dtype=float))
    seg = totalsegmentator(
        img, None, task="total", roi_subset=["brain", "skull"], ml=True, device=device, quiet=True
    )
    labels = np.asarray(seg.dataobj)
    ids = {name: i for i, name in class_map["total"].items()}
    return {"brain": labels == ids["brain"], "bone": labels == ids["skull"]}
