"""One case from native files to the model range: orientation, one grid, optional registration,
intensities, masks (given or automatic), the transform record; saving/loading prepared cases,
and `to_native` to map fused intensities back."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np

import clinfuse
from clinfuse.choices import parse_mri_contrast
from clinfuse.errors import ClinfuseInputError
from clinfuse.io.atomic import write_text_atomic
from clinfuse.io.case import MASK_ROLES, Case
from clinfuse.io.nifti import canonicalise, load_nifti, save_nifti
from clinfuse.model_range import MODEL_RANGE
from clinfuse.preprocess.checks import check_ct_has_bone, check_mri_has_skull
from clinfuse.preprocess.normalize import denormalise_mri, normalise_mri
from clinfuse.preprocess.prepared import PreparedCase
from clinfuse.preprocess.resample import grid_with_spacing, resample_to_grid
from clinfuse.preprocess.windowing import (
    BONE_WINDOW,
    CLINICAL_WINDOW,
    apply_window,
    display_to_model,
    invert_window,
    model_to_display,
)

__all__ = [
    "PreparedCase",
    "preprocess_case",
    "save_prepared",
    "load_prepared",
    "to_native",
    "native_grid",
    "load_prepared_dataset",
    "SIDECAR",
]

SIDECAR = "preprocess.json"
RECORD_VERSION = 1
CT_AIR_HU = -1024.0  # fill value for CT voxels outside the CT's field of view after resampling
IMAGE_FILES = {"mri": "mri.nii.gz", "ct": "ct.nii.gz", "ct_bone": "ct_bone.nii.gz"}
MASK_FILES = {r: f"{r}.nii.gz" for r in MASK_ROLES}

NativeMode = Literal["auto", "roi", "mri", "ct_bone", "ct_clinical", "display"]


def _window_dict(w: Any) -> dict[str, float]:
    return {"centre": w.centre, "width": w.width, "low": w.low, "high": w.high}


def _is_ras(affine: np.ndarray) -> bool:
    return nib.aff2axcodes(affine) == ("R", "A", "S")


def _auto_masks(
    mri: np.ndarray, ct: np.ndarray, spacing: tuple[float, ...], ct_kind: str, need: set[str],
    bone: np.ndarray | None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Call the automatic mask makers of `preprocess.masks`."""
    from clinfuse.preprocess import masks

    out: dict[str, np.ndarray] = {}
    if "bone" in need:
        bone = np.asarray(masks.auto_bone_mask(ct, spacing, ct_kind=ct_kind), dtype=bool)
        out["bone"] = bone
    if "brain" in need:
        out["brain"] = np.asarray(
            masks.auto_brain_mask(mri, ct, spacing, ct_kind=ct_kind, bone=bone), dtype=bool
        )
    return out


@dataclass
class _Work:
    """The case on its way to the model range: what each step of `preprocess_case` reads and
    updates (arrays, their affines, the target grid) plus the transform record."""

    case: Case
    record: dict[str, Any]
    mri: np.ndarray
    affine: np.ndarray  # the MRI's (canonical) affine
    ct: np.ndarray
    ct_aff: np.ndarray
    masks_in: dict[str, tuple[np.ndarray, np.ndarray]]
    mri_native: np.ndarray | None = None  # the canonical MRI before any resampling
    shape: tuple[int, ...] = ()
    grid_aff: np.ndarray | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    mask_source: dict[str, str] = field(default_factory=dict)

    @property
    def grid_spacing(self) -> tuple[float, ...]:
        assert self.grid_aff is not None
        nd = self.case.ndim
        return tuple(float(s) for s in np.linalg.norm(self.grid_aff[:3, :nd], axis=0))


def _start(case: Case) -> _Work:
    case.validate()
    affine = np.asarray(case.affine, np.float64)
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "clinfuse_version": getattr(clinfuse, "__version__", "unknown"),
        "case_id": case.case_id,
        "ndim": case.ndim,
        "sources": dict(case.sources),
        "source_grid": {
            "shape": list(case.mri.shape),
            "affine": np.asarray(case.affine, float).tolist(),
            "spacing": list(case.spacing),
        },
    }
    return _Work(
        case=case,
        record=record,
        mri=np.asarray(case.mri, np.float32),
        affine=affine,
        ct=np.asarray(case.ct, np.float32),
        ct_aff=case.grids.get("ct", affine),
        masks_in={r: (m, case.grids.get(r, affine)) for r, m in case.masks().items()},
    )


def _canonical_orientation(w: _Work) -> None:
    """Step 1: RAS+ voxel order (loaders already give it; hand-made cases may not)."""
    case = w.case
    reoriented = case.ndim == 3 and not _is_ras(w.affine)
    if reoriented:
        on_grid = [r for r in ("ct", *w.masks_in) if r not in case.grids]
        mri, new_aff = canonicalise(w.mri, w.affine)
        if "ct" in on_grid:
            w.ct, w.ct_aff = canonicalise(w.ct, w.affine)[0], new_aff
        for r in on_grid:
            if r != "ct":
                m = canonicalise(w.masks_in[r][0], w.affine)[0].astype(bool)
                w.masks_in[r] = (m, new_aff)
        w.affine = new_aff
        w.mri = np.asarray(mri, np.float32)
    w.record["reoriented"] = bool(reoriented)
    w.mri_native = w.mri


def _target_grid(w: _Work, spacing: float | tuple[float, ...] | None) -> None:
    """Step 2: the MRI's grid, optionally resampled to `spacing` mm."""
    nd = w.case.ndim
    w.shape = tuple(int(s) for s in w.mri.shape)
    if spacing is not None:
        w.shape, w.grid_aff = grid_with_spacing(w.shape, w.affine, spacing)
        w.mri = resample_to_grid(w.mri, w.affine, w.shape, w.grid_aff)
    else:
        w.grid_aff = w.affine
    w.record["grid"] = {
        "shape": list(w.shape),
        "affine": w.grid_aff.tolist(),
        "spacing": list(w.grid_spacing),
        "target_spacing": None if spacing is None else np.broadcast_to(spacing, (nd,)).tolist(),
        "resampled": spacing is not None,
        "interpolation": {"images": "linear", "masks": "nearest"},
    }


def _ct_onto_grid(w: _Work, register: bool, resampled: bool) -> None:
    """Step 3: the CT onto the grid, through a rigid CT->MRI registration if asked; refuses a
    CT that does not overlap, or that has no bone in its field of view."""
    case, src, record = w.case, w.case.sources, w.record
    if "ct" in case.meta.get("no_overlap", ()) and not register:
        raise ClinfuseInputError(
            "CT does not overlap the MRI in space (affine mismatch): the images cannot be put "
            "on one grid as they are; if they show the same head, use --register "
            "(register=True) to align them",
            src.get("ct"),
        )
    transform = None
    record["registration"] = None
    if register:
        if case.ct_kind != "hu":
            raise ClinfuseInputError(
                "--register needs CT in HU; display-windowed CT is assumed co-registered",
                src.get("ct"),
            )
        from clinfuse.preprocess.register import register_rigid

        # Register at the native MRI resolution: resampling first would blur the fixed image.
        reg = register_rigid(w.mri_native, w.affine, w.ct, w.ct_aff)
        transform = reg.to_sitk()
        record["registration"] = reg.to_dict()
    fill = CT_AIR_HU if case.ct_kind == "hu" else 0.0
    ct_moved = transform is not None or resampled or "ct" in case.grids
    if ct_moved:
        w.ct = resample_to_grid(
            w.ct, w.ct_aff, w.shape, w.grid_aff, default=fill, transform=transform
        )
    record["ct_resampled"] = bool(ct_moved)
    if "ct" in case.grids:
        # said out loud (and recorded): a CT on another grid is interpolated onto the MRI's
        assert w.mri_native is not None
        note = (
            f"CT grid {tuple(case.ct.shape)} differs from the MRI grid "
            f"{tuple(w.mri_native.shape)} (shape or affine): the CT was resampled onto the "
            "MRI grid (linear)"
        )
        record.setdefault("notes", []).append(note)
        warnings.warn(note, UserWarning, stacklevel=3)
    # Bad input (refused, never fused): a CT without bone in its field of view.
    if case.ct_kind == "hu":  # a display-windowed CT's window is unknown: not checked
        check_ct_has_bone(w.ct, w.grid_spacing, src.get("ct"))


def _masks_onto_grid(w: _Work, resampled: bool, auto_masks: bool) -> None:
    """Step 4: given masks onto the grid (nearest), missing brain/bone masks automatic."""
    case, src = w.case, w.case.sources
    for r, (m, m_aff) in w.masks_in.items():
        if resampled or r in case.grids:
            m = resample_to_grid(m, m_aff, w.shape, w.grid_aff, nearest=True)
        w.masks[r] = np.asarray(m, dtype=bool)
        w.mask_source[r] = "given"
    need = {r for r in ("brain", "bone") if r not in w.masks}
    if need:
        if not auto_masks:
            raise ClinfuseInputError(
                f"no {' and '.join(sorted(need))} mask given and automatic masks are off",
                src.get("mri"),
            )
        auto = _auto_masks(w.mri, w.ct, w.grid_spacing, case.ct_kind, need, w.masks.get("bone"))
        for r, m in auto.items():
            w.masks[r] = m
            w.mask_source[r] = "auto"
    for r in ("brain", "bone"):
        if not w.masks[r].any():
            where = src.get(r) if w.mask_source[r] == "given" else src.get("ct")
            raise ClinfuseInputError(f"{r} mask is empty on the preprocessing grid", where)
    w.record["masks"] = dict(w.mask_source)
    if case.ct_kind == "hu":  # an MRI without skull or scalp (brain-extracted): refused
        check_mri_has_skull(w.mri, w.masks["bone"], w.grid_spacing, src.get("mri"))


def _into_model_range(w: _Work) -> PreparedCase:
    """Step 5: MRI robust normalisation; CT clinical + bone windows (or display mapping)."""
    case, record = w.case, w.record
    try:
        mri_n, mri_params = normalise_mri(w.mri)
    except ClinfuseInputError as err:
        raise ClinfuseInputError(str(err), case.sources.get("mri")) from err
    record["mri_normalisation"] = mri_params
    if case.ct_kind == "hu":
        ct_clin, ct_bone = apply_window(w.ct, CLINICAL_WINDOW), apply_window(w.ct, BONE_WINDOW)
        record["ct"] = {
            "kind": "hu",
            "offset_subtracted": float(case.meta.get("ct_offset", 0.0)),
            "clinical_window": _window_dict(CLINICAL_WINDOW),
            "bone_window": _window_dict(BONE_WINDOW),
            "outside_fov_hu": CT_AIR_HU,
        }
    else:
        ct_clin = display_to_model(w.ct)
        ct_bone = ct_clin.copy()  # HU cannot be recovered: one image serves both channels
        record["ct"] = {"kind": "display", "mapping": "0..255 -> [-2, 2] linear, both channels"}
    record["patient_id"] = str(case.meta.get("patient_id", case.case_id))
    # the MRI sequence, when known (`fuse --mri-contrast`, a dataset's mri_contrast): the
    # sequence-aware lesion head reads it (`PreparedCase.mri_contrast`)
    record["mri_contrast"] = parse_mri_contrast(
        case.meta.get("mri_contrast"), case.sources.get("mri")
    )
    assert w.grid_aff is not None
    return PreparedCase(
        case_id=case.case_id,
        mri=mri_n,
        ct=ct_clin,
        ct_bone=ct_bone,
        affine=w.grid_aff,
        brain=w.masks["brain"],
        bone=w.masks["bone"],
        lesion=w.masks.get("lesion"),
        ct_kind=case.ct_kind,
        mask_source=w.mask_source,
        record=record,
    )


def preprocess_case(
    case: Case,
    *,
    spacing: float | tuple[float, ...] | None = None,
    register: bool = False,
    auto_masks: bool = True,
) -> PreparedCase:
    """Bring a `Case` onto one grid in model range [-2, 2] with brain and bone masks.

    Steps (each recorded in `PreparedCase.record`): canonical RAS+ orientation; the MRI grid,
    optionally resampled to `spacing` mm; the CT (and masks on other grids) resampled onto it,
    through a rigid CT->MRI registration when `register`; masks as given (nearest-neighbour) or
    automatic (`preprocess.masks`) when `auto_masks`; MRI robust normalisation
    (`normalise_mri`); CT clinical + bone windows, or `display_to_model` for display CT.
    """
    w = _start(case)
    _canonical_orientation(w)  # 1
    _target_grid(w, spacing)  # 2
    _ct_onto_grid(w, register, resampled=spacing is not None)  # 3
    _masks_onto_grid(w, resampled=spacing is not None, auto_masks=auto_masks)  # 4
    return _into_model_range(w)  # 5


# ----------------------------------------------------------------------------- save / load


def save_prepared(prepared: PreparedCase, out_dir: str | Path) -> Path:
    """Write a prepared case as NIfTI files plus the `preprocess.json` sidecar (all atomic).

    Files: mri, ct (clinical window), ct_bone, brain, bone[, lesion] `.nii.gz` on the
    preprocessing grid; 2D cases get a singleton third axis that `load_prepared` removes.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for key, name in IMAGE_FILES.items():
        save_nifti(out / name, getattr(prepared, key), prepared.affine)
        files[key] = name
    for role, name in MASK_FILES.items():
        m = getattr(prepared, role)
        if m is not None:
            save_nifti(out / name, np.asarray(m, dtype=bool), prepared.affine)
            files[role] = name
    sidecar = {
        "case_id": prepared.case_id,
        "ct_kind": prepared.ct_kind,
        "shape": list(prepared.shape),
        "spacing": list(prepared.spacing),
        "affine": np.asarray(prepared.affine, float).tolist(),
        "files": files,
        "mask_source": dict(prepared.mask_source),
        "model_range": list(MODEL_RANGE),
        "record": prepared.record,
    }
    write_text_atomic(out / SIDECAR, json.dumps(sidecar, indent=2) + "\n")
    return out


def load_prepared(directory: str | Path) -> PreparedCase:
    """Read a folder written by `save_prepared` back into a `PreparedCase`."""
    d = Path(directory)
    side_path = d / SIDECAR
    if not side_path.is_file():
        raise ClinfuseInputError(f"not a prepared case: {SIDECAR} missing", d)
    try:
        side = json.loads(side_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ClinfuseInputError(f"cannot read sidecar ({err})", side_path) from err
    files = side.get("files", {})
    arrays: dict[str, np.ndarray] = {}
    affine = np.asarray(side["affine"], dtype=np.float64)
    for key, name in files.items():
        arr, _ = load_nifti(d / name)
        if list(arr.shape) != list(side["shape"]):
            raise ClinfuseInputError(
                f"shape {arr.shape} differs from the sidecar's {side['shape']}", d / name
            )
        arrays[key] = arr
    for role in ("brain", "bone", "lesion"):
        if role in arrays:
            arrays[role] = arrays[role] > 0.5
    for key in ("mri", "ct", "ct_bone", "brain", "bone"):
        if key not in arrays:
            raise ClinfuseInputError(f"prepared case lacks {key}", d)
    return PreparedCase(
        case_id=str(side["case_id"]),
        mri=arrays["mri"],
        ct=arrays["ct"],
        ct_bone=arrays["ct_bone"],
        affine=affine,
        brain=arrays["brain"],
        bone=arrays["bone"],
        lesion=arrays.get("lesion"),
        ct_kind=side.get("ct_kind", "hu"),
        mask_source=dict(side.get("mask_source", {})),
        record=dict(side.get("record", {})),
    )


# ----------------------------------------------------------------------------- back to native


def native_grid(prepared: PreparedCase) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, affine) of the input MRI grid that `to_native` maps back onto (for saving)."""
    rec = prepared.record
    grid, src = rec.get("grid", {}), rec.get("source_grid")
    if src and (grid.get("resampled") or rec.get("reoriented")):
        return tuple(int(s) for s in src["shape"]), np.asarray(src["affine"], np.float64)
    return prepared.shape, np.asarray(prepared.affine, np.float64)


def to_native(
    fused: np.ndarray,
    prepared: PreparedCase,
    *,
    mode: NativeMode = "auto",
    original_grid: bool = True,
) -> np.ndarray:
    """Map a fused model-range image back to native intensities (and grid), float32.

    Modes: "roi" (default for HU CT): voxels in the bone mask -> HU through the bone window
    (`invert_window`), every other voxel (brain, scalp, air) -> MRI units through
    `denormalise_mri`; "mri" / "ct_bone" / "ct_clinical": the whole image through one mapping;
    "display" (default for display CT): 0..255 (`model_to_display`). When the case was
    resampled and `original_grid`, the result is resampled (linear) back onto the MRI's input
    grid (`native_grid(prepared)` gives its shape and affine for saving), so it overlays the
    input MRI in a viewer.
    """
    x = np.asarray(fused, dtype=np.float32)
    if x.shape != prepared.shape:
        raise ValueError(f"fused shape {x.shape} != prepared shape {prepared.shape}")
    rec = prepared.record
    if mode == "auto":
        mode = "display" if prepared.ct_kind == "display" else "roi"
    if mode == "display":
        out = model_to_display(x).astype(np.float32)
    elif mode == "ct_bone":
        out = invert_window(x, BONE_WINDOW)
    elif mode == "ct_clinical":
        out = invert_window(x, CLINICAL_WINDOW)
    elif mode in ("mri", "roi"):
        if "mri_normalisation" not in rec:
            raise ValueError("prepared.record has no mri_normalisation: cannot map to MRI units")
        out = denormalise_mri(x, rec["mri_normalisation"])
        if mode == "roi":
            if prepared.ct_kind != "hu":
                raise ValueError("mode 'roi' needs HU CT; use 'display' for display CT")
            out = np.where(prepared.bone, invert_window(x, BONE_WINDOW), out).astype(np.float32)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    shape, affine = native_grid(prepared)
    if original_grid and (shape != prepared.shape or not np.allclose(affine, prepared.affine)):
        out = resample_to_grid(out, prepared.affine, shape, affine)
    return out


# ----------------------------------------------------------------------------- datasets

PREPARED_MANIFEST = "manifest.csv"
PREPARED_COLUMNS = (
    "case_id",
    "patient_id",
    "prepared",
    "ct_kind",
    "ndim",
    "shape",
    "spacing",
    "brain",
    "bone",
    "lesion",
)


def prepared_manifest_row(prepared: PreparedCase, folder: str) -> dict[str, str]:
    """One row of the prepared-dataset manifest (`folder` relative to the manifest)."""
    return {
        "case_id": prepared.case_id,
        "patient_id": str(prepared.record.get("patient_id", prepared.case_id)),
        "prepared": folder,
        "ct_kind": prepared.ct_kind,
        "ndim": str(prepared.ndim),
        "shape": "x".join(str(s) for s in prepared.shape),
        "spacing": "x".join(f"{s:g}" for s in prepared.spacing),
        "brain": prepared.mask_source.get("brain", ""),
        "bone": prepared.mask_source.get("bone", ""),
        "lesion": prepared.mask_source.get("lesion", "none"),
    }


def load_prepared_dataset(path: str | Path) -> list[PreparedCase]:
    """All cases of a folder written by `clinfuse preprocess` (its `manifest.csv`), in order."""
    import csv

    root = Path(path)
    man = root / PREPARED_MANIFEST
    if not man.is_file():
        raise ClinfuseInputError(f"not a prepared dataset: {PREPARED_MANIFEST} missing", root)
    with man.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "prepared" not in rows[0]:
        raise ClinfuseInputError("manifest has no 'prepared' column (not from preprocess)", man)
    return [load_prepared(root / r["prepared"]) for r in rows]
