"""Models for fusion: the shipped checkpoint lookup, the device choice, loading a checkpoint,
and a checkpoint's lesion head applied to any fused image."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clinfuse.errors import ClinfuseInputError
from clinfuse.nn.lesion_mask import LesionMaskRule
from clinfuse.preprocess.prepared import PreparedCase

CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
SHIPPED_CHECKPOINTS = {3: "phantom3d.pt", 2: "open2d.pt"}


def shipped_checkpoint_path(ndim: int) -> Path:
    """Where the shipped checkpoint for 2D or 3D inputs lives (it may not exist)."""
    return CHECKPOINT_DIR / SHIPPED_CHECKPOINTS[ndim]


def default_checkpoint(ndim: int) -> Path:
    """The shipped checkpoint for 2D or 3D inputs (`clinfuse/checkpoints/`); missing -> error."""
    path = shipped_checkpoint_path(ndim)
    if not path.is_file():
        raise ClinfuseInputError(
            f"no shipped {ndim}D checkpoint at {path}; train one with `clinfuse train` and pass "
            "--checkpoint PATH"
        )
    return path


def resolve_device(device: str) -> str:
    """`auto` -> cuda when available, else cpu; `cuda` without a GPU is a user error.

    The CLI calls this once per command (`--device`); library code then uses `x.device`.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ClinfuseInputError("--device cuda was asked for but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ClinfuseInputError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder (DICOM series): its files' names and bytes, sorted."""
    import hashlib

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


@dataclass
class LoadedModel:
    """A model ready for fusion with what run.json records about it."""

    model: Any
    spatial_dims: int
    patch_size: tuple[int, ...] | None
    path: str
    sha256: str
    step: int | None


def load_model(checkpoint: str | Path | None, ndim: int | None, device: str = "cpu") -> LoadedModel:
    """Load a checkpoint (default: the shipped one for `ndim`) and check its dimension
    (`ndim` None: any dimension; then `checkpoint` must be given)."""
    from clinfuse.training.checkpoint import load_checkpoint

    if checkpoint is None and ndim is None:
        raise ValueError("give a checkpoint or the input dimension")
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint(int(ndim or 0))
    if not path.is_file():
        raise ClinfuseInputError("checkpoint file not found", path)
    ckpt = load_checkpoint(path, map_location=device)
    dims = int(ckpt.model.config.spatial_dims)
    if ndim is not None and dims != ndim:
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
    reference). Heads that also read the sources get `prepared.stack()` as well, heads with
    sequence slots the case's MRI sequence (`prepared.mri_contrast`).
    """
    import torch

    from clinfuse.nn.lesion_head import told_contrast
    from clinfuse.nn.model import pad_to_multiple

    device = next(model.parameters()).device
    multiple = int(getattr(model, "size_multiple", 1))
    x = torch.as_tensor(np.asarray(fused, np.float32), device=device)[None, None]
    x, crop = pad_to_multiple(x, multiple)
    cond, _ = pad_to_multiple(torch.as_tensor(prepared.stack(), device=device)[None], multiple)
    with torch.no_grad(), told_contrast(model, prepared.mri_contrast):
        prob = torch.sigmoid(model.lesion_head(x, cond))[crop][0, 0].float().cpu().numpy()
    return prob * prepared.brain.astype(np.float32)


def lesion_head_predictor(
    checkpoint: str | Path | None = None, device: str = "cpu"
) -> Callable[[np.ndarray, PreparedCase], np.ndarray]:
    """`(fused, prepared) -> lesion probability` with a checkpoint's lesion head
    (`lesion_probability`); the checkpoint (default: the shipped one of the case's dimension)
    is loaded on first use. This is `--lesion-head` of `clinfuse evaluate` / `benchmark`."""
    return _HeadPredictor(checkpoint, resolve_device(device))


class _HeadPredictor:
    """`lesion_head_predictor`'s callable. `mask_rule` is the last used head's (set when it
    loads): the evaluation harness cleans the probability with it (`LesionMaskRule`)."""

    def __init__(self, checkpoint: str | Path | None, device: str) -> None:
        self.checkpoint, self.device = checkpoint, device
        self.cache: dict[int, LoadedModel] = {}
        self.mask_rule = LesionMaskRule()

    def __call__(self, fused: np.ndarray, prepared: PreparedCase) -> np.ndarray:
        from clinfuse.diffusion.guidance import head_mask_rule

        if prepared.ndim not in self.cache:
            self.cache[prepared.ndim] = load_model(self.checkpoint, prepared.ndim, self.device)
        model = self.cache[prepared.ndim].model
        self.mask_rule = head_mask_rule(model)
        return lesion_probability(model, fused, prepared)
