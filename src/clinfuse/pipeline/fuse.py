"""Fusing: `fuse_prepared` (a prepared case and a loaded model -> `FusionResult`), `fuse_case`
(files -> preprocess -> fuse -> native intensities) and `clinfuse_method_factory` (our method for
the evaluation harness, registered by the CLI)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clinfuse.choices import Choice, parse_mri_contrast
from clinfuse.diffusion import DEFAULT_STEPS
from clinfuse.errors import ClinfuseInputError
from clinfuse.io.case import Case
from clinfuse.nn.lesion_mask import LesionMaskRule
from clinfuse.pipeline.model import LoadedModel, load_model, resolve_device, sha256_of
from clinfuse.pipeline.native import OutputUnits
from clinfuse.preprocess.prepared import PreparedCase

if TYPE_CHECKING:  # torch-importing modules stay lazy at runtime
    from clinfuse.diffusion.guidance import GuidanceConfig

LESION_OUTSIDE_BRAIN_MAX = 0.10
"""A user lesion mask with more than this fraction of its voxels outside the brain mask is
rejected (a swapped or misregistered file); a few voxels outside are a partial-volume edge of a
cortical lesion against an automatic brain mask, and only warn."""


class LesionMode(Choice):
    """Which lesion mask guides: the head's own prediction (default), the user's mask, or the
    ground truth ("oracle": tables made so must say so)."""

    predicted = "predicted"
    user = "user"
    oracle = "oracle"


class WindowMode(Choice):
    """Volumes above the training patch: overlapping patches, the whole volume at once, or
    `auto` (whole up to `WHOLE_MAX_VOXELS`, sliding above: the default)."""

    auto = "auto"
    sliding = "sliding"
    whole = "whole"


# `auto` samples volumes up to this many voxels in one call: the whole volume gave the same
# ROI-SSIM as sliding windows on the validation cases (docs/SPEED.md) at ~2.3x less time, and
# 96x112x96 (1.03 M voxels) peaked at 2.3 GB; above this, sliding windows bound the memory.
WHOLE_MAX_VOXELS = 1_600_000


ProgressFn = Callable[[int, int, dict[str, Any]], None]
"""`progress(steps_done, n_steps, info)`; called once with 0 when sampling starts (after every
input check), then after each step."""


@dataclass
class FusionResult:
    """One fused case. Arrays are numpy on the prepared grid unless named `*_native`."""

    case_id: str
    fused: np.ndarray  # model range [-2, 2]; the mean over samples
    # mean over samples of sigmoid(lesion head on each fused sample): what the mask rule reads;
    # `calibrated_lesion_prob()` is what a reader is given
    lesion_prob: np.ndarray
    uncertainty: np.ndarray | None  # per-voxel std over samples (model range); None if 1 sample
    lesion_source: str  # what guided the lesion term: predicted | user | oracle | none
    prepared: PreparedCase
    fused_native: np.ndarray | None = None  # native intensities on the MRI's input grid
    timings: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)  # everything run.json needs
    lesion_guide: np.ndarray | None = None  # the mask that guided the lesion term (bool)
    # the lesion head's post-processing: `lesion_mask()` and the evaluation harness
    # (`evaluation.methods.mask_rule_of`) clean `lesion_prob` with it
    mask_rule: LesionMaskRule = field(default_factory=LesionMaskRule)

    def lesion_mask(self) -> np.ndarray:
        """The predicted lesion mask: `lesion_prob` >= 0.5 cleaned by the head's own
        `LesionMaskRule` (`nn.lesion_mask.clean_mask`, as guidance and evaluation make it)."""
        return self.mask_rule.apply(self.lesion_prob, self.prepared.spacing, 0.5, self.prepared.mri)

    def calibrated_lesion_prob(self, mask: np.ndarray | None = None) -> np.ndarray:
        """The lesion probability a reader is given (`lesion_prob.nii.gz`): `lesion_prob` with
        the head's near-mask temperature within 10 mm of its mask (`mask`, default
        `lesion_mask()`; `LesionMaskRule.calibrated`); `lesion_prob` itself for a head
        calibrated with one temperature."""
        if self.mask_rule.near_logit_scale == 1.0:
            return self.lesion_prob
        m = self.lesion_mask() if mask is None else mask
        return self.mask_rule.calibrated(self.lesion_prob, m, self.prepared.spacing)


# --------------------------------------------------------------------------- fusion


def _lesion_for(prepared: PreparedCase, lesion: LesionMode) -> np.ndarray | None:
    if lesion == LesionMode.predicted:
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
    guidance: GuidanceConfig | None = None,
    steps: int = DEFAULT_STEPS,
    samples: int = 1,
    seed: int = 0,
    lesion: LesionMode | str = LesionMode.predicted,
    patch_size: tuple[int, ...] | None = None,
    window: WindowMode | str = WindowMode.auto,
    overlap: float = 0.5,
    progress: ProgressFn | None = None,
    precision: str = "auto",
    channels_last: bool | None = None,
) -> FusionResult:
    """Fuse a prepared case with a loaded `FusionModel` (the evaluation harness's entry point).

    `samples` > 1 runs that many samples in one batch (different noise from one generator
    seeded with `seed`): `fused` is their mean, `uncertainty` their per-voxel std, and
    `lesion_prob` the mean of the head's probabilities. `lesion`: "predicted" (default; the
    head's own mask at t = T/2 guides, never the ground truth), "user" (the case's lesion mask
    was given by the user) or "oracle" (the case's ground-truth mask; label results "oracle").
    Volumes larger than `patch_size` (the training patch) go through sliding windows
    (`window="sliding"`), or through the network in one call (`window="whole"`: about 2-3x
    cheaper, the same ROI-SSIM on the validation cases, but the tokens and attention then see a
    larger field than in training); `"auto"` (default) is whole up to `WHOLE_MAX_VOXELS`.

    Guidance: `guidance` (a resolved `GuidanceConfig`, as the CLI passes it; `preset` then only
    names it in run.json), else the preset `preset` with `overrides`.

    `precision`: "auto" runs the networks under bf16 autocast where the device has native bf16
    (CPU: AMX-BF16 / AVX512-BF16, detected at run time; `nn.precision`), float32 elsewhere;
    "fp32" or "bf16" force one. The sampler's arithmetic and the guidance losses stay float32
    (docs/SPEED.md: what bf16 changes in ROI-SSIM, measured). `channels_last`: sample with a
    channels_last_3d copy of the model (None: exactly when bf16 runs on a CPU 3D model, where it
    is faster; float32 is slower with it).

    A head with sequence slots reads the case's MRI sequence (`prepared.mri_contrast`; unknown
    when None) throughout.
    """
    from clinfuse.diffusion.guidance import load_preset
    from clinfuse.nn.lesion_head import told_contrast

    cfg = load_preset(guidance if guidance is not None else preset, overrides)
    lesion = LesionMode.parse(lesion, "lesion")
    window = WindowMode.parse(window, "window")
    if window == WindowMode.auto:
        whole = int(np.prod(prepared.shape)) * max(1, samples) <= WHOLE_MAX_VOXELS
        window = WindowMode.whole if whole else WindowMode.sliding
    if samples < 1:
        raise ClinfuseInputError(f"samples must be >= 1, got {samples}")
    if steps < 1:
        raise ClinfuseInputError(f"steps must be >= 1, got {steps}")
    lesion_mask = _lesion_for(prepared, lesion)
    with told_contrast(model, prepared.mri_contrast):  # the sequence-aware head reads it
        return _fuse_prepared(
            prepared,
            model,
            cfg,
            preset=preset,
            steps=steps,
            samples=samples,
            seed=seed,
            lesion=lesion,
            lesion_mask=lesion_mask,
            patch_size=patch_size,
            window=window,
            overlap=overlap,
            progress=progress,
            precision=precision,
            channels_last=channels_last,
        )


def _fuse_prepared(
    prepared: PreparedCase,
    model: Any,
    cfg: GuidanceConfig,
    *,
    preset: str,
    steps: int,
    samples: int,
    seed: int,
    lesion: LesionMode,
    lesion_mask: np.ndarray | None,
    patch_size: tuple[int, ...] | None,
    window: WindowMode,
    overlap: float,
    progress: ProgressFn | None,
    precision: str,
    channels_last: bool | None,
) -> FusionResult:
    """`fuse_prepared` once its options are checked (the head told the case's sequence)."""
    import torch

    from clinfuse.baselines.composite import roi_composite
    from clinfuse.diffusion.guidance import guided_sample, head_mask_rule, uncertainty_blend
    from clinfuse.diffusion.schedule import NoiseSchedule
    from clinfuse.diffusion.sliding import SlidingWindowModel, pad_to, padded_shape
    from clinfuse.model_range import MODEL_RANGE
    from clinfuse.nn.precision import AutocastModel, for_sampling

    t0 = time.perf_counter()
    device = next(model.parameters()).device
    shape = prepared.shape
    multiple = int(getattr(model, "size_multiple", 1))
    sliding = (
        window == WindowMode.sliding
        and patch_size is not None
        and any(s > p for s, p in zip(shape, patch_size, strict=True))
    )
    grid = padded_shape(shape, multiple, patch_size if sliding else None)
    run_model = for_sampling(model, precision, channels_last)
    net: Any = SlidingWindowModel(run_model, patch_size, overlap=overlap) if sliding else run_model
    net = AutocastModel(net, precision, channels_last=run_model is not model)

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
    estimate = None
    if progress is not None:  # the note before sampling: grid, voxels and expected time
        from clinfuse.pipeline.estimate import estimate_sampling

        estimate = estimate_sampling(
            net,
            cond,
            masks,
            steps=steps,
            num_train_steps=model.config.num_train_steps,
            guidance=cfg,
        )
        info = {"grid": list(grid), "voxels": int(np.prod(grid)) * samples, **estimate}
        info.update(spacing=list(prepared.spacing), sliding=sliding)  # for the hint
        progress(0, steps, info)
    res = guided_sample(
        net,
        cond,
        masks,
        schedule,
        steps=steps,
        guidance=cfg,
        generator=generator,
        lesion_mask=lesion_t,
        lesion_source="oracle" if lesion == LesionMode.oracle else "user",  # type: ignore[arg-type]
        spacing=prepared.spacing,
        progress=progress,
    )
    t_sample = time.perf_counter() - t0
    crop = (slice(None), 0, *(slice(0, s) for s in shape))
    fused_s = res.fused[crop].double()  # (samples, *shape)
    guide = None
    if res.lesion_target is not None:
        guide = res.lesion_target.expand(samples, 1, *grid)[crop].any(0).cpu().numpy()
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
        "precision": net.precision,
        "channels_last": net.channels_last,
        "samples": int(samples),
        "seed": int(seed),
        "lesion_source": str(res.lesion_source),
        "window": str(window),
        "sliding_window": {"patch": list(patch_size), "overlap": overlap} if sliding else None,
        "padded_grid": list(grid),
        "mask_source": dict(prepared.mask_source),
        # the MRI sequence as given (None: unknown) and whether this model's head reads it
        "mri_contrast": {
            "given": prepared.mri_contrast,
            "read_by_lesion_head": bool(getattr(model.lesion_head, "reads_contrast", False)),
        },
        "guidance_history": res.history,
        "estimate": estimate,
    }
    return FusionResult(
        case_id=prepared.case_id,
        fused=fused.float().cpu().numpy(),
        lesion_prob=prob_s.mean(0).float().cpu().numpy(),
        uncertainty=None if std is None else std.float().cpu().numpy(),
        lesion_source=str(res.lesion_source),
        prepared=prepared,
        timings={"sampling_s": t_sample, "per_step_s": t_sample / steps},
        record=record,
        lesion_guide=guide,
        mask_rule=head_mask_rule(model),
    )


def _prepared_folder(path: Path) -> PreparedCase | None:
    """A folder written by `clinfuse preprocess` (one case folder, or its output root with a
    single case) as a `PreparedCase`; None when `path` is not such a folder."""
    from clinfuse.preprocess.pipeline import (
        PREPARED_MANIFEST,
        SIDECAR,
        load_prepared,
        load_prepared_dataset,
    )

    if (path / SIDECAR).is_file():
        return load_prepared(path)
    if (path / PREPARED_MANIFEST).is_file() and any(path.glob(f"*/{SIDECAR}")):
        cases = load_prepared_dataset(path)
        if len(cases) != 1:
            names = ", ".join(str(path / c.case_id) for c in cases[:3])
            raise ClinfuseInputError(
                f"holds {len(cases)} preprocessed cases; fuse one case folder at a time "
                f"(e.g. {names})",
                path,
            )
        return cases[0]
    return None


def _refuse_prepared_files(paths: Mapping[str, Any]) -> None:
    """An image from a `clinfuse preprocess` folder is in the model range, not in MRI units or
    HU (its CT would show "no skull"): say what to pass instead."""
    from clinfuse.preprocess.pipeline import SIDECAR

    for role in ("mri", "ct"):
        p = Path(paths[role])
        folder = p if p.is_dir() else p.parent
        if (folder / SIDECAR).is_file():
            raise ClinfuseInputError(
                f"--{role} is an image written by `clinfuse preprocess` (model range, not the "
                f"original intensities); pass that case folder as --prepared {folder}, or the "
                "original MRI and CT files as --mri/--ct",
                p,
            )


def _case_from(case_or_paths: Case | Mapping[str, Any] | str | Path) -> Case | PreparedCase:
    from clinfuse.io.dataset import load_case

    if isinstance(case_or_paths, Case | PreparedCase):
        return case_or_paths
    if isinstance(case_or_paths, Mapping):
        paths = {k: v for k, v in case_or_paths.items() if v is not None}
        for role in ("mri", "ct"):
            if role not in paths:
                raise ClinfuseInputError(f"no {role.upper()} given (--{role})")
        for role, p in paths.items():
            if role in ("mri", "ct", "brain", "bone", "lesion") and not Path(p).exists():
                raise ClinfuseInputError(f"{role} input not found", p)
        _refuse_prepared_files(paths)
        is_png = str(paths["mri"]).lower().endswith(".png")
        kind = paths.pop("ct_kind", "display" if is_png else "hu")
        return load_case(**paths, ct_kind=kind)
    from clinfuse.io.dataset import load_dataset

    folder = Path(case_or_paths)
    if not folder.exists():
        raise ClinfuseInputError("case folder not found", folder)
    prepared = _prepared_folder(folder) if folder.is_dir() else None
    if prepared is not None:
        return prepared
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
    case_or_paths: Case | PreparedCase | Mapping[str, Any] | str | Path,
    *,
    checkpoint: str | Path | None = None,
    preset: str = "stroke",
    overrides: Mapping[str, Any] | None = None,
    guidance: GuidanceConfig | None = None,
    steps: int = DEFAULT_STEPS,
    samples: int = 1,
    seed: int = 0,
    device: str = "cpu",
    window: WindowMode | str = WindowMode.auto,
    progress: ProgressFn | None = None,
    precision: str = "auto",
    spacing: float | tuple[float, ...] | None = None,
    register: bool = False,
    detail: bool = True,
    output_units: OutputUnits | str = OutputUnits.model,
    mri_contrast: str | None = None,
) -> FusionResult:
    """Fuse one case: load, preprocess (missing masks automatic), guided sampling, map back.

    `case_or_paths`: a `Case`, a mapping `{"mri": path, "ct": path, "brain"/"bone"/"lesion":
    path or None}` (PNG pairs are read as display-windowed CT), a case folder, or a folder
    written by `clinfuse preprocess` (or a `PreparedCase`: used as prepared). Everything that
    can be wrong with the inputs is checked before sampling starts: missing or mismatched files,
    an unknown preset, a checkpoint of the wrong dimension, a lesion mask outside the brain. A
    lesion mask given with the case guides the lesion term ("user"); without one the lesion
    head's own prediction does. `guidance` / `preset` / `overrides` / `precision`: as
    `fuse_prepared`.

    `spacing` (mm): the working resolution the model fuses at; the output is still on the MRI's
    grid. Then, with `detail` (default), each ROI's fine structure at the MRI's resolution is
    taken back from its source (`preprocess.detail.restore_detail`: MRI in the brain,
    bone-window CT in the skull). `register`: rigid CT->MRI registration first (SimpleITK;
    the transform is in run.json). `output_units`: "model" (default; the model range shown as
    [0, 1], `native.DISPLAY_RANGE`) or "source" (HU in the bone mask, MRI units elsewhere).
    `result.fused_native` holds the output on the MRI's grid in those units. `mri_contrast`:
    the MRI sequence (`choices.MRI_CONTRASTS`, `fuse --mri-contrast`), read by a lesion head
    with sequence slots; None keeps what the case says (a dataset's `mri_contrast`), else
    unknown.
    """
    from clinfuse.diffusion.guidance import load_preset
    from clinfuse.nn.precision import resolve_precision
    from clinfuse.pipeline.native import (
        DISPLAY_RANGE,
        fused_on_mri_grid,
        model_to_output,
        native_prepared,
        resampled_by_spacing,
    )
    from clinfuse.preprocess.pipeline import preprocess_case, to_native

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # unknown preset / bad override: fail before any work; resolved once from here on
    guidance = load_preset(guidance if guidance is not None else preset, overrides)
    units = OutputUnits.parse(output_units, "--output-units")
    device = resolve_device(device)
    resolve_precision(precision, device)  # a bad value fails before any work
    contrast = parse_mri_contrast(mri_contrast, "--mri-contrast")
    loaded_case = _case_from(case_or_paths)
    if mri_contrast is not None:  # said by the caller: replaces what the case says
        if isinstance(loaded_case, PreparedCase):
            loaded_case = replace(
                loaded_case, record={**loaded_case.record, "mri_contrast": contrast}
            )
        else:
            loaded_case = replace(loaded_case, meta={**loaded_case.meta, "mri_contrast": contrast})
    case: Case | None = None
    if isinstance(loaded_case, PreparedCase):
        if spacing is not None or register:
            raise ClinfuseInputError(
                "the case is already preprocessed: --spacing and --register apply to the "
                "original MRI and CT (pass those as --mri/--ct)",
                loaded_case.record.get("sources", {}).get("mri"),
            )
        prepared = loaded_case
        sources = {k: str(v) for k, v in prepared.record.get("sources", {}).items()}
    else:
        case = loaded_case
        prepared = preprocess_case(case, spacing=spacing, register=register)
        sources = dict(case.sources)
    timings["preprocess_s"] = time.perf_counter() - t0
    check_lesion_in_brain(prepared, sources.get("lesion"))
    t1 = time.perf_counter()
    loaded = load_model(checkpoint, prepared.ndim, device)
    timings["load_model_s"] = time.perf_counter() - t1
    has_lesion = prepared.lesion is not None and bool(prepared.lesion.any())
    lesion = LesionMode.user if has_lesion else LesionMode.predicted
    result = fuse_prepared(
        prepared,
        loaded.model,
        preset=preset,
        guidance=guidance,
        steps=steps,
        samples=samples,
        seed=seed,
        lesion=lesion,
        patch_size=loaded.patch_size,
        window=window,
        progress=progress,
        precision=precision,
    )
    t2 = time.perf_counter()
    native = None
    if detail and case is not None and resampled_by_spacing(prepared) and prepared.ndim == 3:
        native = native_prepared(case, prepared)  # the sources on the MRI's own grid
    on_grid, grid_info = fused_on_mri_grid(result.fused, prepared, native)
    if not detail:
        grid_info["detail"] = "off (--no-detail)"
    elif case is None and resampled_by_spacing(prepared):
        grid_info["detail"] = "not available (a preprocessed folder has no native sources)"
    if units == OutputUnits.model:
        result.fused_native = model_to_output(on_grid)
        output = {"units": "model", "range": list(DISPLAY_RANGE)}
        output["mapping"] = "model range [-2, 2] -> [0, 1] linear (0 = air)"
    else:
        if native is not None:
            result.fused_native = to_native(on_grid, native)
        else:
            result.fused_native = to_native(result.fused, prepared)
        output = {"units": "source", "mapping": "HU in the bone mask, MRI units elsewhere"}
    if prepared.ndim == 2:  # the 2D output is a PNG whatever the units
        output = {"units": "display", "range": [0, 255], "mapping": "model range -> 0..255"}
    timings["to_native_s"] = time.perf_counter() - t2
    result.timings = {**timings, **result.timings, "total_s": time.perf_counter() - t0}
    grid_rec = prepared.record.get("grid", {})
    result.record.update(
        {
            "case_id": prepared.case_id,
            "inputs": {
                role: {"path": str(Path(p).resolve()), "sha256": sha256_of(p)}
                for role, p in sources.items()
                if Path(p).exists()
            },
            "checkpoint": {"path": loaded.path, "sha256": loaded.sha256, "step": loaded.step},
            "device": device,
            "output": {**output, **grid_info},
            "working_spacing": grid_rec.get("spacing", list(prepared.spacing)),
            # what preprocessing did to the inputs (CT resampled onto the MRI grid, ...)
            "preprocessing": {
                "from_prepared_folder": (
                    str(Path(case_or_paths).resolve())
                    if case is None and isinstance(case_or_paths, str | Path)
                    else case is None
                ),
                "spacing": None if spacing is None else np.atleast_1d(spacing).tolist(),
                "ct_resampled": bool(prepared.record.get("ct_resampled", False)),
                "reoriented": bool(prepared.record.get("reoriented", False)),
                "registration": prepared.record.get("registration"),
                "notes": list(prepared.record.get("notes", [])),
            },
        }
    )
    return result


# --------------------------------------------------------------------------- the evaluation method


def clinfuse_method_factory(
    checkpoint: str | Path | None = None,
    preset: str = "stroke",
    steps: int = DEFAULT_STEPS,
    samples: int = 1,
    seed: int = 0,
    lesion: str = "predicted",
    device: str = "cpu",
    window: str = "auto",
    precision: str = "auto",
    **overrides: Any,
) -> Callable[[PreparedCase], FusionResult]:
    """`clinfuse evaluate --method clinfuse --checkpoint CKPT --preset stroke [--option k=v]`.

    Options besides these are guidance overrides (`mode`, `eta`, `alpha`, ...). Every option
    and the checkpoint are checked here, before any case (a given checkpoint is loaded now;
    the shipped default on the first case); its dimension must match the cases'.
    `lesion=oracle` guides with the ground-truth mask: tables made so must say "oracle". The
    CLI registers this factory as the method "clinfuse" (`evaluation.methods.register_method`).
    """
    from clinfuse.diffusion.guidance import load_preset

    # bad preset / override: fail before the first case; resolved once for every case
    guidance = load_preset(preset, overrides, overrides_source="--option")
    mode = LesionMode.parse(lesion, "--option lesion")
    if mode == LesionMode.user:
        raise ClinfuseInputError("--option lesion must be 'predicted' or 'oracle', got 'user'")
    win = WindowMode.parse(window, "--option window")
    device = resolve_device(device)
    from clinfuse.nn.precision import resolve_precision

    resolve_precision(str(precision), device)  # --option precision=...: checked up front
    cache: dict[int, LoadedModel] = {}
    if checkpoint is not None:
        # loaded now, so a bad checkpoint fails before `evaluate` creates its results folder;
        # a case of the other dimension then gets load_model's dimension error
        eager = load_model(checkpoint, None, device)
        cache[eager.spatial_dims] = eager

    def method(prepared: PreparedCase) -> FusionResult:
        if prepared.ndim not in cache:
            cache[prepared.ndim] = load_model(checkpoint, prepared.ndim, device)
        lm = cache[prepared.ndim]
        return fuse_prepared(
            prepared,
            lm.model,
            preset=preset,
            guidance=guidance,
            steps=int(steps),
            samples=int(samples),
            seed=int(seed),
            lesion=mode,
            patch_size=lm.patch_size,
            window=win,
            precision=str(precision),
        )

    return method
