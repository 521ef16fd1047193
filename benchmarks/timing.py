"""CPU forward / training-step measurements used to size the model presets (docs/MODEL.md).

Run: ``python benchmarks/timing.py [--threads 1] [--repeats 3]``. The machine is shared, so
besides wall time it reports process CPU time, which contention inflates far less.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from clinfuse.nn.cpu_conv import OneDNNConv3d
from clinfuse.nn.model import FusionModel, ModelConfig

# Candidate denoisers compared in docs/MODEL.md (default encoders and lesion head).
CANDIDATES: dict[str, dict[str, Any]] = {
    "c16-32-64_att3": {"channels": (16, 32, 64), "attention_levels": (False, False, True)},
    "c8-16-32_att3": {
        "channels": (8, 16, 32),
        "attention_levels": (False, False, True),
        "encoder_widths": (8, 16, 32, 64),
    },
    "c16-32-64-64_att4": {
        "channels": (16, 32, 64, 64),
        "attention_levels": (False, False, False, True),
    },
    "c8-16-32-32_att4": {
        "channels": (8, 16, 32, 32),
        "attention_levels": (False, False, False, True),
        "encoder_widths": (8, 16, 32, 64),
    },
}
SIZES: tuple[tuple[int, ...], ...] = ((32, 32, 32), (48, 48, 48), (64, 64, 48))


def _stock(model: nn.Module) -> nn.Module:
    """A copy with plain ``nn.Conv3d`` and MONAI's default attention (for the baseline row)."""
    m = copy.deepcopy(model)
    for mod in m.modules():
        if type(mod) is OneDNNConv3d:
            mod.__class__ = nn.Conv3d
        if hasattr(mod, "use_flash_attention"):
            mod.use_flash_attention = False
    return m


def _clock(fn: Any, repeats: int) -> tuple[float, float]:
    """Median (wall s, CPU s) of ``repeats`` calls after one warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def time_forward(
    config: ModelConfig, size: Sequence[int], repeats: int = 3, stock: bool = False
) -> dict[str, float]:
    """One denoiser forward, batch 1, tokens precomputed: wall/CPU seconds and GFLOP.

    FLOPs are counted on the stock network (the oneDNN and flash-attention kernels are not seen
    by ``FlopCounterMode``; the math is the same).
    """
    model = FusionModel(config).eval()
    if stock:
        model = _stock(model)
    g = torch.Generator().manual_seed(0)
    cond = torch.randn((1, 3, *size), generator=g)
    x = torch.randn((1, 1, *size), generator=g)
    t = torch.tensor([500])
    with torch.no_grad():
        tokens = model.encode(cond)
        wall, cpu = _clock(lambda: model(x, t, cond, tokens), repeats)
        enc_wall, _ = _clock(lambda: model.encode(cond), 1)
        with FlopCounterMode(display=False) as counter:
            _stock(model)(x, t, cond, tokens)
    return {
        "wall": wall,
        "cpu": cpu,
        "gflop": counter.get_total_flops() / 1e9,
        "encode_wall": enc_wall,
        "params_M": sum(p.numel() for p in model.denoiser.parameters()) / 1e6,
    }


def time_train_step(
    config: ModelConfig,
    size: Sequence[int],
    batch: int = 2,
    repeats: int = 3,
    bf16: bool = False,
) -> tuple[float, float]:
    """Forward + backward of encoders, denoiser and lesion head: (wall s, CPU s).

    ``bf16=True`` runs the forward under CPU bf16 autocast (the training loop's ``amp: auto``).
    """
    model = FusionModel(config).train()
    g = torch.Generator().manual_seed(0)
    cond = torch.randn((batch, 3, *size), generator=g)
    x = torch.randn((batch, 1, *size), generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x, t, cond, model.encode(cond))
            logits = model.lesion_head(out, cond)
        loss = out.float().square().mean() + logits.float().square().mean()
        loss.backward()

    return _clock(step, repeats)


def time_sampling(config: ModelConfig, size: Sequence[int], steps: int = 20) -> tuple[float, float]:
    """One unguided DDIM run (``diffusion.samplers.sample``), batch 1: (wall s, CPU s)."""
    from clinfuse.diffusion.samplers import sample
    from clinfuse.diffusion.schedule import NoiseSchedule

    model = FusionModel(config).eval()
    schedule = NoiseSchedule(config.num_train_steps, config.schedule)
    cond = torch.randn((1, 3, *size), generator=torch.Generator().manual_seed(0))

    def run() -> None:
        sample(model, cond, schedule, steps=steps, generator=torch.Generator().manual_seed(1))

    return _clock(run, 1)


def main(argv: Sequence[str] | None = None) -> None:
    """Print Markdown tables of forward and training-step times."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--configs", nargs="*", default=list(CANDIDATES))
    parser.add_argument("--stock", action="store_true", help="also time plain MONAI layers")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step table")
    parser.add_argument("--sample", action="store_true", help="time DDIM-20 at 64×64×48 only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.sample:
        print("| config | DDIM-20 at 64×64×48: wall s | CPU s |\n|---|---|---|")
        for name in args.configs:
            wall, cpu = time_sampling(ModelConfig(**CANDIDATES[name]), (64, 64, 48))
            print(f"| {name} | {wall:.1f} | {cpu:.1f} |", flush=True)
        return
    print("| config | params (M) | size | forward wall s | forward CPU s | GFLOP | encode wall s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.configs:
        cfg = ModelConfig(**CANDIDATES[name])
        for stock in (False, True) if args.stock else (False,):
            label = name + (" (stock MONAI)" if stock else "")
            for size in SIZES:
                r = time_forward(cfg, size, args.repeats, stock=stock)
                print(
                    f"| {label} | {r['params_M']:.2f} | {'×'.join(map(str, size))} | "
                    f"{r['wall']:.3f} | {r['cpu']:.3f} | {r['gflop']:.1f} | "
                    f"{r['encode_wall']:.3f} |",
                    flush=True,
                )
    cfg2d = ModelConfig.preset("harvard2d")
    for size in ((128, 128), (256, 256)):
        r = time_forward(cfg2d, size, args.repeats)
        print(
            f"| harvard2d | {r['params_M']:.2f} | {'×'.join(map(str, size))} | "
            f"{r['wall']:.3f} | {r['cpu']:.3f} | {r['gflop']:.1f} | {r['encode_wall']:.3f} |",
            flush=True,
        )
    print("\n| config | train step 32³, batch 2: wall s | CPU s | bf16 autocast wall s | CPU s |")
    print("|---|---|---|---|---|")
    for name in [] if args.no_train else args.configs:
        cfg = ModelConfig(**CANDIDATES[name])
        wall, cpu = time_train_step(cfg, (32, 32, 32))
        wall16, cpu16 = time_train_step(cfg, (32, 32, 32), bf16=True)
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {wall16:.3f} | {cpu16:.3f} |", flush=True)


if __name__ == "__main__":
    main()
