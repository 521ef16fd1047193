"""Checks behind docs/TRAINING.md and docs/BENCHMARKS.md (d) (issue 10), one command each.

    python benchmarks/lesion_checks.py contrast DATA            # a dataset folder / manifest
    python benchmarks/lesion_checks.py contrast --held-out 6 [--first-seed 7000]
    python benchmarks/lesion_checks.py minsize VAL_DATA [--checkpoint CKPT]
    python benchmarks/lesion_checks.py paired VAL_DATA --checkpoint NEW --against OLD
    python benchmarks/lesion_checks.py components VAL_DATA [--checkpoint CKPT] [--twin]
    python benchmarks/lesion_checks.py planes DATA
    python benchmarks/lesion_checks.py small [--checkpoint CKPT ...] [--sequences T1,ADC] [--n 4]
    python benchmarks/lesion_checks.py ghosts --seeds 7503 7103 [--checkpoint CKPT]
    python benchmarks/lesion_checks.py calibration VAL_DATA [--checkpoint CKPT] [--folds 2]
    python benchmarks/lesion_checks.py slices VAL_DATA [VAL_DATA ...] [--slab-mm 4] [--checkpoint C]
    python benchmarks/lesion_checks.py sizes EVAL_OUT [EVAL_OUT ...]  # lesion_eval.py --out dirs
    python benchmarks/lesion_checks.py record CKPT             # a head's calibration record

`contrast`: per case with a lesion, how far the lesion stands out in the prepared MRI and CT:
(lesion mean - mean of a 3-voxel ring around it inside the brain) / the ring's standard
deviation, the lesion volume, and the percentile of the lesion's mean MRI among the other brain
voxels (a dark T1 / ADC infarct sits low, a bright T2 / FLAIR / DWI one high), and its margin
beyond the brain's 1st-99th percentile in model units (`mri_margin`: what the head reads).
`--held-out N` uses the held-out phantoms of benchmarks/lesion_eval.py instead of a dataset.
`minsize`: on VALIDATION cases only, the head's Dice (threshold 0.5, composite as the fused
channel) and HD95 for several minimum component sizes, for keeping only components at least
a fraction of the largest one, and for the confidence filter `training.lesion` fits (secondary
components kept from a mean probability: `nn.lesion_mask.clean_mask`; after the head's own
minimum size, so these are the rules its calibration chose among); first the head's own
rule case by case, summed over real-anatomy pairs and phantoms, and by lesion size. Voxels of
unknown label (the manifest's `ignore` column) are left out of both masks, as in training's
validation. Never run it on the test heads (the loader refuses them).
`paired`: two heads on the same VALIDATION cases, each under its own rule, lesion by lesion:
Dice over every lesion with a paired Wilcoxon test, lesions each one finds, mean HD95 over the
lesions **both** find (a head that finds a lesion the other misses is not charged its HD95
there; those lesions are listed apart), and the false mL on each lesion-free case; then the
same per group of cases (real anatomy / phantom, by MRI sequence: like for like). Session 15's
shipping rule compared HD95 over each head's own found lesions, which charges a head for
finding more; this is the comparison a rule should name (docs/TRAINING.md, session 15).
`components`: every connected component of the head's mask under its own rule on VALIDATION
cases, true (touching the labelled lesion) or false, with its volume and mean probability:
how far the head's confidence separates its false lesions from its true ones (the case-level
gate's question, docs/TRAINING.md, session 18).
`planes`: per case, how symmetric the brain's MRI is about its mirror plane: the correlation
with the shift-only twin of the "+mirror" heads and with the rigid plane of the
"+rigid-mirror" heads (`clinfuse.nn.symmetry`), that plane and the time its search took.
`small`: small lesions (0.4-0.8 mL ischaemic by default; issue 10's range starts at 0.5) on
fresh phantoms per MRI sequence, seeds 80000 + 100 k + i (no training, validation or held-out
set uses them): how high each head's probability gets inside the lesion, whether its own rule
keeps a mask there (Dice, predicted mL), each lesion's MRI margin (`mri_margin`), then found,
mean Dice and the margins of the found and the missed lesions per sequence and head.
`--territories branch --ml 1 10`: branch infarcts (`PhantomConfig.ischaemic_territories`), the
1-10 mL infarcts the default territories never draw. With several heads, each against the first over
every sequence, lesion by lesion: found only by it, found only by the first, and the exact
McNemar p (`clinfuse.evaluation.stats.paired_mcnemar`; session 30).
`sizes`: the held-out phantoms of one or more `lesion_eval.py` runs (their
lesion_seg_per_case.csv; composite channel, 2 mm; a case in several runs counted once), by
lesion size: lesions, found (Dice > 0), mean Dice, and found per lesion kind. Reads results
only; no head is run.
`record`: a head's calibration as its checkpoint (or `--export-head` file) records it: the
validation set, the rule chosen, and per step of the rule search each choice's validation Dice,
mean HD95 over the lesions it leaves a prediction on, lesions overlapped and lesion-free cases
marked (columns the record lacks, e.g. HD95 of a head calibrated by Dice alone or counts from
before session 30, are left blank); `*` marks the choice kept. Reads the record only; no head
is run.
`ghosts`: on held-out phantoms given by seed (lesion_eval.py's sets, already used: a diagnosis,
never a choice), every component of the head's mask under its own rule, marked true, "ghost"
(not touching the lesion, within 2 voxels of the lesion reflected about the head's rigid mirror
plane: where the mirror channels show the lesion) or other false (session 23).
`calibration`: on VALIDATION cases only, calibration maps of the head's raw logits, each fitted
by binary NLL (`clinfuse.metrics.calibration`): a temperature on brain voxels (what
`train-lesion` fits), a temperature on lesion-neighbourhood voxels, a temperature on both regions
weighted equally (`region_weights`), Platt scaling on the neighbourhood, and the head's own
temperature with a second one within 10 mm of the head's mask under its own rule (fitted on
those voxels; the mask is unchanged); each scored by k-fold
cross-validation over cases (fold = case index mod k: fitted on the other folds, scored on this
one's pooled voxels), ECE (15 bins) and Brier over the brain and the 10 mm lesion
neighbourhood, then fitted on every case; and the head's own temperature for reference
(session 27).
`slices`: on the lesion-free cases of VALIDATION sets, the head's false lesions (own rule,
composite as the fused channel, 2 mm working grid) on each case's MRI as built and on the same
MRI re-acquired as thick axial slabs (`--slab-mm`: neighbouring slices averaged along the array
axis nearest to superior-inferior, the grid's spacing there multiplied; CT and masks stay on
their grid and preprocessing resamples everything to 2 mm, as for any thick-slice input), per
person (the manifest's patient id), a real head's own unlabelled lesions (the manifest's
`ignore` masks) left out as validation leaves them: does a thick-slice MRI make false lesions
(session 27)?
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

# Lesion-size bins (mL) of the minsize per-case summary: below issue 10's range, small,
# medium, large.
SIZE_BINS_ML = (0.0, 0.5, 2.0, 10.0, 1000.0)


def lesion_contrast(prep: Any) -> dict[str, float]:
    les = np.asarray(prep.lesion) > 0.5
    ring = ndimage.binary_dilation(les, iterations=3) & ~les & np.asarray(prep.brain, bool)
    out = {"ml": float(les.sum() * np.prod(prep.spacing) / 1000.0)}
    stack = prep.stack()
    for i, name in ((0, "mri"), (1, "ct")):
        a, r = stack[i][les], stack[i][ring]
        out[name] = float((a.mean() - r.mean()) / (r.std() + 1e-6))
    # Where the lesion's mean MRI lies among the rest of the brain (% of voxels below it):
    # free of the ring's make-up (a ring through CSF shifts the ring contrast) and of scale.
    rest = stack[0][np.asarray(prep.brain, bool) & ~les]
    mean = float(stack[0][les].mean())
    out["mri_pct"] = float(100.0 * np.mean(rest < mean)) if rest.size else 0.0
    out["margin"] = mri_margin(mean, rest)
    return out


def mri_margin(lesion_mean: float, rest: np.ndarray) -> float:
    """How far a lesion's mean MRI (model units) lies beyond the rest of the brain's
    1st-99th percentile range, on the side it departs to (below the 1st percentile for a
    lesion darker than the brain's median, above the 99th for a brighter one); negative when
    it lies inside that range. Unlike the ring contrast it is in the units the head reads, so
    a sequence whose brain occupies a narrow band of the model range (ADC: CSF sets the
    scale) shows a small margin. It did not predict which small ADC infarcts the shipped head
    finds (docs/TRAINING.md, session 28): a diagnostic column, not a cause."""
    if rest.size == 0:
        return float("nan")
    if lesion_mean < float(np.median(rest)):
        return float(np.percentile(rest, 1.0)) - lesion_mean
    return lesion_mean - float(np.percentile(rest, 99.0))


def contrast(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lesion_eval import held_out_id

    if args.held_out:
        from clinfuse.phantom.config import parse_territories
        from lesion_eval import held_out_phantoms

        sets = held_out_phantoms(
            args.held_out,
            first_seed=args.first_seed,
            lesion_ml=tuple(args.lesion_ml) if args.lesion_ml else None,
            territories=parse_territories(args.territories),
        )
        preps = [p for _, p, _ in sets]
    else:
        from clinfuse.io.dataset import load_dataset
        from clinfuse.preprocess.pipeline import preprocess_case

        preps = [preprocess_case(ref.load()) for ref in load_dataset(args.data)]
    rows = []
    print(
        "| case | lesion mL | MRI contrast (ring SD) | CT contrast (ring SD) "
        "| MRI percentile in the brain | MRI margin beyond the brain's 1-99 % |"
    )
    print("|---|---|---|---|---|---|")
    for p in preps:
        if p.lesion is None or not np.any(p.lesion):
            continue
        c: dict[str, Any] = dict(lesion_contrast(p))
        c["sequence"] = str(p.mri_contrast or "unknown")
        c["kind"] = (held_out_id(p.case_id) or ("", "lesion"))[1]
        rows.append(c)
        print(
            f"| {p.case_id} | {c['ml']:.1f} | {c['mri']:+.2f} | {c['ct']:+.2f} "
            f"| {c['mri_pct']:.0f} | {c['margin']:+.2f} |"
        )
    weak = sum(abs(c["mri"]) < 0.5 for c in rows)
    print(f"\n{weak} of {len(rows)} lesions differ from their ring by < 0.5 SD in the MRI")
    print("\n" + "\n".join(contrast_by_sequence(rows)))


def contrast_by_sequence(rows: list[dict[str, Any]]) -> list[str]:
    """`contrast`'s rows summarised per MRI sequence and lesion kind (from a held-out
    phantom's case id, `lesion_eval.held_out_id`; "lesion" otherwise): lesions, median MRI and
    CT ring contrast, median margin beyond the brain's 1-99 % and lesions whose MRI stands
    < 0.5 ring SD out."""
    lines = [
        "| MRI sequence | lesion | n | median MRI contrast (ring SD) | median CT contrast "
        "| median MRI margin | < 0.5 SD in the MRI |",
        "|---|---|---|---|---|---|---|",
    ]
    for seq, kind in sorted({(str(c["sequence"]), str(c["kind"])) for c in rows}):
        cs = [c for c in rows if (c["sequence"], c["kind"]) == (seq, kind)]
        med = {k: float(np.median([c[k] for c in cs])) for k in ("mri", "ct", "margin")}
        weak = sum(abs(c["mri"]) < 0.5 for c in cs)
        lines.append(
            f"| {seq} | {kind} | {len(cs)} | {med['mri']:+.2f} | {med['ct']:+.2f} "
            f"| {med['margin']:+.2f} | {weak} of {len(cs)} |"
        )
    return lines


def scored(probs: list[np.ndarray], items: list[Any], rule: Any) -> Any:
    """Per case: (item, mask, reference, Dice, HD95) under `rule(prob, item)`, voxels of
    unknown label left out; Dice and HD95 are None on a lesion-free case, HD95 nan when the
    mask is empty."""
    from clinfuse.metrics.segmentation import dice, hd95

    for p, it in zip(probs, items, strict=True):
        m = rule(p, it) & it.known
        gt = (it.label > 0.5) & it.known
        if not it.label.any():
            yield it, m, gt, None, None
            continue
        h = float(hd95(m, gt, it.spacing)) if m.any() else float("nan")
        yield it, m, gt, float(dice(m, gt)), h


def per_case(probs: list[np.ndarray], items: list[Any], rule: Any) -> None:
    """The head's own rule case by case, then summed over the real-anatomy pairs and over the
    phantoms (cases whose id contains "phantom": build_training_data.py's phantom parts):
    Dice, lesions with a prediction, HD95 over them, and the predicted mL on lesion-free cases
    ("false mL"); then Dice by lesion size (`SIZE_BINS_ML`)."""
    groups: dict[str, dict[str, list[float]]] = {}
    by_size: list[tuple[float, float]] = []  # (lesion mL, Dice)
    print("| case | lesion mL | predicted mL | Dice | HD95 mm |")
    print("|---|---|---|---|---|")
    for it, m, gt, d, h in scored(probs, items, rule):
        ml = float(np.prod(it.spacing)) / 1000.0
        g = groups.setdefault("phantoms" if "phantom" in it.case_id else "real-anatomy pairs", {})
        if d is None:
            g.setdefault("false_ml", []).append(float(m.sum()) * ml)
            print(f"| {it.case_id} | 0 | {m.sum() * ml:.2f} | | |")
            continue
        g.setdefault("dice", []).append(d)
        g.setdefault("hd95", []).append(h)
        by_size.append((float(gt.sum()) * ml, d))
        print(f"| {it.case_id} | {gt.sum() * ml:.2f} | {m.sum() * ml:.2f} | {d:.3f} | {h:.1f} |")
    print("\n| cases | lesions | Dice | with a prediction | HD95 mm over them | false mL |")
    print("|---|---|---|---|---|---|")
    for name, g in sorted(groups.items()):
        hs = [h for h in g.get("hd95", []) if h == h]
        fp = g.get("false_ml", [])
        print(
            f"| {name} | {len(g.get('dice', []))} | {np.mean(g.get('dice', [np.nan])):.3f} | "
            f"{len(hs)} | {np.mean(hs) if hs else float('nan'):.1f} | "
            f"{sum(fp):.2f} over {len(fp)} |"
        )
    print("\n| lesion size | lesions | Dice | Dice 0 (missed) |")
    print("|---|---|---|---|")
    for lo, hi in zip(SIZE_BINS_ML[:-1], SIZE_BINS_ML[1:], strict=True):
        ds = [d for v, d in by_size if lo <= v < hi]
        if ds:
            missed = sum(d == 0 for d in ds)
            print(f"| {lo:g}-{hi:g} mL | {len(ds)} | {np.mean(ds):.3f} | {missed} |")
    print()


def head_probs(
    checkpoint: Path | None, items: list[Any], hide_contrast: bool = False
) -> tuple[Any, list[np.ndarray]]:
    """The checkpoint's lesion head (shipped if None) and its calibrated probability on each
    case, composite as the fused channel, zero outside the brain. A head with sequence slots
    is told each case's MRI sequence (`mri_contrast`), unless `hide_contrast`."""
    import torch

    from clinfuse.pipeline import load_model
    from clinfuse.training.lesion import predict_logits

    head = load_model(checkpoint, 3, "cpu").model.lesion_head.eval()
    window = (int(head.window),) * 3
    probs = []
    with torch.no_grad():
        for it in items:
            told = None if hide_contrast else it.mri_contrast
            logits = predict_logits(head, it.composite, it.sources, window, contrast=told)
            probs.append(1 / (1 + np.exp(-logits)) * it.brain)
    return head, probs


def minsize(args: argparse.Namespace) -> None:
    from clinfuse.nn.lesion_mask import clean_mask
    from clinfuse.training.lesion import MIN_COMPONENT_PROB_CHOICES, load_items

    items = load_items(args.data, ())
    head, probs = head_probs(args.checkpoint, items)

    def score(rule: Any) -> str:
        rows = [(d, h) for _, _, _, d, h in scored(probs, items, rule) if d is not None]
        hs = [h for _, h in rows if h == h]
        dice_mean = np.mean([d for d, _ in rows])
        return f"{dice_mean:.3f} | {np.mean(hs) if hs else float('nan'):.1f} ({len(hs)})"

    own = head.mask_rule
    per_case(probs, items, lambda p, it: own.apply(p, it.spacing, mri=it.sources[0]))
    print("| rule | validation Dice | HD95 mm (cases with a prediction) |")
    print("|---|---|---|")
    print(
        f"| the head's own rule ({own.describe()}) | "
        + score(lambda p, it: own.apply(p, it.spacing, mri=it.sources[0]))
        + " |"
    )
    for ml in (0.5, 1.0, 2.0, 3.0, 5.0, 10.0):
        print(
            f"| minimum {ml} mL | "
            + score(lambda p, it, ml=ml: clean_mask(p, it.spacing, 0.5, ml))
            + " |"
        )

    def relative(p: Any, it: Any, frac: float) -> np.ndarray:
        m = clean_mask(p, it.spacing, 0.5, 0.5)
        if not m.any():
            return m
        lab, n = ndimage.label(m, structure=np.ones((3,) * m.ndim))
        sizes = ndimage.sum(m, lab, range(1, n + 1))
        return np.isin(lab, [i + 1 for i, s in enumerate(sizes) if s >= frac * sizes.max()])

    for frac in (0.1, 0.25, 0.5, 1.0):
        print(
            f"| 0.5 mL, then >= {frac:g} x the largest | "
            + score(lambda p, it, f=frac: relative(p, it, f))
            + " |"
        )
    # The filter choices after the head's own minimum: the rules its calibration chose among,
    # so the row of its own filter repeats the first row.
    for q in MIN_COMPONENT_PROB_CHOICES[1:]:
        print(
            f"| {own.min_ml:g} mL, then secondary components of mean p >= {q:g} | "
            + score(lambda p, it, q=q: clean_mask(p, it.spacing, 0.5, own.min_ml, q))
            + " |"
        )


def paired_summary(
    new: list[tuple[Any, ...]], old: list[tuple[Any, ...]], ml_per_voxel: list[float]
) -> dict[str, Any]:
    """Lesion-by-lesion comparison of two `scored` lists over the same cases (new against old):
    Dice over every lesion (paired Wilcoxon), lesions with a prediction ("found": the mask is
    not empty) and lesions the mask overlaps (Dice > 0: a prediction elsewhere in the case finds
    nothing; session 22) by each, mean HD95 over the lesions both find, the cases only one
    finds, and the false mL of each on the lesion-free cases."""
    from clinfuse.evaluation.stats import paired_wilcoxon

    dn, do, both, only_new, only_old, false_new, false_old = [], [], [], [], [], [], []
    for (it, mn, _, d_new, h_new), (it_o, mo, _, d_old, h_old), ml in zip(
        new, old, ml_per_voxel, strict=True
    ):
        if it.case_id != it_o.case_id:
            raise ValueError(f"the two lists differ at {it.case_id} / {it_o.case_id}")
        if d_new is None:
            false_new.append((it.case_id, float(mn.sum()) * ml))
            false_old.append((it.case_id, float(mo.sum()) * ml))
            continue
        dn.append(d_new)
        do.append(d_old)
        found_new, found_old = h_new == h_new, h_old == h_old
        if found_new and found_old:
            both.append((h_new, h_old))
        elif found_new:
            only_new.append((it.case_id, d_new, h_new))
        elif found_old:
            only_old.append((it.case_id, d_old, h_old))
    return {
        "dice": paired_wilcoxon("dice", np.array(do), np.array(dn)),
        "found": (len(both) + len(only_new), len(both) + len(only_old)),
        "overlap": (sum(d > 0 for d in dn), sum(d > 0 for d in do)),
        "both": len(both),
        "hd95_both": (
            float(np.mean([h for h, _ in both])) if both else float("nan"),
            float(np.mean([h for _, h in both])) if both else float("nan"),
        ),
        "only_new": only_new,
        "only_old": only_old,
        "false_new": [(c, v) for c, v in false_new if v > 0],
        "false_old": [(c, v) for c, v in false_old if v > 0],
        "lesion_free": len(false_new),
    }


def case_group(item: Any) -> str:
    """The group a validation case is summed in by `paired`: phantom or real anatomy, and its
    MRI sequence ("real T1", "phantom ADC", ...; "unknown" when the case does not say)."""
    kind = "phantom" if "phantom" in item.case_id else "real"
    return f"{kind} {item.mri_contrast or 'unknown'}"


def paired_groups(
    new: list[tuple[Any, ...]], old: list[tuple[Any, ...]], ml_per_voxel: list[float]
) -> dict[str, dict[str, Any]]:
    """`paired_summary`'s numbers per `case_group`, each head's own: lesions, mean Dice, lesions
    with a prediction, lesion-free cases, their false mL and how many have any. Lesion
    detection and false lesions depend on the sequence (a real T1 pair is not a FLAIR one), so
    a comparison across people or sets reads like for like here."""
    out: dict[str, dict[str, Any]] = {}
    for (it, mn, _, d_new, h_new), (it_o, mo, _, d_old, h_old), ml in zip(
        new, old, ml_per_voxel, strict=True
    ):
        if it.case_id != it_o.case_id:
            raise ValueError(f"the two lists differ at {it.case_id} / {it_o.case_id}")
        g = out.setdefault(
            case_group(it),
            {
                "dice": ([], []),
                "found": [0, 0],
                "free": 0,
                "false_ml": [0.0, 0.0],
                "marked": [0, 0],
            },
        )
        if d_new is None:
            g["free"] += 1
            for k, m in enumerate((mn, mo)):
                g["false_ml"][k] += float(m.sum()) * ml
                g["marked"][k] += bool(m.any())
            continue
        for k, (d, h) in enumerate(((d_new, h_new), (d_old, h_old))):
            g["dice"][k].append(d)
            g["found"][k] += h == h
    for g in out.values():
        g["lesions"] = len(g["dice"][0])
        g["dice"] = tuple(float(np.mean(d)) if d else float("nan") for d in g["dice"])
    return dict(sorted(out.items()))


def paired(args: argparse.Namespace) -> None:
    from clinfuse.training.lesion import load_items

    items = load_items(args.data, ())
    heads = {}
    for name, ck in (("new", args.checkpoint), ("old", args.against)):
        head, probs = head_probs(ck, items, args.hide_contrast)
        rule = head.mask_rule
        heads[name] = list(
            scored(probs, items, lambda p, it, r=rule: r.apply(p, it.spacing, mri=it.sources[0]))
        )
    ml = [float(np.prod(it.spacing)) / 1000.0 for it in items]
    s = paired_summary(heads["new"], heads["old"], ml)
    t = s["dice"]
    hidden = "; sequence not told (--hide-contrast)" if args.hide_contrast else ""
    print(f"new: {args.checkpoint or 'shipped'}; old: {args.against or 'shipped'}{hidden}\n")
    print("| | new | old |")
    print("|---|---|---|")
    print(
        f"| Dice over {t.n} lesions | {t.mean:.3f} | {t.ref_mean:.3f} |\n"
        f"| Dice, new - old (paired Wilcoxon p) | {t.mean_diff:+.3f} (p = {t.p_value:.3g}) | |\n"
        f"| lesions with a prediction | {s['found'][0]} | {s['found'][1]} |\n"
        f"| lesions the mask overlaps (Dice > 0) | {s['overlap'][0]} | {s['overlap'][1]} |\n"
        f"| HD95 mm over the {s['both']} lesions both find | {s['hd95_both'][0]:.1f} | "
        f"{s['hd95_both'][1]:.1f} |"
    )

    def false_ml(key: str) -> str:
        fp = s[f"false_{key}"]
        cases = ", ".join(f"{c} {v:.2f}" for c, v in fp) or "none"
        return f"{sum(v for _, v in fp):.2f} ({cases})"

    def only(key: str) -> str:
        rows = s[f"only_{key}"]
        return ", ".join(f"{c} (Dice {d:.2f}, HD95 {h:.1f} mm)" for c, d, h in rows) or "none"

    n_free = s["lesion_free"]
    print(f"| false mL on {n_free} lesion-free cases | {false_ml('new')} | {false_ml('old')} |")
    print(f"| lesions only this head finds | {only('new')} | {only('old')} |")
    print(
        "\n| cases | lesions | Dice new / old | found new / old | lesion-free "
        "| false mL new / old | marked new / old |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, g in paired_groups(heads["new"], heads["old"], ml).items():
        free = g["free"]
        fm, mk = g["false_ml"], g["marked"]
        print(
            f"| {name} | {g['lesions']} | {g['dice'][0]:.3f} / {g['dice'][1]:.3f} "
            f"| {g['found'][0]} / {g['found'][1]} | {free} | {fm[0]:.2f} / {fm[1]:.2f} "
            f"| {mk[0]} / {mk[1]} |"
        )


def component_masks(
    probs: list[np.ndarray], items: list[Any], rule: Any
) -> Iterator[tuple[Any, np.ndarray, np.ndarray, bool]]:
    """(item, probability, component mask, true?) for every component of each case's mask
    under `rule` (26-connected in 3D), only voxels of known label; true = it touches the
    labelled lesion."""
    for p, it in zip(probs, items, strict=True):
        mask = rule.apply(p, it.spacing, mri=it.sources[0]) & it.known
        for c, true in mask_components(mask, (it.label > 0.5) & it.known):
            yield it, p, c, true


def mask_components(mask: np.ndarray, gt: np.ndarray) -> Iterator[tuple[np.ndarray, bool]]:
    """(component mask, true?) for each component of `mask`, 26-connected in 3D as
    `clean_mask` labels them; true = it touches `gt`."""
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    for i in range(1, n + 1):
        c = labels == i
        yield c, bool((c & gt).any())


def component_rows(
    probs: list[np.ndarray], items: list[Any], rule: Any
) -> list[tuple[str, bool, float, float]]:
    """(case, true?, mL, mean probability) of every component (`component_masks`)."""
    return [
        (it.case_id, true, c.sum() * float(np.prod(it.spacing)) / 1000.0, float(p[c].mean()))
        for it, p, c, true in component_masks(probs, items, rule)
    ]


def rule_group(item: Any) -> str:
    """The group `rules` sums a case in: phantom or real anatomy, with a lesion or free."""
    kind = "phantom" if "phantom" in item.case_id else "real"
    return f"{kind} {'lesion' if item.label.any() else 'free'}"


def group_scores(probs: list[np.ndarray], items: list[Any], rule: Any) -> dict[str, dict]:
    """Per `rule_group` under `rule` (a `LesionMaskRule`): Dice of each lesion, HD95 of each
    lesion with a prediction, lesions overlapped (Dice > 0), lesion-free cases, how many of
    them get a mask ("marked") and its mL summed."""
    out: dict[str, dict] = {}
    cases = scored(probs, items, lambda p, it: rule.apply(p, it.spacing, mri=it.sources[0]))
    for it, m, _, d, h in cases:
        g = out.setdefault(
            rule_group(it),
            {"dice": [], "hd95": [], "overlap": 0, "free": 0, "marked": 0, "false_ml": 0.0},
        )
        if d is None:
            g["free"] += 1
            g["marked"] += bool(m.any())
            g["false_ml"] += float(m.sum()) * float(np.prod(it.spacing)) / 1000.0
            continue
        g["dice"].append(d)
        g["overlap"] += d > 0
        if h == h:
            g["hd95"].append(h)
    return dict(sorted(out.items()))


def peak_rows(
    probs: list[np.ndarray], items: list[Any], rule: Any
) -> dict[tuple[str, bool], list[tuple[float, float, float]]]:
    """(mean probability, highest probability, mL) of every component under `rule`
    (`component_masks`), by (phantom or real, true?)."""
    out: dict[tuple[str, bool], list[tuple[float, float, float]]] = {}
    for it, p, c, true in component_masks(probs, items, rule):
        kind = "phantom" if "phantom" in it.case_id else "real"
        ml = float(c.sum() * np.prod(it.spacing) / 1000.0)
        out.setdefault((kind, true), []).append((float(p[c].mean()), float(p[c].max()), ml))
    return dict(sorted(out.items()))


def rules(args: argparse.Namespace) -> None:
    """The head's own rule and its variants with another peak filter, secondary filter (from
    0.8) or case-level gate (from 0.7), by `rule_group`; then the mean and highest probability
    of the true and false components under the own rule without peak filter and gate (what
    those two filters can tell apart)."""
    from dataclasses import replace

    from clinfuse.training.lesion import (
        MIN_COMPONENT_PROB_CHOICES,
        MIN_LESION_PROB_CHOICES,
        MIN_PEAK_PROB_CHOICES,
        load_items,
    )

    items = load_items(args.data, ())
    head, probs = head_probs(args.checkpoint, items)
    own = head.mask_rule
    print(f"head: {args.checkpoint or 'shipped'}; own rule: {own.describe()}\n")
    variants = [("own rule", own)]
    variants += [
        (f"peak {h:g}", replace(own, min_peak_prob=h))
        for h in MIN_PEAK_PROB_CHOICES
        if abs(h - own.min_peak_prob) > 1e-6
    ]
    variants += [
        (f"secondary {q:g}", replace(own, min_component_prob=q))
        for q in MIN_COMPONENT_PROB_CHOICES
        if q >= 0.8 and abs(q - own.min_component_prob) > 1e-6
    ]
    variants += [
        (f"gate {g:g}", replace(own, min_lesion_prob=g))
        for g in MIN_LESION_PROB_CHOICES
        if g >= 0.7 and abs(g - own.min_lesion_prob) > 1e-6
    ]
    print(
        "| rule | cases | lesions | Dice | overlapped | HD95 mm (with a prediction) "
        "| lesion-free | marked | false mL |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rule in variants:
        for group, g in group_scores(probs, items, rule).items():
            dice = f"{np.mean(g['dice']):.3f}" if g["dice"] else ""
            hd = f"{np.mean(g['hd95']):.1f} ({len(g['hd95'])})" if g["hd95"] else ""
            print(
                f"| {name} | {group} | {len(g['dice'])} | {dice} | {g['overlap']} | {hd} "
                f"| {g['free']} | {g['marked']} | {g['false_ml']:.2f} |"
            )
    bare = replace(own, min_peak_prob=0.0, min_lesion_prob=0.0)
    print(f"\ncomponents under {bare.describe()}: mean / highest probability, percentiles\n")
    print("| components | n | mean p: 5 / 10 / 25 / 50 % | highest p: 5 / 10 / 25 / 50 % |")
    print("|---|---|---|---|")
    for (kind, true), rows in peak_rows(probs, items, bare).items():
        a = np.asarray(rows)
        q = [5, 10, 25, 50]
        mean_q = " / ".join(f"{v:.2f}" for v in np.percentile(a[:, 0], q))
        peak_q = " / ".join(f"{v:.3f}" for v in np.percentile(a[:, 1], q))
        label = f"{kind}, {'true' if true else 'false'}"
        print(f"| {label} | {len(rows)} | {mean_q} | {peak_q} |")
    # Small components are where a peak filter costs true lesions (partial volume keeps their
    # probability lower): how many of each kind each peak choice would keep, by size.
    peaks = [h for h in MIN_PEAK_PROB_CHOICES if h > 0]
    print(
        f"\nthe same components by size: how many reach each peak ({', '.join(map(str, peaks))})\n"
    )
    print("| components | size | n | " + " | ".join(f"peak >= {h:g}" for h in peaks) + " |")
    print("|---|---|---|" + "---|" * len(peaks))
    for (kind, true), rows in peak_rows(probs, items, bare).items():
        a = np.asarray(rows)
        for size, sel in (("< 1 mL", a[:, 2] < 1.0), (">= 1 mL", a[:, 2] >= 1.0)):
            if sel.any():
                kept = " | ".join(str(int((a[sel, 1] >= h).sum())) for h in peaks)
                label = f"{kind}, {'true' if true else 'false'}"
                print(f"| {label} | {size} | {int(sel.sum())} | {kept} |")


def component_look(mask: np.ndarray, item: Any) -> tuple[float, float, float]:
    """How a predicted component looks in the sources: the percentile of its mean MRI among
    the case's brain voxels, its median CT in HU (the clinical-window channel mapped back) and
    its mean depth inside the brain mask (mm from the mask's edge)."""
    from clinfuse.preprocess.windowing import CLINICAL_WINDOW, invert_window

    mri, ct, brain = item.sources[0], item.sources[1], np.asarray(item.brain, bool)
    pct = 100.0 * float((mri[brain] < float(mri[mask].mean())).mean())
    hu = float(np.median(invert_window(ct[mask], CLINICAL_WINDOW)))
    depth = ndimage.distance_transform_edt(brain, sampling=item.spacing)
    return pct, hu, float(depth[mask].mean())


def mri_twins(mri: np.ndarray, plane: Any = None) -> tuple[np.ndarray, np.ndarray, Any]:
    """The MRI's contralateral twin image under the shift-only mirror of the "+mirror" heads
    and under the rigid mid-sagittal plane of the "+rigid-mirror" heads (`plane`, else
    `clinfuse.nn.symmetry.plane_of`), and that plane."""
    import torch

    from clinfuse.nn.lesion_head import mid_sagittal_shift, mirror
    from clinfuse.nn.symmetry import plane_of, reflect

    m = torch.from_numpy(np.ascontiguousarray(mri, np.float32))
    plane = plane_of(m) if plane is None else plane
    shifted = mirror(m, mid_sagittal_shift(m), 0).numpy()
    return shifted, reflect(m[None], plane)[0].numpy(), plane


def twin_difference(mask: np.ndarray, item: Any) -> tuple[float, float, float, Any]:
    """Mean |MRI - its contralateral twin| over `mask` with the shift-only mirror and with the
    rigid plane (`mri_twins`), the brain's mean with the shift-only mirror, and the plane."""
    mri, brain = np.asarray(item.sources[0], np.float32), np.asarray(item.brain, bool)
    shifted, rigid, plane = mri_twins(mri)
    shift_d, rigid_d = np.abs(mri - shifted), np.abs(mri - rigid)
    return (
        float(shift_d[mask].mean()),
        float(rigid_d[mask].mean()),
        float(shift_d[brain].mean()),
        plane,
    )


def components(args: argparse.Namespace) -> None:
    from clinfuse.training.lesion import load_items

    items = load_items(args.data, ())
    head, probs = head_probs(args.checkpoint, items, args.hide_contrast)
    rows = component_rows(probs, items, head.mask_rule)
    true_p = sorted(p for _, t, _, p in rows if t)
    print(f"head: {args.checkpoint or 'shipped'}\n")
    print(f"true components: {len(true_p)}; mean probability, lowest first: ")
    print(", ".join(f"{p:.2f}" for p in true_p) + "\n")
    twin_cols = " | MRI-twin, shift mirror (brain mean) | MRI-twin, rigid plane | plane yaw/roll"
    print(
        "| false component (case) | sequence | mL | mean probability | MRI percentile in brain "
        "| CT HU (median) | depth in brain mm" + (twin_cols if args.twin else "") + " |"
    )
    print("|---|---|---|---|---|---|---|" + ("---|---|---|" if args.twin else ""))
    for it, p, c, true in component_masks(probs, items, head.mask_rule):
        if true:
            continue
        ml = c.sum() * float(np.prod(it.spacing)) / 1000.0
        pct, hu, depth = component_look(c, it)
        seq, mean_p = it.mri_contrast or "unknown", float(p[c].mean())
        row = (
            f"| {it.case_id} | {seq} | {ml:.2f} | {mean_p:.2f} | {pct:.0f} | {hu:.0f} | {depth:.0f}"
        )
        if args.twin:
            shift_d, rigid_d, brain_d, plane = twin_difference(c, it)
            row += (
                f" | {shift_d:.2f} ({brain_d:.2f}) | {rigid_d:.2f} "
                f"| {plane.yaw:.0f}/{plane.roll:.0f}"
            )
        print(row + " |")


def planes(args: argparse.Namespace) -> None:
    """Per case: the brain's correlation of the MRI with its mirror twin under the shift-only
    plane of the "+mirror" heads and under the rigid plane of the "+rigid-mirror" heads
    (`clinfuse.nn.symmetry.estimate_plane`, timed), and that plane."""
    import time

    import torch

    from clinfuse.nn.symmetry import estimate_plane
    from clinfuse.training.lesion import load_items

    items = load_items(args.data, ())
    print("| case | shift-only: brain corr | rigid: brain corr | yaw / roll deg | estimate s |")
    print("|---|---|---|---|---|")
    shift_c, rigid_c = [], []
    for it in items:
        mri = np.ascontiguousarray(it.sources[0], np.float32)
        brain = np.asarray(it.brain, bool)
        t0 = time.perf_counter()
        plane = estimate_plane(torch.from_numpy(mri))
        took = time.perf_counter() - t0
        shifted, rigid, _ = mri_twins(mri, plane)
        a = float(np.corrcoef(mri[brain], shifted[brain])[0, 1])
        b = float(np.corrcoef(mri[brain], rigid[brain])[0, 1])
        shift_c.append(a)
        rigid_c.append(b)
        print(
            f"| {it.case_id} | {a:.2f} | {b:.2f} "
            f"| {plane.yaw:.1f} / {plane.roll:.1f} | {took:.2f} |"
        )
    if items:
        print(f"| mean over {len(items)} | {np.mean(shift_c):.2f} | {np.mean(rigid_c):.2f} | | |")


def small_lesion_phantoms(
    sequences: list[str],
    n: int,
    first_seed: int,
    ml: tuple[float, float],
    kind: str,
    territories: tuple[str, ...] | None = None,
) -> Iterator[tuple[str, int, Any]]:
    """(sequence, seed, prepared case) of `n` phantoms per MRI sequence at 2 mm, one `kind`
    lesion each, redrawn into `ml` (PhantomConfig.lesion_ml), an ischaemic one drawn in
    `territories` (PhantomConfig.ischaemic_territories; None: the default); sequence k uses
    seeds first_seed + 100 * k + i."""
    from clinfuse.phantom import PhantomConfig, generate_phantom
    from clinfuse.phantom.config import ISCHAEMIC_TERRITORIES
    from clinfuse.preprocess.pipeline import preprocess_case

    for k, seq in enumerate(sequences):
        for i in range(n):
            seed = first_seed + 100 * k + i
            cfg = PhantomConfig(
                shape=(96, 96, 72),
                spacing=(2.0,) * 3,
                mri_contrast=seq,  # type: ignore[arg-type]
                lesion=kind,  # type: ignore[arg-type]
                lesion_ml=ml,
                ischaemic_territories=territories or ISCHAEMIC_TERRITORIES,
            )
            yield seq, seed, preprocess_case(generate_phantom(cfg, seed).case)


def small(args: argparse.Namespace) -> None:
    """Small lesions by MRI sequence: fresh phantoms (seeds from --first-seed, 80000 by default,
    which no training, validation or held-out set uses), composite as the fused channel; per
    case and head the highest and mean probability inside the lesion, Dice under the head's
    own rule and the predicted mL; then per sequence and head: lesions found (the mask overlaps
    the lesion: Dice > 0), mean Dice."""
    from clinfuse.baselines.composite import roi_composite
    from clinfuse.metrics.segmentation import dice
    from clinfuse.pipeline import load_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lesion_eval import head_prob

    names = [str(c) for c in args.checkpoint] or ["shipped"]
    models = [load_model(c, 3, "cpu").model for c in (args.checkpoint or [None])]
    from clinfuse.phantom.config import parse_territories

    territories = parse_territories(args.territories)
    where = f", drawn in: {', '.join(territories)}" if args.territories else ""
    size = f"{args.ml[0]:g}-{args.ml[1]:g} mL"
    print(f"heads: {', '.join(names)}; {args.kind} lesions {size}{where}\n")
    print(
        "| sequence | seed | lesion mL | MRI margin | "
        + " | ".join(f"{h}: max / mean p, Dice, mL" for h in names)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(names))
    summary: dict[tuple[str, str], list[float]] = {}
    margins: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    seqs = [s.strip() for s in args.sequences.split(",") if s.strip()]
    for seq, seed, prep in small_lesion_phantoms(
        seqs, args.n, args.first_seed, tuple(args.ml), args.kind, territories
    ):
        fused = roi_composite(prep.mri, prep.ct_bone, prep.brain, prep.bone)
        gt = np.asarray(prep.lesion) > 0.5
        ml = float(np.prod(prep.spacing)) / 1000.0
        margin = lesion_contrast(prep)["margin"]
        cells = []
        for name, model in zip(names, models, strict=True):
            p = head_prob(model, fused, prep)
            m = model.lesion_head.mask_rule.apply(p, prep.spacing, 0.5, prep.mri)
            d = float(dice(m, gt))
            summary.setdefault((seq, name), []).append(d)
            margins.setdefault((seq, name), []).append((margin, d > 0))
            cells.append(f"{p[gt].max():.2f} / {p[gt].mean():.2f}, {d:.2f}, {m.sum() * ml:.2f}")
        print(
            f"| {seq} | {seed} | {gt.sum() * ml:.2f} | {margin:+.2f} | " + " | ".join(cells) + " |"
        )
    print("\n| sequence | head | found | mean Dice | MRI margin: found / missed (range) |")
    print("|---|---|---|---|---|")
    for (seq, name), ds in summary.items():
        split = margin_split(margins[(seq, name)])
        print(
            f"| {seq} | {name} | {sum(d > 0 for d in ds)} of {len(ds)} | {np.mean(ds):.3f} "
            f"| {split} |"
        )
    if len(names) > 1:
        print(f"\nevery sequence, each head against the first ({names[0]}), lesion by lesion:\n")
        print("| head | found | found only by it | found only by the first | exact McNemar p |")
        print("|---|---|---|---|---|")
        for name, (only_first, only_it, found, n, p) in found_against_first(summary, names):
            print(f"| {name} | {found} of {n} | {only_it} | {only_first} | {p:.3g} |")


def found_against_first(
    summary: dict[tuple[str, str], list[float]], names: list[str]
) -> list[tuple[str, tuple[int, int, int, int, float]]]:
    """Per head after the first: lesions only the first finds, only this head finds, this
    head's found and total, and the exact McNemar p (`evaluation.stats.paired_mcnemar`), over
    every sequence of `small`'s per-lesion Dice table (found: Dice > 0)."""
    from clinfuse.evaluation.stats import paired_mcnemar

    def found(name: str) -> np.ndarray:
        seqs = dict.fromkeys(seq for seq, _ in summary)
        return np.concatenate([np.asarray(summary[(s, name)]) > 0 for s in seqs])

    first = found(names[0])
    rows = []
    for name in names[1:]:
        t = paired_mcnemar(first, found(name))
        rows.append((name, (t.only_ref, t.only_other, t.found, t.n, t.p_value)))
    return rows


def margin_split(rows: list[tuple[float, bool]]) -> str:
    """'lo-hi / lo-hi': the range of the MRI margin (`mri_margin`) over the lesions a head
    found and over those it missed ('none' for an empty side)."""

    def rng(vals: list[float]) -> str:
        return f"{min(vals):+.2f} to {max(vals):+.2f}" if vals else "none"

    found = [m for m, f in rows if f]
    missed = [m for m, f in rows if not f]
    return f"{rng(found)} / {rng(missed)}"


SIZE_BINS_ML = (0.0, 0.5, 1.0, 2.0, 5.0, 20.0)
"""Lower edges of the `sizes` bins (mL); the last one is open above (issue 10's range: 0.5-80)."""


def size_bin(ml: float) -> str:
    """The `SIZE_BINS_ML` bin of a lesion volume, as 'lo-hi mL' (or '>= lo mL' for the last)."""
    edges = SIZE_BINS_ML
    for lo, hi in zip(edges, edges[1:], strict=False):
        if ml < hi:
            return f"{lo:g}-{hi:g} mL"
    return f">= {edges[-1]:g} mL"


def size_rows(csv_paths: list[Path]) -> list[tuple[str, int, int, float, dict[str, str]]]:
    """(bin, lesions, found, mean Dice, {kind: 'found of n'}) per `SIZE_BINS_ML` bin that holds
    a lesion, from lesion_eval.py's per-case tables: phantom rows of the composite channel on
    the 2 mm grid, each case once (the first table that lists it wins)."""
    import csv

    seen: dict[str, tuple[float, float, str]] = {}
    for path in csv_paths:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if r["kind"] != "phantom" or r["fused"] != "composite":
                    continue
                if float(r["grid_mm"]) != 2.0 or r["case"] in seen:
                    continue
                tail = r["case"].rsplit("_", 1)[-1]
                kind = tail if tail in ("ischaemic", "haemorrhagic") else "other"
                seen[r["case"]] = (float(r["gt_ml"]), float(r["dice"]), kind)
    order = [size_bin(lo) for lo in SIZE_BINS_ML]
    grouped: dict[str, list[tuple[float, str]]] = {}
    for ml, d, kind in seen.values():
        grouped.setdefault(size_bin(ml), []).append((d, kind))
    rows = []
    for name in order:
        cases = grouped.get(name)
        if not cases:
            continue
        kinds = {}
        for k in sorted({k for _, k in cases}):
            ds = [d for d, kk in cases if kk == k]
            kinds[k] = f"{sum(d > 0 for d in ds)} of {len(ds)}"
        ds = [d for d, _ in cases]
        rows.append((name, len(ds), sum(d > 0 for d in ds), float(np.mean(ds)), kinds))
    return rows


def sizes(args: argparse.Namespace) -> None:
    paths = []
    for folder in args.runs:
        path = Path(folder) / "lesion_seg_per_case.csv"
        if not path.is_file():
            raise SystemExit(f"sizes: {path} not found (a benchmarks/lesion_eval.py --out folder?)")
        paths.append(path)
    rows = size_rows(paths)
    n = sum(r[1] for r in rows)
    print(f"{n} held-out phantom lesions from {len(paths)} lesion_eval runs (composite, 2 mm)\n")
    print("| lesion size | lesions | found | mean Dice | found, ischaemic | found, haemorrhagic |")
    print("|---|---|---|---|---|---|")
    for name, k, found, d, kinds in rows:
        isch, haem = kinds.get("ischaemic", "-"), kinds.get("haemorrhagic", "-")
        print(f"| {name} | {k} | {found} | {d:.3f} | {isch} | {haem} |")


RULE_STEPS = (
    ("min_ml", "minimum size (mL)", "min_lesion_ml"),
    ("min_component_prob", "secondary components' mean probability", "min_component_prob"),
    ("min_ml_and_component_prob", "minimum size / secondary filter (joint)", None),
    ("min_peak_prob", "peak filter", "min_peak_prob"),
    ("mirror_ghosts", "mirror-ghost filter (0 off, 1 on)", "mirror_ghosts"),
)


def record_tables(record: dict[str, Any]) -> list[str]:
    """Markdown lines: per rule step of a lesion head's record (`extra.lesion_head` of a
    `train-lesion` checkpoint), each choice's Dice, HD95, lesions overlapped and lesion-free
    cases marked, the kept choice starred."""
    cal = record.get("calibration") or {}
    kept = {
        "min_ml": record.get("min_lesion_ml"),
        "min_component_prob": record.get("min_component_prob"),
        "min_peak_prob": record.get("min_peak_prob"),
        "mirror_ghosts": float(bool(record.get("mirror_ghosts"))),
    }
    kept["min_ml_and_component_prob"] = f"{kept['min_ml']}/{kept['min_component_prob']}"
    joint = bool(cal.get("dice_by_min_ml_and_component_prob"))
    lines = []
    for key, title, _ in RULE_STEPS:
        dice = cal.get(f"dice_by_{key}")
        if not dice or (joint and key in ("min_ml", "min_component_prob")):
            continue  # with the joint choice those two tables are slices of its table
        cols = [cal.get(f"{m}_by_{key}") or {} for m in ("hd95", "found", "lesion_free_marked")]
        lines += [f"\n{title}\n", "| choice | Dice | HD95 mm | found | lesion-free marked |"]
        lines.append("|---|---|---|---|---|")
        for choice, d in dice.items():
            star = "*" if _same_choice(choice, kept[key]) else ""
            hd, found, marked = (c.get(choice, "") for c in cols)
            hd_s = f"{hd:.2f}" if isinstance(hd, float) else str(hd)
            lines.append(f"| {choice}{star} | {d:.4f} | {hd_s} | {found} | {marked} |")
    return lines


def _same_choice(choice: str, kept: Any) -> bool:
    """Whether a record table's key ("0.05", "0.1/0.9") is the kept value."""
    if kept is None:
        return False
    try:
        if "/" in choice:
            return all(
                abs(float(a) - float(b)) < 1e-9
                for a, b in zip(choice.split("/"), str(kept).split("/"), strict=True)
            )
        return abs(float(choice) - float(kept)) < 1e-9
    except ValueError:
        return False


def record(args: argparse.Namespace) -> None:
    from clinfuse.errors import ClinfuseInputError
    from clinfuse.training.checkpoint import read_checkpoint

    try:
        rec = (read_checkpoint(args.checkpoint).get("extra") or {}).get("lesion_head")
    except ClinfuseInputError as e:
        raise SystemExit(f"record: {e}") from None
    if not rec:
        raise SystemExit(f"record: {args.checkpoint} has no trained lesion head")
    cal = rec.get("calibration") or {}
    print(f"head: {args.checkpoint}")
    print(f"validation: {rec.get('val_data')} ({len(rec.get('val_cases') or [])} cases, ", end="")
    print(f"{cal.get('lesion_free_validation_cases', '?')} lesion-free)")
    cap = cal.get("rule_max_lesion_free_marked")
    print(f"cap on lesion-free cases marked: {'none' if cap is None else cap}")
    kept = ", ".join(f"{field} {rec.get(field)}" for *_, field in RULE_STEPS if field)
    print(f"temperature {cal.get('temperature', float('nan')):.3f}; kept: {kept}")
    final = rec.get("val_final") or {}
    if final:
        print(
            f"validation Dice {final.get('dice', float('nan')):.3f}, lesion-free cases with a "
            f"prediction {final.get('lesion_free_cases_with_a_prediction')}"
        )
    print("\n".join(record_tables(rec)))


def ghost_rows(
    pred: np.ndarray,
    prob: np.ndarray,
    gt: np.ndarray,
    mirrored_gt: np.ndarray,
    near_mirror: np.ndarray,
    spacing: Any,
) -> list[dict[str, Any]]:
    """Each component of `pred` (`mask_components`): volume (mL), mean probability, whether
    it touches the lesion `gt`, and whether it is the lesion's ghost -- not touching the lesion
    but inside `near_mirror` (`clinfuse.nn.symmetry.near_mirror_image` of the lesion: within
    `GHOST_MARGIN_VOXELS` of its reflection `mirrored_gt` about the head's mirror plane, where
    the mirror channels show it; the mask rule's ghost filter uses the same test) -- with its
    centre's distance (mm) to the lesion's centre and to the mirror image's."""
    sp = np.asarray(spacing, float)
    centre = np.asarray(ndimage.center_of_mass(gt)) if gt.any() else None
    m_centre = np.asarray(ndimage.center_of_mass(mirrored_gt)) if mirrored_gt.any() else None
    rows = []
    for comp, true in mask_components(pred, gt):
        c = np.asarray(ndimage.center_of_mass(comp))
        rows.append(
            {
                "ml": float(comp.sum() * np.prod(sp) / 1000.0),
                "mean_p": float(prob[comp].mean()),
                "true": true,
                "ghost": not true and bool((comp & near_mirror).any()),
                "to_lesion_mm": np.nan
                if centre is None
                else float(np.linalg.norm((c - centre) * sp)),
                "to_mirror_mm": (
                    np.nan if m_centre is None else float(np.linalg.norm((c - m_centre) * sp))
                ),
            }
        )
    return rows


def ghosts(args: argparse.Namespace) -> None:
    """The head's mask components on held-out phantoms (benchmarks/lesion_eval.py's sets, by
    seed; a diagnosis of sets already used), each marked true, ghost or other false."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from clinfuse.nn.symmetry import mri_plane, near_mirror_image
    from clinfuse.pipeline import load_model
    from clinfuse.training.data import training_target
    from lesion_eval import head_prob, held_out_phantom

    model = load_model(args.checkpoint, 3, "cpu").model.eval()
    rule = model.lesion_head.mask_rule
    lesion_ml = tuple(args.lesion_ml) if args.lesion_ml else None
    print(f"head: {args.checkpoint or 'shipped'}; composite as the fused channel, own rule")
    print("\n| case | lesion mL | component mL | mean p | kind | to lesion mm | to mirror mm |")
    print("|---|---|---|---|---|---|---|")
    total = {"ghost": [0, 0.0], "other false": [0, 0.0]}
    for seed in args.seeds:
        first = seed - seed % 100  # the set's first seed: sequence and kind follow from the rest
        _, prep, _ = held_out_phantom(seed - first, first_seed=first, lesion_ml=lesion_ml)
        gt = prep.lesion.astype(bool)
        prob = head_prob(model, np.asarray(training_target(prep, 1.0)), prep)
        pred = rule.apply(prob, prep.spacing, 0.5, prep.mri)
        plane = mri_plane(prep.mri)
        mirrored = near_mirror_image(gt, plane, margin=0)
        rows = ghost_rows(pred, prob, gt, mirrored, near_mirror_image(gt, plane), prep.spacing)
        gt_ml = float(gt.sum() * np.prod(prep.spacing) / 1000.0)
        for r in rows or [None]:
            if r is None:
                print(f"| {prep.case_id} | {gt_ml:.2f} | none | | | | |")
                continue
            kind = "true" if r["true"] else "ghost" if r["ghost"] else "other false"
            if kind != "true":
                total[kind][0] += 1
                total[kind][1] += r["ml"]
            print(
                f"| {prep.case_id} | {gt_ml:.2f} | {r['ml']:.2f} | {r['mean_p']:.2f} | {kind} | "
                f"{r['to_lesion_mm']:.0f} | {r['to_mirror_mm']:.0f} |"
            )
    print("\n" + "; ".join(f"{k}: {n} components, {ml:.2f} mL" for k, (n, ml) in total.items()))


def calibration_maps(args: argparse.Namespace) -> None:
    import torch

    from clinfuse.metrics.calibration import (
        REGION_BRAIN,
        REGION_NEIGHBOURHOOD,
        apply_platt,
        calibration_scores,
        fit_platt,
        fit_temperature,
        lesion_neighbourhood,
        region_weights,
    )
    from clinfuse.pipeline import load_model
    from clinfuse.training.lesion import load_items, predict_logits

    items = load_items(args.data, ())
    head = load_model(args.checkpoint, 3, "cpu").model.lesion_head.eval()
    window = (int(head.window),) * 3
    shipped_t, rule = float(head.temperature), head.mask_rule
    # per case, over its brain voxels of known label: raw logits, reference, reference
    # neighbourhood, and "near the head's own mask" (within 10 mm of it, map E)
    z, y, near, near_pred, group = [], [], [], [], []
    with torch.no_grad():
        for it in items:
            sel = it.brain & it.known
            lg = predict_logits(head, it.composite, it.sources, window, True, it.mri_contrast)
            p = 1 / (1 + np.exp(-lg / shipped_t)) * it.brain
            pred = rule.apply(p, it.spacing, 0.5, it.sources[0])
            z.append(lg[sel].astype(np.float64))
            y.append(it.label[sel] > 0.5)
            near.append(lesion_neighbourhood(it.label > 0.5, it.spacing, within=it.brain)[sel])
            near_pred.append(lesion_neighbourhood(pred, it.spacing, within=it.brain)[sel])
            group.append(rule_group(it))

    def cat(ids: list[int]) -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate([a[i] for i in ids]) for a in (z, y, near, near_pred))

    def fitted(key: str, ids: list[int]) -> tuple[float, float, float]:
        """(scale, bias, scale near the head's mask) of sigmoid(scale * z + bias)."""
        zz, yy, nb, npred = cat(ids)
        if key == "A":
            s = 1.0 / fit_temperature(zz, yy)
            return s, 0.0, s
        if key == "B":
            s = 1.0 / fit_temperature(zz, yy, nb)
            return s, 0.0, s
        if key == "C":
            s = 1.0 / fit_temperature(zz, yy, weights=region_weights(np.ones_like(nb), nb))
            return s, 0.0, s
        if key == "D":
            a, b = fit_platt(zz, yy, nb)
            return a, b, a
        own = 1.0 / shipped_t  # E; nothing near a mask with both classes: one temperature
        if not npred.any() or yy[npred].all() or not yy[npred].any():
            return own, 0.0, own
        return own, 0.0, 1.0 / fit_temperature(zz, yy, npred)

    def scores(ids: list[int], prm: tuple[float, float, float]) -> dict[str, tuple[float, float]]:
        zz, yy, nb, npred = cat(ids)
        prob = apply_platt(zz * np.where(npred, prm[2] / prm[0], 1.0), prm[0], prm[1])
        cal = calibration_scores(prob, yy, np.ones_like(yy), nb)
        return {r: (cal[r].ece, cal[r].brier) for r in (REGION_BRAIN, REGION_NEIGHBOURHOOD)}

    names = {
        "A": "temperature, brain voxels (train-lesion's fit)",
        "B": "temperature, lesion-neighbourhood voxels",
        "C": "temperature, brain + neighbourhood weighted equally",
        "D": "Platt (scale + bias), lesion-neighbourhood voxels",
        "E": "the head's temperature; within 10 mm of its own mask a second one fitted there",
    }
    k = args.folds
    every = list(range(len(items)))
    print(f"{len(items)} validation cases, {sum(n.any() for n in near)} with a lesion; {k} folds")
    print(f"head's own temperature {shipped_t:.3f}; its rule: {rule.describe()}\n")
    print(
        "| map | fitted on all: scale / bias (T; T near the mask) | CV brain ECE (worst fold) "
        "| CV brain Brier | CV neighbourhood ECE (worst fold) | CV neighbourhood Brier "
        "| all: brain ECE | all: neighbourhood ECE |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for key, label in names.items():
        try:
            per_fold = [
                scores(
                    [i for i in every if i % k == f], fitted(key, [i for i in every if i % k != f])
                )
                for f in range(k)
            ]
            prm = fitted(key, every)
        except ValueError as err:  # e.g. Platt's scale <= 0: logits that rank backwards
            print(f"| {key} {label} | no usable fit: {err} | | | | | | |")
            continue
        whole = scores(every, prm)
        b_e = [s[REGION_BRAIN][0] for s in per_fold]
        n_e = [s[REGION_NEIGHBOURHOOD][0] for s in per_fold]
        print(
            f"| {key} {label} | {prm[0]:.4f} / {prm[1]:+.3f} ({1 / prm[0]:.3f}; {1 / prm[2]:.3f}) "
            f"| {np.mean(b_e):.4f} ({max(b_e):.4f}) "
            f"| {np.mean([s[REGION_BRAIN][1] for s in per_fold]):.4f} "
            f"| {np.mean(n_e):.4f} ({max(n_e):.4f}) "
            f"| {np.mean([s[REGION_NEIGHBOURHOOD][1] for s in per_fold]):.4f} "
            f"| {whole[REGION_BRAIN][0]:.4f} | {whole[REGION_NEIGHBOURHOOD][0]:.4f} |"
        )
    print("\nThe head's own temperature, by group of cases (all cases; ECE / Brier):\n")
    print("| cases | n | brain | lesion neighbourhood |")
    print("|---|---|---|---|")
    own = (1.0 / shipped_t, 0.0, 1.0 / shipped_t)
    for g in sorted(set(group)) + ["all"]:
        ids = [i for i in every if g in ("all", group[i])]
        s = scores(ids, own)
        print(
            f"| {g} | {len(ids)} | {s[REGION_BRAIN][0]:.4f} / {s[REGION_BRAIN][1]:.4f} "
            f"| {s[REGION_NEIGHBOURHOOD][0]:.4f} / {s[REGION_NEIGHBOURHOOD][1]:.4f} |"
        )
    zz, yy, nb, _ = cat(every)
    cal = calibration_scores(apply_platt(zz, own[0], 0.0), yy, np.ones_like(yy), nb)
    c = cal[REGION_NEIGHBOURHOOD].curve
    print("\nReliability in the lesion neighbourhood, the head's own temperature (all cases):\n")
    print("| bin | voxels | share | confidence | lesion frequency |")
    print("|---|---|---|---|---|")
    for i in range(len(c.counts)):
        if c.counts[i]:
            share = c.weights[i] if c.weights is not None else np.nan
            print(
                f"| {i}/15 | {c.counts[i]} | {share:.4f} | {c.confidence[i]:.3f} "
                f"| {c.accuracy[i]:.3f} |"
            )


def thick_slices(case: Any, slab_mm: float) -> Any:
    """`case` with its MRI as thick axial slabs: groups of n = round(slab_mm / spacing) slices
    along the array axis nearest to superior-inferior averaged into one (the last incomplete
    group dropped), on a grid n times coarser there, centred on each group; the CT and masks
    keep their arrays and grid (`Case.grids`). n < 2: the case unchanged."""
    from dataclasses import replace

    aff = np.asarray(case.affine, np.float64)
    axis = int(np.argmax(np.abs(aff[2, :3])))
    n = int(round(slab_mm / case.spacing[axis]))
    if n < 2:
        return case
    mri = np.moveaxis(np.asarray(case.mri, np.float32), axis, -1)
    k = mri.shape[-1] // n
    slabs = mri[..., : k * n].reshape(*mri.shape[:-1], k, n).mean(-1)
    new_aff = aff.copy()
    new_aff[:3, 3] += aff[:3, axis] * (n - 1) / 2.0
    new_aff[:3, axis] *= n
    grids = {r: aff for r in ("ct", *case.masks())}
    return replace(case, mri=np.moveaxis(slabs, -1, axis), affine=new_aff, grids=grids)


def slices(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from dataclasses import replace

    from clinfuse.io.dataset import load_dataset
    from clinfuse.io.nifti import load_nifti
    from clinfuse.phantom.realhead import is_test_case
    from clinfuse.pipeline import load_model
    from clinfuse.preprocess.pipeline import preprocess_case
    from clinfuse.training.data import training_target
    from clinfuse.training.lesion import _ignore_paths
    from lesion_eval import head_prob

    model = load_model(args.checkpoint, 3, "cpu").model.eval()
    rule = model.lesion_head.mask_rule
    print(f"head: {args.checkpoint or 'shipped'}; {rule.describe()}")
    print(f"thick slabs {args.slab_mm:g} mm; lesion-free cases only; 2 mm working grid\n")
    print("| case | person | false mL as built | false mL thick | components as built / thick |")
    print("|---|---|---|---|---|")
    per: dict[str, list[tuple[float, float]]] = {}
    for data in args.data:
        ignores = _ignore_paths(Path(data))
        for ref in load_dataset(data):
            if any(is_test_case(str(p)) for p in ref.paths.values()):
                raise SystemExit(f"{ref.case_id}: a test head; never used here")
            case = ref.load()
            if case.lesion is not None and np.any(case.lesion):
                continue
            # A real head's own unlabelled lesions (C-STAR's chronic strokes: the manifest's
            # `ignore` mask) are not false lesions: carried through preprocessing in the lesion
            # role (resampled like it) and left out, as training's validation leaves them out.
            ign = None
            if ref.case_id in ignores:
                ign = np.asarray(load_nifti(ignores[ref.case_id])[0]) > 0.5
            case = replace(case, lesion=ign)
            row = []
            for c in (case, thick_slices(case, args.slab_mm)):
                prep = preprocess_case(c, spacing=2.0)
                prob = head_prob(model, np.asarray(training_target(prep, 1.0)), prep)
                mask = rule.apply(prob, prep.spacing, 0.5, prep.mri)
                if prep.lesion is not None:
                    mask &= ~prep.lesion.astype(bool)
                n_comp = int(ndimage.label(mask, structure=np.ones((3, 3, 3)))[1])
                row.append((float(mask.sum() * np.prod(prep.spacing) / 1000.0), n_comp))
            who = str(ref.patient_id or ref.case_id)
            per.setdefault(who, []).append((row[0][0], row[1][0]))
            print(
                f"| {ref.case_id} | {who} | {row[0][0]:.2f} | {row[1][0]:.2f} "
                f"| {row[0][1]} / {row[1][1]} |",
                flush=True,
            )
    print("\n| person | cases | false mL as built (cases marked) | thick (cases marked) |")
    print("|---|---|---|---|")
    every = [v for rows in per.values() for v in rows]
    for who, rows in sorted(per.items()) + [("all", every)]:
        a, b = np.array(rows).T
        print(
            f"| {who} | {len(rows)} | {a.sum():.2f} ({int((a > 0).sum())}) "
            f"| {b.sum():.2f} ({int((b > 0).sum())}) |"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("contrast")
    c.add_argument("data", type=Path, nargs="?")
    c.add_argument("--held-out", type=int, default=0)
    c.add_argument("--first-seed", type=int, default=7000)
    c.add_argument("--lesion-ml", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"))
    c.add_argument("--territories", default=None, help="as lesion_eval.py --territories")
    m = sub.add_parser("minsize")
    m.add_argument("data", type=Path)
    m.add_argument("--checkpoint", type=Path, default=None)
    pr = sub.add_parser("paired")
    pr.add_argument("data", type=Path)
    pr.add_argument("--checkpoint", type=Path, default=None, help="the new head (shipped if unset)")
    pr.add_argument("--against", type=Path, default=None, help="the old head (shipped if unset)")
    hide = "heads with sequence slots are not told the cases' MRI sequence (unknown)"
    pr.add_argument("--hide-contrast", action="store_true", help=hide)
    co = sub.add_parser("components")
    co.add_argument("data", type=Path)
    co.add_argument("--checkpoint", type=Path, default=None)
    co.add_argument("--hide-contrast", action="store_true", help=hide)
    co.add_argument(
        "--twin",
        action="store_true",
        help="also: how much each false component differs from its contralateral twin with the "
        "shift-only mirror (+mirror heads) and with the rigid mid-sagittal plane "
        "(+rigid-mirror heads, clinfuse.nn.symmetry)",
    )
    ru = sub.add_parser("rules")
    ru.add_argument("data", type=Path)
    ru.add_argument("--checkpoint", type=Path, default=None)
    pl = sub.add_parser("planes")
    pl.add_argument("data", type=Path)
    sm = sub.add_parser("small")
    sm.add_argument("--checkpoint", type=Path, action="append", default=[])
    sm.add_argument("--sequences", default="T1,T2,FLAIR,DWI,ADC")
    sm.add_argument("--n", type=int, default=4)
    sm.add_argument("--first-seed", type=int, default=80000)
    sm.add_argument("--ml", type=float, nargs=2, default=(0.4, 0.8))
    sm.add_argument("--kind", default="ischaemic", choices=("ischaemic", "haemorrhagic"))
    help_t = "comma list of MCA, ACA, PCA, lacune, branch (default: the first four)"
    sm.add_argument("--territories", default=None, help=help_t)
    gh = sub.add_parser("ghosts")
    gh.add_argument("--seeds", type=int, nargs="+", required=True)
    gh.add_argument("--checkpoint", type=Path, default=None)
    gh.add_argument("--lesion-ml", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"))
    ca = sub.add_parser("calibration")
    ca.add_argument("data", type=Path)
    ca.add_argument("--checkpoint", type=Path, default=None)
    ca.add_argument("--folds", type=int, default=2)
    sl = sub.add_parser("slices")
    sl.add_argument("data", type=Path, nargs="+")
    sl.add_argument("--checkpoint", type=Path, default=None)
    sl.add_argument("--slab-mm", type=float, default=4.0)
    sz = sub.add_parser("sizes")
    sz.add_argument("runs", type=Path, nargs="+")
    rc = sub.add_parser("record")
    rc.add_argument("checkpoint", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "calibration" and args.folds < 2:
        ap.error("calibration: --folds must be >= 2")
    if args.cmd == "small" and not 1 <= args.n <= 100:
        ap.error("small: --n must be 1-100 (each sequence has 100 seeds)")
    if args.cmd == "small":
        from clinfuse.errors import ClinfuseInputError
        from clinfuse.phantom.config import parse_territories

        try:
            parse_territories(args.territories)
        except ClinfuseInputError as e:
            ap.error(f"small: --territories: {e}")
    if args.cmd == "contrast" and not (args.data or args.held_out):
        ap.error("contrast needs DATA or --held-out N")
    run = {
        "contrast": contrast,
        "minsize": minsize,
        "paired": paired,
        "components": components,
        "rules": rules,
        "planes": planes,
        "small": small,
        "ghosts": ghosts,
        "calibration": calibration_maps,
        "slices": slices,
        "sizes": sizes,
        "record": record,
    }
    run[args.cmd](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
