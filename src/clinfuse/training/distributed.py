"""Multi-process training with PyTorch DDP: process-group setup from `torchrun`'s environment,
device choice per rank, and small collective helpers. Gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from clinfuse.errors import ClinfuseInputError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job. `world_size == 1` means plain single-process training."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # True if `setup_distributed` created the process group (so it tears it down)

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files, logs and progress bars."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """`auto` → CUDA if available else CPU; under DDP on CUDA, the rank's own GPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ClinfuseInputError("--device cuda was asked for but no CUDA device is available")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if device == "cpu":
        return torch.device("cpu")
    raise ClinfuseInputError(f"unknown device {device!r}: use auto, cpu or cuda")


def setup_distributed(device: str | torch.device = "auto") -> DistInfo:
    """Join the process group if this process was started by `torchrun` (WORLD_SIZE > 1) or
    one exists already (e.g. a test that called `init_process_group`); else single process."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistInfo(rank, world, local, resolve_device(device, local), owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, 0, resolve_device(device), owns_group=False)
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev, owns_group=True)


def teardown_distributed(info: DistInfo) -> None:
    """Destroy the process group if `setup_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in single-process training)."""
    if not info.enabled:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in single-process training)."""
    if info.enabled:
        dist.barrier()
