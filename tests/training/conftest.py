"""Tiny synthetic prepared cases for the training tests (a sphere head with a skull shell)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clinfuse.preprocess.prepared import PreparedCase


def make_case(
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


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the test CPU is shared, and oversubscribed OpenMP threads are slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cases3d() -> list[PreparedCase]:
    return [make_case(f"c{i}", seed=i, lesion=i != 1) for i in range(3)]
