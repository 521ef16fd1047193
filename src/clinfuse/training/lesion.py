"""Train the lesion head on its own, on top of a frozen fusion model (`clinfuse train-lesion`).

Our own code: the field has no ready-made recipe for CLIN-FuseDiff++'s lesion head. Joint
training (`clinfuse train`, gamma > 0) gave the head too few updates on a CPU budget (session 1:
Dice ~0.02 after 250 steps), so it is trained here separately, with the denoiser and encoders
frozen:

- **What it reads** (`ModelConfig.lesion_inputs = "fused"`): one fused image. Per sample, with
  probability `p_x0` the frozen denoiser's x̂0 from the ROI-composite target noised to a random
  t <= T/2 (exactly what guidance shows the head from Algorithm 1 line 7 on), otherwise a clean
  fused image of the same case: the ROI composite or one of the classical baselines (so the head
  can score every method's fused image in the benchmark, not only ours).
- **Patches, batch norm**: lesion-centred 32³ patches (`lesion_fraction` 0.7) give the small
  lesions a usable share of the voxels; batch norm's running statistics make the head trained
  on patches apply unchanged to the whole volumes it guides and scores (instance norm would
  normalise a mostly-air whole volume differently from a patch in the head). Measured: with
  instance norm and whole volumes, or patches, validation Dice stayed 0 for 300-400 steps;
  with batch norm on patches it was learning by step 150. The denoiser is frozen, so each
  case's x̂0 inputs are computed once on the whole volume, `x0_per_case` of them at seeded
  random t, and patches are cut from them; training then costs only the small head.
- **Loss**: MONAI `DiceCELoss` (sigmoid; Dice over the whole batch, so patches without lesion
  do not blow it up) = soft Dice + BCE.
- **Augmentation**: random flips, gain/offset and Gaussian noise on the input.
- **Validation**: Dice at 0.5 on the whole held-out phantoms of the run's split, for three
  inputs (composite, average fusion, x̂0 at t = T/2); the best mean is kept.

The output checkpoint is the input one with the new head (EMA weights and model weights), the
model config's `lesion_*` fields updated, and the training record under `extra.lesion_head`.
It has no optimizer state: it is for inference (`load_checkpoint`, `export_checkpoint`).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.atomic import atomic_write

DEFAULT_BASELINES = ("composite", "average", "weighted", "max", "laplacian", "wavelet")
VAL_INPUTS = ("composite", "average", "x0_T/2")


@dataclass
class LesionTrainConfig:
    """Options of `train_lesion_head` (recorded in the output checkpoint)."""

    steps: int = 4000
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    # 4 levels (receptive field ~40 voxels), 2 residual units: on 60 phantoms this reached a
    # held-out Dice of 0.23 after 1000 steps where 8-16-32-64 x 1 had 0.05 (composite inputs)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    res_units: int = 2
    norm: str = "batch"  # size-independent statistics: train on patches, apply to whole volumes
    p_x0: float = 0.5  # share of samples whose input is the frozen denoiser's x̂0
    t_max_fraction: float = 0.5  # x̂0 from t in [1, t_max_fraction * T] (Alg.1: from T/2 on)
    x0_per_case: int = 8  # precomputed x̂0 volumes per training case
    patch_size: tuple[int, ...] | None = (32, 32, 32)  # None: whole volumes
    # with patch_size: share of patches centred on a lesion voxel. 0.7 over-predicted on whole
    # volumes (3k-16k voxels called lesion for lesions of 50-1800), so most patches are not
    lesion_fraction: float = 0.3
    fused_inputs: tuple[str, ...] = DEFAULT_BASELINES
    val_every: int = 100
    seed: int = 0

    def validate(self) -> None:
        """Raise `ClinfuseInputError` on values that cannot work."""
        from clinfuse.baselines import BASELINES

        bad = [n for n in self.fused_inputs if n not in BASELINES]
        if bad:
            raise ClinfuseInputError(f"unknown fused input(s) {bad}; known: {sorted(BASELINES)}")
        if self.steps < 1 or self.batch_size < 1 or self.val_every < 1:
            raise ClinfuseInputError("steps, batch_size and val_every must be >= 1")
        if not 0.0 <= self.p_x0 <= 1.0 or not 0.0 < self.t_max_fraction <= 1.0:
            raise ClinfuseInputError("p_x0 must be in [0, 1] and t_max_fraction in (0, 1]")
        if self.x0_per_case < 1:
            raise ClinfuseInputError("x0_per_case must be >= 1")
        if self.p_x0 < 1.0 and not self.fused_inputs:
            raise ClinfuseInputError("fused_inputs is empty but p_x0 < 1")


@dataclass
class LesionTrainResult:
    """Where the outputs went and the best validation Dice."""

    checkpoint: Path
    metrics_csv: Path
    best_step: int
    best_dice: float
    val: dict[str, float] = field(default_factory=dict)


def _crop(centre: np.ndarray, patch: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    start = [
        int(np.clip(c - p // 2, 0, n - p)) for c, p, n in zip(centre, patch, shape, strict=True)
    ]
    return tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))


def _augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Flips (same for image and label), gain/offset and noise (image only); x, y (1, 1, *P)."""
    for axis in range(2, x.ndim):
        if torch.rand((), generator=g) < 0.5:
            x, y = x.flip(axis), y.flip(axis)
    gain = 0.9 + 0.2 * torch.rand((), generator=g)
    offset = 0.2 * torch.rand((), generator=g) - 0.1
    sigma = 0.05 * torch.rand((), generator=g)
    x = x * gain + offset + sigma * torch.randn(x.shape, generator=g)
    return x, y


def _dice_at_half(prob: torch.Tensor, gt: torch.Tensor) -> float:
    """The evaluation Dice (`metrics.segmentation.dice`) of the head thresholded at 0.5."""
    from clinfuse.metrics.segmentation import dice

    return float(dice(prob[0, 0].numpy() > 0.5, gt[0, 0].numpy() > 0.5))  # (1, 1, *S)


def train_lesion_head(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    cfg: LesionTrainConfig | None = None,
    *,
    device: str = "cpu",
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> LesionTrainResult:
    """Train a new lesion head (reading the fused image only) on a frozen fusion model.

    checkpoint: a `clinfuse train` checkpoint (full or exported) whose denoiser stays frozen.
    data: the training dataset; split exactly as the checkpoint's run split it (its config),
      so its validation phantoms stay held out. Writes `OUT/lesion_head.ckpt` and
      `OUT/lesion_metrics.csv`.
    """
    from monai.losses import DiceCELoss

    from clinfuse.baselines import BASELINES
    from clinfuse.diffusion.schedule import NoiseSchedule
    from clinfuse.nn.lesion_head import LesionHead
    from clinfuse.nn.model import pad_to_multiple
    from clinfuse.training.checkpoint import (
        FORMAT,
        load_checkpoint,
        read_checkpoint,
    )
    from clinfuse.training.config import config_from_dict, dump_config, to_dict
    from clinfuse.training.data import load_train_data, training_target

    cfg = cfg or LesionTrainConfig()
    cfg.validate()
    out = Path(out)
    target_ckpt = out / "lesion_head.ckpt"
    if target_ckpt.exists() and not overwrite:
        raise ClinfuseInputError("output exists; pass --overwrite to replace it", target_ckpt)
    if Path(checkpoint).resolve() == target_ckpt.resolve():
        raise ClinfuseInputError("the output would overwrite the input checkpoint", checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    say = log or (lambda _msg: None)

    loaded = load_checkpoint(checkpoint, map_location=dev)
    model = loaded.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    mcfg = model.config
    schedule = NoiseSchedule(mcfg.num_train_steps, mcfg.schedule).to(dev)
    train_cfg = loaded.config
    # whole held-out cases (all of them: the head is cheap to validate); the split is the run's
    patch = None if cfg.patch_size is None else tuple(int(p) for p in cfg.patch_size)
    data_cfg = replace(
        train_cfg.data,
        val_patch_size=None,
        max_val_cases=10_000,
        lesion_fraction=cfg.lesion_fraction,
        patch_size=patch if patch is not None else train_cfg.data.patch_size,
    )
    say(f"loading {data} (split as the checkpoint's run)")
    td = load_train_data(data, data_cfg)
    if td.ndim != mcfg.spatial_dims:
        raise ClinfuseInputError(f"{td.ndim}D data for a {mcfg.spatial_dims}D model", data)
    head = LesionHead(
        mcfg.spatial_dims, cfg.channels, cfg.res_units, inputs="fused", norm=cfg.norm
    ).to(dev)
    mult = math.lcm(model.size_multiple, head.size_multiple)
    lo, hi = -2.0, 2.0
    gen = torch.Generator().manual_seed(cfg.seed)
    t_max = max(1, int(cfg.t_max_fraction * mcfg.num_train_steps))

    def padded(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        x = x.reshape(1, -1, *a.shape[-td.ndim :])
        return pad_to_multiple(x, mult)[0]

    def x0_of(cond: torch.Tensor, target: torch.Tensor, t_value: int) -> torch.Tensor:
        t = torch.full((1,), t_value, dtype=torch.long)
        noise = torch.randn(target.shape, generator=gen)
        with torch.no_grad():
            x_t = schedule.q_sample(target.to(dev), t.to(dev), noise.to(dev))
            out = model(x_t, t.to(dev), cond.to(dev))
            x0 = schedule.split_prediction(out, x_t, t.to(dev), mcfg.prediction)[0]
        return x0.clamp(lo, hi).cpu()

    # Every training input, computed once: clean fused images and x̂0 of the frozen denoiser.
    bank: list[dict[str, list[torch.Tensor]]] = []
    labels: list[torch.Tensor] = []
    train_idx = [j for j, c in enumerate(td.train) if c.lesion is not None]
    train_cases = [td.train[j] for j in train_idx]
    if not train_cases:
        raise ClinfuseInputError("no training case has a lesion mask", data)
    t_start = time.perf_counter()
    for case in train_cases:
        cond, target = padded(case.stack()), padded(training_target(case, data_cfg.feather_sigma))
        clean = [padded(np.asarray(BASELINES[n](case))) for n in cfg.fused_inputs]
        t_draws = torch.randint(1, t_max + 1, (cfg.x0_per_case,), generator=gen).tolist()
        bank.append({"clean": clean, "x0": [x0_of(cond, target, int(t)) for t in t_draws]})
        labels.append(padded(case.lesion.astype(np.float32)))  # type: ignore[union-attr]
    say(
        f"{len(train_cases)} training cases ({sum(bool(y.any()) for y in labels)} with a lesion),"
        f" inputs precomputed in {time.perf_counter() - t_start:.0f} s"
    )

    # validation inputs, fixed: composite, average fusion, x̂0 from the target noised to T/2
    val = [c for c in td.val if c.lesion is not None and c.lesion.any()]
    val_inputs: list[dict[str, Any]] = []
    for case in val:
        cond, target = padded(case.stack()), padded(training_target(case, data_cfg.feather_sigma))
        val_inputs.append(
            {
                "composite": target,
                "average": padded(np.asarray(BASELINES["average"](case))),
                "x0_T/2": x0_of(cond, target, mcfg.num_train_steps // 2),
                "gt": padded(case.lesion.astype(np.float32)),  # type: ignore[union-attr]
            }
        )
    say(f"{len(val)} validation cases with a lesion: {[c.case_id for c in val]}")

    def validate() -> dict[str, float]:
        head.eval()
        scores: dict[str, list[float]] = {k: [] for k in VAL_INPUTS}
        with torch.no_grad():
            for item in val_inputs:
                for k in VAL_INPUTS:
                    prob = torch.sigmoid(head(item[k].to(dev))).cpu()
                    scores[k].append(_dice_at_half(prob, item["gt"]))
        head.train()
        return {k: float(np.mean(v)) if v else float("nan") for k, v in scores.items()}

    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr / 20)
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    rng = np.random.default_rng(cfg.seed)
    columns = ["step", "loss", "lr", "seconds", *(f"val_dice_{k}" for k in VAL_INPUTS)]
    rows: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor], dict[str, float]] = (-1.0, 0, {}, {})
    head.train()
    start = time.perf_counter()
    running = 0.0
    for step in range(1, cfg.steps + 1):
        xs, ys = [], []
        for _ in range(cfg.batch_size):
            i = int(rng.integers(len(train_cases)))
            kind = "x0" if (rng.random() < cfg.p_x0 or not cfg.fused_inputs) else "clean"
            choices = bank[i][kind]
            x, y = choices[int(rng.integers(len(choices)))], labels[i]
            if patch is not None:
                centre = td._centre(rng, train_idx[i])
                sl = (slice(None), slice(None), *_crop(centre, patch, x.shape[2:]))
                x, y = x[sl], y[sl]
            x, y = _augment(x, y, gen)
            xs.append(x)
            ys.append(y)
        loss = loss_fn(head(torch.cat(xs).to(dev)), torch.cat(ys).to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if step % cfg.val_every == 0 or step == cfg.steps:
            n = step % cfg.val_every or cfg.val_every
            scores = validate()
            row = {
                "step": step,
                "loss": running / n,
                "lr": sched.get_last_lr()[0],
                "seconds": time.perf_counter() - start,
                **{f"val_dice_{k}": v for k, v in scores.items()},
            }
            running = 0.0
            rows.append(row)
            mean = float(np.nanmean(list(scores.values()))) if val_inputs else -float(row["loss"])
            say(
                f"step {step}: loss {row['loss']:.4f}, val Dice "
                + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
            )
            if mean > best[0]:
                state = {k: v.detach().clone() for k, v in head.state_dict().items()}
                best = (mean, step, state, scores)
            with atomic_write(out / "lesion_metrics.csv") as tmp:
                with open(tmp, "w", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=columns)
                    w.writeheader()
                    w.writerows(rows)

    # the input checkpoint with the new head in place of the old one
    state = read_checkpoint(checkpoint)
    new_model_cfg = {
        **state["config"]["model"],
        "lesion_channels": list(cfg.channels),
        "lesion_res_units": int(cfg.res_units),
        "lesion_inputs": "fused",
        "lesion_norm": cfg.norm,
    }
    tree = {**state["config"], "model": new_model_cfg}
    new_config = config_from_dict(tree, str(checkpoint))
    head_weights = {k: v.cpu() for k, v in best[2].items()}
    ema = {k: v for k, v in state["ema"].items() if not k.startswith("module.lesion_head.")}
    ema.update({f"module.lesion_head.{k}": v for k, v in head_weights.items()})
    raw = {k: v for k, v in state.get("model", {}).items() if not k.startswith("lesion_head.")}
    if raw:
        raw.update({f"lesion_head.{k}": v for k, v in head_weights.items()})
    record = {
        "source_checkpoint": str(checkpoint),
        "source_step": int(state["step"]),
        "data": str(data),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "best_step": best[1],
        "val_dice": best[3],
        "val_cases": [c.case_id for c in val],
        "seconds": time.perf_counter() - start,
    }
    new_state = {
        **state,
        "format": FORMAT,
        "config": to_dict(new_config),
        "config_yaml": dump_config(new_config),
        "model": raw,
        "ema": ema,
        "optimizer": None,
        "scheduler": None,
        "scaler": None,
        "extra": {**state.get("extra", {}), "lesion_head": record},
    }
    with atomic_write(target_ckpt) as tmp:
        torch.save(new_state, tmp)
    load_checkpoint(target_ckpt)  # the result must load (architecture check)
    return LesionTrainResult(target_ckpt, out / "lesion_metrics.csv", best[1], best[0], best[3])
