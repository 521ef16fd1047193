"""Diffusion core: noise schedule, DDPM/DDIM samplers (ours) and ROI guidance (``guidance.py``).

Public names of the schedule and samplers are imported lazily; import guidance from its module.
"""

from __future__ import annotations

from clinfuse._lazy import lazy_getattr

DEFAULT_STEPS = 10
"""DDIM steps of `clinfuse fuse` / `demo` / `evaluate` (the library's fuse functions too). DDIM-10
moved ROI-SSIM by at most 0.0007 against DDIM-20 on validation phantoms at half the time
(docs/SPEED.md, `benchmarks/speed_quality.py`); pass `--steps 20` for the proposal's DDIM-20."""

_EXPORTS = {
    "NoiseSchedule": "clinfuse.diffusion.schedule",
    "ddim_timesteps": "clinfuse.diffusion.samplers",
    "ddim_step": "clinfuse.diffusion.samplers",
    "ddpm_step": "clinfuse.diffusion.samplers",
    "sample": "clinfuse.diffusion.samplers",
    "SamplerState": "clinfuse.diffusion.samplers",
}
__all__ = sorted([*_EXPORTS, "DEFAULT_STEPS"])

__getattr__ = lazy_getattr(__name__, _EXPORTS)
