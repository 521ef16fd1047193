"""Fuse one case end to end: the library entry point of `clinfuse fuse` and of the "clinfuse"
method of the evaluation harness. Owns `fuse_case`, `fuse_prepared`, `FusionResult`,
`write_outputs` and the default (shipped) checkpoint lookup.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.case import Case
from clinfuse.preprocess.prepared import PreparedCase

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
SHIPPED_CHECKPOINTS = {3: "phantom3d.pt", 2: "harvard2d.pt"}
LESION_OUTSIDE_BRAIN_MAX = 0.10
"""A user lesion mask with more than this fraction of its voxels outside the brain mask is
rejected (a swapped or misregistered file); a few voxels outside are a partial-volume edge of a
cortical lesion against an automatic brain mask, and only warn."""

LesionMode = Literal["predicted", "user", "oracle"]
WindowMode = Literal["sliding", "whole"]
ProgressFn = Callable[[int, int, dict[str, Any]], None]


@dataclass
class FusionResult:
    """One fused case. Arrays are numpy on the prepared grid unless named `*_native`."""

    case_id: str
    fused: np.ndarray  # model range [-2, 2]; the mean over samples
    lesion_prob: np.ndarray  # mean over samples of sigmoid(lesion head on each fused sample)
    uncertainty: np.ndarray | None  # per-voxel std over samples (model range); None if 1 sample
    lesion_source: str  # what guided the lesion term: predicted | user | oracle | none
    prepared: PreparedCase
    fused_native: np.ndarray | None = None  # native intensities on the MRI's input grid
    timings: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)  # everything run.json needs


# --------------------------------------------------------------------------- model loading


def default_checkpoint(ndim: int) -> Path:
    """The shipped checkpoint for 2D or 3D inputs (`clinfuse/checkpoints/`)."""
    path = CHECKPOINT_DIR / SHIPPED_CHECKPOINTS[ndim]
    if not path.is_file():
        raise ClinfuseInputError(
            f"no shipped {ndim}D checkpoint at {path}; train one with `clinfuse train` and pass "
            "--checkpoint PATH"
        )
    return path


def resolve_device(device: str) -> str:
    """`auto` -> cuda when available, else cpu; `cuda` without a GPU is a user error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ClinfuseInputError("--device cuda was asked for but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ClinfuseInputError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


@dataclass
class LoadedModel:
    """A model ready for fusion with what run.json records about it."""

    model: Any
    spatial_dims: int
    patch_size: tuple[int, ...] | None
    path: str
    sha256: str
    step: int | None


def load_model(checkpoint: str | Path | None, ndim: int, device: str = "cpu") -> LoadedModel:
    """Load a checkpoint (default: the shipped one for `ndim`) and check its dimension."""
    from clinfuse.training.checkpoint import load_checkpoint

    path = Path(checkpoint) if checkpoint is not None else default_checkpoint(ndim)
    if not path.is_file():
        raise ClinfuseInputError("checkpoint file not found", path)
    ckpt = load_checkpoint(path, map_location=device)
    dims = int(ckpt.model.config.spatial_dims)
    if dims != ndim:
        raise ClinfuseInputError(
            f"checkpoint is a {dims}D model but the input is {ndim}D; use a {ndim}D checkpoint",
            path,
        )
    patch = getattr(getattr(ckpt.config, "data", None), "patch_size", None)
    return LoadedModel(
        model=ckpt.model,
        spatial_dims=dims,
        patch_size=None if patch is None else tuple(int(p) for p in patch),
        path=str(path),
        sha256=sha256_of(path),
        step=ckpt.step,
    )


def lesion_probability(model: Any, fused: np.ndarray, prepared: PreparedCase) -> np.ndarray:
    """A `FusionModel`'s lesion head applied to one fused image (ours or a baseline's):
    P(lesion) per voxel, the shape of `fused`, the way `fuse` applies it to its own result.

    The image is padded (replicate) to the model's size multiple; the probability is kept
    inside the case's brain mask (lesions are intracranial; the mask is an input, not the
    reference). Heads that also read the sources get `prepared.stack()` as well.
    """
    import torch

    from clinfuse.nn.model import pad_to_multiple

    device = next(model.parameters()).device
    multiple = int(getattr(model, "size_multiple", 1))
    x = torch.as_tensor(np.asarray(fused, np.float32), device=device)[None, None]
    x, crop = pad_to_multiple(x, multiple)
    cond, _ = pad_to_multiple(torch.as_tensor(prepared.stack(), device=device)[None], multiple)
    with torch.no_grad():
        prob = torch.sigmoid(model.lesion_head(x, cond))[crop][0, 0].float().cpu().numpy()
    return prob * prepared.brain.astype(np.float32)


def lesion_head_predictor(
    checkpoint: str | Path | None = None, device: str = "cpu"
) -> Callable[[np.ndarray, PreparedCase], np.ndarray]:
    """`(fused, prepared) -> lesion probability` with a checkpoint's lesion head
    (`lesion_probability`); the checkpoint (default: the shipped one of the case's dimension)
    is loaded on first use. This is `--lesion-head` of `clinfuse evaluate` / `benchmark`."""
    device = resolve_device(device)
    cache: dict[int, LoadedModel] = {}

    def predict(fused: np.ndarray, prepared: PreparedCase) -> np.ndarray:
        if prepared.ndim not in cache:
            cache[prepared.ndim] = load_model(checkpoint, prepared.ndim, device)
        return lesion_probability(cache[prepared.ndim].model, fused, prepared)

    return predict


# --------------------------------------------------------------------------- fusion


def _lesion_for(prepared: PreparedCase, lesion: LesionMode) -> np.ndarray | None:
    if lesion == "predicted":
        return None
    if prepared.lesion is None or not prepared.lesion.any():
        raise ClinfuseInputError(
            f"lesion={lesion!r} needs a non-empty lesion mask in the case", prepared.case_id
        )
    return prepared.lesion


def fuse_prepared(
    prepared: PreparedCase,
    model: Any,
    *,
    preset: str = "stroke",
    overrides: Mapping[str, Any] | None = None,
    steps: int = 20,
    samples: int = 1,
    seed: int = 0,
    lesion: LesionMode = "predicted",
    patch_size: tuple[int, ...] | None = None,
    window: WindowMode = "sliding",
    overlap: float = 0.5,
    progress: ProgressFn | None = None,
) -> FusionResult:
    """Fuse a prepared case with a loaded `FusionModel` (the evaluation harness's entry point).

    `samples` > 1 runs that many samples in one batch (different noise from one generator
    seeded with `seed`): `fused` is their mean, `uncertainty` their per-voxel std, and
    `lesion_prob` the mean of the head's probabilities. `lesion`: "predicted" (default; the
    head's own mask at t = T/2 guides, never the ground truth), "user" (the case's lesion mask
    was given by the user) or "oracle" (the case's ground-truth mask; label results "oracle").
    Volumes larger than `patch_size` (the training patch) go through sliding windows
    (`window="sliding"`), or through the network in one call (`window="whole"`: about 3x
    cheaper for a 64x64x48 volume and a 32³ patch, but the tokens and attention then see a
    larger field than in training).
    """
    import torch

    from clinfuse.baselines.composite import roi_composite
    from clinfuse.diffusion.guidance import (
        MODEL_RANGE,
        guided_sample,
        load_preset,
        uncertainty_blend,
    )
    from clinfuse.diffusion.schedule import NoiseSchedule
    from clinfuse.diffusion.sliding import SlidingWindowModel, pad_to, padded_shape

    cfg = load_preset(preset, overrides)
    if samples < 1:
        raise ClinfuseInputError(f"samples must be >= 1, got {samples}")
    if steps < 1:
        raise ClinfuseInputError(f"steps must be >= 1, got {steps}")
    lesion_mask = _lesion_for(prepared, lesion)
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    shape = prepared.shape
    multiple = int(getattr(model, "size_multiple", 1))
    if window not in ("sliding", "whole"):
        raise ClinfuseInputError(f"window must be 'sliding' or 'whole', got {window!r}")
    sliding = (
        window == "sliding"
        and patch_size is not None
        and any(s > p for s, p in zip(shape, patch_size, strict=True))
    )
    grid = padded_shape(shape, multiple, patch_size if sliding else None)
    net: Any = SlidingWindowModel(model, patch_size, overlap=overlap) if sliding else model

    def tensor(a: np.ndarray, mode: str) -> torch.Tensor:
        t = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)
        return pad_to(t.reshape(1, -1, *shape), grid, mode=mode)

    cond = tensor(prepared.stack(), "replicate").expand(samples, -1, *grid)
    masks = {
        "brain": tensor(prepared.brain, "constant") > 0.5,
        "bone": tensor(prepared.bone, "constant") > 0.5,
    }
    lesion_t = None if lesion_mask is None else tensor(lesion_mask, "constant") > 0.5
    schedule = NoiseSchedule(model.config.num_train_steps, model.config.schedule).to(device)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    res = guided_sample(
        net,
        cond,
        masks,
        schedule,
        steps=steps,
        guidance=cfg,
        generator=generator,
        lesion_mask=lesion_t,
        lesion_source="oracle" if lesion == "oracle" else "user",  # type: ignore[arg-type]
        spacing=prepared.spacing,
        progress=progress,
    )
    t_sample = time.perf_counter() - t0
    crop = (slice(None), 0, *(slice(0, s) for s in shape))
    fused_s = res.fused[crop].double()  # (samples, *shape)
    prob_s = res.lesion_prob[crop].double()
    fused = fused_s.mean(0)
    std = fused_s.std(0, unbiased=False) if samples > 1 else None
    if std is not None and cfg.uncertainty_blend > 0:
        comp = torch.as_tensor(
            roi_composite(prepared.mri, prepared.ct_bone, prepared.brain, prepared.bone),
            dtype=fused.dtype,
        )
        for roi in (prepared.brain, prepared.bone):
            fused = uncertainty_blend(fused, std, comp, torch.as_tensor(roi), cfg.uncertainty_blend)
    n_air = 0
    if cfg.air_threshold > 0:
        # air in every source -> air in the output (GuidanceConfig.air_threshold)
        sources = torch.as_tensor(prepared.stack(), dtype=fused.dtype)
        air = (sources <= MODEL_RANGE[0] + cfg.air_threshold).all(0)
        fused = torch.where(air, sources.max(0).values, fused)
        n_air = int(air.sum())
    record = {
        "preset": str(preset),
        "air_voxels": n_air,
        "guidance": cfg.to_dict(),
        "steps": int(steps),
        "samples": int(samples),
        "seed": int(seed),
        "lesion_source": res.lesion_source,
        "window": window,
        "sliding_window": {"patch": list(patch_size), "overlap": overlap} if sliding else None,
        "padded_grid": list(grid),
        "mask_source": dict(prepared.mask_source),
        "guidance_history": res.history,
    }
    return FusionResult(
        case_id=prepared.case_id,
        fused=fused.float().cpu().numpy(),
        lesion_prob=prob_s.mean(0).float().cpu().numpy(),
        uncertainty=None if std is None else std.float().cpu().numpy(),
        lesion_source=res.lesion_source,
        prepared=prepared,
        timings={"sampling_s": t_sample, "per_step_s": t_sample / steps},
        record=record,
    )


def _case_from(case_or_paths: Case | Mapping[str, Any] | str | Path) -> Case:
    from clinfuse.io.dataset import load_case

    if isinstance(case_or_paths, Case):
        return case_or_paths
    if isinstance(case_or_paths, Mapping):
        paths = {k: v for k, v in case_or_paths.items() if v is not None}
        for role in ("mri", "ct"):
            if role not in paths:
                raise ClinfuseInputError(f"no {role.upper()} given (--{role})")
        for role, p in paths.items():
            if role in ("mri", "ct", "brain", "bone", "lesion") and not Path(p).exists():
                raise ClinfuseInputError(f"{role} input not found", p)
        is_png = str(paths["mri"]).lower().endswith(".png")
        kind = paths.pop("ct_kind", "display" if is_png else "hu")
        return load_case(**paths, ct_kind=kind)
    from clinfuse.io.dataset import load_dataset

    refs = load_dataset(case_or_paths)
    if len(refs) != 1:
        raise ClinfuseInputError(
            f"expected one case, found {len(refs)}; fuse cases one at a time", case_or_paths
        )
    return refs[0].load()


def check_lesion_in_brain(prepared: PreparedCase, source: str | None = None) -> None:
    """A user lesion mask must lie (mostly) inside the brain mask; see LESION_OUTSIDE_BRAIN_MAX."""
    les = prepared.lesion
    if les is None or not les.any():
        return
    outside = float((les & ~prepared.brain).sum()) / float(les.sum())
    if outside > LESION_OUTSIDE_BRAIN_MAX:
        raise ClinfuseInputError(
            f"{outside:.0%} of the lesion mask lies outside the brain mask (max "
            f"{LESION_OUTSIDE_BRAIN_MAX:.0%}): wrong file, or lesion and MRI not co-registered?",
            source,
        )


def fuse_case(
    case_or_paths: Case | Mapping[str, Any] | str | Path,
    *,
    checkpoint: str | Path | None = None,
    preset: str = "stroke",
    overrides: Mapping[str, Any] | None = None,
    steps: int = 20,
    samples: int = 1,
    seed: int = 0,
    device: str = "cpu",
    window: WindowMode = "sliding",
    progress: ProgressFn | None = None,
) -> FusionResult:
    """Fuse one case: load, preprocess (missing masks automatic), guided sampling, map back.

    `case_or_paths`: a `Case`, a mapping `{"mri": path, "ct": path, "brain"/"bone"/"lesion":
    path or None}` (PNG pairs are read as display-windowed CT), or a case folder. Everything that
    can be wrong with the inputs is checked before sampling starts: missing or mismatched files,
    an unknown preset, a checkpoint of the wrong dimension, a lesion mask outside the brain. A
    lesion mask given with the case guides the lesion term ("user"); without one the lesion
    head's own prediction does.
    """
    from clinfuse.diffusion.guidance import load_preset
    from clinfuse.preprocess.pipeline import preprocess_case, to_native

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    load_preset(preset, overrides)  # unknown preset / bad override: fail before any work
    device = resolve_device(device)
    case = _case_from(case_or_paths)
    prepared = preprocess_case(case)
    timings["preprocess_s"] = time.perf_counter() - t0
    check_lesion_in_brain(prepared, case.sources.get("lesion"))
    t1 = time.perf_counter()
    loaded = load_model(checkpoint, prepared.ndim, device)
    timings["load_model_s"] = time.perf_counter() - t1
    lesion: LesionMode = (
        "user" if prepared.lesion is not None and prepared.lesion.any() else ("predicted")
    )
    result = fuse_prepared(
        prepared,
        loaded.model,
        preset=preset,
        overrides=overrides,
        steps=steps,
        samples=samples,
        seed=seed,
        lesion=lesion,
        patch_size=loaded.patch_size,
        window=window,
        progress=progress,
    )
    t2 = time.perf_counter()
    result.fused_native = to_native(result.fused, prepared)
    timings["to_native_s"] = time.perf_counter() - t2
    result.timings = {**timings, **result.timings, "total_s": time.perf_counter() - t0}
    result.record.update(
        {
            "case_id": case.case_id,
            "inputs": {
                role: {"path": str(Path(p).resolve()), "sha256": sha256_of(p)}
                for role, p in case.sources.items()
            },
            "checkpoint": {"path": loaded.path, "sha256": loaded.sha256, "step": loaded.step},
            "device": device,
        }
    )
    return result


# --------------------------------------------------------------------------- outputs


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder (DICOM series): its files' names and bytes, sorted."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import monai
    import torch

    import clinfuse

    return {
        "clinfuse": clinfuse.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
    }


def _native_affine(prepared: PreparedCase) -> np.ndarray:
    """The affine of `to_native`'s output: the MRI's input grid when the case was resampled."""
    rec = prepared.record
    src = rec.get("source_grid")
    if src and (rec.get("grid", {}).get("resampled") or rec.get("reoriented")):
        return np.asarray(src["affine"], dtype=np.float64)
    return np.asarray(prepared.affine, dtype=np.float64)


def _write_all(result: FusionResult, folder: Path) -> list[str]:
    """Write every output file into `folder` (a fresh temp folder); return the names."""
    from clinfuse.io.nifti import save_nifti
    from clinfuse.io.png import save_png
    from clinfuse.preprocess.windowing import model_to_display

    p = result.prepared
    names = []
    if p.ndim == 2:
        native = result.fused_native
        if native is None or p.ct_kind != "display":
            native = model_to_display(result.fused)  # display range of the model-range image
        save_png(folder / "fused.png", np.clip(np.round(native), 0, 255).astype(np.uint8))
        names.append("fused.png")
    else:
        native = result.fused_native if result.fused_native is not None else result.fused
        save_nifti(folder / "fused.nii.gz", native, _native_affine(p))
        names.append("fused.nii.gz")
    save_nifti(folder / "lesion_prob.nii.gz", result.lesion_prob, p.affine)
    names.append("lesion_prob.nii.gz")
    if result.uncertainty is not None:
        save_nifti(folder / "uncertainty.nii.gz", result.uncertainty, p.affine)
        names.append("uncertainty.nii.gz")
    try:
        from clinfuse.report.montage import save_montage

        panels = {"MRI": p.mri, "CT (bone window)": p.ct_bone, "fused": result.fused}
        if result.uncertainty is not None:
            panels["uncertainty (std)"] = result.uncertainty
        overlay = {"predicted lesion": result.lesion_prob > 0.5}
        if p.lesion is not None and result.lesion_source in ("user", "oracle"):
            overlay[f"{result.lesion_source} lesion"] = p.lesion
        save_montage(
            folder / "montage.png",
            panels,
            overlay=overlay,
            spacing=p.spacing,
            title=f"{result.case_id}: {result.record.get('preset', '')}",
        )
        names.append("montage.png")
    except ImportError:  # the report module is optional for the library path
        pass
    run = {
        **result.record,
        "case_id": result.case_id,
        "timings": result.timings,
        "versions": _versions(),
        "outputs": names + ["run.json"],
    }
    (folder / "run.json").write_text(json.dumps(run, indent=2, default=_json_default) + "\n")
    names.append("run.json")
    return names


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def write_outputs(
    result: FusionResult,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    inputs: tuple[str | Path, ...] = (),
) -> Path:
    """Write fused image, lesion probability, uncertainty, montage and run.json into `out_dir`.

    Everything is first written into a hidden temp folder next to `out_dir`; a new (or empty)
    `out_dir` then appears in one rename, and with `overwrite` each file replaces its old
    version with `os.replace` (run.json last, so it marks a complete run). An interrupted call
    leaves `out_dir` as it was. Refuses to write inside an input folder.
    """
    from clinfuse.io.atomic import check_output_dir

    out = Path(out_dir).expanduser().resolve()
    existed = out.exists()
    check_output_dir(out, overwrite=overwrite, inputs=inputs)  # creates `out` if missing
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        names = _write_all(result, tmp)
        if not any(out.iterdir()):
            out.rmdir()
            os.replace(tmp, out)
        else:
            for name in [n for n in names if n != "run.json"] + ["run.json"]:
                os.replace(tmp / name, out / name)
    except BaseException:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- evaluation hook


def _clinfuse_method_factory(
    checkpoint: str | Path | None = None,
    preset: str = "stroke",
    steps: int = 20,
    samples: int = 1,
    seed: int = 0,
    lesion: LesionMode = "predicted",
    device: str = "cpu",
    window: WindowMode = "sliding",
    **overrides: Any,
) -> Callable[[PreparedCase], FusionResult]:
    """`clinfuse evaluate --method clinfuse --checkpoint CKPT --preset stroke [--option k=v]`.

    Options besides these are guidance overrides (`mode`, `eta`, `alpha`, ...). The model is
    loaded once, on the first case (its dimension must match). `lesion=oracle` guides with the
    ground-truth mask: tables made so must say "oracle".
    """
    from clinfuse.diffusion.guidance import load_preset

    load_preset(preset, overrides)  # bad preset / override: fail before the first case
    if lesion not in ("predicted", "oracle"):
        raise ClinfuseInputError(f"lesion must be 'predicted' or 'oracle', got {lesion!r}")
    device = resolve_device(device)
    cache: dict[int, LoadedModel] = {}

    def method(prepared: PreparedCase) -> FusionResult:
        if prepared.ndim not in cache:
            cache[prepared.ndim] = load_model(checkpoint, prepared.ndim, device)
        lm = cache[prepared.ndim]
        return fuse_prepared(
            prepared,
            lm.model,
            preset=preset,
            overrides=overrides,
            steps=int(steps),
            samples=int(samples),
            seed=int(seed),
            lesion=lesion,
            patch_size=lm.patch_size,
            window=window,
        )

    return method


def _register() -> None:
    try:
        from clinfuse.evaluation.methods import register_method
    except ImportError:  # evaluation harness not installed: nothing to register with
        return
    register_method("clinfuse", _clinfuse_method_factory, replace=True)


_register()
