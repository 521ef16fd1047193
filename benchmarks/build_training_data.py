"""Build the training data of the shipped 3D model (issue 13): real-anatomy pairs from every
real volume except the two test cases, plus phantoms, all at 2 mm, in one folder.

    python benchmarks/build_training_data.py OUT [--per-source N] [--phantoms N] [--seed S]

OUT/real (real-anatomy pairs, `clinfuse.phantom.realhead.write_real_dataset`, seeds
S + 1000 * source + k) and OUT/phantoms (`write_phantom_dataset`, seeds 20000+, all five
contrasts) are written, then OUT/all/manifest.csv lists both (paths relative to OUT/all).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from clinfuse.phantom import PhantomConfig, write_phantom_dataset
from clinfuse.phantom.realhead import write_real_dataset

VOLUMES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "volumes"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-source", type=int, default=8)
    ap.add_argument("--phantoms", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spacing", type=float, default=2.0)
    ap.add_argument("--root", type=Path, default=VOLUMES)
    args = ap.parse_args()
    t0 = time.time()
    out = args.out
    write_real_dataset(
        out / "real",
        args.root,
        args.per_source,
        args.seed,
        spacing=args.spacing,
        overwrite=True,
        progress=lambda cid: print(f"{time.time() - t0:7.1f}s real {cid}", flush=True),
    )
    s = args.spacing
    cfg = PhantomConfig(shape=(96, 96, 72), spacing=(s, s, s))
    write_phantom_dataset(
        out / "phantoms",
        args.phantoms,
        cfg,
        20000 + args.seed,
        overwrite=True,
        contrast="all",
        lesion="mixed",
        progress=lambda i, cid: print(f"{time.time() - t0:7.1f}s phantom {cid}", flush=True),
    )
    # One manifest over both parts; each phantom is its own patient.
    rows = []
    for part in ("real", "phantoms"):
        with open(out / part / "manifest.csv", newline="") as f:
            for row in csv.DictReader(f):
                rel = {
                    k: (f"../{part}/{v}" if v and k not in ("case_id", "patient_id") else v)
                    for k, v in row.items()
                }
                rel["case_id"] = (
                    f"{part}_{row['case_id']}" if part == "phantoms" else row["case_id"]
                )
                rel.setdefault("patient_id", "")
                rel["patient_id"] = rel.get("patient_id") or rel["case_id"]
                rows.append(rel)
    cols = ["case_id", "mri", "ct", "brain", "bone", "lesion", "ignore", "patient_id"]
    (out / "all").mkdir(parents=True, exist_ok=True)
    with open(out / "all" / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    print(f"{time.time() - t0:7.1f}s wrote {len(rows)} cases to {out / 'all' / 'manifest.csv'}")


if __name__ == "__main__":
    main()
