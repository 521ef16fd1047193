"""Typed training configuration: dataclasses, strict YAML loading, presets and `--set` overrides.

A preset lives in `clinfuse/configs/train/<name>.yaml`; the resolved config is saved as
`RUN/config.yaml` and (as a plain dict) inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from clinfuse.choices import Choice
from clinfuse.errors import ClinfuseInputError

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs" / "train"


@dataclass
class DataConfig:
    """Where the cases come from, how they are split by patient, and how patches are drawn."""

    path: str | None = None  # dataset (any `load_dataset` layout); `--data` overrides it
    patch_size: tuple[int, ...] = (32, 32, 32)  # training patch; its length sets 2D/3D
    val_patch_size: tuple[int, ...] | None = None  # centre crop for validation; None = whole
    val_patients: list[str] = field(default_factory=list)  # explicit validation groups
    test_patients: list[str] = field(default_factory=list)  # never loaded for training/val
    val_fraction: float = 0.2  # used when `val_patients` is empty
    max_val_cases: int = 2  # DDIM-20 is costly on CPU: validate on the first N held-out cases
    patient_pattern: str | None = None  # regex, group 1 = patient id from the case id
    split_seed: int = 0
    feather_sigma: float = 1.0  # voxels; ROI-composite target edge blur
    lesion_fraction: float = 0.3  # share of patches centred on a lesion voxel (when present)
    auto_masks: bool = True  # let preprocessing fill missing brain/bone masks
    spacing: tuple[float, ...] | None = None  # optional resampling at preprocessing


@dataclass
class DiffusionConfig:
    """The validation sampler. The noise schedule itself (kind, T) belongs to the model config
    (`model.schedule`, `model.num_train_steps`) so a checkpoint carries it."""

    val_sampling_steps: int = 20  # DDIM steps for validation samples
    clip_x0: bool = True


@dataclass
class OptimConfig:
    """AdamW with a linear warm-up, then constant (or cosine decay to `min_lr_ratio`)."""

    lr: float = 2e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 = off


@dataclass
class RoiLossConfig:
    """L_total = L_diffusion + lambda_roi * (alpha L_brain + beta L_bone + gamma L_lesion)."""

    lambda_roi: float = 0.1
    alpha: float = 1.0  # stroke preset of the proposal: (1.0, 1.2, 3.0)
    beta: float = 1.2
    gamma: float = 3.0
    lesion_tau_mm: float = 2.0
    lesion_bce_weight: float = 1.0  # BCE next to the surrogates: keeps probabilities calibrated
    detach_x0_for_lesion: bool = True  # the lesion head trains on x0_hat, the denoiser does not


@dataclass
class JitterConfig:
    """Registration jitter of the CT (and bone mask) relative to the MRI, torchio-style."""

    enabled: bool = True
    p: float = 0.5
    max_translation_mm: float = 2.0  # uniform in [-max, max] per axis
    max_rotation_deg: float = 2.0  # uniform in [-max, max] per rotation axis


@dataclass
class TrainConfig:
    """Everything `train()` needs, besides the data location and the output folder."""

    name: str = "run"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 2  # micro-batch per process
    effective_batch: int = 8  # batch_size * accumulation * world_size
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    ema_decay: float = 0.999
    val_every: int = 200
    ckpt_every: int = 100
    log_every: int = 1
    # Fine-tuning: start from this checkpoint's EMA weights (path; the lesion head too when its
    # architecture matches) instead of a random init. Ignored when resuming a run.
    init: str | None = None
    # `clinfuse.nn.model.ModelConfig` fields; `preset: <name>` starts from `MODEL_PRESETS[name]`.
    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    roi: RoiLossConfig = field(default_factory=RoiLossConfig)
    jitter: JitterConfig = field(default_factory=JitterConfig)


# Keys that may differ between a checkpoint's config and a resumed run's config.
RESUMABLE_KEYS = frozenset({"max_steps", "val_every", "ckpt_every", "log_every"})


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str | None) -> Any:
    """Check `value` against the annotation `tp`; return it converted (lists -> tuples...)."""

    def bad(expected: str | None = None) -> ClinfuseInputError:
        want = expected or _type_name(tp)
        return ClinfuseInputError(
            f"config key '{key}': expected {want}, got {type(value).__name__} {value!r}", source
        )

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except ClinfuseInputError as err:
                errors.append(err)
        raise bad()
    if origin is Literal:
        # YAML 1.1 reads a bare `off` / `on` as a boolean.
        if isinstance(value, bool) and ("off" if not value else "on") in args:
            return "off" if not value else "on"
        if value not in args:
            raise bad("one of " + ", ".join(repr(a) for a in args))
        return value
    if isinstance(tp, type) and issubclass(tp, Choice):
        return tp.parse(value, f"config key '{key}'", source)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad("a mapping")
        return from_dict(tp, value, source, prefix=key + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad(f"{len(args)} values")
        return tuple(
            _convert(v, a, f"{key}[{i}]", source)
            for i, (v, a) in enumerate(zip(value, args, strict=False))
        )
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad()
        return [_convert(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad("a mapping")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp is float:
        # YAML reads `1e-4` as a string (YAML 1.1): accept numeric strings for floats only.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            # YAML turns `16` into an int; patient ids are strings, so accept plain numbers.
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)
            raise bad()
        return value
    raise TypeError(f"unsupported annotation {tp!r} for config key '{key}'")


def from_dict(cls: type, data: dict[str, Any], source: str | None = None, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, strictly: unknown keys and wrong types raise
    `ClinfuseInputError` naming the (dotted) key and `source` (the file)."""
    if not isinstance(data, dict):
        raise ClinfuseInputError(
            f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping", source
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ClinfuseInputError(
                f"unknown config key '{prefix}{key}' (known: {', '.join(sorted(names))})", source
            )
        kwargs[key] = _convert(value, hints[key], prefix + key, source)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (lists, not tuples) of a dataclass config: YAML- and `weights_only`-safe."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v.value if isinstance(v, Choice) else v

    return plain(dataclasses.asdict(cfg))


def _apply_override(tree: dict[str, Any], item: str, source: str | None) -> None:
    """`a.b=value` -> tree["a"]["b"] = yaml(value)."""
    if "=" not in item:
        raise ClinfuseInputError(f"override '{item}' must look like key=value (e.g. optim.lr=1e-4)")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ClinfuseInputError(f"override '{item}': '{part}' is not a section", source)
        node = nxt
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def list_presets() -> list[str]:
    """Names of the shipped training presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _validate(cfg: TrainConfig, source: str | None) -> None:
    """Cross-field checks a type check cannot make."""
    d = cfg.data
    if len(d.patch_size) not in (2, 3):
        raise ClinfuseInputError("config key 'data.patch_size' must have 2 or 3 values", source)
    if d.val_patch_size is not None and len(d.val_patch_size) != len(d.patch_size):
        raise ClinfuseInputError(
            "config key 'data.val_patch_size' must have as many values as 'data.patch_size'", source
        )
    cfg.model = _resolve_model_section(cfg.model, source)
    dims = cfg.model.get("spatial_dims")
    if dims is not None and dims != len(d.patch_size):
        raise ClinfuseInputError(
            f"config key 'model.spatial_dims' is {dims} but 'data.patch_size' is "
            f"{len(d.patch_size)}D",
            source,
        )
    positive = {
        "max_steps": cfg.max_steps,
        "batch_size": cfg.batch_size,
        "effective_batch": cfg.effective_batch,
        "val_every": cfg.val_every,
        "ckpt_every": cfg.ckpt_every,
        "log_every": cfg.log_every,
        "diffusion.val_sampling_steps": cfg.diffusion.val_sampling_steps,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ClinfuseInputError(f"config key '{key}' must be > 0, got {value}", source)
    if cfg.effective_batch % cfg.batch_size:
        raise ClinfuseInputError(
            f"config key 'effective_batch' ({cfg.effective_batch}) must be a multiple of "
            f"'batch_size' ({cfg.batch_size})",
            source,
        )
    if not 0.0 <= cfg.jitter.p <= 1.0:
        raise ClinfuseInputError("config key 'jitter.p' must be in [0, 1]", source)
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ClinfuseInputError("config key 'ema_decay' must be in [0, 1)", source)
    if cfg.optim.lr <= 0:
        raise ClinfuseInputError("config key 'optim.lr' must be > 0", source)


def _resolve_model_section(model: dict[str, Any], source: str | None) -> dict[str, Any]:
    """Expand `preset:` and type-check against `ModelConfig`; return the full plain dict."""
    from clinfuse.nn.model import MODEL_PRESETS, ModelConfig

    model = dict(model)
    name = model.pop("preset", None)
    if name is not None:
        if name not in MODEL_PRESETS:
            raise ClinfuseInputError(
                f"config key 'model.preset': unknown model preset {name!r} "
                f"(known: {', '.join(sorted(MODEL_PRESETS))})",
                source,
            )
        extra = {**model.pop("extra", {}), "preset": name}
        model = {**MODEL_PRESETS[name], **model, "extra": extra}
    try:
        typed = from_dict(ModelConfig, model, source, prefix="model.")
    except ClinfuseInputError as err:
        if err.path is None:  # ModelConfig's own checks do not know the file
            raise ClinfuseInputError(str(err), source) from None
        raise
    return typed.to_dict()


def resolve_config(name_or_path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Load a preset name (see `list_presets()`) or a YAML file, apply `key=value` overrides,
    and return a validated `TrainConfig`. Errors name the key and the file."""
    text = str(name_or_path)
    path = Path(text)
    if not path.suffix and (PRESET_DIR / f"{text}.yaml").is_file():
        path = PRESET_DIR / f"{text}.yaml"
    if not path.is_file():
        raise ClinfuseInputError(
            f"no such config file or preset (presets: {', '.join(list_presets())})", text
        )
    source = str(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ClinfuseInputError(f"not valid YAML: {err}", source) from None
    if not isinstance(tree, dict):
        raise ClinfuseInputError("a training config must be a YAML mapping", source)
    for item in overrides or []:
        _apply_override(tree, item, source)
    cfg = from_dict(TrainConfig, tree, source)
    _validate(cfg, source)
    return cfg


def config_from_dict(tree: dict[str, Any], source: str | None = None) -> TrainConfig:
    """Rebuild a `TrainConfig` from `to_dict` output (e.g. the copy inside a checkpoint)."""
    cfg = from_dict(TrainConfig, tree, source)
    _validate(cfg, source)
    return cfg


def apply_overrides(
    cfg: TrainConfig, overrides: list[str], source: str | None = None
) -> TrainConfig:
    """A copy of `cfg` with `key=value` overrides applied and validated."""
    tree = to_dict(cfg)
    for item in overrides:
        _apply_override(tree, item, source)
    return config_from_dict(tree, source)


def dump_config(cfg: TrainConfig) -> str:
    """YAML text of the resolved config (what `RUN/config.yaml` holds)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
