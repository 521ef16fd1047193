"""Build the training data of the shipped 3D model (issue 13): real-anatomy pairs from every
real volume except the two test cases, plus phantoms, all at 2 mm, in one folder.

    python benchmarks/build_training_data.py OUT [--per-source N] [--phantoms N]
        [--lesion-phantoms N] [--t1-phantoms N] [--small-phantoms N]
        [--small-haemorrhage-phantoms N] [--small-adc-phantoms N] [--small-dwi-phantoms N]
        [--branch-phantoms N] [--ranged-phantoms N]
        [--lesion-free-real N] [--seed S]
        [--patients P,...] [--exclude-patients P,...] [--keep-existing] [--realhead-version 1|2|3]
    python benchmarks/build_training_data.py OUT --union-of SET [SET ...]

OUT/real (real-anatomy pairs, `clinfuse.phantom.realhead.write_real_dataset`, seeds
S + 1000 * source + k) and OUT/phantoms (`write_phantom_dataset`, seeds 20000 + S, all five
contrasts, lesion kinds cycled) are written, and with the options, parts of phantoms with one
lesion each in issue 10's sizes, for the lesion head:
- `--lesion-phantoms`: OUT/lesion_phantoms, seeds 30000 + S, all five contrasts, ischaemic,
  0.5-80 mL;
- `--t1-phantoms`: OUT/t1_phantoms, seeds 40000 + S, T1 only, ischaemic, 0.5-80 mL (the
  subtlest contrast);
- `--small-phantoms`: OUT/small_phantoms, seeds 41000 + S, all five contrasts, ischaemic,
  0.5-5 mL;
- `--small-haemorrhage-phantoms`: OUT/small_haemorrhage_phantoms, seeds 42000 + S, all five
  contrasts, haemorrhagic, 0.5-5 mL;
- `--small-adc-phantoms`: OUT/small_adc_phantoms, seeds 43000 + S, ADC only, ischaemic,
  0.5-2 mL: the plainly dark small infarct the session-16 head sees but is under-confident on
  (session 21, `lesion_checks.py small`; held-out 7002 is one);
- `--small-dwi-phantoms`: OUT/small_dwi_phantoms, seeds 44000 + S, DWI only, ischaemic,
  0.5-2 mL: beside the small ADC part, so a head that learns small ADC infarcts keeps its
  small DWI ones (session 22: a head trained with the ADC part alone found one fewer of 8);
- `--branch-phantoms`: OUT/branch_phantoms, seeds 45000 + S, all five contrasts, ischaemic
  branch infarcts (`PhantomConfig.ischaemic_territories = ("branch",)`), 1-10 mL: the sizes
  between lacunes (up to ~1 mL) and whole territories (from ~9 mL) that no other part draws
  (session 28);
- `--ranged-phantoms`: OUT/ranged_phantoms, seeds 60000 + S, all five contrasts, ischaemic /
  haemorrhagic / none cycled, 0.5-80 mL: the held-out lesion sets' design plus lesion-free
  cases, used with `--seed 500` for validation (docs/TRAINING.md, session 11);
- `--lesion-free-real`: OUT/real_lesion_free, N real-anatomy pairs per source with no inserted
  lesion (seeds S + 900 + 1000 * source + k; C-STAR's own unlabelled lesion stays unknown, as
  in OUT/real): where a head's false lesions on real anatomy show (session 17).
`--patients` / `--exclude-patients` keep the real-anatomy parts to / away from some people
(chris, rire001, visible_male, cstar): a person left out of training and validated on alone
tells whether a head's behaviour on real anatomy carries to anatomy it has never seen (every
validation set up to session 20 drew its real pairs from the training people).
Then OUT/all/manifest.csv lists them all (paths relative to OUT/all), and
OUT/all_phantoms/manifest.csv every phantom part (all but the real parts): with OUT/real, the two
data sets of `clinfuse train-lesion --data OUT/real --data OUT/all_phantoms --data-share ...`
(real anatomy keeps its share of the samples however many phantoms there are). `--keep-existing`
reuses a part whose manifest.csv is already there (a part copied or linked from an earlier
build with the same options). Training (`--seed 0`) and validation (`--seed 500`) seeds are
disjoint, and both from the held-out phantoms (7000-7211). `--realhead-version 1` rebuilds the
real-anatomy pairs exactly as sessions 11-14 made them (every data set named in docs/TRAINING.md
up to session 14, and the shipped checkpoint's), `--realhead-version 2` those of sessions 15-25;
the default is the current generator (version 3: lesion levels on each image's own tissue scale).
`--union-of SET ...` builds nothing: OUT/all/manifest.csv lists every case of the given built
sets' `all` manifests (or of a part's own manifest: SET/manifest.csv, e.g. RUNS/data6v2/real),
case ids prefixed with the set's folder name and paths relative to OUT/all (e.g. one larger
validation set to calibrate a head on, session 22's val17 + val24). With `--patients` /
`--exclude-patients` it keeps the rows of those people / of everyone else (by the manifest's
patient_id; phantoms are their own patients): a leave-one-person-out split of sets already
built, without generating them again (session 25).
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from clinfuse.phantom import PhantomConfig, write_phantom_dataset
from clinfuse.phantom.realhead import REALHEAD_VERSION, REALHEAD_VERSIONS, write_real_dataset

VOLUMES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "volumes"


LESION_FREE_REAL = "real_lesion_free"
LESION_FREE_SEED_OFFSET = 900  # real pairs use seeds S + 1000 * source + k, k < 900


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-source", type=int, default=8)
    ap.add_argument("--phantoms", type=int, default=20)
    ap.add_argument("--lesion-phantoms", type=int, default=0)
    ap.add_argument("--t1-phantoms", type=int, default=0)
    ap.add_argument("--small-phantoms", type=int, default=0)
    ap.add_argument("--small-haemorrhage-phantoms", type=int, default=0)
    ap.add_argument("--small-adc-phantoms", type=int, default=0)
    ap.add_argument("--small-dwi-phantoms", type=int, default=0)
    ap.add_argument("--branch-phantoms", type=int, default=0)
    ap.add_argument("--ranged-phantoms", type=int, default=0)
    ap.add_argument(
        "--lesion-free-real",
        type=int,
        default=0,
        help="N lesion-free real-anatomy pairs per source in OUT/real_lesion_free (seeds "
        "S + 900 + 1000 * source + k): where a head's false lesions on real anatomy show",
    )
    ap.add_argument(
        "--patients",
        default=None,
        help="comma-separated: real-anatomy pairs of these people only (RealSource.patient: "
        "chris, rire001, visible_male, cstar), e.g. a validation set of a person left out",
    )
    ap.add_argument(
        "--exclude-patients",
        default="",
        help="comma-separated: real-anatomy pairs of everyone but these people (a training "
        "set that leaves a person out); a kept source's pairs are those of a full build",
    )
    ap.add_argument("--keep-existing", action="store_true")
    ap.add_argument(
        "--union-of",
        nargs="+",
        type=Path,
        default=None,
        help="build nothing: OUT/all lists the cases of these built sets' SET/all manifests",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spacing", type=float, default=2.0)
    ap.add_argument("--root", type=Path, default=VOLUMES)
    ap.add_argument(
        "--realhead-version",
        choices=REALHEAD_VERSIONS,
        default=REALHEAD_VERSION,
        help="real-anatomy generator version (1: the data of sessions 11-14, 2: sessions 15-25)",
    )
    args = ap.parse_args()
    t0 = time.time()
    out = args.out
    if args.union_of:
        n = write_union_of(
            out,
            args.union_of,
            None if args.patients is None else _names(args.patients),
            _names(args.exclude_patients),
        )
        print(f"wrote {out / 'all'}: {n} cases of {', '.join(str(d) for d in args.union_of)}")
        return

    who = {
        "patients": None if args.patients is None else _names(args.patients),
        "exclude_patients": _names(args.exclude_patients),
    }

    def todo(part: str) -> bool:
        return not (args.keep_existing and (out / part / "manifest.csv").is_file())

    if todo("real"):
        write_real_dataset(
            out / "real",
            args.root,
            args.per_source,
            args.seed,
            spacing=args.spacing,
            overwrite=True,
            version=args.realhead_version,
            progress=lambda cid: print(f"{time.time() - t0:7.1f}s real {cid}", flush=True),
            **who,
        )
    if args.lesion_free_real > 0 and todo(LESION_FREE_REAL):
        write_real_dataset(
            out / LESION_FREE_REAL,
            args.root,
            args.lesion_free_real,
            args.seed + LESION_FREE_SEED_OFFSET,
            spacing=args.spacing,
            lesion_cycle=("none",),
            overwrite=True,
            version=args.realhead_version,
            progress=lambda cid: print(f"{time.time() - t0:7.1f}s lesion-free {cid}", flush=True),
            **who,
        )
    s = args.spacing
    cfg = PhantomConfig(shape=(96, 96, 72), spacing=(s, s, s))
    ranged = replace(cfg, lesion_ml=(0.5, 80.0))
    small = replace(cfg, lesion_ml=(0.5, 5.0))
    smallest = replace(cfg, lesion_ml=(0.5, 2.0))
    branch = replace(cfg, lesion_ml=(1.0, 10.0), ischaemic_territories=("branch",))
    # part: (config, first seed, count, lesion kind(s), contrast); a part of count 0 is left out
    phantom_parts = [
        ("phantoms", (cfg, 20000, args.phantoms, "mixed", "all")),
        ("lesion_phantoms", (ranged, 30000, args.lesion_phantoms, "ischaemic", "all")),
        ("t1_phantoms", (ranged, 40000, args.t1_phantoms, "ischaemic", "T1")),
        ("small_phantoms", (small, 41000, args.small_phantoms, "ischaemic", "all")),
        (
            "small_haemorrhage_phantoms",
            (small, 42000, args.small_haemorrhage_phantoms, "haemorrhagic", "all"),
        ),
        ("small_adc_phantoms", (smallest, 43000, args.small_adc_phantoms, "ischaemic", "ADC")),
        ("small_dwi_phantoms", (smallest, 44000, args.small_dwi_phantoms, "ischaemic", "DWI")),
        ("branch_phantoms", (branch, 45000, args.branch_phantoms, "ischaemic", "all")),
        ("ranged_phantoms", (ranged, 60000, args.ranged_phantoms, "mixed", "all")),
    ]
    real_parts = ["real"] + ([LESION_FREE_REAL] if args.lesion_free_real > 0 else [])
    parts = [(p, None) for p in real_parts]
    parts += [(part, spec) for part, spec in phantom_parts if spec[2] > 0]
    for part, spec in parts:
        if spec is None or not todo(part):
            continue
        base, seed0, n, lesion, contrast = spec
        write_phantom_dataset(
            out / part,
            n,
            base,
            seed0 + args.seed,
            overwrite=True,
            contrast=contrast,
            lesion=lesion,
            progress=lambda i, cid: print(f"{time.time() - t0:7.1f}s phantom {cid}", flush=True),
        )
    write_union(out, [p for p, _ in parts], "all")
    write_union(out, [p for p, _ in parts if p not in real_parts], "all_phantoms")
    print(f"{time.time() - t0:7.1f}s wrote {out / 'all'} and {out / 'all_phantoms'}")


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def write_union_of(
    out: Path,
    sets: list[Path],
    patients: list[str] | None = None,
    exclude_patients: Sequence[str] = (),
) -> int:
    """OUT/all/manifest.csv over the `all` manifests of built sets, or a part's own manifest
    (SET/manifest.csv), case ids prefixed with each set's folder name (which must differ),
    paths rebased to OUT/all; only the rows of `patients` (None: everyone) and not of
    `exclude_patients` (by patient_id). The number of cases."""
    names = [d.resolve().name for d in sets]
    if len(set(names)) != len(names):
        raise SystemExit(f"--union-of: sets need distinct folder names, got {names}")
    target = (out / "all").resolve()
    rows = []
    for d, name in zip(sets, names, strict=True):
        manifest = d / "all" / "manifest.csv"
        if not manifest.is_file() and (d / "manifest.csv").is_file():
            manifest = d / "manifest.csv"  # a part of a built set
        if not manifest.is_file():
            raise SystemExit(f"--union-of: {manifest} not found (build the set first)")
        with open(manifest, newline="") as f:
            for row in csv.DictReader(f):
                who = row.get("patient_id") or ""
                if (patients is not None and who not in patients) or who in exclude_patients:
                    continue
                rel = {
                    k: (
                        os.path.relpath((manifest.parent / v).resolve(), target)
                        if v and k not in ("case_id", "patient_id")
                        else v
                    )
                    for k, v in row.items()
                }
                rel["case_id"] = f"{name}_{row['case_id']}"
                rows.append(rel)
    _write_manifest(target, rows)
    return len(rows)


def write_union(out: Path, parts: list[str], name: str) -> None:
    """OUT/NAME/manifest.csv over the given parts (paths relative to it); each phantom is its
    own patient."""
    rows = []
    for part in parts:
        with open(out / part / "manifest.csv", newline="") as f:
            for row in csv.DictReader(f):
                rel = {
                    k: (f"../{part}/{v}" if v and k not in ("case_id", "patient_id") else v)
                    for k, v in row.items()
                }
                rel["case_id"] = f"{part}_{row['case_id']}" if part != "real" else row["case_id"]
                rel.setdefault("patient_id", "")
                rel["patient_id"] = rel.get("patient_id") or rel["case_id"]
                rows.append(rel)
    _write_manifest(out / name, rows)


def _write_manifest(folder: Path, rows: list[dict[str, str]]) -> None:
    cols = ["case_id", "mri", "ct", "brain", "bone", "lesion", "ignore", "patient_id"]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c) or "" for c in cols})


if __name__ == "__main__":
    main()
