"""Dice / NSD / HD95 against hand cases and MONAI (the peer oracle)."""

import itertools
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from monai.metrics.utils import (
    ENCODING_KERNEL,
    create_table_neighbour_code_to_surface_area,
    get_edge_surface_distance,
)

from _helpers import ball
from clinfuse.errors import ClinfuseInputError
from clinfuse.metrics.segmentation import (
    dice,
    hd95,
    image_diagonal_mm,
    nsd,
    surface_element_table,
)


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))[None, None].float()


# (shape, spacing, gt radius, pred radius, shift along axis 0 in mm)
CASES = [
    ((28, 28, 28), (1.0, 1.0, 1.0), 8.0, 7.2, 2.0),
    ((28, 28, 16), (1.0, 1.0, 2.5), 8.0, 7.2, 3.0),
    ((28, 24, 20), (0.8, 1.2, 1.5), 7.0, 7.0, 1.0),
    ((40, 40), (1.0, 1.0), 9.0, 8.1, 2.0),
    ((40, 40), (0.7, 1.5), 9.0, 8.1, 5.0),
]


def _case(shape, spacing, r_gt, r_pred, shift):
    centre = [n * s / 2 for n, s in zip(shape, spacing, strict=True)]
    moved = [centre[0] + shift, *centre[1:]]
    return ball(shape, moved, r_pred, spacing), ball(shape, centre, r_gt, spacing)


def test_dice_hand_case_and_monai():
    gt = np.zeros((4, 4), dtype=bool)
    gt[:2] = True  # 8 pixels
    pred = np.zeros((4, 4), dtype=bool)
    pred[1:3] = True  # 8 pixels, 4 shared
    assert dice(pred, gt) == pytest.approx(0.5)
    for case in CASES:
        p, g = _case(*case)
        assert dice(p, g) == pytest.approx(compute_dice(_t(p), _t(g)).item(), abs=1e-6)


def test_surface_element_table_equals_deepmind_table_in_monai():
    # MONAI carries DeepMind's marching-cubes normals table; we derive ours with scikit-image.
    # Map our corner order onto MONAI's encoding kernel and compare all 256 areas.
    kernel = np.array(ENCODING_KERNEL[3])
    for spacing in [(1.0, 1.0, 1.0), (0.7, 1.3, 2.9)]:
        theirs = create_table_neighbour_code_to_surface_area(spacing)[0].numpy()
        ours = surface_element_table(spacing)
        for code in range(256):
            cube = np.zeros((2, 2, 2))
            for bit, corner in enumerate(itertools.product((0, 1), repeat=3)):
                cube[corner] = code >> bit & 1
            assert ours[code] == pytest.approx(theirs[int((cube * kernel).sum())], rel=1e-5)


def test_single_voxels_hand_case():
    # One voxel each, d voxels apart along an axis of spacing s: half of each surface lies at
    # (d-1) s from the other surface and half at d s (corner-grid cells), so HD95 = d s and
    # NSD = 1/2 when (d-1) s <= tau < d s.
    for shape, axis in [((9, 9), 1), ((7, 9, 7), 1)]:
        spacing = [1.0] * len(shape)
        spacing[axis] = 1.5
        g = np.zeros(shape, dtype=bool)
        p = np.zeros(shape, dtype=bool)
        centre = tuple(n // 2 for n in shape)
        g[centre] = True
        moved = list(centre)
        moved[axis] += 2
        p[tuple(moved)] = True
        assert hd95(p, g, spacing) == pytest.approx(3.0)
        assert nsd(p, g, spacing, tau=2.0) == pytest.approx(0.5)
        assert nsd(p, g, spacing, tau=3.0) == pytest.approx(1.0)
        assert nsd(p, g, spacing, tau=1.0) == pytest.approx(0.0)


@pytest.mark.parametrize("case", CASES)
def test_nsd_equals_monai_subvoxel_and_is_close_to_voxel_count(case):
    p, g = _case(*case)
    spacing = case[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tau in (1.0, 2.0):
            ours = nsd(p, g, spacing, tau)
            area_weighted = compute_surface_dice(
                _t(p), _t(g), [tau], include_background=True, spacing=spacing, use_subvoxels=True
            ).item()
            voxel_counted = compute_surface_dice(
                _t(p), _t(g), [tau], include_background=True, spacing=spacing
            ).item()
            assert ours == pytest.approx(area_weighted, abs=1e-5)
            # MONAI's default counts the boundary voxels themselves (one vote each, whatever
            # their face area, at voxel centres half a voxel inside our surface): on these
            # smooth shapes that moves NSD by at most 0.1.
            assert abs(ours - voxel_counted) <= 0.1


@pytest.mark.parametrize("case", CASES)
def test_hd95_equals_weighted_percentile_of_monai_distances(case):
    p, g = _case(*case)
    spacing = case[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (e_p, e_g), (d_pg, d_gp), (a_p, a_g) = get_edge_surface_distance(
            torch.from_numpy(p),
            torch.from_numpy(g),
            spacing=spacing,
            use_subvoxels=True,
            symmetric=True,
        )
        voxel_hd = compute_hausdorff_distance(
            _t(p), _t(g), include_background=True, percentile=95, spacing=spacing
        ).item()

    def weighted_p95(d, a):
        d, a = d.numpy().astype(np.float64), a.numpy().astype(np.float64)
        order = np.argsort(d)
        cum = np.cumsum(a[order]) / a.sum()
        return d[order][min(np.searchsorted(cum, 0.95), len(d) - 1)]

    expected = max(weighted_p95(d_gp, a_g[e_g]), weighted_p95(d_pg, a_p[e_p]))
    ours = hd95(p, g, spacing)
    assert ours == pytest.approx(expected, abs=1e-4)
    # Voxel-counted boundary and interpolated percentile (MONAI default): within one voxel.
    assert abs(ours - voxel_hd) <= max(spacing)


def test_identical_masks():
    p, g = _case(*CASES[1])
    assert nsd(g, g, CASES[1][1]) == 1.0
    assert hd95(g, g, CASES[1][1]) == 0.0
    assert dice(g, g) == 1.0


def test_empty_masks_have_defined_values():
    empty = np.zeros((10, 12), dtype=bool)
    some = empty.copy()
    some[3:6, 3:6] = True
    spacing = (1.0, 2.0)
    assert (dice(empty, empty), nsd(empty, empty, spacing), hd95(empty, empty, spacing)) == (
        1.0,
        1.0,
        0.0,
    )
    diag = np.hypot(10 * 1.0, 12 * 2.0)
    assert image_diagonal_mm((10, 12), spacing) == pytest.approx(diag)
    for p, g in [(empty, some), (some, empty)]:
        assert dice(p, g) == 0.0
        assert nsd(p, g, spacing) == 0.0
        assert hd95(p, g, spacing) == pytest.approx(diag)


def test_bad_inputs_raise_user_errors():
    a = np.zeros((8, 8), dtype=bool)
    with pytest.raises(ClinfuseInputError):
        dice(a, np.zeros((8, 9), dtype=bool))
    with pytest.raises(ClinfuseInputError):
        nsd(a, a, (1.0,))
    with pytest.raises(ClinfuseInputError):
        hd95(np.full((8, 8), 0.5), a, (1.0, 1.0))
    with pytest.raises(ClinfuseInputError):
        hd95(a, a, (1.0, -1.0))
