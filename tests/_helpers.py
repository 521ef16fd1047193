"""Shared test fixtures as plain functions (imported as `from _helpers import ...`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clinfuse.preprocess.prepared import PreparedCase


def ball(
    shape: Sequence[int],
    centre_mm: Sequence[float],
    radius_mm: float,
    spacing: Sequence[float],
) -> np.ndarray:
    """Bool mask of the voxels whose centres lie within `radius_mm` of `centre_mm` (2D or 3D).

    Voxel i along an axis sits at i * spacing mm, so with spacing 1 the centre is in voxels.
    """
    grids = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    d2 = sum((g - c) ** 2 for g, c in zip(grids, centre_mm, strict=True))
    return d2 <= radius_mm**2


def make_training_case(
    case_id: str,
    shape: tuple[int, ...] = (20, 20, 18),
    spacing: tuple[float, ...] = (2.0, 2.0, 2.5),
    seed: int = 0,
    lesion: bool = True,
) -> PreparedCase:
    """Brain ball inside a bone shell; MRI bright in the brain, CT bright in the bone."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    rmax = min(shape) / 2 - 1
    brain = r < 0.65 * rmax
    bone = (r >= 0.65 * rmax) & (r < 0.85 * rmax)
    head = r < rmax
    mri = np.where(head, 0.0, -2.0) + np.where(brain, 1.0 + 0.1 * grids[0] / rmax, 0.0)
    ct = np.where(head, -0.5, -2.0) + np.where(bone, 1.5, 0.0)
    mri = (mri + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    ct = (ct + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    les = None
    if lesion:
        centre = [n // 2 + 1 for n in shape]
        les = (
            np.sqrt(
                sum(
                    (g - (c - (n - 1) / 2)) ** 2
                    for g, c, n in zip(grids, centre, shape, strict=False)
                )
            )
            < 2.5
        )
        mri = np.where(les, mri + 0.8, mri).astype(np.float32)
    affine = np.diag([*spacing, *([1.0] * (3 - len(spacing))), 1.0])
    return PreparedCase(
        case_id=case_id,
        mri=np.clip(mri, -2, 2),
        ct=np.clip(ct, -2, 2),
        ct_bone=np.clip(ct * 0.8, -2, 2).astype(np.float32),
        affine=affine,
        brain=brain,
        bone=bone,
        lesion=les,
    )


def tiny_fusion_checkpoint(path, lesion_inputs=None):  # noqa: ANN001, ANN201 (Path in/out)
    """A random `ci-tiny` 3D checkpoint at `path` whose output depends on x_t (MONAI
    zero-initialises the output conv, so every weight is nudged); seeded, test-only.
    `lesion_inputs`: what its lesion head reads (default: ci-tiny's)."""
    import torch
    from torch.optim.swa_utils import AveragedModel

    from clinfuse.training.checkpoint import build_model, save_checkpoint
    from clinfuse.training.config import resolve_config

    torch.manual_seed(0)  # test-only: the random initial weights of the tiny model
    extra = [] if lesion_inputs is None else [f"model.lesion_inputs={lesion_inputs}"]
    cfg = resolve_config("ci-tiny", extra)
    model = build_model(cfg.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    save_checkpoint(path, model=model, ema=AveragedModel(model), config=cfg, step=0)
    state = torch.load(path, weights_only=False)
    if any(type(v) is not str for v in state.get("versions", {}).values()):
        # torch.__version__ is a TorchVersion object, which torch.load(weights_only=True) rejects
        state["versions"] = {k: str(v) for k, v in state["versions"].items()}
        torch.save(state, path)
    return path
