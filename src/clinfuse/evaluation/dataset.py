"""Evaluate one method over a dataset: fused outputs, per-case CSV (row by row), summaries.

Layout of an output folder `OUT`:
    OUT/fused/<case>.png      2D: the uint8 image that was scored (min-max scaled fused image)
    OUT/fused/<case>.nii.gz   3D: the fused model-range volume with the prepared case's affine
    OUT/per_case.csv          one row per case, appended and flushed as soon as it is computed;
                              `ct_scored_against` says which CT the bone metrics used (`input`,
                              or `ct_reference` when the case has one: evaluation/reference.py)
    OUT/summary.json, .md     mean ± sd and the seeded 95 % bootstrap CI of every metric
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse.errors import ClinfuseInputError
from clinfuse.evaluation.case import evaluate_case, fused_to_uint8, metric_columns
from clinfuse.evaluation.methods import (
    MethodFn,
    mask_rule_of,
    resolve_method,
    unpack_output,
)
from clinfuse.evaluation.percase import (
    EXTRA_COLUMNS,
    PER_CASE,
    SUMMARY_JSON,
    SUMMARY_MD,
    RowWriter,
    _atomic_text,
    case_matches,
    json_safe,
    summarise_rows,
    summary_markdown,
)
from clinfuse.evaluation.reference import (
    REFERENCE_ROLE,
    SCORED_AGAINST_COLUMN,
    CtReference,
    load_ct_reference,
    reference_paths,
    scored_against_note,
)
from clinfuse.evaluation.stats import BOOT_SEED, CI_LEVEL, N_BOOT, MetricSummary
from clinfuse.preprocess.prepared import PreparedCase

PROGRAMMING_ERRORS = (NameError, AttributeError, ImportError, SyntaxError)
"""Errors that mean broken code rather than a bad case: the run stops after writing the row."""


@dataclass
class PreparedItem:
    """A dataset case ready for a method, or the error that stopped it from getting there."""

    case_id: str
    prepared: PreparedCase | None
    sources_uint8: tuple[np.ndarray, np.ndarray] | None = None  # 2D: the source PNG values
    patient_id: str | None = None
    error: str | None = None
    ct_reference: CtReference | None = None  # CT-derived metrics are scored against this


@dataclass
class DatasetResult:
    """What `evaluate_dataset` wrote and computed."""

    out: Path
    method: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, MetricSummary] = field(default_factory=dict)

    @property
    def n_failed(self) -> int:
        return sum(1 for r in self.rows if r.get("error"))


def _source_uint8(x: np.ndarray) -> np.ndarray | None:
    # Display data (PNG) are already 0..255 grey values; anything else has no uint8 source.
    if x.min() < 0 or x.max() > 255:
        return None
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def prepare_cases(
    data: str | Path, *, limit: int | None = None, cases: list[str] | None = None
) -> Iterator[PreparedItem]:
    """Load and preprocess each case of a dataset (any layout `load_dataset` accepts), lazily.

    `cases`: case-id glob patterns (fnmatch, e.g. `16_00[7-9]`); only matching cases are kept,
    then `limit` applies. A case with a CT reference (`evaluation.reference`) carries it. A case
    that fails to load or preprocess yields an item with `error` set instead of raising, so one
    bad case does not stop a run.
    """
    from clinfuse.io.dataset import load_dataset
    from clinfuse.preprocess.pipeline import preprocess_case

    refs = load_dataset(data)
    if cases:
        kept = [r for r in refs if case_matches(r.case_id, cases)]
        if not kept:
            shown = ", ".join(r.case_id for r in refs[:5])
            raise ClinfuseInputError(
                f"no case id matches {list(cases)} (ids look like: {shown}, ...)", data
            )
        refs = kept
    ref_paths = reference_paths(data, refs)
    if limit is not None:
        if limit < 1:
            raise ClinfuseInputError(f"--limit must be >= 1, got {limit}")
        refs = refs[:limit]
    for ref in refs:
        pid = getattr(ref, "patient_id", None)
        try:
            case = ref.load()
            prepared = preprocess_case(case)
            src = None
            if (
                prepared.ndim == 2
                and case.ct_kind == "display"
                and case.mri.shape == prepared.shape
            ):
                a, b = _source_uint8(case.mri), _source_uint8(case.ct)
                src = None if a is None or b is None else (a, b)
            ct_ref = None
            if ref.case_id in ref_paths:
                ct_ref = load_ct_reference(ref_paths[ref.case_id], prepared)
            yield PreparedItem(ref.case_id, prepared, src, pid, ct_reference=ct_ref)
        except Exception as err:  # noqa: BLE001 - recorded per case, see evaluate_dataset
            warnings.warn(f"case {ref.case_id}: {err}", RuntimeWarning, stacklevel=2)
            yield PreparedItem(ref.case_id, None, None, pid, f"{type(err).__name__}: {err}")


def _save_fused(folder: Path, item: PreparedItem, fused: np.ndarray, u8: np.ndarray | None) -> Path:
    prepared = item.prepared
    assert prepared is not None  # only called for prepared items
    if prepared.ndim == 2:
        from clinfuse.io.png import save_png

        return save_png(folder / f"{item.case_id}.png", u8)
    from clinfuse.io.nifti import save_nifti

    return save_nifti(folder / f"{item.case_id}.nii.gz", fused.astype(np.float32), prepared.affine)


def _prepare_out(out: Path, data: Path | None, overwrite: bool) -> Path:
    from clinfuse.io.atomic import check_output_dir

    out = check_output_dir(out, overwrite, inputs=[data] if data is not None else [])
    # With --overwrite, clear what an earlier run of this command wrote (and nothing else), so
    # stale fused images of cases no longer in the run do not linger.
    for name in (PER_CASE, SUMMARY_JSON, SUMMARY_MD):
        (out / name).unlink(missing_ok=True)
    if (out / "fused").is_dir():
        shutil.rmtree(out / "fused")
    (out / "fused").mkdir()
    return out


def evaluate_dataset(
    method: str | MethodFn,
    data: str | Path | None,
    out: str | Path,
    *,
    options: dict[str, Any] | None = None,
    overwrite: bool = False,
    limit: int | None = None,
    items: Iterable[PreparedItem] | None = None,
    on_case: Callable[[str, dict[str, Any]], None] | None = None,
    cases: list[str] | None = None,
    lesion_head: Callable[[np.ndarray, PreparedCase], np.ndarray] | None = None,
    lesion_head_name: str | None = None,
) -> DatasetResult:
    """Run `method` on every case of `data` and write `OUT` (see the module docstring).

    `cases`: case-id glob patterns (see `prepare_cases`). Cases with a CT reference have their
    CT-derived metrics scored against it (column and summary.json key `ct_scored_against`).

    `method` is a registered name (`available_methods()`, options via `options`) or a callable
    `(PreparedCase) -> fused | MethodOutput`. `items` (from `prepare_cases`) replaces `data`
    when cases are already prepared (the benchmark prepares once for all methods). A case that
    fails (bad input, wrong-shape or NaN output, ...) gets a row of NaN with the error in the
    `error` column and a warning; rows already written are never lost. `on_case(case_id, row)`
    is called after each row (progress display). `lesion_head(fused, prepared) -> probability`
    (e.g. `clinfuse.pipeline.lesion_head_predictor`) replaces every method's own lesion output,
    so all methods' lesion Dice/NSD/HD95 come from one segmenter applied to their fused images;
    `lesion_head_name` records which one in summary.json. A probability is scored as
    `rule.apply(prob, spacing, 0.5, mri)` with the head's `LesionMaskRule` (carried by the method's
    output or the `lesion_head` callable: `methods.mask_rule_of`); a case whose
    mask is empty is flagged in `no_predicted_lesion` and its HD95 counted apart.
    """
    name, fn = resolve_method(method, **(options or {}))
    if items is None:
        if data is None:
            raise ValueError("give `data` or `items`")
        items = prepare_cases(data, limit=limit, cases=cases)
    elif limit is not None:
        items = list(items)[:limit]
    items = iter(items)
    first = next(items, None)
    if first is None:
        raise ClinfuseInputError("the dataset has no cases", data)
    out_dir = _prepare_out(Path(out), None if data is None else Path(data), overwrite)
    ndim = first.prepared.ndim if first.prepared is not None else None
    if ndim is None:  # the first case failed to load: take the dimension from the next good one
        buffered = [first]
        for it in items:
            buffered.append(it)
            if it.prepared is not None:
                ndim = it.prepared.ndim
                break
        items = iter(buffered + list(items))
        ndim = ndim or 3
    else:
        items = iter([first, *items])
    columns = ["case_id", "patient_id", *metric_columns(ndim), *EXTRA_COLUMNS]
    columns += [SCORED_AGAINST_COLUMN, "error"]
    writer = RowWriter(out_dir / PER_CASE, columns)
    result = DatasetResult(out_dir, name)
    for item in items:
        row: dict[str, Any] = {"case_id": item.case_id, "patient_id": item.patient_id}
        row.update(dict.fromkeys(columns[2:-2], math.nan))
        row[SCORED_AGAINST_COLUMN] = REFERENCE_ROLE if item.ct_reference is not None else "input"
        try:
            if item.prepared is None:
                raise ClinfuseInputError(item.error or "case could not be prepared", item.case_id)
            if item.prepared.ndim != ndim:
                raise ClinfuseInputError(f"{item.prepared.ndim}D case in a {ndim}D dataset")
            t0 = time.perf_counter()
            raw = fn(item.prepared)
            fused, lesion_pred = unpack_output(raw)
            seconds = time.perf_counter() - t0
            rule = mask_rule_of(raw)
            if lesion_head is not None:
                lesion_pred = lesion_head(np.asarray(fused), item.prepared)
                rule = mask_rule_of(lesion_head)
            scores = evaluate_case(
                fused,
                item.prepared,
                lesion_pred=lesion_pred,
                sources_uint8=item.sources_uint8,
                ct_reference=item.ct_reference,
                mask_rule=rule,
            )
            u8 = fused_to_uint8(fused) if ndim == 2 else None
            _save_fused(out_dir / "fused", item, fused, u8)
            row.update(scores)
            row["fuse_seconds"] = seconds
            row["error"] = None
        except Exception as err:  # noqa: BLE001 - one bad case must not end a 100-case run
            row["error"] = f"{type(err).__name__}: {err}".replace("\n", " ")
            writer.write(row)
            if isinstance(err, PROGRAMMING_ERRORS):
                raise  # a bug in the method or the metrics, not a bad case: stop (rows are kept)
            warnings.warn(f"case {item.case_id}: {row['error']}", RuntimeWarning, stacklevel=2)
            result.rows.append(row)
            if on_case is not None:
                on_case(item.case_id, row)
            continue
        writer.write(row)
        result.rows.append(row)
        if on_case is not None:
            on_case(item.case_id, row)
    result.summary = summarise_rows(result.rows)
    meta = {
        "method": name,
        "options": {k: str(v) for k, v in (options or {}).items()},
        "lesion_head": lesion_head_name if lesion_head is not None else None,
        "data": None if data is None else str(Path(data).resolve()),
        "ndim": ndim,
        "n_cases": len(result.rows),
        "n_failed": result.n_failed,
        "failed": {r["case_id"]: r["error"] for r in result.rows if r.get("error")},
        # Which CT the bone (CT-derived) metrics were scored against, counted over the cases.
        SCORED_AGAINST_COLUMN: {
            k: sum(1 for r in result.rows if r[SCORED_AGAINST_COLUMN] == k)
            for k in ("input", REFERENCE_ROLE)
        },
        "bootstrap": {"n_resamples": N_BOOT, "seed": BOOT_SEED, "level": CI_LEVEL},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "metrics": {k: v.to_dict() for k, v in result.summary.items()},
    }
    _atomic_text(out_dir / SUMMARY_JSON, json.dumps(json_safe(meta), indent=2) + "\n")
    title = f"{name} on {meta['data'] or 'prepared cases'}"
    _atomic_text(
        out_dir / SUMMARY_MD,
        summary_markdown(
            title,
            result.summary,
            len(result.rows),
            result.n_failed,
            scored_against_note(result.rows),
        ),
    )
    return result
