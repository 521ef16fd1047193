"""Networks: MRI/CT token encoders, the UNet denoiser, the lesion head and ``FusionModel``.

Public names are imported lazily so that importing the package does not load MONAI.
"""

from __future__ import annotations

from clinfuse._lazy import lazy_getattr

_EXPORTS = {
    "FusionModel": "clinfuse.nn.model",
    "ModelConfig": "clinfuse.nn.model",
    "MODEL_PRESETS": "clinfuse.nn.model",
    "pad_to_multiple": "clinfuse.nn.model",
    "ConditionEncoder": "clinfuse.nn.encoders",
    "TokenEncoder": "clinfuse.nn.encoders",
    "Denoiser": "clinfuse.nn.denoiser",
    "LesionHead": "clinfuse.nn.lesion_head",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
