"""DDIM / DDPM steps against MONAI's schedulers, and the sampling loop pinned on analytic models."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from clinfuse.diffusion.samplers import (
    SamplerState,
    ddim_step,
    ddim_timesteps,
    ddpm_step,
    sample,
)
from clinfuse.diffusion.schedule import NoiseSchedule

MONAI_PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def test_ddim_timesteps_trailing_spacing() -> None:
    assert ddim_timesteps(1000, 20) == list(range(999, 0, -50))
    assert ddim_timesteps(1000, 20)[-1] == 49
    assert ddim_timesteps(10, 10) == list(range(9, -1, -1))
    assert ddim_timesteps(1000, 1) == [999]
    assert ddim_timesteps(1000, 3) == [999, 666, 332]  # round(1000 − i·333.3) − 1
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 0)
    with pytest.raises(ValueError):
        ddim_timesteps(10, 11)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("t", [999, 499, 49])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_monai(prediction: str, t: int, eta: float) -> None:
    g = torch.Generator().manual_seed(t)
    x_t = torch.randn((2, 1, 6, 6, 6), generator=g)
    out = torch.randn(x_t.shape, generator=g)
    # MONAI's step goes from t to t − T/steps (and to ᾱ = 1 below 0): with 20 steps that is our
    # trailing grid 999 → 949 → … → 49 → −1.
    monai = DDIMScheduler(1000, clip_sample=False, prediction_type=MONAI_PRED[prediction])
    monai.set_timesteps(20)
    expected, expected_x0 = monai.step(
        out, t, x_t, eta=eta, generator=torch.Generator().manual_seed(7)
    )

    ours = NoiseSchedule()
    x0_hat, eps_hat = ours.split_prediction(out, x_t, t, prediction)  # type: ignore[arg-type]
    got = ddim_step(x_t, x0_hat, eps_hat, t, t - 50, ours, eta, torch.Generator().manual_seed(7))
    torch.testing.assert_close(x0_hat, expected_x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t", [999, 500, 100])
def test_ddpm_step_matches_monai_posterior(t: int) -> None:
    g = torch.Generator().manual_seed(t)
    x_t = torch.randn((2, 1, 8, 8), generator=g)
    eps = torch.randn(x_t.shape, generator=g)
    monai = DDPMScheduler(1000, clip_sample=False, prediction_type="epsilon")
    expected, _ = monai.step(eps, t, x_t, generator=torch.Generator().manual_seed(11))

    ours = NoiseSchedule()
    x0_hat, _ = ours.split_prediction(eps, x_t, t, "eps")
    got = ddpm_step(x_t, x0_hat, t, t - 1, ours, torch.Generator().manual_seed(11))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _monai_in_float64(monai: DDPMScheduler | DDIMScheduler, ours: NoiseSchedule) -> None:
    """Give a MONAI scheduler our float64 schedule so its arithmetic is an exact oracle."""
    ab = torch.from_numpy(ours.alpha_bar64(torch.arange(ours.num_steps)))
    monai.alphas_cumprod = ab
    monai.alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    monai.betas = 1 - monai.alphas
    monai.one = torch.tensor(1.0, dtype=torch.float64)


@pytest.mark.parametrize("t", [2, 1, 0])
def test_ddpm_step_near_t0_matches_float64_oracle(t: int) -> None:
    """Near t = 0, 1 − ᾱ_t cancels in float32 (MONAI's own float32 step is off by 5e-4 at
    t = 0); ours computes the coefficients in float64 and matches MONAI run in float64."""
    g = torch.Generator().manual_seed(t)
    x_t = torch.randn((2, 1, 8, 8), generator=g, dtype=torch.float64)
    x0 = torch.randn(x_t.shape, generator=g, dtype=torch.float64)
    ours = NoiseSchedule()
    monai = DDPMScheduler(1000, clip_sample=False, prediction_type="sample")
    _monai_in_float64(monai, ours)
    expected, _ = monai.step(x0, t, x_t, generator=torch.Generator().manual_seed(11))
    got = ddpm_step(x_t, x0, t, t - 1, ours, torch.Generator().manual_seed(11))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    if t == 0:
        torch.testing.assert_close(got, x0, rtol=1e-12, atol=1e-12)  # posterior mean at 0 is x̂0
    # and in float32 the coefficients stay exact: only the inputs are rounded
    got32 = ddpm_step(x_t.float(), x0.float(), t, t - 1, ours, torch.Generator().manual_seed(11))
    if t == 0:
        torch.testing.assert_close(got32, x0.float(), rtol=1e-6, atol=1e-6)


def test_ddpm_step_variance_and_batched_timesteps() -> None:
    s = NoiseSchedule()
    x_t = torch.zeros((2, 1, 64, 64))
    x0 = torch.zeros_like(x_t)
    t = torch.tensor([999, 10])
    out = ddpm_step(x_t, x0, t, t - 1, s, torch.Generator().manual_seed(0))
    for i, ti in enumerate(t.tolist()):
        ab, ab_prev = s.alphas_cumprod[ti].item(), s.alphas_cumprod[ti - 1].item()
        beta_tilde = (1 - ab_prev) / (1 - ab) * s.betas[ti].item()  # Ho et al. eq. 7
        assert out[i].std().item() == pytest.approx(beta_tilde**0.5, rel=0.05)


@dataclass
class _Cfg:
    prediction: str


class FixedX0Model:
    """Analytic dummy: whatever x_t is, the clean image is ``target`` (in any parameterisation)."""

    def __init__(self, target: torch.Tensor, schedule: NoiseSchedule, prediction: str) -> None:
        self.target, self.schedule = target, schedule
        self.config = _Cfg(prediction)
        self.encode_calls = 0
        self.forward_calls = 0

    def encode(self, cond: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        return torch.zeros(cond.shape[0], 4, 8)

    def __call__(self, x_t, t, cond, tokens):
        self.forward_calls += 1
        x0 = self.target.expand_as(x_t)
        noise = self.schedule.eps_from_x0(x_t, x0, t)
        return self.schedule.model_target(x0, noise, t, self.config.prediction)


@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampler_returns_the_fixed_clean_image(prediction: str, sampler: str) -> None:
    s = NoiseSchedule()
    target = torch.linspace(-1.5, 1.5, 8**3).reshape(1, 1, 8, 8, 8)
    model = FixedX0Model(target, s, prediction)
    cond = torch.zeros(2, 3, 8, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = sample(model, cond, s, steps=20, sampler=sampler, generator=g)  # type: ignore[arg-type]
    assert out.shape == (2, 1, 8, 8, 8)
    torch.testing.assert_close(out, target.expand(2, -1, -1, -1, -1), rtol=1e-4, atol=1e-4)
    assert model.encode_calls == 1 and model.forward_calls == 20  # tokens once, not per step


def test_full_ddim_loop_pinned_against_monai_loop() -> None:
    """Model x̂0 = 0.5·x_t; our 20-step loop equals MONAI's DDIM steps chained on the same grid."""
    s = NoiseSchedule()

    class Half(FixedX0Model):
        def __call__(self, x_t, t, cond, tokens):
            return 0.5 * x_t

    model = Half(torch.zeros(1), s, "x0")
    x_T = (torch.arange(64, dtype=torch.float32).reshape(1, 1, 4, 4, 4) - 31.5) / 16
    got = sample(model, torch.zeros(1, 3, 4, 4, 4), s, steps=20, x_T=x_T, clip_x0=False)  # type: ignore[arg-type]

    monai = DDIMScheduler(1000, clip_sample=False, prediction_type="sample")
    monai.set_timesteps(20)
    x = x_T.clone()
    for t in ddim_timesteps(1000, 20):
        x, _ = monai.step(0.5 * x, t, x)
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-6)
    # the final step returns x̂0 of the last state exactly: x_0 = 0.5·x_49
    assert torch.count_nonzero(got).item() == 64


def test_clip_x0_clamps_to_model_range() -> None:
    s = NoiseSchedule()
    model = FixedX0Model(torch.full((1, 1, 4, 4), 5.0), s, "x0")
    cond = torch.zeros(1, 3, 4, 4)
    g = torch.Generator().manual_seed(0)
    clipped = sample(model, cond, s, steps=5, generator=g)  # type: ignore[arg-type]
    raw = sample(model, cond, s, steps=5, generator=g, clip_x0=False)  # type: ignore[arg-type]
    torch.testing.assert_close(clipped, torch.full_like(clipped, 2.0))
    torch.testing.assert_close(raw, torch.full_like(raw, 5.0), rtol=1e-4, atol=1e-4)


def test_callback_sees_every_step_and_can_replace_x_prev() -> None:
    s = NoiseSchedule()
    model = FixedX0Model(torch.zeros(1, 1, 4, 4), s, "x0")
    seen: list[tuple[int, int, int]] = []

    def callback(state: SamplerState) -> torch.Tensor | None:
        seen.append((state.index, state.t, state.t_prev))
        assert state.tokens.shape == (1, 4, 8)
        return torch.full_like(state.x_prev, 7.0) if state.t_prev == -1 else None

    out = sample(model, torch.zeros(1, 3, 4, 4), s, steps=4, callback=callback)  # type: ignore[arg-type]
    assert seen == [(0, 999, 749), (1, 749, 499), (2, 499, 249), (3, 249, -1)]
    assert torch.all(out == 7.0)


def test_generator_makes_sampling_reproducible() -> None:
    s = NoiseSchedule()

    class Shrink(FixedX0Model):
        def __call__(self, x_t, t, cond, tokens):
            return 0.9 * x_t

    model = Shrink(torch.zeros(1), s, "x0")
    cond = torch.zeros(1, 3, 6, 6)

    def run(seed: int, eta: float) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return sample(model, cond, s, steps=10, eta=eta, generator=gen)  # type: ignore[arg-type]

    torch.testing.assert_close(run(1, 0.5), run(1, 0.5), rtol=0, atol=0)
    assert not torch.allclose(run(1, 0.5), run(2, 0.5))


def test_bad_arguments() -> None:
    s = NoiseSchedule()
    model = FixedX0Model(torch.zeros(1), s, "x0")
    cond = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="sampler"):
        sample(model, cond, s, steps=2, sampler="euler")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="x_T"):
        sample(model, cond, s, steps=2, x_T=torch.zeros(1, 1, 5, 5))  # type: ignore[arg-type]


@pytest.mark.parametrize(("t", "t_prev"), [(999, 949), (500, 499), (49, 0)])
def test_ddim_eta1_equals_ddpm_posterior(t: int, t_prev: int) -> None:
    """Song et al. §4.1: with η = 1 and ε̂ consistent with (x_t, x̂0), DDIM *is* the DDPM
    posterior q(x_{t'} | x_t, x̂0): same mean and variance, so the same sample for one noise."""
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(t)
    x_t = torch.randn((1, 1, 6, 6), generator=g, dtype=torch.float64)
    x0 = torch.randn(x_t.shape, generator=g, dtype=torch.float64)
    eps = s.eps_from_x0(x_t, x0, t)
    a = ddim_step(x_t, x0, eps, t, t_prev, s, eta=1.0, generator=torch.Generator().manual_seed(5))
    b = ddpm_step(x_t, x0, t, t_prev, s, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_sample_with_a_real_tiny_model() -> None:
    from clinfuse.nn.model import FusionModel, ModelConfig

    cfg = ModelConfig(
        spatial_dims=2,
        channels=(8, 8),
        attention_levels=(False, True),
        num_head_channels=8,
        encoder_widths=(8, 8, 8, 8),
        lesion_channels=(8, 8),
    )
    model = FusionModel(cfg).eval()
    cond = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    fresh = sample(model, cond, NoiseSchedule(), steps=3, generator=torch.Generator())
    assert not fresh.any()  # a fresh MONAI UNet predicts x̂0 = 0, and the last step returns x̂0
    g0 = torch.Generator().manual_seed(0)
    with torch.no_grad():  # randomise MONAI's zero-initialised layers so the output is non-trivial
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g0) * 0.5)

    def run() -> torch.Tensor:
        g = torch.Generator().manual_seed(4)
        return sample(model, cond, NoiseSchedule(), steps=3, generator=g, progress=True)

    out = run()
    assert out.shape == (1, 1, 8, 8) and torch.isfinite(out).all()
    assert out.any() and out.abs().max() <= 2.0  # the last x̂0, clipped to the model range
    torch.testing.assert_close(run(), out, rtol=0, atol=0)
