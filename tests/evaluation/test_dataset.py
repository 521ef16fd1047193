import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest

from clinfuse.baselines import average_fusion
from clinfuse.errors import ClinfuseInputError
from clinfuse.evaluation import MethodOutput, compare, evaluate_dataset, read_per_case
from clinfuse.evaluation.dataset import PreparedItem
from clinfuse.nn.lesion_mask import LesionMaskRule


def _items(case_factory, n=3):
    return [PreparedItem(f"c{i}", case_factory(f"c{i}", seed=i)) for i in range(n)]


def test_writes_fused_csv_and_summary(tmp_path, case_factory):
    items = _items(case_factory)
    res = evaluate_dataset("average", None, tmp_path / "out", items=items)
    out = res.out
    rows = read_per_case(out)
    assert [r["case_id"] for r in rows] == ["c0", "c1", "c2"]
    assert not any(r["error"] for r in rows)
    with (out / "per_case.csv").open() as fh:
        header = next(csv.reader(fh))
    for col in ["brain_ssim", "bone_ssim", "brain_psnr", "bone_psnr", "dice", "nsd", "hd95"]:
        assert col in header
    # The fused volume is saved with the case's affine and is exactly what was scored.
    img = nib.load(out / "fused" / "c1.nii.gz")
    np.testing.assert_allclose(img.affine, items[1].prepared.affine)
    np.testing.assert_allclose(img.get_fdata(), average_fusion(items[1].prepared), atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "average" and summary["n_cases"] == 3
    bs = summary["metrics"]["brain_ssim"]
    vals = [r["brain_ssim"] for r in rows]
    assert bs["mean"] == pytest.approx(np.mean(vals))
    assert bs["sd"] == pytest.approx(np.std(vals, ddof=1))
    assert "dice" not in summary["metrics"]  # no lesion prediction: all NaN, left out
    assert "brain_ssim" in (out / "summary.md").read_text()


def test_refuses_to_overwrite_without_flag(tmp_path, case_factory):
    items = _items(case_factory, 1)
    evaluate_dataset("max", None, tmp_path / "o", items=items)
    with pytest.raises(ClinfuseInputError, match="overwrite"):
        evaluate_dataset("max", None, tmp_path / "o", items=items)
    evaluate_dataset("max", None, tmp_path / "o", items=items, overwrite=True)


def test_bad_case_gets_a_nan_row_and_the_run_goes_on(tmp_path, case_factory):
    items = _items(case_factory, 3)
    items.insert(1, PreparedItem("broken", None, error="ClinfuseInputError: mask is empty"))

    def method(p):
        f = p.mri.copy()
        if p.case_id == "c2":
            f[0, 0, 0] = np.nan  # a method that produced NaN on one case
        return f

    with pytest.warns(RuntimeWarning):
        res = evaluate_dataset(method, None, tmp_path / "o", items=items)
    rows = read_per_case(res.out)
    assert [r["case_id"] for r in rows] == ["c0", "broken", "c1", "c2"]
    assert "mask is empty" in rows[1]["error"] and "NaN" in rows[3]["error"]
    assert math.isnan(rows[3]["brain_ssim"]) and rows[2]["brain_ssim"] == pytest.approx(1.0)
    assert json.loads((res.out / "summary.json").read_text())["n_failed"] == 2
    assert not (res.out / "fused" / "c2.nii.gz").exists()


def test_rows_survive_a_crash(tmp_path, case_factory):
    items = _items(case_factory, 3)

    def method(p):
        if p.case_id == "c2":
            raise KeyboardInterrupt  # not an error of the case: the run stops
        return p.mri

    with pytest.raises(KeyboardInterrupt):
        evaluate_dataset(method, None, tmp_path / "o", items=items)
    rows = read_per_case(tmp_path / "o")
    assert [r["case_id"] for r in rows] == ["c0", "c1"]


def test_lesion_prediction_is_scored(tmp_path, case_factory):
    items = _items(case_factory, 2)

    def method(p):
        return MethodOutput(p.mri, np.roll(p.lesion, 1, axis=0))

    res = evaluate_dataset(method, None, tmp_path / "o", items=items)
    assert all(0 < r["dice"] < 1 for r in res.rows)
    assert "hd95" in res.summary


def test_compare_pairs_cases_and_tests(tmp_path, case_factory):
    items = _items(case_factory, 6)
    evaluate_dataset("average", None, tmp_path / "a", items=items)
    evaluate_dataset("composite", None, tmp_path / "b", items=items[1:])
    cmp = compare([tmp_path / "a", tmp_path / "b"])
    assert cmp.methods == ["average", "composite"]
    t = cmp.tests["composite"]["brain_ssim"]
    assert t.n == 5  # c0 is missing from the second run
    assert t.mean_diff > 0  # the composite copies the MRI inside the brain
    # All five differences positive: exact two-sided Wilcoxon p = 2 / 2**5.
    assert t.p_value == pytest.approx(0.0625)
    md = cmp.to_markdown()
    assert "| composite |" in md and "p = 0.062" in md


def test_compare_two_runs_of_one_method_in_same_named_folders(tmp_path, case_factory):
    # Two checkpoints evaluated into RUN_A/ours and RUN_B/ours: each folder is its own row (they
    # once got one name, so the second folder was compared with itself: every delta 0, p = 1).
    items = _items(case_factory, 5)
    for run in ("run_a", "run_b"):
        evaluate_dataset("average", None, tmp_path / run / "ours", items=items)
    per_case = tmp_path / "run_b" / "ours" / "per_case.csv"
    with per_case.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # run B scores 0.01 higher in the brain
        r["brain_ssim"] = str(float(r["brain_ssim"]) + 0.01)
    with per_case.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cmp = compare([tmp_path / "run_a" / "ours", per_case.parent])
    assert cmp.methods == ["average (run_a/ours)", "average (run_b/ours)"]
    assert cmp.tests[cmp.methods[1]]["brain_ssim"].mean_diff == pytest.approx(0.01)


def test_a_bug_stops_the_run_after_writing_its_row(tmp_path, case_factory):
    items = _items(case_factory, 3)

    def method(p):
        if p.case_id == "c1":
            return undefined_name  # noqa: F821 - a programming error, not a bad case
        return p.mri

    with pytest.raises(NameError):
        evaluate_dataset(method, None, tmp_path / "o", items=items)
    rows = read_per_case(tmp_path / "o")
    assert [r["case_id"] for r in rows] == ["c0", "c1"] and "NameError" in rows[1]["error"]


def test_summary_json_is_strict_json(tmp_path, case_factory):
    items = _items(case_factory, 2)
    res = evaluate_dataset("composite", None, tmp_path / "o", items=items)
    text = (res.out / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard {c}"))
    assert summary["metrics"]["brain_psnr"]["mean"] == "inf"  # exact copy inside the brain
    assert summary["metrics"]["brain_psnr"]["sd"] is None


def test_2d_saved_png_is_exactly_the_scored_array(tmp_path, case_factory):
    from PIL import Image

    from clinfuse.metrics.fusion import fusion_metrics

    p = case_factory("s0", shape=(64, 64), lesion=False)
    a = np.round((p.mri + 2) / 4 * 255).astype(np.uint8)
    b = np.round((p.ct + 2) / 4 * 255).astype(np.uint8)
    res = evaluate_dataset("average", None, tmp_path / "o", items=[PreparedItem("s0", p, (a, b))])
    saved = np.array(Image.open(res.out / "fused" / "s0.png"))
    assert saved.dtype == np.uint8 and saved.min() == 0 and saved.max() == 255
    want = fusion_metrics(a, b, saved)
    for k in ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM"):
        assert res.rows[0][k] == pytest.approx(want[k], rel=1e-9), k


def _lesion_method(empty_ids):
    """Our-method stand-in: probability 0.9 on the lesion, nothing on `empty_ids`."""

    def method(p):
        prob = np.zeros(p.shape, np.float32) if p.case_id in empty_ids else p.lesion * 0.9
        return MethodOutput(p.mri, prob.astype(np.float32))

    return method


def test_empty_predictions_are_counted_apart_not_averaged(tmp_path, case_factory):
    """HD95 of an empty prediction (the image diagonal) never enters a mean or a paired test;
    per_case.csv says which cases had no predicted lesion; summaries count them apart."""
    from clinfuse.evaluation.tables import benchmark_tables, cell

    items = _items(case_factory, 4)
    res = evaluate_dataset(_lesion_method({"c1"}), None, tmp_path / "a", items=items)
    rows = read_per_case(res.out)
    assert [r["no_predicted_lesion"] for r in rows] == [0.0, 1.0, 0.0, 0.0]
    assert rows[1]["hd95"] > 20  # the per-case value is kept, flagged
    s = res.summary["hd95"]
    assert (s.n, s.n_nan, s.n_no_prediction) == (3, 0, 1) and s.mean == 0.0
    assert "no_predicted_lesion" not in res.summary  # a flag, not a metric
    assert res.summary["dice"].n == 4  # Dice 0 of the empty prediction is a real value
    summary = json.loads((res.out / "summary.json").read_text())
    assert summary["metrics"]["hd95"]["n_no_prediction"] == 1
    assert summary["metrics"]["hd95"]["mean"] == 0.0
    md = (res.out / "summary.md").read_text()
    assert "1 of 4: no prediction" in md and "no_predicted_lesion" in md
    assert "1 of 4: no prediction" in cell(s)
    table = benchmark_tables({"ours": res.rows})
    assert "0.000 ± 0.000 [0.000, 0.000]; 1 of 4: no prediction" in table
    # every case empty: nothing to average, only the count
    every = evaluate_dataset(
        _lesion_method({"c0", "c1", "c2", "c3"}), None, tmp_path / "b", items=items
    )
    assert cell(every.summary["hd95"]) == "4 of 4: no prediction"
    # paired tests leave out the pairs where either side predicted nothing (c1 and c2)
    evaluate_dataset(_lesion_method({"c2"}), None, tmp_path / "c", items=items)
    cmp = compare([tmp_path / "a", tmp_path / "c"], names=["a", "c"])
    assert cmp.tests["c"]["hd95"].n == 2 and cmp.tests["c"]["dice"].n == 4
    assert compare([tmp_path / "a", tmp_path / "b"], names=["a", "b"]).tests["b"]["hd95"].n == 0


def test_mask_rule_comes_from_the_output_or_the_lesion_head(tmp_path, case_factory):
    items = _items(case_factory, 1)

    def speckled(p):
        prob = p.lesion * 0.9
        prob[2, 8, 8] = 0.9  # a 1-voxel false positive
        return prob.astype(np.float32)

    def method(min_ml):
        return lambda p: MethodOutput(p.mri, speckled(p), mask_rule=LesionMaskRule(min_ml))

    raw = evaluate_dataset(method(0.0), None, tmp_path / "a", items=items).rows[0]
    clean = evaluate_dataset(method(0.002), None, tmp_path / "b", items=items).rows[0]
    assert raw["dice"] < 1.0 and clean["dice"] == 1.0

    class Head:
        mask_rule = LesionMaskRule(0.002)  # as `pipeline.lesion_head_predictor` carries it

        def __call__(self, fused, prepared):
            return speckled(prepared)

    row = evaluate_dataset(
        "average", None, tmp_path / "c", items=items, lesion_head=Head(), lesion_head_name="h"
    ).rows[0]
    assert row["dice"] == 1.0 and row["no_predicted_lesion"] == 0.0
