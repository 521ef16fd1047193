"""How long sampling will take, estimated before it starts (the note `fuse` prints): one timed
call of each network on the actual working grid, times the number of calls the sampler will
make. An estimate, not a promise: a shared CPU, the first call's warm-up and guidance
arithmetic not timed here all move the real figure."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

SLOW_SECONDS = 600.0
"""An expected sampling time above this turns the note into a warning with a hint."""


def _timed(fn: Any) -> float:
    """Wall seconds of `fn()`; CUDA work is waited for (kernels run asynchronously)."""
    import torch

    cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def estimate_sampling(
    net: Any,
    cond: Any,
    masks: Mapping[str, Any],
    *,
    steps: int,
    num_train_steps: int,
    guidance: Any,
) -> dict[str, Any]:
    """Expected seconds of `guided_sample(net, cond, masks, ..., steps, guidance)`.

    Times one encoder call, one denoiser forward (`net(x, t, cond, tokens)`, sliding windows
    included when `net` is a `SlidingWindowModel`), one lesion-head forward and one masked-SSIM
    forward+backward (brain) on the grid of `cond`; multiplies by what the sampler calls:
    `steps` denoiser forwards; per step with t <= T/2 `lesion_inner` lesion-head forward+backward
    passes (counted as 3 forwards); the final lesion-head call; `n_inner` (mode x0; the last
    step `final_inner` when set) or 1 (mode xt) brain+bone SSIM gradient steps per step.
    Returns the parts and `expected_s`.
    """
    import torch

    from clinfuse.diffusion.samplers import ddim_timesteps
    from clinfuse.losses.ssim import masked_ssim

    b = cond.shape[0]
    x = torch.zeros((b, 1, *cond.shape[2:]), dtype=cond.dtype, device=cond.device)
    t = torch.full((b,), num_train_steps - 1, dtype=torch.long, device=cond.device)
    parts: dict[str, float] = {}
    with torch.no_grad():
        tokens: list[Any] = []
        parts["encode_s"] = _timed(lambda: tokens.append(net.encode(cond)))
        parts["denoiser_s"] = _timed(lambda: net(x, t, cond, tokens[0]))
    eta = float(getattr(guidance, "eta", 0.0))
    lesion_on = eta > 0 and float(getattr(guidance, "gamma", 0.0)) > 0
    head = 0.0
    if hasattr(net, "lesion_head"):
        with torch.no_grad():
            head = _timed(lambda: net.lesion_head(x, cond))
    parts["lesion_head_s"] = head
    ssim = 0.0
    roi_terms = sum(float(getattr(guidance, k, 0.0)) > 0 for k in ("alpha", "beta"))
    if eta > 0 and roi_terms:

        def ssim_step() -> None:
            z = x.clone().requires_grad_(True)
            masked_ssim(z, cond[:, :1], masks["brain"].to(z.dtype)).backward()

        ssim = _timed(ssim_step)
    parts["ssim_s"] = ssim
    half = num_train_steps / 2
    n_lesion_steps = sum(1 for s in ddim_timesteps(num_train_steps, steps) if s <= half)
    mode = str(getattr(guidance, "mode", "x0"))
    inner = int(getattr(guidance, "n_inner", 1)) if mode == "x0" else 1
    final = int(getattr(guidance, "final_inner", 0)) if mode == "x0" else 0
    ssim_calls = (steps - 1) * inner + (final if final > 0 else inner)
    lesion_inner = int(getattr(guidance, "lesion_inner", 1)) if mode == "x0" else 1
    calls = {
        "denoiser": steps,
        "lesion_head": 1 + (n_lesion_steps * lesion_inner * 3 if lesion_on else 0),
        "ssim": ssim_calls * roi_terms if ssim else 0,
    }
    expected = (
        parts["encode_s"]
        + calls["denoiser"] * parts["denoiser_s"]
        + calls["lesion_head"] * head
        + calls["ssim"] * ssim
    )
    return {
        "expected_s": expected,
        "timed": parts,
        "calls": calls,
        "slow": expected > SLOW_SECONDS,
        "method": "one timed call of each network on the working grid x the number of calls",
    }
