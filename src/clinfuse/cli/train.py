"""`clinfuse train`: parse options, resolve the config, call `clinfuse.training.train`."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from clinfuse.errors import ClinfuseInputError


def train(
    config: str = typer.Option(
        None,
        "--config",
        "-c",
        help="Preset name (phantom3d-small, harvard2d, ci-tiny) or a YAML file. "
        "With --resume, defaults to the checkpoint's own config.",
    ),
    data: Path = typer.Option(None, "--data", help="Dataset (folder, manifest, Harvard PNGs)."),
    out: Path = typer.Option(..., "--out", help="Run folder (config, logs, checkpoints)."),
    resume: Path = typer.Option(None, "--resume", help="Continue from RUN/last.ckpt."),
    max_steps: int = typer.Option(None, "--max-steps", help="Override max_steps."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Config override key=value (repeatable), e.g. optim.lr=1e-4."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    threads: int = typer.Option(
        None,
        "--threads",
        help="CPU threads for torch (default: torch's choice). On a shared CPU, 1 thread "
        "per process can be >10x faster than oversubscribed OpenMP threads.",
    ),
) -> None:
    """Train the fusion model: L_diffusion + lambda_roi * L_ROI (docs/TRAINING.md)."""
    from clinfuse.training.checkpoint import read_checkpoint
    from clinfuse.training.config import apply_overrides, config_from_dict, resolve_config
    from clinfuse.training.loop import train as run_training

    if threads is not None:
        if threads < 1:
            raise ClinfuseInputError("--threads must be >= 1")
        import torch

        torch.set_num_threads(threads)
    sets = list(overrides)
    if max_steps is not None:
        sets.append(f"max_steps={max_steps}")
    if config is not None:
        cfg = resolve_config(config, sets)
    elif resume is not None:
        # The checkpoint's own config, with the allowed changes applied on top.
        state = read_checkpoint(resume)
        base = config_from_dict(state["config"], str(resume))
        cfg = apply_overrides(base, sets, str(resume))
    else:
        raise ClinfuseInputError("pass --config (a preset name or YAML file) or --resume")
    if data is None and cfg.data.path is None:
        raise ClinfuseInputError("pass --data DIR (or set data.path in the config)")
    result = run_training(
        cfg,
        data if data is not None else cfg.data.path,
        out,
        resume=resume,
        device=device,
        progress=progress,
        overwrite=overwrite,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        typer.echo(
            f"done: step {result.step}; last {result.last_checkpoint}; "
            f"best {result.best_checkpoint} (val ROI-SSIM {result.best_score})"
        )


def register(app: typer.Typer) -> None:
    """Add the `train` command to the app."""
    app.command("train")(train)
