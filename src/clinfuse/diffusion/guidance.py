"""ROI-guided DDIM sampling (Algorithm 1 of the proposal), its two modes and the disease presets.

Owns `GuidanceConfig`, `load_preset`, `RoiGuide` (Algorithm 1 as a `samplers.Guide`),
`guided_sample` and `uncertainty_blend`. The loop itself is `samplers.sample`; the loss of lines
10-12 is `losses.roi.roi_loss`.

Algorithm 1 -> code (search for "Alg.1 line N"):

| line | proposal                                   | here                                        |
|------|--------------------------------------------|---------------------------------------------|
| 1    | x_T ~ N(0, I)                              | `samplers.sample`: `torch.randn(generator)` |
| 2    | c_M, c_C = E_MRI(M), E_CT(C)               | `samplers.sample`: `model.encode` (once)    |
| 3    | for t = T .. 1                             | `samplers.sample`: `ddim_timesteps(T, n)`   |
| 4    | eps = UNet(x_t, t, [c_M, c_C])             | `samplers.sample`: `model(x, t, cond, tok)` |
| 5    | x_{t-1} = DDIM_step(x_t, eps, t)           | `samplers.sample`: `ddim_step(...)`         |
| 7    | if t == T/2: S_lesion = LesionHead(...)    | `RoiGuide._line7`: first step t <= T/2      |
| 10   | L_brain = alpha (1 - SSIM(x·M_brain, M))   | `losses.roi.roi_loss` brain term            |
| 11   | L_bone = beta (1 - SSIM(x·M_bone, C))      | `losses.roi.roi_loss` bone term             |
| 12   | L_lesion = gamma (Dice+NSD+HD95 surr.)     | `losses.roi.roi_loss` lesion term           |
| 15   | x_{t-1} -= eta grad(L)                     | `RoiGuide.guide_x_prev` (mode "xt") or      |
|      |                                            | `RoiGuide.guide_x0` (mode "x0", on x̂0)      |
| 17   | return x_0                                 | `GuidedResult.fused`                        |

Symbols: T = `schedule.num_steps` (1000), x̂0 = `x0_hat`, ε̂ = `eps_hat`, η = `GuidanceConfig.eta`
(guidance strength; the DDIM stochasticity is fixed at 0, i.e. deterministic DDIM).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from clinfuse.choices import Choice
from clinfuse.diffusion.samplers import ProgressFn, SamplerState, ddim_timesteps, sample
from clinfuse.errors import ClinfuseInputError
from clinfuse.losses.lesion import prepare_target
from clinfuse.losses.roi import RoiLoss, only_inside, prepare_ssim_terms, roi_loss
from clinfuse.model_range import MODEL_RANGE
from clinfuse.nn.lesion_head import LesionHead
from clinfuse.nn.lesion_mask import LesionMaskRule


class GuidanceMode(Choice):
    """Where line 15's gradient acts: on x̂0 (`x0`, measured better) or on x_{t-1} (`xt`, as
    Algorithm 1 writes it)."""

    x0 = "x0"
    xt = "xt"


class LesionSource(Choice):
    """What guided the lesion term: the user's mask, the ground truth ("oracle": tables must say
    so), the lesion head's prediction, a prediction rejected by the plausibility gate, or none."""

    user = "user"
    oracle = "oracle"
    predicted = "predicted"
    rejected = "rejected"
    none = "none"


PRESET_DIR = Path(__file__).resolve().parents[1] / "configs" / "presets"


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
    mode: GuidanceMode = GuidanceMode.x0
    n_inner: int = 10  # gradient steps on x̂0 per DDIM step (mode "x0" only; docs/GUIDANCE.md)
    # gradient steps on x̂0 at the *last* DDIM step (mode "x0"; 0: n_inner). In x0 mode the last
    # guided x̂0 is the output, so this step decides the final ROI-SSIM: a few inner steps along
    # the trajectory and many at the end cost less than many everywhere (docs/GUIDANCE.md).
    final_inner: int = 0
    # Nesterov momentum of the inner gradient steps (0: plain gradient descent, Alg.1 line 15 as
    # written). The masked-SSIM terms are ill-conditioned; momentum reaches the same ROI-SSIM in
    # far fewer inner steps (docs/GUIDANCE.md).
    inner_momentum: float = 0.0
    # the lesion term joins only the first `lesion_inner` of those steps: each evaluation is a
    # lesion-head forward + backward over the volume, the SSIM terms are cheap
    lesion_inner: int = 1
    brain_window: tuple[float, float] = (0.0, 1.0)
    bone_window: tuple[float, float] = (0.0, 1.0)
    lesion_window: tuple[float, float] = (0.5, 1.0)
    # True: the brain and bone terms act at the last DDIM step only (still within their
    # windows), whatever the number of steps; the lesion term keeps its window. The last step's
    # guided x̂0 is the output, and on the validation cases the ROI steps along the trajectory
    # changed ROI-SSIM by <= 0.0002 (docs/GUIDANCE.md, session 6): 9 fewer masked-SSIM steps
    # per DDIM-10 fuse (issue 11).
    roi_final_only: bool = False
    # True: gradient of the ROI-*summed* loss (mean loss x ROI voxel count), so eta is a per-voxel
    # step that does not shrink as the volume grows; False: the literal mean form of Algorithm 1.
    voxel_scaled: bool = True
    lesion_threshold: float = 0.5  # S_lesion > threshold -> predicted guiding mask
    # Plausibility gate on the *predicted* mask: larger than this share of the brain mask, it is
    # rejected and the lesion term stays off (source "rejected"). A weak head's false positives
    # otherwise repaint large parts of the brain (measured: brain ROI-SSIM 0.994 -> 0.716 on a
    # phantom where the head called ~25 % of the brain lesion). 1.0 disables the gate.
    max_predicted_fraction: float = 0.1
    # Specificity gate on the *predicted* guiding mask (session 18): the lesion term guides only
    # when the mask's most probable component has a mean head probability of at least this;
    # otherwise it stays off (source "rejected"). The lesion map that is written and scored
    # keeps the head's own rule: this only decides whether a doubtful prediction may change
    # the image. On lesion-free real anatomy the shipped head's false lesions had mean
    # probability 0.61-0.81 (docs/TRAINING.md, session 18), and guiding by one cost brain
    # ROI-SSIM. 0 disables the gate (every preset before session 18).
    lesion_guide_min_prob: float = 0.0
    # The lesion term moves only brain voxels within this distance (mm) of the guiding mask: it
    # sharpens the lesion and its border, it does not repaint distant brain to silence the head's
    # false positives there (measured on one phantom: brain ROI-SSIM 0.716 with the whole brain
    # movable, docs/GUIDANCE.md). 0: the whole brain (the literal form).
    lesion_zone_mm: float = 10.0
    # True: the lesion term's head forward + backward runs on the bounding box of the movable
    # zone (plus context, `LesionHead.forward(box=...)`) instead of the whole volume, and its
    # losses are taken over that box; the gradient can only move voxels inside the zone anyway.
    # Issue 11: the whole-volume lesion term cost ~30 % of an unguided fuse (docs/SPEED.md).
    # Line 7's prediction likewise runs on the brain mask's box only (lesions are intracranial).
    lesion_crop: bool = True
    tau_mm: float = 2.0  # NSD tolerance of the lesion surrogate
    # 0: off. s > 0: blend the ensemble mean toward the ROI composite where the ensemble std is
    # high (weight min(1, s * std / median ROI std)); needs samples > 1 (see uncertainty_blend).
    uncertainty_blend: float = 0.0
    clip_x0: bool = True  # clamp x̂0 to the model range [-2, 2] before and after guidance
    # Air suppression after sampling: where every source is within this of the model-range
    # minimum (air in MRI and CT), the output copies the sources' maximum there instead of the
    # sampler's residual noise, which no ROI term constrains. 0 disables (pipeline.fuse_prepared).
    air_threshold: float = 0.05

    def __post_init__(self) -> None:
        # closed choice: a string from YAML or the command line becomes the enum here
        object.__setattr__(self, "mode", GuidanceMode.parse(self.mode, "guidance mode"))

    def validate(self, source: str | Path | None = None) -> None:
        """Raise `ClinfuseInputError` for values a user could have typed wrongly; `source` is
        where they came from (a preset file, or a command-line option)."""
        for name in ("alpha", "beta", "gamma", "eta", "uncertainty_blend", "air_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v >= 0 and v == v):
                raise ClinfuseInputError(f"{name} must be a number >= 0, got {v!r}", source)
        for name in ("voxel_scaled", "lesion_crop", "clip_x0", "roi_final_only"):
            if not isinstance(getattr(self, name), bool):
                raise ClinfuseInputError(
                    f"{name} must be true or false, got {getattr(self, name)!r}", source
                )
        for name in ("n_inner", "lesion_inner", "final_inner"):
            v = getattr(self, name)
            low = 0 if name == "final_inner" else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ClinfuseInputError(f"{name} must be an integer >= {low}, got {v!r}", source)
        for name in ("brain_window", "bone_window", "lesion_window"):
            lo, hi = getattr(self, name)
            if not (0.0 <= lo <= hi <= 1.0):
                raise ClinfuseInputError(
                    f"{name} must be [lo, hi] with 0 <= lo <= hi <= 1, got {[lo, hi]}", source
                )
        if not 0.0 < self.lesion_threshold < 1.0:
            raise ClinfuseInputError("lesion_threshold must be in (0, 1)", source)
        if not 0.0 <= self.inner_momentum < 1.0:
            raise ClinfuseInputError("inner_momentum must be in [0, 1)", source)
        if not (self.lesion_zone_mm >= 0.0):
            raise ClinfuseInputError("lesion_zone_mm must be >= 0", source)
        if not 0.0 < self.max_predicted_fraction <= 1.0:
            raise ClinfuseInputError("max_predicted_fraction must be in (0, 1]", source)
        if not 0.0 <= self.lesion_guide_min_prob < 1.0:
            raise ClinfuseInputError("lesion_guide_min_prob must be in [0, 1)", source)

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
        """JSON-serialisable form (windows as lists, the mode as its string)."""
        d = asdict(self)
        d["mode"] = self.mode.value
        for k in ("brain_window", "bone_window", "lesion_window"):
            d[k] = list(d[k])
        return d


# --------------------------------------------------------------------------- presets


def list_presets() -> list[str]:
    """Names of the disease presets shipped in `clinfuse/configs/presets/`."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


_PRESET_META = ("name", "rationale")
_WINDOW_KEYS = {"brain": "brain_window", "bone": "bone_window", "lesion": "lesion_window"}


def _config_from_mapping(
    data: Mapping[str, Any], source: str | Path, base: GuidanceConfig | None = None
) -> GuidanceConfig:
    """Build a `GuidanceConfig` (on top of `base`) from a mapping; unknown keys and bad values
    are user errors naming `source`."""
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
    try:
        cfg = replace(base, **kwargs) if base is not None else GuidanceConfig(**kwargs)
    except ClinfuseInputError as err:
        raise ClinfuseInputError(str(err), source) from None
    cfg.validate(source)
    return cfg


def _window(value: Any, name: str, source: str | Path) -> tuple[float, float]:
    if not (isinstance(value, Sequence) and len(value) == 2):
        raise ClinfuseInputError(f"{name} window must be [lo, hi], got {value!r}", source)
    return float(value[0]), float(value[1])


def load_preset(
    name: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    overrides_source: str = "command-line option",
) -> GuidanceConfig:
    """Guidance config of a named disease preset (or a YAML path), with overrides applied.

    The preset file is validated on its own first (errors name the file); then `overrides`
    (`GuidanceConfig` field names -> values; `None` values are ignored, so a CLI can pass every
    option) are applied and validated, errors naming `overrides_source` (e.g. "--option"), not
    the file. Unknown preset or key -> `ClinfuseInputError` listing what exists.
    """
    if isinstance(name, GuidanceConfig):  # already resolved (the CLI resolves once)
        base = name
    else:
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
        base = _config_from_mapping(data, path)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if not given:
        return base
    return _config_from_mapping(given, overrides_source, base)


# --------------------------------------------------------------------------- the guide


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


def bounding_box(mask: torch.Tensor) -> tuple[slice, ...] | None:
    """The spatial bounding box of `mask` (B, C, *S) over all items and channels, as one slice
    per spatial axis; None when the mask is empty."""
    any_ = mask.detach().bool().flatten(0, 1).any(dim=0)
    if not bool(any_.any()):
        return None
    box = []
    for axis in range(any_.ndim):
        others = tuple(d for d in range(any_.ndim) if d != axis)
        idx = torch.nonzero(any_.any(dim=others) if others else any_).flatten()
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def head_mask_rule(model: Any) -> LesionMaskRule:
    """The lesion head's `LesionMaskRule` (keep everything without a head) of a `FusionModel`
    or of a wrapper around it (`SlidingWindowModel`, `AutocastModel`: the wrapped one is
    `.model`)."""
    for _ in range(8):  # wrappers nest a few deep at most
        head = getattr(model, "lesion_head", None)
        if isinstance(head, LesionHead):
            return head.mask_rule
        model = getattr(model, "model", None)
        if model is None:
            break
    return LesionMaskRule()


def predicted_mask(
    prob: torch.Tensor,
    brain: torch.Tensor,
    spacing: Sequence[float],
    threshold: float,
    model: Any,
    min_lesion_prob: float = 0.0,
    mri: torch.Tensor | None = None,
) -> torch.Tensor:
    """The head's probability `(B, 1, *S)` as a lesion mask: kept inside `brain` (`(1|B, 1,
    *S)`), thresholded and cleaned by the head's own `LesionMaskRule` (small and doubtful
    secondary components removed: `nn.lesion_mask.clean_mask`), per item. Bool, on `prob`'s
    device. `min_lesion_prob` raises the rule's case-level gate to at least this (an item whose
    most probable component is fainter gets an empty mask). `mri` (`(1|B, 1, *S)`, the MRI
    on `prob`'s grid) is needed by a rule that drops mirror ghosts."""
    inside = (prob * brain.to(prob.dtype)).detach().float().cpu().numpy()
    rule = head_mask_rule(model)
    if min_lesion_prob > rule.min_lesion_prob:
        rule = replace(rule, min_lesion_prob=min_lesion_prob)
    planes = None if mri is None else mri.detach().float().cpu().numpy()
    mask = np.zeros(inside.shape, dtype=bool)
    for b in range(inside.shape[0]):
        m = None if planes is None else planes[min(b, planes.shape[0] - 1), 0]
        mask[b, 0] = rule.apply(inside[b, 0], spacing, threshold, m)
    return torch.from_numpy(mask).to(prob.device) & brain.bool()


class RoiGuide:
    """Algorithm 1's guidance as a `samplers.Guide`: line 7 (S_lesion at t = T/2), lines 10-12
    (`losses.roi.roi_loss`) and line 15, on x̂0 (mode "x0") or on x_{t-1} (mode "xt").

    It keeps the guiding lesion mask (`target`, `source`) and the per-step log (`history`).
    """

    def __init__(
        self,
        model: Any,
        cond: torch.Tensor,
        masks: Mapping[str, torch.Tensor],
        cfg: GuidanceConfig,
        *,
        num_train: int,
        spacing: Sequence[float],
        lesion_mask: torch.Tensor | None = None,
        lesion_source: LesionSource = LesionSource.user,
    ) -> None:
        self.model, self.cond, self.cfg = model, cond, cfg
        self.num_train, self.spacing = num_train, tuple(spacing)
        self.mri, self.ct_bone = cond[:, 0:1], cond[:, 2:3]
        self.brain, self.bone = masks["brain"].bool(), masks["bone"].bool()
        self.guided = cfg.eta > 0
        self.target: torch.Tensor | None = None
        self.source = LesionSource.none
        if lesion_mask is not None and cfg.gamma > 0:
            self.target, self.source = lesion_mask.bool(), LesionSource(lesion_source)
        self.needs_line7 = self.guided and cfg.gamma > 0 and self.target is None
        self.prepared: Any = None  # distance maps of the guiding mask (losses.lesion)
        self.movable = self.brain  # voxels the lesion term may move (narrowed once known)
        self.box: tuple[slice, ...] | None = None  # the lesion term's region (`lesion_crop`)
        # a non-empty guiding mask is prepared: the lesion term acts (an empty one, e.g. every
        # predicted component below the head's minimum size, runs no head at all)
        self.lesion_on = False
        self.history: list[dict[str, float]] = []
        self._weights: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self._ssim: Any = None  # brain/bone SSIM terms prepared on first use (fixed references)

    def _line7(self, x0_hat: torch.Tensor) -> dict[str, float]:
        """Alg.1 line 7: S_lesion from the fused estimate -> the guiding mask (or a rejection)."""
        cfg, brain = self.cfg, self.brain
        box = bounding_box(brain) if cfg.lesion_crop else None
        with torch.no_grad():
            if box is None:
                s_lesion = torch.sigmoid(self.model.lesion_head(x0_hat, self.cond))
            else:  # only brain voxels can be lesion: the head on the brain's box (+ context)
                s_lesion = torch.zeros_like(x0_hat)
                s_lesion[(..., *box)] = torch.sigmoid(
                    self.model.lesion_head(x0_hat, self.cond, box=box)
                )
        # Honesty rule: without a user mask, the guiding mask is the head's own prediction from
        # the fused estimate (a function of the inputs only), never the ground truth. Lesions
        # are intracranial: the predicted mask is kept inside the brain mask (an input), as a
        # user mask must be (pipeline.fuse.check_lesion_in_brain); then, as every mask made
        # from the head, it is cleaned by the head's `LesionMaskRule` (`predicted_mask`).
        # The specificity gate (`lesion_guide_min_prob`) empties a doubtful item's mask; only
        # when nothing is left is the ungated mask made, to log whether the gate emptied it.
        args = (s_lesion, brain, self.spacing, cfg.lesion_threshold, self.model)
        mri = None if self.cond is None else self.cond[:, 0:1]
        target = predicted_mask(*args, min_lesion_prob=cfg.lesion_guide_min_prob, mri=mri)
        self.needs_line7 = False
        frac = float(target.sum()) / max(1.0, float(brain.expand_as(target).sum()))
        doubtful = cfg.lesion_guide_min_prob > 0 and not bool(target.any())
        doubtful = doubtful and bool(predicted_mask(*args, mri=mri).any())
        if frac > cfg.max_predicted_fraction or doubtful:
            # implausible (too large) or doubtful (too faint): guide nothing rather than FPs
            self.target, self.source = None, LesionSource.rejected
        else:
            self.target, self.source = target, LesionSource.predicted
        # share of the brain and whether the specificity gate rejected it, logged
        return {"predicted_fraction": frac, "rejected_as_doubtful": float(doubtful)}

    def _objective(
        self, z: torch.Tensor, w: tuple[float, float, float]
    ) -> RoiLoss:  # Alg.1 lines 10-12
        prob = None
        if w[2] > 0:  # (guide_x0 zeroes it while no guiding mask exists)
            # a differentiable path image -> S_lesion: the head applied to z; the lesion lies in
            # the brain, so its gradient moves (nearby) brain voxels only. With `lesion_crop`
            # the head runs on the zone's box and the losses below are taken over that box.
            zin = only_inside(z, self.movable)
            prob = torch.sigmoid(self.model.lesion_head(zin, self.cond, box=self.box))
        if self._ssim is None:  # once per run: n_inner evaluations per step reuse it
            self._ssim = prepare_ssim_terms(self.mri, self.ct_bone, self.brain, self.bone)
        return roi_loss(
            z, self.mri, self.ct_bone, self.brain, self.bone, prob, self.prepared,
            self.spacing, self.cfg, weights=w, ssim=self._ssim,
        )  # fmt: skip

    def guide_x0(self, state: SamplerState) -> torch.Tensor:
        cfg, t, x0_hat = self.cfg, state.t, state.x0_hat
        if self.needs_line7 and t <= self.num_train // 2:
            state.info.update(self._line7(x0_hat))
        if self.target is not None and self.prepared is None:
            # distance maps of the fixed guiding mask, once per run (scipy EDT in mm)
            bsz, spatial = x0_hat.shape[0], x0_hat.shape[2:]
            if cfg.lesion_zone_mm > 0:
                self.movable = self.brain & _zone(self.target, self.spacing, cfg)
            target = self.target.expand(bsz, 1, *spatial)
            if cfg.lesion_crop:
                self.box = bounding_box(self.movable | self.target)
                if self.box is not None:
                    target = target[(..., *self.box)]
            self.prepared = prepare_target(target, self.spacing, like=self.cond)
            self.lesion_on = bool(self.prepared.mask.any())
        w = cfg.weights_at(t, self.num_train)
        if cfg.roi_final_only and state.t_prev >= 0:  # not the last step: no ROI terms
            w = (0.0, 0.0, w[2])
        if not self.lesion_on:  # no guiding mask (yet, or rejected): the lesion term cannot act
            w = (w[0], w[1], 0.0)
        self._weights = w if self.guided and any(v > 0 for v in w) else (0.0, 0.0, 0.0)
        if cfg.mode != GuidanceMode.x0 or not any(v > 0 for v in self._weights):
            return x0_hat
        # x̂0-space variant: n_inner gradient steps of lines 10-12 on x̂0; line 5 then steps from
        # the guided x̂0 (ε̂ kept from the network, so the guided x̂0 passes into x_{t-1}).
        lo, hi = MODEL_RANGE
        z = x0_hat
        n_inner = cfg.final_inner if (state.t_prev < 0 and cfg.final_inner > 0) else cfg.n_inner
        mu = float(cfg.inner_momentum)
        y = z  # Nesterov look-ahead point (= z without momentum)
        for k in range(int(n_inner)):
            y = y.detach().requires_grad_(True)
            wk = w if k < cfg.lesion_inner else (w[0], w[1], 0.0)
            if not any(v > 0 for v in wk):
                break  # only the lesion term was on, and its inner steps are done
            loss = self._objective(y, wk)
            if k == 0:  # the losses before guidance moved x̂0 (logged)
                state.info.update(brain=loss.brain, bone=loss.bone, lesion=loss.lesion)
            (grad,) = torch.autograd.grad(loss.total, y)
            z_next = y.detach() - cfg.eta * grad  # Alg.1 line 15 (on x̂0)
            if cfg.clip_x0:
                z_next = z_next.clamp(lo, hi)
            y = z_next + mu * (z_next - z) if mu > 0 else z_next
            z = z_next
        return z.detach()

    def guide_x_prev(self, state: SamplerState) -> torch.Tensor:
        x = state.x_prev
        assert x is not None  # the loop sets it before calling
        if self.cfg.mode == GuidanceMode.xt and any(v > 0 for v in self._weights):
            z = x.detach().requires_grad_(True)
            loss = self._objective(z, self._weights)  # Alg.1 lines 10-12, on x_{t-1} as written
            (grad,) = torch.autograd.grad(loss.total, z)
            x = (z - self.cfg.eta * grad).detach()  # Alg.1 line 15
            state.info.update(brain=loss.brain, bone=loss.bone, lesion=loss.lesion)
        self.history.append(state.info)
        return x


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
    history: list[dict[str, float]] = field(default_factory=list)  # per step: t, losses
    seconds: float = 0.0


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
    lesion_source: LesionSource = LesionSource.user,
    spacing: Sequence[float] | None = None,
    progress: ProgressFn | None = None,
) -> GuidedResult:
    """ROI-guided DDIM sampling, Algorithm 1: `samplers.sample` with a `RoiGuide`.
    `guidance=None` or `eta=0` is plain DDIM.

    model: `encode(cond)`, `model(x_t, t, cond, tokens)`, `lesion_head(x, cond, box=None)` (a
      `FusionModel` or `diffusion.sliding.SlidingWindowModel`). cond: (B, 3, *S) =
      [mri, ct_clinical, ct_bone]; B = number of samples (different noise, same inputs).
    masks: {"brain": (1|B, 1, *S), "bone": (1|B, 1, *S)} bool.
    lesion_mask: the mask that guides the lesion term, from the user; label it "oracle" when it
      is the ground truth. None: the head's prediction at t <= T/2 (line 7) thresholded is used.
    """
    cfg = guidance if guidance is not None else replace(GuidanceConfig(), eta=0.0)
    cfg.validate()
    if cond.ndim < 4 or cond.shape[1] != 3:
        raise ValueError(f"cond must be (B, 3, *spatial), got {tuple(cond.shape)}")
    start = time.perf_counter()
    num_train = int(getattr(schedule, "num_steps", 1000))
    spatial = tuple(cond.shape[2:])
    guide = RoiGuide(
        model,
        cond,
        masks,
        cfg,
        num_train=num_train,
        spacing=tuple(spacing) if spacing is not None else (1.0,) * len(spatial),
        lesion_mask=lesion_mask,
        lesion_source=lesion_source,
    )
    # Alg.1 lines 1-5 and 17 (with lines 7-15 in the guide); deterministic DDIM (its eta = 0 is
    # not the guidance eta)
    fused = sample(
        model,
        cond,
        schedule,
        steps=steps,
        generator=generator,
        clip_x0=cfg.clip_x0,
        progress=progress or False,
        guide=guide,
    )
    if cfg.clip_x0:
        fused = fused.clamp(*MODEL_RANGE)
    with torch.no_grad():
        lesion_prob = torch.sigmoid(model.lesion_head(fused, cond)) * guide.brain.to(fused.dtype)
    target = guide.target
    return GuidedResult(
        fused=fused,
        lesion_prob=lesion_prob,
        lesion_target=None if target is None else target.detach(),
        lesion_source=guide.source,
        timesteps=ddim_timesteps(num_train, steps),
        history=guide.history,
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
