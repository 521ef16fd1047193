"""`write_phantom_dataset`: N seeded phantoms in the folder-of-cases layout plus manifest.csv,
written atomically and byte-reproducibly (gzip without timestamps)."""

from __future__ import annotations

import gzip
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from clinfuse.errors import ClinfuseInputError
from clinfuse.phantom.config import LESION_KINDS, MIXED_CONTRASTS, MRI_CONTRASTS, PhantomConfig
from clinfuse.phantom.generate import Phantom, generate_phantom

MANIFEST_COLUMNS = ("case_id", "mri", "ct", "brain", "bone", "lesion")
CASE_FILES = ("mri.nii.gz", "ct.nii.gz", "brain.nii.gz", "bone.nii.gz", "lesion.nii.gz")
# The unmoved CT of a misregistered case (on the MRI grid): what evaluation scores CT-derived
# metrics against (`clinfuse.evaluation.reference`). Written, and listed in an extra manifest
# column, only when the config moves the CT.
REFERENCE_ROLE = "ct_reference"
REFERENCE_FILE = f"{REFERENCE_ROLE}.nii.gz"


def _atomic_bytes(path: Path, data: bytes) -> None:
    """Write bytes to `path` via a temp file in the same folder and `os.replace`."""
    tmp = path.parent / f".tmp-{uuid.uuid4().hex[:12]}-{path.name}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A .nii.gz as bytes: same array and affine -> same bytes (gzip mtime fixed at 0).

    2D arrays are stored as (x, y, 1) so viewers show one axial slice; `clinfuse.io.nifti`
    squeezes them back to 2D on load.
    """
    arr = array[..., None] if array.ndim == 2 else array
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def write_phantom_case(folder: Path, phantom: Phantom) -> dict[str, str]:
    """Write one phantom's NIfTI files (five, plus `ct_reference.nii.gz` when the CT is moved)
    and truth.json into `folder`; return role -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    c = phantom.case
    arrays = {
        "mri": c.mri.astype(np.float32),
        "ct": c.ct.astype(np.int16),  # integer HU, as scanners store it
        "brain": np.asarray(c.brain, dtype=np.uint8),
        "bone": np.asarray(c.bone, dtype=np.uint8),
        "lesion": np.asarray(c.lesion, dtype=np.uint8),
    }
    if phantom.ct_reference is not None:
        arrays[REFERENCE_ROLE] = phantom.ct_reference.astype(np.int16)
    paths = {}
    for role, arr in arrays.items():
        path = folder / f"{role}.nii.gz"
        _atomic_bytes(path, nifti_bytes(arr, c.affine))
        paths[role] = str(path)
    truth = dict(phantom.truth, case_id=c.case_id, affine=np.asarray(c.affine).tolist())
    truth["ct_reference"] = REFERENCE_FILE if phantom.ct_reference is not None else None
    text = json.dumps(truth, indent=2, sort_keys=True) + "\n"
    _atomic_bytes(folder / "truth.json", text.encode("utf-8"))
    return paths


def case_config(base: PhantomConfig, index: int, contrast: str, lesion: str) -> PhantomConfig:
    """The config of case `index`: "mixed" contrast/lesion cycle through the choices so every
    kind appears in a small dataset (deterministic, independent of the seed). The lesion cycle
    is shifted every 3 cases so that, when both are mixed, 9 cases cover all 9 pairs."""
    if contrast == "mixed":
        c = MIXED_CONTRASTS[index % len(MIXED_CONTRASTS)]
    elif contrast == "all":
        c = MRI_CONTRASTS[index % len(MRI_CONTRASTS)]
    else:
        c = contrast
    les = LESION_KINDS[(index + index // 3) % 3] if lesion == "mixed" else lesion
    return replace(base, mri_contrast=c, lesion=les)


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse a non-folder `out` or a non-empty one without `overwrite` (nothing is written)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ClinfuseInputError("output path exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ClinfuseInputError(
            "output folder exists and is not empty; pass --overwrite to replace its files", out
        )
    return out


def write_phantom_dataset(
    out: str | Path,
    n: int,
    config: PhantomConfig,
    seed: int,
    overwrite: bool = False,
    contrast: str | None = None,
    lesion: str | None = None,
    progress: Callable[[int, str], Any] | None = None,
) -> Path:
    """Write `n` phantoms to `<out>/<case_id>/...` plus `<out>/manifest.csv`; return `out`.

    Case i uses `numpy.random.default_rng(seed + i)`, so any single case can be regenerated on
    its own. `contrast`/`lesion` override the config's; "mixed" cycles T1/T2/ADC and
    ischaemic/haemorrhagic/none over the cases ("all" cycles the five contrasts). Refuses a
    non-empty `out` unless `overwrite`.
    `progress(i, case_id)` is called after each case. With a misregistration, each case also
    gets `ct_reference.nii.gz` (the unmoved CT) and the manifest a `ct_reference` column.
    """
    if n < 1:
        raise ClinfuseInputError(f"--n must be >= 1, got {n}")
    contrast = contrast or config.mri_contrast
    lesion = lesion or config.lesion
    if contrast not in (*MRI_CONTRASTS, "mixed", "all"):
        raise ClinfuseInputError(
            f"contrast must be one of {MRI_CONTRASTS}, 'mixed' or 'all': {contrast}"
        )
    if lesion not in (*LESION_KINDS, "mixed"):
        raise ClinfuseInputError(f"lesion must be one of {LESION_KINDS} or 'mixed': {lesion}")
    out = check_out_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(n - 1)))
    moved = any(v > 0 for v in config.misregistration)
    files = (*CASE_FILES, REFERENCE_FILE) if moved else CASE_FILES
    rows = [",".join((*MANIFEST_COLUMNS, REFERENCE_ROLE) if moved else MANIFEST_COLUMNS)]
    for i in range(n):
        case_id = f"phantom_{i:0{width}d}"
        cfg = case_config(config, i, contrast, lesion)
        ph = generate_phantom(cfg, np.random.default_rng(seed + i))
        ph.case.case_id = case_id
        ph.truth["seed"] = seed + i
        write_phantom_case(out / case_id, ph)
        rows.append(",".join([case_id, *(f"{case_id}/{f}" for f in files)]))
        if progress is not None:
            progress(i, case_id)
    _atomic_bytes(out / "manifest.csv", ("\n".join(rows) + "\n").encode("utf-8"))
    return out
