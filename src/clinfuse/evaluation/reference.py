"""The CT that CT-derived metrics are scored against: the case's own CT, or a separate reference
(`ct_reference`: the unmoved CT of a misregistered phantom) put on the prepared grid in both
CT windows.

A dataset gives a reference per case either as a `ct_reference` manifest column (path relative
to the manifest, empty = none) or, in the folder-of-cases layout, as `ct_reference.nii.gz`
beside the case's `mri.nii.gz`. `clinfuse synth --misregister` writes both.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse.errors import ClinfuseInputError
from clinfuse.preprocess.prepared import PreparedCase

REFERENCE_ROLE = "ct_reference"
REFERENCE_FILES = ("ct_reference.nii.gz", "ct_reference.nii")
SCORED_AGAINST_COLUMN = "ct_scored_against"
"""per_case.csv column: `input` (the CT the method was given) or `ct_reference`."""


@dataclass
class CtReference:
    """A reference CT on a prepared case's grid, in model range (the windows of `PreparedCase`)."""

    ct: np.ndarray  # clinical window (centre 40, width 400)
    ct_bone: np.ndarray  # bone window (centre 500, width 2000): bone metrics use this
    source: str  # the file it came from


def _manifest_file(data: Path) -> Path | None:
    if data.is_file():
        return data
    for name in ("manifest.csv", "manifest.json"):
        if (data / name).is_file():
            return data / name
    return None


def _manifest_rows(path: Path) -> list[dict[str, Any]]:
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = data.get("cases") if isinstance(data, dict) else data
            return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        return []  # load_dataset reports unreadable manifests; here it only means "no column"


def reference_paths(data: str | Path, refs: list[Any]) -> dict[str, Path]:
    """`{case_id: reference file}` for the cases of `data` that have a CT reference.

    `refs` are the dataset's `CaseRef`s (`clinfuse.io.dataset.load_dataset`). The manifest column
    wins, then a `ct_reference` entry of `CaseRef.paths`; otherwise a case folder (MRI file
    named `mri.*`) may hold `ct_reference.nii[.gz]`.
    A listed file that does not exist raises `ClinfuseInputError`.
    """
    data = Path(data).expanduser()
    out: dict[str, Path] = {}
    man = _manifest_file(data)
    if man is not None:
        for row in _manifest_rows(man):
            value = str(row.get(REFERENCE_ROLE) or "").strip()
            cid = str(row.get("case_id") or "").strip()
            if value and cid:
                p = Path(value).expanduser()
                p = p if p.is_absolute() else man.parent / p
                if not p.is_file():
                    raise ClinfuseInputError(f"case {cid!r}: ct_reference file not found", p)
                out[cid] = p
    for ref in refs:
        given = ref.paths.get(REFERENCE_ROLE)  # should a loader ever carry the role itself
        if ref.case_id not in out and given is not None:
            out[ref.case_id] = Path(given)
        mri = ref.paths.get("mri")
        if ref.case_id in out or mri is None or not Path(mri).name.startswith("mri."):
            continue
        for name in REFERENCE_FILES:
            if (Path(mri).parent / name).is_file():
                out[ref.case_id] = Path(mri).parent / name
                break
    return out


def load_ct_reference(path: str | Path, prepared: PreparedCase) -> CtReference:
    """Read a reference CT and bring it onto `prepared`'s grid and into its CT windows.

    The same CT offset as the case's (`record["ct"]["offset_subtracted"]`) is subtracted; a
    reference on another grid is resampled linearly (air outside its field of view), as
    `preprocess_case` does for the CT. Display-windowed cases map 0..255 onto [-2, 2].
    """
    from clinfuse.io.dataset import load_image
    from clinfuse.preprocess.windowing import (
        BONE_WINDOW,
        CLINICAL_WINDOW,
        apply_window,
        display_to_model,
    )

    arr, aff = load_image(path)
    if arr.ndim != prepared.ndim:
        raise ClinfuseInputError(
            f"ct_reference is {arr.ndim}D but the case is {prepared.ndim}D", path
        )
    if not np.all(np.isfinite(arr)):
        raise ClinfuseInputError("ct_reference contains NaN or Inf values", path)
    same = arr.shape == prepared.shape and np.allclose(aff, prepared.affine, atol=1e-3, rtol=1e-4)
    rec = prepared.record.get("ct", {})
    if prepared.ct_kind == "hu":
        arr = arr - np.float32(rec.get("offset_subtracted", 0.0))
    if not same:
        if prepared.ndim == 2:
            raise ClinfuseInputError(
                f"ct_reference has shape {arr.shape}, the case {prepared.shape}; 2D images "
                "must share one pixel grid",
                path,
            )
        from clinfuse.preprocess.pipeline import CT_AIR_HU
        from clinfuse.preprocess.resample import resample_to_grid

        fill = CT_AIR_HU if prepared.ct_kind == "hu" else 0.0
        arr = resample_to_grid(arr, aff, prepared.shape, prepared.affine, default=fill)
    if prepared.ct_kind == "hu":
        ct, ct_bone = apply_window(arr, CLINICAL_WINDOW), apply_window(arr, BONE_WINDOW)
    else:
        ct = display_to_model(arr)
        ct_bone = ct.copy()
    return CtReference(ct=ct, ct_bone=ct_bone, source=str(path))


def scored_against_note(rows: list[dict[str, Any]]) -> str | None:
    """One sentence for summary.md saying which CT the CT-derived metrics used, or None."""
    used = [r.get(SCORED_AGAINST_COLUMN) for r in rows if not r.get("error")]
    n_ref = sum(1 for u in used if u == REFERENCE_ROLE)
    if not n_ref:
        return None
    rest = "" if n_ref == len(used) else ", against the input CT in the others"
    return (
        "CT-derived metrics (bone ROI-SSIM/PSNR; in 2D the CT side of the fusion metrics) "
        "scored against the CT reference (`ct_reference`, e.g. the unmoved CT of a "
        f"misregistered phantom) in {n_ref} of {len(used)} cases{rest}."
    )
