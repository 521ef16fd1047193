"""``ModelConfig`` and ``FusionModel``: encoders + denoiser + lesion head from one typed config.

The config round-trips through a plain dict (``asdict`` / ``ModelConfig.from_dict``) so it can be
stored in checkpoints loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from clinfuse.choices import Choice
from clinfuse.errors import ClinfuseInputError
from clinfuse.nn.cpu_conv import use_onednn_conv3d
from clinfuse.nn.denoiser import Denoiser
from clinfuse.nn.encoders import ENCODER_NORMS, ConditionEncoder
from clinfuse.nn.lesion_head import LESION_INPUTS, LesionHead


class Prediction(Choice):
    """What the denoiser outputs: the clean image (`x0`), the noise (`eps`) or v (Salimans & Ho).
    Configs and checkpoints store the string value; `ModelConfig` parses it into the enum."""

    x0 = "x0"
    eps = "eps"
    v = "v"


ScheduleKind = Literal["linear", "cosine"]


_SCALAR_TYPES: dict[str, type] = {
    "spatial_dims": int,
    "num_res_blocks": int,
    "num_head_channels": int,
    "norm_num_groups": int,
    "token_dim": int,
    "token_grid": int,
    "num_train_steps": int,
    "lesion_res_units": int,
    "concat_conditioning": bool,
    "flash_attention": bool,
}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a :class:`FusionModel` (JSON-able via ``asdict``).

    ``prediction`` is what the denoiser outputs; x0 is the default because on a short CPU budget
    ε-prediction gave pure noise where x0-prediction gave usable fusions (MISSION.md, "Measured
    while planning"). ``schedule`` / ``num_train_steps`` describe the noise schedule the weights
    were trained with (build it with ``NoiseSchedule(cfg.num_train_steps, cfg.schedule)``).
    """

    spatial_dims: int = 3
    channels: tuple[int, ...] = (16, 32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 16
    norm_num_groups: int = 8
    token_dim: int = 256
    encoder_widths: tuple[int, ...] = (16, 32, 64, 128)
    # The encoders' residual-block norm (`nn.encoders.ENCODER_NORMS`): "batch" is what MONAI's
    # ResNet builds and what every checkpoint up to session 7 has; "group" makes every encoder
    # norm a GroupNorm (no running statistics, no dependence on the training batch).
    encoder_norm: str = "batch"
    token_grid: int = 2
    concat_conditioning: bool = True
    flash_attention: bool = True
    prediction: Prediction = Prediction.x0
    schedule: ScheduleKind = "linear"
    num_train_steps: int = 1000
    lesion_channels: tuple[int, ...] = (8, 16, 32)
    lesion_res_units: int = 1
    # What the lesion head reads: "fused" (the fused image / x̂0 only, so its prediction measures
    # how visible the lesion is in *that* image, and guidance gradients all flow through it) or
    # "fused+sources" (x̂0 plus [mri, ct, ct_bone], the session-1 design). See nn/lesion_head.py.
    lesion_inputs: str = "fused+sources"
    # "batch" (train-lesion's choice): running statistics do not depend on the input's size, so a
    # head trained on lesion-centred patches applies unchanged to whole volumes; "instance" (the
    # session-1 default) normalises each input by its own statistics, which differ between a
    # 32³ patch in the head and a whole volume that is mostly air.
    lesion_norm: str = "instance"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. preset name)

    def __post_init__(self) -> None:
        # JSON / YAML give lists; keep tuples so equality and hashing behave.
        self.channels = tuple(int(c) for c in self.channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        self.encoder_widths = tuple(int(c) for c in self.encoder_widths)
        self.lesion_channels = tuple(int(c) for c in self.lesion_channels)
        problems = []
        for name, kind in _SCALAR_TYPES.items():
            value = getattr(self, name)
            # bool is an int subclass: reject True where a count is expected, and vice versa
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                problems.append(f"{name} must be {kind.__name__}, got {value!r}")
        if problems:
            raise ClinfuseInputError("invalid model config: " + "; ".join(problems))
        if self.spatial_dims not in (2, 3):
            problems.append(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        try:  # closed choice: a string from YAML or a checkpoint becomes the enum here
            self.prediction = Prediction.parse(self.prediction, "prediction")
        except ClinfuseInputError as err:
            problems.append(str(err))
        if self.lesion_inputs not in LESION_INPUTS:
            problems.append(
                f"lesion_inputs must be one of {LESION_INPUTS}, got {self.lesion_inputs!r}"
            )
        if self.lesion_norm not in ("instance", "batch"):
            problems.append(f"lesion_norm must be 'instance' or 'batch', got {self.lesion_norm!r}")
        if self.encoder_norm not in ENCODER_NORMS:
            problems.append(
                f"encoder_norm must be one of {ENCODER_NORMS}, got {self.encoder_norm!r}"
            )
        if self.schedule not in ("linear", "cosine"):
            problems.append(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if len(self.attention_levels) != len(self.channels):
            problems.append("attention_levels needs one entry per channels level")
        elif not any(self.attention_levels):
            problems.append("at least one attention level is needed for cross-attention")
        if any(c % self.norm_num_groups for c in self.channels):
            problems.append(f"every channel count must be divisible by {self.norm_num_groups}")
        if any(
            c % self.num_head_channels
            for c, a in zip(self.channels, self.attention_levels, strict=False)
            if a
        ):
            problems.append(f"attention widths must be divisible by {self.num_head_channels}")
        if len(self.encoder_widths) != 4:
            problems.append("encoder_widths needs 4 stages (ResNet-18 layout)")
        if problems:
            raise ClinfuseInputError("invalid model config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of builtins (lists, not tuples, enum values as strings) for JSON / YAML /
        checkpoints loaded with `weights_only=True`."""
        d = asdict(self)
        d["prediction"] = self.prediction.value
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a user error, named in the message."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ClinfuseInputError(
                f"unknown model config key(s) {unknown}; known: {sorted(known)}"
            )
        try:
            return cls(**d)
        except (TypeError, ValueError) as err:
            if isinstance(err, ClinfuseInputError):
                raise
            raise ClinfuseInputError(f"invalid model config: {err}") from err

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        """A named preset from :data:`MODEL_PRESETS` (e.g. ``"phantom3d-small"``)."""
        if name not in MODEL_PRESETS:
            raise ClinfuseInputError(
                f"unknown model preset {name!r}; known: {sorted(MODEL_PRESETS)}"
            )
        return cls.from_dict({**MODEL_PRESETS[name], "extra": {"preset": name}})


# Sizes chosen by measured CPU forward time (docs/MODEL.md): one 64×64×48 forward of the 3D
# default must stay around 0.5 s so a DDIM-20 fusion of a demo volume takes ~10 s.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "phantom3d-small": {
        "spatial_dims": 3,
        "channels": [16, 32, 64, 64],
        "attention_levels": [False, False, False, True],
        "num_res_blocks": 1,
    },
    "phantom3d-tiny": {
        "spatial_dims": 3,
        "channels": [8, 16, 32, 32],
        "attention_levels": [False, False, False, True],
        "num_res_blocks": 1,
        "encoder_widths": [8, 16, 32, 64],
    },
    "harvard2d": {
        "spatial_dims": 2,
        "channels": [16, 32, 64],
        "attention_levels": [False, False, True],
        "num_res_blocks": 1,
        "token_grid": 4,
    },
}


class FusionModel(nn.Module):
    """Conditional diffusion model of CLIN-FuseDiff++ (encoders, UNet denoiser, lesion head).

    Usage::

        model = FusionModel(ModelConfig.preset("phantom3d-small"))
        tokens = model.encode(cond)              # (B, 3, *S) -> (B, N, 256), once per case
        out = model(x_t, t, cond, tokens)        # (B, 1, *S); meaning = config.prediction
        logits = model.lesion_head(x0_hat, cond) # (B, 1, *S)

    Spatial sizes must be multiples of :attr:`size_multiple` (use :func:`pad_to_multiple`).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = ConditionEncoder(
            c.spatial_dims,
            c.encoder_widths,
            c.token_dim,
            c.token_grid,
            c.norm_num_groups,
            c.encoder_norm,
        )
        self.denoiser = Denoiser(
            c.spatial_dims,
            c.channels,
            c.attention_levels,
            c.num_res_blocks,
            c.num_head_channels,
            c.token_dim,
            c.concat_conditioning,
            c.norm_num_groups,
            c.flash_attention,
        )
        self.lesion_head = LesionHead(
            c.spatial_dims,
            c.lesion_channels,
            c.lesion_res_units,
            inputs=c.lesion_inputs,
            norm=c.lesion_norm,
        )
        if c.spatial_dims == 3:
            use_onednn_conv3d(self)  # same weights and math, ~10x faster small CPU convs

    @property
    def size_multiple(self) -> int:
        """Every spatial axis must be a multiple of this (denoiser and lesion head downsampling)."""
        return math.lcm(self.denoiser.size_multiple, self.lesion_head.size_multiple)

    @classmethod
    def from_config(cls, config: ModelConfig | dict[str, Any]) -> FusionModel:
        """Build from a :class:`ModelConfig` or its plain-dict form (as stored in checkpoints)."""
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        return cls(config)

    def config_dict(self) -> dict[str, Any]:
        """The config as a plain dict (round-trips through :meth:`from_config`)."""
        return self.config.to_dict()

    def encode(self, cond: torch.Tensor) -> torch.Tensor:
        """E_MRI and E_CT tokens: ``cond (B, 3, *S)`` → ``(B, N, token_dim)``."""
        self._check_cond(cond)
        return self.encoder(cond)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoiser output ``(B, 1, *S)``; tokens are computed here only if not given."""
        self._check_cond(cond)
        if x_t.shape[0] != cond.shape[0] or x_t.shape[2:] != cond.shape[2:] or x_t.shape[1] != 1:
            raise ValueError(
                f"x_t {tuple(x_t.shape)} must be (B, 1, *S) matching cond {tuple(cond.shape)}"
            )
        if tokens is None:
            tokens = self.encoder(cond)
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.long).reshape(-1)
        if t.numel() == 1 and x_t.shape[0] > 1:
            t = t.expand(x_t.shape[0])
        return self.denoiser(x_t, t, cond, tokens)

    def _check_cond(self, cond: torch.Tensor) -> None:
        want = self.config.spatial_dims + 2
        if cond.ndim != want or cond.shape[1] != 3:
            raise ValueError(
                f"cond must be (B, 3, *S) with {self.config.spatial_dims} spatial dims, "
                f"got shape {tuple(cond.shape)}"
            )


def pad_to_multiple(
    x: torch.Tensor, multiple: int, mode: str = "replicate"
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the spatial axes of ``(B, C, *S)`` at the high end up to a multiple of ``multiple``.

    Returns the padded tensor and the slices that crop it back (``y[crop]``). Replicate padding is
    the default so the padded border looks like its neighbourhood (air at the head's edge).
    """
    spatial = x.shape[2:]
    extra = [(-s) % multiple for s in spatial]
    pad: list[int] = []
    for e in reversed(extra):  # F.pad lists the last axis first
        pad += [0, e]
    y = F.pad(x, pad, mode=mode) if any(extra) else x
    crop = (slice(None), slice(None), *(slice(0, s) for s in spatial))
    return y, crop
