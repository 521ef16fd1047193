"""Per-case result files of the evaluation harness: `per_case.csv` (written row by row, read
back), `summary.json` / `summary.md`, case selection by glob, and number formatting. Used by
`dataset` (writing a run) and `tables` (comparing runs); imports neither."""

from __future__ import annotations

import csv
import fnmatch
import math
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse.errors import ClinfuseInputError
from clinfuse.evaluation.reference import SCORED_AGAINST_COLUMN
from clinfuse.evaluation.stats import BOOT_SEED, N_BOOT, MetricSummary, summarise_metric

PER_CASE = "per_case.csv"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
EXTRA_COLUMNS = ("fuse_seconds",)  # wall time of the method on the case (not a quality metric)
TEXT_COLUMNS = ("case_id", "patient_id", SCORED_AGAINST_COLUMN, "error")  # not metrics
# 1: the predicted lesion mask (after `clean_mask`) was empty; 0: it was not; blank: the case's
# lesion was not scored. A flag, not a metric: never summarised.
NO_PREDICTION_COLUMN = "no_predicted_lesion"
FLAG_COLUMNS = (NO_PREDICTION_COLUMN,)
# Metrics without a value when nothing is predicted: `metrics.segmentation.hd95` returns the
# image diagonal as a stand-in. Such cases are counted apart ("k of n: no prediction"), never
# averaged and never paired (as the demo report does).
UNDEFINED_WITHOUT_PREDICTION = ("hd95",)


def _atomic_text(path: Path, text: str) -> None:
    from clinfuse.io.atomic import write_text_atomic

    write_text_atomic(path, text)


def fmt(v: float) -> str:
    """Compact number: 3 decimals below 10, 2 below 1000, else 1; NaN as an em dash, inf as ∞."""
    if v is None or math.isnan(v):
        return "—"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    a = abs(v)
    return f"{v:.3f}" if a < 10 else f"{v:.2f}" if a < 1000 else f"{v:.1f}"


def case_matches(case_id: str, patterns: Sequence[str]) -> bool:
    """True when `case_id` matches any of the glob `patterns` (fnmatch, case-sensitive, e.g.
    `16_*` or `16_00[7-9]`): the one case selector of `--subset` and `--cases`."""
    return any(fnmatch.fnmatchcase(str(case_id), p) for p in patterns)


def filter_rows(rows: list[dict[str, Any]], patterns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows whose case_id matches any of the glob `patterns` (e.g. `16_*`)."""
    return [r for r in rows if case_matches(r["case_id"], patterns)]


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return "" if v is None else str(v)


class RowWriter:
    """Appends CSV rows and flushes each to disk, so a crash keeps every finished case."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        _atomic_text(path, ",".join(columns) + "\n")

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow([_fmt_value(row.get(c)) for c in self.columns])
            fh.flush()
            os.fsync(fh.fileno())


def read_per_case(out: str | Path) -> list[dict[str, Any]]:
    """Rows of `OUT/per_case.csv` with metric values as floats (empty or 'nan' -> NaN)."""
    path = Path(out) / PER_CASE
    if not path.is_file():
        raise ClinfuseInputError(f"no {PER_CASE} here (not an evaluate output folder?)", out)
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, Any] = {}
            for k, v in raw.items():
                if k in TEXT_COLUMNS:
                    row[k] = v or None
                else:
                    try:
                        row[k] = float(v) if v not in ("", None) else math.nan
                    except ValueError:
                        row[k] = math.nan
            rows.append(row)
    return rows


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    """Numeric columns of per-case rows with at least one non-NaN value, in order."""
    if not rows:
        return []
    names = [k for k in rows[0] if k not in TEXT_COLUMNS and k not in FLAG_COLUMNS]
    return [k for k in names if any(not math.isnan(r.get(k, math.nan)) for r in rows)]


def no_prediction(row: dict[str, Any]) -> bool:
    """True when the case's predicted lesion mask was empty (`NO_PREDICTION_COLUMN`)."""
    v = row.get(NO_PREDICTION_COLUMN)
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and bool(v)


def metric_values(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    """The per-case values of `key` as they are summarised and paired: NaN where undefined,
    including HD95 of a case with no predicted lesion (`UNDEFINED_WITHOUT_PREDICTION`)."""
    undefined = key in UNDEFINED_WITHOUT_PREDICTION
    return np.array(
        [math.nan if undefined and no_prediction(r) else r.get(key, math.nan) for r in rows],
        dtype=float,
    )


def n_no_prediction(rows: list[dict[str, Any]], key: str) -> int:
    """Cases whose `key` value is left out because nothing was predicted (see `metric_values`)."""
    if key not in UNDEFINED_WITHOUT_PREDICTION:
        return 0
    return sum(1 for r in rows if no_prediction(r) and not math.isnan(r.get(key, math.nan)))


def no_prediction_note(s: MetricSummary) -> str:
    """`k of n: no prediction` for a summary with cases counted apart, else the empty string."""
    k = s.n_no_prediction
    return f"{k} of {s.n + k}: no prediction" if k else ""


def summarise_column(
    rows: list[dict[str, Any]], key: str, *, rng: np.random.Generator | None = None
) -> MetricSummary:
    """Summary of one metric over `rows`; HD95 of cases without a predicted lesion is left out
    and counted in `n_no_prediction` (`metric_values`)."""
    s = summarise_metric(metric_values(rows, key), rng=rng)
    apart = n_no_prediction(rows, key)
    return replace(s, n_nan=s.n_nan - apart, n_no_prediction=apart) if apart else s


def summarise_rows(
    rows: list[dict[str, Any]], *, seed: int = BOOT_SEED
) -> dict[str, MetricSummary]:
    """Summary of each metric column (all-NaN ones, e.g. a baseline's lesion metrics, omitted)
    with `summarise_column`; one generator seeded with `seed` serves all, in column order."""
    rng = np.random.default_rng(seed)
    return {k: summarise_column(rows, k, rng=rng) for k in metric_names(rows)}


def summary_markdown(
    title: str,
    summary: dict[str, MetricSummary],
    n_cases: int,
    n_failed: int,
    note: str | None = None,
) -> str:
    """`summary.md`: one row per metric with n, mean ± sd and the 95 % CI."""
    lines = [
        f"# {title}",
        "",
        f"{n_cases} cases, {n_failed} failed. 95 % CI: percentile bootstrap of the mean "
        f"({N_BOOT} resamples, seed {BOOT_SEED}).",
        "",
        *([note, ""] if note else []),
        "| metric | n | mean ± sd | 95 % CI |",
        "|---|---|---|---|",
    ]
    for name, s in summary.items():
        ci = f"[{fmt(s.ci_low)}, {fmt(s.ci_high)}]"
        n = f"{s.n} ({no_prediction_note(s)})" if s.n_no_prediction else str(s.n)
        lines.append(f"| {name} | {n} | {fmt(s.mean)} ± {fmt(s.sd)} | {ci} |")
    if any(s.n_no_prediction for s in summary.values()):
        lines += [
            "",
            "No prediction: the predicted lesion mask was empty (per_case.csv "
            f"`{NO_PREDICTION_COLUMN}` = 1), so HD95 is undefined for that case; it is counted "
            "apart, not averaged as the image diagonal.",
        ]
    return "\n".join(lines) + "\n"


def json_safe(obj: Any) -> Any:
    """Strict JSON: NaN -> null, +/-inf -> "inf"/"-inf" (other readers reject bare NaN)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj
