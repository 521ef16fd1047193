"""ROI-guided DDIM sampling (Algorithm 1 of the proposal), its two modes and the disease presets.

Owns `GuidanceConfig`, `load_preset`, `roi_loss`, `guided_sample` and `uncertainty_blend`.

Algorithm 1 -> code (search for "Alg.1 line N"):

| line | proposal                                   | here                                        |
|------|--------------------------------------------|---------------------------------------------|
| 1    | x_T ~ N(0, I)                              | `torch.randn(..., generator=generator)`     |
| 2    | c_M, c_C = E_MRI(M), E_CT(C)               | `tokens = model.encode(cond)` (once)        |
| 3    | for t = T .. 1                             | loop over `ddim_timesteps(T, steps)`        |
| 4    | eps = UNet(x_t, t, [c_M, c_C])             | `model(x, t, cond, tokens)` -> x̂0, ε̂        |
| 5    | x_{t-1} = DDIM_step(x_t, eps, t)           | `ddim_step(x, x̂0, ε̂, t, t_prev, schedule)`  |
| 7    | if t == T/2: S_lesion = LesionHead(...)    | first step with t <= T/2: head on x̂0        |
| 10   | L_brain = alpha (1 - SSIM(x·M_brain, M))   | `roi_loss` brain term (masked SSIM vs MRI)  |
| 11   | L_bone = beta (1 - SSIM(x·M_bone, C))      | `roi_loss` bone term (vs bone-window CT)    |
| 12   | L_lesion = gamma (Dice+NSD+HD95 surr.)     | `roi_loss` lesion term (`lesion_loss`)      |
| 15   | x_{t-1} -= eta grad(L)                     | mode "xt": on x_{t-1}; mode "x0": on x̂0     |
| 17   | return x_0                                 | `GuidedResult.fused`                        |

Symbols: T = `schedule.num_steps` (1000), x̂0 = `x0_hat`, ε̂ = `eps_hat`, η = `GuidanceConfig.eta`
(guidance strength; the DDIM stochasticity is fixed at 0, i.e. deterministic DDIM).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from clinfuse.errors import ClinfuseInputError

GuidanceMode = Literal["xt", "x0"]
LesionSource = Literal["user", "oracle", "predicted", "rejected", "none"]

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs" / "presets"
MODEL_RANGE = (-2.0, 2.0)

ProgressFn = Callable[[int, int, dict[str, Any]], None]
"""`progress(step_index, n_steps, info)`: called after every DDIM step (info: t, losses)."""


@dataclass(frozen=True)
class GuidanceConfig:
    """Weights, strength, mode and per-term schedule of the ROI guidance.

    Windows are fractions of the trajectory, p = 1 - t/T: 0 at the first step (pure noise), 1 at
    the end. A term acts while `lo <= p <= hi`; the lesion term defaults to (0.5, 1.0), i.e. from
    t = T/2 on, because S_lesion only exists from Algorithm 1 line 7.
    """

    alpha: float = 1.0  # brain term weight (masked SSIM vs MRI)
    beta: float = 1.2  # bone term weight (masked SSIM vs bone-window CT)
    gamma: float = 3.0  # lesion term weight (soft Dice + NSD + HD95 surrogates)
    eta: float = 0.02  # guidance step size, per voxel in model-range units (see voxel_scaled)
    mode: GuidanceMode = "x0"
    n_inner: int = 10  # gradient steps on x̂0 per DDIM step (mode "x0" only; docs/GUIDANCE.md)
    # the lesion term joins only the first `lesion_inner` of those steps: each evaluation is a
    # lesion-head forward + backward over the volume, the SSIM terms are cheap
    lesion_inner: int = 1
    brain_window: tuple[float, float] = (0.0, 1.0)
    bone_window: tuple[float, float] = (0.0, 1.0)
    lesion_window: tuple[float, float] = (0.5, 1.0)
    # True: gradient of the ROI-*summed* loss (mean loss x ROI voxel count), so eta is a per-voxel
    # step that does not shrink as the volume grows; False: the literal mean form of Algorithm 1.
    voxel_scaled: bool = True
    lesion_threshold: float = 0.5  # S_lesion > threshold -> predicted guiding mask
    # Plausibility gate on the *predicted* mask: larger than this share of the brain mask, it is
    # rejected and the lesion term stays off (source "rejected"). A weak head's false positives
    # otherwise repaint large parts of the brain (measured: brain ROI-SSIM 0.994 -> 0.716 on a
    # phantom where the head called ~25 % of the brain lesion). 1.0 disables the gate.
    max_predicted_fraction: float = 0.1
    # The lesion term moves only brain voxels within this distance (mm) of the guiding mask: it
    # sharpens the lesion and its border, it does not repaint distant brain to silence the head's
    # false positives there (measured on one phantom: brain ROI-SSIM 0.716 with the whole brain
    # movable, docs/GUIDANCE.md). 0: the whole brain (the literal form).
    lesion_zone_mm: float = 10.0
    tau_mm: float = 2.0  # NSD tolerance of the lesion surrogate
    # 0: off. s > 0: blend the ensemble mean toward the ROI composite where the ensemble std is
    # high (weight min(1, s * std / median ROI std)); needs samples > 1 (see uncertainty_blend).
    uncertainty_blend: float = 0.0
    clip_x0: bool = True  # clamp x̂0 to the model range [-2, 2] before and after guidance
    # Air suppression after sampling: where every source is within this of the model-range
    # minimum (air in MRI and CT), the output copies the sources' maximum there instead of the
    # sampler's residual noise, which no ROI term constrains. 0 disables (pipeline.fuse_prepared).
    air_threshold: float = 0.05

    def validate(self, source: str | Path | None = None) -> None:
        """Raise `ClinfuseInputError` for values a user could have typed wrongly."""
        if self.mode not in ("xt", "x0"):
            raise ClinfuseInputError(
                f"guidance mode must be 'xt' or 'x0', got {self.mode!r}", source
            )
        for name in ("alpha", "beta", "gamma", "eta", "uncertainty_blend", "air_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v >= 0 and v == v):
                raise ClinfuseInputError(f"{name} must be a number >= 0, got {v!r}", source)
        for name in ("n_inner", "lesion_inner"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ClinfuseInputError(f"{name} must be an integer >= 1, got {v!r}", source)
        for name in ("brain_window", "bone_window", "lesion_window"):
            lo, hi = getattr(self, name)
            if not (0.0 <= lo <= hi <= 1.0):
                raise ClinfuseInputError(
                    f"{name} must be [lo, hi] with 0 <= lo <= hi <= 1, got {[lo, hi]}", source
                )
        if not 0.0 < self.lesion_threshold < 1.0:
            raise ClinfuseInputError("lesion_threshold must be in (0, 1)", source)
        if not (self.lesion_zone_mm >= 0.0):
            raise ClinfuseInputError("lesion_zone_mm must be >= 0", source)
        if not 0.0 < self.max_predicted_fraction <= 1.0:
            raise ClinfuseInputError("max_predicted_fraction must be in (0, 1]", source)

    def weights_at(self, t: int, num_train: int) -> tuple[float, float, float]:
        """(alpha, beta, gamma) at timestep t, with terms outside their window set to 0."""
        p = 1.0 - t / float(num_train)
        out = []
        for w, (lo, hi) in (
            (self.alpha, self.brain_window),
            (self.beta, self.bone_window),
            (self.gamma, self.lesion_window),
        ):
            out.append(float(w) if lo <= p <= hi else 0.0)
        return out[0], out[1], out[2]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (windows as lists)."""
        d = asdict(self)
        for k in ("brain_window", "bone_window", "lesion_window"):
            d[k] = list(d[k])
        return d


# --------------------------------------------------------------------------- presets


def list_presets() -> list[str]:
    """Names of the disease presets shipped in `clinfuse/configs/presets/`."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


_PRESET_META = ("name", "rationale")
_WINDOW_KEYS = {"brain": "brain_window", "bone": "bone_window", "lesion": "lesion_window"}


def _config_from_mapping(data: Mapping[str, Any], source: str | Path) -> GuidanceConfig:
    """Build a `GuidanceConfig` from a preset mapping; unknown keys are user errors."""
    valid = {f.name for f in fields(GuidanceConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _PRESET_META:
            continue
        if key == "schedule":
            if not isinstance(value, Mapping):
                raise ClinfuseInputError(
                    "'schedule' must map brain/bone/lesion to [lo, hi]", source
                )
            for term, window in value.items():
                if term not in _WINDOW_KEYS:
                    raise ClinfuseInputError(
                        f"unknown schedule term {term!r} (expected brain, bone, lesion)", source
                    )
                kwargs[_WINDOW_KEYS[term]] = _window(window, term, source)
        elif key in valid:
            kwargs[key] = _window(value, key, source) if key.endswith("_window") else value
        else:
            raise ClinfuseInputError(
                f"unknown preset key {key!r}; valid keys: {sorted(valid | {'schedule'})}", source
            )
    cfg = GuidanceConfig(**kwargs)
    cfg.validate(source)
    return cfg


def _window(value: Any, name: str, source: str | Path) -> tuple[float, float]:
    if not (isinstance(value, Sequence) and len(value) == 2):
        raise ClinfuseInputError(f"{name} window must be [lo, hi], got {value!r}", source)
    return float(value[0]), float(value[1])


def load_preset(name: str | Path, overrides: Mapping[str, Any] | None = None) -> GuidanceConfig:
    """Guidance config of a named disease preset (or a YAML path), with overrides applied.

    `overrides` maps `GuidanceConfig` field names to values; `None` values are ignored, so a CLI
    can pass every option. Unknown preset or key -> `ClinfuseInputError` listing what exists.
    """
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ClinfuseInputError(
            f"unknown preset {str(name)!r}; available presets: {', '.join(list_presets())}"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ClinfuseInputError(f"preset is not valid YAML: {err}", path) from err
    if not isinstance(data, Mapping):
        raise ClinfuseInputError("preset must be a YAML mapping", path)
    merged = dict(data)
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
    return _config_from_mapping(merged, path)


def preset_rationale(name: str) -> str:
    """The one-line rationale stored with a preset."""
    data = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text())
    return str(data.get("rationale", ""))


# --------------------------------------------------------------------------- loss (lines 10-12)


@dataclass
class RoiLoss:
    """The guidance objective and its terms. `total` carries the graph; the rest are floats."""

    total: torch.Tensor  # scalar; what the gradient is taken of
    brain: float  # mean over the batch of 1 - SSIM in the brain (nan if the term is off)
    bone: float
    lesion: float


def _zone(target: torch.Tensor, spacing: Sequence[float], cfg: GuidanceConfig) -> torch.Tensor:
    """Voxels within `cfg.lesion_zone_mm` of the guiding mask (scipy EDT in mm), like `target`."""
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    t = target.detach().cpu().numpy().astype(bool)
    zone = np.zeros_like(t)
    for idx in np.ndindex(*t.shape[:2]):  # per item and channel
        if t[idx].any():
            zone[idx] = distance_transform_edt(~t[idx], sampling=spacing) <= cfg.lesion_zone_mm
    return torch.from_numpy(zone).to(target.device)


def _only_inside(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Same values as `x`; gradients flow only through the voxels inside `mask`."""
    m = mask.to(x.dtype)
    return x * m + x.detach() * (1.0 - m)


def roi_loss(
    x: torch.Tensor,
    mri: torch.Tensor,
    ct_bone: torch.Tensor,
    brain: torch.Tensor,
    bone: torch.Tensor,
    lesion_prob: torch.Tensor | None,
    lesion_target: Any,
    spacing: Sequence[float],
    cfg: GuidanceConfig,
    *,
    weights: tuple[float, float, float] | None = None,
) -> RoiLoss:
    """Algorithm 1 lines 10-12 on `x` (B, 1, *S); references and masks broadcast on B.

    `mri`/`ct_bone` (B|1, 1, *S) model range; `brain`/`bone`/`lesion_target` (B|1, 1, *S) bool
    or {0, 1} float (`lesion_target` may be a prepared `losses.lesion.LesionTarget`);
    `lesion_prob` (B, 1, *S) in [0, 1] or None (term skipped). `weights`
    defaults to (alpha, beta, gamma). With `cfg.voxel_scaled` each term is multiplied by its
    ROI voxel count (the summed form) so the per-voxel gradient does not depend on volume size.
    The batch items are summed, so each sample receives its own gradient.
    """
    from clinfuse.losses.lesion import lesion_loss
    from clinfuse.losses.ssim import masked_ssim

    a, b, g = weights if weights is not None else (cfg.alpha, cfg.beta, cfg.gamma)
    total = x.new_zeros(())
    out = {"brain": float("nan"), "bone": float("nan"), "lesion": float("nan")}

    def scale(mask: torch.Tensor) -> float:
        # per-item voxel count of the ROI; 1 for the literal mean form
        return float(mask[0].sum()) if cfg.voxel_scaled else 1.0

    for name, w, ref, mask in (("brain", a, mri, brain), ("bone", b, ct_bone, bone)):
        if w <= 0 or not bool(mask.any()):
            continue
        # Alg.1 lines 10-11: 1 - SSIM(x·M, ref·M) inside the ROI, one value per item -> (B,).
        # x·M: the gradient reaches only voxels inside M, while the SSIM windows still see the
        # real neighbourhood (not zeros, which would invent an edge at the mask border).
        xm = _only_inside(x, mask)
        term = 1.0 - masked_ssim(xm, ref.expand_as(x), mask.to(x.dtype), reduction="none")
        total = total + w * scale(mask) * term.sum()
        out[name] = float(term.detach().mean())
    if g > 0 and lesion_prob is not None and lesion_target is not None:
        from clinfuse.losses.lesion import LesionTarget, prepare_target

        lt = lesion_target
        if not isinstance(lt, LesionTarget):
            lt = prepare_target(lt.expand_as(lesion_prob), spacing, like=lesion_prob)
        if bool(lt.mask.any()):
            # Alg.1 line 12; lesion_loss averages the batch, x B gives each item its own gradient
            term = lesion_loss(lesion_prob, lt, tau=cfg.tau_mm) * lesion_prob.shape[0]
            total = total + g * scale(lt.mask) * term
            out["lesion"] = float(term.detach()) / lesion_prob.shape[0]
    return RoiLoss(total=total, brain=out["brain"], bone=out["bone"], lesion=out["lesion"])


# --------------------------------------------------------------------------- sampling loop


@dataclass
class GuidedResult:
    """Output of `guided_sample`. Tensors are (B, 1, *S) on the input device, detached."""

    fused: torch.Tensor  # x_0, model range
    lesion_prob: torch.Tensor  # sigmoid(lesion_head(fused, cond)) * brain: head on the final image
    lesion_target: torch.Tensor | None  # the mask that guided the lesion term (None: no term)
    # "user", "oracle" (ground truth, say so), "predicted", "rejected" (predicted mask failed the
    # plausibility gate; no lesion term), "none"
    lesion_source: LesionSource
    timesteps: list[int]
    history: list[dict[str, float]] = field(default_factory=list)  # per step: t, losses, time
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _prediction_of(model: Any, prediction: str | None) -> str:
    if prediction is not None:
        return prediction
    cfg = getattr(model, "config", None)
    pred = getattr(cfg, "prediction", None)
    if pred is None and isinstance(cfg, Mapping):
        pred = cfg.get("prediction")
    return str(pred or "x0")


def _timesteps(num_train: int, steps: int) -> list[int]:
    from clinfuse.diffusion.samplers import ddim_timesteps

    return sorted((int(t) for t in ddim_timesteps(num_train, steps)), reverse=True)


def guided_sample(
    model: Any,
    cond: torch.Tensor,
    masks: Mapping[str, torch.Tensor],
    schedule: Any,
    *,
    steps: int = 20,
    guidance: GuidanceConfig | None = None,
    generator: torch.Generator | None = None,
    lesion_mask: torch.Tensor | None = None,
    lesion_source: Literal["user", "oracle"] = "user",
    spacing: Sequence[float] | None = None,
    prediction: str | None = None,
    progress: ProgressFn | None = None,
) -> GuidedResult:
    """ROI-guided DDIM sampling, Algorithm 1. `guidance=None` or `eta=0` is plain DDIM.

    model: `encode(cond)`, `model(x_t, t, cond, tokens)`, `lesion_head(x, cond)` (a
      `FusionModel` or `diffusion.sliding.SlidingWindowModel`). cond: (B, 3, *S) =
      [mri, ct_clinical, ct_bone]; B = number of samples (different noise, same inputs).
    masks: {"brain": (1|B, 1, *S), "bone": (1|B, 1, *S)} bool.
    lesion_mask: the mask that guides the lesion term, from the user; label it "oracle" when it
      is the ground truth. None: the head's prediction at t <= T/2 (line 7) thresholded is used.
    """
    from clinfuse.diffusion.samplers import ddim_step
    from clinfuse.losses.lesion import prepare_target

    cfg = guidance if guidance is not None else replace(GuidanceConfig(), eta=0.0)
    cfg.validate()
    if cond.ndim < 4 or cond.shape[1] != 3:
        raise ValueError(f"cond must be (B, 3, *spatial), got {tuple(cond.shape)}")
    start = time.perf_counter()
    pred_kind = _prediction_of(model, prediction)
    num_train = int(getattr(schedule, "num_steps", 1000))
    ts = _timesteps(num_train, steps)
    spatial = tuple(cond.shape[2:])
    spacing = tuple(spacing) if spacing is not None else (1.0,) * len(spatial)
    bsz = cond.shape[0]
    mri, ct_bone = cond[:, 0:1], cond[:, 2:3]
    brain, bone = masks["brain"].bool(), masks["bone"].bool()
    lo, hi = MODEL_RANGE
    guided = cfg.eta > 0

    target: torch.Tensor | None = None
    source: LesionSource = "none"
    if lesion_mask is not None and cfg.gamma > 0:
        target, source = lesion_mask.bool(), lesion_source
    needs_line7 = guided and cfg.gamma > 0 and target is None
    prepared: Any = None
    movable = brain  # voxels the lesion term may move (narrowed to the lesion zone once known)

    x = torch.randn((bsz, 1, *spatial), generator=generator, device=cond.device)  # Alg.1 line 1
    with torch.no_grad():
        tokens = model.encode(cond)  # Alg.1 line 2: tokens once per case
    history: list[dict[str, float]] = []
    line7_note: dict[str, float] = {}
    for i, t in enumerate(ts):  # Alg.1 line 3
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        tt = torch.full((bsz,), t, dtype=torch.long, device=cond.device)
        with torch.no_grad():
            out = model(x, tt, cond, tokens)  # Alg.1 line 4
            x0_hat, eps_hat = schedule.split_prediction(out, x, tt, pred_kind)
        if cfg.clip_x0:
            # as samplers.sample: clamp x̂0 and recompute ε̂ from it, so eta = 0 is plain DDIM
            x0_hat = x0_hat.clamp(lo, hi)
            eps_hat = schedule.eps_from_x0(x, x0_hat, tt)
        if needs_line7 and t <= num_train // 2:  # Alg.1 line 7: S_lesion at t = T/2
            with torch.no_grad():
                s_lesion = torch.sigmoid(model.lesion_head(x0_hat, cond))
            # Honesty rule: without a user mask, the guiding mask is the head's own prediction
            # from the fused estimate (a function of the inputs only), never the ground truth.
            # lesions are intracranial: the predicted mask is kept inside the brain mask (an
            # input), as a user mask must be (pipeline.check_lesion_in_brain)
            target, source = (s_lesion > cfg.lesion_threshold) & brain, "predicted"
            needs_line7 = False
            frac = float(target.sum()) / max(1.0, float(brain.expand_as(target).sum()))
            if frac > cfg.max_predicted_fraction:  # implausible: guide nothing rather than FPs
                target, source = None, "rejected"
            line7_note = {"predicted_fraction": frac}  # share of the brain, logged
        if target is not None and prepared is None:
            # distance maps of the fixed guiding mask, once per run (scipy EDT in mm)
            prepared = prepare_target(target.expand(bsz, 1, *spatial), spacing, like=cond)
            movable = brain if cfg.lesion_zone_mm <= 0 else brain & _zone(target, spacing, cfg)
        w = cfg.weights_at(t, num_train)
        active = guided and any(v > 0 for v in w)
        info: dict[str, float] = {"t": float(t), **line7_note}
        line7_note = {}

        def objective(
            z: torch.Tensor,
            w: tuple[float, float, float] = w,
            prepared: Any = prepared,
            movable: torch.Tensor = movable,
        ) -> RoiLoss:
            # lesion term needs a differentiable path image -> S_lesion: the head applied to z
            prob = None
            if w[2] > 0 and prepared is not None:
                # the lesion lies in the brain: its gradient moves brain voxels only
                prob = torch.sigmoid(model.lesion_head(_only_inside(z, movable), cond))
            return roi_loss(z, mri, ct_bone, brain, bone, prob, prepared, spacing, cfg, weights=w)

        if active and cfg.mode == "x0":
            # x̂0-space variant: n_inner gradient steps of lines 10-12 on x̂0, then line 5 from
            # the guided x̂0 (ε̂ kept from the network, so the guided x̂0 passes into x_{t-1}).
            z = x0_hat
            for k in range(int(cfg.n_inner)):
                z = z.detach().requires_grad_(True)
                wk = w if k < cfg.lesion_inner else (w[0], w[1], 0.0)
                if not any(v > 0 for v in wk):
                    break  # only the lesion term was on, and its inner steps are done
                loss = objective(z, wk)  # Alg.1 lines 10-12 (on x̂0)
                if k == 0:  # the losses before guidance moved x̂0 (logged)
                    info.update(brain=loss.brain, bone=loss.bone, lesion=loss.lesion)
                (grad,) = torch.autograd.grad(loss.total, z)
                z = z - cfg.eta * grad  # Alg.1 line 15 (on x̂0)
                if cfg.clip_x0:
                    z = z.clamp(lo, hi)
            x0_hat = z.detach()
        with torch.no_grad():
            x = ddim_step(x, x0_hat, eps_hat, tt, t_prev, schedule, eta=0.0, generator=generator)
            # Alg.1 line 5 (deterministic DDIM; the DDIM eta is not the guidance eta)
        if active and cfg.mode == "xt":
            z = x.detach().requires_grad_(True)
            loss = objective(z)  # Alg.1 lines 10-12, evaluated on x_{t-1} as written
            (grad,) = torch.autograd.grad(loss.total, z)
            x = (z - cfg.eta * grad).detach()  # Alg.1 line 15
            info.update(brain=loss.brain, bone=loss.bone, lesion=loss.lesion)
        history.append(info)
        if progress is not None:
            progress(i + 1, len(ts), info)
    fused = x.detach()  # Alg.1 line 17
    if cfg.clip_x0:
        fused = fused.clamp(lo, hi)
    with torch.no_grad():
        lesion_prob = torch.sigmoid(model.lesion_head(fused, cond)) * brain.to(fused.dtype)
    return GuidedResult(
        fused=fused,
        lesion_prob=lesion_prob,
        lesion_target=None if target is None else target.detach(),
        lesion_source=source,
        timesteps=ts,
        history=history,
        config=cfg.to_dict(),
        seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------- uncertainty


def uncertainty_blend(
    mean: torch.Tensor,
    std: torch.Tensor,
    composite: torch.Tensor,
    roi: torch.Tensor,
    strength: float,
) -> torch.Tensor:
    """Blend the ensemble mean toward the ROI composite where the ensemble disagrees.

    Inside `roi` (brain or bone), weight w = min(1, strength * std / median(std in roi)): where
    the samples agree the model's fusion is kept, where they disagree (std several times the
    typical value) the output falls back to the classical composite of the sources. Outside the
    ROI nothing changes. All tensors broadcast; returns a tensor shaped like `mean`.
    """
    if strength <= 0:
        return mean
    roi = roi.bool()
    if not bool(roi.any()):
        return mean
    ref = std[roi.expand_as(std)].median().clamp_min(1e-6)
    w = (strength * std / ref).clamp(0.0, 1.0) * roi.to(mean.dtype)
    return (1.0 - w) * mean + w * composite
