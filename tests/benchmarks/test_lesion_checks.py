"""benchmarks/lesion_checks.py minsize: the rule table on validation cases."""

import importlib.util
from pathlib import Path

import pytest
import torch

from _helpers import tiny_fusion_checkpoint

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "lesion_checks.py"
_spec = importlib.util.spec_from_file_location("bench_lesion_checks", _PATH)
lc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lc)


def _t2_phantoms_and_tiny_head(tmp_path: Path, n: int) -> tuple[Path, Path]:
    """`n` small T2 phantoms with lesions (seed 50) as a validation set, and a tiny random
    fusion checkpoint: what the table commands run on in these tests."""
    from clinfuse.phantom import PhantomConfig, write_phantom_dataset

    cfg = PhantomConfig(shape=(24, 24, 16), spacing=(3.0, 3.0, 3.0), supersample=1)
    data = write_phantom_dataset(tmp_path / "val", n, cfg, seed=50, contrast="T2")
    return data, tiny_fusion_checkpoint(tmp_path / "tiny.pt")


def test_minsize_scores_the_heads_own_rule_first(tmp_path, capsys):
    from clinfuse.training.lesion import MIN_COMPONENT_PROB_CHOICES

    data, ckpt = _t2_phantoms_and_tiny_head(tmp_path, 2)
    state = torch.load(ckpt, weights_only=False)
    for key in ("model", "ema"):
        prefix = "module." if key == "ema" else ""
        state[key][f"{prefix}lesion_head.min_lesion_ml"] = torch.tensor(0.25)
        state[key][f"{prefix}lesion_head.min_component_prob"] = torch.tensor(0.8)
    torch.save(state, ckpt)
    assert lc.main(["minsize", str(data), "--checkpoint", str(ckpt)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
    # first the own rule case by case, then by kind of case (both cases are phantoms)
    assert lines[0] == "| case | lesion mL | predicted mL | Dice | HD95 mm |"
    assert [ln.split(" | ")[0] for ln in lines[1:3]] == ["| phantom_000", "| phantom_001"]
    assert lines[3].startswith("| cases | lesions | Dice | with a prediction")
    assert lines[4].startswith("| phantoms | ") and "real-anatomy" not in "".join(lines)
    # then Dice by lesion size: every lesion case in the bin of its volume, with its Dice
    cases = [ln.split(" | ") for ln in lines[1:3] if ln.split(" | ")[3].strip()]
    assert lines[5] == "| lesion size | lesions | Dice | Dice 0 (missed) |"
    size_rows = [ln.split(" | ") for ln in lines[6:] if " mL | " in ln and ln[2].isdigit()]
    assert sum(int(r[1]) for r in size_rows) == len(cases) > 0
    for r in size_rows:
        lo, hi = (float(v) for v in r[0].strip("| mL").split("-"))
        ds = [float(c[3]) for c in cases if lo <= float(c[1]) < hi]
        assert int(r[1]) == len(ds) and abs(float(r[2]) - sum(ds) / len(ds)) < 1e-3
        assert int(r[3].strip(" |")) == sum(d == 0 for d in ds)
    rows = lines[lines.index(next(ln for ln in lines if ln.startswith("| rule |"))) :]
    assert rows[0].startswith("| rule | validation Dice")
    own = (
        "| the head's own rule (minimum lesion 0.25 mL; components kept from peak probability "
        "0.00; secondary components kept from mean probability 0.80; case-level lesion gate 0.00"
    )
    assert rows[1].startswith(own)
    filt = [r for r in rows if "then secondary components of mean p >=" in r]
    assert len(filt) == len(MIN_COMPONENT_PROB_CHOICES) - 1  # every choice > 0
    # the filter rows follow the head's own minimum: its own filter's row is its own rule
    same = [
        r for r in filt if r.startswith("| 0.25 mL, then secondary components of mean p >= 0.8 |")
    ]
    assert len(same) == 1 and same[0].split(" | ")[1:] == rows[1].split(" | ")[1:]
    for r in rows[1:]:
        dice = float(r.split(" | ")[1])
        assert 0.0 <= dice <= 1.0


def test_contrast_places_a_dark_and_a_bright_infarct_in_the_brain(tmp_path, capsys):
    """The MRI percentile column: an ischaemic lesion sits low among the brain's voxels on ADC
    (dark) and high on DWI (bright), whatever its ring is made of."""
    from clinfuse.phantom import PhantomConfig, write_phantom_dataset

    cfg = PhantomConfig(shape=(48, 48, 40), spacing=(3.0, 3.0, 3.0), supersample=1)
    pct = {}
    for seq in ("ADC", "DWI"):
        data = write_phantom_dataset(
            tmp_path / seq, 1, cfg, seed=3, contrast=seq, lesion="ischaemic"
        )
        assert lc.main(["contrast", str(data)]) == 0
        out = capsys.readouterr().out
        per_case, by_seq = out.split("lesions differ from their ring")
        lines = [ln for ln in per_case.splitlines() if ln.startswith("| ")]
        head = "| MRI percentile in the brain | MRI margin beyond the brain's 1-99 % |"
        assert lines[0].endswith(head) and len(lines) == 2
        pct[seq] = float(lines[1].split(" | ")[-2])
        # the summary per sequence: one lesion, its own contrast as the median
        (row,) = [ln for ln in by_seq.splitlines() if ln.startswith(f"| {seq} |")]
        assert row.split(" | ")[1:4] == ["lesion", "1", lines[1].split(" | ")[2]]
    assert 0 <= pct["ADC"] < 30 and 70 < pct["DWI"] <= 100


def test_mri_margin_measures_on_the_side_the_lesion_departs_to():
    """Below the 1st percentile for a dark lesion, above the 99th for a bright one, negative
    inside the range; in the image's own units (a narrower brain band gives a smaller margin)."""
    import numpy as np

    rest = np.linspace(-1.0, 1.0, 10001)  # 1st / 99th percentiles -0.98 / 0.98
    assert lc.mri_margin(-1.5, rest) == pytest.approx(0.52)
    assert lc.mri_margin(1.2, rest) == pytest.approx(0.22)
    assert lc.mri_margin(-0.5, rest) == pytest.approx(-0.48)
    assert lc.mri_margin(-0.3, rest * 0.1) == pytest.approx(0.3 - 0.098)
    assert np.isnan(lc.mri_margin(0.0, np.array([])))
    rows = [(0.4, True), (0.3, True), (0.1, False)]
    assert lc.margin_split(rows) == "+0.30 to +0.40 / +0.10 to +0.10"
    assert lc.margin_split([(0.2, True)]) == "+0.20 to +0.20 / none"


def test_paired_summary_charges_hd95_only_on_lesions_both_heads_find():
    """A lesion only the new head finds is listed apart, not averaged into its HD95; false mL
    is counted per lesion-free case for each head."""
    from types import SimpleNamespace

    import numpy as np

    def row(case, mask_voxels, dice, hd):
        it = SimpleNamespace(case_id=case)
        return (it, np.ones(mask_voxels, bool), None, dice, hd)

    nan = float("nan")
    new = [
        row("a", 5, 0.8, 2.0),
        row("b", 5, 0.6, 4.0),
        row("c", 3, 0.5, 80.0),  # found by the new head only, far away
        row("d", 0, 0.0, nan),
        row("free", 4, None, None),
    ]
    old = [
        row("a", 5, 0.7, 3.0),
        row("b", 5, 0.5, 6.0),
        row("c", 0, 0.0, nan),
        row("d", 2, 0.0, 35.0),  # a prediction elsewhere in the case: not on the lesion
        row("free", 0, None, None),
    ]
    s = lc.paired_summary(new, old, [0.5] * 5)
    assert s["found"] == (3, 3) and s["overlap"] == (3, 2) and s["both"] == 2
    assert s["hd95_both"] == (3.0, 4.5)
    assert s["only_new"] == [("c", 0.5, 80.0)] and s["only_old"] == [("d", 0.0, 35.0)]
    assert s["false_new"] == [("free", 2.0)] and s["false_old"] == [] and s["lesion_free"] == 1
    assert s["dice"].n == 4 and abs(s["dice"].mean_diff - (0.1 + 0.1 + 0.5) / 4) < 1e-9


def test_paired_groups_sum_each_sequence_and_kind_apart():
    """Per group (real / phantom, MRI sequence): lesions, each head's mean Dice and lesions
    found, lesion-free cases, false mL and how many of them each head marks."""
    from types import SimpleNamespace

    import numpy as np

    def row(case, contrast, mask_voxels, dice, hd):
        it = SimpleNamespace(case_id=case, mri_contrast=contrast)
        return (it, np.ones(mask_voxels, bool), None, dice, hd)

    nan = float("nan")
    new = [
        row("rire_t1_000", "T1", 5, 0.8, 2.0),
        row("cstar_t2_000", "T2", 0, 0.0, nan),
        row("real_lesion_free_rire_t1_000", "T1", 4, None, None),
        row("real_lesion_free_vm_t1_000", "T1", 0, None, None),
        row("ranged_phantoms_phantom_001", None, 3, 0.5, 4.0),
    ]
    old = [
        row("rire_t1_000", "T1", 5, 0.6, 3.0),
        row("cstar_t2_000", "T2", 2, 0.4, 5.0),
        row("real_lesion_free_rire_t1_000", "T1", 0, None, None),
        row("real_lesion_free_vm_t1_000", "T1", 2, None, None),
        row("ranged_phantoms_phantom_001", None, 3, 0.5, 4.0),
    ]
    g = lc.paired_groups(new, old, [0.5] * 5)
    assert list(g) == ["phantom unknown", "real T1", "real T2"]
    t1 = g["real T1"]
    assert t1["lesions"] == 1 and t1["dice"] == (0.8, 0.6) and t1["found"] == [1, 1]
    assert t1["free"] == 2 and t1["false_ml"] == [2.0, 1.0] and t1["marked"] == [1, 1]
    t2 = g["real T2"]
    assert t2["found"] == [0, 1] and t2["dice"] == (0.0, 0.4) and t2["free"] == 0
    with pytest.raises(ValueError, match="differ"):
        lc.paired_groups(new, old[::-1], [0.5] * 5)


def test_paired_of_a_head_with_itself_is_a_tie(tmp_path, capsys):

    data, ckpt = _t2_phantoms_and_tiny_head(tmp_path, 2)
    args = ["paired", str(data), "--checkpoint", str(ckpt), "--against", str(ckpt)]
    assert lc.main(args) == 0
    rows = {
        ln.split(" | ")[0].strip("| "): ln.split(" | ")[1:]
        for ln in capsys.readouterr().out.splitlines()
        if ln.startswith("| ")
    }
    dice = next(v for k, v in rows.items() if k.startswith("Dice over"))
    assert dice[0] == dice[1].strip(" |")
    assert rows["Dice, new - old (paired Wilcoxon p)"][0].startswith("+0.000 (p = 1)")
    found = rows["lesions with a prediction"]
    assert found[0] == found[1].strip(" |")
    assert rows["lesions only this head finds"] == ["none", "none |"]


def test_component_rows_split_true_from_false_components():
    """`components`: each component of the mask under the rule, true when it touches the
    labelled lesion, with its volume and mean probability; unknown-label voxels left out."""
    import numpy as np

    from clinfuse.nn.lesion_mask import LesionMaskRule

    class Item:
        case_id = "c"
        spacing = (2.0, 2.0, 2.0)
        label = np.zeros((20, 20, 20), np.float32)
        known = np.ones((20, 20, 20), bool)
        sources = np.zeros((3, 20, 20, 20), np.float32)  # the MRI a ghost rule would read

    it = Item()
    it.label[2:6, 2:6, 2:6] = 1.0
    it.known = it.known.copy()
    it.known[15:20, 0:5, 0:5] = False  # an unlabelled region: a prediction there is not scored
    p = np.zeros((20, 20, 20), np.float32)
    p[2:6, 2:6, 2:6] = 0.9  # the lesion found
    p[12:14, 12:14, 12:14] = 0.6  # a faint false component of 8 voxels = 0.064 mL
    p[16:18, 1:3, 1:3] = 0.95  # inside the unknown region
    rows = lc.component_rows([p], [it], LesionMaskRule())
    assert [(c, t) for c, t, _, _ in rows] == [("c", True), ("c", False)]
    assert abs(rows[0][2] - 64 * 0.008) < 1e-9 and abs(rows[0][3] - 0.9) < 1e-6
    assert abs(rows[1][2] - 0.064) < 1e-9 and abs(rows[1][3] - 0.6) < 1e-6
    # the head's rule applies first: a gate above the lesion's mean empties the case
    assert lc.component_rows([p], [it], LesionMaskRule(0.0, 0.0, 0.95)) == []


def test_group_scores_and_peak_rows_split_real_from_phantom_and_free_from_lesion():
    """`rules`: each group sums its own cases (a lesion-free real case's mask counts as marked
    with its mL; a lesion case's Dice and HD95), and the components' mean and highest
    probability split by kind and truth; a peak filter above a false component's peak empties
    the lesion-free case."""
    import numpy as np

    from clinfuse.nn.lesion_mask import LesionMaskRule

    def item(case_id: str, lesion: bool) -> object:
        label = np.zeros((20, 20, 20), np.float32)
        if lesion:
            label[2:6, 2:6, 2:6] = 1.0
        return type(
            "Item",
            (),
            {
                "case_id": case_id,
                "spacing": (2.0, 2.0, 2.0),
                "label": label,
                "known": np.ones((20, 20, 20), bool),
                "sources": np.zeros((3, 20, 20, 20), np.float32),
            },
        )()

    items = [item("val_phantoms_phantom_000", True), item("val_real_lesion_free_vm", False)]
    found = np.zeros((20, 20, 20), np.float32)
    found[2:6, 2:6, 2:6] = 0.99  # the phantom's lesion, exactly
    false = np.zeros((20, 20, 20), np.float32)
    false[10:12, 10:12, 10:12] = 0.7  # 8 voxels = 0.064 mL, peak 0.7
    probs = [found, false]
    g = lc.group_scores(probs, items, LesionMaskRule())
    assert list(g) == ["phantom lesion", "real free"]
    assert g["phantom lesion"]["dice"] == [1.0] and g["phantom lesion"]["overlap"] == 1
    assert g["real free"]["marked"] == 1 and abs(g["real free"]["false_ml"] - 0.064) < 1e-9
    peaked = lc.group_scores(probs, items, LesionMaskRule(min_peak_prob=0.9))
    assert peaked["real free"]["marked"] == 0 and peaked["phantom lesion"]["dice"] == [1.0]
    rows = lc.peak_rows(probs, items, LesionMaskRule())
    assert list(rows) == [("phantom", True), ("real", False)]
    assert np.allclose(rows[("real", False)], [(0.7, 0.7, 0.064)])


def test_rules_lists_the_own_rule_then_each_peak_and_gate_variant(tmp_path, capsys):
    from clinfuse.training.lesion import MIN_COMPONENT_PROB_CHOICES, MIN_PEAK_PROB_CHOICES

    data, ckpt = _t2_phantoms_and_tiny_head(tmp_path, 2)
    assert lc.main(["rules", str(data), "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "own rule: minimum lesion 0.00 mL; components kept from peak probability 0.00" in out
    rows = [ln.split(" | ") for ln in out.splitlines() if ln.startswith("| ")]
    assert rows[0][0] == "| rule"
    names = [r[0].lstrip("| ") for r in rows[1:] if r[1] == "phantom lesion"]
    peaks = [f"peak {h:g}" for h in MIN_PEAK_PROB_CHOICES if h > 0]
    assert names[0] == "own rule" and names[1 : 1 + len(peaks)] == peaks
    rest = names[1 + len(peaks) :]
    assert [n for n in rest if not n.startswith("gate ")] == ["secondary 0.8", "secondary 0.85"] + [
        f"secondary {q:g}" for q in MIN_COMPONENT_PROB_CHOICES if q > 0.85
    ]
    assert "| components | n | mean p: 5 / 10 / 25 / 50 %" in out


def test_component_look_reports_mri_percentile_ct_hu_and_depth():
    """`components`' look columns: a dark, CSF-dense component deep in a cubic brain."""
    import numpy as np

    from clinfuse.preprocess.windowing import CLINICAL_WINDOW, apply_window

    class Item:
        spacing = (2.0, 2.0, 2.0)

    it = Item()
    brain = np.zeros((20, 20, 20), bool)
    brain[2:18, 2:18, 2:18] = True
    mri = np.where(brain, 1.0, -2.0).astype(np.float32)
    hu = np.where(brain, 30.0, -1000.0)
    comp = np.zeros_like(brain)
    comp[9:11, 9:11, 9:11] = True
    mri[comp] = 0.2  # darker than every other brain voxel
    hu[comp] = 8.0  # CSF-like
    it.sources = np.stack([mri, apply_window(hu, CLINICAL_WINDOW), mri])
    it.brain = brain
    pct, ct_hu, depth = lc.component_look(comp, it)
    assert pct == 0.0
    assert abs(ct_hu - 8.0) < 0.5
    assert 14.0 <= depth <= 18.0  # 7-8 voxels of 2 mm from the brain's edge


def test_twin_difference_with_the_rigid_plane_undoes_a_tilt_the_shift_mirror_misses():
    """`components --twin`: on a left-right symmetric head turned by 10 degrees of yaw, the
    shift-only mirror pairs a ventricle with tissue, the rigid plane (`clinfuse.nn.symmetry`,
    about 10 degrees of yaw) pairs it with its twin again."""
    import numpy as np
    from scipy import ndimage

    idx = np.indices((40, 40, 24)).astype(np.float64)
    c = [19.5, 19.5, 11.5]
    r = np.sqrt(
        ((idx[0] - c[0]) / 16) ** 2 + ((idx[1] - c[1]) / 17) ** 2 + ((idx[2] - c[2]) / 10) ** 2
    )
    brain = r < 1.0
    mri = np.where(brain, 1.0, -2.0)
    for side in (-1, 1):  # two symmetric "ventricles", off the midline and off-centre in y
        v = ((idx[0] - c[0] - side * 5) ** 2 + (idx[1] - c[1] - 6) ** 2 + (idx[2] - c[2]) ** 2) < 9
        mri[v] = -0.5
    turn = dict(angle=10, axes=(0, 1), reshape=False, mode="nearest")
    tilted = ndimage.rotate(mri, order=1, **turn).astype(np.float32)
    brain_t = ndimage.rotate(brain.astype(np.float32), order=0, **turn) > 0.5

    class Item:
        spacing = (2.0, 2.0, 2.0)

    it = Item()
    it.sources = np.stack([tilted, tilted, tilted]).astype(np.float32)
    it.brain = brain_t
    ventricles = brain_t & (tilted < 0.0) & (tilted > -1.0)
    shift_d, rigid_d, _, plane = lc.twin_difference(ventricles, it)
    assert abs(abs(plane.yaw) - 10) <= 1.5 and abs(plane.roll) <= 1.5
    assert shift_d > 0.5 and rigid_d < 0.5 * shift_d


def test_planes_table_reports_both_mirrors_on_an_upright_phantom(tmp_path, capsys):
    """`planes`: an upright phantom is about as symmetric under the rigid plane as under the
    shift-only one, and its rigid plane is (nearly) untilted."""
    from clinfuse.phantom import PhantomConfig, write_phantom_dataset

    cfg = PhantomConfig(shape=(48, 48, 40), spacing=(3.0, 3.0, 3.0), supersample=1)
    data = write_phantom_dataset(tmp_path / "d", 2, cfg, seed=5, contrast="T1", lesion="none")
    assert lc.main(["planes", str(data)]) == 0
    rows = [ln.split(" | ") for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
    assert rows[0][1] == "shift-only: brain corr" and len(rows) == 1 + 2 + 1  # header, 2, mean
    for row in rows[1:3]:
        shift_c, rigid_c = float(row[1]), float(row[2])
        yaw, roll = (abs(float(v)) for v in row[3].split(" / "))
        assert rigid_c >= shift_c - 0.05 and yaw <= 3.0 and roll <= 3.0


def test_small_reports_each_sequence_and_head(tmp_path, capsys, monkeypatch):
    """`small`: per case the head's probability inside the lesion, its Dice and mL, then found
    and mean Dice per sequence and head; each sequence on its own seeds."""
    from clinfuse.phantom import PhantomConfig, generate_phantom
    from clinfuse.phantom.config import ISCHAEMIC_TERRITORIES
    from clinfuse.preprocess.pipeline import preprocess_case

    seen = []

    def tiny(sequences, n, first_seed, ml, kind, territories=None):
        for k, seq in enumerate(sequences):
            for i in range(n):
                seed = first_seed + 100 * k + i
                seen.append((seq, seed, ml, kind))
                assert territories == ISCHAEMIC_TERRITORIES  # the default draws
                cfg = PhantomConfig(
                    shape=(24, 24, 16), spacing=(3.0,) * 3, supersample=1, mri_contrast=seq
                )
                yield seq, seed, preprocess_case(generate_phantom(cfg, seed).case)

    monkeypatch.setattr(lc, "small_lesion_phantoms", tiny)
    ckpt = tiny_fusion_checkpoint(tmp_path / "tiny.pt")
    args = ["small", "--checkpoint", str(ckpt), "--sequences", "T2,ADC", "--n", "1"]
    assert lc.main(args) == 0
    assert seen == [("T2", 80000, (0.4, 0.8), "ischaemic"), ("ADC", 80100, (0.4, 0.8), "ischaemic")]
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| T2 |") or ln.startswith("| ADC |")]
    assert len(rows) == 4  # one case row and one summary row per sequence
    assert any("of 1 |" in r and str(ckpt) in r for r in rows)
    assert "| sequence | seed | lesion mL | MRI margin | " in out
    assert "| MRI margin: found / missed (range) |" in out
    case_rows = [r for r in rows if str(ckpt) not in r]
    for r in case_rows:  # the margin column is a signed number
        float(r.split(" | ")[3])
    assert "against the first" not in out  # one head: no paired table
    with pytest.raises(SystemExit):
        lc.main(["small", "--n", "101"])
    with pytest.raises(SystemExit):
        lc.main(["small", "--territories", "MCA,basilar"])


def test_small_lesion_phantoms_draws_branch_infarcts_when_told():
    """`--territories branch`: every ischaemic lesion a branch wedge within the asked volume."""
    seq, seed, prep = next(
        lc.small_lesion_phantoms(["DWI"], 1, 90001, (1.0, 10.0), "ischaemic", ("branch",))
    )
    assert (seq, seed) == ("DWI", 90001)
    ml = float(prep.lesion.sum()) * 8.0 / 1000.0
    assert 1.0 <= ml <= 10.0


def test_ghost_rows_tell_the_lesions_mirror_image_from_other_false_components():
    import numpy as np

    from clinfuse.nn.symmetry import MirrorPlane, near_mirror_image

    ghost_rows = lc.ghost_rows

    shape = (40, 20, 20)
    gt = np.zeros(shape, bool)
    gt[5:9, 8:12, 8:12] = True  # left
    plane = MirrorPlane(0.0, 0.0, 19.5)
    mirrored = near_mirror_image(gt, plane, margin=0)
    expected = np.zeros(shape, bool)
    expected[31:35, 8:12, 8:12] = True  # its reflection about x = 19.5
    assert np.array_equal(mirrored, expected)
    near = near_mirror_image(gt, plane)
    pred = gt.copy()
    pred[32:35, 9:12, 9:12] = True  # a ghost, a little off the mirror image
    pred[18, 1, 1] = pred[19, 2, 2] = True  # a far speck elsewhere, touching corner to corner
    prob = np.where(pred, 0.9, 0.0)
    rows = ghost_rows(pred, prob, gt, mirrored, near, (2.0, 2.0, 2.0))
    kinds = sorted((r["true"], r["ghost"]) for r in rows)
    assert kinds == [(False, False), (False, True), (True, False)]  # 26-connected, as clean_mask
    true = next(r for r in rows if r["true"])
    ghost = next(r for r in rows if r["ghost"])
    assert true["ml"] == pytest.approx(64 * 8 / 1000) and true["to_lesion_mm"] == 0.0
    assert ghost["to_mirror_mm"] < 3.0 < 50.0 < ghost["to_lesion_mm"]
    assert ghost["mean_p"] == pytest.approx(0.9)
    assert ghost_rows(np.zeros(shape, bool), prob, gt, mirrored, near, (2.0,) * 3) == []


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # a random head: fits at their bounds
def test_calibration_table_scores_each_map_by_cross_validation(tmp_path, capsys):

    data, ckpt = _t2_phantoms_and_tiny_head(tmp_path, 4)
    assert lc.main(["calibration", str(data), "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "4 validation cases, 4 with a lesion; 2 folds" in out
    rows = [ln.split(" | ") for ln in out.splitlines() if ln.startswith("| ")]
    keys = [r[0][2:4] for r in rows if r[0][2:4] in ("A ", "B ", "C ", "D ", "E ")]
    assert keys == ["A ", "B ", "C ", "D ", "E "]
    table = {r[0][2]: r for r in rows if r[0][2:4] in ("A ", "B ", "C ", "D ", "E ")}
    for r in table.values():  # ECEs are fractions (a random head's Platt fit may be unusable)
        if "no usable fit" not in r[1]:
            assert all(0.0 <= float(v.split()[0]) <= 1.0 for v in (r[2], r[4], r[6]))
    assert "no usable fit" not in table["A"][1] + table["E"][1]
    assert "Reliability in the lesion neighbourhood" in out
    with pytest.raises(SystemExit):
        lc.main(["calibration", str(data), "--folds", "1"])


def test_thick_slices_average_axial_slabs_and_keep_the_ct_on_its_grid():
    import numpy as np

    from clinfuse.io.case import Case
    from clinfuse.preprocess.pipeline import preprocess_case

    shape = (10, 12, 9)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-9.0, -11.0, -8.0]
    mri = np.broadcast_to(np.arange(9, dtype=np.float32) * 10 + 100, shape).copy()
    brain = np.zeros(shape, bool)
    brain[2:8, 2:10, 2:7] = True
    ct = np.full(shape, 30.0, np.float32)
    bone = np.zeros(shape, bool)
    bone[0] = True
    ct[0] = 1200.0
    case = Case("c", mri, ct, aff, brain=brain, bone=bone)
    thick = lc.thick_slices(case, 4.0)
    assert thick.mri.shape == (10, 12, 4)  # the 9th slice (an incomplete slab) dropped
    np.testing.assert_allclose(thick.mri[0, 0], [105.0, 125.0, 145.0, 165.0])  # pairs averaged
    assert thick.spacing == (2.0, 2.0, 4.0)
    np.testing.assert_allclose(thick.affine[:3, 3], [-9.0, -11.0, -7.0])  # centred on each pair
    assert set(thick.grids) == {"ct", "brain", "bone"} and thick.ct is case.ct
    assert lc.thick_slices(case, 2.0) is case  # one slice per slab: unchanged
    prep = preprocess_case(thick, spacing=2.0)  # back on a 2 mm grid, the masks resampled
    assert prep.spacing == (2.0, 2.0, 2.0) and prep.brain.shape == prep.mri.shape
    assert prep.brain.any()


def test_slices_leaves_a_real_heads_own_lesions_out_of_the_false_ones(
    tmp_path, capsys, monkeypatch
):
    """`slices` counts the head's mask outside the manifest's `ignore` mask (a real head's own,
    unlabelled lesions) as false, on the MRI as built and as thick slabs, per person."""
    import csv
    import sys

    import nibabel as nib
    import numpy as np

    shape, aff = (24, 24, 20), np.diag([2.0, 2.0, 2.0, 1.0])
    idx = np.indices(shape)
    r = np.sqrt(sum(((idx[i] - (s - 1) / 2) / (0.45 * s)) ** 2 for i, s in enumerate(shape)))
    brain, bone = r < 0.75, (r >= 0.75) & (r < 0.95)
    arrays = {
        "mri": np.where(brain, 600.0, np.where(bone, 150.0, 0.0)),
        "ct": np.where(brain, 35.0, np.where(bone, 1200.0, -1000.0)),
        "brain": brain,
        "bone": bone,
    }
    ignore = np.zeros(shape, bool)
    ignore[8:12, 8:12, 8:12] = True  # the head's own lesion, unlabelled
    rows = []
    for case in ("p_000", "q_000"):
        (tmp_path / case).mkdir()
        row = {"case_id": case, "patient_id": case[0]}
        for name, arr in (*arrays.items(), ("ignore", ignore)):
            nib.save(
                nib.Nifti1Image(arr.astype(np.float32), aff),
                str(tmp_path / case / f"{name}.nii.gz"),
            )
            row[name] = f"{case}/{name}.nii.gz"
        row["ignore"] = row["ignore"] if case == "p_000" else ""
        rows.append(row)
    with open(tmp_path / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(
            fh, fieldnames=["case_id", "mri", "ct", "brain", "bone", "ignore", "patient_id"]
        )
        w.writeheader()
        w.writerows(rows)

    def fake_prob(model, fused, prep):  # a confident blob on the own lesion, on the 2 mm grid
        p = np.zeros(prep.shape, np.float32)
        p[8:12, 8:12, 8:12] = 0.99
        return p

    sys.path.insert(0, str(_PATH.parent))
    import lesion_eval

    monkeypatch.setattr(lesion_eval, "head_prob", fake_prob)
    ckpt = tiny_fusion_checkpoint(tmp_path / "tiny.pt")
    assert lc.main(["slices", str(tmp_path), "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    rows = {ln.split(" | ")[0][2:]: ln for ln in out.splitlines() if ln.startswith("| ")}
    assert rows["p"] == "| p | 1 | 0.00 (0) | 0.00 (0) |"  # inside its ignore mask: not false
    assert rows["q"] == "| q | 1 | 0.51 (1) | 0.51 (1) |"  # no ignore mask: 64 voxels false


def test_sizes_bins_held_out_lesions_once_each_from_lesion_eval_tables(tmp_path, capsys):
    """`sizes`: composite rows on the 2 mm grid of phantoms only, a case listed by two runs
    counted once, binned by the lesion's volume, found = Dice > 0, split by lesion kind."""
    head = "case,kind,fused,grid_mm,dice,nsd2,hd95,pred_ml,gt_ml,no_prediction\n"
    a = [
        "phantom_1_T1_ischaemic,phantom,composite,2.0,0.0,0,nan,0,0.4,True",
        "phantom_1_T1_ischaemic,phantom,average,2.0,0.5,0,1,1,0.4,False",
        "phantom_2_T2_haemorrhagic,phantom,composite,2.0,0.8,1,2,1,1.5,False",
        "phantom_3_DWI_ischaemic,phantom,composite,2.0,0.9,1,2,30,30.0,False",
        "clinical_stroke_t2_lesion,real,composite,2.0,0.8,0.4,6,30,38,False",
    ]
    b = [
        "phantom_3_DWI_ischaemic,phantom,composite,2.0,0.1,1,2,30,30.0,False",
        "phantom_4_ADC_ischaemic,phantom,composite,2.0,0.6,1,2,1,0.45,False",
        "phantom_5_ADC_ischaemic,phantom,composite,1.0,0.0,1,2,1,0.45,True",
    ]
    for name, rows in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "lesion_seg_per_case.csv").write_text(head + "\n".join(rows) + "\n")
    assert lc.size_bin(0.49) == "0-0.5 mL" and lc.size_bin(0.5) == "0.5-1 mL"
    assert lc.size_bin(80.0) == ">= 20 mL"
    assert lc.main(["sizes", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("4 held-out phantom lesions from 2 lesion_eval runs")
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and " mL |" in ln]
    assert rows == [
        "| 0-0.5 mL | 2 | 1 | 0.300 | 1 of 2 | - |",
        "| 1-2 mL | 1 | 1 | 0.800 | - | 1 of 1 |",
        "| >= 20 mL | 1 | 1 | 0.900 | 1 of 1 | - |",
    ]
    with pytest.raises(SystemExit, match="not found"):
        lc.main(["sizes", str(tmp_path / "missing")])


def test_record_tables_star_the_kept_choices_and_leave_missing_columns_blank():
    rec = {
        "min_lesion_ml": 0.1,
        "min_component_prob": 0.9,
        "min_peak_prob": 0.98,
        "mirror_ghosts": True,
        "calibration": {
            "dice_by_min_ml": {"0.0": 0.6, "0.1": 0.61},  # slices of the joint table: skipped
            "dice_by_min_ml_and_component_prob": {"0.0/0.9": 0.65, "0.1/0.9": 0.66},
            "hd95_by_min_ml_and_component_prob": {"0.0/0.9": 9.0, "0.1/0.9": 7.75},
            "found_by_min_ml_and_component_prob": {"0.0/0.9": 134, "0.1/0.9": 131},
            "lesion_free_marked_by_min_ml_and_component_prob": {"0.0/0.9": 35, "0.1/0.9": 17},
            "dice_by_min_peak_prob": {"0.0": 0.656, "0.98": 0.650},
            "lesion_free_marked_by_min_peak_prob": {"0.0": 17, "0.98": 2},
            "dice_by_mirror_ghosts": {"0.0": 0.650, "1.0": 0.653},
        },
    }
    lines = lc.record_tables(rec)
    text = "\n".join(lines)
    assert "minimum size (mL)\n" not in text and "(joint)" in text
    assert "| 0.1/0.9* | 0.6600 | 7.75 | 131 | 17 |" in lines
    assert "| 0.0/0.9 | 0.6500 | 9.00 | 134 | 35 |" in lines
    assert "| 0.98* | 0.6500 |  |  | 2 |" in lines  # no HD95 or found recorded
    assert "| 1.0* | 0.6530 |  |  |  |" in lines and "| 0.0 | 0.6500 |  |  |  |" in lines


def test_record_refuses_a_checkpoint_without_a_trained_head(tmp_path):
    ckpt = tiny_fusion_checkpoint(tmp_path / "tiny.pt")
    with pytest.raises(SystemExit, match="no trained lesion head"):
        lc.main(["record", str(ckpt)])
    with pytest.raises(SystemExit, match="record: .*not found"):
        lc.main(["record", str(tmp_path / "missing.pt")])


def test_record_of_the_shipped_head(capsys):
    shipped = Path(__file__).resolve().parents[2] / "src/clinfuse/checkpoints/phantom3d.pt"
    lc.main(["record", str(shipped)])
    out = capsys.readouterr().out
    assert "cap on lesion-free cases marked: none" in out
    assert "min_peak_prob 0.98" in out and "lesion-free cases with a prediction 2" in out
    assert "peak filter" in out and "| 0.98* |" in out


def test_found_against_the_first_head_pairs_lesions_over_every_sequence():
    summary = {
        ("T2", "a"): [0.0, 0.5, 0.0],
        ("T2", "b"): [0.4, 0.5, 0.0],
        ("ADC", "a"): [0.7, 0.0],
        ("ADC", "b"): [0.0, 0.3],
        ("ADC", "c"): [0.7, 0.0],
        ("T2", "c"): [0.0, 0.5, 0.0],
    }
    rows = dict(lc.found_against_first(summary, ["a", "b", "c"]))
    only_first, only_b, found, n, p = rows["b"]
    assert (only_first, only_b, found, n) == (1, 2, 3, 5) and p == pytest.approx(1.0)
    assert rows["c"] == (0, 0, 2, 5, 1.0)  # the same lesions: nothing discordant
