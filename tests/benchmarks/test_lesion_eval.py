"""benchmarks/lesion_eval.py: the segmentation scores and the table it writes."""

import importlib.util
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from clinfuse.nn.lesion_mask import LesionMaskRule

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "lesion_eval.py"
_spec = importlib.util.spec_from_file_location("bench_lesion_eval", _PATH)
le = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(le)


def _row(case: str, kind: str, dice: float, gt_ml: float, fused: str = "composite") -> dict:
    return {
        "case": case, "kind": kind, "fused": fused, "grid_mm": 2.0, "dice": dice,
        "nsd2": dice, "hd95": 2.0, "pred_ml": gt_ml, "gt_ml": gt_ml, "no_prediction": dice == 0,
    }  # fmt: skip


def test_seg_scores_measure_volume_and_flag_an_empty_prediction():
    gt = np.zeros((20, 20, 20), bool)
    gt[5:10, 5:10, 5:10] = True  # 125 voxels of 8 mm^3 = 1 mL
    keep_all, mri = LesionMaskRule(), np.zeros(gt.shape, np.float32)
    s = le.seg_scores(gt.astype(np.float32), gt, (2.0, 2.0, 2.0), keep_all, mri)
    assert s["dice"] == 1.0 and s["gt_ml"] == s["pred_ml"] == 1.0 and not s["no_prediction"]
    e = le.seg_scores(np.zeros(gt.shape, np.float32), gt, (2.0, 2.0, 2.0), keep_all, mri)
    assert e["no_prediction"] and e["dice"] == 0.0 and np.isnan(e["hd95"])


def test_table_has_a_row_for_lesions_in_the_issues_size_range(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository: the code field is still its commit
    rows = [
        _row("p0", "phantom", 0.0, 0.2),  # a lacune below 0.5 mL
        _row("p1", "phantom", 0.8, 5.0),
        _row("p2", "phantom", 0.6, 40.0),
        _row("r", "real", 0.7, 38.0),
    ]
    head = SimpleNamespace(temperature=1.5, flip_tta=1)
    loaded = SimpleNamespace(path="ck.pt", sha256="0" * 64, model=SimpleNamespace(lesion_head=head))
    rule = LesionMaskRule(0.5, 0.85)
    le.write_outputs(SimpleNamespace(out=tmp_path), rows, {}, [], loaded, rule, 60.0)
    text = (tmp_path / "lesion_eval.md").read_text()
    assert "minimum lesion 0.50 mL; components kept from peak probability 0.00; " in text
    assert "secondary components kept from mean probability 0.85" in text
    assert "left-right flip averaging on" in text
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=_PATH.parents[1],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert f"(code {commit}, 1 min)" in text
    table = text.splitlines()
    body = [ln for ln in table if ln.startswith("| held-out") or ln.startswith("| real")]
    assert [ln.split(" | ")[0] for ln in body] == [
        "| held-out phantoms",
        "| held-out phantoms, lesion 0.5-80 mL",
        "| real stroke T2 (test case)",
    ]
    assert " | 3 | 0.467 ± " in body[0] and " | 2 | 0.700 ± " in body[1]
    assert "1 of 3" in body[0] and "0 of 2" in body[1]


def test_table_gives_the_dice_ci_and_the_in_range_phantoms_by_sequence(tmp_path):
    rows = [
        _row("phantom_8400_T1_ischaemic", "phantom", 0.0, 2.0),  # in range, missed
        _row("phantom_8405_T1_ischaemic", "phantom", 0.8, 3.0),
        _row("phantom_8401_T2_haemorrhagic", "phantom", 0.9, 10.0),
        _row("phantom_8402_T2_haemorrhagic", "phantom", 0.7, 0.3),  # below 0.5 mL: not by sequence
        _row("phantom_8401_T2_haemorrhagic", "phantom", 0.5, 10.0, fused="average"),
        _row("r", "real", 0.7, 38.0),
    ]
    head = SimpleNamespace(temperature=1.5, flip_tta=0)
    loaded = SimpleNamespace(path="ck.pt", sha256="0" * 64, model=SimpleNamespace(lesion_head=head))
    le.write_outputs(SimpleNamespace(out=tmp_path), rows, {}, [], loaded, LesionMaskRule(), 60.0)
    lines = (tmp_path / "lesion_eval.md").read_text().splitlines()
    assert any(
        ln.startswith("| cases |") and "| Dice | Dice 95 % CI | NSD@2mm |" in ln for ln in lines
    )
    in_range = next(ln for ln in lines if ln.startswith("| held-out phantoms, lesion 0.5-80 mL"))
    # three composite cases in range, Dice 0 / 0.8 / 0.9: the CI lies within [0, 0.9]
    cells = in_range.split(" | ")
    assert cells[3] == "3" and cells[4].startswith("0.567 ± ")
    lo, hi = (float(v) for v in cells[5].split("-"))
    assert 0.0 <= lo < 0.567 < hi <= 0.9
    by_seq = [ln for ln in lines if ln.startswith("| T1 |") or ln.startswith("| T2 |")]
    assert by_seq == [
        "| T1 | ischaemic | 2 | 0.400 | 1 of 2 |",
        "| T2 | haemorrhagic | 1 | 0.900 | 1 of 1 |",
    ]
    real = next(ln for ln in lines if ln.startswith("| real stroke T2"))
    assert " | 1 | 0.700 ± 0.000 | — | " in real  # one case: no interval


def test_calibration_gives_a_reliability_diagram_and_the_neighbourhood_bins(tmp_path):
    """`cal_scores` keeps each selection's reliability curve; the table then has the per-bin
    rows of the phantoms' lesion neighbourhood (composite) and `reliability.png` is written."""
    gt = np.zeros((12, 12, 12), bool)
    gt[4:8, 4:8, 4:8] = True
    brain = np.ones_like(gt)
    prob = np.where(gt, 0.7, 0.02).astype(np.float32)  # one bin for the lesion, one outside
    calib = {"phantom/composite": le.cal_scores([prob], [gt], [brain], [(2.0, 2.0, 2.0)])}
    curve = calib["phantom/composite"]["lesion neighbourhood"]["curve"]
    assert sum(curve["counts"]) == calib["phantom/composite"]["lesion neighbourhood"]["n"]
    head = SimpleNamespace(temperature=1.5, flip_tta=0)
    loaded = SimpleNamespace(path="ck.pt", sha256="0" * 64, model=SimpleNamespace(lesion_head=head))
    rows = [_row("phantom_1_T2_ischaemic", "phantom", 1.0, 0.5)]
    le.write_outputs(SimpleNamespace(out=tmp_path), rows, calib, [], loaded, LesionMaskRule(), 60.0)
    text = (tmp_path / "lesion_eval.md").read_text()
    assert (tmp_path / "reliability.png").stat().st_size > 0
    bins = [ln for ln in text.splitlines() if ln.startswith("| 0.")]
    # 0.02 falls in the first bin (all outside the lesion), 0.7 in 0.67-0.73 (all lesion)
    assert bins[0].startswith("| 0.00-0.07 | ") and bins[0].endswith(" | 0.020 | 0.000 |")
    assert bins[1] == "| 0.67-0.73 | 64 | 0.700 | 1.000 |" and len(bins) == 2


def test_held_out_id_reads_back_what_held_out_phantom_writes():
    (_, prep, _), (_, prep2, _) = le.held_out_phantoms(2, first_seed=7500)
    assert le.held_out_id(prep.case_id) == ("T1", "ischaemic")
    assert le.held_out_id(prep2.case_id) == ("T2", "haemorrhagic")
    for other in ("p1", "stroke_t2", "real_rire_t1_001", "phantom_1_T9_ischaemic"):
        assert le.held_out_id(other) is None


def test_held_out_phantoms_can_be_drawn_in_the_issues_size_range():
    # Seed 7100 draws a 0.43 mL lacune (session 7's table); with --lesion-ml 0.5 80 it is redrawn.
    (free,) = le.held_out_phantoms(1, first_seed=7100)
    (ranged,) = le.held_out_phantoms(1, first_seed=7100, lesion_ml=(0.5, 80.0))
    vol = [float(c[1].lesion.sum()) * 8 / 1000 for c in (free, ranged)]
    assert vol[0] < 0.5 <= vol[1] <= 80.0


def test_one_held_out_phantom_alone_is_that_phantom_of_its_set():
    """`held_out_phantom(i, first_seed=F)` (what `lesion_checks.py ghosts` draws per seed) is
    the i-th phantom of the set from F: same seed, sequence, lesion kind and voxels."""
    *_, (_, in_set, _) = le.held_out_phantoms(2, first_seed=7500)
    _, alone, _ = le.held_out_phantom(1, first_seed=7500)
    assert alone.case_id == in_set.case_id == "phantom_7501_T2_haemorrhagic"
    np.testing.assert_array_equal(alone.stack(), in_set.stack())
    np.testing.assert_array_equal(alone.lesion, in_set.lesion)


def test_held_out_phantoms_with_branch_territories_draw_branch_infarcts():
    """`--territories branch`: the ischaemic phantoms of a set get a branch infarct (1-10 mL
    here, a size the default set never draws) and the haemorrhagic ones stay as they were."""
    default = le.held_out_phantoms(2, first_seed=7900)
    branch = le.held_out_phantoms(2, first_seed=7900, territories=("branch",))
    vol = float(branch[0][1].lesion.sum()) * 8 / 1000
    assert 0.0 < vol and branch[0][1].case_id == "phantom_7900_T1_ischaemic"
    assert not np.array_equal(branch[0][1].lesion, default[0][1].lesion)
    np.testing.assert_array_equal(branch[1][1].lesion, default[1][1].lesion)  # haemorrhage
