"""The fused image on the input MRI's grid, in the units the user asked for (`fuse
--output-units`), with the native-resolution detail restored when fusion ran on a coarser
working grid (`fuse --spacing`; `preprocess.detail.restore_detail`)."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import numpy as np

from clinfuse.choices import Choice
from clinfuse.io.case import Case
from clinfuse.model_range import MODEL_RANGE
from clinfuse.preprocess.prepared import PreparedCase

DISPLAY_RANGE = (0.0, 1.0)
"""`--output-units model`: the model range [-2, 2] mapped linearly onto [0, 1] (air 0; 1 = the
MRI's robust maximum in the brain and soft tissue, 1500 HU through the bone window in the
skull), so a viewer's automatic window shows brain and skull at once."""

DISPLAY_DESCRIP = "clinfuse fused, model range [-2,2] -> [0,1] (0 air)"


class OutputUnits(Choice):
    """Units of `fused.nii.gz`: `model` (the model's range shown as [0, 1], the default) or
    `source` (HU inside the bone mask, MRI units elsewhere)."""

    model = "model"
    source = "source"


def model_to_output(x: np.ndarray) -> np.ndarray:
    """Model range [-2, 2] -> `DISPLAY_RANGE` [0, 1], linear, clipped, float32."""
    lo, hi = MODEL_RANGE
    y = (np.asarray(x, np.float32) - lo) / (hi - lo)
    return np.clip(y, *DISPLAY_RANGE).astype(np.float32)


def resampled_by_spacing(prepared: PreparedCase) -> bool:
    """Whether preprocessing put the case on a working grid other than the MRI's own."""
    return bool(prepared.record.get("grid", {}).get("resampled", False))


def _registered_case(case: Case, prepared: PreparedCase) -> Case:
    """`case` with its CT already moved onto the MRI's grid by the rigid transform that
    `prepared` recorded, so the native-grid preprocessing does not register a second time."""
    from clinfuse.preprocess.pipeline import CT_AIR_HU
    from clinfuse.preprocess.register import RigidResult
    from clinfuse.preprocess.resample import resample_to_grid

    reg = RigidResult.from_dict(prepared.record["registration"])
    ct = resample_to_grid(
        np.asarray(case.ct, np.float32),
        case.grids.get("ct", case.affine),
        tuple(case.mri.shape),
        case.affine,
        default=CT_AIR_HU,
        transform=reg.to_sitk(),
    )
    meta = dict(case.meta)
    meta.pop("no_overlap", None)
    grids = {k: v for k, v in case.grids.items() if k != "ct"}
    return replace(case, ct=ct, grids=grids, meta=meta)


def native_prepared(case: Case, prepared: PreparedCase) -> PreparedCase:
    """The case preprocessed on the MRI's own grid (no `spacing`), as `prepared` was otherwise:
    the same registration (reused, not recomputed); masks given or automatic at native
    resolution. Preprocessing notes already said for `prepared` are not repeated."""
    from clinfuse.preprocess.pipeline import preprocess_case

    registered = prepared.record.get("registration") is not None
    src = _registered_case(case, prepared) if registered else case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return preprocess_case(src)


def fused_on_mri_grid(
    fused: np.ndarray,
    prepared: PreparedCase,
    native: PreparedCase | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The fused image (model range, on `prepared`'s grid) on the MRI's canonical grid
    (`preprocess.pipeline.native_grid`), still in the model range, and what was done.

    Resampled linearly when the working grid differs; then, when `native` (the case
    preprocessed on the MRI's grid) is given, `restore_detail` puts back each ROI's fine
    structure from its own source (MRI in the brain, bone-window CT in the skull).
    """
    from clinfuse.preprocess.detail import restore_detail
    from clinfuse.preprocess.pipeline import native_grid
    from clinfuse.preprocess.resample import resample_to_grid

    shape, affine = native_grid(prepared)
    x = np.asarray(fused, np.float32)
    info: dict[str, Any] = {"working_grid": list(prepared.shape), "native_grid": list(shape)}
    same = tuple(shape) == prepared.shape and np.allclose(affine, prepared.affine)
    if same:
        info["detail"] = "not needed (fused on the MRI's own grid)"
        return x, info
    x = resample_to_grid(x, prepared.affine, tuple(shape), affine, default=MODEL_RANGE[0])
    if native is None:
        info["detail"] = False
        return x.astype(np.float32), info
    if native.shape != tuple(shape) or not np.allclose(native.affine, affine):
        raise ValueError("`native` is not on the MRI's grid")
    x = restore_detail(x, native, prepared.shape, prepared.affine)
    info["detail"] = True
    return x, info
