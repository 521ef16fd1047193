"""`clinfuse benchmark`: every method on one dataset, one markdown table + CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from clinfuse.errors import ClinfuseInputError


def split_list(values: list[str]) -> list[str]:
    """Repeated and/or comma-separated option values as one list (`--methods`, `--cases`)."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def validate_methods(names: list[str], options: dict[str, Any], data: Path) -> None:
    """Everything a benchmark can get wrong up front, before its results folder exists: each
    method with its options (ours loads its checkpoint: `pipeline.clinfuse_method_factory`)
    and the dataset's layout (cases are read later)."""
    from clinfuse.baselines import BASELINES
    from clinfuse.evaluation.methods import resolve_method
    from clinfuse.io.dataset import load_dataset

    for name in names:  # the same options run_benchmark gives each method
        resolve_method(name, **({} if name in BASELINES else dict(options)))
    load_dataset(data)


def benchmark(
    data: Path = typer.Option(..., "--data", help="Dataset folder or manifest."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    methods: list[str] = typer.Option(
        [], "--methods", help="Comma-separated (or repeated); default: every baseline."
    ),
    subset: list[str] = typer.Option(
        [], "--subset", help="NAME=GLOB[,GLOB]: an extra table on matching case ids."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N cases."),
    cases: list[str] = typer.Option(
        [],
        "--cases",
        help="Case-id glob(s), repeatable or comma-separated (fnmatch, e.g. '16_00[7-9]'): "
        "only matching cases (then --limit).",
    ),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="For model methods."),
    preset: str | None = typer.Option(None, "--preset", help="For model methods."),
    option: list[str] = typer.Option([], "--option", help="key=value for model methods."),
    lesion_head: str | None = typer.Option(
        None,
        "--lesion-head",
        help="Score every fused image's lesion with this checkpoint's lesion head "
        "('default': the shipped one), so all methods get lesion Dice/NSD/HD95.",
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="CPU threads (default: all cores)."
    ),
) -> None:
    """Run every method on one dataset; write OUT/benchmark.md (mean ± sd [CI]) and .csv."""
    from clinfuse.cli._method_options import lesion_scorer, method_options
    from clinfuse.evaluation.benchmark import DEFAULT_METHODS, run_benchmark

    console = Console()
    names = split_list(methods) or list(DEFAULT_METHODS)
    subsets: dict[str, list[str]] = {}
    for s in subset:
        name, sep, pats = s.partition("=")
        if not sep or not name.strip() or not split_list([pats]):
            raise ClinfuseInputError(f"--subset expects NAME=GLOB[,GLOB], got {s!r}")
        subsets[name.strip()] = split_list([pats])
    from clinfuse.nn.precision import set_threads

    set_threads(threads)
    opts = method_options(checkpoint, preset, option)
    head_fn, head_name = lesion_scorer(lesion_head)
    validate_methods(names, opts, data)

    def on_case(method: str, case_id: str, row: dict[str, Any]) -> None:
        status = f"[red]{row['error']}[/]" if row.get("error") else "ok"
        console.print(f"{method:>10} {case_id}: {status}", highlight=False)

    result = run_benchmark(
        data,
        out,
        methods=names,
        options=opts,
        overwrite=overwrite,
        limit=limit,
        cases=split_list(cases) or None,
        subsets=subsets,
        on_case=on_case,
        lesion_head=head_fn,
        lesion_head_name=head_name,
    )
    console.print(result.markdown, markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {result.out / 'benchmark.md'} and benchmark.csv", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `benchmark` command to the app."""
    app.command("benchmark")(benchmark)
