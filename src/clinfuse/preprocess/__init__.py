"""Preprocessing: windowing, MRI normalisation, resampling, registration, ROI masks, pipeline.

Public names are imported lazily so that importing one submodule stays light.
"""

from __future__ import annotations

from clinfuse._lazy import lazy_getattr

_EXPORTS = {
    "PreparedCase": "clinfuse.preprocess.prepared",
    "normalise_mri": "clinfuse.preprocess.normalize",
    "denormalise_mri": "clinfuse.preprocess.normalize",
    "resample_to_grid": "clinfuse.preprocess.resample",
    "grid_with_spacing": "clinfuse.preprocess.resample",
    "register_rigid": "clinfuse.preprocess.register",
    "preprocess_case": "clinfuse.preprocess.pipeline",
    "save_prepared": "clinfuse.preprocess.pipeline",
    "load_prepared": "clinfuse.preprocess.pipeline",
    "load_prepared_dataset": "clinfuse.preprocess.pipeline",
    "to_native": "clinfuse.preprocess.pipeline",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
