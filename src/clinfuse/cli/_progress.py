"""Progress lines for long commands that work without a TTY (log files, CI): step, elapsed
time and ETA, one line per step, on stderr."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console


def _fmt_s(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _faster(info: dict[str, Any]) -> list[str]:
    """What would make a slow fusion faster, from what it runs with."""
    hints = []
    spacing = max(info.get("spacing") or [0.0])
    if info.get("sliding"):
        hints.append("--window whole (one network call per step instead of many windows)")
    hints.append(f"a coarser working grid (--spacing {max(2.0, 1.5 * spacing):g})")
    hints.append("fewer --steps")
    return hints


class StepLines:
    """`progress(steps_done, n_steps, info)` for `pipeline.fuse_case` / `fuse_prepared`.

    Step 0 (called after every input check, just before sampling) prints the working grid, the
    voxel count and the expected time; each later step prints `step i/n, elapsed, ETA`.
    """

    def __init__(self, console: Console | None = None, label: str = "DDIM") -> None:
        self.console = console or Console(stderr=True)
        self.label = label
        self.t0: float | None = None

    def __call__(self, done: int, total: int, info: dict[str, Any]) -> None:
        if done == 0 or self.t0 is None:
            self.t0 = time.perf_counter()
            if done == 0:
                self._start(total, info)
                return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (total - done) if done else float("nan")
        self.console.print(
            f"{self.label} step {done}/{total}  elapsed {_fmt_s(elapsed)}  ETA {_fmt_s(eta)}",
            highlight=False,
            soft_wrap=True,
        )

    def _start(self, total: int, info: dict[str, Any]) -> None:
        grid = info.get("grid")
        if grid is None:
            return
        text = (
            f"sampling {total} steps on a working grid of {'x'.join(map(str, grid))} voxels "
            f"({int(info.get('voxels', 0)):,} voxels x samples)"
        )
        expected = info.get("expected_s")
        if expected is not None:
            calls = info.get("calls", {})
            text += (
                f"; expected time about {_fmt_s(expected)} on this machine (an estimate: one "
                f"timed call of each network on this grid x {calls.get('denoiser', total)} "
                "denoiser steps and the guidance calls)"
            )
        if info.get("slow"):
            text += "; for a faster run: " + ", ".join(_faster(info))
        level = "[yellow]warning:[/]" if info.get("slow") else "note:"
        self.console.print(f"{level} {text}", highlight=False, soft_wrap=True)
