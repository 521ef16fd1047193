"""NoiseSchedule: values against hand-computed numbers and MONAI's schedulers, conversions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from clinfuse.diffusion.schedule import NoiseSchedule


def test_linear_schedule_values_hand_computed() -> None:
    s = NoiseSchedule(1000, "linear")
    assert s.betas.dtype == torch.float32 and s.betas.shape == (1000,)
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    # ᾱ_0 = 1 − β_0; ᾱ_1 = (1 − β_0)(1 − β_1), β_1 = 1e-4 + 0.0199/999
    b1 = 1e-4 + (0.02 - 1e-4) / 999
    assert s.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, rel=1e-7)
    assert s.alphas_cumprod[1].item() == pytest.approx((1 - 1e-4) * (1 - b1), rel=1e-7)
    # ᾱ_T−1 of the DDPM linear schedule is ≈ 4.04e-5 (log ᾱ = Σ log(1 − β)), computed in float64
    betas = np.linspace(1e-4, 0.02, 1000)
    expected = math.exp(np.log1p(-betas).sum())
    assert s.alphas_cumprod[-1].item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(4.04e-5, rel=0.01)


@pytest.mark.parametrize(("kind", "monai_name"), [("linear", "linear_beta"), ("cosine", "cosine")])
def test_alphas_cumprod_match_monai(kind: str, monai_name: str) -> None:
    ours = NoiseSchedule(1000, kind).alphas_cumprod
    theirs = DDPMScheduler(1000, schedule=monai_name).alphas_cumprod
    # MONAI computes in float32, we in float64: agreement to float32 rounding of a cumprod
    torch.testing.assert_close(ours, theirs.float(), rtol=2e-5, atol=1e-6)


def test_cosine_schedule_properties() -> None:
    s = NoiseSchedule(1000, "cosine")
    ab = s.alphas_cumprod.double()
    assert torch.all(ab[1:] < ab[:-1])  # strictly decreasing
    assert s.betas.max().item() <= 0.999 + 1e-7
    # Nichol & Dhariwal: ᾱ(t) ≈ cos²(((t+1)/T + s)/(1+s)·π/2)/f(0) in the middle of the range
    t = 499
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert ab[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-5)


def test_q_sample_matches_monai_add_noise_and_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    s = NoiseSchedule()
    x0 = torch.full((4, 1, 40, 40, 40), 1.5)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 100, 500, 999])
    xt = s.q_sample(x0, t, noise)
    monai = DDPMScheduler(1000).add_noise(x0, noise, t)
    torch.testing.assert_close(xt, monai, rtol=1e-5, atol=1e-5)
    for i, ti in enumerate(t.tolist()):
        ab = s.alphas_cumprod[ti].item()
        mean, std = xt[i].mean().item(), xt[i].std().item()
        n = xt[i].numel()  # 64000 voxels: standard error of the mean ≈ sqrt(1−ᾱ)/253
        assert mean == pytest.approx(1.5 * math.sqrt(ab), abs=5 * math.sqrt(1 - ab) / n**0.5)
        assert std == pytest.approx(math.sqrt(1 - ab), rel=0.02)


@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
def test_split_prediction_inverts_model_target(prediction: str) -> None:
    g = torch.Generator().manual_seed(1)
    s = NoiseSchedule()
    x0 = torch.randn((3, 1, 6, 6, 6), generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([10, 500, 999])
    xt = s.q_sample(x0, t, noise)
    out = s.model_target(x0, noise, t, prediction)
    x0_hat, eps_hat = s.split_prediction(out, xt, t, prediction)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(eps_hat, noise, rtol=1e-6, atol=1e-6)


def test_v_target_matches_monai_velocity() -> None:
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn((2, 1, 8, 8), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([3, 700])
    ours = NoiseSchedule().v_target(x0, noise, t)
    theirs = DDPMScheduler(1000).get_velocity(x0, noise, t)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_int_timestep_and_alpha_bar_of_clean() -> None:
    s = NoiseSchedule()
    x = torch.zeros(2, 1, 4, 4)
    assert s.alpha_bar(-1, x).unique().tolist() == [1.0]  # broadcastable to x
    ab = s.alpha_bar(torch.tensor([-1, 5]), x)
    assert ab[0].unique().item() == 1.0
    assert ab[1].unique().item() == pytest.approx(s.alphas_cumprod[5].item())


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="schedule kind"):
        NoiseSchedule(1000, "quadratic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prediction"):
        NoiseSchedule().model_target(torch.zeros(1), torch.zeros(1), 0, "score")  # type: ignore[arg-type]


def test_buffers_follow_to_and_sample_timesteps_is_seeded() -> None:
    s = NoiseSchedule().to(torch.float64)
    assert s.alphas_cumprod.dtype == torch.float64
    a = NoiseSchedule().sample_timesteps(16, "cpu", torch.Generator().manual_seed(3))
    b = NoiseSchedule().sample_timesteps(16, "cpu", torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.long and 0 <= a.min() and a.max() < 1000
