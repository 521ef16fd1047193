"""Fuse a case end to end (the library entry point of `clinfuse fuse`), in three parts:
`model` (checkpoint lookup, device, loading, the lesion head on any image), `fuse` (sampling a
prepared case or a case from files) and `outputs` (the output folder and run.json).

The pipeline imports preprocessing, networks and diffusion, never the evaluation harness or the
CLI; the CLI registers `clinfuse_method_factory` with the harness.
"""

from __future__ import annotations

from clinfuse.pipeline.fuse import (
    LESION_OUTSIDE_BRAIN_MAX,
    FusionResult,
    LesionMode,
    WindowMode,
    check_lesion_in_brain,
    clinfuse_method_factory,
    fuse_case,
    fuse_prepared,
)
from clinfuse.pipeline.model import (
    CHECKPOINT_DIR,
    SHIPPED_CHECKPOINTS,
    LoadedModel,
    default_checkpoint,
    lesion_head_predictor,
    lesion_probability,
    load_model,
    resolve_device,
    sha256_of,
    shipped_checkpoint_path,
)
from clinfuse.pipeline.outputs import write_outputs

__all__ = [
    "CHECKPOINT_DIR",
    "LESION_OUTSIDE_BRAIN_MAX",
    "SHIPPED_CHECKPOINTS",
    "FusionResult",
    "LesionMode",
    "LoadedModel",
    "WindowMode",
    "check_lesion_in_brain",
    "clinfuse_method_factory",
    "default_checkpoint",
    "fuse_case",
    "fuse_prepared",
    "lesion_head_predictor",
    "lesion_probability",
    "load_model",
    "resolve_device",
    "sha256_of",
    "shipped_checkpoint_path",
    "write_outputs",
]
