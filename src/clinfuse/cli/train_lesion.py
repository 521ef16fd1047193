"""`clinfuse train-lesion`: train and calibrate the lesion head (training/lesion.py) and place
it into a fusion checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from clinfuse.errors import ClinfuseInputError


def train_lesion(
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", help="The fusion checkpoint that receives the new head."
    ),
    data: list[Path] = typer.Option(
        None,
        "--data",
        help="Training cases with lesion masks; repeat for several data sets (see --data-share).",
    ),
    data_share: list[float] = typer.Option(
        None,
        "--data-share",
        help="With several --data: the share of sampled cases each gives, in the same order "
        "(e.g. real-anatomy pairs 0.5, phantoms 0.5). Default: every case equally likely.",
    ),
    val_data: Path = typer.Option(
        None,
        "--val-data",
        help="Held-out cases with lesion masks: best step, temperature, minimum lesion size.",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (lesion_head.ckpt, csv)."),
    steps: int = typer.Option(1500, "--steps", help="Optimizer steps."),
    cases_per_step: int = typer.Option(2, "--cases-per-step", help="Cases per step."),
    samples_per_case: int = typer.Option(
        2, "--samples-per-case", help="RandCropByPosNegLabeld patches per case."
    ),
    patch: int = typer.Option(48, "--patch", help="Cubic patch / sliding-window size (voxels)."),
    lr: float = typer.Option(2e-3, "--lr", help="AdamW peak learning rate (one-cycle)."),
    pos_fraction: float = typer.Option(
        0.5, "--pos-fraction", help="Share of patches centred on a lesion voxel."
    ),
    inputs: str = typer.Option(
        "fused+sources+mirror",
        "--inputs",
        help="What the head reads: fused+sources, fused+sources+mirror (plus the left-right "
        "mirror images of the fused image, MRI and CT about a left-right shift plane), "
        "fused+sources+rigid-mirror (the same, about each MRI's rigid mid-sagittal plane: yaw, "
        "roll and offset; --init-head may be a fused+sources+mirror head) or "
        "fused+sources+mirror+contrast (plus the MRI in the slot of its sequence, from each "
        "case's mri_contrast; --init-head may then be a head without slots: it starts as that "
        "head).",
    ),
    contrast_dropout: float = typer.Option(
        0.25,
        "--contrast-dropout",
        help="With +contrast: share of training samples whose MRI sequence is hidden, so the "
        "head also works when the sequence is not given.",
    ),
    tilt_deg: float = typer.Option(
        0.0,
        "--tilt-deg",
        help="Turn each training sample's whole volume by a random yaw and roll of up to this "
        "many degrees before the mirror images are taken (tilted heads; 0 = off, the default).",
    ),
    val_every: int = typer.Option(100, "--val-every", help="Validate every N steps."),
    hard_negatives: float = typer.Option(
        0.0,
        "--hard-negatives",
        help="Share of the samples cropped around the head's own far false positives on the "
        "training volumes (refreshed at every validation); 0 = off.",
    ),
    ghost_patches: float = typer.Option(
        0.0,
        "--ghost-patches",
        help="Share of the lesion cases' samples cropped around the lesion's mirror twin "
        "(about the MRI's mid-sagittal plane), labelled background; 0 = off.",
    ),
    flip_tta: bool | None = typer.Option(
        None,
        "--flip-tta/--no-flip-tta",
        help="Left-right flip test-time augmentation of the head (3D): its logits become the "
        "mean over the volume and its mirror image; validation and calibration use it. "
        "Training default: off; with --head-from it needs --recalibrate (default: keep).",
    ),
    dice_per_sample: bool = typer.Option(
        False,
        "--dice-per-sample/--dice-batch",
        help="Dice term of the DiceCE loss per patch (a small lesion's patch weighs as much as "
        "a large one's) or over the whole batch (default, every earlier run).",
    ),
    rule_dice_tolerance: float = typer.Option(
        0.0,
        "--rule-dice-tolerance",
        help="Calibration of the lesion-mask rule: 0 = by validation Dice alone (default, every "
        "earlier head); > 0 = the lowest mean HD95 among the rules within this much of the best "
        "Dice that find as many lesions.",
    ),
    rule_found_tolerance: float = typer.Option(
        0.0,
        "--rule-found-tolerance",
        help="With --rule-dice-tolerance: the share of the best-Dice rule's overlapped lesions "
        "a near rule may lose (0 = none, default, every earlier head).",
    ),
    rule_max_lesion_free_share: float = typer.Option(
        1.0,
        "--rule-max-lesion-free-share",
        help="Calibration of the lesion-mask rule: at each step choose only among the rules "
        "that leave a prediction on at most this share of the validation split's lesion-free "
        "cases (or, if none does, those that mark fewest). 1 = no cap (default, every earlier "
        "head).",
    ),
    lesion_gate: bool = typer.Option(
        False,
        "--lesion-gate/--no-lesion-gate",
        help="Calibration also fits a case-level gate: no lesion is reported when the most "
        "probable component's mean probability is below it, chosen by the mean Dice over every "
        "validation case (lesion-free ones: 1 if nothing is marked, else 0). Default: no gate.",
    ),
    mirror_ghosts: bool = typer.Option(
        False,
        "--mirror-ghosts/--no-mirror-ghosts",
        help="Calibration also considers the mirror-ghost filter (on or off by the rule "
        "criterion): a component lying on the mirror image, about the MRI's mid-sagittal plane, "
        "of a more confident one is dropped. Default: not considered (off).",
    ),
    peak_rule: bool = typer.Option(
        False,
        "--peak-rule/--no-peak-rule",
        help="Calibration also chooses a peak (hysteresis) filter by the rule criterion: every "
        "component whose highest probability is below it is dropped, the most probable one "
        "included. Default: not considered (off).",
    ),
    near_temperature: bool = typer.Option(
        False,
        "--near-temperature/--no-near-temperature",
        help="Calibration also fits a second temperature for the reported probability within "
        "10 mm of the head's own mask (by NLL on those validation voxels); the mask is "
        "unchanged. Default: one temperature everywhere.",
    ),
    joint_rule: bool = typer.Option(
        False,
        "--joint-rule/--no-joint-rule",
        help="Calibration chooses the minimum lesion size and the secondary-component filter "
        "together (every pair, by the rule criterion) instead of one after the other (default, "
        "every earlier head).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of patches, noise and augmentation."),
    amp: str = typer.Option(
        "auto",
        "--amp",
        help="Training precision: auto (bf16 autocast where the CPU/GPU has native bf16), "
        "bf16 or off (float32).",
    ),
    export: Path = typer.Option(
        None, "--export", help="Also write a slim float16 copy here (for shipping)."
    ),
    export_head: Path = typer.Option(
        None,
        "--export-head",
        help="Also write the head alone here (float16 weights, calibration and training record, "
        "about 2.4 MB): --head-from and --init-head read it, so a candidate can be kept in git.",
    ),
    cache: Path = typer.Option(
        None,
        "--cache",
        help="Keep the prepared cases in this folder and memory-map them: the run holds only "
        "what it reads, and a later run on the same files skips the preparation.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    threads: int = typer.Option(None, "--threads", help="CPU threads for torch."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace earlier outputs."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted run in --out (same options)."
    ),
    init_head: Path = typer.Option(
        None,
        "--init-head",
        help="Start from the lesion head of this checkpoint (same architecture) instead of "
        "random weights: a new schedule on a trained head.",
    ),
    head_from: Path = typer.Option(
        None,
        "--head-from",
        help="Do not train: put the trained head of this train-lesion output into --checkpoint.",
    ),
    recalibrate: bool = typer.Option(
        False,
        "--recalibrate",
        help="With --head-from: refit the head's temperature and lesion-mask rule on --val-data "
        "first (no weight changes).",
    ),
) -> None:
    """Train the lesion head on [fused, MRI, CT, CT bone] patches, calibrate it on the
    validation cases, and write the checkpoint with it (docs/TRAINING.md)."""
    import torch

    from clinfuse.pipeline import resolve_device
    from clinfuse.training.checkpoint import export_checkpoint
    from clinfuse.training.lesion import (
        LesionTrainConfig,
        train_lesion_head,
        transplant_lesion_head,
    )

    if threads is not None:
        if threads < 1:
            raise ClinfuseInputError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    for target_file in (export, export_head):
        if target_file is not None and target_file.exists() and not overwrite:
            raise ClinfuseInputError(
                "export target exists; pass --overwrite to replace it", target_file
            )

    def write_exports(written: Path) -> None:
        if export is not None:
            export_checkpoint(written, export, half=True)
            typer.echo(f"exported {export}")
        if export_head is not None:
            export_checkpoint(written, export_head, half=True, only="lesion_head.")
            typer.echo(f"exported the head alone to {export_head}")

    if head_from is not None:
        target = out / "lesion_head.ckpt"
        if target.exists() and not overwrite:
            raise ClinfuseInputError("output exists; pass --overwrite to replace it", target)
        if recalibrate and val_data is None:
            raise ClinfuseInputError("--recalibrate needs --val-data")
        res = transplant_lesion_head(
            head_from,
            checkpoint,
            target,
            recalibrate_on=val_data if recalibrate else None,
            flip_tta=flip_tta,
            rule_dice_tolerance=rule_dice_tolerance,
            rule_found_tolerance=rule_found_tolerance,
            rule_max_lesion_free_share=rule_max_lesion_free_share,
            lesion_gate=lesion_gate,
            mirror_ghosts=mirror_ghosts,
            joint_rule=joint_rule,
            peak_rule=peak_rule,
            near_temperature=near_temperature,
            log=typer.echo,
        )
        typer.echo(f"done: {res.checkpoint} (head of {head_from})")
        write_exports(res.checkpoint)
        return
    if recalibrate:
        raise ClinfuseInputError("--recalibrate goes with --head-from (a trained head)")
    if not data or val_data is None:
        raise ClinfuseInputError("--data and --val-data are needed to train (or pass --head-from)")
    if patch < 16:
        raise ClinfuseInputError(f"--patch must be >= 16 voxels, got {patch}")
    cfg = LesionTrainConfig(
        steps=steps,
        cases_per_step=cases_per_step,
        samples_per_case=samples_per_case,
        patch_size=(patch, patch, patch),
        lr=lr,
        pos_fraction=pos_fraction,
        inputs=inputs,
        val_every=val_every,
        seed=seed,
        amp=amp,
        init_head=None if init_head is None else str(init_head),
        hard_negative_fraction=hard_negatives,
        ghost_fraction=ghost_patches,
        flip_tta=bool(flip_tta),
        data_shares=tuple(data_share) if data_share else None,
        dice_per_sample=dice_per_sample,
        rule_dice_tolerance=rule_dice_tolerance,
        rule_found_tolerance=rule_found_tolerance,
        rule_max_lesion_free_share=rule_max_lesion_free_share,
        lesion_gate=lesion_gate,
        mirror_ghosts=mirror_ghosts,
        joint_rule=joint_rule,
        peak_rule=peak_rule,
        near_temperature=near_temperature,
        contrast_dropout=contrast_dropout,
        tilt_deg=tilt_deg,
    )
    dev = resolve_device(device)
    result = train_lesion_head(
        checkpoint,
        data[0] if len(data) == 1 else data,
        val_data,
        out,
        cfg,
        device=dev,
        overwrite=overwrite,
        resume=resume,
        log=typer.echo,
        cache=cache,
    )
    typer.echo(
        f"done: {result.checkpoint} (best step {result.best_step}, val Dice "
        f"{result.best_dice:.3f}; temperature {result.temperature:.3f}; "
        f"{result.mask_rule.describe()}; final val Dice "
        f"{result.val.get('dice', float('nan')):.3f})"
    )
    write_exports(result.checkpoint)


def register(app: typer.Typer) -> None:
    """Add the `train-lesion` command to the app."""
    app.command("train-lesion")(train_lesion)
