"""Data in and out: NIfTI, DICOM series, PNG, dataset layouts, atomic writes.

Public names are imported lazily so that `import clinfuse.io.case` stays light.
"""

from __future__ import annotations

from clinfuse._lazy import lazy_getattr

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

__getattr__ = lazy_getattr(__name__, _EXPORTS)
