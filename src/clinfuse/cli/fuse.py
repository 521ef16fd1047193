"""`clinfuse fuse`: fuse one MRI/CT pair (NIfTI, DICOM folder or a 2D PNG pair) into DIR."""

from __future__ import annotations

import warnings
from enum import Enum
from pathlib import Path

import typer

from clinfuse.diffusion import DEFAULT_STEPS


class Mode(str, Enum):
    """Where the ROI gradient acts: `x0` (the predicted clean image) or `xt` (Algorithm 1)."""

    x0 = "x0"
    xt = "xt"


class Window(str, Enum):
    """Volumes above the training patch: overlapping patches, or the whole volume at once."""

    auto = "auto"
    sliding = "sliding"
    whole = "whole"


class Units(str, Enum):
    """Units of fused.nii.gz (`pipeline.native.OutputUnits`)."""

    model = "model"
    source = "source"


class Device(str, Enum):
    """Compute device; `auto` picks CUDA when present."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def fuse(
    mri: Path | None = typer.Option(None, "--mri", help="MRI: NIfTI, DICOM folder or PNG (2D)."),
    ct: Path | None = typer.Option(None, "--ct", help="CT on the MRI's grid or overlapping it."),
    out: Path = typer.Option(..., "--out", help="Output folder (created)."),
    prepared: Path | None = typer.Option(
        None,
        "--prepared",
        help="Instead of --mri/--ct: a case folder written by `clinfuse preprocess`.",
    ),
    brain: Path | None = typer.Option(None, "--brain", help="Brain mask (else automatic)."),
    bone: Path | None = typer.Option(None, "--bone", help="Skull mask (else automatic)."),
    lesion: Path | None = typer.Option(
        None, "--lesion", help="Lesion mask that guides (else the lesion head predicts it)."
    ),
    mri_contrast: str | None = typer.Option(
        None,
        "--mri-contrast",
        help="The MRI's sequence: T1, T2, FLAIR, DWI, ADC or unknown (the default). The lesion "
        "head reads it: an ischaemic lesion is dark on T1/ADC, bright on T2/FLAIR/DWI.",
    ),
    preset: str = typer.Option(
        "stroke", "--preset", help="Disease preset: stroke, hemorrhage, trauma, tumour."
    ),
    mode: Mode | None = typer.Option(None, "--mode", help="Guidance on x0 or on x_t."),
    eta: float | None = typer.Option(None, "--eta", help="Guidance strength (0 = off)."),
    alpha: float | None = typer.Option(None, "--alpha", help="Brain term weight."),
    beta: float | None = typer.Option(None, "--beta", help="Bone term weight."),
    gamma: float | None = typer.Option(None, "--gamma", help="Lesion term weight."),
    n_inner: int | None = typer.Option(
        None, "--n-inner", help="Gradient steps on x0 per DDIM step (mode x0)."
    ),
    final_inner: int | None = typer.Option(
        None, "--final-inner", help="Gradient steps on x0 at the last DDIM step (0: --n-inner)."
    ),
    inner_momentum: float | None = typer.Option(
        None, "--inner-momentum", help="Nesterov momentum of those steps (0: plain descent)."
    ),
    roi_final_only: bool | None = typer.Option(
        None,
        "--roi-final-only/--roi-every-step",
        help="Brain/bone terms at the last DDIM step only (the presets) or at every step.",
    ),
    uncertainty_blend: float | None = typer.Option(
        None,
        "--uncertainty-blend",
        help="With --samples > 1: blend toward the ROI composite where samples disagree.",
    ),
    steps: int = typer.Option(
        DEFAULT_STEPS, "--steps", min=1, help="DDIM steps (10: docs/SPEED.md)."
    ),
    samples: int = typer.Option(
        1, "--samples", min=1, help="Samples (batched); > 1 writes an uncertainty map."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling noise."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Model checkpoint (default: the shipped one)."
    ),
    window: Window = typer.Option(
        Window.auto,
        "--window",
        help="auto: whole volume up to 1.6 M voxels, else sliding (default); sliding: "
        "training-size patches blended; whole: one call, ~2x faster.",
    ),
    device: Device = typer.Option(Device.auto, "--device", help="auto, cpu or cuda."),
    output_units: Units = typer.Option(
        Units.model,
        "--output-units",
        help="model: the model's range shown as [0, 1] (one window shows brain and skull); "
        "source: HU in the skull mask, MRI units elsewhere.",
    ),
    spacing: float | None = typer.Option(
        None,
        "--spacing",
        min=0.01,
        help="Working resolution in mm (e.g. 2 for a 1 mm head: ~8x fewer voxels); the output "
        "stays on the MRI's grid. Default: the MRI's own grid.",
    ),
    detail: bool = typer.Option(
        True,
        "--detail/--no-detail",
        help="With --spacing: restore native-resolution detail from each ROI's source.",
    ),
    register: bool = typer.Option(
        False, "--register", help="Rigid CT->MRI registration first (transform in run.json)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="CPU threads (default: all cores)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Fuse one MRI/CT pair with ROI-guided diffusion; writes fused image (on the MRI's grid),
    fused_display.png, the masks used, lesion probability, the lesion head's mask and its
    findings table (lesions.csv), uncertainty (--samples > 1), montage.png and run.json."""
    from rich.console import Console

    from clinfuse.cli._progress import StepLines
    from clinfuse.diffusion.guidance import load_preset
    from clinfuse.io.atomic import check_output_dir
    from clinfuse.pipeline import fuse_case, write_outputs
    from clinfuse.pipeline.outputs import describe_lesions, lesion_findings

    console = Console(stderr=True)
    overrides = {
        "mode": None if mode is None else mode.value,
        "eta": eta,
        "alpha": alpha,
        "beta": beta,
        "gamma": gamma,
        "n_inner": n_inner,
        "final_inner": final_inner,
        "inner_momentum": inner_momentum,
        "roi_final_only": roi_final_only,
        "uncertainty_blend": uncertainty_blend,
    }
    # The preset is read once (errors name the file), each option is checked on its own (errors
    # name the option), and the resolved config goes down to the sampler.
    guidance = load_preset(preset)
    for key, value in overrides.items():
        if value is not None:
            option = "--" + key.replace("_", "-")
            guidance = load_preset(guidance, {key: value}, overrides_source=option)
    from clinfuse.choices import parse_mri_contrast
    from clinfuse.errors import ClinfuseInputError
    from clinfuse.nn.precision import set_threads

    parse_mri_contrast(mri_contrast, "--mri-contrast")  # a bad name fails before any work

    paths = {"mri": mri, "ct": ct, "brain": brain, "bone": bone, "lesion": lesion}
    if prepared is not None:
        given = [f"--{k}" for k, v in paths.items() if v is not None]
        if given:
            raise ClinfuseInputError(
                f"--prepared replaces {', '.join(given)}: give one or the other"
            )
    elif mri is None or ct is None:
        raise ClinfuseInputError(
            "give --mri and --ct (or --prepared DIR from `clinfuse preprocess`)"
        )
    n_threads = set_threads(threads)
    inputs = tuple(p for p in (*paths.values(), prepared) if p is not None)
    out_existed = out.exists()
    out_dir = check_output_dir(out, overwrite=overwrite, inputs=inputs)
    try:
        with warnings.catch_warnings():
            # preprocessing notes (e.g. a CT resampled onto the MRI grid) as plain lines
            warnings.showwarning = lambda message, *_a, **_k: console.print(
                f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True
            )
            result = fuse_case(
                prepared if prepared is not None else paths,
                checkpoint=checkpoint,
                preset=preset,
                guidance=guidance,
                steps=steps,
                samples=samples,
                seed=seed,
                device=device.value,
                window=window.value,
                progress=StepLines(console),  # first line only once every input is checked
                spacing=spacing,
                register=register,
                detail=detail,
                output_units=output_units.value,
                mri_contrast=mri_contrast,
            )
        result.record["threads"] = n_threads
        write_outputs(result, out_dir, overwrite=overwrite, inputs=inputs)
    except BaseException:
        # leave nothing behind that this run created (the folder itself included)
        if not out_existed and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    t = result.timings
    console.print(
        f"fused {result.case_id} ({'x'.join(map(str, result.prepared.shape))}, "
        f"preset {preset}, lesion guide: {result.lesion_source}) in "
        f"{t.get('total_s', 0):.1f} s -> {out_dir}"
    )
    found, gate = lesion_findings(result)
    console.print(describe_lesions(found, gate))


def register(app: typer.Typer) -> None:
    """Add the `fuse` command to the app."""
    app.command("fuse")(fuse)
