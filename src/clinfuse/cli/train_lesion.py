"""`clinfuse train-lesion`: train the lesion head on a frozen fusion model (training/lesion.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from clinfuse.errors import ClinfuseInputError


def register(app: typer.Typer) -> None:
    """Add the `train-lesion` command to the app."""

    @app.command("train-lesion")
    def train_lesion(
        checkpoint: Path = typer.Option(
            ..., "--checkpoint", help="A `clinfuse train` checkpoint (its denoiser stays frozen)."
        ),
        data: Path = typer.Option(
            ...,
            "--data",
            help="Phantoms with lesion masks (split by the checkpoint's data config).",
        ),
        out: Path = typer.Option(..., "--out", help="Output folder (lesion_head.ckpt, csv)."),
        steps: int = typer.Option(4000, "--steps", help="Optimizer steps."),
        batch_size: int = typer.Option(4, "--batch-size", help="Patches per step."),
        lr: float = typer.Option(2e-3, "--lr", help="AdamW learning rate (cosine decay)."),
        p_x0: float = typer.Option(
            0.5, "--p-x0", help="Share of patches whose input is the denoiser's x̂0 (t <= T/2)."
        ),
        x0_per_case: int = typer.Option(
            8, "--x0-per-case", help="x̂0 volumes of the frozen denoiser precomputed per case."
        ),
        lesion_fraction: float = typer.Option(
            0.3, "--lesion-fraction", help="Share of patches centred on a lesion voxel."
        ),
        val_every: int = typer.Option(100, "--val-every", help="Validate every N steps."),
        seed: int = typer.Option(0, "--seed", help="Seed of patches, noise and augmentation."),
        export: Path = typer.Option(
            None, "--export", help="Also write a slim float16 copy here (for shipping)."
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        threads: int = typer.Option(None, "--threads", help="CPU threads for torch."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace earlier outputs."),
    ) -> None:
        """Train the lesion head on fused images and x̂0 of a frozen model (docs/TRAINING.md)."""
        import torch

        from clinfuse.pipeline import resolve_device
        from clinfuse.training.checkpoint import export_checkpoint
        from clinfuse.training.lesion import LesionTrainConfig, train_lesion_head

        if threads is not None:
            if threads < 1:
                raise ClinfuseInputError("--threads must be >= 1")
            torch.set_num_threads(threads)
        if export is not None and export.exists() and not overwrite:
            raise ClinfuseInputError("export target exists; pass --overwrite to replace it", export)
        cfg = LesionTrainConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            p_x0=p_x0,
            x0_per_case=x0_per_case,
            lesion_fraction=lesion_fraction,
            val_every=val_every,
            seed=seed,
        )
        result = train_lesion_head(
            checkpoint,
            data,
            out,
            cfg,
            device=resolve_device(device),
            overwrite=overwrite,
            log=typer.echo,
        )
        typer.echo(
            f"done: {result.checkpoint} (best step {result.best_step}, val Dice "
            + ", ".join(f"{k} {v:.3f}" for k, v in result.val.items())
            + ")"
        )
        if export is not None:
            export_checkpoint(result.checkpoint, export, half=True)
            typer.echo(f"exported {export}")
