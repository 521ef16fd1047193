"""The training loop: L_total = L_diffusion + lambda_roi * L_ROI (MISSION Eq. 2), with mixed
precision, gradient accumulation, EMA, warm-up, DDP, DDIM validation, CSV/TensorBoard logs and
exactly resumable checkpoints.
"""

from __future__ import annotations

import csv
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn
from torch.optim.swa_utils import AveragedModel

from clinfuse.errors import ClinfuseInputError
from clinfuse.losses.roi import mean_ssim_term
from clinfuse.metrics.roi import roi_psnr
from clinfuse.metrics.segmentation import dice
from clinfuse.model_range import DATA_RANGE
from clinfuse.training.checkpoint import (
    build_model,
    ema_weights,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)
from clinfuse.training.config import (
    RESUMABLE_KEYS,
    TrainConfig,
    config_from_dict,
    dump_config,
    to_dict,
)
from clinfuse.training.data import Batch, TrainData, load_train_data
from clinfuse.training.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    setup_distributed,
    teardown_distributed,
)

TRAIN_COLUMNS = [
    "step",
    "loss",
    "loss_diffusion",
    "loss_roi",
    "loss_brain",
    "loss_bone",
    "loss_lesion",
    "lr",
    "grad_norm",
    "grad_norm_lesion",
    "jitter_applied",
    "jitter_fraction",
    "step_seconds",
]
VAL_COLUMNS = [
    "val_loss_diffusion",
    "val_ssim_brain",
    "val_ssim_bone",
    "val_roi_ssim",
    "val_psnr_bone",
    "val_dice_lesion",
]
JITTER_COLUMNS = (
    ["step", "micro", "sample", "case_id", "applied"]
    + [f"t{i}_mm" for i in range(3)]
    + [f"r{i}_deg" for i in range(3)]
)


MAX_SKIPPED_IN_A_ROW = 5  # consecutive non-finite-gradient steps before the run stops


class NonFiniteLossError(ClinfuseInputError):
    """The loss became NaN/Inf: the run stops and keeps its last good checkpoint."""


@dataclass
class TrainResult:
    """What `train` returns. `model` is the raw (non-DDP) model, `ema` its AveragedModel."""

    step: int
    out: Path
    model: nn.Module
    ema: nn.Module
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best_score: float | None
    history: list[dict[str, float]] = field(default_factory=list)


class TrainingObjective(nn.Module):
    """One forward pass of everything that carries gradients, so DDP sees a single `forward`.

    Returns the network output, x̂0 and the lesion logits; the loss arithmetic stays outside.
    """

    def __init__(self, model: nn.Module, schedule: nn.Module, detach_x0_for_lesion: bool) -> None:
        super().__init__()
        self.model = model
        self.schedule = schedule
        self.detach = detach_x0_for_lesion

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, with_lesion: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        tokens = self.model.encode(cond)
        out = self.model(x_t, t, cond, tokens)
        x0_hat, _ = self.schedule.split_prediction(
            out.float(), x_t, t, self.model.config.prediction
        )
        logits = None
        if with_lesion:
            # Detached by default: the lesion term trains the head to read the fused estimate;
            # it must not push the denoiser to paint lesion-friendly intensities (TRAINING.md).
            head_in = x0_hat.detach() if self.detach else x0_hat
            logits = self.model.lesion_head(head_in.to(cond.dtype), cond)
        return out, x0_hat, logits


def _amp_settings(mode: str, device: torch.device) -> tuple[bool, torch.dtype, bool]:
    """(autocast enabled, dtype, use GradScaler). `auto`: bf16 on CPU, fp16 + scaler on CUDA."""
    if mode == "off":
        return False, torch.float32, False
    if mode == "auto":
        mode = "fp16" if device.type == "cuda" else "bf16"
    if mode == "bf16":
        return True, torch.bfloat16, False
    return True, torch.float16, device.type == "cuda"


def _ema_avg_fn(decay: float) -> Any:
    """EMA update for `AveragedModel(multi_avg_fn=...)`, with the usual warm-up
    decay_n = min(decay, (1 + n) / (10 + n)) so short runs are not dominated by the init."""

    @torch.no_grad()
    def update(ema: list[torch.Tensor], cur: list[torch.Tensor], n: torch.Tensor | int) -> None:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        if ema and not ema[0].is_floating_point():  # integer buffers: copy
            for e, c in zip(ema, cur, strict=True):
                e.copy_(c)
            return
        torch._foreach_lerp_(ema, cur, 1.0 - d)

    return update


def _lr_lambda(cfg: TrainConfig) -> Any:
    warm = max(0, cfg.optim.warmup_steps)

    def factor(step: int) -> float:
        # `step` counts optimizer steps already taken; the first update uses factor(0).
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.optim.lr_schedule == "cosine":
            span = max(1, cfg.max_steps - warm)
            prog = min(1.0, (step - warm) / span)
            lo = cfg.optim.min_lr_ratio
            return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * prog))
        return 1.0

    return factor


def _seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, step, micro-batch, rank...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def _lesion_term(logits: torch.Tensor, batch: Batch, cfg: TrainConfig) -> torch.Tensor:
    """gamma's term: Dice + NSD + HD95 surrogates (+ BCE) on cases that have a lesion mask."""
    from clinfuse.losses.lesion import (
        hd95_surrogate_loss,
        nsd_surrogate_loss,
        prepare_target,
        soft_dice_loss,
    )

    logits = logits.float()
    idx = [i for i in range(logits.shape[0]) if bool(batch.has_lesion[i])]
    if not idx:
        return logits.sum() * 0.0
    total = logits.new_zeros(())
    for i in idx:
        prob = torch.sigmoid(logits[i : i + 1])
        target = batch.lesion[i : i + 1]
        lt = prepare_target(target, batch.spacing[i], like=prob)
        # lesion_loss's three terms, with the HD95 surrogate log1p-compressed: it is unbounded
        # and normalised by the lesion's size, so a sliver of lesion at a patch edge made it
        # reach 1e6 in measured runs and swamp the other terms (TRAINING.md).
        term = (
            soft_dice_loss(prob, lt)
            + nsd_surrogate_loss(prob, lt, tau=cfg.roi.lesion_tau_mm)
            + torch.log1p(hd95_surrogate_loss(prob, lt))
        )
        if cfg.roi.lesion_bce_weight:
            term = term + cfg.roi.lesion_bce_weight * F.binary_cross_entropy_with_logits(
                logits[i : i + 1], target
            )
        total = total + term
    return total / len(idx)


def compute_losses(
    objective: nn.Module,
    schedule: nn.Module,
    batch: Batch,
    cfg: TrainConfig,
    generator: torch.Generator,
    amp: tuple[bool, torch.dtype, bool],
    prediction: str,
) -> dict[str, torch.Tensor]:
    """All loss terms for one micro-batch (scalars; `total` carries the gradient)."""
    x0 = batch.target
    device = x0.device
    t = torch.randint(0, schedule.num_steps, (x0.shape[0],), generator=generator, device=device)
    noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
    x_t = schedule.q_sample(x0, t, noise)
    use_lesion = cfg.roi.lambda_roi > 0 and cfg.roi.gamma > 0
    enabled, dtype, _ = amp
    with torch.autocast(device.type, dtype=dtype, enabled=enabled):
        out, x0_hat, logits = objective(x_t, t, batch.cond, use_lesion)
    target = schedule.model_target(x0, noise, t, prediction)
    loss_diff = F.mse_loss(out.float(), target)
    zero = loss_diff * 0.0
    loss_brain = loss_bone = loss_lesion = zero
    if cfg.roi.lambda_roi > 0:
        # L_ROI on the predicted clean image, in fp32 (SSIM's variances are cancellation-prone).
        x0f = x0_hat.float()
        if cfg.roi.alpha:
            loss_brain = mean_ssim_term(x0f, batch.cond[:, 0:1], batch.brain)
        if cfg.roi.beta:
            loss_bone = mean_ssim_term(x0f, batch.cond[:, 2:3], batch.bone)
        if use_lesion and logits is not None:
            loss_lesion = _lesion_term(logits, batch, cfg)
    loss_roi = cfg.roi.alpha * loss_brain + cfg.roi.beta * loss_bone + cfg.roi.gamma * loss_lesion
    total = loss_diff + cfg.roi.lambda_roi * loss_roi
    return {
        "loss": total,
        "loss_diffusion": loss_diff,
        "loss_roi": loss_roi,
        "loss_brain": loss_brain,
        "loss_bone": loss_bone,
        "loss_lesion": loss_lesion,
    }


def _np_mask(x: torch.Tensor) -> np.ndarray:
    return x.squeeze().cpu().numpy() > 0.5


def _roi_psnr(x: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    """`metrics.roi.roi_psnr` in the model range (METRICS.md); NaN for an empty ROI."""
    if not bool((mask > 0.5).any()):
        return math.nan
    return float(
        roi_psnr(x.squeeze().cpu().numpy(), ref.squeeze().cpu().numpy(), _np_mask(mask), DATA_RANGE)
    )


@torch.no_grad()
def validate(
    model: nn.Module,
    schedule: nn.Module,
    batches: list[Batch],
    cfg: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """DDIM sampling on held-out cases with `model` (the EMA weights): diffusion loss at fixed
    noise levels, brain/bone ROI-SSIM, bone ROI-PSNR and the lesion head's Dice."""
    from clinfuse.diffusion.samplers import sample
    from clinfuse.losses.ssim import masked_ssim
    from clinfuse.nn.model import pad_to_multiple

    model.eval()
    prediction = model.config.prediction
    rows: dict[str, list[float]] = {k: [] for k in VAL_COLUMNS}
    mult = model.size_multiple
    for i, cpu_batch in enumerate(batches):
        b = cpu_batch.to(device)
        gen = torch.Generator(device=device).manual_seed(_seed_for(cfg.seed, 7, i))
        cond, crop = pad_to_multiple(b.cond, mult)
        # Diffusion loss at four fixed noise levels (fixed noise): comparable across steps.
        losses = []
        for frac in (0.1, 0.3, 0.6, 0.9):
            t = torch.full((1,), int(frac * (schedule.num_steps - 1)), device=device)
            noise = torch.randn(b.target.shape, generator=gen, device=device)
            x_t = schedule.q_sample(b.target, t, noise)
            x_tp, _ = pad_to_multiple(x_t, mult)
            out = model(x_tp, t, cond)[crop]
            losses.append(
                float(F.mse_loss(out, schedule.model_target(b.target, noise, t, prediction)))
            )
        rows["val_loss_diffusion"].append(float(np.mean(losses)))
        fused_p = sample(
            model,
            cond,
            schedule,
            steps=cfg.diffusion.val_sampling_steps,
            generator=gen,
            clip_x0=cfg.diffusion.clip_x0,
        )
        fused = fused_p[crop]
        mri, ct_bone = b.cond[:, 0:1], b.cond[:, 2:3]
        sb = float(masked_ssim(fused, mri, b.brain)) if bool(b.brain.any()) else math.nan
        so = float(masked_ssim(fused, ct_bone, b.bone)) if bool(b.bone.any()) else math.nan
        rows["val_ssim_brain"].append(sb)
        rows["val_ssim_bone"].append(so)
        rows["val_roi_ssim"].append(float(np.nanmean([sb, so])))
        rows["val_psnr_bone"].append(_roi_psnr(fused, ct_bone, b.bone))
        if bool(b.has_lesion[0]) and bool(b.lesion.any()):
            prob = torch.sigmoid(model.lesion_head(fused_p, cond)[crop].float())
            # the mask as fuse and evaluation make it: p >= 0.5 cleaned by the head's own
            # `LesionMaskRule`; Dice from metrics.segmentation, as evaluation
            pred = model.lesion_head.mask_rule.apply(
                prob.squeeze().cpu().numpy(), b.spacing[0], mri=mri.squeeze().cpu().numpy()
            )
            rows["val_dice_lesion"].append(dice(pred, _np_mask(b.lesion)))
    out = {}
    for k, vals in rows.items():
        finite = [v for v in vals if math.isfinite(v)]
        out[k] = float(np.mean(finite)) if finite else math.nan
    return out


def _truncate_csv(path: Path, last_step: int) -> None:
    """Drop rows logged after `last_step` (a resumed run re-does them)."""
    if not path.is_file():
        return
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= last_step]
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as fh:
        csv.writer(fh).writerows(keep)
    tmp.replace(path)


class _CsvLog:
    """Append-only CSV with a fixed header (written once)."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        if not path.is_file() or path.stat().st_size == 0:
            with path.open("w", newline="") as fh:
                csv.writer(fh).writerow(columns)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as fh:
            w = csv.writer(fh)
            w.writerow([_fmt(row.get(c, "")) for c in self.columns])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def _check_resume_config(config: TrainConfig, saved: TrainConfig, path: Path) -> None:
    a, b = to_dict(config), to_dict(saved)

    def diff(x: Any, y: Any, prefix: str) -> list[str]:
        if isinstance(x, dict) and isinstance(y, dict):
            keys = sorted(set(x) | set(y))
            return [d for k in keys for d in diff(x.get(k), y.get(k), f"{prefix}{k}.")]
        return [] if x == y else [prefix.rstrip(".")]

    changed = [
        k for k in diff(a, b, "") if k not in RESUMABLE_KEYS and not k.startswith("data.path")
    ]
    if changed:
        raise ClinfuseInputError(
            f"cannot resume: the config differs from the checkpoint's in {changed}; only "
            f"{sorted(RESUMABLE_KEYS)} may change (resume with the checkpoint's own config "
            "plus --max-steps)",
            path,
        )


def init_weights(model: nn.Module, path: Path) -> None:
    """Fine-tuning start: the EMA weights of checkpoint `path` (float32). Every denoiser and
    encoder weight must match; the lesion head is taken only when its shapes match.

    A model whose encoders are all GroupNorm (`ModelConfig.encoder_norm` "group") may start from
    a checkpoint with BatchNorm encoders: each BatchNorm's weight and bias become its
    GroupNorm's, and its running statistics are dropped (a new normalisation that fine-tuning
    then adapts to)."""
    state = read_checkpoint(path, map_location="cpu")
    weights = {k: v.float() for k, v in ema_weights(state).items()}
    own = model.state_dict()
    if getattr(getattr(model, "config", None), "encoder_norm", "batch") == "group":
        stats = (".running_mean", ".running_var", ".num_batches_tracked")
        weights = {
            k: v
            for k, v in weights.items()
            if k in own or not (k.startswith("encoder.") and k.endswith(stats))
        }
    head = [k for k in own if k.startswith("lesion_head.")]
    head_fits = all(k in weights and weights[k].shape == own[k].shape for k in head)
    if not head_fits:
        weights = {k: v for k, v in weights.items() if not k.startswith("lesion_head.")}
        weights.update({k: own[k] for k in head})
    calibration = (
        "temperature",
        "min_lesion_ml",
        "min_component_prob",
        "min_lesion_prob",
        "mirror_ghosts",
        "min_peak_prob",
        "near_logit_scale",
    )
    for k in (f"lesion_head.{name}" for name in calibration):
        if k in own:
            weights.setdefault(k, own[k])
    load_weights(model, weights, path)


def _prepare_out(out: Path, resume: Path | None, overwrite: bool, data_path: str | None) -> Path:
    from clinfuse.io.atomic import check_output_dir

    if resume is not None:
        out.mkdir(parents=True, exist_ok=True)
        return out.resolve()
    inputs = [data_path] if data_path else []
    if out.is_dir() and (out / "last.ckpt").exists() and not overwrite:
        raise ClinfuseInputError(
            "this run folder already holds a run; continue it with --resume "
            f"{out / 'last.ckpt'} or pass --overwrite to start again",
            out,
        )
    out = check_output_dir(out, overwrite=overwrite, inputs=inputs)
    for name in ("metrics.csv", "jitter.csv"):
        (out / name).unlink(missing_ok=True)
    return out


def train(
    config: TrainConfig,
    data: TrainData | str | Path | None,
    out: str | Path,
    resume: str | Path | None = None,
    device: str | torch.device = "auto",
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """Train (or resume) a `FusionModel`; see docs/TRAINING.md.

    `data`: a `TrainData` or a dataset path (default: `config.data.path`). Under `torchrun`
    every rank calls this; only rank 0 writes `out`. Returns a `TrainResult`.
    """
    from clinfuse.diffusion.schedule import NoiseSchedule

    info = setup_distributed(device)
    try:
        return _train(config, data, Path(out), resume, info, progress, overwrite, NoiseSchedule)
    finally:
        teardown_distributed(info)


@dataclass
class _Run:
    """One training run's state, built once by `_setup` and advanced by `_optimisation_step`.

    `model` is the raw model (what checkpoints and the EMA read), `objective` the module the
    loss is computed through (DDP-wrapped under torchrun). `extra` travels in checkpoints.
    """

    config: TrainConfig
    info: DistInfo
    out: Path
    data: TrainData
    model: nn.Module
    ema: AveragedModel
    schedule: nn.Module
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    lr_sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp: tuple[bool, torch.dtype, bool]
    accum: int  # micro-batches per optimizer step on each rank
    fusion_params: list[nn.Parameter]  # denoiser + encoders (clipped apart from the head)
    lesion_params: list[nn.Parameter]
    start: int = 0  # the last step already taken (0, or the resumed checkpoint's step)
    extra: dict[str, Any] = field(
        default_factory=lambda: {"best_score": None, "jitter_applied": 0, "jitter_seen": 0}
    )
    last_ckpt: Path | None = None
    best_ckpt: Path | None = None
    skipped_in_a_row: int = 0  # consecutive updates skipped for a non-finite gradient

    @property
    def device(self) -> torch.device:
        return self.info.device

    def checkpoint(self, path: Path, step: int) -> Path:
        """Everything needed to resume exactly, written atomically to `path`."""
        return save_checkpoint(
            path,
            model=self.model,
            ema=self.ema,
            config=self.config,
            step=step,
            optimizer=self.optimizer,
            scheduler=self.lr_sched,
            scaler=self.scaler,
            extra=self.extra,
        )


@dataclass
class _Logs:
    """Rank 0's outputs while training: CSV logs, TensorBoard, the progress bar, validation."""

    val_batches: list[Batch] = field(default_factory=list)
    metrics: _CsvLog | None = None
    jitter: _CsvLog | None = None
    writer: Any = None  # torch.utils.tensorboard.SummaryWriter
    bar: Any = None  # rich.progress.Progress (terminals only)
    task: Any = None
    show_progress: bool = False

    def scalars(self, row: dict[str, Any], step: int) -> None:
        """Finite float values of `row` to TensorBoard (`val_*` under `val/`)."""
        for k, v in row.items():
            if k != "step" and isinstance(v, float) and math.isfinite(v):
                self.writer.add_scalar(k.replace("val_", "val/", 1), v, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.writer is not None:
            self.writer.close()


def _read_resume(
    config: TrainConfig, resume: str | Path | None, device: torch.device
) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume from, checked against `config` (only RESUMABLE_KEYS may
    differ) and refused if it was exported for inference; (None, None) for a fresh run."""
    if resume is None:
        return None, None
    path = Path(resume)
    state = read_checkpoint(path, map_location=device)
    _check_resume_config(config, config_from_dict(state["config"], str(path)), path)
    if state.get("optimizer") is None:
        raise ClinfuseInputError(
            "this checkpoint was exported for inference (no optimizer state); resume from "
            "the run's last.ckpt",
            path,
        )
    return path, state


def _load_data(
    config: TrainConfig, data: TrainData | str | Path | None
) -> tuple[TrainData, str | None]:
    """The training data (a `TrainData`, or loaded from a path / `data.path`) and its path."""
    data_path = None
    if not isinstance(data, TrainData):
        data_path = str(data) if data is not None else config.data.path
        if not data_path:
            raise ClinfuseInputError("no dataset given: pass --data DIR or set data.path")
        data = load_train_data(data_path, config.data)
    model_dims = config.model["spatial_dims"]
    if data.ndim != model_dims:
        raise ClinfuseInputError(
            f"the data is {data.ndim}D but the model is {model_dims}D (model.spatial_dims)",
            data_path,
        )
    return data, data_path


def _setup(
    config: TrainConfig,
    data: TrainData,
    out: Path,
    info: DistInfo,
    schedule_cls: type,
    fine_tune: bool,
) -> _Run:
    """Model (seeded init, or the `init` checkpoint's weights when `fine_tune`), schedule, EMA,
    the (DDP) objective, optimizer, LR schedule, AMP settings and gradient accumulation."""
    dev = info.device
    # Same initial weights on every rank and every run of this seed, without reseeding globally.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.model)
    if fine_tune and config.init:
        init_weights(model, Path(config.init))
    mult = model.size_multiple
    if any(p % mult for p in config.data.patch_size):
        raise ClinfuseInputError(
            f"config key 'data.patch_size' {tuple(config.data.patch_size)}: every size must be "
            f"a multiple of {mult} for this model"
        )
    model.to(dev)
    schedule = schedule_cls(model.config.num_train_steps, model.config.schedule).to(dev)
    ema = AveragedModel(model, multi_avg_fn=_ema_avg_fn(config.ema_decay), use_buffers=True)
    objective: nn.Module = TrainingObjective(model, schedule, config.roi.detach_x0_for_lesion)
    use_lesion = config.roi.lambda_roi > 0 and config.roi.gamma > 0
    if info.enabled:
        objective = nn.parallel.DistributedDataParallel(
            objective,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=not use_lesion,
        )
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.optim.lr,
        betas=tuple(config.optim.betas),
        weight_decay=config.optim.weight_decay,
    )
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    lesion_params = list(model.lesion_head.parameters())
    lesion_ids = {id(p) for p in lesion_params}
    fusion_params = [p for p in model.parameters() if id(p) not in lesion_ids]
    amp = _amp_settings(config.amp, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp[2])
    per_step = config.batch_size * info.world_size
    if config.effective_batch % per_step:
        raise ClinfuseInputError(
            f"effective_batch {config.effective_batch} is not a multiple of batch_size × "
            f"processes = {config.batch_size} × {info.world_size}"
        )
    return _Run(
        config=config,
        info=info,
        out=out,
        data=data,
        model=model,
        ema=ema,
        schedule=schedule,
        objective=objective,
        optimizer=optimizer,
        lr_sched=lr_sched,
        scaler=scaler,
        amp=amp,
        accum=config.effective_batch // per_step,
        fusion_params=fusion_params,
        lesion_params=lesion_params,
        last_ckpt=out / "last.ckpt" if (out / "last.ckpt").exists() else None,
        best_ckpt=out / "best.ckpt" if (out / "best.ckpt").exists() else None,
    )


def _resume(run: _Run, state: dict[str, Any], path: Path) -> None:
    """Continue exactly where checkpoint `state` stopped: weights, EMA, optimizer, LR schedule,
    grad scaler, step and the run's bookkeeping (`extra`)."""
    load_weights(run.model, state["model"], path)
    run.ema.load_state_dict(state["ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.lr_sched.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.start = int(state["step"])
    run.extra.update(state.get("extra", {}))


def _open_logs(run: _Run, show_progress: bool) -> _Logs:
    """Rank 0: config.yaml, split.json, the CSV logs (rows after a resumed step dropped),
    TensorBoard and a progress bar on terminals. Other ranks log nothing."""
    info, out, data, config = run.info, run.out, run.data, run.config
    logs = _Logs(show_progress=show_progress)
    if not info.is_main:
        return logs
    from torch.utils.tensorboard import SummaryWriter

    from clinfuse.io.atomic import write_text_atomic

    write_text_atomic(out / "config.yaml", dump_config(config))
    split = {
        "train": data.train_ids,
        "val": data.val_ids,
        "patients": data.patients,
        "world_size": info.world_size,
        "accumulation": run.accum,
    }
    write_text_atomic(out / "split.json", json.dumps(split, indent=1))
    _truncate_csv(out / "metrics.csv", run.start)
    _truncate_csv(out / "jitter.csv", run.start)
    logs.metrics = _CsvLog(out / "metrics.csv", TRAIN_COLUMNS + VAL_COLUMNS)
    logs.jitter = _CsvLog(out / "jitter.csv", JITTER_COLUMNS)
    logs.writer = SummaryWriter(str(out / "tb"), purge_step=run.start + 1)
    logs.val_batches = data.val_batches()
    if show_progress and Console().is_terminal:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        logs.bar = Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
        )
        logs.bar.start()
        logs.task = logs.bar.add_task("", total=config.max_steps, completed=run.start)
    return logs


def _accumulate(run: _Run, step: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Forward + backward of the step's micro-batches; the loss terms averaged over them and
    over the ranks, and the jitter applied to each sample."""
    config, info, dev = run.config, run.info, run.device
    sums: dict[str, float] = {}
    jit_rows = []
    prediction = run.model.config.prediction
    for micro in range(run.accum):
        # One generator per (seed, step, micro-batch, rank): each rank draws its own
        # shard of patches, and a resumed run redraws exactly the same batches.
        rng = np.random.default_rng([config.seed, step, micro, info.rank])
        gen = torch.Generator(device=dev).manual_seed(
            _seed_for(config.seed, step, micro, info.rank, 1)
        )
        batch = run.data.sample_batch(rng, config.batch_size, config.jitter).to(dev)
        sync = micro == run.accum - 1 or not info.enabled
        ctx = nullcontext() if sync else run.objective.no_sync()
        with ctx:
            losses = compute_losses(
                run.objective, run.schedule, batch, config, gen, run.amp, prediction
            )
            run.scaler.scale(losses["loss"] / run.accum).backward()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) / run.accum
        for j, params in enumerate(batch.jitter):
            jit_rows.append(
                {"step": step, "micro": micro, "sample": j, "case_id": batch.case_ids[j]}
                | params.as_row()
            )
    keys = sorted(sums)
    reduced = all_reduce_mean(torch.tensor([sums[k] for k in keys], device=dev), info)
    return dict(zip(keys, reduced.tolist(), strict=True)), jit_rows


def _update(run: _Run, step: int) -> tuple[float, float]:
    """Clip the gradients (denoiser/encoders and lesion head apart) and take the optimizer,
    EMA and LR-schedule step; an update with a non-finite gradient is skipped (as GradScaler
    does under fp16) and the run stops after MAX_SKIPPED_IN_A_ROW of them. Returns the two
    gradient norms."""
    config, amp = run.config, run.amp
    run.scaler.unscale_(run.optimizer)
    clip = config.optim.grad_clip if config.optim.grad_clip > 0 else float("inf")
    # Clipped per part: with x0_hat detached the lesion head and the denoiser have
    # disjoint losses, and the (unbounded) HD95 surrogate must not shrink the
    # denoiser's step through one global norm.
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.fusion_params, clip))
    grad_norm_lesion = float(torch.nn.utils.clip_grad_norm_(run.lesion_params, clip))
    grads_ok = math.isfinite(grad_norm) and math.isfinite(grad_norm_lesion)
    if not amp[2] and not grads_ok:
        # Finite loss, non-finite gradient (seen every ~20 steps in the 3D model under
        # bf16 autocast on CPU): skip this update as GradScaler does under fp16, and
        # stop only if it keeps happening.
        run.extra["skipped_updates"] = run.extra.get("skipped_updates", 0) + 1
        run.skipped_in_a_row += 1
        part = "denoiser/encoders" if not math.isfinite(grad_norm) else "lesion head"
        if run.info.is_main:
            print(f"step {step}: non-finite gradient in the {part}; update skipped")
        if run.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise NonFiniteLossError(
                f"non-finite gradient norm ({part}) in {run.skipped_in_a_row} consecutive "
                f"steps up to step {step}; stopped. Last good checkpoint: "
                f"{run.last_ckpt or 'none yet'}. Try a lower optim.lr or amp: off.",
                run.out,
            )
        run.optimizer.zero_grad(set_to_none=True)
    else:
        run.skipped_in_a_row = 0
    if grads_ok or amp[2]:
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.ema.update_parameters(run.model)
    run.lr_sched.step()
    return grad_norm, grad_norm_lesion


def _optimisation_step(run: _Run, step: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One optimizer step (gradient accumulation over micro-batches, non-finite loss check,
    clipping, update); returns its metrics.csv row and the jitter rows of its samples."""
    t0 = time.perf_counter()
    run.objective.train()
    run.optimizer.zero_grad(set_to_none=True)
    sums, jit_rows = _accumulate(run, step)
    if not all(math.isfinite(v) for v in sums.values()):
        raise NonFiniteLossError(
            f"non-finite loss at step {step} ("
            + ", ".join(f"{k}={v:.4g}" for k, v in sums.items())
            + f"); stopped before updating the weights. Last good checkpoint: "
            f"{run.last_ckpt or 'none yet'}. Try a lower optim.lr or amp: off.",
            run.out,
        )
    lr = run.optimizer.param_groups[0]["lr"]  # the rate this update used
    grad_norm, grad_norm_lesion = _update(run, step)
    extra = run.extra
    applied = sum(int(r["applied"]) for r in jit_rows)
    extra["jitter_applied"] += applied
    extra["jitter_seen"] += len(jit_rows)
    row: dict[str, Any] = {"step": step, **sums, "lr": lr, "grad_norm": grad_norm}
    row["grad_norm_lesion"] = grad_norm_lesion
    row["jitter_applied"] = applied
    row["jitter_fraction"] = extra["jitter_applied"] / max(1, extra["jitter_seen"])
    row["step_seconds"] = time.perf_counter() - t0
    return row, jit_rows


def _validate_step0(run: _Run, logs: _Logs) -> None:
    """Validation before the first step of a fresh run: the start of the validation curves."""
    if run.start == 0 and run.info.is_main and logs.val_batches:
        vals = validate(run.ema.module, run.schedule, logs.val_batches, run.config, run.device)
        logs.metrics.write({"step": 0, **vals})
        logs.scalars(vals, 0)
    barrier(run.info)


def _validate_and_keep_best(run: _Run, logs: _Logs, step: int, row: dict[str, Any]) -> None:
    """Every `val_every` steps and at the last: rank 0 validates the EMA weights (into `row`)
    and writes best.ckpt when the ROI-SSIM improves; the other ranks wait."""
    config = run.config
    do_val = step % config.val_every == 0 or step == config.max_steps
    if do_val and run.info.is_main and logs.val_batches:
        vals = validate(run.ema.module, run.schedule, logs.val_batches, config, run.device)
        row.update(vals)
        score = vals["val_roi_ssim"]
        best = run.extra["best_score"]
        if math.isfinite(score) and (best is None or score > best):
            run.extra["best_score"] = score
            run.best_ckpt = run.checkpoint(run.out / "best.ckpt", step)
        if logs.show_progress or logs.bar is not None:
            console = logs.bar.console if logs.bar is not None else Console()
            console.print(
                f"step {step}: loss_diffusion={row['loss_diffusion']:.4f} "
                + ", ".join(f"{k}={v:.4f}" for k, v in vals.items() if math.isfinite(v)),
                highlight=False,
            )
    if do_val:
        barrier(run.info)  # the other ranks wait while rank 0 validates


def _log_and_checkpoint(
    run: _Run, logs: _Logs, step: int, row: dict[str, Any], jit_rows: list[dict[str, Any]]
) -> None:
    """Rank 0: the step's rows to metrics.csv, jitter.csv and TensorBoard, last.ckpt every
    `ckpt_every` steps and at the last, and the progress bar."""
    if not run.info.is_main:
        return
    logs.metrics.write(row)
    for r in jit_rows:
        logs.jitter.write(r)
    logs.scalars(row, step)
    if step % run.config.ckpt_every == 0 or step == run.config.max_steps:
        run.last_ckpt = run.checkpoint(run.out / "last.ckpt", step)
    if logs.bar is not None:
        logs.bar.update(logs.task, completed=step, description=f"loss {row['loss']:.4f}")


def _plot(out: Path) -> None:
    """curves.png from metrics.csv; a plot never fails a finished run."""
    try:
        from clinfuse.training.plot import plot_curves

        plot_curves(out / "metrics.csv", out / "curves.png")
    except Exception as err:  # a plot must never fail a finished run
        print(f"warning: could not plot curves: {err}")


def _train(
    config: TrainConfig,
    data: TrainData | str | Path | None,
    out: Path,
    resume: str | Path | None,
    info: DistInfo,
    show_progress: bool,
    overwrite: bool,
    schedule_cls: type,
) -> TrainResult:
    """Setup, resume or fine-tune start, then per step: optimisation, validation (+ best
    checkpoint), logging (+ last checkpoint); finally the curves."""
    resume_path, resume_state = _read_resume(config, resume, info.device)
    train_data, data_path = _load_data(config, data)
    if info.is_main:
        out = _prepare_out(out, resume_path, overwrite, data_path)
    barrier(info)
    # `init` (fine-tuning) applies to a fresh run only; a resumed run has its own weights
    run = _setup(config, train_data, out, info, schedule_cls, fine_tune=resume_state is None)
    if resume_state is not None:
        assert resume_path is not None
        _resume(run, resume_state, resume_path)
    logs = _open_logs(run, show_progress)
    history: list[dict[str, float]] = []
    try:
        _validate_step0(run, logs)
        for step in range(run.start + 1, config.max_steps + 1):
            row, jit_rows = _optimisation_step(run, step)
            _validate_and_keep_best(run, logs, step, row)
            _log_and_checkpoint(run, logs, step, row, jit_rows)
            history.append({k: v for k, v in row.items() if isinstance(v, (int, float))})
    finally:
        logs.close()
    if info.is_main and history:
        _plot(run.out)
    return TrainResult(
        step=max(run.start, config.max_steps),
        out=run.out,
        model=run.model,
        ema=run.ema,
        last_checkpoint=run.last_ckpt,
        best_checkpoint=run.best_ckpt,
        best_score=run.extra["best_score"],
        history=history,
    )
