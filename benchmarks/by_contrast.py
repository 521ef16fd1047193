"""ROI-SSIM (and lesion metrics) per MRI contrast: one markdown table from evaluate outputs.

Each phantom's contrast (T1/T2/ADC) comes from its `truth.json`. A classical fusion rule can win
one ROI on one contrast and lose it on another (T1: bright marrow, dark CSF; T2: the reverse), so
the per-contrast rows show what the pooled mean hides.

    python benchmarks/by_contrast.py --phantoms PHANTOMS OUT [OUT ...] [--out FILE.md]

OUT is an evaluate output folder (with per_case.csv) or a benchmark folder (one sub-folder per
method). Cells: mean ± sd over the cases of that contrast without an error; n = cases.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from clinfuse.errors import ClinfuseInputError
from clinfuse.evaluation.percase import read_per_case, summarise_column
from clinfuse.evaluation.reference import REFERENCE_ROLE, SCORED_AGAINST_COLUMN
from clinfuse.evaluation.tables import cell, method_name

ROI = ("brain_ssim", "bone_ssim")
LESION = ("dice", "nsd", "hd95")
CONTRAST_ORDER = ("T1", "T2", "ADC")


def run_folders(outs: list[Path]) -> list[Path]:
    """Evaluate output folders: each OUT itself, or its sub-folders when OUT is a benchmark."""
    found: list[Path] = []
    for out in outs:
        if (out / "per_case.csv").is_file():
            found.append(out)
            continue
        subs = (
            sorted(d for d in out.iterdir() if (d / "per_case.csv").is_file())
            if out.is_dir()
            else []
        )
        if not subs:
            raise ClinfuseInputError("no per_case.csv here or in its sub-folders", out)
        found += subs
    return found


def labels(folders: list[Path]) -> list[str]:
    """Method names from summary.json; the folder name is added where a name repeats (e.g. the
    same model evaluated with guidance on x_t and on x̂0)."""
    names = [method_name(f) for f in folders]
    return [
        f"{n} ({f.name})" if names.count(n) > 1 else n for n, f in zip(names, folders, strict=True)
    ]


def case_contrasts(phantoms: Path) -> dict[str, str]:
    """`{case_id: contrast}` from `<phantoms>/<case_id>/truth.json` (config.mri_contrast)."""
    out = {}
    for truth in sorted(phantoms.glob("*/truth.json")):
        data = json.loads(truth.read_text(encoding="utf-8"))
        out[truth.parent.name] = str(data["config"]["mri_contrast"])
    if not out:
        raise ClinfuseInputError("no <case>/truth.json here (not a phantom folder?)", phantoms)
    return out


def by_contrast_table(
    rows_by_method: dict[str, list[dict[str, Any]]], contrasts: dict[str, str]
) -> str:
    """Markdown: one row per contrast and method; ROI-SSIM columns, lesion columns if any."""
    all_rows = [r for rows in rows_by_method.values() for r in rows]

    def has(col: str) -> bool:
        return any(not math.isnan(r.get(col, math.nan)) for r in all_rows)

    cols = [c for c in (*ROI, *LESION) if c in ROI or has(c)]
    present = sorted(
        {contrasts[r["case_id"]] for r in all_rows if r["case_id"] in contrasts},
        key=lambda c: (CONTRAST_ORDER.index(c) if c in CONTRAST_ORDER else 99, c),
    )
    lines = [
        "| contrast | method | n | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for con in present:
        for method, rows in rows_by_method.items():
            sel = [r for r in rows if contrasts.get(r["case_id"]) == con and not r.get("error")]
            cells = []
            for c in cols:
                # HD95 of an empty prediction counted apart, as in every evaluation table
                cells.append(cell(summarise_column(sel, c), ci=False))
            lines.append(f"| {con} | {method} | {len(sel)} | " + " | ".join(cells) + " |")
    missing = sorted({r["case_id"] for r in all_rows} - set(contrasts))
    notes = []
    if missing:
        notes.append(f"Cases without a truth.json (left out): {', '.join(missing)}.")
    n_ref = sum(1 for r in all_rows if r.get(SCORED_AGAINST_COLUMN) == REFERENCE_ROLE)
    if n_ref:
        notes.append(
            f"Bone scored against the unmoved CT (`{REFERENCE_ROLE}`) in {n_ref} of "
            f"{len(all_rows)} method × case rows."
        )
    return "\n".join(lines) + "\n" + "".join(f"\n{n}\n" for n in notes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outs", nargs="+", type=Path, help="evaluate or benchmark output folders")
    ap.add_argument("--phantoms", type=Path, required=True, help="the phantom dataset folder")
    ap.add_argument("--out", type=Path, help="also write the table to this markdown file")
    ap.add_argument("--title", default=None, help="a heading line above the table")
    args = ap.parse_args(argv)
    try:
        folders = run_folders(args.outs)
        rows = {name: read_per_case(f) for name, f in zip(labels(folders), folders, strict=True)}
        table = by_contrast_table(rows, case_contrasts(args.phantoms))
    except ClinfuseInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    command = "python benchmarks/by_contrast.py " + " ".join(
        [f"--phantoms {args.phantoms}", *(str(o) for o in args.outs)]
    )
    head = [f"# {args.title}", ""] if args.title else []
    text = "\n".join([*head, f"Command: `{command}`", "", table])
    if args.out is not None:
        from clinfuse.io.atomic import write_text_atomic

        write_text_atomic(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
