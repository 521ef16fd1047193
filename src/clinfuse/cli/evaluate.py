"""`clinfuse evaluate`: score one method over a dataset, or compare evaluate output folders."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from clinfuse.errors import ClinfuseInputError


def evaluate(
    outs: list[Path] = typer.Argument(
        None, help="With --compare: evaluate output folders (the first is the reference)."
    ),
    method: str | None = typer.Option(
        None, "--method", "-m", help="A baseline name or a registered method (clinfuse)."
    ),
    data: Path | None = typer.Option(None, "--data", help="Dataset folder or manifest."),
    out: Path | None = typer.Option(None, "--out", help="Output folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N cases."),
    cases: list[str] = typer.Option(
        [],
        "--cases",
        help="Case-id glob(s), repeatable or comma-separated (fnmatch, e.g. '16_00[7-9]'; "
        "Harvard ids are <patient>_<slice:03d>): only matching cases (then --limit).",
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Model checkpoint (methods that take one)."
    ),
    preset: str | None = typer.Option(None, "--preset", help="Guidance preset (clinfuse)."),
    option: list[str] = typer.Option(
        [], "--option", help="key=value passed to the method, repeatable."
    ),
    compare_: bool = typer.Option(
        False, "--compare", help="Compare output folders given as arguments."
    ),
    list_methods: bool = typer.Option(False, "--list-methods", help="List method names."),
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
    """Fuse every case with a method and score it (per_case.csv, summary.json/.md), or
    compare earlier runs with paired Wilcoxon tests (--compare OUT1 OUT2 ...)."""
    from clinfuse.cli._method_options import lesion_scorer, method_options
    from clinfuse.cli.benchmark import split_list
    from clinfuse.evaluation import available_methods, compare, evaluate_dataset

    console = Console()
    if list_methods:
        console.print("\n".join(available_methods()))
        return
    if compare_:
        if not outs or len(outs) < 2:
            raise ClinfuseInputError("--compare needs at least two output folders")
        table = compare(outs)
        md = table.to_markdown()
        if out is not None:
            from clinfuse.io.atomic import write_text_atomic

            target = out / "compare.md" if out.is_dir() else out
            if target.exists() and not overwrite:
                raise ClinfuseInputError("exists; pass --overwrite to replace it", target)
            write_text_atomic(target, md)
        console.print(md, markup=False, highlight=False, soft_wrap=True)
        return
    if outs:
        raise ClinfuseInputError(f"unexpected arguments {[str(o) for o in outs]}")
    missing = [n for n, v in (("--method", method), ("--data", data), ("--out", out)) if not v]
    if missing:
        raise ClinfuseInputError(f"missing {', '.join(missing)} (or use --compare)")
    from clinfuse.nn.precision import set_threads

    set_threads(threads)
    opts = method_options(checkpoint, preset, option)
    state = {"n": 0, "failed": 0}

    def on_case(case_id: str, row: dict[str, Any]) -> None:
        state["n"] += 1
        if row.get("error"):
            state["failed"] += 1
            console.print(f"[red]{case_id}: {row['error']}[/]", highlight=False)
        else:
            key = "brain_ssim"
            v = row.get(key, math.nan)
            console.print(f"{state['n']:4d} {case_id}: {key} {v:.4f}", highlight=False)

    head_fn, head_name = lesion_scorer(lesion_head)
    result = evaluate_dataset(
        method,
        data,
        out,
        options=opts,
        overwrite=overwrite,
        limit=limit,
        cases=split_list(cases) or None,
        on_case=on_case,
        lesion_head=head_fn,
        lesion_head_name=head_name,
    )
    console.print((result.out / "summary.md").read_text(encoding="utf-8"), markup=False)
    console.print(f"wrote {result.out}", highlight=False)
    if result.rows and result.n_failed == len(result.rows):
        raise ClinfuseInputError("every case failed; see the error column", result.out)


def register(app: typer.Typer) -> None:
    """Add the `evaluate` command to the app."""
    app.command("evaluate")(evaluate)
