"""Training of the fusion model: typed configs, data and jitter, the loop, checkpoints, DDP."""

from clinfuse.training.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from clinfuse.training.config import TrainConfig, resolve_config
from clinfuse.training.data import TrainData, load_train_data
from clinfuse.training.jitter import JitterParams, apply_jitter, sample_jitter
from clinfuse.training.loop import NonFiniteLossError, TrainResult, train

__all__ = [
    "JitterParams",
    "LoadedCheckpoint",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainData",
    "TrainResult",
    "apply_jitter",
    "load_checkpoint",
    "load_train_data",
    "resolve_config",
    "sample_jitter",
    "save_checkpoint",
    "train",
]
