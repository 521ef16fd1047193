"""Diffusion core: noise schedule, DDPM/DDIM samplers (ours) and ROI guidance (``guidance.py``).

Public names of the schedule and samplers are imported lazily; import guidance from its module.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "NoiseSchedule": "clinfuse.diffusion.schedule",
    "ddim_timesteps": "clinfuse.diffusion.samplers",
    "ddim_step": "clinfuse.diffusion.samplers",
    "ddpm_step": "clinfuse.diffusion.samplers",
    "sample": "clinfuse.diffusion.samplers",
    "SamplerState": "clinfuse.diffusion.samplers",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clinfuse.diffusion' has no attribute {name!r}")
