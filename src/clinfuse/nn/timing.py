"""CPU forward-time measurements used to size the model presets (numbers in docs/MODEL.md).

Run: ``python -m clinfuse.nn.timing [--repeats 3]``; prints one row per (config, size).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from clinfuse.nn.model import FusionModel, ModelConfig

# Candidate denoisers compared in docs/MODEL.md (all with the default encoders and lesion head).
CANDIDATES: dict[str, dict[str, object]] = {
    "c16-32-64_attn3_rb1": {"channels": (16, 32, 64), "attention_levels": (False, False, True)},
    "c8-16-32_attn3_rb1": {
        "channels": (8, 16, 32),
        "attention_levels": (False, False, True),
        "encoder_widths": (8, 16, 32, 64),
    },
    "c16-32-64_attn3_rb2": {
        "channels": (16, 32, 64),
        "attention_levels": (False, False, True),
        "num_res_blocks": 2,
    },
    "c32-64-64_attn3_rb1": {"channels": (32, 64, 64), "attention_levels": (False, False, True)},
}
SIZES: tuple[tuple[int, int, int], ...] = ((32, 32, 32), (48, 48, 48), (64, 64, 48))


def time_forward(config: ModelConfig, size: Sequence[int], repeats: int = 3) -> dict[str, float]:
    """Median seconds of one denoiser forward (batch 1, tokens precomputed), its GFLOP and rate."""
    model = FusionModel(config).eval()
    g = torch.Generator().manual_seed(0)
    cond = torch.randn((1, 3, *size), generator=g)
    x = torch.randn((1, 1, *size), generator=g)
    t = torch.tensor([500])
    with torch.no_grad():
        tokens = model.encode(cond)
        t0 = time.perf_counter()
        model.encode(cond)
        encode_s = time.perf_counter() - t0
        with FlopCounterMode(display=False) as counter:
            model(x, t, cond, tokens)  # also the warm-up run
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x, t, cond, tokens)
            times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    gflop = counter.get_total_flops() / 1e9
    n_params = sum(p.numel() for p in model.denoiser.parameters())
    return {
        "seconds": sec,
        "gflop": gflop,
        "gflops_per_s": gflop / sec,
        "encode_s": encode_s,
        "denoiser_params_M": n_params / 1e6,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Print a Markdown table of forward times for :data:`CANDIDATES` × :data:`SIZES`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="*", default=list(CANDIDATES))
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| config | denoiser params (M) | size | forward s | GFLOP | GFLOP/s | encode s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.configs:
        cfg = ModelConfig(**CANDIDATES[name])  # type: ignore[arg-type]
        for size in SIZES:
            r = time_forward(cfg, size, args.repeats)
            print(
                f"| {name} | {r['denoiser_params_M']:.2f} | {'×'.join(map(str, size))} | "
                f"{r['seconds']:.3f} | {r['gflop']:.1f} | {r['gflops_per_s']:.0f} | "
                f"{r['encode_s']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
