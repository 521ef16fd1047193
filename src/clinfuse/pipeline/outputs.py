"""The output folder of `clinfuse fuse`: fused image, lesion probability, lesion mask and its
findings table, uncertainty, montage and run.json, written atomically (`write_outputs`)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse.nn.lesion_mask import LesionComponent, lesion_components
from clinfuse.pipeline.fuse import FusionResult
from clinfuse.preprocess.prepared import PreparedCase


def _versions() -> dict[str, str]:
    import monai
    import torch

    import clinfuse

    return {
        "clinfuse": clinfuse.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
    }


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _file_grid(arr: np.ndarray, prepared: PreparedCase, *, nearest: bool = False) -> tuple:
    """`arr` (on the prepared grid) on the input MRI's exact grid: its shape, affine and voxel
    order, for any orientation (LAS, LPI, oblique). Returns (array, affine) for `save_nifti`.

    Back onto the canonical native grid first (resampled when preprocessing changed the
    spacing: linear, or nearest for masks), then from RAS+ voxel order back to the file's order
    (axis permutations and flips only, exact; the inverse of `nibabel.as_closest_canonical`).
    A non-NIfTI MRI (DICOM) keeps the canonical grid.
    """
    import nibabel as nib
    from nibabel.orientations import inv_ornt_aff, io_orientation, ornt_transform

    from clinfuse.preprocess.pipeline import native_grid
    from clinfuse.preprocess.resample import resample_to_grid

    shape, affine = native_grid(prepared)
    out = np.asarray(arr)
    if out.shape != tuple(shape) or not np.allclose(affine, prepared.affine):
        src = out.astype(np.float32)
        out = resample_to_grid(src, prepared.affine, shape, affine, nearest=nearest)
        out = out > 0.5 if nearest else out
    path = str(prepared.record.get("sources", {}).get("mri", ""))
    if prepared.ndim != 3 or not path.lower().endswith((".nii", ".nii.gz")):
        return out, affine
    try:
        header = nib.load(path)  # header only: the file's own affine and voxel order
    except Exception:  # the input moved since: keep the canonical grid  # noqa: BLE001
        return out, affine
    file_aff = np.asarray(header.affine, np.float64)
    t = ornt_transform(io_orientation(affine), io_orientation(file_aff))
    back = nib.orientations.apply_orientation(out, t)
    back_aff = affine @ inv_ornt_aff(t, out.shape)
    if back.shape != tuple(header.shape[:3]) or not np.allclose(back_aff, file_aff, atol=1e-4):
        return out, affine  # not the grid this case came from (e.g. a resampled input)
    return np.ascontiguousarray(back), file_aff


def _on_native(prepared: PreparedCase) -> PreparedCase:
    """A stand-in whose grid is the native one: `fused_native` is already resampled there."""
    from dataclasses import replace

    from clinfuse.preprocess.pipeline import native_grid

    shape, affine = native_grid(prepared)
    dummy = np.zeros(shape, np.float32)
    return replace(prepared, mri=dummy, affine=affine)


LESION_TABLE_COLUMNS = (
    "component",
    "volume_ml",
    "mean_prob",
    "max_prob",
    "x_mm",
    "y_mm",
    "z_mm",
    "doubtful",
)


def lesion_findings(
    result: FusionResult, predicted: np.ndarray | None = None
) -> tuple[list[LesionComponent], float]:
    """The components of the head's lesion mask (`result.lesion_mask()`, or `predicted` when
    already made) and the doubt threshold they were judged by: the run's guidance gate
    `lesion_guide_min_prob` (0 when the preset has none)."""
    mask = result.lesion_mask() if predicted is None else predicted
    gate = float(result.record.get("guidance", {}).get("lesion_guide_min_prob", 0.0))
    p = result.prepared
    return lesion_components(result.lesion_prob, mask, p.spacing, p.affine, gate), gate


def lesion_summary(found: list[LesionComponent], doubt_below: float) -> dict[str, Any]:
    """run.json's `lesions`: how many components the head's lesion mask has, their total mL,
    the mL of those at or above the doubt threshold (`confident_ml`) and below it, the
    threshold, and where the table is."""
    doubtful = sum(c.volume_ml for c in found if c.doubtful)
    total = sum(c.volume_ml for c in found)
    return {
        "components": len(found),
        "total_ml": round(total, 3),
        "confident_ml": round(total - doubtful, 3),
        "doubtful_ml": round(doubtful, 3),
        "doubt_below": doubt_below,
        "table": "lesions.csv",
    }


def describe_lesions(found: list[LesionComponent], doubt_below: float) -> str:
    """One line for the console: what the head's lesion mask holds (`lesion_findings`)."""
    if not found:
        return "lesion head: no lesion found (lesions.csv is empty)"
    total = sum(c.volume_ml for c in found)
    n = len(found)
    line = f"lesion head: {n} component{'s' if n > 1 else ''}, {total:.1f} mL"
    doubtful = [c for c in found if c.doubtful]
    if doubtful:
        ml = sum(c.volume_ml for c in doubtful)
        line += (
            f"; {len(doubtful)} doubtful ({ml:.1f} mL, mean probability below the preset's "
            f"guidance gate {doubt_below:.2f})"
        )
    return line + " -> lesion_mask.nii.gz, lesions.csv"


def _write_lesion_table(path: Path, found: list[LesionComponent]) -> None:
    """lesions.csv: one row per component of the written lesion mask, most probable first
    (`nn.lesion_mask.lesion_components`); only the header when the head found nothing."""
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LESION_TABLE_COLUMNS)
        for i, c in enumerate(found, 1):
            xyz = [*c.centroid_mm, 0.0, 0.0][:3]
            w.writerow(
                [i, f"{c.volume_ml:.3f}", f"{c.mean_prob:.3f}", f"{c.max_prob:.3f}"]
                + [f"{v:.1f}" for v in xyz]
                + [int(c.doubtful)]
            )


def _write_all(result: FusionResult, folder: Path) -> list[str]:
    """Write every output file into `folder` (a fresh temp folder); return the names."""
    from clinfuse.io.nifti import save_nifti
    from clinfuse.io.png import save_png
    from clinfuse.pipeline.display import save_display
    from clinfuse.pipeline.native import DISPLAY_DESCRIP, DISPLAY_RANGE, model_to_output
    from clinfuse.preprocess.windowing import model_to_display
    from clinfuse.report.montage import save_montage

    p = result.prepared
    names = []
    output = result.record.get("output", {})
    if p.ndim == 2:
        # a PNG is 0..255 whatever the units: the display range of the model-range image
        display = model_to_display(result.fused)
        save_png(folder / "fused.png", np.clip(np.round(display), 0, 255).astype(np.uint8))
        names.append("fused.png")
    else:
        # every NIfTI output lies on the input MRI's exact grid (shape, affine, voxel order)
        if result.fused_native is not None:
            arr, aff = _file_grid(result.fused_native, _on_native(p))
        else:  # a bare `fuse_prepared` result: model units
            arr, aff = _file_grid(model_to_output(result.fused), p)
        model_units = output.get("units", "model") == "model"
        save_nifti(
            folder / "fused.nii.gz",
            arr,
            aff,
            cal_range=tuple(DISPLAY_RANGE) if model_units else None,
            descrip=DISPLAY_DESCRIP if model_units else "clinfuse fused, source units",
        )
        names.append("fused.nii.gz")
        if model_units:
            vrange = DISPLAY_RANGE
        else:  # HU and MRI units mixed: a robust window of the whole volume
            lo, hi = np.percentile(arr, [1, 99])
            vrange = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
        save_display(
            folder / "fused_display.png",
            arr,
            aff,
            vrange=vrange,
            title=f"{result.case_id}: fused ({output.get('units', 'model range')} units)",
        )
        names.append("fused_display.png")
    predicted = result.lesion_mask()
    maps = {
        "lesion_prob": result.calibrated_lesion_prob(predicted),
        "uncertainty": result.uncertainty,
    }
    masks = {
        "brain": p.brain,
        "bone": p.bone,
        "lesion_guide": result.lesion_guide,
        "lesion_mask": predicted,
    }
    for name, value in [*maps.items(), *masks.items()]:
        if value is None or p.ndim != 3 and name not in maps:
            continue
        arr, aff = _file_grid(value, p, nearest=name in masks) if p.ndim == 3 else (value, p.affine)
        save_nifti(folder / f"{name}.nii.gz", arr.astype(np.uint8) if name in masks else arr, aff)
        names.append(f"{name}.nii.gz")
    panels = {"MRI": p.mri, "CT (bone window)": p.ct_bone, "fused": result.fused}
    if result.uncertainty is not None:
        panels["uncertainty (std)"] = result.uncertainty
    overlay = {"predicted lesion": predicted}
    if p.lesion is not None and result.lesion_source in ("user", "oracle"):
        overlay[f"{result.lesion_source} lesion"] = p.lesion
    save_montage(
        folder / "montage.png",
        panels,
        overlay=overlay,
        spacing=p.spacing,
        title=f"{result.case_id}: {result.record.get('preset', '')}",
    )
    names.append("montage.png")
    found, gate = lesion_findings(result, predicted)
    _write_lesion_table(folder / "lesions.csv", found)
    names.append("lesions.csv")
    run = {
        **result.record,
        # how the mask and the written probability were made (the head's rule and calibration)
        "lesions": {**lesion_summary(found, gate), "mask_rule": result.mask_rule.describe()},
        "case_id": result.case_id,
        "timings": result.timings,
        "versions": _versions(),
        "outputs": names + ["run.json"],
    }
    (folder / "run.json").write_text(json.dumps(run, indent=2, default=_json_default) + "\n")
    names.append("run.json")
    return names


def write_outputs(
    result: FusionResult,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    inputs: tuple[str | Path, ...] = (),
) -> Path:
    """Write fused image, lesion probability, uncertainty, montage and run.json into `out_dir`.

    Everything is first written into a hidden temp folder next to `out_dir`; a new (or empty)
    `out_dir` then appears in one rename, and with `overwrite` each file replaces its old
    version with `os.replace` (run.json last, so it marks a complete run). An interrupted call
    leaves `out_dir` as it was. Refuses to write inside an input folder.
    """
    from clinfuse.io.atomic import check_output_dir

    out = Path(out_dir).expanduser().resolve()
    existed = out.exists()
    check_output_dir(out, overwrite=overwrite, inputs=inputs)  # creates `out` if missing
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        names = _write_all(result, tmp)
        if not any(out.iterdir()):
            out.rmdir()
            os.replace(tmp, out)
        else:
            for name in [n for n in names if n != "run.json"] + ["run.json"]:
                os.replace(tmp / name, out / name)
    except BaseException:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
