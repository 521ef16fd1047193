"""`clinfuse demo`: the whole pipeline on held-out phantoms, ending in a self-contained report.

Thin over `clinfuse.demo.run_demo`; prints where the report is and the summary table.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import typer
from rich.console import Console

from clinfuse.diffusion import DEFAULT_STEPS


def demo(
    out: Path = typer.Option(
        Path("clinfuse-demo"), "--out", help="Output folder (report.html, figures, NIfTIs)."
    ),
    n_cases: int = typer.Option(3, "--n-cases", help="Number of held-out phantoms."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="Model checkpoint (default: the shipped one)."
    ),
    seed: int = typer.Option(
        9000, "--seed", help="Case i is phantom seed SEED + i (disjoint from training)."
    ),
    samples: int = typer.Option(
        1,
        "--samples",
        help="Samples of our model per case; 2+ adds the uncertainty map (sd), ~1.6x time.",
    ),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", help="DDIM steps of our model."),
    spacing: float | None = typer.Option(
        None,
        "--spacing",
        min=0.01,
        help="Working resolution in mm for every method (default: the phantoms' 3 mm).",
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="CPU threads (default: all cores)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in --out."),
) -> None:
    """Fuse a few held-out stroke phantoms with our model and every baseline; write a report.

    Writes OUT/report.html (self-contained), OUT/summary.md, OUT/per_case.csv,
    OUT/figures/*.png, OUT/methods/<method>/fused/*.nii.gz and OUT/cases/<case>/*.nii.gz.
    """
    from clinfuse.demo import run_demo

    console = Console()
    from clinfuse.nn.precision import set_threads
    from clinfuse.pipeline import resolve_device

    dev = resolve_device(device)
    n_threads = set_threads(threads)
    # The command that reproduces this run, rebuilt from the parsed options (not argv, so
    # it is the same whether run from a shell or from Python).
    parts = ["clinfuse", "demo", "--out", str(out), "--n-cases", str(n_cases)]
    parts += ["--seed", str(seed), "--device", device]
    parts += ["--samples", str(samples), "--steps", str(steps)]
    if checkpoint is not None:
        parts += ["--checkpoint", str(checkpoint)]
    if spacing is not None:
        parts += ["--spacing", f"{spacing:g}"]
    parts += ["--threads", str(n_threads)]
    command = shlex.join(parts)
    with console.status("clinfuse demo") as status:

        def progress(msg: str) -> None:
            status.update(f"clinfuse demo: {msg}")
            console.log(msg)

        result = run_demo(
            out,
            n_cases=n_cases,
            seed=seed,
            checkpoint=checkpoint,
            samples=samples,
            steps=steps,
            work_spacing=spacing,
            device=dev,
            overwrite=overwrite,
            command=command,
            progress=progress,
        )
    if not result.model.available:
        console.print(f"[yellow]note:[/] {result.model.reason}", highlight=False)
    console.print(result.summary_md.read_text(encoding="utf-8"), highlight=False)
    console.print(
        f"[bold green]done[/] in {result.seconds:.0f} s: open {result.report}", highlight=False
    )


def register(app: typer.Typer) -> None:
    """Add the `demo` command to the app."""
    app.command("demo")(demo)
