"""`clinfuse preprocess IN OUT`: any accepted dataset layout -> one prepared folder per case."""

from __future__ import annotations

import csv
import io
import shutil
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from clinfuse.errors import ClinfuseInputError


def _parse_spacing(text: str | None) -> float | tuple[float, ...] | None:
    if text is None or text.strip() == "":
        return None
    try:
        vals = tuple(float(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise ClinfuseInputError(f"--spacing {text!r}: give mm as '2' or '1,1,2'") from None
    if not vals or any(v <= 0 for v in vals):
        raise ClinfuseInputError(f"--spacing {text!r}: values must be positive mm")
    return vals[0] if len(vals) == 1 else vals


def _parse_offset(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise ClinfuseInputError(f"--ct-offset {text!r}: give 'auto' or a number") from None


def _prepare_all(
    refs: list,
    out_dir: Path,
    target: float | tuple[float, ...] | None,
    offset: float | str,
    register_ct: bool,
    auto_masks: bool,
    console: Console,
    created: list[Path],
) -> list[dict[str, str]]:
    """Load, preprocess and save every case (progress bar, warnings printed); manifest rows."""
    from clinfuse.preprocess.pipeline import (
        prepared_manifest_row,
        preprocess_case,
        save_prepared,
    )

    rows = []
    columns = (
        TextColumn("[bold]preprocess"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("", total=len(refs))
        for ref in refs:
            progress.update(task, description=ref.case_id)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                case = ref.load(ct_offset=offset)
                prepared = preprocess_case(
                    case, spacing=target, register=register_ct, auto_masks=auto_masks
                )
            for w in caught:
                progress.console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
            folder = out_dir / ref.case_id
            if not folder.exists():
                created.append(folder)
            save_prepared(prepared, folder)
            rows.append(prepared_manifest_row(prepared, ref.case_id))
            progress.advance(task)
    return rows


def preprocess(
    inp: Path = typer.Argument(
        ...,
        metavar="IN",
        help="Dataset: case folder, folder of cases, manifest, APIS or Harvard.",
    ),
    out: Path = typer.Argument(..., metavar="OUT", help="New output folder (one per case)."),
    spacing: str | None = typer.Option(
        None, help="Resample to this voxel size in mm: '2' or '1,1,2' (default: MRI grid)."
    ),
    register_ct: bool = typer.Option(
        False, "--register", help="Rigid CT->MRI registration (Mattes MI) before resampling."
    ),
    auto_masks: bool = typer.Option(
        True, "--auto-masks/--no-auto-masks", help="Make missing brain/bone masks."
    ),
    ct_offset: str = typer.Option(
        "auto",
        help="Subtract this from CT values to get HU ('auto': 1024 if stored as HU+1024).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in an existing OUT."),
) -> None:
    """Canonical orientation, one grid, CT windows, MRI normalisation, masks; JSON sidecars."""
    from clinfuse.io.atomic import check_output_dir, write_text_atomic
    from clinfuse.io.dataset import load_dataset
    from clinfuse.preprocess.pipeline import PREPARED_COLUMNS, PREPARED_MANIFEST

    target = _parse_spacing(spacing)
    offset = _parse_offset(ct_offset)
    refs = load_dataset(inp)
    inputs = [inp, *(p for r in refs for p in r.paths.values())]
    out_existed = Path(out).expanduser().exists()
    out_dir = check_output_dir(out, overwrite, inputs=inputs)
    console = Console(stderr=True)
    created: list[Path] = []  # case folders this run made: removed again if any case fails
    try:
        rows = _prepare_all(
            refs, out_dir, target, offset, register_ct, auto_masks, console, created
        )
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=PREPARED_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(out_dir / PREPARED_MANIFEST, buf.getvalue())
    except BaseException:
        # nothing half-written remains: no folder this run created, no case without a manifest
        for folder in created:
            shutil.rmtree(folder, ignore_errors=True)
        if not out_existed and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    console.print(f"wrote {len(rows)} prepared case(s) to {out_dir}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `preprocess` command to the app."""
    app.command("preprocess")(preprocess)
