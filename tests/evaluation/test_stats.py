import math

import numpy as np
import pytest
from scipy import stats

from clinfuse.evaluation.stats import (
    bootstrap_ci,
    paired_wilcoxon,
    summarise,
    summarise_metric,
)


def test_summary_mean_sd_by_hand():
    s = summarise_metric(np.array([1.0, 2.0, 3.0, 4.0, math.nan]))
    assert s.n == 4 and s.n_nan == 1
    assert s.mean == pytest.approx(2.5)
    assert s.sd == pytest.approx(math.sqrt(5.0 / 3.0))  # sample sd: sum of sq. dev. 5, n-1 = 3
    assert s.ci_low < 2.5 < s.ci_high
    # The bootstrap mean can never leave the sample's range.
    assert 1.0 <= s.ci_low and s.ci_high <= 4.0


def test_bootstrap_is_seeded_and_close_to_normal_theory():
    x = np.random.default_rng(7).normal(10.0, 2.0, size=400)
    lo1, hi1 = bootstrap_ci(x)
    lo2, hi2 = bootstrap_ci(x)
    assert (lo1, hi1) == (lo2, hi2)  # default generator seeded with BOOT_SEED
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)  # normal-theory half width
    assert (hi1 - lo1) / 2 == pytest.approx(half, rel=0.15)
    assert (lo1 + hi1) / 2 == pytest.approx(x.mean(), abs=0.1 * half)


def test_bootstrap_degenerate_samples():
    assert bootstrap_ci(np.array([0.7, 0.7, 0.7])) == (0.7, 0.7)
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([1.0])))
    s = summarise_metric(np.array([math.nan, math.nan]))
    assert s.n == 0 and math.isnan(s.mean)


def test_infinite_values_are_kept_not_dropped():
    s = summarise_metric(np.array([math.inf, math.inf]))
    assert s.n == 2 and s.mean == math.inf and math.isnan(s.sd)


def test_summarise_is_deterministic_per_seed():
    cols = {"a": np.arange(10.0), "b": np.arange(10.0) ** 2}
    assert summarise(cols, seed=3) == summarise(cols, seed=3)


def test_wilcoxon_exact_small_sample_by_hand():
    # 5 pairs, every difference positive and distinct: the exact two-sided p is 2 / 2**5.
    ref = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    other = ref + np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    t = paired_wilcoxon("m", ref, other)
    assert t.n == 5 and t.p_value == pytest.approx(0.0625)
    assert t.mean_diff == pytest.approx(0.3)


def test_wilcoxon_drops_nan_pairs_and_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=30)
    b = a + rng.normal(0.3, 1.0, size=30)
    a[3] = math.nan
    b[7] = math.nan
    t = paired_wilcoxon("m", a, b)
    ok = np.isfinite(a) & np.isfinite(b)
    assert t.n == 28
    assert t.p_value == pytest.approx(stats.wilcoxon(b[ok], a[ok]).pvalue)


def test_wilcoxon_identical_methods():
    a = np.array([0.5, 0.6, 0.7])
    assert paired_wilcoxon("m", a, a).p_value == 1.0
    assert paired_wilcoxon("m", np.array([math.nan]), np.array([1.0])).n == 0


def test_wilcoxon_keeps_infinite_values_as_top_ranks():
    ref = np.array([1.0, 2.0, 3.0, 4.0, 5.0, math.inf])
    other = np.array([2.0, math.inf, 4.5, 4.2, math.inf, math.inf])
    t = paired_wilcoxon("psnr", ref, other)
    assert t.n == 5  # inf - inf has no difference: dropped
    assert t.p_value == pytest.approx(0.0625) and t.mean_diff == math.inf


def test_mcnemar_exact_counts_only_discordant_pairs():
    from clinfuse.evaluation.stats import paired_mcnemar

    # 80 lesions: both find 33, only the other 9, none only the reference: p = 2 / 2**9
    ref = np.array([True] * 33 + [False] * 47)
    other = ref.copy()
    other[33:42] = True
    t = paired_mcnemar(ref, other)
    assert (t.n, t.found_ref, t.found, t.only_ref, t.only_other) == (80, 33, 42, 0, 9)
    assert t.p_value == pytest.approx(2 / 2**9)
    # concordant pairs never matter; one each way is p = 1
    assert paired_mcnemar(ref, ref).p_value == 1.0
    flip = np.array([True, False, True, True])
    assert paired_mcnemar(flip, np.array([False, True, True, True])).p_value == 1.0
    assert paired_mcnemar(ref, other).p_value == paired_mcnemar(other, ref).p_value
    with pytest.raises(ValueError, match="shape"):
        paired_mcnemar(ref, ref[:3])
