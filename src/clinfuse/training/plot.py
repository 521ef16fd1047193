"""Training curves from `RUN/metrics.csv`: diffusion loss and validation ROI-SSIM against step.

Run as `python -m clinfuse.training.plot RUN [OUT.png]`; `train()` also writes `RUN/curves.png`.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from clinfuse.errors import ClinfuseInputError


def read_metrics(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a metrics.csv as float arrays (empty cells -> NaN)."""
    path = Path(path)
    if not path.is_file():
        raise ClinfuseInputError("metrics file not found", path)
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ClinfuseInputError("metrics file has no rows", path)
    cols: dict[str, np.ndarray] = {}
    for key in rows[0]:
        cols[key] = np.array([float(r[key]) if r[key] not in ("", None) else np.nan for r in rows])
    return cols


def _smooth(y: np.ndarray, n: int) -> np.ndarray:
    if y.size < n or n <= 1:
        return y
    kernel = np.ones(n) / n
    return np.convolve(np.pad(y, (n // 2, n - 1 - n // 2), mode="edge"), kernel, mode="valid")


def plot_curves(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Two panels: training losses (raw and smoothed) and validation ROI-SSIM / PSNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clinfuse.io.atomic import atomic_write

    m = read_metrics(metrics_csv)
    step = m["step"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    n = max(1, len(step) // 50)
    for key, colour in (("loss_diffusion", "C0"), ("loss_roi", "C1")):
        if key in m:
            ax1.plot(step, m[key], color=colour, alpha=0.25, lw=0.8)
            ax1.plot(step, _smooth(m[key], n), color=colour, label=f"{key} (mean of {n})")
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_title("training loss")
    ax1.legend()
    for key, colour in (("val_ssim_brain", "C2"), ("val_ssim_bone", "C3"), ("val_roi_ssim", "k")):
        sel = np.isfinite(m.get(key, np.array([])))
        if sel.any():
            ax2.plot(step[sel], m[key][sel], "o-", color=colour, label=key, ms=3)
    ax2.set_xlabel("step")
    ax2.set_title("validation (EMA weights, DDIM)")
    ax2.legend(loc="lower right")
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_write(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_png


def main(argv: list[str] | None = None) -> None:
    """`python -m clinfuse.training.plot RUN [OUT.png]`."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__)
        raise SystemExit(2)
    run = Path(args[0])
    out = Path(args[1]) if len(args) > 1 else run / "curves.png"
    print(plot_curves(run / "metrics.csv", out))


if __name__ == "__main__":
    main()
