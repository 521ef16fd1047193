"""Misregistration is scored against the unmoved CT (`ct_reference`), and `--cases` selects case
ids by glob."""

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from clinfuse.baselines.composite import roi_composite
from clinfuse.cli import app
from clinfuse.errors import ClinfuseInputError
from clinfuse.evaluation import evaluate_dataset, prepare_cases, read_per_case
from clinfuse.evaluation.reference import load_ct_reference
from clinfuse.io.nifti import load_nifti
from clinfuse.metrics.roi import roi_ssim
from clinfuse.phantom import PhantomConfig, write_phantom_dataset
from clinfuse.preprocess.windowing import BONE_WINDOW, apply_window

HARVARD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "harvard_mri_ct"
CFG = PhantomConfig(
    shape=(32, 32, 24), spacing=(4.0, 4.0, 4.0), mri_contrast="T2", misregistration=(2.0, 2.0)
)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    moved = write_phantom_dataset(root / "moved", 2, CFG, seed=30, contrast="mixed")
    cfg = PhantomConfig(**{**CFG.to_dict(), "misregistration": (0.0, 0.0)})
    aligned = write_phantom_dataset(root / "aligned", 2, cfg, seed=30, contrast="mixed")
    return moved, aligned


def _rows(out):
    return {r["case_id"]: r for r in read_per_case(out)}


def test_composite_is_no_longer_perfect_against_the_unmoved_ct(phantoms, tmp_path):
    moved, aligned = phantoms
    res = evaluate_dataset("composite", moved, tmp_path / "m")
    ref = evaluate_dataset("composite", aligned, tmp_path / "a")
    rows, rows_aligned = _rows(res.out), _rows(ref.out)
    for cid, row in rows.items():
        assert row["ct_scored_against"] == "ct_reference"
        assert rows_aligned[cid]["ct_scored_against"] == "input"
        # Brain is scored against the MRI, which does not move: still an exact copy.
        assert row["brain_ssim"] == pytest.approx(1.0, abs=1e-6)
        assert rows_aligned[cid]["bone_ssim"] == pytest.approx(1.0, abs=1e-6)
        # The composite copies the moved CT into the bone mask (which scored 1.0 against the
        # moved CT): against the truth it is not exact (2 mm = half a 4 mm voxel here).
        assert row["bone_ssim"] < 0.99 and np.isfinite(row["bone_psnr"])
        # Hand value: the saved fused volume against the bone-window reference file.
        fused, _ = load_nifti(res.out / "fused" / f"{cid}.nii.gz")
        ref_hu, _ = load_nifti(moved / cid / "ct_reference.nii.gz")
        bone, _ = load_nifti(moved / cid / "bone.nii.gz")
        expected = roi_ssim(fused, apply_window(ref_hu, BONE_WINDOW), bone > 0)
        assert row["bone_ssim"] == pytest.approx(expected, abs=1e-6)
    summary = json.loads((res.out / "summary.json").read_text())
    assert summary["ct_scored_against"] == {"input": 0, "ct_reference": 2}
    assert "scored against the CT reference" in (res.out / "summary.md").read_text()
    assert "CT reference" not in (ref.out / "summary.md").read_text()


def test_a_method_that_undoes_the_motion_scores_one(phantoms, tmp_path):
    # A perfect registration would recover the unmoved CT; its composite is the new ceiling.
    moved, _ = phantoms

    def registered_composite(prepared):
        hu, _ = load_nifti(moved / prepared.case_id / "ct_reference.nii.gz")
        bone_win = apply_window(hu, BONE_WINDOW)
        return roi_composite(prepared.mri, bone_win, prepared.brain, prepared.bone)

    res = evaluate_dataset(registered_composite, moved, tmp_path / "r")
    for row in res.rows:
        assert row["bone_ssim"] == pytest.approx(1.0, abs=1e-6)
        assert row["bone_psnr"] == np.inf


def test_case_folder_file_is_found_without_the_manifest(phantoms, tmp_path):
    moved, _ = phantoms
    data = tmp_path / "folders"
    shutil.copytree(moved, data)
    (data / "manifest.csv").unlink()
    items = list(prepare_cases(data))
    assert all(it.ct_reference is not None for it in items)
    assert items[0].ct_reference.source.endswith("phantom_000/ct_reference.nii.gz")


def test_manifest_pointing_to_a_missing_reference_is_a_user_error(phantoms, tmp_path):
    moved, _ = phantoms
    data = tmp_path / "bad"
    shutil.copytree(moved, data)
    (data / "phantom_001" / "ct_reference.nii.gz").unlink()
    with pytest.raises(ClinfuseInputError, match="ct_reference file not found"):
        list(prepare_cases(data))


def test_reference_on_another_grid_is_resampled(phantoms, tmp_path):
    moved, _ = phantoms
    prepared = next(iter(prepare_cases(moved, limit=1))).prepared
    hu = np.arange(np.prod(prepared.shape), dtype=np.float32).reshape(prepared.shape) % 2000
    aff = prepared.affine.copy()
    aff[0, 3] += 4.0  # one voxel (4 mm) further right: reference voxel i = grid voxel i + 1
    path = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(hu, aff), path)
    ref = load_ct_reference(path, prepared)
    expected = np.full(prepared.shape, -1024.0, np.float32)
    expected[1:] = hu[:-1]
    np.testing.assert_allclose(ref.ct_bone, apply_window(expected, BONE_WINDOW), atol=1e-5)


def test_cli_cases_glob(phantoms, tmp_path):
    moved, _ = phantoms
    runner = CliRunner()
    out = tmp_path / "one"
    r = runner.invoke(
        app,
        ["evaluate", "-m", "average", "--data", str(moved), "--out", str(out)]
        + ["--cases", "phantom_00[1-9]"],
    )
    assert r.exit_code == 0, r.output
    with open(out / "per_case.csv", newline="") as fh:
        assert [row["case_id"] for row in csv.DictReader(fh)] == ["phantom_001"]
    r = runner.invoke(
        app,
        ["evaluate", "-m", "average", "--data", str(moved), "--out", str(tmp_path / "none")]
        + ["--cases", "16_*"],
    )
    assert isinstance(r.exception, ClinfuseInputError)
    assert "no case id matches" in str(r.exception)
    assert "phantom_000" in str(r.exception)  # says what the ids look like
    assert not (tmp_path / "none").exists()  # refused before any output is written


@pytest.mark.skipif(not HARVARD.is_dir(), reason="shared Harvard data not present")
def test_cases_select_harvard_pairs():
    ids = [it.case_id for it in prepare_cases(HARVARD, cases=["16_00[7-9]", "21_016"], limit=None)]
    assert ids == ["16_007", "16_008", "16_009", "21_016"]


def test_2d_fusion_metrics_use_the_reference_on_the_ct_side(tmp_path):
    from clinfuse.evaluation import evaluate_case, fused_to_uint8
    from clinfuse.metrics.fusion import fusion_metrics
    from clinfuse.preprocess.windowing import model_to_display

    cfg = PhantomConfig(shape=(48, 48), spacing=(3.0, 3.0), misregistration=(3.0, 3.0))
    data = write_phantom_dataset(tmp_path / "d2", 1, cfg, seed=2)
    item = next(iter(prepare_cases(data)))
    assert item.ct_reference is not None
    p = item.prepared
    fused = roi_composite(p.mri, p.ct_bone, p.brain, p.bone)
    row = evaluate_case(fused, p, ct_reference=item.ct_reference)
    a, b = model_to_display(p.mri), model_to_display(item.ct_reference.ct)
    expected = fusion_metrics(a, b, fused_to_uint8(fused))
    assert row["MI"] == pytest.approx(expected["MI"], abs=1e-9)
    assert row["SCD"] == pytest.approx(expected["SCD"], abs=1e-9)
    against_input = evaluate_case(fused, p)
    assert against_input["MI"] != pytest.approx(row["MI"], abs=1e-6)
    assert against_input["bone_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert row["bone_ssim"] < 0.99
