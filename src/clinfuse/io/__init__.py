"""Data in and out: NIfTI, DICOM series, PNG, dataset layouts, atomic writes.

Public names are imported lazily so that `import clinfuse.io.case` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Case": "clinfuse.io.case",
    "atomic_write": "clinfuse.io.atomic",
    "check_output_dir": "clinfuse.io.atomic",
    "load_nifti": "clinfuse.io.nifti",
    "save_nifti": "clinfuse.io.nifti",
    "load_dicom_series": "clinfuse.io.dicom",
    "load_png": "clinfuse.io.png",
    "save_png": "clinfuse.io.png",
    "CaseRef": "clinfuse.io.dataset",
    "load_case": "clinfuse.io.dataset",
    "load_dataset": "clinfuse.io.dataset",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clinfuse.io' has no attribute {name!r}")
