"""Lesion losses: zero at the truth, monotone in the error, finite non-zero gradients."""

import numpy as np
import pytest
import torch

from _helpers import ball
from clinfuse.losses.lesion import (
    hd95_surrogate_loss,
    lesion_loss,
    nsd_surrogate_loss,
    prepare_target,
    soft_dice_loss,
)


def _ball(shape, centre, radius, spacing):
    return torch.from_numpy(ball(shape, centre, radius, spacing))[None, None]


SPACING_3D = (1.0, 1.0, 2.0)
SHAPE_3D = (24, 24, 14)
CENTRE_3D = (12.0, 12.0, 14.0)


def _losses(prob, target, spacing):
    return [
        float(soft_dice_loss(prob, target)),
        float(nsd_surrogate_loss(prob, target, spacing)),
        float(hd95_surrogate_loss(prob, target, spacing)),
        float(lesion_loss(prob, target, spacing)),
    ]


def test_zero_for_perfect_prediction_2d_and_3d():
    for shape, centre, spacing in [
        (SHAPE_3D, CENTRE_3D, SPACING_3D),
        ((32, 32), (16.0, 16.0), (0.8, 1.2)),
    ]:
        g = _ball(shape, centre, 5.0, spacing)
        assert _losses(g.double(), g, spacing) == pytest.approx([0, 0, 0, 0], abs=1e-6)


def test_losses_grow_as_the_predicted_sphere_moves_away():
    g = _ball(SHAPE_3D, CENTRE_3D, 5.0, SPACING_3D)
    values = []
    for shift in range(0, 7):
        centre = (CENTRE_3D[0] + shift, *CENTRE_3D[1:])
        values.append(_losses(_ball(SHAPE_3D, centre, 5.0, SPACING_3D).double(), g, SPACING_3D))
    values = np.array(values)
    assert (np.diff(values, axis=0) > 0).all(), values


def test_nsd_surrogate_forgives_errors_inside_the_tau_band():
    # A prediction one voxel too large: false mass 1 mm outside the target is inside tau = 2 mm
    # (no false-surface term) but 3 mm outside when the axis spacing is 3 mm.
    shape = (20, 20)
    g = _ball(shape, (10.0, 10.0), 5.0, (1.0, 1.0))
    grown = torch.from_numpy(
        np.pad(g[0, 0].numpy(), 1)[:-2, 1:-1]
        | g[0, 0].numpy()
        | np.pad(g[0, 0].numpy(), 1)[2:, 1:-1]
    )[None, None].double()
    assert float(nsd_surrogate_loss(grown, g, (1.0, 1.0), tau=2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(nsd_surrogate_loss(grown, g, (3.0, 1.0), tau=2.0)) > 0.01


def test_gradients_flow_through_prob_only_and_are_finite():
    g = _ball(SHAPE_3D, CENTRE_3D, 5.0, SPACING_3D)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(g.shape, generator=gen, dtype=torch.float64, requires_grad=True)
    prob = torch.sigmoid(logits)
    for fn in (soft_dice_loss, nsd_surrogate_loss, hd95_surrogate_loss, lesion_loss):
        logits.grad = None
        loss = fn(prob, g) if fn is soft_dice_loss else fn(prob, g, SPACING_3D)
        loss.backward(retain_graph=True)
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0, fn.__name__


def test_gradient_descent_on_the_loss_moves_towards_the_target():
    g = _ball((24, 24), (12.0, 12.0), 5.0, (1.0, 1.0))
    logits = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
    target = prepare_target(g, (1.0, 1.0), like=logits)  # distance maps once, as guidance does
    with torch.no_grad():
        start = float(lesion_loss(torch.sigmoid(logits), target))
    for _ in range(20):
        logits.grad = None
        lesion_loss(torch.sigmoid(logits), target).backward()
        with torch.no_grad():
            logits -= 50.0 * logits.grad
    with torch.no_grad():
        end = float(lesion_loss(torch.sigmoid(logits), target))
    assert end < 0.5 * start


def test_prepared_target_matches_raw_target_and_hand_distances():
    g = torch.zeros(1, 1, 1, 8, dtype=torch.bool)
    g[..., 2:4] = True  # two voxels; spacing 2 mm along the row
    lt = prepare_target(g, (1.0, 2.0))
    np.testing.assert_allclose(lt.dist_out[0, 0, 0].numpy(), [4, 2, 0, 0, 2, 4, 6, 8])
    np.testing.assert_allclose(lt.dist_in[0, 0, 0].numpy(), [0, 0, 2, 2, 0, 0, 0, 0])
    prob = torch.linspace(0, 1, 8, dtype=torch.float32).reshape(1, 1, 1, 8)
    assert float(lesion_loss(prob, lt)) == pytest.approx(float(lesion_loss(prob, g, (1.0, 2.0))))
    # a target prepared in float32 serves a float64 prediction too
    assert float(lesion_loss(prob.double(), lt)) == pytest.approx(float(lesion_loss(prob, lt)))
    # hand value of the HD95 surrogate: sum((p - g)^2 d^2) / (|G| R^2), R = 2 mm
    p = prob[0, 0, 0].numpy().astype(np.float64)
    d = np.array([4, 2, 2, 2, 2, 4, 6, 8.0])
    t = np.array([0, 0, 1, 1, 0, 0, 0, 0.0])
    expected = ((p - t) ** 2 * d**2).sum() / (2 * 2.0**2)
    assert float(hd95_surrogate_loss(prob, lt)) == pytest.approx(expected, rel=1e-5)


def test_half_precision_prob_is_summed_in_float32():
    g = _ball(SHAPE_3D, CENTRE_3D, 5.0, SPACING_3D)
    prob = _ball(SHAPE_3D, (14.0, 12.0, 14.0), 5.0, SPACING_3D).float() * 0.9 + 0.05
    ref = float(lesion_loss(prob, g, SPACING_3D))
    got = lesion_loss(prob.bfloat16(), g, SPACING_3D)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(ref, rel=1e-2)


def test_empty_target_falls_back_to_mean_squared_error():
    g = torch.zeros(1, 1, 10, 10, dtype=torch.bool)
    prob = torch.full((1, 1, 10, 10), 0.1, dtype=torch.float64)
    assert float(nsd_surrogate_loss(prob, g, (1.0, 1.0))) == pytest.approx(0.01)
    assert float(hd95_surrogate_loss(prob, g, (1.0, 1.0))) == pytest.approx(0.01)
    assert float(soft_dice_loss(torch.zeros_like(prob), g)) == pytest.approx(0.0)


def test_shape_and_spacing_errors():
    g = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError):
        lesion_loss(torch.zeros(1, 1, 8, 7), g, (1.0, 1.0))
    with pytest.raises(ValueError):
        lesion_loss(torch.zeros(1, 1, 8, 8), g, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        nsd_surrogate_loss(torch.zeros(1, 1, 8, 8), g)  # no spacing
