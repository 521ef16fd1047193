"""ROI-guided sampling (Algorithm 1) with an analytic dummy model on an 8³ volume."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from clinfuse.diffusion.guidance import (
    GuidanceConfig,
    guided_sample,
    list_presets,
    load_preset,
    predicted_mask,
    uncertainty_blend,
)
from clinfuse.diffusion.schedule import NoiseSchedule
from clinfuse.errors import ClinfuseInputError
from clinfuse.losses.ssim import masked_ssim
from clinfuse.nn.lesion_head import LesionHead

S = 8


class AverageModel(nn.Module):
    """x0-prediction dummy: x̂0 = mean of MRI and bone CT + 0.1·x_t (a blurry, noisy 'fusion').

    Lesion head: logits = 6·(x - 1), i.e. the lesion is where the image is brighter than 1.
    """

    config = SimpleNamespace(prediction="x0")

    def encode(self, cond):
        return cond.mean(dim=tuple(range(2, cond.ndim)))[:, None, :]

    def forward(self, x_t, t, cond, tokens):
        return 0.5 * (cond[:, 0:1] + cond[:, 2:3]) + 0.1 * x_t

    def lesion_head(self, x, cond, box=None):
        out = 6.0 * (x - 1.0)
        return out if box is None else out[(..., *box)]


class FixedModel(AverageModel):
    """Always predicts the same clean image: DDIM must return it exactly (η = 0)."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x_t, t, cond, tokens):
        return self.x0.expand_as(x_t)


def _case():
    """MRI: a ramp along y; CT (both windows): a ramp along z; brain = x < 4, bone = x >= 4.

    Half-volume ROIs because at 8³ the 11-tap SSIM window spans the volume: a small ROI's SSIM is
    dominated by its neighbours, which the other term moves.
    """
    g = torch.linspace(-1.5, 1.5, S)
    mri = g[None, :, None].expand(S, S, S)
    ct = g[None, None, :].expand(S, S, S)
    cond = torch.stack([mri, ct, ct])[None].clone()
    brain = (torch.arange(S) < S // 2)[:, None, None].expand(S, S, S)[None, None].clone()
    return cond, {"brain": brain, "bone": ~brain}


def _run(model, guidance, seed=0, **kw):
    cond, masks = _case()
    gen = torch.Generator().manual_seed(seed)
    return guided_sample(
        model, cond, masks, NoiseSchedule(1000), steps=5, guidance=guidance, generator=gen, **kw
    )


def _ssims(fused):
    cond, masks = _case()
    b = masked_ssim(fused, cond[:, 0:1], masks["brain"]).item()
    o = masked_ssim(fused, cond[:, 2:3], masks["bone"]).item()
    return b, o


def test_fixed_model_returns_its_x0_exactly():
    x0 = torch.linspace(-1, 1, S**3).reshape(1, 1, S, S, S)
    res = _run(FixedModel(x0), None)
    torch.testing.assert_close(res.fused, x0, atol=1e-5, rtol=0)
    assert res.timesteps == [999, 799, 599, 399, 199]
    assert res.lesion_source == "none"


def test_eta_zero_equals_unguided_sampler():
    from clinfuse.diffusion.samplers import sample

    cond, _ = _case()
    ref = sample(
        AverageModel(), cond, NoiseSchedule(1000), 5, generator=torch.Generator().manual_seed(3)
    )
    res = _run(AverageModel(), GuidanceConfig(eta=0.0, mode="xt"), seed=3)
    torch.testing.assert_close(res.fused, ref.clamp(-2, 2), atol=1e-6, rtol=0)
    res0 = _run(AverageModel(), GuidanceConfig(eta=0.0, mode="x0"), seed=3)
    torch.testing.assert_close(res0.fused, res.fused, atol=0, rtol=0)


def test_guided_loop_is_deterministic_and_pinned():
    cfg = GuidanceConfig(alpha=1.0, beta=1.2, gamma=0.0, eta=0.02, mode="x0", n_inner=1)
    a = _run(AverageModel(), cfg, seed=7)
    b = _run(AverageModel(), cfg, seed=7)
    torch.testing.assert_close(a.fused, b.fused, atol=0, rtol=0)
    # pinned (torch 2.13 CPU, float32): the whole 5-step guided loop from seed 7
    assert float(a.fused[0, 0, 0, 0, 0]) == pytest.approx(-1.682574, abs=1e-4)
    assert float(a.fused[0, 0, 7, 3, 5]) == pytest.approx(0.151058, abs=1e-4)
    assert float(a.fused.sum()) == pytest.approx(0.352886, abs=2e-3)
    c = _run(AverageModel(), cfg, seed=8)
    assert not torch.equal(a.fused, c.fused)
    assert len(a.history) == 5 and all("brain" in h for h in a.history)


def test_guidance_increases_masked_ssim_in_both_modes():
    base = _ssims(_run(AverageModel(), None).fused)
    x0 = _ssims(_run(AverageModel(), GuidanceConfig(gamma=0.0, eta=0.1, mode="x0")).fused)
    xt = _ssims(_run(AverageModel(), GuidanceConfig(gamma=0.0, eta=0.3, mode="xt")).fused)
    # measured (ROI-SSIM on shifted, masked inputs): unguided 0.78 / 0.78,
    # x0 mode 0.88 / 0.89, xt mode 0.95 / 0.95
    assert x0[0] > base[0] + 0.07 and x0[1] > base[1] + 0.07
    assert xt[0] > base[0] + 0.07 and xt[1] > base[1] + 0.07


def test_xt_and_x0_modes_differ():
    a = _run(AverageModel(), GuidanceConfig(gamma=0.0, eta=0.02, mode="x0")).fused
    b = _run(AverageModel(), GuidanceConfig(gamma=0.0, eta=0.02, mode="xt")).fused
    assert (a - b).abs().max() > 1e-3


def test_term_schedule_switches_terms_off():
    cfg = GuidanceConfig(eta=0.02, gamma=0.0, brain_window=(0.0, 0.0), bone_window=(0.0, 0.0))
    # both windows only at p = 0 (t = T); the first DDIM step is t = 999 (p = 0.001): never on
    res = _run(AverageModel(), cfg)
    torch.testing.assert_close(res.fused, _run(AverageModel(), None).fused, atol=0, rtol=0)
    assert cfg.weights_at(999, 1000) == (0.0, 0.0, 0.0)
    assert GuidanceConfig().weights_at(599, 1000) == (1.0, 1.2, 0.0)  # lesion off before T/2
    assert GuidanceConfig().weights_at(399, 1000) == (1.0, 1.2, 3.0)


def test_lesion_mask_source_is_recorded():
    cond, _ = _case()
    user = cond[:, 0:1] > 1.0
    cfg = GuidanceConfig(eta=0.02, gamma=3.0)
    res = _run(AverageModel(), cfg, lesion_mask=user)
    assert res.lesion_source == "user"
    assert torch.equal(res.lesion_target, user)
    res = _run(AverageModel(), cfg, lesion_mask=user, lesion_source="oracle")
    assert res.lesion_source == "oracle"
    res = _run(AverageModel(), cfg)
    assert res.lesion_source == "predicted"  # from the head at t <= T/2, never the truth
    lesion_steps = [h["t"] for h in res.history if h.get("lesion") == h.get("lesion")]
    assert lesion_steps and min(lesion_steps) <= 500 and max(lesion_steps) <= 500
    assert res.lesion_prob.shape == (1, 1, S, S, S)
    assert 0.0 <= float(res.lesion_prob.min()) and float(res.lesion_prob.max()) <= 1.0


def test_implausibly_large_predicted_mask_is_rejected():
    # the toy head's prediction covers some share of the brain; a gate below it rejects it
    res = _run(AverageModel(), GuidanceConfig(eta=0.02, gamma=3.0))
    frac = [h["predicted_fraction"] for h in res.history if "predicted_fraction" in h]
    assert len(frac) == 1 and 0.0 < frac[0] <= 1.0 and res.lesion_source == "predicted"
    gate = frac[0] / 2
    res = _run(AverageModel(), GuidanceConfig(eta=0.02, gamma=3.0, max_predicted_fraction=gate))
    assert res.lesion_source == "rejected" and res.lesion_target is None
    assert all(h.get("lesion") != h.get("lesion") for h in res.history)  # no lesion term ran
    with pytest.raises(ClinfuseInputError, match="max_predicted_fraction"):
        GuidanceConfig(max_predicted_fraction=0.0).validate()


def test_doubtful_predicted_mask_does_not_guide():
    """`lesion_guide_min_prob`: a guiding mask whose most probable component's mean head
    probability is below the gate is rejected (no lesion term); at or below the threshold it
    never is (every kept voxel is >= 0.5)."""
    base = {"eta": 0.02, "gamma": 3.0, "max_predicted_fraction": 1.0}
    res = _run(AverageModel(), GuidanceConfig(**base, lesion_guide_min_prob=0.5))
    assert res.lesion_source == "predicted" and bool(res.lesion_target.any())
    line7 = [h for h in res.history if "rejected_as_doubtful" in h]
    assert len(line7) == 1 and line7[0]["rejected_as_doubtful"] == 0.0
    res = _run(AverageModel(), GuidanceConfig(**base, lesion_guide_min_prob=0.9999))
    assert res.lesion_source == "rejected" and res.lesion_target is None
    assert [h["rejected_as_doubtful"] for h in res.history if "rejected_as_doubtful" in h] == [1.0]
    assert all(h.get("lesion") != h.get("lesion") for h in res.history)  # no lesion term ran
    with pytest.raises(ClinfuseInputError, match="lesion_guide_min_prob"):
        GuidanceConfig(lesion_guide_min_prob=1.0).validate()


def test_predicted_mask_gate_empties_a_faint_item():
    prob = torch.zeros(2, 1, 8, 8, 8)
    prob[0, :, 1:4, 1:4, 1:4] = 0.95  # a confident lesion
    prob[1, :, 1:4, 1:4, 1:4] = 0.6  # a faint one
    brain = torch.ones(1, 1, 8, 8, 8, dtype=torch.bool)
    mask = predicted_mask(prob, brain, (2.0, 2.0, 2.0), 0.5, AverageModel(), min_lesion_prob=0.8)
    assert int(mask[0].sum()) == 27 and not bool(mask[1].any())
    assert int(predicted_mask(prob, brain, (2.0, 2.0, 2.0), 0.5, AverageModel())[1].sum()) == 27


@pytest.mark.parametrize("mode", ["x0", "xt"])
def test_lesion_term_alone_without_a_guiding_mask_leaves_the_sample_unguided(mode):
    # ROI terms off everywhere, the lesion term on from T/2, but its predicted mask rejected:
    # no term can act, so sampling is plain DDIM (it used to fail: a loss with no gradient)
    cfg = GuidanceConfig(
        eta=0.02, gamma=3.0, mode=mode, brain_window=(0.0, 0.0), bone_window=(0.0, 0.0),
        max_predicted_fraction=1e-6,
    )  # fmt: skip
    res = _run(AverageModel(), cfg)
    assert res.lesion_source == "rejected"
    torch.testing.assert_close(res.fused, _run(AverageModel(), None).fused, atol=0, rtol=0)


def test_lesion_term_moves_only_the_lesion_zone():
    from scipy.ndimage import distance_transform_edt

    mask = torch.zeros(1, 1, S, S, S, dtype=torch.bool)
    mask[0, 0, 1, 1, 1] = True  # inside the brain (x < 4)
    base = _run(AverageModel(), None).fused[0, 0]
    only_lesion = dict(alpha=0.0, beta=0.0, gamma=3.0, eta=1.0)
    near = _run(AverageModel(), GuidanceConfig(**only_lesion, lesion_zone_mm=1.5), lesion_mask=mask)
    zone = torch.from_numpy(distance_transform_edt(~mask[0, 0].numpy()) <= 1.5)
    diff = (near.fused[0, 0] - base).abs()
    assert diff[zone].max() > 1e-6 and diff[~zone].max() == 0.0  # the pointwise toy model
    whole = _run(
        AverageModel(), GuidanceConfig(**only_lesion, lesion_zone_mm=0.0), lesion_mask=mask
    )
    brain = _case()[1]["brain"][0, 0]
    assert (whole.fused[0, 0] - base).abs()[brain & ~zone].max() > 1e-6  # literal form: all brain


def test_presets_load_and_override():
    assert {"stroke", "hemorrhage", "trauma", "tumour"} <= set(list_presets())
    cfg = load_preset("stroke")
    assert (cfg.alpha, cfg.beta, cfg.gamma) == (1.0, 1.2, 3.0)
    assert cfg.lesion_window == (0.5, 1.0)
    cfg = load_preset("stroke", {"eta": 0.5, "mode": "xt", "beta": None})
    assert (cfg.eta, cfg.mode, cfg.beta) == (0.5, "xt", 1.2)
    assert load_preset("trauma").beta > load_preset("stroke").beta
    for name in list_presets():  # 30 momentum steps at the end, ROI terms there only
        p = load_preset(name)
        assert (p.final_inner, p.inner_momentum, p.roi_final_only) == (30, 0.9, True)


def test_preset_errors():
    with pytest.raises(ClinfuseInputError, match="available presets: .*stroke"):
        load_preset("migraine")
    with pytest.raises(ClinfuseInputError, match="unknown preset key 'etaa'"):
        load_preset("stroke", {"etaa": 1.0})
    with pytest.raises(ClinfuseInputError, match="mode"):
        load_preset("stroke", {"mode": "x1"})
    with pytest.raises(ClinfuseInputError, match="alpha"):
        load_preset("stroke", {"alpha": -1})


def test_uncertainty_blend():
    mean = torch.zeros(1, 1, 4, 4)
    comp = torch.ones(1, 1, 4, 4)
    std = torch.full((1, 1, 4, 4), 0.1)
    std[..., 0, 0] = 1.0  # one voxel where the samples disagree strongly
    roi = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    roi[..., 3, 3] = False
    out = uncertainty_blend(mean, std, comp, roi, strength=0.5)
    assert out[0, 0, 0, 0].item() == pytest.approx(1.0)  # 0.5 * 1.0 / 0.1 clipped to 1
    assert out[0, 0, 1, 1].item() == pytest.approx(0.5)  # 0.5 * 0.1 / 0.1 (median)
    assert out[0, 0, 3, 3].item() == 0.0  # outside the ROI: untouched
    assert torch.equal(uncertainty_blend(mean, std, comp, roi, 0.0), mean)


class _ToyHead(LesionHead):
    """A `LesionHead` (so it carries a mask rule) whose logits are AverageModel's 6·(x - 1)."""

    def __init__(self, min_ml: float) -> None:
        super().__init__(3, (8, 8))
        self.min_lesion_ml.fill_(min_ml)

    def forward(self, x, cond=None, box=None):
        out = 6.0 * (x - 1.0)
        return out if box is None else out[(..., *box)]


class HeadModel(nn.Module):
    """AverageModel with its head as a `_ToyHead` module, as a `FusionModel` holds it."""

    config = AverageModel.config
    encode = AverageModel.encode
    forward = AverageModel.forward

    def __init__(self, min_ml: float) -> None:
        super().__init__()
        self.lesion_head = _ToyHead(min_ml)


def test_predicted_mask_is_cleaned_with_the_heads_mask_rule():
    from clinfuse.diffusion.guidance import head_mask_rule, predicted_mask
    from clinfuse.diffusion.sliding import SlidingWindowModel
    from clinfuse.nn.lesion_mask import LesionMaskRule

    model = HeadModel(2.0)
    assert head_mask_rule(model) == LesionMaskRule(2.0)
    assert head_mask_rule(SlidingWindowModel(model, (S, S, S))).min_ml == 2.0  # through wrappers
    assert head_mask_rule(AverageModel()) == LesionMaskRule()  # no LesionHead: nothing removed
    prob = torch.zeros(2, 1, S, S, S)
    prob[:, :, 1:4, 1:4, 1:4] = 0.9  # 27 voxels: 2.7 mL at the spacing below
    prob[:, :, 6, 6, 6] = 0.9  # a 1-voxel speck, 0.1 mL
    brain = torch.ones(1, 1, S, S, S, dtype=torch.bool)
    spacing = (1.0, 10.0, 10.0)  # 0.1 mL per voxel
    mask = predicted_mask(prob, brain, spacing, 0.5, model)
    assert mask.shape == prob.shape and mask.dtype == torch.bool
    assert int(mask[0].sum()) == 27 and not bool(mask[:, :, 6, 6, 6].any())
    assert torch.equal(mask[0], mask[1])
    keep_all = predicted_mask(prob, brain, spacing, 0.5, AverageModel())
    assert int(keep_all[0].sum()) == 28
    brain_half = brain.clone()
    brain_half[..., 2:, :, :] = False  # the prediction is kept inside the brain first
    assert int(predicted_mask(prob, brain_half, spacing, 0.5, AverageModel())[0].sum()) == 9


def test_predicted_mask_drops_mirror_ghosts_with_the_mri():
    """A head whose rule drops mirror ghosts cleans line 7's mask about the MRI's plane (one
    MRI for the batch, as the guide passes `cond[:, 0:1]`); without the MRI it refuses."""
    from clinfuse.diffusion.guidance import predicted_mask

    n = 20
    mri = torch.zeros(1, 1, n, 12, 12)
    gen = torch.Generator().manual_seed(0)
    half = torch.rand(n // 2, 12, 12, generator=gen)
    mri[0, 0, 1:-1] = 1.0 + torch.cat([half[1:], half[1:].flip(0)])  # symmetric about 9.5
    model = HeadModel(0.0)
    model.lesion_head.mirror_ghosts.fill_(1)
    prob = torch.zeros(2, 1, n, 12, 12)
    prob[:, :, 3:6, 4:7, 4:7] = 0.95  # the lesion
    prob[:, :, 13:17, 4:8, 4:8] = 0.9  # its mirror ghost (x 13:16), larger and fainter
    brain = torch.ones(1, 1, n, 12, 12, dtype=torch.bool)
    mask = predicted_mask(prob, brain, (2.0, 2.0, 2.0), 0.5, model, mri=mri)
    assert int(mask[0].sum()) == int(mask[1].sum()) == 27
    with pytest.raises(ValueError, match="MRI"):
        predicted_mask(prob, brain, (2.0, 2.0, 2.0), 0.5, model)


def test_line7_uses_the_cleaned_mask():
    res = _run(HeadModel(0.0), GuidanceConfig(eta=0.02, gamma=3.0, max_predicted_fraction=1.0))
    assert res.lesion_source == "predicted" and bool(res.lesion_target.any())
    # every component is below 1e6 mL: the guiding mask is empty (before the plausibility gate)
    res = _run(HeadModel(1e6), GuidanceConfig(eta=0.02, gamma=3.0, max_predicted_fraction=1.0))
    frac = [h["predicted_fraction"] for h in res.history if "predicted_fraction" in h]
    assert frac == [0.0]
    assert res.lesion_target is None or not bool(res.lesion_target.any())


def test_final_inner_steps_run_only_at_the_last_ddim_step():
    # With no inner step along the trajectory's first steps (brain/bone windows cover only the
    # last step, p = 0.801) the output is the last x̂0 after exactly `final_inner` steps.
    late = {"brain_window": (0.8, 1.0), "bone_window": (0.8, 1.0)}
    one = GuidanceConfig(gamma=0.0, eta=0.02, n_inner=1, **late)
    many = GuidanceConfig(gamma=0.0, eta=0.02, n_inner=1, final_inner=8, **late)
    same = GuidanceConfig(gamma=0.0, eta=0.02, n_inner=8, **late)
    a, b, c = (_run(AverageModel(), cfg, seed=2).fused for cfg in (one, many, same))
    torch.testing.assert_close(b, c, atol=1e-6, rtol=0)  # final_inner = n_inner at the end
    assert sum(_ssims(b)) > sum(_ssims(a)) + 0.02


@pytest.mark.parametrize("steps", [3, 5, 8])
def test_roi_final_only_guides_the_last_step_whatever_the_step_count(steps):
    # = the windows that cover exactly the last step, for any number of DDIM steps
    cond, masks = _case()

    def run(cfg):
        gen = torch.Generator().manual_seed(1)
        return guided_sample(
            AverageModel(), cond, masks, NoiseSchedule(1000), steps=steps, guidance=cfg,
            generator=gen,
        )  # fmt: skip

    base = {"gamma": 0.0, "eta": 0.02, "n_inner": 2, "final_inner": 6}
    last_p = 1.0 - (1000 // steps - 1) / 1000  # p of the last timestep (trailing spacing)
    final_only = run(GuidanceConfig(roi_final_only=True, **base))
    windows = run(GuidanceConfig(brain_window=(last_p, 1), bone_window=(last_p, 1), **base))
    everywhere = run(GuidanceConfig(**base))
    torch.testing.assert_close(final_only.fused, windows.fused, atol=0, rtol=0)
    assert not torch.equal(final_only.fused, everywhere.fused)
    guided = [h["t"] for h in final_only.history if h.get("brain", math.nan) == h.get("brain")]
    assert guided == [final_only.history[-1]["t"]]  # the losses were logged at one step only
    with pytest.raises(ClinfuseInputError, match="roi_final_only"):
        GuidanceConfig(roi_final_only=1).validate()


def test_inner_momentum_reaches_higher_roi_ssim_in_the_same_steps():
    plain = GuidanceConfig(gamma=0.0, eta=0.02, n_inner=1, final_inner=10)
    nesterov = GuidanceConfig(gamma=0.0, eta=0.02, n_inner=1, final_inner=10, inner_momentum=0.9)
    a, b = (_ssims(_run(AverageModel(), cfg, seed=4).fused) for cfg in (plain, nesterov))
    assert b[0] > a[0] and b[1] > a[1]
    with pytest.raises(ClinfuseInputError, match="inner_momentum"):
        GuidanceConfig(inner_momentum=1.0).validate()
    with pytest.raises(ClinfuseInputError, match="final_inner"):
        GuidanceConfig(final_inner=-1).validate()


class _BoxSpy(AverageModel):
    """AverageModel that records the `box` of every lesion-head call."""

    def __init__(self) -> None:
        super().__init__()
        self.boxes: list = []

    def lesion_head(self, x, cond, box=None):
        self.boxes.append(box)
        return super().lesion_head(x, cond, box)


def test_lesion_term_runs_the_head_on_the_zones_box_only():
    from clinfuse.diffusion.guidance import bounding_box

    mask = torch.zeros(2, 1, S, S, S, dtype=torch.bool)
    assert bounding_box(mask) is None
    mask[0, 0, 1, 2:4, 5] = True
    mask[1, 0, 3, 2, 6] = True
    assert bounding_box(mask) == (slice(1, 4), slice(2, 4), slice(5, 7))

    cond, masks = _case()
    lesion = torch.zeros(1, 1, S, S, S, dtype=torch.bool)
    lesion[0, 0, 1:3, 1:3, 1:3] = True  # inside the brain (x < 4)
    spacing = (1.0, 1.0, 1.0)
    runs = {}
    for crop in (True, False):
        spy = _BoxSpy()
        cfg = GuidanceConfig(eta=0.02, gamma=3.0, lesion_zone_mm=2.0, lesion_crop=crop)
        gen = torch.Generator().manual_seed(0)
        runs[crop] = guided_sample(
            spy, cond, masks, NoiseSchedule(1000), steps=5, guidance=cfg, generator=gen,
            lesion_mask=lesion, spacing=spacing,
        )  # fmt: skip
        boxes = {tuple((c.start, c.stop) for c in b) for b in spy.boxes if b is not None}
        if crop:  # the zone (lesion + 2 mm) inside the brain: x 0..3, y and z 0..4
            assert boxes == {((0, 4), (0, 5), (0, 5))}
        else:
            assert boxes == set()
        hist = [h["lesion"] for h in runs[crop].history if h.get("lesion") == h.get("lesion")]
        assert hist and all(math.isfinite(v) for v in hist)
    a, b = runs[True].fused, runs[False].fused
    # the losses over the box leave out far voxels' probabilities (Dice denominators): a small
    # difference, not the same numbers (measured 0.0125 at most here)
    torch.testing.assert_close(a, b, atol=0.05, rtol=0)
    # line 7 (no lesion mask given: the head predicts one) runs on the brain's box (x < 4)
    spy = _BoxSpy()
    guided_sample(
        spy, cond, masks, NoiseSchedule(1000), steps=5, guidance=GuidanceConfig(eta=0.02),
        spacing=spacing, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    first = spy.boxes[0]
    assert first is not None and tuple((c.start, c.stop) for c in first) == ((0, 4), (0, 8), (0, 8))
    # an empty guiding mask has no lesion term: the head runs only once, on the final image
    spy = _BoxSpy()
    guided_sample(
        spy, cond, masks, NoiseSchedule(1000), steps=5,
        guidance=GuidanceConfig(eta=0.02, gamma=3.0), lesion_mask=torch.zeros_like(lesion),
        spacing=spacing, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert spy.boxes == [None]
    with pytest.raises(ClinfuseInputError, match="lesion_crop"):
        GuidanceConfig(lesion_crop="yes").validate()
