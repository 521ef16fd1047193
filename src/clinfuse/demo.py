"""The library side of `clinfuse demo`: held-out phantoms -> every method -> metrics -> report.

Synthesises a few phantoms with seeds disjoint from training, fuses them with our model (the
shipped checkpoint, stroke preset) and every classical baseline, scores all with the evaluation
harness, and writes fused NIfTIs, montages, `per_case.csv`, `summary.md` and `report.html`.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse.diffusion import DEFAULT_STEPS
from clinfuse.errors import ClinfuseInputError

# Training and benchmark phantoms use small seeds (0.., 1000..; docs/TRAINING.md,
# docs/BENCHMARKS.md); the demo's held-out cases start far above them so none is ever trained on.
DEMO_SEED = 9000
# 64 x 64 x 48 voxels at 3 mm covers a 19 x 19 x 14 cm head: a few-minute CPU budget for
# 3 cases of guided DDIM-20 (docs/MODEL.md timings), with a skull still 2-3 voxels thick.
DEMO_SHAPE = (64, 64, 48)
DEMO_SPACING = (3.0, 3.0, 3.0)
# Alternate MRI contrasts: T1-like (bright marrow, dark CSF) and T2-like (the reverse) each
# defeat a different classical baseline, which is the point the demo has to show.
DEMO_CONTRASTS = ("T1", "T2")
# Issue 10's lesion sizes: without this range seeds 9000 and 9002 drew 0.27 and 0.05 mL lacunes
# (1-10 voxels at 3 mm, below the lesion head's 0.5 mL minimum component), so every method's
# lesion Dice was 0 on two of the three cases whatever it did (sessions 2-7).
DEMO_LESION_ML = (0.5, 80.0)
OUR_METHOD = "clinfuse"

ProgressFn = Callable[[str], None]


@dataclass
class DemoCase:
    """One held-out phantom: its prepared (model-range) form and how it was made."""

    case_id: str
    seed: int
    contrast: str
    prepared: Any  # clinfuse.preprocess.prepared.PreparedCase
    native: Any  # clinfuse.io.case.Case (HU CT, MRI units, exact masks)


@dataclass
class ModelStatus:
    """Whether our model ran, and if not, why (shown in the report instead of numbers)."""

    available: bool
    reason: str
    checkpoint: str | None = None
    sha256: str | None = None


@dataclass
class DemoResult:
    """What `run_demo` wrote."""

    out: Path
    report: Path
    per_case_csv: Path
    summary_md: Path
    rows: list[dict[str, Any]]
    model: ModelStatus
    seconds: float
    methods: list[str] = field(default_factory=list)


def default_checkpoint(ndim: int = 3) -> Path:
    """Path of the shipped checkpoint for 2D or 3D data (it may not exist yet)."""
    from clinfuse.pipeline import shipped_checkpoint_path

    return shipped_checkpoint_path(ndim)


def make_demo_cases(
    n_cases: int = 3,
    *,
    seed: int = DEMO_SEED,
    shape: Sequence[int] = DEMO_SHAPE,
    spacing: Sequence[float] = DEMO_SPACING,
    work_spacing: float | None = None,
) -> list[DemoCase]:
    """Generate and preprocess `n_cases` phantoms (seed `seed + i`, contrasts alternating).

    Each has one ischaemic lesion of 0.5-80 mL (`DEMO_LESION_ML`) and exact brain/bone/lesion
    masks; the masks given to the methods are the exact ones (the composite is then the ROI-SSIM
    ceiling, see the report).
    `work_spacing` (mm, `demo --spacing`): every method works and is scored on a grid of that
    voxel size (default: the phantoms' own `spacing`).
    """
    if n_cases < 1:
        raise ClinfuseInputError(f"--n-cases must be at least 1, got {n_cases}")
    from clinfuse.phantom import PhantomConfig, generate_phantom
    from clinfuse.preprocess.pipeline import preprocess_case

    cases = []
    for i in range(n_cases):
        contrast = DEMO_CONTRASTS[i % len(DEMO_CONTRASTS)]
        config = PhantomConfig(
            shape=tuple(int(s) for s in shape),
            spacing=tuple(float(s) for s in spacing),
            mri_contrast=contrast,  # type: ignore[arg-type]
            lesion="ischaemic",
            n_lesions=1,
            lesion_ml=DEMO_LESION_ML,
        )
        phantom = generate_phantom(config, seed + i)
        case = phantom.case
        case.case_id = f"demo{seed + i}_{contrast}"
        prepared = preprocess_case(case, spacing=work_spacing)
        cases.append(DemoCase(case.case_id, seed + i, contrast, prepared, case))
    return cases


def _load_model(checkpoint: Path | None, ndim: int, device: str) -> tuple[Any, ModelStatus]:
    """Our model (`pipeline.LoadedModel`) and its status; a missing shipped checkpoint is a
    status shown in the report, not a crash. A checkpoint the user named that does not exist or
    does not fit is an error."""
    path = checkpoint if checkpoint is not None else default_checkpoint(ndim)
    if not path.is_file():
        if checkpoint is not None:
            raise ClinfuseInputError("checkpoint file not found", path)
        return None, ModelStatus(
            False,
            f"no shipped checkpoint at {path} yet (it is trained by `clinfuse train`); "
            "the clinfuse row is left out rather than filled with made-up numbers",
            str(path),
        )
    from clinfuse.pipeline import load_model

    loaded = load_model(path, ndim, device)
    return loaded, ModelStatus(True, "ok", loaded.path, loaded.sha256)


def _our_method(
    loaded: Any, preset: str, seed: int, samples: int, steps: int, sliding: bool
) -> Callable[[Any], Any]:
    """Our fusion of one prepared case (`pipeline.fuse_prepared`), lesion guidance "predicted":
    the head's own mask guides the lesion term, never the phantom's reference mask.

    `sliding=False` denoises the demo volume in one pass instead of training-size windows: at
    64 x 64 x 48 the 32^3 windows with 50 % overlap are 27 forward passes per step (about 4-5x
    the compute of one whole-volume pass), which alone would break the 5-minute budget, and the
    training loop already validates on whole 64-voxel volumes (docs/TRAINING.md).
    """
    from clinfuse.pipeline import fuse_prepared

    def clinfuse(prepared: Any) -> Any:
        return fuse_prepared(
            prepared,
            loaded.model,
            preset=preset,
            steps=steps,
            samples=samples,
            seed=seed,
            lesion="predicted",
            patch_size=loaded.patch_size if sliding else None,
        )

    return clinfuse


class _Recorder:
    """Wraps a method: keeps what it returned per case (for montages/calibration) and adds the
    lesion head's prediction on its fused image when the method has none of its own."""

    def __init__(self, name: str, fn: Callable, model: Any) -> None:
        self.__name__ = name
        self.fn = fn
        self.model = model
        self.outputs: dict[str, dict[str, np.ndarray]] = {}
        self.lesion_source: dict[str, str | None] = {}

    def __call__(self, prepared: Any) -> Any:
        from clinfuse.diffusion.guidance import head_mask_rule
        from clinfuse.evaluation.case import lesion_mask
        from clinfuse.evaluation.methods import MethodOutput, mask_rule_of, unpack_output
        from clinfuse.pipeline import lesion_probability

        raw = self.fn(prepared)
        fused, lesion = unpack_output(raw)
        fused = np.asarray(fused, dtype=np.float32)
        kept: dict[str, np.ndarray] = {"fused": fused}
        rule = mask_rule_of(raw)  # the head's: the scored mask is cleaned with it
        if lesion is None and self.model is not None:
            lesion = lesion_probability(self.model, fused, prepared)
            rule = head_mask_rule(self.model)
        if lesion is not None:
            # the mask the harness scores (threshold + the head's mask rule)
            kept["lesion_mask"] = lesion_mask(
                np.asarray(lesion), prepared.spacing, rule, prepared.mri
            )
            # the probability a reader is given (near-mask temperature; calibration panels)
            prob = np.asarray(lesion)
            if prob.dtype != np.bool_:
                prob = rule.calibrated(prob, kept["lesion_mask"], prepared.spacing)
            kept["lesion_prob"] = np.asarray(prob, dtype=np.float32)
        for key in ("uncertainty", "fused_std", "std"):
            # A bare ndarray result has a `.std` *method*: only take array-valued attributes.
            value = None if isinstance(raw, np.ndarray) else getattr(raw, key, None)
            if value is not None and not callable(value):
                kept["uncertainty"] = np.asarray(value, dtype=np.float32)
                break
        self.outputs[prepared.case_id] = kept
        # What guided our lesion term ("predicted" in the demo); None for the baselines.
        self.lesion_source[prepared.case_id] = getattr(raw, "lesion_source", None)
        scored = None if lesion is None else np.asarray(lesion, dtype=np.float32)
        return MethodOutput(fused, scored, mask_rule=rule)  # the head's own: its rule reads it


def _write_inputs(case: DemoCase, folder: Path) -> None:
    """The phantom as NIfTI files a user can open next to the fused outputs (ITK-SNAP)."""
    from clinfuse.io.nifti import save_nifti

    native = case.native
    folder.mkdir(parents=True, exist_ok=True)
    for role in ("mri", "ct", "brain", "bone", "lesion"):
        arr = getattr(native, role)
        if arr is not None:
            save_nifti(folder / f"{role}.nii.gz", arr, native.affine)


def _write_long_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from clinfuse.io.atomic import atomic_write

    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with atomic_write(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            )


def run_demo(
    out: str | Path,
    *,
    n_cases: int = 3,
    seed: int = DEMO_SEED,
    shape: Sequence[int] = DEMO_SHAPE,
    spacing: Sequence[float] = DEMO_SPACING,
    work_spacing: float | None = None,
    checkpoint: str | Path | None = None,
    preset: str = "stroke",
    samples: int = 1,
    steps: int = DEFAULT_STEPS,
    sliding: bool = False,
    device: str = "cpu",
    overwrite: bool = False,
    methods: Sequence[str] | None = None,
    command: str | None = None,
    progress: ProgressFn | None = None,
) -> DemoResult:
    """Run the whole demo into the folder `out` and return what was written.

    Our model runs when a checkpoint is found (`checkpoint`, default the shipped one);
    otherwise the report says so and shows the baselines
    only. Ours runs `samples` samples per case (their sd is the uncertainty map) with DDIM
    `steps` and guidance `preset`. `methods` limits the baselines (default: all).
    `work_spacing`: the working (and scoring) voxel size in mm (`make_demo_cases`).
    """
    from clinfuse.baselines import BASELINES
    from clinfuse.evaluation.dataset import PreparedItem, evaluate_dataset
    from clinfuse.io.atomic import check_output_dir

    say = progress or (lambda _msg: None)
    t_start = time.perf_counter()
    # Every user error before any work: bad counts, unknown baseline or preset, bad output.
    if samples < 1 or steps < 1:
        raise ClinfuseInputError(f"--samples and --steps must be >= 1, got {samples}, {steps}")
    baseline_names = list(methods) if methods is not None else list(BASELINES)
    unknown = [m for m in baseline_names if m not in BASELINES]
    if unknown:
        raise ClinfuseInputError(f"unknown baseline(s) {unknown}; available: {list(BASELINES)}")
    from clinfuse.diffusion.guidance import load_preset

    load_preset(preset)
    out_dir = check_output_dir(out, overwrite)
    timings: dict[str, float] = {}

    say(f"synthesising {n_cases} held-out phantoms (seeds {seed}..{seed + n_cases - 1})")
    t0 = time.perf_counter()
    cases = make_demo_cases(
        n_cases, seed=seed, shape=shape, spacing=spacing, work_spacing=work_spacing
    )
    for c in cases:
        _write_inputs(c, out_dir / "cases" / c.case_id)
    timings["phantoms_and_preprocessing"] = time.perf_counter() - t0

    ndim = cases[0].prepared.ndim
    loaded, status = _load_model(None if checkpoint is None else Path(checkpoint), ndim, device)
    recorders: dict[str, _Recorder] = {}
    model = None if loaded is None else loaded.model
    if loaded is not None:
        fn = _our_method(loaded, preset, seed, samples, steps, sliding)
        recorders[OUR_METHOD] = _Recorder(OUR_METHOD, fn, model)
    for name in baseline_names:
        recorders[name] = _Recorder(name, BASELINES[name], model)

    items = [PreparedItem(c.case_id, c.prepared) for c in cases]
    contrast_of = {c.case_id: c.contrast for c in cases}
    rows_by_method: dict[str, list[dict[str, Any]]] = {}
    long_rows: list[dict[str, Any]] = []
    for name, rec in recorders.items():
        say(f"fusing and scoring: {name}")
        t0 = time.perf_counter()
        res = evaluate_dataset(rec, None, out_dir / "methods" / name, items=items, overwrite=True)
        timings[f"method_{name}"] = time.perf_counter() - t0
        rows_by_method[name] = res.rows
        for r in res.rows:
            long_rows.append(
                {"method": name, "case_id": r["case_id"], "mri_contrast": contrast_of[r["case_id"]]}
                | {k: v for k, v in r.items() if k not in ("case_id", "patient_id")}
            )
        failed = [r for r in res.rows if r.get("error")]
        if name == OUR_METHOD and len(failed) == len(res.rows):
            status = ModelStatus(
                False, f"our model failed on every case: {failed[0]['error']}", status.checkpoint
            )

    per_case = out_dir / "per_case.csv"
    _write_long_csv(per_case, long_rows)

    say("drawing montages and plots")
    t0 = time.perf_counter()
    from clinfuse.report.demo_report import write_demo_report

    report, summary_md = write_demo_report(
        out_dir,
        cases=cases,
        recorders=recorders,
        rows_by_method=rows_by_method,
        status=status,
        per_case_csv=per_case,
        settings={
            "n_cases": n_cases,
            "seed": seed,
            "shape": list(shape),
            "spacing": list(spacing),
            "work_spacing": work_spacing,
            "preset": preset,
            "samples": samples,
            "steps": steps,
            "sliding_window": sliding,
            "device": device,
        },
        command=command,
        timings=timings,
    )
    timings["report"] = time.perf_counter() - t0
    seconds = time.perf_counter() - t_start
    meta = {
        "command": command,
        "seeds": [c.seed for c in cases],
        "cases": {c.case_id: {"seed": c.seed, "mri_contrast": c.contrast} for c in cases},
        "model": vars(status),
        "preset": preset,
        "lesion_guidance": dict(recorders[OUR_METHOD].lesion_source)
        if OUR_METHOD in recorders
        else None,
        "methods": list(recorders),
        "timings_seconds": {k: round(v, 2) for k, v in timings.items()},
        "total_seconds": round(seconds, 2),
    }
    from clinfuse.io.atomic import write_text_atomic

    write_text_atomic(out_dir / "demo.json", json.dumps(meta, indent=2) + "\n")
    return DemoResult(
        out_dir, report, per_case, summary_md, long_rows, status, seconds, list(recorders)
    )
