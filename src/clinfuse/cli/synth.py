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
    contrast: str = typer.Option(
        "mixed", "--contrast", help="T1 | T2 | ADC | FLAIR | DWI | mixed (T1/T2/ADC) | all."
    ),
    lesion: str = typer.Option(
        "ischaemic", "--lesion", help="ischaemic | haemorrhagic | none | mixed."
    ),
    n_lesions: int = typer.Option(1, "--n-lesions", help="Lesions per case (0-4)."),
    lesion_ml: tuple[float, float] | None = typer.Option(
        None,
        "--lesion-ml",
        help="LOW HIGH: redraw lesions until their total volume is LOW-HIGH mL (issue 10 "
        "uses 0.5 80); default: keep every lesion that shows on the grid.",
    ),
    territories: str | None = typer.Option(
        None,
        "--territories",
        help="Comma list of MCA, ACA, PCA, lacune, branch: where ischaemic lesions are drawn "
        "(default: MCA, ACA, PCA, lacune; branch = a 1-10 mL cortical branch infarct, the "
        "sizes the others never reach, docs/PHANTOMS.md).",
    ),
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
    from clinfuse.phantom import MRI_CONTRASTS, PhantomConfig, write_phantom_dataset
    from clinfuse.phantom.config import parse_territories
    from clinfuse.phantom.dataset import check_out_dir

    check_out_dir(out, overwrite)  # before the progress bar starts

    d, h, w = shape
    sz, sy, sx = spacing
    if d == 1:
        arr_shape: tuple[int, ...] = (w, h)
        arr_spacing: tuple[float, ...] = (sx, sy)
    else:
        arr_shape, arr_spacing = (w, h, d), (sx, sy, sz)
    if contrast not in (*MRI_CONTRASTS, "mixed", "all"):
        raise ClinfuseInputError(
            f"--contrast must be one of {', '.join(MRI_CONTRASTS)}, mixed or all, got {contrast!r}"
        )
    base = PhantomConfig(
        shape=arr_shape,
        spacing=arr_spacing,
        mri_contrast="T1" if contrast in ("mixed", "all") else contrast,  # type: ignore[arg-type]
        lesion="ischaemic" if lesion == "mixed" else lesion,  # type: ignore[arg-type]
        n_lesions=n_lesions,
        lesion_ml=lesion_ml,
        ischaemic_territories=parse_territories(territories),
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


def synth_real(
    mri: Path = typer.Option(..., "--mri", help="A real 3D head MRI (NIfTI)."),
    out: Path = typer.Option(..., "--out", help="Output folder (one sub-folder per pair)."),
    contrast: str = typer.Option(
        "T1", "--contrast", help="The MRI's sequence: T1|T2|FLAIR|DWI|ADC."
    ),
    n: int = typer.Option(4, "--n", help="Number of pairs (augmented, with new lesions)."),
    brain: Path = typer.Option(None, "--brain", help="Intracranial mask (else automatic)."),
    bone: Path = typer.Option(None, "--bone", help="Skull mask (else automatic)."),
    lesion: Path = typer.Option(None, "--lesion", help="A lesion already in the MRI (kept)."),
    output_contrasts: str = typer.Option(
        "keep",
        "--output-contrasts",
        help="Comma list cycled over the pairs: keep (the input's) or T1|T2|FLAIR|DWI|ADC "
        "(re-painted from the MRI's tissue classes).",
    ),
    lesion_kinds: str = typer.Option(
        "ischaemic,ischaemic,haemorrhagic,ischaemic,none",
        "--lesion-kinds",
        help="Comma list of inserted lesion kinds cycled over the pairs.",
    ),
    skull: str = typer.Option(
        "auto", "--skull", help="auto (from the MRI) | synthetic (brain-extracted input)."
    ),
    spacing: float = typer.Option(2.0, "--spacing", help="Output voxel size in mm (isotropic)."),
    seed: int = typer.Option(0, "--seed", help="Pair k uses numpy default_rng(seed + k)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in --out."),
) -> None:
    """Real-anatomy training pairs: a real head MRI -> co-registered pseudo-CT (HU), exact
    masks and inserted lesions (docs/PHANTOMS.md, `clinfuse.phantom.realhead`)."""
    from clinfuse.phantom.dataset import check_out_dir
    from clinfuse.phantom.realhead import CONTRASTS, LESION_KINDS, RealSource, write_real_dataset

    check_out_dir(out, overwrite)
    if n < 1:
        raise ClinfuseInputError(f"--n must be >= 1, got {n}")
    outs = [c.strip() for c in output_contrasts.split(",") if c.strip()]
    bad = [c for c in outs if c != "keep" and c not in CONTRASTS]
    if not outs or bad:
        raise ClinfuseInputError(
            f"--output-contrasts: unknown {bad or outs}; use keep or {CONTRASTS}"
        )
    kinds = [k.strip() for k in lesion_kinds.split(",") if k.strip()]
    if not kinds or any(k not in LESION_KINDS for k in kinds):
        raise ClinfuseInputError(f"--lesion-kinds must list {LESION_KINDS}, got {lesion_kinds!r}")
    if skull not in ("auto", "synthetic"):
        raise ClinfuseInputError(f"--skull must be auto or synthetic, got {skull!r}")
    src = RealSource(
        name=mri.name.split(".")[0],
        mri=str(mri.resolve()),
        contrast=contrast,
        skull=skull,
        output_contrasts=tuple(None if c == "keep" else c for c in outs),
        brain=None if brain is None else str(brain.resolve()),
        bone=None if bone is None else str(bone.resolve()),
        lesion=None if lesion is None else str(lesion.resolve()),
    )
    console = Console(stderr=True)
    result = write_real_dataset(
        out,
        Path("/"),
        n,
        seed,
        sources=[src],
        spacing=spacing,
        lesion_cycle=kinds,
        overwrite=overwrite,
        progress=lambda cid: console.print(f"synth-real: wrote {cid}", highlight=False),
    )
    console.print(f"wrote {n} real-anatomy pairs and manifest.csv to {result}")


def register(app: typer.Typer) -> None:
    """Add the `synth` and `synth-real` commands to the app."""
    app.command("synth")(synth)
    app.command("synth-real")(synth_real)
