"""Speed of ROI-guided fusion on this machine (issue 11): one command, one process.

    python benchmarks/speed.py [--checkpoint CKPT] [--threads N] [--precision auto|bf16|fp32]
        [--steps S] [--n-inner K] [--repeats 3] [--scaling 48x48x48,...] [--before]
        [--pause-pids runs/training.pids] [--no-demo] [--json OUT.json]

Prints markdown tables (docs/SPEED.md has a copy with the command that made it):

1. **CPU**: model, cores used, ISA detected at run time (`/proc/cpuinfo` flags) and the FP32
   peak = cores x GHz x SIMD lanes x 2 (FMA) x FMA units, with the assumptions spelled out.
2. **Per case** — a 64³ phantom, a 96x112x96 phantom at 2 mm (a 2 mm head) and a real head
   (`chris_t1_wholehead`, a TRAINING-side volume, never a test case, resampled to 2 mm, with the
   shared pseudo-CT generator `phantom.realhead`): the denoiser forward alone (median of
   `--repeats`, float32 and the sampling precision), its FLOPs (`torch.utils.flop_counter`),
   achieved GFLOP/s and share of the peak; a plain MONAI `DiffusionModelUNet` of the same size
   (nn.Conv3d, MONAI's default attention) doing the same forward and the same number of DDIM
   steps (the ratio ours/plain); unguided and guided sampling (`pipeline.fuse_prepared`,
   stroke preset, lesion guide predicted, whole-volume window) with wall time, peak RSS
   (VmHWM, reset before each run) and the cost of guidance; voxels per second.
3. **Scaling**: guided and unguided wall time against voxel count (`--scaling` sizes, phantoms
   at 2 mm), and seconds per million voxels (constant = linear).
4. **`clinfuse demo`** (unless `--no-demo`): wall time and peak RSS of the README's first command
   (`clinfuse demo --out TMP --overwrite`, a child process, in a pause window).
5. **The README's timing line**, printed last from these numbers: README.md carries it verbatim.

Timing discipline: `--pause-pids FILE` sends SIGSTOP to the PIDs listed in FILE (one per line;
e.g. background training) just before each timed block and SIGCONT right after it, also on
error or Ctrl-C, so every window stays short. Wall times are medians of `--repeats`: for
forwards, and for the unguided and guided samplings of the per-case table, which run
interleaved (unguided, guided, unguided, ...) so the guidance cost is a ratio of medians; the
scaling table's samplings are single runs.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REAL_HEAD = Path(__file__).resolve().parents[2] / "shared/data/volumes/chris_t1_wholehead/t1.nii.gz"
SEED_64, SEED_96 = 5100, 5101  # validation-side phantom seeds (never benchmark 1000-1009)


# --------------------------------------------------------------------------- pausing


class Pauser:
    """SIGSTOP / SIGCONT the PIDs in a file around timed blocks; always resumes."""

    def __init__(self, pid_file: Path | None) -> None:
        self.pids: list[int] = []
        if pid_file is not None and pid_file.is_file():
            for line in pid_file.read_text().split():
                if line.strip().isdigit():
                    self.pids.append(int(line))
        self.stopped: list[int] = []
        atexit.register(self.resume)

    def install_signal_handlers(self) -> None:
        """SIGTERM / Ctrl-C resume the paused processes before exiting (the command line)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.resume()
        raise SystemExit(128 + signum)

    def pause(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGSTOP)
                self.stopped.append(pid)
            except ProcessLookupError:
                pass

    def resume(self) -> None:
        while self.stopped:
            pid = self.stopped.pop()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    @contextlib.contextmanager
    def window(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()


# --------------------------------------------------------------------------- CPU


@dataclass
class CpuInfo:
    model: str
    cores: int
    threads: int
    ghz: float
    ghz_source: str
    isa: str
    lanes: int  # FP32 lanes per vector
    fma_units: int
    bf16: str  # native bf16 units found
    peak_gflops: float
    note: str


def detect_cpu(threads: int) -> CpuInfo:
    from clinfuse.nn.precision import cpu_flags, default_threads

    flags = cpu_flags()
    model = platform.processor() or "unknown"
    mhz: list[float] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "cpu MHz":
                mhz.append(float(value))
    ghz, source = 0.0, "unknown"
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_freq.is_file():
        ghz, source = int(max_freq.read_text()) / 1e6, "cpufreq cpuinfo_max_freq"
    elif mhz:
        ghz, source = max(mhz) / 1e3, "/proc/cpuinfo 'cpu MHz' (no cpufreq: VM; nominal clock)"
    if "avx512f" in flags:
        isa, lanes = "AVX-512 + FMA", 16
    elif "avx2" in flags and "fma" in flags:
        isa, lanes = "AVX2 + FMA", 8
    elif "sse2" in flags:
        isa, lanes = "SSE2 (no FMA)", 4
    else:
        isa, lanes = "unknown", 4
    fma_units = 2  # server x86 cores since Haswell issue 2 FMAs per cycle (AVX-512: ports 0+5)
    bf16 = ", ".join(f for f in ("amx_bf16", "avx512_bf16") if f in flags) or "none"
    cores = default_threads()
    used = min(threads, cores)  # the peak of the cores this run may use
    fma = 2 if "FMA" in isa and "no FMA" not in isa else 1
    peak = used * ghz * lanes * fma * fma_units
    note = (
        f"peak FP32 = {used} core(s) x {ghz:.2f} GHz x {lanes} lanes x {fma} (FMA) x "
        f"{fma_units} FMA units = {peak:.0f} GFLOP/s (assumes 2 FMA units per core and the "
        "nominal clock; turbo, AVX-512 down-clocking and a VM's vCPU sharing are not modelled)"
    )
    if "amx_bf16" in flags:
        note += (
            f"; AMX-BF16 adds a nominal {used * ghz * 1024:.0f} GFLOP/s (512 bf16 FMAs per "
            "cycle per core) that oneDNN's bf16 convolutions can use"
        )
    return CpuInfo(model, cores, threads, ghz, source, isa, lanes, fma_units, bf16, peak, note)


# --------------------------------------------------------------------------- cases


def phantom_case(shape: Sequence[int], seed: int, spacing: float = 2.0) -> Any:
    from clinfuse.phantom import PhantomConfig, generate_phantom
    from clinfuse.preprocess.pipeline import preprocess_case

    cfg = PhantomConfig(
        shape=tuple(int(s) for s in shape),
        spacing=(spacing,) * 3,
        mri_contrast="T1",
        lesion="ischaemic",
        n_lesions=1,
    )
    case = generate_phantom(cfg, seed).case
    case.case_id = "phantom_" + "x".join(str(s) for s in shape)
    return preprocess_case(case)


def real_head_case(path: Path = REAL_HEAD) -> Any:
    from clinfuse.phantom.realhead import RealHeadConfig, generate_real_pair, load_real_mri
    from clinfuse.preprocess.pipeline import preprocess_case

    real = load_real_mri(path)
    cfg = RealHeadConfig(contrast="T1", spacing=2.0, lesion="ischaemic", augment=False)
    case = generate_real_pair(real, cfg, 0, case_id="chris_t1_2mm").case
    return preprocess_case(case)


# --------------------------------------------------------------------------- measuring


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_gb() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def median_time(fn: Callable[[], Any], repeats: int, pauser: Pauser) -> float:
    """Median wall seconds of `repeats` calls after a warm-up call (oneDNN primitive creation);
    the process CPU seconds of the same calls go to CPU_TIMES (contention inflates them less)."""
    fn()
    times, cpus = [], []
    with pauser.window():
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    CPU_TIMES.append(statistics.median(cpus))
    return statistics.median(times)


CPU_TIMES: list[float] = []


def plain_monai_unet(model: Any) -> torch.nn.Module:
    """A stock MONAI DiffusionModelUNet with our denoiser's size (nn.Conv3d, default attention)."""
    from monai.networks.nets import DiffusionModelUNet

    c = model.config
    return DiffusionModelUNet(
        spatial_dims=c.spatial_dims,
        in_channels=4 if c.concat_conditioning else 1,
        out_channels=1,
        num_res_blocks=c.num_res_blocks,
        channels=tuple(c.channels),
        attention_levels=tuple(c.attention_levels),
        norm_num_groups=c.norm_num_groups,
        num_head_channels=c.num_head_channels,
        with_conditioning=True,
        transformer_num_layers=1,
        cross_attention_dim=c.token_dim,
    ).eval()


def count_flops(model: torch.nn.Module, fn: Callable[[], Any]) -> float:
    """FLOPs of `fn()` (`torch.utils.flop_counter`); our `OneDNNConv3d` layers are counted as
    the `nn.Conv3d` they are (the counter does not know `torch.mkldnn_convolution`)."""
    from torch.utils.flop_counter import FlopCounterMode

    from clinfuse.nn.cpu_conv import OneDNNConv3d

    swapped = [m for m in model.modules() if type(m) is OneDNNConv3d]
    for m in swapped:
        m.__class__ = torch.nn.Conv3d
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
    finally:
        for m in swapped:
            m.__class__ = OneDNNConv3d
    return float(counter.get_total_flops())


def autocast(precision: str) -> Any:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def grid_of(prep: Any, model: Any) -> tuple[int, ...]:
    from clinfuse.diffusion.sliding import padded_shape

    return padded_shape(prep.shape, int(model.size_multiple), None)


def time_case(
    prep: Any, loaded: Any, args: argparse.Namespace, pauser: Pauser, precision: str
) -> dict[str, Any]:
    from clinfuse.diffusion.samplers import ddim_step, ddim_timesteps
    from clinfuse.diffusion.schedule import NoiseSchedule
    from clinfuse.nn.precision import for_sampling

    model = loaded.model
    grid = grid_of(prep, model)
    voxels = int(np.prod(grid))
    g = torch.Generator().manual_seed(0)
    cond = torch.rand(1, 3, *grid, generator=g) * 4 - 2
    x = torch.randn(1, 1, *grid, generator=g)
    t = torch.tensor([500])
    out: dict[str, Any] = {"case": prep.case_id, "shape": list(prep.shape), "grid": list(grid)}
    out["load_before"] = os.getloadavg()[0]
    out["voxels"] = voxels
    with torch.no_grad():
        tokens = model.encode(cond)
        plain = plain_monai_unet(model)
        h = torch.cat([x, cond], dim=1)
        fwd = {}
        for prec in sorted({"fp32", precision}):
            # what sampling runs: bf16 with a channels_last_3d copy (nn.precision.for_sampling)
            run = for_sampling(model, prec)
            fmt = torch.channels_last_3d if run is not model else torch.contiguous_format
            xs, cs = x.contiguous(memory_format=fmt), cond.contiguous(memory_format=fmt)
            with autocast(prec):
                fwd[f"ours_{prec}"] = median_time(
                    lambda run=run, xs=xs, cs=cs: run(xs, t, cs, tokens), args.repeats, pauser
                )
                fwd[f"ours_{prec}_cpu"] = CPU_TIMES[-1]
                fwd[f"plain_{prec}"] = median_time(
                    lambda: plain(h, timesteps=t, context=tokens), args.repeats, pauser
                )
        flops = count_flops(model, lambda: model(x, t, cond, tokens))
    out["forward_s"] = fwd
    out["gflop"] = flops / 1e9
    out["gflops_fp32"] = flops / 1e9 / fwd["ours_fp32"]
    out["gflops_sampling"] = flops / 1e9 / fwd[f"ours_{precision}"]

    # plain MONAI doing the same DDIM steps (forward + DDIM update), sampling precision
    schedule = NoiseSchedule(model.config.num_train_steps, model.config.schedule)
    ts = ddim_timesteps(schedule.num_steps, args.steps)

    def plain_loop() -> None:
        z = torch.randn(1, 1, *grid, generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), autocast(precision):
            for i, tt in enumerate(ts):
                tb = torch.tensor([tt])
                x0 = plain(torch.cat([z, cond], dim=1), timesteps=tb, context=tokens).float()
                x0, eps = schedule.split_prediction(x0, z, tb, "x0")
                z = ddim_step(z, x0, eps, tt, ts[i + 1] if i + 1 < len(ts) else -1, schedule)

    with pauser.window():
        t0 = time.perf_counter()
        plain_loop()
        out["plain_sampling_s"] = time.perf_counter() - t0

    runs = sampling_runs(args)
    # `--repeats` runs of each, interleaved (unguided, guided, unguided, ...): the guidance cost
    # is a ratio of medians, so a slow spell of the VM does not land on one side only
    walls: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(max(1, args.repeats)):
        for name, overrides in runs.items():
            reset_peak_rss()
            res, wall, cpu_s = timed_fuse(prep, model, overrides, args, precision, pauser)
            walls[name].append(wall)
            cpus[name].append(cpu_s)
            out[f"{name}_rss_gb"] = max(out.get(f"{name}_rss_gb", 0.0), peak_rss_gb())
            if name == "guided":
                out["lesion_source"] = res.lesion_source
    for name in runs:
        out[f"{name}_s"] = float(np.median(walls[name]))
        out[f"{name}_cpu_s"] = float(np.median(cpus[name]))
        out[f"{name}_runs_s"] = [round(v, 2) for v in walls[name]]
    out["guidance_overhead"] = out["guided_s"] / out["unguided_s"] - 1.0
    out["voxels_per_s"] = voxels / out["guided_s"]
    return out


def sampling_runs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The two samplings every case is timed with: guidance overrides by name."""
    guided: dict[str, Any] = {} if args.n_inner is None else {"n_inner": args.n_inner}
    return {"unguided": {"eta": 0.0}, "guided": guided}


def timed_fuse(
    prep: Any,
    model: Any,
    overrides: dict[str, Any],
    args: argparse.Namespace,
    precision: str,
    pauser: Pauser,
) -> tuple[Any, float, float]:
    """One `fuse_prepared` (stroke preset, whole volume, seed 0) inside a pause window:
    (result, wall seconds, process CPU seconds)."""
    from clinfuse.pipeline import fuse_prepared

    with pauser.window():
        t0, c0 = time.perf_counter(), time.process_time()
        res = fuse_prepared(
            prep,
            model,
            preset="stroke",
            overrides=overrides or None,
            steps=args.steps,
            seed=0,
            window="whole",
            precision=precision,
        )
        return res, time.perf_counter() - t0, time.process_time() - c0


def time_before(prep: Any, loaded: Any, pauser: Pauser) -> float:
    """The settings before issue 11 (float32, DDIM-20, 10 inner steps), guided, one run."""
    from clinfuse.pipeline import fuse_prepared

    with pauser.window():
        t0 = time.perf_counter()
        fuse_prepared(
            prep,
            loaded.model,
            preset="stroke",
            overrides={"n_inner": 10},
            steps=20,
            window="whole",
            precision="fp32",
        )
        return time.perf_counter() - t0


# --------------------------------------------------------------------------- report


def print_report(
    cpu: CpuInfo,
    rows: list[dict[str, Any]],
    scaling: list[dict[str, Any]],
    args: argparse.Namespace,
    precision: str,
    before: dict[str, float],
    demo: dict[str, float] | None = None,
) -> None:
    p = print
    p(f"torch {torch.__version__}, {cpu.model}, {cpu.threads} threads of {cpu.cores} cores")
    p(f"ISA: {cpu.isa}; native bf16: {cpu.bf16}; clock {cpu.ghz:.2f} GHz from {cpu.ghz_source}")
    p(cpu.note)
    p(
        f"sampling precision: {precision}; DDIM-{args.steps}; guidance n_inner "
        f"{args.n_inner if args.n_inner is not None else 'preset'}; stroke preset; window whole"
    )
    p()
    p(
        "| case | grid (voxels) | fwd fp32 s | fwd " + precision + " s | GFLOP | GFLOP/s fp32 "
        "(% peak) | plain MONAI fwd fp32 s | ours/plain fwd | plain MONAI DDIM s | unguided s "
        "(GB) | guided s (GB) | guidance cost | Mvoxel/s |"
    )
    p("|" + "---|" * 13)
    for r in rows:
        f = r["forward_s"]
        p(
            f"| {r['case']} | {'x'.join(map(str, r['grid']))} ({r['voxels'] / 1e6:.2f} M) "
            f"| {f['ours_fp32']:.2f} | {f[f'ours_{precision}']:.2f} | {r['gflop']:.0f} "
            f"| {r['gflops_fp32']:.0f} ({100 * r['gflops_fp32'] / cpu.peak_gflops:.0f} %) "
            f"| {f['plain_fp32']:.2f} | {f['ours_fp32'] / f['plain_fp32']:.2f} "
            f"| {r['plain_sampling_s']:.1f} | {r['unguided_s']:.1f} ({r['unguided_rss_gb']:.2f}) "
            f"| {r['guided_s']:.1f} ({r['guided_rss_gb']:.2f}) "
            f"| {100 * r['guidance_overhead']:+.0f} % | {r['voxels_per_s'] / 1e6:.3f} |"
        )
    if any(f"plain_{precision}" in r["forward_s"] for r in rows) and precision != "fp32":
        p()
        p(
            f"{precision} forwards: "
            + "; ".join(
                f"{r['case']}: ours {r['forward_s'][f'ours_{precision}']:.2f} s "
                f"({r['gflops_sampling']:.0f} GFLOP/s effective), plain MONAI "
                f"{r['forward_s'][f'plain_{precision}']:.2f} s"
                for r in rows
            )
        )
    p()
    p(
        "process CPU seconds (all threads): "
        + "; ".join(
            f"{r['case']}: fwd fp32 {r['forward_s']['ours_fp32_cpu']:.2f}, fwd {precision} "
            f"{r['forward_s'][f'ours_{precision}_cpu']:.2f}, unguided {r['unguided_cpu_s']:.1f}, "
            f"guided {r['guided_cpu_s']:.1f} (1-min load average before the case "
            f"{r['load_before']:.1f})"
            for r in rows
        )
    )
    if before:
        p()
        for k, v in before.items():
            p(f"before issue 11 (fp32, DDIM-20, n_inner 10) guided {k}: {v:.1f} s")
    if scaling:
        p()
        p("| grid | voxels (M) | unguided s | guided s | guided s/Mvoxel | guided CPU s/Mvoxel |")
        p("|---|---|---|---|---|---|")
        for r in scaling:
            p(
                f"| {'x'.join(map(str, r['grid']))} | {r['voxels'] / 1e6:.3f} "
                f"| {r['unguided_s']:.1f} | {r['guided_s']:.1f} "
                f"| {r['guided_s'] / (r['voxels'] / 1e6):.1f} "
                f"| {r.get('guided_cpu_s', float('nan')) / (r['voxels'] / 1e6):.1f} |"
            )
    if demo is not None:
        p()
        p(f"clinfuse demo: {demo['wall_s']:.1f} s wall, {demo['peak_rss_gb']:.2f} GB peak RSS")
    if rows:
        p()
        p("README timing line:")
        p(readme_line(rows, demo, cpu, precision, int(args.steps)))


# The demo runs in a child that reports its own peak RSS (`peak_rss_gb`) at exit: getrusage's
# maxrss of a child would include the forked copy of this (larger) process from before its exec.
_DEMO_CHILD = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from speed import peak_rss_gb
from clinfuse.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print("PEAK_RSS_GB", peak_rss_gb(), file=sys.stderr)
"""


def time_demo(pauser: Pauser, threads: int) -> dict[str, float]:
    """`clinfuse demo` as a user runs it (a child process, its own output folder): wall seconds
    and the child's peak RSS (GB)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, pauser.window():
        cmd = [sys.executable, "-c", _DEMO_CHILD, "demo", "--out", f"{tmp}/demo", "--overwrite"]
        cmd += ["--threads", str(threads)]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    gb = [ln.split()[1] for ln in done.stderr.splitlines() if ln.startswith("PEAK_RSS_GB")]
    return {"wall_s": wall, "peak_rss_gb": float(gb[-1]) if gb else float("nan")}


def readme_line(
    rows: list[dict[str, Any]],
    demo: dict[str, float] | None,
    cpu: CpuInfo,
    precision: str,
    steps: int = 10,
) -> str:
    """The README's timing sentence from one run's numbers (README.md carries it verbatim)."""
    head = next((r for r in rows if r["case"].startswith("phantom_96")), rows[-1])
    costs = [100 * r["guidance_overhead"] for r in rows]
    text = (
        f"Measured with `python benchmarks/speed.py` on {cpu.model} ({cpu.threads} threads; "
        f"docs/SPEED.md), nothing else running during the timed blocks: a guided fuse of a "
        f"{'×'.join(map(str, head['grid']))} volume at 2 mm takes {head['guided_s']:.1f} s and "
        f"{head['guided_rss_gb']:.1f} GB ({'bf16' if precision == 'bf16' else 'float32'}, "
        f"DDIM-{steps}, whole-volume window); guidance costs {min(costs):+.0f} to "
        f"{max(costs):+.0f} % over unguided sampling "
        f"({', '.join(r['case'] for r in rows)}, medians)"
    )
    if demo is not None:
        text += (
            f"; `clinfuse demo` takes {demo['wall_s']:.0f} s and {demo['peak_rss_gb']:.2f} GB "
            "peak RSS"
        )
    return text + "."


def parse_size(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().split("x"))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped one")
    ap.add_argument("--threads", type=int, default=None, help="default: all cores")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--steps", type=int, default=None, help="default: the library default")
    ap.add_argument("--n-inner", type=int, default=None, help="default: the preset's")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default="64x64x64,96x112x96,real")
    ap.add_argument(
        "--scaling",
        default="48x48x48,128x128x112",
        help="extra phantom sizes for the time-vs-voxels table (the cases' own rows are added)",
    )
    ap.add_argument(
        "--before",
        action="store_true",
        help="also time the pre-issue-11 settings (fp32, DDIM-20, 10 inner) at 64³",
    )
    ap.add_argument("--pause-pids", type=Path, default=None)
    ap.add_argument("--no-demo", action="store_true", help="skip timing `clinfuse demo`")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--report", type=Path, default=None, help="reprint the tables of a --json file")
    args = ap.parse_args(argv)
    if args.report is not None:
        d = json.loads(args.report.read_text())
        args.steps, args.n_inner = d["steps"], d.get("n_inner")
        cpu = detect_cpu(d["threads"])
        print_report(cpu, d["rows"], d["scaling"], args, d["precision"], d["before"], d.get("demo"))
        return 0

    from clinfuse.nn.precision import resolve_precision, set_threads
    from clinfuse.pipeline import load_model

    threads = set_threads(args.threads)
    if args.steps is None:
        from clinfuse.diffusion import DEFAULT_STEPS

        args.steps = DEFAULT_STEPS
    precision = resolve_precision(args.precision, "cpu")
    cpu = detect_cpu(threads)
    pauser = Pauser(args.pause_pids)
    pauser.install_signal_handlers()
    loaded = load_model(args.checkpoint, 3, "cpu")
    print(
        f"checkpoint {loaded.path} (sha256 {loaded.sha256[:12]}, step {loaded.step})",
        file=sys.stderr,
    )
    rows, scaling, before = [], [], {}
    for spec in [s for s in args.cases.split(",") if s]:
        prep = (
            real_head_case()
            if spec == "real"
            else phantom_case(parse_size(spec), SEED_64 if spec.startswith("64") else SEED_96)
        )
        print(f"timing {prep.case_id} {prep.shape}", file=sys.stderr, flush=True)
        row = time_case(prep, loaded, args, pauser, precision)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.before and spec.startswith("64"):
            before[prep.case_id] = time_before(prep, loaded, pauser)
    for spec in [s for s in args.scaling.split(",") if s]:
        prep = phantom_case(parse_size(spec), SEED_96)
        print(f"scaling {prep.case_id}", file=sys.stderr, flush=True)
        r = {"grid": list(grid_of(prep, loaded.model))}
        r["voxels"] = int(np.prod(r["grid"]))
        for name, ov in sampling_runs(args).items():
            _, r[f"{name}_s"], r[f"{name}_cpu_s"] = timed_fuse(
                prep, loaded.model, ov, args, precision, pauser
            )
        scaling.append(r)
    scaling += [
        {k: r[k] for k in ("grid", "voxels", "unguided_s", "guided_s", "guided_cpu_s")}
        for r in rows
        if not r["case"].startswith("chris")
    ]
    scaling.sort(key=lambda r: r["voxels"])
    demo = None if args.no_demo else time_demo(pauser, threads)
    print_report(cpu, rows, scaling, args, precision, before, demo)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "cpu": cpu.__dict__,
                    "rows": rows,
                    "scaling": scaling,
                    "before": before,
                    "demo": demo,
                    "precision": precision,
                    "steps": args.steps,
                    "n_inner": args.n_inner,
                    "threads": threads,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
