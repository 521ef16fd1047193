"""Synthetic paired head MRI/CT stroke phantoms with exact brain/bone/lesion masks."""

from clinfuse.phantom.config import LESION_KINDS, MRI_CONTRASTS, PhantomConfig
from clinfuse.phantom.dataset import write_phantom_case, write_phantom_dataset
from clinfuse.phantom.generate import Phantom, generate_phantom, grid_affine

__all__ = [
    "LESION_KINDS",
    "MRI_CONTRASTS",
    "Phantom",
    "PhantomConfig",
    "generate_phantom",
    "grid_affine",
    "write_phantom_case",
    "write_phantom_dataset",
]
