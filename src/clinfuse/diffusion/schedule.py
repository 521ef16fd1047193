"""The 1000-step noise schedule (linear / cosine), forward noising and ε / x0 / v conversions.

Code names → paper symbols (Ho et al. 2020, "DDPM"; Nichol & Dhariwal 2021; Salimans & Ho 2022):

| code                   | symbol            | meaning                                          |
|------------------------|-------------------|--------------------------------------------------|
| ``betas[t]``           | β_t               | variance added at step t                         |
| ``alphas[t]``          | α_t = 1 − β_t     |                                                  |
| ``alphas_cumprod[t]``  | ᾱ_t = ∏_{s≤t} α_s | signal fraction kept at step t                   |
| ``sqrt_ab``            | √ᾱ_t              | x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε  (``q_sample``)      |
| ``sqrt_1m_ab``         | √(1−ᾱ_t)          |                                                  |
| ``v_target``           | v_t               | v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (Salimans & Ho)        |
| ``x0_hat``/``eps_hat`` | x̂0, ε̂             | the network's estimates of clean image and noise |

Timesteps are 0-based: t ∈ {0, …, T−1}; t = T−1 is (almost) pure noise. ``t_prev = -1`` means
"the clean image" (ᾱ = 1), as in DDIM's final step.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import nn

from clinfuse.nn.model import Prediction

ScheduleKind = Literal["linear", "cosine"]
PREDICTIONS: tuple[str, ...] = tuple(p.value for p in Prediction)
SCHEDULE_KINDS: tuple[str, ...] = ("linear", "cosine")


def _betas(num_steps: int, kind: str) -> np.ndarray:
    """β_t in float64 for the two supported schedules."""
    if kind == "linear":
        # Ho et al. 2020: β from 1e-4 to 0.02 over 1000 steps; rescaled for other step counts so
        # the total noise stays comparable (as in improved-diffusion).
        scale = 1000.0 / num_steps
        return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
    if kind == "cosine":
        # Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2),
        # s = 0.008; β clipped at 0.999 to avoid the singularity at t = T.
        s = 0.008
        steps = np.arange(num_steps + 1, dtype=np.float64) / num_steps
        f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        ab = f / f[0]
        return np.clip(1.0 - ab[1:] / ab[:-1], 0.0, 0.999)
    raise ValueError(f"unknown schedule kind {kind!r}; choose one of {SCHEDULE_KINDS}")


def _gather(values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """values[t] broadcast to ``like``'s shape ``(B, C, *spatial)``; t is an int or ``(B,)``."""
    t_tensor = torch.as_tensor(t, device=like.device, dtype=torch.long)
    out = values.to(device=like.device, dtype=like.dtype)[t_tensor]
    return out.reshape(out.shape + (1,) * (like.ndim - out.ndim))


class NoiseSchedule(nn.Module):
    """Discrete diffusion schedule; math in float64, buffers stored as float32.

    Args:
        num_steps: number of training timesteps T (1000 in the proposal).
        kind: ``"linear"`` (β 1e-4 → 0.02) or ``"cosine"`` (Nichol & Dhariwal).

    Being an ``nn.Module`` the buffers follow ``.to(device)``; they are not trainable.
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    sqrt_ab: torch.Tensor
    sqrt_1m_ab: torch.Tensor

    def __init__(self, num_steps: int = 1000, kind: ScheduleKind = "linear") -> None:
        super().__init__()
        if num_steps < 2:
            raise ValueError(f"num_steps must be >= 2, got {num_steps}")
        self.num_steps = int(num_steps)
        self.kind = kind
        betas = _betas(self.num_steps, kind)
        alphas = 1.0 - betas
        ab = np.cumprod(alphas)
        # Kept in float64 (not a buffer, so ``.to(dtype)`` cannot round it): step coefficients such
        # as 1 − ᾱ_t/ᾱ_prev cancel catastrophically in float32 near t = 0.
        self._ab64 = ab
        for name, arr in (
            ("betas", betas),
            ("alphas", alphas),
            ("alphas_cumprod", ab),
            ("sqrt_ab", np.sqrt(ab)),
            ("sqrt_1m_ab", np.sqrt(1.0 - ab)),
        ):
            self.register_buffer(name, torch.from_numpy(arr.astype(np.float32)), persistent=False)

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}, kind={self.kind!r}"

    def alpha_bar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t broadcast to ``like``; ``t < 0`` gives 1 (the clean image)."""
        t_tensor = torch.as_tensor(t, device=like.device, dtype=torch.long)
        ab = _gather(self.alphas_cumprod, t_tensor.clamp(min=0), like)
        clean = (t_tensor < 0).reshape(t_tensor.shape + (1,) * (like.ndim - t_tensor.ndim))
        return torch.where(clean, torch.ones_like(ab), ab)

    def alpha_bar64(self, t: torch.Tensor | int) -> np.ndarray:
        """ᾱ_t in float64 as a numpy array shaped like ``t``; ``t < 0`` gives 1."""
        t_np = np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t, dtype=np.int64)
        return np.where(t_np < 0, 1.0, self._ab64[np.clip(t_np, 0, None)])

    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor
    ) -> torch.Tensor:
        """Forward noising x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε; x0, noise ``(B, C, *S)``, t ``(B,)``."""
        return _gather(self.sqrt_ab, t, x0) * x0 + _gather(self.sqrt_1m_ab, t, x0) * noise

    def v_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int
    ) -> torch.Tensor:
        """Velocity v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (Salimans & Ho 2022)."""
        return _gather(self.sqrt_ab, t, x0) * noise - _gather(self.sqrt_1m_ab, t, x0) * x0

    def model_target(
        self,
        x0: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor | int,
        prediction: Prediction | str,
    ) -> torch.Tensor:
        """What the network should output for ``prediction`` (the L_diffusion regression target)."""
        if prediction == Prediction.x0:
            return x0
        if prediction == Prediction.eps:
            return noise
        if prediction == Prediction.v:
            return self.v_target(x0, noise, t)
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")

    def eps_from_x0(
        self, x_t: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor | int
    ) -> torch.Tensor:
        """ε̂ = (x_t − √ᾱ_t·x̂0) / √(1−ᾱ_t) (inverts ``q_sample``)."""
        return (x_t - _gather(self.sqrt_ab, t, x_t) * x0_hat) / _gather(self.sqrt_1m_ab, t, x_t)

    def x0_from_eps(
        self, x_t: torch.Tensor, eps_hat: torch.Tensor, t: torch.Tensor | int
    ) -> torch.Tensor:
        """x̂0 = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t."""
        return (x_t - _gather(self.sqrt_1m_ab, t, x_t) * eps_hat) / _gather(self.sqrt_ab, t, x_t)

    def split_prediction(
        self,
        out: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        prediction: Prediction | str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Network output → ``(x0_hat, eps_hat)`` whatever the parameterisation.

        For v: x̂0 = √ᾱ_t·x_t − √(1−ᾱ_t)·v̂ and ε̂ = √ᾱ_t·v̂ + √(1−ᾱ_t)·x_t.
        """
        if prediction == Prediction.x0:
            return out, self.eps_from_x0(x_t, out, t)
        if prediction == Prediction.eps:
            return self.x0_from_eps(x_t, out, t), out
        if prediction == Prediction.v:
            a, s = _gather(self.sqrt_ab, t, x_t), _gather(self.sqrt_1m_ab, t, x_t)
            return a * x_t - s * out, a * out + s * x_t
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")

    def sample_timesteps(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform training timesteps ``(batch,)`` long, drawn with ``generator``."""
        return torch.randint(
            0, self.num_steps, (batch,), generator=generator, device=torch.device(device)
        )
