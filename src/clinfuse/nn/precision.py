"""Run-time CPU capabilities, inference precision and thread count (docs/SPEED.md).

Sampling may run the networks under bf16 autocast where the hardware has native bf16 arithmetic:
on CPU that means AMX-BF16 or AVX512-BF16 (oneDNN then uses real bf16 kernels; without them
PyTorch emulates bf16 and is *slower* than float32), on CUDA `torch.cuda.is_bf16_supported()`.
Detection is at run time from the CPU flags in `/proc/cpuinfo`; where they cannot be read (not
Linux) the answer is "no", so the default is always the safe one (float32).

Owns `cpu_flags`, `native_bf16`, `resolve_precision`, `autocast_for`, `AutocastModel`,
`use_channels_last` / `for_sampling` (channels_last_3d with bf16) and `set_threads`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from clinfuse.errors import ClinfuseInputError

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
# CPU flags (Linux /proc/cpuinfo names) that mean native bf16 arithmetic for oneDNN
BF16_CPU_FLAGS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (`/proc/cpuinfo` "flags"); empty if unknown."""
    path = Path("/proc/cpuinfo")
    try:
        text = path.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """True when `device` computes bf16 natively (CPU: AMX-BF16 or AVX512-BF16; CUDA: sm80+)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return any(f in cpu_flags() for f in BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """`auto` -> `bf16` where `native_bf16(device)`, else `fp32`; `bf16`/`fp32` pass through.

    Asking for `bf16` explicitly is honoured on any device (PyTorch emulates it; slow but
    correct), so tests can exercise the bf16 path everywhere.
    """
    if precision not in PRECISIONS:
        raise ClinfuseInputError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


@contextlib.contextmanager
def autocast_for(precision: str, device: str | torch.device = "cpu") -> Iterator[None]:
    """Network calls inside run under bf16 autocast when `precision` resolves to bf16.

    Only the networks belong inside: losses and the DDIM update stay float32 (masked SSIM
    switches autocast off itself; `losses.lesion` sums in float32).
    """
    dev = torch.device(device)
    if resolve_precision(precision, dev) == "bf16":
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            yield
    else:
        yield


class AutocastModel:
    """Wrap a model (`FusionModel` or `SlidingWindowModel`) so that `encode`, the denoiser call
    and `lesion_head` run under `autocast_for(precision)` and return float32.

    Everything else (`config`, `size_multiple`, `parameters`, ...) is the wrapped model's. The
    sampler's own arithmetic (DDIM update, x̂0 clamp, SSIM and lesion losses) stays float32.
    Gradients flow through `lesion_head` as usual (guidance needs them).
    """

    def __init__(self, model: Any, precision: str = "auto", channels_last: bool = False) -> None:
        self.model = model
        self.device = _device_of(model)
        self.precision = resolve_precision(precision, self.device)
        # 5D inputs go in as channels_last_3d (pair with `for_sampling`'s channels-last copy)
        self.channels_last = bool(channels_last)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["model"], name)

    def _run(self, fn: Any, *args: Any) -> torch.Tensor:
        if self.channels_last:
            args = tuple(
                a.contiguous(memory_format=torch.channels_last_3d)
                if isinstance(a, torch.Tensor) and a.ndim == 5
                else a
                for a in args
            )
        if self.precision != "bf16":
            out = fn(*args)
        else:
            with autocast_for("bf16", self.device):
                out = fn(*args)
        return out.float().contiguous()

    def encode(self, cond: torch.Tensor) -> torch.Tensor:
        """`model.encode(cond)` under autocast, float32 out."""
        return self._run(self.model.encode, cond)

    def __call__(self, *args: Any) -> torch.Tensor:
        """`model(x_t, t, cond, tokens)` under autocast, float32 out."""
        return self._run(self.model, *args)

    def lesion_head(
        self, x: torch.Tensor, cond: torch.Tensor, box: Sequence[slice] | None = None
    ) -> torch.Tensor:
        """`model.lesion_head(x, cond)` under autocast, float32 logits out (`box`: the logits
        of that region only, see `LesionHead.forward`)."""
        if box is None:
            return self._run(self.model.lesion_head, x, cond)
        return self._run(functools.partial(self.model.lesion_head, box=box), x, cond)


def use_channels_last(model: Any, precision: str) -> bool:
    """channels_last_3d pays off only with bf16 on CPU 3D models: measured 1.7x faster bf16
    forwards at 64³, while float32 got 1.6x *slower* (our oneDNN float32 convolution works in
    the default layout; docs/SPEED.md)."""
    dev = _device_of(model)
    dims = getattr(getattr(model, "config", None), "spatial_dims", None)
    return dev.type == "cpu" and dims == 3 and resolve_precision(precision, dev) == "bf16"


def for_sampling(model: Any, precision: str, channels_last: bool | None = None) -> Any:
    """The network to sample with: `model` itself, or a channels_last_3d copy of it when
    `channels_last` (None: `use_channels_last(model, precision)`). The caller's model is never
    changed; the copy shares nothing with it (a few tens of MB for the shipped model)."""
    import copy

    if channels_last is None:
        channels_last = use_channels_last(model, precision)
    if not channels_last:
        return model
    return copy.deepcopy(model).to(memory_format=torch.channels_last_3d)


def _device_of(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    if params is not None:
        for p in params():
            return p.device
    inner = getattr(model, "model", None)
    return _device_of(inner) if inner is not None else torch.device("cpu")


def default_threads() -> int:
    """All cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op CPU threads: `n`, or all available cores when None. Returns it."""
    if n is None:
        n = default_threads()
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ClinfuseInputError(f"--threads must be an integer >= 1, got {n!r}")
    torch.set_num_threads(n)
    return n
