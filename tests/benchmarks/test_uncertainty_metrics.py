"""Metric functions of benchmarks/uncertainty.py on tiny hand-checked arrays (not the full run)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "uncertainty.py"
_spec = importlib.util.spec_from_file_location("bench_uncertainty", _PATH)
unc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(unc)


def test_auroc_hand_case_and_ties():
    # pairs (pos, neg): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4 ordered right
    score = np.array([0.1, 0.4, 0.35, 0.8])
    assert unc.auroc(score, np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert unc.auroc(np.ones(4), np.array([0, 1, 0, 1])) == pytest.approx(0.5)  # ties: 1/2
    assert unc.auroc(-score, np.array([0, 0, 1, 1])) == pytest.approx(0.25)
    assert np.isnan(unc.auroc(score, np.zeros(4)))


def test_top_fraction_keeps_the_largest_tenth():
    assert np.flatnonzero(unc.top_fraction(np.arange(10.0))).tolist() == [9]
    assert np.flatnonzero(unc.top_fraction(np.arange(20.0)[::-1])).tolist() == [0, 1]


def test_spearman_hand_value_and_constant_input():
    # one swapped pair: sum d^2 = 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert unc.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert np.isnan(unc.spearman([1, 2, 3], [5, 5, 5]))


def test_border_region_two_layers_each_side_1d_and_2d():
    m = np.zeros(12, bool)
    m[3:9] = True  # edges between 2|3 and 8|9
    got = unc.border_region([m])
    assert np.flatnonzero(got).tolist() == [1, 2, 3, 4, 7, 8, 9, 10]
    sq = np.zeros((9, 9), bool)
    sq[2:7, 2:7] = True  # 5x5 square: only its centre is farther than 2 voxels from the edge
    b = unc.border_region([sq])
    assert not b[4, 4] and b[3, 4] and b[0, 4] and not b[0, 0]  # corner (0,0) is 2.83 away
    assert not unc.border_region([np.ones((4, 4), bool)]).any()


def test_ensemble_rmse_matches_the_individual_samples():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(3, 5, 4))
    ref = rng.normal(size=(5, 4))
    mask = np.ones((5, 4), bool)
    mask[0] = False
    mean, std = samples.mean(0), samples.std(0)  # population std, as fuse_prepared
    rm, r1 = unc.ensemble_rmse(mean, std, ref, mask)
    assert rm == pytest.approx(np.sqrt(((mean - ref)[mask] ** 2).mean()))
    assert r1 == pytest.approx(np.sqrt(np.mean([((s - ref)[mask] ** 2).mean() for s in samples])))
    assert rm <= r1


def test_uncertainty_metrics_on_a_tiny_volume():
    brain = np.zeros((6, 6, 6), bool)
    brain[1:5, 1:5, 1:5] = True
    bone = np.zeros_like(brain)
    bone[0] = True
    ref = np.zeros(brain.shape)
    err = np.arange(brain.size, dtype=float).reshape(brain.shape) / brain.size
    mean = ref + err
    lesion = np.zeros_like(brain)
    lesion[2, 2, 2] = True
    out = unc.uncertainty_metrics(mean, 2 * err, ref, brain, bone, lesion, proxy=-err)
    head = brain | bone
    # std is a monotone function of the error: perfect ranking; the proxy is reversed
    assert out["spearman_head"] == pytest.approx(1.0)
    assert out["auroc_head"] == pytest.approx(1.0) and out["auroc_bone"] == pytest.approx(1.0)
    assert out["proxy_spearman_head"] == pytest.approx(-1.0)
    assert out["proxy_auroc_head"] == pytest.approx(0.0)
    assert out["std_lesion"] == pytest.approx(2 * err[2, 2, 2])
    assert out["std_brain"] == pytest.approx(2 * err[brain].mean())
    assert out["err_bone"] == pytest.approx(err[bone].mean())
    # single-sample MSE = err^2 + std^2 = 5 err^2 -> reduction 1 - 1/sqrt(5)
    assert out["rmse_reduction_head"] == pytest.approx(1 - 1 / np.sqrt(5))
    assert out["std_over_rmse"] == pytest.approx(2.0)
    assert out["spearman_brain"] == pytest.approx(spearmanr(err[brain], err[brain]).statistic)
    assert set(out) >= {f"std_{r}" for r in unc.STD_REGIONS}
    # a 4-voxel cube is all border (every voxel within 2 of its edge): no interior, NaN
    # (the border also holds the 2 layers outside the masks)
    border = unc.border_region([brain, bone])
    assert np.isnan(out["std_interior"]) and (head <= border).all()
    assert out["std_border"] == pytest.approx(2 * err[border].mean())


def test_parse_args_rejects_a_single_sample():
    with pytest.raises(SystemExit):
        unc.parse_args(["--samples", "1"])
    args = unc.parse_args(["--n", "2", "--samples", "3", "--no-copy"])
    assert (args.n, args.samples, args.seed, args.copy_results) == (2, 3, 2000, False)


def test_guidance_options_are_typed_and_checked_before_any_work():
    assert unc.parse_args(["--option", "eta=0", "--option", "mode=xt"]).overrides == {
        "eta": 0,
        "mode": "xt",
    }
    with pytest.raises(SystemExit):
        unc.parse_args(["--option", "no_such_key=1"])


def test_markdown_prints_tiny_reductions_instead_of_zero():
    row = {"case": "c", "contrast": "T1", "rmse_reduction_head": 1.2e-4, "spearman_head": 0.5}
    meta = {
        "command": "cmd",
        "checkpoint": "m.pt",
        "sha256": "ab" * 32,
        "step": 250,
        "steps": 20,
        "samples": 4,
        "sample_seed": 0,
        "seed": 2000,
        "n": 1,
        "seconds": 1.0,
        "overrides": {"eta": 0},
    }
    md = unc.markdown([row], meta)
    assert "| c | T1 | 0.500 |" in md and "1.2e-04" in md and "eta=0" in md
    assert "sha256 abababababab, step 250" in md
