"""`clinfuse synth`: write a dataset of seeded synthetic stroke phantoms (thin over
`clinfuse.phantom.write_phantom_dataset`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from clinfuse.errors import ClinfuseInputError


def synth(
    out: Path = typer.Option(..., "--out", help="Output folder (one sub-folder per case)."),
    n: int = typer.Option(4, "--n", help="Number of cases."),
    shape: tuple[int, int, int] = typer.Option(
        (48, 64, 64),
        "--shape",
        help="D H W voxels = z y x (stored arrays are x, y, z). D = 1 gives 2D slices.",
    ),
    spacing: tuple[float, float, float] = typer.Option(
        (2.0, 2.0, 2.0), "--spacing", help="Voxel size in mm, z y x (anisotropic allowed)."
    ),
    seed: int = typer.Option(0, "--seed", help="Case i uses numpy default_rng(seed + i)."),
    contrast: str = typer.Option("mixed", "--contrast", help="T1 | T2 | ADC | mixed."),
    lesion: str = typer.Option(
        "ischaemic", "--lesion", help="ischaemic | haemorrhagic | none | mixed."
    ),
    n_lesions: int = typer.Option(1, "--n-lesions", help="Lesions per case (0-4)."),
    fracture: bool = typer.Option(False, "--fracture", help="Add a linear skull fracture."),
    misregister: tuple[float, float] = typer.Option(
        (0.0, 0.0),
        "--misregister",
        help="MM DEG: move the CT rigidly by MM mm and DEG degrees (random directions; "
        "the true transform goes into truth.json). The unmoved CT is also written "
        "(ct_reference.nii.gz, manifest column ct_reference): evaluation scores bone "
        "against it.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in --out."),
) -> None:
    """Write N synthetic head MRI/CT stroke phantoms with exact brain/bone/lesion masks."""
    from clinfuse.phantom import PhantomConfig, write_phantom_dataset
    from clinfuse.phantom.dataset import check_out_dir

    check_out_dir(out, overwrite)  # before the progress bar starts

    d, h, w = shape
    sz, sy, sx = spacing
    if d == 1:
        arr_shape: tuple[int, ...] = (w, h)
        arr_spacing: tuple[float, ...] = (sx, sy)
    else:
        arr_shape, arr_spacing = (w, h, d), (sx, sy, sz)
    if contrast not in ("T1", "T2", "ADC", "mixed"):
        raise ClinfuseInputError(f"--contrast must be T1, T2, ADC or mixed, got {contrast!r}")
    base = PhantomConfig(
        shape=arr_shape,
        spacing=arr_spacing,
        mri_contrast="T1" if contrast == "mixed" else contrast,  # type: ignore[arg-type]
        lesion="ischaemic" if lesion == "mixed" else lesion,  # type: ignore[arg-type]
        n_lesions=n_lesions,
        fracture=fracture,
        misregistration=misregister,
    )
    console = Console(stderr=True)
    columns = (
        TextColumn("[bold]synth"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("", total=n)
        result = write_phantom_dataset(
            out,
            n,
            base,
            seed,
            overwrite=overwrite,
            contrast=contrast,
            lesion=lesion,
            progress=lambda i, cid: progress.update(task, advance=1, description=cid),
        )
    console.print(f"wrote {n} phantoms and manifest.csv to {result}")


def register(app: typer.Typer) -> None:
    """Add the `synth` command to the app."""
    app.command("synth")(synth)
