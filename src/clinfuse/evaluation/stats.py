"""Summary statistics of per-case metrics: mean, sd, seeded bootstrap CI, paired Wilcoxon tests,
and the exact McNemar test of paired detections."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

N_BOOT = 2000
BOOT_SEED = 0  # fixed and reported, so a table regenerates to the same digits
CI_LEVEL = 0.95


@dataclass
class MetricSummary:
    """One metric over cases; NaN cases are left out and counted in `n_nan` (+inf is kept)."""

    n: int
    n_nan: int
    mean: float
    sd: float  # sample standard deviation (ddof = 1); NaN for n < 2
    ci_low: float  # percentile bootstrap of the mean; NaN for n < 2
    ci_high: float
    # cases left out because the metric is undefined without a predicted lesion (HD95 of an
    # empty prediction; `percase.metric_values`), counted apart from `n` and `n_nan`
    n_no_prediction: int = 0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def bootstrap_ci(
    values: np.ndarray,
    *,
    n_boot: int = N_BOOT,
    level: float = CI_LEVEL,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of finite `values` (scipy.stats.bootstrap).

    Percentile rather than BCa: BCa's jackknife breaks down on constant samples (e.g. a metric
    that is 1.0 for every case), which happen here. `rng` defaults to a generator seeded with
    `BOOT_SEED`.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return math.nan, math.nan
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(BOOT_SEED) if rng is None else rng
    res = stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=n_boot,
        confidence_level=level,
        method="percentile",
        rng=rng,
        vectorized=True,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarise_metric(
    values: np.ndarray, *, rng: np.random.Generator | None = None
) -> MetricSummary:
    """Mean ± sd and the 95 % bootstrap CI of one metric's per-case values."""
    x = np.asarray(values, dtype=np.float64)
    valid = x[~np.isnan(x)]
    n = int(valid.size)
    if n and not np.all(np.isfinite(valid)):
        # +inf is a real value here (PSNR of an exact copy, e.g. the composite inside its ROI):
        # the mean is then infinite and spread/CI are undefined, rather than dropping the cases.
        with np.errstate(invalid="ignore"):
            mean = float(valid.mean())
        return MetricSummary(n, int(x.size - n), mean, math.nan, math.nan, math.nan)
    mean = float(valid.mean()) if n else math.nan
    sd = float(valid.std(ddof=1)) if n >= 2 else math.nan
    lo, hi = bootstrap_ci(valid, rng=rng)
    return MetricSummary(n, int(x.size - n), mean, sd, lo, hi)


def summarise(columns: dict[str, np.ndarray], *, seed: int = BOOT_SEED) -> dict[str, MetricSummary]:
    """Summaries of every column; one generator seeded with `seed` serves all, in column order."""
    rng = np.random.default_rng(seed)
    return {name: summarise_metric(v, rng=rng) for name, v in columns.items()}


@dataclass
class PairedTest:
    """A paired comparison of one metric between a method and the reference (the first)."""

    metric: str
    n: int  # cases present in both with a defined difference (no NaN, not inf - inf)
    ref_mean: float
    mean: float
    mean_diff: float  # method - reference
    p_value: float  # two-sided Wilcoxon signed-rank; 1.0 if all differences are 0


def paired_wilcoxon(metric: str, ref: np.ndarray, other: np.ndarray) -> PairedTest:
    """Wilcoxon signed-rank test on paired values via scipy (NaN and inf - inf pairs dropped)."""
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    # +inf is a value (PSNR of an exact copy) and ranks above everything, so such pairs stay in
    # the rank test; NaN pairs and inf - inf (no defined difference) are dropped.
    with np.errstate(invalid="ignore"):
        ok = ~np.isnan(a) & ~np.isnan(b) & ~np.isnan(b - a)
    a, b = a[ok], b[ok]
    n = int(a.size)
    if n == 0:
        return PairedTest(metric, 0, math.nan, math.nan, math.nan, math.nan)
    d = b - a
    with np.errstate(invalid="ignore"):
        means = float(a.mean()), float(b.mean()), float(d.mean())
    if np.all(d == 0):
        p = 1.0
    elif n < 2:
        p = math.nan
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # small-n / ties notices
            p = float(stats.wilcoxon(b, a).pvalue)
    return PairedTest(metric, n, *means, p)


@dataclass
class PairedDetection:
    """Two methods' detections (found or not) on the same cases: how many each finds, the
    discordant pairs, and the two-sided exact McNemar p (1.0 when no pair is discordant)."""

    n: int
    found_ref: int
    found: int
    only_ref: int  # found by the reference, missed by the other
    only_other: int  # found by the other, missed by the reference
    p_value: float


def paired_mcnemar(ref: np.ndarray, other: np.ndarray) -> PairedDetection:
    """Exact McNemar test on paired booleans: a two-sided binomial test (scipy) of the
    discordant pairs against 1/2. For "does head B find more of the same lesions than head A",
    where the lesions both find or both miss carry no information."""
    a = np.asarray(ref, dtype=bool)
    b = np.asarray(other, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired detections differ in shape: {a.shape} vs {b.shape}")
    only_ref, only_other = int((a & ~b).sum()), int((b & ~a).sum())
    k = only_ref + only_other
    p = 1.0 if k == 0 else float(stats.binomtest(only_other, k, 0.5).pvalue)
    return PairedDetection(int(a.size), int(a.sum()), int(b.sum()), only_ref, only_other, p)
