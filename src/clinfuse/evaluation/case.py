"""Per-case evaluation: ROI metrics, lesion metrics, and the eight standard 2D fusion metrics."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np

from clinfuse.errors import ClinfuseInputError
from clinfuse.evaluation.percase import NO_PREDICTION_COLUMN
from clinfuse.model_range import DATA_RANGE
from clinfuse.nn.lesion_mask import LesionMaskRule
from clinfuse.preprocess.prepared import PreparedCase
from clinfuse.preprocess.windowing import model_to_display

if TYPE_CHECKING:
    from clinfuse.evaluation.reference import CtReference

ROI_COLUMNS = ("brain_ssim", "bone_ssim", "brain_psnr", "bone_psnr")
LESION_COLUMNS = ("dice", "nsd", "hd95")
FUSION_COLUMNS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")  # METRICS.md names
NSD_TAU_MM = 2.0
LESION_THRESHOLD = 0.5  # probability -> mask (then `clean_mask`'s minimum size)


def metric_columns(ndim: int) -> tuple[str, ...]:
    """The metric columns of `per_case.csv` for 2D or 3D data, in order (the lesion metrics
    followed by the `no_predicted_lesion` flag)."""
    lesion = (*LESION_COLUMNS, NO_PREDICTION_COLUMN)
    if ndim == 2:
        return FUSION_COLUMNS + ROI_COLUMNS + lesion
    return ROI_COLUMNS + lesion


def fused_to_uint8(fused: np.ndarray) -> np.ndarray:
    """The fused image as it is saved to PNG and scored: min-max scaled to 0..255, rounded."""
    from clinfuse.metrics.fusion import to_uint8

    return np.asarray(to_uint8(fused), dtype=np.uint8)


def _check_image(name: str, x: np.ndarray, shape: tuple[int, ...]) -> None:
    if x.shape != shape:
        raise ClinfuseInputError(f"{name} has shape {x.shape}, the case has shape {shape}")
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ClinfuseInputError(f"{name} contains {bad} NaN/Inf values")


def _roi_metric(fn_name: str, fused: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    if not mask.any():
        # Documented: an empty ROI gives NaN (with a warning), never a crash or a fake 1.0.
        warnings.warn(f"empty ROI: {fn_name} is NaN", RuntimeWarning, stacklevel=3)
        return math.nan
    from clinfuse.metrics import roi

    return float(getattr(roi, fn_name)(fused, ref, mask, data_range=DATA_RANGE))


def lesion_mask(
    lesion_pred: np.ndarray,
    spacing: tuple[float, ...],
    mask_rule: LesionMaskRule | None = None,
    mri: np.ndarray | None = None,
) -> np.ndarray:
    """A lesion prediction as the mask that is scored: a bool mask as given; a probability
    thresholded at `LESION_THRESHOLD` and cleaned by `mask_rule` (the lesion head's own
    `LesionMaskRule`; None keeps every component), as fuse and guidance make it. `mri`: the
    case's MRI on the same grid (a rule dropping mirror ghosts needs its plane)."""
    if lesion_pred.dtype == np.bool_:
        return lesion_pred
    return (mask_rule or LesionMaskRule()).apply(lesion_pred, spacing, LESION_THRESHOLD, mri)


def _lesion_metrics(
    pred: np.ndarray, lesion: np.ndarray, spacing: tuple[float, ...]
) -> dict[str, float]:
    from clinfuse.metrics.segmentation import dice, hd95, nsd

    return {
        "dice": float(dice(pred, lesion)),
        "nsd": float(nsd(pred, lesion, spacing, tau=NSD_TAU_MM)),
        # the image diagonal when `pred` is empty: flagged, then counted apart in summaries
        "hd95": float(hd95(pred, lesion, spacing)),
        NO_PREDICTION_COLUMN: float(not pred.any()),
    }


def evaluate_case(
    fused: np.ndarray,
    prepared: PreparedCase,
    *,
    lesion_pred: np.ndarray | None = None,
    sources_uint8: tuple[np.ndarray, np.ndarray] | None = None,
    ct_reference: CtReference | None = None,
    mask_rule: LesionMaskRule | None = None,
) -> dict[str, float]:
    """Score one fused image against its prepared case; returns `{column: value}`.

    - `brain_ssim`/`brain_psnr`: fused vs MRI inside the brain mask; `bone_ssim`/`bone_psnr`:
      fused vs the bone-window CT inside the bone mask (model range, data range 4).
    - `dice`, `nsd` (tau = 2 mm), `hd95` (mm): only when the case has a lesion mask *and* a
      lesion prediction is given (bool, or probabilities: thresholded at 0.5 and cleaned by
      `mask_rule`, the head's own `LesionMaskRule`; `lesion_mask`); NaN otherwise.
      `no_predicted_lesion` is 1 when that mask is empty (HD95 is then the image diagonal,
      which summaries count apart). Never pass the ground-truth mask as the prediction.
    - 2D only: `EN, SD, SF, MI, SCD, VIF, Qabf, SSIM` (METRICS.md) on `sources_uint8` = the
      (MRI, CT) source images as uint8 (e.g. the PNGs) and the fused image min-max scaled to
      uint8 (`fused_to_uint8`, exactly as saved). Without `sources_uint8` the prepared
      channels are mapped back linearly with `model_to_display`.
    - `ct_reference` (`evaluation.reference`, e.g. the unmoved CT of a misregistered phantom):
      every CT-derived score uses it instead of the CT the method was given: bone ROI-SSIM/PSNR
      against `ct_reference.ct_bone`, and in 2D the CT side of the fusion metrics. The brain is
      always scored against the MRI (the fixed image, which does not move).

    Raises `ClinfuseInputError` for a fused image or lesion prediction of the wrong shape, NaN/Inf
    in it, or case masks that do not match the case. An empty ROI gives NaN with a warning.
    """
    fused = np.asarray(fused)
    shape = prepared.shape
    _check_image("fused image", fused, shape)
    for role in ("brain", "bone", "lesion"):
        m = getattr(prepared, role)
        if m is not None and m.shape != shape:
            raise ClinfuseInputError(
                f"{role} mask shape {m.shape} does not match the case shape {shape}",
                prepared.case_id,
            )
    fused64 = fused.astype(np.float64)
    row: dict[str, float] = {}
    if prepared.ndim == 2:
        if sources_uint8 is None:
            sources_uint8 = (model_to_display(prepared.mri), model_to_display(prepared.ct))
        if ct_reference is not None:
            sources_uint8 = (sources_uint8[0], model_to_display(ct_reference.ct))
        a, b = (np.asarray(s) for s in sources_uint8)
        for name, s in (("MRI source", a), ("CT source", b)):
            if s.shape != shape:
                raise ClinfuseInputError(f"{name} has shape {s.shape}, the case has {shape}")
        from clinfuse.metrics.fusion import fusion_metrics

        scores = fusion_metrics(a.astype(np.uint8), b.astype(np.uint8), fused_to_uint8(fused))
        row.update({k: float(scores[k]) for k in FUSION_COLUMNS})
    brain = prepared.brain.astype(bool)
    bone = prepared.bone.astype(bool)
    ct_bone = prepared.ct_bone
    if ct_reference is not None:
        _check_image("ct_reference", ct_reference.ct_bone, shape)
        ct_bone = ct_reference.ct_bone
    row["brain_ssim"] = _roi_metric("roi_ssim", fused64, prepared.mri, brain)
    row["bone_ssim"] = _roi_metric("roi_ssim", fused64, ct_bone, bone)
    row["brain_psnr"] = _roi_metric("roi_psnr", fused64, prepared.mri, brain)
    row["bone_psnr"] = _roi_metric("roi_psnr", fused64, ct_bone, bone)
    row.update(dict.fromkeys((*LESION_COLUMNS, NO_PREDICTION_COLUMN), math.nan))
    if lesion_pred is not None:
        lesion_pred = np.asarray(lesion_pred)
        _check_image("lesion prediction", lesion_pred, shape)
        if prepared.lesion is not None:
            pred = lesion_mask(lesion_pred, prepared.spacing, mask_rule, prepared.mri)
            row.update(_lesion_metrics(pred, prepared.lesion.astype(bool), prepared.spacing))
    return row
