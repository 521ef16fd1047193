"""Tables across methods: `compare` (paired Wilcoxon against the first) and benchmark tables."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse.evaluation.case import FUSION_COLUMNS, LESION_COLUMNS, ROI_COLUMNS
from clinfuse.evaluation.percase import (
    fmt,
    metric_names,
    metric_values,
    no_prediction_note,
    read_per_case,
    summarise_rows,
)
from clinfuse.evaluation.stats import MetricSummary, PairedTest, paired_wilcoxon

METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "standard 2D fusion metrics (METRICS.md)": FUSION_COLUMNS,
    "ROI and lesion metrics": ROI_COLUMNS + LESION_COLUMNS,
    "time": ("fuse_seconds",),
}


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "p = —"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def cell(s: MetricSummary, *, ci: bool = True) -> str:
    """`mean ± sd [lo, hi]` (the benchmark's cell format), then `k of n: no prediction` when
    cases without a predicted lesion were left out (HD95)."""
    note = no_prediction_note(s)
    if s.n == 0:
        return note or "—"
    if math.isinf(s.mean):
        text = fmt(s.mean)
    else:
        text = f"{fmt(s.mean)} ± {fmt(s.sd)}"
        text = f"{text} [{fmt(s.ci_low)}, {fmt(s.ci_high)}]" if ci else text
    return f"{text}; {note}" if note else text


def method_name(out: str | Path) -> str:
    """The method recorded in `OUT/summary.json`, else the folder name."""
    path = Path(out) / "summary.json"
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["method"])
    except (OSError, ValueError, KeyError):
        return Path(out).name


@dataclass
class Comparison:
    """Per-method summaries and paired tests of every other method against the first."""

    methods: list[str]
    metrics: list[str]
    summaries: dict[str, dict[str, MetricSummary]]
    tests: dict[str, dict[str, PairedTest]] = field(
        default_factory=dict
    )  # method -> metric -> test

    def to_markdown(self) -> str:
        """One row per method; cells `mean ± sd` and, after the first, `(Δ, p)` of the test."""
        head = "| method | " + " | ".join(self.metrics) + " |"
        lines = [head, "|---" * (len(self.metrics) + 1) + "|"]
        for i, m in enumerate(self.methods):
            cells = []
            for k in self.metrics:
                s = self.summaries[m].get(k)
                text = "—" if s is None else cell(s, ci=False)
                if i > 0 and k in self.tests.get(m, {}):
                    t = self.tests[m][k]
                    text += f" (Δ {fmt(t.mean_diff)}, {fmt_p(t.p_value)}, n = {t.n})"
                cells.append(text)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        ref = self.methods[0]
        lines += [
            "",
            f"Δ = method − {ref} on the cases both have (NaN dropped; +inf, e.g. the PSNR of an "
            "exact copy, ranks highest; HD95 of a case without a predicted lesion on either "
            "side left out); two-sided Wilcoxon "
            "signed-rank test (scipy), no correction for multiple comparisons.",
        ]
        return "\n".join(lines) + "\n"


def _by_case(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """case_id -> the value of `key` as summarised and paired (`percase.metric_values`)."""
    values = metric_values(rows, key)
    return {r["case_id"]: float(v) for r, v in zip(rows, values, strict=True)}


def _unique_names(names: list[str], outs: Sequence[str | Path]) -> list[str]:
    """Method names, told apart by as much of each folder's path as it takes (e.g. two
    checkpoints evaluated into `A/ours_x0` and `B/ours_x0`); a name seen twice must never make
    a folder be compared with itself."""
    if len(set(names)) == len(names):
        return names
    parts = [Path(o).resolve().parts for o in outs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        tails = [str(Path(*p[-depth:])) for p in parts]
        if len(set(tails)) == len(tails):
            return [f"{n} ({t})" for n, t in zip(names, tails, strict=True)]
    return [f"{n} (#{i + 1})" for i, n in enumerate(names)]  # the same folder given twice


def compare(outs: Sequence[str | Path], *, names: Sequence[str] | None = None) -> Comparison:
    """Compare evaluate output folders; the first is the reference of the paired tests.

    Pairs are matched by `case_id`; a case missing from either method or NaN in either is left
    out of that test (the `n` of each test says how many remain).
    """
    if len(outs) < 2:
        raise ValueError("compare needs at least two output folders")
    if names is None:
        names = _unique_names([method_name(o) for o in outs], outs)
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"compare needs one name per folder, got duplicates in {names}")
    rows = {n: read_per_case(o) for n, o in zip(names, outs, strict=True)}
    metrics: list[str] = []
    for n in names:
        metrics += [k for k in metric_names(rows[n]) if k not in metrics]
    summaries = {n: summarise_rows(rows[n]) for n in names}
    ref = names[0]
    ref_ids = {r["case_id"] for r in rows[ref]}
    tests: dict[str, dict[str, PairedTest]] = {}
    for n in names[1:]:
        common = [r["case_id"] for r in rows[n] if r["case_id"] in ref_ids]
        tests[n] = {}
        for k in metrics:
            # `metric_values`: HD95 without a predicted lesion on either side is left out
            ref_k, own_k = _by_case(rows[ref], k), _by_case(rows[n], k)
            a = np.array([ref_k[c] for c in common], float)
            b = np.array([own_k[c] for c in common], float)
            tests[n][k] = paired_wilcoxon(k, a, b)
    return Comparison(names, metrics, summaries, tests)


def benchmark_tables(
    rows_by_method: dict[str, list[dict[str, Any]]],
    *,
    groups: dict[str, tuple[str, ...]] | None = None,
) -> str:
    """Markdown tables (one per metric group present): methods × metrics, `mean ± sd [CI]`."""
    groups = METRIC_GROUPS if groups is None else groups
    summaries = {m: summarise_rows(r) for m, r in rows_by_method.items()}
    present: set[str] = set()
    for r in rows_by_method.values():
        present.update(metric_names(r))
    parts = []
    if not present:
        failed = {m: sum(1 for r in rows if r.get("error")) for m, rows in rows_by_method.items()}
        return f"(no metric value: failed cases per method {failed}; see per_case.csv)\n"
    for title, cols in groups.items():
        cols = tuple(c for c in cols if c in present)
        if not cols:
            continue
        n = {m: max((s.n for s in summaries[m].values()), default=0) for m in summaries}
        failed = {m: sum(1 for r in rows if r.get("error")) for m, rows in rows_by_method.items()}
        parts.append(f"**{title}**\n")
        parts.append("| method | n | failed | " + " | ".join(cols) + " |")
        parts.append("|---" * (len(cols) + 3) + "|")
        for m, s in summaries.items():
            cells = [cell(s[c]) if c in s else "—" for c in cols]
            parts.append(f"| {m} | {n[m]} | {failed[m]} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def benchmark_csv_rows(rows_by_method: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Long-format rows `method, metric, n, n_nan, mean, sd, ci_low, ci_high`."""
    out = []
    for m, rows in rows_by_method.items():
        for k, s in summarise_rows(rows).items():
            out.append({"method": m, "metric": k, **s.to_dict()})
    return out
