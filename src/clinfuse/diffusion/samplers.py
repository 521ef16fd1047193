"""DDIM / DDPM reverse steps and the one sampling loop (`sample`).

ROI guidance (`guidance.guided_sample`) is this loop with a `Guide` plugged in: the loop calls
`guide.guide_x0` between the network's x̂0 and the step, and `guide.guide_x_prev` after it.
Without a guide it is plain DDIM/DDPM.

Symbols as in ``schedule.py``; DDIM follows Song et al. 2021 eq. 12 and 16, DDPM the posterior
q(x_{t'} | x_t, x0) of Ho et al. 2020 eq. 6–7 (generalised to strided steps t' < t).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch

from clinfuse.diffusion.schedule import NoiseSchedule
from clinfuse.model_range import MODEL_RANGE

if TYPE_CHECKING:  # the model module imports nothing from here; avoid a runtime cycle anyway
    from clinfuse.nn.model import FusionModel

Sampler = Literal["ddim", "ddpm"]
X0_CLIP = MODEL_RANGE[1]  # x̂0 outside the model range [-2, 2] is never right (ARCHITECTURE.md)


def ddim_timesteps(num_train: int = 1000, steps: int = 20) -> list[int]:
    """Descending timesteps for a ``steps``-step sampler, "trailing" spacing.

    The first step is always ``num_train - 1`` (pure noise, as training saw it) and the spacing is
    ``num_train / steps``: 1000/20 → ``[999, 949, …, 49]``; the last step goes to ``t_prev = -1``.
    (Lin et al. 2024 show that the "leading" spacing 950…0 starts from a not-quite-noise level.)
    """
    if not 1 <= steps <= num_train:
        raise ValueError(f"steps must be in [1, {num_train}], got {steps}")
    stride = num_train / steps
    ts = [round(num_train - i * stride) - 1 for i in range(steps)]
    return ts


def _coef(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """Per-sample float64 coefficients → ``like``'s dtype/device, broadcastable to it."""
    out = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return out.reshape(out.shape + (1,) * (like.ndim - out.ndim))


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def ddim_step(
    x_t: torch.Tensor,
    x0_hat: torch.Tensor,
    eps_hat: torch.Tensor,
    t: torch.Tensor | int,
    t_prev: torch.Tensor | int,
    schedule: NoiseSchedule,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One DDIM step x_t → x_{t_prev} (Song et al. eq. 12); ``t_prev = -1`` gives the final x0.

    x_prev = √ᾱ_prev·x̂0 + √(1 − ᾱ_prev − σ²)·ε̂ + σ·z,
    σ = η·√((1 − ᾱ_prev)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev)  (eq. 16; η = 0 deterministic, 1 ≈ DDPM).
    Tensors ``(B, C, *S)``; t, t_prev ints or ``(B,)``. ``x_t`` only sets device/dtype here.
    """
    # coefficients in float64 (numpy), cast once: see NoiseSchedule.alpha_bar64
    ab_t, ab_prev = schedule.alpha_bar64(t), schedule.alpha_bar64(t_prev)
    sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
    c_dir = np.sqrt(np.clip(1 - ab_prev - sigma**2, 0.0, None))
    x_prev = _coef(np.sqrt(ab_prev), x0_hat) * x0_hat + _coef(c_dir, eps_hat) * eps_hat
    if eta > 0:
        x_prev = x_prev + _coef(sigma, x_t) * _noise_like(x_t, generator)
    return x_prev


def ddpm_step(
    x_t: torch.Tensor,
    x0_hat: torch.Tensor,
    t: torch.Tensor | int,
    t_prev: torch.Tensor | int,
    schedule: NoiseSchedule,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One ancestral DDPM step: a sample of q(x_{t_prev} | x_t, x̂0) (Ho et al. eq. 6–7).

    With a = ᾱ_t/ᾱ_prev (the α of the stride) and b = 1 − a:
    mean = √ᾱ_prev·b/(1−ᾱ_t)·x̂0 + √a·(1−ᾱ_prev)/(1−ᾱ_t)·x_t, variance β̃ = (1−ᾱ_prev)/(1−ᾱ_t)·b
    ("fixed small"). For ``t_prev = t - 1`` this is exactly DDPM; no noise when ``t_prev < 0``.
    """
    ab_t, ab_prev = schedule.alpha_bar64(t), schedule.alpha_bar64(t_prev)
    a = ab_t / ab_prev
    b = 1 - a
    c_x0 = np.sqrt(ab_prev) * b / (1 - ab_t)
    c_xt = np.sqrt(a) * (1 - ab_prev) / (1 - ab_t)
    std = np.sqrt(np.clip((1 - ab_prev) / (1 - ab_t) * b, 0.0, None))
    mean = _coef(c_x0, x0_hat) * x0_hat + _coef(c_xt, x_t) * x_t
    if not np.any(std > 0):  # final step: no noise (and no draw from the generator)
        return mean
    return mean + _coef(std, x_t) * _noise_like(x_t, generator)


@dataclass
class SamplerState:
    """What a ``guide`` and a ``callback`` see at one step of :func:`sample` (``(B, C, *S)``)."""

    index: int  # 0-based step number
    t: int
    t_prev: int  # -1 on the final step
    x_t: torch.Tensor
    x0_hat: torch.Tensor  # after clipping (and after guide_x0 once the step is taken)
    eps_hat: torch.Tensor
    x_prev: torch.Tensor | None  # None until the step is taken
    tokens: torch.Tensor  # (B, N, token_dim), computed once per call
    t_batch: torch.Tensor | None = None  # (B,) long: t for every item
    info: dict[str, float] = field(default_factory=dict)  # per-step log (t, guidance losses)


StepCallback = Callable[[SamplerState], "torch.Tensor | None"]
ProgressFn = Callable[[int, int, dict[str, Any]], None]
"""`progress(steps_done, n_steps, info)`: called after every step (info: t, guidance losses)."""


class Guide(Protocol):
    """What `sample` asks of a guidance method (`guidance.RoiGuide` implements Algorithm 1).

    Both hooks run with gradients enabled and return a detached tensor shaped like their input.
    """

    def guide_x0(self, state: SamplerState) -> torch.Tensor:
        """The x̂0 the step uses (``state.x0_hat`` unchanged when not guiding x̂0)."""
        ...

    def guide_x_prev(self, state: SamplerState) -> torch.Tensor:
        """The x_{t_prev} the loop continues from (``state.x_prev`` unchanged when not guiding)."""
        ...


def sample_timesteps_for(sampler: Sampler, num_train: int, steps: int) -> list[int]:
    """The timestep sequence of ``sampler``: DDIM's strided one, or every step for full DDPM."""
    if sampler == "ddpm" and steps >= num_train:
        return list(range(num_train - 1, -1, -1))
    return ddim_timesteps(num_train, steps)


def prediction_of(model: Any) -> str:
    """The prediction type (``x0`` / ``eps`` / ``v``) of a model's config (object or mapping)."""
    cfg = getattr(model, "config", None)
    pred = getattr(cfg, "prediction", None)
    if pred is None and isinstance(cfg, dict):
        pred = cfg.get("prediction")
    return str(getattr(pred, "value", pred) or "x0")


@torch.no_grad()
def sample(
    model: FusionModel,
    cond: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int = 20,
    sampler: Sampler = "ddim",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_x0: bool = True,
    x_T: torch.Tensor | None = None,
    tokens: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    progress: bool | ProgressFn = False,
    guide: Guide | None = None,
) -> torch.Tensor:
    """Reverse diffusion, the one sampling loop; returns x0 ``(B, 1, *S)`` in the model range.

    Args:
        model: a :class:`~clinfuse.nn.model.FusionModel` (its ``config.prediction`` is honoured)
            or anything with its ``encode`` / ``__call__`` (e.g. ``SlidingWindowModel``).
        cond: conditioning stack ``(B, 3, *S)`` = ``[mri, ct_clinical, ct_bone]``; S must be a
            multiple of ``model.size_multiple`` (pad first).
        steps: number of reverse steps (DDIM 20 by default; ``"ddpm"`` with ``steps = T`` is the
            full ancestral chain, fewer steps use strided posteriors).
        eta: DDIM stochasticity (0 = deterministic; not the guidance strength).
        generator: drives x_T and any step noise; nothing global is reseeded.
        clip_x0: clamp x̂0 to [-2, 2] and recompute ε̂ from it (keeps the step consistent).
        x_T: starting noise; drawn from ``generator`` if None.
        tokens: encoder tokens if already computed; otherwise ``model.encode(cond)`` once.
        callback: called after each step with a :class:`SamplerState`; if it returns a tensor,
            that tensor replaces ``x_prev``.
        progress: True shows a rich progress bar; a function is called as
            ``progress(steps_done, n_steps, info)`` after each step.
        guide: ROI guidance (:class:`Guide`); None is unguided sampling.
    """
    prediction = prediction_of(model)
    if tokens is None:
        tokens = model.encode(cond)  # Alg.1 line 2: once per case, never per step
    shape = (cond.shape[0], 1, *cond.shape[2:])
    if x_T is None:  # Alg.1 line 1
        x = torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)
    else:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}")
        x = x_T
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"unknown sampler {sampler!r}; choose 'ddim' or 'ddpm'")
    ts = sample_timesteps_for(sampler, schedule.num_steps, steps)
    pairs = list(zip(ts, ts[1:] + [-1], strict=True))

    bar = None
    if progress is True:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"{sampler.upper()}-{len(pairs)}", total=len(pairs))
    try:
        for i, (t, t_prev) in enumerate(pairs):  # Alg.1 line 3
            t_batch = torch.full((shape[0],), t, device=x.device, dtype=torch.long)
            out = model(x, t_batch, cond, tokens)  # Alg.1 line 4
            x0_hat, eps_hat = schedule.split_prediction(out, x, t_batch, prediction)
            if clip_x0:
                x0_hat = x0_hat.clamp(-X0_CLIP, X0_CLIP)
                eps_hat = schedule.eps_from_x0(x, x0_hat, t_batch)
            state = SamplerState(i, t, t_prev, x, x0_hat, eps_hat, None, tokens, t_batch)
            state.info["t"] = float(t)
            if guide is not None:
                with torch.enable_grad():
                    x0_hat = state.x0_hat = guide.guide_x0(state)
            if sampler == "ddim":  # Alg.1 line 5
                x_prev = ddim_step(x, x0_hat, eps_hat, t_batch, t_prev, schedule, eta, generator)
            else:
                x_prev = ddpm_step(x, x0_hat, t_batch, t_prev, schedule, generator)
            state.x_prev = x_prev
            if guide is not None:
                with torch.enable_grad():
                    x_prev = state.x_prev = guide.guide_x_prev(state)
            if callback is not None:
                replaced = callback(state)
                if replaced is not None:
                    x_prev = replaced
            x = x_prev
            if bar is not None:
                bar.advance(task)
            elif callable(progress):
                progress(i + 1, len(pairs), state.info)
    finally:
        if bar is not None:
            bar.stop()
    return x
