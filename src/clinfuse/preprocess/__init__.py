"""Preprocessing: windowing, MRI normalisation, resampling, registration, ROI masks, pipeline.

Public names are imported lazily so that importing one submodule stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clinfuse.preprocess' has no attribute {name!r}")
