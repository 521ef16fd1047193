"""Datasets and cases on disk: the accepted layouts (folder of cases, manifest CSV/JSON, APIS,
Harvard PNG pairs, DICOM series), `CaseRef` and `load_case`, with input validation.

The exact file names accepted are documented in docs/DATA.md.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from clinfuse.choices import parse_mri_contrast
from clinfuse.errors import ClinfuseInputError
from clinfuse.io.case import MASK_ROLES, Case, CtKind
from clinfuse.io.dicom import load_dicom_series
from clinfuse.io.nifti import NIFTI_SUFFIXES, is_nifti, load_nifti
from clinfuse.io.png import load_png
from clinfuse.io.sitk import load_sitk_image

ROLES = ("mri", "ct", *MASK_ROLES)
MANIFEST_COLUMNS = ("case_id", "mri", "ct", "brain", "bone", "lesion")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_ROLE_SUFFIXES = (*NIFTI_SUFFIXES, ".png", *SITK_SUFFIXES)
# APIS (paired NCCT + ADC + lesion): name fragments we accept, matched case-insensitively.
APIS_CT_KEYS = ("ncct",)
APIS_MRI_KEYS = ("adc",)
APIS_LESION_KEYS = ("lesion", "mask", "msk", "label", "seg")
# Raw CT stored as unsigned HU + 1024 (e.g. VTK headsq, Visible Male slab).
RAW_CT_OFFSET = 1024.0

CtOffset = float | Literal["auto"]


@dataclass
class CaseRef:
    """Where one case lives on disk. `paths[role]` is a NIfTI/PNG file or a DICOM folder.

    `patient_id` groups cases of one patient (e.g. the slices of one Harvard case), so that
    train/test splits can be made by patient.
    """

    case_id: str
    paths: dict[str, Path]
    ct_kind: CtKind = "hu"
    patient_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def load(self, ct_offset: CtOffset = "auto") -> Case:
        """Read the files into a validated `Case` (raises `ClinfuseInputError` on bad input)."""
        case = load_case(
            **{r: self.paths.get(r) for r in ROLES},
            case_id=self.case_id,
            ct_kind=self.ct_kind,
            ct_offset=ct_offset,
        )
        case.meta["patient_id"] = self.patient_id or self.case_id
        case.meta.update(self.meta)
        return case


# ----------------------------------------------------------------------------- images and masks


def load_image(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One image as float32 and its 4x4 affine: NIfTI file, NRRD/MetaImage (SimpleITK), 8-bit
    PNG (identity affine, i.e. 1 mm pixels, because PNG carries no geometry) or a DICOM series
    folder."""
    path = Path(path)
    if path.is_dir():
        return load_dicom_series(path)
    if not path.exists():
        raise ClinfuseInputError("file not found", path)
    if is_nifti(path):
        return load_nifti(path)
    if path.suffix.lower() == ".png":
        return load_png(path).astype(np.float32), np.eye(4)
    if path.suffix.lower() in SITK_SUFFIXES:
        return load_sitk_image(path)
    raise ClinfuseInputError(
        "unsupported file type; use .nii/.nii.gz, .nrrd, .mha/.mhd, .png, or a folder holding "
        "one DICOM series",
        path,
    )


def as_binary_mask(values: np.ndarray, role: str, path: str | Path | None = None) -> np.ndarray:
    """Check that a mask holds only 0 and 1 and return it as bool.

    Label maps (integers > 1) and soft masks are refused: silently thresholding them could
    merge structures or move a boundary, which would change every ROI metric.
    """
    uniq = np.unique(values)
    bad = uniq[(uniq != 0) & (uniq != 1)]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:5])
        if np.all(bad == np.round(bad)) and np.all(bad > 1):
            msg = (
                f"{role} mask has label values > 1 ({shown}); a mask must be binary 0/1. "
                "Multi-label maps are not accepted: save the one label you mean as 0/1"
            )
        else:
            msg = f"{role} mask is not binary: values other than 0/1 found ({shown})"
        raise ClinfuseInputError(msg, path)
    return values.astype(bool)


def guess_ct_offset(ct: np.ndarray) -> float:
    """Return 1024 when a CT looks stored as raw HU + 1024, else 0.

    Real HU CT has air near -1000 (and padding down to -3024), so it always has strongly
    negative values. Raw unsigned storage has no value below 0, air near 0 and bone above ~1500.
    """
    lo = float(np.min(ct))
    if lo < -1.0:
        return 0.0
    air_like = float(np.percentile(ct, 5)) < 100.0
    return RAW_CT_OFFSET if air_like and float(np.max(ct)) > 1500.0 else 0.0


def _grid_box(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-space bounding box (RAS mm) of a 3D grid's voxel centres."""
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:4]
    return world.min(axis=1), world.max(axis=1)


def grids_overlap(
    a_shape: tuple[int, ...], a_aff: np.ndarray, b_shape: tuple[int, ...], b_aff: np.ndarray
) -> bool:
    """True when the world bounding boxes of two 3D grids intersect."""
    lo_a, hi_a = _grid_box(a_shape, a_aff)
    lo_b, hi_b = _grid_box(b_shape, b_aff)
    return bool(np.all(np.minimum(hi_a, hi_b) >= np.maximum(lo_a, lo_b)))


def _same_grid(a_shape: tuple[int, ...], a_aff: np.ndarray, b_shape: tuple[int, ...],
               b_aff: np.ndarray) -> bool:  # fmt: skip
    # 1e-3 mm / 1e-4 relative: float32 round-trips of the same header differ by less.
    return a_shape == b_shape and np.allclose(a_aff, b_aff, atol=1e-3, rtol=1e-4)


def load_case(
    mri: str | Path,
    ct: str | Path,
    brain: str | Path | None = None,
    bone: str | Path | None = None,
    lesion: str | Path | None = None,
    *,
    case_id: str | None = None,
    ct_kind: CtKind = "hu",
    ct_offset: CtOffset = "auto",
) -> Case:
    """Load one case from files and validate it.

    Each image may be NIfTI, PNG or a DICOM folder. Arrays on a different 3D grid from the MRI
    (other shape or affine, but overlapping in space) are kept with their own affine in
    `Case.grids` and resampled later by `preprocess_case`; a CT that does not overlap the MRI
    at all is accepted but flagged (`meta["no_overlap"]`): only registration can align it.
    2D inputs must share the MRI's shape. `ct_offset`: a value subtracted from the CT to get
    HU, or "auto" (1024 when the CT looks like raw HU + 1024, with a warning; see
    `guess_ct_offset`).
    """
    if mri is None or ct is None:
        raise ClinfuseInputError("a case needs both an MRI and a CT", mri or ct)
    paths = {"mri": mri, "ct": ct, "brain": brain, "bone": bone, "lesion": lesion}
    sources = {r: str(p) for r, p in paths.items() if p is not None}
    m_arr, m_aff = load_image(mri)
    arrays: dict[str, np.ndarray] = {"mri": m_arr}
    grids: dict[str, np.ndarray] = {}
    no_overlap: list[str] = []
    for role in ("ct", *MASK_ROLES):
        p = paths[role]
        if p is None:
            continue
        arr, aff = load_image(p)
        if arr.ndim != m_arr.ndim:
            raise ClinfuseInputError(
                f"{role} is {arr.ndim}D but the MRI ({mri}) is {m_arr.ndim}D: 2D/3D mix", p
            )
        if role != "ct":
            arr = as_binary_mask(arr, role, p)
        if not _same_grid(arr.shape, aff, m_arr.shape, m_aff):
            if arr.ndim == 2:
                raise ClinfuseInputError(
                    f"{role} has shape {arr.shape} / spacing "
                    f"{np.linalg.norm(aff[:3, :2], axis=0).round(3).tolist()} but the MRI has "
                    f"{m_arr.shape} / {np.linalg.norm(m_aff[:3, :2], axis=0).round(3).tolist()}; "
                    "2D images must share one pixel grid",
                    p,
                )
            if not grids_overlap(arr.shape, aff, m_arr.shape, m_aff):
                msg = (
                    f"{role} does not overlap the MRI in space (affine mismatch: its origin is "
                    f"{aff[:3, 3].round(1).tolist()} mm, the MRI's {m_aff[:3, 3].round(1).tolist()}"
                    " mm); the images cannot be put on one grid"
                )
                if role != "ct":
                    raise ClinfuseInputError(msg, p)
                # A CT from another scanner may use another world origin: rigid registration
                # (which starts by centring the volumes) can still align it, so only
                # `preprocess_case` without registration refuses it.
                no_overlap.append(role)
            grids[role] = aff
        arrays[role] = arr
    ct_arr = arrays["ct"]
    meta: dict[str, Any] = {"no_overlap": no_overlap} if no_overlap else {}
    if ct_kind == "hu":
        off = guess_ct_offset(ct_arr) if ct_offset == "auto" else float(ct_offset)
        if ct_offset == "auto" and off:
            warnings.warn(
                f"{ct}: CT has no negative values and air near 0: read as raw HU + {off:g}, "
                f"so {off:g} was subtracted (pass ct_offset=0 / --ct-offset 0 to keep it)",
                UserWarning,
                stacklevel=2,
            )
        if off:
            ct_arr = ct_arr - np.float32(off)
        meta["ct_offset"] = off
    case = Case(
        case_id=case_id or Path(mri).name.split(".")[0],
        mri=arrays["mri"],
        ct=ct_arr.astype(np.float32),
        affine=m_aff,
        brain=arrays.get("brain"),
        bone=arrays.get("bone"),
        lesion=arrays.get("lesion"),
        ct_kind=ct_kind,
        sources=sources,
        meta=meta,
        grids=grids,
    )
    case.validate()
    return case


# ----------------------------------------------------------------------------- layouts


def _role_file(folder: Path, role: str) -> Path | None:
    for suffix in _ROLE_SUFFIXES:
        p = folder / f"{role}{suffix}"
        if p.is_file():
            return p
    d = folder / role
    return d if d.is_dir() else None  # a DICOM series folder


def _is_case_folder(folder: Path) -> bool:
    return _role_file(folder, "mri") is not None and _role_file(folder, "ct") is not None


def _case_from_folder(folder: Path) -> CaseRef:
    paths = {r: p for r in ROLES if (p := _role_file(folder, r)) is not None}
    return CaseRef(case_id=folder.name, paths=paths, meta=_contrast_meta(truth_contrast(folder)))


def truth_contrast(folder: Path) -> str | None:
    """The MRI sequence a generated case records in its `truth.json` (phantoms:
    `config.mri_contrast`; real-anatomy pairs: `mri_contrast`), or None when the folder has no
    such file or it says nothing. A malformed file is a `ClinfuseInputError` naming it."""
    path = folder / "truth.json"
    if not path.is_file():
        return None
    try:
        truth = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ClinfuseInputError(f"cannot read truth file ({err})", path) from err
    value = truth.get("mri_contrast") if isinstance(truth, dict) else None
    if value is None and isinstance(truth, dict) and isinstance(truth.get("config"), dict):
        value = truth["config"].get("mri_contrast")
    return parse_mri_contrast(value, path)


def _contrast_meta(contrast: str | None) -> dict[str, Any]:
    return {} if contrast is None else {"mri_contrast": contrast}


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p))


def _match(files: list[Path], keys: tuple[str, ...]) -> list[Path]:
    return [p for p in files if any(k in p.name.lower() for k in keys)]


def _is_apis_case(folder: Path) -> bool:
    files = _nifti_files(folder)
    return bool(_match(files, APIS_CT_KEYS)) and bool(_match(files, APIS_MRI_KEYS))


def _apis_case(folder: Path) -> CaseRef:
    """APIS case folder: `*ncct*.nii[.gz]` (CT), `*adc*.nii[.gz]` (the MRI), and the lesion mask
    either as `*lesion*|*mask*|*msk*|*label*|*seg*.nii[.gz]` beside them or as the single NIfTI
    file inside a sub-folder (APIS ships `<case>/masks/<file>`)."""
    files = _nifti_files(folder)
    picked: dict[str, Path] = {}
    for role, keys in (("ct", APIS_CT_KEYS), ("mri", APIS_MRI_KEYS)):
        hits = _match(files, keys)
        if len(hits) != 1:
            raise ClinfuseInputError(
                f"APIS case needs exactly one *{keys[0]}* NIfTI file, found {len(hits)}", folder
            )
        picked[role] = hits[0]
    rest = [p for p in files if p not in picked.values()]
    lesion = _match(rest, APIS_LESION_KEYS)
    if not lesion:
        for sub in sorted(d for d in folder.iterdir() if d.is_dir()):
            lesion += _nifti_files(sub)
    if len(lesion) > 1:
        raise ClinfuseInputError(
            f"APIS case has {len(lesion)} candidate lesion masks "
            f"({', '.join(p.name for p in lesion)}); keep one",
            folder,
        )
    if lesion:
        picked["lesion"] = lesion[0]
    # APIS's MRI is the ADC map (`APIS_MRI_KEYS`)
    return CaseRef(
        case_id=folder.name, paths=picked, meta={"layout": "apis", "mri_contrast": "ADC"}
    )


def _resolve(base: Path, value: str | None) -> Path | None:
    if value is None or str(value).strip() == "":
        return None
    p = Path(str(value).strip()).expanduser()
    return p if p.is_absolute() else base / p


def _read_manifest_rows(path: Path) -> list[dict[str, Any]]:
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = data.get("cases") if isinstance(data, dict) else data
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ClinfuseInputError(
                    'JSON manifest must be a list of objects or {"cases": [...]}', path
                )
            return rows
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        msg = f"cannot read manifest ({type(err).__name__}: {err})"
        raise ClinfuseInputError(msg, path) from err


def _manifest(path: Path, rows: list[dict[str, Any]]) -> list[CaseRef]:
    """Manifest with columns case_id, mri, ct, brain, bone, lesion (paths relative to the
    manifest; empty = absent) and optional ct_kind (hu|display), patient_id and mri_contrast
    (the MRI sequence: T1, T2, ADC, FLAIR, DWI or unknown; an empty or missing value falls back
    to a `truth.json` beside the MRI file, `truth_contrast`)."""
    if not rows:
        raise ClinfuseInputError("manifest has no rows", path)
    missing = [c for c in ("case_id", "mri", "ct") if c not in rows[0]]
    if missing:
        raise ClinfuseInputError(
            f"manifest lacks column(s) {', '.join(missing)}; expected {','.join(MANIFEST_COLUMNS)}",
            path,
        )
    refs, seen = [], set()
    for i, row in enumerate(rows):
        cid = str(row.get("case_id") or "").strip()
        if not cid:
            raise ClinfuseInputError(f"manifest row {i + 1} has no case_id", path)
        if cid in seen:
            raise ClinfuseInputError(f"case_id {cid!r} appears twice", path)
        seen.add(cid)
        paths = {r: p for r in ROLES if (p := _resolve(path.parent, row.get(r))) is not None}
        for r in ("mri", "ct"):
            if r not in paths:
                raise ClinfuseInputError(f"case {cid!r} has no {r} path", path)
        kind = str(row.get("ct_kind") or "hu").strip().lower()
        if kind not in ("hu", "display"):
            raise ClinfuseInputError(f"case {cid!r}: ct_kind must be hu or display", path)
        pid = str(row.get("patient_id") or "").strip() or None
        given = str(row.get("mri_contrast") or "").strip()
        contrast = (
            parse_mri_contrast(given, f"{path} (case {cid!r}, column mri_contrast)")
            if given
            else truth_contrast(paths["mri"].parent)
        )
        refs.append(
            CaseRef(
                case_id=cid,
                paths=paths,
                ct_kind=kind,  # type: ignore[arg-type]
                patient_id=pid,
                meta=_contrast_meta(contrast),
            )
        )
    return refs


def _harvard(folder: Path, rows: list[dict[str, Any]]) -> list[CaseRef]:
    """Harvard AANLIB PNG pairs: manifest.csv (index, case_id, slice), mri/NNN.png, ct/NNN.png.
    Case ids are `<patient>_<slice:03d>` (e.g. `16_007`); `patient_id` is the patient."""
    refs = []
    for row in rows:
        idx = str(row["index"]).strip()
        if idx.isdigit():
            idx = f"{int(idx):03d}"
        pid = str(row["case_id"]).strip()
        sl = str(row.get("slice", idx)).strip()
        cid = f"{pid}_{int(sl):03d}" if sl.isdigit() else f"{pid}_{sl}"
        paths = {"mri": folder / "mri" / f"{idx}.png", "ct": folder / "ct" / f"{idx}.png"}
        refs.append(
            CaseRef(cid, paths, ct_kind="display", patient_id=pid, meta={"layout": "harvard"})
        )
    return refs


def load_dataset(path: str | Path) -> list[CaseRef]:
    """Find the cases of a dataset; files are not read yet (call `CaseRef.load()`).

    `path` may be: a manifest .csv/.json; a folder with `manifest.csv`/`manifest.json` (a case
    manifest, or the Harvard PNG manifest with `index,case_id,slice` and `mri/`, `ct/`); a single
    case folder (`mri.nii.gz`, `ct.nii.gz`, ...); an APIS case folder; or a folder of case
    folders (plain or APIS). See docs/DATA.md.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ClinfuseInputError("dataset path not found", path)
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".json"):
            raise ClinfuseInputError("a dataset file must be a manifest .csv or .json", path)
        return _manifest(path, _read_manifest_rows(path))
    for name in ("manifest.csv", "manifest.json"):
        man = path / name
        if man.is_file():
            rows = _read_manifest_rows(man)
            if rows and "mri" in rows[0] and "ct" in rows[0]:
                return _manifest(man, rows)
            if rows and {"index", "case_id"} <= set(rows[0]) and (path / "mri").is_dir():
                return _harvard(path, rows)
            if rows and "prepared" in rows[0]:
                raise ClinfuseInputError(
                    "this is a prepared dataset (output of `clinfuse preprocess`); read it with "
                    "clinfuse.preprocess.pipeline.load_prepared_dataset, or give the raw data",
                    man,
                )
            raise ClinfuseInputError(
                "manifest has neither case columns (case_id,mri,ct,...) nor the Harvard PNG "
                "columns (index,case_id,slice with mri/ and ct/ folders)",
                man,
            )
    if _is_case_folder(path):
        return [_case_from_folder(path)]
    if _is_apis_case(path):
        return [_apis_case(path)]
    refs = []
    for sub in sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if _is_case_folder(sub):
            refs.append(_case_from_folder(sub))
        elif _is_apis_case(sub):
            refs.append(_apis_case(sub))
        else:
            raise ClinfuseInputError(
                "sub-folder is not a case: expected mri.nii[.gz]/mri.png/mri/ (DICOM) and "
                "ct.nii[.gz]/ct.png/ct/, or APIS *ncct* + *adc* NIfTI files",
                sub,
            )
    if not refs:
        raise ClinfuseInputError(
            "no cases found: not a manifest, a case folder, or a folder of case folders", path
        )
    return refs
