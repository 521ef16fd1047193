"""Training checkpoints: atomic save, `weights_only=True` load, architecture checks.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts) so `torch.load(...,
weights_only=True)` reads it: model and EMA weights, optimizer / LR-scheduler / grad-scaler
state, step, RNG state and the full resolved config (as a dict and as YAML text).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.atomic import atomic_write
from clinfuse.training.config import TrainConfig, config_from_dict, dump_config, to_dict

FORMAT = "clinfuse-train-checkpoint/1"


@dataclass
class LoadedCheckpoint:
    """What inference needs: the model with EMA weights (eval mode), the resolved config and
    the training step. `state` is the raw checkpoint dict (for resuming)."""

    model: nn.Module
    config: TrainConfig
    step: int
    path: str
    state: dict[str, Any]

    @property
    def model_config(self) -> dict[str, Any]:
        """The `ModelConfig` fields as a plain dict."""
        return dict(self.config.model)


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    ema: nn.Module,
    config: TrainConfig,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file + `os.replace`); `ema` is the
    `torch.optim.swa_utils.AveragedModel` of `model`. Returns the path."""
    import clinfuse

    state: dict[str, Any] = {
        "format": FORMAT,
        "step": int(step),
        "config": to_dict(config),
        "config_yaml": dump_config(config),
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        # Batches and diffusion noise come from generators derived from (seed, step), so these
        # global states only matter for code that uses the global RNG (none in our model).
        "rng": {"torch": torch.get_rng_state()},
        "extra": dict(extra or {}),
        "versions": {
            "torch": str(torch.__version__),
            "clinfuse": str(getattr(clinfuse, "__version__", "")),
        },
    }
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    return path


EXPECTED = "expected a .pt/.ckpt file written by `clinfuse train` or `clinfuse train-lesion`"
# Keys every checkpoint has, so a damaged or foreign dict fails here with its name, not later
# as a bare KeyError.
REQUIRED_KEYS = ("step", "config", "ema")
# File signatures: what a user might pass by mistake instead of a checkpoint.
_SIGNATURES = (
    (0, b"\x1f\x8b", "a gzip file (a .nii.gz image?)"),
    (0, b"\x89PNG", "a PNG image"),
    (128, b"DICM", "a DICOM file"),
    (344, b"n+1\x00", "a NIfTI image"),
    (344, b"ni1\x00", "a NIfTI header"),
    (4, b"n+2\x00", "a NIfTI-2 image"),
    (0, b"\x89HDF", "an HDF5 file"),
    (0, b"\x93NUMPY", "a NumPy .npy array"),
)


def _foreign_file_kind(path: Path) -> str | None:
    """What the file is when it cannot be a PyTorch checkpoint (a zip archive since torch 1.6,
    or the legacy pickle format); None when it may be one."""
    with path.open("rb") as fh:
        head = fh.read(352)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    for offset, magic, kind in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return kind
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "a binary file of unknown type"
    return "a text file"


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict, loaded with `weights_only=True`.

    Raises `ClinfuseInputError` naming the file and what it is instead (a NIfTI, a text file, a
    damaged archive, another program's PyTorch file...), never torch's or pickle's own error.
    """
    path = Path(path)
    if not path.is_file():
        raise ClinfuseInputError("checkpoint not found", path)
    try:
        kind = _foreign_file_kind(path)
    except OSError as err:
        raise ClinfuseInputError(f"cannot read checkpoint: {err.strerror}", path) from None
    if kind is not None:
        raise ClinfuseInputError(
            f"cannot read checkpoint: this is {kind}, not a PyTorch checkpoint ({EXPECTED})", path
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ClinfuseInputError(
            "cannot read checkpoint: a PyTorch file holding Python objects other than tensors "
            f"and plain containers, so not one clinfuse wrote; clinfuse only loads checkpoints "
            f"with weights_only=True, for safety ({EXPECTED})",
            path,
        ) from None
    except Exception as err:  # torch raises many types for damaged files
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        detail = f" ({first})" if first and len(first) < 200 else ""
        raise ClinfuseInputError(
            f"cannot read checkpoint: the file is damaged or truncated{detail}; {EXPECTED}", path
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = (
            "a dict without a 'format' entry" if isinstance(state, dict) else type(state).__name__
        )
        if isinstance(state, dict) and "format" in state:
            what = f"format {state['format']!r}"
        raise ClinfuseInputError(
            f"not a clinfuse checkpoint: the file holds {what} (a plain state_dict or another "
            f"program's file?), expected format {FORMAT!r}; {EXPECTED}",
            path,
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ClinfuseInputError(
            f"damaged clinfuse checkpoint: no {', '.join(map(repr, missing))} entry", path
        )
    return state


def ema_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The EMA model's state dict (AveragedModel keys are prefixed with `module.`)."""
    ema = state["ema"]
    return {k[len("module.") :]: v for k, v in ema.items() if k.startswith("module.")}


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str | Path) -> None:
    """`model.load_state_dict` with an error that names the architecture mismatch.

    Missing keys are judged after the modules' own load hooks ran, so a buffer added later with
    a documented default (e.g. the lesion head's `temperature`, 1 for older checkpoints) does not
    make an older checkpoint "another architecture".
    """
    own = model.state_dict()
    shapes = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)
    ]
    missing: list[str] = []
    unexpected = sorted(set(weights) - set(own))
    if not shapes and not unexpected:
        result = model.load_state_dict(weights, strict=False)
        missing = sorted(result.missing_keys)
        unexpected = sorted(result.unexpected_keys)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[:2]})")
        raise ClinfuseInputError(
            "checkpoint is from another model architecture: " + "; ".join(parts), source
        )


def build_model(model_config: dict[str, Any]) -> nn.Module:
    """A `FusionModel` from the plain-dict model config stored in checkpoints."""
    from clinfuse.nn.model import FusionModel

    return FusionModel.from_config(dict(model_config))


def check_whole_model(state: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint holding only part of a model (an `export_checkpoint(..., only=...)`
    file, e.g. `train-lesion --export-head`) where a whole fusion model is needed."""
    part = (state.get("extra") or {}).get("only_weights")
    if part:
        raise ClinfuseInputError(
            f"holds only the {part.rstrip('.')} weights (an `--export-head` file), not a model "
            "to fuse with: put it into a fusion checkpoint with `clinfuse train-lesion "
            "--checkpoint MODEL --head-from THIS --out DIR`",
            path,
        )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint for inference: `FusionModel` with the EMA weights, in eval mode."""
    state = read_checkpoint(path, map_location)
    check_whole_model(state, path)
    config = config_from_dict(state["config"], str(path))
    model = build_model(config.model)
    load_weights(model, ema_weights(state), path)
    model.to(map_location).eval()
    return LoadedCheckpoint(model, config, int(state["step"]), str(path), state)


def _to_half(obj: object) -> object:
    """Floating-point tensors to float16 (recursively); other values unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.half() if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _to_half(v) for k, v in obj.items()}
    return obj


def export_checkpoint(
    src: str | Path, dst: str | Path, *, half: bool = False, only: str | None = None
) -> Path:
    """A slim copy for inference / shipping: EMA weights and config only (no raw weights, no
    optimizer state, about 1/4 of the size). `load_checkpoint` reads it; it cannot be resumed.

    `half=True` stores the weights as float16 (half the size again, for the checkpoint shipped in
    the repository); `load_state_dict` casts them back to the model's float32 on load.
    `only` (a weight-name prefix, e.g. "lesion_head."): keep just those weights, with config and
    records (a trained lesion head in 2.4 MB instead of 18, small enough to keep every candidate
    in git); `load_checkpoint` refuses such a file with an error saying what it is.
    """
    state = read_checkpoint(src)
    ema = state.get("ema")
    if only is not None:
        ema = {k: v for k, v in (ema or {}).items() if k.startswith(f"module.{only}")}
        if not ema:
            raise ClinfuseInputError(f"has no weights named {only}*", src)
    slim = {
        **state,
        "model": {},
        "ema": _to_half(ema) if half else ema,
        "optimizer": None,
        "scheduler": None,
        "scaler": None,
        "rng": None,
        "extra": {
            **state.get("extra", {}),
            "exported_from": str(src),
            "float16": half,
            **({"only_weights": only} if only is not None else {}),
        },
    }
    dst = Path(dst)
    with atomic_write(dst) as tmp:
        torch.save(slim, tmp)
    return dst
