"""Diffusion core: noise schedule, DDPM/DDIM samplers (ours) and ROI guidance (``guidance.py``).

Public names of the schedule and samplers are imported lazily; import guidance from its module.
"""

from __future__ import annotations

from clinfuse._lazy import lazy_getattr

_EXPORTS = {
    "NoiseSchedule": "clinfuse.diffusion.schedule",
    "ddim_timesteps": "clinfuse.diffusion.samplers",
    "ddim_step": "clinfuse.diffusion.samplers",
    "ddpm_step": "clinfuse.diffusion.samplers",
    "sample": "clinfuse.diffusion.samplers",
    "SamplerState": "clinfuse.diffusion.samplers",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
