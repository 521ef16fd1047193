"""Evaluation harness: per-case metrics, dataset runs with per-case CSV and bootstrap summaries,
paired comparisons between methods, and the benchmark tables of docs/BENCHMARKS.md. CT-derived
metrics use a case's CT reference (e.g. the unmoved CT of a misregistered phantom) if it has one."""

from __future__ import annotations

from clinfuse.evaluation.case import evaluate_case, fused_to_uint8, metric_columns
from clinfuse.evaluation.dataset import (
    DatasetResult,
    PreparedItem,
    evaluate_dataset,
    prepare_cases,
)
from clinfuse.evaluation.methods import (
    MethodOutput,
    available_methods,
    register_method,
    resolve_method,
)
from clinfuse.evaluation.percase import read_per_case
from clinfuse.evaluation.reference import CtReference, load_ct_reference
from clinfuse.evaluation.stats import bootstrap_ci, paired_mcnemar, paired_wilcoxon, summarise
from clinfuse.evaluation.tables import Comparison, compare

__all__ = [
    "Comparison",
    "CtReference",
    "DatasetResult",
    "MethodOutput",
    "PreparedItem",
    "available_methods",
    "bootstrap_ci",
    "compare",
    "evaluate_case",
    "evaluate_dataset",
    "fused_to_uint8",
    "load_ct_reference",
    "metric_columns",
    "paired_mcnemar",
    "paired_wilcoxon",
    "prepare_cases",
    "read_per_case",
    "register_method",
    "resolve_method",
    "summarise",
]
