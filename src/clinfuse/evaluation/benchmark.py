"""`run_benchmark`: every method on one dataset, one markdown table + CSV (the docs tables)."""

from __future__ import annotations

import csv
import io
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse.errors import ClinfuseInputError
from clinfuse.evaluation.dataset import evaluate_dataset, prepare_cases
from clinfuse.evaluation.percase import filter_rows
from clinfuse.evaluation.tables import benchmark_csv_rows, benchmark_tables
from clinfuse.preprocess.prepared import PreparedCase

DEFAULT_METHODS = ("average", "weighted", "max", "laplacian", "wavelet", "composite")


@dataclass
class BenchmarkResult:
    out: Path
    rows_by_method: dict[str, list[dict[str, Any]]]
    markdown: str
    subsets: dict[str, list[str]] = field(default_factory=dict)


def run_benchmark(
    data: str | Path,
    out: str | Path,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    options: dict[str, Any] | None = None,
    overwrite: bool = False,
    limit: int | None = None,
    cases: list[str] | None = None,
    subsets: dict[str, list[str]] | None = None,
    command: str | None = None,
    on_case: Callable[[str, str, dict[str, Any]], None] | None = None,
    lesion_head: Callable[[np.ndarray, PreparedCase], np.ndarray] | None = None,
    lesion_head_name: str | None = None,
) -> BenchmarkResult:
    """Evaluate each method into `OUT/<method>/` and write `OUT/benchmark.md` + `benchmark.csv`.

    Cases are loaded and preprocessed once and shared by all methods. `subsets` maps a name to
    case-id glob patterns (e.g. `{"CDDFuse test pairs": ["16_*", "21_*"]}`); each gets its own
    table computed from the same per-case rows. `options` go to every method that is not a
    baseline (e.g. `checkpoint` for `clinfuse`). `command` is recorded in the markdown.
    `cases` (case-id globs) restricts the run to matching cases, before `limit`.
    `lesion_head(fused, prepared) -> probability` (e.g. `pipeline.lesion_head_predictor`, as
    `--lesion-head` builds it) scores every method's fused image with one segmenter, the way
    `evaluate_dataset` takes it; `lesion_head_name` records which one.
    """
    from clinfuse.baselines import BASELINES
    from clinfuse.io.atomic import check_output_dir, write_text_atomic

    if not methods:
        raise ClinfuseInputError("no methods given")
    if len(set(methods)) != len(methods):
        raise ClinfuseInputError(f"a method is listed twice: {list(methods)}")
    out_dir = check_output_dir(out, overwrite, inputs=[data])
    items = list(prepare_cases(data, limit=limit, cases=cases))
    rows_by_method: dict[str, list[dict[str, Any]]] = {}
    for m in methods:
        opts = {} if m in BASELINES else dict(options or {})

        def progress(case_id: str, row: dict[str, Any], _m: str = m) -> None:
            if on_case is not None:
                on_case(_m, case_id, row)

        res = evaluate_dataset(
            m,
            data,
            out_dir / m,
            options=opts,
            overwrite=True,
            items=items,
            on_case=progress,
            lesion_head=lesion_head,
            lesion_head_name=lesion_head_name,
        )
        rows_by_method[m] = res.rows
    command = command or " ".join(shlex.quote(a) for a in ["clinfuse", *sys.argv[1:]])
    n_cases = len(items)
    parts = [
        "# Benchmark",
        "",
        f"Data: `{Path(data).resolve()}` ({n_cases} cases). Command: `{command}`",
        "",
        "Cells: mean ± sd [95 % percentile-bootstrap CI of the mean, 2000 resamples, seed 0]; "
        "n = cases with a finite value. HD95 is undefined where the predicted lesion mask is "
        "empty: those cases are counted apart ('k of n: no prediction'), never averaged.",
        "",
        benchmark_tables(rows_by_method),
    ]
    for name, patterns in (subsets or {}).items():
        sub = {m: filter_rows(r, patterns) for m, r in rows_by_method.items()}
        k = len(next(iter(sub.values())))
        parts += [f"## Subset: {name} ({k} cases: {', '.join(patterns)})", ""]
        parts.append(benchmark_tables(sub) if k else "(no case matches)\n")
    markdown = "\n".join(parts)
    write_text_atomic(out_dir / "benchmark.md", markdown)
    buf = io.StringIO()
    fields = ["subset", "method", "metric", "n", "n_nan", "mean", "sd", "ci_low", "ci_high"]
    fields.append("n_no_prediction")  # HD95 of empty predictions, counted apart
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in benchmark_csv_rows(rows_by_method):
        w.writerow({"subset": "all", **r})
    for name, patterns in (subsets or {}).items():
        sub = {m: filter_rows(r, patterns) for m, r in rows_by_method.items()}
        for r in benchmark_csv_rows(sub):
            w.writerow({"subset": name, **r})
    write_text_atomic(out_dir / "benchmark.csv", buf.getvalue())
    return BenchmarkResult(out_dir, rows_by_method, markdown, dict(subsets or {}))
